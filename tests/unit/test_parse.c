/* test_parse.c — sizes, durations and addresses, accepted and refused. */
#include "check.h"
#include "parse.h"

#include <errno.h>
#include <string.h>

int main(void)
{
	static const struct { const char *in; int ok; uint64_t out; } sizes[] = {
		{ "0", 1, 0 }, { "4096", 1, 4096 }, { "64M", 1, 64ULL << 20 },
		{ "8G", 1, 8ULL << 30 }, { "1KiB", 1, 1024 }, { "2T", 1, 2ULL << 40 },
		{ "", 0, 0 }, { "M", 0, 0 }, { "64Mb", 0, 0 }, { "-1", 0, 0 },
		{ " 5", 0, 0 }, { "99999999999999999999", 0, 0 }, { "17179869184T", 0, 0 },
	};
	static const struct { const char *in; int ok; uint64_t out; } durs[] = {
		{ "2", 1, 2000000000ULL }, { "2s", 1, 2000000000ULL }, { "500ms", 1, 500000000ULL },
		{ "1m", 1, 60000000000ULL }, { "1h", 1, 3600000000000ULL },
		{ "7d", 1, 7 * 86400000000000ULL },
		{ "2 s", 0, 0 }, { "s", 0, 0 }, { "1w", 0, 0 },
	};
	char host[64], buf[32];
	uint16_t port;
	uint64_t v;

	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		int r = parse_size(sizes[i].in, &v);

		CHECK_MSG((r == 0) == sizes[i].ok, "parse_size(\"%s\")", sizes[i].in);
		if (sizes[i].ok)
			CHECK_MSG(v == sizes[i].out, "parse_size(\"%s\") = %llu", sizes[i].in,
				  (unsigned long long)v);
	}
	for (size_t i = 0; i < sizeof durs / sizeof durs[0]; i++) {
		int r = parse_duration(durs[i].in, &v);

		CHECK_MSG((r == 0) == durs[i].ok, "parse_duration(\"%s\")", durs[i].in);
		if (durs[i].ok)
			CHECK(v == durs[i].out);
	}
	CHECK(parse_hostport("127.0.0.1:9380", host, sizeof host, &port) == 0);
	CHECK(strcmp(host, "127.0.0.1") == 0 && port == 9380);
	CHECK(parse_hostport("[::1]:443", host, sizeof host, &port) == 0);
	CHECK(strcmp(host, "::1") == 0 && port == 443);
	CHECK(parse_hostport("localhost", host, sizeof host, &port) == -EINVAL);
	CHECK(parse_hostport("h:99999", host, sizeof host, &port) == -EINVAL);
	CHECK(parse_hostport(":80", host, sizeof host, &port) == -EINVAL);
	/* strtoul would take these: white space, a sign */
	CHECK(parse_hostport("h: 80", host, sizeof host, &port) == -EINVAL);
	CHECK(parse_hostport("h:-0", host, sizeof host, &port) == -EINVAL);
	CHECK(parse_hostport("h:+80", host, sizeof host, &port) == -EINVAL);
	CHECK(parse_uint("0", &v) == 0 && v == 0);
	CHECK(parse_uint("18446744073709551615", &v) == 0 && v == UINT64_MAX);
	CHECK(parse_uint("18446744073709551616", &v) == -EINVAL);
	CHECK(parse_uint(" -5", &v) == -EINVAL);
	CHECK(parse_uint("-5", &v) == -EINVAL);
	CHECK(parse_uint("+5", &v) == -EINVAL);
	CHECK(parse_uint("5 ", &v) == -EINVAL);
	CHECK(parse_uint("1e3", &v) == -EINVAL);
	CHECK(parse_uint("", &v) == -EINVAL);
	CHECK(strcmp(format_size(1536, buf, sizeof buf), "1.5 KiB") == 0);
	CHECK(parse_has_inline_comment("50M   # cap"));
	CHECK(parse_has_inline_comment("a\t#b"));
	CHECK(!parse_has_inline_comment("https://h/a#frag"));
	CHECK(!parse_has_inline_comment("#only"));
	CHECK(!parse_has_inline_comment("vm1*.qcow2 vm7.raw"));
	return check_done("test_parse");
}
