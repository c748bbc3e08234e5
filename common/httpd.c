/*
 * httpd.c — libmicrohttpd behind a one-function handler.  Only GET and
 * HEAD are served; anything else gets 405.  Requests are answered on MHD's
 * internal polling thread, one at a time, which is plenty for status.
 */
#include "httpd.h"
#include "log.h"
#include "parse.h"
#include "thread.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

struct httpd {
	struct MHD_Daemon *mhd;
	httpd_handler fn;
	httpd_handler post;
	void *ctx;
};

void httpd_on_post(struct httpd *h, httpd_handler fn)
{
	h->post = fn;
}

int httpd_text(struct httpd_response *resp, unsigned status, const char *type, const char *text)
{
	resp->status = status;
	resp->content_type = type;
	resp->len = strlen(text);
	resp->body = strdup(text);
	return resp->body ? 0 : -ENOMEM;
}

static enum MHD_Result queue(struct MHD_Connection *conn, struct httpd_response *r)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(r->len, r->body, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(r->body);
		return MHD_NO;
	}
	if (r->content_type)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->content_type);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	ret = MHD_queue_response(conn, r->status, resp);
	MHD_destroy_response(resp);
	return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **req_cls)
{
	struct httpd *h = cls;
	struct httpd_response r = { 0 };

	(void)version;
	(void)upload;
	if (*req_cls == NULL) {
		/* first call: headers only; answer on the next */
		*req_cls = h;
		return MHD_YES;
	}
	if (*upload_size) {
		*upload_size = 0; /* discard any body */
		return MHD_YES;
	}
	if (strcmp(method, "POST") == 0 && h->post) {
		if (h->post(h->ctx, url, &r) < 0 || !r.body) {
			free(r.body);
			httpd_text(&r, 500, "text/plain", "internal error\n");
		}
		return queue(conn, &r);
	}
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
		httpd_text(&r, 405, "text/plain", "only GET is served here\n");
		return queue(conn, &r);
	}
	if (h->fn(h->ctx, url, &r) < 0 || !r.body) {
		free(r.body);
		httpd_text(&r, 500, "text/plain", "internal error\n");
	}
	return queue(conn, &r);
}

int httpd_start(const char *addr, httpd_handler fn, void *ctx, struct httpd **out)
{
	struct addrinfo hints = { .ai_flags = AI_NUMERICSERV, .ai_socktype = SOCK_STREAM }, *ai;
	char host[256], port_s[8];
	struct httpd *h;
	uint16_t port;
	sigset_t old_mask;
	int r;

	if (parse_hostport(addr, host, sizeof host, &port) < 0) {
		log_error("status address %s: expected ADDR:PORT", addr);
		return -EINVAL;
	}
	snprintf(port_s, sizeof port_s, "%u", port);
	r = getaddrinfo(host, port_s, &hints, &ai);
	if (r) {
		log_error("status address %s: %s", addr, gai_strerror(r));
		return -EINVAL;
	}
	h = calloc(1, sizeof *h);
	if (!h) {
		freeaddrinfo(ai);
		return -ENOMEM;
	}
	h->fn = fn;
	h->ctx = ctx;
	/* its threads leave the stop signals to the main thread (thread.h) */
	thread_block_stop_signals(&old_mask);
	h->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO |
				  (ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0),
				  port, NULL, NULL, on_request, h,
				  MHD_OPTION_SOCK_ADDR, ai->ai_addr,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
				  MHD_OPTION_END);
	thread_restore_signals(&old_mask);
	freeaddrinfo(ai);
	if (!h->mhd) {
		log_error("cannot listen on %s for status (address in use?)", addr);
		free(h);
		return -EADDRINUSE;
	}
	*out = h;
	return 0;
}

void httpd_stop(struct httpd *h)
{
	if (!h)
		return;
	MHD_stop_daemon(h->mhd);
	free(h);
}
