/* fuse_ops: FUSE callbacks and dispatch on the kind of path (see fuse_ops.h). */
#include "fuse_ops.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "deadline.h"
#include "errmap.h"
#include "export.h"
#include "import.h"
#include "journal.h"
#include "log.h"
#include "ops.h"
#include "rejects.h"
#include "scratch.h"
#include "statusjson.h"
#include "studies.h"
#include "tree.h"
#include "xattrs.h"
#include "util.h"

/* ---- context helpers */

static fs_ctx *ctx(void)
{
    return fuse_get_context()->private_data;
}

char *fs_dataset_name(const fs_ctx *x, const char *dataset_id)
{
    return util_asprintf("%s/datasets/%s", x->opt->location, dataset_id);
}

char *fs_store_name(const fs_ctx *x, const char *dataset_id, const char *store_id)
{
    return util_asprintf("%s/datasets/%s/dicomStores/%s", x->opt->location, dataset_id, store_id);
}

void fs_stat_dir(const fs_ctx *x, struct stat *st, mode_t perm)
{
    memset(st, 0, sizeof *st);
    st->st_mode = S_IFDIR | perm;
    st->st_nlink = 2;
    st->st_uid = x->uid;
    st->st_gid = x->gid;
    st->st_atim = st->st_mtim = st->st_ctim = x->mount_time;
}

void fs_stat_file(const fs_ctx *x, struct stat *st, mode_t perm, off_t size)
{
    memset(st, 0, sizeof *st);
    st->st_mode = S_IFREG | perm;
    st->st_nlink = 1;
    st->st_uid = x->uid;
    st->st_gid = x->gid;
    st->st_size = size;
    st->st_blksize = 4096;
    st->st_blocks = (size + 511) / 512;
    st->st_atim = st->st_mtim = st->st_ctim = x->mount_time;
}

/* ---- dataset and store listings */

struct name_list {
    dircache_list l;
    bool stores;
};

static int name_list_cb(void *c, const char *name, const char *json)
{
    (void)json;
    struct name_list *nl = c;
    const char *leaf = hc_name_leaf(name);
    if (!leaf || tree_check_name(leaf) != 0)
        return 0; /* not representable as a file name */
    if (nl->stores && tree_reserved_in_dataset(leaf)) {
        log_warn("%s: hidden behind the fixed directory of the same name", name);
        return 0;
    }
    return dircache_list_add(&nl->l, leaf, true, 0) ? CERR_NOMEM : 0;
}

/* Key of the listing of the root (NULL ds) or of a dataset. */
static char *list_key(const char *ds_id)
{
    return ds_id ? util_asprintf("ds:%s", ds_id) : strdup("root");
}

/* The datasets of the location (ds_id NULL) or the stores of a dataset. */
struct names_src {
    fs_ctx *x;
    const char *ds_id;
};

static int fetch_names(void *c, dircache_list *out)
{
    struct names_src *src = c;
    fs_ctx *x = src->x;
    struct name_list nl = {.stores = src->ds_id != NULL};
    dircache_list_init(&nl.l);
    cerr_detail err = {0};
    int rc;
    char *ds = NULL;
    if (src->ds_id) {
        ds = fs_dataset_name(x, src->ds_id);
        if (!ds)
            return -ENOMEM;
        rc = hc_stores_list(x->cl.hc, ds, name_list_cb, &nl, &err);
    } else {
        rc = hc_datasets_list(x->cl.hc, x->opt->location, name_list_cb, &nl, &err);
    }
    if (rc != CERR_OK) {
        int e = errmap_errno(rc);
        if (e != -ENOENT)
            log_error("%s: listing %s failed: %s", ds ? ds : x->opt->location,
                      ds ? "DICOM stores" : "datasets", err.message);
        dircache_list_clear(&nl.l);
        free(ds);
        return e;
    }
    free(ds);
    *out = nl.l;
    return 0;
}

/* Lists ds_id (NULL: the root) into the cache under key, fresh for ttl_s
 * seconds (0: kept only as the last known listing). */
static int refresh_listing(fs_ctx *x, const char *ds_id, const char *key, double ttl_s)
{
    struct names_src src = {x, ds_id};
    dircache_list l;
    dircache_list_init(&l);
    int rc = fetch_names(&src, &l);
    if (rc == 0)
        dircache_put(x->cache, key, &l, ttl_s);
    dircache_list_clear(&l);
    return rc;
}

/* 0 when name is in the listing of ds_id (NULL: the root), else -ENOENT
 * or why the listing could not be had (EIO, not ENOENT). */
static int listed(fs_ctx *x, const char *ds_id, const char *name)
{
    char *key = list_key(ds_id);
    if (!key)
        return -ENOMEM;
    struct names_src src = {x, ds_id};
    bool is_dir;
    uint64_t size;
    int f = dircache_lookup_or_fetch(x->cache, key, name, FS_LIST_TTL, fetch_names, &src, &is_dir,
                                     &size);
    free(key);
    return f == 1 ? 0 : f == 0 ? -ENOENT : f;
}

static int dataset_exists(fs_ctx *x, const tree_path *tp)
{
    if (x->opt->dataset)
        return 0; /* checked before mounting */
    /* A dataset with files of ours resolves without the server. */
    char *ds = x->import ? fs_dataset_name(x, tp->dataset) : NULL;
    bool known = ds && import_knows_dataset(x->import, ds);
    free(ds);
    return known ? 0 : listed(x, NULL, tp->dataset);
}

/* True when the import manager holds state for the store (files spooled,
 * uploading, importing or imported by this daemon): such a store resolves
 * whatever the list calls answer. */
static bool store_known_locally(fs_ctx *x, const tree_path *tp)
{
    if (!x->import)
        return false;
    char *store = fs_store_name(x, tp->dataset, tp->store);
    bool known = store && import_knows_store(x->import, store);
    free(store);
    return known;
}

static int store_exists(fs_ctx *x, const tree_path *tp)
{
    if (store_known_locally(x, tp))
        return 0;
    int rc = dataset_exists(x, tp);
    return rc ? rc : listed(x, tp->dataset, tp->store);
}

static void invalidate_listing(fs_ctx *x, const char *ds_id)
{
    char *key = list_key(ds_id);
    if (key)
        dircache_invalidate(x->cache, key);
    free(key);
}

/* ---- path parsing with logging */

static int parse(const char *path, tree_path *tp)
{
    fs_ctx *x = ctx();
    const char *fixed = x->opt->dataset ? hc_name_leaf(x->opt->dataset) : NULL;
    int rc = tree_parse(path, fixed, tp);
    if (rc)
        log_debug("%s: %s", path, strerror(-rc));
    else if (tp->kind == TREE_IMPORT && !x->import)
        rc = -EIO; /* init could not start it (logged there) */
    return rc;
}

/* Refuses an operation with a log line saying what and where. */
static int deny(const char *path, const char *what, int e)
{
    log_warn("%s: %s: %s", path, what, strerror(-e));
    return e;
}

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

/* The text of STORE/status (NULL when import/ could not start, or ENOMEM):
 * the import manager's, then a "rejected: import/PATH: REASON" line per
 * refused file still shown. */
static char *status_text(fs_ctx *x, const tree_path *tp)
{
    char *store = fs_store_name(x, tp->dataset, tp->store);
    char *text = store && x->import ? import_status_text(x->import, store) : NULL;
    char *all = NULL;
    size_t len = 0;
    FILE *f = text ? open_memstream(&all, &len) : NULL;
    if (f) {
        fputs(text, f);
        rejects_status(x->rejects, store, f);
        fclose(f);
        free(text);
        text = all;
    }
    free(store);
    if (text && strcmp(tp->name, "status.json") == 0) {
        char *json = status_json(text);
        free(text);
        text = json;
    }
    return text;
}

/* The mtime of a status text: when its content last changed (seen by a
 * getattr or read), so `tail -f` and other pollers notice a change. */
static struct timespec status_stamp(fs_ctx *x, const tree_path *tp, const char *text)
{
    uint64_t h = util_fnv1a_str(UTIL_FNV1A_INIT, text);
    char *key = util_asprintf("%s/%s/%s", tp->dataset, tp->store, tp->name);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    bool is_dir;
    uint64_t seen = 0;
    int64_t when = 0;
    if (key && dircache_lookup_mtime(x->cache, "status-stamp", key, &is_dir, &seen, &when) == 1 &&
        seen == h) {
        free(key);
        return (struct timespec){when, 0};
    }
    if (key)
        dircache_put_one_mtime(x->cache, "status-stamp", key, false, h, now.tv_sec, 1e9);
    free(key);
    return (struct timespec){now.tv_sec, 0};
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

/* ---- getattr */

static int store_child_exists(fs_ctx *x, const tree_path *tp)
{
    return store_exists(x, tp);
}

static int getattr_path(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    int rc;
    switch (tp->kind) {
    case TREE_ROOT:
        fs_stat_dir(x, st, 0755);
        return 0;
    case TREE_DATASET:
        rc = dataset_exists(x, tp);
        if (rc == 0)
            fs_stat_dir(x, st, 0755);
        return rc;
    case TREE_DS_OPS:
        rc = dataset_exists(x, tp);
        if (rc == 0)
            fs_stat_dir(x, st, 0555);
        return rc;
    case TREE_DS_OP:
        rc = dataset_exists(x, tp);
        return rc ? rc : ops_getattr(x, tp->dataset, NULL, tp->name, st);
    case TREE_STORE:
        rc = store_exists(x, tp);
        if (rc == 0)
            fs_stat_dir(x, st, 0555);
        return rc;
    case TREE_STATUS: {
        rc = store_child_exists(x, tp);
        if (rc)
            return rc;
        char *text = status_text(x, tp);
        fs_stat_file(x, st, 0444, text ? (off_t)strlen(text) : 0);
        if (text)
            st->st_mtim = st->st_ctim = status_stamp(x, tp, text);
        free(text);
        return 0;
    }
    case TREE_IMPORT: {
        rc = store_child_exists(x, tp);
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
    case TREE_STORE_OPS:
        rc = store_child_exists(x, tp);
        if (rc == 0)
            fs_stat_dir(x, st, 0555);
        return rc;
    case TREE_EXPORT:
    case TREE_EXPORT_FMT:
        rc = store_child_exists(x, tp);
        if (rc == 0)
            fs_stat_dir(x, st, 0755);
        return rc;
    case TREE_EXPORT_FILTER:
        rc = store_child_exists(x, tp);
        if (rc == 0 && scratch_is_name(tp->name))
            return scratch_getattr(x, tp, st);
        return rc ? rc : export_getattr_filter(x, tp, st);
    case TREE_EXPORT_OUT:
        rc = store_child_exists(x, tp);
        return rc ? rc : export_out_getattr(x, tp, st);
    case TREE_STORE_OP:
        rc = store_child_exists(x, tp);
        return rc ? rc : ops_getattr(x, tp->dataset, tp->store, tp->name, st);
    case TREE_STUDIES:
        rc = store_child_exists(x, tp);
        return rc ? rc : studies_getattr(x, tp, st);
    case TREE_NONE:
    default:
        return -ENOENT;
    }
}

static int op_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    (void)fi;
    tree_path tp;
    int rc = parse(path, &tp);
    if (rc)
        return rc == -EINVAL ? -ENOENT : rc;
    return getattr_path(ctx(), &tp, st);
}

/* ---- readdir */

struct fill_adapter {
    fuse_fill_dir_t fill;
    void *buf;
};

static int adapt_fill(void *buf, const char *name, const struct stat *st)
{
    struct fill_adapter *a = buf;
    return a->fill(a->buf, name, st, 0, 0);
}

static int fill_list(fs_ctx *x, const char *ds_id, struct fill_adapter *a)
{
    char *key = list_key(ds_id);
    if (!key)
        return -ENOMEM;
    dircache_list l;
    struct names_src src = {x, ds_id};
    int rc = dircache_get_or_fetch(x->cache, key, FS_LIST_TTL, fetch_names, &src, &l);
    free(key);
    if (rc)
        return rc;
    struct stat st;
    fs_stat_dir(x, &st, ds_id ? 0555 : 0755);
    for (size_t i = 0; i < l.n; i++)
        if (adapt_fill(a, l.v[i].name, &st))
            break;
    dircache_list_clear(&l);
    return 0;
}

static int fill_rejected(void *buf, const char *name)
{
    struct fill_adapter *a = buf;
    struct stat st;
    fs_stat_file(ctx(), &st, 0644, 0);
    return adapt_fill(a, name, &st);
}

static int readdir_path(fs_ctx *x, const tree_path *tp, struct fill_adapter *a)
{
    struct stat st;
    int rc = getattr_path(x, tp, &st);
    if (rc)
        return rc;
    if (!S_ISDIR(st.st_mode))
        return -ENOTDIR;
    fs_stat_dir(x, &st, 0555);
    switch (tp->kind) {
    case TREE_ROOT:
        return fill_list(x, NULL, a);
    case TREE_DATASET:
        adapt_fill(a, "operations", &st);
        return fill_list(x, tp->dataset, a);
    case TREE_DS_OPS:
        return ops_readdir(x, tp->dataset, NULL, adapt_fill, a);
    case TREE_STORE: {
        static const char *const fixed[] = {"import", "export", "operations", "studies"};
        for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
            fs_stat_dir(x, &st, strcmp(fixed[i], "import") == 0 ? 0755 : 0555);
            adapt_fill(a, fixed[i], &st);
        }
        fs_stat_file(x, &st, 0444, 0);
        adapt_fill(a, "status", &st);
        adapt_fill(a, "status.json", &st);
        return 0;
    }
    case TREE_IMPORT: {
        rc = import_call(x, tp, IM_READDIR, (import_args){.fill = adapt_fill, .buf = a});
        char *store = rc == 0 ? fs_store_name(x, tp->dataset, tp->store) : NULL;
        if (store)
            rejects_list_dir(x->rejects, store, tp->rest, fill_rejected, a);
        free(store);
        return rc;
    }
    case TREE_EXPORT: {
        fs_stat_dir(x, &st, 0755);
        for (size_t i = 0; i < tree_n_formats; i++)
            adapt_fill(a, tree_formats[i].dir, &st);
        tree_path top = *tp; /* filters written straight into export/ */
        top.format = &tree_format_top;
        rc = export_readdir_fmt(x, &top, adapt_fill, a);
        return rc ? rc : scratch_readdir(x, &top, adapt_fill, a);
    }
    case TREE_EXPORT_FMT:
        rc = export_readdir_fmt(x, tp, adapt_fill, a);
        return rc ? rc : scratch_readdir(x, tp, adapt_fill, a);
    case TREE_EXPORT_OUT:
        return export_out_readdir(x, tp, adapt_fill, a);
    case TREE_STORE_OPS:
        return ops_readdir(x, tp->dataset, tp->store, adapt_fill, a);
    case TREE_STUDIES:
        return studies_readdir(x, tp, adapt_fill, a);
    default:
        return -ENOTDIR;
    }
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
    rc = readdir_path(x, &tp, &a);
    if (rc && rc != -ENOENT && rc != -ENOTDIR)
        log_error("%s: listing failed: %s", path, strerror(-rc));
    return rc;
}

/* ---- mkdir / rmdir */

/* Dataset ids: letters, digits, '_', '-', '.' (non-ASCII letters are left
 * to the server to judge). */
static bool dataset_id_ok(const char *id)
{
    for (const unsigned char *p = (const unsigned char *)id; *p; p++)
        if (!(*p >= 0x80 || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
              (*p >= 'A' && *p <= 'Z') || *p == '_' || *p == '-' || *p == '.'))
            return false;
    return true;
}

static int create_dataset(fs_ctx *x, const char *path, const char *id)
{
    if (!dataset_id_ok(id))
        return deny(path, "a dataset id may only hold letters, digits, '_', '-' and '.'", -EINVAL);
    if (listed(x, NULL, id) == 0)
        return -EEXIST;
    char *op = NULL;
    cerr_detail err = {0};
    int rc = hc_dataset_create(x->cl.hc, x->opt->location, id, &op, &err);
    if (rc != CERR_OK) {
        int e = errmap_errno(rc);
        log_error("%s: creating dataset %s failed: %s", path, id, err.message);
        return e;
    }
    hc_operation o;
    memset(&o, 0, sizeof o);
    rc = hc_operation_wait(x->cl.hc, op, 300, &o, &err);
    int e = 0;
    if (rc != CERR_OK) {
        e = errmap_errno(rc);
        log_error("%s: waiting for %s failed: %s", path, op, err.message);
    } else if (o.has_error) {
        e = errmap_rpc_errno(o.error_code);
        log_error("%s: creating dataset %s failed: %s", path, id,
                  o.error_message ? o.error_message : "(no message)");
    } else {
        log_info("%s: dataset created (%s)", path, op);
    }
    hc_operation_clear(&o);
    free(op);
    invalidate_listing(x, NULL);
    return e;
}

static int create_store(fs_ctx *x, const char *path, const tree_path *tp)
{
    int rc = dataset_exists(x, tp);
    if (rc)
        return rc;
    if (tree_reserved_in_dataset(tp->store))
        return -EEXIST;
    if (listed(x, tp->dataset, tp->store) == 0)
        return -EEXIST;
    char *ds = fs_dataset_name(x, tp->dataset);
    if (!ds)
        return -ENOMEM;
    cerr_detail err = {0};
    rc = hc_store_create(x->cl.hc, ds, tp->store, &err);
    int e = 0;
    if (rc != CERR_OK) {
        e = errmap_errno(rc);
        log_error("%s: creating DICOM store %s failed: %s", path, tp->store, err.message);
    } else {
        log_info("%s: DICOM store created", path);
    }
    free(ds);
    invalidate_listing(x, tp->dataset);
    return e;
}

static int op_mkdir(const char *path, mode_t mode)
{
    tree_path tp;
    int rc = parse(path, &tp);
    if (rc)
        return deny(path, "mkdir: bad name", rc);
    fs_ctx *x = ctx();
    switch (tp.kind) {
    case TREE_DATASET:
        if (x->opt->dataset)
            return -EEXIST;
        return create_dataset(x, path, tp.dataset);
    case TREE_STORE:
        return create_store(x, path, &tp);
    case TREE_IMPORT: {
        if (!*tp.rest)
            return -EEXIST;
        rc = store_exists(x, &tp);
        if (rc)
            return rc;
        return import_call(x, &tp, IM_MKDIR, (import_args){.mode = mode});
    }
    case TREE_ROOT:
    case TREE_DS_OPS:
    case TREE_EXPORT:
    case TREE_EXPORT_FMT:
    case TREE_STORE_OPS:
        return -EEXIST;
    case TREE_DS_OP:
    case TREE_STORE_OP:
    case TREE_STATUS:
    case TREE_EXPORT_OUT:
        return deny(path, "mkdir: read-only place", -EACCES);
    default:
        return deny(path, "mkdir: only datasets, stores and folders under import/ can be made",
                    -EPERM);
    }
}

static int delete_dataset(fs_ctx *x, const char *path, const tree_path *tp)
{
    char *key = list_key(tp->dataset);
    dircache_list l;
    if (key)
        dircache_invalidate(x->cache, key);
    int rc = key ? refresh_listing(x, tp->dataset, key, FS_LIST_TTL) : -ENOMEM;
    if (rc == 0 && dircache_get(x->cache, key, &l) == 0) {
        size_t n = l.n;
        dircache_list_clear(&l);
        if (n > 0) {
            free(key);
            return deny(path, "rmdir: the dataset still has DICOM stores", -ENOTEMPTY);
        }
    }
    free(key);
    if (rc)
        return rc;
    char *ds = fs_dataset_name(x, tp->dataset);
    if (!ds)
        return -ENOMEM;
    cerr_detail err = {0};
    rc = hc_dataset_delete(x->cl.hc, ds, &err);
    int e = 0;
    if (rc != CERR_OK) {
        e = errmap_errno(rc);
        log_error("%s: deleting dataset %s failed: %s", path, ds, err.message);
    } else {
        log_info("%s: dataset %s deleted (allow_delete)", path, ds);
    }
    free(ds);
    invalidate_listing(x, NULL);
    return e;
}

static int delete_store(fs_ctx *x, const char *path, const tree_path *tp)
{
    int rc = store_exists(x, tp);
    if (rc)
        return rc;
    char *store = fs_store_name(x, tp->dataset, tp->store);
    if (!store)
        return -ENOMEM;
    cerr_detail err = {0};
    rc = hc_store_delete(x->cl.hc, store, &err);
    int e = 0;
    if (rc != CERR_OK) {
        e = errmap_errno(rc);
        log_error("%s: deleting DICOM store %s failed: %s", path, store, err.message);
    } else {
        log_info("%s: DICOM store %s deleted (allow_delete)", path, store);
    }
    free(store);
    invalidate_listing(x, tp->dataset);
    return e;
}

static int op_rmdir(const char *path)
{
    tree_path tp;
    int rc = parse(path, &tp);
    if (rc)
        return rc;
    fs_ctx *x = ctx();
    switch (tp.kind) {
    case TREE_DATASET:
    case TREE_STORE:
        if (!x->opt->allow_delete)
            return deny(path, "rmdir: removing datasets and stores needs -o allow_delete", -EPERM);
        if (tp.kind == TREE_DATASET) {
            if (x->opt->dataset)
                return -EBUSY;
            rc = dataset_exists(x, &tp);
            return rc ? rc : delete_dataset(x, path, &tp);
        }
        return delete_store(x, path, &tp);
    case TREE_IMPORT: {
        if (!*tp.rest)
            return deny(path, "rmdir: import/ is part of the store", -EPERM);
        rc = store_exists(x, &tp);
        if (rc)
            return rc;
        return import_call(x, &tp, IM_RMDIR, (import_args){0});
    }
    case TREE_STUDIES:
        rc = store_exists(x, &tp);
        return rc ? rc : studies_rmdir(x, &tp);
    case TREE_NONE:
        return -ENOENT;
    default:
        return deny(path, "rmdir: fixed directory", -EPERM);
    }
}

/* ---- handles */

typedef enum { H_IMPORT, H_BUF, H_EXPORT, H_FD, H_SCRATCH, H_STATUS } handle_kind;

typedef struct fs_handle {
    handle_kind kind;
    uint64_t import_fh;
    char *data; /* H_BUF, H_STATUS: the text */
    size_t len;
    bool fresh;    /* H_STATUS: data made at open, not read yet */
    bool eof_seen; /* H_STATUS: a read returned EOF */
    tree_path tp;  /* H_STATUS: which status */
    export_file *ex;
    int fd; /* H_FD, H_SCRATCH */
} fs_handle;

static fs_handle *handle_new(handle_kind kind)
{
    fs_handle *h = calloc(1, sizeof *h);
    if (h) {
        h->kind = kind;
        h->fd = -1;
    }
    return h;
}

/* create/open of a file under import/: an H_IMPORT handle in fi->fh. */
static int open_import(fs_ctx *x, const tree_path *tp, struct fuse_file_info *fi, import_verb v,
                       mode_t mode)
{
    fs_handle *h = handle_new(H_IMPORT);
    if (!h)
        return -ENOMEM;
    int rc = import_call(x, tp, v,
                         (import_args){.mode = mode, .flags = fi->flags, .fh_out = &h->import_fh});
    if (rc) {
        free(h);
        return rc;
    }
    fi->fh = (uintptr_t)h;
    return 0;
}

static fs_handle *handle_of(struct fuse_file_info *fi)
{
    return fi ? (fs_handle *)(uintptr_t)fi->fh : NULL;
}

static bool wants_write(int flags)
{
    return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

/* Editors' and tools' temporary files in export/ (scratch.h): private
 * local files that start nothing. */
static int open_scratch(fs_ctx *x, const tree_path *tp, struct fuse_file_info *fi, int flags)
{
    fs_handle *h = handle_new(H_SCRATCH);
    if (!h)
        return -ENOMEM;
    int rc = scratch_open(x, tp, flags, &h->fd);
    if (rc) {
        free(h);
        return rc;
    }
    fi->fh = (uintptr_t)h;
    fi->direct_io = 1;
    return 0;
}

/* Why a file cannot be created at a place. */
static int create_denied(const char *path, const tree_path *tp)
{
    switch (tp->kind) {
    case TREE_ROOT:
    case TREE_DATASET:
        return deny(path, "create: only directories (datasets, stores) can be made here", -EPERM);
    case TREE_STORE:
        if (!*tp->store)
            return deny(path, "create: only directories can be made here", -EPERM);
        /* a store id at the store level means a file in a dataset directory */
        return deny(path, "create: only directories (DICOM stores) can be made here", -EPERM);
    case TREE_DS_OP:
    case TREE_STORE_OP:
    case TREE_DS_OPS:
    case TREE_STORE_OPS:
        return deny(path, "create: operations/ is read-only", -EACCES);
    case TREE_STATUS:
        return deny(path, "create: status is read-only", -EACCES);
    case TREE_EXPORT_OUT:
        if (!*tp->rest)
            return deny(path, "create: a filter name may not end in .out or .runs", -EINVAL);
        return deny(path, "create: exported objects are read-only", -EACCES);
    case TREE_EXPORT:
        return deny(path, "create: filters go in export/FORMAT/ (dicom, png, ...)", -EACCES);
    default:
        return deny(path, "create: not a place for files", -EACCES);
    }
}

static int op_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    tree_path tp;
    int rc = parse(path, &tp);
    if (rc)
        return deny(path, "create: bad name", rc);
    fs_ctx *x = ctx();
    if (tp.kind != TREE_IMPORT && tp.kind != TREE_EXPORT_FILTER)
        return create_denied(path, &tp);
    if (tp.kind == TREE_IMPORT && !*tp.rest)
        return -EISDIR;
    rc = store_exists(x, &tp);
    if (rc)
        return rc;
    if (tp.kind == TREE_IMPORT) {
        forget_rejected(x, &tp); /* written again: a new file */
        return open_import(x, &tp, fi, IM_CREATE, mode);
    }
    if (scratch_is_name(tp.name))
        return open_scratch(x, &tp, fi, fi->flags | O_CREAT);
    fs_handle *h = handle_new(H_EXPORT);
    if (!h)
        return -ENOMEM;
    rc = export_open_filter(x, &tp, fi->flags, true, &h->ex);
    if (rc) {
        free(h);
        return rc;
    }
    fi->fh = (uintptr_t)h;
    fi->direct_io = 1;
    return 0;
}

static int open_buffer(struct fuse_file_info *fi, char *data, size_t len)
{
    fs_handle *h = handle_new(H_BUF);
    if (!h) {
        free(data);
        return -ENOMEM;
    }
    h->data = data;
    h->len = len;
    fi->fh = (uintptr_t)h;
    /* Content is fetched fresh per open and may differ from the size
     * getattr saw: read until EOF, never trust the cached size. */
    fi->direct_io = 1;
    fi->keep_cache = 0;
    return 0;
}

static int op_open(const char *path, struct fuse_file_info *fi)
{
    tree_path tp;
    int rc = parse(path, &tp);
    if (rc)
        return rc;
    fs_ctx *x = ctx();
    struct stat st;
    rc = getattr_path(x, &tp, &st);
    if (rc)
        return rc;
    if (S_ISDIR(st.st_mode))
        return -EISDIR;
    bool w = wants_write(fi->flags);
    switch (tp.kind) {
    case TREE_DS_OP:
    case TREE_STORE_OP: {
        if (w)
            return deny(path, "open for writing: operations are read-only", -EACCES);
        char *data = NULL;
        size_t len = 0;
        rc = ops_read_file(x, tp.dataset, tp.kind == TREE_STORE_OP ? tp.store : NULL, tp.name,
                           &data, &len);
        return rc ? rc : open_buffer(fi, data, len);
    }
    case TREE_STATUS: {
        if (w)
            return deny(path, "open for writing: status is read-only", -EACCES);
        char *text = status_text(x, &tp);
        if (!text)
            text = strdup("");
        rc = text ? open_buffer(fi, text, strlen(text)) : -ENOMEM;
        if (rc == 0) {
            fs_handle *h = handle_of(fi);
            h->kind = H_STATUS;
            h->fresh = true;
            h->tp = tp;
            h->tp.rest = "";
        }
        return rc;
    }
    case TREE_IMPORT:
        if (rejected(x, &tp)) {
            /* The refused file is gone; what is shown is its empty trace.
             * Writing it (the shell's `>` on a cached name) starts anew. */
            if (!w)
                return open_buffer(fi, strdup(""), 0);
            forget_rejected(x, &tp);
            return open_import(x, &tp, fi, IM_CREATE, 0644);
        }
        rc = open_import(x, &tp, fi, IM_OPEN, 0);
        /* Dropped since the kernel looked the name up (it still caches it):
         * O_CREAT makes it anew, as on a local disk. */
        if (rc == -ENOENT && (fi->flags & O_CREAT))
            rc = open_import(x, &tp, fi, IM_CREATE, 0644);
        return rc;
    case TREE_EXPORT_FILTER: {
        if (scratch_is_name(tp.name))
            return open_scratch(x, &tp, fi, fi->flags & ~O_CREAT);
        fs_handle *h = handle_new(H_EXPORT);
        if (!h)
            return -ENOMEM;
        rc = export_open_filter(x, &tp, fi->flags, false, &h->ex);
        if (rc) {
            free(h);
            return rc;
        }
        fi->fh = (uintptr_t)h;
        fi->direct_io = 1;
        return 0;
    }
    case TREE_STUDIES: {
        if (w)
            return deny(path, "open for writing: studies/ is read-only", -EACCES);
        fs_handle *h = handle_new(H_FD);
        if (!h)
            return -ENOMEM;
        rc = studies_open(x, &tp, &h->fd);
        if (rc) {
            free(h);
            return rc;
        }
        fi->fh = (uintptr_t)h;
        /* stat promised st_size; should the retrieval differ, read what it gave */
        struct stat got;
        fi->direct_io = fstat(h->fd, &got) != 0 || got.st_size != st.st_size;
        return 0;
    }
    case TREE_EXPORT_OUT: {
        if (w)
            return deny(path, "open for writing: exported objects are read-only", -EACCES);
        fs_handle *h = handle_new(H_FD);
        if (!h)
            return -ENOMEM;
        rc = export_out_open(x, &tp, &h->fd);
        if (rc) {
            free(h);
            return rc;
        }
        fi->fh = (uintptr_t)h;
        return 0;
    }
    default:
        return -ENOENT;
    }
}

/* A read of an open status: offset 0 reads the status as it is now, and
 * the reads that follow get the rest of that same text (so `cat` gets one
 * consistent text). Once a reader got EOF, a later read at that end sees
 * the status as it is then, at the same offsets, as a file rewritten in
 * place: `tail -f` (which, on a FUSE file system, reads the bytes by which
 * the size grew when the mtime changes) prints the lines added at the end
 * (new failed:/rejected: lines); a status that shrank makes tail start over
 * ("file truncated"). */
static int read_status(fs_handle *h, char *buf, size_t size, off_t off)
{
    fs_ctx *x = ctx();
    bool at_end = off >= (off_t)h->len;
    if ((off == 0 && !h->fresh) || (at_end && h->eof_seen)) {
        char *text = status_text(x, &h->tp);
        if (text) {
            free(h->data);
            h->data = text;
            h->len = strlen(text);
            h->eof_seen = false;
        }
    }
    h->fresh = false;
    if (off < 0 || off >= (off_t)h->len) {
        h->eof_seen = true;
        return 0;
    }
    size_t at = (size_t)off;
    if (size > h->len - at)
        size = h->len - at;
    memcpy(buf, h->data + at, size);
    return (int)size;
}

static int op_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)path;
    fs_handle *h = handle_of(fi);
    if (!h)
        return -EBADF;
    switch (h->kind) {
    case H_IMPORT:
        return import_read(ctx()->import, h->import_fh, buf, size, off);
    case H_EXPORT:
        return export_read(h->ex, buf, size, off);
    case H_STATUS:
        return read_status(h, buf, size, off);
    case H_FD:
    case H_SCRATCH: {
        ssize_t n = pread(h->fd, buf, size, off);
        return n < 0 ? -errno : (int)n;
    }
    case H_BUF:
    default:
        if (off < 0)
            return -EINVAL;
        if ((size_t)off >= h->len)
            return 0;
        if (size > h->len - (size_t)off)
            size = h->len - (size_t)off;
        memcpy(buf, h->data + off, size);
        return (int)size;
    }
}

static int op_write(const char *path, const char *buf, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    fs_handle *h = handle_of(fi);
    if (!h)
        return -EBADF;
    switch (h->kind) {
    case H_IMPORT:
        return import_write(ctx()->import, h->import_fh, buf, size, off);
    case H_EXPORT:
        return export_write(h->ex, buf, size, off);
    case H_SCRATCH: {
        ssize_t n = pwrite(h->fd, buf, size, off);
        return n < 0 ? -errno : (int)n;
    }
    default:
        return deny(path, "write: read-only file", -EBADF);
    }
}

static int op_flush(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    fs_handle *h = handle_of(fi);
    if (!h)
        return 0;
    switch (h->kind) {
    case H_IMPORT:
        return import_flush(ctx()->import, h->import_fh);
    case H_EXPORT:
        return export_flush(ctx(), h->ex);
    default:
        return 0;
    }
}

static int op_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    (void)path;
    (void)datasync;
    fs_handle *h = handle_of(fi);
    if (h && h->kind == H_IMPORT)
        return import_fsync(ctx()->import, h->import_fh);
    return 0;
}

static int op_release(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    fs_handle *h = handle_of(fi);
    if (!h)
        return 0;
    fi->fh = 0;
    switch (h->kind) {
    case H_IMPORT:
        import_release(ctx()->import, h->import_fh);
        break;
    case H_EXPORT:
        export_release(ctx(), h->ex);
        break;
    case H_FD:
    case H_SCRATCH:
        close(h->fd);
        break;
    case H_BUF:
    case H_STATUS:
        free(h->data);
        break;
    }
    free(h);
    return 0;
}

/* ---- attribute changes, unlink, rename */

static int op_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
    tree_path tp;
    int rc = parse(path, &tp);
    if (rc)
        return rc;
    fs_ctx *x = ctx();
    fs_handle *h = handle_of(fi);
    if (tp.kind == TREE_IMPORT)
        return import_call(
            x, &tp, IM_TRUNCATE,
            (import_args){.size = size, .fh = h && h->kind == H_IMPORT ? h->import_fh : 0});
    if (tp.kind == TREE_EXPORT_FILTER && scratch_is_name(tp.name)) {
        if (h && h->kind == H_SCRATCH)
            return ftruncate(h->fd, size) == 0 ? 0 : -errno;
        return scratch_truncate(x, &tp, size);
    }
    if (tp.kind == TREE_EXPORT_FILTER) {
        if (h && h->kind == H_EXPORT)
            return export_truncate_open(h->ex, size);
        return export_truncate_path(x, &tp, size);
    }
    struct stat st;
    rc = getattr_path(x, &tp, &st);
    if (rc)
        return rc;
    return deny(path, "truncate: read-only", S_ISDIR(st.st_mode) ? -EISDIR : -EACCES);
}

static int op_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
    (void)fi;
    tree_path tp;
    int rc = parse(path, &tp);
    if (rc)
        return rc;
    fs_ctx *x = ctx();
    if (tp.kind == TREE_IMPORT)
        return import_call(x, &tp, IM_UTIMENS, (import_args){.tv = tv});
    struct stat st;
    rc = getattr_path(x, &tp, &st);
    if (rc)
        return rc;
    if (tp.kind == TREE_EXPORT_FILTER && scratch_is_name(tp.name))
        return scratch_utimens(x, &tp, tv);
    if (tp.kind == TREE_EXPORT_FILTER)
        return 0; /* touch of a filter: nothing to record */
    return deny(path, "utimens: times of this entry are fixed", -EPERM);
}

static int op_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    (void)fi;
    tree_path tp;
    int rc = parse(path, &tp);
    if (rc)
        return rc;
    fs_ctx *x = ctx();
    if (tp.kind == TREE_IMPORT)
        return import_call(x, &tp, IM_CHMOD, (import_args){.mode = mode});
    struct stat st;
    rc = getattr_path(x, &tp, &st);
    if (rc == 0 && tp.kind == TREE_EXPORT_FILTER)
        return 0; /* cp -p, sed -i, editors: a filter has no mode of its own to keep */
    return rc ? rc : deny(path, "chmod: permissions of this entry are fixed", -EPERM);
}

static int op_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
    (void)fi;
    tree_path tp;
    int rc = parse(path, &tp);
    if (rc)
        return rc;
    fs_ctx *x = ctx();
    if (tp.kind == TREE_IMPORT && *tp.rest)
        return import_call(x, &tp, IM_CHOWN, (import_args){.uid = uid, .gid = gid});
    struct stat st;
    rc = getattr_path(x, &tp, &st);
    if (rc)
        return rc;
    /* Everything else belongs to the mounting user; "changing" to it is a no-op
     * (cp -p, rsync -o as that user). */
    if ((uid == (uid_t)-1 || uid == x->uid) && (gid == (gid_t)-1 || gid == x->gid))
        return 0;
    if (tp.kind == TREE_EXPORT_FILTER)
        return 0; /* sed -i copies the owner onto its temporary: nothing to keep */
    return deny(path, "chown: every entry belongs to the mounting user", -EPERM);
}

static int op_unlink(const char *path)
{
    tree_path tp;
    int rc = parse(path, &tp);
    if (rc)
        return rc;
    fs_ctx *x = ctx();
    switch (tp.kind) {
    case TREE_IMPORT: {
        rc = store_exists(x, &tp);
        if (rc)
            return rc;
        rc = import_call(x, &tp, IM_UNLINK, (import_args){0});
        if (rc == -ENOENT && forget_rejected(x, &tp))
            rc = 0;
        if (rc == 0)
            xattrs_call(x, &tp, XA_DROP, NULL);
        return rc;
    }
    case TREE_EXPORT_FILTER:
        rc = store_exists(x, &tp);
        if (rc == 0 && scratch_is_name(tp.name))
            return scratch_unlink(x, &tp);
        return rc ? rc : export_unlink(x, &tp);
    case TREE_DS_OP:
    case TREE_STORE_OP:
        return deny(path, "unlink: operations are read-only", -EACCES);
    case TREE_STATUS:
        return deny(path, "unlink: status is part of the store", -EACCES);
    case TREE_EXPORT_OUT:
        return deny(path, "unlink: exported objects are read-only", -EACCES);
    case TREE_STUDIES:
        rc = store_exists(x, &tp);
        return rc ? rc : studies_unlink(x, &tp);
    case TREE_NONE:
        return -ENOENT;
    default:
        return deny(path, "unlink: not removable", -EPERM);
    }
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
        return deny(from, "rename: exchange is not supported in export/", -EINVAL);
    int rc = store_exists(x, a);
    if (rc)
        return rc;
    struct stat st;
    if (getattr_path(x, a, &st) != 0)
        return -ENOENT;
    if ((flags & RENAME_NOREPLACE) && getattr_path(x, b, &st) == 0)
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

static int op_rename(const char *from, const char *to, unsigned int flags)
{
    tree_path a, b;
    int rc = parse(from, &a);
    if (rc)
        return rc;
    rc = parse(to, &b);
    if (rc)
        return deny(to, "rename: bad name", rc);
    fs_ctx *x = ctx();
    if (a.kind == TREE_IMPORT && b.kind == TREE_IMPORT) {
        if (strcmp(a.dataset, b.dataset) != 0 || strcmp(a.store, b.store) != 0)
            return -EXDEV; /* mv copies then */
        if (!*a.rest || !*b.rest)
            return deny(from, "rename: import/ itself cannot move", -EPERM);
        rc = store_exists(x, &a);
        if (rc)
            return rc;
        rc = import_call(x, &a, IM_RENAME, (import_args){.to = b.rest, .rename_flags = flags});
        if (rc == 0)
            xattrs_call(x, &a, XA_RENAME, b.rest);
        return rc;
    }
    if (b.kind == TREE_IMPORT)
        return -EXDEV;
    if (a.kind == TREE_EXPORT_FILTER && b.kind == TREE_EXPORT_FILTER)
        return rename_in_export(x, from, &a, &b, flags);
    return deny(from, "rename: only files under import/ and export/ can be renamed", -EPERM);
}

/* ---- extended attributes: user.* on import/ files (xattrs.h); nothing
 * elsewhere (every other entry reads as having none). */

/* The store's full name when path is an existing entry below import/ that
 * can carry attributes; else NULL with *rc set. */
static char *xattr_target(const char *path, tree_path *tp, int *rc)
{
    fs_ctx *x = ctx();
    *rc = parse(path, tp);
    if (*rc)
        return NULL;
    if (tp->kind != TREE_IMPORT || !*tp->rest) {
        *rc = -ENOTSUP; /* decided before any lookup: `ls -l` asks every entry */
        return NULL;
    }
    struct stat st;
    *rc = getattr_path(x, tp, &st);
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
static int state_xattr(const tree_path *tp, char *value, size_t size)
{
    fs_ctx *x = ctx();
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

static int op_setxattr(const char *path, const char *name, const char *value, size_t size,
                       int flags)
{
    tree_path tp;
    int rc;
    char *store = xattr_target(path, &tp, &rc);
    if (!store)
        return rc == -ENOTSUP ? deny(path, "setxattr: only files under import/ keep attributes", rc)
                              : rc;
    rc = xattrs_set(ctx()->xattrs, store, tp.rest, name, value, size, flags);
    free(store);
    return rc;
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
    int rc;
    char *store = xattr_target(path, &tp, &rc);
    if (!store)
        return rc == -ENOTSUP ? -ENODATA : rc;
    if (strcmp(name, STATE_XATTR) == 0)
        rc = state_xattr(&tp, value, size);
    else
        rc = xattrs_get(ctx()->xattrs, store, tp.rest, name, value, size);
    free(store);
    return rc;
}

/* user.dicomfs.state is read by name only: listing it would make
 * `rsync -X` try to remove it from files whose source lacks it (EPERM,
 * exit 23), as rsync mirrors the source's list of names. */
static int op_listxattr(const char *path, char *list, size_t size)
{
    tree_path tp;
    int rc;
    char *store = xattr_target(path, &tp, &rc);
    if (!store)
        return rc == -ENOTSUP ? 0 : rc;
    rc = xattrs_list(ctx()->xattrs, store, tp.rest, list, size);
    free(store);
    return rc;
}

static int op_removexattr(const char *path, const char *name)
{
    tree_path tp;
    int rc;
    char *store = xattr_target(path, &tp, &rc);
    if (!store)
        return rc == -ENOTSUP ? -ENODATA : rc;
    rc = xattrs_remove(ctx()->xattrs, store, tp.rest, name);
    free(store);
    return rc;
}

/* ---- symlink, mknod, link: never possible. import/ holds DICOM files
 * (regular files) only, and the rest of the tree is not writable, so these
 * are refused with EPERM (not ENOSYS, which tools report as a bug). */

static int op_symlink(const char *target, const char *path)
{
    (void)target;
    return deny(path,
                "cannot create a symbolic link (import/ holds DICOM files only; "
                "the rest of the tree is not writable)",
                -EPERM);
}

static int op_mknod(const char *path, mode_t mode, dev_t rdev)
{
    (void)rdev;
    return deny(path,
                S_ISREG(mode) ? "cannot create a file here"
                              : "cannot create a special file (FIFO, socket or device node; "
                                "import/ holds DICOM files only)",
                -EPERM);
}

static int op_link(const char *from, const char *to)
{
    (void)from;
    return deny(to, "cannot create a hard link (each file in import/ is one DICOM upload)", -EPERM);
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

/* Lists the root once at mount (the datasets, or the stores of the
 * source dataset), in the background and under the mount's timeout: a
 * store nobody listed yet then resolves from that listing while the server
 * is unreachable, so copying into its import/ needs no network. */
static int prime_one(fs_ctx *x, const char *ds_id)
{
    char *key = list_key(ds_id);
    deadline_begin(x->opt->timeout);
    /* Only a fallback: a name it lacks is still asked for (created since). */
    int rc = key ? refresh_listing(x, ds_id, key, 0) : -ENOMEM;
    deadline_end();
    if (rc)
        log_warn("%s: listing %s at mount failed (%s): its names are looked up when first used",
                 x->opt->source, ds_id ? ds_id : "the datasets", strerror(-rc));
    free(key);
    return rc;
}

/* A location's first PRIME_DATASETS datasets get their stores listed too. */
#define PRIME_DATASETS 32

static void *primer_main(void *arg)
{
    fs_ctx *x = arg;
    if (x->opt->dataset) {
        if (prime_one(x, hc_name_leaf(x->opt->dataset)) == 0)
            log_info("listed the stores of %s at mount", x->opt->dataset);
        return NULL;
    }
    dircache_list l;
    char *root = list_key(NULL);
    int rc = root && prime_one(x, NULL) == 0 ? dircache_get_stale(x->cache, root, &l) : -1;
    free(root);
    if (rc != 0)
        return NULL;
    size_t n = 0;
    for (; n < l.n && n < PRIME_DATASETS; n++)
        if (l.v[n].is_dir && prime_one(x, l.v[n].name) != 0)
            break; /* the server is not answering: stop asking */
    log_info("listed %zu dataset(s) and the stores of %zu at mount", l.n, n);
    dircache_list_clear(&l);
    return NULL;
}

static void *op_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    fs_ctx *x = ctx();
    cfg->nullpath_ok = 0;
    cfg->use_ino = 0;
    cfg->hard_remove = 1; /* no .fuse_hidden files in import/ */
    if (conn->capable & FUSE_CAP_ASYNC_READ)
        conn->want |= FUSE_CAP_ASYNC_READ;
    if (conn->max_write < (1u << 20))
        conn->max_write = 1u << 20;
    conn->max_readahead = 1u << 20;

    char *jdir = util_asprintf("%s/journal", x->opt->cache_dir);
    if (jdir && mkdir(jdir, 0700) != 0 && errno != EEXIST)
        log_error("%s: cannot create the journal directory: %s", jdir, strerror(errno));
    int rc = jdir ? journal_open(jdir, &x->journal) : -ENOMEM;
    if (rc) {
        log_error("%s: cannot open the journal: %s (import/ and export/ are unavailable)",
                  jdir ? jdir : x->opt->cache_dir, strerror(-rc));
        x->journal = NULL;
    }
    free(jdir);
    x->rejects = rejects_new();
    x->xattrs = xattrs_new();
    x->opsnap = opsnap_new();
    if (x->journal) {
        import_config ic = {
            .cache_dir = x->opt->cache_dir,
            .staging_bucket = x->opt->staging_bucket,
            .staging_prefix = x->opt->staging_prefix,
            .uploads = x->opt->uploads,
            .commit_delay_s = x->opt->commit_delay,
            .sync_close = x->opt->sync_close,
            .stream_min_mib = x->opt->stream_min_mib,
            .imports = x->opt->imports,
            .batch_max_files = x->opt->batch_max_files,
            .batch_max_bytes = x->opt->batch_max_bytes,
            .cache_max = x->opt->cache_max,
            .upload_present = x->opt->upload_present,
            .interrupted = fuse_interrupted,
            .uid = x->uid,
            .gid = x->gid,
            .on_reject = rejects_on_reject,
            .on_reject_ctx = x->rejects,
        };
        rc = import_mgr_new(&ic, x->cl.gcs, x->cl.hc, x->journal, &x->import);
        if (rc) {
            log_error("cannot start the import manager: %s (import/ is unavailable)",
                      strerror(-rc));
            x->import = NULL;
        }
    }
    x->primer_started = pthread_create(&x->primer, NULL, primer_main, x) == 0;
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
    if (x->import)
        import_mgr_free(x->import);
    x->import = NULL;
    if (x->journal)
        journal_close(x->journal);
    x->journal = NULL;
    rejects_free(x->rejects);
    x->rejects = NULL;
    xattrs_free(x->xattrs);
    opsnap_free(x->opsnap);
    x->opsnap = NULL;
    x->xattrs = NULL;
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

/* ---- clients */

/* Checks before mounting must answer quickly: a few attempts within 5 s,
 * not minutes of backoff; but not give up on one or two transient errors
 * (a 10% error rate failed two attempts in a row at mount once in CI). */
static void quick_retries(http_options *ho)
{
    ho->retry.max_attempts = 4;
    ho->retry.base_ms = 250;
    ho->retry.total_ms = 5000;
    ho->connect_timeout_s = 5;
}

int fs_clients_open(const fs_options *o, bool quick, fs_clients *c, char *msg, size_t msglen)
{
    memset(c, 0, sizeof *c);
    cerr_detail err = {0};
    if (o->no_auth) {
        c->auth = auth_provider_new_none();
    } else {
        http_options ao;
        http_options_init(&ao);
        if (quick)
            quick_retries(&ao);
        ao.ca_file = o->ca_file;
        c->auth_http = http_client_new(&ao);
        char *where = NULL;
        int rc = c->auth_http
                     ? auth_provider_new(o->credentials, c->auth_http, &c->auth, &where, &err)
                     : CERR_NOMEM;
        if (rc != CERR_OK) {
            switch (rc) {
            case CERR_NOT_FOUND:
                snprintf(msg, msglen,
                         "no Google credentials found: pass -o credentials=FILE, set "
                         "GOOGLE_APPLICATION_CREDENTIALS, or run `gcloud auth "
                         "application-default login`");
                break;
            case CERR_INVALID:
            case CERR_UNSUPPORTED:
                snprintf(msg, msglen, "credentials %s unusable: %s",
                         o->credentials ? o->credentials : "(default)", err.message);
                break;
            default:
                snprintf(msg, msglen, "credentials rejected or unusable: %s", err.message);
            }
            free(where);
            fs_clients_close(c);
            return -1;
        }
        free(where); /* auth logs what it found */
    }
    if (!c->auth) {
        snprintf(msg, msglen, "out of memory");
        fs_clients_close(c);
        return -1;
    }
    http_options ho;
    http_options_init(&ho);
    if (quick)
        quick_retries(&ho);
    if (auth_provider_kind(c->auth) != AUTH_KIND_NONE) {
        ho.token_fn = auth_get_token;
        ho.token_ctx = c->auth;
        ho.user_project = auth_provider_quota_project(c->auth);
    }
    ho.ca_file = o->ca_file;
    c->http = http_client_new(&ho);
    c->gcs = c->http ? gcs_client_new(c->http, o->storage_endpoint) : NULL;
    /* Spool files up to 1 GiB: ONE media request straight from the spool
     * file (the HTTP client retries it whole), as a plain `curl -T` would:
     * measured against the emulator, a 1 GiB file took 6.3 s as a resumable
     * session and 3.0 s as a media upload (8 MiB resumable chunks were
     * slower still). Larger files: a resumable session in 1 GiB requests,
     * which resumes from what the server persisted when cut. */
    if (c->gcs)
        gcs_client_set_resumable_threshold(c->gcs, 1024u << 20, 1024u << 20);
    c->hc = c->http ? hc_client_new(c->http, o->endpoint) : NULL;
    if (!c->gcs || !c->hc) {
        snprintf(msg, msglen, "cannot create the API clients");
        fs_clients_close(c);
        return -1;
    }
    return 0;
}

void fs_clients_close(fs_clients *c)
{
    if (c->hc)
        hc_client_free(c->hc);
    if (c->gcs)
        gcs_client_free(c->gcs);
    if (c->http)
        http_client_free(c->http);
    if (c->auth)
        auth_provider_free(c->auth);
    if (c->auth_http)
        http_client_free(c->auth_http);
    memset(c, 0, sizeof *c);
}
