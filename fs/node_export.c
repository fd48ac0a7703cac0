/* node_export: STORE/export/, its format folders, the filter files and
 * NAME.out/ and NAME.runs/ (export.h), with the editors' scratch files
 * beside the filters (scratch.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "export.h"
#include "log.h"
#include "node.h"
#include "places.h"
#include "scratch.h"

static int dir_getattr(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    int rc = places_store_exists(x, tp);
    if (rc == 0)
        fs_stat_dir(x, st, 0755);
    return rc;
}

/* export/FMT/ (or export/ itself for tree_format_top): filters and scratch files. */
static int fmt_readdir(fs_ctx *x, const tree_path *tp, fs_fill_fn fill, void *buf)
{
    int rc = export_readdir_fmt(x, tp, fill, buf);
    return rc ? rc : scratch_readdir(x, tp, fill, buf);
}

/* ---- export/ */

static int top_readdir(fs_ctx *x, const tree_path *tp, fs_fill_fn fill, void *buf)
{
    struct stat st;
    fs_stat_dir(x, &st, 0755);
    for (size_t i = 0; i < tree_n_formats; i++)
        fill(buf, tree_formats[i].dir, &st);
    tree_path top = *tp; /* filters written straight into export/ */
    top.format = &tree_format_top;
    return fmt_readdir(x, &top, fill, buf);
}

const fs_node node_export = {
    .mkdir_refused = {-EEXIST, NULL},
    .create_refused = {-EACCES, "create: filters go in export/FORMAT/ (dicom, png, ...)"},
    .getattr = dir_getattr,
    .readdir = top_readdir,
};

/* ---- export/FMT/ */

const fs_node node_export_fmt = {
    .mkdir_refused = {-EEXIST, NULL},
    .getattr = dir_getattr,
    .readdir = fmt_readdir,
};

/* ---- export/[FMT/]NAME: a filter, or an editor's scratch file */

typedef struct filter_file {
    fs_file f;
    export_file *ex;
} filter_file;

static int filter_read(fs_ctx *x, fs_file *f, char *buf, size_t size, off_t off)
{
    (void)x;
    return export_read(((filter_file *)f)->ex, buf, size, off);
}

static int filter_write(fs_ctx *x, fs_file *f, const char *buf, size_t size, off_t off)
{
    (void)x;
    return export_write(((filter_file *)f)->ex, buf, size, off);
}

static int filter_flush(fs_ctx *x, fs_file *f)
{
    return export_flush(x, ((filter_file *)f)->ex);
}

static void filter_release(fs_ctx *x, fs_file *f)
{
    export_release(x, ((filter_file *)f)->ex);
    free(f);
}

static const fs_file_ops filter_ops = {
    .read = filter_read,
    .write = filter_write,
    .flush = filter_flush,
    .release = filter_release,
};

static int open_filter(fs_ctx *x, const tree_path *tp, int flags, bool create, fs_file **out)
{
    filter_file *h = calloc(1, sizeof *h);
    if (!h)
        return -ENOMEM;
    int rc = export_open_filter(x, tp, flags, create, &h->ex);
    if (rc) {
        free(h);
        return rc;
    }
    h->f.ops = &filter_ops;
    h->f.direct_io = true;
    *out = &h->f;
    return 0;
}

/* Editors' and tools' temporary files in export/ (scratch.h): private
 * local files that start nothing. */
static int open_scratch(fs_ctx *x, const tree_path *tp, int flags, fs_file **out)
{
    int fd = -1;
    int rc = scratch_open(x, tp, flags, &fd);
    if (rc)
        return rc;
    rc = node_open_fd(fd, true, out);
    if (rc == 0)
        (*out)->direct_io = true;
    return rc;
}

static int filter_getattr(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    int rc = places_store_exists(x, tp);
    if (rc == 0 && scratch_is_name(tp->name))
        return scratch_getattr(x, tp, st);
    return rc ? rc : export_getattr_filter(x, tp, st);
}

static int filter_create(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode, int flags,
                         fs_file **out)
{
    (void)path;
    (void)mode;
    int rc = places_store_exists(x, tp);
    if (rc)
        return rc;
    if (scratch_is_name(tp->name))
        return open_scratch(x, tp, flags | O_CREAT, out);
    return open_filter(x, tp, flags, true, out);
}

static int filter_open(fs_ctx *x, const char *path, const tree_path *tp, const struct stat *st,
                       int flags, fs_file **out)
{
    (void)path;
    (void)st;
    if (scratch_is_name(tp->name))
        return open_scratch(x, tp, flags & ~O_CREAT, out);
    return open_filter(x, tp, flags, false, out);
}

static int filter_unlink(fs_ctx *x, const char *path, const tree_path *tp)
{
    (void)path;
    int rc = places_store_exists(x, tp);
    if (rc == 0 && scratch_is_name(tp->name))
        return scratch_unlink(x, tp);
    return rc ? rc : export_unlink(x, tp);
}

static int filter_truncate(fs_ctx *x, const char *path, const tree_path *tp, off_t size,
                           fs_file *open)
{
    (void)path;
    if (scratch_is_name(tp->name)) {
        int fd = node_fd_writable(open);
        if (fd >= 0)
            return ftruncate(fd, size) == 0 ? 0 : -errno;
        return scratch_truncate(x, tp, size);
    }
    if (open && open->ops == &filter_ops)
        return export_truncate_open(((filter_file *)open)->ex, size);
    return export_truncate_path(x, tp, size);
}

static int filter_utimens(fs_ctx *x, const char *path, const tree_path *tp,
                          const struct timespec tv[2])
{
    (void)path;
    struct stat st;
    int rc = node_getattr(x, tp, &st);
    if (rc)
        return rc;
    if (scratch_is_name(tp->name))
        return scratch_utimens(x, tp, tv);
    return 0; /* touch of a filter: nothing to record */
}

/* cp -p, sed -i, editors: a filter has no mode of its own to keep */
static int filter_chmod(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode)
{
    (void)path;
    (void)mode;
    struct stat st;
    return node_getattr(x, tp, &st);
}

/* sed -i copies the owner onto its temporary: nothing to keep */
static int filter_chown(fs_ctx *x, const char *path, const tree_path *tp, uid_t uid, gid_t gid)
{
    (void)path;
    (void)uid;
    (void)gid;
    struct stat st;
    return node_getattr(x, tp, &st);
}

/* Renames in one format folder of export/: between scratch files, a scratch
 * file over a filter (`sed -i`, vim's write-temp-then-rename: a new version
 * of that filter, checked and started as if written there), a filter onto
 * a scratch name (vim's backup) or onto another filter name. */
static int rename_in_export(fs_ctx *x, const char *from, const tree_path *a, const tree_path *b,
                            unsigned int flags)
{
    if (strcmp(a->dataset, b->dataset) != 0 || strcmp(a->store, b->store) != 0 ||
        a->format != b->format)
        return -EXDEV; /* mv copies then */
    if (flags & RENAME_EXCHANGE)
        return fs_deny(from, "rename: exchange is not supported in export/", -EINVAL);
    int rc = places_store_exists(x, a);
    if (rc)
        return rc;
    struct stat st;
    if (node_getattr(x, a, &st) != 0)
        return -ENOENT;
    if ((flags & RENAME_NOREPLACE) && node_getattr(x, b, &st) == 0)
        return -EEXIST;
    bool sa = scratch_is_name(a->name), sb = scratch_is_name(b->name);
    if (sa && sb)
        return scratch_rename(x, a, b);
    char *data = NULL;
    size_t len = 0;
    rc = sa ? scratch_read_all(x, a, &data, &len) : export_take(x, a, &data, &len);
    if (rc == 0)
        rc = sb ? scratch_write_all(x, b, data, len) : export_install(x, b, data, len);
    if (rc == 0 && sa)
        scratch_unlink(x, a);
    if (rc)
        log_warn("%s: rename onto export/%s: %s", from, b->name, strerror(-rc));
    free(data);
    return rc;
}

const fs_node node_export_filter = {
    .getattr = filter_getattr,
    .create = filter_create,
    .open = filter_open,
    .unlink = filter_unlink,
    .truncate = filter_truncate,
    .utimens = filter_utimens,
    .chmod = filter_chmod,
    .chown = filter_chown,
    .rename = rename_in_export,
};

/* ---- export/[FMT/]NAME.out/ and NAME.runs/: what the exports wrote */

static int out_getattr(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    int rc = places_store_exists(x, tp);
    return rc ? rc : export_out_getattr(x, tp, st);
}

static int out_readdir(fs_ctx *x, const tree_path *tp, fs_fill_fn fill, void *buf)
{
    return export_out_readdir(x, tp, fill, buf);
}

static int out_create(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode, int flags,
                      fs_file **out)
{
    (void)x;
    (void)mode;
    (void)flags;
    (void)out;
    if (!*tp->rest)
        return fs_deny(path, "create: a filter name may not end in .out or .runs", -EINVAL);
    return fs_deny(path, "create: exported objects are read-only", -EACCES);
}

static int out_open(fs_ctx *x, const char *path, const tree_path *tp, const struct stat *st,
                    int flags, fs_file **out)
{
    (void)path;
    (void)st;
    (void)flags;
    int fd = -1;
    int rc = export_out_open(x, tp, &fd);
    if (rc)
        return rc;
    return node_open_fd(fd, false, out);
}

const fs_node node_export_out = {
    .mkdir_refused = {-EACCES, "mkdir: read-only place"},
    .unlink_refused = {-EACCES, "unlink: exported objects are read-only"},
    .write_refused = "open for writing: exported objects are read-only",
    .getattr = out_getattr,
    .readdir = out_readdir,
    .create = out_create,
    .open = out_open,
};
