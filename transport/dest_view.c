/*
 * dest_view.c — what operators see of each destination: one snapshot per
 * destination (transport_views), taken under the transport lock, from
 * which both /status (dest_views_json) and /metrics (dest_views_metrics)
 * are printed, so the two can never disagree about a destination's state.
 *
 * The state word is derived here and nowhere else: a link that failed
 * (stopped, retrying) says more than a resync in progress; then tracking
 * and resyncing; then shipping until everything durable is acknowledged.
 */
#include "transport_i.h"
#include "clock.h"
#include "jsontext.h"
#include "strbuf.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static enum dest_view_state derive(const struct dest *d, uint64_t durable, bool engine)
{
	if (d->link == DEST_LINK_STOPPED)
		return DEST_VIEW_STOPPED;
	if (d->link == DEST_LINK_RETRYING)
		return DEST_VIEW_RETRYING;
	if (strcmp(d->remote_state, "stopped") == 0)
		return DEST_VIEW_REMOTE_STOPPED;
	if (d->rec.sync == DEST_SYNC_TRACKING)
		return DEST_VIEW_TRACKING;
	if (d->link == DEST_LINK_GAP)
		/* with an engine, its resync begins at once */
		return engine ? DEST_VIEW_RESYNCING : DEST_VIEW_NEEDS_RESYNC;
	/* Its initial sync or a resync is not done: without an engine (aimctl
	 * ship) it has every segment, not every write. */
	if (d->rec.sync == DEST_SYNC_SYNCING || d->rec.sync == DEST_SYNC_NEW)
		return engine ? DEST_VIEW_RESYNCING : DEST_VIEW_NEEDS_RESYNC;
	/* Between an ack and the worker's next look it is in sync already. */
	return d->acked_segment >= durable ? DEST_VIEW_IN_SYNC : DEST_VIEW_SHIPPING;
}

/* Forgets the segments below from (facts.lock held). */
static void facts_trim(struct seg_facts *f, uint64_t from)
{
	uint64_t drop;

	if (from <= f->first)
		return;
	drop = from - f->first;
	if (drop >= f->n) {
		f->n = 0;
	} else {
		memmove(f->v, f->v + drop, (f->n - drop) * sizeof *f->v);
		f->n -= (size_t)drop;
	}
	f->first = from;
}

static bool read_fact(struct transport *t, uint64_t n, struct seg_fact *out)
{
	uint64_t size, last, sealed;

	out->known = segment_facts(t->journal_dir, n, &size, &out->created_ns, &last,
				   &sealed) == 0;
	out->size = out->known ? size : 0;
	return out->known;
}

/* The facts of sealed segment n, read from its file the first time it is
 * asked about (kept from facts.first on, if memory allows); false if the
 * file cannot be read, which is asked again next time (facts.lock held). */
static bool facts_get(struct transport *t, uint64_t n, struct seg_fact *out)
{
	struct seg_facts *f = &t->facts;
	size_t i = (size_t)(n - f->first);

	if (n >= f->first && i >= f->cap) {
		size_t cap = f->cap ? f->cap : 256;
		struct seg_fact *nv;

		while (cap <= i)
			cap *= 2;
		nv = realloc(f->v, cap * sizeof *nv);
		if (nv) {
			f->v = nv;
			f->cap = cap;
		}
	}
	if (n < f->first || i >= f->cap)
		return read_fact(t, n, out);
	for (; f->n <= i; f->n++)
		f->v[f->n].known = false;
	if (!f->v[i].known)
		read_fact(t, n, &f->v[i]);
	*out = f->v[i];
	return out->known;
}

/* Segments from..durable: the pruned ones (below from) are not waiting
 * any more, nor is one whose file cannot be read (facts.lock held). */
static void measure_backlog(struct transport *t, struct dest_view *v, uint64_t from,
			    uint64_t durable)
{
	uint64_t open_oldest = t->hooks.open_oldest_ns ? t->hooks.open_oldest_ns(t->hooks.ctx) : 0;

	for (uint64_t n = from; n <= durable; n++) {
		struct seg_fact e;

		if (!facts_get(t, n, &e))
			continue;
		v->backlog_segments++;
		v->backlog_bytes += e.size;
		if (v->backlog_segments == 1 && e.created_ns && v->now_ns > e.created_ns)
			v->backlog_seconds = (double)(v->now_ns - e.created_ns) / 1e9;
	}
	/* Writes not sealed yet are not on the remote either. */
	if (v->backlog_segments == 0 && open_oldest && v->now_ns > open_oldest)
		v->backlog_seconds = (double)(v->now_ns - open_oldest) / 1e9;
}

int transport_views(struct transport *t, struct dest_view **out, size_t *n)
{
	struct dest_view *views = calloc(t->ndests ? t->ndests : 1, sizeof *views);
	/* per destination: the segments that may wait for it */
	struct { uint64_t from, to; } *wait = calloc(t->ndests ? t->ndests : 1, sizeof *wait);
	uint64_t now = clock_wall_ns(), durable, lowest = UINT64_MAX;

	if (!views || !wait) {
		free(views);
		free(wait);
		return -ENOMEM;
	}
	for (size_t i = 0; i < t->ndests; i++) {
		struct dest *d = &t->dests[i];
		struct dest_view *v = &views[i];

		v->name = d->cfg.name;
		v->url = d->cfg.url;
		v->images = d->cfg.images;
		v->nimages = d->cfg.nimages;
		v->compress = d->cfg.compress;
		v->now_ns = now;
		v->engine = t->resync;
		pthread_mutex_lock(&t->lock);
		durable = t->durable_segment;
		v->state = derive(d, durable, t->resync);
		v->rec = d->rec;
		v->remaining = d->remaining;
		v->compare = d->compare;
		v->acked_segment = d->acked_segment;
		v->acked_src_lsn = d->acked_src_lsn;
		v->acked_ns = d->acked_ns;
		v->segments_sent = d->segments_sent;
		v->bytes_sent = d->bytes_sent;
		v->bytes_raw = d->bytes_raw;
		v->rate_bps = d->rate_bps;
		memcpy(v->last_error, d->last_error, sizeof v->last_error);
		v->last_error_ns = d->last_error_ns;
		v->attempts = d->attempts;
		v->next_attempt_ns = d->next_attempt_ns;
		memcpy(v->remote_state, d->remote_state, sizeof v->remote_state);
		memcpy(v->remote_error, d->remote_error, sizeof v->remote_error);
		v->remote_applied_lsn = d->remote_applied_lsn;
		v->remote_asked_ns = d->remote_asked_ns;
		v->dest_last_lsn = d->dest_last_lsn;
		wait[i].from = (d->acked_segment > t->pruned_through ? d->acked_segment
								   : t->pruned_through) + 1;
		wait[i].to = durable;
		if (wait[i].from < lowest)
			lowest = wait[i].from;
		pthread_mutex_unlock(&t->lock);
	}
	pthread_mutex_lock(&t->facts.lock);
	if (lowest != UINT64_MAX) {
		facts_trim(&t->facts, lowest);
		if (t->facts.n == 0)
			t->facts.first = lowest;
	}
	for (size_t i = 0; i < t->ndests; i++)
		measure_backlog(t, &views[i], wait[i].from, wait[i].to);
	pthread_mutex_unlock(&t->facts.lock);
	free(wait);
	*out = views;
	*n = t->ndests;
	return 0;
}

bool dest_views_in_sync(const struct dest_view *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (v[i].state != DEST_VIEW_IN_SYNC)
			return false;
	return true;
}

static json_t *sync_json(const struct dest_view *v)
{
	const struct dest_progress *p = &v->rec.progress;
	json_t *o = json_object();
	double secs, rate;

	json_object_set_new(o, "state", json_string(dest_sync_name(v->rec.sync)));
	if (v->rec.sync == DEST_SYNC_IN_SYNC)
		return o;
	json_object_set_new(o, "phase", json_string(dest_phase_name(v->rec.phase)));
	json_object_set_new(o, "reason", json_string(dest_reason_text(v->rec.reason)));
	json_object_set_new(o, "total_bytes", json_integer((json_int_t)p->total));
	json_object_set_new(o, "done_bytes", json_integer((json_int_t)p->done));
	json_object_set_new(o, "saved_bytes", json_integer((json_int_t)p->saved));
	json_object_set_new(o, "remaining_bytes", json_integer((json_int_t)v->remaining));
	json_object_set_new(o, "compare", v->compare < 0 ? json_null() : json_boolean(v->compare));
	secs = p->started_ns && v->now_ns > p->started_ns
		       ? (double)(v->now_ns - p->started_ns) / 1e9 : 0;
	rate = secs > 0 ? (double)p->done / secs : 0;
	json_object_set_new(o, "eta_seconds", rate > 0 ? json_real((double)v->remaining / rate)
						       : json_null());
	return o;
}

/* What the remote said of its group when last asked; null if it never
 * did (not asked yet, or not an aim-remote). */
static json_t *remote_json(const struct dest_view *v)
{
	json_t *o;
	char when[40];

	if (!v->remote_state[0])
		return json_null();
	o = json_object();
	json_object_set_new(o, "state", json_string(v->remote_state));
	json_object_set_new(o, "applied_lsn", json_integer((json_int_t)v->remote_applied_lsn));
	/* both in the destination's own sequence */
	json_object_set_new(o, "applied_all", json_boolean(v->remote_applied_lsn >= v->dest_last_lsn));
	json_object_set_new(o, "error", v->remote_error[0] ? json_text(v->remote_error)
							  : json_null());
	json_object_set_new(o, "asked_at",
			    json_string(clock_iso8601(v->remote_asked_ns, 0, when, sizeof when)));
	return o;
}

static json_t *view_json(const struct dest_view *v)
{
	json_t *o = json_object(), *images;
	char when[40];

	json_object_set_new(o, "name", json_string(v->name));
	json_object_set_new(o, "url", json_string(v->url));
	json_object_set_new(o, "state", json_string(dest_view_state_name(v->state)));
	if (v->rec.reason != DEST_REASON_NONE && v->state != DEST_VIEW_IN_SYNC)
		json_object_set_new(o, "reason", json_string(dest_reason_text(v->rec.reason)));
	if (v->nimages) {
		images = json_array();
		for (size_t k = 0; k < v->nimages; k++)
			json_array_append_new(images, json_string(v->images[k]));
		json_object_set_new(o, "images", images);
	}
	json_object_set_new(o, "acked_segment", json_integer((json_int_t)v->acked_segment));
	json_object_set_new(o, "acked_lsn", json_integer((json_int_t)v->acked_src_lsn));
	if (v->acked_ns)
		json_object_set_new(o, "acked_at",
				    json_string(clock_iso8601(v->acked_ns, 0, when, sizeof when)));
	json_object_set_new(o, "backlog_segments", json_integer((json_int_t)v->backlog_segments));
	json_object_set_new(o, "backlog_bytes", json_integer((json_int_t)v->backlog_bytes));
	json_object_set_new(o, "backlog_seconds", json_real(v->backlog_seconds));
	json_object_set_new(o, "segments_shipped", json_integer((json_int_t)v->segments_sent));
	json_object_set_new(o, "bytes_shipped", json_integer((json_int_t)v->bytes_sent));
	json_object_set_new(o, "throughput_bytes_per_second", json_real(v->rate_bps));
	if (v->bytes_raw && v->compress)
		json_object_set_new(o, "compression_ratio",
				    json_real((double)v->bytes_sent / (double)v->bytes_raw));
	/* The link's last error while the link is what is wrong (a resync
	 * that follows a failure says why in "reason"). */
	if (v->last_error[0] && (v->state == DEST_VIEW_RETRYING || v->state == DEST_VIEW_STOPPED ||
				 v->state == DEST_VIEW_NEEDS_RESYNC)) {
		json_object_set_new(o, "last_error", json_string(v->last_error));
		json_object_set_new(o, "last_error_at",
				    json_string(clock_iso8601(v->last_error_ns, 0, when, sizeof when)));
	}
	if (v->state == DEST_VIEW_RETRYING) {
		json_object_set_new(o, "attempts", json_integer(v->attempts));
		json_object_set_new(o, "next_attempt_in_seconds",
				    json_real(v->next_attempt_ns > v->now_ns
						      ? (double)(v->next_attempt_ns - v->now_ns) / 1e9
						      : 0));
	}
	json_object_set_new(o, "remote", remote_json(v));
	if (v->engine)
		json_object_set_new(o, "sync", sync_json(v));
	return o;
}

json_t *dest_views_json(const struct dest_view *v, size_t n)
{
	json_t *arr = json_array();

	for (size_t i = 0; i < n; i++)
		json_array_append_new(arr, view_json(&v[i]));
	return arr;
}

static void labels_free(char **label, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(label[i]);
	free(label);
}

void dest_views_metrics(const struct dest_view *v, size_t n, struct strbuf *sb)
{
	char **label;

	if (!n)
		return;
	/* A name is an operator's word (or a URL): escaped, it cannot break
	 * the exposition of every other series. */
	label = calloc(n, sizeof *label);
	for (size_t i = 0; label && i < n; i++)
		if (!(label[i] = prom_label_value(v[i].name))) {
			labels_free(label, i);
			label = NULL;
		}
	if (!label) {
		sb->failed = true;
		return;
	}
	strbuf_printf(sb, "# HELP aimfs_destination_state 1 for the state the destination is in"
		      " (the state of /status), 0 for the others\n"
		      "# TYPE aimfs_destination_state gauge\n");
	for (size_t i = 0; i < n; i++)
		for (int s = 0; s < DEST_VIEW_STATES; s++)
			strbuf_printf(sb, "aimfs_destination_state{destination=\"%s\",state=\"%s\"} %d\n",
				      label[i], dest_view_state_name((enum dest_view_state)s),
				      v[i].state == (enum dest_view_state)s);
	/* No state label here: a label whose value changes would make each
	 * change a new series (aimfs_destination_state says which). */
	strbuf_printf(sb, "# HELP aimfs_destination_up 1 if the destination is in sync or"
		      " shipping\n# TYPE aimfs_destination_up gauge\n");
	for (size_t i = 0; i < n; i++)
		strbuf_printf(sb, "aimfs_destination_up{destination=\"%s\"} %d\n", label[i],
			      v[i].state == DEST_VIEW_IN_SYNC || v[i].state == DEST_VIEW_SHIPPING);
#define GAUGE(metric, help, fmt, expr)                                                      \
	do {                                                                                \
		strbuf_printf(sb, "# HELP aimfs_destination_" metric " " help "\n"          \
			      "# TYPE aimfs_destination_" metric " gauge\n");                 \
		for (size_t i = 0; i < n; i++)                                              \
			strbuf_printf(sb, "aimfs_destination_" metric "{destination=\"%s\"} " fmt \
				      "\n", label[i], (expr));                               \
	} while (0)
#define COUNTER(metric, help, expr)                                                         \
	do {                                                                                \
		strbuf_printf(sb, "# HELP aimfs_destination_" metric " " help "\n"          \
			      "# TYPE aimfs_destination_" metric " counter\n");               \
		for (size_t i = 0; i < n; i++)                                              \
			strbuf_printf(sb, "aimfs_destination_" metric "{destination=\"%s\"} %" \
				      PRIu64 "\n", label[i], (uint64_t)(expr));              \
	} while (0)
	GAUGE("acked_segment", "last segment the destination acknowledged", "%" PRIu64,
	      v[i].acked_segment);
	GAUGE("acked_lsn", "source LSN the acknowledged segment ends at", "%" PRIu64,
	      v[i].acked_src_lsn);
	GAUGE("backlog_segments", "sealed segments not acknowledged yet", "%" PRIu64,
	      v[i].backlog_segments);
	GAUGE("backlog_bytes", "bytes of sealed segments not acknowledged yet", "%" PRIu64,
	      v[i].backlog_bytes);
	GAUGE("backlog_seconds", "age of the oldest write the destination does not have",
	      "%.3f", v[i].backlog_seconds);
	GAUGE("in_sync", "1 if the destination is an exact copy as of what it acknowledged",
	      "%d", v[i].rec.sync == DEST_SYNC_IN_SYNC);
	GAUGE("resync_remaining_bytes", "bytes still to compare or send to make the"
	      " destination an exact copy", "%" PRIu64, v[i].remaining);
	COUNTER("resync_saved_bytes_total", "bytes a resync found equal and did not send",
		v[i].rec.progress.saved);
	COUNTER("shipped_bytes_total", "bytes uploaded", v[i].bytes_sent);
	COUNTER("shipped_segments_total", "segments uploaded", v[i].segments_sent);
#undef GAUGE
#undef COUNTER
	labels_free(label, n);
}
