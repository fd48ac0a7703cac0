/* present: which SOP Instance UIDs a store already holds, per study, as
 * fetched by the uploader (one DICOMweb search of the study's instances,
 * paged) before it uploads a file of that study. A file whose instance is
 * there is not uploaded (the import would ignore it) and is reported
 * "present".
 *
 * No locking of its own: the import manager's lock guards every call. The
 * cache forgets a store's studies when one of its imports ends (they may
 * hold more instances now), and everything when it holds more than
 * PRESENT_MAX_UIDS UIDs (memory stays bounded; a study is then fetched
 * again when needed).
 */
#ifndef DICOMFS_PRESENT_H
#define DICOMFS_PRESENT_H

#include <stddef.h>
#include <stdint.h>

typedef struct present_cache present_cache;

present_cache *present_new(void);
void present_free(present_cache *pc);

enum {
    PRESENT_NO = 0,       /* the study is known and lacks the instance */
    PRESENT_YES = 1,      /* the store holds the instance */
    PRESENT_UNKNOWN = -1, /* not fetched: call present_begin and fetch */
    PRESENT_FETCHING = -2 /* another thread is fetching the study: wait */
};
int present_lookup(present_cache *pc, const char *store, const char *study, const char *sop);

/* Marks the study as being fetched; returns a token for present_end. */
uint64_t present_begin(present_cache *pc, const char *store, const char *study);
/* Ends a fetch: with ok, the study holds exactly uids[0..n) (taken over:
 * the cache frees them; freed here when not kept); without, nothing is
 * learned. Dropped when the store was forgotten since present_begin. */
void present_end(present_cache *pc, const char *store, const char *study, uint64_t token, int ok,
                 char **uids, size_t n);
/* The store's imports changed what it holds. */
void present_forget_store(present_cache *pc, const char *store);

#endif
