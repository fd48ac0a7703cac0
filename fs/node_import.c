/* node_import: STORE/import/, the import spool seen as files (import.h),
 * the refused files still shown (rejects.h) and their user.* attributes
 * (xattrs.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "import.h"
#include "node.h"
#include "places.h"
#include "rejects.h"
#include "xattrs.h"

/* ---- import/: every import_* call on a path goes through import_call */

typedef enum import_verb {
    IM_GETATTR,
    IM_READDIR,
    IM_MKDIR,
    IM_RMDIR,
    IM_CREATE,
    IM_OPEN,
    IM_TRUNCATE,
    IM_UTIMENS,
    IM_CHMOD,
    IM_CHOWN,
    IM_UNLINK,
    IM_RENAME,
    IM_STATE,
} import_verb;

/* What an import_* call takes besides the store and the path below
 * import/; each verb reads only its own fields. */
typedef struct import_args {
    struct stat *st;           /* getattr */
    import_fill_fn fill;       /* readdir */
    void *buf;                 /* readdir */
    mode_t mode;               /* mkdir, create, chmod */
    int flags;                 /* open */
    uint64_t *fh_out;          /* create, open */
    off_t size;                /* truncate */
    uint64_t fh;               /* truncate: the open file, or 0 */
    const struct timespec *tv; /* utimens */
    uid_t uid;                 /* chown */
    gid_t gid;                 /* chown */
    const char *to;            /* rename: the target below import/ */
    unsigned int rename_flags; /* rename */
    char *out;                 /* state: the state name */
    size_t outlen;             /* state */
} import_args;

static int import_dispatch(import_mgr *m, const char *store, const char *rel, import_verb v,
                           const import_args *a)
{
    switch (v) {
    case IM_GETATTR:
        return import_getattr(m, store, rel, a->st);
    case IM_READDIR:
        return import_readdir(m, store, rel, a->fill, a->buf);
    case IM_MKDIR:
        return import_mkdir(m, store, rel, a->mode);
    case IM_RMDIR:
        return import_rmdir(m, store, rel);
    case IM_CREATE:
        return import_create(m, store, rel, a->mode, a->fh_out);
    case IM_OPEN:
        return import_open(m, store, rel, a->flags, a->fh_out);
    case IM_TRUNCATE:
        return import_truncate(m, store, rel, a->size, a->fh);
    case IM_UTIMENS:
        return import_utimens(m, store, rel, a->tv);
    case IM_CHMOD:
        return import_chmod(m, store, rel, a->mode);
    case IM_CHOWN:
        return import_chown(m, store, rel, a->uid, a->gid);
    case IM_UNLINK:
        return import_unlink(m, store, rel);
    case IM_RENAME:
        return import_rename(m, store, rel, a->to, a->rename_flags);
    case IM_STATE:
        return import_state(m, store, rel, a->out, a->outlen);
    }
    return -EINVAL;
}

/* Runs one import_* call on tp->rest with the full name of tp's store. */
static int import_call(fs_ctx *x, const tree_path *tp, import_verb v, import_args a)
{
    char *store = fs_store_name(x, tp->dataset, tp->store);
    if (!store)
        return -ENOMEM;
    int rc = import_dispatch(x->import, store, tp->rest, v, &a);
    free(store);
    return rc;
}

/* ---- refused import/ files (rejects.h): shown as empty files until
 * removed or written again */

static bool rejected(fs_ctx *x, const tree_path *tp)
{
    char *store = fs_store_name(x, tp->dataset, tp->store);
    bool r = store && rejects_has(x->rejects, store, tp->rest);
    free(store);
    return r;
}

static bool forget_rejected(fs_ctx *x, const tree_path *tp)
{
    char *store = fs_store_name(x, tp->dataset, tp->store);
    bool r = store && rejects_remove(x->rejects, store, tp->rest);
    free(store);
    return r;
}

/* user.* attributes follow an import/ file's rename and go with it. */
typedef enum { XA_DROP, XA_RENAME } xattr_change;

static void xattrs_call(fs_ctx *x, const tree_path *tp, xattr_change c, const char *to)
{
    char *store = fs_store_name(x, tp->dataset, tp->store);
    if (store && c == XA_DROP)
        xattrs_drop(x->xattrs, store, tp->rest);
    else if (store)
        xattrs_rename(x->xattrs, store, tp->rest, to);
    free(store);
}

/* ---- open files */

typedef struct import_file {
    fs_file f;
    uint64_t fh;
} import_file;

static int file_read(fs_ctx *x, fs_file *f, char *buf, size_t size, off_t off)
{
    return import_read(x->import, ((import_file *)f)->fh, buf, size, off);
}

static int file_write(fs_ctx *x, fs_file *f, const char *buf, size_t size, off_t off)
{
    return import_write(x->import, ((import_file *)f)->fh, buf, size, off);
}

static int file_flush(fs_ctx *x, fs_file *f)
{
    return import_flush(x->import, ((import_file *)f)->fh);
}

static int file_fsync(fs_ctx *x, fs_file *f)
{
    return import_fsync(x->import, ((import_file *)f)->fh);
}

static void file_release(fs_ctx *x, fs_file *f)
{
    import_release(x->import, ((import_file *)f)->fh);
    free(f);
}

static const fs_file_ops file_ops = {
    .read = file_read,
    .write = file_write,
    .flush = file_flush,
    .fsync = file_fsync,
    .release = file_release,
};

/* create/open of a file under import/. */
static int open_import(fs_ctx *x, const tree_path *tp, int flags, import_verb v, mode_t mode,
                       fs_file **out)
{
    import_file *h = calloc(1, sizeof *h);
    if (!h)
        return -ENOMEM;
    h->f.ops = &file_ops;
    int rc = import_call(x, tp, v, (import_args){.mode = mode, .flags = flags, .fh_out = &h->fh});
    if (rc) {
        free(h);
        return rc;
    }
    *out = &h->f;
    return 0;
}

/* ---- the node */

static int im_getattr(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    int rc = places_store_exists(x, tp);
    if (rc)
        return rc;
    if (!x->import)
        return -EIO;
    rc = import_call(x, tp, IM_GETATTR, (import_args){.st = st});
    if (rc == -ENOENT && *tp->rest && rejected(x, tp)) {
        fs_stat_file(x, st, 0644, 0);
        rc = 0;
    }
    return rc;
}

struct rejected_fill {
    fs_ctx *x;
    fs_fill_fn fill;
    void *buf;
};

static int fill_rejected(void *c, const char *name)
{
    struct rejected_fill *r = c;
    struct stat st;
    fs_stat_file(r->x, &st, 0644, 0);
    return r->fill(r->buf, name, &st);
}

static int im_readdir(fs_ctx *x, const tree_path *tp, fs_fill_fn fill, void *buf)
{
    int rc = import_call(x, tp, IM_READDIR, (import_args){.fill = fill, .buf = buf});
    char *store = rc == 0 ? fs_store_name(x, tp->dataset, tp->store) : NULL;
    struct rejected_fill r = {x, fill, buf};
    if (store)
        rejects_list_dir(x->rejects, store, tp->rest, fill_rejected, &r);
    free(store);
    return rc;
}

static int im_mkdir(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode)
{
    (void)path;
    if (!*tp->rest)
        return -EEXIST;
    int rc = places_store_exists(x, tp);
    return rc ? rc : import_call(x, tp, IM_MKDIR, (import_args){.mode = mode});
}

static int im_rmdir(fs_ctx *x, const char *path, const tree_path *tp)
{
    if (!*tp->rest)
        return fs_deny(path, "rmdir: import/ is part of the store", -EPERM);
    int rc = places_store_exists(x, tp);
    return rc ? rc : import_call(x, tp, IM_RMDIR, (import_args){0});
}

static int im_create(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode, int flags,
                     fs_file **out)
{
    (void)path;
    if (!*tp->rest)
        return -EISDIR;
    int rc = places_store_exists(x, tp);
    if (rc)
        return rc;
    forget_rejected(x, tp); /* written again: a new file */
    return open_import(x, tp, flags, IM_CREATE, mode, out);
}

static int im_open(fs_ctx *x, const char *path, const tree_path *tp, const struct stat *st,
                   int flags, fs_file **out)
{
    (void)path;
    (void)st;
    if (rejected(x, tp)) {
        /* The refused file is gone; what is shown is its empty trace.
         * Writing it (the shell's `>` on a cached name) starts anew. */
        if (!node_wants_write(flags))
            return node_open_buffer(strdup(""), 0, out);
        forget_rejected(x, tp);
        return open_import(x, tp, flags, IM_CREATE, 0644, out);
    }
    int rc = open_import(x, tp, flags, IM_OPEN, 0, out);
    /* Dropped since the kernel looked the name up (it still caches it):
     * O_CREAT makes it anew, as on a local disk. */
    if (rc == -ENOENT && (flags & O_CREAT))
        rc = open_import(x, tp, flags, IM_CREATE, 0644, out);
    return rc;
}

static int im_unlink(fs_ctx *x, const char *path, const tree_path *tp)
{
    (void)path;
    int rc = places_store_exists(x, tp);
    if (rc)
        return rc;
    rc = import_call(x, tp, IM_UNLINK, (import_args){0});
    if (rc == -ENOENT && forget_rejected(x, tp))
        rc = 0;
    if (rc == 0)
        xattrs_call(x, tp, XA_DROP, NULL);
    return rc;
}

static int im_truncate(fs_ctx *x, const char *path, const tree_path *tp, off_t size, fs_file *open)
{
    (void)path;
    uint64_t fh = open && open->ops == &file_ops ? ((import_file *)open)->fh : 0;
    return import_call(x, tp, IM_TRUNCATE, (import_args){.size = size, .fh = fh});
}

static int im_utimens(fs_ctx *x, const char *path, const tree_path *tp, const struct timespec tv[2])
{
    (void)path;
    return import_call(x, tp, IM_UTIMENS, (import_args){.tv = tv});
}

static int im_chmod(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode)
{
    (void)path;
    return import_call(x, tp, IM_CHMOD, (import_args){.mode = mode});
}

static int im_chown(fs_ctx *x, const char *path, const tree_path *tp, uid_t uid, gid_t gid)
{
    if (!*tp->rest)
        return node_chown_fixed(x, path, tp, uid, gid);
    return import_call(x, tp, IM_CHOWN, (import_args){.uid = uid, .gid = gid});
}

static int im_rename(fs_ctx *x, const char *from, const tree_path *a, const tree_path *b,
                     unsigned int flags)
{
    if (strcmp(a->dataset, b->dataset) != 0 || strcmp(a->store, b->store) != 0)
        return -EXDEV; /* mv copies then */
    if (!*a->rest || !*b->rest)
        return fs_deny(from, "rename: import/ itself cannot move", -EPERM);
    int rc = places_store_exists(x, a);
    if (rc)
        return rc;
    rc = import_call(x, a, IM_RENAME, (import_args){.to = b->rest, .rename_flags = flags});
    if (rc == 0)
        xattrs_call(x, a, XA_RENAME, b->rest);
    return rc;
}

/* ---- extended attributes: user.* on the files below import/ (not on
 * import/ itself) */

/* The store's full name when tp is an existing entry below import/; else
 * NULL with *rc set: none for import/ itself, or why tp is not there. */
static char *xattr_target(fs_ctx *x, const tree_path *tp, int none, int *rc)
{
    struct stat st;
    *rc = *tp->rest ? im_getattr(x, tp, &st) : none;
    if (*rc)
        return NULL;
    char *store = fs_store_name(x, tp->dataset, tp->store);
    if (!store)
        *rc = -ENOMEM;
    return store;
}

/* user.dicomfs.state: the import state of a file under import/ (pending,
 * uploaded, importing, imported, present, failed), read-only: xattrs.c
 * refuses to set or remove names under user.dicomfs. */
#define STATE_XATTR "user.dicomfs.state"

/* getxattr's convention: the length (size 0), the value, or -errno. */
static int state_xattr(fs_ctx *x, const tree_path *tp, char *value, size_t size)
{
    char state[32];
    if (!x->import)
        return -ENODATA;
    int rc = import_call(x, tp, IM_STATE, (import_args){.out = state, .outlen = sizeof state});
    if (rc)
        return rc == -ENOENT ? -ENODATA : rc; /* e.g. a refused file's trace */
    size_t len = strlen(state);
    if (size == 0)
        return (int)len;
    if (size < len)
        return -ERANGE;
    memcpy(value, state, len);
    return (int)len;
}

static int im_setxattr(fs_ctx *x, const char *path, const tree_path *tp, const char *name,
                       const char *value, size_t size, int flags)
{
    if (!*tp->rest)
        return node_no_xattrs(path);
    int rc;
    char *store = xattr_target(x, tp, -ENOTSUP, &rc);
    if (!store)
        return rc;
    rc = xattrs_set(x->xattrs, store, tp->rest, name, value, size, flags);
    free(store);
    return rc;
}

static int im_getxattr(fs_ctx *x, const char *path, const tree_path *tp, const char *name,
                       char *value, size_t size)
{
    (void)path;
    int rc;
    char *store = xattr_target(x, tp, -ENODATA, &rc);
    if (!store)
        return rc;
    if (strcmp(name, STATE_XATTR) == 0)
        rc = state_xattr(x, tp, value, size);
    else
        rc = xattrs_get(x->xattrs, store, tp->rest, name, value, size);
    free(store);
    return rc;
}

/* user.dicomfs.state is read by name only: listing it would make
 * `rsync -X` try to remove it from files whose source lacks it (EPERM,
 * exit 23), as rsync mirrors the source's list of names. */
static int im_listxattr(fs_ctx *x, const char *path, const tree_path *tp, char *list, size_t size)
{
    (void)path;
    if (!*tp->rest)
        return 0; /* import/ itself has none */
    int rc;
    char *store = xattr_target(x, tp, 0, &rc);
    if (!store)
        return rc;
    rc = xattrs_list(x->xattrs, store, tp->rest, list, size);
    free(store);
    return rc;
}

static int im_removexattr(fs_ctx *x, const char *path, const tree_path *tp, const char *name)
{
    (void)path;
    int rc;
    char *store = xattr_target(x, tp, -ENODATA, &rc);
    if (!store)
        return rc;
    rc = xattrs_remove(x->xattrs, store, tp->rest, name);
    free(store);
    return rc;
}

const fs_node node_import = {
    .needs_import = true,
    .getattr = im_getattr,
    .readdir = im_readdir,
    .mkdir = im_mkdir,
    .rmdir = im_rmdir,
    .create = im_create,
    .open = im_open,
    .unlink = im_unlink,
    .truncate = im_truncate,
    .utimens = im_utimens,
    .chmod = im_chmod,
    .chown = im_chown,
    .rename = im_rename,
    .setxattr = im_setxattr,
    .getxattr = im_getxattr,
    .listxattr = im_listxattr,
    .removexattr = im_removexattr,
};
