/* thread.c — see thread.h */
#include "thread.h"

void thread_block_stop_signals(sigset_t *old)
{
	sigset_t block;

	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGHUP);
	sigaddset(&block, SIGQUIT);
	pthread_sigmask(SIG_BLOCK, &block, old);
}

void thread_restore_signals(const sigset_t *old)
{
	pthread_sigmask(SIG_SETMASK, old, NULL);
}

int thread_start(pthread_t *tid, void *(*fn)(void *), void *arg)
{
	sigset_t old;
	int r;

	thread_block_stop_signals(&old);
	r = pthread_create(tid, NULL, fn, arg);
	thread_restore_signals(&old);
	return r;
}
