/* studies: the read-only STORE/studies/ view (DICOMweb).
 *
 * Owns: the study/series/instance listings, instance sizes and retrieval,
 * and the deletes allow_delete permits.
 *
 *   studies/                    one directory per study (QIDO-RS studies)
 *   studies/STUDY/              one directory per series
 *   studies/STUDY/SERIES/       INSTANCE.dcm per instance
 *
 * Listings come from DICOMweb searches (cached FS_LIST_TTL seconds). An
 * instance is retrieved as stored (transfer-syntax=*) into an unlinked file
 * in cache_dir when opened. stat reports the instance's size before any
 * read: instances.getStorageInfo (blobStorageInfo.sizeBytes, the size of
 * the instance as stored), asked for every instance of a series at once in
 * a bounded parallel burst on the first lstat of one of them; where the API
 * lacks that method, one retrieval gives it.
 */
#ifndef DICOMFS_STUDIES_H
#define DICOMFS_STUDIES_H

#include <sys/stat.h>

#include "ctx.h"
#include "tree.h"

typedef int (*studies_fill_fn)(void *buf, const char *name, const struct stat *st);

int studies_getattr(fs_ctx *x, const tree_path *tp, struct stat *st);
int studies_readdir(fs_ctx *x, const tree_path *tp, studies_fill_fn fill, void *buf);
int studies_open(fs_ctx *x, const tree_path *tp, int *fd);

/* Without -o allow_delete both refuse with EACCES (and a log line saying
 * how to allow it). With it, unlink is a DICOMweb DELETE of the instance;
 * rmdir removes an empty study or series directory (ENOTEMPTY otherwise). */
int studies_unlink(fs_ctx *x, const tree_path *tp);
int studies_rmdir(fs_ctx *x, const tree_path *tp);

#endif
