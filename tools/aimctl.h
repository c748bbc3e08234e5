/*
 * aimctl.h — aimctl's private header: the subcommands that live outside
 * aimctl.c, one file each, and the pieces several of them share (the
 * replay engine of `replay` and `check`, the HTTP client of the commands
 * that talk to a daemon, the base and scratch copy of `check`, and the
 * examination of one image).  Each command takes the arguments after its
 * name and returns the exit status (0 success, 1 failure with the reason on
 * stderr, 2 usage).  Nothing here is thread-safe: aimctl is one thread.
 */
#ifndef AIM_AIMCTL_H
#define AIM_AIMCTL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "apply.h"
#include "format.h"

#define EXIT_USAGE 2
#define DEFAULT_STATUS_ADDR "127.0.0.1:9380"

int cmd_status(int argc, char **argv);
int cmd_ship(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_replay(int argc, char **argv);
int cmd_mark(int argc, char **argv);
int cmd_marks(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_restore(int argc, char **argv);
int cmd_hold(int argc, char **argv);
int cmd_release(int argc, char **argv);
int cmd_promote(int argc, char **argv);
int cmd_resume(int argc, char **argv);

/* aimctl.c: reports a usage error (and the usage) and returns EXIT_USAGE. */
int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* aimctl.c: logs why a segment was refused (the byte offset for format
 * problems). */
void report_seg_err(const char *path, int r, const struct seg_err *e);

/* ---- replay.c: the replay engine of `replay` and `check` ---- */

struct seg_file {
	char *path;
	struct seg_view *view;
};

/* The segments a replay reads, validated, in order. */
struct series {
	struct seg_file *files;
	size_t n;
};

/*
 * Collects the segments that args name (segment files, or directories
 * whose sealed segment files are taken; ".open" files are not), validates
 * each whole, sorts them by number and, with one_run, checks that they form
 * one run: one group, each segment starting at the LSN after the previous
 * one's last (a gap or an overlap is refused).  Returns 0, or -errno after
 * logging the first problem (s is then empty).
 */
int series_open(struct series *s, char *const *args, int nargs, bool one_run);
void series_close(struct series *s);
uint64_t series_first_lsn(const struct series *s);
uint64_t series_last_lsn(const struct series *s);
const uint8_t *series_group(const struct series *s);

/* The record a point names, after which a replay stops. */
struct point {
	uint64_t lsn;
	uint64_t segment;
	uint64_t time_ns;
	uint8_t type;
	char label[SEG_MARK_MAX + 1]; /* a MARK's name */
	bool after_end;               /* a TIME after the series' last record */
	uint64_t next_time_ns;        /* a TIME: the first record after it (0: none) */
};

/*
 * Finds where spec lies in s: the record of that LSN, the MARK of that
 * name, or for a TIME the last FLUSH (barrier) journaled at or before it
 * (records after the first one journaled later do not count, so a clock
 * that stepped back cannot pull the point past that record).  Returns 0,
 * or -ENOENT (no such record, no barrier by that time) or -EINVAL (a mark
 * name that two MARKs carry) after logging why.
 */
int series_find(struct series *s, const struct point_spec *spec, struct point *out);

/* "LSN 42 (FLUSH, segment 3, 2024-05-01T12:00:00.123Z)" or with the
 * mark's name; returns buf. */
const char *point_describe(const struct point *p, char *buf, size_t len);

/*
 * Applies the records of s with after < LSN <= until (until 0: all), in
 * order, calling fn (NULL for none) after each one as the applier's record
 * callback; fn may return APPLY_STOP to stop there.  The targets are
 * durable up to where it stopped.  Returns 0, or -errno after logging the
 * segment and the reason; *durable is then the LSN the targets are durable
 * up to (for --after-lsn).
 */
int series_apply(struct series *s, struct applier *a, uint64_t after, uint64_t until,
		 apply_record_fn fn, void *ctx, uint64_t *durable);

/* ---- daemon_http.c: asking a running daemon ---- */

/* The URL of path on a daemon's status listener, from an operator's
 * ADDR:PORT or URL (a URL with a path is taken as it is).  Returns buf. */
const char *aimctl_status_url(const char *arg, const char *path, char *buf, size_t len);
/* GET url (POST with an empty body if post).  Returns 0 with the HTTP
 * status and the body (malloc'd, NUL-terminated), or -1 after logging why
 * (as "cmd: url: reason"). */
int aimctl_http(const char *cmd, const char *url, bool post, long timeout_s, long *code,
		char **body, size_t *len);
/* The same, parsed as JSON: a new reference, or NULL after logging why. */
json_t *aimctl_http_json(const char *cmd, const char *url, bool post, long timeout_s, long *code);
/* Percent-encodes s as one segment of a URL's path into buf (len bytes);
 * false if it does not fit. */
bool aimctl_url_escape(const char *s, char *buf, size_t len);

/* ---- scratch.c: the base of a check, and its scratch copy ---- */

/* A directory that records which group and LSN a base holds (written by
 * `check --save`). */
#define BASE_STAMP ".aim-base"

/*
 * Checks that directory base can start s: its stamp (if any) names s's
 * group and the LSN before s's first; a copy of a backing directory with
 * its journal (".aimfs") is of s's group; every regular file is an image of
 * the first segment's table, and every image of that table is there (unless
 * the first record is a SYNC_BEGIN, which brings them).  Returns 0, or
 * -EINVAL after logging the first mismatch.  Reads base only.
 */
int base_match(const char *base, const struct series *s);

/*
 * Makes a new directory in parent (NULL: next to base, or /var/tmp if that
 * is not writable) and copies base's tree into it, image files by reflink
 * where the file system can and as sparse copies otherwise.  *dir is the
 * absolute path (free it); *how says "reflink", "sparse copy" or "reflink
 * and sparse copy".  Returns 0 or -errno after logging (and removing what
 * it made).
 */
int scratch_make(const char *base, const char *parent, char **dir, const char **how);
/* Removes a scratch directory and everything in it. */
void scratch_remove(const char *dir);
/* Writes dir/BASE_STAMP: dir holds group's images as of LSN lsn, inside
 * the resynchronisation whose SYNC_BEGIN is LSN resync_from (0: none, the
 * images are a consistent copy). */
int stamp_write(const char *dir, const uint8_t group[16], uint64_t lsn, uint64_t resync_from);
/* Reads base's stamp: 1 if there is none, 0 with group, lsn and (if not
 * NULL) resync_from, or -EINVAL after logging why. */
int stamp_read(const char *base, uint8_t group[16], uint64_t *lsn, uint64_t *resync_from);

/* ---- imgcheck.c: one image at one point ---- */

enum img_state {
	IMG_OK = 0,     /* its check passed (or no check applies) */
	IMG_FAILED,     /* its check failed */
	IMG_ABSENT,     /* no file yet (a data record creates it) */
	IMG_EMPTY,      /* 0 bytes: nothing to check */
};

struct img_result {
	enum img_state state;
	char checker[16];   /* "qemu-img", "fsck" or "-" */
	int exit_code;      /* the checker's, -1 if none ran */
	uint64_t size;
	uint64_t hash;      /* XXH3-64 of the bytes */
	char note[64];      /* e.g. "leaked clusters" */
	char *output;       /* the checker's output when it failed (malloc'd) */
};

/*
 * Examines image name, the file at path: hashes it, then checks it -- with
 * `qemu-img check` if it is a qcow2 image (by its magic, or a .qcow2 name),
 * else with fsck_cmd (NULL: no check), a shell command in which "{}" stands
 * for the quoted path (appended when absent), run with AIM_IMAGE (the
 * path), AIM_IMAGE_NAME and AIM_LSN in its environment.  A check must not
 * change the image: one that does is a fatal error (-EPERM), because the
 * replay is no longer the stream's.  Returns 0 with *r filled (free
 * r->output), or -errno after logging.
 */
int img_examine(const char *name, const char *path, const char *fsck_cmd, uint64_t lsn,
		bool run_check, struct img_result *r);
void img_result_clear(struct img_result *r);

#endif
