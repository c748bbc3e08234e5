/*
 * point.c — a point of a group's stream as an operator names it: an LSN, a
 * time, or a mark.  One parser for every program that takes one: `aimctl
 * replay --until` and `check --from/--until`, which look the point up in
 * segment files, and aim-remote's hold and promote, which stop a group
 * there as its segments arrive.  What a point means in a stream (which
 * record it names) is each user's business; the text is parsed here only.
 *
 * Thread safety: pure functions.
 */
#include "format.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Parses digits into *out (no sign, no overflow); the rest in *end. */
static bool parse_u64(const char *p, uint64_t *out, const char **end)
{
	uint64_t v = 0;

	if (!isdigit((unsigned char)*p))
		return false;
	for (; isdigit((unsigned char)*p); p++) {
		if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
			return false;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	*out = v;
	*end = p;
	return true;
}

/* ".123" -> nanoseconds (at most 9 digits count). */
static const char *parse_fraction(const char *p, uint64_t *ns)
{
	uint64_t scale = 100000000ULL;

	*ns = 0;
	if (*p != '.' && *p != ',')
		return p;
	for (p++; isdigit((unsigned char)*p); p++) {
		*ns += (uint64_t)(*p - '0') * scale;
		scale /= 10;
	}
	return p;
}

static int parse_time(const char *t, uint64_t *ns, char *err, size_t errlen)
{
	uint64_t sec, frac;
	const char *p;
	struct tm tm;
	long off = 0;
	time_t when;

	if (*t == '@') {
		if (!parse_u64(t + 1, &sec, &p)) {
			snprintf(err, errlen, "\"%s\" is not an epoch time (@SECONDS[.FRACTION])", t);
			return -EINVAL;
		}
		p = parse_fraction(p, &frac);
		if (*p || sec > UINT64_MAX / 1000000000ULL - 1) {
			snprintf(err, errlen, "\"%s\" is not an epoch time (@SECONDS[.FRACTION])", t);
			return -EINVAL;
		}
		*ns = sec * 1000000000ULL + frac;
		return 0;
	}
	memset(&tm, 0, sizeof tm);
	p = strptime(t, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!p)
		p = strptime(t, "%Y-%m-%d %H:%M:%S", &tm);
	if (!p)
		goto bad;
	p = parse_fraction(p, &frac);
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		int sign = *p == '-' ? -1 : 1, hh, mm = 0;

		if (!isdigit((unsigned char)p[1]) || !isdigit((unsigned char)p[2]))
			goto bad;
		hh = (p[1] - '0') * 10 + (p[2] - '0');
		p += 3;
		if (*p == ':')
			p++;
		if (isdigit((unsigned char)p[0]) && isdigit((unsigned char)p[1])) {
			mm = (p[0] - '0') * 10 + (p[1] - '0');
			p += 2;
		}
		if (hh > 23 || mm > 59)
			goto bad;
		off = sign * (hh * 3600L + mm * 60L);
	}
	if (*p)
		goto bad;
	when = timegm(&tm);
	if (when == (time_t)-1 || when - off < 0)
		goto bad;
	*ns = (uint64_t)(when - off) * 1000000000ULL + frac;
	return 0;
bad:
	snprintf(err, errlen, "\"%s\" is not a time: give ISO 8601 (2024-05-01T12:00:00Z,"
		 " 2024-05-01T14:00:00.5+02:00; no zone is UTC) or @EPOCH_SECONDS", t);
	return -EINVAL;
}

int point_parse(const char *text, struct point_spec *p, char *err, size_t errlen)
{
	const char *end;

	memset(p, 0, sizeof *p);
	snprintf(p->text, sizeof p->text, "%s", text);
	if (strncasecmp(text, "mark:", 5) == 0) {
		const char *name = text + 5;

		if (!seg_mark_label_valid(name, strlen(name))) {
			snprintf(err, errlen, "\"%s\": a mark's name is 1 to %d bytes without control"
				 " characters", text, SEG_MARK_MAX);
			return -EINVAL;
		}
		p->kind = POINT_MARK;
		snprintf(p->mark, sizeof p->mark, "%s", name);
		return 0;
	}
	if (strncasecmp(text, "lsn:", 4) == 0 || isdigit((unsigned char)text[0])) {
		const char *num = strncasecmp(text, "lsn:", 4) == 0 ? text + 4 : text;

		if (parse_u64(num, &p->lsn, &end) && !*end && p->lsn > 0) {
			p->kind = POINT_LSN;
			return 0;
		}
		/* "2024-05-01T..." starts with digits too */
		if (num == text + 4 || !strchr(text, '-')) {
			snprintf(err, errlen, "\"%s\" is not an LSN (a record's number, >= 1)", text);
			return -EINVAL;
		}
	}
	p->kind = POINT_TIME;
	return parse_time(strncasecmp(text, "time:", 5) == 0 ? text + 5 : text, &p->time_ns, err,
			  errlen);
}
