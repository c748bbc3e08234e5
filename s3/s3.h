/*
 * s3.h — the object-store client that aimfs's transport, aim-remote's
 * puller and `aimctl restore` share, and the layout of a bucket that they
 * agree on (docs/OBJECT-STORES.md).
 *
 * A destination URL is http(s)://ENDPOINT/BUCKET[/PREFIX].  Requests are
 * path-style (ENDPOINT/BUCKET/KEY), signed by libcurl's own SigV4
 * (CURLOPT_AWS_SIGV4, no SDK), and every body's SHA-256 travels in
 * x-amz-content-sha256, so that the store checks each upload end to end.
 * What libcurl 7.88 leaves to its caller, and this file does: keys are
 * percent-encoded (only A-Za-z0-9-._~/ left as they are), query
 * parameters are sorted and written name=value ("?uploads="), uploads have
 * a known length, and every request carries x-amz-content-sha256 (RGW
 * answers 403 to any request without it).  Objects larger than the
 * multipart size are uploaded in parts of that size.
 *
 * The bucket, for consistency group GROUP under PREFIX:
 *   PREFIX/GROUP/<segment file>   a sealed segment, as the destination's
 *                                 stream holds it (zstd-compressed when
 *                                 its metadata aim-encoding says so)
 *   PREFIX/GROUP/HEAD             JSON (struct s3_head): the highest
 *                                 contiguous segment uploaded, written only
 *                                 after that segment, the oldest one still
 *                                 kept, and the bases (full syncs) a
 *                                 restore can start from
 * so that a reader never lists the bucket to know what is complete (it
 * lists only to find the groups).
 *
 * Thread safety: a struct s3 belongs to one thread at a time (it owns one
 * libcurl easy handle, reused so that connections are kept); everything
 * else is a pure function.  Errors: functions return 0 or -errno and fill
 * a struct s3_reply whose `error` is one line an operator can act on,
 * naming the store's error code (NoSuchBucket, SignatureDoesNotMatch,
 * RequestTimeTooSkewed, ...).
 */
#ifndef AIM_S3_H
#define AIM_S3_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define S3_DEFAULT_REGION "us-east-1"
#define S3_DEFAULT_MULTIPART (64ULL << 20)
#define S3_DEFAULT_CONNECT_TIMEOUT_MS 10000L
#define S3_MIN_PART (5ULL << 20)        /* every part but the last, by S3's rules */
#define S3_HEAD_KEY "HEAD"
#define S3_META_ENCODING "aim-encoding" /* x-amz-meta-aim-encoding: zstd */
#define S3_KEY_MAX 1024

/* A destination URL, split. */
struct s3_url {
	char *endpoint;  /* "http(s)://host[:port]" */
	char *bucket;
	char *prefix;    /* "" or "a/b": no leading or trailing '/' */
};

/* Splits and checks url (http(s)://ENDPOINT/BUCKET[/PREFIX]).  Returns 0,
 * or -EINVAL with a reason in why. */
int s3_url_parse(const char *url, struct s3_url *out, char *why, size_t whylen);
void s3_url_free(struct s3_url *u);

/*
 * The access and secret keys: from the files (one line each) when given,
 * else from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.  Returns 0 with
 * malloc'd copies, or -EINVAL with a reason in why.
 */
int s3_keys_load(const char *access_key_file, const char *secret_key_file, char **access_key,
		 char **secret_key, char *why, size_t whylen);

/* Everything a client needs; strings are copied by s3_new. */
struct s3_options {
	const char *url;
	const char *region;           /* NULL: us-east-1 */
	const char *access_key, *secret_key;
	const char *ca_file;          /* NULL: the system's CAs */
	const char *cert_file, *key_file, *pin; /* client certificate, pinned key */
	uint64_t rate;                /* upload bytes per second, 0: no cap */
	long connect_timeout_ms;      /* TCP and TLS connect, 0: S3_DEFAULT_CONNECT_TIMEOUT_MS */
	uint64_t multipart_size;      /* 0: S3_DEFAULT_MULTIPART */
	uint64_t single_max;          /* largest object sent in one PUT (0: multipart_size);
				       * larger ones go in parts of about multipart_size */
};

struct s3;

/* Returns 0 and a client, or -EINVAL (bad URL, logged with why) or
 * -ENOMEM. */
int s3_new(const struct s3_options *o, struct s3 **out, char *why, size_t whylen);
void s3_free(struct s3 *s);
/* The prefix keys are relative to ("" or "a/b"). */
const char *s3_prefix(const struct s3 *s);
/* The URL as given (for messages). */
const char *s3_url(const struct s3 *s);

/* What the store answered. */
struct s3_reply {
	long status;            /* HTTP status; 0: no answer (network, TLS) */
	char code[64];          /* the store's error code ("NoSuchKey"), or "" */
	char error[400];        /* one line: what failed and why */
	char etag[128];
	char encoding[32];      /* the object's aim-encoding metadata, or "" */
	uint64_t length;        /* Content-Length of a GET */
};

/*
 * PUT key (relative to the prefix: "GROUP/FILE") with body[0..len), its
 * SHA-256 in x-amz-content-sha256, and encoding (NULL for none) as the
 * object's aim-encoding metadata; in parts above the multipart size.
 * Returns 0, or -EIO with rep filled.
 */
int s3_put(struct s3 *s, const char *key, const void *body, size_t len, const char *encoding,
	   struct s3_reply *rep);

/* Called with each piece of a GET's body; a negative return aborts it. */
typedef int (*s3_sink_fn)(void *ctx, const void *data, size_t len);

/*
 * GET key: the body goes to sink.  With if_none_match (an ETag), returns 1
 * when the object did not change (304).  Returns 0, 1, -ENOENT (404:
 * no such key, or no such bucket: rep.code says which), or -EIO.
 */
int s3_get(struct s3 *s, const char *key, const char *if_none_match, s3_sink_fn sink,
	   void *ctx, struct s3_reply *rep);
/*
 * GET of a segment object as its bucket layout says: sink gets the
 * segment's own bytes, decompressed when the object's aim-encoding says
 * zstd; at most max of them.  Returns 0, -ENOENT, -EIO (rep says why),
 * -EBADMSG (a corrupt or cut zstd stream), -EFBIG (more than max), or the
 * sink's error.
 */
int s3_fetch(struct s3 *s, const char *key, s3_sink_fn sink, void *ctx, uint64_t max,
	     struct s3_reply *rep);
/* GET of a small object (at most max bytes) into a malloc'd,
 * NUL-terminated buffer.  Returns as s3_get. */
int s3_get_small(struct s3 *s, const char *key, const char *if_none_match, size_t max,
		 char **body, size_t *len, struct s3_reply *rep);
/* DELETE key (a missing key is fine).  Returns 0 or -EIO. */
int s3_delete(struct s3 *s, const char *key, struct s3_reply *rep);
/*
 * Lists the "directories" directly under the prefix (ListObjectsV2 with
 * delimiter '/'): fn gets each name without the prefix and slashes.
 * Returns 0, fn's non-zero return, -ENOENT (no such bucket) or -EIO.
 */
int s3_list_dirs(struct s3 *s, int (*fn)(void *ctx, const char *name), void *ctx,
		 struct s3_reply *rep);

/* Lower-case hex SHA-256 of data (65 bytes with the NUL). */
void s3_sha256_hex(const void *data, size_t len, char out[65]);
/* Percent-encodes key for a request path: 0, or -ENAMETOOLONG. */
int s3_key_encode(const char *key, char *out, size_t outlen);

/* ---- the HEAD object (docs/OBJECT-STORES.md) ---- */

/* A base: a full sync of the group recorded in the bucket, from which a
 * restore or a new puller can start with empty targets. */
struct s3_base {
	uint64_t segment;     /* its first segment: SYNC_BEGIN is its first record */
	uint64_t lsn;         /* that SYNC_BEGIN's LSN */
	uint64_t time_ns;     /* its source time */
	uint64_t end_segment; /* the segment holding the SYNC_END that completes it */
	uint64_t end_lsn;     /* that SYNC_END's LSN: the targets are exact from here */
	uint64_t end_time_ns;
};

#define S3_HEAD_FORMAT 1
#define S3_BASES_MAX 64

struct s3_head {
	unsigned format;
	char group[37];
	uint64_t segment;        /* every segment oldest..segment is in the bucket */
	uint64_t lsn;            /* the last LSN of segment (the destination's sequence) */
	uint64_t sealed_ns;      /* when the source sealed it */
	uint64_t oldest;         /* the oldest segment kept (0: none yet) */
	uint64_t purge_from;     /* segments purge_from..oldest-1 are being deleted (0: none) */
	uint64_t written_ns;     /* when this HEAD was written */
	struct s3_base bases[S3_BASES_MAX]; /* complete bases, oldest first */
	size_t nbases;
	struct s3_base pending;  /* a base whose SYNC_END is not uploaded yet (segment 0: none) */
};

/* The JSON text of h (malloc'd). */
char *s3_head_dump(const struct s3_head *h);
/* Parses a HEAD; -EBADMSG with why for anything else. */
int s3_head_parse(const char *text, size_t len, struct s3_head *h, char *why, size_t whylen);
/* The newest complete base, or NULL. */
const struct s3_base *s3_head_newest_base(const struct s3_head *h);
/* Where a reader with nothing starts: the newest complete base, else the
 * pending one, else the oldest segment (0 if the bucket holds none). */
uint64_t s3_head_start(const struct s3_head *h);

#endif
