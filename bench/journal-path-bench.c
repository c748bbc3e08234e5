/*
 * journal-path-bench: what aimfs's write path costs per request, without
 * FUSE, so that a change to it can be priced before it is built (issue 17,
 * item 4: "O_DIRECT for the journal's large records if it pays"; and the
 * fsync rows, where the journal's segment file grows).
 *
 * Each request of SIZE bytes, one at a time (a VM's disk at depth 1), in
 * one of these modes:
 *   direct        the image write alone: pwrite O_DIRECT (the baseline)
 *   buffered      aimfs's path: copy the request into an aligned receive
 *                 buffer (the kernel's copy from /dev/fuse), pwritev a
 *                 64-byte record header and the payload to the journal
 *                 through the page cache, then pwrite O_DIRECT to the image;
 *                 like aimfs over a recycled file, zeros complete the page
 *                 the record ends in (else each record waits for a read of
 *                 that page when it is not cached)
 *   overlap       buffered, but the image's write is submitted to an io_uring
 *                 before the journal's copy and waited for after it, so the
 *                 device works while the CPU copies (the order aimfs would
 *                 need for it: the image may then hold a write the journal
 *                 does not, until the copy ends)
 *   odirect       the same with the journal opened O_DIRECT; the header
 *                 takes a 4 KiB block of its own so that the payload is
 *                 aligned (the padding a format for it would need)
 *   append        buffered, into a journal file that grows (below)
 *   direct-sync   the image write and an fdatasync of the image (a guest's
 *                 commit without aimfs)
 *   ring-sync     buffered, then an fdatasync of the journal (aimfs's fsync
 *                 with backing_sync=checkpoint), the journal a file written
 *                 in full before the run and reused in a ring, as aimfs
 *                 reuses a pruned segment's file
 *   append-sync   the same into a journal file that grows, a new one every
 *                 64 MiB, as aimfs's segments grow when none is pruned (no
 *                 destination, or retain= keeps them)
 *   falloc-sync   append-sync with each new file fallocated to 64 MiB
 *                 first (its blocks allocated, unwritten)
 * The image, and the journal where it is a ring, are written in full before
 * the run, so no mode pays for block allocation unless it is the point.
 * Modes rotate round by round; one line per mode and round, and a median.
 *
 * usage: journal-path-bench DIR SIZE_KIB SECONDS ROUNDS MODE[,MODE...]
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* O_DIRECT, fallocate; meson defines it for the build */
#endif
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define ALIGN 4096
#define HEADER_BYTES 64
#define FILE_BYTES (1024ull << 20) /* the image, and the journal's ring */
#define SEGMENT_BYTES (64ull << 20) /* append-sync's files */
#define MAX_ROUNDS 99

struct mode {
	const char *name;
	bool journal;     /* a record goes to the journal first */
	bool journal_odirect;
	bool ring;        /* the journal is a pre-written ring, else it grows */
	bool sync;        /* an fdatasync after each request */
	bool falloc;      /* a journal file that grows is fallocated whole first */
	bool overlap;     /* the image's write runs on an io_uring during the copy */
};

static const struct mode modes[] = {
	{ .name = "direct", .ring = true },
	{ .name = "buffered", .journal = true, .ring = true },
	{ .name = "overlap", .journal = true, .ring = true, .overlap = true },
	{ .name = "odirect", .journal = true, .journal_odirect = true, .ring = true },
	{ .name = "append", .journal = true },
	{ .name = "direct-sync", .ring = true, .sync = true },
	{ .name = "ring-sync", .journal = true, .ring = true, .sync = true },
	{ .name = "append-sync", .journal = true, .sync = true },
	{ .name = "falloc-sync", .journal = true, .sync = true, .falloc = true },
};
#define NMODES (sizeof modes / sizeof modes[0])

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "journal-path-bench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void *aligned(size_t n)
{
	void *p;

	if (posix_memalign(&p, ALIGN, n) != 0)
		die("posix_memalign");
	memset(p, 0x5a, n);
	return p;
}

static void fill(const char *path)
{
	size_t chunk = 8u << 20;
	char *buf = aligned(chunk);
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_DIRECT, 0600);

	if (fd < 0)
		die(path);
	for (off_t off = 0; off < (off_t)FILE_BYTES; off += (off_t)chunk)
		if (pwrite(fd, buf, chunk, off) != (ssize_t)chunk)
			die("laying out a file");
	if (fsync(fd) < 0)
		die("fsync");
	close(fd);
	free(buf);
}

struct paths {
	char image[4096], ring[4096], grown[4096];
};

static int open_grown(const struct paths *p, bool falloc)
{
	int fd;

	unlink(p->grown);
	fd = open(p->grown, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	if (fd < 0)
		die(p->grown);
	if (falloc && fallocate(fd, 0, 0, (off_t)SEGMENT_BYTES) < 0)
		die("fallocate");
	return fd;
}

/* One round of one mode: MB/s of requests answered. */
static double run(const struct mode *m, const struct paths *p, size_t size, double seconds)
{
	char *guest = aligned(size), *recv = aligned(size), *header = aligned(ALIGN);
	char *zeros = memset(aligned(ALIGN), 0, ALIGN);
	size_t hbytes = m->journal_odirect ? ALIGN : HEADER_BYTES, record = hbytes + size;
	off_t limit = (off_t)(m->ring ? FILE_BYTES : SEGMENT_BYTES);
	int img = open(p->image, O_WRONLY | O_DIRECT), jfd = -1;
	uint64_t done = 0;
	off_t ioff = 0, joff = 0;
	double start, end, mbs;
	struct io_uring ring;

	if (img < 0)
		die(p->image);
	if (m->overlap && (errno = -io_uring_queue_init(4, &ring, 0)) != 0)
		die("io_uring_queue_init");
	if (m->journal && m->ring) {
		jfd = open(p->ring, O_WRONLY | (m->journal_odirect ? O_DIRECT : 0));
		if (jfd < 0)
			die(p->ring);
	} else if (m->journal) {
		jfd = open_grown(p, m->falloc);
	}
	start = now();
	end = start + seconds;
	while (now() < end) {
		if (m->journal) {
			struct iovec iov[3] = { { header, hbytes }, { recv, size }, { zeros, 0 } };

			memcpy(recv, guest, size);
			if (m->overlap) {
				struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);

				io_uring_prep_write(sqe, img, recv, (unsigned)size, (uint64_t)ioff);
				if (io_uring_submit(&ring) != 1)
					die("io_uring_submit");
			}
			if (joff + (off_t)(record + ALIGN) > limit) {
				joff = 0;
				if (!m->ring) {
					close(jfd);
					jfd = open_grown(p, m->falloc);
				}
			}
			if (m->ring && !m->journal_odirect)
				iov[2].iov_len = (ALIGN - (size_t)(joff + (off_t)record) % ALIGN) % ALIGN;
			if (pwritev(jfd, iov, 3, joff) != (ssize_t)(record + iov[2].iov_len))
				die("writing the journal");
			joff += (off_t)record;
		}
		if (m->overlap) {
			struct io_uring_cqe *cqe;

			if ((errno = -io_uring_wait_cqe(&ring, &cqe)) != 0)
				die("io_uring_wait_cqe");
			if (cqe->res != (int)size) {
				errno = cqe->res < 0 ? -cqe->res : EIO;
				die("writing the image");
			}
			io_uring_cqe_seen(&ring, cqe);
		} else if (pwrite(img, m->journal ? recv : guest, size, ioff) != (ssize_t)size) {
			die("writing the image");
		}
		if (m->sync && fdatasync(m->journal ? jfd : img) < 0)
			die("fdatasync");
		ioff = (ioff + (off_t)size) % (off_t)FILE_BYTES;
		done += size;
	}
	/* The journal's dirty pages are part of the cost (and must not be
	 * left to the next round): the time counts their writeback too. */
	if (jfd >= 0 && fsync(jfd) < 0)
		die("fsync journal");
	mbs = (double)done / 1e6 / (now() - start);
	if (m->overlap)
		io_uring_queue_exit(&ring);
	close(img);
	if (jfd >= 0)
		close(jfd);
	free(guest);
	free(recv);
	free(header);
	free(zeros);
	return mbs;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static const struct mode *find_mode(const char *name)
{
	for (size_t i = 0; i < NMODES; i++)
		if (!strcmp(modes[i].name, name))
			return &modes[i];
	return NULL;
}

int main(int argc, char **argv)
{
	const struct mode *chosen[NMODES];
	double results[NMODES][MAX_ROUNDS];
	struct paths p;
	size_t size, n = 0;
	double seconds;
	int rounds;
	char *list, *tok, *save;

	if (argc != 6) {
		fprintf(stderr, "usage: journal-path-bench DIR SIZE_KIB SECONDS ROUNDS MODE[,MODE...]\n"
				"modes: direct buffered overlap odirect append direct-sync ring-sync append-sync"
				" falloc-sync\n");
		return 2;
	}
	size = (size_t)atol(argv[2]) * 1024;
	seconds = atof(argv[3]);
	rounds = atoi(argv[4]);
	if (size == 0 || size % ALIGN || size > (64u << 20) || seconds <= 0 || rounds < 1 ||
	    rounds > MAX_ROUNDS) {
		fprintf(stderr, "journal-path-bench: SIZE_KIB a multiple of 4 up to 65536,"
				" SECONDS > 0, ROUNDS 1..%d\n", MAX_ROUNDS);
		return 2;
	}
	list = strdup(argv[5]);
	for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (n == NMODES || !(chosen[n++] = find_mode(tok))) {
			fprintf(stderr, "journal-path-bench: unknown or repeated mode: %s\n", tok);
			return 2;
		}
	}
	free(list);
	snprintf(p.image, sizeof p.image, "%s/jpb-image", argv[1]);
	snprintf(p.ring, sizeof p.ring, "%s/jpb-journal", argv[1]);
	snprintf(p.grown, sizeof p.grown, "%s/jpb-segment", argv[1]);
	fill(p.image);
	fill(p.ring);
	for (int r = 0; r < rounds; r++)
		for (size_t i = 0; i < n; i++) {
			size_t k = (i + (size_t)r) % n; /* rotate which mode goes first */

			results[k][r] = run(chosen[k], &p, size, seconds);
			printf("round %d %-12s %9.1f MB/s %9.0f req/s\n", r + 1, chosen[k]->name,
			       results[k][r], results[k][r] * 1e6 / (double)size);
			fflush(stdout);
		}
	for (size_t k = 0; k < n; k++) {
		qsort(results[k], (size_t)rounds, sizeof(double), cmp_double);
		printf("median  %-12s %9.1f MB/s %9.0f req/s\n", chosen[k]->name,
		       results[k][rounds / 2], results[k][rounds / 2] * 1e6 / (double)size);
	}
	unlink(p.image);
	unlink(p.ring);
	unlink(p.grown);
	return 0;
}
