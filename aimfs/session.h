/*
 * session.h — aimfs's own loop around libfuse's session: worker threads
 * that read requests from /dev/fuse into buffers laid out for O_DIRECT
 * (a WRITE's payload lands 4096-aligned, so it goes to an O_DIRECT backing
 * file and into the journal without a staging copy), and a hook on the
 * replies for what libfuse 3.14 cannot ask of the kernel (see session.c).
 *
 * Everything here uses libfuse's public API (fuse_session_receive_buf,
 * fuse_session_process_buf, fuse_session_custom_io) and the kernel's
 * protocol as <linux/fuse.h> defines it.
 *
 * Thread safety: session_loop runs the workers; the other functions are
 * called from a worker, about the request it is processing.
 */
#ifndef AIM_SESSION_H
#define AIM_SESSION_H

#include "fs.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/* Installs the reply hook on se, which must be mounted and not yet have
 * read a request; io_uring: ask the kernel for FUSE over io_uring
 * (uring.h; session_loop only).  0, or -errno (libfuse said why). */
int session_hook(struct fuse_session *se, bool io_uring);

/* Serves se with up to max_threads workers (started as requests need
 * them, as fuse_session_loop_mt does) until it is unmounted or signalled.
 * Returns 0, or -errno after logging why. */
int session_loop(struct fuse_session *se, unsigned max_threads);

/* Ends the session from a stop signal's handler (async-signal-safe):
 * fuse_session_exit, and a wake-up for session_loop's wait. */
void session_exit_from_signal(struct fuse_session *se);

/* Joins a thread of the session's loop that the end of the session stops
 * (a worker, a ring thread), interrupting its blocking system call with a
 * signal until it notices.  Only while session_loop is ending. */
void session_join_thread(pthread_t tid);

/* Processes one request laid out in buf as a worker reads it (the header,
 * the arguments, a WRITE's payload page-aligned): uring.c's threads too. */
void session_dispatch(struct fuse_session *se, struct fuse_buf *buf);

/* A page-aligned buffer for the payload of this request's reply that the
 * reply need not copy (FUSE over io_uring's entry), or NULL. */
void *session_reply_buffer(size_t size);

/* The request being processed asks the filesystem to clear the file's
 * setuid and setgid bits as the kernel would have (FUSE_HANDLE_KILLPRIV_V2:
 * a WRITE, a truncating SETATTR or an O_TRUNC OPEN by a caller without
 * CAP_FSETID).  Only meaningful on a session_loop worker. */
bool session_kill_suidgid(void);

/* The reply to the OPEN or CREATE being processed (the next
 * fuse_reply_open or fuse_reply_create of this thread) lets the kernel
 * send O_DIRECT writes to the file in parallel (FOPEN_PARALLEL_DIRECT_WRITES,
 * which libfuse 3.14 cannot set): the caller orders overlapping ones. */
void session_parallel_direct_writes(void);

#endif
