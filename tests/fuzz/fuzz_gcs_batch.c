/* libFuzzer target for gcs_batch_parse (client/gcs.c): a Cloud Storage
 * batch answer. The first line of the input is the Content-Type; the rest
 * is the body, copied into its own buffer so a read past its end is caught.
 * The request count is the Content-Type line's length modulo 101, so small
 * and full batches are both tried. */
#include "fuzz_input.h"
#include "gcs.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *line, *body;
    size_t first, blen;
    if (fuzz_split_line(data, size, &line, &first, &body, &blen) != 0)
        return 0;
    size_t n = first % (GCS_BATCH_MAX + 1);
    long status[GCS_BATCH_MAX] = {0};
    int rc = gcs_batch_parse(line, body, blen, status, n);
    for (size_t i = 0; i < GCS_BATCH_MAX; i++) {
        /* Only the n requests get answers, and only real statuses. */
        if (status[i] != 0 && (i >= n || status[i] < 100 || status[i] > 599))
            abort();
    }
    if (rc != 0 && rc != CERR_MALFORMED && rc != CERR_NOMEM)
        abort();
    free(line);
    free(body);
    return 0;
}
