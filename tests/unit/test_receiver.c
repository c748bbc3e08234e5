/*
 * test_receiver.c — the receiver's upload path parser, table-driven: every
 * way a hostile URL could try to leave the inbox must be refused with a
 * reason, and the well-formed ones must split exactly.
 */
#include "check.h"
#include "remote_i.h"

#include <string.h>

#define G "0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5"
#define F "00000000000000000042.aimj"

int main(void)
{
	static const struct { const char *url; int ok; } cases[] = {
		{ "/" G "/" F, 1 },
		{ "/aim/" G "/" F, 1 },
		{ "/a/b-c_d.e~f/" G "/" F, 1 },
		{ "/" G "/" F "/", 0 },                       /* trailing slash */
		{ "/../" G "/" F, 0 },
		{ "/aim/../" G "/" F, 0 },
		{ "/./" G "/" F, 0 },
		{ "/%2e%2e/" G "/" F, 0 },                    /* encoded traversal */
		{ "/aim%2f..%2f/" G "/" F, 0 },
		{ "/aim/" G "%2f" F, 0 },
		{ "/aim\\..\\/" G "/" F, 0 },                 /* backslashes */
		/* empty prefix components are harmless: the prefix is ignored */
		{ "//" G "/" F, 1 },
		{ "/aim//" G "/" F, 1 },
		{ "/aim/" G "/../" F, 0 },
		{ "/aim/" G "/" F "/x", 0 },
		{ "/aim/0C1D2E3F-4A5B-4C6D-8E7F-8091A2B3C4D5/" F, 0 }, /* uppercase uuid */
		{ "/aim/" G "x/" F, 0 },
		{ "/aim/not-a-uuid/" F, 0 },
		{ "/aim/" G "/0000000000000000042.aimj", 0 },   /* 19 digits */
		{ "/aim/" G "/000000000000000000042.aimj", 0 }, /* 21 digits */
		{ "/aim/" G "/00000000000000000000.aimj", 0 },  /* segment 0 */
		{ "/aim/" G "/00000000000000000042.open", 0 },
		{ "/aim/" G "/00000000000000000042.aimj.tmp", 0 },
		{ "/aim/" G "/" F "?x=1", 0 },
		{ "/aim/" G "/" F "#x", 0 },
		{ "/aim/ /" G "/" F, 0 },
		{ "/aim/\n/" G "/" F, 0 },
		{ "", 0 },
		{ "/", 0 },
		{ F, 0 },
		{ G "/" F, 0 },                               /* not absolute */
	};
	char group[37], file[SEG_FILE_NAME_LEN + 1], longurl[4096];
	uint8_t uuid[16];
	uint64_t number;
	const char *why;

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int r;

		why = NULL;
		r = receiver_parse_path(cases[i].url, group, uuid, file, &number, &why);
		CHECK_MSG((r == 0) == cases[i].ok, "\"%s\": got %d (%s)", cases[i].url, r,
			  why ? why : "");
		if (!cases[i].ok)
			CHECK_MSG(why && *why, "\"%s\": refused without a reason", cases[i].url);
		if (cases[i].ok && r == 0) {
			CHECK(strcmp(group, G) == 0);
			CHECK(strcmp(file, F) == 0);
			CHECK(number == 42);
			CHECK(uuid[0] == 0x0c && uuid[15] == 0xd5);
		}
	}
	/* overlong: a prefix of 3000 bytes */
	memset(longurl, 0, sizeof longurl);
	longurl[0] = '/';
	memset(longurl + 1, 'a', 3000);
	strcat(longurl, "/" G "/" F);
	CHECK(receiver_parse_path(longurl, group, uuid, file, &number, &why) < 0);
	return check_done("test_receiver");
}
