/*
 * nested.h — the filesystems mounted inside the backing directory.
 *
 * A checkpoint syncs the backing filesystem with syncfs(2), which covers
 * one filesystem: an image on a filesystem mounted below the backing
 * directory needs a syncfs of its own.  The activity log opens each such
 * filesystem once, at mount time, from /proc/self/mountinfo.
 */
#ifndef AIM_NESTED_H
#define AIM_NESTED_H

#include <sys/types.h>

#define NESTED_MAX 32

struct nested_fs {
	unsigned n;
	dev_t dev[NESTED_MAX];
	int fd[NESTED_MAX];       /* readable: for syncfs */
	unsigned missed;          /* more than NESTED_MAX, or could not be opened */
};

/* Opens the root of every filesystem mounted below the directory dirfd
 * (other than dirfd's own); returns 0 or -errno. */
int nested_fs_open(int dirfd, struct nested_fs *nf);
/* Adds the filesystem of fd (any descriptor of a directory on it, O_PATH
 * too) if it is not root_dev's and not known yet; 1 if added, 0 if known,
 * or -errno.  Not thread-safe: the caller serialises it with readers. */
int nested_fs_add(struct nested_fs *nf, int fd, dev_t root_dev);
/* True if dev is one of them. */
int nested_fs_has(const struct nested_fs *nf, dev_t dev);
void nested_fs_close(struct nested_fs *nf);

#endif
