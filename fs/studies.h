/* studies: the read-only STORE/studies/ view (DICOMweb).
 *
 *   studies/                    one directory per study (QIDO-RS studies)
 *   studies/STUDY/              one directory per series
 *   studies/STUDY/SERIES/       INSTANCE.dcm per instance
 *
 * Listings come from DICOMweb searches (cached FS_LIST_TTL seconds). An
 * instance is retrieved as stored (transfer-syntax=*) into an unlinked file
 * in cache_dir when opened. Its size is not known before the first
 * retrieval: until then stat reports 0 and reads go until EOF (direct_io);
 * afterwards the retrieved size is reported.
 */
#ifndef DICOMFS_STUDIES_H
#define DICOMFS_STUDIES_H

#include <sys/stat.h>

#include "fuse_ops.h"
#include "tree.h"

typedef int (*studies_fill_fn)(void *buf, const char *name, const struct stat *st);

int studies_getattr(fs_ctx *x, const tree_path *tp, struct stat *st);
int studies_readdir(fs_ctx *x, const tree_path *tp, studies_fill_fn fill, void *buf);
int studies_open(fs_ctx *x, const tree_path *tp, int *fd);

#endif
