/*
 * log.h — one way for every aimfs program to talk to its operator.
 *
 * Messages go to stderr as "<program>: <message>", or to syslog when a daemon
 * asks for it.  Normal operation prints neither "error" nor "warning": tests
 * scan daemon output for those words, so use log_info for routine events and
 * keep the two alarming levels for things an operator must act on.
 * All functions are thread-safe.
 */
#ifndef AIM_LOG_H
#define AIM_LOG_H

#include <stdarg.h>
#include <stdbool.h>

enum log_level { LOG_LVL_ERROR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/* Sets the program name used as prefix; the string must outlive the program. */
void log_init(const char *progname);
void log_set_level(enum log_level level);
bool log_enabled(enum log_level level);
const char *log_progname(void);
/* From now on messages go to syslog (facility daemon, with the PID) instead
 * of stderr: for a daemon whose stderr went to /dev/null when it detached
 * (aimfs mounted without -f, as mount.fuse3 and fstab run it). */
void log_to_syslog(void);

void log_msg(enum log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void log_vmsg(enum log_level level, const char *fmt, va_list ap)
	__attribute__((format(printf, 2, 0)));

#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) \
	do { if (log_enabled(LOG_LVL_DEBUG)) log_msg(LOG_LVL_DEBUG, __VA_ARGS__); } while (0)

#endif
