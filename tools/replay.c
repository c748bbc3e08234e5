/*
 * replay.c — the replay engine that `aimctl replay` and `aimctl check`
 * share: the segments a replay reads, validated whole and as one run
 * before anything is applied; where a point an operator names (an LSN, a
 * time, a mark) lies in them; and driving the applier (apply.h, the code
 * aim-remote runs) through them up to that point, with a hook after every
 * record.
 *
 * A point is always a record: a replay "until" it stops right after it.
 * A time names the last barrier (FLUSH) journaled at or before it, because
 * only a barrier is a state the source promised was durable; between two
 * barriers the records' times say when they were journaled, not what a
 * crash at that instant would have left.
 */
#include "aimctl.h"
#include "clock.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- the series ---- */

static int by_number(const void *x, const void *y)
{
	const struct seg_file *a = x, *b = y;
	uint64_t na = seg_view_header(a->view)->number, nb = seg_view_header(b->view)->number;

	return na < nb ? -1 : na > nb;
}

static int add_file(struct series *s, char *path)
{
	struct seg_file *nf = realloc(s->files, (s->n + 1) * sizeof *nf);

	if (!nf) {
		free(path);
		return -ENOMEM;
	}
	s->files = nf;
	nf[s->n].path = path;
	nf[s->n].view = NULL;
	s->n++;
	return 0;
}

/* Adds the sealed segment files of a directory; ".open" files and anything
 * else are ignored.  The numeric order comes from sorting later. */
static int add_dir(struct series *s, const char *dir)
{
	struct dirent *de;
	size_t before = s->n;
	DIR *d = opendir(dir);

	if (!d) {
		log_error("%s: %m", dir);
		return -errno;
	}
	while ((de = readdir(d))) {
		uint64_t num;
		char *p;

		if (seg_parse_file_name(de->d_name, &num) < 0)
			continue;
		if (asprintf(&p, "%s/%s", dir, de->d_name) < 0 || add_file(s, p) < 0) {
			closedir(d);
			log_error("out of memory");
			return -ENOMEM;
		}
	}
	closedir(d);
	if (s->n == before) {
		log_error("%s: no sealed segments (*%s) in this directory", dir, SEG_FILE_SUFFIX);
		return -ENOENT;
	}
	return 0;
}

/* One group, increasing numbers, contiguous LSNs.  Logs the first problem. */
static int check_run(const struct series *s)
{
	const struct seg_file *f = s->files;
	const struct seg_header *h0 = seg_view_header(f[0].view);
	char u0[37], u1[37];

	for (size_t i = 1; i < s->n; i++) {
		const struct seg_header *h = seg_view_header(f[i].view);
		const struct seg_header *p = seg_view_header(f[i - 1].view);
		uint64_t prev_last = seg_view_last_lsn(f[i - 1].view);

		if (memcmp(h->group, h0->group, 16) != 0) {
			seg_uuid_format(h0->group, u0);
			seg_uuid_format(h->group, u1);
			log_error("%s belongs to group %s but %s to group %s: give one group's segments",
				  f[i].path, u1, f[0].path, u0);
			return -EINVAL;
		}
		if (h->number == p->number) {
			log_error("segment %" PRIu64 " is given twice: %s and %s", h->number,
				  f[i - 1].path, f[i].path);
			return -EINVAL;
		}
		if (h->first_lsn != prev_last + 1) {
			log_error("%s starts at LSN %" PRIu64 " but %s ends at LSN %" PRIu64
				  " (expected %" PRIu64 "): %s",
				  f[i].path, h->first_lsn, f[i - 1].path, prev_last, prev_last + 1,
				  h->first_lsn > prev_last + 1 ? "segments are missing in between"
							      : "the segments overlap");
			return -EINVAL;
		}
	}
	return 0;
}

int series_open(struct series *s, char *const *args, int nargs, bool one_run)
{
	int r = 0;

	s->files = NULL;
	s->n = 0;
	for (int i = 0; i < nargs && r == 0; i++) {
		struct stat sb;
		char *p;

		if (stat(args[i], &sb) < 0) {
			log_error("%s: %m", args[i]);
			r = -errno;
		} else if (S_ISDIR(sb.st_mode)) {
			r = add_dir(s, args[i]);
		} else {
			p = strdup(args[i]);
			r = p ? add_file(s, p) : -ENOMEM;
			if (r < 0)
				log_error("out of memory");
		}
	}
	for (size_t i = 0; i < s->n && r == 0; i++) {
		struct seg_err e;

		r = seg_view_open(s->files[i].path, &s->files[i].view, &e);
		if (r < 0)
			report_seg_err(s->files[i].path, r, &e);
	}
	if (r == 0 && s->n == 0) {
		log_error("no segments given");
		r = -ENOENT;
	}
	if (r == 0) {
		qsort(s->files, s->n, sizeof *s->files, by_number);
		r = one_run ? check_run(s) : 0;
	}
	if (r < 0)
		series_close(s);
	return r;
}

void series_close(struct series *s)
{
	for (size_t i = 0; i < s->n; i++) {
		seg_view_free(s->files[i].view);
		free(s->files[i].path);
	}
	free(s->files);
	s->files = NULL;
	s->n = 0;
}

uint64_t series_first_lsn(const struct series *s)
{
	return seg_view_header(s->files[0].view)->first_lsn;
}

uint64_t series_last_lsn(const struct series *s)
{
	return seg_view_last_lsn(s->files[s->n - 1].view);
}

const uint8_t *series_group(const struct series *s)
{
	return seg_view_header(s->files[0].view)->group;
}

/* ---- points ---- */

const char *point_describe(const struct point *p, char *buf, size_t len)
{
	char tbuf[64];

	if (p->type == SEG_MARK)
		snprintf(buf, len, "LSN %" PRIu64 " (MARK \"%s\", segment %" PRIu64 ", %s)", p->lsn,
			 p->label, p->segment, clock_iso8601(p->time_ns, 9, tbuf, sizeof tbuf));
	else
		snprintf(buf, len, "LSN %" PRIu64 " (%s, segment %" PRIu64 ", %s)", p->lsn,
			 seg_type_name(p->type), p->segment,
			 clock_iso8601(p->time_ns, 9, tbuf, sizeof tbuf));
	return buf;
}

static void point_from(struct point *pt, const struct seg_view *v, const struct seg_record *r)
{
	memset(pt, 0, sizeof *pt);
	pt->lsn = r->lsn;
	pt->segment = seg_view_header(v)->number;
	pt->time_ns = r->time_ns;
	pt->type = r->type;
	if (r->type == SEG_MARK)
		snprintf(pt->label, sizeof pt->label, "%.*s", (int)r->payload_len,
			 (const char *)r->payload);
}

/* Lists up to a few marks' names into buf, for "there are ..." messages. */
static void mark_names(struct series *s, char *buf, size_t len)
{
	struct seg_record r;
	size_t n = 0, count = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < s->n; i++) {
		seg_view_rewind(s->files[i].view);
		while (seg_view_next(s->files[i].view, &r) == 1) {
			if (r.type != SEG_MARK)
				continue;
			if (count++ < 5 && n < len)
				n += (size_t)snprintf(buf + n, len - n, "%s\"%.*s\"", n ? ", " : "",
						      (int)r.payload_len, (const char *)r.payload);
		}
	}
	if (count > 5 && n < len)
		snprintf(buf + n, len - n, " and %zu more", count - 5);
	if (!count)
		snprintf(buf, len, "none");
}

static int find_lsn(struct series *s, const struct point_spec *spec, struct point *out)
{
	uint64_t first = series_first_lsn(s), last = series_last_lsn(s);
	struct seg_record r;

	if (spec->lsn < first || spec->lsn > last) {
		log_error("LSN %" PRIu64 " names no record: these segments hold LSN %" PRIu64 "..%"
			  PRIu64, spec->lsn, first, last);
		return -ENOENT;
	}
	for (size_t i = 0; i < s->n; i++) {
		struct seg_view *v = s->files[i].view;

		if (seg_view_last_lsn(v) < spec->lsn)
			continue;
		seg_view_rewind(v);
		while (seg_view_next(v, &r) == 1)
			if (r.lsn == spec->lsn) {
				point_from(out, v, &r);
				return 0;
			}
	}
	log_error("%s names no record", spec->text); /* unreachable: LSNs are contiguous */
	return -ENOENT;
}

static int find_mark(struct series *s, const struct point_spec *spec, struct point *out)
{
	size_t len = strlen(spec->mark);
	struct seg_record r;
	bool found = false;
	char names[512];

	for (size_t i = 0; i < s->n; i++) {
		struct seg_view *v = s->files[i].view;

		seg_view_rewind(v);
		while (seg_view_next(v, &r) == 1) {
			if (r.type != SEG_MARK || r.payload_len != len ||
			    memcmp(r.payload, spec->mark, len) != 0)
				continue;
			if (found) {
				log_error("%s: two MARKs carry that name, at LSN %" PRIu64
					  " and LSN %" PRIu64 "; name the one you mean by its LSN",
					  spec->text, out->lsn, r.lsn);
				return -EINVAL;
			}
			point_from(out, v, &r);
			found = true;
		}
	}
	if (!found) {
		mark_names(s, names, sizeof names);
		log_error("%s names no record: no MARK \"%s\" in these segments (LSN %" PRIu64
			  "..%" PRIu64 "; their marks: %s)", spec->text, spec->mark,
			  series_first_lsn(s), series_last_lsn(s), names);
		return -ENOENT;
	}
	return 0;
}

static int find_time(struct series *s, const struct point_spec *spec, struct point *out)
{
	struct seg_record r, first_rec = { 0 };
	bool have_barrier = false, have_first = false, have_later = false;
	uint64_t later_ns = 0;
	char tbuf[64], fbuf[64];

	for (size_t i = 0; i < s->n && !have_later; i++) {
		struct seg_view *v = s->files[i].view;

		seg_view_rewind(v);
		while (seg_view_next(v, &r) == 1) {
			if (!have_first) {
				first_rec = r;
				have_first = true;
			}
			if (r.time_ns > spec->time_ns) {
				have_later = true;
				later_ns = r.time_ns;
				break;
			}
			if (r.type == SEG_FLUSH) {
				point_from(out, v, &r);
				have_barrier = true;
			}
		}
	}
	if (!have_barrier) {
		if (!have_first)
			log_error("%s: these segments hold no record", spec->text);
		else
			log_error("%s names no point: no barrier (FLUSH) was journaled at or"
				  " before %s; the first record is LSN %" PRIu64 " at %s",
				  spec->text, clock_iso8601(spec->time_ns, 9, tbuf, sizeof tbuf),
				  first_rec.lsn, clock_iso8601(first_rec.time_ns, 9, fbuf, sizeof fbuf));
		return -ENOENT;
	}
	out->after_end = !have_later;
	out->next_time_ns = later_ns;
	return 0;
}

int series_find(struct series *s, const struct point_spec *spec, struct point *out)
{
	memset(out, 0, sizeof *out);
	switch (spec->kind) {
	case POINT_LSN:
		return find_lsn(s, spec, out);
	case POINT_MARK:
		return find_mark(s, spec, out);
	default:
		return find_time(s, spec, out);
	}
}

/* ---- applying ---- */

struct until_hook {
	uint64_t until;
	apply_record_fn fn;
	void *ctx;
};

static int until_record(void *ctx, struct seg_view *v, const struct seg_record *r)
{
	struct until_hook *u = ctx;
	int ret = u->fn ? u->fn(u->ctx, v, r) : 0;

	if (ret < 0)
		return ret;
	return ret == APPLY_STOP || r->lsn == u->until ? APPLY_STOP : 0;
}

int series_apply(struct series *s, struct applier *a, uint64_t after, uint64_t until,
		 apply_record_fn fn, void *ctx, uint64_t *durable)
{
	struct until_hook u = { until, fn, ctx };
	struct apply_stats st;
	char err[1024];
	int r;

	*durable = after;
	applier_set_record_cb(a, until_record, &u);
	/* until_record only stops; fn (aimctl check) examines the targets. */
	applier_record_cb_reads_targets(a, fn != NULL);
	for (size_t i = 0; i < s->n; i++) {
		struct seg_view *v = s->files[i].view;
		int fd = open(s->files[i].path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);

		/* Payloads read with pread from the very file the view maps,
		 * not through the mapping (applier_set_source); a file replaced
		 * since it was checked is not read. */
		if (fd >= 0 && seg_view_same_file(v, fd)) {
			applier_set_source(a, fd, seg_view_bytes(v));
			seg_view_iterate_from(v, fd); /* the headers too */
		}
		/* The applier skips records up to after, so segments wholly
		 * before it cost only their iteration. */
		r = applier_apply(a, v, after, err, sizeof err);
		applier_set_source(a, -1, NULL);
		seg_view_iterate_from(v, -1);
		if (fd >= 0)
			close(fd);
		applier_stats(a, &st);
		if (st.last_lsn > *durable)
			*durable = st.last_lsn;
		if (r == APPLY_STOP)
			break;
		if (r < 0) {
			log_error("%s: %s", s->files[i].path, err);
			log_error("stopped in segment %" PRIu64 "; the targets are durable up to LSN %"
				  PRIu64, seg_view_header(v)->number, *durable);
			applier_set_record_cb(a, NULL, NULL);
			return r;
		}
		if (until && seg_view_last_lsn(v) >= until)
			break;
	}
	applier_set_record_cb(a, NULL, NULL);
	return 0;
}
