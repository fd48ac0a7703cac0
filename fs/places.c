/* places: datasets and DICOM stores, their listings and nodes (see places.h). */
#include "places.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deadline.h"
#include "errmap.h"
#include "import.h"
#include "log.h"
#include "node.h"
#include "util.h"

/* ---- listings */

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
    return fs_cache_key(ds_id, NULL, NULL);
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

int places_dataset_exists(fs_ctx *x, const tree_path *tp)
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

int places_store_exists(fs_ctx *x, const tree_path *tp)
{
    if (store_known_locally(x, tp))
        return 0;
    int rc = places_dataset_exists(x, tp);
    return rc ? rc : listed(x, tp->dataset, tp->store);
}

static void invalidate_listing(fs_ctx *x, const char *ds_id)
{
    char *key = list_key(ds_id);
    if (key)
        dircache_invalidate(x->cache, key);
    free(key);
}

static int fill_list(fs_ctx *x, const char *ds_id, fs_fill_fn fill, void *buf)
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
        if (fill(buf, l.v[i].name, &st))
            break;
    dircache_list_clear(&l);
    return 0;
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
        return fs_deny(path, "a dataset id may only hold letters, digits, '_', '-' and '.'",
                       -EINVAL);
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
    int rc = places_dataset_exists(x, tp);
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
            return fs_deny(path, "rmdir: the dataset still has DICOM stores", -ENOTEMPTY);
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
    int rc = places_store_exists(x, tp);
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

/* ---- at mount */

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

void *places_primer(void *arg)
{
    fs_ctx *x = arg;
    pthread_setname_np(pthread_self(), "dfs-primer");
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

/* ---- nodes */

static int root_getattr(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    (void)tp;
    fs_stat_dir(x, st, 0755);
    return 0;
}

static int root_readdir(fs_ctx *x, const tree_path *tp, fs_fill_fn fill, void *buf)
{
    (void)tp;
    return fill_list(x, NULL, fill, buf);
}

#define DIRS_ONLY                                                                                  \
    {                                                                                              \
        -EPERM, "create: only directories (datasets, stores) can be made here"                     \
    }

const fs_node node_root = {
    .mkdir_refused = {-EEXIST, NULL},
    .create_refused = DIRS_ONLY,
    .getattr = root_getattr,
    .readdir = root_readdir,
};

static int dataset_getattr(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    int rc = places_dataset_exists(x, tp);
    if (rc == 0)
        fs_stat_dir(x, st, 0755);
    return rc;
}

static int dataset_readdir(fs_ctx *x, const tree_path *tp, fs_fill_fn fill, void *buf)
{
    struct stat st;
    fs_stat_dir(x, &st, 0555);
    fill(buf, "operations", &st);
    return fill_list(x, tp->dataset, fill, buf);
}

static int dataset_mkdir(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode)
{
    (void)mode;
    if (x->opt->dataset)
        return -EEXIST;
    return create_dataset(x, path, tp->dataset);
}

static int dataset_rmdir(fs_ctx *x, const char *path, const tree_path *tp)
{
    if (!x->opt->allow_delete)
        return fs_deny(path, "rmdir: removing datasets and stores needs -o allow_delete", -EPERM);
    if (x->opt->dataset)
        return -EBUSY;
    int rc = places_dataset_exists(x, tp);
    return rc ? rc : delete_dataset(x, path, tp);
}

const fs_node node_dataset = {
    .create_refused = DIRS_ONLY,
    .getattr = dataset_getattr,
    .readdir = dataset_readdir,
    .mkdir = dataset_mkdir,
    .rmdir = dataset_rmdir,
};

static int store_getattr(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    int rc = places_store_exists(x, tp);
    if (rc == 0)
        fs_stat_dir(x, st, 0555);
    return rc;
}

static int store_readdir(fs_ctx *x, const tree_path *tp, fs_fill_fn fill, void *buf)
{
    (void)tp;
    struct stat st;
    static const char *const fixed[] = {"import", "export", "operations", "studies"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        fs_stat_dir(x, &st, strcmp(fixed[i], "import") == 0 ? 0755 : 0555);
        fill(buf, fixed[i], &st);
    }
    fs_stat_file(x, &st, 0444, 0);
    fill(buf, "status", &st);
    fill(buf, "status.json", &st);
    return 0;
}

static int store_mkdir(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode)
{
    (void)mode;
    return create_store(x, path, tp);
}

static int store_rmdir(fs_ctx *x, const char *path, const tree_path *tp)
{
    if (!x->opt->allow_delete)
        return fs_deny(path, "rmdir: removing datasets and stores needs -o allow_delete", -EPERM);
    return delete_store(x, path, tp);
}

static int store_create(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode, int flags,
                        fs_file **out)
{
    (void)x;
    (void)mode;
    (void)flags;
    (void)out;
    if (!*tp->store)
        return fs_deny(path, "create: only directories can be made here", -EPERM);
    /* a store id at the store level means a file in a dataset directory */
    return fs_deny(path, "create: only directories (DICOM stores) can be made here", -EPERM);
}

const fs_node node_store = {
    .getattr = store_getattr,
    .readdir = store_readdir,
    .mkdir = store_mkdir,
    .rmdir = store_rmdir,
    .create = store_create,
};
