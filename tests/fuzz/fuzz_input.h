/* Splitting a fuzz input shared by the targets that take a header line and a
 * body: the first line (up to '\n') becomes a NUL-terminated string, the rest
 * a body in its own heap buffer, so that a read past its end is caught. */
#ifndef DICOMFS_FUZZ_INPUT_H
#define DICOMFS_FUZZ_INPUT_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* 0 with *line (of *line_len bytes before the NUL) and *body (*body_len
 * bytes) to free; -1 when out of memory (nothing to free). */
static inline int fuzz_split_line(const uint8_t *data, size_t size, char **line, size_t *line_len,
                                  char **body, size_t *body_len)
{
    const char *nl = memchr(data, '\n', size);
    size_t first = nl ? (size_t)(nl - (const char *)data) : size;
    size_t blen = nl ? size - first - 1 : 0;
    *line = malloc(first + 1);
    *body = malloc(blen ? blen : 1);
    if (!*line || !*body) {
        free(*line);
        free(*body);
        return -1;
    }
    memcpy(*line, data, first);
    (*line)[first] = '\0';
    if (blen)
        memcpy(*body, nl + 1, blen);
    *line_len = first;
    *body_len = blen;
    return 0;
}

#endif
