/*
 * precheck.c — hashes a segment's payloads as its bytes stream past
 * (format.h, "Checking payloads as a segment streams in").
 *
 * It follows the records only as far as it must to find each payload:
 * the header's table length, then per record its payload length and the
 * hash its header states, stopping at the trailer's magic exactly where
 * walk() does.  It judges nothing else; a segment it cannot follow or a
 * payload that hashes differently just leaves it without a result, and
 * the full validation then finds and words the fault.
 */
#include "format_i.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

enum phase {
	PC_HEADER,  /* the fixed header */
	PC_TABLE,   /* the image table, skipped */
	PC_RECORD,  /* a record's header (or the trailer's magic) */
	PC_PAYLOAD, /* a record's payload, hashed */
	PC_TAIL,    /* at the trailer: done */
	PC_LOST,    /* not followable, or a payload hashed differently */
};

struct seg_precheck {
	XXH3_state_t *hash;
	enum phase phase;
	uint64_t fed;      /* bytes fed so far */
	uint64_t end;      /* offset where the current piece ends */
	uint8_t piece[SEG_HEADER_FIXED]; /* the fixed header or a record header */
	size_t have;       /* bytes of it gathered */
	uint64_t rec_pos;  /* the current record's offset */
	uint32_t rec_len;  /* its payload length */
	uint64_t rec_hash; /* the payload hash its header states */
	uint64_t count, tail_pos, fold;
};

_Static_assert(SEG_HEADER_FIXED >= SEG_RECORD_HEADER, "piece holds a record header");

uint64_t seg_precheck_fold(uint64_t fold, uint64_t pos, uint32_t payload_len,
			   uint64_t payload_hash)
{
	uint64_t v[3] = { pos, payload_len, payload_hash };

	return XXH3_64bits_withSeed(v, sizeof v, fold);
}

struct seg_precheck *seg_precheck_new(void)
{
	struct seg_precheck *p = calloc(1, sizeof *p);

	if (!p)
		return NULL;
	p->hash = XXH3_createState();
	if (!p->hash) {
		free(p);
		return NULL;
	}
	p->phase = PC_HEADER;
	p->end = SEG_HEADER_FIXED;
	return p;
}

struct seg_precheck *seg_precheck_copy(const struct seg_precheck *p)
{
	struct seg_precheck *c = p ? seg_precheck_new() : NULL;
	XXH3_state_t *own;

	if (!c)
		return NULL;
	own = c->hash;
	*c = *p;
	c->hash = own;
	XXH3_copyState(own, p->hash);
	return c;
}

void seg_precheck_free(struct seg_precheck *p)
{
	if (!p)
		return;
	XXH3_freeState(p->hash);
	free(p);
}

static void record_begins(struct seg_precheck *p, uint64_t pos)
{
	p->phase = PC_RECORD;
	p->rec_pos = pos;
	p->end = pos + SEG_RECORD_HEADER;
	p->have = 0;
}

/* The fixed piece being gathered is complete: decide what follows. */
static void piece_done(struct seg_precheck *p)
{
	uint32_t table;

	if (p->phase == PC_HEADER) {
		table = get32(p->piece + 12);
		if (memcmp(p->piece, seg_head_magic, 8) != 0 || table > SEG_TABLE_MAX) {
			p->phase = PC_LOST;
			return;
		}
		p->phase = PC_TABLE;
		p->end = SEG_HEADER_FIXED + (uint64_t)table;
		if (table == 0)
			record_begins(p, p->end);
		return;
	}
	/* PC_RECORD, whole header */
	p->rec_len = get32(p->piece + 4);
	p->rec_hash = get64(p->piece + 48);
	if (p->rec_len > SEG_PAYLOAD_MAX) {
		p->phase = PC_LOST;
		return;
	}
	XXH3_64bits_reset(p->hash);
	p->phase = PC_PAYLOAD;
	p->end = p->rec_pos + SEG_RECORD_HEADER + p->rec_len;
}

static void payload_done(struct seg_precheck *p)
{
	if (XXH3_64bits_digest(p->hash) != p->rec_hash) {
		p->phase = PC_LOST;
		return;
	}
	p->fold = seg_precheck_fold(p->fold, p->rec_pos, p->rec_len, p->rec_hash);
	p->count++;
	record_begins(p, p->end);
}

void seg_precheck_feed(struct seg_precheck *p, const void *buf, size_t len)
{
	const uint8_t *b = buf;

	if (!p)
		return;
	while (len && p->phase != PC_TAIL && p->phase != PC_LOST) {
		size_t n = p->end - p->fed < len ? (size_t)(p->end - p->fed) : len;

		switch (p->phase) {
		case PC_HEADER:
		case PC_RECORD:
			memcpy(p->piece + p->have, b, n);
			p->have += n;
			/* walk() takes 8 bytes of the trailer's magic for a trailer
			 * before it reads them as a record */
			if (p->phase == PC_RECORD && p->have >= 8 && p->have - n < 8 &&
			    memcmp(p->piece, seg_tail_magic, 8) == 0) {
				p->phase = PC_TAIL;
				p->tail_pos = p->rec_pos;
			}
			break;
		case PC_PAYLOAD:
			XXH3_64bits_update(p->hash, b, n);
			break;
		default:
			break;
		}
		p->fed += n;
		b += n;
		len -= n;
		if (p->phase == PC_TAIL || p->fed < p->end)
			continue;
		if (p->phase == PC_TABLE)
			record_begins(p, p->end);
		else if (p->phase == PC_PAYLOAD)
			payload_done(p);
		else
			piece_done(p);
	}
	p->fed += len; /* what follows the trailer, or what could not be followed */
}

/* Large enough that pread's per-call cost vanishes, small enough to stay
 * in the CPU's cache while it is hashed. */
#define READ_PIECE (256u << 10)

int seg_precheck_read(struct seg_precheck *p, int fd, uint64_t len)
{
	uint8_t *buf;
	uint64_t at = 0;

	if (!p)
		return -EINVAL;
	buf = malloc(READ_PIECE);
	if (!buf)
		return -ENOMEM;
	while (at < len && p->phase != PC_TAIL && p->phase != PC_LOST) {
		size_t want = len - at < READ_PIECE ? (size_t)(len - at) : READ_PIECE;
		ssize_t n = pread(fd, buf, want, (off_t)at);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			free(buf);
			return n < 0 ? -errno : -ENODATA;
		}
		seg_precheck_feed(p, buf, (size_t)n);
		at += (uint64_t)n;
	}
	free(buf);
	p->fed += len - at; /* past the trailer: the walk looks at those */
	return 0;
}

bool seg_precheck_result(const struct seg_precheck *p, uint64_t *count, uint64_t *tail_pos,
			 uint64_t *fold, uint64_t *fed)
{
	if (!p || p->phase != PC_TAIL)
		return false;
	*count = p->count;
	*tail_pos = p->tail_pos;
	*fold = p->fold;
	*fed = p->fed;
	return true;
}
