/* uploader: the background side of import/ — worker threads that upload
 * and delete staged objects, and one coordinator thread that commits
 * batches and follows their operations.
 *
 * - Workers (`uploads` threads) take files from a queue. An ACCEPTED file is
 *   uploaded from its spool file (streamed, no copy) with gcs_upload_fd to
 *   gs://BUCKET/PREFIX/batches/BATCH/ID.dcm and marked UPLOADED in the
 *   journal. The client retries transient errors itself; if an upload still
 *   fails the file stays ACCEPTED and is tried again later with backoff (up
 *   to 60 s), never dropped. A permanent error (HTTP 400/403/404) marks it
 *   FAILED with the reason. Workers also delete staged objects of withdrawn,
 *   failed and imported files (up to GCS_BATCH_MAX per batch request when
 *   several are queued: see "batched deletes"), and the spool files of
 *   imported ones.
 * - A batch is the set of files of one store accepted since its last
 *   commit. When commit_delay seconds passed without a new accepted file
 *   (nor a write to any file of the store: a file still being copied keeps
 *   its batch open, so one long cp stays one import) and
 *   every file of the batch is uploaded (none open for writing), the batch
 *   is sealed (journaled) and ONE dicomStores.import of
 *   gs://BUCKET/PREFIX/batches/BATCH/ + "**" is started. Its operation name is
 *   journaled (and listed in STORE/operations/) before anything depends on
 *   it. At most `imports` operations of a store run at once (tick_open): while
 *   they run, the open batch gathers files and closes to new ones as soon
 *   as a slot frees; a batch reaching batch_max files or bytes closes at
 *   once; a closed batch seals when its uploads are done and starts when a
 *   slot is free. The operation is polled from 0.05 s, x1.25 up to 1 s. Done without error:
 *   the files are IMPORTED (still listed), their staged objects deleted.
 * - Spool release (JOB_RELEASE): once a file is UPLOADED (size and CRC32C
 *   verified by the upload), PRESENT or IMPORTED and nobody writes it, its
 *   spool file goes: the journal record saying so is synced first
 *   (release_spool), so a restart goes on from the staged object.
 * - Present (check_present): before an upload, the store's instances of
 *   the file's study are fetched once (DICOMweb search, paged; cached in
 *   present.c until the store's next import ends); a file already there is
 *   PRESENT and not uploaded.
 *   Done with an error (or a failure counter): the API does not say which
 *   file failed, so each file's SOP Instance UID is looked up with a
 *   DICOMweb search: found = IMPORTED, missing = FAILED with the operation's
 *   error message. An import that cannot start for a transient reason is
 *   retried with backoff (import ignores instances already stored, so
 *   repeating it is safe); a permanent refusal (400/403/404) fails the
 *   batch's files with the reason.
 * - Streaming (large files, uploaded while written). A file qualifies
 *   while every write so far appended at its end from offset 0 (node seq /
 *   seq_end; no writeback cache, so a cp's writes arrive in order), it is
 *   not accepted yet (ST_NEW), its spool file has "DICM" at offset 128 and
 *   stream_min_mib (import_config; 0 = never) are
 *   written; at most STREAM_MAX (4) stream at once,
 *   and a file streams at most once. Then it joins the store's open batch
 *   (its object name is fixed; the batch cannot seal while the file is
 *   unfinished) and a thread of its own opens a resumable session of unknown
 *   size (gcs_stream_begin) and sends chunks of 16-32 MiB, multiples of
 *   256 KiB, straight from the spool file, woken by writes (up_stream_wrote).
 *   When validate() accepts the file and the accepted size equals what was
 *   appended with no other write in between (up_stream_accepted), the file
 *   becomes busy, like a worker's upload job, and the thread sends the rest
 *   (chunks, then the final one with the total size) and checks size and
 *   CRC32C (summed over the bytes as sent) like any upload; success = UPLOADED
 *   when the file's generation is still the accepted one, else the workers
 *   upload it again as after any upload of a stale generation. Anything else
 *   abandons the stream (imp_stream_drop): a write below the streamed end,
 *   a truncate, the last writer closing without acceptance, unlink, rename
 *   onto it, rejection, failure, a session error (transient errors are
 *   retried by asking the server what it holds). Its session is cancelled
 *   (DELETE; no object exists before the final chunk), a not-yet-accepted
 *   file leaves the batch, and it is uploaded after acceptance as any
 *   other. A stream whose writer went idle for commit_delay + 2 s while
 *   other files of its batch wait also lets go, so one stalled writer does
 *   not hold back a batch. A failed final chunk leaves the file ACCEPTED
 *   (staged, as an object may exist): the workers upload it again to the
 *   same name. Memory: no file data is held; chunks are read from the
 *   spool file by the http layer.
 * - Restart: the journal is reloaded; ACCEPTED files are uploaded again
 *   (also those that were streaming: their sessions just expire), UPLOADED ones continue their
 * batch (the quiet period starts again), sealed batches start their import, importing batches
 * resume polling their operation. An ACCEPTED file whose spool file is gone becomes FAILED with a
 * loud error.
 */
#include "adopt.h"
#include "failpolicy.h"
#include "import_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

enum job { JOB_NONE, JOB_UPLOAD, JOB_DELETE, JOB_RELEASE };

#define RETRY_MAX_S 60.0
#define JFLUSH_S 0.05 /* journal fsync period (when it changed) */
#define POLL_MAX_S 1.0
#define POLL_FIRST_S 0.05 /* first operation poll; x1.25 up to POLL_MAX_S */
#define POLL_GROWTH 1.25
#define UP_AUTO_START 16 /* adaptive upload concurrency (no uploads=N) */
#define UP_AUTO_MIN 4
#define UP_AUTO_MAX 64
/* The coordinator's scan of every file is O(files): it is kicked at every
 * close and every finished upload, so ticks are spaced at least this much
 * (otherwise N files cost N scans of N files). */
#define TICK_MIN_S 0.05
#define TICK_SHARE 20 /* ticks take at most 1/20 of the coordinator's time */

static enum job job_for(const node *n, double now)
{
    if (!n->listed || n->is_dir || n->retry_at > now)
        return JOB_NONE;
    bool settled = !n->dirty && n->writers == 0 && !n->releasing;
    switch (n->state) {
    case ST_ACCEPTED:
        return settled && n->b ? JOB_UPLOAD : JOB_NONE;
    case ST_WITHDRAWN:
        return JOB_DELETE; /* (the staged object if any, then the record) */
    case ST_IMPORTED:
        /* The staged object goes; the file stays listed (remembered) unless
         * it was unlinked meanwhile. */
        if (n->staged)
            return JOB_DELETE;
        return n->has_spool && settled ? JOB_RELEASE : !n->visible ? JOB_DELETE : JOB_NONE;
    case ST_UPLOADED:
    case ST_PRESENT:
        /* The staged object (verified size and CRC32C) or the store is the
         * copy of record: the spool space is released (and a present file's
         * staged object, if a stream left one, deleted). */
        if (n->state == ST_PRESENT && n->staged)
            return JOB_DELETE;
        return n->has_spool && settled                 ? JOB_RELEASE
               : n->state == ST_PRESENT && !n->visible ? JOB_DELETE
                                                       : JOB_NONE;
    case ST_FAILED:
        return n->staged ? JOB_DELETE : JOB_NONE;
    default:
        return JOB_NONE;
    }
}

static node *dequeue(import_mgr *m)
{
    node *n = m->qhead;
    if (n) {
        m->qhead = n->qnext;
        if (!m->qhead)
            m->qtail = NULL;
        n->qnext = NULL;
        n->queued = false;
    }
    return n;
}

/* ------------------------------------------------------------- pausing */

/* Length of the part of a cause that names its kind (up to the first
 * "(" or ":"): the same kind is logged once, not once per file. */
static size_t cause_kind_len(const char *cause)
{
    return strcspn(cause, "(:");
}

/* The store's background work waits for cause (lock held): STORE/status
 * shows it; the log gets one line per new kind of cause. Its files keep
 * their state and are retried with backoff (failpolicy.h). */
static void store_pause(store_st *st, const char *cause)
{
    size_t k = cause_kind_len(cause);
    bool same = st->paused && cause_kind_len(st->paused) == k && strncmp(st->paused, cause, k) == 0;
    if (!same)
        log_error("import: %s: paused: %s", st->name, cause);
    char *c = strdup(cause);
    if (c) {
        free(st->paused);
        st->paused = c;
    }
}

/* A call for the store succeeded (lock held): the pause is over. */
static void store_resume(store_st *st)
{
    if (!st->paused)
        return;
    log_info("import: %s: resumed: the server accepts our work again", st->name);
    free(st->paused);
    st->paused = NULL;
}

/* Pauses the store for a failed call (lock held). */
static void store_pause_http(import_mgr *m, store_st *st, const cerr_detail *e, const char *what)
{
    char cause[900];
    fp_http_cause(e, what, m->bucket, cause, sizeof cause);
    store_pause(st, cause);
}

static void retry_later(node *n, double now)
{
    n->retry_at = now + n->backoff;
    n->backoff = n->backoff * 2 > RETRY_MAX_S ? RETRY_MAX_S : n->backoff * 2;
}

typedef struct job_ctx {
    enum job kind;
    char *object;
    char id[SPOOL_ID_LEN + 1];
    uint64_t gen;
    bool staged;
    char *label; /* "STORE/PATH" for log lines */
} job_ctx;

static int do_upload(import_mgr *m, job_ctx *j, uint64_t *size, cerr_detail *err)
{
    memset(err, 0, sizeof *err);
    int fd = spool_open_file(m->sp, j->id, O_RDONLY);
    if (fd < 0) {
        snprintf(err->message, sizeof err->message, "spool file %s: %s", j->id, strerror(-fd));
        return fd == -ENOENT ? -ENOENT : -EIO;
    }
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        close(fd);
        return -EIO;
    }
    *size = (uint64_t)sb.st_size;
    gcs_object obj;
    memset(&obj, 0, sizeof obj);
    int rc = gcs_upload_fd(m->gcs, m->bucket, j->object, fd, *size, "application/dicom", &obj, err);
    gcs_object_clear(&obj);
    close(fd);
    return rc == CERR_OK ? 0 : -EAGAIN;
}

typedef struct uid_list {
    char **v;
    size_t n, cap;
    bool oom;
} uid_list;

static int collect_uid(void *ctx, const char *name, const char *json)
{
    (void)json;
    uid_list *l = ctx;
    if (!name || !*name)
        return 0;
    char **nv = util_grow(l->v, l->n, &l->cap, sizeof *nv, 64);
    if (!nv) {
        l->oom = true;
        return -1;
    }
    l->v = nv;
    if (!(l->v[l->n] = strdup(name))) {
        l->oom = true;
        return -1;
    }
    l->n++;
    return 0;
}

/* Fetches the SOP Instance UIDs of one study of the store (lock held on
 * entry and return, dropped meanwhile) into the present cache. */
static void fetch_study(import_mgr *m, const char *store_name, const char *study_uid)
{
    char *store = strdup(store_name);
    char *study = strdup(study_uid);
    char *path = util_asprintf("studies/%s/instances", study_uid);
    uint64_t token = present_begin(m->present, store_name, study_uid);
    pthread_mutex_unlock(&m->lock);
    uid_list l = {0};
    cerr_detail err;
    memset(&err, 0, sizeof err);
    int rc =
        store && study && path
            ? hc_dicomweb_search(m->hc, store, path, "includefield=00080018", collect_uid, &l, &err)
            : CERR_NOMEM;
    bool ok = rc == CERR_OK && !l.oom;
    if (!ok && rc == CERR_NOT_FOUND)
        ok = true; /* no such study: it holds nothing */
    if (!ok)
        log_warn("import: %s: cannot list the instances of study %s (HTTP %ld %s): its files are "
                 "uploaded without checking (the import keeps the stored copy of any duplicate)",
                 store_name, study_uid, err.http_status, err.message);
    pthread_mutex_lock(&m->lock);
    if (ok) {
        present_end(m->present, store, study, token, 1, l.v, l.n);
    } else {
        present_end(m->present, store, study, token, 0, l.v, l.n);
        /* remembered as "no such instance" until the store's next import
         * ends: a failing search must not be repeated for every file */
        token = present_begin(m->present, store, study);
        present_end(m->present, store, study, token, 1, NULL, 0);
    }
    pthread_cond_broadcast(&m->present_cond);
    free(path);
    free(study);
    free(store);
}

/* Before an upload (lock held, n busy): whether the store already holds
 * n's instance; then n is marked present and not uploaded. One search per
 * study (cached); a file that changed meanwhile is left to its next job. */
static bool check_present(import_mgr *m, node *n)
{
    if (m->cfg.upload_present || !n->study[0] || !n->sop[0])
        return false;
    uint64_t gen = n->gen;
    for (;;) {
        int r = present_lookup(m->present, n->st->name, n->study, n->sop);
        if (r == PRESENT_FETCHING && !m->stop) {
            pthread_cond_wait(&m->present_cond, &m->lock);
            continue;
        }
        if (r == PRESENT_UNKNOWN && !m->stop) {
            fetch_study(m, n->st->name, n->study);
            if (n->gen != gen || n->state != ST_ACCEPTED || n->dirty)
                return false;
            continue;
        }
        if (r != PRESENT_YES)
            return false;
        char why[160];
        snprintf(why, sizeof why, "the store already holds SOP Instance UID %s", n->sop);
        imp_node_present(m, n, why);
        return true;
    }
}

static void upload_done(import_mgr *m, node *n, job_ctx *j, int rc, uint64_t size,
                        const cerr_detail *err, double now)
{
    if (rc == 0) {
        store_resume(n->st);
        n->staged = true;
        n->backoff = 1;
        if (n->state == ST_ACCEPTED && n->gen == j->gen && !n->dirty)
            imp_node_to(m, n, ST_UPLOADED, size);
        else
            imp_node_journal(m, n); /* staged: an object to delete if withdrawn */
        return;
    }
    if (n->state != ST_ACCEPTED)
        return; /* withdrawn meanwhile: nothing to retry */
    if (rc == -ENOENT) {
        imp_node_fail(m, n, "the spool file disappeared from the cache: %s", err->message);
        return;
    }
    /* Never a reason to fail the file: nothing in an upload's refusal is
     * about the file's content (it passed validation at close). */
    char what[600];
    snprintf(what, sizeof what, "uploading to gs://%s/%s", m->bucket, j->object);
    store_pause_http(m, n->st, err, what);
    log_warn("import: %s: upload to gs://%s/%s failed (HTTP %ld %s), retrying in %.0f s", j->label,
             m->bucket, j->object, err->http_status, err->message, n->backoff);
    retry_later(n, now);
}

/* The end of a release (lock held, n busy, its release record durable):
 * the spool file goes (recycled unless someone reads the file through it)
 * and n is no longer busy; n may be freed. */
static void release_finish(import_mgr *m, node *n)
{
    bool recycle = n->refs == 0; /* nobody reads the file through it */
    pthread_mutex_unlock(&m->lock);
    if (recycle)
        spool_recycle(m->sp, n->id); /* its inode serves a later file */
    else
        spool_remove(m->sp, n->id); /* open for reading: keep its content */
    pthread_mutex_lock(&m->lock);
    n->releasing = false;
    imp_spool_account(m, n, 0);
    if (!n->visible && (n->state == ST_IMPORTED || n->state == ST_PRESENT) && !n->staged)
        imp_node_unlist(m, n); /* unlinked meanwhile: forgotten */
    else
        imp_node_settle(m, n);
    n->busy = false;
    if (job_for(n, util_now_s()) != JOB_NONE)
        imp_enqueue(m, n);
    imp_node_maybe_free(m, n);
    imp_kick(m);
}

/* Hands n to the journal flusher (lock held); false when it is not running
 * (stopping) or out of memory. Writers waiting for cache space wake it at
 * once. */
static bool release_defer(import_mgr *m, node *n)
{
    if (!m->rel_on)
        return false;
    node **v = util_grow(m->rel_v, m->rel_n, &m->rel_cap, sizeof *v, 64);
    if (!v)
        return false;
    m->rel_v = v;
    m->rel_v[m->rel_n++] = n;
    if (m->writers_waiting > 0)
        pthread_cond_signal(&m->jflush_cond);
    return true;
}

/* Releases n's spool space (lock held, n busy; n is no longer the caller's
 * afterwards): the record saying the spool file is no longer needed is made
 * durable first, so a crash after the removal never finds an accepted file
 * without its data; a crash before it leaves a stray spool file, removed at
 * the next start. The journal flusher makes it durable with every other
 * record of its period (one fdatasync per JFLUSH_S, not one per file: 5% of
 * the client's CPU per 512 KiB file here, and a journal commit each on a
 * journalled ext4) and then finishes the release. */
static void release_spool(import_mgr *m, node *n)
{
    n->has_spool = false;
    n->releasing = true;
    imp_node_journal(m, n);
    if (release_defer(m, n))
        return;
    pthread_mutex_unlock(&m->lock);
    journal_sync(m->j);
    pthread_mutex_lock(&m->lock);
    release_finish(m, n);
}

/* One journal sync, then the releases that waited for it (lock held). */
static void flush_and_release(import_mgr *m)
{
    node **v = m->rel_v;
    size_t n = m->rel_n;
    m->rel_v = NULL;
    m->rel_n = m->rel_cap = 0;
    pthread_mutex_unlock(&m->lock);
    journal_sync(m->j); /* covers every record written before: theirs too */
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < n; i++)
        release_finish(m, v[i]);
    free(v);
}

int up_fetch_copy(import_mgr *m, const char *object, bool staged, const char *store,
                  const char *study, const char *series, const char *sop, int fd)
{
    cerr_detail err;
    memset(&err, 0, sizeof err);
    uint64_t written = 0;
    if (staged &&
        gcs_download_fd(m->gcs, m->bucket, object, 0, 0, fd, 0, &written, &err) == CERR_OK)
        return 0;
    /* Imported meanwhile (its staged object deleted), or imported/present. */
    if (ftruncate(fd, 0) < 0)
        return -errno;
    if (!*study || !*series || !*sop)
        return -ENOENT;
    memset(&err, 0, sizeof err);
    int rc = hc_dicomweb_retrieve_instance(m->hc, store, study, series, sop, fd, &written, &err);
    if (rc != CERR_OK)
        log_warn("import: reading back %s from the store failed (HTTP %ld %s)", sop,
                 err.http_status, err.message);
    return rc == CERR_OK ? 0 : -EIO;
}

static void delete_done(import_mgr *m, node *n, int rc, const cerr_detail *err, double now)
{
    if (rc != 0 && err->http_status != 404) {
        log_warn("import: %s/%s: cannot delete staged object (HTTP %ld %s), retrying", n->st->name,
                 n->path ? n->path : "", err->http_status, err->message);
        retry_later(n, now);
        return;
    }
    n->staged = false;
    bool remembered = n->state == ST_IMPORTED || n->state == ST_PRESENT;
    if (n->state == ST_WITHDRAWN || (remembered && !n->visible && !n->has_spool)) {
        imp_node_unlist(m, n); /* withdrawn, or unlinked after its import */
    } else {
        imp_node_journal(m, n);
        imp_node_settle(m, n);
    }
}

/* ------------------------------------------------------------- batched deletes */

/* After an import, every file of the batch wants its staged object deleted:
 * a worker that takes such a delete job takes up to GCS_BATCH_MAX - 1 more
 * from the queue (they sit together: the import's end queued them) and
 * deletes them with ONE batch request instead of one request each. Only
 * the request changes: each file's result goes through delete_done, so the
 * journal records and what a crash repeats are those of single deletes. */
#define DEL_SCAN_MAX (4 * GCS_BATCH_MAX) /* queue entries looked at per batch */

static bool wants_staged_delete(const node *n, double now)
{
    return !n->busy && n->staged && job_for(n, now) == JOB_DELETE;
}

/* Moves queued staged-delete files after first into v (first is v[0]),
 * marking them busy; returns the count (lock held). */
static size_t gather_deletes(import_mgr *m, node *first, node **v, double now)
{
    size_t k = 0, scanned = 0;
    v[k++] = first;
    node *prev = NULL, *x = m->qhead;
    while (x && k < GCS_BATCH_MAX && scanned++ < DEL_SCAN_MAX) {
        node *next = x->qnext;
        if (wants_staged_delete(x, now)) {
            if (prev)
                prev->qnext = next;
            else
                m->qhead = next;
            if (m->qtail == x)
                m->qtail = prev;
            x->qnext = NULL;
            x->queued = false;
            x->busy = true;
            v[k++] = x;
        } else {
            prev = x;
        }
        x = next;
    }
    return k;
}

/* A batch the server answered without doing it (400/404/405, another
 * status, or an answer not of the batch shape: no batch endpoint there)
 * falls back to single deletes; a transient failure (network, 429, 5xx,
 * the token) would fail those too, so it is retried later instead. */
static bool batch_unsupported(int rc)
{
    return rc == CERR_INVALID || rc == CERR_NOT_FOUND || rc == CERR_SERVER ||
           rc == CERR_MALFORMED || rc == CERR_UNSUPPORTED;
}

/* Per-file outcome of a batch (unlocked): 2xx and 404 are done, others get
 * rc -EIO with err[i] saying why. */
static void run_delete_batch(import_mgr *m, char **names, size_t k, int *rc, cerr_detail *err)
{
    long status[GCS_BATCH_MAX];
    cerr_detail whole;
    memset(&whole, 0, sizeof whole);
    int brc = gcs_delete_batch(m->gcs, m->bucket, (const char *const *)names, k, status, &whole);
    bool single = brc != CERR_OK && batch_unsupported(brc);
    if (single)
        log_info("import: batch delete of %zu staged objects refused (HTTP %ld %s); deleting "
                 "them one by one",
                 k, whole.http_status, whole.message);
    for (size_t i = 0; i < k; i++) {
        memset(&err[i], 0, sizeof err[i]);
        if (single) {
            rc[i] = gcs_delete(m->gcs, m->bucket, names[i], &err[i]) == CERR_OK ? 0 : -EIO;
        } else if (brc != CERR_OK) {
            rc[i] = -EIO;   /* retried with backoff, as a failed single delete */
            err[i] = whole; /* never 404: that one is batch_unsupported */
        } else if ((status[i] >= 200 && status[i] < 300) || status[i] == 404) {
            rc[i] = 0;
        } else {
            rc[i] = -EIO;
            err[i].http_status = status[i];
            snprintf(err[i].message, sizeof err[i].message, "%s in a batch delete",
                     status[i] ? "error status" : "no answer");
        }
    }
}

/* One worker job deleting the staged objects of v[0..k) (lock held on
 * entry and exit; every v[i] busy). */
static void delete_batch_job(import_mgr *m, node **v, size_t k)
{
    char *names[GCS_BATCH_MAX];
    int rc[GCS_BATCH_MAX];
    cerr_detail *err = calloc(k, sizeof *err);
    bool ok = err != NULL;
    for (size_t i = 0; i < k; i++) {
        names[i] = imp_object_name(m, v[i]);
        ok = ok && names[i];
    }
    m->active++;
    pthread_mutex_unlock(&m->lock);
    if (ok)
        run_delete_batch(m, names, k, rc, err);
    pthread_mutex_lock(&m->lock);
    m->active--;
    double now = util_now_s();
    cerr_detail nomem = {.message = "out of memory"};
    for (size_t i = 0; i < k; i++) {
        node *n = v[i];
        delete_done(m, n, ok ? rc[i] : -ENOMEM, ok ? &err[i] : &nomem, now);
        n->busy = false;
        if (job_for(n, now) != JOB_NONE)
            imp_enqueue_self(m, n);
        imp_node_maybe_free(m, n);
        free(names[i]);
    }
    free(err);
    if (k > 1)
        pthread_cond_broadcast(&m->work_cond); /* re-queued files need workers */
    imp_kick(m);
}

/* Uploads are background work: on a busy machine the threads serving the
 * copy into import/ (and the copying program) come first, so cp runs at
 * disk speed and the uploads use what is left (on a real network they wait
 * for the network anyway). Linux applies nice per thread. Only the threads
 * that move data: the coordinator and the journal flusher use little CPU
 * but hold the import lock that the FUSE threads take, so they keep the
 * FUSE threads' priority (no waiting behind a preempted low-priority
 * holder). upload_nice=0 leaves them all as they are. */
static void lower_priority(const import_mgr *m)
{
    if (m->cfg.upload_nice > 0 &&
        setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), m->cfg.upload_nice) < 0)
        log_debug("import: cannot lower the upload threads' priority: %s", strerror(errno));
}

/* One upload ended: upconc learns from it (a queue still holding work means
 * the limit was the bound); workers waiting at a raised limit are woken. */
static void adapt_concurrency(import_mgr *m, double now, uint64_t size)
{
    int before = upconc_limit(m->conc);
    upconc_done(m->conc, now, size, m->qhead != NULL);
    if (!m->qhead && m->active == 0)
        upconc_idle(m->conc);
    if (upconc_limit(m->conc) > before)
        pthread_cond_broadcast(&m->work_cond);
}

static void *worker_main(void *arg)
{
    import_mgr *m = arg;
    pthread_setname_np(pthread_self(), "dfs-upload"); /* for top -H, ps -L */
    lower_priority(m);
    pthread_mutex_lock(&m->lock);
    while (!m->stop) {
        node *n = m->active < upconc_limit(m->conc) ? dequeue(m) : NULL;
        if (!n) {
            pthread_cond_wait(&m->work_cond, &m->lock);
            continue;
        }
        double now = util_now_s();
        job_ctx j = {.kind = job_for(n, now)};
        if (j.kind == JOB_NONE) {
            imp_node_maybe_free(m, n);
            continue;
        }
        n->busy = true;
        if (j.kind == JOB_DELETE && n->staged) {
            node *v[GCS_BATCH_MAX];
            size_t k = gather_deletes(m, n, v, now);
            if (k > 1) {
                delete_batch_job(m, v, k);
                continue;
            }
        }
        if (j.kind == JOB_UPLOAD && check_present(m, n)) {
            n->busy = false;
            if (job_for(n, util_now_s()) != JOB_NONE)
                imp_enqueue_self(m, n);
            imp_node_maybe_free(m, n);
            imp_kick(m);
            continue;
        }
        if (j.kind == JOB_UPLOAD && job_for(n, util_now_s()) != JOB_UPLOAD) {
            n->busy = false; /* changed while its study was fetched */
            if (job_for(n, util_now_s()) != JOB_NONE)
                imp_enqueue_self(m, n);
            imp_node_maybe_free(m, n);
            continue;
        }
        j.object = imp_object_name(m, n);
        j.label = util_asprintf("%s/%s", n->st->name, n->path ? n->path : "");
        memcpy(j.id, n->id, sizeof j.id);
        j.gen = n->gen;
        j.staged = n->staged;
        m->active++;
        pthread_mutex_unlock(&m->lock);

        cerr_detail err;
        memset(&err, 0, sizeof err);
        uint64_t size = 0;
        int rc = 0;
        if (!j.object || !j.label)
            rc = -ENOMEM;
        else if (j.kind == JOB_UPLOAD)
            rc = do_upload(m, &j, &size, &err);
        else if (j.kind == JOB_RELEASE)
            rc = 0; /* done below, with the journal record first */
        else if (j.staged)
            rc = gcs_delete(m->gcs, m->bucket, j.object, &err) == CERR_OK ? 0 : -EIO;

        pthread_mutex_lock(&m->lock);
        now = util_now_s();
        m->active--;
        if (j.kind == JOB_UPLOAD && rc == 0)
            adapt_concurrency(m, now, size);
        /* Still busy while the result is applied, so that an unlist does
         * not free n under us. */
        if (j.kind == JOB_RELEASE) {
            release_spool(m, n); /* busy until the release is durable */
        } else {
            if (j.kind == JOB_UPLOAD)
                upload_done(m, n, &j, rc, size, &err, now);
            else
                delete_done(m, n, rc, &err, now);
            n->busy = false;
            if (job_for(n, now) != JOB_NONE)
                imp_enqueue_self(m, n);
            imp_node_maybe_free(m, n);
        }
        imp_kick(m);
        pthread_mutex_unlock(&m->lock);
        free(j.object);
        free(j.label);
        /* No journal_sync here: losing an UPLOADED or deleted record in a
         * crash only repeats an upload or a delete, and the flusher thread
         * (jflush_main) syncs the journal every JFLUSH_S (50 ms) when it
         * changed. An fsync per upload competed with the fsyncs close()
         * waits for. */
        pthread_mutex_lock(&m->lock);
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

/* ---------------------------------------------------------------- streaming */

/* A file being written into import/ is uploaded while it is written when it
 * qualifies (see the header comment): one thread per stream sends each
 * STREAM_CHUNK as soon as it is written, straight from the spool file. */
#define STREAM_CHUNK (16u << 20)   /* bytes waiting before a chunk is sent */
#define STREAM_MAX_PUT (32u << 20) /* largest request (an abandon waits for it) */
#define STREAM_MAX 4               /* concurrent streams; more files wait for close */
#define STREAM_IDLE_S 2.0          /* an idle open stream lets its batch go after this */

static void stream_free(upstream *s)
{
    pthread_cond_destroy(&s->cond);
    free(s->object);
    free(s->label);
    free(s);
}

/* Joins finished stream threads (lock held; a done thread no longer needs
 * the lock). */
static void streams_reap(import_mgr *m)
{
    for (upstream **pp = &m->streams; *pp;) {
        upstream *s = *pp;
        if (!s->done) {
            pp = &s->next;
            continue;
        }
        *pp = s->next;
        pthread_join(s->thr, NULL);
        stream_free(s);
    }
}

static int streams_active(import_mgr *m)
{
    int k = 0;
    for (upstream *s = m->streams; s; s = s->next)
        k += !s->done;
    return k;
}

/* The final chunk came back (lock held). The file was busy meanwhile, like
 * a worker's upload job: this is upload_done for a stream. */
static void stream_finished(import_mgr *m, upstream *s, int rc, const cerr_detail *err)
{
    node *n = s->n;
    s->n = NULL;
    if (!n)
        return;
    n->stream = NULL;
    n->busy = false;
    n->staged = true; /* even after an error the final chunk may have landed */
    double now = util_now_s();
    if (rc == CERR_OK && n->state == ST_ACCEPTED && n->gen == s->final_gen && !n->dirty) {
        imp_node_to(m, n, ST_UPLOADED, s->final_size);
        log_info("import: %s: streamed upload of %" PRIu64 " bytes done", s->label, s->final_size);
    } else if (rc != CERR_OK) {
        log_warn("import: %s: streamed upload to gs://%s/%s failed (HTTP %ld %s): uploading the "
                 "file again",
                 s->label, m->bucket, s->object, err->http_status, err->message);
    }
    imp_node_journal(m, n);
    if (job_for(n, now) != JOB_NONE)
        imp_enqueue(m, n);
    imp_node_maybe_free(m, n);
    imp_kick(m);
}

/* The session failed before the file was accepted (lock held): the file
 * goes on as if it never streamed. */
static void stream_failed(import_mgr *m, upstream *s, const cerr_detail *err)
{
    node *n = s->n;
    if (!n)
        return;
    log_warn("import: %s: streaming upload failed (HTTP %ld %s): the file is uploaded after it "
             "is closed",
             s->label, err->http_status, err->message);
    imp_stream_drop(m, n, NULL);
}

static void *stream_main(void *arg)
{
    upstream *s = arg;
    import_mgr *m = s->m;
    pthread_setname_np(pthread_self(), "dfs-stream");
    lower_priority(m); /* like the workers: the copy in comes first */
    cerr_detail err;
    memset(&err, 0, sizeof err);
    gcs_stream *gs = NULL;
    int rc = CERR_IO;
    bool final = false;
    int fd = spool_open_file(m->sp, s->id, O_RDONLY);
    if (fd < 0)
        snprintf(err.message, sizeof err.message, "spool file: %s", strerror(-fd));
    else
        rc = gcs_stream_begin(m->gcs, m->bucket, s->object, "application/dicom", &gs, &err);
    pthread_mutex_lock(&m->lock);
    while (rc == CERR_OK && !s->dropped && !m->stop) {
        uint64_t at = gcs_stream_offset(gs);
        if (s->finishing && s->final_size - at > STREAM_MAX_PUT) {
            /* The rest in chunks too: a request body beyond what a server
             * keeps in memory costs it a second copy (the emulator spools
             * bodies over 64 MiB to a file). */
            uint64_t end = at + STREAM_MAX_PUT;
            pthread_mutex_unlock(&m->lock);
            rc = gcs_stream_put(gs, fd, end, &err);
            pthread_mutex_lock(&m->lock);
            continue;
        }
        if (s->finishing) {
            uint64_t size = s->final_size;
            pthread_mutex_unlock(&m->lock);
            gcs_object obj;
            memset(&obj, 0, sizeof obj);
            rc = gcs_stream_finish(gs, fd, size, &obj, &err);
            gcs_object_clear(&obj);
            pthread_mutex_lock(&m->lock);
            stream_finished(m, s, rc, &err);
            final = rc == CERR_OK;
            break;
        }
        if (s->avail - at < STREAM_CHUNK) {
            pthread_cond_wait(&s->cond, &m->lock);
            continue;
        }
        uint64_t end = s->avail - at > STREAM_MAX_PUT ? at + STREAM_MAX_PUT : s->avail;
        pthread_mutex_unlock(&m->lock);
        rc = gcs_stream_put(gs, fd, end, &err);
        pthread_mutex_lock(&m->lock);
    }
    if (rc != CERR_OK && s->finishing)
        stream_finished(m, s, rc, &err); /* the workers upload it again */
    else if (rc != CERR_OK)
        stream_failed(m, s, &err);
    if (s->n) {
        /* Stopping: the file stays as it is (an accepted one is in the
         * journal and uploaded again at the next start). */
        s->n->stream = NULL;
        if (s->finishing)
            s->n->busy = false;
        s->n = NULL;
    }
    pthread_mutex_unlock(&m->lock);
    /* Not finalized: cancel the session, so nothing of it ever appears. */
    if (final)
        gcs_stream_free(gs);
    else
        gcs_stream_abort(gs);
    if (fd >= 0)
        close(fd);
    pthread_mutex_lock(&m->lock);
    s->done = true;
    imp_kick(m); /* the coordinator joins the thread */
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

/* Whether the spool file starts like DICOM Part 10 ("DICM" after the
 * 128-byte preamble): only such files are worth streaming. */
static bool looks_dicom(int fd)
{
    char magic[4];
    return pread(fd, magic, sizeof magic, 128) == (ssize_t)sizeof magic &&
           memcmp(magic, "DICM", 4) == 0;
}

static void stream_start(import_mgr *m, node *n, int fd)
{
    n->stream_tried = true; /* once per file, whatever happens */
    if (!looks_dicom(fd) || streams_active(m) >= STREAM_MAX)
        return;
    upstream *s = calloc(1, sizeof *s);
    if (!s)
        return;
    imp_assign_batch(m, n); /* the object name is fixed from now on */
    if (!n->b) {
        free(s);
        return;
    }
    s->m = m;
    s->n = n;
    memcpy(s->id, n->id, sizeof s->id);
    s->avail = n->seq_end;
    s->object = imp_object_name(m, n);
    s->label = util_asprintf("%s/%s", n->st->name, n->path ? n->path : "");
    pthread_cond_init(&s->cond, NULL);
    if (!s->object || !s->label || pthread_create(&s->thr, NULL, stream_main, s) != 0) {
        stream_free(s);
        n->b = NULL;
        n->bid[0] = '\0';
        return;
    }
    n->stream = s;
    s->next = m->streams;
    m->streams = s;
    log_info("import: %s: streaming upload to gs://%s/%s started (%" PRIu64 " bytes written)",
             s->label, m->bucket, s->object, s->avail);
}

void up_stream_wrote(import_mgr *m, node *n, int fd, uint64_t off, uint64_t len)
{
    upstream *s = n->stream;
    if (n->seq && off != n->seq_end)
        n->seq = false;
    if (!n->seq) {
        if (s)
            imp_stream_drop(m, n, "written out of order");
        return;
    }
    n->seq_end = off + len;
    if (s) {
        if (s->finishing)
            return; /* written after acceptance: n->gen tells the finish */
        uint64_t before = s->avail;
        s->avail = n->seq_end;
        if (s->avail / STREAM_CHUNK > before / STREAM_CHUNK)
            pthread_cond_signal(&s->cond);
        return;
    }
    int min_mib = m->cfg.stream_min_mib;
    if (m->gcs && !m->stop && min_mib > 0 && !n->stream_tried && n->state == ST_NEW && !n->io_err &&
        n->seq_end >= (uint64_t)min_mib << 20)
        stream_start(m, n, fd);
}

bool up_stream_accepted(import_mgr *m, node *n, uint64_t size)
{
    upstream *s = n->stream;
    if (!s || s->finishing)
        return false;
    if (!n->seq || n->seq_end != size || s->avail != size) {
        imp_stream_drop(m, n, "the accepted content is not what was streamed");
        return false;
    }
    s->finishing = true;
    s->final_size = size;
    s->final_gen = n->gen;
    n->busy = true; /* like a worker's upload job, until stream_finished */
    pthread_cond_signal(&s->cond);
    return true;
}

/* A B_OPEN batch whose only unfinished files are streams that stopped being
 * written (their writers idle for STREAM_IDLE_S past the quiet period) while
 * other files wait: the streams let go, so the batch commits without them. */
static void streams_release_idle(import_mgr *m, batch *b, double now)
{
    if (b->state != B_OPEN || b->n_streaming == 0 || b->n_uploaded == 0 ||
        b->n_pending != b->n_streaming ||
        now - b->last_accept < m->cfg.commit_delay_s + STREAM_IDLE_S)
        return;
    for (node *n = m->head; n; n = n->next)
        if (!n->is_dir && n->b == b && n->stream && n->state == ST_NEW)
            imp_stream_drop(m, n, "idle while other files of its batch wait");
    b->n_pending = 0;
    b->n_streaming = 0;
}

/* ---------------------------------------------------------------- batches */

static void batch_mark_imported(import_mgr *m, node *n)
{
    log_debug("import: %s/%s: imported", n->st->name, n->path ? n->path : "");
    /* The file stays listed (remembered: reruns skip it); its staged
     * object is deleted by a worker. */
    imp_node_to(m, n, ST_IMPORTED, 0);
}

static void seal(import_mgr *m, batch *b, double now)
{
    b->state = B_SEALED;
    b->next_try = now;
    b->backoff = 1;
    if (b->st->open == b)
        b->st->open = NULL;
    imp_batch_journal(m, b);
}

/* Starts the import of batch id, or adopts the operation of an earlier
 * start whose answer was lost (adopt.h); journals the operation (unlocked). */
static int start_or_adopt(import_mgr *m, const char *id, const char *store, const char *uri,
                          char **op, cerr_detail *err)
{
    if (!store || !uri)
        return CERR_NOMEM;
    time_t lost = adopt_intent_get(m->j, id);
    int found = lost ? adopt_lost_import(m->hc, m->j, store, lost, op, err) : 0;
    if (found < 0) /* cannot tell: do not start a second one */
        return err->cls ? err->cls : CERR_NOMEM;
    int rc = CERR_OK;
    if (!found) {
        if (adopt_intent_put(m->j, id, time(NULL)) != 0) {
            return cerr_set(err, CERR_IO, 0, "", "cannot journal the import start");
        }
        rc = hc_import(m->hc, store, uri, op, err);
    }
    if (rc == CERR_OK && *op)
        rc = journal_add_operation(m->j, store, *op, "import") == 0 ? CERR_OK : CERR_IO;
    /* Keep the intent while the start may have happened untracked. */
    if (rc == CERR_OK || (rc != CERR_IO && !adopt_maybe_started(rc)))
        adopt_intent_del(m->j, id);
    return rc;
}

static void start_import(import_mgr *m, batch *b)
{
    char *store = strdup(b->st->name);
    char *uri = util_asprintf("gs://%s/%s%sbatches/%s/**", m->bucket, m->prefix,
                              *m->prefix ? "/" : "", b->id);
    int n = b->n_uploaded;
    char id[sizeof b->id];
    memcpy(id, b->id, sizeof id);
    pthread_mutex_unlock(&m->lock);
    char *op = NULL;
    cerr_detail err;
    memset(&err, 0, sizeof err);
    int rc = start_or_adopt(m, id, store, uri, &op, &err);
    pthread_mutex_lock(&m->lock);
    double now = util_now_s();
    if (rc == CERR_OK && op) {
        b->op = op;
        op = NULL;
        b->state = B_IMPORTING;
        b->st->running++;
        b->next_try = now + POLL_FIRST_S;
        b->backoff = POLL_FIRST_S;
        b->prog_t = 0;
        b->near_end = false;
        imp_batch_journal(m, b);
        store_resume(b->st);
        log_info("import: %s: batch %s (%d file(s)) committed: %s", store, b->id, n, b->op);
    } else {
        /* Whatever the refusal, it is not about one file: the batch waits. */
        char what[600];
        snprintf(what, sizeof what, "starting the import of %s", uri ? uri : "the batch");
        store_pause_http(m, b->st, &err, what);
        log_warn("import: %s: cannot start the import of batch %s (HTTP %ld %s): retrying in "
                 "%.0f s",
                 store, b->id, err.http_status, err.message, b->backoff);
        b->next_try = now + b->backoff;
        b->backoff = b->backoff * 2 > RETRY_MAX_S ? RETRY_MAX_S : b->backoff * 2;
    }
    free(op);
    free(uri);
    free(store);
}

/* The batch is imported again (lock held): its operation vanished or
 * ended with an error that is not about the files. Its staged objects
 * stay; importing instances already stored changes nothing. */
static void reimport(import_mgr *m, batch *b, double now)
{
    free(b->op);
    b->op = NULL;
    free(b->op_error);
    b->op_error = NULL;
    b->verifying = false;
    b->reimport = false;
    b->state = B_SEALED;
    int shift = b->reimports < 6 ? b->reimports : 6;
    double wait = (double)(1 << shift);
    b->next_try = now + (wait > RETRY_MAX_S ? RETRY_MAX_S : wait);
    b->backoff = 1;
    b->reimports++;
    imp_batch_journal(m, b);
}

static int count_result(void *ctx, const char *name, const char *json)
{
    (void)name;
    (void)json;
    (*(int *)ctx)++;
    return 0;
}

/* Op finished with an error: which files are in the store? One search per
 * file; a search that fails leaves the rest for the next tick. */
static void verify(import_mgr *m, batch *b)
{
    int missing = 0;
    for (node *n = m->head; n;) {
        if (n->is_dir || n->b != b || n->state != ST_UPLOADED || n->busy) {
            n = n->next;
            continue;
        }
        char *store = strdup(b->st->name);
        char *q = util_asprintf("SOPInstanceUID=%s", n->sop);
        n->busy = true; /* keeps n alive while unlocked */
        pthread_mutex_unlock(&m->lock);
        int found = 0;
        cerr_detail err;
        memset(&err, 0, sizeof err);
        int rc = store && q
                     ? hc_dicomweb_search(m->hc, store, "instances", q, count_result, &found, &err)
                     : CERR_NOMEM;
        free(store);
        free(q);
        pthread_mutex_lock(&m->lock);
        n->busy = false;
        if (rc != CERR_OK) {
            log_warn("import: batch %s: cannot check which files arrived (HTTP %ld %s), "
                     "retrying",
                     b->id, err.http_status, err.message);
            store_pause_http(m, b->st, &err, "checking which files arrived in the store");
            b->next_try = util_now_s() + b->backoff;
            b->backoff = b->backoff * 2 > POLL_MAX_S ? POLL_MAX_S : b->backoff * 2;
            return;
        }
        node *next = n->next;
        store_resume(b->st); /* the search answered */
        if (found)
            batch_mark_imported(m, n);
        else if (b->reimport)
            missing++; /* stays in the batch, imported again below */
        else
            imp_node_fail(m, n, "import operation %s failed: %s", b->op,
                          b->op_error ? b->op_error : "the instance is not in the store");
        imp_node_maybe_free(m, n);
        n = next;
    }
    if (missing) {
        log_warn("import: %s: batch %s: %d file(s) not in the store: importing them again",
                 b->st->name, b->id, missing);
        reimport(m, b, util_now_s());
        return;
    }
    b->state = B_DONE;
    imp_batch_journal(m, b);
    present_forget_store(m->present, b->st->name);
}

/* Seconds until the operation may end at the earliest, from its counters'
 * progress since they were first seen moving: the items still pending but
 * the one under way (a poll sees the count only after an item ended, so
 * the one under way may be nearly done); 0 once at most one is pending;
 * < 0 when it cannot be told yet. */
static double op_eta(batch *b, const hc_operation *op, double now)
{
    if (op->success < 0 || op->pending < 0)
        return -1; /* no counters */
    int64_t n = op->success + (op->failure > 0 ? op->failure : 0);
    if (n <= 0)
        return -1; /* still in its fixed start-up part */
    if (b->prog_t <= 0) {
        b->prog_t = now;
        b->prog_n = n;
        return -1;
    }
    if (op->pending <= 1)
        return 0; /* the last item is under way or counted: the end is near */
    if (n <= b->prog_n || now <= b->prog_t)
        return -1;
    return (double)(op->pending - 1) * (now - b->prog_t) / (double)(n - b->prog_n);
}

static void poll_op(import_mgr *m, batch *b)
{
    char *op_name = strdup(b->op);
    pthread_mutex_unlock(&m->lock);
    char *json = NULL;
    size_t len = 0;
    cerr_detail err;
    memset(&err, 0, sizeof err);
    hc_operation op;
    memset(&op, 0, sizeof op);
    int rc = op_name ? hc_operation_get(m->hc, op_name, &json, &len, &err) : CERR_NOMEM;
    if (rc == CERR_OK)
        rc = hc_operation_parse(json, len, &op);
    free(json);
    pthread_mutex_lock(&m->lock);
    double now = util_now_s();
    char cause[900];
    if (rc == CERR_NOT_FOUND) {
        /* Expired or deleted with its dataset: which files arrived? */
        log_warn("import: %s: operation %s is gone (404): checking each file of batch %s and "
                 "importing the missing ones again",
                 b->st->name, b->op, b->id);
        b->verifying = true;
        b->reimport = true;
        b->backoff = POLL_FIRST_S;
        verify(m, b);
    } else if (rc != CERR_OK || !op.done) {
        if (rc != CERR_OK) {
            log_warn("import: %s: cannot read operation %s (HTTP %ld %s), retrying", b->st->name,
                     b->op, err.http_status, err.message);
            char what[400];
            snprintf(what, sizeof what, "reading operation %s", b->op);
            store_pause_http(m, b->st, &err, what);
        }
        /* Gentle growth: an import done just after a poll is seen at most
         * 25% (and 1 s) late (polls at 0.05, 0.11, 0.19, 0.29, 0.41 s...);
         * a one-hour import costs about 3600 GETs, well inside quotas. When
         * the counters predict an earlier end, the next poll goes just after
         * it (+ POLL_FIRST_S), so a batch's end is not seen up to 1 s late:
         * with imports=1 and many batches those seconds add up. The end
         * aimed at is the earliest one (op_eta); from there the polls start
         * again at POLL_FIRST_S and grow, so an end that comes later by up
         * to one item's time is seen within 25% of that. */
        double eta = rc == CERR_OK ? op_eta(b, &op, now) : -1;
        if (eta == 0 && !b->near_end) {
            b->near_end = true;
            b->backoff = POLL_FIRST_S;
        }
        double wait = b->backoff;
        if (eta > 0 && eta + POLL_FIRST_S < wait)
            wait = eta + POLL_FIRST_S;
        b->next_try = now + wait;
        b->backoff = b->backoff * POLL_GROWTH > POLL_MAX_S ? POLL_MAX_S : b->backoff * POLL_GROWTH;
    } else if (!op.has_error && op.failure <= 0) {
        int n = 0;
        for (node *x = m->head; x; x = x->next)
            if (!x->is_dir && x->b == b && x->state == ST_UPLOADED) {
                batch_mark_imported(m, x);
                n++;
            }
        b->state = B_DONE;
        imp_batch_journal(m, b);
        present_forget_store(m->present, b->st->name); /* it holds more now */
        store_resume(b->st);
        log_info("import: %s: batch %s: %d file(s) imported (%s)", b->st->name, b->id, n, b->op);
    } else if (op.has_error &&
               fp_op_transient(op.error_code, op.error_message, m->bucket, cause, sizeof cause)) {
        log_warn("import: %s: operation %s of batch %s ended with error %d (%s): importing the "
                 "batch again",
                 b->st->name, b->op, b->id, op.error_code,
                 op.error_message ? op.error_message : "");
        store_pause(b->st, cause);
        reimport(m, b, now);
    } else {
        free(b->op_error);
        b->op_error = strdup(op.error_message ? op.error_message : "import reported failures");
        log_error("import: %s: operation %s finished with errors (failure count %" PRId64
                  "): %s; checking each file",
                  b->st->name, b->op, op.failure, b->op_error ? b->op_error : "");
        b->verifying = true;
        b->backoff = POLL_FIRST_S;
        verify(m, b);
    }
    hc_operation_clear(&op);
    free(op_name);
}

/* Whether another import of st may start now (imports=N per store). */
static bool import_slot_free(import_mgr *m, const store_st *st)
{
    int max = m->cfg.imports > 0 ? m->cfg.imports : 1;
    return st->running < max;
}

static bool batch_full(import_mgr *m, const batch *b)
{
    return (m->cfg.batch_max_files && (uint64_t)b->n_refs >= m->cfg.batch_max_files) ||
           (m->cfg.batch_max_bytes && b->n_bytes >= m->cfg.batch_max_bytes);
}

/* An open batch (lock held). While every import slot of the store is
 * taken, the store's current batch gathers files. When a slot is free, it
 * closes to new files if it gathered while the slots were taken (it goes
 * at once), if it holds batch_max files or bytes (a long copy imports while
 * it runs), or if the store was quiet for commit_delay with every file
 * uploaded. A closed one seals when its last upload is done and starts
 * when a slot is free. */
static void tick_open(import_mgr *m, batch *b, double now)
{
    store_st *st = b->st;
    bool quiet = now - b->last_accept >= m->cfg.commit_delay_s;
    streams_release_idle(m, b, now);
    if (st->open == b && b->n_uploaded > 0) {
        bool slot = import_slot_free(m, st);
        if (!slot)
            b->gathered = true;
        if (slot && (batch_full(m, b) || b->gathered || (quiet && b->n_pending == 0))) {
            st->open = NULL;
            log_debug("import: %s: batch %s closed to new files (%d file(s), %" PRIu64 " bytes)",
                      st->name, b->id, b->n_refs, b->n_bytes);
        }
    }
    if (st->open == b || b->n_pending > 0 || b->n_uploaded == 0)
        return;
    seal(m, b, now);
    if (import_slot_free(m, st))
        start_import(m, b); /* now, not at the next tick */
}

static void batch_drop(import_mgr *m, batch *b)
{
    char key[64];
    snprintf(key, sizeof key, "b/%s", b->id);
    journal_del(m->j, key, false);
    imp_batch_free(m, b);
}

/* One pass of the coordinator. Returns how long its walk of the files in
 * flight took (not the imports started or polled, which wait on the
 * network). */
static double tick(import_mgr *m, double now)
{
    streams_reap(m);
    for (store_st *st = m->stores; st; st = st->next)
        st->running = 0;
    for (batch *b = m->batches; b; b = b->next) {
        b->n_pending = b->n_uploaded = b->n_refs = b->n_streaming = 0;
        b->n_bytes = 0;
        if (b->state == B_IMPORTING)
            b->st->running++;
    }
    double walk0 = util_now_s();
    for (node *n = m->head; n; n = n->next) {
        if (n->is_dir)
            continue;
        if (!n->queued && !n->busy && job_for(n, now) != JOB_NONE)
            imp_enqueue(m, n);
        batch *b = n->b;
        if (!b)
            continue;
        b->n_refs++;
        b->n_bytes += n->size;
        if (n->state == ST_UPLOADED && !n->dirty && n->writers == 0 && !n->busy)
            b->n_uploaded++;
        else
            b->n_pending++;
        if (n->stream && n->state == ST_NEW)
            b->n_streaming++;
    }
    double walk = util_now_s() - walk0;
    /* Running operations first (one that ends frees a slot for the batches
     * that follow), then the oldest sealed batches, then open ones. */
    for (batch *b = m->batches; b && !m->stop; b = b->next) {
        if (b->state != B_IMPORTING || b->next_try > now)
            continue;
        int before = b->state;
        if (b->verifying)
            verify(m, b);
        else
            poll_op(m, b);
        if (before == B_IMPORTING && b->state != B_IMPORTING)
            b->st->running--; /* done, or sealed again to be re-imported */
    }
    for (batch *b = m->batches; b && !m->stop; b = b->next)
        if (b->state == B_SEALED && b->n_refs > 0 && b->next_try <= now &&
            import_slot_free(m, b->st))
            start_import(m, b);
    for (batch *b = m->batches, *next; b && !m->stop; b = next) {
        next = b->next;
        bool quiet = now - b->last_accept >= m->cfg.commit_delay_s;
        if (b->state == B_OPEN && !(b->n_refs == 0 && quiet))
            tick_open(m, b, now);
        else if ((b->state == B_OPEN || b->state == B_SEALED || b->state == B_DONE) &&
                 b->n_refs == 0)
            batch_drop(m, b); /* no file refers to it any more */
    }
    return walk;
}

/* Waits on cond (m->lock held) for a signal or for `seconds`. */
static void wait_on(import_mgr *m, pthread_cond_t *cond, double seconds)
{
    struct timespec ts = util_timespec_in(CLOCK_REALTIME, seconds);
    pthread_cond_timedwait(cond, &m->lock, &ts);
}

/* Waits for a kick or for `seconds` (lock held). */
static void wait_kick(import_mgr *m, double seconds)
{
    wait_on(m, &m->tick_cond, seconds);
}

/* How long the coordinator may sleep: until the next batch deadline (end of
 * a quiet period, an import start or poll), at most 250 ms (file retries). */
static double next_wait(import_mgr *m, double now)
{
    double wait = 0.25;
    for (batch *b = m->batches; b; b = b->next) {
        bool waits_slot = b->state == B_SEALED && !import_slot_free(m, b->st);
        double at = b->state == B_OPEN                 ? b->last_accept + m->cfg.commit_delay_s
                    : b->state == B_DONE || waits_slot ? 1e18
                                                       : b->next_try;
        if (b->state != B_OPEN && at <= now)
            return 0; /* an import start or poll is due (an open batch past its
                       * quiet period waits for its uploads' kicks instead) */
        if (at > now && at - now < wait)
            wait = at - now;
    }
    return wait;
}

static void *coord_main(void *arg)
{
    import_mgr *m = arg;
    pthread_setname_np(pthread_self(), "dfs-coord");
    double last = -1e9, gap = TICK_MIN_S;
    pthread_mutex_lock(&m->lock);
    while (!m->stop) {
        double now = util_now_s();
        if (now - last < gap) {
            /* Too soon after the last tick: sleep out the rest. Kicks
             * meanwhile only set m->kicked (coord_idle is false: no wake-up
             * per close or upload) and are covered by the tick that follows. */
            wait_kick(m, last + gap - now);
            continue;
        }
        last = now;
        m->kicked = false;
        /* A tick walks the files in flight (up to a full cache of them),
         * holding the lock: spaced so that the walks take at most
         * 1/TICK_SHARE of the time, whatever their number. */
        double walk = tick(m, now);
        gap = walk * TICK_SHARE > TICK_MIN_S ? walk * TICK_SHARE : TICK_MIN_S;
        if (m->stop)
            break;
        if (m->kicked)
            continue; /* something changed during the tick (it unlocks for HTTP) */
        m->coord_idle = true;
        wait_kick(m, next_wait(m, util_now_s()));
        m->coord_idle = false;
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

/* The journal's power-loss durability, off every caller's path: an
 * fdatasync of the journal forces a commit of the filesystem's journal,
 * which on a busy ext4 can take 100 ms or more (it waits for data written
 * back meanwhile); in the coordinator it delayed every import start and
 * poll by that much. journal_sync returns at once when nothing changed. */
static void *jflush_main(void *arg)
{
    import_mgr *m = arg;
    pthread_setname_np(pthread_self(), "dfs-jflush");
    pthread_mutex_lock(&m->lock);
    m->rel_on = true; /* spool releases wait for these syncs (release_spool) */
    while (!m->stop) {
        flush_and_release(m);
        if (!m->stop)
            wait_on(m, &m->jflush_cond, JFLUSH_S);
    }
    m->rel_on = false;
    flush_and_release(m); /* the releases handed over before the stop */
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

int up_start(import_mgr *m)
{
    /* uploads=N given: N. Else adaptive (upconc.h): from UP_AUTO_START, the
     * concurrency a 2-core client with a fast link ran best at, up to
     * UP_AUTO_MAX for long thin wires (30 ms per request and 16 KiB files
     * need ~50 in flight to use 400 Mbps), down to UP_AUTO_MIN when the CPU
     * or the link is the bound. */
    m->conc = upconc_new(m->cfg.uploads, UP_AUTO_START, UP_AUTO_MIN, UP_AUTO_MAX);
    int nthreads = m->conc ? upconc_max(m->conc) : 0;
    m->workers = nthreads ? calloc((size_t)nthreads, sizeof *m->workers) : NULL;
    if (!m->workers)
        return -ENOMEM;
    for (int i = 0; i < nthreads; i++) {
        int rc = pthread_create(&m->workers[i], NULL, worker_main, m);
        if (rc != 0) {
            log_error("import: cannot start upload thread: %s", strerror(rc));
            up_stop(m);
            return -rc;
        }
        m->nworkers++;
    }
    int rc = pthread_create(&m->coord, NULL, coord_main, m);
    if (rc != 0) {
        up_stop(m);
        return -rc;
    }
    m->coord_started = true;
    rc = pthread_create(&m->jflush, NULL, jflush_main, m);
    if (rc != 0) {
        up_stop(m);
        return -rc;
    }
    m->jflush_started = true;
    return 0;
}

void up_stop(import_mgr *m)
{
    pthread_mutex_lock(&m->lock);
    m->stop = true;
    pthread_cond_broadcast(&m->work_cond);
    pthread_cond_broadcast(&m->tick_cond);
    pthread_cond_broadcast(&m->jflush_cond);
    pthread_cond_broadcast(&m->present_cond);
    pthread_cond_broadcast(&m->space_cond);
    pthread_mutex_unlock(&m->lock);
    if (m->jflush_started)
        pthread_join(m->jflush, NULL);
    m->jflush_started = false;
    for (int i = 0; i < m->nworkers; i++)
        pthread_join(m->workers[i], NULL);
    if (m->coord_started)
        pthread_join(m->coord, NULL);
    m->nworkers = 0;
    m->coord_started = false;
    free(m->workers);
    m->workers = NULL;
    upconc_free(m->conc);
    m->conc = NULL;
    pthread_mutex_lock(&m->lock);
    /* Streams: unfinished sessions are cancelled (the journal only knows
     * accepted files, which are uploaded again from the spool). */
    for (upstream *s = m->streams; s; s = s->next)
        pthread_cond_signal(&s->cond);
    while (m->streams) {
        upstream *s = m->streams;
        m->streams = s->next;
        pthread_mutex_unlock(&m->lock);
        pthread_join(s->thr, NULL);
        pthread_mutex_lock(&m->lock);
        stream_free(s);
    }
    node *n;
    while ((n = dequeue(m)))
        imp_node_maybe_free(m, n);
    pthread_mutex_unlock(&m->lock);
}
