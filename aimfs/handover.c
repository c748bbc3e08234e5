/*
 * handover.c — what recovery does with parts of images it cannot vouch
 * the replicas for: the extents a power loss may have left different
 * between the journal and the backing files (powerloss.c), and images
 * changed while aimfs was stopped (reconcile.c).
 *
 * The backing files are the truth.  Every destination that mirrors such an
 * image gets the extents as dirty extents to hash-compare (only the blocks
 * that differ travel), and one that was in sync begins a resync for the
 * reason given, without a skip (dest_state_mark_all: its segments are
 * valid; SYNC_BEGIN makes its remote say it is not consistent until
 * SYNC_END).  Where no destination mirrors an image, the journal itself
 * must agree with the backing files again (aimctl ship, a replay): what
 * its extents hold now is journaled, as after a failed backing write.
 *
 * The catalog transaction is made durable before the caller lets recovery
 * finish, so a crash in between hands the extents over again (every step
 * is idempotent).
 */
#include "journal_i.h"
#include "catalog.h"
#include "log.h"
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct handover {
	struct journal *j;
	struct catalog *cat;
	const struct suspect_extent *v;
	size_t n;
	bool *taken;              /* v[i] went to a destination */
	enum dest_reason why;
	bool mark_all;            /* every destination, not only those that took some */
	size_t dests;             /* destinations that got extents */
	int err;
};

void handover_image_name(struct journal *j, uint32_t id, char *buf, size_t len)
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
		handover_image_name(h->j, h->v[i].image, name, sizeof name);
		if (!name[0])
			continue;
		if (h->j->cfg.dest_wants && !h->j->cfg.dest_wants(h->j->cfg.hook_ctx, dest, name))
			continue;
		h->err = catalog_dirty_add(h->cat, dest, h->v[i].image, h->v[i].off, h->v[i].len, true);
		h->taken[i] = true;
		added++;
	}
	if (added)
		h->dests++;
	if (added && !h->err && !h->mark_all)
		h->err = dest_state_mark(h->cat, dest, h->why);
	return h->err;
}

/* Extents no destination took: journal what they hold now. */
static int journal_truth(struct journal *j, const struct suspect_extent *v, const bool *taken,
			 size_t n)
{
	int r = 0;

	for (size_t i = 0; i < n && r == 0; i++) {
		char name[SEG_NAME_MAX + 1];
		struct image *im;
		int fd;

		if (taken[i])
			continue;
		pthread_mutex_lock(&j->lock);
		im = registry_find_id(j, v[i].image);
		if (im && im->live) {
			im->refs++;
			snprintf(name, sizeof name, "%s", im->name);
		} else {
			im = NULL;
		}
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

int handover_recover(struct journal *j, struct catalog *cat, const struct suspect_extent *v,
		     size_t n, int why, bool mark_all)
{
	struct handover h = { .j = j, .cat = cat, .v = v, .n = n,
			      .taken = calloc(n + 1, sizeof *h.taken),
			      .why = (enum dest_reason)why, .mark_all = mark_all };
	size_t left = 0;
	int r;

	if (!h.taken)
		return -ENOMEM;
	r = catalog_begin(cat);
	if (r == 0) {
		r = catalog_dests_each(cat, to_destination, &h);
		if (r == 0)
			r = h.err;
		if (r == 0 && mark_all)
			r = dest_state_mark_all(cat, (enum dest_reason)why);
		if (r == 0)
			r = catalog_commit(cat);
		else
			catalog_rollback(cat);
	}
	if (r == 0)
		r = catalog_make_durable(cat);
	if (r == 0 && h.dests)
		log_warn("%s: every destination compares what may differ and receives the blocks"
			 " that do; each says it is not consistent until then",
			 dest_reason_text((enum dest_reason)why));
	for (size_t i = 0; i < n; i++)
		left += !h.taken[i];
	if (r == 0 && left) {
		log_info("%s, and no destination mirrors what may differ: journaling it as it"
			 " is now, so that the journal agrees with the backing files",
			 dest_reason_text((enum dest_reason)why));
		r = journal_truth(j, v, h.taken, n);
	}
	free(h.taken);
	return r;
}
