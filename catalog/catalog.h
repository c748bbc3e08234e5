/*
 * catalog.h — the SQLite index of a journal directory: what was written
 * where.  One database per journal directory (catalog.db, WAL mode).
 *
 * It records the group's identity, the images and their ids, every sealed
 * segment (number, LSN range, size, digest, state), every data record inside
 * them (LSN, image, kind, offset, length, segment, position, time), named
 * marks, and — for the transport — destinations, what each acknowledged and
 * the dirty extents awaiting resync.  Operators can query it with sqlite3;
 * the schema is in catalog.c and docs/CATALOG.md.
 *
 * Thread safety: a struct catalog is one SQLite connection and belongs to
 * one thread at a time.  Each thread that needs the catalog opens its own.
 * Functions return 0 or a negative errno (-EIO for SQLite failures, after
 * logging SQLite's message once).
 */
#ifndef AIM_CATALOG_H
#define AIM_CATALOG_H

#include <stdbool.h>
#include <stdint.h>

#include "format.h"

struct catalog;
struct seg_view;

/* Opens (creating if needed) the database at path and its schema. */
int catalog_open(const char *path, struct catalog **out);
void catalog_close(struct catalog *c);

int catalog_begin(struct catalog *c);
int catalog_commit(struct catalog *c);
int catalog_rollback(struct catalog *c);
/* Makes every committed transaction durable (synchronous=NORMAL leaves the
 * last ones to a power cut): syncs the write-ahead log, which holds them,
 * without waiting for the catalog's other connections. */
int catalog_make_durable(struct catalog *c);

/* Key/value metadata ("group", "format", ...).  get returns -ENOENT if the
 * key is absent; value is copied into buf (NUL-terminated). */
int catalog_meta_get(struct catalog *c, const char *key, char *buf, unsigned buflen);
int catalog_meta_set(struct catalog *c, const char *key, const char *value);

/*
 * Indexes a validated sealed segment in one transaction: its row, a row per
 * data record, and the image namespace changes it makes.  file_bytes is the
 * segment's size on disk.  Indexing a segment already present is a no-op
 * (returns 0), so recovery may offer segments twice.
 */
int catalog_index_segment(struct catalog *c, struct seg_view *v, uint64_t file_bytes);
/* True if segment number n is indexed. */
int catalog_has_segment(struct catalog *c, uint64_t n, bool *has);
/* Highest indexed segment number and its last LSN (0, 0 if none). */
int catalog_last_segment(struct catalog *c, uint64_t *number, uint64_t *last_lsn);

/* Live images (id -> name, source inode number or 0, birth time or 0,
 * ctime at the last unmount or 0) as indexed; fn is called for each, in id
 * order; a non-zero return stops and is returned. */
int catalog_images_each(struct catalog *c,
			int (*fn)(void *ctx, uint32_t id, const char *name, uint64_t ino,
				  uint64_t born_ns, uint64_t closed_ctime_ns),
			void *ctx);
/* Remembers, for the file image id is if the catalog knows it by that inode
 * number, its birth time (statx btime, ns; 0 keeps the old one): with the
 * inode number, it tells the same file from a new one that reused the
 * number while aimfs was not looking; and its ctime as aimfs unmounted (ns;
 * 0 keeps the old one): a file whose ctime differs at the next mount was
 * changed while aimfs was stopped.  A no-op for an image not indexed yet. */
int catalog_image_note(struct catalog *c, uint32_t id, uint64_t ino, uint64_t born_ns,
		       uint64_t closed_ctime_ns);
/* Directories of the backing tree as journaled (MKDIR, RMDIR, renames). */
int catalog_dirs_each(struct catalog *c, int (*fn)(void *ctx, const char *name), void *ctx);
/* Records a directory that existed before it was journaled. */
int catalog_dir_add(struct catalog *c, const char *name);
/* Records an image that existed before it was journaled (the images found
 * when a group is created).  No-op if the id is known. */
int catalog_image_add(struct catalog *c, uint32_t id, const char *name, uint64_t ino);
/* Highest image id ever used (0 if none). */
int catalog_max_image_id(struct catalog *c, uint32_t *id);

/* Last LSN of indexed segment n; -ENOENT if unknown. */
int catalog_segment_last_lsn(struct catalog *c, uint64_t n, uint64_t *lsn);
/* The highest segment sealed before time ns (0 if none), pruned ones
 * included (an object store's retention: `keep = 7d`). */
int catalog_segment_sealed_before(struct catalog *c, uint64_t ns, uint64_t *n);
/* Marks a segment's state ("sealed", "pruned", ...). */
int catalog_segment_set_state(struct catalog *c, uint64_t n, const char *state);
/* True if segment n was pruned (catalog_segment_pruned). */
int catalog_segment_is_pruned(struct catalog *c, uint64_t n, bool *pruned);

/* ---- marks (MARK records, indexed with their segment) ---- */

struct catalog_mark {
	char name[SEG_MARK_MAX + 1];
	uint64_t lsn;
	uint64_t time_ns; /* the record's source time */
};

/* The mark named name; -ENOENT if none. */
int catalog_mark_find(struct catalog *c, const char *name, struct catalog_mark *m);
/* Calls fn for every mark in LSN order; a non-zero return stops and is
 * returned. */
int catalog_marks_each(struct catalog *c, int (*fn)(void *ctx, const struct catalog_mark *m),
		       void *ctx);

/* ---- destinations (the transport) ---- */

struct catalog_dest {
	uint64_t acked_segment; /* last segment the destination acknowledged */
	uint64_t acked_lsn;     /* source LSN that segment ends at */
	uint64_t acked_ns;
	uint64_t dest_lsn;      /* last LSN of the destination's own sequence */
};

/* Adds the destination if new (as if it had acknowledged start_segment,
 * state "new": it needs an initial sync), updating its URL. */
int catalog_dest_register(struct catalog *c, const char *name, const char *url,
			  uint64_t start_segment);

/* A destination's resynchronisation (docs/RESYNC.md). */
struct catalog_sync {
	uint32_t number;     /* tags its resync records */
	/* The words of transport/dest_state.c, the only code that reads them. */
	char state[16];      /* sync_state */
	char phase[16];      /* sync_phase */
	char reason[24];     /* sync_reason */
	uint64_t total, done, saved; /* bytes to compare/send, done, found equal */
	uint64_t lsn_a, lsn_b;       /* source LSNs the phase waits on */
	uint64_t started_ns;
};
int catalog_dest_sync_load(struct catalog *c, const char *name, struct catalog_sync *y);
int catalog_dest_sync_save(struct catalog *c, const char *name, const struct catalog_sync *y);
/* Calls fn with every registered destination's name; a non-zero return
 * stops and is returned. */
int catalog_dests_each(struct catalog *c, int (*fn)(void *ctx, const char *name), void *ctx);

struct catalog_extent {
	uint32_t image;
	uint64_t offset, length;
	bool hash;           /* compare hashes before sending the data */
};
/* Marks [offset, offset+length) of image dirty for dest (length may run
 * past the end of the image: "to the end"). */
int catalog_dirty_add(struct catalog *c, const char *dest, uint32_t image, uint64_t offset,
		      uint64_t length, bool hash);
/* The first dirty extent (by image, offset); -ENOENT if none. */
int catalog_dirty_first(struct catalog *c, const char *dest, struct catalog_extent *e);
/* The first done bytes of extent e are covered: shrink or drop it.  hashed:
 * they were covered by HASH records, whose comparison the remote has yet
 * to report: they are kept aside (hashed_extents) until then. */
int catalog_dirty_advance(struct catalog *c, const char *dest, const struct catalog_extent *e,
			  uint64_t done, bool hashed);
/* A resync pass was abandoned before the remote reported on its HASH
 * records: what they covered is dirty again (hash set). */
int catalog_hashed_requeue(struct catalog *c, const char *dest);
/* The remote reported on this pass's HASH records (the differing blocks are
 * dirty now), or everything is dirty again anyway. */
int catalog_hashed_clear(struct catalog *c, const char *dest);
int catalog_dirty_bytes(struct catalog *c, const char *dest, uint64_t *bytes, uint64_t *count);
/* The destination's own LSNs for source segment (from the acknowledgement). */
int catalog_shipment_range(struct catalog *c, const char *dest, uint64_t segment,
			   uint64_t *dest_first, uint64_t *dest_last);
/* -ENOENT if unknown. */
int catalog_dest_load(struct catalog *c, const char *name, struct catalog_dest *d);
/* Drops the destination and everything kept for it (one transaction). */
int catalog_dest_forget(struct catalog *c, const char *name);
/* Records that name acknowledged segment (one transaction). */
int catalog_dest_ack(struct catalog *c, const char *name, uint64_t segment, uint64_t src_last_lsn,
		     uint64_t dest_first_lsn, uint64_t dest_last_lsn, uint64_t bytes,
		     uint64_t now_ns);
int catalog_dest_error(struct catalog *c, const char *name, const char *error);
/* The destination continues after segment, its sequence at dest_lsn: what
 * it skipped comes by resync. */
int catalog_dest_skip(struct catalog *c, const char *name, uint64_t segment, uint64_t dest_lsn);
/* Segment n's file was deleted: drop its per-write rows, mark it pruned. */
int catalog_segment_pruned(struct catalog *c, uint64_t n);

#endif
