/* testsrv: a scriptable HTTP server for unit tests (libmicrohttpd).
 *
 * Listens on 127.0.0.1 with a port chosen by the kernel. Each request is
 * answered with, in order of preference: the next canned reply pushed with
 * testsrv_push (FIFO), the handler set with testsrv_set_handler, or a 404 with
 * a Google error JSON body. Every request (method, raw path?query, headers,
 * full body) is recorded and can be inspected afterwards.
 *
 * One thread per connection, so a delayed reply does not hold up others.
 * All functions are thread-safe.
 */
#ifndef DICOMFS_TESTSRV_H
#define DICOMFS_TESTSRV_H

#include <stdbool.h>
#include <stddef.h>

typedef struct testsrv testsrv;

typedef struct testsrv_reply {
    int status;               /* 0 means 200 */
    const char *content_type; /* NULL: "application/json" when there is a body */
    const char *body;         /* may be NULL */
    size_t body_len;          /* 0 = strlen(body) */
    const char *headers[8];   /* "Name: value", NULL-terminated */
    int delay_ms;             /* sleep this long before answering */
    bool reset;               /* close the connection without an answer (curl: "Empty reply") */
} testsrv_reply;

typedef struct testsrv_req {
    char *method;
    char *url;         /* path?query exactly as sent (not unescaped) */
    char *headers;     /* "Name: value\n" lines */
    char *body;        /* NUL-terminated (the NUL is not counted), never NULL;
                          "" when bodies are not stored (testsrv_set_store_bodies) */
    size_t body_len;   /* bytes received, also when the body is not stored */
    char body_md5[33]; /* lowercase hex MD5 of the received body */
    int client_port;   /* the client's TCP port: equal ports = a reused connection */
} testsrv_req;

/* Fills *out for a request. Calls are serialized (one at a time), and every
 * string in *out is copied as soon as the handler returns, so it may point
 * into storage owned by ctx that the next call overwrites. *out starts as
 * {.status = 200}. */
typedef void (*testsrv_handler)(void *ctx, const testsrv_req *req, testsrv_reply *out);

testsrv *testsrv_start(void); /* NULL on failure */
/* The same over TLS with the given PEM certificate and key; the URL is then
 * "https://127.0.0.1:PORT". */
testsrv *testsrv_start_tls(const char *cert_pem, const char *key_pem);
void testsrv_stop(testsrv *srv);
const char *testsrv_url(testsrv *srv); /* "http://127.0.0.1:PORT" (https with TLS) */
int testsrv_port(testsrv *srv);

void testsrv_push(testsrv *srv, const testsrv_reply *reply);
void testsrv_set_handler(testsrv *srv, testsrv_handler handler, void *ctx);
/* false: request bodies are only counted and hashed, not kept (for tests
 * that measure the client's memory during a large upload). Default true. */
void testsrv_set_store_bodies(testsrv *srv, bool store);

/* Recorded requests, in order of completion. Pointers stay valid while the
 * server lives. */
int testsrv_count(testsrv *srv);
const testsrv_req *testsrv_get(testsrv *srv, int i);
/* Value of a request header (case-insensitive, first occurrence) or NULL. */
const char *testsrv_req_header(const testsrv_req *req, const char *name);

#endif
