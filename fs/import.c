/* import: the STORE/import/ namespace, spooling and the journal records.
 *
 * Guarantees (also in the README):
 *
 * - Spool. Every file created under import/ gets a spool file
 *   cache_dir/spool/ID (0600, directory 0700), ID being 128 random bits in
 *   hex: the user's name (spaces, UTF-8, newlines, 255 bytes) is never used
 *   on the local disk or in Cloud Storage. Writes at any offset, truncate and
 *   reads go straight to it. ENOSPC/EDQUOT/EIO from the disk are returned to
 *   write/flush/fsync as they are.
 * - flush validates, release decides. FUSE sends FLUSH at EVERY close(),
 *   also of a dup'ed descriptor: `cat a.dcm > import/a.dcm` in a shell does
 *   open(O_CREAT|O_TRUNC), dup2 to fd 1, close(original) -> FLUSH of an
 *   empty file, then the writes, then close(1) -> FLUSH again; RELEASE comes
 *   once, after the last close. So a flush validates the current content
 *   when it changed since the last validation (or was never validated): the
 *   spool file is checked to be DICOM Part 10
 *   (dicom_parse_fd). A file that is not (no preamble/"DICM", truncated,
 *   zero-length) fails that close() with EINVAL (logged at debug level
 *   only) but KEEPS its spool entry, so writes through another descriptor
 *   still work and their flush validates again. A valid file is recorded in
 *   the journal as ACCEPTED (display path, size, SOP Instance UID, spool id)
 *   before close() returns 0: a successful close() means the data and the
 *   record are in the cache filesystem, safe from a crash or kill of dicomfs
 *   (the kernel holds them). Power-loss durability is a local disk's: the
 *   journal is fsync'ed by a flusher thread within 50 ms, the data
 *   at fsync() (which then also syncs the acceptance at close()) or, with
 *   -o sync_close, at every close() (fdatasync of the spool file, its
 *   directory and the journal: about 0.3 of local-disk speed here).
 *   Flushes with nothing written since the last validation return its
 *   result again. The release of the last writable descriptor of a file
 *   whose last validation failed drops it (rejected: gone from import/,
 *   spool file removed) and logs "import: STORE/PATH: not a DICOM Part-10
 *   file: WHY; ...". Hence `cp empty import/` and `cp notdicom import/`
 *   still fail with EINVAL at close(), and the name goes a moment later
 *   (RELEASE is asynchronous to close()). A file rewritten (or truncated)
 *   before its batch is committed is re-validated at its next flush and
 *   uploaded again; if that validation fails the file is withdrawn at the
 *   release.
 * - Names. The staged object name is fixed when the file is accepted, or
 *   earlier when its upload starts streaming while it is written (see
 *   uploader.c): gs://BUCKET/PREFIX/batches/BATCH/ID.dcm. rename() of a
 *   pending file only changes its display path (rsync's ".name.XXXXXX" ->
 *   "name" costs no remote call). rename() onto a pending file replaces it: the replaced file
 *   is withdrawn if not uploaded yet, its staged object deleted before the
 *   batch is committed if it was, and if its batch import already started it
 *   stays imported (logged). Directories are local and journaled.
 *   utimens/chmod are remembered so `rsync -a` sees matching size and mtime.
 * - unlink() of a pending file withdraws it (staged object deleted if
 *   uploaded); once its batch import has started, EBUSY (logged). unlink() of
 *   a failed file clears the failure.
 * - Files stay listed after their import (remembered, with the size, mtime
 *   and mode they were given) until unlinked; unlink of a remembered file
 *   forgets it locally. Reading a file whose spool space was released
 *   fetches a private copy (fetch_copy). A whole rewrite (O_TRUNC) of a
 *   remembered file makes it a new file (rewrite_released).
 *   Failed files stay listed, with the reason in STORE/status.
 * - Bounded cache: cache_used counts spool bytes (node spool_bytes);
 *   cache_reserve makes a growing write wait while cache_max is reached and
 *   in-flight work can free room; ENOSPC from the disk waits the same way
 *   (cache_wait_freed) and is returned only when nothing can free space.
 * - Present: a file whose SOP Instance UID another accepted, uploaded,
 *   imported or present file of the store has (SOP table) is present at its
 *   close(); the uploader checks the store itself before uploading.
 *   Directories stay until removed with rmdir.
 * - Uploads, batches, commits and restarts: see uploader.c. Writes,
 *   truncates, acceptance, rejection, unlink and rename tell the streaming
 *   side (up_stream_wrote/_accepted/_drop) so that a stream never finishes
 *   with content other than what close() accepted.
 * - Memory: file data is never held in memory; per file only a small
 *   struct (and the same metadata in the journal's map).
 */
#include "import_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#define IMP_WRITEBACK_STEP (8u << 20)

typedef struct handle {
    node *n;
    int fd;
    bool writable;
    bool fsynced; /* fsync() was called: its close() syncs the acceptance too */
    int last_rc;  /* result of this handle's last flush (kept once the node is gone) */
} handle;

/* ---------------------------------------------------------------- names */

static uint64_t name_hash(const store_st *st, const char *path)
{
    return util_fnv1a_str(UTIL_FNV1A_INIT ^ (uint64_t)(uintptr_t)st, path);
}

static node *name_find(import_mgr *m, const store_st *st, const char *path)
{
    for (node *n = m->table[name_hash(st, path) % m->nbuckets]; n; n = n->hnext)
        if (n->st == st && strcmp(n->path, path) == 0)
            return n;
    return NULL;
}

/* Every listed node, active then remembered (namespace walks: readdir,
 * rename and rmdir of directories, the name table). */
static node *all_first(import_mgr *m)
{
    return m->head ? m->head : m->rhead;
}

static node *all_next(import_mgr *m, const node *n)
{
    return n->next ? n->next : n->settled ? NULL : m->rhead;
}

static void name_grow(import_mgr *m)
{
    size_t nb = m->nbuckets * 2;
    node **t = calloc(nb, sizeof *t);
    if (!t)
        return;
    for (node *n = all_first(m); n; n = all_next(m, n)) {
        if (!n->visible)
            continue;
        size_t i = name_hash(n->st, n->path) % nb;
        n->hnext = t[i];
        t[i] = n;
    }
    free(m->table);
    m->table = t;
    m->nbuckets = nb;
}

static void name_insert(import_mgr *m, node *n)
{
    size_t i = name_hash(n->st, n->path) % m->nbuckets;
    n->hnext = m->table[i];
    m->table[i] = n;
    n->visible = true;
    if (++m->nvisible > m->nbuckets)
        name_grow(m);
}

static void name_remove(import_mgr *m, node *n)
{
    if (!n->visible)
        return;
    node **pp = &m->table[name_hash(n->st, n->path) % m->nbuckets];
    for (; *pp; pp = &(*pp)->hnext) {
        if (*pp == n) {
            *pp = n->hnext;
            break;
        }
    }
    n->hnext = NULL;
    n->visible = false;
    m->nvisible--;
}

/* n joins (or leaves) the list its settled flag names. */
static void list_add(import_mgr *m, node *n)
{
    node **head = n->settled ? &m->rhead : &m->head;
    node **tail = n->settled ? &m->rtail : &m->tail;
    n->prev = *tail;
    n->next = NULL;
    if (*tail)
        (*tail)->next = n;
    else
        *head = n;
    *tail = n;
    n->listed = true;
}

static void list_remove(import_mgr *m, node *n)
{
    if (!n->listed)
        return;
    node **head = n->settled ? &m->rhead : &m->head;
    node **tail = n->settled ? &m->rtail : &m->tail;
    if (n->prev)
        n->prev->next = n->next;
    else
        *head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        *tail = n->prev;
    n->prev = n->next = NULL;
    n->listed = false;
}

void imp_node_settle(import_mgr *m, node *n)
{
    if (!n->listed || n->settled || n->is_dir || !n->visible ||
        (n->state != ST_IMPORTED && n->state != ST_PRESENT) || n->staged || n->has_spool ||
        n->releasing)
        return;
    list_remove(m, n);
    n->settled = true;
    list_add(m, n);
}

static void node_unsettle(import_mgr *m, node *n)
{
    if (!n->settled)
        return;
    bool listed = n->listed;
    list_remove(m, n);
    n->settled = false;
    if (listed)
        list_add(m, n);
}

/* "a/b/c" -> "a/b"; "c" -> "" (written into buf). */
static void parent_of(const char *path, char *buf, size_t buflen)
{
    const char *slash = strrchr(path, '/');
    size_t len = slash ? (size_t)(slash - path) : 0;
    if (len >= buflen)
        len = buflen - 1;
    memcpy(buf, path, len);
    buf[len] = '\0';
}

static bool is_child_of(const char *path, const char *dir)
{
    if (!*dir)
        return strchr(path, '/') == NULL;
    size_t dl = strlen(dir);
    return strncmp(path, dir, dl) == 0 && path[dl] == '/' && !strchr(path + dl + 1, '/');
}

static bool is_below(const char *path, const char *dir)
{
    size_t dl = strlen(dir);
    return strncmp(path, dir, dl) == 0 && path[dl] == '/';
}

/* ---------------------------------------------------------------- SOP table */

#define SOP_BUCKETS (1u << 16)

static size_t sop_bucket(const store_st *st, const char *sop)
{
    return (size_t)(name_hash(st, sop) % SOP_BUCKETS);
}

static void sop_remove(import_mgr *m, node *n)
{
    if (!n->in_sops)
        return;
    for (node **pp = &m->sops[sop_bucket(n->st, n->sop)]; *pp; pp = &(*pp)->snext)
        if (*pp == n) {
            *pp = n->snext;
            break;
        }
    n->snext = NULL;
    n->in_sops = false;
}

/* After n->sop was set (a file accepted, or loaded). */
static void sop_insert(import_mgr *m, node *n)
{
    sop_remove(m, n);
    if (!m->sops || !n->sop[0])
        return;
    size_t i = sop_bucket(n->st, n->sop);
    n->snext = m->sops[i];
    m->sops[i] = n;
    n->in_sops = true;
}

/* Another file of n's store with n's instance that is (or will be) in the
 * store: accepted, uploaded, imported or present. */
static node *sop_other(import_mgr *m, const node *n)
{
    if (!m->sops || !n->sop[0])
        return NULL;
    for (node *x = m->sops[sop_bucket(n->st, n->sop)]; x; x = x->snext)
        if (x != n && x->st == n->st && strcmp(x->sop, n->sop) == 0 &&
            (x->state == ST_ACCEPTED || x->state == ST_UPLOADED || x->state == ST_IMPORTED ||
             x->state == ST_PRESENT))
            return x;
    return NULL;
}

/* ---------------------------------------------------------------- stores, batches */

static store_st *store_find(import_mgr *m, const char *name)
{
    for (store_st *s = m->stores; s; s = s->next)
        if (strcmp(s->name, name) == 0)
            return s;
    return NULL;
}

static store_st *store_get(import_mgr *m, const char *name)
{
    store_st *s = store_find(m, name);
    if (s)
        return s;
    s = calloc(1, sizeof *s);
    if (!s || !(s->name = strdup(name))) {
        free(s);
        return NULL;
    }
    s->next = m->stores;
    m->stores = s;
    return s;
}

static batch *batch_find(import_mgr *m, const char *id)
{
    for (batch *b = m->batches; b; b = b->next)
        if (strcmp(b->id, id) == 0)
            return b;
    return NULL;
}

static batch *batch_new(import_mgr *m, store_st *st, const char *id)
{
    batch *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    if (id) {
        snprintf(b->id, sizeof b->id, "%s", id);
    } else {
        unsigned char r[4] = {0};
        if (getrandom(r, sizeof r, 0) < 0)
            memset(r, 0, sizeof r);
        char ts[32];
        util_utc_basic(ts, sizeof ts, time(NULL), 0, 0);
        snprintf(b->id, sizeof b->id, "%s-%02x%02x%02x%02x", ts, r[0], r[1], r[2], r[3]);
    }
    b->st = st;
    b->state = B_OPEN;
    b->backoff = 0.5;
    /* Appended: the coordinator starts sealed batches oldest first. */
    batch **pp = &m->batches;
    while (*pp)
        pp = &(*pp)->next;
    *pp = b;
    return b;
}

void imp_batch_free(import_mgr *m, batch *b)
{
    for (batch **pp = &m->batches; *pp; pp = &(*pp)->next) {
        if (*pp == b) {
            *pp = b->next;
            break;
        }
    }
    if (b->st && b->st->open == b)
        b->st->open = NULL;
    free(b->op);
    free(b->op_error);
    free(b);
}

char *imp_object_name(import_mgr *m, const node *n)
{
    return util_asprintf("%s%sbatches/%s/%s.dcm", m->prefix, *m->prefix ? "/" : "", n->bid, n->id);
}

void imp_spool_account(import_mgr *m, node *n, uint64_t bytes)
{
    m->cache_used = m->cache_used - n->spool_bytes + bytes;
    if (bytes < n->spool_bytes)
        pthread_cond_broadcast(&m->space_cond);
    n->spool_bytes = bytes;
}

void imp_spool_remove(import_mgr *m, node *n)
{
    if (!n->has_spool)
        return;
    spool_remove(m->sp, n->id);
    n->has_spool = false;
    imp_spool_account(m, n, 0);
}

/* ---------------------------------------------------------------- journal records */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_field(sbuf *b, const char *s)
{
    size_t l = strlen(s) + 1;
    if (b->len + l > b->cap) {
        size_t nc = (b->cap + l) * 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->len, s, l);
    b->len += l;
}

static void sb_num(sbuf *b, int64_t v)
{
    char t[32];
    snprintf(t, sizeof t, "%" PRId64, v);
    sb_field(b, t);
}

/* Splits a record into at most max NUL-terminated fields. */
static int split_fields(const char *val, size_t len, const char **f, int max)
{
    int n = 0;
    size_t i = 0;
    while (i < len && n < max) {
        const char *end = memchr(val + i, '\0', len - i);
        if (!end)
            break;
        f[n++] = val + i;
        i = (size_t)(end - val) + 1;
    }
    return n;
}

int imp_node_journal(import_mgr *m, node *n)
{
    if (!n->is_dir && n->state == ST_NEW)
        return 0; /* not accepted yet: nothing to remember */
    sbuf b = {0};
    char key[SPOOL_ID_LEN + 3];
    snprintf(key, sizeof key, "%c/%s", n->is_dir ? 'd' : 'e', n->id);
    sb_field(&b, n->st->name);
    sb_field(&b, n->path ? n->path : "");
    if (n->is_dir) {
        sb_num(&b, n->mode);
        sb_num(&b, n->uid);
        sb_num(&b, n->gid);
        sb_num(&b, n->mtime.tv_sec);
        sb_num(&b, n->mtime.tv_nsec);
    } else {
        sb_num(&b, n->state);
        sb_num(&b, (int64_t)n->size);
        sb_num(&b, n->mode);
        sb_num(&b, n->uid);
        sb_num(&b, n->gid);
        sb_num(&b, n->mtime.tv_sec);
        sb_num(&b, n->mtime.tv_nsec);
        sb_num(&b, n->atime.tv_sec);
        sb_num(&b, n->atime.tv_nsec);
        sb_field(&b, n->sop);
        sb_field(&b, n->bid);
        sb_num(&b, n->staged);
        sb_field(&b, n->reason ? n->reason : "");
        sb_num(&b, n->visible);
        sb_field(&b, n->study);
        sb_field(&b, n->series);
        sb_num(&b, n->has_spool);
    }
    /* Accepting a file may fail on a full disk (close() gets ENOSPC); later
     * states record progress of accepted work and may use the reserve. */
    bool progress = n->is_dir ? false : n->state != ST_ACCEPTED && n->state != ST_NEW;
    int rc = b.oom      ? -ENOMEM
             : progress ? journal_put_progress(m->j, key, b.p, b.len, false)
                        : journal_put(m->j, key, b.p, b.len, false);
    if (rc < 0)
        log_error("import: %s/%s: cannot record in the journal: %s", n->st->name,
                  n->path ? n->path : "", strerror(-rc));
    free(b.p);
    return rc;
}

void imp_batch_journal(import_mgr *m, batch *b)
{
    sbuf s = {0};
    char key[64];
    snprintf(key, sizeof key, "b/%s", b->id);
    sb_field(&s, b->st->name);
    sb_num(&s, b->state);
    sb_field(&s, b->op ? b->op : "");
    int rc = s.oom ? -ENOMEM : journal_put_progress(m->j, key, s.p, s.len, false);
    if (rc < 0)
        log_error("import: batch %s: cannot record in the journal: %s", b->id, strerror(-rc));
    free(s.p);
}

static void node_journal_del(import_mgr *m, node *n)
{
    char key[SPOOL_ID_LEN + 3];
    snprintf(key, sizeof key, "%c/%s", n->is_dir ? 'd' : 'e', n->id);
    journal_del(m->j, key, false);
}

/* ---------------------------------------------------------------- nodes */

static void node_free(node *n)
{
    free(n->path);
    free(n->reason);
    free(n->why);
    free(n);
}

void imp_node_maybe_free(import_mgr *m, node *n)
{
    if (!n->listed && !n->visible && n->refs == 0 && !n->busy && !n->queued && !n->stream) {
        sop_remove(m, n);
        node_free(n);
    }
}

/* The state machine of a file, in one place: every change of n->state
 * after loading goes through here (lock held), with its bookkeeping
 * (batch membership, counters, journal record, follow-up work).
 *
 *   (created) NEW -> ACCEPTED   validate(): close() accepted the content
 *   ACCEPTED -> UPLOADED         upload or stream verified (bytes: its size)
 *   ACCEPTED -> PRESENT          the store holds the instance, or another
 *                                file of the store has it (imp_node_present)
 *   UPLOADED -> IMPORTED         its batch's import succeeded (or verify()
 *                                found the instance)
 *   any -> FAILED                imp_node_fail (the reason is set there)
 *   any -> WITHDRAWN             unlinked, replaced, or failed without a name
 *   IMPORTED/PRESENT/FAILED -> NEW  rewritten whole (rewrite_released)
 *
 * Returns the journal's result (what close() reports for ACCEPTED). */
int imp_node_to(import_mgr *m, node *n, int to, uint64_t bytes)
{
    node_unsettle(m, n);
    switch (to) {
    case ST_NEW:
        n->b = NULL;
        n->bid[0] = '\0';
        break;
    case ST_ACCEPTED:
        n->retry_at = 0;
        break;
    case ST_UPLOADED:
        n->backoff = 1;
        n->st->bytes_uploaded += bytes;
        break;
    case ST_IMPORTED:
        n->b = NULL;
        n->st->imported++;
        break;
    case ST_PRESENT:
        up_stream_drop(m, n, "present in the store");
        n->b = NULL;
        n->retry_at = 0;
        n->st->present++;
        break;
    case ST_FAILED:
    case ST_WITHDRAWN:
        up_stream_drop(m, n, to == ST_FAILED ? "failed" : "removed");
        break;
    }
    n->state = to;
    int rc = imp_node_journal(m, n);
    if (to != ST_NEW && to != ST_ACCEPTED)
        up_enqueue(m, n); /* spool release, staged object deletion; a no-op if none */
    imp_node_settle(m, n);
    return rc;
}

void imp_node_present(import_mgr *m, node *n, const char *why)
{
    log_info("import: %s/%s: present: %s; not uploaded (the store keeps its copy)", n->st->name,
             n->path, why);
    imp_node_to(m, n, ST_PRESENT, 0);
}

void imp_node_unlist(import_mgr *m, node *n)
{
    up_stream_drop(m, n, "removed");
    name_remove(m, n);
    list_remove(m, n);
    node_journal_del(m, n);
    sop_remove(m, n);
    n->b = NULL;
    imp_node_maybe_free(m, n);
}

static void set_reason(node *n, const char *msg)
{
    free(n->reason);
    n->reason = strdup(msg);
}

void imp_node_fail(import_mgr *m, node *n, const char *fmt, ...)
{
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    up_stream_drop(m, n, "failed");
    n->b = NULL;
    if (!n->visible) {
        /* Replaced by a rename while importing: no name left to unlink it
         * by, so it is not kept as a failure (the log line stays). */
        log_error("import: %s/%s (since replaced): failed: %s", n->st->name, n->path, msg);
        if (!n->releasing)
            imp_spool_remove(m, n);
        imp_node_to(m, n, ST_WITHDRAWN, 0);
        return;
    }
    set_reason(n, msg);
    log_error("import: %s/%s: failed: %s", n->st->name, n->path, msg);
    imp_node_to(m, n, ST_FAILED, 0); /* a staged object is deleted */
}

static node *node_new(import_mgr *m, store_st *st, const char *path, bool is_dir, mode_t mode)
{
    node *n = calloc(1, sizeof *n);
    if (!n || !(n->path = strdup(path))) {
        free(n);
        return NULL;
    }
    n->st = st;
    n->is_dir = is_dir;
    n->mode = mode & 07777;
    n->uid = m->cfg.uid;
    n->gid = m->cfg.gid;
    clock_gettime(CLOCK_REALTIME, &n->mtime);
    n->atime = n->ctime = n->mtime;
    n->backoff = 1;
    return n;
}

/* Whether the file's import was started: it can no longer be changed. */
static bool node_importing(const node *n)
{
    return n->state == ST_UPLOADED && n->b && n->b->state >= B_SEALED;
}

/* Looks up a visible node; store must already be known. */
static node *lookup(import_mgr *m, const char *store, const char *rel)
{
    store_st *st = store_find(m, store);
    return st ? name_find(m, st, rel) : NULL;
}

/* The parent of rel must be import/ itself or a directory. */
static int check_parent(import_mgr *m, store_st *st, const char *rel)
{
    char parent[4096];
    if (!*rel || strlen(rel) >= sizeof parent)
        return -EINVAL;
    parent_of(rel, parent, sizeof parent);
    if (!*parent)
        return 0;
    node *p = name_find(m, st, parent);
    if (!p)
        return -ENOENT;
    return p->is_dir ? 0 : -ENOTDIR;
}

/* Takes a file out of the namespace (unlink, replaced by rename, rejected).
 * Returns -EBUSY when its batch import already started and busy_ok is false. */
static int node_withdraw(import_mgr *m, node *n, bool busy_ok, const char *why)
{
    up_stream_drop(m, n, why);
    if (node_importing(n)) {
        if (!busy_ok) {
            log_error("import: %s/%s: cannot %s: its batch import already started", n->st->name,
                      n->path, why);
            return -EBUSY;
        }
        log_warn("import: %s/%s: %s while its batch import runs: that copy stays imported",
                 n->st->name, n->path, why);
        name_remove(m, n);
        imp_node_journal(m, n);
        return 0;
    }
    if (n->state == ST_IMPORTED || n->state == ST_PRESENT) {
        /* Remembered: forgotten locally, nothing remote is deleted (the
         * workers still finish its cleanup if any is due, then unlist it). */
        name_remove(m, n);
        if (n->staged || n->has_spool || n->busy || n->releasing)
            imp_node_journal(m, n);
        else
            imp_node_unlist(m, n);
        return 0;
    }
    name_remove(m, n);
    if (!n->releasing)
        imp_spool_remove(m, n);
    if (n->staged || n->busy) {
        /* Uploaded or being uploaded: the staged object must go before the
         * batch is committed (the batch waits for WITHDRAWN files). */
        imp_node_to(m, n, ST_WITHDRAWN, 0);
        return 0;
    }
    imp_node_unlist(m, n);
    return 0;
}

static void fill_stat(import_mgr *m, const node *n, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_mode = (n->is_dir ? S_IFDIR : S_IFREG) | n->mode;
    st->st_nlink = n->is_dir ? 2 : 1;
    st->st_uid = n->uid;
    st->st_gid = n->gid;
    st->st_size = n->is_dir ? 0 : (off_t)n->size;
    st->st_blocks = (blkcnt_t)((n->size + 511) / 512);
    st->st_blksize = 1 << 20; /* cp and friends then write in 1 MiB requests (max_write) */
    st->st_atim = n->atime;
    st->st_mtim = n->mtime;
    st->st_ctim = n->ctime;
    (void)m;
}

/* ---------------------------------------------------------------- load */

static int64_t num(const char *s)
{
    return strtoll(s, NULL, 10);
}

typedef struct load_ctx {
    import_mgr *m;
    int rc;
} load_ctx;

static int load_batch(void *vctx, const char *key, const void *val, size_t len)
{
    load_ctx *c = vctx;
    const char *f[3];
    if (split_fields(val, len, f, 3) < 3) {
        log_error("import: journal record %s is malformed, ignored", key);
        return 0;
    }
    store_st *st = store_get(c->m, f[0]);
    batch *b = st ? batch_new(c->m, st, key + 2) : NULL;
    if (!b)
        return c->rc = -ENOMEM;
    b->state = (int)num(f[1]);
    if (*f[2])
        b->op = strdup(f[2]);
    if (b->state == B_IMPORTING && !b->op)
        b->state = B_SEALED; /* start it again: import ignores duplicates */
    if (b->state == B_OPEN)
        st->open = b; /* the last one takes new files; the others seal once uploaded */
    b->last_accept = util_now_s();
    return 0;
}

static int load_node(void *vctx, const char *key, const void *val, size_t len)
{
    load_ctx *c = vctx;
    import_mgr *m = c->m;
    bool dir = key[0] == 'd';
    const char *f[19];
    int nf = split_fields(val, len, f, 19);
    if ((dir && nf < 7) || (!dir && nf < 16) || !spool_id_valid(key + 2)) {
        log_error("import: journal record %s is malformed, ignored", key);
        return 0;
    }
    store_st *st = store_get(m, f[0]);
    node *n = st ? node_new(m, st, f[1], dir, 0) : NULL;
    if (!n)
        return c->rc = -ENOMEM;
    snprintf(n->id, sizeof n->id, "%s", key + 2);
    if (dir) {
        n->mode = (mode_t)num(f[2]) & 07777;
        n->uid = (uid_t)num(f[3]);
        n->gid = (gid_t)num(f[4]);
        n->mtime.tv_sec = num(f[5]);
        n->mtime.tv_nsec = num(f[6]);
        n->ctime = n->atime = n->mtime;
        list_add(m, n);
        name_insert(m, n);
        return 0;
    }
    n->state = (int)num(f[2]);
    n->size = (uint64_t)num(f[3]);
    n->mode = (mode_t)num(f[4]) & 07777;
    n->uid = (uid_t)num(f[5]);
    n->gid = (gid_t)num(f[6]);
    n->mtime.tv_sec = num(f[7]);
    n->mtime.tv_nsec = num(f[8]);
    n->atime.tv_sec = num(f[9]);
    n->atime.tv_nsec = num(f[10]);
    n->ctime = n->mtime;
    snprintf(n->sop, sizeof n->sop, "%s", f[11]);
    snprintf(n->bid, sizeof n->bid, "%s", f[12]);
    n->staged = num(f[13]) != 0;
    if (*f[14])
        n->reason = strdup(f[14]);
    bool visible = num(f[15]) != 0;
    if (nf >= 19) {
        snprintf(n->study, sizeof n->study, "%s", f[16]);
        snprintf(n->series, sizeof n->series, "%s", f[17]);
        n->has_spool = num(f[18]) != 0;
    } else { /* a record written before spool space was released early */
        n->has_spool = n->state != ST_IMPORTED && n->state != ST_WITHDRAWN;
    }
    if (n->has_spool) {
        n->spool_bytes = n->size;
        m->cache_used += n->size;
    }
    list_add(m, n);
    sop_insert(m, n);
    if (visible && n->state != ST_WITHDRAWN) {
        if (name_find(m, st, n->path)) {
            log_error("import: %s/%s: two journal entries for one name; keeping the first",
                      st->name, n->path);
        } else {
            name_insert(m, n);
        }
    }
    if (n->state == ST_ACCEPTED || n->state == ST_UPLOADED) {
        n->b = batch_find(m, n->bid);
        if (!n->b) {
            /* Its batch record is gone (should not happen): start a fresh
             * batch; an UPLOADED file must then be uploaded again. */
            n->state = ST_ACCEPTED;
        }
    }
    imp_node_settle(m, n);
    return 0;
}

/* Spool files to keep at startup: a sorted array of ids, so that checking
 * every file of a large spool stays O(n log n). */
typedef struct keep_set {
    const char **ids;
    size_t n;
} keep_set;

static int cmp_id(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool spool_keep(void *ctx, const char *id)
{
    keep_set *k = ctx;
    return k->n && bsearch(&id, k->ids, k->n, sizeof *k->ids, cmp_id) != NULL;
}

static void gc_spool(import_mgr *m)
{
    size_t n = 0;
    for (node *x = m->head; x; x = x->next)
        n++;
    keep_set k = {calloc(n ? n : 1, sizeof *k.ids), 0};
    if (!k.ids)
        return; /* keeping strays is harmless */
    for (node *x = m->head; x; x = x->next)
        if (!x->is_dir && x->has_spool)
            k.ids[k.n++] = x->id;
    qsort(k.ids, k.n, sizeof *k.ids, cmp_id);
    spool_gc(m->sp, spool_keep, &k);
    free(k.ids);
}

/* After loading: put every file where it continues. */
static void resume(import_mgr *m)
{
    for (node *n = m->head; n; n = n->next) {
        if (n->is_dir)
            continue;
        switch (n->state) {
        case ST_NEW:
            break;
        case ST_ACCEPTED:
            if (!n->has_spool || !spool_exists(m->sp, n->id)) {
                log_error("import: %s/%s: the spool file %s is missing from the cache: the "
                          "file cannot be uploaded",
                          n->st->name, n->path, n->id);
                imp_node_fail(m, n, "spool file lost from the cache directory");
                break;
            }
            if (!n->b)
                imp_assign_batch(m, n);
            up_enqueue(m, n);
            break;
        default: /* staged objects to delete, spool space to release */
            up_enqueue(m, n);
            break;
        }
    }
}

static int load_all(import_mgr *m)
{
    load_ctx c = {m, 0};
    journal_scan(m->j, "b/", load_batch, &c);
    if (c.rc == 0)
        journal_scan(m->j, "d/", load_node, &c);
    if (c.rc == 0)
        journal_scan(m->j, "e/", load_node, &c);
    if (c.rc < 0)
        return c.rc;
    gc_spool(m);
    resume(m);
    int n = 0;
    for (node *x = m->head; x; x = x->next)
        n += !x->is_dir;
    if (n)
        log_info("import: journal loaded: %d file(s) pending or failed", n);
    return 0;
}

/* ---------------------------------------------------------------- manager */

/* The smaller of 8 GiB and half the cache filesystem's free space now: a
 * copy through the mount then never fills the disk the cache lives on. */
static uint64_t default_cache_max(const char *dir)
{
    const uint64_t cap = 8ull << 30;
    struct statvfs sv;
    if (statvfs(dir, &sv) < 0)
        return cap;
    uint64_t half = (uint64_t)sv.f_bavail * sv.f_frsize / 2;
    uint64_t v = half < cap ? half : cap;
    return v < (1u << 20) ? (1u << 20) : v;
}

int import_mgr_new(const import_config *cfg, gcs_client *gcs, hc_client *hc, journal *j,
                   import_mgr **out)
{
    *out = NULL;
    if (!cfg || !cfg->cache_dir || !j)
        return -EINVAL;
    import_mgr *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->cfg = *cfg;
    m->cache_dir = strdup(cfg->cache_dir);
    m->bucket = strdup(cfg->staging_bucket ? cfg->staging_bucket : "");
    m->prefix = strdup(cfg->staging_prefix ? cfg->staging_prefix : "");
    /* Trailing slashes would make "PREFIX//batches". */
    if (m->prefix)
        for (size_t l = strlen(m->prefix); l && m->prefix[l - 1] == '/'; l--)
            m->prefix[l - 1] = '\0';
    m->cfg.cache_dir = m->cache_dir;
    m->cfg.staging_bucket = m->bucket;
    m->cfg.staging_prefix = m->prefix;
    if (m->cfg.uploads < 0)
        m->cfg.uploads = 0; /* adaptive */
    if (m->cfg.commit_delay_s < 0)
        m->cfg.commit_delay_s = 0;
    m->gcs = gcs;
    m->hc = hc;
    m->j = j;
    m->nbuckets = 1024;
    m->table = calloc(m->nbuckets, sizeof *m->table);
    m->sops = calloc(SOP_BUCKETS, sizeof *m->sops);
    m->present = present_new();
    pthread_cond_init(&m->present_cond, NULL);
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->work_cond, NULL);
    pthread_cond_init(&m->tick_cond, NULL);
    pthread_cond_init(&m->jflush_cond, NULL);
    pthread_cond_init(&m->space_cond, NULL);
    m->cache_max = cfg->cache_max ? cfg->cache_max : default_cache_max(cfg->cache_dir);
    int rc = (!m->cache_dir || !m->bucket || !m->prefix || !m->table || !m->sops || !m->present)
                 ? -ENOMEM
                 : 0;
    if (rc == 0 && (gcs || hc) && (!gcs || !hc || !*m->bucket)) {
        log_error("import: uploads need a staging bucket and both API clients");
        rc = -EINVAL;
    }
    if (rc == 0)
        rc = spool_open(m->cache_dir, &m->sp);
    if (rc == 0) {
        spool_set_eager_dir_sync(m->sp, m->cfg.sync_close);
        pthread_mutex_lock(&m->lock);
        rc = load_all(m);
        pthread_mutex_unlock(&m->lock);
    }
    if (rc == 0)
        rc = journal_sync(j);
    if (rc == 0 && gcs && hc)
        rc = up_start(m);
    if (rc < 0) {
        import_mgr_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void import_mgr_free(import_mgr *m)
{
    if (!m)
        return;
    up_stop(m);
    if (m->j)
        journal_sync(m->j);
    for (node *n = all_first(m), *nx; n; n = nx) {
        nx = all_next(m, n);
        node_free(n);
    }
    while (m->batches)
        imp_batch_free(m, m->batches);
    for (store_st *s = m->stores, *nx; s; s = nx) {
        nx = s->next;
        free(s->name);
        free(s->paused);
        free(s);
    }
    spool_close(m->sp);
    free(m->table);
    free(m->cache_dir);
    free(m->bucket);
    free(m->prefix);
    pthread_mutex_destroy(&m->lock);
    pthread_cond_destroy(&m->work_cond);
    pthread_cond_destroy(&m->tick_cond);
    pthread_cond_destroy(&m->jflush_cond);
    pthread_cond_destroy(&m->space_cond);
    pthread_cond_destroy(&m->present_cond);
    present_free(m->present);
    free(m->sops);
    free(m);
}

/* ---------------------------------------------------------------- namespace ops */

/* After a namespace change is journaled (lock released): with sync_close it
 * is made durable before the call returns; otherwise the record is already
 * in the cache filesystem (safe from a crash of dicomfs) and the journal
 * flusher fsyncs it within 50 ms, as a local filesystem makes a rename
 * durable at its next commit rather than inside rename(). */
static int journal_settle(import_mgr *m)
{
    return m->cfg.sync_close ? journal_sync(m->j) : 0;
}

int import_getattr(import_mgr *m, const char *store, const char *rel, struct stat *st)
{
    if (!*rel) {
        memset(st, 0, sizeof *st);
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
        st->st_uid = m->cfg.uid;
        st->st_gid = m->cfg.gid;
        clock_gettime(CLOCK_REALTIME, &st->st_mtim);
        st->st_atim = st->st_ctim = st->st_mtim;
        return 0;
    }
    pthread_mutex_lock(&m->lock);
    node *n = lookup(m, store, rel);
    if (n)
        fill_stat(m, n, st);
    pthread_mutex_unlock(&m->lock);
    return n ? 0 : -ENOENT;
}

int import_readdir(import_mgr *m, const char *store, const char *rel, import_fill_fn fill,
                   void *buf)
{
    pthread_mutex_lock(&m->lock);
    store_st *st = store_find(m, store);
    int rc = 0;
    if (*rel) {
        node *d = st ? name_find(m, st, rel) : NULL;
        rc = !d ? -ENOENT : !d->is_dir ? -ENOTDIR : 0;
    }
    for (node *n = st && rc == 0 ? all_first(m) : NULL; n; n = all_next(m, n)) {
        if (!n->visible || n->st != st || !is_child_of(n->path, rel))
            continue;
        struct stat sb;
        fill_stat(m, n, &sb);
        const char *slash = strrchr(n->path, '/');
        if (fill(buf, slash ? slash + 1 : n->path, &sb))
            break;
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}

int import_mkdir(import_mgr *m, const char *store, const char *rel, mode_t mode)
{
    pthread_mutex_lock(&m->lock);
    store_st *st = store_get(m, store);
    int rc = st ? check_parent(m, st, rel) : -ENOMEM;
    if (rc == 0 && name_find(m, st, rel))
        rc = -EEXIST;
    node *n = NULL;
    if (rc == 0 && !(n = node_new(m, st, rel, true, mode)))
        rc = -ENOMEM;
    if (rc == 0 && getrandom(n->id, SPOOL_ID_LEN / 2, 0) == SPOOL_ID_LEN / 2) {
        unsigned char r[SPOOL_ID_LEN / 2];
        memcpy(r, n->id, sizeof r);
        for (size_t i = 0; i < sizeof r; i++)
            snprintf(n->id + 2 * i, 3, "%02x", r[i]);
        list_add(m, n);
        name_insert(m, n);
        rc = imp_node_journal(m, n);
        if (rc < 0)
            imp_node_unlist(m, n); /* a directory we cannot remember is not made */
    } else if (rc == 0) {
        node_free(n);
        rc = -EIO;
    }
    pthread_mutex_unlock(&m->lock);
    return rc == 0 ? journal_settle(m) : rc;
}

int import_rmdir(import_mgr *m, const char *store, const char *rel)
{
    if (!*rel)
        return -EBUSY;
    pthread_mutex_lock(&m->lock);
    node *d = lookup(m, store, rel);
    int rc = !d ? -ENOENT : !d->is_dir ? -ENOTDIR : 0;
    for (node *n = rc == 0 ? all_first(m) : NULL; n; n = all_next(m, n)) {
        if (n->visible && n->st == d->st && is_child_of(n->path, rel)) {
            rc = -ENOTEMPTY;
            break;
        }
    }
    if (rc == 0)
        imp_node_unlist(m, d);
    pthread_mutex_unlock(&m->lock);
    return rc == 0 ? journal_settle(m) : rc;
}

static handle *handle_new(node *n, int fd, bool writable)
{
    handle *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->n = n;
    h->fd = fd;
    h->writable = writable;
    n->refs++;
    if (writable)
        n->writers++;
    return h;
}

/* A file is being created or written in the store (lock held): the store is
 * not quiet, so its open batch waits (one cp -r stays one import). */
static void note_activity(store_st *st)
{
    if (st->open)
        st->open->last_accept = util_now_s();
}

/* Bytes of spool files that work in flight will free (lock held): files
 * not open for writing that are accepted (uploads release them), uploaded,
 * imported, present or withdrawn. Kept files (failed, being written) do not
 * count. A walk of every file: only done while a writer waits. */
static uint64_t cache_freeable(import_mgr *m)
{
    uint64_t k = 0;
    for (node *x = m->head; x; x = x->next)
        if (!x->is_dir && (x->has_spool || x->releasing) && x->writers == 0 && x->state != ST_NEW &&
            x->state != ST_FAILED)
            k += x->spool_bytes;
    return k;
}

/* Waits (lock held) at most ms milliseconds for space_cond. */
static void wait_space(import_mgr *m, long ms)
{
    struct timespec ts = util_timespec_in(CLOCK_REALTIME, ms / 1000.0);
    pthread_cond_timedwait(&m->space_cond, &m->lock, &ts);
}

/* Waits (lock held) up to 0.2 s for space to be released; -EINTR when the
 * request was interrupted (a signal to the writer). */
static int cache_wait_once(import_mgr *m)
{
    if (m->cfg.interrupted && m->cfg.interrupted())
        return -EINTR;
    m->writers_waiting++;
    wait_space(m, 200);
    m->writers_waiting--;
    return 0;
}

/* Backpressure: before n's spool file grows to `end` bytes, waits while the
 * cache holds cache_max and in-flight work can free some of it; then counts
 * the growth. When nothing can free space (every byte belongs to files
 * being written or kept), the write goes on beyond the limit: only the disk
 * itself then says ENOSPC. */
static int cache_reserve(import_mgr *m, node *n, uint64_t end)
{
    int rc = 0;
    bool logged = false;
    pthread_mutex_lock(&m->lock);
    while (end > n->spool_bytes && m->cache_used + (end - n->spool_bytes) > m->cache_max &&
           cache_freeable(m) > 0) {
        if (!logged)
            log_debug("import: %s/%s: the cache holds %" PRIu64 " of %" PRIu64
                      " bytes: waiting for uploads to free room",
                      n->st->name, n->path, m->cache_used, m->cache_max);
        logged = true;
        if ((rc = cache_wait_once(m)) < 0)
            break;
    }
    if (rc == 0 && end > n->spool_bytes)
        imp_spool_account(m, n, end);
    pthread_mutex_unlock(&m->lock);
    return rc;
}

/* A new file waits while the cache is full (it is about to grow). */
static int cache_wait_room(import_mgr *m)
{
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    while (m->cache_used >= m->cache_max && cache_freeable(m) > 0 && (rc = cache_wait_once(m)) == 0)
        ;
    pthread_mutex_unlock(&m->lock);
    return rc;
}

/* The disk is full (ENOSPC from the spool): waits until some spool space
 * is released. Returns 0 to try again, -ENOSPC when nothing in flight can
 * free any, -EINTR when interrupted. */
static int cache_wait_freed(import_mgr *m)
{
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    uint64_t used = m->cache_used;
    while (m->cache_used >= used) {
        if (cache_freeable(m) == 0) {
            rc = -ENOSPC;
            break;
        }
        if ((rc = cache_wait_once(m)) < 0)
            break;
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}

int import_create(import_mgr *m, const char *store, const char *rel, mode_t mode, uint64_t *fh)
{
    pthread_mutex_lock(&m->lock);
    store_st *st = store_get(m, store);
    int rc = st ? check_parent(m, st, rel) : -ENOMEM;
    node *existing = rc == 0 ? name_find(m, st, rel) : NULL;
    pthread_mutex_unlock(&m->lock);
    if (rc < 0)
        return rc;
    if (existing) /* raced with another create: open it like O_CREAT without O_EXCL */
        return existing->is_dir ? -EISDIR : import_open(m, store, rel, O_RDWR | O_TRUNC, fh);

    if ((rc = cache_wait_room(m)) < 0)
        return rc;
    char id[SPOOL_ID_LEN + 1];
    int fd = spool_create(m->sp, id);
    if (fd < 0)
        return fd;
    pthread_mutex_lock(&m->lock);
    node *n = NULL;
    handle *h = NULL;
    if (name_find(m, st, rel))
        rc = -EEXIST;
    else if (!(n = node_new(m, st, rel, false, mode)))
        rc = -ENOMEM;
    if (rc == 0) {
        memcpy(n->id, id, sizeof n->id);
        n->state = ST_NEW;
        n->has_spool = true;
        n->dirty = true;
        n->seq = true; /* empty: the first write at 0 appends */
        h = handle_new(n, fd, true);
        if (!h) {
            node_free(n);
            rc = -ENOMEM;
        } else {
            list_add(m, n);
            name_insert(m, n);
            note_activity(st);
        }
    }
    pthread_mutex_unlock(&m->lock);
    if (rc < 0) {
        close(fd);
        spool_remove(m->sp, id);
        return rc;
    }
    *fh = (uint64_t)(uintptr_t)h;
    return 0;
}

/* A released file in a short background step (spool removal, staged
 * object deletion after its import). */
static bool settling(const node *n)
{
    bool remembered = n->state == ST_IMPORTED || n->state == ST_PRESENT;
    return n->releasing || (n->busy && n->state != ST_UPLOADED) || (remembered && n->staged);
}

/* Opening for writing a file whose spool space was released (lock held):
 * only a whole rewrite (O_TRUNC) is possible, which makes a remembered
 * (imported, present, failed) file a new one, or gives an uploaded one
 * waiting for its batch a new content to upload under the same name.
 * Returns the new spool file's fd or a negative errno. */
static int rewrite_released(import_mgr *m, node *n, int flags)
{
    bool remembered = n->state == ST_IMPORTED || n->state == ST_PRESENT || n->state == ST_FAILED;
    if (!(flags & O_TRUNC) || n->releasing || n->busy || (remembered && n->staged) ||
        (!remembered && n->state != ST_UPLOADED)) {
        log_error("import: %s/%s: cannot be changed in place: its content is no longer in the "
                  "cache (uploaded); write it whole (O_TRUNC, as cp does) or remove it first",
                  n->st->name, n->path);
        return -EBUSY;
    }
    int fd = spool_create_as(m->sp, n->id);
    if (fd < 0)
        return fd;
    n->has_spool = true;
    if (remembered)
        imp_node_to(m, n, ST_NEW, 0);
    return fd;
}

/* A read-only handle of a file whose spool space was released gets a
 * private copy (an unnamed file in the spool directory) fetched from its
 * staged object or from the store. */
static int fetch_copy(import_mgr *m, handle *h)
{
    pthread_mutex_lock(&m->lock);
    node *n = h->n;
    char *object = imp_object_name(m, n);
    char *store = strdup(n->st->name);
    char *label = util_asprintf("%s/%s", n->st->name, n->path);
    bool staged = n->staged;
    char study[sizeof n->study], series[sizeof n->series], sop[sizeof n->sop];
    memcpy(study, n->study, sizeof study);
    memcpy(series, n->series, sizeof series);
    memcpy(sop, n->sop, sizeof sop);
    pthread_mutex_unlock(&m->lock);
    int rc = object && store && label ? 0 : -ENOMEM;
    int fd = rc == 0 ? spool_open_tmp(m->sp) : -1;
    if (rc == 0 && fd < 0)
        rc = fd;
    if (rc == 0 && !m->gcs)
        rc = -EIO;
    if (rc == 0)
        rc = up_fetch_copy(m, object, staged, store, study, series, sop, fd);
    if (rc < 0) {
        log_error("import: %s: cannot read it back: its content is no longer in the cache and "
                  "fetching it from Cloud Storage or the store failed (%s)",
                  label ? label : "?", strerror(-rc));
        if (fd >= 0)
            close(fd);
        rc = -EIO;
    } else {
        h->fd = fd;
    }
    free(object);
    free(store);
    free(label);
    return rc;
}

int import_open(import_mgr *m, const char *store, const char *rel, int flags, uint64_t *fh)
{
    bool wr = (flags & O_ACCMODE) != O_RDONLY;
    pthread_mutex_lock(&m->lock);
    node *n = lookup(m, store, rel);
    /* A rewrite of a file whose spool space is being released, or whose
     * staged object is being deleted after its import, waits for that
     * short step (at most 30 s) instead of failing. */
    for (int i = 0; wr && n && !n->has_spool && settling(n) && i < 3000; i++) {
        wait_space(m, 10);
        n = lookup(m, store, rel);
    }
    int rc = !n ? -ENOENT : n->is_dir ? -EISDIR : 0;
    if (rc == 0 && wr && node_importing(n)) {
        log_error("import: %s/%s: cannot be changed: its batch import already started", store, rel);
        rc = -EBUSY;
    }
    int fd = -1;
    bool fetch = false;
    if (rc == 0 && !n->has_spool && !wr)
        fetch = true; /* its copy of record is remote: fetched below */
    else if (rc == 0 && !n->has_spool)
        rc = fd = rewrite_released(m, n, flags);
    else if (rc == 0) {
        fd = spool_open_file(m->sp, n->id, wr ? O_RDWR : O_RDONLY);
        if (fd < 0) {
            rc = fd;
            log_error("import: %s/%s: spool file %s: %s", store, rel, n->id, strerror(-rc));
        }
    }
    if (rc >= 0)
        rc = 0;
    if (rc == 0 && wr && (flags & O_TRUNC)) {
        if (ftruncate(fd, 0) < 0) {
            rc = -errno;
        } else {
            imp_spool_account(m, n, 0);
            up_stream_drop(m, n, "truncated");
            n->seq = true;
            n->seq_end = 0;
            n->size = 0;
            n->dirty = true;
            n->checked = false;
            n->gen++;
            clock_gettime(CLOCK_REALTIME, &n->mtime);
        }
    }
    handle *h = NULL;
    if (rc == 0 && !(h = handle_new(n, fd, wr)))
        rc = -ENOMEM;
    pthread_mutex_unlock(&m->lock);
    if (rc == 0 && fetch && (rc = fetch_copy(m, h)) < 0) {
        import_release(m, (uint64_t)(uintptr_t)h);
        return rc;
    }
    if (rc < 0) {
        if (fd >= 0)
            close(fd);
        return rc;
    }
    *fh = (uint64_t)(uintptr_t)h;
    return 0;
}

int import_write(import_mgr *m, uint64_t fh, const char *buf, size_t size, off_t off)
{
    handle *h = (handle *)(uintptr_t)fh;
    if (!h->writable)
        return -EBADF;
    if (size > INT32_MAX)
        size = INT32_MAX;
    int rc = cache_reserve(m, h->n, (uint64_t)off + size);
    ssize_t n = rc < 0 ? (errno = -rc, -1) : pwrite(h->fd, buf, size, off);
    while (n < 0 && errno == ENOSPC && (rc = cache_wait_freed(m)) == 0)
        n = pwrite(h->fd, buf, size, off); /* the disk is full: uploads free it */
    if (n < 0 && rc < 0)
        errno = -rc;
    if (n < 0) {
        int e = errno;
        pthread_mutex_lock(&m->lock);
        log_error("import: %s/%s: write to the spool file failed: %s", h->n->st->name, h->n->path,
                  strerror(e));
        /* The file is incomplete: it must not be accepted at close(). */
        h->n->io_err = -e;
        h->n->dirty = true;
        h->n->checked = false;
        pthread_mutex_unlock(&m->lock);
        return -e;
    }
    /* Large sequential writes: start writing each completed 8 MiB back to
     * disk now, so the fdatasync at close() only waits for the tail (a hint:
     * errors are reported by that fdatasync). */
    uint64_t end = (uint64_t)off + (uint64_t)n;
    if (end / IMP_WRITEBACK_STEP > (uint64_t)off / IMP_WRITEBACK_STEP)
        sync_file_range(h->fd, (off_t)(end / IMP_WRITEBACK_STEP - 1) * IMP_WRITEBACK_STEP,
                        IMP_WRITEBACK_STEP, SYNC_FILE_RANGE_WRITE);
    pthread_mutex_lock(&m->lock);
    node *nd = h->n;
    if ((uint64_t)off + (uint64_t)n > nd->size)
        nd->size = (uint64_t)off + (uint64_t)n;
    nd->dirty = true;
    nd->checked = false;
    nd->gen++;
    clock_gettime(CLOCK_REALTIME, &nd->mtime);
    nd->ctime = nd->mtime;
    note_activity(nd->st);
    up_stream_wrote(m, nd, h->fd, (uint64_t)off, (uint64_t)n);
    pthread_mutex_unlock(&m->lock);
    return (int)n;
}

int import_read(import_mgr *m, uint64_t fh, char *buf, size_t size, off_t off)
{
    (void)m;
    handle *h = (handle *)(uintptr_t)fh;
    if (size > INT32_MAX)
        size = INT32_MAX;
    ssize_t n = pread(h->fd, buf, size, off);
    return n < 0 ? -errno : (int)n;
}

/* Joins the store's open batch (creating one). */
void imp_assign_batch(import_mgr *m, node *n)
{
    store_st *st = n->st;
    if (n->b && n->b->state == B_OPEN)
        return;
    if (!st->open) {
        st->open = batch_new(m, st, NULL);
        if (!st->open)
            return;
        imp_batch_journal(m, st->open);
    }
    n->b = st->open;
    if (n->staged && strcmp(n->bid, n->b->id) != 0)
        log_warn("import: %s/%s: an older staged copy stays in batch %s", st->name, n->path,
                 n->bid);
    snprintf(n->bid, sizeof n->bid, "%s", n->b->id);
    n->staged = false;
}

/* Rejects a file that failed validation: it disappears. */
static void reject(import_mgr *m, node *n)
{
    if (!n->visible)
        return;
    if (n->state == ST_NEW) {
        name_remove(m, n);
        imp_spool_remove(m, n);
        imp_node_unlist(m, n);
        return;
    }
    node_withdraw(m, n, true, "be rejected");
}

/* Records that the current content failed validation (lock held): later
 * flushes return rc until the file changes, and the last writer's release
 * drops it, logging why. Only a debug line here: the descriptor flushed may
 * be a dup'ed one closed before the writes (a shell redirection). */
static int check_failed(node *n, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int check_failed(node *n, int rc, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    n->checked = true;
    n->check_rc = rc;
    free(n->why);
    n->why = strdup(msg);
    log_debug("import: %s/%s: flush: %s (dropped at the last close unless written again)",
              n->st->name, n->path, msg);
    return rc;
}

/* fdatasync of a spool file and of its directory entry (a spool file made
 * durable must also be findable after a power loss). */
static int sync_spool_file(import_mgr *m, int fd, const char **what)
{
    if (fdatasync(fd) < 0) {
        *what = "cannot make the spool file durable";
        return -errno;
    }
    int rc = spool_sync_dir(m->sp);
    if (rc < 0)
        *what = "cannot sync the spool directory";
    return rc;
}

/* Validates the current content of h's file and accepts it if it is DICOM
 * Part 10. Returns what flush() returns. */
static int validate(import_mgr *m, handle *h)
{
    node *n = h->n;
    char why[256] = "";
    dicom_info info;
    pthread_mutex_lock(&m->lock);
    uint64_t gen = n->gen;
    int io_err = n->io_err;
    if (io_err) {
        int rc = check_failed(n, io_err, "a write failed (%s)", strerror(-io_err));
        pthread_mutex_unlock(&m->lock);
        return rc;
    }
    pthread_mutex_unlock(&m->lock);
    int rc = 0;
    const char *what = "";
    struct stat sb;
    memset(&sb, 0, sizeof sb);
    bool sync = m->cfg.sync_close || h->fsynced;
    if (sync && (rc = sync_spool_file(m, h->fd, &what)) < 0) {
        /* what says which step failed */
    } else if (fstat(h->fd, &sb) < 0) {
        rc = -errno;
        what = "cannot stat the spool file";
    }
    int drc = rc == 0 ? dicom_parse_fd(h->fd, &info, why, sizeof why) : DICOM_OK;
    pthread_mutex_lock(&m->lock);
    if (!n->visible || n->gen != gen) {
        /* Unlinked or replaced while open: nothing to accept. Or written
         * meanwhile through another descriptor: its flush validates. */
        pthread_mutex_unlock(&m->lock);
        return 0;
    }
    if (rc < 0) {
        rc = check_failed(n, rc, "%s: %s", what, strerror(-rc));
        pthread_mutex_unlock(&m->lock);
        return rc;
    }
    if (drc != DICOM_OK) {
        if (!*why)
            snprintf(why, sizeof why, "%s", sb.st_size == 0 ? "empty file" : dicom_strerror(drc));
        rc = check_failed(n, -EINVAL, "not a DICOM Part-10 file: %s", why);
        pthread_mutex_unlock(&m->lock);
        return rc;
    }
    int prev_state = n->state;
    n->dirty = false;
    n->checked = true;
    n->check_rc = 0;
    free(n->why);
    n->why = NULL;
    n->size = (uint64_t)sb.st_size;
    snprintf(n->sop, sizeof n->sop, "%s", info.sop_instance_uid);
    snprintf(n->study, sizeof n->study, "%s", info.study_uid);
    snprintf(n->series, sizeof n->series, "%s", info.series_uid);
    free(n->reason);
    n->reason = NULL;
    imp_assign_batch(m, n);
    rc = imp_node_to(m, n, ST_ACCEPTED, 0);
    if (rc < 0) {
        /* Not recorded = not accepted: close() fails (ENOSPC on a full
         * cache disk) and the file goes, as for a rejected one. */
        n->state = prev_state == ST_NEW ? ST_NEW : n->state;
        reject(m, n);
        pthread_mutex_unlock(&m->lock);
        return rc;
    }
    if (n->b)
        n->b->last_accept = util_now_s();
    n->st->bytes_spooled += n->size;
    sop_insert(m, n);
    node *dup = m->cfg.upload_present ? NULL : sop_other(m, n);
    if (dup) {
        /* Duplicates within a copy are known now: the import would keep
         * only one of them anyway. */
        char why[300];
        snprintf(why, sizeof why, "%s (SOP Instance UID %s) has this instance",
                 dup->visible ? dup->path : "a file copied before", n->sop);
        imp_node_present(m, n, why);
    } else if (!up_stream_accepted(m, n, n->size)) {
        /* A stream that sent this very content finishes the upload;
         * otherwise the workers upload the spool file. */
        up_enqueue(m, n);
    }
    up_kick(m); /* a new file: the quiet period starts again */
    pthread_mutex_unlock(&m->lock);
    /* Without sync, the record is in the cache filesystem already (it
     * survives a crash of dicomfs) and the journal flusher thread fsyncs it
     * within 50 ms for power loss. */
    rc = sync ? journal_sync(m->j) : 0;
    if (rc < 0) {
        log_error("import: %s/%s: the journal could not be made durable: %s", n->st->name, n->path,
                  strerror(-rc));
        pthread_mutex_lock(&m->lock);
        if (n->gen == gen)
            n->check_rc = rc; /* later flushes must not claim durability either */
        pthread_mutex_unlock(&m->lock);
    }
    return rc;
}

int import_flush(import_mgr *m, uint64_t fh)
{
    handle *h = (handle *)(uintptr_t)fh;
    if (!h->writable)
        return 0;
    pthread_mutex_lock(&m->lock);
    node *n = h->n;
    bool todo = n->visible && n->dirty && !n->checked;
    int rc = !n->visible ? h->last_rc : n->checked ? n->check_rc : 0;
    pthread_mutex_unlock(&m->lock);
    if (todo)
        rc = validate(m, h);
    h->last_rc = rc;
    return rc;
}

/* fsync() makes the data and its spool entry durable now; an already
 * accepted content also gets its journal record synced, and the handle's
 * close() then syncs the acceptance it records (rsync --fsync, databases). */
int import_fsync(import_mgr *m, uint64_t fh)
{
    handle *h = (handle *)(uintptr_t)fh;
    const char *what = "";
    int rc = sync_spool_file(m, h->fd, &what);
    if (rc < 0) {
        log_error("import: %s/%s: fsync: %s: %s", h->n->st->name, h->n->path, what, strerror(-rc));
        return rc;
    }
    h->fsynced = true;
    pthread_mutex_lock(&m->lock);
    bool accepted = h->n->visible && !h->n->dirty && h->n->state == ST_ACCEPTED;
    pthread_mutex_unlock(&m->lock);
    return accepted ? journal_sync(m->j) : 0;
}

int import_release(import_mgr *m, uint64_t fh)
{
    handle *h = (handle *)(uintptr_t)fh;
    node *n = h->n;
    if (h->writable) {
        /* Written after its last flush (through a shared mapping, say): the
         * last writer decides now rather than leave it never validated. */
        pthread_mutex_lock(&m->lock);
        bool todo = n->writers == 1 && n->visible && n->dirty && !n->checked;
        pthread_mutex_unlock(&m->lock);
        if (todo)
            validate(m, h);
    }
    if (h->fd >= 0)
        close(h->fd);
    pthread_mutex_lock(&m->lock);
    bool dropped = false;
    if (h->writable) {
        n->writers--;
        if (n->writers == 0)
            up_stream_drop(m, n, "closed without being accepted");
        /* The last close of a file whose last validation failed: reject it
         * now (the handle's reference keeps n alive through reject()). */
        if (n->writers == 0 && n->visible && n->dirty && n->checked && n->check_rc < 0) {
            log_error("import: %s/%s: %s; not imported, removed from import/", n->st->name, n->path,
                      n->why ? n->why : strerror(-n->check_rc));
            if (m->cfg.on_reject && n->check_rc == -EINVAL)
                m->cfg.on_reject(m->cfg.on_reject_ctx, n->st->name, n->path,
                                 n->why ? n->why : strerror(-n->check_rc));
            reject(m, n);
            dropped = true;
        }
    }
    n->refs--;
    if (n->writers == 0 && n->state == ST_ACCEPTED && !n->dirty)
        up_enqueue(m, n); /* it was held back while open for writing */
    imp_node_maybe_free(m, n);
    up_kick(m);
    pthread_mutex_unlock(&m->lock);
    free(h);
    if (dropped)
        journal_settle(m);
    return 0;
}

int import_truncate(import_mgr *m, const char *store, const char *rel, off_t size, uint64_t fh)
{
    if (size < 0)
        return -EINVAL;
    if (fh) {
        handle *h = (handle *)(uintptr_t)fh;
        if (!h->writable)
            return -EBADF;
        if (ftruncate(h->fd, size) < 0) {
            int e = errno;
            pthread_mutex_lock(&m->lock);
            h->n->io_err = -e;
            h->n->dirty = true;
            h->n->checked = false;
            pthread_mutex_unlock(&m->lock);
            return -e;
        }
        pthread_mutex_lock(&m->lock);
        imp_spool_account(m, h->n, (uint64_t)size);
        up_stream_drop(m, h->n, "truncated");
        h->n->seq = size == 0;
        h->n->seq_end = 0;
        h->n->size = (uint64_t)size;
        h->n->dirty = true;
        h->n->checked = false;
        h->n->gen++;
        clock_gettime(CLOCK_REALTIME, &h->n->mtime);
        pthread_mutex_unlock(&m->lock);
        return 0;
    }
    /* truncate(2) by name: validate now if nobody will flush it later. */
    uint64_t tmp;
    int rc = import_open(m, store, rel, O_RDWR, &tmp);
    if (rc < 0)
        return rc;
    rc = import_truncate(m, store, rel, size, tmp);
    pthread_mutex_lock(&m->lock);
    handle *h = (handle *)(uintptr_t)tmp;
    bool last_writer = h->n->writers == 1;
    pthread_mutex_unlock(&m->lock);
    if (rc == 0 && last_writer)
        rc = import_flush(m, tmp);
    import_release(m, tmp);
    return rc;
}

static int rename_dir(import_mgr *m, node *d, const char *to)
{
    size_t fl = strlen(d->path);
    /* Children first, while d->path is still the old prefix. */
    for (node *n = all_first(m); n; n = all_next(m, n)) {
        if (!n->visible || n->st != d->st || !is_below(n->path, d->path))
            continue;
        char *np = util_asprintf("%s%s", to, n->path + fl);
        if (!np)
            return -ENOMEM;
        name_remove(m, n);
        free(n->path);
        n->path = np;
        name_insert(m, n);
        imp_node_journal(m, n);
    }
    return 0;
}

int import_rename(import_mgr *m, const char *store, const char *from, const char *to,
                  unsigned int flags)
{
    if (!*from || !*to)
        return -EBUSY;
    if (flags & RENAME_EXCHANGE)
        return -EINVAL;
    pthread_mutex_lock(&m->lock);
    store_st *st = store_find(m, store);
    node *src = st ? name_find(m, st, from) : NULL;
    int rc = src ? check_parent(m, st, to) : -ENOENT;
    node *dst = rc == 0 ? name_find(m, st, to) : NULL;
    if (rc == 0 && src->is_dir && (is_below(to, from) || strcmp(to, from) == 0))
        rc = strcmp(to, from) == 0 ? 0 : -EINVAL;
    if (rc == 0 && dst == src)
        dst = NULL, src = NULL; /* same name: nothing to do */
    if (rc == 0 && dst && (flags & RENAME_NOREPLACE))
        rc = -EEXIST;
    if (rc == 0 && dst && src) {
        if (src->is_dir && !dst->is_dir)
            rc = -ENOTDIR;
        else if (!src->is_dir && dst->is_dir)
            rc = -EISDIR;
        else if (dst->is_dir) {
            for (node *n = all_first(m); n; n = all_next(m, n))
                if (n->visible && n->st == st && is_child_of(n->path, to)) {
                    rc = -ENOTEMPTY;
                    break;
                }
            if (rc == 0)
                imp_node_unlist(m, dst);
        } else {
            rc = node_withdraw(m, dst, true, "be replaced by a rename");
        }
    }
    if (rc == 0 && src) {
        char *np = strdup(to);
        if (!np)
            rc = -ENOMEM;
        if (rc == 0 && src->is_dir)
            rc = rename_dir(m, src, to);
        if (rc == 0) {
            name_remove(m, src);
            free(src->path);
            src->path = np;
            np = NULL;
            name_insert(m, src);
            clock_gettime(CLOCK_REALTIME, &src->ctime);
            rc = imp_node_journal(m, src);
        }
        free(np);
    }
    pthread_mutex_unlock(&m->lock);
    return rc == 0 ? journal_settle(m) : rc;
}

int import_unlink(import_mgr *m, const char *store, const char *rel)
{
    pthread_mutex_lock(&m->lock);
    node *n = lookup(m, store, rel);
    int rc = !n ? -ENOENT : n->is_dir ? -EISDIR : 0;
    if (rc == 0)
        rc = node_withdraw(m, n, false, "be removed");
    up_kick(m);
    pthread_mutex_unlock(&m->lock);
    return rc == 0 ? journal_settle(m) : rc;
}

int import_state(import_mgr *m, const char *store, const char *rel, char *out, size_t outlen)
{
    pthread_mutex_lock(&m->lock);
    node *n = *rel ? lookup(m, store, rel) : NULL;
    int rc = !*rel ? -ENODATA : !n ? -ENOENT : n->is_dir ? -ENODATA : 0;
    if (rc == 0) {
        const char *name = n->state == ST_UPLOADED ? (node_importing(n) ? "importing" : "uploaded")
                           : n->state == ST_IMPORTED ? "imported"
                           : n->state == ST_PRESENT  ? "present"
                           : n->state == ST_FAILED   ? "failed"
                                                     : "pending";
        snprintf(out, outlen, "%s", name);
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}

static void apply_time(struct timespec *dst, const struct timespec *src)
{
    if (src->tv_nsec == UTIME_OMIT)
        return;
    if (src->tv_nsec == UTIME_NOW)
        clock_gettime(CLOCK_REALTIME, dst);
    else
        *dst = *src;
}

int import_utimens(import_mgr *m, const char *store, const char *rel, const struct timespec tv[2])
{
    if (!*rel)
        return 0;
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    node *n = lookup(m, store, rel);
    if (n) {
        if (tv) {
            apply_time(&n->atime, &tv[0]);
            apply_time(&n->mtime, &tv[1]);
        } else {
            clock_gettime(CLOCK_REALTIME, &n->mtime);
            n->atime = n->mtime;
        }
        clock_gettime(CLOCK_REALTIME, &n->ctime);
        /* Written to the log now (survives a daemon kill); made durable by
         * the next sync point: an fsync per utimens would halve rsync's speed. */
        rc = imp_node_journal(m, n);
    }
    pthread_mutex_unlock(&m->lock);
    return n ? rc : -ENOENT;
}

int import_chmod(import_mgr *m, const char *store, const char *rel, mode_t mode)
{
    if (!*rel)
        return 0;
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    node *n = lookup(m, store, rel);
    if (n) {
        n->mode = mode & 07777;
        clock_gettime(CLOCK_REALTIME, &n->ctime);
        rc = imp_node_journal(m, n);
    }
    pthread_mutex_unlock(&m->lock);
    return n ? rc : -ENOENT;
}

int import_chown(import_mgr *m, const char *store, const char *rel, uid_t uid, gid_t gid)
{
    if (!*rel)
        return 0;
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    node *n = lookup(m, store, rel);
    if (n) {
        if (uid != (uid_t)-1)
            n->uid = uid;
        if (gid != (gid_t)-1)
            n->gid = gid;
        clock_gettime(CLOCK_REALTIME, &n->ctime);
        rc = imp_node_journal(m, n);
    }
    pthread_mutex_unlock(&m->lock);
    return n ? rc : -ENOENT;
}
