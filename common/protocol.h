/*
 * protocol.h — the one definition of the HTTP protocol between a source
 * (aimfs's transport and resync engine, aimctl) and aim-remote's receiver.
 *
 * Segments.  PUT <url>/<group-uuid>/<segment file> uploads a sealed
 * segment (Content-Type application/octet-stream, optionally
 * Content-Encoding: zstd over the unchanged segment bytes), authenticated
 * by TLS (optionally a client certificate) and "Authorization: Bearer
 * <token>".  GET and HEAD of the same path return a segment the receiver
 * still holds.  Any WebDAV server that takes PUT can receive segments; only
 * aim-remote answers the rest of this file.
 *
 * What the receiver answers, and what the sender does with it:
 *   201 stored                     acknowledged
 *   200 an identical copy is held  acknowledged (or was applied already)
 *   400, 401, 403, 404, 405, 409,
 *   411, 413, 415, 422             refused for good: the destination stops,
 *                                  with the code and the one-line reason
 *   408, 429, 5xx                  retried with back-off (503 and 429 may
 *                                  carry Retry-After, in seconds)
 *   507 the inbox has no room      retried
 *
 * Mismatches.  GET <url>/<group-uuid>/mismatches?after=<LSN> answers, as
 * JSON (struct proto_mismatches), the block ranges that HASH records with
 * an LSN above after found different on the remote's targets
 * (docs/RESYNC.md): ranges of LSNs up to applied_lsn only, ordered by LSN
 * then offset, at most a bounded number per answer ending at a whole LSN,
 * with more = true when some were left out (ask again with after = the last
 * range's LSN).  The first question of a resync (after = 0) also lists the
 * remote's targets and their sizes.  Every answer also says the group's
 * state there (idle, applying, waiting, stopped, held, ...) and, stopped,
 * why: a source learns from it whether what it delivered is applied.  404
 * with a plain-text body starting "no group " while the remote has not
 * seen the group yet.
 *
 * Thread safety: pure functions.
 */
#ifndef AIM_PROTOCOL_H
#define AIM_PROTOCOL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROTO_MISMATCHES "mismatches"      /* the path component of the mismatch report */
#define PROTO_ARG_AFTER "after"            /* its one query argument */
#define PROTO_NO_GROUP "no group "         /* how a 404 for an unknown group begins */
#define PROTO_SEGMENT_TYPE "application/octet-stream"
#define PROTO_JSON_TYPE "application/json"
#define PROTO_ENCODING_ZSTD "zstd"
#define PROTO_BEARER "Bearer "             /* Authorization: Bearer <token> */

/* How a sender treats an HTTP status. */
enum proto_verdict {
	PROTO_ACKED,   /* 2xx */
	PROTO_RETRY,   /* 408, 429, 5xx (507 included) */
	PROTO_REFUSED, /* any other 4xx and anything unexpected */
};
enum proto_verdict proto_verdict(long status);
/* True for the receiver's 404 "no group ..." (it has not seen the group
 * yet: ask again later), given the answer's status, type and body. */
bool proto_is_no_group(long status, bool json, const char *body);

/* One range a HASH record found different. */
struct proto_range {
	uint64_t lsn;        /* the HASH record's LSN, in the destination's sequence */
	char *image;         /* the image's name at that LSN */
	uint32_t image_id;   /* its id in the segments (0: not given) */
	uint64_t offset, length;
};

/* One answer to GET .../mismatches. */
struct proto_mismatches {
	char group[37];
	uint64_t applied_lsn;  /* the remote applied the stream up to here */
	uint64_t pruned_lsn;   /* ranges of HASH records at or below may be incomplete */
	bool consistent;       /* no resync is under way there */
	bool more;             /* ranges were left out: ask again after the last one */
	struct proto_range *ranges;
	size_t nranges;
	bool has_targets;      /* the after = 0 answer: what the remote holds */
	size_t ntargets;       /* ... how many targets */
	char state[16];        /* the group's state word there ("" if not said) */
	char error[512];       /* why it stopped ("" if it did not, or not said) */
};

/* "mismatches?after=N" for GET <url>/<group>/...; returns buf. */
const char *proto_mismatches_path(uint64_t after, char *buf, size_t len);
/* The JSON of an answer (new reference); targets (may be NULL) is the
 * {name: size} object of an after = 0 answer, stolen. */
json_t *proto_mismatches_json(const struct proto_mismatches *m, json_t *targets);
/* Parses an answer.  Returns 0, or -EBADMSG with why filled for a body
 * that is not one. */
int proto_mismatches_parse(const char *body, struct proto_mismatches *m, char *why,
			   size_t whylen);
void proto_mismatches_free(struct proto_mismatches *m);

#endif
