/* dircache: short-lived directory listings (see dircache.h). */
#include "dircache.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

typedef struct centry {
    dircache_entry e;
    double expires; /* for single entries; complete listings use the listing's */
} centry;

typedef struct listing {
    struct listing *next;
    char *key;
    centry *v; /* sorted by name */
    size_t n, cap;
    double complete_until; /* 0: not complete */
    bool was_complete;     /* v came from a full list call (fresh or not) */
    double failed_until;   /* the last refresh failed: serve v until then without asking */
} listing;

struct dircache {
    pthread_mutex_t lock;
    listing *head;
};

/* Listings of big directories are kept; stale ones are dropped when the
 * total grows beyond this many. */
#define DIRCACHE_MAX_LISTINGS 256

dircache *dircache_new(void)
{
    dircache *c = calloc(1, sizeof *c);
    if (c)
        pthread_mutex_init(&c->lock, NULL);
    return c;
}

static void listing_free(listing *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].e.name);
    free(l->v);
    free(l->key);
    free(l);
}

void dircache_free(dircache *c)
{
    if (!c)
        return;
    for (listing *l = c->head, *next; l; l = next) {
        next = l->next;
        listing_free(l);
    }
    pthread_mutex_destroy(&c->lock);
    free(c);
}

void dircache_list_init(dircache_list *l)
{
    memset(l, 0, sizeof *l);
}

int dircache_list_add(dircache_list *l, const char *name, bool is_dir, uint64_t size)
{
    return dircache_list_add_mtime(l, name, is_dir, size, 0);
}

int dircache_list_add_mtime(dircache_list *l, const char *name, bool is_dir, uint64_t size,
                            int64_t mtime)
{
    dircache_entry *v = util_grow(l->v, l->n, &l->cap, sizeof *v, 32);
    if (!v)
        return -1;
    l->v = v;
    char *dup = strdup(name);
    if (!dup)
        return -1;
    l->v[l->n++] = (dircache_entry){dup, is_dir, size, mtime};
    return 0;
}

void dircache_list_clear(dircache_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].name);
    free(l->v);
    dircache_list_init(l);
}

static int cmp_centry(const void *a, const void *b)
{
    return strcmp(((const centry *)a)->e.name, ((const centry *)b)->e.name);
}

static listing *find(dircache *c, const char *key, listing ***prevp)
{
    listing **pp = &c->head;
    for (; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->key, key) == 0) {
            if (prevp)
                *prevp = pp;
            return *pp;
        }
    return NULL;
}

static void prune(dircache *c, double now)
{
    size_t count = 0;
    for (listing *l = c->head; l; l = l->next)
        count++;
    if (count < DIRCACHE_MAX_LISTINGS)
        return;
    for (listing **pp = &c->head; *pp;) {
        listing *l = *pp;
        bool stale = l->complete_until < now;
        for (size_t i = 0; stale && i < l->n; i++)
            stale = l->v[i].expires < now;
        if (stale) {
            *pp = l->next;
            listing_free(l);
        } else {
            pp = &l->next;
        }
    }
}

static listing *get_or_add(dircache *c, const char *key)
{
    listing *l = find(c, key, NULL);
    if (l)
        return l;
    l = calloc(1, sizeof *l);
    if (!l || !(l->key = strdup(key))) {
        free(l);
        return NULL;
    }
    l->next = c->head;
    c->head = l;
    return l;
}

void dircache_put(dircache *c, const char *key, dircache_list *in, double ttl_s)
{
    double now = util_now_s();
    centry *v = calloc(in->n ? in->n : 1, sizeof *v);
    if (!v) {
        dircache_list_clear(in);
        return;
    }
    for (size_t i = 0; i < in->n; i++)
        v[i] = (centry){in->v[i], now + ttl_s};
    size_t n = in->n;
    free(in->v);
    dircache_list_init(in);
    qsort(v, n, sizeof *v, cmp_centry);

    pthread_mutex_lock(&c->lock);
    prune(c, now);
    listing *l = get_or_add(c, key);
    if (l) {
        for (size_t i = 0; i < l->n; i++)
            free(l->v[i].e.name);
        free(l->v);
        l->v = v;
        l->n = l->cap = n;
        l->complete_until = now + ttl_s;
        l->was_complete = true;
        l->failed_until = 0;
        v = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    if (v) {
        for (size_t i = 0; i < n; i++)
            free(v[i].e.name);
        free(v);
    }
}

static centry *bsearch_name(listing *l, const char *name)
{
    if (l->n == 0)
        return NULL;
    centry k = {.e = {.name = (char *)name}};
    return bsearch(&k, l->v, l->n, sizeof *l->v, cmp_centry);
}

void dircache_put_one(dircache *c, const char *key, const char *name, bool is_dir, uint64_t size,
                      double ttl_s)
{
    dircache_put_one_mtime(c, key, name, is_dir, size, 0, ttl_s);
}

void dircache_put_one_mtime(dircache *c, const char *key, const char *name, bool is_dir,
                            uint64_t size, int64_t mtime, double ttl_s)
{
    double now = util_now_s();
    pthread_mutex_lock(&c->lock);
    listing *l = get_or_add(c, key);
    centry *e = l ? bsearch_name(l, name) : NULL;
    if (e) {
        e->e.is_dir = is_dir;
        e->e.size = size;
        e->e.mtime = mtime;
        e->expires = now + ttl_s;
    } else if (l) {
        char *dup = strdup(name);
        centry *v = dup ? util_grow(l->v, l->n, &l->cap, sizeof *v, 8) : NULL;
        if (v)
            l->v = v;
        if (dup && l->n < l->cap) {
            l->v[l->n++] = (centry){{dup, is_dir, size, mtime}, now + ttl_s};
            qsort(l->v, l->n, sizeof *l->v, cmp_centry);
        } else {
            free(dup);
        }
    }
    pthread_mutex_unlock(&c->lock);
}

int dircache_lookup(dircache *c, const char *key, const char *name, bool *is_dir, uint64_t *size)
{
    int64_t mtime;
    return dircache_lookup_mtime(c, key, name, is_dir, size, &mtime);
}

int dircache_lookup_mtime(dircache *c, const char *key, const char *name, bool *is_dir,
                          uint64_t *size, int64_t *mtime)
{
    double now = util_now_s();
    int rc = -1;
    pthread_mutex_lock(&c->lock);
    listing *l = find(c, key, NULL);
    if (l) {
        centry *e = bsearch_name(l, name);
        if (e && (e->expires >= now || l->complete_until >= now)) {
            *is_dir = e->e.is_dir;
            *size = e->e.size;
            *mtime = e->e.mtime;
            rc = 1;
        } else if (!e && l->complete_until >= now) {
            rc = 0;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* Copies the listing under key into out when it is usable: fresh (complete
 * until now or later) or, with stale, complete at some time. 0 or -1. */
static int copy_listing(dircache *c, const char *key, bool stale, dircache_list *out)
{
    double now = util_now_s();
    int rc = -1;
    dircache_list_init(out);
    pthread_mutex_lock(&c->lock);
    listing *l = find(c, key, NULL);
    if (l && (stale ? l->was_complete : l->complete_until >= now)) {
        rc = 0;
        for (size_t i = 0; i < l->n; i++)
            if (dircache_list_add_mtime(out, l->v[i].e.name, l->v[i].e.is_dir, l->v[i].e.size,
                                        l->v[i].e.mtime)) {
                rc = -1;
                break;
            }
    }
    pthread_mutex_unlock(&c->lock);
    if (rc)
        dircache_list_clear(out);
    return rc;
}

int dircache_get(dircache *c, const char *key, dircache_list *out)
{
    return copy_listing(c, key, false, out);
}

int dircache_lookup_stale(dircache *c, const char *key, const char *name, bool *is_dir,
                          uint64_t *size)
{
    int rc = -1;
    pthread_mutex_lock(&c->lock);
    listing *l = find(c, key, NULL);
    if (l && l->was_complete) {
        centry *e = bsearch_name(l, name);
        if (e) {
            *is_dir = e->e.is_dir;
            *size = e->e.size;
        }
        rc = e ? 1 : 0;
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int dircache_get_stale(dircache *c, const char *key, dircache_list *out)
{
    return copy_listing(c, key, true, out);
}

void dircache_invalidate(dircache *c, const char *key)
{
    pthread_mutex_lock(&c->lock);
    listing **pp = NULL;
    listing *l = find(c, key, &pp);
    if (l) {
        *pp = l->next;
        listing_free(l);
    }
    pthread_mutex_unlock(&c->lock);
}

/* Refreshing key's listing failed: for ttl_s the last one is served as it
 * is, so that during an outage each listing waits on the server once per
 * ttl, not once per request. */
static void note_failure(dircache *c, const char *key, double ttl_s)
{
    pthread_mutex_lock(&c->lock);
    listing *l = find(c, key, NULL);
    if (l && l->was_complete)
        l->failed_until = util_now_s() + ttl_s;
    pthread_mutex_unlock(&c->lock);
}

bool dircache_failing(dircache *c, const char *key)
{
    pthread_mutex_lock(&c->lock);
    listing *l = find(c, key, NULL);
    bool failing = l && l->was_complete && l->failed_until >= util_now_s();
    pthread_mutex_unlock(&c->lock);
    return failing;
}

int dircache_get_or_fetch(dircache *c, const char *key, double ttl_s, dircache_fetch_fn fetch,
                          void *ctx, dircache_list *out)
{
    if (dircache_get(c, key, out) == 0)
        return 0;
    if (dircache_failing(c, key) && dircache_get_stale(c, key, out) == 0)
        return 0;
    dircache_list l;
    dircache_list_init(&l);
    int rc = fetch(ctx, &l);
    if (rc == 0) {
        dircache_put(c, key, &l, ttl_s);
        if (dircache_get(c, key, out) != 0)
            dircache_list_init(out);
        return 0;
    }
    dircache_list_clear(&l);
    /* Stale on error: the last good listing rather than a failure (the
     * fetch logged why); "gone" and "out of memory" stand. */
    if (rc != -ENOENT && rc != -ENOMEM && dircache_get_stale(c, key, out) == 0) {
        note_failure(c, key, ttl_s);
        return 0;
    }
    dircache_list_init(out);
    return rc;
}

int dircache_lookup_or_fetch(dircache *c, const char *key, const char *name, double ttl_s,
                             dircache_fetch_fn fetch, void *ctx, bool *is_dir, uint64_t *size)
{
    int f = dircache_lookup(c, key, name, is_dir, size);
    if (f >= 0)
        return f;
    /* Stale while revalidating: a name the last listing had resolves at
     * once, without the server (a copy into import/ must not wait on it);
     * the listing is refreshed by the next readdir or a lookup of a name it
     * lacks. */
    if (dircache_lookup_stale(c, key, name, is_dir, size) == 1)
        return 1;
    dircache_list l;
    int rc = dircache_get_or_fetch(c, key, ttl_s, fetch, ctx, &l);
    dircache_list_clear(&l);
    if (rc)
        return rc;
    f = dircache_lookup_stale(c, key, name, is_dir, size);
    return f == 1 ? 1 : 0;
}
