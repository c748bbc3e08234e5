/*
 * clock.c — wall and monotonic clocks in nanoseconds, ISO 8601 times.
 */
#include "clock.h"

#include <inttypes.h>
#include <stdio.h>

static uint64_t read_clock(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

uint64_t clock_wall_ns(void)
{
	return read_clock(CLOCK_REALTIME);
}

uint64_t clock_mono_ns(void)
{
	return read_clock(CLOCK_MONOTONIC);
}

struct timespec clock_timespec(uint64_t ns)
{
	struct timespec ts = { .tv_sec = (time_t)(ns / 1000000000ULL),
			       .tv_nsec = (long)(ns % 1000000000ULL) };

	return ts;
}

const char *clock_iso8601(uint64_t ns, unsigned digits, char *buf, size_t len)
{
	time_t sec = (time_t)(ns / 1000000000ULL);
	uint64_t frac = ns % 1000000000ULL;
	struct tm tm;
	size_t n;

	if (ns == 0 || !gmtime_r(&sec, &tm)) {
		snprintf(buf, len, "-");
		return buf;
	}
	n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
	if (digits > 9)
		digits = 9;
	for (unsigned d = digits; d < 9; d++)
		frac /= 10;
	if (digits)
		snprintf(buf + n, len - n, ".%0*" PRIu64 "Z", (int)digits, frac);
	else
		snprintf(buf + n, len - n, "Z");
	return buf;
}
