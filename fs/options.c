/* options: command line and mount options of the daemon (see options.h). */
#include "options.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fuse_opt.h>

#include "gcs.h"
#include "util.h"

/* What fuse_opt writes: it stores ints for flags and strdup'ed strings. */
struct raw_opts {
    char *staging, *export_to, *cache_dir, *credentials, *endpoint, *storage_endpoint;
    char *ca_file;
    char *uploads, *commit_delay, *stream_min, *imports, *batch_max, *cache_max, *timeout;
    char *upload_nice;
    int allow_delete, no_auth, sync_close, upload_present;
    int help, version, foreground, debug, single_thread;
    int n_nonopt;
    char *nonopt[2];
    int extra_nonopt;
    char *extra;
};

enum { KEY_HELP, KEY_VERSION, KEY_FOREGROUND, KEY_DEBUG, KEY_SINGLE, KEY_DISCARD };

#define RAW(t, f)                                                                                  \
    {                                                                                              \
        t, offsetof(struct raw_opts, f), 1                                                         \
    }
#define RAWS(t, f)                                                                                 \
    {                                                                                              \
        t, offsetof(struct raw_opts, f), 0                                                         \
    }

static const struct fuse_opt option_spec[] = {
    RAWS("staging=%s", staging),
    RAWS("export_to=%s", export_to),
    RAWS("cache_dir=%s", cache_dir),
    RAWS("credentials=%s", credentials),
    RAWS("endpoint=%s", endpoint),
    RAWS("storage_endpoint=%s", storage_endpoint),
    RAWS("ca_file=%s", ca_file),
    RAWS("uploads=%s", uploads),
    RAWS("upload_nice=%s", upload_nice),
    RAWS("commit_delay=%s", commit_delay),
    RAWS("stream_min=%s", stream_min),
    RAWS("imports=%s", imports),
    RAWS("batch_max=%s", batch_max),
    RAWS("cache_max=%s", cache_max),
    RAW("upload_present", upload_present),
    RAWS("timeout=%s", timeout),
    RAW("allow_delete", allow_delete),
    RAW("no_auth", no_auth),
    RAW("sync_close", sync_close),
    FUSE_OPT_KEY("-h", KEY_HELP),
    FUSE_OPT_KEY("--help", KEY_HELP),
    FUSE_OPT_KEY("-V", KEY_VERSION),
    FUSE_OPT_KEY("--version", KEY_VERSION),
    FUSE_OPT_KEY("-f", KEY_FOREGROUND),
    FUSE_OPT_KEY("-d", KEY_DEBUG),
    FUSE_OPT_KEY("debug", KEY_DEBUG),
    FUSE_OPT_KEY("-s", KEY_SINGLE),
    /* fstab-only words that mean nothing to FUSE (mount.fuse3 drops most of
     * them already; a direct invocation may still pass them). */
    FUSE_OPT_KEY("_netdev", KEY_DISCARD),
    FUSE_OPT_KEY("nofail", KEY_DISCARD),
    FUSE_OPT_KEY("noauto", KEY_DISCARD),
    FUSE_OPT_KEY("auto", KEY_DISCARD),
    FUSE_OPT_KEY("user", KEY_DISCARD),
    FUSE_OPT_KEY("users", KEY_DISCARD),
    FUSE_OPT_KEY("nouser", KEY_DISCARD),
    FUSE_OPT_KEY("defaults", KEY_DISCARD),
    FUSE_OPT_END,
};

static int option_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
    (void)outargs;
    struct raw_opts *r = data;
    switch (key) {
    case KEY_HELP:
        r->help = 1;
        return 0;
    case KEY_VERSION:
        r->version = 1;
        return 0;
    case KEY_FOREGROUND:
        r->foreground = 1;
        return 0;
    case KEY_DEBUG:
        r->debug = 1;
        return 1; /* FUSE prints its own request trace too */
    case KEY_SINGLE:
        r->single_thread = 1;
        return 0;
    case KEY_DISCARD:
        return 0;
    case FUSE_OPT_KEY_NONOPT:
        if (r->n_nonopt < 2) {
            r->nonopt[r->n_nonopt++] = strdup(arg);
        } else if (!r->extra_nonopt) {
            r->extra_nonopt = 1;
            r->extra = strdup(arg);
        }
        return 0;
    case FUSE_OPT_KEY_OPT:
        if (strncmp(arg, "x-", 2) == 0) /* x-systemd.* and friends */
            return 0;
        return 1;
    default:
        return 1;
    }
}

static void raw_free(struct raw_opts *r)
{
    free(r->staging);
    free(r->export_to);
    free(r->cache_dir);
    free(r->credentials);
    free(r->endpoint);
    free(r->storage_endpoint);
    free(r->ca_file);
    free(r->uploads);
    free(r->upload_nice);
    free(r->commit_delay);
    free(r->stream_min);
    free(r->imports);
    free(r->batch_max);
    free(r->cache_max);
    free(r->timeout);
    free(r->nonopt[0]);
    free(r->nonopt[1]);
    free(r->extra);
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* A project, location or dataset id: non-empty, no '/', no control or
 * space characters, not "." or "..". The server has the final word on the
 * exact character set; this only keeps the resource name well-formed. */
static bool id_ok(const char *s, size_t len)
{
    if (len == 0 || len > 256)
        return false;
    if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.'))
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c == '/' || c == 0x7f || c == '?' || c == '#' || c == '%' || c == ',')
            return false;
    }
    return true;
}

int fs_source_parse(const char *source, char **location, char **dataset, char *err, size_t errlen)
{
    *location = NULL;
    *dataset = NULL;
    static const char *const usage = "expected projects/PROJECT/locations/LOCATION or "
                                     "projects/PROJECT/locations/LOCATION/datasets/DATASET";
    if (!source || !*source)
        return fail(err, errlen, "missing SOURCE: %s", usage);
    size_t n = strlen(source);
    if (n > 1 && source[n - 1] == '/')
        n--;
    /* Split into components. */
    const char *comp[8];
    size_t clen[8];
    int nc = 0;
    const char *p = source, *end = source + n;
    while (p <= end) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *e = slash ? slash : end;
        if (nc == 8)
            return fail(err, errlen, "bad SOURCE '%s': %s", source, usage);
        comp[nc] = p;
        clen[nc] = (size_t)(e - p);
        nc++;
        if (!slash)
            break;
        p = slash + 1;
    }
    bool shape = (nc == 4 || nc == 6) && clen[0] == 8 && memcmp(comp[0], "projects", 8) == 0 &&
                 clen[2] == 9 && memcmp(comp[2], "locations", 9) == 0;
    if (shape && nc == 6)
        shape = clen[4] == 8 && memcmp(comp[4], "datasets", 8) == 0;
    if (!shape)
        return fail(err, errlen, "bad SOURCE '%s': %s", source, usage);
    for (int i = 1; i < nc; i += 2)
        if (!id_ok(comp[i], clen[i]))
            return fail(err, errlen, "bad SOURCE '%s': invalid id '%.*s'", source, (int)clen[i],
                        comp[i]);
    size_t loc_len = (size_t)(comp[3] + clen[3] - source);
    *location = strndup(source, loc_len);
    if (nc == 6)
        *dataset = strndup(source, n);
    if (!*location || (nc == 6 && !*dataset)) {
        free(*location);
        free(*dataset);
        *location = *dataset = NULL;
        return fail(err, errlen, "out of memory");
    }
    return 0;
}

/* gs://B[/P] -> bucket, prefix without surrounding '/'. */
static int parse_gs(const char *what, const char *uri, char **bucket, char **prefix, char *err,
                    size_t errlen)
{
    char *b = NULL, *p = NULL;
    if (gcs_parse_uri(uri, &b, &p) != CERR_OK || !b || !*b) {
        free(b);
        free(p);
        return fail(err, errlen, "bad %s '%s': expected gs://BUCKET/PREFIX", what, uri);
    }
    if (!p)
        p = strdup("");
    char *s = p;
    while (*s == '/')
        s++;
    memmove(p, s, strlen(s) + 1);
    size_t n = strlen(p);
    while (n > 0 && p[n - 1] == '/')
        p[--n] = '\0';
    if (strstr(p, "//") || strchr(p, '*') || strchr(p, '?') || strchr(p, '[')) {
        free(b);
        free(p);
        return fail(err, errlen, "bad %s '%s': the prefix may not contain '//' or wildcards", what,
                    uri);
    }
    *bucket = b;
    *prefix = p;
    return 0;
}

static int parse_int(const char *what, const char *s, long lo, long hi, int *out, char *err,
                     size_t errlen)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return fail(err, errlen, "bad %s '%s': expected an integer in %ld..%ld", what, s, lo, hi);
    *out = (int)v;
    return 0;
}

/* "123" or "123K/M/G/T" (binary units, optional trailing "iB"/"B"). *had_unit
 * says whether a unit was given (batch_max: a plain number counts files). */
static int parse_size(const char *what, const char *s, uint64_t *out, bool *had_unit, char *err,
                      size_t errlen)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-')
        return fail(err, errlen, "bad %s '%s': expected a number, optionally with K, M, G or T",
                    what, s);
    int shift = 0;
    const char *u = "KMGT";
    const char *at = *end ? strchr(u, *end & ~0x20) : NULL;
    if (at) {
        shift = 10 * (int)(at - u + 1);
        end++;
        if ((*end & ~0x20) == 'I')
            end++;
        if ((*end & ~0x20) == 'B')
            end++;
    } else if ((*end & ~0x20) == 'B') {
        end++;
        shift = 0;
        at = end;
    }
    if (*end || (shift && v > (UINT64_MAX >> shift)))
        return fail(err, errlen, "bad %s '%s': expected a number, optionally with K, M, G or T",
                    what, s);
    *out = (uint64_t)v << shift;
    *had_unit = at != NULL;
    return 0;
}

static int parse_seconds(const char *what, const char *s, double *out, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= 0 && v <= 86400))
        return fail(err, errlen, "bad %s '%s': expected seconds in 0..86400", what, s);
    *out = v;
    return 0;
}

static uint64_t fnv1a64(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

char *fs_options_default_cache_dir(const char *source, uid_t uid)
{
    char hash[17];
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)fnv1a64(source));
    if (uid == 0)
        return util_asprintf("/var/cache/dicomfs/%s", hash);
    const char *xdg = getenv("XDG_CACHE_HOME");
    if (xdg && xdg[0] == '/')
        return util_asprintf("%s/dicomfs/%s", xdg, hash);
    const char *home = getenv("HOME");
    if (!home || home[0] != '/')
        return NULL;
    return util_asprintf("%s/.cache/dicomfs/%s", home, hash);
}

/* Every directory above the cache must be safe from other users: owned by
 * root or us, and not writable by others unless sticky (like /tmp), or
 * someone could rename our cache away and put theirs in its place. */
static int check_ancestors(const char *dir, char *err, size_t errlen)
{
    char *real = realpath(dir, NULL);
    if (!real) {
        int rc = -errno;
        fail(err, errlen, "cache_dir '%s': %s", dir, strerror(errno));
        return rc;
    }
    int rc = 0;
    bool more = strcmp(real, "/") != 0;
    while (rc == 0 && more) {
        char *p = strrchr(real, '/'); /* drop the last component: its parent next */
        more = p != real;
        p[more ? 0 : 1] = '\0';
        const char *path = real;
        struct stat st;
        if (stat(path, &st) != 0)
            continue;
        if (st.st_uid != 0 && st.st_uid != geteuid())
            rc = fail(err, errlen,
                      "cache_dir '%s': %s above it belongs to uid %u: another user could "
                      "replace the cache; choose a path inside your own directories",
                      dir, path, (unsigned)st.st_uid);
        else if ((st.st_mode & 022) && !(st.st_mode & S_ISVTX))
            rc = fail(err, errlen,
                      "cache_dir '%s': %s above it is writable by others (mode %03o) and not "
                      "sticky: another user could replace the cache; choose another path",
                      dir, path, (unsigned)(st.st_mode & 07777));
    }
    free(real);
    return rc ? -EPERM : 0;
}

int fs_options_prepare_cache_dir(const char *dir, char *err, size_t errlen)
{
    if (!dir || dir[0] != '/') {
        fail(err, errlen, "cache_dir '%s' must be an absolute path", dir ? dir : "");
        return -EINVAL;
    }
    int rc = util_mkdirs(dir, 0700);
    if (rc) {
        fail(err, errlen, "cache_dir '%s': cannot create: %s", dir, strerror(-rc));
        return rc;
    }
    struct stat st;
    if (stat(dir, &st) != 0) {
        rc = -errno;
        fail(err, errlen, "cache_dir '%s': %s", dir, strerror(errno));
        return rc;
    }
    if (!S_ISDIR(st.st_mode)) {
        fail(err, errlen, "cache_dir '%s' is not a directory", dir);
        return -ENOTDIR;
    }
    if (st.st_uid != geteuid()) {
        fail(err, errlen, "cache_dir '%s' is owned by uid %u, not by us (uid %u)", dir,
             (unsigned)st.st_uid, (unsigned)geteuid());
        return -EPERM;
    }
    if (check_ancestors(dir, err, errlen))
        return -EPERM;
    /* Spooled DICOM files are patient data: keep the directory private. */
    if ((st.st_mode & 077) && chmod(dir, st.st_mode & 0700) != 0) {
        rc = -errno;
        fail(err, errlen, "cache_dir '%s': cannot make it private (0700): %s", dir,
             strerror(errno));
        return rc;
    }
    if (access(dir, R_OK | W_OK | X_OK) != 0) {
        rc = -errno;
        fail(err, errlen, "cache_dir '%s' is not writable: %s", dir, strerror(errno));
        return rc;
    }
    return 0;
}

/* Makes a relative *path absolute (from the current directory, which the
 * daemon leaves when it detaches). */
static int absolute_path(const char *what, char **path, char *err, size_t errlen)
{
    if (!*path || !**path || **path == '/')
        return 0;
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        return fail(err, errlen, "%s '%s': %s", what, *path, strerror(errno));
    char *abs = util_asprintf("%s/%s", cwd, *path);
    if (!abs)
        return fail(err, errlen, "out of memory");
    free(*path);
    *path = abs;
    return 0;
}

/* Read once now, so that a wrong path fails the mount with a clear message
 * instead of every request failing TLS verification later; made absolute
 * because the daemon changes to "/" when it detaches. */
static int check_ca_file(fs_options *o, char *err, size_t errlen)
{
    if (!o->ca_file)
        return 0;
    char *abs = realpath(o->ca_file, NULL);
    FILE *f = abs ? fopen(abs, "r") : NULL;
    if (!f) {
        int e = errno;
        free(abs);
        return fail(err, errlen, "ca_file '%s': %s (give a readable PEM file of CA certificates)",
                    o->ca_file, strerror(e));
    }
    fclose(f);
    free(o->ca_file);
    o->ca_file = abs;
    return 0;
}

static int take_raw(struct raw_opts *r, fs_options *o, char *err, size_t errlen)
{
    o->show_help = r->help;
    o->show_version = r->version;
    o->foreground = r->foreground;
    o->debug = r->debug;
    o->single_thread = r->single_thread;
    o->allow_delete = r->allow_delete;
    o->no_auth = r->no_auth;
    o->sync_close = r->sync_close;
    /* Ownership of the strings moves to o. */
    o->source = r->nonopt[0];
    o->mountpoint = r->nonopt[1];
    o->staging = r->staging;
    o->export_to = r->export_to;
    o->cache_dir = r->cache_dir;
    o->credentials = r->credentials;
    o->endpoint = r->endpoint;
    o->storage_endpoint = r->storage_endpoint;
    o->ca_file = r->ca_file;
    r->ca_file = NULL;
    r->nonopt[0] = r->nonopt[1] = NULL;
    r->staging = r->export_to = r->cache_dir = r->credentials = NULL;
    r->endpoint = r->storage_endpoint = NULL;
    if (o->show_help || o->show_version)
        return 0;

    if (r->extra_nonopt)
        return fail(err, errlen, "unexpected argument '%s' (usage: dicomfs SOURCE MOUNTPOINT)",
                    r->extra);
    if (!o->source)
        return fail(err, errlen,
                    "missing SOURCE (usage: dicomfs SOURCE MOUNTPOINT -o "
                    "staging=gs://BUCKET/PREFIX)");
    if (!o->mountpoint)
        return fail(err, errlen,
                    "missing MOUNTPOINT (usage: dicomfs SOURCE MOUNTPOINT -o "
                    "staging=gs://BUCKET/PREFIX)");
    if (fs_source_parse(o->source, &o->location, &o->dataset, err, errlen))
        return -1;
    /* The canonical form (no trailing '/') names the mount and its cache. */
    free(o->source);
    o->source = strdup(o->dataset ? o->dataset : o->location);
    if (!o->source)
        return fail(err, errlen, "out of memory");
    if (!o->staging)
        return fail(err, errlen,
                    "missing -o staging=gs://BUCKET/PREFIX (where files are "
                    "staged for import)");
    if (parse_gs("staging", o->staging, &o->staging_bucket, &o->staging_prefix, err, errlen))
        return -1;
    if (o->export_to) {
        if (parse_gs("export_to", o->export_to, &o->export_bucket, &o->export_prefix, err, errlen))
            return -1;
    } else {
        /* Beside the staging area, never inside it: an import of the staging
         * prefix with "**" must not pick up exported objects. */
        o->export_bucket = strdup(o->staging_bucket);
        o->export_prefix = *o->staging_prefix ? util_asprintf("%s-exports", o->staging_prefix)
                                              : strdup("dicomfs-exports");
        o->export_to = util_asprintf("gs://%s/%s", o->export_bucket, o->export_prefix);
        if (!o->export_bucket || !o->export_prefix || !o->export_to)
            return fail(err, errlen, "out of memory");
    }
    o->uploads = FS_OPTIONS_DEFAULT_UPLOADS;
    if (r->uploads && parse_int("uploads", r->uploads, 1, 256, &o->uploads, err, errlen))
        return -1;
    o->commit_delay = FS_OPTIONS_DEFAULT_COMMIT_DELAY;
    if (r->commit_delay &&
        parse_seconds("commit_delay", r->commit_delay, &o->commit_delay, err, errlen))
        return -1;
    o->timeout = FS_OPTIONS_DEFAULT_TIMEOUT;
    if (r->timeout && parse_seconds("timeout", r->timeout, &o->timeout, err, errlen))
        return -1;
    if (o->timeout <= 0)
        return fail(err, errlen, "bad timeout=%s: must be more than 0 seconds", r->timeout);
    o->stream_min_mib = FS_OPTIONS_DEFAULT_STREAM_MIN_MIB;
    if (r->stream_min &&
        parse_int("stream_min", r->stream_min, 0, 1 << 20, &o->stream_min_mib, err, errlen))
        return -1;
    o->upload_nice = FS_OPTIONS_DEFAULT_UPLOAD_NICE;
    if (r->upload_nice &&
        parse_int("upload_nice", r->upload_nice, 0, 19, &o->upload_nice, err, errlen))
        return -1;
    o->imports = FS_OPTIONS_DEFAULT_IMPORTS;
    if (r->imports && parse_int("imports", r->imports, 1, 64, &o->imports, err, errlen))
        return -1;
    o->batch_max_files = FS_OPTIONS_DEFAULT_BATCH_FILES;
    o->batch_max_bytes = FS_OPTIONS_DEFAULT_BATCH_BYTES;
    if (r->batch_max) {
        uint64_t v;
        bool unit;
        if (parse_size("batch_max", r->batch_max, &v, &unit, err, errlen))
            return -1;
        if (v == 0)
            return fail(err, errlen, "bad batch_max '%s': must be at least 1", r->batch_max);
        if (unit)
            o->batch_max_bytes = v;
        else
            o->batch_max_files = v;
    }
    o->cache_max = 0; /* default: decided at mount from the cache filesystem */
    if (r->cache_max) {
        bool unit;
        if (parse_size("cache_max", r->cache_max, &o->cache_max, &unit, err, errlen))
            return -1;
        if (o->cache_max < (1u << 20))
            return fail(err, errlen, "bad cache_max '%s': at least 1M", r->cache_max);
    }
    o->upload_present = r->upload_present != 0;
    if (!o->cache_dir) {
        o->cache_dir = fs_options_default_cache_dir(o->source, geteuid());
        if (!o->cache_dir)
            return fail(err, errlen,
                        "no cache_dir given and neither XDG_CACHE_HOME nor HOME "
                        "is set");
    } else if (o->cache_dir[0] != '/') {
        char *abs = realpath(o->cache_dir, NULL);
        if (!abs) {
            char cwd[PATH_MAX];
            if (!getcwd(cwd, sizeof cwd))
                return fail(err, errlen, "cache_dir '%s': %s", o->cache_dir, strerror(errno));
            abs = util_asprintf("%s/%s", cwd, o->cache_dir);
        }
        free(o->cache_dir);
        o->cache_dir = abs;
    }
    /* The daemon changes to "/" when it detaches and reads the file again. */
    if (absolute_path("credentials", &o->credentials, err, errlen))
        return -1;
    const char *gac = getenv("GOOGLE_APPLICATION_CREDENTIALS");
    if (gac && *gac && *gac != '/') {
        char *abs = strdup(gac);
        if (!abs || absolute_path("GOOGLE_APPLICATION_CREDENTIALS", &abs, err, errlen) ||
            setenv("GOOGLE_APPLICATION_CREDENTIALS", abs, 1) != 0) {
            free(abs);
            return fail(err, errlen, "GOOGLE_APPLICATION_CREDENTIALS: out of memory");
        }
        free(abs);
    }
    if (o->endpoint && !*o->endpoint)
        return fail(err, errlen, "bad endpoint: empty");
    if (o->storage_endpoint && !*o->storage_endpoint)
        return fail(err, errlen, "bad storage_endpoint: empty");
    return check_ca_file(o, err, errlen);
}

static int add_fuse_defaults(fs_options *o)
{
    /* Ours go first so that the user's own -o values, later on the line, win. */
    char *fsname = util_asprintf("-ofsname=%s,subtype=dicomfs,default_permissions", o->source);
    if (!fsname)
        return -1;
    int rc = fuse_opt_insert_arg(o->fuse_args, 1, fsname);
    free(fsname);
    return rc;
}

int fs_options_parse(int argc, char **argv, fs_options *o, char *err, size_t errlen)
{
    memset(o, 0, sizeof *o);
    struct raw_opts r;
    memset(&r, 0, sizeof r);
    o->fuse_args = calloc(1, sizeof *o->fuse_args);
    if (!o->fuse_args)
        return fail(err, errlen, "out of memory");
    *o->fuse_args = (struct fuse_args)FUSE_ARGS_INIT(0, NULL);
    for (int i = 0; i < argc; i++)
        if (fuse_opt_add_arg(o->fuse_args, argv[i]) != 0)
            return fail(err, errlen, "out of memory");
    if (fuse_opt_parse(o->fuse_args, &r, option_spec, option_proc) != 0) {
        raw_free(&r);
        return fail(err, errlen, "cannot parse the options");
    }
    int rc = take_raw(&r, o, err, errlen);
    raw_free(&r);
    if (rc == 0 && !o->show_help && !o->show_version && add_fuse_defaults(o) != 0)
        return fail(err, errlen, "out of memory");
    return rc;
}

void fs_options_free(fs_options *o)
{
    free(o->source);
    free(o->location);
    free(o->dataset);
    free(o->mountpoint);
    free(o->staging);
    free(o->staging_bucket);
    free(o->staging_prefix);
    free(o->export_to);
    free(o->export_bucket);
    free(o->export_prefix);
    free(o->cache_dir);
    free(o->credentials);
    free(o->endpoint);
    free(o->storage_endpoint);
    free(o->ca_file);
    if (o->fuse_args)
        fuse_opt_free_args(o->fuse_args);
    free(o->fuse_args);
    memset(o, 0, sizeof *o);
}

void fs_options_usage(const char *progname)
{
    printf("usage: %s SOURCE MOUNTPOINT -o staging=gs://BUCKET/PREFIX[,OPTIONS] [-f] [-d] [-s]\n"
           "       %s wait PATH\n"
           "\n"
           "Mounts Google Cloud Healthcare API DICOM stores as directories.\n"
           "\n"
           "SOURCE:\n"
           "  projects/P/locations/L             datasets at the root\n"
           "  projects/P/locations/L/datasets/D  DICOM stores at the root\n"
           "\n"
           "dicomfs options (-o NAME=VALUE, comma separated):\n"
           "  staging=gs://B/P       where files written to import/ are staged (required)\n"
           "  export_to=gs://B/P     export destination (default gs://B/P-exports beside\n"
           "                         the staging prefix)\n"
           "  cache_dir=DIR          spool and journal (default /var/cache/dicomfs/HASH as\n"
           "                         root, else $XDG_CACHE_HOME/dicomfs/HASH); mode 0700\n"
           "  credentials=FILE       service account or authorized_user JSON (default:\n"
           "                         Application Default Credentials)\n"
           "  endpoint=URL           Healthcare API root (default\n"
           "                         $CLOUDSDK_API_ENDPOINT_OVERRIDES_HEALTHCARE or Google)\n"
           "  storage_endpoint=URL   Cloud Storage root (default $STORAGE_EMULATOR_HOST or "
           "Google)\n"
           "  ca_file=FILE           PEM CA certificates to verify https servers with,\n"
           "                         instead of the system bundle (e.g. an emulator's\n"
           "                         --tls-dir ca.pem); verification is always on\n"
           "  uploads=N              parallel uploads (default: adaptive, 4 to 64 from 16,\n"
           "                         by measured throughput)\n"
           "  upload_nice=N          nice of the upload threads (dfs-upload, dfs-stream in\n"
           "                         top -H), 0..19: the copy into\n"
           "                         import/ comes first on a busy CPU (default %d;\n"
           "                         0: uploads compete with it as equals)\n"
           "  commit_delay=SECONDS   quiet period before a batch is imported (default %g)\n"
           "  stream_min=MIB         upload a file while it is written once it reaches MIB\n"
           "                         (0: only after close; default %d)\n"
           "  imports=N              import operations running at once per store (default %d;\n"
           "                         the service limits running operations per project)\n"
           "  batch_max=N|SIZE       when no import runs, start one once the batch holds N\n"
           "                         files or SIZE bytes (e.g. 1G), even while the copy\n"
           "                         goes on\n"
           "                         (default %d files, %d GiB)\n"
           "  cache_max=SIZE         local spool limit; writers wait while it is full\n"
           "                         (default: the smaller of 8G and half the cache\n"
           "                         filesystem's free space at mount)\n"
           "  upload_present         upload files whose instance the store already holds\n"
           "                         (default: such files are reported present, not sent)\n"
           "  timeout=SECONDS        longest a command waits on the server (default %g);\n"
           "                         then listings show the last known content, other\n"
           "                         calls fail with EIO (uploads and imports keep going)\n"
           "  sync_close             close() in import/ also fsyncs the file and the journal\n"
           "                         (power-loss durable at every close; default: at fsync\n"
           "                         and within 50 ms for the journal, like a local disk)\n"
           "  allow_delete           let rmdir remove datasets and stores, and rm / rm -r\n"
           "                         delete instances, series and studies under studies/\n"
           "                         (off by default: those fail with EACCES)\n"
           "  no_auth                send no credentials (local emulator only)\n"
           "\n"
           "FUSE options: -f (foreground, log to stderr), -d (debug), -s (single thread),\n"
           "  -o allow_other, attr_timeout=S, entry_timeout=S, max_read=N, ... are passed on.\n"
           "  default_permissions is always on.\n"
           "\n"
           "  -h, --help     this text\n"
           "  -V, --version  version\n"
           "\n"
           "The tree, export runs, editors in export/, refusals, status and the exit\n"
           "codes of wait: see dicomfs(1).\n",
           progname, progname, FS_OPTIONS_DEFAULT_UPLOAD_NICE, FS_OPTIONS_DEFAULT_COMMIT_DELAY,
           FS_OPTIONS_DEFAULT_STREAM_MIN_MIB, FS_OPTIONS_DEFAULT_IMPORTS,
           FS_OPTIONS_DEFAULT_BATCH_FILES, (int)(FS_OPTIONS_DEFAULT_BATCH_BYTES >> 30),
           FS_OPTIONS_DEFAULT_TIMEOUT);
}
