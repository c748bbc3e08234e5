/*
 * fileio.c — whole reads and writes at an offset (fileio.h).
 */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

ssize_t fileio_pread_full(fileio_pread_fn fn, int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = fn ? fn(fd, (char *)buf + done, len - done, (off_t)(off + done))
			       : pread(fd, (char *)buf + done, len - done, (off_t)(off + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

bool fileio_window_holds(const struct fileio_window *w, uint64_t off, size_t n)
{
	return off >= w->at && off + n <= w->at + w->held;
}

int fileio_window_get(struct fileio_window *w, fileio_pread_fn fn, int fd, uint64_t off,
		      size_t n, size_t want, const uint8_t **p)
{
	ssize_t got;

	if (fileio_window_holds(w, off, n)) {
		*p = w->buf + (off - w->at);
		return 0;
	}
	w->held = 0;
	got = fileio_pread_full(fn, fd, w->buf, want, off);
	if (got < 0)
		return (int)got;
	if ((size_t)got < n)
		return -ENODATA;
	w->at = off;
	w->held = (size_t)got;
	*p = w->buf;
	return 0;
}

int fileio_pwrite_full(fileio_pwrite_fn fn, int fd, const void *buf, size_t len, uint64_t off)
{
	const char *p = buf;

	while (len) {
		ssize_t n = fn ? fn(fd, p, len, (off_t)off) : pwrite(fd, p, len, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

int fileio_pwritev_full(fileio_pwritev_fn fn, int fd, struct iovec *iov, int n, uint64_t off)
{
	size_t total = 0;

	for (int i = 0; i < n; i++)
		total += iov[i].iov_len;
	while (total) {
		ssize_t w = fn ? fn(fd, iov, n, (off_t)off) : pwritev(fd, iov, n, (off_t)off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		if (w == 0)
			return -EIO;
		off += (uint64_t)w;
		total -= (size_t)w;
		/* Skip what was written: whole buffers, then part of one. */
		while (w > 0 && (size_t)w >= iov->iov_len) {
			w -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (w > 0) {
			iov->iov_base = (char *)iov->iov_base + w;
			iov->iov_len -= (size_t)w;
		}
	}
	return 0;
}

int fileio_write_full(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int fileio_fsync_dir_of(const char *path, int (*fsync_fn)(int fd))
{
	char *dir = strdup(path), *slash;
	int fd, r;

	if (!dir)
		return -ENOMEM;
	slash = strrchr(dir, '/');
	if (slash)
		*(slash == dir ? slash + 1 : slash) = '\0';
	fd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(dir);
	if (fd < 0)
		return -errno;
	if (fsync_fn)
		r = fsync_fn(fd);
	else
		r = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return r;
}

uint64_t fileio_born_ns(int dirfd, const char *path, uint64_t *ino)
{
	struct statx stx;
	int flags = AT_SYMLINK_NOFOLLOW | (*path ? 0 : AT_EMPTY_PATH);

	if (ino)
		*ino = 0;
	if (statx(dirfd, path, flags, STATX_INO | STATX_BTIME, &stx) < 0)
		return 0;
	if (ino)
		*ino = stx.stx_ino;
	if (!(stx.stx_mask & STATX_BTIME))
		return 0;
	return (uint64_t)stx.stx_btime.tv_sec * 1000000000ULL + stx.stx_btime.tv_nsec;
}

uint64_t fileio_ctime_ns(const struct stat *st)
{
	return (uint64_t)st->st_ctim.tv_sec * 1000000000ULL + (uint64_t)st->st_ctim.tv_nsec;
}

uint64_t fileio_mtime_ns(const struct stat *st)
{
	return (uint64_t)st->st_mtim.tv_sec * 1000000000ULL + (uint64_t)st->st_mtim.tv_nsec;
}
