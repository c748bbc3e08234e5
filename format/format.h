/*
 * format.h — the aimfs segment format, the whole interface of format/: the
 * one encoder and decoder that the journal writer, the indexer, the shipper,
 * the remote applier, aimctl and the fuzzer all use (segment.c), and the
 * image name table that follows an image namespace through a segment's
 * records (names.c), and the parser of the points an operator names in a
 * stream: an LSN, a time, a mark (point.c).  No program owns it; every one
 * links it.  docs/FORMAT.md is the byte-level specification; this header is
 * the C view of it.
 *
 * A segment is header + image table, a run of records, and a trailer that
 * seals it.  Every record carries a check that chains to the one before it
 * (XXH3-64 seeded with the previous check), so the trailer's check is a digest
 * of the whole segment.  Decoding validates the whole segment (magic,
 * version, checksums, LSN sequence, record bounds, image names and ids)
 * before the caller sees a single record: nothing acts on a segment that has
 * not passed as a whole.
 *
 * Thread safety: the encoders are pure functions; a struct seg_view belongs
 * to one thread at a time.
 */
#ifndef AIM_FORMAT_H
#define AIM_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SEG_VERSION 1
#define SEG_HEADER_FIXED 72     /* bytes before the image table */
#define SEG_RECORD_HEADER 64    /* bytes before each record's payload */
#define SEG_TRAILER_SIZE 56
#define SEG_NAME_MAX 4095       /* longest image path, bytes */
#define SEG_COMPONENT_MAX 255   /* longest path component, bytes */
#define SEG_MARK_MAX 255        /* longest MARK label, bytes */
#define SEG_TABLE_MAX (16u << 20) /* largest image table, bytes */
#define SEG_PAYLOAD_MAX (1u << 30) /* largest record payload, bytes */
#define SEG_FILE_DIGITS 20
#define SEG_FILE_SUFFIX ".aimj"
#define SEG_OPEN_SUFFIX ".open"
/* A pruned segment file kept for the journal to write its next segment
 * over (its pages are still cached); never read as a segment. */
#define SEG_FREE_SUFFIX ".free"
#define SEG_FILE_NAME_LEN (SEG_FILE_DIGITS + 5)

enum seg_type {
	SEG_WRITE = 1,    /* bytes at offset; payload = the data */
	SEG_ZERO = 2,     /* range reads as zeros; flags PUNCH, KEEP_SIZE */
	SEG_TRUNCATE = 3, /* size becomes offset */
	SEG_ALLOC = 4,    /* preallocate range; flags KEEP_SIZE */
	SEG_FLUSH = 5,    /* barrier: make targets durable here */
	SEG_CREATE = 6,   /* new empty image; payload = name, aux = mode,
			     offset = source inode number (informational) */
	SEG_UNLINK = 7,   /* image removed; payload = its name */
	SEG_RENAME = 8,   /* payload = old name then new name, aux = old length */
	SEG_MKDIR = 9,    /* payload = directory name, aux = mode */
	SEG_RMDIR = 10,   /* payload = directory name */
	SEG_MARK = 11,    /* named point in time; payload = label */
	SEG_SYNC_BEGIN = 12, /* destination aux's targets stop being consistent */
	SEG_SYNC_END = 13,   /* ... and are consistent again (docs/RESYNC.md) */
	SEG_HASH = 14,    /* range's block hashes for comparison; aux = destination
			     (0: all); payload = u32 block size, u32 0, XXH3-64s */
	SEG_SKIP = 15,    /* nothing: stands for a record meant for another
			     destination, keeping this one's LSNs the source's */
	SEG_TYPE_MAX = SEG_SKIP
};

#define SEG_F_PUNCH 0x01     /* ZERO: deallocate the range too */
#define SEG_F_KEEP_SIZE 0x02 /* ZERO, ALLOC: do not change the size */
#define SEG_F_DIR 0x04       /* RENAME: of a directory (image 0) */
#define SEG_F_REPLACE 0x08   /* RENAME: the new name replaced an image */
#define SEG_F_RESYNC 0x10    /* WRITE, ZERO, TRUNCATE: part of destination aux's resync */

#define SEG_HASH_BLOCK_MIN 4096u
#define SEG_HASH_BLOCK_MAX (16u << 20)
#define SEG_HASH_HEADER 8   /* bytes before the hashes in a HASH payload */


struct seg_image {
	uint32_t id;       /* non-zero */
	uint16_t name_len;
	const char *name;  /* not NUL-terminated */
};

struct seg_header {
	uint8_t group[16];
	uint64_t number;     /* segment number, >= 1 */
	uint64_t first_lsn;  /* LSN of the first record, >= 1 */
	uint64_t created_ns; /* wall clock when the segment was opened */
	uint32_t image_count;
	const struct seg_image *images;
};

struct seg_record {
	uint8_t type;
	uint8_t flags;
	uint32_t image;       /* 0 for FLUSH of all, MKDIR, RMDIR, dir RENAME, MARK */
	uint32_t aux;
	uint64_t lsn;
	uint64_t offset;
	uint64_t length;
	uint64_t time_ns;     /* source wall clock when journaled */
	const void *payload;
	uint32_t payload_len;
	uint64_t payload_hash; /* seg_payload_hash(payload, payload_len) */
	uint64_t check;        /* filled by the decoder */
	uint64_t file_offset;  /* decoder: where the record header starts */
};

struct seg_trailer {
	uint64_t count;       /* records in the segment */
	uint64_t last_lsn;    /* first_lsn + count - 1 (first_lsn - 1 if empty) */
	uint64_t backing_lsn; /* source-local: every LSN <= this was on the backing files at seal */
	uint64_t sealed_ns;
};

/* Why a segment was refused: a message a person can act on. */
struct seg_err {
	char msg[256];
	uint64_t offset; /* byte offset in the segment where the problem is */
};

/* ---- names ---- */

/* Segment file name for number n: 20 zero-padded digits + suffix.  buf must
 * hold SEG_FILE_NAME_LEN + 6 bytes. */
void seg_file_name(uint64_t n, const char *suffix, char *buf);
/* Parses a sealed segment file name; returns 0 and sets *n, or -EINVAL. */
int seg_parse_file_name(const char *name, uint64_t *n);
/* True if name (len bytes) is a safe relative image path: components of
 * 1..255 bytes separated by single '/', none "." or "..", no NUL, no
 * control characters, 1..SEG_NAME_MAX bytes. */
bool seg_name_valid(const char *name, size_t len);
/* True if label (len bytes) may be a MARK's payload: 1..SEG_MARK_MAX
 * bytes, none below 0x20 and no 0x7f (docs/FORMAT.md, MARK). */
bool seg_mark_label_valid(const char *label, size_t len);
/* Formats a 16-byte group UUID as 36 characters + NUL; parses it back. */
void seg_uuid_format(const uint8_t uuid[16], char out[37]);
int seg_uuid_parse(const char *s, uint8_t uuid[16]);

/* ---- encoding ---- */

uint64_t seg_payload_hash(const void *payload, size_t len);
/* Bytes the header and image table take. */
size_t seg_header_size(const struct seg_header *h);
/* Writes seg_header_size(h) bytes to out; returns the header check, which
 * seeds the first record's check. */
uint64_t seg_header_encode(const struct seg_header *h, uint8_t *out);
/* Writes the 64-byte record header; r->payload_hash must be set.  Returns
 * this record's check, the seed of the next one. */
uint64_t seg_record_encode(const struct seg_record *r, uint64_t prev_check,
			   uint8_t out[SEG_RECORD_HEADER]);
/* Writes the trailer; returns the segment digest (the trailer's check). */
uint64_t seg_trailer_encode(const struct seg_trailer *t, uint64_t prev_check,
			    uint8_t out[SEG_TRAILER_SIZE]);

/* In-memory builder for whole segments (aimctl, the transport's filtered
 * copies, tests).  Grows a buffer; seg_builder_finish seals it and hands
 * the bytes to the caller (free() them). */
struct seg_builder;
struct seg_builder *seg_builder_new(const struct seg_header *h);
/* Appends a record; r->lsn is assigned (first_lsn + count) and returned. */
uint64_t seg_builder_add(struct seg_builder *b, struct seg_record *r);
uint64_t seg_builder_count(const struct seg_builder *b);
size_t seg_builder_size(const struct seg_builder *b);
int seg_builder_finish(struct seg_builder *b, uint64_t backing_lsn, uint8_t **out, size_t *len);
/* The trailer's sealed time (default: when seg_builder_finish runs).  A
 * re-encoding that must come out byte-identical every time sets it. */
void seg_builder_set_sealed(struct seg_builder *b, uint64_t sealed_ns);
void seg_builder_free(struct seg_builder *b);

/* ---- decoding ---- */

struct seg_view;

/*
 * Validates a complete sealed segment held in buf (len bytes) and returns a
 * view over it.  The buffer must stay valid and unchanged while the view
 * lives.  Returns 0, or -EBADMSG with *err filled.
 */
int seg_view_new(const void *buf, size_t len, struct seg_view **out, struct seg_err *err);
/* Maps the file at path read-only and validates it as above (-errno on I/O). */
int seg_view_open(const char *path, struct seg_view **out, struct seg_err *err);
/*
 * The same for a segment this process wrote and has not read back since
 * (the journal's sealer indexing it): everything is checked but the
 * payloads' hashes, which the writer computed from the very bytes it wrote.
 * Hashing them again reads every byte through a fresh mapping, which on a
 * VM whose hypervisor shadows page tables costs a fault per page (about a
 * third of aimfs's CPU for large writes, measured); whoever reads the
 * segment next (a destination's shipper, recovery, aimctl) still checks
 * them.  Not for files others may have placed or changed.
 */
int seg_view_open_own(const char *path, struct seg_view **out, struct seg_err *err);
/*
 * Opens the file at path for seg_view_open_fd (read-only, never blocking on
 * a FIFO).  Returns the fd, or -errno with *err filled.
 */
int seg_open_file(const char *path, struct seg_err *err);
/*
 * seg_view_open for a file the caller opened and keeps open: it can read
 * the bytes again with pread(fd), which copies them from the page cache,
 * rather than through the view's mapping, whose pages validation touched
 * and let go (a shipper streaming a large segment to a socket).
 */
int seg_view_open_fd(int fd, struct seg_view **out, struct seg_err *err);
/*
 * For a view seg_view_open or seg_view_open_fd made: whether the file open
 * at fd is the one it was mapped from (device and inode), so that its
 * bytes can be read with pread at their offset in the view instead of
 * through the mapping (apply.h, applier_set_source).  False for views
 * over memory.
 */
bool seg_view_same_file(const struct seg_view *v, int fd);
/*
 * From now on seg_view_next reads each record's header from the file open
 * at fd with pread (a small window at a time) instead of through the
 * view's mapping, if fd is the file the view was mapped from (see
 * seg_view_same_file; otherwise, or with fd -1, it reads the mapping).
 * Payload pointers still point into the mapping.  The caller keeps fd
 * open while it iterates, or sets -1 first.  For a VM whose hypervisor
 * makes each page first touched through a mapping cost an exit: records
 * of 4 KiB touch every page of it.
 */
void seg_view_iterate_from(struct seg_view *v, int fd);
/*
 * Checking payloads as a segment streams in.  A receiver that writes a
 * segment to a file as its bytes arrive feeds them, in order, to a
 * precheck, which finds the records and hashes each payload from the
 * receiver's own buffers; seg_view_new_prechecked then validates the
 * stored file without reading the payloads again (through a fresh mapping
 * that costs a fault per page on some VMs).  The precheck applies no
 * rule of its own: the walk still checks everything else, and anything
 * the precheck could not follow or found wrong makes it the full
 * seg_view_new, with its result and message.
 */
struct seg_precheck;
struct seg_precheck *seg_precheck_new(void); /* NULL if out of memory */
void seg_precheck_feed(struct seg_precheck *p, const void *buf, size_t len); /* p NULL: no-op */
void seg_precheck_free(struct seg_precheck *p);
/* An independent copy of p, fed so far (NULL if p is NULL or out of
 * memory): one precheck can vouch for a file to several readers. */
struct seg_precheck *seg_precheck_copy(const struct seg_precheck *p);
/* Feeds p bytes [0, len) of the file open at fd, read with pread into a
 * 256 KiB buffer (up to the trailer: what follows it only counts).
 * Returns 0, or -errno (-ENODATA if the file ends before len, short of
 * its trailer). */
int seg_precheck_read(struct seg_precheck *p, int fd, uint64_t len);
/*
 * seg_view_new for buf[0..len), which must be exactly the bytes fed to p
 * (p may be NULL: then it is seg_view_new).  The walk compares where the
 * records are and what hashes they state with what p saw, not the
 * payloads' bytes: a file changed in place between a seg_precheck_read
 * and the walk of its mapping can pass with payloads p never hashed, as a
 * file changed after any check can be read changed.  Only its writer can
 * change a file it keeps to itself.
 */
int seg_view_new_prechecked(const void *buf, size_t len, const struct seg_precheck *p,
			    struct seg_view **out, struct seg_err *err);
/* seg_view_open_fd of a file whose bytes were all fed to p as they were
 * written to it (a receiver's temporary file): its payloads are not read
 * again, and its record headers are read with pread, as seg_view_open_fd
 * reads them (p NULL: seg_view_open_fd). */
int seg_view_open_fd_prechecked(int fd, const struct seg_precheck *p, struct seg_view **out,
				struct seg_err *err);
/*
 * Recovery form for a segment that may be unfinished: walks records until
 * the first one that is invalid or incomplete, which ends the log (a torn
 * tail is expected after a crash, not an error).  The header itself must be
 * valid.  *valid_len is the length of the good prefix (header + whole
 * records, or the whole file if it is sealed); seg_view_sealed() tells which.
 */
int seg_view_new_partial(const void *buf, size_t len, struct seg_view **out,
			 size_t *valid_len, struct seg_err *err);
void seg_view_free(struct seg_view *v);

bool seg_view_sealed(const struct seg_view *v);
/* Whether validation took the payloads' hashes from the precheck the
 * caller gave (seg_view_new_prechecked, seg_view_open_fd_prechecked)
 * rather than hashing them itself because it did not stand for them. */
bool seg_view_prechecked(const struct seg_view *v);
const struct seg_header *seg_view_header(const struct seg_view *v);
const struct seg_trailer *seg_view_trailer(const struct seg_view *v); /* NULL if unsealed */
uint64_t seg_view_digest(const struct seg_view *v); /* trailer check, or last check */
uint64_t seg_view_count(const struct seg_view *v);
uint64_t seg_view_last_lsn(const struct seg_view *v);
size_t seg_view_size(const struct seg_view *v);
const uint8_t *seg_view_bytes(const struct seg_view *v);

/* For a view made by seg_view_open: lets the kernel drop the mapped pages
 * below byte off from this process's resident memory (a reader streaming
 * through a large segment calls it as it goes; iteration and validation do
 * it themselves).  The bytes stay readable: they fault back in. */
void seg_view_release(struct seg_view *v, size_t off);

/* Iteration over validated records, in order.  Returns 1 and fills *r, or 0
 * at the end.  seg_view_rewind starts again. */
int seg_view_next(struct seg_view *v, struct seg_record *r);
void seg_view_rewind(struct seg_view *v);

/* Name of image id as of the record last returned by seg_view_next (the
 * header's table plus the CREATE/RENAME/UNLINK records before it); NULL if
 * the id is not bound there.  The string is owned by the view. */
const char *seg_view_image_name(const struct seg_view *v, uint32_t id);

/* The whole namespace as of the record last returned by seg_view_next (the
 * header's table after seg_view_rewind; every live image at the end). */
struct names;
const struct names *seg_view_names(const struct seg_view *v);

/* For RENAME records: splits the payload into old and new names (copied,
 * NUL-terminated, into bufs of SEG_NAME_MAX + 1 bytes). */
void seg_rename_names(const struct seg_record *r, char *old_name, char *new_name);
/* For records whose payload is one name: copies it NUL-terminated. */
void seg_record_name(const struct seg_record *r, char *name);

const char *seg_type_name(uint8_t type);
/* Block size of a validated HASH record, and its i-th hash. */
uint32_t seg_hash_block(const struct seg_record *r);
uint64_t seg_hash_at(const struct seg_record *r, uint64_t i);

/*
 * ---- the name table (names.c) ----
 *
 * The image namespace of one segment as its records unfold:
 * which image id is bound to which relative path.  Used by the segment
 * decoder (to validate that every record names a bound image, and to answer
 * seg_view_image_name) and by anything else that must follow renames.
 *
 * Hash tables on both id and name keep every operation O(1) on average, so
 * that a hostile segment with millions of images or renames cannot make a
 * decoder quadratic.  Not thread-safe; one owner.
 */

struct names;

struct names *names_new(void);
void names_free(struct names *n);
void names_clear(struct names *n);

/* Binds id to name (len bytes, copied).  -EEXIST if the id or the name is
 * already bound, -ENOMEM. */
int names_bind(struct names *n, uint32_t id, const char *name, size_t len);
/* Removes id's binding; -ENOENT if unbound. */
int names_unbind(struct names *n, uint32_t id);
/* Current name of id (NUL-terminated, owned by the table) or NULL. */
const char *names_get(const struct names *n, uint32_t id);
/* Id bound to name, or 0. */
uint32_t names_find(const struct names *n, const char *name, size_t len);
/* Renames id to new_name; an image already holding new_name is unbound
 * first and its id returned in *replaced (0 if none). */
int names_rename(struct names *n, uint32_t id, const char *new_name, size_t len,
		 uint32_t *replaced);
/* Renames every image under directory old_dir/ to the same path under
 * new_dir/.  Returns the number renamed (0 when old_dir equals new_dir), or
 * -EEXIST if an image is named new_dir or lies under it (POSIX renames a
 * directory only onto an empty one), -ENAMETOOLONG if an image's new name
 * would be longer than SEG_NAME_MAX (both leave the table as it was), or
 * -ENOMEM. */
long names_rename_dir(struct names *n, const char *old_dir, size_t old_len,
		      const char *new_dir, size_t new_len);
size_t names_count(const struct names *n);
/* Calls fn for every binding, in no particular order; stops if fn returns
 * non-zero and returns that value. */
int names_each(const struct names *n, int (*fn)(void *ctx, uint32_t id, const char *name),
	       void *ctx);

/* ---- points (point.c) ---- */

/* A point of a group's stream as an operator names it (aimctl replay
 * --until, check --from, aim-remote's hold and promote --at). */
enum point_kind { POINT_LSN = 1, POINT_TIME, POINT_MARK };

struct point_spec {
	enum point_kind kind;
	uint64_t lsn;                 /* POINT_LSN */
	uint64_t time_ns;             /* POINT_TIME, ns since the epoch */
	char mark[SEG_MARK_MAX + 1];  /* POINT_MARK */
	char text[320];               /* as given, for messages */
};

/*
 * Parses a point: "LSN" or "lsn:LSN" (a record's LSN); "mark:NAME" or
 * "MARK:NAME"; a time, ISO 8601 ("2024-05-01T12:00:00.5Z", with "Z", a
 * "+02:00" offset, or no zone for UTC; a space may replace the "T") or
 * epoch seconds "@1714564800.5", optionally after "time:".  Returns 0, or
 * -EINVAL with the reason in err.
 */
int point_parse(const char *text, struct point_spec *p, char *err, size_t errlen);

#endif
