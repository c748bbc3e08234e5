/*
 * recovery.c — brings the journal, the catalog and the backing files back
 * into agreement before a mount serves anything (invariant 2).
 *
 * After a kill -9 the journal directory can hold: sealed segments not yet
 * renamed, an open segment with a torn last record, segments the catalog
 * has not indexed; and the backing files can miss the last few journaled
 * writes (journaled, then killed before the backing syscall).  Recovery:
 *
 *  1. finds W, the LSN up to which the backing files are known complete:
 *     the backing_lsn of the newest sealed trailer (the sealer records the
 *     lowest in-flight LSN there);
 *  2. cuts each unfinished segment at its first invalid record (the rule
 *     of SQLite's WAL: the first invalid record ends the log), seals it and
 *     renames it into place, or deletes it if no record survived;
 *  3. indexes every segment the catalog lacks;
 *  4. redoes every data record after W onto the backing files, naming
 *     images as the namespace stands now (namespace syscalls always precede
 *     their records, so the backing tree is already at the journal's end);
 *  5. compares the backing tree with the catalog's images and journals what
 *     differs: an image that vanished gets an UNLINK, a file never seen gets
 *     a CREATE with its content — except on the first mount of a group,
 *     where the files found are the starting point.
 *
 * Until step 4 completes, the catalog keeps W as "redo_from", so a crash
 * during recovery redoes from the same place next time.
 */
#include "journal_i.h"
#include "apply.h"
#include "catalog.h"
#include "log.h"
#include "names.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SCAN_DEPTH_MAX 64

struct numlist {
	uint64_t *v;
	size_t n, cap;
};

static int numlist_add(struct numlist *l, uint64_t x)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		uint64_t *nv = realloc(l->v, cap * sizeof *nv);

		if (!nv)
			return -ENOMEM;
		l->v = nv;
		l->cap = cap;
	}
	l->v[l->n++] = x;
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int parse_open_name(const char *name, uint64_t *n)
{
	char buf[SEG_FILE_NAME_LEN + 1];
	size_t len = strlen(name);

	if (len != SEG_FILE_DIGITS + strlen(SEG_OPEN_SUFFIX) ||
	    strcmp(name + SEG_FILE_DIGITS, SEG_OPEN_SUFFIX) != 0)
		return -EINVAL;
	memcpy(buf, name, SEG_FILE_DIGITS);
	strcpy(buf + SEG_FILE_DIGITS, SEG_FILE_SUFFIX);
	return seg_parse_file_name(buf, n);
}

static int list_segments(struct journal *j, struct numlist *sealed, struct numlist *open)
{
	int fd = dup(j->dirfd);
	struct dirent *de;
	DIR *d;
	int r = 0;

	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	rewinddir(d);
	while (!r && (de = readdir(d))) {
		uint64_t n;

		if (seg_parse_file_name(de->d_name, &n) == 0)
			r = numlist_add(sealed, n);
		else if (parse_open_name(de->d_name, &n) == 0)
			r = numlist_add(open, n);
	}
	closedir(d);
	if (sealed->n > 1)
		qsort(sealed->v, sealed->n, sizeof *sealed->v, cmp_u64);
	if (open->n > 1)
		qsort(open->v, open->n, sizeof *open->v, cmp_u64);
	return r;
}

static int open_view(struct journal *j, uint64_t n, struct seg_view **v)
{
	char name[SEG_FILE_NAME_LEN + 8], path[4200];
	struct seg_err err;
	int r;

	seg_file_name(n, SEG_FILE_SUFFIX, name);
	snprintf(path, sizeof path, "%s/%s", j->dir, name);
	r = seg_view_open(path, v, &err);
	if (r < 0)
		log_error("journal %s: segment %s is damaged: %s (at byte %" PRIu64 ")",
			  j->dir, name, err.msg, err.offset);
	return r;
}

/*
 * Finishes one NNN.open file.  Sets *last_lsn to its last LSN (0 if it was
 * deleted) and *backing_lsn to the trailer's claim if it was already sealed.
 */
static int finish_open_segment(struct journal *j, uint64_t n, uint64_t *last_lsn,
			       bool *was_sealed, uint64_t *backing_lsn)
{
	char name[SEG_FILE_NAME_LEN + 8];
	struct seg_view *v = NULL;
	struct seg_err err;
	struct stat st;
	size_t valid = 0;
	void *map = MAP_FAILED;
	int fd, r;

	*last_lsn = 0;
	*was_sealed = false;
	seg_file_name(n, SEG_OPEN_SUFFIX, name);
	fd = openat(j->dirfd, name, O_RDWR | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		r = -errno;
		log_error("journal %s: cannot open %s: %m", j->dir, name);
		if (fd >= 0)
			close(fd);
		return r;
	}
	if (st.st_size > 0)
		map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	if (map != MAP_FAILED)
		r = seg_view_new_partial(map, (size_t)st.st_size, &v, &valid, &err);
	else
		r = -EBADMSG;
	if (r < 0 || seg_view_count(v) == 0) {
		/* Killed while writing the header, or before the first record. */
		log_info("journal %s: removing %s, which holds no complete record", j->dir, name);
		seg_view_free(v);
		if (map != MAP_FAILED)
			munmap(map, (size_t)st.st_size);
		close(fd);
		return unlinkat(j->dirfd, name, 0) < 0 ? -errno : 0;
	}
	*last_lsn = seg_view_last_lsn(v);
	if (seg_view_sealed(v)) {
		*was_sealed = true;
		*backing_lsn = seg_view_trailer(v)->backing_lsn;
	} else {
		struct seg_trailer t = {
			.count = seg_view_count(v),
			.last_lsn = seg_view_last_lsn(v),
			.backing_lsn = seg_view_last_lsn(v), /* true once redo is done */
			.sealed_ns = journal_now_ns(),
		};
		uint8_t buf[SEG_TRAILER_SIZE];

		seg_trailer_encode(&t, seg_view_digest(v), buf);
		if ((uint64_t)st.st_size != valid)
			log_info("journal %s: cutting %s at byte %zu (torn tail of %" PRIu64 " bytes)",
				 j->dir, name, valid, (uint64_t)st.st_size - valid);
		if (ftruncate(fd, (off_t)valid) < 0 ||
		    pwrite(fd, buf, sizeof buf, (off_t)valid) != (ssize_t)sizeof buf) {
			r = -errno;
			log_error("journal %s: cannot seal %s: %m", j->dir, name);
			goto out;
		}
	}
	r = sealer_finish_file(j->dirfd, fd, n);
	if (r < 0)
		log_error("journal %s: cannot finish %s: %s", j->dir, name, strerror(-r));
out:
	seg_view_free(v);
	munmap(map, (size_t)st.st_size);
	close(fd);
	return r;
}

/* ---- the backing tree ---- */

struct scan {
	struct journal *j;
	dev_t hide_dev;
	ino_t hide_ino;
	struct names *known;   /* catalog images not yet found */
	struct unknown {
		char *name;
		dev_t dev;
		ino_t ino;
	} *unknown;            /* files the catalog does not know */
	size_t nunknown, capunknown;
	struct catalog *cat;
	dev_t *seen_dev;       /* inodes seen, to spot hard links */
	ino_t *seen_ino;
	size_t nseen, capseen;
};

static int found_file(struct scan *s, const char *name, const struct stat *st);

static int scan_dir(struct scan *s, int rootfd, char *path, size_t plen, int depth)
{
	struct dirent *de;
	DIR *d;
	int fd, r = 0;

	if (depth > SCAN_DEPTH_MAX) {
		log_warn("%s/%s: directories nested deeper than %d levels are not mirrored",
			 s->j->backing_dir, path, SCAN_DEPTH_MAX);
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
		struct stat st;
		size_t nlen = strlen(de->d_name);

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (plen + 1 + nlen >= SEG_NAME_MAX + 1)
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		if (st.st_dev == s->hide_dev && st.st_ino == s->hide_ino)
			continue; /* the journal itself */
		if (plen)
			path[plen] = '/';
		memcpy(path + plen + (plen ? 1 : 0), de->d_name, nlen + 1);
		if (S_ISDIR(st.st_mode))
			r = scan_dir(s, rootfd, path, plen + (plen ? 1 : 0) + nlen, depth + 1);
		else if (S_ISREG(st.st_mode))
			r = found_file(s, path, &st);
		path[plen] = '\0';
	}
	closedir(d);
	return r;
}

static int seen_before(struct scan *s, const struct stat *st)
{
	for (size_t i = 0; i < s->nseen; i++)
		if (s->seen_ino[i] == st->st_ino && s->seen_dev[i] == st->st_dev)
			return 1;
	if (s->nseen == s->capseen) {
		size_t cap = s->capseen ? s->capseen * 2 : 64;
		dev_t *nd = realloc(s->seen_dev, cap * sizeof *nd);
		ino_t *ni;

		if (!nd)
			return -ENOMEM;
		s->seen_dev = nd;
		ni = realloc(s->seen_ino, cap * sizeof *ni);
		if (!ni)
			return -ENOMEM;
		s->seen_ino = ni;
		s->capseen = cap;
	}
	s->seen_dev[s->nseen] = st->st_dev;
	s->seen_ino[s->nseen++] = st->st_ino;
	return 0;
}

static int found_file(struct scan *s, const char *name, const struct stat *st)
{
	uint32_t id;
	int r;

	if (!seg_name_valid(name, strlen(name))) {
		log_warn("%s/%s: name cannot be mirrored; the file is ignored",
			 s->j->backing_dir, name);
		return 0;
	}
	if (st->st_nlink > 1) {
		r = seen_before(s, st);
		if (r < 0)
			return r;
		if (r) {
			log_warn("%s/%s is a hard link to another image; only one name is mirrored",
				 s->j->backing_dir, name);
			return 0;
		}
	}
	id = names_find(s->known, name, strlen(name));
	if (id) {
		names_unbind(s->known, id);
		return registry_add(s->j, id, name, st->st_dev, st->st_ino) ? 0 : -ENOMEM;
	}
	if (s->nunknown == s->capunknown) {
		size_t cap = s->capunknown ? s->capunknown * 2 : 16;
		struct unknown *nu = realloc(s->unknown, cap * sizeof *nu);

		if (!nu)
			return -ENOMEM;
		s->unknown = nu;
		s->capunknown = cap;
	}
	s->unknown[s->nunknown].dev = st->st_dev;
	s->unknown[s->nunknown].ino = st->st_ino;
	s->unknown[s->nunknown].name = strdup(name);
	return s->unknown[s->nunknown++].name ? 0 : -ENOMEM;
}

static int load_known(void *ctx, uint32_t id, const char *name)
{
	return names_bind(ctx, id, name, strlen(name)) == -ENOMEM ? -ENOMEM : 0;
}

static int collect_missing(void *ctx, uint32_t id, const char *name)
{
	(void)name;
	return numlist_add(ctx, id);
}

/* ---- redo ---- */

static int redo_segment(struct journal *j, uint64_t n, uint64_t w, uint64_t *redone)
{
	struct seg_view *v;
	struct seg_record rec;
	uint32_t cur_id = 0;
	int fd = -1, r;

	r = open_view(j, n, &v);
	if (r < 0)
		return r;
	while (seg_view_next(v, &rec) == 1) {
		struct image *im;
		char err[256];

		if (rec.lsn <= w || rec.type < SEG_WRITE || rec.type > SEG_ALLOC)
			continue;
		if (rec.image != cur_id) {
			if (fd >= 0) {
				fsync(fd);
				close(fd);
			}
			fd = -1;
			cur_id = rec.image;
			im = registry_find_id(j, rec.image);
			if (im)
				fd = openat(j->cfg.backing_fd, im->name,
					    O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
		}
		if (fd < 0)
			continue; /* image gone since: nothing to redo */
		r = apply_record_data(fd, &rec, false, 0, err, sizeof err);
		if (r < 0) {
			log_error("journal %s: redoing LSN %" PRIu64 " onto the backing files: %s",
				  j->dir, rec.lsn, err);
			break;
		}
		(*redone)++;
	}
	if (fd >= 0) {
		if (fsync(fd) < 0 && r == 0)
			r = -errno;
		close(fd);
	}
	seg_view_free(v);
	return r;
}

/* ---- the whole ---- */

static int meta_u64(struct catalog *cat, const char *key, uint64_t *v)
{
	char buf[32];
	int r = catalog_meta_get(cat, key, buf, sizeof buf);

	if (r < 0)
		return r;
	if (!buf[0])
		return -ENOENT;
	*v = strtoull(buf, NULL, 10);
	return 0;
}

static int set_meta_u64(struct catalog *cat, const char *key, uint64_t v)
{
	char buf[32];

	snprintf(buf, sizeof buf, "%" PRIu64, v);
	return catalog_meta_set(cat, key, buf);
}

int journal_recover(struct journal *j, struct catalog *cat)
{
	struct numlist sealed = { 0 }, open = { 0 }, missing = { 0 };
	struct scan s = { .j = j };
	uint64_t w = 0, stored_w, last_lsn = 0, redone = 0, cat_seg, cat_lsn;
	bool baseline, have_stored_w;
	char buf[16];
	struct stat jst;
	(void)cat_lsn;
	uint32_t max_id;
	char path[SEG_NAME_MAX + 2];
	int r;

	r = list_segments(j, &sealed, &open);
	if (r < 0)
		goto out;

	/* 1. W from the newest sealed trailer. */
	if (sealed.n) {
		struct seg_view *v;

		r = open_view(j, sealed.v[sealed.n - 1], &v);
		if (r < 0)
			goto out;
		w = seg_view_trailer(v)->backing_lsn;
		last_lsn = seg_view_last_lsn(v);
		seg_view_free(v);
	}
	have_stored_w = meta_u64(cat, "redo_from", &stored_w) == 0;

	/* 2. Finish unfinished segments. */
	for (size_t i = 0; i < open.n; i++) {
		uint64_t l, b = 0;
		bool was_sealed;

		if (!have_stored_w) {
			/* Persist W before the first trailer claims more. */
			r = set_meta_u64(cat, "redo_from", w);
			if (r < 0)
				goto out;
			have_stored_w = true;
			stored_w = w;
		}
		r = finish_open_segment(j, open.v[i], &l, &was_sealed, &b);
		if (r < 0)
			goto out;
		if (was_sealed && b > w)
			w = b;
		if (l > last_lsn)
			last_lsn = l;
	}
	if (have_stored_w && stored_w < w)
		w = stored_w;

	/* 3. Index what the catalog lacks. */
	sealed.n = open.n = 0;
	r = list_segments(j, &sealed, &open);
	for (size_t i = 0; !r && i < sealed.n; i++) {
		bool has;

		r = catalog_has_segment(cat, sealed.v[i], &has);
		if (!r && !has)
			r = sealer_index(cat, j->dir, sealed.v[i]);
	}
	if (r < 0)
		goto out;
	r = catalog_last_segment(cat, &cat_seg, &cat_lsn);
	if (r < 0)
		goto out;
	j->next_segment = (sealed.n ? sealed.v[sealed.n - 1] : 0) + 1;
	if (cat_seg + 1 > j->next_segment)
		j->next_segment = cat_seg + 1;
	if (cat_lsn > last_lsn)
		last_lsn = cat_lsn;
	j->next_lsn = last_lsn + 1;
	j->sealed_segment = j->durable_segment = j->next_segment - 1;

	/* The registry: catalog images matched to backing inodes. */
	s.known = names_new();
	if (!s.known) {
		r = -ENOMEM;
		goto out;
	}
	r = catalog_images_each(cat, load_known, s.known);
	if (r == 0)
		r = catalog_max_image_id(cat, &max_id);
	if (r < 0)
		goto out;
	j->next_image_id = max_id + 1;
	fstat(j->dirfd, &jst);
	s.hide_dev = jst.st_dev;
	s.hide_ino = jst.st_ino;
	path[0] = '\0';
	r = scan_dir(&s, j->cfg.backing_fd, path, 0, 0);
	if (r < 0) {
		log_error("cannot scan %s: %s", j->backing_dir, strerror(-r));
		goto out;
	}

	/* 4. Redo the tail onto the backing files. */
	for (size_t i = 0; i < sealed.n && !r; i++) {
		struct seg_view *v;
		uint64_t seg_last;

		r = open_view(j, sealed.v[i], &v);
		if (r < 0)
			break;
		seg_last = seg_view_last_lsn(v);
		seg_view_free(v);
		if (seg_last > w)
			r = redo_segment(j, sealed.v[i], w, &redone);
	}
	if (r < 0)
		goto out;
	if (redone)
		log_info("recovery: redid %" PRIu64 " journal records after LSN %" PRIu64
			 " onto the backing files", redone, w);

	/* 5. Reconcile the backing tree with the catalog. */
	r = names_each(s.known, collect_missing, &missing);
	for (size_t i = 0; !r && i < missing.n; i++) {
		const char *name = names_get(s.known, (uint32_t)missing.v[i]);

		if (!registry_add(j, (uint32_t)missing.v[i], name, 0, 0))
			r = -ENOMEM;
	}
	if (r < 0)
		goto out;
	baseline = catalog_meta_get(cat, "baseline", buf, sizeof buf) == -ENOENT && cat_seg == 0;
	if (baseline) {
		for (size_t i = 0; i < s.nunknown && !r; i++) {
			struct image *im = registry_add(j, j->next_image_id, s.unknown[i].name,
							s.unknown[i].dev, s.unknown[i].ino);

			r = im ? catalog_image_add(cat, im->id, im->name) : -ENOMEM;
		}
		if (r == 0)
			r = catalog_meta_set(cat, "baseline", "done");
		if (r < 0)
			goto out;
		if (s.nunknown)
			log_info("group starts from the %zu images found in %s", s.nunknown,
				 j->backing_dir);
	}
	/* Images the catalog knows but the backing tree lost: removed while
	 * the mount was down, or killed between an unlink and its record. */
	for (size_t i = 0; i < missing.n && !r; i++) {
		struct image *im = registry_find_id(j, (uint32_t)missing.v[i]);

		log_info("image %s is gone from %s; journaling its removal", im->name,
			 j->backing_dir);
		r = journal_unlink(j, im);
	}
	/* Files never journaled: made behind the mount's back, or killed
	 * between a create and its record.  Their content goes in the journal. */
	for (size_t i = 0; i < s.nunknown && !r && !baseline; i++) {
		struct image *im;
		struct stat st;
		int fd = openat(j->cfg.backing_fd, s.unknown[i].name,
				O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

		if (fd < 0 || fstat(fd, &st) < 0) {
			r = -errno;
			log_error("cannot read %s/%s: %m", j->backing_dir, s.unknown[i].name);
		} else {
			r = journal_adopt(j, s.unknown[i].name, fd, &st, &im);
			if (r == 0)
				journal_image_put(j, im);
		}
		if (fd >= 0)
			close(fd);
	}
	if (r == 0)
		r = catalog_meta_set(cat, "redo_from", "");
	/* Everything sealed is on the backing files now. */
	j->durable_backing_lsn = j->next_lsn - 1;
	{
		uint64_t total = 0;
		struct stat st;

		for (size_t i = 0; i < sealed.n; i++) {
			char name[SEG_FILE_NAME_LEN + 8];

			seg_file_name(sealed.v[i], SEG_FILE_SUFFIX, name);
			if (fstatat(j->dirfd, name, &st, 0) == 0)
				total += (uint64_t)st.st_size;
		}
		atomic_fetch_add(&j->disk_bytes, total);
	}
out:
	for (size_t i = 0; i < s.nunknown; i++)
		free(s.unknown[i].name);
	free(s.unknown);
	free(s.seen_dev);
	free(s.seen_ino);
	names_free(s.known);
	free(sealed.v);
	free(open.v);
	free(missing.v);
	return r;
}
