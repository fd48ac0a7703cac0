/* opsnap: the bytes of operations/ID.json files as the server last gave
 * them (operations.get), each kept a short time, so that an open
 * right after a stat serves the bytes whose size the stat reported: `stat`
 * and `cat` agree while an operation changes (done flips, counters move).
 *
 * A fixed table of OPSNAP_SLOTS entries keyed by the file's dataset and
 * name; a newer snapshot replaces whatever held its slot. Thread-safe.
 */
#ifndef DICOMFS_OPSNAP_H
#define DICOMFS_OPSNAP_H

#include <stddef.h>

#define OPSNAP_SLOTS 4096

typedef struct opsnap opsnap;

opsnap *opsnap_new(void);
void opsnap_free(opsnap *s);

/* Keeps a copy of data (len bytes) for (ds_id, file) for ttl_s seconds. */
void opsnap_put(opsnap *s, const char *ds_id, const char *file, const char *data, size_t len,
                double ttl_s);
/* A malloc'ed copy of the live snapshot of (ds_id, file): 0, or -ENOENT
 * (none, or expired), or -ENOMEM. */
int opsnap_get(opsnap *s, const char *ds_id, const char *file, char **data, size_t *len);

#endif
