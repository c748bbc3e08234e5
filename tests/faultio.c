/*
 * faultio.c — the fault-injection test build of aimfs (tests/aimfs-faults):
 * aimfs's own main(), with aimfs's I/O table (aimfs/io_i.h) replaced by
 * wrappers that fail, cut short or stall chosen calls, so that tests can
 * give aimfs a full, over-quota or read-only disk at the exact call they
 * want (a segment's header, a record, a trailer, a backing write, a sync).
 *
 * With AIM_FAULTS=FILE, every call through the table looks at FILE (read
 * again whenever it is replaced or changes; a test writes a new one and
 * renames it into place).  Each line is a rule:
 *
 *   OP GLOB ACTION [count=N] [len=N] [off=N] [partial]
 *
 *   OP      pwrite, pwritev, write (both), ftruncate, fallocate, fsync,
 *           fdatasync, syncfs, catalog_open (the sealer's connection to
 *           the catalog), or any
 *   GLOB    fnmatch(3) pattern for the file's path (/proc/self/fd), e.g.
 *           "*.open" (the open segment) or "*.raw" (an image)
 *   ACTION  an errno name (ENOSPC, EDQUOT, EROFS, EIO, EFBIG) that the
 *           call fails with, or "stall": the call waits until the rule is
 *           no longer in FILE, then runs
 *   count=N only the next N matching calls fail (then the rule is spent)
 *   len=N   only calls of N bytes match (off=N: only at that offset)
 *   partial a write writes its first half and returns that short count;
 *           the next matching call (the caller's retry of the rest) fails
 *
 * The first rule that matches a call decides.  A rule's count and partial
 * state last as long as FILE is unchanged.  Every fault injected is said
 * on stderr ("aimfs-faults: pwritev .../x.open: ENOSPC").  Without
 * AIM_FAULTS the wrappers are not installed.
 */
#include "io_i.h"
#include "catalog.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_RULES 32
#define STALL_POLL_NS 10000000L

enum op { OP_PWRITE = 1, OP_PWRITEV = 2, OP_FTRUNCATE = 4, OP_FALLOCATE = 8, OP_FSYNC = 16,
	  OP_FDATASYNC = 32, OP_SYNCFS = 64, OP_CATALOG_OPEN = 128 };

struct rule {
	char line[PATH_MAX];
	unsigned ops;
	char glob[PATH_MAX];
	int err;                 /* 0: stall */
	long count;              /* -1: every matching call */
	long long len, off;      /* -1: any */
	bool partial, pending;   /* partial: the next matching call fails */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static const char *rules_path;
static struct rule rules[MAX_RULES];
static int nrules;
static struct stat seen;      /* the file the rules came from */

static const struct { const char *name; int err; } errnos[] = {
	{ "ENOSPC", ENOSPC }, { "EDQUOT", EDQUOT }, { "EROFS", EROFS }, { "EIO", EIO },
	{ "EFBIG", EFBIG },
};

static unsigned parse_op(const char *s)
{
	static const struct { const char *name; unsigned ops; } ops[] = {
		{ "pwrite", OP_PWRITE }, { "pwritev", OP_PWRITEV },
		{ "write", OP_PWRITE | OP_PWRITEV }, { "ftruncate", OP_FTRUNCATE },
		{ "fallocate", OP_FALLOCATE }, { "fsync", OP_FSYNC }, { "fdatasync", OP_FDATASYNC },
		{ "syncfs", OP_SYNCFS }, { "catalog_open", OP_CATALOG_OPEN }, { "any", ~0u },
	};

	for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
		if (strcmp(s, ops[i].name) == 0)
			return ops[i].ops;
	return 0;
}

static void parse_line(char *line)
{
	struct rule r = { .count = -1, .len = -1, .off = -1 };
	char *save = NULL, *w;

	line[strcspn(line, "\n")] = '\0';
	if (strlen(line) >= sizeof r.line)
		goto bad;
	memcpy(r.line, line, strlen(line) + 1);
	w = strtok_r(line, " \t", &save);
	if (!w || w[0] == '#')
		return;
	r.ops = parse_op(w);
	w = strtok_r(NULL, " \t", &save);
	if (!r.ops || !w)
		goto bad;
	if (strlen(w) >= sizeof r.glob)
		goto bad;
	memcpy(r.glob, w, strlen(w) + 1);
	w = strtok_r(NULL, " \t", &save);
	if (!w)
		goto bad;
	if (strcmp(w, "stall") != 0) {
		for (size_t i = 0; i < sizeof errnos / sizeof errnos[0] && !r.err; i++)
			if (strcmp(w, errnos[i].name) == 0)
				r.err = errnos[i].err;
		if (!r.err)
			goto bad;
	}
	while ((w = strtok_r(NULL, " \t", &save))) {
		if (strncmp(w, "count=", 6) == 0)
			r.count = strtol(w + 6, NULL, 10);
		else if (strncmp(w, "len=", 4) == 0)
			r.len = strtoll(w + 4, NULL, 10);
		else if (strncmp(w, "off=", 4) == 0)
			r.off = strtoll(w + 4, NULL, 10);
		else if (strcmp(w, "partial") == 0)
			r.partial = true;
		else
			goto bad;
	}
	if (nrules < MAX_RULES)
		rules[nrules++] = r;
	return;
bad:
	fprintf(stderr, "aimfs-faults: cannot parse rule \"%s\"\n", r.line);
	_exit(99);
}

/* Reads the rules again if the file changed.  Lock held. */
static void reload_locked(void)
{
	struct stat st;
	char line[PATH_MAX];
	FILE *f;

	if (stat(rules_path, &st) < 0) {
		memset(&st, 0, sizeof st);
		if (seen.st_ino == 0 && nrules == 0)
			return;
		nrules = 0;
		seen = st;
		return;
	}
	if (st.st_ino == seen.st_ino && st.st_size == seen.st_size &&
	    st.st_mtim.tv_sec == seen.st_mtim.tv_sec && st.st_mtim.tv_nsec == seen.st_mtim.tv_nsec)
		return;
	seen = st;
	nrules = 0;
	f = fopen(rules_path, "r");
	if (!f)
		return;
	while (fgets(line, sizeof line, f))
		parse_line(line);
	fclose(f);
}

static bool rule_present(const char *text)
{
	bool found = false;

	pthread_mutex_lock(&lock);
	reload_locked();
	for (int i = 0; i < nrules && !found; i++)
		found = strcmp(rules[i].line, text) == 0;
	pthread_mutex_unlock(&lock);
	return found;
}

enum verdict { RUN, FAIL, HALF };

/*
 * What to do with a call on the file at path: RUN it, FAIL it (*err), or
 * write HALF of it.  A stall rule waits here until it is gone, then the
 * call runs.
 */
static enum verdict decide_path(unsigned op, const char *name, const char *path, long long off,
				long long len, int *err)
{
	enum verdict v = RUN;
	char stall[PATH_MAX] = "";

	pthread_mutex_lock(&lock);
	reload_locked();
	for (int i = 0; i < nrules; i++) {
		struct rule *r = &rules[i];

		if (!(r->ops & op) || fnmatch(r->glob, path, 0) != 0 || r->count == 0 ||
		    (r->len >= 0 && r->len != len) || (r->off >= 0 && r->off != off))
			continue;
		if (!r->err) {
			memcpy(stall, r->line, sizeof stall);
			break;
		}
		if (r->partial && !r->pending && len > 1) {
			r->pending = true;
			v = HALF;
			break;
		}
		r->pending = false;
		if (r->count > 0)
			r->count--;
		*err = r->err;
		v = FAIL;
		break;
	}
	pthread_mutex_unlock(&lock);
	if (v != RUN)
		fprintf(stderr, "aimfs-faults: %s %s at %lld+%lld: %s\n", name, path, off, len,
			v == HALF ? "half written" : strerrorname_np(*err));
	if (stall[0]) {
		struct timespec ts = { 0, STALL_POLL_NS };

		fprintf(stderr, "aimfs-faults: %s %s at %lld+%lld: stalled\n", name, path, off, len);
		while (rule_present(stall))
			nanosleep(&ts, NULL);
	}
	return v;
}

/* decide_path for the file open at fd. */
static enum verdict decide(unsigned op, const char *name, int fd, long long off, long long len,
			   int *err)
{
	char proc[64], path[PATH_MAX];
	ssize_t n;

	snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
	n = readlink(proc, path, sizeof path - 1);
	if (n < 0)
		return RUN;
	path[n] = '\0';
	return decide_path(op, name, path, off, len, err);
}

static ssize_t f_pwrite(int fd, const void *buf, size_t n, off_t off)
{
	int err = 0;

	switch (decide(OP_PWRITE, "pwrite", fd, off, (long long)n, &err)) {
	case FAIL:
		errno = err;
		return -1;
	case HALF:
		return pwrite(fd, buf, n / 2, off);
	default:
		return pwrite(fd, buf, n, off);
	}
}

static ssize_t f_pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
	size_t n = 0;
	int err = 0;

	for (int i = 0; i < iovcnt; i++)
		n += iov[i].iov_len;
	switch (decide(OP_PWRITEV, "pwritev", fd, off, (long long)n, &err)) {
	case FAIL:
		errno = err;
		return -1;
	case HALF: {
		/* The first half of the bytes, across the vectors. */
		struct iovec v[8];
		size_t want = n / 2;
		int k = 0;

		for (int i = 0; i < iovcnt && i < 8 && want; i++, k++) {
			v[k] = iov[i];
			if (v[k].iov_len > want)
				v[k].iov_len = want;
			want -= v[k].iov_len;
		}
		return pwritev(fd, v, k, off);
	}
	default:
		return pwritev(fd, iov, iovcnt, off);
	}
}

static int f_ftruncate(int fd, off_t len)
{
	int err = 0;

	if (decide(OP_FTRUNCATE, "ftruncate", fd, len, 0, &err) == FAIL) {
		errno = err;
		return -1;
	}
	return ftruncate(fd, len);
}

static int f_fallocate(int fd, int mode, off_t off, off_t len)
{
	int err = 0;

	if (decide(OP_FALLOCATE, "fallocate", fd, off, len, &err) == FAIL) {
		errno = err;
		return -1;
	}
	return fallocate(fd, mode, off, len);
}

static int f_fsync(int fd)
{
	int err = 0;

	if (decide(OP_FSYNC, "fsync", fd, 0, 0, &err) == FAIL) {
		errno = err;
		return -1;
	}
	return fsync(fd);
}

static int f_fdatasync(int fd)
{
	int err = 0;

	if (decide(OP_FDATASYNC, "fdatasync", fd, 0, 0, &err) == FAIL) {
		errno = err;
		return -1;
	}
	return fdatasync(fd);
}

static int f_syncfs(int fd)
{
	int err = 0;

	if (decide(OP_SYNCFS, "syncfs", fd, 0, 0, &err) == FAIL) {
		errno = err;
		return -1;
	}
	return syncfs(fd);
}

static int f_catalog_open(const char *path, struct catalog **out)
{
	int err = 0;

	if (decide_path(OP_CATALOG_OPEN, "catalog_open", path, 0, 0, &err) == FAIL)
		return -err;
	return catalog_open(path, out);
}

__attribute__((constructor)) static void faults_install(void)
{
	rules_path = getenv("AIM_FAULTS");
	if (!rules_path)
		return;
	aimfs_io.pwrite_fn = f_pwrite;
	aimfs_io.pwritev_fn = f_pwritev;
	aimfs_io.ftruncate_fn = f_ftruncate;
	aimfs_io.fallocate_fn = f_fallocate;
	aimfs_io.fsync_fn = f_fsync;
	aimfs_io.fdatasync_fn = f_fdatasync;
	aimfs_io.syncfs_fn = f_syncfs;
	aimfs_io.catalog_open_fn = f_catalog_open;
}
