/* multipart: a bounded multipart/related parser (RFC 2046 section 5.1,
 * RFC 2387).
 *
 * The body is never assumed to be NUL-terminated: every scan is bounded by
 * the given length. A delimiter is "--BOUNDARY" at the start of a line,
 * followed by optional spaces or tabs and a line break ("\r\n" or "\n");
 * the close delimiter is "--BOUNDARY--" followed by optional padding and a
 * line break or the end. The line break before a delimiter belongs to the
 * delimiter, so a part's body is exactly the bytes between its blank line and
 * that line break.
 */
#include "multipart.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define BOUNDARY_MAX 70 /* RFC 2046 */

static int fail(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *why, size_t whylen, const char *fmt, ...)
{
    if (why && whylen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, whylen, fmt, ap);
        va_end(ap);
    }
    return CERR_MALFORMED;
}

static bool is_lwsp(char c)
{
    return c == ' ' || c == '\t';
}

/* ---- Content-Type parameters ------------------------------------------ */

static const char *skip_ws(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

/* Reads a parameter value at s (quoted-string or token) into a malloc'ed
 * string; *end gets the position after it. NULL for an unterminated quote. */
static char *read_value(const char *s, const char **end)
{
    if (*s != '"') {
        size_t n = strcspn(s, "; \t");
        *end = s + n;
        return strndup(s, n);
    }
    s++;
    char *out = malloc(strlen(s) + 1);
    if (!out)
        return NULL;
    size_t n = 0;
    for (; *s && *s != '"'; s++) {
        if (*s == '\\' && s[1])
            s++; /* quoted-pair */
        out[n++] = *s;
    }
    if (*s != '"') {
        free(out);
        return NULL;
    }
    out[n] = '\0';
    *end = s + 1;
    return out;
}

char *multipart_content_type_param(const char *content_type, const char *param)
{
    if (!content_type || !param || !*param)
        return NULL;
    size_t plen = strlen(param);
    const char *s = strchr(content_type, ';');
    while (s && *s == ';') {
        s = skip_ws(s + 1);
        size_t nlen = strcspn(s, "=; \t");
        const char *eq = skip_ws(s + nlen);
        if (*eq != '=') { /* a parameter without a value: skip it */
            s = strchr(s, ';');
            continue;
        }
        const char *end;
        char *value = read_value(skip_ws(eq + 1), &end);
        if (!value)
            return NULL;
        if (nlen == plen && strncasecmp(s, param, plen) == 0)
            return value;
        free(value);
        s = strchr(end, ';');
    }
    return NULL;
}

/* ---- part headers ------------------------------------------------------ */

/* Next line of [p, end): its length without the line break in *n, and the
 * start of the following line as the return value. */
static const char *next_line(const char *p, const char *end, size_t *n)
{
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *stop = nl ? nl : end;
    *n = (size_t)(stop - p);
    if (*n > 0 && p[*n - 1] == '\r')
        (*n)--;
    return nl ? nl + 1 : end;
}

/* Appends [s, s + n) trimmed of blanks to buf at *len. */
static int append_trimmed(char *buf, size_t buflen, size_t *len, const char *s, size_t n)
{
    while (n > 0 && is_lwsp(*s)) {
        s++;
        n--;
    }
    while (n > 0 && is_lwsp(s[n - 1]))
        n--;
    if (*len > 0 && n > 0) { /* a folded line joins with one space */
        if (*len + 1 >= buflen)
            return CERR_NOMEM;
        buf[(*len)++] = ' ';
    }
    if (*len + n >= buflen)
        return CERR_NOMEM;
    memcpy(buf + *len, s, n);
    *len += n;
    buf[*len] = '\0';
    return CERR_OK;
}

int multipart_part_header(const multipart_part *part, const char *name, char *buf, size_t buflen)
{
    if (!part || !name || !buf || buflen == 0 || (!part->headers && part->headers_len))
        return CERR_MALFORMED;
    size_t name_len = strlen(name), len = 0;
    const char *p = part->headers, *end = part->headers + part->headers_len;
    bool in_match = false, found = false;
    buf[0] = '\0';
    while (p && p < end) {
        size_t n;
        const char *line = p;
        p = next_line(p, end, &n);
        if (n > 0 && is_lwsp(line[0])) { /* obsolete folding: continuation */
            if (in_match && append_trimmed(buf, buflen, &len, line, n) != CERR_OK)
                return CERR_NOMEM;
            continue;
        }
        if (found)
            break; /* the first header of that name wins */
        const char *colon = memchr(line, ':', n);
        in_match = false;
        if (!colon)
            continue;
        size_t k = (size_t)(colon - line);
        while (k > 0 && is_lwsp(line[k - 1]))
            k--;
        if (k == name_len && strncasecmp(line, name, k) == 0) {
            in_match = found = true;
            if (append_trimmed(buf, buflen, &len, colon + 1, n - (size_t)(colon + 1 - line)) !=
                CERR_OK)
                return CERR_NOMEM;
        }
    }
    return found ? CERR_OK : CERR_MALFORMED;
}

/* ---- body -------------------------------------------------------------- */

typedef struct delim {
    size_t start; /* offset of "--BOUNDARY" */
    size_t after; /* offset after the delimiter line */
    bool closing;
} delim;

/* Finds the next delimiter line at or after from. */
static bool find_delim(const char *body, size_t len, const char *needle, size_t nn, size_t from,
                       delim *d)
{
    while (from < len) {
        const char *hit = memmem(body + from, len - from, needle, nn);
        if (!hit)
            return false;
        size_t p = (size_t)(hit - body), q = p + nn;
        from = p + 1;
        if (p > 0 && body[p - 1] != '\n')
            continue; /* not at the start of a line */
        d->start = p;
        d->closing = q + 1 < len && body[q] == '-' && body[q + 1] == '-';
        if (d->closing)
            q += 2;
        while (q < len && is_lwsp(body[q]))
            q++;
        if (q < len && body[q] == '\r' && q + 1 < len && body[q + 1] == '\n')
            q += 2;
        else if (q < len && body[q] == '\n')
            q++;
        else if (!(d->closing && q == len))
            continue; /* "--BOUNDARYx": text that merely starts like one */
        d->after = q;
        return true;
    }
    return false;
}

/* Splits the bytes between two delimiters into headers and body. */
static int split_part(const char *body, size_t start, size_t next, multipart_part *part, char *why,
                      size_t whylen)
{
    /* The line break before the next delimiter belongs to it. */
    size_t seg_end = next;
    if (next > start && body[next - 1] == '\n')
        seg_end = next - ((next - 1 > start && body[next - 2] == '\r') ? 2 : 1);
    const char *p = body + start, *end = body + next;
    while (p < end) {
        size_t n;
        const char *line = p;
        p = next_line(p, end, &n);
        if (n == 0) { /* the blank line: the body follows it */
            size_t b = (size_t)(p - body);
            part->headers = body + start;
            part->headers_len = (size_t)(line - body) - start;
            part->body = body + (b < seg_end ? b : seg_end);
            part->body_len = b < seg_end ? seg_end - b : 0;
            return CERR_OK;
        }
        if (!is_lwsp(line[0]) && !memchr(line, ':', n))
            return fail(why, whylen, "offset %zu: part header line has no ':'",
                        (size_t)(line - body));
    }
    /* Headers up to the delimiter and no body (RFC 2046 allows this). */
    part->headers = body + start;
    part->headers_len = seg_end - start;
    part->body = body + seg_end;
    part->body_len = 0;
    return CERR_OK;
}

int multipart_parse(const char *body, size_t len, const char *boundary, multipart_part_cb cb,
                    void *ctx, char *why, size_t whylen)
{
    size_t bn = boundary ? strlen(boundary) : 0;
    if (bn == 0)
        return fail(why, whylen, "no multipart boundary");
    if (bn > BOUNDARY_MAX)
        return fail(why, whylen, "multipart boundary longer than %d characters", BOUNDARY_MAX);
    if (!body)
        len = 0;
    char needle[BOUNDARY_MAX + 2];
    needle[0] = needle[1] = '-';
    memcpy(needle + 2, boundary, bn);
    size_t nn = bn + 2;
    delim d;
    if (!find_delim(body, len, needle, nn, 0, &d))
        return fail(why, whylen, "no delimiter \"--%s\" in the body", boundary);
    for (unsigned part_no = 1; !d.closing; part_no++) {
        size_t start = d.after;
        if (!find_delim(body, len, needle, nn, start, &d))
            return fail(why, whylen, "part %u (offset %zu): no closing delimiter \"--%s--\"",
                        part_no, start, boundary);
        multipart_part part;
        int rc = split_part(body, start, d.start, &part, why, whylen);
        if (rc)
            return rc;
        if (cb && (rc = cb(ctx, &part)) != 0)
            return rc;
    }
    return CERR_OK;
}
