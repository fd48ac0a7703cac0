/* Unit tests for fs/errmap.c (class -> errno) and the classes of
 * client/error.c that feed it: the errno a FUSE call returns for every
 * HTTP status and operation code is the one the daemon always gave. */
#include <errno.h>
#include <string.h>

#include "../../fs/errmap.h"
#include "error.h"
#include "testlib.h"

TEST(every_class_has_its_errno)
{
    static const struct {
        int cls, err;
    } want[] = {
        {CERR_OK, 0},
        {CERR_NOMEM, -ENOMEM},
        {CERR_INVALID, -EINVAL},
        {CERR_IO, -EIO},
        {CERR_NETWORK, -EIO},
        {CERR_TIMEOUT, -EIO},
        {CERR_AUTH, -EACCES},
        {CERR_TOKEN, -EIO},
        {CERR_PERMISSION, -EACCES},
        {CERR_NOT_FOUND, -ENOENT},
        {CERR_EXISTS, -EEXIST},
        {CERR_PRECONDITION, -EAGAIN},
        {CERR_QUOTA, -EAGAIN},
        {CERR_UNAVAILABLE, -EIO},
        {CERR_SERVER, -EIO},
        {CERR_MALFORMED, -EIO},
        {CERR_CHECKSUM, -EIO},
        {CERR_TRUNCATED, -EIO},
        {CERR_UNSUPPORTED, -EIO},
        {CERR_WRONG_TYPE, -EIO},
        {CERR_MISSING, -EIO},
    };
    CHECK_EQ_INT(sizeof want / sizeof want[0], CERR_CLASS_COUNT);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK_EQ_INT(errmap_errno(want[i].cls), want[i].err);
    /* Not a class (a list callback's stop value, a stray code): EIO. */
    CHECK_EQ_INT(errmap_errno(1), -EIO);
    CHECK_EQ_INT(errmap_errno(-CERR_CLASS_COUNT), -EIO);
    CHECK_EQ_INT(errmap_errno(-100), -EIO);
}

TEST(http_statuses_keep_their_errno)
{
    static const struct {
        long status;
        int cls, err;
    } want[] = {
        {400, CERR_INVALID, -EINVAL},    {401, CERR_PERMISSION, -EACCES},
        {403, CERR_PERMISSION, -EACCES}, {404, CERR_NOT_FOUND, -ENOENT},
        {405, CERR_SERVER, -EIO},        {408, CERR_SERVER, -EIO},
        {409, CERR_EXISTS, -EEXIST},     {410, CERR_NOT_FOUND, -ENOENT},
        {411, CERR_INVALID, -EINVAL},    {412, CERR_PRECONDITION, -EAGAIN},
        {413, CERR_INVALID, -EINVAL},    {414, CERR_INVALID, -EINVAL},
        {416, CERR_SERVER, -EIO},        {429, CERR_QUOTA, -EAGAIN},
        {500, CERR_UNAVAILABLE, -EIO},   {501, CERR_UNSUPPORTED, -EIO},
        {502, CERR_UNAVAILABLE, -EIO},   {503, CERR_UNAVAILABLE, -EIO},
        {504, CERR_UNAVAILABLE, -EIO},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        CHECK_EQ_INT(cerr_from_http_status(want[i].status), want[i].cls);
        CHECK_EQ_INT(errmap_errno(cerr_from_http_status(want[i].status)), want[i].err);
    }
}

TEST(operation_codes_keep_their_errno)
{
    /* google.rpc.Code 0..16 as an operation's error.code. */
    static const int want[17] = {0,       -EIO,    -EIO,    -EINVAL, -EIO,   -ENOENT,
                                 -EEXIST, -EACCES, -EAGAIN, -EINVAL, -EIO,   -EINVAL,
                                 -EIO,    -EIO,    -EIO,    -EIO,    -EACCES};
    for (int code = 0; code <= 16; code++)
        CHECK_EQ_INT(errmap_rpc_errno(code), want[code]);
    CHECK_EQ_INT(errmap_rpc_errno(99), -EIO);
}

TEST(names_and_detail)
{
    for (int a = 0; a < CERR_CLASS_COUNT; a++)
        for (int b = a + 1; b < CERR_CLASS_COUNT; b++)
            CHECK(strcmp(cerr_name(-a), cerr_name(-b)) != 0);
    CHECK_EQ_STR(cerr_name(CERR_QUOTA), "QUOTA");
    CHECK_EQ_STR(cerr_name(5), "UNKNOWN");
    cerr_detail d;
    memset(&d, 'x', sizeof d);
    CHECK_EQ_INT(cerr_set(&d, CERR_QUOTA, 429, "RESOURCE_EXHAUSTED", "slow down %d", 7),
                 CERR_QUOTA);
    CHECK_EQ_INT(d.cls, CERR_QUOTA);
    CHECK_EQ_INT(d.http_status, 429);
    CHECK_EQ_INT(d.curl_code, 0);
    CHECK_EQ_STR(d.status, "RESOURCE_EXHAUSTED");
    CHECK_EQ_STR(d.reason, "");
    CHECK_EQ_STR(d.message, "slow down 7");
    CHECK_EQ_INT(cerr_set(NULL, CERR_IO, 0, "", "nowhere"), CERR_IO);
}

int main(void)
{
    RUN(every_class_has_its_errno);
    RUN(http_statuses_keep_their_errno);
    RUN(operation_codes_keep_their_errno);
    RUN(names_and_detail);
    return test_done();
}
