/* libFuzzer target: hc_operation_parse on arbitrary bytes (Operation JSON
 * comes from the network and is shown to users). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "healthcare.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    hc_operation op;
    int rc = hc_operation_parse((const char *)data, size, &op);
    if (rc == CERR_OK) {
        /* Every string that is set must be a readable C string. */
        if (op.name)
            (void)strlen(op.name);
        if (op.error_message)
            (void)strlen(op.error_message);
        if (op.api_method)
            (void)strlen(op.api_method);
        if (op.create_time)
            (void)strlen(op.create_time);
        if (op.end_time)
            (void)strlen(op.end_time);
        if (op.logs_url)
            (void)strlen(op.logs_url);
        if (op.success < -1 || op.failure < -1 || op.pending < -1)
            __builtin_trap();
    } else if (op.name || op.error_message || op.api_method) {
        __builtin_trap(); /* a failed parse leaves nothing allocated */
    }
    hc_operation_clear(&op);
    return 0;
}
