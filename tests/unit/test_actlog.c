/*
 * test_actlog.c — the activity log (aimfs/actlog.c) on its own: what the
 * next mount finds after a clean unmount, a crash in the same boot and one
 * in another boot; that a touched extent is on disk before touch returns
 * and costs nothing the second time; read-ahead; whole-image slots; that a
 * held or not yet checkpointed extent is never given away, and that a full
 * log checkpoints (journal first, then the backing filesystem) instead;
 * that a failing log write refuses the write; and the synced LSN a
 * checkpoint leaves in the header (both header versions).  The I/O table
 * (aimfs/io_i.h) stands in for the boot id and counts fdatasyncs.
 */
#include "actlog.h"
#include "io_i.h"
#include "check.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

static char dir[] = "/var/tmp/test_actlog.XXXXXX";
static int dirfd_;
static uint8_t group[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };
static uint8_t boot[BOOT_ID_LEN];
static int journal_syncs, syncfs_calls, fdatasyncs, fail_fdatasync;
static int order_ok = 1, last_was_journal;

static int fake_boot(uint8_t id[BOOT_ID_LEN])
{
	memcpy(id, boot, BOOT_ID_LEN);
	return 0;
}

static int count_fdatasync(int fd)
{
	fdatasyncs++;
	if (fail_fdatasync) {
		errno = EIO;
		return -1;
	}
	return fdatasync(fd);
}

static int count_syncfs(int fd)
{
	/* a checkpoint makes the journal durable before the backing files */
	if (!last_was_journal)
		order_ok = 0;
	last_was_journal = 0;
	syncfs_calls++;
	(void)fd;
	return 0;
}

static int journal_sync(void *ctx)
{
	(void)ctx;
	journal_syncs++;
	last_was_journal = 1;
	return 0;
}

static struct actlog *open_log(unsigned slots, struct actlog_found *found)
{
	struct actlog_config c = { .dirfd = dirfd_, .backing_fd = dirfd_, .group = group,
				   .slots = slots, .extent_shift = 22,
				   .journal_sync = journal_sync };
	struct actlog *al = NULL;

	CHECK(actlog_open(&c, &al, found) == 0);
	return al;
}

static bool found_has(const struct actlog_found *f, uint32_t image, uint32_t extent)
{
	for (size_t i = 0; i < f->n; i++)
		if (f->v[i].image == image && f->v[i].extent == extent)
			return true;
	return false;
}

static void test_lifecycle(void)
{
	struct actlog_found f;
	struct actlog_hold h;
	struct actlog_stats st;
	struct actlog *al = open_log(128, &f);
	int before;

	CHECK(!f.present);
	actlog_found_free(&f);
	/* recovery: touches are free until begin */
	CHECK(actlog_touch(al, 1, 0, 4096, false, &h) == 0 && h.n == 0);
	CHECK(actlog_begin(al) == 0);

	before = fdatasyncs;
	CHECK(actlog_touch(al, 1, 5 << 22, 4096, false, &h) == 0 && h.n == 1);
	CHECK_MSG(fdatasyncs > before, "the extent must be durable before touch returns");
	actlog_release(al, &h);
	before = fdatasyncs;
	/* again, and the read-ahead extents after it: no log write */
	for (int x = 5; x <= 8; x++) {
		CHECK(actlog_touch(al, 1, (uint64_t)x << 22, 8192, false, &h) == 0);
		actlog_release(al, &h);
	}
	CHECK_MSG(fdatasyncs == before, "%d log writes for resident extents", fdatasyncs - before);
	/* a write across two extents holds both */
	CHECK(actlog_touch(al, 1, (6ULL << 22) - 100, 200, false, &h) == 0 && h.n == 2);
	actlog_release(al, &h);
	/* a range over more than ACTLOG_HOLD_MAX extents takes the whole image */
	CHECK(actlog_touch(al, 2, 0, 100ULL << 22, false, &h) == 0 && h.n == 1);
	actlog_release(al, &h);
	before = fdatasyncs;
	CHECK(actlog_touch(al, 2, 77ULL << 22, 1, false, &h) == 0 && h.n == 1);
	actlog_release(al, &h);
	CHECK(fdatasyncs == before);
	actlog_stats(al, &st);
	CHECK(st.resident == 1 + 3 + 1);
	CHECK(actlog_close(al, true) == 0);

	/* a clean unmount: the next mount knows, and finds the extents */
	al = open_log(128, &f);
	CHECK(f.present && f.clean && f.same_boot);
	CHECK(found_has(&f, 1, 5) && found_has(&f, 1, 8) && found_has(&f, 2, ACTLOG_WHOLE));
	actlog_found_free(&f);
	CHECK(actlog_begin(al) == 0);
	before = fdatasyncs;
	CHECK(actlog_touch(al, 1, 6ULL << 22, 1, false, &h) == 0);
	actlog_release(al, &h);
	CHECK_MSG(fdatasyncs == before, "the last mount's extents stay in the set");
	CHECK(actlog_touch(al, 3, 0, 1, false, &h) == 0);
	actlog_release(al, &h);
	/* a crash in the same boot */
	CHECK(actlog_close(al, false) == 0);
	al = open_log(128, &f);
	CHECK(f.present && !f.clean && f.same_boot && found_has(&f, 3, 0));
	actlog_found_free(&f);
	/* ... and a power loss: another boot */
	CHECK(actlog_close(al, false) == 0);
	boot[0] ^= 0xff;
	al = open_log(128, &f);
	CHECK(f.present && !f.clean && !f.same_boot && f.extent_shift == 22);
	CHECK(found_has(&f, 3, 0) && found_has(&f, 1, 5) && found_has(&f, 2, ACTLOG_WHOLE));
	actlog_found_free(&f);
	CHECK(actlog_begin(al) == 0);
	CHECK(actlog_close(al, true) == 0);
	/* another geometry: the file is made again */
	al = open_log(256, &f);
	CHECK(f.present && f.clean);
	actlog_found_free(&f);
	CHECK(actlog_begin(al) == 0);
	CHECK(actlog_close(al, false) == 0);
	al = open_log(256, &f);
	CHECK(f.present && !f.clean && f.n == 0);
	actlog_found_free(&f);
	CHECK(actlog_close(al, false) == 0);
}

static void test_full_log_checkpoints(void)
{
	struct actlog_found f;
	struct actlog_hold held, h;
	struct actlog_stats st;
	struct actlog *al;

	unlinkat(dirfd_, ACTLOG_FILE, 0);
	al = open_log(128, &f);
	actlog_found_free(&f);
	CHECK(actlog_begin(al) == 0);
	journal_syncs = syncfs_calls = 0;
	/* image 9 extent 1000 stays held throughout */
	CHECK(actlog_touch(al, 9, 1000ULL << 22, 1, false, &held) == 0);
	for (uint64_t x = 0; x < 1000; x += 2) {
		CHECK(actlog_touch(al, 4, x << 22, 1, false, &h) == 0);
		actlog_release(al, &h);
	}
	actlog_stats(al, &st);
	CHECK_MSG(st.checkpoints > 0 && journal_syncs > 0 && syncfs_calls > 0,
		  "%llu checkpoints", (unsigned long long)st.checkpoints);
	/* no cooler runs here: every checkpoint was a writer's, which waited
	 * for it with every slot hot, and the status counts each such wait */
	CHECK_MSG(st.stalls > 0 && st.stalls <= st.checkpoints, "%llu stalls, %llu checkpoints",
		  (unsigned long long)st.stalls, (unsigned long long)st.checkpoints);
	CHECK(st.extent_shift == 22 && st.slots == 128);
	CHECK(order_ok);
	CHECK(st.resident == 128);
	/* the held extent was never given away */
	{
		int before = fdatasyncs;

		CHECK(actlog_touch(al, 9, 1000ULL << 22, 1, false, &h) == 0);
		actlog_release(al, &h);
		CHECK(fdatasyncs == before);
	}
	actlog_release(al, &held);
	/* an extent touched since the last checkpoint is not cold: still there
	 * after a crash */
	CHECK(actlog_touch(al, 9, 5ULL << 22, 1, false, &h) == 0);
	actlog_release(al, &h);
	CHECK(actlog_close(al, false) == 0);
	al = open_log(128, &f);
	CHECK(found_has(&f, 9, 5) && found_has(&f, 9, 1000));
	actlog_found_free(&f);
	CHECK(actlog_close(al, false) == 0);
}

static void test_write_failure(void)
{
	struct actlog_found f;
	struct actlog_hold h;
	struct actlog *al;

	unlinkat(dirfd_, ACTLOG_FILE, 0);
	al = open_log(128, &f);
	actlog_found_free(&f);
	CHECK(actlog_begin(al) == 0);
	fail_fdatasync = 1;
	CHECK(actlog_touch(al, 1, 0, 1, false, &h) == -EIO && h.n == 0);
	fail_fdatasync = 0;
	/* not sticky (issue 12): once the disk works, the same extent goes in,
	 * written again, and is there after a crash */
	CHECK_MSG(actlog_touch(al, 1, 0, 1, false, &h) == 0, "a log write error is not sticky");
	actlog_release(al, &h);
	CHECK(actlog_close(al, false) == 0);
	al = open_log(128, &f);
	CHECK(f.present && !f.clean && found_has(&f, 1, 0));
	actlog_found_free(&f);
	CHECK(actlog_begin(al) == 0);
	CHECK(actlog_close(al, true) == 0);
	al = open_log(128, &f);
	CHECK(f.present && f.clean);
	actlog_found_free(&f);
	CHECK(actlog_close(al, false) == 0);
}

static uint64_t watermark, synced_told;

static uint64_t checkpoint_begins(void *ctx)
{
	(void)ctx;
	return watermark;
}

static void synced(void *ctx, uint64_t lsn)
{
	(void)ctx;
	synced_told = lsn;
}

static struct actlog *open_log_synced(struct actlog_found *found)
{
	struct actlog_config c = { .dirfd = dirfd_, .backing_fd = dirfd_, .group = group,
				   .slots = 128, .extent_shift = 22, .journal_sync = journal_sync,
				   .checkpoint_begins = checkpoint_begins, .synced = synced };
	struct actlog *al = NULL;

	CHECK(actlog_open(&c, &al, found) == 0);
	return al;
}

/* The synced LSN: the watermark a checkpoint began with, in the header once
 * it synced, and what a power loss redoes from; a version 1 header (fsyncs
 * synced the backing files) asks for no redo, a damaged one for all. */
static void test_synced_lsn(void)
{
	struct actlog_found f;
	struct actlog *al;
	uint8_t h[80];
	int fd;

	unlinkat(dirfd_, ACTLOG_FILE, 0);
	watermark = 40;
	al = open_log_synced(&f);
	actlog_found_free(&f);
	CHECK(actlog_begin(al) == 0);
	CHECK_MSG(synced_told == 40, "begin synced %llu", (unsigned long long)synced_told);
	watermark = 95;
	CHECK(actlog_checkpoint(al) == 0);
	CHECK(synced_told == 95);
	/* records past the next checkpoint's start are not covered by it */
	watermark = 120;
	CHECK(actlog_close(al, false) == 0); /* a crash */
	boot[0] ^= 0xff;                     /* ... and a power loss */
	al = open_log_synced(&f);
	CHECK_MSG(f.present && !f.clean && !f.same_boot && f.synced_lsn == 95,
		  "found synced LSN %llu", (unsigned long long)f.synced_lsn);
	actlog_found_free(&f);
	CHECK(actlog_close(al, false) == 0);

	/* the header as version 1 wrote it: checked at 64 */
	fd = openat(dirfd_, ACTLOG_FILE, O_RDWR);
	CHECK(fd >= 0 && pread(fd, h, sizeof h, 0) == (ssize_t)sizeof h);
	h[8] = 1;
	{
		uint64_t check = XXH3_64bits(h, 64);

		for (int i = 0; i < 8; i++)
			h[64 + i] = (uint8_t)(check >> (8 * i));
	}
	CHECK(pwrite(fd, h, sizeof h, 0) == (ssize_t)sizeof h);
	al = open_log_synced(&f);
	CHECK_MSG(f.present && !f.clean && f.synced_lsn == UINT64_MAX,
		  "version 1: synced LSN %llu", (unsigned long long)f.synced_lsn);
	actlog_found_free(&f);
	CHECK(actlog_close(al, false) == 0);
	/* damaged: redo everything */
	h[30] ^= 1;
	CHECK(pwrite(fd, h, sizeof h, 0) == (ssize_t)sizeof h);
	close(fd);
	al = open_log_synced(&f);
	CHECK(f.present && !f.clean && f.synced_lsn == 0);
	actlog_found_free(&f);
	CHECK(actlog_close(al, false) == 0);
}

int main(void)
{
	char cmd[300];

	CHECK(mkdtemp(dir) != NULL);
	dirfd_ = open(dir, O_RDONLY | O_DIRECTORY);
	aimfs_io.boot_id_fn = fake_boot;
	aimfs_io.fdatasync_fn = count_fdatasync;
	aimfs_io.syncfs_fn = count_syncfs;
	test_lifecycle();
	test_full_log_checkpoints();
	test_write_failure();
	test_synced_lsn();
	close(dirfd_);
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	return check_done("test_actlog");
}
