/*
 * bdi.c — the kernel's writeback limits of aimfs's own mount (bdi.h).
 */
#include "bdi.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static bool same_path(const char *escaped, const char *path)
{
	while (*escaped && *path) {
		char c = *escaped;

		if (c == '\\' && escaped[1] >= '0' && escaped[1] <= '7' && escaped[2] >= '0' &&
		    escaped[2] <= '7' && escaped[3] >= '0' && escaped[3] <= '7') {
			c = (char)(((escaped[1] - '0') << 6) | ((escaped[2] - '0') << 3) |
				   (escaped[3] - '0'));
			escaped += 4;
		} else {
			escaped++;
		}
		if (c != *path++)
			return false;
	}
	return !*escaped && !*path;
}

/* "MAJ:MIN" of the last FUSE mount at mountpoint (the one on top). */
static int mount_device(const char *mountpoint, char *dev, size_t size)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	int r = -ENOENT;

	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0) {
		/* ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS...] - FSTYPE ... */
		char *save = NULL, *field[5], *dash;
		int n = 0;

		dash = strstr(line, " - ");
		if (!dash || strncmp(dash + 3, "fuse", 4) != 0)
			continue;
		*dash = '\0';
		for (char *tok = strtok_r(line, " ", &save); tok && n < 5;
		     tok = strtok_r(NULL, " ", &save))
			field[n++] = tok;
		if (n == 5 && same_path(field[4], mountpoint) && strlen(field[2]) < size) {
			strcpy(dev, field[2]);
			r = 0;
		}
	}
	free(line);
	fclose(f);
	return r;
}

int bdi_lift_strict_limit(const char *mountpoint)
{
	char dev[64], path[128];
	int fd, r;

	r = mount_device(mountpoint, dev, sizeof dev);
	if (r < 0)
		return r;
	snprintf(path, sizeof path, "/sys/class/bdi/%s/strict_limit", dev);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	r = write(fd, "0", 1) == 1 ? 0 : -errno;
	close(fd);
	return r;
}
