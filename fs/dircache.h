/* dircache: short-lived directory listings keyed by directory, so that
 * `ls -l` of a directory of 1000 remote entries costs one list call and the
 * getattr of every child is answered from the listing.
 *
 * A listing is "complete" when it came from a full list call: a name absent
 * from a fresh complete listing does not exist. Single entries (e.g. the
 * size of one operation fetched by getattr) can be added to a listing
 * without making it complete. Thread-safe.
 *
 * Owns the one cache policy of every remote listing: fresh within a TTL,
 * then fetched again, the last listing served when that fails
 * (dircache_get_or_fetch). Keys come from fs_cache_key (ctx.h).
 */
#ifndef DICOMFS_DIRCACHE_H
#define DICOMFS_DIRCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct dircache dircache;

typedef struct dircache_entry {
    char *name;
    bool is_dir;
    uint64_t size;
    int64_t mtime; /* seconds since the epoch, 0 = unknown */
} dircache_entry;

/* Builder for a complete listing. */
typedef struct dircache_list {
    dircache_entry *v;
    size_t n, cap;
} dircache_list;

dircache *dircache_new(void);
void dircache_free(dircache *c);

void dircache_list_init(dircache_list *l);
int dircache_list_add(dircache_list *l, const char *name, bool is_dir, uint64_t size);
int dircache_list_add_mtime(dircache_list *l, const char *name, bool is_dir, uint64_t size,
                            int64_t mtime);
void dircache_list_clear(dircache_list *l);

/* Replaces the listing of key by l (taken over: l is left empty), fresh for
 * ttl_s seconds. */
void dircache_put(dircache *c, const char *key, dircache_list *l, double ttl_s);
/* Adds or replaces one entry of key's listing, fresh for ttl_s seconds. */
void dircache_put_one(dircache *c, const char *key, const char *name, bool is_dir, uint64_t size,
                      double ttl_s);
void dircache_put_one_mtime(dircache *c, const char *key, const char *name, bool is_dir,
                            uint64_t size, int64_t mtime, double ttl_s);

/* 1: found (is_dir/size set); 0: a fresh complete listing lacks the name;
 * -1: nothing fresh is known. */
int dircache_lookup(dircache *c, const char *key, const char *name, bool *is_dir, uint64_t *size);

/* The same, also giving the entry's mtime (0 = unknown). */
int dircache_lookup_mtime(dircache *c, const char *key, const char *name, bool *is_dir,
                          uint64_t *size, int64_t *mtime);

/* Copies the fresh complete listing of key into out (caller clears it).
 * Returns 0, or -1 when there is none. */
int dircache_get(dircache *c, const char *key, dircache_list *out);

/* Stale-if-error: the same as dircache_lookup and dircache_get, but from
 * the last complete listing of key however old it is, for when refreshing
 * it failed. -1 when key never had a complete listing (or it was
 * invalidated). */
int dircache_lookup_stale(dircache *c, const char *key, const char *name, bool *is_dir,
                          uint64_t *size);
int dircache_get_stale(dircache *c, const char *key, dircache_list *out);

/* Fills l with the complete listing of a directory from the server, or
 * returns -errno (having logged what failed and why). */
typedef int (*dircache_fetch_fn)(void *ctx, dircache_list *l);

/* The one way every kind of directory is read: the fresh listing of key,
 * else a new one from fetch (kept ttl_s seconds), else, when fetch fails
 * for another reason than -ENOENT or -ENOMEM (the server is unreachable,
 * timed out, refused), the last complete listing however old (stale on
 * error). Copies it into out (caller clears). Returns 0 or fetch's -errno. */
int dircache_get_or_fetch(dircache *c, const char *key, double ttl_s, dircache_fetch_fn fetch,
                          void *ctx, dircache_list *out);

/* One name of key's directory: 1 found (is_dir/size set), 0 absent, or
 * -errno. A name in the last complete listing, however old, is found at
 * once without calling fetch (stale while revalidate); otherwise as
 * dircache_get_or_fetch. */
int dircache_lookup_or_fetch(dircache *c, const char *key, const char *name, double ttl_s,
                             dircache_fetch_fn fetch, void *ctx, bool *is_dir, uint64_t *size);

/* True while the last refresh of key's listing failed less than its ttl
 * ago (dircache_get_or_fetch then serves the last listing without asking):
 * callers that read single entries may do the same. */
bool dircache_failing(dircache *c, const char *key);

/* Forgets key's listing (after a change we made). */
void dircache_invalidate(dircache *c, const char *key);

#endif
