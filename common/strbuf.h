/*
 * strbuf.h — a growing text buffer for building HTTP bodies (Prometheus
 * metrics, human status).  Allocation failure leaves the buffer as it was
 * and sets failed; the text is always NUL-terminated.
 */
#ifndef AIM_STRBUF_H
#define AIM_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

struct strbuf {
	char *buf;
	size_t len, cap;
	size_t max;        /* 0: no limit; else appending past it fails */
	bool failed;
};

void strbuf_printf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends n bytes; false (and failed set) when out of memory or past max. */
bool strbuf_append(struct strbuf *sb, const void *p, size_t n);
/* A libcurl CURLOPT_WRITEFUNCTION collecting a body into the strbuf given
 * as CURLOPT_WRITEDATA (set max first to bound it): the transfer fails
 * when the body would pass max. */
size_t strbuf_curl_write(char *p, size_t size, size_t nitems, void *sb);
/* s as a Prometheus label value (backslash, double quote and newline
 * escaped), in a new string to free(); NULL when out of memory. */
char *prom_label_value(const char *s);
/* Hands the text to the caller (free() it) and resets sb. */
char *strbuf_take(struct strbuf *sb, size_t *len);
void strbuf_free(struct strbuf *sb);

#endif
