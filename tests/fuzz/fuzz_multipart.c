/* libFuzzer target for client/multipart.c. The first line of the input is
 * the Content-Type (or a bare boundary); the rest is the body, copied into
 * its own buffer so a read past its end is caught. */
#include "fuzz_input.h"
#include "multipart.h"

#include <stdint.h>

#include <stdlib.h>
#include <string.h>

typedef struct range {
    const char *body;
    size_t len;
} range;

static int check_part(void *ctx, const multipart_part *p)
{
    const range *r = ctx;
    if (p->headers < r->body || p->headers + p->headers_len > r->body + r->len)
        abort();
    if (p->body < r->body || p->body + p->body_len > r->body + r->len)
        abort();
    char v[64];
    (void)multipart_part_header(p, "content-type", v, sizeof v);
    (void)multipart_part_header(p, "Content-Length", v, 1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *line, *body;
    size_t first, blen;
    if (fuzz_split_line(data, size, &line, &first, &body, &blen) != 0)
        return 0;

    char *boundary = multipart_content_type_param(line, "boundary");
    free(multipart_content_type_param(line, "type"));
    range r = {body, blen};
    char why[160];
    (void)multipart_parse(body, blen, boundary ? boundary : line, check_part, &r, why, sizeof why);
    free(boundary);
    free(line);
    free(body);
    return 0;
}
