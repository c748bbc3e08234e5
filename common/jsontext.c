/*
 * jsontext.c — see jsontext.h.  glibc's iconv does the UTF-8 decoding: a
 * UTF-8 to UTF-8 conversion stops at each invalid sequence (EILSEQ, or
 * EINVAL for one cut short at the end), where a U+FFFD goes out instead of
 * the byte, and the conversion goes on after it.
 */
#include "jsontext.h"

#include <errno.h>
#include <iconv.h>
#include <stdlib.h>
#include <string.h>

static const char replacement[] = "\xef\xbf\xbd"; /* U+FFFD */

bool text_is_utf8(const char *s, size_t len)
{
	json_t *j = json_stringn(s, len);

	json_decref(j);
	return j != NULL;
}

json_t *json_text(const char *s)
{
	return json_text_n(s, strlen(s));
}

json_t *json_text_n(const char *s, size_t len)
{
	json_t *j = json_stringn(s, len);
	iconv_t cd;
	char *buf, *in = (char *)s, *out;
	size_t inleft = len, outleft, cap;

	if (j)
		return j;
	cap = 3 * len + 1; /* every byte a U+FFFD at worst */
	buf = malloc(cap);
	if (!buf)
		return NULL;
	cd = iconv_open("UTF-8", "UTF-8");
	if (cd == (iconv_t)-1) {
		free(buf);
		return json_string("(not UTF-8)");
	}
	out = buf;
	outleft = cap;
	while (inleft) {
		if (iconv(cd, &in, &inleft, &out, &outleft) != (size_t)-1)
			break;
		if (errno != EILSEQ && errno != EINVAL)
			break;
		memcpy(out, replacement, 3);
		out += 3;
		outleft -= 3;
		in++;
		inleft--;
		iconv(cd, NULL, NULL, NULL, NULL); /* a fresh start after it */
	}
	iconv_close(cd);
	j = json_stringn(buf, (size_t)(out - buf));
	free(buf);
	return j;
}
