/* filter: the Healthcare API export filter-file grammar.
 *
 * One resource path per line, separated by "\n" or "\r\n":
 *   /studies/UID  |  /studies/UID/series/UID  |  /studies/UID/series/UID/instances/UID
 * A UID is 1..64 characters of digits and dots, with no empty component and
 * no component with a leading zero (a lone "0" is allowed). An empty file, or
 * a file of only line breaks, is valid and names nothing. A final line without
 * a line break is accepted.
 */
#ifndef DICOMFS_FILTER_H
#define DICOMFS_FILTER_H

#include <stddef.h>

#include "dicom.h"

/* Returns CERR_OK, CERR_MALFORMED (a bad line; filter_error says where) or
 * CERR_NOMEM (error.h). */

typedef struct filter_error {
    size_t line;   /* 1-based */
    size_t column; /* 1-based byte column of the first bad character */
    char message[160];
} filter_error;

typedef struct filter_path {
    int depth; /* 1 study, 2 series, 3 instance */
    char study[DICOM_UID_MAX + 1];
    char series[DICOM_UID_MAX + 1];
    char instance[DICOM_UID_MAX + 1];
} filter_path;

/* Parses one line (without its line break). */
int filter_parse_line(const char *line, size_t len, filter_path *out, size_t *bad_column, char *why,
                      size_t whylen);

/* Validates a whole file; calls cb (if non-NULL) for every path in order. A
 * non-zero return from cb stops parsing and is returned. n_paths (if
 * non-NULL) gets the number of paths. */
typedef int (*filter_path_cb)(void *ctx, const filter_path *path);
int filter_parse(const char *buf, size_t len, filter_path_cb cb, void *ctx, size_t *n_paths,
                 filter_error *err);

/* Whether an instance is selected by a path. */
int filter_path_matches(const filter_path *p, const char *study, const char *series,
                        const char *instance);

/* Whether s is a valid UID (the grammar's rules). */
int filter_uid_valid(const char *s, size_t len);

#endif
