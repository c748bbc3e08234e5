/*
 * prechecked.c — the receiver's and the pullers' checks of a segment,
 * handed to its group (remote_i.h, struct prechecked).
 *
 * The receiver hashes every payload of an upload as it arrives and
 * validates the stored file before it answers 201 (receiver.c, finish);
 * a puller does the same with each download (puller.c).  The group used
 * to check the inbox file whole again before applying it: every payload
 * read back and hashed a second time, about a tenth of aim-remote's CPU
 * for large writes.  Now they leave their precheck here, under the file's
 * identity, and the group's open (inbox_open) validates with it, reading
 * only the records' headers.  Nothing is trusted blindly: the walk still
 * checks every rule and compares where the records are and the hashes
 * they state with what was hashed, and gives the file the full check if
 * anything differs.  What it cannot see is a payload's bytes changed in
 * place without its header, so the identity includes the size and the
 * modification time: a write to the file after the check (a process
 * writing into the inbox behind aim-remote's back) changes the time, and
 * the group then checks the file whole.  (The time is the clock's tick:
 * on kernels before 6.13, a write within the same few milliseconds as the
 * receiver's last could keep it.)  The entry is made before the file is
 * renamed into the inbox, so the group, woken by the rename, finds it.
 * A file put into the inbox by other means (cp, another server) has
 * none.
 *
 * Entries are forgotten when the group disposes of the file or puts it
 * aside; at most PRECHECKED_MAX are held, the oldest giving way (its
 * file, if still waiting, is then checked whole).
 */
#include "remote_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static bool same_file(const struct prechecked_entry *e, const struct stat *st)
{
	return e->p && e->dev == st->st_dev && e->ino == st->st_ino;
}

/* Unchanged since the entry was made: nothing was written to it since. */
static bool unchanged(const struct prechecked_entry *e, const struct stat *st)
{
	return e->size == st->st_size && e->mtime.tv_sec == st->st_mtim.tv_sec &&
	       e->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

static void clear(struct prechecked_entry *e)
{
	seg_precheck_free(e->p);
	memset(e, 0, sizeof *e);
}

void prechecked_init(struct prechecked *pc)
{
	memset(pc, 0, sizeof *pc);
	pthread_mutex_init(&pc->lock, NULL);
}

void prechecked_destroy(struct prechecked *pc)
{
	for (unsigned i = 0; i < PRECHECKED_MAX; i++)
		clear(&pc->e[i]);
	pthread_mutex_destroy(&pc->lock);
}

/* The entry of st's file, else an empty one, else the oldest. */
static struct prechecked_entry *slot_for(struct prechecked *pc, const struct stat *st)
{
	struct prechecked_entry *empty = NULL, *oldest = &pc->e[0];

	for (unsigned i = 0; i < PRECHECKED_MAX; i++) {
		struct prechecked_entry *e = &pc->e[i];

		if (same_file(e, st))
			return e;
		if (!e->p && !empty)
			empty = e;
		if (e->added < oldest->added)
			oldest = e;
	}
	return empty ? empty : oldest;
}

void prechecked_add(struct prechecked *pc, int fd, struct seg_precheck *p)
{
	struct prechecked_entry *slot;
	struct stat st;

	if (!p)
		return;
	if (fstat(fd, &st) < 0) {
		seg_precheck_free(p);
		return;
	}
	pthread_mutex_lock(&pc->lock);
	slot = slot_for(pc, &st);
	clear(slot);
	*slot = (struct prechecked_entry){
		.dev = st.st_dev,
		.ino = st.st_ino,
		.size = st.st_size,
		.mtime = st.st_mtim,
		.p = p,
		.added = ++pc->clock,
	};
	pthread_mutex_unlock(&pc->lock);
}

struct seg_precheck *prechecked_find(struct prechecked *pc, const struct stat *st,
				     bool *first)
{
	struct seg_precheck *copy = NULL;

	*first = false;
	if (!pc)
		return NULL;
	pthread_mutex_lock(&pc->lock);
	for (unsigned i = 0; i < PRECHECKED_MAX; i++) {
		struct prechecked_entry *e = &pc->e[i];

		if (!same_file(e, st))
			continue;
		if (unchanged(e, st)) {
			copy = seg_precheck_copy(e->p);
			*first = copy && !e->used;
			e->used = e->used || copy;
		} else
			clear(e); /* written to since: checked whole from now on */
		break;
	}
	pthread_mutex_unlock(&pc->lock);
	return copy;
}

void prechecked_forget(struct prechecked *pc, int dirfd, const char *name)
{
	struct stat st;

	if (fstatat(dirfd, name, &st, *name ? AT_SYMLINK_NOFOLLOW : AT_EMPTY_PATH) < 0)
		return;
	pthread_mutex_lock(&pc->lock);
	for (unsigned i = 0; i < PRECHECKED_MAX; i++)
		if (same_file(&pc->e[i], &st))
			clear(&pc->e[i]);
	pthread_mutex_unlock(&pc->lock);
}

int prechecked_rename(struct prechecked *pc, int fd, struct seg_precheck *p, int olddir,
		      const char *oldname, int newdir, const char *newname)
{
	int e;

	prechecked_add(pc, fd, p); /* before the rename, which wakes the group */
	if (renameat2(olddir, oldname, newdir, newname, RENAME_NOREPLACE) == 0)
		return 0;
	e = errno;
	prechecked_forget(pc, fd, "");
	return -e;
}
