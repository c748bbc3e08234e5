/*
 * failover.c — holds and promotion: the rules of an aim-remote group's
 * test failover (hold, release) and failover (promote), and where in a
 * stream a held group may stop.
 *
 * A hold stops a group at a point of its stream; segments keep arriving,
 * are validated by the receiver and wait in the inbox.  A point is never
 * in the middle of a barrier interval: a held group stops right after a
 * barrier, or after a MARK the operator named, so that the held targets
 * are a crash-consistent copy of the source as it was at a barrier and a
 * test VM can boot on them (on overlays: nothing writes the targets while
 * held).  A barrier here is a FLUSH record (the source's) or a SYNC_END
 * (the end of a resynchronisation, from which the targets are a copy of
 * the source again; after a quiesced VM's last FLUSH it is the last point
 * of the stream), where the targets are a consistent copy: not one inside
 * a resynchronisation, unless a forced promote takes the copy as it is.
 * Which record, for each kind of point:
 *
 *   now     the next barrier among the segments already here, or where the
 *           group is if none is here (it is then only as consistent as
 *           the end of the last segment applied: see the status's record);
 *   LSN     the last barrier at or before it, or the record itself if it
 *           is a MARK;
 *   TIME    the last barrier journaled at or before it (records after the
 *           first one journaled later do not count), as `aimctl replay
 *           --until TIME` finds its FLUSH;
 *   MARK    that MARK;
 *   last    (promote's default) the last barrier of what arrived: the
 *           latest consistent point a failover can have.
 *
 * The group cannot look back: records it applied are applied.  So while a
 * hold is pending it applies from barrier to barrier, and goes past a
 * barrier only when it knows of a later one before the point (in the same
 * segment, or in the segments after it that are already here,
 * hold_scan); otherwise it stops at that barrier and waits for more
 * segments.  When the point ends within what it can see, it stops at the
 * last barrier before the end for good: the hold is reached.  A hold asked
 * while the group is between barriers (it was applying normally, whose
 * durable points include segment ends) and whose point has no barrier
 * after the group's position stops where the group is, and says so.
 *
 * Promote is a hold (at the point, or at the last barrier of what arrived)
 * that ends the group's life as a replica: from the moment it is asked the
 * receiver refuses the group's segments (409, with the reason), and once
 * the hold is reached the group is promoted for good if its copy is
 * consistent (or the operator forced it), which survives restarts.  A
 * group that was in the middle of a resynchronisation is not a consistent
 * copy: promote refuses it at once without --force; one that turned
 * inconsistent in the segments it applied to get there stays held, and the
 * refusal is in its status.  So does one whose point needs a segment that
 * had not arrived when it was asked (groups.c): it would never come, and a
 * promote at another point than the one asked would be a surprise.
 *
 * The rules run on the group's own thread (groups.c hands it each request),
 * so they see the group as it is between two records, and every change is
 * recorded in the state before it is answered.
 *
 * Thread safety: hold_scan, hold_json and the name functions are pure;
 * failover_decide and hold_reach run on the group's thread with its state
 * connection; failover_post runs on the status listener's thread.
 */
#include "remote_i.h"
#include "clock.h"
#include "httpd.h"
#include "jsontext.h"
#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_names[] = {
	[HOLD_NOW] = "now", [HOLD_LSN] = "lsn", [HOLD_TIME] = "time",
	[HOLD_MARK] = "mark", [HOLD_LAST] = "last",
};

const char *hold_kind_name(enum hold_kind k)
{
	return (size_t)k < sizeof kind_names / sizeof kind_names[0] && kind_names[k]
		       ? kind_names[k] : "?";
}

const char *failover_role_name(enum failover_role r)
{
	switch (r) {
	case FO_REFUSED:
		return "refused";
	case FO_PROMOTING:
		return "promoting";
	case FO_PROMOTED:
		return "promoted";
	default:
		return "";
	}
}

int hold_set_point(struct hold *h, enum hold_kind kind, const char *text)
{
	char err[256];

	memset(&h->pt, 0, sizeof h->pt);
	h->kind = kind;
	if (kind == HOLD_NOW || kind == HOLD_LAST) {
		snprintf(h->pt.text, sizeof h->pt.text, "%s", kind == HOLD_NOW ? "now"
							 : "the last barrier");
		return 0;
	}
	if (point_parse(text, &h->pt, err, sizeof err) < 0)
		return -EINVAL;
	if ((kind == HOLD_LSN && h->pt.kind != POINT_LSN) ||
	    (kind == HOLD_TIME && h->pt.kind != POINT_TIME) ||
	    (kind == HOLD_MARK && h->pt.kind != POINT_MARK))
		return -EINVAL;
	return 0;
}

/* ---- where a hold stops ---- */

static void take(struct hold_scan *out, const struct seg_record *r)
{
	out->stop_lsn = r->lsn;
	out->stop_time_ns = r->time_ns;
	out->stop_type = r->type;
}

static bool names_mark(const struct hold *h, const struct seg_record *r)
{
	size_t len = strlen(h->pt.mark);

	return r->type == SEG_MARK && r->payload_len == len && memcmp(r->payload, h->pt.mark, len) == 0;
}

void hold_scan(const struct hold *h, struct seg_view *v, uint64_t after, bool consistent,
	       struct hold_scan *out)
{
	struct seg_record r;
	bool barrier, named, ends;

	memset(out, 0, sizeof *out);
	out->consistent = consistent;
	seg_view_rewind(v);
	while (seg_view_next(v, &r) == 1) {
		if (r.lsn <= after)
			continue;
		/* Points that end before this record. */
		if ((h->kind == HOLD_LSN && r.lsn > h->pt.lsn) ||
		    (h->kind == HOLD_TIME && r.time_ns > h->pt.time_ns)) {
			out->ended = true;
			return;
		}
		if (r.type == SEG_SYNC_BEGIN)
			out->consistent = false;
		else if (r.type == SEG_SYNC_END)
			out->consistent = true;
		/* A barrier where the targets are a consistent copy (any, for
		 * a forced promote); the record a point names. */
		barrier = (r.type == SEG_FLUSH || r.type == SEG_SYNC_END) &&
			  (out->consistent || h->force);
		named = (h->kind == HOLD_LSN && r.lsn == h->pt.lsn && r.type == SEG_MARK) ||
			(h->kind == HOLD_MARK && names_mark(h, &r));
		if (barrier || named)
			take(out, &r);
		ends = named || (h->kind == HOLD_LSN && r.lsn == h->pt.lsn) ||
		       (h->kind == HOLD_NOW && barrier);
		if (ends) {
			out->ended = true;
			return;
		}
	}
}

bool hold_ends_with_arrivals(const struct hold *h)
{
	return h->kind == HOLD_NOW || h->kind == HOLD_LAST;
}

/* ---- answers ---- */

static json_t *time_or_null(uint64_t ns)
{
	char buf[64];

	return ns ? json_string(clock_iso8601(ns, 3, buf, sizeof buf)) : json_null();
}

static json_t *u64(uint64_t v)
{
	return json_integer((json_int_t)v);
}

json_t *hold_json(const struct hold *h, const struct group_snapshot *s, uint64_t now)
{
	json_t *o = json_object(), *rp;

	json_object_set_new(o, "point", json_text(h->pt.text));
	json_object_set_new(o, "kind", json_string(hold_kind_name(h->kind)));
	json_object_set_new(o, "since", time_or_null(h->set_ns));
	json_object_set_new(o, "asked_at_lsn", u64(h->asked_lsn));
	json_object_set_new(o, "reached", json_boolean(h->reached));
	json_object_set_new(o, "lsn", h->reached ? u64(h->stop_lsn) : json_null());
	json_object_set_new(o, "record", h->reached && h->stop_type
					 ? json_string(seg_type_name(h->stop_type)) : json_null());
	json_object_set_new(o, "source_time", h->reached ? time_or_null(h->stop_time_ns)
							 : json_null());
	/* What the held copy is: the recovery point a failover to it has. */
	rp = json_object();
	json_object_set_new(rp, "lsn", u64(s->applied_lsn));
	json_object_set_new(rp, "source_time", time_or_null(s->applied_time_ns));
	json_object_set_new(rp, "age_seconds", s->applied_time_ns && now > s->applied_time_ns
					       ? json_real((double)(now - s->applied_time_ns) / 1e9)
					       : json_null());
	json_object_set_new(rp, "consistent", json_boolean(s->consistent));
	json_object_set_new(o, "recovery_point", rp);
	json_object_set_new(o, "backlog_segments", u64(s->backlog_segments));
	json_object_set_new(o, "backlog_bytes", u64(s->backlog_bytes));
	json_object_set_new(o, "note", h->note[0] ? json_text(h->note) : json_null());
	json_object_set_new(o, "promote", h->role != FO_NONE
					  ? json_string(failover_role_name(h->role)) : json_null());
	json_object_set_new(o, "force", json_boolean(h->force));
	json_object_set_new(o, "promoted_at", time_or_null(h->promoted_ns));
	return o;
}

static void answer_text(struct failover_req *req, unsigned code, json_t *o)
{
	req->code = code;
	req->body = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
	json_decref(o);
}

static void refuse(struct failover_req *req, unsigned code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void refuse(struct failover_req *req, unsigned code, const char *fmt, ...)
{
	char why[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	answer_text(req, code, json_pack("{s:o}", "error", json_text(why)));
}

/* ---- the rules ---- */

static const char *verb(enum failover_op op)
{
	return op == FO_HOLD ? "hold" : op == FO_RELEASE ? "release" : "promote";
}

/* Refuses (409) a point the group applied already.  Returns true if it did. */
static bool already_applied(const struct failover_view *fv, struct failover_req *req)
{
	char t1[64], t2[64];
	uint64_t lsn;
	int r;

	switch (req->kind) {
	case HOLD_LSN:
		if (req->pt.lsn >= fv->applied_lsn)
			return false;
		refuse(req, 409, "%s of group %s at LSN %" PRIu64 ": that record is applied"
		       " already (the targets are at LSN %" PRIu64 "); nothing changed",
		       verb(req->op), fv->group, req->pt.lsn, fv->applied_lsn);
		return true;
	case HOLD_TIME:
		if (!fv->applied_time_ns || req->pt.time_ns >= fv->applied_time_ns)
			return false;
		refuse(req, 409, "%s of group %s at %s: records journaled after it are"
		       " applied already (the targets are at LSN %" PRIu64 ", journaled at %s);"
		       " nothing changed", verb(req->op), fv->group,
		       clock_iso8601(req->pt.time_ns, 9, t1, sizeof t1), fv->applied_lsn,
		       clock_iso8601(fv->applied_time_ns, 9, t2, sizeof t2));
		return true;
	case HOLD_MARK:
		r = state_mark_get(fv->st, fv->group, req->pt.mark, &lsn);
		if (r == -ENOENT || (r == 0 && lsn >= fv->applied_lsn))
			return false;
		if (r < 0) {
			refuse(req, 500, "cannot read the state database");
			return true;
		}
		refuse(req, 409, "%s of group %s at mark \"%s\": that MARK (LSN %" PRIu64
		       ") is applied already (the targets are at LSN %" PRIu64 "); nothing"
		       " changed", verb(req->op), fv->group, req->pt.mark, lsn, fv->applied_lsn);
		return true;
	default:
		return false;
	}
}

bool failover_decide(const struct failover_view *fv, struct hold *h, struct failover_req *req)
{
	struct hold n;
	char t[64];

	if (!fv->st) {
		refuse(req, 503, "group %s cannot read its state (see aim-remote's log); nothing"
		       " changed", fv->group);
		return false;
	}
	if (h->role == FO_PROMOTED) {
		refuse(req, 409, "group %s was promoted at %s (LSN %" PRIu64 "): it applies nothing"
		       " and receives nothing any more; nothing changed", fv->group,
		       clock_iso8601(h->promoted_ns, 3, t, sizeof t), h->stop_lsn);
		return false;
	}
	if (h->role == FO_PROMOTING) {
		refuse(req, 409, "group %s is being promoted (asked at %s, %s); nothing changed",
		       fv->group, clock_iso8601(h->set_ns, 3, t, sizeof t), h->pt.text);
		return false;
	}
	if (req->op == FO_RELEASE) {
		if (!h->active) {
			refuse(req, 409, "group %s is not held: there is nothing to release", fv->group);
			return false;
		}
		memset(&n, 0, sizeof n);
		if (state_hold_put(fv->st, fv->group, &n) < 0) {
			refuse(req, 500, "cannot record the release in the state database; group %s"
			       " is still held", fv->group);
			return false;
		}
		log_info("group %s: released (the hold at %s, asked at %s, %s); applying again",
			 fv->group, h->pt.text, clock_iso8601(h->set_ns, 3, t, sizeof t),
			 h->reached ? "was reached" : "was not reached yet");
		*h = n;
		req->code = 200;
		return true;
	}
	if (req->op == FO_PROMOTE && !fv->sync->consistent && !req->force) {
		refuse(req, 409, "group %s is not a consistent copy: a resynchronisation of"
		       " destination %" PRIu32 " is under way since LSN %" PRIu64 " (%s), and the"
		       " targets hold part of it; nothing was applied and nothing changed (force"
		       " promotes the copy as it is)", fv->group, fv->sync->dest,
		       fv->sync->begin_lsn, clock_iso8601(fv->sync->begin_ns, 3, t, sizeof t));
		return false;
	}
	if (already_applied(fv, req))
		return false;
	if (req->op == FO_HOLD && h->active && h->role == FO_NONE && h->kind == req->kind &&
	    strcmp(h->pt.text, req->pt.text) == 0) {
		/* The same hold again: nothing changes (aimctl waits for it). */
		req->code = 200;
		return false;
	}
	memset(&n, 0, sizeof n);
	n.active = true;
	n.kind = req->kind;
	n.pt = req->pt;
	if (req->kind == HOLD_NOW || req->kind == HOLD_LAST)
		hold_set_point(&n, req->kind, NULL);
	n.set_ns = clock_wall_ns();
	n.asked_lsn = fv->applied_lsn;
	n.role = req->op == FO_PROMOTE ? FO_PROMOTING : FO_NONE;
	n.force = req->op == FO_PROMOTE && req->force;
	if (state_hold_put(fv->st, fv->group, &n) < 0) {
		refuse(req, 500, "cannot record the %s in the state database; nothing changed",
		       verb(req->op));
		return false;
	}
	if (req->op == FO_PROMOTE)
		log_info("group %s: promote asked (at %s%s): its segments are refused from now on;"
			 " applying what arrived up to there", fv->group, n.pt.text,
			 n.force ? ", forced" : "");
	else
		log_info("group %s: hold asked at %s%s; the targets are at LSN %" PRIu64, fv->group,
			 n.pt.text, h->active ? " (replacing the hold before)" : "", fv->applied_lsn);
	*h = n;
	req->code = 200;
	return true;
}

bool hold_at_position(const struct failover_view *fv, const struct hold *h)
{
	uint64_t lsn;

	switch (h->kind) {
	case HOLD_LSN:
		return h->pt.lsn == fv->applied_lsn;
	case HOLD_MARK:
		return state_mark_get(fv->st, fv->group, h->pt.mark, &lsn) == 0 &&
		       lsn == fv->applied_lsn;
	default:
		return false;
	}
}

int hold_reach(const struct failover_view *fv, struct hold *h, uint64_t lsn, uint64_t time_ns,
	       uint8_t type, const char *note)
{
	struct hold n = *h;
	char t[64];
	int r;

	n.reached = true;
	n.stop_lsn = lsn;
	n.stop_time_ns = time_ns;
	n.stop_type = type;
	snprintf(n.note, sizeof n.note, "%s", note ? note : "");
	if (n.role == FO_PROMOTING) {
		if (fv->sync->consistent || n.force) {
			n.role = FO_PROMOTED;
			n.promoted_ns = clock_wall_ns();
			n.promoted_consistent = fv->sync->consistent;
		} else {
			n.role = FO_REFUSED;
			snprintf(n.note, sizeof n.note, "promote refused at LSN %" PRIu64 ": the copy"
				 " is not consistent (a resynchronisation of destination %" PRIu32
				 " is under way since LSN %" PRIu64 "); the group stays held there;"
				 " force promotes it as it is", lsn, fv->sync->dest,
				 fv->sync->begin_lsn);
		}
	}
	r = state_hold_put(fv->st, fv->group, &n);
	if (r < 0)
		return r;
	clock_iso8601(time_ns, 3, t, sizeof t);
	if (n.role == FO_PROMOTED)
		log_info("group %s: promoted at LSN %" PRIu64 " (%s, source time %s), %s; it applies"
			 " nothing and receives nothing any more; %" PRIu64 " segment%s left in the"
			 " inbox", fv->group, lsn, type ? seg_type_name(type) : "not a barrier", t,
			 n.promoted_consistent ? "a consistent copy"
					       : "NOT a consistent copy (forced)",
			 fv->backlog_segments, fv->backlog_segments == 1 ? "" : "s");
	else if (n.role == FO_REFUSED)
		log_error("group %s: %s", fv->group, n.note);
	else
		log_info("group %s: held at LSN %" PRIu64 " (%s, source time %s) for %s%s%s",
			 fv->group, lsn, type ? seg_type_name(type) : "not a barrier", t, h->pt.text,
			 n.note[0] ? ": " : "", n.note);
	*h = n;
	return 0;
}

void failover_answer(struct failover_req *req, const struct group_snapshot *s)
{
	json_t *o = json_object();

	json_object_set_new(o, "group", json_string(s->name));
	json_object_set_new(o, "state", json_string(group_state_name(s->state)));
	json_object_set_new(o, "applied_lsn", u64(s->applied_lsn));
	json_object_set_new(o, "last_applied_source_time", time_or_null(s->applied_time_ns));
	json_object_set_new(o, "consistent", json_boolean(s->consistent));
	json_object_set_new(o, "backlog_segments", u64(s->backlog_segments));
	if (req->op == FO_RELEASE)
		json_object_set_new(o, "released", json_true());
	json_object_set_new(o, "hold", s->hold.active ? hold_json(&s->hold, s, clock_wall_ns())
						      : json_null());
	if (s->error[0])
		json_object_set_new(o, "error", json_text(s->error));
	answer_text(req, req->op == FO_PROMOTE && s->hold.role == FO_PROMOTING ? 202 : 200, o);
}

/* ---- POST /hold, /release, /promote ---- */

static const struct {
	const char *word;
	enum failover_op op;
} verbs[] = {
	{ "/hold", FO_HOLD }, { "/release", FO_RELEASE }, { "/promote", FO_PROMOTE },
};

/* The verb path starts with, and where its arguments begin. */
static enum failover_op path_verb(const char *path, const char **rest)
{
	for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
		size_t n = strlen(verbs[i].word);

		if (strncmp(path, verbs[i].word, n) == 0 && (path[n] == '\0' || path[n] == '/')) {
			*rest = path + n;
			return verbs[i].op;
		}
	}
	return 0;
}

bool failover_path(const char *path)
{
	const char *rest;

	return path_verb(path, &rest) != 0;
}

static int json_error(struct httpd_response *resp, unsigned code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int json_error(struct httpd_response *resp, unsigned code, const char *fmt, ...)
{
	char why[1024];
	va_list ap;
	json_t *o;
	char *text;

	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	o = json_pack("{s:o}", "error", json_text(why));
	text = json_dumps(o, JSON_INDENT(2));
	json_decref(o);
	if (!text)
		return -ENOMEM;
	resp->status = code;
	resp->content_type = "application/json";
	resp->len = strlen(text);
	resp->body = text;
	return 0;
}

/* A point from the path: LSN, TIME or MARK:NAME, as aimctl replay --until. */
static int parse_at(const char *text, struct failover_req *req, char *err, size_t errlen)
{
	if (point_parse(text, &req->pt, err, errlen) < 0)
		return -EINVAL;
	req->kind = req->pt.kind == POINT_LSN ? HOLD_LSN :
		    req->pt.kind == POINT_MARK ? HOLD_MARK : HOLD_TIME;
	return 0;
}

int failover_post(struct remote *r, const char *path, struct httpd_response *resp)
{
	static const char usage[] = "POST /hold[/GROUP][/at/POINT], /release[/GROUP] or"
				    " /promote[/GROUP][/force][/at/POINT]";
	struct failover_req req = { 0 };
	char group[37], err[320];
	const char *rest;
	uint8_t id[16];
	int rc;

	req.op = path_verb(path, &rest);
	if (!req.op)
		return json_error(resp, 404, "%s", usage);
	req.kind = req.op == FO_PROMOTE ? HOLD_LAST : HOLD_NOW;
	group[0] = '\0';
	/* [/GROUP] */
	if (rest[0] == '/' && strncmp(rest, "/at/", 4) != 0 && strcmp(rest, "/force") != 0 &&
	    strncmp(rest, "/force/", 7) != 0) {
		const char *end = strchr(rest + 1, '/');
		size_t len = end ? (size_t)(end - rest - 1) : strlen(rest + 1);

		if (len >= sizeof group)
			return json_error(resp, 400, "not a group: expected a lowercase UUID (%s)",
					  usage);
		memcpy(group, rest + 1, len);
		group[len] = '\0';
		if (!group_name_valid(group, id))
			return json_error(resp, 400, "\"%s\" is not a group: expected a lowercase UUID"
					  " (%s)", group, usage);
		rest += 1 + len;
	}
	/* [/force] */
	if (strcmp(rest, "/force") == 0 || strncmp(rest, "/force/", 7) == 0) {
		if (req.op != FO_PROMOTE)
			return json_error(resp, 400, "force is for promote only (%s)", usage);
		req.force = true;
		rest += 6;
	}
	/* [/at/POINT] */
	if (strncmp(rest, "/at/", 4) == 0) {
		if (req.op == FO_RELEASE)
			return json_error(resp, 400, "release takes no point (%s)", usage);
		if (parse_at(rest + 4, &req, err, sizeof err) < 0)
			return json_error(resp, 400, "%s", err);
		rest = "";
	}
	if (rest[0])
		return json_error(resp, 400, "unexpected \"%s\" (%s)", rest, usage);
	if (!group[0]) {
		rc = groups_only(r, group);
		if (rc == -ENOENT)
			return json_error(resp, 404, "no group here yet: nothing to %s", verb(req.op));
		if (rc < 0)
			return json_error(resp, 409, "several groups are here: name the one to %s (POST"
					  " %s/GROUP...)", verb(req.op), verbs[req.op - 1].word);
	}
	rc = groups_request(r, group, &req);
	if (rc == -ENOENT)
		return json_error(resp, 404, "no group %s here: nothing changed", group);
	if (rc == -EBUSY)
		return json_error(resp, 503, "group %s is answering another request; try again",
				  group);
	if (rc == -ETIMEDOUT)
		return json_error(resp, 503, "group %s did not take the request in time (busy with"
				  " a long fsync?); nothing changed; try again", group);
	if (rc < 0 || !req.body) {
		free(req.body);
		return json_error(resp, 500, "%s of group %s: %s", verb(req.op), group,
				  strerror(rc < 0 ? -rc : ENOMEM));
	}
	resp->status = req.code;
	resp->content_type = "application/json";
	resp->body = req.body;
	resp->len = strlen(req.body);
	return 0;
}
