/*
 * apply_i.h — the applier's private declarations, shared by apply.c (the
 * records) and target.c (opening targets confined beneath the target
 * directory, and the cache of open targets).  Not part of the interface.
 *
 * The I/O seam for tests: every system call that
 * touches target data goes through this table, so that a unit test can fail
 * the Nth fsync, refuse fallocate to exercise the write-zeros fallbacks,
 * fail the read of a HASH comparison, or make a regular file pass for a
 * block device (the block-device rules are otherwise testable only with
 * loop devices).
 *
 * Not part of the remote's interface.  The table is process-global and not
 * locked: a test changes it only while no applier runs, and restores
 * apply_io_default afterwards.
 */
#ifndef AIM_APPLY_I_H
#define AIM_APPLY_I_H

#include "apply.h"
#include "fileio.h"

#include <linux/openat2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>

#define CACHE_MAX 64
#define RESOLVE_SAFE (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
#define NEW_DIR_MODE 0755  /* parents created on demand (before umask) */
#define NEW_FILE_MODE 0600 /* images first seen in a data record: VM disks are private */
/* CREATE and MKDIR modes: set-id bits are dropped, because a hostile
 * segment must not be able to plant a set-uid file owned by the applier. */
#define FILE_MODE_MASK 0777
#define DIR_MODE_MASK 01777
#define ZERO_BUF 65536

struct apply_io {
	ssize_t (*pwrite_fn)(int fd, const void *buf, size_t n, off_t off);
	/* Runs of WRITEs to consecutive offsets (struct write_run). */
	ssize_t (*pwritev_fn)(int fd, const struct iovec *iov, int iovcnt, off_t off);
	int (*fallocate_fn)(int fd, int mode, off_t off, off_t len);
	int (*ftruncate_fn)(int fd, off_t len);
	int (*fsync_fn)(int fd);
	int (*fstat_fn)(int fd, struct stat *st);
	/* BLKGETSIZE64, BLKSSZGET and BLKZEROOUT only. */
	int (*ioctl_fn)(int fd, unsigned long req, void *arg);
	/* HASH records read the targets' bytes with it. */
	ssize_t (*pread_fn)(int fd, void *buf, size_t n, off_t off);
};

extern struct apply_io apply_io;
extern const struct apply_io apply_io_default;

/* ---- the applier's state (apply.c and target.c) ---- */

struct mapping {
	char *image;
	char *path;
};

/* One open target, cached by image name. */
struct target {
	char *name;        /* image name, the key; NULL when the slot is free */
	char *path;        /* what messages call it: the mapped path, or DIR/NAME */
	int fd;
	bool mapped;
	bool blockdev;
	bool dirty;        /* changed since the last barrier */
	uint64_t dev_size; /* block devices only */
	uint64_t used;     /* LRU clock */
};

/* A file WRITE payloads are read from (applier_set_source). */
struct payload_source {
	int fd;              /* -1: payloads are copied from the view */
	const uint8_t *base; /* where the view shows the file's byte 0 */
	struct fileio_window win; /* SOURCE_CHUNK bytes, allocated on first use */
};

/* Most WRITEs one pwritev carries: a 256 KiB source window holds about
 * sixty 4 KiB payloads with their headers. */
#define RUN_IOV_MAX 64

/*
 * WRITE records to consecutive offsets of one target, waiting to go out
 * as one pwritev: a guest's sequential writes then cost one system call
 * per window of the segment file instead of one each.  The buffers point
 * into the source's window, so the run is written before the window is
 * refilled, before any other record, target or barrier, and before
 * applier_apply returns (on its errors too, as far as it can).  Only
 * while payloads are read from a source file and no record callback
 * examines the targets.
 */
struct write_run {
	int n;             /* buffers held; 0: no run */
	int fd;            /* the target's */
	const char *image; /* the target's, for messages */
	const char *path;
	uint64_t offset;   /* where the run starts in the target */
	uint64_t length;
	uint64_t first_lsn, last_lsn;
	struct iovec iov[RUN_IOV_MAX];
};

struct applier {
	int dirfd;
	char *dir; /* target_dir as given, for messages */
	struct mapping *maps;
	size_t nmaps;
	struct target cache[CACHE_MAX];
	uint64_t clock;
	apply_durable_fn durable;
	void *durable_ctx;
	apply_event_fn event;
	void *event_ctx;
	apply_record_fn record;
	void *record_ctx;
	struct apply_stats stats;
	uint8_t *hbuf;     /* a block of a HASH comparison */
	size_t hbuf_len;
	struct payload_source src; /* applier_set_source */
	bool record_reads;         /* applier_record_cb_reads_targets */
	struct write_run run;
	/* state of the current applier_apply */
	uint64_t segment;
	bool pending;      /* records applied since the last barrier */
	bool reported;     /* a barrier was reported during this apply */
	uint64_t reported_lsn;
	uint64_t prev_time; /* time_ns of the record before the current one */
};


/* Fills err with a reason and returns rc (a -errno), for one-line error
 * paths. */
int apply_fail(char *err, size_t errlen, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
int apply_fsync_fd(int fd);

/* ---- target.c: paths beneath the target directory, the target cache ---- */

/* Why an openat2 beneath the target directory failed, for a person. */
const char *apply_open_reason(int rc);
/* openat2 confined beneath dirfd.  Returns an fd or -errno. */
int apply_open_beneath(int dirfd, const char *path, int flags, mode_t mode);
/* Opens directory rel beneath the target directory (creating missing
 * components, each parent fsynced, when create is set).  Returns an fd the
 * caller closes, or -errno with err set. */
int apply_open_dir(struct applier *a, const char *rel, bool create, char *err, size_t errlen);
/* Opens the directory holding name and points *leaf at its last
 * component.  Returns an fd the caller closes, or -errno with err set. */
int apply_open_parent(struct applier *a, const char *name, bool create, const char **leaf,
		      char *err, size_t errlen);
/* The --map of image, or of the first image under directory dir/; NULL if none. */
const struct mapping *apply_find_map(const struct applier *a, const char *image);
const struct mapping *apply_find_map_under(const struct applier *a, const char *dir);
/* Closes a cached target, fsyncing it first if dirty.  0 or -errno with err set. */
int target_close(struct target *t, char *err, size_t errlen);
/* Drops the cache entry for name (and with under every entry below name/). */
int target_drop(struct applier *a, const char *name, bool under, char *err, size_t errlen);
/* Finds or opens (creating with mode) the target of image name. */
int target_get(struct applier *a, const char *name, mode_t mode, struct target **out,
	       char *err, size_t errlen);
/* As target_get, but never creates: 1 when the target does not exist. */
int target_existing(struct applier *a, const char *name, struct target **out, char *err,
		    size_t errlen);

#endif
