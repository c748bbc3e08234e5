/*
 * puller.c — aim-remote --pull URL: segments from an object store
 * (docs/OBJECT-STORES.md) into the inbox, where the watcher and the
 * groups apply them exactly as if the receiver had stored them.
 *
 * Per --pull URL, one thread finds the groups by listing the prefix's
 * "directories" (every round until it knows one, then every DISCOVER_NS),
 * and each group it finds gets a thread of its own, with its own
 * connection: groups pull in parallel, as they apply in parallel, so that
 * twenty groups are not twenty times one group's round trips and fsyncs in
 * a row.  A group's thread, each round, reads PREFIX/GROUP/HEAD (a
 * conditional GET: an unchanged HEAD costs a 304) and downloads every
 * segment between what this site already has and what HEAD says is
 * complete.  Rounds that find nothing new three times in a row make the
 * next ones wait longer, up to BACKOFF_MAX times --pull-interval; any news
 * brings it back to the interval.
 *
 * Where a group starts: after the segment its state says was applied, or
 * the last one lying in the inbox; a group this site never saw starts at
 * the newest complete base (a segment opening with SYNC_BEGIN, which a new
 * group may start at), or the pending one, or the oldest segment kept.
 * If the bucket no longer holds the segment a group needs next (its
 * retention deleted it), the group jumps to the newest base after it, as
 * it would after any gap that ends at a SYNC_BEGIN.
 *
 * A download goes to inbox/.tmp/pull.*, its payloads hashed as they are
 * written, is fsynced, validated whole with those hashes (its group and
 * number too; the group's own check of it takes them too: prechecked.c),
 * and only then renamed into inbox/<group>/
 * without replacing anything (the receiver may have stored the same
 * segment meanwhile).  PULL_PARALLEL segments download at once, each on a
 * thread and connection of its own, and are renamed in order; the first
 * that failed ends the round, so the inbox never holds a segment without
 * the one before it.  The group is kicked at each rename, and the directory
 * fsynced once the round's downloads are in (no one is told of a pulled
 * segment, so a rename lost in a crash only means downloading it again).
 * A puller killed at any point leaves nothing but a temporary file,
 * removed at the next start, and resumes from the inbox and the state.
 * Each pulling site keeps its own progress: nothing is ever written to the
 * bucket.
 *
 * Status: per puller, what it is doing (retrying when its discovery or any
 * of its groups failed last), the last error with the store's error code
 * (a wrong key, a missing bucket, a skewed clock), what it pulled; the
 * groups' own status says what was applied.
 *
 * Threads: the discovery thread owns the list of groups (appended under
 * pullers.lock, which also guards every loop's status fields and the
 * counters); each group's thread owns its S3 clients and state connection,
 * and lends one client to each download of a batch (parallel.h) while it
 * waits for them.
 */
#include "remote_i.h"
#include "fileio.h"
#include "clock.h"
#include "log.h"
#include "parallel.h"
#include "parse.h"
#include "s3.h"
#include "strbuf.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_INTERVAL_NS 1000000000ULL
#define MIN_INTERVAL_NS 50000000ULL
#define BACKOFF_MAX 4                    /* idle rounds wait at most this many intervals */
#define RETRY_MAX_NS 30000000000ULL      /* failing rounds wait at most this long */
#define DISCOVER_NS 10000000000ULL       /* list the groups this often (every round
					  * while none is known) */
#define HEAD_MAX (1u << 20)
#define TMP_PREFIX "pull."
/* Segments downloaded at once per group: each GET answers after a round
 * trip of the store's, and a backlog of eagerly sealed segments is many
 * small objects. */
#define PULL_PARALLEL 8

enum pull_state { PULL_STARTING, PULL_POLLING, PULL_DOWNLOADING, PULL_RETRYING };

static const char *const pull_state_names[] = {
	[PULL_STARTING] = "starting",
	[PULL_POLLING] = "polling",
	[PULL_DOWNLOADING] = "downloading",
	[PULL_RETRYING] = "retrying",
};

/* What a loop (the discovery, or a group's) shows: (pullers.lock). */
struct pull_loop {
	enum pull_state state;
	char last_error[400];
	uint64_t last_error_ns;
	unsigned failures;
	unsigned idle;             /* rounds in a row without news */
	uint64_t rounds, last_round_ns, next_round_ns, interval_ns;
};

struct pull_group {
	struct puller *p;
	char name[37];
	pthread_t thread;
	bool started;
	/* the group thread's own */
	struct s3 *s3;
	struct s3 *more[PULL_PARALLEL - 1]; /* a batch's other downloads', made on first use */
	struct state *st;
	char etag[128];            /* of the last HEAD read */
	bool have_head;
	unsigned seq;
	struct pull_loop loop;     /* (pullers.lock) */
};

struct puller {
	struct pullers *all;
	struct pull_config *cfg;
	pthread_t thread;
	bool started;
	struct s3 *s3;             /* the discovery thread's */
	int tmp_fd;                /* inbox/.tmp, shared by the group threads */
	uint64_t next_discover_ns;
	struct pull_loop loop;     /* the discovery's (pullers.lock) */
	struct pull_group **groups; /* appended by the discovery thread under pullers.lock */
	size_t ngroups;
	uint64_t segments, bytes;  /* (pullers.lock) */
};

struct pullers {
	struct remote *r;
	pthread_mutex_t lock;
	pthread_cond_t cond;      /* stop */
	bool stop;
	struct puller *p;
	size_t n;
};

/* ---- options ---- */

/* What every S3 client of pull c is made with. */
static struct s3_options client_options(const struct pull_config *c)
{
	return (struct s3_options){ .url = c->url, .region = c->region,
				    .access_key = c->access_key, .secret_key = c->secret_key,
				    .ca_file = c->ca_file };
}

static struct pull_config *current(struct remote_config *c)
{
	return c->npulls ? &c->pulls[c->npulls - 1] : &c->pull_defaults;
}

static int add_pull(struct remote_config *c, const char *name, const char *url)
{
	struct pull_config *np = realloc(c->pulls, (c->npulls + 1) * sizeof *np);

	if (!np)
		return -ENOMEM;
	c->pulls = np;
	memset(&np[c->npulls], 0, sizeof *np);
	np[c->npulls].name = strdup(name);
	np[c->npulls].url = url ? strdup(url) : NULL;
	if (!np[c->npulls].name)
		return -ENOMEM;
	c->npulls++;
	return 0;
}

static int set_str(char **field, const char *v)
{
	char *d = strdup(v);

	if (!d)
		return -ENOMEM;
	free(*field);
	*field = d;
	return 0;
}

/* One key of a pull, from a config file or the command line. */
static int pull_set(struct pull_config *p, const char *where, const char *key, const char *v)
{
	if (strcmp(key, "url") == 0)
		return set_str(&p->url, v);
	if (strcmp(key, "access_key_file") == 0)
		return set_str(&p->access_key_file, v);
	if (strcmp(key, "secret_key_file") == 0)
		return set_str(&p->secret_key_file, v);
	if (strcmp(key, "region") == 0)
		return set_str(&p->region, v);
	if (strcmp(key, "ca_file") == 0)
		return set_str(&p->ca_file, v);
	if (strcmp(key, "pull_interval") == 0) {
		if (parse_duration(v, &p->interval_ns) < 0 || p->interval_ns < MIN_INTERVAL_NS) {
			log_error("%s: pull_interval = %s: expected a duration of at least 50ms", where, v);
			return -EINVAL;
		}
		return 0;
	}
	log_error("%s: unknown key \"%s\" (known: url, access_key_file, secret_key_file, region,"
		  " ca_file, pull_interval)", where, key);
	return -EINVAL;
}

int puller_option(struct remote_config *c, const char *opt, const char *arg)
{
	static const struct { const char *opt, *key; } keys[] = {
		{ "access-key-file", "access_key_file" }, { "secret-key-file", "secret_key_file" },
		{ "region", "region" }, { "pull-interval", "pull_interval" },
		{ "pull-ca-file", "ca_file" },
	};
	char where[64];

	if (strcmp(opt, "pull") == 0)
		return add_pull(c, arg, arg);
	snprintf(where, sizeof where, "--%s", opt);
	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
		if (strcmp(opt, keys[i].opt) == 0)
			return pull_set(current(c), where, keys[i].key, arg);
	return -EINVAL;
}

struct ini_ctx {
	struct remote_config *c;
	const char *path;
	int errors;
};

static int ini_line(void *user, const char *section, const char *key, const char *value)
{
	struct ini_ctx *x = user;
	struct remote_config *c = x->c;
	char where[300];

	snprintf(where, sizeof where, "config %s [%s]", x->path, section);
	if (parse_has_inline_comment(value)) {
		log_error("%s %s = \"%s\": a '#' after a value is part of the value;"
			  " put the comment on a line of its own", where, key, value);
		x->errors++;
		return 1;
	}
	if (strncmp(section, "pull ", 5) != 0 || !section[5]) {
		log_error("config %s: unknown section [%s] (expected [pull NAME])", x->path, section);
		x->errors++;
		return 1;
	}
	if (!c->npulls || strcmp(c->pulls[c->npulls - 1].name, section + 5) != 0) {
		for (size_t i = 0; i < c->npulls; i++)
			if (strcmp(c->pulls[i].name, section + 5) == 0) {
				log_error("config %s: [%s] appears twice", x->path, section);
				x->errors++;
				return 1;
			}
		if (add_pull(c, section + 5, NULL) < 0) {
			x->errors++;
			return 1;
		}
	}
	if (pull_set(&c->pulls[c->npulls - 1], where, key, value) < 0)
		x->errors++;
	return 1;
}

int puller_config_load(struct remote_config *c, const char *path)
{
	struct ini_ctx x = { c, path, 0 };
	int r = ini_parse(path, ini_line, &x);

	if (r == -1) {
		log_error("config %s: %m", path);
		return -EINVAL;
	}
	if (r > 0 && !x.errors) {
		log_error("config %s: line %d is not \"key = value\" or \"[section]\"", path, r);
		return -EINVAL;
	}
	return x.errors ? -EINVAL : 0;
}

int puller_check(struct remote_config *c)
{
	const struct pull_config *def = &c->pull_defaults;

	for (size_t i = 0; i < c->npulls; i++) {
		struct pull_config *p = &c->pulls[i];
		struct s3_url u;
		char why[300];

		if (!p->url) {
			log_error("pull %s: no url", p->name);
			return -EINVAL;
		}
		if (s3_url_parse(p->url, &u, why, sizeof why) < 0) {
			log_error("--pull %s: %s", p->url, why);
			return -EINVAL;
		}
		s3_url_free(&u);
		/* options given before any --pull hold for every pull */
		if ((!p->access_key_file && def->access_key_file &&
		     set_str(&p->access_key_file, def->access_key_file) < 0) ||
		    (!p->secret_key_file && def->secret_key_file &&
		     set_str(&p->secret_key_file, def->secret_key_file) < 0) ||
		    (!p->region && def->region && set_str(&p->region, def->region) < 0) ||
		    (!p->ca_file && def->ca_file && set_str(&p->ca_file, def->ca_file) < 0))
			return -ENOMEM;
		if (!p->interval_ns)
			p->interval_ns = def->interval_ns ? def->interval_ns : DEFAULT_INTERVAL_NS;
		if (p->ca_file && access(p->ca_file, R_OK) < 0) {
			log_error("pull %s: ca_file %s: %m", p->name, p->ca_file);
			return -EINVAL;
		}
		if (s3_keys_load(p->access_key_file, p->secret_key_file, &p->access_key,
				 &p->secret_key, why, sizeof why) < 0) {
			log_error("pull %s: %s", p->name, why);
			return -EINVAL;
		}
	}
	return 0;
}

static void pull_config_free(struct pull_config *p)
{
	free(p->name);
	free(p->url);
	free(p->access_key_file);
	free(p->secret_key_file);
	free(p->region);
	free(p->ca_file);
	if (p->access_key)
		memset(p->access_key, 0, strlen(p->access_key));
	free(p->access_key);
	if (p->secret_key)
		memset(p->secret_key, 0, strlen(p->secret_key));
	free(p->secret_key);
	memset(p, 0, sizeof *p);
}

void puller_config_free(struct remote_config *c)
{
	for (size_t i = 0; i < c->npulls; i++)
		pull_config_free(&c->pulls[i]);
	free(c->pulls);
	c->pulls = NULL;
	c->npulls = 0;
	pull_config_free(&c->pull_defaults);
}

/* ---- what status shows ---- */

static void set_state(struct puller *p, struct pull_loop *l, enum pull_state s)
{
	pthread_mutex_lock(&p->all->lock);
	l->state = s;
	pthread_mutex_unlock(&p->all->lock);
}

static void fail(struct puller *p, struct pull_loop *l, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void fail(struct puller *p, struct pull_loop *l, const char *fmt, ...)
{
	char msg[sizeof l->last_error];
	bool changed;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&p->all->lock);
	changed = strcmp(msg, l->last_error) != 0 || l->state != PULL_RETRYING;
	memcpy(l->last_error, msg, sizeof msg);
	l->last_error_ns = clock_wall_ns();
	l->state = PULL_RETRYING;
	l->failures++;
	pthread_mutex_unlock(&p->all->lock);
	/* said once per new reason, not every round */
	if (changed)
		log_info("pull %s: %s; retrying", p->cfg->name, msg);
}

/* ---- one segment ---- */

struct download {
	int fd;
	uint64_t written;
	struct seg_precheck *pre; /* hashes the payloads as they are written (NULL:
				   * out of memory, the file is checked whole) */
};

static int dl_sink(void *ctx, const void *data, size_t len)
{
	struct download *dl = ctx;
	int r = fileio_write_full(dl->fd, data, len);

	if (r == 0) {
		dl->written += len;
		seg_precheck_feed(dl->pre, data, len);
	}
	return r;
}

/* Opens (creating) inbox/<group>. */
static int group_dir(struct puller *p, const char *group)
{
	int fd, inbox = p->all->r->inbox_fd;

	if (mkdirat(inbox, group, 0750) == 0)
		fsync(inbox);
	else if (errno != EEXIST)
		return -errno;
	fd = openat(inbox, group, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* Checks the downloaded file whole: a sealed segment of this group with
 * this number (its payloads hashed as they were written: pre, if it
 * stands for the file).  0, -EBADMSG with why, or another -errno (this
 * host's trouble: out of memory, a read that failed) with why. */
static int validate(int fd, uint64_t size, const struct seg_precheck *pre, const uint8_t gid[16],
		    uint64_t number, char *why, size_t whylen)
{
	struct seg_view *v;
	struct seg_err e;
	int r;

	if (!size) {
		snprintf(why, whylen, "it is empty");
		return -EBADMSG;
	}
	r = seg_view_open_fd_prechecked(fd, pre, &v, &e);
	if (r == -EBADMSG) {
		snprintf(why, whylen, "not a valid segment: %s (at byte %" PRIu64 ")", e.msg, e.offset);
		return r;
	}
	if (r < 0) {
		snprintf(why, whylen, "cannot read it: %s", e.msg[0] ? e.msg : strerror(-r));
		return r;
	}
	if (memcmp(seg_view_header(v)->group, gid, 16) != 0 || seg_view_header(v)->number != number) {
		snprintf(why, whylen, "it is another group's or another number's");
		r = -EBADMSG;
	}
	seg_view_free(v);
	return r;
}

/* One segment's download into inbox/.tmp, on a thread of its own. */
struct pull_job {
	struct pull_group *g;
	struct s3 *s3;
	uint64_t n;
	char file[SEG_FILE_NAME_LEN + 8];
	char tmp[160];             /* its name in inbox/.tmp */
	struct download dl;
	int rc;
	char error[800];           /* what failed (fail() keeps the first 400 bytes) */
};

/* Downloads job->n into its temporary file, fsyncs it and validates it
 * whole; what failed goes in job->error, reported only if the segment is
 * needed (pull_batch). */
static void fetch_segment(void *arg)
{
	struct pull_job *job = arg;
	struct pull_group *g = job->g;
	struct puller *p = g->p;
	struct remote *r = p->all->r;
	struct s3_reply rep;
	char key[128], why[300];
	uint8_t gid[16];

	snprintf(key, sizeof key, "%s/%s", g->name, job->file);
	group_name_valid(g->name, gid);
	job->dl.fd = openat(p->tmp_fd, job->tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW |
			    O_CLOEXEC, 0640);
	if (job->dl.fd < 0) {
		job->rc = -errno;
		snprintf(job->error, sizeof job->error, "cannot create %s/%s/%s: %s",
			 r->cfg.inbox, INBOX_TMP, job->tmp, strerror(errno));
		return;
	}
	job->dl.pre = seg_precheck_new();
	job->rc = s3_fetch(job->s3, key, dl_sink, &job->dl, r->cfg.max_segment, &rep);
	if (job->rc < 0) {
		if (job->rc == -EFBIG)
			snprintf(job->error, sizeof job->error, "%s: larger than --max-segment", key);
		else if (job->rc != -EIO && job->rc != -ENOENT && job->rc != -EBADMSG)
			snprintf(job->error, sizeof job->error, "cannot write %s/%s/%s: %s",
				 r->cfg.inbox, INBOX_TMP, job->tmp, strerror(-job->rc));
		else
			snprintf(job->error, sizeof job->error, "%s", rep.error);
		return;
	}
	if (fsync(job->dl.fd) < 0) {
		job->rc = -errno;
		snprintf(job->error, sizeof job->error, "fsync of %s/%s/%s: %s", r->cfg.inbox,
			 INBOX_TMP, job->tmp, strerror(errno));
		return;
	}
	job->rc = validate(job->dl.fd, job->dl.written, job->dl.pre, gid, job->n, why, sizeof why);
	if (job->rc < 0)
		snprintf(job->error, sizeof job->error, "%s in the bucket: %s", key, why);
}

/* The group's client for download i of a batch: its own for the first,
 * made on first use for the others.  NULL after fail() if one cannot be
 * made. */
static struct s3 *batch_client(struct pull_group *g, unsigned i)
{
	struct pull_config *c = g->p->cfg;
	struct s3_options o = client_options(c);
	char why[300] = "out of memory";

	if (i == 0)
		return g->s3;
	if (!g->more[i - 1] && s3_new(&o, &g->more[i - 1], why, sizeof why) < 0) {
		fail(g->p, &g->loop, "cannot make a client for a download: %s", why);
		return NULL;
	}
	return g->more[i - 1];
}

/*
 * Segments first..first+count-1 (count <= PULL_PARALLEL) of group g into
 * inbox/<group> (gfd): downloaded, fsynced and validated at once, then
 * renamed in order, so that the inbox never holds one without the one
 * before it; the first that failed ends the batch (those after it are
 * dropped and downloaded again next round).  0, or -errno after fail().
 */
static int pull_batch(struct pull_group *g, int gfd, uint64_t first, unsigned count)
{
	struct puller *p = g->p;
	struct remote *r = p->all->r;
	struct pull_job job[PULL_PARALLEL];
	int rc = 0;

	for (unsigned i = 0; i < count; i++) {
		char file[SEG_FILE_NAME_LEN + 8];

		job[i] = (struct pull_job){ .g = g, .s3 = batch_client(g, i), .n = first + i,
					    .dl = { .fd = -1 } };
		if (!job[i].s3)
			return -ENOMEM; /* the round ends; the next starts where this one stopped */
		seg_file_name(job[i].n, SEG_FILE_SUFFIX, file);
		memcpy(job[i].file, file, sizeof file);
		snprintf(job[i].tmp, sizeof job[i].tmp, TMP_PREFIX "%s.%s.%d.%u.part", g->name,
			 file, (int)getpid(), g->seq++);
	}
	parallel_each(fetch_segment, job, sizeof *job, count);
	for (unsigned i = 0; i < count; i++) {
		if (rc == 0 && job[i].rc < 0) {
			rc = job[i].rc;
			fail(p, &g->loop, "%s", job[i].error);
		}
		if (rc == 0) {
			int m = prechecked_rename(&r->prechecked, job[i].dl.fd, job[i].dl.pre,
						  p->tmp_fd, job[i].tmp, gfd, job[i].file);

			job[i].dl.pre = NULL;
			if (m < 0 && m != -EEXIST) {
				rc = m;
				fail(p, &g->loop, "cannot move %s into %s/%s: %s", job[i].file,
				     r->cfg.inbox, g->name, strerror(-m));
			}
		}
		if (rc == 0) {
			pthread_mutex_lock(&p->all->lock);
			p->segments++;
			p->bytes += job[i].dl.written;
			pthread_mutex_unlock(&p->all->lock);
			groups_kick(r, g->name);
		}
		if (job[i].dl.fd >= 0) {
			unlinkat(p->tmp_fd, job[i].tmp, 0); /* gone already if it was renamed */
			close(job[i].dl.fd);
		}
		seg_precheck_free(job[i].dl.pre);
	}
	return rc;
}

/* ---- one group ---- */

/* The last segment this site holds of group g without a gap: applied
 * (the state) or lying in the inbox after it.  Sets *known when the
 * site ever saw the group. */
static uint64_t held_through(struct pull_group *g, bool *known)
{
	struct state_group sg;
	struct inbox_entry *list = NULL;
	uint64_t have = 0;
	size_t n = 0;
	int gfd;

	*known = false;
	if (state_group_get(g->st, g->name, &sg) == 0 && sg.applied_segment) {
		have = sg.applied_segment;
		*known = true;
	}
	gfd = openat(g->p->all->r->inbox_fd, g->name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
		     O_CLOEXEC);
	if (gfd >= 0) {
		if (inbox_scan(gfd, &list, &n) == 0) {
			for (size_t i = 0; i < n; i++) {
				if (!*known && i == 0)
					have = list[i].number - 1; /* a first pull that stopped midway */
				if (list[i].number == have + 1)
					have++;
			}
			*known = *known || n > 0;
		}
		free(list);
		close(gfd);
	}
	return have;
}

/* The newest complete base at or after segment from, or 0. */
static uint64_t base_after(const struct s3_head *h, uint64_t from)
{
	for (size_t i = h->nbases; i-- > 0;)
		if (h->bases[i].segment >= from && h->bases[i].segment >= h->oldest)
			return h->bases[i].segment;
	if (h->pending.segment >= from && h->pending.segment >= h->oldest)
		return h->pending.segment;
	return 0;
}

/* Reads g's HEAD and downloads what is new.  1 if anything changed, 0 if
 * not, -errno after fail(). */
static int poll_group(struct pull_group *g)
{
	struct puller *p = g->p;
	struct s3_reply rep;
	struct s3_head h;
	char key[128], why[200], *text = NULL;
	uint64_t have, from, at, stop;
	enum failover_role role;
	bool known;
	size_t len;
	int rc, gfd;

	/* A group promoted here (failover.c), or being promoted, takes no
	 * segment, from the store either. */
	if (state_role(g->st, g->name, &role, &at, &stop) == 0 && role >= FO_PROMOTING)
		return 0;
	snprintf(key, sizeof key, "%s/%s", g->name, S3_HEAD_KEY);
	rc = s3_get_small(g->s3, key, g->have_head ? g->etag : NULL, HEAD_MAX, &text, &len, &rep);
	if (rc == 1)
		return 0;
	if (rc == -ENOENT && strcmp(rep.code, "NoSuchKey") == 0)
		return 0; /* its first segment is on its way */
	if (rc < 0) {
		fail(p, &g->loop, "%s", rep.error);
		return rc;
	}
	rc = s3_head_parse(text, len, &h, why, sizeof why);
	free(text);
	if (rc == 0 && strcmp(h.group, g->name) != 0) {
		snprintf(why, sizeof why, "it names group %s", h.group);
		rc = -EBADMSG;
	}
	if (rc < 0) {
		fail(p, &g->loop, "%s: %s", key, why);
		return rc;
	}
	have = held_through(g, &known);
	from = known ? have + 1 : s3_head_start(&h);
	if (known && h.oldest && from < h.oldest) {
		uint64_t b = base_after(&h, from);

		if (!b) {
			fail(p, &g->loop, "group %s needs segment %" PRIu64 ", which the bucket no"
			     " longer holds (it keeps %" PRIu64 "..%" PRIu64 ", with no base after it)",
			     g->name, from, h.oldest, h.segment);
			return -ENOENT;
		}
		log_warn("pull %s: group %s needs segment %" PRIu64 ", which the bucket no longer"
			 " holds; it continues at the base in segment %" PRIu64, p->cfg->name, g->name,
			 from, b);
		from = b;
	}
	if (from && from <= h.segment) {
		gfd = group_dir(p, g->name);
		if (gfd < 0) {
			fail(p, &g->loop, "cannot open %s/%s: %s", p->all->r->cfg.inbox, g->name,
			     strerror(-gfd));
			return gfd;
		}
		set_state(p, &g->loop, PULL_DOWNLOADING);
		for (uint64_t n = from; n <= h.segment && rc == 0; n += PULL_PARALLEL) {
			uint64_t left = h.segment - n + 1;

			rc = pull_batch(g, gfd, n, left < PULL_PARALLEL ? (unsigned)left : PULL_PARALLEL);
		}
		/* the names of this round's segments, durable at once */
		if (fsync(gfd) < 0 && rc == 0) {
			rc = -errno;
			fail(p, &g->loop, "fsync of %s/%s: %s", p->all->r->cfg.inbox, g->name,
			     strerror(errno));
		}
		close(gfd);
		if (rc < 0)
			return rc; /* the HEAD is read again next round */
	}
	memcpy(g->etag, rep.etag, sizeof g->etag);
	g->have_head = true;
	return 1;
}

/* After a round of loop l, begun at started_ns, that came to rc: the
 * status, and when the next round is.  News: an interval after this one
 * began (so a round that downloaded does not push the next one back);
 * nothing new three times in a row: slower and slower, up to BACKOFF_MAX
 * intervals; failures: doubling, up to RETRY_MAX_NS.  Returns the next
 * round's time.  (pullers.lock held.) */
static struct timespec next_round(struct puller *p, struct pull_loop *l, int rc,
				  uint64_t started_ns)
{
	uint64_t base = p->cfg->interval_ns, wait = l->interval_ns ? l->interval_ns : base;

	l->rounds++;
	l->last_round_ns = clock_wall_ns();
	if (rc >= 0) {
		if (l->state == PULL_RETRYING)
			log_info("pull %s: the store answers again", p->cfg->name);
		l->state = PULL_POLLING;
		l->failures = 0;
		l->last_error[0] = '\0';
	}
	if (rc > 0) {
		l->idle = 0;
		wait = base;
	} else if (rc == 0) {
		if (++l->idle >= 3)
			wait = wait * 3 / 2 > base * BACKOFF_MAX ? base * BACKOFF_MAX : wait * 3 / 2;
	} else {
		wait = wait * 2 > RETRY_MAX_NS ? RETRY_MAX_NS : wait * 2;
	}
	if (wait < base)
		wait = base;
	l->interval_ns = wait;
	l->next_round_ns = (rc >= 0 ? started_ns : clock_wall_ns()) + wait;
	return clock_timespec(l->next_round_ns);
}

static void *group_main(void *arg)
{
	struct pull_group *g = arg;
	struct pullers *all = g->p->all;

	pthread_mutex_lock(&all->lock);
	while (!all->stop) {
		uint64_t started = clock_wall_ns();
		struct timespec ts;
		int rc;

		pthread_mutex_unlock(&all->lock);
		rc = poll_group(g);
		pthread_mutex_lock(&all->lock);
		ts = next_round(g->p, &g->loop, rc, started);
		while (!all->stop && pthread_cond_timedwait(&all->cond, &all->lock, &ts) == 0)
			;
	}
	pthread_mutex_unlock(&all->lock);
	return NULL;
}

/* A group found under the prefix: a thread of its own. */
static int add_group(void *ctx, const char *name)
{
	struct puller *p = ctx;
	struct remote *r = p->all->r;
	struct pull_config *c = p->cfg;
	struct s3_options o = client_options(c);
	struct pull_group *g, **ng;
	char why[300];
	uint8_t id[16];
	int rc;

	if (!group_name_valid(name, id))
		return 0; /* not ours: other objects under the prefix */
	for (size_t i = 0; i < p->ngroups; i++)
		if (strcmp(p->groups[i]->name, name) == 0)
			return 0;
	g = calloc(1, sizeof *g);
	if (!g)
		return -ENOMEM;
	pthread_mutex_lock(&p->all->lock); /* status walks the array */
	ng = realloc(p->groups, (p->ngroups + 1) * sizeof *ng);
	if (ng)
		p->groups = ng;
	pthread_mutex_unlock(&p->all->lock);
	if (!ng) {
		free(g);
		return -ENOMEM;
	}
	g->p = p;
	memcpy(g->name, name, 37);
	rc = s3_new(&o, &g->s3, why, sizeof why);
	if (rc == 0)
		rc = state_open(r->db_path, &g->st);
	if (rc == 0)
		rc = -pthread_create(&g->thread, NULL, group_main, g);
	if (rc < 0) {
		log_error("pull %s: group %s: cannot start: %s", c->name, name, strerror(-rc));
		s3_free(g->s3);
		state_close(g->st);
		free(g);
		return rc;
	}
	g->started = true;
	pthread_mutex_lock(&p->all->lock);
	p->groups[p->ngroups++] = g;
	pthread_mutex_unlock(&p->all->lock);
	log_info("pull %s: found group %s", c->name, name);
	return 0;
}

/* Empties inbox/.tmp of a killed puller's downloads. */
static void clean_tmp(int fd)
{
	int dfd = dup(fd);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	struct dirent *de;

	if (!d) {
		if (dfd >= 0)
			close(dfd);
		return;
	}
	while ((de = readdir(d)))
		if (strncmp(de->d_name, TMP_PREFIX, strlen(TMP_PREFIX)) == 0)
			unlinkat(fd, de->d_name, 0);
	closedir(d);
}

/* The discovery thread: lists the prefix's groups. */
static void *puller_main(void *arg)
{
	struct puller *p = arg;
	struct pullers *all = p->all;

	pthread_mutex_lock(&all->lock);
	while (!all->stop) {
		struct timespec ts;
		struct s3_reply rep;
		uint64_t started = clock_wall_ns();
		int rc = 0;

		pthread_mutex_unlock(&all->lock);
		if (clock_mono_ns() >= p->next_discover_ns) {
			rc = s3_list_dirs(p->s3, add_group, p, &rep);
			if (rc < 0 && rc != -ENOMEM)
				fail(p, &p->loop, "%s", rep.error);
			else if (rc == 0)
				p->next_discover_ns = p->ngroups ? clock_mono_ns() + DISCOVER_NS : 0;
		}
		pthread_mutex_lock(&all->lock);
		ts = next_round(p, &p->loop, rc < 0 ? rc : 0, started);
		while (!all->stop && pthread_cond_timedwait(&all->cond, &all->lock, &ts) == 0)
			;
	}
	pthread_mutex_unlock(&all->lock);
	return NULL;
}

int puller_start(struct remote *r)
{
	struct pullers *all;
	int fd;

	if (!r->cfg.npulls)
		return 0;
	all = calloc(1, sizeof *all);
	if (!all)
		return -ENOMEM;
	all->r = r;
	pthread_mutex_init(&all->lock, NULL);
	pthread_cond_init(&all->cond, NULL);
	all->p = calloc(r->cfg.npulls, sizeof *all->p);
	r->pullers = all;
	if (!all->p)
		return -ENOMEM;
	for (size_t i = 0; i < r->cfg.npulls; i++) {
		all->p[i].all = all;
		all->p[i].cfg = &r->cfg.pulls[i];
		all->p[i].tmp_fd = -1;
	}
	/* /status may read them from now on (the status listener is up) */
	pthread_mutex_lock(&all->lock);
	all->n = r->cfg.npulls;
	pthread_mutex_unlock(&all->lock);
	fd = inbox_tmp_open(r);
	if (fd < 0)
		return fd;
	clean_tmp(fd);
	close(fd);
	for (size_t i = 0; i < all->n; i++) {
		struct puller *p = &all->p[i];
		struct pull_config *c = &r->cfg.pulls[i];
		struct s3_options o = client_options(c);
		char why[300];
		int rc;

		p->tmp_fd = openat(r->inbox_fd, INBOX_TMP, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
				   O_CLOEXEC);
		if (p->tmp_fd < 0) {
			log_error("cannot open %s/%s: %m", r->cfg.inbox, INBOX_TMP);
			return -errno;
		}
		rc = s3_new(&o, &p->s3, why, sizeof why);
		if (rc < 0) {
			log_error("pull %s: %s", c->name, why);
			return rc;
		}
		rc = pthread_create(&p->thread, NULL, puller_main, p);
		if (rc) {
			log_error("pull %s: cannot start a thread: %s", c->name, strerror(rc));
			return -rc;
		}
		p->started = true;
		log_info("pulling %s every %.3g s", c->url, (double)c->interval_ns / 1e9);
	}
	return 0;
}

void puller_stop(struct remote *r)
{
	struct pullers *all = r->pullers;

	if (!all)
		return;
	pthread_mutex_lock(&all->lock);
	all->stop = true;
	pthread_cond_broadcast(&all->cond);
	pthread_mutex_unlock(&all->lock);
	for (size_t i = 0; all->p && i < all->n; i++) {
		struct puller *p = &all->p[i];

		/* the discovery first: then nobody adds a group */
		if (p->started)
			pthread_join(p->thread, NULL);
		for (size_t k = 0; k < p->ngroups; k++) {
			struct pull_group *g = p->groups[k];

			if (g->started)
				pthread_join(g->thread, NULL);
			s3_free(g->s3);
			for (unsigned j = 0; j < PULL_PARALLEL - 1; j++)
				s3_free(g->more[j]);
			state_close(g->st);
			free(g);
		}
		free(p->groups);
		s3_free(p->s3);
		if (p->tmp_fd >= 0)
			close(p->tmp_fd);
	}
	free(all->p);
	pthread_mutex_destroy(&all->lock);
	pthread_cond_destroy(&all->cond);
	free(all);
	r->pullers = NULL;
}

/* The loop that says most about p: a failing one (the latest failure),
 * else one downloading, else the discovery.  (pullers.lock held.) */
static const struct pull_loop *worst(const struct puller *p, unsigned *retrying)
{
	const struct pull_loop *w = &p->loop;

	*retrying = 0;
	for (size_t k = 0; k < p->ngroups; k++) {
		const struct pull_loop *l = &p->groups[k]->loop;

		if (l->state == PULL_RETRYING)
			(*retrying)++;
		if (l->state > w->state ||
		    (l->state == PULL_RETRYING && w->state == PULL_RETRYING &&
		     l->last_error_ns > w->last_error_ns))
			w = l;
	}
	return w;
}

json_t *puller_status_json(struct remote *r)
{
	struct pullers *all = r->pullers;
	json_t *arr = json_array();
	char when[40];
	uint64_t now = clock_wall_ns();

	if (!all)
		return arr;
	pthread_mutex_lock(&all->lock);
	for (size_t i = 0; i < all->n; i++) {
		struct puller *p = &all->p[i];
		unsigned retrying;
		const struct pull_loop *w = worst(p, &retrying);
		json_t *o = json_object();

		json_object_set_new(o, "name", json_string(p->cfg->name));
		json_object_set_new(o, "url", json_string(p->cfg->url));
		json_object_set_new(o, "state", json_string(pull_state_names[w->state]));
		json_object_set_new(o, "groups", json_integer((json_int_t)p->ngroups));
		json_object_set_new(o, "groups_retrying", json_integer(retrying));
		json_object_set_new(o, "segments_pulled", json_integer((json_int_t)p->segments));
		json_object_set_new(o, "bytes_pulled", json_integer((json_int_t)p->bytes));
		json_object_set_new(o, "rounds", json_integer((json_int_t)p->loop.rounds));
		json_object_set_new(o, "interval_seconds",
				    json_real((double)p->cfg->interval_ns / 1e9));
		json_object_set_new(o, "last_round_at",
				    json_string(clock_iso8601(p->loop.last_round_ns, 0, when,
							      sizeof when)));
		json_object_set_new(o, "next_round_in_seconds",
				    json_real(w->next_round_ns > now
						      ? (double)(w->next_round_ns - now) / 1e9 : 0));
		if (w->state == PULL_RETRYING) {
			json_object_set_new(o, "last_error", json_string(w->last_error));
			json_object_set_new(o, "last_error_at",
					    json_string(clock_iso8601(w->last_error_ns, 0, when,
								      sizeof when)));
			json_object_set_new(o, "attempts", json_integer(w->failures));
		}
		json_array_append_new(arr, o);
	}
	pthread_mutex_unlock(&all->lock);
	return arr;
}

void puller_metrics(struct remote *r, struct strbuf *sb)
{
	static const char *const types[] = {
		"# TYPE aim_remote_pull_state gauge\n",
		"# TYPE aim_remote_pulled_segments_total counter\n",
		"# TYPE aim_remote_pulled_bytes_total counter\n",
	};
	struct pullers *all = r->pullers;
	struct strbuf fam[3] = { 0 };

	if (!all || !all->n)
		return;
	for (int f = 0; f < 3; f++)
		strbuf_printf(&fam[f], "%s", types[f]);
	pthread_mutex_lock(&all->lock);
	for (size_t i = 0; i < all->n; i++) {
		unsigned retrying;
		const struct pull_loop *w = worst(&all->p[i], &retrying);
		char *label = prom_label_value(all->p[i].cfg->name);

		if (!label) {
			sb->failed = true;
			break;
		}
		/* one family after the other, as the text format asks */
		for (int s = 0; s <= PULL_RETRYING; s++)
			strbuf_printf(&fam[0], "aim_remote_pull_state{pull=\"%s\",state=\"%s\"} %d\n",
				      label, pull_state_names[s], (int)w->state == s);
		strbuf_printf(&fam[1], "aim_remote_pulled_segments_total{pull=\"%s\"} %" PRIu64 "\n",
			      label, all->p[i].segments);
		strbuf_printf(&fam[2], "aim_remote_pulled_bytes_total{pull=\"%s\"} %" PRIu64 "\n",
			      label, all->p[i].bytes);
		free(label);
	}
	for (int f = 0; f < 3; f++) {
		if (fam[f].len)
			strbuf_append(sb, fam[f].buf, fam[f].len);
		sb->failed |= fam[f].failed;
		strbuf_free(&fam[f]);
	}
	pthread_mutex_unlock(&all->lock);
}
