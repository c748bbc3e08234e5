/* strbuf.c — vsnprintf into a buffer that doubles as needed. */
#include "strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void strbuf_printf(struct strbuf *sb, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (sb->failed)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(sb->buf ? sb->buf + sb->len : NULL, sb->buf ? sb->cap - sb->len : 0,
			      fmt, ap);
		va_end(ap);
		if (n < 0) {
			sb->failed = true;
			return;
		}
		if (sb->buf && sb->len + (size_t)n < sb->cap) {
			sb->len += (size_t)n;
			return;
		}
		size_t cap = (sb->cap ? sb->cap * 2 : 1024) + (size_t)n + 1;
		char *nb = realloc(sb->buf, cap);

		if (!nb) {
			sb->failed = true;
			return;
		}
		sb->buf = nb;
		sb->cap = cap;
		sb->buf[sb->len] = '\0';
	}
}

bool strbuf_append(struct strbuf *sb, const void *p, size_t n)
{
	if (sb->failed || (sb->max && sb->len + n > sb->max)) {
		sb->failed = true;
		return false;
	}
	if (sb->len + n + 1 > sb->cap) {
		size_t cap = (sb->cap ? sb->cap * 2 : 1024) + n + 1;
		char *nb = realloc(sb->buf, cap);

		if (!nb) {
			sb->failed = true;
			return false;
		}
		sb->buf = nb;
		sb->cap = cap;
	}
	memcpy(sb->buf + sb->len, p, n);
	sb->len += n;
	sb->buf[sb->len] = '\0';
	return true;
}

size_t strbuf_curl_write(char *p, size_t size, size_t nitems, void *sb)
{
	return strbuf_append(sb, p, size * nitems) ? size * nitems : 0;
}

char *strbuf_take(struct strbuf *sb, size_t *len)
{
	char *b = sb->buf;

	if (len)
		*len = sb->len;
	if (!b && !sb->failed)
		b = calloc(1, 1);
	sb->buf = NULL;
	sb->len = sb->cap = 0;
	sb->failed = false;
	return b;
}

void strbuf_free(struct strbuf *sb)
{
	free(sb->buf);
	sb->buf = NULL;
	sb->len = sb->cap = 0;
}

char *prom_label_value(const char *s)
{
	size_t n = 0;
	char *out, *o;

	for (const char *p = s; *p; p++)
		n += (*p == '\\' || *p == '"' || *p == '\n') ? 2 : 1;
	out = o = malloc(n + 1);
	if (!out)
		return NULL;
	for (const char *p = s; *p; p++) {
		if (*p == '\\' || *p == '"') {
			*o++ = '\\';
			*o++ = *p;
		} else if (*p == '\n') {
			*o++ = '\\';
			*o++ = 'n';
		} else {
			*o++ = *p;
		}
	}
	*o = '\0';
	return out;
}
