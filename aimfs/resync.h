/*
 * resync.h — the resynchronisation engine (docs/RESYNC.md): brings every
 * destination that is new, was added later, or lost segments to an exact
 * copy, by journaling resync records for its dirty extents while the
 * guests keep writing.  One thread for all destinations.
 */
#ifndef AIM_RESYNC_H
#define AIM_RESYNC_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

struct resync;
struct journal;
struct transport;

/* Starts the engine; track: relieve a full journal by tracking a lagging
 * destination's changes (overflow=track); verify_every_ns: verify every
 * image against every destination that often (0: only on request).
 * Returns 0 or -errno. */
int resync_start(struct journal *j, struct transport *t, int backing_fd, const char *journal_dir,
		 bool track, uint64_t verify_every_ns, struct resync **out);
void resync_stop(struct resync *r);

/* Starts verifying image (NULL: every image) against every destination:
 * HASH records for all of them, then each remote's report.  Replaces any
 * earlier verification.  Returns 0 and its id, -ENOENT for no such image. */
int resync_verify(struct resync *r, const char *image, uint64_t *id);
/* The last verification: {id, image, done, bytes, destinations: [{name,
 * state: equal|differs|shipping|applying|unreachable|cannot compare,
 * ranges}]} (new reference), or NULL if none. */
json_t *resync_verify_status(struct resync *r);

#endif
