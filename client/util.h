/* util: small pieces shared by the client modules (http, auth, gcs,
 * healthcare), so each rule lives in one place. Internal to client/ and its
 * users; no module-specific error codes here. */
#ifndef DICOMFS_UTIL_H
#define DICOMFS_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <sys/types.h>

#include "http.h"

struct cJSON;

/* Clears *err and fills status, code and a printf-formatted message
 * (truncated to fit). */
void util_set_err(http_error *err, long status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void util_vset_err(http_error *err, long status, const char *code, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

/* The endpoint a client uses: explicit when non-empty, else the environment
 * variable env_name when set and non-empty, else dflt; passed through
 * normalize (which returns a malloc'ed string or NULL). */
char *util_endpoint(const char *explicit_ep, const char *env_name, const char *dflt,
                    char *(*normalize)(const char *ep));

/* ep with a scheme when it has none: http:// for a loopback address (an
 * emulator's "localhost:8080"), https:// for anything else, so that no
 * token goes out in clear text. malloc'ed, or NULL. */
char *util_with_scheme(const char *ep);

/* Paging: after a page was delivered, its "nextPageToken" replaces *token
 * (malloc'ed; freed and set NULL when there is none or it is empty). */
enum {
    UTIL_PAGE_LAST = 0,     /* no further page */
    UTIL_PAGE_NEXT = 1,     /* *token holds the next page's token */
    UTIL_PAGE_REPEATED = 2, /* the token equals the previous one: would loop forever */
    UTIL_PAGE_NOMEM = 3,
};
int util_next_page_token(const struct cJSON *page, char **token);

/* Reads up to len bytes from fd starting at off (pread, EINTR retried) and
 * returns how many arrived: fewer only at end of file or on a read error. */
size_t util_pread_full(int fd, void *buf, size_t len, off_t off);

#endif
