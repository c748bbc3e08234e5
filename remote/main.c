/*
 * main.c — aim-remote: options, start-up checks, and the daemon's poll
 * loop.
 *
 * Everything is checked before anything runs: the inbox and the target
 * directory must exist, every --map must be usable, the TLS material and
 * the token must load, the addresses must parse, and the inbox must not be
 * in use by another aim-remote (flock on the inbox and on the state
 * directory).  A refusal says why on stderr and exits 1 (2 for a usage
 * error).
 *
 * The main thread then waits in poll(2) on a signalfd (SIGINT/SIGTERM: stop
 * cleanly, exit 0; SIGHUP: resume stopped groups, rescan the inbox) and the
 * inotify descriptor,
 * with a slow timer that rescans the inbox as a safety net.  The receiver
 * and the status listener run on libmicrohttpd's threads, the appliers on
 * their groups' threads (remote_i.h).
 */
#include "remote_i.h"
#include "clock.h"
#include "apply.h"
#include "log.h"
#include "parse.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#ifndef AIM_VERSION
#define AIM_VERSION "unknown"
#endif

#define EXIT_USAGE 2
#define RESCAN_MS 30000

static void usage(FILE *f)
{
	fprintf(f,
		"usage: %s --inbox DIR --target-dir DIR [--map IMAGE=PATH]... [--state DIR]\n"
		"       [--listen ADDR:PORT --tls-cert FILE --tls-key FILE [--client-ca FILE]]\n"
		"       [--token-file FILE] [--tls-priority STRING] [--status ADDR:PORT|off]\n"
		"       [--max-segment SIZE] [--retain] [LIMITS...] [-v]\n"
		"       [--pull URL [--access-key-file FILE --secret-key-file FILE] [--region R]\n"
		"        [--pull-interval DURATION] [--pull-ca-file FILE]]... [--config FILE]\n"
		"\n"
		"Applies the segments of aimfs consistency groups, in order, onto their targets.\n"
		"\n"
		"  --inbox DIR          where segments arrive: DIR/<group>/<number>.aimj (required)\n"
		"  --target-dir DIR     images are DIR/<image name> unless mapped (required)\n"
		"  --map IMAGE=PATH     image IMAGE goes to PATH, a file or a block device\n"
		"  --state DIR          progress database remote.db (default: <inbox>.state)\n"
		"  --listen ADDR:PORT   receive segments by HTTPS PUT (default: watch the inbox only)\n"
		"  --tls-cert FILE      the receiver's certificate chain (PEM)\n"
		"  --tls-key FILE       its private key (PEM)\n"
		"  --client-ca FILE     require client certificates signed by this CA\n"
		"  --token-file FILE    require \"Authorization: Bearer <token in FILE>\"\n"
		"  --status ADDR:PORT   /status and /metrics (default %s; \"off\" disables)\n"
		"  --tls-priority STR   GnuTLS priorities (default %s)\n"
		"  --max-segment SIZE   largest segment accepted (default 1G)\n"
		"  --retain             keep applied segments in <inbox>/<group>/applied/\n"
		"  --pull URL           also take segments from an object store,\n"
		"                       http(s)://ENDPOINT/BUCKET[/PREFIX] (repeatable); the options\n"
		"                       below apply to the pull given before them, or to all if first:\n"
		"  --access-key-file F  its access key (default: the AWS_ACCESS_KEY_ID variable)\n"
		"  --secret-key-file F  its secret key (default: the AWS_SECRET_ACCESS_KEY variable)\n"
		"  --region R           its SigV4 region (default us-east-1)\n"
		"  --pull-interval D    how often to look at its HEAD objects (default 1s)\n"
		"  --pull-ca-file F     the CAs its HTTPS endpoint is checked against\n"
		"  --config FILE        [pull NAME] sections with the same keys (url, access_key_file,\n"
		"                       secret_key_file, region, pull_interval, ca_file)\n"
		"  -v, --verbose        debug messages\n"
		"  -h, --help           this help\n"
		"  -V, --version        the version\n"
		"\n"
		"Limits of the receiver (see aim-remote(1), HOSTILE PEERS):\n"
		"  --max-connections N        connections at once (default %u)\n"
		"  --max-per-address N        from one client address (default %u)\n"
		"  --max-unauthenticated N    not yet authenticated (default: half of --max-connections)\n"
		"  --handshake-timeout DUR    for the TLS handshake (default 10s)\n"
		"  --header-timeout DUR       for a whole request header (default 10s)\n"
		"  --idle-timeout DUR         between requests (default 60s)\n"
		"  --min-rate RATE            bytes/s a body keeps up, 0 for none (default 4K)\n"
		"  --max-uploads N            bodies received at once (default %u)\n"
		"  --max-group-uploads N      ... of one group (default %u)\n"
		"  --max-temp SIZE            their temporary files (default 4G)\n"
		"  --inbox-reserve SIZE       free space kept for the next segments (default: --max-segment)\n"
		"\n"
		"Exit status: 0 after a clean stop, 1 on failure, 2 for a usage error.\n",
		log_progname(), REMOTE_DEFAULT_STATUS, REMOTE_DEFAULT_TLS_PRIORITY,
		REMOTE_DEFAULT_MAX_CONNECTIONS, REMOTE_DEFAULT_MAX_PER_ADDRESS,
		REMOTE_DEFAULT_MAX_UPLOADS, REMOTE_DEFAULT_MAX_GROUP_UPLOADS);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(LOG_LVL_ERROR, fmt, ap);
	va_end(ap);
	fprintf(stderr, "Try '%s --help'.\n", log_progname());
	return EXIT_USAGE;
}

/* An existing directory, as an absolute path (malloc'd), or NULL after
 * logging why. */
static char *existing_dir(const char *opt, const char *path)
{
	struct stat st;
	char *abs;

	if (stat(path, &st) < 0) {
		log_error("%s %s: %m", opt, path);
		return NULL;
	}
	if (!S_ISDIR(st.st_mode)) {
		log_error("%s %s: not a directory", opt, path);
		return NULL;
	}
	abs = realpath(path, NULL);
	if (!abs)
		log_error("%s %s: %m", opt, path);
	return abs;
}

static int check_addr(const char *opt, const char *addr)
{
	char host[256];
	uint16_t port;

	if (parse_hostport(addr, host, sizeof host, &port) < 0 || !port) {
		log_error("%s %s: expected ADDR:PORT, e.g. 127.0.0.1:9443", opt, addr);
		return -EINVAL;
	}
	return 0;
}

static int check_file(const char *opt, const char *path)
{
	if (access(path, R_OK) < 0) {
		log_error("%s %s: %m", opt, path);
		return -errno;
	}
	return 0;
}

/* Every --map, tried on a scratch applier: each group's applier will take
 * them the same way. */
static int check_maps(const struct remote_config *c)
{
	struct applier *a;
	int r;

	r = applier_new(c->target_dir, &a);
	if (r < 0)
		return r;
	r = applier_map_all(a, c->maps, c->nmaps);
	applier_free(a);
	return r;
}

/* Takes an exclusive flock on an open directory, for the daemon's life. */
static int lock_dir(const char *what, const char *path, int *fd)
{
	*fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (*fd < 0) {
		log_error("%s %s: %m", what, path);
		return -errno;
	}
	if (flock(*fd, LOCK_EX | LOCK_NB) < 0) {
		if (errno == EWOULDBLOCK)
			log_error("%s %s is in use by another aim-remote", what, path);
		else
			log_error("%s %s: cannot lock: %m", what, path);
		return -EBUSY;
	}
	return 0;
}

/* A count of at least 1 for option opt. */
static int parse_count(const char *opt, const char *arg, unsigned max, unsigned *out)
{
	uint64_t n;

	if (parse_uint(arg, &n) < 0 || n < 1 || n > max)
		return usage_error("%s %s: expected a number from 1 to %u", opt, arg, max);
	*out = (unsigned)n;
	return 0;
}

/* A duration of at least 1 s for option opt. */
static int parse_timeout(const char *opt, const char *arg, uint64_t *out)
{
	uint64_t ns;

	if (parse_duration(arg, &ns) < 0 || ns < 1000000000ULL || ns > 86400000000000ULL)
		return usage_error("%s %s: expected a duration from 1s to 24h (e.g. 10s, 2m)", opt,
				   arg);
	*out = ns;
	return 0;
}

/* The limits given together must make sense together. */
static int check_limits(struct remote_config *c)
{
	struct remote_limits *l = &c->lim;

	if (!l->max_unauthenticated)
		l->max_unauthenticated = l->max_connections > 1 ? l->max_connections / 2 : 1;
	if (l->max_unauthenticated >= l->max_connections && l->max_connections > 1)
		return usage_error("--max-unauthenticated %u must be below --max-connections %u,"
				   " or authenticated senders may find no room",
				   l->max_unauthenticated, l->max_connections);
	if (l->max_group_uploads > l->max_uploads)
		return usage_error("--max-group-uploads %u is more than --max-uploads %u",
				   l->max_group_uploads, l->max_uploads);
	if (l->max_temp < c->max_segment)
		return usage_error("--max-temp must hold at least one segment of --max-segment");
	if (l->inbox_reserve == UINT64_MAX)
		l->inbox_reserve = c->max_segment;
	return 0;
}

static int parse_args(int argc, char **argv, struct remote_config *c, bool *done)
{
	static const struct option opts[] = {
		{ "inbox", required_argument, NULL, 'i' },
		{ "target-dir", required_argument, NULL, 't' },
		{ "map", required_argument, NULL, 'm' },
		{ "state", required_argument, NULL, 's' },
		{ "listen", required_argument, NULL, 'l' },
		{ "tls-cert", required_argument, NULL, 'c' },
		{ "tls-key", required_argument, NULL, 'k' },
		{ "client-ca", required_argument, NULL, 'a' },
		{ "token-file", required_argument, NULL, 'T' },
		{ "status", required_argument, NULL, 'S' },
		{ "max-segment", required_argument, NULL, 'M' },
		{ "tls-priority", required_argument, NULL, 'P' },
		{ "max-connections", required_argument, NULL, 1000 },
		{ "max-per-address", required_argument, NULL, 1001 },
		{ "max-unauthenticated", required_argument, NULL, 1002 },
		{ "handshake-timeout", required_argument, NULL, 1003 },
		{ "header-timeout", required_argument, NULL, 1004 },
		{ "idle-timeout", required_argument, NULL, 1005 },
		{ "min-rate", required_argument, NULL, 1006 },
		{ "max-uploads", required_argument, NULL, 1007 },
		{ "max-group-uploads", required_argument, NULL, 1008 },
		{ "max-temp", required_argument, NULL, 1009 },
		{ "inbox-reserve", required_argument, NULL, 1010 },
		{ "retain", no_argument, NULL, 'R' },
		{ "pull", required_argument, NULL, 2000 },
		{ "access-key-file", required_argument, NULL, 2000 },
		{ "secret-key-file", required_argument, NULL, 2000 },
		{ "region", required_argument, NULL, 2000 },
		{ "pull-interval", required_argument, NULL, 2000 },
		{ "pull-ca-file", required_argument, NULL, 2000 },
		{ "config", required_argument, NULL, 2001 },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	struct remote_limits *l = &c->lim;
	int ch, r = 0, li = 0;

	opterr = 0;
	while ((ch = getopt_long(argc, argv, ":vhV", opts, &li)) != -1) {
		switch (ch) {
		case 'i':
			c->inbox = optarg;
			break;
		case 't':
			c->target_dir = optarg;
			break;
		case 'm': {
			struct apply_map *nm = realloc(c->maps, (c->nmaps + 1) * sizeof *nm);
			const char *why;

			if (!nm)
				return 1;
			c->maps = nm;
			if (apply_map_parse(optarg, &c->maps[c->nmaps], &why) < 0)
				return usage_error("--map takes IMAGE=PATH, not \"%s\": %s", optarg, why);
			c->nmaps++;
			break;
		}
		case 's':
			c->state_dir = optarg;
			break;
		case 'l':
			c->listen = optarg;
			break;
		case 'c':
			c->tls_cert = optarg;
			break;
		case 'k':
			c->tls_key = optarg;
			break;
		case 'a':
			c->client_ca = optarg;
			break;
		case 'T':
			c->token_file = optarg;
			break;
		case 'S':
			c->status_addr = strcmp(optarg, "off") == 0 ? NULL : optarg;
			break;
		case 'M':
			if (parse_size(optarg, &c->max_segment) < 0 || c->max_segment < 4096)
				return usage_error("--max-segment %s: expected a size of at least 4K (e.g. 512M, 1G)",
						   optarg);
			break;
		case 'R':
			c->retain = true;
			break;
		case 'P':
			c->tls_priority = optarg;
			break;
		case 1000:
			r = parse_count("--max-connections", optarg, 100000, &l->max_connections);
			break;
		case 1001:
			r = parse_count("--max-per-address", optarg, 100000, &l->max_per_address);
			break;
		case 1002:
			r = parse_count("--max-unauthenticated", optarg, 100000,
					&l->max_unauthenticated);
			break;
		case 1003:
			r = parse_timeout("--handshake-timeout", optarg, &l->handshake_ns);
			break;
		case 1004:
			r = parse_timeout("--header-timeout", optarg, &l->header_ns);
			break;
		case 1005:
			r = parse_timeout("--idle-timeout", optarg, &l->idle_ns);
			break;
		case 1006:
			if (parse_size(optarg, &l->min_rate) < 0)
				r = usage_error("--min-rate %s: expected bytes per second (e.g. 4K, 0)",
						optarg);
			break;
		case 1007:
			r = parse_count("--max-uploads", optarg, 10000, &l->max_uploads);
			break;
		case 1008:
			r = parse_count("--max-group-uploads", optarg, 10000, &l->max_group_uploads);
			break;
		case 1009:
			if (parse_size(optarg, &l->max_temp) < 0 || !l->max_temp)
				r = usage_error("--max-temp %s: expected a size (e.g. 4G)", optarg);
			break;
		case 1010:
			if (parse_size(optarg, &l->inbox_reserve) < 0)
				r = usage_error("--inbox-reserve %s: expected a size (e.g. 1G, 0)", optarg);
			break;
		case 2000: /* puller.c knows the pull options */
			if (puller_option(c, opts[li].name, optarg) < 0)
				return usage_error("--%s %s: see above", opts[li].name, optarg);
			break;
		case 2001:
			if (puller_config_load(c, optarg) < 0)
				return EXIT_USAGE;
			break;
		case 'v':
			log_set_level(LOG_LVL_DEBUG);
			break;
		case 'h':
			usage(stdout);
			*done = true;
			return 0;
		case 'V':
			printf("aim-remote %s\n", AIM_VERSION);
			*done = true;
			return 0;
		case ':':
			return usage_error("%s needs an argument", argv[optind - 1]);
		default:
			return usage_error("unknown option %s", argv[optind - 1]);
		}
		if (r)
			return r;
	}
	if (optind < argc)
		return usage_error("unexpected argument \"%s\"", argv[optind]);
	if (!c->inbox)
		return usage_error("--inbox DIR is required");
	if (!c->target_dir)
		return usage_error("--target-dir DIR is required");
	if (c->listen && (!c->tls_cert || !c->tls_key))
		return usage_error("--listen needs --tls-cert and --tls-key (the receiver speaks HTTPS only)");
	if (!c->listen && (c->tls_cert || c->tls_key || c->client_ca || c->token_file))
		return usage_error("--tls-cert, --tls-key, --client-ca and --token-file are for the receiver: give --listen too");
	return check_limits(c);
}

/* Checks and opens everything the daemon needs, in an order that touches
 * nothing before every check passed.  Returns 0 or 1 (logged). */
static int prepare(struct remote *r, int *lock_fds, char **owned)
{
	struct remote_config *c = &r->cfg;
	char *inbox, *target;

	inbox = existing_dir("--inbox", c->inbox);
	target = existing_dir("--target-dir", c->target_dir);
	if (!inbox || !target) {
		free(inbox);
		free(target);
		return 1;
	}
	c->inbox = owned[0] = inbox;
	c->target_dir = owned[1] = target;
	if (strcmp(inbox, target) == 0) {
		log_error("--inbox and --target-dir must be different directories");
		return 1;
	}
	if (c->listen && check_addr("--listen", c->listen) < 0)
		return 1;
	if (c->status_addr && check_addr("--status", c->status_addr) < 0)
		return 1;
	if (c->listen && (check_file("--tls-cert", c->tls_cert) < 0 ||
			  check_file("--tls-key", c->tls_key) < 0 ||
			  (c->client_ca && check_file("--client-ca", c->client_ca) < 0) ||
			  (c->token_file && check_file("--token-file", c->token_file) < 0)))
		return 1;
	if (c->listen && receiver_check(c) < 0)
		return 1;
	if (check_maps(c) < 0 || puller_check(c) < 0)
		return 1;
	if (c->state_dir) {
		r->state_dir = strdup(c->state_dir);
	} else if (asprintf(&r->state_dir, "%s.state", inbox) < 0) {
		r->state_dir = NULL;
	}
	if (!r->state_dir || asprintf(&r->db_path, "%s/%s", r->state_dir, REMOTE_STATE_DB) < 0) {
		log_error("out of memory");
		return 1;
	}
	if (mkdir(r->state_dir, 0750) < 0 && errno != EEXIST) {
		log_error("state directory %s: %m", r->state_dir);
		return 1;
	}
	if (lock_dir("inbox", inbox, &lock_fds[0]) < 0 ||
	    lock_dir("state directory", r->state_dir, &lock_fds[1]) < 0)
		return 1;
	r->inbox_fd = open(inbox, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (r->inbox_fd < 0) {
		log_error("--inbox %s: %m", inbox);
		return 1;
	}
	inbox_free_init(r);
	/* Creates the database and its schema, and proves it writable. */
	{
		struct state *st;

		if (state_open(r->db_path, &st) < 0)
			return 1;
		state_close(st);
	}
	return 0;
}

static int run(struct remote *r, int sfd)
{
	struct pollfd fds[2];
	int ino, timeout;

	ino = watcher_fd();
	timeout = ino >= 0 ? RESCAN_MS : 1000;
	for (;;) {
		int n;

		fds[0] = (struct pollfd){ .fd = sfd, .events = POLLIN };
		fds[1] = (struct pollfd){ .fd = ino, .events = POLLIN };
		n = poll(fds, ino >= 0 ? 2 : 1, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_error("poll: %m");
			return 1;
		}
		if (n == 0) {
			if (ino >= 0)
				watcher_scan(r);
			else
				watcher_drain(r);
			continue;
		}
		if (ino >= 0 && (fds[1].revents & POLLIN))
			watcher_drain(r);
		if (fds[0].revents & POLLIN) {
			struct signalfd_siginfo si;

			if (read(sfd, &si, sizeof si) != (ssize_t)sizeof si)
				continue;
			if (si.ssi_signo == SIGHUP) {
				int asked = groups_resume(r, NULL);

				log_info("SIGHUP: %d stopped group%s asked to resume; rescanning the inbox",
					 asked, asked == 1 ? "" : "s");
				watcher_scan(r);
				continue;
			}
			log_info("%s: stopping", strsignal((int)si.ssi_signo));
			return 0;
		}
	}
}

/* Preferring its writer: a promote is not kept waiting by a steady stream
 * of uploads (remote_i.h). */
static void init_promote_gate(struct remote *r)
{
	pthread_rwlockattr_t ga;

	pthread_rwlockattr_init(&ga);
	pthread_rwlockattr_setkind_np(&ga, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&r->promote_gate, &ga);
	pthread_rwlockattr_destroy(&ga);
}

int main(int argc, char **argv)
{
	struct remote r = { 0 };
	int lock_fds[2] = { -1, -1 }, sfd = -1, status = 1;
	char *owned[2] = { NULL, NULL };
	bool done = false;
	sigset_t mask;

	log_init(argv[0]);
	r.cfg.status_addr = REMOTE_DEFAULT_STATUS;
	r.cfg.max_segment = REMOTE_DEFAULT_MAX_SEGMENT;
	r.cfg.tls_priority = REMOTE_DEFAULT_TLS_PRIORITY;
	r.cfg.lim = (struct remote_limits){
		.max_connections = REMOTE_DEFAULT_MAX_CONNECTIONS,
		.max_per_address = REMOTE_DEFAULT_MAX_PER_ADDRESS,
		.handshake_ns = REMOTE_DEFAULT_HANDSHAKE_NS,
		.header_ns = REMOTE_DEFAULT_HEADER_NS,
		.idle_ns = REMOTE_DEFAULT_IDLE_NS,
		.min_rate = REMOTE_DEFAULT_MIN_RATE,
		.max_uploads = REMOTE_DEFAULT_MAX_UPLOADS,
		.max_group_uploads = REMOTE_DEFAULT_MAX_GROUP_UPLOADS,
		.max_temp = REMOTE_DEFAULT_MAX_TEMP,
		.inbox_reserve = UINT64_MAX, /* --max-segment */
	};
	r.inbox_fd = -1;
	r.free.dirfd = -1;
	r.started_ns = clock_wall_ns();
	pthread_mutex_init(&r.lock, NULL);
	pthread_mutex_init(&r.free.lock, NULL);
	prechecked_init(&r.prechecked);
	init_promote_gate(&r);

	status = parse_args(argc, argv, &r.cfg, &done);
	if (status || done)
		goto out;
	status = 1;
	if (prepare(&r, lock_fds, owned))
		goto out;

	/* Signals go to the signalfd only: block them before any thread
	 * starts, so that every thread inherits the mask. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGIO, SIG_IGN); /* lease breaks (groups.c's has_writer) */
	sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (sfd < 0) {
		log_error("signalfd: %m");
		goto out;
	}

	if (r.cfg.listen && receiver_start(&r, &r.receiver) < 0)
		goto out;
	if (watcher_start(&r) < 0)
		goto out;
	if (groups_start(&r) < 0 || puller_start(&r) < 0)
		goto out;
	/* Last: its first answer lists every group and pull already (a pull
	 * started after it was missing from "pulls" for a moment). */
	if (r.cfg.status_addr && status_start(&r, r.cfg.status_addr, &r.status) < 0)
		goto out;
	log_info("applying segments from %s onto %s%s%s%s%s; state in %s", r.cfg.inbox,
		 r.cfg.target_dir, r.cfg.listen ? "; receiving on https://" : "",
		 r.cfg.listen ? r.cfg.listen : "", r.cfg.status_addr ? "; status on http://" : "",
		 r.cfg.status_addr ? r.cfg.status_addr : "", r.state_dir);
	/* Type=notify: the receiver and the status listener are bound and
	 * listening, the watcher and the groups run.  A no-op without
	 * NOTIFY_SOCKET. */
	sd_notify(0, "READY=1\nSTATUS=applying");
	status = run(&r, sfd);
	sd_notify(0, "STOPPING=1\nSTATUS=stopping");
out:
	/* The receiver first: no new segment, no new kick; then the appliers
	 * stop at their next barrier. */
	receiver_stop(r.receiver);
	puller_stop(&r);
	groups_stop(&r);
	status_stop(r.status);
	watcher_stop();
	if (sfd >= 0)
		close(sfd);
	inbox_free_close(&r);
	prechecked_destroy(&r.prechecked);
	if (r.inbox_fd >= 0)
		close(r.inbox_fd);
	for (int i = 0; i < 2; i++)
		if (lock_fds[i] >= 0)
			close(lock_fds[i]);
	free(owned[0]);
	free(owned[1]);
	free(r.state_dir);
	free(r.db_path);
	for (size_t i = 0; i < r.cfg.nmaps; i++)
		apply_map_free(&r.cfg.maps[i]);
	free(r.cfg.maps);
	puller_config_free(&r.cfg);
	pthread_mutex_destroy(&r.lock);
	pthread_rwlock_destroy(&r.promote_gate);
	return status;
}
