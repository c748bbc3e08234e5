/*
 * skeleton.c — what a destination receives while it is *tracking*: the
 * journal overflowed while it lagged, so its segments are pruned before it
 * gets them.  A skeleton keeps a segment's namespace, truncate and barrier
 * records (the remote needs them in order) and drops its data, whose extents
 * become dirty for the resync that follows (docs/RESYNC.md).
 *
 * Skeletons are re-encoded in the destination's own LSN sequence and
 * stored under <journal>/skel/<destination number>/ until acknowledged, so
 * the segments themselves can go.  The first skeleton of a tracking episode
 * starts with SYNC_BEGIN: from then on the remote knows it is not a
 * consistent copy.
 *
 * One segment is kept whole instead: the one its worker sent without an
 * answer (the link went down).  The remote may hold it, and would refuse a
 * skeleton of it as a different segment; kept as it was sent, whichever
 * it holds, the next skeleton follows it in the same sequence.
 */
#include "clock.h"
#include "fileio.h"
#include "transport_i.h"
#include "catalog.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void skeleton_path(const struct transport *t, const struct dest *d, uint64_t n, char *buf,
		   size_t len)
{
	char name[SEG_FILE_NAME_LEN + 8];

	seg_file_name(n, SEG_FILE_SUFFIX, name);
	snprintf(buf, len, "%s/skel/%u/%s", t->journal_dir, d->rec.number, name);
}

bool skeleton_exists(const struct transport *t, const struct dest *d, uint64_t n)
{
	char path[4300];

	skeleton_path(t, d, n, path, sizeof path);
	return access(path, F_OK) == 0;
}

void skeleton_damaged(struct transport *t, struct dest *d, struct catalog *cat, const char *what,
		      uint64_t n, const char *why)
{
	char msg[sizeof d->last_error];

	pthread_mutex_lock(&t->lock);
	/* The resync it asks for may have moved d past n already. */
	if (n <= d->acked_segment) {
		pthread_mutex_unlock(&t->lock);
		return;
	}
	snprintf(d->last_error, sizeof d->last_error,
		 "%s %" PRIu64 " is damaged (%s): it needs a resync", what, n, why);
	d->last_error_ns = clock_wall_ns();
	dest_link_set(d, DEST_LINK_GAP);
	memcpy(msg, d->last_error, sizeof msg);
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
	if (cat)
		catalog_dest_error(cat, d->cfg.name, msg);
}

/* Last LSN of the destination's sequence before skeleton n: 0, -ENOENT
 * (its worker just shipped and removed skeleton n - 1), -EBADMSG (damaged:
 * skeleton_damaged was called), or another -errno (try again later). */
static int lsn_before(struct transport *t, struct dest *d, struct catalog *cat, uint64_t n,
		      uint64_t *lsn)
{
	char path[4300];
	struct seg_view *v;
	struct seg_err err;
	int r;

	pthread_mutex_lock(&t->lock);
	if (n == d->acked_segment + 1) {
		*lsn = d->dest_last_lsn;
		pthread_mutex_unlock(&t->lock);
		return 0;
	}
	pthread_mutex_unlock(&t->lock);
	skeleton_path(t, d, n - 1, path, sizeof path);
	r = seg_view_open(path, &v, &err);
	if (view_error_is_damage(r)) {
		skeleton_damaged(t, d, cat, "the stored skeleton of segment", n - 1, err.msg);
		return -EBADMSG;
	}
	if (r < 0)
		return r;
	*lsn = seg_view_last_lsn(v);
	seg_view_free(v);
	return 0;
}

static int write_file(const char *path, const uint8_t *buf, size_t len)
{
	char tmp[4400];
	int fd, r = 0;

	/* Two threads may store the same skeleton (pruning runs from every
	 * worker): each writes its own file, the renames leave one copy. */
	snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)gettid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	if (write(fd, buf, len) != (ssize_t)len || fsync(fd) < 0)
		r = -EIO;
	close(fd);
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0) {
		unlink(tmp);
		return r;
	}
	/* the name too: the segment it stands for is deleted next */
	return fileio_fsync_dir_of(path, NULL);
}

/* The data records of v that d mirrors become its dirty extents. */
static int add_dirty(struct dest *d, struct catalog *cat, struct seg_view *v)
{
	struct seg_record r;
	int ret = 0;

	seg_view_rewind(v);
	while (!ret && seg_view_next(v, &r) == 1) {
		const char *name;

		if (r.type != SEG_WRITE && r.type != SEG_ZERO && r.type != SEG_ALLOC)
			continue;
		if (record_is_foreign(&r, d->rec.number))
			continue;
		name = seg_view_image_name(v, r.image);
		if (!name || !dest_wants_image(&d->cfg, name))
			continue;
		ret = catalog_dirty_add(cat, d->cfg.name, r.image, r.offset, r.length, true);
	}
	seg_view_rewind(v);
	return ret;
}

static int make_locked(struct transport *t, struct dest *d, struct catalog *cat, uint64_t n)
{
	char path[4300], dir[4200], seg[SEG_FILE_NAME_LEN + 8], src[4300];
	struct seg_view *v;
	struct seg_err err;
	uint8_t *buf = NULL;
	size_t len;
	uint64_t first, last;
	bool begin, whole;
	int r;

	if (skeleton_exists(t, d, n))
		return 0;
	/* The caller saw it tracking and n unacknowledged; a resync may
	 * have ended that since (a pruner's pass is long). */
	pthread_mutex_lock(&t->lock);
	r = dest_tracking(d) && n > d->acked_segment ? 0 : -EAGAIN;
	pthread_mutex_unlock(&t->lock);
	if (r < 0)
		return r;
	seg_file_name(n, SEG_FILE_SUFFIX, seg);
	snprintf(src, sizeof src, "%s/%s", t->journal_dir, seg);
	r = seg_view_open(src, &v, &err);
	if (view_error_is_damage(r)) {
		skeleton_damaged(t, d, cat, "journal segment", n, err.msg);
		return -EBADMSG;
	}
	if (r < 0)
		return r;
	r = lsn_before(t, d, cat, n, &first);
	if (r < 0) {
		seg_view_free(v);
		return r;
	}
	first++;
	pthread_mutex_lock(&t->lock);
	whole = n == d->unsure_segment && n == d->acked_segment + 1;
	begin = !whole && dest_skeleton_needs_begin(d);
	pthread_mutex_unlock(&t->lock);
	if (whole) {
		/* its data goes with it: nothing to mark dirty, and the next
		 * skeleton carries the SYNC_BEGIN */
		const uint8_t *body;
		uint64_t dfirst;

		r = filter_body(d, FILTER_NORMAL, v, first, &body, &len, &buf, &dfirst, &last);
		if (r == 0 && !buf) { /* v's own bytes: v is freed below */
			buf = malloc(len);
			if (buf)
				memcpy(buf, body, len);
			else
				r = -ENOMEM;
		}
		if (r == 0)
			log_info("destination %s: segment %" PRIu64 " was sent without an answer;"
				 " it is kept whole in place of its skeleton", d->cfg.name, n);
	} else {
		r = add_dirty(d, cat, v);
		/* Durable before the skeleton that stands for them: after a
		 * power cut a stored skeleton counts as made, and its segment
		 * may be gone. */
		if (r == 0)
			r = catalog_make_durable(cat);
		if (r == 0)
			r = filter_segment(&d->cfg, d->rec.number,
					   begin ? FILTER_SKELETON_BEGIN : FILTER_SKELETON, v, first,
					   &buf, &len, &last);
	}
	seg_view_free(v);
	if (r < 0) {
		free(buf);
		return r;
	}
	snprintf(dir, sizeof dir, "%s/skel", t->journal_dir);
	mkdir(dir, 0750);
	snprintf(dir, sizeof dir, "%s/skel/%u", t->journal_dir, d->rec.number);
	mkdir(dir, 0750);
	skeleton_path(t, d, n, path, sizeof path);
	r = write_file(path, buf, len);
	free(buf);
	if (r < 0) {
		log_error("destination %s: cannot store the skeleton of segment %" PRIu64 ": %s",
			  d->cfg.name, n, strerror(-r));
		/* not "the segment is gone" (its directory may be missing) */
		return r == -ENOENT ? -EIO : r;
	}
	if (begin) {
		/* Its SYNC_BEGIN is stored: the resync that ends tracking need
		 * not journal another.  Only if it is still tracking. */
		struct dest_change c = {
			.sync = DEST_SYNC_TRACKING, .phase = DEST_PHASE_BEGUN, .reason = DEST_REASON_OVERFLOW,
			.expect = true, .expect_sync = DEST_SYNC_TRACKING,
			.expect_phase = DEST_PHASE_NONE,
		};

		r = dest_state_change(t, (size_t)(d - t->dests), cat, &c);
		if (r < 0 && r != -EAGAIN)
			return r;
	}
	pthread_mutex_lock(&t->lock);
	if (n > d->skel_through)
		d->skel_through = n;
	pthread_mutex_unlock(&t->lock);
	return 0;
}

/*
 * One at a time (skel_lock), and never while the pruner removes a segment:
 * the pruner (any worker, the engine) and a worker shipping may both make
 * skeleton n; the first one stored lets the pruner recycle segment n, and
 * the other, still reading it, built its skeleton from the next segment's
 * bytes and stored it over the good one ("unknown record type 0"): the
 * journal then could not be pruned past it.
 */
int skeleton_make(struct transport *t, struct dest *d, struct catalog *cat, uint64_t n)
{
	int r;

	pthread_mutex_lock(&t->skel_lock);
	r = make_locked(t, d, cat, n);
	pthread_mutex_unlock(&t->skel_lock);
	return r;
}

void transport_skeletons_hold(struct transport *t)
{
	pthread_mutex_lock(&t->skel_lock);
}

void transport_skeletons_release(struct transport *t)
{
	pthread_mutex_unlock(&t->skel_lock);
}

void skeleton_remove(const struct transport *t, const struct dest *d, uint64_t n)
{
	char path[4300];

	skeleton_path(t, d, n, path, sizeof path);
	unlink(path);
}

void skeleton_forget_acked(const struct transport *t, const struct dest *d)
{
	char dir[4200], path[4500];
	struct dirent *de;
	DIR *dp;

	snprintf(dir, sizeof dir, "%s/skel/%u", t->journal_dir, d->rec.number);
	dp = opendir(dir);
	if (!dp)
		return;
	while ((de = readdir(dp))) {
		uint64_t n;

		if (seg_parse_file_name(de->d_name, &n) == 0 && n <= d->acked_segment) {
			snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
			unlink(path);
		}
	}
	closedir(dp);
}

uint64_t skeleton_scan(const struct transport *t, const struct dest *d, uint64_t after)
{
	uint64_t n = after;

	while (skeleton_exists(t, d, n + 1))
		n++;
	return n;
}
