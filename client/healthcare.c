/* healthcare (prefix hc_): the Cloud Healthcare API, DICOM parts (see healthcare.h).
 *
 * Retry policy: GETs, DELETEs and operations.cancel are idempotent and may be
 * retried by the http layer. import is retried only when the server said it
 * did not act (429, 5xx) or the connection was refused: after a lost answer
 * the caller finds the operation it may have started (fs/adopt.h) rather
 * than start a second one. export is retried like import was: a retry after
 * an unseen success starts a second operation, but its effect is the same
 * (import ignores instances already in the store, export overwrites the same
 * objects), while giving up would fail the user's close() on a passing 429 or
 * 503. datasets.create and dicomStores.create are not retried: a retry after
 * an unseen success would fail with ALREADY_EXISTS although it worked.
 */
#include "healthcare.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "deadline.h"
#include "log.h"
#include "util.h"

#define HC_DEFAULT_ENDPOINT "https://healthcare.googleapis.com/"
#define HC_PAGE_SIZE 1000
#define HC_QIDO_PAGE 5000           /* studies/series: the documented maximum */
#define HC_QIDO_PAGE_INSTANCES 1000 /* instance rows are big: keep each page bounded */
#define HC_QIDO_MAX_LIMIT 50000

struct hc_client {
    http_client *http;
    char *root; /* ends with '/', without a version segment */
};

/* ---- errors ------------------------------------------------------------------ */

static int nomem(cerr_detail *err)
{
    cerr_set(err, CERR_NOMEM, 0, "", "out of memory");
    return CERR_NOMEM;
}

/* Strips the query string: URLs are logged without it. */
static void log_protocol(const char *what, const char *url, long status)
{
    const char *q = strchr(url, '?');
    log_error("healthcare: %s: unexpected response (HTTP %ld) from %.*s", what, status,
              q ? (int)(q - url) : (int)strlen(url), url);
}

static int protocol_err(cerr_detail *err, const char *what, const char *url, long status)
{
    cerr_set(err, CERR_MALFORMED, status, "INTERNAL", "%s: unexpected response (HTTP %ld)", what,
             status);
    log_protocol(what, url, status);
    return CERR_MALFORMED;
}

/* ---- client ----------------------------------------------------------------- */

/* Both override styles work: "https://host/" and "https://host/v1/" (as
 * gcloud's CLOUDSDK_API_ENDPOINT_OVERRIDES_HEALTHCARE usually carries). */
static char *normalize_root(const char *ep)
{
    static const char *const versions[] = {"v1/", "v1beta1/"};
    char *full = util_with_scheme(ep); /* no scheme: https (http for loopback) */
    if (!full)
        return NULL;
    size_t n = strlen(full);
    char *out = realloc(full, n + 2);
    if (!out) {
        free(full);
        return NULL;
    }
    while (n > 1 && out[n - 1] == '/' && out[n - 2] == '/')
        out[--n] = '\0';
    if (n == 0 || out[n - 1] != '/') {
        out[n++] = '/';
        out[n] = '\0';
    }
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
        size_t v = strlen(versions[i]);
        if (n > v && strcmp(out + n - v, versions[i]) == 0 && out[n - v - 1] == '/') {
            out[n - v] = '\0';
            break;
        }
    }
    return out;
}

hc_client *hc_client_new(http_client *http, const char *endpoint)
{
    hc_client *c;
    if (!http)
        return NULL;
    c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->http = http;
    c->root = util_endpoint(endpoint, "CLOUDSDK_API_ENDPOINT_OVERRIDES_HEALTHCARE",
                            HC_DEFAULT_ENDPOINT, normalize_root);
    if (!c->root) {
        free(c);
        return NULL;
    }
    return c;
}

void hc_client_free(hc_client *c)
{
    if (!c)
        return;
    free(c->root);
    free(c);
}

const char *hc_client_endpoint(const hc_client *c)
{
    return c->root;
}

/* ---- requests ----------------------------------------------------------------- */

typedef struct hc_call {
    const char *method;
    const char *url;
    const char *json_body;      /* NULL: no body */
    const char *const *headers; /* extra headers, NULL-terminated, or NULL */
    bool idempotent;
    int response_fd;        /* -1: into memory */
    bool unless_unanswered; /* see http_request */
} hc_call;

/* Performs one call; CERR_OK only for a 2xx status (resp filled). */
static int perform(hc_client *c, const hc_call *call, http_response *resp, cerr_detail *err)
{
    http_request req;
    const char *hdrs[12];
    size_t nh = 0;
    int rc;

    if (call->json_body)
        hdrs[nh++] = "Content-Type: application/json; charset=utf-8";
    for (size_t i = 0; call->headers && call->headers[i] && nh < 11; i++)
        hdrs[nh++] = call->headers[i];
    hdrs[nh] = NULL;

    http_request_init(&req);
    req.method = call->method;
    req.url = call->url;
    req.headers = nh ? hdrs : NULL;
    if (call->json_body) {
        req.body = call->json_body;
        req.body_len = strlen(call->json_body);
    }
    req.response_fd = call->response_fd;
    req.idempotent = call->idempotent;
    req.unless_unanswered = call->unless_unanswered;
    memset(resp, 0, sizeof(*resp));
    rc = http_perform(c->http, &req, resp, err);
    if (rc != CERR_OK)
        return rc;
    if (resp->status < 200 || resp->status > 299)
        return protocol_err(err, call->method, call->url, resp->status);
    return CERR_OK;
}

static char *versioned_url(const hc_client *c, const char *version, const char *name,
                           const char *suffix)
{
    return util_asprintf("%s%s/%s%s", c->root, version, name, suffix ? suffix : "");
}

/* Simple call whose body is returned (malloc'ed, NUL-terminated). */
static int call_body(hc_client *c, const hc_call *call, char **body, size_t *len, cerr_detail *err)
{
    http_response resp;
    int rc = perform(c, call, &resp, err);
    if (rc == CERR_OK) {
        if (!resp.body) {
            resp.body = strdup("");
            if (!resp.body)
                rc = nomem(err);
        }
        if (rc == CERR_OK) {
            if (len)
                *len = resp.body_len;
            *body = resp.body;
            resp.body = NULL;
        }
    }
    http_response_free(&resp);
    return rc;
}

static int call_discard(hc_client *c, const hc_call *call, cerr_detail *err)
{
    http_response resp;
    int rc = perform(c, call, &resp, err);
    http_response_free(&resp);
    return rc;
}

/* One call on a URL this function takes ownership of (NULL: out of memory).
 * With body non-NULL the response body is returned as by call_body, else it
 * is discarded. */
static int call_url(hc_client *c, const char *method, char *url, const char *json_body,
                    bool idempotent, char **body, size_t *len, cerr_detail *err)
{
    int rc;
    if (!url)
        return nomem(err);
    hc_call call = {method, url, json_body, NULL, idempotent, -1, false};
    rc = body ? call_body(c, &call, body, len, err) : call_discard(c, &call, err);
    free(url);
    return rc;
}

static cJSON *parse_body(const char *body, size_t len);

/* Operation name out of an Operation JSON; NULL when there is none. */
static char *op_name_of(const char *json, size_t len)
{
    cJSON *j = parse_body(json, len);
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(j, "name");
    char *out = NULL;
    if (cJSON_IsString(n) && n->valuestring && *n->valuestring)
        out = strdup(n->valuestring);
    cJSON_Delete(j);
    return out;
}

/* A POST that starts an LRO: *op_name gets the Operation's name. repeatable:
 * the operation's effect is the same when it runs twice (see the top). */
/* How an operation start may be retried by the http layer. */
enum { START_ONCE, START_REPEAT, START_REPEAT_IF_UNDONE };

static int start_operation(hc_client *c, const char *url, const char *json_body, int repeat,
                           char **op_name, cerr_detail *err)
{
    hc_call call = {
        "POST", url, json_body, NULL, repeat != START_ONCE, -1, repeat == START_REPEAT_IF_UNDONE};
    char *body = NULL;
    size_t len = 0;
    int rc = call_body(c, &call, &body, &len, err);
    if (rc == CERR_OK) {
        char *name = op_name_of(body, len);
        if (!name)
            rc = protocol_err(err, "operation start (no operation name)", url, 200);
        if (op_name)
            *op_name = name;
        else
            free(name);
    }
    free(body);
    return rc;
}

static int json_print(cJSON *j, char **out, cerr_detail *err)
{
    *out = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    return *out ? CERR_OK : nomem(err);
}

/* Parses a whole response body as one JSON value: cJSON stops at the end of
 * the first value, so a garbled body such as `{...}{` would otherwise pass
 * for a valid (and possibly empty-looking) answer. NULL if anything but
 * whitespace follows the value. */
static cJSON *parse_body(const char *body, size_t len)
{
    if (!body)
        return NULL;
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(body, len, &end, false);
    if (!j)
        return NULL;
    for (const char *p = end; p && p < body + len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != '\0') {
            cJSON_Delete(j);
            return NULL;
        }
    }
    return j;
}

/* ---- lists ------------------------------------------------------------------ */

/* Calls cb for each element of array `key`; *stop gets cb's non-zero value. */
static int list_page(const cJSON *page, const char *key, hc_list_cb cb, void *ctx, int *stop)
{
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(page, key), *it;
    if (arr && !cJSON_IsArray(arr))
        return CERR_MALFORMED;
    cJSON_ArrayForEach(it, arr)
    {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(it, "name");
        char *text;
        if (!cJSON_IsObject(it) || !cJSON_IsString(n) || !n->valuestring)
            return CERR_MALFORMED;
        text = cJSON_PrintUnformatted(it);
        if (!text)
            return CERR_NOMEM;
        *stop = cb(ctx, n->valuestring, text);
        cJSON_free(text);
        if (*stop)
            break;
    }
    return CERR_OK;
}

/* GET base?pageSize=1000[&pageToken=T] until no nextPageToken. */
static int list_all(hc_client *c, const char *base, const char *key, hc_list_cb cb, void *ctx,
                    cerr_detail *err)
{
    char *token = NULL;
    int rc = CERR_OK, stop = 0;
    if (!base)
        return nomem(err);
    do {
        char *et = token ? http_escape(token) : NULL;
        char *url = (token && !et) ? NULL
                                   : util_asprintf("%s?pageSize=%d%s%s", base, HC_PAGE_SIZE,
                                                   et ? "&pageToken=" : "", et ? et : "");
        hc_call call = {"GET", url, NULL, NULL, true, -1, false};
        char *body = NULL;
        size_t len = 0;
        cJSON *page;
        free(et);
        if (!url) {
            rc = nomem(err);
            break;
        }
        rc = call_body(c, &call, &body, &len, err);
        page = rc == CERR_OK ? parse_body(body, len) : NULL;
        if (rc == CERR_OK) {
            rc = cJSON_IsObject(page) ? list_page(page, key, cb, ctx, &stop) : CERR_MALFORMED;
            if (rc == CERR_MALFORMED)
                protocol_err(err, "list", url, 200);
            else if (rc == CERR_NOMEM)
                nomem(err);
        }
        if (rc == CERR_OK && stop) {
            rc = stop;
        } else if (rc == CERR_OK) {
            int next = util_next_page_token(page, &token);
            if (next == UTIL_PAGE_REPEATED)
                rc = protocol_err(err, "list (repeated pageToken)", url, 200);
            else if (next == UTIL_PAGE_NOMEM)
                rc = nomem(err);
        }
        cJSON_Delete(page);
        free(body);
        free(url);
    } while (rc == CERR_OK && token);
    free(token);
    return rc;
}

static cerr_detail *err_or(cerr_detail *err, cerr_detail *dummy)
{
    return err ? err : dummy;
}

static bool bad_args(const void *a, const void *b, cerr_detail *err)
{
    if (a && b)
        return false;
    cerr_set(err, CERR_INVALID, 0, "INVALID_ARGUMENT", "missing argument");
    return true;
}

/* Lists the `collection` children of parent; the JSON array is named alike. */
static int list_children(hc_client *c, const char *parent, const char *collection, hc_list_cb cb,
                         void *ctx, cerr_detail *err)
{
    cerr_detail dummy;
    char *base;
    int rc;
    err = err_or(err, &dummy);
    if (bad_args(c, parent, err) || bad_args(cb, cb, err))
        return CERR_INVALID;
    base = util_asprintf("%sv1/%s/%s", c->root, parent, collection);
    rc = list_all(c, base, collection, cb, ctx, err);
    free(base);
    return rc;
}

/* ---- datasets ---------------------------------------------------------------- */

int hc_datasets_list(hc_client *c, const char *location, hc_list_cb cb, void *ctx, cerr_detail *err)
{
    return list_children(c, location, "datasets", cb, ctx, err);
}

/* GET of a resource (or operation): its JSON as returned; len may be NULL. */
static int get_resource(hc_client *c, const char *name, char **json, size_t *len, cerr_detail *err)
{
    cerr_detail dummy;
    err = err_or(err, &dummy);
    if (json)
        *json = NULL;
    if (len)
        *len = 0;
    if (bad_args(c, name, err) || bad_args(json, json, err))
        return CERR_INVALID;
    return call_url(c, "GET", versioned_url(c, "v1", name, NULL), NULL, true, json, len, err);
}

static int delete_resource(hc_client *c, const char *name, cerr_detail *err)
{
    cerr_detail dummy;
    err = err_or(err, &dummy);
    if (bad_args(c, name, err))
        return CERR_INVALID;
    return call_url(c, "DELETE", versioned_url(c, "v1", name, NULL), NULL, true, NULL, NULL, err);
}

int hc_dataset_get(hc_client *c, const char *dataset, char **json, cerr_detail *err)
{
    return get_resource(c, dataset, json, NULL, err);
}

/* POST {parent}/{collection}?{idparam}=ID with body {} */
static char *create_url(hc_client *c, const char *parent, const char *collection,
                        const char *idparam, const char *id)
{
    char *eid = http_escape(id), *url = NULL;
    if (eid)
        url = util_asprintf("%sv1/%s/%s?%s=%s", c->root, parent, collection, idparam, eid);
    free(eid);
    return url;
}

int hc_dataset_create(hc_client *c, const char *location, const char *id, char **op_name,
                      cerr_detail *err)
{
    cerr_detail dummy;
    char *url;
    int rc;
    err = err_or(err, &dummy);
    if (op_name)
        *op_name = NULL;
    if (bad_args(c, location, err) || bad_args(id, id, err))
        return CERR_INVALID;
    url = create_url(c, location, "datasets", "datasetId", id);
    if (!url)
        return nomem(err);
    rc = start_operation(c, url, "{}", START_ONCE, op_name, err);
    free(url);
    return rc;
}

int hc_dataset_delete(hc_client *c, const char *dataset, cerr_detail *err)
{
    return delete_resource(c, dataset, err);
}

/* ---- DICOM stores --------------------------------------------------------- */

int hc_stores_list(hc_client *c, const char *dataset, hc_list_cb cb, void *ctx, cerr_detail *err)
{
    return list_children(c, dataset, "dicomStores", cb, ctx, err);
}

int hc_store_get(hc_client *c, const char *store, char **json, cerr_detail *err)
{
    return get_resource(c, store, json, NULL, err);
}

/* dicomStores.create is synchronous (returns the DicomStore, no LRO). */
int hc_store_create(hc_client *c, const char *dataset, const char *id, cerr_detail *err)
{
    cerr_detail dummy;
    err = err_or(err, &dummy);
    if (bad_args(c, dataset, err) || bad_args(id, id, err))
        return CERR_INVALID;
    return call_url(c, "POST", create_url(c, dataset, "dicomStores", "dicomStoreId", id), "{}",
                    false, NULL, NULL, err);
}

int hc_store_delete(hc_client *c, const char *store, cerr_detail *err)
{
    return delete_resource(c, store, err);
}

/* ---- import / export ------------------------------------------------------ */

int hc_import(hc_client *c, const char *store, const char *gcs_uri, char **op_name,
              cerr_detail *err)
{
    cerr_detail dummy;
    cJSON *j = cJSON_CreateObject(), *src;
    char *body = NULL, *url = NULL;
    int rc;
    err = err_or(err, &dummy);
    if (op_name)
        *op_name = NULL;
    if (bad_args(c, store, err) || bad_args(gcs_uri, gcs_uri, err)) {
        cJSON_Delete(j);
        return CERR_INVALID;
    }
    src = cJSON_AddObjectToObject(j, "gcsSource");
    if (!src || !cJSON_AddStringToObject(src, "uri", gcs_uri)) {
        cJSON_Delete(j);
        return nomem(err);
    }
    rc = json_print(j, &body, err);
    if (rc == CERR_OK) {
        url = versioned_url(c, "v1", store, ":import");
        rc = url ? start_operation(c, url, body, START_REPEAT_IF_UNDONE, op_name, err) : nomem(err);
    }
    cJSON_free(body);
    free(url);
    return rc;
}

static cJSON *export_body(const char *uri_prefix, const char *mime_type, const char *filter_uri)
{
    cJSON *j = cJSON_CreateObject();
    cJSON *dst = cJSON_AddObjectToObject(j, "gcsDestination");
    bool ok = dst && cJSON_AddStringToObject(dst, "uriPrefix", uri_prefix);
    if (ok && mime_type)
        ok = cJSON_AddStringToObject(dst, "mimeType", mime_type) != NULL;
    if (ok && filter_uri) {
        cJSON *f = cJSON_AddObjectToObject(j, "filterConfig");
        ok = f && cJSON_AddStringToObject(f, "resourcePathsGcsUri", filter_uri);
    }
    if (!ok) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

/* filterConfig exists only in v1beta1's ExportDicomDataRequest. */
int hc_export(hc_client *c, const char *store, const char *uri_prefix, const char *mime_type,
              const char *filter_uri, char **op_name, cerr_detail *err)
{
    cerr_detail dummy;
    char *body = NULL, *url = NULL;
    int rc;
    err = err_or(err, &dummy);
    if (op_name)
        *op_name = NULL;
    if (bad_args(c, store, err) || bad_args(uri_prefix, uri_prefix, err))
        return CERR_INVALID;
    rc = json_print(export_body(uri_prefix, mime_type, filter_uri), &body, err);
    if (rc == CERR_OK) {
        url = versioned_url(c, filter_uri ? "v1beta1" : "v1", store, ":export");
        rc = url ? start_operation(c, url, body, START_REPEAT, op_name, err) : nomem(err);
    }
    cJSON_free(body);
    free(url);
    return rc;
}

/* ---- operations ---------------------------------------------------------------- */

static void sleep_ms(long ms);

#define OP_GET_TRIES 4

/* True if the body is a JSON object with a string "name": the least an
 * operation must be before its bytes are handed on (STORE/operations/ID.json
 * serves them as they are). */
static bool op_body_valid(const char *json, size_t len)
{
    cJSON *j = parse_body(json, len);
    bool ok = cJSON_IsObject(j) && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "name"));
    cJSON_Delete(j);
    return ok;
}

/* A GET is safe to repeat, so a garbled body is fetched again a few times
 * (short backoff) before it counts as a protocol error. */
int hc_operation_get(hc_client *c, const char *op_name, char **json, size_t *len, cerr_detail *err)
{
    cerr_detail dummy;
    err = err_or(err, &dummy);
    size_t got = 0;
    for (int attempt = 1;; attempt++) {
        int rc = get_resource(c, op_name, json, len ? len : &got, err);
        if (rc != CERR_OK)
            return rc;
        size_t n = len ? *len : got;
        if (op_body_valid(*json, n))
            return CERR_OK;
        free(*json);
        *json = NULL;
        if (len)
            *len = 0;
        if (attempt >= OP_GET_TRIES) {
            cerr_set(err, CERR_MALFORMED, 200, "INTERNAL",
                     "operation %s: malformed JSON from the server (%zu bytes, %d tries)", op_name,
                     n, attempt);
            log_error("healthcare: operation %s: malformed JSON from the server (%zu bytes, "
                      "%d tries)",
                      op_name, n, attempt);
            return CERR_MALFORMED;
        }
        log_warn("healthcare: operation %s: malformed JSON from the server, fetching it again",
                 op_name);
        sleep_ms(100L * attempt);
    }
}

int hc_operations_list(hc_client *c, const char *dataset, hc_list_cb cb, void *ctx,
                       cerr_detail *err)
{
    return list_children(c, dataset, "operations", cb, ctx, err);
}

/* Cancelling twice is harmless, so the call may be retried. */
int hc_operation_cancel(hc_client *c, const char *op_name, cerr_detail *err)
{
    cerr_detail dummy;
    err = err_or(err, &dummy);
    if (bad_args(c, op_name, err))
        return CERR_INVALID;
    return call_url(c, "POST", versioned_url(c, "v1", op_name, ":cancel"), "{}", true, NULL, NULL,
                    err);
}

void hc_operation_clear(hc_operation *op)
{
    if (!op)
        return;
    free(op->name);
    free(op->error_message);
    free(op->api_method);
    free(op->create_time);
    free(op->end_time);
    free(op->logs_url);
    memset(op, 0, sizeof(*op));
    op->success = op->failure = op->pending = -1;
}

/* int64 counters are JSON strings in the API; numbers are tolerated.
 * Anything else (or out of range) is -1 = absent. */
static int64_t json_i64(const cJSON *v)
{
    if (cJSON_IsString(v) && v->valuestring) {
        const char *s = v->valuestring;
        char *end;
        long long x;
        if (!*s)
            return -1;
        errno = 0;
        x = strtoll(s, &end, 10);
        if (errno || *end || x < 0)
            return -1;
        return (int64_t)x;
    }
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (!(d >= 0 && d < 9.2e18))
            return -1;
        return (int64_t)d;
    }
    return -1;
}

static bool dup_field(const cJSON *obj, const char *key, char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsString(v) || !v->valuestring)
        return true;
    *out = strdup(v->valuestring);
    return *out != NULL;
}

/* Error code: a google.rpc.Code. Missing or not a number gives 2 (UNKNOWN),
 * so an error can never read as OK (0). */
static int rpc_code(const cJSON *v)
{
    if (cJSON_IsNumber(v) && v->valuedouble >= INT_MIN && v->valuedouble <= INT_MAX)
        return (int)v->valuedouble;
    return 2;
}

int hc_operation_parse(const char *json, size_t len, hc_operation *out)
{
    cJSON *j;
    const cJSON *err, *meta, *counter;
    int rc = CERR_OK;
    if (!out)
        return CERR_INVALID;
    memset(out, 0, sizeof(*out));
    out->success = out->failure = out->pending = -1;
    if (!json)
        return CERR_INVALID;
    j = parse_body(json, len);
    if (!cJSON_IsObject(j) || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "name"))) {
        cJSON_Delete(j);
        return CERR_MALFORMED;
    }
    out->done = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "done"));
    err = cJSON_GetObjectItemCaseSensitive(j, "error");
    meta = cJSON_GetObjectItemCaseSensitive(j, "metadata");
    counter = cJSON_GetObjectItemCaseSensitive(meta, "counter");
    if (cJSON_IsObject(err)) {
        out->has_error = true;
        out->error_code = rpc_code(cJSON_GetObjectItemCaseSensitive(err, "code"));
        if (!dup_field(err, "message", &out->error_message))
            rc = CERR_NOMEM;
    }
    if (cJSON_IsObject(counter)) {
        out->success = json_i64(cJSON_GetObjectItemCaseSensitive(counter, "success"));
        out->failure = json_i64(cJSON_GetObjectItemCaseSensitive(counter, "failure"));
        out->pending = json_i64(cJSON_GetObjectItemCaseSensitive(counter, "pending"));
    }
    if (!dup_field(j, "name", &out->name) || !dup_field(meta, "apiMethodName", &out->api_method) ||
        !dup_field(meta, "createTime", &out->create_time) ||
        !dup_field(meta, "endTime", &out->end_time) || !dup_field(meta, "logsUrl", &out->logs_url))
        rc = CERR_NOMEM;
    cJSON_Delete(j);
    if (rc != CERR_OK)
        hc_operation_clear(out);
    return rc;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int hc_operation_wait(hc_client *c, const char *op_name, int timeout_s, hc_operation *out,
                      cerr_detail *err)
{
    cerr_detail dummy;
    double deadline;
    long delay_ms = 500;
    err = err_or(err, &dummy);
    if (out) {
        memset(out, 0, sizeof(*out));
        out->success = out->failure = out->pending = -1;
    }
    if (bad_args(c, op_name, err) || bad_args(out, out, err))
        return CERR_INVALID;
    deadline = util_now_s() + (timeout_s > 0 ? timeout_s : 0);
    for (;;) {
        char *json = NULL;
        size_t len = 0;
        int rc = hc_operation_get(c, op_name, &json, &len, err);
        double left;
        if (rc != CERR_OK)
            return rc;
        hc_operation_clear(out);
        rc = hc_operation_parse(json, len, out);
        free(json);
        if (rc == CERR_MALFORMED)
            return protocol_err(err, "operation get", op_name, 200);
        if (rc != CERR_OK)
            return nomem(err);
        if (out->done)
            return CERR_OK;
        left = deadline - util_now_s();
        if (timeout_s >= 0 && left <= 0) {
            cerr_set(err, CERR_TIMEOUT, 0, "DEADLINE_EXCEEDED", "operation %s not done after %d s",
                     op_name, timeout_s);
            return CERR_TIMEOUT;
        }
        long nap = timeout_s >= 0 && left * 1000 < delay_ms ? (long)(left * 1000) + 1 : delay_ms;
        double user = deadline_remaining_ms(); /* a person waits: no nap past their deadline */
        if (user >= 0 && user < nap)
            nap = (long)user + 1;
        sleep_ms(nap);
        delay_ms = delay_ms * 2 > 5000 ? 5000 : delay_ms * 2;
    }
}

/* ---- DICOMweb -------------------------------------------------------------- */

typedef struct qido_query {
    char *rest;  /* caller's query without limit/offset ("" or "a=b&c=d&") */
    long limit;  /* page size */
    long offset; /* first offset */
    const char *uid_tag;
} qido_query;

/* The level is the path's last segment: studies, series or instances. */
static const char *level_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static bool parse_long(const char *s, size_t n, long *out)
{
    long v = 0;
    if (n == 0 || n > 9)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

/* Splits the caller's query: limit= sets the page size, offset= the start,
 * everything else is passed on unchanged. */
static int qido_prepare(const char *path, const char *query, qido_query *q)
{
    const char *lvl = level_of(path), *p = query ? query : "";
    size_t cap = strlen(p) + 2, used = 0;
    bool instances = strcmp(lvl, "instances") == 0;
    q->limit = instances ? HC_QIDO_PAGE_INSTANCES : HC_QIDO_PAGE;
    q->offset = 0;
    q->uid_tag = instances ? "00080018" : strcmp(lvl, "series") == 0 ? "0020000E" : "0020000D";
    q->rest = malloc(cap);
    if (!q->rest)
        return CERR_NOMEM;
    while (*p) {
        size_t n = strcspn(p, "&");
        long v;
        if (n >= 6 && strncmp(p, "limit=", 6) == 0 && parse_long(p + 6, n - 6, &v) && v > 0)
            q->limit = v > HC_QIDO_MAX_LIMIT ? HC_QIDO_MAX_LIMIT : v;
        else if (n >= 7 && strncmp(p, "offset=", 7) == 0 && parse_long(p + 7, n - 7, &v))
            q->offset = v;
        else if (n > 0) {
            memcpy(q->rest + used, p, n);
            used += n;
            q->rest[used++] = '&';
        }
        p += n;
        if (*p == '&')
            p++;
    }
    q->rest[used] = '\0';
    return CERR_OK;
}

static const char *uid_of(const cJSON *item, const char *tag)
{
    const cJSON *attr = cJSON_GetObjectItemCaseSensitive(item, tag);
    const cJSON *vals = cJSON_GetObjectItemCaseSensitive(attr, "Value");
    const cJSON *first = cJSON_IsArray(vals) ? cJSON_GetArrayItem(vals, 0) : NULL;
    return cJSON_IsString(first) && first->valuestring ? first->valuestring : "";
}

/* One page: *count gets the number of results, *stop cb's non-zero value. */
static int qido_page(const http_response *resp, const qido_query *q, hc_list_cb cb, void *ctx,
                     long *count, int *stop)
{
    cJSON *arr;
    const cJSON *it;
    int rc = CERR_OK;
    *count = 0;
    if (resp->status == 204 || resp->body_len == 0)
        return CERR_OK;
    arr = parse_body(resp->body, resp->body_len);
    if (!cJSON_IsArray(arr)) {
        cJSON_Delete(arr);
        return CERR_MALFORMED;
    }
    cJSON_ArrayForEach(it, arr)
    {
        char *text;
        (*count)++;
        if (!cJSON_IsObject(it)) {
            rc = CERR_MALFORMED;
            break;
        }
        text = cJSON_PrintUnformatted(it);
        if (!text) {
            rc = CERR_NOMEM;
            break;
        }
        *stop = cb(ctx, uid_of(it, q->uid_tag), text);
        cJSON_free(text);
        if (*stop)
            break;
    }
    cJSON_Delete(arr);
    return rc;
}

int hc_dicomweb_search(hc_client *c, const char *store, const char *path, const char *query,
                       hc_list_cb cb, void *ctx, cerr_detail *err)
{
    static const char *const accept[] = {"Accept: application/dicom+json", NULL};
    cerr_detail dummy;
    qido_query q = {0};
    int rc, stop = 0;
    err = err_or(err, &dummy);
    if (bad_args(c, store, err) || bad_args(path, cb, err))
        return CERR_INVALID;
    rc = qido_prepare(path, query, &q);
    if (rc != CERR_OK)
        return nomem(err);
    for (;;) {
        char *url = util_asprintf("%sv1/%s/dicomWeb/%s?%slimit=%ld&offset=%ld", c->root, store,
                                  path, q.rest, q.limit, q.offset);
        hc_call call = {"GET", url, NULL, accept, true, -1, false};
        http_response resp;
        long count = 0;
        if (!url) {
            rc = nomem(err);
            break;
        }
        rc = perform(c, &call, &resp, err);
        if (rc == CERR_OK) {
            rc = qido_page(&resp, &q, cb, ctx, &count, &stop);
            if (rc == CERR_MALFORMED)
                protocol_err(err, "DICOMweb search", url, resp.status);
            else if (rc == CERR_NOMEM)
                nomem(err);
        }
        http_response_free(&resp);
        free(url);
        if (rc != CERR_OK)
            break;
        if (stop) {
            rc = stop;
            break;
        }
        /* No header says more remain: a short page is the last one. */
        if (count < q.limit)
            break;
        q.offset += count;
    }
    free(q.rest);
    return rc;
}

int hc_dicomweb_retrieve_instance(hc_client *c, const char *store, const char *study,
                                  const char *series, const char *instance, int fd,
                                  uint64_t *written, cerr_detail *err)
{
    static const char *const accept[] = {"Accept: application/dicom; transfer-syntax=*", NULL};
    cerr_detail dummy;
    http_response resp;
    char *url;
    int rc;
    err = err_or(err, &dummy);
    if (written)
        *written = 0;
    if (bad_args(c, store, err) || bad_args(study, series, err) ||
        bad_args(instance, instance, err))
        return CERR_INVALID;
    if (fd < 0) {
        cerr_set(err, CERR_INVALID, 0, "INVALID_ARGUMENT", "retrieve: bad file descriptor");
        return CERR_INVALID;
    }
    url = util_asprintf("%sv1/%s/dicomWeb/studies/%s/series/%s/instances/%s", c->root, store, study,
                        series, instance);
    if (!url)
        return nomem(err);
    hc_call call = {"GET", url, NULL, accept, true, fd, false};
    rc = perform(c, &call, &resp, err);
    if (rc == CERR_OK && resp.status != 200)
        rc = protocol_err(err, "DICOMweb retrieve", url, resp.status);
    if (rc == CERR_OK && written)
        *written = resp.body_len;
    http_response_free(&resp);
    free(url);
    return rc;
}

/* Single-part STOW. Storing an identical instance again answers 200 (only
 * different content conflicts with 409), so a retry is safe. */
int hc_dicomweb_store(hc_client *c, const char *store, int fd, uint64_t size, cerr_detail *err)
{
    static const char *const hdrs[] = {"Content-Type: application/dicom",
                                       "Accept: application/dicom+json", NULL};
    cerr_detail dummy;
    http_request req;
    http_response resp = {0};
    char *url;
    int rc;
    err = err_or(err, &dummy);
    if (bad_args(c, store, err))
        return CERR_INVALID;
    if (fd < 0) {
        cerr_set(err, CERR_INVALID, 0, "INVALID_ARGUMENT", "store: bad file descriptor");
        return CERR_INVALID;
    }
    url = util_asprintf("%sv1/%s/dicomWeb/studies", c->root, store);
    if (!url)
        return nomem(err);
    http_request_init(&req);
    req.method = "POST";
    req.url = url;
    req.headers = hdrs;
    req.body_fd = fd;
    req.body_fd_offset = 0;
    req.body_fd_len = (off_t)size;
    req.idempotent = true;
    rc = http_perform(c->http, &req, &resp, err);
    if (rc == CERR_OK && resp.status != 200) {
        /* 202: stored with warnings or partly failed; for one instance that is
         * not a clean store. */
        rc = cerr_set(err, CERR_SERVER, resp.status, "", "DICOMweb store: HTTP %ld: %.400s",
                      resp.status, resp.body ? resp.body : "");
        log_protocol("DICOMweb store", url, resp.status);
    }
    http_response_free(&resp);
    free(url);
    return rc;
}

int hc_dicomweb_delete(hc_client *c, const char *store, const char *path, char **op_name,
                       cerr_detail *err)
{
    cerr_detail dummy;
    char *url, *body = NULL;
    size_t len = 0;
    int rc;
    err = err_or(err, &dummy);
    if (op_name)
        *op_name = NULL;
    if (bad_args(c, store, err) || bad_args(path, path, err))
        return CERR_INVALID;
    url = util_asprintf("%sv1/%s/dicomWeb/%s", c->root, store, path);
    if (!url)
        return nomem(err);
    hc_call call = {"DELETE", url, NULL, NULL, true, -1, false};
    rc = call_body(c, &call, &body, &len, err);
    /* Study/series deletes answer with an Operation; instance deletes with {}. */
    if (rc == CERR_OK && op_name && len > 0) {
        char *name = op_name_of(body, len);
        if (name && strstr(name, "/operations/"))
            *op_name = name;
        else
            free(name);
    }
    free(body);
    free(url);
    return rc;
}

/* instances.getStorageInfo: the instance's blob size, which is the size of
 * the instance retrieved as stored (what studies/ shows without a download). */
int hc_dicomweb_instance_size(hc_client *c, const char *store, const char *study,
                              const char *series, const char *instance, uint64_t *size,
                              cerr_detail *err)
{
    cerr_detail dummy;
    char *body = NULL;
    size_t len = 0;
    err = err_or(err, &dummy);
    if (bad_args(c, store, err) || bad_args(study, series, err) || bad_args(instance, size, err))
        return CERR_INVALID;
    char *url = util_asprintf("%sv1/%s/dicomWeb/studies/%s/series/%s/instances/%s"
                              ":getStorageInfo",
                              c->root, store, study, series, instance);
    if (!url)
        return nomem(err);
    hc_call call = {.method = "GET", .url = url, .idempotent = true, .response_fd = -1};
    int rc = call_body(c, &call, &body, &len, err);
    if (rc == CERR_OK) {
        cJSON *j = parse_body(body, len);
        const cJSON *blob = cJSON_GetObjectItemCaseSensitive(j, "blobStorageInfo");
        int64_t n = json_i64(cJSON_GetObjectItemCaseSensitive(blob, "sizeBytes"));
        if (n < 0)
            rc = protocol_err(err, "getStorageInfo", url, 200);
        else
            *size = (uint64_t)n;
        cJSON_Delete(j);
    }
    free(body);
    free(url);
    return rc;
}

/* ---- names ------------------------------------------------------------------ */

/* Matches "k0/v0/k1/v1/..." for the given keys exactly, values non-empty. */
static bool name_matches(const char *s, const char *const *keys, size_t nkeys)
{
    if (!s)
        return false;
    for (size_t i = 0; i < nkeys; i++) {
        size_t kl = strlen(keys[i]);
        size_t vl;
        if (strncmp(s, keys[i], kl) != 0 || s[kl] != '/')
            return false;
        s += kl + 1;
        vl = strcspn(s, "/");
        if (vl == 0)
            return false;
        s += vl;
        if (i + 1 < nkeys) {
            if (*s != '/')
                return false;
            s++;
        }
    }
    return *s == '\0';
}

bool hc_name_is_location(const char *s)
{
    static const char *const keys[] = {"projects", "locations"};
    return name_matches(s, keys, 2);
}

bool hc_name_is_dataset(const char *s)
{
    static const char *const keys[] = {"projects", "locations", "datasets"};
    return name_matches(s, keys, 3);
}

const char *hc_name_leaf(const char *name)
{
    const char *slash;
    if (!name)
        return NULL;
    slash = strrchr(name, '/');
    return slash ? slash + 1 : name;
}
