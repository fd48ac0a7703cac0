/* status: the text of STORE/status (see import_status_text in import.h) and
 * its parser, shared with `dicomfs wait`.
 *
 * Owns: the counter lines of the import pipeline and their parsing; the
 * STORE/status file adds the export and import/ refusals (node_status.c). */
#ifndef DICOMFS_STATUS_H
#define DICOMFS_STATUS_H

#include <stdint.h>

typedef struct import_counts {
    uint64_t spooled, uploading, uploaded, importing, imported, failed;
    uint64_t bytes_spooled, bytes_uploaded;
    /* Optional lines (0 when absent): files whose instance the store already
     * held (not uploaded), the cache in use, its limit, writers waiting. */
    uint64_t present, cache_used, cache_max, writers_waiting;
} import_counts;

/* Parses the "key: value" lines of a status text; unknown keys and the
 * "failed: PATH: REASON" lines are skipped. Returns 0, or -1 when a counter
 * line is missing (not a dicomfs status file). */
int status_parse(const char *text, import_counts *out);

#endif
