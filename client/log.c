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

/* Control characters (a file name may hold a newline) are written as \n,
 * \r, \t or \xHH, so one event is one line and no name can forge one. */
static void escape_controls(const char *in, char *out, size_t outlen)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && o + 5 < outlen; p++) {
        if (*p >= 0x20 && *p != 0x7f) {
            out[o++] = (char)*p;
            continue;
        }
        const char *named = *p == '\n' ? "\\n" : *p == '\r' ? "\\r" : *p == '\t' ? "\\t" : NULL;
        if (named)
            o += (size_t)snprintf(out + o, outlen - o, "%s", named);
        else
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", *p);
    }
    out[o] = '\0';
}

void log_msg(int level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char raw[2048], line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    escape_controls(raw, line, sizeof line);
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
