/* places: the datasets of the location and the DICOM stores of a dataset.
 *
 * Owns: their listings (datasets.list / dicomStores.list, cached in
 * x->cache under fs_cache_key like every listing), whether a dataset or a
 * store exists (a store with files of ours resolves without the server),
 * mkdir/rmdir of datasets and stores, the listing of the root at mount
 * (places_primer), and the node tables of the root, a dataset and a store
 * (node.h).
 */
#ifndef DICOMFS_PLACES_H
#define DICOMFS_PLACES_H

#include "ctx.h"
#include "tree.h"

/* 0 when tp's dataset (resp. store) exists, else -ENOENT or why it could
 * not be told (EIO, not ENOENT). */
int places_dataset_exists(fs_ctx *x, const tree_path *tp);
int places_store_exists(fs_ctx *x, const tree_path *tp);

/* Thread body (arg: the fs_ctx): lists the root once at mount, and the
 * stores of its first datasets, so that a store nobody listed yet resolves
 * from that listing while the server is unreachable. */
void *places_primer(void *arg);

#endif
