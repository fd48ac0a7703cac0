/* Tests for client/filter.c: the export filter-file grammar. */
#include "filter.h"
#include "testlib.h"

#include <stdlib.h>
#include <time.h>

static const char *const good_uids[] = {
    "0",
    "1",
    "9",
    "10",
    "1.2",
    "0.0",
    "1.0.2",
    "1.2.840.10008.5.1.4.1.1.2",
    "2.25.329800735698586629295641978511506172918",
    "1.20.300.4000",
    "10.0.10",
    "1.22222222222222222222222222222222222222222222222222222222222222", /* 64 */
    "0.1.2.3.4.5.6.7.8.9",
    "999999999999",
};
#define N_GOOD (sizeof good_uids / sizeof good_uids[0])

TEST(good_lines_every_depth)
{
    CHECK_EQ_INT(strlen(good_uids[11]), 64);
    int checked = 0;
    for (size_t i = 0; i < N_GOOD; i++) {
        const char *a = good_uids[i], *b = good_uids[(i + 3) % N_GOOD],
                   *c = good_uids[(i + 7) % N_GOOD];
        char line[300];
        for (int depth = 1; depth <= 3; depth++) {
            if (depth == 1)
                snprintf(line, sizeof line, "/studies/%s", a);
            else if (depth == 2)
                snprintf(line, sizeof line, "/studies/%s/series/%s", a, b);
            else
                snprintf(line, sizeof line, "/studies/%s/series/%s/instances/%s", a, b, c);
            filter_path p;
            size_t col = 0;
            char why[128] = "";
            int rc = filter_parse_line(line, strlen(line), &p, &col, why, sizeof why);
            if (rc != CERR_OK)
                printf("# %s: column %zu: %s\n", line, col, why);
            CHECK_EQ_INT(rc, CERR_OK);
            CHECK_EQ_INT(p.depth, depth);
            CHECK_EQ_STR(p.study, a);
            CHECK_EQ_STR(p.series, depth >= 2 ? b : "");
            CHECK_EQ_STR(p.instance, depth == 3 ? c : "");
            checked++;
        }
    }
    CHECK(checked >= 40);
}

typedef struct bad_case {
    const char *line;
    size_t len; /* 0: strlen */
    size_t column;
    const char *msg_part;
} bad_case;

#define L(s) s, sizeof(s) - 1

static const bad_case bad_lines[] = {
    {"", 0, 1, "empty line"},
    {L("studies/1"), 1, "expected \"/studies/\""},
    {L("/Studies/1"), 2, "expected"},
    {L("/studies1"), 9, "expected"},
    {L("/studies/"), 10, "missing UID"},
    {L("/studies//series/1"), 10, "empty UID"},
    {L("/studies/.1"), 10, "starts with a dot"},
    {L("/studies/1."), 11, "ends with a dot"},
    {L("/studies/1..2"), 12, "empty component"},
    {L("/studies/01"), 10, "leading zero"},
    {L("/studies/1.02"), 12, "leading zero"},
    {L("/studies/1.2.00"), 14, "leading zero"},
    {L("/studies/1 "), 11, "unexpected space"},
    {L(" /studies/1"), 1, "unexpected space"},
    {L("/studies/1\t"), 11, "tab"},
    {L("/studies/1a"), 11, "'a'"},
    {L("/studies/1.2.3/"), 16, "expected \"/series/\""},
    {L("/studies/1/series/"), 19, "missing UID"},
    {L("/studies/1/series/2/"), 21, "expected \"/instances/\""},
    {L("/studies/1/series/2/instances/"), 31, "missing UID"},
    {L("/studies/1/series/2/instances/3/"), 32, "after the instance UID"},
    {L("/studies/1/series/2/instances/3/x"), 32, "after the instance UID"},
    {L("/studies/1/serie/2"), 17, "expected \"/series/\""},
    {L("/studies/1/instances/2"), 12, "expected \"/series/\""},
    {L("/studies/1/series/2/series/3"), 21, "expected \"/instances/\""},
    {L("/studies/1/Series/2"), 12, "expected"},
    {L("/studies/11111111111111111111111111111111111111111111111111111111111111111"), 74,
     "longer than 64"},
    {L("/studies/1.2.1.2.1.2.1.2.1.2.1.2.1.2.1.2.1.2.1.2.1.2.1.2.1.2.1.2.1.2.1.2.1"), 74,
     "longer than 64"},
    {L("/studies/1/series/11111111111111111111111111111111111111111111111111111111111111111"), 83,
     "longer than 64"},
    {L("/studies/1\0"), 11, "NUL"},
    {L("/studies/1\r"), 11, "carriage return"},
    {L("/studies/1\xff"), 11, "0xFF"},
    {L("/studies/1.2.3/series/1.2.3/instances/1.2.3 "), 44, "space"},
    {L("/studies/-1"), 10, "'-'"},
    {L("/studies/+1"), 10, "'+'"},
    {L("/studies/1e5"), 11, "'e'"},
    {L("//studies/1"), 2, "expected"},
    {L("/studies/1//series/2"), 12, "expected"},
    {L("/studies/1.2.3.0004"), 16, "leading zero"},
    {L("/studies/00"), 10, "leading zero"},
    {L("/studies/1/series/01"), 19, "leading zero"},
    {L("/studies/1/series/2/instances/01"), 31, "leading zero"},
    {L("/studies/1/series/.2"), 19, "starts with a dot"},
    {L("/studies/1/series/2."), 20, "ends with a dot"},
    {L("/studies/1/series/2..3"), 21, "empty component"},
    {L("/studies/1/series/2/instances/3."), 32, "ends with a dot"},
    {L("/studies/1/series/2/instances/.3"), 31, "starts with a dot"},
    {L("/studies/1/series/2/instances/3..4"), 33, "empty component"},
    {L("/STUDIES/1"), 2, "expected"},
    {L("/studies/1.2.3;"), 15, "';'"},
    {L("/studies/1,2"), 11, "','"},
    {L("/studies/1 /series/2"), 11, "space"},
    {L("/studies/ 1"), 10, "space"},
    {L("/studies/1/series/ 2"), 19, "space"},
    {L("\t/studies/1"), 1, "tab"},
    {L("/studies/1/series/2/instances/3\0"), 32, "NUL"},
    {L("/studies/."), 10, "starts with a dot"},
    {L("/studies/.."), 10, "starts with a dot"},
    {L("/studies/1/"), 12, "expected \"/series/\""},
    {L("/stud"), 6, "expected"},
    {L("/"), 2, "expected"},
    {L("/studies/1/series"), 18, "expected"},
    {L("/studies/1.2.3/series/4.5.6/instances"), 38, "expected"},
    {L("/studies/\xc3\xa4"), 10, "0xC3"},
    {L("/studies/1/series/2/instances/3/instances/4"), 32, "after the instance UID"},
    {L("\0/studies/1"), 1, "NUL"},
    {L("/studies/1\r\n"), 11, "carriage return"},
};
#define N_BAD (sizeof bad_lines / sizeof bad_lines[0])

TEST(bad_lines_report_column)
{
    CHECK(N_BAD >= 60);
    for (size_t i = 0; i < N_BAD; i++) {
        const bad_case *c = &bad_lines[i];
        filter_path p;
        size_t col = 0;
        char why[128] = "";
        int rc = filter_parse_line(c->line, c->len, &p, &col, why, sizeof why);
        if (rc != CERR_MALFORMED || col != c->column || !strstr(why, c->msg_part)) {
            printf("# bad case %zu: rc %d column %zu (want %zu) why \"%s\" (want \"%s\")\n", i, rc,
                   col, c->column, why, c->msg_part);
            CHECK(0);
        }
    }
}

/* Every bad line also fails inside a file, on the right line and column. */
TEST(bad_lines_in_a_file)
{
    for (size_t i = 0; i < N_BAD; i++) {
        const bad_case *c = &bad_lines[i];
        if (c->len == 0 || memchr(c->line, '\n', c->len) || c->line[c->len - 1] == '\r')
            continue;
        char buf[400];
        size_t n = (size_t)snprintf(buf, sizeof buf, "/studies/1\r\n/studies/2/series/3\n");
        memcpy(buf + n, c->line, c->len);
        n += c->len;
        memcpy(buf + n, "\n/studies/4\n", 12);
        n += 12;
        filter_error err;
        size_t np = 99;
        int rc = filter_parse(buf, n, NULL, NULL, &np, &err);
        CHECK_EQ_INT(rc, CERR_MALFORMED);
        CHECK_EQ_INT(err.line, 3);
        CHECK_EQ_INT(err.column, c->column);
        CHECK_EQ_INT(np, 2);
    }
}

typedef struct collect {
    int n;
    filter_path paths[8];
    int stop_at;
} collect;

static int collect_cb(void *ctx, const filter_path *p)
{
    collect *c = ctx;
    if (c->n < 8)
        c->paths[c->n] = *p;
    c->n++;
    return c->stop_at && c->n == c->stop_at ? 7 : 0;
}

static int parse_str(const char *s, collect *c, size_t *np, filter_error *err)
{
    memset(c, 0, sizeof *c);
    return filter_parse(s, strlen(s), collect_cb, c, np, err);
}

TEST(empty_and_only_line_breaks_are_valid)
{
    collect c;
    size_t np = 99;
    filter_error err;
    CHECK_EQ_INT(parse_str("", &c, &np, &err), CERR_OK);
    CHECK_EQ_INT(np, 0);
    CHECK_EQ_INT(parse_str("\n", &c, &np, &err), CERR_OK);
    CHECK_EQ_INT(parse_str("\r\n\n\r\n", &c, &np, &err), CERR_OK);
    CHECK_EQ_INT(c.n, 0);
    CHECK_EQ_INT(filter_parse(NULL, 0, NULL, NULL, &np, NULL), CERR_OK);
}

TEST(lf_crlf_and_final_line_without_break)
{
    collect c;
    size_t np = 0;
    filter_error err;
    CHECK_EQ_INT(parse_str("/studies/1\n/studies/2/series/3\r\n/studies/4/series/5/instances/6", &c,
                           &np, &err),
                 CERR_OK);
    CHECK_EQ_INT(np, 3);
    CHECK_EQ_INT(c.n, 3);
    CHECK_EQ_STR(c.paths[0].study, "1");
    CHECK_EQ_INT(c.paths[1].depth, 2);
    CHECK_EQ_STR(c.paths[1].series, "3");
    CHECK_EQ_STR(c.paths[2].instance, "6");
    CHECK_EQ_INT(parse_str("/studies/1\r\n/studies/2\r\n", &c, &np, &err), CERR_OK);
    CHECK_EQ_INT(np, 2);
    CHECK_EQ_INT(parse_str("/studies/1\n", &c, &np, &err), CERR_OK);
    CHECK_EQ_INT(np, 1);
}

TEST(blank_lines_and_lone_cr)
{
    collect c;
    size_t np;
    filter_error err;
    CHECK_EQ_INT(parse_str("/studies/1\n\n/studies/2\n", &c, &np, &err), CERR_MALFORMED);
    CHECK_EQ_INT(err.line, 2);
    CHECK_EQ_INT(err.column, 1);
    CHECK(strstr(err.message, "empty line") != NULL);
    CHECK_EQ_INT(parse_str("/studies/1\n\n", &c, &np, &err), CERR_MALFORMED);
    CHECK_EQ_INT(err.line, 2);
    CHECK_EQ_INT(parse_str("\n/studies/1\n", &c, &np, &err), CERR_MALFORMED);
    CHECK_EQ_INT(err.line, 1);
    CHECK_EQ_INT(parse_str("/studies/1\r\n\r\n/studies/2", &c, &np, &err), CERR_MALFORMED);
    CHECK_EQ_INT(err.line, 2);
    CHECK_EQ_INT(parse_str("/studies/1\r/studies/2\n", &c, &np, &err), CERR_MALFORMED);
    CHECK_EQ_INT(err.line, 1);
    CHECK_EQ_INT(err.column, 11);
    CHECK(strstr(err.message, "carriage return") != NULL);
    CHECK_EQ_INT(parse_str("/studies/1\r\r\n", &c, &np, &err), CERR_MALFORMED);
    CHECK_EQ_INT(err.column, 11);
    CHECK_EQ_INT(parse_str("/studies/1\n\r", &c, &np, &err), CERR_MALFORMED);
    CHECK_EQ_INT(err.line, 2);
    CHECK_EQ_INT(err.column, 1);
}

TEST(error_message_names_line_and_column)
{
    collect c;
    size_t np;
    filter_error err;
    CHECK_EQ_INT(parse_str("/studies/1\n/studies/2\n/studies/1.2/series/1.02\n", &c, &np, &err),
                 CERR_MALFORMED);
    CHECK_EQ_STR(err.message, "line 3, column 23: UID component has a leading zero");
    CHECK_EQ_INT(c.n, 2); /* the callback saw the good lines before it */
}

TEST(nul_byte_in_file)
{
    static const char buf[] = "/studies/1\n/studies/2\0\n";
    filter_error err;
    CHECK_EQ_INT(filter_parse(buf, sizeof buf - 1, NULL, NULL, NULL, &err), CERR_MALFORMED);
    CHECK_EQ_INT(err.line, 2);
    CHECK_EQ_INT(err.column, 11);
}

TEST(callback_stops_parsing)
{
    collect c;
    size_t np;
    filter_error err;
    memset(&c, 0, sizeof c);
    c.stop_at = 2;
    const char *s = "/studies/1\n/studies/2\n/studies/3\n";
    CHECK_EQ_INT(filter_parse(s, strlen(s), collect_cb, &c, &np, &err), 7);
    CHECK_EQ_INT(c.n, 2);
    CHECK_EQ_INT(np, 2);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

TEST(ten_megabyte_lines_rejected_fast)
{
    size_t n = 10 * 1024 * 1024;
    char *buf = malloc(n);
    CHECK(buf != NULL);
    if (!buf)
        return;
    filter_error err;
    /* all digits: too long at column 74 */
    memcpy(buf, "/studies/", 9);
    memset(buf + 9, '1', n - 9);
    double t0 = now();
    CHECK_EQ_INT(filter_parse(buf, n, NULL, NULL, NULL, &err), CERR_MALFORMED);
    CHECK_EQ_INT(err.column, 74);
    /* a good UID followed by 10 MB of spaces, then a line break */
    memcpy(buf, "/studies/1.2", 12);
    memset(buf + 12, ' ', n - 13);
    buf[n - 1] = '\n';
    CHECK_EQ_INT(filter_parse(buf, n, NULL, NULL, NULL, &err), CERR_MALFORMED);
    CHECK_EQ_INT(err.column, 13);
    /* 10 MB of valid lines */
    size_t off = 0, lines = 0;
    while (off + 40 < n) {
        off += (size_t)snprintf(buf + off, 41, "/studies/1.2.%zu/series/3.4\n", lines + 1);
        lines++;
    }
    size_t np = 0;
    CHECK_EQ_INT(filter_parse(buf, off, NULL, NULL, &np, &err), CERR_OK);
    CHECK_EQ_INT(np, lines);
    double secs = now() - t0;
    CHECK(secs < 2.0);
    free(buf);
}

TEST(path_matches)
{
    filter_path p;
    CHECK_EQ_INT(filter_parse_line(L("/studies/1.2"), &p, NULL, NULL, 0), CERR_OK);
    CHECK(filter_path_matches(&p, "1.2", "3", "4"));
    CHECK(filter_path_matches(&p, "1.2", NULL, NULL));
    CHECK(!filter_path_matches(&p, "1.20", "3", "4"));
    CHECK(!filter_path_matches(&p, "1", "3", "4"));
    CHECK_EQ_INT(filter_parse_line(L("/studies/1.2/series/3"), &p, NULL, NULL, 0), CERR_OK);
    CHECK(filter_path_matches(&p, "1.2", "3", "4"));
    CHECK(!filter_path_matches(&p, "1.2", "33", "4"));
    CHECK(!filter_path_matches(&p, "1.2", NULL, NULL));
    CHECK(!filter_path_matches(&p, "9", "3", "4"));
    CHECK_EQ_INT(filter_parse_line(L("/studies/1.2/series/3/instances/4"), &p, NULL, NULL, 0),
                 CERR_OK);
    CHECK(filter_path_matches(&p, "1.2", "3", "4"));
    CHECK(!filter_path_matches(&p, "1.2", "3", "5"));
    CHECK(!filter_path_matches(&p, "1.2", "3", NULL));
    CHECK(!filter_path_matches(NULL, "1.2", "3", "4"));
}

TEST(uid_valid)
{
    for (size_t i = 0; i < N_GOOD; i++)
        CHECK(filter_uid_valid(good_uids[i], strlen(good_uids[i])));
    static const char *const bad[] = {
        "",     ".",
        "1.",   ".1",
        "1..2", "01",
        "1.01", "1/2",
        "1 ",   "a",
        "1.2a", "-1",
        "00",   "1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18.19.20.21.22.23.24.25"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (filter_uid_valid(bad[i], strlen(bad[i])))
            printf("# \"%s\" accepted\n", bad[i]);
        CHECK(!filter_uid_valid(bad[i], strlen(bad[i])));
    }
    CHECK(!filter_uid_valid(NULL, 0));
    CHECK(filter_uid_valid("1.2xyz", 3)); /* only len bytes count */
    CHECK(!filter_uid_valid("1.2\0", 4));
}

int main(void)
{
    RUN(good_lines_every_depth);
    RUN(bad_lines_report_column);
    RUN(bad_lines_in_a_file);
    RUN(empty_and_only_line_breaks_are_valid);
    RUN(lf_crlf_and_final_line_without_break);
    RUN(blank_lines_and_lone_cr);
    RUN(error_message_names_line_and_column);
    RUN(nul_byte_in_file);
    RUN(callback_stops_parsing);
    RUN(ten_megabyte_lines_rejected_fast);
    RUN(path_matches);
    RUN(uid_valid);
    return test_done();
}
