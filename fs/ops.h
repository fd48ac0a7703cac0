/* ops: the operations/ directories.
 *
 * Owns: the listings and the content of operations/ID.json files.
 *
 * DATASET/operations/ lists every operation of the dataset (operations.list,
 * all pages) as ID.json; STORE/operations/ lists those the store's import/
 * and export/ started (from the journal). ID.json holds the operation JSON
 * exactly as operations.get returned it, plus a final "\n" when missing.
 * getattr reports the size of a listing or get at most FS_OP_TTL seconds
 * old. open serves the bytes of a get made less than FS_OP_TTL ago (the
 * ones whose size a stat reported: stat and cat agree while the operation
 * changes, opsnap.h), else fetches anew.
 */
#ifndef DICOMFS_OPS_H
#define DICOMFS_OPS_H

#include <stddef.h>
#include <sys/stat.h>

#include "ctx.h"

typedef int (*ops_fill_fn)(void *buf, const char *name, const struct stat *st);

/* store_id NULL: the dataset's operations/. Return 0 or -errno. */
int ops_readdir(fs_ctx *x, const char *ds_id, const char *store_id, ops_fill_fn fill, void *buf);
int ops_getattr(fs_ctx *x, const char *ds_id, const char *store_id, const char *file,
                struct stat *st);
/* The file's content (see the top of this header): *data malloc'ed, newline-terminated. */
int ops_read_file(fs_ctx *x, const char *ds_id, const char *store_id, const char *file, char **data,
                  size_t *len);

/* The file content for an operation JSON: a copy with "\n" appended when
 * missing (exposed for tests). */
char *ops_file_content(const char *json, size_t len, size_t *out_len);

#endif
