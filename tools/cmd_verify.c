/*
 * cmd_verify.c — `aimctl verify`: asks a running aimfs to compare its images
 * with every destination's replica, block hash by block hash, in the
 * stream's own order (HASH records, docs/RESYNC.md), so the comparison is
 * exact while both sides stay live.  Prints what differs; exits 0 only if
 * every replica is equal.
 */
#include "aimctl.h"
#include "log.h"
#include "parse.h"

#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_STATUS "127.0.0.1:9380"

int cmd_verify(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "status", required_argument, NULL, 's' },
		{ "timeout", required_argument, NULL, 't' },
		{ NULL, 0, NULL, 0 },
	};
	const char *addr = DEFAULT_STATUS, *image = NULL;
	uint64_t timeout_ns = 600000000000ULL;
	char url[4300];
	json_t *o, *d;
	long code;
	size_t i;
	uint64_t id;
	int opt, ret = 0;
	time_t deadline;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (opt == 's')
			addr = optarg;
		else if (opt == 't' && parse_duration(optarg, &timeout_ns) == 0)
			continue;
		else {
			log_error("usage: aimctl verify [--status ADDR:PORT] [--timeout DURATION] [IMAGE]");
			return 2;
		}
	}
	if (optind < argc - 1) {
		log_error("usage: aimctl verify [--status ADDR:PORT] [--timeout DURATION] [IMAGE]");
		return 2;
	}
	if (optind == argc - 1)
		image = argv[optind];
	snprintf(url, sizeof url, "http://%s/verify%s%s", addr, image ? "/" : "", image ? image : "");
	o = aimctl_http_json("verify", url, true, 30, &code);
	if (!o || code != 202) {
		log_error("verify: aimfs at %s refused: %s", addr,
			  o ? json_string_value(json_object_get(o, "error")) : "no answer");
		json_decref(o);
		return 1;
	}
	id = (uint64_t)json_integer_value(json_object_get(o, "id"));
	json_decref(o);
	snprintf(url, sizeof url, "http://%s/verify", addr);
	deadline = time(NULL) + (time_t)(timeout_ns / 1000000000ULL);
	for (;;) {
		o = aimctl_http_json("verify", url, false, 30, &code);
		if (o && (uint64_t)json_integer_value(json_object_get(o, "id")) != id) {
			log_error("verify: another verification replaced this one");
			json_decref(o);
			return 1;
		}
		if (o && json_is_true(json_object_get(o, "done")))
			break;
		json_decref(o);
		if (time(NULL) > deadline) {
			log_error("verify: no answer from every destination in time");
			return 1;
		}
		usleep(200000);
	}
	printf("verified %s: %lld bytes hashed\n", image ? image : "every image",
	       (long long)json_integer_value(json_object_get(o, "bytes")));
	json_array_foreach(json_object_get(o, "destinations"), i, d) {
		const char *state = json_string_value(json_object_get(d, "state"));
		json_t *rg;
		size_t k;

		printf("  %s: %s\n", json_string_value(json_object_get(d, "name")), state);
		if (strcmp(state, "equal") != 0)
			ret = 1;
		json_array_foreach(json_object_get(d, "ranges"), k, rg)
			printf("    %s: %lld bytes differ at offset %lld\n",
			       json_string_value(json_object_get(rg, "image")),
			       (long long)json_integer_value(json_object_get(rg, "length")),
			       (long long)json_integer_value(json_object_get(rg, "offset")));
	}
	json_decref(o);
	return ret;
}
