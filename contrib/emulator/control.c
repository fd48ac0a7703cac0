/* control: the /_emulator/ control surface (never faulted, never delayed,
 * no token needed).
 *
 * GET returns a control's current settings as JSON; POST with query
 * parameters changes them first (a parameter left out keeps its value):
 *   stats                                 request, fault and realism counters
 *   faults?fail_rate=&reset_rate=&partial_rate=&malformed_rate=&latency_ms=&fail_status=
 *   timing?base_ms=&instance_ms=&mib_ms=  operation durations
 *   limits?max_running_ops=&op_ttl_s=     operation cap and record lifetime
 *   network?latency_ms=&bandwidth_mbps=   per-request latency, shared bandwidth
 *   agent-access?bucket=B&read=0|1&write=0|1
 *   token-refusal?seconds=S               token grants answered invalid_grant
 *   operations/expire?name=OP|all=1       operations expire now
 *   lose-response?match=SUBSTR&count=N    answers lost after the work is done
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu_internal.h"

static cJSON *stats_json(emu_ctx *ctx)
{
    emu_stats *s = &ctx->stats;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "total", (double)atomic_load(&s->total));
    cJSON *kinds = cJSON_AddObjectToObject(root, "byKind");
    for (int k = 0; k < EMU_KIND_COUNT; k++)
        cJSON_AddNumberToObject(kinds, emu_kind_name(k), (double)atomic_load(&s->by_kind[k]));
    cJSON *cls = cJSON_AddObjectToObject(root, "byStatusClass");
    static const char *cn[] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
    for (int i = 0; i < 6; i++)
        cJSON_AddNumberToObject(cls, cn[i], (double)atomic_load(&s->by_class[i]));
    cJSON *f = cJSON_AddObjectToObject(root, "faults");
    cJSON_AddNumberToObject(f, "http429", (double)atomic_load(&s->fault_429));
    cJSON_AddNumberToObject(f, "http500", (double)atomic_load(&s->fault_500));
    cJSON_AddNumberToObject(f, "http503", (double)atomic_load(&s->fault_503));
    cJSON_AddNumberToObject(f, "resets", (double)atomic_load(&s->fault_reset));
    cJSON_AddNumberToObject(f, "malformed", (double)atomic_load(&s->fault_malformed));
    cJSON_AddNumberToObject(f, "partial", (double)atomic_load(&s->fault_partial));
    cJSON_AddNumberToObject(f, "delayed", (double)atomic_load(&s->fault_latency));
    cJSON_AddNumberToObject(f, "lostResponses", (double)atomic_load(&s->lost_responses));
    cJSON *g = cJSON_AddObjectToObject(root, "gcs");
    cJSON_AddNumberToObject(g, "objectDeletes", (double)atomic_load(&s->object_deletes));
    cJSON_AddNumberToObject(g, "batchRequests", (double)atomic_load(&s->batch_requests));
    cJSON_AddNumberToObject(g, "batchCalls", (double)atomic_load(&s->batch_calls));
    cJSON_AddNumberToObject(root, "unauthenticated", (double)atomic_load(&s->unauthenticated));
    cJSON_AddNumberToObject(root, "tokenRefusals", (double)atomic_load(&s->token_refused));
    char num[32];
    snprintf(num, sizeof num, "%llu", emu_project_number(ctx->project));
    cJSON_AddStringToObject(root, "projectNumber", num);
    cJSON_AddItemToObject(root, "faultConfig", emu_faults_json(ctx->faults));
    return root;
}

static double query_double(const emu_request *r, const char *key)
{
    const char *v = emu_req_query(r, key);
    return v ? strtod(v, NULL) : -1;
}

/* A non-negative integer parameter, -1 if absent, -2 if invalid. */
static long long query_count(const emu_request *r, const char *key)
{
    const char *v = emu_req_query(r, key);
    if (!v)
        return -1;
    char *end;
    long long n = strtoll(v, &end, 10);
    return (*v && !*end && n >= 0) ? n : -2;
}

static bool is_post(const emu_request *r)
{
    return strcmp(emu_req_method(r), "POST") == 0;
}

/* Reads the listed parameters; answers 400 and returns false on a bad one. */
static bool counts(const emu_request *r, emu_response *w, const char *const *keys, long long *out,
                   int n)
{
    for (int i = 0; i < n; i++) {
        out[i] = query_count(r, keys[i]);
        if (out[i] == -2 || out[i] > 2000000000LL) {
            emu_resp_error(w, 400, "%s wants a non-negative integer", keys[i]);
            return false;
        }
    }
    return true;
}

static void handle_faults(emu_ctx *ctx, const emu_request *r, emu_response *w)
{
    if (is_post(r)) {
        const char *lat = emu_req_query(r, "latency_ms");
        emu_faults_set(ctx->faults, query_double(r, "fail_rate"), query_double(r, "reset_rate"),
                       query_double(r, "partial_rate"), query_double(r, "malformed_rate"),
                       lat ? atoi(lat) : -1);
        const char *fs = emu_req_query(r, "fail_status");
        if (fs)
            emu_faults_set_status(ctx->faults, atoi(fs));
    }
    emu_resp_json(w, 200, emu_faults_json(ctx->faults));
}

static void handle_timing(emu_ctx *ctx, const emu_request *r, emu_response *w)
{
    static const char *const keys[] = {"base_ms", "instance_ms", "mib_ms"};
    atomic_int *dst[] = {&ctx->ops.base_ms, &ctx->ops.instance_ms, &ctx->ops.mib_ms};
    long long v[3];
    if (is_post(r)) {
        if (!counts(r, w, keys, v, 3))
            return;
        for (int i = 0; i < 3; i++)
            if (v[i] >= 0)
                atomic_store(dst[i], (int)v[i]);
    }
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; i < 3; i++)
        cJSON_AddNumberToObject(o, keys[i], atomic_load(dst[i]));
    emu_resp_json(w, 200, o);
}

static void handle_limits(emu_ctx *ctx, const emu_request *r, emu_response *w)
{
    static const char *const keys[] = {"max_running_ops", "op_ttl_s"};
    long long v[2];
    if (is_post(r)) {
        if (!counts(r, w, keys, v, 2))
            return;
        if (v[0] >= 0)
            atomic_store(&ctx->ops.max_running, (int)v[0]);
        if (v[1] >= 0)
            atomic_store(&ctx->ops.ttl_s, v[1]);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "max_running_ops", atomic_load(&ctx->ops.max_running));
    cJSON_AddNumberToObject(o, "op_ttl_s", (double)atomic_load(&ctx->ops.ttl_s));
    emu_resp_json(w, 200, o);
}

static void handle_network(emu_ctx *ctx, const emu_request *r, emu_response *w)
{
    static const char *const keys[] = {"latency_ms", "bandwidth_mbps"};
    long long v[2];
    if (is_post(r)) {
        if (!counts(r, w, keys, v, 2))
            return;
        emu_net_set(ctx->net, (int)v[0], (int)v[1]);
    }
    emu_resp_json(w, 200, emu_net_json(ctx->net));
}

static void handle_agent_access(emu_ctx *ctx, const emu_request *r, emu_response *w)
{
    if (is_post(r)) {
        static const char *const keys[] = {"read", "write"};
        long long v[2];
        const char *bucket = emu_req_query(r, "bucket");
        if (!bucket || !*bucket) {
            emu_resp_error(w, 400, "agent-access wants bucket=NAME");
            return;
        }
        if (!counts(r, w, keys, v, 2))
            return;
        if (emu_iam_set(ctx->iam, bucket, v[0] < 0 ? -1 : v[0] != 0, v[1] < 0 ? -1 : v[1] != 0)) {
            emu_resp_error(w, 500, "out of memory");
            return;
        }
    }
    cJSON *o = cJSON_CreateObject();
    char email[128];
    snprintf(email, sizeof email, "service-%llu@gcp-sa-healthcare.iam.gserviceaccount.com",
             emu_project_number(ctx->project));
    cJSON_AddStringToObject(o, "agent", email);
    cJSON_AddItemToObject(o, "buckets", emu_iam_json(ctx->iam));
    emu_resp_json(w, 200, o);
}

static void handle_token_refusal(emu_ctx *ctx, const emu_request *r, emu_response *w)
{
    if (is_post(r)) {
        static const char *const keys[] = {"seconds"};
        long long v[1];
        if (!counts(r, w, keys, v, 1))
            return;
        if (v[0] >= 0)
            atomic_store(&ctx->refuse_tokens_until_ms, v[0] ? emu_mono_ms() + v[0] * 1000 : 0);
    }
    long long until = atomic_load(&ctx->refuse_tokens_until_ms), now = emu_mono_ms();
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "refusingForMs", (double)(until > now ? until - now : 0));
    cJSON_AddNumberToObject(o, "refusals", (double)atomic_load(&ctx->stats.token_refused));
    emu_resp_json(w, 200, o);
}

static void handle_expire(emu_ctx *ctx, const emu_request *r, emu_response *w)
{
    const char *name = emu_req_query(r, "name");
    const char *all = emu_req_query(r, "all");
    bool every = all && strcmp(all, "1") == 0;
    if (!is_post(r) || (!every && (!name || !*name))) {
        emu_resp_error(w, 400, "POST /_emulator/operations/expire?name=FULL_OP_NAME or ?all=1");
        return;
    }
    int n = emu_hc_expire_ops(ctx, every ? NULL : name);
    if (!every && n == 0) {
        emu_resp_error(w, 404, "Operation %s not found", name);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "expired", n);
    emu_resp_json(w, 200, o);
}

static void handle_lose(emu_ctx *ctx, const emu_request *r, emu_response *w)
{
    if (is_post(r)) {
        static const char *const keys[] = {"count"};
        long long v[1];
        const char *match = emu_req_query(r, "match");
        if (!counts(r, w, keys, v, 1))
            return;
        if (!match || !*match) {
            emu_resp_error(w, 400, "lose-response wants match=SUBSTRING");
            return;
        }
        emu_faults_set_lose(ctx->faults, match, v[0] < 0 ? 1 : (int)v[0]);
    }
    emu_resp_json(w, 200, emu_faults_json(ctx->faults));
}

void emu_control_handle(emu_ctx *ctx, const emu_request *r, emu_response *w)
{
    static const struct {
        const char *path;
        void (*fn)(emu_ctx *, const emu_request *, emu_response *);
    } routes[] = {
        {"/_emulator/faults", handle_faults},
        {"/_emulator/timing", handle_timing},
        {"/_emulator/limits", handle_limits},
        {"/_emulator/network", handle_network},
        {"/_emulator/agent-access", handle_agent_access},
        {"/_emulator/token-refusal", handle_token_refusal},
        {"/_emulator/operations/expire", handle_expire},
        {"/_emulator/lose-response", handle_lose},
    };
    const char *path = emu_req_path(r);
    if (strcmp(path, "/_emulator/stats") == 0) {
        emu_resp_json(w, 200, stats_json(ctx));
        return;
    }
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strcmp(path, routes[i].path) == 0) {
            routes[i].fn(ctx, r, w);
            return;
        }
    }
    emu_resp_error(w, 404, "No such emulator control path: %s", path);
}
