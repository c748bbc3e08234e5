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
 * (every write a guest saw synced is in them): the hot extents of the live
 * images go to the destinations, or into the journal if there is none
 * (handover.c).  A destination that was in the middle of a resync may have
 * had its progress (consumed dirty extents) saved while the resync records
 * that carried them were lost: it begins a full resync instead
 * (dest_state_mark_all).  The catalog transaction is made durable before
 * the activity log is marked with this boot: a crash in between hands the
 * extents over again.
 */
#include "journal_i.h"
#include "catalog.h"
#include "log.h"
#include "transport.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

int powerloss_recover(struct journal *j, struct catalog *cat, const struct actlog_found *found)
{
	struct suspect_extent *v = calloc(found->n + 1, sizeof *v);
	uint64_t bytes = 0;
	size_t n = 0, images = 0;
	int r;

	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < found->n; i++) {
		char name[SEG_NAME_MAX + 1];
		const struct actlog_extent *e = &found->v[i];

		handover_image_name(j, e->image, name, sizeof name);
		if (!name[0])
			continue; /* gone: its UNLINK is in the journal or was journaled now */
		v[n].image = e->image;
		if (e->extent == ACTLOG_WHOLE) {
			v[n].off = 0;
			v[n].len = SUSPECT_TO_THE_END;
		} else {
			v[n].off = (uint64_t)e->extent << found->extent_shift;
			v[n].len = 1ULL << found->extent_shift;
		}
		bytes += v[n].len == SUSPECT_TO_THE_END ? 0 : v[n].len;
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
	r = handover_recover(j, cat, v, n, DEST_REASON_POWER_LOSS, true);
	if (r < 0)
		log_error("recovery after a power loss: %s", strerror(-r));
	free(v);
	return r;
}
