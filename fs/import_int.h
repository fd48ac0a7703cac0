/* import_int: state shared by the import pipeline: filestate.c (files,
 * their state machine and records), import.c (the import/ namespace and
 * acceptance), uploader.c (worker threads and batch commits) and status.c.
 * Not a public interface: only these files include it.
 *
 * Locking: everything below is guarded by import_mgr.lock. Journal records
 * are written (journal_put/del with sync=false) while holding it, so the log
 * order matches the order of the in-memory changes; callers that promise
 * durability call journal_sync() after dropping the lock (group commit).
 */
#ifndef DICOMFS_IMPORT_INT_H
#define DICOMFS_IMPORT_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "upconc.h"
#include "dicom.h"
#include "import.h"
#include "index.h"
#include "journal.h"
#include "present.h"
#include "spool.h"

/* File states. IMPORTING is not a node state: it is UPLOADED in a batch
 * whose import was started (batch state >= B_SEALED). */
enum node_state {
    ST_NEW = 0,       /* created, never validated: not in the journal */
    ST_ACCEPTED = 1,  /* validated, durable, waiting for (or in) upload */
    ST_UPLOADED = 2,  /* staged object written */
    ST_IMPORTED = 3,  /* imported; stays listed (remembered) until unlinked */
    ST_FAILED = 4,    /* permanent failure, reason set; listed until unlinked */
    ST_WITHDRAWN = 5, /* unlinked/replaced after upload: staged object to delete */
    ST_PRESENT = 6,   /* the store already holds its instance: not uploaded */
};

enum batch_state {
    B_OPEN = 0,      /* accepting files */
    B_SEALED = 1,    /* closed; import call to be made */
    B_IMPORTING = 2, /* op name known; polling */
    B_DONE = 3,      /* finished; removed once no file refers to it */
};

typedef struct store_st store_st;
typedef struct batch batch;
typedef struct node node;
typedef struct upstream upstream; /* a streaming upload (uploader.c) */

struct batch {
    char id[48];
    store_st *st;
    int state;
    char *op;           /* operation name once started */
    double last_accept; /* monotonic seconds of the newest accepted file or write */
    double next_try;    /* next import start / poll */
    double backoff;
    /* The operation's progress when first seen moving (prog_t 0: not yet):
     * its rate predicts the end, so the last poll lands just after it. */
    double prog_t;
    int64_t prog_n;
    /* At most one item left: the polls started again from their shortest. */
    bool near_end;
    bool verifying;                    /* op done with errors: checking files one by one */
    char *op_error;                    /* message of the finished op's error */
    bool reimport;                     /* verifying: missing files are imported again (the op
                                          vanished), not failed */
    int reimports;                     /* imports started again for this batch */
    int n_pending, n_uploaded, n_refs; /* recomputed each coordinator tick */
    int n_streaming;                   /* ST_NEW files streaming into it (each tick) */
    uint64_t n_bytes;                  /* bytes of its files (each tick) */
    /* gathered: it held uploaded files while the store's import slots were
     * all taken, so it starts as soon as one frees (no quiet period). */
    bool gathered;
    batch *next;
};

struct store_st {
    char *name;
    batch *open;  /* the batch new files join, or NULL; other B_OPEN batches of
                   * the store are closed to new files and seal once uploaded */
    int running;  /* its batches in B_IMPORTING (recounted each tick) */
    char *paused; /* why its background work waits, with the fix (failpolicy.h), or NULL */
    uint64_t imported, present, bytes_spooled, bytes_uploaded; /* since mount */
    store_st *next;
};

struct node {
    char id[SPOOL_ID_LEN + 1]; /* spool id (files) or random id (dirs) */
    store_st *st;
    char *path; /* display path below import/ */
    bool is_dir;
    bool visible; /* in the name table */
    bool listed;  /* in the all-nodes list */
    mode_t mode;
    uid_t uid;
    gid_t gid;
    struct timespec atime, mtime, ctime;
    uint64_t size;
    /* files */
    int state;
    char sop[DICOM_UID_MAX + 1];
    char study[DICOM_UID_MAX + 1], series[DICOM_UID_MAX + 1]; /* to read it back */
    /* has_spool: the spool file holds its content (released once the staged
     * object is verified, or the file is present/imported: see uploader.c);
     * spool_bytes: what it counts in import_mgr.cache_used; releasing: the
     * spool file is being removed (lock dropped). */
    bool has_spool, releasing;
    uint64_t spool_bytes;
    /* stale: the spool file is a recycled one whose bytes beyond size may
     * still be an earlier file's (spool_create): reads stop at size, and it
     * is cut to size (import.c unstale) before a write or truncate leaves a
     * gap, and at acceptance, before anything else reads or records it.
     * wr_inflight: writes between their reservation and their size update
     * (a cut must not race one). */
    bool stale;
    uint64_t stale_len; /* the recycled file's size when handed out */
    int wr_inflight;
    batch *b;     /* batch it belongs to (ACCEPTED/UPLOADED), else NULL */
    char bid[48]; /* batch id of the staged object name */
    bool staged;  /* a staged object may exist */
    char *reason; /* FAILED */
    bool dirty;   /* not accepted in its current content (written since) */
    /* checked: the current content was validated (cleared by every write or
     * truncate, like gen++); check_rc: that validation's result, returned by
     * later flushes; why: the reason it failed ("not a DICOM Part-10 file:
     * ..."), logged when the last writer's release drops the file. */
    bool checked;
    int check_rc;
    char *why;
    int io_err;   /* a write or truncate failed (e.g. -ENOSPC): never accept */
    uint64_t gen; /* bumped by every write/truncate */
    int writers;  /* open handles with write access */
    /* Streaming (uploader.c): seq while every write so far appended at
     * seq_end from offset 0; stream while an upload session is fed as the
     * file is written (at most once per file: stream_tried). */
    bool seq, stream_tried;
    uint64_t seq_end;
    upstream *stream;
    int refs;  /* open handles */
    bool busy; /* a worker job is running on it */
    bool queued;
    double retry_at;
    double backoff;
    node *hnext;       /* name table chain */
    node *prev, *next; /* its list: active (head) or remembered (rhead) */
    /* settled: imported or present with nothing left to do (no staged
     * object, no spool file): it lives in the remembered list, which the
     * coordinator's and the cache's walks never visit, so their cost does
     * not grow with the number of files imported. */
    bool settled;
    /* indexed: the index (index.c) has a row for (st, path). A settled
     * file lives there alone: its record leaves the journal and the node
     * leaves memory once nothing refers to it (imp_node_maybe_free); a
     * lookup by name brings it back (fault_in in import.c). */
    bool indexed;
    node *qnext; /* work queue */
    node *snext; /* SOP table chain (while in_sops) */
    bool in_sops;
};

struct import_mgr {
    import_config cfg;
    char *cache_dir, *bucket, *prefix;
    gcs_client *gcs;
    hc_client *hc;
    journal *j;
    index_db *ix; /* remembered files (cache_dir/index.sqlite) */
    bool loading; /* journal records being loaded: no journal writes */
    spool *sp;
    pthread_mutex_t lock;
    pthread_cond_t work_cond; /* workers: queue non-empty or stop */
    pthread_cond_t tick_cond; /* coordinator: something changed */
    /* imp_kick: `kicked` says something changed since the last tick; the
     * condvar is signalled only while the coordinator waits for a kick
     * (coord_idle), not while it ticks or sleeps out its minimum gap, so
     * that a burst of closes and uploads costs no wake-up each. */
    bool kicked, coord_idle;
    pthread_cond_t jflush_cond; /* journal flusher: stop */
    bool stop;
    node **table;
    size_t nbuckets, nvisible;
    node *head, *tail;   /* active files and directories */
    node *rhead, *rtail; /* remembered (settled) files */
    node *qhead, *qtail;
    store_st *stores;
    batch *batches;
    pthread_t *workers;
    int nworkers;
    upconc *conc; /* how many of the workers may run a job at once */
    int active;   /* workers running a job */
    pthread_t coord;
    pthread_t jflush; /* fsyncs the journal every JFLUSH_S when it changed */
    bool jflush_started;
    /* Nodes whose spool release waits for the flusher's next journal sync
     * (rel_on: the flusher is running and takes them). */
    node **rel_v;
    size_t rel_n, rel_cap;
    bool rel_on;
    bool coord_started;
    upstream *streams; /* streaming upload threads, joined when done */
    /* Bounded cache: cache_used bytes of spool files against cache_max;
     * writers wait on space_cond (broadcast whenever space is released). */
    uint64_t cache_used, cache_max;
    int writers_waiting;
    pthread_cond_t space_cond;
    /* Which SOP Instance UIDs each study of a store holds (present.c);
     * present_cond: a study's fetch ended. */
    present_cache *present;
    pthread_cond_t present_cond;
    /* Files by (store, SOP Instance UID), chained through node.snext: a
     * duplicate of a pending or imported file is known at its close(). */
    node **sops;
    size_t nsops;
};

#define SOP_BUCKETS (1u << 16) /* m->sops */

/* A streaming upload: its thread lives in uploader.c; filestate.c detaches
 * it from its file when the file changes (imp_stream_drop). */
struct upstream {
    import_mgr *m;
    node *n; /* NULL once dropped: the thread then only cancels and ends */
    char id[SPOOL_ID_LEN + 1];
    char *object, *label;
    uint64_t avail;      /* [0, avail) written by appends */
    uint64_t final_size; /* finishing: the accepted size and generation */
    uint64_t final_gen;
    bool finishing, dropped, done;
    pthread_cond_t cond;
    pthread_t thr;
    upstream *next;
};

/* filestate.c: the files, their state machine and records, the work
 * queue. Everything below is called with the lock held unless noted. The
 * pipeline's stages (import.c: namespace and acceptance; uploader.c:
 * upload, batch, import, verify) call down into it, never into each
 * other's upper stage: import.c calls uploader.c only to start, stop,
 * stream and fetch; uploader.c calls nothing of import.c. */
/* Records: loading at start; putting a node's or batch's record (no sync;
 * a settled file's goes to the index). */
int imp_load_records(import_mgr *m);
int imp_node_journal(import_mgr *m, node *n);
void imp_batch_journal(import_mgr *m, batch *b);
/* The index row of n goes (n renamed, or journaled again). */
void imp_node_unindex(import_mgr *m, node *n);
/* Names and lists. */
node *imp_name_find(import_mgr *m, const store_st *st, const char *path);
void imp_name_insert(import_mgr *m, node *n);
void imp_name_remove(import_mgr *m, node *n);
void imp_list_add(import_mgr *m, node *n); /* to the list its settled flag names */
/* Every listed node, files in flight first, then remembered ones in memory. */
node *imp_all_first(import_mgr *m);
node *imp_all_next(import_mgr *m, const node *n);
store_st *imp_store_get(import_mgr *m, const char *name); /* created if new */
store_st *imp_store_find(import_mgr *m, const char *name);
/* The SOP table: n's instance (after n->sop is set); another file of n's
 * store with it that is (or will be) in the store. */
void imp_sop_insert(import_mgr *m, node *n);
node *imp_sop_other(import_mgr *m, const node *n);
/* Nodes. */
node *imp_node_new(import_mgr *m, store_st *st, const char *path, bool is_dir, mode_t mode);
void imp_node_free(node *n);
/* A remembered file's fields from its index row (not path or store). */
void imp_node_from_entry(node *n, const index_entry *e);
void imp_node_unlist(import_mgr *m, node *n); /* hide + drop from the list + record del */
/* Frees n when nothing refers to it: unlisted, or settled and indexed
 * (it then lives in the index only). n may be gone on return. */
void imp_node_maybe_free(import_mgr *m, node *n);
void imp_node_fail(import_mgr *m, node *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void imp_batch_free(import_mgr *m, batch *b);
/* Moves n to the remembered list when it is settled (see node.settled),
 * and its record from the journal to the index. */
void imp_node_settle(import_mgr *m, node *n);
/* THE state machine: every change of a file's state goes through here,
 * with its bookkeeping (see filestate.c). */
int imp_node_to(import_mgr *m, node *n, int to, uint64_t bytes);
/* The store already holds n's instance (or will: a duplicate of a pending
 * file): not uploaded, reported present. */
void imp_node_present(import_mgr *m, node *n, const char *why);
char *imp_object_name(import_mgr *m, const node *n); /* malloc'ed */
/* Cache accounting: n's spool file now holds `bytes`. */
void imp_spool_account(import_mgr *m, node *n, uint64_t bytes);
/* Removes n's spool file now (withdrawn or rejected files). */
void imp_spool_remove(import_mgr *m, node *n);
void imp_assign_batch(import_mgr *m, node *n); /* join the store's open batch */
/* Work for the uploader: n has a job (its workers take it from the queue);
 * something changed that the coordinator should look at. */
void imp_enqueue(import_mgr *m, node *n);
/* The same without waking a worker: for a worker that looks at the queue
 * again right after (the hand-off to another worker cost two context
 * switches and a futex round trip per job). */
void imp_enqueue_self(import_mgr *m, node *n);
void imp_kick(import_mgr *m);
/* Abandons n's streaming upload unless its final chunk is on its way (n is
 * then busy until it ends). */
void imp_stream_drop(import_mgr *m, node *n, const char *why);

/* uploader.c (upload, batch, import, verify) */
int up_start(import_mgr *m);
void up_stop(import_mgr *m);
/* A copy of a file whose spool space was released, fetched into fd (lock
 * NOT held): from its staged object, else from the store. */
int up_fetch_copy(import_mgr *m, const char *object, bool staged, const char *store,
                  const char *study, const char *series, const char *sop, int fd);
/* Streaming uploads. up_stream_wrote: after every successful write of n
 * (through fd) of [off, off+len): feeds a running stream or starts one.
 * up_stream_accepted: n was just accepted with size bytes; true when its
 * stream takes over the upload. */
void up_stream_wrote(import_mgr *m, node *n, int fd, uint64_t off, uint64_t len);
bool up_stream_accepted(import_mgr *m, node *n, uint64_t size);

#endif
