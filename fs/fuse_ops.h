/* fuse_ops: the FUSE callbacks (high-level API).
 *
 * Owns: the struct fuse_operations of the mount, only a dispatcher: each
 * callback parses its path (tree.h), runs the call of the path's kind of
 * node (node.h) under the mount's timeout (deadline.h) and copies what it
 * gives into FUSE's structures; init and destroy start and stop the mount's
 * state (ctx.h) and the listing of the root (places.h). The only fs/ file
 * that includes <fuse.h> besides main.c; nothing calls back into it.
 */
#ifndef DICOMFS_FUSE_OPS_H
#define DICOMFS_FUSE_OPS_H

#define FUSE_USE_VERSION 31
#include <fuse.h>

#include "ctx.h"

/* The callbacks; private_data passed to fuse_new must be an fs_ctx whose
 * opt and cl are set (init opens the journal and the import manager). */
const struct fuse_operations *fs_fuse_operations(void);

#endif
