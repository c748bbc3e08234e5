/*
 * mkseg.c — writes a sealed segment from a text description, so that tests
 * can forge hostile segments whose checksums are all correct.  Test-only:
 * it encodes whatever it is told with the seg_*_encode functions and never
 * validates the result (that is the decoder's job, and the point of it).
 *
 * Usage: mkseg OUTFILE < SPEC.  One directive per line; '#' starts a
 * comment; numbers are decimal, 0x hex or 0-prefixed octal (MODE); names are
 * single words.  Header directives (anywhere):
 *
 *   group UUID        number N        first_lsn N       created NS
 *   image ID NAME     (one header image table entry, in order)
 *   backing_lsn N     sealed NS       (trailer fields)
 *   trailer COUNT LAST_LSN            (forge the trailer's counts)
 *   unsealed          (write no trailer: an unfinished segment)
 *   nocheck-names     (let names the decoder refuses through)
 *
 * Records, in order; LSNs follow from first_lsn unless forced:
 *
 *   write ID OFFSET HEXDATA|@LEN:BYTE     zero ID OFF LEN [punch] [keep]
 *   truncate ID SIZE                      alloc ID OFF LEN [keep]
 *   flush [ID]                            create ID MODE NAME
 *   unlink ID NAME                        rename ID OLD NEW [replace]
 *   renamedir OLD NEW                     mkdir NAME [MODE]
 *   rmdir NAME                            mark LABEL (rest of the line)
 *   raw TYPE FLAGS ID AUX OFFSET LENGTH [HEXDATA]   (any record at all)
 *   raw-lsn N         force the next record's LSN (the ones after follow it)
 *   time NS           time_ns of the records that follow (default 0)
 *
 * Resynchronisation records (docs/RESYNC.md):
 *
 *   sync-begin DEST                       sync-end DEST
 *   resync DEST write|zero|truncate ...   (the record tagged RESYNC, aux DEST)
 *   hash ID OFFSET LENGTH BLOCK [dest=N] HEX16...   (the XXH3-64s, as given)
 *   hash-of ID OFFSET LENGTH BLOCK FILE [dest=N]
 *                     (the hashes of FILE's bytes in the range, each block
 *                     clipped to what FILE holds)
 */
#include "format.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define MAX_WORDS 1100

struct rec {
	struct seg_record r;
	uint8_t *payload;
};

static const char *out_path;
static unsigned line_no;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "mkseg: line %u: ", line_no);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p) {
		fprintf(stderr, "mkseg: out of memory\n");
		exit(1);
	}
	return p;
}

static uint64_t num(const char *s)
{
	char *end;
	uint64_t v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s || *end || *s == '-')
		die("not a number: '%s'", s);
	return v;
}

static uint32_t num32(const char *s)
{
	uint64_t v = num(s);

	if (v > UINT32_MAX)
		die("'%s' does not fit 32 bits", s);
	return (uint32_t)v;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* HEXDATA or @LEN:BYTE into a new buffer. */
static uint8_t *data(const char *s, uint32_t *len)
{
	size_t n = strlen(s);
	uint8_t *p;

	if (s[0] == '@') {
		const char *colon = strchr(s, ':');
		char lenbuf[32];
		uint64_t count, byte;

		if (!colon || (size_t)(colon - s - 1) >= sizeof lenbuf)
			die("expected @LEN:BYTE, got '%s'", s);
		memcpy(lenbuf, s + 1, (size_t)(colon - s - 1));
		lenbuf[colon - s - 1] = '\0';
		count = num(lenbuf);
		byte = num(colon + 1);
		if (count > UINT32_MAX || byte > 255)
			die("bad @LEN:BYTE '%s'", s);
		p = xrealloc(NULL, (size_t)count);
		memset(p, (int)byte, (size_t)count);
		*len = (uint32_t)count;
		return p;
	}
	if (n % 2)
		die("odd number of hex digits");
	p = xrealloc(NULL, n / 2);
	for (size_t i = 0; i < n; i += 2) {
		int hi = hexval(s[i]), lo = hexval(s[i + 1]);

		if (hi < 0 || lo < 0) {
			free(p);
			die("bad hex data '%s'", s);
		}
		p[i / 2] = (uint8_t)(hi << 4 | lo);
	}
	*len = (uint32_t)(n / 2);
	return p;
}

static void check_name(const char *name, bool checked)
{
	if (checked && !seg_name_valid(name, strlen(name)))
		die("'%s' is not a valid image name (nocheck-names allows it)", name);
}

static uint8_t *dup_bytes(const char *a, const char *b, uint32_t *len)
{
	size_t la = strlen(a), lb = b ? strlen(b) : 0;
	uint8_t *p = xrealloc(NULL, la + lb);

	memcpy(p, a, la);
	if (lb)
		memcpy(p + la, b, lb);
	*len = (uint32_t)(la + lb);
	return p;
}

static bool has_word(char **w, int n, int from, const char *word)
{
	for (int i = from; i < n; i++) {
		if (strcmp(w[i], word) == 0)
			return true;
		die("unexpected '%s'", w[i]);
	}
	return false;
}

static void need(int n, int lo, int hi, const char *usage)
{
	if (n < lo || n > hi)
		die("usage: %s", usage);
}

/* "dest=N" */
static bool dest_word(const char *w, uint32_t *dest)
{
	if (strncmp(w, "dest=", 5) != 0)
		return false;
	*dest = num32(w + 5);
	return true;
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* A HASH payload for count blocks of block bytes: header, hashes zeroed. */
static uint8_t *hash_payload(uint32_t block, uint64_t count, uint32_t *len)
{
	uint64_t n = 8 + 8 * count;
	uint8_t *p;

	if (n > UINT32_MAX)
		die("too many hashes");
	p = xrealloc(NULL, (size_t)n);
	memset(p, 0, (size_t)n);
	put32(p, block);
	*len = (uint32_t)n;
	return p;
}

/* The hashes of FILE's bytes in [off, off+len), block by block, each
 * clipped to what the file holds (a missing file holds nothing). */
static void hash_file(uint8_t *payload, const char *path, uint64_t off, uint64_t len,
		      uint32_t block)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = xrealloc(NULL, block);
	uint64_t count = block ? (len + block - 1) / block : 0;

	for (uint64_t i = 0; i < count; i++) {
		uint64_t left = len - i * block;
		size_t want = left < block ? (size_t)left : block, got = 0;

		if (f && fseeko(f, (off_t)(off + i * block), SEEK_SET) == 0)
			got = fread(buf, 1, want, f);
		put64(payload + 8 + 8 * i, XXH3_64bits(buf, got));
	}
	if (f)
		fclose(f);
	free(buf);
}

int main(int argc, char **argv)
{
	struct seg_header h = { .number = 1, .first_lsn = 1 };
	struct seg_image *imgs = NULL;
	struct rec *recs = NULL;
	size_t nrecs = 0, recs_cap = 0, line_cap = 0;
	struct seg_trailer t = { 0 };
	bool checked = true, sealed = true, forced_trailer = false, force_lsn = false;
	uint64_t forced_lsn = 0, time_ns = 0, check;
	uint32_t resync;
	char *line = NULL, *orig = NULL;
	size_t len, cap;
	uint8_t *out;
	ssize_t got;
	FILE *f;

	if (argc != 2) {
		fprintf(stderr, "usage: mkseg OUTFILE < SPEC\n");
		return 2;
	}
	out_path = argv[1];
	seg_uuid_parse("00000000-0000-4000-8000-000000000001", h.group);

	while ((got = getline(&line, &line_cap, stdin)) >= 0) {
		char *w[MAX_WORDS], *save = NULL, *hash;
		struct rec *rc;
		int n = 0;

		line_no++;
		if ((hash = strchr(line, '#')))
			*hash = '\0';
		line[strcspn(line, "\r\n")] = '\0';
		orig = xrealloc(orig, (size_t)got + 1);
		strcpy(orig, line); /* tokenizing cuts line; mark wants the rest of it */
		for (char *tok = strtok_r(line, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
			if (n == MAX_WORDS)
				die("too many words");
			w[n++] = tok;
		}
		if (n == 0)
			continue;

		/* header and trailer directives */
		if (strcmp(w[0], "group") == 0) {
			need(n, 2, 2, "group UUID");
			if (seg_uuid_parse(w[1], h.group) < 0)
				die("bad uuid '%s'", w[1]);
			continue;
		} else if (strcmp(w[0], "number") == 0) {
			need(n, 2, 2, "number N");
			h.number = num(w[1]);
			continue;
		} else if (strcmp(w[0], "first_lsn") == 0) {
			need(n, 2, 2, "first_lsn N");
			h.first_lsn = num(w[1]);
			continue;
		} else if (strcmp(w[0], "created") == 0) {
			need(n, 2, 2, "created NS");
			h.created_ns = num(w[1]);
			continue;
		} else if (strcmp(w[0], "image") == 0) {
			need(n, 3, 3, "image ID NAME");
			check_name(w[2], checked);
			if (strlen(w[2]) > UINT16_MAX)
				die("name too long for the image table");
			imgs = xrealloc(imgs, (h.image_count + 1) * sizeof *imgs);
			imgs[h.image_count].id = num32(w[1]);
			imgs[h.image_count].name_len = (uint16_t)strlen(w[2]);
			imgs[h.image_count].name = strdup(w[2]);
			h.image_count++;
			continue;
		} else if (strcmp(w[0], "backing_lsn") == 0) {
			need(n, 2, 2, "backing_lsn N");
			t.backing_lsn = num(w[1]);
			continue;
		} else if (strcmp(w[0], "sealed") == 0) {
			need(n, 2, 2, "sealed NS");
			t.sealed_ns = num(w[1]);
			continue;
		} else if (strcmp(w[0], "trailer") == 0) {
			need(n, 3, 3, "trailer COUNT LAST_LSN");
			t.count = num(w[1]);
			t.last_lsn = num(w[2]);
			forced_trailer = true;
			continue;
		} else if (strcmp(w[0], "unsealed") == 0) {
			sealed = false;
			continue;
		} else if (strcmp(w[0], "nocheck-names") == 0) {
			checked = false;
			continue;
		} else if (strcmp(w[0], "raw-lsn") == 0) {
			need(n, 2, 2, "raw-lsn N");
			forced_lsn = num(w[1]);
			force_lsn = true;
			continue;
		} else if (strcmp(w[0], "time") == 0) {
			need(n, 2, 2, "time NS");
			time_ns = num(w[1]);
			continue;
		}

		/* records */
		if (nrecs == recs_cap) {
			recs_cap = recs_cap ? recs_cap * 2 : 64;
			recs = xrealloc(recs, recs_cap * sizeof *recs);
		}
		rc = &recs[nrecs];
		memset(rc, 0, sizeof *rc);
		rc->r.time_ns = time_ns;
		resync = 0;
		if (strcmp(w[0], "resync") == 0) {
			need(n, 3, MAX_WORDS, "resync DEST write|zero|truncate ...");
			resync = num32(w[1]);
			memmove(w, w + 2, (size_t)(n - 2) * sizeof w[0]);
			n -= 2;
		}
		if (strcmp(w[0], "write") == 0) {
			need(n, 4, 4, "write ID OFFSET HEXDATA|@LEN:BYTE");
			rc->r.type = SEG_WRITE;
			rc->r.image = num32(w[1]);
			rc->r.offset = num(w[2]);
			rc->payload = data(w[3], &rc->r.payload_len);
			rc->r.length = rc->r.payload_len;
		} else if (strcmp(w[0], "zero") == 0 || strcmp(w[0], "alloc") == 0) {
			bool zero = w[0][0] == 'z';

			need(n, 4, zero ? 6 : 5, zero ? "zero ID OFF LEN [punch] [keep]"
						  : "alloc ID OFF LEN [keep]");
			rc->r.type = zero ? SEG_ZERO : SEG_ALLOC;
			rc->r.image = num32(w[1]);
			rc->r.offset = num(w[2]);
			rc->r.length = num(w[3]);
			for (int i = 4; i < n; i++) {
				if (zero && strcmp(w[i], "punch") == 0)
					rc->r.flags |= SEG_F_PUNCH;
				else if (strcmp(w[i], "keep") == 0)
					rc->r.flags |= SEG_F_KEEP_SIZE;
				else
					die("unexpected '%s'", w[i]);
			}
		} else if (strcmp(w[0], "truncate") == 0) {
			need(n, 3, 3, "truncate ID SIZE");
			rc->r.type = SEG_TRUNCATE;
			rc->r.image = num32(w[1]);
			rc->r.offset = num(w[2]);
		} else if (strcmp(w[0], "flush") == 0) {
			need(n, 1, 2, "flush [ID]");
			rc->r.type = SEG_FLUSH;
			rc->r.image = n == 2 ? num32(w[1]) : 0;
		} else if (strcmp(w[0], "create") == 0) {
			need(n, 4, 4, "create ID MODE NAME");
			check_name(w[3], checked);
			rc->r.type = SEG_CREATE;
			rc->r.image = num32(w[1]);
			rc->r.aux = num32(w[2]);
			rc->payload = dup_bytes(w[3], NULL, &rc->r.payload_len);
		} else if (strcmp(w[0], "unlink") == 0) {
			need(n, 3, 3, "unlink ID NAME");
			check_name(w[2], checked);
			rc->r.type = SEG_UNLINK;
			rc->r.image = num32(w[1]);
			rc->payload = dup_bytes(w[2], NULL, &rc->r.payload_len);
		} else if (strcmp(w[0], "rename") == 0) {
			need(n, 4, 5, "rename ID OLD NEW [replace]");
			check_name(w[2], checked);
			check_name(w[3], checked);
			rc->r.type = SEG_RENAME;
			rc->r.image = num32(w[1]);
			rc->r.aux = (uint32_t)strlen(w[2]);
			if (has_word(w, n, 4, "replace"))
				rc->r.flags = SEG_F_REPLACE;
			rc->payload = dup_bytes(w[2], w[3], &rc->r.payload_len);
		} else if (strcmp(w[0], "renamedir") == 0) {
			need(n, 3, 3, "renamedir OLD NEW");
			check_name(w[1], checked);
			check_name(w[2], checked);
			rc->r.type = SEG_RENAME;
			rc->r.flags = SEG_F_DIR;
			rc->r.aux = (uint32_t)strlen(w[1]);
			rc->payload = dup_bytes(w[1], w[2], &rc->r.payload_len);
		} else if (strcmp(w[0], "mkdir") == 0 || strcmp(w[0], "rmdir") == 0) {
			bool mk = w[0][0] == 'm';

			need(n, 2, mk ? 3 : 2, mk ? "mkdir NAME [MODE]" : "rmdir NAME");
			check_name(w[1], checked);
			rc->r.type = mk ? SEG_MKDIR : SEG_RMDIR;
			rc->r.aux = mk ? (n == 3 ? num32(w[2]) : 0755) : 0;
			rc->payload = dup_bytes(w[1], NULL, &rc->r.payload_len);
		} else if (strcmp(w[0], "mark") == 0) {
			char *label = orig + strspn(orig, " \t") + 4, *end;

			need(n, 2, MAX_WORDS, "mark LABEL");
			rc->r.type = SEG_MARK;
			label += strspn(label, " \t");
			end = label + strlen(label);
			while (end > label && (end[-1] == ' ' || end[-1] == '\t'))
				*--end = '\0';
			rc->payload = dup_bytes(label, NULL, &rc->r.payload_len);
		} else if (strcmp(w[0], "raw") == 0) {
			uint64_t v;

			need(n, 7, 8, "raw TYPE FLAGS ID AUX OFFSET LENGTH [HEXDATA]");
			v = num(w[1]);
			if (v > 255 || num(w[2]) > 255)
				die("TYPE and FLAGS are bytes");
			rc->r.type = (uint8_t)v;
			rc->r.flags = (uint8_t)num(w[2]);
			rc->r.image = num32(w[3]);
			rc->r.aux = num32(w[4]);
			rc->r.offset = num(w[5]);
			rc->r.length = num(w[6]);
			if (n == 8)
				rc->payload = data(w[7], &rc->r.payload_len);
		} else if (strcmp(w[0], "sync-begin") == 0 || strcmp(w[0], "sync-end") == 0) {
			need(n, 2, 2, "sync-begin|sync-end DEST");
			rc->r.type = w[0][5] == 'b' ? SEG_SYNC_BEGIN : SEG_SYNC_END;
			rc->r.aux = num32(w[1]);
		} else if (strcmp(w[0], "hash") == 0 || strcmp(w[0], "hash-of") == 0) {
			bool of = w[0][4] == '-';
			uint64_t count;
			uint32_t block;
			int i = 5;

			need(n, of ? 6 : 5, of ? 7 : MAX_WORDS,
			     of ? "hash-of ID OFFSET LENGTH BLOCK FILE [dest=N]"
				: "hash ID OFFSET LENGTH BLOCK [dest=N] HEX16...");
			rc->r.type = SEG_HASH;
			rc->r.image = num32(w[1]);
			rc->r.offset = num(w[2]);
			rc->r.length = num(w[3]);
			block = num32(w[4]);
			if (of) {
				if (n == 7 && !dest_word(w[6], &rc->r.aux))
					die("unexpected '%s'", w[6]);
				if (!block)
					die("block size 0");
				count = (rc->r.length + block - 1) / block;
				rc->payload = hash_payload(block, count, &rc->r.payload_len);
				hash_file(rc->payload, w[5], rc->r.offset, rc->r.length, block);
			} else {
				if (i < n && dest_word(w[i], &rc->r.aux))
					i++;
				count = (uint64_t)(n - i);
				rc->payload = hash_payload(block, count, &rc->r.payload_len);
				for (uint64_t k = 0; k < count; k++) {
					uint32_t l;
					uint8_t *hx = data(w[i + k], &l);

					if (l != 8)
						die("a hash is 16 hex digits, not '%s'", w[i + k]);
					/* as written: the big-endian reading of the digits */
					put64(rc->payload + 8 + 8 * k,
					      (uint64_t)hx[0] << 56 | (uint64_t)hx[1] << 48 |
					      (uint64_t)hx[2] << 40 | (uint64_t)hx[3] << 32 |
					      (uint64_t)hx[4] << 24 | (uint64_t)hx[5] << 16 |
					      (uint64_t)hx[6] << 8 | hx[7]);
					free(hx);
				}
			}
		} else {
			die("unknown directive '%s'", w[0]);
		}
		if (resync) {
			rc->r.flags |= SEG_F_RESYNC;
			rc->r.aux = resync;
		}
		rc->r.lsn = force_lsn ? forced_lsn : nrecs ? recs[nrecs - 1].r.lsn + 1 : h.first_lsn;
		force_lsn = false;
		rc->r.payload = rc->payload;
		rc->r.payload_hash = seg_payload_hash(rc->payload, rc->r.payload_len);
		nrecs++;
	}
	free(line);
	free(orig);
	if (force_lsn)
		die("raw-lsn with no record after it");

	/* encode: header, records, trailer */
	h.images = imgs;
	len = seg_header_size(&h);
	cap = len + SEG_TRAILER_SIZE;
	for (size_t i = 0; i < nrecs; i++)
		cap += SEG_RECORD_HEADER + recs[i].r.payload_len;
	out = xrealloc(NULL, cap);
	check = seg_header_encode(&h, out);
	for (size_t i = 0; i < nrecs; i++) {
		check = seg_record_encode(&recs[i].r, check, out + len);
		len += SEG_RECORD_HEADER;
		if (recs[i].r.payload_len)
			memcpy(out + len, recs[i].payload, recs[i].r.payload_len);
		len += recs[i].r.payload_len;
		free(recs[i].payload);
	}
	if (sealed) {
		if (!forced_trailer) {
			t.count = nrecs;
			t.last_lsn = nrecs ? recs[nrecs - 1].r.lsn : h.first_lsn - 1;
		}
		seg_trailer_encode(&t, check, out + len);
		len += SEG_TRAILER_SIZE;
	}
	f = fopen(out_path, "wb");
	if (!f || fwrite(out, 1, len, f) != len || fclose(f) != 0) {
		fprintf(stderr, "mkseg: %s: %s\n", out_path, strerror(errno));
		return 1;
	}
	for (uint32_t i = 0; i < h.image_count; i++)
		free((char *)imgs[i].name);
	free(imgs);
	free(recs);
	free(out);
	return 0;
}
