/* dicomfs: mounts Cloud Healthcare API DICOM stores (see README.md and
 * docs/architecture.md).
 *
 * Order matters: parse options, check everything a user can get wrong
 * (SOURCE, credentials, endpoint, staging bucket, cache directory) while
 * errors still reach the terminal, mount, and only then daemonize and start
 * threads (the import manager starts in the init callback).
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "fuse_ops.h" /* first: FUSE_USE_VERSION */
#include "fuseio.h"
#include <fuse_lowlevel.h>
#include "log.h"
#include "util.h"
#include "options.h"
#include "wait.h"

#ifndef DICOMFS_VERSION
#define DICOMFS_VERSION "0.1.0"
#endif

static int stop_first(void *c, const char *name, const char *json)
{
    (void)c;
    (void)name;
    (void)json;
    return 1;
}

static int stop_first_obj(void *c, const gcs_object *obj, const char *prefix)
{
    (void)c;
    (void)obj;
    (void)prefix;
    return 1;
}

/* No answer from the server: no connection, no time left, or no token. */
static bool unreachable(int rc, const cerr_detail *err)
{
    return err->http_status == 0 &&
           (rc == CERR_NETWORK || rc == CERR_TIMEOUT || rc == CERR_AUTH || rc == CERR_TOKEN);
}

static int check_token(fs_clients *cl, char *msg, size_t len)
{
    if (auth_provider_kind(cl->auth) == AUTH_KIND_NONE)
        return 0;
    char tok[4096];
    cerr_detail err = {0};
    int rc = auth_get_token(cl->auth, tok, sizeof tok, false, &err);
    memset(tok, 0, sizeof tok); /* never kept, never logged */
    if (rc == 0)
        return 0;
    if (rc == CERR_NETWORK || rc == CERR_UNAVAILABLE || (err.http_status == 0 && rc != CERR_AUTH))
        snprintf(msg, len, "cannot reach the token endpoint: %s", err.message);
    else
        snprintf(msg, len, "credentials rejected: %s%s%s", err.status, err.status[0] ? ": " : "",
                 err.message);
    return -1;
}

static int check_source(const fs_options *o, fs_clients *cl, char *msg, size_t len)
{
    cerr_detail err = {0};
    int rc;
    if (o->dataset) {
        char *json = NULL;
        rc = hc_dataset_get(cl->hc, o->dataset, &json, &err);
        free(json);
    } else {
        rc = hc_datasets_list(cl->hc, o->location, stop_first, NULL, &err);
        if (rc == 1)
            rc = CERR_OK;
    }
    if (rc == CERR_OK)
        return 0;
    const char *ep = hc_client_endpoint(cl->hc);
    if (unreachable(rc, &err))
        snprintf(msg, len, "cannot reach the Healthcare API at %s: %s", ep, err.message);
    else if (rc == CERR_NOT_FOUND)
        snprintf(msg, len, "%s does not exist (%s): %s", o->source, ep, err.message);
    else if (rc == CERR_PERMISSION || rc == CERR_AUTH)
        snprintf(msg, len, "access to %s denied (HTTP %ld): %s", o->source, err.http_status,
                 err.message);
    else if (err.http_status >= 400)
        snprintf(msg, len, "checking %s failed (HTTP %ld %s): %s", o->source, err.http_status,
                 err.status, err.message);
    else
        snprintf(msg, len, "checking %s at %s failed: unexpected response", o->source, ep);
    return -1;
}

static int check_bucket(const char *what, const char *bucket, const char *prefix, fs_clients *cl,
                        char *msg, size_t len)
{
    cerr_detail err = {0};
    char *p = *prefix ? util_asprintf("%s/", prefix) : strdup("");
    if (!p) {
        snprintf(msg, len, "out of memory");
        return -1;
    }
    int rc = gcs_list(cl->gcs, bucket, p, "/", stop_first_obj, NULL, &err);
    free(p);
    if (rc == CERR_OK || rc == 1)
        return 0;
    const char *ep = gcs_client_endpoint(cl->gcs);
    if (unreachable(rc, &err))
        snprintf(msg, len, "cannot reach Cloud Storage at %s: %s", ep, err.message);
    else if (rc == CERR_NOT_FOUND)
        snprintf(msg, len, "%s bucket gs://%s does not exist (%s)", what, bucket, ep);
    else if (rc == CERR_PERMISSION || rc == CERR_AUTH)
        snprintf(msg, len, "access to the %s bucket gs://%s denied: %s", what, bucket, err.message);
    else
        snprintf(msg, len, "checking the %s bucket gs://%s failed (HTTP %ld): %s", what, bucket,
                 err.http_status, err.message);
    return -1;
}

/* Everything that can be wrong before mounting, with one clear message. */
static int preflight(const fs_options *o, char *msg, size_t len)
{
    fs_clients cl;
    if (fs_clients_open(o, true, &cl, msg, len) != 0)
        return -1;
    int rc = check_token(&cl, msg, len);
    if (rc == 0)
        rc = check_source(o, &cl, msg, len);
    if (rc == 0)
        rc = check_bucket("staging", o->staging_bucket, o->staging_prefix, &cl, msg, len);
    if (rc == 0 && strcmp(o->export_bucket, o->staging_bucket) != 0)
        rc = check_bucket("export", o->export_bucket, o->export_prefix, &cl, msg, len);
    fs_clients_close(&cl);
    return rc;
}

/* Asks the kernel for parallel lookups and listings (fuseio.h). Without the
 * hooks the mount works, but a lookup may wait behind a listing. */
static void use_fuseio(struct fuse_session *se)
{
    static const struct fuse_custom_io io = {.writev = fuseio_writev, .read = fuseio_read};
    if (fuse_session_custom_io(se, &io, fuse_session_fd(se)) != 0)
        log_warn("cannot hook /dev/fuse: a lookup may wait behind a listing of its directory");
}

static int run(fs_options *o)
{
    char msg[1024] = "";
    char *mnt = realpath(o->mountpoint, NULL);
    if (!mnt) {
        fprintf(stderr, "dicomfs: mountpoint %s: %s\n", o->mountpoint, strerror(errno));
        return 1;
    }
    free(o->mountpoint);
    o->mountpoint = mnt;
    if (fs_options_prepare_cache_dir(o->cache_dir, msg, sizeof msg) != 0) {
        fprintf(stderr, "dicomfs: %s\n", msg);
        return 1;
    }
    if (preflight(o, msg, sizeof msg) != 0) {
        fprintf(stderr, "dicomfs: %s\n", msg);
        return 1;
    }

    fs_ctx x;
    memset(&x, 0, sizeof x);
    x.opt = o;
    x.uid = getuid();
    x.gid = getgid();
    clock_gettime(CLOCK_REALTIME, &x.mount_time);
    x.cache = dircache_new();
    if (!x.cache)
        return 1;

    struct fuse *f =
        fuse_new(o->fuse_args, fs_fuse_operations(), sizeof(struct fuse_operations), &x);
    if (!f) {
        fprintf(stderr, "dicomfs: cannot set up FUSE (see the message above)\n");
        dircache_free(x.cache);
        return 1;
    }
    int status = 1;
    if (fuse_mount(f, o->mountpoint) != 0) {
        fprintf(stderr, "dicomfs: cannot mount on %s\n", o->mountpoint);
        goto out_destroy;
    }
    if (!o->foreground)
        log_init("dicomfs", true, o->debug ? LOG_DEBUG : LOG_INFO);
    if (fuse_daemonize(o->foreground) != 0)
        goto out_unmount;
    struct fuse_session *se = fuse_get_session(f);
    use_fuseio(se);
    if (fuse_set_signal_handlers(se) != 0)
        goto out_unmount;
    /* Built after the fork: no thread or connection crosses it. */
    if (fs_clients_open(o, false, &x.cl, msg, sizeof msg) != 0) {
        log_error("%s", msg);
        goto out_signals;
    }
    status = o->single_thread ? fuse_loop(f) : fuse_loop_mt(f, 0);
    if (status < 0)
        status = 1;
out_signals:
    fuse_remove_signal_handlers(se);
out_unmount:
    fuse_unmount(f);
out_destroy:
    fuse_destroy(f); /* calls destroy: stops the import manager */
    fs_clients_close(&x.cl);
    dircache_free(x.cache);
    return status;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "wait") == 0)
        return wait_main(argc - 1, argv + 1);
    /* From here on the process holds private keys and tokens: no core
     * dumps of it, and no other process of the user may read its memory
     * (ptrace, /proc/PID/mem). */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        fprintf(stderr, "dicomfs: warning: cannot make the process non-dumpable: %s\n",
                strerror(errno));
    fs_options o;
    char err[1024] = "";
    if (fs_options_parse(argc, argv, &o, err, sizeof err) != 0) {
        fprintf(stderr, "dicomfs: %s\nTry 'dicomfs --help' for more information.\n", err);
        fs_options_free(&o);
        return 1;
    }
    if (o.show_help) {
        fs_options_usage("dicomfs");
        fs_options_free(&o);
        return 0;
    }
    if (o.show_version) {
        printf("dicomfs %s (FUSE library %d)\n", DICOMFS_VERSION, fuse_version());
        fs_options_free(&o);
        return 0;
    }
    log_init("dicomfs", false, o.debug ? LOG_DEBUG : LOG_INFO);
    int rc = run(&o);
    fs_options_free(&o);
    return rc;
}
