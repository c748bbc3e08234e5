/*
 * state.c — aim-remote's SQLite state, STATE_DIR/remote.db (WAL mode,
 * synchronous=FULL): per group, how far the targets are durable and
 * whether they are a consistent copy; every whole segment applied (so that
 * a segment sent again after its file was deleted can be told identical or
 * different); the segments put aside; the differences HASH records found.
 *
 *   groups(group, applied_segment, segment_last_lsn, applied_lsn,
 *          applied_time_ns, updated_ns, status, waiting_for, error,
 *          consistent, sync_dest, sync_begin_lsn, sync_begin_ns,
 *          sync_end_lsn, mismatch_pruned_lsn)
 *   segments(group, number, first_lsn, last_lsn, size, digest, applied_ns)
 *   quarantine(id, group, segment, reason, file, time)
 *   mismatches(group, lsn, image, offset, length, dest, image_id)
 *   names(group, name)
 *   holds(group, kind, point, set_ns, asked_lsn, reached, stop_lsn,
 *         stop_time_ns, stop_type, note, role, force, promoted_ns,
 *         promoted_consistent)
 *   marks(group, lsn, name, time_ns)
 *
 * consistent is 0 from a SYNC_BEGIN (sync_begin_lsn, with the source time
 * sync_begin_ns and the destination number sync_dest) until the next
 * SYNC_END (sync_end_lsn), and written in the progress transaction of the
 * durable point the applier makes at each of them.  A mismatches row is a
 * run of blocks of the HASH record at lsn whose content differed; rows
 * above applied_lsn may exist (recorded ahead of their progress) and are
 * not served; rows more than MISMATCHES_KEEP_LSNS behind applied_lsn are
 * dropped as segments complete, and mismatch_pruned_lsn is the highest LSN
 * dropped, so that a reader asking for older ones can tell.  Databases of
 * earlier versions gain the new columns when opened.
 *
 * A segments row is what a copy sent again is compared with; a source only
 * sends again what it has not seen acknowledged, so rows more than
 * SEGMENTS_KEEP segments behind the last applied are dropped as segments
 * complete (a copy older than that is still known applied from
 * applied_segment, only no longer compared byte for byte).
 *
 * Progress is written only after the applier has made the targets
 * durable (its durable callback), so the row never claims more than the
 * targets hold.  applied_lsn may run ahead of segment_last_lsn: the targets
 * are durable part-way into segment applied_segment + 1, and a restart
 * resumes there.  Times are nanoseconds since the epoch; digests are the
 * segment trailer's check, in hex.
 *
 * A holds row is a group's hold or promotion (failover.c): it is written
 * when an operator asks (before the answer), when the hold is reached and
 * when the promotion is decided, and removed by a release; a promoted
 * group's row stays for good, which is how the receiver knows to refuse its
 * segments.  A marks row is a MARK record the group applied (written as the
 * applier passes it, so a row may run ahead of applied_lsn after a crash:
 * readers compare its LSN with applied_lsn).
 *
 * Thread safety: a struct state is one connection and belongs to one
 * thread at a time (the receiver guards its own with a mutex).
 */
#include "remote_i.h"
#include "clock.h"
#include "log.h"
#include "format.h"

#include <errno.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct state {
	sqlite3 *db;
};

static const char schema[] =
	"CREATE TABLE IF NOT EXISTS groups ("
	" \"group\" TEXT PRIMARY KEY,"
	" applied_segment INTEGER NOT NULL DEFAULT 0,"
	" segment_last_lsn INTEGER NOT NULL DEFAULT 0,"
	" applied_lsn INTEGER NOT NULL DEFAULT 0,"
	" applied_time_ns INTEGER NOT NULL DEFAULT 0,"
	" updated_ns INTEGER NOT NULL DEFAULT 0,"
	" status TEXT NOT NULL DEFAULT 'idle',"
	" waiting_for INTEGER,"
	" error TEXT,"
	" consistent INTEGER NOT NULL DEFAULT 1,"
	" sync_dest INTEGER NOT NULL DEFAULT 0,"
	" sync_begin_lsn INTEGER NOT NULL DEFAULT 0,"
	" sync_begin_ns INTEGER NOT NULL DEFAULT 0,"
	" sync_end_lsn INTEGER NOT NULL DEFAULT 0,"
	" mismatch_pruned_lsn INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE IF NOT EXISTS segments ("
	" \"group\" TEXT NOT NULL,"
	" number INTEGER NOT NULL,"
	" first_lsn INTEGER NOT NULL,"
	" last_lsn INTEGER NOT NULL,"
	" size INTEGER NOT NULL,"
	" digest TEXT NOT NULL,"
	" applied_ns INTEGER NOT NULL,"
	" PRIMARY KEY (\"group\", number));"
	"CREATE TABLE IF NOT EXISTS quarantine ("
	" id INTEGER PRIMARY KEY,"
	" \"group\" TEXT NOT NULL,"
	" segment INTEGER NOT NULL,"
	" reason TEXT NOT NULL,"
	" file TEXT,"
	" time INTEGER NOT NULL);"
	"CREATE INDEX IF NOT EXISTS quarantine_group ON quarantine (\"group\", id);"
	"CREATE TABLE IF NOT EXISTS mismatches ("
	" \"group\" TEXT NOT NULL,"
	" lsn INTEGER NOT NULL,"
	" image TEXT NOT NULL,"
	" \"offset\" INTEGER NOT NULL,"
	" length INTEGER NOT NULL,"
	" dest INTEGER NOT NULL DEFAULT 0,"
	" image_id INTEGER NOT NULL DEFAULT 0,"
	" PRIMARY KEY (\"group\", lsn, \"offset\")) WITHOUT ROWID;"
	/* The images live at the end of the group's last applied segment: what
	 * a segment that starts a resync after a gap is compared with. */
	"CREATE TABLE IF NOT EXISTS names ("
	" \"group\" TEXT NOT NULL,"
	" name TEXT NOT NULL,"
	" PRIMARY KEY (\"group\", name)) WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS holds ("
	" \"group\" TEXT PRIMARY KEY,"
	" kind TEXT NOT NULL,"
	" point TEXT NOT NULL,"
	" set_ns INTEGER NOT NULL,"
	" asked_lsn INTEGER NOT NULL,"
	" reached INTEGER NOT NULL DEFAULT 0,"
	" stop_lsn INTEGER NOT NULL DEFAULT 0,"
	" stop_time_ns INTEGER NOT NULL DEFAULT 0,"
	" stop_type INTEGER NOT NULL DEFAULT 0,"
	" note TEXT NOT NULL DEFAULT '',"
	" role TEXT NOT NULL DEFAULT '',"
	" force INTEGER NOT NULL DEFAULT 0,"
	" promoted_ns INTEGER NOT NULL DEFAULT 0,"
	" promoted_consistent INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE IF NOT EXISTS marks ("
	" \"group\" TEXT NOT NULL,"
	" lsn INTEGER NOT NULL,"
	" name TEXT NOT NULL,"
	" time_ns INTEGER NOT NULL,"
	" PRIMARY KEY (\"group\", lsn)) WITHOUT ROWID;"
	"CREATE INDEX IF NOT EXISTS marks_name ON marks (\"group\", name);";

/* Columns added to groups since its first version, for older databases. */
static const char *const group_columns[][2] = {
	{ "consistent", "INTEGER NOT NULL DEFAULT 1" },
	{ "sync_dest", "INTEGER NOT NULL DEFAULT 0" },
	{ "sync_begin_lsn", "INTEGER NOT NULL DEFAULT 0" },
	{ "sync_begin_ns", "INTEGER NOT NULL DEFAULT 0" },
	{ "sync_end_lsn", "INTEGER NOT NULL DEFAULT 0" },
	{ "mismatch_pruned_lsn", "INTEGER NOT NULL DEFAULT 0" },
};

/* A full disk is told as itself: the group retries once space is freed. */
static int db_errno(struct state *st)
{
	return sqlite3_errcode(st->db) == SQLITE_FULL ? -ENOSPC : -EIO;
}

static int db_fail(struct state *st, const char *what)
{
	log_error("state database: %s: %s", what, sqlite3_errmsg(st->db));
	return db_errno(st);
}

static int exec(struct state *st, const char *sql)
{
	char *msg = NULL;

	if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		log_error("state database: %s", msg ? msg : sqlite3_errmsg(st->db));
		sqlite3_free(msg);
		return db_errno(st);
	}
	return 0;
}

static int prepare(struct state *st, const char *sql, sqlite3_stmt **s)
{
	if (sqlite3_prepare_v2(st->db, sql, -1, s, NULL) != SQLITE_OK)
		return db_fail(st, "prepare");
	return 0;
}

/* Steps a statement that returns no rows, then finalizes it. */
static int run(struct state *st, sqlite3_stmt *s, const char *what)
{
	int rc = sqlite3_step(s);

	sqlite3_finalize(s);
	if (rc != SQLITE_DONE)
		return db_fail(st, what);
	return 0;
}

/* 1 if table groups has column name, 0 if not, or -EIO. */
static int has_column(struct state *st, const char *name)
{
	sqlite3_stmt *s;
	int rc, found = 0;

	if (prepare(st, "SELECT name FROM pragma_table_info('groups')", &s) < 0)
		return -EIO;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		const char *c = (const char *)sqlite3_column_text(s, 0);

		if (c && strcmp(c, name) == 0)
			found = 1;
	}
	sqlite3_finalize(s);
	return rc == SQLITE_DONE ? found : db_fail(st, "reading the schema");
}

/* Adds the columns a database of an earlier version lacks. */
static int upgrade(struct state *st)
{
	for (size_t i = 0; i < sizeof group_columns / sizeof group_columns[0]; i++) {
		char sql[160];
		int r = has_column(st, group_columns[i][0]);

		if (r != 0)
			continue; /* present, or the error was logged */
		snprintf(sql, sizeof sql, "ALTER TABLE groups ADD COLUMN %s %s", group_columns[i][0],
			 group_columns[i][1]);
		/* Another connection may have added it meanwhile. */
		if (sqlite3_exec(st->db, sql, NULL, NULL, NULL) != SQLITE_OK &&
		    has_column(st, group_columns[i][0]) != 1)
			return db_fail(st, "adding a column to the groups table");
	}
	return 0;
}

int state_open(const char *db_path, struct state **out)
{
	struct state *st = calloc(1, sizeof *st);
	int r;

	if (!st)
		return -ENOMEM;
	if (sqlite3_open_v2(db_path, &st->db,
			    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
			    NULL) != SQLITE_OK) {
		log_error("state database %s: %s", db_path,
			  st->db ? sqlite3_errmsg(st->db) : "out of memory");
		sqlite3_close(st->db);
		free(st);
		return -EIO;
	}
	sqlite3_busy_timeout(st->db, 10000);
	r = exec(st, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;");
	if (r == 0)
		r = exec(st, schema);
	if (r == 0)
		r = upgrade(st);
	if (r < 0) {
		state_close(st);
		return r;
	}
	*out = st;
	return 0;
}

void state_close(struct state *st)
{
	if (!st)
		return;
	sqlite3_close(st->db);
	free(st);
}

int state_group_get(struct state *st, const char *group, struct state_group *g)
{
	sqlite3_stmt *s;
	int rc, r;

	memset(g, 0, sizeof *g);
	r = prepare(st, "SELECT applied_segment, segment_last_lsn, applied_lsn, applied_time_ns,"
			" consistent, sync_dest, sync_begin_lsn, sync_begin_ns, sync_end_lsn,"
			" mismatch_pruned_lsn FROM groups WHERE \"group\" = ?", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		g->applied_segment = (uint64_t)sqlite3_column_int64(s, 0);
		g->segment_last_lsn = (uint64_t)sqlite3_column_int64(s, 1);
		g->applied_lsn = (uint64_t)sqlite3_column_int64(s, 2);
		g->applied_time_ns = (uint64_t)sqlite3_column_int64(s, 3);
		g->sync.consistent = sqlite3_column_int64(s, 4) != 0;
		g->sync.dest = (uint32_t)sqlite3_column_int64(s, 5);
		g->sync.begin_lsn = (uint64_t)sqlite3_column_int64(s, 6);
		g->sync.begin_ns = (uint64_t)sqlite3_column_int64(s, 7);
		g->sync.end_lsn = (uint64_t)sqlite3_column_int64(s, 8);
		g->pruned_lsn = (uint64_t)sqlite3_column_int64(s, 9);
		r = 0;
	} else {
		r = rc == SQLITE_DONE ? -ENOENT : db_fail(st, "reading a group");
	}
	sqlite3_finalize(s);
	return r;
}

int state_group_load(struct state *st, const char *group, struct state_group *g)
{
	sqlite3_stmt *s;
	int r;

	r = prepare(st, "INSERT OR IGNORE INTO groups (\"group\", updated_ns) VALUES (?, ?)", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)clock_wall_ns());
	r = run(st, s, "adding a group");
	if (r < 0)
		return r;
	r = state_group_get(st, group, g);
	return r == -ENOENT ? db_fail(st, "reading a group") : r;
}

/* Inserts mm[0..nmm) (replacing rows of the same LSN and offset: a
 * comparison made again after a crash). */
static int insert_mismatches(struct state *st, const char *group, const struct state_mismatch *mm,
			     size_t nmm)
{
	sqlite3_stmt *s;
	int r;

	if (!nmm)
		return 0;
	r = prepare(st, "INSERT OR REPLACE INTO mismatches (\"group\", lsn, image, \"offset\","
			" length, dest, image_id) VALUES (?, ?, ?, ?, ?, ?, ?)", &s);
	if (r < 0)
		return r;
	for (size_t i = 0; i < nmm; i++) {
		sqlite3_reset(s);
		sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 2, (sqlite3_int64)mm[i].lsn);
		sqlite3_bind_text(s, 3, mm[i].image, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 4, (sqlite3_int64)mm[i].offset);
		sqlite3_bind_int64(s, 5, (sqlite3_int64)mm[i].length);
		sqlite3_bind_int64(s, 6, (sqlite3_int64)mm[i].dest);
		sqlite3_bind_int64(s, 7, (sqlite3_int64)mm[i].image_id);
		if (sqlite3_step(s) != SQLITE_DONE) {
			r = db_fail(st, "recording mismatches");
			break;
		}
	}
	sqlite3_finalize(s);
	return r;
}

/* Drops the segments rows more than SEGMENTS_KEEP behind number. */
static int prune_segments(struct state *st, const char *group, uint64_t number)
{
	sqlite3_stmt *s;
	int r;

	if (number <= SEGMENTS_KEEP)
		return 0;
	r = prepare(st, "DELETE FROM segments WHERE \"group\" = ? AND number <= ?", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)(number - SEGMENTS_KEEP));
	return run(st, s, "pruning applied segments");
}

/* Drops the mismatch rows more than MISMATCHES_KEEP_LSNS behind lsn and
 * remembers the highest LSN dropped. */
static int prune_mismatches(struct state *st, const char *group, uint64_t lsn)
{
	uint64_t cutoff = lsn > MISMATCHES_KEEP_LSNS ? lsn - MISMATCHES_KEEP_LSNS : 0;
	sqlite3_stmt *s;
	int r;

	if (!cutoff)
		return 0;
	r = prepare(st, "UPDATE groups SET mismatch_pruned_lsn = max(mismatch_pruned_lsn,"
			" (SELECT coalesce(max(lsn), 0) FROM mismatches WHERE \"group\" = ?1"
			" AND lsn <= ?2)) WHERE \"group\" = ?1", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)cutoff);
	r = run(st, s, "pruning mismatches");
	if (r < 0)
		return r;
	r = prepare(st, "DELETE FROM mismatches WHERE \"group\" = ? AND lsn <= ?", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)cutoff);
	return run(st, s, "pruning mismatches");
}

struct names_insert {
	struct state *st;
	sqlite3_stmt *s;
	const char *group;
};

static int insert_name(void *ctx, uint32_t id, const char *name)
{
	struct names_insert *ni = ctx;
	int r;

	(void)id;
	sqlite3_bind_text(ni->s, 1, ni->group, -1, SQLITE_STATIC);
	sqlite3_bind_text(ni->s, 2, name, -1, SQLITE_STATIC);
	r = sqlite3_step(ni->s);
	sqlite3_reset(ni->s);
	return r == SQLITE_DONE ? 0 : db_fail(ni->st, "recording the live images");
}

/* Replaces the group's live names (inside the caller's transaction). */
static int replace_names(struct state *st, const char *group, const struct names *names)
{
	struct names_insert ni = { st, NULL, group };
	sqlite3_stmt *s;
	int r;

	r = prepare(st, "DELETE FROM names WHERE \"group\" = ?", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	r = run(st, s, "forgetting the live images");
	if (r < 0)
		return r;
	r = prepare(st, "INSERT OR IGNORE INTO names (\"group\", name) VALUES (?, ?)", &ni.s);
	if (r < 0)
		return r;
	r = names_each(names, insert_name, &ni);
	sqlite3_finalize(ni.s);
	return r;
}

int state_names_each(struct state *st, const char *group,
		     int (*fn)(void *ctx, const char *name), void *ctx)
{
	sqlite3_stmt *s;
	int r, rc;

	r = prepare(st, "SELECT name FROM names WHERE \"group\" = ?", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	r = 0;
	while (!r && (rc = sqlite3_step(s)) == SQLITE_ROW)
		r = fn(ctx, (const char *)sqlite3_column_text(s, 0));
	if (!r && rc != SQLITE_DONE)
		r = db_fail(st, "reading the live images");
	sqlite3_finalize(s);
	return r;
}

int state_progress(struct state *st, const char *group, uint64_t lsn, uint64_t time_ns,
		   const struct state_segment *done, const struct state_sync *sync,
		   const struct state_mismatch *mm, size_t nmm)
{
	uint64_t now = clock_wall_ns();
	char digest[17];
	sqlite3_stmt *s;
	int r;

	r = exec(st, "BEGIN IMMEDIATE");
	if (r < 0)
		return r;
	r = insert_mismatches(st, group, mm, nmm);
	if (r < 0)
		goto out;
	if (sync) {
		r = prepare(st, "UPDATE groups SET consistent = ?, sync_dest = ?, sync_begin_lsn = ?,"
				" sync_begin_ns = ?, sync_end_lsn = ? WHERE \"group\" = ?", &s);
		if (r < 0)
			goto out;
		sqlite3_bind_int(s, 1, sync->consistent);
		sqlite3_bind_int64(s, 2, (sqlite3_int64)sync->dest);
		sqlite3_bind_int64(s, 3, (sqlite3_int64)sync->begin_lsn);
		sqlite3_bind_int64(s, 4, (sqlite3_int64)sync->begin_ns);
		sqlite3_bind_int64(s, 5, (sqlite3_int64)sync->end_lsn);
		sqlite3_bind_text(s, 6, group, -1, SQLITE_STATIC);
		r = run(st, s, "recording the resync state");
		if (r < 0)
			goto out;
	}
	if (done) {
		r = prepare(st, "UPDATE groups SET applied_segment = ?, segment_last_lsn = ?,"
				" applied_lsn = ?, applied_time_ns = ?, updated_ns = ?"
				" WHERE \"group\" = ?", &s);
		if (r < 0)
			goto out;
		sqlite3_bind_int64(s, 1, (sqlite3_int64)done->number);
		sqlite3_bind_int64(s, 2, (sqlite3_int64)done->last_lsn);
		sqlite3_bind_int64(s, 3, (sqlite3_int64)lsn);
		sqlite3_bind_int64(s, 4, (sqlite3_int64)time_ns);
		sqlite3_bind_int64(s, 5, (sqlite3_int64)now);
		sqlite3_bind_text(s, 6, group, -1, SQLITE_STATIC);
		r = run(st, s, "recording progress");
		if (r < 0)
			goto out;
		r = prepare(st, "INSERT OR REPLACE INTO segments (\"group\", number, first_lsn,"
				" last_lsn, size, digest, applied_ns) VALUES (?, ?, ?, ?, ?, ?, ?)", &s);
		if (r < 0)
			goto out;
		snprintf(digest, sizeof digest, "%016" PRIx64, done->digest);
		sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 2, (sqlite3_int64)done->number);
		sqlite3_bind_int64(s, 3, (sqlite3_int64)done->first_lsn);
		sqlite3_bind_int64(s, 4, (sqlite3_int64)done->last_lsn);
		sqlite3_bind_int64(s, 5, (sqlite3_int64)done->size);
		sqlite3_bind_text(s, 6, digest, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 7, (sqlite3_int64)now);
		r = run(st, s, "recording an applied segment");
		if (r == 0)
			r = prune_segments(st, group, done->number);
		if (r == 0)
			r = prune_mismatches(st, group, lsn);
		if (r == 0 && done->names)
			r = replace_names(st, group, done->names);
	} else {
		r = prepare(st, "UPDATE groups SET applied_lsn = ?, applied_time_ns = ?,"
				" updated_ns = ? WHERE \"group\" = ?", &s);
		if (r < 0)
			goto out;
		sqlite3_bind_int64(s, 1, (sqlite3_int64)lsn);
		sqlite3_bind_int64(s, 2, (sqlite3_int64)time_ns);
		sqlite3_bind_int64(s, 3, (sqlite3_int64)now);
		sqlite3_bind_text(s, 4, group, -1, SQLITE_STATIC);
		r = run(st, s, "recording progress");
	}
out:
	if (r < 0) {
		exec(st, "ROLLBACK");
		return r;
	}
	return exec(st, "COMMIT");
}

int state_mismatches_add(struct state *st, const char *group, const struct state_mismatch *mm,
			 size_t nmm)
{
	int r = exec(st, "BEGIN IMMEDIATE");

	if (r < 0)
		return r;
	r = insert_mismatches(st, group, mm, nmm);
	if (r < 0) {
		exec(st, "ROLLBACK");
		return r;
	}
	return exec(st, "COMMIT");
}

int state_mismatches_forget(struct state *st, const char *group, uint64_t after)
{
	sqlite3_stmt *s;
	int r;

	r = prepare(st, "DELETE FROM mismatches WHERE \"group\" = ? AND lsn > ?", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)after);
	return run(st, s, "dropping mismatches recorded ahead of progress");
}

int state_mismatches_each(struct state *st, const char *group, uint64_t after, size_t max,
			  struct state_group *g,
			  void (*fn)(void *ctx, const struct state_mismatch *m), void *ctx,
			  bool *more)
{
	struct state_mismatch *rows = NULL;
	size_t n = 0, keep;
	sqlite3_stmt *s = NULL;
	int rc, r;

	*more = false;
	/* One read transaction: the row and the ranges agree. */
	r = exec(st, "BEGIN");
	if (r < 0)
		return r;
	r = state_group_get(st, group, g);
	if (r < 0)
		goto out;
	if (after >= g->applied_lsn)
		goto out;
	r = prepare(st, "SELECT lsn, image, \"offset\", length, dest, image_id FROM mismatches"
			" WHERE \"group\" = ? AND lsn > ? AND lsn <= ?"
			" ORDER BY lsn, \"offset\" LIMIT ?", &s);
	if (r < 0)
		goto out;
	rows = calloc(max + 1, sizeof *rows);
	if (!rows) {
		r = -ENOMEM;
		goto out;
	}
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)after);
	sqlite3_bind_int64(s, 3, (sqlite3_int64)g->applied_lsn);
	sqlite3_bind_int64(s, 4, (sqlite3_int64)max + 1);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		const char *img = (const char *)sqlite3_column_text(s, 1);

		rows[n].lsn = (uint64_t)sqlite3_column_int64(s, 0);
		rows[n].image = strdup(img ? img : "");
		rows[n].offset = (uint64_t)sqlite3_column_int64(s, 2);
		rows[n].length = (uint64_t)sqlite3_column_int64(s, 3);
		rows[n].dest = (uint32_t)sqlite3_column_int64(s, 4);
		rows[n].image_id = (uint32_t)sqlite3_column_int64(s, 5);
		if (!rows[n++].image) {
			r = -ENOMEM;
			goto out;
		}
	}
	if (rc != SQLITE_DONE) {
		r = db_fail(st, "reading mismatches");
		goto out;
	}
	keep = n;
	if (n > max) {
		/* Cut at an LSN boundary, so that the reader goes on from the
		 * last LSN it saw; one HASH record's rows never fill an answer
		 * (APPLY_MISMATCH_RUNS_MAX), but a cut inside one is better
		 * than none. */
		*more = true;
		keep = max;
		while (keep && rows[keep - 1].lsn == rows[max].lsn)
			keep--;
		if (!keep)
			keep = max;
	}
	for (size_t i = 0; i < keep; i++)
		fn(ctx, &rows[i]);
out:
	sqlite3_finalize(s);
	for (size_t i = 0; i < n; i++)
		free(rows[i].image);
	free(rows);
	exec(st, r < 0 ? "ROLLBACK" : "COMMIT");
	return r;
}

int state_group_status(struct state *st, const char *group, const char *status,
		       uint64_t waiting_for, const char *error)
{
	sqlite3_stmt *s;
	int r;

	r = prepare(st, "UPDATE groups SET status = ?, waiting_for = ?, error = ?, updated_ns = ?"
			" WHERE \"group\" = ?", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, status, -1, SQLITE_STATIC);
	if (waiting_for)
		sqlite3_bind_int64(s, 2, (sqlite3_int64)waiting_for);
	else
		sqlite3_bind_null(s, 2);
	if (error && error[0])
		sqlite3_bind_text(s, 3, error, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(s, 3);
	sqlite3_bind_int64(s, 4, (sqlite3_int64)clock_wall_ns());
	sqlite3_bind_text(s, 5, group, -1, SQLITE_STATIC);
	return run(st, s, "recording a group's status");
}

int state_segment_get(struct state *st, const char *group, uint64_t number,
		      struct state_segment *seg)
{
	sqlite3_stmt *s;
	int rc, r;

	r = prepare(st, "SELECT first_lsn, last_lsn, size, digest FROM segments"
			" WHERE \"group\" = ? AND number = ?", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)number);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		const char *d = (const char *)sqlite3_column_text(s, 3);

		seg->number = number;
		seg->first_lsn = (uint64_t)sqlite3_column_int64(s, 0);
		seg->last_lsn = (uint64_t)sqlite3_column_int64(s, 1);
		seg->size = (uint64_t)sqlite3_column_int64(s, 2);
		seg->digest = d ? strtoull(d, NULL, 16) : 0;
		seg->names = NULL;
		r = 0;
	} else if (rc == SQLITE_DONE) {
		r = -ENOENT;
	} else {
		r = db_fail(st, "reading an applied segment");
	}
	sqlite3_finalize(s);
	return r;
}

int state_quarantine_add(struct state *st, const char *group, uint64_t segment,
			 const char *reason, const char *file)
{
	sqlite3_stmt *s;
	int r;

	r = prepare(st, "INSERT INTO quarantine (\"group\", segment, reason, file, time)"
			" VALUES (?, ?, ?, ?, ?)", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)segment);
	sqlite3_bind_text(s, 3, reason, -1, SQLITE_STATIC);
	if (file)
		sqlite3_bind_text(s, 4, file, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(s, 4);
	sqlite3_bind_int64(s, 5, (sqlite3_int64)clock_wall_ns());
	return run(st, s, "recording a quarantined segment");
}

int state_quarantine_each(struct state *st, const char *group,
			  void (*fn)(void *ctx, uint64_t segment, uint64_t time_ns, const char *reason),
			  void *ctx, uint64_t *total)
{
	sqlite3_stmt *s;
	uint64_t n = 0;
	int rc, r;

	r = prepare(st, "SELECT segment, time, reason FROM quarantine WHERE \"group\" = ?"
			" ORDER BY id", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		const char *reason = (const char *)sqlite3_column_text(s, 2);

		fn(ctx, (uint64_t)sqlite3_column_int64(s, 0), (uint64_t)sqlite3_column_int64(s, 1),
		   reason ? reason : "");
		n++;
	}
	sqlite3_finalize(s);
	if (rc != SQLITE_DONE)
		return db_fail(st, "reading the quarantine");
	*total = n;
	return 0;
}

int state_groups_each(struct state *st, int (*fn)(void *ctx, const char *group), void *ctx)
{
	sqlite3_stmt *s;
	int rc, r;

	r = prepare(st, "SELECT \"group\" FROM groups ORDER BY rowid", &s);
	if (r < 0)
		return r;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		const char *g = (const char *)sqlite3_column_text(s, 0);

		if (g) {
			r = fn(ctx, g);
			if (r < 0) {
				sqlite3_finalize(s);
				return r;
			}
		}
	}
	sqlite3_finalize(s);
	if (rc != SQLITE_DONE)
		return db_fail(st, "listing groups");
	return 0;
}

/* ---- holds and promotion (failover.c) ---- */

static enum hold_kind kind_of(const char *word)
{
	static const enum hold_kind kinds[] = { HOLD_NOW, HOLD_LSN, HOLD_TIME, HOLD_MARK,
						HOLD_LAST };

	for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
		if (strcmp(word, hold_kind_name(kinds[i])) == 0)
			return kinds[i];
	return 0;
}

static enum failover_role role_of(const char *word)
{
	static const enum failover_role roles[] = { FO_REFUSED, FO_PROMOTING, FO_PROMOTED };

	for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++)
		if (strcmp(word, failover_role_name(roles[i])) == 0)
			return roles[i];
	return FO_NONE;
}

static const char *text_col(sqlite3_stmt *s, int col)
{
	const char *t = (const char *)sqlite3_column_text(s, col);

	return t ? t : "";
}

int state_hold_get(struct state *st, const char *group, struct hold *h)
{
	sqlite3_stmt *s;
	int rc, r;

	memset(h, 0, sizeof *h);
	r = prepare(st, "SELECT kind, point, set_ns, asked_lsn, reached, stop_lsn, stop_time_ns,"
			" stop_type, note, role, force, promoted_ns, promoted_consistent FROM holds"
			" WHERE \"group\" = ?", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		enum hold_kind kind = kind_of(text_col(s, 0));

		if (!kind || hold_set_point(h, kind, text_col(s, 1)) < 0) {
			/* Not one this version wrote: held where the group is,
			 * which is the safe reading. */
			log_error("state database: group %s has a hold this aim-remote cannot read"
				  " (%s %s); it is kept where the group is", group, text_col(s, 0),
				  text_col(s, 1));
			hold_set_point(h, HOLD_NOW, NULL);
		}
		h->active = true;
		h->set_ns = (uint64_t)sqlite3_column_int64(s, 2);
		h->asked_lsn = (uint64_t)sqlite3_column_int64(s, 3);
		h->reached = sqlite3_column_int64(s, 4) != 0;
		h->stop_lsn = (uint64_t)sqlite3_column_int64(s, 5);
		h->stop_time_ns = (uint64_t)sqlite3_column_int64(s, 6);
		h->stop_type = (uint8_t)sqlite3_column_int64(s, 7);
		snprintf(h->note, sizeof h->note, "%s", text_col(s, 8));
		h->role = role_of(text_col(s, 9));
		h->force = sqlite3_column_int64(s, 10) != 0;
		h->promoted_ns = (uint64_t)sqlite3_column_int64(s, 11);
		h->promoted_consistent = sqlite3_column_int64(s, 12) != 0;
		r = 0;
	} else {
		r = rc == SQLITE_DONE ? 0 : db_fail(st, "reading a hold");
	}
	sqlite3_finalize(s);
	return r;
}

int state_hold_put(struct state *st, const char *group, const struct hold *h)
{
	sqlite3_stmt *s;
	int r;

	if (!h->active) {
		r = prepare(st, "DELETE FROM holds WHERE \"group\" = ?", &s);
		if (r < 0)
			return r;
		sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
		return run(st, s, "forgetting a hold");
	}
	r = prepare(st, "INSERT OR REPLACE INTO holds (\"group\", kind, point, set_ns, asked_lsn,"
			" reached, stop_lsn, stop_time_ns, stop_type, note, role, force, promoted_ns,"
			" promoted_consistent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, hold_kind_name(h->kind), -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 3, h->pt.text, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 4, (sqlite3_int64)h->set_ns);
	sqlite3_bind_int64(s, 5, (sqlite3_int64)h->asked_lsn);
	sqlite3_bind_int(s, 6, h->reached);
	sqlite3_bind_int64(s, 7, (sqlite3_int64)h->stop_lsn);
	sqlite3_bind_int64(s, 8, (sqlite3_int64)h->stop_time_ns);
	sqlite3_bind_int(s, 9, h->stop_type);
	sqlite3_bind_text(s, 10, h->note, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 11, failover_role_name(h->role), -1, SQLITE_STATIC);
	sqlite3_bind_int(s, 12, h->force);
	sqlite3_bind_int64(s, 13, (sqlite3_int64)h->promoted_ns);
	sqlite3_bind_int(s, 14, h->promoted_consistent);
	return run(st, s, "recording a hold");
}

int state_role(struct state *st, const char *group, enum failover_role *role,
	       uint64_t *promoted_ns, uint64_t *lsn)
{
	sqlite3_stmt *s;
	int rc, r;

	*role = FO_NONE;
	*promoted_ns = *lsn = 0;
	r = prepare(st, "SELECT role, promoted_ns, stop_lsn FROM holds WHERE \"group\" = ?", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*role = role_of(text_col(s, 0));
		*promoted_ns = (uint64_t)sqlite3_column_int64(s, 1);
		*lsn = (uint64_t)sqlite3_column_int64(s, 2);
	}
	sqlite3_finalize(s);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : db_fail(st, "reading a group's role");
}

int state_marks_add(struct state *st, const char *group, const struct state_mark *marks,
		    size_t n)
{
	sqlite3_stmt *s = NULL;
	int r;

	if (!n)
		return 0;
	r = exec(st, "BEGIN IMMEDIATE");
	if (r < 0)
		return r;
	r = prepare(st, "INSERT OR REPLACE INTO marks (\"group\", lsn, name, time_ns)"
			" VALUES (?, ?, ?, ?)", &s);
	for (size_t i = 0; r == 0 && i < n; i++) {
		sqlite3_reset(s);
		sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 2, (sqlite3_int64)marks[i].lsn);
		sqlite3_bind_text(s, 3, marks[i].name, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 4, (sqlite3_int64)marks[i].time_ns);
		if (sqlite3_step(s) != SQLITE_DONE)
			r = db_fail(st, "recording marks");
	}
	sqlite3_finalize(s); /* NULL if prepare failed */
	if (r < 0) {
		exec(st, "ROLLBACK");
		return r;
	}
	return exec(st, "COMMIT");
}

int state_mark_get(struct state *st, const char *group, const char *name, uint64_t *lsn)
{
	sqlite3_stmt *s;
	int rc, r;

	r = prepare(st, "SELECT min(lsn) FROM marks WHERE \"group\" = ? AND name = ?", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, name, -1, SQLITE_STATIC);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL) {
		*lsn = (uint64_t)sqlite3_column_int64(s, 0);
		r = 0;
	} else {
		r = rc == SQLITE_ROW || rc == SQLITE_DONE ? -ENOENT : db_fail(st, "reading a mark");
	}
	sqlite3_finalize(s);
	return r;
}
