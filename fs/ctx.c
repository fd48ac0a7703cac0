/* ctx: the mount's state, clients and shared helpers (see ctx.h). */
#include "ctx.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "import.h"
#include "journal.h"
#include "log.h"
#include "rejects.h"
#include "util.h"
#include "xattrs.h"

/* ---- names, attributes, refusals */

char *fs_dataset_name(const fs_ctx *x, const char *dataset_id)
{
    return util_asprintf("%s/datasets/%s", x->opt->location, dataset_id);
}

char *fs_store_name(const fs_ctx *x, const char *dataset_id, const char *store_id)
{
    return util_asprintf("%s/datasets/%s/dicomStores/%s", x->opt->location, dataset_id, store_id);
}

void fs_stat_dir(const fs_ctx *x, struct stat *st, mode_t perm)
{
    memset(st, 0, sizeof *st);
    st->st_mode = S_IFDIR | perm;
    st->st_nlink = 2;
    st->st_uid = x->uid;
    st->st_gid = x->gid;
    st->st_atim = st->st_mtim = st->st_ctim = x->mount_time;
}

void fs_stat_file(const fs_ctx *x, struct stat *st, mode_t perm, off_t size)
{
    memset(st, 0, sizeof *st);
    st->st_mode = S_IFREG | perm;
    st->st_nlink = 1;
    st->st_uid = x->uid;
    st->st_gid = x->gid;
    st->st_size = size;
    st->st_blksize = 4096;
    st->st_blocks = (size + 511) / 512;
    st->st_atim = st->st_mtim = st->st_ctim = x->mount_time;
}

int fs_deny(const char *path, const char *what, int e)
{
    log_warn("%s: %s: %s", path, what, strerror(-e));
    return e;
}

char *fs_cache_key(const char *dataset, const char *store, const char *what)
{
    if (!dataset)
        return strdup("/");
    if (!store)
        return what ? util_asprintf("/%s/%s", dataset, what) : util_asprintf("/%s", dataset);
    return what ? util_asprintf("/%s/%s/%s", dataset, store, what)
                : util_asprintf("/%s/%s", dataset, store);
}

/* ---- start / stop */

void fs_ctx_start(fs_ctx *x, int (*interrupted)(void))
{
    char *jdir = util_asprintf("%s/journal", x->opt->cache_dir);
    if (jdir && mkdir(jdir, 0700) != 0 && errno != EEXIST)
        log_error("%s: cannot create the journal directory: %s", jdir, strerror(errno));
    int rc = jdir ? journal_open(jdir, &x->journal) : -ENOMEM;
    if (rc) {
        log_error("%s: cannot open the journal: %s (import/ and export/ are unavailable)",
                  jdir ? jdir : x->opt->cache_dir, strerror(-rc));
        x->journal = NULL;
    }
    free(jdir);
    x->rejects = rejects_new();
    x->xattrs = xattrs_new();
    x->opsnap = opsnap_new();
    if (x->journal) {
        import_config ic = {
            .cache_dir = x->opt->cache_dir,
            .staging_bucket = x->opt->staging_bucket,
            .staging_prefix = x->opt->staging_prefix,
            .uploads = x->opt->uploads,
            .upload_nice = x->opt->upload_nice,
            .commit_delay_s = x->opt->commit_delay,
            .sync_close = x->opt->sync_close,
            .stream_min_mib = x->opt->stream_min_mib,
            .imports = x->opt->imports,
            .batch_max_files = x->opt->batch_max_files,
            .batch_max_bytes = x->opt->batch_max_bytes,
            .cache_max = x->opt->cache_max,
            .upload_present = x->opt->upload_present,
            .interrupted = interrupted,
            .uid = x->uid,
            .gid = x->gid,
            .on_reject = rejects_on_reject,
            .on_reject_ctx = x->rejects,
        };
        rc = import_mgr_new(&ic, x->cl.gcs, x->cl.hc, x->journal, &x->import);
        if (rc) {
            log_error("cannot start the import manager: %s (import/ is unavailable)",
                      strerror(-rc));
            x->import = NULL;
        }
    }
}

void fs_ctx_stop(fs_ctx *x)
{
    if (x->import)
        import_mgr_free(x->import);
    x->import = NULL;
    if (x->journal)
        journal_close(x->journal);
    x->journal = NULL;
    rejects_free(x->rejects);
    x->rejects = NULL;
    xattrs_free(x->xattrs);
    opsnap_free(x->opsnap);
    x->opsnap = NULL;
    x->xattrs = NULL;
}

/* ---- clients */

/* Checks before mounting must answer quickly: a few attempts within 5 s,
 * not minutes of backoff; but not give up on one or two transient errors
 * (a 10% error rate failed two attempts in a row at mount once in CI). */
static void quick_retries(http_options *ho)
{
    ho->retry.max_attempts = 4;
    ho->retry.base_ms = 250;
    ho->retry.total_ms = 5000;
    ho->connect_timeout_s = 5;
}

int fs_clients_open(const fs_options *o, bool quick, fs_clients *c, char *msg, size_t msglen)
{
    memset(c, 0, sizeof *c);
    cerr_detail err = {0};
    if (o->no_auth) {
        c->auth = auth_provider_new_none();
    } else {
        http_options ao;
        http_options_init(&ao);
        if (quick)
            quick_retries(&ao);
        ao.ca_file = o->ca_file;
        c->auth_http = http_client_new(&ao);
        char *where = NULL;
        int rc = c->auth_http
                     ? auth_provider_new(o->credentials, c->auth_http, &c->auth, &where, &err)
                     : CERR_NOMEM;
        if (rc != CERR_OK) {
            switch (rc) {
            case CERR_NOT_FOUND:
                snprintf(msg, msglen,
                         "no Google credentials found: pass -o credentials=FILE, set "
                         "GOOGLE_APPLICATION_CREDENTIALS, or run `gcloud auth "
                         "application-default login`");
                break;
            case CERR_INVALID:
            case CERR_UNSUPPORTED:
                snprintf(msg, msglen, "credentials %s unusable: %s",
                         o->credentials ? o->credentials : "(default)", err.message);
                break;
            default:
                snprintf(msg, msglen, "credentials rejected or unusable: %s", err.message);
            }
            free(where);
            fs_clients_close(c);
            return -1;
        }
        free(where); /* auth logs what it found */
    }
    if (!c->auth) {
        snprintf(msg, msglen, "out of memory");
        fs_clients_close(c);
        return -1;
    }
    http_options ho;
    http_options_init(&ho);
    if (quick)
        quick_retries(&ho);
    if (auth_provider_kind(c->auth) != AUTH_KIND_NONE) {
        ho.token_fn = auth_get_token;
        ho.token_ctx = c->auth;
        ho.user_project = auth_provider_quota_project(c->auth);
    }
    ho.ca_file = o->ca_file;
    c->http = http_client_new(&ho);
    c->gcs = c->http ? gcs_client_new(c->http, o->storage_endpoint) : NULL;
    /* Spool files up to 1 GiB: ONE media request straight from the spool
     * file (the HTTP client retries it whole), as a plain `curl -T` would:
     * measured against the emulator, a 1 GiB file took 6.3 s as a resumable
     * session and 3.0 s as a media upload (8 MiB resumable chunks were
     * slower still). Larger files: a resumable session in 1 GiB requests,
     * which resumes from what the server persisted when cut. */
    if (c->gcs)
        gcs_client_set_resumable_threshold(c->gcs, 1024u << 20, 1024u << 20);
    c->hc = c->http ? hc_client_new(c->http, o->endpoint) : NULL;
    if (!c->gcs || !c->hc) {
        snprintf(msg, msglen, "cannot create the API clients");
        fs_clients_close(c);
        return -1;
    }
    return 0;
}

void fs_clients_close(fs_clients *c)
{
    if (c->hc)
        hc_client_free(c->hc);
    if (c->gcs)
        gcs_client_free(c->gcs);
    if (c->http)
        http_client_free(c->http);
    if (c->auth)
        auth_provider_free(c->auth);
    if (c->auth_http)
        http_client_free(c->auth_http);
    memset(c, 0, sizeof *c);
}
