/*
 * test_dest_state.c — the one owner of a destination's state
 * (transport/dest_state.c, dest_view.c): changes are persisted before they
 * are applied, refused when they make no sense or when an expectation no
 * longer holds, the catalog's words round-trip, the listener hears every
 * change, and /status and /metrics are printed from the same view.
 */
#include "check.h"
#include "catalog.h"
#include "strbuf.h"
#include "transport.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[] = "/tmp/aimfs-dest-state-XXXXXX";
static int heard;

static void listener(void *ctx)
{
	(void)ctx;
	heard++;
}

static struct catalog *open_catalog(void)
{
	char path[256];
	struct catalog *cat = NULL;

	snprintf(path, sizeof path, "%s/catalog.db", dir);
	CHECK(catalog_open(path, &cat) == 0);
	return cat;
}

static struct transport *start(struct dest_config *dc, size_t n, bool engine)
{
	struct transport_config tc = { .journal_dir = dir, .dests = dc, .ndests = n,
				       .resync = engine };
	struct transport *t = NULL;

	memset(tc.group, 0x42, sizeof tc.group);
	CHECK(transport_new(&tc, &t) == 0);
	return t;
}

static enum dest_view_state view_of(struct transport *t, size_t i, char **metrics, char **json)
{
	struct dest_view *v = NULL;
	struct strbuf sb = { 0 };
	enum dest_view_state s;
	size_t n, len;
	json_t *arr;

	CHECK(transport_views(t, &v, &n) == 0);
	CHECK(i < n);
	s = v[i].state;
	dest_views_metrics(v, n, &sb);
	*metrics = strbuf_take(&sb, &len);
	arr = dest_views_json(v, n);
	*json = json_dumps(json_array_get(arr, i), JSON_COMPACT);
	json_decref(arr);
	free(v);
	return s;
}

static void expect_view(struct transport *t, size_t i, const char *name, const char *state)
{
	char *metrics, *json, want_json[64], want_metric[128];

	CHECK(strcmp(dest_view_state_name(view_of(t, i, &metrics, &json)), state) == 0);
	snprintf(want_json, sizeof want_json, "\"state\":\"%s\"", state);
	snprintf(want_metric, sizeof want_metric,
		 "aimfs_destination_state{destination=\"%s\",state=\"%s\"} 1\n", name, state);
	CHECK(strstr(json, want_json) != NULL);
	CHECK(strstr(metrics, want_metric) != NULL);
	free(metrics);
	free(json);
}

static void test_changes(void)
{
	struct dest_config dc[2] = {
		{ .name = "d1", .url = "http://127.0.0.1:1/aim" },
		{ .name = "d2", .url = "http://127.0.0.1:1/other" },
	};
	struct transport *t = start(dc, 2, true);
	struct catalog *cat = open_catalog();
	struct transport_dest_info info;
	struct catalog_sync y;
	struct catalog_dest cd;
	struct dest_progress p = { .total = 100, .done = 10 };

	transport_on_change(t, listener, NULL);
	transport_dest_info(t, 0, &info);
	CHECK(info.rec.sync == DEST_SYNC_NEW && info.rec.reason == DEST_REASON_NEW);
	CHECK(info.rec.number == 1);
	expect_view(t, 0, "d1", "resyncing");

	/* nonsense is refused and changes nothing */
	CHECK(dest_state_change(t, 0, cat, &(struct dest_change){ .sync = DEST_SYNC_NEW }) ==
	      -EINVAL);
	CHECK(dest_state_change(t, 0, cat, &(struct dest_change){
		.sync = DEST_SYNC_SYNCING, .phase = DEST_PHASE_COPYING }) == -EINVAL); /* no reason */
	CHECK(heard == 0);

	/* a full resync begins: persisted, with its reason */
	CHECK(dest_state_change(t, 0, cat, &(struct dest_change){
		.sync = DEST_SYNC_SYNCING, .phase = DEST_PHASE_NONE,
		.reason = DEST_REASON_SEGMENTS_GONE, .progress = &p }) == 0);
	CHECK(heard == 1);
	CHECK(catalog_dest_sync_load(cat, "d1", &y) == 0);
	CHECK(strcmp(y.state, "syncing") == 0 && strcmp(y.phase, "") == 0);
	CHECK(strcmp(y.reason, "segments_gone") == 0 && y.total == 100 && y.done == 10);

	/* an expectation that no longer holds: nothing happens */
	CHECK(dest_state_change(t, 0, cat, &(struct dest_change){
		.sync = DEST_SYNC_SYNCING, .phase = DEST_PHASE_COPYING,
		.reason = DEST_REASON_SEGMENTS_GONE, .expect = true,
		.expect_sync = DEST_SYNC_TRACKING, .expect_phase = DEST_PHASE_NONE }) == -EAGAIN);
	CHECK(heard == 1);

	/* copying and the skip are one change */
	CHECK(dest_state_change(t, 0, cat, &(struct dest_change){
		.sync = DEST_SYNC_SYNCING, .phase = DEST_PHASE_COPYING,
		.reason = DEST_REASON_SEGMENTS_GONE, .skip = true, .skip_segment = 7,
		.skip_dest_lsn = 70 }) == 0);
	transport_dest_info(t, 0, &info);
	CHECK(info.acked_segment == 7 && info.dest_last_lsn == 70);
	CHECK(info.rec.phase == DEST_PHASE_COPYING);
	CHECK(catalog_dest_load(cat, "d1", &cd) == 0 && cd.acked_segment == 7 && cd.dest_lsn == 70);
	expect_view(t, 0, "d1", "resyncing");

	/* the end of the resync drops the reason */
	CHECK(dest_state_change(t, 0, cat, &(struct dest_change){
		.sync = DEST_SYNC_IN_SYNC, .reason = DEST_REASON_SEGMENTS_GONE }) == 0);
	transport_dest_info(t, 0, &info);
	CHECK(info.rec.sync == DEST_SYNC_IN_SYNC && info.rec.reason == DEST_REASON_NONE);
	expect_view(t, 0, "d1", "in_sync");

	/* tracking, as the overflow makes it */
	CHECK(dest_state_change(t, 1, cat, &(struct dest_change){
		.sync = DEST_SYNC_TRACKING, .reason = DEST_REASON_OVERFLOW }) == 0);
	expect_view(t, 1, "d2", "tracking");
	catalog_close(cat);
	transport_free(t);

	/* a restart finds what was persisted */
	t = start(dc, 2, true);
	transport_dest_info(t, 0, &info);
	CHECK(info.rec.sync == DEST_SYNC_IN_SYNC && info.acked_segment == 7);
	transport_dest_info(t, 1, &info);
	CHECK(info.rec.sync == DEST_SYNC_TRACKING && info.rec.reason == DEST_REASON_OVERFLOW);
	transport_free(t);

	/* a power loss: the destination in sync begins a resync without a
	 * skip; the tracking one keeps its state (its resync covers more) */
	cat = open_catalog();
	CHECK(dest_state_mark_all(cat, DEST_REASON_POWER_LOSS) == 0);
	CHECK(catalog_dest_sync_load(cat, "d1", &y) == 0);
	CHECK(strcmp(y.state, "syncing") == 0 && strcmp(y.phase, "begin") == 0 &&
	      strcmp(y.reason, "power_loss") == 0);
	CHECK(catalog_dest_sync_load(cat, "d2", &y) == 0 && strcmp(y.state, "tracking") == 0);
	/* another power loss while d1 copies its resync: what the engine saved
	 * as done may not have survived in the journal, so a full resync */
	CHECK(catalog_dest_sync_load(cat, "d1", &y) == 0);
	snprintf(y.phase, sizeof y.phase, "copying");
	y.done = 12345;
	CHECK(catalog_dest_sync_save(cat, "d1", &y) == 0);
	CHECK(dest_state_mark_all(cat, DEST_REASON_POWER_LOSS) == 0);
	CHECK(catalog_dest_sync_load(cat, "d1", &y) == 0);
	CHECK(strcmp(y.state, "syncing") == 0 && strcmp(y.phase, "") == 0 &&
	      strcmp(y.reason, "power_loss") == 0 && y.done == 0);
	/* ... but a full resync that seeds every image keeps its reason (an
	 * object store opens a base only for those) */
	snprintf(y.phase, sizeof y.phase, "comparing");
	snprintf(y.reason, sizeof y.reason, "new");
	CHECK(catalog_dest_sync_save(cat, "d1", &y) == 0);
	CHECK(dest_state_mark_all(cat, DEST_REASON_POWER_LOSS) == 0);
	CHECK(catalog_dest_sync_load(cat, "d1", &y) == 0);
	CHECK(strcmp(y.phase, "") == 0 && strcmp(y.reason, "new") == 0);
	/* an image changed while aimfs was stopped (after a clean unmount):
	 * a resync copying goes on as it was (the image is among its dirty
	 * extents); one ending begins again for it */
	snprintf(y.phase, sizeof y.phase, "copying");
	y.done = 777;
	CHECK(catalog_dest_sync_save(cat, "d1", &y) == 0);
	CHECK(dest_state_mark_all(cat, DEST_REASON_CHANGED_OFFLINE) == 0);
	CHECK(catalog_dest_sync_load(cat, "d1", &y) == 0);
	CHECK(strcmp(y.phase, "copying") == 0 && strcmp(y.reason, "new") == 0 && y.done == 777);
	snprintf(y.phase, sizeof y.phase, "ending");
	CHECK(catalog_dest_sync_save(cat, "d1", &y) == 0);
	CHECK(dest_state_mark_all(cat, DEST_REASON_CHANGED_OFFLINE) == 0);
	CHECK(catalog_dest_sync_load(cat, "d1", &y) == 0);
	CHECK(strcmp(y.state, "syncing") == 0 && strcmp(y.phase, "begin") == 0 &&
	      strcmp(y.reason, "changed_offline") == 0 && y.done == 0);
	catalog_close(cat);
	t = start(dc, 2, true);
	expect_view(t, 0, "d1", "resyncing");
	transport_free(t);
}

static void test_unknown_words_are_refused(void)
{
	struct dest_config dc = { .name = "d1", .url = "http://127.0.0.1:1/aim" };
	struct catalog *cat = open_catalog();
	struct catalog_sync y;
	struct transport_config tc = { .journal_dir = dir, .dests = &dc, .ndests = 1 };
	struct transport *t = NULL;

	/* a catalog written by a newer aimfs */
	CHECK(catalog_dest_sync_load(cat, "d1", &y) == 0);
	snprintf(y.state, sizeof y.state, "promoted");
	CHECK(catalog_dest_sync_save(cat, "d1", &y) == 0);
	catalog_close(cat);
	memset(tc.group, 0x42, sizeof tc.group);
	CHECK(transport_new(&tc, &t) == -EINVAL);
}

int main(void)
{
	char cmd[300];

	CHECK(mkdtemp(dir) != NULL);
	test_changes();
	test_unknown_words_are_refused();
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	return check_done("test_dest_state");
}
