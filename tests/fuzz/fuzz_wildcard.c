/* libFuzzer target for client/wildcard.c. The input is "pattern\0name"; the
 * pattern is also tried as a gs:// URI. */
#include "wildcard.h"

#include <stdint.h>

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 2);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = buf[size + 1] = '\0';
    const char *pattern = buf;
    const char *name = buf + strlen(buf) + 1;
    if (name > buf + size)
        name = buf + size + 1; /* no '\0' in the input: empty name */

    char why[160];
    int valid = wildcard_validate(pattern, why, sizeof why) == WILDCARD_OK;
    bool m = wildcard_match(pattern, name);
    size_t pre = wildcard_literal_prefix_len(pattern);
    if (pre > strlen(pattern))
        abort();
    if (m && (!valid || strncmp(pattern, name, pre) != 0))
        abort(); /* a match starts with the literal prefix */
    if (valid && pre == strlen(pattern) && !wildcard_match(pattern, pattern))
        abort(); /* a literal pattern matches itself */

    char *bucket = NULL, *object = NULL;
    if (wildcard_split_gcs_uri(pattern, &bucket, &object, why, sizeof why) == WILDCARD_OK) {
        if (!bucket || !object || !*object || strlen(bucket) < 3)
            abort();
    } else if (bucket || object) {
        abort();
    }
    free(bucket);
    free(object);
    free(buf);
    return 0;
}
