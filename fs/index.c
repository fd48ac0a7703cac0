/* index: remembered files of import/ in SQLite (see index.h).
 *
 * Schema (user_version 1):
 *   stores(id INTEGER PRIMARY KEY, name TEXT UNIQUE)   full store names, once
 *   files(store, parent, name, ...) WITHOUT ROWID, PRIMARY KEY(store, parent, name)
 *   files_sop ON files(store, sop)                      duplicate checks
 * A folder listing is a range of the primary key; rows are keyed by the
 * store's small integer id so a million rows do not repeat its long name.
 */
#include "index.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#define INDEX_PAGE 512
#define INDEX_PATH_MAX 8192

typedef struct store_id {
    char *name;
    int64_t id;
    struct store_id *next;
} store_id;

enum {
    Q_PUT,
    Q_GET,
    Q_DEL,
    Q_LIST,
    Q_HASCHILD,
    Q_MOVE,
    Q_SOP,
    Q_STORE_GET,
    Q_STORE_ADD,
    Q_STORES,
    Q_COUNT,
    Q_N
};

#define COLS                                                                                       \
    "parent, name, id, state, size, mode, uid, gid, atime_s, atime_ns, mtime_s, mtime_ns, "        \
    "ctime_s, ctime_ns, sop, study, series"

static const char *const queries[Q_N] = {
    [Q_PUT] = "INSERT OR REPLACE INTO files(store, " COLS ") VALUES "
              "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    [Q_GET] = "SELECT " COLS " FROM files WHERE store = ?1 AND parent = ?2 AND name = ?3",
    [Q_DEL] = "DELETE FROM files WHERE store = ?1 AND parent = ?2 AND name = ?3",
    [Q_LIST] = "SELECT " COLS " FROM files WHERE store = ?1 AND parent = ?2 AND name > ?3 "
               "ORDER BY name LIMIT ?4",
    [Q_HASCHILD] = "SELECT 1 FROM files WHERE store = ?1 AND parent = ?2 LIMIT 1",
    [Q_MOVE] = "UPDATE OR REPLACE files SET parent = ?3 || substr(parent, length(?2) + 1) "
               "WHERE store = ?1 AND (parent = ?2 OR (parent >= ?2 || '/' AND parent < ?2 || '0'))",
    /* INDEXED BY: with the NOT clause the planner would otherwise walk the
     * store's whole primary-key range (every remembered file per close). */
    [Q_SOP] = "SELECT " COLS " FROM files INDEXED BY files_sop WHERE store = ?1 AND sop = ?2 AND "
              "NOT (parent = ?3 AND name = ?4) LIMIT 1",
    [Q_STORE_GET] = "SELECT id FROM stores WHERE name = ?1",
    [Q_STORE_ADD] = "INSERT INTO stores(name) VALUES (?1)",
    [Q_STORES] = "SELECT name FROM stores ORDER BY id",
    [Q_COUNT] = "SELECT count(*) FROM files WHERE store = ?1",
};

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS stores(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);"
    "CREATE TABLE IF NOT EXISTS files(store INTEGER NOT NULL, parent TEXT NOT NULL, "
    " name TEXT NOT NULL, id TEXT NOT NULL, state INTEGER NOT NULL, size INTEGER NOT NULL,"
    " mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,"
    " atime_s INTEGER NOT NULL, atime_ns INTEGER NOT NULL, mtime_s INTEGER NOT NULL,"
    " mtime_ns INTEGER NOT NULL, ctime_s INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,"
    " sop TEXT NOT NULL, study TEXT NOT NULL, series TEXT NOT NULL,"
    " PRIMARY KEY(store, parent, name)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS files_sop ON files(store, sop);"
    "PRAGMA user_version = 1;";

struct index_db {
    sqlite3 *db;
    sqlite3_stmt *q[Q_N];
    store_id *stores;
    char path[INDEX_PATH_MAX]; /* entry.path of the row being passed to a callback */
};

static int fail(index_db *ix, const char *what)
{
    log_error("index: %s: %s (the index of remembered files is cache_dir/index.sqlite)", what,
              sqlite3_errmsg(ix->db));
    return -EIO;
}

/* A statement ready for new bindings. */
static sqlite3_stmt *stmt(index_db *ix, int q)
{
    sqlite3_stmt *s = ix->q[q];
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return s;
}

static void bind_text(sqlite3_stmt *s, int i, const char *t, int len)
{
    sqlite3_bind_text(s, i, t, len, SQLITE_TRANSIENT);
}

/* path -> (parent, name) as pointer + length pairs. */
static void split(const char *path, int *plen, const char **name)
{
    const char *slash = strrchr(path, '/');
    *plen = slash ? (int)(slash - path) : 0;
    *name = slash ? slash + 1 : path;
}

/* The id of store (0 when unknown and !create). */
static int store_lookup(index_db *ix, const char *store, bool create, int64_t *id)
{
    for (store_id *s = ix->stores; s; s = s->next)
        if (strcmp(s->name, store) == 0)
            return (int)(*id = s->id, 0);
    *id = 0;
    sqlite3_stmt *s = stmt(ix, Q_STORE_GET);
    bind_text(s, 1, store, -1);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *id = sqlite3_column_int64(s, 0);
    } else if (rc != SQLITE_DONE) {
        return fail(ix, "reading a store id");
    } else if (create) {
        s = stmt(ix, Q_STORE_ADD);
        bind_text(s, 1, store, -1);
        if (sqlite3_step(s) != SQLITE_DONE)
            return fail(ix, "adding a store");
        *id = sqlite3_last_insert_rowid(ix->db);
    }
    if (*id == 0)
        return 0;
    store_id *n = calloc(1, sizeof *n);
    if (n && (n->name = strdup(store))) {
        n->id = *id;
        n->next = ix->stores;
        ix->stores = n;
    } else {
        free(n);
    }
    return 0;
}

int index_open(const char *dir, index_db **out)
{
    *out = NULL;
    index_db *ix = calloc(1, sizeof *ix);
    char *file = util_asprintf("%s/index.sqlite", dir);
    if (!ix || !file) {
        free(ix);
        free(file);
        return -ENOMEM;
    }
    /* Created 0600 first: SQLite gives its -wal and -shm files the mode of
     * the database file (the cache holds users' file names). */
    int fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd >= 0) {
        if (fchmod(fd, 0600) < 0)
            log_warn("index: cannot make %s private: %s", file, strerror(errno));
        close(fd);
    }
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(file, &ix->db, flags, NULL) == SQLITE_OK ? 0 : -EIO;
    free(file);
    /* WAL + NORMAL: commits cost no fsync (see index.h); a small page
     * cache keeps the daemon's memory flat however large the index is. */
    if (rc == 0 && sqlite3_exec(ix->db,
                                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                                "PRAGMA cache_size=-4096; PRAGMA busy_timeout=5000;",
                                NULL, NULL, NULL) != SQLITE_OK)
        rc = -EIO;
    if (rc == 0 && sqlite3_exec(ix->db, schema, NULL, NULL, NULL) != SQLITE_OK)
        rc = -EIO;
    for (int i = 0; rc == 0 && i < Q_N; i++)
        if (sqlite3_prepare_v3(ix->db, queries[i], -1, SQLITE_PREPARE_PERSISTENT, &ix->q[i],
                               NULL) != SQLITE_OK)
            rc = -EIO;
    if (rc < 0) {
        log_error("index: cannot open %s/index.sqlite: %s; check that the cache directory is "
                  "writable and the file is not damaged (move it away to start afresh)",
                  dir, ix->db ? sqlite3_errmsg(ix->db) : "out of memory");
        index_close(ix);
        return rc;
    }
    *out = ix;
    return 0;
}

void index_close(index_db *ix)
{
    if (!ix)
        return;
    for (int i = 0; i < Q_N; i++)
        sqlite3_finalize(ix->q[i]);
    sqlite3_close(ix->db);
    for (store_id *s = ix->stores, *nx; s; s = nx) {
        nx = s->next;
        free(s->name);
        free(s);
    }
    free(ix);
}

int index_put(index_db *ix, const char *store, const index_entry *e)
{
    int64_t sid;
    int rc = store_lookup(ix, store, true, &sid);
    if (rc < 0)
        return rc;
    int plen;
    const char *name;
    split(e->path, &plen, &name);
    sqlite3_stmt *s = stmt(ix, Q_PUT);
    sqlite3_bind_int64(s, 1, sid);
    bind_text(s, 2, e->path, plen);
    bind_text(s, 3, name, -1);
    bind_text(s, 4, e->id, -1);
    sqlite3_bind_int(s, 5, e->state);
    sqlite3_bind_int64(s, 6, (int64_t)e->size);
    sqlite3_bind_int64(s, 7, e->mode);
    sqlite3_bind_int64(s, 8, e->uid);
    sqlite3_bind_int64(s, 9, e->gid);
    sqlite3_bind_int64(s, 10, e->atime.tv_sec);
    sqlite3_bind_int64(s, 11, e->atime.tv_nsec);
    sqlite3_bind_int64(s, 12, e->mtime.tv_sec);
    sqlite3_bind_int64(s, 13, e->mtime.tv_nsec);
    sqlite3_bind_int64(s, 14, e->ctime.tv_sec);
    sqlite3_bind_int64(s, 15, e->ctime.tv_nsec);
    bind_text(s, 16, e->sop, -1);
    bind_text(s, 17, e->study, -1);
    bind_text(s, 18, e->series, -1);
    return sqlite3_step(s) == SQLITE_DONE ? 0 : fail(ix, "recording a remembered file");
}

static const char *col(sqlite3_stmt *s, int i)
{
    const char *t = (const char *)sqlite3_column_text(s, i);
    return t ? t : "";
}

static struct timespec col_ts(sqlite3_stmt *s, int i)
{
    struct timespec ts = {sqlite3_column_int64(s, i), sqlite3_column_int64(s, i + 1)};
    return ts;
}

/* The current row of s (columns COLS) as an entry. */
static void row(index_db *ix, sqlite3_stmt *s, index_entry *e)
{
    const char *parent = col(s, 0);
    e->name = col(s, 1);
    snprintf(ix->path, sizeof ix->path, "%s%s%s", parent, *parent ? "/" : "", e->name);
    e->path = ix->path;
    e->id = col(s, 2);
    e->state = sqlite3_column_int(s, 3);
    e->size = (uint64_t)sqlite3_column_int64(s, 4);
    e->mode = (unsigned)sqlite3_column_int64(s, 5);
    e->uid = (unsigned)sqlite3_column_int64(s, 6);
    e->gid = (unsigned)sqlite3_column_int64(s, 7);
    e->atime = col_ts(s, 8);
    e->mtime = col_ts(s, 10);
    e->ctime = col_ts(s, 12);
    e->sop = col(s, 14);
    e->study = col(s, 15);
    e->series = col(s, 16);
}

/* Steps a single-row query: cb's result, -ENOENT or -EIO. */
static int one_row(index_db *ix, sqlite3_stmt *s, index_cb cb, void *ctx, const char *what)
{
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE)
        return -ENOENT;
    if (rc != SQLITE_ROW)
        return fail(ix, what);
    index_entry e;
    row(ix, s, &e);
    rc = cb(ctx, &e);
    sqlite3_reset(s);
    return rc;
}

/* Statement q with store's id bound at 1 (*out): 1, 0 for a store the
 * index does not know (nothing to find), or a negative errno. */
static int store_stmt(index_db *ix, const char *store, int q, sqlite3_stmt **out)
{
    int64_t sid;
    int rc = store_lookup(ix, store, false, &sid);
    if (rc < 0 || sid == 0)
        return rc;
    *out = stmt(ix, q);
    sqlite3_bind_int64(*out, 1, sid);
    return 1;
}

/* Binds (store id, parent, name) of path at 1..3; 0, or -ENOENT for an
 * unknown store. */
static int bind_key(index_db *ix, sqlite3_stmt *s, const char *store, const char *path)
{
    int64_t sid;
    int rc = store_lookup(ix, store, false, &sid);
    if (rc < 0)
        return rc;
    if (sid == 0)
        return -ENOENT;
    int plen;
    const char *name;
    split(path, &plen, &name);
    sqlite3_bind_int64(s, 1, sid);
    bind_text(s, 2, path, plen);
    bind_text(s, 3, name, -1);
    return 0;
}

int index_get(index_db *ix, const char *store, const char *path, index_cb cb, void *ctx)
{
    sqlite3_stmt *s = stmt(ix, Q_GET);
    int rc = bind_key(ix, s, store, path);
    return rc < 0 ? rc : one_row(ix, s, cb, ctx, "looking up a remembered file");
}

int index_del(index_db *ix, const char *store, const char *path)
{
    sqlite3_stmt *s = stmt(ix, Q_DEL);
    int rc = bind_key(ix, s, store, path);
    if (rc < 0)
        return rc == -ENOENT ? 0 : rc;
    return sqlite3_step(s) == SQLITE_DONE ? 0 : fail(ix, "forgetting a remembered file");
}

int index_list(index_db *ix, const char *store, const char *dir, index_cb cb, void *ctx)
{
    int rc;
    char after[1024] = ""; /* names are at most 255 bytes */
    for (;;) {
        sqlite3_stmt *s = NULL;
        if ((rc = store_stmt(ix, store, Q_LIST, &s)) <= 0)
            return rc;
        bind_text(s, 2, dir, -1);
        bind_text(s, 3, after, -1);
        sqlite3_bind_int(s, 4, INDEX_PAGE);
        int n = 0;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
            index_entry e;
            row(ix, s, &e);
            snprintf(after, sizeof after, "%s", e.name);
            n++;
            if ((rc = cb(ctx, &e)) != 0) {
                sqlite3_reset(s);
                return rc;
            }
        }
        sqlite3_reset(s);
        if (rc != SQLITE_DONE)
            return fail(ix, "listing a folder");
        if (n < INDEX_PAGE)
            return 0;
    }
}

int index_has_children(index_db *ix, const char *store, const char *dir)
{
    sqlite3_stmt *s = NULL;
    int rc = store_stmt(ix, store, Q_HASCHILD, &s);
    if (rc <= 0)
        return rc;
    bind_text(s, 2, dir, -1);
    rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : fail(ix, "checking a folder");
}

int index_move_tree(index_db *ix, const char *store, const char *from, const char *to)
{
    sqlite3_stmt *s = NULL;
    int rc = store_stmt(ix, store, Q_MOVE, &s);
    if (rc <= 0)
        return rc;
    bind_text(s, 2, from, -1);
    bind_text(s, 3, to, -1);
    return sqlite3_step(s) == SQLITE_DONE ? 0 : fail(ix, "moving a folder");
}

int index_find_sop(index_db *ix, const char *store, const char *sop, const char *except,
                   index_cb cb, void *ctx)
{
    sqlite3_stmt *s = stmt(ix, Q_SOP);
    int rc = bind_key(ix, s, store, except);
    if (rc < 0)
        return rc;
    /* bind_key put (store, parent, name) at 1..3: shift to the query's order. */
    int plen;
    const char *name;
    split(except, &plen, &name);
    bind_text(s, 2, sop, -1);
    bind_text(s, 3, except, plen);
    bind_text(s, 4, name, -1);
    return one_row(ix, s, cb, ctx, "looking up a SOP Instance UID");
}

int index_stores(index_db *ix, int (*cb)(void *ctx, const char *store), void *ctx)
{
    sqlite3_stmt *s = stmt(ix, Q_STORES);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if ((rc = cb(ctx, col(s, 0))) != 0) {
            sqlite3_reset(s);
            return rc;
        }
    }
    sqlite3_reset(s);
    return rc == SQLITE_DONE ? 0 : fail(ix, "listing stores");
}

int64_t index_count(index_db *ix, const char *store)
{
    sqlite3_stmt *s = NULL;
    int rc = store_stmt(ix, store, Q_COUNT, &s);
    if (rc <= 0)
        return rc;
    int64_t n = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : -1;
    sqlite3_reset(s);
    return n < 0 ? fail(ix, "counting rows") : n;
}
