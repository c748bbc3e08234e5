/*
 * filter.c — a segment as a destination limited to some images sees it:
 * only the records of images its patterns select (plus barriers, marks
 * and directories), renumbered into the destination's own gap-free LSN
 * sequence, so its remote validates and applies it like any other.
 *
 * The selected set follows the namespace: an image created under a
 * selected name joins, one renamed to an unselected name leaves (the
 * destination is told to unlink it), one renamed *into* the selection
 * has no content there and needs a resync (logged).
 *
 * The same re-encoding replaces records tagged for other destinations'
 * resyncs with SKIP records (so that an unlimited destination's LSNs stay
 * the source's), and in skeleton mode (a destination tracking dirty extents after
 * an overflow) every data record, keeping the namespace, truncates and
 * barriers that the data will later be resynchronised against (and none
 * of the destination's own SYNC_ENDs: a skeleton is never consistent).
 */
#include "transport_i.h"
#include "log.h"
#include "format.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct filter {
	const struct dest_config *d;
	uint32_t number;
	enum filter_mode mode;
	struct names *tracked;   /* selected images and their names */
	struct seg_builder *b;
	bool failed;
};

static void emit(struct filter *f, const struct seg_record *src)
{
	struct seg_record r = *src;

	if (!seg_builder_add(f->b, &r))
		f->failed = true;
}

static void emit_unlink(struct filter *f, const struct seg_record *like, uint32_t id,
			const char *name)
{
	struct seg_record r = { .type = SEG_UNLINK, .image = id, .time_ns = like->time_ns,
				.payload = name, .payload_len = (uint32_t)strlen(name) };

	if (!seg_builder_add(f->b, &r))
		f->failed = true;
}

static void on_rename(struct filter *f, const struct seg_record *r)
{
	char old_name[SEG_NAME_MAX + 1], new_name[SEG_NAME_MAX + 1];
	uint32_t victim, replaced;
	bool had, wants;

	seg_rename_names(r, old_name, new_name);
	if (r->flags & SEG_F_DIR) {
		long moved = names_rename_dir(f->tracked, old_name, strlen(old_name), new_name,
					      strlen(new_name));

		/* Every directory rename goes, as MKDIR and RMDIR do, so that the
		 * replica's directories follow the source's. */
		(void)moved;
		emit(f, r);
		return;
	}
	had = names_get(f->tracked, r->image) != NULL;
	wants = dest_wants_image(f->d, new_name);
	victim = names_find(f->tracked, new_name, strlen(new_name));
	if (had && wants) {
		names_rename(f->tracked, r->image, new_name, strlen(new_name), &replaced);
		emit(f, r);
		return;
	}
	if (had) {
		emit_unlink(f, r, r->image, old_name);
		names_unbind(f->tracked, r->image);
	} else if (wants) {
		log_warn("destination %s: image %s was renamed to %s, which it mirrors; it has"
			 " no content there and needs a resync", f->d->name, old_name, new_name);
	}
	if (victim && victim != r->image) {
		emit_unlink(f, r, victim, new_name);
		names_unbind(f->tracked, victim);
	}
}

bool record_is_foreign(const struct seg_record *r, uint32_t number)
{
	switch (r->type) {
	case SEG_WRITE:
	case SEG_ZERO:
	case SEG_TRUNCATE:
		return (r->flags & SEG_F_RESYNC) && r->aux != number;
	case SEG_SYNC_BEGIN:
	case SEG_SYNC_END:
		return r->aux != number;
	case SEG_HASH:
		return r->aux && r->aux != number;
	default:
		return false;
	}
}

static void on_record(struct filter *f, const struct seg_record *r)
{
	char name[SEG_NAME_MAX + 1];

	if (record_is_foreign(r, f->number)) {
		/* In its place a SKIP: the LSNs stay the source's, so the
		 * segments after this one can be shipped as they are. */
		struct seg_record k = { .type = SEG_SKIP, .aux = r->aux, .time_ns = r->time_ns };

		emit(f, &k);
		return;
	}
	switch (r->type) {
	case SEG_WRITE:
	case SEG_ZERO:
	case SEG_ALLOC:
	case SEG_HASH:
		/* A tracking destination gets these as dirty extents later. */
		if (f->mode == FILTER_NORMAL && names_get(f->tracked, r->image))
			emit(f, r);
		break;
	case SEG_TRUNCATE:
		if (names_get(f->tracked, r->image))
			emit(f, r);
		break;
	case SEG_FLUSH:
		if (r->image == 0 || names_get(f->tracked, r->image))
			emit(f, r);
		break;
	case SEG_CREATE:
		seg_record_name(r, name);
		if (dest_wants_image(f->d, name)) {
			if (names_bind(f->tracked, r->image, name, strlen(name)) < 0)
				f->failed = true;
			emit(f, r);
		}
		break;
	case SEG_SYNC_END:
		/* Its own resync's end, in a skeleton: the data it ended with
		 * is dropped, so the copy is not consistent there.  It stays
		 * inconsistent until the resync after the tracking ends. */
		if (f->mode == FILTER_NORMAL)
			emit(f, r);
		break;
	case SEG_UNLINK:
		if (names_get(f->tracked, r->image)) {
			names_unbind(f->tracked, r->image);
			emit(f, r);
		}
		break;
	case SEG_RENAME:
		on_rename(f, r);
		break;
	default: /* MKDIR, RMDIR, MARK */
		emit(f, r);
	}
}

int filter_segment(const struct dest_config *d, uint32_t number, enum filter_mode mode,
		   struct seg_view *v, uint64_t first_lsn, uint8_t **out, size_t *len,
		   uint64_t *last_lsn)
{
	const struct seg_header *src = seg_view_header(v);
	struct seg_header h = *src;
	struct seg_image *table = calloc(src->image_count ? src->image_count : 1, sizeof *table);
	struct filter f = { .d = d, .number = number, .mode = mode };
	struct seg_record r;
	uint32_t n = 0;
	int ret = -ENOMEM;

	f.tracked = names_new();
	if (!table || !f.tracked)
		goto out;
	for (uint32_t i = 0; i < src->image_count; i++) {
		char name[SEG_NAME_MAX + 1];

		memcpy(name, src->images[i].name, src->images[i].name_len);
		name[src->images[i].name_len] = '\0';
		if (!dest_wants_image(d, name))
			continue;
		table[n++] = src->images[i];
		if (names_bind(f.tracked, src->images[i].id, name, strlen(name)) < 0)
			goto out;
	}
	h.first_lsn = first_lsn;
	h.image_count = n;
	h.images = table;
	f.b = seg_builder_new(&h);
	if (!f.b)
		goto out;
	if (mode == FILTER_SKELETON_BEGIN) {
		struct seg_record b = { .type = SEG_SYNC_BEGIN, .aux = number,
					.time_ns = src->created_ns };

		emit(&f, &b);
		f.mode = FILTER_SKELETON;
	}
	seg_view_rewind(v);
	while (!f.failed && seg_view_next(v, &r) == 1)
		on_record(&f, &r);
	seg_view_rewind(v);
	if (f.failed)
		goto out;
	*last_lsn = first_lsn + seg_builder_count(f.b) - 1;
	/* The same segment re-encoded again (a resend after a lost reply) must
	 * be the same bytes, or the receiver rightly refuses it. */
	if (seg_view_trailer(v))
		seg_builder_set_sealed(f.b, seg_view_trailer(v)->sealed_ns);
	ret = seg_builder_finish(f.b, 0, out, len);
out:
	seg_builder_free(f.b);
	names_free(f.tracked);
	free(table);
	return ret;
}

static bool has_foreign_records(struct seg_view *v, uint32_t number)
{
	struct seg_record r;
	bool foreign = false;

	seg_view_rewind(v);
	while (!foreign && seg_view_next(v, &r) == 1)
		foreign = record_is_foreign(&r, number);
	seg_view_rewind(v);
	return foreign;
}

int filter_body(const struct dest *d, enum filter_mode mode, struct seg_view *v, uint64_t first,
		const uint8_t **body, size_t *len, uint8_t **owned, uint64_t *dfirst,
		uint64_t *dlast)
{
	*owned = NULL;
	if (d->cfg.nimages || mode != FILTER_NORMAL || first != seg_view_header(v)->first_lsn ||
	    has_foreign_records(v, d->rec.number)) {
		if (filter_segment(&d->cfg, d->rec.number, mode, v, first, owned, len, dlast) < 0)
			return -ENOMEM;
		*body = *owned;
		*dfirst = first;
		return 0;
	}
	*body = seg_view_bytes(v);
	*len = seg_view_size(v);
	*dfirst = seg_view_header(v)->first_lsn;
	*dlast = seg_view_last_lsn(v);
	return 0;
}
