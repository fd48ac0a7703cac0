/* gcs: Cloud Storage JSON API objects (see gcs.h). */
#include "gcs.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "multipart.h"
#include "util.h"

#define GCS_DEFAULT_ENDPOINT "https://storage.googleapis.com"
#define GCS_CHUNK_QUANTUM (256u * 1024u)
#define GCS_DEFAULT_THRESHOLD (8u * 1024u * 1024u)
#define GCS_DEFAULT_CHUNK (8u * 1024u * 1024u)
#define GCS_MAX_SESSIONS 3 /* new sessions after 404/410 on the session URI */
#define GCS_MAX_STALLS 8   /* failed chunk/status attempts without progress */
#define GCS_LIST_PAGE 1000
#define GCS_URL_BUF 8192 /* session URIs carry long upload ids */

struct gcs_client {
    http_client *http;
    char *endpoint; /* no trailing '/' */
    uint64_t threshold;
    uint64_t chunk;
};

/* The bytes of one upload: either a file range starting at offset 0 or memory. */
typedef struct gcs_source {
    int fd;
    const unsigned char *buf;
    uint64_t size;
} gcs_source;

/* ---- errors ---------------------------------------------------------------- */

static int nomem(cerr_detail *err)
{
    cerr_set(err, CERR_NOMEM, 0, "", "out of memory");
    return CERR_NOMEM;
}

static int bad_args(cerr_detail *err, const char *what)
{
    cerr_set(err, CERR_INVALID, 0, "INVALID_ARGUMENT", "%s: bad arguments", what);
    return CERR_INVALID;
}

/* Unexpected status or body: the server spoke, but not what the API promises. */
static int protocol_err(cerr_detail *err, const http_response *resp, const char *what,
                        const char *bucket, const char *name)
{
    cerr_set(err, CERR_MALFORMED, resp ? resp->status : 0, "INTERNAL",
             "%s: unexpected response for gs://%s/%s", what, bucket ? bucket : "",
             name ? name : "");
    log_error("gcs: %s", err->message);
    return CERR_MALFORMED;
}

/* ---- client ---------------------------------------------------------------- */

/* Scheme added when missing (STORAGE_EMULATOR_HOST is often "host:port";
 * see util_with_scheme), trailing slashes removed so paths can be appended
 * with '/'. */
static char *normalize_endpoint(const char *ep)
{
    size_t n;
    char *out = util_with_scheme(ep);
    if (!out)
        return NULL;
    n = strlen(out);
    while (n > 0 && out[n - 1] == '/')
        out[--n] = '\0';
    return out;
}

gcs_client *gcs_client_new(http_client *http, const char *endpoint)
{
    gcs_client *c;
    if (!http)
        return NULL;
    c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->http = http;
    c->endpoint =
        util_endpoint(endpoint, "STORAGE_EMULATOR_HOST", GCS_DEFAULT_ENDPOINT, normalize_endpoint);
    c->threshold = GCS_DEFAULT_THRESHOLD;
    c->chunk = GCS_DEFAULT_CHUNK;
    if (!c->endpoint) {
        free(c);
        return NULL;
    }
    return c;
}

void gcs_client_free(gcs_client *c)
{
    if (!c)
        return;
    free(c->endpoint);
    free(c);
}

const char *gcs_client_endpoint(const gcs_client *c)
{
    return c->endpoint;
}

void gcs_client_set_resumable_threshold(gcs_client *c, uint64_t threshold, uint64_t chunk)
{
    c->threshold = threshold;
    /* Every chunk but the last must be a multiple of 256 KiB. */
    chunk = chunk / GCS_CHUNK_QUANTUM * GCS_CHUNK_QUANTUM;
    c->chunk = chunk ? chunk : GCS_CHUNK_QUANTUM;
}

/* ---- objects ---------------------------------------------------------------- */

void gcs_object_clear(gcs_object *o)
{
    if (!o)
        return;
    free(o->bucket);
    free(o->name);
    free(o->content_type);
    memset(o, 0, sizeof(*o));
}

/* int64/uint64 fields are JSON strings in the API; numbers are tolerated. */
static bool json_u64(const cJSON *v, uint64_t *out)
{
    if (cJSON_IsString(v)) {
        const char *s = v->valuestring;
        char *end;
        unsigned long long x;
        if (!s || *s < '0' || *s > '9')
            return false;
        errno = 0;
        x = strtoull(s, &end, 10);
        if (errno || *end)
            return false;
        *out = x;
        return true;
    }
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (!(d >= 0 && d < 18446744073709551616.0))
            return false;
        *out = (uint64_t)d;
        return true;
    }
    return false;
}

static bool copy_str(const cJSON *v, char **out)
{
    if (!cJSON_IsString(v) || !v->valuestring)
        return true; /* absent: leave NULL */
    *out = strdup(v->valuestring);
    return *out != NULL;
}

static int object_from_cjson(const cJSON *j, gcs_object *out)
{
    const cJSON *v;
    uint64_t u;
    memset(out, 0, sizeof(*out));
    if (!cJSON_IsObject(j))
        return CERR_MALFORMED;
    v = cJSON_GetObjectItemCaseSensitive(j, "name");
    if (!cJSON_IsString(v) || !v->valuestring)
        return CERR_MALFORMED;
    if (!copy_str(v, &out->name) ||
        !copy_str(cJSON_GetObjectItemCaseSensitive(j, "bucket"), &out->bucket) ||
        !copy_str(cJSON_GetObjectItemCaseSensitive(j, "contentType"), &out->content_type)) {
        gcs_object_clear(out);
        return CERR_NOMEM;
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "size");
    if (v && !json_u64(v, &out->size))
        goto bad;
    v = cJSON_GetObjectItemCaseSensitive(j, "generation");
    if (v) {
        if (!json_u64(v, &u) || u > INT64_MAX)
            goto bad;
        out->generation = (int64_t)u;
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "md5Hash");
    if (cJSON_IsString(v) && v->valuestring) {
        if (strlen(v->valuestring) >= sizeof(out->md5_b64))
            goto bad;
        strcpy(out->md5_b64, v->valuestring);
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "crc32c");
    if (cJSON_IsString(v) && v->valuestring) {
        if (strlen(v->valuestring) >= sizeof(out->crc32c_b64))
            goto bad;
        strcpy(out->crc32c_b64, v->valuestring);
    }
    return CERR_OK;
bad:
    gcs_object_clear(out);
    return CERR_MALFORMED;
}

int gcs_object_from_json(const char *json, size_t len, gcs_object *out)
{
    cJSON *j;
    int rc;
    if (!out)
        return CERR_INVALID;
    memset(out, 0, sizeof(*out));
    if (!json)
        return CERR_INVALID;
    j = cJSON_ParseWithLength(json, len);
    if (!j)
        return CERR_MALFORMED;
    rc = object_from_cjson(j, out);
    cJSON_Delete(j);
    return rc;
}

uint32_t gcs_crc32c(uint32_t crc, const void *data, size_t len)
{
    return util_crc32c(crc, data, len);
}

/* ---- checksums of what we send ----------------------------------------------- */

/* Integrity is checked by CRC32C and size only, as Google recommends for
 * Cloud Storage: composite objects carry no md5Hash at all, and an MD5 pass
 * cost seconds of CPU per GiB plus a second read of every file. The CRC32C
 * is not a pass of its own either: it is fed by the http body observer with
 * the bytes as libcurl takes them, so the source is read once, and what is
 * summed is exactly what was sent. */
typedef struct gcs_sum {
    uint32_t crc;  /* CRC32C of the object's bytes [0, next) */
    uint64_t next; /* each byte below next was counted exactly once */
    bool gap;      /* bytes beyond next were sent: the sum cannot be trusted */
} gcs_sum;

/* One request's view of the sum: its body starts at object offset base. */
typedef struct sum_feed {
    gcs_sum *sum;
    uint64_t base;
} sum_feed;

/* http_body_observer. A piece starting at object offset 0 is a send from the
 * start (a retried media request, a new session's first chunk): the sum
 * restarts. Otherwise a resend of bytes already counted (libcurl's rewind, a
 * retried resumable chunk) is skipped, so no byte is counted twice. */
static void sum_observe(void *ctx, uint64_t offset, const void *data, size_t len)
{
    const sum_feed *f = ctx;
    gcs_sum *s = f->sum;
    uint64_t at = f->base + offset, end = at + len;
    if (at == 0) {
        s->crc = 0;
        s->next = 0;
        s->gap = false;
    }
    if (at > s->next) {
        s->gap = true;
        return;
    }
    if (end <= s->next)
        return;
    s->crc = gcs_crc32c(s->crc, (const unsigned char *)data + (s->next - at), end - s->next);
    s->next = end;
}

/* The CRC32C of the whole source, reading it once (pread, 256 KiB at a time:
 * the file is never held whole). Only used when the streamed sum has a gap. */
static int read_crc(const gcs_source *src, uint32_t *crc, cerr_detail *err)
{
    unsigned char *buf;
    uint64_t off = 0;
    *crc = 0;
    if (src->buf) {
        *crc = gcs_crc32c(0, src->buf, src->size);
        return CERR_OK;
    }
    buf = malloc(GCS_CHUNK_QUANTUM);
    if (!buf)
        return nomem(err);
    while (off < src->size) {
        size_t want =
            src->size - off < GCS_CHUNK_QUANTUM ? (size_t)(src->size - off) : GCS_CHUNK_QUANTUM;
        ssize_t n = pread(src->fd, buf, want, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            cerr_set(err, CERR_IO, 0, "", "reading upload source at offset %" PRIu64 ": %s", off,
                     n < 0 ? strerror(errno) : "file shorter than its size");
            log_error("gcs: %s", err->message);
            free(buf);
            return CERR_IO;
        }
        *crc = gcs_crc32c(*crc, buf, (size_t)n);
        off += (uint64_t)n;
    }
    free(buf);
    return CERR_OK;
}

/* The base64 CRC32C of what was sent, as GCS reports it: the streamed sum
 * when it covers every byte exactly once, else one read pass. */
static int sent_crc32c(const gcs_source *src, const gcs_sum *sum, const char *bucket,
                       const char *name, char out[16], cerr_detail *err)
{
    uint32_t crc = sum->crc;
    unsigned char b[4];
    if (sum->gap || sum->next != src->size) {
        log_info("gcs: upload of gs://%s/%s: streamed crc32c covers %" PRIu64 " of %" PRIu64
                 " bytes%s; reading the source again",
                 bucket, name, sum->next, src->size, sum->gap ? " with a gap" : "");
        int rc = read_crc(src, &crc, err);
        if (rc != CERR_OK)
            return rc;
    }
    b[0] = (unsigned char)(crc >> 24); /* GCS encodes crc32c big-endian */
    b[1] = (unsigned char)(crc >> 16);
    b[2] = (unsigned char)(crc >> 8);
    b[3] = (unsigned char)crc;
    EVP_EncodeBlock((unsigned char *)out, b, 4);
    return CERR_OK;
}

/* The object the server reports must match what we sent, by size and
 * crc32c. A missing crc32c cannot be checked; the size still is. */
static int verify_object(const gcs_object *o, const char *crc_b64, uint64_t size,
                         const char *bucket, const char *name, cerr_detail *err)
{
    const char *what = NULL;
    if (o->size != size)
        what = "size";
    else if (o->crc32c_b64[0] && strcmp(o->crc32c_b64, crc_b64) != 0)
        what = "crc32c";
    if (what) {
        cerr_set(err, CERR_CHECKSUM, 0, "DATA_LOSS",
                 "upload of gs://%s/%s: server %s differs from the data sent (sent crc32c %s "
                 "size %" PRIu64 "; server crc32c %s size %" PRIu64 ")",
                 bucket, name, what, crc_b64, size, o->crc32c_b64, o->size);
        log_error("gcs: %s", err->message);
        return CERR_CHECKSUM;
    }
    if (!o->crc32c_b64[0])
        log_warn("gcs: upload of gs://%s/%s: server returned no crc32c to verify", bucket, name);
    return CERR_OK;
}

static int finish_upload(const http_response *resp, const gcs_source *src, const gcs_sum *sum,
                         const char *bucket, const char *name, gcs_object *out, cerr_detail *err)
{
    gcs_object o;
    char crc[16];
    int rc = gcs_object_from_json(resp->body, resp->body_len, &o);
    if (rc == CERR_NOMEM)
        return nomem(err);
    if (rc != CERR_OK)
        return protocol_err(err, resp, "upload", bucket, name);
    rc = sent_crc32c(src, sum, bucket, name, crc, err);
    if (rc == CERR_OK)
        rc = verify_object(&o, crc, src->size, bucket, name, err);
    if (rc == CERR_OK && out)
        *out = o;
    else
        gcs_object_clear(&o);
    return rc;
}

/* ---- URLs ------------------------------------------------------------------- */

static char *object_url(const gcs_client *c, const char *bucket, const char *name,
                        const char *suffix)
{
    char *eb = http_escape(bucket), *en = http_escape(name), *url = NULL;
    if (eb && en)
        url = util_asprintf("%s/storage/v1/b/%s/o/%s%s", c->endpoint, eb, en, suffix ? suffix : "");
    free(eb);
    free(en);
    return url;
}

static char *upload_url(const gcs_client *c, const char *bucket, const char *name, const char *type)
{
    char *eb = http_escape(bucket), *en = http_escape(name), *url = NULL;
    if (eb && en)
        url = util_asprintf("%s/upload/storage/v1/b/%s/o?uploadType=%s&name=%s", c->endpoint, eb,
                            type, en);
    free(eb);
    free(en);
    return url;
}

/* ---- uploads -------------------------------------------------------------- */

/* The body is [off, off+len) of the source; feed (when given, its base set
 * here) sums the bytes as they are sent. */
static void set_body(http_request *req, const gcs_source *src, uint64_t off, uint64_t len,
                     sum_feed *feed)
{
    if (feed && len) {
        feed->base = off;
        req->body_observer = sum_observe;
        req->body_observer_ctx = feed;
    }
    if (len == 0) {
        req->body = "";
        req->body_len = 0;
    } else if (src->buf) {
        req->body = src->buf + off;
        req->body_len = (size_t)len;
    } else {
        req->body_fd = src->fd;
        req->body_fd_offset = (off_t)off;
        req->body_fd_len = (off_t)len;
    }
}

/* One idempotent POST (the media upload, a resumable session start, a
 * batch: each is safe to repeat, see its caller) of the whole of src;
 * feed as for set_body. */
static int post_idempotent(gcs_client *c, const char *url, const char *const *hdrs,
                           const gcs_source *src, sum_feed *feed, http_response *resp,
                           cerr_detail *err)
{
    http_request req;
    http_request_init(&req);
    req.method = "POST";
    req.url = url;
    req.headers = hdrs;
    req.idempotent = true;
    set_body(&req, src, 0, src->size, feed);
    return http_perform(c->http, &req, resp, err);
}

/* A source over an in-memory body. */
static gcs_source mem_source(const char *body, size_t len)
{
    return (gcs_source){.fd = -1, .buf = (const unsigned char *)body, .size = len};
}

/* One media request. A new object name with identical content is safe to
 * send twice: if the first attempt succeeded unseen, the retry just writes
 * the same bytes again as a new generation. ifGenerationMatch=0 would turn
 * that case into a spurious 412, so the upload is marked idempotent instead. */
static int upload_simple(gcs_client *c, const char *bucket, const char *name, const gcs_source *src,
                         const char *ctype, gcs_sum *sum, gcs_object *out, cerr_detail *err)
{
    sum_feed feed = {.sum = sum};
    http_response resp = {0};
    char *url = upload_url(c, bucket, name, "media");
    char *cth = util_asprintf("Content-Type: %s", ctype);
    const char *hdrs[] = {cth, NULL};
    int rc;

    if (!url || !cth) {
        free(url);
        free(cth);
        return nomem(err);
    }
    rc = post_idempotent(c, url, hdrs, src, &feed, &resp, err);
    if (rc == CERR_OK && resp.status != 200 && resp.status != 201)
        rc = protocol_err(err, &resp, "media upload", bucket, name);
    else if (rc == CERR_OK)
        rc = finish_upload(&resp, src, sum, bucket, name, out, err);
    http_response_free(&resp);
    free(url);
    free(cth);
    return rc;
}

#define SIZE_UNKNOWN UINT64_MAX /* a stream: the size comes with the last chunk */

/* Starts a resumable session; *session gets the Location URI. Starting a
 * session has no visible effect (an unused one expires), so it is retried.
 * size is announced (X-Upload-Content-Length) unless SIZE_UNKNOWN. */
static int session_start(gcs_client *c, const char *bucket, const char *name, uint64_t size,
                         const char *ctype, char **session, cerr_detail *err)
{
    http_response resp = {0};
    char *url = upload_url(c, bucket, name, "resumable");
    char *xct = util_asprintf("X-Upload-Content-Type: %s", ctype);
    char *xcl =
        size == SIZE_UNKNOWN ? NULL : util_asprintf("X-Upload-Content-Length: %" PRIu64, size);
    const char *hdrs[] = {"Content-Type: application/json; charset=UTF-8", xct, xcl, NULL};
    cJSON *meta = cJSON_CreateObject();
    char *body = NULL, loc[GCS_URL_BUF];
    int rc = CERR_NOMEM;

    *session = NULL;
    if (!url || !xct || (size != SIZE_UNKNOWN && !xcl) || !meta ||
        !cJSON_AddStringToObject(meta, "name", name) ||
        !cJSON_AddStringToObject(meta, "contentType", ctype) ||
        !(body = cJSON_PrintUnformatted(meta))) {
        rc = nomem(err);
        goto out;
    }
    gcs_source meta_src = mem_source(body, strlen(body));
    rc = post_idempotent(c, url, hdrs, &meta_src, NULL, &resp, err);
    if (rc != CERR_OK) {
        /* err says why: the http layer filled it */
    } else if ((resp.status != 200 && resp.status != 201) ||
               !http_response_header(&resp, "Location", loc, sizeof(loc)) || !loc[0]) {
        rc = protocol_err(err, &resp, "resumable session start (no Location)", bucket, name);
    } else {
        /* Normally absolute; a bare path is taken relative to the endpoint. */
        *session = strstr(loc, "://")
                       ? strdup(loc)
                       : util_asprintf("%s%s%s", c->endpoint, loc[0] == '/' ? "" : "/", loc);
        rc = *session ? CERR_OK : nomem(err);
    }
out:
    http_response_free(&resp);
    cJSON_Delete(meta);
    cJSON_free(body);
    free(url);
    free(xct);
    free(xcl);
    return rc;
}

/* Next offset from a 308: "Range: bytes=0-N" means N+1 bytes persisted; no
 * Range means none. Returns false for a malformed or impossible range. */
static bool next_offset_from_308(const http_response *resp, uint64_t size, uint64_t *next)
{
    char range[128];
    const char *p, *dash;
    char *end;
    unsigned long long last;
    if (!http_response_header(resp, "Range", range, sizeof(range))) {
        *next = 0;
        return true;
    }
    p = range;
    if (strncmp(p, "bytes=", 6) == 0)
        p += 6;
    dash = strchr(p, '-');
    if (!dash || strtoull(p, NULL, 10) != 0 || dash[1] < '0' || dash[1] > '9')
        return false;
    errno = 0;
    last = strtoull(dash + 1, &end, 10);
    if (errno || (*end && *end != ' ' && *end != '\r') || last >= size)
        return false;
    *next = (uint64_t)last + 1;
    return true;
}

typedef enum {
    STEP_DONE,     /* resp holds the final object (200/201) */
    STEP_CONTINUE, /* *off updated from a 308 */
    STEP_RETRY,    /* interrupted (transport or 408/429/5xx): query the status */
    STEP_RESTART,  /* session gone (404/410): open a new one */
    STEP_FAIL,     /* rc holds the error */
} step_result;

static step_result classify(int hrc, const http_response *resp, uint64_t size, uint64_t *off,
                            int *rc, const char *bucket, const char *name, cerr_detail *err)
{
    if (hrc == CERR_NETWORK || hrc == CERR_TIMEOUT)
        return STEP_RETRY;
    if (hrc != CERR_OK && err->http_status >= 400) { /* the server answered */
        if (resp->status == 404 || resp->status == 410)
            return STEP_RESTART;
        if (http_status_retryable(resp->status))
            return STEP_RETRY;
        *rc = hrc;
        return STEP_FAIL;
    }
    if (hrc != CERR_OK) {
        *rc = hrc;
        return STEP_FAIL;
    }
    if (resp->status == 200 || resp->status == 201)
        return STEP_DONE;
    if (resp->status == 308 && next_offset_from_308(resp, size, off))
        return STEP_CONTINUE;
    *rc = protocol_err(err, resp, "resumable upload", bucket, name);
    return STEP_FAIL;
}

/* PUT of [off, off+len) of the source, or a status query when query is set
 * ("Content-Range: bytes * /TOTAL", empty body). Chunk PUTs are not retried by
 * the http layer: after an interruption the server's persisted offset is
 * asked for instead, since it may differ from what was sent. */
static int session_put(gcs_client *c, const char *session, const gcs_source *src, uint64_t off,
                       uint64_t len, bool query, gcs_sum *sum, http_response *resp,
                       cerr_detail *err)
{
    http_request req;
    sum_feed feed = {.sum = sum};
    char cr[96];
    const char *hdrs[] = {cr, NULL};
    if (query || src->size == 0)
        snprintf(cr, sizeof(cr), "Content-Range: bytes */%" PRIu64, src->size);
    else
        snprintf(cr, sizeof(cr), "Content-Range: bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, off,
                 off + len - 1, src->size);
    http_request_init(&req);
    req.method = "PUT";
    req.url = session;
    req.headers = hdrs;
    req.idempotent = query;
    set_body(&req, src, off, query ? 0 : len, &feed);
    memset(resp, 0, sizeof(*resp));
    return http_perform(c->http, &req, resp, err);
}

static void sleep_ms(double ms)
{
    struct timespec ts;
    if (ms <= 0)
        return;
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)((ms - (double)ts.tv_sec * 1000) * 1e6);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static double jitter(void)
{
    static _Thread_local unsigned int seed;
    if (!seed)
        seed = (unsigned int)time(NULL) ^ (unsigned int)(uintptr_t)&seed;
    return (double)rand_r(&seed) / ((double)RAND_MAX + 1.0);
}

/* A request that moved the persisted offset nowhere (kind: "" or
 * "streaming "): after GCS_MAX_STALLS in a row the upload fails; after an
 * interruption it waits a backoff and *query makes the next request ask the
 * server what it holds, since that may differ from what was sent. */
static int no_progress(int *stalls, step_result st, uint64_t off, bool *query, const char *kind,
                       const char *bucket, const char *name, cerr_detail *err)
{
    const http_retry_policy backoff = {GCS_MAX_STALLS, 250, 8000, 120000};
    if (++*stalls >= GCS_MAX_STALLS) {
        if (st == STEP_CONTINUE)
            cerr_set(err, CERR_UNAVAILABLE, 308, "ABORTED",
                     "upload of gs://%s/%s: no progress at offset %" PRIu64, bucket, name, off);
        log_error("gcs: %supload of gs://%s/%s failed after %d attempts without progress: %s", kind,
                  bucket, name, *stalls, err->message);
        return err->cls; /* the last interruption's class, or no progress */
    }
    *query = st == STEP_RETRY;
    if (st == STEP_RETRY) {
        log_warn("gcs: %supload of gs://%s/%s interrupted at offset %" PRIu64
                 " (%s), asking the server what it has",
                 kind, bucket, name, off, err->message);
        sleep_ms(http_backoff_ms(&backoff, *stalls, jitter(), -1));
    }
    return CERR_OK;
}

static int upload_resumable(gcs_client *c, const char *bucket, const char *name,
                            const gcs_source *src, const char *ctype, gcs_sum *sum, gcs_object *out,
                            cerr_detail *err)
{
    char *session = NULL;
    uint64_t off = 0;
    int sessions = 0, stalls = 0, rc = CERR_OK;
    bool query = false;

    for (;;) {
        http_response resp;
        uint64_t before = off, len;
        step_result st;
        int hrc;

        if (!session) {
            if (++sessions > GCS_MAX_SESSIONS) {
                rc = cerr_set(err, CERR_UNAVAILABLE, 0, "ABORTED",
                              "upload of gs://%s/%s: upload session lost %d times", bucket, name,
                              GCS_MAX_SESSIONS);
                log_error("gcs: %s", err->message);
                break;
            }
            rc = session_start(c, bucket, name, src->size, ctype, &session, err);
            if (rc != CERR_OK)
                break;
            off = 0;
            query = false;
        }
        /* Everything persisted but not finalized: only a status query remains. */
        if (off == src->size && src->size > 0)
            query = true;
        len = src->size - off < c->chunk ? src->size - off : c->chunk;
        hrc = session_put(c, session, src, off, len, query, sum, &resp, err);
        st = classify(hrc, &resp, src->size, &off, &rc, bucket, name, err);
        if (st == STEP_DONE)
            rc = finish_upload(&resp, src, sum, bucket, name, out, err);
        http_response_free(&resp);
        if (st == STEP_DONE || st == STEP_FAIL)
            break;
        if (st == STEP_RESTART) {
            log_warn("gcs: upload of gs://%s/%s: session gone (HTTP %ld), starting over", bucket,
                     name, err->http_status);
            free(session);
            session = NULL;
            continue;
        }
        if (st == STEP_CONTINUE && off > before) {
            stalls = 0;
            query = false;
            continue;
        }
        /* No progress: interrupted, or a 308 that persisted nothing new. */
        rc = no_progress(&stalls, st, off, &query, "", bucket, name, err);
        if (rc != CERR_OK)
            break;
    }
    free(session);
    return rc;
}

static int upload(gcs_client *c, const char *bucket, const char *name, const gcs_source *src,
                  const char *content_type, gcs_object *out, cerr_detail *err)
{
    gcs_sum sum = {0};
    const char *ctype = content_type && *content_type ? content_type : "application/octet-stream";
    if (out)
        memset(out, 0, sizeof(*out));
    if (!bucket || !*bucket || !name || !*name) {
        cerr_set(err, CERR_INVALID, 0, "INVALID_ARGUMENT", "upload: empty bucket or object name");
        return CERR_INVALID;
    }
    /* The CRC32C is summed while the bytes are sent (sum_observe). */
    if (src->size <= c->threshold)
        return upload_simple(c, bucket, name, src, ctype, &sum, out, err);
    return upload_resumable(c, bucket, name, src, ctype, &sum, out, err);
}

int gcs_upload_fd(gcs_client *c, const char *bucket, const char *name, int fd, uint64_t size,
                  const char *content_type, gcs_object *out, cerr_detail *err)
{
    cerr_detail dummy;
    gcs_source src = {.fd = fd, .buf = NULL, .size = size};
    if (!err)
        err = &dummy;
    if (!c || fd < 0)
        return bad_args(err, "upload");
    return upload(c, bucket, name, &src, content_type, out, err);
}

int gcs_upload_buf(gcs_client *c, const char *bucket, const char *name, const void *data,
                   size_t len, const char *content_type, gcs_object *out, cerr_detail *err)
{
    cerr_detail dummy;
    gcs_source src = {.fd = -1, .buf = data ? data : (const void *)"", .size = len};
    if (!err)
        err = &dummy;
    if (!c || (!data && len))
        return bad_args(err, "upload");
    return upload(c, bucket, name, &src, content_type, out, err);
}

/* ---- metadata, download, delete ---------------------------------------------- */

/* One idempotent request without a body; the response goes to memory or, with
 * fd >= 0, to fd at fd_offset. resp is always safe to free afterwards. */
static int perform_idempotent(gcs_client *c, const char *method, const char *url,
                              const char *const *hdrs, int fd, off_t fd_offset, http_response *resp,
                              cerr_detail *err)
{
    http_request req;
    http_request_init(&req);
    req.method = method;
    req.url = url;
    req.headers = hdrs;
    req.response_fd = fd;
    req.response_fd_offset = fd_offset;
    req.idempotent = true;
    memset(resp, 0, sizeof(*resp));
    return http_perform(c->http, &req, resp, err);
}

/* perform_idempotent on the object's URL (suffix appended). */
static int object_call(gcs_client *c, const char *method, const char *bucket, const char *name,
                       const char *suffix, const char *const *hdrs, int fd, off_t fd_offset,
                       http_response *resp, cerr_detail *err)
{
    char *url = object_url(c, bucket, name, suffix);
    int rc;
    memset(resp, 0, sizeof(*resp));
    if (!url)
        return nomem(err);
    rc = perform_idempotent(c, method, url, hdrs, fd, fd_offset, resp, err);
    free(url);
    return rc;
}

int gcs_stat(gcs_client *c, const char *bucket, const char *name, gcs_object *out, cerr_detail *err)
{
    cerr_detail dummy;
    http_response resp;
    int rc;
    if (!err)
        err = &dummy;
    if (out)
        memset(out, 0, sizeof(*out));
    if (!c || !bucket || !name || !out)
        return bad_args(err, "stat");
    rc = object_call(c, "GET", bucket, name, NULL, NULL, -1, 0, &resp, err);
    if (rc == CERR_OK) {
        rc = gcs_object_from_json(resp.body, resp.body_len, out);
        if (rc == CERR_MALFORMED || resp.status != 200) {
            gcs_object_clear(out);
            rc = protocol_err(err, &resp, "stat", bucket, name);
        } else if (rc != CERR_OK) {
            nomem(err);
        }
    }
    http_response_free(&resp);
    return rc;
}

int gcs_download_fd(gcs_client *c, const char *bucket, const char *name, uint64_t offset,
                    uint64_t len, int fd, off_t fd_offset, uint64_t *written, cerr_detail *err)
{
    cerr_detail dummy;
    http_response resp;
    char range[96];
    const char *hdrs[] = {range, NULL};
    bool ranged = offset > 0 || len > 0;
    int rc;
    if (!err)
        err = &dummy;
    if (written)
        *written = 0;
    if (!c || !bucket || !name || fd < 0 || (len > 0 && offset + len < offset))
        return bad_args(err, "download");
    if (len > 0)
        snprintf(range, sizeof(range), "Range: bytes=%" PRIu64 "-%" PRIu64, offset,
                 offset + len - 1);
    else
        snprintf(range, sizeof(range), "Range: bytes=%" PRIu64 "-", offset);
    rc = object_call(c, "GET", bucket, name, "?alt=media", ranged ? hdrs : NULL, fd, fd_offset,
                     &resp, err);
    if (rc == CERR_OK && resp.status != (ranged ? 206 : 200)) {
        /* A 200 to a ranged request would be the whole object written at the
         * wrong place: refuse it rather than hand back wrong bytes. */
        rc = protocol_err(err, &resp, ranged ? "ranged download (expected 206)" : "download",
                          bucket, name);
    } else if (rc == CERR_OK && written) {
        *written = resp.body_len;
    }
    http_response_free(&resp);
    return rc;
}

/* A retried delete whose first attempt succeeded unseen answers 404; callers
 * treat 404 (CERR_NOT_FOUND, http_status 404) as "already gone". */
int gcs_delete(gcs_client *c, const char *bucket, const char *name, cerr_detail *err)
{
    cerr_detail dummy;
    http_response resp;
    int rc;
    if (!err)
        err = &dummy;
    if (!c || !bucket || !name)
        return bad_args(err, "delete");
    rc = object_call(c, "DELETE", bucket, name, NULL, NULL, -1, 0, &resp, err);
    if (rc == CERR_OK && resp.status != 200 && resp.status != 204)
        rc = protocol_err(err, &resp, "delete", bucket, name);
    http_response_free(&resp);
    return rc;
}

/* ---- batch delete -------------------------------------------------------------- */

typedef struct batch_parse {
    long *status;
    size_t n;
    size_t next; /* position of the next part (for answers without Content-ID) */
} batch_parse;

/* "HTTP/1.1 204 No Content" at the start of an inner response: the status. */
static long inner_status(const char *p, size_t len)
{
    if (len < 12 || strncmp(p, "HTTP/", 5) != 0)
        return 0;
    const char *sp = memchr(p, ' ', len < 16 ? len : 16);
    if (!sp || (size_t)(sp - p) + 4 > len)
        return 0;
    long st = 0;
    for (int i = 1; i <= 3; i++) {
        if (sp[i] < '0' || sp[i] > '9')
            return 0;
        st = st * 10 + (sp[i] - '0');
    }
    size_t after = (size_t)(sp - p) + 4;
    if (after < len && sp[4] != ' ' && sp[4] != '\r' && sp[4] != '\n')
        return 0;
    return st >= 100 && st <= 599 ? st : 0;
}

/* "response-7" or "<response-7>" -> 7; 0 for anything else. */
static size_t response_id(const char *cid)
{
    size_t n = strlen(cid);
    if (n >= 2 && cid[0] == '<' && cid[n - 1] == '>') {
        cid++;
        n -= 2;
    }
    if (n < 10 || strncmp(cid, "response-", 9) != 0 || n - 9 > 6)
        return 0;
    size_t id = 0;
    for (size_t i = 9; i < n; i++) {
        if (cid[i] < '0' || cid[i] > '9')
            return 0;
        id = id * 10 + (size_t)(cid[i] - '0');
    }
    return id;
}

static int batch_part(void *ctx, const multipart_part *part)
{
    batch_parse *b = ctx;
    char cid[128];
    size_t idx = b->next++;
    if (multipart_part_header(part, "Content-ID", cid, sizeof cid) == CERR_OK) {
        size_t id = response_id(cid);
        if (id == 0)
            return CERR_MALFORMED;
        idx = id - 1;
    }
    long st = inner_status(part->body, part->body_len);
    if (idx >= b->n || b->status[idx] != 0 || st == 0)
        return CERR_MALFORMED;
    b->status[idx] = st;
    return 0;
}

int gcs_batch_parse(const char *content_type, const char *body, size_t len, long *status, size_t n)
{
    if (!content_type || strncasecmp(content_type, "multipart/mixed", 15) != 0 || !status)
        return CERR_MALFORMED;
    char *boundary = multipart_content_type_param(content_type, "boundary");
    if (!boundary)
        return CERR_MALFORMED;
    batch_parse b = {.status = status, .n = n};
    int rc = multipart_parse(body, len, boundary, batch_part, &b, NULL, 0);
    free(boundary);
    return rc == CERR_NOMEM ? CERR_NOMEM : rc != CERR_OK ? CERR_MALFORMED : CERR_OK;
}

/* The request body: part i+1 holds "DELETE /storage/v1/b/B/o/NAME". */
static char *batch_body(const char *boundary, const char *bucket, const char *const *names,
                        size_t n, size_t *len)
{
    char *out = NULL, *eb = http_escape(bucket);
    FILE *f = eb ? open_memstream(&out, len) : NULL;
    bool ok = f != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        char *en = http_escape(names[i]);
        ok = en && fprintf(f,
                           "--%s\r\nContent-Type: application/http\r\nContent-ID: <%zu>\r\n\r\n"
                           "DELETE /storage/v1/b/%s/o/%s HTTP/1.1\r\n\r\n\r\n",
                           boundary, i + 1, eb, en) > 0;
        free(en);
    }
    if (ok)
        ok = fprintf(f, "--%s--\r\n", boundary) > 0;
    if (f && fclose(f) != 0)
        ok = false;
    free(eb);
    if (!ok) {
        free(out);
        return NULL;
    }
    return out;
}

int gcs_delete_batch(gcs_client *c, const char *bucket, const char *const *names, size_t n,
                     long *status, cerr_detail *err)
{
    cerr_detail dummy;
    if (!err)
        err = &dummy;
    if (!c || !bucket || !names || !status || n == 0 || n > GCS_BATCH_MAX)
        return bad_args(err, "batch delete");
    memset(status, 0, n * sizeof *status);
    const char *boundary = "dicomfs_batch_6b1f0c";
    size_t len = 0;
    char *body = batch_body(boundary, bucket, names, n, &len);
    char *url = util_asprintf("%s/batch/storage/v1", c->endpoint);
    char *cth = util_asprintf("Content-Type: multipart/mixed; boundary=%s", boundary);
    const char *hdrs[] = {cth, NULL};
    http_response resp = {0};
    int rc = CERR_NOMEM;
    if (body && url && cth) {
        /* Idempotent: a repeated delete answers 404 = gone. */
        gcs_source batch_src = mem_source(body, len);
        rc = post_idempotent(c, url, hdrs, &batch_src, NULL, &resp, err);
        char ct[256] = "";
        if (rc == CERR_OK &&
            (resp.status != 200 || !http_response_header(&resp, "Content-Type", ct, sizeof ct) ||
             gcs_batch_parse(ct, resp.body, resp.body_len, status, n) != CERR_OK)) {
            memset(status, 0, n * sizeof *status);
            rc = protocol_err(err, &resp, "batch delete", bucket, names[0]);
        }
    } else {
        rc = nomem(err);
    }
    http_response_free(&resp);
    free(body);
    free(url);
    free(cth);
    return rc;
}

/* ---- list -------------------------------------------------------------------- */

static int append_param(char **url, const char *key, const char *value)
{
    char *ev, *n;
    if (!value)
        return CERR_OK;
    ev = http_escape(value);
    n = ev ? util_asprintf("%s&%s=%s", *url, key, ev) : NULL;
    free(ev);
    if (!n)
        return CERR_NOMEM;
    free(*url);
    *url = n;
    return CERR_OK;
}

/* Delivers one page's items and prefixes. Returns CERR_OK, CERR_MALFORMED or
 * CERR_NOMEM; *stop gets the callback's non-zero value when it stopped. */
static int list_page(const cJSON *page, gcs_list_cb cb, void *ctx, int *stop)
{
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(page, "items");
    const cJSON *prefixes = cJSON_GetObjectItemCaseSensitive(page, "prefixes");
    const cJSON *it;
    int rc;
    if ((items && !cJSON_IsArray(items)) || (prefixes && !cJSON_IsArray(prefixes)))
        return CERR_MALFORMED;
    cJSON_ArrayForEach(it, items)
    {
        gcs_object o;
        rc = object_from_cjson(it, &o);
        if (rc != CERR_OK)
            return rc;
        *stop = cb(ctx, &o, NULL);
        gcs_object_clear(&o);
        if (*stop)
            return CERR_OK;
    }
    cJSON_ArrayForEach(it, prefixes)
    {
        if (!cJSON_IsString(it) || !it->valuestring)
            return CERR_MALFORMED;
        *stop = cb(ctx, NULL, it->valuestring);
        if (*stop)
            return CERR_OK;
    }
    return CERR_OK;
}

int gcs_list(gcs_client *c, const char *bucket, const char *prefix, const char *delimiter,
             gcs_list_cb cb, void *ctx, cerr_detail *err)
{
    cerr_detail dummy;
    char *token = NULL, *eb;
    int rc = CERR_OK, stop = 0;
    if (!err)
        err = &dummy;
    if (!c || !bucket || !*bucket || !cb)
        return bad_args(err, "list");
    eb = http_escape(bucket);
    if (!eb)
        return nomem(err);
    do {
        http_response resp;
        cJSON *page = NULL;
        char *url =
            util_asprintf("%s/storage/v1/b/%s/o?maxResults=%d", c->endpoint, eb, GCS_LIST_PAGE);
        if (!url || append_param(&url, "prefix", prefix && *prefix ? prefix : NULL) ||
            append_param(&url, "delimiter", delimiter && *delimiter ? delimiter : NULL) ||
            append_param(&url, "pageToken", token)) {
            free(url);
            rc = nomem(err);
            break;
        }
        rc = perform_idempotent(c, "GET", url, NULL, -1, 0, &resp, err);
        free(url);
        if (rc != CERR_OK) {
            http_response_free(&resp);
            break;
        }
        page = cJSON_ParseWithLength(resp.body ? resp.body : "", resp.body_len);
        rc = resp.status == 200 && cJSON_IsObject(page) ? list_page(page, cb, ctx, &stop)
                                                        : CERR_MALFORMED;
        if (rc == CERR_MALFORMED)
            protocol_err(err, &resp, "list", bucket, prefix);
        else if (rc == CERR_NOMEM)
            nomem(err);
        if (rc == CERR_OK && stop) {
            rc = stop;
        } else if (rc == CERR_OK) {
            int next = util_next_page_token(page, &token);
            if (next == UTIL_PAGE_REPEATED)
                rc = protocol_err(err, &resp, "list (repeated pageToken)", bucket, prefix);
            else if (next == UTIL_PAGE_NOMEM)
                rc = nomem(err);
        }
        cJSON_Delete(page);
        http_response_free(&resp);
    } while (rc == CERR_OK && token);
    free(token);
    free(eb);
    return rc;
}

/* ---- gs:// URIs ------------------------------------------------------------- */

static bool bucket_char_ok(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' ||
           ch == '.';
}

int gcs_parse_uri(const char *uri, char **bucket, char **path)
{
    const char *b, *slash;
    size_t blen;
    if (!uri || !bucket || !path || strncmp(uri, "gs://", 5) != 0)
        return CERR_INVALID;
    b = uri + 5;
    slash = strchr(b, '/');
    blen = slash ? (size_t)(slash - b) : strlen(b);
    if (blen == 0 || blen > 222)
        return CERR_INVALID;
    for (size_t i = 0; i < blen; i++)
        if (!bucket_char_ok(b[i]))
            return CERR_INVALID;
    *bucket = strndup(b, blen);
    *path = strdup(slash ? slash + 1 : "");
    if (!*bucket || !*path) {
        free(*bucket);
        free(*path);
        *bucket = *path = NULL;
        return CERR_NOMEM;
    }
    return CERR_OK;
}

/* ---- streaming uploads ------------------------------------------------------ */

/* A resumable session whose size is unknown until gcs_stream_finish: chunks
 * say "bytes A-B/STAR", the final one "bytes A-B/TOTAL". The caller promises
 * that bytes it has put never change (they are summed once as they are
 * sent; a resend of persisted bytes is not summed again). No object exists
 * until the final chunk, so an abandoned session leaves nothing behind. */
struct gcs_stream {
    gcs_client *c;
    char *bucket, *name, *session;
    gcs_sum sum;
    uint64_t persisted; /* bytes the server confirmed */
    uint64_t sent_end;  /* highest byte offset sent + 1 (a 308 may not claim more) */
};

int gcs_stream_begin(gcs_client *c, const char *bucket, const char *name, const char *content_type,
                     gcs_stream **out, cerr_detail *err)
{
    cerr_detail dummy;
    gcs_stream *s;
    int rc;
    if (!err)
        err = &dummy;
    if (out)
        *out = NULL;
    if (!c || !out || !bucket || !*bucket || !name || !*name)
        return bad_args(err, "stream");
    s = calloc(1, sizeof(*s));
    if (!s)
        return nomem(err);
    s->c = c;
    s->bucket = strdup(bucket);
    s->name = strdup(name);
    rc = s->bucket && s->name
             ? session_start(c, bucket, name, SIZE_UNKNOWN,
                             content_type && *content_type ? content_type
                                                           : "application/octet-stream",
                             &s->session, err)
             : nomem(err);
    if (rc != CERR_OK) {
        gcs_stream_free(s);
        return rc;
    }
    *out = s;
    return CERR_OK;
}

uint64_t gcs_stream_offset(const gcs_stream *s)
{
    return s ? s->persisted : 0;
}

/* One PUT on the session: [off, end) of fd, or a status query when off ==
 * end ("bytes STAR/TOTAL" or "bytes STAR/STAR"). total is UINT64_MAX while
 * unknown. */
static int stream_request(gcs_stream *s, int fd, uint64_t off, uint64_t end, uint64_t total,
                          http_response *resp, cerr_detail *err)
{
    http_request req;
    sum_feed feed = {.sum = &s->sum, .base = off};
    char cr[96], tot[32];
    const char *hdrs[] = {cr, NULL};
    if (total == UINT64_MAX)
        snprintf(tot, sizeof(tot), "*");
    else
        snprintf(tot, sizeof(tot), "%" PRIu64, total);
    if (off == end)
        snprintf(cr, sizeof(cr), "Content-Range: bytes */%s", tot);
    else
        snprintf(cr, sizeof(cr), "Content-Range: bytes %" PRIu64 "-%" PRIu64 "/%s", off, end - 1,
                 tot);
    http_request_init(&req);
    req.method = "PUT";
    req.url = s->session;
    req.headers = hdrs;
    req.idempotent = off == end; /* a chunk is never blindly resent: ask first */
    if (off == end) {
        req.body = "";
        req.body_len = 0;
    } else {
        req.body_fd = fd;
        req.body_fd_offset = (off_t)off;
        req.body_fd_len = (off_t)(end - off);
        req.body_observer = sum_observe;
        req.body_observer_ctx = &feed;
        if (end > s->sent_end)
            s->sent_end = end;
    }
    memset(resp, 0, sizeof(*resp));
    return http_perform(s->c->http, &req, resp, err);
}

/* Drives the session until the server holds [0, end) (total unknown) or the
 * object is final (total known: *done set, resp kept for the caller).
 * Interruptions are answered by asking the server what it has, as in
 * upload_resumable; a lost session (404/410) is an error here: the bytes
 * already sent are gone with it and the caller falls back to a plain upload. */
static int stream_drive(gcs_stream *s, int fd, uint64_t end, uint64_t total, http_response *resp,
                        bool *done, cerr_detail *err)
{
    int stalls = 0, rc = CERR_OK;
    bool query = false;
    *done = false;
    for (;;) {
        uint64_t before = s->persisted, next = s->persisted, send_end = end;
        int hrc;
        /* Before the end is known every chunk is a multiple of 256 KiB; GCS
         * persists whole quanta, but a server that kept less leaves the
         * remainder to the next put or the final chunk. */
        if (total == UINT64_MAX)
            send_end =
                s->persisted + (end > s->persisted ? (end - s->persisted) / GCS_CHUNK_QUANTUM : 0) *
                                   GCS_CHUNK_QUANTUM;
        if (!query && send_end == s->persisted && total == UINT64_MAX)
            return CERR_OK;
        /* Everything persisted but not final: an empty request finalizes. */
        hrc =
            stream_request(s, fd, s->persisted, query ? s->persisted : send_end, total, resp, err);
        step_result st = classify(hrc, resp, s->sent_end > 0 ? s->sent_end : 1, &next, &rc,
                                  s->bucket, s->name, err);
        if (st == STEP_DONE && total != UINT64_MAX) {
            *done = true;
            return CERR_OK;
        }
        http_response_free(resp);
        if (st == STEP_DONE) {
            rc = protocol_err(err, NULL, "streaming upload finished early", s->bucket, s->name);
            return rc;
        }
        if (st == STEP_RESTART) {
            long lost = err->http_status;
            cerr_set(err, cerr_from_http_status(lost), lost, "ABORTED",
                     "upload of gs://%s/%s: streaming session lost (HTTP %ld)", s->bucket, s->name,
                     lost);
            log_warn("gcs: %s", err->message);
            return err->cls;
        }
        if (st == STEP_FAIL)
            return rc;
        if (st == STEP_CONTINUE) {
            s->persisted = next;
            if (next > before) {
                stalls = 0;
                query = false;
                continue;
            }
            if (query) {
                query = false; /* the status is known now: send again */
                continue;
            }
        }
        rc = no_progress(&stalls, st, s->persisted, &query, "streaming ", s->bucket, s->name, err);
        if (rc != CERR_OK)
            return rc;
    }
}

int gcs_stream_put(gcs_stream *s, int fd, uint64_t end, cerr_detail *err)
{
    cerr_detail dummy;
    http_response resp;
    bool done;
    if (!err)
        err = &dummy;
    if (!s || !s->session || fd < 0)
        return bad_args(err, "stream put");
    return stream_drive(s, fd, end, UINT64_MAX, &resp, &done, err);
}

int gcs_stream_finish(gcs_stream *s, int fd, uint64_t size, gcs_object *out, cerr_detail *err)
{
    cerr_detail dummy;
    http_response resp;
    bool done = false;
    int rc;
    if (!err)
        err = &dummy;
    if (out)
        memset(out, 0, sizeof(*out));
    if (!s || !s->session || fd < 0 || size < s->persisted)
        return bad_args(err, "stream finish");
    rc = stream_drive(s, fd, size, size, &resp, &done, err);
    if (rc == CERR_OK && done) {
        gcs_source src = {.fd = fd, .buf = NULL, .size = size};
        rc = finish_upload(&resp, &src, &s->sum, s->bucket, s->name, out, err);
        http_response_free(&resp);
    }
    if (rc == CERR_OK) {
        free(s->session); /* finalized: nothing left to cancel */
        s->session = NULL;
    }
    return rc;
}

void gcs_stream_abort(gcs_stream *s)
{
    if (s && s->session) {
        http_request req;
        http_response resp = {0};
        cerr_detail err;
        memset(&err, 0, sizeof(err));
        http_request_init(&req);
        req.method = "DELETE";
        req.url = s->session;
        req.idempotent = true;
        /* GCS answers 499 to a cancelled session; 404 = already gone. */
        int rc = http_perform(s->c->http, &req, &resp, &err);
        if (rc != CERR_OK && resp.status != 499 && resp.status != 404)
            log_info("gcs: cancelling the upload session of gs://%s/%s: HTTP %ld %s (it expires "
                     "on its own)",
                     s->bucket, s->name, err.http_status, err.message);
        http_response_free(&resp);
        free(s->session);
        s->session = NULL;
    }
    gcs_stream_free(s);
}

void gcs_stream_free(gcs_stream *s)
{
    if (!s)
        return;
    free(s->bucket);
    free(s->name);
    free(s->session);
    free(s);
}
