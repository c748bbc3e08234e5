/*
 * transport_i.h — private declarations of the transport: the destination
 * worker (worker.c), the image filter (filter.c) and the shared state
 * (transport.c).
 *
 * Locking: transport.lock protects the fields marked (T) in struct
 * transport and struct dest.  Workers never hold it across I/O (network,
 * files, catalog).  It is a leaf lock: nothing else is taken under it.
 */
#ifndef AIM_TRANSPORT_I_H
#define AIM_TRANSPORT_I_H

#include "transport.h"
#include "format.h"

#include <pthread.h>

enum dest_state {
	DEST_IN_SYNC,       /* acknowledged everything durable */
	DEST_SHIPPING,      /* uploading */
	DEST_RETRYING,      /* last attempt failed; next at next_attempt_ns */
	DEST_STOPPED,       /* refused for good (4xx); reason in last_error */
	DEST_NEEDS_RESYNC,  /* the journal no longer holds what it needs */
};

struct dest {
	struct transport *t;
	struct dest_config cfg;
	uint32_t number;            /* tags this destination's resync records */
	pthread_t thread;
	bool started;
	/* (T) */
	enum dest_state state;
	uint64_t acked_segment;     /* last segment acknowledged */
	uint64_t acked_ns;          /* when */
	uint64_t acked_src_lsn;     /* source LSN that segment ends at */
	uint64_t dest_last_lsn;     /* last LSN in the destination's own sequence */
	uint64_t shipping_segment;
	char last_error[256];
	uint64_t last_error_ns;
	uint64_t next_attempt_ns;
	unsigned attempts;          /* consecutive failures */
	uint64_t segments_sent, bytes_sent, bytes_raw;
	double rate_bps;            /* moving average of upload throughput */
	bool tracking;              /* overflowed: ships skeletons (T) */
	bool skel_need_begin;       /* the next skeleton starts with SYNC_BEGIN (T) */
	bool hold;                  /* ships nothing until the resync engine starts (T) */
	uint64_t skel_through;      /* skeletons stored up to this segment (T) */
	uint64_t retry_after_ns;    /* the last answer's Retry-After, 0 if none (worker) */
};

struct transport {
	char *journal_dir;
	uint8_t group[16];
	char group_s[37];
	uint64_t retain_ns;
	struct transport_hooks hooks;
	pthread_mutex_t lock;
	pthread_cond_t cond;        /* new durable segments, stop, drain progress */
	uint64_t durable_segment;   /* (T) */
	uint64_t backing_lsn;       /* (T) */
	uint64_t pruned_through;    /* (T) */
	bool pruning;               /* (T) one pruner at a time */
	bool stopping;              /* (T) */
	struct dest *dests;
	size_t ndests;
};

/* worker.c */
void *worker_main(void *arg);

/* transport.c: prunes what every destination acknowledged; cat is the
 * caller's own catalog connection. */
struct catalog;
void transport_prune(struct transport *t, struct catalog *cat);

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

/* skeleton.c */
void skeleton_path(const struct transport *t, const struct dest *d, uint64_t n, char *buf,
		   size_t len);
bool skeleton_exists(const struct transport *t, const struct dest *d, uint64_t n);
/* Stores d's skeleton of segment n (and records its data as dirty);
 * -ENOENT if the segment is gone. */
int skeleton_make(struct transport *t, struct dest *d, struct catalog *cat, uint64_t n);
void skeleton_remove(const struct transport *t, const struct dest *d, uint64_t n);
/* Last segment with a stored skeleton contiguous after after. */
uint64_t skeleton_scan(const struct transport *t, const struct dest *d, uint64_t after);

#endif
