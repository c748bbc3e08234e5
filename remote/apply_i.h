/*
 * apply_i.h — the applier's private seam for tests: every system call that
 * touches target data goes through this table, so that a unit test can fail
 * the Nth fsync, refuse fallocate to exercise the write-zeros fallbacks,
 * fail the read of a HASH comparison, or make a regular file pass for a
 * block device (the block-device rules are otherwise testable only with
 * loop devices).
 *
 * Not part of the remote's interface.  The table is process-global and not
 * locked: a test changes it only while no applier runs, and restores
 * apply_io_default afterwards.
 */
#ifndef AIM_APPLY_I_H
#define AIM_APPLY_I_H

#include <sys/stat.h>
#include <sys/types.h>

struct apply_io {
	ssize_t (*pwrite_fn)(int fd, const void *buf, size_t n, off_t off);
	int (*fallocate_fn)(int fd, int mode, off_t off, off_t len);
	int (*ftruncate_fn)(int fd, off_t len);
	int (*fsync_fn)(int fd);
	int (*fstat_fn)(int fd, struct stat *st);
	/* BLKGETSIZE64, BLKSSZGET and BLKZEROOUT only. */
	int (*ioctl_fn)(int fd, unsigned long req, void *arg);
	/* HASH records read the targets' bytes with it. */
	ssize_t (*pread_fn)(int fd, void *buf, size_t n, off_t off);
};

extern struct apply_io apply_io;
extern const struct apply_io apply_io_default;

#endif
