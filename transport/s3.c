/*
 * s3.c — an object-store destination (type = s3): how the worker's
 * segments reach a bucket, and what the bucket keeps beside them
 * (docs/OBJECT-STORES.md).  The worker (worker.c) decides what to ship
 * and when, as for any destination; this file only knows the store.
 *
 *   - A segment is PUT to PREFIX/GROUP/<segment file> (the bytes the
 *     destination's stream holds, zstd-compressed with metadata saying so
 *     when compress = zstd saves bytes).  The successful PUT is the
 *     acknowledgement.
 *   - PREFIX/GROUP/HEAD is written after the segment it names, once the
 *     catalog recorded its acknowledgement (s3_dest_acked): at once
 *     when nothing else waits, when the segment opened or completed a
 *     base, or when it is 8 MiB or more; at most a second late while a
 *     backlog of small segments drains (then once the worker is idle:
 *     s3_dest_chores).  A HEAD that fails to be written is owed, and the
 *     worker retries it like a segment.
 *   - Bases.  A segment whose first record is this destination's
 *     SYNC_BEGIN, shipped while its resync is a full one (a new
 *     destination, lost segments, snapshot_every), opens a base; the next
 *     SYNC_END of this destination completes it.  From a complete base's
 *     first segment, applying the segments in order onto empty targets
 *     gives exact images at its SYNC_END and at every consistent point
 *     after it.
 *   - Retention (keep): segments are deleted only by that policy, never
 *     because the journal pruned them, and never the newest base that the
 *     kept segments need.  HEAD first says what is kept (with purge_from),
 *     then the older objects are deleted, then HEAD forgets purge_from; a
 *     crash in between is finished at the next start.
 *
 * Every failure of the store is retried (the worker's back-off): a wrong
 * key, a missing bucket, a skewed clock or a full store can all be fixed
 * without touching the source, and meanwhile the destination says
 * `retrying` with the store's error code.
 *
 * Threads: a struct s3_dest belongs to its worker's thread; it reads the
 * destination's record and publishes base_ns under transport.lock.
 */
#include "transport_i.h"
#include "catalog.h"
#include "clock.h"
#include "log.h"
#include "s3.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEAD_MAX (1u << 20)              /* the largest HEAD we read */
#define HEAD_LAG_NS 1000000000ULL        /* HEAD at most this late during a backlog */
#define HEAD_EVERY_SIZE (8u << 20)       /* ... of segments smaller than this */
#define RETENTION_EVERY_NS 60000000000ULL
#define PURGE_BATCH 256                  /* deletions per chore */
#define CATCH_UP_MAX 256                 /* segments re-read after a crash */
#define SEGMENT_MAX (4ULL << 30)         /* the largest segment re-read */
#define SEGMENT_SLACK (2u << 20)         /* how far past its size a segment may end:
					  * its last record (data up to 1 MiB) */

struct s3_dest {
	struct dest *d;
	struct transport *t;
	struct catalog *cat;       /* the worker's connection */
	struct s3 *s3;
	bool loaded;               /* head holds what the bucket says (or it has none) */
	struct s3_head head;       /* what HEAD says, or must say once written */
	bool head_owed;            /* head is newer than the HEAD object */
	bool head_urgent;          /* ... and a base changed: write it now */
	bool head_due;             /* write it once the segment put is acknowledged */
	uint64_t head_written_ns;  /* monotonic */
	uint64_t next_retention_ns; /* monotonic */
};


static void segment_key(const struct s3_dest *sd, uint64_t n, char *key, size_t len)
{
	char file[SEG_FILE_NAME_LEN + 8];

	seg_file_name(n, SEG_FILE_SUFFIX, file);
	snprintf(key, len, "%s/%s", sd->t->group_s, file);
}

static void head_key(const struct s3_dest *sd, char *key, size_t len)
{
	snprintf(key, len, "%s/%s", sd->t->group_s, S3_HEAD_KEY);
}

/* What the snapshot schedule reads: when the newest base began. */
static void publish_bases(struct s3_dest *sd)
{
	const struct s3_base *b = s3_head_newest_base(&sd->head);
	uint64_t ns = b ? b->time_ns : 0;

	if (sd->head.pending.segment && sd->head.pending.time_ns > ns)
		ns = sd->head.pending.time_ns;
	pthread_mutex_lock(&sd->t->lock);
	sd->d->base_ns = ns;
	sd->d->base_known = true;
	pthread_mutex_unlock(&sd->t->lock);
}

/* True while the destination's resync seeds every image whole: a
 * SYNC_BEGIN opening a segment then opens a base. */
static bool full_resync(struct s3_dest *sd)
{
	enum dest_reason why;
	bool syncing;

	pthread_mutex_lock(&sd->t->lock);
	syncing = sd->d->rec.sync == DEST_SYNC_SYNCING;
	why = sd->d->rec.reason;
	pthread_mutex_unlock(&sd->t->lock);
	return syncing && dest_reason_seeds_every_image(why);
}

/*
 * Segment n (the destination's bytes, uncompressed) reached the bucket:
 * head moves to it, and the bases it opens or completes are recorded.
 * A segment that does not follow the head (the destination skipped ahead
 * to a resync) starts the bucket's contiguous run again.  checked is a
 * validated view of raw, or NULL: then raw is checked here.
 */
static void note_segment(struct s3_dest *sd, uint64_t n, const uint8_t *raw, size_t len,
			 struct seg_view *checked, bool full)
{
	struct s3_head *h = &sd->head;
	struct seg_view *v = checked;
	struct seg_record r;
	struct seg_err err;
	bool first = true;

	if (n <= h->segment)
		return; /* shipped again after a lost acknowledgement */
	if (v)
		seg_view_rewind(v);
	else if (seg_view_new(raw, len, &v, &err) < 0) {
		log_error("destination %s: segment %" PRIu64 " is not valid any more: %s",
			  sd->d->cfg.name, n, err.msg);
		return;
	}
	if (h->segment && n != h->segment + 1) {
		log_warn("destination %s: segment %" PRIu64 " does not follow %" PRIu64 " in the"
			 " bucket (a resync skipped ahead): the bucket's segments before it are"
			 " no longer part of its HEAD", sd->d->cfg.name, n, h->segment);
		h->nbases = 0;
		h->pending.segment = 0;
		h->oldest = 0;
		h->purge_from = 0;
	}
	if (!h->oldest)
		h->oldest = n;
	while (seg_view_next(v, &r) == 1) {
		bool mine = r.aux == sd->d->rec.number;

		if (r.type == SEG_SYNC_BEGIN && mine && first && full) {
			memset(&h->pending, 0, sizeof h->pending);
			h->pending.segment = n;
			h->pending.lsn = r.lsn;
			h->pending.time_ns = r.time_ns;
			sd->head_urgent = true;
		} else if (r.type == SEG_SYNC_END && mine && h->pending.segment) {
			struct s3_base b = h->pending;

			b.end_segment = n;
			b.end_lsn = r.lsn;
			b.end_time_ns = r.time_ns;
			if (h->nbases == S3_BASES_MAX) {
				memmove(h->bases, h->bases + 1, (S3_BASES_MAX - 1) * sizeof *h->bases);
				h->nbases--;
			}
			h->bases[h->nbases++] = b;
			memset(&h->pending, 0, sizeof h->pending);
			sd->head_urgent = true;
			log_info("destination %s: a base from segment %" PRIu64 " is complete at LSN"
				 " %" PRIu64 " (segment %" PRIu64 ")", sd->d->cfg.name, b.segment,
				 b.end_lsn, n);
		}
		first = false;
	}
	h->segment = n;
	h->lsn = seg_view_last_lsn(v);
	h->sealed_ns = seg_view_trailer(v) ? seg_view_trailer(v)->sealed_ns : 0;
	sd->head_owed = true;
	if (!checked)
		seg_view_free(v);
	publish_bases(sd);
}

static int write_head(struct s3_dest *sd)
{
	struct s3_reply rep;
	char key[128], *text;
	int r;

	/* The acknowledgements of what HEAD names durable first: a power
	 * loss must not take one back once HEAD announces its segment. */
	r = catalog_make_durable(sd->cat);
	if (r < 0) {
		dest_set_error(sd->d, "cannot make the catalog durable before writing HEAD: %s",
			       strerror(-r));
		return r;
	}
	sd->head.written_ns = clock_wall_ns();
	text = s3_head_dump(&sd->head);
	if (!text) {
		dest_set_error(sd->d, "out of memory writing HEAD");
		return -ENOMEM;
	}
	head_key(sd, key, sizeof key);
	r = s3_put(sd->s3, key, text, strlen(text), NULL, &rep);
	free(text);
	if (r < 0) {
		dest_set_error(sd->d, "%s", rep.error);
		return r;
	}
	sd->head_owed = sd->head_urgent = false;
	sd->head_written_ns = clock_mono_ns();
	return 0;
}

/* ---- after a restart: what the bucket says ---- */

struct grow {
	uint8_t *buf;
	size_t len, cap;
};

static int grow_add(struct grow *g, const void *p, size_t n)
{
	if (g->len + n > SEGMENT_MAX)
		return -EFBIG;
	if (g->len + n > g->cap) {
		size_t cap = g->cap ? g->cap * 2 : 1u << 20;
		uint8_t *nb;

		while (cap < g->len + n)
			cap *= 2;
		nb = realloc(g->buf, cap);
		if (!nb)
			return -ENOMEM;
		g->buf = nb;
		g->cap = cap;
	}
	memcpy(g->buf + g->len, p, n);
	g->len += n;
	return 0;
}

static int grow_sink(void *ctx, const void *data, size_t len)
{
	return grow_add(ctx, data, len);
}

/* Segment n as the bucket holds it, uncompressed (malloc'd). */
static int fetch_segment(struct s3_dest *sd, uint64_t n, uint8_t **out, size_t *len)
{
	struct grow g = { 0 };
	struct s3_reply rep;
	char key[128];
	int r;

	segment_key(sd, n, key, sizeof key);
	r = s3_fetch(sd->s3, key, grow_sink, &g, SEGMENT_MAX, &rep);
	if (r == -ENOENT && strcmp(rep.code, "NoSuchKey") == 0) {
		free(g.buf);
		return -ENOENT; /* never uploaded: the caller knows what that means */
	}
	if (r < 0) {
		dest_set_error(sd->d, "%s", r == -ENOMEM ? "out of memory" : rep.error);
		free(g.buf);
		return r < 0 && r != -ENOENT ? r : -EIO;
	}
	*out = g.buf;
	*len = g.len;
	return 0;
}

/*
 * Reads HEAD (once per worker).  The catalog may know of segments past it
 * (the process stopped between a segment and its HEAD): those are read
 * back from the bucket for the bases they open or complete.
 */
static int load_head(struct s3_dest *sd)
{
	struct s3_reply rep;
	char key[128], why[200], *text = NULL;
	uint64_t acked;
	size_t len;
	int r;

	head_key(sd, key, sizeof key);
	r = s3_get_small(sd->s3, key, NULL, HEAD_MAX, &text, &len, &rep);
	if (r == -ENOENT && strcmp(rep.code, "NoSuchKey") == 0) {
		memset(&sd->head, 0, sizeof sd->head);
		memcpy(sd->head.group, sd->t->group_s, 37);
	} else if (r < 0) {
		dest_set_error(sd->d, "%s", rep.error);
		return r;
	} else {
		r = s3_head_parse(text, len, &sd->head, why, sizeof why);
		free(text);
		if (r == 0 && strcmp(sd->head.group, sd->t->group_s) != 0) {
			snprintf(why, sizeof why, "it names group %s", sd->head.group);
			r = -EBADMSG;
		}
		if (r < 0) {
			dest_set_error(sd->d, "%s/%s in the bucket is not a HEAD this aimfs can keep: %s"
				  " (move it away to start the group's record afresh)",
				  s3_url(sd->s3), key, why);
			return r;
		}
	}
	pthread_mutex_lock(&sd->t->lock);
	acked = sd->d->acked_segment;
	pthread_mutex_unlock(&sd->t->lock);
	if (sd->head.segment && acked > sd->head.segment) {
		bool full = full_resync(sd);

		/* Segments past HEAD that are not in the bucket were never
		 * uploaded (a resync skipped them): the bucket's run ends
		 * there, and the next segment starts it again (note_segment).
		 * Too many to read back: the same, without reading them. */
		if (acked - sd->head.segment > CATCH_UP_MAX)
			log_warn("destination %s: HEAD is %" PRIu64 " segments behind; not reading them"
				 " back: the bucket's HEAD starts again at the next segment",
				 sd->d->cfg.name, acked - sd->head.segment);
		for (uint64_t n = sd->head.segment + 1;
		     n <= acked && acked - sd->head.segment <= CATCH_UP_MAX; n++) {
			uint8_t *buf;

			r = fetch_segment(sd, n, &buf, &len);
			if (r == -ENOENT) {
				log_info("destination %s: segment %" PRIu64 " was never uploaded (a"
					 " resync skipped it): HEAD ends before it", sd->d->cfg.name, n);
				break;
			}
			if (r < 0)
				return r;
			note_segment(sd, n, buf, len, NULL, full);
			free(buf);
		}
	} else if (!sd->head.segment && acked && !full_resync(sd)) {
		/* A new bucket or prefix, or HEAD deleted: the segments from the
		 * next one on would have no base to start from, ever. */
		dest_set_error(sd->d, "the bucket has no HEAD for group %s though segments up to %"
			       PRIu64 " were uploaded (a new bucket or prefix, or HEAD deleted): a"
			       " full resync makes a new base there", sd->t->group_s, acked);
		return -ESTALE;
	}
	sd->loaded = true;
	sd->next_retention_ns = clock_mono_ns();
	publish_bases(sd);
	return 0;
}

/* ---- the worker's interface ---- */

int s3_dest_open(struct dest *d, struct catalog *cat, struct s3_dest **out)
{
	struct s3_dest *sd = calloc(1, sizeof *sd);
	struct s3_options o = {
		.url = d->cfg.url, .region = d->cfg.region, .access_key = d->cfg.access_key,
		.secret_key = d->cfg.secret_key, .ca_file = d->cfg.ca_file,
		.cert_file = d->cfg.cert_file, .key_file = d->cfg.key_file, .pin = d->cfg.pin,
		.rate = d->cfg.rate, .connect_timeout_ms = dest_connect_timeout_ms(&d->cfg),
		.multipart_size = d->cfg.multipart_size,
		/* A segment is sealed once it reaches its size, so it ends up to
		 * a record past it: one sealed at multipart_size is still one
		 * PUT (multipart costs RGW a third more time for a 64 MiB
		 * object, for nothing). */
		.single_max = (d->cfg.multipart_size ? d->cfg.multipart_size : S3_DEFAULT_MULTIPART) +
			      SEGMENT_SLACK,
	};
	char why[300];
	int r;

	if (!sd)
		return -ENOMEM;
	sd->d = d;
	sd->t = d->t;
	sd->cat = cat;
	r = s3_new(&o, &sd->s3, why, sizeof why);
	if (r < 0) {
		dest_set_error(d, "%s", why);
		free(sd);
		return r;
	}
	*out = sd;
	return 0;
}

void s3_dest_close(struct s3_dest *sd)
{
	if (!sd)
		return;
	s3_free(sd->s3);
	free(sd);
}

enum outcome s3_dest_put(struct s3_dest *sd, uint64_t n, const uint8_t *raw, size_t raw_len,
			 struct seg_view *v, const uint8_t *packed, size_t packed_len)
{
	struct s3_reply rep;
	char key[128];
	bool full, more;
	int r;

	if (!sd->loaded && (r = load_head(sd)) < 0)
		return r == -ESTALE ? SHIP_RESYNC : SHIP_RETRY;
	full = full_resync(sd);
	segment_key(sd, n, key, sizeof key);
	if (s3_put(sd->s3, key, packed ? packed : raw, packed ? packed_len : raw_len,
		   packed ? "zstd" : NULL, &rep) < 0) {
		dest_set_error(sd->d, "%s", rep.error);
		return SHIP_RETRY;
	}
	note_segment(sd, n, raw, raw_len, v, full);
	pthread_mutex_lock(&sd->t->lock);
	more = n < sd->t->durable_segment;
	pthread_mutex_unlock(&sd->t->lock);
	/* HEAD follows once the acknowledgement is recorded (s3_dest_acked):
	 * at once, unless a backlog of small segments drains (then it is at
	 * most a second late: a HEAD per small segment would double the
	 * requests); a HEAD that fails is owed, not a failed segment. */
	sd->head_due = sd->head_owed && (!more || sd->head_urgent || raw_len >= HEAD_EVERY_SIZE ||
					 clock_mono_ns() - sd->head_written_ns >= HEAD_LAG_NS);
	return SHIP_OK;
}

void s3_dest_acked(struct s3_dest *sd)
{
	if (sd->head_due)
		write_head(sd);
	sd->head_due = false;
}

/* The first segment a retention policy keeps, the newest base the kept
 * segments need included. */
static uint64_t keep_from(struct s3_dest *sd)
{
	const struct dest_config *c = &sd->d->cfg;
	const struct s3_head *h = &sd->head;
	uint64_t from = 0, n;

	if (c->keep_segments)
		from = h->segment >= c->keep_segments ? h->segment - c->keep_segments + 1 : 1;
	if (c->keep_ns) {
		uint64_t now = clock_wall_ns();

		if (now > c->keep_ns &&
		    catalog_segment_sealed_before(sd->cat, now - c->keep_ns, &n) == 0)
			from = n + 1;
	}
	if (from > h->segment)
		from = h->segment;
	for (size_t i = h->nbases; i-- > 0;)
		if (h->bases[i].segment <= from)
			return h->bases[i].segment;
	if (h->pending.segment && h->pending.segment <= from)
		return h->pending.segment;
	return from;
}

bool s3_dest_owes(const struct s3_dest *sd)
{
	const struct dest_config *c = &sd->d->cfg;

	return !sd->loaded || sd->head_owed || sd->head.purge_from ||
	       ((c->keep_ns || c->keep_segments) && clock_mono_ns() >= sd->next_retention_ns);
}

enum outcome s3_dest_chores(struct s3_dest *sd)
{
	struct s3_head *h = &sd->head;
	struct s3_reply rep;
	char key[128];
	int r;

	if (!sd->loaded && (r = load_head(sd)) < 0)
		return r == -ESTALE ? SHIP_RESYNC : SHIP_RETRY;
	if (sd->head_owed && !h->purge_from && write_head(sd) < 0)
		return SHIP_RETRY;
	if ((sd->d->cfg.keep_ns || sd->d->cfg.keep_segments) && !h->purge_from &&
	    clock_mono_ns() >= sd->next_retention_ns) {
		uint64_t from = keep_from(sd);
		size_t k = 0;

		sd->next_retention_ns = clock_mono_ns() + RETENTION_EVERY_NS;
		if (h->oldest && from > h->oldest) {
			/* HEAD says first what is kept: no reader is sent to a
			 * segment being deleted.  If it cannot be written, the
			 * bucket keeps everything, and so does HEAD. */
			struct s3_base was[S3_BASES_MAX];
			size_t nwas = h->nbases;

			memcpy(was, h->bases, nwas * sizeof *was);
			h->purge_from = h->oldest;
			h->oldest = from;
			for (size_t i = 0; i < h->nbases; i++)
				if (h->bases[i].segment >= from)
					h->bases[k++] = h->bases[i];
			h->nbases = k;
			if (write_head(sd) < 0) {
				h->oldest = h->purge_from;
				h->purge_from = 0;
				memcpy(h->bases, was, nwas * sizeof *was);
				h->nbases = nwas;
				return SHIP_RETRY;
			}
			log_info("destination %s: keeping segments %" PRIu64 "..%" PRIu64 ", deleting"
				 " %" PRIu64 "..%" PRIu64, sd->d->cfg.name, h->oldest, h->segment,
				 h->purge_from, h->oldest - 1);
		}
	}
	if (h->purge_from) {
		for (int i = 0; i < PURGE_BATCH && h->purge_from < h->oldest; i++) {
			segment_key(sd, h->purge_from, key, sizeof key);
			if (s3_delete(sd->s3, key, &rep) < 0) {
				dest_set_error(sd->d, "%s", rep.error);
				return SHIP_RETRY;
			}
			h->purge_from++;
		}
		if (h->purge_from >= h->oldest) {
			h->purge_from = 0;
			if (write_head(sd) < 0)
				return SHIP_RETRY;
		}
	}
	return SHIP_OK;
}
