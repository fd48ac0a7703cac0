/* ops: DATASET/operations/ and STORE/operations/ (see ops.h). */
#include "ops.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "journal.h"
#include "log.h"
#include "tree.h"

char *ops_file_content(const char *json, size_t len, size_t *out_len)
{
    bool nl = len > 0 && json[len - 1] == '\n';
    char *s = malloc(len + 2);
    if (!s)
        return NULL;
    memcpy(s, json, len);
    if (!nl)
        s[len++] = '\n';
    s[len] = '\0';
    *out_len = len;
    return s;
}

static size_t content_size(const char *json)
{
    size_t n = strlen(json);
    return n + (n > 0 && json[n - 1] == '\n' ? 0 : 1);
}

static char *ops_key(const char *ds_id)
{
    return http_strdup_printf("ops:%s", ds_id);
}

struct list_ctx {
    dircache_list l;
};

static int list_cb(void *ctx, const char *name, const char *json)
{
    struct list_ctx *lc = ctx;
    char file[TREE_NAME_MAX + 1];
    if (tree_op_file_name(name, file, sizeof file) != 0)
        return 0; /* an id too long for a file name: cannot be shown */
    return dircache_list_add(&lc->l, file, false, content_size(json)) ? -ENOMEM : 0;
}

/* Fetches the dataset's operations into the cache. */
static int refresh_dataset(fs_ctx *x, const char *ds_id, const char *key)
{
    char *ds = fs_dataset_name(x, ds_id);
    if (!ds)
        return -ENOMEM;
    struct list_ctx lc;
    dircache_list_init(&lc.l);
    http_error err = {0};
    int rc = hc_operations_list(x->cl.hc, ds, list_cb, &lc, &err);
    if (rc != HC_OK) {
        int e = rc == -ENOMEM ? -ENOMEM : fs_errno_hc(rc, &err);
        log_error("%s/operations: listing operations failed: %s", ds_id, err.message);
        dircache_list_clear(&lc.l);
        free(ds);
        return e;
    }
    dircache_put(x->cache, key, &lc.l, FS_OP_TTL);
    free(ds);
    return 0;
}

/* Gets one operation and records its size. */
static int get_op(fs_ctx *x, const char *ds_id, const char *file, char **data, size_t *len)
{
    char id[TREE_NAME_MAX + 1];
    if (tree_op_id_from_file(file, id, sizeof id) != 0)
        return -ENOENT;
    char *ds = fs_dataset_name(x, ds_id);
    char *op = ds ? http_strdup_printf("%s/operations/%s", ds, id) : NULL;
    free(ds);
    if (!op)
        return -ENOMEM;
    char *json = NULL;
    size_t jlen = 0;
    http_error err = {0};
    int rc = hc_operation_get(x->cl.hc, op, &json, &jlen, &err);
    if (rc != HC_OK) {
        int e = fs_errno_hc(rc, &err);
        if (e != -ENOENT)
            log_error("%s: getting the operation failed: %s", op, err.message);
        free(op);
        return e;
    }
    free(op);
    size_t n = 0;
    char *content = ops_file_content(json, jlen, &n);
    free(json);
    if (!content)
        return -ENOMEM;
    char *key = ops_key(ds_id);
    if (key)
        dircache_put_one(x->cache, key, file, false, n, FS_OP_TTL);
    free(key);
    if (data) {
        *data = content;
        *len = n;
    } else {
        free(content);
        if (len)
            *len = n;
    }
    return 0;
}

struct journal_find {
    const char *file;
    bool found;
};

static int journal_find_cb(void *ctx, const char *op_name, const char *kind)
{
    (void)kind;
    struct journal_find *f = ctx;
    char file[TREE_NAME_MAX + 1];
    if (tree_op_file_name(op_name, file, sizeof file) == 0 && strcmp(file, f->file) == 0) {
        f->found = true;
        return 1;
    }
    return 0;
}

static int store_has_op(fs_ctx *x, const char *ds_id, const char *store_id, const char *file)
{
    if (!x->journal)
        return -ENOENT;
    char *store = fs_store_name(x, ds_id, store_id);
    if (!store)
        return -ENOMEM;
    struct journal_find f = {file, false};
    int rc = journal_list_operations(x->journal, store, journal_find_cb, &f);
    free(store);
    if (rc < 0 && !f.found)
        return rc;
    return f.found ? 0 : -ENOENT;
}

int ops_getattr(fs_ctx *x, const char *ds_id, const char *store_id, const char *file,
                struct stat *st)
{
    if (store_id) {
        int rc = store_has_op(x, ds_id, store_id, file);
        if (rc)
            return rc;
    }
    char *key = ops_key(ds_id);
    if (!key)
        return -ENOMEM;
    bool is_dir;
    uint64_t size = 0;
    int found = dircache_lookup(x->cache, key, file, &is_dir, &size);
    free(key);
    if (found != 1) {
        size_t n = 0;
        int rc = get_op(x, ds_id, file, NULL, &n);
        if (rc)
            return rc;
        size = n;
    }
    fs_stat_file(x, st, 0444, (off_t)size);
    return 0;
}

int ops_read_file(fs_ctx *x, const char *ds_id, const char *store_id, const char *file, char **data,
                  size_t *len)
{
    if (store_id) {
        int rc = store_has_op(x, ds_id, store_id, file);
        if (rc)
            return rc;
    }
    return get_op(x, ds_id, file, data, len);
}

struct store_fill {
    fs_ctx *x;
    const char *ds_id;
    const char *key;
    ops_fill_fn fill;
    void *buf;
    dircache_list seen;
};

static int store_fill_cb(void *ctx, const char *op_name, const char *kind)
{
    (void)kind;
    struct store_fill *sf = ctx;
    char file[TREE_NAME_MAX + 1];
    if (tree_op_file_name(op_name, file, sizeof file) != 0)
        return 0;
    for (size_t i = 0; i < sf->seen.n; i++) /* the journal may repeat an op */
        if (strcmp(sf->seen.v[i].name, file) == 0)
            return 0;
    if (dircache_list_add(&sf->seen, file, false, 0))
        return -ENOMEM;
    struct stat st;
    bool is_dir;
    uint64_t size = 0;
    if (dircache_lookup(sf->x->cache, sf->key, file, &is_dir, &size) != 1) {
        size_t n = 0;
        if (get_op(sf->x, sf->ds_id, file, NULL, &n) != 0)
            return 0; /* gone from the server (expired): not shown */
        size = n;
    }
    fs_stat_file(sf->x, &st, 0444, (off_t)size);
    return sf->fill(sf->buf, file, &st) ? 1 : 0;
}

int ops_readdir(fs_ctx *x, const char *ds_id, const char *store_id, ops_fill_fn fill, void *buf)
{
    char *key = ops_key(ds_id);
    if (!key)
        return -ENOMEM;
    int rc = 0;
    dircache_list l;
    if (dircache_get(x->cache, key, &l) != 0) {
        rc = refresh_dataset(x, ds_id, key);
        if (rc == 0 && dircache_get(x->cache, key, &l) != 0)
            dircache_list_init(&l);
    }
    if (rc) {
        free(key);
        return rc;
    }
    if (!store_id) {
        for (size_t i = 0; i < l.n; i++) {
            struct stat st;
            fs_stat_file(x, &st, 0444, (off_t)l.v[i].size);
            if (fill(buf, l.v[i].name, &st))
                break;
        }
        dircache_list_clear(&l);
        free(key);
        return 0;
    }
    dircache_list_clear(&l);
    char *store = fs_store_name(x, ds_id, store_id);
    if (!store) {
        free(key);
        return -ENOMEM;
    }
    struct store_fill sf = {x, ds_id, key, fill, buf, {0}};
    dircache_list_init(&sf.seen);
    if (x->journal) {
        rc = journal_list_operations(x->journal, store, store_fill_cb, &sf);
        if (rc > 0)
            rc = 0;
        if (rc < 0)
            log_error("%s/%s/operations: reading the journal failed: %s", ds_id, store_id,
                      strerror(-rc));
    }
    dircache_list_clear(&sf.seen);
    free(store);
    free(key);
    return rc;
}
