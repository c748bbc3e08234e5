/*
 * io.c — the default I/O table (io_i.h): the system calls themselves, and
 * the boot id read from /proc.
 */
#include "io_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "catalog.h"
#include "format.h"

static ssize_t sys_pwrite(int fd, const void *buf, size_t n, off_t off)
{
	return pwrite(fd, buf, n, off);
}

static ssize_t sys_pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
	return pwritev(fd, iov, iovcnt, off);
}

static int sys_sync_file_range(int fd, off_t off, off_t n, unsigned flags)
{
	return sync_file_range(fd, off, n, flags);
}

static int sys_boot_id(uint8_t id[BOOT_ID_LEN])
{
	char buf[64];
	ssize_t n;
	int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n < 36)
		return -EIO;
	buf[36] = '\0';
	return seg_uuid_parse(buf, id) < 0 ? -EIO : 0;
}

#define DEFAULT_IO { \
	.pwrite_fn = sys_pwrite, \
	.pwritev_fn = sys_pwritev, \
	.ftruncate_fn = ftruncate, \
	.fallocate_fn = fallocate, \
	.fsync_fn = fsync, \
	.fdatasync_fn = fdatasync, \
	.syncfs_fn = syncfs, \
	.renameat_fn = renameat, \
	.sync_file_range_fn = sys_sync_file_range, \
	.boot_id_fn = sys_boot_id, \
	.catalog_open_fn = catalog_open, \
}

const struct aimfs_io aimfs_io_default = DEFAULT_IO;
struct aimfs_io aimfs_io = DEFAULT_IO;
