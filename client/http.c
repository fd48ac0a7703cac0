/* http: libcurl requests with handle pooling, streaming bodies, retries with
 * full-jitter backoff, bearer tokens and Google error decoding (see http.h). */
#include "http.h"

#include "deadline.h"
#include "log.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#ifndef DICOMFS_VERSION
#define DICOMFS_VERSION "0.1.0"
#endif

#define HTTP_POOL_MAX 80                  /* idle handles kept per client */
#define HTTP_TOKEN_MAX 8192               /* room for one bearer token */
#define HTTP_HEADERS_MAX (256 * 1024)     /* cap on a response header block */
#define HTTP_ERROR_BODY_MAX (1024 * 1024) /* cap on a captured error body */
#define HTTP_DEFAULT_MAX_BODY (64u * 1024 * 1024)

struct http_client {
    long connect_timeout_s;
    long low_speed_time_s;
    http_retry_policy retry;
    http_token_fn token_fn;
    void *token_ctx;
    char *user_project;
    char *user_agent;
    char *ca_file; /* CURLOPT_CAINFO, NULL: libcurl's compiled-in bundle */
    CURLSH *share; /* DNS cache and TLS sessions shared by the pooled handles */
    pthread_mutex_t share_locks[CURL_LOCK_DATA_LAST];
    pthread_mutex_t pool_lock;
    CURL *pool[HTTP_POOL_MAX];
    int npool;
};

/* ---------------------------------------------------------------- helpers */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_ALL);
}

static void wipe(void *p, size_t n)
{
    if (p && n)
        explicit_bzero(p, n);
}

static void copy_str(char *dst, size_t dstlen, const char *src)
{
    if (!dstlen)
        return;
    snprintf(dst, dstlen, "%s", src ? src : "");
}

/* Messages are truncated to fit cerr_detail.message; that is intended. */
static void set_message(cerr_detail *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_message(cerr_detail *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

/* The URL up to (not including) its query or fragment: what we may log. */
static void url_for_log(const char *url, char *buf, size_t buflen)
{
    size_t n = strcspn(url ? url : "", "?#");
    if (n >= buflen)
        n = buflen - 1;
    memcpy(buf, url ? url : "", n);
    buf[n] = '\0';
}

static void sleep_ms(double ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {(time_t)(ms / 1000.0), 0};
    ts.tv_nsec = (long)((ms - (double)ts.tv_sec * 1000.0) * 1e6);
    if (ts.tv_nsec >= 1000000000L)
        ts.tv_nsec = 999999999L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* A per-thread PRNG, seeded once per thread from the clock and the thread,
 * so concurrent retries do not synchronize their waits. */
static double random_unit(void)
{
    static __thread struct drand48_data rng;
    static __thread bool seeded;
    if (!seeded) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long seed = (long)ts.tv_nsec ^ ((long)ts.tv_sec << 20) ^ (long)(uintptr_t)&rng ^
                    (long)pthread_self();
        srand48_r(seed, &rng);
        seeded = true;
    }
    double r = 0;
    drand48_r(&rng, &r);
    return r;
}

/* ------------------------------------------------------- pure functions */

const char *http_status_name(long s)
{
    if (s >= 100 && s < 400)
        return "OK";
    switch (s) {
    case 400:
        return "INVALID_ARGUMENT";
    case 401:
        return "UNAUTHENTICATED";
    case 403:
        return "PERMISSION_DENIED";
    case 404:
    case 410:
        return "NOT_FOUND";
    case 405:
        return "UNIMPLEMENTED";
    case 408:
        return "DEADLINE_EXCEEDED";
    case 409:
        return "ALREADY_EXISTS";
    case 411:
    case 413:
    case 414:
    case 415:
    case 422:
        return "INVALID_ARGUMENT";
    case 412:
    case 428:
        return "FAILED_PRECONDITION";
    case 416:
        return "OUT_OF_RANGE";
    case 429:
        return "RESOURCE_EXHAUSTED";
    case 499:
        return "CANCELLED";
    case 500:
        return "INTERNAL";
    case 501:
        return "UNIMPLEMENTED";
    case 502:
    case 503:
        return "UNAVAILABLE";
    case 504:
        return "DEADLINE_EXCEEDED";
    default:
        break;
    }
    if (s >= 400 && s < 500)
        return "FAILED_PRECONDITION";
    if (s >= 500 && s < 600)
        return "INTERNAL";
    return "UNKNOWN";
}

bool http_status_retryable(long s)
{
    return s == 408 || s == 429 || s == 500 || s == 502 || s == 503 || s == 504;
}

double http_backoff_ms(const http_retry_policy *policy, int attempt, double rnd,
                       double retry_after_ms)
{
    double base = policy && policy->base_ms > 0 ? policy->base_ms : 500;
    double cap = policy && policy->max_backoff_ms > 0 ? policy->max_backoff_ms : 32000;
    if (rnd < 0 || rnd != rnd)
        rnd = 0;
    if (rnd > 1)
        rnd = 1;
    /* Double step by step so a large attempt number cannot overflow. */
    double ceil = base;
    for (int i = 1; i < attempt && ceil < cap; i++)
        ceil *= 2;
    if (ceil > cap)
        ceil = cap;
    double wait = rnd * ceil;
    if (retry_after_ms >= 0 && wait < retry_after_ms)
        wait = retry_after_ms;
    return wait;
}

/* Parses the three HTTP-date forms of RFC 9110 (IMF-fixdate, RFC 850,
 * asctime); -1 when s is not one of them. Always GMT. */
static long parse_http_date(const char *s)
{
    static const char *const formats[] = {"%a, %d %b %Y %H:%M:%S GMT", "%A, %d-%b-%y %H:%M:%S GMT",
                                          "%a %b %e %H:%M:%S %Y"};
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++) {
        struct tm tm;
        memset(&tm, 0, sizeof tm);
        const char *end = strptime(s, formats[i], &tm);
        if (!end)
            continue;
        while (*end == ' ' || *end == '\t')
            end++;
        if (*end)
            continue;
        time_t t = timegm(&tm);
        if (t == (time_t)-1)
            continue;
        return (long)t;
    }
    return -1;
}

double http_parse_retry_after(const char *value, long now_epoch_s)
{
    if (!value)
        return -1;
    while (*value == ' ' || *value == '\t')
        value++;
    if (!*value)
        return -1;
    if (isdigit((unsigned char)*value)) {
        const char *p = value;
        double secs = 0;
        while (isdigit((unsigned char)*p)) {
            if (secs < 1e9)
                secs = secs * 10 + (*p - '0');
            p++;
        }
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
            p++;
        return *p ? -1 : secs * 1000.0; /* HTTP-dates never start with a digit */
    }
    char tmp[64];
    size_t n = strlen(value);
    while (n && (value[n - 1] == ' ' || value[n - 1] == '\t' || value[n - 1] == '\r' ||
                 value[n - 1] == '\n'))
        n--;
    if (n == 0 || n >= sizeof tmp)
        return -1;
    memcpy(tmp, value, n);
    tmp[n] = '\0';
    long t = parse_http_date(tmp);
    if (t < 0)
        return -1;
    double delta = (double)(t - now_epoch_s) * 1000.0;
    return delta > 0 ? delta : 0;
}

bool http_url_safe_for_credentials(const char *url)
{
    if (!url)
        return false;
    if (strncasecmp(url, "https://", 8) == 0)
        return true;
    if (strncasecmp(url, "http://", 7) != 0)
        return false;
    const char *h = url + 7;
    const char *at = h + strcspn(h, "/?#");
    const char *cred = memchr(h, '@', (size_t)(at - h));
    if (cred)
        h = cred + 1; /* user:pass@host */
    size_t n;
    if (*h == '[') {
        return strncmp(h, "[::1]", 5) == 0 && strchr(":/?#", h[5]) != NULL;
    }
    n = strcspn(h, ":/?#");
    if (n == 9 && strncasecmp(h, "localhost", 9) == 0)
        return true;
    if (n < 4 || strncmp(h, "127.", 4) != 0)
        return false;
    for (size_t i = 4; i < n; i++)
        if (!isdigit((unsigned char)h[i]) && h[i] != '.')
            return false;
    return true;
}

char *http_escape(const char *s)
{
    if (!s)
        return NULL;
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *out = malloc(n * 3 + 1);
    if (!out)
        return NULL;
    char *o = out;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = '\0';
    return out;
}

/* ------------------------------------------------------- error decoding */

/* A status name from a body is used only when it looks like one. */
static bool is_code_name(const char *s)
{
    if (!s || !*s || strlen(s) >= sizeof(((cerr_detail *)0)->status))
        return false;
    for (; *s; s++)
        if (!(isupper((unsigned char)*s) || *s == '_'))
            return false;
    return true;
}

static const char *json_str(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Reason from details[] (the ErrorInfo entry) or errors[0] (Cloud Storage). */
static void decode_reason(const cJSON *e, cerr_detail *err)
{
    const cJSON *d;
    cJSON_ArrayForEach(d, cJSON_GetObjectItemCaseSensitive(e, "details"))
    {
        const char *type = json_str(d, "@type");
        const char *reason = json_str(d, "reason");
        if (type && reason && strstr(type, "google.rpc.ErrorInfo")) {
            copy_str(err->reason, sizeof err->reason, reason);
            return;
        }
    }
    const cJSON *errors = cJSON_GetObjectItemCaseSensitive(e, "errors");
    const cJSON *first = cJSON_IsArray(errors) ? cJSON_GetArrayItem(errors, 0) : NULL;
    if (first) {
        copy_str(err->reason, sizeof err->reason, json_str(first, "reason"));
        if (!err->message[0])
            copy_str(err->message, sizeof err->message, json_str(first, "message"));
    }
}

static bool decode_json(const char *body, size_t len, cerr_detail *err)
{
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root)
        return false;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "error");
    bool ok = false;
    if (cJSON_IsObject(e)) {
        copy_str(err->message, sizeof err->message, json_str(e, "message"));
        const char *st = json_str(e, "status");
        if (is_code_name(st))
            copy_str(err->status, sizeof err->status, st);
        decode_reason(e, err);
        ok = true;
    } else if (cJSON_IsString(e)) {
        /* OAuth token endpoint: {"error":"invalid_grant","error_description":".."} */
        const char *desc = json_str(root, "error_description");
        copy_str(err->reason, sizeof err->reason, e->valuestring);
        if (desc && *desc)
            snprintf(err->message, sizeof err->message, "%s: %s", e->valuestring, desc);
        else
            copy_str(err->message, sizeof err->message, e->valuestring);
        ok = true;
    }
    cJSON_Delete(root);
    return ok;
}

/* For a plain-text body, its first line (printable bytes only) helps; HTML
 * pages are noise, so they are left out. */
static void message_from_text(long status, const char *body, size_t len, cerr_detail *err)
{
    int n = snprintf(err->message, sizeof err->message, "HTTP %ld", status);
    size_t i = 0;
    while (i < len && isspace((unsigned char)body[i]))
        i++;
    if (i >= len || body[i] == '<' || body[i] == '{' || body[i] == '[')
        return;
    size_t pos = (size_t)n;
    if (pos + 3 >= sizeof err->message)
        return;
    memcpy(err->message + pos, ": ", 2);
    pos += 2;
    size_t limit = pos + 200 < sizeof err->message ? pos + 200 : sizeof err->message - 1;
    for (; i < len && body[i] != '\n' && body[i] != '\r' && pos < limit; i++)
        err->message[pos++] = isprint((unsigned char)body[i]) ? body[i] : '?';
    err->message[pos] = '\0';
}

void http_error_decode(long http_status, const char *body, size_t len, cerr_detail *err)
{
    if (!err)
        return;
    memset(err, 0, sizeof *err);
    err->cls = cerr_from_http_status(http_status);
    err->http_status = http_status;
    if (!body)
        len = 0;
    if (!(len && decode_json(body, len, err)) || !err->message[0])
        message_from_text(http_status, len ? body : "", len, err);
    if (!err->status[0])
        copy_str(err->status, sizeof err->status, http_status_name(http_status));
}

/* ------------------------------------------------------------ client */

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *ud)
{
    (void)h;
    (void)access;
    http_client *c = ud;
    pthread_mutex_lock(&c->share_locks[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *ud)
{
    (void)h;
    http_client *c = ud;
    pthread_mutex_unlock(&c->share_locks[data]);
}

void http_options_init(http_options *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->connect_timeout_s = 10;
    opts->low_speed_time_s = 60;
    opts->retry = (http_retry_policy){8, 500, 32000, 300000};
    opts->user_agent = "dicomfs/" DICOMFS_VERSION;
}

http_client *http_client_new(const http_options *opts)
{
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK) {
        log_error("http: curl_global_init failed: %s", curl_easy_strerror(curl_init_rc));
        return NULL;
    }
    http_options defaults;
    http_options_init(&defaults);
    if (!opts)
        opts = &defaults;
    http_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->connect_timeout_s = opts->connect_timeout_s > 0 ? opts->connect_timeout_s : 10;
    c->low_speed_time_s = opts->low_speed_time_s > 0 ? opts->low_speed_time_s : 60;
    c->retry = opts->retry;
    if (c->retry.max_attempts < 1)
        c->retry.max_attempts = 1;
    c->token_fn = opts->token_fn;
    c->token_ctx = opts->token_ctx;
    c->user_project = opts->user_project ? strdup(opts->user_project) : NULL;
    c->user_agent = strdup(opts->user_agent ? opts->user_agent : defaults.user_agent);
    c->ca_file = opts->ca_file ? strdup(opts->ca_file) : NULL;
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init(&c->share_locks[i], NULL);
    pthread_mutex_init(&c->pool_lock, NULL);
    c->share = curl_share_init();
    if (!c->user_agent || (opts->user_project && !c->user_project) ||
        (opts->ca_file && !c->ca_file) || !c->share) {
        http_client_free(c);
        return NULL;
    }
    curl_share_setopt(c->share, CURLSHOPT_LOCKFUNC, share_lock);
    curl_share_setopt(c->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
    curl_share_setopt(c->share, CURLSHOPT_USERDATA, c);
    curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    return c;
}

void http_client_free(http_client *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->npool; i++)
        curl_easy_cleanup(c->pool[i]);
    if (c->share)
        curl_share_cleanup(c->share);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_destroy(&c->share_locks[i]);
    pthread_mutex_destroy(&c->pool_lock);
    free(c->user_project);
    free(c->user_agent);
    free(c->ca_file);
    free(c);
}

/* Takes an idle handle (keeping its open connections) or makes a new one. */
static CURL *pool_get(http_client *c)
{
    CURL *h = NULL;
    pthread_mutex_lock(&c->pool_lock);
    if (c->npool > 0)
        h = c->pool[--c->npool];
    pthread_mutex_unlock(&c->pool_lock);
    return h ? h : curl_easy_init();
}

static void pool_put(http_client *c, CURL *h)
{
    pthread_mutex_lock(&c->pool_lock);
    if (c->npool < HTTP_POOL_MAX) {
        c->pool[c->npool++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&c->pool_lock);
    if (h)
        curl_easy_cleanup(h);
}

void http_request_init(http_request *req)
{
    memset(req, 0, sizeof *req);
    req->method = "GET";
    req->body_fd = -1;
    req->response_fd = -1;
    req->max_body = HTTP_DEFAULT_MAX_BODY;
}

void http_response_free(http_response *resp)
{
    if (!resp)
        return;
    free(resp->body);
    free(resp->headers_raw);
    resp->body = NULL;
    resp->headers_raw = NULL;
    resp->body_len = 0;
    resp->headers_len = 0;
}

/* ------------------------------------------------------------ one attempt */

/* State of one transfer attempt, shared with the curl callbacks. */
typedef struct xfer {
    const http_request *req;
    /* request body */
    off_t up_pos;
    off_t up_len;
    int up_errno;  /* pread failed */
    bool up_short; /* the file ended before body_fd_len bytes */
    /* response */
    long status; /* from the last status line seen */
    char *body;  /* in-memory body (also error bodies when streaming to an fd) */
    size_t len, cap;
    size_t limit; /* cap for body */
    bool too_big; /* a success body exceeded max_body */
    off_t fd_written;
    int down_errno; /* pwrite failed */
    char *hdr;
    size_t hlen, hcap;
    long deadline_ms; /* what is left of the thread's deadline; 0 = none */
} xfer;

static bool buf_append(char **buf, size_t *len, size_t *cap, const char *data, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t ncap = *cap ? *cap : 1024;
        while (ncap < *len + n + 1)
            ncap *= 2;
        char *b = realloc(*buf, ncap);
        if (!b)
            return false;
        *buf = b;
        *cap = ncap;
    }
    memcpy(*buf + *len, data, n);
    *len += n;
    (*buf)[*len] = '\0';
    return true;
}

static size_t on_header(char *data, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    size_t k = size * n;
    /* A status line starts a new response (after 100 Continue, for
     * instance): keep only the headers of the last one. */
    if (k >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        x->hlen = 0;
        if (x->hdr)
            x->hdr[0] = '\0';
        const char *sp = memchr(data, ' ', k);
        x->status = 0;
        for (const char *p = sp ? sp + 1 : data + k; p < data + k && isdigit((unsigned char)*p);
             p++)
            x->status = x->status * 10 + (*p - '0');
        return k;
    }
    if (x->hlen + k > HTTP_HEADERS_MAX)
        return k; /* drop the excess: no caller needs megabytes of headers */
    if (!buf_append(&x->hdr, &x->hlen, &x->hcap, data, k))
        return 0;
    return k;
}

/* Success bodies go to the fd when one was given; anything else is kept in
 * memory so that errors can be decoded and the file never holds an error. */
static bool to_fd(const xfer *x)
{
    return x->req->response_fd >= 0 && x->status >= 200 && x->status < 300;
}

static size_t on_write(char *data, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    size_t k = size * n;
    if (to_fd(x)) {
        size_t done = 0;
        while (done < k) {
            ssize_t w = pwrite(x->req->response_fd, data + done, k - done,
                               x->req->response_fd_offset + x->fd_written);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                x->down_errno = w < 0 ? errno : EIO;
                return 0;
            }
            done += (size_t)w;
            x->fd_written += w;
        }
        return k;
    }
    bool error_body = x->status < 200 || x->status >= 300;
    size_t limit = error_body && x->limit > HTTP_ERROR_BODY_MAX ? HTTP_ERROR_BODY_MAX : x->limit;
    if (x->len + k > limit) {
        if (error_body) { /* keep the start of an error body, drop the rest */
            size_t room = limit > x->len ? limit - x->len : 0;
            if (room && !buf_append(&x->body, &x->len, &x->cap, data, room))
                return 0;
            return k;
        }
        x->too_big = true;
        return 0;
    }
    if (!buf_append(&x->body, &x->len, &x->cap, data, k))
        return 0;
    return k;
}

/* Hands n bytes just read at up_pos to the caller's observer, then advances. */
static void observe(xfer *x, const char *buf, size_t n)
{
    const http_request *req = x->req;
    if (req->body_observer && n)
        req->body_observer(req->body_observer_ctx, (uint64_t)x->up_pos, buf, n);
    x->up_pos += (off_t)n;
}

static size_t on_read(char *buf, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    const http_request *req = x->req;
    size_t want = size * n;
    off_t left = x->up_len - x->up_pos;
    if (left <= 0)
        return 0;
    if ((off_t)want > left)
        want = (size_t)left;
    if (req->body_fd < 0) {
        memcpy(buf, (const char *)req->body + x->up_pos, want);
        observe(x, buf, want);
        return want;
    }
    ssize_t r;
    do
        r = pread(req->body_fd, buf, want, req->body_fd_offset + x->up_pos);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        x->up_errno = errno;
        return CURL_READFUNC_ABORT;
    }
    if (r == 0) {
        x->up_short = true;
        return CURL_READFUNC_ABORT;
    }
    observe(x, buf, (size_t)r);
    return (size_t)r;
}

static int on_seek(void *ud, curl_off_t offset, int origin)
{
    xfer *x = ud;
    if (origin != SEEK_SET || offset < 0 || offset > x->up_len)
        return CURL_SEEKFUNC_FAIL;
    x->up_pos = (off_t)offset;
    return CURL_SEEKFUNC_OK;
}

/* The request headers: the caller's, then auth and billing project. The
 * token is copied by curl_slist_append; the caller wipes the list. */
static struct curl_slist *build_headers(const http_client *c, const http_request *req,
                                        const char *token, bool *ok)
{
    struct curl_slist *l = NULL, *t;
    *ok = true;
#define ADD(s)                                                                                     \
    do {                                                                                           \
        if (!(t = curl_slist_append(l, (s)))) {                                                    \
            *ok = false;                                                                           \
            return l;                                                                              \
        }                                                                                          \
        l = t;                                                                                     \
    } while (0)
    for (const char *const *h = req->headers; h && *h; h++)
        ADD(*h);
    /* No "Expect: 100-continue": it costs a round trip (or a 1 s stall with
     * servers that ignore it) on every upload. */
    ADD("Expect:");
    if (token) {
        size_t n = strlen(token) + sizeof "Authorization: Bearer ";
        char *line = malloc(n);
        if (!line) {
            *ok = false;
            return l;
        }
        snprintf(line, n, "Authorization: Bearer %s", token);
        t = curl_slist_append(l, line);
        wipe(line, n);
        free(line);
        if (!t) {
            *ok = false;
            return l;
        }
        l = t;
    }
    if (c->user_project) {
        char line[512];
        snprintf(line, sizeof line, "X-Goog-User-Project: %s", c->user_project);
        ADD(line);
    }
#undef ADD
    return l;
}

static void free_headers(struct curl_slist *l)
{
    for (struct curl_slist *p = l; p; p = p->next)
        wipe(p->data, strlen(p->data));
    curl_slist_free_all(l);
}

static void set_method_and_body(CURL *h, const http_request *req, xfer *x)
{
    const char *m = req->method ? req->method : "GET";
    bool has_body = req->body_fd >= 0 || req->body != NULL;
    if (!has_body && (strcmp(m, "GET") == 0)) {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
        return;
    }
    if (!has_body && strcmp(m, "HEAD") == 0) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
        return;
    }
    if (!has_body && strcmp(m, "POST") != 0 && strcmp(m, "PUT") != 0 && strcmp(m, "PATCH") != 0) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, m); /* DELETE and the like */
        return;
    }
    /* A body (possibly empty) with a known size: Content-Length, never chunked. */
    x->up_len = req->body_fd >= 0 ? req->body_fd_len : (off_t)req->body_len;
    if (!has_body)
        x->up_len = 0;
    curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(h, CURLOPT_READDATA, x);
    curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, on_seek);
    curl_easy_setopt(h, CURLOPT_SEEKDATA, x);
    if (strcmp(m, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->up_len);
    } else {
        curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)x->up_len);
        if (strcmp(m, "PUT") != 0)
            curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, m);
    }
}

static void set_options(http_client *c, CURL *h, const http_request *req, xfer *x,
                        struct curl_slist *headers, char *errbuf)
{
    curl_easy_reset(h); /* keeps the connection cache, drops the last request's options */
    curl_easy_setopt(h, CURLOPT_URL, req->url);
    curl_easy_setopt(h, CURLOPT_SHARE, c->share);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    if (c->ca_file) /* replaces the system bundle, as curl --cacert does */
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, c->connect_timeout_s);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, c->low_speed_time_s);
    long timeout_ms = req->timeout_s > 0 ? req->timeout_s * 1000 : 0;
    bool streams = req->response_fd >= 0 || req->body_fd >= 0;
    if (x->deadline_ms > 0 && streams) {
        /* A file transfer that keeps moving may outlast the deadline (a
         * large instance on a slow link): the deadline bounds the wait for
         * the connection and any stall, not the transfer. */
        long stall_s = (x->deadline_ms + 999) / 1000;
        if (x->deadline_ms < c->connect_timeout_s * 1000)
            curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, x->deadline_ms);
        if (stall_s < c->low_speed_time_s)
            curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, stall_s);
    } else if (x->deadline_ms > 0 && (timeout_ms == 0 || x->deadline_ms < timeout_ms)) {
        timeout_ms = x->deadline_ms;
    }
    if (timeout_ms > 0)
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    /* libcurl silently re-sends a request once when a reused connection turns
     * out to be dead. For a POST that starts work (import, export, create) that
     * could start it twice, so such requests always get a fresh connection. */
    if ((!req->idempotent || req->unless_unanswered) && req->method &&
        strcmp(req->method, "POST") == 0)
        curl_easy_setopt(h, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, c->user_agent);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
    set_method_and_body(h, req, x);
}

/* What one attempt produced. */
typedef struct outcome {
    CURLcode code;
    long status;
    int rc; /* CERR_IO / CERR_NOMEM from our own callbacks, else 0 */
    char errbuf[CURL_ERROR_SIZE];
} outcome;

static void run_attempt(http_client *c, const http_request *req, const char *token, xfer *x,
                        outcome *o)
{
    memset(o, 0, sizeof *o);
    bool ok;
    struct curl_slist *headers = build_headers(c, req, token, &ok);
    CURL *h = ok ? pool_get(c) : NULL;
    if (!h) {
        free_headers(headers);
        o->rc = CERR_NOMEM;
        o->code = CURLE_OUT_OF_MEMORY;
        copy_str(o->errbuf, sizeof o->errbuf, "out of memory");
        return;
    }
    set_options(c, h, req, x, headers, o->errbuf);
    o->code = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &o->status);
    /* Drop our pointers from the handle before it goes back to the pool. */
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
    pool_put(c, h);
    free_headers(headers);
    if (o->code == CURLE_OK)
        return;
    if (x->too_big || x->down_errno || x->up_errno || x->up_short)
        o->rc = CERR_IO;
    else if (o->code == CURLE_OUT_OF_MEMORY ||
             (o->code == CURLE_WRITE_ERROR && !x->down_errno && !x->too_big))
        o->rc = CERR_NOMEM;
    if (!o->errbuf[0])
        copy_str(o->errbuf, sizeof o->errbuf, curl_easy_strerror(o->code));
}

static bool curl_code_retryable(CURLcode code)
{
    switch (code) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_PARTIAL_FILE:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR:
        return true;
    default:
        return false;
    }
}

/* The request cannot have reached the server. */
static bool never_sent(CURLcode code)
{
    return code == CURLE_COULDNT_CONNECT || code == CURLE_SSL_CONNECT_ERROR ||
           code == CURLE_COULDNT_RESOLVE_HOST;
}

/* The Retry-After of the last response in ms, or -1. */
static double retry_after_of(const xfer *x)
{
    http_response tmp = {.headers_raw = x->hdr, .headers_len = x->hlen};
    char v[128];
    if (!http_response_header(&tmp, "Retry-After", v, sizeof v))
        return -1;
    return http_parse_retry_after(v, (long)time(NULL));
}

static void xfer_reset(xfer *x)
{
    free(x->body);
    free(x->hdr);
    const http_request *req = x->req;
    size_t limit = x->limit;
    memset(x, 0, sizeof *x);
    x->req = req;
    x->limit = limit;
}

/* Gets a token into tok; on failure fills err and returns CERR_AUTH (the
 * credentials were refused), CERR_TIMEOUT (the deadline passed) or
 * CERR_TOKEN (anything else: it passes by itself). */
static int get_token(http_client *c, char *tok, size_t toklen, bool force, cerr_detail *err)
{
    cerr_detail e;
    memset(&e, 0, sizeof e);
    tok[0] = '\0';
    int r = c->token_fn(c->token_ctx, tok, toklen, force, &e);
    if (r != 0 || !tok[0] || !memchr(tok, '\0', toklen)) {
        wipe(tok, toklen);
        *err = e;
        /* The token endpoint's status (say 400 invalid_grant) says nothing
         * about this request: it stays in the message only. */
        err->http_status = 0;
        err->cls = r == CERR_AUTH || r == CERR_TIMEOUT ? r : CERR_TOKEN;
        if (!err->status[0])
            copy_str(err->status, sizeof err->status, "UNAUTHENTICATED");
        if (!err->message[0])
            copy_str(err->message, sizeof err->message, "could not obtain an access token");
        log_error("http: no access token: %s", err->message);
        return err->cls;
    }
    return CERR_OK;
}

/* Fills err for a failed attempt that produced no HTTP status. */
static int transport_error(const http_request *req, const xfer *x, const outcome *o,
                           const char *url, cerr_detail *err)
{
    memset(err, 0, sizeof *err);
    err->curl_code = (int)o->code;
    const char *m = req->method ? req->method : "GET";
    if (x->too_big) {
        set_message(err, "response body larger than max_body (%zu bytes) while %s %s", x->limit, m,
                    url);
        copy_str(err->status, sizeof err->status, "RESOURCE_EXHAUSTED");
        return CERR_IO;
    }
    if (x->down_errno || x->up_errno || x->up_short) {
        const char *what =
            x->down_errno ? "writing the response to fd" : "reading the body from fd";
        int fd = x->down_errno ? req->response_fd : req->body_fd;
        const char *why = x->up_short ? "file shorter than the given length"
                                      : strerror(x->down_errno ? x->down_errno : x->up_errno);
        set_message(err, "%s %d failed: %s while %s %s", what, fd, why, m, url);
        copy_str(err->status, sizeof err->status, "INTERNAL");
        return CERR_IO;
    }
    set_message(err, "%s while %s %s", o->errbuf, m, url);
    copy_str(err->status, sizeof err->status,
             o->code == CURLE_OPERATION_TIMEDOUT ? "DEADLINE_EXCEEDED" : "UNAVAILABLE");
    return o->rc ? o->rc : CERR_NETWORK;
}

/* Moves the final attempt's body and headers into resp. */
static void finish_response(xfer *x, const outcome *o, http_response *resp)
{
    resp->status = o->status;
    resp->headers_raw = x->hdr;
    resp->headers_len = x->hlen;
    x->hdr = NULL;
    if (to_fd(x) && !x->body) {
        resp->body = NULL;
        resp->body_len = (size_t)x->fd_written;
        return;
    }
    if (!x->body)
        x->body = calloc(1, 1);
    resp->body = x->body;
    resp->body_len = x->len;
    x->body = NULL;
}

/* Fills err for a call that ran out of its thread's deadline; last: what
 * the last attempt got ("" when none was made). */
static int deadline_error(const char *method, const char *url, const char *last, cerr_detail *err)
{
    memset(err, 0, sizeof *err);
    err->curl_code = CURLE_OPERATION_TIMEDOUT;
    copy_str(err->status, sizeof err->status, "DEADLINE_EXCEEDED");
    set_message(err, "%s %s: no answer within the %g s timeout (mount option timeout=)%s%s", method,
                url, deadline_length_s(), *last ? "; last attempt: " : "", last);
    log_warn("http: %s", err->message);
    return CERR_TIMEOUT;
}

/* What the last attempt got, for log lines. */
static void describe_outcome(const outcome *o, char *what, size_t len)
{
    if (o->code == CURLE_OK)
        snprintf(what, len, "HTTP %ld", o->status);
    else
        snprintf(what, len, "%s (curl %d)", o->errbuf, (int)o->code);
}

static int perform(http_client *c, const http_request *req, http_response *resp, cerr_detail *err)
{
    if (resp)
        memset(resp, 0, sizeof *resp);
    if (!c || !req || !resp || !req->url || (req->body_fd >= 0 && req->body_fd_len < 0) ||
        (req->body_len && !req->body && req->body_fd < 0)) {
        copy_str(err->status, sizeof err->status, "INVALID_ARGUMENT");
        copy_str(err->message, sizeof err->message, "http_perform: invalid arguments");
        return CERR_INVALID;
    }
    char url[512];
    url_for_log(req->url, url, sizeof url);
    const char *method = req->method ? req->method : "GET";
    if (c->token_fn && !req->no_auth && !http_url_safe_for_credentials(req->url)) {
        copy_str(err->status, sizeof err->status, "INVALID_ARGUMENT");
        set_message(err,
                    "refusing to send an access token in clear text to %s: use https:// (plain "
                    "http only to a loopback address, e.g. a local emulator)",
                    url);
        log_error("http: %s", err->message);
        return CERR_INVALID;
    }
    xfer x = {.req = req, .limit = req->max_body ? req->max_body : HTTP_DEFAULT_MAX_BODY};
    outcome o;
    memset(&o, 0, sizeof o);
    char tok[HTTP_TOKEN_MAX];
    char what[CURL_ERROR_SIZE + 32] = "";
    bool use_token = c->token_fn && !req->no_auth;
    bool force_refresh = false, auth_retried = false;
    double waited = 0;
    int retries = 0;
    int rc = CERR_OK;
    for (;;) {
        double left = deadline_remaining_ms();
        if (left == 0) {
            xfer_reset(&x);
            return deadline_error(method, url, what, err);
        }
        if (use_token && (rc = get_token(c, tok, sizeof tok, force_refresh, err)) != CERR_OK)
            break;
        xfer_reset(&x);
        left = deadline_remaining_ms(); /* the token may have taken a while */
        x.deadline_ms = left < 0 ? 0 : left < 1 ? 1 : (long)left;
        resp->attempts++;
        run_attempt(c, req, use_token ? tok : NULL, &x, &o);
        if (use_token)
            wipe(tok, sizeof tok);
        describe_outcome(&o, what, sizeof what);
        /* 401: the token was refused and nothing was done; refresh once. */
        if (o.code == CURLE_OK && o.status == 401 && use_token && !auth_retried) {
            auth_retried = force_refresh = true;
            log_info("http: %s %s: 401, refreshing the access token", method, url);
            continue;
        }
        force_refresh = false;
        /* curl's timer may fire a hair before ours. */
        double after = deadline_remaining_ms();
        if (o.code == CURLE_OPERATION_TIMEDOUT && after >= 0 && after < 100) {
            xfer_reset(&x);
            return deadline_error(method, url, what, err);
        }
        bool retryable = o.code == CURLE_OK ? http_status_retryable(o.status)
                                            : (!o.rc && curl_code_retryable(o.code) &&
                                               (!req->unless_unanswered || never_sent(o.code)));
        if (!retryable || !req->idempotent || retries + 1 >= c->retry.max_attempts)
            break;
        double ra = o.code == CURLE_OK ? retry_after_of(&x) : -1;
        double wait = http_backoff_ms(&c->retry, retries + 1, random_unit(), ra);
        if (c->retry.total_ms > 0 && waited + wait > c->retry.total_ms)
            break;
        left = deadline_remaining_ms();
        if (left >= 0 && wait >= left && o.code != CURLE_OK) {
            xfer_reset(&x); /* no answer, and no time left to ask again */
            return deadline_error(method, url, what, err);
        }
        if (left >= 0 && wait >= left)
            break; /* the caller cannot wait that long: the last answer stands */
        log_warn("http: %s %s: %s; attempt %d of %d failed, retrying in %.0f ms", method, url, what,
                 retries + 1, c->retry.max_attempts, wait);
        sleep_ms(wait);
        waited += wait;
        retries++;
    }
    if (rc != CERR_OK) { /* no token, possibly when refreshing after a 401 */
        xfer_reset(&x);
        return rc;
    }
    if (o.code != CURLE_OK) {
        rc = transport_error(req, &x, &o, url, err);
        xfer_reset(&x);
        return rc;
    }
    finish_response(&x, &o, resp);
    xfer_reset(&x);
    if (o.status >= 400) {
        http_error_decode(o.status, resp->body, resp->body_len, err);
        if (o.status == 401 && auth_retried)
            err->cls = CERR_AUTH; /* refused even a fresh token */
        return err->cls;
    }
    if (log_enabled(LOG_DEBUG))
        log_debug("http: %s %s -> %ld (%zu bytes, %d attempts)", method, url, o.status,
                  resp->body_len, resp->attempts);
    return CERR_OK;
}

int http_perform(http_client *c, const http_request *req, http_response *resp, cerr_detail *err)
{
    cerr_detail scratch;
    if (!err)
        err = &scratch;
    memset(err, 0, sizeof *err);
    int rc = perform(c, req, resp, err);
    err->cls = rc; /* every path above fills the rest */
    return rc;
}

bool http_response_header(const http_response *resp, const char *name, char *buf, size_t buflen)
{
    if (!resp || !resp->headers_raw || !name)
        return false;
    size_t nlen = strlen(name);
    const char *found = NULL;
    size_t found_len = 0;
    const char *p = resp->headers_raw, *end = resp->headers_raw + resp->headers_len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = eol ? eol : end;
        if ((size_t)(line_end - p) > nlen && p[nlen] == ':' && strncasecmp(p, name, nlen) == 0) {
            const char *v = p + nlen + 1;
            const char *ve = line_end;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            found = v;
            found_len = (size_t)(ve - v);
        }
        p = eol ? eol + 1 : end;
    }
    if (!found)
        return false;
    if (buf && buflen) {
        size_t n = found_len < buflen - 1 ? found_len : buflen - 1;
        memcpy(buf, found, n);
        buf[n] = '\0';
    }
    return true;
}
