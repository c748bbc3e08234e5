/*
 * format_i.h — what segment.c and precheck.c share inside format/: the
 * byte order helpers, the magics, and how a streamed check and a walk
 * agree that they saw the same records.  Not part of format.h.
 */
#ifndef AIMFS_FORMAT_I_H
#define AIMFS_FORMAT_I_H

#include "format.h"

#include <stdbool.h>
#include <stdint.h>

static const uint8_t seg_head_magic[8] = { 'A', 'I', 'M', 'J', 'S', 'E', 'G', 0 };
static const uint8_t seg_tail_magic[8] = { 'A', 'I', 'M', 'J', 'E', 'N', 'D', 0 };

static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* One record folded into a running summary of where the records are and
 * what their headers say their payloads hash to. */
uint64_t seg_precheck_fold(uint64_t fold, uint64_t pos, uint32_t payload_len,
			   uint64_t payload_hash);

/* What a precheck saw, if it followed the segment to its trailer and every
 * payload hashed as its record said: true with the records' count, the
 * trailer's offset, the fold of the records and the bytes fed. */
bool seg_precheck_result(const struct seg_precheck *p, uint64_t *count, uint64_t *tail_pos,
			 uint64_t *fold, uint64_t *fed);

#endif
