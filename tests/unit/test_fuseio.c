/* Unit tests for fs/fuseio.c: the INIT reply asks for parallel directory
 * operations when, and only when, the kernel offered them in that INIT. */
#include <linux/fuse.h>
#include <string.h>
#include <unistd.h>

#include "../../fs/fuseio.h"
#include "testlib.h"

/* Sends a request (header + body) through a pipe and reads it with
 * fuseio_read, as libfuse would read /dev/fuse. */
static void kernel_sends(uint32_t opcode, uint64_t unique, uint32_t flags)
{
    struct {
        struct fuse_in_header h;
        struct fuse_init_in in;
    } req;
    memset(&req, 0, sizeof req);
    req.h.len = sizeof req;
    req.h.opcode = opcode;
    req.h.unique = unique;
    req.in.major = 7;
    req.in.minor = 31;
    req.in.flags = flags;
    int p[2];
    CHECK_EQ_INT(pipe(p), 0);
    CHECK_EQ_INT(write(p[1], &req, sizeof req), (int)sizeof req);
    char buf[256];
    CHECK_EQ_INT(fuseio_read(p[0], buf, sizeof buf, NULL), (int)sizeof req);
    CHECK(memcmp(buf, &req, sizeof req) == 0); /* passed on unchanged */
    close(p[0]);
    close(p[1]);
}

/* Writes a reply to unique with fuseio_writev; returns the flags that
 * reached the other end of the pipe. */
static uint32_t reply_flags(uint64_t unique, int32_t error, uint32_t flags)
{
    struct fuse_out_header h = {
        .len = sizeof h + sizeof(struct fuse_init_out), .error = error, .unique = unique};
    struct fuse_init_out out = {.major = 7, .minor = 31, .flags = flags};
    struct iovec iov[2] = {{&h, sizeof h}, {&out, sizeof out}};
    int p[2];
    CHECK_EQ_INT(pipe(p), 0);
    CHECK_EQ_INT(fuseio_writev(p[1], iov, 2, NULL), (int)(sizeof h + sizeof out));
    struct {
        struct fuse_out_header h;
        struct fuse_init_out out;
    } got;
    CHECK_EQ_INT(read(p[0], &got, sizeof got), (int)sizeof got);
    close(p[0]);
    close(p[1]);
    return got.out.flags;
}

TEST(init_reply_asks_when_offered)
{
    kernel_sends(FUSE_INIT, 2, FUSE_PARALLEL_DIROPS | FUSE_ASYNC_READ);
    CHECK_EQ_INT(reply_flags(3, 0, FUSE_ASYNC_READ), FUSE_ASYNC_READ); /* another reply */
    CHECK_EQ_INT(reply_flags(2, 0, FUSE_ASYNC_READ), FUSE_ASYNC_READ | FUSE_PARALLEL_DIROPS);
    /* Only that one reply: a later one with the same id is left alone. */
    CHECK_EQ_INT(reply_flags(2, 0, FUSE_ASYNC_READ), FUSE_ASYNC_READ);
}

TEST(not_offered_not_asked)
{
    kernel_sends(FUSE_INIT, 2, FUSE_ASYNC_READ);
    CHECK_EQ_INT(reply_flags(2, 0, FUSE_ASYNC_READ), FUSE_ASYNC_READ);
}

TEST(failed_init_and_other_requests_untouched)
{
    kernel_sends(FUSE_LOOKUP, 5, FUSE_PARALLEL_DIROPS);
    CHECK_EQ_INT(reply_flags(5, 0, 0), 0);
    kernel_sends(FUSE_INIT, 6, FUSE_PARALLEL_DIROPS);
    CHECK_EQ_INT(reply_flags(6, -22, 0), 0); /* an error reply carries no flags */
}

int main(void)
{
    RUN(init_reply_asks_when_offered);
    RUN(not_offered_not_asked);
    RUN(failed_init_and_other_requests_untouched);
    return test_done();
}
