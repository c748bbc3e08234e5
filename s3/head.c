/*
 * head.c — the HEAD object of a group in a bucket (s3.h, docs/OBJECT-STORES.md):
 * what is complete, what is kept, and where restores can start.  Written
 * by the transport after the segment it names, read by pullers and
 * restores; a reader trusts nothing in it beyond its own checks (every
 * segment it downloads is validated whole anyway).
 *
 *   {"format": 1, "group": "<uuid>", "segment": N, "lsn": L,
 *    "sealed_ns": T, "oldest": O, "purge_from": P, "written_ns": W,
 *    "bases": [{"segment": S, "lsn": L, "time_ns": T, "end_segment": E,
 *               "end_lsn": L2, "end_time_ns": T2}, ...],
 *    "pending": {"segment": S, "lsn": L, "time_ns": T} | null}
 */
#include "s3.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *base_json(const struct s3_base *b, bool complete)
{
	json_t *o = json_object();

	json_object_set_new(o, "segment", json_integer((json_int_t)b->segment));
	json_object_set_new(o, "lsn", json_integer((json_int_t)b->lsn));
	json_object_set_new(o, "time_ns", json_integer((json_int_t)b->time_ns));
	if (complete) {
		json_object_set_new(o, "end_segment", json_integer((json_int_t)b->end_segment));
		json_object_set_new(o, "end_lsn", json_integer((json_int_t)b->end_lsn));
		json_object_set_new(o, "end_time_ns", json_integer((json_int_t)b->end_time_ns));
	}
	return o;
}

char *s3_head_dump(const struct s3_head *h)
{
	json_t *o = json_object(), *bases = json_array();
	char *text;

	json_object_set_new(o, "format", json_integer(S3_HEAD_FORMAT));
	json_object_set_new(o, "group", json_string(h->group));
	json_object_set_new(o, "segment", json_integer((json_int_t)h->segment));
	json_object_set_new(o, "lsn", json_integer((json_int_t)h->lsn));
	json_object_set_new(o, "sealed_ns", json_integer((json_int_t)h->sealed_ns));
	json_object_set_new(o, "oldest", json_integer((json_int_t)h->oldest));
	json_object_set_new(o, "purge_from", json_integer((json_int_t)h->purge_from));
	json_object_set_new(o, "written_ns", json_integer((json_int_t)h->written_ns));
	for (size_t i = 0; i < h->nbases; i++)
		json_array_append_new(bases, base_json(&h->bases[i], true));
	json_object_set_new(o, "bases", bases);
	json_object_set_new(o, "pending", h->pending.segment ? base_json(&h->pending, false)
							     : json_null());
	text = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return text;
}

/* A non-negative integer member, or false. */
static bool get_u64(json_t *o, const char *key, uint64_t *out)
{
	json_t *v = json_object_get(o, key);

	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return false;
	*out = (uint64_t)json_integer_value(v);
	return true;
}

static bool parse_base(json_t *o, struct s3_base *b, bool complete)
{
	memset(b, 0, sizeof *b);
	if (!json_is_object(o) || !get_u64(o, "segment", &b->segment) || !b->segment ||
	    !get_u64(o, "lsn", &b->lsn) || !get_u64(o, "time_ns", &b->time_ns))
		return false;
	if (!complete)
		return true;
	return get_u64(o, "end_segment", &b->end_segment) && get_u64(o, "end_lsn", &b->end_lsn) &&
	       get_u64(o, "end_time_ns", &b->end_time_ns) && b->end_segment >= b->segment &&
	       b->end_lsn >= b->lsn;
}

int s3_head_parse(const char *text, size_t len, struct s3_head *h, char *why, size_t whylen)
{
	json_error_t err;
	json_t *o = json_loadb(text, len, 0, &err), *bases, *b, *pending;
	const char *group;
	uint64_t format = 0;
	size_t i;

	memset(h, 0, sizeof *h);
	if (!o) {
		snprintf(why, whylen, "HEAD is not JSON: %s", err.text);
		return -EBADMSG;
	}
	group = json_string_value(json_object_get(o, "group"));
	if (!get_u64(o, "format", &format) || format != S3_HEAD_FORMAT) {
		snprintf(why, whylen, "HEAD has format %llu, this program reads %d",
			 (unsigned long long)format, S3_HEAD_FORMAT);
		goto bad;
	}
	if (!group || strlen(group) != 36 || !get_u64(o, "segment", &h->segment) ||
	    !get_u64(o, "lsn", &h->lsn) || !get_u64(o, "oldest", &h->oldest) ||
	    !get_u64(o, "sealed_ns", &h->sealed_ns) || !get_u64(o, "written_ns", &h->written_ns) ||
	    (h->oldest && h->oldest > h->segment)) {
		snprintf(why, whylen, "HEAD lacks a group, segment, lsn or oldest, or they disagree");
		goto bad;
	}
	/* optional: older HEADs have none */
	if (json_object_get(o, "purge_from") && (!get_u64(o, "purge_from", &h->purge_from) ||
						 h->purge_from > h->oldest)) {
		snprintf(why, whylen, "HEAD's purge_from is past its oldest segment");
		goto bad;
	}
	h->format = (unsigned)format;
	memcpy(h->group, group, 37);
	bases = json_object_get(o, "bases");
	if (!json_is_array(bases) || json_array_size(bases) > S3_BASES_MAX) {
		snprintf(why, whylen, "HEAD has no list of bases, or too long a one");
		goto bad;
	}
	json_array_foreach(bases, i, b) {
		if (!parse_base(b, &h->bases[i], true) ||
		    (i && h->bases[i].segment <= h->bases[i - 1].segment) ||
		    h->bases[i].end_segment > h->segment) {
			snprintf(why, whylen, "HEAD's base %zu is not a base", i);
			goto bad;
		}
	}
	h->nbases = json_array_size(bases);
	pending = json_object_get(o, "pending");
	if (!json_is_null(pending) && pending && !parse_base(pending, &h->pending, false)) {
		snprintf(why, whylen, "HEAD's pending base is not a base");
		goto bad;
	}
	json_decref(o);
	return 0;
bad:
	json_decref(o);
	memset(h, 0, sizeof *h);
	return -EBADMSG;
}

const struct s3_base *s3_head_newest_base(const struct s3_head *h)
{
	return h->nbases ? &h->bases[h->nbases - 1] : NULL;
}

uint64_t s3_head_start(const struct s3_head *h)
{
	const struct s3_base *b = s3_head_newest_base(h);

	if (b && b->segment >= h->oldest)
		return b->segment;
	if (h->pending.segment && h->pending.segment >= h->oldest)
		return h->pending.segment;
	return h->oldest;
}
