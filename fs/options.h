/* options: the dicomfs command line and mount options.
 *
 * Owns: `dicomfs SOURCE MOUNTPOINT [-o opts] [-f] [-d] [-s]` parsing with
 * fuse_opt, validation of SOURCE and the gs:// URIs, the defaults (export
 * destination, cache directory, uploads, commit delay) and the list of
 * arguments handed on to FUSE (everything dicomfs does not consume, plus
 * default_permissions, fsname and subtype).
 */
#ifndef DICOMFS_OPTIONS_H
#define DICOMFS_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct fuse_args;

typedef struct fs_options {
    char *source;     /* as given, without trailing '/' */
    char *location;   /* projects/P/locations/L */
    char *dataset;    /* full dataset name when SOURCE names one, else NULL */
    char *mountpoint; /* absolute path */

    char *staging;        /* gs://B/P as given */
    char *staging_bucket; /* B */
    char *staging_prefix; /* P without leading/trailing '/', may be "" */
    char *export_to;      /* gs://B/P, defaulted from staging */
    char *export_bucket;
    char *export_prefix; /* without trailing '/', may be "" */

    char *cache_dir;   /* defaulted (see fs_options_default_cache_dir) */
    char *credentials; /* NULL: Application Default Credentials */
    char *endpoint;    /* Healthcare API root, NULL: client default */
    char *storage_endpoint;
    char *ca_file; /* CA bundle for https, NULL: the system's */
    int uploads;
    int upload_nice; /* upload_nice=: nice of the upload threads, 0..19 */
    double commit_delay;
    int stream_min_mib;       /* stream_min=: stream uploads of files from this size on;
                                 0 = never (import_config takes it as it is) */
    int imports;              /* import operations in flight per store */
    uint64_t batch_max_files; /* a batch starts once it holds this many files */
    uint64_t batch_max_bytes; /* ... or this many bytes */
    uint64_t cache_max;       /* spool limit in bytes; 0 = default at mount */
    bool upload_present;      /* upload files whose instance is already stored */
    double timeout;           /* seconds a FUSE request may wait on the server, retries included */
    bool allow_delete;
    bool no_auth;
    bool sync_close; /* fsync spool file and journal at every close() in import/ */
    bool foreground;
    bool debug;
    bool single_thread;
    bool show_help;
    bool show_version;

    struct fuse_args *fuse_args; /* handed to fuse_new() (fuse_opt.h; malloc'ed) */
} fs_options;

enum { FS_OPTIONS_DEFAULT_UPLOADS = 0 }; /* 0: adaptive, 4..64 from 16 (upconc.h) */
#define FS_OPTIONS_DEFAULT_COMMIT_DELAY 0.2
/* The copy into import/ comes first on a busy CPU; uploads wait for the
 * network anyway (README, defaults, says what was measured). */
#define FS_OPTIONS_DEFAULT_UPLOAD_NICE 10
#define FS_OPTIONS_DEFAULT_STREAM_MIN_MIB 32
/* Real imports take minutes and the service caps running operations per
 * project and runs one store's operations one after another: one at a time
 * per store, and a batch starts on size so a long copy imports as it goes
 * (README, options table, says why these figures). */
#define FS_OPTIONS_DEFAULT_IMPORTS 1
#define FS_OPTIONS_DEFAULT_BATCH_FILES 1000
#define FS_OPTIONS_DEFAULT_BATCH_BYTES (1ull << 30)
#define FS_OPTIONS_DEFAULT_TIMEOUT 20.0

/* Parses argv. On a usage error returns -1 with a one-line message in err;
 * --help / --version set show_help / show_version and return 0 without
 * requiring SOURCE or staging. Does not touch the filesystem except to
 * resolve MOUNTPOINT to an absolute path. */
int fs_options_parse(int argc, char **argv, fs_options *o, char *err, size_t errlen);
void fs_options_free(fs_options *o);

/* SOURCE = projects/P/locations/L[/datasets/D] (one trailing '/' allowed).
 * Sets *location and *dataset (NULL for a location). Returns 0 or -1 with a
 * message in err. */
int fs_source_parse(const char *source, char **location, char **dataset, char *err, size_t errlen);

/* Default cache directory: /var/cache/dicomfs/HASH for uid 0, else
 * $XDG_CACHE_HOME/dicomfs/HASH or ~/.cache/dicomfs/HASH. HASH is a short
 * hex digest of the source so two mounts of different sources never share a
 * journal. Returns malloc'ed path or NULL. */
char *fs_options_default_cache_dir(const char *source, uid_t uid);

/* Creates dir (and parents) with mode 0700 and checks it is a directory
 * owned by us, not accessible by others, and writable. Returns 0 or -errno
 * with a message in err. */
int fs_options_prepare_cache_dir(const char *dir, char *err, size_t errlen);

void fs_options_usage(const char *progname);

#endif
