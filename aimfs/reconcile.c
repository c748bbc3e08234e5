/*
 * reconcile.c — recovery's second half: match the backing tree against the
 * catalog, redo the journal's tail onto the right files, and journal every
 * difference the crash (or someone working behind the mount's back) left.
 *
 * Images are matched by inode number first (the catalog keeps each image's
 * source inode, from its CREATE record), then by name for images whose
 * inode is unknown.  So an image renamed at the moment of a kill -9 is
 * recognised under its new name and gets a RENAME record, not an UNLINK
 * plus a copy, and a name that now holds a different file is not mistaken
 * for the image that used to hold it.  An inode number alone is not an
 * identity: a file copied in while aimfs was stopped may reuse the number
 * of an image removed meanwhile.  Where the catalog knows the image's
 * birth time (noted at each recovery and unmount), a file born at another
 * time is another file; and a file that has the image's name as well as
 * its inode number is matched before any other (two filesystems mounted
 * in the backing tree may both have inode 12).  After a clean unmount, a
 * matched image whose ctime is not the one noted then was changed while
 * aimfs was stopped: it is handed over whole (handover.c).  After a crash
 * there is no such note: an image whose ctime is later than the last
 * change the crashed mount made (recovery.c) by more than CHANGED_SLACK_NS
 * was changed since, and is handed over whole too.
 *
 * Journaling order, so that every record is valid where it lands:
 *   MKDIR of directories the catalog lacks (parents first),
 *   RENAME of images found under another name (via a temporary name when
 *          renames form a cycle),
 *   UNLINK of images that are gone,
 *   CREATE + content of files never journaled,
 *   RMDIR of directories that are gone (children first).
 */
#include "journal_i.h"
#include "io_i.h"
#include "apply.h"
#include "catalog.h"
#include "fileio.h"
#include "log.h"
#include "transport.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SCAN_DEPTH_MAX 64
/* How long after its record an image's own write may reach the backing
 * file (a thread descheduled between the two).  A change made by someone
 * else within it after a crash goes unseen, as it would by a mtime
 * comparison; one that lands later costs the image a comparison with its
 * replicas, never a miss. */
#define CHANGED_SLACK_NS (2 * 1000000000ULL)

struct cat_image {
	uint32_t id;
	char *name;        /* name in the catalog (the journal's view) */
	uint64_t ino;      /* 0 if unknown */
	uint64_t born;     /* birth time when last seen, 0 if unknown */
	uint64_t closed_ctime; /* ctime at the last unmount, 0 if unknown */
	char *found;       /* backing path it was matched to, or NULL */
	dev_t dev;
	bool changed;      /* changed while aimfs was stopped (by its ctime) */
};

struct tree_file {
	char *path;
	dev_t dev;
	ino_t ino;
	uint64_t born;     /* 0 if the filesystem keeps none */
	uint64_t ctime;
	bool matched;
};

struct strv {
	char **v;
	size_t n, cap;
};

struct recon {
	struct journal *j;
	struct catalog *cat;
	dev_t hide_dev;
	ino_t hide_ino;
	struct cat_image *imgs;
	size_t nimgs, capimgs;
	struct tree_file *files;
	size_t nfiles, capfiles;
	struct strv tree_dirs, cat_dirs;
	bool after_unmount;  /* the ctimes noted then are the reference */
	uint64_t stopped_ns; /* else the crashed mount's last change, 0: unknown */
};

static int strv_add(struct strv *s, const char *str)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 32;
		char **nv = realloc(s->v, cap * sizeof *nv);

		if (!nv)
			return -ENOMEM;
		s->v = nv;
		s->cap = cap;
	}
	s->v[s->n] = strdup(str);
	return s->v[s->n++] ? 0 : -ENOMEM;
}

static void strv_free(struct strv *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool strv_has(const struct strv *s, const char *str)
{
	return s->n && bsearch(&str, s->v, s->n, sizeof *s->v, cmp_str) != NULL;
}

/* ---- the backing tree ---- */

static int add_file(struct recon *rc, const char *path, const struct stat *st, uint64_t born)
{
	if (!seg_name_valid(path, strlen(path))) {
		log_warn("%s/%s: name cannot be mirrored; the file is ignored",
			 rc->j->backing_dir, path);
		return 0;
	}
	if (st->st_nlink > 1) {
		for (size_t i = 0; i < rc->nfiles; i++) {
			if (rc->files[i].ino == st->st_ino && rc->files[i].dev == st->st_dev) {
				log_warn("%s/%s is a hard link to %s; only one name is mirrored",
					 rc->j->backing_dir, path, rc->files[i].path);
				return 0;
			}
		}
	}
	if (rc->nfiles == rc->capfiles) {
		size_t cap = rc->capfiles ? rc->capfiles * 2 : 64;
		struct tree_file *nf = realloc(rc->files, cap * sizeof *nf);

		if (!nf)
			return -ENOMEM;
		rc->files = nf;
		rc->capfiles = cap;
	}
	rc->files[rc->nfiles] = (struct tree_file){ .path = strdup(path), .dev = st->st_dev,
						    .ino = st->st_ino, .born = born,
						    .ctime = fileio_ctime_ns(st) };
	return rc->files[rc->nfiles++].path ? 0 : -ENOMEM;
}

static int scan_dir(struct recon *rc, int rootfd, char *path, size_t plen, int depth)
{
	struct dirent *de;
	DIR *d;
	int fd, r = 0;

	if (depth > SCAN_DEPTH_MAX) {
		log_warn("%s/%s: directories nested deeper than %d levels are not mirrored",
			 rc->j->backing_dir, path, SCAN_DEPTH_MAX);
		return 0;
	}
	fd = openat(rootfd, plen ? path : ".", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while (!r && (de = readdir(d))) {
		size_t nlen = strlen(de->d_name), sub = plen + (plen ? 1 : 0) + nlen;
		struct stat st;

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (sub > SEG_NAME_MAX)
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		if (st.st_dev == rc->hide_dev && st.st_ino == rc->hide_ino)
			continue; /* the journal itself */
		if (plen)
			path[plen] = '/';
		memcpy(path + plen + (plen ? 1 : 0), de->d_name, nlen + 1);
		if (S_ISDIR(st.st_mode)) {
			if (seg_name_valid(path, sub))
				r = strv_add(&rc->tree_dirs, path);
			if (r == 0)
				r = scan_dir(rc, rootfd, path, sub, depth + 1);
		} else if (S_ISREG(st.st_mode)) {
			r = add_file(rc, path, &st, fileio_born_ns(dirfd(d), de->d_name, NULL));
		}
		path[plen] = '\0';
	}
	closedir(d);
	return r;
}

/* ---- matching ---- */

static int load_image(void *ctx, uint32_t id, const char *name, uint64_t ino, uint64_t born,
		      uint64_t closed_ctime)
{
	struct recon *rc = ctx;

	if (rc->nimgs == rc->capimgs) {
		size_t cap = rc->capimgs ? rc->capimgs * 2 : 64;
		struct cat_image *ni = realloc(rc->imgs, cap * sizeof *ni);

		if (!ni)
			return -ENOMEM;
		rc->imgs = ni;
		rc->capimgs = cap;
	}
	rc->imgs[rc->nimgs] = (struct cat_image){ .id = id, .name = strdup(name), .ino = ino,
						  .born = born, .closed_ctime = closed_ctime };
	return rc->imgs[rc->nimgs++].name ? 0 : -ENOMEM;
}

static int load_dir(void *ctx, const char *name)
{
	return strv_add(ctx, name);
}

/* Whether file f can be image im by its inode (and name, if by_name). */
static bool same_file(const struct cat_image *im, const struct tree_file *f, bool by_name)
{
	if (im->found || !im->ino || im->ino != (uint64_t)f->ino)
		return false;
	if (im->born && f->born && im->born != f->born)
		return false; /* the number was reused by another file */
	return !by_name || strcmp(im->name, f->path) == 0;
}

static void bind(const struct recon *rc, struct cat_image *im, struct tree_file *f)
{
	im->found = f->path;
	im->dev = f->dev;
	if (rc->after_unmount)
		im->changed = im->closed_ctime && f->ctime != im->closed_ctime;
	else
		im->changed = rc->stopped_ns && f->ctime > rc->stopped_ns + CHANGED_SLACK_NS;
	f->matched = true;
}

static void match(struct recon *rc)
{
	/* By inode and name: the same file where it was; then by inode: the
	 * same file, whatever its name now. */
	for (int by_name = 1; by_name >= 0; by_name--) {
		for (size_t f = 0; f < rc->nfiles; f++) {
			if (rc->files[f].matched)
				continue;
			for (size_t i = 0; i < rc->nimgs; i++) {
				if (same_file(&rc->imgs[i], &rc->files[f], by_name)) {
					bind(rc, &rc->imgs[i], &rc->files[f]);
					break;
				}
			}
		}
	}
	/* By name, only for images whose inode the catalog never learnt. */
	for (size_t f = 0; f < rc->nfiles; f++) {
		if (rc->files[f].matched)
			continue;
		for (size_t i = 0; i < rc->nimgs; i++) {
			struct cat_image *im = &rc->imgs[i];

			if (!im->found && !im->ino && strcmp(im->name, rc->files[f].path) == 0) {
				bind(rc, im, &rc->files[f]);
				break;
			}
		}
	}
}

/* ---- redo ---- */

static const char *found_path(struct recon *rc, uint32_t id)
{
	for (size_t i = 0; i < rc->nimgs; i++)
		if (rc->imgs[i].id == id)
			return rc->imgs[i].found;
	return NULL;
}

static int redo_segment(struct recon *rc, uint64_t n, uint64_t w, uint64_t *redone)
{
	struct journal *j = rc->j;
	char name[SEG_FILE_NAME_LEN + 8], path[4200];
	struct seg_view *v;
	struct seg_record rec;
	struct seg_err err;
	uint32_t cur_id = 0;
	int fd = -1, r;

	seg_file_name(n, SEG_FILE_SUFFIX, name);
	snprintf(path, sizeof path, "%s/%s", j->dir, name);
	r = seg_view_open(path, &v, &err);
	if (r < 0) {
		log_error("journal %s: segment %s is damaged: %s", j->dir, name, err.msg);
		return r;
	}
	while (seg_view_next(v, &rec) == 1) {
		char msg[256];

		if (rec.lsn <= w || rec.type < SEG_WRITE || rec.type > SEG_ALLOC)
			continue;
		if (rec.image != cur_id) {
			const char *p;

			/* the redo is durable by these syncs: the checkpoint that
			 * ends recovery may not cover this file's filesystem */
			if (fd >= 0 && aimfs_io.fsync_fn(fd) < 0) {
				r = -errno;
				log_error("journal %s: syncing what the redo wrote: %m", j->dir);
				close(fd);
				fd = -1;
				break;
			}
			if (fd >= 0)
				close(fd);
			fd = -1;
			cur_id = rec.image;
			/* The file the image is now, wherever a crash left it. */
			p = found_path(rc, rec.image);
			if (p)
				fd = openat(j->cfg.backing_fd, p, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
			if (p && fd < 0 && errno != ENOENT) {
				r = -errno;
				log_error("journal %s: cannot open %s to redo LSN %" PRIu64 ": %m",
					  j->dir, p, rec.lsn);
				break;
			}
		}
		if (fd < 0)
			continue; /* gone since: nothing to redo */
		r = apply_record_data(fd, &rec, false, 0, msg, sizeof msg);
		if (r < 0) {
			log_error("journal %s: redoing LSN %" PRIu64 " onto the backing files: %s",
				  j->dir, rec.lsn, msg);
			break;
		}
		(*redone)++;
	}
	if (fd >= 0) {
		if (aimfs_io.fsync_fn(fd) < 0 && r == 0)
			r = -errno;
		close(fd);
	}
	seg_view_free(v);
	return r;
}

/* ---- journaling the differences ---- */

static bool taken_by_other(struct journal *j, const char *name, struct image *self)
{
	struct image *other = registry_find_name(j, name);

	return other && other != self;
}

/* Renames images found under another name.  Only renames whose target is
 * free (or held by an image that is gone) can go; a cycle is broken by
 * moving one image to a temporary name first. */
static int journal_renames(struct recon *rc)
{
	struct journal *j = rc->j;
	bool progress = true;
	int r = 0;

	while (progress && !r) {
		bool pending = false;

		progress = false;
		for (size_t i = 0; i < rc->nimgs && !r; i++) {
			struct cat_image *ci = &rc->imgs[i];
			struct image *im, *victim;

			if (!ci->found)
				continue;
			im = registry_find_id(j, ci->id);
			if (!im || strcmp(im->name, ci->found) == 0)
				continue;
			victim = registry_find_name(j, ci->found);
			if (victim && found_path(rc, victim->id)) {
				pending = true; /* its holder moves too: later */
				continue;
			}
			log_info("image %s is %s now (renamed without its record); journaling the"
				 " rename", im->name, ci->found);
			r = journal_rename(j, im, ci->found, victim);
			progress = true;
		}
		if (!r && pending && !progress) {
			/* a cycle: park the first pending image under a temporary name */
			for (size_t i = 0; i < rc->nimgs; i++) {
				struct cat_image *ci = &rc->imgs[i];
				struct image *im = ci->found ? registry_find_id(j, ci->id) : NULL;
				char tmp[SEG_NAME_MAX + 1];

				if (!im || strcmp(im->name, ci->found) == 0)
					continue;
				snprintf(tmp, sizeof tmp, "%s.aim-recovery-%u", im->name, im->id);
				if (taken_by_other(j, tmp, im))
					return -EEXIST;
				r = journal_rename(j, im, tmp, NULL);
				progress = true;
				break;
			}
		}
	}
	return r;
}

static int journal_adoptions(struct recon *rc)
{
	struct journal *j = rc->j;
	int r = 0;

	for (size_t f = 0; f < rc->nfiles && !r; f++) {
		struct image *im;
		struct stat st;
		int fd;

		if (rc->files[f].matched)
			continue;
		fd = openat(j->cfg.backing_fd, rc->files[f].path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &st) < 0) {
			r = -errno;
			log_error("cannot read %s/%s: %m", j->backing_dir, rc->files[f].path);
		} else {
			r = journal_adopt(j, rc->files[f].path, fd, &st, &im);
			if (r == 0)
				journal_image_put(j, im);
		}
		if (fd >= 0)
			close(fd);
	}
	return r;
}

/* A matched image whose ctime says it was changed while aimfs was stopped
 * (written, truncated, copied over in place): its replicas no longer match
 * it, so it is handed over whole. */
static int hand_over_changed(struct recon *rc)
{
	struct suspect_extent *v = calloc(rc->nimgs + 1, sizeof *v);
	size_t n = 0;
	int r = 0;

	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < rc->nimgs; i++) {
		const struct cat_image *ci = &rc->imgs[i];
		char name[SEG_NAME_MAX + 1];

		if (!ci->changed)
			continue;
		handover_image_name(rc->j, ci->id, name, sizeof name);
		if (!name[0])
			continue;
		if (rc->after_unmount)
			log_warn("image %s changed while aimfs was stopped (its ctime is not the"
				 " one it had at the last unmount)", name);
		else
			log_warn("image %s changed while aimfs was stopped (its ctime is later"
				 " than the last change the stopped mount made)", name);
		v[n++] = (struct suspect_extent){ .image = ci->id, .off = 0,
						  .len = SUSPECT_TO_THE_END };
	}
	if (n)
		r = handover_recover(rc->j, rc->cat, v, n, DEST_REASON_CHANGED_OFFLINE,
				     false);
	free(v);
	return r;
}

static int start_baseline(struct recon *rc)
{
	struct journal *j = rc->j;
	int r = 0;

	for (size_t f = 0; f < rc->nfiles && !r; f++) {
		struct image *im = registry_add(j, j->next_image_id, rc->files[f].path,
						rc->files[f].dev, rc->files[f].ino);

		r = im ? catalog_image_add(rc->cat, im->id, im->name, (uint64_t)im->ino) : -ENOMEM;
		rc->files[f].matched = true;
	}
	for (size_t d = 0; d < rc->tree_dirs.n && !r; d++)
		r = catalog_dir_add(rc->cat, rc->tree_dirs.v[d]);
	if (r == 0)
		r = catalog_meta_set(rc->cat, "baseline", "done");
	if (r == 0 && (rc->nfiles || rc->tree_dirs.n))
		log_info("group starts from the %zu images (and %zu directories) found in %s",
			 rc->nfiles, rc->tree_dirs.n, j->backing_dir);
	return r;
}

static int reconcile(struct recon *rc, bool baseline)
{
	struct journal *j = rc->j;
	int r = 0;

	if (baseline)
		return start_baseline(rc);
	for (size_t d = 0; d < rc->tree_dirs.n && !r; d++) {
		if (strv_has(&rc->cat_dirs, rc->tree_dirs.v[d]))
			continue;
		log_info("directory %s has no record; journaling it", rc->tree_dirs.v[d]);
		r = journal_mkdir(j, rc->tree_dirs.v[d], 0755);
	}
	if (r == 0)
		r = journal_renames(rc);
	for (size_t i = 0; i < rc->nimgs && !r; i++) {
		struct image *im = rc->imgs[i].found ? NULL : registry_find_id(j, rc->imgs[i].id);

		if (!im)
			continue;
		log_info("image %s is gone from %s; journaling its removal", im->name,
			 j->backing_dir);
		r = journal_unlink(j, im);
	}
	if (r == 0)
		r = journal_adoptions(rc);
	for (size_t d = rc->cat_dirs.n; d-- > 0 && !r;) {
		if (strv_has(&rc->tree_dirs, rc->cat_dirs.v[d]))
			continue;
		log_info("directory %s is gone; journaling its removal", rc->cat_dirs.v[d]);
		r = journal_rmdir(j, rc->cat_dirs.v[d]);
	}
	return r;
}

int journal_reconcile(struct journal *j, struct catalog *cat, const uint64_t *sealed,
		      size_t nsealed, uint64_t w, bool baseline, bool after_unmount,
		      uint64_t stopped_ns)
{
	struct recon rc = { .j = j, .cat = cat, .after_unmount = after_unmount,
			    .stopped_ns = stopped_ns };
	char path[SEG_NAME_MAX + 2];
	uint64_t redone = 0;
	uint32_t max_id = 0;
	struct stat jst;
	int r;

	if (fstat(j->dirfd, &jst) < 0)
		return -errno;
	rc.hide_dev = jst.st_dev;
	rc.hide_ino = jst.st_ino;
	r = catalog_images_each(cat, load_image, &rc);
	if (r == 0)
		r = catalog_dirs_each(cat, load_dir, &rc.cat_dirs);
	if (r == 0)
		r = catalog_max_image_id(cat, &max_id);
	if (r < 0)
		goto out;
	j->next_image_id = max_id + 1;
	path[0] = '\0';
	r = scan_dir(&rc, j->cfg.backing_fd, path, 0, 0);
	if (r < 0) {
		log_error("cannot scan %s: %s", j->backing_dir, strerror(-r));
		goto out;
	}
	if (rc.tree_dirs.n > 1)
		qsort(rc.tree_dirs.v, rc.tree_dirs.n, sizeof *rc.tree_dirs.v, cmp_str);
	if (rc.cat_dirs.n > 1)
		qsort(rc.cat_dirs.v, rc.cat_dirs.n, sizeof *rc.cat_dirs.v, cmp_str);
	match(&rc);

	/* The registry holds the journal's names; the tree's may differ until
	 * the renames below are journaled. */
	for (size_t i = 0; i < rc.nimgs; i++) {
		struct cat_image *ci = &rc.imgs[i];
		struct stat st;
		ino_t ino = 0;

		if (ci->found && fstatat(j->cfg.backing_fd, ci->found, &st, AT_SYMLINK_NOFOLLOW) == 0)
			ino = st.st_ino;
		if (!registry_add_found(j, ci->id, ci->name, ci->found, ci->found ? ci->dev : 0,
					ino)) {
			r = -ENOMEM;
			goto out;
		}
	}

	/* Redo the tail onto the files the images are now. */
	for (size_t i = 0; i < nsealed && !r; i++)
		r = redo_segment(&rc, sealed[i], w, &redone);
	if (r < 0)
		goto out;
	if (redone)
		log_info("recovery: redid %" PRIu64 " journal records after LSN %" PRIu64
			 " onto the backing files", redone, w);
	r = reconcile(&rc, baseline);
	if (r == 0)
		r = journal_finish_adoptions(j);
	if (r == 0 && (after_unmount || stopped_ns) && !baseline)
		r = hand_over_changed(&rc);
	if (r == 0)
		registry_note_files(j, cat, false);
out:
	for (size_t i = 0; i < rc.nimgs; i++)
		free(rc.imgs[i].name);
	free(rc.imgs);
	for (size_t f = 0; f < rc.nfiles; f++)
		free(rc.files[f].path);
	free(rc.files);
	strv_free(&rc.tree_dirs);
	strv_free(&rc.cat_dirs);
	return r;
}
