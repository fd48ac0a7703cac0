/* dicomweb: the DICOMweb surface of an emulated DICOM store.
 *
 * QIDO-RS (studies/series/instances searches with the conformance
 * statement's match keys, includefield, limit/offset and their caps), WADO-RS
 * (instance/series/study retrieve as multipart/related or single-part
 * application/dicom, metadata, rendered, frames), STOW-RS (single-part or
 * multipart/related; XML or JSON response) and DELETE (instance synchronous,
 * study/series as an LRO). A search that matches nothing answers 204 No
 * Content with no body, as the service does.
 */
#include <ctype.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "multipart.h"
#include "hc_internal.h"

#define EXPLICIT_LE "1.2.840.10008.1.2.1"
#define MAX_SEG 12

/* The DICOM store a request addresses, with what serves it. */
typedef struct dw_store {
    const char *name;
    emu_ctx *ctx;
    hc_state *hs;
    hc_lro *lro;
} dw_store;

enum level { LV_STUDY, LV_SERIES, LV_INSTANCE };

static const uint32_t def_study[] = {0x00080005, 0x00080020, 0x00080030, 0x00080050, 0x00080056,
                                     0x00080090, 0x00080201, 0x00100010, 0x00100020, 0x00100030,
                                     0x00100040, 0x0020000D, 0x00200010, 0};
static const uint32_t all_study[] = {0x00081030, 0x00080061, 0x00201206, 0x00201208, 0};
static const uint32_t def_series[] = {0x00080005, 0x00080060, 0x00080201, 0x0008103E, 0x0020000E,
                                      0x00400244, 0x00400245, 0x00400275, 0};
static const uint32_t all_series[] = {0x00200011, 0x00201209, 0};
static const uint32_t def_inst[] = {0x00080005, 0x00080016, 0x00080018, 0x00080056,
                                    0x00080201, 0x00200013, 0x00280010, 0x00280011,
                                    0x00280100, 0x00280008, 0};
static const uint32_t keys_study[] = {0x0020000D, 0x00100010, 0x00100020, 0x00080050,
                                      0x00080090, 0x00080020, 0};
static const uint32_t keys_series[] = {0x0020000E, 0x00080060, 0};
static const uint32_t keys_inst[] = {0x00080018, 0};

static bool in_list(const uint32_t *l, uint32_t t)
{
    for (; *l; l++)
        if (*l == t)
            return true;
    return false;
}

static void dw_error(emu_response *w, int status, const char *fmt, const char *arg)
{
    char msg[600];
    snprintf(msg, sizeof msg, fmt, arg ? arg : "");
    hc_error(w, status, msg);
}

/* ---- QIDO ---- */
typedef struct match {
    uint32_t tag;
    char *value;
} match;

typedef struct query {
    enum level lv;
    match m[32];
    int n_m;
    uint32_t inc[64];
    int n_inc;
    bool inc_all, fuzzy;
    long limit, offset;
    char err[300];
} query;

static void add_include(query *q, const char *list)
{
    char *copy = strdup(list), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*t))
            t++;
        if (strcmp(t, "all") == 0) {
            q->inc_all = true;
            continue;
        }
        uint32_t tag = dj_parse_tag(t);
        if (!tag) {
            snprintf(q->err, sizeof q->err, "includefield: unknown attribute \"%.100s\"", t);
            break;
        }
        if (q->n_inc < 64)
            q->inc[q->n_inc++] = tag;
    }
    free(copy);
}

static void query_param(void *ctx, const char *key, const char *value)
{
    query *q = ctx;
    if (q->err[0])
        return;
    char *end;
    if (strcmp(key, "limit") == 0 || strcmp(key, "offset") == 0) {
        long v = strtol(value, &end, 10);
        if (*end || end == value || v < 0)
            snprintf(q->err, sizeof q->err, "invalid %s \"%.50s\"", key, value);
        else if (key[0] == 'l')
            q->limit = v;
        else
            q->offset = v;
        return;
    }
    if (strcmp(key, "includefield") == 0) {
        add_include(q, value);
        return;
    }
    if (strcmp(key, "fuzzymatching") == 0) {
        q->fuzzy = strcmp(value, "true") == 0;
        return;
    }
    uint32_t tag = dj_parse_tag(key);
    bool ok =
        tag && (in_list(keys_study, tag) || (q->lv >= LV_SERIES && in_list(keys_series, tag)) ||
                (q->lv == LV_INSTANCE && in_list(keys_inst, tag)));
    if (!ok) {
        snprintf(q->err, sizeof q->err, "unsupported search parameter \"%.100s\"", key);
        return;
    }
    if (q->n_m < 32) {
        q->m[q->n_m].tag = tag;
        q->m[q->n_m].value = strdup(value);
        q->n_m++;
    }
}

/* Parsed cached attributes of an instance, parsed once into *cache. */
static const cJSON *inst_attrs(const hc_inst *in, cJSON **cache)
{
    if (!*cache)
        *cache = cJSON_Parse(in->attrs ? in->attrs : "{}");
    return *cache;
}

/* First value of a cached attribute as text (PN: the alphabetic group). */
static const char *attr_text(const hc_inst *in, uint32_t tag, cJSON **cache)
{
    switch (tag) {
    case 0x0020000D:
        return in->study;
    case 0x0020000E:
        return in->series;
    case 0x00080018:
        return in->sop;
    default:
        break;
    }
    char hex[9];
    dj_tag_hex(tag, hex);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(inst_attrs(in, cache), hex);
    const cJSON *v = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(a, "Value"), 0);
    if (cJSON_IsString(v))
        return v->valuestring;
    if (cJSON_IsObject(v))
        return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(v, "Alphabetic"));
    return NULL;
}

static bool fuzzy_match(const char *name, const char *q)
{
    char *qs = strdup(q), *save = NULL;
    bool all = true;
    for (char *t = strtok_r(qs, " ^", &save); t && all; t = strtok_r(NULL, " ^", &save)) {
        bool found = false;
        char *ns = strdup(name), *s2 = NULL;
        for (char *u = strtok_r(ns, " ^", &s2); u && !found; u = strtok_r(NULL, " ^", &s2))
            found = strncasecmp(u, t, strlen(t)) == 0;
        free(ns);
        all = found;
    }
    free(qs);
    return all;
}

static bool value_matches(const query *q, uint32_t tag, const char *have, const char *want)
{
    if (!*want)
        return true; /* universal matching */
    if (!have)
        return false;
    if (tag == 0x00080020 && strchr(want, '-')) {
        char lo[16] = "", hi[16] = "";
        const char *dash = strchr(want, '-');
        snprintf(lo, sizeof lo, "%.*s", (int)(dash - want), want);
        snprintf(hi, sizeof hi, "%s", dash + 1);
        return (!lo[0] || strcmp(have, lo) >= 0) && (!hi[0] || strcmp(have, hi) <= 0);
    }
    if (tag == 0x00100010 && q->fuzzy)
        return fuzzy_match(have, want);
    if (tag == 0x0020000D || tag == 0x0020000E || tag == 0x00080018) {
        /* UID list matching: "a,b" or "a\b" */
        const char *p = want;
        while (*p) {
            size_t n = strcspn(p, ",\\");
            if (strlen(have) == n && strncmp(have, p, n) == 0)
                return true;
            p += n;
            if (*p)
                p++;
        }
        return false;
    }
    if (strpbrk(want, "*?"))
        return fnmatch(want, have, 0) == 0;
    return strcmp(have, want) == 0;
}

static bool inst_matches(const query *q, const hc_inst *in, const char *study, const char *series,
                         cJSON **cache)
{
    if (study && strcmp(in->study, study) != 0)
        return false;
    if (series && strcmp(in->series, series) != 0)
        return false;
    for (int i = 0; i < q->n_m; i++)
        if (!value_matches(q, q->m[i].tag, attr_text(in, q->m[i].tag, cache), q->m[i].value))
            return false;
    return true;
}

/* A tiny string set for grouping. */
typedef struct sset {
    const char **v;
    size_t cap, n;
} sset;

static size_t h(const char *s)
{
    size_t x = 5381;
    while (*s)
        x = x * 33 + (unsigned char)*s++;
    return x;
}

static bool sset_add(sset *s, const char *k)
{
    if (2 * (s->n + 1) > s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 64;
        const char **nv = calloc(nc, sizeof *nv);
        if (!nv)
            return false;
        for (size_t i = 0; i < s->cap; i++)
            if (s->v[i]) {
                size_t b = h(s->v[i]) % nc;
                while (nv[b])
                    b = (b + 1) % nc;
                nv[b] = s->v[i];
            }
        free(s->v);
        s->v = nv;
        s->cap = nc;
    }
    size_t b = h(k) % s->cap;
    while (s->v[b]) {
        if (strcmp(s->v[b], k) == 0)
            return false;
        b = (b + 1) % s->cap;
    }
    s->v[b] = k;
    s->n++;
    return true;
}

static void add_computed(cJSON *row, hc_store *st, const hc_inst *rep, enum level lv, uint32_t tag)
{
    char hex[9];
    dj_tag_hex(tag, hex);
    if (tag == 0x00080056) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "vr", "CS");
        cJSON *v = cJSON_AddArrayToObject(o, "Value");
        cJSON_AddItemToArray(v, cJSON_CreateString("ONLINE"));
        cJSON_AddItemToObject(row, hex, o);
        return;
    }
    if (tag != 0x00201206 && tag != 0x00201208 && tag != 0x00201209 && tag != 0x00080061)
        return;
    long n_inst = 0, n_series = 0;
    sset series = {0};
    cJSON *modv = cJSON_CreateArray();
    for (size_t i = 0; i < st->n_inst; i++) {
        const hc_inst *in = st->inst[i];
        if (strcmp(in->study, rep->study) != 0)
            continue;
        if (lv == LV_SERIES && strcmp(in->series, rep->series) != 0)
            continue;
        n_inst++;
        if (sset_add(&series, in->series))
            n_series++;
        cJSON *cache = NULL;
        const char *m = attr_text(in, 0x00080060, &cache);
        if (m && !cJSON_GetArraySize(modv))
            cJSON_AddItemToArray(modv, cJSON_CreateString(m));
        else if (m) {
            bool dup = false;
            const cJSON *x;
            cJSON_ArrayForEach(x, modv) dup = dup || strcmp(x->valuestring, m) == 0;
            if (!dup)
                cJSON_AddItemToArray(modv, cJSON_CreateString(m));
        }
        cJSON_Delete(cache);
    }
    free(series.v);
    cJSON *o = cJSON_CreateObject();
    if (tag == 0x00080061) {
        cJSON_AddStringToObject(o, "vr", "CS");
        if (cJSON_GetArraySize(modv))
            cJSON_AddItemToObject(o, "Value", modv);
        else
            cJSON_Delete(modv);
    } else {
        cJSON_Delete(modv);
        cJSON_AddStringToObject(o, "vr", "IS");
        cJSON *v = cJSON_AddArrayToObject(o, "Value");
        cJSON_AddItemToArray(v, cJSON_CreateNumber(tag == 0x00201206 ? n_series : n_inst));
    }
    cJSON_AddItemToObject(row, hex, o);
}

static bool is_computed(uint32_t tag)
{
    return tag == 0x00080056 || tag == 0x00201206 || tag == 0x00201208 || tag == 0x00201209 ||
           tag == 0x00080061;
}

static bool is_cached(uint32_t tag)
{
    static const uint32_t c[] = {
        0x00080005, 0x00080016, 0x00080018, 0x00080020, 0x00080030, 0x00080050, 0x00080060,
        0x00080090, 0x00080201, 0x00081030, 0x0008103E, 0x00100010, 0x00100020, 0x00100030,
        0x00100040, 0x00200010, 0x0020000D, 0x0020000E, 0x00200011, 0x00200013, 0x00280008,
        0x00280010, 0x00280011, 0x00280100, 0x00400244, 0x00400245, 0x00400275, 0};
    return in_list(c, tag);
}

typedef struct row {
    cJSON *json;
    char *path;     /* set when attributes must be read from the file */
    uint32_t *need; /* tags to read (0-terminated); NULL with path = all */
} row;

static void add_tag(cJSON *row_json, hc_store *st, const hc_inst *rep, enum level lv, uint32_t tag,
                    bool *need_file, cJSON **cache)
{
    char hex[9];
    dj_tag_hex(tag, hex);
    if (cJSON_GetObjectItemCaseSensitive(row_json, hex))
        return;
    if (is_computed(tag)) {
        add_computed(row_json, st, rep, lv, tag);
        return;
    }
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(inst_attrs(rep, cache), hex);
    if (a)
        cJSON_AddItemToObject(row_json, hex, cJSON_Duplicate(a, true));
    else if (!is_cached(tag))
        *need_file = true;
}

static void qido(emu_response *w, const emu_request *r, const dw_store *store, enum level lv,
                 const char *study, const char *series)
{
    query q;
    memset(&q, 0, sizeof q);
    q.lv = lv;
    q.limit = -1;
    emu_req_query_each(r, query_param, &q);
    long cap = lv == LV_INSTANCE ? 50000 : 5000;
    if (!q.err[0] && q.limit > cap)
        snprintf(q.err, sizeof q.err, "limit %ld exceeds the maximum %ld", q.limit, cap);
    if (!q.err[0] && q.offset > 1000000)
        snprintf(q.err, sizeof q.err, "offset %ld exceeds the maximum 1000000", q.offset);
    const char *accept = emu_req_header(r, "Accept");
    if (!q.err[0] && accept && !strstr(accept, "json") && !strstr(accept, "*/*")) {
        for (int i = 0; i < q.n_m; i++)
            free(q.m[i].value);
        dw_error(w, 406, "Accept %.200s is not supported (use application/dicom+json)", accept);
        return;
    }
    if (q.err[0]) {
        for (int i = 0; i < q.n_m; i++)
            free(q.m[i].value);
        dw_error(w, 400, "%s", q.err);
        return;
    }
    if (q.limit <= 0)
        q.limit = lv == LV_INSTANCE ? 1000 : 100;
    const uint32_t *defs = lv == LV_STUDY ? def_study : lv == LV_SERIES ? def_series : def_inst;
    const uint32_t *alls = lv == LV_STUDY ? all_study : lv == LV_SERIES ? all_series : NULL;
    row *rows = calloc((size_t)q.limit, sizeof *rows);
    size_t n_rows = 0;
    long skipped = 0;
    sset seen = {0};
    hc_lock(store->hs);
    hc_store *st = hc_store_find(store->hs, store->name);
    for (size_t i = 0; st && rows && i < st->n_inst && n_rows < (size_t)q.limit; i++) {
        hc_inst *in = st->inst[i];
        cJSON *cache = NULL;
        bool skip = !inst_matches(&q, in, study, series, &cache) ||
                    (lv == LV_STUDY && !sset_add(&seen, in->study)) ||
                    (lv == LV_SERIES && !sset_add(&seen, in->series));
        if (!skip && skipped < q.offset) {
            skipped++;
            skip = true;
        }
        if (skip) {
            cJSON_Delete(cache);
            continue;
        }
        cJSON *j = cJSON_CreateObject();
        bool need_file = lv == LV_INSTANCE && q.inc_all;
        for (const uint32_t *t = defs; *t; t++)
            add_tag(j, st, in, lv, *t, &need_file, &cache);
        for (const uint32_t *t = alls; q.inc_all && t && *t; t++)
            add_tag(j, st, in, lv, *t, &need_file, &cache);
        for (int k = 0; k < q.n_inc; k++)
            add_tag(j, st, in, lv, q.inc[k], &need_file, &cache);
        cJSON_Delete(cache);
        rows[n_rows].json = j;
        if (need_file)
            rows[n_rows].path = hc_inst_path(st, in);
        n_rows++;
    }
    hc_unlock(store->hs);
    free(seen.v);
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < n_rows; i++) {
        cJSON *j = rows[i].json;
        uint8_t *data;
        size_t len;
        dj_file f;
        char why[256];
        if (rows[i].path && hc_read_file(rows[i].path, &data, &len) == 0) {
            if (dj_parse_file(data, len, &f, why, sizeof why) == 0) {
                cJSON *full = dj_to_json(f.ds, f.enc, NULL);
                for (cJSON *c = full->child; c; c = c->next) {
                    uint32_t tag = (uint32_t)strtoul(c->string, NULL, 16);
                    bool want = (lv == LV_INSTANCE && q.inc_all);
                    for (int k = 0; !want && k < q.n_inc; k++)
                        want = q.inc[k] == tag;
                    if (want && !cJSON_GetObjectItemCaseSensitive(j, c->string))
                        cJSON_AddItemToObject(j, c->string, cJSON_Duplicate(c, true));
                }
                cJSON_Delete(full);
                dj_file_free(&f);
            }
            free(data);
        }
        free(rows[i].path);
        dj_sort(j);
        cJSON_AddItemToArray(arr, j);
    }
    free(rows);
    for (int i = 0; i < q.n_m; i++)
        free(q.m[i].value);
    if (cJSON_GetArraySize(arr) == 0) {
        /* No match: 204 No Content, no body (as the service answers). */
        cJSON_Delete(arr);
        emu_resp_empty(w, 204);
        return;
    }
    char *txt = cJSON_PrintUnformatted(arr);
    cJSON_Delete(arr);
    emu_resp_bytes(w, 200, "application/dicom+json", txt ? txt : "[]", txt ? strlen(txt) : 2);
    free(txt);
}

/* ---- WADO ---- */
typedef struct found {
    hc_inst_ref *v;
    size_t n;
    char (*ts)[HC_UID_MAX + 1];
} found;

static int find_instances(const dw_store *store, const char *study, const char *series,
                          const char *sop, found *out)
{
    memset(out, 0, sizeof *out);
    hc_lock(store->hs);
    hc_store *st = hc_store_find(store->hs, store->name);
    size_t n = 0;
    for (size_t i = 0; st && i < st->n_inst; i++) {
        hc_inst *in = st->inst[i];
        if ((study && strcmp(in->study, study)) || (series && strcmp(in->series, series)) ||
            (sop && strcmp(in->sop, sop)))
            continue;
        hc_inst_ref *nv = realloc(out->v, (n + 1) * sizeof *nv);
        char(*nt)[HC_UID_MAX + 1] = realloc(out->ts, (n + 1) * sizeof *nt);
        if (nv)
            out->v = nv;
        if (nt)
            out->ts = nt;
        if (!nv || !nt)
            break;
        memcpy(nv[n].study, in->study, sizeof nv[n].study);
        memcpy(nv[n].series, in->series, sizeof nv[n].series);
        memcpy(nv[n].sop, in->sop, sizeof nv[n].sop);
        memcpy(nt[n], in->ts, sizeof nt[n]);
        nv[n].path = hc_inst_path(st, in);
        n++;
    }
    hc_unlock(store->hs);
    out->n = n;
    return (int)n;
}

static void found_free(found *f)
{
    hc_refs_free(f->v, f->n);
    free(f->ts);
}

/* Parses Accept for DICOM retrieval: single-part or multipart, and the
 * transfer syntax asked for. Returns -1 when nothing acceptable. */
static int dicom_accept(const char *accept, bool allow_single, bool *single, char *ts, size_t tslen)
{
    *single = false;
    snprintf(ts, tslen, "%s", EXPLICIT_LE);
    if (!accept || !*accept)
        return 0;
    char *copy = strdup(accept), *save = NULL;
    int rc = -1;
    for (char *item = strtok_r(copy, ",", &save); item && rc < 0;
         item = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*item))
            item++;
        bool multi = strncasecmp(item, "multipart/related", 17) == 0;
        bool one = strncasecmp(item, "application/dicom", 17) == 0 &&
                   (item[17] == '\0' || item[17] == ';' || isspace((unsigned char)item[17]));
        bool any = strncmp(item, "*/*", 3) == 0;
        if (multi) {
            char *type = multipart_content_type_param(item, "type");
            bool ok = !type || strcasecmp(type, "application/dicom") == 0;
            free(type);
            if (!ok)
                continue;
        } else if (!(one && allow_single) && !any) {
            continue;
        }
        *single = one;
        char *t = multipart_content_type_param(item, "transfer-syntax");
        if (t) {
            snprintf(ts, tslen, "%s", t);
            free(t);
        }
        rc = 0;
    }
    free(copy);
    return rc;
}

/* Bytes of one instance in the asked transfer syntax; out_ts gets the one
 * actually sent. */
static int instance_bytes(const char *path, const char *stored_ts, const char *want, hc_buf *out,
                          char *out_ts, size_t tslen, char *why, size_t whylen)
{
    uint8_t *data;
    size_t len;
    if (hc_read_file(path, &data, &len) < 0) {
        snprintf(why, whylen, "instance vanished");
        return -404;
    }
    int rc = 0;
    if (!strcmp(want, "*") || !strcmp(want, stored_ts)) {
        hc_buf_put(out, data, len);
        snprintf(out_ts, tslen, "%s", stored_ts);
    } else if (!strcmp(want, EXPLICIT_LE)) {
        rc = conv_to_explicit_le(data, len, out, why, whylen) < 0 ? -406 : 0;
        snprintf(out_ts, tslen, "%s", EXPLICIT_LE);
    } else {
        snprintf(why, whylen, "transcoding from %s to %s is not supported by the emulator",
                 stored_ts, want);
        rc = -406;
    }
    free(data);
    return rc;
}

static void wado(emu_response *w, const emu_request *r, const dw_store *store, const char *study,
                 const char *series, const char *sop)
{
    bool single;
    char ts[80];
    if (dicom_accept(emu_req_header(r, "Accept"), sop != NULL, &single, ts, sizeof ts) < 0) {
        dw_error(w, 406, "Accept %.300s is not supported", emu_req_header(r, "Accept"));
        return;
    }
    found f;
    if (find_instances(store, study, series, sop, &f) == 0) {
        found_free(&f);
        dw_error(w, 404, "%s not found", sop ? "instance" : series ? "series" : "study");
        return;
    }
    hc_buf body = {0};
    char why[300] = "", sent_ts[80] = "";
    int rc = 0;
    int fd = -1;
    struct stat st;
    if (single && (!strcmp(ts, "*") || !strcmp(ts, f.ts[0])) &&
        (fd = open(f.v[0].path, O_RDONLY | O_CLOEXEC)) >= 0 && fstat(fd, &st) == 0) {
        /* as stored: served from the file without copying it into memory */
        char ct[160];
        snprintf(ct, sizeof ct, "application/dicom; transfer-syntax=%s", f.ts[0]);
        emu_resp_file(w, 200, ct, fd, 0, (uint64_t)st.st_size);
    } else if (single) {
        if (fd >= 0)
            close(fd);
        rc = instance_bytes(f.v[0].path, f.ts[0], ts, &body, sent_ts, sizeof sent_ts, why,
                            sizeof why);
        if (rc == 0) {
            char ct[160];
            snprintf(ct, sizeof ct, "application/dicom; transfer-syntax=%s", sent_ts);
            emu_resp_bytes(w, 200, ct, body.p, body.len);
        }
    } else {
        char boundary[64];
        snprintf(boundary, sizeof boundary, "dicomfs-emulator-%08lx", random());
        for (size_t i = 0; i < f.n && rc == 0; i++) {
            hc_buf one = {0};
            rc = instance_bytes(f.v[i].path, f.ts[i], ts, &one, sent_ts, sizeof sent_ts, why,
                                sizeof why);
            if (rc == 0) {
                char hdr[256];
                int n = snprintf(hdr, sizeof hdr,
                                 "--%s\r\nContent-Type: application/dicom; transfer-syntax=%s"
                                 "\r\n\r\n",
                                 boundary, sent_ts);
                hc_buf_put(&body, hdr, (size_t)n);
                hc_buf_put(&body, one.p, one.len);
                hc_buf_put(&body, "\r\n", 2);
            }
            free(one.p);
        }
        if (rc == 0) {
            char end[80], ct[400];
            int n = snprintf(end, sizeof end, "--%s--\r\n", boundary);
            hc_buf_put(&body, end, (size_t)n);
            snprintf(ct, sizeof ct,
                     "multipart/related; type=\"application/dicom\"; transfer-syntax=%s; "
                     "boundary=%s",
                     strcmp(ts, "*") == 0 ? "*" : ts, boundary);
            emu_resp_bytes(w, 200, ct, body.p, body.len);
        }
    }
    if (rc < 0)
        dw_error(w, -rc, "%s", why);
    free(body.p);
    found_free(&f);
}

static void metadata(emu_response *w, const char *version, const dw_store *store, const char *study,
                     const char *series, const char *sop)
{
    found f;
    if (find_instances(store, study, series, sop, &f) == 0) {
        found_free(&f);
        dw_error(w, 404, "%s not found", sop ? "instance" : series ? "series" : "study");
        return;
    }
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < f.n; i++) {
        uint8_t *data;
        size_t len;
        dj_file df;
        char why[256];
        if (hc_read_file(f.v[i].path, &data, &len) < 0)
            continue;
        if (dj_parse_file(data, len, &df, why, sizeof why) == 0) {
            char *bulk;
            if (asprintf(&bulk, "%s/%s/%s/dicomWeb/studies/%s/series/%s/instances/%s",
                         emu_base_url(store->ctx), version, store->name, f.v[i].study,
                         f.v[i].series, f.v[i].sop) < 0)
                bulk = NULL;
            cJSON_AddItemToArray(arr, dj_to_json(df.ds, df.enc, bulk));
            free(bulk);
            dj_file_free(&df);
        }
        free(data);
    }
    found_free(&f);
    char *txt = cJSON_PrintUnformatted(arr);
    cJSON_Delete(arr);
    emu_resp_bytes(w, 200, "application/dicom+json", txt ? txt : "[]", txt ? strlen(txt) : 2);
    free(txt);
}

/* rendered (frame >= 0 or whole instance) and frames. */
/* Bulk data of a top-level element (the BulkDataURI of metadata). Single
 * part with Accept: application/octet-stream, else multipart/related. */
/* Reads and parses the first instance found, then frees f. On failure
 * answers 500 and returns false. */
static bool load_first(emu_response *w, found *f, uint8_t **data, size_t *len, dj_file *df)
{
    char why[300] = "";
    bool ok = hc_read_file(f->v[0].path, data, len) == 0 &&
              dj_parse_file(*data, *len, df, why, sizeof why) == 0;
    found_free(f);
    if (!ok) {
        free(*data);
        *data = NULL;
        dw_error(w, 500, "cannot read the instance: %s", why);
    }
    return ok;
}

static void bulkdata(emu_response *w, const emu_request *r, const dw_store *store,
                     const char *study, const char *series, const char *sop, const char *tag_hex)
{
    uint32_t tag = dj_parse_tag(tag_hex);
    found f;
    if (!tag || find_instances(store, study, series, sop, &f) == 0) {
        if (tag)
            found_free(&f);
        dw_error(w, 404, "bulk data %s not found", tag_hex);
        return;
    }
    uint8_t *data = NULL;
    size_t len = 0;
    dj_file df;
    char why[300] = "";
    if (!load_first(w, &f, &data, &len, &df))
        return;
    hc_buf out = {0};
    const dj_elem *e = dj_find(df.ds, tag);
    int rc = 0;
    if (!e || e->n_items) {
        rc = -404;
        snprintf(why, sizeof why, "the instance has no binary element %s", tag_hex);
    } else if (tag == 0x7FE00010) {
        rc = conv_pixel_data(&df, -1, true, &out, why, sizeof why) < 0 ? -406 : 0;
    } else {
        hc_buf_put(&out, e->val, e->len);
    }
    const char *accept = emu_req_header(r, "Accept");
    if (rc < 0) {
        dw_error(w, -rc, "%s", why);
    } else if (accept && !strncasecmp(accept, "application/octet-stream", 24)) {
        emu_resp_bytes(w, 200, "application/octet-stream", out.p, out.len);
    } else {
        hc_buf body = {0};
        static const char hdr[] =
            "--dicomfs-bulk\r\nContent-Type: application/octet-stream\r\n\r\n";
        hc_buf_put(&body, hdr, sizeof hdr - 1);
        hc_buf_put(&body, out.p, out.len);
        hc_buf_put(&body, "\r\n--dicomfs-bulk--\r\n", 20);
        emu_resp_bytes(
            w, 200, "multipart/related; type=\"application/octet-stream\"; boundary=dicomfs-bulk",
            body.p, body.len);
        free(body.p);
    }
    free(out.p);
    dj_file_free(&df);
    free(data);
}

static void pixels(emu_response *w, const emu_request *r, const dw_store *store, const char *study,
                   const char *series, const char *sop, const char *frames, bool rendered)
{
    found f;
    if (find_instances(store, study, series, sop, &f) == 0) {
        found_free(&f);
        dw_error(w, 404, "%s not found", "instance");
        return;
    }
    uint8_t *data = NULL;
    size_t len = 0;
    dj_file df;
    char why[300] = "";
    int frame = 0;
    if (frames) {
        char *end;
        long v = strtol(frames, &end, 10);
        if (v < 1 || (*end && *end != ',')) {
            found_free(&f);
            dw_error(w, 400, "invalid frame list \"%.100s\"", frames);
            return;
        }
        frame = (int)v - 1;
    }
    if (!load_first(w, &f, &data, &len, &df))
        return;
    hc_buf out = {0};
    if (frame >= conv_num_frames(&df)) {
        dw_error(w, 400, "frame %s does not exist", frames);
    } else if (rendered) {
        const char *accept = emu_req_header(r, "Accept");
        bool png = accept && strstr(accept, "image/png");
        if (conv_render(&df, frame, !png, &out, why, sizeof why) < 0)
            dw_error(w, 406, "%s", why);
        else
            emu_resp_bytes(w, 200, png ? "image/png" : "image/jpeg", out.p, out.len);
    } else {
        /* multipart/related octet-stream, one part per listed frame */
        hc_buf body = {0};
        const char *p = frames;
        int rc = 0;
        while (p && *p && rc == 0) {
            long v = strtol(p, (char **)&p, 10);
            out.len = 0;
            if (v < 1 || v > conv_num_frames(&df)) {
                snprintf(why, sizeof why, "frame %ld does not exist", v);
                rc = -400;
                break;
            }
            if (conv_pixel_data(&df, conv_num_frames(&df) > 1 ? (int)v - 1 : -1, false, &out, why,
                                sizeof why) < 0) {
                rc = -406;
                break;
            }
            static const char hdr[] = "--dicomfs-frame\r\nContent-Type: application/octet-stream; "
                                      "transfer-syntax=1.2.840.10008.1.2.1\r\n\r\n";
            hc_buf_put(&body, hdr, sizeof hdr - 1);
            hc_buf_put(&body, out.p, out.len);
            hc_buf_put(&body, "\r\n", 2);
            if (*p == ',')
                p++;
        }
        if (rc == 0) {
            hc_buf_put(&body, "--dicomfs-frame--\r\n", 19);
            emu_resp_bytes(w, 200,
                           "multipart/related; type=\"application/octet-stream\"; "
                           "transfer-syntax=1.2.840.10008.1.2.1; boundary=dicomfs-frame",
                           body.p, body.len);
        } else {
            dw_error(w, -rc, "%s", why);
        }
        free(body.p);
    }
    free(out.p);
    dj_file_free(&df);
    free(data);
}

/* ---- STOW ---- */
typedef struct stow {
    const dw_store *store;
    const char *study, *base;
    cJSON *ok, *failed;
    int n_failed;
} stow;

static cJSON *attr(const char *vr, const char *s)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "vr", vr);
    cJSON *v = cJSON_AddArrayToObject(o, "Value");
    cJSON_AddItemToArray(v, cJSON_CreateString(s));
    return o;
}

static void stow_one(stow *s, const uint8_t *buf, size_t len)
{
    char uids[4][HC_UID_MAX + 1] = {"", "", "", ""}, why[400] = "";
    enum hc_add_result ar =
        hc_store_add(s->store->hs, s->store->name, buf, len, s->study, uids, why, sizeof why);
    cJSON *item = cJSON_CreateObject();
    cJSON_AddItemToObject(item, "00081150", attr("UI", uids[3]));
    cJSON_AddItemToObject(item, "00081155", attr("UI", uids[2]));
    if (ar == HC_ADD_NEW || ar == HC_ADD_DUP_SAME) {
        char *url;
        if (asprintf(&url, "%s/studies/%s/series/%s/instances/%s", s->base, uids[0], uids[1],
                     uids[2]) >= 0) {
            cJSON_AddItemToObject(item, "00081190", attr("UR", url));
            free(url);
        }
        cJSON_AddItemToArray(s->ok, item);
        return;
    }
    int reason = ar == HC_ADD_DUP_DIFFERENT || (s->study && uids[0][0]) ? 0x0110 : 0xC000;
    cJSON *fr = cJSON_CreateObject();
    cJSON_AddStringToObject(fr, "vr", "US");
    cJSON *v = cJSON_AddArrayToObject(fr, "Value");
    cJSON_AddItemToArray(v, cJSON_CreateNumber(reason));
    cJSON_AddItemToObject(item, "00081197", fr);
    cJSON_AddItemToObject(item, "00091097", attr("LO", why));
    dj_sort(item);
    cJSON_AddItemToArray(s->failed, item);
    s->n_failed++;
}

static int stow_part(void *ctx, const multipart_part *part)
{
    char ct[256] = "";
    multipart_part_header(part, "Content-Type", ct, sizeof ct);
    stow *s = ctx;
    if (ct[0] && strncasecmp(ct, "application/dicom", 17) != 0) {
        /* not a Part-10 part: reported as a failed item */
        stow_one(s, (const uint8_t *)"", 0);
        return 0;
    }
    stow_one(s, (const uint8_t *)part->body, part->body_len);
    return 0;
}

static void xml_escape(hc_buf *b, const char *s)
{
    for (; *s; s++) {
        const char *e = NULL;
        switch (*s) {
        case '<':
            e = "&lt;";
            break;
        case '>':
            e = "&gt;";
            break;
        case '&':
            e = "&amp;";
            break;
        case '"':
            e = "&quot;";
            break;
        default:
            break;
        }
        if (e)
            hc_buf_put(b, e, strlen(e));
        else
            hc_buf_put(b, s, 1);
    }
}

/* PS3.19 Native DICOM Model for the (flat or one-level-nested) STOW response. */
static void json_to_xml(hc_buf *b, const cJSON *obj)
{
    for (const cJSON *a = obj->child; a; a = a->next) {
        uint32_t tag = (uint32_t)strtoul(a->string, NULL, 16);
        const char *vr = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(a, "vr"));
        const char *kw = dj_tag_keyword(tag);
        char *open;
        if (asprintf(&open, "<DicomAttribute tag=\"%s\" vr=\"%s\"%s%s%s>", a->string,
                     vr ? vr : "UN", kw ? " keyword=\"" : "", kw ? kw : "", kw ? "\"" : "") < 0)
            continue;
        hc_buf_put(b, open, strlen(open));
        free(open);
        int i = 1;
        const cJSON *v;
        cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(a, "Value"))
        {
            char n[64];
            if (cJSON_IsObject(v)) {
                snprintf(n, sizeof n, "<Item number=\"%d\">", i++);
                hc_buf_put(b, n, strlen(n));
                json_to_xml(b, v);
                hc_buf_put(b, "</Item>", 7);
                continue;
            }
            snprintf(n, sizeof n, "<Value number=\"%d\">", i++);
            hc_buf_put(b, n, strlen(n));
            if (cJSON_IsString(v)) {
                xml_escape(b, v->valuestring);
            } else {
                char num[32];
                snprintf(num, sizeof num, "%g", v->valuedouble);
                hc_buf_put(b, num, strlen(num));
            }
            hc_buf_put(b, "</Value>", 8);
        }
        hc_buf_put(b, "</DicomAttribute>", 17);
    }
}

static void stow_rs(emu_response *w, const emu_request *r, const char *version,
                    const dw_store *store, const char *study)
{
    const char *ct = emu_req_header(r, "Content-Type");
    size_t len = 0;
    const char *body = emu_req_body(r, &len);
    void *map = NULL;
    uint64_t flen = 0;
    if (!body) {
        int fd = emu_req_body_fd(r, &flen);
        if (fd >= 0 && flen > 0) {
            map = mmap(NULL, flen, PROT_READ, MAP_PRIVATE, fd, 0);
            if (map == MAP_FAILED)
                map = NULL;
            body = map;
            len = (size_t)flen;
        }
    }
    if (!body)
        body = "";
    char *base;
    if (asprintf(&base, "%s/%s/%s/dicomWeb", emu_base_url(store->ctx), version, store->name) < 0)
        base = NULL;
    stow s = {.store = store,
              .study = study,
              .base = base,
              .ok = cJSON_CreateArray(),
              .failed = cJSON_CreateArray()};
    char why[300] = "";
    int status = 0;
    if (ct && strncasecmp(ct, "application/dicom", 17) == 0 &&
        (ct[17] == '\0' || ct[17] == ';' || ct[17] == ' ')) {
        stow_one(&s, (const uint8_t *)body, len);
    } else if (ct && strncasecmp(ct, "multipart/related", 17) == 0) {
        char *boundary = multipart_content_type_param(ct, "boundary");
        char *type = multipart_content_type_param(ct, "type");
        if (!boundary) {
            status = 400;
            snprintf(why, sizeof why, "multipart/related without a boundary");
        } else if (type && strcasecmp(type, "application/dicom") != 0) {
            status = 415;
            snprintf(why, sizeof why,
                     "multipart type \"%.100s\" is not supported (use "
                     "application/dicom)",
                     type);
        } else if (multipart_parse(body, len, boundary, stow_part, &s, why, sizeof why) !=
                   CERR_OK) {
            status = 400;
        }
        free(boundary);
        free(type);
    } else {
        status = 415;
        snprintf(why, sizeof why,
                 "Content-Type %.100s is not supported (use application/dicom "
                 "or multipart/related; type=\"application/dicom\")",
                 ct ? ct : "(none)");
    }
    if (map)
        munmap(map, flen);
    if (status) {
        dw_error(w, status, "%s", why);
        cJSON_Delete(s.ok);
        cJSON_Delete(s.failed);
        free(base);
        return;
    }
    cJSON *resp = cJSON_CreateObject();
    if (study && base) {
        char *url;
        if (asprintf(&url, "%s/studies/%s", base, study) >= 0) {
            cJSON_AddItemToObject(resp, "00081190", attr("UR", url));
            free(url);
        }
    }
    cJSON *seq = cJSON_CreateObject();
    cJSON_AddStringToObject(seq, "vr", "SQ");
    if (cJSON_GetArraySize(s.failed))
        cJSON_AddItemToObject(seq, "Value", s.failed);
    else
        cJSON_Delete(s.failed);
    cJSON_AddItemToObject(resp, "00081198", seq);
    seq = cJSON_CreateObject();
    cJSON_AddStringToObject(seq, "vr", "SQ");
    if (cJSON_GetArraySize(s.ok))
        cJSON_AddItemToObject(seq, "Value", s.ok);
    else
        cJSON_Delete(s.ok);
    cJSON_AddItemToObject(resp, "00081199", seq);
    if (!s.n_failed)
        cJSON_DeleteItemFromObjectCaseSensitive(resp, "00081198");
    status = s.n_failed ? 409 : 200;
    const char *accept = emu_req_header(r, "Accept");
    if (accept && strstr(accept, "application/dicom+json")) {
        char *txt = cJSON_PrintUnformatted(resp);
        emu_resp_bytes(w, status, "application/dicom+json", txt, txt ? strlen(txt) : 0);
        free(txt);
    } else {
        hc_buf b = {0};
        static const char head[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<NativeDicomModel "
                                   "xmlns=\"http://dicom.nema.org/PS3.19/models/NativeDICOM\">";
        hc_buf_put(&b, head, sizeof head - 1);
        json_to_xml(&b, resp);
        hc_buf_put(&b, "</NativeDicomModel>\n", 20);
        emu_resp_bytes(w, status, "application/dicom+xml", b.p, b.len);
        free(b.p);
    }
    cJSON_Delete(resp);
    free(base);
}

/* ---- instances.getStorageInfo (a Healthcare API extra, v1 and v1beta1) ----
 * blobStorageInfo.sizeBytes is the size of the stored file, which is what a
 * retrieval as stored (transfer-syntax=*) sends. */
static void storage_info(emu_response *w, const char *version, const dw_store *store,
                         const char *study, const char *series, const char *sop)
{
    found f;
    struct stat st;
    if (find_instances(store, study, series, sop, &f) == 0 || stat(f.v[0].path, &st) != 0) {
        found_free(&f);
        dw_error(w, 404, "instance not found", NULL);
        return;
    }
    found_free(&f);
    char num[32], res[1024];
    snprintf(num, sizeof num, "%llu", (unsigned long long)st.st_size);
    snprintf(res, sizeof res, "%s/dicomWeb/studies/%s/series/%s/instances/%s", store->name, study,
             series, sop);
    (void)version;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "referencedResource", res);
    cJSON *ss = cJSON_AddObjectToObject(j, "structuredStorageInfo");
    cJSON_AddStringToObject(ss, "sizeBytes", "0");
    cJSON *blob = cJSON_AddObjectToObject(j, "blobStorageInfo");
    cJSON_AddStringToObject(blob, "sizeBytes", num);
    cJSON_AddStringToObject(blob, "storageClass", "STANDARD");
    emu_resp_json(w, 200, j);
}

/* ---- DELETE ---- */
static void delete_rs(emu_response *w, const char *version, const char *dataset,
                      const dw_store *store, const char *study, const char *series, const char *sop)
{
    found f;
    int n = find_instances(store, study, series, sop, &f);
    found_free(&f);
    if (n == 0) {
        dw_error(w, 404, "%s not found", sop ? "instance" : series ? "series" : "study");
        return;
    }
    if (sop) {
        hc_store_delete(store->hs, store->name, study, series, sop);
        emu_resp_json(w, 200, cJSON_CreateObject());
        return;
    }
    cJSON *req = cJSON_CreateObject();
    cJSON_AddStringToObject(req, "study", study);
    if (series)
        cJSON_AddStringToObject(req, "series", series);
    hc_op_start(store->lro, w, series ? HC_OP_DELETE_SERIES : HC_OP_DELETE_STUDY, version, dataset,
                store->name, req);
    cJSON_Delete(req);
}

void dicomweb_handle(emu_ctx *ctx, hc_state *hs, hc_lro *lro, const emu_request *r, emu_response *w,
                     const char *version, const char *store_name, const char *dataset,
                     const char *path)
{
    const dw_store target = {.name = store_name, .ctx = ctx, .hs = hs, .lro = lro};
    const dw_store *store = &target;
    char *copy = strdup(path);
    char *seg[MAX_SEG];
    int n = 0;
    for (char *p = copy, *save = NULL, *t = strtok_r(p, "/", &save); t && n < MAX_SEG;
         t = strtok_r(NULL, "/", &save))
        seg[n++] = t;
    const char *m = emu_req_method(r);
    bool get = !strcmp(m, "GET") || !strcmp(m, "HEAD"), del = !strcmp(m, "DELETE"),
         post = !strcmp(m, "POST");
#define IS(i, s) (n > (i) && strcmp(seg[i], s) == 0)
    const char *study = n > 1 && IS(0, "studies") ? seg[1] : NULL;
    const char *series = study && IS(2, "series") && n > 3 ? seg[3] : NULL;
    const char *sop = series && IS(4, "instances") && n > 5 ? seg[5] : NULL;
    /* "I:getStorageInfo": the custom verb rides on the last segment */
    char *verb = sop && n == 6 ? strchr(seg[5], ':') : NULL;
    if (verb)
        *verb++ = '\0';
    if (verb && get && strcmp(verb, "getStorageInfo") == 0)
        storage_info(w, version, store, study, series, sop);
    else if (verb)
        dw_error(w, 404, "unsupported DICOMweb request %s", path);
    else if (get && n == 1 && IS(0, "studies"))
        qido(w, r, store, LV_STUDY, NULL, NULL);
    else if (get && n == 1 && IS(0, "series"))
        qido(w, r, store, LV_SERIES, NULL, NULL);
    else if (get && n == 1 && IS(0, "instances"))
        qido(w, r, store, LV_INSTANCE, NULL, NULL);
    else if (get && study && n == 3 && IS(2, "series"))
        qido(w, r, store, LV_SERIES, study, NULL);
    else if (get && study && n == 3 && IS(2, "instances"))
        qido(w, r, store, LV_INSTANCE, study, NULL);
    else if (get && series && n == 5 && IS(4, "instances"))
        qido(w, r, store, LV_INSTANCE, study, series);
    else if (get && study && n == 2)
        wado(w, r, store, study, NULL, NULL);
    else if (get && series && n == 4)
        wado(w, r, store, study, series, NULL);
    else if (get && sop && n == 6)
        wado(w, r, store, study, series, sop);
    else if (get && study && n == 3 && IS(2, "metadata"))
        metadata(w, version, store, study, NULL, NULL);
    else if (get && series && n == 5 && IS(4, "metadata"))
        metadata(w, version, store, study, series, NULL);
    else if (get && sop && n == 7 && IS(6, "metadata"))
        metadata(w, version, store, study, series, sop);
    else if (get && sop && n == 7 && IS(6, "rendered"))
        pixels(w, r, store, study, series, sop, NULL, true);
    else if (get && sop && n == 8 && IS(6, "frames"))
        pixels(w, r, store, study, series, sop, seg[7], false);
    else if (get && sop && n == 9 && IS(6, "frames") && IS(8, "rendered"))
        pixels(w, r, store, study, series, sop, seg[7], true);
    else if (get && sop && n == 8 && IS(6, "bulkdata"))
        bulkdata(w, r, store, study, series, sop, seg[7]);
    else if (post && n == 1 && IS(0, "studies"))
        stow_rs(w, r, version, store, NULL);
    else if (post && study && n == 2)
        stow_rs(w, r, version, store, study);
    else if (del && study && n == 2)
        delete_rs(w, version, dataset, store, study, NULL, NULL);
    else if (del && series && n == 4)
        delete_rs(w, version, dataset, store, study, series, NULL);
    else if (del && sop && n == 6)
        delete_rs(w, version, dataset, store, study, series, sop);
    else
        dw_error(w, 404, "unsupported DICOMweb request %s", path);
#undef IS
    free(copy);
}
