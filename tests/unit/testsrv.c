/* testsrv: scriptable libmicrohttpd server for unit tests (see testsrv.h). */
#include "testsrv.h"

#include <microhttpd.h>
#include <openssl/evp.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

/* A recorded request: the public part plus parsed headers for lookups. */
typedef struct srv_req {
    testsrv_req pub; /* first member: testsrv_req_header casts back */
    int nheaders;
    char **names;
    char **values;
} srv_req;

/* A copied canned reply in the FIFO. */
typedef struct canned {
    int status;
    char *content_type;
    char *body;
    size_t body_len;
    char *headers[8];
    int delay_ms;
    bool reset;
    struct canned *next;
} canned;

/* Per-request state while the body arrives. */
typedef struct conn_ctx {
    srv_req *req;
    size_t cap;
    bool started;
    bool store; /* keep the body (else only count and hash it) */
    EVP_MD_CTX *md5;
} conn_ctx;

struct testsrv {
    struct MHD_Daemon *daemon;
    int port;
    char url[64];
    pthread_mutex_t lock; /* queue and records */
    canned *head, *tail;
    srv_req **reqs;
    int nreqs, capreqs;
    pthread_mutex_t handler_lock; /* serializes handler calls */
    testsrv_handler handler;
    void *handler_ctx;
    bool store_bodies;
};

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        abort(); /* a test helper: running out of memory ends the test run */
    return p;
}

static char *xstrndup(const char *s, size_t n)
{
    char *p = xcalloc(n + 1, 1);
    if (n)
        memcpy(p, s, n);
    return p;
}

static char *xstrdup_opt(const char *s)
{
    return s ? xstrndup(s, strlen(s)) : NULL;
}

static void req_free(srv_req *r)
{
    if (!r)
        return;
    free(r->pub.method);
    free(r->pub.url);
    free(r->pub.headers);
    free(r->pub.body);
    for (int i = 0; i < r->nheaders; i++) {
        free(r->names[i]);
        free(r->values[i]);
    }
    free(r->names);
    free(r->values);
    free(r);
}

static void canned_free(canned *c)
{
    if (!c)
        return;
    free(c->content_type);
    free(c->body);
    for (int i = 0; i < 8; i++)
        free(c->headers[i]);
    free(c);
}

static canned *canned_copy(const testsrv_reply *r)
{
    canned *c = xcalloc(1, sizeof *c);
    c->status = r->status ? r->status : 200;
    c->content_type = xstrdup_opt(r->content_type);
    if (r->body) {
        c->body_len = r->body_len ? r->body_len : strlen(r->body);
        c->body = xstrndup(r->body, c->body_len);
    }
    for (int i = 0; i < 8 && r->headers[i]; i++)
        c->headers[i] = xstrdup_opt(r->headers[i]);
    c->delay_ms = r->delay_ms;
    c->reset = r->reset;
    return c;
}

/* Appends "Name: value\n" to the header block and the lookup arrays. */
static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value)
{
    (void)kind;
    srv_req *r = cls;
    if (!value)
        value = "";
    size_t old = r->pub.headers ? strlen(r->pub.headers) : 0;
    size_t add = strlen(key) + strlen(value) + 3;
    char *h = realloc(r->pub.headers, old + add + 1);
    if (!h)
        abort();
    snprintf(h + old, add + 1, "%s: %s\n", key, value);
    r->pub.headers = h;
    r->names = realloc(r->names, sizeof(char *) * (r->nheaders + 1));
    r->values = realloc(r->values, sizeof(char *) * (r->nheaders + 1));
    if (!r->names || !r->values)
        abort();
    r->names[r->nheaders] = xstrdup_opt(key);
    r->values[r->nheaders] = xstrdup_opt(value);
    r->nheaders++;
    return MHD_YES;
}

/* MHD hands us the raw request target here (before unescaping), which is
 * what the tests want to see; the return value becomes the request's ctx. */
static void *uri_log(void *cls, const char *uri, struct MHD_Connection *con)
{
    testsrv *srv = cls;
    (void)con;
    conn_ctx *c = xcalloc(1, sizeof *c);
    pthread_mutex_lock(&srv->lock);
    c->store = srv->store_bodies;
    pthread_mutex_unlock(&srv->lock);
    c->md5 = EVP_MD_CTX_new();
    if (!c->md5 || !EVP_DigestInit_ex(c->md5, EVP_md5(), NULL))
        abort();
    c->req = xcalloc(1, sizeof *c->req);
    c->req->pub.url = xstrdup_opt(uri ? uri : "");
    c->req->pub.body = xcalloc(1, 1);
    c->req->pub.headers = xcalloc(1, 1);
    return c;
}

static void request_done(void *cls, struct MHD_Connection *con, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)con;
    (void)toe;
    conn_ctx *c = *con_cls;
    if (c) {
        req_free(c->req);
        EVP_MD_CTX_free(c->md5);
        free(c);
        *con_cls = NULL;
    }
}

static void append_body(conn_ctx *c, const char *data, size_t n)
{
    testsrv_req *p = &c->req->pub;
    EVP_DigestUpdate(c->md5, data, n);
    if (!c->store) {
        p->body_len += n;
        return;
    }
    if (p->body_len + n + 1 > c->cap) {
        size_t cap = c->cap ? c->cap : 4096;
        while (cap < p->body_len + n + 1)
            cap *= 2;
        char *b = realloc(p->body, cap);
        if (!b)
            abort();
        p->body = b;
        c->cap = cap;
    }
    memcpy(p->body + p->body_len, data, n);
    p->body_len += n;
    p->body[p->body_len] = '\0';
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static canned *default_reply(const srv_req *r)
{
    char body[1024];
    snprintf(body, sizeof body,
             "{\"error\":{\"code\":404,\"message\":\"testsrv: no reply for %.200s %.600s\","
             "\"status\":\"NOT_FOUND\"}}",
             r->pub.method, r->pub.url);
    testsrv_reply rep = {.status = 404, .body = body};
    return canned_copy(&rep);
}

/* Picks the answer: queued reply, then the handler, then the default 404. */
static canned *next_reply(testsrv *srv, const srv_req *r)
{
    pthread_mutex_lock(&srv->lock);
    canned *c = srv->head;
    if (c) {
        srv->head = c->next;
        if (!srv->head)
            srv->tail = NULL;
    }
    pthread_mutex_unlock(&srv->lock);
    if (c)
        return c;
    pthread_mutex_lock(&srv->handler_lock);
    if (srv->handler) {
        testsrv_reply out = {.status = 200};
        srv->handler(srv->handler_ctx, &r->pub, &out);
        c = canned_copy(&out);
    }
    pthread_mutex_unlock(&srv->handler_lock);
    return c ? c : default_reply(r);
}

static void record(testsrv *srv, srv_req *r)
{
    pthread_mutex_lock(&srv->lock);
    if (srv->nreqs == srv->capreqs) {
        int cap = srv->capreqs ? srv->capreqs * 2 : 16;
        srv_req **n = realloc(srv->reqs, sizeof *n * cap);
        if (!n)
            abort();
        srv->reqs = n;
        srv->capreqs = cap;
    }
    srv->reqs[srv->nreqs++] = r;
    pthread_mutex_unlock(&srv->lock);
}

static enum MHD_Result drop_connection(struct MHD_Connection *con)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(con, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci) {
        /* Linger 0: close() sends a RST instead of a graceful FIN. */
        struct linger lg = {1, 0};
        setsockopt(ci->connect_fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    return MHD_NO;
}

static enum MHD_Result send_reply(struct MHD_Connection *con, canned *c)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(c->body_len, c->body ? c->body : "", MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return MHD_NO;
    if (c->content_type)
        MHD_add_response_header(resp, "Content-Type", c->content_type);
    else if (c->body_len)
        MHD_add_response_header(resp, "Content-Type", "application/json");
    for (int i = 0; i < 8 && c->headers[i]; i++) {
        char *colon = strchr(c->headers[i], ':');
        if (!colon)
            continue;
        *colon = '\0';
        const char *v = colon + 1;
        while (*v == ' ')
            v++;
        MHD_add_response_header(resp, c->headers[i], v);
        *colon = ':';
    }
    enum MHD_Result ret = MHD_queue_response(con, (unsigned)c->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *con, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)url;
    (void)version;
    testsrv *srv = cls;
    conn_ctx *c = *con_cls;
    if (!c)
        return MHD_NO;
    if (!c->started) {
        c->started = true;
        c->req->pub.method = xstrdup_opt(method);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(con, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (ci && ci->client_addr && ci->client_addr->sa_family == AF_INET)
            c->req->pub.client_port =
                ntohs(((const struct sockaddr_in *)(const void *)ci->client_addr)->sin_port);
        MHD_get_connection_values(con, MHD_HEADER_KIND, collect_header, c->req);
        return MHD_YES;
    }
    if (*upload_data_size) {
        append_body(c, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    srv_req *r = c->req;
    c->req = NULL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_DigestFinal_ex(c->md5, md, &mdlen);
    for (unsigned i = 0; i < mdlen && i < 16; i++)
        snprintf(r->pub.body_md5 + 2 * i, 3, "%02x", md[i]);
    record(srv, r);
    canned *rep = next_reply(srv, r);
    if (rep->delay_ms > 0)
        sleep_ms(rep->delay_ms);
    enum MHD_Result ret = rep->reset ? drop_connection(con) : send_reply(con, rep);
    canned_free(rep);
    return ret;
}

static testsrv *start(const char *cert_pem, const char *key_pem)
{
    testsrv *srv = xcalloc(1, sizeof *srv);
    pthread_mutex_init(&srv->lock, NULL);
    pthread_mutex_init(&srv->handler_lock, NULL);
    srv->store_bodies = true;
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = 0;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION;
    if (cert_pem)
        flags |= MHD_USE_TLS;
    /* The TLS options come last: with plain HTTP they are cut off by the
     * first MHD_OPTION_END. */
    srv->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, srv, MHD_OPTION_SOCK_ADDR,
                                   (struct sockaddr *)&sa, MHD_OPTION_URI_LOG_CALLBACK, uri_log,
                                   srv, MHD_OPTION_NOTIFY_COMPLETED, request_done, srv,
                                   MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)60,
                                   cert_pem ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, cert_pem,
                                   MHD_OPTION_HTTPS_MEM_KEY, key_pem, MHD_OPTION_END);
    if (!srv->daemon) {
        free(srv);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di ? di->port : 0;
    snprintf(srv->url, sizeof srv->url, "%s://127.0.0.1:%d", cert_pem ? "https" : "http",
             srv->port);
    return srv;
}

testsrv *testsrv_start(void)
{
    return start(NULL, NULL);
}

testsrv *testsrv_start_tls(const char *cert_pem, const char *key_pem)
{
    if (!cert_pem || !key_pem)
        return NULL;
    return start(cert_pem, key_pem);
}

void testsrv_stop(testsrv *srv)
{
    if (!srv)
        return;
    MHD_stop_daemon(srv->daemon);
    while (srv->head) {
        canned *c = srv->head;
        srv->head = c->next;
        canned_free(c);
    }
    for (int i = 0; i < srv->nreqs; i++)
        req_free(srv->reqs[i]);
    free(srv->reqs);
    pthread_mutex_destroy(&srv->lock);
    pthread_mutex_destroy(&srv->handler_lock);
    free(srv);
}

const char *testsrv_url(testsrv *srv)
{
    return srv->url;
}

int testsrv_port(testsrv *srv)
{
    return srv->port;
}

void testsrv_push(testsrv *srv, const testsrv_reply *reply)
{
    canned *c = canned_copy(reply);
    pthread_mutex_lock(&srv->lock);
    if (srv->tail)
        srv->tail->next = c;
    else
        srv->head = c;
    srv->tail = c;
    pthread_mutex_unlock(&srv->lock);
}

void testsrv_set_handler(testsrv *srv, testsrv_handler handler, void *ctx)
{
    pthread_mutex_lock(&srv->handler_lock);
    srv->handler = handler;
    srv->handler_ctx = ctx;
    pthread_mutex_unlock(&srv->handler_lock);
}

void testsrv_set_store_bodies(testsrv *srv, bool store)
{
    pthread_mutex_lock(&srv->lock);
    srv->store_bodies = store;
    pthread_mutex_unlock(&srv->lock);
}

int testsrv_count(testsrv *srv)
{
    pthread_mutex_lock(&srv->lock);
    int n = srv->nreqs;
    pthread_mutex_unlock(&srv->lock);
    return n;
}

const testsrv_req *testsrv_get(testsrv *srv, int i)
{
    const testsrv_req *r = NULL;
    pthread_mutex_lock(&srv->lock);
    if (i >= 0 && i < srv->nreqs)
        r = &srv->reqs[i]->pub;
    pthread_mutex_unlock(&srv->lock);
    return r;
}

const char *testsrv_req_header(const testsrv_req *req, const char *name)
{
    if (!req || !name)
        return NULL;
    const srv_req *r = (const srv_req *)req;
    for (int i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->names[i], name) == 0)
            return r->values[i];
    return NULL;
}
