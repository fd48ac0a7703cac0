/* testlib: a minimal TAP producer for the C unit tests.
 *
 *   TEST(name) { CHECK(x == 1); CHECK_EQ_STR(a, "b"); }
 *   int main(void) { RUN(name); return test_done(); }
 *
 * Each TEST prints one "ok N - name" or "not ok N - name" line; failed checks
 * print "# file:line: expression" diagnostics. tests/run.sh counts the lines.
 */
#ifndef DICOMFS_TESTLIB_H
#define DICOMFS_TESTLIB_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int test_count_, test_failed_, test_cur_failed_;

#define TEST(name) static void test_##name(void)

#define RUN(name)                                                                                  \
    do {                                                                                           \
        test_cur_failed_ = 0;                                                                      \
        test_##name();                                                                             \
        test_count_++;                                                                             \
        if (test_cur_failed_)                                                                      \
            test_failed_++;                                                                        \
        printf("%sok %d - %s\n", test_cur_failed_ ? "not " : "", test_count_, #name);              \
        fflush(stdout);                                                                            \
    } while (0)

#define CHECK(expr)                                                                                \
    do {                                                                                           \
        if (!(expr)) {                                                                             \
            test_cur_failed_ = 1;                                                                  \
            printf("# %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #expr);                      \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_) {                                                                            \
            test_cur_failed_ = 1;                                                                  \
            printf("# %s:%d: %s == %lld, expected %s == %lld\n", __FILE__, __LINE__, #a, a_, #b,   \
                   b_);                                                                            \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_STR(a, b)                                                                         \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                                   \
            test_cur_failed_ = 1;                                                                  \
            printf("# %s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__, __LINE__, #a,             \
                   a_ ? a_ : "(null)", b_ ? b_ : "(null)");                                        \
        }                                                                                          \
    } while (0)

/* An unlinked temporary file holding data[0..n), open for reading and
 * writing (offset at its end); -1 on failure. */
static inline int testlib_temp_fd(const void *data, size_t n)
{
    char path[] = "/tmp/dicomfs-test.XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    unlink(path);
    if (n && write(fd, data, n) != (ssize_t)n) {
        close(fd);
        return -1;
    }
    return fd;
}

static inline int test_done(void)
{
    printf("1..%d\n", test_count_);
    return test_failed_ ? 1 : 0;
}

#endif
