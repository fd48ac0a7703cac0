/* Tests for client/util.c: the helpers shared by client/, fs/ and the emulator. */
#include "testlib.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char *vfmt(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = util_vasprintf(fmt, ap);
    va_end(ap);
    return s;
}

TEST(asprintf_formats)
{
    char *s = util_asprintf("%s-%d", "a", 42);
    CHECK_EQ_STR(s, "a-42");
    free(s);
    s = vfmt("%s/%u", "b", 7u);
    CHECK_EQ_STR(s, "b/7");
    free(s);
}

TEST(crc32c_known_values)
{
    /* RFC 3720 B.4 check value of "123456789", and chaining. */
    CHECK(util_crc32c(0, "123456789", 9) == 0xE3069283u);
    CHECK(util_crc32c(util_crc32c(0, "1234", 4), "56789", 5) == 0xE3069283u);
    unsigned char zeros[32] = {0};
    CHECK(util_crc32c(0, zeros, sizeof zeros) == 0x8A9136AAu);
}

TEST(fnv1a_known_values)
{
    CHECK(util_fnv1a_str(UTIL_FNV1A_INIT, "") == UTIL_FNV1A_INIT);
    CHECK(util_fnv1a_str(UTIL_FNV1A_INIT, "a") == (UTIL_FNV1A_INIT ^ 'a') * 1099511628211ull);
    CHECK(util_fnv1a_str(0xcbf29ce484222325ull, "a") == 0xaf63dc4c8601ec8cull); /* standard */
    CHECK(util_fnv1a(UTIL_FNV1A_INIT, "foobar", 6) == util_fnv1a_str(UTIL_FNV1A_INIT, "foobar"));
}

TEST(rfc3339_digits)
{
    char b[64];
    util_rfc3339(b, sizeof b, 86400 + 3661, 123456789, 9);
    CHECK_EQ_STR(b, "1970-01-02T01:01:01.123456789Z");
    util_rfc3339(b, sizeof b, 86400 + 3661, 123456789, 3);
    CHECK_EQ_STR(b, "1970-01-02T01:01:01.123Z");
    util_rfc3339(b, sizeof b, 0, 999999999, 0);
    CHECK_EQ_STR(b, "1970-01-01T00:00:00Z");
}

TEST(base64_round_trip)
{
    /* RFC 4648 section 10 vectors, standard alphabet with padding. */
    static const char *plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *enc[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        char *e = util_b64_encode(plain[i], strlen(plain[i]), false);
        CHECK_EQ_STR(e, enc[i]);
        unsigned char out[16];
        long n = util_b64_decode(e, strlen(e), out, sizeof out);
        CHECK_EQ_INT(n, (long)strlen(plain[i]));
        CHECK(memcmp(out, plain[i], (size_t)n) == 0);
        free(e);
    }
    unsigned char raw[] = {0xfb, 0xff};
    char *u = util_b64_encode(raw, sizeof raw, true);
    CHECK_EQ_STR(u, "-_8");
    free(u);
    unsigned char out[4];
    CHECK_EQ_INT(util_b64_decode("Zm9v", 4, out, 2), -1); /* does not fit */
    CHECK_EQ_INT(util_b64_decode("Zm!v", 4, out, sizeof out), -1);
}

TEST(mkdirs_and_atomic_write)
{
    char base[] = "/tmp/dicomfs-test-util.XXXXXX";
    CHECK(mkdtemp(base) != NULL);
    char *dir = util_asprintf("%s/a/b/c", base);
    CHECK_EQ_INT(util_mkdirs(dir, 0700), 0);
    CHECK_EQ_INT(util_mkdirs(dir, 0700), 0); /* exists: fine */
    struct stat st;
    CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode));
    char *file = util_asprintf("%s/f", dir);
    CHECK_EQ_INT(util_write_atomic(file, "one", 3, 0600), 0);
    CHECK_EQ_INT(util_write_atomic(file, "second", 6, 0640), 0);
    CHECK(stat(file, &st) == 0 && st.st_size == 6 && (st.st_mode & 0777) == 0640);
    CHECK_EQ_INT(util_write_durable(file, "durable", 7, 0600), 0);
    CHECK(stat(file, &st) == 0 && st.st_size == 7 && (st.st_mode & 0777) == 0600);
    char *missing = util_asprintf("%s/nodir/f", base);
    CHECK_EQ_INT(util_write_atomic(missing, "x", 1, 0600), -ENOENT);
    unlink(file);
    for (int i = 0; i < 3; i++) {
        rmdir(dir);
        *strrchr(dir, '/') = '\0';
    }
    CHECK(rmdir(base) == 0); /* no temporary file left behind */
    free(missing);
    free(file);
    free(dir);
}

TEST(utc_basic_digits)
{
    char b[40];
    util_utc_basic(b, sizeof b, 1700000000, 123456789, 0);
    CHECK_EQ_STR(b, "20231114T221320Z");
    util_utc_basic(b, sizeof b, 1700000000, 123456789, 3);
    CHECK_EQ_STR(b, "20231114T221320.123Z");
}

TEST(clocks_and_timed_waits)
{
    double s = util_now_s();
    int64_t ns = util_mono_ns();
    double gap = (double)ns / 1e9 - s;
    CHECK(ns > 0 && gap > -1.0 && gap < 1.0);
    struct timespec now, at = util_timespec_in(CLOCK_REALTIME, 1.75);
    clock_gettime(CLOCK_REALTIME, &now);
    double d = (double)(at.tv_sec - now.tv_sec) + (double)(at.tv_nsec - now.tv_nsec) / 1e9;
    CHECK(d > 1.5 && d <= 1.75);
    CHECK(at.tv_nsec >= 0 && at.tv_nsec < 1000000000L);
    at = util_timespec_in(CLOCK_MONOTONIC, -5); /* the past is now */
    CHECK(at.tv_nsec >= 0 && at.tv_nsec < 1000000000L);
}

TEST(grow_doubles_from_first)
{
    int *v = NULL;
    size_t n = 0, cap = 0;
    for (int i = 0; i < 100; i++) {
        int *nv = util_grow(v, n, &cap, sizeof *nv, 4);
        CHECK(nv != NULL);
        if (!nv)
            break;
        v = nv;
        v[n++] = i;
    }
    CHECK_EQ_INT((long long)cap, 128); /* 4, 8, ..., 128 */
    CHECK_EQ_INT(v[99], 99);
    CHECK(util_grow(v, n, &cap, sizeof *v, 4) == v); /* room left: the same array */
    size_t huge = SIZE_MAX / 2 + 1;
    CHECK(util_grow(v, huge, &huge, sizeof *v, 4) == NULL); /* too large: refused */
    CHECK(huge == SIZE_MAX / 2 + 1);
    free(v);
}

int main(void)
{
    RUN(asprintf_formats);
    RUN(crc32c_known_values);
    RUN(fnv1a_known_values);
    RUN(rfc3339_digits);
    RUN(base64_round_trip);
    RUN(mkdirs_and_atomic_write);
    RUN(utc_basic_digits);
    RUN(clocks_and_timed_waits);
    RUN(grow_doubles_from_first);
    return test_done();
}
