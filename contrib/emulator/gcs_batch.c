/* gcs_batch: the Cloud Storage JSON API batch endpoint of dicomfs-emulator.
 *
 * POST /batch/storage/v1 with a multipart/mixed body whose parts
 * (Content-Type: application/http, optional Content-ID) each hold one
 * inner request: a request line with the path only ("DELETE
 * /storage/v1/b/B/o/O HTTP/1.1"), headers, optionally a body. Served inner
 * requests: objects.delete and objects.get (metadata; alt=media is refused
 * with a 400 part: batches serve no downloads). As documented: at
 * most 100 parts (more: 400 for the whole batch), a body under 10 MiB; the
 * answer is a 200 multipart/mixed whose parts are the inner responses in
 * order (status line, headers, body), each with Content-ID "response-ID"
 * when the request part had one. The outer request goes through the
 * server's pipeline (auth, faults, latency, counters) once: a batch is one
 * request to the fault plan and the statistics, as to the real service's
 * rate limits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "emu_internal.h"
#include "multipart.h"
#include "util.h"

#define BATCH_MAX_PARTS 100
#define BATCH_MAX_BYTES (10u << 20)
#define INNER_PREFIX "/storage/v1/b/"

typedef struct inner_resp {
    int status;
    char *body; /* JSON text or NULL */
} inner_resp;

typedef struct batch_ctx {
    emu_ctx *ctx;
    FILE *out;
    const char *boundary;
    int parts;
    bool too_many;
} batch_ctx;

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    default:
        return "Internal Server Error";
    }
}

static void inner_error(inner_resp *ir, int status, const char *reason, const char *msg)
{
    cJSON *j = emu_gcs_error_json(status, reason, msg);
    ir->status = status;
    ir->body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
}

static void inner_store_error(inner_resp *ir, int rc, const char *bucket, const char *name)
{
    char msg[1400];
    if (rc == EMU_STORE_NOBUCKET) {
        inner_error(ir, 404, "notFound", "The specified bucket does not exist.");
    } else if (rc == EMU_STORE_NOTFOUND) {
        snprintf(msg, sizeof msg, "No such object: %s/%s", bucket, name);
        inner_error(ir, 404, "notFound", msg);
    } else {
        snprintf(msg, sizeof msg, "Internal error on gs://%s/%s.", bucket, name);
        inner_error(ir, 500, "backendError", msg);
    }
}

/* Whether the query string q (after '?', up to a space or the end) holds
 * key=value, both compared after percent-decoding. */
static bool query_has(const char *q, const char *key, const char *value)
{
    size_t qlen = strcspn(q, " ");
    const char *end = q + qlen;
    bool found = false;
    while (q < end && !found) {
        size_t n = strcspn(q, "&");
        if (q + n > end)
            n = (size_t)(end - q);
        const char *eq = memchr(q, '=', n);
        if (eq) {
            char *k = emu_percent_decode(q, (size_t)(eq - q));
            char *v = emu_percent_decode(eq + 1, n - (size_t)(eq - q) - 1);
            found = k && v && strcmp(k, key) == 0 && strcmp(v, value) == 0;
            free(k);
            free(v);
        }
        q += n + (q + n < end);
    }
    return found;
}

/* Runs one inner request: method, the decoded path after /storage/v1/b/
 * and the query string (without '?', "" if none). */
static void inner_run(emu_ctx *ctx, const char *method, const char *rest, const char *query,
                      inner_resp *ir)
{
    const char *slash = strchr(rest, '/');
    if (!slash || slash == rest || strncmp(slash, "/o/", 3) != 0 || !slash[3] ||
        slash - rest >= 256) {
        inner_error(ir, 400, "invalid", "Batch parts address one object: /storage/v1/b/B/o/O.");
        return;
    }
    char bucket[256];
    memcpy(bucket, rest, (size_t)(slash - rest));
    bucket[slash - rest] = '\0';
    const char *name = slash + 3;
    emu_preconds none;
    memset(&none, 0, sizeof none);
    if (strcmp(method, "DELETE") == 0) {
        int rc = emu_store_object_delete(ctx, bucket, name, &none);
        if (rc != EMU_STORE_OK)
            inner_store_error(ir, rc, bucket, name);
        else
            ir->status = 204;
    } else if (strcmp(method, "GET") == 0 && query_has(query, "alt", "media")) {
        /* As documented: "Cloud Storage does not support batch operations
         * for uploading or downloading." The service's exact answer is not
         * documented; a 400 tells a client at once. */
        inner_error(ir, 400, "invalid",
                    "Batch requests do not serve media downloads (alt=media): download the "
                    "object with its own GET.");
    } else if (strcmp(method, "GET") == 0) {
        emu_obj_info o;
        memset(&o, 0, sizeof o);
        int rc = emu_store_object_get(ctx, bucket, name, &none, &o, NULL);
        if (rc != EMU_STORE_OK) {
            inner_store_error(ir, rc, bucket, name);
        } else {
            cJSON *j = emu_gcs_object_json(ctx, &o);
            ir->status = 200;
            ir->body = cJSON_PrintUnformatted(j);
            cJSON_Delete(j);
        }
        emu_obj_info_clear(&o);
    } else {
        inner_error(ir, 405, "invalid", "Batch parts take DELETE or GET on an object.");
    }
}

/* Parses the request line of a part's body ("METHOD PATH HTTP/1.1") and runs it. */
static void inner_request(emu_ctx *ctx, const multipart_part *p, inner_resp *ir)
{
    size_t n = strcspn(p->body, "\r\n");
    if (n > p->body_len)
        n = p->body_len;
    char *line = strndup(p->body, n);
    char method[16], *path = NULL;
    const char *sp = line ? strchr(line, ' ') : NULL;
    if (!line || !sp || (size_t)(sp - line) >= sizeof method) {
        inner_error(ir, 400, "invalid", "A batch part holds no HTTP request line.");
        free(line);
        return;
    }
    memcpy(method, line, (size_t)(sp - line));
    method[sp - line] = '\0';
    const char *target = sp + 1;
    size_t tlen = strcspn(target, " ?");
    path = emu_percent_decode(target, tlen);
    if (!path || strncmp(path, INNER_PREFIX, strlen(INNER_PREFIX)) != 0)
        inner_error(ir, 400, "invalid",
                    "A batch part's request line takes a path under /storage/v1/ only.");
    else
        inner_run(ctx, method, path + strlen(INNER_PREFIX),
                  target[tlen] == '?' ? target + tlen + 1 : "", ir);
    free(path);
    free(line);
}

/* First pass: the part count, so a batch over the limit changes nothing. */
static int count_part(void *c, const multipart_part *p)
{
    batch_ctx *b = c;
    (void)p;
    if (++b->parts > BATCH_MAX_PARTS) {
        b->too_many = true;
        return 1;
    }
    return 0;
}

static int on_part(void *c, const multipart_part *p)
{
    batch_ctx *b = c;
    inner_resp ir = {0};
    char ct[128], cid[256];
    if (multipart_part_header(p, "Content-Type", ct, sizeof ct) != CERR_OK ||
        strncasecmp(ct, "application/http", 16) != 0)
        inner_error(&ir, 400, "invalid", "A batch part must be Content-Type: application/http.");
    else
        inner_request(b->ctx, p, &ir);
    bool has_cid = multipart_part_header(p, "Content-ID", cid, sizeof cid) == CERR_OK;
    const char *id = cid;
    if (has_cid && id[0] == '<') { /* <x> -> <response-x> */
        size_t n = strlen(id);
        fprintf(b->out, "--%s\r\nContent-Type: application/http\r\nContent-ID: <response-%.*s>\r\n",
                b->boundary, (int)(n > 2 ? n - 2 : 0), id + 1);
    } else if (has_cid) {
        fprintf(b->out, "--%s\r\nContent-Type: application/http\r\nContent-ID: response-%s\r\n",
                b->boundary, id);
    } else {
        fprintf(b->out, "--%s\r\nContent-Type: application/http\r\n", b->boundary);
    }
    size_t blen = ir.body ? strlen(ir.body) : 0;
    fprintf(b->out, "\r\nHTTP/1.1 %d %s\r\n", ir.status, reason_phrase(ir.status));
    if (ir.body)
        fprintf(b->out, "Content-Type: application/json; charset=UTF-8\r\n");
    fprintf(b->out, "Content-Length: %zu\r\n\r\n%s\r\n", blen, ir.body ? ir.body : "");
    free(ir.body);
    return 0;
}

void emu_gcs_batch(emu_ctx *ctx, const emu_request *r, emu_response *w)
{
    if (strcmp(emu_req_method(r), "POST") != 0) {
        emu_resp_gcs_error(w, 405, "invalid", "Batch requests take POST.");
        return;
    }
    const char *ct = emu_req_header(r, "Content-Type");
    char *in_boundary = ct && strncasecmp(ct, "multipart/mixed", 15) == 0
                            ? multipart_content_type_param(ct, "boundary")
                            : NULL;
    size_t len = 0;
    const char *body = emu_req_body(r, &len);
    if (!in_boundary || !body) {
        free(in_boundary);
        emu_resp_gcs_error(w, 400, "invalid",
                           "A batch request is multipart/mixed with a boundary and a body.");
        return;
    }
    if (len >= BATCH_MAX_BYTES) {
        free(in_boundary);
        emu_resp_gcs_error(w, 400, "invalid", "A batch request must be smaller than 10 MiB.");
        return;
    }
    char why[200] = "";
    batch_ctx b = {.ctx = ctx};
    int rc = multipart_parse(body, len, in_boundary, count_part, &b, why, sizeof why);
    if (rc != CERR_OK || b.parts == 0) {
        free(in_boundary);
        if (b.too_many)
            emu_resp_gcs_error(w, 400, "invalid", "A batch request holds at most %d calls.",
                               BATCH_MAX_PARTS);
        else
            emu_resp_gcs_error(w, 400, "invalid", "Malformed batch body: %s",
                               rc == CERR_OK ? "no parts" : why);
        return;
    }
    atomic_fetch_add(&ctx->stats.batch_requests, 1);
    atomic_fetch_add(&ctx->stats.batch_calls, (unsigned long long)b.parts);
    char boundary[48];
    snprintf(boundary, sizeof boundary, "batch_%08x%08x", (unsigned)rand(), (unsigned)rand());
    char *out = NULL;
    size_t out_len = 0;
    b.boundary = boundary;
    b.out = open_memstream(&out, &out_len);
    rc = b.out ? multipart_parse(body, len, in_boundary, on_part, &b, why, sizeof why) : CERR_NOMEM;
    free(in_boundary);
    if (b.out)
        fprintf(b.out, "--%s--\r\n", boundary);
    if (b.out)
        fclose(b.out);
    if (rc != CERR_OK) {
        emu_resp_gcs_error(w, 500, "backendError", "Out of memory.");
    } else {
        char type[96];
        snprintf(type, sizeof type, "multipart/mixed; boundary=%s", boundary);
        emu_resp_bytes(w, 200, type, out, out_len);
    }
    free(out);
}
