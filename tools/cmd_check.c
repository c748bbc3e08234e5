/*
 * cmd_check.c — `aimctl check`: the proof an operator can run that a
 * journal (or a remote's retained segments) holds a crash-consistent
 * history.  It replays the segments in one pass onto a scratch copy of a
 * base, the way fstests replays a dm-log-writes log (generic/455, 482),
 * and at every barrier (FLUSH) and MARK -- or after every Nth record, or
 * only at marks -- examines every image: its hash, and its consistency
 * check (imgcheck.c).  One line per point; the first point that fails is
 * named at the end, and the exit status is 1 if any failed.
 *
 * What a point promises, and so what is checked there:
 *   - inside a resynchronisation (SYNC_BEGIN .. SYNC_END) the targets are
 *     not a consistent copy by design: those points are counted, not
 *     checked;
 *   - an image created in the stream promises nothing until its creator
 *     flushed it once (a half-made qcow2 is what a crash during qemu-img
 *     create leaves): until a FLUSH of it (or of all images) it is hashed,
 *     shown as "new", and not checked;
 *   - an image unchanged since it was last examined keeps its result (the
 *     bytes are the same), so a long run pays for what changed only.
 */
#include "aimctl.h"
#include "clock.h"
#include "jsontext.h"
#include "log.h"
#include "parse.h"

#include <errno.h>
#include <fnmatch.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OUTPUT_LINES 20 /* of a failing check's output, shown under its point */

enum every { AT_BARRIERS, AT_EVERY_N, AT_MARKS };

/* An image as the check follows it through the stream, by name. */
struct entry {
	char *name;
	bool dirty;    /* changed (or never examined) since its last result */
	bool fresh;    /* created in the stream, not flushed since */
	bool seen;     /* in the namespace at the current point */
	uint64_t at;   /* LSN of its last examination */
	struct img_result res;
};

struct check {
	/* what was asked */
	const char *fsck;
	enum every every;
	uint64_t every_n;
	char **globs;
	size_t nglobs;
	bool *glob_used;    /* globs[i] selected an image at some point */
	bool json;
	uint64_t from_lsn;  /* points before it are not checked */
	uint64_t until_lsn; /* the last record applied */
	bool until_point;   /* ... and a point (--until, --every) */
	const char *scratch;
	/* following the stream */
	struct entry *e;
	size_t n, cap;
	uint64_t records;
	uint64_t sync_lsn;  /* inside a resync since this SYNC_BEGIN (0: no) */
	uint64_t sync_skipped;
	/* results */
	uint64_t points, failed, skipped;
	uint64_t verified;  /* images a checker (qemu-img check, --fsck) looked at */
	bool have_fail;
	struct point first_fail;
	char first_fail_images[512];
};

/* ---- following the namespace ---- */

static struct entry *entry_find(struct check *c, const char *name)
{
	for (size_t i = 0; i < c->n; i++)
		if (strcmp(c->e[i].name, name) == 0)
			return &c->e[i];
	return NULL;
}

static struct entry *entry_get(struct check *c, const char *name)
{
	struct entry *e = entry_find(c, name);

	if (e)
		return e;
	if (c->n == c->cap) {
		size_t cap = c->cap ? 2 * c->cap : 16;
		struct entry *ne = realloc(c->e, cap * sizeof *ne);

		if (!ne)
			return NULL;
		c->e = ne;
		c->cap = cap;
	}
	e = &c->e[c->n];
	memset(e, 0, sizeof *e);
	e->name = strdup(name);
	if (!e->name)
		return NULL;
	img_result_clear(&e->res);
	e->dirty = true;
	c->n++;
	return e;
}

static void entry_drop(struct check *c, struct entry *e)
{
	size_t i = (size_t)(e - c->e);

	free(e->name);
	img_result_clear(&e->res);
	c->e[i] = c->e[--c->n];
}

static int entry_rename(struct entry *e, const char *name)
{
	char *n = strdup(name);

	if (!n)
		return -ENOMEM;
	free(e->name);
	e->name = n;
	e->dirty = true;
	return 0;
}

/* Keeps the entries in step with a record's changes. */
static int follow(struct check *c, struct seg_view *v, const struct seg_record *r)
{
	char a[SEG_NAME_MAX + 1], b[SEG_NAME_MAX + 1];
	const char *name;
	struct entry *e;
	size_t la;

	switch (r->type) {
	case SEG_WRITE:
	case SEG_ZERO:
	case SEG_TRUNCATE:
	case SEG_ALLOC:
		name = seg_view_image_name(v, r->image);
		e = name ? entry_get(c, name) : NULL;
		if (!e)
			return name ? -ENOMEM : 0;
		e->dirty = true;
		return 0;
	case SEG_CREATE:
		seg_record_name(r, a);
		e = entry_find(c, a);
		if (e)
			entry_drop(c, e);
		e = entry_get(c, a);
		if (!e)
			return -ENOMEM;
		e->fresh = true;
		return 0;
	case SEG_UNLINK:
		seg_record_name(r, a);
		e = entry_find(c, a);
		if (e)
			entry_drop(c, e);
		return 0;
	case SEG_RENAME:
		seg_rename_names(r, a, b);
		if (!(r->flags & SEG_F_DIR)) {
			if (strcmp(a, b) == 0)
				return 0;
			e = entry_find(c, b);
			if (e)
				entry_drop(c, e);
			e = entry_find(c, a);
			return e ? entry_rename(e, b) : 0;
		}
		la = strlen(a);
		for (size_t i = 0; i < c->n; i++) {
			char nn[2 * SEG_NAME_MAX + 2];

			if (strncmp(c->e[i].name, a, la) != 0 || c->e[i].name[la] != '/')
				continue;
			snprintf(nn, sizeof nn, "%s%s", b, c->e[i].name + la);
			if (entry_rename(&c->e[i], nn) < 0)
				return -ENOMEM;
		}
		return 0;
	case SEG_FLUSH:
		if (!r->image) {
			for (size_t i = 0; i < c->n; i++)
				c->e[i].fresh = false;
		} else if ((name = seg_view_image_name(v, r->image)) && (e = entry_find(c, name))) {
			e->fresh = false;
		}
		return 0;
	default:
		return 0;
	}
}

/* ---- output ---- */

static const char *result_word(const struct entry *e, bool checked, char *buf, size_t len)
{
	switch (e->res.state) {
	case IMG_ABSENT:
		return "absent";
	case IMG_EMPTY:
		return "empty";
	case IMG_FAILED:
		snprintf(buf, len, "FAILED (%s exit %d)", e->res.checker, e->res.exit_code);
		return buf;
	default:
		break;
	}
	if (e->fresh)
		return "new";
	if (!checked || strcmp(e->res.checker, "-") == 0)
		return "unchecked";
	if (e->res.note[0]) {
		snprintf(buf, len, "%s ok (%s)", e->res.checker, e->res.note);
		return buf;
	}
	snprintf(buf, len, "%s ok", e->res.checker);
	return buf;
}

static const char *state_name(const struct entry *e, bool checked)
{
	static const char *names[] = { [IMG_OK] = "ok", [IMG_FAILED] = "failed",
				       [IMG_ABSENT] = "absent", [IMG_EMPTY] = "empty" };

	if (e->res.state == IMG_OK && (e->fresh || !checked || strcmp(e->res.checker, "-") == 0))
		return e->fresh ? "new" : "unchecked";
	return names[e->res.state];
}

static void print_output(const struct entry *e)
{
	const char *p = e->res.output;
	int lines = 0;

	while (p && *p && lines < OUTPUT_LINES) {
		const char *nl = strchr(p, '\n');
		int len = nl ? (int)(nl - p) : (int)strlen(p);

		if (len > 0) {
			printf("    %s: %.*s\n", e->name, len, p);
			lines++;
		}
		p = nl ? nl + 1 : NULL;
	}
	if (p && *p)
		printf("    %s: ...\n", e->name);
}

static bool selected(const struct check *c, const char *name)
{
	bool any = false;

	if (!c->nglobs)
		return true;
	for (size_t i = 0; i < c->nglobs; i++)
		if (fnmatch(c->globs[i], name, FNM_PATHNAME) == 0)
			any = c->glob_used[i] = true;
	return any;
}

static int by_name(const void *x, const void *y)
{
	return strcmp(((const struct entry *)x)->name, ((const struct entry *)y)->name);
}

static void report_point(struct check *c, const struct point *pt, bool ok, uint64_t lsn_now)
{
	char tbuf[64], wbuf[96], what[320];

	for (size_t i = 0; i < c->n; i++) {
		const char *st = state_name(&c->e[i], selected(c, c->e[i].name));

		if (strcmp(st, "ok") == 0 || strcmp(st, "failed") == 0)
			c->verified++;
	}

	if (pt->type == SEG_MARK)
		snprintf(what, sizeof what, "MARK \"%s\"", pt->label);
	else
		snprintf(what, sizeof what, "%s", seg_type_name(pt->type));
	if (c->json) {
		json_t *o = json_pack("{s:I, s:I, s:s, s:s, s:I, s:s}",
				      "lsn", (json_int_t)pt->lsn, "segment", (json_int_t)pt->segment,
				      "record", seg_type_name(pt->type),
				      "time", clock_iso8601(pt->time_ns, 9, tbuf, sizeof tbuf),
				      "time_ns", (json_int_t)pt->time_ns, "result", ok ? "ok" : "failed");
		json_t *imgs = json_array();

		json_object_set_new(o, "mark", pt->type == SEG_MARK ? json_text(pt->label)
								    : json_null());
		for (size_t i = 0; i < c->n; i++) {
			const struct entry *e = &c->e[i];
			bool checked = selected(c, e->name);
			char hash[17];
			json_t *im;

			snprintf(hash, sizeof hash, "%016" PRIx64, e->res.hash);
			im = json_pack("{s:o, s:s, s:I, s:o, s:s, s:I}", "name", json_text(e->name),
				       "hash", e->res.state == IMG_ABSENT ? "" : hash,
				       "size", (json_int_t)e->res.size,
				       "checker", json_text(e->res.checker),
				       "result", state_name(e, checked),
				       "checked_at", (json_int_t)e->at);
			json_object_set_new(im, "exit", e->res.exit_code >= 0
							? json_integer(e->res.exit_code) : json_null());
			if (e->res.note[0])
				json_object_set_new(im, "note", json_text(e->res.note));
			if (e->res.output)
				json_object_set_new(im, "output", json_text(e->res.output));
			json_array_append_new(imgs, im);
		}
		json_object_set_new(o, "images", imgs);
		json_dumpf(o, stdout, JSON_COMPACT);
		putchar('\n');
		json_decref(o);
		fflush(stdout);
		return;
	}
	printf("%-4s  LSN %-10" PRIu64 " %-24s seg %-6" PRIu64 " %s ", ok ? "ok" : "FAIL", pt->lsn,
	       what, pt->segment, clock_iso8601(pt->time_ns, 3, tbuf, sizeof tbuf));
	if (!c->n)
		printf(" (no images)");
	for (size_t i = 0; i < c->n; i++) {
		const struct entry *e = &c->e[i];

		if (e->res.state == IMG_ABSENT)
			printf("%s %s absent", i ? ";" : "", e->name);
		else
			printf("%s %s %016" PRIx64 " %s", i ? ";" : "", e->name, e->res.hash,
			       result_word(e, selected(c, e->name), wbuf, sizeof wbuf));
	}
	putchar('\n');
	for (size_t i = 0; i < c->n; i++) {
		const struct entry *e = &c->e[i];

		if (e->res.state != IMG_FAILED)
			continue;
		if (e->at == lsn_now)
			print_output(e);
		else
			printf("    %s: unchanged since LSN %" PRIu64 ", where its check failed\n",
			       e->name, e->at);
	}
	fflush(stdout);
}

/* ---- points ---- */

static int add_name(void *ctx, uint32_t id, const char *name)
{
	struct check *c = ctx;
	struct entry *e = entry_get(c, name);

	(void)id;
	if (!e)
		return -ENOMEM;
	e->seen = true;
	return 0;
}

/* Examines every image at record r, prints the point's line. */
static int check_point(struct check *c, struct seg_view *v, const struct seg_record *r)
{
	struct point pt = { 0 };
	char path[PATH_MAX];
	bool ok = true;
	size_t n = 0;
	int k;

	pt.lsn = r->lsn;
	pt.segment = seg_view_header(v)->number;
	pt.time_ns = r->time_ns;
	pt.type = r->type;
	if (r->type == SEG_MARK)
		snprintf(pt.label, sizeof pt.label, "%.*s", (int)r->payload_len,
			 (const char *)r->payload);
	/* The images are the namespace here; anything else is gone. */
	for (size_t i = 0; i < c->n; i++)
		c->e[i].seen = false;
	k = names_each(seg_view_names(v), add_name, c);
	if (k)
		return k < 0 ? k : -ENOMEM;
	for (size_t i = 0; i < c->n;)
		if (!c->e[i].seen)
			entry_drop(c, &c->e[i]);
		else
			i++;
	qsort(c->e, c->n, sizeof *c->e, by_name);
	for (size_t i = 0; i < c->n; i++) {
		struct entry *e = &c->e[i];
		bool want = selected(c, e->name);

		if (e->dirty) {
			snprintf(path, sizeof path, "%s/%s", c->scratch, e->name);
			k = img_examine(e->name, path, c->fsck, r->lsn, want && !e->fresh, &e->res);
			if (k < 0)
				return k;
			e->at = r->lsn;
			/* A fresh image is checked once it is flushed, even if
			 * nothing changes it in between. */
			e->dirty = e->fresh && want;
		}
		if (want && e->res.state == IMG_FAILED) {
			ok = false;
			if (!c->have_fail && n < sizeof c->first_fail_images)
				n += (size_t)snprintf(c->first_fail_images + n,
						      sizeof c->first_fail_images - n, "%s%s (%s exit %d)",
						      n ? ", " : "", e->name, e->res.checker,
						      e->res.exit_code);
		}
	}
	c->points++;
	if (!ok) {
		c->failed++;
		if (!c->have_fail) {
			c->have_fail = true;
			c->first_fail = pt;
		}
	}
	report_point(c, &pt, ok, r->lsn);
	return 0;
}

static bool is_point(const struct check *c, const struct seg_record *r)
{
	if (r->lsn == c->until_lsn && c->until_point)
		return true;
	switch (c->every) {
	case AT_MARKS:
		return r->type == SEG_MARK;
	case AT_EVERY_N:
		return c->records % c->every_n == 0;
	default:
		return r->type == SEG_FLUSH || r->type == SEG_MARK;
	}
}

static int on_record(void *ctx, struct seg_view *v, const struct seg_record *r)
{
	struct check *c = ctx;
	int k = follow(c, v, r);

	if (k < 0)
		return k;
	c->records++;
	if (r->type == SEG_SYNC_BEGIN && !c->sync_lsn) {
		c->sync_lsn = r->lsn;
		c->sync_skipped = 0;
		if (!c->json)
			printf("--    LSN %-10" PRIu64 " SYNC_BEGIN: a resynchronisation begins; the"
			       " images are not a consistent copy until its SYNC_END\n", r->lsn);
		return 0;
	}
	if (r->type == SEG_SYNC_END && c->sync_lsn) {
		if (!c->json)
			printf("--    LSN %-10" PRIu64 " SYNC_END: the resynchronisation from LSN %"
			       PRIu64 " ends (%" PRIu64 " point%s in it not checked)\n", r->lsn,
			       c->sync_lsn, c->sync_skipped, c->sync_skipped == 1 ? "" : "s");
		c->sync_lsn = 0;
	}
	if (!is_point(c, r) || r->lsn < c->from_lsn)
		return 0;
	if (c->sync_lsn) {
		c->sync_skipped++;
		c->skipped++;
		return 0;
	}
	return check_point(c, v, r);
}

/* ---- the command ---- */

/* 0 if base has a stamp (which base_match compared with the segments). */
static int access_stamp(const char *base)
{
	char path[PATH_MAX];

	snprintf(path, sizeof path, "%s/%s", base, BASE_STAMP);
	return access(path, F_OK);
}

static int find_point(struct series *s, const char *opt, const char *arg, struct point *pt)
{
	struct point_spec spec;
	char err[512];

	if (point_parse(arg, &spec, err, sizeof err) < 0) {
		log_error("check: %s: %s", opt, err);
		return -EINVAL;
	}
	return series_find(s, &spec, pt);
}

static void summary(struct check *c, uint64_t first, uint64_t last)
{
	char pbuf[400];

	if (c->json) {
		json_t *o = json_pack("{s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b}}", "summary",
				      "points", (json_int_t)c->points,
				      "images_checked", (json_int_t)c->verified,
				      "passed", (json_int_t)(c->points - c->failed),
				      "failed", (json_int_t)c->failed,
				      "skipped_in_resync", (json_int_t)c->skipped,
				      "first_lsn", (json_int_t)first, "last_lsn", (json_int_t)last,
				      "ok", c->points && !c->failed);
		json_t *sum = json_object_get(o, "summary");

		if (c->have_fail)
			json_object_set_new(sum, "first_failure",
					    json_pack("{s:I, s:I, s:s, s:o, s:o}",
						      "lsn", (json_int_t)c->first_fail.lsn,
						      "segment", (json_int_t)c->first_fail.segment,
						      "record", seg_type_name(c->first_fail.type),
						      "mark", c->first_fail.type == SEG_MARK
							      ? json_text(c->first_fail.label)
							      : json_null(),
						      "images", json_text(c->first_fail_images)));
		json_dumpf(o, stdout, JSON_COMPACT);
		putchar('\n');
		json_decref(o);
		return;
	}
	if (c->have_fail)
		printf("check: %" PRIu64 " of %" PRIu64 " points failed (LSN %" PRIu64 "..%" PRIu64
		       "); the first failure is at %s: %s\n", c->failed, c->points, first, last,
		       point_describe(&c->first_fail, pbuf, sizeof pbuf), c->first_fail_images);
	else if (c->points && !c->verified)
		printf("check: all %" PRIu64 " points passed by hash only (LSN %" PRIu64 "..%" PRIu64
		       "): no checker looked at an image (raw images need --fsck)\n", c->points,
		       first, last);
	else if (c->points)
		printf("check: all %" PRIu64 " points passed (LSN %" PRIu64 "..%" PRIu64 ")\n",
		       c->points, first, last);
	if (c->skipped)
		printf("check: %" PRIu64 " point%s inside resynchronisations were not checked\n",
		       c->skipped, c->skipped == 1 ? "" : "s");
}

int cmd_check(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "base", required_argument, NULL, 'b' },
		{ "fsck", required_argument, NULL, 'f' },
		{ "every", required_argument, NULL, 'e' },
		{ "marks", no_argument, NULL, 'M' },
		{ "from", required_argument, NULL, 'F' },
		{ "until", required_argument, NULL, 'u' },
		{ "image", required_argument, NULL, 'i' },
		{ "scratch", required_argument, NULL, 's' },
		{ "save", required_argument, NULL, 'S' },
		{ "keep-scratch", no_argument, NULL, 'K' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct check c = { .every = AT_BARRIERS };
	const char *base = NULL, *from_arg = NULL, *until_arg = NULL, *parent = NULL;
	const char *save = NULL, *how = NULL;
	struct series s = { 0 };
	struct applier *a = NULL;
	struct point from_pt, until_pt;
	char *scratch = NULL, **globs = NULL;
	uint64_t durable, last;
	bool keep = false;
	int opt, r, status = 1;

	opterr = 0;
	optind = 1;
	while ((opt = getopt_long(argc, argv, ":b:f:e:Mu:i:s:jh", opts, NULL)) != -1) {
		switch (opt) {
		case 'b':
			base = optarg;
			break;
		case 'f':
			if (!optarg[0] || strspn(optarg, " \t") == strlen(optarg)) {
				status = usage_error("check: --fsck takes a command (e.g. \"fsck -n\"),"
						     " not an empty string");
				goto out;
			}
			c.fsck = optarg;
			break;
		case 'e':
			if (parse_uint(optarg, &c.every_n) < 0 || c.every_n == 0) {
				status = usage_error("check: --every takes a number of records (>= 1),"
						     " not \"%s\"", optarg);
				goto out;
			}
			if (c.every == AT_MARKS) {
				status = usage_error("check: --every and --marks exclude each other");
				goto out;
			}
			c.every = AT_EVERY_N;
			break;
		case 'M':
			if (c.every == AT_EVERY_N) {
				status = usage_error("check: --every and --marks exclude each other");
				goto out;
			}
			c.every = AT_MARKS;
			break;
		case 'F':
			from_arg = optarg;
			break;
		case 'u':
			until_arg = optarg;
			break;
		case 'i': {
			char **ng = realloc(globs, (c.nglobs + 1) * sizeof *ng);

			if (!ng) {
				log_error("out of memory");
				goto out;
			}
			globs = ng;
			globs[c.nglobs++] = optarg;
			break;
		}
		case 's':
			parent = optarg;
			break;
		case 'S':
			save = optarg;
			break;
		case 'K':
			keep = true;
			break;
		case 'j':
			c.json = true;
			break;
		case 'h':
			printf("usage: aimctl check --base DIR [--fsck CMD] [--every N | --marks]"
			       " [--from POINT] [--until POINT]\n"
			       "                   [--image GLOB]... [--scratch DIR] [--save DIR]"
			       " [--keep-scratch] [--json] SEGMENT... | JOURNAL_DIR\n");
			status = 0;
			goto out;
		case ':':
			status = usage_error("check: %s needs an argument", argv[optind - 1]);
			goto out;
		default:
			status = usage_error("check: unknown option %s", argv[optind - 1]);
			goto out;
		}
	}
	c.globs = globs;
	c.glob_used = calloc(c.nglobs + 1, sizeof *c.glob_used);
	if (!c.glob_used) {
		log_error("out of memory");
		goto out;
	}
	if (!base) {
		status = usage_error("check: --base DIR is required (the images as they were right"
				     " before the first segment; an empty directory for a new group)");
		goto out;
	}
	if (optind == argc) {
		status = usage_error("check: give SEGMENT files or a JOURNAL_DIR");
		goto out;
	}
	if (save && access(save, F_OK) == 0) {
		log_error("check: --save %s exists already; nothing was done", save);
		goto out;
	}

	/* 1. Everything that can be wrong with the input is found before a
	 * byte is written anywhere. */
	if (series_open(&s, argv + optind, argc - optind, true) < 0)
		goto nothing;
	c.until_lsn = series_last_lsn(&s);
	if (until_arg) {
		if (find_point(&s, "--until", until_arg, &until_pt) < 0)
			goto nothing;
		c.until_lsn = until_pt.lsn;
	}
	if (from_arg) {
		if (find_point(&s, "--from", from_arg, &from_pt) < 0)
			goto nothing;
		c.from_lsn = from_pt.lsn;
		if (c.from_lsn > c.until_lsn) {
			log_error("check: --from %s (LSN %" PRIu64 ") is after the last record checked"
				  " (LSN %" PRIu64 ")", from_arg, c.from_lsn, c.until_lsn);
			goto nothing;
		}
	}
	c.until_point = until_arg || c.every == AT_EVERY_N;
	if (base_match(base, &s) < 0)
		goto nothing;
	{
		/* A base saved inside a resynchronisation is not a consistent
		 * copy until its SYNC_END, which these segments bring. */
		uint8_t g[16];
		uint64_t lsn;

		if (stamp_read(base, g, &lsn, &c.sync_lsn) == 0 && c.sync_lsn && !c.json)
			printf("--    the base is inside the resynchronisation from LSN %" PRIu64
			       "; the images are not a consistent copy until its SYNC_END\n",
			       c.sync_lsn);
	}

	/* 2. The scratch copy, and the replay through it. */
	if (scratch_make(base, parent, &scratch, &how) < 0)
		goto out;
	c.scratch = scratch;
	if (applier_new(scratch, &a) < 0)
		goto out;
	{
		char uuid[37];
		FILE *info = c.json ? stderr : stdout;

		seg_uuid_format(series_group(&s), uuid);
		fprintf(info, "check: group %s, %zu segment%s, LSN %" PRIu64 "..%" PRIu64 "; base %s;"
			" scratch %s (%s)\n", uuid, s.n, s.n == 1 ? "" : "s", series_first_lsn(&s),
			c.until_lsn, base, scratch, how);
		if (series_first_lsn(&s) > 1 && access_stamp(base) != 0)
			fprintf(info, "check: the segments start at LSN %" PRIu64 ": the base must hold"
				" the images as they were after LSN %" PRIu64 "\n", series_first_lsn(&s),
				series_first_lsn(&s) - 1);
		if (c.every == AT_EVERY_N)
			fprintf(info, "check: after every %" PRIu64 " record%s and the last;",
				c.every_n, c.every_n == 1 ? "" : "s");
		else
			fprintf(info, "check: at every %s;", c.every == AT_MARKS ? "MARK"
									 : "FLUSH and MARK");
		fprintf(info, " qcow2 images with qemu-img check, the others %s%s\n",
			c.fsck ? "with: " : "by hash only (no --fsck)", c.fsck ? c.fsck : "");
		fflush(info);
	}
	r = series_apply(&s, a, 0, c.until_lsn, on_record, &c, &durable);
	last = c.until_lsn;
	if (r < 0) {
		log_error("check: the replay stopped (LSN %" PRIu64 " reached); nothing after it was"
			  " checked", durable);
		goto out;
	}
	summary(&c, series_first_lsn(&s), last);
	if (!c.points) {
		log_error("check: no point was checked (%s between LSN %" PRIu64 " and %" PRIu64 ")",
			  c.every == AT_MARKS ? "no MARK" : "no barrier or MARK outside a resync",
			  c.from_lsn ? c.from_lsn : series_first_lsn(&s), last);
		goto out;
	}
	status = c.failed ? 1 : 0;
	/* A pattern that matched nothing checked nothing: a typo, not a pass. */
	for (size_t i = 0; i < c.nglobs; i++) {
		if (!c.glob_used[i]) {
			log_error("check: --image %s matched no image at any point checked",
				  c.globs[i]);
			status = 1;
		}
	}
	if (save) {
		applier_free(a);
		a = NULL;
		if (stamp_write(scratch, series_group(&s), last, c.sync_lsn) < 0 ||
		    rename(scratch, save) < 0) {
			log_error("check: --save %s: %m; the end state stays in %s%s", save, scratch,
				  errno == EXDEV ? " (--scratch on the file system of --save lets it"
						   " be moved there)" : "");
			keep = true;
			status = 1;
		} else {
			fprintf(c.json ? stderr : stdout, "check: saved the images as of LSN %" PRIu64
				" in %s (a base for the segments from LSN %" PRIu64 " on)\n", last, save,
				last + 1);
			free(scratch);
			scratch = NULL;
		}
	}
	goto out;
nothing:
	log_error("check: nothing was checked, nothing was written");
out:
	applier_free(a);
	if (scratch && keep)
		fprintf(c.json ? stderr : stdout, "check: the scratch copy stays in %s\n", scratch);
	else if (scratch)
		scratch_remove(scratch);
	free(scratch);
	for (size_t i = 0; i < c.n; i++) {
		free(c.e[i].name);
		img_result_clear(&c.e[i].res);
	}
	free(c.e);
	series_close(&s);
	free(globs);
	free(c.glob_used);
	return status;
}
