/* iam: whether the Cloud Healthcare service agent may use a bucket.
 *
 * The real service reads import sources and writes export destinations as
 * service-PROJECT_NUMBER@gcp-sa-healthcare.iam.gserviceaccount.com, which
 * needs roles/storage.objectViewer (import) or roles/storage.objectAdmin
 * (export) on the bucket. Every bucket is granted both unless a control
 * (/_emulator/agent-access, --deny-agent-access) says otherwise.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "emu_internal.h"
#include "util.h"

typedef struct rule {
    char *bucket;
    bool read, write;
} rule;

struct emu_iam {
    pthread_mutex_t mu;
    rule *v;
    size_t n;
};

emu_iam *emu_iam_new(void)
{
    emu_iam *m = calloc(1, sizeof(*m));
    if (m)
        pthread_mutex_init(&m->mu, NULL);
    return m;
}

void emu_iam_free(emu_iam *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++)
        free(m->v[i].bucket);
    free(m->v);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static rule *find(emu_iam *m, const char *bucket)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->v[i].bucket, bucket) == 0)
            return &m->v[i];
    return NULL;
}

int emu_iam_set(emu_iam *m, const char *bucket, int read, int write)
{
    int rc = 0;
    pthread_mutex_lock(&m->mu);
    rule *r = find(m, bucket);
    if (!r) {
        rule *nv = realloc(m->v, (m->n + 1) * sizeof(*nv));
        char *b = strdup(bucket);
        if (!nv || !b) {
            free(b);
            if (nv)
                m->v = nv;
            rc = -ENOMEM;
            goto out;
        }
        m->v = nv;
        r = &m->v[m->n++];
        *r = (rule){.bucket = b, .read = true, .write = true};
    }
    if (read >= 0)
        r->read = read != 0;
    if (write >= 0)
        r->write = write != 0;
out:
    pthread_mutex_unlock(&m->mu);
    return rc;
}

static bool allowed(emu_iam *m, const char *bucket, bool write)
{
    pthread_mutex_lock(&m->mu);
    const rule *r = find(m, bucket);
    bool ok = !r || (write ? r->write : r->read);
    pthread_mutex_unlock(&m->mu);
    return ok;
}

bool emu_agent_can_read(emu_ctx *ctx, const char *bucket)
{
    return allowed(ctx->iam, bucket, false);
}

bool emu_agent_can_write(emu_ctx *ctx, const char *bucket)
{
    return allowed(ctx->iam, bucket, true);
}

cJSON *emu_iam_json(emu_iam *m)
{
    cJSON *o = cJSON_CreateObject();
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->n; i++) {
        cJSON *b = cJSON_AddObjectToObject(o, m->v[i].bucket);
        cJSON_AddBoolToObject(b, "read", m->v[i].read);
        cJSON_AddBoolToObject(b, "write", m->v[i].write);
    }
    pthread_mutex_unlock(&m->mu);
    return o;
}

/* FNV-1a folded into [100000000000, 999999999999]: stable across runs. */
unsigned long long emu_project_number(const char *project)
{
    unsigned long long h = util_fnv1a_str(UTIL_FNV1A_INIT, project);
    return 100000000000ull + h % 900000000000ull;
}
