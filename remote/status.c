/*
 * status.c — aim-remote's GET /status (JSON, jansson) and GET /metrics
 * (Prometheus text), served by common/httpd on --status (loopback by
 * default).  Every number comes from the groups' snapshots and the
 * receiver's counters; nothing here touches the disk or the state.
 *
 * lag_seconds: how far behind the source the targets are, as far as this
 * site can know: 0 when no received segment is waiting to be applied;
 * otherwise now minus the source time of the last applied record (the
 * targets show the source as it was then, and the source has written
 * since, because a later segment is here).  Before anything was applied it
 * counts from the arrival of the oldest pending segment.  Segments still
 * on their way are invisible here: the source's status shows those.
 *
 * consistent: false from the durable point of a SYNC_BEGIN to that of the
 * next SYNC_END (docs/RESYNC.md): the targets are then being resynchronised
 * and are not a crash-consistent copy of any point of the source, whatever
 * applied_lsn says; sync_since (the SYNC_BEGIN's source time),
 * sync_since_lsn and sync_destination say which resync.  A group whose
 * state is not loaded yet is not claimed consistent either.
 *
 * inbox_full: why the receiver last refused a segment of the group for
 * want of room in the inbox, with the figures; null once a segment was
 * stored with room to spare.  The receiver object counts connections and
 * what the guard closed (guard.c), and the uploads being received.
 *
 * POST /resume[/GROUP] asks every stopped group (or GROUP) to start again
 * and answers {"resumed": N} (404 for a group not known here).  POST
 * /hold, /release and /promote are failover.c's (failover_post).
 *
 * hold: null, or the group's hold (failover.c, hold_json): the point as
 * asked, whether it is reached and at which record, the recovery point
 * the held copy represents, what waits in the inbox, and a promotion's
 * progress ("promoting", "promoted", "refused" with the reason in note).
 */
#include "remote_i.h"
#include "clock.h"
#include "httpd.h"
#include "jsontext.h"
#include "strbuf.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef AIM_VERSION
#define AIM_VERSION "unknown"
#endif

struct status {
	struct remote *r;
	struct httpd *httpd;
};

static double lag_seconds(const struct group_snapshot *s, uint64_t now)
{
	uint64_t since;

	if (!s->backlog_segments)
		return 0;
	since = s->applied_time_ns ? s->applied_time_ns : s->oldest_pending_ns;
	return since && now > since ? (double)(now - since) / 1e9 : 0;
}

static json_t *u64(uint64_t v)
{
	return json_integer((json_int_t)v);
}

static json_t *time_or_null(uint64_t ns)
{
	char buf[64];

	return ns ? json_string(clock_iso8601(ns, 3, buf, sizeof buf)) : json_null();
}

struct json_ctx {
	json_t *groups;
	uint64_t now;
};

static void group_json(void *ctx, const struct group_snapshot *s)
{
	struct json_ctx *c = ctx;
	json_t *o = json_object(), *q = json_array();

	json_object_set_new(o, "group", json_string(s->name));
	json_object_set_new(o, "state", json_string(group_state_name(s->state)));
	json_object_set_new(o, "applied_segment", u64(s->applied_segment));
	json_object_set_new(o, "applied_lsn", u64(s->applied_lsn));
	json_object_set_new(o, "consistent", json_boolean(s->consistent));
	json_object_set_new(o, "sync_since",
			    s->consistent ? json_null() : time_or_null(s->sync_time_ns));
	json_object_set_new(o, "sync_since_lsn",
			    s->consistent || !s->sync_lsn ? json_null() : u64(s->sync_lsn));
	json_object_set_new(o, "sync_destination",
			    s->consistent || !s->sync_dest ? json_null() : u64(s->sync_dest));
	json_object_set_new(o, "last_applied_source_time", time_or_null(s->applied_time_ns));
	json_object_set_new(o, "lag_seconds", json_real(lag_seconds(s, c->now)));
	json_object_set_new(o, "applying", s->applying ? u64(s->applying) : json_null());
	json_object_set_new(o, "waiting_for", s->waiting_for ? u64(s->waiting_for) : json_null());
	json_object_set_new(o, "error", s->error[0] ? json_text(s->error) : json_null());
	json_object_set_new(o, "inbox_full",
			    s->inbox_full[0] ? json_text(s->inbox_full) : json_null());
	json_object_set_new(o, "backlog_segments", u64(s->backlog_segments));
	json_object_set_new(o, "backlog_bytes", u64(s->backlog_bytes));
	json_object_set_new(o, "segments_applied", u64(s->segments_applied));
	json_object_set_new(o, "records_applied", u64(s->records_applied));
	json_object_set_new(o, "bytes_written", u64(s->bytes_written));
	json_object_set_new(o, "mismatch_ranges", u64(s->mismatch_ranges));
	json_object_set_new(o, "mismatch_bytes", u64(s->mismatch_bytes));
	json_object_set_new(o, "quarantined_total", u64(s->quarantined));
	for (size_t i = 0; i < s->nquarantine; i++) {
		json_t *e = json_object();

		json_object_set_new(e, "segment", u64(s->q[i].segment));
		json_object_set_new(e, "reason", json_text(s->q[i].reason));
		json_object_set_new(e, "time", time_or_null(s->q[i].time_ns));
		json_array_append_new(q, e);
	}
	json_object_set_new(o, "quarantined", q);
	json_object_set_new(o, "hold", s->hold.active ? hold_json(&s->hold, s, c->now) : json_null());
	json_array_append_new(c->groups, o);
}

#define LOAD(field) u64(atomic_load(&r->rx.field))

static json_t *limits_json(const struct remote *r)
{
	const struct remote_limits *l = &r->cfg.lim;
	json_t *o = json_object();

	json_object_set_new(o, "tls_priority", json_text(r->cfg.tls_priority));
	json_object_set_new(o, "max_connections", u64(l->max_connections));
	json_object_set_new(o, "max_per_address", u64(l->max_per_address));
	json_object_set_new(o, "max_unauthenticated", u64(l->max_unauthenticated));
	json_object_set_new(o, "handshake_timeout_seconds", json_real((double)l->handshake_ns / 1e9));
	json_object_set_new(o, "header_timeout_seconds", json_real((double)l->header_ns / 1e9));
	json_object_set_new(o, "idle_timeout_seconds", json_real((double)l->idle_ns / 1e9));
	json_object_set_new(o, "min_rate", u64(l->min_rate));
	json_object_set_new(o, "max_uploads", u64(l->max_uploads));
	json_object_set_new(o, "max_group_uploads", u64(l->max_group_uploads));
	json_object_set_new(o, "max_temp", u64(l->max_temp));
	json_object_set_new(o, "inbox_reserve", u64(l->inbox_reserve));
	return o;
}

static json_t *connections_json(struct remote *r)
{
	json_t *o = json_object();

	json_object_set_new(o, "open", LOAD(conns_open));
	json_object_set_new(o, "unauthenticated", LOAD(conns_unauth));
	json_object_set_new(o, "accepted", LOAD(conns_accepted));
	json_object_set_new(o, "handshake_failures", LOAD(handshake_failures));
	json_object_set_new(o, "handshake_timeouts", LOAD(handshake_timeouts));
	json_object_set_new(o, "header_timeouts", LOAD(header_timeouts));
	json_object_set_new(o, "idle_closed", LOAD(idle_closed));
	json_object_set_new(o, "slow_uploads", LOAD(slow_uploads));
	json_object_set_new(o, "evicted", LOAD(evicted));
	return o;
}

static json_t *receiver_json(struct remote *r)
{
	json_t *o = json_object(), *rej = json_object();
	uint64_t total = 0;

	json_object_set_new(o, "enabled", json_boolean(r->cfg.listen != NULL));
	json_object_set_new(o, "listen", r->cfg.listen ? json_text(r->cfg.listen) : json_null());
	json_object_set_new(o, "accepted", u64(atomic_load(&r->rx.accepted)));
	json_object_set_new(o, "duplicates", u64(atomic_load(&r->rx.duplicates)));
	json_object_set_new(o, "bytes_received", u64(atomic_load(&r->rx.bytes)));
	json_object_set_new(o, "gets", u64(atomic_load(&r->rx.gets)));
	for (unsigned code = 400; code < RX_CODES; code++) {
		uint64_t n = atomic_load(&r->rx.by_code[code]);
		char key[8];

		if (!n)
			continue;
		snprintf(key, sizeof key, "%u", code);
		json_object_set_new(rej, key, u64(n));
		total += n;
	}
	json_object_set_new(o, "rejected", rej);
	json_object_set_new(o, "rejected_total", u64(total));
	json_object_set_new(o, "uploads", LOAD(uploads));
	json_object_set_new(o, "temp_bytes", LOAD(temp_bytes));
	json_object_set_new(o, "kept_files", LOAD(free_files));
	json_object_set_new(o, "kept_bytes", LOAD(free_bytes));
	json_object_set_new(o, "written_over", LOAD(reused));
	json_object_set_new(o, "checks_reused", LOAD(checks_reused));
	json_object_set_new(o, "connections", connections_json(r));
	if (r->cfg.listen)
		json_object_set_new(o, "limits", limits_json(r));
	return o;
}

static json_t *status_json(struct remote *r)
{
	struct json_ctx c = { json_array(), clock_wall_ns() };
	json_t *o = json_object();

	json_object_set_new(o, "role", json_string("remote"));
	json_object_set_new(o, "version", json_string(AIM_VERSION));
	json_object_set_new(o, "inbox", json_text(r->cfg.inbox));
	json_object_set_new(o, "target_dir", json_text(r->cfg.target_dir));
	json_object_set_new(o, "state_dir", json_text(r->state_dir));
	json_object_set_new(o, "retain", json_boolean(r->cfg.retain));
	json_object_set_new(o, "uptime_seconds", json_real((double)(c.now - r->started_ns) / 1e9));
	groups_each(r, group_json, &c);
	json_object_set_new(o, "groups", c.groups);
	json_object_set_new(o, "receiver", receiver_json(r));
	if (r->cfg.npulls)
		json_object_set_new(o, "pulls", puller_status_json(r));
	return o;
}

struct metrics_ctx {
	struct strbuf *sb;
	uint64_t now;
	int pass;
};

/* One metric family per pass, so that each family's lines stay together
 * as the text format asks. */
static void group_metrics(void *ctx, const struct group_snapshot *s)
{
	struct metrics_ctx *c = ctx;
	struct strbuf *sb = c->sb;
	const char *g = s->name;

	switch (c->pass) {
	case 0:
		strbuf_printf(sb, "aim_remote_applied_segment{group=\"%s\"} %" PRIu64 "\n", g,
			      s->applied_segment);
		break;
	case 1:
		strbuf_printf(sb, "aim_remote_applied_lsn{group=\"%s\"} %" PRIu64 "\n", g,
			      s->applied_lsn);
		break;
	case 2:
		strbuf_printf(sb, "aim_remote_lag_seconds{group=\"%s\"} %.3f\n", g,
			      lag_seconds(s, c->now));
		break;
	case 3:
		strbuf_printf(sb, "aim_remote_backlog_segments{group=\"%s\"} %" PRIu64 "\n", g,
			      s->backlog_segments);
		break;
	case 4:
		strbuf_printf(sb, "aim_remote_backlog_bytes{group=\"%s\"} %" PRIu64 "\n", g,
			      s->backlog_bytes);
		break;
	case 5:
		strbuf_printf(sb, "aim_remote_waiting_for_segment{group=\"%s\"} %" PRIu64 "\n", g,
			      s->waiting_for);
		break;
	case 6:
		for (int i = 0; i < GROUP_STATES; i++)
			strbuf_printf(sb, "aim_remote_group_state{group=\"%s\",state=\"%s\"} %d\n", g,
				      group_state_name((enum group_state)i), (int)s->state == i);
		break;
	case 7:
		strbuf_printf(sb, "aim_remote_quarantined_total{group=\"%s\"} %" PRIu64 "\n", g,
			      s->quarantined);
		break;
	case 8:
		strbuf_printf(sb, "aim_remote_applied_bytes_total{group=\"%s\"} %" PRIu64 "\n", g,
			      s->bytes_written);
		break;
	case 9:
		strbuf_printf(sb, "aim_remote_group_consistent{group=\"%s\"} %d\n", g,
			      s->consistent ? 1 : 0);
		break;
	case 10:
		strbuf_printf(sb, "aim_remote_mismatch_ranges_total{group=\"%s\"} %" PRIu64 "\n",
			      g, s->mismatch_ranges);
		break;
	case 11:
		strbuf_printf(sb, "aim_remote_mismatch_bytes_total{group=\"%s\"} %" PRIu64 "\n",
			      g, s->mismatch_bytes);
		break;
	}
}

static void metrics_text(struct remote *r, struct strbuf *sb)
{
	static const char *const families[][3] = {
		{ "aim_remote_applied_segment", "gauge", "last segment applied" },
		{ "aim_remote_applied_lsn", "gauge", "source LSN the targets are durable at" },
		{ "aim_remote_lag_seconds", "gauge",
		  "how far the targets are behind the source (0 when nothing waits)" },
		{ "aim_remote_backlog_segments", "gauge", "segments received and not applied yet" },
		{ "aim_remote_backlog_bytes", "gauge", "bytes of segments received and not applied yet" },
		{ "aim_remote_waiting_for_segment", "gauge",
		  "segment the group waits for (0 if it waits for none)" },
		{ "aim_remote_group_state", "gauge", "1 for the state the group is in, 0 for the others" },
		{ "aim_remote_quarantined_total", "counter", "segments refused and moved to quarantine" },
		{ "aim_remote_applied_bytes_total", "counter", "bytes written to the targets" },
		{ "aim_remote_group_consistent", "gauge",
		  "1 if the targets are a crash-consistent copy (0 during a resync)" },
		{ "aim_remote_mismatch_ranges_total", "counter", "differing ranges HASH records found" },
		{ "aim_remote_mismatch_bytes_total", "counter", "differing bytes HASH records found" },
	};
	struct metrics_ctx c = { sb, clock_wall_ns(), 0 };

	for (c.pass = 0; c.pass < (int)(sizeof families / sizeof families[0]); c.pass++) {
		strbuf_printf(sb, "# HELP %s %s\n# TYPE %s %s\n", families[c.pass][0],
			      families[c.pass][2], families[c.pass][0], families[c.pass][1]);
		groups_each(r, group_metrics, &c);
	}
	strbuf_printf(sb, "# HELP aim_remote_received_segments_total segments the receiver stored\n"
			  "# TYPE aim_remote_received_segments_total counter\n"
			  "aim_remote_received_segments_total %" PRIu64 "\n",
		      (uint64_t)atomic_load(&r->rx.accepted));
	strbuf_printf(sb, "# HELP aim_remote_duplicate_segments_total uploads of a segment already"
			  " here or applied\n"
			  "# TYPE aim_remote_duplicate_segments_total counter\n"
			  "aim_remote_duplicate_segments_total %" PRIu64 "\n",
		      (uint64_t)atomic_load(&r->rx.duplicates));
	strbuf_printf(sb, "# HELP aim_remote_received_bytes_total bytes the receiver stored\n"
			  "# TYPE aim_remote_received_bytes_total counter\n"
			  "aim_remote_received_bytes_total %" PRIu64 "\n",
		      (uint64_t)atomic_load(&r->rx.bytes));
	{
		static const struct {
			const char *name, *type, *help;
			size_t off;
		} conns[] = {
			{ "aim_remote_connections", "gauge", "connections open now", offsetof(struct rx_stats, conns_open) },
			{ "aim_remote_connections_unauthenticated", "gauge", "connections open that have not authenticated yet",
			  offsetof(struct rx_stats, conns_unauth) },
			{ "aim_remote_connections_accepted_total", "counter", "connections accepted",
			  offsetof(struct rx_stats, conns_accepted) },
			{ "aim_remote_handshake_failures_total", "counter", "TLS handshakes that failed (no or bad client certificate, old TLS)",
			  offsetof(struct rx_stats, handshake_failures) },
			{ "aim_remote_handshake_timeouts_total", "counter", "connections closed for a TLS handshake past its deadline",
			  offsetof(struct rx_stats, handshake_timeouts) },
			{ "aim_remote_header_timeouts_total", "counter", "connections closed for a request header past its deadline",
			  offsetof(struct rx_stats, header_timeouts) },
			{ "aim_remote_idle_closed_total", "counter", "idle connections closed", offsetof(struct rx_stats, idle_closed) },
			{ "aim_remote_slow_uploads_total", "counter", "uploads cut off for a body slower than the minimum rate",
			  offsetof(struct rx_stats, slow_uploads) },
			{ "aim_remote_evicted_total", "counter", "unauthenticated connections closed to make room", offsetof(struct rx_stats, evicted) },
			{ "aim_remote_uploads", "gauge", "request bodies being received now", offsetof(struct rx_stats, uploads) },
			{ "aim_remote_temp_bytes", "gauge", "bytes of temporary files of uploads under way", offsetof(struct rx_stats, temp_bytes) },
			{ "aim_remote_kept_files", "gauge", "applied segment files kept in inbox/.free for uploads to be written over",
			  offsetof(struct rx_stats, free_files) },
			{ "aim_remote_kept_bytes", "gauge", "bytes of those files", offsetof(struct rx_stats, free_bytes) },
			{ "aim_remote_written_over_total", "counter", "uploads written over a kept file instead of a new one",
			  offsetof(struct rx_stats, reused) },
			{ "aim_remote_checks_reused_total", "counter",
			  "segments validated with the hashes the receiver or a puller took of their payloads, not read and hashed again",
			  offsetof(struct rx_stats, checks_reused) },
		};

		for (size_t i = 0; i < sizeof conns / sizeof conns[0]; i++)
			strbuf_printf(sb, "# HELP %s %s\n# TYPE %s %s\n%s %" PRIu64 "\n", conns[i].name,
				      conns[i].help, conns[i].name, conns[i].type, conns[i].name,
				      (uint64_t)atomic_load((atomic_uint_fast64_t *)((char *)&r->rx +
										  conns[i].off)));
	}
	strbuf_printf(sb, "# HELP aim_remote_rejected_total uploads refused, by HTTP status\n"
			  "# TYPE aim_remote_rejected_total counter\n");
	for (unsigned code = 400; code < RX_CODES; code++) {
		uint64_t n = atomic_load(&r->rx.by_code[code]);

		if (n)
			strbuf_printf(sb, "aim_remote_rejected_total{code=\"%u\"} %" PRIu64 "\n", code,
				      n);
	}
	puller_metrics(r, sb);
}

static int handle(void *ctx, const char *path, struct httpd_response *resp)
{
	struct status *s = ctx;

	if (strcmp(path, "/status") == 0) {
		json_t *o = status_json(s->r);
		char *text = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(6));

		json_decref(o);
		if (!text)
			return -ENOMEM;
		resp->status = 200;
		resp->content_type = "application/json";
		resp->len = strlen(text);
		resp->body = text; /* jansson allocates with malloc */
		return 0;
	}
	if (strcmp(path, "/metrics") == 0) {
		struct strbuf sb = { 0 };

		metrics_text(s->r, &sb);
		resp->body = strbuf_take(&sb, &resp->len);
		resp->status = 200;
		resp->content_type = "text/plain; version=0.0.4";
		return resp->body ? 0 : -ENOMEM;
	}
	return httpd_text(resp, 404, "text/plain", "try /status or /metrics\n");
}

/* POST /resume, POST /resume/<group>; /hold, /release, /promote. */
static int handle_post(void *ctx, const char *path, struct httpd_response *resp)
{
	struct status *s = ctx;
	const char *name = NULL;
	char text[128];
	uint8_t id[16];
	int n;

	if (failover_path(path))
		return failover_post(s->r, path, resp);
	if (strncmp(path, "/resume", 7) != 0 || (path[7] && path[7] != '/'))
		return httpd_text(resp, 404, "application/json",
				  "{\"error\": \"POST /resume[/GROUP], /hold[/GROUP][/at/POINT],"
				  " /release[/GROUP] or /promote[/GROUP][/force][/at/POINT]\"}\n");
	if (path[7] == '/') {
		name = path + 8;
		if (!group_name_valid(name, id))
			return httpd_text(resp, 400, "application/json",
					  "{\"error\": \"not a group: expected a lowercase UUID\"}\n");
	}
	n = groups_resume(s->r, name);
	if (n < 0)
		return httpd_text(resp, 404, "application/json",
				  "{\"error\": \"no such group here\"}\n");
	snprintf(text, sizeof text, "{\"resumed\": %d}\n", n);
	return httpd_text(resp, 200, "application/json", text);
}

int status_start(struct remote *r, const char *addr, struct status **out)
{
	struct status *s = calloc(1, sizeof *s);
	int rc;

	if (!s)
		return -ENOMEM;
	s->r = r;
	rc = httpd_start(addr, handle, s, &s->httpd);
	if (rc < 0) {
		free(s);
		return rc;
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
