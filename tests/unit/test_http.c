/* Unit tests for client/http.c, against tests/unit/testsrv. */
#include "testlib.h"
#include "testsrv.h"

#include <curl/curl.h>

#include <stdlib.h>
#include <string.h>

/* --- testsrv self-test, with raw libcurl so it does not depend on http.c. */

typedef struct {
    char buf[4096];
    size_t len;
} sink;

static size_t sink_write(char *p, size_t size, size_t n, void *ud)
{
    sink *s = ud;
    size_t k = size * n;
    if (s->len + k < sizeof s->buf) {
        memcpy(s->buf + s->len, p, k);
        s->len += k;
        s->buf[s->len] = '\0';
    }
    return k;
}

/* Performs one raw curl request; returns the CURLcode, status in *status. */
static int raw_request(const char *url, const char *post, long *status, sink *out)
{
    CURL *h = curl_easy_init();
    struct curl_slist *hl = curl_slist_append(NULL, "X-Test: Hello");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    if (post) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, post);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(post));
    }
    int rc = curl_easy_perform(h);
    *status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all(hl);
    curl_easy_cleanup(h);
    return rc;
}

static void echo_handler(void *ctx, const testsrv_req *req, testsrv_reply *out)
{
    (void)ctx;
    out->status = 201;
    out->body = req->body;
    out->body_len = req->body_len;
    out->headers[0] = "X-Echo: yes";
}

TEST(testsrv_selftest)
{
    testsrv *srv = testsrv_start();
    CHECK(srv != NULL);
    if (!srv)
        return;
    char url[256];
    snprintf(url, sizeof url, "%s/a%%2Fb?x=1&y=%%20", testsrv_url(srv));
    testsrv_reply r = {.status = 503, .body = "busy", .content_type = "text/plain"};
    testsrv_push(srv, &r);
    testsrv_reply r2 = {.status = 200, .body = "{\"ok\":true}"};
    testsrv_push(srv, &r2);
    long status;
    sink s = {0};
    CHECK_EQ_INT(raw_request(url, NULL, &status, &s), CURLE_OK);
    CHECK_EQ_INT(status, 503);
    CHECK_EQ_STR(s.buf, "busy");
    s.len = 0;
    CHECK_EQ_INT(raw_request(url, "payload", &status, &s), CURLE_OK);
    CHECK_EQ_INT(status, 200);
    CHECK_EQ_STR(s.buf, "{\"ok\":true}");
    /* Queue empty: the default 404 with a Google error body. */
    s.len = 0;
    CHECK_EQ_INT(raw_request(url, NULL, &status, &s), CURLE_OK);
    CHECK_EQ_INT(status, 404);
    CHECK(strstr(s.buf, "\"NOT_FOUND\"") != NULL);
    /* Handler used when the queue is empty. */
    testsrv_set_handler(srv, echo_handler, NULL);
    s.len = 0;
    CHECK_EQ_INT(raw_request(url, "echo me", &status, &s), CURLE_OK);
    CHECK_EQ_INT(status, 201);
    CHECK_EQ_STR(s.buf, "echo me");
    /* Reset: no answer at all. */
    testsrv_reply r3 = {.reset = true};
    testsrv_push(srv, &r3);
    s.len = 0;
    CHECK(raw_request(url, NULL, &status, &s) != CURLE_OK);

    CHECK_EQ_INT(testsrv_count(srv), 5);
    const testsrv_req *q = testsrv_get(srv, 1);
    CHECK(q != NULL);
    if (q) {
        CHECK_EQ_STR(q->method, "POST");
        CHECK_EQ_STR(q->url, "/a%2Fb?x=1&y=%20");
        CHECK_EQ_STR(q->body, "payload");
        CHECK_EQ_INT(q->body_len, 7);
        CHECK_EQ_STR(testsrv_req_header(q, "x-test"), "Hello");
        CHECK(strstr(q->headers, "X-Test: Hello\n") != NULL);
        CHECK(testsrv_req_header(q, "X-Absent") == NULL);
    }
    CHECK(testsrv_get(srv, 5) == NULL);
    testsrv_stop(srv);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    RUN(testsrv_selftest);
    curl_global_cleanup();
    return test_done();
}
