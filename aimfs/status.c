/*
 * status.c — aimfs's /status and /metrics, and the operator's actions:
 * POST /verify (compare with every replica) and POST /mark/NAME (journal
 * a MARK now).  JSON is made with jansson; every number comes from a
 * snapshot taken under the owning module's lock, so a reply is consistent
 * per module and never blocks a write for long.  The destinations' part of
 * both is printed from one snapshot each (transport_views), so /status and
 * /metrics tell the same state.
 *
 * Marks.  A mark's name names one point of the group, so a name is
 * refused if any mark ever had it.  The catalog holds every mark of
 * segments sealed before this mount (recovery indexed them all before the
 * listener starts); this file keeps that list in memory, loaded once at
 * start, and adds every mark it journals: the list is complete without
 * waiting for the sealer to index, and GET /marks needs no SQLite on the
 * listener's thread.  mark_lock serialises marks (they are rare); it is
 * taken before any journal lock and never inside one.
 */
#include "status.h"
#include "catalog.h"
#include "clock.h"
#include "httpd.h"
#include "jsontext.h"
#include "journal.h"
#include "log.h"
#include "readahead.h"
#include "resync.h"
#include "format.h"
#include "strbuf.h"
#include "uring.h"
#include "transport.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* How long POST /mark waits for the MARK's segment to be sealed, fsynced
 * and renamed (it is sealed at once; this is only a bound). */
#define MARK_DURABLE_WAIT_NS (5ULL * 1000000000ULL)

struct mark {
	char name[SEG_MARK_MAX + 1];
	uint64_t lsn;
	uint64_t time_ns;
};

struct status {
	struct status_info info;
	struct httpd *httpd;
	uint64_t started_ns;
	pthread_mutex_t mark_lock;
	struct mark *marks; /* every mark of the group, in LSN order */
	size_t nmarks, marks_cap;
	bool marks_known;   /* false: the catalog could not be read; no new marks */
};

/* ---- marks ---- */

/* Appends a mark (under mark_lock, or before the listener starts). */
static int marks_add(struct status *s, const char *name, uint64_t lsn, uint64_t time_ns)
{
	if (s->nmarks == s->marks_cap) {
		size_t cap = s->marks_cap ? 2 * s->marks_cap : 16;
		struct mark *nm = realloc(s->marks, cap * sizeof *nm);

		if (!nm)
			return -ENOMEM;
		s->marks = nm;
		s->marks_cap = cap;
	}
	snprintf(s->marks[s->nmarks].name, sizeof s->marks[0].name, "%s", name);
	s->marks[s->nmarks].lsn = lsn;
	s->marks[s->nmarks].time_ns = time_ns;
	s->nmarks++;
	return 0;
}

static const struct mark *marks_find(const struct status *s, const char *name)
{
	for (size_t i = 0; i < s->nmarks; i++)
		if (strcmp(s->marks[i].name, name) == 0)
			return &s->marks[i];
	return NULL;
}

static int load_mark(void *ctx, const struct catalog_mark *m)
{
	return marks_add(ctx, m->name, m->lsn, m->time_ns);
}

/* The marks the catalog holds: every one journaled before this mount. */
static void marks_load(struct status *s)
{
	struct catalog *cat;
	char path[4200];

	snprintf(path, sizeof path, "%s/catalog.db", s->info.journal_dir);
	if (catalog_open(path, &cat) < 0) {
		log_warn("marks: cannot read %s: POST /mark is refused until the next mount", path);
		return;
	}
	s->marks_known = catalog_marks_each(cat, load_mark, s) == 0;
	catalog_close(cat);
	if (!s->marks_known)
		log_warn("marks: cannot list the marks in %s: POST /mark is refused until the next"
			 " mount", path);
}

static json_t *mark_json(const struct mark *m)
{
	char tbuf[64];

	return json_pack("{s:o, s:I, s:s, s:I}", "name", json_text(m->name), "lsn", (json_int_t)m->lsn,
			 "time", clock_iso8601(m->time_ns, 9, tbuf, sizeof tbuf), "time_ns",
			 (json_int_t)m->time_ns);
}

/* GET /status's summary: how many, and the last one. */
static json_t *marks_summary(struct status *s)
{
	json_t *o;

	pthread_mutex_lock(&s->mark_lock);
	o = json_pack("{s:I, s:o}", "count", (json_int_t)s->nmarks, "last",
		      s->nmarks ? mark_json(&s->marks[s->nmarks - 1]) : json_null());
	pthread_mutex_unlock(&s->mark_lock);
	return o;
}

static json_t *marks_list(struct status *s)
{
	json_t *a = json_array();

	pthread_mutex_lock(&s->mark_lock);
	for (size_t i = 0; i < s->nmarks; i++)
		json_array_append_new(a, mark_json(&s->marks[i]));
	pthread_mutex_unlock(&s->mark_lock);
	return json_pack("{s:o}", "marks", a);
}

static json_t *time_or_null(uint64_t ns)
{
	char tbuf[64];

	return ns ? json_string(clock_iso8601(ns, 3, tbuf, sizeof tbuf)) : json_null();
}

/*
 * The journal's health: journal_error says what fails now (null when
 * nothing does), journal_last_error what failed last even after it
 * cleared, journal_error_at when the current or last episode began and
 * journal_error_cleared_at when the last one ended (null while it lasts).
 * No error is sticky: each clears by itself when the disk has room again.
 */
static void journal_health_json(json_t *o, const struct journal_stats *js)
{
	char text[160] = "";

	if (js->last_error)
		snprintf(text, sizeof text, "%s: %s", js->last_error_what, strerror(-js->last_error));
	json_object_set_new(o, "journal_error", js->failing ? json_text(text) : json_null());
	json_object_set_new(o, "journal_last_error", text[0] ? json_text(text) : json_null());
	json_object_set_new(o, "journal_error_at", time_or_null(js->failed_ns));
	json_object_set_new(o, "journal_error_cleared_at",
			    time_or_null(js->failing ? 0 : js->cleared_ns));
	json_object_set_new(o, "journal_errors", json_integer((json_int_t)js->failures));
	json_object_set_new(o, "journal_owed_records", json_integer((json_int_t)js->owed));
	json_object_set_new(o, "backing_writeback_lost", json_boolean(js->al.writeback_lost));
}

/* How FUSE requests reach aimfs: through io_uring or /dev/fuse. */
static json_t *fuse_json(void)
{
	struct uring_stats us;

	uring_get_stats(&us);
	return json_pack("{s:b, s:I, s:i}", "io_uring", us.active, "ring_requests",
			 (json_int_t)us.requests, "ring_threads", (int)us.threads);
}

/* The activity log (actlog.h): what a power cut now would leave to compare
 * with every destination, and whether its set is big enough for the load. */
static json_t *actlog_json(const struct actlog_stats *al)
{
	return json_pack("{s:i, s:I, s:i, s:i, s:I, s:I, s:I, s:I}",
			 "extents", (int)al->slots,
			 "extent_bytes", (json_int_t)(al->slots ? 1ULL << al->extent_shift : 0),
			 "extents_in_set", (int)al->resident,
			 "extents_hot", (int)al->hot,
			 "log_writes", (json_int_t)al->transactions,
			 "log_writes_shared", (json_int_t)al->waits,
			 "checkpoints", (json_int_t)al->checkpoints,
			 "writes_that_waited_for_a_checkpoint", (json_int_t)al->stalls);
}

static json_t *status_json(struct status *s)
{
	struct journal_stats js;
	struct dest_view *views = NULL;
	size_t nviews = 0;
	json_t *o = json_object();
	char group[37];
	uint64_t now = clock_wall_ns();

	journal_stats(s->info.journal, &js);
	seg_uuid_format(js.group, group);
	json_object_set_new(o, "role", json_string("source"));
	json_object_set_new(o, "version", json_string(s->info.version));
	json_object_set_new(o, "group", json_string(group));
	json_object_set_new(o, "backing_dir", json_text(s->info.backing_dir));
	json_object_set_new(o, "mountpoint", json_text(s->info.mountpoint));
	json_object_set_new(o, "journal_dir", json_text(s->info.journal_dir));
	json_object_set_new(o, "fuse", fuse_json());
	json_object_set_new(o, "uptime_seconds", json_real((double)(now - s->started_ns) / 1e9));
	json_object_set_new(o, "head_lsn", json_integer((json_int_t)js.head_lsn));
	json_object_set_new(o, "open_segment", json_integer((json_int_t)js.open_segment));
	json_object_set_new(o, "open_segment_bytes", json_integer((json_int_t)js.open_bytes));
	json_object_set_new(o, "sealed_segment", json_integer((json_int_t)js.sealed_segment));
	json_object_set_new(o, "durable_segment", json_integer((json_int_t)js.durable_segment));
	json_object_set_new(o, "journal_bytes", json_integer((json_int_t)js.journal_bytes));
	json_object_set_new(o, "journal_max", json_integer((json_int_t)js.journal_max));
	json_object_set_new(o, "journal_limit_enforced", json_boolean(js.enforce_max));
	json_object_set_new(o, "overflow", json_string(s->info.overflow));
	json_object_set_new(o, "journal_full",
			    json_boolean(js.enforce_max && js.journal_bytes >= js.journal_max));
	json_object_set_new(o, "writes_waiting", json_integer(js.writes_waiting));
	json_object_set_new(o, "writes_that_waited", json_integer((json_int_t)js.waits));
	json_object_set_new(o, "images", json_integer((json_int_t)js.images));
	json_object_set_new(o, "records_journaled", json_integer((json_int_t)js.records));
	json_object_set_new(o, "bytes_journaled", json_integer((json_int_t)js.bytes));
	json_object_set_new(o, "segments_recycled", json_integer((json_int_t)js.recycled));
	journal_health_json(o, &js);
	json_object_set_new(o, "activity_log", actlog_json(&js.al));
	json_object_set_new(o, "marks", marks_summary(s));
	if (s->info.transport && transport_views(s->info.transport, &views, &nviews) < 0)
		nviews = 0;
	json_object_set_new(o, "destinations", dest_views_json(views, nviews));
	/* In sync: every destination has every record (none waits in the open
	 * segment) and none is resynchronising.  Without destinations there is
	 * nothing to be in sync with. */
	json_object_set_new(o, "in_sync", s->info.transport
				? json_boolean(dest_views_in_sync(views, nviews) &&
					       transport_has_all(s->info.transport, js.head_lsn))
				: json_null());
	free(views);
	return o;
}

/* One metric family of one unlabelled sample, with its HELP and TYPE. */
static void metric(struct strbuf *sb, const char *name, const char *type, const char *help,
		   uint64_t value)
{
	strbuf_printf(sb, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name, help, name, type, name,
		      (unsigned long long)value);
}

static void metrics_text(struct status *s, struct strbuf *sb)
{
	struct readahead_stats ra;
	struct journal_stats js;
	struct dest_view *views = NULL;
	size_t nviews = 0;

	journal_stats(s->info.journal, &js);
	readahead_stats(&ra);
	metric(sb, "aimfs_head_lsn", "gauge", "LSN of the last record journaled", js.head_lsn);
	metric(sb, "aimfs_journal_bytes", "gauge", "bytes of segments in the journal directory",
	       js.journal_bytes);
	metric(sb, "aimfs_journal_max_bytes", "gauge",
	       "journal size limit (journal_max; applies with destinations)", js.journal_max);
	metric(sb, "aimfs_writes_waiting", "gauge", "writes waiting for journal space (overflow=block)",
	       js.writes_waiting);
	metric(sb, "aimfs_records_total", "counter", "records journaled", js.records);
	metric(sb, "aimfs_journaled_bytes_total", "counter", "bytes journaled", js.bytes);
	metric(sb, "aimfs_segments_recycled_total", "counter",
	       "segment files written over a pruned one", js.recycled);
	metric(sb, "aimfs_open_segment", "gauge", "number of the segment being written",
	       js.open_segment);
	metric(sb, "aimfs_durable_segment", "gauge", "number of the last sealed, durable segment",
	       js.durable_segment);
	metric(sb, "aimfs_images", "gauge", "images the mount knows", js.images);
	metric(sb, "aimfs_actlog_extents", "gauge",
	       "extents the activity log holds at most (al_extents)", js.al.slots);
	metric(sb, "aimfs_actlog_extents_in_set", "gauge",
	       "extents in the activity log's durable set: what a power cut now would compare"
	       " with every destination", js.al.resident);
	metric(sb, "aimfs_actlog_extents_hot", "gauge",
	       "extents in the set written since the last checkpoint", js.al.hot);
	metric(sb, "aimfs_actlog_writes_total", "counter",
	       "writes of the activity log (a write to an extent not in the set)", js.al.transactions);
	metric(sb, "aimfs_actlog_checkpoints_total", "counter",
	       "checkpoints (journal durable, then the backing filesystem synced)",
	       js.al.checkpoints);
	metric(sb, "aimfs_actlog_stalls_total", "counter",
	       "writes that waited for a checkpoint because every extent of the activity log"
	       " was hot (raise al_extents)", js.al.stalls);
	metric(sb, "aimfs_readahead_total", "counter",
	       "ranges read ahead for O_DIRECT files read sequentially", ra.read);
	metric(sb, "aimfs_readahead_used_total", "counter", "reads answered from a range read ahead",
	       ra.used);
	metric(sb, "aimfs_readahead_changed_total", "counter",
	       "ranges read ahead then not used because the file changed meanwhile", ra.changed);
	metric(sb, "aimfs_journal_failing", "gauge",
	       "1 while the journal's writes fail (a full or read-only disk); see journal_error in"
	       " /status", js.failing);
	metric(sb, "aimfs_journal_error_errno", "gauge",
	       "errno of the journal's last failure (28 ENOSPC, 122 EDQUOT, 30 EROFS; 0 none)",
	       (uint64_t)-js.last_error);
	metric(sb, "aimfs_journal_errors_total", "counter", "journal writes and syncs that failed",
	       js.failures);
	metric(sb, "aimfs_journal_error_timestamp_seconds", "gauge",
	       "when the current or last journal failure began (0 never)", js.failed_ns / 1000000000ULL);
	metric(sb, "aimfs_journal_error_cleared_timestamp_seconds", "gauge",
	       "when the last journal failure cleared (0 while it lasts, or never)",
	       js.failing ? 0 : js.cleared_ns / 1000000000ULL);
	metric(sb, "aimfs_journal_owed_records", "gauge",
	       "records the journal owes since its disk failed (journaled as soon as it can)",
	       js.owed);
	metric(sb, "aimfs_backing_writeback_lost", "gauge",
	       "1 once the backing filesystem failed to write back: fsyncs fail until a remount"
	       " redoes the journal", js.al.writeback_lost);
	if (s->info.transport && transport_views(s->info.transport, &views, &nviews) == 0) {
		dest_views_metrics(views, nviews, sb);
		free(views);
	}
}

/* Takes o, answers it as JSON. */
static int json_reply(struct httpd_response *resp, unsigned status, json_t *o)
{
	char *text = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(6));

	json_decref(o);
	if (!text)
		return -ENOMEM;
	resp->status = status;
	resp->content_type = "application/json";
	resp->len = strlen(text);
	resp->body = text;
	return 0;
}

static int handle(void *ctx, const char *path, struct httpd_response *resp)
{
	struct status *s = ctx;

	if (strcmp(path, "/status") == 0) {
		json_t *o = status_json(s);
		char *text = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(6));

		json_decref(o);
		if (!text)
			return -ENOMEM;
		resp->status = 200;
		resp->content_type = "application/json";
		resp->len = strlen(text);
		/* jansson's allocator is malloc: the server may free() it */
		resp->body = text;
		return 0;
	}
	if (strcmp(path, "/metrics") == 0) {
		struct strbuf sb = { 0 };

		metrics_text(s, &sb);
		resp->body = strbuf_take(&sb, &resp->len);
		resp->status = 200;
		resp->content_type = "text/plain; version=0.0.4";
		return resp->body ? 0 : -ENOMEM;
	}
	if (strcmp(path, "/marks") == 0)
		return json_reply(resp, 200, marks_list(s));
	if (strcmp(path, "/verify") == 0) {
		json_t *o = s->info.resync ? resync_verify_status(s->info.resync) : NULL;

		if (!o)
			return httpd_text(resp, 404, "application/json",
					  "{\"error\": \"no verification yet\"}\n");
		return json_reply(resp, 200, o);
	}
	return httpd_text(resp, 404, "text/plain", "try /status, /metrics or /marks\n");
}

static int error_reply(struct httpd_response *resp, unsigned status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int error_reply(struct httpd_response *resp, unsigned status, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	return json_reply(resp, status, json_pack("{s:o}", "error", json_text(msg)));
}

/* Waits until segment is durable (sealed, fsynced, renamed); false if it
 * is not within MARK_DURABLE_WAIT_NS. */
static bool wait_durable(struct journal *j, uint64_t segment)
{
	uint64_t deadline = clock_mono_ns() + MARK_DURABLE_WAIT_NS;
	struct journal_stats js;

	for (;;) {
		journal_stats(j, &js);
		if (js.durable_segment >= segment)
			return true;
		if (clock_mono_ns() > deadline)
			return false;
		usleep(2000);
	}
}

/*
 * POST /mark/NAME: journals a MARK labelled NAME now, seals its segment so
 * that it ships without waiting for segment_age, and answers once the
 * segment is durable: 201 {"name", "lsn", "segment", "time", "time_ns",
 * "durable"}.  400 for a name a MARK cannot carry, 409 for a name in use.
 */
static int handle_mark(struct status *s, const char *name, struct httpd_response *resp)
{
	const struct mark *old;
	struct mark m;
	uint64_t segment = 0;
	bool durable;
	json_t *o;
	int r;

	/* UTF-8 too, since every listing of marks is JSON (the format
	 * itself takes any bytes but control characters). */
	if (!seg_mark_label_valid(name, strlen(name)) || !text_is_utf8(name, strlen(name)))
		return error_reply(resp, 400, "a mark's name is 1 to %d bytes of UTF-8, without"
				   " control characters", SEG_MARK_MAX);
	pthread_mutex_lock(&s->mark_lock);
	if (!s->marks_known) {
		pthread_mutex_unlock(&s->mark_lock);
		return error_reply(resp, 503, "the marks in the catalog could not be read at mount,"
				   " so a new name cannot be checked; see aimfs's log");
	}
	old = marks_find(s, name);
	if (old) {
		char tbuf[64];

		r = error_reply(resp, 409, "mark \"%s\" exists already (LSN %" PRIu64 ", %s);"
				" a mark's name names one point: choose another", name, old->lsn,
				clock_iso8601(old->time_ns, 3, tbuf, sizeof tbuf));
		pthread_mutex_unlock(&s->mark_lock);
		return r;
	}
	snprintf(m.name, sizeof m.name, "%s", name);
	r = journal_mark(s->info.journal, name, &m.lsn, &segment, &m.time_ns);
	if (r == 0)
		r = marks_add(s, m.name, m.lsn, m.time_ns);
	pthread_mutex_unlock(&s->mark_lock);
	if (r < 0) {
		log_error("mark \"%s\": %s", name, strerror(-r));
		return error_reply(resp, 503, "journaling the mark failed: %s", strerror(-r));
	}
	/* Ship it now, not when segment_age or idleness would seal it. */
	if (journal_seal(s->info.journal) < 0)
		log_warn("mark \"%s\" at LSN %" PRIu64 ": sealing its segment failed; it ships"
			 " when the journal seals it", name, m.lsn);
	durable = wait_durable(s->info.journal, segment);
	log_info("mark \"%s\" at LSN %" PRIu64 " (segment %" PRIu64 ")%s", name, m.lsn, segment,
		 durable ? "" : "; its segment is not durable yet");
	o = mark_json(&m);
	json_object_set_new(o, "segment", json_integer((json_int_t)segment));
	json_object_set_new(o, "durable", json_boolean(durable));
	return json_reply(resp, 201, o);
}

/* POST /verify or /verify/<image>: start verifying against every remote;
 * POST /mark/<name>: journal a mark. */
static int handle_post(void *ctx, const char *path, struct httpd_response *resp)
{
	struct status *s = ctx;
	const char *image = NULL;
	uint64_t id;
	int r;

	if (strncmp(path, "/mark/", 6) == 0)
		return handle_mark(s, path + 6, resp);
	if (strcmp(path, "/verify") == 0)
		image = NULL;
	else if (strncmp(path, "/verify/", 8) == 0 && path[8])
		image = path + 8;
	else
		return httpd_text(resp, 404, "text/plain",
				  "POST /verify, /verify/<image> or /mark/<name>\n");
	if (!s->info.resync)
		return httpd_text(resp, 409, "application/json",
				  "{\"error\": \"no destinations to verify against\"}\n");
	r = resync_verify(s->info.resync, image, &id);
	if (r == -ENOENT)
		return httpd_text(resp, 404, "application/json",
				  "{\"error\": \"no such image\"}\n");
	if (r < 0)
		return r;
	return json_reply(resp, 202, json_pack("{s:I}", "id", (json_int_t)id));
}

int status_start(const char *addr, const struct status_info *info, struct status **out)
{
	struct status *s = calloc(1, sizeof *s);
	int r;

	if (!s)
		return -ENOMEM;
	s->info = *info;
	s->started_ns = clock_wall_ns();
	pthread_mutex_init(&s->mark_lock, NULL);
	marks_load(s);
	r = httpd_start(addr, handle, s, &s->httpd);
	if (r < 0) {
		pthread_mutex_destroy(&s->mark_lock);
		free(s->marks);
		free(s);
		return r;
	}
	httpd_on_post(s->httpd, handle_post);
	*out = s;
	return 0;
}

void status_stop(struct status *s)
{
	if (!s)
		return;
	httpd_stop(s->httpd);
	pthread_mutex_destroy(&s->mark_lock);
	free(s->marks);
	free(s);
}
