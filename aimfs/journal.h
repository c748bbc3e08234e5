/*
 * journal.h — the journal writer: turns every mutating operation on an image
 * into a record with an LSN from one sequence for the whole mount, appends it
 * to the open numbered segment, seals segments by size or age, and keeps the
 * registry of images (id <-> name <-> backing inode).
 *
 * Data operations are two-phase: journal_write() and friends assign the LSN
 * and put the record in the segment file *before* the caller touches the
 * backing file, and journal_done() says the backing syscall finished.  That
 * order makes the journal a redo log (invariant 2): after a crash, recovery
 * re-applies every record the backing files may have missed.  Callers hold
 * the image's range lock across both phases so that overlapping operations
 * reach the backing file in LSN order.
 *
 * Namespace operations (create, unlink, rename, mkdir, rmdir) are journaled
 * after their syscall succeeded, with journal_ns_lock() held across both, so
 * that records describe what really happened; a crash between the two is
 * repaired by recovery's comparison of the backing tree with the catalog.
 *
 * Errors are never sticky.  A record the journal cannot append (a full,
 * over-quota or read-only disk) fails its operation with that errno and
 * leaves nothing behind; the next operation tries again.  What happened to
 * the backing tree but could not be journaled at once — the true content
 * after a failed backing write, a namespace change whose syscall was done
 * — is *owed*: kept in order and journaled by journal_settle before the
 * next operation that needs the journal, so that the journal and the
 * backing files agree again as soon as the disk has room (docs/NOTES.md,
 * "Full disks").
 *
 * Thread safety: every function is thread-safe.  Lock order (see
 * journal_i.h): namespace lock -> range lock -> journal lock.  Nothing here
 * calls into the transport or the catalog while holding the journal lock.
 */
#ifndef AIM_JOURNAL_H
#define AIM_JOURNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "actlog.h"

struct journal;
struct image;

struct journal_config {
	const char *dir;          /* journal directory (created if missing) */
	const char *backing_dir;  /* absolute path of the backing directory */
	int backing_fd;           /* open O_PATH|O_DIRECTORY fd of it */
	const char *hide_name;    /* entry of the journal dir inside backing, or NULL */
	dev_t hide_dev;           /* and the dir it lives in (dev, ino) */
	ino_t hide_parent_ino;
	uint64_t segment_size;    /* seal when a segment reaches this many bytes */
	uint64_t segment_age_ns;  /* ... or when its first record is this old */
	uint64_t segment_idle_ns; /* ... or when no record came for this long (0: never) */
	uint64_t segment_eager_ns; /* ... or when this old and dests_idle says so (0: never) */
	uint64_t journal_max;     /* data writes wait while the journal is this big */
	bool enforce_max;         /* false: no one prunes, so no limit applies */
	bool overflow_block;      /* writes wait at the limit (else: resync tracks) */
	bool drop_behind;         /* no one reads segments soon (no destinations):
				   * drop their pages once durable and indexed */
	unsigned inflight_slots;  /* data records that may be in flight at once: at
				   * least two per thread that journals them (a
				   * record and its correction); 0: INFLIGHT_SLOTS */
	unsigned al_slots;        /* activity log: extents in the hot set (actlog.h) */
	unsigned al_extent_shift; /* ... and their size, log2 */
	/* After a power loss: does destination dest (a name in the catalog)
	 * mirror image?  NULL: every destination every image.  A destination
	 * not configured any more answers false. */
	bool (*dest_wants)(void *ctx, const char *dest, const char *image);
	/* Called by the sealer thread once segment is fsynced and renamed,
	 * and by the activity log's checkpoints; every record up to
	 * backing_lsn is durable on the backing files (segments past it must
	 * stay: a power loss redoes them). */
	void (*on_durable)(void *ctx, uint64_t segment, uint64_t backing_lsn);
	/* Every destination has acknowledged every durable segment: nothing
	 * is being shipped.  NULL: no destinations.  Called by the sealer
	 * thread with the journal's lock held. */
	bool (*dests_idle)(void *ctx);
	void *hook_ctx;
};

/* A ticket ties journal_write (phase 1) to journal_done (phase 2). */
struct journal_ticket {
	uint64_t lsn; /* 0: nothing was journaled (image not mirrored) */
	int slot;
	struct actlog_hold al; /* the activity log's extents, held until done */
};

/* Journal statistics for status output; a consistent snapshot. */
struct journal_stats {
	uint8_t group[16];
	uint64_t head_lsn;        /* last LSN assigned */
	uint64_t open_segment;    /* number of the open segment, 0 if none */
	uint64_t open_bytes;
	uint64_t sealed_segment;  /* last sealed segment number */
	uint64_t durable_segment; /* last segment fsynced and renamed */
	uint64_t records;         /* records journaled since mount */
	uint64_t bytes;           /* bytes journaled since mount */
	uint64_t images;          /* live images */
	uint64_t journal_bytes;   /* segment files on disk, open one included */
	uint64_t journal_max;
	bool enforce_max;
	unsigned writes_waiting;  /* data writes waiting for journal space */
	uint64_t waits;           /* writes that ever waited, since mount */
	uint64_t open_oldest_ns;  /* time of the open segment's first record, 0 if none */
	uint64_t backing_lsn;     /* watermark of the newest durable segment */
	uint64_t recycled;        /* segments written over a pruned one's file, since mount */
	/* health: no error is sticky; this says what failed and when */
	bool failing;             /* the journal's I/O fails now */
	int last_error;           /* -errno of the last failure, 0 if none since mount */
	char last_error_what[64]; /* what it was doing */
	uint64_t failed_ns;       /* when the current or last episode began (0: never) */
	uint64_t cleared_ns;      /* when the last episode ended (0: none has) */
	uint64_t failures;        /* failed journal I/O calls since mount */
	uint64_t owed;            /* records owed (journal_settle) */
	struct actlog_stats al;   /* the activity log (all 0 without one); its
				   * writeback_lost: the backing filesystem failed
				   * to write back */
};

/*
 * Opens the journal directory, creating the group on first use, and runs
 * crash recovery (torn tails cut, unfinished segments sealed, the catalog
 * caught up, the journal's tail redone onto the backing files, the backing
 * tree reconciled with the catalog; after a power loss, the activity log's
 * hot extents handed to every destination's resync, see powerloss.c).
 * Returns 0 or -errno after logging why.
 */
int journal_open(const struct journal_config *cfg, struct journal **out);
/* Starts the sealer thread (sealing by age, fsync + rename + indexing). */
int journal_start(struct journal *j);
/* Seals the open segment and waits for the sealer to finish every sealed
 * segment (so on_durable has been told); the journal stays readable. */
void journal_stop(struct journal *j);
/* journal_stop, then frees everything.  Safe with NULL. */
void journal_close(struct journal *j);
/* Calls fn for every live image (under the journal lock: fn must not call
 * back into the journal). */
void journal_each_image(struct journal *j, void (*fn)(void *ctx, const char *name), void *ctx);

/* Registry.  The returned image carries a reference; drop it with
 * journal_image_put.  journal_image_lookup returns NULL for files the
 * journal does not know (created behind the mount's back). */
struct image *journal_image_lookup(struct journal *j, dev_t dev, ino_t ino);
void journal_image_put(struct journal *j, struct image *im);
uint32_t journal_image_id(const struct image *im);
/* The image's byte-range lock (see rangelock.h): held across a data
 * record and its backing syscall by every writer, the resync engine too. */
struct rangelock *journal_image_rangelock(struct image *im);

/* Data records, phase 1.  Return 0 with a ticket, or -errno (the journal
 * could not record it; the caller must not touch the backing file).  The
 * range is in the activity log's durable set when they return (which may
 * wait for a write of the log). */
int journal_write(struct journal *j, struct image *im, uint64_t off, const void *buf,
		  size_t len, struct journal_ticket *t);
int journal_zero(struct journal *j, struct image *im, uint64_t off, uint64_t len,
		 bool punch, bool keep_size, struct journal_ticket *t);
int journal_truncate(struct journal *j, struct image *im, uint64_t size,
		     struct journal_ticket *t);
int journal_alloc(struct journal *j, struct image *im, uint64_t off, uint64_t len,
		  bool keep_size, struct journal_ticket *t);
/* Phase 2: the backing syscall has finished (successfully or not).  Call
 * it for every ticket, whatever phase 1 returned. */
void journal_done(struct journal *j, struct journal_ticket *t);
/*
 * The backing syscall of ticket t failed or was short: records what the
 * backing file really holds over [off, off + len) now (its size and bytes,
 * read back through fd), so that the journal again agrees with it.  Call
 * before journal_done, with the range lock still held (the whole file).
 * If the journal cannot take those records now (the disk is full), they
 * are owed: t's record stays under the backing watermark (so a crash or an
 * unmount before they are journaled redoes it, which makes the file agree)
 * and journal_settle journals them.  Returns 0, or the -errno that made
 * them owed.
 */
int journal_correct(struct journal *j, struct image *im, int fd, uint64_t off, uint64_t len,
		    const struct journal_ticket *t);
/* A backing syscall failed with err (a full disk): shown in /status with
 * the journal's own failures until an operation succeeds again. */
void journal_backing_failed(struct journal *j, int err);
/*
 * Journals what is owed, in order (corrections take their image's whole
 * range lock): 0 when nothing is owed any more, else the -errno that
 * stopped it.  Call before an operation that journals, holding no lock
 * (journal_settle) or the namespace lock (journal_settle_locked); an
 * operation that cannot settle fails with that errno, which is what keeps
 * the owed records few and in order.
 */
int journal_settle(struct journal *j);
int journal_settle_locked(struct journal *j);
/* True if something is owed (lock-free: for the FUSE handlers' fast path). */
bool journal_owes(struct journal *j);

/* A change to an image's inode that no record carries (its mode, owner,
 * times or extended attributes), about to be made: stamps the journal, so
 * that recovery after a crash does not take the image's newer ctime for a
 * change made while aimfs was stopped (recovery.c). */
void journal_stamp_untracked(struct journal *j);

/* Barrier: appends FLUSH (im may be NULL for all images); if durable, also
 * makes the journal durable through it. */
int journal_barrier(struct journal *j, struct image *im, bool durable);
/* An fsync of im must sync its backing file too: this mount created it and
 * no checkpoint begun since has synced the backing files, so its directory
 * entry may not be durable.  Otherwise the journal made durable by the
 * barrier is enough: a power loss redoes it from the last checkpoint. */
bool journal_fsync_needs_backing(struct journal *j, struct image *im);
/* The backing filesystem failed to write back during this mount: what an
 * fsync promises holds again only after the next mount's redo. */
bool journal_writeback_lost(struct journal *j);
/* Records were applied to the backing files since the last checkpoint
 * synced them. */
bool journal_backing_unsynced(struct journal *j);
/* After a failed syncfs of the backing filesystem: fdatasyncs every live
 * image's own descriptor and returns the first error (one of theirs lost
 * pages), -EIO if an image has none, or 0 (the error was another file's,
 * the journal's say). */
int journal_writeback_check(void *journal);

/* Namespace.  Hold journal_ns_lock across the syscall and the call.
 * Unlink, rename and rmdir describe a syscall that was done: if their
 * record cannot be appended now it is owed (journal_settle) and they
 * return 0; they fail only for a name a record cannot carry or when even
 * that bookkeeping runs out of memory.  Create and mkdir fail instead, and
 * the caller undoes the syscall. */
void journal_ns_lock(struct journal *j);
void journal_ns_unlock(struct journal *j);
/* A new regular file `name` exists now (created through the mount); returns
 * its image with a reference. */
int journal_create(struct journal *j, const char *name, mode_t mode, dev_t dev, ino_t ino,
		   struct image **out);
/* A regular file appeared that the journal never saw (made behind the
 * mount's back): journals it as a CREATE plus its content, read through fd. */
int journal_adopt(struct journal *j, const char *name, int fd, const struct stat *st,
		  struct image **out);
int journal_unlink(struct journal *j, struct image *im);
/* Image im was renamed to new_name; replaced is the image that new_name
 * held before (NULL if none), now gone. */
int journal_rename(struct journal *j, struct image *im, const char *new_name,
		   struct image *replaced);
/* Directory old_name was renamed to new_name: every image under it moves.
 * -ENAMETOOLONG (nothing journaled) if an image's new name would be longer
 * than an image name may be (docs/FORMAT.md §9). */
int journal_rename_dir(struct journal *j, const char *old_name, const char *new_name);
/* 0 if directory old_name can be renamed to new_name with every image under
 * it keeping a valid name, else -ENAMETOOLONG.  Call under journal_ns_lock
 * before the rename itself, so that a rename the journal cannot describe is
 * refused before it happens. */
int journal_rename_dir_check(struct journal *j, const char *old_name, const char *new_name);
int journal_mkdir(struct journal *j, const char *name, mode_t mode);
int journal_rmdir(struct journal *j, const char *name);
/* A MARK record labelled label (seg_mark_label_valid, else -EINVAL); its
 * LSN, the segment it went to and its time are returned. */
int journal_mark(struct journal *j, const char *label, uint64_t *lsn, uint64_t *segment,
		 uint64_t *time_ns);

/*
 * Resynchronisation records (docs/RESYNC.md), tagged for destination
 * number dest.  The caller holds im's range lock over the range, so the
 * bytes it read are the image's at the record's LSN.  Each returns 0 and
 * the LSN and segment number the record went to, or -errno.
 */
int journal_resync_write(struct journal *j, struct image *im, uint32_t dest, uint64_t off,
			 const void *buf, size_t len, uint64_t *lsn, uint64_t *segment);
int journal_resync_zero(struct journal *j, struct image *im, uint32_t dest, uint64_t off,
			uint64_t len, bool punch, uint64_t *lsn, uint64_t *segment);
int journal_resync_truncate(struct journal *j, struct image *im, uint32_t dest, uint64_t size,
			    uint64_t *lsn, uint64_t *segment);
/* A HASH record: n hashes of block-sized blocks of [off, off+len). */
int journal_hash(struct journal *j, struct image *im, uint32_t dest, uint64_t off, uint64_t len,
		 uint32_t block, const uint64_t *hashes, uint64_t n, uint64_t *lsn,
		 uint64_t *segment);
/* SYNC_BEGIN (begin) or SYNC_END for destination dest.  fresh: seal the
 * open segment first, so that the record is the first of a new segment (a
 * destination that skipped segments resumes exactly there). */
int journal_sync_mark(struct journal *j, uint32_t dest, bool begin, bool fresh, uint64_t *lsn,
		      uint64_t *segment);
/* Seals the open segment now if it holds records, so that the transport
 * can ship them without waiting for segment_age or segment_idle. */
int journal_seal(struct journal *j);
/* Copies im's current name into buf. */
void journal_image_name(struct journal *j, struct image *im, char *buf, size_t len);
/* The live image named name (reference taken), or NULL. */
struct image *journal_image_lookup_name(struct journal *j, const char *name);
/* The live image with this id (reference taken), or NULL. */
struct image *journal_image_by_id(struct journal *j, uint32_t id);
/* Opens the backing file of im read-only, under the namespace lock so that
 * no rename races the lookup.  Returns the fd or -errno. */
int journal_open_image(struct journal *j, struct image *im, int backing_fd);
/* Calls fn for every live image id (under the journal lock). */
void journal_each_image_id(struct journal *j, void (*fn)(void *ctx, uint32_t id), void *ctx);
/* Bytes of journal in use and its limit (0 if not enforced). */
void journal_space(struct journal *j, uint64_t *used, uint64_t *max);
/* Syncs the backing files now (an activity log checkpoint) if records
 * past the last sync hold segments that could otherwise be pruned; the
 * transport is told.  0 or -errno. */
int journal_sync_backing(struct journal *j);

void journal_stats(struct journal *j, struct journal_stats *s);
/* Time of the first record not yet in a sealed segment (0 if none). */
uint64_t journal_open_oldest_ns(struct journal *j);
/*
 * The transport is about to prune sealed segment number: true if the
 * journal took its file to write a later segment over (renamed NNN.free;
 * on this page-cache-heavy path, overwriting cached pages is several times
 * cheaper than filling new ones), false if the caller should delete it.
 * Never blocks on the journal lock.
 */
bool journal_recycle(struct journal *j, uint64_t number);
/* The transport pruned a segment of this many bytes: space for writes. */
void journal_space_freed(struct journal *j, uint64_t bytes);
/* Last durable segment and its backing watermark, for the transport's start. */
void journal_durable_state(struct journal *j, uint64_t *segment, uint64_t *backing_lsn);

#endif
