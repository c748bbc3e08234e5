/*
 * cmd_failover.c — the commands that steer an aim-remote's groups through
 * its status listener: `hold` (stop applying at a point, for a test
 * failover on overlays of the held replica), `release` (apply again),
 * `promote` (fail over: apply what arrived up to the last barrier or a
 * point, then stop the group for good), and `resume` (start stopped groups
 * again).  aim-remote decides (remote/failover.c); these commands ask,
 * wait for the group to get there by polling GET /status, and print the
 * recovery point for people.
 *
 * Without --group a command addresses the one group of that aim-remote;
 * aim-remote refuses when it has several.
 */
#include "aimctl.h"
#include "log.h"
#include "parse.h"

#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define REMOTE_STATUS "127.0.0.1:9381" /* aim-remote's default --status */
#define HTTP_TIMEOUT_S 60L             /* aim-remote answers between two records */
#define DEFAULT_WAIT_NS (600ULL * 1000000000ULL)
#define POLL_US 100000

static const char *str(json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));

	return s ? s : "-";
}

static long long num(json_t *o, const char *key)
{
	return (long long)json_integer_value(json_object_get(o, key));
}

/* The "error" of a refusal, or the body's text. */
static const char *reason(json_t *o)
{
	const char *e = json_string_value(json_object_get(o, "error"));

	return e ? e : "no reason given";
}

struct args {
	const char *cmd;
	const char *addr;
	const char *group;
	const char *at;
	bool force;
	uint64_t wait_ns;
};

static int parse(int argc, char **argv, struct args *a, bool point, bool force)
{
	static const struct option opts[] = {
		{ "status", required_argument, NULL, 's' },
		{ "group", required_argument, NULL, 'g' },
		{ "at", required_argument, NULL, 'a' },
		{ "force", no_argument, NULL, 'f' },
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	a->addr = REMOTE_STATUS;
	a->wait_ns = DEFAULT_WAIT_NS;
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			a->addr = optarg;
			break;
		case 'g':
			a->group = optarg;
			break;
		case 'a':
			if (!point)
				return usage_error("%s: --at is for hold and promote", a->cmd);
			a->at = optarg;
			break;
		case 'f':
			if (!force)
				return usage_error("%s: --force is for promote", a->cmd);
			a->force = true;
			break;
		case 't':
			if (!point)
				return usage_error("%s: --timeout is for hold and promote", a->cmd);
			if (parse_duration(optarg, &a->wait_ns) < 0)
				return usage_error("%s: --timeout %s: expected a duration (e.g. 10m, 0)",
						   a->cmd, optarg);
			break;
		case 'h':
			printf("usage: aimctl %s [--status ADDR:PORT] [--group GROUP]%s%s\n", a->cmd,
			       point ? " [--at LSN|TIME|MARK:NAME] [--timeout DURATION]" : "",
			       force ? " [--force]" : "");
			return -1;
		case ':':
			return usage_error("%s: %s needs an argument", a->cmd, argv[optind - 1]);
		default:
			return usage_error("%s: unknown option %s", a->cmd, argv[optind - 1]);
		}
	}
	if (optind < argc)
		return usage_error("%s: unexpected argument \"%s\"", a->cmd, argv[optind]);
	if (a->at) {
		struct point_spec p;
		char err[320];

		if (point_parse(a->at, &p, err, sizeof err) < 0)
			return usage_error("%s: --at %s", a->cmd, err);
	}
	return 0;
}

/* POST /VERB[/GROUP][/force][/at/POINT]; the answer (or NULL, logged). */
static json_t *ask(const struct args *a, const char *verb, long *code)
{
	char esc[1024], path[1400], url[1700];
	json_t *o;

	snprintf(path, sizeof path, "/%s%s%s%s", verb, a->group ? "/" : "",
		 a->group ? a->group : "", a->force ? "/force" : "");
	if (a->at) {
		if (!aimctl_url_escape(a->at, esc, sizeof esc)) {
			log_error("%s: the point is too long", a->cmd);
			return NULL;
		}
		snprintf(path + strlen(path), sizeof path - strlen(path), "/at/%s", esc);
	}
	o = aimctl_http_json(a->cmd, aimctl_status_url(a->addr, path, url, sizeof url), true,
			     HTTP_TIMEOUT_S, code);
	if (!o && *code == 0)
		log_error("%s: is aim-remote running with --status %s?", a->cmd, a->addr);
	return o;
}

/* The group's entry of aim-remote's /status (a new reference), or NULL. */
static json_t *group_status(const struct args *a, const char *group)
{
	char url[1024];
	json_t *o, *g, *found = NULL;
	long code;
	size_t i;

	o = aimctl_http_json(a->cmd, aimctl_status_url(a->addr, "/status", url, sizeof url), false,
			     HTTP_TIMEOUT_S, &code);
	json_array_foreach(json_object_get(o, "groups"), i, g)
		if (strcmp(str(g, "group"), group) == 0)
			found = json_incref(g);
	json_decref(o);
	return found;
}

static void print_hold(const char *group, json_t *g)
{
	json_t *h = json_object_get(g, "hold"), *rp = json_object_get(h, "recovery_point");
	char sz[32];

	printf("group %s: held at LSN %lld (%s, source time %s), asked: %s\n", group,
	       num(h, "lsn"), str(h, "record"), str(h, "source_time"), str(h, "point"));
	printf("  recovery point  LSN %lld, source time %s, %.1f s old, %s\n", num(rp, "lsn"),
	       str(rp, "source_time"), json_number_value(json_object_get(rp, "age_seconds")),
	       json_is_true(json_object_get(rp, "consistent")) ? "consistent"
							      : "NOT consistent (a resync is under way)");
	printf("  in the inbox    %lld segment%s, %s, not applied\n", num(h, "backlog_segments"),
	       num(h, "backlog_segments") == 1 ? "" : "s",
	       format_size((uint64_t)num(h, "backlog_bytes"), sz, sizeof sz));
	if (json_is_string(json_object_get(h, "note")))
		printf("  note            %s\n", str(h, "note"));
}

/*
 * Polls the group's status until done(hold) says 1 (reached) or -1
 * (failed), or the wait is over.  Returns the group's entry (a new
 * reference) and *verdict, or NULL.
 */
static json_t *wait_for(const struct args *a, const char *group, int (*done)(json_t *hold),
			int *verdict)
{
	struct timespec t0, now;
	json_t *g;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		g = group_status(a, group);
		*verdict = g ? done(json_object_get(g, "hold")) : 0;
		if (*verdict || !g)
			return g;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if ((uint64_t)(now.tv_sec - t0.tv_sec) * 1000000000ULL + (uint64_t)now.tv_nsec -
			    (uint64_t)t0.tv_nsec >= a->wait_ns)
			return g;
		json_decref(g);
		usleep(POLL_US);
	}
}

static int hold_reached(json_t *h)
{
	if (!json_is_object(h))
		return -1; /* released meanwhile */
	return json_is_true(json_object_get(h, "reached")) ? 1 : 0;
}

static int promote_done(json_t *h)
{
	const char *p = json_string_value(json_object_get(h, "promote"));

	if (!json_is_object(h) || !p)
		return -1;
	if (strcmp(p, "promoted") == 0)
		return 1;
	return strcmp(p, "refused") == 0 ? -1 : 0;
}

int cmd_hold(int argc, char **argv)
{
	struct args a = { .cmd = "hold" };
	json_t *o, *g;
	char group[64];
	int r, verdict;
	long code;

	r = parse(argc, argv, &a, true, false);
	if (r)
		return r < 0 ? 0 : r;
	o = ask(&a, "hold", &code);
	if (!o)
		return 1;
	if (code != 200) {
		log_error("hold: aim-remote at %s refused (HTTP %ld): %s", a.addr, code, reason(o));
		json_decref(o);
		return 1;
	}
	snprintf(group, sizeof group, "%s", str(o, "group"));
	json_decref(o);
	if (!a.wait_ns) {
		printf("group %s: hold at %s asked\n", group, a.at ? a.at : "now");
		return 0;
	}
	g = wait_for(&a, group, hold_reached, &verdict);
	if (verdict == 1) {
		print_hold(group, g);
		json_decref(g);
		return 0;
	}
	if (verdict < 0)
		log_error("hold: group %s was released before its hold was reached", group);
	else
		log_error("hold: group %s has not reached its hold at %s yet (state %s, applied LSN"
			  " %lld, waiting for segment %lld); it stops there once the segments up to"
			  " it arrive (aimctl status shows it)", group, a.at ? a.at : "now",
			  str(g, "state"), num(g, "applied_lsn"), num(g, "waiting_for"));
	json_decref(g);
	return 1;
}

int cmd_release(int argc, char **argv)
{
	struct args a = { .cmd = "release" };
	json_t *o;
	long code;
	int r;

	r = parse(argc, argv, &a, false, false);
	if (r)
		return r < 0 ? 0 : r;
	o = ask(&a, "release", &code);
	if (!o)
		return 1;
	if (code != 200) {
		log_error("release: aim-remote at %s refused (HTTP %ld): %s", a.addr, code, reason(o));
		json_decref(o);
		return 1;
	}
	printf("group %s: released; applying again from LSN %lld (%lld segment%s waiting)\n",
	       str(o, "group"), num(o, "applied_lsn"), num(o, "backlog_segments"),
	       num(o, "backlog_segments") == 1 ? "" : "s");
	json_decref(o);
	return 0;
}

int cmd_promote(int argc, char **argv)
{
	struct args a = { .cmd = "promote" };
	json_t *o, *g, *h;
	char group[64];
	int r, verdict;
	long code;

	r = parse(argc, argv, &a, true, true);
	if (r)
		return r < 0 ? 0 : r;
	o = ask(&a, "promote", &code);
	if (!o)
		return 1;
	if (code != 200 && code != 202) {
		log_error("promote: aim-remote at %s refused (HTTP %ld): %s", a.addr, code, reason(o));
		json_decref(o);
		return 1;
	}
	snprintf(group, sizeof group, "%s", str(o, "group"));
	json_decref(o);
	if (!a.wait_ns) {
		printf("group %s: promote at %s asked\n", group, a.at ? a.at : "the last barrier");
		return 0;
	}
	g = wait_for(&a, group, promote_done, &verdict);
	h = json_object_get(g, "hold");
	if (verdict == 1) {
		bool consistent = json_is_true(json_object_get(json_object_get(h, "recovery_point"),
							       "consistent"));

		printf("group %s: promoted at LSN %lld (%s, source time %s)\n", group,
		       num(h, "lsn"), str(h, "record"), str(h, "source_time"));
		printf("  recovery point  LSN %lld, source time %s\n", num(h, "lsn"),
		       str(h, "source_time"));
		printf("  the copy is     %s\n", consistent ? "consistent"
				: "NOT consistent (a resynchronisation was under way; forced)");
		if (json_is_string(json_object_get(h, "note")))
			printf("  note            %s\n", str(h, "note"));
		printf("  its segments are refused from now on; %lld left in the inbox, not"
		       " applied\n", num(h, "backlog_segments"));
		json_decref(g);
		return 0;
	}
	if (verdict < 0)
		log_error("promote: group %s was not promoted: %s", group,
			  json_is_string(json_object_get(h, "note")) ? str(h, "note")
								      : "its hold is gone");
	else
		log_error("promote: group %s is still being promoted (state %s, applied LSN %lld);"
			  " aimctl status shows when it is done", group, str(g, "state"),
			  num(g, "applied_lsn"));
	json_decref(g);
	return 1;
}

int cmd_resume(int argc, char **argv)
{
	struct args a = { .cmd = "resume" };
	static const struct option opts[] = {
		{ "status", required_argument, NULL, 's' },
		{ NULL, 0, NULL, 0 },
	};
	char path[128], url[1024];
	json_t *o, *n;
	long code;
	int ch;

	a.addr = REMOTE_STATUS;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (ch != 's')
			return usage_error("resume: unknown option %s", argv[optind - 1]);
		a.addr = optarg;
	}
	if (optind < argc - 1)
		return usage_error("resume: give at most one GROUP");
	snprintf(path, sizeof path, "/resume%s%.64s", optind == argc - 1 ? "/" : "",
		 optind == argc - 1 ? argv[optind] : "");
	o = aimctl_http_json("resume", aimctl_status_url(a.addr, path, url, sizeof url), true,
			     HTTP_TIMEOUT_S, &code);
	if (!o)
		return 1;
	n = json_object_get(o, "resumed");
	if (code != 200 || !json_is_integer(n)) {
		log_error("resume: aim-remote at %s answered %ld: %s", a.addr, code, reason(o));
		json_decref(o);
		return 1;
	}
	printf("%lld stopped group%s asked to resume\n", (long long)json_integer_value(n),
	       json_integer_value(n) == 1 ? "" : "s");
	json_decref(o);
	return 0;
}
