/* rejects: files refused in STORE/import/ (content not DICOM: EINVAL), remembered so the refusal
 * stays visible after the close() a shell ignored (`echo hello > import/x.dcm`).
 *
 * The import manager drops a refused file at its last close (import.h);
 * rejects keeps (store, path below import/, reason) until the entry is
 * removed or the name is written again. fuse_ops shows each one as an empty
 * file where it was, and STORE/status as a "rejected: import/PATH: REASON"
 * line (names escaped as in status: \n, \r, \\). In memory only: a remount
 * forgets them (the log keeps the line). At most REJECTS_MAX are kept, the
 * oldest go first. Thread-safe.
 */
#ifndef DICOMFS_REJECTS_H
#define DICOMFS_REJECTS_H

#include <stdbool.h>
#include <stdio.h>
#include <sys/stat.h>

#define REJECTS_MAX 10000

typedef struct rejects rejects;

rejects *rejects_new(void);
void rejects_free(rejects *r);

/* store: the full store name; path: below import/ ("a/b.dcm"). */
void rejects_add(rejects *r, const char *store, const char *path, const char *reason);
/* true when path was a rejected entry (now forgotten). */
bool rejects_remove(rejects *r, const char *store, const char *path);
bool rejects_has(rejects *r, const char *store, const char *path);
/* Calls fill for every rejected entry directly in dir ("" = import/ itself). */
typedef int (*rejects_fill_fn)(void *buf, const char *name);
void rejects_list_dir(rejects *r, const char *store, const char *dir, rejects_fill_fn fill,
                      void *buf);
/* "rejected: import/PATH: REASON" lines of the store; how many. */
size_t rejects_status(rejects *r, const char *store, FILE *out);

/* The callback import_config.on_reject takes (ctx = the rejects). */
void rejects_on_reject(void *ctx, const char *store, const char *path, const char *reason);

#endif
