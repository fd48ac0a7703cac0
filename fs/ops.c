/* ops: DATASET/operations/ and STORE/operations/ (see ops.h). */
#include "ops.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "errmap.h"
#include "journal.h"
#include "log.h"
#include "util.h"
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

/* RFC 3339 UTC time ("2026-01-02T03:04:05.678Z") to epoch seconds; 0 if unparseable. */
static int64_t rfc3339_seconds(const char *s)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (!s || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                     &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    return t == (time_t)-1 ? 0 : (int64_t)t;
}

/* The file's mtime: when the operation ended, else when it was created. */
static int64_t op_mtime(const char *json, size_t len)
{
    hc_operation o;
    memset(&o, 0, sizeof o);
    int64_t t = 0;
    if (hc_operation_parse(json, len, &o) == CERR_OK)
        t = rfc3339_seconds(o.end_time && *o.end_time ? o.end_time : o.create_time);
    hc_operation_clear(&o);
    return t;
}

static void op_stat(fs_ctx *x, struct stat *st, uint64_t size, int64_t mtime)
{
    fs_stat_file(x, st, 0444, (off_t)size);
    if (mtime > 0) {
        st->st_mtim.tv_sec = st->st_ctim.tv_sec = st->st_atim.tv_sec = (time_t)mtime;
        st->st_mtim.tv_nsec = st->st_ctim.tv_nsec = st->st_atim.tv_nsec = 0;
    }
}

static size_t content_size(const char *json)
{
    size_t n = strlen(json);
    return n + (n > 0 && json[n - 1] == '\n' ? 0 : 1);
}

static char *ops_key(const char *ds_id)
{
    return fs_cache_key(ds_id, NULL, "operations");
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
    int64_t mtime = op_mtime(json, strlen(json));
    return dircache_list_add_mtime(&lc->l, file, false, content_size(json), mtime) ? CERR_NOMEM : 0;
}

/* The operations of one dataset. */
struct ops_src {
    fs_ctx *x;
    const char *ds_id;
};

/* dircache_fetch_fn: lists the dataset's operations. */
static int fetch_dataset(void *c, dircache_list *out)
{
    struct ops_src *src = c;
    char *ds = fs_dataset_name(src->x, src->ds_id);
    if (!ds)
        return -ENOMEM;
    struct list_ctx lc;
    dircache_list_init(&lc.l);
    cerr_detail err = {0};
    int rc = hc_operations_list(src->x->cl.hc, ds, list_cb, &lc, &err);
    free(ds);
    if (rc != CERR_OK) {
        int e = errmap_errno(rc);
        log_error("%s/operations: listing operations failed: %s", src->ds_id, err.message);
        dircache_list_clear(&lc.l);
        return e;
    }
    *out = lc.l;
    return 0;
}

/* Gets one operation and records its size. */
static int get_op(fs_ctx *x, const char *ds_id, const char *file, char **data, size_t *len,
                  int64_t *mtime)
{
    char id[TREE_NAME_MAX + 1];
    if (tree_op_id_from_file(file, id, sizeof id) != 0)
        return -ENOENT;
    char *ds = fs_dataset_name(x, ds_id);
    char *op = ds ? util_asprintf("%s/operations/%s", ds, id) : NULL;
    free(ds);
    if (!op)
        return -ENOMEM;
    char *json = NULL;
    size_t jlen = 0;
    cerr_detail err = {0};
    int rc = hc_operation_get(x->cl.hc, op, &json, &jlen, &err);
    if (rc != CERR_OK) {
        int e = errmap_errno(rc);
        if (e != -ENOENT)
            log_error("%s: getting the operation failed: %s", op, err.message);
        free(op);
        return e;
    }
    free(op);
    size_t n = 0;
    char *content = ops_file_content(json, jlen, &n);
    int64_t t = op_mtime(json, jlen);
    if (mtime)
        *mtime = t;
    free(json);
    if (!content)
        return -ENOMEM;
    /* The bytes whose size getattr now reports: an open within FS_OP_TTL
     * serves them, so stat and cat agree while the operation changes. */
    if (x->opsnap)
        opsnap_put(x->opsnap, ds_id, file, content, n, FS_OP_TTL);
    char *key = ops_key(ds_id);
    if (key)
        dircache_put_one_mtime(x->cache, key, file, false, n, t, FS_OP_TTL);
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
    int64_t mtime = 0;
    int found = dircache_lookup_mtime(x->cache, key, file, &is_dir, &size, &mtime);
    /* The server did not answer the last listing: its entries stand. */
    if (found != 1 && dircache_failing(x->cache, key) &&
        dircache_lookup_stale(x->cache, key, file, &is_dir, &size) == 1)
        found = 1;
    free(key);
    if (found != 1) {
        size_t n = 0;
        int rc = get_op(x, ds_id, file, NULL, &n, &mtime);
        if (rc && rc != -ENOENT && rc != -ENOMEM) {
            /* Stale on error: the last listing, or the journal (store_id),
             * still knows the operation. */
            char *k = ops_key(ds_id);
            if (k && dircache_lookup_stale(x->cache, k, file, &is_dir, &size) == 1)
                rc = 0;
            else if (store_id)
                rc = 0, size = 0;
            free(k);
        } else if (rc == 0) {
            size = n;
        }
        if (rc)
            return rc;
    }
    op_stat(x, st, size, mtime);
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
    if (x->opsnap && opsnap_get(x->opsnap, ds_id, file, data, len) == 0)
        return 0; /* what a get less than FS_OP_TTL ago gave (and stat said) */
    return get_op(x, ds_id, file, data, len, NULL);
}

/* Collects the file names of a store's journaled operations (no network
 * while the journal is being read). */
static int collect_cb(void *ctx, const char *op_name, const char *kind)
{
    (void)kind;
    dircache_list *names = ctx;
    char file[TREE_NAME_MAX + 1];
    if (tree_op_file_name(op_name, file, sizeof file) != 0)
        return 0;
    for (size_t i = 0; i < names->n; i++) /* the journal may repeat an op */
        if (strcmp(names->v[i].name, file) == 0)
            return 0;
    return dircache_list_add(names, file, false, 0) ? -ENOMEM : 0;
}

static int fill_store_ops(fs_ctx *x, const char *ds_id, const char *key, const dircache_list *names,
                          ops_fill_fn fill, void *buf)
{
    for (size_t i = 0; i < names->n; i++) {
        const char *file = names->v[i].name;
        bool is_dir;
        uint64_t size = 0;
        int64_t mtime = 0;
        if (dircache_lookup_mtime(x->cache, key, file, &is_dir, &size, &mtime) != 1) {
            size_t n = 0;
            int rc = get_op(x, ds_id, file, NULL, &n, &mtime);
            if (rc == -ENOENT)
                continue;           /* gone from the server (expired): not shown */
            size = rc == 0 ? n : 0; /* unreachable: the journal still knows it */
        }
        struct stat st;
        op_stat(x, &st, size, mtime);
        if (fill(buf, file, &st))
            break;
    }
    return 0;
}

int ops_readdir(fs_ctx *x, const char *ds_id, const char *store_id, ops_fill_fn fill, void *buf)
{
    char *key = ops_key(ds_id);
    if (!key)
        return -ENOMEM;
    int rc = 0;
    dircache_list l;
    struct ops_src src = {x, ds_id};
    rc = dircache_get_or_fetch(x->cache, key, FS_OP_TTL, fetch_dataset, &src, &l);
    if (rc) {
        free(key);
        return rc;
    }
    if (!store_id) {
        for (size_t i = 0; i < l.n; i++) {
            struct stat st;
            op_stat(x, &st, l.v[i].size, l.v[i].mtime);
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
    dircache_list names;
    dircache_list_init(&names);
    if (x->journal) {
        rc = journal_list_operations(x->journal, store, collect_cb, &names);
        if (rc > 0)
            rc = 0;
        if (rc < 0)
            log_error("%s/%s/operations: reading the journal failed: %s", ds_id, store_id,
                      strerror(-rc));
    }
    if (rc == 0)
        rc = fill_store_ops(x, ds_id, key, &names, fill, buf);
    dircache_list_clear(&names);
    free(store);
    free(key);
    return rc;
}
