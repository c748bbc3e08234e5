/*
 * actlog.c — the activity log (actlog.h): the durable set of hot extents,
 * its slot transactions, checkpoints and background cooling.
 *
 * A slot is EMPTY, PENDING (taken in memory, not yet in a write of the
 * log), WRITING (in the write under way) or DURABLE.  A writer holds a slot
 * from actlog_touch to actlog_release (refs), never before it is DURABLE.
 *
 * Cold.  A checkpoint numbers itself with a new epoch E and notes which
 * DURABLE slots are idle (refs 0) as it begins; then it makes the journal
 * durable and syncfs()s the backing filesystem.  A noted slot not touched
 * since (touched < E) is cold: every write that touched it had finished its
 * record and its backing syscall before the checkpoint began, so both are
 * on disk now.  Only cold (or empty) slots are given to other extents.
 *
 * Read-ahead.  A miss at extent k also takes k+1 .. k+READ_AHEAD of the same
 * image when slots are free or cold, in the same log write: a sequential
 * writer then pays one log write per READ_AHEAD + 1 extents.  They are
 * cold at once (nothing was written to them).
 */
#include "actlog.h"
#include "nested.h"
#include "fileio.h"
#include "thread.h"
#include "io_i.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define SLOT_BYTES 8u
#define SLOTS_PER_PAGE (PAGE / SLOT_BYTES)
#define READ_AHEAD 3u
#define COOL_TICK_NS 200000000ull /* how often the cooler looks */

enum slot_state { S_EMPTY, S_PENDING, S_WRITING, S_DURABLE };

struct slot {
	uint32_t image;           /* 0: none */
	uint32_t extent;
	_Atomic uint32_t refs;    /* writers holding it (released without the lock) */
	uint8_t state;
	bool cold;
	bool candidate;           /* idle when the running checkpoint began */
	uint64_t touched;         /* epoch of its last touch */
	uint64_t used;            /* LRU clock */
	int32_t next;             /* hash chain */
};

struct actlog {
	struct actlog_config cfg;
	int fd;                   /* the log file */
	int syncfd;               /* the backing directory, readable: for syncfs */
	dev_t sync_dev;           /* ... its filesystem */
	struct nested_fs nested;  /* filesystems mounted below it: syncfs each */
	bool watch_failed;        /* one could not be added (said once) */
	uint8_t boot[BOOT_ID_LEN];
	bool boot_known;
	uint64_t generation;
	uint64_t synced_lsn;      /* written into the header */

	pthread_mutex_t lock;
	pthread_cond_t cond;      /* a transaction or checkpoint finished */
	struct slot *s;
	unsigned n;
	int32_t *bucket;
	unsigned nbuckets;        /* power of two */
	uint8_t *area;            /* the slot pages as they are to be on disk */
	size_t area_bytes;
	uint8_t *dirty;           /* per page: changed since the last write */
	uint8_t *snap;            /* pages being written */
	uint8_t *snap_dirty;      /* ... and which of them */
	uint64_t epoch, clock;
	bool writing, checkpointing, begun;
	atomic_bool writeback_lost; /* an image's write-back failed: pages it could
				   * not write are marked clean and lost, and a later
				   * syncfs says nothing of them; the synced LSN stays
				   * (header: redo) until a mount redoes the journal */
	bool redo_noted;          /* ... and the header says so */
	bool failing;             /* the last log write or checkpoint failed: the
				   * cooler waits a tick before trying again */
	uint64_t transactions, checkpoints, waits, stalls;

	pthread_t cooler;
	bool cooler_running, stop;
	pthread_cond_t cool;
};

/* ---- encoding ---- */

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static size_t area_bytes(unsigned slots)
{
	return ((size_t)slots * SLOT_BYTES + PAGE - 1) / PAGE * PAGE;
}

static int write_full(int fd, const void *buf, size_t len, uint64_t off)
{
	return fileio_pwrite_full(aimfs_io.pwrite_fn, fd, buf, len, off);
}

/* Writes the header page (clean or not) and makes it durable. */
static int write_header(struct actlog *al, bool clean)
{
	struct actlog_header hd = { .extent_shift = al->cfg.extent_shift, .slots = al->n,
				    .clean = clean, .redo = al->writeback_lost,
				    .generation = ++al->generation,
				    .synced_lsn = al->synced_lsn };
	uint8_t h[PAGE] = { 0 };
	int r;

	memcpy(hd.group, al->cfg.group, 16);
	memcpy(hd.boot, al->boot, BOOT_ID_LEN);
	actlog_header_encode(&hd, h);
	r = write_full(al->fd, h, PAGE, 0);
	if (r == 0 && aimfs_io.fdatasync_fn(al->fd) < 0)
		r = -errno;
	return r;
}

/* ---- the in-memory set ---- */

static uint32_t hash_key(uint32_t image, uint32_t extent)
{
	uint64_t k = ((uint64_t)image << 32 | extent) * 0x9E3779B97F4A7C15ull;

	return (uint32_t)(k >> 32);
}

static int32_t find(struct actlog *al, uint32_t image, uint32_t extent)
{
	for (int32_t i = al->bucket[hash_key(image, extent) & (al->nbuckets - 1)]; i >= 0;
	     i = al->s[i].next)
		if (al->s[i].image == image && al->s[i].extent == extent)
			return i;
	return -1;
}

static void unhash(struct actlog *al, int32_t i)
{
	int32_t *pp = &al->bucket[hash_key(al->s[i].image, al->s[i].extent) & (al->nbuckets - 1)];

	while (*pp >= 0 && *pp != i)
		pp = &al->s[*pp].next;
	if (*pp == i)
		*pp = al->s[i].next;
	al->s[i].next = -1;
}

static void rehash(struct actlog *al, int32_t i)
{
	uint32_t b = hash_key(al->s[i].image, al->s[i].extent) & (al->nbuckets - 1);

	al->s[i].next = al->bucket[b];
	al->bucket[b] = i;
}

/* Gives slot i to (image, extent), PENDING, in memory and in the area. */
static void assign(struct actlog *al, int32_t i, uint32_t image, uint32_t extent)
{
	struct slot *s = &al->s[i];

	if (s->image)
		unhash(al, i);
	s->image = image;
	s->extent = extent;
	s->state = S_PENDING;
	s->cold = false;
	s->touched = al->epoch;
	s->used = ++al->clock;
	rehash(al, i);
	put32(al->area + (size_t)i * SLOT_BYTES, image);
	put32(al->area + (size_t)i * SLOT_BYTES + 4, extent);
	al->dirty[(size_t)i / SLOTS_PER_PAGE] = 1;
}

/* A slot that may be given away: free, or cold and idle (least recently
 * used first).  -1 if none. */
static int32_t victim(struct actlog *al)
{
	int32_t best = -1;

	for (unsigned i = 0; i < al->n; i++) {
		struct slot *s = &al->s[i];

		if (s->state == S_EMPTY)
			return (int32_t)i;
		if (s->state == S_DURABLE && s->cold && atomic_load(&s->refs) == 0 &&
		    (best < 0 || s->used < al->s[best].used))
			best = (int32_t)i;
	}
	return best;
}

/*
 * Until slot i is DURABLE: writes the pending slots' pages and fdatasyncs
 * (one writer at a time; the others wait and share its write).  Called and
 * returns with the lock held.  A failed write is not sticky: its pages are
 * dirty again and its slots pending, so the next commit writes them again
 * (after a failed fdatasync too, whose pages may have been dropped clean).
 */
static int commit_locked(struct actlog *al, int32_t i)
{
	while (al->s[i].state != S_DURABLE) {
		size_t npages = al->area_bytes / PAGE;
		int r = 0;

		if (al->writing) {
			al->waits++;
			pthread_cond_wait(&al->cond, &al->lock);
			continue;
		}
		al->writing = true;
		memcpy(al->snap, al->area, al->area_bytes);
		memcpy(al->snap_dirty, al->dirty, npages);
		memset(al->dirty, 0, npages);
		for (unsigned k = 0; k < al->n; k++)
			if (al->s[k].state == S_PENDING)
				al->s[k].state = S_WRITING;
		pthread_mutex_unlock(&al->lock);
		for (size_t p = 0; p < npages && !r; p++)
			if (al->snap_dirty[p])
				r = write_full(al->fd, al->snap + p * PAGE, PAGE, PAGE + p * (uint64_t)PAGE);
		if (r == 0 && aimfs_io.fdatasync_fn(al->fd) < 0)
			r = -errno;
		pthread_mutex_lock(&al->lock);
		if (r < 0) {
			if (!al->failing)
				log_error("activity log: %s; writes to new extents fail with it until"
					  " it clears", strerror(-r));
			al->failing = true;
			for (size_t p = 0; p < npages; p++)
				al->dirty[p] |= al->snap_dirty[p];
		} else if (al->failing) {
			log_info("activity log: writing again");
			al->failing = false;
		}
		for (unsigned k = 0; k < al->n; k++)
			if (al->s[k].state == S_WRITING)
				al->s[k].state = r < 0 ? S_PENDING : S_DURABLE;
		al->transactions++;
		al->writing = false;
		pthread_cond_broadcast(&al->cond);
		if (r < 0)
			return r;
	}
	return 0;
}

/* ---- checkpoints ---- */

/* syncfs of the backing filesystem and of those mounted inside it. */
static int sync_backing(struct actlog *al)
{
	unsigned n;

	if (aimfs_io.syncfs_fn(al->syncfd) < 0)
		return -errno;
	/* entries are only added (actlog_watch), their fds kept until close */
	pthread_mutex_lock(&al->lock);
	n = al->nested.n;
	pthread_mutex_unlock(&al->lock);
	for (unsigned i = 0; i < n; i++)
		if (aimfs_io.syncfs_fn(al->nested.fd[i]) < 0)
			return -errno;
	return 0;
}

bool actlog_covers(struct actlog *al, dev_t dev)
{
	bool covered;

	if (!al)
		return false;
	pthread_mutex_lock(&al->lock);
	covered = dev == al->sync_dev || nested_fs_has(&al->nested, dev);
	pthread_mutex_unlock(&al->lock);
	return covered;
}

void actlog_watch(struct actlog *al, int fd)
{
	bool first_failure = false;
	int r;

	if (!al)
		return;
	pthread_mutex_lock(&al->lock);
	r = nested_fs_add(&al->nested, fd, al->sync_dev);
	if (r < 0 && !al->watch_failed)
		first_failure = al->watch_failed = true;
	pthread_mutex_unlock(&al->lock);
	if (r > 0)
		log_info("activity log: a filesystem mounted in the backing directory is synced at"
			 " checkpoints from now on");
	else if (first_failure) /* once: it is said for every image on it */
		log_warn("activity log: cannot watch a filesystem mounted in the backing directory"
			 " (%s): images on it are synced at every fsync", strerror(-r));
}

/*
 * A syncfs failed with err.  syncfs reports any file's write-back error on
 * that filesystem (the journal's own, when it lives there, which the
 * journal handles itself): the images' own descriptors say whether one of
 * them lost pages.  If so, latch (checkpoints run one at a time).
 */
static void syncfs_failed(struct actlog *al, int err)
{
	int lost = al->cfg.writeback_check ? al->cfg.writeback_check(al->cfg.ctx) : err;

	if (lost == 0) {
		log_warn("activity log: syncfs of the backing filesystem failed (%s), but no image"
			 " lost a write (another file's error, the journal's say); the next"
			 " checkpoint tries again", strerror(-err));
		return;
	}
	atomic_store(&al->writeback_lost, true);
	log_error("the backing filesystem failed to write back an image (%s): writes since LSN %"
		  PRIu64 " may be missing from the backing files.  The journal keeps them, fsyncs"
		  " fail from now on, and the next mount redoes them: check the disk, then unmount"
		  " and mount again", strerror(-lost), al->synced_lsn);
}

int actlog_checkpoint(struct actlog *al)
{
	uint64_t e, watermark;
	int r;

	pthread_mutex_lock(&al->lock);
	if (al->checkpointing) {
		/* One is running: its end is as good as ours for a caller that
		 * looks for a victim again afterwards. */
		while (al->checkpointing)
			pthread_cond_wait(&al->cond, &al->lock);
		pthread_mutex_unlock(&al->lock);
		return 0;
	}
	al->checkpointing = true;
	e = ++al->epoch;
	for (unsigned i = 0; i < al->n; i++)
		al->s[i].candidate = al->s[i].state == S_DURABLE && atomic_load(&al->s[i].refs) == 0;
	pthread_mutex_unlock(&al->lock);

	/* Taken before the sync: every record up to it had its backing
	 * syscall before syncfs began, so syncfs makes it durable. */
	watermark = al->cfg.checkpoint_begins ? al->cfg.checkpoint_begins(al->cfg.ctx) : 0;
	r = al->cfg.journal_sync(al->cfg.ctx);
	if (r == 0) {
		r = sync_backing(al);
		if (r < 0 && al->begun && !al->writeback_lost)
			syncfs_failed(al, r);
	}
	/* Only checkpoints write the header once begun (one at a time).  After
	 * a write-back error the checkpoints go on (extents cool, writers are
	 * not held up), but the synced LSN stays where it was, and the header
	 * says "redo" as soon as it can be written. */
	if (al->writeback_lost) {
		int h = al->redo_noted ? 0 : write_header(al, false);

		if (h < 0)
			log_error("activity log: cannot note the redo in its header yet: %s",
				  strerror(-h));
		al->redo_noted = h == 0;
	} else if (r == 0 && al->begun && watermark > al->synced_lsn) {
		uint64_t before = al->synced_lsn;

		al->synced_lsn = watermark;
		r = write_header(al, false);
		if (r < 0)
			al->synced_lsn = before;
	}
	if (r == 0 && al->cfg.synced)
		al->cfg.synced(al->cfg.ctx, al->synced_lsn);

	pthread_mutex_lock(&al->lock);
	if (r == 0) {
		for (unsigned i = 0; i < al->n; i++)
			if (al->s[i].candidate && al->s[i].touched < e)
				al->s[i].cold = true;
		al->checkpoints++;
	} else {
		/* Nothing is made cold this time: a writer that needs a slot gets
		 * the error, the next checkpoint tries again. */
		if (!al->failing)
			log_error("activity log: checkpoint: %s; writes to new extents fail with it"
				  " until it clears", strerror(-r));
		al->failing = true;
	}
	al->checkpointing = false;
	pthread_cond_broadcast(&al->cond);
	pthread_mutex_unlock(&al->lock);
	return r;
}

static bool short_of_slots_locked(struct actlog *al)
{
	unsigned avail = 0;

	for (unsigned i = 0; i < al->n; i++)
		if (al->s[i].state == S_EMPTY ||
		    (al->s[i].state == S_DURABLE && al->s[i].cold && atomic_load(&al->s[i].refs) == 0))
			avail++;
	return avail < al->n / 4;
}

static void *cooler_main(void *arg)
{
	struct actlog *al = arg;

	pthread_mutex_lock(&al->lock);
	while (!al->stop) {
		struct timespec ts;
		bool due = false;

		if (!al->checkpointing && al->cfg.checkpoint_due) {
			pthread_mutex_unlock(&al->lock);
			due = al->cfg.checkpoint_due(al->cfg.ctx);
			pthread_mutex_lock(&al->lock);
		}
		if ((due || short_of_slots_locked(al)) && !al->checkpointing) {
			int r;

			pthread_mutex_unlock(&al->lock);
			r = actlog_checkpoint(al);
			pthread_mutex_lock(&al->lock);
			/* After a failure, a tick before the next try. */
			if (r == 0 && !short_of_slots_locked(al))
				continue;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += (long)COOL_TICK_NS;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&al->cool, &al->lock, &ts);
	}
	pthread_mutex_unlock(&al->lock);
	return NULL;
}

/* ---- touch and release ---- */

/* Holds one extent (image, extent) in the durable set.  Lock held. */
static int hold_one(struct actlog *al, uint32_t image, uint32_t extent, struct actlog_hold *h)
{
	for (;;) {
		int32_t i = extent == ACTLOG_WHOLE ? -1 : find(al, image, ACTLOG_WHOLE);
		int r;

		if (i < 0)
			i = find(al, image, extent);
		if (i >= 0) {
			struct slot *s = &al->s[i];

			atomic_fetch_add(&s->refs, 1);
			s->touched = al->epoch;
			s->cold = false;
			s->used = ++al->clock;
			h->slot[h->n++] = (uint32_t)i;
			return s->state == S_DURABLE ? 0 : commit_locked(al, i);
		}
		i = victim(al);
		if (i < 0) {
			/* Every slot is hot: make them durable, then look again. */
			al->stalls++;
			pthread_mutex_unlock(&al->lock);
			r = actlog_checkpoint(al);
			pthread_mutex_lock(&al->lock);
			if (r < 0)
				return r;
			continue;
		}
		assign(al, i, image, extent);
		atomic_store(&al->s[i].refs, 1);
		h->slot[h->n++] = (uint32_t)i;
		if (extent != ACTLOG_WHOLE) {
			for (uint32_t k = 1; k <= READ_AHEAD && extent + k < ACTLOG_WHOLE; k++) {
				int32_t v;

				if (find(al, image, extent + k) >= 0 || (v = victim(al)) < 0)
					break;
				assign(al, v, image, extent + k);
				al->s[v].cold = true; /* nothing written to it yet */
			}
		}
		if (short_of_slots_locked(al))
			pthread_cond_signal(&al->cool);
		return commit_locked(al, i);
	}
}

int actlog_touch(struct actlog *al, uint32_t image, uint64_t off, uint64_t len, bool whole,
		 struct actlog_hold *h)
{
	uint64_t first, last;
	int r = 0;

	h->n = 0;
	if (!al || !al->begun)
		return 0; /* recovery: it ends with a checkpoint */
	first = off >> al->cfg.extent_shift;
	last = (off + (len ? len - 1 : 0)) >> al->cfg.extent_shift;
	if (last - first + 1 > ACTLOG_HOLD_MAX || last >= ACTLOG_WHOLE)
		whole = true;
	pthread_mutex_lock(&al->lock);
	if (whole) {
		r = hold_one(al, image, ACTLOG_WHOLE, h);
	} else {
		for (uint64_t x = first; x <= last && r == 0; x++)
			r = hold_one(al, image, (uint32_t)x, h);
	}
	pthread_mutex_unlock(&al->lock);
	if (r < 0)
		actlog_release(al, h);
	return r;
}

void actlog_release(struct actlog *al, struct actlog_hold *h)
{
	for (unsigned k = 0; k < h->n; k++)
		atomic_fetch_sub(&al->s[h->slot[k]].refs, 1);
	h->n = 0;
}

/* ---- open, begin, close ---- */

/* All len bytes at off, or -errno (-EIO if the file is shorter). */
static int read_full(int fd, void *buf, size_t len, uint64_t off)
{
	ssize_t n = fileio_pread_full(NULL, fd, buf, len, off);

	return n < 0 ? (int)n : (size_t)n < len ? -EIO : 0;
}

void actlog_found_free(struct actlog_found *found)
{
	free(found->v);
	found->v = NULL;
	found->n = 0;
}

/* Reads the last mount's log into found; keeps its fd in al->fd. */
static int read_previous(struct actlog *al, struct actlog_found *found)
{
	uint8_t h[ACTLOG_HEADER_BYTES];
	struct actlog_header hd;
	unsigned shift, slots;
	struct stat st;
	uint8_t *area;
	size_t bytes;
	int r;

	al->fd = openat(al->cfg.dirfd, ACTLOG_FILE, O_RDWR | O_CLOEXEC);
	if (al->fd < 0)
		return errno == ENOENT ? 0 : -errno;
	found->present = true;
	if (fstat(al->fd, &st) < 0)
		return -errno;
	r = read_full(al->fd, h, sizeof h, 0);
	if (r == 0)
		r = actlog_header_decode(h, &hd);
	if (r < 0) {
		/* Cannot be torn (one sector): someone else's file, or damage.
		 * Assume the worst of the previous mount, with our geometry, and
		 * redo the whole journal after it. */
		log_warn("activity log in the journal directory is unreadable; treating the last"
			 " mount as ended by a power loss");
		shift = al->cfg.extent_shift;
		slots = al->n;
		found->synced_lsn = 0;
	} else {
		found->synced_lsn = hd.synced_lsn;
		if (memcmp(hd.group, al->cfg.group, 16) != 0) {
			log_error("the activity log in the journal directory belongs to another"
				  " consistency group");
			return -EINVAL;
		}
		shift = hd.extent_shift;
		slots = hd.slots;
		found->clean = hd.clean;
		found->redo = hd.redo;
		found->same_boot = al->boot_known && memcmp(hd.boot, al->boot, BOOT_ID_LEN) == 0;
		al->generation = hd.generation;
		if (shift < 12 || shift > 40 || slots == 0 || slots > (1u << 24)) {
			log_warn("activity log geometry is implausible; treating the last mount as"
				 " ended by a power loss");
			shift = al->cfg.extent_shift;
			slots = al->n;
			found->clean = found->same_boot = false;
			found->synced_lsn = 0;
		}
	}
	found->extent_shift = shift;
	bytes = area_bytes(slots);
	if ((uint64_t)st.st_size < PAGE + bytes)
		bytes = st.st_size > PAGE ? (size_t)st.st_size - PAGE : 0;
	area = calloc(1, bytes + 1);
	found->v = calloc(bytes / SLOT_BYTES + 1, sizeof *found->v);
	if (!area || !found->v) {
		free(area);
		return -ENOMEM;
	}
	r = bytes ? read_full(al->fd, area, bytes, PAGE) : 0;
	for (size_t i = 0; r == 0 && i < bytes / SLOT_BYTES && i < slots; i++) {
		uint32_t image = get32(area + i * SLOT_BYTES);

		if (image)
			found->v[found->n++] = (struct actlog_extent){
				image, get32(area + i * SLOT_BYTES + 4) };
	}
	free(area);
	return r;
}

int actlog_open(const struct actlog_config *cfg, struct actlog **out, struct actlog_found *found)
{
	struct actlog *al = calloc(1, sizeof *al);
	struct stat st;
	int r;

	memset(found, 0, sizeof *found);
	if (!al)
		return -ENOMEM;
	al->cfg = *cfg;
	al->fd = al->syncfd = -1;
	al->n = cfg->slots;
	for (al->nbuckets = 64; al->nbuckets < 2 * al->n; al->nbuckets *= 2)
		;
	al->area_bytes = area_bytes(al->n);
	al->s = calloc(al->n, sizeof *al->s);
	al->bucket = malloc(al->nbuckets * sizeof *al->bucket);
	al->area = calloc(1, al->area_bytes);
	al->snap = malloc(al->area_bytes);
	al->dirty = calloc(al->area_bytes / PAGE, 1);
	al->snap_dirty = calloc(al->area_bytes / PAGE, 1);
	pthread_mutex_init(&al->lock, NULL);
	pthread_cond_init(&al->cond, NULL);
	pthread_cond_init(&al->cool, NULL);
	if (!al->s || !al->bucket || !al->area || !al->snap || !al->dirty || !al->snap_dirty) {
		actlog_close(al, false);
		return -ENOMEM;
	}
	for (unsigned b = 0; b < al->nbuckets; b++)
		al->bucket[b] = -1;
	for (unsigned i = 0; i < al->n; i++)
		al->s[i].next = -1;
	r = aimfs_io.boot_id_fn(al->boot);
	al->boot_known = r == 0;
	if (r < 0)
		log_warn("cannot read this boot's id (%s): a crash will be treated as a power loss",
			 strerror(-r));
	al->syncfd = openat(cfg->backing_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (al->syncfd < 0 || fstat(al->syncfd, &st) < 0) {
		r = -errno;
		log_error("activity log: cannot open the backing directory: %m");
		actlog_close(al, false);
		return r;
	}
	al->sync_dev = st.st_dev;
	r = read_previous(al, found);
	if (r < 0) {
		if (r != -EINVAL)
			log_error("activity log: cannot read it: %s", strerror(-r));
		actlog_found_free(found);
		actlog_close(al, false);
		return r;
	}
	*out = al;
	return 0;
}

/* A new log file: header and empty slots, fsynced, then named. */
static int create_file(struct actlog *al)
{
	char tmp[] = ACTLOG_FILE ".new";
	int fd, r = 0;

	unlinkat(al->cfg.dirfd, tmp, 0);
	fd = openat(al->cfg.dirfd, tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	if (al->fd >= 0)
		close(al->fd);
	al->fd = fd;
	memset(al->area, 0, al->area_bytes);
	r = write_full(fd, al->area, al->area_bytes, PAGE);
	if (r == 0)
		r = write_header(al, false); /* fdatasyncs */
	if (r == 0 && aimfs_io.fsync_fn(fd) < 0)
		r = -errno;
	if (r == 0 && renameat(al->cfg.dirfd, tmp, al->cfg.dirfd, ACTLOG_FILE) < 0)
		r = -errno;
	if (r == 0 && aimfs_io.fsync_fn(al->cfg.dirfd) < 0)
		r = -errno;
	return r;
}

int actlog_begin(struct actlog *al)
{
	uint64_t watermark = al->cfg.checkpoint_begins ? al->cfg.checkpoint_begins(al->cfg.ctx) : 0;
	struct stat st;
	bool keep;
	int r;

	/* Whatever recovery journaled and redid becomes durable first. */
	r = al->cfg.journal_sync(al->cfg.ctx);
	if (r == 0)
		r = sync_backing(al);
	if (r < 0) {
		log_error("activity log: making recovery durable: %s", strerror(-r));
		return r;
	}
	al->synced_lsn = watermark;
	keep = al->fd >= 0 && fstat(al->fd, &st) == 0 &&
	       (uint64_t)st.st_size == PAGE + al->area_bytes;
	if (keep) {
		uint8_t h[ACTLOG_HEADER_BYTES];
		struct actlog_header hd;

		keep = read_full(al->fd, h, sizeof h, 0) == 0 && actlog_header_decode(h, &hd) == 0 &&
		       hd.extent_shift == al->cfg.extent_shift && hd.slots == al->n &&
		       read_full(al->fd, al->area, al->area_bytes, PAGE) == 0;
	}
	if (keep) {
		/* The last mount's extents stay in the set, cold (everything is
		 * durable now): a sequential writer finds them again. */
		for (unsigned i = 0; i < al->n; i++) {
			uint32_t image = get32(al->area + (size_t)i * SLOT_BYTES);

			if (!image)
				continue;
			al->s[i].image = image;
			al->s[i].extent = get32(al->area + (size_t)i * SLOT_BYTES + 4);
			if (find(al, al->s[i].image, al->s[i].extent) >= 0) {
				/* a duplicate (never written so): free it */
				al->s[i].image = 0;
				put32(al->area + (size_t)i * SLOT_BYTES, 0);
				al->dirty[i / SLOTS_PER_PAGE] = 1;
				continue;
			}
			al->s[i].state = S_DURABLE;
			al->s[i].cold = true;
			rehash(al, (int32_t)i);
		}
		r = write_header(al, false);
	} else {
		if (al->fd >= 0)
			log_info("activity log: new geometry (%u extents of %u KiB)", al->n,
				 (1u << al->cfg.extent_shift) >> 10);
		r = create_file(al);
	}
	if (r < 0) {
		log_error("activity log: cannot write it: %s", strerror(-r));
		return r;
	}
	al->begun = true;
	if (al->cfg.synced)
		al->cfg.synced(al->cfg.ctx, al->synced_lsn);
	return 0;
}

int actlog_start(struct actlog *al)
{
	int r;

	if (!al || !al->begun || al->cooler_running)
		return 0;
	al->stop = false;
	r = thread_start(&al->cooler, cooler_main, al);
	if (r)
		return -r;
	al->cooler_running = true;
	return 0;
}

void actlog_stop(struct actlog *al)
{
	if (!al || !al->cooler_running)
		return;
	pthread_mutex_lock(&al->lock);
	al->stop = true;
	pthread_cond_broadcast(&al->cool);
	pthread_mutex_unlock(&al->lock);
	pthread_join(al->cooler, NULL);
	al->cooler_running = false;
}

bool actlog_writeback_lost(struct actlog *al)
{
	return al && atomic_load(&al->writeback_lost);
}

void actlog_stats(struct actlog *al, struct actlog_stats *st)
{
	memset(st, 0, sizeof *st);
	if (!al)
		return;
	pthread_mutex_lock(&al->lock);
	st->slots = al->n;
	st->extent_shift = al->cfg.extent_shift;
	for (unsigned i = 0; i < al->n; i++) {
		if (al->s[i].state == S_EMPTY)
			continue;
		st->resident++;
		st->hot += !al->s[i].cold;
	}
	st->writeback_lost = atomic_load(&al->writeback_lost);
	st->transactions = al->transactions;
	st->checkpoints = al->checkpoints;
	st->waits = al->waits;
	st->stalls = al->stalls;
	pthread_mutex_unlock(&al->lock);
}

int actlog_close(struct actlog *al, bool clean)
{
	int r = 0;

	if (!al)
		return 0;
	actlog_stop(al);
	if (clean && al->begun) {
		struct actlog_stats st;

		r = actlog_checkpoint(al);
		if (r == 0)
			r = write_header(al, true);
		actlog_stats(al, &st);
		log_info("activity log: %u of %u extents in it; %" PRIu64 " log writes (%" PRIu64
			 " joined by another writer), %" PRIu64 " checkpoints since the mount", st.resident,
			 st.slots, st.transactions, st.waits, st.checkpoints);
		if (r < 0)
			log_error("activity log: cannot mark it clean: %s; the next mount after a"
				  " reboot will compare its extents with every destination",
				  strerror(-r));
	}
	if (al->fd >= 0)
		close(al->fd);
	if (al->syncfd >= 0)
		close(al->syncfd);
	nested_fs_close(&al->nested);
	pthread_mutex_destroy(&al->lock);
	pthread_cond_destroy(&al->cond);
	pthread_cond_destroy(&al->cool);
	free(al->s);
	free(al->bucket);
	free(al->area);
	free(al->snap);
	free(al->dirty);
	free(al->snap_dirty);
	free(al);
	return r;
}
