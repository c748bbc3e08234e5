/*
 * test_apply.c — the applier against an in-memory model of the source.
 *
 * Segments are built with seg_builder, validated with seg_view_new and
 * applied into a mkdtemp directory.  Data records are checked byte for byte
 * against a model of what the source file holds; namespace records by a
 * listing of the whole tree.  Resume is checked by applying a prefix (as if
 * the applier crashed there) and then the whole segment from a later
 * after_lsn, which must give the same tree.  The I/O table in apply_i.h
 * fakes what a test machine lacks: file systems without fallocate, failing
 * fsyncs, short writes, failing reads, and a regular file posing as a block
 * device.  Resynchronisation records are checked through the event
 * callback, interleaved with the durable one in one log.
 */
#include "apply.h"
#include "apply_i.h"
#include "check.h"
#include "format.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define MAX_DIRS 64

static char *temp_dirs[MAX_DIRS];

/* ---- helpers: temp dirs, files, trees ---- */

static char *temp_dir(void)
{
	char tmpl[] = "/tmp/test_apply.XXXXXX";
	char *d = mkdtemp(tmpl);

	if (!d) {
		perror("mkdtemp");
		exit(1);
	}
	for (int i = 0; i < MAX_DIRS; i++) {
		if (!temp_dirs[i]) {
			temp_dirs[i] = strdup(d);
			return temp_dirs[i];
		}
	}
	fprintf(stderr, "too many temp dirs\n");
	exit(1);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void rm_rf(const char *dir)
{
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void cleanup_temp_dirs(void)
{
	for (int i = 0; i < MAX_DIRS; i++) {
		if (temp_dirs[i]) {
			rm_rf(temp_dirs[i]);
			free(temp_dirs[i]);
			temp_dirs[i] = NULL;
		}
	}
}

/* Empties dir, keeping it. */
static void clear_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char p[4096];

	while (d && (de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
		rm_rf(p);
	}
	if (d)
		closedir(d);
}

/* Reads path whole; returns its size or -1.  *out is malloc'd. */
static long read_path(const char *p, uint8_t **out)
{
	struct stat st;
	uint8_t *buf;
	int fd;

	fd = open(p, O_RDONLY | O_NONBLOCK);
	if (fd < 0)
		return -1;
	fstat(fd, &st);
	buf = malloc((size_t)st.st_size + 1);
	if (pread(fd, buf, (size_t)st.st_size, 0) != st.st_size) {
		close(fd);
		free(buf);
		return -1;
	}
	close(fd);
	*out = buf;
	return (long)st.st_size;
}

static long read_file(const char *dir, const char *name, uint8_t **out)
{
	char p[4096];

	snprintf(p, sizeof p, "%s/%s", dir, name);
	return read_path(p, out);
}

static void write_file(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (fd < 0 || write(fd, buf, len) != (ssize_t)len) {
		perror(path);
		exit(1);
	}
	close(fd);
}

static bool path_exists(const char *dir, const char *name)
{
	char p[4096];
	struct stat st;

	snprintf(p, sizeof p, "%s/%s", dir, name);
	return lstat(p, &st) == 0;
}

static mode_t path_mode(const char *dir, const char *name)
{
	char p[4096];
	struct stat st;

	snprintf(p, sizeof p, "%s/%s", dir, name);
	return lstat(p, &st) == 0 ? st.st_mode : 0;
}

static uint64_t fnv(const uint8_t *p, size_t n)
{
	uint64_t h = 1469598103934665603ULL;

	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 1099511628211ULL;
	return h;
}

/* A listing of a tree (path, type, mode, size, content hash), sorted, as
 * one string: two trees are equal when their listings are. */
static char *tree_lines[4096];
static int tree_count;
static size_t tree_root_len;

static int tree_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	char line[4200];
	uint64_t h = 0;

	(void)flag;
	(void)ftw;
	if (strlen(path) <= tree_root_len)
		return 0;
	if (S_ISREG(st->st_mode)) {
		uint8_t *buf;
		long n = read_path(path, &buf);

		if (n >= 0) {
			h = fnv(buf, (size_t)n);
			free(buf);
		}
	}
	snprintf(line, sizeof line, "%s %c %o %lld %016llx", path + tree_root_len + 1,
		 S_ISDIR(st->st_mode) ? 'd' : S_ISREG(st->st_mode) ? 'f' : 'o',
		 (unsigned)(st->st_mode & 07777), S_ISREG(st->st_mode) ? (long long)st->st_size : 0,
		 (unsigned long long)h);
	if (tree_count < 4096)
		tree_lines[tree_count++] = strdup(line);
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *tree(const char *dir)
{
	size_t len = 1;
	char *out;

	tree_count = 0;
	tree_root_len = strlen(dir);
	nftw(dir, tree_one, 16, FTW_PHYS);
	qsort(tree_lines, (size_t)tree_count, sizeof tree_lines[0], cmp_str);
	for (int i = 0; i < tree_count; i++)
		len += strlen(tree_lines[i]) + 1;
	out = malloc(len);
	out[0] = '\0';
	for (int i = 0; i < tree_count; i++) {
		strcat(out, tree_lines[i]);
		strcat(out, "\n");
		free(tree_lines[i]);
	}
	return out;
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int n = 0;

	while (d && (de = readdir(d)))
		n++;
	if (d)
		closedir(d);
	return n;
}

/* Durability is tested elsewhere; loops that only check convergence skip
 * the real fsyncs, which would make this test take many seconds. */
static int fast_fsync(int fd)
{
	(void)fd;
	return 0;
}

/* ---- helpers: segments ---- */

struct spec {
	uint8_t type, flags;
	uint32_t image, aux;
	uint64_t off, len;
	const void *payload;
	uint32_t plen;
};

static const uint8_t group[16] = { 0xa1, 0x5e, 0x11, 0x70, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };

/* Builds and validates a segment of the first n specs. */
static struct seg_view *build(const struct spec *s, size_t n, uint64_t number, uint64_t first_lsn,
			      const struct seg_image *imgs, uint32_t nimg, uint8_t **bytes)
{
	struct seg_header h = { .number = number, .first_lsn = first_lsn, .created_ns = 1,
				.image_count = nimg, .images = imgs };
	struct seg_builder *b;
	struct seg_view *v = NULL;
	struct seg_err e;
	size_t len;

	memcpy(h.group, group, 16);
	b = seg_builder_new(&h);
	for (size_t i = 0; i < n; i++) {
		struct seg_record r = {
			.type = s[i].type, .flags = s[i].flags, .image = s[i].image,
			.aux = s[i].aux, .offset = s[i].off, .length = s[i].len,
			.payload = s[i].payload, .payload_len = s[i].plen,
			.time_ns = 1000 + first_lsn + i,
		};

		if (r.type == SEG_WRITE)
			r.payload_len = (uint32_t)r.length;
		seg_builder_add(b, &r);
	}
	if (seg_builder_finish(b, 0, bytes, &len) < 0 || seg_view_new(*bytes, len, &v, &e) < 0) {
		fprintf(stderr, "build: segment refused: %s at %llu\n", e.msg,
			(unsigned long long)e.offset);
		exit(1);
	}
	seg_builder_free(b);
	return v;
}

/* Durable callback that records what it is told. */
struct seen {
	uint64_t lsn[256], seg[256], time[256];
	int n;
	uint64_t fail_at; /* return -EIO when told this LSN */
};

static int record_durable(void *ctx, const struct apply_progress *p)
{
	struct seen *s = ctx;

	if (s->n < 256) {
		s->lsn[s->n] = p->lsn;
		s->seg[s->n] = p->segment;
		s->time[s->n] = p->time_ns;
		s->n++;
	}
	return p->lsn == s->fail_at ? -EIO : 0;
}

/* Applies a view into dir with a fresh applier; returns the apply's
 * result.  err may be NULL. */
static int apply_into(const char *dir, struct seg_view *v, uint64_t after, struct seen *seen,
		      char *err, size_t errlen)
{
	struct applier *a;
	char scratch[512];
	int r;

	if (applier_new(dir, &a) < 0)
		return -999;
	if (seen)
		applier_set_durable_cb(a, record_durable, seen);
	r = applier_apply(a, v, after, err ? err : scratch, err ? errlen : sizeof scratch);
	applier_free(a);
	return r;
}

/* ---- the model of a source file ---- */

struct model {
	uint8_t data[1 << 20];
	size_t size;
};

static void model_grow(struct model *m, uint64_t end)
{
	if (end > m->size) {
		memset(m->data + m->size, 0, end - m->size);
		m->size = end;
	}
}

static void model_apply(struct model *m, const struct spec *s)
{
	bool keep = s->flags & SEG_F_KEEP_SIZE;
	uint64_t end = s->off + s->len;

	switch (s->type) {
	case SEG_WRITE:
		model_grow(m, end);
		memcpy(m->data + s->off, s->payload, s->len);
		break;
	case SEG_ZERO:
		if (!keep)
			model_grow(m, end);
		if (s->off < m->size)
			memset(m->data + s->off, 0, (end < m->size ? end : m->size) - s->off);
		break;
	case SEG_TRUNCATE:
		if (s->off < m->size)
			m->size = s->off;
		else
			model_grow(m, s->off);
		break;
	case SEG_ALLOC:
		if (!keep)
			model_grow(m, end);
		break;
	}
}

static bool file_matches(const char *dir, const char *name, const struct model *m)
{
	uint8_t *buf = NULL;
	long n = read_file(dir, name, &buf);
	bool ok = n >= 0 && (size_t)n == m->size && memcmp(buf, m->data, m->size) == 0;

	if (n < 0 && m->size == 0 && !path_exists(dir, name))
		ok = true; /* never touched on either side */

	if (!ok)
		fprintf(stderr, "  %s/%s: size %ld, model %zu\n", dir, name, n, m->size);
	free(buf);
	return ok;
}

static uint8_t pattern[1 << 18];

static uint64_t rng = 88172645463325252ULL;

static uint64_t rnd(uint64_t n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng % n;
}

/* A random data record for image id. */
static struct spec random_data(uint32_t id)
{
	struct spec s = { .image = id };
	uint64_t off = rnd(200000), len = 1 + rnd(20000);

	switch (rnd(8)) {
	case 0:
	case 1:
	case 2:
	case 3:
		s.type = SEG_WRITE;
		s.off = off;
		s.len = len;
		s.payload = pattern + rnd(sizeof pattern - len);
		break;
	case 4:
		s.type = SEG_ZERO;
		s.flags = (uint8_t)(rnd(2) ? SEG_F_KEEP_SIZE : 0) | (uint8_t)(rnd(2) ? SEG_F_PUNCH : 0);
		s.off = off;
		s.len = len;
		break;
	case 5:
		s.type = SEG_TRUNCATE;
		s.off = rnd(220000);
		break;
	case 6:
		s.type = SEG_ALLOC;
		s.flags = rnd(2) ? SEG_F_KEEP_SIZE : 0;
		s.off = off;
		s.len = len;
		break;
	default:
		s.type = SEG_FLUSH;
		s.image = rnd(2) ? id : 0;
		break;
	}
	return s;
}

/* ---- tests ---- */

static const struct seg_image two_images[] = {
	{ 1, 7, "vm1.raw" },
	{ 2, 15, "disks/vm2.qcow2" },
};

/* Every data record kind, checked against the model. */
static void test_data_records(void)
{
	static uint8_t a[4096], b[100];
	struct spec s[] = {
		{ .type = SEG_WRITE, .image = 1, .off = 0, .len = 4096, .payload = a },
		{ .type = SEG_WRITE, .image = 1, .off = 8192, .len = 100, .payload = b },
		{ .type = SEG_ZERO, .image = 1, .off = 100, .len = 100 },
		{ .type = SEG_ZERO, .image = 1, .flags = SEG_F_PUNCH | SEG_F_KEEP_SIZE, .off = 0, .len = 4096 },
		{ .type = SEG_WRITE, .image = 1, .off = 1000, .len = 50, .payload = b },
		{ .type = SEG_ZERO, .image = 1, .off = 20000, .len = 1000 },
		{ .type = SEG_ZERO, .image = 1, .flags = SEG_F_KEEP_SIZE, .off = 20500, .len = 5000 },
		{ .type = SEG_ZERO, .image = 1, .flags = SEG_F_PUNCH, .off = 20900, .len = 200 },
		{ .type = SEG_ALLOC, .image = 1, .flags = SEG_F_KEEP_SIZE, .off = 0, .len = 1 << 20 },
		{ .type = SEG_ALLOC, .image = 1, .off = 30000, .len = 1000 },
		{ .type = SEG_TRUNCATE, .image = 1, .off = 10000 },
		{ .type = SEG_WRITE, .image = 2, .off = 65536, .len = 4096, .payload = a },
		{ .type = SEG_TRUNCATE, .image = 2, .off = 1 << 18 },
		{ .type = SEG_FLUSH, .image = 0 },
		{ .type = SEG_MARK, .payload = "checkpoint", .plen = 10 },
	};
	size_t n = sizeof s / sizeof s[0];
	static struct model m1, m2;
	char *dir = temp_dir(), err[512];
	struct seen seen = { .n = 0 };
	struct seg_view *v;
	uint8_t *bytes;
	int r;

	memset(a, 'A', sizeof a);
	memset(b, 'B', sizeof b);
	m1.size = m2.size = 0;
	for (size_t i = 0; i < n; i++)
		model_apply(s[i].image == 2 ? &m2 : &m1, &s[i]);
	v = build(s, n, 1, 1, two_images, 2, &bytes);
	r = apply_into(dir, v, 0, &seen, err, sizeof err);
	CHECK_MSG(r == 0, "apply: %d %s", r, err);
	CHECK(file_matches(dir, "vm1.raw", &m1));
	CHECK(file_matches(dir, "disks/vm2.qcow2", &m2));
	CHECK((path_mode(dir, "vm1.raw") & 0777) == 0600);
	/* FLUSH at 14, end at 15 (the MARK) */
	CHECK_MSG(seen.n == 2 && seen.lsn[0] == 14 && seen.lsn[1] == 15, "n=%d", seen.n);
	CHECK(seen.seg[0] == 1 && seen.time[0] == 1000 + 14 && seen.time[1] == 1000 + 15);
	seg_view_free(v);
	free(bytes);
}

/* Random data records on two images, with every file system fallback. */
static void test_random_data(bool no_fallocate)
{
	enum { N = 400 };
	static struct spec s[N];
	static struct model m1, m2;
	char *dir = temp_dir(), *d2 = temp_dir(), err[512], *want;
	struct seg_view *v;
	uint8_t *bytes;
	int r;

	m1.size = m2.size = 0;
	for (int i = 0; i < N; i++) {
		s[i] = random_data(1 + (uint32_t)rnd(2));
		model_apply(s[i].image == 2 ? &m2 : &m1, &s[i]);
	}
	v = build(s, N, 7, 1000, two_images, 2, &bytes);
	apply_io.fsync_fn = fast_fsync;
	r = apply_into(dir, v, 0, NULL, err, sizeof err);
	CHECK_MSG(r == 0, "apply (no_fallocate=%d): %s", no_fallocate, err);
	CHECK(file_matches(dir, "vm1.raw", &m1));
	CHECK(file_matches(dir, "disks/vm2.qcow2", &m2));

	/* Resume: a crash left the targets somewhere between the durable
	 * point k and a later record m; re-applying from k converges. */
	want = tree(dir);
	for (int round = 0; round < 12; round++) {
		uint64_t k = rnd(N), m = k + rnd(N - k + 1);
		struct seg_view *pv;
		char *got;
		uint8_t *pb;

		pv = build(s, (size_t)m, 7, 1000, two_images, 2, &pb);
		CHECK(apply_into(d2, pv, 0, NULL, NULL, 0) == 0);
		r = apply_into(d2, v, 1000 + k - 1, NULL, err, sizeof err);
		CHECK_MSG(r == 0, "resume: %s", err);
		got = tree(d2); /* paths relative to the root: comparable */
		CHECK_MSG(strcmp(want, got) == 0, "resume from %llu after a crash at %llu differs",
			  (unsigned long long)k, (unsigned long long)m);
		seg_view_free(pv);
		free(pb);
		free(got);
		clear_dir(d2);
	}
	apply_io.fsync_fn = apply_io_default.fsync_fn;
	free(want);
	seg_view_free(v);
	free(bytes);
}

/* Many segments in a row through one applier, the files checked against
 * the model after each. */
static void test_random_segments(void)
{
	enum { SEGS = 40, PER = 20 };
	static struct spec s[PER];
	static struct model m1, m2;
	char *dir = temp_dir(), err[512];
	struct applier *a;
	uint64_t lsn = 1;
	bool ok = true;

	m1.size = m2.size = 0;
	CHECK(applier_new(dir, &a) == 0);
	apply_io.fsync_fn = fast_fsync;
	for (int seg = 0; seg < SEGS && ok; seg++) {
		struct seg_view *v;
		uint8_t *bytes;
		int r;

		for (int i = 0; i < PER; i++) {
			s[i] = random_data(1 + (uint32_t)rnd(2));
			model_apply(s[i].image == 2 ? &m2 : &m1, &s[i]);
		}
		v = build(s, PER, (uint64_t)seg + 1, lsn, two_images, 2, &bytes);
		r = applier_apply(a, v, lsn - 1, err, sizeof err);
		CHECK_MSG(r == 0, "segment %d: %s", seg + 1, err);
		ok = file_matches(dir, "vm1.raw", &m1) && file_matches(dir, "disks/vm2.qcow2", &m2);
		CHECK_MSG(ok, "segment %d differs from the model", seg + 1);
		lsn += PER;
		seg_view_free(v);
		free(bytes);
	}
	apply_io.fsync_fn = apply_io_default.fsync_fn;
	applier_free(a);
}

static int no_fallocate(int fd, int mode, off_t off, off_t len)
{
	(void)fd;
	(void)mode;
	(void)off;
	(void)len;
	errno = EOPNOTSUPP;
	return -1;
}

static ssize_t short_pwrite(int fd, const void *buf, size_t n, off_t off)
{
	return pwrite(fd, buf, n > 1000 ? 1000 : n, off);
}

/* The namespace, the durable callback around it, and resume at every
 * record (re-running it) giving the same tree. */
static void test_namespace(void)
{
	static uint8_t a[8192];
	struct spec s[] = {
		/* 1 */ { .type = SEG_WRITE, .image = 1, .off = 0, .len = 8192, .payload = a },
		/* 2 */ { .type = SEG_CREATE, .image = 3, .aux = 0100640, .payload = "a/b/vm3.raw", .plen = 11 },
		/* 3 */ { .type = SEG_WRITE, .image = 3, .off = 0, .len = 4096, .payload = a },
		/* 4 */ { .type = SEG_FLUSH, .image = 3 },
		/* 5 */ { .type = SEG_WRITE, .image = 3, .off = 4096, .len = 100, .payload = a },
		/* 6 */ { .type = SEG_RENAME, .image = 3, .aux = 11, .payload = "a/b/vm3.rawc/vm4.raw", .plen = 20 },
		/* 7 */ { .type = SEG_UNLINK, .image = 1, .payload = "vm1.raw", .plen = 7 },
		/* 8 */ { .type = SEG_MKDIR, .aux = 0750, .payload = "d", .plen = 1 },
		/* 9 */ { .type = SEG_MKDIR, .aux = 0700, .payload = "d/e", .plen = 3 },
		/* 10 */ { .type = SEG_RMDIR, .payload = "d/e", .plen = 3 },
		/* 11 */ { .type = SEG_RENAME, .flags = SEG_F_DIR, .aux = 1, .payload = "ax", .plen = 2 },
		/* 12 */ { .type = SEG_CREATE, .image = 4, .aux = 04755, .payload = "c/vm5.raw", .plen = 9 },
		/* 13 */ { .type = SEG_WRITE, .image = 4, .off = 100, .len = 10, .payload = a },
		/* 14 */ { .type = SEG_CREATE, .image = 5, .aux = 0644, .payload = "vm1.raw", .plen = 7 },
		/* 15 */ { .type = SEG_RENAME, .image = 2, .flags = SEG_F_REPLACE, .aux = 15,
			   .payload = "disks/vm2.qcow2vm1.raw", .plen = 22 },
		/* 16 */ { .type = SEG_MARK, .payload = "end", .plen = 3 },
	};
	/* durable points: 1 before the CREATE at 2, and 2; 4 FLUSH; 5 before
	 * the RENAME at 6; 6..12 namespace; 13 before 14; 14, 15; 16 the end */
	static const uint64_t want_lsn[] = { 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };
	size_t n = sizeof s / sizeof s[0], nw = sizeof want_lsn / sizeof want_lsn[0];
	char *dir = temp_dir(), *d2 = temp_dir(), err[512], *want, *got;
	struct seen seen = { .n = 0 };
	struct seg_view *v;
	uint8_t *bytes, *buf = NULL;
	bool lsn_ok;
	int r;

	memset(a, 'N', sizeof a);
	v = build(s, n, 2, 1, two_images, 2, &bytes);
	/* vm2 exists on the replica from an earlier segment */
	mkdir(strcat(strcpy(err, dir), "/disks"), 0755);
	write_file(strcat(strcpy(err, dir), "/disks/vm2.qcow2"), "vm2", 3);
	r = apply_into(dir, v, 0, &seen, err, sizeof err);
	CHECK_MSG(r == 0, "apply: %s", err);
	CHECK(!path_exists(dir, "a/b/vm3.raw"));
	CHECK(read_file(dir, "c/vm4.raw", &buf) == 4196 && buf && buf[4195] == 'N');
	free(buf);
	buf = NULL;
	CHECK((path_mode(dir, "c/vm4.raw") & 07777) == 0640);
	CHECK(S_ISDIR(path_mode(dir, "d")) && (path_mode(dir, "d") & 07777) == 0750);
	CHECK(!path_exists(dir, "d/e"));
	CHECK(!path_exists(dir, "a") && S_ISDIR(path_mode(dir, "x/b")));
	/* set-id bits never reach the replica */
	CHECK((path_mode(dir, "c/vm5.raw") & 07777) == 0755);
	CHECK(read_file(dir, "c/vm5.raw", &buf) == 110);
	free(buf);
	buf = NULL;
	CHECK(read_file(dir, "vm1.raw", &buf) == 3 && buf && memcmp(buf, "vm2", 3) == 0);
	free(buf);
	CHECK(!path_exists(dir, "disks/vm2.qcow2"));
	lsn_ok = seen.n == (int)nw;
	for (size_t i = 0; lsn_ok && i < nw; i++)
		lsn_ok = seen.lsn[i] == want_lsn[i];
	CHECK_MSG(lsn_ok, "durable LSNs: got %d callbacks", seen.n);
	if (!lsn_ok)
		for (int i = 0; i < seen.n; i++)
			fprintf(stderr, "  durable %llu\n", (unsigned long long)seen.lsn[i]);
	CHECK(seen.time[3] == 1000 + 5 && seen.time[4] == 1000 + 6);

	/* Resuming from after_lsn = k-1 over a target that holds records up
	 * to k (a crash after k was done, before its callback) re-runs k. */
	want = tree(dir);
	apply_io.fsync_fn = fast_fsync;
	for (size_t k = 0; k <= n; k++) {
		struct seg_view *pv;
		uint8_t *pb;

		clear_dir(d2);
		mkdir(strcat(strcpy(err, d2), "/disks"), 0755);
		write_file(strcat(strcpy(err, d2), "/disks/vm2.qcow2"), "vm2", 3);
		pv = build(s, k, 2, 1, two_images, 2, &pb);
		CHECK(apply_into(d2, pv, 0, NULL, NULL, 0) == 0);
		r = apply_into(d2, v, k ? k - 1 : 0, NULL, err, sizeof err);
		CHECK_MSG(r == 0, "resume at %zu: %s", k, err);
		got = tree(d2);
		CHECK_MSG(strcmp(want, got) == 0, "resume re-running LSN %zu differs:\n%s---\n%s", k,
			  want, got);
		free(got);
		seg_view_free(pv);
		free(pb);
	}
	apply_io.fsync_fn = apply_io_default.fsync_fn;
	/* Applying the whole segment again on the finished tree from its
	 * last namespace record is a no-op. */
	r = apply_into(dir, v, 14, NULL, err, sizeof err);
	CHECK_MSG(r == 0, "re-apply: %s", err);
	got = tree(dir);
	CHECK(strcmp(want, got) == 0);
	free(got);
	free(want);
	seg_view_free(v);
	free(bytes);
}

/* Callback placement, resume with after_lsn, callback failures. */
static void test_durable_cb(void)
{
	static uint8_t a[512];
	struct spec s[] = {
		{ .type = SEG_WRITE, .image = 1, .off = 0, .len = 512, .payload = a },   /* 11 */
		{ .type = SEG_WRITE, .image = 1, .off = 512, .len = 512, .payload = a }, /* 12 */
		{ .type = SEG_FLUSH, .image = 0 },                                       /* 13 */
		{ .type = SEG_WRITE, .image = 1, .off = 0, .len = 10, .payload = a },    /* 14 */
		{ .type = SEG_CREATE, .image = 9, .aux = 0600, .payload = "n.raw", .plen = 5 }, /* 15 */
		{ .type = SEG_WRITE, .image = 9, .off = 0, .len = 10, .payload = a },    /* 16 */
		{ .type = SEG_MARK, .payload = "m", .plen = 1 },                         /* 17 */
		{ .type = SEG_FLUSH, .image = 0 },                                       /* 18 */
	};
	char *dir = temp_dir(), err[512];
	struct seen seen = { .n = 0 };
	struct seg_view *v, *v2;
	uint8_t *bytes, *bytes2;
	int r;

	v = build(s, 8, 3, 11, two_images, 1, &bytes);
	r = apply_into(dir, v, 10, &seen, err, sizeof err);
	CHECK_MSG(r == 0, "%s", err);
	/* no second callback at the end: the FLUSH at 18 reported it */
	CHECK_MSG(seen.n == 4 && seen.lsn[0] == 13 && seen.lsn[1] == 14 && seen.lsn[2] == 15 &&
		  seen.lsn[3] == 18, "n=%d", seen.n);
	CHECK(seen.seg[3] == 3);

	seen.n = 0;
	r = apply_into(dir, v, 15, &seen, err, sizeof err);
	CHECK(r == 0 && seen.n == 1 && seen.lsn[0] == 18);

	/* Nothing left to apply: the end is still reported, so that a
	 * caller can record the segment as done. */
	seen.n = 0;
	r = apply_into(dir, v, 18, &seen, err, sizeof err);
	CHECK(r == 0 && seen.n == 1 && seen.lsn[0] == 18);
	seen.n = 0;
	r = apply_into(dir, v, 30, &seen, err, sizeof err);
	CHECK(r == 0 && seen.n == 0);

	/* A failing callback stops the apply there. */
	seen.n = 0;
	seen.fail_at = 14;
	r = apply_into(dir, v, 10, &seen, err, sizeof err);
	CHECK_MSG(r == -EIO && strstr(err, "LSN 14"), "r=%d err=%s", r, err);
	CHECK(seen.n == 2);
	seen.fail_at = 0;

	/* An empty segment reports its (empty) end. */
	seen.n = 0;
	v2 = build(s, 0, 4, 19, two_images, 1, &bytes2);
	r = apply_into(dir, v2, 18, &seen, err, sizeof err);
	CHECK(r == 0 && seen.n == 1 && seen.lsn[0] == 18 && seen.seg[0] == 4);
	seg_view_free(v2);
	free(bytes2);
	seg_view_free(v);
	free(bytes);
}

/* What the record callback saw, and where it stops. */
struct hooked {
	const char *dir;
	uint64_t lsn[64];
	uint8_t type[64];
	long size_at[64];   /* vm1.raw's size as another reader sees it then */
	char name_at[64][16]; /* image 9's name as the view says then */
	int n;
	uint64_t stop_at;
	uint64_t fail_at;
};

static int hook(void *ctx, struct seg_view *v, const struct seg_record *r)
{
	struct hooked *h = ctx;
	char p[4096];
	struct stat st;
	const char *nm;

	if (h->n < 64) {
		h->lsn[h->n] = r->lsn;
		h->type[h->n] = r->type;
		snprintf(p, sizeof p, "%s/vm1.raw", h->dir);
		h->size_at[h->n] = stat(p, &st) == 0 ? (long)st.st_size : -1;
		nm = seg_view_image_name(v, 9);
		snprintf(h->name_at[h->n], sizeof h->name_at[0], "%s", nm ? nm : "-");
		h->n++;
	}
	if (r->lsn == h->fail_at)
		return -EIO;
	return r->lsn == h->stop_at ? APPLY_STOP : 0;
}

/* The record callback sees every applied record in order, with the
 * targets already holding its effect and the view positioned at it; it
 * can stop the apply right after a record, durably. */
static void test_record_cb(void)
{
	static uint8_t a[512];
	struct spec s[] = {
		{ .type = SEG_WRITE, .image = 1, .off = 0, .len = 100, .payload = a },   /* 21 */
		{ .type = SEG_FLUSH, .image = 0 },                                       /* 22 */
		{ .type = SEG_MARK, .payload = "m1", .plen = 2 },                        /* 23 */
		{ .type = SEG_WRITE, .image = 1, .off = 100, .len = 200, .payload = a }, /* 24 */
		{ .type = SEG_CREATE, .image = 9, .aux = 0600, .payload = "n.raw", .plen = 5 }, /* 25 */
		{ .type = SEG_WRITE, .image = 1, .off = 300, .len = 10, .payload = a },  /* 26 */
		{ .type = SEG_FLUSH, .image = 1 },                                       /* 27 */
	};
	char *dir = temp_dir(), err[512];
	struct hooked h = { .dir = dir };
	struct seen seen = { .n = 0 };
	struct applier *ap;
	struct seg_view *v;
	uint8_t *bytes;
	int r;

	v = build(s, 7, 5, 21, two_images, 2, &bytes);
	CHECK(applier_new(dir, &ap) == 0);
	applier_set_record_cb(ap, hook, &h);
	applier_set_durable_cb(ap, record_durable, &seen);
	r = applier_apply(ap, v, 22, err, sizeof err);
	CHECK_MSG(r == 0, "%s", err);
	CHECK_MSG(h.n == 5 && h.lsn[0] == 23 && h.lsn[4] == 27, "n=%d", h.n);
	CHECK(h.type[0] == SEG_MARK && h.type[2] == SEG_CREATE && h.type[4] == SEG_FLUSH);
	/* vm1.raw was not written after 22 in this fresh dir: absent until 24 */
	CHECK(h.size_at[0] == -1 && h.size_at[1] == 300 && h.size_at[3] == 310);
	/* the CREATE at 25 binds n.raw in the view when the callback runs */
	CHECK(strcmp(h.name_at[1], "-") == 0 && strcmp(h.name_at[2], "n.raw") == 0);
	applier_free(ap);
	clear_dir(dir);

	/* Stop right after the WRITE at 24: durable there, nothing later. */
	memset(&h, 0, sizeof h);
	h.dir = dir;
	h.stop_at = 24;
	seen.n = 0;
	CHECK(applier_new(dir, &ap) == 0);
	applier_set_record_cb(ap, hook, &h);
	applier_set_durable_cb(ap, record_durable, &seen);
	r = applier_apply(ap, v, 20, err, sizeof err);
	CHECK_MSG(r == APPLY_STOP, "r=%d %s", r, err);
	CHECK(h.n == 4 && h.lsn[3] == 24);
	CHECK_MSG(seen.n == 2 && seen.lsn[0] == 22 && seen.lsn[1] == 24, "n=%d", seen.n);
	applier_free(ap);
	CHECK(!path_exists(dir, "n.raw"));
	{
		uint8_t *got;
		long n = read_file(dir, "vm1.raw", &got);

		CHECK(n == 300);
		if (n >= 0)
			free(got);
	}

	/* Stopping at a barrier reports it once. */
	memset(&h, 0, sizeof h);
	h.dir = dir;
	h.stop_at = 27;
	seen.n = 0;
	CHECK(applier_new(dir, &ap) == 0);
	applier_set_record_cb(ap, hook, &h);
	applier_set_durable_cb(ap, record_durable, &seen);
	r = applier_apply(ap, v, 24, err, sizeof err);
	CHECK_MSG(r == APPLY_STOP, "r=%d %s", r, err);
	CHECK_MSG(seen.n == 2 && seen.lsn[0] == 25 && seen.lsn[1] == 27, "n=%d", seen.n);

	/* A failing callback fails the apply with the place in the message. */
	memset(&h, 0, sizeof h);
	h.dir = dir;
	h.fail_at = 26;
	r = applier_apply(ap, v, 24, err, sizeof err);
	CHECK_MSG(r == -EIO && strstr(err, "LSN 26"), "r=%d %s", r, err);
	applier_free(ap);
	seg_view_free(v);
	free(bytes);
}

static int fsync_calls, fsync_fail_at;

static int failing_fsync(int fd)
{
	if (++fsync_calls == fsync_fail_at) {
		errno = EIO;
		return -1;
	}
	return fsync(fd);
}

/* A failed fsync stops the apply before the callback claims durability. */
static void test_fsync_failure(void)
{
	static uint8_t a[512];
	struct spec s[] = {
		{ .type = SEG_WRITE, .image = 1, .off = 0, .len = 512, .payload = a },
		{ .type = SEG_FLUSH, .image = 0 },
		{ .type = SEG_WRITE, .image = 1, .off = 512, .len = 512, .payload = a },
		{ .type = SEG_FLUSH, .image = 0 },
	};
	char *dir = temp_dir(), err[512];
	struct seen seen = { .n = 0 };
	struct seg_view *v;
	uint8_t *bytes;
	int r;

	v = build(s, 4, 1, 1, two_images, 1, &bytes);
	/* first fsync: vm1.raw's directory after creating it; second: the
	 * FLUSH at 2; third: the FLUSH at 4 */
	fsync_calls = 0;
	fsync_fail_at = 3;
	apply_io.fsync_fn = failing_fsync;
	r = apply_into(dir, v, 0, &seen, err, sizeof err);
	apply_io = apply_io_default;
	CHECK_MSG(r == -EIO && strstr(err, "fsync") && strstr(err, "LSN 4"), "r=%d err=%s", r, err);
	CHECK(seen.n == 1 && seen.lsn[0] == 2);
	seg_view_free(v);
	free(bytes);
}

/* Symlinks, hard links and special files planted in the target dir. */
static void test_escapes(void)
{
	static uint8_t a[100];
	char *dir = temp_dir(), *out = temp_dir(), p[4096], q[4096], err[512], *before, *after;
	static const struct seg_image imgs[] = {
		{ 1, 11, "vm/disk.raw" }, { 2, 7, "vm1.raw" }, { 3, 6, "hl.raw" },
		{ 4, 8, "fifo.raw" },
	};
	struct spec writes[] = {
		{ .type = SEG_WRITE, .image = 1, .off = 0, .len = 100, .payload = a },
		{ .type = SEG_WRITE, .image = 2, .off = 0, .len = 100, .payload = a },
		{ .type = SEG_WRITE, .image = 3, .off = 0, .len = 100, .payload = a },
		{ .type = SEG_WRITE, .image = 4, .off = 0, .len = 100, .payload = a },
		{ .type = SEG_CREATE, .image = 5, .aux = 0644, .payload = "new.raw", .plen = 7 },
		{ .type = SEG_CREATE, .image = 5, .aux = 0644, .payload = "vm/new.raw", .plen = 10 },
		{ .type = SEG_MKDIR, .aux = 0755, .payload = "vm/sub", .plen = 6 },
		{ .type = SEG_RENAME, .image = 2, .aux = 7, .payload = "vm1.rawvm/moved", .plen = 15 },
		{ .type = SEG_UNLINK, .image = 1, .payload = "vm/disk.raw", .plen = 11 },
		{ .type = SEG_RMDIR, .payload = "vm/keep", .plen = 7 },
		{ .type = SEG_TRUNCATE, .image = 2, .off = 0 },
	};
	static const char *const expect[] = {
		"symbolic link", "symbolic link", "hard links", "not a regular file",
		"symbolic link", "symbolic link", "symbolic link", "symbolic link",
		"symbolic link", "symbolic link", "symbolic link",
	};

	memset(a, 'X', sizeof a);
	/* outside/: a file, a directory with a file, as targets of links */
	snprintf(p, sizeof p, "%s/secret", out);
	write_file(p, "secret", 6);
	snprintf(p, sizeof p, "%s/keep", out);
	mkdir(p, 0755);
	snprintf(p, sizeof p, "%s/disk.raw", out);
	write_file(p, "disk", 4);
	/* target/vm -> outside, target/vm1.raw -> outside/secret,
	 * target/new.raw -> outside/created (dangling), target/hl.raw a hard
	 * link to outside/secret, target/fifo.raw a FIFO */
	snprintf(p, sizeof p, "%s/vm", dir);
	CHECK(symlink(out, p) == 0);
	snprintf(p, sizeof p, "%s/vm1.raw", dir);
	snprintf(q, sizeof q, "%s/secret", out);
	CHECK(symlink(q, p) == 0);
	snprintf(p, sizeof p, "%s/new.raw", dir);
	snprintf(q, sizeof q, "%s/created", out);
	CHECK(symlink(q, p) == 0);
	snprintf(p, sizeof p, "%s/hl.raw", dir);
	snprintf(q, sizeof q, "%s/secret", out);
	CHECK(link(q, p) == 0);
	snprintf(p, sizeof p, "%s/fifo.raw", dir);
	CHECK(mkfifo(p, 0600) == 0);

	before = tree(out);
	for (size_t i = 0; i < sizeof writes / sizeof writes[0]; i++) {
		struct seg_view *v;
		uint8_t *bytes;
		int r;

		/* each record alone, so that each must be refused on its own */
		v = build(&writes[i], 1, 1, 1, imgs, 4, &bytes);
		r = apply_into(dir, v, 0, NULL, err, sizeof err);
		CHECK_MSG(r < 0 && strstr(err, expect[i]), "escape %zu (%s): r=%d err=%s", i,
			  seg_type_name(writes[i].type), r, err);
		seg_view_free(v);
		free(bytes);
	}
	after = tree(out);
	CHECK_MSG(strcmp(before, after) == 0, "outside changed:\n%s---\n%s", before, after);
	free(before);
	free(after);
	/* the links themselves are still there, untouched */
	CHECK(S_ISLNK(path_mode(dir, "vm")) && S_ISLNK(path_mode(dir, "vm1.raw")));
}

/* --- a regular file posing as a block device --- */

static ino_t fake_ino;
static uint64_t fake_size;

static int fake_fstat(int fd, struct stat *st)
{
	int r = fstat(fd, st);

	if (r == 0 && st->st_ino == fake_ino)
		st->st_mode = S_IFBLK | (st->st_mode & 07777);
	return r;
}

static int fake_ioctl(int fd, unsigned long req, void *arg)
{
	struct stat st;

	if (req == BLKGETSIZE64 && fstat(fd, &st) == 0 && st.st_ino == fake_ino) {
		*(uint64_t *)arg = fake_size;
		return 0;
	}
	return ioctl(fd, req, arg);
}

static void test_block_device(void)
{
	enum { DEV = 65536 };
	static uint8_t dev[DEV], a[4096];
	char *dir = temp_dir(), *outdir = temp_dir(), path[4096], err[512];
	struct seg_record r = { .type = SEG_WRITE, .image = 1 };
	static const struct seg_image imgs[] = { { 1, 7, "dev.raw" } };
	struct stat st;
	struct applier *ap;
	struct seg_view *v;
	uint8_t *buf, *bytes;
	int fd, rc;

	memset(a, 'D', sizeof a);
	memset(dev, 'g', sizeof dev); /* garbage */
	snprintf(path, sizeof path, "%s/dev", outdir);
	write_file(path, dev, DEV);
	fd = open(path, O_RDWR);

	/* apply_record_data, directly */
	r.offset = DEV - 4096;
	r.length = 4096;
	r.payload = a;
	r.payload_len = 4096;
	CHECK(apply_record_data(fd, &r, true, DEV, err, sizeof err) == 0);
	r.offset = DEV - 100;
	rc = apply_record_data(fd, &r, true, DEV, err, sizeof err);
	CHECK_MSG(rc == -ENOSPC && strstr(err, "beyond the end of the device (65536 bytes)"), "%s", err);
	r = (struct seg_record){ .type = SEG_ZERO, .offset = 100, .length = 100 };
	CHECK(apply_record_data(fd, &r, true, DEV, err, sizeof err) == 0);
	r = (struct seg_record){ .type = SEG_ZERO, .flags = SEG_F_PUNCH | SEG_F_KEEP_SIZE,
				 .offset = 4096, .length = 8192 };
	CHECK(apply_record_data(fd, &r, true, DEV, err, sizeof err) == 0);
	r = (struct seg_record){ .type = SEG_ZERO, .offset = DEV - 10, .length = 20 };
	CHECK(apply_record_data(fd, &r, true, DEV, err, sizeof err) == -ENOSPC);
	r.flags = SEG_F_KEEP_SIZE; /* clipped: past the source's end anyway */
	CHECK(apply_record_data(fd, &r, true, DEV, err, sizeof err) == 0);
	r = (struct seg_record){ .type = SEG_ALLOC, .offset = DEV, .length = 20 };
	CHECK(apply_record_data(fd, &r, true, DEV, err, sizeof err) == -ENOSPC);
	r.flags = SEG_F_KEEP_SIZE;
	CHECK(apply_record_data(fd, &r, true, DEV, err, sizeof err) == 0);
	r = (struct seg_record){ .type = SEG_TRUNCATE, .offset = DEV + 1 };
	rc = apply_record_data(fd, &r, true, DEV, err, sizeof err);
	CHECK_MSG(rc == -ENOSPC && strstr(err, "never resized"), "%s", err);
	r.offset = 30000;
	CHECK(apply_record_data(fd, &r, true, DEV, err, sizeof err) == 0);
	r = (struct seg_record){ .type = SEG_FLUSH };
	CHECK(apply_record_data(fd, &r, true, DEV, err, sizeof err) == -EINVAL);
	close(fd);
	CHECK(read_file(outdir, "dev", &buf) == DEV);
	memset(dev + 100, 0, 100);
	memset(dev + 4096, 0, 8192);
	memset(dev + 30000, 0, DEV - 30000);
	CHECK(memcmp(buf, dev, DEV) == 0);
	free(buf);

	/* through an applier, with the file mapped and posing as a device */
	write_file(path, dev, DEV);
	stat(path, &st);
	fake_ino = st.st_ino;
	fake_size = DEV;
	apply_io.fstat_fn = fake_fstat;
	apply_io.ioctl_fn = fake_ioctl;
	{
		struct spec s[] = {
			{ .type = SEG_CREATE, .image = 1, .aux = 0644, .payload = "dev.raw", .plen = 7 },
			{ .type = SEG_WRITE, .image = 1, .off = 0, .len = 4096, .payload = a },
			{ .type = SEG_UNLINK, .image = 1, .payload = "dev.raw", .plen = 7 },
		};
		struct spec bad[] = {
			{ .type = SEG_WRITE, .image = 1, .off = DEV, .len = 4096, .payload = a },
		};
		struct spec ren[] = {
			{ .type = SEG_RENAME, .image = 1, .aux = 7, .payload = "dev.rawother.raw", .plen = 16 },
		};

		CHECK(applier_new(dir, &ap) == 0);
		CHECK(applier_map(ap, "dev.raw", path) == 0);
		CHECK(applier_map(ap, "dev.raw", path) == -EEXIST);
		CHECK(applier_map(ap, "../x", path) == -EINVAL);
		CHECK(applier_map(ap, "x", dir) == -EINVAL);
		CHECK(applier_map(ap, "y", "/nonexistent/dir/file") == -ENOENT);
		v = build(s, 3, 1, 1, NULL, 0, &bytes);
		rc = applier_apply(ap, v, 0, err, sizeof err);
		CHECK_MSG(rc == 0, "%s", err);
		seg_view_free(v);
		free(bytes);
		/* CREATE zeroed the whole device, the WRITE landed, the UNLINK
		 * left the device alone */
		CHECK(read_file(outdir, "dev", &buf) == DEV);
		CHECK(buf[0] == 'D' && buf[4095] == 'D' && buf[4096] == 0 && buf[DEV - 1] == 0);
		free(buf);
		CHECK(!path_exists(dir, "dev.raw"));

		v = build(bad, 1, 2, 1, imgs, 1, &bytes);
		rc = applier_apply(ap, v, 0, err, sizeof err);
		CHECK_MSG(rc == -ENOSPC && strstr(err, "image dev.raw: write at 65536+4096 is beyond the end of") &&
			  strstr(err, "(65536 bytes)"), "%s", err);
		seg_view_free(v);
		free(bytes);

		v = build(ren, 1, 3, 1, imgs, 1, &bytes);
		rc = applier_apply(ap, v, 0, err, sizeof err);
		CHECK_MSG(rc == -EXDEV && strstr(err, "mapped"), "%s", err);
		seg_view_free(v);
		free(bytes);
		applier_free(ap);
	}
	apply_io = apply_io_default;
}

/* ---- resynchronisation ---- */

static ssize_t failing_pread(int fd, void *buf, size_t n, off_t off)
{
	(void)fd;
	(void)buf;
	(void)n;
	(void)off;
	errno = EIO;
	return -1;
}

static unsigned preads_counted;

static ssize_t counting_pread(int fd, void *buf, size_t n, off_t off)
{
	preads_counted++;
	return pread(fd, buf, n, off);
}

/* One log of durable callbacks (type 0) and events, in the order made. */
struct evlog {
	int n;
	struct {
		int type;
		uint64_t seg, lsn, time, off, len;
		uint32_t dest, block, image_id;
		char image[64];
	} e[2048];
	int fail_type; /* an event type whose callback fails with -EIO */
};

static int log_durable(void *ctx, const struct apply_progress *p)
{
	struct evlog *l = ctx;

	if (l->n < 2048) {
		memset(&l->e[l->n], 0, sizeof l->e[0]);
		l->e[l->n].seg = p->segment;
		l->e[l->n].lsn = p->lsn;
		l->e[l->n].time = p->time_ns;
		l->n++;
	}
	return 0;
}

static int log_event(void *ctx, const struct apply_event *e)
{
	struct evlog *l = ctx;

	if (l->n < 2048) {
		memset(&l->e[l->n], 0, sizeof l->e[0]);
		l->e[l->n].type = (int)e->type;
		l->e[l->n].seg = e->segment;
		l->e[l->n].lsn = e->lsn;
		l->e[l->n].time = e->time_ns;
		l->e[l->n].dest = e->dest;
		l->e[l->n].off = e->offset;
		l->e[l->n].len = e->length;
		l->e[l->n].block = e->block;
		l->e[l->n].image_id = e->image_id;
		if (e->image)
			snprintf(l->e[l->n].image, sizeof l->e[0].image, "%s", e->image);
		l->n++;
	}
	return (int)e->type == l->fail_type ? -EIO : 0;
}

static int apply_logged(const char *dir, struct seg_view *v, uint64_t after, struct evlog *l,
			char *err, size_t errlen)
{
	struct applier *a;
	int r;

	if (applier_new(dir, &a) < 0)
		return -999;
	applier_set_durable_cb(a, log_durable, l);
	applier_set_event_cb(a, log_event, l);
	r = applier_apply(a, v, after, err, errlen);
	applier_free(a);
	return r;
}

/* The log as "D1 B2/3 D2 M4:vm1.raw:0+4096 E5/3 ..." for one comparison. */
static char *log_text(const struct evlog *l)
{
	static char buf[65536];
	size_t n = 0;

	buf[0] = '\0';
	for (int i = 0; i < l->n && n < sizeof buf - 200; i++) {
		int k;

		switch (l->e[i].type) {
		case 0:
			k = snprintf(buf + n, sizeof buf - n, "D%llu ", (unsigned long long)l->e[i].lsn);
			break;
		case APPLY_EV_SYNC_BEGIN:
		case APPLY_EV_SYNC_END:
			k = snprintf(buf + n, sizeof buf - n, "%c%llu/%u ",
				     l->e[i].type == APPLY_EV_SYNC_BEGIN ? 'B' : 'E',
				     (unsigned long long)l->e[i].lsn, l->e[i].dest);
			break;
		default:
			k = snprintf(buf + n, sizeof buf - n, "M%llu:%s:%llu+%llu ",
				     (unsigned long long)l->e[i].lsn, l->e[i].image,
				     (unsigned long long)l->e[i].off, (unsigned long long)l->e[i].len);
			break;
		}
		n += (size_t)k;
	}
	if (n)
		buf[n - 1] = '\0';
	return buf;
}

/* RESYNC-tagged data records are applied as untagged ones. */
static void test_resync_records(void)
{
	static uint8_t a[5000];
	struct spec s[] = {
		{ .type = SEG_WRITE, .image = 1, .off = 0, .len = 5000, .payload = a },
		{ .type = SEG_SYNC_BEGIN, .aux = 3 },
		{ .type = SEG_WRITE, .flags = SEG_F_RESYNC, .aux = 3, .image = 1, .off = 8000,
		  .len = 3000, .payload = a + 7 },
		{ .type = SEG_ZERO, .flags = SEG_F_RESYNC | SEG_F_PUNCH | SEG_F_KEEP_SIZE, .aux = 3,
		  .image = 1, .off = 100, .len = 200 },
		{ .type = SEG_ZERO, .flags = SEG_F_RESYNC, .aux = 3, .image = 2, .off = 0, .len = 9000 },
		{ .type = SEG_TRUNCATE, .flags = SEG_F_RESYNC, .aux = 3, .image = 1, .off = 10000 },
		{ .type = SEG_SYNC_END, .aux = 3 },
	};
	size_t n = sizeof s / sizeof s[0];
	static struct model m1, m2;
	static struct evlog l;
	char *dir = temp_dir(), err[512];
	struct seg_record r = { .type = SEG_WRITE, .flags = SEG_F_RESYNC, .aux = 3, .offset = 10,
				.length = 20, .payload = a, .payload_len = 20 };
	struct seg_view *v;
	uint8_t *bytes, *buf;
	int fd, rc;

	for (size_t i = 0; i < sizeof a; i++)
		a[i] = (uint8_t)(i * 7 + 1);
	m1.size = m2.size = 0;
	for (size_t i = 0; i < n; i++) {
		struct spec u = s[i];

		u.flags &= (uint8_t)~SEG_F_RESYNC;
		model_apply(u.image == 2 ? &m2 : &m1, &u);
	}
	v = build(s, n, 1, 1, two_images, 2, &bytes);
	memset(&l, 0, sizeof l);
	rc = apply_logged(dir, v, 0, &l, err, sizeof err);
	CHECK_MSG(rc == 0, "%d %s", rc, err);
	CHECK(file_matches(dir, "vm1.raw", &m1));
	CHECK(file_matches(dir, "disks/vm2.qcow2", &m2));
	CHECK_MSG(strcmp(log_text(&l), "D1 B2/3 D2 E7/3 D7") == 0, "%s", log_text(&l));
	seg_view_free(v);
	free(bytes);

	/* apply_record_data takes the tag too */
	{
		char p[4096];

		snprintf(p, sizeof p, "%s/direct", dir);
		fd = open(p, O_RDWR | O_CREAT, 0600);
	}
	CHECK(apply_record_data(fd, &r, false, 0, err, sizeof err) == 0);
	r = (struct seg_record){ .type = SEG_ZERO, .flags = SEG_F_RESYNC, .aux = 3, .offset = 12,
				 .length = 2 };
	CHECK(apply_record_data(fd, &r, false, 0, err, sizeof err) == 0);
	r = (struct seg_record){ .type = SEG_TRUNCATE, .flags = SEG_F_RESYNC, .aux = 3,
				 .offset = 25 };
	CHECK(apply_record_data(fd, &r, false, 0, err, sizeof err) == 0);
	close(fd);
	CHECK(read_file(dir, "direct", &buf) == 25);
	CHECK(buf[0] == 0 && buf[10] == a[0] && buf[11] == a[1] && buf[12] == 0 && buf[13] == 0 &&
	      buf[14] == a[4] && buf[24] == a[14]);
	free(buf);
}

/* SYNC_BEGIN and SYNC_END: events between durable points, nothing on the
 * targets, resume, and a failing callback. */
static void test_sync_events(void)
{
	static uint8_t a[100];
	struct spec s[] = {
		{ .type = SEG_WRITE, .image = 1, .off = 0, .len = 100, .payload = a },   /* 1 */
		{ .type = SEG_MARK, .payload = "m", .plen = 1 },                          /* 2 */
		{ .type = SEG_SYNC_BEGIN, .aux = 2 },                                     /* 3 */
		{ .type = SEG_WRITE, .flags = SEG_F_RESYNC, .aux = 2, .image = 1, .off = 50,
		  .len = 100, .payload = a },                                             /* 4 */
		{ .type = SEG_SYNC_BEGIN, .aux = 2 },                                     /* 5 */
		{ .type = SEG_MARK, .payload = "n", .plen = 1 },                          /* 6 */
		{ .type = SEG_SYNC_END, .aux = 2 },                                       /* 7 */
		{ .type = SEG_WRITE, .image = 1, .off = 0, .len = 10, .payload = a },    /* 8 */
	};
	struct spec first[] = {
		{ .type = SEG_SYNC_BEGIN, .aux = 7 },
		{ .type = SEG_SYNC_END, .aux = 7 },
	};
	static struct evlog l;
	char *dir = temp_dir(), *empty = temp_dir(), err[512], *before;
	struct seg_view *v;
	uint8_t *bytes;
	int rc;

	memset(a, 'x', sizeof a);
	v = build(s, 8, 4, 1, two_images, 2, &bytes);
	memset(&l, 0, sizeof l);
	rc = apply_logged(dir, v, 0, &l, err, sizeof err);
	CHECK_MSG(rc == 0, "%d %s", rc, err);
	/* a durable point before the SYNC_BEGIN (records were applied), at
	 * it, not before the second (nothing applied in between but a MARK),
	 * at the SYNC_END, at the end */
	CHECK_MSG(strcmp(log_text(&l), "D2 B3/2 D3 D4 B5/2 D5 E7/2 D7 D8") == 0, "%s", log_text(&l));
	CHECK(l.e[1].seg == 4 && l.e[1].time == 1000 + 3 && l.e[1].off == 0 && !l.e[1].image[0]);
	/* resumed after the first SYNC_BEGIN was recorded */
	memset(&l, 0, sizeof l);
	rc = apply_logged(dir, v, 3, &l, err, sizeof err);
	CHECK_MSG(rc == 0 && strcmp(log_text(&l), "D4 B5/2 D5 E7/2 D7 D8") == 0, "%s",
		  log_text(&l));
	/* a failing callback stops the apply at the event, durable before it */
	memset(&l, 0, sizeof l);
	l.fail_type = APPLY_EV_SYNC_END;
	rc = apply_logged(dir, v, 0, &l, err, sizeof err);
	CHECK_MSG(rc == -EIO && strstr(err, "resync state") && strstr(err, "LSN 7"), "%d %s", rc,
		  err);
	CHECK_MSG(strcmp(log_text(&l), "D2 B3/2 D3 D4 B5/2 D5 E7/2") == 0, "%s", log_text(&l));
	seg_view_free(v);
	free(bytes);

	/* first records of a segment: no durable point before; nothing on
	 * the targets */
	before = tree(empty);
	v = build(first, 2, 1, 10, NULL, 0, &bytes);
	memset(&l, 0, sizeof l);
	rc = apply_logged(empty, v, 9, &l, err, sizeof err);
	CHECK_MSG(rc == 0 && strcmp(log_text(&l), "B10/7 D10 E11/7 D11") == 0, "%s",
		  log_text(&l));
	{
		char *after = tree(empty);

		CHECK(strcmp(before, after) == 0);
		free(after);
	}
	free(before);
	seg_view_free(v);
	free(bytes);
}

/* A HASH record's payload for the bytes src[off, off+len) of a source
 * holding srclen bytes (blocks past it clipped as the source would). */
static uint8_t *hash_of(const uint8_t *src, uint64_t srclen, uint64_t off, uint64_t len,
			uint32_t block, uint32_t *plen)
{
	uint64_t count = (len + block - 1) / block;
	uint8_t *p = calloc(1, 8 + 8 * count);

	memcpy(p, &block, 4); /* little-endian hosts only, as the format */
	for (uint64_t i = 0; i < count; i++) {
		uint64_t b = off + i * block, want = len - i * block < block ? len - i * block : block;
		uint64_t have = b >= srclen ? 0 : srclen - b < want ? srclen - b : want;
		uint64_t h = XXH3_64bits(src + (b < srclen ? b : 0), have);

		memcpy(p + 8 + 8 * i, &h, 8);
	}
	*plen = (uint32_t)(8 + 8 * count);
	return p;
}

static void test_hash(void)
{
	enum { B = 4096, TLEN = 10 * B, SLEN = 10 * B + 1000 };
	static uint8_t target[TLEN], src[SLEN], w[B];
	static struct evlog l;
	char *dir = temp_dir(), err[512], *before, *after, p[4096];
	uint8_t *bytes, *h[8];
	uint32_t hl[8];
	struct seg_view *v;
	int rc;

	for (size_t i = 0; i < TLEN; i++)
		target[i] = (uint8_t)(i * 13 + i / 4096);
	memcpy(src, target, TLEN);
	for (size_t i = TLEN; i < SLEN; i++)
		src[i] = (uint8_t)i;
	src[B + 5] ^= 1;      /* block 1 */
	src[2 * B + 4095] ^= 1; /* block 2: adjacent, merged */
	src[5 * B] ^= 1;      /* block 5 */
	memset(w, 'w', sizeof w);
	snprintf(p, sizeof p, "%s/vm1.raw", dir);
	write_file(p, target, TLEN);
	{
		/* 0: the whole source range: blocks 1-2, 5, and 10 (short on the
		 *    target: it has none of it);
		 * 1: an unaligned range, equal;
		 * 2: image 2 is missing: all of it differs, and it stays missing;
		 * 3: after a WRITE to block 5 of the same bytes as the source's
		 *    and to block 7 of others: the comparison sees both;
		 * 4: a short last block, on both sides equal */
		h[0] = hash_of(src, SLEN, 0, SLEN, B, &hl[0]);
		h[1] = hash_of(src, SLEN, 6 * B + 100, 2 * B, B, &hl[1]);
		h[2] = hash_of(src, SLEN, 0, 3 * B, B, &hl[2]);
		h[3] = hash_of(src, SLEN, 4 * B, 4 * B, B, &hl[3]);
		h[4] = hash_of(src, TLEN, 8 * B, 5 * B, 2 * B, &hl[4]);
	}
	{
		struct spec s[] = {
			{ .type = SEG_HASH, .image = 1, .aux = 0, .off = 0, .len = SLEN, .payload = h[0],
			  .plen = hl[0] },                                                         /* 1 */
			{ .type = SEG_HASH, .image = 1, .aux = 4, .off = 6 * B + 100, .len = 2 * B,
			  .payload = h[1], .plen = hl[1] },                                        /* 2 */
			{ .type = SEG_HASH, .image = 2, .off = 0, .len = 3 * B, .payload = h[2],
			  .plen = hl[2] },                                                         /* 3 */
			{ .type = SEG_HASH, .image = 1, .off = 8 * B, .len = 5 * B, .payload = h[4],
			  .plen = hl[4] },                                                         /* 4 */
		};

		before = tree(dir);
		v = build(s, 4, 1, 1, two_images, 2, &bytes);
		memset(&l, 0, sizeof l);
		rc = apply_logged(dir, v, 0, &l, err, sizeof err);
		CHECK_MSG(rc == 0, "%d %s", rc, err);
		CHECK_MSG(strcmp(log_text(&l), "M1:vm1.raw:4096+8192 M1:vm1.raw:20480+4096 "
					       "M1:vm1.raw:40960+1000 M3:disks/vm2.qcow2:0+12288 D4") == 0,
			  "%s", log_text(&l));
		CHECK(l.e[0].block == B && l.e[0].dest == 0 && l.e[0].seg == 1 && l.e[0].time == 1001);
		CHECK(l.e[0].image_id == 1 && l.e[3].image_id == 2);
		after = tree(dir);
		CHECK_MSG(strcmp(before, after) == 0, "the targets changed:\n%s\n%s", before, after);
		CHECK(!path_exists(dir, "disks"));
		free(before);
		free(after);
		seg_view_free(v);
		free(bytes);
	}
	{
		struct spec s[] = {
			{ .type = SEG_WRITE, .image = 1, .off = 5 * B, .len = B, .payload = src + 5 * B },
			{ .type = SEG_WRITE, .image = 1, .off = 7 * B + 10, .len = 1, .payload = w },
			{ .type = SEG_HASH, .image = 1, .aux = 9, .off = 4 * B, .len = 4 * B,
			  .payload = h[3], .plen = hl[3] },
		};

		v = build(s, 3, 2, 1, two_images, 2, &bytes);
		memset(&l, 0, sizeof l);
		rc = apply_logged(dir, v, 0, &l, err, sizeof err);
		CHECK_MSG(rc == 0 && strcmp(log_text(&l), "M3:vm1.raw:28672+4096 D3") == 0, "%d %s %s",
			  rc, err, log_text(&l));
		CHECK(l.e[0].dest == 9);
		/* a failing read stops the apply with the reason */
		apply_io.pread_fn = failing_pread;
		memset(&l, 0, sizeof l);
		rc = apply_logged(dir, v, 0, &l, err, sizeof err);
		apply_io = apply_io_default;
		CHECK_MSG(rc == -EIO && strstr(err, "image vm1.raw: reading 16384+4096") &&
			  strstr(err, "HASH record, LSN 3"), "%d %s", rc, err);
		/* and a failing event callback */
		memset(&l, 0, sizeof l);
		l.fail_type = APPLY_EV_MISMATCH;
		rc = apply_logged(dir, v, 0, &l, err, sizeof err);
		CHECK_MSG(rc == -EIO && strstr(err, "differences found"), "%d %s", rc, err);
		seg_view_free(v);
		free(bytes);
	}
	{
		/* a symlink planted as the target is refused, not followed */
		char *far = temp_dir(), q[4096];
		struct spec s[] = {
			{ .type = SEG_HASH, .image = 2, .off = 0, .len = 3 * B, .payload = h[2],
			  .plen = hl[2] },
		};

		snprintf(p, sizeof p, "%s/disks", dir);
		mkdir(p, 0755);
		snprintf(p, sizeof p, "%s/disks/vm2.qcow2", dir);
		snprintf(q, sizeof q, "%s/secret", far);
		write_file(q, src, 3 * B);
		CHECK(symlink(q, p) == 0);
		v = build(s, 1, 3, 1, two_images, 2, &bytes);
		memset(&l, 0, sizeof l);
		rc = apply_logged(dir, v, 0, &l, err, sizeof err);
		CHECK_MSG(rc == -ELOOP && strstr(err, "symbolic link"), "%d %s", rc, err);
		seg_view_free(v);
		free(bytes);
	}
	for (int i = 0; i < 5; i++)
		free(h[i]);
}

/* More differing runs than one HASH record reports: the last event covers
 * the rest. */
static void test_hash_runs_cap(void)
{
	enum { B = 4096, RUNS = APPLY_MISMATCH_RUNS_MAX + 76, BLOCKS = 2 * RUNS + 1 };
	static struct evlog l;
	static uint8_t zeros[B];
	char *dir = temp_dir(), err[512], p[4096];
	uint64_t hz = XXH3_64bits(zeros, B);
	uint32_t plen = 8 + 8 * BLOCKS, block = B;
	uint8_t *pl = calloc(1, plen), *bytes;
	struct seg_view *v;
	int fd, rc;

	memcpy(pl, &block, 4);
	for (uint64_t i = 0; i < BLOCKS; i++) {
		uint64_t h = i % 2 ? hz + 1 : hz; /* the odd blocks differ */

		memcpy(pl + 8 + 8 * i, &h, 8);
	}
	snprintf(p, sizeof p, "%s/vm1.raw", dir);
	fd = open(p, O_RDWR | O_CREAT, 0600);
	CHECK(ftruncate(fd, (off_t)BLOCKS * B) == 0);
	close(fd);
	{
		struct spec s[] = {
			{ .type = SEG_HASH, .image = 1, .off = 0, .len = (uint64_t)BLOCKS * B,
			  .payload = pl, .plen = plen },
		};

		v = build(s, 1, 1, 1, two_images, 2, &bytes);
	}
	memset(&l, 0, sizeof l);
	apply_io.fsync_fn = fast_fsync;
	rc = apply_logged(dir, v, 0, &l, err, sizeof err);
	apply_io.fsync_fn = apply_io_default.fsync_fn;
	CHECK_MSG(rc == 0, "%d %s", rc, err);
	CHECK_MSG(l.n == APPLY_MISMATCH_RUNS_MAX + 1, "%d events", l.n);
	for (int i = 0; i < APPLY_MISMATCH_RUNS_MAX - 1 && i < l.n; i++)
		CHECK(l.e[i].off == (uint64_t)(2 * i + 1) * B && l.e[i].len == B);
	if (l.n == APPLY_MISMATCH_RUNS_MAX + 1) {
		int k = APPLY_MISMATCH_RUNS_MAX - 1;

		CHECK_MSG(l.e[k].off == (uint64_t)(2 * k + 1) * B &&
			  l.e[k].off + l.e[k].len == (uint64_t)(2 * RUNS) * B, "%llu+%llu",
			  (unsigned long long)l.e[k].off, (unsigned long long)l.e[k].len);
		CHECK(l.e[k + 1].type == 0);
	}
	seg_view_free(v);
	free(bytes);
	free(pl);
}

/* More images than the fd cache holds, and no fd leaked. */
static void test_cache(void)
{
	enum { N = 150 };
	static struct seg_image imgs[N];
	static char names[N][16];
	static struct spec s[2 * N + 1];
	static uint8_t a[64];
	char *dir = temp_dir(), err[512];
	struct seg_view *v;
	uint8_t *bytes, *buf;
	int fds = count_fds(), rc;
	bool ok = true;

	memset(a, 'c', sizeof a);
	for (int i = 0; i < N; i++) {
		snprintf(names[i], sizeof names[i], "d%d/img%03d", i % 5, i);
		imgs[i] = (struct seg_image){ (uint32_t)i + 1, (uint16_t)strlen(names[i]), names[i] };
		s[i] = (struct spec){ .type = SEG_WRITE, .image = (uint32_t)i + 1, .off = 0,
				      .len = 64, .payload = a };
		s[N + i] = (struct spec){ .type = SEG_WRITE, .image = (uint32_t)i + 1,
					  .off = 64, .len = 1, .payload = a };
	}
	s[2 * N] = (struct spec){ .type = SEG_FLUSH };
	v = build(s, 2 * N + 1, 1, 1, imgs, N, &bytes);
	apply_io.fsync_fn = fast_fsync;
	rc = apply_into(dir, v, 0, NULL, err, sizeof err);
	apply_io.fsync_fn = apply_io_default.fsync_fn;
	CHECK_MSG(rc == 0, "%s", err);
	for (int i = 0; i < N && ok; i++) {
		ok = read_file(dir, names[i], &buf) == 65;
		if (ok)
			free(buf);
	}
	CHECK(ok);
	CHECK(count_fds() == fds);
	seg_view_free(v);
	free(bytes);
}

static void test_fallbacks(void)
{
	apply_io.fallocate_fn = no_fallocate;
	test_random_data(true);
	test_random_segments();
	test_data_records();
	apply_io = apply_io_default;
	apply_io.pwrite_fn = short_pwrite;
	test_data_records();
	apply_io = apply_io_default;
}

static void test_new(void)
{
	struct applier *a = NULL;
	char *dir = temp_dir(), p[4096];

	CHECK(applier_new("/nonexistent/target", &a) == -ENOENT);
	snprintf(p, sizeof p, "%s/file", dir);
	write_file(p, "x", 1);
	CHECK(applier_new(p, &a) == -ENOTDIR);
	applier_free(NULL);
}

/* Counts the records; stops at LSN stop_at, fails at LSN fail_at (0:
 * never). */
struct counted {
	unsigned n;
	uint64_t stop_at, fail_at;
};

static int count_records(void *ctx, struct seg_view *v, const struct seg_record *r)
{
	struct counted *c = ctx;

	(void)v;
	c->n++;
	if (r->lsn == c->fail_at)
		return -EIO;
	return r->lsn == c->stop_at ? APPLY_STOP : 0;
}

/* A fresh applier into dir (emptied first: a cached target fd must not
 * outlive its file) applying all of v, its payloads read from fd; with
 * count_records as its record callback if c is not NULL, which
 * reads_targets or not. */
static int apply_counting(const char *dir, struct seg_view *v, int fd, struct counted *c,
			  bool reads_targets, char *err, size_t errlen)
{
	struct applier *a;
	int r;

	clear_dir(dir);
	r = applier_new(dir, &a);
	if (r < 0)
		return r;
	applier_set_source(a, fd, fd >= 0 ? seg_view_bytes(v) : NULL);
	if (c) {
		applier_set_record_cb(a, count_records, c);
		applier_record_cb_reads_targets(a, reads_targets);
	}
	r = applier_apply(a, v, 0, err, errlen);
	applier_free(a);
	return r;
}

static int apply_from_file(const char *dir, struct seg_view *v, int fd, char *err, size_t errlen)
{
	return apply_counting(dir, v, fd, NULL, true, err, errlen);
}

/* The bytes of v written to the file dir/segment; its fd, or -1. */
static int segment_file(const char *dir, const struct seg_view *v, const uint8_t *bytes)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof path, "%s/segment", dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd >= 0 && pwrite(fd, bytes, seg_view_size(v), 0) != (ssize_t)seg_view_size(v)) {
		close(fd);
		fd = -1;
	}
	return fd;
}

/*
 * WRITE payloads read from the segment's file (applier_set_source), as
 * aim-remote applies inbox files: the targets come out as the model says,
 * in chunks too (a write larger than the applier's buffer); the bytes are
 * the file's, not the view's; a read that fails or a file that shrank
 * stops the apply with a reason naming the segment file.
 */
static void test_payload_source(void)
{
	enum { N = 60, BIG = 600 << 10, BIG_AT = 300000 };
	static struct spec s[N];
	static struct model m1, m2;
	static uint8_t big[BIG];
	char *dir = temp_dir(), *d2 = temp_dir(), err[512];
	struct seg_record rec;
	struct seg_view *v;
	uint64_t big_payload = 0;
	uint8_t *bytes, byte;
	int fd, r;

	m1.size = m2.size = 0;
	for (size_t i = 0; i < sizeof big; i++)
		big[i] = (uint8_t)rnd(256);
	for (int i = 0; i < N; i++) {
		s[i] = random_data(1 + (uint32_t)rnd(2));
		if (i == N - 1) /* larger than the buffer (chunks), and last: it stays */
			s[i] = (struct spec){ .type = SEG_WRITE, .image = 1, .off = BIG_AT, .len = BIG,
					      .payload = big };
		model_apply(s[i].image == 2 ? &m2 : &m1, &s[i]);
	}
	v = build(s, N, 7, 1000, two_images, 2, &bytes);
	fd = segment_file(d2, v, bytes);
	CHECK(fd >= 0);
	if (fd < 0)
		goto out;
	while (seg_view_next(v, &rec) == 1)
		if (rec.type == SEG_WRITE && rec.length == BIG)
			big_payload = (uint64_t)((const uint8_t *)rec.payload - seg_view_bytes(v));
	CHECK(big_payload != 0);

	apply_io.fsync_fn = fast_fsync;
	apply_io.pread_fn = counting_pread;
	preads_counted = 0;
	r = apply_from_file(dir, v, fd, err, sizeof err);
	apply_io.pread_fn = apply_io_default.pread_fn;
	CHECK_MSG(r == 0, "apply from the file: %s", err);
	CHECK(file_matches(dir, "vm1.raw", &m1));
	CHECK(file_matches(dir, "disks/vm2.qcow2", &m2));
	/* the small payloads come from a window of the file, not a read each
	 * (the whole segment but the big write fits in one; the big write's
	 * three chunks take a read each, and the window's end may take one
	 * more) */
	CHECK_MSG(preads_counted >= 3 && preads_counted <= 6, "%u reads", preads_counted);

	/* the file's bytes, not the view's: change the big write's last one */
	byte = (uint8_t)~big[BIG - 1];
	CHECK(pwrite(fd, &byte, 1, (off_t)(big_payload + BIG - 1)) == 1);
	r = apply_from_file(dir, v, fd, err, sizeof err);
	CHECK_MSG(r == 0, "apply from the changed file: %s", err);
	{
		char img[4096];
		uint8_t got = 0;
		int ifd;

		snprintf(img, sizeof img, "%s/vm1.raw", dir);
		ifd = open(img, O_RDONLY | O_CLOEXEC);
		CHECK(ifd >= 0 && pread(ifd, &got, 1, BIG_AT + BIG - 1) == 1 && got == byte);
		if (ifd >= 0)
			close(ifd);
	}

	/* a read that fails */
	apply_io.pread_fn = failing_pread;
	r = apply_from_file(dir, v, fd, err, sizeof err);
	apply_io.pread_fn = apply_io_default.pread_fn;
	CHECK_MSG(r == -EIO && strstr(err, "reading the payload of the write at") &&
		  strstr(err, "from the segment file: Input/output error"), "%d %s", r, err);
	/* a file that shrank since it was checked */
	CHECK(ftruncate(fd, (off_t)(big_payload + 10)) == 0);
	r = apply_from_file(dir, v, fd, err, sizeof err);
	CHECK_MSG(r == -ENODATA && strstr(err, "shorter than when it was checked"), "%d %s", r,
		  err);
	/* unset: from the view again */
	r = apply_from_file(dir, v, -1, err, sizeof err);
	CHECK_MSG(r == 0 && file_matches(dir, "vm1.raw", &m1), "apply from the view: %s", err);
	apply_io.fsync_fn = apply_io_default.fsync_fn;
	close(fd);
out:
	seg_view_free(v);
	free(bytes);
}

static unsigned pwritevs_counted, iovecs_counted, most_iovecs, last_iovecs;

static ssize_t counting_pwritev(int fd, const struct iovec *iov, int n, off_t off)
{
	pwritevs_counted++;
	last_iovecs = (unsigned)n;
	iovecs_counted += (unsigned)n;
	if ((unsigned)n > most_iovecs)
		most_iovecs = (unsigned)n;
	return pwritev(fd, iov, n, off);
}

/* At most 1000 bytes a call, however many buffers: a short write that
 * ends inside a buffer, or between two. */
static ssize_t short_pwritev(int fd, const struct iovec *iov, int n, off_t off)
{
	struct iovec v[RUN_IOV_MAX];
	size_t left = 1000;
	int k = 0;

	for (int i = 0; i < n && left; i++) {
		v[k] = iov[i];
		if (v[k].iov_len > left)
			v[k].iov_len = left;
		left -= v[k++].iov_len;
	}
	return pwritev(fd, v, k, off);
}

static ssize_t failing_pwritev(int fd, const struct iovec *iov, int n, off_t off)
{
	(void)fd, (void)iov, (void)n, (void)off;
	errno = EIO;
	return -1;
}

/*
 * WRITEs to consecutive offsets of one target, read from a source file,
 * go out together (struct write_run): runs of random lengths broken by a
 * gap, the other image, another record type, a payload larger than the
 * window and the window's end.  The targets come out as the model says
 * with whole and short pwritev, a failing one names the run, and with a
 * record callback every WRITE goes out on its own.
 */
static void test_write_runs(void)
{
	enum { N = 600, BIG = 300 << 10, STOP = 200 };
	static struct spec s[N];
	static struct model m1, m2;
	static uint8_t big[BIG];
	char *dir = temp_dir(), *d2 = temp_dir(), err[512];
	uint64_t next[3] = { 0, 0, 0 };
	struct counted counted = { 0 };
	unsigned writes = 0;
	struct seg_view *v;
	uint8_t *bytes;
	int fd, r;

	m1.size = m2.size = 0;
	for (size_t i = 0; i < sizeof big; i++)
		big[i] = (uint8_t)rnd(256);
	for (int i = 0, id = 1; i < N; i++) {
		uint64_t len = 1 + rnd(rnd(4) ? 4096 : 9000);
		/* a run of small WRITEs around STOP, the stop and failure
		 * inside it */
		bool around = i >= STOP - 3 && i <= STOP + 2;

		if (!around && rnd(40) == 0)
			id = 3 - id;
		if (around)
			len = 512;
		if (i == N / 2) {
			s[i] = (struct spec){ .type = SEG_WRITE, .image = (uint32_t)id,
					      .off = next[id], .len = BIG, .payload = big };
		} else if (!around && rnd(40) == 0) {
			s[i] = random_data((uint32_t)id);
			/* over the run just written: it must go first */
			if (s[i].type == SEG_ZERO || s[i].type == SEG_TRUNCATE)
				s[i].off = next[id] > 5000 ? next[id] - 1 - rnd(5000) : 0;
		} else {
			s[i] = (struct spec){ .type = SEG_WRITE, .image = (uint32_t)id,
					      .off = around || rnd(60) ? next[id] : rnd(200000),
					      .len = len, .payload = pattern + rnd(sizeof pattern - len) };
		}
		if (s[i].type == SEG_WRITE) {
			writes++;
			next[id] = s[i].off + s[i].len;
			if (next[id] > 600000 && !around)
				next[id] = rnd(100000);
		}
		model_apply(id == 2 ? &m2 : &m1, &s[i]);
	}
	v = build(s, N, 7, 1000, two_images, 2, &bytes);
	fd = segment_file(d2, v, bytes);
	CHECK(fd >= 0);
	if (fd < 0)
		goto out;
	apply_io.fsync_fn = fast_fsync;

	apply_io.pwritev_fn = counting_pwritev;
	pwritevs_counted = iovecs_counted = most_iovecs = 0;
	r = apply_from_file(dir, v, fd, err, sizeof err);
	CHECK_MSG(r == 0, "apply in runs: %s", err);
	CHECK(file_matches(dir, "vm1.raw", &m1));
	CHECK(file_matches(dir, "disks/vm2.qcow2", &m2));
	/* every WRITE but the big one went in a run, and runs are long */
	CHECK_MSG(iovecs_counted == writes - 1, "%u of %u WRITEs in runs", iovecs_counted, writes);
	CHECK_MSG(pwritevs_counted * 4 < iovecs_counted && most_iovecs > 16 &&
		  most_iovecs <= RUN_IOV_MAX, "%u calls, at most %u buffers", pwritevs_counted,
		  most_iovecs);

	apply_io.pwritev_fn = short_pwritev;
	r = apply_from_file(dir, v, fd, err, sizeof err);
	CHECK_MSG(r == 0, "apply in short writes: %s", err);
	CHECK(file_matches(dir, "vm1.raw", &m1));
	CHECK(file_matches(dir, "disks/vm2.qcow2", &m2));

	apply_io.pwritev_fn = failing_pwritev;
	r = apply_from_file(dir, v, fd, err, sizeof err);
	CHECK_MSG(r == -EIO && strstr(err, " WRITEs of LSN ") &&
		  strstr(err, "Input/output error"), "%d %s", r, err);

	/* a record callback that examines the targets sees each WRITE's
	 * effect: no runs */
	apply_io.pwritev_fn = counting_pwritev;
	pwritevs_counted = 0;
	r = apply_counting(dir, v, fd, &counted, true, err, sizeof err);
	CHECK_MSG(r == 0 && counted.n == N && pwritevs_counted == 0, "%d %u records, %u calls: %s",
		  r, counted.n, pwritevs_counted, err);
	CHECK(file_matches(dir, "vm1.raw", &m1));
	CHECK(file_matches(dir, "disks/vm2.qcow2", &m2));
	/* one that only follows the stream lets them run, and a stop in the
	 * middle of a run leaves the targets exactly at that record */
	counted = (struct counted){ 0 };
	r = apply_counting(dir, v, fd, &counted, false, err, sizeof err);
	CHECK_MSG(r == 0 && counted.n == N && pwritevs_counted > 0 &&
		  pwritevs_counted * 4 < writes, "%d %u records, %u calls: %s", r, counted.n,
		  pwritevs_counted, err);
	CHECK(file_matches(dir, "vm1.raw", &m1));
	CHECK(file_matches(dir, "disks/vm2.qcow2", &m2));
	m1.size = m2.size = 0;
	for (int i = 0; i <= STOP; i++)
		model_apply(s[i].image == 2 ? &m2 : &m1, &s[i]);
	counted = (struct counted){ .stop_at = 1000 + STOP };
	r = apply_counting(dir, v, fd, &counted, false, err, sizeof err);
	CHECK_MSG(r == APPLY_STOP && counted.n == STOP + 1, "%d %u records: %s", r, counted.n, err);
	CHECK(file_matches(dir, "vm1.raw", &m1));
	CHECK(file_matches(dir, "disks/vm2.qcow2", &m2));
	CHECK_MSG(last_iovecs > 1, "the stop wrote %u buffers: no run was waiting", last_iovecs);
	/* a callback that fails: the run up to its record is written too */
	counted = (struct counted){ .fail_at = 1000 + STOP };
	r = apply_counting(dir, v, fd, &counted, false, err, sizeof err);
	CHECK_MSG(r == -EIO && counted.n == STOP + 1, "%d %u records: %s", r, counted.n, err);
	CHECK(file_matches(dir, "vm1.raw", &m1));
	CHECK(file_matches(dir, "disks/vm2.qcow2", &m2));
	CHECK_MSG(last_iovecs > 1, "the failure wrote %u buffers: no run was waiting", last_iovecs);
	apply_io = apply_io_default;
	close(fd);
out:
	seg_view_free(v);
	free(bytes);
}

int main(void)
{
	atexit(cleanup_temp_dirs); /* also when a helper gives up with exit(1) */
	for (size_t i = 0; i < sizeof pattern; i++)
		pattern[i] = (uint8_t)rnd(256);
	test_data_records();
	test_random_data(false);
	test_random_segments();
	test_fallbacks();
	test_write_runs();
	test_namespace();
	test_durable_cb();
	test_record_cb();
	test_fsync_failure();
	test_escapes();
	test_block_device();
	test_cache();
	test_new();
	test_resync_records();
	test_sync_events();
	test_hash();
	test_hash_runs_cap();
	test_payload_source();
	return check_done("test_apply");
}
