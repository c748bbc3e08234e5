/*
 * apply.h — the applier: re-drives the records of validated segments onto
 * the targets of a remote site, in LSN order, and tells its caller when the
 * targets are durable up to which LSN.
 *
 * A target is the file target_dir/NAME for image NAME (NAME may contain
 * directories, created on demand), or the path an operator mapped with
 * --map IMAGE=PATH: a regular file or a block device anywhere.  Every path
 * inside target_dir is resolved with openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS), and every mkdir, rename and
 * unlink works on a parent directory opened that way, so neither a hostile
 * segment nor a symlink planted in target_dir can reach outside it.
 *
 * Durability (invariant 4): at each FLUSH record, around each namespace
 * record (CREATE, UNLINK, RENAME, MKDIR, RMDIR) and at the end of a segment
 * the applier fsyncs every target touched since the last barrier (and the
 * directories whose entries changed), then calls the durable callback with
 * the LSN reached.  A caller that records that LSN after the callback and
 * resumes from it after a crash gets the same targets as an uninterrupted
 * run (invariant 3): data records are re-applied in order, which converges,
 * and each namespace record is durable on its own, so only the last one can
 * run twice, and every namespace record tolerates being run twice.
 *
 * Resynchronisation (docs/RESYNC.md).  RESYNC-tagged WRITE, ZERO and
 * TRUNCATE records are applied as without the tag.  SYNC_BEGIN, SYNC_END
 * and HASH change nothing on the targets; the applier tells the event
 * callback about them, in stream order (see apply_event_fn for when, and
 * what a caller must record to stay correct across a crash).
 *
 * Thread safety: a struct applier belongs to one thread at a time.
 * apply_record_data is a pure function of its arguments and the fd.
 */
#ifndef AIM_APPLY_H
#define AIM_APPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "format.h"

struct applier;

/* Where the targets are durable: every record up to lsn of segment
 * number segment; time_ns is the source time of the record at lsn. */
struct apply_progress {
	uint64_t segment;
	uint64_t lsn;
	uint64_t time_ns;
};

/* Called once the targets are durable up to p->lsn.  A negative return
 * (-errno) stops the apply, which returns it. */
typedef int (*apply_durable_fn)(void *ctx, const struct apply_progress *p);

enum apply_event_type {
	APPLY_EV_SYNC_BEGIN = 1, /* a SYNC_BEGIN record: the targets stop being consistent */
	APPLY_EV_SYNC_END,       /* a SYNC_END record: ... and are consistent again */
	APPLY_EV_MISMATCH,       /* a run of blocks of a HASH record that differ */
};

/* Most MISMATCH events one HASH record yields: the last one then also
 * covers every further differing block (and the equal ones in between). */
#define APPLY_MISMATCH_RUNS_MAX 1024

/* What a SYNC_BEGIN, SYNC_END or HASH record found.  Valid during the
 * callback only. */
struct apply_event {
	enum apply_event_type type;
	uint64_t segment;  /* segment number */
	uint64_t lsn;      /* the record's LSN */
	uint64_t time_ns;  /* the record's source time */
	uint32_t dest;     /* the record's aux: destination number (HASH: 0 = all) */
	/* MISMATCH only (NULL and 0 otherwise): */
	const char *image; /* the image's name at this point of the stream */
	uint32_t image_id; /* the record's image id (the source's) */
	uint64_t offset;   /* the differing range: whole blocks, but the last */
	uint64_t length;   /*   one clipped to the end of the HASH's range */
	uint32_t block;    /* the HASH's block size */
};

/*
 * Called for each event, in stream order.  A negative return (-errno)
 * stops the apply, which returns it.  When, relative to the durable
 * callback:
 *   - SYNC_BEGIN at LSN L: the durable callback is called for L - 1 first
 *     (if records were applied since the last one), then this event, then
 *     the durable callback for L, before any later record touches a
 *     target.  A caller that records "inconsistent since L" together with
 *     the progress of the next durable callback therefore never claims a
 *     consistent copy that has a resync record in it.
 *   - SYNC_END at LSN L: this event, then the targets are made durable and
 *     the durable callback is called for L: recorded with that progress,
 *     "consistent" is only claimed once everything up to L is durable.
 *   - MISMATCH for a HASH at LSN L: before the durable callback for any
 *     LSN >= L.  The comparison reads what the targets hold at that point
 *     of the stream (a missing target reads as empty, bytes past its end
 *     as absent, so such blocks differ).
 * An apply resumed after a crash reports again the events of the records
 * it re-applies (those after the last recorded durable LSN): a caller that
 * keys what it stores by LSN stays consistent, and one that stores
 * MISMATCHes before their LSN is durable must drop those above its
 * recorded progress when it resumes (they are reported again, and the
 * target may then compare differently).
 */
typedef int (*apply_event_fn)(void *ctx, const struct apply_event *e);

/*
 * Called right after each record with lsn > after_lsn has been applied,
 * whatever its type (FLUSH, MARK and SKIP included), in stream order.  v
 * is the view being applied, positioned at r: seg_view_image_name and
 * seg_view_names answer as of r, r's own namespace change included.  The
 * targets then hold exactly the state after r (unless the caller said
 * they are not read: applier_record_cb_reads_targets) -- in the page cache:
 * another process that reads the target files now sees that state, but it
 * is durable only at barriers.  Returns 0 to go on, APPLY_STOP to stop
 * right after r (the applier makes the targets durable up to r, tells the
 * durable callback, and applier_apply returns APPLY_STOP), or -errno to
 * fail the apply, which returns it.  For `aimctl replay --until` (stop at
 * a record) and `aimctl check` (examine the targets at chosen records).
 */
typedef int (*apply_record_fn)(void *ctx, struct seg_view *v, const struct seg_record *r);

/* What a record callback returns to stop, and applier_apply then. */
#define APPLY_STOP 1

/* What an applier did since applier_new (for summaries and status). */
struct apply_stats {
	uint64_t segments;      /* segments applied to their end */
	uint64_t records;       /* records applied (lsn > after_lsn) */
	uint64_t bytes_written; /* WRITE payload bytes */
	uint64_t bytes_zeroed;  /* ZERO lengths */
	uint64_t barriers;      /* durable callbacks made */
	uint64_t last_lsn;      /* last LSN made durable, 0 if none */
	uint64_t bytes_hashed;  /* HASH range bytes compared */
	uint64_t bytes_differing; /* ... of which in MISMATCH events */
	uint64_t mismatches;    /* MISMATCH events */
};

/*
 * Opens target_dir (which must exist and be a directory) for an applier.
 * Returns 0 and *out (free with applier_free), or -errno after logging why
 * the directory is unusable.
 */
int applier_new(const char *target_dir, struct applier **out);

/*
 * Maps image name image (a valid relative image path) to path, a regular
 * file or a block device, which may lie outside target_dir; a missing path
 * is created as a regular file when first needed, if its directory exists.
 * The operator chose path, so symlinks in it are followed.  Returns 0, or
 * -EINVAL (bad image name, path neither a file nor a block device), -EEXIST
 * (image mapped twice) or -ENOENT (directory of path missing), after logging.
 */
int applier_map(struct applier *a, const char *image, const char *path);

/* An operator's --map IMAGE=PATH, parsed once: the image's name as the
 * segments say it, and the path of its target (a file or block device). */
struct apply_map {
	char *image;
	char *path;
};
/* Parses "IMAGE=PATH" into m (malloc'd; apply_map_free).  Returns 0,
 * -EINVAL with *why saying what is wrong, or -ENOMEM. */
int apply_map_parse(const char *arg, struct apply_map *m, const char **why);
void apply_map_free(struct apply_map *m);
/* applier_map for each of maps.  Returns 0 or the first error. */
int applier_map_all(struct applier *a, const struct apply_map *maps, size_t n);
/*
 * Checks, before anything of it is applied, that every data record of v
 * after LSN after fits its target: a record beyond the end of a mapped
 * block device (which is never resized) is refused, with the record, the
 * device and its size in err.  Returns 0, -ENOSPC, or -errno when a
 * device's size cannot be read.
 */
int applier_check(struct applier *a, struct seg_view *v, uint64_t after, char *err,
		  size_t errlen);

/* Sets the callback told of durable progress (NULL for none). */
void applier_set_durable_cb(struct applier *a, apply_durable_fn fn, void *ctx);

/* Sets the callback told of SYNC_BEGIN, SYNC_END and HASH mismatches
 * (NULL for none: they are then only counted). */
void applier_set_event_cb(struct applier *a, apply_event_fn fn, void *ctx);

/* Sets the callback called after each applied record (NULL for none). */
void applier_set_record_cb(struct applier *a, apply_record_fn fn, void *ctx);

/*
 * Whether the record callback examines the targets (true until said
 * otherwise; applier_set_record_cb sets it true again).  With false it
 * only follows the stream (LSNs, marks, where to stop), and the applier
 * may then keep the WRITEs of a run to consecutive offsets of one target,
 * read from a source file (applier_set_source), and write them with one
 * pwritev: the callback of such a WRITE can run before its bytes reach
 * the target.  They reach it before any record that does not join the
 * run is applied (and its callback called), before every barrier and
 * durable callback, and before applier_apply returns, whatever it
 * returns (an error of the pwritev itself aside).  Without a record
 * callback the applier always may.
 */
void applier_record_cb_reads_targets(struct applier *a, bool reads);

/*
 * Where the views applied next were mapped from: the file open at fd,
 * whose byte 0 the views' buffers show at base.  While set, each WRITE's
 * payload is read from fd with pread into a buffer of the applier's
 * instead of being copied out of the mapping: on a VM whose hypervisor
 * shadows page tables each page first touched through a new mapping
 * costs an exit.  fd -1 (or base NULL) unsets it.  The caller keeps fd
 * open meanwhile.
 */
void applier_set_source(struct applier *a, int fd, const void *base);

/*
 * Applies the records with lsn > after_lsn of the validated sealed view v,
 * in order (it rewinds v first and iterates it to the end).  Returns 0,
 * APPLY_STOP when the record callback stopped it (durable up to there), or
 * -errno with a reason a person can act on in err (errlen bytes, always
 * NUL-terminated), e.g. -ENOSPC for a record beyond the end of a block
 * device.  After an error the targets are durable up to the last LSN
 * reported to the callback, and applying again from there is correct.
 * Nothing is logged: the caller logs err once.
 */
int applier_apply(struct applier *a, struct seg_view *v, uint64_t after_lsn, char *err,
		  size_t errlen);

/*
 * Removes image name's target as an UNLINK record would (durably; a target
 * already gone is fine; a target mapped onto a block device is left in
 * place).  For names a gap in the segments made stale.  Returns 0 or
 * -errno with err filled.
 */
int applier_remove(struct applier *a, const char *name, char *err, size_t errlen);

/* Counters since applier_new; *st is a copy. */
void applier_stats(const struct applier *a, struct apply_stats *st);

/* Closes every target (fsyncing those still dirty) and frees a.  NULL is
 * fine. */
void applier_free(struct applier *a);

/*
 * Applies one data record (WRITE, ZERO, TRUNCATE or ALLOC, with or without
 * the RESYNC tag, which changes nothing here) to the open fd.
 * block_device says fd is a block device of device_size bytes: it is never
 * resized, and a record reaching past its end fails with -ENOSPC.  Returns
 * 0, -EINVAL for another record type, or -errno with a reason in err.
 * Does not fsync.  Used by the applier and by aimfs's crash recovery.
 */
int apply_record_data(int fd, const struct seg_record *r, bool block_device,
		      uint64_t device_size, char *err, size_t errlen);

#endif
