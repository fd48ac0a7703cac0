/* wildcard: the dicomStores.import gcsSource.uri pattern rules.
 *
 * In the object part of gs://BUCKET/OBJECT: '*' matches any run of characters
 * except '/', '?' exactly one character (not '/'), and a final '**' matches
 * anything including '/'; '**' must be the last wildcard and the only one,
 * optionally followed by a literal extension (e.g. "**.dcm" after "dir/").
 */
#ifndef DICOMFS_WILDCARD_H
#define DICOMFS_WILDCARD_H

#include <stdbool.h>
#include <stddef.h>

enum { WILDCARD_OK = 0, WILDCARD_ERR_SYNTAX = -1 };

/* Splits "gs://bucket/object" into malloc'ed parts (object may contain
 * wildcards). Returns WILDCARD_ERR_SYNTAX with why filled for a bad URI. */
int wildcard_split_gcs_uri(const char *uri, char **bucket, char **object, char *why, size_t whylen);

/* Validates an object pattern against the rules above. */
int wildcard_validate(const char *pattern, char *why, size_t whylen);

/* Whether name matches a (valid) pattern. */
bool wildcard_match(const char *pattern, const char *name);

/* Length of the literal prefix before the first wildcard (for listing). */
size_t wildcard_literal_prefix_len(const char *pattern);

#endif
