/* Unit tests for client/log.c: level filter and the stderr line format. */
#include "log.h"
#include "testlib.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Runs fn with stderr redirected to a temp file; returns what was written. */
static char *capture_stderr(void (*fn)(void))
{
    char path[] = "/tmp/test_log.XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return NULL;
    unlink(path);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    fn();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    off_t n = lseek(fd, 0, SEEK_END);
    char *s = calloc(1, (size_t)n + 1);
    if (s && n > 0 && pread(fd, s, (size_t)n, 0) != n)
        s[0] = '\0';
    close(fd);
    return s;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; s && *s; s++)
        n += *s == '\n';
    return n;
}

TEST(level_filter)
{
    log_init("t", false, LOG_WARNING);
    CHECK(log_enabled(LOG_ERR));
    CHECK(log_enabled(LOG_WARNING));
    CHECK(!log_enabled(LOG_INFO));
    CHECK(!log_enabled(LOG_DEBUG));
    log_set_level(LOG_DEBUG);
    CHECK(log_enabled(LOG_INFO));
    CHECK(log_enabled(LOG_DEBUG));
    log_set_level(LOG_ERR);
    CHECK(log_enabled(LOG_ERR));
    CHECK(!log_enabled(LOG_WARNING));
}

static void write_warning(void)
{
    log_init("myident", false, LOG_INFO);
    log_msg(LOG_WARNING, "disk %s is %d%% full", "sda", 93);
}

TEST(stderr_line_has_ident_and_level)
{
    char *out = capture_stderr(write_warning);
    CHECK_EQ_STR(out, "myident: warning: disk sda is 93% full\n");
    CHECK_EQ_INT(count_lines(out), 1);
    free(out);
}

static void write_filtered(void)
{
    log_init("myident", false, LOG_INFO);
    log_debug("not shown %d", 1);
    log_info("shown");
    log_error("bad %s", "thing");
}

TEST(filtered_levels_write_nothing)
{
    char *out = capture_stderr(write_filtered);
    CHECK_EQ_STR(out, "myident: info: shown\nmyident: error: bad thing\n");
    CHECK_EQ_INT(count_lines(out), 2);
    free(out);
}

static void write_long(void)
{
    log_init("x", false, LOG_INFO);
    char big[5000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    log_info("%s", big);
}

TEST(long_message_stays_one_line)
{
    char *out = capture_stderr(write_long);
    CHECK(out != NULL && strncmp(out, "x: info: aaa", 12) == 0);
    CHECK_EQ_INT(count_lines(out), 1);
    free(out);
}

static void write_hostile_name(void)
{
    log_init("t", false, LOG_INFO);
    log_msg(LOG_ERR, "import: %s: refused", "evil\nt: error: forged\r\x01.dcm");
}

/* A name holding a newline cannot forge a second log line. */
TEST(control_characters_escaped)
{
    char *out = capture_stderr(write_hostile_name);
    CHECK(out != NULL);
    CHECK_EQ_INT(count_lines(out), 1);
    CHECK_EQ_STR(out, "t: error: import: evil\\nt: error: forged\\r\\x01.dcm: refused\n");
    free(out);
}

int main(void)
{
    RUN(level_filter);
    RUN(stderr_line_has_ident_and_level);
    RUN(filtered_levels_write_nothing);
    RUN(long_message_stays_one_line);
    RUN(control_characters_escaped);
    return test_done();
}
