/* Unit tests for client/healthcare.c against tests/unit/testsrv. */
#include "testlib.h"
#include "testsrv.h"

#include "healthcare.h"
#include "http.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DS "projects/p/locations/l/datasets/d"
#define ST DS "/dicomStores/s"
#define OP DS "/operations/123"

static http_client *test_http(void)
{
    http_options o;
    http_options_init(&o);
    o.retry.max_attempts = 3;
    o.retry.base_ms = 5;
    o.retry.max_backoff_ms = 20;
    o.retry.total_ms = 1000;
    o.connect_timeout_s = 5;
    return http_client_new(&o);
}

/* A client on a fresh test server. */
typedef struct fixture {
    testsrv *srv;
    http_client *h;
    hc_client *c;
} fixture;

static fixture fx_start(void)
{
    fixture f;
    char root[128];
    f.srv = testsrv_start();
    f.h = test_http();
    snprintf(root, sizeof root, "%s/", testsrv_url(f.srv));
    f.c = hc_client_new(f.h, root);
    return f;
}

static void fx_stop(fixture *f)
{
    hc_client_free(f->c);
    http_client_free(f->h);
    testsrv_stop(f->srv);
}

static void push(fixture *f, int status, const char *body)
{
    testsrv_reply r = {.status = status, .body = body};
    testsrv_push(f->srv, &r);
}

static const testsrv_req *req(fixture *f, int i)
{
    return testsrv_get(f->srv, i);
}

/* Request i reached the server with this method and URL. */
#define CHECK_REQ(f, i, m, u)                                                                      \
    do {                                                                                           \
        const testsrv_req *r_ = req(f, i);                                                         \
        CHECK(r_ != NULL);                                                                         \
        if (r_) {                                                                                  \
            CHECK_EQ_STR(r_->method, m);                                                           \
            CHECK_EQ_STR(r_->url, u);                                                              \
        }                                                                                          \
    } while (0)

/* Records list callbacks. */
typedef struct rec {
    char names[32][128];
    char json[32][512];
    int n;
} rec;

static int rec_cb(void *ctx, const char *name, const char *json)
{
    rec *r = ctx;
    if (r->n < 32) {
        snprintf(r->names[r->n], 128, "%s", name);
        snprintf(r->json[r->n], 512, "%s", json);
        r->n++;
    }
    return 0;
}

/* ---- endpoint ----------------------------------------------------------------------- */

TEST(endpoint_normalization)
{
    http_client *h = test_http();
    struct {
        const char *in, *want;
    } cases[] = {
        {"http://127.0.0.1:9/", "http://127.0.0.1:9/"},
        {"http://127.0.0.1:9", "http://127.0.0.1:9/"},
        {"http://127.0.0.1:9/v1/", "http://127.0.0.1:9/"},
        {"http://127.0.0.1:9/v1", "http://127.0.0.1:9/"},
        {"http://127.0.0.1:9/v1beta1/", "http://127.0.0.1:9/"},
        {"https://proxy.example/healthcare/v1/", "https://proxy.example/healthcare/"},
        {"https://proxy.example/xv1/", "https://proxy.example/xv1/"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        hc_client *c = hc_client_new(h, cases[i].in);
        CHECK_EQ_STR(hc_client_endpoint(c), cases[i].want);
        hc_client_free(c);
    }
    unsetenv("CLOUDSDK_API_ENDPOINT_OVERRIDES_HEALTHCARE");
    hc_client *c = hc_client_new(h, NULL);
    CHECK_EQ_STR(hc_client_endpoint(c), "https://healthcare.googleapis.com/");
    hc_client_free(c);
    setenv("CLOUDSDK_API_ENDPOINT_OVERRIDES_HEALTHCARE", "http://localhost:8080/v1/", 1);
    c = hc_client_new(h, NULL);
    CHECK_EQ_STR(hc_client_endpoint(c), "http://localhost:8080/");
    hc_client_free(c);
    c = hc_client_new(h, "http://explicit:1");
    CHECK_EQ_STR(hc_client_endpoint(c), "http://explicit:1/");
    hc_client_free(c);
    unsetenv("CLOUDSDK_API_ENDPOINT_OVERRIDES_HEALTHCARE");
    http_client_free(h);
}

TEST(endpoint_with_v1_builds_single_version)
{
    testsrv *srv = testsrv_start();
    http_client *h = test_http();
    char root[128];
    char *json = NULL;
    snprintf(root, sizeof root, "%s/v1/", testsrv_url(srv));
    hc_client *c = hc_client_new(h, root);
    testsrv_reply r = {.body = "{\"name\":\"" DS "\"}"};
    testsrv_push(srv, &r);
    CHECK_EQ_INT(hc_dataset_get(c, DS, &json, NULL), CERR_OK);
    CHECK_EQ_STR(testsrv_get(srv, 0)->url, "/v1/" DS);
    CHECK_EQ_STR(json, "{\"name\":\"" DS "\"}");
    free(json);
    hc_client_free(c);
    http_client_free(h);
    testsrv_stop(srv);
}

/* ---- datasets and stores --------------------------------------------------------------- */

TEST(datasets_list_three_pages)
{
    fixture f = fx_start();
    rec r = {0};
    cerr_detail e;
    push(
        &f, 200,
        "{\"datasets\":[{\"name\":\"projects/p/locations/l/datasets/a\",\n  \"timeZone\":\"UTC\"}],"
        "\"nextPageToken\":\"p2 +/\"}");
    push(&f, 200,
         "{\"datasets\":[{\"name\":\"projects/p/locations/l/datasets/b\"}],"
         "\"nextPageToken\":\"p3\"}");
    push(&f, 200, "{\"datasets\":[{\"name\":\"projects/p/locations/l/datasets/c\"}]}");
    CHECK_EQ_INT(hc_datasets_list(f.c, "projects/p/locations/l", rec_cb, &r, &e), CERR_OK);
    CHECK_EQ_INT(r.n, 3);
    CHECK_EQ_STR(r.names[0], "projects/p/locations/l/datasets/a");
    CHECK_EQ_STR(r.names[2], "projects/p/locations/l/datasets/c");
    /* Unformatted JSON of the object. */
    CHECK_EQ_STR(r.json[0],
                 "{\"name\":\"projects/p/locations/l/datasets/a\",\"timeZone\":\"UTC\"}");
    CHECK_EQ_INT(testsrv_count(f.srv), 3);
    CHECK_REQ(&f, 0, "GET", "/v1/projects/p/locations/l/datasets?pageSize=1000");
    CHECK_EQ_STR(req(&f, 1)->url,
                 "/v1/projects/p/locations/l/datasets?pageSize=1000&pageToken=p2%20%2B%2F");
    CHECK_EQ_STR(req(&f, 2)->url, "/v1/projects/p/locations/l/datasets?pageSize=1000&pageToken=p3");
    fx_stop(&f);
}

TEST(dataset_create_get_delete)
{
    fixture f = fx_start();
    char *op = NULL, *json = NULL;
    cerr_detail e;
    push(&f, 200, "{\"name\":\"projects/p/locations/l/datasets/new/operations/77\"}");
    CHECK_EQ_INT(hc_dataset_create(f.c, "projects/p/locations/l", "new", &op, &e), CERR_OK);
    CHECK_EQ_STR(op, "projects/p/locations/l/datasets/new/operations/77");
    CHECK_REQ(&f, 0, "POST", "/v1/projects/p/locations/l/datasets?datasetId=new");
    CHECK_EQ_STR(req(&f, 0)->body, "{}");
    CHECK(strstr(testsrv_req_header(req(&f, 0), "Content-Type"), "application/json") != NULL);
    free(op);

    push(&f, 200, "{\"name\":\"" DS "\",\"timeZone\":\"UTC\"}");
    CHECK_EQ_INT(hc_dataset_get(f.c, DS, &json, &e), CERR_OK);
    CHECK_EQ_STR(json, "{\"name\":\"" DS "\",\"timeZone\":\"UTC\"}");
    CHECK_EQ_STR(req(&f, 1)->url, "/v1/" DS);
    free(json);

    push(&f, 200, "{}");
    CHECK_EQ_INT(hc_dataset_delete(f.c, DS, &e), CERR_OK);
    CHECK_REQ(&f, 2, "DELETE", "/v1/" DS);

    /* A create reply without an operation name is a protocol error. */
    push(&f, 200, "{}");
    op = (char *)"x";
    CHECK_EQ_INT(hc_dataset_create(f.c, "projects/p/locations/l", "n2", &op, &e), CERR_MALFORMED);
    CHECK(op == NULL);

    /* An API error is reported with its status. */
    push(&f, 409,
         "{\"error\":{\"code\":409,\"message\":\"already exists\",\"status\":"
         "\"ALREADY_EXISTS\"}}");
    CHECK_EQ_INT(hc_dataset_create(f.c, "projects/p/locations/l", "n3", &op, &e), CERR_EXISTS);
    CHECK_EQ_INT(e.http_status, 409);
    /* Not retried: starting work is not idempotent. */
    CHECK_EQ_INT(testsrv_count(f.srv), 5);
    fx_stop(&f);
}

TEST(stores_list_get_create_delete)
{
    fixture f = fx_start();
    rec r = {0};
    char *json = NULL;
    cerr_detail e;
    push(&f, 200, "{\"dicomStores\":[{\"name\":\"" ST "\"},{\"name\":\"" DS "/dicomStores/t\"}]}");
    CHECK_EQ_INT(hc_stores_list(f.c, DS, rec_cb, &r, &e), CERR_OK);
    CHECK_EQ_INT(r.n, 2);
    CHECK_EQ_STR(r.names[1], DS "/dicomStores/t");
    CHECK_EQ_STR(req(&f, 0)->url, "/v1/" DS "/dicomStores?pageSize=1000");

    push(&f, 200, "{\"name\":\"" ST "\"}");
    CHECK_EQ_INT(hc_store_get(f.c, ST, &json, &e), CERR_OK);
    CHECK_EQ_STR(req(&f, 1)->url, "/v1/" ST);
    free(json);

    push(&f, 200, "{\"name\":\"" DS "/dicomStores/new store\"}");
    CHECK_EQ_INT(hc_store_create(f.c, DS, "new store", &e), CERR_OK);
    CHECK_REQ(&f, 2, "POST", "/v1/" DS "/dicomStores?dicomStoreId=new%20store");
    CHECK_EQ_STR(req(&f, 2)->body, "{}");

    push(&f, 200, "{}");
    CHECK_EQ_INT(hc_store_delete(f.c, ST, &e), CERR_OK);
    CHECK_REQ(&f, 3, "DELETE", "/v1/" ST);
    fx_stop(&f);
}

/* ---- import / export ------------------------------------------------------------- */

TEST(import_body_and_op)
{
    fixture f = fx_start();
    char *op = NULL;
    cerr_detail e;
    push(&f, 200, "{\"name\":\"" OP "\"}");
    CHECK_EQ_INT(hc_import(f.c, ST, "gs://bkt/staging/b1/**.dcm", &op, &e), CERR_OK);
    CHECK_EQ_STR(op, OP);
    CHECK_REQ(&f, 0, "POST", "/v1/" ST ":import");
    CHECK_EQ_STR(req(&f, 0)->body, "{\"gcsSource\":{\"uri\":\"gs://bkt/staging/b1/**.dcm\"}}");
    free(op);

    /* A 503 on import is retried: a second import has the same effect. */
    push(&f, 503, "{\"error\":{\"code\":503,\"message\":\"unavailable\"}}");
    push(&f, 200, "{\"name\":\"" OP "\"}");
    CHECK_EQ_INT(hc_import(f.c, ST, "gs://bkt/x", &op, &e), CERR_OK);
    CHECK_EQ_STR(op, OP);
    CHECK_EQ_INT(testsrv_count(f.srv), 3);
    free(op);

    /* A 503 on datasets.create is not: a retry after an unseen success
     * would answer ALREADY_EXISTS. */
    push(&f, 503, "{\"error\":{\"code\":503,\"message\":\"unavailable\"}}");
    push(&f, 200, "{\"name\":\"" OP "\"}");
    CHECK_EQ_INT(hc_dataset_create(f.c, "projects/p/locations/l", "ds", &op, &e), CERR_UNAVAILABLE);
    CHECK_EQ_INT(e.http_status, 503);
    CHECK_EQ_INT(testsrv_count(f.srv), 4);
    fx_stop(&f);
}

TEST(export_v1_and_v1beta1_filter)
{
    fixture f = fx_start();
    char *op = NULL;
    cerr_detail e;
    push(&f, 200, "{\"name\":\"" OP "\"}");
    push(&f, 200, "{\"name\":\"" OP "\"}");
    push(&f, 200, "{\"name\":\"" OP "\"}");

    CHECK_EQ_INT(hc_export(f.c, ST, "gs://bkt/out", NULL, NULL, &op, &e), CERR_OK);
    CHECK_EQ_STR(op, OP);
    free(op);
    CHECK_EQ_STR(req(&f, 0)->url, "/v1/" ST ":export");
    CHECK_EQ_STR(req(&f, 0)->body, "{\"gcsDestination\":{\"uriPrefix\":\"gs://bkt/out\"}}");

    CHECK_EQ_INT(
        hc_export(f.c, ST, "gs://bkt/out", "application/dicom; transfer-syntax=*", NULL, &op, &e),
        CERR_OK);
    free(op);
    CHECK_EQ_STR(req(&f, 1)->url, "/v1/" ST ":export");
    CHECK_EQ_STR(req(&f, 1)->body, "{\"gcsDestination\":{\"uriPrefix\":\"gs://bkt/out\","
                                   "\"mimeType\":\"application/dicom; transfer-syntax=*\"}}");
    CHECK(strstr(req(&f, 1)->body, "filterConfig") == NULL);

    CHECK_EQ_INT(hc_export(f.c, ST, "gs://bkt/out", "image/png", "gs://bkt/filter.txt", &op, &e),
                 CERR_OK);
    free(op);
    CHECK_REQ(&f, 2, "POST", "/v1beta1/" ST ":export");
    CHECK_EQ_STR(req(&f, 2)->body,
                 "{\"gcsDestination\":{\"uriPrefix\":\"gs://bkt/out\",\"mimeType\":\"image/png\"},"
                 "\"filterConfig\":{\"resourcePathsGcsUri\":\"gs://bkt/filter.txt\"}}");
    fx_stop(&f);
}

/* ---- operations ------------------------------------------------------------------- */

TEST(operation_get_is_byte_exact)
{
    fixture f = fx_start();
    const char *body = "{\n  \"name\": \"" OP "\",\n  \"metadata\": {\"counter\": "
                       "{\"success\": \"3\"}},\n  \"done\": true\n}\n";
    char *json = NULL;
    size_t len = 0;
    cerr_detail e;
    push(&f, 200, body);
    CHECK_EQ_INT(hc_operation_get(f.c, OP, &json, &len, &e), CERR_OK);
    CHECK_EQ_INT(len, strlen(body));
    CHECK(json && memcmp(json, body, strlen(body)) == 0);
    CHECK_REQ(&f, 0, "GET", "/v1/" OP);
    free(json);
    fx_stop(&f);
}

TEST(operation_get_refetches_garbled_bodies)
{
    fixture f = fx_start();
    const char *good = "{\"name\": \"" OP "\", \"done\": false}\n";
    char *json = NULL;
    size_t len = 0;
    cerr_detail e;
    /* Cut short, then trailing garbage after a valid object, then good. */
    push(&f, 200, "{\"name\": \"" OP "\", \"do");
    push(&f, 200, "{\"name\": \"" OP "\"}{");
    push(&f, 200, good);
    CHECK_EQ_INT(hc_operation_get(f.c, OP, &json, &len, &e), CERR_OK);
    CHECK_EQ_INT(testsrv_count(f.srv), 3);
    CHECK(json && len == strlen(good) && memcmp(json, good, len) == 0);
    free(json);
    json = NULL;
    /* Never valid: a protocol error naming the operation, no bytes. */
    for (int i = 0; i < 4; i++)
        push(&f, 200, i % 2 ? "[1, 2]" : "not json");
    CHECK_EQ_INT(hc_operation_get(f.c, OP, &json, &len, &e), CERR_MALFORMED);
    CHECK(json == NULL);
    CHECK_EQ_INT(testsrv_count(f.srv), 7);
    CHECK(strstr(e.message, "malformed JSON from the server") != NULL);
    CHECK(strstr(e.message, OP) != NULL);
    fx_stop(&f);
}

TEST(list_with_trailing_garbage_is_an_error)
{
    fixture f = fx_start();
    rec r = {0};
    cerr_detail e;
    /* A garbled page that cJSON alone would read as an empty listing. */
    push(&f, 200, "{\"datase{s\":[{\"name\":\"projects/p/locations/l/datasets/a\"}]}{");
    CHECK_EQ_INT(hc_datasets_list(f.c, "projects/p/locations/l", rec_cb, &r, &e), CERR_MALFORMED);
    CHECK_EQ_INT(r.n, 0);
    fx_stop(&f);
}

TEST(operation_parse_samples)
{
    hc_operation op;
    const char *running = "{\"name\":\"" OP "\",\"metadata\":{\"@type\":\"type.googleapis.com/"
                          "google.cloud.healthcare.v1.OperationMetadata\",\"apiMethodName\":"
                          "\"google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData\","
                          "\"createTime\":\"2026-01-01T00:00:00Z\",\"logsUrl\":\"https://x\","
                          "\"counter\":{\"success\":\"12\",\"pending\":\"30\"}}}";
    CHECK_EQ_INT(hc_operation_parse(running, strlen(running), &op), CERR_OK);
    CHECK_EQ_STR(op.name, OP);
    CHECK(!op.done);
    CHECK(!op.has_error);
    CHECK_EQ_INT(op.success, 12);
    CHECK_EQ_INT(op.pending, 30);
    CHECK_EQ_INT(op.failure, -1);
    CHECK_EQ_STR(op.api_method, "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData");
    CHECK_EQ_STR(op.create_time, "2026-01-01T00:00:00Z");
    CHECK(op.end_time == NULL);
    CHECK_EQ_STR(op.logs_url, "https://x");
    hc_operation_clear(&op);

    const char *done = "{\"name\":\"" OP "\",\"done\":true,\"metadata\":{\"endTime\":\"t2\","
                       "\"counter\":{\"success\":5,\"failure\":\"0\"}},\"response\":{}}";
    CHECK_EQ_INT(hc_operation_parse(done, strlen(done), &op), CERR_OK);
    CHECK(op.done);
    CHECK(!op.has_error);
    CHECK_EQ_INT(op.success, 5);
    CHECK_EQ_INT(op.failure, 0);
    CHECK_EQ_INT(op.pending, -1);
    CHECK_EQ_STR(op.end_time, "t2");
    hc_operation_clear(&op);

    const char *failed = "{\"name\":\"" OP "\",\"done\":true,\"error\":{\"code\":3,\"message\":"
                         "\"file not DICOM\",\"details\":[]},\"metadata\":{\"counter\":"
                         "{\"failure\":\"2\",\"success\":\"x1\"}}}";
    CHECK_EQ_INT(hc_operation_parse(failed, strlen(failed), &op), CERR_OK);
    CHECK(op.done);
    CHECK(op.has_error);
    CHECK_EQ_INT(op.error_code, 3);
    CHECK_EQ_STR(op.error_message, "file not DICOM");
    CHECK_EQ_INT(op.failure, 2);
    CHECK_EQ_INT(op.success, -1); /* not a number: absent */
    hc_operation_clear(&op);

    CHECK_EQ_INT(hc_operation_parse("{\"done\":true}", 13, &op), CERR_MALFORMED);
    CHECK(op.name == NULL);
    CHECK_EQ_INT(hc_operation_parse("nope", 4, &op), CERR_MALFORMED);
    CHECK_EQ_INT(hc_operation_parse("{\"name\":\"x\",\"error\":{}}", 23, &op), CERR_OK);
    CHECK(op.has_error);
    CHECK_EQ_INT(op.error_code, 2); /* missing code: UNKNOWN, never OK */
    hc_operation_clear(&op);
}

TEST(operations_list_and_cancel)
{
    fixture f = fx_start();
    rec r = {0};
    cerr_detail e;
    push(&f, 200,
         "{\"operations\":[{\"name\":\"" DS "/operations/1\",\"done\":true}],"
         "\"nextPageToken\":\"n\"}");
    push(&f, 200, "{\"operations\":[{\"name\":\"" DS "/operations/2\"}]}");
    CHECK_EQ_INT(hc_operations_list(f.c, DS, rec_cb, &r, &e), CERR_OK);
    CHECK_EQ_INT(r.n, 2);
    CHECK_EQ_STR(r.names[0], DS "/operations/1");
    CHECK_EQ_STR(r.json[0], "{\"name\":\"" DS "/operations/1\",\"done\":true}");
    CHECK_EQ_STR(req(&f, 0)->url, "/v1/" DS "/operations?pageSize=1000");
    CHECK_EQ_STR(req(&f, 1)->url, "/v1/" DS "/operations?pageSize=1000&pageToken=n");

    push(&f, 200, "{}");
    CHECK_EQ_INT(hc_operation_cancel(f.c, OP, &e), CERR_OK);
    CHECK_REQ(&f, 2, "POST", "/v1/" OP ":cancel");
    CHECK_EQ_STR(req(&f, 2)->body, "{}");
    fx_stop(&f);
}

TEST(operation_wait_polls_until_done)
{
    fixture f = fx_start();
    hc_operation op;
    cerr_detail e;
    push(&f, 200, "{\"name\":\"" OP "\",\"done\":false}");
    push(&f, 200,
         "{\"name\":\"" OP "\",\"done\":true,\"metadata\":{\"counter\":{\"success\":\"4\"}}}");
    CHECK_EQ_INT(hc_operation_wait(f.c, OP, 30, &op, &e), CERR_OK);
    CHECK(op.done);
    CHECK_EQ_INT(op.success, 4);
    CHECK_EQ_INT(testsrv_count(f.srv), 2);
    hc_operation_clear(&op);

    /* Timeout: still running after the deadline. */
    testsrv_reply run = {.body = "{\"name\":\"" OP "\"}"};
    for (int i = 0; i < 8; i++)
        testsrv_push(f.srv, &run);
    CHECK_EQ_INT(hc_operation_wait(f.c, OP, 1, &op, &e), CERR_TIMEOUT);
    CHECK(!op.done);
    CHECK_EQ_STR(op.name, OP);
    hc_operation_clear(&op);
    fx_stop(&f);
}

/* ---- DICOMweb ------------------------------------------------------------------------ */

TEST(qido_paging_204_and_empty)
{
    fixture f = fx_start();
    rec r = {0};
    cerr_detail e;
    push(&f, 200,
         "[{\"0020000D\":{\"vr\":\"UI\",\"Value\":[\"1.1\"]}},"
         "{\"0020000D\":{\"vr\":\"UI\",\"Value\":[\"1.2\"]}}]");
    push(&f, 200,
         "[{\"0020000D\":{\"vr\":\"UI\",\"Value\":[\"1.3\"]}},"
         "{\"0020000D\":{\"vr\":\"UI\",\"Value\":[\"1.4\"]}}]");
    push(&f, 200, "[{\"0020000D\":{\"vr\":\"UI\",\"Value\":[\"1.5\"]}}]");
    CHECK_EQ_INT(hc_dicomweb_search(f.c, ST, "studies", "includefield=all&limit=2", rec_cb, &r, &e),
                 CERR_OK);
    CHECK_EQ_INT(r.n, 5);
    CHECK_EQ_STR(r.names[0], "1.1");
    CHECK_EQ_STR(r.names[4], "1.5");
    CHECK_EQ_STR(r.json[4], "{\"0020000D\":{\"vr\":\"UI\",\"Value\":[\"1.5\"]}}");
    CHECK_EQ_INT(testsrv_count(f.srv), 3);
    CHECK_EQ_STR(req(&f, 0)->url, "/v1/" ST "/dicomWeb/studies?includefield=all&limit=2&offset=0");
    CHECK_EQ_STR(req(&f, 1)->url, "/v1/" ST "/dicomWeb/studies?includefield=all&limit=2&offset=2");
    CHECK_EQ_STR(req(&f, 2)->url, "/v1/" ST "/dicomWeb/studies?includefield=all&limit=2&offset=4");
    CHECK_EQ_STR(testsrv_req_header(req(&f, 0), "Accept"), "application/dicom+json");

    /* Default page sizes; 204 means none. */
    testsrv_reply none = {.status = 204};
    testsrv_push(f.srv, &none);
    r.n = 0;
    CHECK_EQ_INT(hc_dicomweb_search(f.c, ST, "studies/1.1/series", NULL, rec_cb, &r, &e), CERR_OK);
    CHECK_EQ_INT(r.n, 0);
    CHECK_EQ_STR(req(&f, 3)->url, "/v1/" ST "/dicomWeb/studies/1.1/series?limit=5000&offset=0");

    push(&f, 200, "[]");
    CHECK_EQ_INT(hc_dicomweb_search(f.c, ST, "studies/1.1/series/2.1/instances",
                                    "includefield=0020000D", rec_cb, &r, &e),
                 CERR_OK);
    CHECK_EQ_INT(r.n, 0);
    CHECK_EQ_STR(req(&f, 4)->url, "/v1/" ST "/dicomWeb/studies/1.1/series/2.1/instances?"
                                  "includefield=0020000D&limit=1000&offset=0");

    /* Not an array: protocol error. */
    push(&f, 200, "{\"oops\":1}");
    CHECK_EQ_INT(hc_dicomweb_search(f.c, ST, "studies", NULL, rec_cb, &r, &e), CERR_MALFORMED);
    fx_stop(&f);
}

TEST(retrieve_instance_streams_to_fd)
{
    fixture f = fx_start();
    char body[3000];
    char got[3000];
    uint64_t written = 0;
    cerr_detail e;
    int fd = testlib_temp_fd(NULL, 0);
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (char)(i * 7 + 1);
    testsrv_reply r = {.status = 200,
                       .content_type = "application/dicom; transfer-syntax=*",
                       .body = body,
                       .body_len = sizeof body};
    testsrv_push(f.srv, &r);
    CHECK_EQ_INT(
        hc_dicomweb_retrieve_instance(f.c, ST, "1.2", "1.2.3", "1.2.3.4", fd, &written, &e),
        CERR_OK);
    CHECK_EQ_INT(written, sizeof body);
    CHECK_EQ_INT(pread(fd, got, sizeof got, 0), sizeof body);
    CHECK(memcmp(got, body, sizeof body) == 0);
    CHECK_REQ(&f, 0, "GET", "/v1/" ST "/dicomWeb/studies/1.2/series/1.2.3/instances/1.2.3.4");
    CHECK_EQ_STR(testsrv_req_header(req(&f, 0), "Accept"), "application/dicom; transfer-syntax=*");
    close(fd);
    fx_stop(&f);
}

TEST(store_instance_from_fd)
{
    fixture f = fx_start();
    char data[5000];
    cerr_detail e;
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (char)(i * 13);
    int fd = testlib_temp_fd(data, sizeof data);
    push(&f, 200, "{\"00081199\":{\"vr\":\"SQ\",\"Value\":[]}}");
    CHECK_EQ_INT(hc_dicomweb_store(f.c, ST, fd, sizeof data, &e), CERR_OK);
    CHECK_REQ(&f, 0, "POST", "/v1/" ST "/dicomWeb/studies");
    CHECK_EQ_STR(testsrv_req_header(req(&f, 0), "Content-Type"), "application/dicom");
    CHECK_EQ_INT(req(&f, 0)->body_len, sizeof data);
    CHECK(req(&f, 0)->body_len == sizeof data && memcmp(req(&f, 0)->body, data, sizeof data) == 0);

    push(&f, 409, "{\"00081198\":{\"vr\":\"SQ\"}}");
    CHECK_EQ_INT(hc_dicomweb_store(f.c, ST, fd, sizeof data, &e), CERR_EXISTS);
    CHECK_EQ_INT(e.http_status, 409);
    close(fd);
    fx_stop(&f);
}

TEST(dicomweb_delete_op_and_sync)
{
    fixture f = fx_start();
    char *op = NULL;
    cerr_detail e;
    push(&f, 200, "{\"name\":\"" DS "/operations/9\"}");
    CHECK_EQ_INT(hc_dicomweb_delete(f.c, ST, "studies/1.2", &op, &e), CERR_OK);
    CHECK_EQ_STR(op, DS "/operations/9");
    CHECK_REQ(&f, 0, "DELETE", "/v1/" ST "/dicomWeb/studies/1.2");
    free(op);

    push(&f, 200, "{}");
    op = (char *)"stale";
    CHECK_EQ_INT(hc_dicomweb_delete(f.c, ST, "studies/1.2/series/3/instances/4", &op, &e), CERR_OK);
    CHECK(op == NULL);
    fx_stop(&f);
}

TEST(instance_size_from_storage_info)
{
    fixture f = fx_start();
    cerr_detail e;
    uint64_t size = 0;
    push(&f, 200,
         "{\"referencedResource\":\"x\",\"structuredStorageInfo\":{\"sizeBytes\":\"12\"},"
         "\"blobStorageInfo\":{\"sizeBytes\":\"123456789012\",\"storageClass\":\"STANDARD\"}}");
    CHECK_EQ_INT(hc_dicomweb_instance_size(f.c, ST, "1.2", "1.2.3", "1.2.3.4", &size, &e), CERR_OK);
    CHECK(size == 123456789012ull);
    CHECK_REQ(&f, 0, "GET",
              "/v1/" ST "/dicomWeb/studies/1.2/series/1.2.3/instances/1.2.3.4:getStorageInfo");
    push(&f, 200, "{\"blobStorageInfo\":{}}");
    CHECK_EQ_INT(hc_dicomweb_instance_size(f.c, ST, "1.2", "1.2.3", "1.2.3.4", &size, &e),
                 CERR_MALFORMED);
    push(&f, 404, "{\"error\":{\"code\":404,\"message\":\"no\",\"status\":\"NOT_FOUND\"}}");
    CHECK_EQ_INT(hc_dicomweb_instance_size(f.c, ST, "1.2", "1.2.3", "1.2.3.4", &size, &e),
                 CERR_NOT_FOUND);
    CHECK_EQ_INT((int)e.http_status, 404);
    fx_stop(&f);
}

TEST(resource_names)
{
    CHECK(hc_name_is_location("projects/p/locations/us-central1"));
    CHECK(!hc_name_is_location("projects/p/locations/"));
    CHECK(!hc_name_is_location("projects/p/locations/l/datasets/d"));
    CHECK(!hc_name_is_location("project/p/locations/l"));
    CHECK(!hc_name_is_location(NULL));
    CHECK(hc_name_is_dataset(DS));
    CHECK(!hc_name_is_dataset(ST));
    CHECK(!hc_name_is_dataset("projects/p/locations/l"));
    CHECK(!hc_name_is_dataset(DS "/"));
    CHECK_EQ_STR(hc_name_leaf(ST), "s");
    CHECK_EQ_STR(hc_name_leaf(OP), "123");
    CHECK_EQ_STR(hc_name_leaf("leaf"), "leaf");
}

int main(void)
{
    RUN(endpoint_normalization);
    RUN(endpoint_with_v1_builds_single_version);
    RUN(datasets_list_three_pages);
    RUN(dataset_create_get_delete);
    RUN(stores_list_get_create_delete);
    RUN(import_body_and_op);
    RUN(export_v1_and_v1beta1_filter);
    RUN(operation_get_is_byte_exact);
    RUN(operation_parse_samples);
    RUN(operations_list_and_cancel);
    RUN(operation_wait_polls_until_done);
    RUN(qido_paging_204_and_empty);
    RUN(retrieve_instance_streams_to_fd);
    RUN(instance_size_from_storage_info);
    RUN(store_instance_from_fd);
    RUN(dicomweb_delete_op_and_sync);
    RUN(resource_names);
    RUN(operation_get_refetches_garbled_bodies);
    RUN(list_with_trailing_garbage_is_an_error);
    return test_done();
}
