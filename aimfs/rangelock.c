/*
 * rangelock.c — one list, in arrival order, of every range held or wanted.
 * A request may proceed once no request before it in the list overlaps it,
 * so overlapping requests are served first come first served and a truncate
 * waiting for the whole file cannot be starved by a stream of small writes.
 * Writers to one file are few at a time (the kernel serialises most writes
 * to an inode already), so a list beats an interval tree here.
 */
#include "rangelock.h"

void rangelock_init(struct rangelock *rl)
{
	pthread_mutex_init(&rl->lock, NULL);
	pthread_cond_init(&rl->released, NULL);
	rl->held = NULL;
	rl->taken = 0;
}

void rangelock_destroy(struct rangelock *rl)
{
	pthread_mutex_destroy(&rl->lock);
	pthread_cond_destroy(&rl->released);
}

/* True if an entry queued before h overlaps it. */
static bool blocked(const struct rangelock *rl, const struct range_held *h)
{
	for (const struct range_held *e = rl->held; e != h; e = e->next)
		if (h->start < e->end && e->start < h->end)
			return true;
	return false;
}

void rangelock_acquire(struct rangelock *rl, struct range_held *h, uint64_t off, uint64_t len)
{
	h->start = off;
	h->end = (len == RANGE_END || off > UINT64_MAX - len) ? UINT64_MAX : off + len;
	if (h->end == h->start)
		h->end = h->start + 1; /* zero-length ops still take their place in line */
	struct range_held **tail;

	h->next = NULL;
	pthread_mutex_lock(&rl->lock);
	for (tail = &rl->held; *tail; tail = &(*tail)->next)
		;
	*tail = h;
	rl->taken++;
	while (blocked(rl, h))
		pthread_cond_wait(&rl->released, &rl->lock);
	pthread_mutex_unlock(&rl->lock);
}

void rangelock_release(struct rangelock *rl, struct range_held *h)
{
	struct range_held **pp;

	pthread_mutex_lock(&rl->lock);
	for (pp = &rl->held; *pp; pp = &(*pp)->next) {
		if (*pp == h) {
			*pp = h->next;
			break;
		}
	}
	pthread_cond_broadcast(&rl->released);
	pthread_mutex_unlock(&rl->lock);
}

uint64_t rangelock_taken(struct rangelock *rl, bool *quiet)
{
	uint64_t n;

	pthread_mutex_lock(&rl->lock);
	n = rl->taken;
	if (quiet)
		*quiet = rl->held == NULL;
	pthread_mutex_unlock(&rl->lock);
	return n;
}
