/*
 * uring.h — FUSE over io_uring (Linux 6.14+): requests and replies pass
 * through buffers registered with the kernel, one io_uring per serving
 * thread, instead of read() and writev() on /dev/fuse.  A reply and the
 * wait for the next request are one system call (COMMIT_AND_FETCH), and
 * the kernel hands a request to a thread of the queue of the CPU that
 * issued it.
 *
 * The kernel switches a connection to the ring only when the filesystem
 * asks for it in its INIT reply (FUSE_OVER_IO_URING, which it offers only
 * while the fuse module's enable_uring parameter is on) and every possible
 * CPU's queue has a registered entry; until then, and for FORGET and
 * INTERRUPT always, requests still come through /dev/fuse (session.c's
 * workers).  Each ring thread owns one entry: like a /dev/fuse worker it
 * processes one request at a time.  Every queue has max_threads of them
 * from the start: the kernel hands a newly registered entry only requests
 * that arrive after it, not those already waiting for a busy queue, so a
 * queue that grew on demand would leave those waiting.
 *
 * Requests are laid out as session.c lays out what it reads (header, then
 * the operation's arguments, then a payload that starts page-aligned), and
 * processed by libfuse (fuse_session_process_buf) like any other; a reply
 * libfuse writes for a ring request is copied into the ring entry by
 * uring_take_reply, called from session.c's writev hook.
 *
 * Thread safety: uring_start and uring_stop from one thread (session.c);
 * uring_take_reply from the thread that sends the reply.
 */
#ifndef AIM_URING_H
#define AIM_URING_H

#include "fs.h" /* FUSE_USE_VERSION, fuse_lowlevel.h */
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/* The kernel offers FUSE over io_uring in INIT's flags (flags2 bit 9). */
#define URING_INIT_FLAG (1ULL << 41)

/* Starts the ring threads of every possible CPU on se's /dev/fuse descriptor,
 * after the INIT reply that asked for the ring was written: max_threads
 * threads per queue.  0, or -errno after logging why (the
 * kernel then keeps using /dev/fuse, since the ring never became ready). */
int uring_start(struct fuse_session *se, unsigned max_threads);

/* Ends every ring thread and releases the rings; the session has ended
 * (session_loop calls it while its wake signal is installed: see
 * session_join_thread).  Does nothing if uring_start was not called. */
void uring_stop(void);

/* If this thread is processing a ring request and iov[0] is the reply's
 * fuse_out_header for it, copies the reply into the ring entry (it is sent
 * when processing ends) and returns true with *sent set to the reply's
 * length (or -errno if it does not fit).  false: not a ring reply. */
bool uring_take_reply(const struct iovec *iov, int count, ssize_t *sent);

/* For /status: whether the ring serves requests, how many it has served,
 * and its threads. */
struct uring_stats {
	bool active;
	unsigned threads;
	uint64_t requests;
};
void uring_get_stats(struct uring_stats *st);

/* Where this thread can build a reply's payload of size bytes that
 * uring_take_reply then need not copy: the ring entry's payload buffer
 * (page-aligned) while it processes a ring request; otherwise NULL. */
void *uring_reply_buffer(size_t size);

#endif
