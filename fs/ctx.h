/* ctx: the mount's state, below every view of the tree.
 *
 * Owns: fs_ctx (the options, the API clients, the journal, the import
 * manager, the caches and the identity the tree is shown with), opening
 * and closing the clients, starting and stopping the mount's state
 * (fs_ctx_start / fs_ctx_stop), full resource names from ids, the attributes of synthetic
 * entries and the log line of a refused call (fs_deny). No FUSE callback:
 * fuse_ops.c hands an fs_ctx to every node (node.h); nothing here calls a
 * view or the dispatcher.
 */
#ifndef DICOMFS_CTX_H
#define DICOMFS_CTX_H

#include <pthread.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#include "auth.h"
#include "dircache.h"
#include "gcs.h"
#include "healthcare.h"
#include "http.h"
#include "opsnap.h"
#include "options.h"

typedef struct journal journal;
typedef struct import_mgr import_mgr;
typedef struct rejects rejects;
typedef struct xattrs xattrs;

/* Seconds a directory listing is trusted. */
#define FS_LIST_TTL 5.0
/* Seconds an operation's size is trusted (so `stat` then `cat` agree). */
#define FS_OP_TTL 2.0

typedef struct fs_clients {
    http_client *auth_http; /* token requests, no bearer */
    http_client *http;      /* API requests, bearer from auth */
    auth_provider *auth;
    gcs_client *gcs;
    hc_client *hc;
} fs_clients;

/* Builds the clients from the options; on failure fills msg and returns -1.
 * quick: few retries and short timeouts (checks before mounting). */
int fs_clients_open(const fs_options *o, bool quick, fs_clients *c, char *msg, size_t msglen);
void fs_clients_close(fs_clients *c);

typedef struct fs_ctx {
    const fs_options *opt;
    fs_clients cl;
    journal *journal;
    import_mgr *import;
    rejects *rejects; /* refused import/ files, kept visible */
    xattrs *xattrs;   /* user.* attributes of import/ files */
    dircache *cache;
    opsnap *opsnap; /* operation files as last fetched (stat and cat agree) */
    uid_t uid;
    gid_t gid;
    struct timespec mount_time;
    pthread_t primer; /* lists the root once at mount (joined at unmount) */
    bool primer_started;
} fs_ctx;

/* Opens the journal, the import manager and the in-memory tables of a
 * context whose opt and cl are set; what cannot start is logged and left
 * NULL (import/ then answers EIO). interrupted: whether the calling request
 * was interrupted (import_config). */
void fs_ctx_start(fs_ctx *x, int (*interrupted)(void));
/* Stops what fs_ctx_start started (the primer thread must be joined). */
void fs_ctx_stop(fs_ctx *x);

/* Full resource names from ids (malloc'ed). */
char *fs_dataset_name(const fs_ctx *x, const char *dataset_id);
char *fs_store_name(const fs_ctx *x, const char *dataset_id, const char *store_id);

/* Fills st for a synthetic directory or file owned by the mounting user. */
void fs_stat_dir(const fs_ctx *x, struct stat *st, mode_t perm);
void fs_stat_file(const fs_ctx *x, struct stat *st, mode_t perm, off_t size);

/* Refuses a call with a log line saying what and where; returns e. */
int fs_deny(const char *path, const char *what, int e);

/* The one key scheme of listings in x->cache: the directory's place in the
 * tree, "/DATASET/STORE/WHAT" (parts NULL from the first absent one on),
 * e.g. "/" (datasets), "/D" (stores), "/D/operations", "/D/S/studies/1.2".
 * malloc'ed. */
char *fs_cache_key(const char *dataset, const char *store, const char *what);

#endif
