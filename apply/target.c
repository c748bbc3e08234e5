/*
 * target.c — the applier's targets: paths resolved beneath the target
 * directory only (openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
 * RESOLVE_NO_MAGICLINKS, see apply.c's opening comment for why), the
 * operator's --map paths, and the cache of open targets (LRU, CACHE_MAX
 * entries; a dirty target is fsynced before it leaves the cache, so that
 * dropping one never loses a barrier).
 */
#include "fileio.h"
#include "apply_i.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Why an openat2 beneath the target directory failed, for a person. */
const char *apply_open_reason(int rc)
{
	switch (rc) {
	case -ELOOP:
		return "a symbolic link is in the way (symlinks inside the target directory are never followed)";
	case -EXDEV:
		return "the path leads outside the target directory";
	default:
		return strerror(-rc);
	}
}

/* openat2 confined beneath dirfd.  Returns an fd or -errno. */
int apply_open_beneath(int dirfd, const char *path, int flags, mode_t mode)
{
	struct open_how how = {
		.flags = (uint64_t)(flags | O_CLOEXEC),
		.mode = (flags & O_CREAT) ? mode : 0,
		.resolve = RESOLVE_SAFE,
	};

	for (int tries = 0;; tries++) {
		long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);

		if (fd >= 0)
			return (int)fd;
		/* RESOLVE_BENEATH fails with EAGAIN when a rename elsewhere in
		 * the tree raced with the lookup; the kernel asks us to retry. */
		if (errno == EAGAIN && tries < 16)
			continue;
		return -errno;
	}
}


/*
 * Opens the directory rel (a valid relative path) beneath the target
 * directory, creating missing components when create is set; each parent
 * that gains an entry is fsynced, so the new directory survives a crash.
 * Returns an fd the caller closes, or -errno with err set.
 */
int apply_open_dir(struct applier *a, const char *rel, bool create, char *err, size_t errlen)
{
	char comp[SEG_COMPONENT_MAX + 1];
	const char *p = rel;
	int cur, next, r;

	cur = apply_open_beneath(a->dirfd, rel, O_RDONLY | O_DIRECTORY, 0);
	if (cur >= 0 || cur != -ENOENT || !create) {
		if (cur < 0)
			apply_fail(err, errlen, cur, "directory %s in %s: %s", rel, a->dir, apply_open_reason(cur));
		return cur;
	}
	/* One component at a time, each relative to a directory opened
	 * beneath the target: mkdirat never follows a symlink in the leaf
	 * and open_beneath refuses one. */
	cur = a->dirfd;
	while (*p) {
		size_t len = strcspn(p, "/");

		memcpy(comp, p, len);
		comp[len] = '\0';
		r = mkdirat(cur, comp, NEW_DIR_MODE) == 0 ? 1 : errno == EEXIST ? 0 : -errno;
		if (r == 1)
			r = apply_fsync_fd(cur);
		next = r < 0 ? r : apply_open_beneath(cur, comp, O_RDONLY | O_DIRECTORY, 0);
		if (cur != a->dirfd)
			close(cur);
		if (next < 0)
			return apply_fail(err, errlen, next, "creating directory %.*s in %s: %s",
				    (int)(p - rel) + (int)len, rel, a->dir, apply_open_reason(next));
		cur = next;
		p += len;
		if (*p == '/')
			p++;
	}
	return cur;
}

/*
 * Opens the directory holding name (the target directory itself for a
 * name without '/') and points *leaf at name's last component.  Returns
 * an fd the caller closes, or -errno with err set.
 */
int apply_open_parent(struct applier *a, const char *name, bool create, const char **leaf,
		       char *err, size_t errlen)
{
	const char *slash = strrchr(name, '/');
	char dir[SEG_NAME_MAX + 1];
	int fd;

	if (!slash) {
		*leaf = name;
		fd = fcntl(a->dirfd, F_DUPFD_CLOEXEC, 0);
		if (fd < 0)
			return apply_fail(err, errlen, -errno, "dup of %s: %s", a->dir, strerror(errno));
		return fd;
	}
	*leaf = slash + 1;
	memcpy(dir, name, (size_t)(slash - name));
	dir[slash - name] = '\0';
	return apply_open_dir(a, dir, create, err, errlen);
}

const struct mapping *apply_find_map(const struct applier *a, const char *image)
{
	for (size_t i = 0; i < a->nmaps; i++)
		if (strcmp(a->maps[i].image, image) == 0)
			return &a->maps[i];
	return NULL;
}

/* First mapped image under directory dir/, or NULL. */
const struct mapping *apply_find_map_under(const struct applier *a, const char *dir)
{
	size_t n = strlen(dir);

	for (size_t i = 0; i < a->nmaps; i++)
		if (strncmp(a->maps[i].image, dir, n) == 0 && a->maps[i].image[n] == '/')
			return &a->maps[i];
	return NULL;
}

/* ---- the target cache ---- */

static void slot_clear(struct target *t)
{
	free(t->name);
	free(t->path);
	memset(t, 0, sizeof *t);
	t->fd = -1;
}

/* Closes a cached target; a dirty one is fsynced first so that dropping it
 * never loses a barrier.  Returns 0 or -errno with err set. */
int target_close(struct target *t, char *err, size_t errlen)
{
	int r = 0;

	if (!t->name)
		return 0;
	if (t->dirty) {
		r = apply_fsync_fd(t->fd);
		if (r < 0)
			apply_fail(err, errlen, r, "image %s: fsync %s: %s", t->name, t->path, strerror(-r));
	}
	close(t->fd);
	slot_clear(t);
	return r;
}

/* Drops the cache entry for name, and with under set every entry below
 * name/ as well (for directory renames). */
int target_drop(struct applier *a, const char *name, bool under, char *err, size_t errlen)
{
	size_t n = strlen(name);
	int r = 0;

	for (int i = 0; i < CACHE_MAX; i++) {
		struct target *t = &a->cache[i];

		if (!t->name)
			continue;
		if (strcmp(t->name, name) == 0 ||
		    (under && strncmp(t->name, name, n) == 0 && t->name[n] == '/')) {
			int k = target_close(t, err, errlen);

			if (k < 0 && r == 0)
				r = k;
		}
	}
	return r;
}

/* Checks what fd turned out to be and fills t; closes fd on failure. */
static int target_classify(struct target *t, int fd, bool in_dir, char *err, size_t errlen)
{
	struct stat st;

	if (apply_io.fstat_fn(fd, &st) < 0) {
		int r = -errno;

		close(fd);
		return apply_fail(err, errlen, r, "image %s: fstat %s: %s", t->name, t->path, strerror(-r));
	}
	if (S_ISBLK(st.st_mode) && !in_dir) {
		uint64_t size = 0;

		if (apply_io.ioctl_fn(fd, BLKGETSIZE64, &size) < 0) {
			int r = -errno;

			close(fd);
			return apply_fail(err, errlen, r, "image %s: cannot read the size of %s: %s",
				    t->name, t->path, strerror(-r));
		}
		t->blockdev = true;
		t->dev_size = size;
	} else if (!S_ISREG(st.st_mode)) {
		close(fd);
		return apply_fail(err, errlen, -EINVAL, "image %s: %s is not a regular file%s", t->name,
			    t->path, in_dir ? "" : " or a block device");
	} else if (in_dir && st.st_nlink > 1) {
		/* A second link may lead anywhere on this file system. */
		close(fd);
		return apply_fail(err, errlen, -EPERM,
			    "image %s: %s has %ju hard links; refusing to write through a link that may lead outside the target directory",
			    t->name, t->path, (uintmax_t)st.st_nlink);
	}
	t->fd = fd;
	return 0;
}

/* Opens (creating if missing, with mode) the image name inside the target
 * directory.  Returns an fd or -errno with err set. */
static int open_in_dir(struct applier *a, const char *name, mode_t mode, char *err, size_t errlen)
{
	const int flags = O_RDWR | O_NONBLOCK | O_NOCTTY;
	const char *leaf;
	int fd, pfd, r;

	/* O_NONBLOCK: a planted FIFO must not hang the applier before the
	 * type check refuses it. */
	fd = apply_open_beneath(a->dirfd, name, flags, 0);
	if (fd == -ENOENT) {
		pfd = apply_open_parent(a, name, true, &leaf, err, errlen);
		if (pfd < 0)
			return pfd;
		fd = apply_open_beneath(pfd, leaf, flags | O_CREAT | O_EXCL, mode);
		if (fd >= 0) {
			r = apply_fsync_fd(pfd); /* the new entry must survive a crash */
			if (r < 0) {
				close(fd);
				close(pfd);
				return apply_fail(err, errlen, r, "image %s: fsync of its directory in %s: %s",
					    name, a->dir, strerror(-r));
			}
		} else if (fd == -EEXIST) {
			fd = apply_open_beneath(pfd, leaf, flags, 0);
		}
		close(pfd);
	}
	if (fd < 0)
		return apply_fail(err, errlen, fd, "image %s: cannot open %s/%s: %s", name, a->dir, name,
			    apply_open_reason(fd));
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0) {
		r = -errno;
		close(fd);
		return apply_fail(err, errlen, r, "image %s: fcntl: %s", name, strerror(-r));
	}
	return fd;
}

static int open_mapped(const struct mapping *m, char *err, size_t errlen)
{
	int flags = O_RDWR | O_CLOEXEC | O_NOCTTY;
	struct stat st;
	int fd, r;

	/* O_EXCL on a block device is an exclusive claim: it fails with
	 * EBUSY while the device is mounted or claimed by another program
	 * (a second applier, a running VM), which must never share it. */
	if (stat(m->path, &st) == 0 && S_ISBLK(st.st_mode))
		flags |= O_EXCL;
	fd = open(m->path, flags);
	if (fd < 0 && errno == ENOENT) {
		fd = open(m->path, flags | O_CREAT | O_EXCL, NEW_FILE_MODE);
		if (fd >= 0) {
			r = fileio_fsync_dir_of(m->path, apply_fsync_fd); /* an operator's path */
			if (r < 0) {
				close(fd);
				return apply_fail(err, errlen, r, "image %s: fsync of the directory of %s: %s",
					    m->image, m->path, strerror(-r));
			}
		}
	}
	if (fd < 0 && errno == EBUSY)
		return apply_fail(err, errlen, -EBUSY,
			    "image %s: %s is in use (mounted, or opened exclusively by another program)",
			    m->image, m->path);
	if (fd < 0)
		return apply_fail(err, errlen, -errno, "image %s: cannot open %s: %s", m->image, m->path,
			    strerror(errno));
	return fd;
}

/*
 * Finds or opens the target of image name, creating it (with mode) if it
 * does not exist.  Returns 0 and *out, or -errno with err set.
 */
int target_get(struct applier *a, const char *name, mode_t mode, struct target **out,
		      char *err, size_t errlen)
{
	const struct mapping *m;
	struct target *t = NULL;
	int fd, r;

	for (int i = 0; i < CACHE_MAX; i++) {
		if (a->cache[i].name && strcmp(a->cache[i].name, name) == 0) {
			t = &a->cache[i];
			t->used = ++a->clock;
			*out = t;
			return 0;
		}
	}
	for (int i = 0; i < CACHE_MAX; i++)
		if (!a->cache[i].name && !t)
			t = &a->cache[i];
	if (!t) {
		t = &a->cache[0];
		for (int i = 1; i < CACHE_MAX; i++)
			if (a->cache[i].used < t->used)
				t = &a->cache[i];
		r = target_close(t, err, errlen);
		if (r < 0)
			return r;
	}
	m = apply_find_map(a, name);
	fd = m ? open_mapped(m, err, errlen) : open_in_dir(a, name, mode, err, errlen);
	if (fd < 0)
		return fd;
	t->name = strdup(name);
	if (m)
		t->path = strdup(m->path);
	else if (asprintf(&t->path, "%s/%s", a->dir, name) < 0)
		t->path = NULL;
	if (!t->name || !t->path) {
		close(fd);
		slot_clear(t);
		return apply_fail(err, errlen, -ENOMEM, "out of memory");
	}
	t->mapped = m != NULL;
	r = target_classify(t, fd, !m, err, errlen);
	if (r < 0) {
		slot_clear(t);
		return r;
	}
	t->used = ++a->clock;
	*out = t;
	return 0;
}

/*
 * The target of image name as target_get finds it, but never created:
 * returns 0 and *out, 1 when it does not exist, or -errno with err set
 * (a symlink or anything else target_get would refuse is refused here
 * too).
 */
int target_existing(struct applier *a, const char *name, struct target **out,
			   char *err, size_t errlen)
{
	const struct mapping *m;
	struct stat st;
	int fd;

	for (int i = 0; i < CACHE_MAX; i++)
		if (a->cache[i].name && strcmp(a->cache[i].name, name) == 0)
			return target_get(a, name, NEW_FILE_MODE, out, err, errlen);
	m = apply_find_map(a, name);
	if (m) {
		if (stat(m->path, &st) < 0) {
			if (errno == ENOENT)
				return 1;
			return apply_fail(err, errlen, -errno, "image %s: %s: %s", name, m->path,
				    strerror(errno));
		}
	} else {
		fd = apply_open_beneath(a->dirfd, name, O_PATH | O_NOFOLLOW, 0);
		if (fd == -ENOENT || fd == -ENOTDIR)
			return 1;
		if (fd < 0)
			return apply_fail(err, errlen, fd, "image %s: cannot open %s/%s: %s", name, a->dir,
				    name, apply_open_reason(fd));
		close(fd);
	}
	return target_get(a, name, NEW_FILE_MODE, out, err, errlen);
}

