/*
 * segment.c — encoder and validating decoder of the segment format.
 *
 * docs/FORMAT.md is the specification; in short:
 *
 *   header   72 bytes: magic "AIMJSEG\0", version, flags, table length,
 *            group UUID, segment number, first LSN, created time, image
 *            count, header check = XXH3-64(bytes 0..63 ++ image table)
 *   table    image entries: u32 id, u16 name length, name bytes
 *   records  64-byte header + payload each; check = XXH3-64 of header
 *            bytes 0..55 seeded with the previous check (the header check
 *            for the first record), payload covered by its own XXH3-64
 *            stored at bytes 48..55
 *   trailer  56 bytes: magic "AIMJEND\0", count, last LSN, backing LSN,
 *            sealed time, check seeded with the last record's check
 *
 * The rule for validity is SQLite WAL's: records are read in order and the
 * first one that fails any check ends the log.  For a sealed segment that
 * means the whole segment is refused (a sealed segment has no torn tail);
 * for recovery of an unfinished one it marks where the good prefix ends.
 */
#include "format_i.h"
#include "clock.h"
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#define INT64_LIMIT ((uint64_t)INT64_MAX)
/* Work allowed for directory renames while decoding one segment (entries
 * visited), so that a hostile segment cannot make the decoder quadratic. */
#define DIR_RENAME_BUDGET (1ULL << 26)

/* ---- little-endian helpers ---- */

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }

/* ---- names ---- */

void seg_file_name(uint64_t n, const char *suffix, char *buf)
{
	sprintf(buf, "%020" PRIu64 "%s", n, suffix);
}

int seg_parse_file_name(const char *name, uint64_t *n)
{
	uint64_t v = 0;

	if (strlen(name) != SEG_FILE_NAME_LEN || strcmp(name + SEG_FILE_DIGITS, SEG_FILE_SUFFIX) != 0)
		return -EINVAL;
	for (int i = 0; i < SEG_FILE_DIGITS; i++) {
		uint64_t d = (uint64_t)(name[i] - '0');

		if (name[i] < '0' || name[i] > '9')
			return -EINVAL;
		if (v > (UINT64_MAX - d) / 10)
			return -EINVAL;
		v = v * 10 + d;
	}
	if (v == 0)
		return -EINVAL;
	*n = v;
	return 0;
}

bool seg_name_valid(const char *name, size_t len)
{
	size_t start = 0;

	if (len == 0 || len > SEG_NAME_MAX)
		return false;
	for (size_t i = 0; i <= len; i++) {
		if (i == len || name[i] == '/') {
			size_t clen = i - start;

			if (clen == 0 || clen > SEG_COMPONENT_MAX)
				return false;
			if (name[start] == '.' && (clen == 1 || (clen == 2 && name[start + 1] == '.')))
				return false;
			start = i + 1;
		} else if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f) {
			return false;
		}
	}
	return true;
}

void seg_uuid_format(const uint8_t u[16], char out[37])
{
	sprintf(out, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7],
		u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

int seg_uuid_parse(const char *s, uint8_t u[16])
{
	int k = 0;

	if (strlen(s) != 36)
		return -EINVAL;
	for (int i = 0; i < 36; i++) {
		int hi, lo;

		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (s[i] != '-')
				return -EINVAL;
			continue;
		}
#define HEX(c) ((c) >= '0' && (c) <= '9' ? (c) - '0' : (c) >= 'a' && (c) <= 'f' ? (c) - 'a' + 10 : -1)
		hi = HEX(s[i]);
		lo = HEX(s[i + 1]);
#undef HEX
		if (hi < 0 || lo < 0)
			return -EINVAL;
		u[k++] = (uint8_t)(hi << 4 | lo);
		i++;
	}
	return 0;
}

bool seg_mark_label_valid(const char *label, size_t len)
{
	if (len == 0 || len > SEG_MARK_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)label[i] < 0x20 || label[i] == 0x7f)
			return false;
	return true;
}

const char *seg_type_name(uint8_t type)
{
	static const char *const names[] = {
		[SEG_WRITE] = "WRITE", [SEG_ZERO] = "ZERO", [SEG_TRUNCATE] = "TRUNCATE",
		[SEG_ALLOC] = "ALLOC", [SEG_FLUSH] = "FLUSH", [SEG_CREATE] = "CREATE",
		[SEG_UNLINK] = "UNLINK", [SEG_RENAME] = "RENAME", [SEG_MKDIR] = "MKDIR",
		[SEG_RMDIR] = "RMDIR", [SEG_MARK] = "MARK", [SEG_SYNC_BEGIN] = "SYNC_BEGIN",
		[SEG_SYNC_END] = "SYNC_END", [SEG_HASH] = "HASH", [SEG_SKIP] = "SKIP",
	};

	if (type == 0 || type > SEG_TYPE_MAX)
		return "UNKNOWN";
	return names[type];
}

/* ---- encoding ---- */

uint64_t seg_payload_hash(const void *payload, size_t len)
{
	return XXH3_64bits(payload, len);
}

size_t seg_header_size(const struct seg_header *h)
{
	size_t n = SEG_HEADER_FIXED;

	for (uint32_t i = 0; i < h->image_count; i++)
		n += 6 + h->images[i].name_len;
	return n;
}

uint64_t seg_header_encode(const struct seg_header *h, uint8_t *out)
{
	size_t table = seg_header_size(h) - SEG_HEADER_FIXED;
	uint8_t *p = out + SEG_HEADER_FIXED;
	XXH3_state_t st;
	uint64_t check;

	memset(out, 0, SEG_HEADER_FIXED);
	memcpy(out, seg_head_magic, 8);
	put16(out + 8, SEG_VERSION);
	put16(out + 10, 0);
	put32(out + 12, (uint32_t)table);
	memcpy(out + 16, h->group, 16);
	put64(out + 32, h->number);
	put64(out + 40, h->first_lsn);
	put64(out + 48, h->created_ns);
	put32(out + 56, h->image_count);
	put32(out + 60, 0);
	for (uint32_t i = 0; i < h->image_count; i++) {
		put32(p, h->images[i].id);
		put16(p + 4, h->images[i].name_len);
		memcpy(p + 6, h->images[i].name, h->images[i].name_len);
		p += 6 + h->images[i].name_len;
	}
	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, out, 64);
	XXH3_64bits_update(&st, out + SEG_HEADER_FIXED, table);
	check = XXH3_64bits_digest(&st);
	put64(out + 64, check);
	return check;
}

uint64_t seg_record_encode(const struct seg_record *r, uint64_t prev_check,
			   uint8_t out[SEG_RECORD_HEADER])
{
	uint64_t check;

	out[0] = r->type;
	out[1] = r->flags;
	put16(out + 2, 0);
	put32(out + 4, r->payload_len);
	put64(out + 8, r->lsn);
	put32(out + 16, r->image);
	put32(out + 20, r->aux);
	put64(out + 24, r->offset);
	put64(out + 32, r->length);
	put64(out + 40, r->time_ns);
	put64(out + 48, r->payload_hash);
	check = XXH3_64bits_withSeed(out, 56, prev_check);
	put64(out + 56, check);
	return check;
}

uint64_t seg_trailer_encode(const struct seg_trailer *t, uint64_t prev_check,
			    uint8_t out[SEG_TRAILER_SIZE])
{
	uint64_t check;

	memcpy(out, seg_tail_magic, 8);
	put64(out + 8, t->count);
	put64(out + 16, t->last_lsn);
	put64(out + 24, t->backing_lsn);
	put64(out + 32, t->sealed_ns);
	put64(out + 40, 0);
	check = XXH3_64bits_withSeed(out, 48, prev_check);
	put64(out + 48, check);
	return check;
}

/* ---- builder ---- */

struct seg_builder {
	uint8_t *buf;
	size_t len, cap;
	uint64_t first_lsn, count, check;
	uint64_t sealed_ns;
	bool failed;
};

void seg_builder_set_sealed(struct seg_builder *b, uint64_t sealed_ns)
{
	b->sealed_ns = sealed_ns;
}

static int builder_reserve(struct seg_builder *b, size_t extra)
{
	if (b->len + extra <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + extra)
		cap *= 2;
	uint8_t *nb = realloc(b->buf, cap);
	if (!nb) {
		b->failed = true;
		return -ENOMEM;
	}
	b->buf = nb;
	b->cap = cap;
	return 0;
}

struct seg_builder *seg_builder_new(const struct seg_header *h)
{
	struct seg_builder *b = calloc(1, sizeof *b);
	size_t hs = seg_header_size(h);

	if (!b || builder_reserve(b, hs) < 0) {
		seg_builder_free(b);
		return NULL;
	}
	b->check = seg_header_encode(h, b->buf);
	b->len = hs;
	b->first_lsn = h->first_lsn;
	return b;
}

uint64_t seg_builder_add(struct seg_builder *b, struct seg_record *r)
{
	if (builder_reserve(b, SEG_RECORD_HEADER + r->payload_len) < 0)
		return 0;
	r->lsn = b->first_lsn + b->count;
	r->payload_hash = seg_payload_hash(r->payload, r->payload_len);
	b->check = seg_record_encode(r, b->check, b->buf + b->len);
	b->len += SEG_RECORD_HEADER;
	if (r->payload_len)
		memcpy(b->buf + b->len, r->payload, r->payload_len);
	b->len += r->payload_len;
	b->count++;
	return r->lsn;
}

uint64_t seg_builder_count(const struct seg_builder *b)
{
	return b->count;
}

size_t seg_builder_size(const struct seg_builder *b)
{
	return b->len + SEG_TRAILER_SIZE;
}

int seg_builder_finish(struct seg_builder *b, uint64_t backing_lsn, uint8_t **out, size_t *len)
{
	struct seg_trailer t = {
		.count = b->count,
		.last_lsn = b->first_lsn + b->count - 1,
		.backing_lsn = backing_lsn,
	};

	if (b->failed || builder_reserve(b, SEG_TRAILER_SIZE) < 0)
		return -ENOMEM;
	t.sealed_ns = b->sealed_ns ? b->sealed_ns : clock_wall_ns();
	seg_trailer_encode(&t, b->check, b->buf + b->len);
	b->len += SEG_TRAILER_SIZE;
	*out = b->buf;
	*len = b->len;
	b->buf = NULL;
	return 0;
}

void seg_builder_free(struct seg_builder *b)
{
	if (!b)
		return;
	free(b->buf);
	free(b);
}

/* ---- decoding ---- */

/*
 * Record headers read with pread into a small buffer instead of through a
 * segment file's mapping.  On a VM whose hypervisor shadows page tables
 * each page first touched through a new mapping costs an exit, and a walk
 * of 4 KiB records touches every page for 64 bytes of each.  After a
 * record with a large payload the next read is short: the next header
 * lies far on.
 */
#ifndef SEG_WINDOW_SIZE /* the fuzzer builds with a small one, to refill it often */
#define SEG_WINDOW_SIZE (64u << 10)
#endif
#define WINDOW_SIZE ((size_t)SEG_WINDOW_SIZE)
#define WINDOW_SHORT (WINDOW_SIZE / 16 > SEG_RECORD_HEADER ? WINDOW_SIZE / 16 : SEG_RECORD_HEADER)

struct window {
	int fd;              /* -1: the view's bytes are read where they are */
	const uint8_t *buf;  /* the view's bytes (fd -1) */
	struct fileio_window fw; /* WINDOW_SIZE bytes */
	size_t want;         /* how much the next read asks for */
};

/* A window over fd, or over buf when fd is -1 or no buffer can be had. */
static void window_init(struct window *w, int fd, const uint8_t *buf)
{
	*w = (struct window){ .fd = -1, .buf = buf, .want = WINDOW_SIZE };
	if (fd >= 0 && (w->fw.buf = malloc(WINDOW_SIZE))) {
		w->fw.cap = WINDOW_SIZE;
		w->fd = fd;
	}
}

static void window_free(struct window *w)
{
	free(w->fw.buf);
	*w = (struct window){ .fd = -1 };
}

/* n (at most WINDOW_SIZE) bytes at pos, or NULL if the file no longer has
 * them (it shrank, or a read failed). */
static const uint8_t *window_get(struct window *w, size_t pos, size_t n)
{
	const uint8_t *p;

	if (w->fd < 0)
		return w->buf + pos;
	return fileio_window_get(&w->fw, NULL, w->fd, pos, n, n > w->want ? n : w->want, &p) < 0
		       ? NULL
		       : p;
}

/* After a record of payload_len bytes: how much the next read asks for. */
static void window_after(struct window *w, uint32_t payload_len)
{
	w->want = payload_len >= WINDOW_SIZE / 2 ? WINDOW_SHORT : WINDOW_SIZE;
}

struct seg_view {
	const uint8_t *buf;
	size_t len;          /* valid length (header + good records [+ trailer]) */
	void *map;           /* mmap'd region to unmap, or NULL */
	size_t map_len;
	struct seg_header header;
	struct seg_image *images;
	struct seg_trailer trailer;
	bool sealed;
	bool own;            /* written by this process: payload hashes not recomputed */
	bool prechecked;     /* payloads hashed as they streamed in: fold the records */
	bool callers;        /* ... by the caller's precheck (seg_view_prechecked) */
	uint64_t fold;       /* seg_precheck_fold over the records walked */
	uint64_t count, last_lsn, digest;
	size_t records_start, records_end;
	size_t released;     /* mapped bytes below this were dropped from memory */
	bool from_file;      /* mapped from a file: the one dev/ino name */
	dev_t dev;
	ino_t ino;
	/* iteration */
	struct window iter;  /* record headers read with pread (seg_view_iterate_from) */
	size_t pos;
	uint64_t next_lsn;
	struct names *names; /* namespace as of the last record returned */
	uint64_t dir_budget;
};

static int fail(struct seg_err *err, uint64_t off, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct seg_err *err, uint64_t off, const char *fmt, ...)
{
	va_list ap;

	if (err) {
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof err->msg, fmt, ap);
		va_end(ap);
		err->offset = off;
	}
	return -EBADMSG;
}

static int parse_header(struct seg_view *v, struct seg_err *err)
{
	const uint8_t *b = v->buf;
	uint32_t table, count;
	size_t p;
	XXH3_state_t st;

	if (v->len < SEG_HEADER_FIXED)
		return fail(err, 0, "too short for a segment header (%zu bytes)", v->len);
	if (memcmp(b, seg_head_magic, 8) != 0)
		return fail(err, 0, "bad magic: not an aimfs segment");
	if (get16(b + 8) != SEG_VERSION)
		return fail(err, 8, "unsupported format version %u (this program reads %u)",
			    get16(b + 8), SEG_VERSION);
	if (get16(b + 10) != 0 || get32(b + 60) != 0)
		return fail(err, get16(b + 10) != 0 ? 10 : 60, "reserved header fields are not zero");
	table = get32(b + 12);
	if (table > SEG_TABLE_MAX || SEG_HEADER_FIXED + (size_t)table > v->len)
		return fail(err, 12, "image table length %u runs past the end of the segment", table);
	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, b, 64);
	XXH3_64bits_update(&st, b + SEG_HEADER_FIXED, table);
	if (XXH3_64bits_digest(&st) != get64(b + 64))
		return fail(err, 64, "header checksum mismatch");
	memcpy(v->header.group, b + 16, 16);
	v->header.number = get64(b + 32);
	v->header.first_lsn = get64(b + 40);
	v->header.created_ns = get64(b + 48);
	count = get32(b + 56);
	if (v->header.number == 0)
		return fail(err, 32, "segment number 0 is not valid");
	if (v->header.first_lsn == 0 || v->header.first_lsn > INT64_LIMIT)
		return fail(err, 40, "first LSN %" PRIu64 " is out of range", v->header.first_lsn);
	if (count > table / 7)
		return fail(err, 56, "image count %u does not fit a %u-byte table", count, table);
	v->images = calloc(count ? count : 1, sizeof *v->images);
	if (!v->images)
		return -ENOMEM;
	p = SEG_HEADER_FIXED;
	for (uint32_t i = 0; i < count; i++) {
		struct seg_image *im = &v->images[i];

		if (p + 6 > SEG_HEADER_FIXED + (size_t)table)
			return fail(err, p, "image table entry %u is truncated", i);
		im->id = get32(b + p);
		im->name_len = get16(b + p + 4);
		im->name = (const char *)b + p + 6;
		if (p + 6 + im->name_len > SEG_HEADER_FIXED + (size_t)table)
			return fail(err, p, "image table entry %u runs past the table", i);
		if (im->id == 0)
			return fail(err, p, "image table entry %u has id 0", i);
		if (!seg_name_valid(im->name, im->name_len))
			return fail(err, p, "image table entry %u has an unsafe name", i);
		if (names_bind(v->names, im->id, im->name, im->name_len) < 0)
			return fail(err, p, "image table entry %u repeats an id or a name", i);
		p += 6 + im->name_len;
	}
	if (p != SEG_HEADER_FIXED + (size_t)table)
		return fail(err, p, "image table has %zu stray bytes", SEG_HEADER_FIXED + (size_t)table - p);
	v->header.image_count = count;
	v->header.images = v->images;
	v->records_start = p;
	return 0;
}

static void decode_record(const uint8_t *b, struct seg_record *r)
{
	r->type = b[0];
	r->flags = b[1];
	r->payload_len = get32(b + 4);
	r->lsn = get64(b + 8);
	r->image = get32(b + 16);
	r->aux = get32(b + 20);
	r->offset = get64(b + 24);
	r->length = get64(b + 32);
	r->time_ns = get64(b + 40);
	r->payload_hash = get64(b + 48);
	r->check = get64(b + 56);
	r->payload = b + SEG_RECORD_HEADER;
}

static bool range_ok(uint64_t off, uint64_t len)
{
	return off <= INT64_LIMIT && len <= INT64_LIMIT - off;
}

/*
 * Checks what a record says against the namespace before it and applies
 * its namespace change.  Returns 0 or fails with a reason.
 */
static int apply_semantics(struct seg_view *v, const struct seg_record *r, uint64_t off,
			   struct seg_err *err)
{
	const char *pl = r->payload;
	uint32_t replaced;
	const char *cur;
	long moved;

	switch (r->type) {
	case SEG_WRITE:
		if ((r->flags & ~SEG_F_RESYNC) || !(r->flags & SEG_F_RESYNC) != !r->aux ||
		    r->length != r->payload_len || r->payload_len == 0)
			return fail(err, off, "WRITE record has inconsistent lengths or flags");
		if (!range_ok(r->offset, r->length))
			return fail(err, off, "WRITE record offset %" PRIu64 " is out of range", r->offset);
		break;
	case SEG_ZERO:
	case SEG_ALLOC:
		if (r->flags & ~(r->type == SEG_ZERO ? SEG_F_PUNCH | SEG_F_KEEP_SIZE | SEG_F_RESYNC
						     : SEG_F_KEEP_SIZE))
			return fail(err, off, "%s record has unknown flags", seg_type_name(r->type));
		if (!(r->flags & SEG_F_RESYNC) != !r->aux || r->payload_len || r->length == 0 ||
		    !range_ok(r->offset, r->length))
			return fail(err, off, "%s record has a bad range", seg_type_name(r->type));
		break;
	case SEG_TRUNCATE:
		if ((r->flags & ~SEG_F_RESYNC) || !(r->flags & SEG_F_RESYNC) != !r->aux ||
		    r->payload_len || r->length || r->offset > INT64_LIMIT)
			return fail(err, off, "TRUNCATE record is malformed");
		break;
	case SEG_SYNC_BEGIN:
	case SEG_SYNC_END:
		if (r->flags || r->image || r->aux == 0 || r->offset || r->length || r->payload_len)
			return fail(err, off, "%s record is malformed", seg_type_name(r->type));
		return 0;
	case SEG_SKIP:
		if (r->flags || r->image || r->offset || r->length || r->payload_len)
			return fail(err, off, "SKIP record is malformed");
		return 0;
	case SEG_HASH: {
		const uint8_t *p = r->payload;
		uint32_t block;
		uint64_t blocks;

		if (r->flags || r->length == 0 || !range_ok(r->offset, r->length) ||
		    r->payload_len < SEG_HASH_HEADER)
			return fail(err, off, "HASH record is malformed");
		block = get32(p);
		if (get32(p + 4) != 0)
			return fail(err, off, "HASH record's reserved field is not zero");
		if (block < SEG_HASH_BLOCK_MIN || block > SEG_HASH_BLOCK_MAX || (block & (block - 1)))
			return fail(err, off, "HASH record has a bad block size %u", block);
		blocks = (r->length + block - 1) / block;
		if (blocks > (SEG_PAYLOAD_MAX - SEG_HASH_HEADER) / 8 ||
		    r->payload_len != SEG_HASH_HEADER + blocks * 8)
			return fail(err, off, "HASH record's payload does not hold one hash per block");
		break;
	}
	case SEG_FLUSH:
		if (r->flags || r->aux || r->payload_len || r->offset || r->length)
			return fail(err, off, "FLUSH record is malformed");
		if (r->image && !names_get(v->names, r->image))
			return fail(err, off, "FLUSH record names unknown image %u", r->image);
		return 0;
	case SEG_CREATE:
		/* offset: the source's inode number, for the source's own recovery */
		if (r->flags || r->length || r->image == 0)
			return fail(err, off, "CREATE record is malformed");
		if (!seg_name_valid(pl, r->payload_len))
			return fail(err, off, "CREATE record has an unsafe name");
		if (names_bind(v->names, r->image, pl, r->payload_len) < 0)
			return fail(err, off, "CREATE record reuses a bound id or name");
		return 0;
	case SEG_UNLINK:
		if (r->flags || r->aux || r->offset || r->length)
			return fail(err, off, "UNLINK record is malformed");
		cur = names_get(v->names, r->image);
		if (!cur || strlen(cur) != r->payload_len || memcmp(cur, pl, r->payload_len) != 0)
			return fail(err, off, "UNLINK record does not match image %u's name", r->image);
		names_unbind(v->names, r->image);
		return 0;
	case SEG_RENAME:
		if ((r->flags & ~(SEG_F_DIR | SEG_F_REPLACE)) || r->offset || r->length ||
		    r->aux == 0 || r->aux >= r->payload_len)
			return fail(err, off, "RENAME record is malformed");
		if (!seg_name_valid(pl, r->aux) || !seg_name_valid(pl + r->aux, r->payload_len - r->aux))
			return fail(err, off, "RENAME record has an unsafe name");
		if (r->flags & SEG_F_DIR) {
			size_t ol = r->aux, nl = r->payload_len - r->aux;

			if (r->image)
				return fail(err, off, "directory RENAME names an image");
			if (nl > ol && pl[ol + ol] == '/' && memcmp(pl, pl + ol, ol) == 0)
				return fail(err, off, "RENAME moves a directory into itself");
			if (v->dir_budget < names_count(v->names))
				return fail(err, off, "too many directory renames in one segment");
			v->dir_budget -= names_count(v->names);
			moved = names_rename_dir(v->names, pl, ol, pl + ol, nl);
			if (moved == -ENAMETOOLONG)
				return fail(err, off, "directory RENAME makes an image name longer than %d bytes",
					    SEG_NAME_MAX);
			if (moved < 0)
				return moved == -ENOMEM ? -ENOMEM : fail(err, off, "directory RENAME collides");
			return 0;
		}
		cur = names_get(v->names, r->image);
		if (!cur || strlen(cur) != r->aux || memcmp(cur, pl, r->aux) != 0)
			return fail(err, off, "RENAME record does not match image %u's name", r->image);
		if (names_rename(v->names, r->image, pl + r->aux, r->payload_len - r->aux, &replaced) < 0)
			return -ENOMEM;
		return 0;
	case SEG_MKDIR:
	case SEG_RMDIR:
		if (r->flags || r->image || r->offset || r->length ||
		    (r->type == SEG_RMDIR && r->aux))
			return fail(err, off, "%s record is malformed", seg_type_name(r->type));
		if (!seg_name_valid(pl, r->payload_len))
			return fail(err, off, "%s record has an unsafe name", seg_type_name(r->type));
		return 0;
	case SEG_MARK:
		if (r->flags || r->image || r->aux || r->offset || r->length ||
		    r->payload_len == 0 || r->payload_len > SEG_MARK_MAX)
			return fail(err, off, "MARK record is malformed");
		if (!seg_mark_label_valid(pl, r->payload_len))
			return fail(err, off, "MARK label has control characters");
		return 0;
	default:
		return fail(err, off, "unknown record type %u", r->type);
	}
	/* data records */
	if (!names_get(v->names, r->image))
		return fail(err, off, "%s record names image %u, which is not bound here",
			    seg_type_name(r->type), r->image);
	return 0;
}

#define RELEASE_STEP (8u << 20)

/*
 * Drops the mapped pages below off from this process's memory (they stay in
 * the page cache and fault back in if touched again).  Reading a 64 MiB
 * segment through a mapping would otherwise count all of it as resident,
 * and aimfs promises a small footprint whatever the segment size.
 */
static void release_below(struct seg_view *v, size_t off)
{
	size_t page = 4096, end = off & ~(page - 1);

	if (!v->map || end < v->released + RELEASE_STEP)
		return;
	madvise((char *)v->map + v->released, end - v->released, MADV_DONTNEED);
	v->released = end;
}

/* The same for the whole mapping, once a walk has read it to its end. */
static void release_all(struct seg_view *v)
{
	if (!v->map || v->released >= v->map_len)
		return;
	madvise((char *)v->map + v->released, v->map_len - v->released, MADV_DONTNEED);
	v->released = v->map_len;
}

void seg_view_release(struct seg_view *v, size_t off)
{
	release_below(v, off);
}

/*
 * Walks records from records_start.  In strict mode any invalid record, a
 * missing trailer or stray bytes fail; in partial mode the first invalid
 * record ends the log.  Leaves the namespace as of the end.
 */
static int walk(struct seg_view *v, int fd, bool partial, struct seg_err *err)
{
	const uint8_t *b = v->buf;
	struct window w;
	size_t pos = v->records_start;
	uint64_t prev = get64(b + 64), lsn = v->header.first_lsn, count = 0;
	struct seg_err scratch;
	struct seg_err *e = partial ? &scratch : err;
	int r = 0;

	v->dir_budget = DIR_RENAME_BUDGET;
	/* Payloads hashed already (or not at all): only headers are read. */
	window_init(&w, v->prechecked || v->own ? fd : -1, b);
	for (;;) {
		struct seg_record rec;
		size_t avail = v->len - pos;
		const uint8_t *h = window_get(&w, pos, avail < SEG_RECORD_HEADER ? avail
										  : SEG_RECORD_HEADER);

		if (!h) {
			r = fail(e, pos, "the file shrank while it was read");
			break;
		}
		if (avail >= 8 && memcmp(h, seg_tail_magic, 8) == 0) {
			if (v->len - pos < SEG_TRAILER_SIZE) {
				r = fail(e, pos, "trailer is truncated");
				break;
			}
			if (XXH3_64bits_withSeed(h, 48, prev) != get64(h + 48)) {
				r = fail(e, pos, "trailer checksum mismatch");
				break;
			}
			if (get64(h + 40) != 0) {
				r = fail(e, pos, "trailer reserved field is not zero");
				break;
			}
			v->trailer.count = get64(h + 8);
			v->trailer.last_lsn = get64(h + 16);
			v->trailer.backing_lsn = get64(h + 24);
			v->trailer.sealed_ns = get64(h + 32);
			if (v->trailer.count != count || v->trailer.last_lsn != lsn - 1) {
				r = fail(e, pos, "trailer says %" PRIu64 " records up to LSN %" PRIu64
					 ", segment holds %" PRIu64 " up to %" PRIu64,
					 v->trailer.count, v->trailer.last_lsn, count, lsn - 1);
				break;
			}
			if (pos + SEG_TRAILER_SIZE != v->len) {
				r = fail(e, pos, "%zu stray bytes after the trailer",
					 v->len - pos - SEG_TRAILER_SIZE);
				break;
			}
			v->sealed = true;
			v->digest = get64(h + 48);
			v->records_end = pos;
			pos += SEG_TRAILER_SIZE;
			break;
		}
		if (v->len - pos < SEG_RECORD_HEADER) {
			r = fail(e, pos, pos == v->len ? "segment ends without a trailer (not sealed)"
						      : "record header is truncated");
			break;
		}
		decode_record(h, &rec);
		rec.payload = b + pos + SEG_RECORD_HEADER;
		if (XXH3_64bits_withSeed(h, 56, prev) != rec.check) {
			r = fail(e, pos, "record %" PRIu64 ": checksum mismatch", count);
			break;
		}
		if (get16(h + 2) != 0) {
			r = fail(e, pos, "record %" PRIu64 ": reserved field is not zero", count);
			break;
		}
		if (rec.lsn != lsn) {
			r = fail(e, pos, "record %" PRIu64 ": LSN %" PRIu64 " where %" PRIu64 " was expected",
				 count, rec.lsn, lsn);
			break;
		}
		if (lsn > INT64_LIMIT) {
			r = fail(e, pos, "record %" PRIu64 ": LSN overflow", count);
			break;
		}
		if (rec.payload_len > SEG_PAYLOAD_MAX ||
		    rec.payload_len > v->len - pos - SEG_RECORD_HEADER) {
			r = fail(e, pos, "record %" PRIu64 ": payload of %u bytes runs past the end",
				 count, rec.payload_len);
			break;
		}
		if (v->prechecked)
			v->fold = seg_precheck_fold(v->fold, pos, rec.payload_len, rec.payload_hash);
		else if (!v->own && seg_payload_hash(rec.payload, rec.payload_len) != rec.payload_hash) {
			r = fail(e, pos, "record %" PRIu64 ": payload checksum mismatch", count);
			break;
		}
		/* The checks of names, labels and hash lists read the payload:
		 * from the window too when it fits. */
		if (rec.type != SEG_WRITE && rec.payload_len &&
		    rec.payload_len <= WINDOW_SIZE - SEG_RECORD_HEADER) {
			h = window_get(&w, pos, SEG_RECORD_HEADER + rec.payload_len);
			if (!h) {
				r = fail(e, pos, "the file shrank while it was read");
				break;
			}
			rec.payload = h + SEG_RECORD_HEADER;
		}
		r = apply_semantics(v, &rec, pos, e);
		if (r == -ENOMEM) {
			window_free(&w);
			return r;
		}
		if (r < 0) {
			/* prefix the record number for context */
			char tmp[sizeof e->msg];
			int n = snprintf(tmp, sizeof tmp, "record %" PRIu64 " (LSN %" PRIu64 "): ",
					 count, rec.lsn);

			if (n > 0 && (size_t)n < sizeof tmp) {
				size_t room = sizeof tmp - (size_t)n - 1;
				size_t ml = strnlen(e->msg, room);

				memcpy(tmp + n, e->msg, ml);
				tmp[(size_t)n + ml] = '\0';
				memcpy(e->msg, tmp, sizeof tmp);
			}
			break;
		}
		prev = rec.check;
		pos += SEG_RECORD_HEADER + rec.payload_len;
		lsn++;
		count++;
		window_after(&w, rec.payload_len);
		release_below(v, pos);
	}
	window_free(&w);
	v->count = count;
	v->last_lsn = lsn - 1;
	if (!v->sealed) {
		v->digest = prev;
		v->records_end = pos;
	}
	if (r < 0 && !partial)
		return r;
	v->len = pos; /* partial: the good prefix */
	return 0;
}

/* How a walk may skip the payloads' hashes: not (full check), because
 * this process wrote them, or because a precheck hashed them. */
enum trust { TRUST_NONE, TRUST_OWN, TRUST_PRECHECK };

/* fd: the file buf maps, whose record headers a walk that need not hash
 * payloads reads with pread (-1: read buf). */
static int view_init(const void *buf, size_t len, bool partial, enum trust trust, void *map,
		     int fd, struct seg_view **out, struct seg_err *err)
{
	struct seg_view *v = calloc(1, sizeof *v);
	int r;

	if (err)
		err->msg[0] = '\0';
	if (!v)
		return -ENOMEM;
	v->buf = buf;
	v->len = len;
	v->iter.fd = -1;
	v->map = map;
	v->map_len = map ? len : 0;
	v->own = trust == TRUST_OWN;
	v->prechecked = trust == TRUST_PRECHECK;
	v->names = names_new();
	if (!v->names) {
		free(v);
		return -ENOMEM;
	}
	r = parse_header(v, err);
	if (r == 0)
		r = walk(v, fd, partial, err);
	if (r < 0) {
		v->map = NULL; /* the caller still owns it */
		seg_view_free(v);
		return r;
	}
	seg_view_rewind(v);
	/* A tool opens a whole series before it reads any: what validation
	 * (and the rewind's look at the header) touched must not stay
	 * resident, segment after segment. */
	release_all(v);
	*out = v;
	return 0;
}

int seg_view_new(const void *buf, size_t len, struct seg_view **out, struct seg_err *err)
{
	return view_init(buf, len, false, TRUST_NONE, NULL, -1, out, err);
}

/* view_init of a whole sealed segment whose payloads p hashed, if p
 * followed it and the walk finds the records p hashed, where it hashed
 * them: 0 with *out (callers: p is the caller's, for seg_view_prechecked);
 * 1 otherwise (nothing made, *err not to be used). */
static int view_as_prechecked(const void *buf, size_t len, void *map, int fd,
			      const struct seg_precheck *p, bool callers, struct seg_view **out,
			      struct seg_err *err)
{
	uint64_t count, tail_pos, fold, fed;
	struct seg_view *v;

	if (seg_precheck_result(p, &count, &tail_pos, &fold, &fed) && fed == len &&
	    view_init(buf, len, false, TRUST_PRECHECK, map, fd, &v, err) == 0) {
		if (v->sealed && v->count == count && v->records_end == tail_pos &&
		    v->fold == fold) {
			v->callers = callers;
			*out = v;
			return 0;
		}
		v->map = NULL; /* still the caller's */
		seg_view_free(v);
	}
	return 1;
}

/* view_as_prechecked, else the full check. */
static int view_prechecked(const void *buf, size_t len, void *map, int fd,
			   const struct seg_precheck *p, bool callers, struct seg_view **out,
			   struct seg_err *err)
{
	if (view_as_prechecked(buf, len, map, fd, p, callers, out, err) == 0)
		return 0;
	return view_init(buf, len, false, TRUST_NONE, map, -1, out, err);
}

int seg_view_new_prechecked(const void *buf, size_t len, const struct seg_precheck *p,
			    struct seg_view **out, struct seg_err *err)
{
	return view_prechecked(buf, len, NULL, -1, p, true, out, err);
}

int seg_view_new_partial(const void *buf, size_t len, struct seg_view **out,
			 size_t *valid_len, struct seg_err *err)
{
	int r = view_init(buf, len, true, TRUST_NONE, NULL, -1, out, err);

	if (r == 0)
		*valid_len = (*out)->len;
	return r;
}

/*
 * Maps the segment open at fd and validates it; fd stays the caller's.
 * The payloads are hashed from pread into a small buffer first, not
 * through the new mapping: on a VM whose hypervisor shadows page tables
 * each page first touched through a mapping costs an exit (XXH3 at 2.3
 * GB/s that way against 8.8 with pread, measured), and whoever uses the
 * view touches its pages once more anyway.
 */
static int view_map(int fd, enum trust trust, const struct seg_precheck *fed,
		    struct seg_view **out, struct seg_err *err)
{
	struct seg_precheck *pc = NULL;
	struct stat st;
	void *map;
	int r;

	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		fail(err, 0, "not a regular file");
		return -EINVAL;
	}
	if (st.st_size == 0)
		return fail(err, 0, "empty file");
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (map == MAP_FAILED) {
		r = -errno;
		fail(err, 0, "cannot map: %s", strerror(-r));
		return r;
	}
	/* A caller's precheck that does not stand for this file gets the
	 * pread pass too, not a walk that hashes through the mapping. */
	if (fed && view_as_prechecked(map, (size_t)st.st_size, map, fd, fed, true, out, err) == 0) {
		r = 0;
		goto made;
	}
	if (trust == TRUST_NONE && (pc = seg_precheck_new()) != NULL &&
	    (r = seg_precheck_read(pc, fd, (uint64_t)st.st_size)) < 0) {
		/* Not a walk of the mapping then: its pages past a new end, or
		 * ones that cannot be read, would raise SIGBUS. */
		seg_precheck_free(pc);
		munmap(map, (size_t)st.st_size);
		if (r == -ENODATA)
			return fail(err, 0, "the file shrank while it was read");
		fail(err, 0, "cannot read: %s", strerror(-r));
		return r;
	}
	if (pc)
		r = view_prechecked(map, (size_t)st.st_size, map, fd, pc, false, out, err);
	else
		r = view_init(map, (size_t)st.st_size, false, trust, map, fd, out, err);
	seg_precheck_free(pc);
made:
	if (r < 0) {
		munmap(map, (size_t)st.st_size);
		return r;
	}
	(*out)->from_file = true;
	(*out)->dev = st.st_dev;
	(*out)->ino = st.st_ino;
	return 0;
}

static int view_open(const char *path, enum trust trust, struct seg_view **out,
		     struct seg_err *err)
{
	int fd = seg_open_file(path, err), r;

	if (fd < 0)
		return fd;
	r = view_map(fd, trust, NULL, out, err);
	close(fd);
	return r;
}

int seg_open_file(const char *path, struct seg_err *err)
{
	/* O_NONBLOCK: a FIFO planted where a segment should be must not hang us. */
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);

	if (fd < 0) {
		int r = -errno;

		fail(err, 0, "cannot open: %s", strerror(-r));
		return r;
	}
	return fd;
}

int seg_view_open(const char *path, struct seg_view **out, struct seg_err *err)
{
	return view_open(path, TRUST_NONE, out, err);
}

int seg_view_open_own(const char *path, struct seg_view **out, struct seg_err *err)
{
	return view_open(path, TRUST_OWN, out, err);
}

int seg_view_open_fd(int fd, struct seg_view **out, struct seg_err *err)
{
	return view_map(fd, TRUST_NONE, NULL, out, err);
}

int seg_view_open_fd_prechecked(int fd, const struct seg_precheck *p, struct seg_view **out,
				struct seg_err *err)
{
	return view_map(fd, TRUST_NONE, p, out, err);
}

void seg_view_free(struct seg_view *v)
{
	if (!v)
		return;
	if (v->map)
		munmap(v->map, v->map_len);
	window_free(&v->iter);
	names_free(v->names);
	free(v->images);
	free(v);
}

bool seg_view_same_file(const struct seg_view *v, int fd)
{
	struct stat st;

	return v->from_file && fstat(fd, &st) == 0 && st.st_dev == v->dev && st.st_ino == v->ino;
}

bool seg_view_sealed(const struct seg_view *v) { return v->sealed; }
bool seg_view_prechecked(const struct seg_view *v) { return v->callers; }
const struct seg_header *seg_view_header(const struct seg_view *v) { return &v->header; }
const struct seg_trailer *seg_view_trailer(const struct seg_view *v)
{
	return v->sealed ? &v->trailer : NULL;
}
uint64_t seg_view_digest(const struct seg_view *v) { return v->digest; }
uint64_t seg_view_count(const struct seg_view *v) { return v->count; }
uint64_t seg_view_last_lsn(const struct seg_view *v) { return v->last_lsn; }
size_t seg_view_size(const struct seg_view *v) { return v->len; }
const uint8_t *seg_view_bytes(const struct seg_view *v) { return v->buf; }

void seg_view_rewind(struct seg_view *v)
{
	names_clear(v->names);
	for (uint32_t i = 0; i < v->header.image_count; i++)
		names_bind(v->names, v->images[i].id, v->images[i].name, v->images[i].name_len);
	v->pos = v->records_start;
	v->next_lsn = v->header.first_lsn;
	v->released = 0;
	v->dir_budget = DIR_RENAME_BUDGET;
}

void seg_view_iterate_from(struct seg_view *v, int fd)
{
	window_free(&v->iter);
	if (fd >= 0 && seg_view_same_file(v, fd))
		window_init(&v->iter, fd, v->buf);
}

int seg_view_next(struct seg_view *v, struct seg_record *r)
{
	const uint8_t *h;

	if (v->pos >= v->records_end) {
		release_all(v);
		return 0;
	}
	release_below(v, v->pos);
	/* Validated already: a header the file no longer has (it shrank
	 * since) is read where the mapping shows it, as without a window. */
	h = v->iter.fd >= 0 ? window_get(&v->iter, v->pos, SEG_RECORD_HEADER) : NULL;
	decode_record(h ? h : v->buf + v->pos, r);
	r->payload = v->buf + v->pos + SEG_RECORD_HEADER;
	window_after(&v->iter, r->payload_len);
	r->file_offset = v->pos;
	v->pos += SEG_RECORD_HEADER + r->payload_len;
	/* Validated already; this only replays the namespace changes. */
	if (r->type == SEG_CREATE || r->type == SEG_UNLINK || r->type == SEG_RENAME)
		apply_semantics(v, r, r->file_offset, NULL);
	return 1;
}

const char *seg_view_image_name(const struct seg_view *v, uint32_t id)
{
	return names_get(v->names, id);
}

const struct names *seg_view_names(const struct seg_view *v)
{
	return v->names;
}

uint32_t seg_hash_block(const struct seg_record *r)
{
	return get32(r->payload);
}

uint64_t seg_hash_at(const struct seg_record *r, uint64_t i)
{
	return get64((const uint8_t *)r->payload + SEG_HASH_HEADER + i * 8);
}

void seg_rename_names(const struct seg_record *r, char *old_name, char *new_name)
{
	const char *pl = r->payload;

	memcpy(old_name, pl, r->aux);
	old_name[r->aux] = '\0';
	memcpy(new_name, pl + r->aux, r->payload_len - r->aux);
	new_name[r->payload_len - r->aux] = '\0';
}

void seg_record_name(const struct seg_record *r, char *name)
{
	memcpy(name, r->payload, r->payload_len);
	name[r->payload_len] = '\0';
}
