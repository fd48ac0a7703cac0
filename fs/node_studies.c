/* node_studies: STORE/studies/, the read-only DICOMweb view (studies.h). */
#include <errno.h>

#include "node.h"
#include "places.h"
#include "studies.h"

static int sd_getattr(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    int rc = places_store_exists(x, tp);
    return rc ? rc : studies_getattr(x, tp, st);
}

static int sd_readdir(fs_ctx *x, const tree_path *tp, fs_fill_fn fill, void *buf)
{
    return studies_readdir(x, tp, fill, buf);
}

static int sd_rmdir(fs_ctx *x, const char *path, const tree_path *tp)
{
    (void)path;
    int rc = places_store_exists(x, tp);
    return rc ? rc : studies_rmdir(x, tp);
}

static int sd_unlink(fs_ctx *x, const char *path, const tree_path *tp)
{
    (void)path;
    int rc = places_store_exists(x, tp);
    return rc ? rc : studies_unlink(x, tp);
}

static int sd_open(fs_ctx *x, const char *path, const tree_path *tp, const struct stat *st,
                   int flags, fs_file **out)
{
    (void)path;
    (void)flags;
    int fd = -1;
    int rc = studies_open(x, tp, &fd);
    if (rc)
        return rc;
    fs_file *f = NULL;
    rc = node_open_fd(fd, false, &f);
    if (rc)
        return rc;
    /* stat promised st_size; should the retrieval differ, read what it gave */
    struct stat got;
    f->direct_io = fstat(fd, &got) != 0 || got.st_size != st->st_size;
    *out = f;
    return 0;
}

const fs_node node_studies = {
    .write_refused = "open for writing: studies/ is read-only",
    .getattr = sd_getattr,
    .readdir = sd_readdir,
    .rmdir = sd_rmdir,
    .open = sd_open,
    .unlink = sd_unlink,
};
