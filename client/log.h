/* log: one logging sink for the daemon, the emulator and the library.
 *
 * Owns where log lines go (stderr or syslog) and the level filter. Callers
 * never pass secrets (tokens, keys, assertions): the library logs URLs
 * without query strings that could carry credentials and never logs headers.
 */
#ifndef DICOMFS_LOG_H
#define DICOMFS_LOG_H

#include <stdbool.h>
#include <syslog.h> /* LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG */

/* to_syslog false: lines go to stderr as "ident: LEVEL: message". */
void log_init(const char *ident, bool to_syslog, int max_level);
void log_set_level(int max_level);
bool log_enabled(int level);
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
