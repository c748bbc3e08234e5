/*
 * fs.c — FUSE low-level operations of aimfs (lo_*), after libfuse's
 * passthrough_ll and passthrough_hp: each inode holds an O_PATH descriptor
 * of its backing inode and is found by (st_dev, st_ino); each open file
 * handle holds a real descriptor of the backing file.
 *
 * Every mutating operation on a regular file goes through the journal:
 *   data (write, fallocate, truncate): range lock, journal record, backing
 *     syscall, done; if the syscall fails the journal is told what the
 *     backing file really holds (journal_correct);
 *   namespace (create, unlink, rename, mkdir, rmdir): namespace lock,
 *     syscall, journal record;
 *   fsync/fdatasync: barrier, journal durable; the backing file only if
 *                   backing_sync=fsync or this mount created it since the
 *                   last checkpoint (a power loss redoes the journal).
 *
 * O_DIRECT is honoured on the backing file (QEMU's cache=none means "not
 * through the host page cache", and a passthrough that silently buffered
 * would change the guest's durability and memory use); its data is staged
 * through a per-thread aligned buffer.  Directories, symlinks, modes,
 * owners, times and xattrs pass through but are not journaled: a mirror
 * carries images and the directories they live in.  (A change to an
 * image's mode, owner, times or xattrs stamps the journal instead: its
 * ctime is then no sign of a change made while aimfs was stopped.)
 */
#include "fs.h"
#include "format.h"
#include "io_i.h"
#include "journal.h"
#include "log.h"
#include "rangelock.h"
#include "readahead.h"
#include "session.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#define IO_ALIGN 4096
#define INODE_BUCKETS 4096

struct lo_inode {
	struct lo_inode *next;   /* hash chain (fs->lock) */
	int fd;                  /* O_PATH */
	dev_t dev;
	ino_t ino;
	mode_t type;             /* S_IFMT bits */
	uint64_t nlookup;        /* (fs->lock) */
	unsigned nopen;          /* open file handles (fs->lock): what a stop reports */
	struct image *image;     /* regular files known to the journal; fixed at creation */
	struct rangelock rl;
	bool cache_written;      /* written back from the page cache since the last close barrier */
};

struct lo_fh {
	struct lo_fh *prev, *next; /* fs->open_list (fs->lock) */
	int fd;
	bool direct;             /* backing fd has O_DIRECT */
	bool written;            /* writes since the last barrier */
	struct readahead ra;     /* O_DIRECT handles read sequentially */
};

struct lo_dirp {
	DIR *dp;
	struct dirent *entry;
	off_t offset;
};

struct fs {
	struct fs_config cfg;
	char *hide_name;
	size_t backing_len;
	pthread_mutex_t lock;    /* inode table */
	struct lo_inode root;
	struct lo_inode *buckets[INODE_BUCKETS];
	_Atomic unsigned open_handles;
	/* Every file handle not yet released: the kernel need not send a
	 * RELEASE for each before the session ends (io_uring), so fs_free
	 * closes what is left. */
	struct lo_fh *open_list;
};

/* Per-thread staging buffer for O_DIRECT and reads, freed when libfuse
 * ends a worker thread (the key's destructor). */
static __thread void *tbuf;
static __thread size_t tbuf_size;
static pthread_key_t tbuf_key;
static pthread_once_t tbuf_once = PTHREAD_ONCE_INIT;

static void tbuf_key_make(void)
{
	pthread_key_create(&tbuf_key, free);
}

static void *thread_buffer(size_t size)
{
	if (size > tbuf_size) {
		void *p;
		size_t want = (size + IO_ALIGN - 1) & ~(size_t)(IO_ALIGN - 1);

		if (posix_memalign(&p, IO_ALIGN, want))
			return NULL;
		pthread_once(&tbuf_once, tbuf_key_make);
		free(tbuf);
		tbuf = p;
		tbuf_size = want;
		pthread_setspecific(tbuf_key, p);
	}
	return tbuf;
}

static struct fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct lo_inode *inode_of(fuse_req_t req, fuse_ino_t ino)
{
	if (ino == FUSE_ROOT_ID)
		return &fs_of(req)->root;
	return (struct lo_inode *)(uintptr_t)ino;
}

static struct lo_fh *fh_of(struct fuse_file_info *fi)
{
	return (struct lo_fh *)(uintptr_t)fi->fh;
}

static size_t bucket_of(dev_t dev, ino_t ino)
{
	return (size_t)(((uint64_t)ino * 0x9E3779B97F4A7C15ULL ^ (uint64_t)dev) >> 17) %
	       INODE_BUCKETS;
}

static bool is_hidden(struct fs *fs, struct lo_inode *dir, const char *name)
{
	return fs->hide_name && dir->dev == fs->cfg.hide_dev && dir->ino == fs->cfg.hide_ino &&
	       strcmp(name, fs->hide_name) == 0;
}

/*
 * Relative path (from the backing root) of name in dir, from the kernel's
 * own idea of where dir is now (so renames of parents need no bookkeeping).
 */
static int rel_path(struct fs *fs, struct lo_inode *dir, const char *name, char *out, size_t outlen)
{
	char proc[64], abs[PATH_MAX + 1];
	ssize_t n;
	const char *rel;
	int len;

	snprintf(proc, sizeof proc, "/proc/self/fd/%d", dir->fd);
	n = readlink(proc, abs, sizeof abs - 1);
	if (n < 0)
		return -errno;
	abs[n] = '\0';
	if (strncmp(abs, fs->cfg.backing_dir, fs->backing_len) != 0 ||
	    (abs[fs->backing_len] != '/' && abs[fs->backing_len] != '\0'))
		return -ENOENT; /* directory removed or outside the backing tree */
	rel = abs + fs->backing_len;
	while (*rel == '/')
		rel++;
	if (name)
		len = snprintf(out, outlen, "%s%s%s", rel, *rel ? "/" : "", name);
	else
		len = snprintf(out, outlen, "%s", rel);
	return len < 0 || (size_t)len >= outlen ? -ENAMETOOLONG : 0;
}

/*
 * The one place where a journal error becomes a FUSE reply.  A full disk,
 * an exhausted quota or a read-only filesystem is told as itself, so that
 * the writer can act on it (QEMU's werror=enospc pauses the guest on
 * ENOSPC, and "cont" resumes it once space is freed); so is a lack of
 * memory.  Anything else the journal could not do is EIO.
 */
static int journal_errno(int r)
{
	switch (-r) {
	case ENOSPC:
	case EDQUOT:
	case EROFS:
	case ENOMEM:
		return -r;
	default:
		return EIO;
	}
}

/*
 * 0 if path (relative to the backing directory) is a name a record can
 * carry, else the errno a create, mkdir or rename to it gets: refused
 * before the backing directory changes, as the journal could not describe
 * it (a name with a control character, or too long).
 */
static int mirrorable(const char *path)
{
	size_t len = strlen(path);

	if (seg_name_valid(path, len))
		return 0;
	if (len > SEG_NAME_MAX)
		return ENAMETOOLONG;
	for (const char *c = path; *c; c++) {
		size_t clen = strcspn(c, "/");

		if (clen > SEG_COMPONENT_MAX)
			return ENAMETOOLONG;
		c += clen;
		if (!*c)
			break;
	}
	return EINVAL;
}

/* The range lock of an image lives with the image (the resync engine takes
 * it too); a regular file the journal does not mirror uses its inode's. */
static struct rangelock *lock_of(struct lo_inode *in)
{
	return in->image ? journal_image_rangelock(in->image) : &in->rl;
}

static void inode_free(struct fs *fs, struct lo_inode *in)
{
	if (in->image)
		journal_image_put(fs->cfg.journal, in->image);
	rangelock_destroy(&in->rl);
	close(in->fd);
	free(in);
}

/* Drops n lookups; frees the inode at zero. */
static void unref_inode(struct fs *fs, struct lo_inode *in, uint64_t n)
{
	struct lo_inode **pp;
	bool gone = false;

	if (in == &fs->root)
		return;
	pthread_mutex_lock(&fs->lock);
	in->nlookup -= n;
	if (in->nlookup == 0) {
		for (pp = &fs->buckets[bucket_of(in->dev, in->ino)]; *pp; pp = &(*pp)->next) {
			if (*pp == in) {
				*pp = in->next;
				break;
			}
		}
		gone = true;
	}
	pthread_mutex_unlock(&fs->lock);
	if (gone)
		inode_free(fs, in);
}

/*
 * The image of a regular file the journal has never seen (made in the
 * backing directory behind the mount's back): adopt it, content and all.
 */
static int adopt(struct fs *fs, struct lo_inode *dir, const char *name, int fd,
		 const struct stat *st, struct image **out)
{
	struct journal *j = fs->cfg.journal;
	struct image *im;
	char path[PATH_MAX];
	int rfd, r = -EIO;

	journal_ns_lock(j);
	im = journal_image_lookup(j, st->st_dev, st->st_ino);
	if (!im && rel_path(fs, dir, name, path, sizeof path) == 0) {
		char proc[64];

		snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
		rfd = open(proc, O_RDONLY | O_CLOEXEC);
		if (rfd >= 0) {
			r = journal_adopt(j, path, rfd, st, &im);
			if (r < 0)
				im = NULL;
			close(rfd);
		}
	}
	journal_ns_unlock(j);
	*out = im;
	return im ? 0 : r;
}

/* Looks name up in dir and fills e; takes one lookup reference. */
static int do_lookup(struct fs *fs, struct lo_inode *dir, const char *name,
		     struct fuse_entry_param *e)
{
	struct lo_inode *in, *found;
	struct image *im = NULL;
	size_t b;
	int fd;

	memset(e, 0, sizeof *e);
	e->attr_timeout = e->entry_timeout = fs->cfg.timeout;
	if (is_hidden(fs, dir, name))
		return ENOENT;
	fd = openat(dir->fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno;
	if (fstatat(fd, "", &e->attr, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0) {
		int err = errno;

		close(fd);
		return err;
	}
	b = bucket_of(e->attr.st_dev, e->attr.st_ino);
	pthread_mutex_lock(&fs->lock);
	for (found = fs->buckets[b]; found; found = found->next)
		if (found->ino == e->attr.st_ino && found->dev == e->attr.st_dev)
			break;
	if (found) {
		found->nlookup++;
		pthread_mutex_unlock(&fs->lock);
		close(fd);
		e->ino = (fuse_ino_t)(uintptr_t)found;
		return 0;
	}
	pthread_mutex_unlock(&fs->lock);

	/* New inode: resolve its image before anyone can write through it. */
	if (S_ISREG(e->attr.st_mode)) {
		int r = 0;

		im = journal_image_lookup(fs->cfg.journal, e->attr.st_dev, e->attr.st_ino);
		if (!im)
			r = adopt(fs, dir, name, fd, &e->attr, &im);
		if (!im) {
			close(fd);
			return journal_errno(r);
		}
	}
	in = calloc(1, sizeof *in);
	if (!in) {
		journal_image_put(fs->cfg.journal, im);
		close(fd);
		return ENOMEM;
	}
	in->fd = fd;
	in->dev = e->attr.st_dev;
	in->ino = e->attr.st_ino;
	in->type = e->attr.st_mode & S_IFMT;
	in->nlookup = 1;
	in->image = im;
	rangelock_init(&in->rl);
	pthread_mutex_lock(&fs->lock);
	for (found = fs->buckets[b]; found; found = found->next)
		if (found->ino == in->ino && found->dev == in->dev)
			break;
	if (found) {
		/* lost a race with another lookup of the same inode */
		found->nlookup++;
		pthread_mutex_unlock(&fs->lock);
		inode_free(fs, in);
		e->ino = (fuse_ino_t)(uintptr_t)found;
		return 0;
	}
	in->next = fs->buckets[b];
	fs->buckets[b] = in;
	pthread_mutex_unlock(&fs->lock);
	e->ino = (fuse_ino_t)(uintptr_t)in;
	return 0;
}

/* ---- init, lookup, attributes ---- */

static void lo_init(void *userdata, struct fuse_conn_info *conn)
{
	struct fs *fs = userdata;

	/* Plain readdir keeps lookups (and nlookup accounting) in one place. */
	conn->want &= ~(unsigned)FUSE_CAP_READDIRPLUS;
	/* Strict (cache=strict): the kernel sends every write as it happens.
	 * Writeback: it coalesces buffered writes in the page cache and sends
	 * them at writeback, fsync and close; the journal still records exactly
	 * what the backing files receive, in the order they receive it. */
	if (fs->cfg.writeback_cache && (conn->capable & FUSE_CAP_WRITEBACK_CACHE))
		conn->want |= FUSE_CAP_WRITEBACK_CACHE;
	else
		conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
	if (conn->capable & FUSE_CAP_ASYNC_DIO)
		conn->want |= FUSE_CAP_ASYNC_DIO;
	conn->max_write = 1u << 20;
	conn->max_readahead = 1u << 20;
	/* Asynchronous requests (O_DIRECT through libaio or io_uring, the
	 * writeback of cached pages, readahead) in flight at once: the
	 * kernel's default of 12 throttled a queue depth of 16. */
	conn->max_background = 64;
	conn->congestion_threshold = 48;
}

static void lo_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	int err = do_lookup(fs_of(req), inode_of(req, parent), name, &e);

	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_entry(req, &e);
}

static void lo_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	unref_inode(fs_of(req), inode_of(req, ino), nlookup);
	fuse_reply_none(req);
}

static void lo_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		unref_inode(fs_of(req), inode_of(req, forgets[i].ino), forgets[i].nlookup);
	fuse_reply_none(req);
}

static void lo_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct lo_inode *in = inode_of(req, ino);
	struct stat st;

	(void)fi;
	if (fstatat(in->fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_attr(req, &st, fs_of(req)->cfg.timeout);
}

/*
 * The kernel left clearing the setuid and setgid bits to us for this
 * request (session_kill_suidgid: FUSE_HANDLE_KILLPRIV_V2): aimfs writes as
 * root, which keeps them, so clear them as the caller's own write would
 * have (setgid only with group execute, as the kernel does).
 */
static void kill_suidgid(int fd)
{
	struct stat st;
	mode_t kill;

	if (!session_kill_suidgid() || fstat(fd, &st) < 0)
		return;
	kill = st.st_mode & (S_ISUID | ((st.st_mode & S_IXGRP) ? S_ISGID : 0));
	if (kill && fchmod(fd, st.st_mode & ~kill & 07777) < 0)
		log_debug("clearing setuid/setgid: %m");
}

/* Truncate through the journal; fd is open for writing. */
static int journaled_truncate(struct fs *fs, struct lo_inode *in, int fd, uint64_t size)
{
	struct journal *j = fs->cfg.journal;
	struct journal_ticket t = { .slot = -1 };
	struct range_held h;
	int r, err = 0;

	if (in->image && (r = journal_settle(j)) < 0)
		return journal_errno(r);
	rangelock_acquire(lock_of(in), &h, 0, RANGE_END);
	if (in->image) {
		r = journal_truncate(j, in->image, size, &t);
		if (r < 0) {
			rangelock_release(lock_of(in), &h);
			return journal_errno(r);
		}
	}
	kill_suidgid(fd);
	if (aimfs_io.ftruncate_fn(fd, (off_t)size) < 0) {
		err = errno;
		if (in->image && t.lsn) {
			/* The file kept its size and content: its size again,
			 * and what the TRUNCATE record cut off. */
			struct stat st;
			uint64_t now = fstat(fd, &st) == 0 ? (uint64_t)st.st_size : UINT64_MAX;

			journal_backing_failed(j, -err);
			journal_correct(j, in->image, fd, size, now > size ? now - size : 0, &t);
		}
	}
	rangelock_release(lock_of(in), &h);
	journal_done(j, &t);
	return err;
}

static int proc_open(struct lo_inode *in, int flags)
{
	char proc[64];

	snprintf(proc, sizeof proc, "/proc/self/fd/%d", in->fd);
	return open(proc, flags | O_CLOEXEC);
}

/* open(2) with O_TRUNC truncates whatever the access mode (the kernel
 * checked write permission for it): a read-only open truncates through a
 * descriptor of its own.  0 or an errno. */
static int truncate_at_open(struct fs *fs, struct lo_inode *in, int fd, int flags)
{
	int wfd = fd, err;

	if ((flags & O_ACCMODE) == O_RDONLY && (wfd = proc_open(in, O_WRONLY)) < 0)
		return errno;
	err = journaled_truncate(fs, in, wfd, 0);
	if (wfd != fd)
		close(wfd);
	return err;
}

/* What setattr changes without a record (the file's ctime changes too). */
#define UNTRACKED_ATTRS (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID | \
			 FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)

/* Before a change to in that no record carries: if in is an image, the
 * journal is stamped, as a record is appended before its write (the
 * change follows within the moment recovery allows). */
static void untracked_change(struct fs *fs, struct lo_inode *in)
{
	if (in->image)
		journal_stamp_untracked(fs->cfg.journal);
}

static void lo_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid,
		       struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct lo_inode *in = inode_of(req, ino);
	char proc[64];
	struct stat st;
	int err = 0;

	snprintf(proc, sizeof proc, "/proc/self/fd/%d", in->fd);
	if (valid & UNTRACKED_ATTRS)
		untracked_change(fs, in);
	if (valid & FUSE_SET_ATTR_MODE) {
		if ((fi ? fchmod(fh_of(fi)->fd, attr->st_mode) : chmod(proc, attr->st_mode)) < 0)
			goto fail;
	}
	if (valid & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		uid_t uid = (valid & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1;
		gid_t gid = (valid & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;

		if (fchownat(in->fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
			goto fail;
	}
	if (valid & FUSE_SET_ATTR_SIZE) {
		int fd = fi ? fh_of(fi)->fd : proc_open(in, O_WRONLY);

		if (fd < 0)
			goto fail;
		if (in->type != S_IFREG)
			err = EINVAL;
		else
			err = journaled_truncate(fs, in, fd, (uint64_t)attr->st_size);
		if (!fi)
			close(fd);
		if (err) {
			fuse_reply_err(req, err);
			return;
		}
	}
	if (valid & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
		struct timespec tv[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_nsec = UTIME_OMIT } };

		if (valid & FUSE_SET_ATTR_ATIME_NOW)
			tv[0].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_ATIME)
			tv[0] = attr->st_atim;
		if (valid & FUSE_SET_ATTR_MTIME_NOW)
			tv[1].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_MTIME)
			tv[1] = attr->st_mtim;
		if ((fi ? futimens(fh_of(fi)->fd, tv) :
			  (in->type == S_IFLNK ? utimensat(in->fd, "", tv, AT_EMPTY_PATH)
					       : utimensat(AT_FDCWD, proc, tv, 0))) < 0)
			goto fail;
	}
	if (fstatat(in->fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		goto fail;
	fuse_reply_attr(req, &st, fs->cfg.timeout);
	return;
fail:
	fuse_reply_err(req, errno);
}

static void lo_readlink(fuse_req_t req, fuse_ino_t ino)
{
	char buf[PATH_MAX + 1];
	ssize_t n = readlinkat(inode_of(req, ino)->fd, "", buf, sizeof buf);

	if (n < 0)
		fuse_reply_err(req, errno);
	else if (n == (ssize_t)sizeof buf)
		fuse_reply_err(req, ENAMETOOLONG);
	else {
		buf[n] = '\0';
		fuse_reply_readlink(req, buf);
	}
}

/* ---- namespace ---- */

/*
 * Takes the namespace lock for a namespace change, after journaling what
 * the journal still owes (an owed record must not be overtaken).  Returns
 * 0 with the lock held, or -errno for the reply (lock not held).
 */
static int ns_begin(struct journal *j)
{
	int r;

	journal_ns_lock(j);
	r = journal_owes(j) ? journal_settle_locked(j) : 0;
	if (r < 0) {
		journal_ns_unlock(j);
		return -journal_errno(r);
	}
	return 0;
}

/*
 * The path of name in dir for a namespace record, and whether the replica
 * can hold it; 0 or -errno.  Under the namespace lock: a directory rename
 * (which the kernel may run beside a create in that directory) is then
 * either journaled before it, and the path is the new one, or after.
 */
static int path_under_ns_lock(struct fs *fs, struct lo_inode *dir, const char *name, char *path,
			      size_t len)
{
	int r = rel_path(fs, dir, name, path, len);

	if (r < 0)
		return r == -ENAMETOOLONG ? r : -ENOENT;
	return -mirrorable(path);
}

/* Gives a file made by root on behalf of another user to that user. */
static void give_to_caller(fuse_req_t req, int dirfd, const char *name)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);

	if (geteuid() == 0 && (ctx->uid != 0 || ctx->gid != 0) &&
	    fchownat(dirfd, name, ctx->uid, ctx->gid, AT_SYMLINK_NOFOLLOW) < 0)
		log_debug("chown %s to %u:%u: %m", name, ctx->uid, ctx->gid);
}

static mode_t caller_mode(fuse_req_t req, mode_t mode)
{
	return mode & ~fuse_req_ctx(req)->umask;
}

/*
 * Creates a regular file name in dir (open flags for the returned fd, or
 * -1 to only create) and journals it.  Returns the fd (or 0) or -errno.
 */
static int create_regular(fuse_req_t req, struct lo_inode *dir, const char *name, mode_t mode,
			  int flags, bool *created)
{
	struct fs *fs = fs_of(req);
	struct journal *j = fs->cfg.journal;
	struct image *im = NULL;
	char path[PATH_MAX];
	struct stat st;
	int fd, r;

	*created = false;
	r = ns_begin(j);
	if (r < 0)
		return r;
	r = path_under_ns_lock(fs, dir, name, path, sizeof path);
	if (r < 0) {
		journal_ns_unlock(j);
		return r;
	}
	fd = openat(dir->fd, name, (flags < 0 ? O_WRONLY : flags & ~(O_TRUNC | O_APPEND)) |
		    O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, caller_mode(req, mode));
	if (fd < 0) {
		r = -errno;
		journal_ns_unlock(j);
		return r;
	}
	give_to_caller(req, dir->fd, name);
	r = fstat(fd, &st) < 0 ? -EIO : journal_create(j, path, st.st_mode, st.st_dev, st.st_ino, &im);
	if (r < 0) {
		/* Not journaled: undo, so that source and journal agree. */
		r = -journal_errno(r);
		unlinkat(dir->fd, name, 0);
		close(fd);
		journal_ns_unlock(j);
		return r;
	}
	journal_ns_unlock(j);
	journal_image_put(j, im);
	*created = true;
	if (flags < 0) {
		close(fd);
		return 0;
	}
	return fd;
}

static void reply_new_entry(fuse_req_t req, struct lo_inode *dir, const char *name)
{
	struct fuse_entry_param e;
	int err = do_lookup(fs_of(req), dir, name, &e);

	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_entry(req, &e);
}

static void lo_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     dev_t rdev)
{
	struct lo_inode *dir = inode_of(req, parent);
	bool created;
	int r;

	if (is_hidden(fs_of(req), dir, name)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (S_ISREG(mode)) {
		r = create_regular(req, dir, name, mode, -1, &created);
	} else {
		r = mknodat(dir->fd, name, caller_mode(req, mode), rdev) < 0 ? -errno : 0;
		if (r == 0)
			give_to_caller(req, dir->fd, name);
	}
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		reply_new_entry(req, dir, name);
}

static void lo_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct fs *fs = fs_of(req);
	struct lo_inode *dir = inode_of(req, parent);
	char path[PATH_MAX];
	int r;

	if (is_hidden(fs, dir, name)) {
		fuse_reply_err(req, EEXIST);
		return;
	}
	r = ns_begin(fs->cfg.journal);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	r = path_under_ns_lock(fs, dir, name, path, sizeof path);
	if (r < 0) {
		journal_ns_unlock(fs->cfg.journal);
		fuse_reply_err(req, -r);
		return;
	}
	if (mkdirat(dir->fd, name, caller_mode(req, mode)) < 0) {
		r = errno;
		journal_ns_unlock(fs->cfg.journal);
		fuse_reply_err(req, r);
		return;
	}
	give_to_caller(req, dir->fd, name);
	r = journal_mkdir(fs->cfg.journal, path, caller_mode(req, mode));
	if (r < 0) {
		/* Not journaled: undone, so that source and journal agree. */
		unlinkat(dir->fd, name, AT_REMOVEDIR);
		journal_ns_unlock(fs->cfg.journal);
		fuse_reply_err(req, journal_errno(r));
		return;
	}
	journal_ns_unlock(fs->cfg.journal);
	reply_new_entry(req, dir, name);
}

static void lo_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	struct lo_inode *dir = inode_of(req, parent);

	if (is_hidden(fs_of(req), dir, name)) {
		fuse_reply_err(req, EEXIST);
		return;
	}
	if (symlinkat(link, dir->fd, name) < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	give_to_caller(req, dir->fd, name);
	reply_new_entry(req, dir, name);
}

static void lo_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t parent, const char *name)
{
	(void)ino;
	(void)parent;
	/* A second name for an image would be a second image on the remote. */
	log_info("refused a hard link named %s: images are mirrored by name", name);
	fuse_reply_err(req, EPERM);
}

/* The image behind name in dir, if it is one (reference taken). */
static struct image *image_at(struct fs *fs, struct lo_inode *dir, const char *name,
			      struct stat *st)
{
	if (fstatat(dir->fd, name, st, AT_SYMLINK_NOFOLLOW) < 0) {
		st->st_mode = 0;
		return NULL;
	}
	if (!S_ISREG(st->st_mode))
		return NULL;
	return journal_image_lookup(fs->cfg.journal, st->st_dev, st->st_ino);
}

/*
 * Before the image at name in dir loses that name: under
 * backing_sync=checkpoint its fsynced writes may be in the journal only
 * until the next checkpoint, and a power cut that loses the unlink or
 * rename (nothing syncs the directory) would bring the name back on a file
 * without them, which the redo no longer finds.  So it is synced first
 * while the backing files are behind: before the namespace lock (it may
 * take a while), and at best (a sync that fails does not keep anyone from
 * removing an image, to free space say).
 */
static void sync_before_losing_name(struct fs *fs, struct lo_inode *dir, const char *name)
{
	struct stat st;
	struct image *im;
	int fd;

	if (fs->cfg.backing_sync_each_fsync || !journal_backing_unsynced(fs->cfg.journal))
		return;
	im = image_at(fs, dir, name, &st);
	if (!im)
		return;
	journal_image_put(fs->cfg.journal, im);
	fd = openat(dir->fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd >= 0 && aimfs_io.fdatasync_fn(fd) < 0)
		log_warn("syncing %s before it loses its name: %m; a power cut before the next"
			 " checkpoint may bring it back without its last writes", name);
	if (fd >= 0)
		close(fd);
}

static void lo_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	struct journal *j = fs->cfg.journal;
	struct lo_inode *dir = inode_of(req, parent);
	struct image *im;
	struct stat st;
	int err = 0;

	if (is_hidden(fs, dir, name)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	sync_before_losing_name(fs, dir, name);
	err = -ns_begin(j);
	if (err) {
		fuse_reply_err(req, err);
		return;
	}
	im = image_at(fs, dir, name, &st);
	if (unlinkat(dir->fd, name, 0) < 0)
		err = errno;
	else if (im && journal_unlink(j, im) < 0)
		err = EIO; /* removed, neither journaled nor owed: recovery reconciles */
	journal_ns_unlock(j);
	journal_image_put(j, im);
	fuse_reply_err(req, err);
}

static void lo_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	struct journal *j = fs->cfg.journal;
	struct lo_inode *dir = inode_of(req, parent);
	char path[PATH_MAX];
	int err = 0;

	if (is_hidden(fs, dir, name)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	err = -ns_begin(j);
	if (err) {
		fuse_reply_err(req, err);
		return;
	}
	if (rel_path(fs, dir, name, path, sizeof path) < 0)
		err = ENOENT;
	else if (unlinkat(dir->fd, name, AT_REMOVEDIR) < 0)
		err = errno;
	else if (journal_rmdir(j, path) < 0)
		err = EIO;
	journal_ns_unlock(j);
	fuse_reply_err(req, err);
}

static void lo_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	struct fs *fs = fs_of(req);
	struct journal *j = fs->cfg.journal;
	struct lo_inode *dir = inode_of(req, parent), *ndir = inode_of(req, newparent);
	char from[PATH_MAX], to[PATH_MAX];
	struct image *im = NULL, *replaced = NULL;
	struct stat st, nst;
	int err = 0, r;

	if (is_hidden(fs, dir, name) || is_hidden(fs, ndir, newname)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (flags & RENAME_EXCHANGE) {
		/* Not expressible as one ordered record; hypervisors do not use it. */
		fuse_reply_err(req, EINVAL);
		return;
	}
	sync_before_losing_name(fs, dir, name);
	sync_before_losing_name(fs, ndir, newname);
	err = -ns_begin(j);
	if (err) {
		fuse_reply_err(req, err);
		return;
	}
	/* Refused before it happens: done but not journaled, the replica
	 * would keep the old name until recovery reconciled at a remount. */
	if (rel_path(fs, dir, name, from, sizeof from) < 0)
		err = ENOENT;
	else
		err = -path_under_ns_lock(fs, ndir, newname, to, sizeof to);
	if (err) {
		journal_ns_unlock(j);
		fuse_reply_err(req, err);
		return;
	}
	im = image_at(fs, dir, name, &st);
	replaced = image_at(fs, ndir, newname, &nst);
	if (S_ISDIR(st.st_mode) && journal_rename_dir_check(j, from, to) < 0) {
		/* An image under it would get a name longer than a record can
		 * carry, so the journal could not describe the rename: refused
		 * before it happens, as a hard link is. */
		log_info("refused renaming directory %s to %s: an image's name under it would be too long to mirror",
			 from, to);
		err = ENAMETOOLONG;
	} else if (renameat2(dir->fd, name, ndir->fd, newname, flags) < 0) {
		err = errno;
	} else {
		if (S_ISDIR(st.st_mode))
			r = journal_rename_dir(j, from, to);
		else if (im)
			r = journal_rename(j, im, to, replaced);
		else if (replaced)
			r = journal_unlink(j, replaced);
		else
			r = 0;
		if (r < 0)
			err = EIO; /* done, neither journaled nor owed: recovery reconciles */
	}
	journal_ns_unlock(j);
	journal_image_put(j, im);
	journal_image_put(j, replaced);
	fuse_reply_err(req, err);
}

/* ---- files ---- */

static int open_flags(int flags)
{
	/* Positions come from the kernel: O_APPEND on the backing fd would make
	 * pwrite ignore them and the journal's offsets wrong. */
	return (flags & ~(O_TRUNC | O_APPEND | O_CREAT | O_EXCL | O_NOCTTY)) | O_CLOEXEC;
}

/* Counts fh, a new file handle of in, as open and puts it on fs->open_list. */
static void track_fh(struct fs *fs, struct lo_inode *in, struct lo_fh *fh)
{
	pthread_mutex_lock(&fs->lock);
	in->nopen++;
	atomic_fetch_add(&fs->open_handles, 1);
	fh->prev = NULL;
	fh->next = fs->open_list;
	if (fs->open_list)
		fs->open_list->prev = fh;
	fs->open_list = fh;
	pthread_mutex_unlock(&fs->lock);
}

/* Undoes track_fh for a handle being closed. */
static void untrack_fh(struct fs *fs, struct lo_inode *in, struct lo_fh *fh)
{
	pthread_mutex_lock(&fs->lock);
	in->nopen--;
	atomic_fetch_sub(&fs->open_handles, 1);
	if (fh->prev)
		fh->prev->next = fh->next;
	else
		fs->open_list = fh->next;
	if (fh->next)
		fh->next->prev = fh->prev;
	pthread_mutex_unlock(&fs->lock);
}

unsigned fs_open_count(struct fs *fs)
{
	return atomic_load(&fs->open_handles);
}

/* Closes a file handle of in (released, or its open was interrupted). */
static void drop_fh(struct fs *fs, struct lo_inode *in, struct lo_fh *fh)
{
	untrack_fh(fs, in, fh);
	readahead_destroy(&fh->ra); /* waits for a read ahead still going */
	close(fh->fd);
	free(fh);
}

/*
 * With the writeback cache the kernel reads the rest of a page a write only
 * partly covers, and writes cached pages back through any handle open for
 * writing: an O_WRONLY open must be able to read (libfuse's passthrough_ll
 * does the same).  O_APPEND is the kernel's business then, as always here.
 */
static int cache_flags(const struct fs *fs, int flags)
{
	if (fs->cfg.writeback_cache && !(flags & O_DIRECT) && (flags & O_ACCMODE) == O_WRONLY)
		flags = (flags & ~O_ACCMODE) | O_RDWR;
	return flags;
}

/* proc_open with cache_flags; falls back to the caller's own access mode
 * where reading is refused (aimfs not running as root). */
static int proc_open_cached(const struct fs *fs, struct lo_inode *in, int flags)
{
	int fd = proc_open(in, cache_flags(fs, flags));

	if (fd < 0 && errno == EACCES && cache_flags(fs, flags) != flags)
		fd = proc_open(in, flags);
	return fd;
}

static int make_fh(struct fs *fs, struct lo_inode *in, struct fuse_file_info *fi, int fd,
		   int flags)
{
	struct lo_fh *fh = calloc(1, sizeof *fh);

	if (!fh)
		return -ENOMEM;
	fh->fd = fd;
	fh->direct = (flags & O_DIRECT) != 0;
	readahead_init(&fh->ra, fd);
	fi->fh = (uint64_t)(uintptr_t)fh;
	track_fh(fs, in, fh);
	/*
	 * O_DIRECT opens bypass the kernel's page cache of the FUSE file as
	 * well (FOPEN_DIRECT_IO).  Besides being what O_DIRECT means, it saves
	 * a round trip per write: on the cached path the kernel asks for the
	 * security.capability xattr before every write.
	 */
	if (fh->direct) {
		fi->direct_io = 1;
		/* Overlapping writes are ordered by the range lock: the kernel
		 * need not hold the inode lock across one. */
		session_parallel_direct_writes();
	}
	return 0;
}

static void lo_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct lo_inode *dir = inode_of(req, parent);
	struct fuse_entry_param e;
	bool created;
	int fd, err;

	if (is_hidden(fs, dir, name)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	fd = create_regular(req, dir, name, mode, cache_flags(fs, open_flags(fi->flags)), &created);
	if (fd == -EEXIST && !(fi->flags & O_EXCL)) {
		/* Exists: an ordinary open (the kernel sends create for O_CREAT). */
		struct lo_inode *in;

		err = do_lookup(fs, dir, name, &e);
		if (err) {
			fuse_reply_err(req, err);
			return;
		}
		in = inode_of(req, e.ino);
		fd = proc_open_cached(fs, in, open_flags(fi->flags));
		if (fd < 0) {
			err = errno;
			unref_inode(fs, in, 1);
			fuse_reply_err(req, err);
			return;
		}
		if ((fi->flags & O_TRUNC) && in->type == S_IFREG &&
		    (err = truncate_at_open(fs, in, fd, fi->flags)) != 0) {
			close(fd);
			unref_inode(fs, in, 1);
			fuse_reply_err(req, err);
			return;
		}
		goto reply;
	}
	if (fd < 0) {
		fuse_reply_err(req, -fd);
		return;
	}
	err = do_lookup(fs, dir, name, &e);
	if (err) {
		close(fd);
		fuse_reply_err(req, err);
		return;
	}
reply:
	if (make_fh(fs, inode_of(req, e.ino), fi, fd, fi->flags) < 0) {
		close(fd);
		unref_inode(fs, inode_of(req, e.ino), 1);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (fuse_reply_create(req, &e, fi) == -ENOENT) {
		/* interrupted: the kernel will not release it */
		drop_fh(fs, inode_of(req, e.ino), fh_of(fi));
		unref_inode(fs, inode_of(req, e.ino), 1);
	}
}

static void lo_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct lo_inode *in = inode_of(req, ino);
	int fd, err;

	fd = proc_open_cached(fs, in, open_flags(fi->flags));
	if (fd < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	if ((fi->flags & O_TRUNC) && in->type == S_IFREG &&
	    (err = truncate_at_open(fs, in, fd, fi->flags)) != 0) {
		close(fd);
		fuse_reply_err(req, err);
		return;
	}
	if (make_fh(fs, in, fi, fd, fi->flags) < 0) {
		close(fd);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (fuse_reply_open(req, fi) == -ENOENT)
		drop_fh(fs, in, fh_of(fi));
}

static void lo_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	drop_fh(fs_of(req), inode_of(req, ino), fh_of(fi));
	fuse_reply_err(req, 0);
}

/*
 * An O_DIRECT handle read sequentially one request at a time has the next
 * range read ahead while the reply is sent (readahead.h); not under FUSE
 * over io_uring, whose reply already lands in place (not measured).
 */
static void lo_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct lo_fh *fh = fh_of(fi);
	void *buf = session_reply_buffer(size);
	struct readahead_turn turn;
	const void *ahead = NULL;
	size_t done = 0;
	int err = 0;

	if (fh->direct) {
		ahead = readahead_begin(&fh->ra, lock_of(inode_of(req, ino)), (uint64_t)off, size,
					!buf, &done, &turn);
		if (ahead) {
			fuse_reply_buf(req, ahead, done);
			readahead_sent(&fh->ra, &turn); /* the release waits for this */
			return;
		}
	}
	if (!buf)
		buf = thread_buffer(size);
	if (!buf)
		err = ENOMEM;
	while (buf && done < size) {
		ssize_t n = pread(fh->fd, (char *)buf + done, size - done, off + (off_t)done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			if (!done)
				err = errno;
			break;
		}
		if (n == 0)
			break;
		done += (size_t)n;
		if (fh->direct)
			break; /* a short direct read is the kernel's answer; do not split it */
	}
	/* Not after the reply: the handle may be released once it is sent. */
	if (fh->direct)
		readahead_end(&fh->ra);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_buf(req, buf, done);
}

static void lo_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct journal *j = fs->cfg.journal;
	struct lo_inode *in = inode_of(req, ino);
	struct lo_fh *fh = fh_of(fi);
	struct journal_ticket t = { .slot = -1 };
	struct range_held h;
	const char *src = buf;
	size_t done = 0;
	int fd = fh->fd, own_fd = -1, err = 0, r;

	/* What a full disk left owed goes first (a failed write's truth). */
	if (in->image && journal_owes(j) && (r = journal_settle(j)) < 0) {
		fuse_reply_err(req, journal_errno(r));
		return;
	}
	if (fi->writepage) {
		/* The page cache's writeback comes through any handle open for
		 * writing, an O_DIRECT one too, and its last page ends at the
		 * end of the file: that one goes through a buffered descriptor. */
		__atomic_store_n(&in->cache_written, true, __ATOMIC_RELAXED);
		if (fh->direct && (((uint64_t)off | size) & (IO_ALIGN - 1))) {
			own_fd = fd = proc_open(in, O_WRONLY);
			if (fd < 0) {
				fuse_reply_err(req, errno);
				return;
			}
		}
	}
	if (fh->direct && own_fd < 0 && ((uintptr_t)buf & (IO_ALIGN - 1))) {
		/* session.c lays requests out with the payload aligned; a
		 * loop that does not (-s, clone_fd) needs the copy */
		void *aligned = thread_buffer(size);

		if (!aligned) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		memcpy(aligned, buf, size);
		src = aligned;
	}
	kill_suidgid(fd);
	rangelock_acquire(lock_of(in), &h, (uint64_t)off, size);
	if (in->image && (r = journal_write(j, in->image, (uint64_t)off, buf, size, &t)) < 0) {
		rangelock_release(lock_of(in), &h);
		if (own_fd >= 0)
			close(own_fd);
		fuse_reply_err(req, journal_errno(r));
		return;
	}
	while (done < size) {
		ssize_t n = aimfs_io.pwrite_fn(fd, src + done, size - done, off + (off_t)done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err = n < 0 ? errno : EIO;
			break;
		}
		done += (size_t)n;
	}
	rangelock_release(lock_of(in), &h);
	if (done < size && t.lsn) {
		/* The journal holds all of it, the file maybe less: tell the
		 * journal the truth, under the whole-file lock. */
		journal_backing_failed(j, err ? -err : -EIO);
		rangelock_acquire(lock_of(in), &h, 0, RANGE_END);
		journal_correct(j, in->image, fd, (uint64_t)off, size, &t);
		rangelock_release(lock_of(in), &h);
	}
	journal_done(j, &t);
	if (own_fd >= 0)
		close(own_fd);
	fh->written = true;
	/* A short count is what a buffered writer expects (its next call gets
	 * the errno), but the kernel answers a short asynchronous direct write
	 * (QEMU's cache=none,aio=native) with EIO, and QEMU's werror=enospc
	 * then reports an I/O error to the guest instead of pausing it.  So a
	 * direct write that failed part way answers its errno: what landed is
	 * in the journal (the correction above), as a failed write may have
	 * changed the file. */
	if (err && (done == 0 || fh->direct))
		fuse_reply_err(req, err);
	else
		fuse_reply_write(req, done);
}

static void lo_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct lo_inode *in = inode_of(req, ino);
	struct lo_fh *fh = fh_of(fi);
	int err = 0;

	/* close(): an ordering point for the remote, not a durability one.
	 * The kernel wrote this file's cached pages back before asking. */
	if ((fh->written || __atomic_exchange_n(&in->cache_written, false, __ATOMIC_RELAXED)) &&
	    in->image) {
		int r = journal_barrier(fs_of(req)->cfg.journal, in->image, false);

		fh->written = false;
		if (r < 0)
			err = journal_errno(r);
	}
	fuse_reply_err(req, err);
}

static void lo_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct lo_inode *in = inode_of(req, ino);
	struct lo_fh *fh = fh_of(fi);
	int err = 0;

	if (in->image) {
		struct journal *j = fs_of(req)->cfg.journal;
		/* After a write-back error the backing file may have lost what
		 * it was given (the journal keeps it for the next mount's redo):
		 * no fsync says all is well until then. */
		int r = journal_writeback_lost(j) ? -EIO : journal_settle(j);

		if (r == 0)
			r = journal_barrier(j, in->image, true);
		if (r < 0) {
			fuse_reply_err(req, journal_errno(r));
			return;
		}
		fh->written = false;
		/* The journal is durable through this fsync: a power loss redoes
		 * it onto the backing file from the last checkpoint (actlog.h),
		 * so the backing file waits for that checkpoint (one device
		 * flush instead of two).  Unless its directory entry may not be
		 * durable yet: created since the last checkpoint began. */
		if (!fs_of(req)->cfg.backing_sync_each_fsync && !journal_fsync_needs_backing(j, in->image)) {
			fuse_reply_err(req, 0);
			return;
		}
	}
	if ((datasync ? aimfs_io.fdatasync_fn(fh->fd) : aimfs_io.fsync_fn(fh->fd)) < 0)
		err = errno;
	fuse_reply_err(req, err);
}

static void lo_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
			 struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct journal *j = fs->cfg.journal;
	struct lo_inode *in = inode_of(req, ino);
	struct lo_fh *fh = fh_of(fi);
	struct journal_ticket t = { .slot = -1 };
	struct range_held h;
	bool keep = (mode & FALLOC_FL_KEEP_SIZE) != 0;
	int r = 0, err = 0;

	if (off < 0 || len <= 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (in->image && (r = journal_settle(j)) < 0) {
		fuse_reply_err(req, journal_errno(r));
		return;
	}
	rangelock_acquire(lock_of(in), &h, (uint64_t)off, (uint64_t)len);
	if (in->image) {
		switch (mode & ~FALLOC_FL_KEEP_SIZE) {
		case 0:
			r = journal_alloc(j, in->image, (uint64_t)off, (uint64_t)len, keep, &t);
			break;
		case FALLOC_FL_PUNCH_HOLE:
			r = keep ? journal_zero(j, in->image, (uint64_t)off, (uint64_t)len, true,
						true, &t)
				 : -EOPNOTSUPP;
			break;
		case FALLOC_FL_ZERO_RANGE:
			r = journal_zero(j, in->image, (uint64_t)off, (uint64_t)len, false, keep, &t);
			break;
		default:
			/* collapse/insert range would shift data: not mirrored */
			r = -EOPNOTSUPP;
		}
	}
	if (r < 0) {
		rangelock_release(lock_of(in), &h);
		fuse_reply_err(req, r == -EOPNOTSUPP ? EOPNOTSUPP : journal_errno(r));
		return;
	}
	if (aimfs_io.fallocate_fn(fh->fd, mode, off, len) < 0)
		err = errno;
	rangelock_release(lock_of(in), &h);
	if (err && t.lsn) {
		journal_backing_failed(j, -err);
		rangelock_acquire(lock_of(in), &h, 0, RANGE_END);
		journal_correct(j, in->image, fh->fd, (uint64_t)off, (uint64_t)len, &t);
		rangelock_release(lock_of(in), &h);
	}
	journal_done(j, &t);
	if (!err)
		fh->written = true;
	fuse_reply_err(req, err);
}

static void lo_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		     struct fuse_file_info *fi)
{
	off_t r = lseek(fh_of(fi)->fd, off, whence);

	(void)ino;
	if (r < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_lseek(req, r);
}

/* ---- directories ---- */

static void lo_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct lo_inode *in = inode_of(req, ino);
	struct lo_dirp *d = calloc(1, sizeof *d);
	int fd, err;

	if (!d) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	fd = openat(in->fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || !(d->dp = fdopendir(fd))) {
		err = errno;
		if (fd >= 0)
			close(fd);
		free(d);
		fuse_reply_err(req, err);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)d;
	if (fuse_reply_open(req, fi) == -ENOENT) {
		closedir(d->dp);
		free(d);
	}
}

static void lo_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
		       struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct lo_inode *dir = inode_of(req, ino);
	struct lo_dirp *d = (struct lo_dirp *)(uintptr_t)fi->fh;
	char *buf = calloc(1, size), *p = buf;
	size_t rem = size;

	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (offset != d->offset) {
		seekdir(d->dp, offset);
		d->entry = NULL;
		d->offset = offset;
	}
	for (;;) {
		struct stat st = { 0 };
		size_t n;

		if (!d->entry) {
			errno = 0;
			d->entry = readdir(d->dp);
			if (!d->entry) {
				if (errno && rem == size) {
					free(buf);
					fuse_reply_err(req, errno);
					return;
				}
				break;
			}
		}
		if (is_hidden(fs, dir, d->entry->d_name)) {
			d->offset = d->entry->d_off;
			d->entry = NULL;
			continue;
		}
		st.st_ino = d->entry->d_ino;
		st.st_mode = (mode_t)d->entry->d_type << 12;
		n = fuse_add_direntry(req, p, rem, d->entry->d_name, &st, d->entry->d_off);
		if (n > rem)
			break;
		p += n;
		rem -= n;
		d->offset = d->entry->d_off;
		d->entry = NULL;
	}
	fuse_reply_buf(req, buf, size - rem);
	free(buf);
}

static void lo_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct lo_dirp *d = (struct lo_dirp *)(uintptr_t)fi->fh;

	(void)ino;
	closedir(d->dp);
	free(d);
	fuse_reply_err(req, 0);
}

static void lo_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct lo_dirp *d = (struct lo_dirp *)(uintptr_t)fi->fh;
	int fd = dirfd(d->dp);

	(void)ino;
	fuse_reply_err(req, (datasync ? aimfs_io.fdatasync_fn(fd) : aimfs_io.fsync_fn(fd)) < 0 ? errno : 0);
}

static void lo_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;

	if (fstatvfs(inode_of(req, ino)->fd, &sv) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &sv);
}

/* ---- xattrs (passed through, not mirrored) ---- */

static int xattr_path(struct lo_inode *in, char *proc, size_t len)
{
	if (in->type == S_IFLNK)
		return -EPERM;
	snprintf(proc, len, "/proc/self/fd/%d", in->fd);
	return 0;
}

static void reply_xattr(fuse_req_t req, ssize_t n, size_t size, const char *buf)
{
	if (n < 0)
		fuse_reply_err(req, errno);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)n);
	else
		fuse_reply_buf(req, buf, (size_t)n);
}

static void lo_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	char proc[64], *buf = NULL;
	ssize_t n;

	if (xattr_path(inode_of(req, ino), proc, sizeof proc) < 0) {
		fuse_reply_err(req, ENOTSUP);
		return;
	}
	if (size && !(buf = malloc(size))) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	n = getxattr(proc, name, buf, size);
	reply_xattr(req, n, size, buf);
	free(buf);
}

static void lo_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	char proc[64], *buf = NULL;
	ssize_t n;

	if (xattr_path(inode_of(req, ino), proc, sizeof proc) < 0) {
		fuse_reply_err(req, ENOTSUP);
		return;
	}
	if (size && !(buf = malloc(size))) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	n = listxattr(proc, buf, size);
	reply_xattr(req, n, size, buf);
	free(buf);
}

static void lo_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			size_t size, int flags)
{
	char proc[64];

	if (xattr_path(inode_of(req, ino), proc, sizeof proc) < 0) {
		fuse_reply_err(req, ENOTSUP);
		return;
	}
	untracked_change(fs_of(req), inode_of(req, ino));
	fuse_reply_err(req, setxattr(proc, name, value, size, flags) < 0 ? errno : 0);
}

static void lo_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	char proc[64];

	if (xattr_path(inode_of(req, ino), proc, sizeof proc) < 0) {
		fuse_reply_err(req, ENOTSUP);
		return;
	}
	untracked_change(fs_of(req), inode_of(req, ino));
	fuse_reply_err(req, removexattr(proc, name) < 0 ? errno : 0);
}

static const struct fuse_lowlevel_ops lo_ops = {
	.init = lo_init,
	.lookup = lo_lookup,
	.forget = lo_forget,
	.forget_multi = lo_forget_multi,
	.getattr = lo_getattr,
	.setattr = lo_setattr,
	.readlink = lo_readlink,
	.mknod = lo_mknod,
	.mkdir = lo_mkdir,
	.symlink = lo_symlink,
	.link = lo_link,
	.unlink = lo_unlink,
	.rmdir = lo_rmdir,
	.rename = lo_rename,
	.create = lo_create,
	.open = lo_open,
	.release = lo_release,
	.read = lo_read,
	.write = lo_write,
	.flush = lo_flush,
	.fsync = lo_fsync,
	.fallocate = lo_fallocate,
	.lseek = lo_lseek,
	.opendir = lo_opendir,
	.readdir = lo_readdir,
	.releasedir = lo_releasedir,
	.fsyncdir = lo_fsyncdir,
	.statfs = lo_statfs,
	.getxattr = lo_getxattr,
	.listxattr = lo_listxattr,
	.setxattr = lo_setxattr,
	.removexattr = lo_removexattr,
};

const struct fuse_lowlevel_ops *fs_ops(void)
{
	return &lo_ops;
}

struct fs *fs_new(const struct fs_config *cfg)
{
	struct fs *fs = calloc(1, sizeof *fs);
	struct stat st;

	if (!fs)
		return NULL;
	fs->cfg = *cfg;
	fs->backing_len = strlen(cfg->backing_dir);
	while (fs->backing_len > 1 && cfg->backing_dir[fs->backing_len - 1] == '/')
		fs->backing_len--;
	if (cfg->hide_name && !(fs->hide_name = strdup(cfg->hide_name))) {
		free(fs);
		return NULL;
	}
	pthread_mutex_init(&fs->lock, NULL);
	fs->root.fd = cfg->backing_fd;
	if (fstat(cfg->backing_fd, &st) < 0) {
		fs_free(fs);
		return NULL;
	}
	fs->root.dev = st.st_dev;
	fs->root.ino = st.st_ino;
	fs->root.type = S_IFDIR;
	fs->root.nlookup = 2;
	rangelock_init(&fs->root.rl);
	return fs;
}

unsigned fs_open_files(struct fs *fs, char *names, size_t len)
{
	unsigned n = 0;
	size_t used = 0;

	if (len)
		names[0] = '\0';
	pthread_mutex_lock(&fs->lock);
	for (size_t b = 0; b < INODE_BUCKETS; b++) {
		for (struct lo_inode *in = fs->buckets[b]; in; in = in->next) {
			char rel[PATH_MAX];
			int w;

			if (!in->nopen)
				continue;
			n += in->nopen;
			if (used + 1 >= len || rel_path(fs, in, NULL, rel, sizeof rel) < 0)
				continue;
			w = snprintf(names + used, len - used, "%s%s", used ? ", " : "", rel);
			if (w < 0 || (size_t)w >= len - used) {
				names[used] = '\0';
				used = len; /* full: count the rest only */
			} else {
				used += (size_t)w;
			}
		}
	}
	pthread_mutex_unlock(&fs->lock);
	return n;
}

void fs_free(struct fs *fs)
{
	if (!fs)
		return;
	while (fs->open_list) {
		struct lo_fh *fh = fs->open_list;

		fs->open_list = fh->next;
		readahead_destroy(&fh->ra);
		close(fh->fd);
		free(fh);
	}
	for (size_t b = 0; b < INODE_BUCKETS; b++) {
		while (fs->buckets[b]) {
			struct lo_inode *in = fs->buckets[b];

			fs->buckets[b] = in->next;
			inode_free(fs, in);
		}
	}
	rangelock_destroy(&fs->root.rl);
	pthread_mutex_destroy(&fs->lock);
	free(fs->hide_name);
	free(fs);
}
