/*
 * nested.c — the filesystems mounted inside the backing directory that
 * aimfs has crossed into (nested.h).
 */
#include "nested.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

int nested_fs_has(const struct nested_fs *nf, dev_t dev)
{
	for (unsigned i = 0; i < nf->n; i++)
		if (nf->dev[i] == dev)
			return 1;
	return 0;
}

int nested_fs_add(struct nested_fs *nf, int fd, dev_t root_dev)
{
	char proc[64];
	struct stat st;
	int rfd;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (st.st_dev == root_dev || nested_fs_has(nf, st.st_dev))
		return 0;
	if (nf->n == NESTED_MAX)
		return -ENOSPC;
	/* a descriptor of its own that syncfs takes (fd may be O_PATH) */
	snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
	rfd = open(proc, O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
	if (rfd < 0)
		return -errno;
	nf->dev[nf->n] = st.st_dev;
	nf->fd[nf->n++] = rfd;
	return 1;
}

void nested_fs_close(struct nested_fs *nf)
{
	for (unsigned i = 0; i < nf->n; i++)
		close(nf->fd[i]);
	nf->n = 0;
}
