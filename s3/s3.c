/*
 * s3.c — S3 requests over libcurl with its own SigV4 signing (s3.h).
 *
 * One easy handle per struct s3, reset before each request (which keeps
 * its connections and TLS sessions) and set up again by prepare().  Every
 * request carries x-amz-content-sha256: the SHA-256 of its body (GnuTLS's
 * digest), or of nothing.  libcurl signs the headers we give it, with the
 * query string exactly as written in the URL, so query() writes it as a
 * canonical request must read: parameters sorted, each name=value.
 *
 * The store's answer is converted once, in finish(): the HTTP status, the
 * error code and message from an XML error body, and one line for the
 * operator in reply.error.
 */
#include "s3.h"
#include "log.h"
#include "parse.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <gnutls/crypto.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zstd.h>

#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define ERRBODY_MAX 4096   /* an error body kept for its code and message */
#define KEY_FILE_MAX 4096

struct s3 {
	CURL *c;
	char *url;         /* as given */
	char *base;        /* "http(s)://host[:port]/bucket" */
	char *bucket, *prefix;
	char *region, *access_key, *secret_key;
	char *ca_file, *cert_file, *key_file, *pin;
	char provider[96]; /* "aws:amz:REGION:s3" */
	uint64_t rate, multipart, single_max;
	long connect_timeout_ms;
	char errbuf[CURL_ERROR_SIZE];
};

/* ---- small helpers ---- */

static char *dup_or_null(const char *s, bool *fail)
{
	char *d;

	if (!s)
		return NULL;
	d = strdup(s);
	if (!d)
		*fail = true;
	return d;
}

void s3_sha256_hex(const void *data, size_t len, char out[65])
{
	static const char hex[] = "0123456789abcdef";
	uint8_t d[32];

	gnutls_hash_fast(GNUTLS_DIG_SHA256, data, len, d);
	for (int i = 0; i < 32; i++) {
		out[2 * i] = hex[d[i] >> 4];
		out[2 * i + 1] = hex[d[i] & 15];
	}
	out[64] = '\0';
}

static bool unreserved(unsigned char c)
{
	return isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

/* Percent-encodes s (keeping '/' when slash) into out. */
static int encode(const char *s, bool slash, char *out, size_t outlen)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;

	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (unreserved(*p) || (slash && *p == '/')) {
			if (o + 1 >= outlen)
				return -ENAMETOOLONG;
			out[o++] = (char)*p;
		} else {
			if (o + 3 >= outlen)
				return -ENAMETOOLONG;
			out[o++] = '%';
			out[o++] = hex[*p >> 4];
			out[o++] = hex[*p & 15];
		}
	}
	out[o] = '\0';
	return 0;
}

int s3_key_encode(const char *key, char *out, size_t outlen)
{
	return encode(key, true, out, outlen);
}

/* ---- URL and keys ---- */

static bool valid_bucket(const char *b, size_t n)
{
	if (n < 3 || n > 63)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!(islower((unsigned char)b[i]) || isdigit((unsigned char)b[i]) || b[i] == '-' ||
		      b[i] == '.' || b[i] == '_' || isupper((unsigned char)b[i])))
			return false;
	return true;
}

int s3_url_parse(const char *url, struct s3_url *out, char *why, size_t whylen)
{
	const char *host, *slash, *b, *be, *p;
	size_t n;

	memset(out, 0, sizeof *out);
	if (!url || (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0)) {
		snprintf(why, whylen, "must start with https:// (or http:// for a trusted network)");
		return -EINVAL;
	}
	for (p = url; *p; p++)
		if (isspace((unsigned char)*p) || *p == '?' || *p == '#' || (unsigned char)*p < 0x20 ||
		    *p == '%') {
			snprintf(why, whylen, "no spaces, '%%', query or fragment allowed");
			return -EINVAL;
		}
	host = url + (url[4] == 's' ? 8 : 7);
	slash = strchr(host, '/');
	if (host == slash || !*host || *host == ':') {
		snprintf(why, whylen, "has no host");
		return -EINVAL;
	}
	if (!slash) {
		snprintf(why, whylen, "names no bucket (http(s)://ENDPOINT/BUCKET[/PREFIX])");
		return -EINVAL;
	}
	b = slash + 1;
	be = strchr(b, '/');
	n = be ? (size_t)(be - b) : strlen(b);
	if (!valid_bucket(b, n)) {
		snprintf(why, whylen, "bucket \"%.*s\" is not a valid bucket name (3 to 63 of"
			 " a-z, 0-9, '-', '.')", (int)(n > 64 ? 64 : n), b);
		return -EINVAL;
	}
	out->endpoint = strndup(url, (size_t)(slash - url));
	out->bucket = strndup(b, n);
	p = be ? be : b + n;
	while (*p == '/')
		p++;
	out->prefix = strdup(p);
	if (!out->endpoint || !out->bucket || !out->prefix) {
		s3_url_free(out);
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	n = strlen(out->prefix);
	while (n && out->prefix[n - 1] == '/')
		out->prefix[--n] = '\0';
	if (strstr(out->prefix, "//") || strlen(out->prefix) > 512) {
		snprintf(why, whylen, "prefix \"%s\" has an empty component or is too long",
			 out->prefix);
		s3_url_free(out);
		return -EINVAL;
	}
	return 0;
}

void s3_url_free(struct s3_url *u)
{
	free(u->endpoint);
	free(u->bucket);
	free(u->prefix);
	memset(u, 0, sizeof *u);
}

/* One line of 1..KEY_FILE_MAX printable characters from path. */
static int read_key_file(const char *what, const char *path, char **out, char *why,
			 size_t whylen)
{
	int r = parse_secret_file(path, KEY_FILE_MAX, out);

	if (r == -EINVAL)
		snprintf(why, whylen, "%s %s must hold one line of 1..%d characters", what, path,
			 KEY_FILE_MAX);
	else if (r < 0 && r != -ENOMEM)
		snprintf(why, whylen, "%s %s: %s", what, path, strerror(-r));
	return r == -ENOMEM ? r : r < 0 ? -EINVAL : 0;
}

int s3_keys_load(const char *access_key_file, const char *secret_key_file, char **access_key,
		 char **secret_key, char *why, size_t whylen)
{
	const char *ea = getenv("AWS_ACCESS_KEY_ID"), *es = getenv("AWS_SECRET_ACCESS_KEY");
	int r;

	*access_key = *secret_key = NULL;
	if (access_key_file)
		r = read_key_file("access_key_file", access_key_file, access_key, why, whylen);
	else if (ea && *ea)
		r = (*access_key = strdup(ea)) ? 0 : -ENOMEM;
	else {
		snprintf(why, whylen, "no access key: give access_key_file or set AWS_ACCESS_KEY_ID");
		r = -EINVAL;
	}
	if (r < 0)
		return r;
	if (secret_key_file)
		r = read_key_file("secret_key_file", secret_key_file, secret_key, why, whylen);
	else if (es && *es)
		r = (*secret_key = strdup(es)) ? 0 : -ENOMEM;
	else {
		snprintf(why, whylen, "no secret key: give secret_key_file or set"
			 " AWS_SECRET_ACCESS_KEY");
		r = -EINVAL;
	}
	if (r < 0) {
		free(*access_key);
		*access_key = NULL;
	}
	return r;
}

/* ---- the client ---- */

int s3_new(const struct s3_options *o, struct s3 **out, char *why, size_t whylen)
{
	struct s3 *s = calloc(1, sizeof *s);
	struct s3_url u;
	bool fail = false;
	int r;

	if (!s)
		return -ENOMEM;
	r = s3_url_parse(o->url, &u, why, whylen);
	if (r < 0) {
		free(s);
		return r;
	}
	if (asprintf(&s->base, "%s/%s", u.endpoint, u.bucket) < 0)
		s->base = NULL;
	s->bucket = u.bucket;
	s->prefix = u.prefix;
	free(u.endpoint);
	s->url = dup_or_null(o->url, &fail);
	s->region = dup_or_null(o->region ? o->region : S3_DEFAULT_REGION, &fail);
	s->access_key = dup_or_null(o->access_key, &fail);
	s->secret_key = dup_or_null(o->secret_key, &fail);
	s->ca_file = dup_or_null(o->ca_file, &fail);
	s->cert_file = dup_or_null(o->cert_file, &fail);
	s->key_file = dup_or_null(o->key_file, &fail);
	s->pin = dup_or_null(o->pin, &fail);
	s->rate = o->rate;
	s->connect_timeout_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms :
				S3_DEFAULT_CONNECT_TIMEOUT_MS;
	s->multipart = o->multipart_size ? o->multipart_size : S3_DEFAULT_MULTIPART;
	if (s->multipart < S3_MIN_PART)
		s->multipart = S3_MIN_PART;
	s->single_max = o->single_max > s->multipart ? o->single_max : s->multipart;
	s->c = curl_easy_init();
	if (fail || !s->base || !s->c || !s->access_key || !s->secret_key) {
		snprintf(why, whylen, !s->access_key || !s->secret_key ? "no access or secret key"
									: "out of memory");
		s3_free(s);
		return -ENOMEM;
	}
	snprintf(s->provider, sizeof s->provider, "aws:amz:%s:s3", s->region);
	*out = s;
	return 0;
}

static void wipe(char *p)
{
	if (p)
		memset(p, 0, strlen(p));
	free(p);
}

void s3_free(struct s3 *s)
{
	if (!s)
		return;
	if (s->c)
		curl_easy_cleanup(s->c);
	free(s->url);
	free(s->base);
	free(s->bucket);
	free(s->prefix);
	free(s->region);
	wipe(s->access_key);
	wipe(s->secret_key);
	free(s->ca_file);
	free(s->cert_file);
	free(s->key_file);
	free(s->pin);
	free(s);
}

const char *s3_prefix(const struct s3 *s)
{
	return s->prefix;
}

const char *s3_url(const struct s3 *s)
{
	return s->url;
}

/* ---- one request ---- */

struct xfer {
	/* the body we send */
	const uint8_t *out;
	size_t out_len, out_pos;
	/* the body we receive: a 2xx body goes to the sink when there is
	 * one; anything else is kept, up to in_max bytes */
	s3_sink_fn sink;
	void *sink_ctx;
	bool sink_failed;
	long status;          /* of the response being received */
	char *in;
	size_t in_len, in_max;
	struct s3_reply *rep;
};

static size_t read_cb(char *buf, size_t size, size_t nitems, void *ctx)
{
	struct xfer *x = ctx;
	size_t n = size * nitems;

	if (n > x->out_len - x->out_pos)
		n = x->out_len - x->out_pos;
	memcpy(buf, x->out + x->out_pos, n);
	x->out_pos += n;
	return n;
}

static int seek_cb(void *ctx, curl_off_t off, int origin)
{
	struct xfer *x = ctx;

	if (origin != SEEK_SET || off < 0 || (size_t)off > x->out_len)
		return CURL_SEEKFUNC_CANTSEEK;
	x->out_pos = (size_t)off;
	return CURL_SEEKFUNC_OK;
}

static size_t write_cb(char *p, size_t size, size_t nmemb, void *ctx)
{
	struct xfer *x = ctx;
	size_t n = size * nmemb, k = n;
	char *nb;

	if (x->sink && x->status >= 200 && x->status < 300) {
		if (x->sink(x->sink_ctx, p, n) < 0) {
			x->sink_failed = true;
			return 0;
		}
		return n;
	}
	if (x->in_len >= x->in_max)
		return n; /* the rest of a long error body: its start says enough */
	if (k > x->in_max - x->in_len)
		k = x->in_max - x->in_len;
	nb = realloc(x->in, x->in_len + k + 1);
	if (!nb)
		return 0;
	memcpy(nb + x->in_len, p, k);
	x->in = nb;
	x->in_len += k;
	x->in[x->in_len] = '\0';
	return n;
}

/* Copies a header's value (trimmed) if line is "name: value". */
static bool header_value(const char *line, size_t n, const char *name, char *out, size_t outlen)
{
	size_t nl = strlen(name), v;

	if (n <= nl || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
		return false;
	line += nl + 1;
	n -= nl + 1;
	while (n && (*line == ' ' || *line == '\t')) {
		line++;
		n--;
	}
	while (n && (line[n - 1] == '\r' || line[n - 1] == '\n' || line[n - 1] == ' '))
		n--;
	v = n < outlen - 1 ? n : outlen - 1;
	memcpy(out, line, v);
	out[v] = '\0';
	return true;
}

static size_t header_cb(char *buf, size_t size, size_t nitems, void *ctx)
{
	struct xfer *x = ctx;
	size_t n = size * nitems;
	char len[32];

	if (n > 9 && strncmp(buf, "HTTP/", 5) == 0) {
		/* a new response (after 100 Continue): forget the last one's */
		const char *sp = memchr(buf, ' ', n);

		x->status = sp ? strtol(sp + 1, NULL, 10) : 0;
		x->rep->etag[0] = x->rep->encoding[0] = '\0';
		x->rep->length = 0;
		return n;
	}
	header_value(buf, n, "ETag", x->rep->etag, sizeof x->rep->etag);
	header_value(buf, n, "x-amz-meta-" S3_META_ENCODING, x->rep->encoding,
		     sizeof x->rep->encoding);
	if (header_value(buf, n, "Content-Length", len, sizeof len))
		x->rep->length = strtoull(len, NULL, 10);
	return n;
}

/* The text of <tag>...</tag> in xml (entities decoded), or false. */
static bool xml_text(const char *xml, const char *tag, char *out, size_t outlen,
		     const char **after)
{
	char open[80], close[80];
	const char *a, *b;
	size_t o = 0;

	snprintf(open, sizeof open, "<%s>", tag);
	snprintf(close, sizeof close, "</%s>", tag);
	if (!xml || !(a = strstr(xml, open)))
		return false;
	a += strlen(open);
	if (!(b = strstr(a, close)))
		return false;
	while (a < b && o + 1 < outlen) {
		static const struct { const char *ent; char c; } ents[] = {
			{ "&amp;", '&' }, { "&lt;", '<' }, { "&gt;", '>' }, { "&quot;", '"' },
			{ "&apos;", '\'' },
		};
		bool done = false;

		for (size_t i = 0; i < sizeof ents / sizeof ents[0] && !done; i++) {
			size_t l = strlen(ents[i].ent);

			if ((size_t)(b - a) >= l && strncmp(a, ents[i].ent, l) == 0) {
				out[o++] = ents[i].c;
				a += l;
				done = true;
			}
		}
		if (!done)
			out[o++] = *a++;
	}
	out[o] = '\0';
	if (after)
		*after = b + strlen(close);
	return true;
}

/* Sets the options every request has; headers get x-amz-content-sha256. */
static void prepare(struct s3 *s, const char *url, struct curl_slist **headers,
		    const char *sha256, struct xfer *x)
{
	char h[128];
	CURL *c = s->c;

	curl_easy_reset(c);
	s->errbuf[0] = '\0';
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, s->errbuf);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, s->connect_timeout_ms);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
	curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https,http");
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	if (s->ca_file)
		curl_easy_setopt(c, CURLOPT_CAINFO, s->ca_file);
	if (s->cert_file)
		curl_easy_setopt(c, CURLOPT_SSLCERT, s->cert_file);
	if (s->key_file)
		curl_easy_setopt(c, CURLOPT_SSLKEY, s->key_file);
	if (s->pin)
		curl_easy_setopt(c, CURLOPT_PINNEDPUBLICKEY, s->pin);
	curl_easy_setopt(c, CURLOPT_AWS_SIGV4, s->provider);
	curl_easy_setopt(c, CURLOPT_USERNAME, s->access_key);
	curl_easy_setopt(c, CURLOPT_PASSWORD, s->secret_key);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, x);
	snprintf(h, sizeof h, "x-amz-content-sha256: %s", sha256 ? sha256 : EMPTY_SHA256);
	*headers = curl_slist_append(*headers, h);
}

/* Runs the request; converts its outcome into rep and a return value:
 * 0 for 2xx, 1 for 304, -ENOENT for 404, -EIO otherwise. */
static int finish(struct s3 *s, struct xfer *x, struct curl_slist *headers, const char *method,
		  const char *key)
{
	struct s3_reply *rep = x->rep;
	char msg[200] = "";
	CURLcode cc;

	curl_easy_setopt(s->c, CURLOPT_HTTPHEADER, headers);
	cc = curl_easy_perform(s->c);
	curl_slist_free_all(headers);
	rep->status = 0;
	curl_easy_getinfo(s->c, CURLINFO_RESPONSE_CODE, &rep->status);
	if (x->sink_failed) {
		snprintf(rep->error, sizeof rep->error, "%s %s: the answer could not be kept (too"
			 " large, or no room)", method, key);
		return -EIO;
	}
	if (cc != CURLE_OK) {
		rep->status = 0;
		snprintf(rep->error, sizeof rep->error, "%s %s: %s", method, key,
			 s->errbuf[0] ? s->errbuf : curl_easy_strerror(cc));
		return -EIO;
	}
	if (rep->status >= 200 && rep->status < 300) {
		/* CompleteMultipartUpload may answer 200 with an error inside */
		if (x->in && strstr(x->in, "<Error>") && xml_text(x->in, "Code", rep->code,
								   sizeof rep->code, NULL)) {
			xml_text(x->in, "Message", msg, sizeof msg, NULL);
			snprintf(rep->error, sizeof rep->error, "%s %s: %s%s%s", method, key,
				 rep->code, msg[0] ? ": " : "", msg);
			return -EIO;
		}
		return 0;
	}
	if (rep->status == 304)
		return 1;
	if (x->in)
		xml_text(x->in, "Code", rep->code, sizeof rep->code, NULL);
	if (x->in)
		xml_text(x->in, "Message", msg, sizeof msg, NULL);
	snprintf(rep->error, sizeof rep->error, "HTTP %ld %s from %s (%s %s)%s%s", rep->status,
		 rep->code[0] ? rep->code : "(no error code)", s->base, method, key,
		 msg[0] ? ": " : "", msg);
	return rep->status == 404 ? -ENOENT : -EIO;
}

/* base/prefix/key?query as a URL. */
static int make_url(struct s3 *s, const char *key, const char *query, char *url, size_t len)
{
	char full[S3_KEY_MAX + 600], enc[3 * (S3_KEY_MAX + 600) + 1];
	int n;

	n = snprintf(full, sizeof full, "%s%s%s", s->prefix, s->prefix[0] && key[0] ? "/" : "",
		     key);
	if (n < 0 || (size_t)n >= sizeof full || encode(full, true, enc, sizeof enc) < 0)
		return -ENAMETOOLONG;
	n = snprintf(url, len, "%s/%s%s%s", s->base, enc, query ? "?" : "", query ? query : "");
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static void reply_reset(struct s3_reply *rep)
{
	memset(rep, 0, sizeof *rep);
}

/* PUT (or POST) of body with its SHA-256.  answer: the 2xx body (a POST's
 * XML), malloc'd, when not NULL. */
static int send_body(struct s3 *s, const char *method, const char *key, const char *query,
		     const void *body, size_t len, struct curl_slist *extra, char **answer,
		     struct s3_reply *rep)
{
	struct xfer x = { .out = body, .out_len = len, .in_max = 1u << 20, .rep = rep };
	struct curl_slist *headers = extra;
	char url[8192], sha[65];
	int r;

	r = make_url(s, key, query, url, sizeof url);
	if (r < 0) {
		curl_slist_free_all(extra);
		snprintf(rep->error, sizeof rep->error, "key %s is too long", key);
		return r;
	}
	s3_sha256_hex(body, len, sha);
	prepare(s, url, &headers, sha, &x);
	if (strcmp(method, "POST") == 0) {
		curl_easy_setopt(s->c, CURLOPT_POST, 1L);
		curl_easy_setopt(s->c, CURLOPT_POSTFIELDS, len ? body : "");
		curl_easy_setopt(s->c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
		headers = curl_slist_append(headers, "Content-Type: application/xml");
	} else {
		curl_easy_setopt(s->c, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(s->c, CURLOPT_READFUNCTION, read_cb);
		curl_easy_setopt(s->c, CURLOPT_READDATA, &x);
		curl_easy_setopt(s->c, CURLOPT_SEEKFUNCTION, seek_cb);
		curl_easy_setopt(s->c, CURLOPT_SEEKDATA, &x);
		/* a known length: RGW answers 411 to a chunked upload */
		curl_easy_setopt(s->c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
		/* 1 MiB reads (the default 64 KiB made a 64 MiB PUT to RGW ~30 %
		 * slower than the curl tool) */
		curl_easy_setopt(s->c, CURLOPT_UPLOAD_BUFFERSIZE, 1L << 20);
		headers = curl_slist_append(headers, "Content-Type: application/octet-stream");
		if (s->rate)
			curl_easy_setopt(s->c, CURLOPT_MAX_SEND_SPEED_LARGE, (curl_off_t)s->rate);
	}
	r = finish(s, &x, headers, method, key);
	if (r == 0 && answer) {
		*answer = x.in;
		x.in = NULL;
	}
	free(x.in);
	return r;
}

static struct curl_slist *meta_headers(const char *encoding)
{
	char h[128];

	if (!encoding)
		return NULL;
	snprintf(h, sizeof h, "x-amz-meta-" S3_META_ENCODING ": %s", encoding);
	return curl_slist_append(NULL, h);
}

/* Abandons a multipart upload (best effort: an abandoned one only costs
 * the store space until its lifecycle rules clean it). */
static void abort_multipart(struct s3 *s, const char *key, const char *enc_id)
{
	struct s3_reply tmp;
	struct xfer x = { .in_max = ERRBODY_MAX, .rep = &tmp };
	struct curl_slist *headers = NULL;
	char url[8192], query[1800];

	reply_reset(&tmp);
	snprintf(query, sizeof query, "uploadId=%s", enc_id);
	if (make_url(s, key, query, url, sizeof url) < 0)
		return;
	prepare(s, url, &headers, NULL, &x);
	curl_easy_setopt(s->c, CURLOPT_CUSTOMREQUEST, "DELETE");
	finish(s, &x, headers, "DELETE", key);
	free(x.in);
}

/* Multipart upload: initiate, parts of s->multipart bytes (each with its
 * own SHA-256), complete; abort on any failure. */
static int put_multipart(struct s3 *s, const char *key, const uint8_t *body, size_t len,
			 const char *encoding, struct s3_reply *rep)
{
	char upload_id[512], enc_id[1600], query[1800], (*etags)[128];
	size_t nparts = (len + s->multipart - 1) / s->multipart, xml_len = 0;
	/* Parts of about even size (whole MiB, at least S3's 5 MiB), none
	 * much larger than multipart_size: a segment just over it goes as two
	 * halves, not as one part and a sliver. */
	size_t part = ((len + nparts - 1) / nparts + (1u << 20) - 1) & ~(size_t)((1u << 20) - 1);

	if (part < S3_MIN_PART)
		part = S3_MIN_PART;
	nparts = (len + part - 1) / part;
	char *xml = NULL, *answer = NULL;
	int r;

	r = send_body(s, "POST", key, "uploads=", "", 0, meta_headers(encoding), &answer, rep);
	if (r < 0)
		return r;
	if (!xml_text(answer, "UploadId", upload_id, sizeof upload_id, NULL) || !upload_id[0] ||
	    encode(upload_id, false, enc_id, sizeof enc_id) < 0) {
		free(answer);
		snprintf(rep->error, sizeof rep->error, "POST %s?uploads: no usable UploadId in the"
			 " answer", key);
		return -EIO;
	}
	free(answer);
	etags = calloc(nparts, sizeof *etags);
	if (!etags) {
		abort_multipart(s, key, enc_id);
		return -ENOMEM;
	}
	for (size_t i = 0; i < nparts && r == 0; i++) {
		size_t off = i * part, n = len - off < part ? len - off : part;

		/* sorted: partNumber before uploadId */
		snprintf(query, sizeof query, "partNumber=%zu&uploadId=%s", i + 1, enc_id);
		reply_reset(rep);
		r = send_body(s, "PUT", key, query, body + off, n, NULL, NULL, rep);
		if (r == 0 && !rep->etag[0]) {
			snprintf(rep->error, sizeof rep->error, "PUT %s part %zu: no ETag in the"
				 " answer", key, i + 1);
			r = -EIO;
		}
		if (r == 0)
			memcpy(etags[i], rep->etag, sizeof etags[i]);
	}
	if (r == 0) {
		FILE *f = open_memstream(&xml, &xml_len);

		if (!f) {
			r = -ENOMEM;
		} else {
			fputs("<CompleteMultipartUpload>", f);
			for (size_t i = 0; i < nparts; i++)
				fprintf(f, "<Part><PartNumber>%zu</PartNumber><ETag>%s</ETag></Part>",
					i + 1, etags[i]);
			fputs("</CompleteMultipartUpload>", f);
			fclose(f);
			snprintf(query, sizeof query, "uploadId=%s", enc_id);
			reply_reset(rep);
			r = send_body(s, "POST", key, query, xml, xml_len, NULL, NULL, rep);
		}
	}
	if (r < 0)
		abort_multipart(s, key, enc_id);
	free(xml);
	free(etags);
	return r < 0 ? -EIO : 0;
}

int s3_put(struct s3 *s, const char *key, const void *body, size_t len, const char *encoding,
	   struct s3_reply *rep)
{
	int r;

	reply_reset(rep);
	if (len > s->single_max)
		return put_multipart(s, key, body, len, encoding, rep);
	r = send_body(s, "PUT", key, NULL, body, len, meta_headers(encoding), NULL, rep);
	return r < 0 ? -EIO : 0;
}

int s3_get(struct s3 *s, const char *key, const char *if_none_match, s3_sink_fn sink,
	   void *ctx, struct s3_reply *rep)
{
	struct xfer x = { .sink = sink, .sink_ctx = ctx, .in_max = ERRBODY_MAX, .rep = rep };
	struct curl_slist *headers = NULL;
	char url[8192], h[200];
	int r;

	reply_reset(rep);
	r = make_url(s, key, NULL, url, sizeof url);
	if (r < 0) {
		snprintf(rep->error, sizeof rep->error, "key %s is too long", key);
		return r;
	}
	prepare(s, url, &headers, NULL, &x);
	curl_easy_setopt(s->c, CURLOPT_HTTPGET, 1L);
	if (if_none_match && *if_none_match) {
		snprintf(h, sizeof h, "If-None-Match: %s", if_none_match);
		headers = curl_slist_append(headers, h);
	}
	r = finish(s, &x, headers, "GET", key);
	free(x.in);
	return r;
}

struct fetch {
	s3_sink_fn sink;
	void *ctx;
	struct s3_reply *rep;    /* its encoding arrives before the body */
	bool started;
	ZSTD_DStream *z;
	uint8_t *zbuf;
	size_t zlen, zlast;
	uint64_t out, max;
	int err;
};

static int fetch_out(struct fetch *f, const void *p, size_t n)
{
	int r;

	if (f->out + n > f->max)
		return f->err = -EFBIG;
	f->out += n;
	r = n ? f->sink(f->ctx, p, n) : 0;
	return r < 0 ? (f->err = r) : 0;
}

static int fetch_sink(void *ctx, const void *data, size_t len)
{
	struct fetch *f = ctx;
	ZSTD_inBuffer in = { data, len, 0 };

	if (!f->started) {
		f->started = true;
		if (strcmp(f->rep->encoding, "zstd") == 0) {
			f->z = ZSTD_createDStream();
			f->zlen = ZSTD_DStreamOutSize();
			f->zbuf = malloc(f->zlen);
			if (!f->z || !f->zbuf)
				return f->err = -ENOMEM;
			ZSTD_initDStream(f->z);
			/* 128 MiB windows at most: a small object cannot make us
			 * allocate gigabytes */
			ZSTD_DCtx_setParameter(f->z, ZSTD_d_windowLogMax, 27);
		} else if (f->rep->encoding[0]) {
			return f->err = -EBADMSG;
		}
	}
	if (!f->z)
		return fetch_out(f, data, len);
	while (in.pos < in.size) {
		ZSTD_outBuffer o = { f->zbuf, f->zlen, 0 };
		size_t r = ZSTD_decompressStream(f->z, &o, &in);

		if (ZSTD_isError(r))
			return f->err = -EBADMSG;
		f->zlast = r;
		if (fetch_out(f, f->zbuf, o.pos) < 0)
			return f->err;
	}
	return 0;
}

int s3_fetch(struct s3 *s, const char *key, s3_sink_fn sink, void *ctx, uint64_t max,
	     struct s3_reply *rep)
{
	struct fetch f = { .sink = sink, .ctx = ctx, .rep = rep, .max = max };
	int r = s3_get(s, key, NULL, fetch_sink, &f, rep);

	if (r == 0 && f.z && f.zlast != 0)
		f.err = -EBADMSG;
	ZSTD_freeDStream(f.z);
	free(f.zbuf);
	if (f.err) {
		if (f.err == -EBADMSG)
			snprintf(rep->error, sizeof rep->error, "%s: %s", key, rep->encoding[0] &&
				 strcmp(rep->encoding, "zstd") ? "an encoding this program does not"
				 " know" : "its zstd stream is corrupt or cut");
		else if (f.err == -EFBIG)
			snprintf(rep->error, sizeof rep->error, "%s: larger than %" PRIu64 " bytes",
				 key, max);
		return f.err;
	}
	return r == 1 ? -EIO : r;
}

struct small {
	char *buf;
	size_t len, max;
};

static int small_sink(void *ctx, const void *data, size_t len)
{
	struct small *b = ctx;
	char *nb;

	if (b->len + len > b->max)
		return -EFBIG;
	nb = realloc(b->buf, b->len + len + 1);
	if (!nb)
		return -ENOMEM;
	memcpy(nb + b->len, data, len);
	b->buf = nb;
	b->len += len;
	b->buf[b->len] = '\0';
	return 0;
}

int s3_get_small(struct s3 *s, const char *key, const char *if_none_match, size_t max,
		 char **body, size_t *len, struct s3_reply *rep)
{
	struct small b = { .max = max };
	int r = s3_get(s, key, if_none_match, small_sink, &b, rep);

	if (r == 0) {
		*body = b.buf ? b.buf : strdup("");
		*len = b.len;
		return *body ? 0 : -ENOMEM;
	}
	free(b.buf);
	return r;
}

int s3_delete(struct s3 *s, const char *key, struct s3_reply *rep)
{
	struct xfer x = { .in_max = ERRBODY_MAX, .rep = rep };
	struct curl_slist *headers = NULL;
	char url[8192];
	int r;

	reply_reset(rep);
	r = make_url(s, key, NULL, url, sizeof url);
	if (r < 0)
		return r;
	prepare(s, url, &headers, NULL, &x);
	curl_easy_setopt(s->c, CURLOPT_CUSTOMREQUEST, "DELETE");
	r = finish(s, &x, headers, "DELETE", key);
	free(x.in);
	if (r == -ENOENT && strcmp(rep->code, "NoSuchBucket") != 0)
		r = 0;
	return r < 0 ? (r == -ENOENT ? -EIO : r) : 0;
}

int s3_list_dirs(struct s3 *s, int (*fn)(void *ctx, const char *name), void *ctx,
		 struct s3_reply *rep)
{
	char token[1024] = "", enc_token[3100], prefix[S3_KEY_MAX], enc_prefix[3 * S3_KEY_MAX + 1];
	char url[8192], query[8192];
	int r = 0;

	snprintf(prefix, sizeof prefix, "%s%s", s->prefix, s->prefix[0] ? "/" : "");
	if (encode(prefix, false, enc_prefix, sizeof enc_prefix) < 0)
		return -ENAMETOOLONG;
	do {
		struct xfer x = { .in_max = 8u << 20, .rep = rep };
		struct curl_slist *headers = NULL;
		const char *p;
		char name[S3_KEY_MAX], more[16] = "";

		reply_reset(rep);
		if (encode(token, false, enc_token, sizeof enc_token) < 0)
			return -ENAMETOOLONG;
		/* sorted by name, each name=value */
		snprintf(query, sizeof query, "%s%s%sdelimiter=%%2F&list-type=2&prefix=%s",
			 token[0] ? "continuation-token=" : "", token[0] ? enc_token : "",
			 token[0] ? "&" : "", enc_prefix);
		if ((size_t)snprintf(url, sizeof url, "%s?%s", s->base, query) >= sizeof url)
			return -ENAMETOOLONG;
		prepare(s, url, &headers, NULL, &x);
		curl_easy_setopt(s->c, CURLOPT_HTTPGET, 1L);
		r = finish(s, &x, headers, "GET", "?list-type=2");
		if (r < 0) {
			free(x.in);
			return r;
		}
		token[0] = '\0';
		p = x.in;
		while (p && r == 0) {
			char cp[S3_KEY_MAX + 40];
			const char *next;

			if (!xml_text(p, "CommonPrefixes", cp, sizeof cp, &next))
				break;
			p = next;
			if (!xml_text(cp, "Prefix", name, sizeof name, NULL))
				continue;
			if (strncmp(name, prefix, strlen(prefix)) != 0)
				continue;
			memmove(name, name + strlen(prefix), strlen(name + strlen(prefix)) + 1);
			if (name[0] && name[strlen(name) - 1] == '/')
				name[strlen(name) - 1] = '\0';
			if (name[0])
				r = fn(ctx, name);
		}
		if (x.in && xml_text(x.in, "IsTruncated", more, sizeof more, NULL) &&
		    strcmp(more, "true") == 0)
			xml_text(x.in, "NextContinuationToken", token, sizeof token, NULL);
		free(x.in);
	} while (r == 0 && token[0]);
	return r;
}
