/* libFuzzer target for client/filter.c: the whole-file parser, and every
 * path it accepts must be made of valid UIDs and match itself. */
#include "filter.h"

#include <stdint.h>

#include <stdlib.h>
#include <string.h>

static int check_path(void *ctx, const filter_path *p)
{
    (void)ctx;
    if (p->depth < 1 || p->depth > 3)
        abort();
    if (!filter_uid_valid(p->study, strlen(p->study)))
        abort();
    if (p->depth >= 2 && !filter_uid_valid(p->series, strlen(p->series)))
        abort();
    if (p->depth == 3 && !filter_uid_valid(p->instance, strlen(p->instance)))
        abort();
    if (!filter_path_matches(p, p->study, p->series, p->instance))
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    size_t n = 0;
    filter_error err;
    int rc = filter_parse(s, size, check_path, NULL, &n, &err);
    if (rc == CERR_MALFORMED && (err.line == 0 || err.column == 0 || !err.message[0]))
        abort();
    /* The first line on its own. */
    const char *nl = memchr(s, '\n', size);
    size_t len = nl ? (size_t)(nl - s) : size;
    filter_path p;
    size_t col = 0;
    char why[128];
    if (filter_parse_line(s, len, &p, &col, why, sizeof why) == CERR_OK)
        check_path(NULL, &p);
    else if (col == 0 || col > len + 1)
        abort();
    (void)filter_uid_valid(s, size);
    return 0;
}
