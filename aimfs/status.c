/*
 * status.c — aimfs's /status and /metrics.  JSON is made with jansson;
 * every number comes from a snapshot taken under the owning module's lock,
 * so a reply is consistent per module and never blocks a write for long.
 * The destinations' part of both is printed from one snapshot each
 * (transport_views), so /status and /metrics tell the same state.
 */
#include "status.h"
#include "clock.h"
#include "httpd.h"
#include "journal.h"
#include "resync.h"
#include "format.h"
#include "strbuf.h"
#include "transport.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct status {
	struct status_info info;
	struct httpd *httpd;
	uint64_t started_ns;
};

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
	json_object_set_new(o, "backing_dir", json_string(s->info.backing_dir));
	json_object_set_new(o, "mountpoint", json_string(s->info.mountpoint));
	json_object_set_new(o, "journal_dir", json_string(s->info.journal_dir));
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
	struct journal_stats js;
	struct dest_view *views = NULL;
	size_t nviews = 0;

	journal_stats(s->info.journal, &js);
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
	if (strcmp(path, "/verify") == 0) {
		json_t *o = s->info.resync ? resync_verify_status(s->info.resync) : NULL;

		if (!o)
			return httpd_text(resp, 404, "application/json",
					  "{\"error\": \"no verification yet\"}\n");
		return json_reply(resp, 200, o);
	}
	return httpd_text(resp, 404, "text/plain", "try /status or /metrics\n");
}

/* POST /verify or /verify/<image>: start verifying against every remote. */
static int handle_post(void *ctx, const char *path, struct httpd_response *resp)
{
	struct status *s = ctx;
	const char *image = NULL;
	uint64_t id;
	int r;

	if (strcmp(path, "/verify") == 0)
		image = NULL;
	else if (strncmp(path, "/verify/", 8) == 0 && path[8])
		image = path + 8;
	else
		return httpd_text(resp, 404, "text/plain", "POST /verify or /verify/<image>\n");
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
	r = httpd_start(addr, handle, s, &s->httpd);
	if (r < 0) {
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
	free(s);
}
