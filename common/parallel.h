/*
 * parallel.h — one function over a few items at once, a thread each: for
 * work that waits on something slow and independent per item (a GET from
 * an object store answers after a round trip of its own).
 */
#ifndef AIM_PARALLEL_H
#define AIM_PARALLEL_H

#include <stddef.h>

/*
 * Calls fn on each of the n items of the array items (each size bytes),
 * each call on a thread of its own (started with the stop signals blocked,
 * thread.h), and returns when every call has.  An item whose thread cannot
 * be started is done on the caller's thread.  Meant for a handful of
 * items: n threads are started.
 */
void parallel_each(void (*fn)(void *item), void *items, size_t size, size_t n);

#endif
