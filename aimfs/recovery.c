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
 *     lowest in-flight LSN there) -- or, after a power loss, the activity
 *     log's synced LSN if lower (an fsync syncs only the journal; the
 *     backing files are synced by checkpoints);
 *  2. cuts each unfinished segment at its first invalid record (the rule
 *     of SQLite's WAL: the first invalid record ends the log), seals it and
 *     renames it into place, or deletes it if no record survived;
 *  3. indexes every segment the catalog lacks;
 *  4. matches the backing tree with the catalog (images by inode, then by
 *     name; directories by name) and redoes every data record after W onto
 *     the file each image is now (reconcile.c);
 *  5. journals what differs: renames, removals and creations that happened
 *     without their records (killed between a namespace syscall and its
 *     record, or done behind the mount's back), directories included —
 *     except on the first mount of a group, where what is found is the
 *     starting point;
 *  6. if the activity log (actlog.h) says the last mount ended unclean in
 *     another boot — a power loss, not a daemon crash, so the page cache
 *     was lost and the journal and backing files may disagree inside the
 *     hot extents — hands those to the destinations (powerloss.c);
 *  7. checkpoints (journal durable, backing filesystem synced) and marks
 *     the activity log "unclean, this boot" before anything is served.
 *
 * Until step 4 completes, the catalog keeps W as "redo_from", so a crash
 * during recovery redoes from the same place next time.
 */
#include "journal_i.h"
#include "io_i.h"
#include "clock.h"
#include "catalog.h"
#include "fileio.h"
#include "log.h"

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

/* NNN<suffix> for the .open and .free suffixes (as short as .aimj). */
static int parse_suffixed_name(const char *name, const char *suffix, uint64_t *n)
{
	char buf[SEG_FILE_NAME_LEN + 1];
	size_t len = strlen(name);

	if (len != SEG_FILE_DIGITS + strlen(suffix) || strcmp(name + SEG_FILE_DIGITS, suffix) != 0)
		return -EINVAL;
	memcpy(buf, name, SEG_FILE_DIGITS);
	strcpy(buf + SEG_FILE_DIGITS, SEG_FILE_SUFFIX);
	return seg_parse_file_name(buf, n);
}

/* A stream over the journal directory, from its first entry; NULL with
 * errno set. */
static DIR *journal_dir_stream(struct journal *j)
{
	int fd = dup(j->dirfd), e;
	DIR *d;

	if (fd < 0)
		return NULL;
	d = fdopendir(fd);
	if (!d) {
		e = errno;
		close(fd);
		errno = e;
		return NULL;
	}
	rewinddir(d);
	return d;
}

static int list_segments(struct journal *j, struct numlist *sealed, struct numlist *open)
{
	DIR *d = journal_dir_stream(j);
	struct dirent *de;
	int r = 0;

	if (!d)
		return -errno;
	while (!r && (de = readdir(d))) {
		uint64_t n;

		if (seg_parse_file_name(de->d_name, &n) == 0)
			r = numlist_add(sealed, n);
		else if (parse_suffixed_name(de->d_name, SEG_OPEN_SUFFIX, &n) == 0)
			r = numlist_add(open, n);
		else if (parse_suffixed_name(de->d_name, SEG_FREE_SUFFIX, &n) == 0)
			unlinkat(j->dirfd, de->d_name, 0); /* kept for reuse by the last mount */
	}
	closedir(d);
	if (sealed->n > 1)
		qsort(sealed->v, sealed->n, sizeof *sealed->v, cmp_u64);
	if (open->n > 1)
		qsort(open->v, open->n, sizeof *open->v, cmp_u64);
	return r;
}

/*
 * A segment the catalog says was pruned, back under its name: the unlink
 * or the rename to NNN.free had not reached the disk when the power went
 * (and a recycled file may hold a newer segment's first pages).  It is not
 * part of the journal any more: taking its trailer for W, or redoing it,
 * would write old data over new.
 */
static int drop_pruned(struct journal *j, struct catalog *cat, struct numlist *sealed)
{
	size_t kept = 0;

	for (size_t i = 0; i < sealed->n; i++) {
		char name[SEG_FILE_NAME_LEN + 8];
		bool pruned;
		int r = catalog_segment_is_pruned(cat, sealed->v[i], &pruned);

		if (r < 0)
			return r;
		if (!pruned) {
			sealed->v[kept++] = sealed->v[i];
			continue;
		}
		seg_file_name(sealed->v[i], SEG_FILE_SUFFIX, name);
		log_info("journal %s: %s was pruned before the last mount ended; removing it"
			 " again", j->dir, name);
		if (unlinkat(j->dirfd, name, 0) < 0 && errno != ENOENT)
			return -errno;
	}
	sealed->n = kept;
	return 0;
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
 * Finishes one NNN.open file whose first record should be LSN expect (one
 * that starts later is dropped after a power_loss).  Sets *last_lsn to its
 * last LSN (0 if it was deleted) and *backing_lsn to the trailer's claim
 * if it was already sealed.
 */
static int finish_open_segment(struct journal *j, uint64_t n, uint64_t expect, bool power_loss,
			       uint64_t *last_lsn, bool *was_sealed, uint64_t *backing_lsn)
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
	r = -EBADMSG; /* an empty file: no header */
	if (st.st_size > 0) {
		map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
		if (map == MAP_FAILED) {
			r = -errno;
			log_error("journal %s: cannot map %s: %m", j->dir, name);
			close(fd);
			return r;
		}
		r = seg_view_new_partial(map, (size_t)st.st_size, &v, &valid, &err);
		/* only what the decoder refuses says the file holds nothing;
		 * anything else (no memory) is no reason to delete it */
		if (r < 0 && r != -EBADMSG) {
			log_error("journal %s: cannot read %s: %s", j->dir, name, strerror(-r));
			munmap(map, (size_t)st.st_size);
			close(fd);
			return r;
		}
	}
	/* A header for another number or group: a recycled file whose new
	 * header did not reach the disk before a power cut (it is written
	 * before the rename, but nothing orders the two on disk).  What
	 * follows it is the old segment's, pruned long ago. */
	if (r == 0 && (seg_view_header(v)->number != n ||
		       memcmp(seg_view_header(v)->group, j->group, 16) != 0)) {
		log_info("journal %s: %s holds the header of segment %" PRIu64
			 " (a recycled file's old content)", j->dir, name, seg_view_header(v)->number);
		seg_view_free(v);
		v = NULL;
		r = -EBADMSG;
	}
	/* After a gap: a power cut lost the end of the segment before this one
	 * (sealed in the page cache, not yet fsynced) and kept this one's
	 * first pages.  The journal is a prefix of what happened or nothing:
	 * what follows the gap goes (its writes are in the activity log's hot
	 * extents, which the next step hands to the destinations).  Without a
	 * power loss the page cache kept every page, so a gap only means the
	 * catalog missed segments pruned since: this one stays. */
	if (r == 0 && seg_view_header(v)->first_lsn > expect) {
		if (!power_loss) {
			log_warn("journal %s: %s starts at LSN %" PRIu64 " but the catalog knows the"
				 " journal only up to %" PRIu64 " (segments it never indexed were"
				 " pruned); kept", j->dir, name, seg_view_header(v)->first_lsn,
				 expect - 1);
		} else {
			log_info("journal %s: %s starts at LSN %" PRIu64 " but the journal before it"
				 " ends at %" PRIu64 "; what a power cut left after the gap is dropped",
				 j->dir, name, seg_view_header(v)->first_lsn, expect - 1);
			seg_view_free(v);
			v = NULL;
			r = -EBADMSG;
		}
	}
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
			.sealed_ns = clock_wall_ns(),
		};
		uint8_t buf[SEG_TRAILER_SIZE];

		seg_trailer_encode(&t, seg_view_digest(v), buf);
		if ((uint64_t)st.st_size != valid)
			log_info("journal %s: cutting %s at byte %zu (torn tail of %" PRIu64 " bytes)",
				 j->dir, name, valid, (uint64_t)st.st_size - valid);
		if (aimfs_io.ftruncate_fn(fd, (off_t)valid) < 0) {
			r = -errno;
		} else {
			ssize_t w = aimfs_io.pwrite_fn(fd, buf, sizeof buf, (off_t)valid);

			r = w == (ssize_t)sizeof buf ? 0 : w < 0 ? -errno : -EIO;
		}
		if (r < 0) {
			log_error("journal %s: cannot seal %s: %s", j->dir, name, strerror(-r));
			goto out;
		}
	}
	r = sealer_finish_file(j->dirfd, fd, n, NULL);
	if (r < 0)
		log_error("journal %s: cannot finish %s: %s", j->dir, name, strerror(-r));
out:
	seg_view_free(v);
	munmap(map, (size_t)st.st_size);
	close(fd);
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

static int open_actlog(struct journal *j, struct actlog_found *found)
{
	struct actlog_config c = {
		.dirfd = j->dirfd,
		.backing_fd = j->cfg.backing_fd,
		.group = j->group,
		.slots = j->cfg.al_slots ? j->cfg.al_slots : ACTLOG_DEFAULT_SLOTS,
		.extent_shift = j->cfg.al_extent_shift ? j->cfg.al_extent_shift
						      : ACTLOG_DEFAULT_SHIFT,
		.journal_sync = journal_sync_all,
		.checkpoint_begins = journal_checkpoint_begins,
		.checkpoint_due = journal_checkpoint_due,
		.synced = journal_backing_synced,
		.writeback_check = journal_writeback_check,
		.ctx = j,
	};

	return actlog_open(&c, &j->al, found);
}

/*
 * When the last mount last changed a file, if it did not unmount: the
 * newest modification time among the files in the journal directory that
 * only a mount writes (its segments, its activity log, and its lock file,
 * which a change no record carries stamps: journal_stamp_untracked).  Read
 * before recovery writes any of them.  A write reaches the backing file
 * just after its record reaches the open segment, so an image whose ctime
 * is later than this by more than a moment was changed after aimfs
 * stopped.  The times are the kernel's, as the images' ctimes: no clock of
 * ours is compared with them.  0 if none is found.
 */
static uint64_t last_change_ns(struct journal *j)
{
	DIR *d = journal_dir_stream(j);
	uint64_t newest = 0;
	struct dirent *de;

	if (!d)
		return 0;
	while ((de = readdir(d))) {
		struct stat st;
		uint64_t n, t;

		if (seg_parse_file_name(de->d_name, &n) != 0 &&
		    parse_suffixed_name(de->d_name, SEG_OPEN_SUFFIX, &n) != 0 &&
		    strcmp(de->d_name, ACTLOG_FILE) != 0 && strcmp(de->d_name, JOURNAL_LOCK_FILE) != 0)
			continue;
		if (fstatat(j->dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISREG(st.st_mode))
			continue;
		t = fileio_mtime_ns(&st);
		if (t > newest)
			newest = t;
	}
	closedir(d);
	return newest;
}

int journal_recover(struct journal *j, struct catalog *cat)
{
	struct numlist sealed = { 0 }, open = { 0 }, redo = { 0 };
	struct actlog_found found = { 0 };
	uint64_t w = 0, stored_w, last_lsn = 0, cat_seg, cat_lsn;
	bool baseline, have_stored_w;
	uint64_t stopped_ns = last_change_ns(j);
	char buf[16];
	int r;

	r = open_actlog(j, &found);
	if (r < 0)
		goto out;
	if (found.present && !found.clean && found.same_boot && !found.redo)
		log_info("journal %s: aimfs stopped without unmounting during this boot; the page"
			 " cache kept every write, recovery is exact", j->dir);
	r = list_segments(j, &sealed, &open);
	if (r == 0)
		r = drop_pruned(j, cat, &sealed);
	if (r < 0)
		goto out;
	r = catalog_last_segment(cat, &cat_seg, &cat_lsn);
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
		r = finish_open_segment(j, open.v[i], (last_lsn > cat_lsn ? last_lsn : cat_lsn) + 1,
					!found.present || (!found.clean && !found.same_boot),
					&l, &was_sealed, &b);
		if (r < 0)
			goto out;
		if (was_sealed && b > w)
			w = b;
		if (l > last_lsn)
			last_lsn = l;
	}
	if (have_stored_w && stored_w < w)
		w = stored_w;
	/* A power loss: the backing files hold for sure only what the last
	 * checkpoint synced (an fsync syncs the journal, not them), so the
	 * redo starts there; so does a write-back error the last mount saw
	 * (the pages it could not write are lost, this boot or not).  The
	 * journal kept every segment past it. */
	if (found.present && (found.redo || (!found.clean && !found.same_boot)) &&
	    found.synced_lsn < w) {
		log_info("journal %s: redoing the journal from LSN %" PRIu64 ", the last the backing"
			 " files were synced at%s", j->dir, found.synced_lsn,
			 found.redo ? " (the last mount saw them fail to write back)" : "");
		w = found.synced_lsn;
	}

	/* 3. Index what the catalog lacks. */
	sealed.n = open.n = 0;
	r = list_segments(j, &sealed, &open);
	if (r == 0 && open.n) {
		log_error("journal %s: segment %" PRIu64 " is still unfinished", j->dir, open.v[0]);
		r = -EIO;
	}
	for (size_t i = 0; !r && i < sealed.n; i++) {
		bool has;

		r = catalog_has_segment(cat, sealed.v[i], &has);
		if (!r && !has)
			r = sealer_index(cat, j->dir, sealed.v[i], false);
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

	/* 4 and 5: match the tree with the catalog, redo the tail onto the
	 * files the images are now, journal what differs. */
	baseline = catalog_meta_get(cat, "baseline", buf, sizeof buf) == -ENOENT && cat_seg == 0;
	for (size_t i = 0; i < sealed.n; i++) {
		char name[SEG_FILE_NAME_LEN + 8];
		uint8_t tail[SEG_TRAILER_SIZE];
		struct stat st;
		int fd;

		/* Only segments reaching past W need a redo pass. */
		seg_file_name(sealed.v[i], SEG_FILE_SUFFIX, name);
		fd = openat(j->dirfd, name, O_RDONLY | O_CLOEXEC);
		if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size >= SEG_TRAILER_SIZE &&
		    pread(fd, tail, sizeof tail, st.st_size - SEG_TRAILER_SIZE) == sizeof tail) {
			uint64_t last = 0;

			for (int k = 7; k >= 0; k--)
				last = last << 8 | tail[16 + k];
			if (last > w)
				r = numlist_add(&redo, sealed.v[i]);
		}
		if (fd >= 0)
			close(fd);
		if (r < 0)
			goto out;
	}
	r = journal_reconcile(j, cat, redo.v, redo.n, w, baseline, found.present && found.clean,
			      stopped_ns);
	if (r < 0)
		goto out;
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
	/* 6 and 7. */
	if (r == 0 && found.present && !found.clean && !found.same_boot)
		r = powerloss_recover(j, cat, &found);
	if (r == 0)
		r = actlog_begin(j->al);
out:
	actlog_found_free(&found);
	free(sealed.v);
	free(open.v);
	free(redo.v);
	return r;
}
