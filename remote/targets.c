/*
 * targets.c — the sizes of the targets the remote holds (see targets.h).
 */
#include "targets.h"
#include "apply.h"

#include <fcntl.h>
#include <fts.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void add_files(json_t *out, const char *target_dir)
{
	char *roots[] = { (char *)target_dir, NULL };
	size_t prefix = strlen(target_dir), n = 0;
	FTS *fts = fts_open(roots, FTS_PHYSICAL | FTS_NOCHDIR | FTS_XDEV, NULL);
	FTSENT *e;

	if (!fts)
		return;
	while ((e = fts_read(fts)) && n < TARGETS_MAX) {
		const char *rel;

		if (e->fts_info != FTS_F || !S_ISREG(e->fts_statp->st_mode))
			continue;
		rel = e->fts_path + prefix;
		while (*rel == '/')
			rel++;
		if (*rel && json_object_set_new(out, rel, json_integer(e->fts_statp->st_size)) == 0)
			n++;
	}
	fts_close(fts);
}

static void add_maps(json_t *out, const struct apply_map *maps, size_t nmaps)
{
	for (size_t i = 0; i < nmaps; i++) {
		int fd = open(maps[i].path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
		off_t size;

		if (fd < 0)
			continue;
		size = lseek(fd, 0, SEEK_END); /* a block device's size too */
		close(fd);
		if (size >= 0)
			json_object_set_new(out, maps[i].image, json_integer(size));
	}
}

json_t *targets_list(const char *target_dir, const struct apply_map *maps, size_t nmaps)
{
	json_t *out = json_object();

	if (!out)
		return NULL;
	add_files(out, target_dir);
	add_maps(out, maps, nmaps); /* a map wins over a file of the same name */
	return out;
}
