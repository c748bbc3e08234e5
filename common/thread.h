/*
 * thread.h — starting helper threads that leave the process's stop signals
 * (SIGTERM, SIGINT, SIGHUP, SIGQUIT) to the main thread.
 *
 * The kernel hands a signal sent to a process to any thread that does not
 * block it, and prefers the main thread only while that one has no other
 * signal pending.  A daemon whose main thread waits for the stop signals
 * (aimfs's FUSE loop) must therefore start every other thread with them
 * blocked, or a stop can land on a thread whose wait it does not end.
 * Threads inherit the mask of the thread that starts them, so threads a
 * library starts from one of these (curl's resolver, a microhttpd
 * connection) block them too.
 */
#ifndef AIM_THREAD_H
#define AIM_THREAD_H

#include <pthread.h>
#include <signal.h>

/* pthread_create with the stop signals blocked in the new thread.
 * 0 or an errno, as pthread_create. */
int thread_start(pthread_t *tid, void *(*fn)(void *), void *arg);

/* Blocks the stop signals in the calling thread, saving its mask in *old:
 * around a library call that starts threads of its own. */
void thread_block_stop_signals(sigset_t *old);

/* Restores the mask thread_block_stop_signals saved. */
void thread_restore_signals(const sigset_t *old);

#endif
