/* hc_import: the dicomStores.import worker.
 *
 * Lists the emulated bucket with the literal prefix of gcsSource.uri, keeps
 * the names wildcard_match accepts, and stores each Part-10 file (an instance
 * already present is ignored: the first copy stays, and counts as a success).
 * Each file that is not DICOM is a counted failure with a log entry; any
 * failure ends the operation with INVALID_ARGUMENT (3), and a pattern that
 * matches nothing with NOT_FOUND (5), a bucket the service agent may not
 * read with PERMISSION_DENIED (7). Files are taken one by one at the pace
 * of the operation's timing (hc_op_pace).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wildcard.h"
#include "hc_internal.h"

typedef struct names {
    char **v;
    uint64_t *size;
    uint64_t total;
    size_t n, cap;
    const char *pattern;
} names;

static int collect(void *ctx, const char *name, uint64_t size)
{
    names *ns = ctx;
    if (!wildcard_match(ns->pattern, name))
        return 0;
    if (ns->n == ns->cap) {
        size_t nc = ns->cap ? ns->cap * 2 : 64;
        char **nv = realloc(ns->v, nc * sizeof *nv);
        if (!nv)
            return -ENOMEM;
        ns->v = nv;
        uint64_t *sv = realloc(ns->size, nc * sizeof *sv);
        if (!sv)
            return -ENOMEM;
        ns->size = sv;
        ns->cap = nc;
    }
    ns->v[ns->n] = strdup(name);
    if (!ns->v[ns->n])
        return -ENOMEM;
    ns->size[ns->n] = size;
    ns->total += size;
    ns->n++;
    return 0;
}

void hc_import_run(hc_job *job)
{
    const char *uri = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(job->request, "gcsSource"), "uri"));
    char why[512] = "", *bucket = NULL, *object = NULL;
    if (!uri || wildcard_split_gcs_uri(uri, &bucket, &object, why, sizeof why) != WILDCARD_OK) {
        hc_op_fail(job->op, 3, "invalid gcs_source.uri: %s", why);
        return;
    }
    emu_ctx *ctx = job->ctx;
    hc_lock(job->state);
    bool store_ok = hc_store_find(job->state, job->target) != NULL;
    hc_unlock(job->state);
    if (!store_ok) {
        hc_op_fail(job->op, 5, "DICOM store %s does not exist", job->target);
        free(bucket);
        free(object);
        return;
    }
    if (!emu_gcs_bucket_exists(ctx, bucket)) {
        hc_op_fail(job->op, 5, "Cloud Storage bucket %s does not exist", bucket);
        free(bucket);
        free(object);
        return;
    }
    if (!emu_agent_can_read(ctx, bucket)) {
        hc_op_fail_agent(job->op, job->target, bucket, false);
        free(bucket);
        free(object);
        return;
    }
    size_t plen = wildcard_literal_prefix_len(object);
    char *prefix = strndup(object, plen);
    names ns = {.pattern = object};
    int rc = prefix ? emu_gcs_list(ctx, bucket, prefix, collect, &ns) : -ENOMEM;
    free(prefix);
    if (rc < 0) {
        hc_op_fail(job->op, 13, "cannot list gs://%s: %s", bucket, strerror(-rc));
        goto out;
    }
    if (ns.n == 0) {
        hc_op_fail(job->op, 5, "no files found matching %s", uri);
        goto out;
    }
    hc_op_set_work(job->op, (long)ns.n, ns.total);
    for (size_t i = 0; i < ns.n; i++) {
        hc_op_pace(job->op, ns.size[i]);
        if (hc_op_cancelled(job->op))
            goto out;
        int fd = -1;
        uint64_t len = 0;
        rc = emu_gcs_open(ctx, bucket, ns.v[i], &fd, &len);
        char res[1200];
        snprintf(res, sizeof res, "gs://%s/%s", bucket, ns.v[i]);
        if (rc < 0) {
            hc_op_log(job->op, res, 5, "cannot read %s: %s", res, strerror(-rc));
            hc_op_count(job->op, false);
            continue;
        }
        why[0] = '\0';
        /* From the object's file: only the header is read, and the bytes are
         * linked into the store, not copied through memory. */
        enum hc_add_result ar = hc_store_add_fd(job->state, job->target, fd, len, why, sizeof why);
        close(fd);
        if (ar == HC_ADD_ERROR) {
            hc_op_log(job->op, res, 3, "cannot import %s: %s", res, why);
            hc_op_count(job->op, false);
        } else {
            hc_op_count(job->op, true);
        }
    }
    long failures = hc_op_failures(job->op);
    if (failures > 0)
        hc_op_fail(job->op, 3,
                   "%ld of %zu files failed to import; see the logs at logsUrl for details",
                   failures, ns.n);
out:
    for (size_t i = 0; i < ns.n; i++)
        free(ns.v[i]);
    free(ns.v);
    free(ns.size);
    free(bucket);
    free(object);
}

void hc_delete_run(hc_job *job)
{
    const char *study =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(job->request, "study"));
    const char *series =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(job->request, "series"));
    long n = hc_store_delete(job->state, job->target, study, series, NULL);
    if (n < 0) {
        hc_op_fail(job->op, 5, "DICOM store %s no longer exists", job->target);
        return;
    }
    hc_op_set_pending(job->op, n);
    for (long i = 0; i < n; i++) {
        hc_op_pace(job->op, 0);
        hc_op_count(job->op, true);
    }
}
