/*
 * transport_i.h — private declarations of the transport: the destination
 * worker (worker.c), the image filter (filter.c) and the shared state
 * (transport.c).
 *
 * Locking: transport.lock protects the fields marked (T) in struct
 * transport and struct dest.  Workers never hold it across I/O (network,
 * files, catalog).  It is a leaf lock: nothing else is taken under it.
 * transport.change_lock serialises state changes (dest_state.c), which
 * write the catalog and then take transport.lock.
 */
#ifndef AIM_TRANSPORT_I_H
#define AIM_TRANSPORT_I_H

#include "transport.h"
#include "format.h"

struct catalog;
#include <errno.h>
#include <pthread.h>

/* The worker's view of the link: not persisted, set only through
 * dest_link_set (dest_state.c), with the transport lock held. */
enum dest_link {
	DEST_LINK_IDLE,     /* acknowledged everything durable */
	DEST_LINK_SHIPPING, /* uploading */
	DEST_LINK_RETRYING, /* last attempt failed; next at next_attempt_ns */
	DEST_LINK_STOPPED,  /* refused for good (4xx); reason in last_error */
	DEST_LINK_GAP,      /* the journal no longer holds the segment it needs next */
};

struct dest {
	struct transport *t;
	struct dest_config cfg;
	pthread_t thread;
	bool started;
	/* (T) */
	struct dest_record rec;     /* owned by dest_state.c: changed by dest_state_change */
	uint64_t remaining;         /* resync: bytes still dirty (status only) */
	int compare;                /* resync: remote compares hashes, -1 unknown (status only) */
	enum dest_link link;
	uint64_t acked_segment;     /* last segment acknowledged */
	uint64_t acked_ns;          /* when */
	uint64_t acked_src_lsn;     /* source LSN that segment ends at */
	uint64_t dest_last_lsn;     /* last LSN in the destination's own sequence */
	uint64_t shipping_segment;
	bool in_ship;               /* the worker is shipping shipping_segment, from
				     * choosing it in full or as a skeleton to recording
				     * the acknowledgement: only it makes skeletons then */
	char last_error[256];
	uint64_t last_error_ns;
	uint64_t next_attempt_ns;
	unsigned attempts;          /* consecutive failures */
	uint64_t segments_sent, bytes_sent, bytes_raw;
	double rate_bps;            /* moving average of upload throughput */
	uint64_t skel_through;      /* skeletons stored up to this segment */
	/* What the remote says it did with what it acknowledged (aim-remote's
	 * mismatch report; worker.c asks while it lags or is not idle). */
	char remote_state[16];      /* its group's state word, "" if unknown */
	char remote_error[512];     /* why it stopped */
	uint64_t remote_applied_lsn; /* in the destination's sequence */
	uint64_t remote_asked_ns;   /* when last asked, 0: never */
	bool remote_silent;         /* it answers no report (a WebDAV server) */
	bool unanswered;            /* the last upload got no answer (worker) */
	uint64_t unsure_segment;    /* sent whole without an answer: the remote may
				     * hold it, so its "skeleton" is the segment
				     * as sent (skeleton.c) */
	uint64_t retry_after_ns;    /* the last answer's Retry-After, 0 if none (worker) */
	uint64_t base_ns;           /* s3: when its newest base began (s3.c) */
	bool base_known;            /* s3: base_ns was read from the bucket */
};

/* What the record means for a worker (T).  Tracking: it ships skeletons. */
static inline bool dest_tracking(const struct dest *d)
{
	return d->rec.sync == DEST_SYNC_TRACKING;
}

/* Its next skeleton must open with SYNC_BEGIN. */
static inline bool dest_skeleton_needs_begin(const struct dest *d)
{
	return d->rec.sync == DEST_SYNC_TRACKING && d->rec.phase == DEST_PHASE_NONE;
}

/* What the backlog is made of: the size and creation time of each sealed
 * segment some destination has not acknowledged, read once from its file
 * (dest_view.c).  The status is asked for often, and after a long outage
 * with small segments the backlog is thousands of files: reading them all
 * for every request cost aimfs most of a CPU. */
struct seg_fact {               /* 16 bytes: a journal can hold millions */
	uint64_t created_ns;
	uint64_t size : 63;
	uint64_t known : 1;         /* read; else not yet, or unreadable */
};

struct seg_facts {
	pthread_mutex_t lock;       /* transport.lock is never taken under it */
	uint64_t first;             /* the segment v[0] is about */
	size_t n, cap;
	struct seg_fact *v;
};

struct transport {
	char *journal_dir;
	uint8_t group[16];
	char group_s[37];
	uint64_t retain_ns;
	struct transport_hooks hooks;
	bool resync;                /* a resync engine runs (not aimctl ship) */
	pthread_mutex_t change_lock; /* serialises dest_state_change; taken before lock */
	pthread_mutex_t skel_lock;   /* one skeleton made at a time, and no segment
				      * pruned while one is read; taken before lock */
	pthread_mutex_t lock;
	pthread_cond_t cond;        /* new durable segments, stop, drain progress */
	void (*on_change)(void *ctx); /* the resync engine's wake-up */
	void *on_change_ctx;
	uint64_t durable_segment;   /* (T) */
	uint64_t backing_lsn;       /* (T) */
	/* backing_lsn moved since the last prune: an idle worker prunes (the
	 * backing files' sync may come after every acknowledgement) (T) */
	bool backing_moved;
	uint64_t pruned_through;    /* (T) */
	bool pruning;               /* (T) one pruner at a time */
	bool prune_again;           /* (T) asked while one ran: it runs once more */
	uint64_t prune_begun;       /* (T) passes begun and done so far: a caller */
	uint64_t prune_done;        /* (T) that must see its pass waits for it */
	pthread_cond_t pruned;      /* prune_done moved (not cond: idle workers
				     * woken by every pass would prune again) */
	bool stopping;              /* (T) */
	struct dest *dests;
	size_t ndests;
	struct seg_facts facts;
};

/* worker.c */
void *worker_main(void *arg);

/* What one attempt to ship a segment (or to do an object store's chores)
 * came to; the worker turns it into the link state. */
enum outcome { SHIP_OK, SHIP_RETRY, SHIP_FATAL, SHIP_RESYNC };

/* s3.c: an object-store destination (type = s3).  A struct s3_dest
 * belongs to the destination's worker thread; failures are explained in
 * the destination's last_error. */
struct s3_dest;
int s3_dest_open(struct dest *d, struct catalog *cat, struct s3_dest **out);
void s3_dest_close(struct s3_dest *sd);
/* Uploads segment n: raw is the destination's segment, packed (when not
 * NULL) its zstd form, which is what the bucket gets; v, when not NULL,
 * is a validated view of exactly raw (it is then iterated, not checked
 * again).  SHIP_OK (the acknowledgement) or SHIP_RETRY. */
enum outcome s3_dest_put(struct s3_dest *sd, uint64_t n, const uint8_t *raw, size_t raw_len,
			 struct seg_view *v, const uint8_t *packed, size_t packed_len);
/* The catalog has recorded the acknowledgement of the segment just put:
 * writes HEAD naming it if that is due (a failure leaves HEAD owed).  HEAD
 * never names a segment the catalog could forget: a restart might ship
 * another segment under its number (a skeleton). */
void s3_dest_acked(struct s3_dest *sd);
/* True if the store is owed work when nothing waits to be shipped: HEAD
 * not read or not written yet, retention due, deletions unfinished. */
bool s3_dest_owes(const struct s3_dest *sd);
/* Does that work: SHIP_OK, or SHIP_RETRY. */
enum outcome s3_dest_chores(struct s3_dest *sd);

/* dest_state.c */
/* Loads destination d's record from cat into memory (transport_new). */
int dest_state_load(struct dest *d, struct catalog *cat);
/* Sets the link state, logging what an operator should hear of the change
 * (T: called with transport.lock held). */
void dest_link_set(struct dest *d, enum dest_link link);
/* Records why the link failed, for status (takes transport.lock). */
void dest_set_error(struct dest *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* True while d must ship nothing: a resync is about to begin with a
 * segment of its own (T). */
bool dest_held(const struct dest *d);

/* transport.c: prunes what every destination acknowledged; cat is the
 * caller's own catalog connection. */
struct catalog;
void transport_prune(struct transport *t, struct catalog *cat);
/* Reads a sealed segment's size, creation time, last LSN and sealing time
 * from its header and trailer (our own, already validated files). */
int segment_facts(const char *dir, uint64_t n, uint64_t *size, uint64_t *created_ns,
		  uint64_t *last_lsn, uint64_t *sealed_ns);

/* filter.c */
enum filter_mode {
	FILTER_NORMAL,   /* the records this destination should see */
	FILTER_SKELETON, /* ... without their data: it is tracking dirty extents */
	FILTER_SKELETON_BEGIN, /* ... and first a SYNC_BEGIN: tracking starts here */
};
/* True if r is tagged for a destination other than number. */
bool record_is_foreign(const struct seg_record *r, uint32_t number);
/*
 * Re-encodes v as destination number (configured as d) sees it: only its
 * images' records, none tagged for other destinations, no data records in
 * skeleton mode.  first_lsn starts its own LSN sequence for this segment.
 * Returns 0 and a malloc'd sealed segment in *out.
 */
int filter_segment(const struct dest_config *d, uint32_t number, enum filter_mode mode,
		   struct seg_view *v, uint64_t first_lsn, uint8_t **out, size_t *len,
		   uint64_t *last_lsn);
/*
 * The bytes d receives for segment v sent in mode, its sequence going on at
 * first: v's own bytes (*owned NULL) where that sequence is the source's and
 * nothing in v is for someone else, else filter_segment's (*owned, to free).
 * The same segment always gives the same bytes.  0 or -ENOMEM.
 */
int filter_body(const struct dest *d, enum filter_mode mode, struct seg_view *v, uint64_t first,
		const uint8_t **body, size_t *len, uint8_t **owned, uint64_t *dfirst,
		uint64_t *dlast);

/* seg_view_open's r says the file is damaged (not a segment, or one that
 * fails validation), not that it could not be read just now. */
static inline bool view_error_is_damage(int r)
{
	return r == -EBADMSG || r == -EINVAL;
}

/* skeleton.c */
void skeleton_path(const struct transport *t, const struct dest *d, uint64_t n, char *buf,
		   size_t len);
bool skeleton_exists(const struct transport *t, const struct dest *d, uint64_t n);
/* Stores d's skeleton of segment n (and records its data as dirty);
 * -ENOENT if the segment is gone, -EBADMSG if it or the skeleton before it
 * is damaged (skeleton_damaged was called), -EAGAIN if d is no longer
 * tracking or n was acknowledged meanwhile. */
int skeleton_make(struct transport *t, struct dest *d, struct catalog *cat, uint64_t n);
void skeleton_remove(const struct transport *t, const struct dest *d, uint64_t n);
/*
 * what ("journal segment", "the stored skeleton of segment") n cannot be
 * read (why): d's sequence cannot go on from it, and what its records
 * dirtied is unknown.  Unless d was acknowledged past n meanwhile, it is
 * set to DEST_LINK_GAP, for which the engine resynchronises every image;
 * the error is recorded in cat when not NULL.
 */
void skeleton_damaged(struct transport *t, struct dest *d, struct catalog *cat, const char *what,
		      uint64_t n, const char *why);
/* Deletes d's skeletons of acknowledged segments: left by a crash between
 * an acknowledgement and the deletion, or skipped by a resync. */
void skeleton_forget_acked(const struct transport *t, const struct dest *d);
/* Last segment with a stored skeleton contiguous after after. */
uint64_t skeleton_scan(const struct transport *t, const struct dest *d, uint64_t after);

#endif
