/* node_ops: DATASET/operations/, STORE/operations/ and their ID.json
 * files, read-only (ops.h). */
#include <errno.h>

#include "node.h"
#include "ops.h"
#include "places.h"

/* The store of a STORE/operations/ entry, NULL for the dataset's. */
static const char *store_of(const tree_path *tp)
{
    return tp->kind == TREE_STORE_OPS || tp->kind == TREE_STORE_OP ? tp->store : NULL;
}

static int place_exists(fs_ctx *x, const tree_path *tp)
{
    return store_of(tp) ? places_store_exists(x, tp) : places_dataset_exists(x, tp);
}

static int dir_getattr(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    int rc = place_exists(x, tp);
    if (rc == 0)
        fs_stat_dir(x, st, 0555);
    return rc;
}

static int dir_readdir(fs_ctx *x, const tree_path *tp, fs_fill_fn fill, void *buf)
{
    return ops_readdir(x, tp->dataset, store_of(tp), fill, buf);
}

#define OPS_CREATE_REFUSED                                                                         \
    {                                                                                              \
        -EACCES, "create: operations/ is read-only"                                                \
    }

const fs_node node_ops_dir = {
    .mkdir_refused = {-EEXIST, NULL},
    .create_refused = OPS_CREATE_REFUSED,
    .getattr = dir_getattr,
    .readdir = dir_readdir,
};

static int op_getattr(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    int rc = place_exists(x, tp);
    return rc ? rc : ops_getattr(x, tp->dataset, store_of(tp), tp->name, st);
}

static int op_open(fs_ctx *x, const char *path, const tree_path *tp, const struct stat *st,
                   int flags, fs_file **out)
{
    (void)path;
    (void)st;
    (void)flags;
    char *data = NULL;
    size_t len = 0;
    int rc = ops_read_file(x, tp->dataset, store_of(tp), tp->name, &data, &len);
    return rc ? rc : node_open_buffer(data, len, out);
}

const fs_node node_op = {
    .mkdir_refused = {-EACCES, "mkdir: read-only place"},
    .create_refused = OPS_CREATE_REFUSED,
    .unlink_refused = {-EACCES, "unlink: operations are read-only"},
    .write_refused = "open for writing: operations are read-only",
    .getattr = op_getattr,
    .open = op_open,
};
