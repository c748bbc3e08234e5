/*
 * test_state.c — aim-remote's state database keeps what it needs and no
 * more: the rows of applied segments (what a copy sent again is compared
 * with) are dropped once SEGMENTS_KEEP newer ones are recorded, for each
 * group on its own, while the group's progress stays.  A hold of every
 * kind reads back as it was recorded, the receiver reads a promoted
 * group's role, a release forgets the hold, and applied marks are found
 * by name.
 */
#include "check.h"
#include "remote_i.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define G1 "0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5"
#define G2 "11111111-2222-4333-8444-555555555555"
#define EXTRA 100

static long long rows(const char *db_path, const char *group)
{
	sqlite3 *db;
	sqlite3_stmt *s;
	long long n = -1;

	if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
		return -1;
	if (sqlite3_prepare_v2(db, "SELECT count(*) FROM segments WHERE \"group\" = ?", -1, &s,
			       NULL) == SQLITE_OK) {
		sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
		if (sqlite3_step(s) == SQLITE_ROW)
			n = sqlite3_column_int64(s, 0);
		sqlite3_finalize(s);
	}
	sqlite3_close(db);
	return n;
}

static void check_holds(struct state *st)
{
	static const struct {
		enum hold_kind kind;
		const char *text;
	} kinds[] = {
		{ HOLD_NOW, NULL }, { HOLD_LSN, "1234" }, { HOLD_TIME, "@1700000000.5" },
		{ HOLD_MARK, "mark:before test" }, { HOLD_LAST, NULL },
	};
	enum failover_role role;
	uint64_t at, stop, lsn;
	struct hold h, r;

	CHECK(state_hold_get(st, G1, &r) == 0 && !r.active);
	for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
		memset(&h, 0, sizeof h);
		CHECK(hold_set_point(&h, kinds[i].kind, kinds[i].text) == 0);
		h.active = true;
		h.set_ns = 5 + i;
		h.asked_lsn = 7;
		h.reached = i % 2;
		h.stop_lsn = 9;
		h.stop_time_ns = 11;
		h.stop_type = SEG_FLUSH;
		snprintf(h.note, sizeof h.note, "note %zu", i);
		h.role = i == 4 ? FO_PROMOTED : FO_NONE;
		h.force = i == 4;
		h.promoted_ns = i == 4 ? 13 : 0;
		CHECK(state_hold_put(st, G1, &h) == 0);
		CHECK(state_hold_get(st, G1, &r) == 0);
		CHECK_MSG(memcmp(&h, &r, sizeof h) == 0, "hold %zu (%s) reads back otherwise", i,
			  h.pt.text);
	}
	CHECK(hold_set_point(&h, HOLD_LSN, "mark:x") == -EINVAL);
	CHECK(hold_set_point(&h, HOLD_TIME, "yesterday") == -EINVAL);
	/* the receiver's question */
	CHECK(state_role(st, G1, &role, &at, &stop) == 0 && role == FO_PROMOTED && at == 13 &&
	      stop == 9);
	CHECK(state_role(st, G2, &role, &at, &stop) == 0 && role == FO_NONE && !at && !stop);
	/* a release forgets it */
	memset(&h, 0, sizeof h);
	CHECK(state_hold_put(st, G1, &h) == 0);
	CHECK(state_hold_get(st, G1, &r) == 0 && !r.active);
	CHECK(state_role(st, G1, &role, &at, &stop) == 0 && role == FO_NONE);
	/* marks, recorded again after a crash as the same row */
	CHECK(state_mark_get(st, G1, "m", &lsn) == -ENOENT);
	struct state_mark m = { .lsn = 42, .time_ns = 1, .name = "m" };
	CHECK(state_marks_add(st, G1, &m, 1) == 0 && state_marks_add(st, G1, &m, 1) == 0);
	CHECK(state_mark_get(st, G1, "m", &lsn) == 0 && lsn == 42);
	CHECK(state_mark_get(st, G2, "m", &lsn) == -ENOENT);
}

int main(void)
{
	char dir[] = "/dev/shm/aim-test-state-XXXXXX", path[128];
	struct state_segment seg, got;
	struct state_group g;
	struct state *st;
	uint64_t lsn = 0;

	/* tmpfs when there is one: fsync per transaction costs nothing there */
	if (!mkdtemp(dir)) {
		memcpy(dir, "/tmp/", 5);
		CHECK(mkdtemp(dir) != NULL);
	}
	snprintf(path, sizeof path, "%s/%s", dir, REMOTE_STATE_DB);
	CHECK(state_open(path, &st) == 0);
	CHECK(state_group_load(st, G1, &g) == 0);
	CHECK(state_group_load(st, G2, &g) == 0);
	for (uint64_t n = 1; n <= SEGMENTS_KEEP + EXTRA; n++) {
		seg = (struct state_segment){ .number = n, .first_lsn = lsn + 1,
					      .last_lsn = lsn + 3, .size = 100 + n, .digest = n };
		lsn += 3;
		CHECK(state_progress(st, G1, lsn, n, &seg, NULL, NULL, 0) == 0);
		if (n <= 10)
			CHECK(state_progress(st, G2, lsn, n, &seg, NULL, NULL, 0) == 0);
	}
	CHECK_MSG(rows(path, G1) == (long long)SEGMENTS_KEEP, "%lld rows", rows(path, G1));
	CHECK_MSG(rows(path, G2) == 10, "%lld rows of the other group", rows(path, G2));
	/* the oldest are gone, the last SEGMENTS_KEEP are there as recorded */
	CHECK(state_segment_get(st, G1, EXTRA, &got) == -ENOENT);
	CHECK(state_segment_get(st, G1, EXTRA + 1, &got) == 0 && got.digest == EXTRA + 1 &&
	      got.size == 100 + EXTRA + 1);
	CHECK(state_segment_get(st, G1, SEGMENTS_KEEP + EXTRA, &got) == 0);
	CHECK(state_segment_get(st, G2, 1, &got) == 0);
	/* the progress itself is whole */
	CHECK(state_group_get(st, G1, &g) == 0 && g.applied_segment == SEGMENTS_KEEP + EXTRA &&
	      g.applied_lsn == lsn && g.segment_last_lsn == lsn);
	check_holds(st);
	state_close(st);
	unlink(path);
	snprintf(path, sizeof path, "%s/%s-wal", dir, REMOTE_STATE_DB);
	unlink(path);
	snprintf(path, sizeof path, "%s/%s-shm", dir, REMOTE_STATE_DB);
	unlink(path);
	rmdir(dir);
	return check_done("test_state");
}
