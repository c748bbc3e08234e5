/*
 * fileio.h — whole reads and writes at an offset: the loops that retry
 * EINTR and short transfers, written once.  A caller with a test seam (the
 * applier's I/O table) passes its own pread/pwrite; NULL means the system
 * call.  Thread-safe.
 */
#ifndef AIM_FILEIO_H
#define AIM_FILEIO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

typedef ssize_t (*fileio_pread_fn)(int fd, void *buf, size_t n, off_t off);
typedef ssize_t (*fileio_pwrite_fn)(int fd, const void *buf, size_t n, off_t off);

/* Reads len bytes at off, fewer only at the end of the file.  Returns the
 * bytes read or -errno. */
ssize_t fileio_pread_full(fileio_pread_fn fn, int fd, void *buf, size_t len, uint64_t off);
/* Writes all len bytes at off.  Returns 0 or -errno (-EIO for a write that
 * makes no progress). */
int fileio_pwrite_full(fileio_pwrite_fn fn, int fd, const void *buf, size_t len, uint64_t off);

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
