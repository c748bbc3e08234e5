/*
 * options.c — parsing and checking of aimfs's own -o options with
 * fuse_opt, so that they mix freely with libfuse's (allow_other, -d ...),
 * and of the configuration file (aimfs.conf(5)), whose [aimfs] section
 * takes every -o option by its name plus backing_dir and mountpoint, so
 * that one file can describe a whole mount (aimfs@.service).
 */
#include "options.h"
#include "log.h"
#include "parse.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { KEY_HELP, KEY_VERSION, KEY_DEST };

#define OPT(t, f) { t, offsetof(struct aimfs_options, f), 1 }

static const struct fuse_opt aimfs_opts[] = {
	OPT("journal=%s", journal_arg),
	OPT("status=%s", status),
	OPT("config=%s", config),
	OPT("segment_size=%s", segment_size_s),
	OPT("segment_age=%s", segment_age_s),
	OPT("segment_idle=%s", segment_idle_s),
	OPT("segment_eager=%s", segment_eager_s),
	OPT("journal_max=%s", journal_max_s),
	OPT("overflow=%s", overflow_s),
	OPT("retain=%s", retain_s),
	OPT("verify_every=%s", verify_every_s),
	OPT("al_extents=%s", al_extents_s),
	OPT("al_extent_size=%s", al_extent_size_s),
	OPT("cache=%s", cache_s),
	OPT("backing_sync=%s", backing_sync_s),
	OPT("io_uring=%s", io_uring_s),
	FUSE_OPT_KEY("dest=", KEY_DEST),
	FUSE_OPT_KEY("-h", KEY_HELP),
	FUSE_OPT_KEY("--help", KEY_HELP),
	FUSE_OPT_KEY("-V", KEY_VERSION),
	FUSE_OPT_KEY("--version", KEY_VERSION),
	FUSE_OPT_END
};

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct aimfs_options *o = data;
	char **nd;

	(void)outargs;
	switch (key) {
	case KEY_HELP:
		o->show_help = 1;
		return 0;
	case KEY_VERSION:
		o->show_version = 1;
		return 0;
	case KEY_DEST:
		nd = realloc(o->dest_urls, (o->ndest_urls + 1) * sizeof *nd);
		if (!nd)
			return -1;
		o->dest_urls = nd;
		o->dest_urls[o->ndest_urls] = strdup(arg + strlen("dest="));
		return o->dest_urls[o->ndest_urls++] ? 0 : -1;
	case FUSE_OPT_KEY_NONOPT:
		if (!o->backing_arg) {
			o->backing_arg = strdup(arg);
			return 0;
		}
		if (!o->mount_arg) {
			o->mount_arg = strdup(arg);
			return 1; /* libfuse takes the mountpoint too */
		}
		log_error("unexpected argument \"%s\"", arg);
		return -1;
	default:
		return 1;
	}
}

void options_usage(const char *prog)
{
	printf("usage: %s [-f] [-o OPT[,OPT...]] BACKING_DIR MOUNTPOINT\n"
	       "       %s [-f] -o config=FILE[,OPT...]   (FILE names backing_dir and mountpoint)\n"
	       "\n"
	       "Mirrors the images in BACKING_DIR through MOUNTPOINT, journaling every write.\n"
	       "Unmount with: fusermount3 -u MOUNTPOINT\n"
	       "\n"
	       "aimfs options:\n"
	       "  -o journal=DIR         journal directory (default BACKING_DIR/%s)\n"
	       "  -o dest=URL            a destination (repeatable)\n"
	       "  -o config=FILE         INI configuration, see aimfs.conf(5)\n"
	       "  -o status=ADDR:PORT    status listener (default %s; \"off\" disables)\n"
	       "  -o segment_size=SIZE   seal a segment at this size (default 64M)\n"
	       "  -o segment_age=TIME    ... or this long after its first record (default 2s)\n"
	       "  -o segment_idle=TIME   ... or when writes pause this long (default 200ms; 0: never)\n"
	       "  -o segment_eager=TIME  ... or when this old if the destinations have shipped\n"
	       "                         everything before it (default 100ms; 0: never)\n"
	       "  -o journal_max=SIZE    journal size limit (default 8G)\n"
	       "  -o overflow=track|block  at the limit: track a lagging destination's changes\n"
	       "                         for a resync (default), or make writes wait\n"
	       "  -o retain=DURATION     keep acknowledged segments this long (default 0)\n"
	       "  -o verify_every=DURATION  compare every image with every replica this often\n"
	       "  -o al_extents=N        activity log: extents that may be hot at once\n"
	       "                         (default 1024; compared after a power loss)\n"
	       "  -o al_extent_size=SIZE ... and their size, a power of two (default 4M)\n"
	       "  -o cache=strict|writeback  buffered writes: each sent to aimfs as it is\n"
	       "                         written (default), or coalesced in the kernel's page\n"
	       "                         cache until writeback, fsync or close\n"
	       "  -o backing_sync=checkpoint|fsync  an fsync makes the journal durable and\n"
	       "                         the backing files follow at the next checkpoint, within\n"
	       "                         a second (default), or it syncs the backing file too\n"
	       "  -o io_uring=on|off     FUSE requests through io_uring (Linux 6.14+, fuse\n"
	       "                         module parameter enable_uring=Y; default off)\n"
	       "  -f                     stay in the foreground (as aimfs@.service runs it)\n"
	       "  -d                     FUSE debug output (implies -f)\n"
	       "  -h, --help             this help\n"
	       "  -V, --version          the version\n"
	       "  -o allow_other, ...    standard FUSE options (below)\n"
	       "\n"
	       "Exit status: 0 after a clean unmount, 1 on failure, 2 for a usage error.\n",
	       prog, prog, DEFAULT_JOURNAL_NAME, DEFAULT_STATUS);
}

static int check_values(struct aimfs_options *o)
{
	uint64_t v;

	o->segment_size = DEFAULT_SEGMENT_SIZE;
	o->segment_age_ns = DEFAULT_SEGMENT_AGE_NS;
	o->segment_idle_ns = DEFAULT_SEGMENT_IDLE_NS;
	o->segment_eager_ns = DEFAULT_SEGMENT_EAGER_NS;
	o->journal_max = DEFAULT_JOURNAL_MAX;
	if (o->segment_size_s) {
		if (parse_size(o->segment_size_s, &v) < 0 || v < 4096 || v > (1ULL << 30)) {
			log_error("segment_size=%s: must be a size from 4K to 1G (e.g. 64M)",
				  o->segment_size_s);
			return -1;
		}
		o->segment_size = v;
	}
	if (o->segment_age_s) {
		if (parse_duration(o->segment_age_s, &v) < 0 || v < 1000000ULL ||
		    v > 3600000000000ULL) {
			log_error("segment_age=%s: must be a duration from 1ms to 1h (e.g. 2s, 500ms)",
				  o->segment_age_s);
			return -1;
		}
		o->segment_age_ns = v;
	}
	if (o->segment_idle_s) {
		if (parse_duration(o->segment_idle_s, &v) < 0 || v > 3600000000000ULL) {
			log_error("segment_idle=%s: must be a duration up to 1h (e.g. 200ms; 0 never"
				  " seals for idleness)", o->segment_idle_s);
			return -1;
		}
		o->segment_idle_ns = v;
	}
	if (o->segment_eager_s) {
		if (parse_duration(o->segment_eager_s, &v) < 0 || v > 3600000000000ULL) {
			log_error("segment_eager=%s: must be a duration up to 1h (e.g. 100ms; 0 never"
				  " seals for an idle link)", o->segment_eager_s);
			return -1;
		}
		o->segment_eager_ns = v;
	}
	if (o->journal_max_s) {
		if (parse_size(o->journal_max_s, &v) < 0 || v < (1ULL << 20)) {
			log_error("journal_max=%s: must be a size of at least 1M (e.g. 8G)",
				  o->journal_max_s);
			return -1;
		}
		o->journal_max = v;
	}
	/* strict by default: under the writeback cache a full backing disk
	 * surfaces at fsync, after the page cache dropped the writes (see
	 * README, Guarantees) */
	o->strict_cache = true;
	if (o->cache_s) {
		if (strcmp(o->cache_s, "strict") == 0) {
			o->strict_cache = true;
		} else if (strcmp(o->cache_s, "writeback") == 0) {
			o->strict_cache = false;
		} else {
			log_error("cache=%s: must be \"writeback\" or \"strict\"", o->cache_s);
			return -1;
		}
	}
	o->backing_sync_each_fsync = false;
	if (o->backing_sync_s) {
		if (strcmp(o->backing_sync_s, "fsync") == 0) {
			o->backing_sync_each_fsync = true;
		} else if (strcmp(o->backing_sync_s, "checkpoint") != 0) {
			log_error("backing_sync=%s: must be \"checkpoint\" or \"fsync\"",
				  o->backing_sync_s);
			return -1;
		}
	}
	o->io_uring = false;
	if (o->io_uring_s) {
		if (strcmp(o->io_uring_s, "on") == 0) {
			o->io_uring = true;
		} else if (strcmp(o->io_uring_s, "off") != 0) {
			log_error("io_uring=%s: must be \"on\" or \"off\"", o->io_uring_s);
			return -1;
		}
	}
	/* track: a full journal turns a lagging destination's changes into
	 * dirty extents (guests never wait); block: writes wait for space. */
	o->overflow_block = false;
	if (o->overflow_s) {
		if (strcmp(o->overflow_s, "block") == 0) {
			o->overflow_block = true;
		} else if (strcmp(o->overflow_s, "track") != 0) {
			log_error("overflow=%s: must be \"track\" or \"block\"", o->overflow_s);
			return -1;
		}
	}
	if (o->verify_every_s) {
		if (parse_duration(o->verify_every_s, &v) < 0 || (v && v < 10000000000ULL)) {
			log_error("verify_every=%s: must be a duration of at least 10s (e.g. 6h), or 0",
				  o->verify_every_s);
			return -1;
		}
		o->verify_every_ns = v;
	}
	if (o->retain_s) {
		if (parse_duration(o->retain_s, &v) < 0) {
			log_error("retain=%s: must be a duration (e.g. 0, 30m, 24h)", o->retain_s);
			return -1;
		}
		o->retain_ns = v;
	}
	o->al_extents = ACTLOG_DEFAULT_SLOTS;
	o->al_extent_shift = ACTLOG_DEFAULT_SHIFT;
	if (o->al_extents_s) {
		uint64_t n;

		if (parse_uint(o->al_extents_s, &n) < 0 || n < ACTLOG_MIN_SLOTS || n > 65536) {
			log_error("al_extents=%s: must be a number from %d to 65536", o->al_extents_s,
				  ACTLOG_MIN_SLOTS);
			return -1;
		}
		o->al_extents = (unsigned)n;
	}
	if (o->al_extent_size_s) {
		if (parse_size(o->al_extent_size_s, &v) < 0 || v < (64ULL << 10) ||
		    v > (1ULL << 30) || (v & (v - 1))) {
			log_error("al_extent_size=%s: must be a power of two from 64K to 1G (e.g. 4M)",
				  o->al_extent_size_s);
			return -1;
		}
		o->al_extent_shift = (unsigned)__builtin_ctzll(v);
	}
	if (o->status && strcmp(o->status, "off") != 0) {
		char host[256];
		uint16_t port;

		if (parse_hostport(o->status, host, sizeof host, &port) < 0) {
			log_error("status=%s: must be ADDR:PORT (e.g. 127.0.0.1:9380) or \"off\"",
				  o->status);
			return -1;
		}
	}
	return 0;
}

/* [aimfs] keys fill only what the command line left unset. */
static int set_aimfs_key(struct aimfs_options *o, const char *key, const char *value)
{
	static const struct { const char *key; size_t off; } keys[] = {
		{ "journal", offsetof(struct aimfs_options, journal_arg) },
		{ "status", offsetof(struct aimfs_options, status) },
		{ "segment_size", offsetof(struct aimfs_options, segment_size_s) },
		{ "segment_age", offsetof(struct aimfs_options, segment_age_s) },
		{ "segment_idle", offsetof(struct aimfs_options, segment_idle_s) },
		{ "segment_eager", offsetof(struct aimfs_options, segment_eager_s) },
		{ "journal_max", offsetof(struct aimfs_options, journal_max_s) },
		{ "overflow", offsetof(struct aimfs_options, overflow_s) },
		{ "retain", offsetof(struct aimfs_options, retain_s) },
		{ "verify_every", offsetof(struct aimfs_options, verify_every_s) },
		{ "backing_dir", offsetof(struct aimfs_options, backing_arg) },
		{ "mountpoint", offsetof(struct aimfs_options, mount_arg) },
		{ "al_extents", offsetof(struct aimfs_options, al_extents_s) },
		{ "al_extent_size", offsetof(struct aimfs_options, al_extent_size_s) },
		{ "cache", offsetof(struct aimfs_options, cache_s) },
		{ "backing_sync", offsetof(struct aimfs_options, backing_sync_s) },
		{ "io_uring", offsetof(struct aimfs_options, io_uring_s) },
	};

	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
		char **field = (char **)((char *)o + keys[i].off);

		if (strcmp(key, keys[i].key) != 0)
			continue;
		if (!*field)
			*field = strdup(value);
		return 0;
	}
	if (strcmp(key, "dest") == 0) {
		char **nd = realloc(o->dest_urls, (o->ndest_urls + 1) * sizeof *nd);

		if (!nd)
			return -1;
		o->dest_urls = nd;
		o->dest_urls[o->ndest_urls] = strdup(value);
		return o->dest_urls[o->ndest_urls++] ? 0 : -1;
	}
	log_error("config %s: [aimfs] has no key \"%s\" (known: backing_dir, mountpoint, journal,"
		  " status, dest, segment_size, segment_age, segment_idle, segment_eager, journal_max, overflow, retain,"
		  " verify_every, al_extents, al_extent_size, cache, backing_sync, io_uring)", o->config, key);
	return -1;
}

static int other_section(void *ctx, const char *section, const char *key, const char *value)
{
	struct aimfs_options *o = ctx;

	if (strcmp(section, "aimfs") == 0)
		return set_aimfs_key(o, key, value);
	log_error("config %s: unknown section [%s] (expected [aimfs] or [destination NAME])",
		  o->config, section);
	return -1;
}

/* A file that cannot be read is a failure (1); one that says something
 * wrong is a usage error (2), as a bad option is. */
static int load_config(struct aimfs_options *o)
{
	if (access(o->config, R_OK) < 0) {
		int e = errno;

		log_error("config %s: %m", o->config);
		return -e;
	}
	return dest_config_load(o->config, other_section, o, &o->dests, &o->ndests) < 0 ? -EINVAL
											: 0;
}

static int gather_dests(struct aimfs_options *o)
{
	for (size_t i = 0; i < o->ndest_urls; i++) {
		struct dest_config *d;

		if (dest_config_find(&o->dests, &o->ndests, o->dest_urls[i], false)) {
			log_error("dest=%s is given twice", o->dest_urls[i]);
			return -EINVAL;
		}
		d = dest_config_find(&o->dests, &o->ndests, o->dest_urls[i], true);
		if (!d)
			return -ENOMEM;
		if (dest_config_set(d, "url", o->dest_urls[i]) < 0)
			return -EINVAL;
	}
	/* A bad value is a usage error (-EINVAL); an unreadable CA or token
	 * file is a failure (-EIO). */
	for (size_t i = 0; i < o->ndests; i++) {
		int r = dest_config_check(&o->dests[i]);

		if (r < 0)
			return r == -EINVAL ? r : -EIO;
	}
	return dest_configs_distinct(o->dests, o->ndests);
}

int options_parse(struct fuse_args *args, struct aimfs_options *o)
{
	int r;

	memset(o, 0, sizeof *o);
	if (fuse_opt_parse(args, o, aimfs_opts, opt_proc) < 0)
		return -EINVAL;
	if (o->show_help || o->show_version)
		return 0;
	/* The config file may name the directories (the command line wins). */
	if (o->config) {
		r = load_config(o);
		if (r < 0)
			return r;
	}
	if (!o->backing_arg || !o->mount_arg) {
		log_error("missing %s (on the command line or as %s in the config file's [aimfs])",
			  o->backing_arg ? "MOUNTPOINT" : "BACKING_DIR and MOUNTPOINT",
			  o->backing_arg ? "mountpoint" : "backing_dir and mountpoint");
		return -EINVAL;
	}
	if (!o->status)
		o->status = strdup(DEFAULT_STATUS);
	if (!o->status)
		return -ENOMEM;
	if (check_values(o) < 0)
		return -EINVAL;
	return gather_dests(o);
}

void options_free(struct aimfs_options *o)
{
	free(o->backing_arg);
	free(o->mount_arg);
	free(o->journal_arg);
	free(o->status);
	free(o->config);
	for (size_t i = 0; i < o->ndest_urls; i++)
		free(o->dest_urls[i]);
	free(o->dest_urls);
	for (size_t i = 0; i < o->ndests; i++)
		dest_config_free(&o->dests[i]);
	free(o->dests);
	free(o->retain_s);
	free(o->verify_every_s);
	free(o->segment_size_s);
	free(o->segment_age_s);
	free(o->segment_idle_s);
	free(o->segment_eager_s);
	free(o->journal_max_s);
	free(o->overflow_s);
	free(o->al_extents_s);
	free(o->al_extent_size_s);
	free(o->cache_s);
	free(o->backing_sync_s);
	free(o->io_uring_s);
}
