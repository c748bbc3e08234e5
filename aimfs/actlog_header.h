/*
 * actlog_header.h — the activity log's header (its first 80 bytes), for
 * actlog.c and for tools that must know how the last mount ended without
 * opening the log (aimctl ship).
 *
 * Layout, little-endian: magic "AIMACTL1", u32 version, u32 extent shift,
 * u32 slots, u32 flags (1: clean; 2: redo: the backing filesystem failed to
 * write back, so even the same boot redoes from the synced LSN), group (16), boot id (16), u64
 * generation, u64 synced LSN, u64 XXH3 of the bytes before it.  Version 1
 * had no synced LSN and its check at 64.
 */
#ifndef AIM_ACTLOG_HEADER_H
#define AIM_ACTLOG_HEADER_H

#include <stdbool.h>
#include <stdint.h>

#define ACTLOG_FILE "actlog"
#define ACTLOG_HEADER_BYTES 80u

struct actlog_header {
	uint32_t version;
	uint32_t extent_shift;
	uint32_t slots;
	bool clean;               /* closed by a clean unmount */
	bool redo;                /* the backing files lost writes after synced_lsn */
	uint8_t group[16];
	uint8_t boot[16];
	uint64_t generation;
	uint64_t synced_lsn;      /* version 1: UINT64_MAX (its fsyncs synced the
				   * backing files too) */
};

/* Fills h (ACTLOG_HEADER_BYTES) with the current version. */
void actlog_header_encode(const struct actlog_header *in, uint8_t *h);
/* 0, or -EINVAL if h is not a valid header of a known version. */
int actlog_header_decode(const uint8_t *h, struct actlog_header *out);
/* Reads dirfd's activity log header: 0, -ENOENT if there is no log,
 * -EINVAL if it is unreadable, or -errno. */
int actlog_header_read(int dirfd, struct actlog_header *out);

#endif
