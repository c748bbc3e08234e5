/*
 * options.h — aimfs's command line: the -o options of the contract
 * (journal=, dest=, config=, status=, segment_size=, segment_age=,
 * journal_max=, overflow=) parsed and checked, with everything else left
 * for libfuse.  A bad value is refused here with a reason, before anything
 * is mounted or created.
 */
#ifndef AIM_OPTIONS_H
#define AIM_OPTIONS_H

#include <fuse_opt.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "actlog.h"
#include "transport.h"

#define DEFAULT_SEGMENT_SIZE (64ULL << 20)
#define DEFAULT_SEGMENT_AGE_NS 2000000000ULL
#define DEFAULT_SEGMENT_IDLE_NS 200000000ULL
#define DEFAULT_SEGMENT_EAGER_NS 100000000ULL
#define DEFAULT_JOURNAL_MAX (8ULL << 30)
#define DEFAULT_STATUS "127.0.0.1:9380"
#define DEFAULT_JOURNAL_NAME ".aimfs"

struct aimfs_options {
	char *backing_arg;    /* as given */
	char *mount_arg;
	char *journal_arg;    /* NULL: BACKING_DIR/.aimfs */
	char *status;         /* "off" disables */
	char *config;
	char **dest_urls;     /* -o dest=URL, in order */
	size_t ndest_urls;
	struct dest_config *dests; /* all destinations, checked */
	size_t ndests;
	char *segment_size_s, *segment_age_s, *segment_idle_s, *journal_max_s, *overflow_s, *retain_s;
	char *verify_every_s;
	uint64_t verify_every_ns;
	char *al_extents_s, *al_extent_size_s;
	unsigned al_extents;          /* activity log slots */
	unsigned al_extent_shift;     /* log2 of its extent size */
	uint64_t segment_size;
	uint64_t segment_age_ns;
	uint64_t segment_idle_ns;
	uint64_t segment_eager_ns;
	char *segment_eager_s;
	uint64_t journal_max;
	uint64_t retain_ns;
	bool overflow_block;
	char *cache_s;
	bool strict_cache;            /* cache=strict (default): no FUSE writeback cache */
	char *backing_sync_s;
	bool backing_sync_each_fsync; /* backing_sync=fsync (default checkpoint) */
	char *io_uring_s;
	bool io_uring;                /* io_uring=on: FUSE requests through io_uring (uring.h) */
	int show_help;
	int show_version;
};

/* Parses argv (and the config file it names) into opts, leaving libfuse's
 * options (and the mountpoint) in args; checks every destination.  The
 * command line wins over the config file.  Returns 0; -EINVAL for a usage
 * error (a bad option, value, argument or config entry); another negative
 * errno for a failure (an unreadable config, CA or token file) — after
 * printing why to stderr. */
int options_parse(struct fuse_args *args, struct aimfs_options *opts);
void options_free(struct aimfs_options *opts);
void options_usage(const char *prog);

#endif
