/*
 * watcher.c — notices segments arriving in the inbox, whoever puts them
 * there: aim-remote's own receiver, a WebDAV server writing a temporary
 * file and renaming it, or an operator's cp + mv.  libinotifytools watches
 * the inbox itself (new group directories) and each inbox/<group>/ for
 * IN_CLOSE_WRITE and IN_MOVED_TO; an event whose name is a sealed segment
 * name kicks that group's thread, which looks at its directory itself.  So
 * the watcher never decides anything from an event: a missed or merged
 * event costs nothing as long as some kick follows, which the start-up
 * scan, the rescan after IN_Q_OVERFLOW and main.c's slow timer ensure.
 *
 * libinotifytools keeps global state and is not thread-safe: only the
 * main thread calls in here.  It does not expose its descriptor, so
 * watcher_start finds it in /proc/self/fd (the only inotify instance of
 * the process) for the poll loop.
 */
#include "remote_i.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inotifytools/inotifytools.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#define INBOX_EVENTS (IN_CREATE | IN_MOVED_TO | IN_ONLYDIR)
#define GROUP_EVENTS (IN_CLOSE_WRITE | IN_MOVED_TO | IN_ONLYDIR)

static int inbox_wd = -1;
static int ino_fd = -1;
static bool started;

int watcher_fd(void)
{
	return ino_fd;
}

/* The descriptor libinotifytools opened: the process's only inotify
 * instance. */
static int find_inotify_fd(void)
{
	char link[300], target[64];
	struct dirent *de;
	DIR *d = opendir("/proc/self/fd");
	int found = -1;

	if (!d)
		return -1;
	while ((de = readdir(d))) {
		ssize_t n;

		if (de->d_name[0] == '.')
			continue;
		snprintf(link, sizeof link, "/proc/self/fd/%s", de->d_name);
		n = readlink(link, target, sizeof target - 1);
		if (n <= 0)
			continue;
		target[n] = '\0';
		if (strcmp(target, "anon_inode:inotify") == 0) {
			found = atoi(de->d_name);
			break;
		}
	}
	closedir(d);
	return found;
}

/* Watches INBOX/<name>/.  force: the directory was just (re)created, so
 * any watch libinotifytools remembers for that name is stale. */
static void watch_group(struct remote *r, const char *name, bool force)
{
	char path[PATH_MAX];

	/* libinotifytools names watched directories with a trailing '/' */
	snprintf(path, sizeof path, "%s/%s/", r->cfg.inbox, name);
	if (!force && inotifytools_wd_from_filename(path) >= 0)
		return;
	path[strlen(path) - 1] = '\0';
	if (!inotifytools_watch_file(path, GROUP_EVENTS)) {
		int e = inotifytools_error();

		/* A directory that vanished, or something else under a
		 * group's name: nothing to watch. */
		if (e != ENOENT && e != ENOTDIR)
			log_error("cannot watch %s: %s", path, strerror(e));
	}
}

void watcher_scan(struct remote *r)
{
	struct dirent *de;
	uint8_t id[16];
	DIR *d;
	int fd = openat(r->inbox_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || !(d = fdopendir(fd))) {
		log_error("cannot list the inbox %s: %m", r->cfg.inbox);
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(d))) {
		struct stat st;

		if (!group_name_valid(de->d_name, id))
			continue;
		if (fstatat(r->inbox_fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISDIR(st.st_mode))
			continue;
		/* Watch first, then kick: whatever lands after the watch is
		 * seen by inotify, whatever landed before by the group's look. */
		if (started)
			watch_group(r, de->d_name, false);
		groups_kick(r, de->d_name);
	}
	closedir(d);
	groups_kick_all(r);
}

int watcher_start(struct remote *r)
{
	if (!inotifytools_initialize()) {
		log_error("inotify: %s", strerror(inotifytools_error()));
		return -inotifytools_error();
	}
	started = true;
	if (!inotifytools_watch_file(r->cfg.inbox, INBOX_EVENTS)) {
		int e = inotifytools_error();

		log_error("cannot watch the inbox %s: %s", r->cfg.inbox, strerror(e));
		return -e;
	}
	{
		/* libinotifytools names watched directories with a trailing '/' */
		char path[PATH_MAX];

		snprintf(path, sizeof path, "%s/", r->cfg.inbox);
		inbox_wd = inotifytools_wd_from_filename(path);
	}
	ino_fd = find_inotify_fd();
	if (ino_fd < 0)
		log_info("inotify descriptor not found in /proc/self/fd; polling it every second");
	watcher_scan(r);
	return 0;
}

/* The group directory name of a watched path "INBOX/<group>/". */
static const char *group_of_wd(int wd, char *buf, size_t len)
{
	const char *path = inotifytools_filename_from_wd(wd);
	const char *end, *start;

	if (!path)
		return NULL;
	end = path + strlen(path);
	while (end > path && end[-1] == '/')
		end--;
	start = end;
	while (start > path && start[-1] != '/')
		start--;
	if ((size_t)(end - start) >= len)
		return NULL;
	memcpy(buf, start, (size_t)(end - start));
	buf[end - start] = '\0';
	return buf;
}

void watcher_drain(struct remote *r)
{
	struct inotify_event *ev;
	bool rescan = false;
	uint8_t id[16];
	char group[64];

	/* A timeout of 0 seconds makes this non-blocking. */
	while ((ev = inotifytools_next_events(0, 1))) {
		uint64_t num;

		if (ev->mask & IN_Q_OVERFLOW) {
			rescan = true;
			continue;
		}
		/* IN_IGNORED (a group directory removed) needs nothing: should
		 * it come back, its IN_CREATE watches it again. */
		if (!ev->len)
			continue;
		if (ev->wd == inbox_wd) {
			if ((ev->mask & IN_ISDIR) && group_name_valid(ev->name, id)) {
				watch_group(r, ev->name, true);
				groups_kick(r, ev->name);
			}
			continue;
		}
		if (seg_parse_file_name(ev->name, &num) < 0)
			continue;
		if (group_of_wd(ev->wd, group, sizeof group) && group_name_valid(group, id))
			groups_kick(r, group);
	}
	if (rescan) {
		log_info("inotify queue overflowed; rescanning the inbox");
		watcher_scan(r);
	}
}

void watcher_stop(void)
{
	if (started)
		inotifytools_cleanup();
	started = false;
	ino_fd = -1;
}
