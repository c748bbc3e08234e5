/*
 * registry.c — the mount's images: which backing inode is which image id,
 * and under what name.  Every regular file in the backing tree is an image.
 * The registry changes only together with the journal records that describe
 * the change, under the journal lock, so a segment's header table (a copy
 * of the live images when it opened) plus its records always describe the
 * namespace exactly.
 */
#include "journal_i.h"
#include "io_i.h"
#include "catalog.h"
#include "fileio.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static size_t bucket(const struct journal *j, dev_t dev, ino_t ino)
{
	uint64_t h = ((uint64_t)ino ^ ((uint64_t)dev << 32)) * 0x9E3779B97F4A7C15ULL;

	return (size_t)(h >> 20) & (j->ino_buckets - 1);
}

int registry_init(struct journal *j)
{
	j->ino_buckets = 4096;
	j->by_ino = calloc(j->ino_buckets, sizeof *j->by_ino);
	return j->by_ino ? 0 : -ENOMEM;
}

/*
 * A descriptor that sees the file's write-back errors from now on (each
 * open file keeps its own cursor of them): a failed syncfs of the backing
 * filesystem asks every image's whether it was one of theirs.  -1 if the
 * file is not there under name any more, or cannot be opened.
 */
static int open_wb_fd(struct journal *j, const char *name, dev_t dev, ino_t ino)
{
	struct stat st;
	int fd;

	if (!ino || !name || j->cfg.backing_fd < 0)
		return -1;
	/* O_NONBLOCK: something else than the image there now (a FIFO) must
	 * not hold the journal lock */
	fd = openat(j->cfg.backing_fd, name,
		    O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
	if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_dev != dev ||
			st.st_ino != ino)) {
		close(fd);
		fd = -1;
	}
	if (fd >= 0)
		actlog_watch(j->al, fd); /* its filesystem may need a syncfs of its own */
	return fd;
}

static void free_image(struct image *im)
{
	if (im->wb_fd >= 0)
		close(im->wb_fd);
	rangelock_destroy(&im->rl);
	free(im->name);
	free(im);
}

void registry_free(struct journal *j)
{
	for (size_t i = 0; i < j->nlive; i++) {
		j->live[i]->live = false;
		registry_put(j, j->live[i]);
	}
	free(j->live);
	free(j->by_ino);
	j->live = NULL;
	j->by_ino = NULL;
	j->nlive = j->caplive = 0;
}

struct image *registry_add(struct journal *j, uint32_t id, const char *name, dev_t dev, ino_t ino)
{
	return registry_add_found(j, id, name, name, dev, ino);
}

struct image *registry_add_found(struct journal *j, uint32_t id, const char *name,
				 const char *path, dev_t dev, ino_t ino)
{
	struct image *im = calloc(1, sizeof *im);
	size_t b;

	if (!im)
		return NULL;
	im->name = strdup(name);
	if (!im->name) {
		free(im);
		return NULL;
	}
	rangelock_init(&im->rl);
	im->wb_fd = -1;
	if (j->nlive == j->caplive) {
		size_t cap = j->caplive ? j->caplive * 2 : 64;
		struct image **nl = realloc(j->live, cap * sizeof *nl);

		if (!nl) {
			free_image(im);
			return NULL;
		}
		j->live = nl;
		j->caplive = cap;
	}
	im->id = id;
	im->dev = dev;
	im->ino = ino;
	im->wb_fd = open_wb_fd(j, path, dev, ino);
	im->live = true;
	im->refs = 1;
	j->live[j->nlive++] = im;
	if (ino) {
		b = bucket(j, dev, ino);
		im->next_ino = j->by_ino[b];
		j->by_ino[b] = im;
	}
	if (id >= j->next_image_id)
		j->next_image_id = id + 1;
	return im;
}

struct image *registry_find_ino(struct journal *j, dev_t dev, ino_t ino)
{
	for (struct image *im = j->by_ino[bucket(j, dev, ino)]; im; im = im->next_ino)
		if (im->ino == ino && im->dev == dev)
			return im;
	return NULL;
}

struct image *registry_find_name(struct journal *j, const char *name)
{
	for (size_t i = 0; i < j->nlive; i++)
		if (strcmp(j->live[i]->name, name) == 0)
			return j->live[i];
	return NULL;
}

struct image *registry_find_id(struct journal *j, uint32_t id)
{
	for (size_t i = 0; i < j->nlive; i++)
		if (j->live[i]->id == id)
			return j->live[i];
	return NULL;
}

void registry_remove(struct journal *j, struct image *im)
{
	struct image **pp;

	if (!im->live)
		return;
	im->live = false;
	if (im->wb_fd >= 0)
		close(im->wb_fd); /* gone: its pages do not matter any more */
	im->wb_fd = -1;
	if (im->ino) {
		for (pp = &j->by_ino[bucket(j, im->dev, im->ino)]; *pp; pp = &(*pp)->next_ino) {
			if (*pp == im) {
				*pp = im->next_ino;
				break;
			}
		}
	}
	for (size_t i = 0; i < j->nlive; i++) {
		if (j->live[i] == im) {
			j->live[i] = j->live[--j->nlive];
			break;
		}
	}
	registry_put(j, im);
}

void registry_put(struct journal *j, struct image *im)
{
	(void)j;
	if (im && --im->refs == 0)
		free_image(im);
}

int registry_rename(struct journal *j, struct image *im, const char *name)
{
	char *n = strdup(name);

	(void)j;
	if (!n)
		return -ENOMEM;
	free(im->name);
	im->name = n;
	return 0;
}

int registry_rename_dir_check(struct journal *j, const char *old_name, const char *new_name)
{
	size_t ol = strlen(old_name), nl = strlen(new_name);

	for (size_t i = 0; i < j->nlive; i++) {
		const struct image *im = j->live[i];
		size_t len = strlen(im->name);

		if (len > ol && im->name[ol] == '/' && memcmp(im->name, old_name, ol) == 0 &&
		    len - ol + nl > SEG_NAME_MAX)
			return -ENAMETOOLONG;
	}
	return 0;
}

int registry_rename_dir(struct journal *j, const char *old_name, const char *new_name)
{
	size_t ol = strlen(old_name), nl = strlen(new_name);

	for (size_t i = 0; i < j->nlive; i++) {
		struct image *im = j->live[i];
		size_t len = strlen(im->name);
		char *n;

		if (len <= ol || im->name[ol] != '/' || memcmp(im->name, old_name, ol) != 0)
			continue;
		n = malloc(nl + len - ol + 1);
		if (!n)
			return -ENOMEM;
		memcpy(n, new_name, nl);
		memcpy(n + nl, im->name + ol, len - ol + 1);
		free(im->name);
		im->name = n;
	}
	return 0;
}

/* The ctime to note for a file at close.  On a filesystem that keeps
 * whole seconds, a change in the same second as aimfs's last write would
 * keep it: such a ctime is noted as 1, which no file has, so the next
 * mount compares the image. */
static uint64_t closing_ctime(const struct stat *st)
{
	struct timespec now;

	if (st->st_ctim.tv_nsec == 0 && clock_gettime(CLOCK_REALTIME, &now) == 0 &&
	    now.tv_sec <= st->st_ctim.tv_sec + 1)
		return 1;
	return fileio_ctime_ns(st);
}

/* Single-threaded: at the end of recovery, and at close. */
void registry_note_files(struct journal *j, struct catalog *cat, bool closing)
{
	int r = catalog_begin(cat);

	for (size_t i = 0; i < j->nlive && r == 0; i++) {
		struct image *im = j->live[i];
		uint64_t ino, born, ctime = 0;
		struct stat st;

		if (im->wb_fd < 0)
			continue;
		born = fileio_born_ns(im->wb_fd, "", &ino);
		/* written back first: a filesystem whose server stamps the
		 * change when the data arrives (NFS) would change it after */
		if (closing && aimfs_io.fdatasync_fn(im->wb_fd) == 0 &&
		    fstat(im->wb_fd, &st) == 0)
			ctime = closing_ctime(&st);
		if ((born || ctime) && ino == (uint64_t)im->ino)
			r = catalog_image_note(cat, im->id, ino, born, ctime);
	}
	if (r == 0)
		r = catalog_commit(cat);
	else
		catalog_rollback(cat);
	if (r < 0)
		log_warn("journal %s: cannot note the images' birth%s times (the catalog says"
			 " why); a file that reuses an image's inode number while aimfs is"
			 " stopped may be taken for it%s", j->dir, closing ? " and change" : "",
			 closing ? ", and the next mount compares every image with its"
				   " destinations" : "");
}
