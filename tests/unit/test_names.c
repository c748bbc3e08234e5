/*
 * test_names.c — the image id <-> name table that the segment decoder uses
 * to follow CREATE, UNLINK and RENAME records.  Binds, lookups, collisions,
 * file and directory renames, and enough churn (hundreds of thousands of
 * entries, long chains of renames of one image) to exercise resizing and
 * tombstones: a table that forgets to count its tombstones loops forever
 * here instead of in a decoder fed a hostile segment.
 */
#include "check.h"
#include "format.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int name_is(const struct names *n, uint32_t id, const char *want)
{
	const char *got = names_get(n, id);

	if (!want)
		return got == NULL;
	return got && strcmp(got, want) == 0;
}

static uint32_t find(const struct names *n, const char *name)
{
	return names_find(n, name, strlen(name));
}

static int bind(struct names *n, uint32_t id, const char *name)
{
	return names_bind(n, id, name, strlen(name));
}

static void test_basics(void)
{
	struct names *n = names_new();
	uint32_t replaced = 99;

	CHECK(n != NULL);
	CHECK(names_count(n) == 0);
	CHECK(names_get(n, 1) == NULL);
	CHECK(find(n, "a") == 0);
	CHECK(names_unbind(n, 1) == -ENOENT);

	CHECK(bind(n, 1, "vm1.qcow2") == 0);
	CHECK(bind(n, 2, "disks/vm2.raw") == 0);
	CHECK(names_count(n) == 2);
	CHECK(name_is(n, 1, "vm1.qcow2"));
	CHECK(name_is(n, 2, "disks/vm2.raw"));
	CHECK(find(n, "vm1.qcow2") == 1);
	CHECK(find(n, "disks/vm2.raw") == 2);
	CHECK(find(n, "vm1.qcow") == 0);
	CHECK(find(n, "vm1.qcow2x") == 0);
	CHECK(names_get(n, 3) == NULL);

	/* lengths, not NUL terminators, delimit names */
	CHECK(names_find(n, "vm1.qcow2-and-more", 9) == 1);
	CHECK(names_bind(n, 3, "abcdef", 3) == 0);
	CHECK(name_is(n, 3, "abc"));
	CHECK(find(n, "abc") == 3);

	/* collisions on either key */
	CHECK(bind(n, 1, "other") == -EEXIST);
	CHECK(bind(n, 4, "vm1.qcow2") == -EEXIST);
	CHECK(names_count(n) == 3);
	CHECK(name_is(n, 1, "vm1.qcow2"));
	CHECK(find(n, "other") == 0);
	CHECK(names_get(n, 4) == NULL);

	/* unbind, then both keys are free again */
	CHECK(names_unbind(n, 1) == 0);
	CHECK(names_unbind(n, 1) == -ENOENT);
	CHECK(names_get(n, 1) == NULL);
	CHECK(find(n, "vm1.qcow2") == 0);
	CHECK(names_count(n) == 2);
	CHECK(bind(n, 1, "again") == 0);
	CHECK(bind(n, 5, "vm1.qcow2") == 0);
	CHECK(name_is(n, 1, "again") && find(n, "vm1.qcow2") == 5);

	/* rename: plain, to itself, onto another image, unknown id */
	CHECK(names_rename(n, 1, "renamed", 7, &replaced) == 0 && replaced == 0);
	CHECK(name_is(n, 1, "renamed") && find(n, "again") == 0 && find(n, "renamed") == 1);
	replaced = 99;
	CHECK(names_rename(n, 1, "renamed", 7, &replaced) == 0 && replaced == 0);
	CHECK(name_is(n, 1, "renamed"));
	CHECK(names_rename(n, 1, "vm1.qcow2", 9, &replaced) == 0 && replaced == 5);
	CHECK(name_is(n, 1, "vm1.qcow2") && names_get(n, 5) == NULL);
	CHECK(find(n, "renamed") == 0);
	CHECK(names_rename(n, 42, "x", 1, &replaced) == -ENOENT && replaced == 0);
	CHECK(names_count(n) == 3);

	names_clear(n);
	CHECK(names_count(n) == 0);
	CHECK(names_get(n, 1) == NULL && find(n, "vm1.qcow2") == 0);
	CHECK(bind(n, 1, "vm1.qcow2") == 0 && name_is(n, 1, "vm1.qcow2"));
	names_free(n);
	names_free(NULL);
}

static int count_each(void *ctx, uint32_t id, const char *name)
{
	uint64_t *sum = ctx;

	(void)name;
	sum[0]++;
	sum[1] += id;
	return 0;
}

static int stop_at_three(void *ctx, uint32_t id, const char *name)
{
	int *seen = ctx;

	(void)id;
	(void)name;
	return ++*seen == 3 ? 7 : 0;
}

static void test_each(void)
{
	struct names *n = names_new();
	uint64_t sum[2] = { 0, 0 };
	int seen = 0;

	CHECK(names_each(n, count_each, sum) == 0 && sum[0] == 0);
	for (uint32_t id = 1; id <= 10; id++) {
		char name[16];

		snprintf(name, sizeof name, "img%u", id);
		CHECK(bind(n, id, name) == 0);
	}
	CHECK(names_each(n, count_each, sum) == 0);
	CHECK(sum[0] == 10 && sum[1] == 55);
	CHECK(names_each(n, stop_at_three, &seen) == 7 && seen == 3);
	names_free(n);
}

static void test_rename_dir(void)
{
	static const struct {
		uint32_t id;
		const char *before, *after;
	} imgs[] = {
		{ 1, "a", "a" },             /* a file named like the directory: not under it */
		{ 2, "a/x", "b/x" },
		{ 3, "a/y/z", "b/y/z" },
		{ 4, "ab/x", "ab/x" },       /* shares a prefix, not a component */
		{ 5, "c/a/x", "c/a/x" },     /* a/ deeper down is another directory */
		{ 6, "a/a/x", "b/a/x" },
	};
	struct names *n = names_new();

	for (size_t i = 0; i < sizeof imgs / sizeof imgs[0]; i++)
		CHECK(bind(n, imgs[i].id, imgs[i].before) == 0);
	CHECK(names_rename_dir(n, "a", 1, "b", 1) == 3);
	for (size_t i = 0; i < sizeof imgs / sizeof imgs[0]; i++) {
		CHECK_MSG(name_is(n, imgs[i].id, imgs[i].after), "id %u is %s, want %s",
			  imgs[i].id, names_get(n, imgs[i].id), imgs[i].after);
		CHECK(find(n, imgs[i].after) == imgs[i].id);
	}
	CHECK(find(n, "a/x") == 0 && find(n, "a/y/z") == 0);
	CHECK(names_count(n) == 6);

	/* deeper and longer names; nothing under the old name is a no-op */
	CHECK(names_rename_dir(n, "b/y", 3, "deep/er/dir", 11) == 1);
	CHECK(name_is(n, 3, "deep/er/dir/z"));
	CHECK(names_rename_dir(n, "nothing", 7, "else", 4) == 0);
	/* renaming a directory onto itself changes nothing */
	CHECK(names_rename_dir(n, "b", 1, "b", 1) == 0);
	CHECK(name_is(n, 2, "b/x") && name_is(n, 6, "b/a/x"));

	/*
	 * A directory rename whose target already holds images cannot have
	 * happened on a POSIX source (the target must be an empty directory or
	 * absent), and renaming entry by entry would silently drop whatever
	 * it replaced: refused, and the table is left as it was.
	 */
	CHECK(names_rename_dir(n, "b", 1, "c", 1) == -EEXIST);  /* c/a/x exists */
	CHECK(names_rename_dir(n, "b", 1, "a", 1) == -EEXIST);  /* image named a */
	CHECK(names_rename_dir(n, "deep/er", 7, "deep", 4) == -EEXIST); /* into an ancestor */
	CHECK(name_is(n, 2, "b/x") && name_is(n, 6, "b/a/x") && name_is(n, 5, "c/a/x"));
	CHECK(name_is(n, 3, "deep/er/dir/z") && name_is(n, 1, "a"));
	CHECK(names_count(n) == 6);

	names_free(n);

	/*
	 * Entry order must not matter: with x/y/y/q bound before x/y/q, moving
	 * x/y up onto x one entry at a time used to rename the first onto the
	 * second and then look up the vanished second (a NULL dereference).
	 */
	n = names_new();
	CHECK(bind(n, 1, "x/y/y/q") == 0);
	CHECK(bind(n, 2, "x/y/q") == 0);
	CHECK(names_rename_dir(n, "x/y", 3, "x", 1) == -EEXIST);
	CHECK(name_is(n, 1, "x/y/y/q") && name_is(n, 2, "x/y/q"));
	names_free(n);
}

/*
 * A directory rename keeps every component of the names below it, so only
 * their whole length can break the name rules: a new name over
 * SEG_NAME_MAX bytes is refused, and the table is left as it was, whichever
 * entry is the long one.
 */
static void test_rename_dir_name_limit(void)
{
	static char dir[4094], deep[4092], want[2 + sizeof deep];
	struct names *n = names_new();

	/* a/ holds a short image and one whose name is 4093 bytes ("a/" + 4091) */
	for (size_t i = 0; i < 4091; i++)
		deep[i] = i % 200 == 199 ? '/' : 'q';
	deep[4091] = '\0';
	snprintf(want, sizeof want, "a/%s", deep);
	CHECK(strlen(want) == 4093);
	CHECK(bind(n, 1, "a/short.img") == 0);
	CHECK(bind(n, 2, want) == 0);
	CHECK(bind(n, 3, "other.img") == 0);

	/* "a" -> "abc": 4095 bytes, the limit, is fine */
	CHECK(names_rename_dir(n, "a", 1, "abc", 3) == 2);
	CHECK(strlen(names_get(n, 2)) == SEG_NAME_MAX);
	/* "abc" -> "abcd": 4096 bytes, refused, nothing moved */
	CHECK(names_rename_dir(n, "abc", 3, "abcd", 4) == -ENAMETOOLONG);
	CHECK(name_is(n, 1, "abc/short.img") && strlen(names_get(n, 2)) == SEG_NAME_MAX);
	CHECK(find(n, "abcd/short.img") == 0 && names_count(n) == 3);
	/* a long directory name over a short image name: "s/x" under 4093
	 * bytes is 4095, under 4094 it is refused */
	for (size_t i = 0; i < sizeof dir; i++)
		dir[i] = i % 200 == 199 ? '/' : 'z';
	CHECK(bind(n, 4, "s/x") == 0);
	CHECK(names_rename_dir(n, "s", 1, dir, 4094) == -ENAMETOOLONG);
	CHECK(name_is(n, 4, "s/x"));
	CHECK(names_rename_dir(n, "s", 1, dir, 4093) == 1);
	CHECK(strlen(names_get(n, 4)) == SEG_NAME_MAX);
	names_free(n);
}

/* Many entries: resizing, dense-array moves on unbind, tombstone reuse. */
static void test_many(void)
{
	enum { N = 200000 };
	struct names *n = names_new();
	char name[32];
	int bad = 0;

	for (uint32_t id = 1; id <= N; id++) {
		snprintf(name, sizeof name, "dir%u/img%u", id % 97, id);
		if (bind(n, id, name) != 0)
			bad++;
	}
	CHECK(bad == 0);
	CHECK(names_count(n) == N);
	for (uint32_t id = 2; id <= N; id += 2)
		if (names_unbind(n, id) != 0)
			bad++;
	CHECK(bad == 0);
	CHECK(names_count(n) == N / 2);
	for (uint32_t id = 1; id <= N; id++) {
		snprintf(name, sizeof name, "dir%u/img%u", id % 97, id);
		if (id % 2) {
			if (!name_is(n, id, name) || find(n, name) != id)
				bad++;
		} else if (names_get(n, id) || find(n, name)) {
			bad++;
		}
	}
	CHECK_MSG(bad == 0, "%d lookups wrong after unbinding half", bad);
	/* the freed ids and names are bindable again, crosswise */
	for (uint32_t id = 2; id <= N; id += 2) {
		uint32_t k = id + 2 > N ? 2 : id + 2;

		snprintf(name, sizeof name, "dir%u/img%u", k % 97, k);
		if (bind(n, id, name) != 0)
			bad++;
	}
	CHECK(bad == 0);
	CHECK(names_count(n) == N);
	CHECK(name_is(n, 2, "dir4/img4") && find(n, "dir2/img2") == N);
	for (uint32_t id = 1; id <= N; id++)
		if (names_unbind(n, id) != 0)
			bad++;
	CHECK(bad == 0 && names_count(n) == 0);
	names_free(n);
}

/*
 * One image renamed again and again (a VM's log rotation, or a hostile
 * segment): every rename leaves a tombstone in the name index while the id
 * index reuses its own slot.  The table must still resize or rebuild.
 */
static void test_churn(void)
{
	struct names *n = names_new();
	uint32_t replaced;
	char name[32];
	int bad = 0;

	CHECK(bind(n, 1, "gen0") == 0);
	CHECK(bind(n, 2, "steady") == 0);
	for (int i = 1; i <= 100000; i++) {
		snprintf(name, sizeof name, "gen%d", i);
		if (names_rename(n, 1, name, strlen(name), &replaced) != 0 || replaced)
			bad++;
	}
	CHECK(bad == 0);
	CHECK(name_is(n, 1, "gen100000") && find(n, "gen99999") == 0);
	CHECK(name_is(n, 2, "steady") && names_count(n) == 2);
	/* the same id bound and unbound under ever new names */
	for (int i = 0; i < 100000; i++) {
		snprintf(name, sizeof name, "tmp%d", i);
		if (bind(n, 3, name) != 0 || names_unbind(n, 3) != 0)
			bad++;
	}
	CHECK(bad == 0);
	/* and one name cycling through ever new ids */
	for (uint32_t id = 10; id < 100010; id++)
		if (bind(n, id, "cycle") != 0 || names_unbind(n, id) != 0)
			bad++;
	CHECK(bad == 0 && names_count(n) == 2);
	names_free(n);
}

int main(void)
{
	alarm(120); /* a looping hash table fails the test instead of hanging it */
	test_basics();
	test_each();
	test_rename_dir();
	test_rename_dir_name_limit();
	test_many();
	test_churn();
	return check_done("test_names");
}
