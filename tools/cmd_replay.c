/*
 * cmd_replay.c — `aimctl replay`: applies segments offline with the very
 * applier aim-remote uses, after validating all of them as one run, to
 * their end or until a point (an LSN, a time, a mark), where it stops
 * exactly after that record with the targets durable.
 */
#include "aimctl.h"
#include "clock.h"
#include "log.h"
#include "parse.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int on_durable(void *ctx, const struct apply_progress *p)
{
	char tbuf[64];

	(void)ctx;
	log_debug("durable: segment %" PRIu64 ", LSN %" PRIu64 " (source time %s)", p->segment,
		  p->lsn, clock_iso8601(p->time_ns, 9, tbuf, sizeof tbuf));
	return 0;
}

/* With -v, what SYNC_BEGIN, SYNC_END and HASH records found; ctx is the
 * LSN of an unfinished resync's SYNC_BEGIN (0 if none). */
static int on_event(void *ctx, const struct apply_event *e)
{
	uint64_t *sync_lsn = ctx;

	switch (e->type) {
	case APPLY_EV_SYNC_BEGIN:
		log_debug("SYNC_BEGIN: segment %" PRIu64 ", LSN %" PRIu64 ": resync of destination %" PRIu32
			  " begins; the targets are not a consistent copy until it ends",
			  e->segment, e->lsn, e->dest);
		if (!*sync_lsn)
			*sync_lsn = e->lsn;
		break;
	case APPLY_EV_SYNC_END:
		log_debug("SYNC_END: segment %" PRIu64 ", LSN %" PRIu64 ": resync of destination %" PRIu32
			  " ends", e->segment, e->lsn, e->dest);
		*sync_lsn = 0;
		break;
	case APPLY_EV_MISMATCH:
		log_debug("HASH: segment %" PRIu64 ", LSN %" PRIu64 ": image %s differs at %" PRIu64 "+%" PRIu64,
			  e->segment, e->lsn, e->image, e->offset, e->length);
		break;
	}
	return 0;
}

/* Says where --until stopped, and for a time why there. */
static void print_stop(const struct point_spec *spec, const struct point *pt)
{
	char pbuf[400], tbuf[64];

	printf("stopped after %s", point_describe(pt, pbuf, sizeof pbuf));
	if (spec->kind == POINT_TIME) {
		printf(": the last barrier at or before %s",
		       clock_iso8601(spec->time_ns, 9, tbuf, sizeof tbuf));
		if (pt->after_end)
			printf(" (which is after the last record of these segments)");
		else
			printf(" (the next record was journaled at %s)",
			       clock_iso8601(pt->next_time_ns, 9, tbuf, sizeof tbuf));
	}
	putchar('\n');
}

int cmd_replay(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "target-dir", required_argument, NULL, 't' },
		{ "map", required_argument, NULL, 'm' },
		{ "after-lsn", required_argument, NULL, 'a' },
		{ "until", required_argument, NULL, 'u' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *target_dir = NULL, *until_arg = NULL;
	struct apply_map *maps = NULL;
	size_t nmaps = 0, nsegs;
	struct series s = { 0 };
	struct applier *a = NULL;
	struct apply_stats st;
	struct point_spec spec;
	struct point pt = { 0 };
	uint64_t after = 0, sync_lsn = 0, durable, until = 0, first, stamp_lsn = 0;
	uint8_t stamp_group[16];
	int stamped = 1;
	char sbuf[32], err[512];
	int c, r, status = 1;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":t:m:u:vh", opts, NULL)) != -1) {
		switch (c) {
		case 't':
			if (target_dir) {
				status = usage_error("replay: --target-dir is given twice");
				goto out;
			}
			target_dir = optarg;
			break;
		case 'm': {
			struct apply_map *nm = realloc(maps, (nmaps + 1) * sizeof *nm);
			const char *why;

			if (!nm) {
				log_error("out of memory");
				goto out;
			}
			maps = nm;
			if (apply_map_parse(optarg, &maps[nmaps], &why) < 0) {
				status = usage_error("replay: --map takes IMAGE=PATH, not \"%s\": %s",
						     optarg, why);
				goto out;
			}
			nmaps++;
			break;
		}
		case 'a':
			if (parse_uint(optarg, &after) < 0) {
				status = usage_error("replay: --after-lsn takes an LSN, not \"%s\"", optarg);
				goto out;
			}
			break;
		case 'u':
			until_arg = optarg;
			break;
		case 'v':
			log_set_level(LOG_LVL_DEBUG);
			break;
		case 'h':
			status = 0;
			printf("usage: aimctl replay --target-dir DIR [--map IMAGE=PATH]... [--after-lsn N]\n"
			       "                    [--until LSN|TIME|MARK:NAME] [-v] SEGMENT... | JOURNAL_DIR\n");
			goto out;
		case ':':
			status = usage_error("replay: %s needs an argument", argv[optind - 1]);
			goto out;
		default:
			status = usage_error("replay: unknown option %s", argv[optind - 1]);
			goto out;
		}
	}
	if (!target_dir) {
		status = usage_error("replay: --target-dir DIR is required");
		goto out;
	}
	if (optind == argc) {
		status = usage_error("replay: give SEGMENT files or a JOURNAL_DIR");
		goto out;
	}
	if (until_arg && point_parse(until_arg, &spec, err, sizeof err) < 0) {
		status = usage_error("replay: --until: %s", err);
		goto out;
	}

	/* 1. Collect and validate every segment, and find the point, before
	 * touching anything. */
	if (series_open(&s, argv + optind, argc - optind, true) < 0) {
		log_error("nothing was applied");
		goto out;
	}
	/* The target must be where the segments (after --after-lsn) start. */
	first = series_first_lsn(&s);
	if (after && after + 1 < first) {
		log_error("--after-lsn %" PRIu64 ": the segments start at LSN %" PRIu64 ", so"
			  " LSN %" PRIu64 "..%" PRIu64 " would be missing; nothing was applied", after,
			  first, after + 1, first - 1);
		goto out;
	}
	if (after > series_last_lsn(&s)) {
		log_error("--after-lsn %" PRIu64 " is past the last record of the segments (LSN %"
			  PRIu64 "); nothing was applied", after, series_last_lsn(&s));
		goto out;
	}
	stamped = stamp_read(target_dir, stamp_group, &stamp_lsn, &sync_lsn);
	if (stamped < 0) {
		log_error("nothing was applied");
		goto out;
	}
	if (stamped == 0) {
		uint64_t from = after ? after : first - 1;

		if (memcmp(stamp_group, series_group(&s), 16) != 0) {
			log_error("%s holds another group's images (its %s says so); nothing was"
				  " applied", target_dir, BASE_STAMP);
			goto out;
		}
		if (from != stamp_lsn) {
			log_error("%s holds the images as of LSN %" PRIu64 " (its %s says so), but"
				  " this replay starts after LSN %" PRIu64 ": give --after-lsn %" PRIu64
				  " and segments from LSN %" PRIu64 " or before; nothing was applied",
				  target_dir, stamp_lsn, BASE_STAMP, from, stamp_lsn, stamp_lsn + 1);
			goto out;
		}
	} else if (!after && first > 1) {
		log_warn("the segments start at LSN %" PRIu64 ": %s must hold the images as they"
			 " were after LSN %" PRIu64 " (nothing here can tell)", first, target_dir,
			 first - 1);
	}
	if (until_arg) {
		if (series_find(&s, &spec, &pt) < 0) {
			log_error("nothing was applied");
			goto out;
		}
		if (pt.lsn <= after) {
			log_error("--until %s is LSN %" PRIu64 ", not after --after-lsn %" PRIu64
				  ": nothing to apply; nothing was applied", until_arg, pt.lsn, after);
			goto out;
		}
		until = pt.lsn;
	}

	/* 2. The target directory and the mappings must be usable too, and
	 * every record must fit its target (a mapped block device is never
	 * resized). */
	if (applier_new(target_dir, &a) < 0 || applier_map_all(a, maps, nmaps) < 0)
		goto out;
	for (size_t i = 0; i < s.n; i++) {
		if (until && seg_view_header(s.files[i].view)->first_lsn > until)
			break;
		r = applier_check(a, s.files[i].view, after, err, sizeof err);
		if (r < 0) {
			log_error("%s: %s", s.files[i].path, err);
			log_error("nothing was applied");
			goto out;
		}
	}
	applier_set_durable_cb(a, on_durable, NULL);
	applier_set_event_cb(a, on_event, &sync_lsn);

	/* 3. Apply, in order. */
	if (series_apply(&s, a, after, until, NULL, NULL, &durable) < 0) {
		log_error("once the cause is fixed, resume with --after-lsn %" PRIu64, durable);
		goto out;
	}
	applier_stats(a, &st);
	/* A saved base moves on with what was applied to it. */
	if (stamped == 0 && stamp_write(target_dir, stamp_group,
					until ? until : series_last_lsn(&s), sync_lsn) < 0) {
		log_error("the images are replayed, but %s/%s still says LSN %" PRIu64 ": remove"
			  " it before using %s as a base", target_dir, BASE_STAMP, stamp_lsn,
			  target_dir);
		goto out;
	}
	nsegs = s.n;
	if (until)
		for (nsegs = 0; nsegs < s.n &&
		     seg_view_header(s.files[nsegs].view)->number <= pt.segment; nsegs++)
			;
	printf("replayed %zu segment%s (LSN %" PRIu64 "..%" PRIu64 ") into %s: %" PRIu64
	       " records, %" PRIu64 " bytes written (%s), %" PRIu64 " bytes zeroed\n",
	       nsegs, nsegs == 1 ? "" : "s", series_first_lsn(&s), until ? until : series_last_lsn(&s),
	       target_dir, st.records, st.bytes_written,
	       format_size(st.bytes_written, sbuf, sizeof sbuf), st.bytes_zeroed);
	if (until)
		print_stop(&spec, &pt);
	if (sync_lsn)
		log_warn("the replay ends inside a resynchronisation (SYNC_BEGIN at LSN %" PRIu64
			 " has no SYNC_END by then): the targets are not a consistent copy", sync_lsn);
	status = 0;
out:
	applier_free(a);
	series_close(&s);
	for (size_t i = 0; i < nmaps; i++)
		apply_map_free(&maps[i]);
	free(maps);
	return status;
}
