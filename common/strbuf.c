/* strbuf.c — vsnprintf into a buffer that doubles as needed. */
#include "strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

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
