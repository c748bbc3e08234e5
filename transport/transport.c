/*
 * transport.c — the transport's shared state: destinations and their
 * workers, what is durable, pruning of what everyone acknowledged, and the
 * hooks the journal gave it.  (Destination state: dest_state.c; what
 * operators see of it: dest_view.c.)
 *
 * Pruning rule: segment n is deleted once every destination acknowledged
 * it, its records are all on the backing files (last LSN <= the backing
 * watermark, so crash recovery never needs it), and retention, if set, has
 * passed since it was sealed.  Segments go in order; the catalog keeps the
 * segment's row (state "pruned") but drops its per-write rows.
 */
#include "transport_i.h"
#include "clock.h"
#include "thread.h"
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
	dst->connect_timeout_ns = src->connect_timeout_ns;
	dst->compress = src->compress;
	dst->type = src->type;
	r |= copy_str(&dst->region, src->region);
	r |= copy_str(&dst->access_key_file, src->access_key_file);
	r |= copy_str(&dst->secret_key_file, src->secret_key_file);
	r |= copy_str(&dst->access_key, src->access_key);
	r |= copy_str(&dst->secret_key, src->secret_key);
	dst->multipart_size = src->multipart_size;
	dst->keep_ns = src->keep_ns;
	dst->keep_segments = src->keep_segments;
	dst->snapshot_every_ns = src->snapshot_every_ns;
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
	pthread_mutex_init(&t->change_lock, NULL);
	pthread_mutex_init(&t->skel_lock, NULL);
	pthread_mutex_init(&t->lock, NULL);
	pthread_mutex_init(&t->facts.lock, NULL);
	pthread_cond_init(&t->cond, NULL);
	pthread_cond_init(&t->pruned, NULL);
	t->journal_dir = strdup(cfg->journal_dir);
	memcpy(t->group, cfg->group, 16);
	seg_uuid_format(t->group, t->group_s);
	t->retain_ns = cfg->retain_ns;
	t->resync = cfg->resync;
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
	/* No sealed segment left (a clean unmount prunes them all): every
	 * one the catalog knows is gone, and the first prune must not walk
	 * their numbers from 1, a file check and a transaction each. */
	if (!oldest)
		t->pruned_through = last_known;
	for (size_t i = 0; i < cfg->ndests; i++) {
		struct dest *d = &t->dests[i];
		struct catalog_dest cd;
		uint64_t next;

		d->t = t;
		r = copy_dest(&d->cfg, &cfg->dests[i]);
		if (r == 0)
			r = catalog_dest_register(cat, d->cfg.name, d->cfg.url, cfg->start_segment);
		if (r == 0)
			r = catalog_dest_load(cat, d->cfg.name, &cd);
		if (r == 0)
			r = dest_state_load(d, cat);
		if (r < 0)
			goto fail;
		d->acked_segment = cd.acked_segment;
		skeleton_forget_acked(t, d);
		d->skel_through = skeleton_scan(t, d, cd.acked_segment);
		/* The last process may have sent the next one without hearing
		 * back (an object store takes a second copy in its place). */
		if (d->cfg.type != DEST_TYPE_S3)
			d->unsure_segment = cd.acked_segment + 1;
		d->acked_src_lsn = cd.acked_lsn;
		d->acked_ns = cd.acked_ns;
		d->dest_last_lsn = cd.dest_lsn;
		d->link = DEST_LINK_SHIPPING;
		/* The next segment it needs was written once but is gone: pruned
		 * before this destination existed, or lost.  A tracking one needs
		 * the segments after its stored skeletons only. */
		next = (dest_tracking(d) && d->skel_through > d->acked_segment ? d->skel_through
									       : d->acked_segment) + 1;
		if (next <= last_known && (oldest == 0 || next < oldest)) {
			snprintf(d->last_error, sizeof d->last_error,
				 "it needs segment %" PRIu64 ", which the journal no longer holds"
				 " (it starts at %" PRIu64 "): it needs a resync",
				 next, oldest ? oldest : last_known + 1);
			d->last_error_ns = clock_wall_ns();
			dest_link_set(d, DEST_LINK_GAP);
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
		int r = thread_start(&t->dests[i].thread, worker_main, &t->dests[i]);

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
	if (backing_lsn > t->backing_lsn) {
		t->backing_lsn = backing_lsn;
		t->backing_moved = true;
	}
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
		if (d->link != DEST_LINK_STOPPED && d->link != DEST_LINK_GAP)
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

int transport_prune_now(struct transport *t)
{
	struct catalog *cat;
	char path[4200];
	int r;

	snprintf(path, sizeof path, "%s/catalog.db", t->journal_dir);
	r = catalog_open(path, &cat);
	if (r < 0)
		return r;
	transport_prune(t, cat);
	catalog_close(cat);
	return 0;
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
	info->rec = d->rec;
	info->acked_segment = d->acked_segment;
	info->acked_src_lsn = d->acked_src_lsn;
	info->dest_last_lsn = d->dest_last_lsn;
	info->durable_segment = t->durable_segment;
	info->segments_gone = d->link == DEST_LINK_GAP;
	info->reachable = d->link == DEST_LINK_IDLE || d->link == DEST_LINK_SHIPPING;
	info->snapshot_due = d->cfg.snapshot_every_ns && d->base_known &&
			     clock_wall_ns() >= d->base_ns + d->cfg.snapshot_every_ns;
	pthread_mutex_unlock(&t->lock);
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

bool transport_idle(struct transport *t)
{
	bool idle = true;

	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->ndests; i++)
		if (t->dests[i].acked_segment < t->durable_segment)
			idle = false;
	pthread_mutex_unlock(&t->lock);
	return idle;
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
	free(t->facts.v);
	pthread_mutex_destroy(&t->facts.lock);
	pthread_mutex_destroy(&t->change_lock);
	pthread_mutex_destroy(&t->skel_lock);
	pthread_mutex_destroy(&t->lock);
	pthread_cond_destroy(&t->cond);
	pthread_cond_destroy(&t->pruned);
	free(t);
}

/* ---- pruning ---- */

/* Reads fields of a sealed segment from its header and trailer without
 * validating it (our own, already validated files). */
int segment_facts(const char *dir, uint64_t n, uint64_t *size, uint64_t *created_ns,
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

/*
 * A tracking destination needs no segment it has a skeleton of.  The
 * catalog commits with synchronous=NORMAL: the dirty extents a skeleton
 * added are made durable here, before the segments they stand for can be
 * deleted (a power cut could otherwise keep the deletion and lose them).
 * Returns 0, or -errno when nothing may be pruned now.
 */
static int make_skeletons(struct transport *t, struct catalog *cat)
{
	bool made = false;

	for (size_t i = 0; i < t->ndests; i++) {
		struct dest *d = &t->dests[i];
		uint64_t from, to;

		pthread_mutex_lock(&t->lock);
		from = (d->skel_through > d->acked_segment ? d->skel_through : d->acked_segment) + 1;
		/* Not while its worker ships: a segment it sends whole (it
		 * turned tracking meanwhile) ends at another LSN of the
		 * destination's sequence than its skeleton would, and the
		 * skeletons after it must follow what was acknowledged. */
		to = dest_tracking(d) && !d->in_ship ? t->durable_segment : 0;
		pthread_mutex_unlock(&t->lock);
		for (uint64_t n = from; n <= to; n++) {
			if (skeleton_make(t, d, cat, n) < 0)
				break;
			made = true;
		}
	}
	return made ? catalog_make_durable(cat) : 0;
}

/* Prunes what every destination acknowledged and the backing files hold,
 * from the first segment not pruned yet (the caller is the one pruner). */
static void prune_pass(struct transport *t, struct catalog *cat)
{
	uint64_t low = UINT64_MAX, backing, n, now = clock_wall_ns();

	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->ndests; i++) {
		struct dest *d = &t->dests[i];
		uint64_t done = d->acked_segment;

		if (dest_tracking(d) && d->skel_through > done)
			done = d->skel_through;
		if (done < low)
			low = done;
	}
	/* Nothing past what the journal has published: a resync's skip may
	 * run ahead of it, and a segment still being sealed has no .aimj
	 * yet, which would be taken for pruned (and its file left behind,
	 * counted in the journal's size until the next mount). */
	if (low > t->durable_segment)
		low = t->durable_segment;
	backing = t->backing_lsn;
	n = t->pruned_through + 1;
	pthread_mutex_unlock(&t->lock);

	for (; n <= low; n++) {
		uint64_t size, created, last, sealed;
		char name[SEG_FILE_NAME_LEN + 8], path[4200];
		int r;

		/* not while a skeleton is made from it (skeleton.c) */
		pthread_mutex_lock(&t->skel_lock);
		r = segment_facts(t->journal_dir, n, &size, &created, &last, &sealed);
		if (r == -ENOENT) {
			size = 0;
		} else if (r < 0) {
			pthread_mutex_unlock(&t->skel_lock);
			break;
		} else {
			bool indexed = false;

			/* Not before the catalog indexed it (the sealer does, or
			 * the next mount's recovery): what the catalog has is
			 * where recovery numbers the journal from. */
			if (last > backing || sealed + t->retain_ns > now ||
			    catalog_has_segment(cat, n, &indexed) < 0 || !indexed) {
				pthread_mutex_unlock(&t->skel_lock);
				break;
			}
			seg_file_name(n, SEG_FILE_SUFFIX, name);
			snprintf(path, sizeof path, "%s/%s", t->journal_dir, name);
			if (t->hooks.recycle && t->hooks.recycle(t->hooks.ctx, n)) {
				/* the journal writes a later segment over it */
			} else if (unlink(path) < 0) {
				log_error("pruning %s: %m", path);
				pthread_mutex_unlock(&t->skel_lock);
				break;
			}
		}
		pthread_mutex_unlock(&t->skel_lock);
		catalog_segment_pruned(cat, n);
		if (size && t->hooks.freed)
			t->hooks.freed(t->hooks.ctx, size);
		pthread_mutex_lock(&t->lock);
		t->pruned_through = n;
		pthread_mutex_unlock(&t->lock);
	}
}

/*
 * One pruner at a time.  A call while another runs is not dropped: that one
 * runs once more when it is done, with what is acknowledged and synced
 * then.  (Dropped, a checkpoint's news could be lost for good: a worker
 * took backing_moved, found another pass running that had read the old
 * backing LSN, and with no new records no checkpoint came again; a resync
 * waiting for the journal to drain below half waited for ever.)  With
 * wait, such a call returns once that pass is done, so that its caller
 * sees what it freed (transport_make_room).
 */
static void prune(struct transport *t, struct catalog *cat, bool wait)
{
	if (make_skeletons(t, cat) < 0)
		return;
	pthread_mutex_lock(&t->lock);
	if (t->ndests == 0) {
		pthread_mutex_unlock(&t->lock);
		return;
	}
	if (t->pruning) {
		uint64_t mine = t->prune_begun + 1; /* the pass after the one running */

		t->prune_again = true;
		while (wait && t->prune_done < mine)
			pthread_cond_wait(&t->pruned, &t->lock);
		pthread_mutex_unlock(&t->lock);
		return;
	}
	t->pruning = true;
	do {
		t->prune_again = false;
		t->prune_begun++;
		pthread_mutex_unlock(&t->lock);
		prune_pass(t, cat);
		pthread_mutex_lock(&t->lock);
		t->prune_done++;
		pthread_cond_broadcast(&t->pruned);
	} while (t->prune_again);
	t->pruning = false;
	pthread_mutex_unlock(&t->lock);
}

void transport_prune(struct transport *t, struct catalog *cat)
{
	prune(t, cat, false);
}

void transport_make_room(struct transport *t, struct catalog *cat)
{
	prune(t, cat, true);
}
