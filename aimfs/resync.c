/*
 * resync.c — the resynchronisation engine (docs/RESYNC.md).
 *
 * For each destination the catalog keeps a sync state and a set of dirty
 * extents.  A destination is seeded with every image it mirrors when it is
 * new, or when the segments it needed are gone.  Then, one chunk of one
 * extent at a time and under the image's range lock (so the bytes read are
 * exactly the image at the record's LSN), the engine journals:
 *
 *   SYNC_BEGIN                       the remote stops calling itself consistent
 *   TRUNCATE to the current size     once per image
 *   ZERO (punch) for holes           never shipped as data
 *   HASH of the data, 64 KiB blocks  if the remote can compare (aim-remote)
 *   ... or WRITE of the data         (an all-zero chunk as ZERO)
 *   then, once the remote applied the HASH records, WRITE for the blocks
 *   it found different
 *   SYNC_END                         acknowledged: the destination is in sync
 *
 * All of these are tagged for the one destination; the transport keeps
 * them from the others.  The engine runs only while the destination keeps
 * up (backlog of at most MAX_BACKLOG segments) and the journal has room, so
 * a resync never fills the journal it travels in or stalls the guests.
 */
#include "resync.h"
#include "clock.h"
#include "thread.h"
#include "catalog.h"
#include "fileio.h"
#include "journal.h"
#include "protocol.h"
#include "log.h"
#include "rangelock.h"
#include "format.h"
#include "transport.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#define CHUNK (1u << 20)
#define HASH_BLOCK (64u << 10)
#define MAX_BACKLOG 4
#define IDLE_NS 100000000ULL
#define SYNCING_IDLE_NS 20000000ULL /* while a destination syncs: waits for acks */
#define BATCH_NS 50000000ULL        /* copying: chunks per step, progress saved once */
#define SEAL_HASHED (128ull << 20)  /* seal after HASH records of this much data, so
				     * that the remote compares while we hash on */

struct engine_dest {
	char *name;
	size_t index;              /* in the transport */
	struct dest_record rec;    /* as the transport last told it (each pass) */
	struct dest_progress p;    /* the engine's working copy; save() hands it over */
	int compare;               /* remote compares HASH records: -1 unknown, 0, 1 */
	bool remote_empty;         /* the probe: the remote listed no target at all */
	uint32_t truncated_image;  /* last image given its size in this pass */
	uint64_t hashed;           /* bytes covered by HASH records in this pass */
	uint64_t hashed_unsealed;  /* ... of which not yet in a sealed segment */
	uint64_t sent;             /* data bytes journaled for it since the engine started */
	uint64_t hashed_all;       /* bytes covered by its HASH records since then */
};

/* An `aimctl verify`: HASH records for every destination, then each
 * remote's report on them. */
struct verify {
	uint64_t id;
	char *image;              /* NULL: every image */
	uint32_t *ids;
	size_t nids, next;        /* images to hash, the one being hashed */
	uint64_t offset;          /* next byte of it */
	uint64_t seg_first, seg_last;
	uint64_t bytes;
	uint64_t started_ns;
	bool hashing;
	json_t *result;           /* {id, image, state, bytes, destinations: [...]} */
};

struct resync {
	struct journal *j;
	struct transport *t;
	int backing_fd;
	char *journal_dir;
	struct catalog *cat;       /* the engine thread's own connection */
	pthread_t thread;
	pthread_mutex_t lock;      /* protects stop and the verifications */
	pthread_cond_t cond;
	bool stop;
	struct engine_dest *ds;
	size_t n;
	uint8_t *buf;              /* CHUNK bytes */
	bool track;                /* overflow=track */
	uint64_t verify_every_ns;  /* scheduled verification, 0: none */
	uint64_t next_verify_ns;
	struct verify *verify;     /* the running or last verification: the engine
				    * thread's; its result under lock */
	struct verify *verify_next; /* asked for, not started yet (lock) */
	uint64_t next_verify_id;
};

/* Hands the progress to the transport, which persists it and shows it. */
static int save(struct resync *r, struct engine_dest *ds)
{
	uint64_t bytes = 0, count;

	catalog_dirty_bytes(r->cat, ds->name, &bytes, &count);
	return dest_state_progress(r->t, ds->index, r->cat, &ds->p, bytes, ds->compare);
}

/*
 * Moves the destination to sync/phase through the transport's one door
 * (which persists it first, with the progress), and keeps the engine's
 * copy in step.  c carries anything else the change needs (a skip, an
 * expectation).  Returns 0, -EAGAIN or -errno (nothing changed).
 */
static int change(struct resync *r, struct engine_dest *ds, enum dest_sync sync,
		  enum dest_phase phase, enum dest_reason why, struct dest_change c)
{
	int ret;

	c.sync = sync;
	c.phase = phase;
	c.reason = why;
	c.progress = &ds->p;
	ret = dest_state_change(r->t, ds->index, r->cat, &c);
	if (ret < 0)
		return ret;
	ds->rec.sync = sync;
	ds->rec.phase = phase;
	ds->rec.reason = sync == DEST_SYNC_IN_SYNC ? DEST_REASON_NONE : why;
	save(r, ds);
	return 0;
}

static const struct dest_change NO_MORE; /* a change with nothing else to it */

static void progress_reset(struct engine_dest *ds)
{
	memset(&ds->p, 0, sizeof ds->p);
	ds->p.started_ns = clock_wall_ns();
	ds->truncated_image = 0;
	ds->hashed = 0;
}

/* ---- seeding ---- */

struct ids {
	uint32_t *v;
	size_t n, cap;
};

static void collect_id(void *ctx, uint32_t id)
{
	struct ids *ids = ctx;

	if (ids->n == ids->cap) {
		size_t cap = ids->cap ? ids->cap * 2 : 64;
		uint32_t *nv = realloc(ids->v, cap * sizeof *nv);

		if (!nv)
			return;
		ids->v = nv;
		ids->cap = cap;
	}
	ids->v[ids->n++] = id;
}

/*
 * Marks every live image the destination mirrors dirty, whole, as it is now.
 * Called right after SYNC_BEGIN is journaled: whatever the journal held
 * before SYNC_BEGIN (which the destination skips) is in these images now,
 * and everything after it travels in the stream.
 */
static int seed_images(struct resync *r, struct engine_dest *ds, size_t *nimages, uint64_t *total)
{
	struct ids ids = { 0 };
	int ret = 0;

	*nimages = 0;
	*total = 0;
	journal_each_image_id(r->j, collect_id, &ids);
	ret = catalog_begin(r->cat);
	if (ret == 0) /* every image is dirty whole: nothing waits for a report */
		ret = catalog_hashed_clear(r->cat, ds->name);
	for (size_t i = 0; i < ids.n && !ret; i++) {
		struct image *im = journal_image_by_id(r->j, ids.v[i]);
		char name[SEG_NAME_MAX + 1];
		struct stat st;
		int fd;

		if (!im)
			continue;
		journal_image_name(r->j, im, name, sizeof name);
		if (!transport_dest_wants(r->t, ds->index, name)) {
			journal_image_put(r->j, im);
			continue;
		}
		fd = journal_open_image(r->j, im, r->backing_fd);
		if (fd >= 0 && fstat(fd, &st) == 0) {
			/* at least one byte, so that an empty image gets its size */
			uint64_t len = st.st_size > 0 ? (uint64_t)st.st_size : 1;

			ret = catalog_dirty_add(r->cat, ds->name, ids.v[i], 0, len, true);
			*total += (uint64_t)st.st_size;
			(*nimages)++;
		}
		if (fd >= 0)
			close(fd);
		journal_image_put(r->j, im);
	}
	free(ids.v);
	if (ret == 0)
		ret = catalog_commit(r->cat);
	else
		catalog_rollback(r->cat);
	if (ret < 0)
		return ret;
	ds->p.total = *total;
	return 0;
}

/* A full resync begins: the destination is held (ships nothing) until step
 * journals SYNC_BEGIN and seeds its dirty extents. */
static int seed_full(struct resync *r, struct engine_dest *ds, enum dest_reason why)
{
	int ret;

	progress_reset(ds);
	/* Nothing ships until SYNC_BEGIN opens a segment of its own (step):
	 * the transport holds a destination syncing in phase NONE. */
	ret = change(r, ds, DEST_SYNC_SYNCING, DEST_PHASE_NONE, why, NO_MORE);
	if (ret == 0)
		log_info("destination %s: %s; resynchronising every image", ds->name,
			 dest_reason_text(why));
	return ret;
}

/* ---- the directories ---- */

/*
 * A destination that skipped segments also skipped their MKDIRs and
 * directory renames: journal a MKDIR for every directory the source has
 * (idempotent on every remote), parents first, under the namespace lock so
 * that none is removed between the scan and its record.
 */
static int mkdir_walk(struct resync *r, int rootfd, char *path, size_t len, dev_t jdev, ino_t jino,
		      int depth)
{
	struct dirent *de;
	DIR *d;
	int fd, ret = 0;

	if (depth > 64)
		return 0;
	fd = openat(rootfd, len ? path : ".", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return 0;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return 0;
	}
	while (!ret && (de = readdir(d))) {
		size_t nl = strlen(de->d_name), sub = len + (len ? 1 : 0) + nl;
		struct stat st;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") || sub > SEG_NAME_MAX)
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISDIR(st.st_mode) || (st.st_dev == jdev && st.st_ino == jino))
			continue;
		if (len)
			path[len] = '/';
		memcpy(path + len + (len ? 1 : 0), de->d_name, nl + 1);
		if (seg_name_valid(path, sub)) {
			ret = journal_mkdir(r->j, path, st.st_mode & 07777);
			if (ret == 0)
				ret = mkdir_walk(r, rootfd, path, sub, jdev, jino, depth + 1);
		}
		path[len] = '\0';
	}
	closedir(d);
	return ret;
}

static int journal_directories(struct resync *r)
{
	char path[SEG_NAME_MAX + 2] = "";
	struct stat js = { 0 };
	int ret;

	stat(r->journal_dir, &js);
	journal_ns_lock(r->j);
	ret = mkdir_walk(r, r->backing_fd, path, 0, js.st_dev, js.st_ino, 0);
	journal_ns_unlock(r->j);
	return ret;
}

/* ---- one chunk ---- */

static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/* Journals [pos, end) of data: HASH records, or the data itself. */
static int journal_data(struct resync *r, struct engine_dest *ds, struct image *im, int fd,
			uint64_t pos, uint64_t end, bool hash)
{
	uint64_t lsn, seg;
	int ret = 0;

	while (pos < end && !ret) {
		size_t len = end - pos > CHUNK ? CHUNK : (size_t)(end - pos);
		ssize_t got = fileio_pread_full(NULL, fd, r->buf, len, pos);

		if (got < 0)
			return (int)got;
		if (got == 0)
			break;
		len = (size_t)got;
		if (hash) {
			uint64_t hashes[CHUNK / HASH_BLOCK], n = 0;

			for (size_t o = 0; o < len; o += HASH_BLOCK)
				hashes[n++] = XXH3_64bits(r->buf + o, len - o < HASH_BLOCK ? len - o
											 : HASH_BLOCK);
			ret = journal_hash(r->j, im, ds->rec.number, pos, len, HASH_BLOCK, hashes, n, &lsn,
					   &seg);
			if (ret == 0) {
				if (!ds->p.lsn_a)
					ds->p.lsn_a = seg;
				ds->p.lsn_b = seg;
				ds->hashed += len;
				ds->hashed_unsealed += len;
				ds->hashed_all += len;
			}
		} else if (all_zero(r->buf, len)) {
			ret = journal_resync_zero(r->j, im, ds->rec.number, pos, len, false, &lsn, &seg);
		} else {
			ret = journal_resync_write(r->j, im, ds->rec.number, pos, r->buf, len, &lsn, &seg);
			if (ret == 0)
				ds->sent += len;
		}
		pos += len;
	}
	return ret;
}

/*
 * Covers up to CHUNK bytes from the start of extent e; sets *done to the
 * bytes of e now covered.
 */
static int process_extent(struct resync *r, struct engine_dest *ds, const struct catalog_extent *e,
			  uint64_t *done)
{
	struct image *im = journal_image_by_id(r->j, e->image);
	struct range_held h;
	struct rangelock *rl;
	uint64_t lsn, seg, end, pos, len;
	/*
	 * Hashed first where the remote may already hold the data.  Only a
	 * remote that listed no target at all (a new site) is known to hold
	 * nothing; any other answer may be stale by the time a HASH record
	 * reaches it (the stream renames, creates and grows its targets), and
	 * a wrong guess would ship whole images it already has.
	 */
	bool hash = e->hash && ds->compare == 1 && !ds->remote_empty;
	struct stat st;
	int fd, ret = 0;

	*done = e->length;
	if (!im)
		return 0; /* gone: its UNLINK reaches the remote anyway */
	fd = journal_open_image(r->j, im, r->backing_fd);
	if (fd < 0) {
		journal_image_put(r->j, im);
		return 0;
	}
	rl = journal_image_rangelock(im);
	if (ds->truncated_image != e->image) {
		/* The size first, ordered against every in-flight write. */
		rangelock_acquire(rl, &h, 0, RANGE_END);
		ret = fstat(fd, &st) < 0 ? -errno
					 : journal_resync_truncate(r->j, im, ds->rec.number,
								   (uint64_t)st.st_size, &lsn, &seg);
		rangelock_release(rl, &h);
		if (ret < 0)
			goto out;
		ds->truncated_image = e->image;
	}
	len = e->length < CHUNK ? e->length : CHUNK;
	rangelock_acquire(rl, &h, e->offset, len);
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto unlock;
	}
	if (e->offset >= (uint64_t)st.st_size)
		goto unlock; /* beyond the end: the TRUNCATE covered it */
	end = e->offset + len < (uint64_t)st.st_size ? e->offset + len : (uint64_t)st.st_size;
	for (pos = e->offset; pos < end && !ret;) {
		off_t data = lseek(fd, (off_t)pos, SEEK_DATA), hole;

		if (data < 0 || (uint64_t)data > end)
			data = (off_t)end;
		if ((uint64_t)data > pos) {
			/* A hole is a ZERO record, never data on the wire. */
			ret = journal_resync_zero(r->j, im, ds->rec.number, pos, (uint64_t)data - pos,
						  true, &lsn, &seg);
			pos = (uint64_t)data;
			continue;
		}
		hole = lseek(fd, (off_t)pos, SEEK_HOLE);
		if (hole < 0 || (uint64_t)hole > end)
			hole = (off_t)end;
		ret = journal_data(r, ds, im, fd, pos, (uint64_t)hole, hash);
		pos = (uint64_t)hole;
	}
	if (end < e->offset + e->length && end < (uint64_t)st.st_size)
		*done = end - e->offset;
unlock:
	rangelock_release(rl, &h);
out:
	close(fd);
	journal_image_put(r->j, im);
	return ret;
}

/* ---- the remote's mismatch report ---- */

static void probe_compare(struct resync *r, struct engine_dest *ds)
{
	struct proto_mismatches m;
	char *body = NULL, path[64], why[128];
	long status;
	bool json;

	if (transport_get(r->t, ds->index, proto_mismatches_path(0, path, sizeof path), &status,
			  &body, &json) < 0)
		return; /* unreachable: ask again later */
	/* aim-remote answers JSON, or "no group ..." until the group's first
	 * segment arrives (ask again then); a WebDAV server cannot compare. */
	if (proto_is_no_group(status, json, body)) {
		free(body);
		return;
	}
	ds->compare = json && (status == 200 || status == 404) ? 1 : 0;
	ds->remote_empty = false;
	if (ds->compare && status == 200 && proto_mismatches_parse(body, &m, why, sizeof why) == 0) {
		ds->remote_empty = m.has_targets && m.ntargets == 0;
		proto_mismatches_free(&m);
	}
	free(body);
	log_info("destination %s %s compare block hashes", ds->name,
		 ds->compare ? "can" : "cannot");
}

/* GET .../mismatches?after=after from destination ds, parsed.  0, or 1
 * when there is no answer to use now (unreachable, not JSON, an error). */
static int ask_mismatches(struct resync *r, struct engine_dest *ds, uint64_t after,
			  struct proto_mismatches *m, long *status)
{
	char *body = NULL, path[64], why[128];
	bool json = false;
	int ret;

	*status = 0;
	if (transport_get(r->t, ds->index, proto_mismatches_path(after, path, sizeof path), status,
			  &body, &json) < 0)
		return 1;
	ret = *status == 200 && json ? proto_mismatches_parse(body, m, why, sizeof why) : 1;
	if (ret < 0)
		log_warn("destination %s: %s", ds->name, why);
	free(body);
	return ret == 0 ? 0 : 1;
}

/* Turns the remote's report on the HASH records of this pass into dirty
 * extents to send as data.  Returns 1 when done, 0 to wait, -errno. */
static int collect_mismatches(struct resync *r, struct engine_dest *ds)
{
	uint64_t dfirst, dlast, x, after, mismatched = 0;
	int ret;

	if (catalog_shipment_range(r->cat, ds->name, ds->p.lsn_a, &dfirst, &x) < 0 ||
	    catalog_shipment_range(r->cat, ds->name, ds->p.lsn_b, &x, &dlast) < 0)
		return 0;
	after = dfirst - 1;
	for (;;) {
		struct proto_mismatches m;
		long status;
		bool more;

		if (ask_mismatches(r, ds, after, &m, &status))
			return 0;
		if (m.applied_lsn < dlast) {
			proto_mismatches_free(&m);
			return 0; /* not applied yet */
		}
		more = m.more;
		ret = 0;
		for (size_t i = 0; i < m.nranges; i++) {
			const struct proto_range *rg = &m.ranges[i];
			uint32_t id = rg->image_id;

			if (rg->lsn > after)
				after = rg->lsn;
			if (rg->lsn < dfirst || rg->lsn > dlast)
				continue;
			if (!id) {
				struct image *im = journal_image_lookup_name(r->j, rg->image);

				if (im) {
					id = journal_image_id(im);
					journal_image_put(r->j, im);
				}
			}
			if (id && !ret) {
				ret = catalog_dirty_add(r->cat, ds->name, id, rg->offset, rg->length,
							false);
				mismatched += rg->length;
			}
		}
		proto_mismatches_free(&m);
		if (ret < 0)
			return ret;
		if (!more || after >= dlast)
			break;
	}
	/* The differing blocks are dirty now; the rest were equal. */
	ret = catalog_hashed_clear(r->cat, ds->name);
	if (ret < 0)
		return ret;
	ds->p.saved += ds->hashed > mismatched ? ds->hashed - mismatched : 0;
	ds->hashed = 0;
	ds->p.lsn_a = ds->p.lsn_b = 0;
	log_info("destination %s: %" PRIu64 " bytes differ after comparison", ds->name, mismatched);
	return 1;
}

/* ---- the state machine ---- */

/*
 * Whether the journal has room for info's resync: under half full, or
 * another destination (not tracking) that lags further cannot be reached.
 * That one's lag is not info's to wait for: when the journal fills, the
 * destination holding the oldest segment goes tracking and frees it
 * (relieve_overflow).  A healthy destination's resync once waited as long
 * as a lagging one held between half and all of the journal: for ever,
 * once writes stopped.  But one that is reached and only slower than the
 * resync (it ships the resync's records as SKIPs) drains the journal by
 * itself: filling it past that one made it tracking, a healthy
 * destination resynchronised for nothing.  Anything else that holds it
 * (retain) is waited for, or an overflow would make info tracking and this
 * let it out again at once (a flip-flop).
 */
static bool journal_has_room(struct resync *r, const struct transport_dest_info *info)
{
	uint64_t used, max;

	journal_space(r->j, &used, &max);
	if (!max || used < max / 2)
		return true;
	for (size_t i = 0; i < r->n; i++) {
		struct transport_dest_info other;

		transport_dest_info(r->t, r->ds[i].index, &other);
		if (other.rec.sync != DEST_SYNC_TRACKING && !other.reachable &&
		    other.acked_segment < info->acked_segment)
			return true;
	}
	return false;
}

static bool keeping_up(struct resync *r, const struct transport_dest_info *info)
{
	return info->reachable && info->durable_segment <= info->acked_segment + MAX_BACKLOG &&
	       journal_has_room(r, info);
}

/* Journals the next chunk of the first dirty extent and records the
 * progress in memory (the caller saves it).  1: done, 0: nothing dirty is
 * left, -errno. */
static int copy_chunk(struct resync *r, struct engine_dest *ds)
{
	struct catalog_extent e;
	uint64_t done, hashed_before = ds->hashed_all, lsn_a = ds->p.lsn_a, lsn_b = ds->p.lsn_b;
	int ret;

	ret = catalog_dirty_first(r->cat, ds->name, &e);
	if (ret == -ENOENT)
		return 0;
	if (ret < 0)
		return ret;
	ret = process_extent(r, ds, &e, &done);
	if (ret < 0) {
		log_error("destination %s: resync of image %u at %" PRIu64 ": %s", ds->name,
			  e.image, e.offset, strerror(-ret));
		return ret;
	}
	/* The segments holding this pass's HASH records are saved before the
	 * extents they cover leave the dirty set: after a crash in between,
	 * the report asked for must cover them. */
	if (ds->p.lsn_a != lsn_a || ds->p.lsn_b != lsn_b) {
		ret = save(r, ds);
		if (ret < 0)
			return ret;
	}
	/* Hashed extents wait aside for the remote's report: if the pass is
	 * abandoned first (tracking), they are dirty again. */
	ret = catalog_dirty_advance(r->cat, ds->name, &e, done, ds->hashed_all > hashed_before);
	if (ret < 0)
		return ret;
	ds->p.done += done < CHUNK ? done : CHUNK;
	if (ds->p.done > ds->p.total)
		ds->p.total = ds->p.done;
	if (ds->hashed_unsealed >= SEAL_HASHED) {
		/* HASH records are small: without this the remote would see
		 * them only at segment_age, and compare only after we hashed
		 * everything instead of alongside. */
		journal_seal(r->j);
		ds->hashed_unsealed = 0;
	}
	return 1;
}

/* The copying phase: chunks for up to BATCH_NS while the destination keeps
 * up, then the progress is saved once (a crash redoes at most a batch,
 * which is harmless: resync records are ordered like any other). */
static bool copy_batch(struct resync *r, struct engine_dest *ds, struct transport_dest_info *info)
{
	uint64_t lsn, seg, start = clock_wall_ns();
	bool worked = false;
	int ret = 1;

	while (ret > 0 && keeping_up(r, info) && clock_wall_ns() - start < BATCH_NS) {
		ret = copy_chunk(r, ds);
		worked |= ret > 0;
		transport_dest_info(r->t, ds->index, info);
	}
	if (ret == 0) {
		/* Nothing dirty is left: compare what was hashed, or end. */
		if (ds->p.lsn_b) {
			change(r, ds, DEST_SYNC_SYNCING, DEST_PHASE_COMPARING, ds->rec.reason, NO_MORE);
		} else if (journal_sync_mark(r->j, ds->rec.number, false, false, &lsn, &seg) == 0) {
			ds->p.lsn_b = seg;
			change(r, ds, DEST_SYNC_SYNCING, DEST_PHASE_ENDING, ds->rec.reason, NO_MORE);
		}
		/* What the next phase waits for goes out now, not at segment_age. */
		journal_seal(r->j);
		ds->hashed_unsealed = 0;
		worked = true;
	}
	if (worked)
		save(r, ds);
	return worked;
}

/* One step for one syncing destination; true if it did something. */
static bool step(struct resync *r, struct engine_dest *ds, struct transport_dest_info *info)
{
	uint64_t lsn, seg;
	int ret;

	switch (ds->rec.phase) {
	case DEST_PHASE_NONE: {
		/*
		 * SYNC_BEGIN as the first record of a new segment, and the
		 * destination resumes right there: whatever it missed before is
		 * in its dirty extents, and the remote, seeing a gap that ends
		 * at a segment starting with SYNC_BEGIN, may cross it.
		 */
		struct dest_change skip = { .skip = true };
		size_t nimages;
		uint64_t total;

		if (journal_sync_mark(r->j, ds->rec.number, true, true, &lsn, &seg) < 0 ||
		    journal_directories(r) < 0 || seed_images(r, ds, &nimages, &total) < 0)
			return false;
		log_info("destination %s: resynchronising %zu images (%" PRIu64 " bytes)", ds->name,
			 nimages, total);
		journal_seal(r->j); /* the remote learns of the group now: the probe */
		ds->compare = -1;   /* ask again what it can compare and holds */
		/*
		 * The copying phase and the skip are one change: a crash after
		 * it must not begin the resync again, whose second skip would
		 * drop segments the destination may already be receiving (and
		 * namespace records that recovery journals in them).  If it
		 * fails, the next pass begins again with a new SYNC_BEGIN.
		 */
		skip.skip_segment = seg - 1;
		skip.skip_dest_lsn = lsn - 1;
		return change(r, ds, DEST_SYNC_SYNCING, DEST_PHASE_COPYING, ds->rec.reason, skip) == 0;
	}
	case DEST_PHASE_BEGIN:
		if (ds->rec.reason == DEST_REASON_SNAPSHOT) {
			/* A new base for an object store (snapshot_every): its
			 * SYNC_BEGIN opens a segment of its own, then every image
			 * is sent whole; nothing is skipped, so the bucket keeps
			 * every segment before it too. */
			size_t nimages;
			uint64_t total;

			if (journal_sync_mark(r->j, ds->rec.number, true, true, &lsn, &seg) < 0 ||
			    journal_directories(r) < 0 || seed_images(r, ds, &nimages, &total) < 0)
				return false;
			log_info("destination %s: a new base: %zu images (%" PRIu64 " bytes)", ds->name,
				 nimages, total);
			ds->compare = -1;
			change(r, ds, DEST_SYNC_SYNCING, DEST_PHASE_COPYING, ds->rec.reason, NO_MORE);
			return true;
		}
		/* nothing was skipped (back from tracking without a skeleton,
		 * or a power loss): its dirty extents are already recorded */
		if (journal_sync_mark(r->j, ds->rec.number, true, false, &lsn, &seg) < 0)
			return false;
		ds->compare = -1;
		if (!ds->p.total) {
			uint64_t count;

			catalog_dirty_bytes(r->cat, ds->name, &ds->p.total, &count);
		}
		change(r, ds, DEST_SYNC_SYNCING, DEST_PHASE_COPYING, ds->rec.reason, NO_MORE);
		return true;
	case DEST_PHASE_COPYING:
		if (!keeping_up(r, info))
			return false;
		if (ds->compare < 0)
			probe_compare(r, ds);
		if (ds->compare < 0)
			return false;
		return copy_batch(r, ds, info);
	case DEST_PHASE_COMPARING:
		if (info->acked_segment < ds->p.lsn_b)
			return false;
		ret = collect_mismatches(r, ds);
		if (ret <= 0)
			return false;
		ds->truncated_image = 0;
		change(r, ds, DEST_SYNC_SYNCING, DEST_PHASE_COPYING, ds->rec.reason, NO_MORE);
		return true;
	case DEST_PHASE_ENDING:
		if (info->acked_segment < ds->p.lsn_b)
			return false;
		log_info("destination %s is in sync: %" PRIu64 " bytes of data sent, %" PRIu64
			 " hashed, %" PRIu64 " found equal", ds->name, ds->sent, ds->hashed_all,
			 ds->p.saved);
		ds->p.lsn_a = ds->p.lsn_b = 0;
		change(r, ds, DEST_SYNC_IN_SYNC, DEST_PHASE_NONE, DEST_REASON_NONE, NO_MORE);
		return true;
	case DEST_PHASE_BEGUN:
		break; /* a tracking phase */
	}
	return false;
}

/*
 * overflow=track: the journal is full.  The destination holding the oldest
 * segment goes tracking (skeletons instead of segments, its data becoming
 * dirty extents) so that pruning makes room; guests never wait.
 */
static bool relieve_overflow(struct resync *r)
{
	struct engine_dest *victim = NULL;
	uint64_t used, max, low = UINT64_MAX, skipping = UINT64_MAX;

	if (!r->track)
		return false;
	journal_space(r->j, &used, &max);
	if (!max || used < max)
		return false;
	/* Segments every destination has may only wait for the backing
	 * files' next sync: sync them now rather than make anyone tracking. */
	if (journal_sync_backing(r->j) == 0) {
		transport_make_room(r->t, r->cat);
		journal_space(r->j, &used, &max);
		if (used < max)
			return false;
	}
	for (size_t i = 0; i < r->n; i++) {
		struct transport_dest_info info;

		transport_dest_info(r->t, r->ds[i].index, &info);
		/* About to skip every segment it lags (a resync of every image
		 * begins: step, phase NONE), tracking or not: that releases
		 * them.  Tracking instead would keep only the dirty extents,
		 * and lose the images this resync has yet to mark whole. */
		if (info.segments_gone ||
		    (info.rec.sync == DEST_SYNC_SYNCING && info.rec.phase == DEST_PHASE_NONE) ||
		    info.rec.sync == DEST_SYNC_NEW) {
			if (info.acked_segment < skipping)
				skipping = info.acked_segment;
			continue;
		}
		if (info.rec.sync == DEST_SYNC_TRACKING || info.acked_segment >= info.durable_segment)
			continue;
		if (info.acked_segment < low) {
			low = info.acked_segment;
			victim = &r->ds[i];
		}
	}
	/* One of those holds the oldest segment: tracking another frees
	 * nothing until its skip, and would cost that one a resync. */
	if (victim && skipping <= low)
		victim = NULL;
	if (victim) {
		log_warn("destination %s fell behind and the journal is full (%" PRIu64 " of %" PRIu64
			 " bytes): tracking its changes for a resync instead", victim->name, used, max);
		change(r, victim, DEST_SYNC_TRACKING, DEST_PHASE_NONE, DEST_REASON_OVERFLOW, NO_MORE);
	}
	transport_make_room(r->t, r->cat);
	return victim != NULL;
}

/* snapshot_every: an object store in sync whose newest base is that old
 * gets a new one (step, phase BEGIN). */
static bool start_snapshot(struct resync *r, struct engine_dest *ds)
{
	struct dest_change only_if = { .expect = true, .expect_sync = DEST_SYNC_IN_SYNC,
				       .expect_phase = DEST_PHASE_NONE };

	progress_reset(ds);
	if (change(r, ds, DEST_SYNC_SYNCING, DEST_PHASE_BEGIN, DEST_REASON_SNAPSHOT, only_if) < 0)
		return false;
	log_info("destination %s: snapshot_every: starting a new base", ds->name);
	return true;
}

/* A tracking destination that answers and keeps up again is resynced. */
static bool end_tracking(struct resync *r, struct engine_dest *ds,
			 const struct transport_dest_info *info)
{
	struct dest_change only_if = { .expect = true, .expect_sync = DEST_SYNC_TRACKING,
				       .expect_phase = info->rec.phase };
	bool begin_sent = info->rec.phase == DEST_PHASE_BEGUN, ok;
	uint64_t count;

	/* Not while the journal has no room for its resync: it could not go
	 * on (keeping_up), and the next overflow would make it tracking again
	 * at once (it once flipped hundreds of times a second while a slow
	 * link carried one segment). */
	if (!keeping_up(r, info))
		return false;
	/* The pass that tracking interrupted may have hashed extents whose
	 * report will never be asked for (their HASH records may even have
	 * become skeletons, which drop them): compare them again. */
	if (catalog_hashed_requeue(r->cat, ds->name) < 0)
		return false;
	progress_reset(ds);
	/* Ask again what it can compare and holds: the first answer may have
	 * been a new site's (nothing to compare), long since filled, or the
	 * remote may have been replaced while it was away. */
	ds->compare = -1;
	catalog_dirty_bytes(r->cat, ds->name, &ds->p.total, &count);
	/* Its SYNC_BEGIN went out with the first skeleton, if there was one.
	 * A skeleton made meanwhile changes the phase: then look again.  No
	 * skeleton is half made across the change (it would be stored
	 * without a SYNC_BEGIN while the remote is consistent, or its dirty
	 * extents recorded after this resync found none left). */
	transport_skeletons_hold(r->t);
	ok = change(r, ds, DEST_SYNC_SYNCING, begin_sent ? DEST_PHASE_COPYING : DEST_PHASE_BEGIN,
		    DEST_REASON_OVERFLOW, only_if) == 0;
	transport_skeletons_release(r->t);
	if (!ok)
		return false;
	log_info("destination %s is back; resynchronising what it missed (%" PRIu64 " bytes)",
		 ds->name, ds->p.total);
	return true;
}

/* ---- aimctl verify ---- */

static void verify_free(struct verify *v)
{
	if (!v)
		return;
	free(v->image);
	free(v->ids);
	json_decref(v->result);
	free(v);
}

/* Hashes the next chunk of the images under verification (every block,
 * holes included: a hole must read as zeros on the remote too). */
static bool verify_hash_step(struct resync *r, struct verify *v)
{
	struct image *im;
	struct range_held h;
	struct stat st;
	uint64_t lsn, seg, hashes[CHUNK / HASH_BLOCK], n = 0;
	ssize_t got;
	int fd;

	while (v->next < v->nids) {
		im = journal_image_by_id(r->j, v->ids[v->next]);
		fd = im ? journal_open_image(r->j, im, r->backing_fd) : -1;
		if (fd >= 0 && fstat(fd, &st) == 0 && v->offset < (uint64_t)st.st_size)
			break;
		if (fd >= 0)
			close(fd);
		journal_image_put(r->j, im);
		v->next++;
		v->offset = 0;
	}
	if (v->next >= v->nids) {
		v->hashing = false;
		return true;
	}
	rangelock_acquire(journal_image_rangelock(im), &h, v->offset, CHUNK);
	got = fileio_pread_full(NULL, fd, r->buf, CHUNK, v->offset);
	if (got > 0) {
		for (ssize_t o = 0; o < got; o += HASH_BLOCK)
			hashes[n++] = XXH3_64bits(r->buf + o, (size_t)(got - o < HASH_BLOCK ? got - o
											 : HASH_BLOCK));
		if (journal_hash(r->j, im, 0, v->offset, (uint64_t)got, HASH_BLOCK, hashes, n, &lsn,
				 &seg) == 0) {
			if (!v->seg_first)
				v->seg_first = seg;
			v->seg_last = seg;
			v->bytes += (uint64_t)got;
		}
	}
	rangelock_release(journal_image_rangelock(im), &h);
	close(fd);
	journal_image_put(r->j, im);
	if (got <= 0 || (size_t)got < CHUNK) {
		v->next++;
		v->offset = 0;
	} else {
		v->offset += (uint64_t)got;
	}
	return true;
}

/* Asks destination i for its report on the verification's HASH records. */
static json_t *verify_ask(struct resync *r, struct verify *v, struct engine_dest *ds)
{
	struct transport_dest_info info;
	struct proto_mismatches m;
	uint64_t dfirst, dlast, x;
	json_t *o = json_object(), *ranges = json_array();
	long status = 0;
	int r_ask;

	json_object_set_new(o, "name", json_string(ds->name));
	transport_dest_info(r->t, ds->index, &info);
	if (!v->seg_first) {
		json_object_set_new(o, "state", json_string("equal"));
		json_decref(ranges);
		return o;
	}
	if (info.acked_segment < v->seg_last ||
	    catalog_shipment_range(r->cat, ds->name, v->seg_first, &dfirst, &x) < 0 ||
	    catalog_shipment_range(r->cat, ds->name, v->seg_last, &x, &dlast) < 0) {
		json_object_set_new(o, "state", json_string("shipping"));
		json_decref(ranges);
		return o;
	}
	r_ask = ask_mismatches(r, ds, dfirst - 1, &m, &status);
	if (r_ask && status != 200) {
		json_object_set_new(o, "state", json_string(status == 0 ? "unreachable"
									: "cannot compare"));
		json_decref(ranges);
		return o;
	}
	if (r_ask || m.applied_lsn < dlast) {
		json_object_set_new(o, "state", json_string(r_ask ? "cannot compare" : "applying"));
		if (!r_ask)
			proto_mismatches_free(&m);
		json_decref(ranges);
		return o;
	}
	for (size_t k = 0; k < m.nranges; k++) {
		const struct proto_range *rg = &m.ranges[k];

		if (rg->lsn >= dfirst && rg->lsn <= dlast)
			json_array_append_new(ranges, json_pack("{s:I,s:s,s:I,s:I,s:I}",
				"lsn", (json_int_t)rg->lsn, "image", rg->image,
				"image_id", (json_int_t)rg->image_id,
				"offset", (json_int_t)rg->offset, "length", (json_int_t)rg->length));
	}
	proto_mismatches_free(&m);
	json_object_set_new(o, "state", json_string(json_array_size(ranges) ? "differs"
									      : "equal"));
	json_object_set_new(o, "ranges", ranges);
	return o;
}

static bool verify_step(struct resync *r)
{
	struct verify *v;
	json_t *dests;
	bool done = true;

	/* Only this thread replaces the running verification: a request that
	 * arrives meanwhile waits in verify_next instead of freeing it under us. */
	pthread_mutex_lock(&r->lock);
	if (r->verify_next) {
		verify_free(r->verify);
		r->verify = r->verify_next;
		r->verify_next = NULL;
	}
	v = r->verify;
	pthread_mutex_unlock(&r->lock);

	if (!v || json_is_true(json_object_get(v->result, "done")))
		return false;
	if (v->hashing)
		return verify_hash_step(r, v);
	dests = json_array();
	for (size_t i = 0; i < r->n; i++) {
		json_t *d = verify_ask(r, v, &r->ds[i]);
		const char *st = json_string_value(json_object_get(d, "state"));

		if (!strcmp(st, "shipping") || !strcmp(st, "applying") || !strcmp(st, "unreachable"))
			done = false;
		json_array_append_new(dests, d);
	}
	pthread_mutex_lock(&r->lock);
	json_object_set_new(v->result, "destinations", dests);
	json_object_set_new(v->result, "bytes", json_integer((json_int_t)v->bytes));
	json_object_set_new(v->result, "done", json_boolean(done));
	pthread_mutex_unlock(&r->lock);
	if (done) {
		json_t *d;
		size_t i;
		bool equal = true;

		json_array_foreach(dests, i, d)
			if (strcmp(json_string_value(json_object_get(d, "state")), "equal") &&
			    strcmp(json_string_value(json_object_get(d, "state")), "cannot compare")) {
				equal = false;
				log_warn("verification %" PRIu64 ": destination %s %s (%zu ranges)", v->id,
					 json_string_value(json_object_get(d, "name")),
					 json_string_value(json_object_get(d, "state")),
					 json_array_size(json_object_get(d, "ranges")));
			}
		if (equal)
			log_info("verification %" PRIu64 " finished: every replica is equal", v->id);
	}
	return false; /* waiting on remotes: let the loop idle */
}

/* verify_every: start a verification of every image when it is due and
 * none runs; its result is in the status and differences are logged. */
static void scheduled_verify(struct resync *r)
{
	uint64_t now = clock_wall_ns(), id;
	bool idle;

	if (!r->verify_every_ns || now < r->next_verify_ns)
		return;
	pthread_mutex_lock(&r->lock);
	idle = !r->verify_next &&
	       (!r->verify || json_is_true(json_object_get(r->verify->result, "done")));
	pthread_mutex_unlock(&r->lock);
	if (!idle)
		return;
	r->next_verify_ns = now + r->verify_every_ns;
	if (resync_verify(r, NULL, &id) == 0)
		log_info("scheduled verification %" PRIu64 " of every image started", id);
}

/* The transport changed a destination's state: look now. */
static void wake(void *arg)
{
	struct resync *r = arg;

	pthread_mutex_lock(&r->lock);
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

static void *engine_main(void *arg)
{
	struct resync *r = arg;

	pthread_mutex_lock(&r->lock);
	while (!r->stop) {
		bool worked = false, syncing = false;

		pthread_mutex_unlock(&r->lock);
		worked |= relieve_overflow(r);
		worked |= verify_step(r);
		scheduled_verify(r);
		for (size_t i = 0; i < r->n; i++) {
			struct engine_dest *ds = &r->ds[i];
			struct transport_dest_info info;

			transport_dest_info(r->t, ds->index, &info);
			ds->rec = info.rec;
			bool begun = info.rec.sync == DEST_SYNC_SYNCING &&
				     info.rec.phase == DEST_PHASE_NONE;

			if ((info.segments_gone && !begun) || info.rec.sync == DEST_SYNC_NEW) {
				if (seed_full(r, ds, info.segments_gone ? DEST_REASON_SEGMENTS_GONE
									: DEST_REASON_NEW) == 0)
					worked = true;
				continue;
			}
			if (info.rec.sync == DEST_SYNC_SYNCING) {
				worked |= step(r, ds, &info);
				syncing = true;
			} else if (info.rec.sync == DEST_SYNC_TRACKING) {
				worked |= end_tracking(r, ds, &info);
			} else if (info.rec.sync == DEST_SYNC_IN_SYNC && info.snapshot_due) {
				worked |= start_snapshot(r, ds);
			}
		}
		pthread_mutex_lock(&r->lock);
		if (!worked && !r->stop) {
			struct timespec ts = clock_timespec(clock_wall_ns() +
							    (syncing ? SYNCING_IDLE_NS : IDLE_NS));

			pthread_cond_timedwait(&r->cond, &r->lock, &ts);
		}
	}
	pthread_mutex_unlock(&r->lock);
	return NULL;
}

int resync_start(struct journal *j, struct transport *t, int backing_fd, const char *journal_dir,
		 bool track, uint64_t verify_every_ns, struct resync **out)
{
	struct resync *r = calloc(1, sizeof *r);
	char path[4200];
	int ret;

	if (!r)
		return -ENOMEM;
	r->j = j;
	r->t = t;
	r->track = track;
	r->verify_every_ns = verify_every_ns;
	r->next_verify_ns = clock_wall_ns() + verify_every_ns;
	r->backing_fd = backing_fd;
	r->journal_dir = strdup(journal_dir);
	r->n = transport_dest_count(t);
	r->ds = calloc(r->n ? r->n : 1, sizeof *r->ds);
	r->buf = malloc(CHUNK);
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->cond, NULL);
	if (!r->journal_dir || !r->ds || !r->buf) {
		resync_stop(r);
		return -ENOMEM;
	}
	snprintf(path, sizeof path, "%s/catalog.db", journal_dir);
	ret = catalog_open(path, &r->cat);
	for (size_t i = 0; i < r->n && !ret; i++) {
		struct transport_dest_info info;

		transport_dest_info(t, i, &info);
		r->ds[i].index = i;
		r->ds[i].compare = -1;
		r->ds[i].name = strdup(info.name);
		r->ds[i].rec = info.rec;
		/* a comparing phase resumes as it was: the remote keeps its reports */
		r->ds[i].p = info.rec.progress;
		if (!r->ds[i].name)
			ret = -ENOMEM;
	}
	if (ret == 0)
		ret = -thread_start(&r->thread, engine_main, r);
	if (ret == 0)
		transport_on_change(t, wake, r);
	if (ret < 0) {
		catalog_close(r->cat);
		r->cat = NULL;
		resync_stop(r);
		return ret;
	}
	*out = r;
	return 0;
}

void resync_stop(struct resync *r)
{
	if (!r)
		return;
	if (r->cat) {
		transport_on_change(r->t, NULL, NULL);
		pthread_mutex_lock(&r->lock);
		r->stop = true;
		pthread_cond_broadcast(&r->cond);
		pthread_mutex_unlock(&r->lock);
		pthread_join(r->thread, NULL);
		catalog_close(r->cat);
	}
	for (size_t i = 0; i < r->n; i++)
		free(r->ds[i].name);
	free(r->ds);
	free(r->buf);
	verify_free(r->verify);
	verify_free(r->verify_next);
	free(r->journal_dir);
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->cond);
	free(r);
}

int resync_verify(struct resync *r, const char *image, uint64_t *id)
{
	struct verify *v = calloc(1, sizeof *v);
	struct ids ids = { 0 };

	if (!v)
		return -ENOMEM;
	if (image) {
		struct image *im = journal_image_lookup_name(r->j, image);

		if (!im) {
			free(v);
			return -ENOENT;
		}
		collect_id(&ids, journal_image_id(im));
		journal_image_put(r->j, im);
		v->image = strdup(image);
	} else {
		journal_each_image_id(r->j, collect_id, &ids);
	}
	v->ids = ids.v;
	v->nids = ids.n;
	v->hashing = true;
	v->started_ns = clock_wall_ns();
	v->result = json_object();
	pthread_mutex_lock(&r->lock);
	v->id = ++r->next_verify_id;
	json_object_set_new(v->result, "id", json_integer((json_int_t)v->id));
	json_object_set_new(v->result, "image", image ? json_string(image) : json_null());
	json_object_set_new(v->result, "done", json_false());
	json_object_set_new(v->result, "destinations", json_array());
	verify_free(r->verify_next); /* asked twice before it started: the last one */
	r->verify_next = v;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	*id = v->id;
	return 0;
}

json_t *resync_verify_status(struct resync *r)
{
	json_t *o;

	pthread_mutex_lock(&r->lock);
	o = r->verify_next ? json_deep_copy(r->verify_next->result)
			   : r->verify ? json_deep_copy(r->verify->result) : NULL;
	pthread_mutex_unlock(&r->lock);
	return o;
}
