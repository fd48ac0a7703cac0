/* import: the STORE/import/ namespace, spooling and acceptance (the first
 * stage of the pipeline; the files and their states: filestate.c).
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
 * - Recycled spool files keep an earlier file's bytes (spool.h): a new file
 *   writes over them (node.stale) and they are cut to its size when a write
 *   or truncate would leave a gap and at acceptance (unstale), before the
 *   journal records it: the uploader, the DICOM check and a recovery after
 *   a crash only ever see the accepted bytes; reads through the mount stop
 *   at the node's size until then.
 * - Bounded cache: cache_used counts spool bytes (node spool_bytes);
 *   write_begin makes a growing write wait while cache_max is reached and
 *   in-flight work can free room; ENOSPC from the disk waits the same way
 *   (cache_wait_freed) and is returned only when nothing can free space.
 * - Present: a file whose SOP Instance UID another accepted, uploaded,
 *   imported or present file of the store has (SOP table) is present at its
 *   close(); the uploader checks the store itself before uploading.
 *   Directories stay until removed with rmdir.
 * - Uploads, batches, commits and restarts: see uploader.c. Writes,
 *   truncates, acceptance, rejection, unlink and rename tell the streaming
 *   side (up_stream_wrote/_accepted, imp_stream_drop) so that a stream never finishes
 *   with content other than what close() accepted.
 * - Memory: file data is never held in memory; per file in flight only a
 *   small struct (and the same metadata in the journal's map). Remembered
 *   files live in the index (index.c) and come into memory only while an
 *   operation uses them (find/fault_in; see docs/migrations.md).
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
#include <sys/stat.h>
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

/* ---------------------------------------------------------------- lookups */

/* Whether the file's import was started: it can no longer be changed. */
static bool node_importing(const node *n)
{
    return n->state == ST_UPLOADED && n->b && n->b->state >= B_SEALED;
}

typedef struct fault_ctx {
    import_mgr *m;
    store_st *st;
    node *n;
} fault_ctx;

static int fault_cb(void *vctx, const index_entry *e)
{
    fault_ctx *c = vctx;
    node *n = imp_node_new(c->m, c->st, e->path, false, e->mode);
    if (!n)
        return -ENOMEM;
    imp_node_from_entry(n, e);
    n->settled = n->indexed = true;
    imp_list_add(c->m, n);
    imp_name_insert(c->m, n);
    imp_sop_insert(c->m, n);
    c->n = n;
    return 0;
}

/* A visible node by name, brought back from the index into memory if it
 * is a remembered file (for an operation that uses or changes it; it
 * leaves memory again at imp_node_maybe_free). */
static node *find(import_mgr *m, store_st *st, const char *path)
{
    node *n = imp_name_find(m, st, path);
    fault_ctx c = {m, st, NULL};
    if (!n && m->ix && *path)
        index_get(m->ix, st->name, path, fault_cb, &c);
    return n ? n : c.n;
}

/* Looks up a visible node; store must already be known. */
static node *lookup(import_mgr *m, const char *store, const char *rel)
{
    store_st *st = imp_store_find(m, store);
    return st ? find(m, st, rel) : NULL;
}

typedef struct peek_ctx {
    import_mgr *m;
    struct stat *sb;
    char *state;
    size_t statelen;
} peek_ctx;

static void fill_stat(import_mgr *m, const node *n, struct stat *st);
static const char *state_name(const node *n);

static int peek_cb(void *vctx, const index_entry *e)
{
    peek_ctx *c = vctx;
    node tmp;
    memset(&tmp, 0, sizeof tmp);
    imp_node_from_entry(&tmp, e);
    if (c->sb)
        fill_stat(c->m, &tmp, c->sb);
    if (c->state)
        snprintf(c->state, c->statelen, "%s", state_name(&tmp));
    return 0;
}

/* stat and state of a remembered file without bringing it into memory
 * (ls -l of a large folder). -ENOENT when the index has no such file. */
static int peek(import_mgr *m, const char *store, const char *rel, peek_ctx *c)
{
    c->m = m;
    return m->ix && *rel ? index_get(m->ix, store, rel, peek_cb, c) : -ENOENT;
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
    node *p = imp_name_find(m, st, parent);
    peek_ctx c = {0};
    if (!p)
        return peek(m, st->name, parent, &c) == 0 ? -ENOTDIR : -ENOENT;
    return p->is_dir ? 0 : -ENOTDIR;
}

/* Takes a file out of the namespace (unlink, replaced by rename, rejected).
 * Returns -EBUSY when its batch import already started and busy_ok is false. */
static int node_withdraw(import_mgr *m, node *n, bool busy_ok, const char *why)
{
    imp_stream_drop(m, n, why);
    if (node_importing(n)) {
        if (!busy_ok) {
            log_error("import: %s/%s: cannot %s: its batch import already started", n->st->name,
                      n->path, why);
            return -EBUSY;
        }
        log_warn("import: %s/%s: %s while its batch import runs: that copy stays imported",
                 n->st->name, n->path, why);
        imp_name_remove(m, n);
        imp_node_journal(m, n);
        return 0;
    }
    if (n->state == ST_IMPORTED || n->state == ST_PRESENT) {
        /* Remembered: forgotten locally, nothing remote is deleted (the
         * workers still finish its cleanup if any is due, then unlist it). */
        imp_name_remove(m, n);
        if (n->staged || n->has_spool || n->busy || n->releasing)
            imp_node_journal(m, n);
        else
            imp_node_unlist(m, n);
        return 0;
    }
    imp_name_remove(m, n);
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

/* Whether n's spool file still holds what was accepted: its size and SOP
 * Instance UID. A power loss can leave a spool file whose bytes had not
 * reached the disk empty, zeroed, or holding an earlier file's bytes (a
 * recycled spool file is written over, spool.h); such a file must never be
 * uploaded under n's name. Reads the file's header only. */
static bool spool_intact(import_mgr *m, const node *n, char *why, size_t whylen)
{
    int fd = spool_open_file(m->sp, n->id, O_RDONLY);
    struct stat sb = {0};
    dicom_info info;
    bool ok = false;
    if (fd < 0)
        snprintf(why, whylen, "the spool file %s is missing from the cache", n->id);
    else if (fstat(fd, &sb) < 0 || (uint64_t)sb.st_size != n->size)
        snprintf(why, whylen,
                 "the spool file %s has lost its content (%lld bytes, %" PRIu64 " accepted)", n->id,
                 (long long)sb.st_size, n->size);
    else if (dicom_parse_fd(fd, &info, NULL, 0) != CERR_OK || strcmp(info.sop_instance_uid, n->sop))
        snprintf(why, whylen, "the spool file %s no longer holds the accepted instance %s", n->id,
                 n->sop);
    else
        ok = true;
    if (fd >= 0)
        close(fd);
    return ok;
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
        case ST_ACCEPTED: {
            char why[400] = "the spool file is missing from the cache";
            if (!n->has_spool || !spool_intact(m, n, why, sizeof why)) {
                log_error("import: %s/%s: %s (a power loss or someone else's change to the "
                          "cache directory): the file cannot be uploaded; copy it again",
                          n->st->name, n->path, why);
                imp_node_fail(m, n, "spool file lost or damaged in the cache directory");
                break;
            }
            if (!n->b)
                imp_assign_batch(m, n);
            imp_enqueue(m, n);
            break;
        }
        default: /* staged objects to delete, spool space to release */
            imp_enqueue(m, n);
            break;
        }
    }
}

static int load_all(import_mgr *m)
{
    int rc = imp_load_records(m);
    if (rc < 0)
        return rc;
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
    if (rc == 0 && index_open(m->cache_dir, &m->ix) < 0)
        /* A full cache disk must not stop the imports that would free it:
         * without the index, files imported from now on are remembered in
         * memory and the journal (moved to the index at a later mount). */
        log_error("import: the index of remembered files cannot be opened (above): files "
                  "imported in earlier runs are not listed in import/ until it can be; free "
                  "space in the cache directory and remount");
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
    /* A clean stop leaves a compact journal: only files in flight (the
     * records of remembered files moved to the index). */
    if (m->j && journal_compact(m->j) < 0)
        journal_sync(m->j);
    for (node *n = imp_all_first(m), *nx; n; n = nx) {
        nx = imp_all_next(m, n);
        imp_node_free(n);
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
    index_close(m->ix);
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
    store_st *s = imp_store_find(m, store);
    node *n = s ? imp_name_find(m, s, rel) : NULL;
    peek_ctx c = {.sb = st};
    int rc = n ? 0 : s ? peek(m, store, rel, &c) : -ENOENT;
    if (n)
        fill_stat(m, n, st);
    pthread_mutex_unlock(&m->lock);
    return rc < 0 ? -ENOENT : 0;
}

typedef struct list_ctx {
    import_mgr *m;
    store_st *st;
    import_fill_fn fill;
    void *buf;
} list_ctx;

static int list_cb(void *vctx, const index_entry *e)
{
    list_ctx *c = vctx;
    if (imp_name_find(c->m, c->st, e->path))
        return 0; /* in memory too: listed from there */
    node tmp;
    memset(&tmp, 0, sizeof tmp);
    imp_node_from_entry(&tmp, e);
    struct stat sb;
    fill_stat(c->m, &tmp, &sb);
    return c->fill(c->buf, e->name, &sb) ? 1 : 0;
}

int import_readdir(import_mgr *m, const char *store, const char *rel, import_fill_fn fill,
                   void *buf)
{
    pthread_mutex_lock(&m->lock);
    store_st *st = imp_store_find(m, store);
    int rc = 0;
    if (*rel) {
        node *d = st ? imp_name_find(m, st, rel) : NULL;
        rc = !d ? -ENOENT : !d->is_dir ? -ENOTDIR : 0;
    }
    bool full = false;
    for (node *n = st && rc == 0 ? imp_all_first(m) : NULL; n; n = imp_all_next(m, n)) {
        if (!n->visible || n->st != st || !is_child_of(n->path, rel))
            continue;
        struct stat sb;
        fill_stat(m, n, &sb);
        const char *slash = strrchr(n->path, '/');
        if ((full = fill(buf, slash ? slash + 1 : n->path, &sb)))
            break;
    }
    /* Then the remembered files of the folder: one query by folder. */
    list_ctx c = {m, st, fill, buf};
    if (st && rc == 0 && !full && m->ix)
        index_list(m->ix, store, rel, list_cb, &c);
    pthread_mutex_unlock(&m->lock);
    return rc;
}

int import_mkdir(import_mgr *m, const char *store, const char *rel, mode_t mode)
{
    pthread_mutex_lock(&m->lock);
    store_st *st = imp_store_get(m, store);
    int rc = st ? check_parent(m, st, rel) : -ENOMEM;
    peek_ctx c = {0};
    if (rc == 0 && (imp_name_find(m, st, rel) || peek(m, store, rel, &c) == 0))
        rc = -EEXIST;
    node *n = NULL;
    if (rc == 0 && !(n = imp_node_new(m, st, rel, true, mode)))
        rc = -ENOMEM;
    if (rc == 0 && getrandom(n->id, SPOOL_ID_LEN / 2, 0) == SPOOL_ID_LEN / 2) {
        unsigned char r[SPOOL_ID_LEN / 2];
        memcpy(r, n->id, sizeof r);
        for (size_t i = 0; i < sizeof r; i++)
            snprintf(n->id + 2 * i, 3, "%02x", r[i]);
        imp_list_add(m, n);
        imp_name_insert(m, n);
        rc = imp_node_journal(m, n);
        if (rc < 0)
            imp_node_unlist(m, n); /* a directory we cannot remember is not made */
    } else if (rc == 0) {
        imp_node_free(n);
        rc = -EIO;
    }
    pthread_mutex_unlock(&m->lock);
    return rc == 0 ? journal_settle(m) : rc;
}

/* No visible file or folder in dir: in memory, then in the index. */
static bool dir_empty(import_mgr *m, store_st *st, const char *dir)
{
    for (node *n = imp_all_first(m); n; n = imp_all_next(m, n))
        if (n->visible && n->st == st && is_child_of(n->path, dir))
            return false;
    return !m->ix || index_has_children(m->ix, st->name, dir) == 0;
}

int import_rmdir(import_mgr *m, const char *store, const char *rel)
{
    if (!*rel)
        return -EBUSY;
    pthread_mutex_lock(&m->lock);
    node *d = lookup(m, store, rel);
    int rc = !d ? -ENOENT : !d->is_dir ? -ENOTDIR : 0;
    if (rc == 0 && !dir_empty(m, d->st, rel))
        rc = -ENOTEMPTY;
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

/* Cuts n's recycled spool file (fd) to n's size (lock held; see
 * node.stale), once no write is between its reservation and its size
 * update: what lies beyond is an earlier file's. */
static int unstale(import_mgr *m, node *n, int fd)
{
    while (n->wr_inflight > 0)
        pthread_cond_wait(&m->space_cond, &m->lock);
    if (!n->stale)
        return 0;
    /* [0, size) was written without a gap (a gap cuts first), so nothing
     * of the earlier file is left when it was not longer. */
    if (n->stale_len > n->size && ftruncate(fd, (off_t)n->size) < 0)
        return -errno;
    n->stale = false;
    return 0;
}

/* A write of [off, end) is done (lock held): see write_begin. */
static void write_end(import_mgr *m, node *n)
{
    if (--n->wr_inflight == 0 && n->stale)
        pthread_cond_broadcast(&m->space_cond); /* an unstale() may wait */
}

/* Before writing [off, end) of n through fd. Backpressure: before the
 * spool file grows to `end` bytes, waits while the cache holds cache_max
 * and in-flight work can free some of it; then counts the growth. When
 * nothing can free space (every byte belongs to files being written or
 * kept), the write goes on beyond the limit: only the disk itself then
 * says ENOSPC. A write past the end of a recycled file cuts the earlier
 * file's bytes first (the gap must read as zeros). On success the write is
 * in flight until write_end. */
static int write_begin(import_mgr *m, node *n, int fd, uint64_t off, uint64_t end)
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
    if (rc == 0 && n->stale && off > n->size)
        rc = unstale(m, n, fd);
    if (rc == 0 && end > n->spool_bytes)
        imp_spool_account(m, n, end);
    if (rc == 0)
        n->wr_inflight++;
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
    store_st *st = imp_store_get(m, store);
    int rc = st ? check_parent(m, st, rel) : -ENOMEM;
    node *existing = rc == 0 ? find(m, st, rel) : NULL;
    pthread_mutex_unlock(&m->lock);
    if (rc < 0)
        return rc;
    if (existing) /* raced with another create: open it like O_CREAT without O_EXCL */
        return existing->is_dir ? -EISDIR : import_open(m, store, rel, O_RDWR | O_TRUNC, fh);

    if ((rc = cache_wait_room(m)) < 0)
        return rc;
    char id[SPOOL_ID_LEN + 1];
    uint64_t old_len;
    int fd = spool_create(m->sp, id, &old_len);
    if (fd < 0)
        return fd;
    pthread_mutex_lock(&m->lock);
    node *n = NULL;
    handle *h = NULL;
    if (imp_name_find(m, st, rel))
        rc = -EEXIST;
    else if (!(n = imp_node_new(m, st, rel, false, mode)))
        rc = -ENOMEM;
    if (rc == 0) {
        memcpy(n->id, id, sizeof n->id); /* state ST_NEW, as imp_node_new makes it */
        n->has_spool = true;
        n->stale = old_len > 0; /* written over; cut at acceptance */
        n->stale_len = old_len;
        n->dirty = true;
        n->seq = true; /* empty: the first write at 0 appends */
        h = handle_new(n, fd, true);
        if (!h) {
            imp_node_free(n);
            rc = -ENOMEM;
        } else {
            imp_list_add(m, n);
            imp_name_insert(m, n);
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
    n->stale = false;
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
            imp_stream_drop(m, n, "truncated");
            n->stale = false;
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
    int rc = write_begin(m, h->n, h->fd, (uint64_t)off, (uint64_t)off + size);
    if (rc < 0) {
        pthread_mutex_lock(&m->lock);
        log_error("import: %s/%s: write to the spool file failed: %s", h->n->st->name, h->n->path,
                  strerror(-rc));
        h->n->io_err = rc;
        h->n->dirty = true;
        h->n->checked = false;
        pthread_mutex_unlock(&m->lock);
        return rc;
    }
    ssize_t n = pwrite(h->fd, buf, size, off);
    while (n < 0 && errno == ENOSPC && (rc = cache_wait_freed(m)) == 0)
        n = pwrite(h->fd, buf, size, off); /* the disk is full: uploads free it */
    if (n < 0 && rc < 0)
        errno = -rc;
    if (n < 0) {
        int e = errno;
        pthread_mutex_lock(&m->lock);
        write_end(m, h->n);
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
    write_end(m, nd);
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
    handle *h = (handle *)(uintptr_t)fh;
    if (size > INT32_MAX)
        size = INT32_MAX;
    /* A recycled spool file not cut yet: the earlier file's bytes beyond
     * the size are not this file's. */
    pthread_mutex_lock(&m->lock);
    uint64_t lim = h->n->stale ? h->n->size : UINT64_MAX;
    pthread_mutex_unlock(&m->lock);
    if ((uint64_t)off >= lim)
        return 0;
    if (size > lim - (uint64_t)off)
        size = (size_t)(lim - (uint64_t)off);
    ssize_t n = pread(h->fd, buf, size, off);
    return n < 0 ? -errno : (int)n;
}

/* Rejects a file that failed validation: it disappears. */
static void reject(import_mgr *m, node *n)
{
    if (!n->visible)
        return;
    if (n->state == ST_NEW) {
        imp_name_remove(m, n);
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

/* The path of a remembered file with the same instance (into ctx). */
static int other_cb(void *ctx, const index_entry *e)
{
    snprintf(ctx, 300, "%s", e->path);
    return 0;
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
    /* Before the sync, the check and the record: the spool file then holds
     * exactly this content (also after a crash, and for the uploader). */
    int rc = n->stale ? unstale(m, n, h->fd) : 0;
    if (rc < 0) {
        rc = check_failed(n, rc, "cannot cut the spool file to its size (%s)", strerror(-rc));
        pthread_mutex_unlock(&m->lock);
        return rc;
    }
    pthread_mutex_unlock(&m->lock);
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
    int drc = rc == 0 ? dicom_parse_fd(h->fd, &info, why, sizeof why) : CERR_OK;
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
    if (drc != CERR_OK) {
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
        if (prev_state == ST_NEW)
            imp_node_to(m, n, ST_NEW, 0); /* back: reject() drops a new file */
        reject(m, n);
        pthread_mutex_unlock(&m->lock);
        return rc;
    }
    if (n->b)
        n->b->last_accept = util_now_s();
    n->st->bytes_spooled += n->size;
    imp_sop_insert(m, n);
    node *dup = m->cfg.upload_present ? NULL : imp_sop_other(m, n);
    char other[300] = "";
    if (!dup && !m->cfg.upload_present && m->ix && n->sop[0])
        index_find_sop(m->ix, n->st->name, n->sop, n->path, other_cb, other);
    if (dup || *other) {
        /* Duplicates within a copy are known now: the import would keep
         * only one of them anyway. */
        char why[600];
        snprintf(why, sizeof why, "%s (SOP Instance UID %s) has this instance",
                 dup ? (dup->visible ? dup->path : "a file copied before") : other, n->sop);
        imp_node_present(m, n, why);
    } else if (!up_stream_accepted(m, n, n->size)) {
        /* A stream that sent this very content finishes the upload;
         * otherwise the workers upload the spool file. */
        imp_enqueue(m, n);
    }
    imp_kick(m); /* a new file: the quiet period starts again */
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
            imp_stream_drop(m, n, "closed without being accepted");
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
        imp_enqueue(m, n); /* it was held back while open for writing */
    imp_node_maybe_free(m, n);
    imp_kick(m);
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
        pthread_mutex_lock(&m->lock);
        int urc = h->n->stale ? unstale(m, h->n, h->fd) : 0; /* growing: zeros, not the old bytes */
        pthread_mutex_unlock(&m->lock);
        if (urc < 0 || ftruncate(h->fd, size) < 0) {
            int e = urc < 0 ? -urc : errno;
            pthread_mutex_lock(&m->lock);
            h->n->io_err = -e;
            h->n->dirty = true;
            h->n->checked = false;
            pthread_mutex_unlock(&m->lock);
            return -e;
        }
        pthread_mutex_lock(&m->lock);
        imp_spool_account(m, h->n, (uint64_t)size);
        imp_stream_drop(m, h->n, "truncated");
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
    /* Remembered files below it move in the index (nodes of them in
     * memory are rewritten to the same rows below). */
    int rc = m->ix ? index_move_tree(m->ix, d->st->name, d->path, to) : 0;
    if (rc < 0)
        return rc;
    /* Children first, while d->path is still the old prefix. */
    for (node *n = imp_all_first(m); n; n = imp_all_next(m, n)) {
        if (!n->visible || n->st != d->st || !is_below(n->path, d->path))
            continue;
        char *np = util_asprintf("%s%s", to, n->path + fl);
        if (!np)
            return -ENOMEM;
        imp_name_remove(m, n);
        free(n->path);
        n->path = np;
        imp_name_insert(m, n);
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
    store_st *st = imp_store_find(m, store);
    node *src = st ? find(m, st, from) : NULL;
    int rc = src ? check_parent(m, st, to) : -ENOENT;
    node *dst = rc == 0 ? find(m, st, to) : NULL;
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
            if (!dir_empty(m, st, to))
                rc = -ENOTEMPTY;
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
            imp_name_remove(m, src);
            if (!src->is_dir)
                imp_node_unindex(m, src); /* its row is under the old name */
            free(src->path);
            src->path = np;
            np = NULL;
            imp_name_insert(m, src);
            clock_gettime(CLOCK_REALTIME, &src->ctime);
            rc = imp_node_journal(m, src);
            imp_node_maybe_free(m, src);
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
    imp_kick(m);
    pthread_mutex_unlock(&m->lock);
    return rc == 0 ? journal_settle(m) : rc;
}

static const char *state_name(const node *n)
{
    return n->state == ST_UPLOADED   ? (node_importing(n) ? "importing" : "uploaded")
           : n->state == ST_IMPORTED ? "imported"
           : n->state == ST_PRESENT  ? "present"
           : n->state == ST_FAILED   ? "failed"
                                     : "pending";
}

int import_state(import_mgr *m, const char *store, const char *rel, char *out, size_t outlen)
{
    pthread_mutex_lock(&m->lock);
    store_st *st = imp_store_find(m, store);
    node *n = *rel && st ? imp_name_find(m, st, rel) : NULL;
    peek_ctx c = {.state = out, .statelen = outlen};
    int rc = !*rel ? -ENODATA
             : n   ? (n->is_dir ? -ENODATA : 0)
             : st  ? peek(m, store, rel, &c)
                   : -ENOENT;
    if (rc == 0 && n)
        snprintf(out, outlen, "%s", state_name(n));
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

/* The one path of utimens/chmod/chown: apply changes the node under the
 * lock, then its ctime, its journal record (written now, so it survives a
 * daemon kill; made durable by the next sync point: an fsync per call would
 * halve rsync's speed) and, for a remembered file, its way back to the
 * index only. */
static int set_attrs(import_mgr *m, const char *store, const char *rel,
                     void (*apply)(node *n, const void *arg), const void *arg)
{
    if (!*rel)
        return 0;
    int rc = -ENOENT;
    pthread_mutex_lock(&m->lock);
    node *n = lookup(m, store, rel);
    if (n) {
        apply(n, arg);
        clock_gettime(CLOCK_REALTIME, &n->ctime);
        rc = imp_node_journal(m, n);
        imp_node_maybe_free(m, n);
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}

static void apply_times(node *n, const void *arg)
{
    const struct timespec *tv = arg;
    if (tv) {
        apply_time(&n->atime, &tv[0]);
        apply_time(&n->mtime, &tv[1]);
    } else {
        clock_gettime(CLOCK_REALTIME, &n->mtime);
        n->atime = n->mtime;
    }
}

int import_utimens(import_mgr *m, const char *store, const char *rel, const struct timespec tv[2])
{
    return set_attrs(m, store, rel, apply_times, tv);
}

static void apply_mode(node *n, const void *arg)
{
    n->mode = *(const mode_t *)arg & 07777;
}

int import_chmod(import_mgr *m, const char *store, const char *rel, mode_t mode)
{
    return set_attrs(m, store, rel, apply_mode, &mode);
}

struct owner {
    uid_t uid;
    gid_t gid;
};

static void apply_owner(node *n, const void *arg)
{
    const struct owner *o = arg;
    if (o->uid != (uid_t)-1)
        n->uid = o->uid;
    if (o->gid != (gid_t)-1)
        n->gid = o->gid;
}

int import_chown(import_mgr *m, const char *store, const char *rel, uid_t uid, gid_t gid)
{
    struct owner o = {uid, gid};
    return set_attrs(m, store, rel, apply_owner, &o);
}
