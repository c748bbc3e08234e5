/*
 * httpd.h — the small HTTP server both daemons use to answer operators:
 * GET /status (JSON) and GET /metrics (Prometheus text) on a loopback
 * address by default.  libmicrohttpd runs it on its own thread; the
 * handler is called there and must be thread-safe with the daemon.
 */
#ifndef AIM_HTTPD_H
#define AIM_HTTPD_H

#include <stddef.h>

struct httpd;

struct httpd_response {
	unsigned status;          /* HTTP status code */
	const char *content_type;
	char *body;               /* malloc'd; the server frees it */
	size_t len;
};

/* Fills *resp for a GET (or HEAD) of path; returns 0, or -errno for a 500. */
typedef int (*httpd_handler)(void *ctx, const char *path, struct httpd_response *resp);

/* Listens on addr ("127.0.0.1:9380", "[::1]:9380").  Returns 0 or -errno
 * after logging why (address in use, bad address). */
int httpd_start(const char *addr, httpd_handler fn, void *ctx, struct httpd **out);
/* Also answers POST (bodies are ignored) with fn: for actions an operator
 * triggers, like aimfs's /verify.  Call before the first request. */
void httpd_on_post(struct httpd *h, httpd_handler fn);
/* Stops the listener and its thread.  NULL is fine. */
void httpd_stop(struct httpd *h);
/* Convenience for handlers: a response with a copy of text. */
int httpd_text(struct httpd_response *resp, unsigned status, const char *type, const char *text);

#endif
