/*
 * pcwork.c — the power-cut tests' workload and its checker, one program so
 * that both sides regenerate the very same stream of operations.
 *
 *   pcwork init  DIR FILES SIZE SEED
 *   pcwork run   DIR FILES SIZE SEED THREADS SECONDS [DIRECT_PERCENT]
 *   pcwork check DIR FILES SIZE SEED THREADS ACKS [BEFORE_DIR]
 *
 * Files DIR/pc-<i>.img, SIZE bytes each, are made of 4 KiB sectors that
 * describe themselves: a header (magic, file, sector, thread, version,
 * seed) and a filler derived from those, so that a sector read back says
 * which write put it there and whether it is whole.  The 64 KiB chunks of
 * all files are dealt to the threads in turn (neighbouring chunks belong
 * to different threads, so every activity-log extent sees all of them).
 *
 * Thread t's operations come from splitmix64 seeded by (SEED, t): a write
 * of 1 to 16 sectors inside one of its chunks, O_DIRECT or buffered, each
 * with the thread's next version number; or an fsync/fdatasync of one file.
 * `run` prints "S <thread> <op>" on stdout (flushed) each time a sync
 * returned, and nothing else; the ack log may be cut anywhere after a line.
 * With PCWORK_PREFIX set, each line starts with it (a guest prints them
 * on a serial port among other lines).
 *
 * `check` reads the files and the ack log and regenerates each thread's
 * stream: a sector must hold the version that the last acknowledged sync of
 * its file made durable, or a later version that its thread wrote there
 * (written, maybe acknowledged, never synced: a power cut may keep it or
 * not), or, if no sync covered it, its content before the run (BEFORE_DIR,
 * default: the `init` content).  Exit status 0 if every sector is one of
 * those, 1 otherwise (the first problems are printed), 2 on usage errors.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SECTOR 4096u
#define CHUNK_SECTORS 16u
#define MAGIC 0x315443455357435ull /* "PCWSECT1"-ish, any constant */
#define HEADER 40u
#define SYNC_PERCENT 8

struct cfg {
	const char *dir;
	unsigned files;
	uint64_t size;          /* bytes per file */
	uint64_t seed;
	unsigned threads;
	unsigned direct_percent;
	uint64_t sectors;       /* per file */
	uint64_t chunks;        /* in all files */
};

struct op {
	bool sync;
	bool datasync;
	unsigned file;
	uint64_t sector;        /* first sector (within file) */
	unsigned n;
	bool direct;
	uint64_t version;
};

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void fill_sector(const struct cfg *c, uint8_t *p, unsigned file, uint64_t sector,
			unsigned thread, uint64_t version)
{
	uint64_t s = c->seed * 0x100000001B3ull ^ ((uint64_t)file << 48) ^ sector * 0x9E37ull ^
		     version * 0xC2B2AE3D27D4EB4Full;

	put64(p, MAGIC);
	put64(p + 8, (uint64_t)file | (uint64_t)thread << 32);
	put64(p + 16, sector);
	put64(p + 24, version);
	put64(p + 32, c->seed);
	for (unsigned o = HEADER; o + 8 <= SECTOR; o += 8)
		put64(p + o, splitmix(&s));
}

/* What a sector says it is; false if it is not a whole pcwork sector. */
static bool parse_sector(const struct cfg *c, const uint8_t *p, unsigned file, uint64_t sector,
			 uint64_t *seed, unsigned *thread, uint64_t *version)
{
	static __thread uint8_t want[SECTOR];
	struct cfg other;

	if (get64(p) != MAGIC || (unsigned)get64(p + 8) != file || get64(p + 16) != sector)
		return false;
	*thread = (unsigned)(get64(p + 8) >> 32);
	*version = get64(p + 24);
	*seed = get64(p + 32);
	other = *c;
	other.seed = *seed;
	fill_sector(&other, want, file, sector, *thread, *version);
	return memcmp(want, p, SECTOR) == 0;
}

/* Thread t's next operation; st is its generator, *version its counter. */
static void next_op(const struct cfg *c, unsigned t, uint64_t *st, uint64_t *version,
		    struct op *op)
{
	uint64_t own = c->chunks / c->threads + (t < c->chunks % c->threads ? 1 : 0);
	uint64_t r = splitmix(st) % 100;

	memset(op, 0, sizeof *op);
	if (r < SYNC_PERCENT) {
		op->sync = true;
		op->file = (unsigned)(splitmix(st) % c->files);
		op->datasync = splitmix(st) & 1;
		return;
	}
	{
		uint64_t k = splitmix(st) % own;
		uint64_t g = k * c->threads + t;
		uint64_t per_file = c->sectors / CHUNK_SECTORS;
		unsigned s = (unsigned)(splitmix(st) % CHUNK_SECTORS);

		op->n = 1 + (unsigned)(splitmix(st) % (CHUNK_SECTORS - s));
		op->direct = splitmix(st) % 100 < c->direct_percent;
		op->file = (unsigned)(g / per_file);
		op->sector = (g % per_file) * CHUNK_SECTORS + s;
		op->version = ++*version;
	}
}

static uint64_t thread_seed(const struct cfg *c, unsigned t)
{
	return c->seed ^ (uint64_t)(t + 1) * 0xD1B54A32D192ED03ull;
}

static void path_of(const struct cfg *c, unsigned i, char *buf, size_t len)
{
	snprintf(buf, len, "%s/pc-%u.img", c->dir, i);
}

/* ---- init ---- */

static int cmd_init(const struct cfg *c)
{
	uint8_t *buf = malloc(SECTOR * CHUNK_SECTORS);

	for (unsigned f = 0; f < c->files; f++) {
		char path[4096];
		int fd;

		path_of(c, f, path, sizeof path);
		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0) {
			perror(path);
			return 2;
		}
		for (uint64_t s = 0; s < c->sectors; s += CHUNK_SECTORS) {
			for (unsigned k = 0; k < CHUNK_SECTORS; k++)
				fill_sector(c, buf + k * SECTOR, f, s + k, 0, 0);
			if (pwrite(fd, buf, SECTOR * CHUNK_SECTORS, (off_t)(s * SECTOR)) !=
			    (ssize_t)(SECTOR * CHUNK_SECTORS)) {
				perror(path);
				return 2;
			}
		}
		if (fsync(fd) < 0 || close(fd) < 0) {
			perror(path);
			return 2;
		}
	}
	free(buf);
	return 0;
}

/* ---- run ---- */

struct runner {
	const struct cfg *c;
	unsigned t;
	uint64_t deadline_ns;
	int status;
};

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *out_prefix = "";

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *run_thread(void *arg)
{
	struct runner *rn = arg;
	const struct cfg *c = rn->c;
	uint64_t st = thread_seed(c, rn->t), version = 0;
	int *fd = calloc(c->files, sizeof *fd), *dfd = calloc(c->files, sizeof *dfd);
	uint8_t *buf = NULL;

	if (posix_memalign((void **)&buf, SECTOR, SECTOR * CHUNK_SECTORS) || !fd || !dfd) {
		rn->status = 2;
		return NULL;
	}
	for (unsigned f = 0; f < c->files; f++) {
		char path[4096];

		path_of(c, f, path, sizeof path);
		fd[f] = open(path, O_RDWR);
		dfd[f] = open(path, O_RDWR | O_DIRECT);
		if (fd[f] < 0 || dfd[f] < 0) {
			fprintf(stderr, "pcwork: %s: %s\n", path, strerror(errno));
			rn->status = 3;
			return NULL;
		}
	}
	for (uint64_t i = 0; now_ns() < rn->deadline_ns; i++) {
		struct op op;

		next_op(c, rn->t, &st, &version, &op);
		if (op.sync) {
			if ((op.datasync ? fdatasync(fd[op.file]) : fsync(fd[op.file])) < 0) {
				rn->status = 3;
				break;
			}
			pthread_mutex_lock(&out_lock);
			printf("%sS %u %" PRIu64 "\n", out_prefix, rn->t, i);
			fflush(stdout);
			pthread_mutex_unlock(&out_lock);
			continue;
		}
		for (unsigned k = 0; k < op.n; k++)
			fill_sector(c, buf + k * SECTOR, op.file, op.sector + k, rn->t, op.version);
		if (pwrite(op.direct ? dfd[op.file] : fd[op.file], buf, op.n * SECTOR,
			   (off_t)(op.sector * SECTOR)) != (ssize_t)(op.n * SECTOR)) {
			rn->status = 3; /* the mount went away under us */
			break;
		}
	}
	for (unsigned f = 0; f < c->files; f++) {
		close(fd[f]);
		close(dfd[f]);
	}
	free(fd);
	free(dfd);
	free(buf);
	return NULL;
}

static int cmd_run(const struct cfg *c, double seconds)
{
	pthread_t *th = calloc(c->threads, sizeof *th);
	struct runner *rn = calloc(c->threads, sizeof *rn);
	int status = 0;

	if (getenv("PCWORK_PREFIX"))
		out_prefix = getenv("PCWORK_PREFIX");
	for (unsigned t = 0; t < c->threads; t++) {
		rn[t] = (struct runner){ c, t, now_ns() + (uint64_t)(seconds * 1e9), 0 };
		pthread_create(&th[t], NULL, run_thread, &rn[t]);
	}
	for (unsigned t = 0; t < c->threads; t++) {
		pthread_join(th[t], NULL);
		if (rn[t].status > status)
			status = rn[t].status;
	}
	free(th);
	free(rn);
	return status;
}

/* ---- check ---- */

struct sector_state {
	uint64_t durable;   /* version the last acknowledged sync covered (0: none) */
	uint64_t found;     /* version on disk (UINT64_MAX: the "before" content) */
	bool found_ok;
	bool written_found; /* the thread's stream wrote `found` here */
};

static int read_acks(const struct cfg *c, const char *path, int64_t *last)
{
	FILE *f = fopen(path, "r");
	char line[128];

	for (unsigned t = 0; t < c->threads; t++)
		last[t] = -1;
	if (!f) {
		perror(path);
		return -1;
	}
	while (fgets(line, sizeof line, f)) {
		unsigned t;
		uint64_t i;

		if (!strchr(line, '\n'))
			break; /* cut mid-line */
		if (sscanf(line, "S %u %" SCNu64, &t, &i) == 2 && t < c->threads &&
		    (int64_t)i > last[t])
			last[t] = (int64_t)i;
	}
	fclose(f);
	return 0;
}

static int cmd_check(const struct cfg *c, const char *acks, const char *before)
{
	uint64_t n = c->sectors * c->files;
	struct sector_state *ss = calloc(n, sizeof *ss);
	int64_t *last = calloc(c->threads, sizeof *last);
	uint64_t *maxv = calloc(c->threads, sizeof *maxv);
	uint8_t *buf = malloc(SECTOR), *bbuf = malloc(SECTOR);
	uint64_t bad = 0, newer = 0, synced = 0;
	const struct cfg init = *c;

	if (read_acks(c, acks, last) < 0)
		return 2;
	/* 1. What is on disk. */
	for (unsigned f = 0; f < c->files; f++) {
		char path[4096], bpath[4096];
		int fd, bfd = -1;

		path_of(c, f, path, sizeof path);
		fd = open(path, O_RDONLY);
		if (fd < 0) {
			perror(path);
			return 2;
		}
		if (before) {
			struct cfg b = *c;

			b.dir = before;
			path_of(&b, f, bpath, sizeof bpath);
			bfd = open(bpath, O_RDONLY);
			if (bfd < 0) {
				perror(bpath);
				return 2;
			}
		}
		for (uint64_t s = 0; s < c->sectors; s++) {
			struct sector_state *x = &ss[(uint64_t)f * c->sectors + s];
			uint64_t seed, version;
			unsigned th;
			bool same_as_before;

			if (pread(fd, buf, SECTOR, (off_t)(s * SECTOR)) != SECTOR)
				memset(buf, 0, SECTOR);
			if (bfd >= 0) {
				same_as_before = pread(bfd, bbuf, SECTOR, (off_t)(s * SECTOR)) == SECTOR &&
						 memcmp(buf, bbuf, SECTOR) == 0;
			} else {
				fill_sector(&init, bbuf, f, s, 0, 0);
				same_as_before = memcmp(buf, bbuf, SECTOR) == 0;
			}
			x->found_ok = parse_sector(c, buf, f, s, &seed, &th, &version);
			if (x->found_ok && seed == c->seed && version > 0) {
				x->found = version;
				if (th < c->threads && version > maxv[th])
					maxv[th] = version;
			} else if (same_as_before) {
				x->found = UINT64_MAX;
				x->found_ok = true;
			} else {
				x->found_ok = false;
			}
		}
		close(fd);
		if (bfd >= 0)
			close(bfd);
	}
	/* 2. Each thread's stream: what its acknowledged syncs made durable,
	 * and whether what is on disk is something it wrote there. */
	for (unsigned t = 0; t < c->threads; t++) {
		uint64_t st = thread_seed(c, t), version = 0;
		uint64_t *cur = calloc(n, sizeof *cur);

		for (uint64_t i = 0; (int64_t)i <= last[t] || version < maxv[t]; i++) {
			struct op op;

			next_op(c, t, &st, &version, &op);
			if (op.sync) {
				if ((int64_t)i > last[t])
					continue;
				for (uint64_t s = 0; s < c->sectors; s++) {
					uint64_t k = (uint64_t)op.file * c->sectors + s;

					if (cur[k])
						ss[k].durable = cur[k];
				}
				continue;
			}
			for (unsigned k = 0; k < op.n; k++) {
				uint64_t idx = (uint64_t)op.file * c->sectors + op.sector + k;

				cur[idx] = op.version;
				if (ss[idx].found == op.version)
					ss[idx].written_found = true;
			}
		}
		free(cur);
	}
	/* 3. The verdict, sector by sector. */
	for (uint64_t k = 0; k < n; k++) {
		struct sector_state *x = &ss[k];
		const char *why = NULL;

		if (!x->found_ok)
			why = "holds no whole sector of this run or the one before";
		else if (x->found == UINT64_MAX && x->durable)
			why = "lost a synced write (holds its content from before the run)";
		else if (x->found != UINT64_MAX && x->found < x->durable)
			why = "lost a synced write (holds an older version)";
		else if (x->found != UINT64_MAX && !x->written_found)
			why = "holds a version its thread never wrote there";
		if (why) {
			if (bad < 10)
				printf("file %" PRIu64 " sector %" PRIu64 ": %s (on disk %" PRId64
				       ", synced %" PRIu64 ")\n", k / c->sectors, k % c->sectors, why,
				       x->found == UINT64_MAX ? -1 : (int64_t)x->found, x->durable);
			bad++;
		} else if (x->durable) {
			synced++;
			if (x->found > x->durable)
				newer++;
		}
	}
	printf("%" PRIu64 " sectors: %" PRIu64 " covered by an acknowledged sync (%" PRIu64
	       " of them newer), %" PRIu64 " bad\n", n, synced, newer, bad);
	free(ss);
	free(last);
	free(maxv);
	free(buf);
	free(bbuf);
	return bad ? 1 : 0;
}

static uint64_t parse_size(const char *s)
{
	char *end;
	uint64_t v = strtoull(s, &end, 10);

	switch (*end) {
	case 'K': return v << 10;
	case 'M': return v << 20;
	case 'G': return v << 30;
	default: return v;
	}
}

int main(int argc, char **argv)
{
	struct cfg c = { 0 };

	if (argc < 6)
		goto usage;
	c.dir = argv[2];
	c.files = (unsigned)atoi(argv[3]);
	c.size = parse_size(argv[4]);
	c.seed = strtoull(argv[5], NULL, 10);
	c.threads = 1;
	c.direct_percent = 50;
	c.sectors = c.size / SECTOR;
	if (!c.files || c.size % (SECTOR * CHUNK_SECTORS) || !c.sectors)
		goto usage;
	if (strcmp(argv[1], "init") == 0 && argc == 6) {
		c.threads = 1;
		c.chunks = c.files * (c.sectors / CHUNK_SECTORS);
		return cmd_init(&c);
	}
	if (argc < 8)
		goto usage;
	c.threads = (unsigned)atoi(argv[6]);
	c.chunks = c.files * (c.sectors / CHUNK_SECTORS);
	if (!c.threads || c.threads > c.chunks)
		goto usage;
	if (strcmp(argv[1], "run") == 0 && argc <= 9) {
		if (argc == 9)
			c.direct_percent = (unsigned)atoi(argv[8]);
		return cmd_run(&c, atof(argv[7]));
	}
	if (strcmp(argv[1], "check") == 0 && argc <= 9)
		return cmd_check(&c, argv[7], argc == 9 ? argv[8] : NULL);
usage:
	fprintf(stderr, "usage: pcwork init DIR FILES SIZE SEED\n"
			"       pcwork run DIR FILES SIZE SEED THREADS SECONDS [DIRECT_PERCENT]\n"
			"       pcwork check DIR FILES SIZE SEED THREADS ACKS [BEFORE_DIR]\n");
	return 2;
}
