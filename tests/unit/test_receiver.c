/*
 * test_receiver.c — the receiver's upload path parser, table-driven: every
 * way a hostile URL could try to leave the inbox must be refused with a
 * reason, and the well-formed ones must split exactly.  And the rule that
 * decides whether a segment may use the inbox's reserve (the one its
 * group can apply next).
 */
#include "check.h"
#include "remote_i.h"

#include <inttypes.h>
#include <stdbool.h>
#include <string.h>

#define G "0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5"
#define F "00000000000000000042.aimj"

/* inbox_run_reaches: applied, the segment numbers in the inbox (0 ends
 * the list), the segment arriving, whether its group can apply it next. */
static void test_run_reaches(void)
{
	static const struct {
		uint64_t applied, here[6], number;
		bool next;
	} cases[] = {
		{ 0, { 0 }, 1, true },             /* the first */
		{ 4, { 0 }, 5, true },             /* the next */
		{ 4, { 0 }, 3, true },             /* older: a duplicate, compared */
		{ 4, { 5, 6 }, 7, true },          /* all between are here */
		{ 4, { 6, 5 }, 7, true },          /* (the listing is sorted first) */
		{ 4, { 0 }, 9, true },             /* none held: a resync's first */
		{ 4, { 6 }, 7, false },            /* 5 missing */
		{ 4, { 5, 7 }, 8, false },         /* 6 missing */
		{ 4, { 5, 6, 9 }, 7, true },       /* later ones do not matter */
		{ 4, { 2, 3, 5 }, 6, true },       /* applied ones left behind neither */
		/* The race CI met: segment 1 being applied, 2 in the inbox, 3
		 * arriving.  Listed after the group applied 1 and removed it:
		 * with the state read after the listing (1 applied) 3 is next;
		 * with the one read before (0) it looked as if 1 were missing. */
		{ 1, { 2 }, 3, true },
		{ 0, { 2 }, 3, false },
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct inbox_entry e[6];
		size_t n = 0;

		for (; n < 6 && cases[i].here[n]; n++)
			e[n] = (struct inbox_entry){ .number = cases[i].here[n] };
		/* sorted, as inbox_scan lists them */
		for (size_t a = 1; a < n; a++)
			for (size_t b = a; b > 0 && e[b - 1].number > e[b].number; b--) {
				struct inbox_entry t = e[b];

				e[b] = e[b - 1];
				e[b - 1] = t;
			}
		CHECK_MSG(inbox_run_reaches(e, n, cases[i].applied, cases[i].number) ==
			  cases[i].next, "case %zu: applied %" PRIu64 ", segment %" PRIu64
			  ": expected %s", i, cases[i].applied, cases[i].number,
			  cases[i].next ? "next" : "not next");
	}
}

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
	test_run_reaches();
	return check_done("test_receiver");
}
