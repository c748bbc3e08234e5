/*
 * session.c — aimfs's multi-threaded FUSE loop (session.h).
 *
 * Why not fuse_session_loop_mt: libfuse reads each request into a buffer of
 * its own, where a WRITE's payload follows the 80 bytes of fuse_in_header
 * and fuse_write_in, so it is never aligned, and an O_DIRECT backing file
 * refuses it: every large write was copied once more into an aligned
 * buffer.  Here each worker reads into a buffer that starts 80 bytes
 * before a page boundary, so the payload is page-aligned and goes as it is
 * to the backing file (and to the journal).  The loop is libfuse's own
 * (fuse_loop_mt.c, 3.14): a worker is started whenever every worker is busy,
 * up to max_threads, FORGETs do not count, and the main thread waits for
 * the session to end, then wakes the workers blocked in read() with
 * WAKE_SIGNAL (a handler that does nothing, without SA_RESTART: the read
 * fails with EINTR and the worker sees the session has ended).  Not
 * pthread_cancel as libfuse does: a cancelled thread's instrumented frames
 * stay poisoned under AddressSanitizer, which then trips on its own exit.
 *
 * The reply hook (fuse_session_custom_io) asks the kernel for what libfuse
 * 3.14 does not know about, in the bytes of the replies, as <linux/fuse.h>
 * defines them:
 *   - FUSE_HANDLE_KILLPRIV_V2 in INIT: the filesystem clears setuid/setgid
 *     bits itself when a request says so (fs.c, session_kill_suidgid), so
 *     the kernel marks inodes S_NOSEC and stops asking for the
 *     security.capability xattr before every write(), a round trip per
 *     buffered write without it (and per write() into the writeback cache);
 *   - FUSE_DIRECT_IO_ALLOW_MMAP in INIT: an O_DIRECT (FOPEN_DIRECT_IO)
 *     request first writes back the cached pages it covers and drops them
 *     after a write, so O_DIRECT and buffered I/O to one file stay coherent
 *     under the writeback cache, as on a local filesystem;
 *   - open flags (FOPEN_PARALLEL_DIRECT_WRITES) in OPEN and CREATE replies.
 * Each is added only if the kernel offered it in its INIT request.
 */
#include "session.h"
#include "log.h"
#include "thread.h"
#include "uring.h"

#include <errno.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef FUSE_DIRECT_IO_ALLOW_MMAP
#define FUSE_DIRECT_IO_ALLOW_MMAP (1ULL << 36)
#endif

#define PAGE 4096u
/* A WRITE request: its payload starts this far into the buffer. */
#define WRITE_HEADER (sizeof(struct fuse_in_header) + sizeof(struct fuse_write_in))
/* libfuse 3.14 reads up to se->bufsize bytes: at most FUSE_MAX_MAX_PAGES
 * (256) pages of payload plus FUSE_BUFFER_HEADER_SIZE (one page). */
#define RECV_MAX (257u * PAGE)
#define REGION (PAGE + RECV_MAX + PAGE)
/* Interrupts a worker's read() at the end (see the top of this file). */
#define WAKE_SIGNAL SIGUSR2

struct worker {
	pthread_t tid;
	struct loop *lp;
	uint8_t *region;        /* REGION bytes, page-aligned */
	struct worker *next;
};

struct loop {
	struct fuse_session *se;
	pthread_mutex_t lock;
	sem_t finish;            /* a worker ended */
	struct worker *workers;  /* (lock) */
	unsigned nworkers, navail, max;
	bool exit;               /* (lock) */
	int error;               /* -errno of a failed read, (lock) */
};

/* The raw request this thread is processing, and flags for its open reply. */
static __thread const struct fuse_in_header *cur;
static __thread uint32_t cur_open_flags;

/* FUSE over io_uring (uring.h): wanted by the options, asked for in the
 * INIT reply, and the session's thread limit for its queues. */
static struct {
	struct fuse_session *se;
	bool wanted, asked;
	unsigned max_threads;
} ring;

bool session_kill_suidgid(void)
{
	const void *arg = cur ? (const void *)(cur + 1) : NULL;

	if (!cur)
		return false;
	switch (cur->opcode) {
	case FUSE_WRITE:
		return ((const struct fuse_write_in *)arg)->write_flags & FUSE_WRITE_KILL_SUIDGID;
	case FUSE_SETATTR:
		return ((const struct fuse_setattr_in *)arg)->valid & FATTR_KILL_SUIDGID;
	case FUSE_OPEN:
		return ((const struct fuse_open_in *)arg)->open_flags & FUSE_OPEN_KILL_SUIDGID;
	case FUSE_CREATE:
		return ((const struct fuse_create_in *)arg)->open_flags & FUSE_OPEN_KILL_SUIDGID;
	default:
		return false;
	}
}

void session_parallel_direct_writes(void)
{
	cur_open_flags |= FOPEN_PARALLEL_DIRECT_WRITES;
}

/* INIT: what aimfs wants beyond libfuse's reply, if the kernel offers it. */
static void patch_init(struct iovec *iov)
{
	const struct fuse_init_in *in = (const void *)(cur + 1);
	struct fuse_init_out *out = iov->iov_base;
	uint64_t offered = in->flags, want;

	if (iov->iov_len < offsetof(struct fuse_init_out, unused))
		return;
	if ((in->flags & FUSE_INIT_EXT) && cur->len >= sizeof *cur + offsetof(struct fuse_init_in, unused))
		offered |= (uint64_t)in->flags2 << 32;
	want = offered & (FUSE_HANDLE_KILLPRIV_V2 | FUSE_DIRECT_IO_ALLOW_MMAP);
	if (ring.wanted) {
		if (offered & URING_INIT_FLAG) {
			want |= URING_INIT_FLAG;
			ring.asked = true;
		} else {
			log_warn("io_uring=on: the kernel does not offer FUSE over io_uring (Linux 6.14+"
				 " with /sys/module/fuse/parameters/enable_uring set to Y);"
				 " requests come through /dev/fuse");
		}
	}
	if ((want >> 32) && !(out->flags & FUSE_INIT_EXT))
		want &= 0xffffffffu; /* flags2 goes only with FUSE_INIT_EXT */
	out->flags |= (uint32_t)want;
	out->flags2 |= (uint32_t)(want >> 32);
}

static ssize_t hook_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	const struct fuse_out_header *out = iov[0].iov_base;
	bool init = false;
	ssize_t n;

	(void)userdata;
	if (cur && count >= 2 && iov[0].iov_len >= sizeof *out && out->error == 0 &&
	    out->unique == cur->unique) {
		if (cur->opcode == FUSE_INIT) {
			patch_init(&iov[1]);
			init = true;
		} else if ((cur->opcode == FUSE_OPEN || cur->opcode == FUSE_CREATE) && cur_open_flags &&
			   iov[1].iov_len >= sizeof(struct fuse_open_out)) {
			/* CREATE's reply is fuse_entry_out then fuse_open_out */
			struct fuse_open_out *o = (void *)((char *)iov[1].iov_base + iov[1].iov_len -
							   sizeof *o);

			o->open_flags |= cur_open_flags;
		}
	}
	if (uring_take_reply(iov, count, &n))
		return n;
	n = writev(fd, iov, count);
	/* the kernel has taken the INIT reply: the ring's entries may register */
	if (init && n > 0 && ring.asked && uring_start(ring.se, ring.max_threads) < 0)
		log_warn("io_uring=on: requests come through /dev/fuse");
	return n;
}

static ssize_t hook_read(int fd, void *buf, size_t len, void *userdata)
{
	(void)userdata;
	return read(fd, buf, len);
}

int session_hook(struct fuse_session *se, bool io_uring)
{
	static const struct fuse_custom_io io = { .writev = hook_writev, .read = hook_read };
	int r = fuse_session_custom_io(se, &io, fuse_session_fd(se));

	ring.se = se;
	ring.wanted = io_uring;

	if (r < 0)
		log_error("cannot hook the FUSE session's replies: %s", strerror(-r));
	return r;
}

void *session_reply_buffer(size_t size)
{
	return uring_reply_buffer(size);
}

void session_dispatch(struct fuse_session *se, struct fuse_buf *buf)
{
	cur = buf->mem;
	cur_open_flags = 0;
	fuse_session_process_buf(se, buf);
	cur = NULL;
}

static int start_worker(struct loop *lp);

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct loop *lp = w->lp;
	struct fuse_session *se = lp->se;

	while (!fuse_session_exited(se)) {
		struct fuse_buf buf = { .mem = w->region + PAGE - WRITE_HEADER };
		const struct fuse_in_header *in = buf.mem;
		bool forget;
		int r;

		r = fuse_session_receive_buf(se, &buf);
		if (r == -EINTR || r == -EAGAIN)
			continue;
		if (r <= 0) {
			if (r < 0) {
				pthread_mutex_lock(&lp->lock);
				lp->error = r;
				pthread_mutex_unlock(&lp->lock);
				fuse_session_exit(se);
			}
			break;
		}
		/* so that a burst of FORGETs does not start every worker */
		forget = in->opcode == FUSE_FORGET || in->opcode == FUSE_BATCH_FORGET;
		pthread_mutex_lock(&lp->lock);
		if (lp->exit) {
			pthread_mutex_unlock(&lp->lock);
			return NULL;
		}
		if (!forget)
			lp->navail--;
		if (lp->navail == 0 && lp->nworkers < lp->max)
			start_worker(lp);
		pthread_mutex_unlock(&lp->lock);

		session_dispatch(se, &buf);

		pthread_mutex_lock(&lp->lock);
		if (!forget)
			lp->navail++;
		pthread_mutex_unlock(&lp->lock);
	}
	sem_post(&lp->finish);
	return NULL;
}

/* The finish semaphore of the loop that is running, for the stop signal's
 * handler: posting it closes the window between the loop's check of
 * fuse_session_exited and its sem_wait, where an interrupting signal would
 * be lost.  Only the main thread writes it, and only the main thread takes
 * the stop signals (thread.h), so the handler never sees it half-gone. */
static sem_t *volatile running_finish;

void session_exit_from_signal(struct fuse_session *se)
{
	sem_t *finish = running_finish;

	fuse_session_exit(se);
	if (finish)
		sem_post(finish);
}

/* With lp->lock held (or before any worker runs). */
static int start_worker(struct loop *lp)
{
	struct worker *w = calloc(1, sizeof *w);
	void *region = NULL;
	int r;

	if (!w || posix_memalign(&region, PAGE, REGION)) {
		free(w);
		log_error("cannot start a FUSE worker: out of memory");
		return -ENOMEM;
	}
	w->lp = lp;
	w->region = region;
	r = thread_start(&w->tid, worker_main, w);
	if (r) {
		log_error("cannot start a FUSE worker: %s", strerror(r));
		free(region);
		free(w);
		return -r;
	}
	w->next = lp->workers;
	lp->workers = w;
	lp->nworkers++;
	lp->navail++;
	return 0;
}

static void wake(int sig)
{
	(void)sig;
}

/* Joins tid, waking it until it notices the end: a signal sent just
 * before it entered read() would not interrupt that read. */
void session_join_thread(pthread_t tid)
{
	for (;;) {
		struct timespec until;

		pthread_kill(tid, WAKE_SIGNAL);
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += 50 * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		if (pthread_timedjoin_np(tid, NULL, &until) == 0)
			return;
	}
}

int session_loop(struct fuse_session *se, unsigned max_threads)
{
	struct loop lp = { .se = se, .max = max_threads ? max_threads : 1 };
	struct sigaction sa = { .sa_handler = wake }, old_sa;
	int r;

	sigemptyset(&sa.sa_mask);
	sigaction(WAKE_SIGNAL, &sa, &old_sa); /* no SA_RESTART */
	ring.max_threads = lp.max;
	pthread_mutex_init(&lp.lock, NULL);
	sem_init(&lp.finish, 0, 0);
	running_finish = &lp.finish;
	pthread_mutex_lock(&lp.lock);
	r = start_worker(&lp);
	pthread_mutex_unlock(&lp.lock);
	if (r == 0) {
		/* sem_wait returns early on a signal: the handler ends the session */
		while (!fuse_session_exited(se))
			sem_wait(&lp.finish);
		/* no worker starts another from now on */
		pthread_mutex_lock(&lp.lock);
		lp.exit = true;
		pthread_mutex_unlock(&lp.lock);
		while (lp.workers) {
			struct worker *w = lp.workers;

			session_join_thread(w->tid);
			lp.workers = w->next;
			free(w->region);
			free(w);
		}
		uring_stop();
		r = lp.error;
		if (r < 0)
			log_error("reading the FUSE device: %s", strerror(-r));
	}
	running_finish = NULL;
	fuse_session_reset(se);
	sem_destroy(&lp.finish);
	pthread_mutex_destroy(&lp.lock);
	sigaction(WAKE_SIGNAL, &old_sa, NULL);
	return r;
}
