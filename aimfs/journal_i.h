/*
 * journal_i.h — private declarations shared by the journal's files:
 * journal.c (append, seal, public API), registry.c (images), sealer.c (the
 * background thread), recovery.c (mount-time repair) and powerloss.c (what
 * a power loss hands to the destinations).
 *
 * Lock order, outermost first:
 *
 *   journal.ns_lock      namespace syscall + its record (fs.c holds it)
 *   inode rangelock      one image's byte range (fs.c holds it)
 *   journal.lock         LSNs, the open segment, the registry, the queue
 *   actlog.lock          the activity log's set (a leaf; data records take
 *                        their extents before journal.lock, and a
 *                        checkpoint calls journal_sync_all without it)
 *
 * Nothing is called while journal.lock is held that could block on another
 * lock, the catalog or the network; the only syscalls under it are the
 * segment appends themselves (pwritev into the page cache).
 */
#ifndef AIM_JOURNAL_I_H
#define AIM_JOURNAL_I_H

#include "journal.h"
#include "rangelock.h"
#include "format.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

struct catalog;

#define RECYCLE_SLOTS 2
/* In-flight table size when the configuration does not say (main.c sizes
 * it from the FUSE thread count); a data record waits for a free slot
 * rather than go untracked. */
#define INFLIGHT_SLOTS 256
/* A slot taken but not yet given its LSN: lower than no LSN. */
#define SLOT_CLAIMED UINT64_MAX
/* A seal or the sealer's finishing that failed is tried again after this
 * long (a full disk must not make them spin). */
#define RETRY_NS 100000000ULL
/* Start writeback of the open segment every this many bytes, so dirty
 * journal pages never pile up until the kernel throttles the writer that
 * happens to hold the journal lock. */
#define WRITEBACK_STEP (8ULL << 20)
/* The page size padding() completes (on a host with larger pages, writes
 * over an evicted recycled file read less, not nothing). */
#define PAGE_BYTES 4096u
#define JOURNAL_LOCK_FILE "lock"
#define CATALOG_FILE "catalog.db"
#define ADOPT_MARK "adopting."     /* + inode number: an adoption under way */

#define WB_FD_GONE (-2)

struct image {
	uint32_t id;
	char *name;              /* relative path in the backing dir (L) */
	dev_t dev;
	ino_t ino;
	bool live;               /* false once unlinked or replaced (L) */
	unsigned refs;           /* (L) registry holds one while live */
	struct image *next_ino;  /* registry hash chain (L) */
	struct rangelock rl;     /* orders overlapping data operations */
	uint64_t created_cp;     /* checkpoints begun when this mount created it (L) */
	int wb_fd;               /* read-only, open while live: an fdatasync of it
				  * reports the file's write-back errors since it was
				  * registered (journal_writeback_check); -1 if it
				  * could not be opened, WB_FD_GONE once the file was
				  * removed behind the mount's back (L) */
};

/* A segment file being written or waiting for the sealer. */
struct segfile {
	int fd;
	uint64_t number;
	uint64_t first_lsn;
	uint64_t created_ns;
	uint64_t bytes;          /* bytes written so far */
	uint64_t records;
	uint64_t prev_check;     /* check of the last record (or header) */
	uint64_t digest;         /* trailer check once sealed */
	uint64_t backing_lsn;    /* the trailer's backing watermark once sealed */
	uint64_t flushed;        /* writeback started for bytes below this (L) */
	unsigned refs;           /* (L) the journal/queue holds one; barriers take more */
	bool sealed;
	bool recycled;           /* written over a pruned segment's file: cut at sealing */
	uint64_t old_end;        /* recycled: the old file's bytes end here (L) */
	bool cut;                /* a failed write may have left bytes past `bytes`
				  * that no truncate removed: the sealer cuts them (L) */
	bool verify;             /* a sync of it failed: the sealer reads it back,
				  * checks it and writes it again first (L) */
	bool lost;               /* ... and found it was not what was written */
	bool name_unsynced;      /* its directory entry (a new file, or a free one
				  * renamed) may not be durable: the first sync of
				  * it syncs the directory too (L) */
	struct segfile *next;    /* seal queue (L) */
};

struct journal {
	struct journal_config cfg;
	char *dir;
	char *backing_dir;
	char *hide_name;
	int dirfd;
	int lock_fd;             /* flock'd: one mount per journal */
	uint8_t group[16];

	pthread_mutex_t ns_lock;
	pthread_mutex_t lock;    /* (L) */
	pthread_cond_t wake;     /* sealer: work to do (L) */
	pthread_cond_t durable;  /* barriers: durable_segment moved (L) */

	struct segfile *open;    /* (L) */
	struct segfile *queue_head, *queue_tail; /* sealed, waiting for the sealer (L) */
	uint64_t next_segment;   /* (L) */
	uint64_t next_lsn;       /* (L) */
	uint64_t sealed_segment; /* (L) */
	uint64_t durable_segment;/* (L) */
	bool stopping;           /* (L) */

	/* Health (L): no failure is sticky; these only say what happened,
	 * for /status and the log (journal.c, "health"). */
	bool failing;            /* a journal I/O call failed since the last success */
	int last_error;          /* -errno of the last failure (0: none since mount) */
	char last_error_what[64];
	uint64_t failed_ns;      /* when the current (or last) episode began */
	uint64_t last_failure_mono; /* when the last call failed (monotonic) */
	uint64_t cleared_ns;     /* when the last episode ended (0: none has) */
	uint64_t failures;       /* failed calls since mount */
	uint64_t episode_failures;
	int finish_error;        /* the sealer cannot finish the head of its queue */
	uint64_t finish_retry_ns;/* ... and tries again from then (monotonic) */
	unsigned finish_attempts;
	uint64_t seal_retry_ns;  /* a failed seal by age is tried again from then */

	/* Owed records (journal.c, "owed"): what happened to the backing tree
	 * that the journal could not say yet.  Appended by any thread (L);
	 * journaled, in order, only under ns_lock (journal_settle). */
	struct owed *owed_head, *owed_tail;
	size_t nowed;
	_Atomic bool owes;       /* owed_head != NULL, for a lock-free look */
	uint64_t owed_lsn;       /* lowest LSN whose record the backing file may
				  * not hold (a correction is owed): the backing
				  * watermark stays below it (0: none) */

	/* registry (L) */
	struct image **by_ino;
	size_t ino_buckets;
	struct image **live;     /* live images, unordered */
	size_t nlive, caplive;
	uint32_t next_image_id;

	/* LSNs whose backing syscall has not finished; 0 = free slot,
	 * SLOT_CLAIMED = taken, LSN not given yet.  ninflight covers every
	 * thread that can hold a data record (main.c), so claiming waits only
	 * if that count is wrong; slot_lock/slot_freed serve those waits. */
	_Atomic uint64_t *inflight;
	unsigned ninflight;
	_Atomic unsigned slot_waiters;
	pthread_mutex_t slot_lock;
	pthread_cond_t slot_freed;
	/* Numbers of pruned segments whose files wait, as NNN.free, to be
	 * written over (0: empty slot); lock-free so that the transport
	 * never takes the journal lock. */
	_Atomic uint64_t free_files[RECYCLE_SLOTS];
	uint64_t recycled;       /* segments opened over a free file (L) */

	uint64_t records, bytes; /* since mount (L) */
	uint64_t last_append_ns; /* (L) */
	uint64_t durable_backing_lsn; /* watermark of durable_segment (L) */
	/* Every record up to it is durable on the backing files (an activity
	 * log checkpoint synced them): segments past it are not pruned, since
	 * a power loss redoes them (L). */
	uint64_t synced_backing_lsn;
	uint64_t cp_begun;       /* activity log checkpoints begun (L) */
	uint64_t cp_synced;      /* the last of them to sync the backing files (L) */
	uint64_t synced_ns;      /* when it did (L) */

	/* journal space: disk_bytes changes without the journal lock so that
	 * pruning never takes it; writers wait on space_cond */
	_Atomic uint64_t disk_bytes;
	pthread_mutex_t space_lock;
	pthread_cond_t space_cond;
	unsigned writes_waiting;     /* (space_lock) */
	uint64_t waits;              /* (space_lock) */

	pthread_t sealer;
	bool sealer_started;
	bool recovered;          /* journal_open finished: the registry is the tree's */

	struct actlog *al;       /* the hot extents (actlog.h) */
};

/* registry.c — all called with j->lock held unless noted */
int registry_init(struct journal *j);
void registry_free(struct journal *j);
struct image *registry_add(struct journal *j, uint32_t id, const char *name, dev_t dev, ino_t ino);
/* The same for an image whose file is at path now (recovery: the tree's
 * name may differ from the journal's until the rename is journaled). */
struct image *registry_add_found(struct journal *j, uint32_t id, const char *name,
				 const char *path, dev_t dev, ino_t ino);
struct image *registry_find_ino(struct journal *j, dev_t dev, ino_t ino);
struct image *registry_find_name(struct journal *j, const char *name);
struct image *registry_find_id(struct journal *j, uint32_t id);
void registry_remove(struct journal *j, struct image *im);
int registry_rename(struct journal *j, struct image *im, const char *name);
/* -ENAMETOOLONG if renaming directory old_name to new_name would give an
 * image a name longer than SEG_NAME_MAX, else 0. */
int registry_rename_dir_check(struct journal *j, const char *old_name, const char *new_name);
int registry_rename_dir(struct journal *j, const char *old_name, const char *new_name);
void registry_put(struct journal *j, struct image *im);
/* Notes each live image's birth time in the catalog, and when closing its
 * ctime too (catalog.h, catalog_image_note).  Single-threaded: recovery's
 * end, close. */
void registry_note_files(struct journal *j, struct catalog *cat, bool closing);


/* journal.c */
/* Health: a journal I/O call failed (logged once per episode, shown in
 * /status; refuses nothing).  Returns err. */
int journal_fail_locked(struct journal *j, int err, const char *what);
/* A journal I/O call succeeded: the episode ends if nothing is owed and
 * the sealer finishes segments again. */
void journal_healthy_locked(struct journal *j);
int journal_ensure_open_locked(struct journal *j);
int journal_append_locked(struct journal *j, struct seg_record *r);
int journal_seal_locked(struct journal *j);
void segfile_put_locked(struct journal *j, struct segfile *s);

/* sealer.c */
int sealer_start(struct journal *j);
void sealer_stop(struct journal *j);
/* Makes a sealed segment final: fsync, rename .open -> .aimj, fsync dir
 * (again after a failure: a rename already done is found done).  Sets
 * *fsync_failed (if given) when the fsync failed. */
int sealer_finish_file(int dirfd, int fd, uint64_t number, bool *fsync_failed);
/* Indexes sealed segment n (dir/NNN.aimj) in the catalog. */
int sealer_index(struct catalog *cat, const char *dir, uint64_t number, bool own);

/* Makes every record appended so far durable (the activity log's
 * checkpoints); with the sealer stopped, fsyncs the sealed segments itself.
 * 0 or -errno. */
int journal_sync_all(void *journal);
/* The activity log's hooks (actlog_config): a checkpoint begins (the
 * backing watermark), one is due, one synced the backing files to lsn. */
uint64_t journal_checkpoint_begins(void *journal);
bool journal_checkpoint_due(void *journal);
void journal_backing_synced(void *journal, uint64_t lsn);
/* What the transport may prune behind: the durable segment's watermark,
 * but no further than the backing files are synced (L). */
uint64_t journal_prunable_lsn_locked(const struct journal *j, uint64_t backing_lsn);
/* Journals what [off, off + len) of the backing file open as fd holds now
 * (its size, zeros, and data), so that the journal agrees with it again. */
int journal_record_truth(struct journal *j, struct image *im, int fd, uint64_t off,
			 uint64_t len);

/* Journals again the whole content of each image whose adoption a crash
 * cut short (journal.c, "adoption"), and forgets the marks.  Recovery,
 * once the registry is the tree's.  0 or -errno. */
int journal_finish_adoptions(struct journal *j);

/* recovery.c — runs before anything is served, single-threaded */
int journal_recover(struct journal *j, struct catalog *cat);

/* handover.c — part of recovery: extents of images the replicas may not
 * agree with the backing files on.  len SUSPECT_TO_THE_END: to the end. */
struct suspect_extent {
	uint32_t image;
	uint64_t off, len;
};
#define SUSPECT_TO_THE_END (1ULL << 62)
/* Hands v[0..n) to every destination that mirrors their images (dirty
 * extents, compared by hash) and begins a resync for reason why (an enum
 * dest_reason, transport.h) of each of them in sync -- of every
 * destination if mark_all (dest_state_mark_all) --, durably; journals
 * what the extents no destination took hold now.  0 or -errno. */
int handover_recover(struct journal *j, struct catalog *cat, const struct suspect_extent *v,
		     size_t n, int why, bool mark_all);
/* The live name of image id into buf ("" if it is not live). */
void handover_image_name(struct journal *j, uint32_t id, char *buf, size_t len);

/* powerloss.c — part of recovery: the last mount ended in a power loss, and
 * found holds its activity log's extents.  0 or -errno. */
int powerloss_recover(struct journal *j, struct catalog *cat, const struct actlog_found *found);
/* reconcile.c: builds the registry from the catalog and the backing tree,
 * redoes records after w from the sealed segments listed, and journals the
 * differences (or, for a new group's first mount, records the starting
 * point).  after_unmount: the last mount unmounted, so an image whose
 * ctime is not the one noted then was changed while aimfs was stopped and
 * is handed over whole (handover.c); else stopped_ns, if not 0, is when the
 * last mount last changed a file, and an image whose ctime is later (by
 * more than a moment) is handed over whole. */
int journal_reconcile(struct journal *j, struct catalog *cat, const uint64_t *sealed,
		      size_t nsealed, uint64_t w, bool baseline, bool after_unmount,
		      uint64_t stopped_ns);

#endif
