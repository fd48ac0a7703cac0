/* index: the on-disk index of remembered files under import/ (imported or
 * present, nothing left to do), in SQLite (cache_dir/index.sqlite, WAL).
 *
 * Why: the import manager keeps files in flight in memory (the bounded
 * cache bounds them) but a migration remembers millions of finished files;
 * kept in memory and in the journal they made memory, readdir and restarts
 * grow with every file ever imported. Here a file is one row keyed by
 * (store, parent folder, name): a lookup is one indexed read, a folder
 * listing is one range query by parent (paged), and nothing walks all rows.
 *
 * Durability: journal_mode=WAL with synchronous=NORMAL: a commit is in the
 * WAL file (safe from a crash or kill of dicomfs) and fsync'ed at the next
 * checkpoint. A power loss may lose the last remembered rows; the files
 * they described are already in the store, so the worst case is a rerun
 * that copies them again and reports them present.
 *
 * Not thread-safe by itself: the import manager calls it under its lock.
 * Every int-returning function returns 0 or a negative errno (-EIO on a
 * SQLite error, logged with SQLite's message).
 */
#ifndef DICOMFS_INDEX_H
#define DICOMFS_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef struct index_db index_db;

/* One remembered file. Strings point into the caller's memory (put) or
 * SQLite's (callbacks: valid during the call only). */
typedef struct index_entry {
    const char *path; /* below import/: "a/b.dcm" */
    const char *name; /* last component of path */
    const char *id;   /* spool id (a rewrite reuses it) */
    int state;        /* the import manager's node state */
    uint64_t size;
    unsigned mode, uid, gid;
    struct timespec atime, mtime, ctime;
    const char *sop, *study, *series; /* UIDs, to read it back and find duplicates */
} index_entry;

/* Called per row; non-zero stops the walk and is returned. */
typedef int (*index_cb)(void *ctx, const index_entry *e);

/* Opens (creating) DIR/index.sqlite. */
int index_open(const char *dir, index_db **out);
void index_close(index_db *ix);

/* Inserts or replaces the row of (store, e->path). */
int index_put(index_db *ix, const char *store, const index_entry *e);
/* Calls cb with the row of (store, path): its result, or -ENOENT. */
int index_get(index_db *ix, const char *store, const char *path, index_cb cb, void *ctx);
/* Deletes the row of (store, path) (0 if there was none). */
int index_del(index_db *ix, const char *store, const char *path);
/* The rows whose folder is dir ("" for import/ itself), by name, read in
 * pages so a large folder never holds one long statement. */
int index_list(index_db *ix, const char *store, const char *dir, index_cb cb, void *ctx);
/* 1 when some row lies in dir, 0 when none. */
int index_has_children(index_db *ix, const char *store, const char *dir);
/* Moves every row below folder `from` under `to` (a renamed folder). */
int index_move_tree(index_db *ix, const char *store, const char *from, const char *to);
/* A row of store with SOP Instance UID sop, other than `except` (a path):
 * cb is called with it. Returns cb's result, or -ENOENT. */
int index_find_sop(index_db *ix, const char *store, const char *sop, const char *except,
                   index_cb cb, void *ctx);
/* Calls cb(ctx, name) for every store that has (or had) rows. */
int index_stores(index_db *ix, int (*cb)(void *ctx, const char *store), void *ctx);
/* Rows of store (for tests and status; a COUNT over the store's range). */
int64_t index_count(index_db *ix, const char *store);

#endif
