/*
 * cmd_status.c — `aimctl status [URL]`: fetches a daemon's /status (aimfs
 * or aim-remote) and prints it for a person: what is behind, by how much,
 * and why.  The JSON stays the machine interface; this is its reading.
 */
#include "aimctl.h"
#include "log.h"
#include "parse.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_URL "http://127.0.0.1:9380/status"

static const char *str(json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));

	return s ? s : "-";
}

static long long num(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);

	return json_is_integer(v) ? json_integer_value(v) : (long long)json_number_value(v);
}

static const char *size_of(json_t *o, const char *key, char *buf, unsigned len)
{
	return format_size((uint64_t)num(o, key), buf, len);
}

static void bar(double frac, char *out, int width)
{
	int fill = (int)(frac * width + 0.5);

	if (fill > width)
		fill = width;
	if (fill < 0)
		fill = 0;
	out[0] = '[';
	for (int i = 0; i < width; i++)
		out[1 + i] = i < fill ? '#' : '.';
	out[width + 1] = ']';
	out[width + 2] = '\0';
}

static void print_destination(json_t *d)
{
	char a[32], b[32], c[32];
	const char *state = str(d, "state");
	char upper[32];
	size_t i;

	for (i = 0; state[i] && i < sizeof upper - 1; i++)
		upper[i] = state[i] == '_' ? ' ' : (char)(state[i] >= 'a' && state[i] <= 'z' ?
							  state[i] - 32 : state[i]);
	upper[i] = '\0';
	printf("\ndestination %s  %s\n", str(d, "name"), upper);
	if (strcmp(str(d, "name"), str(d, "url")) != 0)
		printf("  url          %s\n", str(d, "url"));
	if (json_object_get(d, "images")) {
		json_t *p;

		printf("  images      ");
		json_array_foreach(json_object_get(d, "images"), i, p)
			printf(" %s", json_string_value(p));
		printf("\n");
	}
	printf("  acknowledged segment %lld (LSN %lld)%s%s\n", num(d, "acked_segment"),
	       num(d, "acked_lsn"), json_object_get(d, "acked_at") ? " at " : "",
	       json_object_get(d, "acked_at") ? str(d, "acked_at") : "");
	printf("  backlog      %lld segments, %s, %.1f s behind\n", num(d, "backlog_segments"),
	       size_of(d, "backlog_bytes", a, sizeof a),
	       json_number_value(json_object_get(d, "backlog_seconds")));
	printf("  shipped      %lld segments, %s, %s/s\n", num(d, "segments_shipped"),
	       size_of(d, "bytes_shipped", b, sizeof b),
	       format_size((uint64_t)json_number_value(json_object_get(d, "throughput_bytes_per_second")),
			   c, sizeof c));
	if (json_object_get(d, "sync") &&
	    strcmp(str(json_object_get(d, "sync"), "state"), "in_sync") != 0) {
		json_t *y = json_object_get(d, "sync");
		double total = (double)num(y, "total_bytes"), done = (double)num(y, "done_bytes");
		char pb[40], eta[32] = "unknown";

		bar(total > 0 ? done / total : 0, pb, 30);
		if (json_is_number(json_object_get(y, "eta_seconds")))
			snprintf(eta, sizeof eta, "%.0f s", json_number_value(json_object_get(y, "eta_seconds")));
		printf("  resync       %s %3.0f%%  %s of %s, %s left, about %s  (%s)\n", pb,
		       total > 0 ? 100 * done / total : 0, size_of(y, "done_bytes", a, sizeof a),
		       size_of(y, "total_bytes", b, sizeof b), size_of(y, "remaining_bytes", c, sizeof c),
		       eta, str(y, "phase"));
		printf("  compared     %s found equal on the remote%s\n", size_of(y, "saved_bytes", a, sizeof a),
		       json_is_false(json_object_get(y, "compare")) ? " (the receiver cannot compare)" : "");
	}
	if (json_object_get(d, "last_error"))
		printf("  last error   %s (%s)\n", str(d, "last_error"), str(d, "last_error_at"));
	if (json_is_object(json_object_get(d, "remote"))) {
		json_t *r = json_object_get(d, "remote");

		/* What the remote said when last asked (every 2 s): it may
		 * predate the acknowledgement printed above. */
		printf("  remote       %s, applied LSN %lld%s, asked at %s%s%s\n", str(r, "state"),
		       num(r, "applied_lsn"), json_is_true(json_object_get(r, "applied_all"))
						  ? " (all it acknowledged)" : " (behind what it acknowledged)",
		       str(r, "asked_at"),
		       json_is_string(json_object_get(r, "error")) ? ": " : "",
		       json_is_string(json_object_get(r, "error")) ? str(r, "error") : "");
	}
	if (json_object_get(d, "next_attempt_in_seconds"))
		printf("  retrying     attempt %lld, next in %.1f s\n", num(d, "attempts"),
		       json_number_value(json_object_get(d, "next_attempt_in_seconds")));
}

static void print_source(json_t *o)
{
	char a[32], b[32], c[32], pb[40];
	double max = (double)num(o, "journal_max"), used = (double)num(o, "journal_bytes");
	size_t i;
	json_t *d, *marks, *last, *al;

	printf("aimfs source  group %s  %s\n", str(o, "group"),
	       json_is_null(json_object_get(o, "in_sync")) ? "JOURNAL ONLY (no destinations)" :
	       json_is_true(json_object_get(o, "in_sync")) ? "IN SYNC" : "NOT IN SYNC");
	printf("  backing      %s (mounted at %s)\n", str(o, "backing_dir"), str(o, "mountpoint"));
	bar(max > 0 ? used / max : 0, pb, 20);
	printf("  journal      %s  %s of %s %s%s\n", str(o, "journal_dir"),
	       size_of(o, "journal_bytes", a, sizeof a), size_of(o, "journal_max", b, sizeof b), pb,
	       json_is_true(json_object_get(o, "journal_limit_enforced")) ? "" : " (not enforced)");
	printf("  head LSN     %lld   open segment %lld (%s)   durable segment %lld\n",
	       num(o, "head_lsn"), num(o, "open_segment"), size_of(o, "open_segment_bytes", c, sizeof c),
	       num(o, "durable_segment"));
	printf("  journaled    %lld records, %s since mount; %lld writes waiting for space%s\n",
	       num(o, "records_journaled"), size_of(o, "bytes_journaled", a, sizeof a),
	       num(o, "writes_waiting"),
	       json_is_true(json_object_get(o, "journal_full")) ? " (JOURNAL FULL)" : "");
	al = json_object_get(o, "activity_log");
	if (json_is_object(al) && num(al, "extents") > 0)
		printf("  activity log %lld of %lld extents of %s in the set, %lld hot; %lld writes"
		       " waited for a checkpoint\n", num(al, "extents_in_set"), num(al, "extents"),
		       size_of(al, "extent_bytes", c, sizeof c), num(al, "extents_hot"),
		       num(al, "writes_that_waited_for_a_checkpoint"));
	marks = json_object_get(o, "marks");
	last = json_object_get(marks, "last");
	if (json_is_object(last))
		printf("  marks        %lld, the last \"%s\" at LSN %lld (%s)\n", num(marks, "count"),
		       str(last, "name"), num(last, "lsn"), str(last, "time"));
	else if (json_is_object(marks))
		printf("  marks        none (aimctl mark NAME)\n");
	if (json_array_size(json_object_get(o, "destinations")) == 0)
		printf("\nno destinations\n");
	json_array_foreach(json_object_get(o, "destinations"), i, d)
		print_destination(d);
}

/* aim-remote's document: print what it says, group by group, generically
 * enough to survive new fields. */
static void print_value(const char *key, json_t *v, int indent)
{
	const char *k;
	json_t *x;
	size_t i;

	switch (json_typeof(v)) {
	case JSON_OBJECT:
		printf("%*s%s:\n", indent, "", key);
		json_object_foreach(v, k, x)
			print_value(k, x, indent + 2);
		break;
	case JSON_ARRAY:
		printf("%*s%s: %zu\n", indent, "", key, json_array_size(v));
		json_array_foreach(v, i, x) {
			char label[32];

			snprintf(label, sizeof label, "[%zu]", i);
			print_value(label, x, indent + 2);
		}
		break;
	case JSON_STRING:
		printf("%*s%-22s %s\n", indent, "", key, json_string_value(v));
		break;
	case JSON_INTEGER:
		printf("%*s%-22s %lld\n", indent, "", key, (long long)json_integer_value(v));
		break;
	case JSON_REAL:
		printf("%*s%-22s %.3f\n", indent, "", key, json_real_value(v));
		break;
	case JSON_TRUE:
	case JSON_FALSE:
		printf("%*s%-22s %s\n", indent, "", key, json_is_true(v) ? "yes" : "no");
		break;
	default:
		printf("%*s%-22s -\n", indent, "", key);
	}
}

static void print_remote(json_t *o)
{
	const char *k;
	json_t *v;

	printf("aim-remote\n");
	json_object_foreach(o, k, v)
		if (strcmp(k, "role") != 0)
			print_value(k, v, 2);
}

int cmd_status(int argc, char **argv)
{
	char url[2048], *body = NULL;
	json_error_t jerr;
	long code = 0;
	size_t len = 0;
	json_t *o;
	bool raw = false;
	const char *arg = NULL;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0)
			raw = true;
		else if (!arg && argv[i][0] != '-')
			arg = argv[i];
		else {
			log_error("status: unexpected argument %s (usage: aimctl status [--json] [URL])",
				  argv[i]);
			return 2;
		}
	}
	if (!arg)
		snprintf(url, sizeof url, "%s", DEFAULT_URL);
	else
		aimctl_status_url(arg, "/status", url, sizeof url);
	if (aimctl_http("status", url, false, 15, &code, &body, &len) < 0)
		return 1;
	if (code != 200) {
		log_error("status: %s: unexpected HTTP status %ld", url, code);
		free(body);
		return 1;
	}
	if (raw) {
		fwrite(body, 1, len, stdout);
		free(body);
		return 0;
	}
	o = json_loadb(body, len, 0, &jerr);
	free(body);
	if (!o) {
		log_error("status: %s did not answer JSON: %s", url, jerr.text);
		return 1;
	}
	if (strcmp(str(o, "role"), "source") == 0)
		print_source(o);
	else
		print_remote(o);
	json_decref(o);
	return 0;
}
