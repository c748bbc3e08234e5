/*
 * uring.c — FUSE over io_uring (uring.h).
 *
 * The kernel's side is fs/fuse/dev_uring.c (Linux 6.14+): an entry is a
 * header buffer (struct ring_header below) and a payload buffer,
 * registered with FUSE_IO_URING_CMD_REGISTER on a queue (one per possible
 * CPU); its completion carries a request: fuse_in_header in in_out, the
 * operation's fixed argument (in_args[0], e.g. fuse_write_in) in op_in,
 * every further argument (names, write data) in the payload.  The reply
 * goes back the same way: fuse_out_header in in_out, every out argument in
 * the payload, with COMMIT_AND_FETCH, which also waits for the next one.
 * Debian 12's <linux/fuse.h> predates all of this: the structures are
 * copied from the kernel's include/uapi/linux/fuse.h (protocol 7.42).
 */
#include "uring.h"
#include "session.h"
#include "log.h"
#include "thread.h"

#include <errno.h>
#include <linux/fuse.h>
#include <liburing.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#define PAGE 4096u
#define CMD_REGISTER 1u          /* FUSE_IO_URING_CMD_REGISTER */
#define CMD_COMMIT_AND_FETCH 2u  /* FUSE_IO_URING_CMD_COMMIT_AND_FETCH */
/* The payload buffer: the largest request or reply (max_pages of 256
 * pages, session.c's RECV_MAX less its header page); the region holds a
 * page before it for the request's headers and one after as slack. */
#define PAYLOAD (256u * PAGE)
#define REGION (PAGE + PAYLOAD + PAGE)

struct ring_ent_in_out {   /* struct fuse_uring_ent_in_out */
	uint64_t flags;
	uint64_t commit_id;     /* the request's unique, echoed on commit */
	uint32_t payload_sz;    /* bytes of the payload, either way */
	uint32_t padding;
	uint64_t reserved;
};

struct ring_header {       /* struct fuse_uring_req_header */
	char in_out[128];       /* fuse_in_header, then fuse_out_header */
	char op_in[128];
	struct ring_ent_in_out ent;
};

struct ring_cmd {          /* struct fuse_uring_cmd_req, in the SQE's cmd */
	uint64_t flags;
	uint64_t commit_id;
	uint16_t qid;
	uint8_t padding[6];
};

struct ring_thread {
	pthread_t tid;
	unsigned qid;             /* the kernel's queue: a possible CPU */
	struct io_uring ring;
	bool ring_ok;
	struct ring_header *hdr;  /* page-aligned */
	uint8_t *region;          /* REGION bytes; the payload is region + PAGE */
	struct iovec iov[2];
	uint64_t unique;          /* of the request being processed */
	bool replied;
	struct ring_thread *next;
};

static struct {
	struct fuse_session *se;
	int fd;
	pthread_mutex_t lock;
	struct ring_thread *threads;  /* (lock) */
	bool stopping;                /* (lock) */
	bool started;
	unsigned nthreads;            /* (lock) */
	uint64_t requests;            /* served through the ring (atomic) */
} pool = { .lock = PTHREAD_MUTEX_INITIALIZER };

static __thread struct ring_thread *serving;

static uint8_t *payload_of(struct ring_thread *t)
{
	return t->region + PAGE;
}

/* Queues REGISTER (with the buffers) or COMMIT_AND_FETCH (commit_id); the
 * wait for the next request submits it, in the same system call. */
static int submit_cmd(struct ring_thread *t, uint32_t op, uint64_t commit_id)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&t->ring);
	struct ring_cmd *cmd;

	if (!sqe)
		return -EBUSY;
	memset(sqe, 0, 2 * sizeof *sqe); /* an SQE128 */
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = pool.fd;
	sqe->cmd_op = op;
	if (op == CMD_REGISTER) {
		sqe->addr = (uint64_t)(uintptr_t)t->iov;
		sqe->len = 2;
	}
	cmd = (struct ring_cmd *)sqe->cmd;
	cmd->qid = (uint16_t)t->qid;
	cmd->commit_id = commit_id;
	return 0;
}

bool uring_take_reply(const struct iovec *iov, int count, ssize_t *sent)
{
	struct ring_thread *t = serving;
	const struct fuse_out_header *out = iov[0].iov_base;
	uint8_t *payload;
	size_t len = 0;

	if (!t || count < 1 || iov[0].iov_len < sizeof *out || out->unique != t->unique ||
	    t->replied)
		return false;
	payload = payload_of(t);
	for (int i = 1; i < count; i++) {
		if (len + iov[i].iov_len > PAYLOAD) {
			log_error("io_uring: a reply of more than %u bytes to request %llu",
				  PAYLOAD, (unsigned long long)out->unique);
			*sent = -EINVAL;
			return true;
		}
		if (iov[i].iov_base != payload + len)
			memmove(payload + len, iov[i].iov_base, iov[i].iov_len);
		len += iov[i].iov_len;
	}
	memcpy(t->hdr->in_out, out, sizeof *out);
	t->hdr->ent.payload_sz = (uint32_t)len;
	t->replied = true;
	*sent = (ssize_t)(sizeof *out + len);
	return true;
}

void uring_get_stats(struct uring_stats *st)
{
	pthread_mutex_lock(&pool.lock);
	st->active = pool.started && !pool.stopping;
	st->threads = pool.nthreads;
	pthread_mutex_unlock(&pool.lock);
	st->requests = __atomic_load_n(&pool.requests, __ATOMIC_RELAXED);
}

void *uring_reply_buffer(size_t size)
{
	return serving && size <= PAYLOAD ? payload_of(serving) : NULL;
}

/* Leaves an error reply to request unique in t's entry. */
static void reply_error(struct ring_thread *t, uint64_t unique, int error)
{
	struct fuse_out_header out = { .len = sizeof out, .error = -error, .unique = unique };

	memcpy(t->hdr->in_out, &out, sizeof out);
	t->hdr->ent.payload_sz = 0;
}

/* The request in t's entry, laid out as session.c reads one, processed;
 * its reply is left in the entry for the commit. */
static void process(struct ring_thread *t)
{
	struct fuse_in_header in;
	uint32_t payload_sz = t->hdr->ent.payload_sz;
	size_t op_len;
	uint8_t *start;
	struct fuse_buf buf = { 0 };

	memcpy(&in, t->hdr->in_out, sizeof in);
	/* in.len counts the header, the fixed argument and the payload */
	if (in.len < sizeof in + payload_sz || in.len - sizeof in - payload_sz > sizeof t->hdr->op_in ||
	    payload_sz > PAYLOAD) {
		log_error("io_uring: request %u of %u bytes with a payload of %u: not understood",
			  in.opcode, in.len, payload_sz);
		reply_error(t, in.unique, EIO);
		return;
	}
	op_len = in.len - sizeof in - payload_sz;
	start = payload_of(t) - sizeof in - op_len;
	memcpy(start, &in, sizeof in);
	memcpy(start + sizeof in, t->hdr->op_in, op_len);
	buf.mem = start;
	buf.size = in.len;

	__atomic_add_fetch(&pool.requests, 1, __ATOMIC_RELAXED);
	t->unique = in.unique;
	t->replied = false;
	serving = t;
	session_dispatch(pool.se, &buf);
	serving = NULL;
	if (!t->replied) {
		/* every request that comes through the ring has a reply; one
		 * that libfuse did not send would hold the entry for good */
		log_error("io_uring: request %u (unique %llu) ended without a reply", in.opcode,
			  (unsigned long long)in.unique);
		reply_error(t, in.unique, EIO);
	}
}

static bool stopping(void)
{
	bool s;

	pthread_mutex_lock(&pool.lock);
	s = pool.stopping;
	pthread_mutex_unlock(&pool.lock);
	return s || fuse_session_exited(pool.se);
}

static void *ring_main(void *arg)
{
	struct ring_thread *t = arg;
	uint32_t op = CMD_REGISTER;
	uint64_t commit_id = 0;
	int r = submit_cmd(t, op, 0);

	while (r == 0 && !stopping()) {
		struct io_uring_cqe *cqe;
		int res;

		r = io_uring_submit_and_wait(&t->ring, 1);
		if (r == -EINTR) {
			r = 0;
			continue;
		}
		if (r < 0)
			break;
		r = io_uring_peek_cqe(&t->ring, &cqe);
		if (r == -EAGAIN) {
			r = 0;
			continue;
		}
		if (r < 0)
			break;
		res = cqe->res;
		io_uring_cqe_seen(&t->ring, cqe);
		if (res == -EAGAIN || res == -EINTR) {
			/* not yet initialized, or interrupted: ask again */
			if (res == -EAGAIN)
				usleep(1000);
			r = submit_cmd(t, op, commit_id);
			continue;
		}
		if (res < 0) {
			r = res;
			break;
		}
		process(t);
		op = CMD_COMMIT_AND_FETCH;
		commit_id = t->hdr->ent.commit_id;
		r = submit_cmd(t, op, commit_id);
	}
	/* ENOTCONN: unmounted (the kernel tore the entries down) */
	if (r < 0 && r != -ENOTCONN && r != -ECONNABORTED && !stopping())
		log_error("io_uring: queue %u: %s", t->qid, strerror(-r));
	return NULL;
}

/* With pool.lock held. */
static int start_thread(unsigned qid)
{
	struct ring_thread *t = calloc(1, sizeof *t);
	struct io_uring_params params = { .flags = IORING_SETUP_SQE128 };
	void *hdr = NULL, *region = NULL;
	int r;

	if (!t || posix_memalign(&hdr, PAGE, PAGE) || posix_memalign(&region, PAGE, REGION)) {
		r = -ENOMEM;
		goto fail;
	}
	t->qid = qid;
	t->hdr = hdr;
	t->region = region;
	t->iov[0] = (struct iovec){ .iov_base = hdr, .iov_len = sizeof *t->hdr };
	t->iov[1] = (struct iovec){ .iov_base = payload_of(t), .iov_len = PAYLOAD };
	r = io_uring_queue_init_params(2, &t->ring, &params);
	if (r < 0)
		goto fail;
	t->ring_ok = true;
	r = -thread_start(&t->tid, ring_main, t);
	if (r < 0)
		goto fail;
	t->next = pool.threads;
	pool.threads = t;
	pool.nthreads++;
	return 0;
fail:
	log_error("io_uring: cannot start a thread for queue %u: %s", qid, strerror(-r));
	if (t && t->ring_ok)
		io_uring_queue_exit(&t->ring);
	free(region);
	free(hdr);
	free(t);
	return r;
}

int uring_start(struct fuse_session *se, unsigned max_threads)
{
	unsigned nqueues = (unsigned)get_nprocs_conf(); /* the kernel's num_possible_cpus */
	unsigned per_queue = max_threads ? max_threads : 1;
	int r = 0;

	pool.se = se;
	pool.fd = fuse_session_fd(se);
	pthread_mutex_lock(&pool.lock);
	pool.started = true;
	for (unsigned qid = 0; qid < nqueues && r == 0; qid++)
		for (unsigned k = 0; k < per_queue && r == 0; k++)
			r = start_thread(qid);
	pthread_mutex_unlock(&pool.lock);
	if (r == 0)
		log_info("FUSE requests through io_uring: %u queues of %u threads", nqueues, per_queue);
	return r;
}

void uring_stop(void)
{
	if (!pool.started)
		return;
	pthread_mutex_lock(&pool.lock);
	pool.stopping = true; /* no thread starts another from now on */
	pthread_mutex_unlock(&pool.lock);
	while (pool.threads) {
		struct ring_thread *t = pool.threads;

		session_join_thread(t->tid);
		pool.threads = t->next;
		/* cancels the entry's command if the kernel still holds it */
		io_uring_queue_exit(&t->ring);
		free(t->region);
		free(t->hdr);
		free(t);
	}
	pthread_mutex_lock(&pool.lock);
	pool.nthreads = 0;
	pool.started = false;
	pool.stopping = false;
	pthread_mutex_unlock(&pool.lock);
}
