/*
 * protocol.c — the mismatch report's JSON, built and parsed in one place
 * (protocol.h), and how a sender reads an HTTP status.
 */
#include "protocol.h"
#include "jsontext.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The keys of the mismatch report. */
#define K_GROUP "group"
#define K_APPLIED "applied_lsn"
#define K_PRUNED "pruned_lsn"
#define K_CONSISTENT "consistent"
#define K_MORE "more"
#define K_RANGES "ranges"
#define K_TARGETS "targets"
#define K_LSN "lsn"
#define K_IMAGE "image"
#define K_IMAGE_ID "image_id"
#define K_OFFSET "offset"
#define K_LENGTH "length"
#define K_STATE "state"
#define K_ERROR "error"

enum proto_verdict proto_verdict(long status)
{
	if (status >= 200 && status < 300)
		return PROTO_ACKED;
	if (status >= 500 || status == 408 || status == 429)
		return PROTO_RETRY;
	return PROTO_REFUSED;
}

bool proto_is_no_group(long status, bool json, const char *body)
{
	return status == 404 && !json && body &&
	       strncmp(body, PROTO_NO_GROUP, strlen(PROTO_NO_GROUP)) == 0;
}

const char *proto_mismatches_path(uint64_t after, char *buf, size_t len)
{
	snprintf(buf, len, PROTO_MISMATCHES "?" PROTO_ARG_AFTER "=%" PRIu64, after);
	return buf;
}

json_t *proto_mismatches_json(const struct proto_mismatches *m, json_t *targets)
{
	json_t *o = json_object(), *ranges = json_array();

	for (size_t i = 0; i < m->nranges; i++) {
		const struct proto_range *r = &m->ranges[i];
		json_t *x = json_object();

		json_object_set_new(x, K_LSN, json_integer((json_int_t)r->lsn));
		json_object_set_new(x, K_IMAGE, json_string(r->image ? r->image : ""));
		json_object_set_new(x, K_IMAGE_ID, json_integer((json_int_t)r->image_id));
		json_object_set_new(x, K_OFFSET, json_integer((json_int_t)r->offset));
		json_object_set_new(x, K_LENGTH, json_integer((json_int_t)r->length));
		json_array_append_new(ranges, x);
	}
	json_object_set_new(o, K_GROUP, json_string(m->group));
	json_object_set_new(o, K_APPLIED, json_integer((json_int_t)m->applied_lsn));
	json_object_set_new(o, K_CONSISTENT, json_boolean(m->consistent));
	json_object_set_new(o, K_PRUNED, json_integer((json_int_t)m->pruned_lsn));
	json_object_set_new(o, K_MORE, json_boolean(m->more));
	json_object_set_new(o, K_RANGES, ranges);
	if (targets)
		json_object_set_new(o, K_TARGETS, targets);
	if (m->state[0])
		json_object_set_new(o, K_STATE, json_string(m->state));
	if (m->error[0])
		json_object_set_new(o, K_ERROR, json_text(m->error));
	return o;
}

static int bad(char *why, size_t whylen, const char *what)
{
	snprintf(why, whylen, "not a mismatch report: %s", what);
	return -EBADMSG;
}

/* A non-negative JSON integer as u64; false if absent or not one. */
static bool get_u64(json_t *o, const char *key, uint64_t *v)
{
	json_t *x = json_object_get(o, key);

	if (!json_is_integer(x) || json_integer_value(x) < 0)
		return false;
	*v = (uint64_t)json_integer_value(x);
	return true;
}

int proto_mismatches_parse(const char *body, struct proto_mismatches *m, char *why,
			   size_t whylen)
{
	json_t *o = json_loads(body, 0, NULL), *ranges, *x, *targets;
	const char *group;
	size_t i;
	int r = 0;

	memset(m, 0, sizeof *m);
	if (!json_is_object(o)) {
		json_decref(o);
		return bad(why, whylen, "not a JSON object");
	}
	group = json_string_value(json_object_get(o, K_GROUP));
	ranges = json_object_get(o, K_RANGES);
	if (!group || !get_u64(o, K_APPLIED, &m->applied_lsn) || !json_is_array(ranges)) {
		json_decref(o);
		return bad(why, whylen, "group, applied_lsn or ranges missing");
	}
	snprintf(m->group, sizeof m->group, "%s", group);
	get_u64(o, K_PRUNED, &m->pruned_lsn);
	m->consistent = !json_is_false(json_object_get(o, K_CONSISTENT));
	m->more = json_is_true(json_object_get(o, K_MORE));
	snprintf(m->state, sizeof m->state, "%s",
		 json_is_string(json_object_get(o, K_STATE))
			 ? json_string_value(json_object_get(o, K_STATE)) : "");
	snprintf(m->error, sizeof m->error, "%s",
		 json_is_string(json_object_get(o, K_ERROR))
			 ? json_string_value(json_object_get(o, K_ERROR)) : "");
	targets = json_object_get(o, K_TARGETS);
	if (json_is_object(targets)) {
		m->has_targets = true;
		m->ntargets = json_object_size(targets);
	}
	m->ranges = calloc(json_array_size(ranges) ? json_array_size(ranges) : 1,
			   sizeof *m->ranges);
	if (!m->ranges) {
		json_decref(o);
		return -ENOMEM;
	}
	json_array_foreach(ranges, i, x) {
		struct proto_range *pr = &m->ranges[m->nranges];
		const char *image = json_string_value(json_object_get(x, K_IMAGE));
		uint64_t id = 0;

		if (!get_u64(x, K_LSN, &pr->lsn) || !get_u64(x, K_OFFSET, &pr->offset) ||
		    !get_u64(x, K_LENGTH, &pr->length) || !image) {
			r = bad(why, whylen, "a range without lsn, image, offset or length");
			break;
		}
		if (get_u64(x, K_IMAGE_ID, &id) && id <= UINT32_MAX)
			pr->image_id = (uint32_t)id;
		pr->image = strdup(image);
		if (!pr->image) {
			r = -ENOMEM;
			break;
		}
		m->nranges++;
	}
	json_decref(o);
	if (r < 0)
		proto_mismatches_free(m);
	return r;
}

void proto_mismatches_free(struct proto_mismatches *m)
{
	for (size_t i = 0; i < m->nranges; i++)
		free(m->ranges[i].image);
	free(m->ranges);
	m->ranges = NULL;
	m->nranges = 0;
}
