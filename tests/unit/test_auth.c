/* Unit tests for client/auth.c: JWT signing checked with OpenSSL, every
 * grant against tests/unit/testsrv, ADC discovery order, the token cache
 * under concurrency, and the absence of secrets in logs.
 *
 * Keys are generated at run time; nothing secret is committed. The tests
 * change environment variables, so they run one after the other in main().
 */
#include "testlib.h"
#include "testsrv.h"

#include "auth.h"
#include "http.h"
#include "log.h"
#include "util.h"

#include <cJSON.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static EVP_PKEY *g_key;  /* the service account's key pair */
static char *g_pem;      /* its private key, PKCS#8 PEM like Google's key files */
static char g_tmp[64];   /* per-run temporary directory */
static char g_empty[96]; /* an empty directory used as CLOUDSDK_CONFIG */
static testsrv *g_srv;

/* ---- helpers ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static char *path_in(const char *dir, const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", dir, name) < 0)
        return NULL;
    return p;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        perror(path);
        return;
    }
    size_t len = strlen(text);
    if (write(fd, text, len) != (ssize_t)len)
        perror("write");
    fchmod(fd, mode);
    close(fd);
}

/* Writes a service-account key file; returns its malloc'ed path. */
static char *write_sa(const char *name, const char *email, const char *token_uri, mode_t mode)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "service_account");
    cJSON_AddStringToObject(o, "project_id", "proj-1");
    cJSON_AddStringToObject(o, "private_key_id", "kid-0123456789");
    cJSON_AddStringToObject(o, "private_key", g_pem);
    cJSON_AddStringToObject(o, "client_email", email);
    cJSON_AddStringToObject(o, "client_id", "1234567890");
    if (token_uri)
        cJSON_AddStringToObject(o, "token_uri", token_uri);
    char *text = cJSON_Print(o);
    char *path = path_in(g_tmp, name);
    write_file(path, text, mode);
    cJSON_free(text);
    cJSON_Delete(o);
    return path;
}

static char *write_user(const char *dir, const char *name, const char *token_uri)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "authorized_user");
    cJSON_AddStringToObject(o, "client_id", "cid-42.apps.example");
    cJSON_AddStringToObject(o, "client_secret", "s3cr/et+XYZsecretvalue");
    cJSON_AddStringToObject(o, "refresh_token", "1//rt-abcdefghijklmnop");
    cJSON_AddStringToObject(o, "quota_project_id", "quota-proj-7");
    if (token_uri)
        cJSON_AddStringToObject(o, "token_uri", token_uri);
    char *text = cJSON_Print(o);
    char *path = path_in(dir, name);
    write_file(path, text, 0600);
    cJSON_free(text);
    cJSON_Delete(o);
    return path;
}

static char *token_url(void)
{
    return path_in(testsrv_url(g_srv), "token");
}

static void push_token(const char *token, int expires_in, int delay_ms)
{
    char body[256];
    snprintf(body, sizeof body,
             "{\"access_token\":\"%s\",\"expires_in\":%d,\"token_type\":\"Bearer\"}", token,
             expires_in);
    testsrv_reply r = {.body = body, .delay_ms = delay_ms};
    testsrv_push(g_srv, &r);
}

static void push_metadata_token(const char *token, int expires_in, bool flavor)
{
    char body[256];
    snprintf(body, sizeof body,
             "{\"access_token\":\"%s\",\"expires_in\":%d,\"token_type\":\"Bearer\"}", token,
             expires_in);
    testsrv_reply r = {.body = body};
    if (flavor)
        r.headers[0] = "Metadata-Flavor: Google";
    testsrv_push(g_srv, &r);
}

static http_client *new_http(void)
{
    http_options o;
    http_options_init(&o);
    o.connect_timeout_s = 5;
    o.retry.max_attempts = 2;
    o.retry.base_ms = 10;
    o.retry.max_backoff_ms = 50;
    o.retry.total_ms = 500;
    return http_client_new(&o);
}

/* Environment baseline: no credentials anywhere, HOME with nothing in it. */
static void env_reset(void)
{
    unsetenv("GOOGLE_APPLICATION_CREDENTIALS");
    unsetenv("GCE_METADATA_HOST");
    setenv("CLOUDSDK_CONFIG", g_empty, 1);
    setenv("HOME", g_empty, 1);
}

static unsigned char *b64url_decode(const char *s, size_t n, size_t *outlen)
{
    unsigned char *out = malloc(n + 1);
    unsigned v = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const char *tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        const char *p = strchr(tab, s[i]);
        if (!p || !s[i]) {
            free(out);
            return NULL;
        }
        v = v << 6 | (unsigned)(p - tab);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(v >> bits);
        }
    }
    out[o] = 0;
    *outlen = o;
    return out;
}

static cJSON *jwt_part(const char *jwt, int idx)
{
    const char *start = jwt;
    for (int i = 0; i < idx; i++)
        start = strchr(start, '.') + 1;
    size_t n = strcspn(start, ".");
    size_t len;
    unsigned char *raw = b64url_decode(start, n, &len);
    cJSON *j = raw ? cJSON_ParseWithLength((const char *)raw, len) : NULL;
    free(raw);
    return j;
}

/* Checks the RS256 signature of a JWT against g_key's public half. */
static bool jwt_verifies(const char *jwt)
{
    const char *dot = strrchr(jwt, '.');
    if (!dot)
        return false;
    size_t siglen;
    unsigned char *sig = b64url_decode(dot + 1, strlen(dot + 1), &siglen);
    if (!sig)
        return false;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok =
        EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, g_key) == 1 &&
        EVP_DigestVerify(md, sig, siglen, (const unsigned char *)jwt, (size_t)(dot - jwt)) == 1;
    EVP_MD_CTX_free(md);
    free(sig);
    return ok;
}

static const char *json_s(const cJSON *o, const char *name)
{
    const cJSON *i = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(i) ? i->valuestring : NULL;
}

static double json_n(const cJSON *o, const char *name)
{
    const cJSON *i = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(i) ? i->valuedouble : -1;
}

/* The value of form field `name` in a recorded body (malloc'ed, still escaped). */
static char *form_field(const char *body, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = body; p && *p;) {
        if (strncmp(p, name, nl) == 0 && p[nl] == '=')
            return strndup(p + nl + 1, strcspn(p + nl + 1, "&"));
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return NULL;
}

/* stderr capture, for log assertions. */
static int cap_fd = -1, cap_saved = -1;

static void capture_begin(void)
{
    char tmpl[96];
    snprintf(tmpl, sizeof tmpl, "%s/log.XXXXXX", g_tmp);
    fflush(stderr);
    cap_fd = mkstemp(tmpl);
    unlink(tmpl);
    cap_saved = dup(2);
    dup2(cap_fd, 2);
}

static char *capture_end(void)
{
    fflush(stderr);
    dup2(cap_saved, 2);
    close(cap_saved);
    off_t len = lseek(cap_fd, 0, SEEK_END);
    char *buf = calloc(1, (size_t)len + 1);
    if (pread(cap_fd, buf, (size_t)len, 0) < 0)
        buf[0] = '\0';
    close(cap_fd);
    return buf;
}

static int closed_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    bind(s, (struct sockaddr *)&a, sizeof a);
    getsockname(s, (struct sockaddr *)&a, &al);
    close(s);
    return ntohs(a.sin_port);
}

static void set_metadata_host(void)
{
    char hp[64];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", testsrv_port(g_srv));
    setenv("GCE_METADATA_HOST", hp, 1);
}

/* ---- tests ---- */

/* A provider for a fresh service-account key file (mode 0600) whose token_uri
 * is the test server. Returns auth_provider_new's result; the test checks it. */
typedef struct safx {
    char *tu, *path;
    http_client *http;
    auth_provider *p;
} safx;

static int safx_start(safx *t, const char *file, const char *email, char **where, cerr_detail *err)
{
    env_reset();
    t->tu = token_url();
    t->path = write_sa(file, email, t->tu, 0600);
    t->http = new_http();
    t->p = NULL;
    return auth_provider_new(t->path, t->http, &t->p, where, err);
}

static void safx_end(safx *t)
{
    auth_provider_free(t->p);
    http_client_free(t->http);
    free(t->path);
    free(t->tu);
}

TEST(base64url_vectors)
{
    static const unsigned char bin[] = {0xfb, 0xff, 0xbf};
    const struct {
        const char *in;
        size_t len;
        const char *out;
    } v[] = {{"", 0, ""},
             {"f", 1, "Zg"},
             {"fo", 2, "Zm8"},
             {"foo", 3, "Zm9v"},
             {"foob", 4, "Zm9vYg"},
             {"fooba", 5, "Zm9vYmE"},
             {"foobar", 6, "Zm9vYmFy"},
             {(const char *)bin, 3, "-_-_"},
             {(const char *)bin, 2, "-_8"}};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        char *s = util_b64_encode(v[i].in, v[i].len, true);
        CHECK_EQ_STR(s, v[i].out);
        free(s);
    }
}

TEST(jwt_assertion_claims_and_signature)
{
    char *jwt = auth_jwt_assertion("sa@proj-1.iam.gserviceaccount.com", g_pem, "kid-0123456789",
                                   AUTH_SCOPE_CLOUD_PLATFORM, "https://oauth2.example/token",
                                   1700000000, 3600);
    CHECK(jwt != NULL);
    if (!jwt)
        return;
    int dots = 0;
    for (const char *p = jwt; *p; p++) {
        dots += *p == '.';
        CHECK(*p != '=' && *p != '+' && *p != '/');
    }
    CHECK_EQ_INT(dots, 2);
    cJSON *h = jwt_part(jwt, 0), *c = jwt_part(jwt, 1);
    CHECK(h && c);
    CHECK_EQ_STR(json_s(h, "alg"), "RS256");
    CHECK_EQ_STR(json_s(h, "typ"), "JWT");
    CHECK_EQ_STR(json_s(h, "kid"), "kid-0123456789");
    CHECK_EQ_STR(json_s(c, "iss"), "sa@proj-1.iam.gserviceaccount.com");
    CHECK_EQ_STR(json_s(c, "aud"), "https://oauth2.example/token");
    CHECK_EQ_STR(json_s(c, "scope"), AUTH_SCOPE_CLOUD_PLATFORM);
    CHECK_EQ_INT((long long)json_n(c, "iat"), 1700000000);
    CHECK_EQ_INT((long long)(json_n(c, "exp") - json_n(c, "iat")), 3600);
    CHECK(jwt_verifies(jwt));

    /* Tampering with the claims (iss changed, same signature) must not verify. */
    cJSON_ReplaceItemInObject(c, "iss", cJSON_CreateString("evil@example.com"));
    char *cj = cJSON_PrintUnformatted(c);
    char *c64 = util_b64_encode(cj, strlen(cj), true);
    const char *d1 = strchr(jwt, '.'), *d2 = strrchr(jwt, '.');
    char *forged = NULL;
    CHECK(asprintf(&forged, "%.*s.%s%s", (int)(d1 - jwt), jwt, c64, d2) > 0);
    CHECK(!jwt_verifies(forged));
    /* A flipped signature byte must not verify either. */
    char *flip = strdup(jwt);
    char *last = flip + strlen(flip) - 3;
    *last = *last == 'A' ? 'B' : 'A';
    CHECK(!jwt_verifies(flip));
    free(flip);
    free(forged);
    free(c64);
    cJSON_free(cj);
    cJSON_Delete(h);
    cJSON_Delete(c);
    free(jwt);
}

TEST(jwt_assertion_bad_key)
{
    CHECK(auth_jwt_assertion("a@b", "not a key", NULL, AUTH_SCOPE_CLOUD_PLATFORM, "x", 1, 3600) ==
          NULL);
    CHECK(auth_jwt_assertion("a@b", NULL, NULL, AUTH_SCOPE_CLOUD_PLATFORM, "x", 1, 3600) == NULL);
    /* An EC key is not RS256-capable. */
    EVP_PKEY *ec = EVP_EC_gen("P-256");
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(b, ec, NULL, NULL, 0, NULL, NULL);
    char *pem = NULL;
    long n = BIO_get_mem_data(b, &pem);
    char *copy = strndup(pem, (size_t)n);
    CHECK(auth_jwt_assertion("a@b", copy, NULL, AUTH_SCOPE_CLOUD_PLATFORM, "x", 1, 3600) == NULL);
    free(copy);
    BIO_free(b);
    EVP_PKEY_free(ec);
}

TEST(service_account_flow)
{
    char *where = NULL;
    cerr_detail err;
    int base = testsrv_count(g_srv);
    safx t;
    CHECK_EQ_INT(safx_start(&t, "sa.json", "sa@proj-1.iam.gserviceaccount.com", &where, &err),
                 CERR_OK);
    auth_provider *p = t.p;
    CHECK(p != NULL);
    if (!p)
        goto out;
    char want[512];
    snprintf(want, sizeof want, "service account sa@proj-1.iam.gserviceaccount.com from %s",
             t.path);
    CHECK_EQ_STR(where, want);
    CHECK_EQ_INT(auth_provider_kind(p), AUTH_KIND_SERVICE_ACCOUNT);
    CHECK_EQ_INT(testsrv_count(g_srv), base); /* nothing fetched before it is needed */

    push_token("ya29.first-token", 3600, 0);
    char tok[2048];
    CHECK_EQ_INT(auth_get_token(p, tok, sizeof tok, false, &err), CERR_OK);
    CHECK_EQ_STR(tok, "ya29.first-token");
    CHECK_EQ_INT(testsrv_count(g_srv), base + 1);
    const testsrv_req *rq = testsrv_get(g_srv, base);
    CHECK(rq != NULL);
    if (rq) {
        CHECK_EQ_STR(rq->method, "POST");
        CHECK_EQ_STR(rq->url, "/token");
        const char *ct = testsrv_req_header(rq, "Content-Type");
        CHECK(ct && strncmp(ct, "application/x-www-form-urlencoded", 33) == 0);
        CHECK(testsrv_req_header(rq, "Authorization") == NULL);
        char *gt = form_field(rq->body, "grant_type");
        CHECK_EQ_STR(gt, "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer");
        char *as = form_field(rq->body, "assertion");
        CHECK(as && jwt_verifies(as));
        cJSON *c = as ? jwt_part(as, 1) : NULL;
        CHECK_EQ_STR(json_s(c, "iss"), "sa@proj-1.iam.gserviceaccount.com");
        CHECK_EQ_STR(json_s(c, "aud"), t.tu);
        CHECK_EQ_STR(json_s(c, "scope"), AUTH_SCOPE_CLOUD_PLATFORM);
        CHECK(fabs(json_n(c, "iat") - (double)time(NULL)) < 60);
        CHECK_EQ_INT((long long)(json_n(c, "exp") - json_n(c, "iat")), 3600);
        cJSON_Delete(c);
        free(gt);
        free(as);
    }

    /* Cached: no second request. */
    push_token("ya29.second-token", 3600, 0);
    CHECK_EQ_INT(auth_get_token(p, tok, sizeof tok, false, &err), CERR_OK);
    CHECK_EQ_STR(tok, "ya29.first-token");
    CHECK_EQ_INT(testsrv_count(g_srv), base + 1);

    /* A forced refresh (after the 1 s window) fetches exactly once ... */
    sleep_s(1.1);
    CHECK_EQ_INT(auth_get_token(p, tok, sizeof tok, true, &err), CERR_OK);
    CHECK_EQ_STR(tok, "ya29.second-token");
    CHECK_EQ_INT(testsrv_count(g_srv), base + 2);
    /* ... and a second force right after it is answered from the new token. */
    push_token("ya29.third-token", 3600, 0);
    CHECK_EQ_INT(auth_get_token(p, tok, sizeof tok, true, &err), CERR_OK);
    CHECK_EQ_STR(tok, "ya29.second-token");
    CHECK_EQ_INT(testsrv_count(g_srv), base + 2);
    /* Drain the unused canned reply so later tests start clean. */
    sleep_s(1.1);
    CHECK_EQ_INT(auth_get_token(p, tok, sizeof tok, true, &err), CERR_OK);
    CHECK_EQ_STR(tok, "ya29.third-token");
out:
    free(where);
    safx_end(&t);
}

TEST(refresh_near_expiry)
{
    cerr_detail err;
    safx t;
    CHECK_EQ_INT(safx_start(&t, "sa-exp.json", "exp@proj-1.iam.gserviceaccount.com", NULL, &err),
                 CERR_OK);
    auth_provider *p = t.p;
    int base = testsrv_count(g_srv);
    /* 2 s lifetime: refreshed once less than 0.5 s (lifetime/4) remain. */
    push_token("ya29.short-1", 2, 0);
    push_token("ya29.short-2", 3600, 0);
    char tok[256];
    CHECK_EQ_INT(auth_get_token(p, tok, sizeof tok, false, &err), CERR_OK);
    CHECK_EQ_STR(tok, "ya29.short-1");
    sleep_s(0.5);
    CHECK_EQ_INT(auth_get_token(p, tok, sizeof tok, false, &err), CERR_OK);
    CHECK_EQ_STR(tok, "ya29.short-1");
    CHECK_EQ_INT(testsrv_count(g_srv), base + 1);
    sleep_s(1.2);
    CHECK_EQ_INT(auth_get_token(p, tok, sizeof tok, false, &err), CERR_OK);
    CHECK_EQ_STR(tok, "ya29.short-2");
    CHECK_EQ_INT(testsrv_count(g_srv), base + 2);
    safx_end(&t);
}

typedef struct {
    auth_provider *p;
    pthread_barrier_t *bar;
    bool force;
    int rc;
    char tok[256];
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    cerr_detail err;
    pthread_barrier_wait(w->bar);
    w->rc = auth_get_token(w->p, w->tok, sizeof w->tok, w->force, &err);
    return NULL;
}

/* Runs n threads calling auth_get_token at the same moment. */
static void run_workers(auth_provider *p, int n, bool force, worker *w)
{
    pthread_t th[16];
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)n);
    for (int i = 0; i < n; i++) {
        w[i] = (worker){.p = p, .bar = &bar, .force = force};
        pthread_create(&th[i], NULL, worker_main, &w[i]);
    }
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&bar);
}

TEST(concurrent_single_refresh)
{
    cerr_detail err;
    safx t;
    CHECK_EQ_INT(safx_start(&t, "sa-conc.json", "conc@proj-1.iam.gserviceaccount.com", NULL, &err),
                 CERR_OK);
    auth_provider *p = t.p;
    int base = testsrv_count(g_srv);
    /* A slow endpoint, so every thread arrives while the fetch is under way. */
    push_token("ya29.shared", 3600, 300);
    push_token("ya29.extra-a", 3600, 0);
    push_token("ya29.extra-b", 3600, 0);
    worker w[10];
    run_workers(p, 8, false, w);
    CHECK_EQ_INT(testsrv_count(g_srv), base + 1);
    for (int i = 0; i < 8; i++) {
        CHECK_EQ_INT(w[i].rc, CERR_OK);
        CHECK_EQ_STR(w[i].tok, "ya29.shared");
    }
    /* 10 threads whose requests all got 401: one refresh between them. */
    sleep_s(1.1);
    run_workers(p, 10, true, w);
    CHECK_EQ_INT(testsrv_count(g_srv), base + 2);
    for (int i = 0; i < 10; i++) {
        CHECK_EQ_INT(w[i].rc, CERR_OK);
        CHECK_EQ_STR(w[i].tok, "ya29.extra-a");
    }
    /* Consume the spare reply. */
    sleep_s(1.1);
    char tok[256];
    CHECK_EQ_INT(auth_get_token(p, tok, sizeof tok, true, &err), CERR_OK);
    safx_end(&t);
}

/* Answers 400 invalid_grant, quoting the request body (as some servers do). */
static void echo_invalid_grant(void *ctx, const testsrv_req *req, testsrv_reply *out)
{
    static char body[8192];
    (void)ctx;
    snprintf(body, sizeof body,
             "{\"error\":\"invalid_grant\",\"error_description\":\"bad request: %.7000s\"}",
             req->body);
    out->status = 400;
    out->body = body;
}

TEST(token_endpoint_rejects)
{
    cerr_detail err;
    safx t;
    CHECK_EQ_INT(safx_start(&t, "sa-rej.json", "rej@proj-1.iam.gserviceaccount.com", NULL, &err),
                 CERR_OK);
    auth_provider *p = t.p;
    int base = testsrv_count(g_srv);
    testsrv_reply r = {.status = 400,
                       .body = "{\"error\":\"invalid_grant\",\"error_description\":\"Invalid JWT "
                               "Signature.\"}"};
    testsrv_push(g_srv, &r);
    char tok[256];
    memset(&err, 0, sizeof err);
    CHECK_EQ_INT(auth_get_token(p, tok, sizeof tok, false, &err), CERR_AUTH);
    CHECK_EQ_INT(err.http_status, 400);
    CHECK(strstr(err.message, "Invalid JWT Signature") || strstr(err.message, "invalid_grant"));
    CHECK_EQ_INT(testsrv_count(g_srv), base + 1); /* 400 is not retried */
    CHECK_EQ_INT(err.cls, CERR_AUTH);             /* a person must fix them */

    /* A server that echoes the assertion: the message must not carry it. */
    testsrv_set_handler(g_srv, echo_invalid_grant, NULL);
    memset(&err, 0, sizeof err);
    CHECK_EQ_INT(auth_get_token(p, tok, sizeof tok, false, &err), CERR_AUTH);
    testsrv_set_handler(g_srv, NULL, NULL);
    const testsrv_req *rq = testsrv_get(g_srv, base + 1);
    char *as = rq ? form_field(rq->body, "assertion") : NULL;
    CHECK(as != NULL);
    if (as) {
        const char *sig = strrchr(as, '.') + 1;
        const char *claims = strchr(as, '.') + 1;
        char probe[17];
        snprintf(probe, sizeof probe, "%s", sig);
        CHECK(strstr(err.message, probe) == NULL);
        snprintf(probe, sizeof probe, "%s", claims);
        CHECK(strstr(err.message, probe) == NULL);
    }
    free(as);
    safx_end(&t);
}

/* The credentials file is read again when it changes (a new login
 * replaced it): the next refresh uses the new credentials. */
TEST(credentials_file_read_again_when_changed)
{
    env_reset();
    char *tu = token_url();
    char *path = write_user(g_tmp, "relogin.json", tu);
    http_client *http = new_http();
    auth_provider *p = NULL;
    cerr_detail err;
    CHECK_EQ_INT(auth_provider_new(path, http, &p, NULL, &err), CERR_OK);
    if (!p)
        goto out;
    push_token("ya29.first", 3599, 0);
    char tok[256];
    CHECK_EQ_INT(auth_get_token(p, tok, sizeof tok, false, &err), CERR_OK);
    CHECK_EQ_STR(tok, "ya29.first");
    /* Replaced by a service account key (a new inode, as editors and gcloud do). */
    char *sa = write_sa("relogin-sa.json", "new@proj-1.iam.gserviceaccount.com", tu, 0600);
    CHECK(rename(sa, path) == 0);
    int base = testsrv_count(g_srv);
    push_token("ya29.second", 3599, 0);
    sleep(2); /* past the force-refresh window */
    CHECK_EQ_INT(auth_get_token(p, tok, sizeof tok, true, &err), CERR_OK);
    CHECK_EQ_STR(tok, "ya29.second");
    CHECK_EQ_INT(auth_provider_kind(p), AUTH_KIND_SERVICE_ACCOUNT);
    const testsrv_req *rq = testsrv_get(g_srv, base);
    CHECK(rq && strstr(rq->body, "jwt-bearer") != NULL);
    free(sa);
out:
    auth_provider_free(p);
    http_client_free(http);
    free(path);
    free(tu);
}

TEST(authorized_user_flow)
{
    env_reset();
    char *tu = token_url();
    char *path = write_user(g_tmp, "user.json", tu);
    http_client *http = new_http();
    auth_provider *p = NULL;
    char *where = NULL;
    cerr_detail err;
    CHECK_EQ_INT(auth_provider_new(path, http, &p, &where, &err), CERR_OK);
    if (!p)
        goto out;
    char want[512];
    snprintf(want, sizeof want, "authorized user from %s", path);
    CHECK_EQ_STR(where, want);
    CHECK_EQ_INT(auth_provider_kind(p), AUTH_KIND_AUTHORIZED_USER);
    CHECK_EQ_STR(auth_provider_quota_project(p), "quota-proj-7");
    int base = testsrv_count(g_srv);
    push_token("ya29.user-token", 3599, 0);
    char tok[256];
    CHECK_EQ_INT(auth_get_token(p, tok, sizeof tok, false, &err), CERR_OK);
    CHECK_EQ_STR(tok, "ya29.user-token");
    CHECK_EQ_INT(testsrv_count(g_srv), base + 1);
    const testsrv_req *rq = testsrv_get(g_srv, base);
    if (rq) {
        CHECK_EQ_STR(rq->method, "POST");
        CHECK_EQ_STR(rq->url, "/token");
        const char *ct = testsrv_req_header(rq, "Content-Type");
        CHECK(ct && strncmp(ct, "application/x-www-form-urlencoded", 33) == 0);
        CHECK_EQ_STR(rq->body, "grant_type=refresh_token&refresh_token=1%2F%2Frt-abcdefghijklmnop"
                               "&client_id=cid-42.apps.example"
                               "&client_secret=s3cr%2Fet%2BXYZsecretvalue");
    }
out:
    auth_provider_free(p);
    http_client_free(http);
    free(where);
    free(path);
    free(tu);
}

TEST(metadata_flow)
{
    env_reset();
    set_metadata_host();
    http_client *http = new_http();
    auth_provider *p = NULL;
    char *where = NULL;
    cerr_detail err;
    int base = testsrv_count(g_srv);
    push_metadata_token("ya29.meta-1", 3600, true);
    CHECK_EQ_INT(auth_provider_new(NULL, http, &p, &where, &err), CERR_OK);
    if (!p)
        goto out;
    char want[128];
    snprintf(want, sizeof want, "metadata server at %s", testsrv_url(g_srv));
    CHECK_EQ_STR(where, want);
    CHECK_EQ_INT(auth_provider_kind(p), AUTH_KIND_METADATA);
    CHECK(auth_provider_quota_project(p) == NULL);
    CHECK_EQ_INT(testsrv_count(g_srv), base + 1);
    const testsrv_req *rq = testsrv_get(g_srv, base);
    if (rq) {
        CHECK_EQ_STR(rq->method, "GET");
        CHECK_EQ_STR(rq->url, "/computeMetadata/v1/instance/service-accounts/default/token");
        CHECK_EQ_STR(testsrv_req_header(rq, "Metadata-Flavor"), "Google");
    }
    /* The probe's token is reused. */
    char tok[256];
    CHECK_EQ_INT(auth_get_token(p, tok, sizeof tok, false, &err), CERR_OK);
    CHECK_EQ_STR(tok, "ya29.meta-1");
    CHECK_EQ_INT(testsrv_count(g_srv), base + 1);

    /* A refresh answered without Metadata-Flavor is refused. */
    sleep_s(1.1);
    push_metadata_token("ya29.impostor", 3600, false);
    CHECK_EQ_INT(auth_get_token(p, tok, sizeof tok, true, &err), CERR_AUTH);
    CHECK(strstr(err.message, "Metadata-Flavor") != NULL);
    CHECK_EQ_INT(testsrv_count(g_srv), base + 2);
    rq = testsrv_get(g_srv, base + 1);
    CHECK(rq && testsrv_req_header(rq, "Metadata-Flavor") &&
          strcmp(testsrv_req_header(rq, "Metadata-Flavor"), "Google") == 0);
    /* A genuine answer afterwards works again. */
    push_metadata_token("ya29.meta-2", 3600, true);
    CHECK_EQ_INT(auth_get_token(p, tok, sizeof tok, true, &err), CERR_OK);
    CHECK_EQ_STR(tok, "ya29.meta-2");
out:
    auth_provider_free(p);
    free(where);

    /* A server that is not a metadata server is not a credentials source. */
    p = NULL;
    push_metadata_token("ya29.impostor", 3600, false);
    CHECK_EQ_INT(auth_provider_new(NULL, http, &p, NULL, &err), CERR_NOT_FOUND);
    CHECK(p == NULL);
    http_client_free(http);
    env_reset();
}

static void check_where(const char *file, const char *want_sub)
{
    http_client *http = new_http();
    auth_provider *p = NULL;
    char *where = NULL;
    cerr_detail err;
    int rc = auth_provider_new(file, http, &p, &where, &err);
    CHECK_EQ_INT(rc, CERR_OK);
    CHECK(where && strstr(where, want_sub));
    if (!where || !strstr(where, want_sub))
        printf("# where = %s, expected it to contain %s\n", where ? where : "(null)", want_sub);
    auth_provider_free(p);
    free(where);
    http_client_free(http);
}

TEST(adc_order)
{
    env_reset();
    char *explicit_path =
        write_sa("explicit.json", "explicit@p.iam.gserviceaccount.com", NULL, 0600);
    char *gac = write_sa("gac.json", "gac@p.iam.gserviceaccount.com", NULL, 0600);
    char *cfg = path_in(g_tmp, "gcloud");
    mkdir(cfg, 0700);
    char *adc = write_user(cfg, "application_default_credentials.json", NULL);
    char *home = path_in(g_tmp, "home");
    char *hcfg = path_in(home, ".config/gcloud");
    mkdir(home, 0700);
    char *hconf = path_in(home, ".config");
    mkdir(hconf, 0700);
    mkdir(hcfg, 0700);
    char *hadc = write_user(hcfg, "application_default_credentials.json", NULL);

    setenv("GOOGLE_APPLICATION_CREDENTIALS", gac, 1);
    setenv("CLOUDSDK_CONFIG", cfg, 1);
    set_metadata_host();
    int base = testsrv_count(g_srv);
    check_where(explicit_path, "explicit@p.iam.gserviceaccount.com");
    check_where(NULL, "gac@p.iam.gserviceaccount.com");
    unsetenv("GOOGLE_APPLICATION_CREDENTIALS");
    check_where(NULL, adc);
    CHECK_EQ_INT(testsrv_count(g_srv), base); /* metadata never consulted so far */
    /* Without CLOUDSDK_CONFIG the file under $HOME/.config/gcloud is used. */
    unsetenv("CLOUDSDK_CONFIG");
    setenv("HOME", home, 1);
    check_where(NULL, hadc);
    /* CLOUDSDK_CONFIG without the file: fall through to the metadata server. */
    setenv("CLOUDSDK_CONFIG", g_empty, 1);
    push_metadata_token("ya29.adc-meta", 3600, true);
    check_where(NULL, "metadata server at http://127.0.0.1:");
    CHECK_EQ_INT(testsrv_count(g_srv), base + 1);

    /* GOOGLE_APPLICATION_CREDENTIALS naming a missing or unreadable file is a
     * hard error even though other sources exist. */
    setenv("CLOUDSDK_CONFIG", cfg, 1);
    char *missing = path_in(g_tmp, "no-such-file.json");
    setenv("GOOGLE_APPLICATION_CREDENTIALS", missing, 1);
    http_client *http = new_http();
    auth_provider *p = NULL;
    cerr_detail err;
    CHECK_EQ_INT(auth_provider_new(NULL, http, &p, NULL, &err), CERR_INVALID);
    CHECK(strstr(err.message, missing) != NULL);
    setenv("GOOGLE_APPLICATION_CREDENTIALS", g_tmp, 1); /* a directory */
    CHECK_EQ_INT(auth_provider_new(NULL, http, &p, NULL, &err), CERR_INVALID);
    if (geteuid() != 0) {
        chmod(gac, 0);
        setenv("GOOGLE_APPLICATION_CREDENTIALS", gac, 1);
        CHECK_EQ_INT(auth_provider_new(NULL, http, &p, NULL, &err), CERR_INVALID);
        chmod(gac, 0600);
    }
    /* An explicit file that is missing is an error too, never a fall-through. */
    unsetenv("GOOGLE_APPLICATION_CREDENTIALS");
    CHECK_EQ_INT(auth_provider_new(missing, http, &p, NULL, &err), CERR_INVALID);
    CHECK(p == NULL);
    http_client_free(http);
    env_reset();
    free(missing);
    free(explicit_path);
    free(gac);
    free(cfg);
    free(adc);
    free(home);
    free(hcfg);
    free(hconf);
    free(hadc);
}

TEST(nothing_anywhere_is_notfound_quickly)
{
    env_reset();
    char hp[64];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", closed_port());
    setenv("GCE_METADATA_HOST", hp, 1);
    http_client *http = new_http();
    auth_provider *p = NULL;
    char *where = NULL;
    cerr_detail err;
    double t0 = now_s();
    CHECK_EQ_INT(auth_provider_new(NULL, http, &p, &where, &err), CERR_NOT_FOUND);
    CHECK(now_s() - t0 < 3.0);
    CHECK(p == NULL);
    CHECK(where == NULL);
    CHECK(strstr(err.message, "GOOGLE_APPLICATION_CREDENTIALS") != NULL);
    http_client_free(http);
    env_reset();
}

TEST(malformed_files)
{
    env_reset();
    const struct {
        const char *text;
        int want;
    } cases[] = {
        {"", CERR_INVALID},
        {"not json at all", CERR_INVALID},
        {"[1,2,3]", CERR_INVALID},
        {"{\"type\":\"service_account\",\"client_email\":\"a@b\"", CERR_INVALID},
        {"{\"client_email\":\"a@b\"}", CERR_INVALID},
        {"{\"type\":\"external_account\",\"audience\":\"x\"}", CERR_INVALID},
        {"{\"type\":\"service_account\",\"client_email\":\"a@b\"}", CERR_INVALID},
        {"{\"type\":\"service_account\",\"private_key\":\"x\"}", CERR_INVALID},
        {"{\"type\":\"service_account\",\"client_email\":\"a@b\",\"private_key\":7}", CERR_INVALID},
        {"{\"type\":\"authorized_user\",\"client_id\":\"c\",\"client_secret\":\"s\"}",
         CERR_INVALID},
        /* Well-formed JSON but an unusable key. */
        {"{\"type\":\"service_account\",\"client_email\":\"a@b\",\"private_key\":\"-----BEGIN "
         "PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----\\n\"}",
         CERR_UNSUPPORTED},
    };
    char *path = path_in(g_tmp, "bad.json");
    http_client *http = new_http();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_file(path, cases[i].text, 0600);
        auth_provider *p = NULL;
        cerr_detail err;
        int rc = auth_provider_new(path, http, &p, NULL, &err);
        if (rc != cases[i].want)
            printf("# case %zu: %s\n", i, cases[i].text);
        CHECK_EQ_INT(rc, cases[i].want);
        CHECK(p == NULL);
        CHECK(strstr(err.message, path) != NULL);
    }
    /* The same through GOOGLE_APPLICATION_CREDENTIALS: a hard error. */
    write_file(path, "{oops", 0600);
    setenv("GOOGLE_APPLICATION_CREDENTIALS", path, 1);
    auth_provider *p = NULL;
    cerr_detail err;
    CHECK_EQ_INT(auth_provider_new(NULL, http, &p, NULL, &err), CERR_INVALID);
    http_client_free(http);
    env_reset();
    free(path);
}

TEST(loose_permissions_warn)
{
    env_reset();
    char *loose = write_sa("loose.json", "loose@p.iam.gserviceaccount.com", NULL, 0644);
    char *tight = write_sa("tight.json", "tight@p.iam.gserviceaccount.com", NULL, 0600);
    http_client *http = new_http();
    auth_provider *p = NULL;
    cerr_detail err;
    capture_begin();
    int rc1 = auth_provider_new(loose, http, &p, NULL, &err);
    auth_provider_free(p);
    char *log1 = capture_end();
    capture_begin();
    int rc2 = auth_provider_new(tight, http, &p, NULL, &err);
    auth_provider_free(p);
    char *log2 = capture_end();
    CHECK_EQ_INT(rc1, CERR_OK);
    CHECK_EQ_INT(rc2, CERR_OK);
    char want[300];
    snprintf(want, sizeof want, "chmod 600 %s", loose);
    CHECK(strstr(log1, "warning") != NULL);
    CHECK(strstr(log1, want) != NULL);
    CHECK(strstr(log2, "chmod") == NULL);
    free(log1);
    free(log2);
    http_client_free(http);
    free(loose);
    free(tight);
}

/* True when any 64-column base64 line of the PEM private key is in text. */
static bool log_has_key_line(const char *text)
{
    bool found = false;
    char *copy = strdup(g_pem);
    for (char *save = NULL, *line = strtok_r(copy, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save))
        if (strncmp(line, "-----", 5) != 0 && strlen(line) >= 16 && strstr(text, line))
            found = true;
    free(copy);
    return found;
}

TEST(no_secrets_in_debug_logs)
{
    env_reset();
    char *tu = token_url();
    char *path = write_sa("sa-log.json", "log@proj-1.iam.gserviceaccount.com", tu, 0600);
    char *upath = write_user(g_tmp, "user-log.json", tu);
    http_client *http = new_http();
    auth_provider *p = NULL, *u = NULL;
    cerr_detail err;
    char tok[256];
    int base = testsrv_count(g_srv);
    log_set_level(LOG_DEBUG);
    capture_begin();
    int rc = auth_provider_new(path, http, &p, NULL, &err);
    push_token("ya29.SECRET-access-token-1", 3600, 0);
    int rc1 = auth_get_token(p, tok, sizeof tok, false, &err);
    sleep_s(1.05);
    push_token("ya29.SECRET-access-token-2", 3600, 0);
    int rc2 = auth_get_token(p, tok, sizeof tok, true, &err);
    sleep_s(1.05);
    testsrv_set_handler(g_srv, echo_invalid_grant, NULL);
    int rc3 = auth_get_token(p, tok, sizeof tok, true, &err);
    testsrv_set_handler(g_srv, NULL, NULL);
    int rc4 = auth_provider_new(upath, http, &u, NULL, &err);
    push_token("ya29.SECRET-user-token", 3600, 0);
    int rc5 = auth_get_token(u, tok, sizeof tok, false, &err);
    char *log = capture_end();
    log_set_level(LOG_INFO);
    CHECK_EQ_INT(rc, CERR_OK);
    CHECK_EQ_INT(rc1, CERR_OK);
    CHECK_EQ_INT(rc2, CERR_OK);
    CHECK_EQ_INT(rc3, CERR_AUTH);
    CHECK_EQ_INT(rc4, CERR_OK);
    CHECK_EQ_INT(rc5, CERR_OK);
    CHECK(strlen(log) > 0); /* the flow did log something */
    CHECK(strstr(log, "SECRET") == NULL);
    CHECK(!log_has_key_line(log));
    CHECK(strstr(log, "rt-abcdefghijklmnop") == NULL);
    CHECK(strstr(log, "XYZsecretvalue") == NULL);
    for (int i = base; i < testsrv_count(g_srv); i++) {
        char *as = form_field(testsrv_get(g_srv, i)->body, "assertion");
        if (as) {
            char probe[17];
            snprintf(probe, sizeof probe, "%s", strrchr(as, '.') + 1);
            CHECK(strstr(log, probe) == NULL);
            snprintf(probe, sizeof probe, "%s", strchr(as, '.') + 1);
            CHECK(strstr(log, probe) == NULL);
        }
        free(as);
    }
    free(log);
    auth_provider_free(p);
    auth_provider_free(u);
    http_client_free(http);
    free(path);
    free(upath);
    free(tu);
}

TEST(none_provider_and_small_buffer)
{
    auth_provider *n = auth_provider_new_none();
    CHECK(n != NULL);
    CHECK_EQ_INT(auth_provider_kind(n), AUTH_KIND_NONE);
    CHECK(auth_provider_quota_project(n) == NULL);
    char tok[16] = "garbage";
    cerr_detail err;
    CHECK_EQ_INT(auth_get_token(n, tok, sizeof tok, false, &err), CERR_OK);
    CHECK_EQ_STR(tok, "");
    auth_provider_free(n);

    /* A token that does not fit the caller's buffer is an error, not truncated. */
    safx t;
    CHECK_EQ_INT(
        safx_start(&t, "sa-small.json", "small@proj-1.iam.gserviceaccount.com", NULL, &err),
        CERR_OK);
    auth_provider *p = t.p;
    push_token("ya29.a-token-longer-than-sixteen-bytes", 3600, 0);
    CHECK(auth_get_token(p, tok, sizeof tok, false, &err) != CERR_OK);
    char big[128];
    CHECK_EQ_INT(auth_get_token(p, big, sizeof big, false, &err), CERR_OK);
    CHECK_EQ_STR(big, "ya29.a-token-longer-than-sixteen-bytes");
    safx_end(&t);
}

/* ---- setup ---- */

static bool setup(void)
{
    snprintf(g_tmp, sizeof g_tmp, "/tmp/dicomfs-auth.XXXXXX");
    if (!mkdtemp(g_tmp))
        return false;
    snprintf(g_empty, sizeof g_empty, "%s/empty", g_tmp);
    mkdir(g_empty, 0700);
    g_key = EVP_RSA_gen(2048);
    BIO *b = BIO_new(BIO_s_mem());
    if (!g_key || !b || PEM_write_bio_PrivateKey(b, g_key, NULL, NULL, 0, NULL, NULL) != 1)
        return false;
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    g_pem = strndup(data, (size_t)n);
    BIO_free(b);
    g_srv = testsrv_start();
    return g_pem && g_srv;
}

static void teardown(void)
{
    char cmd[128];
    testsrv_stop(g_srv);
    EVP_PKEY_free(g_key);
    free(g_pem);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", g_tmp);
}

int main(void)
{
    log_init("test_auth", false, LOG_INFO);
    if (!setup()) {
        printf("Bail out! cannot generate a key or start testsrv\n");
        return 1;
    }
    RUN(base64url_vectors);
    RUN(jwt_assertion_claims_and_signature);
    RUN(jwt_assertion_bad_key);
    RUN(service_account_flow);
    RUN(refresh_near_expiry);
    RUN(concurrent_single_refresh);
    RUN(token_endpoint_rejects);
    RUN(authorized_user_flow);
    RUN(credentials_file_read_again_when_changed);
    RUN(metadata_flow);
    RUN(adc_order);
    RUN(nothing_anywhere_is_notfound_quickly);
    RUN(malformed_files);
    RUN(loose_permissions_warn);
    RUN(no_secrets_in_debug_logs);
    RUN(none_provider_and_small_buffer);
    teardown();
    return test_done();
}
