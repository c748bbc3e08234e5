/*
 * main.c — aimfs's entry point: checks the command line and the paths it
 * names (refusing to start with a reason a person can act on), recovers
 * the journal, mounts, serves until unmounted or signalled, then seals the
 * journal.
 */
#include "bdi.h"
#include "fs.h"
#include "journal.h"
#include "log.h"
#include "options.h"
#include "resync.h"
#include "session.h"
#include "status.h"
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "clock.h"
#include "thread.h"

#define MAX_THREADS 16
/* In-flight data records: two per FUSE thread (a write and the records of
 * its correction), plus the other threads that journal data (recovery,
 * the resync engine). */
#define INFLIGHT_PER_THREAD 2
#define INFLIGHT_SPARE 16
#define UNMOUNT_DRAIN_MS 5000
#define EXIT_USAGE 2

/* A second stop signal this soon after a refusal forces the stop. */
#define FORCE_WINDOW_S 10

extern char **environ;

/* Hooks between the journal and the transport, which know nothing of
 * each other. */
struct glue {
	struct journal *journal;
	struct transport *transport;
	const struct aimfs_options *options;
};

static void on_durable(void *ctx, uint64_t segment, uint64_t backing_lsn)
{
	struct glue *g = ctx;

	if (g->transport)
		transport_notify(g->transport, segment, backing_lsn);
}

static bool on_dests_idle(void *ctx)
{
	struct glue *g = ctx;

	return g->transport && transport_idle(g->transport);
}

static void on_freed(void *ctx, uint64_t bytes)
{
	journal_space_freed(((struct glue *)ctx)->journal, bytes);
}

static bool on_recycle(void *ctx, uint64_t number)
{
	return journal_recycle(((struct glue *)ctx)->journal, number);
}

static uint64_t on_open_oldest(void *ctx)
{
	return journal_open_oldest_ns(((struct glue *)ctx)->journal);
}

/* After a power loss, recovery asks which destinations mirror an image
 * (a destination only in the catalog any more mirrors nothing). */
static bool on_dest_wants(void *ctx, const char *dest, const char *image)
{
	const struct aimfs_options *o = ((struct glue *)ctx)->options;

	for (size_t i = 0; i < o->ndests; i++)
		if (strcmp(o->dests[i].name, dest) == 0)
			return dest_wants_image(&o->dests[i], image);
	return false;
}

struct pattern_check {
	const char *pattern;
	struct dest_config one;
	bool matched;
};

static void match_image(void *ctx, const char *name)
{
	struct pattern_check *pc = ctx;

	if (dest_wants_image(&pc->one, name))
		pc->matched = true;
}

/* A pattern that selects no image is probably a typo: say so. */
static void warn_unmatched_patterns(struct journal *j, const struct aimfs_options *o)
{
	for (size_t i = 0; i < o->ndests; i++) {
		for (size_t k = 0; k < o->dests[i].nimages; k++) {
			char *pat = o->dests[i].images[k];
			struct pattern_check pc = { .pattern = pat };

			pc.one.images = &pat;
			pc.one.nimages = 1;
			journal_each_image(j, match_image, &pc);
			if (!pc.matched)
				log_warn("destination %s: image pattern \"%s\" matches no image yet",
					 o->dests[i].name, pat);
		}
	}
}

/* ---- stopping ----
 *
 * SIGTERM, SIGINT and SIGHUP ask for a stop, and a stop is an unmount as
 * umount(8) does it: the kernel refuses it (EBUSY) while anything on the
 * mount is open — a running guest's image above all.  Then aimfs says which
 * files are open and keeps serving: pulling the disks from under running
 * guests is never what "stop" means.  The same signal again within
 * FORCE_WINDOW_S seconds of a refusal, while files are still open, forces
 * the stop (libfuse's own handling): the session ends, the mount is
 * detached, and the open files fail from then on.  The handler only writes the signal into a pipe (or,
 * forcing, ends the session as libfuse's handler does); the stopper thread
 * does the rest.  Every other thread blocks the stop signals (thread.h), so
 * the kernel hands them to the main thread and a forcing signal interrupts
 * the FUSE loop's wait.
 */
static struct fuse_session *stop_session;
static struct fs *stop_fs;
static int stop_pipe[2] = { -1, -1 };
static _Atomic uint64_t refused_ns;   /* monotonic time of the last refusal, 0: none */
static volatile sig_atomic_t forced;  /* the signal that forced the stop */

static void on_stop_signal(int sig)
{
	int saved = errno;
	uint64_t r = atomic_load(&refused_ns);
	unsigned char c = (unsigned char)sig;

	if (r && clock_mono_ns() - r < FORCE_WINDOW_S * 1000000000ULL && stop_fs &&
	    fs_open_count(stop_fs)) {
		forced = sig;
		session_exit_from_signal(stop_session);
	} else if (write(stop_pipe[1], &c, 1) < 0) {
		/* the pipe is full of stop requests already */
	}
	errno = saved;
}

static int install_stop_signals(struct fuse_session *se, struct fs *fs)
{
	struct sigaction sa = { .sa_handler = on_stop_signal };
	struct sigaction ign = { .sa_handler = SIG_IGN };
	const int sigs[] = { SIGTERM, SIGINT, SIGHUP };

	stop_session = se;
	stop_fs = fs;
	if (pipe2(stop_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
		return -1;
	/* no SA_RESTART: a forcing signal must interrupt the loop's wait */
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		if (sigaction(sigs[i], &sa, NULL) < 0)
			return -1;
	return sigaction(SIGPIPE, &ign, NULL);
}

/* Once the loop is over: later signals change nothing (the journal is
 * being sealed and the destinations drained, for a bounded time). */
static void ignore_stop_signals(void)
{
	struct sigaction ign = { .sa_handler = SIG_IGN };

	sigaction(SIGTERM, &ign, NULL);
	sigaction(SIGINT, &ign, NULL);
	sigaction(SIGHUP, &ign, NULL);
}

/* umount(8) without -l: 0, or -errno (-EBUSY while anything is open).  An
 * aimfs that is not root asks fusermount3 -u, which does the same. */
static int unmount_now(const char *mount)
{
	char *argv[] = { "fusermount3", "-u", "-q", (char *)mount, NULL };
	pid_t pid;
	int st;

	if (umount2(mount, UMOUNT_NOFOLLOW) == 0)
		return 0;
	if (errno != EPERM)
		return -errno;
	if (posix_spawnp(&pid, "fusermount3", NULL, NULL, argv, environ) != 0)
		return -EPERM;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	/* fusermount3 says why on stderr; busy is what makes it fail here */
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EBUSY;
}

struct stopper {
	struct fs *fs;
	const char *mount;
	pthread_t thread;
	bool started;
};

static void stop_requested(struct stopper *sp, int sig)
{
	char names[1024];
	unsigned n = fs_open_files(sp->fs, names, sizeof names);
	int r = unmount_now(sp->mount);

	if (r == 0) {
		log_info("SIG%s: unmounting %s", sigabbrev_np(sig), sp->mount);
		return;
	}
	if (r != -EBUSY) {
		log_error("SIG%s: cannot unmount %s: %s", sigabbrev_np(sig), sp->mount, strerror(-r));
		return;
	}
	atomic_store(&refused_ns, clock_mono_ns());
	if (n)
		log_warn("SIG%s: not unmounting %s: %u file%s open through it (%s); stop what uses"
			 " %s (the guests) first, or send the signal again within %d seconds to"
			 " force the stop, which makes %s I/O fail", sigabbrev_np(sig), sp->mount,
			 n, n == 1 ? " is" : "s are", names, n == 1 ? "it" : "them", FORCE_WINDOW_S,
			 n == 1 ? "its" : "their");
	else
		log_warn("SIG%s: not unmounting %s: it is busy (a working directory or an open"
			 " directory in it); send the signal again within %d seconds to force the"
			 " stop", sigabbrev_np(sig), sp->mount, FORCE_WINDOW_S);
	sd_notifyf(0, "STATUS=refused to stop: %u files open on %s", n, sp->mount);
}

static void *stopper_main(void *arg)
{
	struct stopper *sp = arg;

	for (;;) {
		struct pollfd pfd = { .fd = stop_pipe[0], .events = POLLIN };
		unsigned char c;
		ssize_t n;

		if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
			break;
		n = read(stop_pipe[0], &c, 1);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n <= 0 || c == 0)
			break;
		stop_requested(sp, c);
	}
	return NULL;
}

static int stopper_start(struct stopper *sp)
{
	if (thread_start(&sp->thread, stopper_main, sp) != 0)
		return -1;
	sp->started = true;
	return 0;
}

static void stopper_stop(struct stopper *sp)
{
	unsigned char quit = 0;

	if (!sp->started)
		return;
	while (write(stop_pipe[1], &quit, 1) < 0 && errno == EAGAIN)
		usleep(1000); /* full of requests: the thread empties it */
	pthread_join(sp->thread, NULL);
	sp->started = false;
}

/* After a usage error: where to look.  Returns the usage exit status. */
static int usage_hint(void)
{
	fprintf(stderr, "Try '%s --help'.\n", log_progname());
	return EXIT_USAGE;
}

/*
 * libfuse checks its own options (allow_other, the mount options that
 * mount.fuse3 passes: rw, dev, suid...) only in fuse_session_new, which
 * runs after the journal is opened: try them on a throwaway session
 * first, so that a typo refuses to start before anything is created.
 * Returns 0, or -1 after libfuse said why on stderr.
 */
static int check_fuse_options(const struct fuse_args *args)
{
	struct fuse_args copy = FUSE_ARGS_INIT(0, NULL);
	struct fuse_session *se = NULL;
	int r = -1;

	for (int i = 0; i < args->argc; i++)
		if (fuse_opt_add_arg(&copy, args->argv[i]) < 0)
			goto out;
	se = fuse_session_new(&copy, fs_ops(), sizeof *fs_ops(), NULL);
	r = se ? 0 : -1;
	if (se)
		fuse_session_destroy(se);
out:
	fuse_opt_free_args(&copy);
	return r;
}

/* "-ofsname=DIR" with DIR's commas and backslashes escaped for fuse_opt
 * (malloc'd), or NULL. */
static char *fsname_option(const char *dir)
{
	char *opts = NULL, *arg = NULL, *name = NULL;

	if (asprintf(&name, "fsname=%s", dir) < 0)
		return NULL;
	if (fuse_opt_add_opt_escaped(&opts, name) == 0 && asprintf(&arg, "-o%s", opts) < 0)
		arg = NULL;
	free(name);
	free(opts);
	return arg;
}

/* How many FUSE worker threads may run at once: -s, -o max_threads, or
 * ours (libfuse's default of 10 counts as unset). */
static unsigned fuse_threads(const struct fuse_cmdline_opts *fopts)
{
	if (fopts->singlethread)
		return 1;
	return fopts->max_threads > 0 && fopts->max_threads != 10 ? fopts->max_threads
								  : MAX_THREADS;
}

struct paths {
	char backing[PATH_MAX];
	char mount[PATH_MAX];
	char journal[PATH_MAX];
	char hide_name[NAME_MAX + 1]; /* "" if the journal is outside the backing tree */
	dev_t hide_dev;
	ino_t hide_ino;
};

/* True if path equals dir or lies below it. */
static bool within(const char *path, const char *dir)
{
	size_t n = strlen(dir);

	if (n == 1 && dir[0] == '/')
		return true;
	return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

static int resolve_dir(const char *what, const char *arg, char *out)
{
	struct stat st;

	if (!realpath(arg, out)) {
		log_error("%s %s: %m", what, arg);
		return -1;
	}
	if (stat(out, &st) < 0 || !S_ISDIR(st.st_mode)) {
		log_error("%s %s is not a directory", what, arg);
		return -1;
	}
	return 0;
}

static int check_paths(const struct aimfs_options *o, struct paths *p)
{
	char tmp[PATH_MAX], parent[PATH_MAX], *base;
	struct stat st;

	if (resolve_dir("backing directory", o->backing_arg, p->backing) < 0 ||
	    resolve_dir("mountpoint", o->mount_arg, p->mount) < 0)
		return -1;
	if (strcmp(p->backing, p->mount) == 0) {
		log_error("the mountpoint cannot be the backing directory itself (%s)", p->mount);
		return -1;
	}
	if (within(p->mount, p->backing)) {
		log_error("mountpoint %s is inside the backing directory %s", p->mount, p->backing);
		return -1;
	}
	if (within(p->backing, p->mount)) {
		log_error("backing directory %s is inside the mountpoint %s", p->backing, p->mount);
		return -1;
	}
	if (snprintf(tmp, sizeof tmp, "%s%s%s", o->journal_arg ? o->journal_arg : p->backing,
		     o->journal_arg ? "" : "/", o->journal_arg ? "" : DEFAULT_JOURNAL_NAME) >=
	    (int)sizeof tmp)
		return log_error("journal path too long"), -1;
	/* The journal may not exist yet: canonicalise its parent. */
	snprintf(parent, sizeof parent, "%s", tmp);
	base = basename(tmp);
	if (!realpath(dirname(parent), p->journal)) {
		log_error("journal directory %s: its parent: %m", o->journal_arg ? o->journal_arg : tmp);
		return -1;
	}
	if (strcmp(base, ".") == 0 || strcmp(base, "..") == 0 || strcmp(base, "/") == 0) {
		log_error("journal directory %s: name it plainly", o->journal_arg);
		return -1;
	}
	if (stat(p->journal, &st) < 0)
		return log_error("journal directory's parent %s: %m", p->journal), -1;
	if (strlen(p->journal) + strlen(base) + 2 > sizeof p->journal)
		return log_error("journal path too long"), -1;
	strcat(p->journal, p->journal[1] ? "/" : "");
	strcat(p->journal, base);
	if (lstat(p->journal, &st) == 0 && !S_ISDIR(st.st_mode)) {
		log_error("journal %s exists and is not a directory", p->journal);
		return -1;
	}
	if (within(p->journal, p->mount)) {
		log_error("journal %s is inside the mountpoint %s: it would journal itself",
			  p->journal, p->mount);
		return -1;
	}
	if (strcmp(p->journal, p->backing) == 0) {
		log_error("journal %s cannot be the backing directory itself", p->journal);
		return -1;
	}
	p->hide_name[0] = '\0';
	if (within(p->journal, p->backing)) {
		/* Hidden from the mount: the entry base in the journal's parent. */
		snprintf(tmp, sizeof tmp, "%s", p->journal);
		snprintf(p->hide_name, sizeof p->hide_name, "%s", base);
		if (stat(dirname(tmp), &st) < 0)
			return log_error("%s: %m", tmp), -1;
		p->hide_dev = st.st_dev;
		p->hide_ino = st.st_ino;
	}
	return 0;
}

/* Each image keeps a descriptor open (its write-back errors, registry.c),
 * besides the kernel's cached inodes and open files: the soft limit on
 * descriptors goes up to the hard one, as systemd advises daemons to. */
static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts fopts = { 0 };
	struct aimfs_options o;
	struct paths p;
	struct journal_config jc = { 0 };
	struct fs_config fc = { 0 };
	struct journal *j = NULL;
	struct fs *fs = NULL;
	struct fuse_session *se = NULL;
	struct fuse_loop_config *lc = NULL;
	struct transport *t = NULL;
	struct resync *rs = NULL;
	struct transport_config tc = { 0 };
	struct status *st = NULL;
	struct status_info si = { 0 };
	struct glue glue = { 0 };
	struct stopper stopper = { 0 };
	char *fsname_opt = NULL;
	int backing_fd = -1, ret = 1;

	log_init(argv[0]);
	raise_fd_limit();
	ret = options_parse(&args, &o);
	if (ret < 0) {
		ret = ret == -EINVAL ? usage_hint() : 1;
		goto out;
	}
	ret = 1;
	if (o.show_help) {
		options_usage(log_progname());
		printf("\nFUSE options:\n");
		fuse_lowlevel_help();
		ret = 0;
		goto out;
	}
	if (o.show_version) {
		printf("aimfs %s (libfuse %s)\n", AIMFS_VERSION, fuse_pkgversion());
		ret = 0;
		goto out;
	}
	if (check_paths(&o, &p) < 0)
		goto out;
	if (fuse_parse_cmdline(&args, &fopts) != 0 || check_fuse_options(&args) < 0) {
		log_error("libfuse refused the options above");
		ret = usage_hint();
		goto out;
	}
	backing_fd = open(p.backing, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (backing_fd < 0) {
		log_error("backing directory %s: %m", p.backing);
		goto out;
	}
	if (access(p.backing, W_OK) < 0) {
		log_error("backing directory %s is not writable: %m", p.backing);
		goto out;
	}

	jc.dir = p.journal;
	jc.backing_dir = p.backing;
	jc.backing_fd = backing_fd;
	jc.hide_name = p.hide_name[0] ? p.hide_name : NULL;
	jc.hide_dev = p.hide_dev;
	jc.hide_parent_ino = p.hide_ino;
	jc.segment_size = o.segment_size;
	jc.segment_age_ns = o.segment_age_ns;
	jc.segment_idle_ns = o.segment_idle_ns;
	jc.segment_eager_ns = o.segment_eager_ns;
	jc.journal_max = o.journal_max;
	/* Without destinations nothing prunes the journal, so nothing could
	 * ever make room: the limit only applies when shipping. */
	jc.enforce_max = o.ndests > 0;
	jc.overflow_block = o.overflow_block;
	jc.drop_behind = o.ndests == 0;
	jc.on_durable = on_durable;
	jc.dests_idle = o.ndests ? on_dests_idle : NULL;
	jc.dest_wants = on_dest_wants;
	jc.inflight_slots = INFLIGHT_PER_THREAD * fuse_threads(&fopts) + INFLIGHT_SPARE;
	jc.al_slots = o.al_extents;
	jc.al_extent_shift = o.al_extent_shift;
	jc.hook_ctx = &glue;
	glue.options = &o;
	if (journal_open(&jc, &j) < 0)
		goto out;
	glue.journal = j;
	if (o.ndests) {
		struct journal_stats js;

		journal_stats(j, &js);
		tc.journal_dir = p.journal;
		memcpy(tc.group, js.group, 16);
		tc.dests = o.dests;
		tc.ndests = o.ndests;
		tc.retain_ns = o.retain_ns;
		tc.resync = true;
		{
			uint64_t seg, backing;

			journal_durable_state(j, &seg, &backing);
			tc.start_segment = seg;
		}
		tc.hooks.ctx = &glue;
		tc.hooks.freed = on_freed;
		tc.hooks.recycle = on_recycle;
		tc.hooks.open_oldest_ns = on_open_oldest;
		if (transport_new(&tc, &t) < 0) {
			log_error("cannot set up the destinations");
			goto out;
		}
		glue.transport = t;
		warn_unmatched_patterns(j, &o);
	} else {
		log_info("no destinations: the journal keeps every segment (ship later with"
			 " aimctl ship)");
	}

	fc.backing_dir = p.backing;
	fc.backing_fd = backing_fd;
	fc.journal = j;
	fc.hide_name = jc.hide_name;
	fc.hide_dev = p.hide_dev;
	fc.hide_ino = p.hide_ino;
	fc.timeout = 1.0;
	fc.writeback_cache = !o.strict_cache;
	fc.backing_sync_each_fsync = o.backing_sync_each_fsync;
	fs = fs_new(&fc);
	if (!fs) {
		log_error("cannot set up the filesystem: %m");
		goto out;
	}
	/* The kernel checks permissions against the attributes we return: the
	 * daemon itself runs as root and must not be the one checking.  The
	 * mount's source is the backing directory, as an fstab line names it,
	 * so that "mount -a" sees the line is mounted already. */
	if (fuse_opt_add_arg(&args, "-odefault_permissions") < 0 ||
	    !(fsname_opt = fsname_option(p.backing)) || fuse_opt_add_arg(&args, fsname_opt) < 0)
		goto out;
	se = fuse_session_new(&args, fs_ops(), sizeof *fs_ops(), fs);
	if (!se)
		goto out;
	if (install_stop_signals(se, fs) < 0) {
		log_error("cannot handle signals: %m");
		goto out;
	}
	if (fuse_session_mount(se, p.mount) != 0) {
		log_error("cannot mount on %s", p.mount);
		goto out;
	}
	if (o.io_uring && (fopts.singlethread || fopts.clone_fd))
		log_info("io_uring=on: -s and clone_fd serve requests through /dev/fuse only");
	if (session_hook(se, o.io_uring && !fopts.singlethread && !fopts.clone_fd) < 0)
		goto out_unmount;
	if (!o.strict_cache) {
		int r = bdi_lift_strict_limit(p.mount);

		if (r < 0)
			log_warn("cache=writeback: cannot lift the kernel's per-mount dirty limit"
				 " (%s; Linux 6.2+ and root needed): sustained buffered writes"
				 " will be throttled", strerror(-r));
	}
	if (fuse_daemonize(fopts.foreground) != 0)
		goto out_unmount;
	/* Detached (mount.fuse3, fstab): stderr is /dev/null now. */
	if (!fopts.foreground)
		log_to_syslog();
	if (journal_start(j) < 0) {
		log_error("cannot start the journal's sealer thread");
		goto out_unmount;
	}
	stopper.fs = fs;
	stopper.mount = p.mount;
	if (stopper_start(&stopper) < 0) {
		log_error("cannot start the thread that handles stop signals");
		goto out_unmount;
	}
	if (t) {
		uint64_t seg, backing;

		journal_durable_state(j, &seg, &backing);
		transport_notify(t, seg, backing);
		if (transport_start(t) < 0) {
			log_error("cannot start the destination workers");
			goto out_unmount;
		}
		if (resync_start(j, t, backing_fd, p.journal, !o.overflow_block, o.verify_every_ns,
				 &rs) < 0) {
			log_error("cannot start the resynchronisation engine");
			goto out_unmount;
		}
	}
	if (strcmp(o.status, "off") != 0) {
		si.version = AIMFS_VERSION;
		si.backing_dir = p.backing;
		si.mountpoint = p.mount;
		si.journal_dir = p.journal;
		si.overflow = o.overflow_block ? "block" : "track";
		si.journal = j;
		si.transport = t;
		si.resync = rs;
		if (status_start(o.status, &si, &st) < 0)
			goto out_unmount;
	}
	log_info("serving %s on %s, journal %s", p.backing, p.mount, p.journal);
	/* Type=notify: ready only now that the mount is visible and every
	 * thread (sealer, workers, resync, status) runs.  Without
	 * NOTIFY_SOCKET this does nothing. */
	sd_notifyf(0, "READY=1\nSTATUS=serving %s on %s", p.backing, p.mount);
	if (fopts.singlethread) {
		ret = fuse_session_loop(se);
	} else if (!fopts.clone_fd) {
		ret = session_loop(se, fopts.max_threads > 0 && fopts.max_threads != 10
					       ? fopts.max_threads : MAX_THREADS);
	} else {
		lc = fuse_loop_cfg_create();
		fuse_loop_cfg_set_clone_fd(lc, fopts.clone_fd);
		fuse_loop_cfg_set_max_threads(lc, fuse_threads(&fopts));
		if (fopts.max_idle_threads != UINT_MAX)
			fuse_loop_cfg_set_idle_threads(lc, fopts.max_idle_threads);
		ret = fuse_session_loop_mt(se, lc);
	}
	ret = ret < 0 ? 1 : 0;
	ignore_stop_signals();
	if (forced) {
		char names[1024];
		unsigned n = fs_open_files(fs, names, sizeof names);

		if (n)
			log_warn("SIG%s again: forced stop with %u file%s open (%s); %s I/O fails"
				 " from now on", sigabbrev_np(forced), n, n == 1 ? "" : "s", names,
				 n == 1 ? "its" : "their");
		else
			log_info("SIG%s again: forced stop", sigabbrev_np(forced));
	}
	sd_notify(0, "STOPPING=1\nSTATUS=unmounting, sealing the journal");
out_unmount:
	ignore_stop_signals();
	stopper_stop(&stopper);
	fuse_session_unmount(se);
out:
	status_stop(st);
	if (se)
		fuse_session_destroy(se);
	fuse_loop_cfg_destroy(lc);
	fs_free(fs);
	resync_stop(rs);
	/* Seal the open segment and wait for the sealer: after a clean exit
	 * every record is in a sealed, indexed segment... */
	if (j)
		journal_stop(j);
	/* ... which the destinations get a moment to take before we go. */
	if (t && transport_drain(t, UNMOUNT_DRAIN_MS) < 0) {
		log_info("unmounted with segments not yet shipped; they go at the next mount"
			 " or with aimctl ship");
	} else if (t) {
		/* Everything went: sync the backing files now rather than at the
		 * next checkpoint, so what was shipped leaves the journal. */
		int r = journal_sync_backing(j);

		if (r == 0)
			r = transport_prune_now(t);
		if (r < 0)
			log_info("unmounted without pruning the shipped segments (%s); the next"
				 " mount prunes them", strerror(-r));
	}
	/* journal_close's last checkpoint tells on_durable: not the transport */
	glue.transport = NULL;
	transport_free(t);
	journal_close(j);
	if (backing_fd >= 0)
		close(backing_fd);
	free(fopts.mountpoint);
	free(fsname_opt);
	fuse_opt_free_args(&args);
	options_free(&o);
	return ret;
}
