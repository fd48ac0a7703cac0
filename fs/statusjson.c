/* statusjson: the status text as JSON (see statusjson.h). */
#include "statusjson.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* n bytes of s with \n, \r and \\ turned back into their characters. */
static char *unescape(const char *s, size_t n)
{
    char *out = malloc(n + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n && strchr("nr\\", s[i + 1])) {
            i++;
            *o++ = s[i] == 'n' ? '\n' : s[i] == 'r' ? '\r' : '\\';
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

/* "PATH: REASON" (ll bytes) appended to arr as {"path", "reason"}. */
static void add_entry(cJSON *arr, const char *v, size_t vl)
{
    const char *sep = NULL;
    for (size_t i = 0; i + 1 < vl && !sep; i++)
        if (v[i] == ':' && v[i + 1] == ' ')
            sep = v + i;
    size_t pl = sep ? (size_t)(sep - v) : vl;
    char *path = unescape(v, pl);
    char *reason = sep ? unescape(sep + 2, vl - pl - 2) : strdup("");
    cJSON *e = cJSON_CreateObject();
    if (e && path && reason) {
        cJSON_AddStringToObject(e, "path", path);
        cJSON_AddStringToObject(e, "reason", reason);
        cJSON_AddItemToArray(arr, e);
    } else {
        cJSON_Delete(e);
    }
    free(path);
    free(reason);
}

char *status_json(const char *text)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *failed = cJSON_AddArrayToObject(o, "failed_files");
    cJSON *rejected = cJSON_AddArrayToObject(o, "rejected");
    for (const char *line = text; o && line && *line;) {
        const char *eol = strchr(line, '\n');
        size_t ll = eol ? (size_t)(eol - line) : strlen(line);
        const char *colon = memchr(line, ':', ll);
        if (colon && (size_t)(colon - line) + 2 <= ll && colon[1] == ' ') {
            size_t kl = (size_t)(colon - line);
            const char *v = colon + 2;
            size_t vl = ll - kl - 2;
            char key[64];
            bool number = vl > 0 && strspn(v, "0123456789") >= vl && kl < sizeof key;
            if (number) {
                memcpy(key, line, kl);
                key[kl] = '\0';
                cJSON_AddNumberToObject(o, key, strtod(v, NULL));
            } else if (kl == 6 && strncmp(line, "failed", 6) == 0) {
                add_entry(failed, v, vl);
            } else if (kl == 8 && strncmp(line, "rejected", 8) == 0) {
                add_entry(rejected, v, vl);
            }
        }
        line = eol ? eol + 1 : NULL;
    }
    char *json = o ? cJSON_Print(o) : NULL;
    cJSON_Delete(o);
    if (!json)
        return NULL;
    size_t n = strlen(json);
    char *out = realloc(json, n + 2);
    if (!out) {
        free(json);
        return NULL;
    }
    out[n] = '\n';
    out[n + 1] = '\0';
    return out;
}
