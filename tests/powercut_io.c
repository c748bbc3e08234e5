/*
 * powercut_io.c — the power-cut test build of aimfs (tests/aimfs-powercut):
 * aimfs's own main(), with aimfs's I/O table (aimfs/io_i.h) and the
 * applier's (apply/apply_i.h, which recovery's redo uses) replaced by
 * wrappers that keep an undo log of everything not yet durable.
 *
 * With AIM_POWERCUT_LOG=FILE, every change to a file made through the
 * tables is preceded by an UNDO record in FILE: the file (device, inode),
 * the range, the file's size before and after, and the bytes the range held
 * before (within the old size).  An fsync/fdatasync that returns appends a
 * SYNC record: every change to that inode logged before the call began is
 * durable.  syncfs appends SYNCFS (the same for a whole device).  An
 * O_DIRECT write is durable as it completes and is not undone; the kernel
 * writes back the page cache of its range before it, so it appends a
 * DIRECT record (those pages' earlier changes are durable) before it runs.
 *
 * The test then kills the daemon with SIGKILL, which freezes every thread
 * at once, and tests/powercut.py puts back, from the log, every change that
 * was not durable: what remains is what a power cut would have left on the
 * disk (namespace operations — create, rename, unlink — count as durable at
 * once, but for the renames of the journal directory, which the cut undoes
 * unless a sync of the directory followed them; SQLite's catalog, which
 * syncs itself, is not wrapped).  The log is
 * only appended to (O_APPEND, one write per record, under one lock), so the
 * kill leaves at most a torn last record, whose change never started.
 *
 * AIM_TEST_BOOT_ID=UUID replaces the boot id (a test's "reboot" is a new
 * UUID).  Without AIM_POWERCUT_LOG the wrappers are not installed.
 */
#include "apply_i.h"
#include "io_i.h"
#include "format.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define FALLOC_FL_KEEP_SIZE_ 0x01

enum rec_kind { REC_UNDO = 1, REC_SYNC = 2, REC_SYNCFS = 3, REC_DIRECT = 4, REC_RENAME = 5 };

/* One record; for REC_UNDO followed by data_len bytes (the old content of
 * [off, off + data_len)); for REC_RENAME (dev, ino: the directory) by the
 * old and the new name, each NUL-terminated.  Host byte order: written and
 * read on one host. */
struct rec {
	uint32_t magic;
	uint32_t kind;
	uint64_t seq;
	uint64_t dev, ino;
	uint64_t off, len;        /* REC_SYNC/REC_SYNCFS: off = first seq not covered */
	uint64_t old_size, new_size;
	uint64_t data_len;
};

#define REC_MAGIC 0x50435554u /* "PCUT" */
#define UNDO_MAX (256ull << 20) /* bigger truncations count as durable */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1;
static uint64_t seq;
static uint8_t boot_id[BOOT_ID_LEN];

static void die(const char *what)
{
	fprintf(stderr, "aimfs-powercut: %s: %s\n", what, strerror(errno));
	_exit(99);
}

static void log_write(const void *p, size_t n)
{
	const char *c = p;

	while (n) {
		ssize_t w = write(log_fd, c, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die("writing the undo log");
		c += w;
		n -= (size_t)w;
	}
}

/* One write() per record (the lock is held): records never interleave. */
static void log_rec(struct rec *r, const void *data)
{
	size_t total = sizeof *r + r->data_len;
	char *buf;

	r->magic = REC_MAGIC;
	if (!r->data_len) {
		log_write(r, sizeof *r);
		return;
	}
	buf = malloc(total);
	if (!buf)
		die("undo log buffer");
	memcpy(buf, r, sizeof *r);
	memcpy(buf + sizeof *r, data, r->data_len);
	log_write(buf, total);
	free(buf);
}

/* The old bytes of [off, off + len) within old_size, read through a fresh
 * descriptor (fd may be write-only or O_DIRECT). */
static void *old_bytes(int fd, uint64_t off, uint64_t len, uint64_t old_size, uint64_t *got)
{
	char proc[64];
	uint64_t n = off >= old_size ? 0 : (off + len > old_size ? old_size - off : len);
	char *buf;
	int rfd;

	*got = 0;
	if (!n)
		return NULL;
	buf = malloc(n);
	snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
	rfd = open(proc, O_RDONLY | O_CLOEXEC);
	if (!buf || rfd < 0)
		die("reading old bytes");
	while (*got < n) {
		ssize_t r = pread(rfd, buf + *got, n - *got, (off_t)(off + *got));

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		*got += (uint64_t)r;
	}
	close(rfd);
	return buf;
}

/* Logs the undo of a change of [off, off + len) making the size new_size;
 * called with the lock held, just before the change. */
static void undo(int fd, const struct stat *st, uint64_t off, uint64_t len, uint64_t new_size)
{
	struct rec r = { .kind = REC_UNDO, .dev = st->st_dev, .ino = st->st_ino, .off = off,
			 .len = len, .old_size = (uint64_t)st->st_size, .new_size = new_size };
	void *data = old_bytes(fd, off, len, (uint64_t)st->st_size, &r.data_len);

	r.seq = ++seq;
	log_rec(&r, data);
	free(data);
}

static bool is_direct(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl >= 0 && (fl & O_DIRECT);
}

static ssize_t pc_pwrite(int fd, const void *buf, size_t n, off_t off)
{
	struct stat st;
	ssize_t r;

	if (fstat(fd, &st) < 0)
		return -1;
	pthread_mutex_lock(&lock);
	if (S_ISREG(st.st_mode) && is_direct(fd)) {
		struct rec d = { .kind = REC_DIRECT, .seq = ++seq, .dev = st.st_dev,
				 .ino = st.st_ino, .off = (uint64_t)off, .len = n };

		log_rec(&d, NULL);
	} else if (S_ISREG(st.st_mode)) {
		uint64_t end = (uint64_t)off + n;

		undo(fd, &st, (uint64_t)off, n,
		     end > (uint64_t)st.st_size ? end : (uint64_t)st.st_size);
	}
	r = pwrite(fd, buf, n, off);
	pthread_mutex_unlock(&lock);
	return r;
}

static ssize_t pc_pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
	struct stat st;
	size_t n = 0;
	ssize_t r;

	for (int i = 0; i < iovcnt; i++)
		n += iov[i].iov_len;
	if (fstat(fd, &st) < 0)
		return -1;
	pthread_mutex_lock(&lock);
	if (S_ISREG(st.st_mode)) {
		uint64_t end = (uint64_t)off + n;

		undo(fd, &st, (uint64_t)off, n,
		     end > (uint64_t)st.st_size ? end : (uint64_t)st.st_size);
	}
	r = pwritev(fd, iov, iovcnt, off);
	pthread_mutex_unlock(&lock);
	return r;
}

static int pc_ftruncate(int fd, off_t len)
{
	struct stat st;
	int r;

	if (fstat(fd, &st) < 0)
		return -1;
	pthread_mutex_lock(&lock);
	if ((uint64_t)len >= (uint64_t)st.st_size)
		undo(fd, &st, (uint64_t)st.st_size, 0, (uint64_t)len);
	else if ((uint64_t)(st.st_size - len) <= UNDO_MAX)
		undo(fd, &st, (uint64_t)len, (uint64_t)(st.st_size - len), (uint64_t)len);
	r = ftruncate(fd, len);
	pthread_mutex_unlock(&lock);
	return r;
}

static int pc_fallocate(int fd, int mode, off_t off, off_t len)
{
	struct stat st;
	int r;

	if (fstat(fd, &st) < 0)
		return -1;
	pthread_mutex_lock(&lock);
	if (S_ISREG(st.st_mode)) {
		uint64_t end = (uint64_t)(off + len);
		uint64_t size = (mode & FALLOC_FL_KEEP_SIZE_) || end <= (uint64_t)st.st_size
					? (uint64_t)st.st_size : end;

		undo(fd, &st, (uint64_t)off, (uint64_t)len, size);
	}
	r = fallocate(fd, mode, off, len);
	pthread_mutex_unlock(&lock);
	return r;
}

/* After a sync of fd (or of its whole filesystem) that began at seq s. */
static void synced(int fd, enum rec_kind kind, uint64_t s)
{
	struct stat st;
	struct rec r = { .kind = kind, .off = s };

	if (fstat(fd, &st) < 0)
		return;
	r.dev = st.st_dev;
	r.ino = st.st_ino;
	pthread_mutex_lock(&lock);
	r.seq = ++seq;
	log_rec(&r, NULL);
	pthread_mutex_unlock(&lock);
}

static uint64_t next_seq(void)
{
	uint64_t s;

	pthread_mutex_lock(&lock);
	s = ++seq;
	pthread_mutex_unlock(&lock);
	return s;
}

static int pc_fsync(int fd)
{
	uint64_t s = next_seq();
	int r = fsync(fd);

	if (r == 0)
		synced(fd, REC_SYNC, s);
	return r;
}

static int pc_fdatasync(int fd)
{
	uint64_t s = next_seq();
	int r = fdatasync(fd);

	if (r == 0)
		synced(fd, REC_SYNC, s);
	return r;
}

static int pc_syncfs(int fd)
{
	uint64_t s = next_seq();
	int r = syncfs(fd);

	if (r == 0)
		synced(fd, REC_SYNCFS, s);
	return r;
}

/* A rename in one directory (the journal's): undone by the cut unless a
 * sync of that directory (or its filesystem) began after it. */
static int pc_renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
{
	size_t lo = strlen(oldpath) + 1, ln = strlen(newpath) + 1;
	struct rec rec = { .kind = REC_RENAME, .data_len = lo + ln };
	struct stat st;
	char *names;
	int r;

	if (olddirfd != newdirfd || fstat(olddirfd, &st) < 0)
		return renameat(olddirfd, oldpath, newdirfd, newpath);
	names = malloc(lo + ln);
	if (!names)
		die("rename record");
	memcpy(names, oldpath, lo);
	memcpy(names + lo, newpath, ln);
	rec.dev = st.st_dev;
	rec.ino = st.st_ino;
	pthread_mutex_lock(&lock);
	r = renameat(olddirfd, oldpath, newdirfd, newpath);
	if (r == 0) {
		rec.seq = ++seq;
		log_rec(&rec, names);
	}
	pthread_mutex_unlock(&lock);
	free(names);
	return r;
}

static int pc_boot_id(uint8_t id[BOOT_ID_LEN])
{
	memcpy(id, boot_id, BOOT_ID_LEN);
	return 0;
}

__attribute__((constructor)) static void powercut_install(void)
{
	const char *path = getenv("AIM_POWERCUT_LOG");
	const char *boot = getenv("AIM_TEST_BOOT_ID");

	if (boot) {
		if (seg_uuid_parse(boot, boot_id) < 0) {
			fprintf(stderr, "aimfs-powercut: AIM_TEST_BOOT_ID is not a UUID\n");
			_exit(99);
		}
		aimfs_io.boot_id_fn = pc_boot_id;
	}
	if (!path)
		return;
	log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (log_fd < 0)
		die(path);
	aimfs_io.pwrite_fn = pc_pwrite;
	aimfs_io.pwritev_fn = pc_pwritev;
	aimfs_io.ftruncate_fn = pc_ftruncate;
	aimfs_io.fallocate_fn = pc_fallocate;
	aimfs_io.fsync_fn = pc_fsync;
	aimfs_io.fdatasync_fn = pc_fdatasync;
	aimfs_io.syncfs_fn = pc_syncfs;
	aimfs_io.renameat_fn = pc_renameat;
	apply_io.pwrite_fn = pc_pwrite;
	apply_io.pwritev_fn = pc_pwritev;
	apply_io.fallocate_fn = pc_fallocate;
	apply_io.ftruncate_fn = pc_ftruncate;
	apply_io.fsync_fn = pc_fsync;
}
