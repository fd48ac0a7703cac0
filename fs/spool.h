/* spool: the local files that hold what was written under import/.
 *
 * Owns cache_dir/spool/ (0700): one file per accepted file (0600), named by
 * a random 128-bit id in hex, never by the user's name (names can hold
 * anything but '/' and NUL). Nothing else is stored there.
 */
#ifndef DICOMFS_SPOOL_H
#define DICOMFS_SPOOL_H

#include <stdbool.h>
#include <stdint.h>

#define SPOOL_ID_LEN 32 /* hex characters */

typedef struct spool spool;

/* Creates cache_dir/spool (0700) if needed. Returns 0 or a negative errno. */
int spool_open(const char *cache_dir, spool **out);
void spool_close(spool *s);

/* Hands out a spool file for a new file; id gets SPOOL_ID_LEN hex chars +
 * NUL. It may be a recycled one that still holds *old_len bytes of an
 * earlier file (0: empty): the caller overwrites them, never reads past
 * what it wrote, and cuts the file to its size (ftruncate) before anything
 * else reads it or records it (see spool_recycle). Returns an fd open
 * O_RDWR or a negative errno. */
int spool_create(spool *s, char id[SPOOL_ID_LEN + 1], uint64_t *old_len);
/* Creates (or empties) the spool file of a known id: a remembered file
 * whose spool space was released and that is written again. */
int spool_create_as(spool *s, const char *id);
/* An unnamed temporary file in the spool directory (O_TMPFILE), for a copy
 * fetched back from remote storage; it vanishes when closed. */
int spool_open_tmp(spool *s);
/* Opens an existing spool file (flags as for open(2), without O_CREAT). */
int spool_open_file(spool *s, const char *id, int flags);
int spool_remove(spool *s, const char *id);
/* Like spool_remove, but the file goes back to the pool of
 * files handed out by spool_create (under a new id) when there is room.
 * Only for a file nobody has open. Its content is kept for the next file
 * to write over (emptying a file frees its pages and blocks, and the next
 * file allocates them again: the largest system cost per file) while the
 * pool holds at most SPOOL_KEEP_BYTES (64 MiB) of such bytes; beyond that
 * it is emptied. */
int spool_recycle(spool *s, const char *id);
bool spool_exists(spool *s, const char *id);
/* Removes every spool file for which keep(ctx, id) is false (files left by
 * a crash before they were accepted). Returns how many were removed. */
int spool_gc(spool *s, bool (*keep)(void *ctx, const char *id), void *ctx);
/* Syncs the spool directory (after creating or removing files). */
int spool_sync_dir(spool *s);
/* Eager: every creation starts a background directory fsync at once (for
 * callers that will sync every file); otherwise only spool_sync_dir() does. */
void spool_set_eager_dir_sync(spool *s, bool eager);
/* Whether id looks like a spool id (SPOOL_ID_LEN lowercase hex chars). */
bool spool_id_valid(const char *id);

#endif
