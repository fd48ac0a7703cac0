/* libFuzzer target: http_error_decode into a cerr_detail, with an arbitrary
 * status (first two bytes) and an arbitrary error body (the rest). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cerr_detail err;
    long status = 0;
    if (size >= 2) {
        status = (long)data[0] << 8 | data[1];
        data += 2;
        size -= 2;
    }
    memset(&err, 0xAA, sizeof(err)); /* decode must fill everything it returns */
    http_error_decode(status, (const char *)data, size, &err);
    /* The text fields are always NUL-terminated within their arrays. */
    if (!memchr(err.status, '\0', sizeof(err.status)) ||
        !memchr(err.reason, '\0', sizeof(err.reason)) ||
        !memchr(err.message, '\0', sizeof(err.message)))
        __builtin_trap();
    /* The class is the status's, and every class has a name. */
    if (err.cls != cerr_from_http_status(status) || err.http_status != status ||
        strcmp(cerr_name(err.cls), "UNKNOWN") == 0)
        __builtin_trap();
    (void)http_status_name(status);
    return 0;
}
