/* store: the emulated Cloud Storage state on disk, under DATA/gcs/.
 *
 *   DATA/gcs/buckets/<bucket>/bucket.json          bucket creation time
 *   DATA/gcs/buckets/<bucket>/objects/<K>.meta     object metadata (JSON)
 *   DATA/gcs/buckets/<bucket>/objects/<K>.<G>.data object bytes, generation G
 *
 * K is the SHA-256 (hex) of the object name, so any name (with '/', '..',
 * very long) maps to one safe file name; the name itself is in the sidecar.
 * A write goes to DATA/tmp, is hashed on the way, renamed to its generation's
 * data file, and becomes visible only when the sidecar is renamed over the
 * old one: a half-written object is never listed, and data files no sidecar
 * names are removed at start-up. An in-memory index (sorted by name) under
 * one mutex answers lookups and listings; the disk is the truth at start-up.
 *
 * Also holds small helpers (time, random ids) the core shares.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "emu_internal.h"
#include "log.h"
#include "util.h"

typedef struct obj_rec {
    emu_obj_info info;
    char key[65];
} obj_rec;

typedef struct bucket {
    char *name;
    int64_t created_us;
    obj_rec **objs;
    size_t n, cap;
} bucket;

struct emu_store {
    pthread_mutex_t mu;
    emu_ctx *ctx;
    bucket **b;
    size_t nb, capb;
    int64_t last_gen;
};

/* ---- shared helpers ---- */

int64_t emu_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void emu_random_hex(char *out, size_t nbytes)
{
    unsigned char raw[64];
    if (nbytes > sizeof(raw))
        nbytes = sizeof(raw);
    if (RAND_bytes(raw, (int)nbytes) != 1) {
        /* RAND_bytes failing means no entropy: never hand out guessable ids. */
        log_error("RAND_bytes failed");
        abort();
    }
    for (size_t i = 0; i < nbytes; i++)
        sprintf(out + 2 * i, "%02x", raw[i]);
    out[2 * nbytes] = '\0';
}

/* ---- object info ---- */

void emu_obj_info_clear(emu_obj_info *o)
{
    free(o->bucket);
    free(o->name);
    free(o->content_type);
    cJSON_Delete(o->metadata);
    memset(o, 0, sizeof(*o));
}

static int info_copy(emu_obj_info *dst, const emu_obj_info *src)
{
    *dst = *src;
    dst->bucket = strdup(src->bucket);
    dst->name = strdup(src->name);
    dst->content_type = src->content_type ? strdup(src->content_type) : NULL;
    dst->metadata = src->metadata ? cJSON_Duplicate(src->metadata, 1) : NULL;
    if (!dst->bucket || !dst->name) {
        emu_obj_info_clear(dst);
        return -1;
    }
    return 0;
}

int emu_preconds_check(const emu_preconds *p, const emu_obj_info *existing)
{
    if (!p)
        return EMU_STORE_OK;
    if (!existing) {
        if ((p->has_gen_match && p->gen_match != 0) || p->has_meta_match)
            return EMU_STORE_PRECOND;
        return EMU_STORE_OK;
    }
    if (p->has_gen_match && p->gen_match != existing->generation)
        return EMU_STORE_PRECOND;
    if (p->has_gen_not_match && p->gen_not_match == existing->generation)
        return EMU_STORE_PRECOND;
    if (p->has_meta_match && p->meta_match != existing->metageneration)
        return EMU_STORE_PRECOND;
    if (p->has_meta_not_match && p->meta_not_match == existing->metageneration)
        return EMU_STORE_PRECOND;
    return EMU_STORE_OK;
}

/* ---- paths ---- */

static void bucket_dir(emu_ctx *ctx, const char *b, char *out, size_t len)
{
    snprintf(out, len, "%s/gcs/buckets/%s", ctx->data_dir, b);
}

static void obj_meta_path(emu_ctx *ctx, const char *b, const char *key, char *out, size_t len)
{
    snprintf(out, len, "%s/gcs/buckets/%s/objects/%s.meta", ctx->data_dir, b, key);
}

static void obj_data_path(emu_ctx *ctx, const char *b, const char *key, int64_t gen, char *out,
                          size_t len)
{
    snprintf(out, len, "%s/gcs/buckets/%s/objects/%s.%lld.data", ctx->data_dir, b, key,
             (long long)gen);
}

static void name_key(const char *name, char out[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(name, strlen(name), md, &mdlen, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
    out[64] = '\0';
}

static bool valid_bucket_name(const char *b)
{
    size_t n = strlen(b);
    if (n < 3 || n > 222)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = b[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return false;
    }
    return b[0] != '.' && b[0] != '-' && b[0] != '_';
}

/* ---- index ---- */

static bucket *find_bucket(emu_store *s, const char *name, size_t *pos)
{
    size_t lo = 0, hi = s->nb;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(s->b[mid]->name, name);
        if (c == 0) {
            if (pos)
                *pos = mid;
            return s->b[mid];
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (pos)
        *pos = lo;
    return NULL;
}

static size_t obj_lower_bound(const bucket *b, const char *name)
{
    size_t lo = 0, hi = b->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (strcmp(b->objs[mid]->info.name, name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static obj_rec *find_obj(const bucket *b, const char *name, size_t *pos)
{
    size_t i = obj_lower_bound(b, name);
    if (pos)
        *pos = i;
    if (i < b->n && strcmp(b->objs[i]->info.name, name) == 0)
        return b->objs[i];
    return NULL;
}

static int insert_obj(bucket *b, size_t pos, obj_rec *o)
{
    obj_rec **n = util_grow(b->objs, b->n, &b->cap, sizeof(*n), 64);
    if (!n)
        return -1;
    b->objs = n;
    memmove(b->objs + pos + 1, b->objs + pos, (b->n - pos) * sizeof(*b->objs));
    b->objs[pos] = o;
    b->n++;
    return 0;
}

static void free_obj(obj_rec *o)
{
    if (!o)
        return;
    emu_obj_info_clear(&o->info);
    free(o);
}

static bucket *add_bucket(emu_store *s, const char *name, int64_t created_us)
{
    size_t pos;
    bucket *b = find_bucket(s, name, &pos);
    if (b)
        return b;
    bucket **n = util_grow(s->b, s->nb, &s->capb, sizeof(*n), 8);
    if (!n)
        return NULL;
    s->b = n;
    b = calloc(1, sizeof(*b));
    if (!b || !(b->name = strdup(name))) {
        free(b);
        return NULL;
    }
    b->created_us = created_us;
    memmove(s->b + pos + 1, s->b + pos, (s->nb - pos) * sizeof(*s->b));
    s->b[pos] = b;
    s->nb++;
    return b;
}

/* ---- sidecar files ---- */

static cJSON *info_to_sidecar(const emu_obj_info *o)
{
    char num[32];
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", o->name);
    if (o->content_type)
        cJSON_AddStringToObject(j, "contentType", o->content_type);
    snprintf(num, sizeof(num), "%lld", (long long)o->generation);
    cJSON_AddStringToObject(j, "generation", num);
    snprintf(num, sizeof(num), "%lld", (long long)o->metageneration);
    cJSON_AddStringToObject(j, "metageneration", num);
    snprintf(num, sizeof(num), "%llu", (unsigned long long)o->size);
    cJSON_AddStringToObject(j, "size", num);
    cJSON_AddStringToObject(j, "md5", o->md5_b64);
    cJSON_AddStringToObject(j, "crc32c", o->crc32c_b64);
    snprintf(num, sizeof(num), "%lld", (long long)o->created_us);
    cJSON_AddStringToObject(j, "timeCreated", num);
    snprintf(num, sizeof(num), "%lld", (long long)o->updated_us);
    cJSON_AddStringToObject(j, "updated", num);
    if (o->metadata)
        cJSON_AddItemToObject(j, "metadata", cJSON_Duplicate(o->metadata, 1));
    return j;
}

static const char *jstr(const cJSON *j, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static long long jnum(const cJSON *j, const char *k)
{
    const char *s = jstr(j, k);
    return s ? strtoll(s, NULL, 10) : 0;
}

static int sidecar_to_info(const cJSON *j, const char *bucket, emu_obj_info *o)
{
    memset(o, 0, sizeof(*o));
    const char *name = jstr(j, "name");
    if (!name)
        return -1;
    o->bucket = strdup(bucket);
    o->name = strdup(name);
    const char *ct = jstr(j, "contentType");
    o->content_type = ct ? strdup(ct) : NULL;
    o->generation = jnum(j, "generation");
    o->metageneration = jnum(j, "metageneration");
    o->size = (uint64_t)jnum(j, "size");
    snprintf(o->md5_b64, sizeof(o->md5_b64), "%s", jstr(j, "md5") ? jstr(j, "md5") : "");
    snprintf(o->crc32c_b64, sizeof(o->crc32c_b64), "%s",
             jstr(j, "crc32c") ? jstr(j, "crc32c") : "");
    o->created_us = jnum(j, "timeCreated");
    o->updated_us = jnum(j, "updated");
    const cJSON *md = cJSON_GetObjectItemCaseSensitive(j, "metadata");
    if (cJSON_IsObject(md))
        o->metadata = cJSON_Duplicate(md, 1);
    return o->bucket && o->name ? 0 : -1;
}

int emu_read_file(const char *path, char **data, size_t *len)
{
    *data = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    int rc = fstat(fd, &st) < 0 ? -errno : 0;
    char *buf = rc == 0 ? malloc((size_t)st.st_size + 1) : NULL;
    if (rc == 0 && !buf)
        rc = -ENOMEM;
    size_t got = buf ? util_pread_full(fd, buf, (size_t)st.st_size, 0) : 0;
    if (rc == 0 && got != (size_t)st.st_size)
        rc = -EIO;
    close(fd);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    buf[got] = '\0';
    *data = buf;
    *len = got;
    return 0;
}

cJSON *emu_read_json(const char *path)
{
    char *text;
    size_t len;
    if (emu_read_file(path, &text, &len) != 0)
        return NULL;
    cJSON *j = cJSON_Parse(text);
    free(text);
    return j;
}

int emu_write_json(const char *path, cJSON *j, bool pretty)
{
    char *text = pretty ? cJSON_Print(j) : cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    int rc = text ? util_write_atomic(path, text, strlen(text), 0600) : -ENOMEM;
    free(text);
    return rc;
}

/* ---- start-up ---- */

static bool ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

static void load_objects(emu_store *s, bucket *b)
{
    char dir[4096];
    bucket_dir(s->ctx, b->name, dir, sizeof(dir));
    strncat(dir, "/objects", sizeof(dir) - strlen(dir) - 1);
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!ends_with(e->d_name, ".meta") || strlen(e->d_name) != 64 + 5)
            continue;
        char path[4400];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        cJSON *j = emu_read_json(path);
        obj_rec *o = calloc(1, sizeof(*o));
        if (!j || !o || sidecar_to_info(j, b->name, &o->info) != 0) {
            log_warn("ignoring unreadable object sidecar %s", path);
            cJSON_Delete(j);
            free_obj(o);
            continue;
        }
        cJSON_Delete(j);
        memcpy(o->key, e->d_name, 64);
        o->key[64] = '\0';
        size_t pos;
        if (find_obj(b, o->info.name, &pos) || insert_obj(b, pos, o) != 0) {
            free_obj(o);
            continue;
        }
        if (o->info.generation > s->last_gen)
            s->last_gen = o->info.generation;
    }
    /* Remove data files of old generations and interrupted writes. */
    rewinddir(d);
    while ((e = readdir(d))) {
        char path[4400];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (strstr(e->d_name, ".tmp.")) {
            unlink(path);
            continue;
        }
        if (!ends_with(e->d_name, ".data"))
            continue;
        long long gen = strtoll(e->d_name + 65, NULL, 10);
        bool live = false;
        for (size_t i = 0; i < b->n && !live; i++)
            live =
                strncmp(b->objs[i]->key, e->d_name, 64) == 0 && b->objs[i]->info.generation == gen;
        if (!live)
            unlink(path);
    }
    closedir(d);
}

static void load_buckets(emu_store *s)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/gcs/buckets", s->ctx->data_dir);
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !valid_bucket_name(e->d_name))
            continue;
        char path[4400];
        snprintf(path, sizeof(path), "%s/%s/bucket.json", dir, e->d_name);
        cJSON *j = emu_read_json(path);
        if (!j)
            continue;
        bucket *b = add_bucket(s, e->d_name, jnum(j, "timeCreated"));
        cJSON_Delete(j);
        if (b)
            load_objects(s, b);
    }
    closedir(d);
}

/* Spooled bodies and object writes left by a process that died. */
static void clean_tmp(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "body.", 5) != 0 && strncmp(e->d_name, "obj.", 4) != 0)
            continue;
        char path[4400];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
}

emu_store *emu_store_open(emu_ctx *ctx)
{
    emu_store *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->ctx = ctx;
    pthread_mutex_init(&s->mu, NULL);
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/gcs/buckets", ctx->data_dir);
    int rc = util_mkdirs(dir, 0700);
    snprintf(dir, sizeof(dir), "%s/tmp", ctx->data_dir);
    if (rc == 0)
        rc = util_mkdirs(dir, 0700);
    if (rc != 0) {
        log_error("cannot create %s: %s", dir, strerror(-rc));
        pthread_mutex_destroy(&s->mu);
        free(s);
        return NULL;
    }
    ctx->store = s;
    clean_tmp(dir);
    load_buckets(s);
    return s;
}

void emu_store_close(emu_store *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nb; i++) {
        for (size_t k = 0; k < s->b[i]->n; k++)
            free_obj(s->b[i]->objs[k]);
        free(s->b[i]->objs);
        free(s->b[i]->name);
        free(s->b[i]);
    }
    free(s->b);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* ---- buckets ---- */

bool emu_gcs_bucket_exists(emu_ctx *ctx, const char *name)
{
    emu_store *s = ctx->store;
    pthread_mutex_lock(&s->mu);
    bool found = find_bucket(s, name, NULL) != NULL;
    pthread_mutex_unlock(&s->mu);
    return found;
}

int emu_gcs_bucket_create(emu_ctx *ctx, const char *name)
{
    emu_store *s = ctx->store;
    if (!valid_bucket_name(name))
        return -EINVAL;
    pthread_mutex_lock(&s->mu);
    if (find_bucket(s, name, NULL)) {
        pthread_mutex_unlock(&s->mu);
        return -EEXIST;
    }
    char dir[4096], path[4200];
    bucket_dir(ctx, name, dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/objects", dir);
    int rc = util_mkdirs(path, 0700);
    int64_t now = emu_now_us();
    if (rc == 0) {
        char text[64];
        snprintf(text, sizeof(text), "{\"timeCreated\":\"%lld\"}\n", (long long)now);
        snprintf(path, sizeof(path), "%s/bucket.json", dir);
        rc = util_write_atomic(path, text, strlen(text), 0600);
    }
    if (rc == 0 && !add_bucket(s, name, now))
        rc = -ENOMEM;
    pthread_mutex_unlock(&s->mu);
    if (rc != 0)
        log_error("create bucket %s: %s", name, strerror(-rc));
    return rc;
}

int emu_store_bucket_info(emu_ctx *ctx, const char *name, int64_t *created_us)
{
    emu_store *s = ctx->store;
    pthread_mutex_lock(&s->mu);
    bucket *b = find_bucket(s, name, NULL);
    if (b && created_us)
        *created_us = b->created_us;
    pthread_mutex_unlock(&s->mu);
    return b ? EMU_STORE_OK : EMU_STORE_NOBUCKET;
}

int emu_store_bucket_delete(emu_ctx *ctx, const char *name)
{
    emu_store *s = ctx->store;
    size_t pos;
    int rc = EMU_STORE_OK;
    pthread_mutex_lock(&s->mu);
    bucket *b = find_bucket(s, name, &pos);
    if (!b) {
        rc = EMU_STORE_NOBUCKET;
    } else if (b->n > 0) {
        rc = EMU_STORE_EXISTS;
    } else {
        char dir[4096], path[4200];
        bucket_dir(ctx, name, dir, sizeof(dir));
        snprintf(path, sizeof(path), "%s/bucket.json", dir);
        unlink(path);
        snprintf(path, sizeof(path), "%s/objects", dir);
        rmdir(path);
        if (rmdir(dir) != 0) {
            log_error("delete bucket %s: rmdir %s: %s", name, dir, strerror(errno));
            rc = EMU_STORE_IO;
        } else {
            free(b->objs);
            free(b->name);
            free(b);
            memmove(s->b + pos, s->b + pos + 1, (s->nb - pos - 1) * sizeof(*s->b));
            s->nb--;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int emu_store_bucket_each(emu_ctx *ctx, void (*cb)(void *, const char *, int64_t), void *cb_ctx)
{
    emu_store *s = ctx->store;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->nb; i++)
        cb(cb_ctx, s->b[i]->name, s->b[i]->created_us);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* ---- writes ---- */

struct emu_writer {
    emu_ctx *ctx;
    char path[4200];
    int fd;
    EVP_MD_CTX *md5;
    uint32_t crc;
    uint64_t size;
    bool prehashed; /* adopted file: md5_raw is final, md5 unused */
    unsigned char md5_raw[16];
};

emu_writer *emu_store_writer_new(emu_ctx *ctx)
{
    emu_writer *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->ctx = ctx;
    snprintf(w->path, sizeof(w->path), "%s/tmp/obj.XXXXXX", ctx->data_dir);
    w->fd = mkstemp(w->path);
    w->md5 = EVP_MD_CTX_new();
    if (w->fd < 0 || !w->md5 || EVP_DigestInit_ex(w->md5, EVP_md5(), NULL) != 1) {
        log_error("cannot create %s: %s", w->path, strerror(errno));
        if (w->fd >= 0) {
            close(w->fd);
            unlink(w->path);
        }
        EVP_MD_CTX_free(w->md5);
        free(w);
        return NULL;
    }
    return w;
}

static void writer_hash(emu_writer *w, const void *data, size_t len)
{
    EVP_DigestUpdate(w->md5, data, len);
    w->crc = util_crc32c(w->crc, data, len);
    w->size += len;
}

int emu_store_writer_write(emu_writer *w, const void *data, size_t len)
{
    const char *p = data;
    writer_hash(w, data, len);
    while (len) {
        ssize_t n = write(w->fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            log_error("write %s: %s", w->path, strerror(errno));
            return EMU_STORE_IO;
        }
        p += n;
        len -= (size_t)n;
    }
    return EMU_STORE_OK;
}

int emu_store_writer_write_fd(emu_writer *w, int fd, uint64_t len)
{
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    if (!buf)
        return EMU_STORE_IO;
    uint64_t off = 0;
    int rc = EMU_STORE_OK;
    while (off < len && rc == EMU_STORE_OK) {
        size_t want = len - off < cap ? (size_t)(len - off) : cap;
        ssize_t n = pread(fd, buf, want, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = EMU_STORE_IO;
            break;
        }
        rc = emu_store_writer_write(w, buf, (size_t)n);
        off += (uint64_t)n;
    }
    free(buf);
    return rc;
}

uint64_t emu_store_writer_size(const emu_writer *w)
{
    return w->size;
}

void emu_store_writer_abort(emu_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    unlink(w->path);
    EVP_MD_CTX_free(w->md5);
    free(w);
}

static bool b64_equal(const char *given, const unsigned char *raw, size_t rawlen)
{
    unsigned char buf[64];
    long n = util_b64_decode(given, strlen(given), buf, sizeof(buf));
    return n == (long)rawlen && memcmp(buf, raw, rawlen) == 0;
}

static int64_t next_generation(emu_store *s)
{
    int64_t g = emu_now_us();
    if (g <= s->last_gen)
        g = s->last_gen + 1;
    s->last_gen = g;
    return g;
}

static int commit_locked(emu_store *s, bucket *b, emu_writer *w, const char *name,
                         const char *content_type, const cJSON *metadata, const char *md5b64,
                         const char *crcb64, const emu_preconds *pre, emu_obj_info *out)
{
    size_t pos;
    obj_rec *old = find_obj(b, name, &pos);
    if (emu_preconds_check(pre, old ? &old->info : NULL) != EMU_STORE_OK)
        return EMU_STORE_PRECOND;
    obj_rec *o = calloc(1, sizeof(*o));
    if (!o)
        return EMU_STORE_IO;
    name_key(name, o->key);
    emu_obj_info *i = &o->info;
    i->bucket = strdup(b->name);
    i->name = strdup(name);
    i->content_type = strdup(content_type ? content_type : "application/octet-stream");
    i->generation = next_generation(s);
    i->metageneration = 1;
    i->size = w->size;
    snprintf(i->md5_b64, sizeof(i->md5_b64), "%s", md5b64);
    snprintf(i->crc32c_b64, sizeof(i->crc32c_b64), "%s", crcb64);
    i->created_us = i->updated_us = emu_now_us();
    i->metadata = cJSON_IsObject(metadata) ? cJSON_Duplicate(metadata, 1) : NULL;

    char data_path[4400], meta_path[4400];
    obj_data_path(s->ctx, b->name, o->key, i->generation, data_path, sizeof(data_path));
    obj_meta_path(s->ctx, b->name, o->key, meta_path, sizeof(meta_path));
    cJSON *side = info_to_sidecar(i);
    char *text = side ? cJSON_PrintUnformatted(side) : NULL;
    cJSON_Delete(side);
    int rc = EMU_STORE_IO;
    if (text && i->bucket && i->name && rename(w->path, data_path) == 0) {
        if (util_write_atomic(meta_path, text, strlen(text), 0600) == 0)
            rc = EMU_STORE_OK;
        else
            unlink(data_path);
    }
    free(text);
    if (rc != EMU_STORE_OK) {
        log_error("commit gs://%s/%s: %s", b->name, name, strerror(errno));
        free_obj(o);
        return rc;
    }
    w->path[0] = '\0';
    if (old) {
        char old_data[4400];
        obj_data_path(s->ctx, b->name, old->key, old->info.generation, old_data, sizeof(old_data));
        unlink(old_data);
        free_obj(old);
        b->objs[pos] = o;
    } else if (insert_obj(b, pos, o) != 0) {
        free_obj(o);
        return EMU_STORE_IO;
    }
    if (out && info_copy(out, i) != 0)
        return EMU_STORE_IO;
    return EMU_STORE_OK;
}

int emu_store_writer_commit(emu_writer *w, const char *bucket_name, const char *name,
                            const char *content_type, const cJSON *metadata,
                            const emu_preconds *pre, const char *want_md5, const char *want_crc,
                            emu_obj_info *out)
{
    emu_store *s = w->ctx->store;
    unsigned char md5[16];
    unsigned int md5len = 0;
    if (w->prehashed)
        memcpy(md5, w->md5_raw, 16);
    else
        EVP_DigestFinal_ex(w->md5, md5, &md5len);
    unsigned char crc_be[4] = {(unsigned char)(w->crc >> 24), (unsigned char)(w->crc >> 16),
                               (unsigned char)(w->crc >> 8), (unsigned char)w->crc};
    int rc = EMU_STORE_OK;
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    if ((want_md5 && *want_md5 && !b64_equal(want_md5, md5, 16)) ||
        (want_crc && *want_crc && !b64_equal(want_crc, crc_be, 4)))
        rc = EMU_STORE_BADHASH;
    char *md5b64 = util_b64_encode(md5, 16, false);
    char *crcb64 = util_b64_encode(crc_be, 4, false);
    if (!md5b64 || !crcb64)
        rc = EMU_STORE_IO;
    if (rc == EMU_STORE_OK) {
        pthread_mutex_lock(&s->mu);
        bucket *b = find_bucket(s, bucket_name, NULL);
        rc = b ? commit_locked(s, b, w, name, content_type, metadata, md5b64, crcb64, pre, out)
               : EMU_STORE_NOBUCKET;
        pthread_mutex_unlock(&s->mu);
    }
    free(md5b64);
    free(crcb64);
    if (w->path[0])
        unlink(w->path);
    EVP_MD_CTX_free(w->md5);
    free(w);
    return rc;
}

/* A writer over the existing file at path (no descriptor of its own). */
static emu_writer *writer_for(emu_ctx *ctx, const char *path)
{
    emu_writer *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->ctx = ctx;
    w->fd = -1;
    snprintf(w->path, sizeof(w->path), "%s", path);
    return w;
}

emu_writer *emu_store_writer_adopt(emu_ctx *ctx, const char *path, uint64_t size,
                                   const unsigned char md5[16], uint32_t crc)
{
    emu_writer *w = writer_for(ctx, path);
    if (!w)
        return NULL;
    w->size = size;
    w->crc = crc;
    w->prehashed = true;
    memcpy(w->md5_raw, md5, 16);
    return w;
}

int emu_store_commit_file(emu_ctx *ctx, const char *path, const char *bucket, const char *name,
                          const char *content_type, const cJSON *metadata, const emu_preconds *pre,
                          const char *want_md5, const char *want_crc, emu_obj_info *out)
{
    emu_writer *w = writer_for(ctx, path);
    if (!w)
        return EMU_STORE_IO;
    w->md5 = EVP_MD_CTX_new();
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (!w->md5 || fd < 0 || EVP_DigestInit_ex(w->md5, EVP_md5(), NULL) != 1) {
        log_error("commit %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        EVP_MD_CTX_free(w->md5);
        free(w);
        return EMU_STORE_IO;
    }
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    ssize_t n = 0;
    while (buf && (n = read(fd, buf, cap)) > 0)
        writer_hash(w, buf, (size_t)n);
    free(buf);
    close(fd);
    if (!buf || n < 0) {
        EVP_MD_CTX_free(w->md5);
        free(w);
        return EMU_STORE_IO;
    }
    return emu_store_writer_commit(w, bucket, name, content_type, metadata, pre, want_md5, want_crc,
                                   out);
}

/* ---- reads ---- */

/* The object bucket_name/name (lock held) in *b, *o and its index *pos,
 * if it exists and meets pre: EMU_STORE_OK, NOBUCKET, NOTFOUND or PRECOND. */
static int find_checked(emu_store *s, const char *bucket_name, const char *name,
                        const emu_preconds *pre, bucket **b, obj_rec **o, size_t *pos)
{
    *b = find_bucket(s, bucket_name, NULL);
    *o = *b ? find_obj(*b, name, pos) : NULL;
    if (!*b)
        return EMU_STORE_NOBUCKET;
    if (!*o)
        return EMU_STORE_NOTFOUND;
    return emu_preconds_check(pre, &(*o)->info) != EMU_STORE_OK ? EMU_STORE_PRECOND : EMU_STORE_OK;
}

int emu_store_object_get(emu_ctx *ctx, const char *bucket_name, const char *name,
                         const emu_preconds *pre, emu_obj_info *out, int *fd)
{
    emu_store *s = ctx->store;
    if (fd)
        *fd = -1;
    pthread_mutex_lock(&s->mu);
    bucket *b;
    obj_rec *o;
    int rc = find_checked(s, bucket_name, name, pre, &b, &o, NULL);
    if (rc == EMU_STORE_OK && fd) {
        char path[4400];
        obj_data_path(ctx, b->name, o->key, o->info.generation, path, sizeof(path));
        /* Opened under the lock: a concurrent replace unlinks the file, but
         * this descriptor keeps the old generation readable. */
        *fd = open(path, O_RDONLY | O_CLOEXEC);
        if (*fd < 0) {
            log_error("open %s (gs://%s/%s): %s", path, bucket_name, name, strerror(errno));
            rc = EMU_STORE_IO;
        }
    }
    if (rc == EMU_STORE_OK && out && info_copy(out, &o->info) != 0)
        rc = EMU_STORE_IO;
    pthread_mutex_unlock(&s->mu);
    if (rc != EMU_STORE_OK && fd && *fd >= 0) {
        close(*fd);
        *fd = -1;
    }
    return rc;
}

int emu_store_object_delete(emu_ctx *ctx, const char *bucket_name, const char *name,
                            const emu_preconds *pre)
{
    emu_store *s = ctx->store;
    pthread_mutex_lock(&s->mu);
    bucket *b;
    obj_rec *o;
    size_t pos = 0;
    int rc = find_checked(s, bucket_name, name, pre, &b, &o, &pos);
    if (rc == EMU_STORE_OK) {
        char path[4400];
        obj_meta_path(ctx, b->name, o->key, path, sizeof(path));
        if (unlink(path) != 0 && errno != ENOENT) {
            log_error("delete %s: %s", path, strerror(errno));
            rc = EMU_STORE_IO;
        } else {
            obj_data_path(ctx, b->name, o->key, o->info.generation, path, sizeof(path));
            unlink(path);
            memmove(b->objs + pos, b->objs + pos + 1, (b->n - pos - 1) * sizeof(*b->objs));
            b->n--;
            free_obj(o);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Copies records in batches so callbacks run without the lock (they may call
 * back into the store). */
int emu_store_object_each(emu_ctx *ctx, const char *bucket_name, const char *prefix,
                          const char *start, emu_store_obj_cb cb, void *cb_ctx)
{
    enum { BATCH = 256 };
    emu_store *s = ctx->store;
    const char *pfx = prefix ? prefix : "";
    size_t plen = strlen(pfx);
    char *from = strdup(start && strcmp(start, pfx) > 0 ? start : pfx);
    bool inclusive = true;
    int rc = EMU_STORE_OK;
    emu_obj_info batch[BATCH];
    while (from) {
        size_t nb = 0;
        pthread_mutex_lock(&s->mu);
        bucket *b = find_bucket(s, bucket_name, NULL);
        if (!b) {
            pthread_mutex_unlock(&s->mu);
            free(from);
            rc = EMU_STORE_NOBUCKET;
            break;
        }
        size_t i = obj_lower_bound(b, from);
        if (!inclusive && i < b->n && strcmp(b->objs[i]->info.name, from) == 0)
            i++;
        for (; i < b->n && nb < BATCH; i++) {
            if (strncmp(b->objs[i]->info.name, pfx, plen) != 0)
                break;
            if (info_copy(&batch[nb], &b->objs[i]->info) == 0)
                nb++;
        }
        pthread_mutex_unlock(&s->mu);
        free(from);
        from = NULL;
        bool stop = false;
        for (size_t k = 0; k < nb && !stop; k++)
            stop = cb(cb_ctx, &batch[k]) != 0;
        if (nb == BATCH && !stop)
            from = strdup(batch[nb - 1].name);
        for (size_t k = 0; k < nb; k++)
            emu_obj_info_clear(&batch[k]);
        inclusive = false;
        if (!from)
            break;
    }
    return rc;
}

/* ---- the contract for the Healthcare modules ---- */

struct list_adapter {
    emu_gcs_name_cb cb;
    void *cb_ctx;
};

static int list_adapt(void *c, const emu_obj_info *o)
{
    struct list_adapter *a = c;
    return a->cb(a->cb_ctx, o->name, o->size);
}

int emu_gcs_list(emu_ctx *ctx, const char *bucket, const char *prefix, emu_gcs_name_cb cb,
                 void *cb_ctx)
{
    struct list_adapter a = {cb, cb_ctx};
    int rc = emu_store_object_each(ctx, bucket, prefix, NULL, list_adapt, &a);
    return rc == EMU_STORE_NOBUCKET ? -ENOENT : rc == EMU_STORE_OK ? 0 : -EIO;
}

int emu_gcs_open(emu_ctx *ctx, const char *bucket, const char *name, int *fd, uint64_t *size)
{
    emu_obj_info info;
    int rc = emu_store_object_get(ctx, bucket, name, NULL, &info, fd);
    if (rc == EMU_STORE_NOBUCKET || rc == EMU_STORE_NOTFOUND)
        return -ENOENT;
    if (rc != EMU_STORE_OK)
        return -EIO;
    *size = info.size;
    emu_obj_info_clear(&info);
    return 0;
}

int emu_gcs_read(emu_ctx *ctx, const char *bucket, const char *name, char **data, size_t *len)
{
    int fd;
    uint64_t size64;
    int rc = emu_gcs_open(ctx, bucket, name, &fd, &size64);
    if (rc < 0)
        return rc;
    size_t size = (size_t)size64;
    char *buf = malloc(size + 1);
    size_t got = buf ? util_pread_full(fd, buf, size, 0) : 0;
    close(fd);
    if (!buf || got != size) {
        free(buf);
        return -EIO;
    }
    buf[size] = '\0';
    *data = buf;
    *len = size;
    return 0;
}

int emu_gcs_write(emu_ctx *ctx, const char *bucket, const char *name, const void *data, size_t len,
                  const char *content_type)
{
    emu_writer *w = emu_store_writer_new(ctx);
    if (!w)
        return -EIO;
    if (emu_store_writer_write(w, data, len) != EMU_STORE_OK) {
        emu_store_writer_abort(w);
        return -EIO;
    }
    int rc = emu_store_writer_commit(w, bucket, name, content_type, NULL, NULL, NULL, NULL, NULL);
    return rc == EMU_STORE_OK ? 0 : rc == EMU_STORE_NOBUCKET ? -ENOENT : -EIO;
}
