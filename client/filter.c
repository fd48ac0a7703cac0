/* filter: the Healthcare API export filter-file grammar (see filter.h).
 *
 * One left-to-right pass over each line that stops at the first bad byte, so
 * a line of any length costs at most one scan for its line break plus a few
 * dozen bytes of parsing. Nothing is allocated.
 */
#include "filter.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* A syntax error: where (0-based byte index in the line) and what. */
typedef struct bad {
    size_t at;
    char msg[128];
} bad;

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int fail(bad *b, size_t at, const char *msg)
{
    b->at = at;
    snprintf(b->msg, sizeof b->msg, "%s", msg);
    return -1;
}

/* Explains a byte that may not appear in a UID. */
static int fail_char(bad *b, size_t at, unsigned char c)
{
    b->at = at;
    if (c == ' ')
        snprintf(b->msg, sizeof b->msg, "unexpected space");
    else if (c == '\t')
        snprintf(b->msg, sizeof b->msg, "unexpected tab");
    else if (c == '\r')
        snprintf(b->msg, sizeof b->msg, "carriage return not followed by a line feed");
    else if (c == '\0')
        snprintf(b->msg, sizeof b->msg, "unexpected NUL byte");
    else if (c < 0x20 || c >= 0x7F)
        snprintf(b->msg, sizeof b->msg, "unexpected byte 0x%02X", c);
    else
        snprintf(b->msg, sizeof b->msg, "unexpected character '%c' in a UID", c);
    return -1;
}

/* Scans a UID starting at *pos, up to the next '/' or the end of the line,
 * and copies it to out (DICOM_UID_MAX + 1 bytes) if out is non-NULL. */
static int scan_uid(const char *s, size_t len, size_t *pos, char *out, bad *b)
{
    size_t start = *pos, comp = start, i = start;
    for (; i < len && s[i] != '/'; i++) {
        char c = s[i];
        if (i - start >= DICOM_UID_MAX && (is_digit(c) || c == '.'))
            return fail(b, i, "UID longer than 64 characters");
        if (c == '.') {
            if (i == comp)
                return fail(b, i,
                            i == start ? "UID starts with a dot"
                                       : "UID has an empty component (two dots)");
            comp = i + 1;
        } else if (is_digit(c)) {
            if (c == '0' && i == comp && i + 1 < len && is_digit(s[i + 1]))
                return fail(b, i, "UID component has a leading zero");
        } else {
            return fail_char(b, i, (unsigned char)c);
        }
    }
    if (i == start)
        return fail(b, i, i == len ? "missing UID" : "empty UID");
    if (s[i - 1] == '.')
        return fail(b, i - 1, "UID ends with a dot");
    if (out) {
        memcpy(out, s + start, i - start);
        out[i - start] = '\0';
    }
    *pos = i;
    return 0;
}

/* Matches the literal lit at *pos. */
static int expect(const char *s, size_t len, size_t *pos, const char *lit, bad *b)
{
    size_t n = strlen(lit);
    for (size_t k = 0; k < n; k++) {
        if (*pos + k >= len || s[*pos + k] != lit[k]) {
            unsigned char c = *pos + k < len ? (unsigned char)s[*pos + k] : 'x';
            if (c <= ' ' || c >= 0x7F) /* name the odd byte rather than the literal */
                return fail_char(b, *pos + k, c);
            snprintf(b->msg, sizeof b->msg, "expected \"%s\"", lit);
            b->at = *pos + k;
            return -1;
        }
    }
    *pos += n;
    return 0;
}

static int parse_line(const char *s, size_t len, filter_path *out, bad *b)
{
    static const char *const lits[] = {"/studies/", "/series/", "/instances/"};
    char *dst[3] = {out->study, out->series, out->instance};
    size_t pos = 0;
    memset(out, 0, sizeof *out);
    if (len == 0)
        return fail(b, 0, "empty line");
    for (int level = 0; level < 3; level++) {
        if (expect(s, len, &pos, lits[level], b) != 0)
            return -1;
        if (scan_uid(s, len, &pos, dst[level], b) != 0)
            return -1;
        out->depth = level + 1;
        if (pos == len)
            return 0;
    }
    return fail(b, pos, "unexpected '/' after the instance UID");
}

int filter_parse_line(const char *line, size_t len, filter_path *out, size_t *bad_column, char *why,
                      size_t whylen)
{
    filter_path tmp;
    bad b;
    if (!out)
        out = &tmp;
    if (!line)
        len = 0;
    if (parse_line(line, len, out, &b) == 0)
        return CERR_OK;
    if (bad_column)
        *bad_column = b.at + 1;
    if (why && whylen)
        snprintf(why, whylen, "%s", b.msg);
    return CERR_MALFORMED;
}

/* Whether buf holds nothing but line breaks ("\n" or "\r\n"). */
static bool only_line_breaks(const char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (buf[i] == '\n')
            continue;
        if (buf[i] == '\r' && i + 1 < len && buf[i + 1] == '\n')
            continue;
        return false;
    }
    return true;
}

int filter_parse(const char *buf, size_t len, filter_path_cb cb, void *ctx, size_t *n_paths,
                 filter_error *err)
{
    size_t count = 0, line_no = 0, off = 0;
    if (n_paths)
        *n_paths = 0;
    if (err)
        memset(err, 0, sizeof *err);
    if (!buf || only_line_breaks(buf, len))
        return CERR_OK; /* an empty filter names nothing (the whole store) */
    while (off < len) {
        const char *nl = memchr(buf + off, '\n', len - off);
        size_t end = nl ? (size_t)(nl - buf) : len;
        size_t line_len = end - off;
        line_no++;
        if (nl && line_len > 0 && buf[end - 1] == '\r')
            line_len--; /* "\r\n" */
        filter_path p;
        bad b;
        if (parse_line(buf + off, line_len, &p, &b) != 0) {
            if (err) {
                err->line = line_no;
                err->column = b.at + 1;
                snprintf(err->message, sizeof err->message, "line %zu, column %zu: %s", line_no,
                         b.at + 1, b.msg);
            }
            return CERR_MALFORMED;
        }
        count++;
        if (n_paths)
            *n_paths = count;
        if (cb) {
            int rc = cb(ctx, &p);
            if (rc)
                return rc;
        }
        off = end + 1; /* past the '\n'; the text after a final '\n' is no line */
    }
    return CERR_OK;
}

int filter_path_matches(const filter_path *p, const char *study, const char *series,
                        const char *instance)
{
    if (!p || p->depth < 1 || p->depth > 3 || !study || strcmp(p->study, study) != 0)
        return 0;
    if (p->depth >= 2 && (!series || strcmp(p->series, series) != 0))
        return 0;
    if (p->depth == 3 && (!instance || strcmp(p->instance, instance) != 0))
        return 0;
    return 1;
}

int filter_uid_valid(const char *s, size_t len)
{
    bad b;
    size_t pos = 0;
    if (!s || len == 0)
        return 0;
    /* scan_uid stops at '/', so the whole input must have been consumed. */
    return scan_uid(s, len, &pos, NULL, &b) == 0 && pos == len;
}
