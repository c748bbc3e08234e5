/*
 * actlog_header.c — encoding and decoding of the activity log's header.
 */
#include "actlog_header.h"
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#define MAGIC "AIMACTL1"
#define VERSION 2u           /* 1: no synced LSN, check at 64 */
#define F_CLEAN 1u
#define F_REDO 2u

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

void actlog_header_encode(const struct actlog_header *in, uint8_t *h)
{
	memset(h, 0, ACTLOG_HEADER_BYTES);
	memcpy(h, MAGIC, 8);
	put32(h + 8, VERSION);
	put32(h + 12, in->extent_shift);
	put32(h + 16, in->slots);
	put32(h + 20, (in->clean ? F_CLEAN : 0) | (in->redo ? F_REDO : 0));
	memcpy(h + 24, in->group, 16);
	memcpy(h + 40, in->boot, 16);
	put64(h + 56, in->generation);
	put64(h + 64, in->synced_lsn);
	put64(h + 72, XXH3_64bits(h, 72));
}

int actlog_header_decode(const uint8_t *h, struct actlog_header *out)
{
	memset(out, 0, sizeof *out);
	if (memcmp(h, MAGIC, 8) != 0)
		return -EINVAL;
	out->version = get32(h + 8);
	if (out->version == 1 ? get64(h + 64) != XXH3_64bits(h, 64)
			      : out->version != VERSION || get64(h + 72) != XXH3_64bits(h, 72))
		return -EINVAL;
	out->extent_shift = get32(h + 12);
	out->slots = get32(h + 16);
	out->clean = (get32(h + 20) & F_CLEAN) != 0;
	out->redo = (get32(h + 20) & F_REDO) != 0;
	memcpy(out->group, h + 24, 16);
	memcpy(out->boot, h + 40, 16);
	out->generation = get64(h + 56);
	out->synced_lsn = out->version == 1 ? UINT64_MAX : get64(h + 64);
	return 0;
}

int actlog_header_read(int dirfd, struct actlog_header *out)
{
	uint8_t h[ACTLOG_HEADER_BYTES];
	ssize_t n;
	int fd = openat(dirfd, ACTLOG_FILE, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	n = fileio_pread_full(NULL, fd, h, sizeof h, 0);
	close(fd);
	if (n < 0)
		return (int)n;
	return (size_t)n < sizeof h ? -EINVAL : actlog_header_decode(h, out);
}
