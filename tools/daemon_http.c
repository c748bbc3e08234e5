/*
 * daemon_http.c — aimctl's requests to a daemon's status listener (aimfs's
 * or aim-remote's): one GET or empty-bodied POST with libcurl, its body
 * collected and, for the JSON answers, parsed.  Every subcommand that asks
 * a running daemon something goes through here.
 */
#include "aimctl.h"
#include "log.h"
#include "strbuf.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BODY_MAX (16u << 20)

const char *aimctl_status_url(const char *arg, const char *path, char *buf, size_t len)
{
	if (strstr(arg, "://"))
		snprintf(buf, len, "%s%s", arg, strchr(strstr(arg, "://") + 3, '/') ? "" : path);
	else
		snprintf(buf, len, "http://%s%s", arg, path);
	return buf;
}

int aimctl_http(const char *cmd, const char *url, bool post, long timeout_s, long *code,
		char **body, size_t *len)
{
	struct strbuf sb = { .max = BODY_MAX };
	char errbuf[CURL_ERROR_SIZE] = "";
	CURL *c = curl_easy_init();
	CURLcode cc;

	*code = 0;
	if (!c) {
		log_error("%s: cannot start libcurl", cmd);
		return -1;
	}
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, strbuf_curl_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &sb);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, timeout_s);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	if (post)
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
	cc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, code);
	curl_easy_cleanup(c);
	if (cc != CURLE_OK) {
		log_error("%s: %s: %s", cmd, url,
			  sb.failed ? "the answer is too large" :
			  errbuf[0] ? errbuf : curl_easy_strerror(cc));
		strbuf_free(&sb);
		return -1;
	}
	*body = strbuf_take(&sb, len);
	return *body ? 0 : -1;
}

json_t *aimctl_http_json(const char *cmd, const char *url, bool post, long timeout_s, long *code)
{
	json_error_t jerr;
	char *body = NULL;
	size_t len = 0;
	json_t *o;

	if (aimctl_http(cmd, url, post, timeout_s, code, &body, &len) < 0)
		return NULL;
	o = json_loadb(body, len, 0, &jerr);
	if (!o)
		log_error("%s: %s answered HTTP %ld without JSON: %s", cmd, url, *code, jerr.text);
	free(body);
	return o;
}

bool aimctl_url_escape(const char *s, char *buf, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = 0;

	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		bool plain = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
			     (ch >= '0' && ch <= '9') || strchr("-._~", ch);

		if (n + (plain ? 1 : 3) >= len)
			return false;
		if (plain) {
			buf[n++] = (char)ch;
		} else {
			buf[n++] = '%';
			buf[n++] = hex[ch >> 4];
			buf[n++] = hex[ch & 15];
		}
	}
	buf[n] = '\0';
	return true;
}
