/*
 * aimctl.c — the operator's command-line tool.  One program, one table of
 * subcommands: `dump` lists a segment's header and records through the
 * shared decoder, `replay` applies segments offline with the very applier
 * aim-remote uses (remote/apply.h), after validating all of them as a set.
 * `status` (cmd_status.c) reads a daemon's /status for people, `ship`
 * (cmd_ship.c) drains an unmounted journal with the transport, `resume`
 * asks an aim-remote to start its stopped groups again.
 *
 * Exit status: 0 success, 1 failure (the reason is on stderr), 2 usage.
 */
#include "aimctl.h"
#include "apply.h"
#include "clock.h"
#include "log.h"
#include "parse.h"
#include "format.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define EXIT_USAGE 2

#ifndef AIM_VERSION
#define AIM_VERSION "unknown"
#endif

struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *args;
	const char *help;
};

static int cmd_dump(int argc, char **argv);
static int cmd_replay(int argc, char **argv);
static int cmd_resume(int argc, char **argv);
static int cmd_help(int argc, char **argv);

static const struct command commands[] = {
	{ "dump", cmd_dump, "[--records=yes|no] SEGMENT",
	  "list a segment's header and records" },
	{ "replay", cmd_replay,
	  "--target-dir DIR [--map IMAGE=PATH]... [--after-lsn N] [-v] SEGMENT... | JOURNAL_DIR",
	  "validate segments, then apply them in order onto DIR (as aim-remote does);\n"
	  "      --after-lsn resumes a replay that stopped, -v shows each durable point" },
	{ "status", cmd_status, "[--json] [URL]",
	  "show a daemon's status for people (default http://127.0.0.1:9380/status)" },
	{ "ship", cmd_ship, "(--dest URL | --config FILE)... [--timeout DURATION] JOURNAL_DIR",
	  "ship an unmounted journal's segments to its destinations, then exit" },
	{ "verify", cmd_verify, "[--status ADDR:PORT] [--timeout DURATION] [IMAGE]",
	  "compare a running aimfs's images with every replica, block hash by block hash;\n"
	  "      exits 0 only if every replica is equal" },
	{ "resume", cmd_resume, "[--status ADDR:PORT] [GROUP]",
	  "ask a running aim-remote to start its stopped groups (or GROUP) again,\n"
	  "      once their cause is fixed (default status 127.0.0.1:9381)" },
	{ "help", cmd_help, "", "show this help" },
};

static void usage(FILE *f)
{
	fprintf(f, "usage: %s COMMAND [ARGS...]\n       %s -h|--help | -V|--version\n\ncommands:\n",
		log_progname(), log_progname());
	for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
		fprintf(f, "  %s%s%s\n      %s\n", commands[i].name, commands[i].args[0] ? " " : "",
			commands[i].args, commands[i].help);
	fprintf(f, "\nExit status: 0 success, 1 failure (or a difference found), 2 usage error.\n");
}

/* Reports a usage error and returns the usage exit status. */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	log_error("%s", msg);
	usage(stderr);
	return EXIT_USAGE;
}

static int cmd_help(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	usage(stdout);
	return 0;
}

/* Reports why a segment was refused; the byte offset only for format
 * problems, where it locates the damage. */
static void report_seg_err(const char *path, int r, const struct seg_err *e)
{
	if (r == -EBADMSG)
		log_error("%s: %s (at byte %" PRIu64 ")", path, e->msg, e->offset);
	else if (e->msg[0])
		log_error("%s: %s", path, e->msg);
	else
		log_error("%s: %s", path, strerror(-r));
}

/* ---- dump ---- */

static const char *format_flags(uint8_t flags, char *buf, size_t len)
{
	static const struct { uint8_t bit; const char *word; } words[] = {
		{ SEG_F_PUNCH, "punch" }, { SEG_F_KEEP_SIZE, "keep-size" },
		{ SEG_F_DIR, "dir" }, { SEG_F_REPLACE, "replace" }, { SEG_F_RESYNC, "resync" },
	};
	size_t n = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
		if (!(flags & words[i].bit))
			continue;
		n += (size_t)snprintf(buf + n, len - n, "%s%s", n ? "," : "", words[i].word);
		flags &= (uint8_t)~words[i].bit;
	}
	if (flags)
		snprintf(buf + n, len - n, "%s0x%02x", n ? "," : "", flags);
	if (!buf[0])
		snprintf(buf, len, "-");
	return buf;
}

/* A mode as the record carries it: the permission bits, and the whole u32
 * when it has more (the decoder accepts any; appliers mask it). */
static void print_mode(uint32_t aux)
{
	printf("  mode %04" PRIo32, aux & 07777);
	if (aux & ~(uint32_t)07777)
		printf(" (aux 0x%08" PRIx32 ")", aux);
}

/* The destination a resync record is for (its aux), after sep. */
static void print_dest(const struct seg_record *r, const char *sep)
{
	if (r->type == SEG_HASH && r->aux == 0)
		printf("%severy destination", sep);
	else
		printf("%sdestination %" PRIu32, sep, r->aux);
}

static void dump_record(struct seg_view *v, const struct seg_record *r)
{
	char name[SEG_NAME_MAX + 1], other[SEG_NAME_MAX + 1];
	char tbuf[64], fbuf[64], obuf[24], lbuf[24];
	const char *img;
	uint32_t hashes;
	bool data = r->type == SEG_WRITE || r->type == SEG_ZERO || r->type == SEG_ALLOC ||
		    r->type == SEG_HASH;

	if (data || r->type == SEG_TRUNCATE)
		snprintf(obuf, sizeof obuf, "%" PRIu64, r->offset);
	else
		snprintf(obuf, sizeof obuf, "-");
	if (data)
		snprintf(lbuf, sizeof lbuf, "%" PRIu64, r->length);
	else
		snprintf(lbuf, sizeof lbuf, "-");
	printf("%10" PRIu64 "  %-8s %14s %12s  %-15s %-30s  ", r->lsn, seg_type_name(r->type), obuf,
	       lbuf, format_flags(r->flags, fbuf, sizeof fbuf),
	       clock_iso8601(r->time_ns, 9, tbuf, sizeof tbuf));
	/* The image as the record sees it; UNLINK has unbound it already, and
	 * RENAME shows both names. */
	img = r->image ? seg_view_image_name(v, r->image) : NULL;
	switch (r->type) {
	case SEG_UNLINK:
		seg_record_name(r, name);
		printf("%" PRIu32 " %s\n", r->image, name);
		break;
	case SEG_RENAME:
		seg_rename_names(r, name, other);
		if (r->image)
			printf("%" PRIu32 " %s -> %s\n", r->image, name, other);
		else
			printf("- %s/ -> %s/\n", name, other);
		break;
	case SEG_CREATE:
		printf("%" PRIu32 " %s", r->image, img ? img : "?");
		print_mode(r->aux);
		putchar('\n');
		break;
	case SEG_MKDIR:
		seg_record_name(r, name);
		printf("- %s/", name);
		print_mode(r->aux);
		putchar('\n');
		break;
	case SEG_RMDIR:
		seg_record_name(r, name);
		printf("- %s/\n", name);
		break;
	case SEG_MARK:
		printf("- \"%.*s\"\n", (int)r->payload_len, (const char *)r->payload);
		break;
	case SEG_FLUSH:
		if (!r->image) {
			printf("- (all images)\n");
			break;
		}
		printf("%" PRIu32 " %s\n", r->image, img ? img : "?");
		break;
	case SEG_SYNC_BEGIN:
	case SEG_SYNC_END:
		printf("-");
		print_dest(r, " ");
		putchar('\n');
		break;
	case SEG_SKIP:
		/* stands for a record of another destination's resync */
		printf("- left out a record for destination %" PRIu32 "\n", r->aux);
		break;
	case SEG_HASH:
		hashes = (r->payload_len - SEG_HASH_HEADER) / 8;
		printf("%" PRIu32 " %s  block %" PRIu32 ", %" PRIu32 " hash%s", r->image,
		       img ? img : "?", seg_hash_block(r), hashes, hashes == 1 ? "" : "es");
		print_dest(r, ", ");
		putchar('\n');
		break;
	default: /* WRITE, ZERO, TRUNCATE, ALLOC */
		printf("%" PRIu32 " %s", r->image, img ? img : "?");
		if (r->flags & SEG_F_RESYNC)
			print_dest(r, "  ");
		putchar('\n');
		break;
	}
}

static int cmd_dump(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "records", required_argument, NULL, 'r' },
		{ "no-records", no_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const struct seg_header *h;
	const struct seg_trailer *t;
	struct seg_view *v;
	struct seg_record rec;
	struct seg_err e;
	bool records = true;
	char uuid[37], tbuf[64], sbuf[32];
	const char *path;
	int c, r;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 'r':
			if (strcmp(optarg, "yes") == 0)
				records = true;
			else if (strcmp(optarg, "no") == 0)
				records = false;
			else
				return usage_error("dump: --records takes yes or no, not \"%s\"", optarg);
			break;
		case 'n':
			records = false;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case ':':
			return usage_error("dump: %s needs an argument", argv[optind - 1]);
		default:
			return usage_error("dump: unknown option %s", argv[optind - 1]);
		}
	}
	if (argc - optind != 1)
		return usage_error("dump: expected one SEGMENT file, got %d arguments", argc - optind);
	path = argv[optind];
	r = seg_view_open(path, &v, &e);
	if (r < 0) {
		report_seg_err(path, r, &e);
		return 1;
	}
	h = seg_view_header(v);
	t = seg_view_trailer(v);
	seg_uuid_format(h->group, uuid);
	printf("segment  %s\n", path);
	printf("group    %s\n", uuid);
	printf("number   %" PRIu64 "\n", h->number);
	if (seg_view_count(v))
		printf("lsn      %" PRIu64 "..%" PRIu64 " (%" PRIu64 " records)\n", h->first_lsn,
		       seg_view_last_lsn(v), seg_view_count(v));
	else
		printf("lsn      none (empty; next LSN %" PRIu64 ")\n", h->first_lsn);
	printf("created  %s\n", clock_iso8601(h->created_ns, 9, tbuf, sizeof tbuf));
	printf("sealed   %s\n", clock_iso8601(t->sealed_ns, 9, tbuf, sizeof tbuf));
	printf("backing  LSN %" PRIu64 "\n", t->backing_lsn);
	printf("digest   %016" PRIx64 "\n", seg_view_digest(v));
	printf("size     %zu bytes", seg_view_size(v));
	if (seg_view_size(v) >= 1024)
		printf(" (%s)", format_size(seg_view_size(v), sbuf, sizeof sbuf));
	putchar('\n');
	printf("images   %" PRIu32 "\n", h->image_count);
	for (uint32_t i = 0; i < h->image_count; i++)
		printf("  %10" PRIu32 "  %.*s\n", h->images[i].id, (int)h->images[i].name_len,
		       h->images[i].name);
	if (records) {
		printf("\n%10s  %-8s %14s %12s  %-15s %-30s  %s\n", "LSN", "TYPE", "OFFSET", "LENGTH",
		       "FLAGS", "TIME", "IMAGE");
		seg_view_rewind(v);
		while (seg_view_next(v, &rec) == 1)
			dump_record(v, &rec);
	}
	seg_view_free(v);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		log_error("writing the listing: %m");
		return 1;
	}
	return 0;
}

/* ---- replay ---- */

struct seg_file {
	char *path;
	struct seg_view *view;
};

static int by_number(const void *x, const void *y)
{
	const struct seg_file *a = x, *b = y;
	uint64_t na = seg_view_header(a->view)->number, nb = seg_view_header(b->view)->number;

	return na < nb ? -1 : na > nb;
}

static int add_file(struct seg_file **files, size_t *n, char *path)
{
	struct seg_file *nf = realloc(*files, (*n + 1) * sizeof *nf);

	if (!nf) {
		free(path);
		return -ENOMEM;
	}
	*files = nf;
	nf[*n].path = path;
	nf[*n].view = NULL;
	(*n)++;
	return 0;
}

/* Adds the sealed segment files of a journal directory; ".open" files and
 * anything else are ignored.  The numeric order comes from sorting later. */
static int add_dir(struct seg_file **files, size_t *n, const char *dir)
{
	struct dirent *de;
	size_t before = *n;
	DIR *d = opendir(dir);

	if (!d) {
		log_error("%s: %m", dir);
		return -errno;
	}
	while ((de = readdir(d))) {
		uint64_t num;
		char *p;

		if (seg_parse_file_name(de->d_name, &num) < 0)
			continue;
		if (asprintf(&p, "%s/%s", dir, de->d_name) < 0 || add_file(files, n, p) < 0) {
			closedir(d);
			log_error("out of memory");
			return -ENOMEM;
		}
	}
	closedir(d);
	if (*n == before) {
		log_error("%s: no sealed segments (*%s) in this directory", dir, SEG_FILE_SUFFIX);
		return -ENOENT;
	}
	return 0;
}

/*
 * Checks that the validated segments form one run: one group, increasing
 * numbers, contiguous LSNs.  Logs the first problem.
 */
static int check_run(const struct seg_file *f, size_t n)
{
	const struct seg_header *h0 = seg_view_header(f[0].view);
	char u0[37], u1[37];

	for (size_t i = 1; i < n; i++) {
		const struct seg_header *h = seg_view_header(f[i].view);
		const struct seg_header *p = seg_view_header(f[i - 1].view);
		uint64_t prev_last = seg_view_last_lsn(f[i - 1].view);

		if (memcmp(h->group, h0->group, 16) != 0) {
			seg_uuid_format(h0->group, u0);
			seg_uuid_format(h->group, u1);
			log_error("%s belongs to group %s but %s to group %s: replay one group at a time",
				  f[i].path, u1, f[0].path, u0);
			return -EINVAL;
		}
		if (h->number == p->number) {
			log_error("segment %" PRIu64 " is given twice: %s and %s", h->number,
				  f[i - 1].path, f[i].path);
			return -EINVAL;
		}
		if (h->first_lsn != prev_last + 1) {
			log_error("%s starts at LSN %" PRIu64 " but %s ends at LSN %" PRIu64
				  " (expected %" PRIu64 "): %s",
				  f[i].path, h->first_lsn, f[i - 1].path, prev_last, prev_last + 1,
				  h->first_lsn > prev_last + 1 ? "segments are missing in between"
							      : "the segments overlap");
			return -EINVAL;
		}
	}
	return 0;
}

static int on_durable(void *ctx, const struct apply_progress *p)
{
	char tbuf[64];

	(void)ctx;
	log_debug("durable: segment %" PRIu64 ", LSN %" PRIu64 " (source time %s)", p->segment,
		  p->lsn, clock_iso8601(p->time_ns, 9, tbuf, sizeof tbuf));
	return 0;
}

/* With -v, what SYNC_BEGIN, SYNC_END and HASH records found; ctx is the
 * LSN of an unfinished resync's SYNC_BEGIN (0 if none). */
static int on_event(void *ctx, const struct apply_event *e)
{
	uint64_t *sync_lsn = ctx;

	switch (e->type) {
	case APPLY_EV_SYNC_BEGIN:
		log_debug("SYNC_BEGIN: segment %" PRIu64 ", LSN %" PRIu64 ": resync of destination %" PRIu32
			  " begins; the targets are not a consistent copy until it ends",
			  e->segment, e->lsn, e->dest);
		if (!*sync_lsn)
			*sync_lsn = e->lsn;
		break;
	case APPLY_EV_SYNC_END:
		log_debug("SYNC_END: segment %" PRIu64 ", LSN %" PRIu64 ": resync of destination %" PRIu32
			  " ends", e->segment, e->lsn, e->dest);
		*sync_lsn = 0;
		break;
	case APPLY_EV_MISMATCH:
		log_debug("HASH: segment %" PRIu64 ", LSN %" PRIu64 ": image %s differs at %" PRIu64 "+%" PRIu64,
			  e->segment, e->lsn, e->image, e->offset, e->length);
		break;
	}
	return 0;
}

static int cmd_replay(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "target-dir", required_argument, NULL, 't' },
		{ "map", required_argument, NULL, 'm' },
		{ "after-lsn", required_argument, NULL, 'a' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *target_dir = NULL;
	char **maps = NULL;
	size_t nmaps = 0, nfiles = 0;
	struct seg_file *files = NULL;
	struct applier *a = NULL;
	struct apply_stats st;
	uint64_t after = 0, sync_lsn = 0;
	char sbuf[32], err[1024], *end;
	int c, r, status = 1;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":t:m:vh", opts, NULL)) != -1) {
		switch (c) {
		case 't':
			if (target_dir) {
				status = usage_error("replay: --target-dir is given twice");
				goto out;
			}
			target_dir = optarg;
			break;
		case 'm': {
			const char *eq = strchr(optarg, '=');
			char **nm;

			if (!eq || eq == optarg || !eq[1]) {
				status = usage_error("replay: --map takes IMAGE=PATH, not \"%s\"", optarg);
				goto out;
			}
			nm = realloc(maps, (nmaps + 1) * sizeof *nm);
			if (!nm) {
				log_error("out of memory");
				goto out;
			}
			maps = nm;
			maps[nmaps++] = optarg;
			break;
		}
		case 'a':
			errno = 0;
			after = strtoull(optarg, &end, 10);
			if (errno || end == optarg || *end || optarg[0] == '-') {
				status = usage_error("replay: --after-lsn takes an LSN, not \"%s\"", optarg);
				goto out;
			}
			break;
		case 'v':
			log_set_level(LOG_LVL_DEBUG);
			break;
		case 'h':
			usage(stdout);
			status = 0;
			goto out;
		case ':':
			status = usage_error("replay: %s needs an argument", argv[optind - 1]);
			goto out;
		default:
			status = usage_error("replay: unknown option %s", argv[optind - 1]);
			goto out;
		}
	}
	if (!target_dir) {
		status = usage_error("replay: --target-dir DIR is required");
		goto out;
	}
	if (optind == argc) {
		status = usage_error("replay: give SEGMENT files or a JOURNAL_DIR");
		goto out;
	}

	/* 1. Collect and validate every segment before touching anything. */
	for (int i = optind; i < argc; i++) {
		struct stat sb;
		char *p;

		if (stat(argv[i], &sb) < 0) {
			log_error("%s: %m", argv[i]);
			goto out;
		}
		if (S_ISDIR(sb.st_mode)) {
			if (add_dir(&files, &nfiles, argv[i]) < 0)
				goto out;
			continue;
		}
		p = strdup(argv[i]);
		if (!p || add_file(&files, &nfiles, p) < 0) {
			log_error("out of memory");
			goto out;
		}
	}
	for (size_t i = 0; i < nfiles; i++) {
		struct seg_err e;

		r = seg_view_open(files[i].path, &files[i].view, &e);
		if (r < 0) {
			report_seg_err(files[i].path, r, &e);
			log_error("nothing was applied");
			goto out;
		}
	}
	qsort(files, nfiles, sizeof *files, by_number);
	if (check_run(files, nfiles) < 0) {
		log_error("nothing was applied");
		goto out;
	}

	/* 2. The target directory and the mappings must be usable too. */
	if (applier_new(target_dir, &a) < 0)
		goto out;
	for (size_t i = 0; i < nmaps; i++) {
		char *eq = strchr(maps[i], '=');

		*eq = '\0';
		r = applier_map(a, maps[i], eq + 1);
		*eq = '=';
		if (r < 0)
			goto out;
	}
	applier_set_durable_cb(a, on_durable, NULL);
	applier_set_event_cb(a, on_event, &sync_lsn);

	/* 3. Apply, in order. */
	for (size_t i = 0; i < nfiles; i++) {
		/* The applier skips records up to after, so segments wholly
		 * before it cost only their iteration. */
		r = applier_apply(a, files[i].view, after, err, sizeof err);
		if (r < 0) {
			applier_stats(a, &st);
			log_error("%s: %s", files[i].path, err);
			if (st.last_lsn > after)
				after = st.last_lsn;
			log_error("replay stopped in segment %" PRIu64 "; the targets are durable up to LSN %" PRIu64
				  ": once the cause is fixed, resume with --after-lsn %" PRIu64,
				  seg_view_header(files[i].view)->number, after, after);
			goto out;
		}
	}
	applier_stats(a, &st);
	printf("replayed %zu segment%s (LSN %" PRIu64 "..%" PRIu64 ") into %s: %" PRIu64
	       " records, %" PRIu64 " bytes written (%s), %" PRIu64 " bytes zeroed\n",
	       nfiles, nfiles == 1 ? "" : "s", seg_view_header(files[0].view)->first_lsn,
	       seg_view_last_lsn(files[nfiles - 1].view), target_dir, st.records, st.bytes_written,
	       format_size(st.bytes_written, sbuf, sizeof sbuf), st.bytes_zeroed);
	if (sync_lsn)
		log_warn("the segments end inside a resynchronisation (SYNC_BEGIN at LSN %" PRIu64
			 " has no SYNC_END): the targets are not a consistent copy", sync_lsn);
	status = 0;
out:
	applier_free(a);
	for (size_t i = 0; i < nfiles; i++) {
		seg_view_free(files[i].view);
		free(files[i].path);
	}
	free(files);
	free(maps);
	return status;
}

/* ---- resume ---- */

#define REMOTE_STATUS "127.0.0.1:9381" /* aim-remote's default --status */

struct reply {
	char text[1024];
	size_t len;
};

static size_t keep_reply(char *p, size_t size, size_t n, void *ctx)
{
	struct reply *r = ctx;
	size_t add = size * n, room = sizeof r->text - 1 - r->len;

	memcpy(r->text + r->len, p, add < room ? add : room);
	r->len += add < room ? add : room;
	r->text[r->len] = '\0';
	return add;
}

/* POST /resume[/GROUP] to aim-remote's status listener. */
static int cmd_resume(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "status", required_argument, NULL, 's' },
		{ NULL, 0, NULL, 0 },
	};
	const char *addr = REMOTE_STATUS, *group = NULL;
	char url[512], errbuf[CURL_ERROR_SIZE] = "";
	struct reply rep = { .len = 0 };
	json_t *o, *n;
	long code = 0;
	CURLcode cc;
	CURL *c;
	int ch;

	optind = 1;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (ch != 's')
			return usage_error("resume: unknown option %s", argv[optind - 1]);
		addr = optarg;
	}
	if (optind < argc - 1)
		return usage_error("resume: give at most one GROUP");
	if (optind == argc - 1)
		group = argv[optind];
	snprintf(url, sizeof url, "http://%s/resume%s%s", addr, group ? "/" : "",
		 group ? group : "");
	c = curl_easy_init();
	if (!c)
		return 1;
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, keep_reply);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &rep);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	cc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	curl_easy_cleanup(c);
	if (cc != CURLE_OK) {
		log_error("resume: %s: %s", url, errbuf[0] ? errbuf : curl_easy_strerror(cc));
		return 1;
	}
	o = json_loads(rep.text, 0, NULL);
	n = o ? json_object_get(o, "resumed") : NULL;
	if (code != 200 || !json_is_integer(n)) {
		json_t *e = o ? json_object_get(o, "error") : NULL;

		log_error("resume: aim-remote at %s answered %ld: %s", addr, code,
			  json_is_string(e) ? json_string_value(e) : rep.text);
		json_decref(o);
		return 1;
	}
	printf("%lld stopped group%s asked to resume\n", (long long)json_integer_value(n),
	       json_integer_value(n) == 1 ? "" : "s");
	json_decref(o);
	return 0;
}

/* ---- main ---- */

int main(int argc, char **argv)
{
	const char *name;

	log_init(argv[0]);
	if (argc < 2)
		return usage_error("no command given");
	name = argv[1];
	if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0)
		return cmd_help(0, NULL);
	if (strcmp(name, "--version") == 0 || strcmp(name, "-V") == 0) {
		printf("aimctl %s\n", AIM_VERSION);
		return 0;
	}
	for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
		if (strcmp(commands[i].name, name) == 0)
			return commands[i].fn(argc - 1, argv + 1);
	return usage_error("unknown command \"%s\"", name);
}
