/*
 * remote_i.h — aim-remote's private declarations: the daemon's shared
 * state and the interfaces between its parts.  Not installed, not used
 * outside remote/.
 *
 *   main.c      options, start-up checks, the poll loop (signalfd, inotify,
 *               a slow rescan timer), orderly shutdown
 *   receiver.c  the HTTPS receiver (libmicrohttpd + GnuTLS): PUT/GET of
 *               <prefix>/<group>/<segment>, into inbox/<group>/, and GET
 *               of <prefix>/<group>/mismatches (HASH comparisons)
 *   guard.c     the receiver's connections: deadlines, the minimum upload
 *               rate, and the slots unauthenticated peers may hold
 *   watcher.c   inotify on the inbox (libinotifytools), the start-up scan
 *   groups.c    one thread per group: the in-order apply loop
 *   inbox.c     a group directory's files: scan, validate, move aside
 *   state.c     the SQLite state (remote.db): progress, consistency,
 *               applied segments, quarantine, mismatches, holds, marks
 *   status.c    GET /status (JSON) and /metrics (Prometheus text)
 *   puller.c    --pull: segments from an object store into the inbox
 *   failover.c  holds and promotion: where a held group may stop in a
 *               segment, the rules of POST /hold, /release, /promote
 *
 * Threads: the main thread (poll loop, the watcher: libinotifytools keeps
 * global state and is only ever called there), one thread per group,
 * libmicrohttpd's threads for the receiver and for the status listener.
 * The receiver and the watcher only ever *kick* a group (groups_kick); all
 * reading of segments for applying, every target write and every progress
 * record happen on the group's own thread.
 *
 * Lock order: remote.lock, then group.lock, then the lock of an
 * operator's request handed to a group (groups.c, struct posted); state.c's
 * receiver connection has its own mutex, taken with none of them held.  No
 * lock is held across I/O on targets or segments.
 */
#ifndef AIM_REMOTE_I_H
#define AIM_REMOTE_I_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

#include "apply.h"
#include "format.h"

#define REMOTE_DEFAULT_STATUS "127.0.0.1:9381"
#define REMOTE_DEFAULT_MAX_SEGMENT (1ULL << 30)
#define REMOTE_STATE_DB "remote.db"
#define REMOTE_LOCK_FILE "remote.lock"
#define INBOX_TMP ".tmp"           /* receiver's temporary files: never a watched name */
#define INBOX_FREE ".free"         /* applied files kept to be written over (recycle.c) */
#define INBOX_FREE_MAX 2
#define GROUP_QUARANTINE "quarantine" /* inbox/<group>/quarantine/: refused segments */
#define GROUP_APPLIED "applied"    /* inbox/<group>/applied/: kept under --retain */
#define QUARANTINE_SHOWN 16        /* quarantine entries kept in memory per group */
#define MISMATCHES_ANSWER_MAX 10000 /* ranges in one answer to GET .../mismatches */
#define MISMATCHES_KEEP_LSNS 1000000ULL /* rows this far behind applied_lsn are dropped */
#define SEGMENTS_KEEP 1024ULL      /* applied segments' rows kept per group (duplicates) */

/* The receiver's limits' defaults (man aim-remote, HOSTILE PEERS). */
#define REMOTE_DEFAULT_TLS_PRIORITY "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"
#define REMOTE_DEFAULT_MAX_CONNECTIONS 256
#define REMOTE_DEFAULT_MAX_PER_ADDRESS 16
#define REMOTE_DEFAULT_HANDSHAKE_NS (10ULL * 1000000000ULL)
#define REMOTE_DEFAULT_HEADER_NS (10ULL * 1000000000ULL)
#define REMOTE_DEFAULT_IDLE_NS (60ULL * 1000000000ULL)
#define REMOTE_DEFAULT_MIN_RATE 4096ULL /* bytes per second */
#define REMOTE_DEFAULT_MAX_UPLOADS 16
#define REMOTE_DEFAULT_MAX_GROUP_UPLOADS 4
#define REMOTE_DEFAULT_MAX_TEMP (4ULL << 30)

/* What hostile or broken peers may cost the receiver. */
struct remote_limits {
	unsigned max_connections;     /* all connections at once */
	unsigned max_per_address;     /* from one client address */
	unsigned max_unauthenticated; /* not yet past the certificate and the token */
	uint64_t handshake_ns;        /* accept to the end of the TLS handshake */
	uint64_t header_ns;           /* the whole request header; also the body's grace */
	uint64_t idle_ns;             /* a kept-alive connection between requests */
	uint64_t min_rate;            /* bytes/s a body must keep up, 0 for no minimum */
	unsigned max_uploads;         /* PUT bodies being received at once */
	unsigned max_group_uploads;   /* ... for one group */
	uint64_t max_temp;            /* bytes in inbox/.tmp at once */
	uint64_t inbox_reserve;       /* free space only a group's next segment may use */
};

/* One --pull URL (or [pull NAME] of --config). */
struct pull_config {
	char *name;                /* the URL, or NAME */
	char *url;                 /* http(s)://ENDPOINT/BUCKET[/PREFIX] */
	char *access_key_file, *secret_key_file; /* NULL: AWS_ACCESS_KEY_ID, ... */
	char *region, *ca_file;
	uint64_t interval_ns;      /* --pull-interval (default 1 s) */
	char *access_key, *secret_key; /* loaded by puller_check */
};

struct remote_config {
	const char *inbox;
	const char *target_dir;
	const char *state_dir;     /* default: <inbox>.state */
	struct apply_map *maps;    /* --map IMAGE=PATH, parsed */
	size_t nmaps;
	const char *listen;        /* NULL: watch only */
	const char *tls_cert, *tls_key, *client_ca, *token_file;
	const char *tls_priority;  /* GnuTLS priority string of the receiver */
	struct remote_limits lim;
	const char *status_addr;   /* NULL when "off" */
	uint64_t max_segment;
	bool retain;
	struct pull_config *pulls;
	size_t npulls;
	struct pull_config pull_defaults; /* pull options given before any --pull */
};

/* Receiver counters, for status.  Updated with relaxed atomics. */
#define RX_CODES 600
struct rx_stats {
	atomic_uint_fast64_t accepted;   /* 201: new segment stored */
	atomic_uint_fast64_t duplicates; /* 200: identical copy already held or applied */
	atomic_uint_fast64_t bytes;      /* segment bytes stored (after decompression) */
	atomic_uint_fast64_t gets;       /* GETs answered 200 */
	atomic_uint_fast64_t by_code[RX_CODES]; /* every 4xx/5xx answer, by code */
	/* Connections (guard.c): gauges first, then counters. */
	atomic_uint_fast64_t conns_open;         /* connections now */
	atomic_uint_fast64_t conns_unauth;       /* of which not yet authenticated */
	atomic_uint_fast64_t conns_accepted;     /* since start */
	atomic_uint_fast64_t handshake_failures; /* the handshake failed (no or bad
						  * certificate, old TLS, not TLS) */
	atomic_uint_fast64_t handshake_timeouts; /* closed: no handshake in time */
	atomic_uint_fast64_t header_timeouts;    /* closed: no whole header in time */
	atomic_uint_fast64_t idle_closed;        /* closed: idle between requests */
	atomic_uint_fast64_t slow_uploads;       /* closed or 408: below --min-rate */
	atomic_uint_fast64_t evicted;            /* closed: unauthenticated, over the limit */
	/* Uploads (receiver.c). */
	atomic_uint_fast64_t uploads;            /* PUT bodies being received now */
	atomic_uint_fast64_t temp_bytes;         /* bytes they hold in inbox/.tmp */
	/* Applied files kept to be written over (recycle.c). */
	atomic_uint_fast64_t free_files;         /* kept now */
	atomic_uint_fast64_t free_bytes;         /* their size */
	atomic_uint_fast64_t reused;             /* uploads written over one */
	/* Segments validated with the receiver's or a puller's check
	 * (prechecked.c). */
	atomic_uint_fast64_t checks_reused;
};

/* The applied segment files kept in inbox/.free (recycle.c). */
struct inbox_free {
	pthread_mutex_t lock;
	int dirfd;                        /* inbox/.free, -1 until the first is kept */
	unsigned n;                       /* kept, named free.<seq> */
	uint64_t seq[INBOX_FREE_MAX];
	uint64_t size[INBOX_FREE_MAX];
	uint64_t next_seq;
};

/* Segments the receiver or a puller checked as they arrived, by the
 * identity of their inbox file, for their group's open (prechecked.c). */
#define PRECHECKED_MAX 16
struct prechecked_entry {
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;        /* as its writer left the file */
	struct seg_precheck *p;       /* NULL: the entry is empty */
	uint64_t added;               /* order of adding: the oldest gives way */
	bool used;                    /* found once already */
};
struct prechecked {
	pthread_mutex_t lock;
	struct prechecked_entry e[PRECHECKED_MAX];
	uint64_t clock;
};

struct group;
struct pullers;
struct receiver;
struct status;
struct state;

struct remote {
	struct remote_config cfg;
	char *state_dir;     /* resolved */
	char *db_path;       /* state_dir/remote.db */
	int inbox_fd;        /* the inbox, O_DIRECTORY */
	uint64_t started_ns;
	atomic_bool quitting;
	struct rx_stats rx;
	struct inbox_free free;
	struct prechecked prechecked;

	pthread_mutex_t lock; /* guards groups */
	struct group *groups; /* list, in order of discovery */
	/* Read-held by the receiver from its last check that a group takes
	 * segments to the segment's rename into the inbox; write-held by a
	 * group deciding an operator's request (groups.c).  So a promote sees
	 * every segment answered 201 before it, and none is answered after. */
	pthread_rwlock_t promote_gate;

	struct receiver *receiver;
	struct status *status;
	struct pullers *pullers;
};

/* ---- groups.c ---- */

enum group_state {
	GROUP_STARTING, GROUP_IDLE, GROUP_APPLYING, GROUP_WAITING, GROUP_STOPPED,
	GROUP_HELD,     /* a hold was reached: segments wait, nothing is applied */
	GROUP_PROMOTED, /* failed over: nothing is applied or received, for good */
};
#define GROUP_STATES (GROUP_PROMOTED + 1)
/* The word status and the state database use for s. */
const char *group_state_name(enum group_state s);

/* Where a hold stops a group (failover.c). */
enum hold_kind {
	HOLD_NOW = 1, /* at the next barrier of what is here, else where the group is */
	HOLD_LSN,     /* at the last barrier at or before that LSN (or at it, if a MARK) */
	HOLD_TIME,    /* at the last barrier journaled at or before that time */
	HOLD_MARK,    /* at that MARK */
	HOLD_LAST,    /* promote's default: the last barrier of what arrived */
};

/* A group's failover role: replicating (a promote may have been refused,
 * the group then stays held), or being / having been promoted.  The
 * receiver refuses the segments of a group from FO_PROMOTING on. */
enum failover_role { FO_NONE = 0, FO_REFUSED, FO_PROMOTING, FO_PROMOTED };

/*
 * A group's hold, as recorded in the state (table holds) and shown in
 * status.  A hold is set by POST /hold or /promote; until it is reached the
 * group applies from barrier to barrier, never past one unless it knows of
 * a later one before the point (failover.c); once reached it applies
 * nothing until released.  A promoted group keeps its reached hold for
 * good.
 */
struct hold {
	bool active;               /* a hold is set */
	enum hold_kind kind;
	struct point_spec pt;      /* the point (HOLD_LSN, _TIME, _MARK); pt.text always */
	uint64_t set_ns;           /* when it was asked (wall clock) */
	uint64_t asked_lsn;        /* the group's applied LSN then */
	bool reached;              /* the group stopped there */
	uint64_t stop_lsn;         /* ... after this record (valid once reached; for a
				    * pending "now", the barrier it stops at, once known) */
	uint64_t stop_time_ns;     /* its source time */
	uint8_t stop_type;         /* its type: SEG_FLUSH or SEG_MARK, another one where
				    * the group stood between barriers, 0 unknown */
	char note[640];            /* how the point was resolved, or why a promote was refused */
	enum failover_role role;
	bool force;                /* promote even an inconsistent copy */
	uint64_t promoted_ns;      /* when the promotion was done */
	bool promoted_consistent;  /* the copy was consistent then */
};

struct quarantine_entry {
	uint64_t segment;
	uint64_t time_ns;
	char reason[256];
};

/* A consistent copy of what a group's thread knows, for status. */
struct group_snapshot {
	char name[37];
	enum group_state state;
	uint64_t applied_segment;
	uint64_t applied_lsn;
	uint64_t applied_time_ns;   /* source time of the last applied record, 0 if none */
	uint64_t applying;          /* segment being applied, 0 if none */
	uint64_t waiting_for;       /* missing segment, 0 if none */
	uint64_t backlog_segments;  /* present in the inbox, not yet applied */
	uint64_t backlog_bytes;
	uint64_t oldest_pending_ns; /* arrival (mtime) of the oldest pending segment */
	uint64_t quarantined;       /* total ever, from the state */
	size_t nquarantine;         /* entries in q[] (most recent last) */
	struct quarantine_entry q[QUARANTINE_SHOWN];
	uint64_t segments_applied;  /* since start */
	uint64_t records_applied;
	uint64_t bytes_written;
	bool consistent;            /* durable state: no resync in progress */
	uint32_t sync_dest;         /* the resync's destination number, 0 if none */
	uint64_t sync_lsn;          /* LSN of its SYNC_BEGIN, 0 if none */
	uint64_t sync_time_ns;      /* source time of that SYNC_BEGIN */
	uint64_t mismatch_ranges;   /* MISMATCH ranges found since start */
	uint64_t mismatch_bytes;
	char error[512];
	char inbox_full[384];       /* why the receiver refused its last segment for
				     * lack of space, with the figures; "" if none */
	struct hold hold;           /* hold.active: a hold is set or the group was promoted */
};

/* Starts a thread for every group the state knows and every group
 * directory in the inbox.  Returns 0 or -errno after logging. */
int groups_start(struct remote *r);
/* Makes sure group name (a lowercase UUID) has a running thread and tells
 * it to look at its directory again.  Thread-safe; never blocks on I/O
 * beyond creating the thread.  Returns 0 or -errno. */
int groups_kick(struct remote *r, const char *name);
/* Kicks every known group (after an inotify overflow, on the timer). */
void groups_kick_all(struct remote *r);
/* Asks group name (every group if NULL) to start again if it is stopped:
 * it reloads its state and looks at its directory, and stops again if the
 * cause is still there.  Thread-safe.  Returns how many stopped groups were
 * asked, or -ENOENT for a name no group has. */
int groups_resume(struct remote *r, const char *name);
/* One operator's request to a group (POST /hold, /release, /promote),
 * answered by the group's own thread (failover_decide). */
enum failover_op { FO_HOLD = 1, FO_RELEASE, FO_PROMOTE };
struct failover_req {
	enum failover_op op;
	enum hold_kind kind;       /* FO_HOLD, FO_PROMOTE */
	struct point_spec pt;
	bool force;                /* FO_PROMOTE */
	/* The answer, filled by the group's thread. */
	unsigned code;             /* HTTP status */
	char *body;                /* JSON text (malloc'd; the caller frees it) */
};
/*
 * Hands req to group name's thread and waits for its answer: 0 with
 * req->code and req->body set, -ENOENT for a group not known here, -EBUSY
 * when another request to it is being answered, -ETIMEDOUT when its thread
 * did not take it in time (then it never will).  Thread-safe; blocks.
 */
int groups_request(struct remote *r, const char *name, struct failover_req *req);
/* The name of the one group known here, into name: 0, -ENOENT (none) or
 * -E2BIG (several). */
int groups_only(struct remote *r, char name[37]);
/* Sets (text) or clears (NULL) what the receiver says about the room in
 * the inbox for group name, shown in its status.  Starts the group if it
 * is new.  Thread-safe. */
void groups_note_inbox(struct remote *r, const char *name, const char *text);
/* Asks every group thread to stop at its next barrier and joins them. */
void groups_stop(struct remote *r);
/* Calls fn for a snapshot of each group, in discovery order.  Thread-safe. */
void groups_each(struct remote *r, void (*fn)(void *ctx, const struct group_snapshot *s),
		 void *ctx);
/* True if name is a group directory name: a lowercase UUID.  Fills uuid. */
bool group_name_valid(const char *name, uint8_t uuid[16]);

/* ---- state.c ---- */

/* A group's resynchronisation state (docs/RESYNC.md), recorded with the
 * progress that passes the SYNC_BEGIN or SYNC_END it comes from. */
struct state_sync {
	bool consistent;       /* false from a SYNC_BEGIN to the next SYNC_END */
	uint32_t dest;         /* destination number of the last SYNC_BEGIN, 0 if none */
	uint64_t begin_lsn;    /* LSN of the SYNC_BEGIN the inconsistency started at */
	uint64_t begin_ns;     /* its source time */
	uint64_t end_lsn;      /* LSN of the last SYNC_END, 0 if none */
};

/* A group's row. */
struct state_group {
	uint64_t applied_segment;  /* every record of segments <= this is durable */
	uint64_t segment_last_lsn; /* last LSN of applied_segment (0 if none) */
	uint64_t applied_lsn;      /* durable up to here; may lie inside applied_segment + 1 */
	uint64_t applied_time_ns;  /* source time of the record at applied_lsn */
	struct state_sync sync;
	uint64_t pruned_lsn;       /* mismatch rows with lsn <= this may have been dropped */
};

/* A run of differing blocks found by a HASH record. */
struct state_mismatch {
	uint64_t lsn;
	uint32_t dest;
	uint32_t image_id; /* the source's id of the image */
	char *image;
	uint64_t offset, length;
};

/* A whole segment applied: what a later duplicate is compared with, and
 * the group's images at its end (names: NULL leaves them as they were). */
struct names;
struct state_segment {
	uint64_t number, first_lsn, last_lsn, size, digest;
	const struct names *names;
};

/* Opens (creating it and its schema) state_dir/remote.db, WAL mode.  One
 * connection per thread; all functions return 0 or -errno (-EIO after
 * logging SQLite's reason once). */
int state_open(const char *db_path, struct state **out);
void state_close(struct state *st);
/* Loads a group's row; a group never seen gets a zero row (and is
 * inserted).  Returns 0. */
int state_group_load(struct state *st, const char *group, struct state_group *g);
/* Reads a group's row without creating it: 0, or -ENOENT. */
int state_group_get(struct state *st, const char *group, struct state_group *g);
/* Records durable progress: the row, the resync state sync (unless NULL),
 * the mismatches mm[0..nmm), and when done is non-NULL the whole segment
 * too (applied_segment = done->number; segment rows more than
 * SEGMENTS_KEEP and mismatch rows more than MISMATCHES_KEEP_LSNS behind
 * are then dropped; the group's live names replaced by done->names if
 * set), in one transaction. */
int state_progress(struct state *st, const char *group, uint64_t lsn, uint64_t time_ns,
		   const struct state_segment *done, const struct state_sync *sync,
		   const struct state_mismatch *mm, size_t nmm);
/* Calls fn for every image name the group's last applied segment left live
 * (as recorded by state_progress); stops at fn's non-zero return.
 * Returns 0, fn's value, or -EIO. */
int state_names_each(struct state *st, const char *group,
		     int (*fn)(void *ctx, const char *name), void *ctx);
/* Records mismatches ahead of the progress that passes them (they are
 * served only once applied_lsn reaches their LSN). */
int state_mismatches_add(struct state *st, const char *group, const struct state_mismatch *mm,
			 size_t nmm);
/* Drops the group's mismatch rows with lsn > after: recorded ahead of a
 * progress that a crash or a failure never let happen. */
int state_mismatches_forget(struct state *st, const char *group, uint64_t after);
/*
 * Reads, in one snapshot, the group's row into *g and calls fn for its
 * mismatch rows with after < lsn <= applied_lsn, ordered by LSN then
 * offset: at most max of them, and then only whole LSNs, *more telling
 * whether rows were left out.  Returns 0, -ENOENT for a group the state
 * does not know, or -EIO.
 */
int state_mismatches_each(struct state *st, const char *group, uint64_t after, size_t max,
			  struct state_group *g,
			  void (*fn)(void *ctx, const struct state_mismatch *m), void *ctx,
			  bool *more);
/* Records the group's state as shown in status (for sqlite3 readers). */
int state_group_status(struct state *st, const char *group, const char *status,
		       uint64_t waiting_for, const char *error);
/* Looks up applied segment number of group: 0 and *s, or -ENOENT. */
int state_segment_get(struct state *st, const char *group, uint64_t number,
		      struct state_segment *s);
int state_quarantine_add(struct state *st, const char *group, uint64_t segment,
			 const char *reason, const char *file);
/* Calls fn for the group's quarantine rows, oldest first; returns the
 * count in *total. */
int state_quarantine_each(struct state *st, const char *group,
			  void (*fn)(void *ctx, uint64_t segment, uint64_t time_ns, const char *reason),
			  void *ctx, uint64_t *total);
/* Calls fn with every group name the state knows. */
int state_groups_each(struct state *st, int (*fn)(void *ctx, const char *group), void *ctx);
/* Reads the group's hold (h->active false if it has none): 0 or -EIO. */
int state_hold_get(struct state *st, const char *group, struct hold *h);
/* Records h as the group's hold, or forgets it if !h->active. */
int state_hold_put(struct state *st, const char *group, const struct hold *h);
/* The group's failover role as recorded, with the promotion's time and
 * LSN: 0, or -EIO.  For the receiver. */
int state_role(struct state *st, const char *group, enum failover_role *role,
	       uint64_t *promoted_ns, uint64_t *lsn);
/* A MARK record a group applied. */
struct state_mark {
	uint64_t lsn, time_ns;
	char name[SEG_MARK_MAX + 1];
};
/* Records MARKs the group applied, marks[0..n), in one transaction (again
 * after a crash: the same rows; rows may precede the progress that passes
 * them).  0, or -EIO. */
int state_marks_add(struct state *st, const char *group, const struct state_mark *marks,
		    size_t n);
/* The LSN of the group's MARK name as applied: 0 and *lsn, -ENOENT, -EIO. */
int state_mark_get(struct state *st, const char *group, const char *name, uint64_t *lsn);

/* ---- receiver.c ---- */

/* Loads and checks the TLS material and the token without listening:
 * 0, or -errno after logging what is wrong.  For start-up checks. */
int receiver_check(const struct remote_config *c);
/* Validates the TLS material and the token, then listens on cfg->listen.
 * Returns 0 or -errno after logging why. */
int receiver_start(struct remote *r, struct receiver **out);
void receiver_stop(struct receiver *rx);

/*
 * Splits an upload path "<prefix>/<group>/<segment file>" and checks every
 * character of it: the prefix is made of components of [A-Za-z0-9._~-]
 * (never "." or ".."), the group a lowercase UUID, the file a sealed
 * segment name.  No '%' is accepted anywhere: nothing is decoded, so
 * nothing encoded can sneak through.  Returns 0, or -EINVAL with a reason.
 */
int receiver_parse_path(const char *url, char group[37], uint8_t uuid[16],
			char file[SEG_FILE_NAME_LEN + 1], uint64_t *number, const char **why);
/*
 * The same checks for "<prefix>/<group>/mismatches", the one other last
 * component served.  Returns 0; -ENOENT when the last component is not
 * "mismatches" (then try receiver_parse_path); -EINVAL with a reason.
 */
int receiver_parse_mismatches_path(const char *url, char group[37], uint8_t uuid[16],
				   const char **why);

/* ---- guard.c: the receiver's connections ---- */

/*
 * Every connection of the receiver is tracked from accept to close, and at
 * every moment it has one deadline: the end of its TLS handshake, of its
 * whole request header, of its idle time between requests, of the body at
 * the minimum rate, or of the lingering after an early answer.  A thread
 * closes (shutdown(2)) the connections past theirs.  Connections not yet
 * authenticated are counted; over max_unauthenticated the oldest one of the
 * address holding the most of them is closed.  All functions are
 * thread-safe; a struct guard_conn is freed by guard_close only.
 */
struct guard;
struct guard_conn;
struct sockaddr;

int guard_start(const struct remote_limits *lim, struct rx_stats *rx, struct guard **out);
void guard_stop(struct guard *g);
/* A new connection on socket fd from addr.  Returns its record, or NULL
 * when out of memory (the connection then has libmicrohttpd's idle
 * timeout only). */
struct guard_conn *guard_open(struct guard *g, int fd, const struct sockaddr *addr);
/* The connection is gone (its socket is about to be closed). */
void guard_close(struct guard_conn *c);
/* The TLS handshake is over: the first request header is due. */
void guard_handshake_done(struct guard_conn *c);
/* A request line arrived: the rest of its header is due. */
void guard_request_line(struct guard_conn *c);
/* The request passed authentication (certificate, token). */
void guard_authenticated(struct guard_conn *c);
/* The header is complete; body: a body is to be received (the minimum rate
 * applies), otherwise the request is being answered (no deadline). */
void guard_headers_done(struct guard_conn *c, bool body);
/* n more bytes of body.  Returns false when the body has fallen below the
 * minimum rate. */
bool guard_body(struct guard_conn *c, size_t n);
/* An early answer was sent: the connection lingers until until_ns
 * (CLOCK_MONOTONIC), reading and dropping, then is closed. */
void guard_linger(struct guard_conn *c, uint64_t until_ns);
/* The request is over: the connection may idle until the next one. */
void guard_request_done(struct guard_conn *c);

/* ---- watcher.c ---- */

/* Initialises inotify, watches the inbox and every group directory in it.
 * Returns 0 or -errno after logging. */
int watcher_start(struct remote *r);
/* The descriptor to poll for readability, or -1 if unknown (then call
 * watcher_drain on a timer). */
int watcher_fd(void);
/* Handles every queued event: kicks the groups concerned, watches new
 * group directories, rescans after an overflow. */
void watcher_drain(struct remote *r);
/* Watches every group directory present and kicks their groups. */
void watcher_scan(struct remote *r);
void watcher_stop(void);

/* ---- inbox.c: the files of one group's inbox directory ---- */

/* A segment file as validated, and still open (the applier reads its
 * payloads with pread: applier_set_source). */
struct inbox_file {
	size_t len;
	int fd;  /* -1 when closed */
	struct seg_view *v;
};

/* One segment file found in a group directory. */
struct inbox_entry {
	uint64_t number;
	uint64_t size;
	uint64_t mtime_ns;
};

/* Maps and validates segment file name of directory dirfd (without
 * hashing its payloads again if r's receiver or a puller hashed them as
 * they arrived and nothing wrote to the file since: prechecked.c; r
 * NULL: always whole).  Returns 0 with f filled, -EBADMSG with the decoder's
 * reason in why, or another -errno (also explained in why). */
int inbox_open(int dirfd, const char *name, struct remote *r, struct inbox_file *f, char *why,
	       size_t whylen);
void inbox_file_close(struct inbox_file *f);
/* True if name may still be being written under its final name (cp onto
 * the inbox, a WebDAV server without a temporary name); *recheck_ns is set
 * to the CLOCK_MONOTONIC time to look again.  group is for messages. */
bool inbox_settling(int dirfd, const char *group, const char *name, uint64_t *recheck_ns);
/* inbox_open for a file that may still be arriving: -EAGAIN if it fails
 * validation while still being written (*recheck_ns says when to look
 * again); a file that failed while its writer was finishing is validated
 * again once no one writes it. */
int inbox_open_settled(int dirfd, const char *group, const char *name, struct remote *r,
		       struct inbox_file *f, uint64_t *recheck_ns, char *why, size_t whylen);
/* Moves name into subdirectory sub (created if needed) under its own name,
 * or, with keep_all, under name.<ns> if that is taken.  The name used goes
 * to out.  0 or -errno. */
int inbox_move_aside(int dirfd, const char *name, const char *sub, bool keep_all, char *out,
		     size_t outlen);
/* The segment files of directory dirfd in number order (malloc'd). */
int inbox_scan(int dirfd, struct inbox_entry **out, size_t *n);
/* Opens name of dirfd to read it, with a shared flock that keeps the file
 * from being reused (recycle.c) while the fd is open; -ENOENT if the name
 * no longer names the file once it is locked (applied and kept meanwhile),
 * or -errno.  Every reader of inbox files opens them so. */
int inbox_open_fd(int dirfd, const char *name);
/* 1 if some process has name of dirfd open for writing, 0 if not, -errno
 * if this cannot be told (a read lease: the file's owner or CAP_LEASE). */
int inbox_has_writer(int dirfd, const char *name);
/* Whether a group that applied segment applied could apply segment number
 * without waiting for another, with the n segments e (in number order) in
 * its inbox: those between the two are all here, or none is (nothing
 * held: number is the first of a resync's, or of what will come). */
bool inbox_run_reaches(const struct inbox_entry *e, size_t n, uint64_t applied,
		       uint64_t number);
/* Opens (creating) inbox/.tmp, where the receiver and the pullers write
 * what they are receiving.  Returns an fd or -errno (logged). */
int inbox_tmp_open(struct remote *r);

/* ---- recycle.c ---- */

/* Empties inbox/.free if it is there (after inbox_fd is open; r->free's
 * lock initialised and its dirfd -1 before). */
void inbox_free_init(struct remote *r);
void inbox_free_close(struct remote *r);
/* Moves the applied segment file name of directory dirfd into inbox/.free
 * if one more may be kept there (room above --inbox-reserve, fewer than
 * INBOX_FREE_MAX) and no one else may write it (ours, one link, no
 * writer).  True if it did; false: the caller unlinks it. */
bool inbox_free_keep(struct remote *r, int dirfd, const char *name);
/* Renames a kept file that no reader holds (inbox_open_fd) to tmpname in
 * tmp_fd (inbox/.tmp) for an upload to write over: its fd (read-write,
 * offset 0), or -ENOENT if there is none. */
int inbox_free_take(struct remote *r, int tmp_fd, const char *tmpname);
/* Unlinks every kept file; returns the bytes they held. */
uint64_t inbox_free_drop(struct remote *r);

/* ---- prechecked.c ---- */

void prechecked_init(struct prechecked *pc);
void prechecked_destroy(struct prechecked *pc);
/* Leaves p, the precheck fed every byte of the segment file open at fd
 * (about to be renamed into the inbox, no longer written), for the
 * group's open of it; takes p (NULL: nothing to leave). */
void prechecked_add(struct prechecked *pc, int fd, struct seg_precheck *p);
/* A copy of the precheck left for the file st describes, if nothing was
 * written to it since (the caller frees it), else NULL; *first: the
 * first copy of it (a group may open a segment more than once). */
struct seg_precheck *prechecked_find(struct prechecked *pc, const struct stat *st,
				     bool *first);
/* Drops the entry of name of dirfd (applied, put aside, removed), or of
 * the file open at dirfd if name is "". */
void prechecked_forget(struct prechecked *pc, int dirfd, const char *name);
/* Renames the checked segment file open at fd from oldname of olddir to
 * newname of newdir without replacing anything, leaving p (taken) for
 * the group it wakes.  0 or -errno (nothing left then). */
int prechecked_rename(struct prechecked *pc, int fd, struct seg_precheck *p, int olddir,
		      const char *oldname, int newdir, const char *newname);

/* ---- puller.c ---- */

/* A pull option from the command line: opt is the long option's name
 * ("pull", "access-key-file", "secret-key-file", "region",
 * "pull-interval", "pull-ca-file"); options before any --pull hold for
 * every pull.  0, or -EINVAL after logging. */
int puller_option(struct remote_config *c, const char *opt, const char *arg);
/* Adds the [pull NAME] sections of an INI file.  0 or -EINVAL (logged). */
int puller_config_load(struct remote_config *c, const char *path);
/* Checks every pull's URL and loads its keys.  0 or -EINVAL (logged). */
int puller_check(struct remote_config *c);
void puller_config_free(struct remote_config *c);
/* Starts one thread per pull (after the groups).  0 or -errno (logged). */
int puller_start(struct remote *r);
void puller_stop(struct remote *r);
/* For status: the pulls' array (new reference), their metrics. */
struct strbuf;
json_t *puller_status_json(struct remote *r);
void puller_metrics(struct remote *r, struct strbuf *sb);
/* ---- failover.c: holds and promotion ---- */

/* "now", "lsn", "time", "mark", "last". */
const char *hold_kind_name(enum hold_kind k);
/* "", "promoting", "promoted". */
const char *failover_role_name(enum failover_role r);
/* Sets h's kind and point from a recorded point text and kind (0 and h
 * filled, or -EINVAL). */
int hold_set_point(struct hold *h, enum hold_kind kind, const char *text);

/* Where a pending hold may stop within one segment. */
struct hold_scan {
	uint64_t stop_lsn;     /* the last record it may stop after, 0 if none */
	uint64_t stop_time_ns; /* its source time */
	uint8_t stop_type;     /* its type */
	bool ended;            /* the point lies in this segment: nothing after counts */
	bool consistent;       /* whether the targets are a consistent copy after
				* the last record read (for the next segment) */
};
/*
 * Reads the records of v with lsn > after as the hold h sees them, the
 * targets being a consistent copy at after if consistent: the barriers it
 * may stop at (FLUSH and SYNC_END records where the copy is consistent,
 * any with a forced promote; a MARK it names) before its point ends, and
 * whether the point ends in v.  Rewinds v.  Pure.
 */
void hold_scan(const struct hold *h, struct seg_view *v, uint64_t after, bool consistent,
	       struct hold_scan *out);
/* True if the end of what arrived (the next segment is not here) is the
 * end of h's point: a hold "now" and a promote's "last barrier". */
bool hold_ends_with_arrivals(const struct hold *h);

/* What a group's thread knows when it answers a request. */
struct failover_view {
	const char *group;
	struct state *st;            /* the group's connection; NULL if it has none */
	uint64_t applied_lsn, applied_time_ns;
	const struct state_sync *sync;
	uint64_t backlog_segments, backlog_bytes;
};
/*
 * Applies the rules of req (hold, release, promote) to the group's hold h:
 * refuses with the right status and a reason (an unknown point kind, a
 * point already applied, release without a hold, a second promote, an
 * inconsistent copy without force), or changes h and records it in the
 * state before answering; the hold h already has, asked again, changes
 * nothing.  Fills req->code (and req->body for a refusal).  Returns true if
 * h changed.
 */
bool failover_decide(const struct failover_view *fv, struct hold *h, struct failover_req *req);
/* True if the group stands right after the record h's point names (an
 * LSN or a MARK it applied last): the hold is reached where it is. */
bool hold_at_position(const struct failover_view *fv, const struct hold *h);
/*
 * The group stopped at its hold: records h as reached after lsn (of type
 * type, at source time time_ns; note says how, or NULL), and for a
 * promoting group decides the promotion: promoted if the copy is
 * consistent (or forced), else refused (the hold stays, with the reason in
 * note).  Logs what happened.  Returns 0 or -EIO (the state failed; h is
 * unchanged in the state then, and the group tries again).
 */
int hold_reach(const struct failover_view *fv, struct hold *h, uint64_t lsn, uint64_t time_ns,
	       uint8_t type, const char *note);
/* The "hold" object of a group's status (a new reference). */
json_t *hold_json(const struct hold *h, const struct group_snapshot *s, uint64_t now);
/* The answer to a request failover_decide accepted (req->code 200), from
 * the group as it is after it acted: 202 for a promote still applying. */
void failover_answer(struct failover_req *req, const struct group_snapshot *s);
/* True if path is one of failover_post's. */
bool failover_path(const char *path);
/* Answers POST /hold/GROUP[/at/POINT], /release/GROUP,
 * /promote/GROUP[/force][/at/POINT] on the status listener. */
struct httpd_response;
int failover_post(struct remote *r, const char *path, struct httpd_response *resp);

/* ---- status.c ---- */

int status_start(struct remote *r, const char *addr, struct status **out);
void status_stop(struct status *s);

#endif
