/*
 * cmd_ship.c — `aimctl ship`: drains a journal that no aimfs has mounted,
 * with the very transport aimfs runs inside itself.  For a journal made
 * without destinations, or left with a backlog at unmount.
 */
#include "aimctl.h"
#include "actlog_header.h"
#include "catalog.h"
#include "log.h"
#include "parse.h"
#include "format.h"
#include "transport.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

static int scan_journal(const char *dir, uint64_t *newest, bool *unfinished)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	uint64_t n;

	*newest = 0;
	*unfinished = false;
	if (!d) {
		log_error("ship: journal %s: %m", dir);
		return -1;
	}
	while ((de = readdir(d))) {
		size_t len = strlen(de->d_name);

		if (seg_parse_file_name(de->d_name, &n) == 0 && n > *newest)
			*newest = n;
		if (len > 5 && strcmp(de->d_name + len - 5, SEG_OPEN_SUFFIX) == 0)
			*unfinished = true;
	}
	closedir(d);
	return 0;
}

/*
 * After a crash or a power loss the backing files may lack what sealed
 * segments hold (an fsync syncs the journal; the backing files follow at
 * checkpoints), and the next mount redoes those segments: shipping them
 * now would prune them first.  The activity log says how the last mount
 * ended; a journal without one predates it.
 */
static bool ended_cleanly(const char *dir)
{
	struct actlog_header h;
	int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int r = dirfd < 0 ? -errno : actlog_header_read(dirfd, &h);

	if (dirfd >= 0)
		close(dirfd);
	if (r == -ENOENT)
		return true;
	if (r < 0)
		log_warn("ship: journal %s: cannot read its activity log (%s)", dir, strerror(-r));
	return r == 0 && h.clean && !h.redo;
}

/* aimfs's own configuration file works here too: its [aimfs] section is
 * for the mount, not for shipping. */
static int other_section(void *ctx, const char *section, const char *key, const char *value)
{
	(void)ctx;
	(void)key;
	(void)value;
	if (strcmp(section, "aimfs") == 0)
		return 0;
	log_error("ship: config: unknown section [%s] (expected [aimfs] or [destination NAME])",
		  section);
	return -1;
}

/* A destination this run added that took nothing (a mistyped URL, a host
 * that is down) leaves no trace in the catalog: the next attempt starts it
 * afresh, and nothing else counts a destination that is not there. */
static void forget_untouched(struct transport *t, const char *catalog_path, const bool *is_new)
{
	struct catalog *cat;

	transport_stop(t); /* its workers write the catalog no more */
	if (catalog_open(catalog_path, &cat) < 0)
		return;
	for (size_t i = 0; i < transport_dest_count(t); i++) {
		struct transport_dest_info info;

		transport_dest_info(t, i, &info);
		if (!is_new[i] || info.acked_segment != 0)
			continue;
		if (catalog_dest_forget(cat, info.name) == 0)
			log_info("ship: %s acknowledged nothing; it is not kept in the catalog",
				 info.name);
	}
	catalog_close(cat);
}

int cmd_ship(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "dest", required_argument, NULL, 'd' },
		{ "config", required_argument, NULL, 'c' },
		{ "timeout", required_argument, NULL, 't' },
		{ NULL, 0, NULL, 0 },
	};
	struct dest_config *dests = NULL;
	struct transport_config tc = { 0 };
	struct transport *t = NULL;
	struct catalog *cat = NULL;
	size_t ndests = 0;
	uint64_t timeout_ns = 0, newest;
	char path[4200], uuid[37];
	bool unfinished, *is_new = NULL;
	int opt, lock_fd = -1, ret = 1;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		struct dest_config *d;

		switch (opt) {
		case 'd':
			d = dest_config_find(&dests, &ndests, optarg, true);
			if (!d || dest_config_set(d, "url", optarg) < 0)
				goto out;
			break;
		case 'c':
			if (dest_config_load(optarg, other_section, NULL, &dests, &ndests) < 0)
				goto out;
			break;
		case 't':
			if (parse_duration(optarg, &timeout_ns) < 0) {
				log_error("ship: --timeout %s: expected a duration (e.g. 10m)", optarg);
				ret = 2;
				goto out;
			}
			break;
		default:
			ret = 2;
			goto out;
		}
	}
	if (optind != argc - 1 || ndests == 0) {
		log_error("usage: aimctl ship (--dest URL | --config FILE)... [--timeout DURATION]"
			  " JOURNAL_DIR");
		ret = 2;
		goto out;
	}
	for (size_t i = 0; i < ndests; i++) {
		int r = dest_config_check(&dests[i]);

		if (r < 0) {
			ret = r == -EINVAL ? 2 : 1;
			goto out;
		}
	}
	if (dest_configs_distinct(dests, ndests) < 0) {
		ret = 2;
		goto out;
	}
	tc.journal_dir = argv[optind];
	snprintf(path, sizeof path, "%s/lock", tc.journal_dir);
	lock_fd = open(path, O_RDWR | O_CLOEXEC);
	if (lock_fd < 0) {
		log_error("ship: %s is not an aimfs journal: %m", tc.journal_dir);
		goto out;
	}
	if (flock(lock_fd, LOCK_EX | LOCK_NB) < 0) {
		log_error("ship: journal %s is mounted; the aimfs using it ships it itself",
			  tc.journal_dir);
		goto out;
	}
	if (scan_journal(tc.journal_dir, &newest, &unfinished) < 0)
		goto out;
	if (unfinished || !ended_cleanly(tc.journal_dir)) {
		log_error("ship: journal %s was not unmounted cleanly; mount it once so that"
			  " recovery finishes its segments and redoes them onto the backing files",
			  tc.journal_dir);
		goto out;
	}
	snprintf(path, sizeof path, "%s/catalog.db", tc.journal_dir);
	if (catalog_open(path, &cat) < 0 || catalog_meta_get(cat, "group", uuid, sizeof uuid) < 0 ||
	    seg_uuid_parse(uuid, tc.group) < 0) {
		log_error("ship: journal %s has no readable catalog", tc.journal_dir);
		goto out;
	}
	{
		uint64_t last, lsn;

		/* Segments already pruned still count: a destination that never
		 * got them is not done. */
		if (catalog_last_segment(cat, &last, &lsn) == 0 && last > newest)
			newest = last;
	}
	is_new = calloc(ndests, sizeof *is_new);
	if (!is_new)
		goto out;
	for (size_t i = 0; i < ndests; i++) {
		struct catalog_dest cd;

		is_new[i] = catalog_dest_load(cat, dests[i].name, &cd) == -ENOENT;
	}
	catalog_close(cat);
	cat = NULL;
	tc.dests = dests;
	tc.ndests = ndests;
	if (transport_new(&tc, &t) < 0)
		goto out;
	/* Unmounted cleanly: every record is on the backing files. */
	transport_notify(t, newest, UINT64_MAX);
	if (transport_start(t) < 0)
		goto out;
	/* 0 (or longer than the drain can count, 49 days) waits as long as
	 * it takes */
	ret = transport_drain(t, timeout_ns && timeout_ns / 1000000ULL < UINT32_MAX
				      ? (unsigned)(timeout_ns / 1000000ULL) : UINT32_MAX) == 0 ? 0 : 1;
	if (ret == 0 && catalog_open(path, &cat) == 0) {
		/* A destination this run added, which got every segment from
		 * the first one on, holds an exact copy: no resync needed.  One
		 * a mount added ("new" since: the mount ended before its initial
		 * sync began) started after that mount's durable segment. */
		for (size_t i = 0; i < ndests; i++) {
			struct transport_dest_info info;
			struct dest_change c = { .sync = DEST_SYNC_IN_SYNC, .expect = true,
						 .expect_sync = DEST_SYNC_NEW,
						 .expect_phase = DEST_PHASE_NONE };

			transport_dest_info(t, i, &info);
			if (is_new[i] && info.rec.sync == DEST_SYNC_NEW)
				dest_state_change(t, i, cat, &c);
		}
	}
	{
		struct dest_view *views = NULL;
		size_t n = 0;

		if (transport_views(t, &views, &n) == 0)
			for (size_t i = 0; i < n; i++) {
				const struct dest_view *v = &views[i];
				bool failed = v->state != DEST_VIEW_IN_SYNC &&
					      v->state != DEST_VIEW_SHIPPING && v->last_error[0];

				printf("%s: %s, acknowledged segment %" PRIu64 " of %" PRIu64 "%s%s\n",
				       v->name, dest_view_state_name(v->state), v->acked_segment,
				       newest, failed ? "; " : "", failed ? v->last_error : "");
				if (v->state == DEST_VIEW_IN_SYNC)
					continue;
				/* shipped what it could, but it is no copy yet */
				ret = 1;
				if (v->state == DEST_VIEW_NEEDS_RESYNC || v->state == DEST_VIEW_TRACKING)
					fprintf(stderr, "%s: %s: it needs a resynchronisation, which a"
						" mount of this journal runs\n", log_progname(), v->name);
			}
		free(views);
	}
	if (ret != 0)
		forget_untouched(t, path, is_new);
out:
	transport_free(t);
	catalog_close(cat);
	for (size_t i = 0; i < ndests; i++)
		dest_config_free(&dests[i]);
	free(dests);
	free(is_new);
	if (lock_fd >= 0)
		close(lock_fd);
	return ret;
}
