/*
 * powerloss.c — the part of recovery that runs when the source lost power
 * (the activity log was left unclean in another boot, actlog.h).
 *
 * Recovery has cut the journal at its first invalid record and redone its
 * tail onto the backing files.  What it cannot see: writes whose bytes
 * reached the backing file while their records did not reach the journal
 * (an O_DIRECT write, or a buffered one the kernel wrote back), and writes
 * whose records survived while their bytes did not.  Both are confined to
 * the extents the activity log held; everywhere else the backing files and
 * the durable journal agree.  The backing files are the truth from now on
 * (every write a guest saw synced is in them); the replicas are brought to
 * them:
 *
 *  - every destination in the catalog gets the live images' hot extents as
 *    dirty extents to hash-compare (only the blocks that differ travel), and
 *    one that was in sync begins a resync for "source power loss" without a
 *    skip (dest_state_mark_all: its segments are valid, SYNC_BEGIN makes
 *    its remote say it is not consistent until SYNC_END);
 *  - a destination that was in the middle of a resync may have had its
 *    progress (consumed dirty extents) saved while the resync records that
 *    carried them were lost: it begins a full resync instead;
 *  - with no destination at all, the journal itself must agree with the
 *    backing files again (aimctl ship, a replay): the hot extents' current
 *    content is journaled, as after a failed backing write.
 *
 * The catalog transaction is made durable before the activity log is
 * marked with this boot: a crash in between hands the extents over again
 * (every step is idempotent).
 */
#include "journal_i.h"
#include "catalog.h"
#include "log.h"
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A dirty extent's length that means "to the end of the image". */
#define TO_THE_END (1ULL << 62)

struct hot {
	uint32_t image;
	uint64_t off, len;
};

struct handover {
	struct journal *j;
	struct catalog *cat;
	const struct hot *v;
	size_t n;
	size_t dests;             /* destinations that got extents */
	int err;
};

static void image_name(struct journal *j, uint32_t id, char *buf, size_t len)
{
	struct image *im;

	pthread_mutex_lock(&j->lock);
	im = registry_find_id(j, id);
	snprintf(buf, len, "%s", im && im->live ? im->name : "");
	pthread_mutex_unlock(&j->lock);
}

static int to_destination(void *arg, const char *dest)
{
	struct handover *h = arg;
	char name[SEG_NAME_MAX + 1];
	size_t added = 0;

	for (size_t i = 0; i < h->n && !h->err; i++) {
		image_name(h->j, h->v[i].image, name, sizeof name);
		if (h->j->cfg.dest_wants && !h->j->cfg.dest_wants(h->j->cfg.hook_ctx, dest, name))
			continue;
		h->err = catalog_dirty_add(h->cat, dest, h->v[i].image, h->v[i].off, h->v[i].len, true);
		added++;
	}
	if (added)
		h->dests++;
	return h->err;
}

/* No destination: journal what the hot extents hold now. */
static int journal_hot(struct journal *j, const struct hot *v, size_t n)
{
	int r = 0;

	for (size_t i = 0; i < n && r == 0; i++) {
		char name[SEG_NAME_MAX + 1];
		struct image *im;
		int fd;

		image_name(j, v[i].image, name, sizeof name);
		pthread_mutex_lock(&j->lock);
		im = registry_find_id(j, v[i].image);
		if (im)
			im->refs++;
		pthread_mutex_unlock(&j->lock);
		if (!im)
			continue;
		fd = openat(j->cfg.backing_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd >= 0) {
			r = journal_record_truth(j, im, fd, v[i].off, v[i].len);
			close(fd);
		}
		journal_image_put(j, im);
	}
	return r;
}

int powerloss_recover(struct journal *j, struct catalog *cat, const struct actlog_found *found)
{
	struct hot *v = calloc(found->n + 1, sizeof *v);
	struct handover h = { .j = j, .cat = cat };
	uint64_t bytes = 0;
	size_t n = 0, images = 0;
	int r;

	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < found->n; i++) {
		char name[SEG_NAME_MAX + 1];
		const struct actlog_extent *e = &found->v[i];

		image_name(j, e->image, name, sizeof name);
		if (!name[0])
			continue; /* gone: its UNLINK is in the journal or was journaled now */
		v[n].image = e->image;
		if (e->extent == ACTLOG_WHOLE) {
			v[n].off = 0;
			v[n].len = TO_THE_END;
		} else {
			v[n].off = (uint64_t)e->extent << found->extent_shift;
			v[n].len = 1ULL << found->extent_shift;
		}
		bytes += v[n].len == TO_THE_END ? 0 : v[n].len;
		n++;
	}
	for (size_t i = 0; i < n; i++) {
		bool seen = false;

		for (size_t k = 0; k < i && !seen; k++)
			seen = v[k].image == v[i].image;
		images += !seen;
	}
	log_warn("the source lost power (the last mount ended without unmounting, in another"
		 " boot): %zu extents of %zu images may differ between the backing files and"
		 " the journal (%" PRIu64 " bytes, whole images not counted)", n, images, bytes);
	h.v = v;
	h.n = n;
	r = catalog_begin(cat);
	if (r == 0) {
		r = catalog_dests_each(cat, to_destination, &h);
		if (r == 0)
			r = h.err;
		if (r == 0)
			r = dest_state_mark_all(cat, DEST_REASON_POWER_LOSS);
		if (r == 0)
			r = catalog_commit(cat);
		else
			catalog_rollback(cat);
	}
	if (r == 0)
		r = catalog_make_durable(cat);
	if (r == 0 && h.dests)
		log_warn("source power loss: every destination compares those extents and receives"
			 " the blocks that differ; each says it is not consistent until then");
	if (r == 0 && !h.dests && n) {
		log_info("source power loss without destinations: journaling what those extents"
			 " hold now, so that the journal agrees with the backing files");
		r = journal_hot(j, v, n);
	}
	if (r < 0)
		log_error("recovery after a power loss: %s", strerror(-r));
	free(v);
	return r;
}
