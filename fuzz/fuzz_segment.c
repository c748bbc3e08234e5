/*
 * fuzz_segment.c — libFuzzer harness for the segment decoder, the code that
 * reads bytes from the network on every remote.  Each input goes through
 * seg_view_new and seg_view_new_partial twice: once as it is (the checksums
 * must stop blind damage), and once resealed, with every check recomputed
 * as docs/FORMAT.md defines it, so that mutations reach the semantic rules
 * (names, ids, ranges, LSNs) instead of dying at the first checksum.
 *
 * Besides memory errors (ASan) and undefined behaviour (UBSan), it aborts
 * when the two decoders disagree: whatever the strict decoder accepts, the
 * recovery decoder must accept whole and sealed; a recovered prefix must
 * decode again to itself; a valid segment must be left unchanged by
 * resealing and has exactly one encoding (the encoder, fed what the
 * decoder read, gives back every byte); iteration must yield exactly the
 * counted records; a precheck fed the bytes as they would stream in
 * leads to the strict decoder's very answer and message; and the same
 * bytes in a file (seg_view_open_fd: a precheck read with pread, then
 * headers read a window at a time) get that answer too, and iterate from
 * the file to the same records.
 *
 * Build and run with fuzz/build.sh and fuzz/run.sh.
 */
#include "format.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t */
#include <xxhash.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(cond) do { \
	if (!(cond)) { \
		fprintf(stderr, "fuzz_segment: %s:%d: %s\n", __FILE__, __LINE__, #cond); \
		abort(); \
	} \
} while (0)

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* Recomputes the header check, each record's payload hash and check and
 * the trailer check, as far as the structure can be followed. */
static void reseal(uint8_t *b, size_t len)
{
	static const uint8_t tail[8] = { 'A', 'I', 'M', 'J', 'E', 'N', 'D', 0 };
	uint64_t table, prev, plen;
	size_t pos;
	XXH3_state_t st;

	if (len < SEG_HEADER_FIXED)
		return;
	table = get32(b + 12);
	if (SEG_HEADER_FIXED + table > len)
		return;
	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, b, 64);
	XXH3_64bits_update(&st, b + SEG_HEADER_FIXED, (size_t)table);
	prev = XXH3_64bits_digest(&st);
	put64(b + 64, prev);
	pos = SEG_HEADER_FIXED + (size_t)table;
	while (len - pos >= 8) {
		if (memcmp(b + pos, tail, 8) == 0) {
			if (len - pos >= SEG_TRAILER_SIZE)
				put64(b + pos + 48, XXH3_64bits_withSeed(b + pos, 48, prev));
			return;
		}
		if (len - pos < SEG_RECORD_HEADER)
			return;
		plen = get32(b + pos + 4);
		if (plen > len - pos - SEG_RECORD_HEADER)
			return;
		put64(b + pos + 48, XXH3_64bits(b + pos + SEG_RECORD_HEADER, (size_t)plen));
		prev = XXH3_64bits_withSeed(b + pos, 56, prev);
		put64(b + pos + 56, prev);
		pos += SEG_RECORD_HEADER + (size_t)plen;
	}
}

/* Walks every record and asks every question an applier would. */
static void walk(struct seg_view *v)
{
	static char a[SEG_NAME_MAX + 1], b[SEG_NAME_MAX + 1];
	const struct seg_header *h = seg_view_header(v);
	struct seg_record r;
	uint64_t n = 0, lsn = h->first_lsn;

	for (uint32_t i = 0; i < h->image_count; i++)
		REQUIRE(seg_view_image_name(v, h->images[i].id) != NULL);
	while (seg_view_next(v, &r) == 1) {
		REQUIRE(r.lsn == lsn);
		REQUIRE(r.payload_len == 0 ||
			(const uint8_t *)r.payload + r.payload_len <= seg_view_bytes(v) + seg_view_size(v));
		switch (r.type) {
		case SEG_WRITE:
		case SEG_ZERO:
		case SEG_TRUNCATE:
		case SEG_ALLOC:
			/* a data record always names a bound, safe image */
			REQUIRE(seg_view_image_name(v, r.image) != NULL);
			REQUIRE(seg_name_valid(seg_view_image_name(v, r.image),
					       strlen(seg_view_image_name(v, r.image))));
			REQUIRE(r.offset <= INT64_MAX && r.length <= INT64_MAX - r.offset);
			break;
		case SEG_RENAME:
			seg_rename_names(&r, a, b);
			REQUIRE(seg_name_valid(a, strlen(a)) && seg_name_valid(b, strlen(b)));
			if (!(r.flags & SEG_F_DIR))
				REQUIRE(strcmp(seg_view_image_name(v, r.image), b) == 0);
			break;
		case SEG_CREATE:
			seg_record_name(&r, a);
			REQUIRE(strcmp(seg_view_image_name(v, r.image), a) == 0);
			break;
		case SEG_UNLINK:
			seg_record_name(&r, a);
			REQUIRE(seg_view_image_name(v, r.image) == NULL);
			break;
		case SEG_MKDIR:
		case SEG_RMDIR:
			seg_record_name(&r, a);
			REQUIRE(seg_name_valid(a, strlen(a)));
			break;
		case SEG_MARK:
			seg_record_name(&r, a);
			break;
		case SEG_FLUSH:
			REQUIRE(r.image == 0 || seg_view_image_name(v, r.image) != NULL);
			break;
		case SEG_SYNC_BEGIN:
		case SEG_SYNC_END:
			REQUIRE(r.image == 0 && r.aux != 0 && r.payload_len == 0);
			break;
		case SEG_SKIP:
			REQUIRE(r.image == 0 && r.payload_len == 0);
			break;
		case SEG_HASH: {
			/* what an applier's comparison reads: a bound image, a
			 * sane block size and one hash per block, all in bounds */
			uint32_t block = seg_hash_block(&r);
			uint64_t blocks, sum = 0;

			REQUIRE(seg_view_image_name(v, r.image) != NULL);
			REQUIRE(block >= SEG_HASH_BLOCK_MIN && block <= SEG_HASH_BLOCK_MAX &&
				(block & (block - 1)) == 0);
			REQUIRE(r.length > 0 && r.offset <= INT64_MAX && r.length <= INT64_MAX - r.offset);
			blocks = (r.length + block - 1) / block;
			REQUIRE(r.payload_len == SEG_HASH_HEADER + blocks * 8);
			for (uint64_t i = 0; i < blocks; i++)
				sum += seg_hash_at(&r, i);
			(void)sum;
			break;
		}
		default:
			REQUIRE(!"unknown record type accepted");
		}
		n++;
		lsn++;
	}
	REQUIRE(n == seg_view_count(v));
	REQUIRE(n == 0 || lsn - 1 == seg_view_last_lsn(v));
	seg_view_rewind(v);
	REQUIRE(seg_view_next(v, &r) == (n ? 1 : 0));
}

/*
 * A valid segment has exactly one encoding: the encoder, fed what the
 * decoder read, must give back every byte.  A byte the decoder ignores (a
 * reserved field it does not check) fails here.
 */
static void reencode(struct seg_view *v, const uint8_t *buf, size_t len)
{
	struct seg_header h = *seg_view_header(v);
	struct seg_trailer t = *seg_view_trailer(v);
	struct seg_record r;
	uint8_t *out = malloc(len);
	uint64_t check;
	size_t pos = seg_header_size(&h);

	REQUIRE(out && pos + SEG_TRAILER_SIZE <= len);
	check = seg_header_encode(&h, out);
	seg_view_rewind(v);
	while (seg_view_next(v, &r) == 1) {
		REQUIRE(pos + SEG_RECORD_HEADER + r.payload_len + SEG_TRAILER_SIZE <= len);
		check = seg_record_encode(&r, check, out + pos);
		REQUIRE(check == r.check);
		pos += SEG_RECORD_HEADER;
		if (r.payload_len)
			memcpy(out + pos, r.payload, r.payload_len);
		pos += r.payload_len;
	}
	REQUIRE(pos + SEG_TRAILER_SIZE == len);
	REQUIRE(seg_trailer_encode(&t, check, out + pos) == seg_view_digest(v));
	REQUIRE(memcmp(out, buf, len) == 0);
	free(out);
	seg_view_rewind(v);
}

/* seg_view_new_prechecked, the bytes fed in pieces of the size the input's
 * last byte picks, must answer as seg_view_new did. */
static void prechecked(const uint8_t *buf, size_t len, int strict, const struct seg_view *v,
		       const struct seg_err *serr)
{
	struct seg_precheck *pc = seg_precheck_new();
	size_t piece = len ? (size_t)buf[len - 1] * 61 + 1 : 1;
	struct seg_view *w = NULL;
	struct seg_err err;

	REQUIRE(pc != NULL);
	for (size_t at = 0; at < len; at += piece)
		seg_precheck_feed(pc, buf + at, len - at < piece ? len - at : piece);
	REQUIRE(seg_view_new_prechecked(buf, len, pc, &w, &err) == strict);
	if (strict == 0)
		REQUIRE(seg_view_count(w) == seg_view_count(v) &&
			seg_view_digest(w) == seg_view_digest(v));
	else
		REQUIRE(strcmp(err.msg, serr->msg) == 0 && err.offset == serr->offset);
	seg_view_free(w);
	seg_precheck_free(pc);
}

/* The bytes as a file: the strict answer, and the same records when
 * iterated with headers read from the file. */
static void from_file(const uint8_t *buf, size_t len, int strict, struct seg_view *v,
		      const struct seg_err *serr)
{
	static int fd = -1;
	struct seg_view *f = NULL;
	struct seg_record a, b;
	struct seg_err err;

	if (len == 0) /* refused as an empty file before it is read */
		return;
	if (fd < 0)
		fd = memfd_create("fuzz_segment", MFD_CLOEXEC);
	REQUIRE(fd >= 0 && ftruncate(fd, 0) == 0 && pwrite(fd, buf, len, 0) == (ssize_t)len);
	REQUIRE(seg_view_open_fd(fd, &f, &err) == strict);
	if (strict != 0) {
		REQUIRE(strcmp(err.msg, serr->msg) == 0 && err.offset == serr->offset);
		return;
	}
	REQUIRE(seg_view_count(f) == seg_view_count(v) && seg_view_digest(f) == seg_view_digest(v));
	seg_view_iterate_from(f, fd);
	seg_view_rewind(v);
	while (seg_view_next(f, &a) == 1) {
		REQUIRE(seg_view_next(v, &b) == 1);
		REQUIRE(a.lsn == b.lsn && a.type == b.type && a.check == b.check &&
			a.file_offset == b.file_offset && a.payload_len == b.payload_len &&
			memcmp(a.payload, b.payload, a.payload_len) == 0);
	}
	REQUIRE(seg_view_next(v, &b) == 0);
	seg_view_rewind(v);
	seg_view_free(f);
}

static void check(const uint8_t *buf, size_t len, bool as_file)
{
	struct seg_view *v = NULL, *p = NULL, *q = NULL;
	struct seg_err err;
	size_t valid = 0, valid2 = 0;
	int strict, partial;

	strict = seg_view_new(buf, len, &v, &err);
	if (strict == 0) {
		REQUIRE(seg_view_sealed(v) && seg_view_size(v) == len);
		REQUIRE(seg_view_trailer(v)->count == seg_view_count(v));
		walk(v);
		reencode(v, buf, len);
	} else {
		REQUIRE(err.msg[0] != '\0');
		REQUIRE(err.offset <= len);
	}
	prechecked(buf, len, strict, v, &err);
	if (as_file)
		from_file(buf, len, strict, v, &err);
	partial = seg_view_new_partial(buf, len, &p, &valid, &err);
	if (partial == 0) {
		REQUIRE(valid <= len && seg_view_size(p) == valid);
		REQUIRE(seg_view_sealed(p) == (strict == 0));
		if (strict == 0)
			REQUIRE(valid == len && seg_view_count(p) == seg_view_count(v) &&
				seg_view_digest(p) == seg_view_digest(v));
		walk(p);
		/* the recovered prefix is itself a valid log, of the same records */
		REQUIRE(seg_view_new_partial(buf, valid, &q, &valid2, &err) == 0);
		REQUIRE(valid2 == valid && seg_view_count(q) == seg_view_count(p));
		REQUIRE(seg_view_digest(q) == seg_view_digest(p));
		seg_view_free(q);
		seg_view_free(p);
	} else {
		REQUIRE(strict != 0);
	}
	seg_view_free(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *copy;

	check(data, size, false);
	/* An exact-size copy, so that ASan catches reads past the end. */
	copy = malloc(size ? size : 1);
	if (!copy)
		return 0;
	memcpy(copy, data, size);
	reseal(copy, size);
	{
		struct seg_view *v = NULL;
		struct seg_err err;

		/* a valid segment is a fixed point of reseal */
		if (seg_view_new(data, size, &v, &err) == 0) {
			REQUIRE(memcmp(copy, data, size) == 0);
			seg_view_free(v);
		}
	}
	/* as a file only resealed, where inputs reach the semantic rules: a
	 * file per input costs the fuzzer most of its speed */
	check(copy, size, true);
	free(copy);
	return 0;
}
