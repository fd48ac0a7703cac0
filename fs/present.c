/* present: per-study sets of the SOP Instance UIDs a store holds (see
 * present.h). Entries hang in a fixed hash table keyed by store and study;
 * each holds its UIDs sorted, looked up with bsearch. */
#include "present.h"

#include "util.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define PRESENT_BUCKETS 1024
#define PRESENT_MAX_UIDS 500000 /* about 40 MiB of UIDs at most */

typedef struct entry {
    char *store, *study;
    bool fetching, known;
    uint64_t token;
    char **uids;
    size_t n;
    struct entry *next;
} entry;

struct present_cache {
    entry *b[PRESENT_BUCKETS];
    size_t total;  /* UIDs held */
    uint64_t gen;  /* bumped by every forget: older fetches are dropped */
    uint64_t next; /* token source */
};

present_cache *present_new(void)
{
    return calloc(1, sizeof(present_cache));
}

static void free_uids(char **uids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(uids[i]);
    free(uids);
}

static void entry_free(present_cache *pc, entry *e)
{
    pc->total -= e->n;
    free_uids(e->uids, e->n);
    free(e->store);
    free(e->study);
    free(e);
}

static size_t bucket(const char *store, const char *study)
{
    uint64_t h = util_fnv1a_str(UTIL_FNV1A_INIT, store);
    h = util_fnv1a_str(util_fnv1a(h, "/", 1), study);
    return (size_t)(h % PRESENT_BUCKETS);
}

static entry **find(present_cache *pc, const char *store, const char *study)
{
    entry **pp = &pc->b[bucket(store, study)];
    for (; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->study, study) == 0 && strcmp((*pp)->store, store) == 0)
            return pp;
    return pp;
}

/* Drops entries that are not being fetched (all of them when store is NULL). */
static void drop(present_cache *pc, const char *store)
{
    for (size_t i = 0; i < PRESENT_BUCKETS; i++) {
        for (entry **pp = &pc->b[i]; *pp;) {
            entry *e = *pp;
            if (store && strcmp(e->store, store) != 0) {
                pp = &e->next;
                continue;
            }
            if (e->fetching) { /* its fetch ends by itself; what it learns is dropped */
                e->known = false;
                pc->total -= e->n;
                free_uids(e->uids, e->n);
                e->uids = NULL;
                e->n = 0;
                pp = &e->next;
                continue;
            }
            *pp = e->next;
            entry_free(pc, e);
        }
    }
}

void present_free(present_cache *pc)
{
    if (!pc)
        return;
    for (size_t i = 0; i < PRESENT_BUCKETS; i++)
        while (pc->b[i]) {
            entry *e = pc->b[i];
            pc->b[i] = e->next;
            entry_free(pc, e);
        }
    free(pc);
}

static int cmp_uid(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int present_lookup(present_cache *pc, const char *store, const char *study, const char *sop)
{
    entry *e = *find(pc, store, study);
    if (!e)
        return PRESENT_UNKNOWN;
    if (e->fetching)
        return PRESENT_FETCHING;
    if (!e->known)
        return PRESENT_UNKNOWN;
    return e->n && bsearch(&sop, e->uids, e->n, sizeof *e->uids, cmp_uid) ? PRESENT_YES
                                                                          : PRESENT_NO;
}

uint64_t present_begin(present_cache *pc, const char *store, const char *study)
{
    entry **pp = find(pc, store, study);
    if (!*pp) {
        entry *e = calloc(1, sizeof *e);
        if (!e || !(e->store = strdup(store)) || !(e->study = strdup(study))) {
            if (e) {
                free(e->store);
                free(e);
            }
            return 0;
        }
        *pp = e;
    }
    (*pp)->fetching = true;
    (*pp)->token = (pc->gen << 32) | (++pc->next & 0xffffffffu);
    return (*pp)->token;
}

void present_end(present_cache *pc, const char *store, const char *study, uint64_t token, int ok,
                 char **uids, size_t n)
{
    entry *e = *find(pc, store, study);
    bool keep = ok && e && e->token == token && (token >> 32) == pc->gen;
    if (e && e->token == token)
        e->fetching = false;
    if (!keep) {
        free_uids(uids, n);
        return;
    }
    if (pc->total + n > PRESENT_MAX_UIDS) {
        e->fetching = true; /* spared by drop */
        drop(pc, NULL);
        e->fetching = false;
    }
    if (n > 1)
        qsort(uids, n, sizeof *uids, cmp_uid);
    pc->total -= e->n;
    free_uids(e->uids, e->n);
    e->uids = uids;
    e->n = n;
    e->known = true;
    pc->total += n;
}

void present_forget_store(present_cache *pc, const char *store)
{
    pc->gen++;
    drop(pc, store);
}
