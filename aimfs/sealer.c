/*
 * sealer.c — the journal's background thread.  It seals the open segment
 * when it gets old (segment_age), and finishes every sealed segment: fsync,
 * rename NNN.open -> NNN.aimj, fsync of the directory, then indexing in the
 * catalog with its own SQLite connection.  Barriers wait on durable_segment,
 * which moves only after the fsync and rename.
 */
#include "journal_i.h"
#include "io_i.h"
#include "clock.h"
#include "catalog.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TICK_NS 50000000ULL /* how often an idle sealer looks at the age */

int sealer_finish_file(int dirfd, int fd, uint64_t number)
{
	char from[SEG_FILE_NAME_LEN + 8], to[SEG_FILE_NAME_LEN + 8];

	if (aimfs_io.fsync_fn(fd) < 0)
		return -errno;
	seg_file_name(number, SEG_OPEN_SUFFIX, from);
	seg_file_name(number, SEG_FILE_SUFFIX, to);
	if (renameat(dirfd, from, dirfd, to) < 0)
		return -errno;
	if (aimfs_io.fsync_fn(dirfd) < 0)
		return -errno;
	return 0;
}

int sealer_index(struct catalog *cat, const char *dir, uint64_t number)
{
	char name[SEG_FILE_NAME_LEN + 8], path[4200];
	struct seg_view *v;
	struct seg_err err;
	int r;

	seg_file_name(number, SEG_FILE_SUFFIX, name);
	snprintf(path, sizeof path, "%s/%s", dir, name);
	r = seg_view_open(path, &v, &err);
	if (r < 0) {
		log_error("segment %s: %s (at byte %" PRIu64 ")", path, err.msg, err.offset);
		return r;
	}
	r = catalog_index_segment(cat, v, seg_view_size(v));
	seg_view_free(v);
	return r;
}

/*
 * drop_behind (no destinations: no one reads the segment soon): drops the
 * durable, indexed segment's pages from the page cache.  The pages freed are
 * the ones the next segments are written into, so the journal's cache
 * footprint stays about two segments, the guests' cache is not evicted by
 * write-once data, and on VMs whose balloon hands free pages back to the
 * host the journal does not fault in never-touched pages as it grows.
 */
static void drop_cached(struct journal *j, uint64_t number)
{
	char name[SEG_FILE_NAME_LEN + 8];
	int fd;

	seg_file_name(number, SEG_FILE_SUFFIX, name);
	fd = openat(j->dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	close(fd);
}

static void finish_one(struct journal *j, struct catalog *cat, struct segfile *s)
{
	uint64_t number = s->number, backing_lsn = s->backing_lsn;
	int r = 0;

	/* A recycled file still holds the old segment's bytes past the trailer. */
	if (s->recycled && aimfs_io.ftruncate_fn(s->fd, (off_t)s->bytes) < 0)
		r = -errno;
	if (r == 0)
		r = sealer_finish_file(j->dirfd, s->fd, number);

	if (r < 0) {
		pthread_mutex_lock(&j->lock);
		if (!j->error) {
			log_error("journal %s: finishing segment %" PRIu64 ": %s; refusing further"
				  " writes until remount", j->dir, number, strerror(-r));
			j->error = r;
		}
		pthread_cond_broadcast(&j->durable);
		segfile_put_locked(j, s);
		pthread_mutex_unlock(&j->lock);
		return;
	}
	pthread_mutex_lock(&j->lock);
	j->durable_segment = number;
	j->durable_backing_lsn = backing_lsn;
	pthread_cond_broadcast(&j->durable);
	segfile_put_locked(j, s);
	pthread_mutex_unlock(&j->lock);
	/* Indexing failures are repaired by recovery at the next mount. */
	if (cat && sealer_index(cat, j->dir, number) < 0)
		log_warn("segment %" PRIu64 " is not indexed yet; the next mount will index it",
			 number);
	if (j->cfg.drop_behind)
		drop_cached(j, number);
	if (j->cfg.on_durable)
		j->cfg.on_durable(j->cfg.hook_ctx, number, backing_lsn);
}

static void *sealer_main(void *arg)
{
	struct journal *j = arg;
	struct catalog *cat = NULL;
	char path[4200];

	snprintf(path, sizeof path, "%s/%s", j->dir, CATALOG_FILE);
	if (catalog_open(path, &cat) < 0)
		cat = NULL;
	pthread_mutex_lock(&j->lock);
	for (;;) {
		struct segfile *s = j->queue_head;
		struct timespec deadline;
		uint64_t now;

		if (s) {
			j->queue_head = s->next;
			if (!j->queue_head)
				j->queue_tail = NULL;
			pthread_mutex_unlock(&j->lock);
			finish_one(j, cat, s);
			pthread_mutex_lock(&j->lock);
			continue;
		}
		if (j->stopping)
			break;
		if (j->open && j->open->bytes - j->open->flushed >= WRITEBACK_STEP) {
			struct segfile *o = j->open;
			uint64_t from = o->flushed, to = o->bytes;

			o->refs++;
			o->flushed = to;
			pthread_mutex_unlock(&j->lock);
			/* Asynchronous: starts writeback, waits for nothing. */
			aimfs_io.sync_file_range_fn(o->fd, (off_t)from, (off_t)(to - from),
						    SYNC_FILE_RANGE_WRITE);
			pthread_mutex_lock(&j->lock);
			segfile_put_locked(j, o);
			continue;
		}
		now = clock_wall_ns();
		/* Sealed by age, or as soon as writes pause: the recovery point
		 * then does not wait out segment_age once the guest is quiet. */
		if (j->open && j->open->records &&
		    (now - j->open->created_ns >= j->cfg.segment_age_ns ||
		     (j->cfg.segment_idle_ns && now - j->last_append_ns >= j->cfg.segment_idle_ns))) {
			journal_seal_locked(j);
			continue;
		}
		clock_gettime(CLOCK_REALTIME, &deadline);
		deadline.tv_nsec += (long)TICK_NS;
		if (deadline.tv_nsec >= 1000000000L) {
			deadline.tv_sec++;
			deadline.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&j->wake, &j->lock, &deadline);
	}
	pthread_mutex_unlock(&j->lock);
	catalog_close(cat);
	return NULL;
}

int sealer_start(struct journal *j)
{
	int r = pthread_create(&j->sealer, NULL, sealer_main, j);

	if (r)
		return -r;
	j->sealer_started = true;
	return 0;
}

void sealer_stop(struct journal *j)
{
	pthread_mutex_lock(&j->lock);
	j->stopping = true;
	pthread_cond_broadcast(&j->wake);
	pthread_mutex_unlock(&j->lock);
	pthread_join(j->sealer, NULL);
	j->sealer_started = false;
}
