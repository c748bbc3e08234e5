/*
 * journal.c — LSNs, the open segment and the public journal API.
 *
 * A segment file is created lazily by the first record after the previous
 * one was sealed (so an idle mount makes no empty segments), named
 * NNN.open while it is written, and sealed by writing its trailer.  The
 * sealer thread then fsyncs it, renames it to NNN.aimj and indexes it; only
 * .aimj files are ever shipped.
 *
 * Records are written with pwritev straight into the page cache before the
 * backing file is touched: a kill -9 of the daemon loses nothing the
 * journal has, and the guest is answered only after both writes.  Power
 * loss is covered at barriers: journal_barrier makes the journal durable
 * before the caller syncs the backing file.
 */
#include "journal_i.h"
#include "io_i.h"
#include "clock.h"
#include "catalog.h"
#include "fileio.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define ADOPT_CHUNK (1u << 20)

static int pwrite_all(int fd, const struct iovec *iov, int n, uint64_t off)
{
	struct iovec v[4];

	memcpy(v, iov, (size_t)n * sizeof *v);
	return fileio_pwritev_full(aimfs_io.pwritev_fn, fd, v, n, off);
}

void segfile_put_locked(struct journal *j, struct segfile *s)
{
	(void)j;
	if (s && --s->refs == 0) {
		close(s->fd);
		free(s);
	}
}

/* ---- health ----
 *
 * No journal error is sticky.  Every way a journal write can fail leaves
 * the journal as it was before the call: a segment whose header could not
 * be written is removed; a record or trailer that could not be written is
 * cut off (or, if even the truncate fails, written over by the next one
 * and cut by the sealer), so the segment still ends at its last record —
 * the first invalid record ends the log, and no record ever follows
 * garbage.  So the failed operation answers its caller with the errno and
 * the next one simply tries again: a full disk heals when space is freed.
 * What follows only tells the operator (log once per episode, /status).
 */
int journal_fail_locked(struct journal *j, int err, const char *what)
{
	j->failures++;
	j->episode_failures++;
	j->last_error = err;
	j->last_failure_mono = clock_mono_ns();
	snprintf(j->last_error_what, sizeof j->last_error_what, "%s", what);
	if (!j->failing) {
		j->failing = true;
		j->failed_ns = clock_wall_ns();
		j->episode_failures = 1;
		log_error("journal %s: %s: %s; what needs the journal fails with this error until"
			  " it clears (nothing needs a remount)", j->dir, what, strerror(-err));
	}
	return err;
}

void journal_healthy_locked(struct journal *j)
{
	if (!j->failing || j->owed_head || j->finish_error)
		return;
	j->failing = false;
	j->cleared_ns = clock_wall_ns();
	log_info("journal %s: writing again after %" PRIu64 " failed operations (%s: %s)", j->dir,
		 j->episode_failures, j->last_error_what, strerror(-j->last_error));
}

void journal_backing_failed(struct journal *j, int err)
{
	pthread_mutex_lock(&j->lock);
	journal_fail_locked(j, err, "writing to an image's backing file");
	pthread_mutex_unlock(&j->lock);
}

/* After a failed write at s->bytes: cuts what may have landed, so that the
 * segment ends at its last record.  If the truncate fails too, the next
 * record (or trailer) is written over those bytes, and the sealer cuts the
 * file at its end. */
static void undo_tail_locked(struct segfile *s)
{
	if (aimfs_io.ftruncate_fn(s->fd, (off_t)s->bytes) < 0)
		s->cut = true;
	else if (s->old_end > s->bytes)
		s->old_end = s->bytes;
}

/*
 * Zeros that complete the last page a write into a recycled file ends in.
 * Records are not page-aligned, so a record ends inside a page the next one
 * begins in.  Where that page is an old segment's and has left the page
 * cache (retain= kept it for hours, or a long backlog), the kernel must read
 * it from the disk before it can take part of a page: one synchronous read
 * per record, under the journal lock.  Written whole, the page needs no old
 * bytes, and the next record finds it cached.  Only over the old file's
 * bytes: past them a page holds nothing to read, and padding there would
 * allocate.  What lies past the last record is a torn tail to recovery,
 * old bytes or zeros alike, and the sealer cuts it.
 */
static const uint8_t page_of_zeros[PAGE_BYTES];

static size_t padding(const struct segfile *s, uint64_t end)
{
	uint64_t page_end = (end + PAGE_BYTES - 1) & ~(uint64_t)(PAGE_BYTES - 1);

	if (!s->recycled || end >= s->old_end)
		return 0;
	return (size_t)((page_end < s->old_end ? page_end : s->old_end) - end);
}

/* ---- recycling pruned segment files ---- */

/* Only the transport's pruning (one at a time) fills slots; the write path
 * only empties them, so an empty slot found here stays empty. */
bool journal_recycle(struct journal *j, uint64_t number)
{
	char from[SEG_FILE_NAME_LEN + 8], to[SEG_FILE_NAME_LEN + 8];
	int i = 0;

	while (i < RECYCLE_SLOTS && atomic_load(&j->free_files[i]) != 0)
		i++;
	if (i == RECYCLE_SLOTS)
		return false;
	seg_file_name(number, SEG_FILE_SUFFIX, from);
	seg_file_name(number, SEG_FREE_SUFFIX, to);
	if (aimfs_io.renameat_fn(j->dirfd, from, j->dirfd, to) < 0)
		return false;
	atomic_store(&j->free_files[i], number);
	return true;
}

/*
 * Takes a free file for segment file name (NNN.open): writes the new
 * header over the old one *before* the rename, so that NNN.open never
 * holds another segment's header; the old records after it fail the new
 * check chain, which recovery treats as a torn tail, and sealing cuts
 * them.  Returns the fd with s->recycled and s->old_end set, or -1 (the
 * caller creates a new file).
 */
static int reuse_free_file(struct journal *j, struct segfile *s, const char *name,
			   const uint8_t *hdr, size_t hs)
{
	char old[SEG_FILE_NAME_LEN + 8];

	for (int i = 0; i < RECYCLE_SLOTS; i++) {
		uint64_t n = atomic_exchange(&j->free_files[i], 0);
		struct stat st;
		int fd;

		if (!n)
			continue;
		seg_file_name(n, SEG_FREE_SUFFIX, old);
		fd = openat(j->dirfd, old, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd >= 0 && fstat(fd, &st) == 0) {
			s->recycled = true;
			s->old_end = (uint64_t)st.st_size;
			if (pwrite_all(fd, (struct iovec[]){ { (void *)hdr, hs },
							     { (void *)page_of_zeros,
							       padding(s, hs) } }, 2, 0) == 0 &&
			    aimfs_io.renameat_fn(j->dirfd, old, j->dirfd, name) == 0)
				return fd;
			s->recycled = false;
		}
		if (fd >= 0)
			close(fd);
		unlinkat(j->dirfd, old, 0);
	}
	return -1;
}

/* Removes the free files at unmount (recovery removes any a crash left). */
static void drop_free_files(struct journal *j)
{
	char name[SEG_FILE_NAME_LEN + 8];

	for (int i = 0; i < RECYCLE_SLOTS; i++) {
		uint64_t n = atomic_exchange(&j->free_files[i], 0);

		if (!n)
			continue;
		seg_file_name(n, SEG_FREE_SUFFIX, name);
		unlinkat(j->dirfd, name, 0);
	}
}

int journal_ensure_open_locked(struct journal *j)
{
	struct seg_header h = { 0 };
	struct seg_image *table = NULL;
	struct segfile *s;
	char name[SEG_FILE_NAME_LEN + 8];
	uint8_t *buf;
	size_t hs;
	int fd, r;

	if (j->open)
		return 0;
	if (j->nlive) {
		table = calloc(j->nlive, sizeof *table);
		if (!table)
			return -ENOMEM;
	}
	for (size_t i = 0; i < j->nlive; i++) {
		table[i].id = j->live[i]->id;
		table[i].name = j->live[i]->name;
		table[i].name_len = (uint16_t)strlen(j->live[i]->name);
	}
	memcpy(h.group, j->group, 16);
	h.number = j->next_segment;
	h.first_lsn = j->next_lsn;
	h.created_ns = clock_wall_ns();
	h.image_count = (uint32_t)j->nlive;
	h.images = table;
	hs = seg_header_size(&h);
	buf = malloc(hs);
	s = calloc(1, sizeof *s);
	if (!buf || !s) {
		free(table);
		free(buf);
		free(s);
		return -ENOMEM;
	}
	s->prev_check = seg_header_encode(&h, buf);
	free(table);
	seg_file_name(h.number, SEG_OPEN_SUFFIX, name);
	fd = reuse_free_file(j, s, name, buf, hs);
	if (fd >= 0) {
		free(buf);
		j->recycled++;
		goto opened;
	}
	fd = openat(j->dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (fd < 0) {
		r = -errno;
		free(buf);
		free(s);
		return journal_fail_locked(j, r, "creating a segment");
	}
	r = pwrite_all(fd, &(struct iovec){ buf, hs }, 1, 0);
	free(buf);
	if (r < 0) {
		close(fd);
		unlinkat(j->dirfd, name, 0);
		free(s);
		return journal_fail_locked(j, r, "writing a segment's header");
	}
opened:
	atomic_fetch_add(&j->disk_bytes, hs);
	s->name_unsynced = true;
	s->fd = fd;
	s->number = h.number;
	s->first_lsn = h.first_lsn;
	s->created_ns = h.created_ns;
	s->bytes = hs;
	s->refs = 1;
	j->open = s;
	j->next_segment++;
	return 0;
}

int journal_append_locked(struct journal *j, struct seg_record *r)
{
	uint8_t hdr[SEG_RECORD_HEADER];
	struct segfile *s;
	uint64_t check;
	int ret;

	ret = journal_ensure_open_locked(j);
	if (ret < 0)
		return ret;
	s = j->open;
	r->lsn = j->next_lsn;
	r->time_ns = clock_wall_ns();
	j->last_append_ns = r->time_ns;
	check = seg_record_encode(r, s->prev_check, hdr);
	ret = pwrite_all(s->fd, (struct iovec[]){ { hdr, sizeof hdr },
						 { (void *)r->payload, r->payload_len },
						 { (void *)page_of_zeros,
						   padding(s, s->bytes + sizeof hdr + r->payload_len) } },
			 3, s->bytes);
	if (ret < 0) {
		/* Nothing of it counts: the LSN goes to the next record. */
		undo_tail_locked(s);
		return journal_fail_locked(j, ret, "appending a record");
	}
	atomic_fetch_add(&j->disk_bytes, SEG_RECORD_HEADER + r->payload_len);
	s->prev_check = check;
	s->bytes += SEG_RECORD_HEADER + r->payload_len;
	s->records++;
	j->next_lsn++;
	j->records++;
	j->bytes += SEG_RECORD_HEADER + r->payload_len;
	if (j->failing)
		journal_healthy_locked(j);
	/* A seal that fails leaves the segment open; this record is safe, and
	 * the next one tries to seal again. */
	if (s->bytes >= j->cfg.segment_size)
		journal_seal_locked(j);
	else if (s->bytes - s->flushed >= WRITEBACK_STEP)
		pthread_cond_signal(&j->wake); /* the sealer starts writeback */
	return 0;
}

/* Highest LSN such that every record up to it has reached the backing files. */
static uint64_t backing_lsn_locked(struct journal *j)
{
	uint64_t low = j->next_lsn;

	/* A record whose correction is owed is not on the backing file. */
	if (j->owed_lsn && j->owed_lsn < low)
		low = j->owed_lsn;
	for (unsigned i = 0; i < j->ninflight; i++) {
		uint64_t v = atomic_load_explicit(&j->inflight[i], memory_order_acquire);

		if (v && v < low)
			low = v;
	}
	return low - 1;
}

int journal_seal_locked(struct journal *j)
{
	struct segfile *s = j->open;
	struct seg_trailer t;
	uint8_t buf[SEG_TRAILER_SIZE];
	int r;

	if (!s)
		return 0;
	t.count = s->records;
	t.last_lsn = s->first_lsn + s->records - 1;
	t.backing_lsn = backing_lsn_locked(j);
	t.sealed_ns = clock_wall_ns();
	s->digest = seg_trailer_encode(&t, s->prev_check, buf);
	r = pwrite_all(s->fd, &(struct iovec){ buf, sizeof buf }, 1, s->bytes);
	if (r < 0) {
		/* Still open: the next record, or the sealer after RETRY_NS,
		 * seals it (a trailer is written over what landed of this one). */
		undo_tail_locked(s);
		j->seal_retry_ns = clock_mono_ns() + RETRY_NS;
		return journal_fail_locked(j, r, "sealing a segment");
	}
	if (j->failing)
		journal_healthy_locked(j);
	atomic_fetch_add(&j->disk_bytes, sizeof buf);
	s->backing_lsn = t.backing_lsn;
	s->bytes += sizeof buf;
	s->sealed = true;
	j->open = NULL;
	j->sealed_segment = s->number;
	if (j->queue_tail)
		j->queue_tail->next = s;
	else
		j->queue_head = s;
	j->queue_tail = s;
	pthread_cond_broadcast(&j->wake);
	return 0;
}

/* ---- data records ---- */

static int try_claim(struct journal *j)
{
	for (unsigned i = 0; i < j->ninflight; i++) {
		uint64_t zero = 0;

		if (atomic_compare_exchange_strong(&j->inflight[i], &zero, SLOT_CLAIMED))
			return (int)i;
	}
	return -1;
}

/*
 * A slot of the in-flight table, taken before the journal lock; the record
 * gives it its LSN under the lock.  A write is never journaled untracked:
 * if every slot is taken (more threads journal data than the table was
 * sized for) it waits for journal_done to free one.
 */
static int claim_slot(struct journal *j)
{
	int i = try_claim(j);

	if (i >= 0)
		return i;
	pthread_mutex_lock(&j->slot_lock);
	atomic_fetch_add(&j->slot_waiters, 1);
	while ((i = try_claim(j)) < 0)
		pthread_cond_wait(&j->slot_freed, &j->slot_lock);
	atomic_fetch_sub(&j->slot_waiters, 1);
	pthread_mutex_unlock(&j->slot_lock);
	return i;
}

static void free_slot(struct journal *j, int i)
{
	atomic_store(&j->inflight[i], 0);
	if (atomic_load(&j->slot_waiters)) {
		pthread_mutex_lock(&j->slot_lock);
		pthread_cond_broadcast(&j->slot_freed);
		pthread_mutex_unlock(&j->slot_lock);
	}
}

/*
 * overflow=block: a data write waits while the journal is at its limit, until
 * the transport prunes acknowledged segments.  Namespace and barrier records
 * never wait (they are tiny, and some are made under the namespace lock).
 */
/* Set while this thread journals what a backing file really holds: that
 * keeps the journal true and never waits for journal space. */
static __thread bool telling_truth;

static void wait_for_space(struct journal *j, uint64_t need)
{
	/* overflow=track: never wait; the resync engine relieves the journal */
	if (!j->cfg.enforce_max || !j->cfg.overflow_block || telling_truth ||
	    atomic_load(&j->disk_bytes) + need <= j->cfg.journal_max)
		return;
	pthread_mutex_lock(&j->space_lock);
	if (atomic_load(&j->disk_bytes) + need > j->cfg.journal_max) {
		j->writes_waiting++;
		if (j->waits++ == 0)
			log_info("journal %s reached journal_max; writes wait for the destinations"
				 " to catch up", j->dir);
		while (atomic_load(&j->disk_bytes) + need > j->cfg.journal_max &&
		       atomic_load(&j->disk_bytes) > 0 && !j->stopping)
			pthread_cond_wait(&j->space_cond, &j->space_lock);
		j->writes_waiting--;
	}
	pthread_mutex_unlock(&j->space_lock);
}

void journal_space_freed(struct journal *j, uint64_t bytes)
{
	pthread_mutex_lock(&j->space_lock);
	atomic_fetch_sub(&j->disk_bytes, bytes);
	pthread_cond_broadcast(&j->space_cond);
	pthread_mutex_unlock(&j->space_lock);
}

/* whole: the record may change the image anywhere (a truncate). */
static int data_record(struct journal *j, struct image *im, struct seg_record *r, bool whole,
		       struct journal_ticket *t)
{
	int ret = 0;

	t->lsn = 0;
	t->slot = -1;
	t->al.n = 0;
	wait_for_space(j, SEG_RECORD_HEADER + r->payload_len);
	r->payload_hash = seg_payload_hash(r->payload, r->payload_len);
	/* Before the backing file can hold any of it, the range is in the
	 * activity log's durable set: a power cut that keeps the bytes and
	 * loses this record is then found at the next mount. */
	ret = actlog_touch(j->al, im->id, r->offset, r->length, whole, &t->al);
	if (ret < 0)
		return ret;
	t->slot = claim_slot(j);
	pthread_mutex_lock(&j->lock);
	if (!im->live) {
		/* unlinked but still open: nothing to mirror */
		pthread_mutex_unlock(&j->lock);
		journal_done(j, t);
		return 0;
	}
	r->image = im->id;
	ret = journal_ensure_open_locked(j);
	if (ret == 0) {
		atomic_store(&j->inflight[t->slot], j->next_lsn);
		ret = journal_append_locked(j, r);
		if (ret == 0)
			t->lsn = r->lsn;
	}
	pthread_mutex_unlock(&j->lock);
	if (ret < 0)
		journal_done(j, t);
	return ret;
}

int journal_write(struct journal *j, struct image *im, uint64_t off, const void *buf,
		  size_t len, struct journal_ticket *t)
{
	struct seg_record r = { .type = SEG_WRITE, .offset = off, .length = len,
				.payload = buf, .payload_len = (uint32_t)len };

	if (len == 0) {
		t->lsn = 0;
		t->slot = -1;
		t->al.n = 0;
		return 0;
	}
	return data_record(j, im, &r, false, t);
}

int journal_zero(struct journal *j, struct image *im, uint64_t off, uint64_t len,
		 bool punch, bool keep_size, struct journal_ticket *t)
{
	struct seg_record r = { .type = SEG_ZERO, .offset = off, .length = len,
				.flags = (uint8_t)((punch ? SEG_F_PUNCH : 0) |
						   (keep_size ? SEG_F_KEEP_SIZE : 0)) };

	return data_record(j, im, &r, false, t);
}

int journal_truncate(struct journal *j, struct image *im, uint64_t size,
		     struct journal_ticket *t)
{
	struct seg_record r = { .type = SEG_TRUNCATE, .offset = size };

	return data_record(j, im, &r, true, t);
}

int journal_alloc(struct journal *j, struct image *im, uint64_t off, uint64_t len,
		  bool keep_size, struct journal_ticket *t)
{
	struct seg_record r = { .type = SEG_ALLOC, .offset = off, .length = len,
				.flags = keep_size ? SEG_F_KEEP_SIZE : 0 };

	return data_record(j, im, &r, false, t);
}

void journal_done(struct journal *j, struct journal_ticket *t)
{
	if (t->slot >= 0)
		free_slot(j, t->slot);
	t->slot = -1;
	actlog_release(j->al, &t->al);
}

/* Journals the current content of [off, off+len) of the file open as fd
 * (reading through a fresh, buffered descriptor: fd may be O_DIRECT). */
static int journal_content(struct journal *j, struct image *im, int fd, uint64_t off,
			   uint64_t len)
{
	char path[64];
	struct journal_ticket t;
	char *buf;
	int rfd, r = 0;

	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	rfd = open(path, O_RDONLY | O_CLOEXEC);
	if (rfd < 0)
		return -errno;
	buf = malloc(ADOPT_CHUNK);
	if (!buf) {
		close(rfd);
		return -ENOMEM;
	}
	while (len && !r) {
		/* Skip holes: they are zeros already after the CREATE/TRUNCATE. */
		off_t data = lseek(rfd, (off_t)off, SEEK_DATA);
		off_t hole;
		ssize_t n;

		if (data < 0 || (uint64_t)data >= off + len)
			break;
		if ((uint64_t)data > off) {
			len -= (uint64_t)data - off;
			off = (uint64_t)data;
		}
		hole = lseek(rfd, (off_t)off, SEEK_HOLE);
		if (hole < 0)
			hole = (off_t)(off + len);
		n = (ssize_t)((uint64_t)hole - off < ADOPT_CHUNK ? (uint64_t)hole - off : ADOPT_CHUNK);
		if ((uint64_t)n > len)
			n = (ssize_t)len;
		n = fileio_pread_full(NULL, rfd, buf, (size_t)n, off);
		if (n < 0) {
			r = (int)n;
			break;
		}
		if (n == 0)
			break;
		r = journal_write(j, im, off, buf, (size_t)n, &t);
		journal_done(j, &t);
		off += (uint64_t)n;
		len -= (uint64_t)n;
	}
	free(buf);
	close(rfd);
	return r;
}

int journal_record_truth(struct journal *j, struct image *im, int fd, uint64_t off,
			 uint64_t len)
{
	struct journal_ticket t;
	struct stat st;
	bool was = telling_truth;
	int r;

	if (fstat(fd, &st) < 0)
		return -errno;
	telling_truth = true;
	r = journal_truncate(j, im, (uint64_t)st.st_size, &t);
	journal_done(j, &t);
	if (r == 0 && len && off < (uint64_t)st.st_size) {
		if (len > (uint64_t)st.st_size - off)
			len = (uint64_t)st.st_size - off;
		r = journal_zero(j, im, off, len, false, true, &t);
		journal_done(j, &t);
		if (r == 0)
			r = journal_content(j, im, fd, off, len);
	}
	telling_truth = was;
	return r;
}

/* ---- owed records ----
 *
 * What happened to the backing tree that the journal could not say at
 * once, because it could not append (a full disk, mostly):
 *
 *  - TRUTH: a backing write failed after its record was journaled, and
 *    the records of what the file really holds could not be appended.
 *    Until they are, the stale record's LSN holds the backing watermark
 *    (backing_lsn_locked), so no trailer claims the file holds it: a crash
 *    or an unmount before then makes the next mount redo the record and
 *    everything after it, after which the file holds what the journal
 *    says.  A replica that applies the stale record meanwhile shows the
 *    failed write as done, which the writer cannot tell from a crash state
 *    (a write that failed leaves its range unspecified); the records of
 *    the truth, in order, bring it back to the source.
 *  - UNLINK, RENAME, RENAME_DIR, RMDIR: the syscall was done and cannot
 *    be undone; the record is journaled as soon as it can be.  (A create
 *    or mkdir that cannot be journaled is undone instead.)
 *
 * Each is journaled by journal_settle, in order, under the namespace lock,
 * before the next operation that journals: one that cannot settle fails
 * with the same errno.  So the list holds at most what was in flight when
 * the disk filled, and records never overtake an owed namespace change.
 */
enum owed_kind { OWED_TRUTH, OWED_UNLINK, OWED_RENAME, OWED_RENAME_DIR, OWED_RMDIR };

struct owed {
	enum owed_kind kind;
	struct image *im;        /* TRUTH, UNLINK, RENAME: a reference */
	struct image *replaced;  /* RENAME: a reference, or NULL */
	int fd;                  /* TRUTH: the backing file (a dup), or -1 */
	uint64_t off, len, lsn;  /* TRUTH: the range and the stale record's LSN */
	char *a, *b;             /* RENAME: new name; RENAME_DIR: old, new; RMDIR: name */
	struct owed *next;
};

static void owed_free(struct journal *j, struct owed *e)
{
	if (!e)
		return;
	if (e->fd >= 0)
		close(e->fd);
	journal_image_put(j, e->im);
	journal_image_put(j, e->replaced);
	free(e->a);
	free(e->b);
	free(e);
}

static void owe_locked(struct journal *j, struct owed *e, int err, const char *what)
{
	if (j->owed_tail)
		j->owed_tail->next = e;
	else
		j->owed_head = e;
	j->owed_tail = e;
	j->nowed++;
	atomic_store(&j->owes, true);
	if (e->kind == OWED_TRUTH && e->lsn && (!j->owed_lsn || e->lsn < j->owed_lsn))
		j->owed_lsn = e->lsn;
	journal_fail_locked(j, err, what);
}

/* A new owed entry with references on im and replaced (NULL if out of memory). */
static struct owed *owed_new(struct journal *j, enum owed_kind kind, struct image *im,
			     struct image *replaced, const char *a, const char *b)
{
	struct owed *e = calloc(1, sizeof *e);

	if (!e)
		return NULL;
	e->kind = kind;
	e->fd = -1;
	e->a = a ? strdup(a) : NULL;
	e->b = b ? strdup(b) : NULL;
	if ((a && !e->a) || (b && !e->b)) {
		owed_free(j, e);
		return NULL;
	}
	pthread_mutex_lock(&j->lock);
	if (im) {
		im->refs++;
		e->im = im;
	}
	if (replaced) {
		replaced->refs++;
		e->replaced = replaced;
	}
	pthread_mutex_unlock(&j->lock);
	return e;
}

int journal_correct(struct journal *j, struct image *im, int fd, uint64_t off, uint64_t len,
		    const struct journal_ticket *t)
{
	int r = journal_record_truth(j, im, fd, off, len);
	struct owed *e;

	if (r == 0) {
		log_info("image %s: recorded its true content at %" PRIu64 "+%" PRIu64
			 " after a failed backing write", im->name, off, len);
		return 0;
	}
	e = owed_new(j, OWED_TRUTH, im, NULL, NULL, NULL);
	if (e) {
		e->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
		e->off = off;
		e->len = len;
		e->lsn = t ? t->lsn : 0;
	}
	pthread_mutex_lock(&j->lock);
	if (e)
		owe_locked(j, e, r, "recording what an image holds after a failed write");
	else
		log_error("journal %s: cannot record the true content of %s after a failed write,"
			  " nor remember to: %s; the next mount redoes it", j->dir, im->name,
			  strerror(-r));
	pthread_mutex_unlock(&j->lock);
	return r;
}

/* Waits until segment need is durable; 0, or the error that keeps the
 * sealer from finishing segments (it retries; the next caller waits again). */
static int wait_durable_locked(struct journal *j, uint64_t need)
{
	while (j->durable_segment < need && !j->finish_error)
		pthread_cond_wait(&j->durable, &j->lock);
	return j->durable_segment < need ? j->finish_error : 0;
}

/*
 * A sync of segment s failed with err.  A failed fsync may drop the dirty
 * pages it could not write while marking them clean, so that the next sync
 * of the same file says nothing ("fsyncgate"): s must not count as durable
 * by a later sync of it.  It is sealed now, and the sealer reads it back,
 * checks it and writes it again before its own fsync (sealer.c).  Returns
 * err.
 */
static int sync_failed(struct journal *j, struct segfile *s, int err)
{
	pthread_mutex_lock(&j->lock);
	if (j->durable_segment < s->number) {
		s->verify = true;
		if (j->open == s)
			journal_seal_locked(j);
	}
	journal_fail_locked(j, err, "syncing the journal");
	pthread_mutex_unlock(&j->lock);
	return err;
}

/*
 * Makes the open segment s durable: its bytes and its name.  fdatasync
 * alone does not commit a rename of a free file that is written over
 * (nothing of its size or allocation changes), and a segment recovery
 * finds under its old name is thrown away with the records an fsync was
 * answered on.  So the first sync of each open segment syncs the
 * directory too.
 */
static int sync_open_segment(struct journal *j, struct segfile *s)
{
	bool name;
	int r;

	if (aimfs_io.fdatasync_fn(s->fd) < 0)
		return sync_failed(j, s, -errno);
	pthread_mutex_lock(&j->lock);
	name = s->name_unsynced;
	pthread_mutex_unlock(&j->lock);
	if (!name)
		return 0;
	r = aimfs_io.fsync_fn(j->dirfd) < 0 ? -errno : 0;
	pthread_mutex_lock(&j->lock);
	if (r == 0)
		s->name_unsynced = false;
	else
		journal_fail_locked(j, r, "syncing the journal's directory");
	pthread_mutex_unlock(&j->lock);
	return r;
}

int journal_barrier(struct journal *j, struct image *im, bool durable)
{
	struct seg_record r = { .type = SEG_FLUSH };
	struct segfile *s = NULL;
	uint64_t need;
	int ret;

	r.payload_hash = seg_payload_hash(NULL, 0);
	pthread_mutex_lock(&j->lock);
	if (im && !im->live)
		im = NULL;
	r.image = im ? im->id : 0;
	ret = journal_append_locked(j, &r);
	/* An open segment whose sync failed cannot be trusted to a sync of it:
	 * sealed, the sealer makes it durable (sync_failed). */
	if (ret == 0 && durable && j->open && j->open->verify && journal_seal_locked(j) < 0)
		ret = j->last_error;
	if (ret == 0 && durable) {
		s = j->open;
		if (s)
			s->refs++;
		/* Every segment before the open one must be durable too. */
		need = s ? s->number - 1 : j->sealed_segment;
		ret = wait_durable_locked(j, need);
	}
	pthread_mutex_unlock(&j->lock);
	if (s) {
		if (ret == 0)
			ret = sync_open_segment(j, s);
		pthread_mutex_lock(&j->lock);
		segfile_put_locked(j, s);
		pthread_mutex_unlock(&j->lock);
	}
	return ret;
}

/* ---- namespace ---- */

void journal_stamp_untracked(struct journal *j)
{
	/* The lock file: only a mount writes it.  A stamp that fails costs
	 * at most a comparison of the image after a crash, never a miss. */
	(void)futimens(j->lock_fd, NULL);
}

void journal_ns_lock(struct journal *j)
{
	pthread_mutex_lock(&j->ns_lock);
}

void journal_ns_unlock(struct journal *j)
{
	pthread_mutex_unlock(&j->ns_lock);
}

static int name_record_locked(struct journal *j, uint8_t type, uint32_t image, uint32_t aux,
			      uint8_t flags, const char *a, const char *b)
{
	size_t la = strlen(a), lb = b ? strlen(b) : 0;
	char *payload = malloc(la + lb + 1);
	struct seg_record r = { .type = type, .image = image, .aux = aux, .flags = flags };
	int ret;

	if (!payload)
		return -ENOMEM;
	memcpy(payload, a, la);
	if (b)
		memcpy(payload + la, b, lb);
	r.payload = payload;
	r.payload_len = (uint32_t)(la + lb);
	r.payload_hash = seg_payload_hash(payload, la + lb);
	ret = journal_append_locked(j, &r);
	free(payload);
	return ret;
}

/* CREATE carries the source inode number: recovery tells a renamed image
 * from a new one by it. */
static int create_record_locked(struct journal *j, struct image *im, mode_t mode)
{
	size_t len = strlen(im->name);
	struct seg_record r = { .type = SEG_CREATE, .image = im->id, .aux = mode & 07777,
				.offset = (uint64_t)im->ino, .payload = im->name,
				.payload_len = (uint32_t)len };

	r.payload_hash = seg_payload_hash(im->name, len);
	return journal_append_locked(j, &r);
}

int journal_create(struct journal *j, const char *name, mode_t mode, dev_t dev, ino_t ino,
		   struct image **out)
{
	struct image *im, *stale;
	int r;

	if (!seg_name_valid(name, strlen(name))) {
		log_warn("file %s has a name that cannot be mirrored", name);
		return -EINVAL;
	}
	pthread_mutex_lock(&j->lock);
	r = journal_ensure_open_locked(j);
	if (r < 0)
		goto out;
	/* A registry entry for the same inode or name is stale (the file was
	 * removed behind our back and the inode number reused). */
	stale = registry_find_ino(j, dev, ino);
	if (!stale)
		stale = registry_find_name(j, name);
	if (stale) {
		r = name_record_locked(j, SEG_UNLINK, stale->id, 0, 0, stale->name, NULL);
		if (r < 0)
			goto out;
		registry_remove(j, stale);
	}
	im = registry_add(j, j->next_image_id, name, dev, ino);
	if (!im) {
		r = -ENOMEM;
		goto out;
	}
	r = create_record_locked(j, im, mode);
	if (r < 0) {
		registry_remove(j, im);
		goto out;
	}
	im->created_cp = j->cp_begun;
	im->refs++;
	*out = im;
out:
	pthread_mutex_unlock(&j->lock);
	return r;
}

/* ---- adoption ----
 *
 * Adopting a file journals its CREATE, its size, then its content chunk by
 * chunk.  A crash in between would leave an image that the next recovery
 * matches by inode number, with only part of its content journaled, and
 * nothing would ever journal the rest.  So an adoption is marked first: a
 * file ADOPT_MARK<ino> in the journal directory holding the file's path,
 * durable before the CREATE can be, removed once the content is journaled.
 * Recovery journals the whole content again of an image it finds marked
 * (journal_finish_adoptions).  A journal that fails meanwhile (a full
 * disk) owes the content instead (journal_correct).
 */
static void adopt_mark_name(uint64_t ino, char *out, size_t len)
{
	snprintf(out, len, ADOPT_MARK "%" PRIu64, ino);
}

static int adopt_mark(struct journal *j, const char *name, uint64_t ino)
{
	char mark[64];
	int fd, r = 0;

	adopt_mark_name(ino, mark, sizeof mark);
	fd = openat(j->dirfd, mark, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	if (fileio_write_full(fd, name, strlen(name)) < 0 || aimfs_io.fsync_fn(fd) < 0)
		r = -EIO;
	close(fd);
	if (r == 0 && aimfs_io.fsync_fn(j->dirfd) < 0)
		r = -errno;
	if (r < 0)
		unlinkat(j->dirfd, mark, 0);
	return r;
}

static void adopt_unmark(struct journal *j, uint64_t ino)
{
	char mark[64];

	adopt_mark_name(ino, mark, sizeof mark);
	unlinkat(j->dirfd, mark, 0); /* if a crash brings it back: one more copy */
}

int journal_adopt(struct journal *j, const char *name, int fd, const struct stat *st,
		  struct image **out)
{
	struct journal_ticket t;
	struct image *im;
	int r;

	r = adopt_mark(j, name, (uint64_t)st->st_ino);
	if (r < 0) {
		log_error("journal %s: cannot mark the adoption of %s: %s", j->dir, name,
			  strerror(-r));
		return r;
	}
	r = journal_create(j, name, st->st_mode, st->st_dev, st->st_ino, &im);
	if (r < 0) {
		adopt_unmark(j, (uint64_t)st->st_ino);
		return r;
	}
	r = journal_truncate(j, im, (uint64_t)st->st_size, &t);
	journal_done(j, &t);
	if (r == 0)
		r = journal_content(j, im, fd, 0, (uint64_t)st->st_size);
	if (r < 0) {
		/* The image is there now: what it holds is journaled later. */
		journal_correct(j, im, fd, 0, (uint64_t)st->st_size, NULL);
		journal_image_put(j, im);
		return r;
	}
	/* the mark goes once what it guards is durable */
	if (journal_sync_all(j) == 0)
		adopt_unmark(j, (uint64_t)st->st_ino);
	log_info("image %s appeared outside the mount; journaled its %" PRIu64 " bytes",
		 name, (uint64_t)st->st_size);
	*out = im;
	return 0;
}

/* The live image whose file has inode number ino: the one named path
 * first (two filesystems in the backing tree may share a number). */
static struct image *image_of_ino(struct journal *j, uint64_t ino, const char *path)
{
	struct image *im = registry_find_name(j, path);

	if (im && (uint64_t)im->ino == ino)
		return im;
	for (size_t i = 0; i < j->nlive; i++)
		if ((uint64_t)j->live[i]->ino == ino)
			return j->live[i];
	return NULL;
}

/* Recovery, once the registry is the tree's: see "adoption" above.  Marks
 * are few (an adoption a crash cut short): each goes once what it guards
 * is durable. */
int journal_finish_adoptions(struct journal *j)
{
	int dfd = openat(j->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), r = 0;
	struct dirent *de;
	DIR *d;

	if (dfd < 0 || !(d = fdopendir(dfd))) {
		r = -errno;
		if (dfd >= 0)
			close(dfd);
		return r;
	}
	while (r == 0 && (de = readdir(d))) {
		char path[SEG_NAME_MAX + 2] = "", *end;
		struct image *im;
		uint64_t ino;
		ssize_t n;
		int mfd, ifd;

		if (strncmp(de->d_name, ADOPT_MARK, strlen(ADOPT_MARK)) != 0)
			continue;
		ino = strtoull(de->d_name + strlen(ADOPT_MARK), &end, 10);
		if (*end || !ino)
			continue;
		mfd = openat(j->dirfd, de->d_name, O_RDONLY | O_CLOEXEC);
		n = mfd >= 0 ? read(mfd, path, sizeof path - 1) : -1;
		if (mfd >= 0)
			close(mfd);
		path[n > 0 ? n : 0] = '\0';
		im = image_of_ino(j, ino, path);
		ifd = im ? openat(j->cfg.backing_fd, im->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
			 : -1;
		if (ifd >= 0) {
			log_info("recovery: the adoption of %s was cut short; journaling all of its"
				 " content again", im->name);
			r = journal_record_truth(j, im, ifd, 0, UINT64_MAX);
			close(ifd);
		}
		if (r == 0)
			r = journal_sync_all(j);
		if (r == 0)
			unlinkat(j->dirfd, de->d_name, 0);
	}
	closedir(d);
	return r;
}

/* The records of a namespace change that was done (journal lock held). */
static int unlink_locked(struct journal *j, struct image *im)
{
	int r = 0;

	if (im->live) {
		r = name_record_locked(j, SEG_UNLINK, im->id, 0, 0, im->name, NULL);
		if (r == 0)
			registry_remove(j, im);
	}
	return r;
}

static int rename_locked(struct journal *j, struct image *im, const char *new_name,
			 struct image *replaced)
{
	int r = journal_ensure_open_locked(j);

	if (r == 0 && im->live) {
		size_t ol = strlen(im->name);

		if (replaced && replaced == im)
			replaced = NULL;
		r = name_record_locked(j, SEG_RENAME, im->id, (uint32_t)ol,
				       replaced && replaced->live ? SEG_F_REPLACE : 0,
				       im->name, new_name);
		if (r == 0) {
			if (replaced)
				registry_remove(j, replaced);
			r = registry_rename(j, im, new_name);
		}
	} else if (r == 0 && replaced && replaced->live) {
		/* a non-image (or dead image) replaced an image */
		r = name_record_locked(j, SEG_UNLINK, replaced->id, 0, 0, replaced->name, NULL);
		if (r == 0)
			registry_remove(j, replaced);
	}
	return r;
}

static int rename_dir_locked(struct journal *j, const char *old_name, const char *new_name)
{
	/* A record the decoder refuses would make the whole segment invalid. */
	int r = registry_rename_dir_check(j, old_name, new_name);

	if (r == 0)
		r = name_record_locked(j, SEG_RENAME, 0, (uint32_t)strlen(old_name), SEG_F_DIR,
				       old_name, new_name);
	if (r == 0)
		r = registry_rename_dir(j, old_name, new_name);
	return r;
}

static int rmdir_locked(struct journal *j, const char *name)
{
	return name_record_locked(j, SEG_RMDIR, 0, 0, 0, name, NULL);
}

/* A refusal of the names themselves, which no retry changes. */
static bool refused_names(int r)
{
	return r == -EINVAL || r == -ENAMETOOLONG;
}

/* The syscall was done but its record could not be appended (err): owe it.
 * Returns 0, or err if even that fails (then the next mount's recovery
 * reconciles the tree). */
static int owe_namespace(struct journal *j, int err, enum owed_kind kind, struct image *im,
			 struct image *replaced, const char *a, const char *b)
{
	struct owed *e = refused_names(err) ? NULL : owed_new(j, kind, im, replaced, a, b);

	if (!e)
		return err;
	pthread_mutex_lock(&j->lock);
	owe_locked(j, e, err, "journaling a namespace change");
	pthread_mutex_unlock(&j->lock);
	return 0;
}

int journal_unlink(struct journal *j, struct image *im)
{
	int r;

	pthread_mutex_lock(&j->lock);
	r = unlink_locked(j, im);
	pthread_mutex_unlock(&j->lock);
	return r < 0 ? owe_namespace(j, r, OWED_UNLINK, im, NULL, NULL, NULL) : 0;
}

int journal_rename(struct journal *j, struct image *im, const char *new_name,
		   struct image *replaced)
{
	int r;

	if (!seg_name_valid(new_name, strlen(new_name)))
		return -EINVAL;
	pthread_mutex_lock(&j->lock);
	r = rename_locked(j, im, new_name, replaced);
	pthread_mutex_unlock(&j->lock);
	return r < 0 ? owe_namespace(j, r, OWED_RENAME, im, replaced, new_name, NULL) : 0;
}

int journal_rename_dir(struct journal *j, const char *old_name, const char *new_name)
{
	int r;

	if (!seg_name_valid(old_name, strlen(old_name)) || !seg_name_valid(new_name, strlen(new_name)))
		return -EINVAL;
	pthread_mutex_lock(&j->lock);
	r = rename_dir_locked(j, old_name, new_name);
	pthread_mutex_unlock(&j->lock);
	return r < 0 ? owe_namespace(j, r, OWED_RENAME_DIR, NULL, NULL, old_name, new_name) : 0;
}

int journal_rename_dir_check(struct journal *j, const char *old_name, const char *new_name)
{
	int r;

	pthread_mutex_lock(&j->lock);
	r = registry_rename_dir_check(j, old_name, new_name);
	pthread_mutex_unlock(&j->lock);
	return r;
}

int journal_mkdir(struct journal *j, const char *name, mode_t mode)
{
	int r;

	if (!seg_name_valid(name, strlen(name)))
		return -EINVAL;
	pthread_mutex_lock(&j->lock);
	r = name_record_locked(j, SEG_MKDIR, 0, mode & 07777, 0, name, NULL);
	pthread_mutex_unlock(&j->lock);
	return r;
}

int journal_rmdir(struct journal *j, const char *name)
{
	int r;

	if (!seg_name_valid(name, strlen(name)))
		return -EINVAL;
	pthread_mutex_lock(&j->lock);
	r = rmdir_locked(j, name);
	pthread_mutex_unlock(&j->lock);
	return r < 0 ? owe_namespace(j, r, OWED_RMDIR, NULL, NULL, name, NULL) : 0;
}

/* ---- settling what is owed ---- */

/* Journals one owed entry.  Namespace lock held, nothing else. */
static int settle_one(struct journal *j, struct owed *e)
{
	struct range_held h;
	int r;

	switch (e->kind) {
	case OWED_TRUTH:
		if (e->fd < 0) {
			/* No descriptor was left to dup then: open it by name. */
			char name[SEG_NAME_MAX + 1];

			pthread_mutex_lock(&j->lock);
			snprintf(name, sizeof name, "%s", e->im->name);
			pthread_mutex_unlock(&j->lock);
			e->fd = openat(j->cfg.backing_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
			if (e->fd < 0)
				return e->im->live ? -errno : 0;
		}
		rangelock_acquire(&e->im->rl, &h, 0, RANGE_END);
		r = journal_record_truth(j, e->im, e->fd, e->off, e->len);
		rangelock_release(&e->im->rl, &h);
		if (r == 0)
			log_info("image %s: recorded its true content at %" PRIu64 "+%" PRIu64
				 ", owed since a failed backing write", e->im->name, e->off, e->len);
		return r;
	case OWED_UNLINK:
		pthread_mutex_lock(&j->lock);
		r = unlink_locked(j, e->im);
		pthread_mutex_unlock(&j->lock);
		return r;
	case OWED_RENAME:
		pthread_mutex_lock(&j->lock);
		r = rename_locked(j, e->im, e->a, e->replaced);
		pthread_mutex_unlock(&j->lock);
		return r;
	case OWED_RENAME_DIR:
		pthread_mutex_lock(&j->lock);
		r = rename_dir_locked(j, e->a, e->b);
		pthread_mutex_unlock(&j->lock);
		return r;
	case OWED_RMDIR:
		pthread_mutex_lock(&j->lock);
		r = rmdir_locked(j, e->a);
		pthread_mutex_unlock(&j->lock);
		return r;
	}
	return -EINVAL;
}

int journal_settle_locked(struct journal *j)
{
	for (;;) {
		struct owed *e;
		int r;

		/* Only a holder of the namespace lock takes entries off, so the
		 * head stays the head; others only append. */
		pthread_mutex_lock(&j->lock);
		e = j->owed_head;
		pthread_mutex_unlock(&j->lock);
		if (!e)
			return 0;
		r = settle_one(j, e);
		pthread_mutex_lock(&j->lock);
		if (r < 0 && !refused_names(r)) {
			journal_fail_locked(j, r, "journaling what is owed");
			pthread_mutex_unlock(&j->lock);
			return r;
		}
		if (r < 0)
			log_error("journal %s: an owed namespace record cannot be journaled any more"
				  " (%s); the next mount reconciles the tree", j->dir, strerror(-r));
		j->owed_head = e->next;
		if (!j->owed_head)
			j->owed_tail = NULL;
		j->nowed--;
		j->owed_lsn = 0;
		for (struct owed *o = j->owed_head; o; o = o->next)
			if (o->kind == OWED_TRUTH && o->lsn && (!j->owed_lsn || o->lsn < j->owed_lsn))
				j->owed_lsn = o->lsn;
		if (!j->owed_head) {
			atomic_store(&j->owes, false);
			journal_healthy_locked(j);
		}
		pthread_mutex_unlock(&j->lock);
		owed_free(j, e);
	}
}

int journal_settle(struct journal *j)
{
	int r;

	if (!journal_owes(j))
		return 0;
	journal_ns_lock(j);
	r = journal_settle_locked(j);
	journal_ns_unlock(j);
	return r;
}

bool journal_owes(struct journal *j)
{
	return atomic_load_explicit(&j->owes, memory_order_relaxed);
}

int journal_mark(struct journal *j, const char *label, uint64_t *lsn, uint64_t *segment,
		 uint64_t *time_ns)
{
	size_t len = strlen(label);
	struct seg_record r = { .type = SEG_MARK, .payload = label, .payload_len = (uint32_t)len };
	int ret;

	/* A label the decoder refuses would make the whole segment invalid. */
	if (!seg_mark_label_valid(label, len))
		return -EINVAL;
	r.payload_hash = seg_payload_hash(label, len);
	pthread_mutex_lock(&j->lock);
	/* The append may seal the segment when it fills it: ask first. */
	ret = journal_ensure_open_locked(j);
	if (ret == 0) {
		*segment = j->open->number;
		ret = journal_append_locked(j, &r);
		*lsn = r.lsn;
		*time_ns = r.time_ns;
	}
	pthread_mutex_unlock(&j->lock);
	return ret;
}

/* ---- registry access ---- */

struct image *journal_image_lookup(struct journal *j, dev_t dev, ino_t ino)
{
	struct image *im;

	pthread_mutex_lock(&j->lock);
	im = registry_find_ino(j, dev, ino);
	if (im)
		im->refs++;
	pthread_mutex_unlock(&j->lock);
	return im;
}

void journal_image_put(struct journal *j, struct image *im)
{
	if (!im)
		return;
	pthread_mutex_lock(&j->lock);
	registry_put(j, im);
	pthread_mutex_unlock(&j->lock);
}

uint32_t journal_image_id(const struct image *im)
{
	return im->id;
}

struct rangelock *journal_image_rangelock(struct image *im)
{
	return &im->rl;
}

void journal_stats(struct journal *j, struct journal_stats *s)
{
	pthread_mutex_lock(&j->lock);
	memcpy(s->group, j->group, 16);
	s->head_lsn = j->next_lsn - 1;
	s->open_segment = j->open ? j->open->number : 0;
	s->open_bytes = j->open ? j->open->bytes : 0;
	s->sealed_segment = j->sealed_segment;
	s->durable_segment = j->durable_segment;
	s->records = j->records;
	s->bytes = j->bytes;
	s->images = j->nlive;
	s->open_oldest_ns = j->open && j->open->records ? j->open->created_ns : 0;
	s->backing_lsn = j->durable_backing_lsn;
	s->recycled = j->recycled;
	s->failing = j->failing;
	s->last_error = j->last_error;
	snprintf(s->last_error_what, sizeof s->last_error_what, "%s", j->last_error_what);
	s->failed_ns = j->failed_ns;
	s->cleared_ns = j->cleared_ns;
	s->failures = j->failures;
	s->owed = j->nowed;
	pthread_mutex_unlock(&j->lock);
	actlog_stats(j->al, &s->al);
	s->journal_bytes = atomic_load(&j->disk_bytes);
	s->journal_max = j->cfg.journal_max;
	s->enforce_max = j->cfg.enforce_max;
	pthread_mutex_lock(&j->space_lock);
	s->writes_waiting = j->writes_waiting;
	s->waits = j->waits;
	pthread_mutex_unlock(&j->space_lock);
}

uint64_t journal_open_oldest_ns(struct journal *j)
{
	uint64_t v;

	pthread_mutex_lock(&j->lock);
	v = j->open && j->open->records ? j->open->created_ns : 0;
	pthread_mutex_unlock(&j->lock);
	return v;
}

void journal_durable_state(struct journal *j, uint64_t *segment, uint64_t *backing_lsn)
{
	pthread_mutex_lock(&j->lock);
	*segment = j->durable_segment;
	*backing_lsn = journal_prunable_lsn_locked(j, j->durable_backing_lsn);
	pthread_mutex_unlock(&j->lock);
}

uint64_t journal_prunable_lsn_locked(const struct journal *j, uint64_t backing_lsn)
{
	return backing_lsn < j->synced_backing_lsn ? backing_lsn : j->synced_backing_lsn;
}

/* Records have reached the backing files that no checkpoint synced yet. */
static bool backing_unsynced_locked(struct journal *j)
{
	return backing_lsn_locked(j) > j->synced_backing_lsn;
}

/*
 * Each image's write-back descriptor would keep a file removed behind the
 * mount's back allocated (an operator freeing space): each checkpoint
 * closes those of files with no link left.  The fstat and the close run
 * outside the journal lock (a close may free a big file).
 */
static void drop_removed_files(struct journal *j)
{
	struct image **ims;
	int *fds;
	size_t n = 0;

	pthread_mutex_lock(&j->lock);
	ims = calloc(j->nlive ? j->nlive : 1, sizeof *ims);
	fds = calloc(j->nlive ? j->nlive : 1, sizeof *fds);
	for (size_t i = 0; ims && fds && i < j->nlive; i++) {
		struct image *im = j->live[i];

		if (im->wb_fd < 0 || (fds[n] = dup(im->wb_fd)) < 0)
			continue;
		im->refs++;
		ims[n++] = im;
	}
	pthread_mutex_unlock(&j->lock);
	for (size_t i = 0; i < n; i++) {
		struct stat st;
		bool gone = fstat(fds[i], &st) == 0 && st.st_nlink == 0;

		close(fds[i]);
		fds[i] = -1;
		if (!gone)
			continue;
		pthread_mutex_lock(&j->lock);
		if (ims[i]->wb_fd >= 0) {
			fds[i] = ims[i]->wb_fd;
			ims[i]->wb_fd = WB_FD_GONE;
		}
		pthread_mutex_unlock(&j->lock);
		if (fds[i] >= 0)
			close(fds[i]);
	}
	pthread_mutex_lock(&j->lock);
	for (size_t i = 0; i < n; i++)
		registry_put(j, ims[i]);
	pthread_mutex_unlock(&j->lock);
	free(ims);
	free(fds);
}

uint64_t journal_checkpoint_begins(void *journal)
{
	struct journal *j = journal;
	uint64_t w;

	pthread_mutex_lock(&j->lock);
	w = backing_lsn_locked(j);
	j->cp_begun++; /* checkpoints run one at a time */
	pthread_mutex_unlock(&j->lock);
	drop_removed_files(j);
	return w;
}

/* How often the backing files are synced while written to: what the
 * journal keeps beyond the destinations' acknowledgements, and what a
 * power loss redoes.  Sooner when the journal fills (it prunes behind). */
#define SYNC_EVERY_NS 1000000000ull
#define SYNC_SOON_NS 200000000ull

bool journal_checkpoint_due(void *journal)
{
	struct journal *j = journal;
	uint64_t used = atomic_load(&j->disk_bytes), since;
	bool due;

	pthread_mutex_lock(&j->lock);
	since = clock_mono_ns() - j->synced_ns;
	due = backing_unsynced_locked(j) &&
	      (since >= SYNC_EVERY_NS ||
	       (since >= SYNC_SOON_NS && j->cfg.enforce_max && used >= j->cfg.journal_max / 4));
	pthread_mutex_unlock(&j->lock);
	return due;
}

bool journal_backing_unsynced(struct journal *j)
{
	bool behind;

	pthread_mutex_lock(&j->lock);
	behind = backing_unsynced_locked(j);
	pthread_mutex_unlock(&j->lock);
	return behind;
}

int journal_writeback_check(void *journal)
{
	struct journal *j = journal;
	size_t n = 0;
	int *fds, r = 0;

	pthread_mutex_lock(&j->lock);
	fds = calloc(j->nlive ? j->nlive : 1, sizeof *fds);
	for (size_t i = 0; fds && i < j->nlive; i++) {
		struct image *im = j->live[i];

		if (im->wb_fd >= 0)
			fds[n] = dup(im->wb_fd); /* the same open file: the same cursor */
		else if (im->ino && im->wb_fd != WB_FD_GONE)
			r = -EIO; /* cannot tell: assume the worst */
		if (im->wb_fd >= 0 && fds[n] >= 0)
			n++;
		else if (im->wb_fd >= 0)
			r = -errno;
	}
	pthread_mutex_unlock(&j->lock);
	if (!fds)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		if (aimfs_io.fdatasync_fn(fds[i]) < 0 && r == 0)
			r = -errno;
		close(fds[i]);
	}
	free(fds);
	return r;
}

bool journal_writeback_lost(struct journal *j)
{
	return actlog_writeback_lost(j->al);
}

bool journal_fsync_needs_backing(struct journal *j, struct image *im)
{
	bool needs;

	pthread_mutex_lock(&j->lock);
	/* ... or if no checkpoint syncs its filesystem */
	needs = j->cp_synced <= im->created_cp || !actlog_covers(j->al, im->dev);
	pthread_mutex_unlock(&j->lock);
	return needs;
}

void journal_backing_synced(void *journal, uint64_t lsn)
{
	struct journal *j = journal;
	uint64_t segment, prunable;

	pthread_mutex_lock(&j->lock);
	if (lsn > j->synced_backing_lsn)
		j->synced_backing_lsn = lsn;
	j->cp_synced = j->cp_begun;
	j->synced_ns = clock_mono_ns();
	segment = j->durable_segment;
	prunable = journal_prunable_lsn_locked(j, j->durable_backing_lsn);
	pthread_mutex_unlock(&j->lock);
	/* segments sealed before this checkpoint may go now */
	if (j->cfg.on_durable && segment)
		j->cfg.on_durable(j->cfg.hook_ctx, segment, prunable);
}

/* ---- open / close ---- */

static int make_group(uint8_t group[16])
{
	if (getrandom(group, 16, 0) != 16)
		return -EIO;
	group[6] = (uint8_t)((group[6] & 0x0f) | 0x40); /* UUID version 4 */
	group[8] = (uint8_t)((group[8] & 0x3f) | 0x80);
	return 0;
}

/* Loads or creates the group identity and checks the journal belongs to
 * this backing directory. */
static int load_identity(struct journal *j, struct catalog *cat)
{
	char buf[4200], uuid[37];
	int r;

	r = catalog_meta_get(cat, "group", uuid, sizeof uuid);
	if (r == -ENOENT) {
		r = make_group(j->group);
		if (r < 0)
			return r;
		seg_uuid_format(j->group, uuid);
		r = catalog_meta_set(cat, "group", uuid);
		if (r == 0)
			r = catalog_meta_set(cat, "backing_dir", j->backing_dir);
		if (r == 0)
			log_info("new consistency group %s for %s", uuid, j->backing_dir);
		return r;
	}
	if (r < 0)
		return r;
	if (seg_uuid_parse(uuid, j->group) < 0) {
		log_error("journal %s: catalog holds a malformed group id \"%s\"", j->dir, uuid);
		return -EINVAL;
	}
	if (catalog_meta_get(cat, "backing_dir", buf, sizeof buf) == 0 &&
	    strcmp(buf, j->backing_dir) != 0) {
		log_error("journal %s belongs to backing directory %s, not %s; use another"
			  " journal= or mount the directory it was made for", j->dir, buf,
			  j->backing_dir);
		return -EINVAL;
	}
	return 0;
}

int journal_open(const struct journal_config *cfg, struct journal **out)
{
	struct journal *j = calloc(1, sizeof *j);
	struct catalog *cat = NULL;
	char path[4200];
	int r;

	if (!j)
		return -ENOMEM;
	j->cfg = *cfg;
	j->dir = strdup(cfg->dir);
	j->backing_dir = strdup(cfg->backing_dir);
	j->hide_name = cfg->hide_name ? strdup(cfg->hide_name) : NULL;
	j->cfg.dir = j->dir;
	j->cfg.backing_dir = j->backing_dir;
	j->cfg.hide_name = j->hide_name;
	j->dirfd = j->lock_fd = -1;
	j->next_segment = 1;
	j->next_lsn = 1;
	j->next_image_id = 1;
	pthread_mutex_init(&j->ns_lock, NULL);
	pthread_mutex_init(&j->lock, NULL);
	pthread_cond_init(&j->wake, NULL);
	pthread_cond_init(&j->durable, NULL);
	pthread_mutex_init(&j->space_lock, NULL);
	pthread_cond_init(&j->space_cond, NULL);
	pthread_mutex_init(&j->slot_lock, NULL);
	pthread_cond_init(&j->slot_freed, NULL);
	j->ninflight = cfg->inflight_slots ? cfg->inflight_slots : INFLIGHT_SLOTS;
	j->inflight = calloc(j->ninflight, sizeof *j->inflight);
	r = registry_init(j);
	if (r < 0 || !j->dir || !j->backing_dir || !j->inflight)
		goto fail;
	if (mkdir(cfg->dir, 0750) < 0 && errno != EEXIST) {
		r = -errno;
		log_error("cannot create journal directory %s: %m", cfg->dir);
		goto fail;
	}
	j->dirfd = open(cfg->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (j->dirfd < 0) {
		r = -errno;
		log_error("cannot open journal directory %s: %m", cfg->dir);
		goto fail;
	}
	j->lock_fd = openat(j->dirfd, JOURNAL_LOCK_FILE, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (j->lock_fd < 0) {
		r = -errno;
		log_error("journal directory %s is not writable: %m", cfg->dir);
		goto fail;
	}
	if (flock(j->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		r = -EBUSY;
		log_error("journal %s is in use by another aimfs", cfg->dir);
		goto fail;
	}
	snprintf(path, sizeof path, "%s/%s", cfg->dir, CATALOG_FILE);
	r = catalog_open(path, &cat);
	if (r < 0)
		goto fail;
	r = load_identity(j, cat);
	if (r < 0)
		goto fail;
	r = journal_recover(j, cat);
	if (r < 0)
		goto fail;
	j->recovered = true;
	catalog_close(cat);
	*out = j;
	return 0;
fail:
	catalog_close(cat);
	journal_close(j);
	return r < 0 ? r : -ENOMEM;
}

int journal_start(struct journal *j)
{
	int r = sealer_start(j);

	return r < 0 ? r : actlog_start(j->al);
}

int journal_sync_all(void *journal)
{
	struct journal *j = journal;
	struct segfile *s, **queued = NULL;
	size_t nq = 0;
	int r = 0;

	pthread_mutex_lock(&j->lock);
	s = j->open;
	if (s)
		s->refs++;
	if (j->sealer_started) {
		/* The sealer fsyncs sealed segments in order: wait for it, as a
		 * barrier does. */
		uint64_t need = s ? s->number - 1 : j->sealed_segment;

		r = wait_durable_locked(j, need);
	} else {
		/* Recovery: no sealer yet, the queued segments are ours to sync. */
		for (struct segfile *q = j->queue_head; q; q = q->next)
			nq++;
		queued = nq ? calloc(nq, sizeof *queued) : NULL;
		nq = 0;
		for (struct segfile *q = j->queue_head; q && queued; q = q->next) {
			q->refs++;
			queued[nq++] = q;
		}
	}
	if (s && s->verify)
		r = j->last_error ? j->last_error : -EIO;
	pthread_mutex_unlock(&j->lock);
	for (size_t i = 0; i < nq; i++)
		if (r == 0 && aimfs_io.fdatasync_fn(queued[i]->fd) < 0)
			r = -errno;
	if (s && r == 0)
		r = sync_open_segment(j, s);
	pthread_mutex_lock(&j->lock);
	for (size_t i = 0; i < nq; i++)
		segfile_put_locked(j, queued[i]);
	segfile_put_locked(j, s);
	pthread_mutex_unlock(&j->lock);
	free(queued);
	return r;
}

void journal_each_image(struct journal *j, void (*fn)(void *ctx, const char *name), void *ctx)
{
	pthread_mutex_lock(&j->lock);
	for (size_t i = 0; i < j->nlive; i++)
		fn(ctx, j->live[i]->name);
	pthread_mutex_unlock(&j->lock);
}

void journal_stop(struct journal *j)
{
	actlog_stop(j->al);
	if (j->sealer_started) {
		/* Whatever is still owed: now, or the next mount's redo and
		 * reconciliation make the journal and the files agree. */
		int r = journal_settle(j);

		pthread_mutex_lock(&j->lock);
		if (r < 0)
			log_warn("journal %s: %zu records owed since the disk failed could not be"
				 " journaled before unmounting (%s); the next mount redoes and"
				 " reconciles what they describe", j->dir, j->nowed, strerror(-r));
		journal_seal_locked(j);
		pthread_mutex_unlock(&j->lock);
		sealer_stop(j);
	}
	pthread_mutex_lock(&j->space_lock);
	pthread_cond_broadcast(&j->space_cond);
	pthread_mutex_unlock(&j->space_lock);
}

/* At close: what the next mount's recovery tells the images' files by
 * (reconcile.c), should they be replaced or changed while aimfs is
 * stopped. */
static void note_files(struct journal *j)
{
	char path[4200];
	struct catalog *cat;

	if (!j->recovered || !j->nlive)
		return;
	snprintf(path, sizeof path, "%s/%s", j->dir, CATALOG_FILE);
	if (catalog_open(path, &cat) < 0)
		return;
	registry_note_files(j, cat, true);
	catalog_make_durable(cat);
	catalog_close(cat);
}

void journal_close(struct journal *j)
{
	bool clean;

	if (!j)
		return;
	journal_stop(j);
	/* Clean only if every record is in a finished segment: one the seal
	 * or the sealer could not finish at unmount (a full disk) is not
	 * synced, and records owed are not journaled; a power cut before the
	 * next mount must be recovered from as one. */
	clean = !j->open && !j->queue_head && !j->owed_head;
	if (j->open) {
		/* A seal that failed at unmount (the next mount seals it), or
		 * never started: recovery left nothing open, but be safe. */
		segfile_put_locked(j, j->open);
		j->open = NULL;
	}
	/* Segments the sealer could not finish stay NNN.open, sealed: the next
	 * mount finishes them. */
	while (j->queue_head) {
		struct segfile *q = j->queue_head;

		j->queue_head = q->next;
		segfile_put_locked(j, q);
	}
	j->queue_tail = NULL;
	while (j->owed_head) {
		struct owed *e = j->owed_head;

		j->owed_head = e->next;
		owed_free(j, e);
	}
	/* The images' ctimes are noted (durably) before the activity log
	 * says clean: a next mount that compares them has them.  The log is
	 * clean if its checkpoint makes everything durable (unless recovery
	 * never finished: it knows).  What was owed is redone or reconciled
	 * by the next mount either way. */
	if (clean)
		note_files(j);
	else
		log_warn("journal %s: not every record reached a finished segment; the next mount"
			 " recovers as after a crash", j->dir);
	actlog_close(j->al, clean);
	registry_free(j);
	if (j->dirfd >= 0) {
		drop_free_files(j);
		close(j->dirfd);
	}
	if (j->lock_fd >= 0)
		close(j->lock_fd);
	pthread_mutex_destroy(&j->ns_lock);
	pthread_mutex_destroy(&j->lock);
	pthread_cond_destroy(&j->wake);
	pthread_cond_destroy(&j->durable);
	pthread_mutex_destroy(&j->space_lock);
	pthread_cond_destroy(&j->space_cond);
	pthread_mutex_destroy(&j->slot_lock);
	pthread_cond_destroy(&j->slot_freed);
	free(j->inflight);
	free(j->dir);
	free(j->backing_dir);
	free(j->hide_name);
	free(j);
}

/* ---- resynchronisation ---- */

static int tagged_record(struct journal *j, struct image *im, struct seg_record *r,
			 uint64_t *lsn, uint64_t *segment)
{
	int ret;

	r->payload_hash = seg_payload_hash(r->payload, r->payload_len);
	pthread_mutex_lock(&j->lock);
	if (im && !im->live) {
		pthread_mutex_unlock(&j->lock);
		return -ENOENT;
	}
	if (im)
		r->image = im->id;
	ret = journal_ensure_open_locked(j);
	if (ret == 0) {
		*segment = j->open->number;
		ret = journal_append_locked(j, r);
		*lsn = r->lsn;
	}
	pthread_mutex_unlock(&j->lock);
	return ret;
}

int journal_resync_write(struct journal *j, struct image *im, uint32_t dest, uint64_t off,
			 const void *buf, size_t len, uint64_t *lsn, uint64_t *segment)
{
	struct seg_record r = { .type = SEG_WRITE, .flags = SEG_F_RESYNC, .aux = dest,
				.offset = off, .length = len, .payload = buf,
				.payload_len = (uint32_t)len };

	return tagged_record(j, im, &r, lsn, segment);
}

int journal_resync_zero(struct journal *j, struct image *im, uint32_t dest, uint64_t off,
			uint64_t len, bool punch, uint64_t *lsn, uint64_t *segment)
{
	struct seg_record r = { .type = SEG_ZERO, .aux = dest, .offset = off, .length = len,
				.flags = (uint8_t)(SEG_F_RESYNC | SEG_F_KEEP_SIZE |
						   (punch ? SEG_F_PUNCH : 0)) };

	return tagged_record(j, im, &r, lsn, segment);
}

int journal_resync_truncate(struct journal *j, struct image *im, uint32_t dest, uint64_t size,
			    uint64_t *lsn, uint64_t *segment)
{
	struct seg_record r = { .type = SEG_TRUNCATE, .flags = SEG_F_RESYNC, .aux = dest,
				.offset = size };

	return tagged_record(j, im, &r, lsn, segment);
}

int journal_hash(struct journal *j, struct image *im, uint32_t dest, uint64_t off, uint64_t len,
		 uint32_t block, const uint64_t *hashes, uint64_t n, uint64_t *lsn,
		 uint64_t *segment)
{
	size_t plen = SEG_HASH_HEADER + n * 8;
	uint8_t *p = malloc(plen);
	struct seg_record r = { .type = SEG_HASH, .aux = dest, .offset = off, .length = len };
	int ret;

	if (!p)
		return -ENOMEM;
	for (int k = 0; k < 4; k++)
		p[k] = (uint8_t)(block >> (8 * k));
	memset(p + 4, 0, 4);
	for (uint64_t i = 0; i < n; i++)
		for (int k = 0; k < 8; k++)
			p[SEG_HASH_HEADER + i * 8 + (uint64_t)k] = (uint8_t)(hashes[i] >> (8 * k));
	r.payload = p;
	r.payload_len = (uint32_t)plen;
	ret = tagged_record(j, im, &r, lsn, segment);
	free(p);
	return ret;
}

int journal_sync_mark(struct journal *j, uint32_t dest, bool begin, bool fresh, uint64_t *lsn,
		      uint64_t *segment)
{
	struct seg_record r = { .type = begin ? SEG_SYNC_BEGIN : SEG_SYNC_END, .aux = dest };
	int ret;

	r.payload_hash = seg_payload_hash(NULL, 0);
	pthread_mutex_lock(&j->lock);
	ret = fresh && j->open && j->open->records ? journal_seal_locked(j) : 0;
	if (ret == 0)
		ret = journal_ensure_open_locked(j);
	if (ret == 0 && begin && !fresh && j->open->records == 0) {
		/* Only a resync that skipped what came before it opens a
		 * segment with its SYNC_BEGIN (fresh): a remote waiting at a
		 * gap goes on at such a segment (docs/RESYNC.md).  This one
		 * skipped nothing, so a barrier goes first. */
		struct seg_record f = { .type = SEG_FLUSH };

		f.payload_hash = seg_payload_hash(NULL, 0);
		ret = journal_append_locked(j, &f);
	}
	if (ret == 0) {
		*segment = j->open->number;
		ret = journal_append_locked(j, &r);
		*lsn = r.lsn;
	}
	pthread_mutex_unlock(&j->lock);
	return ret;
}

int journal_seal(struct journal *j)
{
	int ret;

	pthread_mutex_lock(&j->lock);
	ret = j->open && j->open->records ? journal_seal_locked(j) : 0;
	pthread_mutex_unlock(&j->lock);
	return ret;
}

void journal_image_name(struct journal *j, struct image *im, char *buf, size_t len)
{
	pthread_mutex_lock(&j->lock);
	snprintf(buf, len, "%s", im->name);
	pthread_mutex_unlock(&j->lock);
}

struct image *journal_image_lookup_name(struct journal *j, const char *name)
{
	struct image *im = NULL;

	if (!name)
		return NULL;
	pthread_mutex_lock(&j->lock);
	im = registry_find_name(j, name);
	if (im)
		im->refs++;
	pthread_mutex_unlock(&j->lock);
	return im;
}

struct image *journal_image_by_id(struct journal *j, uint32_t id)
{
	struct image *im;

	pthread_mutex_lock(&j->lock);
	im = registry_find_id(j, id);
	if (im)
		im->refs++;
	pthread_mutex_unlock(&j->lock);
	return im;
}

int journal_open_image(struct journal *j, struct image *im, int backing_fd)
{
	char name[SEG_NAME_MAX + 1];
	bool live;
	int fd;

	journal_ns_lock(j);
	pthread_mutex_lock(&j->lock);
	live = im->live;
	snprintf(name, sizeof name, "%s", im->name);
	pthread_mutex_unlock(&j->lock);
	fd = live ? openat(backing_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) : -1;
	if (!live)
		errno = ENOENT;
	journal_ns_unlock(j);
	return fd < 0 ? -errno : fd;
}

void journal_each_image_id(struct journal *j, void (*fn)(void *ctx, uint32_t id), void *ctx)
{
	pthread_mutex_lock(&j->lock);
	for (size_t i = 0; i < j->nlive; i++)
		fn(ctx, j->live[i]->id);
	pthread_mutex_unlock(&j->lock);
}

int journal_sync_backing(struct journal *j)
{
	return j->al && journal_backing_unsynced(j) ? actlog_checkpoint(j->al) : 0;
}

void journal_space(struct journal *j, uint64_t *used, uint64_t *max)
{
	*used = atomic_load(&j->disk_bytes);
	*max = j->cfg.enforce_max ? j->cfg.journal_max : 0;
}
