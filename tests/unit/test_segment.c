/*
 * test_segment.c — proves the segment format (docs/FORMAT.md) and its one
 * encoder/decoder: the byte layout against an independent writer, round
 * trips of every record type, the namespace as CREATE/RENAME/UNLINK unfold,
 * file and image names, and refusal of every kind of damage.  Damage comes
 * two ways: blind (every single-bit flip, every truncation, appended bytes),
 * which the checksums must catch, and forged (content re-checksummed by
 * reseal() below, an independent implementation of the check chain), which
 * the semantic rules must catch.  Each refusal must carry a specific
 * message and point at the right byte, and the recovery decoder must stop
 * exactly before the first bad record.
 */
#include "check.h"
#include "format.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t */
#include <xxhash.h>

#define INT64_LIMIT ((uint64_t)INT64_MAX)

static const uint8_t group[16] = {
	0x6c, 0x1f, 0x3a, 0x2e, 0x9b, 0x4d, 0x4e, 0x55,
	0x8a, 0x10, 0x2f, 0x6d, 0x7c, 0x8e, 0x9a, 0x01,
};

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

/*
 * Recomputes every check in buf as FORMAT.md defines them: the header check,
 * each record's payload hash and check, the trailer check.  Stops where the
 * structure can no longer be followed.  This is how forged segments get
 * valid checksums without going through the encoder.
 */
static void reseal(uint8_t *buf, size_t len)
{
	static const uint8_t tail[8] = { 'A', 'I', 'M', 'J', 'E', 'N', 'D', 0 };
	uint64_t table, prev, plen;
	size_t pos;
	XXH3_state_t st;

	if (len < SEG_HEADER_FIXED)
		return;
	table = get32(buf + 12);
	if (SEG_HEADER_FIXED + table > len)
		return;
	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, buf, 64);
	XXH3_64bits_update(&st, buf + SEG_HEADER_FIXED, (size_t)table);
	prev = XXH3_64bits_digest(&st);
	put64(buf + 64, prev);
	pos = SEG_HEADER_FIXED + (size_t)table;
	while (len - pos >= 8) {
		if (memcmp(buf + pos, tail, 8) == 0) {
			if (len - pos >= SEG_TRAILER_SIZE)
				put64(buf + pos + 48, XXH3_64bits_withSeed(buf + pos, 48, prev));
			return;
		}
		if (len - pos < SEG_RECORD_HEADER)
			return;
		plen = get32(buf + pos + 4);
		if (plen <= len - pos - SEG_RECORD_HEADER)
			put64(buf + pos + 48, XXH3_64bits(buf + pos + SEG_RECORD_HEADER, (size_t)plen));
		prev = XXH3_64bits_withSeed(buf + pos, 56, prev);
		put64(buf + pos + 56, prev);
		if (plen > len - pos - SEG_RECORD_HEADER)
			return;
		pos += SEG_RECORD_HEADER + (size_t)plen;
	}
}

/* ---- record descriptions ---- */

struct spec {
	uint8_t type, flags;
	uint32_t image, aux;
	uint64_t offset, length;
	const char *pl;  /* payload; NULL for none */
	uint32_t plen;   /* 0: strlen(pl) */
};

#define WR(img, off, data) { SEG_WRITE, 0, img, 0, off, sizeof(data) - 1, data, 0 }
#define REN(img, o, n) { SEG_RENAME, 0, img, sizeof(o) - 1, 0, 0, o n, 0 }
#define RENDIR(o, n) { SEG_RENAME, SEG_F_DIR, 0, sizeof(o) - 1, 0, 0, o n, 0 }
#define CREATE(img, name) { SEG_CREATE, 0, img, 0644, 0, 0, name, 0 }
#define UNLINK(img, name) { SEG_UNLINK, 0, img, 0, 0, 0, name, 0 }
#define MAX_RECS 8

static const struct seg_image base_images[] = {
	{ 1, 5, "a.img" },
	{ 2, 9, "dir/b.img" },
	{ 3, 13, "dir/sub/c.img" },
	{ 4, 11, "other/d.img" },
};

static struct seg_header base_header(void)
{
	struct seg_header h = {
		.number = 42, .first_lsn = 1000, .created_ns = 1700000000000000000ULL,
		.image_count = 4, .images = base_images,
	};

	memcpy(h.group, group, 16);
	return h;
}

static struct seg_record from_spec(const struct spec *s)
{
	struct seg_record r = {
		.type = s->type, .flags = s->flags, .image = s->image, .aux = s->aux,
		.offset = s->offset, .length = s->length, .payload = s->pl,
		.payload_len = s->pl ? (s->plen ? s->plen : (uint32_t)strlen(s->pl)) : 0,
		.time_ns = 1700000000123456789ULL,
	};

	return r;
}

/* Records up to the first all-zero one (type 0 alone is a record: the
 * "unknown type 0" case gives it an image). */
static int spec_count(const struct spec *recs)
{
	int n = 0;

	while (n < MAX_RECS && (recs[n].type || recs[n].image))
		n++;
	return n;
}

/* Builds a sealed segment; starts[i] receives record i's offset, starts[n]
 * the trailer's. */
static uint8_t *build(const struct seg_header *h, const struct spec *recs, int n, size_t *len,
		      size_t *starts)
{
	struct seg_builder *b = seg_builder_new(h);
	uint8_t *out = NULL;

	CHECK(b != NULL);
	for (int i = 0; i < n; i++) {
		struct seg_record r = from_spec(&recs[i]);

		if (starts)
			starts[i] = seg_builder_size(b) - SEG_TRAILER_SIZE;
		CHECK(seg_builder_add(b, &r) == h->first_lsn + (uint64_t)i);
	}
	if (starts)
		starts[n] = seg_builder_size(b) - SEG_TRAILER_SIZE;
	CHECK(seg_builder_count(b) == (uint64_t)n);
	CHECK(seg_builder_finish(b, 7, &out, len) == 0);
	seg_builder_free(b);
	return out;
}

/* ---- names, file names, UUIDs ---- */

static void test_name_valid(void)
{
	static const struct { const char *s; size_t len; bool ok; } t[] = {
		{ "a", 0, true }, { "vm1.qcow2", 0, true }, { "dir/sub/x.img", 0, true },
		{ ".hidden", 0, true }, { "...", 0, true }, { "a..b", 0, true },
		{ "a/.b/..c", 0, true }, { "\xc3\xbc.img", 0, true }, { "a b", 0, true },
		{ "-x", 0, true }, { "a\\b", 0, true }, { "~", 0, true },
		{ "", 0, false }, { ".", 0, false }, { "..", 0, false }, { "a/.", 0, false },
		{ "a/..", 0, false }, { "../x", 0, false }, { "./x", 0, false },
		{ "a/../b", 0, false }, { "a/./b", 0, false }, { "a//b", 0, false },
		{ "/abs", 0, false }, { "/etc/passwd", 0, false }, { "a/", 0, false },
		{ "/", 0, false }, { "//", 0, false }, { "a\nb", 0, false }, { "a\tb", 0, false },
		{ "a\x7f", 0, false }, { "\x1f", 0, false }, { "\x01x", 0, false },
		{ "a\0b", 3, false }, { "ab\0", 3, false },
	};
	char buf[5000];

	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
		size_t len = t[i].len ? t[i].len : strlen(t[i].s);

		CHECK_MSG(seg_name_valid(t[i].s, len) == t[i].ok, "seg_name_valid(\"%s\") should be %s",
			  t[i].s, t[i].ok ? "true" : "false");
	}
	/* components of 255 bytes pass, 256 do not, wherever they stand */
	memset(buf, 'c', sizeof buf);
	CHECK(seg_name_valid(buf, 255));
	CHECK(!seg_name_valid(buf, 256));
	buf[3] = '/';
	CHECK(seg_name_valid(buf, 4 + 255));
	CHECK(!seg_name_valid(buf, 4 + 256));
	/* 4095 bytes in all pass and 4096 do not, with every component short */
	memset(buf, 'c', sizeof buf);
	for (size_t i = 100; i < sizeof buf; i += 128)
		buf[i] = '/';
	CHECK(buf[4094] != '/' && buf[4095] != '/');
	CHECK(seg_name_valid(buf, SEG_NAME_MAX));
	CHECK(!seg_name_valid(buf, SEG_NAME_MAX + 1));
}

static void test_file_names(void)
{
	static const struct { const char *s; uint64_t n; } good[] = {
		{ "00000000000000000001.aimj", 1 },
		{ "00000000000000000042.aimj", 42 },
		{ "09223372036854775807.aimj", INT64_MAX },
		{ "18446744073709551609.aimj", UINT64_MAX - 6 },
		{ "18446744073709551615.aimj", UINT64_MAX },
	};
	static const char *const bad[] = {
		"", ".aimj", "00000000000000000000.aimj",   /* 0 is not a segment number */
		"0000000000000000001.aimj", "000000000000000000001.aimj",
		"0000000000000000000a.aimj", "+0000000000000000001.aimj",
		" 0000000000000000001.aimj", "-0000000000000000001.aimj",
		"00000000000000000001.open", "00000000000000000001.aimj.open",
		"00000000000000000001.aim", "00000000000000000001.AIMJ", "00000000000000000001aimjx",
		"00000000000000000001", "99999999999999999999.aimj",   /* overflow */
		"18446744073709551616.aimj", "20000000000000000000.aimj",
		"00000000000000000001.aimj/", "x/00000000000000000001.aimj",
	};
	char buf[SEG_FILE_NAME_LEN + 6];
	uint64_t n;

	seg_file_name(1, SEG_FILE_SUFFIX, buf);
	CHECK(strcmp(buf, "00000000000000000001.aimj") == 0);
	seg_file_name(1234567, SEG_OPEN_SUFFIX, buf);
	CHECK(strcmp(buf, "00000000000001234567.open") == 0);
	seg_file_name(UINT64_MAX, SEG_FILE_SUFFIX, buf);
	CHECK(strcmp(buf, "18446744073709551615.aimj") == 0 && strlen(buf) == SEG_FILE_NAME_LEN);
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		n = 0;
		CHECK_MSG(seg_parse_file_name(good[i].s, &n) == 0 && n == good[i].n,
			  "\"%s\" -> %" PRIu64, good[i].s, n);
		seg_file_name(good[i].n, SEG_FILE_SUFFIX, buf);
		CHECK(strcmp(buf, good[i].s) == 0);
	}
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		n = 77;
		CHECK_MSG(seg_parse_file_name(bad[i], &n) == -EINVAL && n == 77,
			  "\"%s\" should be refused", bad[i]);
	}
	/* names sort in numeric order */
	{
		static const uint64_t order[] = { 1, 2, 9, 10, 99, 100, 1000000, UINT64_MAX };
		char prev[SEG_FILE_NAME_LEN + 6];

		seg_file_name(order[0], SEG_FILE_SUFFIX, prev);
		for (size_t i = 1; i < sizeof order / sizeof order[0]; i++) {
			seg_file_name(order[i], SEG_FILE_SUFFIX, buf);
			CHECK(strcmp(prev, buf) < 0);
			strcpy(prev, buf);
		}
	}
}

static void test_uuid(void)
{
	static const char *const bad[] = {
		"", "6c1f3a2e-9b4d-4e55-8a10-2f6d7c8e9a0", "6c1f3a2e-9b4d-4e55-8a10-2f6d7c8e9a011",
		"6C1F3A2E-9B4D-4E55-8A10-2F6D7C8E9A01",   /* one spelling only: lower case */
		"6c1f3a2e-9b4d-4e55-8a10-2f6d7c8e9a0g", "6c1f3a2e9b4d-4e55-8a10-2f6d7c8e9a01-",
		"6c1f3a2e_9b4d-4e55-8a10-2f6d7c8e9a01", "6c1f3a2e-9b4d-4e558-a10-2f6d7c8e9a01",
		"6c1f3a2e-9b4d-4e55-8a10-2f6d7c8e9a 1", "{6c1f3a2e-9b4d-4e55-8a10-2f6d7c8e9a}",
	};
	uint8_t u[16], zero[16] = { 0 };
	char s[37];

	seg_uuid_format(group, s);
	CHECK(strcmp(s, "6c1f3a2e-9b4d-4e55-8a10-2f6d7c8e9a01") == 0);
	CHECK(seg_uuid_parse(s, u) == 0 && memcmp(u, group, 16) == 0);
	seg_uuid_format(zero, s);
	CHECK(strcmp(s, "00000000-0000-0000-0000-000000000000") == 0);
	memset(u, 0xff, 16);
	seg_uuid_format(u, s);
	CHECK(strcmp(s, "ffffffff-ffff-ffff-ffff-ffffffffffff") == 0);
	CHECK(seg_uuid_parse(s, zero) == 0 && memcmp(zero, u, 16) == 0);
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		CHECK_MSG(seg_uuid_parse(bad[i], u) == -EINVAL, "uuid \"%s\" should be refused", bad[i]);
}

/* ---- layout: the encoder against a byte-by-byte writer of FORMAT.md ---- */

static void test_layout(void)
{
	static const struct seg_image img = { 9, 7, "vm1.img" };
	struct seg_header h = {
		.number = 0x0102030405060708ULL, .first_lsn = 0x1112131415161718ULL,
		.created_ns = 0x2122232425262728ULL, .image_count = 1, .images = &img,
	};
	struct seg_record r = {
		.type = SEG_ZERO, .flags = SEG_F_PUNCH, .image = 9, .lsn = h.first_lsn,
		.offset = 0x3132333435363738ULL, .length = 0x0000000041424344ULL,
		.time_ns = 0x5152535455565758ULL,
	};
	struct seg_trailer t = { .count = 1, .last_lsn = h.first_lsn, .backing_lsn = 5,
				 .sealed_ns = 0x6162636465666768ULL };
	uint8_t enc[512], want[512];
	uint64_t hc, rc, tc;
	size_t hs;
	XXH3_state_t st;

	memcpy(h.group, group, 16);
	CHECK(seg_header_size(&h) == SEG_HEADER_FIXED + 6 + 7);
	hs = seg_header_size(&h);
	memset(enc, 0xee, sizeof enc);
	memset(want, 0xee, sizeof want);

	/* header, field by field */
	memcpy(want, "AIMJSEG", 8);
	put16(want + 8, 1);
	put16(want + 10, 0);
	put32(want + 12, 13);
	memcpy(want + 16, group, 16);
	put64(want + 32, h.number);
	put64(want + 40, h.first_lsn);
	put64(want + 48, h.created_ns);
	put32(want + 56, 1);
	put32(want + 60, 0);
	put32(want + 72, 9);
	put16(want + 76, 7);
	memcpy(want + 78, "vm1.img", 7);
	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, want, 64);
	XXH3_64bits_update(&st, want + 72, 13);
	hc = XXH3_64bits_digest(&st);
	put64(want + 64, hc);
	CHECK(seg_header_encode(&h, enc) == hc);
	CHECK(memcmp(enc, want, hs) == 0);
	CHECK(enc[hs] == 0xee);

	/* record header */
	r.payload_hash = seg_payload_hash(NULL, 0);
	CHECK(r.payload_hash == XXH3_64bits(NULL, 0));
	want[hs + 0] = SEG_ZERO;
	want[hs + 1] = SEG_F_PUNCH;
	put16(want + hs + 2, 0);
	put32(want + hs + 4, 0);
	put64(want + hs + 8, r.lsn);
	put32(want + hs + 16, 9);
	put32(want + hs + 20, 0);
	put64(want + hs + 24, r.offset);
	put64(want + hs + 32, r.length);
	put64(want + hs + 40, r.time_ns);
	put64(want + hs + 48, r.payload_hash);
	rc = XXH3_64bits_withSeed(want + hs, 56, hc);
	put64(want + hs + 56, rc);
	CHECK(seg_record_encode(&r, hc, enc + hs) == rc);
	CHECK(memcmp(enc + hs, want + hs, SEG_RECORD_HEADER) == 0);

	/* trailer */
	memcpy(want + hs + 64, "AIMJEND", 8);
	put64(want + hs + 72, 1);
	put64(want + hs + 80, t.last_lsn);
	put64(want + hs + 88, 5);
	put64(want + hs + 96, t.sealed_ns);
	put64(want + hs + 104, 0);
	tc = XXH3_64bits_withSeed(want + hs + 64, 48, rc);
	put64(want + hs + 112, tc);
	CHECK(seg_trailer_encode(&t, rc, enc + hs + 64) == tc);
	CHECK(memcmp(enc + hs + 64, want + hs + 64, SEG_TRAILER_SIZE) == 0);
	CHECK(enc[hs + 64 + SEG_TRAILER_SIZE] == 0xee);

	/* and the decoder reads back exactly that */
	{
		struct seg_view *v = NULL;
		struct seg_err err;
		struct seg_record got;
		size_t len = hs + 64 + SEG_TRAILER_SIZE;

		CHECK_MSG(seg_view_new(want, len, &v, &err) == 0, "%s", err.msg);
		if (v) {
			CHECK(seg_view_digest(v) == tc);
			CHECK(seg_view_trailer(v)->backing_lsn == 5);
			CHECK(seg_view_trailer(v)->sealed_ns == t.sealed_ns);
			CHECK(seg_view_next(v, &got) == 1);
			CHECK(got.offset == r.offset && got.length == r.length && got.check == rc);
			CHECK(got.file_offset == hs);
			seg_view_free(v);
		}
	}
}

/*
 * The worked example of docs/FORMAT.md, byte for byte (made with
 * `mkseg` from the spec shown there): if this test fails, the document and
 * the code disagree.
 */
static const uint8_t example[] = {
	0x41, 0x49, 0x4d, 0x4a, 0x53, 0x45, 0x47, 0x00, 0x01, 0x00, 0x00, 0x00,
	0x0d, 0x00, 0x00, 0x00, 0x6c, 0x1f, 0x3a, 0x2e, 0x9b, 0x4d, 0x4e, 0x55,
	0x8a, 0x10, 0x2f, 0x6d, 0x7c, 0x8e, 0x9a, 0x01, 0x07, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x65, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x2a, 0x36, 0xfe, 0x9c, 0x97, 0x17, 0x01, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x53, 0x49, 0x31, 0x2c, 0xa0, 0x1a, 0x8e, 0x26,
	0x01, 0x00, 0x00, 0x00, 0x07, 0x00, 0x76, 0x6d, 0x31, 0x2e, 0x69, 0x6d,
	0x67, 0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x65, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x65, 0xf7, 0x53, 0xfe, 0x9c, 0x97,
	0x17, 0xfd, 0xdc, 0x62, 0x5c, 0x55, 0xe8, 0x55, 0x95, 0x22, 0xf0, 0x65,
	0x12, 0xba, 0x38, 0xff, 0xeb, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x05, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x66, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x65, 0xf7, 0x53, 0xfe, 0x9c, 0x97, 0x17, 0xc2, 0x94,
	0xd3, 0x38, 0x05, 0x80, 0x06, 0x2d, 0x8d, 0x1c, 0x3a, 0xb1, 0x5e, 0xdc,
	0xcc, 0x0b, 0x41, 0x49, 0x4d, 0x4a, 0x45, 0x4e, 0x44, 0x00, 0x02, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x66, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x66, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xca,
	0xc4, 0x71, 0xfe, 0x9c, 0x97, 0x17, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0xf9, 0x7f, 0xd3, 0x83, 0x02, 0x14, 0x49, 0xdc,
};

static void test_example(void)
{
	struct seg_view *v = NULL;
	struct seg_err err;
	struct seg_record r;
	char s[37];

	CHECK_MSG(seg_view_new(example, sizeof example, &v, &err) == 0, "%s", err.msg);
	if (!v)
		return;
	seg_uuid_format(seg_view_header(v)->group, s);
	CHECK(strcmp(s, "6c1f3a2e-9b4d-4e55-8a10-2f6d7c8e9a01") == 0);
	CHECK(seg_view_header(v)->number == 7 && seg_view_header(v)->first_lsn == 101);
	CHECK(seg_view_header(v)->image_count == 1);
	CHECK(seg_view_count(v) == 2 && seg_view_last_lsn(v) == 102);
	CHECK(seg_view_trailer(v)->backing_lsn == 102);
	CHECK(seg_view_next(v, &r) == 1 && r.type == SEG_WRITE && r.offset == 4096 &&
	      r.payload_len == 5 && memcmp(r.payload, "hello", 5) == 0);
	CHECK(seg_view_next(v, &r) == 1 && r.type == SEG_FLUSH && r.image == 0);
	CHECK(seg_view_next(v, &r) == 0);
	CHECK(seg_view_digest(v) == get64(example + sizeof example - 8));
	seg_view_free(v);
}

/* ---- round trip of every record type ---- */

static uint8_t big[5000];

static void test_round_trip(void)
{
	static const struct seg_image imgs[] = {
		{ 1, 9, "vm1.qcow2" }, { 2, 13, "disks/vm2.raw" }, { 7, 17, "disks/sub/vm7.img" },
	};
	/* The records, and the names of ids 1, 2, 3, 7 after each one. */
	const struct {
		struct spec s;
		const char *names[4];
	} t[] = {
		{ WR(1, 4096, "hello, world"), { "vm1.qcow2", "disks/vm2.raw", NULL, "disks/sub/vm7.img" } },
		{ { SEG_WRITE, 0, 2, 0, 1ULL << 40, sizeof big, (const char *)big, sizeof big },
		  { "vm1.qcow2", "disks/vm2.raw", NULL, "disks/sub/vm7.img" } },
		{ { SEG_ZERO, SEG_F_PUNCH | SEG_F_KEEP_SIZE, 1, 0, 0, 4096, NULL, 0 },
		  { "vm1.qcow2", "disks/vm2.raw", NULL, "disks/sub/vm7.img" } },
		{ { SEG_ZERO, 0, 2, 0, 8192, 512, NULL, 0 },
		  { "vm1.qcow2", "disks/vm2.raw", NULL, "disks/sub/vm7.img" } },
		{ { SEG_TRUNCATE, 0, 2, 0, 1 << 20, 0, NULL, 0 },
		  { "vm1.qcow2", "disks/vm2.raw", NULL, "disks/sub/vm7.img" } },
		{ { SEG_ALLOC, SEG_F_KEEP_SIZE, 1, 0, 0, 65536, NULL, 0 },
		  { "vm1.qcow2", "disks/vm2.raw", NULL, "disks/sub/vm7.img" } },
		{ { SEG_ALLOC, 0, 7, 0, 512, 512, NULL, 0 },
		  { "vm1.qcow2", "disks/vm2.raw", NULL, "disks/sub/vm7.img" } },
		{ { SEG_FLUSH, 0, 1, 0, 0, 0, NULL, 0 },
		  { "vm1.qcow2", "disks/vm2.raw", NULL, "disks/sub/vm7.img" } },
		{ { SEG_FLUSH, 0, 0, 0, 0, 0, NULL, 0 },
		  { "vm1.qcow2", "disks/vm2.raw", NULL, "disks/sub/vm7.img" } },
		{ CREATE(3, "new.img"), { "vm1.qcow2", "disks/vm2.raw", "new.img", "disks/sub/vm7.img" } },
		{ { SEG_MKDIR, 0, 0, 0755, 0, 0, "snap", 0 },
		  { "vm1.qcow2", "disks/vm2.raw", "new.img", "disks/sub/vm7.img" } },
		{ REN(3, "new.img", "snap/new.img"),
		  { "vm1.qcow2", "disks/vm2.raw", "snap/new.img", "disks/sub/vm7.img" } },
		{ RENDIR("disks", "old-disks"),
		  { "vm1.qcow2", "old-disks/vm2.raw", "snap/new.img", "old-disks/sub/vm7.img" } },
		{ { SEG_RENAME, SEG_F_REPLACE, 1, 9, 0, 0, "vm1.qcow2snap/new.img", 0 },
		  { "snap/new.img", "old-disks/vm2.raw", NULL, "old-disks/sub/vm7.img" } },
		{ { SEG_MARK, 0, 0, 0, 0, 0, "before upgrade \xe2\x9c\x93", 0 },
		  { "snap/new.img", "old-disks/vm2.raw", NULL, "old-disks/sub/vm7.img" } },
		{ UNLINK(2, "old-disks/vm2.raw"),
		  { "snap/new.img", NULL, NULL, "old-disks/sub/vm7.img" } },
		{ { SEG_RMDIR, 0, 0, 0, 0, 0, "empty", 0 },
		  { "snap/new.img", NULL, NULL, "old-disks/sub/vm7.img" } },
		{ CREATE(3, "vm3.img"), { "snap/new.img", NULL, "vm3.img", "old-disks/sub/vm7.img" } },
		{ CREATE(2, "old-disks/vm2.raw"),
		  { "snap/new.img", "old-disks/vm2.raw", "vm3.img", "old-disks/sub/vm7.img" } },
		{ WR(3, 0, "x"), { "snap/new.img", "old-disks/vm2.raw", "vm3.img", "old-disks/sub/vm7.img" } },
		{ { SEG_FLUSH, 0, 3, 0, 0, 0, NULL, 0 },
		  { "snap/new.img", "old-disks/vm2.raw", "vm3.img", "old-disks/sub/vm7.img" } },
		/* resync: tagged records, the consistency brackets and a HASH */
		{ { SEG_SYNC_BEGIN, 0, 0, 2, 0, 0, NULL, 0 },
		  { "snap/new.img", "old-disks/vm2.raw", "vm3.img", "old-disks/sub/vm7.img" } },
		{ { SEG_TRUNCATE, SEG_F_RESYNC, 3, 2, 8192, 0, NULL, 0 },
		  { "snap/new.img", "old-disks/vm2.raw", "vm3.img", "old-disks/sub/vm7.img" } },
		{ { SEG_WRITE, SEG_F_RESYNC, 3, 2, 4096, 3, "abc", 0 },
		  { "snap/new.img", "old-disks/vm2.raw", "vm3.img", "old-disks/sub/vm7.img" } },
		{ { SEG_ZERO, SEG_F_RESYNC | SEG_F_PUNCH | SEG_F_KEEP_SIZE, 3, 2, 0, 4096, NULL, 0 },
		  { "snap/new.img", "old-disks/vm2.raw", "vm3.img", "old-disks/sub/vm7.img" } },
		{ { SEG_HASH, 0, 3, 2, 0, 8192,
		    "\x00\x10\x00\x00\x00\x00\x00\x00" "ABCDEFGH" "IJKLMNOP", 24 },
		  { "snap/new.img", "old-disks/vm2.raw", "vm3.img", "old-disks/sub/vm7.img" } },
		{ { SEG_SYNC_END, 0, 0, 2, 0, 0, NULL, 0 },
		  { "snap/new.img", "old-disks/vm2.raw", "vm3.img", "old-disks/sub/vm7.img" } },
		{ { SEG_SKIP, 0, 0, 3, 0, 0, NULL, 0 },
		  { "snap/new.img", "old-disks/vm2.raw", "vm3.img", "old-disks/sub/vm7.img" } },
	};
	enum { N = sizeof t / sizeof t[0] };
	static const uint32_t ids[4] = { 1, 2, 3, 7 };
	struct seg_header h = {
		.number = 3, .first_lsn = 5000, .created_ns = 1700000000000000000ULL,
		.image_count = 3, .images = imgs,
	};
	struct seg_builder *b;
	struct seg_view *v = NULL;
	struct seg_err err;
	uint8_t *buf = NULL;
	size_t len = 0, pos;
	uint64_t prev;
	bool seen[SEG_TYPE_MAX + 1] = { false };

	for (size_t i = 0; i < sizeof big; i++)
		big[i] = (uint8_t)(i * 7 + 3);
	memcpy(h.group, group, 16);
	b = seg_builder_new(&h);
	CHECK(seg_builder_size(b) == seg_header_size(&h) + SEG_TRAILER_SIZE);
	for (int i = 0; i < N; i++) {
		struct seg_record r = from_spec(&t[i].s);

		r.time_ns = 1700000000000000000ULL + (uint64_t)i;
		CHECK(seg_builder_add(b, &r) == 5000 + (uint64_t)i);
		CHECK(r.lsn == 5000 + (uint64_t)i);
		CHECK(r.payload_hash == seg_payload_hash(r.payload, r.payload_len));
	}
	CHECK(seg_builder_count(b) == N);
	pos = seg_builder_size(b);
	CHECK(seg_builder_finish(b, 5003, &buf, &len) == 0);
	CHECK(len == pos);
	seg_builder_free(b);

	CHECK_MSG(seg_view_new(buf, len, &v, &err) == 0, "%s", err.msg);
	CHECK(err.msg[0] == '\0');
	if (!v)
		goto out;
	/* header */
	CHECK(memcmp(seg_view_header(v)->group, group, 16) == 0);
	CHECK(seg_view_header(v)->number == 3);
	CHECK(seg_view_header(v)->first_lsn == 5000);
	CHECK(seg_view_header(v)->created_ns == 1700000000000000000ULL);
	CHECK(seg_view_header(v)->image_count == 3);
	for (int i = 0; i < 3; i++) {
		const struct seg_image *im = &seg_view_header(v)->images[i];

		CHECK(im->id == imgs[i].id && im->name_len == imgs[i].name_len);
		CHECK(memcmp(im->name, imgs[i].name, im->name_len) == 0);
	}
	/* trailer and totals */
	CHECK(seg_view_sealed(v));
	CHECK(seg_view_trailer(v) != NULL);
	CHECK(seg_view_trailer(v)->count == N);
	CHECK(seg_view_trailer(v)->last_lsn == 5000 + N - 1);
	CHECK(seg_view_trailer(v)->backing_lsn == 5003);
	CHECK(seg_view_trailer(v)->sealed_ns > 1600000000000000000ULL);
	CHECK(seg_view_count(v) == N && seg_view_last_lsn(v) == 5000 + N - 1);
	CHECK(seg_view_size(v) == len && seg_view_bytes(v) == buf);
	CHECK(seg_view_digest(v) == get64(buf + len - 8));
	/* the last record (a FLUSH) has no payload: its check ends right before the trailer */
	CHECK(seg_view_digest(v) ==
	      XXH3_64bits_withSeed(buf + len - SEG_TRAILER_SIZE, 48, get64(buf + len - SEG_TRAILER_SIZE - 8)));
	/* before any record: the header's table */
	CHECK(strcmp(seg_view_image_name(v, 1), "vm1.qcow2") == 0);
	CHECK(seg_view_image_name(v, 3) == NULL && seg_view_image_name(v, 0) == NULL);

	for (int pass = 0; pass < 2; pass++) {
		struct seg_record r;
		int i = 0;

		pos = seg_header_size(&h);
		prev = get64(buf + 64);
		while (seg_view_next(v, &r) == 1) {
			const struct spec *s = &t[i].s;
			struct seg_record want = from_spec(s);

			if (i >= N) {
				CHECK(!"too many records");
				break;
			}
			seen[r.type] = true;
			CHECK_MSG(r.type == s->type && r.flags == s->flags && r.image == s->image &&
				  r.aux == s->aux && r.offset == s->offset && r.length == s->length,
				  "record %d", i);
			CHECK(r.lsn == 5000 + (uint64_t)i);
			CHECK(r.time_ns == 1700000000000000000ULL + (uint64_t)i);
			CHECK(r.payload_len == want.payload_len);
			CHECK(r.payload_len == 0 || memcmp(r.payload, want.payload, r.payload_len) == 0);
			CHECK(r.payload == buf + pos + SEG_RECORD_HEADER);
			CHECK(r.payload_hash == seg_payload_hash(want.payload, want.payload_len));
			CHECK(r.file_offset == pos);
			CHECK(r.check == XXH3_64bits_withSeed(buf + pos, 56, prev));
			CHECK(r.check == get64(buf + pos + 56));
			for (int k = 0; k < 4; k++) {
				const char *got = seg_view_image_name(v, ids[k]);

				CHECK_MSG(t[i].names[k] ? got && strcmp(got, t[i].names[k]) == 0 : !got,
					  "record %d: id %u is %s, want %s", i, ids[k], got ? got : "unbound",
					  t[i].names[k] ? t[i].names[k] : "unbound");
			}
			if (r.type == SEG_RENAME) {
				char o[SEG_NAME_MAX + 1], nn[SEG_NAME_MAX + 1];

				seg_rename_names(&r, o, nn);
				CHECK(strlen(o) == r.aux && strlen(nn) == r.payload_len - r.aux);
				CHECK(memcmp(o, s->pl, r.aux) == 0 && strcmp(nn, s->pl + r.aux) == 0);
			} else if (r.type == SEG_HASH) {
				CHECK(seg_hash_block(&r) == 4096);
				CHECK(seg_hash_at(&r, 0) == 0x4847464544434241ULL);
				CHECK(seg_hash_at(&r, 1) == 0x504f4e4d4c4b4a49ULL);
			} else if (r.payload_len && r.type != SEG_WRITE) {
				char name[SEG_NAME_MAX + 1];

				seg_record_name(&r, name);
				CHECK(strcmp(name, s->pl) == 0);
			}
			prev = r.check;
			pos += SEG_RECORD_HEADER + r.payload_len;
			i++;
		}
		CHECK(i == N);
		CHECK(pos == len - SEG_TRAILER_SIZE);
		CHECK(seg_view_next(v, &r) == 0);
		/* rewinding restores the header's namespace */
		seg_view_rewind(v);
		CHECK(strcmp(seg_view_image_name(v, 1), "vm1.qcow2") == 0);
		CHECK(strcmp(seg_view_image_name(v, 2), "disks/vm2.raw") == 0);
		CHECK(seg_view_image_name(v, 3) == NULL);
	}
	for (int ty = 1; ty <= SEG_TYPE_MAX; ty++) {
		CHECK_MSG(seen[ty], "type %s not covered", seg_type_name((uint8_t)ty));
		CHECK(strcmp(seg_type_name((uint8_t)ty), "UNKNOWN") != 0);
	}
	CHECK(strcmp(seg_type_name(0), "UNKNOWN") == 0 && strcmp(seg_type_name(16), "UNKNOWN") == 0);
	CHECK(strcmp(seg_type_name(SEG_WRITE), "WRITE") == 0);

	/* the same bytes through the recovery decoder: sealed, whole */
	seg_view_free(v);
	v = NULL;
	{
		size_t valid = 0;

		CHECK(seg_view_new_partial(buf, len, &v, &valid, &err) == 0);
		CHECK(v && seg_view_sealed(v) && valid == len && seg_view_count(v) == N);
	}
out:
	seg_view_free(v);
	free(buf);
}

static void test_empty(void)
{
	struct seg_header h = { .number = 1, .first_lsn = 1 };
	struct seg_view *v = NULL;
	struct seg_record r;
	struct seg_err err;
	struct seg_builder *b;
	uint8_t *buf = NULL;
	size_t len = 0, valid = 0;

	memcpy(h.group, group, 16);
	b = seg_builder_new(&h);
	CHECK(seg_builder_count(b) == 0);
	CHECK(seg_builder_finish(b, 0, &buf, &len) == 0);
	seg_builder_free(b);
	CHECK(len == SEG_HEADER_FIXED + SEG_TRAILER_SIZE);
	CHECK_MSG(seg_view_new(buf, len, &v, &err) == 0, "%s", err.msg);
	if (v) {
		CHECK(seg_view_count(v) == 0 && seg_view_last_lsn(v) == 0);
		CHECK(seg_view_trailer(v)->count == 0 && seg_view_trailer(v)->last_lsn == 0);
		CHECK(seg_view_header(v)->image_count == 0);
		CHECK(seg_view_next(v, &r) == 0);
		CHECK(seg_view_digest(v) ==
		      XXH3_64bits_withSeed(buf + SEG_HEADER_FIXED, 48, get64(buf + 64)));
		seg_view_free(v);
	}
	/* unsealed and empty: the header alone is a valid prefix */
	v = NULL;
	CHECK(seg_view_new_partial(buf, SEG_HEADER_FIXED, &v, &valid, &err) == 0);
	if (v) {
		CHECK(!seg_view_sealed(v) && seg_view_trailer(v) == NULL);
		CHECK(valid == SEG_HEADER_FIXED && seg_view_count(v) == 0 && seg_view_last_lsn(v) == 0);
		CHECK(seg_view_digest(v) == get64(buf + 64));
		seg_view_free(v);
	}
	CHECK(seg_view_new(buf, SEG_HEADER_FIXED, &v, &err) == -EBADMSG);
	CHECK(strstr(err.msg, "not sealed") != NULL);
	free(buf);
}

/* ---- the precheck agrees with the full check ---- */

/*
 * For any bytes, a precheck fed them (in pieces of one byte, odd sizes,
 * a record header's size, just under a page, all at once) and then
 * seg_view_new_prechecked must give what seg_view_new gives: the same
 * answer, message and blamed offset, or the same records and digest.
 */
static void same_as_full(const uint8_t *buf, size_t len, const char *what)
{
	static const size_t pieces[] = { 1, 7, 64, 4095, SIZE_MAX };
	struct seg_view *full = NULL;
	struct seg_err ferr, perr;
	int fr;

	memset(&ferr, 0, sizeof ferr);
	fr = seg_view_new(buf, len, &full, &ferr);
	for (size_t i = 0; i < sizeof pieces / sizeof pieces[0]; i++) {
		struct seg_precheck *p = seg_precheck_new();
		struct seg_view *v = NULL;
		int r;

		CHECK(p != NULL);
		if (!p)
			break;
		for (size_t at = 0; at < len;) {
			size_t n = len - at < pieces[i] ? len - at : pieces[i];

			seg_precheck_feed(p, buf + at, n);
			at += n;
		}
		memset(&perr, 0, sizeof perr);
		r = seg_view_new_prechecked(buf, len, p, &v, &perr);
		CHECK_MSG(r == fr, "%s, pieces of %zu: prechecked %d, full %d", what, pieces[i], r, fr);
		if (r < 0 && fr < 0)
			CHECK_MSG(strcmp(perr.msg, ferr.msg) == 0 && perr.offset == ferr.offset,
				  "%s, pieces of %zu: \"%s\" at %" PRIu64 ", full: \"%s\" at %" PRIu64,
				  what, pieces[i], perr.msg, perr.offset, ferr.msg, ferr.offset);
		if (r == 0 && fr == 0)
			CHECK_MSG(seg_view_count(v) == seg_view_count(full) &&
				  seg_view_digest(v) == seg_view_digest(full) &&
				  seg_view_size(v) == seg_view_size(full),
				  "%s, pieces of %zu: a different view", what, pieces[i]);
		seg_view_free(v);
		seg_precheck_free(p);
	}
	seg_view_free(full);
}

/* ---- blind damage ---- */

/* A small multi-record segment, and where each of its parts starts. */
static const struct spec small_recs[] = {
	WR(1, 512, "twenty bytes of data"),
	CREATE(5, "e.img"),
	REN(5, "e.img", "dir/e.img"),
	{ SEG_ZERO, SEG_F_PUNCH, 2, 0, 0, 4096, NULL, 0 },
	{ SEG_FLUSH, 0, 0, 0, 0, 0, NULL, 0 },
	{ SEG_MARK, 0, 0, 0, 0, 0, "m", 0 },
};
#define SMALL_N ((int)(sizeof small_recs / sizeof small_recs[0]))

static int part_of(const size_t *starts, int n, size_t pos)
{
	for (int k = 0; k < n; k++)
		if (pos < starts[k + 1])
			return k;
	return n; /* the trailer */
}

/* Refused whole, and the recovery decoder keeps exactly the records before
 * the damaged one. */
static void check_damaged(const uint8_t *buf, size_t len, const size_t *starts, int n,
			  size_t damaged_at, const char *what)
{
	struct seg_view *v = NULL;
	struct seg_err err;
	size_t valid = 0;
	int k = part_of(starts, n, damaged_at);
	int r;

	same_as_full(buf, len, what);
	memset(&err, 0, sizeof err);
	r = seg_view_new(buf, len, &v, &err);
	CHECK_MSG(r == -EBADMSG && v == NULL, "%s: accepted", what);
	CHECK_MSG(err.msg[0] != '\0', "%s: no message", what);
	if (r == 0) {
		seg_view_free(v);
		return;
	}
	if (damaged_at < starts[0])
		CHECK_MSG(err.offset <= 64, "%s: blamed offset %" PRIu64, what, err.offset);
	else
		CHECK_MSG(err.offset == starts[k], "%s: blamed offset %" PRIu64 ", part starts at %zu",
			  what, err.offset, starts[k]);

	v = NULL;
	r = seg_view_new_partial(buf, len, &v, &valid, &err);
	if (damaged_at < starts[0]) {
		CHECK_MSG(r == -EBADMSG && err.msg[0], "%s: damaged header accepted", what);
		if (r == 0)
			seg_view_free(v);
		return;
	}
	CHECK_MSG(r == 0, "%s: recovery refused: %s", what, err.msg);
	if (r < 0)
		return;
	CHECK_MSG(seg_view_count(v) == (uint64_t)k && valid == starts[k] && !seg_view_sealed(v),
		  "%s: recovery kept %" PRIu64 " records, %zu bytes; want %d, %zu", what,
		  seg_view_count(v), valid, k, starts[k]);
	seg_view_free(v);
}

static void test_bit_flips(void)
{
	struct seg_header h = base_header();
	size_t starts[SMALL_N + 1], len;
	uint8_t *buf = build(&h, small_recs, SMALL_N, &len, starts);
	uint8_t *copy = malloc(len);
	char what[64];

	CHECK(len < 1024);
	for (size_t i = 0; i < len; i++) {
		for (int bit = 0; bit < 8; bit++) {
			memcpy(copy, buf, len);
			copy[i] ^= (uint8_t)(1u << bit);
			snprintf(what, sizeof what, "bit %d of byte %zu", bit, i);
			check_damaged(copy, len, starts, SMALL_N, i, what);
		}
	}
	/* whole bytes too, and a byte's worth of damage in each part */
	for (size_t i = 0; i < len; i++) {
		memcpy(copy, buf, len);
		copy[i] = (uint8_t)~copy[i];
		snprintf(what, sizeof what, "inverted byte %zu", i);
		check_damaged(copy, len, starts, SMALL_N, i, what);
	}
	free(copy);
	free(buf);
}

static void test_truncation(void)
{
	struct seg_header h = base_header();
	size_t starts[SMALL_N + 1], len;
	uint8_t *buf = build(&h, small_recs, SMALL_N, &len, starts);

	for (size_t cut = 0; cut < len; cut++) {
		uint8_t *copy = malloc(cut ? cut : 1); /* exact size, so ASan sees overreads */
		struct seg_view *v = NULL;
		struct seg_err err;
		size_t valid = 0;
		int whole = 0, r;

		memcpy(copy, buf, cut);
		same_as_full(copy, cut, "truncated");
		memset(&err, 0, sizeof err);
		r = seg_view_new(copy, cut, &v, &err);
		CHECK_MSG(r == -EBADMSG && err.msg[0], "cut at %zu accepted", cut);
		if (r == 0)
			seg_view_free(v);
		v = NULL;
		r = seg_view_new_partial(copy, cut, &v, &valid, &err);
		if (cut < starts[0]) {
			CHECK_MSG(r == -EBADMSG && err.msg[0], "cut at %zu: header accepted", cut);
		} else {
			while (whole < SMALL_N && starts[whole + 1] <= cut)
				whole++;
			CHECK_MSG(r == 0 && seg_view_count(v) == (uint64_t)whole &&
				  valid == starts[whole] && !seg_view_sealed(v),
				  "cut at %zu: want %d records, %zu bytes", cut, whole, starts[whole]);
			if (r == 0) {
				struct seg_record rec;
				int n = 0;

				while (seg_view_next(v, &rec) == 1)
					n++;
				CHECK(n == whole);
				CHECK(seg_view_last_lsn(v) == h.first_lsn + (uint64_t)whole - 1);
			}
		}
		if (r == 0)
			seg_view_free(v);
		free(copy);
	}
	free(buf);
}

static void test_appended(void)
{
	static const size_t extra[] = { 1, 7, 8, 56, 64, 4096 };
	struct seg_header h = base_header();
	size_t starts[SMALL_N + 1], len;
	uint8_t *buf = build(&h, small_recs, SMALL_N, &len, starts);

	for (size_t i = 0; i < sizeof extra / sizeof extra[0] + 2; i++) {
		size_t add = i < sizeof extra / sizeof extra[0] ? extra[i] : i == 6 ? SEG_TRAILER_SIZE : len;
		uint8_t *copy = calloc(1, len + add);
		struct seg_view *v = NULL;
		struct seg_err err;
		size_t valid = 0;

		memcpy(copy, buf, len);
		if (i == 6)	/* the trailer twice */
			memcpy(copy + len, buf + len - SEG_TRAILER_SIZE, SEG_TRAILER_SIZE);
		else if (i == 7) /* two segments back to back */
			memcpy(copy + len, buf, len);
		same_as_full(copy, len + add, "appended");
		CHECK(seg_view_new(copy, len + add, &v, &err) == -EBADMSG);
		CHECK_MSG(strstr(err.msg, "stray bytes after the trailer"), "%s", err.msg);
		CHECK(err.offset == len - SEG_TRAILER_SIZE);
		/* recovery: the trailer is not trusted, the records are */
		CHECK(seg_view_new_partial(copy, len + add, &v, &valid, &err) == 0);
		if (v) {
			CHECK(!seg_view_sealed(v) && seg_view_count(v) == SMALL_N);
			CHECK(valid == len - SEG_TRAILER_SIZE);
			seg_view_free(v);
		}
		free(copy);
	}
	free(buf);
}

/* ---- forged segments: valid checksums, bad content ---- */

static void expect_refused(uint8_t *buf, size_t len, const char *what, const char *msg,
			   uint64_t at)
{
	struct seg_view *v = NULL;
	struct seg_err err;
	int r;

	same_as_full(buf, len, what);
	memset(&err, 0, sizeof err);
	r = seg_view_new(buf, len, &v, &err);
	CHECK_MSG(r == -EBADMSG, "%s: accepted", what);
	if (r == 0) {
		seg_view_free(v);
		return;
	}
	CHECK_MSG(strstr(err.msg, msg) != NULL, "%s: message \"%s\", want \"%s\"", what, err.msg, msg);
	CHECK_MSG(err.offset == at, "%s: offset %" PRIu64 ", want %" PRIu64, what, err.offset, at);
}

enum mutation {
	M_NONE,
	M_LSN_GAP,      /* bad record's LSN one too high */
	M_LSN_REPEAT,   /* ... one too low */
	M_RESERVED,     /* record bytes 2..3 not zero */
	M_PLEN_HUGE,    /* payload_len far past the end */
	M_PLEN_MAX,     /* payload_len over SEG_PAYLOAD_MAX */
	M_PLEN_TRAILER, /* payload_len swallows the trailer */
};

/*
 * Builds recs, damages the last one as m says, reseals, and checks that the
 * segment is refused with msg pointing at that record (or accepted whole if
 * msg is NULL), and that recovery keeps exactly the records before it.
 */
static void forge_case(const char *what, const char *msg, const struct spec *recs,
		       enum mutation m)
{
	struct seg_header h = base_header();
	int n = spec_count(recs), bad = n - 1;
	size_t starts[MAX_RECS + 1], len, valid = 0;
	uint8_t *buf, *rec;
	struct seg_view *v = NULL;
	struct seg_err err;
	int r;

	buf = build(&h, recs, n, &len, starts);
	rec = buf + starts[bad];
	switch (m) {
	case M_NONE:
		break;
	case M_LSN_GAP:
		put64(rec + 8, get64(rec + 8) + 1);
		break;
	case M_LSN_REPEAT:
		put64(rec + 8, get64(rec + 8) - 1);
		break;
	case M_RESERVED:
		rec[3] = 1;
		break;
	case M_PLEN_HUGE:
		put32(rec + 4, 1u << 20);
		break;
	case M_PLEN_MAX:
		put32(rec + 4, SEG_PAYLOAD_MAX + 1);
		break;
	case M_PLEN_TRAILER:
		put32(rec + 4, get32(rec + 4) + SEG_TRAILER_SIZE);
		break;
	}
	reseal(buf, len);
	if (msg) {
		expect_refused(buf, len, what, msg, starts[bad]);
		r = seg_view_new_partial(buf, len, &v, &valid, &err);
		CHECK_MSG(r == 0 && seg_view_count(v) == (uint64_t)bad && valid == starts[bad],
			  "%s: recovery kept %" PRIu64 " records", what, r ? 0 : seg_view_count(v));
		if (r == 0)
			seg_view_free(v);
	} else {
		r = seg_view_new(buf, len, &v, &err);
		CHECK_MSG(r == 0, "%s: refused: %s", what, err.msg);
		if (r == 0) {
			struct seg_record rr;
			int k = 0;

			CHECK(seg_view_count(v) == (uint64_t)n);
			while (seg_view_next(v, &rr) == 1)
				k++;
			CHECK(k == n);
			seg_view_free(v);
		}
	}
	free(buf);
}

static void test_forged_records(void)
{
	static char longlabel[257], longname[SEG_NAME_MAX + 2];
	/* "dir" then a 4086-byte directory name; the images of dir/ under its
	 * first 4085 bytes (4095 bytes for dir/sub/c.img, the longest name) */
	static char dirlong[3 + 4086 + 1], dirlong_b[4085 + 6 + 1], dirlong_c[4085 + 10 + 1];
	/* framing: a record damaged after encoding, then resealed */
	static const struct {
		const char *what, *msg;
		enum mutation m;
		struct spec recs[MAX_RECS];
	} mt[] = {
		{ "LSN gap", "where 1001 was expected", M_LSN_GAP, { WR(1, 0, "x"), WR(1, 1, "y") } },
		{ "LSN repeat", "LSN 1000 where 1001", M_LSN_REPEAT, { WR(1, 0, "x"), WR(1, 1, "y") } },
		{ "first LSN wrong", "LSN 1001 where 1000", M_LSN_GAP, { WR(1, 0, "x") } },
		{ "reserved record bytes", "reserved field is not zero", M_RESERVED, { WR(1, 0, "x") } },
		{ "payload past end", "runs past the end", M_PLEN_HUGE, { WR(1, 0, "x"), WR(1, 0, "y") } },
		{ "payload over the limit", "runs past the end", M_PLEN_MAX, { WR(1, 0, "x") } },
		{ "payload over the trailer", "inconsistent lengths", M_PLEN_TRAILER, { WR(1, 0, "x") } },
	};
	/* content: records as encoded */
	static const struct {
		const char *what;
		const char *msg; /* NULL: must be accepted */
		struct spec recs[MAX_RECS];
	} t[] = {
		{ "unknown type 0", "unknown record type 0", { WR(1, 0, "x"), { 0, 0, 1, 0, 0, 0, NULL, 0 } } },
		{ "unknown type 16", "unknown record type 16", { { 16, 0, 1, 0, 0, 0, NULL, 0 } } },
		{ "SKIP with image", "SKIP record is malformed", { { SEG_SKIP, 0, 1, 0, 0, 0, NULL, 0 } } },
		{ "WRITE resync without destination", "inconsistent",
		  { { SEG_WRITE, SEG_F_RESYNC, 1, 0, 0, 1, "x", 0 } } },
		{ "WRITE destination without resync", "inconsistent",
		  { { SEG_WRITE, 0, 1, 3, 0, 1, "x", 0 } } },
		{ "ALLOC resync", "unknown flags", { { SEG_ALLOC, SEG_F_RESYNC, 1, 1, 0, 512, NULL, 0 } } },
		{ "TRUNCATE resync without destination", "TRUNCATE record is malformed",
		  { { SEG_TRUNCATE, SEG_F_RESYNC, 1, 0, 5, 0, NULL, 0 } } },
		{ "SYNC_BEGIN destination 0", "SYNC_BEGIN record is malformed",
		  { { SEG_SYNC_BEGIN, 0, 0, 0, 0, 0, NULL, 0 } } },
		{ "SYNC_END with image", "SYNC_END record is malformed",
		  { { SEG_SYNC_END, 0, 1, 1, 0, 0, NULL, 0 } } },
		{ "HASH short payload", "HASH record is malformed",
		  { { SEG_HASH, 0, 1, 0, 0, 4096, "\x00\x10\x00", 3 } } },
		{ "HASH block size 1000", "bad block size 1000",
		  { { SEG_HASH, 0, 1, 0, 0, 4096, "\xe8\x03\x00\x00\x00\x00\x00\x00" "ABCDEFGH", 16 } } },
		{ "HASH block size 32 MiB", "bad block size",
		  { { SEG_HASH, 0, 1, 0, 0, 4096, "\x00\x00\x00\x02\x00\x00\x00\x00" "ABCDEFGH", 16 } } },
		{ "HASH reserved field", "HASH record's reserved field is not zero",
		  { { SEG_HASH, 0, 1, 0, 0, 4096, "\x00\x10\x00\x00\x01\x00\x00\x00" "ABCDEFGH", 16 } } },
		{ "HASH missing a hash", "one hash per block",
		  { { SEG_HASH, 0, 1, 0, 0, 8192, "\x00\x10\x00\x00\x00\x00\x00\x00" "ABCDEFGH", 16 } } },
		{ "HASH unbound image", "not bound",
		  { { SEG_HASH, 0, 99, 0, 0, 4096, "\x00\x10\x00\x00\x00\x00\x00\x00" "ABCDEFGH", 16 } } },
		{ "unknown type 255", "unknown record type 255", { { 255, 0, 0, 0, 0, 0, NULL, 0 } } },
		/* WRITE */
		{ "WRITE flags", "inconsistent lengths or flags", { { SEG_WRITE, 1, 1, 0, 0, 1, "x", 0 } } },
		{ "WRITE aux", "inconsistent lengths or flags", { { SEG_WRITE, 0, 1, 1, 0, 1, "x", 0 } } },
		{ "WRITE length != payload", "inconsistent lengths", { { SEG_WRITE, 0, 1, 0, 0, 5, "abc", 0 } } },
		{ "WRITE length < payload", "inconsistent lengths", { { SEG_WRITE, 0, 1, 0, 0, 2, "abc", 0 } } },
		{ "WRITE empty", "inconsistent lengths", { { SEG_WRITE, 0, 1, 0, 0, 0, NULL, 0 } } },
		{ "WRITE at INT64_MAX", "out of range", { WR(1, INT64_MAX, "x") } },
		{ "WRITE end past INT64_MAX", "out of range", { WR(1, INT64_MAX - 2, "xyz") } },
		{ "WRITE offset 2^63", "out of range", { WR(1, 1ULL << 63, "x") } },
		{ "WRITE offset wraps", "out of range", { WR(1, UINT64_MAX - 1, "xyz") } },
		{ "WRITE to unbound id", "names image 9, which is not bound", { WR(9, 0, "x") } },
		{ "WRITE to id 0", "names image 0, which is not bound", { WR(0, 0, "x") } },
		{ "WRITE after UNLINK", "not bound", { UNLINK(1, "a.img"), WR(1, 0, "x") } },
		{ "WRITE to a replaced image", "names image 2, which is not bound",
		  { { SEG_RENAME, SEG_F_REPLACE, 1, 5, 0, 0, "a.imgdir/b.img", 0 }, WR(2, 0, "x") } },
		/* ZERO, ALLOC, TRUNCATE */
		{ "ZERO unknown flag", "ZERO record has unknown flags", { { SEG_ZERO, 4, 1, 0, 0, 1, NULL, 0 } } },
		{ "ZERO high flag", "unknown flags", { { SEG_ZERO, 0x80, 1, 0, 0, 1, NULL, 0 } } },
		{ "ZERO empty", "ZERO record has a bad range", { { SEG_ZERO, 0, 1, 0, 0, 0, NULL, 0 } } },
		{ "ZERO overflow", "bad range", { { SEG_ZERO, 0, 1, 0, INT64_MAX, 1, NULL, 0 } } },
		{ "ZERO huge", "bad range", { { SEG_ZERO, 0, 1, 0, 0, 1ULL << 63, NULL, 0 } } },
		{ "ZERO payload", "bad range", { { SEG_ZERO, 0, 1, 0, 0, 1, "x", 0 } } },
		{ "ZERO aux", "bad range", { { SEG_ZERO, 0, 1, 1, 0, 1, NULL, 0 } } },
		{ "ZERO unbound", "not bound", { { SEG_ZERO, 0, 9, 0, 0, 1, NULL, 0 } } },
		{ "ALLOC punch", "ALLOC record has unknown flags", { { SEG_ALLOC, SEG_F_PUNCH, 1, 0, 0, 1, NULL, 0 } } },
		{ "ALLOC empty", "ALLOC record has a bad range", { { SEG_ALLOC, 0, 1, 0, 5, 0, NULL, 0 } } },
		{ "ALLOC unbound", "not bound", { { SEG_ALLOC, 0, 0, 0, 0, 1, NULL, 0 } } },
		{ "TRUNCATE flags", "TRUNCATE record is malformed", { { SEG_TRUNCATE, 2, 1, 0, 0, 0, NULL, 0 } } },
		{ "TRUNCATE past INT64_MAX", "malformed", { { SEG_TRUNCATE, 0, 1, 0, 1ULL << 63, 0, NULL, 0 } } },
		{ "TRUNCATE length", "malformed", { { SEG_TRUNCATE, 0, 1, 0, 0, 1, NULL, 0 } } },
		{ "TRUNCATE payload", "malformed", { { SEG_TRUNCATE, 0, 1, 0, 0, 0, "x", 0 } } },
		{ "TRUNCATE aux", "malformed", { { SEG_TRUNCATE, 0, 1, 1, 0, 0, NULL, 0 } } },
		{ "TRUNCATE unbound", "TRUNCATE record names image 8", { { SEG_TRUNCATE, 0, 8, 0, 0, 0, NULL, 0 } } },
		/* FLUSH, MARK, MKDIR, RMDIR */
		{ "FLUSH flags", "FLUSH record is malformed", { { SEG_FLUSH, 1, 0, 0, 0, 0, NULL, 0 } } },
		{ "FLUSH offset", "malformed", { { SEG_FLUSH, 0, 0, 0, 1, 0, NULL, 0 } } },
		{ "FLUSH length", "malformed", { { SEG_FLUSH, 0, 0, 0, 0, 1, NULL, 0 } } },
		{ "FLUSH aux", "malformed", { { SEG_FLUSH, 0, 0, 1, 0, 0, NULL, 0 } } },
		{ "FLUSH payload", "malformed", { { SEG_FLUSH, 0, 0, 0, 0, 0, "x", 0 } } },
		{ "FLUSH unbound", "FLUSH record names unknown image 9", { { SEG_FLUSH, 0, 9, 0, 0, 0, NULL, 0 } } },
		{ "MARK empty", "MARK record is malformed", { { SEG_MARK, 0, 0, 0, 0, 0, NULL, 0 } } },
		{ "MARK 256 bytes", "MARK record is malformed", { { SEG_MARK, 0, 0, 0, 0, 0, longlabel, 256 } } },
		{ "MARK newline", "control characters", { { SEG_MARK, 0, 0, 0, 0, 0, "a\nb", 0 } } },
		{ "MARK NUL", "control characters", { { SEG_MARK, 0, 0, 0, 0, 0, "a\0b", 3 } } },
		{ "MARK DEL", "control characters", { { SEG_MARK, 0, 0, 0, 0, 0, "\x7f", 0 } } },
		{ "MARK image", "malformed", { { SEG_MARK, 0, 1, 0, 0, 0, "m", 0 } } },
		{ "MARK flags", "malformed", { { SEG_MARK, 1, 0, 0, 0, 0, "m", 0 } } },
		{ "MARK aux", "malformed", { { SEG_MARK, 0, 0, 1, 0, 0, "m", 0 } } },
		{ "MKDIR image", "MKDIR record is malformed", { { SEG_MKDIR, 0, 1, 0755, 0, 0, "d", 0 } } },
		{ "MKDIR flags", "MKDIR record is malformed", { { SEG_MKDIR, 1, 0, 0755, 0, 0, "d", 0 } } },
		{ "MKDIR offset", "MKDIR record is malformed", { { SEG_MKDIR, 0, 0, 0755, 1, 0, "d", 0 } } },
		{ "MKDIR ../x", "MKDIR record has an unsafe name", { { SEG_MKDIR, 0, 0, 0755, 0, 0, "../x", 0 } } },
		{ "MKDIR empty", "unsafe name", { { SEG_MKDIR, 0, 0, 0755, 0, 0, NULL, 0 } } },
		{ "RMDIR aux", "RMDIR record is malformed", { { SEG_RMDIR, 0, 0, 1, 0, 0, "d", 0 } } },
		{ "RMDIR length", "RMDIR record is malformed", { { SEG_RMDIR, 0, 0, 0, 0, 1, "d", 0 } } },
		{ "RMDIR /", "RMDIR record has an unsafe name", { { SEG_RMDIR, 0, 0, 0, 0, 0, "/", 0 } } },
		{ "RMDIR ..", "unsafe name", { { SEG_RMDIR, 0, 0, 0, 0, 0, "..", 0 } } },
		/* CREATE */
		{ "CREATE bound id", "CREATE record reuses a bound id or name", { CREATE(1, "new.img") } },
		{ "CREATE bound name", "reuses a bound id or name", { CREATE(5, "dir/b.img") } },
		{ "CREATE twice", "reuses", { CREATE(5, "e.img"), CREATE(6, "e.img") } },
		{ "CREATE id 0", "CREATE record is malformed", { CREATE(0, "new.img") } },
		{ "CREATE flags", "malformed", { { SEG_CREATE, 1, 5, 0644, 0, 0, "e", 0 } } },
		{ "CREATE length", "malformed", { { SEG_CREATE, 0, 5, 0644, 0, 1, "e", 0 } } },
		{ "CREATE ../x", "CREATE record has an unsafe name", { CREATE(5, "../x") } },
		{ "CREATE /etc/passwd", "unsafe name", { CREATE(5, "/etc/passwd") } },
		{ "CREATE a/../../x", "unsafe name", { CREATE(5, "a/../../x") } },
		{ "CREATE a//b", "unsafe name", { CREATE(5, "a//b") } },
		{ "CREATE trailing /", "unsafe name", { CREATE(5, "a/") } },
		{ "CREATE empty name", "unsafe name", { { SEG_CREATE, 0, 5, 0644, 0, 0, NULL, 0 } } },
		{ "CREATE NUL in name", "unsafe name", { { SEG_CREATE, 0, 5, 0644, 0, 0, "a\0b", 3 } } },
		{ "CREATE newline", "unsafe name", { CREATE(5, "a\nb") } },
		{ "CREATE 4096-byte name", "unsafe name", { { SEG_CREATE, 0, 5, 0644, 0, 0, longname, 4096 } } },
		/* UNLINK */
		{ "UNLINK wrong name", "UNLINK record does not match image 1's name", { UNLINK(1, "a.im") } },
		{ "UNLINK longer name", "does not match", { UNLINK(1, "a.imgg") } },
		{ "UNLINK other's name", "does not match", { UNLINK(1, "dir/b.img") } },
		{ "UNLINK unbound", "does not match image 9", { UNLINK(9, "x") } },
		{ "UNLINK twice", "does not match", { UNLINK(1, "a.img"), UNLINK(1, "a.img") } },
		{ "UNLINK empty", "does not match", { { SEG_UNLINK, 0, 1, 0, 0, 0, NULL, 0 } } },
		{ "UNLINK flags", "UNLINK record is malformed", { { SEG_UNLINK, 1, 1, 0, 0, 0, "a.img", 0 } } },
		{ "UNLINK aux", "UNLINK record is malformed", { { SEG_UNLINK, 0, 1, 5, 0, 0, "a.img", 0 } } },
		/* RENAME */
		{ "RENAME wrong old", "RENAME record does not match image 1's name", { REN(1, "b.img", "c.img") } },
		{ "RENAME unbound", "does not match image 9", { REN(9, "a.img", "c.img") } },
		{ "RENAME aux 0", "RENAME record is malformed", { { SEG_RENAME, 0, 1, 0, 0, 0, "a.img", 0 } } },
		{ "RENAME no new name", "malformed", { { SEG_RENAME, 0, 1, 5, 0, 0, "a.img", 0 } } },
		{ "RENAME aux past payload", "malformed", { { SEG_RENAME, 0, 1, 9, 0, 0, "a.img", 0 } } },
		{ "RENAME unknown flag", "malformed", { { SEG_RENAME, 0x10, 1, 5, 0, 0, "a.imgc", 0 } } },
		{ "RENAME offset", "malformed", { { SEG_RENAME, 0, 1, 5, 1, 0, "a.imgc", 0 } } },
		{ "RENAME to ../x", "RENAME record has an unsafe name", { REN(1, "a.img", "../x") } },
		{ "RENAME to /etc/passwd", "unsafe name", { REN(1, "a.img", "/etc/passwd") } },
		{ "RENAME from ../a.img", "unsafe name", { REN(1, "../a.img", "b") } },
		{ "RENAME old name split", "does not match", { REN(1, "a.i", "mgx") } },
		{ "dir RENAME into itself", "RENAME moves a directory into itself", { RENDIR("dir", "dir/x") } },
		{ "dir RENAME deeper into itself", "into itself", { RENDIR("dir", "dir/sub/deeper") } },
		{ "dir RENAME with an image", "directory RENAME names an image",
		  { { SEG_RENAME, SEG_F_DIR, 2, 3, 0, 0, "dirnew", 0 } } },
		{ "dir RENAME onto images", "directory RENAME collides", { RENDIR("dir", "other") } },
		{ "dir RENAME onto its parent", "collides", { RENDIR("dir/sub", "dir") } },
		{ "dir RENAME onto a file", "collides", { RENDIR("dir", "a.img") } },
		{ "dir RENAME to /abs", "unsafe name", { RENDIR("dir", "/abs") } },
		{ "dir RENAME from ..", "unsafe name", { RENDIR("..", "x") } },
		/* dir/sub/c.img under a 4086-byte directory name would be 4096 bytes */
		{ "dir RENAME past the name limit", "makes an image name longer than 4095 bytes",
		  { { SEG_RENAME, SEG_F_DIR, 0, 3, 0, 0, dirlong, 3 + 4086 } } },
		{ "WRITE after dir RENAME by old name's id", "names image 7",
		  { RENDIR("dir", "moved"), WR(7, 0, "x") } },

		/* edges that are fine */
		{ "WRITE ending at INT64_MAX", NULL, { WR(1, INT64_MAX - 3, "xyz") } },
		{ "TRUNCATE to INT64_MAX", NULL, { { SEG_TRUNCATE, 0, 1, 0, INT64_MAX, 0, NULL, 0 } } },
		{ "TRUNCATE to 0", NULL, { { SEG_TRUNCATE, 0, 1, 0, 0, 0, NULL, 0 } } },
		{ "ZERO up to INT64_MAX", NULL, { { SEG_ZERO, 3, 1, 0, 1, INT64_MAX - 1, NULL, 0 } } },
		{ "MARK 255 bytes", NULL, { { SEG_MARK, 0, 0, 0, 0, 0, longlabel, 255 } } },
		{ "CREATE 4095-byte name", NULL, { { SEG_CREATE, 0, 5, 0644, 0, 0, longname, 4095 } } },
		{ "CREATE with any mode", NULL, { { SEG_CREATE, 0, 5, 0xffffffff, 0, 0, "e", 0 } } },
		{ "CREATE with an inode number", NULL, { { SEG_CREATE, 0, 5, 0644, 1234567, 0, "e", 0 } } },
		{ "id and name free again after UNLINK", NULL,
		  { UNLINK(1, "a.img"), CREATE(1, "a.img"), WR(1, 0, "x"), UNLINK(1, "a.img"),
		    CREATE(9, "a.img"), WR(9, 0, "y") } },
		{ "RENAME to itself", NULL, { REN(1, "a.img", "a.img"), WR(1, 0, "x") } },
		{ "RENAME chain", NULL, { REN(1, "a.img", "b"), REN(1, "b", "c/d"), WR(1, 0, "x"),
					   UNLINK(1, "c/d") } },
		{ "dir RENAME to a sibling with a common prefix", NULL,
		  { RENDIR("dir", "dir2"), WR(2, 0, "x"), UNLINK(2, "dir2/b.img"),
		    UNLINK(3, "dir2/sub/c.img") } },
		{ "dir RENAME up a level", NULL,
		  { RENDIR("dir/sub", "sub"), UNLINK(3, "sub/c.img"), UNLINK(2, "dir/b.img") } },
		{ "dir RENAME onto itself", NULL, { RENDIR("dir", "dir"), UNLINK(2, "dir/b.img") } },
		{ "dir RENAME of an empty directory", NULL, { RENDIR("empty", "dir/sub/x") } },
		{ "dir RENAME up to the name limit", NULL,
		  { { SEG_RENAME, SEG_F_DIR, 0, 3, 0, 0, dirlong, 3 + 4085 }, UNLINK(2, dirlong_b),
		    UNLINK(3, dirlong_c) } },
		{ "dir RENAME back and forth", NULL,
		  { RENDIR("dir", "x"), RENDIR("x", "dir"), UNLINK(3, "dir/sub/c.img") } },
		{ "FLUSH of each image", NULL,
		  { { SEG_FLUSH, 0, 1, 0, 0, 0, NULL, 0 }, { SEG_FLUSH, 0, 4, 0, 0, 0, NULL, 0 } } },
		{ "MKDIR and RMDIR with modes", NULL,
		  { { SEG_MKDIR, 0, 0, 0700, 0, 0, "new/dir", 0 }, { SEG_RMDIR, 0, 0, 0, 0, 0, "new/dir", 0 } } },
	};

	memset(longlabel, 'L', sizeof longlabel);
	memset(longname, 'n', sizeof longname);
	for (size_t i = 100; i < sizeof longname; i += 200)
		longname[i] = '/';
	memcpy(dirlong, "dir", 3);
	for (size_t i = 0; i < 4086; i++)
		dirlong[3 + i] = i % 200 == 100 ? '/' : 'd';
	snprintf(dirlong_b, sizeof dirlong_b, "%.4085s/b.img", dirlong + 3);
	snprintf(dirlong_c, sizeof dirlong_c, "%.4085s/sub/c.img", dirlong + 3);
	for (size_t c = 0; c < sizeof mt / sizeof mt[0]; c++)
		forge_case(mt[c].what, mt[c].msg, mt[c].recs, mt[c].m);
	for (size_t c = 0; c < sizeof t / sizeof t[0]; c++)
		forge_case(t[c].what, t[c].msg, t[c].recs, M_NONE);
}

/* A valid empty segment whose header fields and image table are given raw,
 * resealed so that only the rule under test can refuse it. */
static size_t raw_segment(uint8_t *buf, const void *table, uint32_t table_len, uint32_t count)
{
	size_t p = SEG_HEADER_FIXED + table_len;

	memset(buf, 0, p + SEG_TRAILER_SIZE);
	memcpy(buf, "AIMJSEG", 8);
	put16(buf + 8, 1);
	put32(buf + 12, table_len);
	memcpy(buf + 16, group, 16);
	put64(buf + 32, 1);
	put64(buf + 40, 1);
	put32(buf + 56, count);
	if (table_len)
		memcpy(buf + SEG_HEADER_FIXED, table, table_len);
	memcpy(buf + p, "AIMJEND", 8);
	put64(buf + p + 8, 0);
	put64(buf + p + 16, 0);
	reseal(buf, p + SEG_TRAILER_SIZE);
	return p + SEG_TRAILER_SIZE;
}

static void test_forged_header(void)
{
	/* header fields: patched into a valid empty segment, then resealed */
	static const struct {
		const char *what, *msg;
		size_t off, size;
		uint64_t value;
		uint64_t at;
		bool reseal;
	} f[] = {
		{ "wrong magic", "bad magic", 0, 1, 'B', 0, true },
		{ "wrong magic, last byte", "bad magic", 7, 1, 'x', 0, true },
		{ "version 0", "unsupported format version 0", 8, 2, 0, 8, true },
		{ "version 2", "unsupported format version 2", 8, 2, 2, 8, true },
		{ "version 2, old checksum", "unsupported format version 2", 8, 2, 2, 8, false },
		{ "version 256", "unsupported format version 256", 8, 2, 256, 8, true },
		{ "header flags", "reserved header fields are not zero", 10, 2, 1, 10, true },
		{ "header reserved", "reserved header fields are not zero", 60, 4, 1u << 31, 60, true },
		{ "segment number 0", "segment number 0", 32, 8, 0, 32, true },
		{ "first LSN 0", "first LSN 0 is out of range", 40, 8, 0, 40, true },
		{ "first LSN 2^63", "out of range", 40, 8, 1ULL << 63, 40, true },
		{ "table past end", "runs past the end", 12, 4, 1000, 12, true },
		{ "table over 16 MiB", "runs past the end", 12, 4, SEG_TABLE_MAX + 1, 12, true },
		{ "table length 2^32-1", "runs past the end", 12, 4, UINT32_MAX, 12, true },
		{ "header check", "header checksum mismatch", 48, 1, 0x55, 64, false },
		{ "image count, no table", "image count 1 does not fit a 0-byte table", 56, 4, 1, 56, true },
		{ "trailer count", "trailer says 1 records", SEG_HEADER_FIXED + 8, 8, 1,
		  SEG_HEADER_FIXED, true },
		{ "trailer last LSN", "trailer says 0 records up to LSN 1", SEG_HEADER_FIXED + 16, 8, 1,
		  SEG_HEADER_FIXED, true },
		{ "trailer reserved", "trailer reserved field is not zero", SEG_HEADER_FIXED + 40, 8, 1,
		  SEG_HEADER_FIXED, true },
		{ "trailer reserved, high byte", "reserved", SEG_HEADER_FIXED + 47, 1, 0x80,
		  SEG_HEADER_FIXED, true },
		{ "trailer check", "trailer checksum mismatch", SEG_HEADER_FIXED + 24, 1, 1,
		  SEG_HEADER_FIXED, false },
	};
	/* image tables, raw */
	static const struct {
		const char *what, *msg;
		const char *table;
		uint32_t len, count;
		uint64_t at; /* 0: SEG_HEADER_FIXED */
	} tb[] = {
		{ "id 0", "image table entry 0 has id 0", "\0\0\0\0\1\0a", 7, 1, 0 },
		{ "unsafe ../x", "image table entry 0 has an unsafe name", "\1\0\0\0\4\0../x", 10, 1, 0 },
		{ "unsafe /etc/passwd", "unsafe name", "\1\0\0\0\13\0/etc/passwd", 17, 1, 0 },
		{ "empty name", "unsafe name", "\1\0\0\0\0\0\0", 7, 1, 0 },
		{ "NUL in name", "unsafe name", "\1\0\0\0\3\0a\0b", 9, 1, 0 },
		{ "repeated id", "image table entry 1 repeats an id or a name",
		  "\1\0\0\0\1\0a\1\0\0\0\1\0b", 14, 2, SEG_HEADER_FIXED + 7 },
		{ "repeated name", "entry 1 repeats", "\1\0\0\0\1\0a\2\0\0\0\1\0a", 14, 2,
		  SEG_HEADER_FIXED + 7 },
		{ "name past the table", "image table entry 0 runs past the table",
		  "\1\0\0\0\12\0abc", 9, 1, 0 },
		{ "second name past the table", "entry 1 runs past the table",
		  "\1\0\0\0\1\0a\2\0\0\0\11\0bcdefgh", 20, 2, SEG_HEADER_FIXED + 7 },
		{ "entry truncated", "image table entry 1 is truncated",
		  "\1\0\0\0\12\0abcdefghij\7\7\7\7", 20, 2, SEG_HEADER_FIXED + 16 },
		{ "stray table bytes", "image table has 7 stray bytes",
		  "\1\0\0\0\1\0a\2\0\0\0\1\0b", 14, 1, SEG_HEADER_FIXED + 7 },
		{ "count over table", "image count 3 does not fit a 14-byte table",
		  "\1\0\0\0\1\0a\2\0\0\0\1\0b", 14, 3, 56 },
		{ "table without count", "image table has 7 stray bytes", "\1\0\0\0\1\0a", 7, 0,
		  SEG_HEADER_FIXED },
	};
	uint8_t buf[512];
	size_t len;

	for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
		len = raw_segment(buf, NULL, 0, 0);
		for (size_t k = 0; k < f[i].size; k++)
			buf[f[i].off + k] = f[i].size == 1 ? (uint8_t)f[i].value
							   : (uint8_t)(f[i].value >> (8 * k));
		if (f[i].reseal)
			reseal(buf, len);
		expect_refused(buf, len, f[i].what, f[i].msg, f[i].at);
	}
	for (size_t i = 0; i < sizeof tb / sizeof tb[0]; i++) {
		len = raw_segment(buf, tb[i].table, tb[i].len, tb[i].count);
		expect_refused(buf, len, tb[i].what, tb[i].msg, tb[i].at ? tb[i].at : SEG_HEADER_FIXED);
	}
	/* sanity: the unpatched forms are accepted */
	{
		struct seg_view *v = NULL;
		struct seg_err err;

		len = raw_segment(buf, "\1\0\0\0\1\0a\2\0\0\0\1\0b", 14, 2);
		CHECK_MSG(seg_view_new(buf, len, &v, &err) == 0, "%s", err.msg);
		if (v) {
			CHECK(strcmp(seg_view_image_name(v, 2), "b") == 0);
			seg_view_free(v);
		}
	}
	/* the trailer must be whole, present and last */
	{
		struct seg_header h = base_header();
		size_t starts[SMALL_N + 1];
		uint8_t *b = build(&h, small_recs, SMALL_N, &len, starts);

		expect_refused(b, len - SEG_TRAILER_SIZE, "no trailer", "ends without a trailer",
			       len - SEG_TRAILER_SIZE);
		expect_refused(b, len - 10, "trailer cut", "trailer is truncated", len - SEG_TRAILER_SIZE);
		expect_refused(b, len - 50, "trailer cut short", "record header is truncated",
			       len - SEG_TRAILER_SIZE);
		free(b);
	}
}

/* LSNs stop at 2^63 - 1, and the recovery decoder stops before the record
 * that would pass it. */
static void test_lsn_limit(void)
{
	static const struct spec recs[] = { WR(1, 0, "a"), WR(1, 1, "b") };
	struct seg_header h = base_header();
	size_t starts[3], len, valid = 0;
	struct seg_view *v = NULL;
	struct seg_err err;
	uint8_t *buf;

	h.first_lsn = INT64_MAX - 1;
	buf = build(&h, recs, 2, &len, starts);
	CHECK_MSG(seg_view_new(buf, len, &v, &err) == 0, "%s", err.msg);
	if (v) {
		CHECK(seg_view_last_lsn(v) == INT64_MAX);
		seg_view_free(v);
	}
	free(buf);
	h.first_lsn = INT64_MAX;
	buf = build(&h, recs, 2, &len, starts);
	expect_refused(buf, len, "LSN past 2^63-1", "LSN overflow", starts[1]);
	v = NULL;
	CHECK(seg_view_new_partial(buf, len, &v, &valid, &err) == 0);
	if (v) {
		CHECK_MSG(seg_view_count(v) == 1 && valid == starts[1],
			  "recovery kept %" PRIu64 " records", seg_view_count(v));
		CHECK(seg_view_last_lsn(v) == INT64_MAX);
		seg_view_free(v);
	}
	free(buf);
}

/* ---- recovery of unfinished segments ---- */

static void test_partial(void)
{
	struct seg_header h = base_header();
	size_t starts[SMALL_N + 1], len;
	uint8_t *buf = build(&h, small_recs, SMALL_N, &len, starts);
	uint64_t checks[SMALL_N + 1];
	struct seg_view *v = NULL;
	struct seg_err err;
	size_t valid;

	checks[0] = get64(buf + 64);
	for (int k = 0; k < SMALL_N; k++)
		checks[k + 1] = get64(buf + starts[k] + 56);

	for (int k = 0; k < SMALL_N; k++) {
		size_t rec_len = starts[k + 1] - starts[k];
		size_t cuts[] = { starts[k] + 1, starts[k] + 8, starts[k] + 63, starts[k] + 64,
				  starts[k] + rec_len - 1 };

		for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
			if (cuts[c] >= starts[k + 1] || cuts[c] <= starts[k])
				continue;
			v = NULL;
			valid = 0;
			CHECK(seg_view_new_partial(buf, cuts[c], &v, &valid, &err) == 0);
			if (!v)
				continue;
			CHECK_MSG(seg_view_count(v) == (uint64_t)k && valid == starts[k],
				  "cut inside record %d at %zu: %" PRIu64 " records, valid %zu", k,
				  cuts[c], seg_view_count(v), valid);
			CHECK(!seg_view_sealed(v) && seg_view_trailer(v) == NULL);
			CHECK(seg_view_digest(v) == checks[k]);
			CHECK(seg_view_last_lsn(v) == h.first_lsn + (uint64_t)k - 1);
			CHECK(seg_view_size(v) == valid);
			seg_view_free(v);
		}
		/* cut exactly after record k */
		v = NULL;
		CHECK(seg_view_new_partial(buf, starts[k + 1], &v, &valid, &err) == 0);
		if (v) {
			CHECK(seg_view_count(v) == (uint64_t)k + 1 && valid == starts[k + 1]);
			seg_view_free(v);
		}
	}
	/* sealed */
	v = NULL;
	CHECK(seg_view_new_partial(buf, len, &v, &valid, &err) == 0);
	if (v) {
		CHECK(seg_view_sealed(v) && valid == len && seg_view_count(v) == SMALL_N);
		CHECK(seg_view_trailer(v) && seg_view_trailer(v)->count == SMALL_N);
		seg_view_free(v);
	}
	/* garbage where the trailer should be ends the log there */
	{
		static const uint8_t fill[] = { 0x00, 0xff, 0x41 };

		for (size_t f = 0; f < sizeof fill; f++) {
			uint8_t *copy = malloc(len + 200);
			struct seg_record r;
			int n = 0;

			memcpy(copy, buf, len - SEG_TRAILER_SIZE);
			memset(copy + len - SEG_TRAILER_SIZE, fill[f], 256);
			v = NULL;
			CHECK(seg_view_new_partial(copy, len + 200, &v, &valid, &err) == 0);
			if (v) {
				CHECK(!seg_view_sealed(v) && seg_view_count(v) == SMALL_N);
				CHECK(valid == len - SEG_TRAILER_SIZE);
				while (seg_view_next(v, &r) == 1)
					n++;
				CHECK(n == SMALL_N);
				seg_view_free(v);
			}
			CHECK(seg_view_new(copy, len + 200, &v, &err) == -EBADMSG && err.msg[0]);
			free(copy);
		}
	}
	/* a damaged header is not a torn tail: refused */
	{
		uint8_t *copy = malloc(len);

		memcpy(copy, buf, len);
		copy[20] ^= 1;
		CHECK(seg_view_new_partial(copy, len, &v, &valid, &err) == -EBADMSG);
		CHECK(strstr(err.msg, "header checksum mismatch") != NULL);
		free(copy);
	}
	free(buf);
}

/* ---- scale: hostile shapes must stay cheap ---- */

static void test_scale(void)
{
	struct seg_header h = base_header();
	struct seg_builder *b;
	struct seg_view *v = NULL;
	struct seg_err err;
	uint8_t *buf = NULL;
	size_t len;
	char names[2][32];

	/* one image renamed 20000 times, and one id created and unlinked as often */
	b = seg_builder_new(&h);
	snprintf(names[0], sizeof names[0], "a.img");
	for (int i = 0; i < 20000; i++) {
		char pl[64];
		struct seg_record r = { .type = SEG_RENAME, .image = 1, .payload = pl };

		snprintf(names[(i + 1) % 2], sizeof names[0], "gen%d", i);
		r.aux = (uint32_t)strlen(names[i % 2]);
		r.payload_len = (uint32_t)snprintf(pl, sizeof pl, "%s%s", names[i % 2], names[(i + 1) % 2]);
		seg_builder_add(b, &r);
	}
	for (int i = 0; i < 20000; i++) {
		char pl[32];
		struct seg_record r = { .type = SEG_CREATE, .image = 77, .aux = 0600, .payload = pl };

		r.payload_len = (uint32_t)snprintf(pl, sizeof pl, "tmp%d", i);
		seg_builder_add(b, &r);
		r.type = SEG_UNLINK;
		r.aux = 0;
		seg_builder_add(b, &r);
	}
	CHECK(seg_builder_finish(b, 0, &buf, &len) == 0);
	seg_builder_free(b);
	CHECK_MSG(seg_view_new(buf, len, &v, &err) == 0, "%s", err.msg);
	if (v) {
		struct seg_record r;

		while (seg_view_next(v, &r) == 1)
			;
		CHECK(strcmp(seg_view_image_name(v, 1), "gen19999") == 0);
		CHECK(seg_view_image_name(v, 77) == NULL);
		seg_view_free(v);
	}
	free(buf);

	/* many images times many directory renames: refused once over budget */
	{
		enum { IMAGES = 70000, RENAMES = 1000 };
		struct seg_image *imgs = calloc(IMAGES, sizeof *imgs);
		char *namebuf = malloc(IMAGES * 16);

		for (int i = 0; i < IMAGES; i++) {
			imgs[i].id = (uint32_t)i + 1;
			imgs[i].name = namebuf + i * 16;
			imgs[i].name_len = (uint16_t)snprintf(namebuf + i * 16, 16, "d/i%d", i);
		}
		h.images = imgs;
		h.image_count = IMAGES;
		b = seg_builder_new(&h);
		for (int i = 0; i < RENAMES; i++) {
			struct seg_record r = { .type = SEG_RENAME, .flags = SEG_F_DIR, .aux = 1,
						.payload = "xy", .payload_len = 2 };

			seg_builder_add(b, &r);
		}
		CHECK(seg_builder_finish(b, 0, &buf, &len) == 0);
		seg_builder_free(b);
		v = NULL;
		CHECK(seg_view_new(buf, len, &v, &err) == -EBADMSG);
		CHECK_MSG(strstr(err.msg, "too many directory renames"), "%s", err.msg);
		free(buf);
		free(imgs);
		free(namebuf);
	}
}

/* ---- files ---- */

static void test_open(void)
{
	struct seg_header h = base_header();
	char path[] = "/tmp/test_segment.XXXXXX";
	struct seg_view *v = NULL;
	struct seg_err err;
	size_t starts[SMALL_N + 1], len;
	uint8_t *buf = build(&h, small_recs, SMALL_N, &len, starts);
	int fd = mkstemp(path);

	CHECK(fd >= 0);
	if (fd < 0) {
		free(buf);
		return;
	}
	CHECK(seg_view_open(path, &v, &err) == -EBADMSG && strstr(err.msg, "empty file"));
	CHECK(write(fd, buf, len - 1) == (ssize_t)len - 1);
	CHECK(seg_view_open(path, &v, &err) == -EBADMSG && strstr(err.msg, "truncated"));
	CHECK(write(fd, buf + len - 1, 1) == 1);
	CHECK_MSG(seg_view_open(path, &v, &err) == 0, "%s", err.msg);
	if (v) {
		struct seg_record r;

		CHECK(seg_view_count(v) == SMALL_N && seg_view_size(v) == len);
		CHECK(memcmp(seg_view_bytes(v), buf, len) == 0);
		CHECK(seg_view_next(v, &r) == 1 && r.payload_len == 20);
		seg_view_free(v);
	}
	close(fd);
	unlink(path);
	CHECK(seg_view_open(path, &v, &err) == -ENOENT && err.msg[0]);
	CHECK(seg_view_open("/tmp", &v, &err) == -EINVAL && strstr(err.msg, "not a regular file"));
	free(buf);
}

/*
 * seg_view_open_own skips only the payloads' hashes: a payload byte changed
 * passes it (and fails seg_view_open), any other damage fails both.
 * seg_view_open_fd validates like seg_view_open and leaves fd open.
 */
static void test_open_own_and_fd(void)
{
	struct seg_header h = base_header();
	char path[] = "/tmp/test_segment.XXXXXX";
	struct seg_view *v = NULL;
	struct seg_err err;
	struct seg_record r;
	size_t starts[SMALL_N + 1], len, payload;
	uint8_t *buf = build(&h, small_recs, SMALL_N, &len, starts);
	uint8_t byte;
	int fd = mkstemp(path);

	CHECK(fd >= 0);
	if (fd < 0) {
		free(buf);
		return;
	}
	CHECK(pwrite(fd, buf, len, 0) == (ssize_t)len);
	CHECK_MSG(seg_view_open_own(path, &v, &err) == 0, "%s", err.msg);
	seg_view_free(v);
	v = NULL;
	CHECK_MSG(seg_view_open_fd(fd, &v, &err) == 0, "%s", err.msg);
	if (v) {
		struct seg_view *mem = NULL;
		int other = open("/dev/null", O_RDONLY | O_CLOEXEC);

		CHECK(seg_view_count(v) == SMALL_N && seg_view_size(v) == len);
		/* the file it maps, and no other; a view over memory has none */
		CHECK(seg_view_same_file(v, fd) && !seg_view_same_file(v, other));
		CHECK(seg_view_new(buf, len, &mem, &err) == 0 && !seg_view_same_file(mem, fd));
		seg_view_free(mem);
		close(other);
		seg_view_free(v);
		v = NULL;
	}
	CHECK(pread(fd, &byte, 1, 0) == 1); /* still open */
	{
		int fd2 = seg_open_file(path, &err);

		CHECK(fd2 >= 0);
		if (fd2 >= 0) {
			CHECK_MSG(seg_view_open_fd(fd2, &v, &err) == 0, "%s", err.msg);
			seg_view_free(v);
			v = NULL;
			close(fd2);
		}
	}

	/* the first record's payload: after its header */
	payload = starts[0] + SEG_RECORD_HEADER;
	byte = (uint8_t)(buf[payload] ^ 0x40);
	CHECK(pwrite(fd, &byte, 1, (off_t)payload) == 1);
	CHECK(seg_view_open(path, &v, &err) == -EBADMSG && strstr(err.msg, "payload checksum"));
	CHECK(seg_view_open_fd(fd, &v, &err) == -EBADMSG && strstr(err.msg, "payload checksum"));
	CHECK_MSG(seg_view_open_own(path, &v, &err) == 0, "%s", err.msg);
	if (v) {
		CHECK(seg_view_count(v) == SMALL_N);
		CHECK(seg_view_next(v, &r) == 1 && ((const uint8_t *)r.payload)[0] == byte);
		seg_view_free(v);
		v = NULL;
	}

	/* a record header's byte: the check chain still catches it */
	CHECK(pwrite(fd, buf + payload, 1, (off_t)payload) == 1);
	byte = (uint8_t)(buf[starts[1] + 8] ^ 1);
	CHECK(pwrite(fd, &byte, 1, (off_t)starts[1] + 8) == 1);
	CHECK(seg_view_open_own(path, &v, &err) == -EBADMSG &&
	      strstr(err.msg, "record 1: checksum mismatch"));
	/* and the trailer's */
	CHECK(pwrite(fd, buf + starts[1] + 8, 1, (off_t)starts[1] + 8) == 1);
	byte = (uint8_t)(buf[len - 1] ^ 1);
	CHECK(pwrite(fd, &byte, 1, (off_t)len - 1) == 1);
	CHECK(seg_view_open_own(path, &v, &err) == -EBADMSG && strstr(err.msg, "trailer"));
	close(fd);
	unlink(path);
	CHECK(seg_view_open_own(path, &v, &err) == -ENOENT && err.msg[0]);
	CHECK(seg_open_file(path, &err) == -ENOENT && strstr(err.msg, "cannot open"));
	free(buf);
}

/*
 * What the precheck saves and what it does not trust: the payloads it
 * hashed are not hashed again (so a byte changed after it was fed is not
 * seen: the receiver feeds it the very bytes it stores), a payload it saw
 * damaged is refused as the full check refuses it, and bytes other than
 * the ones it was fed, or only part of them, get the full check.
 */
static void test_precheck(void)
{
	struct seg_header h = base_header();
	size_t starts[SMALL_N + 1], len, olen, payload;
	uint8_t *buf = build(&h, small_recs, SMALL_N, &len, starts);
	uint8_t *copy = malloc(len);
	struct seg_precheck *p = seg_precheck_new();
	struct seg_view *v = NULL;
	struct seg_err err;
	uint8_t *other;

	CHECK(p && copy);
	if (!p || !copy)
		goto out;
	same_as_full(buf, len, "intact");
	payload = starts[0] + SEG_RECORD_HEADER;
	memcpy(copy, buf, len);
	seg_precheck_feed(p, copy, len);
	copy[payload] ^= 0x40; /* after it was fed */
	CHECK(seg_view_new(copy, len, &v, &err) == -EBADMSG && strstr(err.msg, "payload checksum"));
	CHECK_MSG(seg_view_new_prechecked(copy, len, p, &v, &err) == 0, "%s", err.msg);
	if (v) {
		CHECK(seg_view_count(v) == SMALL_N && seg_view_sealed(v));
		seg_view_free(v);
		v = NULL;
	}
	/* fed the damage: refused, at the record */
	seg_precheck_free(p);
	p = seg_precheck_new();
	CHECK(p != NULL);
	if (!p)
		goto out;
	seg_precheck_feed(p, copy, len);
	CHECK(seg_view_new_prechecked(copy, len, p, &v, &err) == -EBADMSG &&
	      strstr(err.msg, "record 0: payload checksum mismatch") && err.offset == starts[0]);
	/* fed all but the last byte (the precheck reaches the trailer, but it
	 * was not fed the bytes given): the full check */
	seg_precheck_free(p);
	p = seg_precheck_new();
	CHECK(p != NULL);
	if (!p)
		goto out;
	seg_precheck_feed(p, buf, len - 1);
	CHECK(seg_view_new_prechecked(copy, len, p, &v, &err) == -EBADMSG &&
	      strstr(err.msg, "payload checksum"));
	/* fed another segment: the full check of the one given */
	other = build(&h, small_recs + 1, SMALL_N - 1, &olen, NULL);
	seg_precheck_free(p);
	p = seg_precheck_new();
	CHECK(p != NULL && other != NULL);
	if (!p || !other) {
		free(other);
		goto out;
	}
	seg_precheck_feed(p, other, olen);
	CHECK(olen < len);
	CHECK(seg_view_new_prechecked(copy, len, p, &v, &err) == -EBADMSG);
	/* fed a segment laid out as the one given, but whose last payload (the
	 * MARK's label) differs and is sealed as such: the walk's records do
	 * not say what the precheck hashed, so the damaged one is refused */
	memcpy(copy, other, olen);
	copy[olen - SEG_TRAILER_SIZE - 1] = 'n';
	reseal(copy, olen);
	seg_precheck_free(p);
	p = seg_precheck_new();
	if (p) {
		seg_precheck_feed(p, copy, olen);
		CHECK_MSG(seg_view_new_prechecked(copy, olen, p, &v, &err) == 0, "%s", err.msg);
		seg_view_free(v);
		v = NULL;
		memcpy(copy, other, olen);
		copy[olen - SEG_TRAILER_SIZE - 1] = 'n';
		CHECK(seg_view_new_prechecked(copy, olen, p, &v, &err) == -EBADMSG &&
		      strstr(err.msg, "payload checksum"));
	}
	free(other);
	/* no precheck at all */
	CHECK(seg_view_new_prechecked(buf, len, NULL, &v, &err) == 0);
	seg_view_free(v);
out:
	seg_precheck_free(p);
	free(copy);
	free(buf);
}

/* A file opened as a segment is judged as the same bytes in memory are:
 * the file's payloads are hashed from pread before the mapped walk, so
 * every kind of damage must still get the same answer, message and
 * offset.  Each inverted byte, a truncation every 7 bytes, appended
 * bytes. */
static void open_as_memory(int fd, const uint8_t *buf, size_t len, const char *what)
{
	struct seg_view *fv = NULL, *mv = NULL;
	struct seg_err ferr, merr;
	int fr, mr;

	CHECK(ftruncate(fd, 0) == 0 && pwrite(fd, buf, len, 0) == (ssize_t)len);
	memset(&ferr, 0, sizeof ferr);
	memset(&merr, 0, sizeof merr);
	fr = seg_view_open_fd(fd, &fv, &ferr);
	mr = seg_view_new(buf, len, &mv, &merr);
	if (len == 0) /* an empty file is refused before it is read */
		CHECK(fr == -EBADMSG && strstr(ferr.msg, "empty"));
	else
		CHECK_MSG(fr == mr && strcmp(ferr.msg, merr.msg) == 0 && ferr.offset == merr.offset,
			  "%s: file %d \"%s\" at %" PRIu64 ", memory %d \"%s\" at %" PRIu64, what,
			  fr, ferr.msg, ferr.offset, mr, merr.msg, merr.offset);
	if (fr == 0 && mr == 0)
		CHECK(seg_view_count(fv) == seg_view_count(mv) &&
		      seg_view_digest(fv) == seg_view_digest(mv));
	seg_view_free(fv);
	seg_view_free(mv);
}

static void test_open_same_as_memory(void)
{
	struct seg_header h = base_header();
	char path[] = "/tmp/test_segment.XXXXXX";
	size_t starts[SMALL_N + 1], len;
	uint8_t *buf = build(&h, small_recs, SMALL_N, &len, starts);
	uint8_t *copy = calloc(1, len + 64);
	struct seg_precheck *p = seg_precheck_new();
	char what[64];
	int fd = mkstemp(path);

	CHECK(fd >= 0 && copy && p);
	if (fd < 0 || !copy || !p)
		goto out;
	open_as_memory(fd, buf, len, "intact");
	for (size_t i = 0; i < len; i++) {
		memcpy(copy, buf, len);
		copy[i] = (uint8_t)~copy[i];
		snprintf(what, sizeof what, "inverted byte %zu", i);
		open_as_memory(fd, copy, len, what);
	}
	for (size_t cut = 0; cut < len; cut += 7) {
		snprintf(what, sizeof what, "cut at %zu", cut);
		open_as_memory(fd, buf, cut, what);
	}
	memcpy(copy, buf, len);
	open_as_memory(fd, copy, len + 64, "64 bytes appended");
	/* a file shorter than it is said to be, before its trailer */
	CHECK(ftruncate(fd, (off_t)(len / 2)) == 0);
	CHECK(seg_precheck_read(p, fd, len) == -ENODATA);
out:
	seg_precheck_free(p);
	if (fd >= 0) {
		close(fd);
		unlink(path);
	}
	free(copy);
	free(buf);
}

/*
 * seg_view_open_fd_prechecked, as the receiver opens its temporary file:
 * the precheck fed as the bytes were written stands for the payloads'
 * hashes (a payload byte changed in the file afterwards is not read
 * again: the skip is real); a precheck of other bytes, or of some of
 * them, gets the full check of the file; header damage is refused with
 * the memory decoder's message either way.  seg_view_prechecked tells
 * which check was made; a precheck's copy goes on on its own.
 */
static void test_open_fd_prechecked(void)
{
	struct seg_header h = base_header();
	char path[] = "/tmp/test_segment.XXXXXX";
	size_t starts[SMALL_N + 1], len;
	uint8_t *buf = build(&h, small_recs, SMALL_N, &len, starts);
	struct seg_view *v = NULL, *mv = NULL;
	struct seg_precheck *p = seg_precheck_new(), *half = seg_precheck_new(), *rest;
	struct seg_err err, merr;
	size_t payload = starts[0] + SEG_RECORD_HEADER;
	uint8_t byte;
	int fd = mkstemp(path);

	CHECK(fd >= 0 && p && half);
	if (fd < 0 || !p || !half)
		goto out;
	seg_precheck_feed(p, buf, len);
	seg_precheck_feed(half, buf, len / 2);
	CHECK(pwrite(fd, buf, len, 0) == (ssize_t)len);
	CHECK_MSG(seg_view_open_fd_prechecked(fd, p, &v, &err) == 0, "%s", err.msg);
	CHECK(v && seg_view_count(v) == SMALL_N && seg_view_same_file(v, fd) &&
	      seg_view_prechecked(v));
	seg_view_free(v);
	v = NULL;
	/* half a precheck: the full check, which passes; a copy of it fed the
	 * rest stands for the whole, and leaves the original as it was */
	rest = seg_precheck_copy(half);
	CHECK(rest != NULL);
	seg_precheck_feed(rest, buf + len / 2, len - len / 2);
	CHECK(seg_view_open_fd_prechecked(fd, half, &v, &err) == 0 && !seg_view_prechecked(v));
	seg_view_free(v);
	v = NULL;
	CHECK(seg_view_open_fd_prechecked(fd, rest, &v, &err) == 0 && seg_view_prechecked(v));
	seg_view_free(v);
	v = NULL;
	seg_precheck_free(rest);
	/* a payload byte changed after it was fed: not hashed again */
	byte = (uint8_t)~buf[payload];
	CHECK(pwrite(fd, &byte, 1, (off_t)payload) == 1);
	CHECK(seg_view_open_fd_prechecked(fd, p, &v, &err) == 0);
	seg_view_free(v);
	v = NULL;
	/* ... but a precheck of half the bytes is no precheck: refused whole */
	CHECK(seg_view_open_fd_prechecked(fd, half, &v, &err) == -EBADMSG &&
	      strstr(err.msg, "payload checksum mismatch"));
	/* a header damaged: the memory decoder's answer */
	CHECK(pwrite(fd, &buf[payload], 1, (off_t)payload) == 1);
	byte = (uint8_t)~buf[starts[2] + 10];
	CHECK(pwrite(fd, &byte, 1, (off_t)(starts[2] + 10)) == 1);
	buf[starts[2] + 10] = byte;
	CHECK(seg_view_open_fd_prechecked(fd, p, &v, &err) == -EBADMSG);
	CHECK(seg_view_new(buf, len, &mv, &merr) == -EBADMSG);
	CHECK_MSG(strcmp(err.msg, merr.msg) == 0 && err.offset == merr.offset, "\"%s\" against \"%s\"",
		  err.msg, merr.msg);
out:
	seg_precheck_free(p);
	seg_precheck_free(half);
	if (fd >= 0) {
		close(fd);
		unlink(path);
	}
	free(buf);
}

/* segment.c's window: what a segment must exceed to need several */
#define WINDOW_TEST_MIN (64u << 10)

/* Iterates fv (reading headers from fd) and mv (memory) side by side:
 * the same records, payloads and names. */
static void iterate_same(struct seg_view *fv, int fd, struct seg_view *mv, const char *what)
{
	struct seg_record fr, mr;
	uint64_t n = 0;
	int a, b;

	seg_view_iterate_from(fv, fd);
	seg_view_rewind(fv);
	seg_view_rewind(mv);
	while ((a = seg_view_next(fv, &fr)) == 1 && (b = seg_view_next(mv, &mr)) == 1) {
		const char *fname = seg_view_image_name(fv, fr.image);
		const char *mname = seg_view_image_name(mv, mr.image);

		CHECK_MSG(fr.type == mr.type && fr.lsn == mr.lsn && fr.offset == mr.offset &&
				  fr.length == mr.length && fr.payload_len == mr.payload_len &&
				  fr.file_offset == mr.file_offset && fr.check == mr.check &&
				  memcmp(fr.payload, mr.payload, fr.payload_len) == 0 &&
				  !fname == !mname && (!fname || strcmp(fname, mname) == 0),
			  "%s: record %" PRIu64 " differs", what, n);
		n++;
	}
	CHECK_MSG(a == 0 && seg_view_next(mv, &mr) == 0 && n == seg_view_count(mv),
		  "%s: %" PRIu64 " records of %" PRIu64, what, n, seg_view_count(mv));
}

/*
 * A segment of many records, small and large, with namespace records
 * among them: its headers are read from the file a window at a time (and
 * a short read after each large payload), and every answer is still the
 * memory walk's -- intact, with a byte inverted in each record's header,
 * name or label, cut inside records, and iterated record by record.
 */
static void test_window_same_as_memory(void)
{
	static const uint32_t sizes[] = { 4096, 4096, 1, 100, 40000, 4096, 300000, 4096, 70000 };
	struct seg_header h = base_header();
	char path[] = "/tmp/test_segment.XXXXXX", other[] = "/tmp/test_segment.XXXXXX";
	struct seg_builder *b = seg_builder_new(&h);
	static uint8_t data[300000];
	size_t starts[400], len = 0, nrec = 0;
	uint8_t *buf = NULL, *copy = NULL;
	struct seg_view *fv = NULL, *mv = NULL;
	struct seg_err err;
	char what[96];
	int fd = mkstemp(path), ofd = mkstemp(other);

	CHECK(fd >= 0 && ofd >= 0 && b);
	if (fd < 0 || ofd < 0 || !b)
		goto out;
	for (size_t i = 0; i < sizeof data; i++)
		data[i] = (uint8_t)(i * 131 + 7);
	for (int i = 0; i < 300; i++) {
		struct seg_record r = { .type = SEG_WRITE, .image = 1, .time_ns = 1 };
		char name[64], pl[128];

		starts[nrec++] = seg_builder_size(b) - SEG_TRAILER_SIZE;
		if (i % 37 == 5) { /* a file created and renamed: names read from windows */
			snprintf(name, sizeof name, "n%d.img", i);
			r = (struct seg_record){ .type = SEG_CREATE, .image = 100 + (uint32_t)i,
						 .aux = 0600, .payload = name,
						 .payload_len = (uint32_t)strlen(name) };
			seg_builder_add(b, &r);
			starts[nrec++] = seg_builder_size(b) - SEG_TRAILER_SIZE;
			r.type = SEG_RENAME;
			r.aux = (uint32_t)strlen(name);
			r.payload_len = (uint32_t)snprintf(pl, sizeof pl, "%sdir/r%d.img", name, i);
			r.payload = pl;
		} else if (i % 53 == 9) {
			r = (struct seg_record){ .type = SEG_MARK, .payload = "a mark",
						 .payload_len = 6 };
		} else {
			r.payload_len = sizes[i % (sizeof sizes / sizeof sizes[0])];
			r.length = r.payload_len;
			r.offset = (uint64_t)i << 20;
			r.payload = data;
		}
		seg_builder_add(b, &r);
	}
	starts[nrec] = seg_builder_size(b) - SEG_TRAILER_SIZE;
	CHECK(seg_builder_finish(b, 7, &buf, &len) == 0);
	seg_builder_free(b);
	b = NULL;
	copy = malloc(len);
	CHECK(buf && copy && len > 8 * WINDOW_TEST_MIN);
	if (!buf || !copy)
		goto out;

	open_as_memory(fd, buf, len, "many records, intact");
	for (size_t i = 0; i < nrec; i++) {
		size_t at[] = { starts[i] + i % 64, starts[i] + 63, starts[i] + 64 };

		for (size_t k = 0; k < 3; k++) {
			if (at[k] >= len)
				continue;
			memcpy(copy, buf, len);
			copy[at[k]] = (uint8_t)~copy[at[k]];
			snprintf(what, sizeof what, "record %zu, byte %zu inverted", i, at[k]);
			open_as_memory(fd, copy, len, what);
		}
		snprintf(what, sizeof what, "cut inside record %zu's header", i);
		open_as_memory(fd, buf, starts[i] + 30, what);
	}
	memcpy(copy, buf, len);
	copy[len - 20] = (uint8_t)~copy[len - 20];
	open_as_memory(fd, copy, len, "trailer damaged");

	/* iterated from the file, a window at a time */
	CHECK(ftruncate(fd, 0) == 0 && pwrite(fd, buf, len, 0) == (ssize_t)len);
	CHECK(pwrite(ofd, buf, len, 0) == (ssize_t)len);
	CHECK_MSG(seg_view_open_fd(fd, &fv, &err) == 0, "%s", err.msg);
	CHECK(seg_view_new(buf, len, &mv, &err) == 0);
	if (fv && mv) {
		iterate_same(fv, fd, mv, "iterated from the file");
		/* another file (even with the same bytes) is not read from */
		iterate_same(fv, ofd, mv, "iterated with another file's fd");
		iterate_same(fv, -1, mv, "iterated from the mapping");
	}
out:
	seg_view_free(fv);
	seg_view_free(mv);
	seg_builder_free(b);
	for (int i = 0; i < 2; i++) {
		int f = i ? ofd : fd;

		if (f >= 0) {
			close(f);
			unlink(i ? other : path);
		}
	}
	free(copy);
	free(buf);
}

int main(void)
{
	alarm(120);
	test_name_valid();
	test_file_names();
	test_uuid();
	test_layout();
	test_example();
	test_round_trip();
	test_empty();
	test_bit_flips();
	test_truncation();
	test_appended();
	test_forged_records();
	test_forged_header();
	test_lsn_limit();
	test_partial();
	test_scale();
	test_open();
	test_open_own_and_fd();
	test_precheck();
	test_open_same_as_memory();
	test_window_same_as_memory();
	test_open_fd_prechecked();
	return check_done("test_segment");
}
