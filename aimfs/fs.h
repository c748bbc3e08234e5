/*
 * fs.h — the FUSE side of aimfs: a passthrough of the backing directory
 * (libfuse low-level API, inode table keyed by backing inode, file handles
 * carrying the backing fd) that hands every mutation of a regular file to
 * the journal before performing it.
 *
 * Thread safety: the operations run on libfuse's worker threads; struct fs
 * is shared by them and protects itself.
 */
#ifndef AIM_FS_H
#define AIM_FS_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <sys/types.h>

struct fs;
struct journal;

struct fs_config {
	const char *backing_dir;  /* absolute, canonical */
	int backing_fd;           /* O_PATH | O_DIRECTORY, owned by the caller */
	struct journal *journal;
	/* The journal directory when it lives inside the backing tree: the
	 * entry named hide_name in the directory (hide_dev, hide_ino) is
	 * neither visible nor writable through the mount. */
	const char *hide_name;
	dev_t hide_dev;
	ino_t hide_ino;
	double timeout;           /* attribute and entry cache, seconds */
	/* The kernel's FUSE writeback cache for files not opened O_DIRECT:
	 * buffered writes are acknowledged from the page cache and reach aimfs
	 * when the kernel writes them back, and at every fsync and close. */
	bool writeback_cache;
	/* backing_sync=fsync: every fsync of an image syncs its backing file
	 * too, instead of the activity log's next checkpoint doing it. */
	bool backing_sync_each_fsync;
};

/* Returns a new fs or NULL (errno set). */
struct fs *fs_new(const struct fs_config *cfg);
void fs_free(struct fs *fs);
/* How many file handles are open through the mount, and (as much as fits
 * in names, comma-separated) the files they are open on.  Thread-safe. */
unsigned fs_open_files(struct fs *fs, char *names, size_t len);
/* The same count, lock-free (async-signal-safe). */
unsigned fs_open_count(struct fs *fs);
const struct fuse_lowlevel_ops *fs_ops(void);

#endif
