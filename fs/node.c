/* node: the registry of node tables, the calls every kind shares and the
 * plain open files (see node.h). */
#include "node.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One line per kind of entry (tree.h). */
static const fs_node *const registry[] = {
    [TREE_ROOT] = &node_root,
    [TREE_DATASET] = &node_dataset,
    [TREE_DS_OPS] = &node_ops_dir,
    [TREE_DS_OP] = &node_op,
    [TREE_STORE] = &node_store,
    [TREE_STATUS] = &node_status,
    [TREE_IMPORT] = &node_import,
    [TREE_EXPORT] = &node_export,
    [TREE_EXPORT_FMT] = &node_export_fmt,
    [TREE_EXPORT_FILTER] = &node_export_filter,
    [TREE_EXPORT_OUT] = &node_export_out,
    [TREE_STORE_OPS] = &node_ops_dir,
    [TREE_STORE_OP] = &node_op,
    [TREE_STUDIES] = &node_studies,
};

/* A name that cannot exist at its place (TREE_NONE). */
static int none_gone(fs_ctx *x, const char *path, const tree_path *tp)
{
    (void)x;
    (void)path;
    (void)tp;
    return -ENOENT;
}

static const fs_node node_none = {
    .rmdir = none_gone,
    .unlink = none_gone,
};

const fs_node *node_of(tree_kind kind)
{
    size_t n = sizeof registry / sizeof registry[0];
    return (size_t)kind < n && registry[kind] ? registry[kind] : &node_none;
}

int node_getattr(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    const fs_node *n = node_of(tp->kind);
    return n->getattr ? n->getattr(x, tp, st) : -ENOENT;
}

int node_readdir(fs_ctx *x, const tree_path *tp, fs_fill_fn fill, void *buf)
{
    struct stat st;
    int rc = node_getattr(x, tp, &st);
    if (rc)
        return rc;
    if (!S_ISDIR(st.st_mode))
        return -ENOTDIR;
    const fs_node *n = node_of(tp->kind);
    return n->readdir ? n->readdir(x, tp, fill, buf) : -ENOTDIR;
}

bool node_wants_write(int flags)
{
    return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

static int refuse(const char *path, fs_refusal r)
{
    return r.what ? fs_deny(path, r.what, r.err) : r.err;
}

int node_mkdir(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode)
{
    const fs_node *n = node_of(tp->kind);
    if (n->mkdir)
        return n->mkdir(x, path, tp, mode);
    if (n->mkdir_refused.err)
        return refuse(path, n->mkdir_refused);
    return fs_deny(path, "mkdir: only datasets, stores and folders under import/ can be made",
                   -EPERM);
}

int node_rmdir(fs_ctx *x, const char *path, const tree_path *tp)
{
    const fs_node *n = node_of(tp->kind);
    return n->rmdir ? n->rmdir(x, path, tp) : fs_deny(path, "rmdir: fixed directory", -EPERM);
}

int node_create(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode, int flags,
                fs_file **out)
{
    const fs_node *n = node_of(tp->kind);
    if (n->create)
        return n->create(x, path, tp, mode, flags, out);
    if (n->create_refused.err)
        return refuse(path, n->create_refused);
    return fs_deny(path, "create: not a place for files", -EACCES);
}

int node_open(fs_ctx *x, const char *path, const tree_path *tp, int flags, fs_file **out)
{
    struct stat st;
    int rc = node_getattr(x, tp, &st);
    if (rc)
        return rc;
    if (S_ISDIR(st.st_mode))
        return -EISDIR;
    const fs_node *n = node_of(tp->kind);
    if (n->write_refused && node_wants_write(flags))
        return fs_deny(path, n->write_refused, -EACCES);
    return n->open ? n->open(x, path, tp, &st, flags, out) : -ENOENT;
}

int node_unlink(fs_ctx *x, const char *path, const tree_path *tp)
{
    const fs_node *n = node_of(tp->kind);
    if (n->unlink)
        return n->unlink(x, path, tp);
    if (n->unlink_refused.err)
        return refuse(path, n->unlink_refused);
    return fs_deny(path, "unlink: not removable", -EPERM);
}

int node_truncate(fs_ctx *x, const char *path, const tree_path *tp, off_t size, fs_file *open)
{
    const fs_node *n = node_of(tp->kind);
    if (n->truncate)
        return n->truncate(x, path, tp, size, open);
    struct stat st;
    int rc = node_getattr(x, tp, &st);
    if (rc)
        return rc;
    return fs_deny(path, "truncate: read-only", S_ISDIR(st.st_mode) ? -EISDIR : -EACCES);
}

int node_utimens(fs_ctx *x, const char *path, const tree_path *tp, const struct timespec tv[2])
{
    const fs_node *n = node_of(tp->kind);
    if (n->utimens)
        return n->utimens(x, path, tp, tv);
    struct stat st;
    int rc = node_getattr(x, tp, &st);
    return rc ? rc : fs_deny(path, "utimens: times of this entry are fixed", -EPERM);
}

int node_chmod(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode)
{
    const fs_node *n = node_of(tp->kind);
    if (n->chmod)
        return n->chmod(x, path, tp, mode);
    struct stat st;
    int rc = node_getattr(x, tp, &st);
    return rc ? rc : fs_deny(path, "chmod: permissions of this entry are fixed", -EPERM);
}

int node_chown(fs_ctx *x, const char *path, const tree_path *tp, uid_t uid, gid_t gid)
{
    const fs_node *n = node_of(tp->kind);
    return n->chown ? n->chown(x, path, tp, uid, gid) : node_chown_fixed(x, path, tp, uid, gid);
}

int node_rename(fs_ctx *x, const char *from, const tree_path *a, const tree_path *b,
                unsigned int flags)
{
    const fs_node *n = node_of(a->kind);
    if (a->kind == b->kind && n->rename)
        return n->rename(x, from, a, b, flags);
    if (b->kind == TREE_IMPORT)
        return -EXDEV; /* mv copies then */
    return fs_deny(from, "rename: only files under import/ and export/ can be renamed", -EPERM);
}

int node_no_xattrs(const char *path)
{
    return fs_deny(path, "setxattr: only files under import/ keep attributes", -ENOTSUP);
}

int node_setxattr(fs_ctx *x, const char *path, const tree_path *tp, const char *name,
                  const char *value, size_t size, int flags)
{
    const fs_node *n = node_of(tp->kind);
    return n->setxattr ? n->setxattr(x, path, tp, name, value, size, flags) : node_no_xattrs(path);
}

int node_getxattr(fs_ctx *x, const char *path, const tree_path *tp, const char *name, char *value,
                  size_t size)
{
    const fs_node *n = node_of(tp->kind);
    return n->getxattr ? n->getxattr(x, path, tp, name, value, size) : -ENODATA;
}

int node_listxattr(fs_ctx *x, const char *path, const tree_path *tp, char *list, size_t size)
{
    const fs_node *n = node_of(tp->kind);
    return n->listxattr ? n->listxattr(x, path, tp, list, size) : 0;
}

int node_removexattr(fs_ctx *x, const char *path, const tree_path *tp, const char *name)
{
    const fs_node *n = node_of(tp->kind);
    return n->removexattr ? n->removexattr(x, path, tp, name) : -ENODATA;
}

int node_chown_fixed(fs_ctx *x, const char *path, const tree_path *tp, uid_t uid, gid_t gid)
{
    struct stat st;
    int rc = node_getattr(x, tp, &st);
    if (rc)
        return rc;
    /* Everything belongs to the mounting user; "changing" to it is a no-op
     * (cp -p, rsync -o as that user). */
    if ((uid == (uid_t)-1 || uid == x->uid) && (gid == (gid_t)-1 || gid == x->gid))
        return 0;
    return fs_deny(path, "chown: every entry belongs to the mounting user", -EPERM);
}

/* ---- a buffer */

typedef struct buf_file {
    fs_file f;
    char *data;
    size_t len;
} buf_file;

int node_copy_out(const char *data, size_t len, char *buf, size_t size, off_t off)
{
    if (off < 0)
        return -EINVAL;
    if ((size_t)off >= len)
        return 0;
    if (size > len - (size_t)off)
        size = len - (size_t)off;
    memcpy(buf, data + off, size);
    return (int)size;
}

static int buf_read(fs_ctx *x, fs_file *f, char *buf, size_t size, off_t off)
{
    (void)x;
    buf_file *b = (buf_file *)f;
    return node_copy_out(b->data, b->len, buf, size, off);
}

static void buf_release(fs_ctx *x, fs_file *f)
{
    (void)x;
    free(((buf_file *)f)->data);
    free(f);
}

static const fs_file_ops buf_ops = {.read = buf_read, .release = buf_release};

int node_open_buffer(char *data, size_t len, fs_file **out)
{
    buf_file *b = data ? calloc(1, sizeof *b) : NULL;
    if (!b) {
        free(data);
        return -ENOMEM;
    }
    b->f.ops = &buf_ops;
    b->f.direct_io = true;
    b->data = data;
    b->len = len;
    *out = &b->f;
    return 0;
}

/* ---- a local descriptor */

typedef struct fd_file {
    fs_file f;
    int fd;
} fd_file;

static int fd_read(fs_ctx *x, fs_file *f, char *buf, size_t size, off_t off)
{
    (void)x;
    ssize_t n = pread(((fd_file *)f)->fd, buf, size, off);
    return n < 0 ? -errno : (int)n;
}

static int fd_write(fs_ctx *x, fs_file *f, const char *buf, size_t size, off_t off)
{
    (void)x;
    ssize_t n = pwrite(((fd_file *)f)->fd, buf, size, off);
    return n < 0 ? -errno : (int)n;
}

static void fd_release(fs_ctx *x, fs_file *f)
{
    (void)x;
    close(((fd_file *)f)->fd);
    free(f);
}

static const fs_file_ops fd_ro_ops = {.read = fd_read, .release = fd_release};
static const fs_file_ops fd_rw_ops = {.read = fd_read, .write = fd_write, .release = fd_release};

int node_open_fd(int fd, bool writable, fs_file **out)
{
    fd_file *d = calloc(1, sizeof *d);
    if (!d) {
        close(fd);
        return -ENOMEM;
    }
    d->f.ops = writable ? &fd_rw_ops : &fd_ro_ops;
    d->fd = fd;
    *out = &d->f;
    return 0;
}

int node_fd_writable(const fs_file *f)
{
    return f && f->ops == &fd_rw_ops ? ((const fd_file *)f)->fd : -1;
}
