/*
 * imgcheck.c — one image at one point of a check: its hash (XXH3-64 of
 * its bytes, so that two runs, or a run and the source, can be compared
 * point by point) and its consistency check.  qcow2 images are checked with
 * `qemu-img check` (exit 0, or 3 for leaked clusters only, which a crash
 * may leave and which cost space, not data, is a pass); the others with
 * the operator's command, if any.
 *
 * The checkers read the scratch image the replay is writing, so a checker
 * that writes (e2fsck -y, qemu-img check -r) would make every later point
 * a lie: an image whose size or bytes differ after its check stops the
 * check (its change time tells cheaply when they cannot have changed).
 */
#include "aimctl.h"
#include "fileio.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#define HASH_CHUNK (1u << 20)
#define OUTPUT_MAX (16u << 10) /* what is kept of a checker's output */

static const uint8_t qcow2_magic[4] = { 'Q', 'F', 'I', 0xfb };

void img_result_clear(struct img_result *r)
{
	free(r->output);
	memset(r, 0, sizeof *r);
	r->exit_code = -1;
}

/* XXH3-64 of the whole file, and whether it starts like a qcow2 image. */
static int hash_file(int fd, uint64_t *hash, bool *qcow2)
{
	XXH3_state_t *st = XXH3_createState();
	uint8_t *buf = malloc(HASH_CHUNK);
	off_t off = 0;
	int r = 0;

	*qcow2 = false;
	if (!st || !buf) {
		XXH3_freeState(st);
		free(buf);
		return -ENOMEM;
	}
	XXH3_64bits_reset(st);
	for (;;) {
		ssize_t n = fileio_pread_full(NULL, fd, buf, HASH_CHUNK, (uint64_t)off);

		if (n < 0) {
			r = (int)n;
			break;
		}
		if (n == 0)
			break;
		if (off == 0 && n >= 4 && memcmp(buf, qcow2_magic, 4) == 0)
			*qcow2 = true;
		XXH3_64bits_update(st, buf, (size_t)n);
		off += n;
	}
	*hash = XXH3_64bits_digest(st);
	XXH3_freeState(st);
	free(buf);
	return r;
}

/* The path quoted for sh: '...' with every ' as '\''. */
static char *shell_quote(const char *s)
{
	size_t n = 3;
	char *out, *p;

	for (const char *q = s; *q; q++)
		n += *q == '\'' ? 4 : 1;
	out = malloc(n);
	if (!out)
		return NULL;
	p = out;
	*p++ = '\'';
	for (; *s; s++) {
		if (*s == '\'') {
			memcpy(p, "'\\''", 4);
			p += 4;
		} else {
			*p++ = *s;
		}
	}
	*p++ = '\'';
	*p = '\0';
	return out;
}

/* cmd with every "{}" replaced by the quoted path (appended if none). */
static char *expand(const char *cmd, const char *path)
{
	char *q = shell_quote(path), *out, *p;
	size_t n = strlen(cmd) + 2, ql;
	bool any = false;

	if (!q)
		return NULL;
	ql = strlen(q);
	for (const char *c = strstr(cmd, "{}"); c; c = strstr(c + 2, "{}"))
		n += ql;
	n += ql;
	out = malloc(n);
	if (!out) {
		free(q);
		return NULL;
	}
	p = out;
	for (const char *c = cmd; *c;) {
		if (c[0] == '{' && c[1] == '}') {
			memcpy(p, q, ql);
			p += ql;
			c += 2;
			any = true;
		} else {
			*p++ = *c++;
		}
	}
	if (!any) {
		*p++ = ' ';
		memcpy(p, q, ql);
		p += ql;
	}
	*p = '\0';
	free(q);
	return out;
}

/* Runs argv with stdin from /dev/null and stdout + stderr collected (the
 * first OUTPUT_MAX bytes).  Returns the exit status (128 + signal), or
 * -errno if it could not run. */
static int run(char *const argv[], char *const env[], char **output)
{
	int pfd[2], status;
	size_t len = 0;
	char *buf = malloc(OUTPUT_MAX + 1);
	pid_t pid;

	*output = NULL;
	if (!buf)
		return -ENOMEM;
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		free(buf);
		return -errno;
	}
	pid = fork();
	if (pid < 0) {
		close(pfd[0]);
		close(pfd[1]);
		free(buf);
		return -errno;
	}
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY);

		if (null >= 0)
			dup2(null, 0);
		dup2(pfd[1], 1);
		dup2(pfd[1], 2);
		for (char *const *e = env; e && *e; e++)
			putenv(*e);
		execvp(argv[0], argv);
		dprintf(2, "cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(pfd[1]);
	for (;;) {
		char sink[4096];
		ssize_t n = read(pfd[0], len < OUTPUT_MAX ? buf + len : sink,
				 len < OUTPUT_MAX ? OUTPUT_MAX - len : sizeof sink);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (len < OUTPUT_MAX)
			len += (size_t)n;
	}
	close(pfd[0]);
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR) {
			free(buf);
			return -errno;
		}
	buf[len] = '\0';
	*output = buf;
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return WEXITSTATUS(status);
}

/*
 * 1 if the file at path still holds what it held when before was taken
 * and hashed to hash, 0 if not, -errno.  The change time says so cheaply;
 * only when it moved are the bytes hashed again, and they decide.
 */
static int unchanged(const char *path, const struct stat *before, uint64_t hash)
{
	struct stat after;
	uint64_t again;
	bool qcow2;
	int fd, r;

	if (stat(path, &after) < 0)
		return 0;
	if (after.st_size != before->st_size || after.st_ino != before->st_ino)
		return 0;
	if (after.st_ctim.tv_sec == before->st_ctim.tv_sec &&
	    after.st_ctim.tv_nsec == before->st_ctim.tv_nsec)
		return 1;
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return 0;
	r = hash_file(fd, &again, &qcow2);
	close(fd);
	if (r < 0) {
		log_error("reading %s: %s", path, strerror(-r));
		return r;
	}
	return again == hash;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);

	return a >= b && strcmp(s + a - b, suffix) == 0;
}

int img_examine(const char *name, const char *path, const char *fsck_cmd, uint64_t lsn,
		bool run_check, struct img_result *r)
{
	char env_image[4200], env_name[4200], env_lsn[64];
	char *env[] = { env_image, env_name, env_lsn, NULL };
	struct stat before;
	bool qcow2;
	char *cmd = NULL;
	int fd, k;

	img_result_clear(r);
	snprintf(r->checker, sizeof r->checker, "-");
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT) {
		r->state = IMG_ABSENT;
		return 0;
	}
	if (fd < 0 || fstat(fd, &before) < 0) {
		log_error("%s: %m", path);
		if (fd >= 0)
			close(fd);
		return -EIO;
	}
	r->size = (uint64_t)before.st_size;
	k = hash_file(fd, &r->hash, &qcow2);
	close(fd);
	if (k < 0) {
		log_error("reading %s: %s", path, strerror(-k));
		return k;
	}
	if (r->size == 0) {
		r->state = IMG_EMPTY;
		return 0;
	}
	r->state = IMG_OK;
	qcow2 = qcow2 || ends_with(name, ".qcow2");
	if (!run_check || (!qcow2 && !fsck_cmd))
		return 0;

	snprintf(env_image, sizeof env_image, "AIM_IMAGE=%s", path);
	snprintf(env_name, sizeof env_name, "AIM_IMAGE_NAME=%s", name);
	snprintf(env_lsn, sizeof env_lsn, "AIM_LSN=%" PRIu64, lsn);
	if (qcow2) {
		char *argv[] = { "qemu-img", "check", "-f", "qcow2", (char *)path, NULL };

		snprintf(r->checker, sizeof r->checker, "qemu-img");
		r->exit_code = run(argv, env, &r->output);
	} else {
		char *argv[] = { "/bin/sh", "-c", NULL, NULL };

		cmd = expand(fsck_cmd, path);
		if (!cmd)
			return -ENOMEM;
		argv[2] = cmd;
		snprintf(r->checker, sizeof r->checker, "fsck");
		r->exit_code = run(argv, env, &r->output);
		free(cmd);
	}
	if (r->exit_code < 0) {
		log_error("image %s: cannot run its check: %s", name, strerror(-r->exit_code));
		return r->exit_code;
	}
	k = unchanged(path, &before, r->hash);
	if (k < 0)
		return k;
	if (!k) {
		log_error("image %s: the %s check changed the image (%s): a check must only read"
			  " (e2fsck -n, not -y or -p; or check a copy); the replay is no longer the"
			  " stream's, so the check stops", name, r->checker, path);
		return -EPERM;
	}
	if (r->exit_code == 0 || (qcow2 && r->exit_code == 3)) {
		if (qcow2 && r->exit_code == 3)
			snprintf(r->note, sizeof r->note, "leaked clusters");
		free(r->output);
		r->output = NULL;
	} else {
		r->state = IMG_FAILED;
	}
	return 0;
}
