/*
 * slowrename.c — an LD_PRELOAD shim for aim-remote in tests: the rename
 * that moves a received segment from its ".part" file into the inbox
 * waits first, so that a test can run something (a promote) inside the
 * window between the receiver's last checks and the rename.
 *
 *   AIM_TEST_SLOW_RENAME=NAME:MS   delays the rename of a ".part" file to
 *                                  NAME (a segment file name) by MS ms
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
	      unsigned int flags)
{
	static int (*real)(int, const char *, int, const char *, unsigned int);
	const char *want = getenv("AIM_TEST_SLOW_RENAME");
	size_t olen = strlen(oldpath);

	if (!real)
		real = (int (*)(int, const char *, int, const char *, unsigned int))
			dlsym(RTLD_NEXT, "renameat2");
	if (want && olen > 5 && strcmp(oldpath + olen - 5, ".part") == 0) {
		const char *colon = strrchr(want, ':');

		if (colon && (size_t)(colon - want) == strlen(newpath) &&
		    strncmp(want, newpath, (size_t)(colon - want)) == 0) {
			long ms = atol(colon + 1);
			struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

			fprintf(stderr, "slowrename: holding the rename to %s for %ld ms\n", newpath,
				ms);
			nanosleep(&ts, NULL);
		}
	}
	return real(olddirfd, oldpath, newdirfd, newpath, flags);
}
