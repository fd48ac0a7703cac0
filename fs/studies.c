/* studies: STORE/studies/ DICOMweb view (see studies.h). */
#include "studies.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "filter.h"
#include "log.h"

/* rest = "" | STUDY | STUDY/SERIES | STUDY/SERIES/INSTANCE.dcm */
typedef struct spath {
    int depth; /* 0..3 */
    char study[TREE_NAME_MAX + 1], series[TREE_NAME_MAX + 1], instance[TREE_NAME_MAX + 1];
} spath;

static int split(const char *rest, spath *sp)
{
    memset(sp, 0, sizeof *sp);
    char *parts[3] = {sp->study, sp->series, sp->instance};
    const char *p = rest;
    while (*p) {
        if (sp->depth == 3)
            return -ENOENT;
        const char *s = strchr(p, '/');
        size_t n = s ? (size_t)(s - p) : strlen(p);
        if (n > TREE_NAME_MAX)
            return -ENAMETOOLONG;
        memcpy(parts[sp->depth], p, n);
        parts[sp->depth][n] = '\0';
        sp->depth++;
        p = s ? s + 1 : p + n;
    }
    if (sp->depth == 3) {
        size_t n = strlen(sp->instance);
        if (n <= 4 || strcmp(sp->instance + n - 4, ".dcm") != 0)
            return -ENOENT;
        sp->instance[n - 4] = '\0';
    }
    /* Only UIDs can exist: anything else is ENOENT without a server call. */
    if ((sp->depth >= 1 && !filter_uid_valid(sp->study, strlen(sp->study))) ||
        (sp->depth >= 2 && !filter_uid_valid(sp->series, strlen(sp->series))) ||
        (sp->depth >= 3 && !filter_uid_valid(sp->instance, strlen(sp->instance))))
        return -ENOENT;
    return 0;
}

/* The DICOMweb path listing the children of a directory at depth 0..2. */
static char *search_path(const spath *sp, int depth)
{
    switch (depth) {
    case 0:
        return strdup("studies");
    case 1:
        return http_strdup_printf("studies/%s/series", sp->study);
    default:
        return http_strdup_printf("studies/%s/series/%s/instances", sp->study, sp->series);
    }
}

static char *cache_key(const tree_path *tp, const spath *sp, int depth)
{
    return http_strdup_printf("studies:%s/%s/%d/%s/%s", tp->dataset, tp->store, depth,
                              depth >= 1 ? sp->study : "", depth >= 2 ? sp->series : "");
}

struct collect {
    dircache_list l;
    bool instances;
};

static int collect_cb(void *ctx, const char *uid, const char *json)
{
    (void)json;
    struct collect *c = ctx;
    if (!uid || !filter_uid_valid(uid, strlen(uid)))
        return 0;
    char name[TREE_NAME_MAX + 1];
    snprintf(name, sizeof name, "%s%s", uid, c->instances ? ".dcm" : "");
    return dircache_list_add(&c->l, name, !c->instances, 0) ? -ENOMEM : 0;
}

/* One level of the studies/ tree of a store. */
struct level_src {
    fs_ctx *x;
    const tree_path *tp;
    const spath *sp;
    int depth;
};

/* dircache_fetch_fn: one DICOMweb search. */
static int fetch_level(void *ctx, dircache_list *out)
{
    struct level_src *src = ctx;
    const tree_path *tp = src->tp;
    char *store = fs_store_name(src->x, tp->dataset, tp->store);
    char *path = search_path(src->sp, src->depth);
    struct collect c = {.instances = src->depth == 2};
    dircache_list_init(&c.l);
    http_error err = {0};
    int rc = store && path
                 ? hc_dicomweb_search(src->x->cl.hc, store, path, NULL, collect_cb, &c, &err)
                 : -ENOMEM;
    if (rc != HC_OK) {
        int e = rc == -ENOMEM ? -ENOMEM : fs_errno_hc(rc, &err);
        if (e != -ENOENT)
            log_error("%s/%s/studies/%s: DICOMweb search %s failed: %s", tp->dataset, tp->store,
                      tp->rest, path ? path : "", err.message);
        dircache_list_clear(&c.l);
        rc = e;
    } else {
        *out = c.l;
    }
    free(store);
    free(path);
    return rc;
}

static int listing(fs_ctx *x, const tree_path *tp, const spath *sp, int depth, dircache_list *out)
{
    char *key = cache_key(tp, sp, depth);
    if (!key)
        return -ENOMEM;
    struct level_src src = {x, tp, sp, depth};
    int rc = dircache_get_or_fetch(x->cache, key, FS_LIST_TTL, fetch_level, &src, out);
    free(key);
    return rc;
}

int studies_getattr(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    spath sp;
    int rc = split(tp->rest, &sp);
    if (rc)
        return rc;
    if (sp.depth == 0) {
        fs_stat_dir(x, st, 0555);
        return 0;
    }
    const char *leaf = sp.depth == 1 ? sp.study : sp.depth == 2 ? sp.series : NULL;
    char inst[TREE_NAME_MAX + 8];
    if (!leaf) {
        snprintf(inst, sizeof inst, "%s.dcm", sp.instance);
        leaf = inst;
    }
    char *key = cache_key(tp, &sp, sp.depth - 1);
    if (!key)
        return -ENOMEM;
    bool is_dir;
    uint64_t size;
    struct level_src src = {x, tp, &sp, sp.depth - 1};
    int f = dircache_lookup_or_fetch(x->cache, key, leaf, FS_LIST_TTL, fetch_level, &src, &is_dir,
                                     &size);
    free(key);
    if (f < 0)
        return f;
    if (f != 1)
        return -ENOENT;
    if (is_dir)
        fs_stat_dir(x, st, 0555);
    else
        fs_stat_file(x, st, 0444, (off_t)size);
    return 0;
}

int studies_readdir(fs_ctx *x, const tree_path *tp, studies_fill_fn fill, void *buf)
{
    spath sp;
    int rc = split(tp->rest, &sp);
    if (rc)
        return rc;
    if (sp.depth == 3)
        return -ENOTDIR;
    dircache_list l;
    rc = listing(x, tp, &sp, sp.depth, &l);
    if (rc)
        return rc;
    for (size_t i = 0; i < l.n; i++) {
        struct stat st;
        if (l.v[i].is_dir)
            fs_stat_dir(x, &st, 0555);
        else
            fs_stat_file(x, &st, 0444, (off_t)l.v[i].size);
        if (fill(buf, l.v[i].name, &st))
            break;
    }
    dircache_list_clear(&l);
    return 0;
}

int studies_open(fs_ctx *x, const tree_path *tp, int *fdp)
{
    spath sp;
    int rc = split(tp->rest, &sp);
    if (rc)
        return rc;
    if (sp.depth != 3)
        return -EISDIR;
    char *store = fs_store_name(x, tp->dataset, tp->store);
    if (!store)
        return -ENOMEM;
    int fd = open(x->opt->cache_dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = -errno;
        log_error("%s/%s/studies/%s: no temporary file in %s: %s", tp->dataset, tp->store, tp->rest,
                  x->opt->cache_dir, strerror(errno));
        free(store);
        return rc;
    }
    uint64_t written = 0;
    http_error err = {0};
    int h = hc_dicomweb_retrieve_instance(x->cl.hc, store, sp.study, sp.series, sp.instance, fd,
                                          &written, &err);
    free(store);
    if (h != HC_OK) {
        rc = fs_errno_hc(h, &err);
        log_error("%s/%s/studies/%s: retrieving the instance failed: %s", tp->dataset, tp->store,
                  tp->rest, err.message);
        close(fd);
        return rc;
    }
    /* From now on stat reports the real size. */
    char *key = cache_key(tp, &sp, 2);
    char leaf[TREE_NAME_MAX + 8];
    snprintf(leaf, sizeof leaf, "%s.dcm", sp.instance);
    if (key)
        dircache_put_one(x->cache, key, leaf, false, written, 3600);
    free(key);
    *fdp = fd;
    return 0;
}
