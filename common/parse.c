/*
 * parse.c — strict parsing of sizes, durations and addresses.  Strict means a
 * trailing unknown character is an error: "64Mb" or "2 s" are refused rather
 * than guessed at, because a journal limit read wrongly is an outage.
 */
#include "parse.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_number(const char *s, uint64_t *val, const char **rest)
{
	char *end;
	unsigned long long v;

	if (!s || !isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	*val = v;
	*rest = end;
	return 0;
}

int parse_uint(const char *s, uint64_t *out)
{
	const char *rest;
	uint64_t v;

	if (parse_number(s, &v, &rest) < 0 || *rest)
		return -EINVAL;
	*out = v;
	return 0;
}

static int mul_checked(uint64_t a, uint64_t b, uint64_t *out)
{
	if (b && a > UINT64_MAX / b)
		return -EINVAL;
	*out = a * b;
	return 0;
}

struct unit {
	const char *suffix;
	uint64_t mult;
};

/* A number followed by exactly one of units' suffixes. */
static int parse_with_units(const char *s, const struct unit *units, size_t n, uint64_t *out)
{
	const char *rest;
	uint64_t v;

	if (parse_number(s, &v, &rest) < 0)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (strcmp(rest, units[i].suffix) == 0)
			return mul_checked(v, units[i].mult, out);
	return -EINVAL;
}

int parse_size(const char *s, uint64_t *out)
{
	static const struct unit units[] = {
		{ "", 1 }, { "B", 1 },
		{ "K", 1ULL << 10 }, { "k", 1ULL << 10 }, { "KiB", 1ULL << 10 },
		{ "M", 1ULL << 20 }, { "MiB", 1ULL << 20 },
		{ "G", 1ULL << 30 }, { "GiB", 1ULL << 30 },
		{ "T", 1ULL << 40 }, { "TiB", 1ULL << 40 },
	};

	return parse_with_units(s, units, sizeof units / sizeof units[0], out);
}

int parse_duration(const char *s, uint64_t *out_ns)
{
	static const struct unit units[] = {
		{ "", 1000000000ULL }, { "s", 1000000000ULL }, { "ms", 1000000ULL },
		{ "m", 60000000000ULL }, { "h", 3600000000000ULL }, { "d", 86400000000000ULL },
	};

	return parse_with_units(s, units, sizeof units / sizeof units[0], out_ns);
}

bool parse_has_inline_comment(const char *value)
{
	for (const char *p = strchr(value, '#'); p; p = strchr(p + 1, '#'))
		if (p > value && (p[-1] == ' ' || p[-1] == '\t'))
			return true;
	return false;
}

int parse_hostport(const char *s, char *host, unsigned hostlen, uint16_t *port)
{
	const char *colon, *hstart = s, *hend;
	uint64_t p;

	if (!s || !*s)
		return -EINVAL;
	if (*s == '[') {
		hend = strchr(s, ']');
		if (!hend || hend[1] != ':')
			return -EINVAL;
		hstart = s + 1;
		colon = hend + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			return -EINVAL;
		hend = colon;
	}
	if (hend == hstart || (unsigned)(hend - hstart) >= hostlen)
		return -EINVAL;
	if (parse_uint(colon + 1, &p) < 0 || p > 65535)
		return -EINVAL;
	memcpy(host, hstart, (size_t)(hend - hstart));
	host[hend - hstart] = '\0';
	*port = (uint16_t)p;
	return 0;
}

const char *format_size(uint64_t bytes, char *buf, unsigned buflen)
{
	static const char *const unit[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)bytes;
	unsigned u = 0;

	while (v >= 1024 && u < 4) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, buflen, "%llu B", (unsigned long long)bytes);
	else
		snprintf(buf, buflen, "%.1f %s", v, unit[u]);
	return buf;
}

int parse_secret_file(const char *path, size_t max, char **out)
{
	char buf[8192 + 2];
	size_t n;
	FILE *f;
	int r = 0;

	if (max > sizeof buf - 2)
		max = sizeof buf - 2;
	f = fopen(path, "re");
	if (!f)
		return -errno;
	n = fread(buf, 1, max + 1, f);
	fclose(f);
	buf[n] = '\0';
	while (n && isspace((unsigned char)buf[n - 1]))
		buf[--n] = '\0';
	if (n == 0 || n > max || strpbrk(buf, "\r\n"))
		r = -EINVAL;
	else if (!(*out = strdup(buf)))
		r = -ENOMEM;
	memset(buf, 0, sizeof buf);
	return r;
}
