/* http: the one place where dicomfs makes HTTP requests (libcurl).
 *
 * Owns: connection reuse (a pool of easy handles per client), connect and
 * transfer timeouts, TLS verification (always on for https), streaming of
 * request and response bodies from/to file descriptors, retries with
 * exponential backoff and full jitter (honouring Retry-After) for requests
 * that are safe to repeat, bearer-token injection with one refresh-and-retry
 * on 401, and decoding of both Google error shapes into one cerr_detail.
 *
 * Thread safety: an http_client may be used from many threads at once.
 */
#ifndef DICOMFS_HTTP_H
#define DICOMFS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "error.h"

typedef struct http_client http_client;

/* Sees the request body as libcurl takes it: called once per piece read from
 * body or body_fd, with the piece's offset within the body (0 = the first
 * byte of body, or body_fd_offset). When libcurl rewinds (a resend on a
 * reused connection) or an attempt is retried, offsets go back (a retry
 * starts again at 0), so a consumer that sums the bytes can tell a resend
 * from new data. Runs on the thread calling http_perform. */
typedef void (*http_body_observer)(void *ctx, uint64_t offset, const void *data, size_t len);

/* Every http_ function returns CERR_OK or a class (error.h): CERR_NETWORK
 * (connection refused or cut, transfer timeout, TLS), the class of the
 * status the server answered (>= 400: cerr_from_http_status, with 401 to a
 * freshly fetched token CERR_AUTH), CERR_AUTH or CERR_TOKEN when no token
 * could be obtained (refused credentials, or an unreachable or failing token
 * endpoint), CERR_TIMEOUT when the thread's deadline passed, CERR_NOMEM,
 * CERR_IO (reading the request fd or writing the response fd failed),
 * CERR_INVALID (bad arguments). */

/* Supplies a bearer token. Writes a NUL-terminated token into buf.
 * force_refresh is true after the server rejected the previous token (401).
 * Returns CERR_OK, or a class with err filled: CERR_AUTH when the
 * credentials were refused, CERR_TIMEOUT when the deadline passed; any
 * other class becomes CERR_TOKEN for http_perform's caller. */
typedef int (*http_token_fn)(void *ctx, char *buf, size_t buflen, bool force_refresh,
                             cerr_detail *err);

typedef struct http_retry_policy {
    int max_attempts;      /* total attempts including the first; 1 = no retry */
    double base_ms;        /* first backoff ceiling */
    double max_backoff_ms; /* cap of one wait */
    double total_ms;       /* give up once this much time has been spent waiting (<= 0: no limit) */
} http_retry_policy;

typedef struct http_options {
    long connect_timeout_s;  /* default 10 */
    long low_speed_time_s;   /* abort a transfer slower than 1 byte/s for this long; default 60 */
    http_retry_policy retry; /* default {8, 500, 32000, 300000} */
    http_token_fn token_fn;  /* NULL: no Authorization header */
    void *token_ctx;
    const char *user_project; /* X-Goog-User-Project value or NULL */
    const char *user_agent;   /* default "dicomfs/VERSION" */
    const char *ca_file;      /* PEM CA bundle for https; NULL: libcurl's default */
} http_options;

void http_options_init(http_options *opts);
http_client *http_client_new(const http_options *opts);
void http_client_free(http_client *client);

/* A request. Unused body/sink fields are left zero / -1 (see http_request_init). */
typedef struct http_request {
    const char *method; /* "GET", "POST", "PUT", "DELETE", "PATCH" */
    const char *url;
    const char *const *headers; /* NULL-terminated "Name: value" list, or NULL */
    /* Request body: either a memory buffer ... */
    const void *body;
    size_t body_len;
    /* ... or a byte range of a file descriptor, read with pread (never buffered whole). */
    int body_fd; /* -1: none */
    off_t body_fd_offset;
    off_t body_fd_len;
    /* Response body: into memory (default) or appended to a file descriptor at
     * response_fd_offset with pwrite. On a retry the fd is rewritten from the same
     * offset, so partial bodies never accumulate. */
    int response_fd; /* -1: collect in http_response.body */
    off_t response_fd_offset;
    size_t max_body; /* cap on an in-memory response; default 64 MiB */
    bool idempotent; /* may be retried on 408/429/5xx/connection errors */
    /* With idempotent: not after a lost or cut answer (the server may have
     * acted; the caller reconciles), only after an answer saying it did not
     * act or a connection that was never made. */
    bool unless_unanswered;
    bool no_auth;   /* do not attach the bearer token (e.g. token endpoint) */
    long timeout_s; /* whole-request timeout, 0 = none (low-speed limit still applies) */
    http_body_observer body_observer; /* NULL: none (see http_body_observer) */
    void *body_observer_ctx;
} http_request;

void http_request_init(http_request *req);

typedef struct http_response {
    long status;
    char *body;      /* NUL-terminated, malloc'ed; NULL when streamed to an fd */
    size_t body_len; /* bytes received (also when streamed) */
    /* private: the response header block */
    char *headers_raw;
    size_t headers_len;
    int attempts; /* how many attempts were made */
} http_response;

/* Performs the request with retries. When the calling thread has a
 * deadline (deadline.h), every attempt and wait ends by then: the call
 * fails with CERR_TIMEOUT and status DEADLINE_EXCEEDED. Returns CERR_OK for
 * 1xx-3xx statuses (308 included: callers inspect resp->status), the status's
 * class with err decoded for >= 400 (err->http_status is then set, and is
 * 0 for every other failure), or another class. resp is always safe to pass to
 * http_response_free afterwards. */
int http_perform(http_client *client, const http_request *req, http_response *resp,
                 cerr_detail *err);

void http_response_free(http_response *resp);

/* Value of a response header (case-insensitive name, last occurrence), copied
 * into buf. Returns true when present. */
bool http_response_header(const http_response *resp, const char *name, char *buf, size_t buflen);

/* Decodes a Google error body of either shape:
 *   {"error":{"code":404,"message":"..","status":"NOT_FOUND","details":[..]}}
 *   {"error":{"code":404,"message":"..","errors":[{"reason":"notFound",..}]}}
 * plus OAuth's {"error":"invalid_grant","error_description":".."}.
 * Missing fields are derived (status name from the HTTP status). Never fails. */
void http_error_decode(long http_status, const char *body, size_t len, cerr_detail *err);

/* Canonical google.rpc.Code name for an HTTP status, e.g. 404 -> "NOT_FOUND". */
const char *http_status_name(long http_status);

/* Whether a status is retryable (408, 429, 500, 502, 503, 504). */
bool http_status_retryable(long http_status);

/* Backoff before retry number `attempt` (1 = first retry): a uniformly random
 * value in [0, min(max_backoff, base * 2^(attempt-1))] ("full jitter"), using
 * rnd in [0,1). If retry_after_ms >= 0 the wait is at least that long. */
double http_backoff_ms(const http_retry_policy *policy, int attempt, double rnd,
                       double retry_after_ms);

/* Parses a Retry-After value (delta-seconds or HTTP-date) into milliseconds;
 * -1 if absent or unparseable. */
double http_parse_retry_after(const char *value, long now_epoch_s);

/* Whether url may carry credentials (a bearer token, a refresh token, a
 * signed assertion): https, or http to a loopback address (127.0.0.0/8,
 * ::1, localhost: a local emulator). http_perform refuses to attach a
 * token to any other URL. */
bool http_url_safe_for_credentials(const char *url);

/* Percent-encodes s for use as one path segment or query value (RFC 3986
 * unreserved characters kept). Returns malloc'ed string or NULL. */
char *http_escape(const char *s);

#endif
