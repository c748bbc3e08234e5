/*
 * io_i.h — the I/O seam of aimfs: every system call that changes the bytes
 * of a journal segment, a backing file or the activity log, or makes them
 * durable, goes through this table (LiteFS's lesson: route file-system
 * calls through a small interface so that tests can stand between the
 * program and the disk).
 *
 * The power-cut test build (tests/powercut_io.c) replaces the table with
 * wrappers that log, before each buffered change, what the bytes were (and
 * each rename in the journal directory), and which changes each fsync made
 * durable; after a kill -9 the test puts
 * back every change that was not durable yet, which is what a power cut
 * leaves on disk.  The boot id comes through the table too, so that such a
 * test can say "this is another boot".  The fault-injection build
 * (tests/faultio.c) fails, cuts short or stalls chosen calls.
 *
 * Not part of any interface outside aimfs/.  The table is process-global and
 * not locked: it is replaced only before anything runs (a constructor of
 * the test build), never while aimfs works.
 */
#ifndef AIM_IO_I_H
#define AIM_IO_I_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#define BOOT_ID_LEN 16

struct catalog;

struct aimfs_io {
	ssize_t (*pwrite_fn)(int fd, const void *buf, size_t n, off_t off);
	ssize_t (*pwritev_fn)(int fd, const struct iovec *iov, int iovcnt, off_t off);
	int (*ftruncate_fn)(int fd, off_t len);
	int (*fallocate_fn)(int fd, int mode, off_t off, off_t len);
	int (*fsync_fn)(int fd);
	int (*fdatasync_fn)(int fd);
	int (*syncfs_fn)(int fd);
	/* Renames in the journal directory (a segment published, recycled or
	 * reused): durable only once the directory is synced. */
	int (*renameat_fn)(int olddirfd, const char *oldpath, int newdirfd, const char *newpath);
	/* Starts writeback only (SYNC_FILE_RANGE_WRITE): makes nothing durable. */
	int (*sync_file_range_fn)(int fd, off_t off, off_t n, unsigned flags);
	/* This boot's identity (/proc/sys/kernel/random/boot_id): 0 or -errno. */
	int (*boot_id_fn)(uint8_t id[BOOT_ID_LEN]);
	/* The sealer's own catalog connection (catalog_open), so that a test
	 * can make it fail. */
	int (*catalog_open_fn)(const char *path, struct catalog **out);
};

extern struct aimfs_io aimfs_io;
extern const struct aimfs_io aimfs_io_default;

#endif
