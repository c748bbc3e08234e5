/*
 * log.c — stderr logging with the program's name and a level word for the
 * alarming levels ("error: ", "warning: ").  One write(2) per message so that
 * lines from different threads never interleave.  A detached daemon logs to
 * syslog instead, with the same words, at the matching priority.
 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdatomic.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

static const char *prog = "aim";
static enum log_level max_level = LOG_LVL_INFO;
static atomic_bool use_syslog;

void log_init(const char *progname)
{
	const char *slash = strrchr(progname, '/');

	prog = slash ? slash + 1 : progname;
}

void log_set_level(enum log_level level)
{
	max_level = level;
}

bool log_enabled(enum log_level level)
{
	return level <= max_level;
}

const char *log_progname(void)
{
	return prog;
}

void log_to_syslog(void)
{
	openlog(prog, LOG_PID | LOG_NDELAY, LOG_DAEMON);
	atomic_store(&use_syslog, true);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, fmt, ap);
	va_end(ap);
}

void log_vmsg(enum log_level level, const char *fmt, va_list ap)
{
	static const char *const prefix[] = {
		[LOG_LVL_ERROR] = "error: ",
		[LOG_LVL_WARN] = "warning: ",
		[LOG_LVL_INFO] = "",
		[LOG_LVL_DEBUG] = "debug: ",
	};
	char line[2048];
	int saved = errno;
	int n;

	if (!log_enabled(level))
		return;
	n = snprintf(line, sizeof line, "%s: %s", prog, prefix[level]);
	errno = saved; /* keep %m meaningful */
	n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	if (n > (int)sizeof line - 2)
		n = (int)sizeof line - 2;
	if (atomic_load(&use_syslog)) {
		static const int priority[] = {
			[LOG_LVL_ERROR] = LOG_ERR,
			[LOG_LVL_WARN] = LOG_WARNING,
			[LOG_LVL_INFO] = LOG_INFO,
			[LOG_LVL_DEBUG] = LOG_DEBUG,
		};
		size_t skip = strlen(prog) + 2; /* syslog names the program */

		line[n] = '\0';
		syslog(priority[level], "%s", line + skip);
		errno = saved;
		return;
	}
	line[n++] = '\n';
	if (write(STDERR_FILENO, line, (size_t)n) < 0) {
		/* nowhere left to report it */
	}
	errno = saved;
}
