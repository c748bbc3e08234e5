/*
 * names.c — id <-> name table with two open-addressing hash indexes.
 *
 * Entries live in a dense array; the indexes hold entry positions + 1 (0 is
 * an empty slot, TOMB a deleted one).  Removing an entry moves the last entry
 * into its place and fixes that entry's two index slots, so the array stays
 * dense and iteration is cheap.
 */
#include "format.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define TOMB UINT32_MAX

struct entry {
	uint32_t id;
	uint32_t len;
	char *name;
};

struct names {
	struct entry *ents;
	size_t count, cap;
	uint32_t *by_id, *by_name; /* slots: 0 empty, TOMB deleted, else index + 1 */
	size_t slots;              /* power of two */
	size_t used;               /* binds that took a fresh slot since the rebuild */
};

static size_t hash_id(uint32_t id)
{
	uint64_t h = id * 0x9E3779B97F4A7C15ULL;

	return (size_t)(h ^ (h >> 29));
}

static size_t hash_name(const char *s, size_t len)
{
	return (size_t)XXH3_64bits(s, len);
}

struct names *names_new(void)
{
	return calloc(1, sizeof(struct names));
}

void names_clear(struct names *n)
{
	for (size_t i = 0; i < n->count; i++)
		free(n->ents[i].name);
	n->count = 0;
	n->used = 0;
	if (n->slots) {
		memset(n->by_id, 0, n->slots * sizeof *n->by_id);
		memset(n->by_name, 0, n->slots * sizeof *n->by_name);
	}
}

void names_free(struct names *n)
{
	if (!n)
		return;
	names_clear(n);
	free(n->ents);
	free(n->by_id);
	free(n->by_name);
	free(n);
}

/* Slot holding id, or the slot where it would go (first tombstone or empty). */
static size_t slot_of_id(const struct names *n, uint32_t id, bool *found)
{
	size_t mask = n->slots - 1, i = hash_id(id) & mask, tomb = SIZE_MAX;

	for (;; i = (i + 1) & mask) {
		uint32_t s = n->by_id[i];

		if (s == 0) {
			*found = false;
			return tomb != SIZE_MAX ? tomb : i;
		}
		if (s == TOMB) {
			if (tomb == SIZE_MAX)
				tomb = i;
		} else if (n->ents[s - 1].id == id) {
			*found = true;
			return i;
		}
	}
}

static size_t slot_of_name(const struct names *n, const char *name, size_t len, bool *found)
{
	size_t mask = n->slots - 1, i = hash_name(name, len) & mask, tomb = SIZE_MAX;

	for (;; i = (i + 1) & mask) {
		uint32_t s = n->by_name[i];

		if (s == 0) {
			*found = false;
			return tomb != SIZE_MAX ? tomb : i;
		}
		if (s == TOMB) {
			if (tomb == SIZE_MAX)
				tomb = i;
		} else {
			const struct entry *e = &n->ents[s - 1];

			if (e->len == len && memcmp(e->name, name, len) == 0) {
				*found = true;
				return i;
			}
		}
	}
}

/*
 * The two indexes fill at different rates (a renamed entry reuses its
 * id's tombstone but its new name takes a fresh slot), so used counts a
 * bind that took a fresh slot in either: it bounds both loads, and a probe
 * always finds an empty slot.
 */
static void index_entry(struct names *n, size_t idx)
{
	bool found, fresh;
	size_t s;

	s = slot_of_id(n, n->ents[idx].id, &found);
	fresh = n->by_id[s] == 0;
	n->by_id[s] = (uint32_t)idx + 1;
	s = slot_of_name(n, n->ents[idx].name, n->ents[idx].len, &found);
	fresh |= n->by_name[s] == 0;
	n->by_name[s] = (uint32_t)idx + 1;
	if (fresh)
		n->used++;
}

/* Keeps the load (live + tombstones) under half; rebuilds without tombstones. */
static int reserve(struct names *n, size_t extra)
{
	size_t want = n->slots ? n->slots : 64;

	if (n->count + extra > n->cap) {
		size_t cap = n->cap ? n->cap * 2 : 32;
		struct entry *e;

		while (cap < n->count + extra)
			cap *= 2;
		if (cap >= TOMB - 1)
			return -ENOMEM;
		e = realloc(n->ents, cap * sizeof *e);
		if (!e)
			return -ENOMEM;
		n->ents = e;
		n->cap = cap;
	}
	if (n->slots && (n->used + extra) * 2 <= n->slots)
		return 0;
	while ((n->count + extra) * 2 > want)
		want *= 2;
	free(n->by_id);
	free(n->by_name);
	n->by_id = calloc(want, sizeof *n->by_id);
	n->by_name = calloc(want, sizeof *n->by_name);
	if (!n->by_id || !n->by_name) {
		free(n->by_id);
		free(n->by_name);
		n->by_id = n->by_name = NULL;
		n->slots = 0;
		return -ENOMEM;
	}
	n->slots = want;
	n->used = 0;
	for (size_t i = 0; i < n->count; i++)
		index_entry(n, i);
	return 0;
}

int names_bind(struct names *n, uint32_t id, const char *name, size_t len)
{
	bool found;
	char *copy;
	int r;

	r = reserve(n, 1);
	if (r < 0)
		return r;
	slot_of_id(n, id, &found);
	if (found)
		return -EEXIST;
	slot_of_name(n, name, len, &found);
	if (found)
		return -EEXIST;
	copy = malloc(len + 1);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, name, len);
	copy[len] = '\0';
	n->ents[n->count] = (struct entry){ .id = id, .len = (uint32_t)len, .name = copy };
	index_entry(n, n->count);
	n->count++;
	return 0;
}

int names_unbind(struct names *n, uint32_t id)
{
	bool found;
	size_t sid, sname, idx, last;

	if (!n->slots)
		return -ENOENT;
	sid = slot_of_id(n, id, &found);
	if (!found)
		return -ENOENT;
	idx = n->by_id[sid] - 1;
	sname = slot_of_name(n, n->ents[idx].name, n->ents[idx].len, &found);
	n->by_id[sid] = TOMB;
	n->by_name[sname] = TOMB;
	free(n->ents[idx].name);
	last = n->count - 1;
	if (idx != last) {
		/* Move the last entry into the hole and repoint its slots. */
		n->ents[idx] = n->ents[last];
		sid = slot_of_id(n, n->ents[idx].id, &found);
		n->by_id[sid] = (uint32_t)idx + 1;
		sname = slot_of_name(n, n->ents[idx].name, n->ents[idx].len, &found);
		n->by_name[sname] = (uint32_t)idx + 1;
	}
	n->count--;
	return 0;
}

const char *names_get(const struct names *n, uint32_t id)
{
	bool found;
	size_t s;

	if (!n->slots)
		return NULL;
	s = slot_of_id(n, id, &found);
	return found ? n->ents[n->by_id[s] - 1].name : NULL;
}

uint32_t names_find(const struct names *n, const char *name, size_t len)
{
	bool found;
	size_t s;

	if (!n->slots)
		return 0;
	s = slot_of_name(n, name, len, &found);
	return found ? n->ents[n->by_name[s] - 1].id : 0;
}

int names_rename(struct names *n, uint32_t id, const char *new_name, size_t len,
		 uint32_t *replaced)
{
	uint32_t other;
	int r;

	*replaced = 0;
	if (!names_get(n, id))
		return -ENOENT;
	other = names_find(n, new_name, len);
	if (other == id)
		return 0;
	if (other) {
		names_unbind(n, other);
		*replaced = other;
	}
	r = names_unbind(n, id);
	if (r < 0)
		return r;
	return names_bind(n, id, new_name, len);
}

long names_rename_dir(struct names *n, const char *old_dir, size_t old_len,
		      const char *new_dir, size_t new_len)
{
	uint32_t *ids;
	size_t k = 0;
	long done = 0;

	if (n->count == 0 || (old_len == new_len && memcmp(old_dir, new_dir, old_len) == 0))
		return 0;
	ids = malloc(n->count * sizeof *ids);
	if (!ids)
		return -ENOMEM;
	for (size_t i = 0; i < n->count; i++) {
		const struct entry *e = &n->ents[i];

		/*
		 * The target must hold no image (POSIX renames a directory only
		 * onto an empty one); this also makes the one-by-one renames
		 * below collision-free, so their order cannot matter.
		 */
		if (e->len >= new_len && memcmp(e->name, new_dir, new_len) == 0 &&
		    (e->len == new_len || e->name[new_len] == '/')) {
			free(ids);
			return -EEXIST;
		}
		if (e->len > old_len && e->name[old_len] == '/' &&
		    memcmp(e->name, old_dir, old_len) == 0) {
			/*
			 * The rest of the name keeps its components, so only
			 * the whole can outgrow the name rules: a name no
			 * record could carry must not arise from a rename
			 * either (a later UNLINK of it could not be written).
			 */
			if (e->len - old_len + new_len > SEG_NAME_MAX) {
				free(ids);
				return -ENAMETOOLONG;
			}
			ids[k++] = e->id;
		}
	}
	for (size_t i = 0; i < k; i++) {
		const char *cur = names_get(n, ids[i]);
		size_t cur_len = strlen(cur), tail = cur_len - old_len;
		char *nn = malloc(new_len + tail + 1);
		uint32_t replaced;
		int r;

		if (!nn) {
			free(ids);
			return -ENOMEM;
		}
		memcpy(nn, new_dir, new_len);
		memcpy(nn + new_len, cur + old_len, tail + 1);
		r = names_rename(n, ids[i], nn, new_len + tail, &replaced);
		free(nn);
		if (r < 0) {
			free(ids);
			return r;
		}
		done++;
	}
	free(ids);
	return done;
}

size_t names_count(const struct names *n)
{
	return n->count;
}

int names_each(const struct names *n, int (*fn)(void *ctx, uint32_t id, const char *name),
	       void *ctx)
{
	for (size_t i = 0; i < n->count; i++) {
		int r = fn(ctx, n->ents[i].id, n->ents[i].name);

		if (r)
			return r;
	}
	return 0;
}
