/* hc_api: REST surface of the emulated Healthcare API.
 *
 * Routes /v1 and /v1beta1 requests to datasets and dicomStores (state in
 * hc_state.c), operations (lro.c) and DICOMweb (dicomweb.c). Owns the
 * Healthcare side's context (emu_hc: the state and the operations, hung on
 * the emulator context) and registers the operation workers with lro.
 *
 * Choices where the real service is undocumented:
 * - Errors use the AIP-193 envelope; unknown JSON fields answer 400 with
 *   'Invalid JSON payload received. Unknown name "x"[ at 'path']: Cannot find
 *   field.'; export takes filterConfig on v1 and v1beta1 (the current v1
 *   reference has it).
 * - datasetId and dicomStoreId: ASCII approximation of [\p{L}\p{N}_\-.]{1,256}
 *   (bytes >= 0x80 allowed); an existing id answers 409 ALREADY_EXISTS.
 * - datasets.create makes the dataset visible at once; its LRO finishes after
 *   --lro-delay with the Dataset (timeZone "UTC" when unset) as response.
 * - Operations leave "done" out while running (proto3 JSON omits false).
 *   Counter values are strings, zero values omitted. Import: a file that is
 *   not DICOM is a failure (op error code 3); no matching object or a missing
 *   bucket: code 5. Export: a missing destination bucket or filter object
 *   fails the operation with code 5 (not a synchronous 400/404); a bad filter
 *   line with code 3 naming the line and column; an instance that cannot be
 *   converted is a counted failure (op error code 3). Cancel: error code 1.
 * - Operations interrupted by a restart are resumed from the start (import,
 *   export and deletes are idempotent); counters restart from zero.
 * - QIDO with no match answers 204 No Content; missing DICOMweb resources
 *   answer 404.
 * - WADO without transfer-syntax=* transcodes to explicit VR LE. Of the
 *   compressed syntaxes only 8-bit JPEG baseline (1.2.840.10008.1.2.4.50) is
 *   decoded (libjpeg); others answer 406 there and are counted export
 *   failures for explicit-LE, PNG, JPEG and raw little-endian exports.
 * - bigqueryDestination answers 501 UNIMPLEMENTED.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dicom.h"
#include "log.h"
#include "util.h"
#include "wildcard.h"
#include "hc_internal.h"

/* The Healthcare side of one emulator: its state and its operations. */
struct emu_hc {
    hc_state *state;
    hc_lro *lro;
};

bool hc_id_valid(const char *id)
{
    size_t n = strlen(id);
    if (n < 1 || n > 256)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (!(isalnum(c) || c == '_' || c == '-' || c == '.' || c >= 0x80))
            return false;
    }
    return strcmp(id, ".") != 0 && strcmp(id, "..") != 0;
}

cJSON *hc_parse_body(const emu_request *r, emu_response *w)
{
    size_t len = 0;
    const char *body = emu_req_body(r, &len);
    if (!body || len == 0)
        return cJSON_CreateObject();
    cJSON *j = cJSON_ParseWithLength(body, len);
    if (!j) {
        hc_error(w, 400, "Invalid JSON payload received. Unexpected token.");
        return NULL;
    }
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        hc_error(w, 400, "Invalid JSON payload received. Expected an object.");
        return NULL;
    }
    return j;
}

bool hc_check_fields(emu_response *w, const cJSON *obj, const hc_field *schema, const char *at)
{
    for (const cJSON *c = obj->child; c; c = c->next) {
        const hc_field *f = schema;
        while (f->json_name && strcmp(f->json_name, c->string) != 0 &&
               !(f->proto_name && strcmp(f->proto_name, c->string) == 0))
            f++;
        char msg[512];
        if (!f->json_name) {
            if (at && *at)
                snprintf(msg, sizeof msg,
                         "Invalid JSON payload received. Unknown name \"%s\" at '%s': Cannot "
                         "find field.",
                         c->string, at);
            else
                snprintf(msg, sizeof msg,
                         "Invalid JSON payload received. Unknown name \"%s\": Cannot find field.",
                         c->string);
            hc_error(w, 400, msg);
            return false;
        }
        if (f->sub) {
            char path[256];
            snprintf(path, sizeof path, "%s%s%s", at && *at ? at : "", at && *at ? "." : "",
                     f->proto_name);
            if (!cJSON_IsObject(c)) {
                snprintf(msg, sizeof msg,
                         "Invalid JSON payload received. Unknown name \"%s\": Proto field is "
                         "not repeating, cannot start list.",
                         c->string);
                if (!cJSON_IsArray(c))
                    snprintf(msg, sizeof msg, "Invalid value at '%s', expected an object.", path);
                hc_error(w, 400, msg);
                return false;
            }
            if (!hc_check_fields(w, c, f->sub, path))
                return false;
        }
    }
    return true;
}

/* ---- REST ---- */
static const hc_field f_kms[] = {{"kmsKeyName", "kms_key_name", NULL}, {NULL, NULL, NULL}};
static const hc_field f_dataset[] = {{"name", "name", NULL},
                                     {"timeZone", "time_zone", NULL},
                                     {"encryptionSpec", "encryption_spec", f_kms},
                                     {"satisfiesPzi", "satisfies_pzi", NULL},
                                     {"satisfiesPzs", "satisfies_pzs", NULL},
                                     {NULL, NULL, NULL}};
static const hc_field f_notif[] = {{"pubsubTopic", "pubsub_topic", NULL},
                                   {"sendForBulkImport", "send_for_bulk_import", NULL},
                                   {NULL, NULL, NULL}};
static const hc_field f_store[] = {{"name", "name", NULL},
                                   {"labels", "labels", NULL},
                                   {"notificationConfig", "notification_config", f_notif},
                                   {"streamConfigs", "stream_configs", NULL},
                                   {NULL, NULL, NULL}};
static const hc_field f_gcs_source[] = {{"uri", "uri", NULL}, {NULL, NULL, NULL}};
static const hc_field f_blob[] = {{"blobStorageClass", "blob_storage_class", NULL},
                                  {NULL, NULL, NULL}};
static const hc_field f_import[] = {{"gcsSource", "gcs_source", f_gcs_source},
                                    {"blobStorageSettings", "blob_storage_settings", f_blob},
                                    {NULL, NULL, NULL}};
static const hc_field f_gcs_dest[] = {
    {"uriPrefix", "uri_prefix", NULL}, {"mimeType", "mime_type", NULL}, {NULL, NULL, NULL}};
static const hc_field f_bq_dest[] = {{"tableUri", "table_uri", NULL},
                                     {"force", "force", NULL},
                                     {"writeDisposition", "write_disposition", NULL},
                                     {NULL, NULL, NULL}};
static const hc_field f_filter[] = {{"resourcePathsGcsUri", "resource_paths_gcs_uri", NULL},
                                    {NULL, NULL, NULL}};
/* v1 and v1beta1 alike: the current v1 reference has filterConfig too. */
static const hc_field f_export[] = {{"gcsDestination", "gcs_destination", f_gcs_dest},
                                    {"bigqueryDestination", "bigquery_destination", f_bq_dest},
                                    {"filterConfig", "filter_config", f_filter},
                                    {NULL, NULL, NULL}};

static bool string_field(emu_response *w, const cJSON *obj, const char *key, const char *at,
                         const char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v))
        return true;
    if (!cJSON_IsString(v)) {
        char msg[256];
        snprintf(msg, sizeof msg, "Invalid value at '%s' (TYPE_STRING)", at);
        hc_error(w, 400, msg);
        return false;
    }
    *out = v->valuestring;
    return true;
}

/* Paged list: items is consumed. */
static void send_page(emu_response *w, const emu_request *r, cJSON *items, const char *key)
{
    long size = 100;
    const char *ps = emu_req_query(r, "pageSize");
    const char *pt = emu_req_query(r, "pageToken");
    if (ps && *ps) {
        char *end;
        size = strtol(ps, &end, 10);
        if (*end || size < 0) {
            cJSON_Delete(items);
            hc_error(w, 400, "Invalid value for pageSize: must be a non-negative integer");
            return;
        }
        if (size == 0)
            size = 100;
        if (size > 1000)
            size = 1000;
    }
    long off = 0;
    if (pt && *pt) {
        char *end;
        off = strtol(pt, &end, 10);
        if (*end || off < 0) {
            cJSON_Delete(items);
            hc_error(w, 400, "Invalid page token");
            return;
        }
    }
    cJSON *out = cJSON_CreateObject();
    cJSON *arr = cJSON_CreateArray();
    long n = cJSON_GetArraySize(items);
    for (long i = off; i < n && i < off + size; i++)
        cJSON_AddItemToArray(arr, cJSON_Duplicate(cJSON_GetArrayItem(items, (int)i), true));
    if (cJSON_GetArraySize(arr) > 0)
        cJSON_AddItemToObject(out, key, arr);
    else
        cJSON_Delete(arr);
    if (off + size < n) {
        char tok[32];
        snprintf(tok, sizeof tok, "%ld", off + size);
        cJSON_AddStringToObject(out, "nextPageToken", tok);
    }
    cJSON_Delete(items);
    emu_resp_json(w, 200, out);
}

static cJSON *dataset_json(const hc_dataset *d)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", d->name);
    cJSON_AddStringToObject(j, "timeZone", d->tz);
    return j;
}

static cJSON *store_json(const hc_store *s)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", s->name);
    return j;
}

static bool segment_ok(const char *s)
{
    return *s && strlen(s) <= 256 && strchr(s, ':') == NULL;
}

static void add_dataset_json(void *items, const hc_dataset *d)
{
    cJSON_AddItemToArray(items, dataset_json(d));
}

static void add_store_json(void *items, const hc_store *s)
{
    cJSON_AddItemToArray(items, store_json(s));
}

/* The id of a resource to create, from the query parameter param
 * ("datasetId", "dicomStoreId"), or NULL after answering 400. */
static const char *new_id(emu_response *w, const emu_request *r, const char *param)
{
    const char *id = emu_req_query(r, param);
    char msg[512];
    if (!id || !*id)
        snprintf(msg, sizeof msg, "%s is required", param);
    else if (!hc_id_valid(id))
        snprintf(msg, sizeof msg, "Invalid %s \"%.300s\": must match [\\p{L}\\p{N}_\\-\\.]{1,256}",
                 param, id);
    else
        return id;
    hc_error(w, 400, msg);
    return NULL;
}

static void datasets_collection(emu_hc *hc, emu_response *w, const emu_request *r,
                                const char *method, const char *version, const char *parent)
{
    if (strcmp(method, "GET") == 0) {
        cJSON *items = cJSON_CreateArray();
        hc_lock(hc->state);
        hc_datasets_each_locked(hc->state, parent, add_dataset_json, items);
        hc_unlock(hc->state);
        send_page(w, r, items, "datasets");
        return;
    }
    if (strcmp(method, "POST") != 0) {
        hc_error(w, 405, "Method not allowed");
        return;
    }
    const char *id = new_id(w, r, "datasetId");
    if (!id)
        return;
    cJSON *body = hc_parse_body(r, w);
    if (!body)
        return;
    const char *tz = NULL;
    if (!hc_check_fields(w, body, f_dataset, "") ||
        !string_field(w, body, "timeZone", "time_zone", &tz)) {
        cJSON_Delete(body);
        return;
    }
    char *name;
    if (asprintf(&name, "%s/datasets/%s", parent, id) < 0) {
        cJSON_Delete(body);
        hc_error(w, 500, "out of memory");
        return;
    }
    hc_lock(hc->state);
    if (hc_dataset_find(hc->state, name)) {
        hc_unlock(hc->state);
        char msg[512];
        snprintf(msg, sizeof msg, "Dataset %.400s already exists", name);
        hc_error(w, 409, msg);
    } else {
        hc_dataset_add_locked(hc->state, name, tz);
        cJSON *resp = dataset_json(hc_dataset_find(hc->state, name));
        hc_unlock(hc->state);
        hc_op_start(hc->lro, w, HC_OP_CREATE_DATASET, version, name, name, resp);
        cJSON_Delete(resp);
    }
    free(name);
    cJSON_Delete(body);
}

static void dataset_item(emu_hc *hc, emu_response *w, const char *method, const char *name)
{
    hc_lock(hc->state);
    const hc_dataset *d = hc_dataset_find(hc->state, name);
    if (!d) {
        hc_unlock(hc->state);
        char msg[512];
        snprintf(msg, sizeof msg, "Dataset %.400s not found", name);
        hc_error(w, 404, msg);
        return;
    }
    if (strcmp(method, "GET") == 0) {
        cJSON *j = dataset_json(d);
        hc_unlock(hc->state);
        emu_resp_json(w, 200, j);
        return;
    }
    if (strcmp(method, "DELETE") != 0) {
        hc_unlock(hc->state);
        hc_error(w, 405, "Method not allowed");
        return;
    }
    hc_dataset_drop_locked(hc->state, name);
    hc_unlock(hc->state);
    lro_delete_dataset(hc->lro, name);
    emu_resp_json(w, 200, cJSON_CreateObject());
}

static void stores_collection(emu_hc *hc, emu_response *w, const emu_request *r, const char *method,
                              const char *dataset)
{
    if (!hc_dataset_exists(hc->state, dataset)) {
        char msg[512];
        snprintf(msg, sizeof msg, "Dataset %.400s not found", dataset);
        hc_error(w, 404, msg);
        return;
    }
    if (strcmp(method, "GET") == 0) {
        cJSON *items = cJSON_CreateArray();
        hc_lock(hc->state);
        hc_stores_each_locked(hc->state, dataset, add_store_json, items);
        hc_unlock(hc->state);
        send_page(w, r, items, "dicomStores");
        return;
    }
    if (strcmp(method, "POST") != 0) {
        hc_error(w, 405, "Method not allowed");
        return;
    }
    const char *id = new_id(w, r, "dicomStoreId");
    if (!id)
        return;
    cJSON *body = hc_parse_body(r, w);
    if (!body)
        return;
    if (!hc_check_fields(w, body, f_store, "")) {
        cJSON_Delete(body);
        return;
    }
    cJSON_Delete(body);
    char *name;
    if (asprintf(&name, "%s/dicomStores/%s", dataset, id) < 0) {
        hc_error(w, 500, "out of memory");
        return;
    }
    hc_lock(hc->state);
    if (hc_store_find(hc->state, name)) {
        hc_unlock(hc->state);
        char msg[512];
        snprintf(msg, sizeof msg, "DICOM store %.400s already exists", name);
        hc_error(w, 409, msg);
    } else {
        hc_store *s = hc_store_create_locked(hc->state, name);
        cJSON *j = s ? store_json(s) : NULL;
        hc_unlock(hc->state);
        if (j)
            emu_resp_json(w, 200, j);
        else
            hc_error(w, 500, "cannot create the DICOM store");
    }
    free(name);
}

static bool gs_uri_ok(emu_response *w, const char *uri, const char *field, bool allow_wild)
{
    char why[256] = "", *bucket = NULL, *object = NULL;
    bool ok = wildcard_split_gcs_uri(uri, &bucket, &object, why, sizeof why) == WILDCARD_OK;
    if (ok && allow_wild)
        ok = wildcard_validate(object, why, sizeof why) == WILDCARD_OK;
    else if (ok && (strpbrk(object, "*?") != NULL)) {
        ok = false;
        snprintf(why, sizeof why, "wildcards are not allowed here");
    }
    free(bucket);
    free(object);
    if (!ok) {
        char msg[700];
        snprintf(msg, sizeof msg, "Invalid %s \"%.300s\": %s", field, uri, why);
        hc_error(w, 400, msg);
    }
    return ok;
}

static void store_import(emu_hc *hc, emu_response *w, const emu_request *r, const char *version,
                         const char *dataset, const char *store)
{
    cJSON *body = hc_parse_body(r, w);
    if (!body)
        return;
    const char *uri = NULL;
    if (hc_check_fields(w, body, f_import, "") &&
        string_field(w, cJSON_GetObjectItemCaseSensitive(body, "gcsSource"), "uri",
                     "gcs_source.uri", &uri)) {
        if (!uri || !*uri)
            hc_error(w, 400, "gcs_source.uri is required");
        else if (gs_uri_ok(w, uri, "gcs_source.uri", true))
            hc_op_start(hc->lro, w, HC_OP_IMPORT, version, dataset, store, body);
    }
    cJSON_Delete(body);
}

static void store_export(emu_hc *hc, emu_response *w, const emu_request *r, const char *version,
                         const char *dataset, const char *store)
{
    cJSON *body = hc_parse_body(r, w);
    if (!body)
        return;
    const cJSON *gd = cJSON_GetObjectItemCaseSensitive(body, "gcsDestination");
    const cJSON *fc = cJSON_GetObjectItemCaseSensitive(body, "filterConfig");
    const char *prefix = NULL, *mime = NULL, *filter = NULL;
    if (!hc_check_fields(w, body, f_export, "") ||
        !string_field(w, gd, "uriPrefix", "gcs_destination.uri_prefix", &prefix) ||
        !string_field(w, gd, "mimeType", "gcs_destination.mime_type", &mime) ||
        !string_field(w, fc, "resourcePathsGcsUri", "filter_config.resource_paths_gcs_uri",
                      &filter))
        goto out;
    if (cJSON_GetObjectItemCaseSensitive(body, "bigqueryDestination")) {
        if (gd)
            hc_error(w, 400, "Only one of gcs_destination and bigquery_destination may be set");
        else
            hc_error(w, 501, "bigquery_destination is not supported by dicomfs-emulator");
        goto out;
    }
    if (!gd || !prefix || !*prefix) {
        hc_error(w, 400, "gcs_destination.uri_prefix is required");
        goto out;
    }
    if (!gs_uri_ok(w, prefix, "gcs_destination.uri_prefix", false))
        goto out;
    if (filter && !gs_uri_ok(w, filter, "filter_config.resource_paths_gcs_uri", false))
        goto out;
    if (hc_export_parse_mime(mime, NULL) < 0) {
        char msg[512];
        snprintf(msg, sizeof msg, "Invalid gcs_destination.mime_type \"%.300s\": unsupported",
                 mime);
        hc_error(w, 400, msg);
        goto out;
    }
    hc_op_start(hc->lro, w, HC_OP_EXPORT, version, dataset, store, body);
out:
    cJSON_Delete(body);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static long count_unique(const char **v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_str);
    long u = 0;
    for (size_t i = 0; i < n; i++)
        if (i == 0 || strcmp(v[i], v[i - 1]) != 0)
            u++;
    return u;
}

static void store_metrics(emu_response *w, hc_store *s)
{
    /* under lock; O(n log n) */
    long studies = 0, series = 0;
    uint64_t bytes = 0;
    const char **v = malloc((s->n_inst + 1) * sizeof *v);
    if (v) {
        for (size_t i = 0; i < s->n_inst; i++)
            v[i] = s->inst[i]->study;
        studies = count_unique(v, s->n_inst);
        for (size_t i = 0; i < s->n_inst; i++)
            v[i] = s->inst[i]->series;
        series = count_unique(v, s->n_inst);
        free(v);
    }
    for (size_t i = 0; i < s->n_inst; i++)
        bytes += s->inst[i]->size;
    cJSON *j = cJSON_CreateObject();
    char b[32];
    cJSON_AddStringToObject(j, "name", s->name);
    snprintf(b, sizeof b, "%ld", studies);
    cJSON_AddStringToObject(j, "studyCount", b);
    snprintf(b, sizeof b, "%ld", series);
    cJSON_AddStringToObject(j, "seriesCount", b);
    snprintf(b, sizeof b, "%zu", s->n_inst);
    cJSON_AddStringToObject(j, "instanceCount", b);
    snprintf(b, sizeof b, "%llu", (unsigned long long)bytes);
    cJSON_AddStringToObject(j, "blobStorageSizeBytes", b);
    emu_resp_json(w, 200, j);
}

static void store_item(emu_hc *hc, emu_response *w, const emu_request *r, const char *method,
                       const char *version, const char *dataset, const char *name, const char *verb)
{
    hc_lock(hc->state);
    hc_store *s = hc_store_find(hc->state, name);
    if (!s) {
        hc_unlock(hc->state);
        char msg[512];
        snprintf(msg, sizeof msg, "DICOM store %.400s not found", name);
        hc_error(w, 404, msg);
        return;
    }
    if (verb) {
        if (strcmp(verb, "getDICOMStoreMetrics") == 0 && strcmp(method, "GET") == 0) {
            store_metrics(w, s);
            hc_unlock(hc->state);
            return;
        }
        hc_unlock(hc->state);
        if (strcmp(method, "POST") == 0 && strcmp(verb, "import") == 0)
            store_import(hc, w, r, version, dataset, name);
        else if (strcmp(method, "POST") == 0 && strcmp(verb, "export") == 0)
            store_export(hc, w, r, version, dataset, name);
        else
            hc_error(w, 404, "Method not found.");
        return;
    }
    if (strcmp(method, "GET") == 0) {
        cJSON *j = store_json(s);
        hc_unlock(hc->state);
        emu_resp_json(w, 200, j);
    } else if (strcmp(method, "DELETE") == 0) {
        hc_store_drop_locked(hc->state, s);
        hc_unlock(hc->state);
        emu_resp_json(w, 200, cJSON_CreateObject());
    } else {
        hc_unlock(hc->state);
        hc_error(w, 405, "Method not allowed");
    }
}

#define MAX_SEG 8

/* Locations of the Cloud Healthcare API (regions and the us/eu
 * multi-regions). With --location and those of existing datasets, they are
 * the only ones that exist: anything else answers 404 NOT_FOUND. */
static const char *const known_locations[] = {
    "us",
    "eu",
    "us-central1",
    "us-east1",
    "us-east4",
    "us-west1",
    "us-west2",
    "us-west3",
    "us-west4",
    "northamerica-northeast1",
    "northamerica-northeast2",
    "southamerica-east1",
    "europe-west1",
    "europe-west2",
    "europe-west3",
    "europe-west4",
    "europe-west6",
    "europe-west9",
    "europe-north1",
    "europe-central2",
    "asia-east1",
    "asia-east2",
    "asia-northeast1",
    "asia-northeast2",
    "asia-northeast3",
    "asia-south1",
    "asia-southeast1",
    "asia-southeast2",
    "australia-southeast1",
    "australia-southeast2",
    "me-central2",
    "me-west1",
};

static bool location_known(emu_hc *hc, const char *loc)
{
    for (size_t i = 0; i < sizeof known_locations / sizeof known_locations[0]; i++)
        if (strcmp(known_locations[i], loc) == 0)
            return true;
    return hc_location_used(hc->state, loc);
}

void emu_hc_handle(emu_ctx *ctx, const emu_request *r, emu_response *w, const char *version,
                   const char *rest)
{
    emu_hc *hc = emu_ctx_hc(ctx);
    const char *method = emu_req_method(r);
    char *path = strdup(rest);
    if (!path) {
        hc_error(w, 500, "out of memory");
        return;
    }
    size_t plen = strlen(path);
    while (plen && path[plen - 1] == '/')
        path[--plen] = '\0';
    char *seg[MAX_SEG];
    int n = 0;
    char *save = NULL, *dicomweb = NULL;
    /* Split the first 8 segments; a "dicomWeb" segment takes the rest. */
    char *p = path;
    while (p && n < MAX_SEG) {
        char *slash = strchr(p, '/');
        if (slash)
            *slash = '\0';
        seg[n++] = p;
        if (n == 8 && strcmp(seg[6], "dicomStores") == 0 && slash) {
            char *next = slash + 1;
            if (strncmp(next, "dicomWeb", 8) == 0 && (next[8] == '/' || next[8] == '\0')) {
                dicomweb = next[8] ? next + 9 : next + 8;
                p = NULL;
                break;
            }
        }
        p = slash ? slash + 1 : NULL;
    }
    (void)save;
    bool bad = p != NULL || n < 5 || strcmp(seg[0], "projects") != 0 ||
               strcmp(seg[2], "locations") != 0 || strcmp(seg[4], "datasets") != 0 ||
               !segment_ok(seg[1]) || !segment_ok(seg[3]);
    char *verb = NULL;
    if (!bad && !dicomweb) {
        verb = strchr(seg[n - 1], ':');
        if (verb)
            *verb++ = '\0';
    }
    for (int i = 0; !bad && i < n; i++)
        if (!*seg[i])
            bad = true;
    if (bad) {
        hc_error(w, 404, "Method not found.");
        free(path);
        return;
    }
    char parent[600], dataset[900] = "", store[1200] = "";
    snprintf(parent, sizeof parent, "projects/%s/locations/%s", seg[1], seg[3]);
    if (!location_known(hc, seg[3])) {
        char msg[700];
        snprintf(msg, sizeof msg,
                 "Location %s not found: the Cloud Healthcare API has no location '%s'", parent,
                 seg[3]);
        hc_error(w, 404, msg);
        free(path);
        return;
    }
    if (n >= 6)
        snprintf(dataset, sizeof dataset, "%s/datasets/%s", parent, seg[5]);
    if (n >= 8)
        snprintf(store, sizeof store, "%s/dicomStores/%s", dataset, seg[7]);
    if (n == 5 && !verb) {
        datasets_collection(hc, w, r, method, version, parent);
    } else if (n == 6 && !verb) {
        dataset_item(hc, w, method, dataset);
    } else if (n == 7 && strcmp(seg[6], "dicomStores") == 0 && !verb) {
        stores_collection(hc, w, r, method, dataset);
    } else if (n == 7 && strcmp(seg[6], "operations") == 0 && !verb) {
        if (strcmp(method, "GET") != 0)
            hc_error(w, 405, "Method not allowed");
        else if (!hc_dataset_exists(hc->state, dataset))
            hc_error(w, 404, "Dataset not found");
        else
            lro_list(hc->lro, w, dataset, r);
    } else if (n == 8 && strcmp(seg[6], "dicomStores") == 0 && dicomweb) {
        hc_lock(hc->state);
        bool exists = hc_store_find(hc->state, store) != NULL;
        hc_unlock(hc->state);
        if (!exists) {
            char msg[1400];
            snprintf(msg, sizeof msg, "DICOM store %s not found", store);
            hc_error(w, 404, msg);
        } else {
            dicomweb_handle(ctx, hc->state, hc->lro, r, w, version, store, dataset, dicomweb);
        }
    } else if (n == 8 && strcmp(seg[6], "dicomStores") == 0) {
        store_item(hc, w, r, method, version, dataset, store, verb);
    } else if (n == 8 && strcmp(seg[6], "operations") == 0) {
        lro_handle(hc->lro, w, method, dataset, seg[7], verb, r);
    } else {
        hc_error(w, 404, "Method not found.");
    }
    free(path);
}

void emu_hc_logs_handle(emu_ctx *ctx, const emu_request *r, emu_response *w, const char *rest)
{
    (void)r;
    lro_logs(emu_ctx_hc(ctx)->lro, w, rest);
}

int emu_hc_init(emu_ctx *ctx)
{
    emu_hc *hc = calloc(1, sizeof *hc);
    if (!hc)
        return -ENOMEM;
    emu_ctx_set_hc(ctx, hc);
    int rc = hc_state_open(ctx, &hc->state);
    if (rc < 0)
        return rc;
    rc = lro_open(ctx, hc->state, &hc->lro);
    if (rc < 0)
        return rc;
    /* The operation code knows workers only through this table. */
    lro_register(hc->lro, HC_OP_IMPORT, hc_import_run);
    lro_register(hc->lro, HC_OP_EXPORT, hc_export_run);
    lro_register(hc->lro, HC_OP_DELETE_STUDY, hc_delete_run);
    lro_register(hc->lro, HC_OP_DELETE_SERIES, hc_delete_run);
    return lro_load(hc->lro);
}

void emu_hc_shutdown(emu_ctx *ctx)
{
    emu_hc *hc = emu_ctx_hc(ctx);
    if (!hc)
        return;
    lro_close(hc->lro);
    hc_state_close(hc->state);
    free(hc);
    emu_ctx_set_hc(ctx, NULL);
}

int emu_hc_expire_ops(emu_ctx *ctx, const char *name)
{
    return lro_expire(emu_ctx_hc(ctx)->lro, name);
}

int emu_hc_precreate(emu_ctx *ctx, const char *project, const char *location, const char *dataset,
                     const char *store)
{
    hc_state *hs = emu_ctx_hc(ctx)->state;
    if (!project || !location || !dataset || !hc_id_valid(dataset) ||
        (store && !hc_id_valid(store))) {
        log_error("emulator: cannot pre-create: invalid project, location, dataset or store id");
        return -EINVAL;
    }
    char *dname, *sname = NULL;
    if (asprintf(&dname, "projects/%s/locations/%s/datasets/%s", project, location, dataset) < 0)
        return -ENOMEM;
    if (store && asprintf(&sname, "%s/dicomStores/%s", dname, store) < 0) {
        free(dname);
        return -ENOMEM;
    }
    int rc = 0;
    hc_lock(hs);
    hc_location_default_locked(hs, location);
    if (!hc_dataset_find(hs, dname))
        rc = hc_dataset_add_locked(hs, dname, NULL);
    if (rc == 0 && sname && !hc_store_find(hs, sname) && !hc_store_create_locked(hs, sname))
        rc = -ENOMEM;
    hc_unlock(hs);
    free(dname);
    free(sname);
    return rc;
}
