/* import: the STORE/import/ directory — spool, journal, background uploads
 * and batch commits (spool.c, journal.c, index.c, filestate.c, uploader.c,
 * import.c, status.c).
 *
 * A file written under import/ goes to a spool file in cache_dir. flush()
 * (what each close() returns, also of a dup'ed descriptor) fsyncs it and
 * checks it is DICOM Part 10 when it changed since the last check: EINVAL
 * otherwise, but the file stays until release() of its last writable
 * descriptor, which drops it with a log line naming the file and the reason
 * (so `cat a.dcm > import/a.dcm`, whose shell closes an empty dup first,
 * works). Accepted files are recorded in the
 * journal, uploaded in the background by `uploads` threads to
 * gs://STAGING/<batch>/..., and when no file has arrived for commit_delay
 * seconds and every upload of the batch is done, ONE dicomStores.import of
 * gs://STAGING/<batch>/ + "**" is started and recorded as the store's operation.
 * Staged objects are deleted after a successful import. Files stay listed
 * after their import (remembered: rsync reruns skip them) until unlinked.
 * The spool is bounded (cache_max: writers wait); a file's spool space is
 * released once its staged object is verified. State survives a restart
 * (journal in cache_dir).
 *
 * Paths: store is the full resource name ".../dicomStores/S"; rel is the path
 * below import/ without a leading '/' ("" is import/ itself).
 * Every int-returning function returns 0 or a negative errno.
 */
#ifndef DICOMFS_IMPORT_H
#define DICOMFS_IMPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "gcs.h"
#include "healthcare.h"

typedef struct import_mgr import_mgr;
typedef struct journal journal;

typedef struct import_config {
    const char *cache_dir;      /* exists, 0700 */
    const char *staging_bucket; /* from staging=gs://B/P */
    const char *staging_prefix; /* "P" without trailing '/', may be "" */
    int uploads;                /* parallel uploads */
    int upload_nice;            /* nice of the upload threads (0: unchanged) */
    double commit_delay_s;      /* quiet period before a batch is committed */
    bool sync_close;            /* fdatasync spool file + journal in every close() */
    int stream_min_mib;         /* upload files while written from this size on;
                                   0 = never, as for the stream_min= option */
    int imports;                /* import operations in flight per store (< 1: 1) */
    uint64_t batch_max_files;   /* a batch stops growing at this many files (0: no limit) */
    uint64_t batch_max_bytes;   /* ... or bytes (0: no limit) */
    uint64_t cache_max;         /* spool limit in bytes (0: min(8 GiB, free/2) at start) */
    bool upload_present;        /* upload files whose instance the store already has */
    /* Whether the calling request was interrupted (FUSE interrupt): a
     * writer waiting for cache room then gives up with EINTR. NULL: never. */
    int (*interrupted)(void);
    uid_t uid; /* owner shown for spooled files */
    gid_t gid;
    /* Told of every file dropped at its last close because its content was
     * refused (EINVAL: not DICOM Part 10; not ENOSPC or I/O errors, which
     * the writes reported too) with store, path below import/ and reason;
     * may be NULL. Called with the manager's lock held: must not call back
     * into import_. */
    void (*on_reject)(void *ctx, const char *store, const char *path, const char *reason);
    void *on_reject_ctx;
} import_config;

/* Starts the manager: loads the journal, resumes pending uploads and imports. */
int import_mgr_new(const import_config *cfg, gcs_client *gcs, hc_client *hc, journal *j,
                   import_mgr **out);
/* Stops threads after the in-flight requests; pending work stays in the journal. */
void import_mgr_free(import_mgr *m);

typedef int (*import_fill_fn)(void *buf, const char *name, const struct stat *st);

int import_getattr(import_mgr *m, const char *store, const char *rel, struct stat *st);
int import_readdir(import_mgr *m, const char *store, const char *rel, import_fill_fn fill,
                   void *buf);
int import_mkdir(import_mgr *m, const char *store, const char *rel, mode_t mode);
int import_rmdir(import_mgr *m, const char *store, const char *rel);
int import_create(import_mgr *m, const char *store, const char *rel, mode_t mode, uint64_t *fh);
int import_open(import_mgr *m, const char *store, const char *rel, int flags, uint64_t *fh);
/* Return bytes written/read or a negative errno (ENOSPC when the cache is full). */
int import_write(import_mgr *m, uint64_t fh, const char *buf, size_t size, off_t off);
int import_read(import_mgr *m, uint64_t fh, char *buf, size_t size, off_t off);
int import_flush(import_mgr *m, uint64_t fh); /* durability + DICOM check: close()'s result */
/* The last writer's release drops a file whose last check failed. */
int import_release(import_mgr *m, uint64_t fh);
int import_fsync(import_mgr *m, uint64_t fh);
int import_truncate(import_mgr *m, const char *store, const char *rel, off_t size,
                    uint64_t fh /* 0 if none */);
int import_rename(import_mgr *m, const char *store, const char *from, const char *to,
                  unsigned int flags);
int import_unlink(import_mgr *m, const char *store, const char *rel);
int import_utimens(import_mgr *m, const char *store, const char *rel, const struct timespec tv[2]);
int import_chmod(import_mgr *m, const char *store, const char *rel, mode_t mode);
/* Remembers the owner shown for a pending file or directory ((uid_t)-1
 * / (gid_t)-1 = unchanged), so `rsync -a` run as root keeps its ownership
 * and finds nothing to change on its second run. */
int import_chown(import_mgr *m, const char *store, const char *rel, uid_t uid, gid_t gid);

/* The state of a file under import/ (user.dicomfs.state): "pending"
 * (written or accepted, not uploaded yet), "uploaded", "importing",
 * "imported", "present" (the store already held its instance: not
 * uploaded) or "failed". -ENODATA for a directory, -ENOENT if unknown. */
int import_state(import_mgr *m, const char *store, const char *rel, char *out, size_t outlen);

/* True when the manager holds state for store (full resource name): files
 * spooled, uploading, importing or imported since the journal began. */
bool import_knows_store(import_mgr *m, const char *store);
/* The same for any store of dataset (full resource name). */
bool import_knows_dataset(import_mgr *m, const char *dataset);

/* The STORE/status file: progress counters as "key: value" lines, then one
 * "failed: PATH: REASON" line per failed file. Returns malloc'ed text. */
char *import_status_text(import_mgr *m, const char *store);

#endif
