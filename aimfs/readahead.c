/*
 * readahead.c — two buffers per handle, a small state machine per buffer
 * (see readahead.h), and one io_uring for the reads ahead.  A request
 * reserves the next range (a slot RA_FILLING) and queues its read before
 * its reply leaves, so that the next READ, which can arrive as soon as the
 * reply does, waits for that read instead of reading the range again.  The
 * ring, not a thread, does the read: on this kind of VM a hand-off between
 * threads costs about as much as the overlap gains (a first version with
 * read-ahead threads measured 0.80 of no read-ahead in fs-bench).
 */
#include "readahead.h"
#include "log.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RA_ALIGN 4096 /* O_DIRECT: the buffer, offset and length */
#define RING_ENTRIES 64   /* more than READAHEAD_BUFFERS reads in flight */

static unsigned buffers_out; /* (atomic) buffers held by all handles */
static struct readahead_stats stats; /* (atomic) */

/*
 * One ring for the whole process, and one reaper at a time: a thread that
 * needs a read done becomes the reaper if there is none (`reaping`) and
 * completes whatever the ring has done, its own or another handle's, then
 * wakes the others (`reaped`); else it waits for that.  The reaper waits in
 * the kernel without reap_lock, so a read stalled on one image holds up no
 * other.  Lock order: a handle's lock, then submit_lock; reap_lock, then a
 * handle's lock.
 */
static struct io_uring ring;
static pthread_mutex_t submit_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t reap_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t reaped = PTHREAD_COND_INITIALIZER;
static bool reaping; /* (reap_lock) */
static pthread_once_t ring_once = PTHREAD_ONCE_INIT;
static bool ring_up;

void readahead_stats(struct readahead_stats *st)
{
	st->read = __atomic_load_n(&stats.read, __ATOMIC_RELAXED);
	st->used = __atomic_load_n(&stats.used, __ATOMIC_RELAXED);
	st->changed = __atomic_load_n(&stats.changed, __ATOMIC_RELAXED);
}

static void start_ring(void)
{
	int r = io_uring_queue_init(RING_ENTRIES, &ring, 0);

	if (r < 0)
		log_warn("read-ahead: io_uring: %s: O_DIRECT files are not read ahead", strerror(-r));
	__atomic_store_n(&ring_up, r == 0, __ATOMIC_RELEASE);
}

/* A read ahead has finished with res (bytes, or -errno). */
static void complete(struct readahead_slot *s, int res)
{
	struct readahead *ra = s->owner;

	pthread_mutex_lock(&ra->lock);
	s->got = res > 0 ? (size_t)res : 0; /* a short direct read is the kernel's answer */
	s->err = res < 0 ? -res : 0;
	s->state = RA_FULL;
	if (res >= 0)
		__atomic_add_fetch(&stats.read, 1, __ATOMIC_RELAXED);
	pthread_cond_broadcast(&ra->changed);
	pthread_mutex_unlock(&ra->lock);
}

/* Asks the ring for s's read; false if it could not be queued.  Once
 * queued it is submitted now or, if io_uring_enter failed, by a later
 * flush (reap_batch): it cannot be taken back. */
static bool submit(struct readahead *ra, struct readahead_slot *s)
{
	struct io_uring_sqe *sqe;

	pthread_mutex_lock(&submit_lock);
	sqe = io_uring_get_sqe(&ring);
	if (sqe) {
		io_uring_prep_read(sqe, ra->fd, s->buf, (unsigned)s->want, s->off);
		io_uring_sqe_set_data(sqe, s);
		io_uring_submit(&ring);
	}
	pthread_mutex_unlock(&submit_lock);
	return sqe != NULL;
}

/* Submits what a failed io_uring_enter left queued (no system call when
 * nothing is); true if some is still queued. */
static bool flush(void)
{
	bool left;

	pthread_mutex_lock(&submit_lock);
	io_uring_submit(&ring);
	left = io_uring_sq_ready(&ring) > 0;
	pthread_mutex_unlock(&submit_lock);
	return left;
}

/* The reaper: completes what the ring has done, having waited for one
 * completion first if wait. */
static void reap_batch(bool wait)
{
	struct io_uring_cqe *cqe;

	if (wait && flush()) {
		usleep(1000); /* the kernel took no read just now: try again soon */
	} else if (wait) {
		int r = io_uring_wait_cqe(&ring, &cqe);

		if (r < 0 && r != -EINTR && r != -EAGAIN) {
			log_error("read-ahead: waiting for a read: %s", strerror(-r));
			usleep(1000);
		}
	}
	while (io_uring_peek_cqe(&ring, &cqe) == 0) {
		struct readahead_slot *s = io_uring_cqe_get_data(cqe);
		int res = cqe->res;

		io_uring_cqe_seen(&ring, cqe);
		complete(s, res);
	}
}

/* With reap_lock held and no reaper: one batch as the reaper, the lock
 * dropped meanwhile, then wakes those who waited for it. */
static void reap_as_the_reaper(bool wait)
{
	reaping = true;
	pthread_mutex_unlock(&reap_lock);
	reap_batch(wait);
	pthread_mutex_lock(&reap_lock);
	reaping = false;
	pthread_cond_broadcast(&reaped);
}

static bool filling(struct readahead *ra, struct readahead_slot *s)
{
	bool f;

	pthread_mutex_lock(&ra->lock);
	f = s->state == RA_FILLING;
	pthread_mutex_unlock(&ra->lock);
	return f;
}

/* Returns once s of ra is no longer being filled.  Not holding ra's lock. */
static void reap_until(struct readahead *ra, struct readahead_slot *s)
{
	pthread_mutex_lock(&reap_lock);
	while (filling(ra, s)) {
		if (reaping) {
			pthread_cond_wait(&reaped, &reap_lock);
			continue;
		}
		reap_as_the_reaper(true);
	}
	pthread_mutex_unlock(&reap_lock);
}

/* Completes the reads already done, if no one is reaping.  Not holding
 * any handle's lock. */
static void reap_ready(void)
{
	if (!__atomic_load_n(&ring_up, __ATOMIC_ACQUIRE) || pthread_mutex_trylock(&reap_lock))
		return;
	if (!reaping)
		reap_as_the_reaper(false);
	pthread_mutex_unlock(&reap_lock);
}

void readahead_init(struct readahead *ra, int fd)
{
	pthread_mutex_init(&ra->lock, NULL);
	pthread_cond_init(&ra->changed, NULL);
	for (int i = 0; i < 2; i++)
		ra->slot[i] = (struct readahead_slot){ .state = RA_EMPTY, .owner = ra };
	ra->fd = fd;
	ra->next_off = UINT64_MAX; /* the first read is not "sequential" */
	ra->reading = 0;
}

static void drop_buffer(struct readahead_slot *s)
{
	if (!s->buf)
		return;
	free(s->buf);
	s->buf = NULL;
	s->cap = 0;
	__atomic_sub_fetch(&buffers_out, 1, __ATOMIC_RELAXED);
}

/* A buffer of at least size bytes for s, within the budget; false if none. */
static bool have_buffer(struct readahead_slot *s, size_t size)
{
	void *p;

	if (s->cap >= size)
		return true;
	if (!s->buf && __atomic_add_fetch(&buffers_out, 1, __ATOMIC_RELAXED) > READAHEAD_BUFFERS) {
		__atomic_sub_fetch(&buffers_out, 1, __ATOMIC_RELAXED);
		return false;
	}
	if (posix_memalign(&p, RA_ALIGN, size)) {
		if (!s->buf)
			__atomic_sub_fetch(&buffers_out, 1, __ATOMIC_RELAXED);
		return false;
	}
	free(s->buf);
	s->buf = p;
	s->cap = size;
	return true;
}

void readahead_destroy(struct readahead *ra)
{
	pthread_mutex_lock(&ra->lock);
	for (;;) {
		struct readahead_slot *filling = NULL;
		bool sending = false;

		for (int i = 0; i < 2; i++) {
			if (ra->slot[i].state == RA_FILLING)
				filling = &ra->slot[i];
			sending |= ra->slot[i].state == RA_SENDING;
		}
		if (filling) {
			pthread_mutex_unlock(&ra->lock);
			reap_until(ra, filling);
			pthread_mutex_lock(&ra->lock);
		} else if (sending) {
			pthread_cond_wait(&ra->changed, &ra->lock);
		} else {
			break;
		}
	}
	for (int i = 0; i < 2; i++)
		drop_buffer(&ra->slot[i]);
	pthread_mutex_unlock(&ra->lock);
	pthread_mutex_destroy(&ra->lock);
	pthread_cond_destroy(&ra->changed);
}

/* The slot holding or reading [off, ...), or NULL. */
static struct readahead_slot *slot_at(struct readahead *ra, uint64_t off)
{
	for (int i = 0; i < 2; i++) {
		struct readahead_slot *s = &ra->slot[i];

		if ((s->state == RA_FILLING || s->state == RA_FULL) && s->off == off)
			return s;
	}
	return NULL;
}

/* Reserves the range after [off, off + size) and asks the ring for it, if a
 * slot and a buffer are free and no change is in progress. */
static void plan_fill(struct readahead *ra, struct rangelock *rl, uint64_t off, size_t size)
{
	struct readahead_slot *s = NULL;
	uint64_t taken;
	bool quiet;

	for (int i = 0; i < 2; i++) {
		if (ra->slot[i].state == RA_FILLING)
			return; /* one at a time */
		if (ra->slot[i].state == RA_EMPTY && !s)
			s = &ra->slot[i];
	}
	pthread_once(&ring_once, start_ring);
	if (!s || !ring_up || !have_buffer(s, size))
		return;
	/* A change in progress, or any begun from now on, makes what the
	 * read gets unusable. */
	taken = rangelock_taken(rl, &quiet);
	if (!quiet)
		return;
	s->state = RA_FILLING;
	s->off = off + size;
	s->want = size;
	s->taken = taken;
	if (!submit(ra, s))
		s->state = RA_EMPTY;
}

const void *readahead_begin(struct readahead *ra, struct rangelock *rl, uint64_t off,
			    size_t size, bool may_fill, size_t *len, struct readahead_turn *turn)
{
	struct readahead_slot *s;
	const void *data = NULL;
	bool sequential;

	turn->sent = -1;
	reap_ready();
	pthread_mutex_lock(&ra->lock);
	sequential = off == ra->next_off;
	ra->next_off = off + size;
	ra->reading++;
	/* The range wanted is being read ahead: wait for it. */
	while ((s = slot_at(ra, off)) && s->state == RA_FILLING) {
		pthread_mutex_unlock(&ra->lock);
		reap_until(ra, s);
		pthread_mutex_lock(&ra->lock);
	}
	if (s) {
		if (s->want == size && !s->err && rangelock_taken(rl, NULL) == s->taken) {
			s->state = RA_SENDING;
			turn->sent = (int)(s - ra->slot);
			*len = s->got;
			data = s->buf;
			__atomic_add_fetch(&stats.used, 1, __ATOMIC_RELAXED);
		} else {
			/* changed since, failed, or another size: the stream goes on */
			if (!s->err && s->want == size)
				__atomic_add_fetch(&stats.changed, 1, __ATOMIC_RELAXED);
			s->state = RA_EMPTY;
		}
	}
	/* The stream ended: what it read ahead, and its buffers, go. */
	for (int i = 0; i < 2; i++) {
		struct readahead_slot *o = &ra->slot[i];

		if (o->state == RA_FULL && o->off != off)
			o->state = RA_EMPTY;
		if (o->state == RA_EMPTY && (!sequential || !may_fill))
			drop_buffer(o);
	}
	/* Only a stream read one request at a time: with several in flight
	 * the kernel already overlaps them, and reading ahead would compete. */
	if (may_fill && sequential && ra->reading == 1 && size > 0 && size <= READAHEAD_MAX &&
	    ((off | size) & (RA_ALIGN - 1)) == 0 && off <= UINT64_MAX - 2 * (uint64_t)size)
		plan_fill(ra, rl, off, size);
	/* Only its reply is left: the next READ may come before it is sent,
	 * and is then no less alone. */
	if (data)
		ra->reading--;
	pthread_mutex_unlock(&ra->lock);
	return data;
}

void readahead_end(struct readahead *ra)
{
	pthread_mutex_lock(&ra->lock);
	ra->reading--;
	pthread_mutex_unlock(&ra->lock);
}

void readahead_sent(struct readahead *ra, const struct readahead_turn *turn)
{
	pthread_mutex_lock(&ra->lock);
	ra->slot[turn->sent].state = RA_EMPTY;
	pthread_cond_broadcast(&ra->changed);
	pthread_mutex_unlock(&ra->lock);
}
