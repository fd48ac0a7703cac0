/* Tests for client/wildcard.c: gs:// URIs and the import wildcard rules. */
#include "testlib.h"
#include "wildcard.h"

#include <stdlib.h>
#include <time.h>

TEST(split_good_uris)
{
    static const struct {
        const char *uri, *bucket, *object;
    } cases[] = {
        {"gs://my-bucket/dir/x.dcm", "my-bucket", "dir/x.dcm"},
        {"gs://abc/o", "abc", "o"},
        {"gs://a.b_c-d/dir/**.dcm", "a.b_c-d", "dir/**.dcm"},
        {"gs://0bucket9/*", "0bucket9", "*"},
        {"gs://bucket/dir/sub/", "bucket", "dir/sub/"},
        {"gs://bucket/a b/ü.dcm", "bucket", "a b/ü.dcm"},
        {"gs://bucket//double", "bucket", "/double"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *b = NULL, *o = NULL, why[128] = "";
        int rc = wildcard_split_gcs_uri(cases[i].uri, &b, &o, why, sizeof why);
        if (rc)
            printf("# %s: %s\n", cases[i].uri, why);
        CHECK_EQ_INT(rc, WILDCARD_OK);
        CHECK_EQ_STR(b, cases[i].bucket);
        CHECK_EQ_STR(o, cases[i].object);
        free(b);
        free(o);
    }
}

TEST(split_bad_uris)
{
    char long_bucket[300] = "gs://";
    memset(long_bucket + 5, 'a', 223);
    strcpy(long_bucket + 5 + 223, "/o");
    char ok_bucket[300] = "gs://";
    memset(ok_bucket + 5, 'a', 222);
    strcpy(ok_bucket + 5 + 222, "/o");
    char long_object[1100] = "gs://bucket/";
    memset(long_object + 12, 'x', 1025);
    static const struct {
        const char *uri, *msg;
    } cases[] = {
        {"", "gs://"},
        {"s3://bucket/o", "gs://"},
        {"GS://bucket/o", "gs://"},
        {"gs:/bucket/o", "gs://"},
        {"gs://bucket", "no object"},
        {"gs://bucket/", "empty object"},
        {"gs:///o", "3 to 222"},
        {"gs://ab/o", "3 to 222"},
        {"gs://Bucket/o", "'B'"},
        {"gs://buc ket/o", "0x20"},
        {"gs://-bucket/o", "start and end"},
        {"gs://bucket-/o", "start and end"},
        {"gs://.bucket/o", "start and end"},
        {"gs://_bucket/o", "start and end"},
        {"gs://buc*ket/o", "'*'"},
        {"gs://bucket/a\nb", "line break"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *b = (char *)1, *o = (char *)1, why[128] = "";
        int rc = wildcard_split_gcs_uri(cases[i].uri, &b, &o, why, sizeof why);
        if (rc != WILDCARD_ERR_SYNTAX || !strstr(why, cases[i].msg))
            printf("# %s: rc %d why \"%s\"\n", cases[i].uri, rc, why);
        CHECK_EQ_INT(rc, WILDCARD_ERR_SYNTAX);
        CHECK(strstr(why, cases[i].msg) != NULL);
        CHECK(b == NULL && o == NULL);
    }
    char *b = NULL, *o = NULL;
    CHECK_EQ_INT(wildcard_split_gcs_uri(long_bucket, &b, &o, NULL, 0), WILDCARD_ERR_SYNTAX);
    CHECK_EQ_INT(wildcard_split_gcs_uri(long_object, &b, &o, NULL, 0), WILDCARD_ERR_SYNTAX);
    CHECK_EQ_INT(wildcard_split_gcs_uri(NULL, &b, &o, NULL, 0), WILDCARD_ERR_SYNTAX);
    CHECK_EQ_INT(wildcard_split_gcs_uri(ok_bucket, &b, &o, NULL, 0), WILDCARD_OK);
    CHECK(b && strlen(b) == 222);
    free(b);
    free(o);
}

TEST(validate_patterns)
{
    static const char *const good[] = {
        "x.dcm",  "dir/x.dcm", "*",       "dir/*",    "dir/*.dcm", "dir/*/x.dcm",
        "a?c",    "??",        "*/*/*",   "**",       "dir/**",    "dir/**.dcm",
        "**.dcm", "dir/**x",   "a*b*c*d", "dir/sub/", "?*?",       "dir/x**.dcm",
    };
    static const struct {
        const char *p, *msg;
    } bad[] = {
        {"", "empty"},
        {"***", "***"},
        {"dir/***", "***"},
        {"dir/**/x.dcm", "end"},
        {"**/x", "end"},
        {"dir/**.d?m", "last wildcard"},
        {"dir/**.*", "last wildcard"},
        {"dir/**/**", "last wildcard"},
        {"*/**", "only wildcard"},
        {"a?/**.dcm", "only wildcard"},
        {"**.dcm**", "last wildcard"},
        {"dir/****", "***"},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char why[128] = "";
        int rc = wildcard_validate(good[i], why, sizeof why);
        if (rc)
            printf("# %s: %s\n", good[i], why);
        CHECK_EQ_INT(rc, WILDCARD_OK);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char why[128] = "";
        int rc = wildcard_validate(bad[i].p, why, sizeof why);
        if (rc != WILDCARD_ERR_SYNTAX || !strstr(why, bad[i].msg))
            printf("# %s: rc %d why \"%s\"\n", bad[i].p, rc, why);
        CHECK_EQ_INT(rc, WILDCARD_ERR_SYNTAX);
        CHECK(strstr(why, bad[i].msg) != NULL);
        CHECK(!wildcard_match(bad[i].p, "anything"));
    }
    CHECK_EQ_INT(wildcard_validate(NULL, NULL, 0), WILDCARD_ERR_SYNTAX);
}

TEST(match_cases)
{
    static const struct {
        const char *p, *name;
        bool want;
    } cases[] = {
        {"x.dcm", "x.dcm", true},
        {"x.dcm", "x.dcmx", false},
        {"x.dcm", "dir/x.dcm", false},
        {"*", "abc", true},
        {"*", "", true},
        {"*", "dir/abc", false},
        {"dir/*", "dir/abc", true},
        {"dir/*", "dir/", true},
        {"dir/*", "dir/a/b", false},
        {"dir/*.dcm", "dir/1.dcm", true},
        {"dir/*.dcm", "dir/.dcm", true},
        {"dir/*.dcm", "dir/1.dcm.bak", false},
        {"dir/*.dcm", "dir/sub/1.dcm", false},
        {"dir/*/x.dcm", "dir/a/x.dcm", true},
        {"dir/*/x.dcm", "dir/a/b/x.dcm", false},
        {"a?c", "abc", true},
        {"a?c", "ac", false},
        {"a?c", "a/c", false},
        {"a?c",
         "a\xc3\xbc"
         "c",
         true}, /* one UTF-8 character */
        {"??", "ab", true},
        {"??", "abc", false},
        {"**", "", true},
        {"**", "a/b/c", true},
        {"dir/**", "dir/a/b/c.dcm", true},
        {"dir/**", "dir/", true},
        {"dir/**", "dirx/a", false},
        {"dir/**", "other/dir/a", false},
        {"dir/**.dcm", "dir/a/b/c.dcm", true},
        {"dir/**.dcm", "dir/c.dcm", true},
        {"dir/**.dcm", "dir/c.dcm.gz", false},
        {"dir/**.dcm", "dir/.dcm", true},
        {"dir/**.dcm", "dir.dcm", false},
        {"**.dcm", "a/b.dcm", true},
        {"a*b*c*d", "aXbYcZd", true},
        {"a*b*c*d", "abcd", true},
        {"a*b*c*d", "abdc", false},
        {"*a*", "bab", true},
        {"*abc", "ababc", true},
        {"*abc", "ababd", false},
        {"a*", "a", true},
        {"?*?", "a", false},
        {"?*?", "ab", true},
        {"*/*/*", "a/b/c", true},
        {"*/*/*", "a/b", false},
        {"*/*/*", "a/b/c/d", false},
        {"dir/sub/", "dir/sub/", true},
        {"dir/x**.dcm", "dir/xa/b.dcm", true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bool got = wildcard_match(cases[i].p, cases[i].name);
        if (got != cases[i].want)
            printf("# match(\"%s\", \"%s\") = %d\n", cases[i].p, cases[i].name, got);
        CHECK(got == cases[i].want);
    }
    CHECK(!wildcard_match(NULL, "x"));
    CHECK(!wildcard_match("x", NULL));
}

TEST(pathological_backtracking_is_fast)
{
    /* a*a*...*a*b against a long run of 'a': exponential for a naive
     * recursive matcher, quadratic at worst here. */
    char pat[200], *name = malloc(20001);
    CHECK(name != NULL);
    if (!name)
        return;
    size_t n = 0;
    for (int i = 0; i < 40; i++) {
        pat[n++] = 'a';
        pat[n++] = '*';
    }
    pat[n++] = 'b';
    pat[n] = '\0';
    memset(name, 'a', 20000);
    name[20000] = '\0';
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(!wildcard_match(pat, name));
    name[19999] = 'b';
    CHECK(wildcard_match(pat, name));
    CHECK(!wildcard_match("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*c", name));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    CHECK(secs < 1.0);
    free(name);
}

TEST(literal_prefix)
{
    CHECK_EQ_INT(wildcard_literal_prefix_len("dir/sub/*.dcm"), 8);
    CHECK_EQ_INT(wildcard_literal_prefix_len("dir/**"), 4);
    CHECK_EQ_INT(wildcard_literal_prefix_len("dir/a?c"), 5);
    CHECK_EQ_INT(wildcard_literal_prefix_len("x.dcm"), 5);
    CHECK_EQ_INT(wildcard_literal_prefix_len("*"), 0);
    CHECK_EQ_INT(wildcard_literal_prefix_len(""), 0);
    CHECK_EQ_INT(wildcard_literal_prefix_len(NULL), 0);
}

int main(void)
{
    RUN(split_good_uris);
    RUN(split_bad_uris);
    RUN(validate_patterns);
    RUN(match_cases);
    RUN(pathological_backtracking_is_fast);
    RUN(literal_prefix);
    return test_done();
}
