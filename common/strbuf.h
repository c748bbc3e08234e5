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
	bool failed;
};

void strbuf_printf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hands the text to the caller (free() it) and resets sb. */
char *strbuf_take(struct strbuf *sb, size_t *len);
void strbuf_free(struct strbuf *sb);

#endif
