/*
 * dest.c — a destination's configuration: parsing its keys, checking it
 * before anything starts (an unreadable CA or a bad URL refuses the mount
 * rather than failing later on the WAN), and its image patterns.
 */
#include "transport.h"
#include "log.h"
#include "parse.h"
#include "s3.h"

#include <ctype.h>
#include <errno.h>
#include <fnmatch.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define TOKEN_MAX 4096

static int set_str(char **field, const char *value)
{
	char *v = strdup(value);

	if (!v)
		return -ENOMEM;
	free(*field);
	*field = v;
	return 0;
}

static int set_images(struct dest_config *d, const char *value)
{
	char *copy = strdup(value), *save = NULL, *tok;
	int r = 0;

	if (!copy)
		return -ENOMEM;
	for (tok = strtok_r(copy, " \t,", &save); tok && !r; tok = strtok_r(NULL, " \t,", &save)) {
		char **ni = realloc(d->images, (d->nimages + 1) * sizeof *ni);

		if (!ni) {
			r = -ENOMEM;
			break;
		}
		d->images = ni;
		d->images[d->nimages] = strdup(tok);
		if (!d->images[d->nimages])
			r = -ENOMEM;
		else
			d->nimages++;
	}
	free(copy);
	return r;
}

/* keep = 7d | 1000 segments | all */
static int set_keep(struct dest_config *d, const char *value)
{
	uint64_t n;
	char *end;

	d->keep_ns = d->keep_segments = 0;
	if (strcmp(value, "all") == 0)
		return 0;
	if (parse_duration(value, &d->keep_ns) == 0 && d->keep_ns)
		return 0;
	errno = 0;
	n = isdigit((unsigned char)value[0]) ? strtoull(value, &end, 10) : 0;
	while (n && (*end == ' ' || *end == '\t'))
		end++;
	if (!errno && n > 0 && strcmp(end, "segments") == 0) {
		d->keep_segments = n;
		return 0;
	}
	log_error("destination %s: keep = %s: expected a duration (7d, 12h) or a count (1000"
		  " segments), or all", d->name, value);
	return -EINVAL;
}

/* The keys only an object-store destination takes. */
static int set_s3_key(struct dest_config *d, const char *key, const char *value)
{
	if (strcmp(key, "region") == 0)
		return set_str(&d->region, value);
	if (strcmp(key, "access_key_file") == 0)
		return set_str(&d->access_key_file, value);
	if (strcmp(key, "secret_key_file") == 0)
		return set_str(&d->secret_key_file, value);
	if (strcmp(key, "keep") == 0)
		return set_keep(d, value);
	if (strcmp(key, "multipart_size") == 0) {
		if (parse_size(value, &d->multipart_size) < 0 || d->multipart_size < S3_MIN_PART) {
			log_error("destination %s: multipart_size = %s: expected a size of at least 5M",
				  d->name, value);
			return -EINVAL;
		}
		return 0;
	}
	if (strcmp(key, "snapshot_every") == 0) {
		if (parse_duration(value, &d->snapshot_every_ns) < 0) {
			log_error("destination %s: snapshot_every = %s: expected a duration, e.g. 1d",
				  d->name, value);
			return -EINVAL;
		}
		return 0;
	}
	return 1;
}

int dest_config_set(struct dest_config *d, const char *key, const char *value)
{
	int r;

	if (strcmp(key, "type") == 0) {
		if (strcmp(value, "s3") == 0) {
			d->type = DEST_TYPE_S3;
		} else if (strcmp(value, "https") == 0 || strcmp(value, "http") == 0) {
			d->type = DEST_TYPE_HTTPS;
		} else {
			log_error("destination %s: type = %s: expected https or s3", d->name, value);
			return -EINVAL;
		}
		return 0;
	}
	r = set_s3_key(d, key, value);
	if (r <= 0)
		return r;
	if (strcmp(key, "url") == 0)
		return set_str(&d->url, value);
	if (strcmp(key, "ca_file") == 0)
		return set_str(&d->ca_file, value);
	if (strcmp(key, "cert_file") == 0)
		return set_str(&d->cert_file, value);
	if (strcmp(key, "key_file") == 0)
		return set_str(&d->key_file, value);
	if (strcmp(key, "pin") == 0)
		return set_str(&d->pin, value);
	if (strcmp(key, "token_file") == 0)
		return set_str(&d->token_file, value);
	if (strcmp(key, "images") == 0)
		return set_images(d, value);
	if (strcmp(key, "rate") == 0) {
		if (parse_size(value, &d->rate) < 0) {
			log_error("destination %s: rate = %s: expected bytes per second, e.g. 50M",
				  d->name, value);
			return -EINVAL;
		}
		return 0;
	}
	if (strcmp(key, "connect_timeout") == 0) {
		uint64_t ns;

		if (parse_duration(value, &ns) < 0 || ns < 1000000 ||
		    ns > 3600ULL * 1000000000ULL) {
			log_error("destination %s: connect_timeout = %s: expected a duration"
				  " from 1ms to 1h, e.g. 5s", d->name, value);
			return -EINVAL;
		}
		d->connect_timeout_ns = ns;
		return 0;
	}
	if (strcmp(key, "compress") == 0) {
		if (strcmp(value, "zstd") == 0) {
			d->compress = true;
		} else if (strcmp(value, "off") == 0 || strcmp(value, "none") == 0) {
			d->compress = false;
		} else {
			log_error("destination %s: compress = %s: expected zstd or off", d->name, value);
			return -EINVAL;
		}
		return 0;
	}
	log_error("destination %s: unknown key \"%s\" (known: type, url, ca_file, cert_file,"
		  " key_file, pin, token_file, images, rate, connect_timeout, compress, region,"
		  " access_key_file, secret_key_file, multipart_size, keep, snapshot_every)",
		  d->name, key);
	return -EINVAL;
}

static int check_readable(const struct dest_config *d, const char *what, const char *path)
{
	if (path && access(path, R_OK) < 0) {
		log_error("destination %s: %s %s: %m", d->name, what, path);
		return -EIO;
	}
	return 0;
}

static int check_url(const struct dest_config *d)
{
	const char *u = d->url, *host;

	if (!u || !*u) {
		log_error("destination %s: no url", d->name);
		return -EINVAL;
	}
	if (strncmp(u, "https://", 8) == 0)
		host = u + 8;
	else if (strncmp(u, "http://", 7) == 0)
		host = u + 7;
	else {
		log_error("destination %s: url %s: must start with https:// (or http:// for a"
			  " trusted network)", d->name, u);
		return -EINVAL;
	}
	if (!*host || *host == '/' || *host == ':') {
		log_error("destination %s: url %s has no host", d->name, u);
		return -EINVAL;
	}
	for (const char *p = u; *p; p++) {
		if (isspace((unsigned char)*p) || *p == '?' || *p == '#' || (unsigned char)*p < 0x20) {
			log_error("destination %s: url %s: no spaces, query or fragment allowed",
				  d->name, u);
			return -EINVAL;
		}
	}
	return 0;
}

static int load_token(struct dest_config *d)
{
	char *token = NULL;
	int r;

	if (!d->token_file)
		return 0;
	r = parse_secret_file(d->token_file, TOKEN_MAX, &token);
	if (r == -EINVAL)
		log_error("destination %s: token_file %s must hold one line of 1..%d characters",
			  d->name, d->token_file, TOKEN_MAX);
	else if (r < 0 && r != -ENOMEM)
		log_error("destination %s: token_file %s: %s", d->name, d->token_file,
			  strerror(-r));
	if (r < 0)
		return r == -ENOMEM || r == -EINVAL ? r : -EIO;
	free(d->token);
	d->token = token;
	return 0;
}

/* An object store: its URL names a bucket, its keys load, and the keys of
 * the other type are not given by mistake. */
static int check_s3(struct dest_config *d)
{
	struct s3_url u;
	char why[300];

	if (d->token_file) {
		log_error("destination %s: token_file is for https destinations; an s3 destination"
			  " signs its requests with access_key_file and secret_key_file", d->name);
		return -EINVAL;
	}
	if (s3_url_parse(d->url, &u, why, sizeof why) < 0) {
		log_error("destination %s: url %s %s", d->name, d->url, why);
		return -EINVAL;
	}
	s3_url_free(&u);
	if (check_readable(d, "access_key_file", d->access_key_file) < 0 ||
	    check_readable(d, "secret_key_file", d->secret_key_file) < 0)
		return -EIO;
	free(d->access_key);
	free(d->secret_key);
	if (s3_keys_load(d->access_key_file, d->secret_key_file, &d->access_key, &d->secret_key,
			 why, sizeof why) < 0) {
		log_error("destination %s: %s", d->name, why);
		return -EINVAL;
	}
	return 0;
}

/* The length of url without its trailing slashes. */
static size_t url_len(const char *url)
{
	size_t n = strlen(url);

	while (n && url[n - 1] == '/')
		n--;
	return n;
}

/* Whether two URLs name one place: scheme and host in any case, the path
 * as it is, trailing slashes aside. */
static bool same_place(const char *a, const char *b)
{
	size_t la = url_len(a), lb = url_len(b), host;
	const char *sep = strstr(a, "://");

	if (la != lb)
		return false;
	host = sep ? (size_t)(sep - a) + 3 : 0;
	while (host < la && a[host] != '/')
		host++;
	return strncasecmp(a, b, host) == 0 && strncmp(a + host, b + host, la - host) == 0;
}

int dest_configs_distinct(const struct dest_config *d, size_t n)
{
	for (size_t i = 0; i < n; i++)
		for (size_t j = i + 1; j < n; j++) {
			size_t li = url_len(d[i].url);

			if (same_place(d[i].url, d[j].url)) {
				log_error("destinations %s and %s both send to %.*s: their streams"
					  " would overwrite each other there; give each its own"
					  " URL (another path or prefix)", d[i].name, d[j].name,
					  (int)li, d[i].url);
				return -EINVAL;
			}
		}
	return 0;
}

int dest_config_check(struct dest_config *d)
{
	size_t n;

	if (d->type != DEST_TYPE_S3 &&
	    (d->region || d->access_key_file || d->secret_key_file || d->multipart_size ||
	     d->keep_ns || d->keep_segments || d->snapshot_every_ns)) {
		log_error("destination %s: region, access_key_file, secret_key_file, multipart_size,"
			  " keep and snapshot_every are for object stores (type = s3)", d->name);
		return -EINVAL;
	}
	if (check_url(d) < 0)
		return -EINVAL;
	n = strlen(d->url);
	while (n > 8 && d->url[n - 1] == '/')
		d->url[--n] = '\0';
	if (check_readable(d, "ca_file", d->ca_file) < 0 ||
	    check_readable(d, "cert_file", d->cert_file) < 0 ||
	    check_readable(d, "key_file", d->key_file) < 0)
		return -EIO;
	if (d->key_file && !d->cert_file) {
		log_error("destination %s: key_file needs cert_file", d->name);
		return -EINVAL;
	}
	if (d->pin && strncmp(d->pin, "sha256//", 8) != 0) {
		log_error("destination %s: pin %s: expected sha256//<base64 of the public key hash>",
			  d->name, d->pin);
		return -EINVAL;
	}
	if (d->type == DEST_TYPE_S3)
		return check_s3(d);
	return load_token(d);
}

void dest_config_free(struct dest_config *d)
{
	if (!d)
		return;
	free(d->name);
	free(d->url);
	free(d->ca_file);
	free(d->cert_file);
	free(d->key_file);
	free(d->pin);
	free(d->token_file);
	if (d->token)
		memset(d->token, 0, strlen(d->token));
	free(d->token);
	for (size_t i = 0; i < d->nimages; i++)
		free(d->images[i]);
	free(d->images);
	free(d->region);
	free(d->access_key_file);
	free(d->secret_key_file);
	if (d->access_key)
		memset(d->access_key, 0, strlen(d->access_key));
	free(d->access_key);
	if (d->secret_key)
		memset(d->secret_key, 0, strlen(d->secret_key));
	free(d->secret_key);
	memset(d, 0, sizeof *d);
}

long dest_connect_timeout_ms(const struct dest_config *d)
{
	uint64_t ns = d->connect_timeout_ns ? d->connect_timeout_ns : DEST_CONNECT_TIMEOUT_DEFAULT;

	return (long)(ns / 1000000);
}

bool dest_wants_image(const struct dest_config *d, const char *name)
{
	const char *base = strrchr(name, '/');

	if (d->nimages == 0)
		return true;
	base = base ? base + 1 : name;
	for (size_t i = 0; i < d->nimages; i++) {
		/* A pattern without '/' matches the file name in any directory. */
		const char *subject = strchr(d->images[i], '/') ? name : base;

		if (fnmatch(d->images[i], subject, FNM_PATHNAME) == 0)
			return true;
	}
	return false;
}

struct dest_config *dest_config_find(struct dest_config **dests, size_t *n, const char *name,
				     bool create)
{
	struct dest_config *nd;

	for (size_t i = 0; i < *n; i++)
		if (strcmp((*dests)[i].name, name) == 0)
			return &(*dests)[i];
	if (!create)
		return NULL;
	nd = realloc(*dests, (*n + 1) * sizeof *nd);
	if (!nd)
		return NULL;
	*dests = nd;
	memset(&nd[*n], 0, sizeof *nd);
	nd[*n].name = strdup(name);
	return nd[*n].name ? &nd[(*n)++] : NULL;
}

struct ini_state {
	const char *path;
	int (*other)(void *ctx, const char *section, const char *key, const char *value);
	void *ctx;
	struct dest_config **dests;
	size_t *ndests;
	int errors;
	char **seen;     /* "section\nkey" of each key given, and "section\n" of */
	size_t nseen;    /* each section once it ended (noted) */
	char *section;   /* the section of the last key */
};

/* Keys a section may give more than once: each adds to a list. */
static bool repeatable(const char *section, const char *key)
{
	return (strcmp(section, "aimfs") == 0 && strcmp(key, "dest") == 0) ||
	       (strncmp(section, "destination ", 12) == 0 && strcmp(key, "images") == 0);
}

/*
 * Whether "section\nkey" was noted before (1), else 0, noting it if add;
 * key NULL stands for the section itself, once it ended.  -1 when out of
 * memory.
 */
static int noted(struct ini_state *st, const char *section, const char *key, bool add)
{
	char *entry, **ns;

	if (asprintf(&entry, "%s\n%s", section, key ? key : "") < 0)
		return -1;
	for (size_t i = 0; i < st->nseen; i++) {
		if (strcmp(st->seen[i], entry) == 0) {
			free(entry);
			return 1;
		}
	}
	if (!add) {
		free(entry);
		return 0;
	}
	ns = realloc(st->seen, (st->nseen + 1) * sizeof *ns);
	if (!ns) {
		free(entry);
		return -1;
	}
	st->seen = ns;
	st->seen[st->nseen++] = entry;
	return 0;
}

/*
 * A key given twice in a section, or a section that appears twice, is an
 * error rather than a silent choice of one value (which the two kinds of
 * section made differently).  -1 (logged) if so.
 */
static int once(struct ini_state *st, const char *section, const char *key)
{
	int r;

	if (!st->section || strcmp(st->section, section) != 0) {
		/* the section that ended may not begin again */
		if (st->section && noted(st, st->section, NULL, true) < 0)
			return -1;
		r = noted(st, section, NULL, false);
		if (r) {
			if (r > 0)
				log_error("config %s: section [%s] appears twice; give each key once,"
					  " in one [%s]", st->path, section, section);
			return -1;
		}
		free(st->section);
		st->section = strdup(section);
		if (!st->section)
			return -1;
	}
	if (repeatable(section, key))
		return 0;
	r = noted(st, section, key, true);
	if (r > 0)
		log_error("config %s: [%s] gives %s twice (a value indented under a key continues"
			  " it as another line)", st->path, section, key);
	return r ? -1 : 0;
}

static int ini_line(void *user, const char *section, const char *key, const char *value)
{
	struct ini_state *st = user;
	struct dest_config *d;

	if (once(st, section, key) < 0) {
		st->errors++;
		return 1;
	}
	if (parse_has_inline_comment(value)) {
		log_error("config %s: [%s] %s = \"%s\": a '#' after a value is part of the value;"
			  " put the comment on a line of its own", st->path, section, key, value);
		st->errors++;
		return 1;
	}
	if (strncmp(section, "destination ", 12) == 0 && section[12]) {
		d = dest_config_find(st->dests, st->ndests, section + 12, true);
		if (!d || dest_config_set(d, key, value) < 0)
			st->errors++;
		return 1;
	}
	if (st->other) {
		if (st->other(st->ctx, section, key, value) < 0)
			st->errors++;
		return 1;
	}
	log_error("config %s: unknown section [%s] (expected [destination NAME])", st->path,
		  section);
	st->errors++;
	return 1;
}

int dest_config_load(const char *path,
		     int (*other)(void *ctx, const char *section, const char *key, const char *value),
		     void *ctx, struct dest_config **dests, size_t *ndests)
{
	struct ini_state st = { .path = path, .other = other, .ctx = ctx, .dests = dests,
				.ndests = ndests };
	int r = ini_parse(path, ini_line, &st);

	for (size_t i = 0; i < st.nseen; i++)
		free(st.seen[i]);
	free(st.seen);
	free(st.section);
	if (r == -1) {
		log_error("config %s: %m", path);
		return -1;
	}
	if (r > 0 && !st.errors) {
		log_error("config %s: line %d is not \"key = value\" or \"[section]\"", path, r);
		return -1;
	}
	return st.errors ? -1 : 0;
}
