/*
 * catalog.c — SQLite schema and statements of the journal catalog.
 *
 * The catalog is derived data: everything in it except destinations'
 * acknowledgements and dirty extents can be rebuilt from the segments still
 * on disk, which is what recovery does for segments sealed but not yet
 * indexed when the daemon died.  synchronous=NORMAL in WAL mode is therefore
 * enough: a lost last transaction is re-derived at the next mount.  The
 * exceptions are made durable before anything depends on them: dirty
 * extents before the segments they stand for are deleted
 * (catalog_make_durable syncs the write-ahead log, transport/transport.c).
 */
#include "catalog.h"
#include "fileio.h"
#include "format.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char schema[] =
	"PRAGMA journal_mode=WAL;"
	"PRAGMA synchronous=NORMAL;"
	"PRAGMA foreign_keys=ON;"
	"CREATE TABLE IF NOT EXISTS meta("
	"  key TEXT PRIMARY KEY, value TEXT NOT NULL);"
	"CREATE TABLE IF NOT EXISTS images("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL,"
	"  live INTEGER NOT NULL DEFAULT 1,"
	"  created_lsn INTEGER,"           /* NULL: existed when first seen */
	"  removed_lsn INTEGER,"
	"  ino INTEGER NOT NULL DEFAULT 0,"  /* source inode, for crash recovery */
	"  born_ns INTEGER NOT NULL DEFAULT 0," /* its birth time when last seen, 0: unknown */
	"  closed_ctime_ns INTEGER NOT NULL DEFAULT 0);" /* its ctime at the last unmount, 0: unknown */
	"CREATE TABLE IF NOT EXISTS dirs("
	"  name TEXT PRIMARY KEY);"        /* directories of the backing tree */
	"CREATE INDEX IF NOT EXISTS images_by_name ON images(name) WHERE live;"
	"CREATE TABLE IF NOT EXISTS segments("
	"  number INTEGER PRIMARY KEY,"
	"  first_lsn INTEGER NOT NULL,"
	"  last_lsn INTEGER NOT NULL,"
	"  records INTEGER NOT NULL,"
	"  bytes INTEGER NOT NULL,"
	"  digest TEXT NOT NULL,"          /* trailer check, 16 hex digits */
	"  created_ns INTEGER NOT NULL,"
	"  sealed_ns INTEGER NOT NULL,"
	"  state TEXT NOT NULL DEFAULT 'sealed');"
	"CREATE TABLE IF NOT EXISTS writes("
	"  lsn INTEGER PRIMARY KEY,"
	"  image INTEGER NOT NULL,"
	"  kind TEXT NOT NULL,"            /* write, zero, punch, truncate, alloc */
	"  offset INTEGER NOT NULL,"
	"  length INTEGER NOT NULL,"       /* truncate: 0, offset is the new size */
	"  segment INTEGER NOT NULL,"
	"  position INTEGER NOT NULL,"     /* byte offset of the record in the segment */
	"  time_ns INTEGER NOT NULL);"
	"CREATE INDEX IF NOT EXISTS writes_by_image ON writes(image, offset);"
	"CREATE INDEX IF NOT EXISTS writes_by_time ON writes(time_ns);"
	"CREATE INDEX IF NOT EXISTS writes_by_segment ON writes(segment);"
	"CREATE TABLE IF NOT EXISTS marks("
	"  name TEXT NOT NULL, lsn INTEGER PRIMARY KEY, time_ns INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS destinations("
	"  name TEXT PRIMARY KEY,"
	"  url TEXT NOT NULL,"
	"  acked_segment INTEGER NOT NULL DEFAULT 0,"
	"  acked_lsn INTEGER NOT NULL DEFAULT 0,"
	"  acked_ns INTEGER NOT NULL DEFAULT 0,"
	"  dest_lsn INTEGER NOT NULL DEFAULT 0,"  /* last LSN in its own sequence */
	"  last_error TEXT,"
	"  number INTEGER UNIQUE,"              /* tags its resync records */
	"  sync_state TEXT NOT NULL DEFAULT 'new',"  /* new, syncing, tracking, in_sync */
	"  sync_phase TEXT NOT NULL DEFAULT '',"
	"  sync_reason TEXT NOT NULL DEFAULT '',"
	"  sync_total INTEGER NOT NULL DEFAULT 0,"
	"  sync_done INTEGER NOT NULL DEFAULT 0,"
	"  sync_saved INTEGER NOT NULL DEFAULT 0,"
	"  sync_lsn_a INTEGER NOT NULL DEFAULT 0,"
	"  sync_lsn_b INTEGER NOT NULL DEFAULT 0,"
	"  sync_started_ns INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE IF NOT EXISTS shipments("
	"  destination TEXT NOT NULL, segment INTEGER NOT NULL,"
	"  bytes INTEGER NOT NULL, acked_ns INTEGER NOT NULL,"
	"  dest_first_lsn INTEGER NOT NULL, dest_last_lsn INTEGER NOT NULL,"
	"  PRIMARY KEY(destination, segment));"
	"CREATE TABLE IF NOT EXISTS dirty_extents("
	"  destination TEXT NOT NULL, image INTEGER NOT NULL,"
	"  offset INTEGER NOT NULL, length INTEGER NOT NULL,"
	"  hash INTEGER NOT NULL DEFAULT 1,"   /* compare before sending data */
	"  PRIMARY KEY(destination, image, offset));"
	/* dirty extents hashed in the current pass whose comparison the remote
	 * has not reported yet: dirty again if the pass is abandoned */
	"CREATE TABLE IF NOT EXISTS hashed_extents("
	"  destination TEXT NOT NULL, image INTEGER NOT NULL,"
	"  offset INTEGER NOT NULL, length INTEGER NOT NULL,"
	"  PRIMARY KEY(destination, image, offset));";

struct catalog {
	sqlite3 *db;
	char *path;
	sqlite3_stmt *ins_write, *ins_image, *upd_image_name, *del_image;
};

static int db_fail(struct catalog *c, const char *what)
{
	log_error("catalog %s: %s: %s", c->path, what, sqlite3_errmsg(c->db));
	return -EIO;
}

static int prepare(struct catalog *c, const char *sql, sqlite3_stmt **st)
{
	if (sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL) != SQLITE_OK)
		return db_fail(c, "prepare");
	return 0;
}

/* True if table has column (PRAGMA table_info). */
static bool has_column(struct catalog *c, const char *table, const char *column)
{
	sqlite3_stmt *st;
	char sql[128];
	bool found = false;

	snprintf(sql, sizeof sql, "PRAGMA table_info(%s)", table);
	if (sqlite3_prepare_v2(c->db, sql, -1, &st, NULL))
		return false;
	while (!found && sqlite3_step(st) == SQLITE_ROW)
		found = strcmp((const char *)sqlite3_column_text(st, 1), column) == 0;
	sqlite3_finalize(st);
	return found;
}

/* Columns added after a catalog may have been made: CREATE TABLE IF NOT
 * EXISTS leaves an old table as it was. */
static int migrate(struct catalog *c)
{
	if (!has_column(c, "images", "born_ns") &&
	    sqlite3_exec(c->db, "ALTER TABLE images ADD COLUMN born_ns INTEGER NOT NULL DEFAULT 0",
			 NULL, NULL, NULL) != SQLITE_OK)
		return db_fail(c, "adding images.born_ns");
	if (!has_column(c, "images", "closed_ctime_ns") &&
	    sqlite3_exec(c->db, "ALTER TABLE images ADD COLUMN closed_ctime_ns INTEGER NOT NULL"
			 " DEFAULT 0", NULL, NULL, NULL) != SQLITE_OK)
		return db_fail(c, "adding images.closed_ctime_ns");
	if (!has_column(c, "destinations", "sync_reason") &&
	    sqlite3_exec(c->db, "ALTER TABLE destinations ADD COLUMN"
			 " sync_reason TEXT NOT NULL DEFAULT ''", NULL, NULL, NULL) != SQLITE_OK)
		return db_fail(c, "adding destinations.sync_reason");
	/* A mark's name names one point of the group (aimctl replay --until
	 * MARK:NAME).  aimfs refuses a name in use before it journals it; the
	 * index makes the catalog say so too. */
	if (sqlite3_exec(c->db, "CREATE UNIQUE INDEX IF NOT EXISTS marks_by_name ON marks(name)",
			 NULL, NULL, NULL) != SQLITE_OK)
		log_warn("catalog %s: mark names are not unique (%s); they are kept as they are",
			 c->path, sqlite3_errmsg(c->db));
	return 0;
}

int catalog_open(const char *path, struct catalog **out)
{
	struct catalog *c = calloc(1, sizeof *c);
	char *errmsg = NULL;
	int r;

	if (!c)
		return -ENOMEM;
	c->path = strdup(path);
	if (!c->path) {
		free(c);
		return -ENOMEM;
	}
	if (sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
			    SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
		r = db_fail(c, "open");
		catalog_close(c);
		return r;
	}
	sqlite3_busy_timeout(c->db, 10000);
	if (sqlite3_exec(c->db, schema, NULL, NULL, &errmsg) != SQLITE_OK) {
		log_error("catalog %s: schema: %s", path, errmsg ? errmsg : "?");
		sqlite3_free(errmsg);
		catalog_close(c);
		return -EIO;
	}
	r = migrate(c);
	if (r < 0) {
		catalog_close(c);
		return r;
	}
	r = prepare(c, "INSERT OR REPLACE INTO writes(lsn, image, kind, offset, length, segment,"
		       " position, time_ns) VALUES(?,?,?,?,?,?,?,?)", &c->ins_write);
	if (!r)
		r = prepare(c, "INSERT OR REPLACE INTO images(id, name, live, created_lsn, ino)"
			       " VALUES(?,?,1,?,?)", &c->ins_image);
	if (!r)
		r = prepare(c, "UPDATE images SET name = ? WHERE id = ?", &c->upd_image_name);
	if (!r)
		r = prepare(c, "UPDATE images SET live = 0, removed_lsn = ? WHERE id = ?",
			    &c->del_image);
	if (r) {
		catalog_close(c);
		return r;
	}
	*out = c;
	return 0;
}

void catalog_close(struct catalog *c)
{
	if (!c)
		return;
	sqlite3_finalize(c->ins_write);
	sqlite3_finalize(c->ins_image);
	sqlite3_finalize(c->upd_image_name);
	sqlite3_finalize(c->del_image);
	sqlite3_close(c->db);
	free(c->path);
	free(c);
}

static int exec(struct catalog *c, const char *sql)
{
	if (sqlite3_exec(c->db, sql, NULL, NULL, NULL) != SQLITE_OK)
		return db_fail(c, sql);
	return 0;
}

int catalog_begin(struct catalog *c) { return exec(c, "BEGIN IMMEDIATE"); }
int catalog_commit(struct catalog *c) { return exec(c, "COMMIT"); }
int catalog_rollback(struct catalog *c) { return exec(c, "ROLLBACK"); }

int catalog_make_durable(struct catalog *c)
{
	const char *wal = sqlite3_filename_wal(sqlite3_db_filename(c->db, "main"));
	int busy = 0, fd, r;

	/*
	 * The write-ahead log holds every commit (synchronous=NORMAL writes
	 * it, only without syncing it): syncing the file is what
	 * synchronous=FULL does at each commit.  A checkpoint would sync it
	 * too, but waits for every other reader and writer of the catalog
	 * (up to the busy timeout, on a shipping worker) and under load gave
	 * up with "database is locked".
	 */
	fd = wal ? open(wal, O_RDONLY | O_CLOEXEC) : -1;
	if (fd >= 0) {
		r = fdatasync(fd) < 0 ? -errno : 0;
		close(fd);
		if (r == 0) /* its name, should this be its first sync */
			r = fileio_fsync_dir_of(wal, NULL);
		if (r < 0)
			log_error("catalog %s: cannot sync its write-ahead log: %s", c->path,
				  strerror(-r));
		return r;
	}
	/* No log file: a checkpoint syncs what there is.  (busy: another
	 * connection's reader held part of the log back; the log itself,
	 * holding this connection's commits, is synced anyway.) */
	if (sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_FULL, NULL, &busy) != SQLITE_OK)
		return db_fail(c, "checkpoint");
	return 0;
}

int catalog_meta_get(struct catalog *c, const char *key, char *buf, unsigned buflen)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, "SELECT value FROM meta WHERE key = ?", -1, &st, NULL))
		return db_fail(c, "meta get");
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	r = sqlite3_step(st);
	if (r == SQLITE_ROW) {
		snprintf(buf, buflen, "%s", (const char *)sqlite3_column_text(st, 0));
		r = 0;
	} else if (r == SQLITE_DONE) {
		r = -ENOENT;
	} else {
		r = db_fail(c, "meta get");
	}
	sqlite3_finalize(st);
	return r;
}

int catalog_meta_set(struct catalog *c, const char *key, const char *value)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, "INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)",
			       -1, &st, NULL))
		return db_fail(c, "meta set");
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
	r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "meta set");
	sqlite3_finalize(st);
	return r;
}

int catalog_has_segment(struct catalog *c, uint64_t n, bool *has)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, "SELECT 1 FROM segments WHERE number = ?", -1, &st, NULL))
		return db_fail(c, "segment lookup");
	sqlite3_bind_int64(st, 1, (sqlite3_int64)n);
	r = sqlite3_step(st);
	*has = r == SQLITE_ROW;
	r = (r == SQLITE_ROW || r == SQLITE_DONE) ? 0 : db_fail(c, "segment lookup");
	sqlite3_finalize(st);
	return r;
}

int catalog_last_segment(struct catalog *c, uint64_t *number, uint64_t *last_lsn)
{
	sqlite3_stmt *st;
	int r;

	*number = *last_lsn = 0;
	if (sqlite3_prepare_v2(c->db, "SELECT number, last_lsn FROM segments"
				      " ORDER BY number DESC LIMIT 1", -1, &st, NULL))
		return db_fail(c, "last segment");
	r = sqlite3_step(st);
	if (r == SQLITE_ROW) {
		*number = (uint64_t)sqlite3_column_int64(st, 0);
		*last_lsn = (uint64_t)sqlite3_column_int64(st, 1);
	}
	r = (r == SQLITE_ROW || r == SQLITE_DONE) ? 0 : db_fail(c, "last segment");
	sqlite3_finalize(st);
	return r;
}

static int step_reset(struct catalog *c, sqlite3_stmt *st, const char *what)
{
	int r = sqlite3_step(st);

	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return r == SQLITE_DONE ? 0 : db_fail(c, what);
}

static int image_bind(struct catalog *c, uint32_t id, const char *name, size_t len,
		      uint64_t lsn, uint64_t ino)
{
	sqlite3_bind_int64(c->ins_image, 1, id);
	sqlite3_bind_text(c->ins_image, 2, name, (int)len, SQLITE_TRANSIENT);
	sqlite3_bind_int64(c->ins_image, 3, (sqlite3_int64)lsn);
	sqlite3_bind_int64(c->ins_image, 4, (sqlite3_int64)ino);
	return step_reset(c, c->ins_image, "image insert");
}

static int exec_text(struct catalog *c, const char *sql, const char *a, const char *b)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, sql, -1, &st, NULL))
		return db_fail(c, sql);
	sqlite3_bind_text(st, 1, a, -1, SQLITE_STATIC);
	if (b)
		sqlite3_bind_text(st, 2, b, -1, SQLITE_STATIC);
	r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, sql);
	sqlite3_finalize(st);
	return r;
}

static int image_rename(struct catalog *c, uint32_t id, const char *name)
{
	sqlite3_bind_text(c->upd_image_name, 1, name, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(c->upd_image_name, 2, id);
	return step_reset(c, c->upd_image_name, "image rename");
}

static int image_remove(struct catalog *c, uint32_t id, uint64_t lsn)
{
	sqlite3_bind_int64(c->del_image, 1, (sqlite3_int64)lsn);
	sqlite3_bind_int64(c->del_image, 2, id);
	return step_reset(c, c->del_image, "image remove");
}

/* Directory renames change the names of every image below; do it in SQL. */
static int image_rename_dir(struct catalog *c, const char *old_dir, const char *new_dir)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db,
			       "UPDATE images SET name = ?2 || substr(name, length(?1) + 1)"
			       " WHERE live AND substr(name, 1, length(?1) + 1) = ?1 || '/'",
			       -1, &st, NULL))
		return db_fail(c, "dir rename");
	sqlite3_bind_text(st, 1, old_dir, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, new_dir, -1, SQLITE_STATIC);
	r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "dir rename");
	sqlite3_finalize(st);
	if (r == 0)
		r = exec_text(c, "UPDATE dirs SET name = ?2 || substr(name, length(?1) + 1)"
				 " WHERE name = ?1 OR substr(name, 1, length(?1) + 1) = ?1 || '/'",
			      old_dir, new_dir);
	return r;
}

static const char *write_kind(const struct seg_record *r)
{
	switch (r->type) {
	case SEG_WRITE: return "write";
	case SEG_ZERO: return (r->flags & SEG_F_PUNCH) ? "punch" : "zero";
	case SEG_TRUNCATE: return "truncate";
	case SEG_ALLOC: return "alloc";
	default: return NULL;
	}
}

/*
 * A MARK record.  Indexing a segment again finds its marks there already
 * (same LSN): nothing to do.  A name that another LSN holds (a segment
 * not written by aimfs, which refuses such names) keeps its first point;
 * the later MARK stays in the segment, but the catalog does not name it.
 */
static int index_mark(struct catalog *c, const struct seg_record *r)
{
	struct catalog_mark m;
	char name[SEG_MARK_MAX + 1];
	sqlite3_stmt *st;
	int ret;

	snprintf(name, sizeof name, "%.*s", (int)r->payload_len, (const char *)r->payload);
	ret = catalog_mark_find(c, name, &m);
	if (ret == 0) {
		if (m.lsn != r->lsn)
			log_warn("catalog %s: MARK \"%s\" at LSN %" PRIu64 " reuses the name of the"
				 " mark at LSN %" PRIu64 "; the catalog keeps the first", c->path,
				 name, r->lsn, m.lsn);
		return 0;
	}
	if (ret != -ENOENT)
		return ret;
	if (sqlite3_prepare_v2(c->db, "INSERT OR IGNORE INTO marks(name, lsn, time_ns)"
				      " VALUES(?, ?, ?)", -1, &st, NULL))
		return db_fail(c, "mark");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)r->lsn);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)r->time_ns);
	ret = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "mark");
	sqlite3_finalize(st);
	return ret;
}

static int index_record(struct catalog *c, const struct seg_record *r, uint64_t segment)
{
	const char *kind = write_kind(r);
	char a[SEG_NAME_MAX + 1], b[SEG_NAME_MAX + 1];
	sqlite3_stmt *st;
	int ret;

	if (kind) {
		sqlite3_bind_int64(c->ins_write, 1, (sqlite3_int64)r->lsn);
		sqlite3_bind_int64(c->ins_write, 2, r->image);
		sqlite3_bind_text(c->ins_write, 3, kind, -1, SQLITE_STATIC);
		sqlite3_bind_int64(c->ins_write, 4, (sqlite3_int64)r->offset);
		sqlite3_bind_int64(c->ins_write, 5, (sqlite3_int64)r->length);
		sqlite3_bind_int64(c->ins_write, 6, (sqlite3_int64)segment);
		sqlite3_bind_int64(c->ins_write, 7, (sqlite3_int64)r->file_offset);
		sqlite3_bind_int64(c->ins_write, 8, (sqlite3_int64)r->time_ns);
		return step_reset(c, c->ins_write, "write insert");
	}
	switch (r->type) {
	case SEG_CREATE:
		return image_bind(c, r->image, r->payload, r->payload_len, r->lsn, r->offset);
	case SEG_MKDIR:
		seg_record_name(r, a);
		return exec_text(c, "INSERT OR IGNORE INTO dirs(name) VALUES(?)", a, NULL);
	case SEG_RMDIR:
		seg_record_name(r, a);
		return exec_text(c, "DELETE FROM dirs WHERE name = ?", a, NULL);
	case SEG_UNLINK:
		return image_remove(c, r->image, r->lsn);
	case SEG_RENAME:
		seg_rename_names(r, a, b);
		if (r->flags & SEG_F_DIR)
			return image_rename_dir(c, a, b);
		/* An image that held the new name is gone. */
		if (sqlite3_prepare_v2(c->db, "UPDATE images SET live = 0, removed_lsn = ?"
					      " WHERE live AND name = ? AND id != ?", -1, &st, NULL))
			return db_fail(c, "rename replace");
		sqlite3_bind_int64(st, 1, (sqlite3_int64)r->lsn);
		sqlite3_bind_text(st, 2, b, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, r->image);
		ret = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "rename replace");
		sqlite3_finalize(st);
		return ret ? ret : image_rename(c, r->image, b);
	case SEG_MARK:
		return index_mark(c, r);
	default:
		return 0;
	}
}

/* Images in the header table that the catalog does not know yet (the
 * images that existed when the group was created). */
static int index_header_images(struct catalog *c, const struct seg_header *h)
{
	sqlite3_stmt *st;
	int r = 0;

	if (sqlite3_prepare_v2(c->db, "INSERT OR IGNORE INTO images(id, name, live)"
				      " VALUES(?, ?, 1)", -1, &st, NULL))
		return db_fail(c, "header images");
	for (uint32_t i = 0; i < h->image_count && !r; i++) {
		sqlite3_bind_int64(st, 1, h->images[i].id);
		sqlite3_bind_text(st, 2, h->images[i].name, h->images[i].name_len, SQLITE_STATIC);
		r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "header images");
		sqlite3_reset(st);
	}
	sqlite3_finalize(st);
	return r;
}

int catalog_index_segment(struct catalog *c, struct seg_view *v, uint64_t file_bytes)
{
	const struct seg_header *h = seg_view_header(v);
	const struct seg_trailer *t = seg_view_trailer(v);
	struct seg_record rec;
	sqlite3_stmt *st;
	char digest[17];
	bool has;
	int r;

	if (!t)
		return -EINVAL;
	r = catalog_has_segment(c, h->number, &has);
	if (r < 0 || has)
		return r;
	r = catalog_begin(c);
	if (r < 0)
		return r;
	r = index_header_images(c, h);
	seg_view_rewind(v);
	while (!r && seg_view_next(v, &rec) == 1)
		r = index_record(c, &rec, h->number);
	if (!r) {
		snprintf(digest, sizeof digest, "%016" PRIx64, seg_view_digest(v));
		if (sqlite3_prepare_v2(c->db, "INSERT INTO segments(number, first_lsn, last_lsn,"
					      " records, bytes, digest, created_ns, sealed_ns)"
					      " VALUES(?,?,?,?,?,?,?,?)", -1, &st, NULL)) {
			r = db_fail(c, "segment insert");
		} else {
			sqlite3_bind_int64(st, 1, (sqlite3_int64)h->number);
			sqlite3_bind_int64(st, 2, (sqlite3_int64)h->first_lsn);
			sqlite3_bind_int64(st, 3, (sqlite3_int64)t->last_lsn);
			sqlite3_bind_int64(st, 4, (sqlite3_int64)t->count);
			sqlite3_bind_int64(st, 5, (sqlite3_int64)file_bytes);
			sqlite3_bind_text(st, 6, digest, -1, SQLITE_STATIC);
			sqlite3_bind_int64(st, 7, (sqlite3_int64)h->created_ns);
			sqlite3_bind_int64(st, 8, (sqlite3_int64)t->sealed_ns);
			r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "segment insert");
			sqlite3_finalize(st);
		}
	}
	seg_view_rewind(v);
	if (r) {
		catalog_rollback(c);
		return r;
	}
	return catalog_commit(c);
}

int catalog_images_each(struct catalog *c,
			int (*fn)(void *ctx, uint32_t id, const char *name, uint64_t ino,
				  uint64_t born_ns, uint64_t closed_ctime_ns),
			void *ctx)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, "SELECT id, name, ino, born_ns, closed_ctime_ns FROM images"
				      " WHERE live"
				      " ORDER BY id", -1, &st, NULL))
		return db_fail(c, "images");
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		int k = fn(ctx, (uint32_t)sqlite3_column_int64(st, 0),
			   (const char *)sqlite3_column_text(st, 1),
			   (uint64_t)sqlite3_column_int64(st, 2),
			   (uint64_t)sqlite3_column_int64(st, 3),
			   (uint64_t)sqlite3_column_int64(st, 4));
		if (k) {
			sqlite3_finalize(st);
			return k;
		}
	}
	r = r == SQLITE_DONE ? 0 : db_fail(c, "images");
	sqlite3_finalize(st);
	return r;
}

int catalog_image_add(struct catalog *c, uint32_t id, const char *name, uint64_t ino)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, "INSERT OR IGNORE INTO images(id, name, live, ino)"
				      " VALUES(?, ?, 1, ?)", -1, &st, NULL))
		return db_fail(c, "image add");
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)ino);
	r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "image add");
	sqlite3_finalize(st);
	return r;
}

int catalog_image_note(struct catalog *c, uint32_t id, uint64_t ino, uint64_t born_ns,
		       uint64_t closed_ctime_ns)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, "UPDATE images SET"
				      " born_ns = CASE WHEN ?3 THEN ?3 ELSE born_ns END,"
				      " closed_ctime_ns = CASE WHEN ?4 THEN ?4 ELSE closed_ctime_ns END"
				      " WHERE id = ?1 AND ino = ?2", -1, &st, NULL))
		return db_fail(c, "image note");
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)ino);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)born_ns);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)closed_ctime_ns);
	r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "image note");
	sqlite3_finalize(st);
	return r;
}

int catalog_dir_add(struct catalog *c, const char *name)
{
	return exec_text(c, "INSERT OR IGNORE INTO dirs(name) VALUES(?)", name, NULL);
}

int catalog_dirs_each(struct catalog *c, int (*fn)(void *ctx, const char *name), void *ctx)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, "SELECT name FROM dirs ORDER BY name", -1, &st, NULL))
		return db_fail(c, "dirs");
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		int k = fn(ctx, (const char *)sqlite3_column_text(st, 0));

		if (k) {
			sqlite3_finalize(st);
			return k;
		}
	}
	r = r == SQLITE_DONE ? 0 : db_fail(c, "dirs");
	sqlite3_finalize(st);
	return r;
}

int catalog_max_image_id(struct catalog *c, uint32_t *id)
{
	sqlite3_stmt *st;
	int r;

	*id = 0;
	if (sqlite3_prepare_v2(c->db, "SELECT coalesce(max(id), 0) FROM images", -1, &st, NULL))
		return db_fail(c, "max image");
	r = sqlite3_step(st);
	if (r == SQLITE_ROW)
		*id = (uint32_t)sqlite3_column_int64(st, 0);
	r = r == SQLITE_ROW ? 0 : db_fail(c, "max image");
	sqlite3_finalize(st);
	return r;
}

int catalog_segment_is_pruned(struct catalog *c, uint64_t n, bool *pruned)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, "SELECT 1 FROM segments WHERE number = ? AND state = 'pruned'",
			       -1, &st, NULL))
		return db_fail(c, "segment state");
	sqlite3_bind_int64(st, 1, (sqlite3_int64)n);
	r = sqlite3_step(st);
	*pruned = r == SQLITE_ROW;
	r = (r == SQLITE_ROW || r == SQLITE_DONE) ? 0 : db_fail(c, "segment state");
	sqlite3_finalize(st);
	return r;
}

int catalog_segment_set_state(struct catalog *c, uint64_t n, const char *state)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, "UPDATE segments SET state = ? WHERE number = ?",
			       -1, &st, NULL))
		return db_fail(c, "segment state");
	sqlite3_bind_text(st, 1, state, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)n);
	r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "segment state");
	sqlite3_finalize(st);
	return r;
}

/* ---- destinations ---- */

int catalog_dest_register(struct catalog *c, const char *name, const char *url,
			  uint64_t start_segment)
{
	sqlite3_stmt *st;
	int r;

	/* A new destination starts after what is durable now: everything older
	 * reaches it through its initial sync. */
	if (sqlite3_prepare_v2(c->db, "INSERT INTO destinations(name, url, acked_segment, number)"
				      " VALUES(?1, ?2, ?3, (SELECT coalesce(max(number), 0) + 1"
				      " FROM destinations))"
				      " ON CONFLICT(name) DO UPDATE SET url = ?2", -1, &st, NULL))
		return db_fail(c, "destination register");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, url, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)start_segment);
	r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "destination register");
	sqlite3_finalize(st);
	return r;
}

int catalog_dest_sync_load(struct catalog *c, const char *name, struct catalog_sync *y)
{
	sqlite3_stmt *st;
	int r;

	memset(y, 0, sizeof *y);
	if (sqlite3_prepare_v2(c->db, "SELECT number, sync_state, sync_phase, sync_total, sync_done,"
				      " sync_saved, sync_lsn_a, sync_lsn_b, sync_started_ns,"
				      " sync_reason FROM destinations WHERE name = ?", -1, &st, NULL))
		return db_fail(c, "sync load");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	r = sqlite3_step(st);
	if (r == SQLITE_ROW) {
		y->number = (uint32_t)sqlite3_column_int64(st, 0);
		snprintf(y->state, sizeof y->state, "%s", (const char *)sqlite3_column_text(st, 1));
		snprintf(y->phase, sizeof y->phase, "%s", (const char *)sqlite3_column_text(st, 2));
		y->total = (uint64_t)sqlite3_column_int64(st, 3);
		y->done = (uint64_t)sqlite3_column_int64(st, 4);
		y->saved = (uint64_t)sqlite3_column_int64(st, 5);
		y->lsn_a = (uint64_t)sqlite3_column_int64(st, 6);
		y->lsn_b = (uint64_t)sqlite3_column_int64(st, 7);
		y->started_ns = (uint64_t)sqlite3_column_int64(st, 8);
		snprintf(y->reason, sizeof y->reason, "%s", (const char *)sqlite3_column_text(st, 9));
		r = 0;
	} else {
		r = r == SQLITE_DONE ? -ENOENT : db_fail(c, "sync load");
	}
	sqlite3_finalize(st);
	return r;
}

int catalog_dest_sync_save(struct catalog *c, const char *name, const struct catalog_sync *y)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, "UPDATE destinations SET sync_state = ?2, sync_phase = ?3,"
				      " sync_total = ?4, sync_done = ?5, sync_saved = ?6,"
				      " sync_lsn_a = ?7, sync_lsn_b = ?8, sync_started_ns = ?9,"
				      " sync_reason = ?10 WHERE name = ?1", -1, &st, NULL))
		return db_fail(c, "sync save");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, y->state, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, y->phase, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)y->total);
	sqlite3_bind_int64(st, 5, (sqlite3_int64)y->done);
	sqlite3_bind_int64(st, 6, (sqlite3_int64)y->saved);
	sqlite3_bind_int64(st, 7, (sqlite3_int64)y->lsn_a);
	sqlite3_bind_int64(st, 8, (sqlite3_int64)y->lsn_b);
	sqlite3_bind_int64(st, 9, (sqlite3_int64)y->started_ns);
	sqlite3_bind_text(st, 10, y->reason, -1, SQLITE_STATIC);
	r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "sync save");
	sqlite3_finalize(st);
	return r;
}

int catalog_dests_each(struct catalog *c, int (*fn)(void *ctx, const char *name), void *ctx)
{
	sqlite3_stmt *st;
	int r = 0, step;

	if (sqlite3_prepare_v2(c->db, "SELECT name FROM destinations ORDER BY number", -1, &st,
			       NULL))
		return db_fail(c, "destinations");
	while (r == 0 && (step = sqlite3_step(st)) == SQLITE_ROW)
		r = fn(ctx, (const char *)sqlite3_column_text(st, 0));
	if (r == 0 && step != SQLITE_DONE)
		r = db_fail(c, "destinations");
	sqlite3_finalize(st);
	return r;
}

int catalog_dirty_add(struct catalog *c, const char *dest, uint32_t image, uint64_t offset,
		      uint64_t length, bool hash)
{
	sqlite3_stmt *st;
	int r;

	/* The same start twice keeps the longer extent. */
	if (sqlite3_prepare_v2(c->db, "INSERT INTO dirty_extents(destination, image, offset, length,"
				      " hash) VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT DO UPDATE SET"
				      " length = max(length, ?4), hash = min(hash, ?5)", -1, &st, NULL))
		return db_fail(c, "dirty add");
	sqlite3_bind_text(st, 1, dest, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, image);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)offset);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)length);
	sqlite3_bind_int(st, 5, hash);
	r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "dirty add");
	sqlite3_finalize(st);
	return r;
}

/* Runs sql with ?1 = dest and, if e, ?2..?5 = its image, offset, length,
 * hash (as far as sql has parameters). */
static int dirty_exec(struct catalog *c, const char *sql, const char *what, const char *dest,
		      const struct catalog_extent *e)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, sql, -1, &st, NULL))
		return db_fail(c, what);
	sqlite3_bind_text(st, 1, dest, -1, SQLITE_STATIC);
	if (e) {
		int n = sqlite3_bind_parameter_count(st);

		sqlite3_bind_int64(st, 2, e->image);
		sqlite3_bind_int64(st, 3, (sqlite3_int64)e->offset);
		if (n >= 4)
			sqlite3_bind_int64(st, 4, (sqlite3_int64)e->length);
		if (n >= 5)
			sqlite3_bind_int(st, 5, e->hash);
	}
	r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, what);
	sqlite3_finalize(st);
	return r;
}

static uint64_t extent_end(uint64_t offset, uint64_t length)
{
	return length > (uint64_t)INT64_MAX - offset ? (uint64_t)INT64_MAX : offset + length;
}

/*
 * The extents of e's image that start inside e or where it ends, and
 * compare alike, become part of it: a byte dirty for several reasons is
 * sent once.  (Overlapping writes of a tracking episode made a resync send
 * a 128 MiB image eight times over.)  e is the image's first extent, so
 * nothing that overlaps it starts before it.
 */
static int dirty_coalesce(struct catalog *c, const char *dest, struct catalog_extent *e)
{
	uint64_t end = extent_end(e->offset, e->length);
	unsigned long merged = 0;
	sqlite3_stmt *st;
	bool grew = true;
	int r = 0, step;

	if (sqlite3_prepare_v2(c->db, "SELECT offset, length FROM dirty_extents WHERE"
				      " destination = ?1 AND image = ?2 AND hash = ?3 AND"
				      " offset > ?4 AND offset <= ?5", -1, &st, NULL))
		return db_fail(c, "dirty coalesce");
	while (grew && !r) {
		grew = false;
		sqlite3_reset(st);
		sqlite3_bind_text(st, 1, dest, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, e->image);
		sqlite3_bind_int(st, 3, e->hash);
		sqlite3_bind_int64(st, 4, (sqlite3_int64)e->offset);
		sqlite3_bind_int64(st, 5, (sqlite3_int64)end);
		merged = 0;
		while ((step = sqlite3_step(st)) == SQLITE_ROW) {
			uint64_t o_end = extent_end((uint64_t)sqlite3_column_int64(st, 0),
						    (uint64_t)sqlite3_column_int64(st, 1));

			merged++;
			if (o_end > end) {
				end = o_end;
				grew = true;
			}
		}
		if (step != SQLITE_DONE)
			r = db_fail(c, "dirty coalesce");
	}
	sqlite3_finalize(st);
	if (r || !merged)
		return r;
	/* every extent starting in (offset, end] was seen, none ends later */
	e->length = end - e->offset;
	r = dirty_exec(c, "DELETE FROM dirty_extents WHERE destination = ?1 AND image = ?2 AND"
			  " offset > ?3 AND offset <= ?3 + ?4 AND hash = ?5", "dirty coalesce", dest,
		       e);
	if (r == 0)
		r = dirty_exec(c, "UPDATE dirty_extents SET length = ?4 WHERE destination = ?1 AND"
				  " image = ?2 AND offset = ?3", "dirty coalesce", dest, e);
	return r;
}

int catalog_dirty_first(struct catalog *c, const char *dest, struct catalog_extent *e)
{
	sqlite3_stmt *st;
	int r;

	r = catalog_begin(c);
	if (r < 0)
		return r;
	if (sqlite3_prepare_v2(c->db, "SELECT image, offset, length, hash FROM dirty_extents"
				      " WHERE destination = ? ORDER BY image, offset LIMIT 1",
				      -1, &st, NULL)) {
		catalog_rollback(c);
		return db_fail(c, "dirty first");
	}
	sqlite3_bind_text(st, 1, dest, -1, SQLITE_STATIC);
	r = sqlite3_step(st);
	if (r == SQLITE_ROW) {
		e->image = (uint32_t)sqlite3_column_int64(st, 0);
		e->offset = (uint64_t)sqlite3_column_int64(st, 1);
		e->length = (uint64_t)sqlite3_column_int64(st, 2);
		e->hash = sqlite3_column_int(st, 3) != 0;
		r = 0;
	} else {
		r = r == SQLITE_DONE ? -ENOENT : db_fail(c, "dirty first");
	}
	sqlite3_finalize(st);
	if (r == 0)
		r = dirty_coalesce(c, dest, e);
	if (r < 0 && r != -ENOENT) {
		catalog_rollback(c);
		return r;
	}
	return catalog_commit(c) < 0 ? -EIO : r;
}

int catalog_dirty_advance(struct catalog *c, const char *dest, const struct catalog_extent *e,
			  uint64_t done, bool hashed)
{
	struct catalog_extent covered = { .image = e->image, .offset = e->offset, .length = done };
	int r;

	r = catalog_begin(c);
	if (r < 0)
		return r;
	/* Only as it was read: an extent that grew meanwhile (a skeleton of
	 * a write made after this chunk's records) is left whole, to be
	 * covered again. */
	r = dirty_exec(c, "DELETE FROM dirty_extents WHERE destination = ?1 AND image = ?2 AND"
			  " offset = ?3 AND length = ?4 AND hash = ?5", "dirty advance", dest, e);
	if (r == 0 && sqlite3_changes(c->db) && done < e->length)
		r = catalog_dirty_add(c, dest, e->image, e->offset + done, e->length - done, e->hash);
	if (r == 0 && hashed && done)
		r = dirty_exec(c, "INSERT INTO hashed_extents(destination, image, offset, length)"
				  " VALUES(?1, ?2, ?3, ?4) ON CONFLICT DO UPDATE SET"
				  " length = max(length, ?4)", "hashed add", dest, &covered);
	if (r) {
		catalog_rollback(c);
		return r;
	}
	return catalog_commit(c);
}

int catalog_hashed_requeue(struct catalog *c, const char *dest)
{
	int r = catalog_begin(c);

	if (r < 0)
		return r;
	/* (WHERE makes the upsert parse: SQLite's INSERT ... SELECT ... ON) */
	r = dirty_exec(c, "INSERT INTO dirty_extents(destination, image, offset, length, hash)"
			  " SELECT destination, image, offset, length, 1 FROM hashed_extents"
			  " WHERE destination = ?1 ON CONFLICT DO UPDATE SET"
			  " length = max(length, excluded.length)", "hashed requeue", dest, NULL);
	if (r == 0)
		r = catalog_hashed_clear(c, dest);
	if (r) {
		catalog_rollback(c);
		return r;
	}
	return catalog_commit(c);
}

int catalog_hashed_clear(struct catalog *c, const char *dest)
{
	return dirty_exec(c, "DELETE FROM hashed_extents WHERE destination = ?1", "hashed clear",
			  dest, NULL);
}

int catalog_dirty_bytes(struct catalog *c, const char *dest, uint64_t *bytes, uint64_t *count)
{
	sqlite3_stmt *st;
	int r;

	*bytes = *count = 0;
	/* total(), a double: sum() fails with "integer overflow" once two
	 * extents run "to the end" (power loss: 2^62 bytes each) */
	if (sqlite3_prepare_v2(c->db, "SELECT total(min(length, 1 << 62)), count(*)"
				      " FROM dirty_extents WHERE destination = ?", -1, &st, NULL))
		return db_fail(c, "dirty bytes");
	sqlite3_bind_text(st, 1, dest, -1, SQLITE_STATIC);
	r = sqlite3_step(st);
	if (r == SQLITE_ROW) {
		double total = sqlite3_column_double(st, 0);

		*bytes = total >= 0x1p63 ? (uint64_t)INT64_MAX : (uint64_t)total;
		*count = (uint64_t)sqlite3_column_int64(st, 1);
	}
	r = r == SQLITE_ROW ? 0 : db_fail(c, "dirty bytes");
	sqlite3_finalize(st);
	return r;
}

int catalog_shipment_range(struct catalog *c, const char *dest, uint64_t segment,
			   uint64_t *dest_first, uint64_t *dest_last)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, "SELECT dest_first_lsn, dest_last_lsn FROM shipments"
				      " WHERE destination = ? AND segment = ?", -1, &st, NULL))
		return db_fail(c, "shipment range");
	sqlite3_bind_text(st, 1, dest, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)segment);
	r = sqlite3_step(st);
	if (r == SQLITE_ROW) {
		*dest_first = (uint64_t)sqlite3_column_int64(st, 0);
		*dest_last = (uint64_t)sqlite3_column_int64(st, 1);
		r = 0;
	} else {
		r = r == SQLITE_DONE ? -ENOENT : db_fail(c, "shipment range");
	}
	sqlite3_finalize(st);
	return r;
}

int catalog_dest_load(struct catalog *c, const char *name, struct catalog_dest *d)
{
	sqlite3_stmt *st;
	int r;

	memset(d, 0, sizeof *d);
	if (sqlite3_prepare_v2(c->db, "SELECT acked_segment, acked_lsn, acked_ns, dest_lsn"
				      " FROM destinations WHERE name = ?", -1, &st, NULL))
		return db_fail(c, "destination load");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	r = sqlite3_step(st);
	if (r == SQLITE_ROW) {
		d->acked_segment = (uint64_t)sqlite3_column_int64(st, 0);
		d->acked_lsn = (uint64_t)sqlite3_column_int64(st, 1);
		d->acked_ns = (uint64_t)sqlite3_column_int64(st, 2);
		d->dest_lsn = (uint64_t)sqlite3_column_int64(st, 3);
		r = 0;
	} else {
		r = r == SQLITE_DONE ? -ENOENT : db_fail(c, "destination load");
	}
	sqlite3_finalize(st);
	return r;
}

int catalog_dest_forget(struct catalog *c, const char *name)
{
	static const char *const sql[] = {
		"DELETE FROM shipments WHERE destination = ?",
		"DELETE FROM dirty_extents WHERE destination = ?",
		"DELETE FROM hashed_extents WHERE destination = ?",
		"DELETE FROM destinations WHERE name = ?",
	};
	int r = catalog_begin(c);

	for (size_t i = 0; r == 0 && i < sizeof sql / sizeof sql[0]; i++) {
		sqlite3_stmt *st;

		if (sqlite3_prepare_v2(c->db, sql[i], -1, &st, NULL)) {
			r = db_fail(c, "destination forget");
			break;
		}
		sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
		r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "destination forget");
		sqlite3_finalize(st);
	}
	if (r == 0)
		return catalog_commit(c);
	catalog_rollback(c);
	return r;
}

int catalog_dest_ack(struct catalog *c, const char *name, uint64_t segment, uint64_t src_last_lsn,
		     uint64_t dest_first_lsn, uint64_t dest_last_lsn, uint64_t bytes, uint64_t now_ns)
{
	sqlite3_stmt *st = NULL;
	int r;

	r = catalog_begin(c);
	if (r < 0)
		return r;
	if (sqlite3_prepare_v2(c->db, "UPDATE destinations SET acked_segment = ?2, acked_lsn = ?3,"
				      " acked_ns = ?4, dest_lsn = ?5, last_error = NULL WHERE name = ?1",
				      -1, &st, NULL)) {
		r = db_fail(c, "destination ack");
		goto out;
	}
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)segment);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)src_last_lsn);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)now_ns);
	sqlite3_bind_int64(st, 5, (sqlite3_int64)dest_last_lsn);
	r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "destination ack");
	sqlite3_finalize(st);
	st = NULL;
	if (r)
		goto out;
	if (sqlite3_prepare_v2(c->db, "INSERT OR REPLACE INTO shipments(destination, segment, bytes,"
				      " acked_ns, dest_first_lsn, dest_last_lsn) VALUES(?,?,?,?,?,?)",
				      -1, &st, NULL)) {
		r = db_fail(c, "shipment");
		goto out;
	}
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)segment);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)bytes);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)now_ns);
	sqlite3_bind_int64(st, 5, (sqlite3_int64)dest_first_lsn);
	sqlite3_bind_int64(st, 6, (sqlite3_int64)dest_last_lsn);
	r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "shipment");
out:
	sqlite3_finalize(st);
	if (r) {
		catalog_rollback(c);
		return r;
	}
	return catalog_commit(c);
}

int catalog_dest_error(struct catalog *c, const char *name, const char *error)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, "UPDATE destinations SET last_error = ? WHERE name = ?",
			       -1, &st, NULL))
		return db_fail(c, "destination error");
	sqlite3_bind_text(st, 1, error, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
	r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "destination error");
	sqlite3_finalize(st);
	return r;
}

int catalog_segment_pruned(struct catalog *c, uint64_t n)
{
	sqlite3_stmt *st;
	int r;

	r = catalog_begin(c);
	if (r < 0)
		return r;
	if (sqlite3_prepare_v2(c->db, "DELETE FROM writes WHERE segment = ?", -1, &st, NULL)) {
		catalog_rollback(c);
		return db_fail(c, "prune");
	}
	sqlite3_bind_int64(st, 1, (sqlite3_int64)n);
	r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "prune");
	sqlite3_finalize(st);
	if (r == 0)
		r = catalog_segment_set_state(c, n, "pruned");
	if (r) {
		catalog_rollback(c);
		return r;
	}
	return catalog_commit(c);
}

int catalog_dest_skip(struct catalog *c, const char *name, uint64_t segment, uint64_t dest_lsn)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, "UPDATE destinations SET acked_segment = ?2, dest_lsn = ?3"
				      " WHERE name = ?1 AND acked_segment <= ?2", -1, &st, NULL))
		return db_fail(c, "destination skip");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)segment);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)dest_lsn);
	r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(c, "destination skip");
	sqlite3_finalize(st);
	return r;
}

int catalog_segment_sealed_before(struct catalog *c, uint64_t ns, uint64_t *n)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, "SELECT coalesce(max(number), 0) FROM segments"
			       " WHERE sealed_ns < ?", -1, &st, NULL))
		return db_fail(c, "segments sealed before");
	sqlite3_bind_int64(st, 1, (sqlite3_int64)ns);
	r = sqlite3_step(st);
	if (r == SQLITE_ROW) {
		*n = (uint64_t)sqlite3_column_int64(st, 0);
		r = 0;
	} else {
		r = db_fail(c, "segments sealed before");
	}
	sqlite3_finalize(st);
	return r;
}

int catalog_segment_last_lsn(struct catalog *c, uint64_t n, uint64_t *lsn)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, "SELECT last_lsn FROM segments WHERE number = ?", -1, &st,
			       NULL))
		return db_fail(c, "segment lsn");
	sqlite3_bind_int64(st, 1, (sqlite3_int64)n);
	r = sqlite3_step(st);
	if (r == SQLITE_ROW) {
		*lsn = (uint64_t)sqlite3_column_int64(st, 0);
		r = 0;
	} else {
		r = r == SQLITE_DONE ? -ENOENT : db_fail(c, "segment lsn");
	}
	sqlite3_finalize(st);
	return r;
}

/* ---- marks ---- */

static void mark_row(sqlite3_stmt *st, struct catalog_mark *m)
{
	snprintf(m->name, sizeof m->name, "%s", (const char *)sqlite3_column_text(st, 0));
	m->lsn = (uint64_t)sqlite3_column_int64(st, 1);
	m->time_ns = (uint64_t)sqlite3_column_int64(st, 2);
}

int catalog_mark_find(struct catalog *c, const char *name, struct catalog_mark *m)
{
	sqlite3_stmt *st;
	int r;

	if (sqlite3_prepare_v2(c->db, "SELECT name, lsn, time_ns FROM marks WHERE name = ?"
				      " ORDER BY lsn LIMIT 1", -1, &st, NULL))
		return db_fail(c, "mark lookup");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	r = sqlite3_step(st);
	if (r == SQLITE_ROW) {
		mark_row(st, m);
		r = 0;
	} else {
		r = r == SQLITE_DONE ? -ENOENT : db_fail(c, "mark lookup");
	}
	sqlite3_finalize(st);
	return r;
}

int catalog_marks_each(struct catalog *c, int (*fn)(void *ctx, const struct catalog_mark *m),
		       void *ctx)
{
	struct catalog_mark m;
	sqlite3_stmt *st;
	int r = 0, step;

	if (sqlite3_prepare_v2(c->db, "SELECT name, lsn, time_ns FROM marks ORDER BY lsn", -1, &st,
			       NULL))
		return db_fail(c, "marks");
	while (r == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
		mark_row(st, &m);
		r = fn(ctx, &m);
	}
	if (r == 0 && step != SQLITE_DONE)
		r = db_fail(c, "marks");
	sqlite3_finalize(st);
	return r;
}
