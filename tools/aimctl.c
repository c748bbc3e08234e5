/*
 * aimctl.c — the operator's command-line tool.  One program, one table of
 * subcommands: `dump` lists a segment's header and records through the
 * shared decoder.  The others live in a file each: `replay` (cmd_replay.c)
 * applies segments offline with the very applier aim-remote uses, to their
 * end or until a point; `check` (cmd_check.c) replays onto a scratch copy of
 * a base and checks the images at every barrier; `restore` (cmd_restore.c)
 * rebuilds images at a point from an object store; `mark` and `marks`
 * (cmd_mark.c) make and list named points; `status` (cmd_status.c) reads a
 * daemon's /status for people; `ship` (cmd_ship.c) drains an unmounted
 * journal with the transport; `verify` (cmd_verify.c) compares live images
 * with every replica; `hold`, `release`, `promote` and `resume`
 * (cmd_failover.c) steer an aim-remote's groups for test failovers and
 * failovers.
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
static int cmd_help(int argc, char **argv);

static const struct command commands[] = {
	{ "dump", cmd_dump, "[--records=yes|no] SEGMENT",
	  "list a segment's header and records" },
	{ "replay", cmd_replay,
	  "--target-dir DIR [--map IMAGE=PATH]... [--after-lsn N] [--until LSN|TIME|MARK:NAME]\n"
	  "         [-v] SEGMENT... | JOURNAL_DIR",
	  "validate segments, then apply them in order onto DIR (as aim-remote does);\n"
	  "      --until stops right after that record (a TIME: at the last barrier by then),\n"
	  "      --after-lsn resumes a replay that stopped, -v shows each durable point" },
	{ "check", cmd_check,
	  "--base DIR [--fsck CMD] [--every N | --marks] [--from POINT] [--until POINT]\n"
	  "         [--image GLOB]... [--scratch DIR] [--save DIR] [--keep-scratch] [--json]\n"
	  "         SEGMENT... | JOURNAL_DIR",
	  "replay onto a scratch copy of DIR and check every image at every FLUSH and MARK\n"
	  "      (qemu-img check for qcow2, CMD with {} for the image's path for the others);\n"
	  "      one line per point with the images' hashes; exits 1 if any point fails" },
	{ "restore", cmd_restore,
	  "--from URL --until LSN|TIME|MARK:NAME --target-dir DIR [--group UUID]\n"
	  "         [--access-key-file F --secret-key-file F] [--region R] [--ca-file F]\n"
	  "         [--segments-dir DIR] [-v]",
	  "rebuild a group's images at a point from an object store (type = s3\n"
	  "      destination): the newest base that reaches it, then the segments after it;\n"
	  "      says which base and which last record it used" },
	{ "mark", cmd_mark, "[--status ADDR:PORT] NAME",
	  "ask a running aimfs to journal a MARK named NAME now; prints its LSN" },
	{ "marks", cmd_marks, "[--json] [--status ADDR:PORT | JOURNAL_DIR | SEGMENT...]",
	  "list the marks: a running aimfs's, a journal's catalog's, or those in segments" },
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
	{ "hold", cmd_hold,
	  "[--status ADDR:PORT] [--group GROUP] [--at LSN|TIME|MARK:NAME] [--timeout DURATION]",
	  "make a running aim-remote stop applying GROUP now (at the next barrier) or at the\n"
	  "      last barrier at or before a point; segments keep arriving and wait; waits\n"
	  "      until it is held and prints the recovery point (for a test failover)" },
	{ "release", cmd_release, "[--status ADDR:PORT] [--group GROUP]",
	  "let a held group apply again: it catches up with what waited" },
	{ "promote", cmd_promote,
	  "[--status ADDR:PORT] [--group GROUP] [--at LSN|TIME|MARK:NAME] [--force]\n"
	  "         [--timeout DURATION]",
	  "fail over: apply what arrived up to its last barrier (or the point), then stop\n"
	  "      the group for good (its segments are refused); prints the recovery point;\n"
	  "      refuses a copy in the middle of a resync unless --force" },
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

int usage_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(LOG_LVL_ERROR, fmt, ap);
	va_end(ap);
	/* The one line that says what is wrong stays in sight. */
	fprintf(stderr, "Try 'aimctl help' for usage.\n");
	return EXIT_USAGE;
}

static int cmd_help(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	usage(stdout);
	return 0;
}

/* The byte offset only for format problems, where it locates the damage. */
void report_seg_err(const char *path, int r, const struct seg_err *e)
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

/* ---- main ---- */

int main(int argc, char **argv)
{
	const char *name;

	log_init(argv[0]);
	if (argc < 2) {
		log_error("no command given");
		usage(stderr);
		return EXIT_USAGE;
	}
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
