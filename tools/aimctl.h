/*
 * aimctl.h — the subcommands that live outside aimctl.c, one file each.
 * Each takes the arguments after its name and returns the exit status
 * (0 success, 1 failure with the reason on stderr, 2 usage).
 */
#ifndef AIM_AIMCTL_H
#define AIM_AIMCTL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

int cmd_status(int argc, char **argv);
int cmd_ship(int argc, char **argv);
int cmd_verify(int argc, char **argv);

/* ---- daemon_http.c: asking a running daemon ---- */

/* The URL of path on a daemon's status listener, from an operator's
 * ADDR:PORT or URL (a URL with a path is taken as it is).  Returns buf. */
const char *aimctl_status_url(const char *arg, const char *path, char *buf, size_t len);
/* GET url (POST with an empty body if post).  Returns 0 with the HTTP
 * status and the body (malloc'd, NUL-terminated), or -1 after logging why
 * (as "cmd: url: reason"). */
int aimctl_http(const char *cmd, const char *url, bool post, long timeout_s, long *code,
		char **body, size_t *len);
/* The same, parsed as JSON: a new reference, or NULL after logging why. */
json_t *aimctl_http_json(const char *cmd, const char *url, bool post, long timeout_s, long *code);

#endif
