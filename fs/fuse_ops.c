/* fuse_ops: the FUSE callbacks, dispatching to the node of each path's
 * kind (see fuse_ops.h). */
#include "fuse_ops.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "deadline.h"
#include "log.h"
#include "node.h"
#include "places.h"
#include "tree.h"

static fs_ctx *ctx(void)
{
    return fuse_get_context()->private_data;
}

/* Classifies path, with a log line when it is not a valid path. */
static int parse(const char *path, tree_path *tp)
{
    fs_ctx *x = ctx();
    const char *fixed = x->opt->dataset ? hc_name_leaf(x->opt->dataset) : NULL;
    int rc = tree_parse(path, fixed, tp);
    if (rc)
        log_debug("%s: %s", path, strerror(-rc));
    else if (node_of(tp->kind)->needs_import && !x->import)
        rc = -EIO; /* init could not start it (logged there) */
    return rc;
}

/* ---- entries */

static int op_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    (void)fi;
    tree_path tp;
    int rc = parse(path, &tp);
    if (rc)
        return rc == -EINVAL ? -ENOENT : rc;
    return node_getattr(ctx(), &tp, st);
}

struct fill_adapter {
    fuse_fill_dir_t fill;
    void *buf;
};

static int adapt_fill(void *buf, const char *name, const struct stat *st)
{
    struct fill_adapter *a = buf;
    return a->fill(a->buf, name, st, 0, 0);
}

static int op_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    (void)off;
    (void)fi;
    (void)flags;
    tree_path tp;
    int rc = parse(path, &tp);
    if (rc)
        return rc;
    fs_ctx *x = ctx();
    struct fill_adapter a = {filler, buf};
    struct stat st;
    fs_stat_dir(x, &st, 0755);
    filler(buf, ".", &st, 0, 0);
    filler(buf, "..", NULL, 0, 0);
    rc = node_readdir(x, &tp, adapt_fill, &a);
    if (rc && rc != -ENOENT && rc != -ENOTDIR)
        log_error("%s: listing failed: %s", path, strerror(-rc));
    return rc;
}

static int op_mkdir(const char *path, mode_t mode)
{
    tree_path tp;
    int rc = parse(path, &tp);
    return rc ? fs_deny(path, "mkdir: bad name", rc) : node_mkdir(ctx(), path, &tp, mode);
}

static int op_rmdir(const char *path)
{
    tree_path tp;
    int rc = parse(path, &tp);
    return rc ? rc : node_rmdir(ctx(), path, &tp);
}

static int op_unlink(const char *path)
{
    tree_path tp;
    int rc = parse(path, &tp);
    return rc ? rc : node_unlink(ctx(), path, &tp);
}

static int op_rename(const char *from, const char *to, unsigned int flags)
{
    tree_path a, b;
    int rc = parse(from, &a);
    if (rc)
        return rc;
    rc = parse(to, &b);
    if (rc)
        return fs_deny(to, "rename: bad name", rc);
    return node_rename(ctx(), from, &a, &b, flags);
}

/* ---- open files: fi->fh holds the node's fs_file */

static fs_file *file_of(struct fuse_file_info *fi)
{
    return fi ? (fs_file *)(uintptr_t)fi->fh : NULL;
}

static void set_file(struct fuse_file_info *fi, fs_file *f)
{
    fi->fh = (uintptr_t)f;
    if (f->direct_io) {
        /* Content made per open may differ from the size getattr saw: read
         * until EOF, never trust the cached size. */
        fi->direct_io = 1;
        fi->keep_cache = 0;
    }
}

static int op_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    tree_path tp;
    int rc = parse(path, &tp);
    if (rc)
        return fs_deny(path, "create: bad name", rc);
    fs_file *f = NULL;
    rc = node_create(ctx(), path, &tp, mode, fi->flags, &f);
    if (rc == 0)
        set_file(fi, f);
    return rc;
}

static int op_open(const char *path, struct fuse_file_info *fi)
{
    tree_path tp;
    int rc = parse(path, &tp);
    if (rc)
        return rc;
    fs_file *f = NULL;
    rc = node_open(ctx(), path, &tp, fi->flags, &f);
    if (rc == 0)
        set_file(fi, f);
    return rc;
}

static int op_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)path;
    fs_file *f = file_of(fi);
    return f ? f->ops->read(ctx(), f, buf, size, off) : -EBADF;
}

static int op_write(const char *path, const char *buf, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    fs_file *f = file_of(fi);
    if (!f)
        return -EBADF;
    if (!f->ops->write)
        return fs_deny(path, "write: read-only file", -EBADF);
    return f->ops->write(ctx(), f, buf, size, off);
}

static int op_flush(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    fs_file *f = file_of(fi);
    return f && f->ops->flush ? f->ops->flush(ctx(), f) : 0;
}

static int op_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    (void)path;
    (void)datasync;
    fs_file *f = file_of(fi);
    return f && f->ops->fsync ? f->ops->fsync(ctx(), f) : 0;
}

static int op_release(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    fs_file *f = file_of(fi);
    if (!f)
        return 0;
    fi->fh = 0;
    f->ops->release(ctx(), f);
    return 0;
}

/* ---- attribute changes */

static int op_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
    tree_path tp;
    int rc = parse(path, &tp);
    return rc ? rc : node_truncate(ctx(), path, &tp, size, file_of(fi));
}

static int op_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
    (void)fi;
    tree_path tp;
    int rc = parse(path, &tp);
    return rc ? rc : node_utimens(ctx(), path, &tp, tv);
}

static int op_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    (void)fi;
    tree_path tp;
    int rc = parse(path, &tp);
    return rc ? rc : node_chmod(ctx(), path, &tp, mode);
}

static int op_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
    (void)fi;
    tree_path tp;
    int rc = parse(path, &tp);
    return rc ? rc : node_chown(ctx(), path, &tp, uid, gid);
}

/* ---- extended attributes */

static int op_setxattr(const char *path, const char *name, const char *value, size_t size,
                       int flags)
{
    tree_path tp;
    int rc = parse(path, &tp);
    return rc ? rc : node_setxattr(ctx(), path, &tp, name, value, size, flags);
}

static int op_getxattr(const char *path, const char *name, char *value, size_t size)
{
    /* Only user.* names exist. `ls -l` asks for security.selinux and
     * system.posix_acl_access of every entry (two round trips each, even
     * with every entry cached); "not supported" (not "no such attribute")
     * makes ls stop asking for the rest of the filesystem: a cached
     * `ls -l` of 1000 entries then makes no request per entry. */
    if (strncmp(name, "user.", 5) != 0)
        return -ENOTSUP;
    tree_path tp;
    int rc = parse(path, &tp);
    return rc ? rc : node_getxattr(ctx(), path, &tp, name, value, size);
}

static int op_listxattr(const char *path, char *list, size_t size)
{
    tree_path tp;
    int rc = parse(path, &tp);
    return rc ? rc : node_listxattr(ctx(), path, &tp, list, size);
}

static int op_removexattr(const char *path, const char *name)
{
    tree_path tp;
    int rc = parse(path, &tp);
    return rc ? rc : node_removexattr(ctx(), path, &tp, name);
}

/* ---- symlink, mknod, link: never possible. import/ holds DICOM files
 * (regular files) only, and the rest of the tree is not writable, so these
 * are refused with EPERM (not ENOSYS, which tools report as a bug). */

static int op_symlink(const char *target, const char *path)
{
    (void)target;
    return fs_deny(path,
                   "cannot create a symbolic link (import/ holds DICOM files only; "
                   "the rest of the tree is not writable)",
                   -EPERM);
}

static int op_mknod(const char *path, mode_t mode, dev_t rdev)
{
    (void)rdev;
    return fs_deny(path,
                   S_ISREG(mode) ? "cannot create a file here"
                                 : "cannot create a special file (FIFO, socket or device node; "
                                   "import/ holds DICOM files only)",
                   -EPERM);
}

static int op_link(const char *from, const char *to)
{
    (void)from;
    return fs_deny(to, "cannot create a hard link (each file in import/ is one DICOM upload)",
                   -EPERM);
}

static int op_statfs(const char *path, struct statvfs *sv)
{
    (void)path;
    fs_ctx *x = ctx();
    /* What can be spooled is bounded by the cache directory's filesystem. */
    if (statvfs(x->opt->cache_dir, sv) != 0)
        memset(sv, 0, sizeof *sv);
    sv->f_namemax = TREE_NAME_MAX;
    return 0;
}

/* ---- init / destroy */

static void *op_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    fs_ctx *x = ctx();
    cfg->nullpath_ok = 0;
    cfg->use_ino = 0;
    cfg->hard_remove = 1; /* no .fuse_hidden files in import/ */
    if (conn->capable & FUSE_CAP_ASYNC_READ)
        conn->want |= FUSE_CAP_ASYNC_READ;
    /* Without it the kernel runs a lookup in a directory only after a
     * readdir of that directory in flight (fuse_lock_inode): a `stat
     * DS/STORE` would wait for an `ls DS` waiting on the server, although
     * the last listing answers it at once. Nothing here needs the kernel's
     * serialization: the directory cache is locked itself. libfuse < 3.17.1
     * drops the wish: fuseio.c then puts it in the INIT reply. */
    if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
        conn->want |= FUSE_CAP_PARALLEL_DIROPS;
    if (conn->max_write < (1u << 20))
        conn->max_write = 1u << 20;
    conn->max_readahead = 1u << 20;

    fs_ctx_start(x, fuse_interrupted);
    x->primer_started = pthread_create(&x->primer, NULL, places_primer, x) == 0;
    log_info("mounted %s (staging gs://%s/%s, exports to %s, cache %s)", x->opt->source,
             x->opt->staging_bucket, x->opt->staging_prefix, x->opt->export_to, x->opt->cache_dir);
    return x;
}

static void op_destroy(void *private_data)
{
    fs_ctx *x = private_data;
    if (x->primer_started)
        pthread_join(x->primer, NULL); /* at most the mount's timeout */
    x->primer_started = false;
    fs_ctx_stop(x);
    log_info("unmounted %s", x->opt->source);
}

/* Every callback that may reach the server runs under the mount's timeout
 * (deadline.h): a person waits on the server at most that long, retries
 * included; background threads have no deadline. */
#define TIMED(op, params, args)                                                                    \
    static int timed_##op params                                                                   \
    {                                                                                              \
        deadline_begin(ctx()->opt->timeout);                                                       \
        int r = op args;                                                                           \
        deadline_end();                                                                            \
        return r;                                                                                  \
    }

TIMED(op_getattr, (const char *p, struct stat *st, struct fuse_file_info *fi), (p, st, fi))
TIMED(op_readdir,
      (const char *p, void *buf, fuse_fill_dir_t filler, off_t off, struct fuse_file_info *fi,
       enum fuse_readdir_flags fl),
      (p, buf, filler, off, fi, fl))
TIMED(op_mkdir, (const char *p, mode_t mode), (p, mode))
TIMED(op_rmdir, (const char *p), (p))
TIMED(op_unlink, (const char *p), (p))
TIMED(op_rename, (const char *a, const char *b, unsigned int fl), (a, b, fl))
TIMED(op_create, (const char *p, mode_t mode, struct fuse_file_info *fi), (p, mode, fi))
TIMED(op_open, (const char *p, struct fuse_file_info *fi), (p, fi))
TIMED(op_read, (const char *p, char *buf, size_t n, off_t off, struct fuse_file_info *fi),
      (p, buf, n, off, fi))
TIMED(op_write, (const char *p, const char *buf, size_t n, off_t off, struct fuse_file_info *fi),
      (p, buf, n, off, fi))
TIMED(op_flush, (const char *p, struct fuse_file_info *fi), (p, fi))
TIMED(op_fsync, (const char *p, int ds, struct fuse_file_info *fi), (p, ds, fi))
TIMED(op_release, (const char *p, struct fuse_file_info *fi), (p, fi))
TIMED(op_truncate, (const char *p, off_t size, struct fuse_file_info *fi), (p, size, fi))
TIMED(op_utimens, (const char *p, const struct timespec tv[2], struct fuse_file_info *fi),
      (p, tv, fi))
TIMED(op_chmod, (const char *p, mode_t mode, struct fuse_file_info *fi), (p, mode, fi))
TIMED(op_chown, (const char *p, uid_t uid, gid_t gid, struct fuse_file_info *fi), (p, uid, gid, fi))
TIMED(op_statfs, (const char *p, struct statvfs *sv), (p, sv))
TIMED(op_getxattr, (const char *p, const char *name, char *v, size_t n), (p, name, v, n))
TIMED(op_listxattr, (const char *p, char *list, size_t n), (p, list, n))
TIMED(op_setxattr, (const char *p, const char *name, const char *v, size_t n, int fl),
      (p, name, v, n, fl))
TIMED(op_removexattr, (const char *p, const char *name), (p, name))

static const struct fuse_operations operations = {
    .getattr = timed_op_getattr,
    .readdir = timed_op_readdir,
    .mkdir = timed_op_mkdir,
    .rmdir = timed_op_rmdir,
    .unlink = timed_op_unlink,
    .rename = timed_op_rename,
    .create = timed_op_create,
    .open = timed_op_open,
    .read = timed_op_read,
    .write = timed_op_write,
    .flush = timed_op_flush,
    .fsync = timed_op_fsync,
    .release = timed_op_release,
    .truncate = timed_op_truncate,
    .utimens = timed_op_utimens,
    .chmod = timed_op_chmod,
    .chown = timed_op_chown,
    .statfs = timed_op_statfs,
    .getxattr = timed_op_getxattr,
    .listxattr = timed_op_listxattr,
    .setxattr = timed_op_setxattr,
    .removexattr = timed_op_removexattr,
    .symlink = op_symlink,
    .mknod = op_mknod,
    .link = op_link,
    .init = op_init,
    .destroy = op_destroy,
};

const struct fuse_operations *fs_fuse_operations(void)
{
    return &operations;
}
