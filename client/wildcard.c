/* wildcard: gs:// URI splitting and the import wildcard rules (wildcard.h).
 *
 * Matching never backtracks exponentially: a pattern with "**" is a literal
 * prefix and a literal suffix; any other pattern is matched one '/'-separated
 * segment at a time (neither '*' nor '?' crosses a '/'), each segment with
 * the greedy two-pointer algorithm that only ever restarts from the last '*'.
 */
#include "wildcard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUCKET_MIN 3
#define BUCKET_MAX 222
#define OBJECT_MAX 1024 /* bytes, as Cloud Storage allows */

static int fail(char *why, size_t whylen, const char *msg)
{
    if (why && whylen)
        snprintf(why, whylen, "%s", msg);
    return WILDCARD_ERR_SYNTAX;
}

static int is_alnum_lower(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static int check_bucket(const char *b, size_t n, char *why, size_t whylen)
{
    if (n < BUCKET_MIN || n > BUCKET_MAX)
        return fail(why, whylen, "bucket name must be 3 to 222 characters");
    for (size_t i = 0; i < n; i++) {
        char c = b[i];
        if (!is_alnum_lower(c) && c != '-' && c != '_' && c != '.') {
            if (why && whylen && (unsigned char)c > 0x20 && (unsigned char)c < 0x7F)
                snprintf(why, whylen, "bucket name has a character that is not allowed: '%c'", c);
            else if (why && whylen)
                snprintf(why, whylen, "bucket name has a byte that is not allowed: 0x%02X",
                         (unsigned char)c);
            return WILDCARD_ERR_SYNTAX;
        }
    }
    if (!is_alnum_lower(b[0]) || !is_alnum_lower(b[n - 1]))
        return fail(why, whylen, "bucket name must start and end with a letter or digit");
    return WILDCARD_OK;
}

int wildcard_split_gcs_uri(const char *uri, char **bucket, char **object, char *why, size_t whylen)
{
    static const char scheme[] = "gs://";
    if (bucket)
        *bucket = NULL;
    if (object)
        *object = NULL;
    if (!uri || strncmp(uri, scheme, sizeof scheme - 1) != 0)
        return fail(why, whylen, "URI must start with \"gs://\"");
    const char *b = uri + sizeof scheme - 1;
    const char *slash = strchr(b, '/');
    if (!slash)
        return fail(why, whylen, "URI has no object part (gs://BUCKET/OBJECT)");
    int rc = check_bucket(b, (size_t)(slash - b), why, whylen);
    if (rc)
        return rc;
    const char *o = slash + 1;
    size_t on = strlen(o);
    if (on == 0)
        return fail(why, whylen, "URI has an empty object name");
    if (on > OBJECT_MAX)
        return fail(why, whylen, "object name longer than 1024 bytes");
    if (strpbrk(o, "\r\n"))
        return fail(why, whylen, "object name contains a line break");
    char *bb = strndup(b, (size_t)(slash - b));
    char *oo = strdup(o);
    if (!bb || !oo) {
        free(bb);
        free(oo);
        return fail(why, whylen, "out of memory");
    }
    if (bucket)
        *bucket = bb;
    else
        free(bb);
    if (object)
        *object = oo;
    else
        free(oo);
    return WILDCARD_OK;
}

int wildcard_validate(const char *pattern, char *why, size_t whylen)
{
    if (!pattern || !*pattern)
        return fail(why, whylen, "empty pattern");
    const char *dbl = strstr(pattern, "**");
    if (!dbl)
        return WILDCARD_OK; /* any number of '*' and '?' */
    if (dbl[2] == '*')
        return fail(why, whylen, "\"***\" is not a wildcard");
    if (strpbrk(dbl + 2, "*?"))
        return fail(why, whylen, "\"**\" must be the last wildcard in the pattern");
    if (strchr(dbl + 2, '/'))
        return fail(why, whylen,
                    "\"**\" must be at the end, optionally followed by an extension such as "
                    "\".dcm\"");
    for (const char *p = pattern; p < dbl; p++)
        if (*p == '*' || *p == '?')
            return fail(why, whylen, "\"**\" must be the only wildcard in the pattern");
    return WILDCARD_OK;
}

/* Length of the UTF-8 character at s (1 for a stray byte). */
static size_t char_len(const char *s, size_t n)
{
    size_t k = 1;
    if ((unsigned char)s[0] >= 0xC0)
        while (k < n && k < 4 && ((unsigned char)s[k] & 0xC0) == 0x80)
            k++;
    return k;
}

/* Matches one segment (no '/' in either) with '*' and '?'. */
static bool match_segment(const char *p, size_t pn, const char *s, size_t sn)
{
    size_t pi = 0, si = 0, star = (size_t)-1, star_s = 0;
    while (si < sn) {
        if (pi < pn && p[pi] == '?') {
            pi++;
            si += char_len(s + si, sn - si);
        } else if (pi < pn && p[pi] == '*') {
            star = pi++;
            star_s = si;
        } else if (pi < pn && p[pi] == s[si]) {
            pi++;
            si++;
        } else if (star != (size_t)-1) {
            /* Let the last '*' take one more character and retry after it. */
            pi = star + 1;
            star_s += char_len(s + star_s, sn - star_s);
            si = star_s;
        } else {
            return false;
        }
    }
    while (pi < pn && p[pi] == '*')
        pi++;
    return pi == pn && si == sn;
}

bool wildcard_match(const char *pattern, const char *name)
{
    if (!pattern || !name || wildcard_validate(pattern, NULL, 0) != WILDCARD_OK)
        return false;
    const char *dbl = strstr(pattern, "**");
    if (dbl) {
        size_t pre = (size_t)(dbl - pattern), suf = strlen(dbl + 2), n = strlen(name);
        return n >= pre + suf && strncmp(name, pattern, pre) == 0 &&
               strcmp(name + n - suf, dbl + 2) == 0;
    }
    for (;;) {
        const char *pe = strchr(pattern, '/'), *ne = strchr(name, '/');
        size_t pn = pe ? (size_t)(pe - pattern) : strlen(pattern);
        size_t nn = ne ? (size_t)(ne - name) : strlen(name);
        if (!match_segment(pattern, pn, name, nn))
            return false;
        if (!pe || !ne)
            return !pe && !ne;
        pattern = pe + 1;
        name = ne + 1;
    }
}

size_t wildcard_literal_prefix_len(const char *pattern)
{
    return pattern ? strcspn(pattern, "*?") : 0;
}
