/* nullfs: a FUSE file system that does (almost) nothing, to measure the
 * floor of the FUSE path itself on this machine (tests/bench/floor.py).
 *
 * It accepts what `cp -r` does into it: mkdir, create, write, flush,
 * release (and getattr, chmod, utimens, and getxattr so that the kernel
 * sends the same requests as to dicomfs's import/). Names, modes and sizes live in one
 * table (a glibc tsearch tree under a mutex); nothing else is kept.
 *   default     discard: the data is dropped, only the size is noted.
 *   -o spool=D  spool: each file's data is pwrite()n into D/<number>, as
 *               dicomfs spools, without fsync (dicomfs's default close());
 *               the files stay (the caller removes D).
 *   -o killpriv asks for FUSE_CAP_HANDLE_KILLPRIV in init (an experiment:
 *               does the kernel then stop its GETXATTR security.capability?).
 *   -o writeback asks for FUSE_CAP_WRITEBACK_CACHE (writes go to the page
 *               cache; the kernel sends them on in the background or at close).
 * Mount settings as dicomfs's where they matter for the cost: the
 * high-level API, fuse_loop_mt with libfuse's default threads,
 * default_permissions, max_write 1 MiB and st_blksize 1 MiB (so cp writes
 * 1 MiB requests), async reads, libfuse's default entry and attr timeouts.
 * No readdir, unlink or rename: `ls` of the mount fails (ENOSYS).
 *
 * usage: nullfs MOUNTPOINT [-o spool=DIR] [-o killpriv] [-o writeback] [-d] */
#define FUSE_USE_VERSION 31

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <search.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fuse.h>

struct node {
    char *path; /* the tree's key */
    mode_t mode;
    off_t size;
    int fd; /* spool: the open spool file, else -1 */
};

struct nullfs {
    char *spool; /* -o spool=DIR */
    int killpriv, writeback;
    int spool_dir; /* its descriptor */
    pthread_mutex_t lock;
    void *root; /* struct node * by path */
    unsigned long files;
};
static struct nullfs nfs = {.spool_dir = -1, .lock = PTHREAD_MUTEX_INITIALIZER};

static int by_path(const void *a, const void *b)
{
    return strcmp(((const struct node *)a)->path, ((const struct node *)b)->path);
}

/* Under nfs.lock. */
static struct node *find(const char *path)
{
    struct node key = {.path = (char *)path};
    struct node **e = tfind(&key, &nfs.root, by_path);
    return e ? *e : NULL;
}

/* Under nfs.lock: a new entry, or NULL with -errno in *rc. */
static struct node *add(const char *path, mode_t mode, int *rc)
{
    struct node *e = calloc(1, sizeof *e);
    if (e)
        e->path = strdup(path);
    if (!e || !e->path) {
        free(e);
        *rc = -ENOMEM;
        return NULL;
    }
    e->mode = mode;
    e->fd = -1;
    struct node **at = tsearch(e, &nfs.root, by_path);
    if (!at || *at != e) {
        *rc = at ? -EEXIST : -ENOMEM;
        free(e->path);
        free(e);
        return NULL;
    }
    return e;
}

static struct node *of(struct fuse_file_info *fi)
{
    return (struct node *)(uintptr_t)fi->fh;
}

static void *nfs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    cfg->hard_remove = 1;
    if (conn->capable & FUSE_CAP_ASYNC_READ)
        conn->want |= FUSE_CAP_ASYNC_READ;
    if (nfs.killpriv && (conn->capable & FUSE_CAP_HANDLE_KILLPRIV))
        conn->want |= FUSE_CAP_HANDLE_KILLPRIV;
    if (nfs.writeback && (conn->capable & FUSE_CAP_WRITEBACK_CACHE))
        conn->want |= FUSE_CAP_WRITEBACK_CACHE;
    if (conn->max_write < (1u << 20))
        conn->max_write = 1u << 20;
    conn->max_readahead = 1u << 20;
    return NULL;
}

static int nfs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    (void)fi;
    memset(st, 0, sizeof *st);
    st->st_uid = getuid();
    st->st_gid = getgid();
    st->st_blksize = 1 << 20; /* as dicomfs's import/: cp writes 1 MiB at a time */
    st->st_nlink = 1;
    if (strcmp(path, "/") == 0) {
        st->st_mode = S_IFDIR | 0755;
        return 0;
    }
    pthread_mutex_lock(&nfs.lock);
    struct node *e = find(path);
    if (e) {
        st->st_mode = e->mode;
        st->st_size = e->size;
    }
    pthread_mutex_unlock(&nfs.lock);
    return e ? 0 : -ENOENT;
}

static int nfs_mkdir(const char *path, mode_t mode)
{
    int rc = 0;
    pthread_mutex_lock(&nfs.lock);
    add(path, S_IFDIR | (mode & 07777), &rc);
    pthread_mutex_unlock(&nfs.lock);
    return rc;
}

static int nfs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    (void)fi;
    pthread_mutex_lock(&nfs.lock);
    struct node *e = find(path);
    if (e)
        e->mode = (e->mode & S_IFMT) | (mode & 07777);
    pthread_mutex_unlock(&nfs.lock);
    return e ? 0 : -ENOENT;
}

/* Times are not kept; writeback_cache sends the mtime at close. */
static int nfs_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
    (void)path;
    (void)tv;
    (void)fi;
    return 0;
}

/* Spool mode: the file's data goes to spool/<n>, a new name per file. */
static int open_spool(struct node *e)
{
    if (nfs.spool_dir < 0)
        return 0;
    char name[32];
    snprintf(name, sizeof name, "%lu", nfs.files);
    e->fd = openat(nfs.spool_dir, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    return e->fd < 0 ? -errno : 0;
}

static int nfs_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    int rc = 0;
    pthread_mutex_lock(&nfs.lock);
    struct node *e = add(path, S_IFREG | (mode & 07777), &rc);
    if (e) {
        nfs.files++;
        rc = open_spool(e);
        fi->fh = (uint64_t)(uintptr_t)e;
    }
    pthread_mutex_unlock(&nfs.lock);
    return rc;
}

static int nfs_write(const char *path, const char *buf, size_t len, off_t off,
                     struct fuse_file_info *fi)
{
    (void)path;
    struct node *e = of(fi);
    if (e->fd >= 0 && pwrite(e->fd, buf, len, off) != (ssize_t)len)
        return -EIO;
    pthread_mutex_lock(&nfs.lock);
    if (off + (off_t)len > e->size)
        e->size = off + (off_t)len;
    pthread_mutex_unlock(&nfs.lock);
    return (int)len;
}

static int nfs_flush(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    (void)fi;
    return 0;
}

static int nfs_release(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    struct node *e = of(fi);
    int rc = e->fd >= 0 && close(e->fd) != 0 ? -errno : 0;
    e->fd = -1;
    return rc;
}

/* Answered as dicomfs answers a file without extended attributes: an
 * ENOSYS would make the kernel stop asking, which dicomfs never does. */
static int nfs_getxattr(const char *path, const char *name, char *value, size_t size)
{
    (void)path;
    (void)name;
    (void)value;
    (void)size;
    return -ENODATA;
}

static const struct fuse_operations nfs_ops = {
    .init = nfs_init,
    .getattr = nfs_getattr,
    .mkdir = nfs_mkdir,
    .chmod = nfs_chmod,
    .utimens = nfs_utimens,
    .create = nfs_create,
    .write = nfs_write,
    .flush = nfs_flush,
    .release = nfs_release,
    .getxattr = nfs_getxattr,
};

static const struct fuse_opt nfs_opts[] = {
    {"spool=%s", offsetof(struct nullfs, spool), 0},
    {"killpriv", offsetof(struct nullfs, killpriv), 1},
    {"writeback", offsetof(struct nullfs, writeback), 1},
    FUSE_OPT_END,
};

int main(int argc, char **argv)
{
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    if (fuse_opt_parse(&args, &nfs, nfs_opts, NULL) != 0)
        return 1;
    if (nfs.spool) {
        nfs.spool_dir = open(nfs.spool, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (nfs.spool_dir < 0) {
            fprintf(stderr, "nullfs: spool=%s: %s\n", nfs.spool, strerror(errno));
            return 1;
        }
    }
    /* dicomfs's defaults: default_permissions, multithreaded, foreground
     * here so the caller measures this very process. */
    if (fuse_opt_add_arg(&args, "-odefault_permissions") != 0 || fuse_opt_add_arg(&args, "-f"))
        return 1;
    int rc = fuse_main(args.argc, args.argv, &nfs_ops, NULL);
    fuse_opt_free_args(&args);
    free(nfs.spool);
    return rc;
}
