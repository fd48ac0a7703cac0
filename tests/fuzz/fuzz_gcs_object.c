/* libFuzzer target: gcs_object_from_json on arbitrary bytes (object resources
 * come from the network). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "gcs.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gcs_object o;
    int rc = gcs_object_from_json((const char *)data, size, &o);
    if (rc == CERR_OK) {
        if (!o.name)
            __builtin_trap(); /* name is required for success */
        (void)strlen(o.name);
        if (o.bucket)
            (void)strlen(o.bucket);
        if (o.content_type)
            (void)strlen(o.content_type);
        if (!memchr(o.md5_b64, '\0', sizeof(o.md5_b64)) ||
            !memchr(o.crc32c_b64, '\0', sizeof(o.crc32c_b64)) || o.generation < 0)
            __builtin_trap();
    } else if (o.name || o.bucket || o.content_type) {
        __builtin_trap();
    }
    gcs_object_clear(&o);
    return 0;
}
