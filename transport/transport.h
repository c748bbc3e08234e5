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

struct catalog;
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct transport;

/* What a destination is: a receiver of HTTPS PUTs (aim-remote, any WebDAV
 * server), or an object store (S3: transport/s3.c, docs/OBJECT-STORES.md). */
enum dest_type {
	DEST_TYPE_HTTPS,
	DEST_TYPE_S3,
};

/* How long a connection (TCP and TLS) may take before the attempt counts
 * as failed and is retried: a WAN's round trips fit in it, a dead or
 * blackholed route does not hold a destination for long. */
#define DEST_CONNECT_TIMEOUT_DEFAULT (10ULL * 1000000000ULL)

struct dest_config {
	char *name;        /* [destination NAME], or the URL for -o dest=URL */
	enum dest_type type;
	char *url;         /* base URL: segments go to url/<group>/<file>
			    * (s3: http(s)://ENDPOINT/BUCKET[/PREFIX]) */
	char *ca_file;     /* NULL: the system's CAs */
	char *cert_file;   /* client certificate (optional) */
	char *key_file;
	char *pin;         /* "sha256//..." (optional) */
	char *token_file;  /* sent as "Authorization: Bearer <token>" */
	char **images;     /* glob patterns; none: every image */
	size_t nimages;
	uint64_t rate;     /* bytes per second, 0: no cap */
	uint64_t connect_timeout_ns; /* TCP and TLS connect, 0: DEST_CONNECT_TIMEOUT_DEFAULT */
	bool compress;     /* zstd when it saves bytes */
	char *token;       /* loaded by dest_config_check */
	/* s3 only */
	char *region;      /* NULL: us-east-1 */
	char *access_key_file, *secret_key_file; /* NULL: AWS_ACCESS_KEY_ID, ... */
	uint64_t multipart_size;    /* 0: 64M */
	uint64_t keep_ns;           /* delete segments sealed longer ago (0: keep) */
	uint64_t keep_segments;     /* ... or all but this many (0: keep) */
	uint64_t snapshot_every_ns; /* start a new full sync (a base) this often */
	char *access_key, *secret_key; /* loaded by dest_config_check */
};

/* Checks a destination (URL scheme and form, readable CA, certificate, key
 * and token files) and loads its token.  Returns 0, or after logging a
 * reason an operator can act on -EINVAL (a bad value: a usage error) or
 * -EIO (a file it names cannot be read). */
int dest_config_check(struct dest_config *d);
/* Refuses (-EINVAL, after logging why) two destinations that send to the
 * same place: their streams of one group would overwrite each other's
 * segments (an object store's HEAD too), and a restore or a puller would
 * mix them without an error.  0 if every URL is its own. */
int dest_configs_distinct(const struct dest_config *d, size_t n);
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
/* d's connect timeout in milliseconds, for CURLOPT_CONNECTTIMEOUT_MS. */
long dest_connect_timeout_ms(const struct dest_config *d);
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
	bool resync;                  /* a resync engine runs: new destinations wait for it */
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
/* Holds off the making of skeletons (a tracking destination's segments
 * without their data) while the resync engine ends a destination's
 * tracking: a skeleton begun while it was tracking is stored, with its
 * dirty extents recorded, before the state changes, or is not made. */
void transport_skeletons_hold(struct transport *t);
void transport_skeletons_release(struct transport *t);
/* Prunes now what every destination acknowledged and the backing files
 * hold (after a drain at unmount, so the journal is left small). */
int transport_prune_now(struct transport *t);
void transport_stop(struct transport *t);
void transport_free(struct transport *t);

/* ---- a destination's state (dest_state.c): one owner, one door ----
 *
 * What the catalog keeps of a destination, and what every part of aimfs
 * reads, is one record: whether it is an exact copy (sync), where its
 * resynchronisation stands (phase), why it is not in sync (reason), and the
 * resync's progress.  It changes only through dest_state_change, which
 * persists the new record first and then tells the workers (which derive
 * from it whether to ship, hold or send skeletons) and the resync engine.
 * The workers' own view of the link (shipping, retrying, stopped) is not
 * persisted.  What operators see, in /status and /metrics alike, is
 * derived from both by one function (transport_views).
 */
enum dest_sync {
	DEST_SYNC_NEW,      /* never synced: needs an initial sync */
	DEST_SYNC_IN_SYNC,  /* receives the stream: an exact copy at what it acknowledged */
	DEST_SYNC_SYNCING,  /* being resynchronised; phase says where */
	DEST_SYNC_TRACKING, /* fell behind a full journal: skeletons, data becomes dirty */
};

enum dest_phase {
	/* syncing: SYNC_BEGIN not journaled yet; the destination ships
	 * nothing until it is, then skips to it (a full resync).
	 * tracking: its SYNC_BEGIN has not gone out in a skeleton yet. */
	DEST_PHASE_NONE,
	DEST_PHASE_BEGIN,     /* syncing: SYNC_BEGIN next, nothing skipped */
	DEST_PHASE_COPYING,   /* syncing: journaling its dirty extents */
	DEST_PHASE_COMPARING, /* syncing: waiting for the remote's hash report */
	DEST_PHASE_ENDING,    /* syncing: SYNC_END journaled, waiting for its ack */
	DEST_PHASE_BEGUN,     /* tracking: a skeleton carried its SYNC_BEGIN */
};

enum dest_reason {
	DEST_REASON_NONE,
	DEST_REASON_NEW,            /* a new destination */
	DEST_REASON_SEGMENTS_GONE,  /* the segments it needed left the journal */
	DEST_REASON_OVERFLOW,       /* it fell behind and the journal filled up */
	DEST_REASON_POWER_LOSS,     /* the source lost power: hot extents are suspect */
	DEST_REASON_SNAPSHOT,       /* snapshot_every: a new base for restores (object stores) */
	DEST_REASON_CHANGED_OFFLINE, /* an image changed while aimfs was stopped */
};

/* A resync's progress, persisted with the state. */
struct dest_progress {
	uint64_t total, done, saved; /* bytes to compare/send, done, found equal */
	uint64_t lsn_a, lsn_b;       /* source segments the phase waits on */
	uint64_t started_ns;
};

struct dest_record {
	enum dest_sync sync;
	enum dest_phase phase;
	enum dest_reason reason;
	uint32_t number;             /* tags its resync records (stable) */
	struct dest_progress progress;
};

/* A change of destination i's record.  With expect set, the change is
 * made only if the record is still in expect_sync/expect_phase (-EAGAIN
 * otherwise).  With skip set, the destination continues after
 * skip_segment, its own sequence at skip_dest_lsn, in the same
 * transaction (what it skipped comes by resync).  progress NULL keeps it. */
struct dest_change {
	enum dest_sync sync;
	enum dest_phase phase;
	enum dest_reason reason;
	const struct dest_progress *progress;
	bool expect;
	enum dest_sync expect_sync;
	enum dest_phase expect_phase;
	bool skip;
	uint64_t skip_segment, skip_dest_lsn;
};

/*
 * The one door: persists the change in cat (the caller's connection), then
 * applies it in memory, wakes the workers and calls the change listener.
 * Thread-safe; changes of one transport are serialised.  Returns 0,
 * -EAGAIN (expectation not met, nothing changed) or -errno (nothing
 * changed in memory either).
 */
int dest_state_change(struct transport *t, size_t i, struct catalog *cat,
		      const struct dest_change *c);
/* Records a resync's progress (persisted when cat is given, in memory
 * always), with what the status shows beside it: bytes still dirty and
 * whether the remote compares hashes (-1 unknown, 0, 1). */
int dest_state_progress(struct transport *t, size_t i, struct catalog *cat,
			const struct dest_progress *p, uint64_t remaining, int compare);
/* Called (without locks) after every change; one listener (the resync
 * engine's wake-up). */
void transport_on_change(struct transport *t, void (*fn)(void *ctx), void *ctx);
/* Before any transport exists (recovery after a power loss, or of images
 * changed while aimfs was stopped): every registered destination that is
 * in sync begins a resync without a skip, for why; after a power loss one
 * that was copying, comparing or ending a resync begins a full one (its
 * saved progress may be ahead of the journal that survived), keeping a
 * reason that already seeds every image whole; for a change while stopped
 * (the journal is whole) one that was ending begins again, and one copying
 * or comparing goes on; one that is new, about to begin, or tracking keeps
 * its state (what it will resync covers the extents added to its dirty
 * set). */
int dest_state_mark_all(struct catalog *cat, enum dest_reason why);
/* The same for destination name alone. */
int dest_state_mark(struct catalog *cat, const char *name, enum dest_reason why);
/* Names, for logs and status. */
const char *dest_sync_name(enum dest_sync s);
const char *dest_phase_name(enum dest_phase p);
const char *dest_reason_text(enum dest_reason r);
/* True for a reason whose resync seeds every image whole (a new
 * destination, lost segments, a snapshot): an object store opens a base
 * with it. */
bool dest_reason_seeds_every_image(enum dest_reason why);

/* What operators see of a destination: one word, derived from the record
 * and the link, the same in /status and /metrics. */
enum dest_view_state {
	DEST_VIEW_IN_SYNC,      /* has everything durable, nothing to resync */
	DEST_VIEW_SHIPPING,
	DEST_VIEW_RETRYING,     /* the last attempt failed; retried with back-off */
	DEST_VIEW_STOPPED,      /* refused for good (4xx): needs an operator */
	DEST_VIEW_TRACKING,
	DEST_VIEW_RESYNCING,
	DEST_VIEW_NEEDS_RESYNC, /* segments gone and no resync engine (aimctl ship) */
	DEST_VIEW_REMOTE_STOPPED, /* receives, but its group applies nothing: needs
				   * an operator there (remote_error says why) */
};
#define DEST_VIEW_STATES (DEST_VIEW_REMOTE_STOPPED + 1)
const char *dest_view_state_name(enum dest_view_state s);

/* A snapshot of one destination, everything /status and /metrics print. */
struct dest_view {
	const char *name, *url;        /* valid while the transport lives */
	char *const *images;
	size_t nimages;
	bool compress;
	enum dest_view_state state;
	bool engine;                   /* a resync engine runs: the record is shown too */
	struct dest_record rec;
	uint64_t remaining;            /* resync: bytes still dirty */
	int compare;                   /* resync: remote compares hashes (-1 unknown) */
	uint64_t acked_segment, acked_src_lsn, acked_ns;
	uint64_t backlog_segments, backlog_bytes;
	double backlog_seconds;
	uint64_t segments_sent, bytes_sent, bytes_raw;
	double rate_bps;
	char last_error[256];
	uint64_t last_error_ns;
	unsigned attempts;
	uint64_t next_attempt_ns;
	uint64_t now_ns;
	char remote_state[16];         /* "" if not known */
	char remote_error[512];
	uint64_t remote_applied_lsn, remote_asked_ns;
	uint64_t dest_last_lsn;        /* what it acknowledged, in its own sequence */
};
/* Snapshots every destination (malloc'd array of *n, free()). */
int transport_views(struct transport *t, struct dest_view **out, size_t *n);
/* The JSON array /status prints (new reference). */
json_t *dest_views_json(const struct dest_view *v, size_t n);
/* The Prometheus lines /metrics prints. */
struct strbuf;
void dest_views_metrics(const struct dest_view *v, size_t n, struct strbuf *sb);
/* True if every destination is in sync (has everything durable, nothing
 * left to resync). */
bool dest_views_in_sync(const struct dest_view *v, size_t n);

size_t transport_dest_count(struct transport *t);
/* True if destination i mirrors image name (its image patterns). */
bool transport_dest_wants(struct transport *t, size_t i, const char *name);
/* A destination as the resync engine sees it (name valid while t lives). */
struct transport_dest_info {
	const char *name;
	struct dest_record rec;
	uint64_t acked_segment;
	uint64_t acked_src_lsn;   /* source LSN of the end of acked_segment */
	uint64_t dest_last_lsn;   /* its own LSN sequence's end */
	uint64_t durable_segment;
	bool segments_gone;       /* its next segment is gone from the journal */
	bool reachable;           /* last upload succeeded */
	bool snapshot_due;        /* snapshot_every: its newest base is that old */
};
void transport_dest_info(struct transport *t, size_t i, struct transport_dest_info *info);
/* Skeletonises for tracking destinations and prunes what can go now; cat
 * is the caller's catalog connection.  If another thread's pass is running,
 * returns once a pass begun after the call is done, so that the caller sees
 * the room it made. */
void transport_make_room(struct transport *t, struct catalog *cat);
/* GET <url>/<group>/<suffix> with destination i's TLS and token; returns
 * 0 with the HTTP status, the body (malloc'd, NUL-terminated) and whether it
 * is JSON, or -errno for a network failure. */
int transport_get(struct transport *t, size_t i, const char *suffix, long *status, char **body,
		  bool *json);

/* True if every destination has acknowledged every record up to head_lsn. */
bool transport_has_all(struct transport *t, uint64_t head_lsn);
/* Every destination has acknowledged every durable segment it was told
 * of: no upload is waiting or in flight. */
bool transport_idle(struct transport *t);

#endif
