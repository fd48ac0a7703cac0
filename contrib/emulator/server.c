/* server: the HTTP side of dicomfs-emulator on libmicrohttpd.
 *
 * Owns request assembly (bodies in memory up to 64 MiB, then spooled to a
 * temp file under DATA/tmp; resumable chunks handed as they arrive to the
 * sink gcs_api.c opens for them), routing by path prefix, the bearer-token check,
 * fault injection (errors, resets, latency, malformed JSON, lost answers), the
 * network's latency and bandwidth (network.c) and the response
 * objects the API modules fill in. One thread per connection, so a slow
 * handler (a 1 GiB upload, an LRO wait) never blocks other clients.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <openssl/evp.h>

#include "emu_internal.h"
#include "http.h"
#include "log.h"
#include "util.h"

#define EMU_BODY_MEM_MAX (64u * 1024 * 1024)

struct emu_request {
    emu_ctx *ctx;
    struct MHD_Connection *conn;
    char *raw_uri;
    char *raw_path;
    char *path;
    char method[16];
    enum emu_kind kind;
    bool started;
    bool discard_body;
    bool body_error; /* spooling failed */
    char *body;
    size_t body_len, body_cap;
    int body_fd;
    uint64_t body_fd_len;
    char spool_path[4200]; /* named while the request lives; "" once taken */
    EVP_MD_CTX *spool_md5; /* hashes of the spooled bytes */
    uint32_t spool_crc;
    uint64_t received;
    uint64_t reset_after; /* bytes of body read before an early reset */
    emu_fault_plan plan;
    emu_body_sink *sink; /* takes the body as it arrives (resumable chunks) */
};

struct emu_hdr {
    char *name;
    char *value;
};

enum body_kind { BODY_NONE, BODY_MEM, BODY_FILE };

struct emu_response {
    int status;
    struct emu_hdr *hdrs;
    size_t nhdrs;
    enum body_kind kind;
    char *content_type;
    char *data;
    size_t len;
    int fd;
    off_t off;
    uint64_t flen;
    bool is_json;
};

/* ---- context ---- */

const char *emu_data_dir(const emu_ctx *ctx)
{
    return ctx->data_dir;
}

const char *emu_base_url(const emu_ctx *ctx)
{
    return ctx->base_url;
}

void emu_op_timing_get(const emu_ctx *ctx, emu_op_timing *t)
{
    t->base_ms = atomic_load(&ctx->ops.base_ms);
    t->instance_ms = atomic_load(&ctx->ops.instance_ms);
    t->mib_ms = atomic_load(&ctx->ops.mib_ms);
}

int emu_max_running_ops(const emu_ctx *ctx)
{
    return atomic_load(&ctx->ops.max_running);
}

long long emu_op_ttl_s(const emu_ctx *ctx)
{
    return atomic_load(&ctx->ops.ttl_s);
}

bool emu_req_fault_partial(const emu_request *r, uint32_t *aux)
{
    if (r->plan.partial) {
        atomic_fetch_add(&r->ctx->stats.fault_partial, 1);
        if (aux)
            *aux = r->plan.aux;
    }
    return r->plan.partial;
}

bool emu_shutting_down(const emu_ctx *ctx)
{
    return atomic_load(&ctx->shutting_down);
}

emu_hc *emu_ctx_hc(const emu_ctx *ctx)
{
    return ctx->hc;
}

void emu_ctx_set_hc(emu_ctx *ctx, emu_hc *hc)
{
    ctx->hc = hc;
}

/* ---- requests ---- */

const char *emu_req_method(const emu_request *r)
{
    return r->method;
}

const char *emu_req_path(const emu_request *r)
{
    return r->path;
}

const char *emu_req_raw_path(const emu_request *r)
{
    return r->raw_path;
}

const char *emu_req_query(const emu_request *r, const char *key)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

struct each_ctx {
    emu_kv_cb cb;
    void *cb_ctx;
};

static enum MHD_Result each_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *value)
{
    struct each_ctx *e = cls;
    (void)kind;
    e->cb(e->cb_ctx, key, value ? value : "");
    return MHD_YES;
}

void emu_req_query_each(const emu_request *r, emu_kv_cb cb, void *cb_ctx)
{
    struct each_ctx e = {cb, cb_ctx};
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, each_arg, &e);
}

const char *emu_req_header(const emu_request *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *emu_req_body(const emu_request *r, size_t *len)
{
    if (r->body_fd >= 0) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = r->body_len;
    return r->body ? r->body : "";
}

int emu_req_body_fd(const emu_request *r, uint64_t *len)
{
    if (len)
        *len = r->body_fd >= 0 ? r->body_fd_len : 0;
    return r->body_fd;
}

enum emu_kind emu_req_kind(const emu_request *r)
{
    return r->kind;
}

emu_body_sink *emu_req_sink(const emu_request *r)
{
    return r->sink;
}

/* ---- responses ---- */

static void resp_clear_body(emu_response *w)
{
    free(w->data);
    w->data = NULL;
    w->len = 0;
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    free(w->content_type);
    w->content_type = NULL;
    w->kind = BODY_NONE;
    w->is_json = false;
}

static void resp_init(emu_response *w)
{
    memset(w, 0, sizeof(*w));
    w->fd = -1;
    w->status = 500;
}

static void resp_free(emu_response *w)
{
    resp_clear_body(w);
    for (size_t i = 0; i < w->nhdrs; i++) {
        free(w->hdrs[i].name);
        free(w->hdrs[i].value);
    }
    free(w->hdrs);
}

int emu_resp_status(const emu_response *w)
{
    return w->status;
}

void emu_resp_header(emu_response *w, const char *name, const char *value)
{
    for (size_t i = 0; i < w->nhdrs; i++) {
        if (strcasecmp(w->hdrs[i].name, name) == 0) {
            free(w->hdrs[i].value);
            w->hdrs[i].value = strdup(value);
            return;
        }
    }
    struct emu_hdr *n = realloc(w->hdrs, (w->nhdrs + 1) * sizeof(*n));
    if (!n)
        return;
    w->hdrs = n;
    w->hdrs[w->nhdrs].name = strdup(name);
    w->hdrs[w->nhdrs].value = strdup(value);
    w->nhdrs++;
}

void emu_resp_json(emu_response *w, int status, cJSON *json)
{
    resp_clear_body(w);
    char *text = json ? cJSON_PrintUnformatted(json) : NULL;
    cJSON_Delete(json);
    w->status = status;
    if (!text) {
        w->status = 500;
        text = strdup("{\"error\":{\"code\":500,\"message\":\"out of memory\"}}");
        if (!text)
            return;
    }
    size_t n = strlen(text);
    char *body = realloc(text, n + 2);
    if (!body) {
        free(text);
        return;
    }
    body[n] = '\n';
    body[n + 1] = '\0';
    w->data = body;
    w->len = n + 1;
    w->kind = BODY_MEM;
    w->content_type = strdup("application/json; charset=UTF-8");
    w->is_json = true;
}

void emu_resp_bytes(emu_response *w, int status, const char *content_type, const void *data,
                    size_t len)
{
    resp_clear_body(w);
    w->status = status;
    w->data = malloc(len ? len : 1);
    if (!w->data) {
        w->status = 500;
        return;
    }
    if (len)
        memcpy(w->data, data, len);
    w->len = len;
    w->kind = BODY_MEM;
    w->content_type = content_type ? strdup(content_type) : NULL;
}

void emu_resp_file(emu_response *w, int status, const char *content_type, int fd, off_t off,
                   uint64_t len)
{
    resp_clear_body(w);
    w->status = status;
    w->fd = fd;
    w->off = off;
    w->flen = len;
    w->kind = BODY_FILE;
    w->content_type = content_type ? strdup(content_type) : NULL;
}

void emu_resp_empty(emu_response *w, int status)
{
    resp_clear_body(w);
    w->status = status;
}

void emu_resp_error(emu_response *w, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = util_vasprintf(fmt, ap);
    va_end(ap);
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    cJSON_AddNumberToObject(err, "code", status);
    cJSON_AddStringToObject(err, "message", msg ? msg : "error");
    /* The google.rpc code name the real service pairs with the status. */
    cJSON_AddStringToObject(err, "status", http_status_name(status));
    free(msg);
    emu_resp_json(w, status, root);
}

cJSON *emu_gcs_error_json(int status, const char *reason, const char *msg)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    cJSON *errs = cJSON_AddArrayToObject(err, "errors");
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "domain", "global");
    cJSON_AddStringToObject(e, "reason", reason);
    cJSON_AddStringToObject(e, "message", msg ? msg : "error");
    cJSON_AddItemToArray(errs, e);
    cJSON_AddNumberToObject(err, "code", status);
    cJSON_AddStringToObject(err, "message", msg ? msg : "error");
    return root;
}

void emu_resp_gcs_error(emu_response *w, int status, const char *reason, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = util_vasprintf(fmt, ap);
    va_end(ap);
    cJSON *root = emu_gcs_error_json(status, reason, msg);
    free(msg);
    emu_resp_json(w, status, root);
}

/* ---- request assembly ---- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 32);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decodes %XX only: '+' stays '+' in paths. */
char *emu_percent_decode(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        int hi = -1, lo = -1;
        if (s[i] == '%' && i + 2 < n) {
            hi = hexval(s[i + 1]);
            lo = hexval(s[i + 2]);
        }
        if (hi >= 0 && lo >= 0) {
            out[j++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[j++] = s[i];
        }
    }
    out[j] = '\0';
    return out;
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    emu_request *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->ctx = cls;
    r->conn = conn;
    r->body_fd = -1;
    r->raw_uri = strdup(uri ? uri : "/");
    if (!r->raw_uri)
        return r;
    size_t plen = strcspn(r->raw_uri, "?#");
    r->raw_path = strndup(r->raw_uri, plen);
    r->path = emu_percent_decode(r->raw_uri, plen);
    return r;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    emu_request *r = *con_cls;
    if (!r)
        return;
    if (r->sink)
        emu_gcs_sink_close(r->sink);
    free(r->raw_uri);
    free(r->raw_path);
    free(r->path);
    free(r->body);
    if (r->body_fd >= 0)
        close(r->body_fd);
    if (r->spool_path[0])
        unlink(r->spool_path);
    EVP_MD_CTX_free(r->spool_md5);
    free(r);
    *con_cls = NULL;
}

static int spool_write(emu_request *r, const char *data, size_t len)
{
    EVP_DigestUpdate(r->spool_md5, data, len);
    r->spool_crc = util_crc32c(r->spool_crc, data, len);
    while (len) {
        ssize_t n = write(r->body_fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            log_error("spool request body to %s: %s", r->spool_path, strerror(errno));
            return -1;
        }
        data += n;
        len -= (size_t)n;
        r->body_fd_len += (uint64_t)n;
    }
    return 0;
}

/* Moves the body to a file in DATA/tmp, hashing as it goes, so an upload
 * can become an object by a rename. */
static int spool_open(emu_request *r)
{
    snprintf(r->spool_path, sizeof(r->spool_path), "%s/tmp/body.XXXXXX", r->ctx->data_dir);
    int fd = mkstemp(r->spool_path);
    r->spool_md5 = EVP_MD_CTX_new();
    if (fd < 0 || !r->spool_md5 || EVP_DigestInit_ex(r->spool_md5, EVP_md5(), NULL) != 1) {
        log_error("spool request body in %s: %s", r->spool_path, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(r->spool_path);
        }
        r->spool_path[0] = '\0';
        return -1;
    }
    r->body_fd = fd;
    r->body_fd_len = 0;
    if (r->body_len && spool_write(r, r->body, r->body_len) != 0)
        return -1;
    free(r->body);
    r->body = NULL;
    r->body_len = r->body_cap = 0;
    return 0;
}

bool emu_req_spool_take(const emu_request *cr, char *path, size_t pathlen, unsigned char md5[16],
                        uint32_t *crc)
{
    emu_request *r = (emu_request *)cr; /* the server owns requests */
    if (r->body_fd < 0 || !r->spool_path[0] || !r->spool_md5)
        return false;
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(r->spool_md5, md5, &n) != 1)
        return false;
    snprintf(path, pathlen, "%s", r->spool_path);
    *crc = r->spool_crc;
    r->spool_path[0] = '\0';
    return true;
}

/* A media upload of known length goes to its file from the first byte,
 * hashed as it arrives: the object is then a rename, with no copy through
 * memory and no second pass over the bytes. */
static bool spool_early(const emu_request *r, uint64_t clen)
{
    const char *type = emu_req_query(r, "uploadType");
    return clen > 0 && r->kind == EMU_KIND_UPLOAD && strcmp(r->method, "POST") == 0 && type &&
           strcmp(type, "media") == 0;
}

/* Sizes the buffer once from Content-Length instead of doubling into it. */
static void body_reserve(emu_request *r, uint64_t clen)
{
    char *n = clen < EMU_BODY_MEM_MAX ? malloc((size_t)clen + 1) : NULL;
    if (n) {
        r->body = n;
        r->body_cap = (size_t)clen + 1;
    }
}

static int body_append(emu_request *r, const char *data, size_t len)
{
    if (r->body_fd < 0 && r->body_len + len > EMU_BODY_MEM_MAX && spool_open(r) != 0)
        return -1;
    if (r->body_fd >= 0)
        return spool_write(r, data, len);
    if (r->body_len + len + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 4096;
        while (cap < r->body_len + len + 1)
            cap *= 2;
        char *n = realloc(r->body, cap);
        if (!n)
            return -1;
        r->body = n;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, len);
    r->body_len += len;
    r->body[r->body_len] = '\0';
    return 0;
}

/* ---- routing ---- */

static bool has_prefix(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

static enum emu_kind route_kind(const char *path)
{
    if (has_prefix(path, "/_emulator/"))
        return EMU_KIND_CONTROL;
    if (has_prefix(path, "/storage/v1/") || strcmp(path, "/b") == 0 || has_prefix(path, "/b/") ||
        strcmp(path, "/batch/storage/v1") == 0)
        return EMU_KIND_GCS;
    if (has_prefix(path, "/upload/storage/v1/"))
        return EMU_KIND_UPLOAD;
    if (has_prefix(path, "/download/storage/v1/"))
        return EMU_KIND_DOWNLOAD;
    if (strcmp(path, "/token") == 0 || strcmp(path, "/oauth2/v4/token") == 0)
        return EMU_KIND_TOKEN;
    if (has_prefix(path, "/computeMetadata/"))
        return EMU_KIND_METADATA;
    if (has_prefix(path, "/v1/") || has_prefix(path, "/v1beta1/"))
        return EMU_KIND_HC;
    if (has_prefix(path, "/logs/"))
        return EMU_KIND_LOGS;
    return EMU_KIND_OTHER;
}

const char *emu_kind_name(enum emu_kind k)
{
    static const char *names[] = {"gcs",        "upload", "download", "token", "metadata",
                                  "healthcare", "logs",   "control",  "other"};
    return k < EMU_KIND_COUNT ? names[k] : "other";
}

static bool needs_auth(emu_ctx *ctx, const emu_request *r)
{
    if (ctx->no_auth)
        return false;
    switch (r->kind) {
    case EMU_KIND_GCS:
    case EMU_KIND_DOWNLOAD:
    case EMU_KIND_HC:
    case EMU_KIND_LOGS:
        return true;
    case EMU_KIND_UPLOAD:
        /* The session URI is the credential of a resumable session's
         * requests; everything else, starts included, needs a token. */
        return !emu_gcs_is_session_request(r);
    default:
        return false;
    }
}

static void answer_unauthenticated(emu_response *w)
{
    emu_resp_error(w, 401,
                   "Request had invalid authentication credentials. Expected OAuth 2 access "
                   "token, login cookie or other valid authentication credential. See "
                   "https://developers.google.com/identity/sign-in/web/devconsole-project.");
    emu_resp_header(w, "WWW-Authenticate", "Bearer realm=\"https://accounts.google.com/\"");
}

static void dispatch(emu_ctx *ctx, emu_request *r, emu_response *w)
{
    if (needs_auth(ctx, r) &&
        !emu_oauth_check_bearer(ctx, emu_req_header(r, MHD_HTTP_HEADER_AUTHORIZATION))) {
        atomic_fetch_add(&ctx->stats.unauthenticated, 1);
        answer_unauthenticated(w);
        return;
    }
    switch (r->kind) {
    case EMU_KIND_CONTROL:
        emu_control_handle(ctx, r, w);
        return;
    case EMU_KIND_GCS:
    case EMU_KIND_UPLOAD:
    case EMU_KIND_DOWNLOAD:
        emu_gcs_handle(ctx, r, w);
        return;
    case EMU_KIND_TOKEN:
        emu_oauth_token_handle(ctx, r, w);
        return;
    case EMU_KIND_METADATA:
        emu_oauth_metadata_handle(ctx, r, w);
        return;
    case EMU_KIND_HC: {
        bool beta = has_prefix(r->path, "/v1beta1/");
        emu_hc_handle(ctx, r, w, beta ? "v1beta1" : "v1", r->path + (beta ? 9 : 4));
        return;
    }
    case EMU_KIND_LOGS:
        emu_hc_logs_handle(ctx, r, w, r->path + 6);
        return;
    default:
        if (strcmp(r->path, "/") == 0 &&
            (strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0)) {
            emu_resp_bytes(w, 200, "text/plain; charset=UTF-8", "OK", 2);
            /* google-auth pings the metadata host's root and wants this. */
            emu_resp_header(w, "Metadata-Flavor", "Google");
            return;
        }
        emu_resp_error(w, 404, "The requested URL %s was not found on this server.", r->path);
    }
}

/* ---- faults on the way out ---- */

static void garble_json(emu_response *w, uint32_t aux)
{
    if (w->len < 2)
        return;
    if (aux & 1) {
        /* Truncate somewhere inside the document (keeps at least 1 byte). */
        size_t cut = 1 + (aux >> 1) % (w->len - 1);
        if (cut >= w->len - 1)
            cut = w->len / 2;
        w->len = cut ? cut : 1;
    } else {
        /* Replace a byte near the start with an unbalanced brace, which no
         * JSON parser accepts there. */
        size_t at = (aux >> 1) % (w->len < 8 ? w->len : 8);
        w->data[at] = at == 0 ? '}' : '{';
        w->data[w->len - 1] = '{';
    }
}

/* A body served through a callback: cut after limit bytes (a reset
 * fault) and/or paced by the shared bandwidth cap (net non-NULL). */
struct body_reader {
    emu_response w; /* owned copy of the body */
    uint64_t limit; /* bytes served before the connection is cut */
    emu_net *net;
};

static ssize_t body_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct body_reader *br = cls;
    if (pos >= br->limit)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = max;
    if (n > br->limit - pos)
        n = (size_t)(br->limit - pos);
    ssize_t got;
    if (br->w.kind == BODY_MEM) {
        memcpy(buf, br->w.data + pos, n);
        got = (ssize_t)n;
    } else {
        got = pread(br->w.fd, buf, n, br->w.off + (off_t)pos);
        if (got <= 0)
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    if (br->net)
        emu_net_transfer(br->net, (uint64_t)got);
    return got;
}

static void body_reader_free(void *cls)
{
    struct body_reader *br = cls;
    resp_free(&br->w);
    free(br);
}

/* Moves w's body into a callback response. cut: serve only part of it. */
static struct MHD_Response *make_reader_response(emu_response *w, bool cut, uint32_t aux,
                                                 emu_net *net)
{
    uint64_t total = w->kind == BODY_MEM ? w->len : w->flen;
    struct body_reader *br = calloc(1, sizeof(*br));
    if (!br)
        return NULL;
    br->w = *w;
    br->net = net;
    /* The response object now belongs to the reader; leave headers to the caller. */
    br->w.hdrs = NULL;
    br->w.nhdrs = 0;
    w->data = NULL;
    w->fd = -1;
    w->content_type = NULL;
    w->kind = BODY_NONE;
    br->limit = total;
    if (cut) {
        br->limit = total / 2 + (aux % (total / 4 + 1)) / 2;
        if (br->limit >= total)
            br->limit = total ? total - 1 : 0;
    }
    /* Small blocks under a cap, so concurrent bodies interleave on the link. */
    size_t block = net ? 16 * 1024 : 64 * 1024;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(total, block, body_read, br, body_reader_free);
    if (!resp)
        body_reader_free(br);
    return resp;
}

static struct MHD_Response *make_response(emu_ctx *ctx, emu_request *r, emu_response *w)
{
    struct MHD_Response *resp = NULL;
    bool has_body = (w->kind == BODY_MEM && w->len > 0) || (w->kind == BODY_FILE && w->flen > 0);
    if (r->plan.malformed && w->is_json && w->kind == BODY_MEM) {
        garble_json(w, r->plan.aux);
        atomic_fetch_add(&ctx->stats.fault_malformed, 1);
    }
    emu_net *net = r->kind != EMU_KIND_CONTROL && emu_net_capped(ctx->net) ? ctx->net : NULL;
    if (r->plan.reset && has_body) {
        atomic_fetch_add(&ctx->stats.fault_reset, 1);
        return make_reader_response(w, true, r->plan.aux, net);
    }
    if (net && has_body)
        return make_reader_response(w, false, 0, net);
    if (w->kind == BODY_MEM) {
        resp = MHD_create_response_from_buffer(w->len, w->data, MHD_RESPMEM_MUST_FREE);
        if (resp)
            w->data = NULL;
    } else if (w->kind == BODY_FILE) {
        resp = MHD_create_response_from_fd_at_offset64(w->flen, w->fd, (uint64_t)w->off);
        if (resp)
            w->fd = -1;
    } else {
        resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    }
    return resp;
}

static enum MHD_Result send_response(emu_ctx *ctx, emu_request *r, emu_response *w)
{
    const char *ct = w->content_type;
    char *ct_copy = ct ? strdup(ct) : NULL;
    struct MHD_Response *resp = make_response(ctx, r, w);
    if (!resp) {
        free(ct_copy);
        return MHD_NO;
    }
    if (ct_copy)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ct_copy);
    free(ct_copy);
    for (size_t i = 0; i < w->nhdrs; i++)
        MHD_add_response_header(resp, w->hdrs[i].name, w->hdrs[i].value);
    MHD_add_response_header(resp, "Server", "dicomfs-emulator");
    /* Path only: queries can hold credentials (upload_id). */
    log_debug("%s %s -> %d", r->method, r->raw_path, w->status);
    int cls = w->status / 100;
    atomic_fetch_add(&ctx->stats.by_class[cls >= 1 && cls <= 5 ? cls : 5], 1);
    enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)w->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void answer_fault(emu_request *r, emu_response *w)
{
    int st = r->plan.fail_status;
    const char *msg = st == 429   ? "Rate limit exceeded (injected by dicomfs-emulator)."
                      : st == 503 ? "The service is currently unavailable (injected by "
                                    "dicomfs-emulator)."
                      : st == 403 ? "Permission denied (injected by dicomfs-emulator)."
                      : st < 500  ? "Request refused (injected by dicomfs-emulator)."
                                  : "Internal error (injected by dicomfs-emulator).";
    if (r->kind == EMU_KIND_GCS || r->kind == EMU_KIND_UPLOAD || r->kind == EMU_KIND_DOWNLOAD)
        emu_resp_gcs_error(w, st, st == 429 ? "rateLimitExceeded" : "backendError", "%s", msg);
    else
        emu_resp_error(w, st, "%s", msg);
    if (st == 429)
        emu_resp_header(w, "Retry-After", "1");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    emu_ctx *ctx = cls;
    emu_request *r = *con_cls;
    (void)url;
    (void)version;
    if (!r || !r->raw_uri || !r->raw_path || !r->path)
        return MHD_NO;
    if (!r->started) {
        r->started = true;
        r->conn = conn;
        snprintf(r->method, sizeof(r->method), "%s", method);
        r->kind = route_kind(r->path);
        atomic_fetch_add(&ctx->stats.total, 1);
        atomic_fetch_add(&ctx->stats.by_kind[r->kind], 1);
        if (r->kind != EMU_KIND_CONTROL)
            emu_faults_plan(ctx->faults, r->path, &r->plan);
        r->discard_body = r->plan.fail_status != 0 || r->plan.reset_early;
        const char *cl =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        uint64_t clen = cl ? strtoull(cl, NULL, 10) : 0;
        /* An early reset cuts the upload somewhere inside the body. */
        r->reset_after = r->plan.aux % (clen ? clen : 65536);
        if (!r->discard_body && clen && r->kind == EMU_KIND_UPLOAD)
            r->sink = emu_gcs_sink_open(ctx, r, clen);
        /* With a sink the body goes straight to its session's part file. */
        bool assemble = !r->discard_body && !r->sink;
        if (assemble && (clen > EMU_BODY_MEM_MAX || spool_early(r, clen)) && spool_open(r) != 0)
            r->body_error = true;
        else if (assemble && r->body_fd < 0 && clen)
            body_reserve(r, clen);
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        r->received += n;
        if (r->kind != EMU_KIND_CONTROL)
            emu_net_transfer(ctx->net, n);
        if (r->plan.reset_early && r->received > r->reset_after) {
            atomic_fetch_add(&ctx->stats.fault_reset, 1);
            atomic_fetch_add(&ctx->stats.by_class[0], 1);
            return MHD_NO;
        }
        if (r->sink)
            emu_gcs_sink_write(r->sink, upload_data, n);
        else if (!r->discard_body && !r->body_error && body_append(r, upload_data, n) != 0)
            r->body_error = true;
        return MHD_YES;
    }
    if (r->plan.reset_early) {
        atomic_fetch_add(&ctx->stats.fault_reset, 1);
        atomic_fetch_add(&ctx->stats.by_class[0], 1);
        return MHD_NO;
    }
    if (r->kind != EMU_KIND_CONTROL)
        emu_net_latency(ctx->net);
    if (r->plan.latency_ms > 0) {
        atomic_fetch_add(&ctx->stats.fault_latency, 1);
        sleep_ms(r->plan.latency_ms);
    }
    if (r->body_fd >= 0)
        lseek(r->body_fd, 0, SEEK_SET);
    emu_response w;
    resp_init(&w);
    if (r->plan.fail_status) {
        atomic_fetch_add(r->plan.fail_status == 429   ? &ctx->stats.fault_429
                         : r->plan.fail_status == 503 ? &ctx->stats.fault_503
                                                      : &ctx->stats.fault_500,
                         1);
        answer_fault(r, &w);
    } else if (r->body_error) {
        emu_resp_error(&w, 500, "The emulator could not store the request body.");
    } else {
        dispatch(ctx, r, &w);
    }
    if (r->kind != EMU_KIND_CONTROL && emu_faults_take_lose(ctx->faults, r->method, r->path)) {
        /* Carried out, but the answer never arrives. */
        atomic_fetch_add(&ctx->stats.lost_responses, 1);
        atomic_fetch_add(&ctx->stats.by_class[0], 1);
        resp_free(&w);
        return MHD_NO;
    }
    if (r->plan.reset && !(w.kind == BODY_MEM && w.len > 0) &&
        !(w.kind == BODY_FILE && w.flen > 0)) {
        /* Nothing to cut short: the request took effect but its answer is
         * lost with the connection. */
        atomic_fetch_add(&ctx->stats.fault_reset, 1);
        atomic_fetch_add(&ctx->stats.by_class[0], 1);
        resp_free(&w);
        return MHD_NO;
    }
    enum MHD_Result ret = send_response(ctx, r, &w);
    resp_free(&w);
    return ret;
}

int emu_server_start(emu_ctx *ctx, int listen_fd)
{
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_POLL | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    /* The TLS options come last: without --tls-dir the first of them ends
     * the list (MHD_OPTION_END) and the server speaks plain http. */
    bool tls = ctx->tls_cert != NULL;
    if (tls && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
        log_error("--tls-dir: this libmicrohttpd was built without TLS support");
        return -1;
    }
    if (tls)
        flags |= MHD_USE_TLS;
    ctx->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, ctx, MHD_OPTION_LISTEN_SOCKET, listen_fd,
        MHD_OPTION_URI_LOG_CALLBACK, on_uri, ctx, MHD_OPTION_NOTIFY_COMPLETED, on_completed, ctx,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)1000, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)(256 * 1024), MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)900,
        tls ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_END, ctx->tls_key, MHD_OPTION_HTTPS_MEM_CERT,
        ctx->tls_cert, MHD_OPTION_END);
    if (!ctx->daemon) {
        log_error("cannot start the HTTP server on %s", ctx->base_url);
        return -1;
    }
    return 0;
}

void emu_server_stop(emu_ctx *ctx)
{
    if (!ctx->daemon)
        return;
    MHD_socket fd = MHD_quiesce_daemon(ctx->daemon);
    MHD_stop_daemon(ctx->daemon);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    ctx->daemon = NULL;
}
