/*
 * readahead.h — reading ahead for a handle read sequentially with O_DIRECT,
 * one request at a time (a VM's disk at queue depth 1, qemu-img convert, a
 * backup).  Each such read is a FUSE round trip: the kernel sends READ,
 * aimfs reads the backing file and replies (the reply's copy into the
 * reader's pages is aimfs's thread's time), and only then does the reader
 * ask for the next range: the backing read and the reply take turns.  Here
 * a request that finds the stream sequential queues an asynchronous read
 * of the next range (io_uring) before it replies, so the two overlap, and
 * the next READ finds its data there (or waits for it to land).
 *
 * Coherent with every change: each one holds its range lock across its
 * backing syscall (rangelock.h), and the lock counts the ranges taken.
 * Data read ahead is used only if no range was held when its read was
 * asked for and none has been taken since; otherwise the read goes to the
 * file.
 *
 * Memory: two buffers of the request's size per handle while it is read
 * sequentially (one replied from, one filling), at most READAHEAD_BUFFERS
 * in all; a read elsewhere ends the stream and frees them, as does the
 * handle's release.
 *
 * Thread safety: every function may be called from any worker at once for
 * the same handle.
 */
#ifndef AIM_READAHEAD_H
#define AIM_READAHEAD_H

#include "rangelock.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define READAHEAD_BUFFERS 16
#define READAHEAD_MAX (4u << 20) /* larger requests are not read ahead */

enum readahead_state {
	RA_EMPTY,   /* nothing in buf */
	RA_FILLING, /* being read: [off, off + want) */
	RA_FULL,    /* holds [off, off + got), asked for while the count was `taken` */
	RA_SENDING, /* a reply is being sent from it */
};

struct readahead;

struct readahead_slot {
	struct readahead *owner;
	enum readahead_state state;
	void *buf;
	size_t cap;
	uint64_t off;
	size_t want, got;
	int err;        /* the read failed: the request reads itself */
	uint64_t taken; /* the range lock's count when the read was asked for */
};

struct readahead {
	pthread_mutex_t lock;
	pthread_cond_t changed;    /* a slot left RA_FILLING or RA_SENDING */
	struct readahead_slot slot[2];
	int fd;                    /* the handle's O_DIRECT descriptor */
	uint64_t next_off;         /* where the last read ended */
	unsigned reading;          /* requests of this handle being answered,
				    * but for replies from a slot being sent */
};

/* Which slot one request replies from (readahead_begin). */
struct readahead_turn {
	int sent; /* the slot's index, or -1: it read the file itself */
};

/* fd: the handle's descriptor, read only if the handle reads ahead. */
void readahead_init(struct readahead *ra, int fd);
/* Waits for a read ahead still in progress, then frees the buffers. */
void readahead_destroy(struct readahead *ra);

/*
 * A READ of [off, off + size) of the handle arrives; may_fill: read the next
 * range ahead if the stream is sequential.  Returns the data read ahead for
 * it (*len bytes: fewer at the end of the file), to be sent as the reply,
 * then readahead_sent; or NULL: read the file as usual, and call
 * readahead_end before replying (once the reply is sent the handle may be
 * released at any moment; its release waits for readahead_sent).
 */
const void *readahead_begin(struct readahead *ra, struct rangelock *rl, uint64_t off,
			    size_t size, bool may_fill, size_t *len, struct readahead_turn *turn);
void readahead_end(struct readahead *ra);
void readahead_sent(struct readahead *ra, const struct readahead_turn *turn);

/* Since the start, of every handle (/metrics): ranges read ahead, replies
 * sent from them, and those left unused because the file changed
 * meanwhile. */
struct readahead_stats {
	uint64_t read, used, changed;
};
void readahead_stats(struct readahead_stats *st);

#endif
