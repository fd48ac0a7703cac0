/* multipart: a bounded parser for multipart/related bodies (RFC 2046/2387),
 * as used by STOW-RS, WADO-RS and Cloud Storage multipart uploads.
 */
#ifndef DICOMFS_MULTIPART_H
#define DICOMFS_MULTIPART_H

#include <stddef.h>

#include "error.h"

/* Returns CERR_OK, CERR_MALFORMED (the body breaks the grammar; why says
 * where) or CERR_NOMEM (error.h). */

typedef struct multipart_part {
    const char *headers; /* raw header block of the part (not NUL-terminated) */
    size_t headers_len;
    const char *body;
    size_t body_len;
} multipart_part;

/* Extracts a parameter (e.g. "boundary", "type") from a Content-Type value,
 * unquoting it. Returns malloc'ed value or NULL. */
char *multipart_content_type_param(const char *content_type, const char *param);

/* Value of a header inside a part's header block, copied into buf.
 * Returns CERR_OK, CERR_MALFORMED if there is no such header, or
 * CERR_NOMEM if the value does not fit in buf. */
int multipart_part_header(const multipart_part *part, const char *name, char *buf, size_t buflen);

/* Splits body into parts; calls cb for each. Parts point into body. */
typedef int (*multipart_part_cb)(void *ctx, const multipart_part *part);
int multipart_parse(const char *body, size_t len, const char *boundary, multipart_part_cb cb,
                    void *ctx, char *why, size_t whylen);

#endif
