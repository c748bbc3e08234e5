/*
 * apply.c — re-drives validated segments onto image files and block
 * devices, and reports durable progress (see apply.h for the contract).
 *
 * Confinement.  Image names were checked by the decoder (relative, no "."
 * or "..", no empty components), but the target directory itself may hold
 * symlinks planted by someone else.  So nothing here resolves a path inside
 * target_dir with plain open(): openat2 with RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS refuses every symlink on the
 * way (the last component too) and anything that would leave the directory,
 * and mkdir, rename and unlink act on a leaf name relative to a parent
 * directory opened that way, so they can only ever change a directory entry
 * beneath target_dir.  A file opened inside target_dir must then be a
 * regular file with one link: a planted device node, FIFO or hard link to a
 * file elsewhere is refused rather than written through.
 *
 * Ordering and durability.  Data records are idempotent when re-applied in
 * order from a durable point, but a namespace record is not, if records
 * before it were lost: a WRITE to "a" re-applied after "a" was renamed to
 * "b" would create a new, partial "a".  So a namespace record is preceded by
 * a barrier when records were applied since the last one, and followed by
 * one; a resumed apply then re-runs at most that one namespace record, and
 * each of them accepts finding its work already done.
 *
 * Block devices are never resized.  The part of a device beyond the
 * source's current image size is kept reading zeros (TRUNCATE and CREATE
 * zero it), so that a later growth of the image reads zeros on both sides.
 *
 * Resynchronisation.  A RESYNC-tagged data record is applied as any other.
 * SYNC_BEGIN is a durable point of its own (preceded by one when records
 * were applied since the last), so that the caller records "inconsistent"
 * before a resync record can reach a target; SYNC_END is one too, so that
 * "consistent again" is recorded only once the resync is durable.  A HASH
 * record reads each block of its range from the target as the records
 * before it left it (the page cache holds what was written since the last
 * barrier: no fsync is needed to read it back), never creating a missing
 * target, and reports the runs of blocks whose XXH3-64 differs.
 */
#include "apply.h"
#include "apply_i.h"
#include "fileio.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/openat2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <xxhash.h>

/* ---- system calls, through the table tests may replace ---- */

static ssize_t sys_pwrite(int fd, const void *buf, size_t n, off_t off)
{
	return pwrite(fd, buf, n, off);
}

static ssize_t sys_pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
	return pwritev(fd, iov, iovcnt, off);
}

static int sys_ioctl(int fd, unsigned long req, void *arg)
{
	return ioctl(fd, req, arg);
}

static ssize_t sys_pread(int fd, void *buf, size_t n, off_t off)
{
	return pread(fd, buf, n, off);
}

const struct apply_io apply_io_default = {
	.pwrite_fn = sys_pwrite,
	.pwritev_fn = sys_pwritev,
	.fallocate_fn = fallocate,
	.ftruncate_fn = ftruncate,
	.fsync_fn = fsync,
	.fstat_fn = fstat,
	.ioctl_fn = sys_ioctl,
	.pread_fn = sys_pread,
};

struct apply_io apply_io = {
	.pwrite_fn = sys_pwrite,
	.pwritev_fn = sys_pwritev,
	.fallocate_fn = fallocate,
	.ftruncate_fn = ftruncate,
	.fsync_fn = fsync,
	.fstat_fn = fstat,
	.ioctl_fn = sys_ioctl,
	.pread_fn = sys_pread,
};

static bool unsupported(int e)
{
	return e == EOPNOTSUPP || e == ENOSYS;
}

/* Fills err with a reason and returns rc (a -errno), for one-line error
 * paths. */
int apply_fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return rc;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return rc;
}

int apply_fsync_fd(int fd)
{
	return apply_io.fsync_fn(fd) < 0 ? -errno : 0;
}

/* ---- data records ---- */

/* Names what a data record acts on, for messages; and where its payload
 * is read from, if not from the view. */
struct data_ctx {
	const char *image; /* NULL when unknown (apply_record_data) */
	const char *path;  /* the target's path, or a generic word */
	struct payload_source *src; /* NULL: from the view */
	struct write_run *run; /* a WRITE joins it instead of being written now */
};

/* Bytes read from a payload source at a time: the buffer stays in the
 * CPU's cache between the read and the write. */
#define SOURCE_CHUNK (256u << 10)

static int dfail(const struct data_ctx *c, char *err, size_t errlen, int rc, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static int dfail(const struct data_ctx *c, char *err, size_t errlen, int rc, const char *fmt, ...)
{
	size_t n = 0;
	va_list ap;

	if (!err || !errlen)
		return rc;
	err[0] = '\0';
	if (c->image) {
		int k = snprintf(err, errlen, "image %s: ", c->image);

		n = k < 0 ? 0 : (size_t)k < errlen ? (size_t)k : errlen - 1;
	}
	va_start(ap, fmt);
	vsnprintf(err + n, errlen - n, fmt, ap);
	va_end(ap);
	return rc;
}

static int write_zeros(int fd, uint64_t off, uint64_t len)
{
	static char zeros[ZERO_BUF]; /* never written: .bss, not 64 KiB of .rodata */

	while (len) {
		size_t n = len < ZERO_BUF ? (size_t)len : ZERO_BUF;
		int r = fileio_pwrite_full(apply_io.pwrite_fn, fd, zeros, n, off);

		if (r < 0)
			return r;
		off += n;
		len -= n;
	}
	return 0;
}

static int file_size(int fd, uint64_t *size)
{
	struct stat st;

	if (apply_io.fstat_fn(fd, &st) < 0)
		return -errno;
	*size = (uint64_t)st.st_size;
	return 0;
}

/* Grows a regular file to end if it is smaller. */
static int grow_to(int fd, uint64_t end)
{
	uint64_t size;
	int r = file_size(fd, &size);

	if (r == 0 && size < end && apply_io.ftruncate_fn(fd, (off_t)end) < 0)
		r = -errno;
	return r;
}

/*
 * Makes [off, off+len) of a block device read zeros.  The aligned middle
 * goes to the device as a discard (punch) or a zero-out, which costs no
 * data transfer; what the device refuses, and the unaligned edges, are
 * written as zeros.
 */
static int zero_blockdev(int fd, uint64_t off, uint64_t len, bool punch)
{
	uint64_t end = off + len, a0, a1;
	int ssz = 0, r;

	if (apply_io.ioctl_fn(fd, BLKSSZGET, &ssz) < 0 || ssz < 512 || (ssz & (ssz - 1)))
		ssz = 512;
	a0 = (off + (uint64_t)ssz - 1) & ~((uint64_t)ssz - 1);
	a1 = end & ~((uint64_t)ssz - 1);
	if (a0 >= a1)
		return write_zeros(fd, off, len);
	if (!(punch && apply_io.fallocate_fn(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					     (off_t)a0, (off_t)(a1 - a0)) == 0)) {
		uint64_t range[2] = { a0, a1 - a0 };

		if (apply_io.ioctl_fn(fd, BLKZEROOUT, range) < 0) {
			r = write_zeros(fd, a0, a1 - a0);
			if (r < 0)
				return r;
		}
	}
	r = write_zeros(fd, off, a0 - off);
	if (r == 0)
		r = write_zeros(fd, a1, end - a1);
	return r;
}

/* ZERO on a regular file. */
static int zero_file(int fd, const struct seg_record *rec)
{
	bool keep = rec->flags & SEG_F_KEEP_SIZE;
	uint64_t off = rec->offset, end = rec->offset + rec->length, size;
	int r;

	if (rec->flags & SEG_F_PUNCH) {
		if (apply_io.fallocate_fn(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					  (off_t)off, (off_t)rec->length) == 0)
			return keep ? 0 : grow_to(fd, end);
		if (!unsupported(errno))
			return -errno;
	}
	if (apply_io.fallocate_fn(fd, FALLOC_FL_ZERO_RANGE | (keep ? FALLOC_FL_KEEP_SIZE : 0),
				  (off_t)off, (off_t)rec->length) == 0)
		return 0;
	if (!unsupported(errno))
		return -errno;
	/* Write zeros over what exists; beyond the end, growing the file
	 * reads as zeros already and costs nothing. */
	r = file_size(fd, &size);
	if (r == 0 && off < size)
		r = write_zeros(fd, off, (end < size ? end : size) - off);
	if (r == 0 && !keep)
		r = grow_to(fd, end);
	return r;
}

/* What of data record rec does not fit a block device of size bytes, or
 * NULL: the one rule both applying and applier_check enforce.  With
 * KEEP_SIZE the source's size did not change, so a ZERO or ALLOC running
 * past the end of the device lies past the source's end too. */
static const char *beyond_device(const struct seg_record *rec, uint64_t size)
{
	bool keep = rec->flags & SEG_F_KEEP_SIZE;
	uint64_t end = rec->offset + rec->length;

	if (end < rec->offset)
		return "range";
	switch (rec->type) {
	case SEG_WRITE:
		return end > size ? "write" : NULL;
	case SEG_ZERO:
		return end > size && !keep ? "zero" : NULL;
	case SEG_ALLOC:
		return end > size && !keep ? "allocation" : NULL;
	case SEG_TRUNCATE:
		return rec->offset > size ? "truncate" : NULL;
	default:
		return NULL;
	}
}

/* Where a WRITE's payload lies in the source file. */
static uint64_t source_offset(const struct payload_source *s, const struct seg_record *rec)
{
	return (uint64_t)((const uint8_t *)rec->payload - s->base);
}

/* The source's window, allocated on first use.  0 or -ENOMEM. */
static int source_window(struct payload_source *s)
{
	if (!s->win.buf && !(s->win.buf = malloc(SOURCE_CHUNK)))
		return -ENOMEM;
	s->win.cap = SOURCE_CHUNK;
	return 0;
}

/*
 * A WRITE's payload copied from the source file into the target, chunk by
 * chunk.  Returns 0, or -errno with *reading telling which side failed.
 */
static int write_from_source(int fd, struct payload_source *s, const struct seg_record *rec,
			     bool *reading)
{
	uint64_t from = source_offset(s, rec), done = 0;

	*reading = true; /* the buffer is the reading side's */
	if (source_window(s) < 0)
		return -ENOMEM;
	while (done < rec->length) {
		size_t n = rec->length - done < SOURCE_CHUNK ? (size_t)(rec->length - done)
							     : SOURCE_CHUNK;
		const uint8_t *p;
		int r;

		/* A window of the file, not only this payload: the records
		 * that follow (a guest's 4 KiB writes, 60 to a window) are
		 * then written from it without a read each.  -ENODATA: the
		 * segment file is shorter than its view. */
		*reading = true;
		r = fileio_window_get(&s->win, apply_io.pread_fn, s->fd, from + done, n,
				      SOURCE_CHUNK, &p);
		if (r < 0)
			return r;
		*reading = false;
		r = fileio_pwrite_full(apply_io.pwrite_fn, fd, p, n, rec->offset + done);
		if (r < 0)
			return r;
		done += n;
	}
	return 0;
}

/*
 * A WRITE of at most SOURCE_CHUNK bytes added to the run: its payload is
 * read into the source's window (which the run's earlier payloads are
 * in already: the caller wrote the run out otherwise) and its buffer
 * appended.  Returns 0 or -errno of the read.
 */
static int run_append(int fd, const struct data_ctx *c, const struct seg_record *rec)
{
	struct payload_source *s = c->src;
	struct write_run *w = c->run;
	const uint8_t *p;
	int r = source_window(s);

	if (r < 0)
		return r;
	r = fileio_window_get(&s->win, apply_io.pread_fn, s->fd, source_offset(s, rec),
			      (size_t)rec->length, SOURCE_CHUNK, &p);
	if (r < 0)
		return r;
	if (!w->n) {
		w->fd = fd;
		w->image = c->image;
		w->path = c->path;
		w->offset = rec->offset;
		w->length = 0;
		w->first_lsn = rec->lsn;
	}
	w->iov[w->n++] = (struct iovec){ (void *)p, (size_t)rec->length };
	w->length += rec->length;
	w->last_lsn = rec->lsn;
	return 0;
}

static int apply_data(int fd, const struct seg_record *rec, bool blockdev, uint64_t dev_size,
		      const struct data_ctx *c, char *err, size_t errlen)
{
	bool keep = rec->flags & SEG_F_KEEP_SIZE, reading = false;
	uint64_t off = rec->offset, len = rec->length, end;
	int r = 0;

	if (off > INT64_MAX || len > INT64_MAX - off)
		return dfail(c, err, errlen, -EINVAL, "%s at %" PRIu64 "+%" PRIu64 " is out of range",
			     seg_type_name(rec->type), off, len);
	end = off + len;
	if (blockdev && beyond_device(rec, dev_size))
		return dfail(c, err, errlen, -ENOSPC,
			     "%s at %" PRIu64 "+%" PRIu64 " is beyond the end of %s (%" PRIu64
			     " bytes); block devices are never resized",
			     beyond_device(rec, dev_size), off, len, c->path, dev_size);
	switch (rec->type) {
	case SEG_WRITE:
		if (rec->payload_len != len)
			return dfail(c, err, errlen, -EINVAL, "WRITE of %" PRIu64 " bytes carries %u",
				     len, rec->payload_len);
		if (c->run && len <= SOURCE_CHUNK) {
			reading = true; /* nothing is written yet */
			r = run_append(fd, c, rec);
		} else if (c->src && c->src->fd >= 0) {
			r = write_from_source(fd, c->src, rec, &reading);
		} else {
			r = fileio_pwrite_full(apply_io.pwrite_fn, fd, rec->payload, len, off);
		}
		if (r < 0 && reading)
			return dfail(c, err, errlen, r, "reading the payload of the write at %" PRIu64
				     "+%" PRIu64 " from the segment file: %s", off, len,
				     r == -ENODATA ? "it is shorter than when it was checked"
						   : strerror(-r));
		if (r < 0)
			return dfail(c, err, errlen, r, "write at %" PRIu64 "+%" PRIu64 " to %s: %s",
				     off, len, c->path, strerror(-r));
		return 0;
	case SEG_ZERO:
		if (blockdev) {
			/* past the device end with KEEP_SIZE: invisible at the
			 * source too (beyond_device); clip it */
			if (off >= dev_size)
				return 0;
			r = zero_blockdev(fd, off, (end < dev_size ? end : dev_size) - off,
					  rec->flags & SEG_F_PUNCH);
		} else {
			r = zero_file(fd, rec);
		}
		if (r < 0)
			return dfail(c, err, errlen, r, "zeroing %" PRIu64 "+%" PRIu64 " of %s: %s",
				     off, len, c->path, strerror(-r));
		return 0;
	case SEG_TRUNCATE:
		if (blockdev) {
			/* What lies past the new size must read zeros when
			 * the image grows again, as it does on the source. */
			r = off < dev_size ? zero_blockdev(fd, off, dev_size - off, false) : 0;
		} else if (apply_io.ftruncate_fn(fd, (off_t)off) < 0) {
			r = -errno;
		}
		if (r < 0)
			return dfail(c, err, errlen, r, "truncate of %s to %" PRIu64 ": %s", c->path,
				     off, strerror(-r));
		return 0;
	case SEG_ALLOC:
		if (blockdev)
			return 0; /* allocated already; a growth past its end: beyond_device */
		if (apply_io.fallocate_fn(fd, keep ? FALLOC_FL_KEEP_SIZE : 0, (off_t)off,
					  (off_t)len) < 0) {
			r = -errno;
			if (unsupported(-r))
				r = keep ? 0 : grow_to(fd, end);
		}
		if (r < 0)
			return dfail(c, err, errlen, r, "allocating %" PRIu64 "+%" PRIu64 " of %s: %s",
				     off, len, c->path, strerror(-r));
		return 0;
	default:
		return dfail(c, err, errlen, -EINVAL, "%s is not a data record",
			     seg_type_name(rec->type));
	}
}

int apply_record_data(int fd, const struct seg_record *r, bool block_device,
		      uint64_t device_size, char *err, size_t errlen)
{
	struct data_ctx c = { .path = block_device ? "the device" : "the file" };

	if (err && errlen)
		err[0] = '\0';
	return apply_data(fd, r, block_device, device_size, &c, err, errlen);
}

/* ---- runs of WRITEs ---- */

/* Writes the run out (if any) and empties it. */
static int run_write(struct applier *a, char *err, size_t errlen)
{
	struct write_run *w = &a->run;
	int n = w->n, r;

	if (!n)
		return 0;
	w->n = 0;
	r = fileio_pwritev_full(apply_io.pwritev_fn, w->fd, w->iov, n, w->offset);
	if (r < 0) {
		/* counted as they joined; not applied after all */
		a->stats.records -= (uint64_t)n;
		a->stats.bytes_written -= w->length;
		return apply_fail(err, errlen, r,
				  "image %s: write at %" PRIu64 "+%" PRIu64 " to %s (the %d WRITEs"
				  " of LSN %" PRIu64 " to %" PRIu64 "): %s",
				  w->image, w->offset, w->length, w->path, n, w->first_lsn,
				  w->last_lsn, strerror(-r));
	}
	return 0;
}

/* After a record or its callback failed: the run's WRITEs, which came
 * before it, still reach the targets, as when each went at once.  A
 * failure here is not reported over the first one. */
static void run_write_after_failure(struct applier *a)
{
	char ignored[256];

	run_write(a, ignored, sizeof ignored);
}

/* Whether WRITEs may wait in a run: their payloads come from a source
 * file, and no record callback examines the targets after each. */
static bool runs_allowed(const struct applier *a)
{
	return a->src.fd >= 0 && !(a->record && a->record_reads);
}

/* Whether rec, of image name, can join the run: a WRITE continuing it in
 * the same target whose payload the source's window holds already. */
static bool run_continues(const struct applier *a, const char *name, const struct seg_record *rec)
{
	const struct write_run *w = &a->run;

	return runs_allowed(a) && w->n < RUN_IOV_MAX && rec->type == SEG_WRITE &&
	       strcmp(name, w->image) == 0 &&
	       rec->offset == w->offset + w->length && rec->length <= SOURCE_CHUNK &&
	       fileio_window_holds(&a->src.win, source_offset(&a->src, rec), (size_t)rec->length);
}

/* ---- barriers ---- */

/* Makes every dirty target durable, then reports lsn as reached. */
static int barrier(struct applier *a, uint64_t lsn, uint64_t time_ns, char *err, size_t errlen)
{
	struct apply_progress p = { a->segment, lsn, time_ns };
	int r = run_write(a, err, errlen);

	if (r < 0)
		return r;

	for (int i = 0; i < CACHE_MAX; i++) {
		struct target *t = &a->cache[i];

		if (!t->name || !t->dirty)
			continue;
		r = apply_fsync_fd(t->fd);
		if (r < 0)
			return apply_fail(err, errlen, r, "image %s: fsync %s: %s", t->name, t->path,
				    strerror(-r));
		t->dirty = false;
	}
	a->pending = false;
	a->reported = true;
	a->reported_lsn = lsn;
	a->stats.barriers++;
	a->stats.last_lsn = lsn;
	if (a->durable) {
		r = a->durable(a->durable_ctx, &p);
		if (r < 0)
			return apply_fail(err, errlen, r, "recording progress at LSN %" PRIu64 ": %s", lsn,
				    strerror(-r));
	}
	return 0;
}

/* ---- namespace records ---- */

static int ns_create(struct applier *a, const struct seg_record *rec, char *err, size_t errlen)
{
	char name[SEG_NAME_MAX + 1];
	struct data_ctx c = { 0 };
	struct target *t;
	mode_t mode = rec->aux & FILE_MODE_MASK;
	int r;

	seg_record_name(rec, name);
	/* A cached fd could be an older file of that name. */
	r = target_drop(a, name, false, err, errlen);
	if (r == 0)
		r = target_get(a, name, mode, &t, err, errlen);
	if (r < 0)
		return r;
	c.image = name;
	c.path = t->path;
	if (t->blockdev) {
		r = t->dev_size ? zero_blockdev(t->fd, 0, t->dev_size, false) : 0;
	} else {
		if (apply_io.ftruncate_fn(t->fd, 0) < 0)
			r = -errno;
		/* Exactly the journaled mode, whatever our umask; a mapped
		 * file keeps the mode its operator gave it. */
		if (r == 0 && !t->mapped && fchmod(t->fd, mode) < 0)
			r = -errno;
	}
	if (r < 0)
		return dfail(&c, err, errlen, r, "CREATE of %s: %s", t->path, strerror(-r));
	t->dirty = true;
	return 0;
}

static int ns_unlink(struct applier *a, const struct seg_record *rec, char *err, size_t errlen)
{
	char name[SEG_NAME_MAX + 1];

	seg_record_name(rec, name);
	return applier_remove(a, name, err, errlen);
}

/* Removes name (a file, or a directory with AT_REMOVEDIR) beneath the
 * target directory and makes its parent durable; what is gone already is
 * done (a namespace record may run twice, see the top of this file). */
static int remove_entry(struct applier *a, const char *name, int flags, const char *what,
			char *err, size_t errlen)
{
	const char *leaf;
	int pfd, r;

	pfd = apply_open_parent(a, name, false, &leaf, err, errlen);
	if (pfd == -ENOENT)
		return 0; /* no directory, no entry: done already */
	if (pfd < 0)
		return pfd;
	r = unlinkat(pfd, leaf, flags) < 0 ? -errno : 0;
	if (r == -ENOENT)
		r = 0;
	if (r == 0)
		r = apply_fsync_fd(pfd);
	close(pfd);
	if (r < 0)
		return apply_fail(err, errlen, r, "%s of %s in %s: %s", what, name, a->dir,
				  strerror(-r));
	return 0;
}

int applier_remove(struct applier *a, const char *name, char *err, size_t errlen)
{
	const struct mapping *m;
	int r;

	r = target_drop(a, name, false, err, errlen);
	if (r < 0)
		return r;
	m = apply_find_map(a, name);
	if (m) {
		log_info("image %s was removed at the source; leaving its mapped target %s in place",
			 name, m->path);
		return 0;
	}
	return remove_entry(a, name, 0, "UNLINK", err, errlen);
}

/* True if name exists (of any type, a symlink too) beneath the target
 * directory. */
static bool exists_beneath(struct applier *a, const char *name)
{
	int fd = apply_open_beneath(a->dirfd, name, O_PATH | O_NOFOLLOW, 0);

	if (fd < 0)
		return false;
	close(fd);
	return true;
}

static int ns_rename(struct applier *a, const struct seg_record *rec, char *err, size_t errlen)
{
	char old_name[SEG_NAME_MAX + 1], new_name[SEG_NAME_MAX + 1];
	bool dir = rec->flags & SEG_F_DIR;
	const struct mapping *m;
	const char *oleaf, *nleaf;
	int opfd, npfd, r;

	seg_rename_names(rec, old_name, new_name);
	m = apply_find_map(a, old_name);
	if (!m)
		m = apply_find_map(a, new_name);
	if (!m && dir) {
		m = apply_find_map_under(a, old_name);
		if (!m)
			m = apply_find_map_under(a, new_name);
	}
	if (m)
		return apply_fail(err, errlen, -EXDEV,
			    "RENAME of %s to %s involves image %s, which is mapped to %s; a mapped target cannot follow a rename: map the new name and replay, or stop mirroring this image",
			    old_name, new_name, m->image, m->path);
	r = target_drop(a, old_name, dir, err, errlen);
	if (r == 0)
		r = target_drop(a, new_name, dir, err, errlen);
	if (r < 0)
		return r;
	opfd = apply_open_parent(a, old_name, false, &oleaf, err, errlen);
	if (opfd < 0 && opfd != -ENOENT)
		return opfd;
	npfd = -1;
	r = opfd;
	if (opfd >= 0) {
		npfd = apply_open_parent(a, new_name, true, &nleaf, err, errlen);
		if (npfd < 0) {
			close(opfd);
			return npfd;
		}
		r = renameat(opfd, oleaf, npfd, nleaf) < 0 ? -errno : 0;
		if (r == 0)
			r = apply_fsync_fd(npfd);
		if (r == 0)
			r = apply_fsync_fd(opfd);
		close(opfd);
		close(npfd);
	}
	if (r == -ENOENT) {
		/* Resuming after a crash: the rename may be done already. */
		if (exists_beneath(a, new_name))
			return 0;
		if (dir) {
			/* A directory the replica never had (made before it was
			 * seeded, or emptied of this destination's images): the
			 * source has it under the new name now, so does the replica. */
			int pfd = apply_open_parent(a, new_name, true, &nleaf, err, errlen);

			if (pfd < 0)
				return pfd;
			r = mkdirat(pfd, nleaf, 0755) < 0 && errno != EEXIST ? -errno : apply_fsync_fd(pfd);
			close(pfd);
			return r < 0 ? apply_fail(err, errlen, r, "RENAME of directory %s to %s: %s",
					    old_name, new_name, strerror(-r)) : 0;
		}
		log_warn("RENAME of %s to %s at LSN %" PRIu64 ": neither exists in %s; the replica never had %s",
			 old_name, new_name, rec->lsn, a->dir, old_name);
		return 0;
	}
	if (r < 0)
		return apply_fail(err, errlen, r, "RENAME of %s to %s in %s: %s", old_name, new_name,
			    a->dir, strerror(-r));
	return 0;
}

static int ns_mkdir(struct applier *a, const struct seg_record *rec, char *err, size_t errlen)
{
	char name[SEG_NAME_MAX + 1];
	mode_t mode = rec->aux & DIR_MODE_MASK;
	const char *leaf;
	int pfd, fd, r;

	seg_record_name(rec, name);
	pfd = apply_open_parent(a, name, true, &leaf, err, errlen);
	if (pfd < 0)
		return pfd;
	r = mkdirat(pfd, leaf, mode) < 0 ? -errno : 0;
	if (r == 0 || r == -EEXIST) {
		/* Exactly the journaled mode, whatever our umask, also when a
		 * resumed apply finds the directory made but not chmodded. */
		fd = apply_open_beneath(pfd, leaf, O_RDONLY | O_DIRECTORY, 0);
		if (fd >= 0) {
			r = fchmod(fd, mode) < 0 ? -errno : 0;
			close(fd);
		} else {
			r = fd == -ENOTDIR ? 0 : fd; /* a file in the way: later records will say */
		}
	}
	if (r == 0)
		r = apply_fsync_fd(pfd);
	close(pfd);
	if (r < 0)
		return apply_fail(err, errlen, r, "MKDIR of %s in %s: %s", name, a->dir, apply_open_reason(r));
	return 0;
}

static int ns_rmdir(struct applier *a, const struct seg_record *rec, char *err, size_t errlen)
{
	char name[SEG_NAME_MAX + 1];
	int r;

	seg_record_name(rec, name);
	r = target_drop(a, name, true, err, errlen);
	if (r < 0)
		return r;
	return remove_entry(a, name, AT_REMOVEDIR, "RMDIR", err, errlen);
}

/* ---- resynchronisation records ---- */

static int report(struct applier *a, const struct apply_event *e, char *err, size_t errlen)
{
	int r;

	if (e->type == APPLY_EV_MISMATCH) {
		a->stats.mismatches++;
		a->stats.bytes_differing += e->length;
	}
	if (!a->event)
		return 0;
	r = a->event(a->event_ctx, e);
	if (r < 0)
		return apply_fail(err, errlen, r, "recording the %s at LSN %" PRIu64 ": %s",
			    e->type == APPLY_EV_MISMATCH ? "differences found" : "resync state",
			    e->lsn, strerror(-r));
	return 0;
}

/* Runs of differing blocks of one HASH record, reported as they close; the
 * APPLY_MISMATCH_RUNS_MAX-th is held and grows over every later run. */
struct runs {
	struct apply_event ev;
	const struct seg_record *rec;
	uint64_t count;
	bool held;
	uint64_t held_first, held_end; /* block numbers */
};

static int run_report(struct applier *a, struct runs *ru, uint64_t first, uint64_t end,
		      char *err, size_t errlen)
{
	uint64_t block = ru->ev.block, range_end = ru->rec->offset + ru->rec->length;
	uint64_t e = ru->rec->offset + end * block;

	ru->ev.offset = ru->rec->offset + first * block;
	ru->ev.length = (e < range_end ? e : range_end) - ru->ev.offset;
	return report(a, &ru->ev, err, errlen);
}

static int run_close(struct applier *a, struct runs *ru, uint64_t first, uint64_t end,
		     char *err, size_t errlen)
{
	if (++ru->count < APPLY_MISMATCH_RUNS_MAX)
		return run_report(a, ru, first, end, err, errlen);
	if (!ru->held) {
		ru->held = true;
		ru->held_first = first;
	}
	ru->held_end = end;
	return 0;
}

static int hash_compare(struct applier *a, struct seg_view *v, const struct seg_record *rec,
			char *err, size_t errlen)
{
	static const uint8_t nothing[1];
	uint32_t block = seg_hash_block(rec);
	uint64_t blocks = (rec->length + block - 1) / block, first = 0;
	const char *name = seg_view_image_name(v, rec->image);
	struct target *t = NULL;
	struct runs ru;
	bool missing, in_run = false;
	struct data_ctx c = { 0 };
	int r;

	if (!name) /* the decoder guarantees a binding */
		return apply_fail(err, errlen, -EINVAL, "image %u is not bound", rec->image);
	r = target_existing(a, name, &t, err, errlen);
	if (r < 0)
		return r;
	missing = r == 1;
	if (!missing && a->hbuf_len < block) {
		uint8_t *nb = realloc(a->hbuf, block);

		if (!nb)
			return apply_fail(err, errlen, -ENOMEM, "out of memory");
		a->hbuf = nb;
		a->hbuf_len = block;
	}
	memset(&ru, 0, sizeof ru);
	ru.rec = rec;
	ru.ev.type = APPLY_EV_MISMATCH;
	ru.ev.segment = a->segment;
	ru.ev.lsn = rec->lsn;
	ru.ev.time_ns = rec->time_ns;
	ru.ev.dest = rec->aux;
	ru.ev.image = name;
	ru.ev.image_id = rec->image;
	ru.ev.block = block;
	for (uint64_t i = 0; i <= blocks; i++) {
		bool differs = false;

		if (i < blocks) {
			uint64_t off = rec->offset + i * block, left = rec->offset + rec->length - off;
			size_t want = left < block ? (size_t)left : block, got = 0;

			if (!missing) {
				ssize_t k = fileio_pread_full(apply_io.pread_fn, t->fd, a->hbuf, want,
							      off);

				r = k < 0 ? (int)k : 0;
				got = k < 0 ? 0 : (size_t)k;
				if (r < 0) {
					c.image = name;
					c.path = t->path;
					return dfail(&c, err, errlen, r,
						     "reading %" PRIu64 "+%zu of %s to compare: %s", off,
						     want, t->path, strerror(-r));
				}
			}
			differs = XXH3_64bits(missing ? nothing : a->hbuf, got) != seg_hash_at(rec, i);
		}
		if (differs && !in_run) {
			in_run = true;
			first = i;
		} else if (!differs && in_run) {
			in_run = false;
			r = run_close(a, &ru, first, i, err, errlen);
			if (r < 0)
				return r;
		}
	}
	a->stats.bytes_hashed += rec->length;
	return ru.held ? run_report(a, &ru, ru.held_first, ru.held_end, err, errlen) : 0;
}

static int sync_event(struct applier *a, const struct seg_record *rec, char *err, size_t errlen)
{
	struct apply_event e = {
		.type = rec->type == SEG_SYNC_BEGIN ? APPLY_EV_SYNC_BEGIN : APPLY_EV_SYNC_END,
		.segment = a->segment,
		.lsn = rec->lsn,
		.time_ns = rec->time_ns,
		.dest = rec->aux,
	};
	int r;

	/* The last consistent point, durable and recorded as such. */
	if (rec->type == SEG_SYNC_BEGIN && a->pending) {
		r = barrier(a, rec->lsn - 1, a->prev_time, err, errlen);
		if (r < 0)
			return r;
	}
	r = report(a, &e, err, errlen);
	if (r < 0)
		return r;
	return barrier(a, rec->lsn, rec->time_ns, err, errlen);
}

/* ---- applying ---- */

static bool is_data(uint32_t type)
{
	return type == SEG_WRITE || type == SEG_ZERO || type == SEG_TRUNCATE || type == SEG_ALLOC;
}

static int apply_one(struct applier *a, struct seg_view *v, const struct seg_record *rec,
		     char *err, size_t errlen)
{
	struct data_ctx c = { 0 };
	struct target *t;
	const char *name = NULL;
	int r;

	if (is_data(rec->type)) {
		name = seg_view_image_name(v, rec->image);
		if (!name) /* the decoder guarantees a binding */
			return apply_fail(err, errlen, -EINVAL, "image %u is not bound", rec->image);
	}
	/* Every other record, target and window comes after the run. */
	if (a->run.n && !(name && run_continues(a, name, rec))) {
		r = run_write(a, err, errlen);
		if (r < 0)
			return r;
	}
	switch (rec->type) {
	case SEG_WRITE:
	case SEG_ZERO:
	case SEG_TRUNCATE:
	case SEG_ALLOC:
		r = target_get(a, name, NEW_FILE_MODE, &t, err, errlen);
		if (r < 0)
			return r;
		c.image = t->name; /* the run may hold it: the view's may move */
		c.path = t->path;
		c.src = &a->src;
		if (rec->type == SEG_WRITE && runs_allowed(a))
			c.run = &a->run;
		r = apply_data(t->fd, rec, t->blockdev, t->dev_size, &c, err, errlen);
		if (r < 0)
			return r;
		t->dirty = true;
		a->pending = true;
		if (rec->type == SEG_WRITE)
			a->stats.bytes_written += rec->length;
		else if (rec->type == SEG_ZERO)
			a->stats.bytes_zeroed += rec->length;
		return 0;
	case SEG_FLUSH:
		return barrier(a, rec->lsn, rec->time_ns, err, errlen);
	case SEG_MARK:
	case SEG_SKIP:
		return 0;
	case SEG_SYNC_BEGIN:
	case SEG_SYNC_END:
		return sync_event(a, rec, err, errlen);
	case SEG_HASH:
		return hash_compare(a, v, rec, err, errlen);
	case SEG_CREATE:
	case SEG_UNLINK:
	case SEG_RENAME:
	case SEG_MKDIR:
	case SEG_RMDIR:
		break;
	default:
		return apply_fail(err, errlen, -EINVAL, "unknown record type %u", rec->type);
	}
	if (a->pending) {
		r = barrier(a, rec->lsn - 1, a->prev_time, err, errlen);
		if (r < 0)
			return r;
	}
	switch (rec->type) {
	case SEG_CREATE:
		r = ns_create(a, rec, err, errlen);
		break;
	case SEG_UNLINK:
		r = ns_unlink(a, rec, err, errlen);
		break;
	case SEG_RENAME:
		r = ns_rename(a, rec, err, errlen);
		break;
	case SEG_MKDIR:
		r = ns_mkdir(a, rec, err, errlen);
		break;
	default:
		r = ns_rmdir(a, rec, err, errlen);
		break;
	}
	if (r < 0)
		return r;
	return barrier(a, rec->lsn, rec->time_ns, err, errlen);
}

/* Tells the record callback about rec; on APPLY_STOP makes the targets
 * durable up to rec first (unless rec's own barrier just did). */
static int record_hook(struct applier *a, struct seg_view *v, const struct seg_record *rec,
		       char *err, size_t errlen)
{
	int r = a->record(a->record_ctx, v, rec);

	if (r < 0)
		return apply_fail(err, errlen, r, "at LSN %" PRIu64 " of segment %" PRIu64 ": %s",
				  rec->lsn, a->segment, strerror(-r));
	if (r != APPLY_STOP)
		return 0;
	if (!(a->reported && a->reported_lsn == rec->lsn)) {
		r = barrier(a, rec->lsn, rec->time_ns, err, errlen);
		if (r < 0)
			return r;
	}
	err[0] = '\0';
	return APPLY_STOP;
}

int applier_apply(struct applier *a, struct seg_view *v, uint64_t after_lsn, char *err,
		  size_t errlen)
{
	const struct seg_header *h = seg_view_header(v);
	const struct seg_trailer *tr = seg_view_trailer(v);
	uint64_t last = seg_view_last_lsn(v);
	struct seg_record rec;
	char scratch[256];
	int r;

	if (!err || !errlen) {
		err = scratch;
		errlen = sizeof scratch;
	}
	err[0] = '\0';
	if (!tr)
		return apply_fail(err, errlen, -EINVAL, "segment %" PRIu64 " is not sealed", h->number);
	a->segment = h->number;
	a->run.n = 0; /* a failed apply's: its window is gone */
	a->pending = false;
	a->reported = false;
	a->prev_time = tr->sealed_ns; /* for an empty segment */
	seg_view_rewind(v);
	/* Records up to after_lsn are iterated too: the view follows their
	 * renames, so that later records resolve to the right names. */
	while (seg_view_next(v, &rec) == 1) {
		if (rec.lsn > after_lsn) {
			r = apply_one(a, v, &rec, err, errlen);
			if (r < 0) {
				size_t n = strlen(err);

				run_write_after_failure(a);
				/* Where, for the operator: the record and how
				 * far the targets are durable. */
				snprintf(err + n, errlen - n,
					 " [%s record, LSN %" PRIu64 " of segment %" PRIu64 "]",
					 seg_type_name(rec.type), rec.lsn, h->number);
				return r;
			}
			a->stats.records++;
			if (a->record) {
				r = record_hook(a, v, &rec, err, errlen);
				if (r < 0)
					run_write_after_failure(a);
				if (r != 0)
					return r;
			}
		}
		a->prev_time = rec.time_ns;
	}
	if (last >= after_lsn && !(a->reported && a->reported_lsn == last)) {
		r = barrier(a, last, a->prev_time, err, errlen);
		if (r < 0)
			return r;
	}
	a->stats.segments++;
	err[0] = '\0'; /* a tolerated failure (a resumed RENAME) may have left text */
	return 0;
}

/* ---- life cycle ---- */

int applier_new(const char *target_dir, struct applier **out)
{
	struct applier *a = calloc(1, sizeof *a);
	struct stat st;
	int r;

	if (!a) {
		log_error("out of memory");
		return -ENOMEM;
	}
	for (int i = 0; i < CACHE_MAX; i++)
		a->cache[i].fd = -1;
	a->src.fd = -1;
	a->record_reads = true;
	a->dir = strdup(target_dir);
	/* O_RDONLY, not O_PATH: the directory itself is fsynced. */
	a->dirfd = open(target_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (a->dirfd < 0) {
		r = -errno;
		if (r == -ENOTDIR || (stat(target_dir, &st) == 0 && !S_ISDIR(st.st_mode)))
			log_error("target directory %s is not a directory", target_dir);
		else
			log_error("target directory %s: %s", target_dir, strerror(-r));
		free(a->dir);
		free(a);
		return r;
	}
	if (!a->dir) {
		applier_free(a);
		log_error("out of memory");
		return -ENOMEM;
	}
	/* Refuse early on a kernel without openat2 (Linux < 5.6): there is
	 * no safe fallback for confining paths. */
	r = apply_open_beneath(a->dirfd, ".", O_RDONLY | O_DIRECTORY, 0);
	if (r < 0) {
		log_error("target directory %s: openat2: %s%s", target_dir, strerror(-r),
			  r == -ENOSYS ? " (Linux 5.6 or later is needed)" : "");
		applier_free(a);
		return r;
	}
	close(r);
	*out = a;
	return 0;
}

int applier_map(struct applier *a, const char *image, const char *path)
{
	struct mapping *nm;
	struct stat st;
	char *img, *p;

	if (!seg_name_valid(image, strlen(image))) {
		log_error("--map %s=%s: \"%s\" is not a valid image name (a relative path without \".\" or \"..\" components)",
			  image, path, image);
		return -EINVAL;
	}
	if (apply_find_map(a, image)) {
		log_error("--map %s=%s: image %s is mapped twice", image, path, image);
		return -EEXIST;
	}
	if (stat(path, &st) == 0) {
		if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
			log_error("--map %s=%s: %s is neither a regular file nor a block device",
				  image, path, path);
			return -EINVAL;
		}
	} else if (errno == ENOENT) {
		char *dir = strdup(path);
		char *slash;
		int r = 0;

		if (!dir) {
			log_error("out of memory");
			return -ENOMEM;
		}
		slash = strrchr(dir, '/');
		if (slash)
			*(slash == dir ? slash + 1 : slash) = '\0';
		if (stat(slash ? dir : ".", &st) < 0 || !S_ISDIR(st.st_mode)) {
			log_error("--map %s=%s: the directory %s does not exist", image, path,
				  slash ? dir : ".");
			r = -ENOENT;
		}
		free(dir);
		if (r < 0)
			return r;
	} else {
		log_error("--map %s=%s: %s: %m", image, path, path);
		return -errno;
	}
	nm = realloc(a->maps, (a->nmaps + 1) * sizeof *nm);
	if (!nm) {
		log_error("out of memory");
		return -ENOMEM;
	}
	a->maps = nm;
	img = strdup(image);
	p = strdup(path);
	if (!img || !p) {
		free(img);
		free(p);
		log_error("out of memory");
		return -ENOMEM;
	}
	a->maps[a->nmaps].image = img;
	a->maps[a->nmaps].path = p;
	a->nmaps++;
	return 0;
}

int apply_map_parse(const char *arg, struct apply_map *m, const char **why)
{
	const char *eq = strchr(arg, '=');

	memset(m, 0, sizeof *m);
	if (!eq || eq == arg || !eq[1]) {
		*why = "expected IMAGE=PATH";
		return -EINVAL;
	}
	m->image = strndup(arg, (size_t)(eq - arg));
	m->path = strdup(eq + 1);
	if (!m->image || !m->path) {
		apply_map_free(m);
		*why = "out of memory";
		return -ENOMEM;
	}
	return 0;
}

void apply_map_free(struct apply_map *m)
{
	free(m->image);
	free(m->path);
	m->image = m->path = NULL;
}

int applier_map_all(struct applier *a, const struct apply_map *maps, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int r = applier_map(a, maps[i].image, maps[i].path);

		if (r < 0)
			return r;
	}
	return 0;
}

/* The size of the block device at path, UINT64_MAX if path is not one
 * (a file grows).  0 or -errno with err set. */
static int device_size(const char *path, uint64_t *size, char *err, size_t errlen)
{
	struct stat st;
	int fd, r = 0;

	*size = UINT64_MAX;
	if (stat(path, &st) < 0 || !S_ISBLK(st.st_mode))
		return 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || apply_io.ioctl_fn(fd, BLKGETSIZE64, size) < 0)
		r = apply_fail(err, errlen, -errno, "cannot read the size of %s: %s", path,
			       strerror(errno));
	if (fd >= 0)
		close(fd);
	return r;
}

int applier_check(struct applier *a, struct seg_view *v, uint64_t after, char *err,
		  size_t errlen)
{
	struct seg_record rec;
	uint64_t *sizes;
	int r = 0;

	if (!a->nmaps)
		return 0;
	sizes = calloc(a->nmaps, sizeof *sizes);
	if (!sizes)
		return apply_fail(err, errlen, -ENOMEM, "out of memory");
	for (size_t i = 0; i < a->nmaps && r == 0; i++)
		r = device_size(a->maps[i].path, &sizes[i], err, errlen);
	seg_view_rewind(v);
	while (r == 0 && seg_view_next(v, &rec) == 1) {
		const struct mapping *m;
		const char *name, *what;
		size_t i;

		if (rec.lsn <= after || rec.type < SEG_WRITE || rec.type > SEG_ALLOC)
			continue;
		name = seg_view_image_name(v, rec.image);
		m = name ? apply_find_map(a, name) : NULL;
		if (!m)
			continue;
		i = (size_t)(m - a->maps);
		what = sizes[i] == UINT64_MAX ? NULL : beyond_device(&rec, sizes[i]);
		if (what)
			r = apply_fail(err, errlen, -ENOSPC,
				       "%s at %" PRIu64 "+%" PRIu64 " (LSN %" PRIu64 ") of image %s is"
				       " beyond the end of %s (%" PRIu64 " bytes); block devices are"
				       " never resized, so nothing of segment %" PRIu64 " was applied",
				       what, rec.offset, rec.length, rec.lsn, name, m->path, sizes[i],
				       seg_view_header(v)->number);
	}
	seg_view_rewind(v);
	free(sizes);
	return r;
}

void applier_set_durable_cb(struct applier *a, apply_durable_fn fn, void *ctx)
{
	a->durable = fn;
	a->durable_ctx = ctx;
}

void applier_set_event_cb(struct applier *a, apply_event_fn fn, void *ctx)
{
	a->event = fn;
	a->event_ctx = ctx;
}

void applier_set_record_cb(struct applier *a, apply_record_fn fn, void *ctx)
{
	a->record = fn;
	a->record_ctx = ctx;
	a->record_reads = true; /* until the caller says otherwise */
}

void applier_record_cb_reads_targets(struct applier *a, bool reads)
{
	a->record_reads = reads;
}

void applier_set_source(struct applier *a, int fd, const void *base)
{
	a->src.fd = base ? fd : -1; /* no base: no offsets to read at */
	a->src.base = base;
	a->src.win.held = 0; /* another file, or the same one changed */
}

void applier_stats(const struct applier *a, struct apply_stats *st)
{
	*st = a->stats;
}

void applier_free(struct applier *a)
{
	char err[256];

	if (!a)
		return;
	for (int i = 0; i < CACHE_MAX; i++)
		if (target_close(&a->cache[i], err, sizeof err) < 0)
			log_error("%s", err);
	if (a->dirfd >= 0)
		close(a->dirfd);
	for (size_t i = 0; i < a->nmaps; i++) {
		free(a->maps[i].image);
		free(a->maps[i].path);
	}
	free(a->maps);
	free(a->dir);
	free(a->hbuf);
	free(a->src.win.buf);
	free(a);
}
