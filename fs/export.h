/* export: the STORE/export/ directory.
 *
 * Owns: the filters (in memory while open, their records in
 * cache_dir/exports/), starting exports, NAME.out/ and NAME.runs/.
 *
 * export/FMT/ for each output format (tree_formats). Writing a filter file
 * export/FMT/NAME keeps it in memory (at most EXPORT_MAX_FILTER bytes,
 * EFBIG beyond); flush() (what each close() returns, also of a dup'ed
 * descriptor) only checks it with filter_parse: a bad line fails with
 * EINVAL, logs "export/FMT/NAME: line L, column C: MESSAGE" once per content
 * and starts nothing. The export starts at release() (the last close), if the
 * final filter is valid and differs from the one last started for NAME (or
 * none was). An empty filter exports the whole store (v1 export); otherwise
 * the filter is uploaded to
 * gs://STAGING/PREFIX/filters/DATASET/STORE/FMT/NAME-TIMESTAMP.txt and a
 * v1beta1 export with filterConfig is started. Either way the destination is
 * EXPORT_TO/DATASET/STORE/FMT/NAME/RUN, RUN being the start's UTC time to
 * the millisecond (a prefix per run), and the operation is recorded in the
 * journal as "export:FMT/NAME". The filter, the operation name, the latest
 * run and every run are kept in cache_dir/exports/ so that export/FMT/NAME
 * reads the filter back after a remount. export/FMT/NAME.out/ shows the
 * objects of the latest started run (nested STUDY/SERIES/INSTANCE.EXT) once
 * its operation is done; export/FMT/NAME.runs/RUN/ every run as listed. A
 * filter straight in export/ has the format tree_format_top (DICOM as
 * stored). Editors' scratch names are not filters (scratch.h);
 * export_install and export_take serve renames onto and away from a filter.
 *
 * A filter whose final content is refused (its close() failed with EINVAL,
 * which shells ignore) stays listed with that content, NAME.out/ERROR says
 * why and STORE/status has "rejected: export/FMT/NAME: REASON"; writing it
 * again or removing it clears that.
 *
 * When the start fails after the client's retries (filter upload or export
 * call refused), the filter stays listed and the failure is kept beside it
 * in cache_dir/exports/ (so it survives a remount): NAME.out/ERROR holds
 * "time: ...", "filter: export/FMT/NAME" and "reason: ..." lines, and
 * STORE/status a "failed: export/FMT/NAME: REASON" line. Writing the filter
 * again retries (a successful start clears it); removing it forgets both.
 */
#ifndef DICOMFS_EXPORT_H
#define DICOMFS_EXPORT_H

#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>

#include "ctx.h"
#include "tree.h"

#define EXPORT_MAX_FILTER (64u << 20)

typedef int (*export_fill_fn)(void *buf, const char *name, const struct stat *st);

typedef struct export_file export_file;

/* export/FMT/: NAME and NAME.out for every recorded filter. */
int export_readdir_fmt(fs_ctx *x, const tree_path *tp, export_fill_fn fill, void *buf);

int export_getattr_filter(fs_ctx *x, const tree_path *tp, struct stat *st);
/* flags as open(2); create: a new filter (exports the whole store when
 * released empty). */
int export_open_filter(fs_ctx *x, const tree_path *tp, int flags, bool create, export_file **out);
int export_write(export_file *f, const char *buf, size_t size, off_t off);
int export_read(export_file *f, char *buf, size_t size, off_t off);
int export_truncate_open(export_file *f, off_t size);
int export_truncate_path(fs_ctx *x, const tree_path *tp, off_t size);
/* Validates only (0 or -EINVAL); never starts anything remote. */
int export_flush(fs_ctx *x, export_file *f);
/* Starts the export if this descriptor changed the filter (see above). */
void export_release(fs_ctx *x, export_file *f);
/* A rename onto a filter name (from a scratch file or another filter):
 * the content becomes a new version of tp's filter, as if written and
 * closed there: -EINVAL (logged) for a bad filter, which then installs
 * nothing. */
int export_install(fs_ctx *x, const tree_path *tp, const char *data, size_t len);
/* A rename away from a filter name: its content (malloc'ed); the filter is
 * no longer listed, but what it started stays (NAME.runs/, and writing the
 * same content again starts nothing). */
int export_take(fs_ctx *x, const tree_path *tp, char **data, size_t *len);

/* Forgets a filter locally (exported objects stay where they are). */
int export_unlink(fs_ctx *x, const tree_path *tp);

/* Prints "failed: export/FMT/NAME: REASON" for every filter of the store
 * (dataset and store ids) whose export did not start (NAME.out/ERROR). */
void export_status_failures(const char *cache_dir, const char *dataset, const char *store,
                            FILE *out);

/* NAME.out/REST */
int export_out_getattr(fs_ctx *x, const tree_path *tp, struct stat *st);
int export_out_readdir(fs_ctx *x, const tree_path *tp, export_fill_fn fill, void *buf);
/* Downloads the object into an unlinked file in cache_dir; *fd to pread. */
int export_out_open(fs_ctx *x, const tree_path *tp, int *fd);

#endif
