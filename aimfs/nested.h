/*
 * nested.h — the filesystems mounted inside the backing directory that
 * aimfs has crossed into.
 *
 * A checkpoint syncs the backing filesystem with syncfs(2), which covers
 * one filesystem: an image on a filesystem mounted below the backing
 * directory (or a file mounted there) needs a syncfs of its own.  Each
 * image's filesystem is handed to the activity log as the image is
 * registered (registry.c, actlog_watch), at recovery as at a create or an
 * adoption.  A filesystem stays open (and so mounted) until aimfs
 * unmounts.
 */
#ifndef AIM_NESTED_H
#define AIM_NESTED_H

#include <sys/types.h>

#define NESTED_MAX 32

struct nested_fs {
	unsigned n;
	dev_t dev[NESTED_MAX];
	int fd[NESTED_MAX];       /* readable: for syncfs */
};

/* Adds the filesystem of fd (any descriptor on it, O_PATH too) if it is
 * not root_dev's and not known yet; 1 if added, 0 if known,
 * or -errno (-ENOSPC past NESTED_MAX).  Not thread-safe: the caller
 * serialises it with readers. */
int nested_fs_add(struct nested_fs *nf, int fd, dev_t root_dev);
/* True if dev is one of them. */
int nested_fs_has(const struct nested_fs *nf, dev_t dev);
void nested_fs_close(struct nested_fs *nf);

#endif
