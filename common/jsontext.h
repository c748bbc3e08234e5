/*
 * jsontext.h — text for JSON that never goes missing.  Jansson refuses a
 * string that is not valid UTF-8 (json_string returns NULL, and a
 * json_pack or json_object_set_new with it fails silently), but file
 * names, mark labels of old segments and a checker's output are bytes.
 * These return the text as it is when it is UTF-8, else with each invalid
 * byte replaced by U+FFFD; NULL only when out of memory.
 */
#ifndef AIM_JSONTEXT_H
#define AIM_JSONTEXT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

json_t *json_text(const char *s);
json_t *json_text_n(const char *s, size_t len);
/* True if s[0..len) is valid UTF-8 (what a new name must be). */
bool text_is_utf8(const char *s, size_t len);

#endif
