/*
 * transport.c — the transport's shared state: destinations and their
 * workers, what is durable, pruning of what everyone acknowledged, and the
 * status an operator reads.
 *
 * Pruning rule: segment n is deleted once every destination acknowledged
 * it, its records are all on the backing files (last LSN <= the backing
 * watermark, so crash recovery never needs it), and retention, if set, has
 * passed since it was sealed.  Segments go in order; the catalog keeps the
 * segment's row (state "pruned") but drops its per-write rows.
 */
#include "transport_i.h"
#include "clock.h"
#include "catalog.h"
#include "log.h"
#include "strbuf.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const state_names[] = {
	[DEST_IN_SYNC] = "in_sync",
	[DEST_SHIPPING] = "shipping",
	[DEST_RETRYING] = "retrying",
	[DEST_STOPPED] = "stopped",
	[DEST_NEEDS_RESYNC] = "needs_resync",
};

static int copy_str(char **dst, const char *src)
{
	*dst = NULL;
	if (!src)
		return 0;
	*dst = strdup(src);
	return *dst ? 0 : -ENOMEM;
}

static int copy_dest(struct dest_config *dst, const struct dest_config *src)
{
	int r = 0;

	memset(dst, 0, sizeof *dst);
	r |= copy_str(&dst->name, src->name);
	r |= copy_str(&dst->url, src->url);
	r |= copy_str(&dst->ca_file, src->ca_file);
	r |= copy_str(&dst->cert_file, src->cert_file);
	r |= copy_str(&dst->key_file, src->key_file);
	r |= copy_str(&dst->pin, src->pin);
	r |= copy_str(&dst->token_file, src->token_file);
	r |= copy_str(&dst->token, src->token);
	dst->rate = src->rate;
	dst->compress = src->compress;
	if (src->nimages) {
		dst->images = calloc(src->nimages, sizeof *dst->images);
		if (!dst->images)
			return -ENOMEM;
		for (size_t i = 0; i < src->nimages; i++)
			r |= copy_str(&dst->images[i], src->images[i]);
		dst->nimages = src->nimages;
	}
	return r ? -ENOMEM : 0;
}

/* Lowest sealed segment number in the journal directory, 0 if none. */
static uint64_t oldest_segment(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	uint64_t low = 0, n;

	if (!d)
		return 0;
	while ((de = readdir(d)))
		if (seg_parse_file_name(de->d_name, &n) == 0 && (low == 0 || n < low))
			low = n;
	closedir(d);
	return low;
}

int transport_new(const struct transport_config *cfg, struct transport **out)
{
	struct transport *t = calloc(1, sizeof *t);
	struct catalog *cat = NULL;
	char path[4200];
	uint64_t oldest, last_known, last_lsn;
	int r = -ENOMEM;

	if (!t)
		return -ENOMEM;
	pthread_mutex_init(&t->lock, NULL);
	pthread_cond_init(&t->cond, NULL);
	t->journal_dir = strdup(cfg->journal_dir);
	memcpy(t->group, cfg->group, 16);
	seg_uuid_format(t->group, t->group_s);
	t->retain_ns = cfg->retain_ns;
	t->hooks = cfg->hooks;
	t->dests = calloc(cfg->ndests ? cfg->ndests : 1, sizeof *t->dests);
	if (!t->journal_dir || !t->dests)
		goto fail;
	t->ndests = cfg->ndests;
	snprintf(path, sizeof path, "%s/catalog.db", cfg->journal_dir);
	r = catalog_open(path, &cat);
	if (r < 0)
		goto fail;
	oldest = oldest_segment(cfg->journal_dir);
	t->pruned_through = oldest ? oldest - 1 : 0;
	r = catalog_last_segment(cat, &last_known, &last_lsn);
	if (r < 0)
		goto fail;
	for (size_t i = 0; i < cfg->ndests; i++) {
		struct dest *d = &t->dests[i];
		struct catalog_dest cd;

		d->t = t;
		r = copy_dest(&d->cfg, &cfg->dests[i]);
		if (r == 0)
			r = catalog_dest_register(cat, d->cfg.name, d->cfg.url, cfg->start_segment);
		if (r == 0)
			r = catalog_dest_load(cat, d->cfg.name, &cd);
		if (r < 0)
			goto fail;
		{
			struct catalog_sync y;

			r = catalog_dest_sync_load(cat, d->cfg.name, &y);
			if (r < 0)
				goto fail;
			d->number = y.number;
			d->tracking = strcmp(y.state, "tracking") == 0;
			/* A resync that has not begun yet: nothing ships until its
			 * SYNC_BEGIN opens a segment of its own (transport_skip_to). */
			d->hold = cfg->resync && (strcmp(y.state, "new") == 0 ||
						  (strcmp(y.state, "syncing") == 0 &&
						   strcmp(y.phase, "") == 0));
			d->skel_need_begin = d->tracking && strcmp(y.phase, "") == 0;
		}
		d->acked_segment = cd.acked_segment;
		d->skel_through = skeleton_scan(t, d, cd.acked_segment);
		d->acked_src_lsn = cd.acked_lsn;
		d->acked_ns = cd.acked_ns;
		d->dest_last_lsn = cd.dest_lsn;
		d->state = DEST_SHIPPING;
		/* The next segment it needs was written once but is gone: pruned
		 * before this destination existed, or lost. */
		if (d->acked_segment + 1 <= last_known &&
		    (oldest == 0 || d->acked_segment + 1 < oldest)) {
			d->state = DEST_NEEDS_RESYNC;
			snprintf(d->last_error, sizeof d->last_error,
				 "it needs segment %" PRIu64 ", which the journal no longer holds"
				 " (it starts at %" PRIu64 "): it needs a resync",
				 d->acked_segment + 1, oldest ? oldest : last_known + 1);
			d->last_error_ns = clock_wall_ns();
			log_warn("destination %s: %s", d->cfg.name, d->last_error);
		}
	}
	catalog_close(cat);
	*out = t;
	return 0;
fail:
	catalog_close(cat);
	transport_free(t);
	return r;
}

int transport_start(struct transport *t)
{
	for (size_t i = 0; i < t->ndests; i++) {
		int r = pthread_create(&t->dests[i].thread, NULL, worker_main, &t->dests[i]);

		if (r) {
			transport_stop(t);
			return -r;
		}
		t->dests[i].started = true;
	}
	return 0;
}

void transport_notify(struct transport *t, uint64_t durable_segment, uint64_t backing_lsn)
{
	pthread_mutex_lock(&t->lock);
	if (durable_segment > t->durable_segment)
		t->durable_segment = durable_segment;
	if (backing_lsn > t->backing_lsn)
		t->backing_lsn = backing_lsn;
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
}

static bool all_done_locked(struct transport *t, bool *all_acked)
{
	*all_acked = true;
	for (size_t i = 0; i < t->ndests; i++) {
		struct dest *d = &t->dests[i];

		if (d->acked_segment >= t->durable_segment)
			continue;
		*all_acked = false;
		if (d->state != DEST_STOPPED && d->state != DEST_NEEDS_RESYNC)
			return false;
	}
	return true;
}

int transport_drain(struct transport *t, unsigned timeout_ms)
{
	uint64_t deadline = clock_wall_ns() + (uint64_t)timeout_ms * 1000000ULL;
	bool acked = false;

	pthread_mutex_lock(&t->lock);
	while (!all_done_locked(t, &acked) && clock_wall_ns() < deadline) {
		struct timespec ts = { .tv_sec = (time_t)(deadline / 1000000000ULL),
				       .tv_nsec = (long)(deadline % 1000000000ULL) };

		pthread_cond_timedwait(&t->cond, &t->lock, &ts);
	}
	pthread_mutex_unlock(&t->lock);
	return acked ? 0 : -ETIMEDOUT;
}

bool transport_in_sync(struct transport *t)
{
	bool acked;

	pthread_mutex_lock(&t->lock);
	all_done_locked(t, &acked);
	pthread_mutex_unlock(&t->lock);
	return acked;
}

size_t transport_dest_count(struct transport *t)
{
	return t->ndests;
}

bool transport_dest_wants(struct transport *t, size_t i, const char *name)
{
	return dest_wants_image(&t->dests[i].cfg, name);
}

void transport_dest_info(struct transport *t, size_t i, struct transport_dest_info *info)
{
	struct dest *d = &t->dests[i];

	pthread_mutex_lock(&t->lock);
	info->name = d->cfg.name;
	info->number = d->number;
	info->acked_segment = d->acked_segment;
	info->acked_src_lsn = d->acked_src_lsn;
	info->dest_last_lsn = d->dest_last_lsn;
	info->durable_segment = t->durable_segment;
	info->needs_resync = d->state == DEST_NEEDS_RESYNC;
	info->reachable = d->state == DEST_IN_SYNC || d->state == DEST_SHIPPING;
	info->tracking = d->tracking;
	pthread_mutex_unlock(&t->lock);
}

int transport_skip_to(struct transport *t, size_t i, uint64_t segment, uint64_t dest_lsn,
		      bool tracking)
{
	struct dest *d = &t->dests[i];
	struct catalog *cat;
	char path[4200];
	int r;

	snprintf(path, sizeof path, "%s/catalog.db", t->journal_dir);
	r = catalog_open(path, &cat);
	if (r < 0)
		return r;
	pthread_mutex_lock(&t->lock);
	if (segment > d->acked_segment) {
		d->acked_segment = segment;
		d->dest_last_lsn = dest_lsn;
	}
	segment = d->acked_segment;
	dest_lsn = d->dest_last_lsn;
	d->tracking = tracking;
	d->hold = false;
	if (d->state == DEST_NEEDS_RESYNC) {
		d->state = DEST_SHIPPING;
		d->last_error[0] = '\0';
	}
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
	r = catalog_dest_skip(cat, d->cfg.name, segment, dest_lsn);
	catalog_close(cat);
	return r;
}

int transport_hold(struct transport *t, size_t i)
{
	pthread_mutex_lock(&t->lock);
	t->dests[i].hold = true;
	pthread_mutex_unlock(&t->lock);
	return 0;
}

int transport_set_tracking(struct transport *t, size_t i, bool on, bool *begin_sent)
{
	struct dest *d = &t->dests[i];

	pthread_mutex_lock(&t->lock);
	if (on && !d->tracking)
		d->skel_need_begin = true;
	d->tracking = on;
	if (begin_sent)
		*begin_sent = !d->skel_need_begin;
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
	return 0;
}

void transport_make_room(struct transport *t, struct catalog *cat)
{
	transport_prune(t, cat);
}

bool transport_has_all(struct transport *t, uint64_t head_lsn)
{
	bool all = true;

	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->ndests; i++)
		if (t->dests[i].acked_src_lsn < head_lsn)
			all = false;
	pthread_mutex_unlock(&t->lock);
	return all;
}

void transport_stop(struct transport *t)
{
	if (!t)
		return;
	pthread_mutex_lock(&t->lock);
	t->stopping = true;
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
	for (size_t i = 0; i < t->ndests; i++) {
		if (t->dests[i].started)
			pthread_join(t->dests[i].thread, NULL);
		t->dests[i].started = false;
	}
}

void transport_free(struct transport *t)
{
	if (!t)
		return;
	transport_stop(t);
	for (size_t i = 0; i < t->ndests; i++)
		dest_config_free(&t->dests[i].cfg);
	free(t->dests);
	free(t->journal_dir);
	pthread_mutex_destroy(&t->lock);
	pthread_cond_destroy(&t->cond);
	free(t);
}

/* ---- pruning ---- */

/* Reads fields of a sealed segment from its header and trailer without
 * validating it (our own, already validated files). */
static int segment_facts(const char *dir, uint64_t n, uint64_t *size, uint64_t *created_ns,
			 uint64_t *last_lsn, uint64_t *sealed_ns)
{
	char name[SEG_FILE_NAME_LEN + 8], path[4200];
	uint8_t head[SEG_HEADER_FIXED], tail[SEG_TRAILER_SIZE];
	struct stat st;
	int fd, r = 0;

	seg_file_name(n, SEG_FILE_SUFFIX, name);
	snprintf(path, sizeof path, "%s/%s", dir, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || st.st_size < SEG_HEADER_FIXED + SEG_TRAILER_SIZE ||
	    pread(fd, head, sizeof head, 0) != (ssize_t)sizeof head ||
	    pread(fd, tail, sizeof tail, st.st_size - SEG_TRAILER_SIZE) != (ssize_t)sizeof tail)
		r = -EIO;
	close(fd);
	if (r)
		return r;
#define LE64(p) ((uint64_t)(p)[0] | (uint64_t)(p)[1] << 8 | (uint64_t)(p)[2] << 16 | \
		 (uint64_t)(p)[3] << 24 | (uint64_t)(p)[4] << 32 | (uint64_t)(p)[5] << 40 | \
		 (uint64_t)(p)[6] << 48 | (uint64_t)(p)[7] << 56)
	*size = (uint64_t)st.st_size;
	*created_ns = LE64(head + 48);
	*last_lsn = LE64(tail + 16);
	*sealed_ns = LE64(tail + 32);
#undef LE64
	return 0;
}

/* A tracking destination needs no segment it has a skeleton of. */
static void make_skeletons(struct transport *t, struct catalog *cat)
{
	for (size_t i = 0; i < t->ndests; i++) {
		struct dest *d = &t->dests[i];
		uint64_t from, to;

		pthread_mutex_lock(&t->lock);
		from = (d->skel_through > d->acked_segment ? d->skel_through : d->acked_segment) + 1;
		to = d->tracking ? t->durable_segment : 0;
		pthread_mutex_unlock(&t->lock);
		for (uint64_t n = from; n <= to; n++)
			if (skeleton_make(t, d, cat, n) < 0)
				break;
	}
}

void transport_prune(struct transport *t, struct catalog *cat)
{
	uint64_t low = UINT64_MAX, backing, n, now = clock_wall_ns();

	make_skeletons(t, cat);
	pthread_mutex_lock(&t->lock);
	if (t->pruning || t->ndests == 0) {
		pthread_mutex_unlock(&t->lock);
		return;
	}
	for (size_t i = 0; i < t->ndests; i++) {
		struct dest *d = &t->dests[i];
		uint64_t done = d->acked_segment;

		if (d->tracking && d->skel_through > done)
			done = d->skel_through;
		if (done < low)
			low = done;
	}
	backing = t->backing_lsn;
	n = t->pruned_through + 1;
	t->pruning = true;
	pthread_mutex_unlock(&t->lock);

	for (; n <= low; n++) {
		uint64_t size, created, last, sealed;
		char name[SEG_FILE_NAME_LEN + 8], path[4200];
		int r = segment_facts(t->journal_dir, n, &size, &created, &last, &sealed);

		if (r == -ENOENT) {
			size = 0;
		} else if (r < 0) {
			break;
		} else {
			if (last > backing || sealed + t->retain_ns > now)
				break;
			seg_file_name(n, SEG_FILE_SUFFIX, name);
			snprintf(path, sizeof path, "%s/%s", t->journal_dir, name);
			if (t->hooks.recycle && t->hooks.recycle(t->hooks.ctx, n)) {
				/* the journal writes a later segment over it */
			} else if (unlink(path) < 0) {
				log_error("pruning %s: %m", path);
				break;
			}
		}
		catalog_segment_pruned(cat, n);
		if (size && t->hooks.freed)
			t->hooks.freed(t->hooks.ctx, size);
		pthread_mutex_lock(&t->lock);
		t->pruned_through = n;
		pthread_mutex_unlock(&t->lock);
	}
	pthread_mutex_lock(&t->lock);
	t->pruning = false;
	pthread_mutex_unlock(&t->lock);
}

/* ---- status ---- */

struct backlog {
	uint64_t segments, bytes;
	double seconds;
};

static void measure_backlog(struct transport *t, uint64_t acked, uint64_t durable,
			    uint64_t now, struct backlog *b)
{
	uint64_t open_oldest = t->hooks.open_oldest_ns ? t->hooks.open_oldest_ns(t->hooks.ctx) : 0;

	memset(b, 0, sizeof *b);
	for (uint64_t n = acked + 1; n <= durable; n++) {
		uint64_t size, created, last, sealed;

		if (segment_facts(t->journal_dir, n, &size, &created, &last, &sealed) < 0)
			continue;
		b->segments++;
		b->bytes += size;
		if (b->segments == 1 && created && now > created)
			b->seconds = (double)(now - created) / 1e9;
	}
	/* Writes not sealed yet are not on the remote either. */
	if (b->segments == 0 && open_oldest && now > open_oldest)
		b->seconds = (double)(now - open_oldest) / 1e9;
}

json_t *transport_status(struct transport *t)
{
	json_t *arr = json_array();
	uint64_t now = clock_wall_ns();

	for (size_t i = 0; i < t->ndests; i++) {
		struct dest *d = &t->dests[i];
		struct dest snap;
		struct backlog b;
		json_t *o, *images;
		char when[32];

		pthread_mutex_lock(&t->lock);
		snap = *d;
		snap.cfg.name = NULL;
		uint64_t durable = t->durable_segment;
		pthread_mutex_unlock(&t->lock);
		/* Between the ack and the worker's next look, it is in sync already. */
		if (snap.state == DEST_SHIPPING && snap.acked_segment >= durable)
			snap.state = DEST_IN_SYNC;
		measure_backlog(t, snap.acked_segment, durable, now, &b);
		o = json_object();
		json_object_set_new(o, "name", json_string(d->cfg.name));
		json_object_set_new(o, "url", json_string(d->cfg.url));
		json_object_set_new(o, "state", json_string(state_names[snap.state]));
		if (d->cfg.nimages) {
			images = json_array();
			for (size_t k = 0; k < d->cfg.nimages; k++)
				json_array_append_new(images, json_string(d->cfg.images[k]));
			json_object_set_new(o, "images", images);
		}
		json_object_set_new(o, "acked_segment", json_integer((json_int_t)snap.acked_segment));
		json_object_set_new(o, "acked_lsn", json_integer((json_int_t)snap.acked_src_lsn));
		if (snap.acked_ns) {
			clock_iso8601(snap.acked_ns, 0, when, sizeof when);
			json_object_set_new(o, "acked_at", json_string(when));
		}
		json_object_set_new(o, "backlog_segments", json_integer((json_int_t)b.segments));
		json_object_set_new(o, "backlog_bytes", json_integer((json_int_t)b.bytes));
		json_object_set_new(o, "backlog_seconds", json_real(b.seconds));
		json_object_set_new(o, "segments_shipped", json_integer((json_int_t)snap.segments_sent));
		json_object_set_new(o, "bytes_shipped", json_integer((json_int_t)snap.bytes_sent));
		json_object_set_new(o, "throughput_bytes_per_second", json_real(snap.rate_bps));
		if (snap.bytes_raw && d->cfg.compress)
			json_object_set_new(o, "compression_ratio",
					    json_real((double)snap.bytes_sent / (double)snap.bytes_raw));
		if (snap.last_error[0] && snap.state != DEST_IN_SYNC && snap.state != DEST_SHIPPING) {
			json_object_set_new(o, "last_error", json_string(snap.last_error));
			clock_iso8601(snap.last_error_ns, 0, when, sizeof when);
			json_object_set_new(o, "last_error_at", json_string(when));
		}
		if (snap.state == DEST_RETRYING) {
			json_object_set_new(o, "attempts", json_integer(snap.attempts));
			json_object_set_new(o, "next_attempt_in_seconds",
					    json_real(snap.next_attempt_ns > now
							      ? (double)(snap.next_attempt_ns - now) / 1e9
							      : 0));
		}
		json_array_append_new(arr, o);
	}
	return arr;
}

void transport_metrics(struct transport *t, struct strbuf *sb)
{
	json_t *arr = transport_status(t);
	size_t i;
	json_t *o;

	strbuf_printf(sb, "# HELP aimfs_destination_up 1 if the destination is in sync or"
		" shipping\n# TYPE aimfs_destination_up gauge\n");
	json_array_foreach(arr, i, o) {
		const char *name = json_string_value(json_object_get(o, "name"));
		const char *state = json_string_value(json_object_get(o, "state"));

		strbuf_printf(sb, "aimfs_destination_up{destination=\"%s\",state=\"%s\"} %d\n",
			name, state, !strcmp(state, "in_sync") || !strcmp(state, "shipping"));
		strbuf_printf(sb, "aimfs_destination_acked_segment{destination=\"%s\"} %lld\n",
			name, json_integer_value(json_object_get(o, "acked_segment")));
		strbuf_printf(sb, "aimfs_destination_acked_lsn{destination=\"%s\"} %lld\n",
			name, json_integer_value(json_object_get(o, "acked_lsn")));
		strbuf_printf(sb, "aimfs_destination_backlog_segments{destination=\"%s\"} %lld\n",
			name, json_integer_value(json_object_get(o, "backlog_segments")));
		strbuf_printf(sb, "aimfs_destination_backlog_bytes{destination=\"%s\"} %lld\n",
			name, json_integer_value(json_object_get(o, "backlog_bytes")));
		strbuf_printf(sb, "aimfs_destination_backlog_seconds{destination=\"%s\"} %.3f\n",
			name, json_real_value(json_object_get(o, "backlog_seconds")));
		strbuf_printf(sb, "aimfs_destination_shipped_bytes_total{destination=\"%s\"} %lld\n",
			name, json_integer_value(json_object_get(o, "bytes_shipped")));
		strbuf_printf(sb, "aimfs_destination_shipped_segments_total{destination=\"%s\"} %lld\n",
			name, json_integer_value(json_object_get(o, "segments_shipped")));
	}
	json_decref(arr);
}
