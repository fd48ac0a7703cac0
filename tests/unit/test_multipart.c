/* Tests for client/multipart.c: multipart/related bodies. */
#include "multipart.h"
#include "testlib.h"

#include <stdlib.h>

typedef struct collected {
    int n;
    multipart_part parts[8];
    int stop_at;
} collected;

static int collect(void *ctx, const multipart_part *p)
{
    collected *c = ctx;
    if (c->n < 8)
        c->parts[c->n] = *p;
    c->n++;
    return c->stop_at && c->n == c->stop_at ? 42 : 0;
}

/* Parses a copy of s with no NUL after it (ASan catches any read past). */
static int parse(const char *s, size_t len, const char *boundary, collected *c, char *why)
{
    memset(c, 0, sizeof *c);
    char *copy = malloc(len ? len : 1);
    memcpy(copy, s, len);
    int rc = multipart_parse(copy, len, boundary, collect, c, why, 160);
    /* Parts point into the copy: turn them into offsets into s. */
    for (int i = 0; i < c->n && i < 8; i++) {
        c->parts[i].headers = s + (c->parts[i].headers - copy);
        c->parts[i].body = s + (c->parts[i].body - copy);
    }
    free(copy);
    return rc;
}

static int body_is(const multipart_part *p, const char *want)
{
    return p->body_len == strlen(want) && memcmp(p->body, want, p->body_len) == 0;
}

#define S(x) x, sizeof(x) - 1

TEST(crlf_two_parts)
{
    static const char b[] = "--XyZ\r\n"
                            "Content-Type: application/dicom\r\n"
                            "\r\n"
                            "DICM\0binary\r\nwith lines\r\n" /* the body ends in CRLF */
                            "\r\n--XyZ\r\n"
                            "Content-Type: application/json\r\n"
                            "Content-Length: 2\r\n"
                            "\r\n"
                            "{}\r\n"
                            "--XyZ--\r\n";
    collected c;
    char why[160] = "";
    CHECK_EQ_INT(parse(S(b), "XyZ", &c, why), CERR_OK);
    CHECK_EQ_INT(c.n, 2);
    CHECK_EQ_INT(c.parts[0].body_len, 25);
    CHECK(memcmp(c.parts[0].body, "DICM\0binary\r\nwith lines\r\n", 25) == 0);
    CHECK(body_is(&c.parts[1], "{}"));
    char v[64];
    CHECK_EQ_INT(multipart_part_header(&c.parts[0], "content-type", v, sizeof v), CERR_OK);
    CHECK_EQ_STR(v, "application/dicom");
    CHECK_EQ_INT(multipart_part_header(&c.parts[1], "CONTENT-LENGTH", v, sizeof v), CERR_OK);
    CHECK_EQ_STR(v, "2");
    CHECK_EQ_INT(multipart_part_header(&c.parts[0], "Content-Length", v, sizeof v), CERR_MALFORMED);
}

TEST(lf_only)
{
    static const char b[] = "--b\nContent-Type: text/plain\n\nhello\n--b\n\nno headers\n--b--\n";
    collected c;
    char why[160] = "";
    CHECK_EQ_INT(parse(S(b), "b", &c, why), CERR_OK);
    CHECK_EQ_INT(c.n, 2);
    CHECK(body_is(&c.parts[0], "hello"));
    CHECK_EQ_INT(c.parts[1].headers_len, 0);
    CHECK(body_is(&c.parts[1], "no headers"));
}

TEST(preamble_epilogue_padding)
{
    static const char b[] = "This is the preamble --b not a delimiter\r\n"
                            "--b  \t\r\n"
                            "X-A: 1\r\n"
                            "\r\n"
                            "one\r\n"
                            "--bb is not it either\r\n"
                            "--b\r\n"
                            "X-A: 2\r\n"
                            "\r\n"
                            "two\r\n"
                            "--b-- \r\n"
                            "epilogue --b\r\n--b\r\n";
    collected c;
    char why[160] = "";
    CHECK_EQ_INT(parse(S(b), "b", &c, why), CERR_OK);
    CHECK_EQ_INT(c.n, 2);
    CHECK(body_is(&c.parts[0], "one\r\n--bb is not it either"));
    CHECK(body_is(&c.parts[1], "two"));
}

TEST(close_at_end_without_line_break)
{
    static const char b[] = "--b\r\n\r\nx\r\n--b--";
    collected c;
    char why[160] = "";
    CHECK_EQ_INT(parse(S(b), "b", &c, why), CERR_OK);
    CHECK_EQ_INT(c.n, 1);
    CHECK(body_is(&c.parts[0], "x"));
}

TEST(empty_bodies_and_headers_only)
{
    /* headers then the delimiter: no body at all (RFC 2046 allows it) */
    static const char b[] = "--b\r\nA: 1\r\n--b\r\nA: 2\r\n\r\n--b\r\n\r\n\r\n--b--\r\n";
    collected c;
    char why[160] = "";
    CHECK_EQ_INT(parse(S(b), "b", &c, why), CERR_OK);
    CHECK_EQ_INT(c.n, 3);
    CHECK_EQ_INT(c.parts[0].body_len, 0);
    char v[8];
    CHECK_EQ_INT(multipart_part_header(&c.parts[0], "a", v, sizeof v), CERR_OK);
    CHECK_EQ_STR(v, "1");
    CHECK_EQ_INT(c.parts[1].body_len, 0);
    CHECK_EQ_INT(c.parts[2].body_len, 0);
    CHECK_EQ_INT(c.parts[2].headers_len, 0);
}

TEST(only_close_delimiter)
{
    collected c;
    char why[160] = "";
    CHECK_EQ_INT(parse(S("--b--\r\n"), "b", &c, why), CERR_OK);
    CHECK_EQ_INT(c.n, 0);
}

TEST(bad_bodies)
{
    static const struct {
        const char *body;
        size_t len;
        const char *boundary, *msg;
    } cases[] = {
        {S("--b\r\n\r\nx\r\n"), "b", "no closing delimiter"},
        {S("--b\r\n\r\nx\r\n--b\r\n\r\ny"), "b", "no closing delimiter"},
        {S("--b\r\n\r\nx\r\n--b"), "b", "no closing delimiter"},
        {S("hello world"), "b", "no delimiter"},
        {S(""), "b", "no delimiter"},
        {S("x--b\r\n\r\nx--b--"), "b", "no delimiter"},
        {S("--b\r\n\r\nx"), "", "no multipart boundary"},
        {S("--b\r\n\r\nx"), NULL, "no multipart boundary"},
        {S("--b\r\nnot a header\r\n\r\nx\r\n--b--"), "b", "no ':'"},
        {S("--b\r\n\r\nx\r\n--b--x"), "b", "no closing delimiter"},
        {S("--bx\r\n\r\nx\r\n--bx--"), "b", "no delimiter"},
    };
    char longb[80];
    memset(longb, 'a', 71);
    longb[71] = '\0';
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        collected c;
        char why[160] = "";
        int rc = parse(cases[i].body, cases[i].len, cases[i].boundary, &c, why);
        if (rc != CERR_MALFORMED || !strstr(why, cases[i].msg))
            printf("# case %zu: rc %d why \"%s\"\n", i, rc, why);
        CHECK_EQ_INT(rc, CERR_MALFORMED);
        CHECK(strstr(why, cases[i].msg) != NULL);
    }
    collected c;
    char why[160] = "";
    CHECK_EQ_INT(parse(S("--b--"), longb, &c, why), CERR_MALFORMED);
    CHECK(strstr(why, "longer than 70") != NULL);
    CHECK_EQ_INT(multipart_parse(NULL, 0, "b", NULL, NULL, NULL, 0), CERR_MALFORMED);
}

TEST(callback_stops)
{
    static const char b[] = "--b\r\n\r\n1\r\n--b\r\n\r\n2\r\n--b\r\n\r\n3\r\n--b--";
    collected c;
    memset(&c, 0, sizeof c);
    c.stop_at = 2;
    CHECK_EQ_INT(multipart_parse(b, sizeof b - 1, "b", collect, &c, NULL, 0), 42);
    CHECK_EQ_INT(c.n, 2);
}

TEST(content_type_params)
{
    static const struct {
        const char *ct, *param, *want;
    } cases[] = {
        {"multipart/related; type=\"application/dicom\"; boundary=abc", "boundary", "abc"},
        {"multipart/related; type=\"application/dicom\"; boundary=abc", "type",
         "application/dicom"},
        {"multipart/related;boundary=\"a b;c=d\"", "boundary", "a b;c=d"},
        {"multipart/related; type=\"x; boundary=wrong\"; boundary=right", "boundary", "right"},
        {"multipart/related; BOUNDARY=up", "boundary", "up"},
        {"multipart/related; boundary = spaced ; type=x", "boundary", "spaced"},
        {"multipart/related; boundary=\"q\\\"uote\"", "boundary", "q\"uote"},
        {"multipart/related; flag; boundary=z", "boundary", "z"},
        {"multipart/related; boundary=\"\"", "boundary", ""},
        {"multipart/related; boundary=end", "boundary", "end"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *v = multipart_content_type_param(cases[i].ct, cases[i].param);
        CHECK_EQ_STR(v, cases[i].want);
        free(v);
    }
    static const struct {
        const char *ct, *param;
    } none[] = {
        {"multipart/related", "boundary"},
        {"multipart/related; type=x", "boundary"},
        {"multipart/related; boundary=\"unterminated", "boundary"},
        {"boundary=abc", "boundary"}, /* the media type is not a parameter */
        {"multipart/related; xboundary=abc", "boundary"},
        {NULL, "boundary"},
        {"multipart/related; boundary=a", NULL},
    };
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++) {
        char *v = multipart_content_type_param(none[i].ct, none[i].param);
        if (v)
            printf("# case %zu: got \"%s\"\n", i, v);
        CHECK(v == NULL);
        free(v);
    }
}

TEST(part_header_lookup)
{
    static const char h[] = "Content-Type : application/dicom; transfer-syntax=*  \r\n"
                            "X-Folded: one\r\n"
                            "  two\r\n"
                            "X-Dup: first\n"
                            "X-Dup: second\r\n"
                            "Bad line without colon\r\n"
                            "X-Last: last";
    char *copy = malloc(sizeof h - 1);
    memcpy(copy, h, sizeof h - 1);
    multipart_part p = {.headers = copy, .headers_len = sizeof h - 1};
    char v[64];
    CHECK_EQ_INT(multipart_part_header(&p, "content-type", v, sizeof v), CERR_OK);
    CHECK_EQ_STR(v, "application/dicom; transfer-syntax=*");
    CHECK_EQ_INT(multipart_part_header(&p, "x-folded", v, sizeof v), CERR_OK);
    CHECK_EQ_STR(v, "one two");
    CHECK_EQ_INT(multipart_part_header(&p, "X-DUP", v, sizeof v), CERR_OK);
    CHECK_EQ_STR(v, "first");
    CHECK_EQ_INT(multipart_part_header(&p, "x-last", v, sizeof v), CERR_OK);
    CHECK_EQ_STR(v, "last");
    CHECK_EQ_INT(multipart_part_header(&p, "x-missing", v, sizeof v), CERR_MALFORMED);
    CHECK_EQ_INT(multipart_part_header(&p, "content", v, sizeof v), CERR_MALFORMED);
    char small[5];
    CHECK_EQ_INT(multipart_part_header(&p, "content-type", small, sizeof small), CERR_NOMEM);
    free(copy);
}

int main(void)
{
    RUN(crlf_two_parts);
    RUN(lf_only);
    RUN(preamble_epilogue_padding);
    RUN(close_at_end_without_line_break);
    RUN(empty_bodies_and_headers_only);
    RUN(only_close_delimiter);
    RUN(bad_bodies);
    RUN(callback_stops);
    RUN(content_type_params);
    RUN(part_header_lookup);
    return test_done();
}
