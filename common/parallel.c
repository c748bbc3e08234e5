/*
 * parallel.c — see parallel.h.
 */
#include "parallel.h"
#include "thread.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

struct call {
	void (*fn)(void *item);
	void *item;
	pthread_t tid;
	bool started;
};

static void *run_call(void *arg)
{
	struct call *c = arg;

	c->fn(c->item);
	return NULL;
}

void parallel_each(void (*fn)(void *item), void *items, size_t size, size_t n)
{
	struct call *calls = n > 1 ? calloc(n, sizeof *calls) : NULL;

	if (!calls) { /* one item, or no memory for more: one after the other */
		for (size_t i = 0; i < n; i++)
			fn((char *)items + i * size);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		calls[i] = (struct call){ .fn = fn, .item = (char *)items + i * size };
		calls[i].started = thread_start(&calls[i].tid, run_call, &calls[i]) == 0;
	}
	for (size_t i = 0; i < n; i++)
		if (!calls[i].started)
			fn(calls[i].item);
	for (size_t i = 0; i < n; i++)
		if (calls[i].started)
			pthread_join(calls[i].tid, NULL);
	free(calls);
}
