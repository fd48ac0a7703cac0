/* filestate: the files of the import pipeline and their state machine
 * (import_int.h): the name table and the lists of files, the SOP table,
 * stores and batches, every state change of a file (imp_node_to), the
 * records that make them durable (journal for files in flight, index for
 * remembered files), loading them at start, and the work queue the
 * uploader's workers consume.
 *
 * The pipeline reads one way: the namespace (import.c: names, writes,
 * acceptance at close) hands accepted files on by changing their state
 * here; the uploader (upload, batch, import, verify) takes work from the
 * queue and reports each result by changing the file's state here. This
 * file calls neither of them: it is the lowest stage of the pipeline
 * (below it only journal, index, spool and present).
 */
#include "import_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "log.h"
#include "util.h"

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

typedef struct load_ctx {
    import_mgr *m;
    int rc;
} load_ctx;

static void node_journal_del(import_mgr *m, node *n);

static uint64_t name_hash(const store_st *st, const char *path)
{
    return util_fnv1a_str(UTIL_FNV1A_INIT ^ (uint64_t)(uintptr_t)st, path);
}

node *imp_name_find(import_mgr *m, const store_st *st, const char *path)
{
    for (node *n = m->table[name_hash(st, path) % m->nbuckets]; n; n = n->hnext)
        if (n->st == st && strcmp(n->path, path) == 0)
            return n;
    return NULL;
}

/* Every listed node, active then remembered (namespace walks: readdir,
 * rename and rmdir of directories, the name table). */
node *imp_all_first(import_mgr *m)
{
    return m->head ? m->head : m->rhead;
}

node *imp_all_next(import_mgr *m, const node *n)
{
    return n->next ? n->next : n->settled ? NULL : m->rhead;
}

static void name_grow(import_mgr *m)
{
    size_t nb = m->nbuckets * 2;
    node **t = calloc(nb, sizeof *t);
    if (!t)
        return;
    for (node *n = imp_all_first(m); n; n = imp_all_next(m, n)) {
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

void imp_name_insert(import_mgr *m, node *n)
{
    size_t i = name_hash(n->st, n->path) % m->nbuckets;
    n->hnext = m->table[i];
    m->table[i] = n;
    n->visible = true;
    if (++m->nvisible > m->nbuckets)
        name_grow(m);
}

void imp_name_remove(import_mgr *m, node *n)
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
void imp_list_add(import_mgr *m, node *n)
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

static bool settle(import_mgr *m, node *n)
{
    if (!n->listed || n->settled || n->is_dir || !n->visible ||
        (n->state != ST_IMPORTED && n->state != ST_PRESENT) || n->staged || n->has_spool ||
        n->releasing)
        return false;
    list_remove(m, n);
    n->settled = true;
    imp_list_add(m, n);
    return true;
}

void imp_node_settle(import_mgr *m, node *n)
{
    if (settle(m, n) && !m->loading)
        imp_node_journal(m, n); /* its record moves to the index */
}

static void node_unsettle(import_mgr *m, node *n)
{
    if (!n->settled)
        return;
    bool listed = n->listed;
    list_remove(m, n);
    n->settled = false;
    if (listed)
        imp_list_add(m, n);
}

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
void imp_sop_insert(import_mgr *m, node *n)
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
node *imp_sop_other(import_mgr *m, const node *n)
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

store_st *imp_store_find(import_mgr *m, const char *name)
{
    for (store_st *s = m->stores; s; s = s->next)
        if (strcmp(s->name, name) == 0)
            return s;
    return NULL;
}

store_st *imp_store_get(import_mgr *m, const char *name)
{
    store_st *s = imp_store_find(m, name);
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

/* The index row of a file (strings point into n). */
static index_entry node_entry(const node *n)
{
    index_entry e = {.path = n->path,
                     .id = n->id,
                     .state = n->state,
                     .size = n->size,
                     .mode = n->mode,
                     .uid = n->uid,
                     .gid = n->gid,
                     .atime = n->atime,
                     .mtime = n->mtime,
                     .ctime = n->ctime,
                     .sop = n->sop,
                     .study = n->study,
                     .series = n->series};
    return e;
}

/* A settled file's record goes to the index and leaves the journal; if the
 * index cannot take it, the journal keeps it (and memory the node). */
static int node_index(import_mgr *m, node *n)
{
    index_entry e = node_entry(n);
    int rc = index_put(m->ix, n->st->name, &e);
    if (rc < 0)
        return rc;
    n->indexed = true;
    node_journal_del(m, n);
    return 0;
}

/* The index row of n goes (n forgotten, renamed, or journaled again). */
void imp_node_unindex(import_mgr *m, node *n)
{
    if (n->indexed && n->path)
        index_del(m->ix, n->st->name, n->path);
    n->indexed = false;
}

int imp_node_journal(import_mgr *m, node *n)
{
    if (!n->is_dir && n->state == ST_NEW)
        return 0; /* not accepted yet: nothing to remember */
    if (!n->is_dir && n->settled && m->ix && !m->loading && node_index(m, n) == 0)
        return 0;
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
    else if (!n->settled)
        imp_node_unindex(m, n); /* in flight again: the journal has it */
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

void imp_node_free(node *n)
{
    free(n->path);
    free(n->reason);
    free(n->why);
    free(n);
}

void imp_node_maybe_free(import_mgr *m, node *n)
{
    if (n->refs || n->busy || n->queued || n->stream)
        return;
    if (n->listed && n->settled && n->indexed && n->visible) {
        /* Remembered: the index holds it; memory lets it go. */
        imp_name_remove(m, n);
        list_remove(m, n);
    }
    if (!n->listed && !n->visible) {
        sop_remove(m, n);
        imp_node_free(n);
    }
}

/* The state machine of a file, in one place: every change of n->state
 * after loading goes through here (lock held), with its bookkeeping
 * (batch membership, counters, journal or index record, the remembered
 * list, follow-up work for the uploader's queue).
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
 *   ACCEPTED -> NEW              its record could not be written (validate)
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
        imp_stream_drop(m, n, "present in the store");
        n->b = NULL;
        n->retry_at = 0;
        n->st->present++;
        break;
    case ST_FAILED:
    case ST_WITHDRAWN:
        imp_stream_drop(m, n, to == ST_FAILED ? "failed" : "removed");
        break;
    }
    n->state = to;
    settle(m, n); /* before the record: a settled file's goes to the index */
    int rc = imp_node_journal(m, n);
    if (to != ST_NEW && to != ST_ACCEPTED)
        imp_enqueue(m, n); /* spool release, staged object deletion; a no-op if none */
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
    imp_stream_drop(m, n, "removed");
    imp_name_remove(m, n);
    list_remove(m, n);
    node_journal_del(m, n);
    imp_node_unindex(m, n);
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
    imp_stream_drop(m, n, "failed");
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

node *imp_node_new(import_mgr *m, store_st *st, const char *path, bool is_dir, mode_t mode)
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

/* A remembered file's fields from its index row (not path or store). */
void imp_node_from_entry(node *n, const index_entry *e)
{
    snprintf(n->id, sizeof n->id, "%s", e->id);
    n->state = e->state;
    n->size = e->size;
    n->mode = (mode_t)e->mode & 07777;
    n->uid = (uid_t)e->uid;
    n->gid = (gid_t)e->gid;
    n->atime = e->atime;
    n->mtime = e->mtime;
    n->ctime = e->ctime;
    snprintf(n->sop, sizeof n->sop, "%s", e->sop);
    snprintf(n->study, sizeof n->study, "%s", e->study);
    snprintf(n->series, sizeof n->series, "%s", e->series);
}

static int64_t num(const char *s)
{
    return strtoll(s, NULL, 10);
}

static int load_batch(void *vctx, const char *key, const void *val, size_t len)
{
    load_ctx *c = vctx;
    const char *f[3];
    if (split_fields(val, len, f, 3) < 3) {
        log_error("import: journal record %s is malformed, ignored", key);
        return 0;
    }
    store_st *st = imp_store_get(c->m, f[0]);
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
    store_st *st = imp_store_get(m, f[0]);
    node *n = st ? imp_node_new(m, st, f[1], dir, 0) : NULL;
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
        imp_list_add(m, n);
        imp_name_insert(m, n);
        return 0;
    }
    /* The index may hold an older row of this name (a crash between the
     * journal record and the row's deletion): the first record written
     * for the file deletes it. */
    n->indexed = m->ix != NULL;
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
    imp_list_add(m, n);
    imp_sop_insert(m, n);
    if (visible && n->state != ST_WITHDRAWN) {
        if (imp_name_find(m, st, n->path)) {
            log_error("import: %s/%s: two journal entries for one name; keeping the first",
                      st->name, n->path);
        } else {
            imp_name_insert(m, n);
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

static int load_store(void *ctx, const char *store)
{
    return imp_store_get(ctx, store) ? 0 : -ENOMEM;
}

/* Settled files still in the journal (written before the index, or when
 * the index refused them): their records move to the index now. */
static void migrate_settled(import_mgr *m)
{
    for (node *n = m->rhead, *nx; n; n = nx) {
        nx = n->next;
        imp_node_journal(m, n);
        imp_node_maybe_free(m, n);
    }
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

/* Appends n to the work queue (lock held); false when it is not queued. */
static bool queue_push(import_mgr *m, node *n)
{
    if (!m->gcs || n->queued || n->busy)
        return false; /* no uploader (tests), or a worker will look at it again */
    n->queued = true;
    n->qnext = NULL;
    if (m->qtail)
        m->qtail->qnext = n;
    else
        m->qhead = n;
    m->qtail = n;
    return true;
}

void imp_enqueue(import_mgr *m, node *n)
{
    if (queue_push(m, n))
        pthread_cond_signal(&m->work_cond);
}

void imp_enqueue_self(import_mgr *m, node *n)
{
    queue_push(m, n);
}

void imp_kick(import_mgr *m)
{
    m->kicked = true;
    if (m->coord_idle)
        pthread_cond_signal(&m->tick_cond);
}

void imp_stream_drop(import_mgr *m, node *n, const char *why)
{
    upstream *s = n->stream;
    if (!s || s->finishing)
        return;
    s->dropped = true;
    s->n = NULL;
    n->stream = NULL;
    pthread_cond_signal(&s->cond);
    if (n->state == ST_NEW) {
        /* Not accepted: leave the batch; acceptance picks one again. */
        n->b = NULL;
        n->bid[0] = '\0';
    }
    if (why)
        log_info("import: %s: streaming upload abandoned (%s); the file is uploaded once "
                 "accepted",
                 s->label, why);
    (void)m;
}

/* Loads the records: store names from the index, then batches,
 * directories and files from the journal. Settled files still in the
 * journal (written before the index, or when it refused them) move to the
 * index. */
int imp_load_records(import_mgr *m)
{
    load_ctx c = {m, 0};
    if (m->ix)
        c.rc = index_stores(m->ix, load_store, m);
    m->loading = true;
    if (c.rc == 0)
        journal_scan(m->j, "b/", load_batch, &c);
    if (c.rc == 0)
        journal_scan(m->j, "d/", load_node, &c);
    if (c.rc == 0)
        journal_scan(m->j, "e/", load_node, &c);
    m->loading = false;
    if (c.rc < 0)
        return c.rc;
    if (m->ix)
        migrate_settled(m);
    return 0;
}
