/*
 * cmd_restore.c — `aimctl restore --from URL --until POINT --target-dir DIR`:
 * rebuilds a group's images as they were at a point, from what an object
 * store keeps (docs/OBJECT-STORES.md), with the replay engine of `aimctl
 * replay` (replay.c) and so the very applier aim-remote runs.
 *
 * A restore starts at a base: a full sync recorded in the bucket's HEAD,
 * from whose first segment (opening with SYNC_BEGIN) the segments applied
 * onto empty targets give exact images at its SYNC_END and at every
 * consistent point after it.  The newest base that can reach the point is
 * used: for an LSN or a time, the newest one complete by then; for a mark,
 * whose LSN only the segments say, the newest one complete before the
 * mark, found by reading back from the newest base.  Segments are
 * downloaded from the base up to the one holding the point (for a time:
 * up to the first one sealed after it), validated as one run, and the
 * point is found in them exactly as `aimctl replay --until` finds it.  A
 * point inside a resynchronisation (between a SYNC_BEGIN and its
 * SYNC_END) is refused: the images are not a copy of any instant there.
 *
 * It says which base and which last record it used.  Exit status: 0, 1
 * (the reason on stderr; DIR is left as it was when nothing was applied),
 * 2 usage.
 */
#include "aimctl.h"
#include "fileio.h"
#include "clock.h"
#include "log.h"
#include "parallel.h"
#include "parse.h"
#include "s3.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEAD_MAX (1u << 20)
#define SEGMENT_MAX (4ULL << 30)

/* Segments downloaded at once: a store answers each GET after a round trip
 * of its own, and a day of small eagerly sealed segments is many GETs. */
#define RESTORE_PARALLEL 8

struct restore {
	struct s3 *s3[RESTORE_PARALLEL]; /* one client per download in flight */
	char group[37];
	struct s3_head head;
	char *dir;            /* where the segments are downloaded */
	uint64_t lo, hi;      /* downloaded: segments lo..hi (0: none) */
	uint64_t bytes;
};

/* One segment's download, on a thread of its own. */
struct fetch {
	const struct restore *rs;
	struct s3 *s3;
	uint64_t n;
	uint64_t bytes;
	int r;
	char error[4400];     /* what failed: a path and why, or the store's answer */
};

static int fd_sink(void *ctx, const void *data, size_t len)
{
	return fileio_write_full(*(int *)ctx, data, len);
}

static void segment_path(const struct restore *rs, uint64_t n, char *path, size_t len)
{
	char file[SEG_FILE_NAME_LEN + 8];

	seg_file_name(n, SEG_FILE_SUFFIX, file);
	snprintf(path, len, "%s/%s", rs->dir, file);
}

/* Downloads segment f->n into the work directory; the error is kept in f
 * for the caller to report only if it needs the segment. */
static void fetch_one(void *arg)
{
	struct fetch *f = arg;
	char file[SEG_FILE_NAME_LEN + 8], key[128], path[4200];
	struct s3_reply rep;
	struct stat st;
	int fd;

	seg_file_name(f->n, SEG_FILE_SUFFIX, file);
	snprintf(key, sizeof key, "%s/%s", f->rs->group, file);
	segment_path(f->rs, f->n, path, sizeof path);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0) {
		f->r = -errno;
		snprintf(f->error, sizeof f->error, "%s: %s", path, strerror(-f->r));
		return;
	}
	f->r = s3_fetch(f->s3, key, fd_sink, &fd, SEGMENT_MAX, &rep);
	if (f->r == 0 && fstat(fd, &st) == 0)
		f->bytes = (uint64_t)st.st_size;
	close(fd);
	if (f->r < 0)
		snprintf(f->error, sizeof f->error, "%s",
			 f->r == -EIO || f->r == -ENOENT || f->r == -EBADMSG || f->r == -EFBIG
			 ? rep.error : strerror(-f->r));
}

/* Downloads segments first..first+count-1 (count <= RESTORE_PARALLEL) at
 * once; each one's outcome in f[]. */
static void fetch_batch(const struct restore *rs, uint64_t first, unsigned count, struct fetch *f)
{
	for (unsigned i = 0; i < count; i++)
		f[i] = (struct fetch){ .rs = rs, .s3 = rs->s3[i], .n = first + i };
	parallel_each(fetch_one, f, sizeof *f, count);
}

/* The outcome of f's download, opened; 0 or the error (reported). */
static int fetched(struct restore *rs, const struct fetch *f, struct seg_view **v)
{
	char path[4200];
	struct seg_err e;
	int r;

	if (f->r < 0) {
		log_error("%s", f->error);
		return f->r;
	}
	rs->bytes += f->bytes;
	segment_path(rs, f->n, path, sizeof path);
	r = seg_view_open(path, v, &e);
	if (r < 0) {
		report_seg_err(path, r, &e);
		return r;
	}
	if (seg_view_header(*v)->number != f->n) {
		log_error("%s/%s in the bucket says it is segment %" PRIu64, rs->group,
			  strrchr(path, '/') + 1, seg_view_header(*v)->number);
		seg_view_free(*v);
		return -EBADMSG;
	}
	return 0;
}

/* Removes downloads a restore does not use: past its point, or past one
 * that failed (which stays, as the one-at-a-time download left it). */
static void discard(const struct restore *rs, const struct fetch *f, unsigned count)
{
	char path[4200];

	for (unsigned i = 0; i < count; i++) {
		segment_path(rs, f[i].n, path, sizeof path);
		unlink(path);
	}
}

/* True if v holds a MARK named name; its LSN in *lsn (the first one). */
static bool has_mark(struct seg_view *v, const char *name, uint64_t *lsn)
{
	struct seg_record r;

	seg_view_rewind(v);
	while (seg_view_next(v, &r) == 1)
		if (r.type == SEG_MARK && r.payload_len == strlen(name) &&
		    memcmp(r.payload, name, r.payload_len) == 0) {
			*lsn = r.lsn;
			seg_view_rewind(v);
			return true;
		}
	seg_view_rewind(v);
	return false;
}

/*
 * Downloads forward from rs->hi + 1 (or from `from` when nothing is here)
 * until the point is covered: the segment ending at or after LSN lsn, the
 * first sealed after time_ns, the one holding the mark, or HEAD's last.
 * *mark_lsn gets the mark's LSN when found.  Segments are fetched
 * RESTORE_PARALLEL at a time and looked at in order; those past the one
 * that covers the point are removed unread.
 */
static int download_forward(struct restore *rs, uint64_t from, const struct point_spec *spec,
			    uint64_t *mark_lsn)
{
	uint64_t n = rs->hi ? rs->hi + 1 : from;
	struct fetch f[RESTORE_PARALLEL];

	if (!rs->lo)
		rs->lo = from;
	while (n <= rs->head.segment) {
		uint64_t left = rs->head.segment - n + 1;
		unsigned count = left < RESTORE_PARALLEL ? (unsigned)left : RESTORE_PARALLEL;

		fetch_batch(rs, n, count, f);
		for (unsigned i = 0; i < count; i++, n++) {
			struct seg_view *v;
			bool done = false;
			int r = fetched(rs, &f[i], &v);

			if (r < 0) {
				discard(rs, f + i + 1, count - i - 1);
				return r;
			}
			rs->hi = n;
			if (spec->kind == POINT_LSN)
				done = seg_view_last_lsn(v) >= spec->lsn;
			else if (spec->kind == POINT_TIME)
				done = seg_view_trailer(v) &&
				       seg_view_trailer(v)->sealed_ns > spec->time_ns;
			else
				done = has_mark(v, spec->mark, mark_lsn);
			seg_view_free(v);
			if (done) {
				discard(rs, f + i + 1, count - i - 1);
				return 0;
			}
		}
	}
	return 0;
}

/* Downloads segments from..rs->lo-1 (an older base's), RESTORE_PARALLEL
 * at a time; *mark_lsn gets a mark found among them. */
static int download_back(struct restore *rs, uint64_t from, const struct point_spec *spec,
			 uint64_t *mark_lsn)
{
	struct fetch f[RESTORE_PARALLEL];
	uint64_t found = 0;

	for (uint64_t n = from; n < rs->lo;) {
		uint64_t left = rs->lo - n;
		unsigned count = left < RESTORE_PARALLEL ? (unsigned)left : RESTORE_PARALLEL;

		fetch_batch(rs, n, count, f);
		for (unsigned i = 0; i < count; i++, n++) {
			struct seg_view *v;
			uint64_t l;
			int r = fetched(rs, &f[i], &v);

			if (r < 0) {
				discard(rs, f + i + 1, count - i - 1);
				return r;
			}
			if (spec->kind == POINT_MARK && !found && has_mark(v, spec->mark, &l))
				found = l;
			seg_view_free(v);
		}
	}
	rs->lo = from;
	if (found)
		*mark_lsn = found;
	return 0;
}

/* True if a SYNC_BEGIN at lsn opened a base other than the one the
 * restore starts from: a snapshot, which skipped nothing. */
static bool later_base(const struct s3_head *h, const struct s3_base *from, uint64_t lsn)
{
	if (lsn == from->lsn)
		return false;
	for (size_t i = 0; i < h->nbases; i++)
		if (h->bases[i].lsn == lsn)
			return true;
	return h->pending.segment && h->pending.lsn == lsn;
}

/*
 * Refuses a point inside a resynchronisation: a SYNC_BEGIN with no SYNC_END
 * by then.  The base's own full sync ends before any point a restore takes
 * (it is chosen so).  A later base's SYNC_BEGIN does not count: a snapshot
 * skips nothing, so its records only write, at each LSN, the bytes the
 * images hold then, and images exact before it stay exact throughout.  Any
 * other (a journal overflow's, a power loss's) follows data the stream
 * lacks: the images are not a copy of an instant until its SYNC_END.
 */
static int consistent_at(struct series *s, const struct s3_head *h, const struct s3_base *base,
			 uint64_t lsn)
{
	uint64_t open_lsn = 0;
	uint32_t dest = 0;

	for (size_t i = 0; i < s->n; i++) {
		struct seg_view *v = s->files[i].view;
		struct seg_record r;

		seg_view_rewind(v);
		while (seg_view_next(v, &r) == 1 && r.lsn <= lsn) {
			if (r.type == SEG_SYNC_BEGIN && !open_lsn && !later_base(h, base, r.lsn)) {
				open_lsn = r.lsn;
				dest = r.aux;
			} else if (r.type == SEG_SYNC_END) {
				open_lsn = 0;
			}
		}
		seg_view_rewind(v);
	}
	if (open_lsn) {
		log_error("LSN %" PRIu64 " lies inside a resynchronisation (destination %" PRIu32
			  "'s SYNC_BEGIN at LSN %" PRIu64 " has no SYNC_END by then): the images were"
			  " not a copy of any instant there; choose a point before it or after its"
			  " end", lsn, dest, open_lsn);
		return -EINVAL;
	}
	return 0;
}

static int one_group(void *ctx, const char *name)
{
	struct restore *rs = ctx;
	uint8_t id[16];

	if (seg_uuid_parse(name, id) < 0 || strlen(name) != 36)
		return 0;
	if (rs->group[0]) {
		log_error("the bucket holds several groups (%s, %s, ...): give --group", rs->group,
			  name);
		return -EINVAL;
	}
	memcpy(rs->group, name, 37);
	return 0;
}

static bool dir_empty(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	bool empty = true;

	if (!d)
		return true;
	while (empty && (de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			empty = false;
	closedir(d);
	return empty;
}

static void remove_dir(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	char p[4200];

	if (!d)
		return;
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
			snprintf(p, sizeof p, "%s/%s", path, de->d_name);
			unlink(p);
		}
	closedir(d);
	rmdir(path);
}

static void usage_restore(FILE *f)
{
	fprintf(f, "usage: aimctl restore --from URL --until LSN|TIME|MARK:NAME --target-dir DIR\n"
		   "                     [--group UUID] [--access-key-file F --secret-key-file F]\n"
		   "                     [--region R] [--ca-file F] [--segments-dir DIR] [-v]\n");
}

int cmd_restore(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "from", required_argument, NULL, 'f' },
		{ "until", required_argument, NULL, 'u' },
		{ "target-dir", required_argument, NULL, 't' },
		{ "group", required_argument, NULL, 'g' },
		{ "access-key-file", required_argument, NULL, 'A' },
		{ "secret-key-file", required_argument, NULL, 'K' },
		{ "region", required_argument, NULL, 'r' },
		{ "ca-file", required_argument, NULL, 'C' },
		{ "segments-dir", required_argument, NULL, 'd' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *from = NULL, *until_arg = NULL, *target = NULL, *akf = NULL, *skf = NULL;
	const char *region = NULL, *ca = NULL, *keep_dir = NULL;
	struct restore rs = { 0 };
	struct series s = { 0 };
	struct applier *a = NULL;
	struct apply_stats st;
	struct point_spec spec;
	struct point pt;
	const struct s3_base *base = NULL;
	struct s3_reply rep;
	char *ak = NULL, *sk = NULL, *text = NULL, why[400], pbuf[400], t1[64], t2[64], sbuf[32];
	char *dirs[1];
	uint64_t durable, mark_lsn = 0;
	size_t len;
	int c, r, status = 1;
	bool made_dir = false;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":vh", opts, NULL)) != -1) {
		switch (c) {
		case 'f': from = optarg; break;
		case 'u': until_arg = optarg; break;
		case 't': target = optarg; break;
		case 'g':
			if (strlen(optarg) != 36 || seg_uuid_parse(optarg, (uint8_t[16]){ 0 }) < 0)
				return usage_error("restore: --group takes a group UUID, not \"%s\"", optarg);
			memcpy(rs.group, optarg, 37);
			break;
		case 'A': akf = optarg; break;
		case 'K': skf = optarg; break;
		case 'r': region = optarg; break;
		case 'C': ca = optarg; break;
		case 'd': keep_dir = optarg; break;
		case 'v': log_set_level(LOG_LVL_DEBUG); break;
		case 'h':
			usage_restore(stdout);
			return 0;
		case ':':
			return usage_error("restore: %s needs an argument", argv[optind - 1]);
		default:
			return usage_error("restore: unknown option %s", argv[optind - 1]);
		}
	}
	if (!from || !until_arg || !target)
		return usage_error("restore: --from URL, --until POINT and --target-dir DIR are"
				   " required");
	if (optind < argc)
		return usage_error("restore: unexpected argument \"%s\"", argv[optind]);
	if (point_parse(until_arg, &spec, why, sizeof why) < 0)
		return usage_error("restore: --until: %s", why);
	if (mkdir(target, 0755) == 0)
		made_dir = true;
	else if (errno != EEXIST) {
		log_error("--target-dir %s: %m", target);
		return 1;
	}
	if (!dir_empty(target)) {
		log_error("--target-dir %s is not empty: a restore writes a new copy", target);
		return 1;
	}
	if (s3_keys_load(akf, skf, &ak, &sk, why, sizeof why) < 0) {
		log_error("%s", why);
		goto out;
	}
	{
		struct s3_options o = { .url = from, .region = region, .access_key = ak,
					.secret_key = sk, .ca_file = ca };

		for (unsigned i = 0; i < RESTORE_PARALLEL; i++)
			if (s3_new(&o, &rs.s3[i], why, sizeof why) < 0) {
				log_error("--from %s: %s", from, why);
				goto out;
			}
	}

	/* 1. The group and its HEAD: what the bucket holds. */
	if (!rs.group[0]) {
		r = s3_list_dirs(rs.s3[0], one_group, &rs, &rep);
		if (r < 0) {
			if (r != -EINVAL)
				log_error("%s", rep.error);
			goto out;
		}
		if (!rs.group[0]) {
			log_error("%s holds no consistency group", from);
			goto out;
		}
	}
	snprintf(pbuf, sizeof pbuf, "%s/%s", rs.group, S3_HEAD_KEY);
	r = s3_get_small(rs.s3[0], pbuf, NULL, HEAD_MAX, &text, &len, &rep);
	if (r < 0) {
		log_error("%s", rep.error);
		goto out;
	}
	r = s3_head_parse(text, len, &rs.head, why, sizeof why);
	free(text);
	if (r < 0) {
		log_error("%s/%s: %s", from, pbuf, why);
		goto out;
	}
	if (!rs.head.nbases) {
		log_error("%s holds no complete base for group %s (a full sync recorded in HEAD):"
			  " nothing to restore from yet", from, rs.group);
		goto out;
	}
	if (spec.kind == POINT_LSN && spec.lsn > rs.head.lsn) {
		log_error("LSN %" PRIu64 " is past the last one in the bucket (%" PRIu64 ")", spec.lsn,
			  rs.head.lsn);
		goto out;
	}

	/* 2. The segments, from the newest base that can reach the point. */
	if (keep_dir) {
		if (mkdir(keep_dir, 0750) < 0 && errno != EEXIST) {
			log_error("--segments-dir %s: %m", keep_dir);
			goto out;
		}
		if (!dir_empty(keep_dir)) {
			log_error("--segments-dir %s is not empty", keep_dir);
			goto out;
		}
		rs.dir = strdup(keep_dir);
	} else {
		rs.dir = strdup("/var/tmp/aimctl-restore.XXXXXX");
		if (rs.dir && !mkdtemp(rs.dir)) {
			log_error("cannot make a directory for the segments: %m");
			free(rs.dir);
			rs.dir = NULL;
			goto out;
		}
	}
	if (!rs.dir) {
		log_error("out of memory");
		goto out;
	}
	for (size_t i = rs.head.nbases; i-- > 0 && !base;) {
		const struct s3_base *b = &rs.head.bases[i];

		if (b->segment < rs.head.oldest)
			break;
		if ((spec.kind == POINT_LSN && b->end_lsn > spec.lsn) ||
		    (spec.kind == POINT_TIME && b->end_time_ns > spec.time_ns))
			continue;
		r = rs.lo ? download_back(&rs, b->segment, &spec, &mark_lsn)
			  : download_forward(&rs, b->segment, &spec, &mark_lsn);
		if (r < 0)
			goto out;
		if (spec.kind == POINT_MARK && (!mark_lsn || mark_lsn < b->end_lsn))
			continue; /* not found, or before this base is complete: an older one */
		base = b;
	}
	if (!base) {
		if (spec.kind == POINT_MARK)
			log_error("no mark \"%s\" after a complete base in %s (the bucket keeps"
				  " segments %" PRIu64 "..%" PRIu64 ")", spec.mark, from, rs.head.oldest,
				  rs.head.segment);
		else
			log_error("no base in %s is complete by %s: the oldest kept completes at LSN %"
				  PRIu64 " (%s)", from, spec.text, rs.head.bases[0].end_lsn,
				  clock_iso8601(rs.head.bases[0].end_time_ns, 3, t1, sizeof t1));
		goto out;
	}
	/* The base's segments, and an older base's if a mark took us there. */
	dirs[0] = rs.dir;
	if (series_open(&s, dirs, 1, true) < 0)
		goto out;
	/* ... only from the chosen base on */
	while (s.n && seg_view_header(s.files[0].view)->number < base->segment) {
		seg_view_free(s.files[0].view);
		unlink(s.files[0].path);
		free(s.files[0].path);
		memmove(s.files, s.files + 1, --s.n * sizeof *s.files);
	}
	if (series_find(&s, &spec, &pt) < 0)
		goto out;
	if (pt.lsn < base->end_lsn) {
		log_error("%s lies inside the base's full sync (LSN %" PRIu64 "..%" PRIu64 ")",
			  spec.text, base->lsn, base->end_lsn);
		goto out;
	}
	if (consistent_at(&s, &rs.head, base, pt.lsn) < 0)
		goto out;

	/* 3. Apply, as aim-remote would, and stop right after the point. */
	if (applier_new(target, &a) < 0)
		goto out;
	if (series_apply(&s, a, 0, pt.lsn, NULL, NULL, &durable) < 0)
		goto out;
	applier_stats(a, &st);
	printf("restored group %s from %s into %s\n", rs.group, from, target);
	printf("base: segment %" PRIu64 " (full sync from LSN %" PRIu64 " at %s, complete at LSN %"
	       PRIu64 " at %s)\n", base->segment, base->lsn,
	       clock_iso8601(base->time_ns, 3, t1, sizeof t1), base->end_lsn,
	       clock_iso8601(base->end_time_ns, 3, t2, sizeof t2));
	printf("last record: %s", point_describe(&pt, pbuf, sizeof pbuf));
	if (spec.kind == POINT_TIME)
		printf(", the last barrier at or before %s",
		       clock_iso8601(spec.time_ns, 9, t1, sizeof t1));
	printf("\napplied segments %" PRIu64 "..%" PRIu64 " (%s downloaded): %" PRIu64
	       " records, %" PRIu64 " bytes written\n", base->segment, pt.segment,
	       format_size(rs.bytes, sbuf, sizeof sbuf), st.records, st.bytes_written);
	status = 0;
out:
	applier_free(a);
	series_close(&s);
	if (rs.dir && !keep_dir)
		remove_dir(rs.dir);
	if (status && made_dir)
		rmdir(target);
	free(rs.dir);
	for (unsigned i = 0; i < RESTORE_PARALLEL; i++)
		s3_free(rs.s3[i]);
	if (ak)
		memset(ak, 0, strlen(ak));
	if (sk)
		memset(sk, 0, strlen(sk));
	free(ak);
	free(sk);
	return status;
}
