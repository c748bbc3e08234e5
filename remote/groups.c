/*
 * groups.c — one thread per consistency group, applying its segments in
 * order: segment applied_segment + 1 when its file is in inbox/<group>/,
 * nothing otherwise.
 *
 * A group's life, in one function (set_state): starting (until its first
 * look at the inbox), idle (nothing received is
 * pending), applying (a segment is being re-driven), waiting (later
 * segments are here, the next one is not: waiting_for says which), stopped
 * (something an operator must look at; the reason is in status and was
 * logged once), held (an operator's hold was reached: segments wait in
 * the inbox), promoted (failed over, for good).  A stopped group stays
 * stopped until it is asked to resume (SIGHUP, POST /resume on the status
 * listener, `aimctl resume`) or aim-remote restarts: it then starts afresh
 * from its state, as at start, and stops again if the cause is still there.
 *
 * What is refused, and how:
 *   - a file that is not a valid sealed segment, a segment of another
 *     group, one whose header number differs from its file name, or one
 *     that does not continue the LSN sequence applied so far: moved to
 *     inbox/<group>/quarantine/, recorded, logged, and the group stops,
 *     before any target is touched;
 *   - a segment the targets cannot take (a record beyond the end of a
 *     mapped block device): checked for every record before the first is
 *     applied, so nothing of it is applied; the group stops and the file
 *     stays, so that growing the device and restarting resumes;
 *   - any failure while applying (I/O error, full disk): the group stops;
 *     the targets are durable up to the LSN recorded, and a restart resumes
 *     there;
 *   - a copy of a segment already applied: removed if identical (by the
 *     digest recorded when it was applied), quarantined if different; the
 *     group goes on.
 *
 * Progress is recorded in the state by the applier's durable callback,
 * after the targets are durable, and a whole segment is recorded as applied
 * in the same transaction as its last LSN; only then is its file removed
 * (or kept under --retain).  So a crash anywhere leaves either the file
 * with the state pointing into or before it (resumed with after_lsn), or
 * the state past it with the file removed or about to be (a duplicate).
 *
 * Holds and promotion (failover.c has the rules).  An operator's request
 * (POST /hold, /release, /promote) is handed to the group's thread
 * (groups_request), which answers it between two records: a group in the
 * middle of a segment pauses right after the record it applied (the
 * applier makes that durable, as at a barrier) and goes on after
 * answering.  While a hold is pending, each segment is applied only as far
 * as the hold allows (plan): up to its point's last barrier, or wholly
 * when a later barrier before the point is known to be here; the record
 * callback stops the applier right after the chosen record.  A held or
 * promoted group applies nothing; a promoted one has no applier at all.
 *
 * Resynchronisation (docs/RESYNC.md).  The applier's events are kept here
 * until the next durable callback, and recorded in its transaction: the
 * group turns inconsistent with the durable point the applier makes at a
 * SYNC_BEGIN (before any record after it reaches a target), consistent
 * again with the one at the next SYNC_END (once the resync is durable).
 * An apply resumed after a crash reports the events again, and gets the
 * same state.  The mismatches of HASH records are recorded the same way,
 * or earlier when many pile up (MISMATCH_BATCH): rows above applied_lsn
 * are not served, and are dropped when the group starts, before the apply
 * that reports them again.
 */
#include "remote_i.h"
#include "clock.h"
#include "apply.h"
#include "log.h"
#include "format.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Mismatches kept in memory before they are recorded ahead of progress. */
#define MISMATCH_BATCH 4096
/* MARKs applied are recorded with the next progress, or earlier in one
 * transaction per this many: one commit each made a segment of marks
 * apply at the disk's fsync rate. */
#define MARK_BATCH 1024

struct group {
	struct group *next;
	struct remote *r;
	char name[37];
	uint8_t id[16];
	pthread_t thread;

	pthread_mutex_t lock; /* guards kicked, stop, resume, posted and snap */
	pthread_cond_t cond;
	bool kicked;
	bool stop;
	bool resume;          /* start again if stopped */
	struct posted *posted; /* an operator's request not taken yet */
	atomic_bool req_posted; /* posted != NULL, for the record callback */
	struct group_snapshot snap;

	/* Owned by the group's thread. */
	struct state *st;
	struct applier *a;
	int dirfd;
	struct state_group sg;
	bool stopped;
	bool short_of_space;  /* stopped by a full disk (target or state): it
			       * resumes by itself at space_retry_ns */
	uint64_t space_retry_ns;
	uint64_t recheck_ns;  /* CLOCK_MONOTONIC time to look again, 0 if none */
	enum group_state cur_state;
	uint64_t cur_waiting;
	struct state_segment cur; /* the segment being applied */
	struct state_sync sync_next; /* resync state to record with the next progress */
	bool sync_dirty;
	struct state_mismatch *mm;   /* mismatches to record, nmm of mm_cap */
	size_t nmm, mm_cap;
	struct state_mark *marks;    /* MARKs to record, nmarks of MARK_BATCH */
	size_t nmarks;
	struct hold hold;     /* the hold, as recorded (snap.hold is its copy) */
	uint64_t rec_lsn;     /* the last record applied, and its type */
	uint8_t rec_type;
	uint64_t limit;       /* the record callback stops right after this LSN (0: none) */
};

/* A request handed to a group's thread and its answer (groups_request). */
struct posted {
	struct failover_req *req;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool taken, done;
};

/* How long groups_request waits for a group's thread to take a request:
 * it does between two records, so only a long fsync delays it. */
#define REQUEST_WAIT_NS (20ULL * 1000000000ULL)

static const char *const state_names[] = {
	[GROUP_STARTING] = "starting",
	[GROUP_IDLE] = "idle",
	[GROUP_APPLYING] = "applying",
	[GROUP_WAITING] = "waiting",
	[GROUP_STOPPED] = "stopped",
	[GROUP_HELD] = "held",
	[GROUP_PROMOTED] = "promoted",
};

const char *group_state_name(enum group_state s)
{
	return (size_t)s < sizeof state_names / sizeof state_names[0] ? state_names[s] : "?";
}

bool group_name_valid(const char *name, uint8_t uuid[16])
{
	char again[37];

	if (seg_uuid_parse(name, uuid) < 0)
		return false;
	seg_uuid_format(uuid, again);
	return strcmp(again, name) == 0;
}

/* ---- the snapshot (status) ---- */

static void snap_update(struct group *g, void (*fn)(struct group_snapshot *s, const void *arg),
			const void *arg)
{
	pthread_mutex_lock(&g->lock);
	fn(&g->snap, arg);
	pthread_mutex_unlock(&g->lock);
}

static void snap_progress(struct group_snapshot *s, const void *arg)
{
	const struct state_group *sg = arg;

	s->applied_segment = sg->applied_segment;
	s->applied_lsn = sg->applied_lsn;
	s->applied_time_ns = sg->applied_time_ns;
	s->consistent = sg->sync.consistent;
	s->sync_dest = sg->sync.dest;
	s->sync_lsn = sg->sync.begin_lsn;
	s->sync_time_ns = sg->sync.begin_ns;
}

static void snap_quarantine_push(struct group_snapshot *s, uint64_t segment, uint64_t time_ns,
				 const char *reason)
{
	struct quarantine_entry *q;

	if (s->nquarantine == QUARANTINE_SHOWN) {
		memmove(&s->q[0], &s->q[1], (QUARANTINE_SHOWN - 1) * sizeof s->q[0]);
		s->nquarantine--;
	}
	q = &s->q[s->nquarantine++];
	q->segment = segment;
	q->time_ns = time_ns;
	snprintf(q->reason, sizeof q->reason, "%s", reason);
}

static void load_quarantine(void *ctx, uint64_t segment, uint64_t time_ns, const char *reason)
{
	snap_quarantine_push(ctx, segment, time_ns, reason);
}

/* The single door for state changes: snapshot, state row, log. */
static void set_state(struct group *g, enum group_state s, uint64_t waiting_for, const char *error)
{
	if (g->cur_state == s && g->cur_waiting == waiting_for && s != GROUP_STOPPED)
		return;
	if (s == GROUP_WAITING)
		log_info("group %s: waiting for segment %" PRIu64, g->name, waiting_for);
	else if (g->cur_state == GROUP_WAITING && s != GROUP_STOPPED)
		log_info("group %s: segment %" PRIu64 " is here", g->name, g->cur_waiting);
	g->cur_state = s;
	g->cur_waiting = waiting_for;
	pthread_mutex_lock(&g->lock);
	g->snap.state = s;
	g->snap.waiting_for = waiting_for;
	if (s != GROUP_APPLYING)
		g->snap.applying = 0;
	if (s == GROUP_STOPPED)
		snprintf(g->snap.error, sizeof g->snap.error, "%s", error ? error : "");
	else
		g->snap.error[0] = '\0';
	pthread_mutex_unlock(&g->lock);
	if (g->st)
		state_group_status(g->st, g->name, state_names[s], waiting_for, error);
}

#define SPACE_RETRY_NS (5ULL * 1000000000ULL)

/* Stops the group until it is resumed (by an operator, a restart, or, out
 * of space, by itself after SPACE_RETRY_NS); the reason is logged here. */
static void refuse_stopped_promote(struct group *g, const char *why);

static void stop_group(struct group *g, const char *why)
{
	log_error("group %s: stopped: %s%s", g->name, why,
		  g->short_of_space ? " (out of space: it tries again every 5 s)" : "");
	g->stopped = true;
	if (g->short_of_space) {
		inbox_free_drop(g->r); /* the files kept for uploads give way */
		g->space_retry_ns = clock_mono_ns() + SPACE_RETRY_NS;
		g->recheck_ns = g->space_retry_ns;
	}
	set_state(g, GROUP_STOPPED, 0, why);
	refuse_stopped_promote(g, why);
}

/* ---- files ---- */

/* An applied segment's file: kept under --retain, removed otherwise (or
 * kept in inbox/.free to be written over: recycle.c). */
static void dispose(struct group *g, const char *name)
{
	char used[SEG_FILE_NAME_LEN + 32];
	int r;

	prechecked_forget(&g->r->prechecked, g->dirfd, name);
	if (g->r->cfg.retain) {
		r = inbox_move_aside(g->dirfd, name, GROUP_APPLIED, false, used, sizeof used);
	} else {
		/* kept for the receiver to write over, or unlinked */
		r = inbox_free_keep(g->r, g->dirfd, name) || unlinkat(g->dirfd, name, 0) == 0
			    ? 0
			    : -errno;
		if (r == 0)
			fsync(g->dirfd);
	}
	if (r < 0 && r != -ENOENT)
		log_error("group %s: cannot %s applied segment %s: %s", g->name,
			  g->r->cfg.retain ? "keep" : "remove", name, strerror(-r));
}

/* Puts name aside in quarantine/ and records why.  stop: the group cannot
 * go on without this segment. */
static void quarantine(struct group *g, uint64_t number, const char *name, const char *why,
		       bool stop)
{
	char used[SEG_FILE_NAME_LEN + 32], msg[768];
	uint64_t now = clock_wall_ns();
	int r;

	prechecked_forget(&g->r->prechecked, g->dirfd, name);
	r = inbox_move_aside(g->dirfd, name, GROUP_QUARANTINE, true, used, sizeof used);
	snprintf(msg, sizeof msg, "segment %" PRIu64 " (%s): %s", number, name, why);
	if (r < 0)
		log_error("group %s: cannot move %s aside into %s/: %s", g->name, name,
			  GROUP_QUARANTINE, strerror(-r));
	if (g->st)
		state_quarantine_add(g->st, g->name, number, why, r == 0 ? used : NULL);
	pthread_mutex_lock(&g->lock);
	snap_quarantine_push(&g->snap, number, now, why);
	g->snap.quarantined++;
	pthread_mutex_unlock(&g->lock);
	if (stop) {
		char reason[1024];

		snprintf(reason, sizeof reason, "%s; it was put aside in %s/%s/%s/%s", msg,
			 g->r->cfg.inbox, g->name, GROUP_QUARANTINE, r == 0 ? used : name);
		stop_group(g, reason);
	} else {
		log_error("group %s: %s; it was put aside in %s/", g->name, msg, GROUP_QUARANTINE);
	}
}

/* ---- applying ---- */

static void mismatches_clear(struct group *g)
{
	for (size_t i = 0; i < g->nmm; i++)
		free(g->mm[i].image);
	g->nmm = 0;
}

/* Records the MARKs kept since the last time. */
static int marks_flush(struct group *g)
{
	int r = state_marks_add(g->st, g->name, g->marks, g->nmarks);

	if (r == 0)
		g->nmarks = 0;
	return r;
}

/* Keeps a MARK the group applied, to record with the next progress. */
static int mark_keep(struct group *g, const struct seg_record *r)
{
	struct state_mark *m;

	if (!g->marks) {
		g->marks = calloc(MARK_BATCH, sizeof *g->marks);
		if (!g->marks)
			return -ENOMEM;
	}
	if (g->nmarks == MARK_BATCH) {
		int rc = marks_flush(g);

		if (rc < 0)
			return rc;
	}
	m = &g->marks[g->nmarks++];
	m->lsn = r->lsn;
	m->time_ns = r->time_ns;
	snprintf(m->name, sizeof m->name, "%.*s", (int)r->payload_len, (const char *)r->payload);
	return 0;
}

/* Records progress up to lsn with the events kept since the last time,
 * and the whole segment done unless NULL; then updates g->sg and the
 * snapshot.  Returns 0 or -errno (the state logged why). */
static int record_progress(struct group *g, uint64_t lsn, uint64_t time_ns,
			   const struct state_segment *done)
{
	int r;

	r = marks_flush(g);
	if (r < 0)
		return r;
	r = state_progress(g->st, g->name, lsn, time_ns, done, g->sync_dirty ? &g->sync_next : NULL,
			   g->mm, g->nmm);
	if (r < 0)
		return r;
	mismatches_clear(g);
	if (g->sync_dirty)
		g->sg.sync = g->sync_next;
	g->sync_dirty = false;
	g->sg.applied_lsn = lsn;
	g->sg.applied_time_ns = time_ns;
	if (done) {
		g->sg.applied_segment = done->number;
		g->sg.segment_last_lsn = done->last_lsn;
	}
	snap_update(g, snap_progress, &g->sg);
	return 0;
}

static void snap_mismatch(struct group_snapshot *s, const void *arg)
{
	const struct apply_event *e = arg;

	s->mismatch_ranges++;
	s->mismatch_bytes += e->length;
}

/* The applier's events: kept until the next durable callback records
 * them (see the top of this file). */
static int on_event(void *ctx, const struct apply_event *e)
{
	struct group *g = ctx;
	struct state_sync *n = &g->sync_next;
	struct state_mismatch *m;
	int r;

	if (!g->sync_dirty)
		*n = g->sg.sync;
	switch (e->type) {
	case APPLY_EV_SYNC_BEGIN:
		if (n->consistent) {
			/* Inconsistent since the first SYNC_BEGIN, however many
			 * follow before the SYNC_END. */
			n->begin_lsn = e->lsn;
			n->begin_ns = e->time_ns;
			log_info("group %s: resynchronisation of destination %" PRIu32
				 " begins at LSN %" PRIu64
				 "; the targets are not a consistent copy until it ends",
				 g->name, e->dest, e->lsn);
		}
		n->consistent = false;
		n->dest = e->dest;
		g->sync_dirty = true;
		return 0;
	case APPLY_EV_SYNC_END:
		if (!n->consistent)
			log_info("group %s: resynchronisation of destination %" PRIu32
				 " ends at LSN %" PRIu64 " (it began at LSN %" PRIu64
				 "); the targets are a consistent copy again",
				 g->name, e->dest, e->lsn, n->begin_lsn);
		n->consistent = true;
		n->end_lsn = e->lsn;
		g->sync_dirty = true;
		return 0;
	case APPLY_EV_MISMATCH:
		break;
	default:
		return 0;
	}
	if (g->nmm == MISMATCH_BATCH) {
		r = state_mismatches_add(g->st, g->name, g->mm, g->nmm);
		if (r < 0)
			return r;
		mismatches_clear(g);
	}
	if (g->nmm == g->mm_cap) {
		size_t cap = g->mm_cap ? g->mm_cap * 2 : 64;
		struct state_mismatch *nm = realloc(g->mm, cap * sizeof *nm);

		if (!nm)
			return -ENOMEM;
		g->mm = nm;
		g->mm_cap = cap;
	}
	m = &g->mm[g->nmm];
	m->image = strdup(e->image);
	if (!m->image)
		return -ENOMEM;
	m->lsn = e->lsn;
	m->dest = e->dest;
	m->image_id = e->image_id;
	m->offset = e->offset;
	m->length = e->length;
	g->nmm++;
	log_debug("group %s: HASH at LSN %" PRIu64 ": image %s differs at %" PRIu64 "+%" PRIu64,
		  g->name, e->lsn, e->image, e->offset, e->length);
	snap_update(g, snap_mismatch, e);
	return 0;
}

static int on_durable(void *ctx, const struct apply_progress *p)
{
	struct group *g = ctx;
	bool whole = p->segment == g->cur.number && p->lsn == g->cur.last_lsn;
	int r;

	r = record_progress(g, p->lsn, p->time_ns, whole ? &g->cur : NULL);
	if (r < 0)
		return r;
	/* Shutting down: stop at this barrier, which is recorded. */
	if (!whole && atomic_load(&g->r->quitting))
		return -ECANCELED;
	return 0;
}

/* The applier's record callback: remembers the record (its type tells
 * whether the targets stand at a barrier), records MARKs, and stops right
 * after the hold's record or for a request. */
static int on_record(void *ctx, struct seg_view *v, const struct seg_record *r)
{
	struct group *g = ctx;
	int rc;

	(void)v;
	g->rec_lsn = r->lsn;
	g->rec_type = r->type;
	if (r->type == SEG_MARK) {
		rc = mark_keep(g, r);
		if (rc < 0)
			return rc;
	}
	if (g->limit && r->lsn >= g->limit)
		return APPLY_STOP;
	/* A request: pause here, durable, answer it, then go on. */
	return atomic_load(&g->req_posted) ? APPLY_STOP : 0;
}

/* The type of the record the targets stand after, 0 if unknown. */
static uint8_t pos_type(const struct group *g)
{
	return g->rec_lsn && g->rec_lsn == g->sg.applied_lsn ? g->rec_type : 0;
}

struct stale {
	struct group *g;
	const struct names *live;
	char err[512];
};

static int remove_if_stale(void *ctx, const char *name)
{
	struct stale *st = ctx;

	if (names_find(st->live, name, strlen(name)))
		return 0;
	if (applier_remove(st->g->a, name, st->err, sizeof st->err) < 0)
		return -EIO;
	log_info("group %s: removed %s: the source removed or renamed it in segments that"
		 " never came", st->g->name, name);
	return 0;
}

/*
 * Before a segment that starts a resync after a gap: the skipped segments
 * may have held the UNLINK or RENAME of an image, and the resync sends only
 * what exists.  The segment's header table lists every image live at its
 * start, so a name the group had at the end of its last applied segment
 * and that is not in the table is gone at the source: removed here, so the
 * replica does not keep it.  Only names this group's own segments made
 * live are considered: other groups' images and files put in the target
 * directory by hand are never touched.
 */
static int remove_stale_names(struct group *g, struct seg_view *v, char *why, size_t whylen)
{
	struct stale st = { .g = g };
	int r;

	seg_view_rewind(v);
	st.live = seg_view_names(v);
	r = state_names_each(g->st, g->name, remove_if_stale, &st);
	if (r < 0) {
		snprintf(why, whylen, "cannot remove the images the skipped segments removed: %s",
			 st.err[0] ? st.err : "the state database failed");
		return r;
	}
	return 0;
}

/* ---- holds (the rules are in failover.c) ---- */

static bool hold_pending(const struct group *g)
{
	return g->hold.active && !g->hold.reached;
}

static void snap_hold(struct group *g)
{
	pthread_mutex_lock(&g->lock);
	g->snap.hold = g->hold;
	pthread_mutex_unlock(&g->lock);
}

/* What failover.c is told about the group. */
static void view_of(struct group *g, struct failover_view *fv)
{
	memset(fv, 0, sizeof *fv);
	fv->group = g->name;
	fv->st = g->st;
	fv->applied_lsn = g->sg.applied_lsn;
	fv->applied_time_ns = g->sg.applied_time_ns;
	fv->sync = &g->sg.sync;
	pthread_mutex_lock(&g->lock);
	fv->backlog_segments = g->snap.backlog_segments;
	fv->backlog_bytes = g->snap.backlog_bytes;
	pthread_mutex_unlock(&g->lock);
}

/* The hold is reached right after record lsn: recorded, shown, and for a
 * promoted group the applier is let go. */
static void reach(struct group *g, uint64_t lsn, uint64_t time_ns, uint8_t type, const char *note)
{
	struct failover_view fv;

	view_of(g, &fv);
	if (hold_reach(&fv, &g->hold, lsn, time_ns, type, note) < 0) {
		stop_group(g, "cannot record in the state database that the hold was reached");
		return;
	}
	snap_hold(g);
	if (g->hold.role == FO_PROMOTED) {
		applier_free(g->a);
		g->a = NULL;
		set_state(g, GROUP_PROMOTED, 0, NULL);
	} else if (!g->stopped) {
		set_state(g, GROUP_HELD, 0, NULL);
	}
}

/* The hold is reached where the targets stand; why: how it came to that. */
static void reach_here(struct group *g, const char *why)
{
	uint8_t type = pos_type(g);
	char note[640], past[200] = "";

	/* An apply stopped inside a segment (a record it could not apply, a
	 * full disk) leaves the writes of the records before that one in the
	 * targets, past the LSN recorded: what a crash right there could
	 * leave too, so the copy is crash-consistent, but it is not exactly
	 * the state at that LSN.  Say so. */
	if (g->rec_lsn > g->sg.applied_lsn)
		snprintf(past, sizeof past, "; the targets also hold writes of records after it, up"
			 " to LSN %" PRIu64 " (applied before the group stopped): a crash state after"
			 " that LSN, not exactly it", g->rec_lsn);
	if (type == SEG_FLUSH || type == SEG_SYNC_END || type == SEG_MARK)
		snprintf(note, sizeof note, "%s: held at LSN %" PRIu64 ", where the group stood%s",
			 why, g->sg.applied_lsn, past);
	else
		snprintf(note, sizeof note, "%s: held at LSN %" PRIu64 ", where the group stood,"
			 " which is %s%s", why, g->sg.applied_lsn,
			 type ? "not a barrier" : "not known to be a barrier (the end of a segment"
			 " or of an earlier run)", past);
	reach(g, g->sg.applied_lsn, g->sg.applied_time_ns, type, note);
}

/*
 * A promote takes no more segments, so a point that needs segment missing
 * (not here) is never reached.  Rather than promote at another point than
 * the one asked, the promote is refused: the group stays held where it
 * stands (after a barrier, as any pending hold) and takes its segments
 * again; release lets it apply, a new promote picks a point that arrived.
 * Returns true if g was such a promote.
 */
static bool refuse_unreachable_promote(struct group *g, uint64_t missing)
{
	char why[480];

	if (!hold_pending(g) || g->hold.role != FO_PROMOTING)
		return false;
	snprintf(why, sizeof why, "promote refused: its point %.200s is not in the segments that"
		 " arrived (segment %" PRIu64 " is not here, and a promote takes no more)",
		 g->hold.pt.text, missing);
	g->hold.role = FO_REFUSED;
	reach_here(g, why);
	return true;
}

/*
 * A promote asked while the group was catching up, which then stopped (a
 * record it cannot apply, a damaged segment, a full disk): its point is
 * out of reach for now, and a pending promote answers every request with
 * 409 (failover.c), so it would never end.  Refused as an unreachable
 * point is: the group holds where it stands, and a new promote promotes it
 * there (a stopped group is promoted as it stands).
 */
static void refuse_stopped_promote(struct group *g, const char *why)
{
	char note[480];

	if (!hold_pending(g) || g->hold.role != FO_PROMOTING)
		return;
	snprintf(note, sizeof note, "promote refused: the group stopped before it reached %.100s"
		 " (%.200s); promote again to promote it where it stands", g->hold.pt.text, why);
	g->hold.role = FO_REFUSED;
	reach_here(g, note);
}

/* How the record a hold stopped at relates to its point, for status. */
static void stop_note(const struct group *g, const struct hold_scan *sc, char *buf, size_t len)
{
	const struct hold *h = &g->hold;
	char t[64];

	buf[0] = '\0';
	switch (h->kind) {
	case HOLD_LSN:
		if (sc->stop_lsn != h->pt.lsn)
			snprintf(buf, len, "LSN %" PRIu64 " is not a barrier: held at the last"
				 " barrier before it", h->pt.lsn);
		break;
	case HOLD_TIME:
		snprintf(buf, len, "the last barrier journaled at or before %s",
			 clock_iso8601(h->pt.time_ns, 9, t, sizeof t));
		break;
	case HOLD_NOW:
		snprintf(buf, len, "the first barrier after LSN %" PRIu64 ", where the group was"
			 " when the hold was asked", h->asked_lsn);
		break;
	case HOLD_LAST:
		snprintf(buf, len, "the last barrier of the segments that arrived");
		break;
	default:
		break;
	}
}

/*
 * Whether a record the hold may stop at lies in the segments from number
 * on (those here, in order, up to the first one missing): 1 yes; 0 no (the
 * point ends first, or, for a hold that ends with what arrived, the
 * segments do); -1 not known yet, *missing being the segment to wait for.
 */
static int later_barrier(struct group *g, uint64_t number, bool consistent, uint64_t *missing)
{
	char name[SEG_FILE_NAME_LEN + 6], why[256];
	struct hold_scan sc;
	struct inbox_file f;

	for (;; number++) {
		seg_file_name(number, SEG_FILE_SUFFIX, name);
		if (inbox_open(g->dirfd, name, g->r, &f, why, sizeof why) < 0) {
			if (hold_ends_with_arrivals(&g->hold))
				return 0;
			*missing = number;
			return -1;
		}
		hold_scan(&g->hold, f.v, 0, consistent, &sc);
		inbox_file_close(&f);
		if (sc.stop_lsn)
			return 1;
		if (sc.ended)
			return 0;
		consistent = sc.consistent;
	}
}

enum plan {
	PLAN_ALL,  /* the whole segment: a later barrier before the point is here */
	PLAN_UPTO, /* up to sc->stop_lsn */
	PLAN_NONE, /* nothing of it */
};

/* How much of segment next (view v, targets durable up to after) a pending
 * hold lets the group apply; *final: stopping there reaches the hold (else
 * the group waits for segment *missing to know more). */
static enum plan plan(struct group *g, struct seg_view *v, uint64_t next, uint64_t after,
		      struct hold_scan *sc, bool *final, uint64_t *missing)
{
	*final = true;
	*missing = 0;
	hold_scan(&g->hold, v, after, g->sg.sync.consistent, sc);
	if (!sc->ended) {
		int more = later_barrier(g, next + 1, sc->consistent, missing);

		if (more == 1)
			return PLAN_ALL;
		*final = more == 0;
	}
	return sc->stop_lsn ? PLAN_UPTO : PLAN_NONE;
}

/*
 * A hold "now" stops at the first barrier after where the group stood when
 * it was asked.  Once the group knows which (sc), that is recorded before
 * it applies towards it, so that after a restart the group still knows:
 * records applied past its durable point before the restart are applied
 * again in order up to that barrier (hold_after_start), and a restart right
 * after stopping there, before the hold was recorded as reached, finds it.
 */
static int plan_now_stop(struct group *g, const struct hold_scan *sc)
{
	struct hold n = g->hold;

	if (n.kind != HOLD_NOW || n.stop_lsn == sc->stop_lsn)
		return 0;
	n.stop_lsn = sc->stop_lsn;
	n.stop_time_ns = sc->stop_time_ns;
	n.stop_type = sc->stop_type;
	if (state_hold_put(g->st, g->name, &n) < 0)
		return -EIO;
	g->hold = n;
	return 0;
}

/* Answers an operator's request handed over by groups_request, if any. */
static void serve_request(struct group *g)
{
	struct failover_view fv;
	struct group_snapshot *snap;
	struct posted *p;
	bool changed;

	pthread_mutex_lock(&g->lock);
	p = g->posted;
	if (p) {
		g->posted = NULL;
		atomic_store(&g->req_posted, false);
		pthread_mutex_lock(&p->lock);
		p->taken = true;
		pthread_mutex_unlock(&p->lock);
	}
	pthread_mutex_unlock(&g->lock);
	if (!p)
		return;
	/* No segment enters the inbox while the request is decided and, if
	 * nothing is waiting, reached (remote_i.h, promote_gate). */
	pthread_rwlock_wrlock(&g->r->promote_gate);
	view_of(g, &fv);
	changed = failover_decide(&fv, &g->hold, p->req);
	if (changed) {
		char name[SEG_FILE_NAME_LEN + 6];
		struct stat st;

		snap_hold(g);
		seg_file_name(g->sg.applied_segment + 1, SEG_FILE_SUFFIX, name);
		if (!g->hold.active && g->cur_state == GROUP_HELD)
			set_state(g, GROUP_IDLE, 0, NULL); /* released: the next step applies */
		else if (hold_pending(g) && hold_at_position(&fv, &g->hold))
			/* the point is the record the group stands after */
			reach_here(g, "the group stood right after the point");
		else if (hold_pending(g) &&
			 (g->stopped || (hold_ends_with_arrivals(&g->hold) && g->dirfd >= 0 &&
					 fstatat(g->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)))
			/* nothing to apply (or a stopped group, which applies
			 * nothing): it holds, or is promoted, where it stands */
			reach_here(g, g->stopped ? "the group was stopped"
						 : "no segment was waiting to be applied");
	}
	pthread_rwlock_unlock(&g->r->promote_gate);
	if (p->req->code == 200) {
		snap = malloc(sizeof *snap);
		if (snap) {
			pthread_mutex_lock(&g->lock);
			*snap = g->snap;
			pthread_mutex_unlock(&g->lock);
			failover_answer(p->req, snap);
			free(snap);
		}
	}
	pthread_mutex_lock(&p->lock);
	p->done = true;
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

/* Answers a request that will never be served (the group is going). */
static void cancel_posted(struct posted *p)
{
	json_t *o = json_pack("{s:s}", "error", "aim-remote is stopping; nothing changed");

	pthread_mutex_lock(&p->lock);
	p->req->code = 503;
	p->req->body = json_dumps(o, 0);
	p->done = true;
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&p->lock);
	json_decref(o);
}

/*
 * Applies segment next.  jump: the segments between applied_segment and
 * next never came, and next starts a resynchronisation (its first record is
 * SYNC_BEGIN): the source skipped them for this destination and the resync
 * brings back everything they held, so the LSN sequence may restart here.
 */
static int apply_next(struct group *g, uint64_t next, bool jump)
{
	char name[SEG_FILE_NAME_LEN + 6], why[1024], u[37];
	const struct seg_header *h;
	struct apply_stats as;
	struct inbox_file f;
	struct hold_scan sc = { 0 };
	enum plan pl = PLAN_ALL;
	uint64_t last, after = g->sg.applied_lsn, missing = 0;
	bool final = false, hit_limit, paused;
	int r;

	seg_file_name(next, SEG_FILE_SUFFIX, name);
	r = inbox_open_settled(g->dirfd, g->name, name, g->r, &f, &g->recheck_ns, why,
			       sizeof why);
	if (r == -ENOENT)
		return 1; /* gone meanwhile: look again */
	if (r == -EAGAIN) {
		set_state(g, GROUP_WAITING, next, NULL);
		return 0;
	}
	if (r == -EBADMSG) {
		quarantine(g, next, name, why, true);
		return 0;
	}
	if (r < 0) {
		/* This host's trouble, not the segment's: keep the file. */
		char msg[1100];

		snprintf(msg, sizeof msg, "segment %" PRIu64 " (%s): %s", next, name, why);
		stop_group(g, msg);
		return 0;
	}
	h = seg_view_header(f.v);
	last = seg_view_last_lsn(f.v);
	if (jump) {
		/* resuming inside it after a crash, or from its start */
		if (after < h->first_lsn || after > last)
			after = h->first_lsn - 1;
	}
	if (memcmp(h->group, g->id, 16) != 0) {
		seg_uuid_format(h->group, u);
		snprintf(why, sizeof why, "it belongs to group %s, not to this one", u);
	} else if (h->number != next) {
		snprintf(why, sizeof why, "its file name says segment %" PRIu64
			 " but its header says %" PRIu64, next, h->number);
	} else if (!jump && g->sg.applied_segment && h->first_lsn != g->sg.segment_last_lsn + 1) {
		snprintf(why, sizeof why, "it starts at LSN %" PRIu64 " but segment %" PRIu64
			 " ended at LSN %" PRIu64 " (expected %" PRIu64 ")", h->first_lsn,
			 g->sg.applied_segment, g->sg.segment_last_lsn,
			 g->sg.segment_last_lsn + 1);
	} else if (!jump && (g->sg.applied_segment || after) &&
		   (after + 1 < h->first_lsn || after > last)) {
		snprintf(why, sizeof why, "the targets are durable up to LSN %" PRIu64
			 ", which is not within this segment (LSN %" PRIu64 "..%" PRIu64 ")",
			 after, h->first_lsn, last);
	} else {
		why[0] = '\0';
	}
	if (why[0]) {
		inbox_file_close(&f);
		quarantine(g, next, name, why, true);
		return 0;
	}
	r = applier_check(g->a, f.v, after, why, sizeof why);
	if (r < 0) {
		inbox_file_close(&f);
		snprintf(why + strlen(why), sizeof why - strlen(why),
			 "; the targets are unchanged (durable up to LSN %" PRIu64 ")", after);
		stop_group(g, why);
		return 0;
	}
	if (hold_pending(g)) {
		pl = plan(g, f.v, next, after, &sc, &final, &missing);
		if (pl == PLAN_NONE) {
			inbox_file_close(&f);
			if (final)
				reach_here(g, g->hold.kind == HOLD_LAST
					   ? "no later barrier where the copy is consistent arrived"
					   : "no barrier lies between the group's position and the"
					     " hold's point");
			else if (!refuse_unreachable_promote(g, missing))
				set_state(g, GROUP_WAITING, missing, NULL);
			return 0;
		}
		if (pl == PLAN_UPTO && final && plan_now_stop(g, &sc) < 0) {
			inbox_file_close(&f);
			stop_group(g, "cannot record in the state database where the hold stops");
			return 0;
		}
	}
	/* Only before the segment's first record is applied: once inside
	 * it, a name it created may be one the old set held. */
	if (jump && after + 1 == h->first_lsn && remove_stale_names(g, f.v, why, sizeof why) < 0) {
		inbox_file_close(&f);
		stop_group(g, why);
		return 0;
	}
	g->cur.number = next;
	g->cur.first_lsn = h->first_lsn;
	g->cur.last_lsn = last;
	g->cur.size = f.len;
	g->cur.digest = seg_view_digest(f.v);
	/* The view's namespace as the apply unfolds it: every live image
	 * once the whole segment is recorded. */
	g->cur.names = seg_view_names(f.v);
	set_state(g, GROUP_APPLYING, 0, NULL);
	pthread_mutex_lock(&g->lock);
	g->snap.applying = next;
	pthread_mutex_unlock(&g->lock);
	if (after >= h->first_lsn)
		log_info("group %s: resuming segment %" PRIu64 " after LSN %" PRIu64, g->name, next,
			 after);
	g->limit = pl == PLAN_UPTO ? sc.stop_lsn : 0;
	applier_set_source(g->a, f.fd, seg_view_bytes(f.v));
	r = applier_apply(g->a, f.v, after, why, sizeof why);
	applier_set_source(g->a, -1, NULL);
	hit_limit = r == APPLY_STOP && g->limit && g->rec_lsn == g->limit;
	paused = r == APPLY_STOP && !hit_limit;
	g->limit = 0;
	/* Normally the durable callback recorded the whole segment; an apply
	 * whose last barrier was reported before (a resumed one) did not. */
	if (r == 0 && g->sg.applied_segment != next) {
		r = record_progress(g, last, g->sg.applied_time_ns, &g->cur);
		if (r < 0)
			snprintf(why, sizeof why, "cannot record segment %" PRIu64 " as applied", next);
	}
	g->cur.names = NULL; /* the view goes below */
	applier_stats(g->a, &as);
	pthread_mutex_lock(&g->lock);
	g->snap.segments_applied = as.segments;
	g->snap.records_applied = as.records;
	g->snap.bytes_written = as.bytes_written;
	pthread_mutex_unlock(&g->lock);
	inbox_file_close(&f);
	if (r < 0) {
		if (r == -ECANCELED && atomic_load(&g->r->quitting)) {
			log_info("group %s: interrupted in segment %" PRIu64
				 "; the targets are durable up to LSN %" PRIu64, g->name, next,
				 g->sg.applied_lsn);
			return 0;
		}
		snprintf(why + strlen(why), sizeof why - strlen(why),
			 "; the targets are durable up to LSN %" PRIu64, g->sg.applied_lsn);
		/* A full target or state disk heals once space is freed. */
		g->short_of_space = r == -ENOSPC || r == -EDQUOT;
		stop_group(g, why);
		return 0;
	}
	if (r == APPLY_STOP && g->sg.applied_segment != next) {
		/* Stopped inside the segment, durable up to there. */
		if (paused)
			return 1; /* for a request: answer it, then go on */
		if (final) {
			stop_note(g, &sc, why, sizeof why);
			reach(g, sc.stop_lsn, sc.stop_time_ns, sc.stop_type, why);
		} else if (!refuse_unreachable_promote(g, missing)) {
			set_state(g, GROUP_WAITING, missing, NULL);
		}
		return 0;
	}
	log_info("group %s: applied segment %" PRIu64 " (LSN %" PRIu64 "..%" PRIu64 ")", g->name,
		 next, g->cur.first_lsn <= after ? after + 1 : g->cur.first_lsn, last);
	dispose(g, name);
	if (hit_limit && final) {
		/* its last record is where the hold stops */
		stop_note(g, &sc, why, sizeof why);
		reach(g, sc.stop_lsn, sc.stop_time_ns, sc.stop_type, why);
		return 0;
	}
	return 1;
}

/* Under --retain: whether applied/ holds name already. */
static bool kept_already(struct group *g, const char *name)
{
	char path[SEG_FILE_NAME_LEN + 32];
	struct stat st;

	snprintf(path, sizeof path, "%s/%s", GROUP_APPLIED, name);
	return fstatat(g->dirfd, path, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* A segment numbered at most applied_segment: removed when it is the one
 * applied (kept in applied/ under --retain if it is not there yet: a kill
 * came between its last barrier and dispose), put aside otherwise. */
static void duplicate(struct group *g, uint64_t number)
{
	char name[SEG_FILE_NAME_LEN + 6], why[768];
	struct state_segment s;
	struct inbox_file f;
	int r;

	seg_file_name(number, SEG_FILE_SUFFIX, name);
	r = inbox_open_settled(g->dirfd, g->name, name, g->r, &f, &g->recheck_ns, why,
			       sizeof why);
	if (r == -ENOENT)
		return;
	if (r < 0) {
		if (r == -EBADMSG)
			quarantine(g, number, name, why, false);
		return;
	}
	r = state_segment_get(g->st, g->name, number, &s);
	if (r == 0 && (s.digest != seg_view_digest(f.v) || s.size != f.len ||
		       memcmp(seg_view_header(f.v)->group, g->id, 16) != 0)) {
		inbox_file_close(&f);
		snprintf(why, sizeof why, "it differs from the segment %" PRIu64
			 " applied before (digest %016" PRIx64 ", %" PRIu64 " bytes)", number,
			 s.digest, s.size);
		quarantine(g, number, name, why, false);
		return;
	}
	inbox_file_close(&f);
	if (r < 0 && r != -ENOENT)
		return; /* the state could not tell: leave it for the next look */
	if (g->r->cfg.retain && !kept_already(g, name)) {
		/* applied, then a kill before it was put aside: keep it now */
		log_info("group %s: segment %" PRIu64 " was applied before; keeping it in %s/",
			 g->name, number, GROUP_APPLIED);
		dispose(g, name);
		return;
	}
	log_info("group %s: segment %" PRIu64 " was applied before; removing the copy", g->name,
		 number);
	prechecked_forget(&g->r->prechecked, g->dirfd, name);
	if (unlinkat(g->dirfd, name, 0) == 0)
		fsync(g->dirfd);
}

/* Lists the group directory and publishes the backlog (segments numbered
 * above applied_segment).  dups: remove or put aside the others.  Returns
 * the backlog's count, *have_next whether applied_segment + 1 is there,
 * *lowest the lowest segment number of the backlog (0 if none). */
static uint64_t look(struct group *g, bool dups, bool *have_next, uint64_t *lowest)
{
	struct inbox_entry *e = NULL;
	uint64_t bl_n = 0, bl_bytes = 0, oldest = 0;
	size_t n = 0;
	int r;

	*have_next = false;
	*lowest = 0;
	r = inbox_scan(g->dirfd, &e, &n);
	if (r < 0) {
		if (r != -ENOENT)
			log_error("group %s: cannot list %s/%s: %s", g->name, g->r->cfg.inbox,
				  g->name, strerror(-r));
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		if (e[i].number <= g->sg.applied_segment) {
			if (dups)
				duplicate(g, e[i].number);
			continue;
		}
		if (e[i].number == g->sg.applied_segment + 1)
			*have_next = true;
		if (!*lowest || e[i].number < *lowest)
			*lowest = e[i].number;
		bl_n++;
		bl_bytes += e[i].size;
		if (!oldest || e[i].mtime_ns < oldest)
			oldest = e[i].mtime_ns;
	}
	free(e);
	pthread_mutex_lock(&g->lock);
	g->snap.backlog_segments = bl_n;
	g->snap.backlog_bytes = bl_bytes;
	g->snap.oldest_pending_ns = oldest;
	pthread_mutex_unlock(&g->lock);
	return bl_n;
}

/* True if segment number starts with a SYNC_BEGIN record. */
static bool starts_resync(struct group *g, uint64_t number)
{
	char name[SEG_FILE_NAME_LEN + 6], why[256];
	struct seg_record rec;
	struct inbox_file f;
	bool yes = false;

	seg_file_name(number, SEG_FILE_SUFFIX, name);
	if (inbox_open(g->dirfd, name, g->r, &f, why, sizeof why) < 0)
		return false;
	seg_view_rewind(f.v);
	if (seg_view_next(f.v, &rec) == 1)
		yes = rec.type == SEG_SYNC_BEGIN;
	inbox_file_close(&f);
	return yes;
}

/* One look at the group directory.  Returns 1 when something was done and
 * another look is worth it, 0 when there is nothing to do now. */
static int step(struct group *g)
{
	uint64_t next = g->sg.applied_segment + 1, lowest, backlog;
	char name[SEG_FILE_NAME_LEN + 6];
	struct stat st;
	bool have_next;

	serve_request(g);
	if (g->stopped)
		return 0;
	if (g->hold.active && g->hold.reached) {
		/* Held or promoted: nothing is applied; status shows what waits. */
		look(g, true, &have_next, &lowest);
		set_state(g, g->hold.role == FO_PROMOTED ? GROUP_PROMOTED : GROUP_HELD, 0, NULL);
		return 0;
	}
	/* The common case, without listing the whole directory: a backlog of
	 * thousands of segments must not cost a scan per segment (a pending
	 * hold may leave the next segment where it is: it lists). */
	seg_file_name(next, SEG_FILE_SUFFIX, name);
	if (!hold_pending(g) &&
	    fstatat(g->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
	    !inbox_settling(g->dirfd, g->name, name, &g->recheck_ns)) {
		pthread_mutex_lock(&g->lock);
		if (g->snap.backlog_segments) {
			g->snap.backlog_segments--;
			g->snap.backlog_bytes -= g->snap.backlog_bytes > (uint64_t)st.st_size
						 ? (uint64_t)st.st_size : g->snap.backlog_bytes;
		}
		pthread_mutex_unlock(&g->lock);
		return apply_next(g, next, false);
	}
	backlog = look(g, true, &have_next, &lowest);
	if (have_next)
		return apply_next(g, next, false);
	if (backlog && lowest > next && starts_resync(g, lowest)) {
		log_info("group %s: segments %" PRIu64 "..%" PRIu64 " were skipped by the source;"
			 " segment %" PRIu64 " starts a resynchronisation", g->name, next, lowest - 1,
			 lowest);
		return apply_next(g, lowest, true);
	}
	if (hold_pending(g) && hold_ends_with_arrivals(&g->hold)) {
		/* "now", or a promote's last barrier: nothing more arrived */
		reach_here(g, g->hold.kind == HOLD_NOW ? "no segment was waiting to be applied"
						       : "no more segments arrived");
		return 0;
	}
	if (refuse_unreachable_promote(g, next))
		return 0;
	if (backlog)
		set_state(g, GROUP_WAITING, next, NULL);
	else
		set_state(g, GROUP_IDLE, 0, NULL);
	return 0;
}

/* ---- the thread ---- */

/* Closes what group_init opened. */
static void group_fini(struct group *g)
{
	applier_free(g->a);
	g->a = NULL;
	mismatches_clear(g);
	g->nmarks = 0; /* kept past the last progress, which never came */
	state_close(g->st);
	g->st = NULL;
	if (g->dirfd >= 0)
		close(g->dirfd);
	g->dirfd = -1;
	g->sync_dirty = false;
}

static int group_init(struct group *g)
{
	const struct remote_config *c = &g->r->cfg;
	uint64_t total = 0;
	int r;

	r = state_open(g->r->db_path, &g->st);
	if (r < 0)
		return r;
	r = state_group_load(g->st, g->name, &g->sg);
	if (r < 0)
		return r;
	/* Mismatches recorded ahead of a progress that never came: the
	 * apply resumed below reports them again. */
	r = state_mismatches_forget(g->st, g->name, g->sg.applied_lsn);
	if (r < 0)
		return r;
	if (!g->sg.sync.consistent)
		log_info("group %s: a resynchronisation of destination %" PRIu32 " is in progress since LSN %" PRIu64
			 "; the targets are not a consistent copy until it ends",
			 g->name, g->sg.sync.dest, g->sg.sync.begin_lsn);
	pthread_mutex_lock(&g->lock);
	snap_progress(&g->snap, &g->sg);
	pthread_mutex_unlock(&g->lock);
	{
		struct group_snapshot tmp;

		memset(&tmp, 0, sizeof tmp);
		if (state_quarantine_each(g->st, g->name, load_quarantine, &tmp, &total) == 0) {
			pthread_mutex_lock(&g->lock);
			memcpy(g->snap.q, tmp.q, sizeof tmp.q);
			g->snap.nquarantine = tmp.nquarantine;
			g->snap.quarantined = total;
			pthread_mutex_unlock(&g->lock);
		}
	}
	r = state_hold_get(g->st, g->name, &g->hold);
	if (r < 0)
		return r;
	snap_hold(g);
	/* Whatever an earlier run recorded, this run starts afresh. */
	state_group_status(g->st, g->name, "idle", 0, NULL);
	if (mkdirat(g->r->inbox_fd, g->name, 0750) < 0 && errno != EEXIST) {
		log_error("group %s: cannot create %s/%s: %m", g->name, c->inbox, g->name);
		return -errno;
	}
	g->dirfd = openat(g->r->inbox_fd, g->name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (g->dirfd < 0) {
		log_error("group %s: cannot open %s/%s: %m", g->name, c->inbox, g->name);
		return -errno;
	}
	if (g->hold.role == FO_PROMOTED) {
		char t[64];

		log_info("group %s: promoted at %s (LSN %" PRIu64 "): nothing is applied", g->name,
			 clock_iso8601(g->hold.promoted_ns, 3, t, sizeof t), g->hold.stop_lsn);
		return 0; /* no applier: its targets are someone else's now */
	}
	r = applier_new(c->target_dir, &g->a);
	if (r < 0)
		return r;
	r = applier_map_all(g->a, c->maps, c->nmaps);
	if (r < 0)
		return r;
	applier_set_durable_cb(g->a, on_durable, g);
	applier_set_event_cb(g->a, on_event, g);
	applier_set_record_cb(g->a, on_record, g);
	applier_record_cb_reads_targets(g->a, false); /* it follows LSNs and marks */
	if (hold_pending(g))
		log_info("group %s: %s at %s pending since %s; the targets are at LSN %" PRIu64,
			 g->name, g->hold.role == FO_PROMOTING ? "promote" : "hold", g->hold.pt.text,
			 clock_iso8601(g->hold.set_ns, 3, (char[64]){ 0 }, 64), g->sg.applied_lsn);
	return 0;
}

/*
 * A group (re)started with a hold asked "now" and not reached.  If its
 * targets are durable at the barrier it was going to stop at
 * (plan_now_stop), it stopped there before the restart: the hold is
 * reached.  Otherwise it goes on towards that barrier as before, applying
 * again, in order, what it applied after its durable point; the plan finds
 * the same barrier, since none lies between where the hold was asked and it.
 */
static void hold_after_start(struct group *g)
{
	struct hold_scan sc = { 0 };
	char why[640];

	if (!hold_pending(g) || g->hold.kind != HOLD_NOW || !g->hold.stop_lsn ||
	    g->sg.applied_lsn < g->hold.stop_lsn)
		return;
	sc.stop_lsn = g->hold.stop_lsn;
	stop_note(g, &sc, why, sizeof why);
	reach(g, g->hold.stop_lsn, g->hold.stop_time_ns, g->hold.stop_type, why);
}

static void start_group(struct group *g)
{
	int r = group_init(g);

	if (r < 0) {
		g->short_of_space = r == -ENOSPC || r == -EDQUOT;
		stop_group(g, "cannot start applying (see the messages before)");
	} else {
		hold_after_start(g);
	}
}

static void *group_main(void *arg)
{
	struct group *g = arg;
	bool resume;

	start_group(g);
	for (;;) {
		pthread_mutex_lock(&g->lock);
		while (!g->kicked && !g->stop) {
			struct timespec ts;

			if (!g->recheck_ns) {
				pthread_cond_wait(&g->cond, &g->lock);
				continue;
			}
			ts.tv_sec = (time_t)(g->recheck_ns / 1000000000ULL);
			ts.tv_nsec = (long)(g->recheck_ns % 1000000000ULL);
			if (pthread_cond_timedwait(&g->cond, &g->lock, &ts) == ETIMEDOUT)
				break;
		}
		g->recheck_ns = 0;
		if (g->stop) {
			pthread_mutex_unlock(&g->lock);
			break;
		}
		g->kicked = false;
		resume = g->resume;
		g->resume = false;
		pthread_mutex_unlock(&g->lock);
		if (g->stopped && g->short_of_space && clock_mono_ns() >= g->space_retry_ns)
			resume = true;
		if (g->stopped && resume) {
			/* As at start: the state again, the applier afresh. */
			log_info("group %s: resuming", g->name);
			group_fini(g);
			g->stopped = false;
			g->short_of_space = false;
			g->cur_state = GROUP_STARTING;
			start_group(g);
		}
		if (g->stopped) {
			uint64_t lowest;
			bool have_next;

			/* Nothing is applied, but status shows what piles up,
			 * and an operator may still hold or promote it. */
			serve_request(g);
			if (g->dirfd >= 0)
				look(g, false, &have_next, &lowest);
			if (g->short_of_space && (!g->recheck_ns || g->recheck_ns > g->space_retry_ns))
				g->recheck_ns = g->space_retry_ns;
			continue;
		}
		while (!g->stopped && !atomic_load(&g->r->quitting) && step(g) > 0)
			;
	}
	pthread_mutex_lock(&g->lock);
	if (g->posted)
		cancel_posted(g->posted);
	g->posted = NULL;
	atomic_store(&g->req_posted, false);
	pthread_mutex_unlock(&g->lock);
	group_fini(g);
	free(g->mm);
	g->mm = NULL;
	free(g->marks);
	g->marks = NULL;
	return NULL;
}

/* ---- the set of groups ---- */

int groups_kick(struct remote *r, const char *name)
{
	struct group *g, **tail;
	uint8_t id[16];
	int rc;

	if (!group_name_valid(name, id))
		return -EINVAL;
	pthread_mutex_lock(&r->lock);
	for (tail = &r->groups; (g = *tail); tail = &g->next) {
		if (strcmp(g->name, name) == 0) {
			pthread_mutex_lock(&g->lock);
			g->kicked = true;
			pthread_cond_signal(&g->cond);
			pthread_mutex_unlock(&g->lock);
			pthread_mutex_unlock(&r->lock);
			return 0;
		}
	}
	if (atomic_load(&r->quitting)) {
		pthread_mutex_unlock(&r->lock);
		return -ECANCELED;
	}
	g = calloc(1, sizeof *g);
	if (!g) {
		pthread_mutex_unlock(&r->lock);
		return -ENOMEM;
	}
	g->r = r;
	memcpy(g->id, id, 16);
	snprintf(g->name, sizeof g->name, "%s", name);
	snprintf(g->snap.name, sizeof g->snap.name, "%s", name);
	g->dirfd = -1;
	g->kicked = true;
	g->cur_state = GROUP_STARTING; /* until the first look at its directory */
	pthread_mutex_init(&g->lock, NULL);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&g->cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	rc = pthread_create(&g->thread, NULL, group_main, g);
	if (rc) {
		pthread_mutex_unlock(&r->lock);
		log_error("group %s: cannot start a thread: %s", name, strerror(rc));
		pthread_mutex_destroy(&g->lock);
		pthread_cond_destroy(&g->cond);
		free(g);
		return -rc;
	}
	*tail = g;
	pthread_mutex_unlock(&r->lock);
	log_info("group %s: applying onto %s", name, r->cfg.target_dir);
	return 0;
}

int groups_resume(struct remote *r, const char *name)
{
	int n = 0, found = 0;

	pthread_mutex_lock(&r->lock);
	for (struct group *g = r->groups; g; g = g->next) {
		if (name && strcmp(g->name, name) != 0)
			continue;
		found++;
		pthread_mutex_lock(&g->lock);
		if (g->snap.state == GROUP_STOPPED) {
			g->resume = true;
			g->kicked = true;
			pthread_cond_signal(&g->cond);
			n++;
		}
		pthread_mutex_unlock(&g->lock);
	}
	pthread_mutex_unlock(&r->lock);
	return name && !found ? -ENOENT : n;
}

int groups_only(struct remote *r, char name[37])
{
	int n = 0;

	pthread_mutex_lock(&r->lock);
	for (struct group *g = r->groups; g; g = g->next)
		if (n++ == 0)
			memcpy(name, g->name, 37);
	pthread_mutex_unlock(&r->lock);
	return n == 1 ? 0 : n == 0 ? -ENOENT : -E2BIG;
}

/* The group named name, with r->lock held. */
static struct group *find_locked(struct remote *r, const char *name)
{
	for (struct group *g = r->groups; g; g = g->next)
		if (strcmp(g->name, name) == 0)
			return g;
	return NULL;
}

int groups_request(struct remote *r, const char *name, struct failover_req *req)
{
	struct posted p = { .req = req };
	pthread_condattr_t ca;
	struct timespec ts;
	struct group *g;
	uint64_t until;
	int rc = 0;

	pthread_mutex_init(&p.lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&p.cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_lock(&r->lock);
	g = atomic_load(&r->quitting) ? NULL : find_locked(r, name);
	if (g) {
		pthread_mutex_lock(&g->lock);
		if (g->posted) {
			rc = -EBUSY;
		} else {
			g->posted = &p;
			atomic_store(&g->req_posted, true);
			g->kicked = true;
			pthread_cond_signal(&g->cond);
		}
		pthread_mutex_unlock(&g->lock);
	}
	pthread_mutex_unlock(&r->lock);
	if (!g || rc < 0) {
		rc = g ? rc : atomic_load(&r->quitting) ? -ECANCELED : -ENOENT;
		goto out;
	}
	until = clock_mono_ns() + REQUEST_WAIT_NS;
	ts.tv_sec = (time_t)(until / 1000000000ULL);
	ts.tv_nsec = (long)(until % 1000000000ULL);
	pthread_mutex_lock(&p.lock);
	while (!p.taken && !p.done)
		if (pthread_cond_timedwait(&p.cond, &p.lock, &ts) == ETIMEDOUT)
			break;
	if (!p.taken && !p.done) {
		bool retracted = false;

		/* Take it back, unless the group took it meanwhile (or is
		 * going, and answered it). */
		pthread_mutex_unlock(&p.lock);
		pthread_mutex_lock(&r->lock);
		g = find_locked(r, name);
		if (g) {
			pthread_mutex_lock(&g->lock);
			if (g->posted == &p) {
				g->posted = NULL;
				atomic_store(&g->req_posted, false);
				retracted = true;
			}
			pthread_mutex_unlock(&g->lock);
		}
		pthread_mutex_unlock(&r->lock);
		pthread_mutex_lock(&p.lock);
		if (retracted) {
			pthread_mutex_unlock(&p.lock);
			rc = -ETIMEDOUT;
			goto out;
		}
	}
	/* Taken: the group's thread answers without waiting for anything. */
	while (!p.done)
		pthread_cond_wait(&p.cond, &p.lock);
	pthread_mutex_unlock(&p.lock);
out:
	pthread_cond_destroy(&p.cond);
	pthread_mutex_destroy(&p.lock);
	return rc;
}

void groups_note_inbox(struct remote *r, const char *name, const char *text)
{
	struct group *g;

	if (text && groups_kick(r, name) < 0)
		return;
	pthread_mutex_lock(&r->lock);
	for (g = r->groups; g; g = g->next)
		if (strcmp(g->name, name) == 0)
			break;
	if (g) {
		pthread_mutex_lock(&g->lock);
		snprintf(g->snap.inbox_full, sizeof g->snap.inbox_full, "%s", text ? text : "");
		pthread_mutex_unlock(&g->lock);
	}
	pthread_mutex_unlock(&r->lock);
}

void groups_kick_all(struct remote *r)
{
	pthread_mutex_lock(&r->lock);
	for (struct group *g = r->groups; g; g = g->next) {
		pthread_mutex_lock(&g->lock);
		g->kicked = true;
		pthread_cond_signal(&g->cond);
		pthread_mutex_unlock(&g->lock);
	}
	pthread_mutex_unlock(&r->lock);
}

static int kick_known(void *ctx, const char *group)
{
	groups_kick(ctx, group);
	return 0;
}

int groups_start(struct remote *r)
{
	struct state *st;
	int rc;

	rc = state_open(r->db_path, &st);
	if (rc < 0)
		return rc;
	rc = state_groups_each(st, kick_known, r);
	state_close(st);
	return rc;
}

void groups_stop(struct remote *r)
{
	struct group *g, *next;

	atomic_store(&r->quitting, true);
	pthread_mutex_lock(&r->lock);
	for (g = r->groups; g; g = g->next) {
		pthread_mutex_lock(&g->lock);
		g->stop = true;
		/* A request not taken yet is answered here: once the list is
		 * gone its sender could not take it back. */
		if (g->posted)
			cancel_posted(g->posted);
		g->posted = NULL;
		atomic_store(&g->req_posted, false);
		pthread_cond_signal(&g->cond);
		pthread_mutex_unlock(&g->lock);
	}
	g = r->groups;
	r->groups = NULL;
	pthread_mutex_unlock(&r->lock);
	for (; g; g = next) {
		next = g->next;
		pthread_join(g->thread, NULL);
		pthread_mutex_destroy(&g->lock);
		pthread_cond_destroy(&g->cond);
		free(g);
	}
}

void groups_each(struct remote *r, void (*fn)(void *ctx, const struct group_snapshot *s),
		 void *ctx)
{
	struct group_snapshot *s = malloc(sizeof *s);

	if (!s)
		return;
	pthread_mutex_lock(&r->lock);
	for (struct group *g = r->groups; g; g = g->next) {
		pthread_mutex_lock(&g->lock);
		*s = g->snap;
		pthread_mutex_unlock(&g->lock);
		fn(ctx, s);
	}
	pthread_mutex_unlock(&r->lock);
	free(s);
}
