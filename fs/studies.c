/* studies: STORE/studies/ DICOMweb view (see studies.h). */
#include "studies.h"

#include <errno.h>
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "errmap.h"
#include "filter.h"
#include "log.h"
#include "util.h"

/* Writable directories only where unlink can do something: with
 * default_permissions the kernel checks the directory's w bit first. */
static mode_t dir_mode(const fs_ctx *x)
{
    return x->opt->allow_delete ? 0755 : 0555;
}

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
        return util_asprintf("studies/%s/series", sp->study);
    default:
        return util_asprintf("studies/%s/series/%s/instances", sp->study, sp->series);
    }
}

/* studies/, studies/STUDY or studies/STUDY/SERIES (fs_cache_key). */
static char *cache_key(const tree_path *tp, const spath *sp, int depth)
{
    char *what = depth >= 2   ? util_asprintf("studies/%s/%s", sp->study, sp->series)
                 : depth == 1 ? util_asprintf("studies/%s", sp->study)
                              : strdup("studies");
    char *key = what ? fs_cache_key(tp->dataset, tp->store, what) : NULL;
    free(what);
    return key;
}

struct collect {
    dircache_list l;
    int depth; /* 0 studies, 1 series, 2 instances */
};

/* Value[0] of a tag in a DICOM JSON object, or NULL. */
static const char *tag_text(const cJSON *o, const char *tag)
{
    const cJSON *v =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, tag), "Value");
    const cJSON *first = cJSON_GetArrayItem(v, 0);
    return cJSON_IsString(first) ? first->valuestring : NULL;
}

/* DA "YYYYMMDD" and TM "HHMMSS[.F]" (taken as UTC: DICOM dates carry no
 * zone) as seconds since the epoch; 0 when absent or malformed. */
static int64_t dicom_time(const char *da, const char *tm)
{
    struct tm t = {0};
    if (!da || strlen(da) != 8 || strspn(da, "0123456789") != 8)
        return 0;
    t.tm_year = atoi((char[]){da[0], da[1], da[2], da[3], 0}) - 1900;
    t.tm_mon = atoi((char[]){da[4], da[5], 0}) - 1;
    t.tm_mday = atoi((char[]){da[6], da[7], 0});
    if (tm && strlen(tm) >= 6 && strspn(tm, "0123456789") >= 6) {
        t.tm_hour = atoi((char[]){tm[0], tm[1], 0});
        t.tm_min = atoi((char[]){tm[2], tm[3], 0});
        t.tm_sec = atoi((char[]){tm[4], tm[5], 0});
    }
    time_t r = timegm(&t);
    return r > 0 ? (int64_t)r : 0;
}

/* A study's or series' directory mtime: its date and time where the API has
 * them (StudyDate/StudyTime; SeriesDate/SeriesTime, else the performed
 * procedure step's start). */
static int64_t dir_mtime(int depth, const char *json)
{
    cJSON *o = cJSON_Parse(json);
    int64_t t = 0;
    if (o && depth == 0)
        t = dicom_time(tag_text(o, "00080020"), tag_text(o, "00080030"));
    else if (o && depth == 1) {
        t = dicom_time(tag_text(o, "00080021"), tag_text(o, "00080031"));
        if (!t)
            t = dicom_time(tag_text(o, "00400244"), tag_text(o, "00400245"));
    }
    cJSON_Delete(o);
    return t;
}

static int collect_cb(void *ctx, const char *uid, const char *json)
{
    struct collect *c = ctx;
    if (!uid || !filter_uid_valid(uid, strlen(uid)))
        return 0;
    bool inst = c->depth == 2;
    char name[TREE_NAME_MAX + 1];
    snprintf(name, sizeof name, "%s%s", uid, inst ? ".dcm" : "");
    int64_t mtime = inst || !json ? 0 : dir_mtime(c->depth, json);
    return dircache_list_add_mtime(&c->l, name, !inst, 0, mtime) ? CERR_NOMEM : 0;
}

/* Listings come out of the cache sorted by name. */
static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const dircache_entry *)a)->name, ((const dircache_entry *)b)->name);
}

/* An instance never changes size: a new listing of a series keeps the sizes
 * the last one had learned, so only new instances are asked for. */
static void keep_sizes(fs_ctx *x, const char *key, dircache_list *l)
{
    dircache_list old;
    if (dircache_get_stale(x->cache, key, &old) != 0)
        return;
    for (size_t i = 0; i < l->n; i++) {
        const dircache_entry *e = bsearch(&l->v[i], old.v, old.n, sizeof *old.v, cmp_entry);
        if (e && l->v[i].size == 0)
            l->v[i].size = e->size;
    }
    dircache_list_clear(&old);
}

/* One level of the studies/ tree of a store. */
struct level_src {
    fs_ctx *x;
    const tree_path *tp;
    const spath *sp;
    int depth;
    const char *key; /* the listing's dircache key (sizes learnt before are kept) */
};

/* dircache_fetch_fn: one DICOMweb search. */
static int fetch_level(void *ctx, dircache_list *out)
{
    struct level_src *src = ctx;
    fs_ctx *x = src->x;
    const tree_path *tp = src->tp;
    char *store = fs_store_name(x, tp->dataset, tp->store);
    char *path = search_path(src->sp, src->depth);
    struct collect c = {.depth = src->depth};
    dircache_list_init(&c.l);
    cerr_detail err = {0};
    /* SeriesDate/SeriesTime are not among the default series fields */
    const char *query = src->depth == 1 ? "includefield=00080021&includefield=00080031" : NULL;
    int rc = store && path ? hc_dicomweb_search(x->cl.hc, store, path, query, collect_cb, &c, &err)
                           : -ENOMEM;
    if (rc != CERR_OK) {
        int e = errmap_errno(rc);
        if (e != -ENOENT)
            log_error("%s/%s/studies/%s: DICOMweb search %s failed: %s", tp->dataset, tp->store,
                      tp->rest, path ? path : "", err.message);
        dircache_list_clear(&c.l);
        rc = e;
    } else {
        if (c.depth == 2)
            keep_sizes(x, src->key, &c.l);
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
    struct level_src src = {x, tp, sp, depth, key};
    int rc = dircache_get_or_fetch(x->cache, key, FS_LIST_TTL, fetch_level, &src, out);
    free(key);
    return rc;
}

/* ---- instance sizes: stat must report what reading returns, before any
 * read (tar and rsync copy st_size bytes). instances.getStorageInfo gives
 * the blob size without a download; `ls -l` of a series asks for every
 * instance of it whose size is unknown in one burst of SIZE_WORKERS parallel
 * calls, so the lstat calls that follow are answered from the listing. */

#define SIZE_WORKERS 8

typedef struct size_job {
    fs_ctx *x;
    const char *store;
    const spath *sp;
    dircache_list *l; /* entries with size 0 are asked for */
    pthread_mutex_t lock;
    size_t next;
    size_t learned, failed;
    bool unsupported; /* the API answered 400/501: no getStorageInfo */
    cerr_detail last; /* the last failure */
} size_job;

static void *size_worker(void *arg)
{
    size_job *j = arg;
    for (;;) {
        pthread_mutex_lock(&j->lock);
        size_t i = j->next;
        while (i < j->l->n && j->l->v[i].size != 0)
            i++;
        j->next = i + 1;
        bool stop = j->unsupported;
        pthread_mutex_unlock(&j->lock);
        if (i >= j->l->n || stop)
            return NULL;
        char uid[TREE_NAME_MAX + 1];
        snprintf(uid, sizeof uid, "%s", j->l->v[i].name);
        size_t n = strlen(uid);
        if (n > 4)
            uid[n - 4] = '\0'; /* ".dcm" */
        uint64_t size = 0;
        cerr_detail err = {0};
        int rc = hc_dicomweb_instance_size(j->x->cl.hc, j->store, j->sp->study, j->sp->series, uid,
                                           &size, &err);
        if (rc == CERR_OK)
            j->l->v[i].size = size; /* each worker writes its own (claimed) entry */
        pthread_mutex_lock(&j->lock);
        if (rc == CERR_OK) {
            j->learned++;
        } else {
            j->failed++;
            j->last = err;
            j->unsupported = j->unsupported || err.http_status == 501 || err.http_status == 400;
        }
        pthread_mutex_unlock(&j->lock);
    }
}

/* One series at a time: concurrent lstat calls of the same `ls -l` wait for
 * the burst already running instead of starting their own. */
static pthread_mutex_t size_lock = PTHREAD_MUTEX_INITIALIZER;
/* After a burst that learned nothing (no getStorageInfo, or the API down),
 * no new burst for SIZE_PAUSE_S seconds: each lstat then retrieves its one
 * instance instead of asking for the whole series again and again. */
#define SIZE_PAUSE_S 60
static time_t size_paused_until; /* under size_lock */

static void resolve_sizes(fs_ctx *x, const tree_path *tp, const spath *sp, const char *key)
{
    pthread_mutex_lock(&size_lock);
    dircache_list l;
    char *store = time(NULL) >= size_paused_until ? fs_store_name(x, tp->dataset, tp->store) : NULL;
    if (store && dircache_get_stale(x->cache, key, &l) == 0) {
        size_job j = {.x = x, .store = store, .sp = sp, .l = &l};
        pthread_mutex_init(&j.lock, NULL);
        pthread_t th[SIZE_WORKERS];
        size_t started = 0, unknown = 0;
        for (size_t i = 0; i < l.n; i++)
            unknown += l.v[i].size == 0;
        for (; started < SIZE_WORKERS && started < unknown; started++)
            if (pthread_create(&th[started], NULL, size_worker, &j) != 0)
                break;
        if (started == 0 && unknown > 0)
            size_worker(&j);
        for (size_t i = 0; i < started; i++)
            pthread_join(th[i], NULL);
        pthread_mutex_destroy(&j.lock);
        if (j.failed > 0)
            log_warn("%s/%s/studies/%s/%s: getStorageInfo failed for %zu of %zu instances (last: "
                     "%s)%s",
                     tp->dataset, tp->store, sp->study, sp->series, j.failed, j.failed + j.learned,
                     j.last.message,
                     j.learned ? "" : "; sizes come from one retrieval per instance for a minute");
        if (j.failed > 0 && j.learned == 0)
            size_paused_until = time(NULL) + SIZE_PAUSE_S;
        for (size_t i = 0; i < l.n; i++)
            if (l.v[i].size != 0)
                dircache_put_one(x->cache, key, l.v[i].name, false, l.v[i].size, FS_LIST_TTL);
        dircache_list_clear(&l);
    }
    free(store);
    pthread_mutex_unlock(&size_lock);
}

/* Without getStorageInfo: the size of one retrieval (the instance is
 * downloaded into a temporary file and dropped). */
static uint64_t retrieved_size(fs_ctx *x, const tree_path *tp)
{
    int fd = -1;
    tree_path one = *tp;
    if (studies_open(x, &one, &fd) != 0)
        return 0;
    struct stat st;
    uint64_t n = fstat(fd, &st) == 0 ? (uint64_t)st.st_size : 0;
    close(fd);
    return n;
}

int studies_getattr(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    spath sp;
    int rc = split(tp->rest, &sp);
    if (rc)
        return rc;
    if (sp.depth == 0) {
        fs_stat_dir(x, st, dir_mode(x));
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
    struct level_src src = {x, tp, &sp, sp.depth - 1, key};
    int f = dircache_lookup_or_fetch(x->cache, key, leaf, FS_LIST_TTL, fetch_level, &src, &is_dir,
                                     &size);
    int64_t mtime = 0;
    if (f == 1 && dircache_lookup_mtime(x->cache, key, leaf, &is_dir, &size, &mtime) != 1)
        mtime = 0;
    if (f == 1 && !is_dir && size == 0) {
        resolve_sizes(x, tp, &sp, key);
        if (dircache_lookup(x->cache, key, leaf, &is_dir, &size) != 1)
            size = 0;
        if (size == 0)
            size = retrieved_size(x, tp);
    }
    free(key);
    if (f < 0)
        return f;
    if (f != 1)
        return -ENOENT;
    if (is_dir)
        fs_stat_dir(x, st, dir_mode(x));
    else
        fs_stat_file(x, st, 0444, (off_t)size);
    if (mtime > 0)
        st->st_mtim = st->st_ctim = (struct timespec){mtime, 0};
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
            fs_stat_dir(x, &st, dir_mode(x));
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
    cerr_detail err = {0};
    int h = hc_dicomweb_retrieve_instance(x->cl.hc, store, sp.study, sp.series, sp.instance, fd,
                                          &written, &err);
    free(store);
    if (h != CERR_OK) {
        rc = errmap_errno(h);
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

/* ---- deletes (-o allow_delete) */

/* After a delete: the listings that may show what is gone. */
static void forget_listings(fs_ctx *x, const tree_path *tp, const spath *sp)
{
    for (int d = 0; d < sp->depth && d <= 2; d++) {
        char *key = cache_key(tp, sp, d);
        if (key)
            dircache_invalidate(x->cache, key);
        free(key);
    }
}

int studies_unlink(fs_ctx *x, const tree_path *tp)
{
    spath sp;
    int rc = split(tp->rest, &sp);
    if (rc)
        return rc;
    struct stat st;
    rc = studies_getattr(x, tp, &st);
    if (rc)
        return rc;
    if (S_ISDIR(st.st_mode))
        return -EISDIR;
    if (!x->opt->allow_delete) {
        log_warn("%s/%s/studies/%s: unlink: studies/ is read-only; mount with -o allow_delete to "
                 "delete instances: %s",
                 tp->dataset, tp->store, tp->rest, strerror(EACCES));
        return -EACCES;
    }
    char *store = fs_store_name(x, tp->dataset, tp->store);
    char *path =
        util_asprintf("studies/%s/series/%s/instances/%s", sp.study, sp.series, sp.instance);
    cerr_detail err = {0};
    int h = store && path ? hc_dicomweb_delete(x->cl.hc, store, path, NULL, &err) : CERR_NOMEM;
    if (h != CERR_OK && h != CERR_NOT_FOUND) /* not found: gone already */
        rc = errmap_errno(h);
    if (rc)
        log_error("%s/%s/studies/%s: DICOMweb DELETE failed: %s", tp->dataset, tp->store, tp->rest,
                  err.message);
    else
        log_info("%s/%s/studies/%s: instance deleted (allow_delete)", tp->dataset, tp->store,
                 tp->rest);
    forget_listings(x, tp, &sp);
    free(store);
    free(path);
    return rc;
}

/* rmdir of a study or series removes an empty directory only (as rmdir(2)
 * does): `rm -r` deletes the instances first, after which the API no longer
 * has the series or study. A directory that still lists something is
 * ENOTEMPTY, so a stray rmdir never deletes a study. */
int studies_rmdir(fs_ctx *x, const tree_path *tp)
{
    spath sp;
    int rc = split(tp->rest, &sp);
    if (rc)
        return rc;
    if (sp.depth == 0)
        return -EBUSY;
    if (sp.depth == 3)
        return -ENOTDIR;
    struct stat st;
    rc = studies_getattr(x, tp, &st);
    /* The kernel looked it up before calling: gone now means `rm -r` just
     * deleted its last instance (the API keeps no empty series). */
    if (rc == -ENOENT && x->opt->allow_delete)
        return 0;
    if (rc)
        return rc;
    if (!x->opt->allow_delete) {
        log_warn("%s/%s/studies/%s: rmdir: studies/ is read-only; mount with -o allow_delete to "
                 "delete studies and series: %s",
                 tp->dataset, tp->store, tp->rest, strerror(EACCES));
        return -EACCES;
    }
    char *key = cache_key(tp, &sp, sp.depth);
    if (key)
        dircache_invalidate(x->cache, key);
    free(key);
    dircache_list l;
    rc = listing(x, tp, &sp, sp.depth, &l);
    if (rc)
        return rc == -ENOENT ? 0 : rc;
    size_t n = l.n;
    dircache_list_clear(&l);
    forget_listings(x, tp, &sp);
    if (n > 0)
        return -ENOTEMPTY;
    return 0;
}
