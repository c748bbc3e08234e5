/*
 * rangelock.h — byte-range locks on one image, so that writes whose ranges
 * overlap reach the journal and the backing file in the same order
 * (invariant 2) while writes to disjoint ranges proceed in parallel.
 *
 * A holder takes [off, off + len) before it is given its LSN and releases it
 * after its backing syscall: any later overlapping writer waits, so it gets a
 * larger LSN and writes later.  Waiting is FIFO-fair enough for block I/O:
 * a waiter retries whenever any range is released.  Thread-safe.
 */
#ifndef AIM_RANGELOCK_H
#define AIM_RANGELOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define RANGE_END UINT64_MAX /* "to the end of the file", for truncate */

struct range_held {
	uint64_t start, end; /* [start, end) */
	struct range_held *next;
};

struct rangelock {
	pthread_mutex_t lock;
	pthread_cond_t released;
	struct range_held *held; /* short list: at most one per writer thread */
	uint64_t taken;          /* ranges acquired so far (lock) */
};

void rangelock_init(struct rangelock *rl);
void rangelock_destroy(struct rangelock *rl);
/* Blocks until [off, off+len) overlaps no held range, then holds it.  The
 * caller provides the storage (usually on its stack) and passes it back to
 * rangelock_release.  len 0 locks nothing but still orders (returns at once). */
void rangelock_acquire(struct rangelock *rl, struct range_held *h, uint64_t off, uint64_t len);
void rangelock_release(struct rangelock *rl, struct range_held *h);
/* How many ranges were acquired so far; *quiet: none is held now.  Every
 * change to the file holds a range across its backing syscall, so a read
 * of the backing file begun while it was quiet is still what the file
 * holds as long as the count has not moved (readahead.c). */
uint64_t rangelock_taken(struct rangelock *rl, bool *quiet);

#endif
