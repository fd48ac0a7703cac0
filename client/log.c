/* log: stderr or syslog sink with a level filter. */
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *log_ident = "dicomfs";
static bool log_to_syslog;
static int log_max_level = LOG_INFO;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void log_init(const char *ident, bool to_syslog, int max_level)
{
    log_ident = ident ? ident : "dicomfs";
    log_to_syslog = to_syslog;
    log_max_level = max_level;
    if (to_syslog)
        openlog(log_ident, LOG_PID, LOG_DAEMON);
}

void log_set_level(int max_level)
{
    log_max_level = max_level;
}

bool log_enabled(int level)
{
    return level <= log_max_level;
}

static const char *level_name(int level)
{
    switch (level) {
    case LOG_EMERG:
    case LOG_ALERT:
    case LOG_CRIT:
    case LOG_ERR:
        return "error";
    case LOG_WARNING:
        return "warning";
    case LOG_NOTICE:
    case LOG_INFO:
        return "info";
    default:
        return "debug";
    }
}

void log_msg(int level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (log_to_syslog) {
        syslog(level, "%s", line);
        return;
    }
    /* One write per line so concurrent threads never interleave mid-line. */
    pthread_mutex_lock(&log_lock);
    fprintf(stderr, "%s: %s: %s\n", log_ident, level_name(level), line);
    fflush(stderr);
    pthread_mutex_unlock(&log_lock);
}
