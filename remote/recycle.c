/*
 * recycle.c — applied segment files kept for the receiver to write the
 * next uploads over (remote_i.h, struct inbox_free).
 *
 * A byte written into a page the page cache already holds costs a copy; a
 * byte written into a new page also costs the page's allocation, and on a
 * VM whose balloon hands freed pages back to the host, a host fault for
 * each page (bench/README.md: 1 GB/s into new pages, 4 GB/s over cached
 * ones, here).  An applied segment's file has just been read by its group,
 * so its pages are cached: instead of unlinking it, a group moves it into
 * inbox/.free, and the receiver renames it to its next upload's temporary
 * name and writes over it (cutting it to the upload's last page as it
 * starts when the length is announced, and to the length at the end),
 * as aimfs's journal writes new segments over pruned ones and PostgreSQL
 * its WAL.
 *
 * They are the inbox's space: one is kept only while the inbox's free
 * space stays above --inbox-reserve by twice the file's size, at most
 * INBOX_FREE_MAX of them, and the receiver drops them all before it would
 * refuse an upload for want of room (a group stopped short of space
 * too).  inbox/.free is made when the first file is kept and emptied at
 * start.
 *
 * Only a file no one else writes is kept (ours, one link, no writer), and
 * one is written over only if no one reads it: every reader of inbox
 * files (the receiver comparing a copy or answering a GET, the groups)
 * opens them with inbox_open_fd, which holds a shared flock and then
 * checks that the name still names the file; inbox_free_take takes a
 * kept file only with an exclusive flock and renames it away under that
 * lock, leaving one still read to its reader (unlinked, it lives on for
 * it).  So a reader sees the segment it opened, whole, or nothing.
 */
#include "remote_i.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

static void free_name(uint64_t seq, char *out, size_t len)
{
	snprintf(out, len, "free.%" PRIu64, seq);
}

/* Unlinks every regular file of directory fd. */
static void empty_dir(int fd)
{
	struct dirent *de;
	int dfd = dup(fd);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;

	if (!d) {
		if (dfd >= 0)
			close(dfd);
		return;
	}
	while ((de = readdir(d)))
		if (de->d_type == DT_REG || de->d_type == DT_UNKNOWN)
			unlinkat(fd, de->d_name, 0); /* a directory stays (EISDIR) */
	closedir(d);
}

void inbox_free_init(struct remote *r)
{
	struct inbox_free *f = &r->free;

	f->dirfd = openat(r->inbox_fd, INBOX_FREE, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (f->dirfd >= 0)
		empty_dir(f->dirfd); /* a run before this one's: their pages may be gone */
}

void inbox_free_close(struct remote *r)
{
	if (r->free.dirfd >= 0)
		close(r->free.dirfd);
	r->free.dirfd = -1;
}

/* Free bytes of the inbox's file system, or 0 if unknown. */
static uint64_t avail(struct remote *r)
{
	struct statvfs sv;

	if (fstatvfs(r->inbox_fd, &sv) < 0)
		return 0;
	return (uint64_t)sv.f_bavail * sv.f_frsize;
}

bool inbox_free_keep(struct remote *r, int dirfd, const char *name)
{
	struct inbox_free *f = &r->free;
	char out[32];
	struct stat st;
	uint64_t room;
	bool kept = false;

	if (!r->cfg.listen) /* no receiver to take them */
		return false;
	/* Only a file no one else can write through: not another name of
	 * it, not a writer that still has it open, not someone else's. */
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode) ||
	    st.st_nlink != 1 || st.st_uid != geteuid() || inbox_has_writer(dirfd, name) != 0)
		return false;
	pthread_mutex_lock(&f->lock);
	room = avail(r);
	if (f->n == INBOX_FREE_MAX || room < r->cfg.lim.inbox_reserve ||
	    room - r->cfg.lim.inbox_reserve < 2 * (uint64_t)st.st_size)
		goto out;
	if (f->dirfd < 0) {
		if (mkdirat(r->inbox_fd, INBOX_FREE, 0750) < 0 && errno != EEXIST)
			goto out;
		f->dirfd = openat(r->inbox_fd, INBOX_FREE,
				  O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (f->dirfd < 0)
			goto out;
	}
	free_name(f->next_seq, out, sizeof out);
	if (renameat(dirfd, name, f->dirfd, out) < 0)
		goto out;
	f->seq[f->n] = f->next_seq++;
	f->size[f->n] = (uint64_t)st.st_size;
	f->n++;
	atomic_fetch_add(&r->rx.free_files, 1);
	atomic_fetch_add(&r->rx.free_bytes, (uint64_t)st.st_size);
	kept = true;
out:
	pthread_mutex_unlock(&f->lock);
	return kept;
}

int inbox_free_take(struct remote *r, int tmp_fd, const char *tmpname)
{
	struct inbox_free *f = &r->free;
	char name[32];
	int fd = -ENOENT;

	pthread_mutex_lock(&f->lock);
	/* the newest: the likeliest to be still cached */
	while (f->n && fd < 0) {
		f->n--;
		atomic_fetch_sub(&r->rx.free_files, 1);
		atomic_fetch_sub(&r->rx.free_bytes, f->size[f->n]);
		free_name(f->seq[f->n], name, sizeof name);
		fd = openat(f->dirfd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
		/* A reader that opened it under its segment's name before it
		 * was kept still holds it (inbox_open_fd): left to it. */
		if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0 &&
		    renameat2(f->dirfd, name, tmp_fd, tmpname, RENAME_NOREPLACE) == 0) {
			/* Readers that come later find it gone from that name. */
			flock(fd, LOCK_UN);
			atomic_fetch_add(&r->rx.reused, 1);
			break;
		}
		if (fd >= 0)
			close(fd);
		fd = -ENOENT;
		unlinkat(f->dirfd, name, 0);
	}
	pthread_mutex_unlock(&f->lock);
	return fd;
}

uint64_t inbox_free_drop(struct remote *r)
{
	struct inbox_free *f = &r->free;
	uint64_t bytes = 0;
	char name[32];

	pthread_mutex_lock(&f->lock);
	while (f->n) {
		f->n--;
		free_name(f->seq[f->n], name, sizeof name);
		if (unlinkat(f->dirfd, name, 0) == 0)
			bytes += f->size[f->n];
		atomic_fetch_sub(&r->rx.free_files, 1);
		atomic_fetch_sub(&r->rx.free_bytes, f->size[f->n]);
	}
	pthread_mutex_unlock(&f->lock);
	return bytes;
}
