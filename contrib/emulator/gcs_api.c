/* gcs_api: the Cloud Storage JSON API of dicomfs-emulator, following the
 * semantics of Google's storage-testbench.
 *
 * Serves buckets (insert, get, list, delete), objects (get, alt=media with
 * Range, list with prefix/delimiter/paging, delete) and uploads (media,
 * multipart/related, resumable sessions in 256 KiB-multiple chunks). Paths
 * are accepted under /storage/v1, /upload/storage/v1, /download/storage/v1
 * and at the root (/b/..., as the Node client sends them). Resumable
 * sessions live under DATA/gcs/uploads so a restart keeps them. A chunk
 * goes straight into its session's part file as it arrives (a body sink
 * the server hands it to), hashed on the way, and the last chunk makes the
 * object by a rename: a resumable upload costs what a media upload does.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "emu_internal.h"
#include "log.h"
#include "util.h"
#include "multipart.h"

#define CHUNK_QUANTUM (256u * 1024)

/* ---- helpers ---- */

static bool has_prefix(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

static bool is_method(const emu_request *r, const char *m)
{
    return strcmp(emu_req_method(r), m) == 0;
}

/* Percent-encodes everything but unreserved characters (RFC 3986). */
static char *url_encode(const char *s)
{
    size_t n = strlen(s);
    char *out = malloc(3 * n + 1);
    if (!out)
        return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            out[j++] = (char)c;
        } else {
            sprintf(out + j, "%%%02X", c);
            j += 3;
        }
    }
    out[j] = '\0';
    return out;
}

static void add_i64_str(cJSON *j, const char *k, long long v)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%lld", v);
    cJSON_AddStringToObject(j, k, buf);
}

static void add_time(cJSON *j, const char *k, int64_t us)
{
    char buf[40];
    util_rfc3339(buf, sizeof(buf), (time_t)(us / 1000000), (long)(us % 1000000) * 1000, 3);
    cJSON_AddStringToObject(j, k, buf);
}

static char *etag_of(int64_t gen, int64_t metagen)
{
    unsigned char raw[16];
    for (int i = 0; i < 8; i++) {
        raw[i] = (unsigned char)((uint64_t)gen >> (56 - 8 * i));
        raw[8 + i] = (unsigned char)((uint64_t)metagen >> (56 - 8 * i));
    }
    return util_b64_encode(raw, sizeof(raw), false);
}

static cJSON *object_json(emu_ctx *ctx, const emu_obj_info *o)
{
    cJSON *j = cJSON_CreateObject();
    char *eb = url_encode(o->bucket), *en = url_encode(o->name);
    char buf[4096 * 3 + 512];
    cJSON_AddStringToObject(j, "kind", "storage#object");
    snprintf(buf, sizeof(buf), "%s/%s/%lld", o->bucket, o->name, (long long)o->generation);
    cJSON_AddStringToObject(j, "id", buf);
    snprintf(buf, sizeof(buf), "%s/storage/v1/b/%s/o/%s", emu_base_url(ctx), eb ? eb : "",
             en ? en : "");
    cJSON_AddStringToObject(j, "selfLink", buf);
    snprintf(buf, sizeof(buf), "%s/download/storage/v1/b/%s/o/%s?generation=%lld&alt=media",
             emu_base_url(ctx), eb ? eb : "", en ? en : "", (long long)o->generation);
    cJSON_AddStringToObject(j, "mediaLink", buf);
    free(eb);
    free(en);
    cJSON_AddStringToObject(j, "name", o->name);
    cJSON_AddStringToObject(j, "bucket", o->bucket);
    add_i64_str(j, "generation", o->generation);
    add_i64_str(j, "metageneration", o->metageneration);
    cJSON_AddStringToObject(j, "contentType",
                            o->content_type ? o->content_type : "application/octet-stream");
    cJSON_AddStringToObject(j, "storageClass", "STANDARD");
    add_i64_str(j, "size", (long long)o->size);
    cJSON_AddStringToObject(j, "md5Hash", o->md5_b64);
    cJSON_AddStringToObject(j, "crc32c", o->crc32c_b64);
    char *etag = etag_of(o->generation, o->metageneration);
    cJSON_AddStringToObject(j, "etag", etag ? etag : "");
    free(etag);
    add_time(j, "timeCreated", o->created_us);
    add_time(j, "updated", o->updated_us);
    add_time(j, "timeStorageClassUpdated", o->created_us);
    if (o->metadata)
        cJSON_AddItemToObject(j, "metadata", cJSON_Duplicate(o->metadata, 1));
    return j;
}

static bool parse_i64(const char *s, int64_t *out)
{
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end || errno)
        return false;
    *out = v;
    return true;
}

/* Returns false (and answers 400) on a malformed precondition. */
static bool parse_preconds(const emu_request *r, emu_response *w, emu_preconds *p)
{
    memset(p, 0, sizeof(*p));
    struct {
        const char *key;
        bool *has;
        int64_t *val;
    } items[] = {
        {"ifGenerationMatch", &p->has_gen_match, &p->gen_match},
        {"ifGenerationNotMatch", &p->has_gen_not_match, &p->gen_not_match},
        {"ifMetagenerationMatch", &p->has_meta_match, &p->meta_match},
        {"ifMetagenerationNotMatch", &p->has_meta_not_match, &p->meta_not_match},
    };
    for (size_t i = 0; i < sizeof(items) / sizeof(items[0]); i++) {
        const char *v = emu_req_query(r, items[i].key);
        if (!v)
            continue;
        if (!parse_i64(v, items[i].val)) {
            emu_resp_gcs_error(w, 400, "invalid", "Invalid value for %s: %s", items[i].key, v);
            return false;
        }
        *items[i].has = true;
    }
    return true;
}

/* Body as one buffer: in memory, or the spool file mapped read-only. */
typedef struct body_view {
    const char *data;
    size_t len;
    void *map;
    size_t maplen;
} body_view;

static int body_get(const emu_request *r, body_view *b)
{
    memset(b, 0, sizeof(*b));
    uint64_t flen = 0;
    int fd = emu_req_body_fd(r, &flen);
    if (fd < 0) {
        b->data = emu_req_body(r, &b->len);
        return 0;
    }
    if (flen == 0)
        return 0;
    b->map = mmap(NULL, (size_t)flen, PROT_READ, MAP_PRIVATE, fd, 0);
    if (b->map == MAP_FAILED) {
        b->map = NULL;
        return -1;
    }
    b->maplen = (size_t)flen;
    b->data = b->map;
    b->len = (size_t)flen;
    return 0;
}

static void body_put(body_view *b)
{
    if (b->map)
        munmap(b->map, b->maplen);
    b->map = NULL;
}

/* x-goog-hash: crc32c=...,md5=... (either may be missing). */
static void parse_goog_hash(const char *h, char *md5, size_t md5len, char *crc, size_t crclen)
{
    while (h && *h) {
        while (*h == ' ' || *h == ',')
            h++;
        size_t n = strcspn(h, ",");
        if (n > 4 && strncasecmp(h, "md5=", 4) == 0)
            snprintf(md5, md5len, "%.*s", (int)(n - 4), h + 4);
        else if (n > 7 && strncasecmp(h, "crc32c=", 7) == 0)
            snprintf(crc, crclen, "%.*s", (int)(n - 7), h + 7);
        h += n;
    }
}

static void answer_store_error(emu_response *w, int rc, const char *bucket, const char *name)
{
    switch (rc) {
    case EMU_STORE_NOBUCKET:
        emu_resp_gcs_error(w, 404, "notFound", "The specified bucket does not exist.");
        break;
    case EMU_STORE_NOTFOUND:
        emu_resp_gcs_error(w, 404, "notFound", "No such object: %s/%s", bucket, name ? name : "");
        break;
    case EMU_STORE_PRECOND:
        emu_resp_gcs_error(w, 412, "conditionNotMet",
                           "At least one of the pre-conditions you specified did not hold.");
        break;
    case EMU_STORE_BADHASH:
        emu_resp_gcs_error(w, 400, "invalid",
                           "Provided MD5 hash or CRC32C checksum doesn't match the calculated "
                           "one for gs://%s/%s.",
                           bucket, name ? name : "");
        break;
    default:
        emu_resp_gcs_error(w, 500, "backendError", "Internal error storing gs://%s/%s.", bucket,
                           name ? name : "");
    }
}

static bool valid_object_name(const char *name, emu_response *w)
{
    size_t n = strlen(name);
    if (n == 0) {
        emu_resp_gcs_error(w, 400, "required", "Required parameter: name");
        return false;
    }
    if (n > 1024 || strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || strchr(name, '\n') ||
        strchr(name, '\r')) {
        emu_resp_gcs_error(w, 400, "invalid", "The object name is invalid.");
        return false;
    }
    return true;
}

/* ---- buckets ---- */

static cJSON *bucket_json(emu_ctx *ctx, const char *name, int64_t created)
{
    cJSON *j = cJSON_CreateObject();
    char buf[512];
    cJSON_AddStringToObject(j, "kind", "storage#bucket");
    cJSON_AddStringToObject(j, "id", name);
    snprintf(buf, sizeof(buf), "%s/storage/v1/b/%s", emu_base_url(ctx), name);
    cJSON_AddStringToObject(j, "selfLink", buf);
    cJSON_AddStringToObject(j, "projectNumber", "123456789012");
    cJSON_AddStringToObject(j, "name", name);
    add_time(j, "timeCreated", created);
    add_time(j, "updated", created);
    cJSON_AddStringToObject(j, "metageneration", "1");
    cJSON_AddStringToObject(j, "location", "US");
    cJSON_AddStringToObject(j, "locationType", "multi-region");
    cJSON_AddStringToObject(j, "storageClass", "STANDARD");
    cJSON_AddStringToObject(j, "etag", "CAE=");
    return j;
}

static void bucket_insert(emu_ctx *ctx, const emu_request *r, emu_response *w)
{
    size_t len;
    const char *body = emu_req_body(r, &len);
    cJSON *j = body ? cJSON_ParseWithLength(body, len) : NULL;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(j, "name");
    if (!cJSON_IsString(name)) {
        cJSON_Delete(j);
        emu_resp_gcs_error(w, 400, "required", "Required parameter: name");
        return;
    }
    int rc = emu_gcs_bucket_create(ctx, name->valuestring);
    if (rc == -EEXIST)
        emu_resp_gcs_error(w, 409, "conflict",
                           "Your previous request to create the named bucket succeeded and you "
                           "already own it.");
    else if (rc == -EINVAL)
        emu_resp_gcs_error(w, 400, "invalid", "Invalid bucket name: '%s'", name->valuestring);
    else if (rc != 0)
        emu_resp_gcs_error(w, 500, "backendError", "Cannot create the bucket.");
    else {
        int64_t created = 0;
        emu_store_bucket_info(ctx, name->valuestring, &created);
        emu_resp_json(w, 200, bucket_json(ctx, name->valuestring, created));
    }
    cJSON_Delete(j);
}

struct bucket_list {
    emu_ctx *ctx;
    cJSON *items;
};

static void bucket_list_cb(void *c, const char *name, int64_t created)
{
    struct bucket_list *bl = c;
    cJSON_AddItemToArray(bl->items, bucket_json(bl->ctx, name, created));
}

static void bucket_list(emu_ctx *ctx, emu_response *w)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "kind", "storage#buckets");
    struct bucket_list bl = {ctx, cJSON_CreateArray()};
    emu_store_bucket_each(ctx, bucket_list_cb, &bl);
    if (cJSON_GetArraySize(bl.items) > 0)
        cJSON_AddItemToObject(root, "items", bl.items);
    else
        cJSON_Delete(bl.items);
    emu_resp_json(w, 200, root);
}

static void bucket_get(emu_ctx *ctx, const char *bucket, emu_response *w)
{
    int64_t created;
    if (emu_store_bucket_info(ctx, bucket, &created) != EMU_STORE_OK) {
        emu_resp_gcs_error(w, 404, "notFound", "The specified bucket does not exist.");
        return;
    }
    emu_resp_json(w, 200, bucket_json(ctx, bucket, created));
}

static void bucket_delete(emu_ctx *ctx, const char *bucket, emu_response *w)
{
    int rc = emu_store_bucket_delete(ctx, bucket);
    if (rc == EMU_STORE_OK)
        emu_resp_empty(w, 204);
    else if (rc == EMU_STORE_EXISTS)
        emu_resp_gcs_error(w, 409, "conflict", "The bucket you tried to delete is not empty.");
    else
        answer_store_error(w, rc, bucket, NULL);
}

/* ---- objects: get / download ---- */

/* Parses "bytes=a-b", "bytes=a-", "bytes=-n". Returns 0 ok, 1 unsatisfiable,
 * -1 ignored (absent or unsupported, e.g. several ranges). */
static int parse_range(const char *h, uint64_t size, uint64_t *first, uint64_t *last)
{
    if (!h || strncasecmp(h, "bytes=", 6) != 0 || strchr(h, ','))
        return -1;
    const char *p = h + 6;
    char *end;
    if (*p == '-') {
        unsigned long long n = strtoull(p + 1, &end, 10);
        if (*end || end == p + 1)
            return -1;
        if (n == 0 || size == 0)
            return 1;
        *first = n >= size ? 0 : size - n;
        *last = size - 1;
        return 0;
    }
    unsigned long long a = strtoull(p, &end, 10);
    if (end == p || *end != '-')
        return -1;
    if (size == 0 && a == 0)
        return -1; /* "bytes=0-" of an empty object: the whole (empty) object */
    p = end + 1;
    unsigned long long b = size ? size - 1 : 0;
    if (*p) {
        b = strtoull(p, &end, 10);
        if (*end)
            return -1;
        if (b < a)
            return -1;
        if (size && b > size - 1)
            b = size - 1;
    }
    if (a >= size)
        return 1;
    *first = a;
    *last = b;
    return 0;
}

static void media_headers(emu_response *w, const emu_obj_info *o)
{
    char buf[160];
    snprintf(buf, sizeof(buf), "crc32c=%s,md5=%s", o->crc32c_b64, o->md5_b64);
    emu_resp_header(w, "x-goog-hash", buf);
    snprintf(buf, sizeof(buf), "%lld", (long long)o->generation);
    emu_resp_header(w, "x-goog-generation", buf);
    snprintf(buf, sizeof(buf), "%lld", (long long)o->metageneration);
    emu_resp_header(w, "x-goog-metageneration", buf);
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)o->size);
    emu_resp_header(w, "x-goog-stored-content-length", buf);
    emu_resp_header(w, "x-goog-stored-content-encoding", "identity");
    emu_resp_header(w, "x-goog-storage-class", "STANDARD");
    emu_resp_header(w, "Accept-Ranges", "bytes");
    char *etag = etag_of(o->generation, o->metageneration);
    if (etag) {
        snprintf(buf, sizeof(buf), "\"%s\"", etag);
        emu_resp_header(w, "ETag", buf);
    }
    free(etag);
}

static void object_get(emu_ctx *ctx, const emu_request *r, emu_response *w, const char *bucket,
                       const char *name, bool media)
{
    emu_preconds pre;
    if (!parse_preconds(r, w, &pre))
        return;
    emu_obj_info o;
    int fd = -1;
    int rc = emu_store_object_get(ctx, bucket, name, &pre, &o, media ? &fd : NULL);
    if (rc != EMU_STORE_OK) {
        answer_store_error(w, rc, bucket, name);
        return;
    }
    int64_t want_gen;
    if (parse_i64(emu_req_query(r, "generation"), &want_gen) && want_gen != o.generation) {
        if (fd >= 0)
            close(fd);
        emu_resp_gcs_error(w, 404, "notFound", "No such object: %s/%s#%lld", bucket, name,
                           (long long)want_gen);
        emu_obj_info_clear(&o);
        return;
    }
    if (!media) {
        emu_resp_json(w, 200, object_json(ctx, &o));
        emu_obj_info_clear(&o);
        return;
    }
    uint64_t first = 0, last = 0;
    int pr = parse_range(emu_req_header(r, "Range"), o.size, &first, &last);
    char buf[128];
    if (pr == 1) {
        close(fd);
        emu_resp_gcs_error(w, 416, "requestedRangeNotSatisfiable", "Request range not satisfiable");
        snprintf(buf, sizeof(buf), "bytes */%llu", (unsigned long long)o.size);
        emu_resp_header(w, "Content-Range", buf);
    } else if (pr == 0) {
        emu_resp_file(w, 206, o.content_type, fd, (off_t)first, last - first + 1);
        snprintf(buf, sizeof(buf), "bytes %llu-%llu/%llu", (unsigned long long)first,
                 (unsigned long long)last, (unsigned long long)o.size);
        emu_resp_header(w, "Content-Range", buf);
        media_headers(w, &o);
    } else {
        emu_resp_file(w, 200, o.content_type, fd, 0, o.size);
        media_headers(w, &o);
    }
    emu_obj_info_clear(&o);
}

static void object_delete(emu_ctx *ctx, const emu_request *r, emu_response *w, const char *bucket,
                          const char *name)
{
    emu_preconds pre;
    if (!parse_preconds(r, w, &pre))
        return;
    int rc = emu_store_object_delete(ctx, bucket, name, &pre);
    atomic_fetch_add(&ctx->stats.object_deletes, 1);
    if (rc != EMU_STORE_OK)
        answer_store_error(w, rc, bucket, name);
    else
        emu_resp_empty(w, 204);
}

/* ---- objects: list ---- */

typedef struct lister {
    emu_ctx *ctx;
    const char *prefix;
    const char *delim;
    const char *end_offset;
    char *after; /* page token: skip names <= this, and names under it if it is a prefix */
    bool trailing;
    int max;
    int count;
    char *last_prefix;
    char *last_key; /* last emitted item name or prefix */
    cJSON *items, *prefixes;
    bool more;
} lister;

static int list_cb(void *c, const emu_obj_info *o)
{
    lister *l = c;
    if (l->end_offset && *l->end_offset && strcmp(o->name, l->end_offset) >= 0)
        return 1;
    if (l->after) {
        if (strcmp(o->name, l->after) <= 0)
            return 0;
        if (l->delim && *l->delim && has_prefix(o->name, l->after) &&
            strlen(l->after) >= strlen(l->delim) &&
            strcmp(l->after + strlen(l->after) - strlen(l->delim), l->delim) == 0)
            return 0;
    }
    const char *rel = o->name + strlen(l->prefix);
    const char *d = l->delim && *l->delim ? strstr(rel, l->delim) : NULL;
    if (d) {
        size_t plen = (size_t)(d - o->name) + strlen(l->delim);
        if (l->last_prefix && strlen(l->last_prefix) == plen &&
            strncmp(l->last_prefix, o->name, plen) == 0)
            return 0;
        if (l->count >= l->max) {
            l->more = true;
            return 1;
        }
        free(l->last_prefix);
        l->last_prefix = strndup(o->name, plen);
        cJSON_AddItemToArray(l->prefixes, cJSON_CreateString(l->last_prefix));
        free(l->last_key);
        l->last_key = strdup(l->last_prefix);
        l->count++;
        /* includeTrailingDelimiter: "a/" itself also appears as an item. */
        if (!(l->trailing && o->name[plen] == '\0'))
            return 0;
    } else if (l->count >= l->max) {
        l->more = true;
        return 1;
    }
    cJSON_AddItemToArray(l->items, object_json(l->ctx, o));
    if (!d) {
        free(l->last_key);
        l->last_key = strdup(o->name);
        l->count++;
    }
    return 0;
}

static void object_list(emu_ctx *ctx, const emu_request *r, emu_response *w, const char *bucket)
{
    lister l = {0};
    l.ctx = ctx;
    l.prefix = emu_req_query(r, "prefix") ? emu_req_query(r, "prefix") : "";
    l.delim = emu_req_query(r, "delimiter");
    l.end_offset = emu_req_query(r, "endOffset");
    const char *trailing = emu_req_query(r, "includeTrailingDelimiter");
    l.trailing = trailing && strcmp(trailing, "true") == 0;
    l.max = 1000;
    const char *mr = emu_req_query(r, "maxResults");
    int64_t mv;
    if (mr) {
        if (!parse_i64(mr, &mv) || mv < 0) {
            emu_resp_gcs_error(w, 400, "invalid", "Invalid value for maxResults: %s", mr);
            return;
        }
        if (mv > 0 && mv < 1000)
            l.max = (int)mv;
    }
    const char *tok = emu_req_query(r, "pageToken");
    if (tok && *tok) {
        size_t tl = strlen(tok);
        unsigned char *raw = malloc(tl + 1);
        long n = raw ? util_b64_decode(tok, tl, raw, tl) : -1;
        if (n < 0) {
            free(raw);
            emu_resp_gcs_error(w, 400, "invalid", "Invalid pageToken.");
            return;
        }
        raw[n] = '\0';
        l.after = (char *)raw;
    }
    const char *start = emu_req_query(r, "startOffset");
    const char *from = start;
    if (l.after && (!from || strcmp(l.after, from) > 0))
        from = l.after;
    l.items = cJSON_CreateArray();
    l.prefixes = cJSON_CreateArray();
    int rc = emu_store_object_each(ctx, bucket, l.prefix, from, list_cb, &l);
    if (rc != EMU_STORE_OK) {
        answer_store_error(w, rc, bucket, NULL);
        cJSON_Delete(l.items);
        cJSON_Delete(l.prefixes);
    } else {
        cJSON *root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "kind", "storage#objects");
        if (l.more && l.last_key) {
            char *t = util_b64_encode((const unsigned char *)l.last_key, strlen(l.last_key), true);
            if (t)
                cJSON_AddStringToObject(root, "nextPageToken", t);
            free(t);
        }
        if (cJSON_GetArraySize(l.prefixes) > 0)
            cJSON_AddItemToObject(root, "prefixes", l.prefixes);
        else
            cJSON_Delete(l.prefixes);
        if (cJSON_GetArraySize(l.items) > 0)
            cJSON_AddItemToObject(root, "items", l.items);
        else
            cJSON_Delete(l.items);
        emu_resp_json(w, 200, root);
    }
    free(l.after);
    free(l.last_prefix);
    free(l.last_key);
}

/* ---- uploads ---- */

/* Writes body bytes [skip, len) into a writer. */
static int write_body(const emu_request *r, emu_writer *wr)
{
    uint64_t flen;
    int fd = emu_req_body_fd(r, &flen);
    if (fd >= 0)
        return emu_store_writer_write_fd(wr, fd, flen);
    size_t len;
    const char *b = emu_req_body(r, &len);
    return emu_store_writer_write(wr, b, len);
}

static void answer_object(emu_ctx *ctx, emu_response *w, int rc, emu_obj_info *o,
                          const char *bucket, const char *name)
{
    if (rc != EMU_STORE_OK) {
        answer_store_error(w, rc, bucket, name);
        return;
    }
    emu_resp_json(w, 200, object_json(ctx, o));
    emu_obj_info_clear(o);
}

static void upload_media(emu_ctx *ctx, const emu_request *r, emu_response *w, const char *bucket)
{
    const char *name = emu_req_query(r, "name");
    if (!name) {
        emu_resp_gcs_error(w, 400, "required", "Required parameter: name");
        return;
    }
    if (!valid_object_name(name, w))
        return;
    emu_preconds pre;
    if (!parse_preconds(r, w, &pre))
        return;
    char md5[64] = "", crc[32] = "", spool[4200];
    parse_goog_hash(emu_req_header(r, "x-goog-hash"), md5, sizeof(md5), crc, sizeof(crc));
    unsigned char spool_md5[16];
    uint32_t spool_crc;
    uint64_t spool_len = 0;
    emu_writer *wr = NULL;
    if (emu_req_body_fd(r, &spool_len) >= 0 &&
        emu_req_spool_take(r, spool, sizeof(spool), spool_md5, &spool_crc)) {
        /* A big body is already a hashed file: adopt it instead of copying. */
        wr = emu_store_writer_adopt(ctx, spool, spool_len, spool_md5, spool_crc);
        if (!wr)
            unlink(spool);
    } else {
        wr = emu_store_writer_new(ctx);
        if (wr && write_body(r, wr) != EMU_STORE_OK) {
            emu_store_writer_abort(wr);
            wr = NULL;
        }
    }
    if (!wr) {
        emu_resp_gcs_error(w, 500, "backendError", "Cannot store the upload.");
        return;
    }
    const char *ct = emu_req_header(r, "Content-Type");
    emu_obj_info o;
    int rc = emu_store_writer_commit(wr, bucket, name, ct ? ct : "application/octet-stream", NULL,
                                     &pre, md5, crc, &o);
    answer_object(ctx, w, rc, &o, bucket, name);
}

typedef struct mp_parts {
    int n;
    multipart_part part[2];
} mp_parts;

static int mp_collect(void *c, const multipart_part *p)
{
    mp_parts *m = c;
    if (m->n < 2)
        m->part[m->n] = *p;
    m->n++;
    return 0;
}

static const char *json_str(const cJSON *j, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void upload_multipart(emu_ctx *ctx, const emu_request *r, emu_response *w,
                             const char *bucket)
{
    const char *ct = emu_req_header(r, "Content-Type");
    char *boundary = ct ? multipart_content_type_param(ct, "boundary") : NULL;
    if (!boundary || strncasecmp(ct, "multipart/", 10) != 0) {
        free(boundary);
        emu_resp_gcs_error(w, 400, "invalid",
                           "A multipart upload needs Content-Type multipart/related with a "
                           "boundary.");
        return;
    }
    emu_preconds pre;
    body_view b;
    if (!parse_preconds(r, w, &pre)) {
        free(boundary);
        return;
    }
    if (body_get(r, &b) != 0) {
        free(boundary);
        emu_resp_gcs_error(w, 500, "backendError", "Cannot read the upload.");
        return;
    }
    mp_parts m = {0};
    char why[160] = "";
    int prc = multipart_parse(b.data, b.len, boundary, mp_collect, &m, why, sizeof(why));
    free(boundary);
    if (prc != CERR_OK || m.n != 2) {
        body_put(&b);
        emu_resp_gcs_error(w, 400, "invalid", "Malformed multipart body (%s).",
                           prc != CERR_OK ? why : "expected metadata and media parts");
        return;
    }
    cJSON *meta = cJSON_ParseWithLength(m.part[0].body, m.part[0].body_len);
    char media_ct[256] = "";
    multipart_part_header(&m.part[1], "Content-Type", media_ct, sizeof(media_ct));
    const char *name = json_str(meta, "name");
    if (!name)
        name = emu_req_query(r, "name");
    const char *meta_ct = json_str(meta, "contentType");
    if (!cJSON_IsObject(meta)) {
        emu_resp_gcs_error(w, 400, "invalid", "The metadata part is not a JSON object.");
    } else if (!name) {
        emu_resp_gcs_error(w, 400, "required", "Required parameter: name");
    } else if (meta_ct && media_ct[0] && strcasecmp(meta_ct, media_ct) != 0) {
        emu_resp_gcs_error(w, 400, "invalid",
                           "Content-Type specified in the upload (%s) does not match "
                           "Content-Type specified in metadata (%s).",
                           media_ct, meta_ct);
    } else if (valid_object_name(name, w)) {
        char md5[64] = "", crc[32] = "";
        parse_goog_hash(emu_req_header(r, "x-goog-hash"), md5, sizeof(md5), crc, sizeof(crc));
        if (json_str(meta, "md5Hash"))
            snprintf(md5, sizeof(md5), "%s", json_str(meta, "md5Hash"));
        if (json_str(meta, "crc32c"))
            snprintf(crc, sizeof(crc), "%s", json_str(meta, "crc32c"));
        emu_writer *wr = emu_store_writer_new(ctx);
        if (!wr || emu_store_writer_write(wr, m.part[1].body, m.part[1].body_len) != 0) {
            emu_store_writer_abort(wr);
            emu_resp_gcs_error(w, 500, "backendError", "Cannot store the upload.");
        } else {
            emu_obj_info o;
            const char *type = meta_ct ? meta_ct : media_ct[0] ? media_ct : NULL;
            int rc = emu_store_writer_commit(wr, bucket, name, type,
                                             cJSON_GetObjectItemCaseSensitive(meta, "metadata"),
                                             &pre, md5, crc, &o);
            answer_object(ctx, w, rc, &o, bucket, name);
        }
    }
    cJSON_Delete(meta);
    body_put(&b);
}

/* ---- resumable sessions ---- */

static bool valid_upload_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return false;
    return true;
}

static void session_path(emu_ctx *ctx, const char *id, const char *ext, char *out, size_t len)
{
    snprintf(out, len, "%s/gcs/uploads/%s.%s", emu_data_dir(ctx), id, ext);
}

/* Session locks, striped by upload id: appends and the final hashing of one
 * session never wait for another session's. */
#define SESSION_LOCKS 64

typedef struct upsess upsess;

/* The resumable sessions of one emulator (owned by its context). */
struct emu_uploads {
    pthread_mutex_t locks[SESSION_LOCKS];
    pthread_mutex_t mu; /* list and refs */
    upsess *list;
};

static pthread_mutex_t *session_lock(emu_ctx *ctx, const char *id)
{
    return &ctx->uploads->locks[util_fnv1a_str(UTIL_FNV1A_INIT, id) % SESSION_LOCKS];
}

/* What the emulator keeps in memory of each session's part file: its
 * length and the running MD5/CRC32C of its bytes, so a chunk is hashed as
 * it arrives and finishing a 1 GiB upload does not read the file back.
 * Built from the part file's size when first needed; after a restart the
 * hashes of the bytes already there are unknown, and the file is hashed
 * once at the end. Appends take only the entry's own lock, so a chunk
 * streaming in (emu_body_sink) never holds the session lock. */
struct upsess {
    struct upsess *next;
    emu_uploads *owner;
    unsigned refs; /* under owner->mu */
    char id[65];
    pthread_mutex_t mu; /* the fields below */
    bool dead;          /* cancelled or finished: nothing more is appended */
    bool hashed;        /* md5 and crc cover [0, len) */
    EVP_MD_CTX *md5;
    uint32_t crc;
    uint64_t len; /* bytes in the part file */
};

emu_uploads *emu_uploads_new(void)
{
    emu_uploads *up = calloc(1, sizeof(*up));
    if (!up)
        return NULL;
    for (int i = 0; i < SESSION_LOCKS; i++)
        pthread_mutex_init(&up->locks[i], NULL);
    pthread_mutex_init(&up->mu, NULL);
    return up;
}

static void upsess_unref(upsess *u)
{
    if (!u)
        return;
    pthread_mutex_lock(&u->owner->mu);
    bool last = --u->refs == 0;
    pthread_mutex_unlock(&u->owner->mu);
    if (last) {
        pthread_mutex_destroy(&u->mu);
        EVP_MD_CTX_free(u->md5);
        free(u);
    }
}

/* The entry of session id, referenced (upsess_unref), or NULL when its
 * part file is gone. Called with the session lock held, which keeps two
 * callers from creating the same entry and the part file from coming or
 * going meanwhile. */
static upsess *upsess_get(emu_ctx *ctx, const char *id)
{
    emu_uploads *up = ctx->uploads;
    pthread_mutex_lock(&up->mu);
    upsess *u = up->list;
    while (u && strcmp(u->id, id) != 0)
        u = u->next;
    if (u)
        u->refs++;
    pthread_mutex_unlock(&up->mu);
    if (u)
        return u;
    char path[4200];
    struct stat st;
    session_path(ctx, id, "part", path, sizeof(path));
    if (stat(path, &st) != 0 || !(u = calloc(1, sizeof(*u))))
        return NULL;
    snprintf(u->id, sizeof(u->id), "%s", id);
    u->owner = up;
    pthread_mutex_init(&u->mu, NULL);
    u->len = (uint64_t)st.st_size;
    u->md5 = EVP_MD_CTX_new();
    /* Bytes received before a restart were never hashed here. */
    u->hashed = u->len == 0 && u->md5 && EVP_DigestInit_ex(u->md5, EVP_md5(), NULL) == 1;
    u->refs = 2; /* the registry's and the caller's */
    pthread_mutex_lock(&up->mu);
    u->next = up->list;
    up->list = u;
    pthread_mutex_unlock(&up->mu);
    return u;
}

/* Ends the session's life in memory (cancelled or finished): appends of
 * chunks still streaming in are dropped from now on. With the session lock. */
static void upsess_kill(emu_uploads *up, const char *id)
{
    upsess *u = NULL;
    pthread_mutex_lock(&up->mu);
    for (upsess **pp = &up->list; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->id, id) == 0) {
            u = *pp;
            *pp = u->next;
            break;
        }
    }
    pthread_mutex_unlock(&up->mu);
    if (!u)
        return;
    pthread_mutex_lock(&u->mu);
    u->dead = true;
    pthread_mutex_unlock(&u->mu);
    upsess_unref(u);
}

void emu_uploads_free(emu_uploads *up)
{
    if (!up)
        return;
    while (up->list) {
        upsess *u = up->list;
        up->list = u->next;
        upsess_unref(u);
    }
    for (int i = 0; i < SESSION_LOCKS; i++)
        pthread_mutex_destroy(&up->locks[i]);
    pthread_mutex_destroy(&up->mu);
    free(up);
}

static uint64_t upsess_len(upsess *u)
{
    pthread_mutex_lock(&u->mu);
    uint64_t n = u->len;
    pthread_mutex_unlock(&u->mu);
    return n;
}

/* Appends, with u->mu held, the bytes of [off, off + n) of the object that
 * extend the part file: bytes below its end were received before (a chunk
 * re-sent after a failure overlaps them) and are skipped, so only bytes at
 * the current end extend the file and its hashes; nothing at or past
 * keep_end is kept. Returns 0, or -1 on a write error (the hashes are then
 * given up and the file is hashed at the end). */
static int part_append_locked(upsess *u, int fd, uint64_t off, const char *data, size_t n,
                              uint64_t keep_end)
{
    uint64_t end = off + n < keep_end ? off + n : keep_end;
    if (u->dead || off > u->len || end <= u->len)
        return 0;
    const char *p = data + (u->len - off);
    size_t left = (size_t)(end - u->len);
    while (left) {
        ssize_t got = write(fd, p, left);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            log_error("append to upload session %s: %s", u->id,
                      got < 0 ? strerror(errno) : "short write");
            struct stat st;
            u->hashed = false;
            if (fstat(fd, &st) == 0)
                u->len = (uint64_t)st.st_size;
            return -1;
        }
        if (u->hashed) {
            EVP_DigestUpdate(u->md5, p, (size_t)got);
            u->crc = util_crc32c(u->crc, p, (size_t)got);
        }
        u->len += (uint64_t)got;
        p += got;
        left -= (size_t)got;
    }
    return 0;
}

static int part_append(upsess *u, int fd, uint64_t off, const char *data, size_t n,
                       uint64_t keep_end)
{
    pthread_mutex_lock(&u->mu);
    int rc = part_append_locked(u, fd, off, data, n, keep_end);
    pthread_mutex_unlock(&u->mu);
    return rc;
}

/* Takes the final length and hashes and ends the session's life in memory.
 * False when the hashes do not cover the file (restart, write error). */
static bool upsess_finish(upsess *u, uint64_t *len, unsigned char md5[16], uint32_t *crc)
{
    unsigned int dlen = 0;
    pthread_mutex_lock(&u->mu);
    u->dead = true;
    bool ok = u->hashed && EVP_DigestFinal_ex(u->md5, md5, &dlen) == 1;
    u->hashed = false;
    *len = u->len;
    *crc = u->crc;
    pthread_mutex_unlock(&u->mu);
    upsess_kill(u->owner, u->id);
    return ok;
}
static cJSON *session_load(emu_ctx *ctx, const char *id)
{
    char path[4200];
    session_path(ctx, id, "json", path, sizeof(path));
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char buf[65536];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return cJSON_Parse(buf);
}

static int session_save(emu_ctx *ctx, const char *id, cJSON *s)
{
    char path[4200];
    session_path(ctx, id, "json", path, sizeof(path));
    char *text = cJSON_PrintUnformatted(s);
    int rc = text && util_write_atomic(path, text, strlen(text), 0644) == 0 ? 0 : -1;
    free(text);
    return rc;
}

static void upload_resumable_start(emu_ctx *ctx, const emu_request *r, emu_response *w,
                                   const char *bucket)
{
    size_t len;
    const char *body = emu_req_body(r, &len);
    cJSON *meta = body && len ? cJSON_ParseWithLength(body, len) : NULL;
    if (body && len && !cJSON_IsObject(meta)) {
        cJSON_Delete(meta);
        emu_resp_gcs_error(w, 400, "parseError", "The resumable upload metadata is not JSON.");
        return;
    }
    const char *name = json_str(meta, "name");
    if (!name)
        name = emu_req_query(r, "name");
    emu_preconds pre;
    if (!name) {
        emu_resp_gcs_error(w, 400, "required", "Required parameter: name");
    } else if (!valid_object_name(name, w) || !parse_preconds(r, w, &pre)) {
        /* answered */
    } else if (!emu_gcs_bucket_exists(ctx, bucket)) {
        emu_resp_gcs_error(w, 404, "notFound", "The specified bucket does not exist.");
    } else {
        char id[33], path[4200];
        emu_random_hex(id, 16);
        cJSON *s = cJSON_CreateObject();
        cJSON_AddStringToObject(s, "bucket", bucket);
        cJSON_AddStringToObject(s, "name", name);
        const char *ct = emu_req_header(r, "X-Upload-Content-Type");
        if (!ct)
            ct = json_str(meta, "contentType");
        if (ct)
            cJSON_AddStringToObject(s, "contentType", ct);
        const char *total = emu_req_header(r, "X-Upload-Content-Length");
        if (total)
            cJSON_AddStringToObject(s, "declaredLength", total);
        if (json_str(meta, "md5Hash"))
            cJSON_AddStringToObject(s, "md5Hash", json_str(meta, "md5Hash"));
        if (json_str(meta, "crc32c"))
            cJSON_AddStringToObject(s, "crc32c", json_str(meta, "crc32c"));
        cJSON *md = cJSON_GetObjectItemCaseSensitive(meta, "metadata");
        if (cJSON_IsObject(md))
            cJSON_AddItemToObject(s, "metadata", cJSON_Duplicate(md, 1));
        cJSON *p = cJSON_AddObjectToObject(s, "preconditions");
        if (pre.has_gen_match)
            add_i64_str(p, "ifGenerationMatch", pre.gen_match);
        if (pre.has_gen_not_match)
            add_i64_str(p, "ifGenerationNotMatch", pre.gen_not_match);
        if (pre.has_meta_match)
            add_i64_str(p, "ifMetagenerationMatch", pre.meta_match);
        if (pre.has_meta_not_match)
            add_i64_str(p, "ifMetagenerationNotMatch", pre.meta_not_match);
        snprintf(path, sizeof(path), "%s/gcs/uploads", emu_data_dir(ctx));
        util_mkdirs(path, 0700);
        session_path(ctx, id, "part", path, sizeof(path));
        int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0600);
        if (fd >= 0)
            close(fd);
        if (fd < 0 || session_save(ctx, id, s) != 0) {
            emu_resp_gcs_error(w, 500, "backendError", "Cannot create the upload session.");
        } else {
            char *eb = url_encode(bucket);
            char loc[1024];
            snprintf(loc, sizeof(loc),
                     "%s/upload/storage/v1/b/%s/o?uploadType=resumable&upload_id=%s",
                     emu_base_url(ctx), eb ? eb : bucket, id);
            free(eb);
            emu_resp_empty(w, 200);
            emu_resp_header(w, "Location", loc);
            emu_resp_header(w, "X-GUploader-UploadID", id);
        }
        cJSON_Delete(s);
    }
    cJSON_Delete(meta);
}

/* Content-Range forms: "bytes A-B/T", "bytes A-B/STAR", "bytes STAR/T",
 * "bytes STAR/STAR" (STAR = '*'). first < 0 means no bytes; total < 0 means
 * unknown. */
static int parse_content_range(const char *h, int64_t *first, int64_t *last, int64_t *total)
{
    if (!h || strncasecmp(h, "bytes ", 6) != 0)
        return -1;
    const char *p = h + 6;
    while (*p == ' ')
        p++;
    char *end;
    if (*p == '*') {
        *first = *last = -1;
        p++;
    } else {
        *first = strtoll(p, &end, 10);
        if (end == p || *end != '-')
            return -1;
        p = end + 1;
        if (*p == '*') {
            /* "A-STAR": the body runs to the end of this request (single-
             * stream uploads of the Node client). */
            *last = -2;
            p++;
        } else {
            *last = strtoll(p, &end, 10);
            if (end == p || *last < *first)
                return -1;
            p = end;
        }
    }
    if (*p != '/')
        return -1;
    p++;
    if (*p == '*' && p[1] == '\0') {
        *total = -1;
        return 0;
    }
    *total = strtoll(p, &end, 10);
    return end != p && *end == '\0' && *total >= 0 ? 0 : -1;
}

static void answer_incomplete(const emu_request *r, emu_response *w, uint64_t persisted)
{
    const char *no308 = emu_req_header(r, "X-GUploader-No-308");
    bool override = no308 && strcasecmp(no308, "yes") == 0;
    emu_resp_empty(w, override ? 200 : 308);
    if (override)
        emu_resp_header(w, "X-Http-Status-Code-Override", "308");
    if (persisted > 0) {
        char buf[64];
        snprintf(buf, sizeof(buf), "bytes=0-%llu", (unsigned long long)persisted - 1);
        emu_resp_header(w, "Range", buf);
    }
}

static void preconds_from_json(const cJSON *p, emu_preconds *pre)
{
    memset(pre, 0, sizeof(*pre));
    pre->has_gen_match = parse_i64(json_str(p, "ifGenerationMatch"), &pre->gen_match);
    pre->has_gen_not_match = parse_i64(json_str(p, "ifGenerationNotMatch"), &pre->gen_not_match);
    pre->has_meta_match = parse_i64(json_str(p, "ifMetagenerationMatch"), &pre->meta_match);
    pre->has_meta_not_match =
        parse_i64(json_str(p, "ifMetagenerationNotMatch"), &pre->meta_not_match);
}

/* Called with the session's lock held once every byte is in the part file. */
static void session_finalize(emu_ctx *ctx, const emu_request *r, emu_response *w, const char *id,
                             cJSON *s, upsess *u)
{
    char path[4200], md5[64] = "", crc[32] = "";
    session_path(ctx, id, "part", path, sizeof(path));
    if (json_str(s, "md5Hash"))
        snprintf(md5, sizeof(md5), "%s", json_str(s, "md5Hash"));
    if (json_str(s, "crc32c"))
        snprintf(crc, sizeof(crc), "%s", json_str(s, "crc32c"));
    parse_goog_hash(emu_req_header(r, "x-goog-hash"), md5, sizeof(md5), crc, sizeof(crc));
    emu_preconds pre;
    preconds_from_json(cJSON_GetObjectItemCaseSensitive(s, "preconditions"), &pre);
    const char *bucket = json_str(s, "bucket"), *name = json_str(s, "name");
    emu_obj_info o;
    const char *ct = json_str(s, "contentType");
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(s, "metadata");
    struct stat st;
    int rc;
    unsigned char digest[16];
    uint32_t crc_val;
    uint64_t len;
    if (upsess_finish(u, &len, digest, &crc_val) && stat(path, &st) == 0 &&
        (uint64_t)st.st_size == len) {
        /* Hashed as it arrived: the object is a rename of the part file. */
        emu_writer *wr = emu_store_writer_adopt(ctx, path, len, digest, crc_val);
        rc = wr ? emu_store_writer_commit(wr, bucket, name, ct, meta, &pre, md5, crc, &o)
                : EMU_STORE_IO;
    } else {
        rc = emu_store_commit_file(ctx, path, bucket, name, ct, meta, &pre, md5, crc, &o);
    }
    if (rc != EMU_STORE_OK) {
        /* The session is over either way, as on GCS: the bytes are dropped. */
        unlink(path);
        session_path(ctx, id, "json", path, sizeof(path));
        unlink(path);
        answer_store_error(w, rc, bucket, name);
        return;
    }
    cJSON *obj = object_json(ctx, &o);
    emu_obj_info_clear(&o);
    cJSON_AddItemToObject(s, "result", cJSON_Duplicate(obj, 1));
    if (session_save(ctx, id, s) != 0)
        log_warn("cannot record the end of upload session %s", id);
    emu_resp_json(w, 200, obj);
}

/* A request's place in the object: bytes [first, last] of total (first < 0:
 * no bytes, a status query or the final empty request; total < 0:
 * unknown). */
typedef struct chunk_range {
    int64_t first, last, total;
} chunk_range;

/* Checks a request carrying len body bytes against the persisted bytes of
 * its session. Returns 0 with c filled, or -1 with why (answered 400). */
static int chunk_check(const char *cr, uint64_t len, uint64_t persisted, chunk_range *c, char *why,
                       size_t whylen)
{
    if (!cr) {
        /* A single PUT with the whole content. */
        c->first = len ? 0 : -1;
        c->last = len ? (int64_t)len - 1 : -1;
        c->total = (int64_t)len;
    } else if (parse_content_range(cr, &c->first, &c->last, &c->total) != 0) {
        snprintf(why, whylen, "Invalid Content-Range: %s", cr);
        return -1;
    } else if (c->last == -2) {
        /* Open-ended: this request carries the rest; with an unknown total
         * it is also the end of the object. */
        if (c->total < 0)
            c->total = c->first + (int64_t)len;
        c->last = c->first + (int64_t)len - 1;
        if (len == 0)
            c->first = c->last = -1;
    }
    if (c->first < 0) {
        if (len == 0)
            return 0;
        snprintf(why, whylen, "Content-Range without bytes but a body.");
    } else if ((uint64_t)(c->last - c->first + 1) != len) {
        snprintf(why, whylen, "Content-Range %s does not match the %llu bytes sent.", cr,
                 (unsigned long long)len);
    } else if ((uint64_t)c->first > persisted) {
        snprintf(why, whylen, "Content-Range starts at %lld but only %llu bytes were received.",
                 (long long)c->first, (unsigned long long)persisted);
    } else if (c->total >= 0 && c->last >= c->total) {
        snprintf(why, whylen, "Content-Range %s goes past the total size.", cr);
    } else if ((c->total < 0 || c->last + 1 < c->total) && len % CHUNK_QUANTUM != 0) {
        snprintf(why, whylen,
                 "Invalid request. The number of bytes uploaded is required to be equal or "
                 "greater than 262144, except for the final request (it's recommended to be "
                 "the exact multiple of 262144). The received request contained %llu bytes, "
                 "which does not meet this requirement.",
                 (unsigned long long)len);
    } else {
        return 0;
    }
    return -1;
}

/* Where the bytes of chunk c kept in the part file end: all of them, or
 * under the partial-persistence fault a 256 KiB multiple of the new ones
 * (GCS may keep fewer bytes than were sent; clients must resume from the
 * Range it answers). */
static uint64_t chunk_keep_end(const emu_request *r, const chunk_range *c, uint64_t persisted)
{
    uint64_t end = (uint64_t)c->last + 1;
    uint64_t limit = end > persisted ? end - persisted : 0;
    uint32_t aux;
    if (limit > 0 && emu_req_fault_partial(r, &aux)) {
        uint64_t quanta = (limit - 1) / CHUNK_QUANTUM;
        limit = (aux % (quanta + 1)) * CHUNK_QUANTUM;
    }
    return persisted + limit;
}

static int part_open(emu_ctx *ctx, const char *id)
{
    char path[4200];
    session_path(ctx, id, "part", path, sizeof(path));
    return open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
}

/* Appends an assembled body (in memory or spooled) holding chunk c. */
static int append_body(emu_ctx *ctx, const emu_request *r, const char *id, upsess *u,
                       const chunk_range *c, uint64_t persisted)
{
    uint64_t keep_end = chunk_keep_end(r, c, persisted);
    if (keep_end <= persisted)
        return 0;
    int out = part_open(ctx, id);
    if (out < 0)
        return -1;
    uint64_t flen = 0, off = (uint64_t)c->first;
    int in = emu_req_body_fd(r, &flen);
    int rc = 0;
    if (in < 0) {
        size_t len;
        const char *b = emu_req_body(r, &len);
        rc = part_append(u, out, off, b, len, keep_end);
    } else {
        char *buf = malloc(1 << 20);
        uint64_t at = 0;
        while (buf && at < flen && rc == 0) {
            size_t want = flen - at < (1u << 20) ? (size_t)(flen - at) : (1u << 20);
            ssize_t n = pread(in, buf, want, (off_t)at);
            if (n <= 0)
                rc = -1;
            else
                rc = part_append(u, out, off + at, buf, (size_t)n, keep_end);
            at += n > 0 ? (uint64_t)n : 0;
        }
        if (!buf)
            rc = -1;
        free(buf);
    }
    if (close(out) != 0)
        rc = -1;
    return rc;
}

/* ---- chunks written as they arrive ---- */

struct emu_body_sink {
    upsess *u;
    int fd;            /* the part file, appending */
    chunk_range c;     /* checked when the headers came */
    uint64_t pos;      /* offset in the object of the next byte to arrive */
    uint64_t keep_end; /* bytes at or past it are dropped (partial fault) */
    bool failed;       /* a write failed: the handler answers 500 */
    /* Bytes [tail_off, pos) not yet written: the part file grows by whole
     * 256 KiB quanta while a chunk streams in, and by its last bytes only
     * once the whole request is in. A chunk cut short thus leaves whole
     * quanta, as GCS keeps them, and a status query meanwhile never
     * reports bytes that could be taken back. */
    char *tail;
    size_t tail_len;
    uint64_t tail_off;
};

/* The path a session PUT must have to reach upload_resumable_put (see
 * emu_gcs_handle): /upload/storage/v1/b/BUCKET/o, with nothing else. */
static bool is_session_put(const emu_request *r, const char *id)
{
    const char *p = emu_req_path(r);
    const char *pre = "/upload/storage/v1/b/";
    if (!is_method(r, "PUT") || !emu_gcs_is_session_request(r) || !id || !valid_upload_id(id) ||
        strstr(emu_req_raw_path(r), "%00") || !has_prefix(p, pre))
        return false;
    p += strlen(pre);
    size_t blen = strcspn(p, "/");
    return blen > 0 && blen < 256 && (strcmp(p + blen, "/o") == 0 || strcmp(p + blen, "/o/") == 0);
}

static void sink_free(emu_body_sink *k)
{
    if (k->fd >= 0)
        close(k->fd);
    upsess_unref(k->u);
    free(k->tail);
    free(k);
}

emu_body_sink *emu_gcs_sink_open(emu_ctx *ctx, const emu_request *r, uint64_t content_length)
{
    const char *id = emu_req_query(r, "upload_id");
    if (!is_session_put(r, id))
        return NULL;
    emu_body_sink *k = calloc(1, sizeof(*k));
    if (!k || !(k->tail = malloc(CHUNK_QUANTUM))) {
        free(k);
        return NULL;
    }
    k->fd = -1;
    pthread_mutex_t *mu = session_lock(ctx, id);
    pthread_mutex_lock(mu);
    cJSON *s = session_load(ctx, id);
    if (s && !cJSON_GetObjectItemCaseSensitive(s, "result"))
        k->u = upsess_get(ctx, id);
    char why[400];
    uint64_t persisted = k->u ? upsess_len(k->u) : 0;
    /* Anything but a well-formed chunk with bytes (errors, status
     * queries) is left to the handler with the body assembled. */
    bool ok = k->u &&
              chunk_check(emu_req_header(r, "Content-Range"), content_length, persisted, &k->c, why,
                          sizeof(why)) == 0 &&
              k->c.first >= 0 && (k->fd = part_open(ctx, id)) >= 0;
    if (ok) {
        k->pos = (uint64_t)k->c.first;
        k->keep_end = chunk_keep_end(r, &k->c, persisted);
    }
    pthread_mutex_unlock(mu);
    cJSON_Delete(s);
    if (!ok) {
        sink_free(k);
        return NULL;
    }
    return k;
}

static void sink_append(emu_body_sink *k, uint64_t off, const char *data, size_t len)
{
    if (!k->failed && part_append(k->u, k->fd, off, data, len, k->keep_end) != 0)
        k->failed = true;
}

void emu_gcs_sink_write(emu_body_sink *k, const char *data, size_t len)
{
    while (len) {
        if (k->tail_len == 0 && k->pos % CHUNK_QUANTUM == 0 && len >= CHUNK_QUANTUM) {
            /* Whole quanta straight from the server's buffer. */
            size_t direct = len - len % CHUNK_QUANTUM;
            sink_append(k, k->pos, data, direct);
            k->pos += direct;
            data += direct;
            len -= direct;
            continue;
        }
        if (k->tail_len == 0)
            k->tail_off = k->pos;
        size_t room = CHUNK_QUANTUM - (size_t)(k->pos % CHUNK_QUANTUM);
        size_t take = len < room ? len : room;
        memcpy(k->tail + k->tail_len, data, take);
        k->tail_len += take;
        k->pos += take;
        data += take;
        len -= take;
        if (k->pos % CHUNK_QUANTUM == 0) {
            sink_append(k, k->tail_off, k->tail, k->tail_len);
            k->tail_len = 0;
        }
    }
}

/* The whole request is in: its last bytes are written too. */
static void sink_finish(emu_body_sink *k)
{
    if (k->tail_len)
        sink_append(k, k->tail_off, k->tail, k->tail_len);
    k->tail_len = 0;
}

void emu_gcs_sink_close(emu_body_sink *k)
{
    sink_free(k);
}

/* ---- chunk requests ---- */

static uint64_t body_len(const emu_request *r)
{
    uint64_t flen = 0;
    if (emu_req_body_fd(r, &flen) >= 0)
        return flen;
    size_t len = 0;
    emu_req_body(r, &len);
    return len;
}

static void upload_resumable_put_locked(emu_ctx *ctx, const emu_request *r, emu_response *w,
                                        const char *id, upsess *u, cJSON *s);

static void upload_resumable_put(emu_ctx *ctx, const emu_request *r, emu_response *w,
                                 const char *id)
{
    emu_body_sink *k = emu_req_sink(r);
    if (k)
        sink_finish(k);
    pthread_mutex_t *mu = session_lock(ctx, id);
    pthread_mutex_lock(mu);
    cJSON *s = session_load(ctx, id);
    cJSON *result = cJSON_GetObjectItemCaseSensitive(s, "result");
    upsess *u = s && !result ? upsess_get(ctx, id) : NULL;
    if (result)
        emu_resp_json(w, 200, cJSON_Duplicate(result, 1));
    else if (!u)
        emu_resp_gcs_error(w, 404, "notFound", "No such upload session: %s", id);
    else
        upload_resumable_put_locked(ctx, r, w, id, u, s);
    pthread_mutex_unlock(mu);
    upsess_unref(u);
    cJSON_Delete(s);
}

static void upload_resumable_put_locked(emu_ctx *ctx, const emu_request *r, emu_response *w,
                                        const char *id, upsess *u, cJSON *s)
{
    emu_body_sink *k = emu_req_sink(r);
    chunk_range c;
    int rc = 0;
    if (k) {
        /* Checked when the headers came; the bytes are in already. */
        c = k->c;
        rc = k->failed ? -1 : 0;
    } else {
        char why[400];
        uint64_t persisted = upsess_len(u);
        if (chunk_check(emu_req_header(r, "Content-Range"), body_len(r), persisted, &c, why,
                        sizeof(why)) != 0) {
            emu_resp_gcs_error(w, 400, "invalid", "%s", why);
            return;
        }
        if (c.first >= 0)
            rc = append_body(ctx, r, id, u, &c, persisted);
    }
    uint64_t persisted = upsess_len(u);
    if (rc != 0)
        emu_resp_gcs_error(w, 500, "backendError", "Cannot store the chunk.");
    else if (c.total >= 0 && persisted == (uint64_t)c.total)
        session_finalize(ctx, r, w, id, s, u);
    else if (c.first < 0 && c.total >= 0 && (uint64_t)c.total < persisted)
        emu_resp_gcs_error(w, 400, "invalid",
                           "Declared size %lld is below the %llu bytes already received.",
                           (long long)c.total, (unsigned long long)persisted);
    else
        answer_incomplete(r, w, persisted);
}

static void upload_resumable_delete(emu_ctx *ctx, emu_response *w, const char *id)
{
    char path[4200];
    pthread_mutex_t *mu = session_lock(ctx, id);
    pthread_mutex_lock(mu);
    session_path(ctx, id, "json", path, sizeof(path));
    bool existed = unlink(path) == 0;
    upsess_kill(ctx->uploads, id);
    session_path(ctx, id, "part", path, sizeof(path));
    unlink(path);
    pthread_mutex_unlock(mu);
    if (!existed)
        emu_resp_gcs_error(w, 404, "notFound", "No such upload session: %s", id);
    else
        emu_resp_empty(w, 499);
}

bool emu_gcs_is_session_request(const emu_request *r)
{
    return has_prefix(emu_req_path(r), "/upload/storage/v1/") &&
           emu_req_query(r, "upload_id") != NULL && !is_method(r, "POST");
}

static void upload(emu_ctx *ctx, const emu_request *r, emu_response *w, const char *bucket)
{
    const char *id = emu_req_query(r, "upload_id");
    if (id) {
        if (!valid_upload_id(id))
            emu_resp_gcs_error(w, 404, "notFound", "No such upload session.");
        else if (is_method(r, "PUT") || is_method(r, "POST"))
            upload_resumable_put(ctx, r, w, id);
        else if (is_method(r, "DELETE"))
            upload_resumable_delete(ctx, w, id);
        else
            emu_resp_gcs_error(w, 405, "invalid", "Method not allowed on an upload session.");
        return;
    }
    if (!is_method(r, "POST")) {
        emu_resp_gcs_error(w, 405, "invalid", "Uploads take POST.");
        return;
    }
    const char *type = emu_req_query(r, "uploadType");
    if (!type) {
        const char *ct = emu_req_header(r, "Content-Type");
        type = ct && strncasecmp(ct, "multipart/", 10) == 0 ? "multipart" : "media";
    }
    if (!emu_gcs_bucket_exists(ctx, bucket))
        emu_resp_gcs_error(w, 404, "notFound", "The specified bucket does not exist.");
    else if (strcmp(type, "media") == 0)
        upload_media(ctx, r, w, bucket);
    else if (strcmp(type, "multipart") == 0)
        upload_multipart(ctx, r, w, bucket);
    else if (strcmp(type, "resumable") == 0)
        upload_resumable_start(ctx, r, w, bucket);
    else
        emu_resp_gcs_error(w, 400, "invalid",
                           "Invalid uploadType '%s': expected media, multipart or resumable.",
                           type);
}

/* ---- routing ---- */

cJSON *emu_gcs_object_json(emu_ctx *ctx, const emu_obj_info *o)
{
    return object_json(ctx, o);
}

void emu_gcs_handle(emu_ctx *ctx, const emu_request *r, emu_response *w)
{
    const char *path = emu_req_path(r);
    bool is_upload = false, is_download = false;
    if (strcmp(path, "/batch/storage/v1") == 0) {
        emu_gcs_batch(ctx, r, w);
        return;
    }
    if (strstr(emu_req_raw_path(r), "%00")) {
        emu_resp_gcs_error(w, 400, "invalid", "Names cannot contain NUL characters.");
        return;
    }
    if (has_prefix(path, "/storage/v1")) {
        path += strlen("/storage/v1");
    } else if (has_prefix(path, "/upload/storage/v1")) {
        path += strlen("/upload/storage/v1");
        is_upload = true;
    } else if (has_prefix(path, "/download/storage/v1")) {
        path += strlen("/download/storage/v1");
        is_download = true;
    }
    if (strcmp(path, "/b") == 0 || strcmp(path, "/b/") == 0) {
        if (is_method(r, "POST") && !is_upload)
            bucket_insert(ctx, r, w);
        else if (is_method(r, "GET"))
            bucket_list(ctx, w);
        else
            emu_resp_gcs_error(w, 405, "invalid", "Method not allowed.");
        return;
    }
    if (!has_prefix(path, "/b/")) {
        emu_resp_gcs_error(w, 404, "notFound", "Not Found");
        return;
    }
    const char *bstart = path + 3;
    size_t blen = strcspn(bstart, "/");
    char bucket[256];
    if (blen == 0 || blen >= sizeof(bucket)) {
        emu_resp_gcs_error(w, 400, "invalid", "Invalid bucket name.");
        return;
    }
    memcpy(bucket, bstart, blen);
    bucket[blen] = '\0';
    const char *rest = bstart + blen;
    if (*rest == '\0' || strcmp(rest, "/") == 0) {
        if (is_method(r, "GET") && !is_upload && !is_download)
            bucket_get(ctx, bucket, w);
        else if (is_method(r, "DELETE") && !is_upload && !is_download)
            bucket_delete(ctx, bucket, w);
        else
            emu_resp_gcs_error(w, 405, "invalid", "Method not allowed.");
        return;
    }
    if (strcmp(rest, "/o") == 0 || strcmp(rest, "/o/") == 0) {
        if (is_upload || is_method(r, "POST") || is_method(r, "PUT") ||
            (is_method(r, "DELETE") && emu_req_query(r, "upload_id")))
            upload(ctx, r, w, bucket);
        else if (is_method(r, "GET"))
            object_list(ctx, r, w, bucket);
        else
            emu_resp_gcs_error(w, 405, "invalid", "Method not allowed.");
        return;
    }
    if (!has_prefix(rest, "/o/")) {
        emu_resp_gcs_error(w, 404, "notFound", "Not Found");
        return;
    }
    const char *name = rest + 3;
    if (is_method(r, "GET") || is_method(r, "HEAD")) {
        const char *alt = emu_req_query(r, "alt");
        object_get(ctx, r, w, bucket, name, is_download || (alt && strcmp(alt, "media") == 0));
    } else if (is_method(r, "DELETE")) {
        object_delete(ctx, r, w, bucket, name);
    } else {
        emu_resp_gcs_error(w, 405, "invalid", "Method not allowed.");
    }
}
