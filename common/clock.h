/*
 * clock.h — the clocks every program reads, and how times are printed.
 *
 * Wall-clock time (CLOCK_REALTIME) is what records carry and what status
 * shows; monotonic time (CLOCK_MONOTONIC) is for deadlines and intervals
 * that must not jump with the wall clock.  Thread-safe.
 */
#ifndef AIM_CLOCK_H
#define AIM_CLOCK_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Nanoseconds since the epoch. */
uint64_t clock_wall_ns(void);
/* Nanoseconds of CLOCK_MONOTONIC. */
uint64_t clock_mono_ns(void);
/* A struct timespec for an absolute CLOCK_REALTIME time in ns (the form
 * pthread_cond_timedwait takes with a default condition variable). */
struct timespec clock_timespec(uint64_t ns);
/*
 * ISO 8601 UTC ("2026-12-04T10:11:12Z"), with digits (0, 3, 6 or 9) of the
 * second's fraction; "-" for 0 (an unset time).  Returns buf.
 */
const char *clock_iso8601(uint64_t ns, unsigned digits, char *buf, size_t len);

#endif
