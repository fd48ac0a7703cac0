/* hc_state: the emulated Healthcare API's state.
 *
 * Owns datasets, DICOM stores and their instance indexes, persisted under
 * DATA/healthcare/: state.json (datasets, stores; atomic replace) and per
 * store stores/sN/index.log (append-only add/del lines, compacted on load)
 * plus files/N.dcm (the Part-10 bytes as uploaded). One mutex (hc_lock)
 * guards it; it is never held across file reads, parsing or conversion.
 * Knows nothing of HTTP routing or operations.
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
#include "hc_internal.h"

struct hc_state {
    emu_ctx *ctx;
    pthread_mutex_t mu;
    char *dir; /* DATA/healthcare */
    hc_dataset *ds;
    size_t n_ds;
    hc_store **st;
    size_t n_st;
    uint64_t next_store;
    char *location; /* --location: exists besides the service's own */
};

void hc_lock(hc_state *hs)
{
    pthread_mutex_lock(&hs->mu);
}

void hc_unlock(hc_state *hs)
{
    pthread_mutex_unlock(&hs->mu);
}

emu_ctx *hc_state_ctx(const hc_state *hs)
{
    return hs->ctx;
}

/* ---- file helpers ---- */
int hc_read_file(const char *path, uint8_t **data, size_t *len)
{
    char *text;
    int rc = emu_read_file(path, &text, len);
    *data = (uint8_t *)text;
    return rc;
}

/* ---- datasets and stores ---- */
static hc_dataset *ds_find(hc_state *hs, const char *name)
{
    for (size_t i = 0; i < hs->n_ds; i++)
        if (!hs->ds[i].deleted && strcmp(hs->ds[i].name, name) == 0)
            return &hs->ds[i];
    return NULL;
}

bool hc_dataset_exists(hc_state *hs, const char *name)
{
    hc_lock(hs);
    bool r = ds_find(hs, name) != NULL;
    hc_unlock(hs);
    return r;
}

hc_store *hc_store_find(hc_state *hs, const char *name)
{
    for (size_t i = 0; i < hs->n_st; i++)
        if (!hs->st[i]->deleted && strcmp(hs->st[i]->name, name) == 0)
            return hs->st[i];
    return NULL;
}

static size_t hash_str(const char *s)
{
    return (size_t)util_fnv1a_str(UTIL_FNV1A_INIT, s);
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
    int rc = util_write_atomic(path, b.p ? (const void *)b.p : "", b.len, 0600);
    free(b.p);
    s->log_fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    free(path);
    return rc;
}

static int state_save(hc_state *hs)
{
    cJSON *j = cJSON_CreateObject();
    cJSON *dsa = cJSON_AddArrayToObject(j, "datasets");
    for (size_t i = 0; i < hs->n_ds; i++) {
        if (hs->ds[i].deleted)
            continue;
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "name", hs->ds[i].name);
        cJSON_AddStringToObject(d, "timeZone", hs->ds[i].tz);
        cJSON_AddItemToArray(dsa, d);
    }
    cJSON *sta = cJSON_AddArrayToObject(j, "stores");
    for (size_t i = 0; i < hs->n_st; i++) {
        if (hs->st[i]->deleted)
            continue;
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "name", hs->st[i]->name);
        cJSON_AddStringToObject(d, "dir", strrchr(hs->st[i]->dir, '/') + 1);
        cJSON_AddItemToArray(sta, d);
    }
    cJSON_AddNumberToObject(j, "nextStore", (double)hs->next_store);
    char *path = util_asprintf("%s/state.json", hs->dir);
    int rc = path ? emu_write_json(path, j, true) : (cJSON_Delete(j), -ENOMEM);
    free(path);
    if (rc < 0)
        log_error("emulator: cannot save healthcare state: %s", strerror(-rc));
    return rc;
}

static int ds_add(hc_state *hs, const char *name, const char *tz)
{
    hc_dataset *n = realloc(hs->ds, (hs->n_ds + 1) * sizeof *n);
    if (!n)
        return -ENOMEM;
    hs->ds = n;
    hs->ds[hs->n_ds].name = strdup(name);
    hs->ds[hs->n_ds].tz = strdup(tz && *tz ? tz : "UTC");
    hs->ds[hs->n_ds].deleted = false;
    hs->n_ds++;
    return 0;
}

static hc_store *st_add(hc_state *hs, const char *name, const char *dirname)
{
    hc_store **n = realloc(hs->st, (hs->n_st + 1) * sizeof *n);
    if (!n)
        return NULL;
    hs->st = n;
    hc_store *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->name = strdup(name);
    s->log_fd = -1;
    if (asprintf(&s->dir, "%s/stores/%s", hs->dir, dirname) < 0)
        s->dir = NULL;
    char *files;
    if (s->dir && asprintf(&files, "%s/files", s->dir) >= 0) {
        util_mkdirs(files, 0700);
        free(files);
    }
    hs->st[hs->n_st++] = s;
    return s;
}

static int state_load(hc_state *hs)
{
    char *path;
    if (asprintf(&path, "%s/state.json", hs->dir) < 0)
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
        log_error("emulator: %s/state.json is not valid JSON", hs->dir);
        return -EINVAL;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "datasets"))
    {
        const char *n = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "name"));
        const char *tz = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "timeZone"));
        if (n)
            ds_add(hs, n, tz);
    }
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "stores"))
    {
        const char *n = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "name"));
        const char *d = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "dir"));
        if (n && d) {
            hc_store *s = st_add(hs, n, d);
            if (s)
                store_load(s);
        }
    }
    hs->next_store =
        (uint64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, "nextStore"));
    cJSON_Delete(j);
    return 0;
}

/* Creates a store (under lock). */
hc_store *hc_store_create_locked(hc_state *hs, const char *name)
{
    char dirname[32];
    snprintf(dirname, sizeof dirname, "s%llu", (unsigned long long)hs->next_store++);
    hc_store *s = st_add(hs, name, dirname);
    if (!s)
        return NULL;
    store_load(s);
    state_save(hs);
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
    /* A unique name in the same directory, as util_write_atomic makes. */
    char *tmp = util_asprintf("%s.tmp.XXXXXX", path);
    if (!tmp)
        return -ENOMEM;
    int out = mkostemp(tmp, O_CLOEXEC);
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
        return util_write_atomic(path, src->buf, src->len, 0600);
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", src->fd);
    if (linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW) == 0)
        return 0;
    return copy_fd_to(src->fd, src->len, path);
}

static enum hc_add_result store_add(hc_state *hs, const char *store_name, const add_src *src,
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
        hc_lock(hs);
        hc_store *s = hc_store_find(hs, store_name);
        if (!s || (attempt == 1 && s != first)) {
            hc_unlock(hs);
            snprintf(why, whylen, "DICOM store %s does not exist", store_name);
            goto drop;
        }
        hc_inst *old = hc_inst_find(s, in->sop);
        if (old) {
            char *p = hc_inst_path(s, old);
            hc_unlock(hs);
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
            hc_unlock(hs);
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
            hc_unlock(hs);
            snprintf(why, whylen, "out of memory");
            goto drop;
        }
        free(written);
        index_append(s, in, "add");
        hc_unlock(hs);
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
    if (rc == CERR_OK)
        return false;
    if (!why[0])
        snprintf(why, whylen, "%s", dicom_strerror(rc));
    return true;
}

enum hc_add_result hc_store_add(hc_state *hs, const char *store_name, const uint8_t *buf,
                                size_t len, const char *require_study,
                                char uids_out[4][HC_UID_MAX + 1], char *why, size_t whylen)
{
    dicom_info info;
    if (parse_failed(dicom_parse(buf, len, &info, why, whylen), why, whylen))
        return HC_ADD_ERROR;
    add_src src = {.buf = buf, .len = len, .fd = -1};
    return store_add(hs, store_name, &src, &info, require_study, uids_out, why, whylen);
}

enum hc_add_result hc_store_add_fd(hc_state *hs, const char *store_name, int fd, uint64_t size,
                                   char *why, size_t whylen)
{
    dicom_info info;
    if (parse_failed(dicom_parse_fd(fd, &info, why, whylen), why, whylen))
        return HC_ADD_ERROR;
    add_src src = {.len = (size_t)size, .fd = fd};
    return store_add(hs, store_name, &src, &info, NULL, NULL, why, whylen);
}

long hc_store_delete(hc_state *hs, const char *store_name, const char *study, const char *series,
                     const char *sop)
{
    hc_lock(hs);
    hc_store *s = hc_store_find(hs, store_name);
    if (!s) {
        hc_unlock(hs);
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
    hc_unlock(hs);
    return n;
}

int hc_store_snapshot(hc_state *hs, const char *store_name, hc_inst_ref **refs, size_t *n)
{
    hc_lock(hs);
    hc_store *s = hc_store_find(hs, store_name);
    if (!s) {
        hc_unlock(hs);
        return -ENOENT;
    }
    hc_inst_ref *r = calloc(s->n_inst + 1, sizeof *r);
    if (!r) {
        hc_unlock(hs);
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
    hc_unlock(hs);
    return 0;
}

void hc_refs_free(hc_inst_ref *refs, size_t n)
{
    for (size_t i = 0; refs && i < n; i++)
        free(refs[i].path);
    free(refs);
}

/* ---- what the REST layer changes (under lock) ---- */
const hc_dataset *hc_dataset_find(hc_state *hs, const char *name)
{
    return ds_find(hs, name);
}

int hc_dataset_add_locked(hc_state *hs, const char *name, const char *tz)
{
    int rc = ds_add(hs, name, tz);
    state_save(hs);
    return rc;
}

void hc_dataset_drop_locked(hc_state *hs, const char *name)
{
    hc_dataset *d = ds_find(hs, name);
    if (!d)
        return;
    d->deleted = true;
    size_t nlen = strlen(name);
    for (size_t i = 0; i < hs->n_st; i++)
        if (!hs->st[i]->deleted && strncmp(hs->st[i]->name, name, nlen) == 0 &&
            hs->st[i]->name[nlen] == '/')
            store_drop_locked(hs->st[i]);
    state_save(hs);
}

void hc_store_drop_locked(hc_state *hs, hc_store *s)
{
    store_drop_locked(s);
    state_save(hs);
}

void hc_datasets_each_locked(hc_state *hs, const char *parent, hc_dataset_cb cb, void *arg)
{
    size_t plen = strlen(parent);
    for (size_t i = 0; i < hs->n_ds; i++)
        if (!hs->ds[i].deleted && strncmp(hs->ds[i].name, parent, plen) == 0 &&
            strncmp(hs->ds[i].name + plen, "/datasets/", 10) == 0)
            cb(arg, &hs->ds[i]);
}

void hc_stores_each_locked(hc_state *hs, const char *dataset, hc_store_cb cb, void *arg)
{
    size_t plen = strlen(dataset);
    for (size_t i = 0; i < hs->n_st; i++)
        if (!hs->st[i]->deleted && strncmp(hs->st[i]->name, dataset, plen) == 0 &&
            strncmp(hs->st[i]->name + plen, "/dicomStores/", 13) == 0)
            cb(arg, hs->st[i]);
}

bool hc_location_used(hc_state *hs, const char *loc)
{
    char needle[300];
    snprintf(needle, sizeof needle, "/locations/%.250s/", loc);
    hc_lock(hs);
    bool found = hs->location && strcmp(hs->location, loc) == 0;
    for (size_t i = 0; !found && i < hs->n_ds; i++)
        found = strstr(hs->ds[i].name, needle) != NULL;
    hc_unlock(hs);
    return found;
}

void hc_location_default_locked(hc_state *hs, const char *loc)
{
    if (!hs->location)
        hs->location = strdup(loc);
}

/* ---- lifecycle ---- */
int hc_state_open(emu_ctx *ctx, hc_state **out)
{
    hc_state *hs = calloc(1, sizeof *hs);
    if (!hs)
        return -ENOMEM;
    hs->ctx = ctx;
    pthread_mutex_init(&hs->mu, NULL);
    *out = hs;
    if (asprintf(&hs->dir, "%s/healthcare", emu_data_dir(ctx)) < 0) {
        hs->dir = NULL;
        return -ENOMEM;
    }
    int rc = util_mkdirs(hs->dir, 0700);
    if (rc < 0) {
        log_error("emulator: cannot create %s: %s", hs->dir, strerror(-rc));
        return rc;
    }
    char *sub;
    if (asprintf(&sub, "%s/stores", hs->dir) >= 0) {
        util_mkdirs(sub, 0700);
        free(sub);
    }
    hc_lock(hs);
    rc = state_load(hs);
    hc_unlock(hs);
    return rc;
}

void hc_state_close(hc_state *hs)
{
    if (!hs)
        return;
    for (size_t i = 0; i < hs->n_st; i++) {
        hc_store *s = hs->st[i];
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
    free(hs->st);
    for (size_t i = 0; i < hs->n_ds; i++) {
        free(hs->ds[i].name);
        free(hs->ds[i].tz);
    }
    free(hs->ds);
    free(hs->dir);
    free(hs->location);
    pthread_mutex_destroy(&hs->mu);
    free(hs);
}
