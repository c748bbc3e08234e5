/*
 * receiver.c — the built-in HTTPS receiver: libmicrohttpd with GnuTLS,
 * answering PUT and GET of <any prefix>/<group-uuid>/<segment file>, and
 * GET of <any prefix>/<group-uuid>/mismatches.
 *
 * A PUT, in order, never touching the disk before step 5:
 *   1. method: PUT, GET or HEAD (405 otherwise);
 *   2. with --client-ca, a client certificate that chains to that CA and
 *      is fit for TLS client authentication, required by the handshake
 *      itself (GNUTLS_CERT_REQUIRE and GnuTLS's verification, set on each
 *      session as it is accepted): a peer without one never gets past the
 *      handshake.  The certificate is checked again per request (403);
 *   3. with --token-file, "Authorization: Bearer <token>" (401 when
 *      missing, 403 when wrong), compared as SHA-256 digests in constant
 *      time;
 *   4. the path, character by character (receiver_parse_path; 400), the
 *      encoding (none or zstd; 415), the declared length (413), and the
 *      budget: uploads at once in all and per group, temporary space, room
 *      in the inbox (503 or 507 with Retry-After, see below);
 *   5. the body streams into inbox/.tmp/ (decompressed on the fly for
 *      Content-Encoding: zstd), never more than --max-segment bytes (413);
 *   6. fsync, then the whole segment is validated by the shared decoder,
 *      and its header must name the URL's group and number (422, with the
 *      reason as a one-line body);
 *   7. a group promoted here (failed over), or being promoted, takes no
 *      segment: 409 with the reason, decided before the body (step 4) and
 *      again right before the rename;
 *      a copy already held (in the inbox, kept under --retain, or recorded
 *      as applied in the state) is compared: identical 200, different 409;
 *      a segment whose LSNs cannot follow segment number - 1 (the one
 *      applied last, or one waiting in the inbox) or precede number + 1
 *      waiting there is refused with 422, as the group would put it aside
 *      (refuse_discontinuous: a held group would only see it at release);
 *      otherwise renamed into inbox/<group>/ without replacing anything,
 *      and the directory fsynced: 201.  The group's thread is kicked; the
 *      apply never runs here.
 * GET <prefix>/<group>/mismatches[?after=LSN] passes the same checks (1 to
 * 4: certificate, token, path) and answers, from the state, what the HASH
 * records with an LSN above after found different (docs/RESYNC.md), as
 * JSON (struct proto_mismatches in common/protocol.h), ordered by LSN then
 * offset, for LSNs up to applied_lsn only (the HASH
 * records applied so far).  NAME is the image's name at that LSN, ID its id
 * in the segments (the source's); a range is whole blocks, the last one
 * clipped to the end of the HASH's range; a HASH record with no range found
 * its range equal.  At most MISMATCHES_ANSWER_MAX ranges, ending at a whole LSN, with
 * "more": true when ranges were left out: ask again with after = the last
 * LSN.  Rows far behind applied_lsn are dropped (state.c): the ranges of
 * HASH records at or below pruned_lsn may be incomplete.  404 for a group
 * the state does not know, 400 for any argument but one after of decimal
 * digits.
 *
 * Every refusal is answered, at once, and counted.  A refusal decided
 * before the body carries "Connection: close" and is queued through
 * libmicrohttpd when no body follows or the client waits for "100
 * Continue".  Otherwise, and for every refusal decided in the middle of a
 * body (disk full, too large once decompressed, a corrupt stream, too
 * slow), the answer is written straight onto the TLS session: libmicrohttpd
 * 0.9.75 refuses MHD_queue_response while a body is being received (only
 * before it and after it).  The connection then lingers (LINGER_NS,
 * LINGER_MAX), reading and dropping what still comes, so that the client
 * reads the answer before a reset could destroy it, and is closed.
 *
 * Hostile peers (guard.c does the rest): libmicrohttpd limits connections
 * in all and per address; the TLS priority string is --tls-priority (TLS
 * 1.2 and 1.3 by default).  A zstd body may use a window of at most
 * ZSTD_WINDOW_LOG (what the transport's level uses), so each stream needs
 * a few MiB at most; bodies being received at once are limited in all
 * (--max-uploads) and per group (--max-group-uploads), and the bytes they
 * hold in inbox/.tmp by --max-temp: over either, 503 with Retry-After,
 * which the transport honours.  The inbox's free space below
 * --inbox-reserve is kept for segments their group can apply without
 * waiting for another (the next after the last applied, and those that
 * follow it without a gap; any when the group holds none): a segment after
 * a gap that would eat into it is refused with 507 and Retry-After, so
 * that a full inbox of segments that cannot be applied yet never blocks
 * the one that would let them be; the group's status says so with the
 * figures.  An acknowledged segment is never deleted to make room: its
 * source may have pruned it.
 *
 * Every file this module creates is inbox/.tmp/<name it chose>, renamed
 * into inbox/<uuid>/<segment name>: names from the request are used only
 * after they matched those two patterns exactly.  Refusals are logged at
 * info level (hostile input is expected traffic, not an operator's
 * problem); only failures of this host (disk, state) are errors.
 *
 * Threads: libmicrohttpd's pool runs the handlers; a request's struct
 * upload belongs to the thread that runs it.  The state connection used
 * for "was it applied?" has its own mutex, the upload slots theirs.
 */
#include "remote_i.h"
#include "clock.h"
#include "log.h"
#include "parse.h"
#include "protocol.h"
#include "targets.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <gnutls/crypto.h>
#include <gnutls/x509.h>
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <zstd.h>
#include <zstd_errors.h>

#define URL_MAX 1024            /* longest accepted path */
#define PEM_MAX (1 << 20)       /* largest certificate, key or CA file */
#define TOKEN_MAX 4096
#define LINGER_MAX (16u << 20) /* body bytes read and dropped after an early answer */
#define LINGER_NS (2ULL * 1000000000ULL) /* ... for at most this long */
#define SEND_NS (2ULL * 1000000000ULL)   /* to write an answer onto the session */
#define POOL_THREADS 4
/* The largest zstd window accepted: the transport compresses at level 3,
 * whose window is 2^21 bytes at most (less for smaller segments). */
#define ZSTD_WINDOW_LOG 21
#define ROOM_STEP (1u << 20)     /* the inbox's room is looked at every MiB */
#define CARRY_SIZE 4096          /* a page: what a kept file is written over in */
#define RETRY_BUSY_S 5           /* Retry-After of 503s: uploads, temporary space */
#define RETRY_FULL_S 10          /* ... and of 507s */
#define MISMATCHES PROTO_MISMATCHES /* the one last path component besides segments */

/* Bodies being received for one group. */
struct group_uploads {
	char group[37];
	unsigned n;
};

struct receiver {
	struct remote *r;
	struct MHD_Daemon *mhd;
	struct guard *guard;
	char *cert, *key, *ca;     /* PEM text, alive while mhd runs */
	uint8_t token_hash[32];
	bool have_token;
	int tmp_fd;                /* inbox/.tmp */
	atomic_uint_fast64_t seq;  /* temporary names */
	pthread_mutex_t st_lock;   /* guards st */
	struct state *st;
	pthread_mutex_t up_lock;   /* guards uploads, gu */
	unsigned uploads;          /* bodies being received */
	struct group_uploads *gu;  /* max_uploads entries; n == 0 is free */
};

struct upload {
	unsigned code;     /* the answer once decided, 0 before */
	char msg[640];     /* its one-line body */
	unsigned retry_after; /* seconds, for Retry-After; 0 for none */
	bool put;
	bool begun;        /* the access handler saw the whole header */
	bool respond_now;  /* the client waits for "100 Continue" */
	bool early;        /* answered before the body was read: Connection: close */
	bool answered;     /* answered onto the session before the body's end */
	bool counted;      /* the answer is in the status counters */
	bool queued;       /* a response is already queued (GET) */
	bool mismatches;   /* GET .../mismatches */
	bool slot;         /* holds an upload slot */
	int usable;        /* whether its group can apply it without waiting for
			    * another segment; -1 not known yet */
	uint64_t length;   /* Content-Length, UINT64_MAX if none */
	uint64_t temp;     /* bytes charged to --max-temp */
	uint64_t room_at;  /* size at which the inbox's room is looked at again */
	uint64_t linger_until; /* CLOCK_MONOTONIC */
	struct guard_conn *gc;
	uint64_t after;    /* its after argument */
	char method[16];
	char group[37];
	uint8_t gid[16];
	char file[SEG_FILE_NAME_LEN + 1];
	uint64_t number;
	int fd;
	char tmp[128];
	bool tmp_live;
	bool recycled;     /* tmp is a kept file written over: whole pages, cut at the end */
	size_t carry_len;  /* ... and the bytes after its last whole page */
	char carry[CARRY_SIZE];
	ZSTD_DStream *zs;
	void *zbuf;
	size_t zbuf_len;
	size_t zlast;      /* last ZSTD_decompressStream result: 0 at a frame end */
	struct seg_precheck *pre; /* hashes the payloads as they are stored (NULL:
				   * out of memory, the stored file is checked whole) */
	uint64_t raw, size, dropped;
	char peer[64];
	char url[160];     /* printable copy, for messages */
};

static void decide(struct upload *u, unsigned code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void decide(struct upload *u, unsigned code, const char *fmt, ...)
{
	va_list ap;

	if (u->code)
		return;
	u->code = code;
	va_start(ap, fmt);
	vsnprintf(u->msg, sizeof u->msg, fmt, ap);
	va_end(ap);
	for (char *p = u->msg; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
}

/* ---- the path ---- */

static bool prefix_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == '~' || c == '-';
}

/*
 * Checks every character of url and returns its last two components in
 * comp[0] and comp[1] (comp[0] NULL when there is only one); shape is the
 * reason given for a path that cannot end as it should.
 */
static int split_path(const char *url, const char *comp[2], size_t clen[2], const char *shape,
		      const char **why)
{
	size_t len = strlen(url);
	const char *p;

	comp[0] = comp[1] = NULL;
	clen[0] = clen[1] = 0;
	if (len > URL_MAX) {
		*why = "the path is too long";
		return -EINVAL;
	}
	if (url[0] != '/') {
		*why = "the path must start with '/'";
		return -EINVAL;
	}
	if (url[len - 1] == '/') {
		*why = shape;
		return -EINVAL;
	}
	/* Every component: non-empty ones only of safe characters, never
	 * "." or "..".  Remember the last two. */
	for (p = url; *p;) {
		const char *start;
		size_t n;

		while (*p == '/')
			p++;
		start = p;
		while (*p && *p != '/') {
			if (*p == '%') {
				*why = "percent-encoded characters are not accepted";
				return -EINVAL;
			}
			if (*p == '\\') {
				*why = "backslashes are not accepted";
				return -EINVAL;
			}
			if (!prefix_char(*p)) {
				*why = "the path holds a character outside [A-Za-z0-9._~-/]";
				return -EINVAL;
			}
			p++;
		}
		n = (size_t)(p - start);
		if (!n)
			continue;
		if ((n == 1 && start[0] == '.') || (n == 2 && start[0] == '.' && start[1] == '.')) {
			*why = "'.' and '..' are not accepted in the path";
			return -EINVAL;
		}
		comp[0] = comp[1];
		clen[0] = clen[1];
		comp[1] = start;
		clen[1] = n;
	}
	if (!comp[0]) {
		*why = shape;
		return -EINVAL;
	}
	return 0;
}

/* The next-to-last component: a lowercase group UUID, into group and uuid. */
static int path_group(const char *comp, size_t len, char group[37], uint8_t uuid[16],
		      const char **why)
{
	if (len != 36 || (memcpy(group, comp, 36), group[36] = '\0', !group_name_valid(group, uuid))) {
		*why = "the next-to-last path component is not a lowercase group UUID";
		return -EINVAL;
	}
	return 0;
}

int receiver_parse_path(const char *url, char group[37], uint8_t uuid[16],
			char file[SEG_FILE_NAME_LEN + 1], uint64_t *number, const char **why)
{
	const char *comp[2];
	size_t clen[2];

	if (split_path(url, comp, clen, "the path must end in /<group>/<segment file>", why) < 0 ||
	    path_group(comp[0], clen[0], group, uuid, why) < 0)
		return -EINVAL;
	if (clen[1] != SEG_FILE_NAME_LEN ||
	    (memcpy(file, comp[1], SEG_FILE_NAME_LEN), file[SEG_FILE_NAME_LEN] = '\0',
	     seg_parse_file_name(file, number) < 0)) {
		*why = "the last path component is not a segment file name (20 digits + \".aimj\")";
		return -EINVAL;
	}
	return 0;
}

int receiver_parse_mismatches_path(const char *url, char group[37], uint8_t uuid[16],
				   const char **why)
{
	size_t len = strlen(url), n = strlen(MISMATCHES);
	const char *comp[2];
	size_t clen[2];

	if (len <= n || url[len - n - 1] != '/' || strcmp(url + len - n, MISMATCHES) != 0) {
		*why = "the last path component is not \"" MISMATCHES "\"";
		return -ENOENT;
	}
	if (split_path(url, comp, clen, "the path must end in /<group>/" MISMATCHES, why) < 0 ||
	    path_group(comp[0], clen[0], group, uuid, why) < 0)
		return -EINVAL;
	return 0;
}

/* ---- answering ---- */

static void printable(const char *in, char *out, size_t len)
{
	size_t i;

	for (i = 0; in[i] && i + 4 < len; i++)
		out[i] = (in[i] >= 0x20 && in[i] < 0x7f) ? in[i] : '?';
	if (in[i])
		snprintf(out + i, len - i, "...");
	else
		out[i] = '\0';
}

/* Logs and counts the answer, once. */
static void account(struct receiver *rx, struct upload *u)
{
	if (u->counted)
		return;
	u->counted = true;
	if (u->code >= 400) {
		/* A GET answered 404 (a segment or group not here yet: the
		 * source's first question of a resync) refuses nothing. */
		if (u->code < RX_CODES && !(u->code == 404 && !u->put))
			atomic_fetch_add_explicit(&rx->r->rx.by_code[u->code], 1, memory_order_relaxed);
		/* The receiver's own failures are errors; refusals are not, and
		 * a GET of a segment not here is an ordinary question.  A full
		 * inbox or a busy receiver is the sender's to wait for. */
		if (u->code >= 500 && !u->retry_after)
			log_error("%s %s from %s: %u %s", u->method, u->url, u->peer, u->code, u->msg);
		else if (u->code == 404)
			log_debug("%s %s from %s: %u %s", u->method, u->url, u->peer, u->code, u->msg);
		else
			log_info("refused %s %s from %s: %u %s", u->method, u->url, u->peer, u->code,
				 u->msg);
	} else if (u->code == 201) {
		atomic_fetch_add_explicit(&rx->r->rx.accepted, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&rx->r->rx.bytes, u->size, memory_order_relaxed);
		log_debug("received %s/%s from %s (%" PRIu64 " bytes)", u->group, u->file, u->peer,
			  u->size);
	} else {
		atomic_fetch_add_explicit(&rx->r->rx.duplicates, 1, memory_order_relaxed);
		log_debug("%s/%s from %s: %s", u->group, u->file, u->peer, u->msg);
	}
}

/* The headers of a direct answer beyond the type and the length, as text. */
static void direct_headers(const struct upload *u, char *buf, size_t len)
{
	size_t n = 0;

	buf[0] = '\0';
	if (u->code == 401)
		n += (size_t)snprintf(buf + n, len - n, "%s: Bearer realm=\"aim-remote\"\r\n",
				      MHD_HTTP_HEADER_WWW_AUTHENTICATE);
	if (u->code == 405 && n < len)
		n += (size_t)snprintf(buf + n, len - n, "%s: %s\r\n", MHD_HTTP_HEADER_ALLOW,
				      u->mismatches ? "GET, HEAD" : "PUT, GET, HEAD");
	if (u->retry_after && n < len)
		n += (size_t)snprintf(buf + n, len - n, "%s: %u\r\n", MHD_HTTP_HEADER_RETRY_AFTER,
				      u->retry_after);
	if (n < len)
		snprintf(buf + n, len - n, "%s: close\r\n", MHD_HTTP_HEADER_CONNECTION);
}

/* Queues the answer through libmicrohttpd: before a body (early) or after
 * the whole of it. */
static enum MHD_Result answer(struct receiver *rx, struct MHD_Connection *conn, struct upload *u)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;
	char *body;
	int n;

	account(rx, u);
	n = asprintf(&body, "%s\n", u->msg);
	if (n < 0)
		return MHD_NO;
	resp = MHD_create_response_from_buffer((size_t)n, body, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	if (u->code == 401)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
					"Bearer realm=\"aim-remote\"");
	if (u->code == 405)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW,
					u->mismatches ? "GET, HEAD" : "PUT, GET, HEAD");
	if (u->retry_after) {
		char ra[16];

		snprintf(ra, sizeof ra, "%u", u->retry_after);
		MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
	}
	if (u->early)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
	ret = MHD_queue_response(conn, u->code, resp);
	MHD_destroy_response(resp);
	return ret;
}

/*
 * Writes the answer straight onto the connection's TLS session, with
 * "Connection: close", while a body is still coming (see the top of this
 * file).  Nothing else is ever written on that session but libmicrohttpd's
 * close_notify when the connection is closed.  Returns 0 or -errno.
 */
static int answer_direct(struct receiver *rx, struct MHD_Connection *conn, struct upload *u)
{
	const union MHD_ConnectionInfo *si =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
	const union MHD_ConnectionInfo *fi =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	gnutls_session_t s = si ? (gnutls_session_t)si->tls_session : NULL;
	uint64_t deadline = clock_mono_ns() + SEND_NS;
	const char *reason = MHD_get_reason_phrase_for(u->code);
	char extra[256], *text, *p;
	int n;

	account(rx, u);
	if (!s || !fi)
		return -ENOTCONN;
	direct_headers(u, extra, sizeof extra);
	n = asprintf(&text, "HTTP/1.1 %u %s\r\n%s: text/plain; charset=utf-8\r\n"
		     "%s: no-store\r\n%s%s: %zu\r\n\r\n%s\n", u->code, reason ? reason : "",
		     MHD_HTTP_HEADER_CONTENT_TYPE, MHD_HTTP_HEADER_CACHE_CONTROL, extra,
		     MHD_HTTP_HEADER_CONTENT_LENGTH, strlen(u->msg) + 1, u->msg);
	if (n < 0)
		return -ENOMEM;
	for (p = text; n > 0;) {
		ssize_t w = gnutls_record_send(s, p, (size_t)n);

		if (w == GNUTLS_E_AGAIN || w == GNUTLS_E_INTERRUPTED) {
			struct pollfd pfd = { .fd = fi->connect_fd, .events = POLLOUT };

			if (clock_mono_ns() >= deadline)
				break;
			poll(&pfd, 1, 100);
			continue; /* again with the same arguments, as GnuTLS asks */
		}
		if (w < 0)
			break;
		p += w;
		n -= (int)w;
	}
	free(text);
	if (n > 0)
		return -EIO;
	u->answered = true;
	u->linger_until = clock_mono_ns() + LINGER_NS;
	guard_linger(u->gc, u->linger_until);
	return 0;
}

/* ---- authentication ---- */

static int check_client_cert(struct MHD_Connection *conn, struct upload *u)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
	gnutls_typed_vdata_st purpose = {
		.type = GNUTLS_DT_KEY_PURPOSE_OID,
		.data = (unsigned char *)GNUTLS_KP_TLS_WWW_CLIENT,
	};
	gnutls_session_t s = ci ? (gnutls_session_t)ci->tls_session : NULL;
	unsigned status = 0, n = 0;
	gnutls_datum_t txt;
	int r;

	if (!s) {
		decide(u, 403, "a client certificate is required (no TLS session)");
		return -EACCES;
	}
	if (!gnutls_certificate_get_peers(s, &n) || n == 0) {
		decide(u, 403, "a client certificate signed by the configured CA is required");
		return -EACCES;
	}
	r = gnutls_certificate_verify_peers(s, &purpose, 1, &status);
	if (r < 0) {
		decide(u, 403, "the client certificate could not be verified: %s",
		       gnutls_strerror(r));
		return -EACCES;
	}
	if (status) {
		if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &txt, 0) ==
		    0) {
			size_t len = strlen((char *)txt.data);

			while (len && txt.data[len - 1] == ' ')
				txt.data[--len] = '\0';
			decide(u, 403, "the client certificate is not accepted: %s", txt.data);
			gnutls_free(txt.data);
		} else {
			decide(u, 403, "the client certificate is not accepted");
		}
		return -EACCES;
	}
	return 0;
}

static int check_token(struct receiver *rx, struct MHD_Connection *conn, struct upload *u)
{
	const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						     MHD_HTTP_HEADER_AUTHORIZATION);
	uint8_t got[32];
	unsigned diff = 0;

	if (!h || strncasecmp(h, PROTO_BEARER, strlen(PROTO_BEARER)) != 0) {
		decide(u, 401, "a bearer token is required (Authorization: Bearer <token>)");
		return -EACCES;
	}
	h += strlen(PROTO_BEARER);
	while (*h == ' ')
		h++;
	/* Digests of equal length, compared in constant time: neither the
	 * token's bytes nor its length leak through timing. */
	if (gnutls_hash_fast(GNUTLS_DIG_SHA256, h, strlen(h), got) < 0) {
		decide(u, 500, "cannot hash the token");
		return -EIO;
	}
	for (size_t i = 0; i < sizeof got; i++)
		diff |= got[i] ^ rx->token_hash[i];
	if (diff) {
		decide(u, 403, "the bearer token is wrong");
		return -EACCES;
	}
	return 0;
}

/* ---- receiving ---- */

/* Opens inbox/<group>, creating it (and making that durable) if needed. */
static int open_group_dir(struct receiver *rx, const char *group, bool create)
{
	int fd;

	if (create) {
		if (mkdirat(rx->r->inbox_fd, group, 0750) == 0)
			fsync(rx->r->inbox_fd);
		else if (errno != EEXIST)
			return -errno;
	}
	fd = openat(rx->r->inbox_fd, group, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* ---- the budget: uploads at once, temporary space, room in the inbox ---- */

/* Takes one of the upload slots (in all, and of u's group): 0, or decides
 * 503. */
static int take_slot(struct receiver *rx, struct upload *u)
{
	const struct remote_limits *lim = &rx->r->cfg.lim;
	struct group_uploads *mine = NULL, *spare = NULL;
	int r = 0;

	pthread_mutex_lock(&rx->up_lock);
	for (unsigned i = 0; i < lim->max_uploads; i++) {
		if (rx->gu[i].n && strcmp(rx->gu[i].group, u->group) == 0)
			mine = &rx->gu[i];
		else if (!rx->gu[i].n && !spare)
			spare = &rx->gu[i];
	}
	if (rx->uploads >= lim->max_uploads) {
		decide(u, 503, "%u uploads are being received, the limit (--max-uploads); retry later",
		       rx->uploads);
		r = -EBUSY;
	} else if (mine && mine->n >= lim->max_group_uploads) {
		decide(u, 503, "%u uploads of group %s are being received, the limit"
		       " (--max-group-uploads); retry later", mine->n, u->group);
		r = -EBUSY;
	} else {
		if (!mine) {
			mine = spare; /* fewer groups than uploads: one is free */
			snprintf(mine->group, sizeof mine->group, "%s", u->group);
		}
		mine->n++;
		rx->uploads++;
		u->slot = true;
		atomic_store_explicit(&rx->r->rx.uploads, rx->uploads, memory_order_relaxed);
	}
	pthread_mutex_unlock(&rx->up_lock);
	if (r < 0)
		u->retry_after = RETRY_BUSY_S;
	return r;
}

static void release_slot(struct receiver *rx, struct upload *u)
{
	if (!u->slot)
		return;
	pthread_mutex_lock(&rx->up_lock);
	for (unsigned i = 0; i < rx->r->cfg.lim.max_uploads; i++) {
		if (rx->gu[i].n && strcmp(rx->gu[i].group, u->group) == 0) {
			rx->gu[i].n--;
			break;
		}
	}
	rx->uploads--;
	atomic_store_explicit(&rx->r->rx.uploads, rx->uploads, memory_order_relaxed);
	pthread_mutex_unlock(&rx->up_lock);
	u->slot = false;
}

/* Charges n more bytes of inbox/.tmp to u: 0, or decides 503. */
static int charge_temp(struct receiver *rx, struct upload *u, uint64_t n)
{
	uint64_t max = rx->r->cfg.lim.max_temp;
	uint64_t now = atomic_fetch_add(&rx->r->rx.temp_bytes, n) + n;
	char a[32], b[32];

	if (now > max) {
		atomic_fetch_sub(&rx->r->rx.temp_bytes, n);
		decide(u, 503, "the uploads being received hold %s of temporary space, the limit is %s"
		       " (--max-temp); retry later", format_size(now - n, a, sizeof a),
		       format_size(max, b, sizeof b));
		u->retry_after = RETRY_BUSY_S;
		return -ENOSPC;
	}
	u->temp += n;
	return 0;
}

static void release_temp(struct receiver *rx, struct upload *u)
{
	atomic_fetch_sub(&rx->r->rx.temp_bytes, u->temp);
	u->temp = 0;
}

/* The last segment u's group applied, as its state says (0 if unknown). */
static uint64_t applied_segment(struct receiver *rx, const struct upload *u)
{
	struct state_group sg;

	pthread_mutex_lock(&rx->st_lock);
	if (state_group_get(rx->st, u->group, &sg) < 0)
		sg.applied_segment = 0;
	pthread_mutex_unlock(&rx->st_lock);
	return sg.applied_segment;
}

/* Whether u's group can apply its segment without waiting for another
 * one: it is the next after the last applied, or every segment between
 * that one and it is in the inbox already, or it is older (a duplicate,
 * compared and never stored), or the group holds none (a resync after a
 * gap starts with it). */
static bool applies_next(struct receiver *rx, struct upload *u)
{
	struct inbox_entry *e = NULL;
	size_t n = 0;
	int gfd;

	if (u->usable >= 0)
		return u->usable;
	u->usable = u->number <= applied_segment(rx, u) + 1;
	if (u->usable)
		return true;
	gfd = open_group_dir(rx, u->group, false);
	if (gfd >= 0 && inbox_scan(gfd, &e, &n) == 0) {
		/* The group records a segment as applied before it removes
		 * its file: the state read after the listing counts every
		 * segment removed meanwhile as applied, where the one read
		 * before it saw them as missing (a 507 for the very segment
		 * the group wanted next). */
		u->usable = inbox_run_reaches(e, n, applied_segment(rx, u), u->number);
		free(e);
	} else {
		u->usable = 1;
	}
	if (gfd >= 0)
		close(gfd);
	return u->usable;
}

/* Refuses u for want of room in the inbox: 507, retried later, and said
 * in its group's status. */
static void no_room(struct receiver *rx, struct upload *u, uint64_t avail, uint64_t more,
		    const char *cause)
{
	char note[384], a[32], b[32], c[32];

	if (applies_next(rx, u))
		snprintf(note, sizeof note, "inbox full: segment %" PRIu64 ", which the group can"
			 " apply next, does not fit in %s: %s free, %s more to store (%s)", u->number,
			 rx->r->cfg.inbox, format_size(avail, a, sizeof a),
			 format_size(more, b, sizeof b), cause);
	else
		snprintf(note, sizeof note, "inbox full: segment %" PRIu64 " refused until the"
			 " segments missing before it are here: %s free in %s, %s kept for those"
			 " (--inbox-reserve), %s more to store", u->number,
			 format_size(avail, a, sizeof a), rx->r->cfg.inbox,
			 format_size(rx->r->cfg.lim.inbox_reserve, b, sizeof b),
			 format_size(more, c, sizeof c));
	decide(u, 507, "%s; retry later", note);
	u->retry_after = RETRY_FULL_S;
	groups_note_inbox(rx->r, u->group, note);
}

/* Free bytes of the inbox's file system, or UINT64_MAX if unknown. */
static uint64_t inbox_avail(struct receiver *rx)
{
	struct statvfs sv;

	if (fstatvfs(rx->tmp_fd, &sv) < 0)
		return UINT64_MAX;
	return (uint64_t)sv.f_bavail * sv.f_frsize;
}

/* Whether more bytes of u's segment may go to the inbox's file system:
 * into --inbox-reserve only for a segment its group needs next.  0, or
 * decides 507. */
static int check_room(struct receiver *rx, struct upload *u, uint64_t more)
{
	uint64_t reserve = rx->r->cfg.lim.inbox_reserve, avail = inbox_avail(rx);

	if (avail == UINT64_MAX || avail >= more + reserve)
		return 0;
	if (avail >= more && applies_next(rx, u))
		return 0;
	if (inbox_free_drop(rx->r))
		return check_room(rx, u, more); /* what kept files held is free now */
	no_room(rx, u, avail, more, "below --inbox-reserve");
	return -ENOSPC;
}

/* A kept file taken for a body of known length: what lies past that
 * length's last page is freed now, not at the end (end_carry), so that the
 * file never holds more than the room the upload was charged and given,
 * but for the rest of its last page.  Whole pages are written over it
 * (write_pages), all within that length. */
static void cut_to_pages(int fd, uint64_t length)
{
	uint64_t pages = (length + CARRY_SIZE - 1) / CARRY_SIZE * CARRY_SIZE;
	struct stat st;

	if (fstat(fd, &st) == 0 && (uint64_t)st.st_size > pages && ftruncate(fd, (off_t)pages) < 0) {
		/* end_carry cuts it, or says why not */
	}
}

static int start_upload(struct receiver *rx, struct MHD_Connection *conn, struct upload *u)
{
	const char *enc = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						       MHD_HTTP_HEADER_CONTENT_ENCODING);
	const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						      MHD_HTTP_HEADER_CONTENT_LENGTH);
	uint64_t max = rx->r->cfg.max_segment;

	u->length = UINT64_MAX;
	if (cl) {
		char *end;
		unsigned long long n;

		errno = 0;
		n = strtoull(cl, &end, 10);
		if (!errno && end != cl && !*end)
			u->length = n;
	}
	if (enc && strcasecmp(enc, "identity") != 0) {
		if (strcasecmp(enc, PROTO_ENCODING_ZSTD) != 0) {
			decide(u, 415, "Content-Encoding %.64s is not supported (zstd is)", enc);
			return -EINVAL;
		}
		u->zs = ZSTD_createDStream();
		u->zbuf_len = ZSTD_DStreamOutSize();
		u->zbuf = malloc(u->zbuf_len);
		if (!u->zs || !u->zbuf) {
			decide(u, 500, "out of memory");
			return -ENOMEM;
		}
		ZSTD_initDStream(u->zs);
		/* Windows no larger than the transport's: each stream holds a
		 * few MiB, whatever its frame header asks for. */
		ZSTD_DCtx_setParameter(u->zs, ZSTD_d_windowLogMax, ZSTD_WINDOW_LOG);
	}
	if (u->length != UINT64_MAX && u->length > max && !u->zs) {
		decide(u, 413, "the segment is larger than the limit of %" PRIu64 " bytes", max);
		return -EFBIG;
	}
	if (take_slot(rx, u) < 0)
		return -EBUSY;
	/* What a plain body will take is known now: refuse it before it comes. */
	if (!u->zs && u->length != UINT64_MAX) {
		if (charge_temp(rx, u, u->length) < 0 || check_room(rx, u, u->length) < 0)
			return -ENOSPC;
	}
	/* A plain body of known length had its room above; others are
	 * looked at as they grow. */
	u->room_at = u->zs || u->length == UINT64_MAX ? 0 : UINT64_MAX;
	snprintf(u->tmp, sizeof u->tmp, "%s.%020" PRIu64 ".%d.%" PRIu64 ".part", u->group, u->number,
		 (int)getpid(), (uint64_t)atomic_fetch_add(&rx->seq, 1));
	/* Over a kept applied file if there is one: its pages are cached. */
	u->fd = inbox_free_take(rx->r, rx->tmp_fd, u->tmp);
	u->recycled = u->fd >= 0;
	if (u->recycled && !u->zs && u->length != UINT64_MAX)
		cut_to_pages(u->fd, u->length);
	if (u->fd < 0)
		u->fd = openat(rx->tmp_fd, u->tmp,
			       O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
	if (u->fd < 0) {
		if (errno == ENOSPC || errno == EDQUOT)
			no_room(rx, u, inbox_avail(rx), 0, strerror(errno));
		else
			decide(u, 500, "cannot create a temporary file in %s/%s: %s",
			       rx->r->cfg.inbox, INBOX_TMP, strerror(errno));
		return -errno;
	}
	u->tmp_live = true;
	u->pre = seg_precheck_new();
	return 0;
}

/* Writes n bytes at the end of u's file; 0, or decides and returns -errno. */
static int write_file(struct receiver *rx, struct upload *u, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(u->fd, p, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			int e = errno;

			if ((e == ENOSPC || e == EDQUOT) && inbox_free_drop(rx->r))
				continue;
			if (e == ENOSPC || e == EDQUOT)
				no_room(rx, u, inbox_avail(rx), n, strerror(e));
			else
				decide(u, 500, "cannot write the segment to %s/%s: %s",
				       rx->r->cfg.inbox, INBOX_TMP, strerror(e));
			return -e;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/*
 * The same over a kept file, in whole pages only: a write ending inside a
 * page the cache no longer holds (dropped, or evicted since the file was
 * applied) would first read that page's old bytes from the disk.  The
 * tail waits in u->carry for the next bytes, or for finish (end_carry).
 */
static int write_pages(struct receiver *rx, struct upload *u, const char *p, size_t n)
{
	size_t whole;
	int r;

	if (u->carry_len) {
		size_t take = n < CARRY_SIZE - u->carry_len ? n : CARRY_SIZE - u->carry_len;

		memcpy(u->carry + u->carry_len, p, take);
		u->carry_len += take;
		p += take;
		n -= take;
		if (u->carry_len < CARRY_SIZE)
			return 0;
		r = write_file(rx, u, u->carry, CARRY_SIZE);
		if (r < 0)
			return r;
		u->carry_len = 0;
	}
	whole = n - n % CARRY_SIZE;
	if (whole && (r = write_file(rx, u, p, whole)) < 0)
		return r;
	memcpy(u->carry, p + whole, n - whole);
	u->carry_len = n - whole;
	return 0;
}

/* A kept file's last bytes: the old ones after the last whole page are cut
 * first, so that the partial page lies past the end (nothing to read). */
static int end_carry(struct receiver *rx, struct upload *u)
{
	if (ftruncate(u->fd, (off_t)(u->size - u->carry_len)) < 0) {
		decide(u, 500, "cannot cut the received segment to its length: %s",
		       strerror(errno));
		return -errno;
	}
	return write_file(rx, u, u->carry, u->carry_len);
}

static int write_out(struct receiver *rx, struct upload *u, const void *data, size_t n)
{
	if (u->size + n > rx->r->cfg.max_segment) {
		decide(u, 413, "the segment is larger than the limit of %" PRIu64 " bytes",
		       rx->r->cfg.max_segment);
		return -EFBIG;
	}
	/* A plain body was charged and given room for its whole length. */
	if (u->size + n > u->temp && charge_temp(rx, u, u->size + n - u->temp) < 0)
		return -ENOSPC;
	if (u->size + n >= u->room_at) {
		if (check_room(rx, u, ROOM_STEP) < 0)
			return -ENOSPC;
		u->room_at = u->size + n + ROOM_STEP;
	}
	u->size += n;
	seg_precheck_feed(u->pre, data, n);
	return u->recycled ? write_pages(rx, u, data, n) : write_file(rx, u, data, n);
}

static void consume(struct receiver *rx, struct upload *u, const char *data, size_t n)
{
	ZSTD_inBuffer in = { data, n, 0 };

	u->raw += n;
	if (u->raw > rx->r->cfg.max_segment + (1u << 20)) {
		/* compressed data larger than the limit (skippable frames...) */
		decide(u, 413, "the upload is larger than the limit of %" PRIu64 " bytes",
		       rx->r->cfg.max_segment);
		return;
	}
	if (!u->zs) {
		write_out(rx, u, data, n);
		return;
	}
	do {
		ZSTD_outBuffer out = { u->zbuf, u->zbuf_len, 0 };
		size_t ret = ZSTD_decompressStream(u->zs, &out, &in);

		if (ZSTD_isError(ret)) {
			if (ZSTD_getErrorCode(ret) == ZSTD_error_frameParameter_windowTooLarge)
				decide(u, 400, "the zstd frame needs a window larger than %u bytes,"
				       " the largest accepted", 1u << ZSTD_WINDOW_LOG);
			else
				decide(u, 400, "the zstd stream is corrupt: %s",
				       ZSTD_getErrorName(ret));
			return;
		}
		u->zlast = ret;
		if (write_out(rx, u, u->zbuf, out.pos) < 0)
			return;
		if (in.pos == in.size && out.pos < out.size)
			break;
	} while (1);
}

/* Compares the file name in directory dfd with the bytes buf[0..len).
 * Returns 1 identical, 0 different, -ENOENT absent, other -errno. */
static int same_file(int dfd, const char *name, const void *buf, size_t len)
{
	struct stat st;
	void *m;
	int fd, r;

	fd = inbox_open_fd(dfd, name);
	if (fd < 0)
		return fd;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return 0;
	}
	if ((uint64_t)st.st_size != len) {
		close(fd);
		return 0;
	}
	if (!len) {
		close(fd);
		return 1;
	}
	/* the fd's lock keeps the file from reuse until the compare is done */
	m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED) {
		r = -errno;
		close(fd);
		return r;
	}
	r = memcmp(m, buf, len) == 0;
	munmap(m, len);
	close(fd);
	return r;
}

/* A group promoted here, or being promoted, takes no segment: decides
 * 409 with the reason (500 if the state cannot tell) and returns -EPERM;
 * 0 for a group that replicates. */
static int refuse_promoted(struct receiver *rx, struct upload *u)
{
	enum failover_role role;
	uint64_t at, lsn;
	char t[64];
	int r;

	pthread_mutex_lock(&rx->st_lock);
	r = state_role(rx->st, u->group, &role, &at, &lsn);
	pthread_mutex_unlock(&rx->st_lock);
	if (r < 0) {
		decide(u, 500, "cannot read the state");
		return -EIO;
	}
	if (role == FO_PROMOTED) {
		decide(u, 409, "group %s was promoted here (failed over) at %s, at LSN %" PRIu64
		       ": this site applies none of its segments any more; replicate from the"
		       " promoted site with a new mount (README, Failover)", u->group,
		       clock_iso8601(at, 3, t, sizeof t), lsn);
		return -EPERM;
	}
	if (role == FO_PROMOTING) {
		decide(u, 409, "group %s is being promoted here (failed over): it takes no more"
		       " segments", u->group);
		return -EPERM;
	}
	return 0;
}

/* Looks for a copy already held; decides 200/409 and returns 1 if one
 * was found, 0 if not, -errno on failure (decided too). */
static int held_copy(struct receiver *rx, struct upload *u, int gfd, const void *buf, size_t len,
		     uint64_t digest)
{
	static const char *const where[] = { "", GROUP_APPLIED "/" };
	struct state_group sg;
	struct state_segment s;
	int r;

	for (int i = 0; i < 2; i++) {
		char name[64];

		snprintf(name, sizeof name, "%s%s", where[i], u->file);
		r = same_file(gfd, name, buf, len);
		if (r == 1) {
			decide(u, 200, "segment %s of group %s is already here, identical", u->file,
			       u->group);
			return 1;
		}
		if (r == 0) {
			decide(u, 409, "a different segment %s of group %s is already here", u->file,
			       u->group);
			return 1;
		}
		if (r != -ENOENT && r != -ENOTDIR) {
			decide(u, 500, "cannot compare with %s/%s/%s: %s", rx->r->cfg.inbox, u->group,
			       name, strerror(-r));
			return r;
		}
	}
	pthread_mutex_lock(&rx->st_lock);
	r = state_segment_get(rx->st, u->group, u->number, &s);
	if (r == -ENOENT)
		r = state_group_get(rx->st, u->group, &sg) == 0 && sg.applied_segment >= u->number
			    ? 1
			    : -ENOENT;
	pthread_mutex_unlock(&rx->st_lock);
	if (r == 1) {
		/* applied long ago, before the state kept digests */
		decide(u, 200, "segment %s of group %s was applied already", u->file, u->group);
		return 1;
	}
	if (r == 0) {
		if (s.digest == digest && s.size == len)
			decide(u, 200, "segment %s of group %s was applied already, identical", u->file,
			       u->group);
		else
			decide(u, 409, "a different segment %s of group %s was applied already",
			       u->file, u->group);
		return 1;
	}
	if (r != -ENOENT) {
		decide(u, 500, "cannot read the state");
		return r;
	}
	return 0;
}

/* The LSNs of segment number - 1 (its last) or number + 1 (its first), as
 * far as this host knows them: from the state for the segment applied
 * last, from the inbox for one waiting there.  0 and *lsn set, or -ENOENT
 * when unknown (not here, not valid yet: the group's own checks decide). */
static int neighbour_lsn(struct receiver *rx, struct upload *u, int gfd, uint64_t number,
			 bool last, uint64_t *lsn)
{
	char name[SEG_FILE_NAME_LEN + 6], why[256];
	struct state_group sg;
	struct inbox_file f;
	int r;

	if (number == 0)
		return -ENOENT;
	if (last) {
		pthread_mutex_lock(&rx->st_lock);
		r = state_group_get(rx->st, u->group, &sg);
		pthread_mutex_unlock(&rx->st_lock);
		if (r == 0 && sg.applied_segment && sg.applied_segment == number) {
			*lsn = sg.segment_last_lsn;
			return 0;
		}
		if (r == 0 && sg.applied_segment > number)
			return -ENOENT;
	}
	seg_file_name(number, SEG_FILE_SUFFIX, name);
	if (inbox_open(gfd, name, NULL, &f, why, sizeof why) < 0)
		return -ENOENT;
	*lsn = last ? seg_view_last_lsn(f.v) : seg_view_header(f.v)->first_lsn;
	inbox_file_close(&f);
	return 0;
}

/* A segment the group could never apply after the one before it, or
 * before the one after it, that is here already (the group would put it
 * aside and stop, but only when it gets there: a held group gets there
 * when it is released, and meanwhile the genuine segment of that number
 * would be refused as a different copy).  Refused at once with 422, as
 * the group's own check would (groups.c, apply_next).  Returns -EPROTO
 * once decided, 0 to go on. */
static int refuse_discontinuous(struct receiver *rx, struct upload *u, int gfd,
				const struct seg_view *v)
{
	uint64_t first = seg_view_header(v)->first_lsn, last = seg_view_last_lsn(v), lsn;

	if (neighbour_lsn(rx, u, gfd, u->number - 1, true, &lsn) == 0 && first != lsn + 1) {
		decide(u, 422, "segment %" PRIu64 " starts at LSN %" PRIu64 " but segment %" PRIu64
		       " of group %s ends at LSN %" PRIu64 " (expected %" PRIu64 "): it cannot"
		       " follow it", u->number, first, u->number - 1, u->group, lsn, lsn + 1);
		return -EPROTO;
	}
	if (neighbour_lsn(rx, u, gfd, u->number + 1, false, &lsn) == 0 && lsn != last + 1) {
		decide(u, 422, "segment %" PRIu64 " ends at LSN %" PRIu64 " but segment %" PRIu64
		       " of group %s, here already, starts at LSN %" PRIu64 ": it cannot precede it",
		       u->number, last, u->number + 1, u->group, lsn);
		return -EPROTO;
	}
	return 0;
}

/* The last checks and the rename into the group's inbox, under the promote
 * gate (remote_i.h): decides and returns -1 on a refusal, a copy already
 * held or a failure; 0 once the segment is in the inbox. */
static int into_inbox(struct receiver *rx, struct upload *u, int gfd, struct seg_view *v,
		      const void *m)
{
	int r;

	if (refuse_promoted(rx, u) < 0)
		return -1;
	if (held_copy(rx, u, gfd, m, u->size, seg_view_digest(v)) != 0)
		return -1;
	if (refuse_discontinuous(rx, u, gfd, v) < 0)
		return -1;
	r = prechecked_rename(&rx->r->prechecked, u->fd, u->pre, rx->tmp_fd, u->tmp, gfd, u->file);
	u->pre = NULL;
	if (r < 0) {
		if (r == -EEXIST) {
			/* the same segment, uploaded twice at once */
			held_copy(rx, u, gfd, m, u->size, seg_view_digest(v));
			return -1;
		}
		decide(u, 500, "cannot move the segment into %s/%s: %s", rx->r->cfg.inbox, u->group,
		       strerror(-r));
		return -1;
	}
	u->tmp_live = false;
	return 0;
}

static void finish(struct receiver *rx, struct upload *u)
{
	struct seg_view *v = NULL;
	struct seg_err e;
	const void *m;
	char hu[37];
	int gfd = -1, r;

	if (u->zs && u->zlast != 0) {
		decide(u, 400, "the zstd stream ends in the middle of a frame");
		return;
	}
	/* a kept file written over may be longer than this segment */
	if (u->recycled && end_carry(rx, u) < 0)
		return;
	if (fsync(u->fd) < 0) {
		decide(u, 500, "fsync of the received segment: %s", strerror(errno));
		return;
	}
	/* the payloads were hashed on their way into the file: not again,
	 * and the records' headers are read with pread, not through a
	 * mapping (the group does the same with this precheck, handed to it
	 * below, if nothing writes to the file meanwhile) */
	r = u->size ? seg_view_open_fd_prechecked(u->fd, u->pre, &v, &e)
		    : seg_view_new_prechecked("", 0, u->pre, &v, &e);
	if (r == -EBADMSG) {
		decide(u, 422, "not a valid segment: %s (at byte %" PRIu64 ")", e.msg, e.offset);
		goto out;
	}
	if (r < 0) {
		decide(u, 500, "cannot read the received segment: %s", e.msg);
		goto out;
	}
	m = seg_view_bytes(v);
	if (memcmp(seg_view_header(v)->group, u->gid, 16) != 0) {
		seg_uuid_format(seg_view_header(v)->group, hu);
		decide(u, 422, "the segment belongs to group %s, not to %s named in the path", hu,
		       u->group);
		goto out;
	}
	if (seg_view_header(v)->number != u->number) {
		decide(u, 422, "the path names segment %" PRIu64 " but the segment says it is %" PRIu64,
		       u->number, seg_view_header(v)->number);
		goto out;
	}
	gfd = open_group_dir(rx, u->group, true);
	if (gfd < 0) {
		decide(u, 500, "cannot open %s/%s: %s", rx->r->cfg.inbox, u->group, strerror(-gfd));
		goto out;
	}
	pthread_rwlock_rdlock(&rx->r->promote_gate);
	r = into_inbox(rx, u, gfd, v, m);
	pthread_rwlock_unlock(&rx->r->promote_gate);
	if (r < 0)
		goto out;
	if (fsync(gfd) < 0) {
		decide(u, 500, "fsync of %s/%s: %s", rx->r->cfg.inbox, u->group, strerror(errno));
		goto out;
	}
	release_temp(rx, u);
	decide(u, 201, "stored segment %s of group %s", u->file, u->group);
	/* closed before the group looks: a file still open for writing
	 * would not be kept once applied (inbox_free_keep) */
	seg_view_free(v);
	v = NULL;
	close(u->fd);
	u->fd = -1;
	groups_kick(rx->r, u->group);
	groups_note_inbox(rx->r, u->group, NULL);
out:
	if (gfd >= 0)
		close(gfd);
	seg_view_free(v);
}

/* ---- GET ---- */

static enum MHD_Result serve(struct receiver *rx, struct MHD_Connection *conn, struct upload *u)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;
	struct stat st;
	int gfd, fd = -1;
	char name[64];

	gfd = open_group_dir(rx, u->group, false);
	if (gfd >= 0) {
		/* locked until the answer is sent: not reused under it */
		fd = inbox_open_fd(gfd, u->file);
		if (fd < 0) {
			snprintf(name, sizeof name, "%s/%s", GROUP_APPLIED, u->file);
			fd = inbox_open_fd(gfd, name);
		}
		close(gfd);
	}
	if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))) {
		close(fd);
		fd = -1;
	}
	if (fd < 0) {
		decide(u, 404, "no segment %s of group %s here", u->file, u->group);
		return answer(rx, conn, u);
	}
	resp = MHD_create_response_from_fd64((uint64_t)st.st_size, fd);
	if (!resp) {
		close(fd);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/octet-stream");
	ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	atomic_fetch_add_explicit(&rx->r->rx.gets, 1, memory_order_relaxed);
	return ret;
}

/* ---- GET .../mismatches ---- */

/* The query: one "after" of decimal digits, nothing else (nothing is
 * decoded: see no_unescape). */
static enum MHD_Result query_arg(void *cls, enum MHD_ValueKind kind, const char *key,
				 const char *value)
{
	struct upload *u = cls;
	char *end;

	(void)kind;
	if (u->code)
		return MHD_NO;
	if (strcmp(key, PROTO_ARG_AFTER) != 0) {
		decide(u, 400, "unknown argument; only after=<LSN> is accepted");
		return MHD_NO;
	}
	if (u->after != UINT64_MAX) {
		decide(u, 400, "after is given twice");
		return MHD_NO;
	}
	errno = 0;
	if (!value || !*value || strspn(value, "0123456789") != strlen(value) ||
	    (u->after = strtoull(value, &end, 10), errno) || u->after == UINT64_MAX) {
		decide(u, 400, "after takes an LSN in decimal digits");
		return MHD_NO;
	}
	return MHD_YES;
}

struct ranges_ctx {
	struct proto_mismatches m;
	size_t cap;
	bool failed;
};

static void add_range(void *ctx, const struct state_mismatch *sm)
{
	struct ranges_ctx *c = ctx;
	struct proto_range *r;

	if (c->m.nranges == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 64;
		struct proto_range *nr = realloc(c->m.ranges, cap * sizeof *nr);

		if (!nr) {
			c->failed = true;
			return;
		}
		c->m.ranges = nr;
		c->cap = cap;
	}
	r = &c->m.ranges[c->m.nranges];
	r->image = strdup(sm->image);
	if (!r->image) {
		c->failed = true;
		return;
	}
	r->lsn = sm->lsn;
	r->image_id = sm->image_id;
	r->offset = sm->offset;
	r->length = sm->length;
	c->m.nranges++;
}

/* The group's state word and error, for the report. */
static void say_state(void *ctx, const struct group_snapshot *s)
{
	struct proto_mismatches *m = ctx;

	if (strcmp(s->name, m->group) != 0)
		return;
	snprintf(m->state, sizeof m->state, "%s", group_state_name(s->state));
	snprintf(m->error, sizeof m->error, "%s", s->state == GROUP_STOPPED ? s->error : "");
}

/* The mismatch report (common/protocol.h defines its form). */
static enum MHD_Result serve_mismatches(struct receiver *rx, struct MHD_Connection *conn,
					struct upload *u)
{
	struct ranges_ctx c = { 0 };
	struct MHD_Response *resp;
	struct state_group g;
	enum MHD_Result ret;
	json_t *o, *targets = NULL;
	char *text;
	int r;

	pthread_mutex_lock(&rx->st_lock);
	r = state_mismatches_each(rx->st, u->group, u->after, MISMATCHES_ANSWER_MAX, &g, add_range,
				  &c, &c.m.more);
	pthread_mutex_unlock(&rx->st_lock);
	if (r < 0 || c.failed) {
		proto_mismatches_free(&c.m);
		if (r == -ENOENT)
			decide(u, 404, PROTO_NO_GROUP "%s here", u->group);
		else
			decide(u, 500, c.failed ? "out of memory" : "cannot read the state");
		return answer(rx, conn, u);
	}
	snprintf(c.m.group, sizeof c.m.group, "%s", u->group);
	c.m.applied_lsn = g.applied_lsn;
	c.m.consistent = g.sync.consistent;
	c.m.pruned_lsn = g.pruned_lsn;
	groups_each(rx->r, say_state, &c.m);
	/* The first question of a resync: it also learns what we hold. */
	if (u->after == 0 && rx->r->cfg.target_dir)
		targets = targets_list(rx->r->cfg.target_dir, rx->r->cfg.maps, rx->r->cfg.nmaps);
	o = proto_mismatches_json(&c.m, targets);
	proto_mismatches_free(&c.m);
	text = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	if (!text)
		return MHD_NO;
	resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, PROTO_JSON_TYPE);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	atomic_fetch_add_explicit(&rx->r->rx.gets, 1, memory_order_relaxed);
	return ret;
}

/* ---- libmicrohttpd callbacks ---- */

static void peer_name(struct MHD_Connection *conn, char *buf, size_t len)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	char host[INET6_ADDRSTRLEN] = "?";

	if (ci && ci->client_addr) {
		socklen_t sl = ci->client_addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
								     : sizeof(struct sockaddr_in);

		getnameinfo(ci->client_addr, sl, host, sizeof host, NULL, 0, NI_NUMERICHOST);
	}
	snprintf(buf, len, "%s", host);
}

/* Everything before the body: leaves u->code 0 when the body is to be
 * received, or decides the answer. */
static void begin(struct receiver *rx, struct MHD_Connection *conn, struct upload *u,
		  const char *url, const char *method)
{
	const char *why = NULL, *expect;
	int r;

	printable(url, u->url, sizeof u->url);
	printable(method, u->method, sizeof u->method);
	peer_name(conn, u->peer, sizeof u->peer);
	u->put = strcmp(method, MHD_HTTP_METHOD_PUT) == 0;
	expect = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
	u->respond_now = expect && strcasecmp(expect, "100-continue") == 0;
	if (!u->put && strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
	    strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
		decide(u, 405, "only PUT, GET and HEAD are served here");
		return;
	}
	if (rx->r->cfg.client_ca && check_client_cert(conn, u) < 0)
		return;
	if (rx->have_token && check_token(rx, conn, u) < 0)
		return;
	guard_authenticated(u->gc);
	r = receiver_parse_mismatches_path(url, u->group, u->gid, &why);
	if (r == 0) {
		u->mismatches = true;
		if (u->put) {
			decide(u, 405, "%s is read-only: GET it", MISMATCHES);
			return;
		}
		u->after = UINT64_MAX;
		MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, query_arg, u);
		if (u->after == UINT64_MAX)
			u->after = 0;
		return;
	}
	if (r != -ENOENT) {
		decide(u, 400, "bad path: %s", why);
		return;
	}
	if (receiver_parse_path(url, u->group, u->gid, u->file, &u->number, &why) < 0) {
		decide(u, 400, "bad path: %s", why);
		return;
	}
	if (u->put && refuse_promoted(rx, u) == 0)
		start_upload(rx, conn, u);
}

/* The connection's record in the guard (NULL if it has none). */
static struct guard_conn *conn_guard(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

	return ci ? ci->socket_context : NULL;
}

/* True if a body follows the header. */
static bool has_body(struct MHD_Connection *conn)
{
	const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						      MHD_HTTP_HEADER_CONTENT_LENGTH);

	return MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					   MHD_HTTP_HEADER_TRANSFER_ENCODING) ||
	       (cl && strcmp(cl, "0") != 0);
}

static struct upload *upload_new(struct MHD_Connection *conn)
{
	struct upload *u = calloc(1, sizeof *u);

	if (!u)
		return NULL;
	u->fd = -1;
	u->usable = -1;
	u->gc = conn_guard(conn);
	return u;
}

/* A refusal decided before the body: through libmicrohttpd with
 * "Connection: close" when no body follows or the client waits for "100
 * Continue", otherwise onto the session, then lingering. */
static enum MHD_Result refuse_early(struct receiver *rx, struct MHD_Connection *conn,
				    struct upload *u)
{
	bool body = has_body(conn);

	if (!body || u->respond_now) {
		u->early = body;
		return answer(rx, conn, u);
	}
	return answer_direct(rx, conn, u) == 0 ? MHD_YES : MHD_NO;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *data,
				  size_t *data_size, void **req_cls)
{
	struct receiver *rx = cls;
	struct upload *u = *req_cls;
	size_t n;

	(void)version;
	if (!u) {
		/* Made at the request line (on_uri); this is the fallback. */
		u = upload_new(conn);
		if (!u)
			return MHD_NO;
		*req_cls = u;
	}
	if (!u->begun) {
		u->begun = true;
		begin(rx, conn, u, url, method);
		guard_headers_done(u->gc, u->put && !u->code && has_body(conn));
		if (!u->put) {
			if (u->code)
				return answer(rx, conn, u);
			u->queued = true;
			return u->mismatches ? serve_mismatches(rx, conn, u) : serve(rx, conn, u);
		}
		if (u->code)
			return refuse_early(rx, conn, u);
		return MHD_YES;
	}
	if (u->queued) {
		*data_size = 0;
		return MHD_YES;
	}
	n = *data_size;
	*data_size = 0;
	if (u->answered) {
		/* Answered already: read and drop for a while, then close. */
		u->dropped += n;
		if (!n || u->dropped > LINGER_MAX || clock_mono_ns() >= u->linger_until)
			return MHD_NO;
		return MHD_YES;
	}
	if (n) {
		if (!guard_body(u->gc, n))
			decide(u, 408, "the upload is slower than the minimum rate of %" PRIu64
			       " bytes per second (--min-rate)", rx->r->cfg.lim.min_rate);
		else
			consume(rx, u, data, n);
		if (u->code)
			return answer_direct(rx, conn, u) == 0 ? MHD_YES : MHD_NO;
		return MHD_YES;
	}
	if (!u->code)
		finish(rx, u);
	return answer(rx, conn, u);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct receiver *rx = cls;
	struct upload *u = *req_cls;

	guard_request_done(conn_guard(conn));
	if (!u)
		return;
	if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && u->put && !u->code)
		log_info("upload of %s from %s did not complete (the client went away)", u->url,
			 u->peer);
	if (u->fd >= 0)
		close(u->fd);
	if (u->tmp_live)
		unlinkat(rx->tmp_fd, u->tmp, 0);
	release_temp(rx, u);
	release_slot(rx, u);
	ZSTD_freeDStream(u->zs);
	free(u->zbuf);
	seg_precheck_free(u->pre);
	free(u);
	*req_cls = NULL;
}

/* The request line arrived: the header's deadline starts (for a later
 * request of the connection), and the request's record is made. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
	(void)cls;
	(void)uri;
	guard_request_line(conn_guard(conn));
	return upload_new(conn);
}

/* The client's Finished message: the handshake is over (in TLS 1.2 the
 * server's own Finished follows at once, without waiting for the peer). */
static int on_finished(gnutls_session_t s, unsigned htype, unsigned when, unsigned incoming,
		       const gnutls_datum_t *msg)
{
	struct MHD_Connection *conn = gnutls_session_get_ptr(s);

	(void)htype;
	(void)when;
	(void)msg;
	if (incoming && conn)
		guard_handshake_done(conn_guard(conn));
	return 0;
}

/* What a client certificate must be fit for; GnuTLS keeps a pointer. */
static gnutls_typed_vdata_st client_purpose = {
	.type = GNUTLS_DT_KEY_PURPOSE_OID,
	.data = (unsigned char *)GNUTLS_KP_TLS_WWW_CLIENT,
};

/*
 * A connection accepted, before its handshake: the guard tracks it, and
 * with --client-ca its TLS session requires a certificate that GnuTLS
 * verifies against the CA during the handshake (libmicrohttpd only asks
 * for one).  Closed: the guard forgets it, before its socket is closed.
 */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
			  enum MHD_ConnectionNotificationCode code)
{
	struct receiver *rx = cls;
	const union MHD_ConnectionInfo *fd, *addr, *tls;
	gnutls_session_t s;

	if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
		guard_close(*socket_context);
		*socket_context = NULL;
		return;
	}
	fd = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	addr = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	tls = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
	if (fd)
		*socket_context = guard_open(rx->guard, fd->connect_fd,
					     addr ? addr->client_addr : NULL);
	s = tls ? (gnutls_session_t)tls->tls_session : NULL;
	if (!s)
		return;
	if (rx->ca) {
		gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
		gnutls_session_set_verify_cert2(s, &client_purpose, 1, 0);
	}
	gnutls_handshake_set_hook_function(s, GNUTLS_HANDSHAKE_FINISHED, GNUTLS_HOOK_POST,
					   on_finished);
}

/* Nothing is decoded: receiver_parse_path refuses '%' instead. */
static size_t no_unescape(void *cls, struct MHD_Connection *c, char *s)
{
	(void)cls;
	(void)c;
	return strlen(s);
}

/* libmicrohttpd's own messages (handshake failures of scanners and of
 * clients without a certificate, mostly): for debugging only. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char line[512];
	size_t n;

	(void)cls;
	if (!log_enabled(LOG_LVL_DEBUG))
		return;
	vsnprintf(line, sizeof line, fmt, ap);
	n = strlen(line);
	while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = '\0';
	log_debug("receiver: %s", line);
}

/* ---- start and stop ---- */

/* Reads a whole small file (certificate, key, CA, token). */
static int read_small(const char *what, const char *path, size_t max, char **out)
{
	struct stat st;
	char *buf;
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		log_error("%s %s: %m", what, path);
		return -errno;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (size_t)st.st_size > max) {
		log_error("%s %s: not a regular file of at most %zu bytes", what, path, max);
		close(fd);
		return -EINVAL;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	n = read(fd, buf, (size_t)st.st_size);
	close(fd);
	if (n < 0) {
		log_error("%s %s: %m", what, path);
		free(buf);
		return -errno;
	}
	buf[n] = '\0';
	*out = buf;
	return 0;
}

static int load_token(struct receiver *rx, const char *path)
{
	char *tok;
	size_t n;
	int r = read_small("token file", path, TOKEN_MAX, &tok);

	if (r < 0)
		return r;
	n = strlen(tok);
	while (n && (tok[n - 1] == '\n' || tok[n - 1] == '\r' || tok[n - 1] == ' ' ||
		     tok[n - 1] == '\t'))
		tok[--n] = '\0';
	for (size_t i = 0; i < n; i++) {
		if (tok[i] <= 0x20 || tok[i] >= 0x7f) {
			log_error("token file %s: the token must be one line of visible ASCII characters",
				  path);
			r = -EINVAL;
			goto out;
		}
	}
	if (!n) {
		log_error("token file %s is empty", path);
		r = -EINVAL;
		goto out;
	}
	if (gnutls_hash_fast(GNUTLS_DIG_SHA256, tok, n, rx->token_hash) < 0) {
		r = -EIO;
		goto out;
	}
	rx->have_token = true;
out:
	explicit_bzero(tok, n);
	free(tok);
	return r;
}

/* Loads the TLS material and the priority string the way libmicrohttpd
 * will, to say precisely what is wrong with them before listening. */
static int check_tls(const struct remote_config *c, struct receiver *rx)
{
	gnutls_certificate_credentials_t cred;
	gnutls_datum_t cert = { (unsigned char *)rx->cert, (unsigned)strlen(rx->cert) };
	gnutls_datum_t key = { (unsigned char *)rx->key, (unsigned)strlen(rx->key) };
	gnutls_priority_t prio;
	const char *at = NULL;
	int r;

	r = gnutls_priority_init(&prio, c->tls_priority, &at);
	if (r < 0) {
		log_error("--tls-priority %s: %s%s%s", c->tls_priority, gnutls_strerror(r),
			  at ? " at " : "", at ? at : "");
		return -EINVAL;
	}
	gnutls_priority_deinit(prio);
	if (gnutls_certificate_allocate_credentials(&cred) < 0)
		return -ENOMEM;
	r = gnutls_certificate_set_x509_key_mem(cred, &cert, &key, GNUTLS_X509_FMT_PEM);
	if (r < 0) {
		log_error("--tls-cert %s / --tls-key %s: %s", c->tls_cert, c->tls_key,
			  gnutls_strerror(r));
		gnutls_certificate_free_credentials(cred);
		return -EINVAL;
	}
	if (rx->ca) {
		gnutls_datum_t ca = { (unsigned char *)rx->ca, (unsigned)strlen(rx->ca) };

		r = gnutls_certificate_set_x509_trust_mem(cred, &ca, GNUTLS_X509_FMT_PEM);
		if (r <= 0) {
			log_error("--client-ca %s: %s", c->client_ca,
				  r == 0 ? "no certificate in it" : gnutls_strerror(r));
			gnutls_certificate_free_credentials(cred);
			return -EINVAL;
		}
	}
	gnutls_certificate_free_credentials(cred);
	return 0;
}

/* Empties inbox/.tmp: what is there was left by a run that stopped in the
 * middle of an upload. */
static int open_tmp_dir(struct remote *r)
{
	struct dirent *de;
	DIR *d;
	int fd, dfd;

	fd = inbox_tmp_open(r);
	if (fd < 0)
		return fd;
	dfd = dup(fd);
	d = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (d) {
		while ((de = readdir(d)))
			if (de->d_type == DT_REG)
				unlinkat(fd, de->d_name, 0);
		closedir(d);
	} else if (dfd >= 0) {
		close(dfd);
	}
	return fd;
}

/* Loads the certificate, key, CA and token into rx and checks them. */
static int load_material(const struct remote_config *c, struct receiver *rx)
{
	int rc = read_small("--tls-cert", c->tls_cert, PEM_MAX, &rx->cert);

	if (rc == 0)
		rc = read_small("--tls-key", c->tls_key, PEM_MAX, &rx->key);
	if (rc == 0 && c->client_ca)
		rc = read_small("--client-ca", c->client_ca, PEM_MAX, &rx->ca);
	if (rc == 0)
		rc = check_tls(c, rx);
	if (rc == 0 && c->token_file)
		rc = load_token(rx, c->token_file);
	return rc;
}

int receiver_check(const struct remote_config *c)
{
	struct receiver *rx = calloc(1, sizeof *rx);
	int rc;

	if (!rx)
		return -ENOMEM;
	rx->tmp_fd = -1;
	pthread_mutex_init(&rx->st_lock, NULL);
	pthread_mutex_init(&rx->up_lock, NULL);
	rc = load_material(c, rx);
	receiver_stop(rx);
	return rc;
}

/* libmicrohttpd's idle timeout, in seconds: later than any of guard.c's
 * deadlines, for a connection no deadline covers (an answer being sent). */
static unsigned backstop_s(const struct remote_limits *l)
{
	uint64_t ns = l->idle_ns;

	if (l->handshake_ns > ns)
		ns = l->handshake_ns;
	if (2 * l->header_ns > ns)
		ns = 2 * l->header_ns;
	return (unsigned)(ns / 1000000000ULL) + 5;
}

int receiver_start(struct remote *r, struct receiver **out)
{
	const struct remote_config *c = &r->cfg;
	struct addrinfo hints = { .ai_flags = AI_NUMERICSERV, .ai_socktype = SOCK_STREAM }, *ai;
	struct receiver *rx;
	char host[256], port_s[8];
	uint16_t port;
	unsigned flags;
	int rc;

	if (parse_hostport(c->listen, host, sizeof host, &port) < 0 || !port) {
		log_error("--listen %s: expected ADDR:PORT", c->listen);
		return -EINVAL;
	}
	snprintf(port_s, sizeof port_s, "%u", port);
	rx = calloc(1, sizeof *rx);
	if (!rx)
		return -ENOMEM;
	rx->r = r;
	rx->tmp_fd = -1;
	pthread_mutex_init(&rx->st_lock, NULL);
	pthread_mutex_init(&rx->up_lock, NULL);
	rx->gu = calloc(c->lim.max_uploads, sizeof *rx->gu);
	if (!rx->gu) {
		rc = -ENOMEM;
		goto fail;
	}
	rc = load_material(c, rx);
	if (rc < 0)
		goto fail;
	rc = guard_start(&c->lim, &r->rx, &rx->guard);
	if (rc < 0)
		goto fail;
	rc = state_open(r->db_path, &rx->st);
	if (rc < 0)
		goto fail;
	rx->tmp_fd = open_tmp_dir(r);
	if (rx->tmp_fd < 0) {
		rc = rx->tmp_fd;
		goto fail;
	}
	rc = getaddrinfo(host, port_s, &hints, &ai);
	if (rc) {
		log_error("--listen %s: %s", c->listen, gai_strerror(rc));
		rc = -EINVAL;
		goto fail;
	}
	flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_TLS | MHD_USE_ERROR_LOG |
		(ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0);
	rx->mhd = MHD_start_daemon(flags, port, NULL, NULL, on_request, rx,
				   MHD_OPTION_EXTERNAL_LOGGER, mhd_log, rx, /* first: all go there */
				   MHD_OPTION_SOCK_ADDR, ai->ai_addr,
				   MHD_OPTION_HTTPS_MEM_CERT, rx->cert,
				   MHD_OPTION_HTTPS_MEM_KEY, rx->key,
				   /* without a CA, the key again: a no-op in the list */
				   rx->ca ? MHD_OPTION_HTTPS_MEM_TRUST : MHD_OPTION_HTTPS_MEM_KEY,
				   rx->ca ? rx->ca : rx->key,
				   MHD_OPTION_HTTPS_PRIORITIES, c->tls_priority,
				   MHD_OPTION_THREAD_POOL_SIZE, (unsigned)POOL_THREADS,
				   /* a backstop: guard.c's deadlines come first */
				   MHD_OPTION_CONNECTION_TIMEOUT, backstop_s(&c->lim),
				   MHD_OPTION_CONNECTION_LIMIT, c->lim.max_connections,
				   MHD_OPTION_PER_IP_CONNECTION_LIMIT, c->lim.max_per_address,
				   MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(256 * 1024),
				   MHD_OPTION_NOTIFY_CONNECTION, on_connection, rx,
				   MHD_OPTION_URI_LOG_CALLBACK, on_uri, rx,
				   MHD_OPTION_NOTIFY_COMPLETED, on_completed, rx,
				   MHD_OPTION_UNESCAPE_CALLBACK, no_unescape, rx,
				   MHD_OPTION_END);
	freeaddrinfo(ai);
	if (!rx->mhd) {
		log_error("cannot listen on %s for segments (address in use, or TLS unusable?)",
			  c->listen);
		rc = -EADDRINUSE;
		goto fail;
	}
	if (!rx->have_token && !rx->ca)
		log_warn("the receiver on %s accepts segments from anyone: give --token-file or --client-ca",
			 c->listen);
	*out = rx;
	return 0;
fail:
	receiver_stop(rx);
	return rc;
}

void receiver_stop(struct receiver *rx)
{
	if (!rx)
		return;
	if (rx->mhd)
		MHD_stop_daemon(rx->mhd);
	guard_stop(rx->guard);
	state_close(rx->st);
	if (rx->tmp_fd >= 0)
		close(rx->tmp_fd);
	free(rx->cert);
	if (rx->key) {
		explicit_bzero(rx->key, strlen(rx->key));
		free(rx->key);
	}
	free(rx->ca);
	free(rx->gu);
	pthread_mutex_destroy(&rx->st_lock);
	pthread_mutex_destroy(&rx->up_lock);
	free(rx);
}
