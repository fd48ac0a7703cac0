/* fuse_ops: the FUSE callbacks (high-level API) and the daemon context.
 *
 * Owns: dispatch of every callback on the kind of path (tree.h) to the
 * module that serves it (import.h, ops.h, export.h), the attributes of the
 * fixed directories, the dataset/store listings and their short cache,
 * mkdir/rmdir of datasets and stores, a log line naming the path of every
 * failed client call (its errno comes from errmap.h).
 */
#ifndef DICOMFS_FUSE_OPS_H
#define DICOMFS_FUSE_OPS_H

#define FUSE_USE_VERSION 31
#include <fuse.h>

#include <pthread.h>
#include <stdbool.h>
#include <sys/types.h>
#include <time.h>

#include "auth.h"
#include "dircache.h"
#include "opsnap.h"
#include "gcs.h"
#include "healthcare.h"
#include "http.h"
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

/* The callbacks; private_data passed to fuse_new must be an fs_ctx whose
 * opt and cl are set (init opens the journal and the import manager). */
const struct fuse_operations *fs_fuse_operations(void);

/* Full resource names from ids (malloc'ed). */
char *fs_dataset_name(const fs_ctx *x, const char *dataset_id);
char *fs_store_name(const fs_ctx *x, const char *dataset_id, const char *store_id);

/* Fills st for a synthetic directory or file owned by the mounting user. */
void fs_stat_dir(const fs_ctx *x, struct stat *st, mode_t perm);
void fs_stat_file(const fs_ctx *x, struct stat *st, mode_t perm, off_t size);

#endif
