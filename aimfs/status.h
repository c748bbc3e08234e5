/*
 * status.h — what aimfs tells an operator: GET /status (JSON) and
 * GET /metrics (Prometheus text) on the status address, built from the
 * journal's and the transport's own snapshots.
 */
#ifndef AIM_STATUS_H
#define AIM_STATUS_H

struct journal;
struct transport;
struct status;

struct status_info {
	const char *version;
	const char *backing_dir;
	const char *mountpoint;
	const char *journal_dir;
	const char *overflow;
	struct journal *journal;
	struct transport *transport; /* NULL without destinations */
	struct resync *resync;       /* likewise */
};

/* Starts serving on addr; returns 0 or -errno after logging why. */
int status_start(const char *addr, const struct status_info *info, struct status **out);
void status_stop(struct status *s);

#endif
