/*
 * state.c — aim-remote's SQLite state, STATE_DIR/remote.db (WAL mode,
 * synchronous=FULL): per group, how far the targets are durable; every
 * whole segment applied (so that a segment sent again after its file was
 * deleted can be told identical or different); the segments put aside.
 *
 *   groups(group, applied_segment, segment_last_lsn, applied_lsn,
 *          applied_time_ns, updated_ns, status, waiting_for, error)
 *   segments(group, number, first_lsn, last_lsn, size, digest, applied_ns)
 *   quarantine(id, group, segment, reason, file, time)
 *
 * Progress is written only after the applier has made the targets
 * durable (its durable callback), so the row never claims more than the
 * targets hold.  applied_lsn may run ahead of segment_last_lsn: the targets
 * are durable part-way into segment applied_segment + 1, and a restart
 * resumes there.  Times are nanoseconds since the epoch; digests are the
 * segment trailer's check, in hex.
 *
 * Thread safety: a struct state is one connection and belongs to one
 * thread at a time (the receiver guards its own with a mutex).
 */
#include "remote_i.h"
#include "log.h"

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
	" error TEXT);"
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
	"CREATE INDEX IF NOT EXISTS quarantine_group ON quarantine (\"group\", id);";

static int db_fail(struct state *st, const char *what)
{
	log_error("state database: %s: %s", what, sqlite3_errmsg(st->db));
	return -EIO;
}

static int exec(struct state *st, const char *sql)
{
	char *msg = NULL;

	if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		log_error("state database: %s", msg ? msg : sqlite3_errmsg(st->db));
		sqlite3_free(msg);
		return -EIO;
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
	r = prepare(st, "SELECT applied_segment, segment_last_lsn, applied_lsn, applied_time_ns"
			" FROM groups WHERE \"group\" = ?", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		g->applied_segment = (uint64_t)sqlite3_column_int64(s, 0);
		g->segment_last_lsn = (uint64_t)sqlite3_column_int64(s, 1);
		g->applied_lsn = (uint64_t)sqlite3_column_int64(s, 2);
		g->applied_time_ns = (uint64_t)sqlite3_column_int64(s, 3);
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
	sqlite3_bind_int64(s, 2, (sqlite3_int64)remote_now_ns());
	r = run(st, s, "adding a group");
	if (r < 0)
		return r;
	r = state_group_get(st, group, g);
	return r == -ENOENT ? db_fail(st, "reading a group") : r;
}

int state_progress(struct state *st, const char *group, uint64_t lsn, uint64_t time_ns,
		   const struct state_segment *done)
{
	uint64_t now = remote_now_ns();
	char digest[17];
	sqlite3_stmt *s;
	int r;

	r = exec(st, "BEGIN IMMEDIATE");
	if (r < 0)
		return r;
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
	sqlite3_bind_int64(s, 4, (sqlite3_int64)remote_now_ns());
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
	sqlite3_bind_int64(s, 5, (sqlite3_int64)remote_now_ns());
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
