/*
 * cmd_mark.c — named points: `aimctl mark NAME` asks a running aimfs to
 * journal a MARK now (POST /mark/NAME on its status listener) and prints
 * the LSN it got; `aimctl marks` lists the marks of a running aimfs (GET
 * /marks), of a journal directory (its catalog, which keeps marks after
 * their segments are pruned), or of segment files (a remote's retained
 * segments), where MARK records travel like any other.
 */
#include "aimctl.h"
#include "catalog.h"
#include "clock.h"
#include "jsontext.h"
#include "log.h"

#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HTTP_TIMEOUT_S 30L

/* The "error" of a JSON answer. */
static const char *answer_error(json_t *o)
{
	const char *e = json_string_value(json_object_get(o, "error"));

	return e ? e : "no reason given";
}

int cmd_mark(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "status", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *addr = DEFAULT_STATUS_ADDR, *name;
	char esc[3 * SEG_MARK_MAX + 1], path[3 * SEG_MARK_MAX + 16], url[4096];
	json_t *o;
	long code;
	int c, status = 1;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":s:h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			addr = optarg;
			break;
		case 'h':
			printf("usage: aimctl mark [--status ADDR:PORT] NAME\n");
			return 0;
		case ':':
			return usage_error("mark: %s needs an argument", argv[optind - 1]);
		default:
			return usage_error("mark: unknown option %s", argv[optind - 1]);
		}
	}
	if (argc - optind != 1)
		return usage_error("mark: give one NAME");
	name = argv[optind];
	if (!seg_mark_label_valid(name, strlen(name)) || !text_is_utf8(name, strlen(name)))
		return usage_error("mark: \"%s\": a mark's name is 1 to %d bytes of UTF-8 without"
				   " control characters", name, SEG_MARK_MAX);
	if (!aimctl_url_escape(name, esc, sizeof esc))
		return usage_error("mark: the name is too long");
	snprintf(path, sizeof path, "/mark/%s", esc);
	o = aimctl_http_json("mark", aimctl_status_url(addr, path, url, sizeof url), true,
			     HTTP_TIMEOUT_S, &code);
	if (!o && code == 0) {
		log_error("mark: is aimfs running with status=%s?", addr);
		return 1;
	}
	if (code != 201 || !o) {
		log_error("mark: aimfs at %s refused \"%s\" (HTTP %ld): %s", addr, name, code,
			  o ? answer_error(o) : "no JSON answer");
		goto out;
	}
	printf("mark \"%s\" at LSN %" PRId64 " (segment %" PRId64 ", %s)\n", name,
	       (int64_t)json_integer_value(json_object_get(o, "lsn")),
	       (int64_t)json_integer_value(json_object_get(o, "segment")),
	       json_string_value(json_object_get(o, "time")));
	if (!json_is_true(json_object_get(o, "durable")))
		log_warn("mark: its segment was not durable yet when aimfs answered; see aimfs's log");
	status = 0;
out:
	json_decref(o);
	return status;
}

/* ---- marks ---- */

struct listing {
	json_t *marks; /* array of {"name", "lsn", "time", "time_ns"} */
};

static int list_add(struct listing *l, const char *name, uint64_t lsn, uint64_t time_ns,
		    const char *where)
{
	char tbuf[64];
	json_t *m = json_pack("{s:o, s:I, s:s, s:I}", "name", json_text(name), "lsn", (json_int_t)lsn, "time",
			      clock_iso8601(time_ns, 9, tbuf, sizeof tbuf), "time_ns",
			      (json_int_t)time_ns);

	if (!m)
		return -1;
	if (where)
		json_object_set_new(m, "segment_file", json_text(where));
	return json_array_append_new(l->marks, m);
}

static int from_catalog(void *ctx, const struct catalog_mark *m)
{
	return list_add(ctx, m->name, m->lsn, m->time_ns, NULL);
}

static int list_status(struct listing *l, const char *addr)
{
	char url[4096];
	json_t *o, *a;
	long code;

	o = aimctl_http_json("marks", aimctl_status_url(addr, "/marks", url, sizeof url), false,
			     HTTP_TIMEOUT_S, &code);
	a = json_object_get(o, "marks");
	if (code != 200 || !json_is_array(a)) {
		if (o || code)
			log_error("marks: %s answered HTTP %ld without a list of marks (an aimfs"
				  " older than marks?)", url, code);
		json_decref(o);
		return -1;
	}
	json_array_extend(l->marks, a);
	json_decref(o);
	return 0;
}

static int list_catalog(struct listing *l, const char *db)
{
	struct catalog *c;
	int r;

	if (catalog_open(db, &c) < 0)
		return -1;
	r = catalog_marks_each(c, from_catalog, l);
	catalog_close(c);
	return r;
}

static int list_segments(struct listing *l, char **args, int n)
{
	struct series s;
	struct seg_record r;
	char name[SEG_MARK_MAX + 1];

	if (series_open(&s, args, n, false) < 0)
		return -1;
	for (size_t i = 0; i < s.n; i++) {
		seg_view_rewind(s.files[i].view);
		while (seg_view_next(s.files[i].view, &r) == 1) {
			if (r.type != SEG_MARK)
				continue;
			snprintf(name, sizeof name, "%.*s", (int)r.payload_len, (const char *)r.payload);
			if (list_add(l, name, r.lsn, r.time_ns, s.files[i].path) < 0) {
				series_close(&s);
				return -1;
			}
		}
	}
	series_close(&s);
	return 0;
}

int cmd_marks(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "status", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct listing l = { json_array() };
	const char *addr = NULL;
	bool json = false;
	char db[4200];
	struct stat st;
	json_t *m;
	size_t i;
	int c, r;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":s:jh", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			addr = optarg;
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			printf("usage: aimctl marks [--json] [--status ADDR:PORT | JOURNAL_DIR |"
			       " SEGMENT...]\n");
			json_decref(l.marks);
			return 0;
		case ':':
			json_decref(l.marks);
			return usage_error("marks: %s needs an argument", argv[optind - 1]);
		default:
			json_decref(l.marks);
			return usage_error("marks: unknown option %s", argv[optind - 1]);
		}
	}
	if (addr && optind < argc) {
		json_decref(l.marks);
		return usage_error("marks: give --status or a JOURNAL_DIR or SEGMENTs, not both");
	}
	if (optind == argc)
		r = list_status(&l, addr ? addr : DEFAULT_STATUS_ADDR);
	else if (argc - optind == 1 && stat(argv[optind], &st) == 0 && S_ISDIR(st.st_mode) &&
		 snprintf(db, sizeof db, "%s/catalog.db", argv[optind]) > 0 && access(db, R_OK) == 0)
		r = list_catalog(&l, db);
	else
		r = list_segments(&l, argv + optind, argc - optind);
	if (r < 0) {
		json_decref(l.marks);
		return 1;
	}
	if (json) {
		json_t *o = json_pack("{s:o}", "marks", l.marks);

		json_dumpf(o, stdout, JSON_INDENT(2));
		putchar('\n');
		json_decref(o);
		return 0;
	}
	if (json_array_size(l.marks) == 0)
		printf("no marks\n");
	else
		printf("%10s  %-30s  %s\n", "LSN", "TIME", "NAME");
	json_array_foreach(l.marks, i, m)
		printf("%10" PRId64 "  %-30s  %s\n", (int64_t)json_integer_value(json_object_get(m, "lsn")),
		       json_string_value(json_object_get(m, "time")),
		       json_string_value(json_object_get(m, "name")));
	json_decref(l.marks);
	return 0;
}
