/*
 * inbox.c — the files of one group's inbox directory (inbox/<group>/):
 * listing segment files in order, mapping and validating one, telling a
 * file that is still being written from a damaged one, and moving a file
 * aside into quarantine/ or applied/.  Every function works on the
 * directory's fd, so that a rename of the inbox path cannot redirect it.
 */
#include "remote_i.h"
#include "clock.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* How long a file under a segment's name must stay unchanged before a
 * failed validation counts (see inbox_settling). */
#define SETTLE_NS (5ULL * 1000000000ULL)

int inbox_open_fd(int dirfd, const char *name)
{
	struct stat held, now;
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	/* Taken for reuse since it was opened: gone (recycle.c). */
	if (flock(fd, LOCK_SH | LOCK_NB) < 0) {
		int e = errno;

		close(fd);
		return e == EWOULDBLOCK ? -ENOENT : -e;
	}
	/* Moved away (applied, kept) before the lock: gone as well. */
	if (fstat(fd, &held) < 0 || fstatat(dirfd, name, &now, AT_SYMLINK_NOFOLLOW) < 0 ||
	    held.st_dev != now.st_dev || held.st_ino != now.st_ino) {
		close(fd);
		return -ENOENT;
	}
	return fd;
}

void inbox_file_close(struct inbox_file *f)
{
	seg_view_free(f->v);
	if (f->fd >= 0)
		close(f->fd);
	memset(f, 0, sizeof *f);
	f->fd = -1;
}

/*
 * Maps and validates the segment file name of the group directory
 * (seg_view_open_fd: its payloads hashed with pread, not through the
 * mapping, unless the receiver's or a puller's hashes of them are in
 * hand: prechecked.c), keeping it open for the applier's pread of them
 * (applier_set_source) and of the records' headers as it iterates.
 * Returns 0 with f filled, -EBADMSG with the decoder's reason in why, or
 * another -errno (also explained in why).
 */
int inbox_open(int dirfd, const char *name, struct remote *rm, struct inbox_file *f, char *why,
	       size_t whylen)
{
	struct seg_precheck *pre = NULL;
	bool first = false;
	struct seg_err e;
	struct stat st;
	int fd, r;

	memset(f, 0, sizeof *f);
	f->fd = -1;
	fd = inbox_open_fd(dirfd, name);
	if (fd < 0) {
		r = fd;
		snprintf(why, whylen, "cannot open: %s", strerror(-r));
		return r;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		snprintf(why, whylen, "not a regular file");
		return -EBADMSG;
	}
	f->fd = fd;
	f->len = (size_t)st.st_size;
	if (rm && f->len)
		pre = prechecked_find(&rm->prechecked, &st, &first);
	/* an empty file is refused by the decoder's own words */
	r = f->len ? seg_view_open_fd_prechecked(fd, pre, &f->v, &e)
		   : seg_view_new("", 0, &f->v, &e);
	if (first && r == 0 && seg_view_prechecked(f->v))
		atomic_fetch_add_explicit(&rm->rx.checks_reused, 1, memory_order_relaxed);
	seg_precheck_free(pre);
	if (r == -EBADMSG)
		snprintf(why, whylen, "not a valid segment: %s (at byte %" PRIu64 ")", e.msg,
			 e.offset);
	else if (r < 0)
		snprintf(why, whylen, "%s", e.msg[0] ? e.msg : strerror(-r));
	if (r < 0)
		inbox_file_close(f);
	else
		seg_view_iterate_from(f->v, fd); /* headers with pread too; fd outlives it */
	return r;
}

/* A read lease is granted only when no one has the file open for writing;
 * it is dropped at once (SIGIO is ignored, so a writer opening it
 * meanwhile waits microseconds, not for a signal). */
int inbox_has_writer(int dirfd, const char *name)
{
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC), e;

	if (fd < 0)
		return -errno;
	if (fcntl(fd, F_SETLEASE, F_RDLCK) == 0) {
		fcntl(fd, F_SETLEASE, F_UNLCK);
		close(fd);
		return 0;
	}
	e = errno;
	close(fd);
	return e == EAGAIN ? 1 : -e;
}

/*
 * A file that fails validation may still be being written under its final
 * name (cp onto the inbox, a WebDAV server without a temporary name).
 * Returns true if it is, and arranges another look (its IN_CLOSE_WRITE
 * usually comes first).  Where leases are not available (not the file's
 * owner without CAP_LEASE, some file systems), a file that changed within
 * SETTLE_NS gets the benefit of the doubt instead.
 */
bool inbox_settling(int dirfd, const char *group, const char *name, uint64_t *recheck_ns)
{
	struct stat st;
	uint64_t mtime, now;
	int w = inbox_has_writer(dirfd, name);

	if (w == 0)
		return false;
	if (w == 1) {
		*recheck_ns = clock_mono_ns() + 1000000000ULL;
		log_debug("group %s: %s is still being written", group, name);
		return true;
	}
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return false;
	mtime = (uint64_t)st.st_mtim.tv_sec * 1000000000ULL + (uint64_t)st.st_mtim.tv_nsec;
	now = clock_wall_ns();
	if (mtime + SETTLE_NS <= now || mtime > now + SETTLE_NS)
		return false;
	*recheck_ns = clock_mono_ns() + (mtime + SETTLE_NS - now);
	log_debug("group %s: %s is not a whole segment yet; looking again when it settles",
		  group, name);
	return true;
}

/*
 * seg_file_open for a file that may still be arriving: -EAGAIN if it fails
 * validation while still being written (another look is arranged).  A
 * file that failed while its writer was finishing is validated again once
 * no one writes it, so a segment is never put aside for having been read
 * a moment too early.
 */
int inbox_open_settled(int dirfd, const char *group, const char *name, struct remote *rm,
		       struct inbox_file *f, uint64_t *recheck_ns, char *why, size_t whylen)
{
	int r = inbox_open(dirfd, name, rm, f, why, whylen);

	if (r != -EBADMSG)
		return r;
	if (inbox_settling(dirfd, group, name, recheck_ns))
		return -EAGAIN;
	return inbox_open(dirfd, name, rm, f, why, whylen);
}

/* Opens (creating) the subdirectory sub of the group directory. */
static int open_subdir(int dirfd, const char *sub)
{
	int fd;

	if (mkdirat(dirfd, sub, 0750) < 0 && errno != EEXIST)
		return -errno;
	fd = openat(dirfd, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/*
 * Moves name into the subdirectory sub under its own name, or under
 * name.<ns> if that is taken (quarantine keeps every copy).  Returns the
 * name used in out, 0 or -errno.
 */
int inbox_move_aside(int dirfd, const char *name, const char *sub, bool keep_all, char *out,
		     size_t outlen)
{
	int dfd = open_subdir(dirfd, sub), r;

	if (dfd < 0)
		return dfd;
	snprintf(out, outlen, "%s", name);
	r = renameat2(dirfd, name, dfd, out, keep_all ? RENAME_NOREPLACE : 0);
	if (r < 0 && errno == EEXIST) {
		snprintf(out, outlen, "%s.%" PRIu64, name, clock_wall_ns());
		r = renameat2(dirfd, name, dfd, out, RENAME_NOREPLACE);
	}
	r = r < 0 ? -errno : 0;
	if (r == 0) {
		fsync(dfd);
		fsync(dirfd);
	}
	close(dfd);
	return r;
}

static int by_number(const void *x, const void *y)
{
	const struct inbox_entry *a = x, *b = y;

	return a->number < b->number ? -1 : a->number > b->number;
}

/* Lists the segment files of the group directory, in order. */
int inbox_scan(int dirfd, struct inbox_entry **out, size_t *n)
{
	struct inbox_entry *list = NULL;
	size_t count = 0, cap = 0;
	struct dirent *de;
	DIR *d;
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || !(d = fdopendir(fd))) {
		int r = -errno;

		if (fd >= 0)
			close(fd);
		return r;
	}
	while ((de = readdir(d))) {
		struct stat st;
		uint64_t num;

		if (seg_parse_file_name(de->d_name, &num) < 0)
			continue;
		if (fstatat(dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue; /* gone meanwhile */
		if (count == cap) {
			struct inbox_entry *nl = realloc(list, (cap ? cap * 2 : 16) * sizeof *nl);

			if (!nl) {
				free(list);
				closedir(d);
				return -ENOMEM;
			}
			list = nl;
			cap = cap ? cap * 2 : 16;
		}
		list[count].number = num;
		list[count].size = (uint64_t)st.st_size;
		list[count].mtime_ns = (uint64_t)st.st_mtim.tv_sec * 1000000000ULL +
				       (uint64_t)st.st_mtim.tv_nsec;
		count++;
	}
	closedir(d);
	if (count > 1)
		qsort(list, count, sizeof *list, by_number);
	*out = list;
	*n = count;
	return 0;
}

int inbox_tmp_open(struct remote *r)
{
	int fd;

	if (mkdirat(r->inbox_fd, INBOX_TMP, 0750) < 0 && errno != EEXIST) {
		log_error("cannot create %s/%s: %m", r->cfg.inbox, INBOX_TMP);
		return -errno;
	}
	fd = openat(r->inbox_fd, INBOX_TMP, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		log_error("cannot open %s/%s: %m", r->cfg.inbox, INBOX_TMP);
		return -errno;
	}
	return fd;
}

bool inbox_run_reaches(const struct inbox_entry *e, size_t n, uint64_t applied, uint64_t number)
{
	uint64_t expect = applied + 1;
	bool held = false;

	if (number <= expect)
		return true;
	/* in number order: walk the run that starts at expect */
	for (size_t i = 0; i < n; i++) {
		if (e[i].number <= applied || e[i].number >= number)
			continue;
		held = true;
		if (e[i].number == expect)
			expect++;
	}
	return !held || expect == number;
}
