/*
 * sealer.c — the journal's background thread.  It seals the open segment
 * when it gets old (segment_age), and finishes every sealed segment: fsync,
 * rename NNN.open -> NNN.aimj, fsync of the directory, then indexing in the
 * catalog with its own SQLite connection (opened again every few seconds
 * while it cannot be opened).  Barriers wait on durable_segment,
 * which moves only after the fsync and rename.
 *
 * A segment it cannot finish (a failed fsync, rename or directory sync)
 * stays at the head of its queue and is tried again after RETRY_NS;
 * barriers meanwhile fail with the error instead of waiting, and succeed
 * again once it is finished.  After a failed fsync the segment is read
 * back, checked and written again first (rewrite_checked).
 */
#include "journal_i.h"
#include "io_i.h"
#include "clock.h"
#include "thread.h"
#include "catalog.h"
#include "fileio.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TICK_NS 50000000ULL /* how often an idle sealer looks at the age */
/* How often a sealer without its catalog tries to open it again. */
#define CATALOG_RETRY_NS 5000000000ULL

/* Renames NNN.open to NNN.aimj and syncs the directory; done again after
 * a failure, it finds the rename done. */
static int publish(int dirfd, uint64_t number)
{
	char from[SEG_FILE_NAME_LEN + 8], to[SEG_FILE_NAME_LEN + 8];

	seg_file_name(number, SEG_OPEN_SUFFIX, from);
	seg_file_name(number, SEG_FILE_SUFFIX, to);
	if (aimfs_io.renameat_fn(dirfd, from, dirfd, to) < 0 &&
	    !(errno == ENOENT && faccessat(dirfd, to, F_OK, AT_SYMLINK_NOFOLLOW) == 0))
		return -errno;
	if (aimfs_io.fsync_fn(dirfd) < 0)
		return -errno;
	return 0;
}

int sealer_finish_file(int dirfd, int fd, uint64_t number, bool *fsync_failed)
{
	if (aimfs_io.fsync_fn(fd) < 0) {
		if (fsync_failed)
			*fsync_failed = true;
		return -errno;
	}
	return publish(dirfd, number);
}

/*
 * After a failed sync of sealed segment s: a failed fsync may have dropped
 * pages it could not write while marking them clean, so that the next
 * fsync has nothing to write and says all is well.  Reads the segment back
 * (the page cache, or the disk), checks it is the segment that was sealed
 * (every record's check, the trailer's digest and count) and writes it
 * again, so that the next fsync writes real bytes.  0, or -EIO when what is
 * there is not the segment any more: its records are lost to the journal,
 * and it is never made durable (barriers keep failing) until a remount's
 * recovery cuts it at its first invalid record.
 */
static int rewrite_checked(struct journal *j, struct segfile *s)
{
	char name[SEG_FILE_NAME_LEN + 8];
	struct seg_view *v = NULL;
	struct seg_err err;
	void *map;
	int fd, r;

	seg_file_name(s->number, SEG_OPEN_SUFFIX, name);
	fd = openat(j->dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	map = mmap(NULL, (size_t)s->bytes, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (map == MAP_FAILED)
		return -errno;
	r = seg_view_new(map, (size_t)s->bytes, &v, &err);
	if (r == 0 && (!seg_view_sealed(v) || seg_view_digest(v) != s->digest ||
		       seg_view_count(v) != s->records))
		r = -EBADMSG;
	if (r < 0) {
		if (!s->lost)
			log_error("journal %s: segment %" PRIu64 " is not what was written any more"
				  " after a failed sync (%s); its records are lost to the journal:"
				  " remount, and verify the replicas (aimctl verify)", j->dir,
				  s->number, v ? "its seal does not match" : err.msg);
		s->lost = true;
		r = -EIO;
	} else {
		r = fileio_pwrite_full(aimfs_io.pwrite_fn, s->fd, map, (size_t)s->bytes, 0);
	}
	seg_view_free(v);
	munmap(map, (size_t)s->bytes);
	return r;
}

/*
 * Indexes sealed segment number in the catalog.  own: this mount wrote and
 * sealed it, so its payloads' hashes are not recomputed (seg_view_open_own);
 * a segment a crashed mount left is checked whole.
 */
int sealer_index(struct catalog *cat, const char *dir, uint64_t number, bool own)
{
	char name[SEG_FILE_NAME_LEN + 8], path[4200];
	struct seg_view *v;
	struct seg_err err;
	int r, fd;

	seg_file_name(number, SEG_FILE_SUFFIX, name);
	snprintf(path, sizeof path, "%s/%s", dir, name);
	r = own ? seg_view_open_own(path, &v, &err) : seg_view_open(path, &v, &err);
	if (r < 0) {
		log_error("segment %s: %s (at byte %" PRIu64 ")", path, err.msg, err.offset);
		return r;
	}
	/* Indexing iterates every record: their headers read with pread,
	 * not through the mapping (format.h, seg_view_iterate_from). */
	fd = open(path, O_RDONLY | O_CLOEXEC);
	seg_view_iterate_from(v, fd);
	r = catalog_index_segment(cat, v, seg_view_size(v));
	seg_view_free(v);
	if (fd >= 0)
		close(fd);
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

/*
 * Indexes every finished segment from *from (0: none waits) through
 * number.  A catalog on a full disk cannot take them; they wait, and go in
 * with the first segment finished after space was freed (a segment pruned
 * meanwhile needs no row).  Recovery indexes what a mount left out.
 */
static void index_through(struct journal *j, struct catalog *cat, uint64_t *from,
			  uint64_t number)
{
	uint64_t n = *from ? *from : number;

	for (; n <= number; n++) {
		char name[SEG_FILE_NAME_LEN + 8];

		seg_file_name(n, SEG_FILE_SUFFIX, name);
		if (faccessat(j->dirfd, name, F_OK, 0) < 0)
			continue; /* pruned */
		if (sealer_index(cat, j->dir, n, true) < 0) {
			if (!*from)
				log_warn("journal %s: segment %" PRIu64 " is not in the catalog yet;"
					 " it goes in with the next segment that can", j->dir, n);
			*from = n;
			return;
		}
	}
	if (*from)
		log_info("journal %s: the catalog has every segment again (from %" PRIu64 ")",
			 j->dir, *from);
	*from = 0;
}

/* Finishes s (taken off the queue); false if it failed (s is back at the
 * head of the queue). */
static bool finish_one(struct journal *j, struct catalog *cat, uint64_t *index_from,
		       struct segfile *s)
{
	uint64_t number = s->number, backing_lsn = s->backing_lsn, prunable;
	bool verify, cut, fsync_failed = false;
	uint64_t began = clock_mono_ns();
	int r = 0;

	pthread_mutex_lock(&j->lock);
	verify = s->verify;
	/* A recycled file still holds the old segment's bytes past the
	 * trailer; a failed write may have left some there too. */
	cut = s->recycled || s->cut;
	pthread_mutex_unlock(&j->lock);
	if (verify)
		r = rewrite_checked(j, s);
	if (r == 0 && cut && aimfs_io.ftruncate_fn(s->fd, (off_t)s->bytes) < 0)
		r = -errno;
	if (r == 0)
		r = sealer_finish_file(j->dirfd, s->fd, number, &fsync_failed);

	if (r < 0) {
		pthread_mutex_lock(&j->lock);
		if (fsync_failed)
			s->verify = true;
		j->finish_error = r;
		/* 0.1 s, doubling to 6.4 s while it keeps failing */
		j->finish_retry_ns = clock_mono_ns() + (RETRY_NS << (j->finish_attempts < 6 ?
								     j->finish_attempts : 6));
		j->finish_attempts++;
		journal_fail_locked(j, r, "finishing a segment");
		s->next = j->queue_head;
		j->queue_head = s;
		if (!j->queue_tail)
			j->queue_tail = s;
		pthread_cond_broadcast(&j->durable);
		pthread_mutex_unlock(&j->lock);
		return false;
	}
	pthread_mutex_lock(&j->lock);
	s->verify = false;
	j->durable_segment = number;
	j->durable_backing_lsn = backing_lsn;
	prunable = journal_prunable_lsn_locked(j, backing_lsn);
	j->finish_error = 0;
	j->finish_attempts = 0;
	/* Only a finish that began after the last failure says the journal
	 * writes again: a header that failed while this segment was being
	 * synced is still the operator's news. */
	if (j->last_failure_mono < began)
		journal_healthy_locked(j);
	pthread_cond_broadcast(&j->durable);
	segfile_put_locked(j, s);
	pthread_mutex_unlock(&j->lock);
	if (cat)
		index_through(j, cat, index_from, number);
	else if (!*index_from)
		*index_from = number; /* indexed from here once the catalog opens */
	if (j->cfg.drop_behind)
		drop_cached(j, number);
	if (j->cfg.on_durable)
		j->cfg.on_durable(j->cfg.hook_ctx, number, prunable);
	return true;
}

/*
 * The sealer's catalog connection: opened at start and, after a failure,
 * again before each segment it finishes, at most every CATALOG_RETRY_NS.
 * Without it sealed segments are not indexed (finish_one keeps where they
 * start) and pruning stops at the first of them (transport_prune), so the
 * journal grows until it opens.  *failed_at: 0, or when it last failed.
 */
static void connect_catalog(struct journal *j, const char *path, struct catalog **cat,
			    uint64_t *failed_at)
{
	int r;

	if (*cat || (*failed_at && clock_mono_ns() - *failed_at < CATALOG_RETRY_NS))
		return;
	r = aimfs_io.catalog_open_fn(path, cat);
	if (r == 0) {
		if (*failed_at)
			log_info("journal %s: the sealer opened the catalog; the segments sealed"
				 " meanwhile are indexed now", j->dir);
		*failed_at = 0;
		return;
	}
	*cat = NULL;
	if (!*failed_at)
		log_error("journal %s: the sealer cannot open the catalog %s: %s; sealed segments"
			  " are neither indexed nor pruned until it can (tried every %llu s)",
			  j->dir, path, strerror(-r), CATALOG_RETRY_NS / 1000000000ULL);
	*failed_at = clock_mono_ns();
}

static void *sealer_main(void *arg)
{
	struct journal *j = arg;
	struct catalog *cat = NULL;
	uint64_t index_from = 0, catalog_failed_at = 0;
	char path[4200];

	snprintf(path, sizeof path, "%s/%s", j->dir, CATALOG_FILE);
	connect_catalog(j, path, &cat, &catalog_failed_at);
	pthread_mutex_lock(&j->lock);
	for (;;) {
		struct segfile *s = j->queue_head;
		struct timespec deadline;
		uint64_t now;

		now = clock_mono_ns();
		if (s && (!j->finish_error || now >= j->finish_retry_ns)) {
			bool ok;

			j->queue_head = s->next;
			if (!j->queue_head)
				j->queue_tail = NULL;
			pthread_mutex_unlock(&j->lock);
			connect_catalog(j, path, &cat, &catalog_failed_at);
			ok = finish_one(j, cat, &index_from, s);
			pthread_mutex_lock(&j->lock);
			/* At unmount one more try is all: what is left stays
			 * NNN.open, sealed, for the next mount to finish. */
			if (!ok && j->stopping)
				break;
			continue;
		}
		if (j->stopping && (!s || j->finish_error))
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
		/* Sealed by age, or as soon as writes pause: the recovery point
		 * then does not wait out segment_age once the guest is quiet.
		 * And as soon as it is segment_eager old if the destinations
		 * have shipped everything else: while the link keeps up,
		 * segments stay small and the recovery point short; when it
		 * does not, they grow, up to segment_size or segment_age.  A
		 * seal that failed waits RETRY_NS before the next try. */
		if (j->open && j->open->records && clock_mono_ns() >= j->seal_retry_ns) {
			now = clock_wall_ns();
			if (now - j->open->created_ns >= j->cfg.segment_age_ns ||
			    (j->cfg.segment_idle_ns &&
			     now - j->last_append_ns >= j->cfg.segment_idle_ns) ||
			    (j->cfg.segment_eager_ns && j->cfg.dests_idle &&
			     now - j->open->created_ns >= j->cfg.segment_eager_ns &&
			     j->cfg.dests_idle(j->cfg.hook_ctx))) {
				journal_seal_locked(j);
				continue;
			}
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
	int r = thread_start(&j->sealer, sealer_main, j);

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
