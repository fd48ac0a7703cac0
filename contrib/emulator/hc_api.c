/* hc_api: state and REST surface of the emulated Healthcare API.
 *
 * Owns datasets, DICOM stores and their instance indexes, persisted under
 * DATA/healthcare/: state.json (datasets, stores; atomic replace) and per
 * store stores/sN/index.log (append-only add/del lines, compacted on load)
 * plus files/N.dcm (the Part-10 bytes as uploaded). Routes /v1 and /v1beta1
 * requests to datasets, dicomStores, operations (lro.c) and DICOMweb.
 *
 * Choices where the real service is undocumented (see api-facts.md 6):
 * - Errors use the AIP-193 envelope; unknown JSON fields answer 400 with
 *   'Invalid JSON payload received. Unknown name "x"[ at 'path']: Cannot find
 *   field.'; export takes filterConfig on v1 and v1beta1 (the current v1
 *   reference has it).
 * - datasetId and dicomStoreId: ASCII approximation of [\p{L}\p{N}_\-.]{1,256}
 *   (bytes >= 0x80 allowed); an existing id answers 409 ALREADY_EXISTS.
 * - datasets.create makes the dataset visible at once; its LRO finishes after
 *   --lro-delay with the Dataset (timeZone "UTC" when unset) as response.
 * - Operations leave "done" out while running (proto3 JSON omits false).
 *   Counter values are strings, zero values omitted. Import: a file that is
 *   not DICOM is a failure (op error code 3); no matching object or a missing
 *   bucket: code 5. Export: a missing destination bucket or filter object
 *   fails the operation with code 5 (not a synchronous 400/404); a bad filter
 *   line with code 3 naming the line and column; an instance that cannot be
 *   converted is a counted failure (op error code 3). Cancel: error code 1.
 * - Operations interrupted by a restart are resumed from the start (import,
 *   export and deletes are idempotent); counters restart from zero.
 * - QIDO with no match answers 204 No Content; missing DICOMweb resources
 *   answer 404.
 * - WADO without transfer-syntax=* transcodes to explicit VR LE. Of the
 *   compressed syntaxes only 8-bit JPEG baseline (1.2.840.10008.1.2.4.50) is
 *   decoded (libjpeg); others answer 406 there and are counted export
 *   failures for explicit-LE, PNG, JPEG and raw little-endian exports.
 * - bigqueryDestination answers 501 UNIMPLEMENTED.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dicom.h"
#include "log.h"
#include "util.h"
#include "wildcard.h"
#include "hc_internal.h"

typedef struct hc_dataset {
    char *name;
    char *tz;
    bool deleted;
} hc_dataset;

static struct {
    emu_ctx *ctx;
    pthread_mutex_t mu;
    char *dir; /* DATA/healthcare */
    hc_dataset *ds;
    size_t n_ds;
    hc_store **st;
    size_t n_st;
    uint64_t next_store;
    char *location; /* --location: exists besides the service's own */
} g = {.mu = PTHREAD_MUTEX_INITIALIZER};

void hc_lock(void)
{
    pthread_mutex_lock(&g.mu);
}

void hc_unlock(void)
{
    pthread_mutex_unlock(&g.mu);
}

emu_ctx *hc_ctx(void)
{
    return g.ctx;
}

/* ---- small helpers ---- */
int hc_mkdirs(const char *path)
{
    char *p = strdup(path);
    if (!p)
        return -ENOMEM;
    for (char *s = p + 1; *s; s++) {
        if (*s == '/') {
            *s = '\0';
            if (mkdir(p, 0700) < 0 && errno != EEXIST) {
                free(p);
                return -errno;
            }
            *s = '/';
        }
    }
    int rc = mkdir(p, 0700) < 0 && errno != EEXIST ? -errno : 0;
    free(p);
    return rc;
}

int hc_write_atomic(const char *path, const void *data, size_t len)
{
    char *tmp;
    static unsigned long seq;
    if (asprintf(&tmp, "%s.tmp.%d.%lu", path, getpid(), __atomic_add_fetch(&seq, 1, 0)) < 0)
        return -ENOMEM;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = -errno;
        free(tmp);
        return e;
    }
    const char *p = data;
    size_t left = len;
    while (left) {
        ssize_t n = write(fd, p, left);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = -errno;
            close(fd);
            unlink(tmp);
            free(tmp);
            return e;
        }
        p += n;
        left -= (size_t)n;
    }
    /* No fsync: the emulator must survive its own kill/restart (the page
     * cache does), not power loss; fsync per instance made big imports slow. */
    if (close(fd) < 0 || rename(tmp, path) < 0) {
        int e = -errno;
        unlink(tmp);
        free(tmp);
        return e;
    }
    free(tmp);
    return 0;
}

int hc_read_file(const char *path, uint8_t **data, size_t *len)
{
    char *text;
    int rc = emu_read_file(path, &text, len);
    *data = (uint8_t *)text;
    return rc;
}

void hc_rfc3339(const struct timespec *ts, char *buf, size_t len)
{
    struct tm tm;
    gmtime_r(&ts->tv_sec, &tm);
    char d[32];
    strftime(d, sizeof d, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, len, "%s.%09ldZ", d, ts->tv_nsec);
}

bool hc_id_valid(const char *id)
{
    size_t n = strlen(id);
    if (n < 1 || n > 256)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (!(isalnum(c) || c == '_' || c == '-' || c == '.' || c >= 0x80))
            return false;
    }
    return strcmp(id, ".") != 0 && strcmp(id, "..") != 0;
}

void hc_error(emu_response *w, int status, const char *msg)
{
    emu_resp_error(w, status, "%s", msg);
}

cJSON *hc_parse_body(const emu_request *r, emu_response *w)
{
    size_t len = 0;
    const char *body = emu_req_body(r, &len);
    if (!body || len == 0)
        return cJSON_CreateObject();
    cJSON *j = cJSON_ParseWithLength(body, len);
    if (!j) {
        hc_error(w, 400, "Invalid JSON payload received. Unexpected token.");
        return NULL;
    }
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        hc_error(w, 400, "Invalid JSON payload received. Expected an object.");
        return NULL;
    }
    return j;
}

bool hc_check_fields(emu_response *w, const cJSON *obj, const hc_field *schema, const char *at)
{
    for (const cJSON *c = obj->child; c; c = c->next) {
        const hc_field *f = schema;
        while (f->json_name && strcmp(f->json_name, c->string) != 0 &&
               !(f->proto_name && strcmp(f->proto_name, c->string) == 0))
            f++;
        char msg[512];
        if (!f->json_name) {
            if (at && *at)
                snprintf(msg, sizeof msg,
                         "Invalid JSON payload received. Unknown name \"%s\" at '%s': Cannot "
                         "find field.",
                         c->string, at);
            else
                snprintf(msg, sizeof msg,
                         "Invalid JSON payload received. Unknown name \"%s\": Cannot find field.",
                         c->string);
            hc_error(w, 400, msg);
            return false;
        }
        if (f->sub) {
            char path[256];
            snprintf(path, sizeof path, "%s%s%s", at && *at ? at : "", at && *at ? "." : "",
                     f->proto_name);
            if (!cJSON_IsObject(c)) {
                snprintf(msg, sizeof msg,
                         "Invalid JSON payload received. Unknown name \"%s\": Proto field is "
                         "not repeating, cannot start list.",
                         c->string);
                if (!cJSON_IsArray(c))
                    snprintf(msg, sizeof msg, "Invalid value at '%s', expected an object.", path);
                hc_error(w, 400, msg);
                return false;
            }
            if (!hc_check_fields(w, c, f->sub, path))
                return false;
        }
    }
    return true;
}

/* ---- datasets and stores ---- */
static hc_dataset *ds_find(const char *name)
{
    for (size_t i = 0; i < g.n_ds; i++)
        if (!g.ds[i].deleted && strcmp(g.ds[i].name, name) == 0)
            return &g.ds[i];
    return NULL;
}

bool hc_dataset_exists(const char *name)
{
    hc_lock();
    bool r = ds_find(name) != NULL;
    hc_unlock();
    return r;
}

hc_store *hc_store_find(const char *name)
{
    for (size_t i = 0; i < g.n_st; i++)
        if (!g.st[i]->deleted && strcmp(g.st[i]->name, name) == 0)
            return g.st[i];
    return NULL;
}

static size_t hash_str(const char *s)
{
    size_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

hc_inst *hc_inst_find(hc_store *s, const char *sop)
{
    if (!s->hash_size)
        return NULL;
    for (hc_inst *i = s->hash[hash_str(sop) % s->hash_size]; i; i = i->hnext)
        if (strcmp(i->sop, sop) == 0)
            return i;
    return NULL;
}

static int inst_insert(hc_store *s, hc_inst *in)
{
    if (s->n_inst == s->cap_inst) {
        size_t nc = s->cap_inst ? s->cap_inst * 2 : 64;
        hc_inst **n = realloc(s->inst, nc * sizeof *n);
        if (!n)
            return -ENOMEM;
        s->inst = n;
        s->cap_inst = nc;
    }
    if (s->n_inst + 1 > s->hash_size) {
        size_t ns = s->hash_size ? s->hash_size * 4 : 256;
        hc_inst **nh = calloc(ns, sizeof *nh);
        if (!nh)
            return -ENOMEM;
        for (size_t i = 0; i < s->n_inst; i++) {
            size_t b = hash_str(s->inst[i]->sop) % ns;
            s->inst[i]->hnext = nh[b];
            nh[b] = s->inst[i];
        }
        free(s->hash);
        s->hash = nh;
        s->hash_size = ns;
    }
    s->inst[s->n_inst++] = in;
    size_t b = hash_str(in->sop) % s->hash_size;
    in->hnext = s->hash[b];
    s->hash[b] = in;
    return 0;
}

static void inst_remove_at(hc_store *s, size_t idx)
{
    hc_inst *in = s->inst[idx];
    hc_inst **pp = &s->hash[hash_str(in->sop) % s->hash_size];
    while (*pp && *pp != in)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = in->hnext;
    memmove(&s->inst[idx], &s->inst[idx + 1], (s->n_inst - idx - 1) * sizeof *s->inst);
    s->n_inst--;
}

static void inst_free(hc_inst *in)
{
    if (in) {
        free(in->attrs);
        free(in);
    }
}

char *hc_inst_path(hc_store *s, const hc_inst *i)
{
    char *p;
    return asprintf(&p, "%s/files/%llu.dcm", s->dir, (unsigned long long)i->file_no) < 0 ? NULL : p;
}

static cJSON *inst_to_json(const hc_inst *in, const char *op)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "op", op);
    cJSON_AddStringToObject(j, "sop", in->sop);
    if (strcmp(op, "add") == 0) {
        cJSON_AddNumberToObject(j, "f", (double)in->file_no);
        cJSON_AddStringToObject(j, "study", in->study);
        cJSON_AddStringToObject(j, "series", in->series);
        cJSON_AddStringToObject(j, "class", in->sop_class);
        cJSON_AddStringToObject(j, "ts", in->ts);
        cJSON_AddNumberToObject(j, "size", (double)in->size);
        cJSON *a = cJSON_Parse(in->attrs ? in->attrs : "{}");
        cJSON_AddItemToObject(j, "attrs", a ? a : cJSON_CreateObject());
    }
    return j;
}

static void index_append(hc_store *s, const hc_inst *in, const char *op)
{
    cJSON *j = inst_to_json(in, op);
    char *line = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!line)
        return;
    size_t n = strlen(line);
    line[n] = '\n'; /* replaces the NUL; written with its length */
    if (s->log_fd >= 0 && write(s->log_fd, line, n + 1) != (ssize_t)(n + 1))
        log_error("emulator: cannot append to the index of %s: %s", s->name, strerror(errno));
    free(line);
}

static void copy_uid(char *dst, const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    snprintf(dst, HC_UID_MAX + 1, "%s", cJSON_IsString(v) ? v->valuestring : "");
}

/* Replays index.log, then rewrites it compacted. */
static int store_load(hc_store *s)
{
    char *path;
    if (asprintf(&path, "%s/index.log", s->dir) < 0)
        return -ENOMEM;
    uint8_t *data = NULL;
    size_t len = 0;
    if (hc_read_file(path, &data, &len) == 0) {
        char *line = (char *)data;
        while (line && *line) {
            char *nl = strchr(line, '\n');
            if (nl)
                *nl = '\0';
            cJSON *j = cJSON_Parse(line);
            const cJSON *op = cJSON_GetObjectItemCaseSensitive(j, "op");
            const cJSON *sop = cJSON_GetObjectItemCaseSensitive(j, "sop");
            if (cJSON_IsString(op) && cJSON_IsString(sop)) {
                hc_inst *old = hc_inst_find(s, sop->valuestring);
                if (strcmp(op->valuestring, "del") == 0 && old) {
                    for (size_t i = 0; i < s->n_inst; i++)
                        if (s->inst[i] == old) {
                            inst_remove_at(s, i);
                            break;
                        }
                    inst_free(old);
                } else if (strcmp(op->valuestring, "add") == 0 && !old) {
                    hc_inst *in = calloc(1, sizeof *in);
                    if (in) {
                        copy_uid(in->sop, j, "sop");
                        copy_uid(in->study, j, "study");
                        copy_uid(in->series, j, "series");
                        copy_uid(in->sop_class, j, "class");
                        copy_uid(in->ts, j, "ts");
                        in->file_no = (uint64_t)cJSON_GetNumberValue(
                            cJSON_GetObjectItemCaseSensitive(j, "f"));
                        in->size = (uint64_t)cJSON_GetNumberValue(
                            cJSON_GetObjectItemCaseSensitive(j, "size"));
                        const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "attrs");
                        in->attrs = a ? cJSON_PrintUnformatted(a) : strdup("{}");
                        if (in->file_no >= s->next_file)
                            s->next_file = in->file_no + 1;
                        if (inst_insert(s, in) < 0)
                            inst_free(in);
                    }
                }
            }
            cJSON_Delete(j);
            line = nl ? nl + 1 : NULL;
        }
    }
    free(data);
    /* compact */
    hc_buf b = {0};
    for (size_t i = 0; i < s->n_inst; i++) {
        cJSON *j = inst_to_json(s->inst[i], "add");
        char *l = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        if (l) {
            hc_buf_put(&b, l, strlen(l));
            hc_buf_put(&b, "\n", 1);
            free(l);
        }
    }
    int rc = hc_write_atomic(path, b.p ? (const void *)b.p : "", b.len);
    free(b.p);
    s->log_fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    free(path);
    return rc;
}

static int state_save(void)
{
    cJSON *j = cJSON_CreateObject();
    cJSON *dsa = cJSON_AddArrayToObject(j, "datasets");
    for (size_t i = 0; i < g.n_ds; i++) {
        if (g.ds[i].deleted)
            continue;
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "name", g.ds[i].name);
        cJSON_AddStringToObject(d, "timeZone", g.ds[i].tz);
        cJSON_AddItemToArray(dsa, d);
    }
    cJSON *sta = cJSON_AddArrayToObject(j, "stores");
    for (size_t i = 0; i < g.n_st; i++) {
        if (g.st[i]->deleted)
            continue;
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "name", g.st[i]->name);
        cJSON_AddStringToObject(d, "dir", strrchr(g.st[i]->dir, '/') + 1);
        cJSON_AddItemToArray(sta, d);
    }
    cJSON_AddNumberToObject(j, "nextStore", (double)g.next_store);
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    char *path;
    int rc = -ENOMEM;
    if (txt && asprintf(&path, "%s/state.json", g.dir) >= 0) {
        rc = hc_write_atomic(path, txt, strlen(txt));
        free(path);
    }
    free(txt);
    if (rc < 0)
        log_error("emulator: cannot save healthcare state: %s", strerror(-rc));
    return rc;
}

static int ds_add(const char *name, const char *tz)
{
    hc_dataset *n = realloc(g.ds, (g.n_ds + 1) * sizeof *n);
    if (!n)
        return -ENOMEM;
    g.ds = n;
    g.ds[g.n_ds].name = strdup(name);
    g.ds[g.n_ds].tz = strdup(tz && *tz ? tz : "UTC");
    g.ds[g.n_ds].deleted = false;
    g.n_ds++;
    return 0;
}

static hc_store *st_add(const char *name, const char *dirname)
{
    hc_store **n = realloc(g.st, (g.n_st + 1) * sizeof *n);
    if (!n)
        return NULL;
    g.st = n;
    hc_store *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->name = strdup(name);
    s->log_fd = -1;
    if (asprintf(&s->dir, "%s/stores/%s", g.dir, dirname) < 0)
        s->dir = NULL;
    char *files;
    if (s->dir && asprintf(&files, "%s/files", s->dir) >= 0) {
        hc_mkdirs(files);
        free(files);
    }
    g.st[g.n_st++] = s;
    return s;
}

static int state_load(void)
{
    char *path;
    if (asprintf(&path, "%s/state.json", g.dir) < 0)
        return -ENOMEM;
    uint8_t *data;
    size_t len;
    int rc = hc_read_file(path, &data, &len);
    free(path);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0)
        return rc;
    cJSON *j = cJSON_ParseWithLength((const char *)data, len);
    free(data);
    if (!j) {
        log_error("emulator: %s/state.json is not valid JSON", g.dir);
        return -EINVAL;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "datasets"))
    {
        const char *n = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "name"));
        const char *tz = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "timeZone"));
        if (n)
            ds_add(n, tz);
    }
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "stores"))
    {
        const char *n = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "name"));
        const char *d = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "dir"));
        if (n && d) {
            hc_store *s = st_add(n, d);
            if (s)
                store_load(s);
        }
    }
    g.next_store = (uint64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, "nextStore"));
    cJSON_Delete(j);
    return 0;
}

/* Creates a store (under lock). */
static hc_store *store_create_locked(const char *name)
{
    char dirname[32];
    snprintf(dirname, sizeof dirname, "s%llu", (unsigned long long)g.next_store++);
    hc_store *s = st_add(name, dirname);
    if (!s)
        return NULL;
    store_load(s);
    state_save();
    return s;
}

static void store_drop_locked(hc_store *s)
{
    s->deleted = true;
    if (s->log_fd >= 0)
        close(s->log_fd);
    s->log_fd = -1;
    for (size_t i = 0; i < s->n_inst; i++) {
        char *p = hc_inst_path(s, s->inst[i]);
        if (p)
            unlink(p);
        free(p);
        inst_free(s->inst[i]);
    }
    s->n_inst = 0;
    if (s->hash)
        memset(s->hash, 0, s->hash_size * sizeof *s->hash);
    char *p;
    if (asprintf(&p, "%s/index.log", s->dir) >= 0) {
        unlink(p);
        free(p);
    }
    if (asprintf(&p, "%s/files", s->dir) >= 0) {
        rmdir(p);
        free(p);
    }
    rmdir(s->dir);
}

/* ---- instances ---- */
static const uint32_t cached_tags[] = {
    0x00080005, 0x00080016, 0x00080018, 0x00080020, 0x00080030, 0x00080050, 0x00080060,
    0x00080090, 0x00080201, 0x00081030, 0x0008103E, 0x00100010, 0x00100020, 0x00100030,
    0x00100040, 0x00200010, 0x0020000D, 0x0020000E, 0x00200011, 0x00200013, 0x00280008,
    0x00280010, 0x00280011, 0x00280100, 0x00400244, 0x00400245, 0x00400275,
};

/* The cached tags end at (0040,0275); a header parse stops after them. */
#define CACHED_STOP_TAG 0x00400276u

static char *attrs_json(const dj_file *f)
{
    cJSON *out = cJSON_CreateObject();
    for (size_t i = 0; i < sizeof cached_tags / sizeof cached_tags[0]; i++) {
        const dj_elem *e = dj_find(f->ds, cached_tags[i]);
        if (!e)
            continue;
        dj_ds one = {.el = (dj_elem *)e, .n = 1, .cap = 1};
        cJSON *j = dj_to_json(&one, f->enc, NULL);
        if (j->child) {
            cJSON *item = cJSON_DetachItemViaPointer(j, j->child);
            cJSON_AddItemToObject(out, item->string, item);
        }
        cJSON_Delete(j);
    }
    dj_sort(out);
    char *txt = cJSON_PrintUnformatted(out);
    cJSON_Delete(out);
    return txt ? txt : strdup("{}");
}

static char *cached_attrs(const uint8_t *buf, size_t len)
{
    dj_file f;
    char why[256];
    if (dj_parse_head(buf, len, CACHED_STOP_TAG, &f, why, sizeof why) < 0) {
        log_warn("emulator: attributes of an instance not indexed: %s", why);
        return strdup("{}");
    }
    char *txt = attrs_json(&f);
    dj_file_free(&f);
    return txt;
}

/* One try with the first want bytes of the file: the attributes, or NULL
 * with *more set when a longer prefix may parse. */
static char *attrs_from_prefix(int fd, size_t want, uint64_t size, bool *more, char *why,
                               size_t whylen)
{
    *more = false;
    uint8_t *buf = malloc(want ? want : 1);
    if (!buf) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    char *txt = NULL;
    if (util_pread_full(fd, buf, want, 0) != want) {
        snprintf(why, whylen, "short read");
    } else {
        dj_file f;
        int rc = dj_parse_head(buf, want, CACHED_STOP_TAG, &f, why, whylen);
        /* A prefix that ends between two elements parses without reaching
         * the stop tag: only the whole file may end the data set. */
        if (rc == 1 || (rc == 0 && want == size))
            txt = attrs_json(&f);
        if (rc >= 0)
            dj_file_free(&f);
        *more = !txt && want < size;
    }
    free(buf);
    return txt;
}

/* Reads a growing prefix of the file until the cached tags parse: the pixel
 * data of a big file is never read. */
static char *cached_attrs_fd(int fd, uint64_t size)
{
    char why[256] = "";
    size_t want = size < (64u << 10) ? (size_t)size : (64u << 10);
    bool more;
    char *txt;
    while (!(txt = attrs_from_prefix(fd, want, size, &more, why, sizeof why)) && more)
        want = size - want < want ? (size_t)size : want * 2;
    if (txt)
        return txt;
    log_warn("emulator: attributes of an instance not indexed: %s", why);
    return strdup("{}");
}

/* Where an instance's bytes come from: memory (STOW) or a file (import). */
typedef struct add_src {
    const uint8_t *buf;
    size_t len;
    int fd; /* >= 0: the bytes are this file's */
} add_src;

/* Compares a stored file with the source, a chunk at a time. */
static bool src_equals(const add_src *src, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    struct stat st;
    bool eq = fstat(fd, &st) == 0 && (uint64_t)st.st_size == src->len;
    size_t cap = 1u << 20;
    uint8_t *a = eq ? malloc(cap) : NULL, *b = eq && src->fd >= 0 ? malloc(cap) : NULL;
    eq = eq && a && (src->fd < 0 || b);
    for (size_t off = 0; eq && off < src->len;) {
        size_t n = src->len - off < cap ? src->len - off : cap;
        const uint8_t *want = src->buf ? src->buf + off : b;
        eq = util_pread_full(fd, a, n, (off_t)off) == n &&
             (src->fd < 0 || util_pread_full(src->fd, b, n, (off_t)off) == n) &&
             memcmp(a, want, n) == 0;
        off += n;
    }
    free(a);
    free(b);
    close(fd);
    return eq;
}

static int copy_fd_to(int in, uint64_t size, const char *path)
{
    char *tmp;
    static unsigned long seq;
    if (asprintf(&tmp, "%s.tmp.%d.%lu", path, getpid(), __atomic_add_fetch(&seq, 1, 0)) < 0)
        return -ENOMEM;
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int rc = out < 0 ? -errno : 0;
    loff_t ioff = 0;
    while (rc == 0 && (uint64_t)ioff < size) {
        ssize_t n = copy_file_range(in, &ioff, out, NULL, (size_t)(size - (uint64_t)ioff), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            rc = n < 0 ? -errno : -EIO;
    }
    if (out >= 0 && close(out) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) < 0)
        rc = -errno;
    if (rc < 0)
        unlink(tmp);
    free(tmp);
    return rc;
}

/* Creates path with the source's bytes. A file source is hard-linked: its
 * bytes are immutable, and a link costs nothing whatever the size. */
static int src_place(const add_src *src, const char *path)
{
    if (src->fd < 0)
        return hc_write_atomic(path, src->buf, src->len);
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", src->fd);
    if (linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW) == 0)
        return 0;
    return copy_fd_to(src->fd, src->len, path);
}

static enum hc_add_result store_add(const char *store_name, const add_src *src,
                                    const dicom_info *info, const char *require_study,
                                    char uids_out[4][HC_UID_MAX + 1], char *why, size_t whylen)
{
    const char *sop_class = info->sop_class_uid[0] ? info->sop_class_uid : info->media_sop_class;
    if (uids_out) {
        snprintf(uids_out[0], HC_UID_MAX + 1, "%s", info->study_uid);
        snprintf(uids_out[1], HC_UID_MAX + 1, "%s", info->series_uid);
        snprintf(uids_out[2], HC_UID_MAX + 1, "%s", info->sop_instance_uid);
        snprintf(uids_out[3], HC_UID_MAX + 1, "%s", sop_class);
    }
    if (require_study && strcmp(require_study, info->study_uid) != 0) {
        snprintf(why, whylen, "StudyInstanceUID %s does not match the study %s in the request URL",
                 info->study_uid, require_study);
        return HC_ADD_ERROR;
    }
    hc_inst *in = calloc(1, sizeof *in);
    if (!in) {
        snprintf(why, whylen, "out of memory");
        return HC_ADD_ERROR;
    }
    snprintf(in->study, sizeof in->study, "%s", info->study_uid);
    snprintf(in->series, sizeof in->series, "%s", info->series_uid);
    snprintf(in->sop, sizeof in->sop, "%s", info->sop_instance_uid);
    snprintf(in->sop_class, sizeof in->sop_class, "%s", sop_class);
    snprintf(in->ts, sizeof in->ts, "%s", info->transfer_syntax);
    in->size = src->len;
    in->attrs =
        src->fd >= 0 ? cached_attrs_fd(src->fd, src->len) : cached_attrs(src->buf, src->len);

    hc_store *first = NULL;
    char *written = NULL; /* our file, removed again if we do not index it */
    for (int attempt = 0; attempt < 2; attempt++) {
        hc_lock();
        hc_store *s = hc_store_find(store_name);
        if (!s || (attempt == 1 && s != first)) {
            hc_unlock();
            snprintf(why, whylen, "DICOM store %s does not exist", store_name);
            goto drop;
        }
        hc_inst *old = hc_inst_find(s, in->sop);
        if (old) {
            char *p = hc_inst_path(s, old);
            hc_unlock();
            bool same = p && src_equals(src, p);
            free(p);
            snprintf(why, whylen, "an instance with SOPInstanceUID %s already exists%s",
                     info->sop_instance_uid, same ? "" : " with different content");
            if (written)
                unlink(written);
            free(written);
            inst_free(in);
            return same ? HC_ADD_DUP_SAME : HC_ADD_DUP_DIFFERENT;
        }
        if (attempt == 0) {
            first = s;
            in->file_no = s->next_file++;
            written = hc_inst_path(s, in);
            hc_unlock();
            int wrc = written ? src_place(src, written) : -ENOMEM;
            if (wrc < 0) {
                snprintf(why, whylen, "cannot store the instance: %s", strerror(-wrc));
                free(written);
                inst_free(in);
                return HC_ADD_ERROR;
            }
            continue; /* re-check under the lock: another writer may have won */
        }
        if (inst_insert(s, in) < 0) {
            hc_unlock();
            snprintf(why, whylen, "out of memory");
            goto drop;
        }
        free(written);
        index_append(s, in, "add");
        hc_unlock();
        return HC_ADD_NEW;
    }
drop:
    if (written)
        unlink(written);
    free(written);
    inst_free(in);
    return HC_ADD_ERROR;
}

static bool parse_failed(int rc, char *why, size_t whylen)
{
    if (rc == DICOM_OK)
        return false;
    if (!why[0])
        snprintf(why, whylen, "%s", dicom_strerror(rc));
    return true;
}

enum hc_add_result hc_store_add(const char *store_name, const uint8_t *buf, size_t len,
                                const char *require_study, char uids_out[4][HC_UID_MAX + 1],
                                char *why, size_t whylen)
{
    dicom_info info;
    if (parse_failed(dicom_parse(buf, len, &info, why, whylen), why, whylen))
        return HC_ADD_ERROR;
    add_src src = {.buf = buf, .len = len, .fd = -1};
    return store_add(store_name, &src, &info, require_study, uids_out, why, whylen);
}

enum hc_add_result hc_store_add_fd(const char *store_name, int fd, uint64_t size, char *why,
                                   size_t whylen)
{
    dicom_info info;
    if (parse_failed(dicom_parse_fd(fd, &info, why, whylen), why, whylen))
        return HC_ADD_ERROR;
    add_src src = {.len = (size_t)size, .fd = fd};
    return store_add(store_name, &src, &info, NULL, NULL, why, whylen);
}

long hc_store_delete(const char *store_name, const char *study, const char *series, const char *sop)
{
    hc_lock();
    hc_store *s = hc_store_find(store_name);
    if (!s) {
        hc_unlock();
        return -1;
    }
    long n = 0;
    for (size_t i = 0; i < s->n_inst;) {
        hc_inst *in = s->inst[i];
        if ((study && strcmp(in->study, study) != 0) ||
            (series && strcmp(in->series, series) != 0) || (sop && strcmp(in->sop, sop) != 0)) {
            i++;
            continue;
        }
        inst_remove_at(s, i);
        index_append(s, in, "del");
        char *p = hc_inst_path(s, in);
        if (p)
            unlink(p);
        free(p);
        inst_free(in);
        n++;
    }
    hc_unlock();
    return n;
}

int hc_store_snapshot(const char *store_name, hc_inst_ref **refs, size_t *n)
{
    hc_lock();
    hc_store *s = hc_store_find(store_name);
    if (!s) {
        hc_unlock();
        return -ENOENT;
    }
    hc_inst_ref *r = calloc(s->n_inst + 1, sizeof *r);
    if (!r) {
        hc_unlock();
        return -ENOMEM;
    }
    for (size_t i = 0; i < s->n_inst; i++) {
        memcpy(r[i].study, s->inst[i]->study, sizeof r[i].study);
        memcpy(r[i].series, s->inst[i]->series, sizeof r[i].series);
        memcpy(r[i].sop, s->inst[i]->sop, sizeof r[i].sop);
        r[i].path = hc_inst_path(s, s->inst[i]);
    }
    *n = s->n_inst;
    *refs = r;
    hc_unlock();
    return 0;
}

void hc_refs_free(hc_inst_ref *refs, size_t n)
{
    for (size_t i = 0; refs && i < n; i++)
        free(refs[i].path);
    free(refs);
}

/* ---- REST ---- */
static const hc_field f_kms[] = {{"kmsKeyName", "kms_key_name", NULL}, {NULL, NULL, NULL}};
static const hc_field f_dataset[] = {{"name", "name", NULL},
                                     {"timeZone", "time_zone", NULL},
                                     {"encryptionSpec", "encryption_spec", f_kms},
                                     {"satisfiesPzi", "satisfies_pzi", NULL},
                                     {"satisfiesPzs", "satisfies_pzs", NULL},
                                     {NULL, NULL, NULL}};
static const hc_field f_notif[] = {{"pubsubTopic", "pubsub_topic", NULL},
                                   {"sendForBulkImport", "send_for_bulk_import", NULL},
                                   {NULL, NULL, NULL}};
static const hc_field f_store[] = {{"name", "name", NULL},
                                   {"labels", "labels", NULL},
                                   {"notificationConfig", "notification_config", f_notif},
                                   {"streamConfigs", "stream_configs", NULL},
                                   {NULL, NULL, NULL}};
static const hc_field f_gcs_source[] = {{"uri", "uri", NULL}, {NULL, NULL, NULL}};
static const hc_field f_blob[] = {{"blobStorageClass", "blob_storage_class", NULL},
                                  {NULL, NULL, NULL}};
static const hc_field f_import[] = {{"gcsSource", "gcs_source", f_gcs_source},
                                    {"blobStorageSettings", "blob_storage_settings", f_blob},
                                    {NULL, NULL, NULL}};
static const hc_field f_gcs_dest[] = {
    {"uriPrefix", "uri_prefix", NULL}, {"mimeType", "mime_type", NULL}, {NULL, NULL, NULL}};
static const hc_field f_bq_dest[] = {{"tableUri", "table_uri", NULL},
                                     {"force", "force", NULL},
                                     {"writeDisposition", "write_disposition", NULL},
                                     {NULL, NULL, NULL}};
static const hc_field f_filter[] = {{"resourcePathsGcsUri", "resource_paths_gcs_uri", NULL},
                                    {NULL, NULL, NULL}};
/* v1 and v1beta1 alike: the current v1 reference has filterConfig too. */
static const hc_field f_export[] = {{"gcsDestination", "gcs_destination", f_gcs_dest},
                                    {"bigqueryDestination", "bigquery_destination", f_bq_dest},
                                    {"filterConfig", "filter_config", f_filter},
                                    {NULL, NULL, NULL}};

static bool string_field(emu_response *w, const cJSON *obj, const char *key, const char *at,
                         const char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v))
        return true;
    if (!cJSON_IsString(v)) {
        char msg[256];
        snprintf(msg, sizeof msg, "Invalid value at '%s' (TYPE_STRING)", at);
        hc_error(w, 400, msg);
        return false;
    }
    *out = v->valuestring;
    return true;
}

/* Paged list: items is consumed. */
static void send_page(emu_response *w, const emu_request *r, cJSON *items, const char *key)
{
    long size = 100;
    const char *ps = emu_req_query(r, "pageSize");
    const char *pt = emu_req_query(r, "pageToken");
    if (ps && *ps) {
        char *end;
        size = strtol(ps, &end, 10);
        if (*end || size < 0) {
            cJSON_Delete(items);
            hc_error(w, 400, "Invalid value for pageSize: must be a non-negative integer");
            return;
        }
        if (size == 0)
            size = 100;
        if (size > 1000)
            size = 1000;
    }
    long off = 0;
    if (pt && *pt) {
        char *end;
        off = strtol(pt, &end, 10);
        if (*end || off < 0) {
            cJSON_Delete(items);
            hc_error(w, 400, "Invalid page token");
            return;
        }
    }
    cJSON *out = cJSON_CreateObject();
    cJSON *arr = cJSON_CreateArray();
    long n = cJSON_GetArraySize(items);
    for (long i = off; i < n && i < off + size; i++)
        cJSON_AddItemToArray(arr, cJSON_Duplicate(cJSON_GetArrayItem(items, (int)i), true));
    if (cJSON_GetArraySize(arr) > 0)
        cJSON_AddItemToObject(out, key, arr);
    else
        cJSON_Delete(arr);
    if (off + size < n) {
        char tok[32];
        snprintf(tok, sizeof tok, "%ld", off + size);
        cJSON_AddStringToObject(out, "nextPageToken", tok);
    }
    cJSON_Delete(items);
    emu_resp_json(w, 200, out);
}

static cJSON *dataset_json(const hc_dataset *d)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", d->name);
    cJSON_AddStringToObject(j, "timeZone", d->tz);
    return j;
}

static cJSON *store_json(const hc_store *s)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", s->name);
    return j;
}

static bool segment_ok(const char *s)
{
    return *s && strlen(s) <= 256 && strchr(s, ':') == NULL;
}

static void datasets_collection(emu_response *w, const emu_request *r, const char *method,
                                const char *version, const char *parent)
{
    if (strcmp(method, "GET") == 0) {
        cJSON *items = cJSON_CreateArray();
        size_t plen = strlen(parent);
        hc_lock();
        for (size_t i = 0; i < g.n_ds; i++)
            if (!g.ds[i].deleted && strncmp(g.ds[i].name, parent, plen) == 0 &&
                strncmp(g.ds[i].name + plen, "/datasets/", 10) == 0)
                cJSON_AddItemToArray(items, dataset_json(&g.ds[i]));
        hc_unlock();
        send_page(w, r, items, "datasets");
        return;
    }
    if (strcmp(method, "POST") != 0) {
        hc_error(w, 405, "Method not allowed");
        return;
    }
    const char *id = emu_req_query(r, "datasetId");
    if (!id || !*id) {
        hc_error(w, 400, "datasetId is required");
        return;
    }
    if (!hc_id_valid(id)) {
        char msg[512];
        snprintf(msg, sizeof msg,
                 "Invalid datasetId \"%.300s\": must match [\\p{L}\\p{N}_\\-\\.]{1,256}", id);
        hc_error(w, 400, msg);
        return;
    }
    cJSON *body = hc_parse_body(r, w);
    if (!body)
        return;
    const char *tz = NULL;
    if (!hc_check_fields(w, body, f_dataset, "") ||
        !string_field(w, body, "timeZone", "time_zone", &tz)) {
        cJSON_Delete(body);
        return;
    }
    char *name;
    if (asprintf(&name, "%s/datasets/%s", parent, id) < 0) {
        cJSON_Delete(body);
        hc_error(w, 500, "out of memory");
        return;
    }
    hc_lock();
    if (ds_find(name)) {
        hc_unlock();
        char msg[512];
        snprintf(msg, sizeof msg, "Dataset %.400s already exists", name);
        hc_error(w, 409, msg);
    } else {
        ds_add(name, tz);
        cJSON *resp = dataset_json(ds_find(name));
        state_save();
        hc_unlock();
        hc_op_start(w, HC_OP_CREATE_DATASET, version, name, name, resp);
        cJSON_Delete(resp);
    }
    free(name);
    cJSON_Delete(body);
}

static void dataset_item(emu_response *w, const char *method, const char *name)
{
    hc_lock();
    hc_dataset *d = ds_find(name);
    if (!d) {
        hc_unlock();
        char msg[512];
        snprintf(msg, sizeof msg, "Dataset %.400s not found", name);
        hc_error(w, 404, msg);
        return;
    }
    if (strcmp(method, "GET") == 0) {
        cJSON *j = dataset_json(d);
        hc_unlock();
        emu_resp_json(w, 200, j);
        return;
    }
    if (strcmp(method, "DELETE") != 0) {
        hc_unlock();
        hc_error(w, 405, "Method not allowed");
        return;
    }
    d->deleted = true;
    size_t nlen = strlen(name);
    for (size_t i = 0; i < g.n_st; i++)
        if (!g.st[i]->deleted && strncmp(g.st[i]->name, name, nlen) == 0 &&
            g.st[i]->name[nlen] == '/')
            store_drop_locked(g.st[i]);
    state_save();
    hc_unlock();
    lro_delete_dataset(name);
    emu_resp_json(w, 200, cJSON_CreateObject());
}

static void stores_collection(emu_response *w, const emu_request *r, const char *method,
                              const char *dataset)
{
    if (!hc_dataset_exists(dataset)) {
        char msg[512];
        snprintf(msg, sizeof msg, "Dataset %.400s not found", dataset);
        hc_error(w, 404, msg);
        return;
    }
    if (strcmp(method, "GET") == 0) {
        cJSON *items = cJSON_CreateArray();
        size_t plen = strlen(dataset);
        hc_lock();
        for (size_t i = 0; i < g.n_st; i++)
            if (!g.st[i]->deleted && strncmp(g.st[i]->name, dataset, plen) == 0 &&
                strncmp(g.st[i]->name + plen, "/dicomStores/", 13) == 0)
                cJSON_AddItemToArray(items, store_json(g.st[i]));
        hc_unlock();
        send_page(w, r, items, "dicomStores");
        return;
    }
    if (strcmp(method, "POST") != 0) {
        hc_error(w, 405, "Method not allowed");
        return;
    }
    const char *id = emu_req_query(r, "dicomStoreId");
    if (!id || !*id) {
        hc_error(w, 400, "dicomStoreId is required");
        return;
    }
    if (!hc_id_valid(id)) {
        char msg[512];
        snprintf(msg, sizeof msg,
                 "Invalid dicomStoreId \"%.300s\": must match [\\p{L}\\p{N}_\\-\\.]{1,256}", id);
        hc_error(w, 400, msg);
        return;
    }
    cJSON *body = hc_parse_body(r, w);
    if (!body)
        return;
    if (!hc_check_fields(w, body, f_store, "")) {
        cJSON_Delete(body);
        return;
    }
    cJSON_Delete(body);
    char *name;
    if (asprintf(&name, "%s/dicomStores/%s", dataset, id) < 0) {
        hc_error(w, 500, "out of memory");
        return;
    }
    hc_lock();
    if (hc_store_find(name)) {
        hc_unlock();
        char msg[512];
        snprintf(msg, sizeof msg, "DICOM store %.400s already exists", name);
        hc_error(w, 409, msg);
    } else {
        hc_store *s = store_create_locked(name);
        cJSON *j = s ? store_json(s) : NULL;
        hc_unlock();
        if (j)
            emu_resp_json(w, 200, j);
        else
            hc_error(w, 500, "cannot create the DICOM store");
    }
    free(name);
}

static bool gs_uri_ok(emu_response *w, const char *uri, const char *field, bool allow_wild)
{
    char why[256] = "", *bucket = NULL, *object = NULL;
    bool ok = wildcard_split_gcs_uri(uri, &bucket, &object, why, sizeof why) == WILDCARD_OK;
    if (ok && allow_wild)
        ok = wildcard_validate(object, why, sizeof why) == WILDCARD_OK;
    else if (ok && (strpbrk(object, "*?") != NULL)) {
        ok = false;
        snprintf(why, sizeof why, "wildcards are not allowed here");
    }
    free(bucket);
    free(object);
    if (!ok) {
        char msg[700];
        snprintf(msg, sizeof msg, "Invalid %s \"%.300s\": %s", field, uri, why);
        hc_error(w, 400, msg);
    }
    return ok;
}

static void store_import(emu_response *w, const emu_request *r, const char *version,
                         const char *dataset, const char *store)
{
    cJSON *body = hc_parse_body(r, w);
    if (!body)
        return;
    const char *uri = NULL;
    if (hc_check_fields(w, body, f_import, "") &&
        string_field(w, cJSON_GetObjectItemCaseSensitive(body, "gcsSource"), "uri",
                     "gcs_source.uri", &uri)) {
        if (!uri || !*uri)
            hc_error(w, 400, "gcs_source.uri is required");
        else if (gs_uri_ok(w, uri, "gcs_source.uri", true))
            hc_op_start(w, HC_OP_IMPORT, version, dataset, store, body);
    }
    cJSON_Delete(body);
}

static void store_export(emu_response *w, const emu_request *r, const char *version,
                         const char *dataset, const char *store)
{
    cJSON *body = hc_parse_body(r, w);
    if (!body)
        return;
    const cJSON *gd = cJSON_GetObjectItemCaseSensitive(body, "gcsDestination");
    const cJSON *fc = cJSON_GetObjectItemCaseSensitive(body, "filterConfig");
    const char *prefix = NULL, *mime = NULL, *filter = NULL;
    if (!hc_check_fields(w, body, f_export, "") ||
        !string_field(w, gd, "uriPrefix", "gcs_destination.uri_prefix", &prefix) ||
        !string_field(w, gd, "mimeType", "gcs_destination.mime_type", &mime) ||
        !string_field(w, fc, "resourcePathsGcsUri", "filter_config.resource_paths_gcs_uri",
                      &filter))
        goto out;
    if (cJSON_GetObjectItemCaseSensitive(body, "bigqueryDestination")) {
        if (gd)
            hc_error(w, 400, "Only one of gcs_destination and bigquery_destination may be set");
        else
            hc_error(w, 501, "bigquery_destination is not supported by dicomfs-emulator");
        goto out;
    }
    if (!gd || !prefix || !*prefix) {
        hc_error(w, 400, "gcs_destination.uri_prefix is required");
        goto out;
    }
    if (!gs_uri_ok(w, prefix, "gcs_destination.uri_prefix", false))
        goto out;
    if (filter && !gs_uri_ok(w, filter, "filter_config.resource_paths_gcs_uri", false))
        goto out;
    if (hc_export_parse_mime(mime, NULL) < 0) {
        char msg[512];
        snprintf(msg, sizeof msg, "Invalid gcs_destination.mime_type \"%.300s\": unsupported",
                 mime);
        hc_error(w, 400, msg);
        goto out;
    }
    hc_op_start(w, HC_OP_EXPORT, version, dataset, store, body);
out:
    cJSON_Delete(body);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static long count_unique(const char **v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_str);
    long u = 0;
    for (size_t i = 0; i < n; i++)
        if (i == 0 || strcmp(v[i], v[i - 1]) != 0)
            u++;
    return u;
}

static void store_metrics(emu_response *w, hc_store *s)
{
    /* under lock; O(n log n) */
    long studies = 0, series = 0;
    uint64_t bytes = 0;
    const char **v = malloc((s->n_inst + 1) * sizeof *v);
    if (v) {
        for (size_t i = 0; i < s->n_inst; i++)
            v[i] = s->inst[i]->study;
        studies = count_unique(v, s->n_inst);
        for (size_t i = 0; i < s->n_inst; i++)
            v[i] = s->inst[i]->series;
        series = count_unique(v, s->n_inst);
        free(v);
    }
    for (size_t i = 0; i < s->n_inst; i++)
        bytes += s->inst[i]->size;
    cJSON *j = cJSON_CreateObject();
    char b[32];
    cJSON_AddStringToObject(j, "name", s->name);
    snprintf(b, sizeof b, "%ld", studies);
    cJSON_AddStringToObject(j, "studyCount", b);
    snprintf(b, sizeof b, "%ld", series);
    cJSON_AddStringToObject(j, "seriesCount", b);
    snprintf(b, sizeof b, "%zu", s->n_inst);
    cJSON_AddStringToObject(j, "instanceCount", b);
    snprintf(b, sizeof b, "%llu", (unsigned long long)bytes);
    cJSON_AddStringToObject(j, "blobStorageSizeBytes", b);
    emu_resp_json(w, 200, j);
}

static void store_item(emu_response *w, const emu_request *r, const char *method,
                       const char *version, const char *dataset, const char *name, const char *verb)
{
    hc_lock();
    hc_store *s = hc_store_find(name);
    if (!s) {
        hc_unlock();
        char msg[512];
        snprintf(msg, sizeof msg, "DICOM store %.400s not found", name);
        hc_error(w, 404, msg);
        return;
    }
    if (verb) {
        if (strcmp(verb, "getDICOMStoreMetrics") == 0 && strcmp(method, "GET") == 0) {
            store_metrics(w, s);
            hc_unlock();
            return;
        }
        hc_unlock();
        if (strcmp(method, "POST") == 0 && strcmp(verb, "import") == 0)
            store_import(w, r, version, dataset, name);
        else if (strcmp(method, "POST") == 0 && strcmp(verb, "export") == 0)
            store_export(w, r, version, dataset, name);
        else
            hc_error(w, 404, "Method not found.");
        return;
    }
    if (strcmp(method, "GET") == 0) {
        cJSON *j = store_json(s);
        hc_unlock();
        emu_resp_json(w, 200, j);
    } else if (strcmp(method, "DELETE") == 0) {
        store_drop_locked(s);
        state_save();
        hc_unlock();
        emu_resp_json(w, 200, cJSON_CreateObject());
    } else {
        hc_unlock();
        hc_error(w, 405, "Method not allowed");
    }
}

#define MAX_SEG 8

/* Locations of the Cloud Healthcare API (regions and the us/eu
 * multi-regions). With --location and those of existing datasets, they are
 * the only ones that exist: anything else answers 404 NOT_FOUND. */
static const char *const known_locations[] = {
    "us",
    "eu",
    "us-central1",
    "us-east1",
    "us-east4",
    "us-west1",
    "us-west2",
    "us-west3",
    "us-west4",
    "northamerica-northeast1",
    "northamerica-northeast2",
    "southamerica-east1",
    "europe-west1",
    "europe-west2",
    "europe-west3",
    "europe-west4",
    "europe-west6",
    "europe-west9",
    "europe-north1",
    "europe-central2",
    "asia-east1",
    "asia-east2",
    "asia-northeast1",
    "asia-northeast2",
    "asia-northeast3",
    "asia-south1",
    "asia-southeast1",
    "asia-southeast2",
    "australia-southeast1",
    "australia-southeast2",
    "me-central2",
    "me-west1",
};

static bool location_known(const char *loc)
{
    for (size_t i = 0; i < sizeof known_locations / sizeof known_locations[0]; i++)
        if (strcmp(known_locations[i], loc) == 0)
            return true;
    char needle[300];
    snprintf(needle, sizeof needle, "/locations/%.250s/", loc);
    hc_lock();
    bool found = g.location && strcmp(g.location, loc) == 0;
    for (size_t i = 0; !found && i < g.n_ds; i++)
        found = strstr(g.ds[i].name, needle) != NULL;
    hc_unlock();
    return found;
}

void emu_hc_handle(emu_ctx *ctx, const emu_request *r, emu_response *w, const char *version,
                   const char *rest)
{
    (void)ctx;
    const char *method = emu_req_method(r);
    char *path = strdup(rest);
    if (!path) {
        hc_error(w, 500, "out of memory");
        return;
    }
    size_t plen = strlen(path);
    while (plen && path[plen - 1] == '/')
        path[--plen] = '\0';
    char *seg[MAX_SEG];
    int n = 0;
    char *save = NULL, *dicomweb = NULL;
    /* Split the first 8 segments; a "dicomWeb" segment takes the rest. */
    char *p = path;
    while (p && n < MAX_SEG) {
        char *slash = strchr(p, '/');
        if (slash)
            *slash = '\0';
        seg[n++] = p;
        if (n == 8 && strcmp(seg[6], "dicomStores") == 0 && slash) {
            char *next = slash + 1;
            if (strncmp(next, "dicomWeb", 8) == 0 && (next[8] == '/' || next[8] == '\0')) {
                dicomweb = next[8] ? next + 9 : next + 8;
                p = NULL;
                break;
            }
        }
        p = slash ? slash + 1 : NULL;
    }
    (void)save;
    bool bad = p != NULL || n < 5 || strcmp(seg[0], "projects") != 0 ||
               strcmp(seg[2], "locations") != 0 || strcmp(seg[4], "datasets") != 0 ||
               !segment_ok(seg[1]) || !segment_ok(seg[3]);
    char *verb = NULL;
    if (!bad && !dicomweb) {
        verb = strchr(seg[n - 1], ':');
        if (verb)
            *verb++ = '\0';
    }
    for (int i = 0; !bad && i < n; i++)
        if (!*seg[i])
            bad = true;
    if (bad) {
        hc_error(w, 404, "Method not found.");
        free(path);
        return;
    }
    char parent[600], dataset[900] = "", store[1200] = "";
    snprintf(parent, sizeof parent, "projects/%s/locations/%s", seg[1], seg[3]);
    if (!location_known(seg[3])) {
        char msg[700];
        snprintf(msg, sizeof msg,
                 "Location %s not found: the Cloud Healthcare API has no location '%s'", parent,
                 seg[3]);
        hc_error(w, 404, msg);
        free(path);
        return;
    }
    if (n >= 6)
        snprintf(dataset, sizeof dataset, "%s/datasets/%s", parent, seg[5]);
    if (n >= 8)
        snprintf(store, sizeof store, "%s/dicomStores/%s", dataset, seg[7]);
    if (n == 5 && !verb) {
        datasets_collection(w, r, method, version, parent);
    } else if (n == 6 && !verb) {
        dataset_item(w, method, dataset);
    } else if (n == 7 && strcmp(seg[6], "dicomStores") == 0 && !verb) {
        stores_collection(w, r, method, dataset);
    } else if (n == 7 && strcmp(seg[6], "operations") == 0 && !verb) {
        if (strcmp(method, "GET") != 0)
            hc_error(w, 405, "Method not allowed");
        else if (!hc_dataset_exists(dataset))
            hc_error(w, 404, "Dataset not found");
        else
            lro_list(w, dataset, r);
    } else if (n == 8 && strcmp(seg[6], "dicomStores") == 0 && dicomweb) {
        hc_lock();
        bool exists = hc_store_find(store) != NULL;
        hc_unlock();
        if (!exists) {
            char msg[1400];
            snprintf(msg, sizeof msg, "DICOM store %s not found", store);
            hc_error(w, 404, msg);
        } else {
            dicomweb_handle(ctx, r, w, version, store, dataset, dicomweb);
        }
    } else if (n == 8 && strcmp(seg[6], "dicomStores") == 0) {
        store_item(w, r, method, version, dataset, store, verb);
    } else if (n == 8 && strcmp(seg[6], "operations") == 0) {
        lro_handle(w, method, dataset, seg[7], verb, r);
    } else {
        hc_error(w, 404, "Method not found.");
    }
    free(path);
}

void emu_hc_logs_handle(emu_ctx *ctx, const emu_request *r, emu_response *w, const char *rest)
{
    (void)ctx;
    (void)r;
    lro_logs(w, rest);
}

int emu_hc_init(emu_ctx *ctx)
{
    g.ctx = ctx;
    if (asprintf(&g.dir, "%s/healthcare", emu_data_dir(ctx)) < 0)
        return -ENOMEM;
    int rc = hc_mkdirs(g.dir);
    if (rc < 0) {
        log_error("emulator: cannot create %s: %s", g.dir, strerror(-rc));
        return rc;
    }
    char *sub;
    if (asprintf(&sub, "%s/stores", g.dir) >= 0) {
        hc_mkdirs(sub);
        free(sub);
    }
    hc_lock();
    rc = state_load();
    hc_unlock();
    if (rc < 0)
        return rc;
    lro_init();
    return lro_load();
}

void emu_hc_shutdown(emu_ctx *ctx)
{
    (void)ctx;
    lro_shutdown();
    hc_lock();
    for (size_t i = 0; i < g.n_st; i++) {
        hc_store *s = g.st[i];
        for (size_t k = 0; k < s->n_inst; k++)
            inst_free(s->inst[k]);
        if (s->log_fd >= 0)
            close(s->log_fd);
        free(s->inst);
        free(s->hash);
        free(s->name);
        free(s->dir);
        free(s);
    }
    free(g.st);
    g.st = NULL;
    g.n_st = 0;
    for (size_t i = 0; i < g.n_ds; i++) {
        free(g.ds[i].name);
        free(g.ds[i].tz);
    }
    free(g.ds);
    g.ds = NULL;
    g.n_ds = 0;
    hc_unlock();
    free(g.dir);
    g.dir = NULL;
    free(g.location);
    g.location = NULL;
}

int emu_hc_expire_ops(emu_ctx *ctx, const char *name)
{
    (void)ctx;
    return lro_expire(name);
}

int emu_hc_precreate(emu_ctx *ctx, const char *project, const char *location, const char *dataset,
                     const char *store)
{
    (void)ctx;
    if (!project || !location || !dataset || !hc_id_valid(dataset) ||
        (store && !hc_id_valid(store))) {
        log_error("emulator: cannot pre-create: invalid project, location, dataset or store id");
        return -EINVAL;
    }
    char *dname, *sname = NULL;
    if (asprintf(&dname, "projects/%s/locations/%s/datasets/%s", project, location, dataset) < 0)
        return -ENOMEM;
    if (store && asprintf(&sname, "%s/dicomStores/%s", dname, store) < 0) {
        free(dname);
        return -ENOMEM;
    }
    int rc = 0;
    hc_lock();
    if (!g.location)
        g.location = strdup(location);
    if (!ds_find(dname)) {
        rc = ds_add(dname, NULL);
        state_save();
    }
    if (rc == 0 && sname && !hc_store_find(sname) && !store_create_locked(sname))
        rc = -ENOMEM;
    hc_unlock();
    free(dname);
    free(sname);
    return rc;
}
