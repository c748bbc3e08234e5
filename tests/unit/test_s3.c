/* test_s3.c — the object-store client's pure parts: destination URLs,
 * key encoding as SigV4 needs it, the SHA-256 sent with every body, and
 * the HEAD object (written, read back, hostile ones refused). */
#include "check.h"
#include "s3.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void test_urls(void)
{
	static const struct {
		const char *url;
		const char *endpoint, *bucket, *prefix; /* NULL endpoint: refused */
	} t[] = {
		{ "http://127.0.0.1:7480/bkt", "http://127.0.0.1:7480", "bkt", "" },
		{ "https://s3.example/bkt/a/b/", "https://s3.example", "bkt", "a/b" },
		{ "https://s3.example/bkt//a", "https://s3.example", "bkt", "a" },
		{ "https://s3.example/bkt/a//b", NULL, NULL, NULL },
		{ "https://s3.example", NULL, NULL, NULL },
		{ "https://s3.example/", NULL, NULL, NULL },
		{ "https://s3.example/b", NULL, NULL, NULL },          /* too short a bucket */
		{ "ftp://s3.example/bkt", NULL, NULL, NULL },
		{ "https:///bkt", NULL, NULL, NULL },
		{ "https://s3.example/bkt?x=1", NULL, NULL, NULL },
		{ "https://s3.example/bkt/a%20b", NULL, NULL, NULL },
		{ "https://s3.example/bkt/a b", NULL, NULL, NULL },
	};
	char why[200];

	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
		struct s3_url u;
		int r = s3_url_parse(t[i].url, &u, why, sizeof why);

		if (!t[i].endpoint) {
			CHECK_MSG(r == -EINVAL && why[0], "%s accepted", t[i].url);
			continue;
		}
		CHECK_MSG(r == 0, "%s: %s", t[i].url, why);
		if (r)
			continue;
		CHECK_MSG(!strcmp(u.endpoint, t[i].endpoint) && !strcmp(u.bucket, t[i].bucket) &&
			  !strcmp(u.prefix, t[i].prefix), "%s -> %s %s %s", t[i].url, u.endpoint,
			  u.bucket, u.prefix);
		s3_url_free(&u);
	}
}

static void test_encoding(void)
{
	char out[80];

	CHECK(s3_key_encode("a/b-c_d.e~f/0123456789.aimj", out, sizeof out) == 0 &&
	      !strcmp(out, "a/b-c_d.e~f/0123456789.aimj"));
	CHECK(s3_key_encode("a b+c=d&%", out, sizeof out) == 0 &&
	      !strcmp(out, "a%20b%2Bc%3Dd%26%25"));
	CHECK(s3_key_encode("\xc3\xa9", out, sizeof out) == 0 && !strcmp(out, "%C3%A9"));
	CHECK(s3_key_encode("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", out,
			    sizeof out) == -ENAMETOOLONG);
	s3_sha256_hex("", 0, out);
	CHECK(!strcmp(out, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
	s3_sha256_hex("abc", 3, out);
	CHECK(!strcmp(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
}

static void test_head(void)
{
	struct s3_head h = { 0 }, back;
	char why[200], *text;

	strcpy(h.group, "0123abcd-0000-4000-8000-00000000abcd");
	h.segment = 42;
	h.lsn = 1000;
	h.sealed_ns = 5;
	h.oldest = 3;
	h.written_ns = 6;
	h.nbases = 2;
	h.bases[0] = (struct s3_base){ 3, 10, 1, 5, 90, 2 };
	h.bases[1] = (struct s3_base){ 20, 500, 3, 22, 600, 4 };
	h.pending = (struct s3_base){ .segment = 40, .lsn = 950, .time_ns = 7 };
	text = s3_head_dump(&h);
	CHECK(text && s3_head_parse(text, strlen(text), &back, why, sizeof why) == 0);
	CHECK(back.segment == 42 && back.lsn == 1000 && back.oldest == 3 && back.nbases == 2);
	CHECK(back.bases[1].end_lsn == 600 && back.pending.segment == 40 && back.pending.lsn == 950);
	CHECK(!strcmp(back.group, h.group));
	CHECK(s3_head_newest_base(&back) == &back.bases[1]);
	CHECK(s3_head_start(&back) == 20);
	back.nbases = 0;
	CHECK(s3_head_start(&back) == 40);
	back.pending.segment = 0;
	CHECK(s3_head_start(&back) == 3);
	free(text);

	static const char *const bad[] = {
		"", "[]", "{\"format\":2}",
		"{\"format\":1,\"group\":\"x\",\"segment\":1,\"lsn\":1,\"oldest\":1,\"sealed_ns\":0,"
		"\"written_ns\":0,\"bases\":[],\"pending\":null}",
		/* oldest past the head */
		"{\"format\":1,\"group\":\"0123abcd-0000-4000-8000-00000000abcd\",\"segment\":1,"
		"\"lsn\":1,\"oldest\":2,\"sealed_ns\":0,\"written_ns\":0,\"bases\":[],\"pending\":null}",
		/* a base ending past the head */
		"{\"format\":1,\"group\":\"0123abcd-0000-4000-8000-00000000abcd\",\"segment\":5,"
		"\"lsn\":1,\"oldest\":1,\"sealed_ns\":0,\"written_ns\":0,\"bases\":[{\"segment\":1,"
		"\"lsn\":1,\"time_ns\":0,\"end_segment\":9,\"end_lsn\":3,\"end_time_ns\":0}],"
		"\"pending\":null}",
		/* a negative number */
		"{\"format\":1,\"group\":\"0123abcd-0000-4000-8000-00000000abcd\",\"segment\":-5,"
		"\"lsn\":1,\"oldest\":1,\"sealed_ns\":0,\"written_ns\":0,\"bases\":[],\"pending\":null}",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		CHECK_MSG(s3_head_parse(bad[i], strlen(bad[i]), &back, why, sizeof why) == -EBADMSG,
			  "bad HEAD %zu accepted", i);
}

int main(void)
{
	test_urls();
	test_encoding();
	test_head();
	return check_done("test_s3");
}
