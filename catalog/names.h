/*
 * names.h — the image namespace of one segment as its records unfold:
 * which image id is bound to which relative path.  Used by the segment
 * decoder (to validate that every record names a bound image, and to answer
 * seg_view_image_name) and by anything else that must follow renames.
 *
 * Hash tables on both id and name keep every operation O(1) on average, so
 * that a hostile segment with millions of images or renames cannot make a
 * decoder quadratic.  Not thread-safe; one owner.
 */
#ifndef AIM_NAMES_H
#define AIM_NAMES_H

#include <stddef.h>
#include <stdint.h>

struct names;

struct names *names_new(void);
void names_free(struct names *n);
void names_clear(struct names *n);

/* Binds id to name (len bytes, copied).  -EEXIST if the id or the name is
 * already bound, -ENOMEM. */
int names_bind(struct names *n, uint32_t id, const char *name, size_t len);
/* Removes id's binding; -ENOENT if unbound. */
int names_unbind(struct names *n, uint32_t id);
/* Current name of id (NUL-terminated, owned by the table) or NULL. */
const char *names_get(const struct names *n, uint32_t id);
/* Id bound to name, or 0. */
uint32_t names_find(const struct names *n, const char *name, size_t len);
/* Renames id to new_name; an image already holding new_name is unbound
 * first and its id returned in *replaced (0 if none). */
int names_rename(struct names *n, uint32_t id, const char *new_name, size_t len,
		 uint32_t *replaced);
/* Renames every image under directory old_dir/ to the same path under
 * new_dir/.  Returns the number renamed (0 when old_dir equals new_dir), or
 * -EEXIST if an image is named new_dir or lies under it (POSIX renames a
 * directory only onto an empty one), or -ENOMEM. */
long names_rename_dir(struct names *n, const char *old_dir, size_t old_len,
		      const char *new_dir, size_t new_len);
size_t names_count(const struct names *n);
/* Calls fn for every binding, in no particular order; stops if fn returns
 * non-zero and returns that value. */
int names_each(const struct names *n, int (*fn)(void *ctx, uint32_t id, const char *name),
	       void *ctx);

#endif
