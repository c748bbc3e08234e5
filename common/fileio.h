/*
 * fileio.h — whole reads and writes at an offset: the loops that retry
 * EINTR and short transfers, written once.  A caller with a test seam (the
 * applier's I/O table) passes its own pread/pwrite; NULL means the system
 * call.  Thread-safe.
 */
#ifndef AIM_FILEIO_H
#define AIM_FILEIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef ssize_t (*fileio_pread_fn)(int fd, void *buf, size_t n, off_t off);
typedef ssize_t (*fileio_pwrite_fn)(int fd, const void *buf, size_t n, off_t off);
typedef ssize_t (*fileio_pwritev_fn)(int fd, const struct iovec *iov, int iovcnt, off_t off);

/* Reads len bytes at off, fewer only at the end of the file.  Returns the
 * bytes read or -errno. */
ssize_t fileio_pread_full(fileio_pread_fn fn, int fd, void *buf, size_t len, uint64_t off);
/* A buffer holding one range of a file, for a reader that moves forward
 * through it: what it holds is served without a read. */
struct fileio_window {
	uint8_t *buf;   /* cap bytes, the caller's */
	size_t cap;
	uint64_t at;    /* the file offset buf[0] holds */
	size_t held;    /* bytes of the file held from at (0: none; set 0 to forget) */
};
/* Whether w holds the n bytes of the file at off. */
bool fileio_window_holds(const struct fileio_window *w, uint64_t off, size_t n);
/* Points *p at n bytes of fd at off: in w if it holds them, else read
 * with fn (NULL: pread(2)), want bytes from off (n <= want <= w->cap).
 * Returns 0, -ENODATA if the file ends before off + n, or -errno. */
int fileio_window_get(struct fileio_window *w, fileio_pread_fn fn, int fd, uint64_t off,
		      size_t n, size_t want, const uint8_t **p);
/* Writes all len bytes at off.  Returns 0 or -errno (-EIO for a write that
 * makes no progress). */
int fileio_pwrite_full(fileio_pwrite_fn fn, int fd, const void *buf, size_t len, uint64_t off);

/* Writes the n buffers of iov, in order, from off on, with fn (NULL:
 * pwritev(2)).  iov is advanced past what a short write took, so it is
 * the caller's scratch.  Returns 0 or -errno (-EIO for no progress). */
int fileio_pwritev_full(fileio_pwritev_fn fn, int fd, struct iovec *iov, int n, uint64_t off);

/* Writes all len bytes at the file's position (a pipe, a file being
 * filled in order).  Returns 0 or -errno. */
int fileio_write_full(int fd, const void *buf, size_t len);

/* fsyncs the directory holding path, after creating or renaming an entry
 * in it, with fsync_fn (NULL: fsync(2)).  Returns 0 or -errno. */
int fileio_fsync_dir_of(const char *path, int (*fsync_fn)(int fd));

/* The birth time (statx btime) of path under dirfd ("" for dirfd itself),
 * not following a symlink, in ns since the epoch; 0 where the filesystem
 * does not keep one.  *ino (if not NULL) gets the inode number, 0 if the
 * file is not there. */
uint64_t fileio_born_ns(int dirfd, const char *path, uint64_t *ino);
/* st's ctime (the last change to the file's data or attributes, which no
 * one can set back) in ns since the epoch. */
uint64_t fileio_ctime_ns(const struct stat *st);
/* st's mtime in ns since the epoch. */
uint64_t fileio_mtime_ns(const struct stat *st);

#endif
