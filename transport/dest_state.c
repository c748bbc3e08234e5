/*
 * dest_state.c — the one owner of a destination's state (transport.h,
 * "a destination's state").
 *
 * Two things describe a destination.  Its *record* says whether it is an
 * exact copy and, if not, where its resynchronisation stands and why; it
 * lives in the catalog and changes only in dest_state_change, which writes
 * the catalog first and then memory, so that a crash never leaves a worker
 * acting on a state that was not durable (the kill -9 race of docs/NOTES.md
 * came from a change applied in memory before it was saved).  Its *link*
 * is what the worker last saw of the network; it is not persisted and
 * changes only in dest_link_set.  Everything else (whether a worker holds,
 * ships skeletons, opens them with SYNC_BEGIN) is derived from the record,
 * never stored beside it.
 *
 * The catalog stores the record as words (sync_state, sync_phase,
 * sync_reason), so that operators can read it with sqlite3; this file is
 * the only one that knows them.
 */
#include "transport_i.h"
#include "catalog.h"
#include "clock.h"
#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* The catalog's words for each state, phase and reason.  Changing one
 * changes the meaning of existing catalogs: add, never rename. */
static const char *const sync_words[] = {
	[DEST_SYNC_NEW] = "new",
	[DEST_SYNC_IN_SYNC] = "in_sync",
	[DEST_SYNC_SYNCING] = "syncing",
	[DEST_SYNC_TRACKING] = "tracking",
};

static const char *const phase_words[] = {
	[DEST_PHASE_NONE] = "",
	[DEST_PHASE_BEGIN] = "begin",
	[DEST_PHASE_COPYING] = "copying",
	[DEST_PHASE_COMPARING] = "comparing",
	[DEST_PHASE_ENDING] = "ending",
	[DEST_PHASE_BEGUN] = "begun",
};

static const struct {
	const char *word; /* in the catalog */
	const char *text; /* in status and logs */
} reasons[] = {
	[DEST_REASON_NONE] = { "", "" },
	[DEST_REASON_NEW] = { "new", "new destination" },
	[DEST_REASON_SEGMENTS_GONE] = { "segments_gone", "journal segments it needed are gone or damaged" },
	[DEST_REASON_OVERFLOW] = { "overflow", "journal overflow" },
	[DEST_REASON_POWER_LOSS] = { "power_loss", "source power loss" },
	[DEST_REASON_SNAPSHOT] = { "snapshot", "scheduled snapshot (a new base for restores)" },
	[DEST_REASON_CHANGED_OFFLINE] = { "changed_offline",
					  "an image changed while aimfs was stopped" },
};

static const char *const view_words[] = {
	[DEST_VIEW_IN_SYNC] = "in_sync",
	[DEST_VIEW_SHIPPING] = "shipping",
	[DEST_VIEW_RETRYING] = "retrying",
	[DEST_VIEW_STOPPED] = "stopped",
	[DEST_VIEW_TRACKING] = "tracking",
	[DEST_VIEW_RESYNCING] = "resyncing",
	[DEST_VIEW_NEEDS_RESYNC] = "needs_resync",
	[DEST_VIEW_REMOTE_STOPPED] = "remote_stopped",
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

const char *dest_sync_name(enum dest_sync s)
{
	return (size_t)s < COUNT(sync_words) ? sync_words[s] : "?";
}

const char *dest_phase_name(enum dest_phase p)
{
	return (size_t)p < COUNT(phase_words) ? phase_words[p] : "?";
}

const char *dest_reason_text(enum dest_reason r)
{
	return (size_t)r < COUNT(reasons) ? reasons[r].text : "?";
}

const char *dest_view_state_name(enum dest_view_state s)
{
	return (size_t)s < COUNT(view_words) ? view_words[s] : "?";
}

/* Index of word in table, or -1. */
static int lookup(const char *const *table, size_t n, const char *word)
{
	for (size_t i = 0; i < n; i++)
		if (table[i] && strcmp(table[i], word) == 0)
			return (int)i;
	return -1;
}

static int reason_lookup(const char *word)
{
	for (size_t i = 0; i < COUNT(reasons); i++)
		if (strcmp(reasons[i].word, word) == 0)
			return (int)i;
	return -1;
}

/* catalog words -> record; -EINVAL (logged) for words this version does
 * not know: a catalog written by a newer aimfs. */
static int record_from_catalog(const char *name, const struct catalog_sync *y,
			       struct dest_record *rec)
{
	int s = lookup(sync_words, COUNT(sync_words), y->state);
	int p = lookup(phase_words, COUNT(phase_words), y->phase);
	int why = reason_lookup(y->reason);

	if (s < 0 || p < 0 || why < 0) {
		log_error("destination %s: the catalog says state \"%s\", phase \"%s\", reason"
			  " \"%s\", which this aimfs does not know", name, y->state, y->phase,
			  y->reason);
		return -EINVAL;
	}
	memset(rec, 0, sizeof *rec);
	rec->sync = (enum dest_sync)s;
	rec->phase = (enum dest_phase)p;
	rec->reason = (enum dest_reason)why;
	rec->number = y->number;
	rec->progress.total = y->total;
	rec->progress.done = y->done;
	rec->progress.saved = y->saved;
	rec->progress.lsn_a = y->lsn_a;
	rec->progress.lsn_b = y->lsn_b;
	rec->progress.started_ns = y->started_ns;
	/* Catalogs from before reasons were kept. */
	if (rec->reason == DEST_REASON_NONE && rec->sync == DEST_SYNC_NEW)
		rec->reason = DEST_REASON_NEW;
	if (rec->reason == DEST_REASON_NONE && rec->sync == DEST_SYNC_TRACKING)
		rec->reason = DEST_REASON_OVERFLOW;
	return 0;
}

static void record_to_catalog(const struct dest_record *rec, struct catalog_sync *y)
{
	memset(y, 0, sizeof *y);
	y->number = rec->number;
	snprintf(y->state, sizeof y->state, "%s", sync_words[rec->sync]);
	snprintf(y->phase, sizeof y->phase, "%s", phase_words[rec->phase]);
	snprintf(y->reason, sizeof y->reason, "%s", reasons[rec->reason].word);
	y->total = rec->progress.total;
	y->done = rec->progress.done;
	y->saved = rec->progress.saved;
	y->lsn_a = rec->progress.lsn_a;
	y->lsn_b = rec->progress.lsn_b;
	y->started_ns = rec->progress.started_ns;
}

int dest_state_load(struct dest *d, struct catalog *cat)
{
	struct catalog_sync y;
	int r = catalog_dest_sync_load(cat, d->cfg.name, &y);

	if (r < 0)
		return r;
	r = record_from_catalog(d->cfg.name, &y, &d->rec);
	d->compare = -1;
	return r;
}

bool dest_held(const struct dest *d)
{
	/* Only a resync engine ends the hold; without one (aimctl ship) a
	 * new destination simply receives every segment from the first. */
	return d->t->resync && (d->rec.sync == DEST_SYNC_NEW ||
				(d->rec.sync == DEST_SYNC_SYNCING && d->rec.phase == DEST_PHASE_NONE));
}

/* Which record changes make sense.  Anything else is a bug in the caller:
 * refused and logged, never applied. */
static bool allowed(const struct dest_record *from, const struct dest_change *c)
{
	switch (c->sync) {
	case DEST_SYNC_NEW:
		return false; /* only registration makes a destination new */
	case DEST_SYNC_IN_SYNC:
		/* a resync that ended, or aimctl ship delivering every segment
		 * to a new destination */
		return c->phase == DEST_PHASE_NONE &&
		       (from->sync == DEST_SYNC_SYNCING || from->sync == DEST_SYNC_NEW ||
			from->sync == DEST_SYNC_IN_SYNC);
	case DEST_SYNC_SYNCING:
		return c->phase != DEST_PHASE_BEGUN && c->reason != DEST_REASON_NONE;
	case DEST_SYNC_TRACKING:
		return (c->phase == DEST_PHASE_NONE || c->phase == DEST_PHASE_BEGUN) &&
		       c->reason != DEST_REASON_NONE;
	}
	return false;
}

int dest_state_change(struct transport *t, size_t i, struct catalog *cat,
		      const struct dest_change *c)
{
	struct dest *d = &t->dests[i];
	struct dest_record from, to;
	struct catalog_sync y;
	void (*fn)(void *ctx);
	void *ctx;
	int r;

	pthread_mutex_lock(&t->change_lock);
	pthread_mutex_lock(&t->lock);
	from = d->rec;
	pthread_mutex_unlock(&t->lock);
	if (c->expect && (from.sync != c->expect_sync || from.phase != c->expect_phase)) {
		pthread_mutex_unlock(&t->change_lock);
		return -EAGAIN;
	}
	if (!allowed(&from, c)) {
		log_error("destination %s: refusing a change from %s/%s to %s/%s", d->cfg.name,
			  dest_sync_name(from.sync), dest_phase_name(from.phase),
			  dest_sync_name(c->sync), dest_phase_name(c->phase));
		pthread_mutex_unlock(&t->change_lock);
		return -EINVAL;
	}
	to = from;
	to.sync = c->sync;
	to.phase = c->phase;
	to.reason = c->sync == DEST_SYNC_IN_SYNC ? DEST_REASON_NONE : c->reason;
	if (c->progress)
		to.progress = *c->progress;
	record_to_catalog(&to, &y);

	/* Durable first: a crash after this point finds the new record, a
	 * crash before it the old one, and nothing in memory acted on it. */
	r = catalog_begin(cat);
	if (r == 0)
		r = catalog_dest_sync_save(cat, d->cfg.name, &y);
	if (r == 0 && c->skip)
		r = catalog_dest_skip(cat, d->cfg.name, c->skip_segment, c->skip_dest_lsn);
	if (r == 0)
		r = catalog_commit(cat);
	else
		catalog_rollback(cat);
	if (r < 0) {
		pthread_mutex_unlock(&t->change_lock);
		return r;
	}

	pthread_mutex_lock(&t->lock);
	d->rec = to;
	if (c->skip && c->skip_segment > d->acked_segment) {
		d->acked_segment = c->skip_segment;
		d->dest_last_lsn = c->skip_dest_lsn;
	}
	if (c->skip && d->link == DEST_LINK_GAP) {
		d->last_error[0] = '\0';
		dest_link_set(d, DEST_LINK_SHIPPING);
	}
	if (to.sync != DEST_SYNC_SYNCING && to.sync != DEST_SYNC_TRACKING) {
		d->remaining = 0;
		d->compare = -1;
	}
	pthread_cond_broadcast(&t->cond);
	fn = t->on_change;
	ctx = t->on_change_ctx;
	pthread_mutex_unlock(&t->lock);
	pthread_mutex_unlock(&t->change_lock);

	if (from.sync != to.sync || from.phase != to.phase)
		log_info("destination %s: %s%s%s -> %s%s%s%s%s", d->cfg.name,
			 dest_sync_name(from.sync), from.phase ? "/" : "", dest_phase_name(from.phase),
			 dest_sync_name(to.sync), to.phase ? "/" : "", dest_phase_name(to.phase),
			 to.reason ? ": " : "", dest_reason_text(to.reason));
	if (fn)
		fn(ctx);
	return 0;
}

int dest_state_progress(struct transport *t, size_t i, struct catalog *cat,
			const struct dest_progress *p, uint64_t remaining, int compare)
{
	struct dest *d = &t->dests[i];
	struct catalog_sync y;
	int r = 0;

	pthread_mutex_lock(&t->change_lock);
	pthread_mutex_lock(&t->lock);
	d->rec.progress = *p;
	d->remaining = remaining;
	d->compare = compare;
	record_to_catalog(&d->rec, &y);
	pthread_mutex_unlock(&t->lock);
	if (cat)
		r = catalog_dest_sync_save(cat, d->cfg.name, &y);
	pthread_mutex_unlock(&t->change_lock);
	return r;
}

void transport_on_change(struct transport *t, void (*fn)(void *ctx), void *ctx)
{
	pthread_mutex_lock(&t->lock);
	t->on_change = fn;
	t->on_change_ctx = ctx;
	pthread_mutex_unlock(&t->lock);
}

struct mark_ctx {
	struct catalog *cat;
	enum dest_reason why;
	int err;
};

/* Saves name's record as a resync that (re)starts: syncing/phase for
 * reason, its progress from nothing. */
static int restart_resync(struct catalog *cat, const char *name, struct dest_record *rec,
			  enum dest_phase phase, enum dest_reason reason)
{
	struct catalog_sync y;

	rec->sync = DEST_SYNC_SYNCING;
	rec->phase = phase;
	rec->reason = reason;
	memset(&rec->progress, 0, sizeof rec->progress);
	rec->progress.started_ns = clock_wall_ns();
	record_to_catalog(rec, &y);
	return catalog_dest_sync_save(cat, name, &y);
}

bool dest_reason_seeds_every_image(enum dest_reason why)
{
	return why == DEST_REASON_NEW || why == DEST_REASON_SEGMENTS_GONE ||
	       why == DEST_REASON_SNAPSHOT;
}

static int mark_one(void *arg, const char *name)
{
	struct mark_ctx *m = arg;
	struct catalog_sync y;
	struct dest_record rec;
	const char *why = dest_reason_text(m->why);
	int r = catalog_dest_sync_load(m->cat, name, &y);

	if (r == 0)
		r = record_from_catalog(name, &y, &rec);
	if (r < 0) {
		if (!m->err)
			m->err = r;
		return 0;
	}
	if (rec.sync == DEST_SYNC_IN_SYNC) {
		r = restart_resync(m->cat, name, &rec, DEST_PHASE_BEGIN, m->why);
		if (r == 0)
			log_warn("destination %s: %s; resynchronising what may differ", name, why);
	} else if (rec.sync == DEST_SYNC_SYNCING && m->why == DEST_REASON_CHANGED_OFFLINE) {
		/*
		 * After a clean unmount the journal holds every resync record
		 * the saved progress counts: the resync goes on, and the images
		 * handed over are among its dirty extents.  Only one whose
		 * SYNC_END is out, which would end in sync without them,
		 * begins again (for them).
		 */
		bool again = rec.phase == DEST_PHASE_ENDING;

		if (again)
			r = restart_resync(m->cat, name, &rec, DEST_PHASE_BEGIN, m->why);
		if (r == 0)
			log_warn("destination %s: %s; %s", name, why,
				 again ? "its resync begins again for it" : "its resync covers it too");
	} else if (rec.sync == DEST_SYNC_SYNCING &&
		   (rec.phase == DEST_PHASE_COPYING || rec.phase == DEST_PHASE_COMPARING ||
		    rec.phase == DEST_PHASE_ENDING)) {
		/*
		 * Mid-resync: the engine saves what it consumed of the dirty
		 * extents as soon as it journaled their records, not once they
		 * are durable, and SYNC_END may be lost too; the catalog can be
		 * ahead of the journal that survived.  Only a full resync is
		 * sure to cover what the lost records carried.
		 */
		r = restart_resync(m->cat, name, &rec, DEST_PHASE_NONE,
				   dest_reason_seeds_every_image(rec.reason) ? rec.reason : m->why);
		if (r == 0)
			log_warn("destination %s: %s in the middle of its resync; resynchronising"
				 " every image", name, why);
	}
	if (r < 0 && !m->err)
		m->err = r;
	return 0;
}

int dest_state_mark_all(struct catalog *cat, enum dest_reason why)
{
	struct mark_ctx m = { cat, why, 0 };
	int r = catalog_dests_each(cat, mark_one, &m);

	return r < 0 ? r : m.err;
}

int dest_state_mark(struct catalog *cat, const char *name, enum dest_reason why)
{
	struct mark_ctx m = { cat, why, 0 };

	mark_one(&m, name);
	return m.err;
}

void dest_set_error(struct dest *d, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&d->t->lock);
	va_start(ap, fmt);
	vsnprintf(d->last_error, sizeof d->last_error, fmt, ap);
	va_end(ap);
	d->last_error_ns = clock_wall_ns();
	pthread_mutex_unlock(&d->t->lock);
}

void dest_link_set(struct dest *d, enum dest_link link)
{
	enum dest_link from = d->link;

	if (from == link)
		return;
	d->link = link;
	switch (link) {
	case DEST_LINK_RETRYING:
		log_info("destination %s: %s; retrying", d->cfg.name, d->last_error);
		break;
	case DEST_LINK_STOPPED:
		log_error("destination %s: stopped: %s", d->cfg.name, d->last_error);
		break;
	case DEST_LINK_GAP:
		log_warn("destination %s: %s", d->cfg.name, d->last_error);
		break;
	case DEST_LINK_SHIPPING:
	case DEST_LINK_IDLE:
		if (from == DEST_LINK_RETRYING)
			log_info("destination %s: reachable again", d->cfg.name);
		break;
	}
}
