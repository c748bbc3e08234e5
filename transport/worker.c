/*
 * worker.c — one thread per destination: ship the next segment, record the
 * acknowledgement, repeat; wait for new segments when in sync.  An https
 * destination gets a PUT from here; an object store (type = s3) gets its
 * segments through s3.c, which also owes the store chores (HEAD,
 * retention) that the worker runs like a shipment when nothing waits.
 *
 * A PUT's outcome decides the link state (curl's CURLcode and the HTTP
 * status, converted once, in classify(); the state changes in
 * dest_link_set):
 *   2xx                 acknowledged: the catalog records it, then pruning
 *   network error, 5xx,
 *   408, 429            retry after 1, 2, 4 ... 60 s, +-20 % jitter, or after
 *                       the receiver's Retry-After when it gives one
 *   other 4xx           stopped, with the status and the receiver's reason
 * An answer that arrives before the whole body was sent (a receiver that
 * refuses in the middle, then closes) counts as that answer, not as the
 * network error that the closing may cause next.  TLS 1.2 is the least
 * version accepted, whatever the system's OpenSSL configuration allows.
 * The libcurl easy handle belongs to this thread and is reused, so TLS
 * sessions and connections are kept between segments.
 */
#include "transport_i.h"
#include "clock.h"
#include "catalog.h"
#include "fileio.h"
#include "log.h"
#include "protocol.h"
#include "strbuf.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#define BACKOFF_MIN_NS 1000000000ULL
#define BACKOFF_MAX_NS 60000000000ULL
#define REPLY_MAX 512
#define ZSTD_LEVEL 3
#define REMOTE_ASK_NS 2000000000ULL /* how often to ask a remote what it applied */
#define REMOTE_ASK_TIMEOUT_S 5L

static int get_with_timeout(struct transport *t, size_t i, const char *suffix, long timeout_s,
			    long *status, char **body, bool *json);

struct upload {
	const uint8_t *data;
	size_t len, pos;
	struct seg_view *view;   /* data is its mapping: release pages as sent */
	int fd;                  /* >= 0 (then no view): data is this file's bytes; pread them */
	int read_err;            /* why reading fd failed (the transfer was aborted) */
	char reply[REPLY_MAX];
	size_t reply_len;
};

static size_t read_body(char *buf, size_t size, size_t nitems, void *ctx)
{
	struct upload *u = ctx;
	size_t n = size * nitems;

	if (n > u->len - u->pos)
		n = u->len - u->pos;
	if (u->fd >= 0) {
		/* From the page cache by the kernel's copy: reading the mapping
		 * again would fault every page back in (validation let them go),
		 * which costs a hypervisor exit per page on VMs that shadow page
		 * tables.  A sealed segment does not change while it is shipped. */
		ssize_t got = fileio_pread_full(NULL, u->fd, buf, n, u->pos);

		if (got != (ssize_t)n) {
			u->read_err = got < 0 ? (int)-got : EIO; /* short: the file shrank */
			return CURL_READFUNC_ABORT;
		}
	} else {
		memcpy(buf, u->data + u->pos, n);
		if (u->view)
			seg_view_release(u->view, u->pos + n);
	}
	u->pos += n;
	return n;
}

static int seek_body(void *ctx, curl_off_t off, int origin)
{
	struct upload *u = ctx;

	if (origin != SEEK_SET || off < 0 || (size_t)off > u->len)
		return CURL_SEEKFUNC_CANTSEEK;
	u->pos = (size_t)off;
	return CURL_SEEKFUNC_OK;
}

static size_t keep_reply(char *buf, size_t size, size_t nitems, void *ctx)
{
	struct upload *u = ctx;
	size_t n = size * nitems, room = sizeof u->reply - 1 - u->reply_len;

	memcpy(u->reply + u->reply_len, buf, n < room ? n : room);
	u->reply_len += n < room ? n : room;
	u->reply[u->reply_len] = '\0';
	return n;
}


/* First line of a receiver's reply, printable, for error messages. */
static void reply_line(const struct upload *u, char *out, size_t len)
{
	size_t i;

	for (i = 0; i + 1 < len && i < u->reply_len && u->reply[i] != '\n' && u->reply[i] != '\r'; i++)
		out[i] = (u->reply[i] >= 0x20 && u->reply[i] < 0x7f) ? u->reply[i] : '?';
	out[i] = '\0';
}

static enum outcome classify(struct dest *d, CURLcode cc, long status, const struct upload *u,
			     const char *curl_err)
{
	char why[200];

	if (u->read_err) {
		dest_set_error(d, "reading the segment to send it: %s", strerror(u->read_err));
		return SHIP_RETRY;
	}
	if (cc != CURLE_OK && status < 400) {
		/* Network and TLS failures are retried, TLS ones included: a
		 * certificate can be fixed on the remote without touching the
		 * source, and the status shows the reason meanwhile. */
		dest_set_error(d, "%s", curl_err[0] ? curl_err : curl_easy_strerror(cc));
		return SHIP_RETRY;
	}
	if (proto_verdict(status) == PROTO_ACKED)
		return SHIP_OK;
	reply_line(u, why, sizeof why);
	dest_set_error(d, "HTTP %ld from %s%s%s", status, d->cfg.url, why[0] ? ": " : "", why);
	return proto_verdict(status) == PROTO_RETRY ? SHIP_RETRY : SHIP_FATAL;
}

/* headers[0] for plain bodies, headers[1] for zstd ones. */
static CURL *make_handle(struct dest *d, struct curl_slist *headers[2], char *errbuf)
{
	CURL *c = curl_easy_init();
	char auth[4200];

	if (!c)
		return NULL;
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, dest_connect_timeout_ms(&d->cfg));
	/* A transfer that moves nothing for a minute is dead. */
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
	curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https,http");
	curl_easy_setopt(c, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	if (d->cfg.ca_file)
		curl_easy_setopt(c, CURLOPT_CAINFO, d->cfg.ca_file);
	if (d->cfg.cert_file)
		curl_easy_setopt(c, CURLOPT_SSLCERT, d->cfg.cert_file);
	if (d->cfg.key_file)
		curl_easy_setopt(c, CURLOPT_SSLKEY, d->cfg.key_file);
	if (d->cfg.pin)
		curl_easy_setopt(c, CURLOPT_PINNEDPUBLICKEY, d->cfg.pin);
	if (d->cfg.rate)
		curl_easy_setopt(c, CURLOPT_MAX_SEND_SPEED_LARGE, (curl_off_t)d->cfg.rate);
	for (int i = 0; i < 2; i++) {
		headers[i] = curl_slist_append(NULL, "Content-Type: " PROTO_SEGMENT_TYPE);
		if (i == 1)
			headers[i] = curl_slist_append(headers[i],
						       "Content-Encoding: " PROTO_ENCODING_ZSTD);
		if (d->cfg.token) {
			snprintf(auth, sizeof auth, "Authorization: " PROTO_BEARER "%s", d->cfg.token);
			headers[i] = curl_slist_append(headers[i], auth);
			memset(auth, 0, sizeof auth);
		}
	}
	return c;
}

/* Compressed copy of data if it saves at least a tenth, else NULL. */
static uint8_t *maybe_compress(const uint8_t *data, size_t len, size_t *out_len)
{
	size_t cap = ZSTD_compressBound(len), n;
	uint8_t *buf = malloc(cap);

	if (!buf)
		return NULL;
	n = ZSTD_compress(buf, cap, data, len, ZSTD_LEVEL);
	if (ZSTD_isError(n) || n > len - len / 10) {
		free(buf);
		return NULL;
	}
	*out_len = n;
	return buf;
}

static enum outcome put(struct dest *d, CURL *c, struct curl_slist *headers[2], const char *file,
			const uint8_t *body, size_t len, bool compressed, struct seg_view *view,
			int fd, char *errbuf)
{
	struct upload u = { .data = body, .len = len, .view = view, .fd = fd };
	curl_off_t retry_after = 0;
	char url[8192];
	long status = 0;
	CURLcode cc;

	snprintf(url, sizeof url, "%s/%s/%s", d->cfg.url, d->t->group_s, file);
	errbuf[0] = '\0';
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers[compressed]);
	curl_easy_setopt(c, CURLOPT_READFUNCTION, read_body);
	curl_easy_setopt(c, CURLOPT_READDATA, &u);
	curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, seek_body);
	curl_easy_setopt(c, CURLOPT_SEEKDATA, &u);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, keep_reply);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &u);
	curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
	cc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	if (curl_easy_getinfo(c, CURLINFO_RETRY_AFTER, &retry_after) != CURLE_OK || retry_after < 0)
		retry_after = 0;
	/* The receiver says when to come back (a full inbox, too many uploads). */
	d->retry_after_ns = status >= 500 || status == 429 ? (uint64_t)retry_after * 1000000000ULL : 0;
	if (d->retry_after_ns > BACKOFF_MAX_NS)
		d->retry_after_ns = BACKOFF_MAX_NS;
	/* No final answer (at most a 100 Continue), and the request may have
	 * gone out (not a failure to connect): the receiver may hold it. */
	d->unanswered = cc != CURLE_OK && status < 200 && !u.read_err && cc != CURLE_COULDNT_CONNECT &&
			cc != CURLE_COULDNT_RESOLVE_HOST && cc != CURLE_COULDNT_RESOLVE_PROXY;
	return classify(d, cc, status, &u, errbuf);
}

/*
 * Ships segment n.  Returns the outcome; on SHIP_OK fills the LSNs and
 * bytes to acknowledge.
 */
static enum outcome ship(struct dest *d, CURL *c, struct curl_slist *headers[2],
			 struct s3_dest *sd, struct catalog *cat, uint64_t n, uint64_t *src_last,
			 uint64_t *dfirst, uint64_t *dlast, uint64_t *sent, bool *skeleton,
			 char *errbuf)
{
	char file[SEG_FILE_NAME_LEN + 8], path[4200];
	struct seg_view *v;
	struct seg_err err;
	uint8_t *filtered = NULL, *packed = NULL;
	const uint8_t *body;
	size_t len, plen = 0;
	uint64_t first;
	enum filter_mode mode;
	enum outcome o;
	int r, fd;

	seg_file_name(n, SEG_FILE_SUFFIX, file);
	d->unanswered = false;
	pthread_mutex_lock(&d->t->lock);
	mode = dest_tracking(d) ? FILTER_SKELETON : FILTER_NORMAL;
	pthread_mutex_unlock(&d->t->lock);
	if (mode == FILTER_SKELETON && !skeleton_exists(d->t, d, n)) {
		r = skeleton_make(d->t, d, cat, n);
		if (r == -EAGAIN) {
			mode = FILTER_NORMAL; /* tracking ended meanwhile: the segment itself */
		} else if (r == -EBADMSG) {
			return SHIP_RESYNC; /* skeleton_damaged said why */
		} else if (r == -ENOENT) {
			dest_set_error(d, "segment %s is no longer in the journal; this destination"
				     " needs a resync", file);
			return SHIP_RESYNC;
		} else if (r < 0) {
			dest_set_error(d, "cannot make the skeleton of segment %s: %s", file,
				       strerror(-r));
			return SHIP_RETRY;
		}
	}
	if (skeleton_exists(d->t, d, n)) {
		/* Stored while tracking: already in the destination's sequence. */
		skeleton_path(d->t, d, n, path, sizeof path);
		r = seg_view_open(path, &v, &err);
		if (view_error_is_damage(r)) {
			/* Never sent as it is; what it stood for is lost. */
			dest_set_error(d, "the stored skeleton of segment %s is damaged (%s): it"
				     " needs a resync", file, err.msg);
			return SHIP_RESYNC;
		}
		if (r < 0) {
			dest_set_error(d, "cannot read the skeleton of segment %s: %s", file,
				       strerror(-r));
			return SHIP_RETRY;
		}
		*dfirst = seg_view_header(v)->first_lsn;
		*dlast = seg_view_last_lsn(v);
		if (catalog_segment_last_lsn(cat, n, src_last) < 0)
			*src_last = 0;
		*skeleton = true;
		if (sd)
			o = s3_dest_put(sd, n, seg_view_bytes(v), seg_view_size(v), v, NULL, 0);
		else
			o = put(d, c, headers, file, seg_view_bytes(v), seg_view_size(v), false, v,
				-1, errbuf);
		*sent = seg_view_size(v);
		seg_view_free(v);
		return o;
	}
	snprintf(path, sizeof path, "%s/%s", d->t->journal_dir, file);
	fd = seg_open_file(path, &err);
	r = fd < 0 ? fd : seg_view_open_fd(fd, &v, &err);
	if (r < 0 && fd >= 0)
		close(fd);
	if (r == -ENOENT) {
		dest_set_error(d, "segment %s is no longer in the journal; this destination needs a"
			     " resync", file);
		return SHIP_RESYNC;
	}
	if (view_error_is_damage(r)) {
		/* Never ship something the receiver would refuse anyway; what
		 * its records changed is unknown, so every image is compared. */
		dest_set_error(d, "journal segment %s is damaged (%s): it needs a resync", file,
			       err.msg);
		return SHIP_RESYNC;
	}
	if (r < 0) {
		dest_set_error(d, "cannot read segment %s: %s", file, strerror(-r));
		return SHIP_RETRY;
	}
	/* filter_body iterates the records: their headers with pread too */
	seg_view_iterate_from(v, fd);
	*src_last = seg_view_last_lsn(v);
	pthread_mutex_lock(&d->t->lock);
	first = d->dest_last_lsn + 1;
	pthread_mutex_unlock(&d->t->lock);
	if (filter_body(d, mode, v, first, &body, &len, &filtered, dfirst, dlast) < 0) {
		seg_view_free(v);
		close(fd);
		dest_set_error(d, "out of memory filtering segment %s", file);
		return SHIP_RETRY;
	}
	if (d->cfg.compress)
		packed = maybe_compress(body, len, &plen);
	if (sd)
		o = s3_dest_put(sd, n, body, len, body == seg_view_bytes(v) ? v : NULL, packed,
				plen);
	else /* the file as it is: sent from it with pread */
		o = put(d, c, headers, file, packed ? packed : body, packed ? plen : len,
			packed != NULL, NULL, body == seg_view_bytes(v) && !packed ? fd : -1,
			errbuf);
	*sent = packed ? plen : len;
	pthread_mutex_lock(&d->t->lock);
	d->bytes_raw += len;
	pthread_mutex_unlock(&d->t->lock);
	free(packed);
	free(filtered);
	seg_view_free(v);
	close(fd);
	return o;
}

/*
 * Whether to ask the remote what its group did with what it acknowledged:
 * while it has not applied all of it, or its group is not idle (stopped,
 * held, waiting), every REMOTE_ASK_NS, never while the link is down.  An
 * acknowledgement says "received"; this is how the source learns "applied".
 * Asked when there is nothing to ship, and between uploads only while its
 * group is stopped (a question between two uploads costs a WAN round trip;
 * a destination still shipping is not called in sync anyway).  (T lock)
 */
static bool remote_ask_due(const struct dest *d, uint64_t now)
{
	if (d->cfg.type == DEST_TYPE_S3 || d->remote_silent || !d->dest_last_lsn ||
	    (d->link != DEST_LINK_SHIPPING && d->link != DEST_LINK_IDLE) ||
	    now - d->remote_asked_ns < REMOTE_ASK_NS)
		return false;
	return d->remote_applied_lsn < d->dest_last_lsn || !d->remote_state[0] ||
	       strcmp(d->remote_state, "idle") != 0;
}

static void remote_goes_silent(struct dest *d, long status)
{
	log_info("destination %s does not say what it applied (HTTP %ld): not asked again",
		 d->cfg.name, status);
	pthread_mutex_lock(&d->t->lock);
	d->remote_silent = true;
	d->remote_state[0] = '\0';
	pthread_mutex_unlock(&d->t->lock);
}

/* Asks (the mismatch report: it says the group's state and applied LSN). */
static void remote_ask(struct dest *d)
{
	struct transport *t = d->t;
	struct proto_mismatches m;
	char path[64], why[128], *body = NULL;
	uint64_t after;
	long status = 0;
	bool json = false;

	pthread_mutex_lock(&t->lock);
	after = d->dest_last_lsn;
	d->remote_asked_ns = clock_wall_ns();
	pthread_mutex_unlock(&t->lock);
	if (get_with_timeout(t, (size_t)(d - t->dests), proto_mismatches_path(after, path, sizeof path),
			     REMOTE_ASK_TIMEOUT_S, &status, &body, &json) < 0)
		return; /* unreachable now: the uploads will say so */
	if (proto_is_no_group(status, json, body)) {
		free(body); /* it has not seen the group yet */
		return;
	}
	if (status != 200 || !json || proto_mismatches_parse(body, &m, why, sizeof why) < 0) {
		/* A server that knows no report (WebDAV: 404, 405, 501, not
		 * JSON) is not asked again; anything else may pass (a 5xx, a
		 * proxy's 502): asked again later. */
		if (!json && (status == 404 || status == 405 || status == 501))
			remote_goes_silent(d, status);
		free(body);
		return;
	}
	free(body);
	if (!m.state[0]) { /* an aim-remote too old to say */
		proto_mismatches_free(&m);
		remote_goes_silent(d, status);
		return;
	}
	pthread_mutex_lock(&t->lock);
	if (strcmp(m.state, "stopped") == 0 && strcmp(d->remote_state, "stopped") != 0)
		log_warn("destination %s receives, but its group there stopped applying: %s",
			 d->cfg.name, m.error[0] ? m.error : "(no reason given)");
	else if (strcmp(d->remote_state, "stopped") == 0 && strcmp(m.state, "stopped") != 0)
		log_info("destination %s: its group there applies again", d->cfg.name);
	snprintf(d->remote_state, sizeof d->remote_state, "%s", m.state);
	snprintf(d->remote_error, sizeof d->remote_error, "%s", m.error);
	d->remote_applied_lsn = m.applied_lsn;
	pthread_cond_broadcast(&t->cond); /* drainers */
	pthread_mutex_unlock(&t->lock);
	proto_mismatches_free(&m);
}

static uint64_t backoff_ns(unsigned attempts)
{
	uint64_t ns = BACKOFF_MIN_NS;
	uint32_t rnd = 0;

	for (unsigned i = 1; i < attempts && ns < BACKOFF_MAX_NS; i++)
		ns *= 2;
	if (ns > BACKOFF_MAX_NS)
		ns = BACKOFF_MAX_NS;
	if (getrandom(&rnd, sizeof rnd, 0) != sizeof rnd)
		rnd = 0;
	/* +-20 % so that many sources do not retry in step */
	return ns - ns / 5 + (uint64_t)((double)rnd / UINT32_MAX * (double)(ns / 5 * 2));
}

static void wait_until(struct transport *t, uint64_t deadline_ns)
{
	struct timespec ts = { .tv_sec = (time_t)(deadline_ns / 1000000000ULL),
			       .tv_nsec = (long)(deadline_ns % 1000000000ULL) };

	pthread_cond_timedwait(&t->cond, &t->lock, &ts);
}

void *worker_main(void *arg)
{
	struct dest *d = arg;
	struct transport *t = d->t;
	struct curl_slist *headers[2] = { NULL, NULL };
	struct catalog *cat = NULL;
	struct s3_dest *sd = NULL;
	char path[4200], errbuf[CURL_ERROR_SIZE];
	CURL *c = NULL;

	snprintf(path, sizeof path, "%s/catalog.db", t->journal_dir);
	if (catalog_open(path, &cat) < 0) {
		dest_set_error(d, "cannot open the catalog");
		pthread_mutex_lock(&t->lock);
		dest_link_set(d, DEST_LINK_STOPPED);
		pthread_mutex_unlock(&t->lock);
		return NULL;
	}
	if (d->cfg.type == DEST_TYPE_S3)
		s3_dest_open(d, cat, &sd);
	else
		c = make_handle(d, headers, errbuf);
	pthread_mutex_lock(&t->lock);
	if (!c && !sd) {
		if (!d->last_error[0])
			snprintf(d->last_error, sizeof d->last_error, "out of memory");
		dest_link_set(d, DEST_LINK_STOPPED);
	}
	while (!t->stopping && (c || sd)) {
		uint64_t n = d->acked_segment + 1, src_last = 0, dfirst = 0, dlast = 0, sent = 0;
		uint64_t t0, now;
		bool skeleton = false, chores, ask;
		enum outcome o;

		if (d->link == DEST_LINK_STOPPED || d->link == DEST_LINK_GAP || dest_held(d)) {
			pthread_cond_wait(&t->cond, &t->lock);
			continue;
		}
		/* An object store's chores run when nothing waits to be shipped. */
		chores = sd && n > t->durable_segment && s3_dest_owes(sd);
		if (n > t->durable_segment && !chores) {
			dest_link_set(d, DEST_LINK_IDLE);
			pthread_cond_broadcast(&t->cond); /* drainers */
			if (remote_ask_due(d, clock_wall_ns())) {
				pthread_mutex_unlock(&t->lock);
				remote_ask(d);
				pthread_mutex_lock(&t->lock);
				continue;
			}
			/* Wake now and then: retention may let more be pruned,
			 * and so may the backing files' sync. */
			wait_until(t, clock_wall_ns() + 1000000000ULL);
			if ((t->retain_ns || t->backing_moved) && !t->stopping) {
				t->backing_moved = false;
				pthread_mutex_unlock(&t->lock);
				transport_prune(t, cat);
				pthread_mutex_lock(&t->lock);
			}
			continue;
		}
		if (d->link == DEST_LINK_RETRYING && clock_wall_ns() < d->next_attempt_ns) {
			wait_until(t, d->next_attempt_ns);
			continue;
		}
		if (d->link != DEST_LINK_RETRYING)
			dest_link_set(d, DEST_LINK_SHIPPING);
		d->shipping_segment = n;
		d->in_ship = !chores;
		pthread_mutex_unlock(&t->lock);

		t0 = clock_wall_ns();
		if (chores)
			o = s3_dest_chores(sd);
		else
			o = ship(d, c, headers, sd, cat, n, &src_last, &dfirst, &dlast, &sent,
				 &skeleton, errbuf);
		now = clock_wall_ns();
		if (o == SHIP_OK && chores) {
			pthread_mutex_lock(&t->lock);
			d->attempts = 0;
			if (d->link != DEST_LINK_GAP)
				dest_link_set(d, DEST_LINK_SHIPPING);
			continue;
		}
		if (o == SHIP_OK && catalog_dest_ack(cat, d->cfg.name, n, src_last, dfirst, dlast,
						     sent, now) < 0) {
			dest_set_error(d, "cannot record the acknowledgement in the catalog");
			o = SHIP_RETRY;
		}
		if (o == SHIP_OK && sd)
			s3_dest_acked(sd);
		if (o == SHIP_OK && skeleton)
			skeleton_remove(t, d, n);
		pthread_mutex_lock(&t->lock);
		d->in_ship = false; /* the acknowledgement (if any) is in memory below */
		if (o == SHIP_OK) {
			double secs = (double)(now - t0) / 1e9, bps = secs > 0 ? (double)sent / secs : 0;

			/* A resync may have moved it past n meanwhile (a skip). */
			if (n > d->acked_segment) {
				d->acked_segment = n;
				d->acked_ns = now;
				d->acked_src_lsn = src_last;
				d->dest_last_lsn = dlast;
			}
			d->segments_sent++;
			d->bytes_sent += sent;
			d->rate_bps = d->rate_bps ? 0.7 * d->rate_bps + 0.3 * bps : bps;
			d->attempts = 0;
			/* not if the pruner found a damaged skeleton meanwhile */
			if (d->link != DEST_LINK_GAP)
				dest_link_set(d, DEST_LINK_SHIPPING);
			pthread_cond_broadcast(&t->cond);
			/* A stopped remote is watched between uploads too, or its
			 * recovery would go unseen while the source ships on. */
			ask = strcmp(d->remote_state, "stopped") == 0 && remote_ask_due(d, now);
			pthread_mutex_unlock(&t->lock);
			transport_prune(t, cat);
			if (ask)
				remote_ask(d);
			pthread_mutex_lock(&t->lock);
		} else if (o == SHIP_RETRY) {
			/* Sent whole, no answer: it may be there all the same. */
			if (!skeleton && !sd && d->unanswered)
				d->unsure_segment = n;
			d->attempts++;
			d->next_attempt_ns = now + (d->retry_after_ns ? d->retry_after_ns
								      : backoff_ns(d->attempts));
			if (d->link != DEST_LINK_GAP)
				dest_link_set(d, DEST_LINK_RETRYING);
		} else if (n > d->acked_segment) { /* not if a resync's skip passed it */
			char msg[sizeof d->last_error];

			dest_link_set(d, o == SHIP_RESYNC ? DEST_LINK_GAP : DEST_LINK_STOPPED);
			memcpy(msg, d->last_error, sizeof msg);
			pthread_mutex_unlock(&t->lock);
			catalog_dest_error(cat, d->cfg.name, msg);
			pthread_mutex_lock(&t->lock);
			pthread_cond_broadcast(&t->cond);
		}
	}
	pthread_mutex_unlock(&t->lock);
	curl_slist_free_all(headers[0]);
	curl_slist_free_all(headers[1]);
	if (c)
		curl_easy_cleanup(c);
	s3_dest_close(sd);
	catalog_close(cat);
	return NULL;
}

int transport_get(struct transport *t, size_t i, const char *suffix, long *status, char **body,
		  bool *json)
{
	return get_with_timeout(t, i, suffix, 60L, status, body, json);
}

static int get_with_timeout(struct transport *t, size_t i, const char *suffix, long timeout_s,
			    long *status, char **body, bool *json)
{
	struct dest *d = &t->dests[i];
	struct curl_slist *headers[2] = { NULL, NULL };
	struct strbuf b = { .max = 64u << 20 };
	char url[8192], errbuf[CURL_ERROR_SIZE];
	char *ctype = NULL;
	CURLcode cc;
	CURL *c;

	if (d->cfg.type == DEST_TYPE_S3) {
		/* An object store answers nothing of aim-remote's protocol: the
		 * resync engine sends data, not hashes. */
		*status = 501;
		*json = false;
		*body = strdup("an object store does not compare block hashes");
		return *body ? 0 : -ENOMEM;
	}
	c = make_handle(d, headers, errbuf);
	if (!c)
		return -ENOMEM;
	snprintf(url, sizeof url, "%s/%s/%s", d->cfg.url, t->group_s, suffix);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers[0]);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, strbuf_curl_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, timeout_s);
	cc = curl_easy_perform(c);
	*status = 0;
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
	curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ctype);
	*json = ctype && strncmp(ctype, PROTO_JSON_TYPE, strlen(PROTO_JSON_TYPE)) == 0;
	curl_easy_cleanup(c);
	curl_slist_free_all(headers[0]);
	curl_slist_free_all(headers[1]);
	if (cc != CURLE_OK) {
		strbuf_free(&b);
		return -EIO;
	}
	*body = strbuf_take(&b, NULL);
	return *body ? 0 : -ENOMEM;
}
