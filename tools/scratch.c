/*
 * scratch.c — the base of `aimctl check` and its scratch copy.
 *
 * A base is a directory holding a group's images as they were right before
 * the first segment checked: a copy of the backing directory taken before
 * the first mount, a remote's (empty) target directory before its first
 * segment, or the end of an earlier check kept with --save.  It must match
 * what it is checked with, or the check would blame the journal for a
 * wrong start: base_match compares it with the first segment's image
 * table, and with the group and LSN a saved base records in its stamp.
 * The check never writes the base: it replays onto a scratch copy made
 * with reflinks where the file system shares blocks (FICLONE; a copy of a
 * 100 GiB image then costs nothing) and as a sparse copy otherwise (only
 * the data extents, SEEK_DATA/SEEK_HOLE, with copy_file_range).
 */
#include "aimctl.h"
#include "fileio.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define JOURNAL_DEFAULT ".aimfs" /* aimfs's journal inside a backing directory */
#define COPY_CHUNK (8u << 20)

/* Entries of a base that are not images: its stamp, and the journal of a
 * backing directory copied whole. */
static bool not_image(const char *rel)
{
	return strcmp(rel, BASE_STAMP) == 0 || strcmp(rel, JOURNAL_DEFAULT) == 0;
}

/* ---- the stamp ---- */

int stamp_write(const char *dir, const uint8_t group[16], uint64_t lsn, uint64_t resync_from)
{
	char path[PATH_MAX], uuid[37];
	FILE *f;

	seg_uuid_format(group, uuid);
	snprintf(path, sizeof path, "%s/%s", dir, BASE_STAMP);
	f = fopen(path, "w");
	if (!f) {
		log_error("%s: %m", path);
		return -1;
	}
	fprintf(f, "# aimctl check --save: the images of this directory as of this LSN\n"
		   "group %s\nlsn %" PRIu64 "\n", uuid, lsn);
	if (resync_from)
		fprintf(f, "# ... inside the resynchronisation whose SYNC_BEGIN has this LSN\n"
			   "resync_from %" PRIu64 "\n", resync_from);
	if (fflush(f) != 0 || fsync(fileno(f)) < 0) {
		log_error("%s: %m", path);
		fclose(f);
		return -1;
	}
	fclose(f);
	return 0;
}

int stamp_read(const char *base, uint8_t group[16], uint64_t *lsn, uint64_t *resync_from)
{
	char path[PATH_MAX], line[256], uuid[64];
	bool have_group = false, have_lsn = false;
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", base, BASE_STAMP);
	if (resync_from)
		*resync_from = 0;
	f = fopen(path, "r");
	if (!f)
		return errno == ENOENT ? 1 : -EINVAL;
	while (fgets(line, sizeof line, f)) {
		if (sscanf(line, "group %63s", uuid) == 1 && seg_uuid_parse(uuid, group) == 0)
			have_group = true;
		else if (sscanf(line, "lsn %" SCNu64, lsn) == 1)
			have_lsn = true;
		else if (resync_from)
			sscanf(line, "resync_from %" SCNu64, resync_from);
	}
	fclose(f);
	if (!have_group || !have_lsn) {
		log_error("base %s: %s does not say which group and LSN the base holds", base, path);
		return -EINVAL;
	}
	return 0;
}

/* ---- matching ---- */

struct walk {
	const char *base;
	const struct seg_header *h;
	bool *seen;          /* per table entry */
	char bad[PATH_MAX];  /* the first file that is not an image */
	const char *why;
};

static struct walk *walking; /* nftw has no context argument */

static int walk_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	struct walk *w = walking;
	const char *rel = path + strlen(w->base);

	(void)flag;
	while (*rel == '/')
		rel++;
	if (!*rel)
		return 0;
	if (ftw->level == 1 && not_image(rel))
		return S_ISDIR(st->st_mode) ? FTW_SKIP_SUBTREE : 0;
	if (S_ISDIR(st->st_mode))
		return 0;
	if (!S_ISREG(st->st_mode)) {
		snprintf(w->bad, sizeof w->bad, "%s", rel);
		w->why = "is neither a regular file nor a directory";
		return FTW_STOP;
	}
	for (uint32_t i = 0; i < w->h->image_count; i++) {
		const struct seg_image *im = &w->h->images[i];

		if (strlen(rel) == im->name_len && memcmp(rel, im->name, im->name_len) == 0) {
			w->seen[i] = true;
			return 0;
		}
	}
	snprintf(w->bad, sizeof w->bad, "%s", rel);
	w->why = "is not an image of the group at that point";
	return FTW_STOP;
}

/* A copy of a backing directory with its journal names its group: in the
 * header of any of its segments (read only: the catalog could not be
 * opened without writing to it). */
static int journal_group_matches(const char *base, const uint8_t group[16])
{
	char dir[PATH_MAX], path[PATH_MAX + 300], have[37], want[37];
	const struct seg_header *h;
	struct seg_view *v = NULL;
	struct dirent *de;
	struct seg_err e;
	uint64_t n;
	DIR *d;
	int r = 0;

	snprintf(dir, sizeof dir, "%s/%s", base, JOURNAL_DEFAULT);
	d = opendir(dir);
	if (!d)
		return 0;
	while (!v && (de = readdir(d)))
		if (seg_parse_file_name(de->d_name, &n) == 0) {
			snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
			if (seg_view_open(path, &v, &e) < 0)
				v = NULL;
		}
	closedir(d);
	if (!v)
		return 0;
	h = seg_view_header(v);
	if (memcmp(h->group, group, 16) != 0) {
		seg_uuid_format(h->group, have);
		seg_uuid_format(group, want);
		log_error("base %s is a copy of a backing directory of group %s (its %s journal"
			  " says so), not of group %s, which these segments belong to", base, have,
			  JOURNAL_DEFAULT, want);
		r = -EINVAL;
	}
	seg_view_free(v);
	return r;
}

int base_match(const char *base, const struct series *s)
{
	struct seg_view *v0 = s->files[0].view;
	const struct seg_header *h = seg_view_header(v0);
	uint64_t first = series_first_lsn(s), stamp_lsn;
	uint8_t stamp_group[16];
	char want[37], have[37];
	struct seg_record r;
	struct walk w = { .base = base, .h = h };
	struct stat st;
	bool sync_first;
	int k;

	if (stat(base, &st) < 0 || !S_ISDIR(st.st_mode)) {
		log_error("base %s: %s", base, stat(base, &st) < 0 ? strerror(errno)
								    : "not a directory");
		return -EINVAL;
	}
	seg_uuid_format(h->group, want);
	k = stamp_read(base, stamp_group, &stamp_lsn, NULL);
	if (k < 0)
		return -EINVAL;
	if (k == 0) {
		seg_uuid_format(stamp_group, have);
		if (memcmp(stamp_group, h->group, 16) != 0) {
			log_error("base %s holds group %s's images (its %s says so), but these segments"
				  " belong to group %s", base, have, BASE_STAMP, want);
			return -EINVAL;
		}
		if (stamp_lsn != first - 1) {
			log_error("base %s holds the images as of LSN %" PRIu64 ", but these segments"
				  " start at LSN %" PRIu64 ": give the segments from LSN %" PRIu64 " on,"
				  " or the base as of LSN %" PRIu64, base, stamp_lsn, first, stamp_lsn + 1,
				  first - 1);
			return -EINVAL;
		}
	}
	if (journal_group_matches(base, h->group) < 0)
		return -EINVAL;

	seg_view_rewind(v0);
	sync_first = seg_view_next(v0, &r) == 1 && r.type == SEG_SYNC_BEGIN;
	seg_view_rewind(v0);
	w.seen = calloc(h->image_count + 1, sizeof *w.seen);
	if (!w.seen)
		return -ENOMEM;
	walking = &w;
	k = nftw(base, walk_one, 32, FTW_PHYS | FTW_ACTIONRETVAL);
	walking = NULL;
	if (k < 0) {
		log_error("base %s: %m", base);
		free(w.seen);
		return -EINVAL;
	}
	if (w.why) {
		log_error("base %s does not match: %s %s (segment %" PRIu64 " starts at LSN %" PRIu64
			  " with %" PRIu32 " image%s in group %s)", base, w.bad, w.why, h->number,
			  first, h->image_count, h->image_count == 1 ? "" : "s", want);
		free(w.seen);
		return -EINVAL;
	}
	for (uint32_t i = 0; i < h->image_count && !sync_first; i++) {
		if (w.seen[i])
			continue;
		log_error("base %s does not match: it lacks image %.*s, which existed at LSN %" PRIu64
			  " (segment %" PRIu64 "'s image table, group %s)", base,
			  (int)h->images[i].name_len, h->images[i].name, first - 1, h->number, want);
		free(w.seen);
		return -EINVAL;
	}
	free(w.seen);
	return 0;
}

/* ---- the copy ---- */

/* Copies [off, off+len) with copy_file_range, or read/write where the
 * kernel cannot. */
static int copy_range(int in, int out, off_t off, off_t len)
{
	char *buf = NULL;
	off_t done = 0;
	int r = 0;

	while (done < len) {
		size_t want = (size_t)(len - done < COPY_CHUNK ? len - done : COPY_CHUNK);
		off_t a = off + done, b = off + done;
		ssize_t n = copy_file_range(in, &a, out, &b, want, 0);

		if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL ||
			      errno == EOPNOTSUPP)) {
			if (!buf && !(buf = malloc(COPY_CHUNK))) {
				r = -ENOMEM;
				break;
			}
			n = fileio_pread_full(NULL, in, buf, want, (uint64_t)(off + done));
			if (n > 0) {
				r = fileio_pwrite_full(NULL, out, buf, (size_t)n, (uint64_t)(off + done));
				if (r < 0)
					break;
			}
		} else if (n < 0) {
			n = -errno;
		}
		if (n < 0) {
			r = (int)n;
			break;
		}
		if (n == 0)
			break; /* the file shrank under us */
		done += n;
	}
	free(buf);
	return r;
}

/* Copies in to out: reflink, else the data extents only. */
static int copy_file(int in, int out, off_t size, bool *reflinked)
{
	off_t pos = 0;
	int r;

	if (ioctl(out, FICLONE, in) == 0) {
		*reflinked = true;
		return 0;
	}
	*reflinked = false;
	if (ftruncate(out, size) < 0)
		return -errno;
	while (pos < size) {
		off_t data = lseek(in, pos, SEEK_DATA), hole;

		if (data < 0 && errno == ENXIO)
			break; /* only a hole is left */
		if (data < 0) {
			/* no SEEK_DATA here: copy everything */
			return copy_range(in, out, 0, size);
		}
		hole = lseek(in, data, SEEK_HOLE);
		if (hole < 0)
			hole = size;
		r = copy_range(in, out, data, hole - data);
		if (r < 0)
			return r;
		pos = hole;
	}
	return 0;
}

struct copy {
	const char *base;
	const char *dest;
	int reflinks, copies;
	int err;
};

static struct copy *copying;

static int copy_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	struct copy *c = copying;
	const char *rel = path + strlen(c->base);
	char to[PATH_MAX];
	bool reflinked;
	int in, out, r;

	(void)flag;
	while (*rel == '/')
		rel++;
	if (!*rel)
		return 0;
	if (ftw->level == 1 && not_image(rel))
		return S_ISDIR(st->st_mode) ? FTW_SKIP_SUBTREE : 0;
	snprintf(to, sizeof to, "%s/%s", c->dest, rel);
	if (S_ISDIR(st->st_mode)) {
		if (mkdir(to, st->st_mode & 07777) < 0 && errno != EEXIST) {
			c->err = -errno;
			log_error("scratch copy: %s: %m", to);
			return FTW_STOP;
		}
		return 0;
	}
	in = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (in < 0) {
		c->err = -errno;
		log_error("base %s: %m", path);
		return FTW_STOP;
	}
	out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st->st_mode & 07777);
	if (out < 0) {
		c->err = -errno;
		log_error("scratch copy: %s: %m", to);
		close(in);
		return FTW_STOP;
	}
	r = copy_file(in, out, st->st_size, &reflinked);
	close(in);
	if (close(out) < 0 && r == 0)
		r = -errno;
	if (r < 0) {
		c->err = r;
		log_error("scratch copy of %s to %s: %s", path, to, strerror(-r));
		return FTW_STOP;
	}
	if (reflinked)
		c->reflinks++;
	else
		c->copies++;
	return 0;
}

/* A new directory for the copy: in parent, else next to base, else in
 * /var/tmp.  Returns it (malloc'd) or NULL after logging. */
static char *new_dir(const char *base, const char *parent)
{
	char tmpl[PATH_MAX + 32], abs_base[PATH_MAX], *slash, *d;

	if (parent) {
		snprintf(tmpl, sizeof tmpl, "%s/aimctl-check.XXXXXX", parent);
		d = mkdtemp(tmpl);
		if (!d) {
			log_error("--scratch %s: %m", parent);
			return NULL;
		}
		return realpath(d, NULL);
	}
	/* Next to the base, so that reflinks can share its blocks. */
	if (realpath(base, abs_base)) {
		slash = strrchr(abs_base, '/');
		if (slash && slash != abs_base) {
			*slash = '\0';
			snprintf(tmpl, sizeof tmpl, "%s/.aimctl-check.XXXXXX", abs_base);
			d = mkdtemp(tmpl);
			if (d)
				return strdup(d);
		}
	}
	snprintf(tmpl, sizeof tmpl, "/var/tmp/aimctl-check.XXXXXX");
	d = mkdtemp(tmpl);
	if (!d) {
		log_error("scratch directory in /var/tmp: %m (choose one with --scratch)");
		return NULL;
	}
	return strdup(d);
}

int scratch_make(const char *base, const char *parent, char **dir, const char **how)
{
	struct copy c = { .base = base };
	char *d = new_dir(base, parent);
	int k;

	if (!d)
		return -EIO;
	c.dest = d;
	copying = &c;
	k = nftw(base, copy_one, 32, FTW_PHYS | FTW_ACTIONRETVAL);
	copying = NULL;
	if (k < 0 || c.err) {
		if (!c.err)
			log_error("copying base %s: %m", base);
		scratch_remove(d);
		free(d);
		return c.err ? c.err : -EIO;
	}
	*how = c.reflinks && c.copies ? "reflink and sparse copy" :
	       c.reflinks ? "reflink" : c.copies ? "sparse copy" : "nothing to copy";
	*dir = d;
	return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if ((flag == FTW_DP ? rmdir(path) : unlink(path)) < 0 && errno != ENOENT)
		log_warn("removing %s: %m", path);
	return 0;
}

void scratch_remove(const char *dir)
{
	if (dir)
		nftw(dir, rm_one, 32, FTW_DEPTH | FTW_PHYS);
}
