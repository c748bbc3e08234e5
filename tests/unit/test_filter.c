/*
 * test_filter.c — a segment as one destination sees it (transport/filter.c):
 * in skeleton mode (the destination tracks dirty extents after an
 * overflow) no data and no SYNC_END of its own, which would tell its
 * remote the copy is consistent while the data it stands for is missing;
 * in normal mode its own resync records as they are, and other
 * destinations' as SKIPs.
 */
#include "check.h"
#include "transport_i.h"

#include <stdlib.h>
#include <string.h>

#define ME 3     /* the destination's number */
#define OTHER 5

static const struct seg_image images[] = { { 1, 6, "vm.raw" } };

static uint8_t *segment(size_t *len)
{
	static const char data[] = "0123456789abcdef";
	const struct seg_record recs[] = {
		{ .type = SEG_SYNC_BEGIN, .aux = ME },
		{ .type = SEG_WRITE, .flags = SEG_F_RESYNC, .aux = ME, .image = 1, .offset = 0,
		  .length = 16, .payload = data, .payload_len = 16 },
		{ .type = SEG_WRITE, .flags = SEG_F_RESYNC, .aux = OTHER, .image = 1,
		  .offset = 16, .length = 16, .payload = data, .payload_len = 16 },
		{ .type = SEG_WRITE, .image = 1, .offset = 32, .length = 16, .payload = data,
		  .payload_len = 16 },
		{ .type = SEG_FLUSH, .image = 0 },
		{ .type = SEG_SYNC_END, .aux = ME },
		{ .type = SEG_SYNC_END, .aux = OTHER },
	};
	struct seg_header h = { .number = 9, .first_lsn = 100, .image_count = 1,
				.images = images };
	struct seg_builder *b = seg_builder_new(&h);
	uint8_t *out = NULL;

	CHECK(b != NULL);
	for (size_t i = 0; i < sizeof recs / sizeof recs[0]; i++) {
		struct seg_record r = recs[i];

		r.time_ns = 1700000000000000000ULL;
		CHECK(seg_builder_add(b, &r) == 100 + i);
	}
	CHECK(seg_builder_finish(b, 0, &out, len) == 0);
	seg_builder_free(b);
	return out;
}

/* The record types of the segment d receives in mode, in order. */
static size_t filtered(enum filter_mode mode, uint8_t *types, size_t max)
{
	struct dest_config d = { .name = "dr1" };
	struct seg_view *v = NULL, *fv = NULL;
	struct seg_record r;
	struct seg_err err;
	uint8_t *seg, *out = NULL;
	size_t len, olen = 0, n = 0;
	uint64_t last = 0;

	seg = segment(&len);
	CHECK(seg_view_new(seg, len, &v, &err) == 0);
	CHECK(filter_segment(&d, ME, mode, v, 100, &out, &olen, &last) == 0);
	CHECK(seg_view_new(out, olen, &fv, &err) == 0);
	while (fv && seg_view_next(fv, &r) == 1 && n < max)
		types[n++] = (uint8_t)r.type;
	seg_view_free(fv);
	seg_view_free(v);
	free(out);
	free(seg);
	return n;
}

static size_t count(const uint8_t *types, size_t n, uint8_t type)
{
	size_t c = 0;

	for (size_t i = 0; i < n; i++)
		c += types[i] == type;
	return c;
}

int main(void)
{
	uint8_t t[32];
	size_t n;

	n = filtered(FILTER_NORMAL, t, sizeof t);
	CHECK(n == 7);
	CHECK(count(t, n, SEG_SYNC_END) == 1 && count(t, n, SEG_SKIP) == 2);
	CHECK(count(t, n, SEG_WRITE) == 2);

	/* tracking: no data, no SYNC_END of its own, the barrier kept */
	n = filtered(FILTER_SKELETON, t, sizeof t);
	CHECK(count(t, n, SEG_WRITE) == 0);
	CHECK_MSG(count(t, n, SEG_SYNC_END) == 0, "a skeleton keeps its own SYNC_END");
	CHECK(count(t, n, SEG_FLUSH) == 1);

	/* the first skeleton: SYNC_BEGIN first, and still no SYNC_END */
	n = filtered(FILTER_SKELETON_BEGIN, t, sizeof t);
	CHECK(n > 0 && t[0] == SEG_SYNC_BEGIN);
	CHECK(count(t, n, SEG_SYNC_END) == 0);
	return check_done("test_filter");
}
