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
#include "segment.h"

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
uint64_t transport_now_ns(void);

/* transport.c: prunes what every destination acknowledged; cat is the
 * caller's own catalog connection. */
struct catalog;
void transport_prune(struct transport *t, struct catalog *cat);

/* filter.c: re-encodes v for a destination limited to some images.
 * first_lsn starts the destination's own sequence for this segment.
 * Returns 0 and a malloc'd sealed segment in *out. */
int filter_segment(const struct dest_config *d, struct seg_view *v, uint64_t first_lsn,
		   uint8_t **out, size_t *len, uint64_t *last_lsn);

#endif
