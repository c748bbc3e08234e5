/*
 * test_dirty.c — the catalog's dirty extents (catalog/catalog.c), what a
 * resync covers: overlapping extents are covered once, an extent that grows
 * while a chunk of it is covered is not cut short, and what was hashed
 * waits aside for the remote's report and comes back if the pass is
 * abandoned.
 */
#include "check.h"
#include "catalog.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define D "dr1"
#define MiB (1ull << 20)

static char dir[] = "/tmp/aimfs-dirty-XXXXXX";

static uint64_t dirty_bytes(struct catalog *cat)
{
	uint64_t bytes = 0, count = 0;

	CHECK(catalog_dirty_bytes(cat, D, &bytes, &count) == 0);
	return bytes;
}

/* Covers every dirty extent chunk by chunk, as the engine does; returns the
 * bytes covered. */
static uint64_t cover_all(struct catalog *cat, uint64_t chunk, bool hashed)
{
	struct catalog_extent e;
	uint64_t covered = 0;
	int guard = 0;

	while (catalog_dirty_first(cat, D, &e) == 0 && guard++ < 100000) {
		uint64_t done = e.length < chunk ? e.length : chunk;

		CHECK(catalog_dirty_advance(cat, D, &e, done, hashed) == 0);
		covered += done;
	}
	return covered;
}

static void overlapping_extents_are_covered_once(struct catalog *cat)
{
	/* a tracking episode's writes: many overlapping ranges of 16 MiB */
	for (uint64_t i = 0; i < 64; i++)
		CHECK(catalog_dirty_add(cat, D, 1, (i * 7919 % 61) * 256 * 1024, 4 * MiB, true) == 0);
	CHECK(catalog_dirty_add(cat, D, 2, 0, 1 * MiB, true) == 0);
	CHECK(catalog_dirty_add(cat, D, 2, 1 * MiB, 1 * MiB, true) == 0); /* adjacent */
	CHECK(catalog_dirty_add(cat, D, 2, 8 * MiB, 1 * MiB, true) == 0); /* apart */
	/* image 1 spans [0, 15.25 MiB + 4 MiB) at most; image 2 is 3 MiB */
	uint64_t covered = cover_all(cat, MiB, false);

	CHECK_MSG(covered <= 20 * MiB + 3 * MiB, "covered %llu bytes", (unsigned long long)covered);
	CHECK(dirty_bytes(cat) == 0);
}

static void data_and_hash_extents_stay_apart(struct catalog *cat)
{
	struct catalog_extent e;

	CHECK(catalog_dirty_add(cat, D, 1, 0, 4 * MiB, true) == 0);
	CHECK(catalog_dirty_add(cat, D, 1, MiB, MiB, false) == 0); /* a reported mismatch */
	CHECK(catalog_dirty_first(cat, D, &e) == 0);
	CHECK(e.offset == 0 && e.length == 4 * MiB && e.hash);
	CHECK(catalog_dirty_advance(cat, D, &e, e.length, false) == 0);
	CHECK(catalog_dirty_first(cat, D, &e) == 0);
	CHECK(e.offset == MiB && e.length == MiB && !e.hash);
	cover_all(cat, MiB, false);
}

static void an_extent_that_grows_meanwhile_is_not_cut_short(struct catalog *cat)
{
	struct catalog_extent e, now;

	CHECK(catalog_dirty_add(cat, D, 3, 0, 2 * MiB, true) == 0);
	CHECK(catalog_dirty_first(cat, D, &e) == 0);
	/* while its first chunk is covered, a skeleton adds a longer one */
	CHECK(catalog_dirty_add(cat, D, 3, 0, 8 * MiB, true) == 0);
	CHECK(catalog_dirty_advance(cat, D, &e, MiB, false) == 0);
	CHECK(catalog_dirty_first(cat, D, &now) == 0);
	CHECK_MSG(now.offset == 0 && now.length == 8 * MiB, "now %llu+%llu",
		  (unsigned long long)now.offset, (unsigned long long)now.length);
	cover_all(cat, MiB, false);
	CHECK(dirty_bytes(cat) == 0);
}

static void hashed_extents_come_back_when_a_pass_is_abandoned(struct catalog *cat)
{
	CHECK(catalog_dirty_add(cat, D, 4, 0, 3 * MiB, true) == 0);
	CHECK(cover_all(cat, MiB, true) == 3 * MiB);
	CHECK(dirty_bytes(cat) == 0);
	CHECK(catalog_hashed_requeue(cat, D) == 0);
	CHECK(dirty_bytes(cat) == 3 * MiB);
	/* the next pass hashes them again; its report comes in */
	CHECK(cover_all(cat, MiB, true) == 3 * MiB);
	CHECK(catalog_hashed_clear(cat, D) == 0);
	CHECK(catalog_hashed_requeue(cat, D) == 0);
	CHECK(dirty_bytes(cat) == 0);
}

int main(void)
{
	struct catalog *cat = NULL;
	char path[256];

	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(path, sizeof path, "%s/catalog.db", dir);
	CHECK(catalog_open(path, &cat) == 0);
	if (cat) {
		overlapping_extents_are_covered_once(cat);
		data_and_hash_extents_stay_apart(cat);
		an_extent_that_grows_meanwhile_is_not_cut_short(cat);
		hashed_extents_come_back_when_a_pass_is_abandoned(cat);
		/* two images "to the end" (power loss): counted, not an error */
		CHECK(catalog_dirty_add(cat, D, 7, 0, 1ull << 62, true) == 0);
		CHECK(catalog_dirty_add(cat, D, 8, 0, 1ull << 62, true) == 0);
		CHECK(dirty_bytes(cat) >= 1ull << 62);
		/* what the pruner relies on before deleting segments */
		CHECK(catalog_make_durable(cat) == 0);
		catalog_close(cat);
	}
	for (const char *f = "catalog.db\0catalog.db-wal\0catalog.db-shm\0"; *f; f += strlen(f) + 1) {
		snprintf(path, sizeof path, "%s/%s", dir, f);
		unlink(path);
	}
	rmdir(dir);
	return check_done("test_dirty");
}
