/*
 * transport.h — ships sealed segments to every destination over HTTP(S).
 *
 * One worker thread per destination PUTs segments in order to
 * <url>/<group>/<segment file>, with TLS verification (CA file, client
 * certificate, pinned key), a bearer token, optional zstd compression, a
 * bandwidth cap, and retry with exponential back-off and jitter on network
 * errors and 5xx; a 4xx stops the destination with the reason.  What each
 * destination acknowledged lives in the catalog, so a restart resumes
 * without re-sending.  A destination limited to some images receives
 * re-encoded segments holding only those images' records, with its own
 * gap-free LSN sequence.  Segments every destination acknowledged are
 * pruned (unless retention keeps them).
 *
 * The same code runs as threads inside aimfs and, after unmount, in
 * `aimctl ship`.  Thread safety: every function is thread-safe; the
 * transport never calls into the journal except through the callbacks it
 * was given, and never while holding its own lock.
 */
#ifndef AIM_TRANSPORT_H
#define AIM_TRANSPORT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct transport;

struct dest_config {
	char *name;        /* [destination NAME], or the URL for -o dest=URL */
	char *url;         /* base URL: segments go to url/<group>/<file> */
	char *ca_file;     /* NULL: the system's CAs */
	char *cert_file;   /* client certificate (optional) */
	char *key_file;
	char *pin;         /* "sha256//..." (optional) */
	char *token_file;  /* sent as "Authorization: Bearer <token>" */
	char **images;     /* glob patterns; none: every image */
	size_t nimages;
	uint64_t rate;     /* bytes per second, 0: no cap */
	bool compress;     /* zstd when it saves bytes */
	char *token;       /* loaded by dest_config_check */
};

/* Checks a destination (URL scheme and form, readable CA, certificate, key
 * and token files) and loads its token.  Returns 0 or -EINVAL after
 * logging a reason an operator can act on. */
int dest_config_check(struct dest_config *d);
void dest_config_free(struct dest_config *d);
/* Sets a [destination] key from a config file; -EINVAL for an unknown key
 * or bad value (logged). */
int dest_config_set(struct dest_config *d, const char *key, const char *value);
/* Finds destination name in *dests, or appends a new empty one if create.
 * NULL if absent (or out of memory). */
struct dest_config *dest_config_find(struct dest_config **dests, size_t *n, const char *name,
				     bool create);
/*
 * Reads an INI configuration (inih): each [destination NAME] section
 * becomes a destination in *dests; keys of any other section go to other()
 * (which returns 0, or -1 after logging; NULL refuses other sections).
 * Returns 0, or -1 after logging where the file is wrong.
 */
int dest_config_load(const char *path,
		     int (*other)(void *ctx, const char *section, const char *key, const char *value),
		     void *ctx, struct dest_config **dests, size_t *ndests);
/* True if image name passes d's image patterns. */
bool dest_wants_image(const struct dest_config *d, const char *name);

struct transport_hooks {
	void *ctx;
	/* A pruned segment freed this many bytes of journal. */
	void (*freed)(void *ctx, uint64_t bytes);
	/* Segment number is about to be pruned: true if the journal took its
	 * file for reuse (NULL, or false: it is deleted). */
	bool (*recycle)(void *ctx, uint64_t number);
	/* Source time of the oldest record not in a sealed segment (0 if none). */
	uint64_t (*open_oldest_ns)(void *ctx);
};

struct transport_config {
	const char *journal_dir;
	uint8_t group[16];
	struct dest_config *dests;    /* checked; the transport copies what it needs */
	size_t ndests;
	uint64_t retain_ns;           /* keep acknowledged segments this long */
	uint64_t start_segment;       /* a new destination starts after this one */
	bool resync;                  /* a resync engine runs: hold new destinations for it */
	struct transport_hooks hooks;
};

/* Registers the destinations in the catalog.  Returns 0 or -errno. */
int transport_new(const struct transport_config *cfg, struct transport **out);
/* Starts one worker per destination. */
int transport_start(struct transport *t);
/*
 * Segments up to durable_segment are sealed, fsynced and renamed; every
 * record up to backing_lsn has reached the backing files (segments whose
 * records are all at or below it may be pruned once acknowledged).
 */
void transport_notify(struct transport *t, uint64_t durable_segment, uint64_t backing_lsn);
/* Waits until every destination acknowledged every durable segment, or
 * stopped, or timeout_ms passed.  Returns 0 if all acknowledged. */
int transport_drain(struct transport *t, unsigned timeout_ms);
void transport_stop(struct transport *t);
void transport_free(struct transport *t);

/* Status: a JSON array of destinations (new reference). */
json_t *transport_status(struct transport *t);
/* Appends the destinations' Prometheus lines to sb. */
struct strbuf;
void transport_metrics(struct transport *t, struct strbuf *sb);
/* True if every destination has acknowledged everything durable. */
bool transport_in_sync(struct transport *t);
/* A destination as the resync engine sees it (name valid while t lives). */
struct transport_dest_info {
	const char *name;
	uint32_t number;
	uint64_t acked_segment;
	uint64_t acked_src_lsn;   /* source LSN of the end of acked_segment */
	uint64_t dest_last_lsn;   /* its own LSN sequence's end */
	uint64_t durable_segment;
	bool needs_resync;        /* its next segment is gone from the journal */
	bool reachable;           /* last upload succeeded */
	bool tracking;            /* receives skeletons */
};
size_t transport_dest_count(struct transport *t);
/* True if destination i mirrors image name (its image patterns). */
bool transport_dest_wants(struct transport *t, size_t i, const char *name);
void transport_dest_info(struct transport *t, size_t i, struct transport_dest_info *info);
/* Destination i continues after segment, whose last LSN is dest_lsn (what
 * it missed comes by resync), and ships again if held; tracking makes it
 * receive skeletons from then on.  Thread-safe. */
int transport_skip_to(struct transport *t, size_t i, uint64_t segment, uint64_t dest_lsn,
		      bool tracking);
/* Destination i ships nothing until transport_skip_to (a resync is about to
 * begin with a segment of its own). */
int transport_hold(struct transport *t, size_t i);
/* Destination i starts (on) or stops tracking: it receives skeletons of
 * segments, their data becoming dirty extents.  Stopping reports whether
 * its SYNC_BEGIN already went out in a skeleton. */
int transport_set_tracking(struct transport *t, size_t i, bool on, bool *begin_sent);
/* Skeletonises for tracking destinations and prunes what can go now; cat
 * is the caller's catalog connection. */
struct catalog;
void transport_make_room(struct transport *t, struct catalog *cat);
/* GET <url>/<group>/<suffix> with destination i's TLS and token; returns
 * 0 with the HTTP status, the body (malloc'd, NUL-terminated) and whether it
 * is JSON, or -errno for a network failure. */
int transport_get(struct transport *t, size_t i, const char *suffix, long *status, char **body,
		  bool *json);

/* True if every destination has acknowledged every record up to head_lsn. */
bool transport_has_all(struct transport *t, uint64_t head_lsn);

#endif
