/*
 * parse.h — the small parsers every command line and config file needs:
 * sizes ("64M", "8G", "4096"), durations ("2s", "500ms", "1m") and
 * ADDR:PORT pairs.  Each returns 0 on success and -EINVAL on bad input,
 * leaving the output untouched.  Thread-safe; only parse_secret_file
 * allocates.
 */
#ifndef AIM_PARSE_H
#define AIM_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Decimal digits only: no sign, no white space, no suffix, no overflow. */
int parse_uint(const char *s, uint64_t *out);
/* Binary suffixes K, M, G, T (also KiB, MiB...; "k" accepted), bytes if none. */
int parse_size(const char *s, uint64_t *out);
/* Suffixes ms, s, m, h, d; seconds if none.  Result in nanoseconds. */
int parse_duration(const char *s, uint64_t *out_ns);
/* "127.0.0.1:9380", "[::1]:9380", "localhost:80". host gets a NUL-terminated copy. */
int parse_hostport(const char *s, char *host, unsigned hostlen, uint16_t *port);
/* Reads a secret (a token, a key) from path: one line of 1..max printable
 * characters, trailing white space dropped.  Returns 0 with a malloc'd
 * copy in *out, -ENOENT/-EACCES/... when the file cannot be read, -EINVAL
 * when it holds something else, -ENOMEM.  The buffer it read into is
 * wiped. */
int parse_secret_file(const char *path, size_t max, char **out);
/* True when a config value holds white space followed by '#': inih keeps
 * it in the value (only a line that starts with '#' is a comment), so
 * "rate = 50M   # cap" would mean something else or be refused for the
 * wrong reason.  Config loaders refuse such a value, naming the line. */
bool parse_has_inline_comment(const char *value);
/* Renders bytes as "1.5 GiB" into buf; returns buf. */
const char *format_size(uint64_t bytes, char *buf, unsigned buflen);

#endif
