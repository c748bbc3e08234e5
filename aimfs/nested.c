/*
 * nested.c — the filesystems mounted inside the backing directory, found
 * in /proc/self/mountinfo (proc(5): the fifth field is the mount point,
 * with space, tab, newline and backslash escaped as octal).
 */
#include "nested.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* mountinfo's octal escapes (\040 and the like), in place. */
static void unescape(char *s)
{
	char *out = s;

	while (*s) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*out++ = (char)((s[1] - '0') << 6 | (s[2] - '0') << 3 | (s[3] - '0'));
			s += 4;
		} else {
			*out++ = *s++;
		}
	}
	*out = '\0';
}

int nested_fs_has(const struct nested_fs *nf, dev_t dev)
{
	for (unsigned i = 0; i < nf->n; i++)
		if (nf->dev[i] == dev)
			return 1;
	return 0;
}

/* rel: below dirfd (not through whatever is mounted over its path now). */
static void add(struct nested_fs *nf, int dirfd, const char *path, const char *rel,
		dev_t root_dev)
{
	struct stat st;
	int fd = openat(dirfd, rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &st) < 0) {
		log_warn("cannot open %s, a filesystem mounted in the backing directory (%m):"
			 " images on it are synced at every fsync", path);
		nf->missed++;
	} else if (st.st_dev != root_dev && !nested_fs_has(nf, st.st_dev)) {
		if (nf->n == NESTED_MAX) {
			log_warn("more than %d filesystems mounted in the backing directory: images"
				 " on %s are synced at every fsync", NESTED_MAX, path);
			nf->missed++;
		} else {
			nf->dev[nf->n] = st.st_dev;
			nf->fd[nf->n++] = fd;
			return;
		}
	}
	if (fd >= 0)
		close(fd);
}

int nested_fs_add(struct nested_fs *nf, int fd, dev_t root_dev)
{
	struct stat st;
	int rfd;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (st.st_dev == root_dev || nested_fs_has(nf, st.st_dev))
		return 0;
	if (nf->n == NESTED_MAX) {
		nf->missed++;
		return -ENOSPC;
	}
	rfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (rfd < 0)
		return -errno;
	nf->dev[nf->n] = st.st_dev;
	nf->fd[nf->n++] = rfd;
	return 1;
}

int nested_fs_open(int dirfd, struct nested_fs *nf)
{
	char proc[64], root[PATH_MAX], *line = NULL;
	size_t cap = 0, len;
	struct stat st;
	ssize_t n;
	FILE *f;

	memset(nf, 0, sizeof *nf);
	snprintf(proc, sizeof proc, "/proc/self/fd/%d", dirfd);
	n = readlink(proc, root, sizeof root - 1);
	if (n < 0 || fstat(dirfd, &st) < 0)
		return -errno;
	root[n] = '\0';
	len = strcmp(root, "/") == 0 ? 0 : (size_t)n;
	f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0) {
		char *field = line, *mp = NULL;

		/* ID PARENT MAJ:MIN ROOT MOUNTPOINT ... */
		for (int i = 0; i < 5 && field; i++) {
			char *sp = strchr(field, ' ');

			if (i == 4) {
				if (sp)
					*sp = '\0';
				mp = field;
			}
			field = sp ? sp + 1 : NULL;
		}
		if (!mp)
			continue;
		unescape(mp);
		if (strncmp(mp, root, len) == 0 && mp[len] == '/' && mp[len + 1])
			add(nf, dirfd, mp, mp + len + 1, st.st_dev);
	}
	free(line);
	fclose(f);
	return 0;
}

void nested_fs_close(struct nested_fs *nf)
{
	for (unsigned i = 0; i < nf->n; i++)
		close(nf->fd[i]);
	nf->n = 0;
}
