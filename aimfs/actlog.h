/*
 * actlog.h — the activity log: a small durable set of "hot" extents of the
 * images, DRBD's answer to a power cut of the primary, kept so that a power
 * loss of the source can never leave a replica silently different.
 *
 * Why.  aimfs answers a write after its record is in the journal's page
 * cache and its bytes are in the backing file; both become durable later
 * (the journal at the next barrier or sealing, a buffered backing file
 * whenever the kernel writes it back, an O_DIRECT one at once).  A kill -9
 * loses neither, but a power cut may keep a write's bytes in the backing
 * file and lose its record, or keep the record and lose the bytes.  Only
 * extents written since everything about them was last made durable can
 * differ that way: the activity log makes sure each of those is in a set
 * that is on disk *before* any byte of the write reaches the backing file.
 *
 * The set.  `slots` entries, each (image id, extent index) or (image id,
 * whole image) for operations that span more than ACTLOG_HOLD_MAX extents
 * (truncates, big discards, adoptions).  A writer touches the extents of its
 * range before its backing syscall: an extent in the set costs a lookup
 * under a mutex; one that is not takes a slot and waits until the slot's
 * 4 KiB page of the log file is written and fdatasynced (concurrent misses
 * share one write).  A slot can be given to another extent only when its
 * extent is *cold*: no write to it in flight and everything written to it
 * made durable in both the journal and the backing files by a checkpoint
 * (journal durable, then syncfs of the backing filesystem).  A thread runs
 * checkpoints in the background when fewer than a quarter of the slots are
 * cold or free, so that a writer rarely waits for one, and when the
 * journal asks (checkpoint_due).
 *
 * After a crash, the mount compares the log's boot id with this boot's: the
 * same boot means the daemon died and the page cache kept everything
 * (today's recovery is exact); another boot with an unclean log means a
 * power loss, and every extent in the set is suspect.  A clean unmount
 * checkpoints and marks the log clean.
 *
 * The synced LSN.  An fsync makes the journal durable, not the backing
 * files (one device flush, not two): a record's bytes are durable on the
 * backing files once a checkpoint that began after they were written has
 * synced the backing filesystem.  Each checkpoint notes the journal's
 * backing watermark as it begins and, once it has synced, writes it into
 * the header: after a power loss, recovery redoes the journal from there
 * (and the journal keeps every segment past it until then).
 *
 * The file (journal directory, "actlog"): a 4 KiB header page (magic,
 * version, geometry, flags (clean, redo), group, boot id, generation, synced LSN,
 * XXH3 check; 80 bytes, inside one sector, so never torn; version 1, from
 * before the synced LSN, ends with the check at 64) followed by the slots, 8 bytes
 * each (u32 image id, 0 = free; u32 extent index, ACTLOG_WHOLE = the whole
 * image), little-endian.  The file keeps its size: slot writes overwrite
 * allocated blocks and fdatasync needs no metadata.
 *
 * Thread safety: every function is thread-safe.  The activity log's mutex is
 * a leaf: nothing is called while it is held; checkpoints call back into the
 * journal without it.
 */
#ifndef AIM_ACTLOG_H
#define AIM_ACTLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "actlog_header.h"

#define ACTLOG_WHOLE UINT32_MAX   /* extent index: the whole image */
#define ACTLOG_HOLD_MAX 4         /* extents one operation may hold; more: whole image */
#define ACTLOG_MIN_SLOTS 128      /* more than every FUSE thread can hold at once */
#define ACTLOG_DEFAULT_SLOTS 1024
#define ACTLOG_DEFAULT_SHIFT 22   /* 4 MiB extents */

struct actlog;

struct actlog_config {
	int dirfd;                /* journal directory; the file lives there */
	int backing_fd;           /* the backing directory (O_PATH is fine) */
	const uint8_t *group;     /* 16 bytes: the log belongs to this group */
	unsigned slots;
	unsigned extent_shift;
	/* Makes every journal record appended so far durable: 0 or -errno. */
	int (*journal_sync)(void *ctx);
	/* A checkpoint begins: the journal's backing watermark (every record
	 * up to it has had its backing syscall, in the page cache). */
	uint64_t (*checkpoint_begins)(void *ctx);
	/* The journal wants the backing files synced (to prune behind them):
	 * the cooler checkpoints even with slots to spare.  Called without
	 * the activity log's lock. */
	bool (*checkpoint_due)(void *ctx);
	/* A checkpoint made every record up to lsn durable on the backing
	 * files, and the header says so. */
	void (*synced)(void *ctx, uint64_t lsn);
	/* A syncfs failed: did an image lose pages?  -errno if so (or if it
	 * cannot tell), 0 if the error was another file's.  NULL: assume so. */
	int (*writeback_check)(void *ctx);
	void *ctx;
};

/* An extent the last mount's log held. */
struct actlog_extent {
	uint32_t image;
	uint32_t extent;          /* or ACTLOG_WHOLE */
};

/* What actlog_open found of the previous mount. */
struct actlog_found {
	bool present;             /* there was a log */
	bool clean;               /* ... closed by a clean unmount */
	bool same_boot;           /* ... written during this boot */
	bool redo;                /* ... after a write-back error: redo from synced_lsn */
	/* Every record up to it was durable on the backing files: after a
	 * power loss, redo from here.  UINT64_MAX from a version 1 log (its
	 * fsyncs synced the backing files too), 0 if the header is unreadable. */
	uint64_t synced_lsn;
	unsigned extent_shift;    /* its geometry */
	struct actlog_extent *v;  /* the extents in it */
	size_t n;
};

/* Per-operation holds, kept in the journal's ticket: the slots touched. */
struct actlog_hold {
	uint32_t slot[ACTLOG_HOLD_MAX];
	unsigned n;
};

struct actlog_stats {
	unsigned slots, resident, hot; /* resident: a power cut now would compare them;
				       * hot: written since the last checkpoint */
	unsigned extent_shift;
	bool writeback_lost;      /* a checkpoint's syncfs failed: see actlog_checkpoint */
	/* since mount: log writes, writers that shared another's log write,
	 * checkpoints, and writes that waited for a checkpoint because every
	 * slot was hot (more than a few: the set is too small for the load) */
	uint64_t transactions, waits, checkpoints, stalls;
};

/*
 * Reads the log the last mount left (if any) into *found (free it with
 * actlog_found_free) and returns the log, not yet active: touches do
 * nothing until actlog_begin (recovery journals freely and ends with a
 * checkpoint).  Returns 0 or -errno after logging why.
 */
int actlog_open(const struct actlog_config *cfg, struct actlog **out, struct actlog_found *found);
void actlog_found_free(struct actlog_found *found);
/*
 * Recovery is over (what the last mount's log held has been handed on):
 * checkpoints, keeps the last mount's extents in the set (if the geometry
 * is unchanged), and writes the header "unclean, this boot" durably.  From
 * now on touches count.  Returns 0 or -errno.
 */
int actlog_begin(struct actlog *al);
/* Starts / stops the background checkpoints (the journal's sealer must run
 * while they do). */
int actlog_start(struct actlog *al);
void actlog_stop(struct actlog *al);
/*
 * Before the backing syscall of an operation on [off, off + len) of image
 * (whole: the whole image): makes sure its extents are in the durable set
 * and holds them until actlog_release.  May block for a log write or a
 * checkpoint.  Returns 0 or -errno (the operation must not proceed).
 */
int actlog_touch(struct actlog *al, uint32_t image, uint64_t off, uint64_t len, bool whole,
		 struct actlog_hold *h);
/* The operation's backing syscall has finished. */
void actlog_release(struct actlog *al, struct actlog_hold *h);
/* Journal durable, then the backing filesystem: every idle extent cold,
 * and the synced LSN (header) moves to the watermark it began with.  Once
 * an image's write-back has failed (syncfs fails and writeback_check says
 * it was an image's: the pages are lost, and the next syncfs would not say
 * so), the synced LSN never moves again and the header says "redo"
 * (recovery redoes from the synced LSN even in the same boot); later
 * checkpoints still sync and cool extents. */
int actlog_checkpoint(struct actlog *al);
void actlog_stats(struct actlog *al, struct actlog_stats *s);
/* Checkpoints sync the filesystem dev (the backing directory's, or one
 * mounted inside it); false for NULL. */
bool actlog_covers(struct actlog *al, dev_t dev);
/* fd is a descriptor of an image (or anything) on a filesystem that may
 * be mounted inside the backing directory: checkpoints sync it too. */
void actlog_watch(struct actlog *al, int fd);
/* A checkpoint's syncfs failed during this mount (see actlog_checkpoint). */
bool actlog_writeback_lost(struct actlog *al);
/* clean: checkpoints and marks the log clean (call only when nothing writes
 * any more and the journal is sealed).  Then frees everything; safe with
 * NULL.  Returns 0 or -errno (the log then stays unclean). */
int actlog_close(struct actlog *al, bool clean);

#endif
