/* lro: long-running operations of the emulated Healthcare API.
 *
 * Owns the operation records (DATA/healthcare/ops/ID.json, atomically
 * replaced at start, cancel and end), their per-file error logs
 * (DATA/healthcare/logs/ID.jsonl, served at /logs/ID) and one detached worker
 * thread per running operation. Operations interrupted by a shutdown stay
 * unfinished on disk and are resumed by the next start (import, export and
 * deletes are idempotent).
 *
 * Realism (see README, "emulator"): an operation takes base + per instance
 * + per MiB (emu_op_timing_get), its items complete progressively over that
 * time so metadata.counter moves; operations on one target (a DICOM store)
 * run one after another in start order; a start beyond the per-project cap
 * of unfinished operations is refused 429 RESOURCE_EXHAUSTED; a finished
 * operation expires op-ttl seconds after its end (404, gone from lists).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"
#include "hc_internal.h"

struct hc_op {
    char id[32];
    char *name, *dataset, *target;
    char version[12];
    enum hc_op_kind kind;
    cJSON *request;
    struct timespec create, end;
    bool done, cancel_req, deleted;
    long success, failure, pending;
    /* pacing: timing snapshot at run start, planned work, work paced so far */
    struct timespec start;
    emu_op_timing timing;
    long work_n, paced_n;
    uint64_t work_bytes, paced_bytes;
    int err_code;
    char *err_msg;
    hc_lro *lro;
    struct hc_op *next;
};

/* The operations of one emulator (owned by its emu_hc). */
struct hc_lro {
    emu_ctx *ctx;
    hc_state *state; /* handed to the workers */
    hc_worker_fn workers[HC_OP_KIND_COUNT];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    hc_op *ops;
    unsigned long long next_id;
    int active;
    bool stop;
    char *dir, *logdir;
};

static const char *kind_name(enum hc_op_kind k)
{
    static const char *const n[] = {"createDataset", "import", "export", "deleteStudy",
                                    "deleteSeries"};
    return n[k];
}

static int kind_from(const char *s)
{
    for (int k = 0; k <= HC_OP_DELETE_SERIES; k++)
        if (strcmp(kind_name((enum hc_op_kind)k), s) == 0)
            return k;
    return -1;
}

static void op_free(hc_op *op)
{
    free(op->name);
    free(op->dataset);
    free(op->target);
    free(op->err_msg);
    cJSON_Delete(op->request);
    free(op);
}

/* Persists an op (called with lro->mu held; the write is small). */
static void op_save(const hc_op *op)
{
    hc_lro *lro = op->lro;
    if (op->deleted)
        return;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "id", op->id);
    cJSON_AddStringToObject(j, "name", op->name);
    cJSON_AddStringToObject(j, "dataset", op->dataset);
    cJSON_AddStringToObject(j, "target", op->target);
    cJSON_AddStringToObject(j, "version", op->version);
    cJSON_AddStringToObject(j, "kind", kind_name(op->kind));
    cJSON_AddItemToObject(j, "request", cJSON_Duplicate(op->request, true));
    cJSON_AddNumberToObject(j, "createSec", (double)op->create.tv_sec);
    cJSON_AddNumberToObject(j, "createNsec", (double)op->create.tv_nsec);
    cJSON_AddNumberToObject(j, "endSec", (double)op->end.tv_sec);
    cJSON_AddNumberToObject(j, "endNsec", (double)op->end.tv_nsec);
    cJSON_AddBoolToObject(j, "done", op->done);
    cJSON_AddBoolToObject(j, "cancelRequested", op->cancel_req);
    cJSON_AddNumberToObject(j, "success", (double)op->success);
    cJSON_AddNumberToObject(j, "failure", (double)op->failure);
    cJSON_AddNumberToObject(j, "errCode", op->err_code);
    if (op->err_msg)
        cJSON_AddStringToObject(j, "errMsg", op->err_msg);
    char *path = util_asprintf("%s/%s.json", lro->dir, op->id);
    int rc = path ? emu_write_json(path, j, false) : (cJSON_Delete(j), -ENOMEM);
    if (rc < 0)
        log_error("emulator: cannot save operation %s: %s", op->id, strerror(-rc));
    free(path);
}

static void save_next_id(hc_lro *lro)
{
    char *path, buf[32];
    snprintf(buf, sizeof buf, "%llu\n", lro->next_id);
    if (asprintf(&path, "%s/next", lro->dir) >= 0) {
        util_write_atomic(path, buf, strlen(buf), 0600);
        free(path);
    }
}

static long elapsed_ms(const struct timespec *since)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (now.tv_sec - since->tv_sec) * 1000L + (now.tv_nsec - since->tv_nsec) / 1000000L;
}

/* Removes an op from view and disk (lro->mu held). A running op's worker sees
 * it as cancelled and stops; what it did so far stays done. */
static void op_expire(hc_op *o)
{
    hc_lro *lro = o->lro;
    o->deleted = true;
    char *p;
    if (asprintf(&p, "%s/%s.json", lro->dir, o->id) >= 0) {
        unlink(p);
        free(p);
    }
    if (asprintf(&p, "%s/%s.jsonl", lro->logdir, o->id) >= 0) {
        unlink(p);
        free(p);
    }
    pthread_cond_broadcast(&lro->cv);
}

/* Whether an op can be seen; expires it lazily once op-ttl has passed since
 * its end (lro->mu held). */
static bool op_visible(hc_op *o)
{
    hc_lro *lro = o->lro;
    if (o->deleted)
        return false;
    if (o->done && elapsed_ms(&o->end) / 1000 >= emu_op_ttl_s(lro->ctx)) {
        op_expire(o);
        return false;
    }
    return true;
}

static hc_op *op_find(hc_lro *lro, const char *id)
{
    for (hc_op *o = lro->ops; o; o = o->next)
        if (strcmp(o->id, id) == 0 && op_visible(o))
            return o;
    return NULL;
}

static const char *method_name(const hc_op *op, char *buf, size_t len)
{
    static const char *const methods[HC_OP_KIND_COUNT] = {
        [HC_OP_CREATE_DATASET] = "dataset.DatasetService.CreateDataset",
        [HC_OP_IMPORT] = "dicom.DicomService.ImportDicomData",
        [HC_OP_EXPORT] = "dicom.DicomService.ExportDicomData",
        [HC_OP_DELETE_STUDY] = "dicomweb.DicomWebService.DeleteStudy",
        [HC_OP_DELETE_SERIES] = "dicomweb.DicomWebService.DeleteSeries",
    };
    snprintf(buf, len, "google.cloud.healthcare.%s.%s", op->version, methods[op->kind]);
    return buf;
}

static void add_count(cJSON *c, const char *key, long v)
{
    if (v > 0) {
        char b[32];
        snprintf(b, sizeof b, "%ld", v);
        cJSON_AddStringToObject(c, key, b);
    }
}

/* The Operation JSON (under lro->mu). */
static cJSON *op_json(const hc_op *op)
{
    hc_lro *lro = op->lro;
    char buf[160];
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", op->name);
    cJSON *m = cJSON_AddObjectToObject(j, "metadata");
    snprintf(buf, sizeof buf, "type.googleapis.com/google.cloud.healthcare.%s.OperationMetadata",
             op->version);
    cJSON_AddStringToObject(m, "@type", buf);
    cJSON_AddStringToObject(m, "apiMethodName", method_name(op, buf, sizeof buf));
    util_rfc3339(buf, sizeof buf, op->create.tv_sec, op->create.tv_nsec, 9);
    cJSON_AddStringToObject(m, "createTime", buf);
    if (op->done) {
        util_rfc3339(buf, sizeof buf, op->end.tv_sec, op->end.tv_nsec, 9);
        cJSON_AddStringToObject(m, "endTime", buf);
    }
    if (op->kind == HC_OP_IMPORT || op->kind == HC_OP_EXPORT) {
        char *url;
        if (asprintf(&url, "%s/logs/%s", emu_base_url(lro->ctx), op->id) >= 0) {
            cJSON_AddStringToObject(m, "logsUrl", url);
            free(url);
        }
    }
    if (op->cancel_req)
        cJSON_AddBoolToObject(m, "cancelRequested", true);
    if (op->kind != HC_OP_CREATE_DATASET) {
        cJSON *c = cJSON_AddObjectToObject(m, "counter");
        add_count(c, "success", op->success);
        add_count(c, "failure", op->failure);
        if (!op->done)
            add_count(c, "pending", op->pending);
    }
    /* proto3 JSON leaves a false bool out, as the real API does. */
    if (!op->done)
        return j;
    cJSON_AddBoolToObject(j, "done", true);
    if (op->err_code) {
        cJSON *e = cJSON_AddObjectToObject(j, "error");
        cJSON_AddNumberToObject(e, "code", op->err_code);
        cJSON_AddStringToObject(e, "message", op->err_msg ? op->err_msg : "");
        cJSON_AddArrayToObject(e, "details");
        return j;
    }
    cJSON *r;
    switch (op->kind) {
    case HC_OP_CREATE_DATASET:
        r = cJSON_Duplicate(op->request, true);
        snprintf(buf, sizeof buf, "type.googleapis.com/google.cloud.healthcare.%s.dataset.Dataset",
                 op->version);
        cJSON_AddStringToObject(r, "@type", buf);
        dj_sort(r);
        break;
    case HC_OP_IMPORT:
    case HC_OP_EXPORT:
        r = cJSON_CreateObject();
        snprintf(buf, sizeof buf, "type.googleapis.com/google.cloud.healthcare.%s.dicom.%s",
                 op->version,
                 op->kind == HC_OP_IMPORT ? "ImportDicomDataResponse" : "ExportDicomDataResponse");
        cJSON_AddStringToObject(r, "@type", buf);
        break;
    default:
        r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "@type", "type.googleapis.com/google.protobuf.Empty");
    }
    cJSON_AddItemToObject(j, "response", r);
    return j;
}

/* ---- worker API ---- */
void hc_op_set_work(hc_op *op, long n, uint64_t bytes)
{
    hc_lro *lro = op->lro;
    pthread_mutex_lock(&lro->mu);
    op->pending = n;
    op->work_n = n;
    op->work_bytes = bytes;
    pthread_mutex_unlock(&lro->mu);
}

void hc_op_set_pending(hc_op *op, long pending)
{
    hc_op_set_work(op, pending, 0);
}

/* When (ms after the run start) n items of bytes in all are complete: the
 * base spread over the items, plus their per-item and per-MiB costs. */
static long plan_ms(const hc_op *op, long n, uint64_t bytes)
{
    const emu_op_timing *t = &op->timing;
    double ms =
        op->work_n > 0 ? (double)t->base_ms * (double)n / (double)op->work_n : (double)t->base_ms;
    ms += (double)t->instance_ms * (double)n;
    ms += (double)t->mib_ms * (double)bytes / (1024.0 * 1024.0);
    return (long)ms;
}

/* Sleeps until due ms after the run start, or a cancel, expiry or stop. */
static void wait_due(hc_op *op, long due)
{
    for (;;) {
        long left = due - elapsed_ms(&op->start);
        if (left <= 0 || hc_op_cancelled(op))
            return;
        struct timespec t = {0, (left < 20 ? left : 20) * 1000000L};
        nanosleep(&t, NULL);
    }
}

void hc_op_pace(hc_op *op, uint64_t bytes)
{
    hc_lro *lro = op->lro;
    pthread_mutex_lock(&lro->mu);
    op->paced_n++;
    op->paced_bytes += bytes;
    long due = plan_ms(op, op->paced_n, op->paced_bytes);
    pthread_mutex_unlock(&lro->mu);
    wait_due(op, due);
}

void hc_op_count(hc_op *op, bool success)
{
    hc_lro *lro = op->lro;
    pthread_mutex_lock(&lro->mu);
    if (success)
        op->success++;
    else
        op->failure++;
    if (op->pending > 0)
        op->pending--;
    pthread_mutex_unlock(&lro->mu);
}

long hc_op_failures(hc_op *op)
{
    hc_lro *lro = op->lro;
    pthread_mutex_lock(&lro->mu);
    long f = op->failure;
    pthread_mutex_unlock(&lro->mu);
    return f;
}

bool hc_op_cancelled(hc_op *op)
{
    hc_lro *lro = op->lro;
    pthread_mutex_lock(&lro->mu);
    bool c = op->cancel_req || op->deleted || lro->stop || emu_shutting_down(lro->ctx);
    pthread_mutex_unlock(&lro->mu);
    return c;
}

bool hc_op_stopping(hc_op *op)
{
    hc_lro *lro = op->lro;
    (void)op;
    pthread_mutex_lock(&lro->mu);
    bool s = lro->stop || emu_shutting_down(lro->ctx);
    pthread_mutex_unlock(&lro->mu);
    return s;
}

void hc_op_fail(hc_op *op, int code, const char *fmt, ...)
{
    hc_lro *lro = op->lro;
    va_list ap;
    va_start(ap, fmt);
    char *msg = util_vasprintf(fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&lro->mu);
    if (!op->err_code) {
        op->err_code = code;
        free(op->err_msg);
        op->err_msg = msg;
        msg = NULL;
    }
    pthread_mutex_unlock(&lro->mu);
    free(msg);
}

void hc_op_fail_agent(hc_op *op, const char *target, const char *bucket, bool write)
{
    /* target: projects/P/...; the agent is named after P's number. */
    char project[256] = "";
    const char *p = strncmp(target, "projects/", 9) == 0 ? target + 9 : target;
    snprintf(project, sizeof project, "%.*s", (int)strcspn(p, "/"), p);
    hc_op_fail(op, 7,
               "Permission denied: the Cloud Healthcare service agent "
               "service-%llu@gcp-sa-healthcare.iam.gserviceaccount.com lacks %s on gs://%s; "
               "grant it %s on the bucket",
               emu_project_number(project),
               write ? "storage.objects.create" : "storage.objects.list and storage.objects.get",
               bucket, write ? "roles/storage.objectAdmin" : "roles/storage.objectViewer");
}

void hc_op_log(hc_op *op, const char *resource, int code, const char *fmt, ...)
{
    hc_lro *lro = op->lro;
    va_list ap;
    va_start(ap, fmt);
    char *msg = util_vasprintf(fmt, ap);
    va_end(ap);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    char ts[64];
    util_rfc3339(ts, sizeof ts, now.tv_sec, now.tv_nsec, 9);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "timestamp", ts);
    cJSON_AddStringToObject(j, "severity", "ERROR");
    cJSON_AddStringToObject(j, "operation", op->name);
    cJSON_AddStringToObject(j, "resource", resource ? resource : "");
    cJSON *e = cJSON_AddObjectToObject(j, "error");
    cJSON_AddNumberToObject(e, "code", code);
    cJSON_AddStringToObject(e, "message", msg ? msg : "");
    free(msg);
    char *line = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    char *path;
    if (line && asprintf(&path, "%s/%s.jsonl", lro->logdir, op->id) >= 0) {
        pthread_mutex_lock(&lro->mu);
        int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd >= 0) {
            size_t n = strlen(line);
            line[n] = '\n';
            if (write(fd, line, n + 1) < 0)
                log_error("emulator: cannot write the log of operation %s", op->id);
            close(fd);
        }
        pthread_mutex_unlock(&lro->mu);
        free(path);
    }
    free(line);
}

/* ---- worker thread ---- */

/* Whether an earlier unfinished op works on the same target (lro->mu held):
 * the service serialises operations on one store. */
static bool earlier_running(const hc_op *op)
{
    hc_lro *lro = op->lro;
    unsigned long long id = strtoull(op->id, NULL, 10);
    for (const hc_op *o = lro->ops; o; o = o->next)
        if (o != op && !o->done && !o->deleted && strcmp(o->target, op->target) == 0 &&
            strtoull(o->id, NULL, 10) < id)
            return true;
    return false;
}

/* Waits for its turn on the target; then the clock of its timing starts. */
static void wait_turn(hc_op *op)
{
    hc_lro *lro = op->lro;
    pthread_mutex_lock(&lro->mu);
    while (earlier_running(op) && !op->cancel_req && !op->deleted && !lro->stop &&
           !emu_shutting_down(lro->ctx)) {
        struct timespec t = util_timespec_in(CLOCK_REALTIME, 0.1);
        pthread_cond_timedwait(&lro->cv, &lro->mu, &t);
    }
    clock_gettime(CLOCK_REALTIME, &op->start);
    emu_op_timing_get(lro->ctx, &op->timing);
    pthread_mutex_unlock(&lro->mu);
}

/* Runs the worker registered for the op's kind (lro_register). */
static void run_job(hc_op *op)
{
    hc_lro *lro = op->lro;
    hc_job job = {.op = op,
                  .ctx = lro->ctx,
                  .state = lro->state,
                  .version = op->version,
                  .target = op->target,
                  .request = op->request};
    if (lro->workers[op->kind])
        lro->workers[op->kind](&job);
}

static void *worker(void *arg)
{
    hc_op *op = arg;
    hc_lro *lro = op->lro;
    wait_turn(op);
    if (!hc_op_cancelled(op))
        run_job(op);
    /* The whole planned duration, even if the items went faster (or the
     * job failed before it knew them: then the base alone). */
    pthread_mutex_lock(&lro->mu);
    long due = plan_ms(op, op->work_n, op->work_bytes);
    pthread_mutex_unlock(&lro->mu);
    wait_due(op, due);
    pthread_mutex_lock(&lro->mu);
    if (!lro->stop && !emu_shutting_down(lro->ctx)) {
        op->done = true;
        op->pending = 0;
        clock_gettime(CLOCK_REALTIME, &op->end);
        if (op->cancel_req) {
            op->err_code = 1;
            free(op->err_msg);
            op->err_msg = strdup("Operation was cancelled");
        }
        op_save(op);
    }
    lro->active--;
    pthread_cond_broadcast(&lro->cv);
    pthread_mutex_unlock(&lro->mu);
    return NULL;
}

/* Starts a worker (lro->mu held). */
static int op_spawn(hc_op *op)
{
    hc_lro *lro = op->lro;
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    lro->active++;
    int rc = pthread_create(&th, &at, worker, op);
    pthread_attr_destroy(&at);
    if (rc != 0) {
        lro->active--;
        op->done = true;
        op->err_code = 13;
        op->err_msg = strdup("cannot start a worker thread");
        clock_gettime(CLOCK_REALTIME, &op->end);
        op_save(op);
    }
    return rc;
}

/* Unfinished ops of the project of dataset (lro->mu held). */
static int running_in_project(hc_lro *lro, const char *dataset)
{
    const char *slash = strchr(dataset + strlen("projects/"), '/');
    size_t plen = slash ? (size_t)(slash - dataset) + 1 : strlen(dataset);
    int n = 0;
    for (const hc_op *o = lro->ops; o; o = o->next)
        if (!o->done && !o->deleted && strncmp(o->dataset, dataset, plen) == 0)
            n++;
    return n;
}

/* The per-project cap: answers 429 RESOURCE_EXHAUSTED (lro->mu held). */
static bool over_cap(hc_lro *lro, emu_response *w, const char *dataset)
{
    int cap = emu_max_running_ops(lro->ctx);
    if (cap <= 0 || running_in_project(lro, dataset) < cap)
        return false;
    emu_resp_error(w, 429,
                   "Quota exceeded: the project already runs %d long-running operations "
                   "(limit %d, dicomfs-emulator --max-running-ops); retry when one has finished",
                   cap, cap);
    return true;
}

int hc_op_start(hc_lro *lro, emu_response *w, enum hc_op_kind kind, const char *version,
                const char *dataset, const char *target, const cJSON *request)
{
    hc_op *op = calloc(1, sizeof *op);
    if (!op) {
        hc_error(w, 500, "out of memory");
        return -1;
    }
    op->lro = lro;
    op->kind = kind;
    snprintf(op->version, sizeof op->version, "%s", version);
    op->dataset = strdup(dataset);
    op->target = strdup(target);
    op->request = cJSON_Duplicate(request, true);
    clock_gettime(CLOCK_REALTIME, &op->create);
    pthread_mutex_lock(&lro->mu);
    if (over_cap(lro, w, dataset)) {
        pthread_mutex_unlock(&lro->mu);
        op_free(op);
        return -1;
    }
    snprintf(op->id, sizeof op->id, "%llu", lro->next_id++);
    save_next_id(lro);
    if (asprintf(&op->name, "%s/operations/%s", dataset, op->id) < 0)
        op->name = NULL;
    op->next = lro->ops;
    lro->ops = op;
    op_save(op);
    op_spawn(op);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", op->name);
    pthread_mutex_unlock(&lro->mu);
    emu_resp_json(w, 200, j);
    return 0;
}

/* ---- REST ---- */
void lro_handle(hc_lro *lro, emu_response *w, const char *method, const char *dataset,
                const char *op_id, const char *verb, const emu_request *r)
{
    (void)r;
    pthread_mutex_lock(&lro->mu);
    hc_op *op = op_find(lro, op_id);
    if (!op || strcmp(op->dataset, dataset) != 0) {
        pthread_mutex_unlock(&lro->mu);
        char msg[600];
        snprintf(msg, sizeof msg, "Operation %.300s/operations/%.100s not found", dataset, op_id);
        hc_error(w, 404, msg);
        return;
    }
    if (!verb && strcmp(method, "GET") == 0) {
        cJSON *j = op_json(op);
        pthread_mutex_unlock(&lro->mu);
        emu_resp_json(w, 200, j);
        return;
    }
    if (verb && strcmp(verb, "cancel") == 0 && strcmp(method, "POST") == 0) {
        if (!op->done) {
            op->cancel_req = true;
            op_save(op);
        }
        pthread_mutex_unlock(&lro->mu);
        emu_resp_json(w, 200, cJSON_CreateObject());
        return;
    }
    pthread_mutex_unlock(&lro->mu);
    hc_error(w, 404, "Method not found.");
}

static int cmp_ops(const void *a, const void *b)
{
    const hc_op *x = *(hc_op *const *)a, *y = *(hc_op *const *)b;
    unsigned long long ix = strtoull(x->id, NULL, 10), iy = strtoull(y->id, NULL, 10);
    return ix < iy ? 1 : ix > iy ? -1 : 0;
}

void lro_list(hc_lro *lro, emu_response *w, const char *dataset, const emu_request *r)
{
    long size = 100, off = 0;
    const char *ps = emu_req_query(r, "pageSize"), *pt = emu_req_query(r, "pageToken");
    char *end;
    if (ps && *ps) {
        size = strtol(ps, &end, 10);
        if (*end || size < 0) {
            hc_error(w, 400, "Invalid value for pageSize");
            return;
        }
        if (size == 0 || size > 1000)
            size = size ? 1000 : 100;
    }
    if (pt && *pt) {
        off = strtol(pt, &end, 10);
        if (*end || off < 0) {
            hc_error(w, 400, "Invalid page token");
            return;
        }
    }
    const char *filter = emu_req_query(r, "filter");
    int want_done = -1;
    if (filter && *filter) {
        if (strcmp(filter, "done=true") == 0 || strcmp(filter, "done = true") == 0)
            want_done = 1;
        else if (strcmp(filter, "done=false") == 0 || strcmp(filter, "done = false") == 0)
            want_done = 0;
        else {
            hc_error(w, 400, "Unsupported filter (the emulator supports done=true|false)");
            return;
        }
    }
    pthread_mutex_lock(&lro->mu);
    size_t n = 0;
    for (hc_op *o = lro->ops; o; o = o->next)
        n++;
    hc_op **v = calloc(n + 1, sizeof *v);
    size_t k = 0;
    for (hc_op *o = lro->ops; v && o; o = o->next)
        if (op_visible(o) && strcmp(o->dataset, dataset) == 0 &&
            (want_done < 0 || o->done == (want_done == 1)))
            v[k++] = o;
    if (v)
        qsort(v, k, sizeof *v, cmp_ops);
    cJSON *out = cJSON_CreateObject();
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = (size_t)off; v && i < k && i < (size_t)(off + size); i++)
        cJSON_AddItemToArray(arr, op_json(v[i]));
    pthread_mutex_unlock(&lro->mu);
    free(v);
    if (cJSON_GetArraySize(arr))
        cJSON_AddItemToObject(out, "operations", arr);
    else
        cJSON_Delete(arr);
    if ((size_t)(off + size) < k) {
        char tok[32];
        snprintf(tok, sizeof tok, "%ld", off + size);
        cJSON_AddStringToObject(out, "nextPageToken", tok);
    }
    emu_resp_json(w, 200, out);
}

void lro_delete_dataset(hc_lro *lro, const char *dataset)
{
    pthread_mutex_lock(&lro->mu);
    for (hc_op *o = lro->ops; o; o = o->next)
        if (!o->deleted && strcmp(o->dataset, dataset) == 0)
            op_expire(o);
    pthread_mutex_unlock(&lro->mu);
}

int lro_expire(hc_lro *lro, const char *name)
{
    int n = 0;
    pthread_mutex_lock(&lro->mu);
    for (hc_op *o = lro->ops; o; o = o->next) {
        if (o->deleted || (name && strcmp(o->name, name) != 0))
            continue;
        op_expire(o);
        n++;
    }
    pthread_mutex_unlock(&lro->mu);
    return n;
}

void lro_logs(hc_lro *lro, emu_response *w, const char *op_id)
{
    pthread_mutex_lock(&lro->mu);
    bool known = op_find(lro, op_id) != NULL;
    pthread_mutex_unlock(&lro->mu);
    if (!known) {
        hc_error(w, 404, "No logs for this operation");
        return;
    }
    char *path;
    if (asprintf(&path, "%s/%s.jsonl", lro->logdir, op_id) < 0) {
        hc_error(w, 500, "out of memory");
        return;
    }
    uint8_t *data = NULL;
    size_t len = 0;
    pthread_mutex_lock(&lro->mu);
    int rc = hc_read_file(path, &data, &len);
    pthread_mutex_unlock(&lro->mu);
    free(path);
    emu_resp_bytes(w, 200, "application/x-ndjson", rc == 0 ? (const char *)data : "",
                   rc == 0 ? len : 0);
    free(data);
}

/* ---- lifecycle ---- */
int lro_open(emu_ctx *ctx, hc_state *hs, hc_lro **out)
{
    hc_lro *lro = calloc(1, sizeof *lro);
    *out = lro;
    if (!lro)
        return -ENOMEM;
    lro->ctx = ctx;
    lro->state = hs;
    pthread_mutex_init(&lro->mu, NULL);
    pthread_cond_init(&lro->cv, NULL);
    const char *base = emu_data_dir(ctx);
    if (asprintf(&lro->dir, "%s/healthcare/ops", base) < 0)
        lro->dir = NULL;
    if (asprintf(&lro->logdir, "%s/healthcare/logs", base) < 0)
        lro->logdir = NULL;
    if (!lro->dir || !lro->logdir)
        return -ENOMEM;
    util_mkdirs(lro->dir, 0700);
    util_mkdirs(lro->logdir, 0700);
    return 0;
}

void lro_register(hc_lro *lro, enum hc_op_kind kind, hc_worker_fn fn)
{
    lro->workers[kind] = fn;
}

static hc_op *op_from_json(hc_lro *lro, const cJSON *j)
{
    const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "id"));
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "name"));
    const char *ds = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "dataset"));
    const char *tg = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "target"));
    const char *ver = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "version"));
    const char *kind = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "kind"));
    if (!id || !name || !ds || !tg || !ver || !kind || kind_from(kind) < 0)
        return NULL;
    hc_op *op = calloc(1, sizeof *op);
    if (!op)
        return NULL;
    op->lro = lro;
    snprintf(op->id, sizeof op->id, "%s", id);
    op->name = strdup(name);
    op->dataset = strdup(ds);
    op->target = strdup(tg);
    snprintf(op->version, sizeof op->version, "%s", ver);
    op->kind = (enum hc_op_kind)kind_from(kind);
    op->request = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(j, "request"), true);
#define NUM(k) cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, k))
    op->create.tv_sec = (time_t)NUM("createSec");
    op->create.tv_nsec = (long)NUM("createNsec");
    op->end.tv_sec = (time_t)NUM("endSec");
    op->end.tv_nsec = (long)NUM("endNsec");
    op->success = (long)NUM("success");
    op->failure = (long)NUM("failure");
    op->err_code = (int)NUM("errCode");
#undef NUM
    op->done = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "done"));
    op->cancel_req = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "cancelRequested"));
    const char *em = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "errMsg"));
    op->err_msg = em ? strdup(em) : NULL;
    return op;
}

int lro_load(hc_lro *lro)
{
    DIR *d = opendir(lro->dir);
    if (!d)
        return 0;
    struct dirent *de;
    unsigned long long max_id = 0;
    pthread_mutex_lock(&lro->mu);
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n < 6 || strcmp(de->d_name + n - 5, ".json") != 0)
            continue;
        char *path;
        if (asprintf(&path, "%s/%s", lro->dir, de->d_name) < 0)
            continue;
        uint8_t *data;
        size_t len;
        if (hc_read_file(path, &data, &len) == 0) {
            cJSON *j = cJSON_ParseWithLength((const char *)data, len);
            hc_op *op = j ? op_from_json(lro, j) : NULL;
            if (op) {
                op->next = lro->ops;
                lro->ops = op;
                unsigned long long id = strtoull(op->id, NULL, 10);
                if (id > max_id)
                    max_id = id;
            } else {
                log_warn("emulator: ignoring unreadable operation record %s", path);
            }
            cJSON_Delete(j);
            free(data);
        }
        free(path);
    }
    closedir(d);
    char *np;
    unsigned long long next = 0;
    if (asprintf(&np, "%s/next", lro->dir) >= 0) {
        uint8_t *data;
        size_t len;
        if (hc_read_file(np, &data, &len) == 0) {
            next = strtoull((const char *)data, NULL, 10);
            free(data);
        }
        free(np);
    }
    if (next <= max_id)
        next = max_id + 1;
    if (next < 1000000000000ull) {
        /* realistic-looking numeric ids that do not repeat across data loss */
        next = (unsigned long long)time(NULL) * 1000000ull;
    }
    lro->next_id = next;
    save_next_id(lro);
    /* Resume operations interrupted by a restart: every kind is idempotent. */
    for (hc_op *o = lro->ops; o; o = o->next) {
        if (o->done)
            continue;
        log_info("emulator: resuming operation %s (%s) after a restart", o->id, kind_name(o->kind));
        o->success = o->failure = o->pending = 0;
        char *lp;
        if (asprintf(&lp, "%s/%s.jsonl", lro->logdir, o->id) >= 0) {
            unlink(lp); /* the rerun logs every failure again */
            free(lp);
        }
        op_spawn(o);
    }
    pthread_mutex_unlock(&lro->mu);
    return 0;
}

void lro_close(hc_lro *lro)
{
    if (!lro)
        return;
    pthread_mutex_lock(&lro->mu);
    lro->stop = true;
    while (lro->active > 0)
        pthread_cond_wait(&lro->cv, &lro->mu);
    hc_op *o = lro->ops;
    lro->ops = NULL;
    pthread_mutex_unlock(&lro->mu);
    while (o) {
        hc_op *n = o->next;
        op_free(o);
        o = n;
    }
    free(lro->dir);
    free(lro->logdir);
    pthread_cond_destroy(&lro->cv);
    pthread_mutex_destroy(&lro->mu);
    free(lro);
}
