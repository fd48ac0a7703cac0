/* util: helpers shared by the client modules (see util.h). */
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void util_vset_err(http_error *err, long status, const char *code, const char *fmt, va_list ap)
{
    memset(err, 0, sizeof(*err));
    err->http_status = status;
    snprintf(err->status, sizeof(err->status), "%s", code);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
}

void util_set_err(http_error *err, long status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    util_vset_err(err, status, code, fmt, ap);
    va_end(ap);
}

char *util_endpoint(const char *explicit_ep, const char *env_name, const char *dflt,
                    char *(*normalize)(const char *ep))
{
    const char *ep = explicit_ep;
    if (!ep || !*ep)
        ep = getenv(env_name);
    if (!ep || !*ep)
        ep = dflt;
    return normalize(ep);
}

int util_next_page_token(const cJSON *page, char **token)
{
    const cJSON *next = cJSON_GetObjectItemCaseSensitive(page, "nextPageToken");
    if (!cJSON_IsString(next) || !next->valuestring || !*next->valuestring) {
        free(*token);
        *token = NULL;
        return UTIL_PAGE_LAST;
    }
    if (*token && strcmp(*token, next->valuestring) == 0)
        return UTIL_PAGE_REPEATED;
    free(*token);
    *token = strdup(next->valuestring);
    return *token ? UTIL_PAGE_NEXT : UTIL_PAGE_NOMEM;
}

size_t util_pread_full(int fd, void *buf, size_t len, off_t off)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, (char *)buf + got, len - got, off + (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    return got;
}

char *util_with_scheme(const char *ep)
{
    if (strstr(ep, "://"))
        return strdup(ep);
    char *plain = http_strdup_printf("http://%s", ep);
    if (!plain || http_url_safe_for_credentials(plain))
        return plain;
    free(plain);
    return http_strdup_printf("https://%s", ep);
}
