/* hc_export: the dicomStores.export worker.
 *
 * Writes every selected instance to gcsDestination.uriPrefix as
 * PREFIX/STUDY/SERIES/INSTANCE.EXT (overwriting), in the format mimeType asks
 * for. Multi-frame instances exported as images or raw pixels get one object
 * per frame: PREFIX/STUDY/SERIES/INSTANCE/FRAME.EXT (1-based). An instance
 * that cannot be converted is a counted failure with a log entry. v1beta1
 * filterConfig.resourcePathsGcsUri selects instances with the filter grammar;
 * a bad line fails the whole operation naming the line.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <strings.h>

#include "filter.h"
#include "util.h"
#include "hc_internal.h"

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

int hc_export_parse_mime(const char *mime, enum hc_export_fmt *fmt)
{
    enum hc_export_fmt f = HC_FMT_DICOM_ASIS;
    if (!mime || !*mime)
        goto ok;
    char *copy = strdup(mime);
    if (!copy)
        return -1;
    char *semi = strchr(copy, ';');
    char *ts = NULL;
    if (semi) {
        *semi = '\0';
        char *param = trim(semi + 1);
        if (strncasecmp(param, "transfer-syntax", 15) != 0) {
            free(copy);
            return -1;
        }
        param = trim(param + 15);
        if (*param != '=') {
            free(copy);
            return -1;
        }
        ts = trim(param + 1);
        size_t n = strlen(ts);
        if (n >= 2 && ts[0] == '"' && ts[n - 1] == '"') {
            ts[n - 1] = '\0';
            ts++;
        }
    }
    char *type = trim(copy);
    int rc = 0;
    if (!strcasecmp(type, "application/dicom")) {
        if (!ts || !strcmp(ts, "*"))
            f = HC_FMT_DICOM_ASIS;
        else if (!strcmp(ts, "1.2.840.10008.1.2.1"))
            f = HC_FMT_DICOM_ELE;
        else if (!strcmp(ts, "1.2.840.10008.1.2.4.50") || !strcmp(ts, "1.2.840.10008.1.2.4.90") ||
                 !strcmp(ts, "1.2.840.10008.1.2.4.91"))
            f = HC_FMT_DICOM_OTHER;
        else
            rc = -1;
    } else if (!strcasecmp(type, "application/octet-stream")) {
        /* "*": the pixel bytes as uploaded; any other syntax: uncompressed
         * little-endian pixels (compressed sources then fail per instance) */
        f = ts && !strcmp(ts, "*") ? HC_FMT_RAW_ASIS : HC_FMT_RAW_LE;
    } else if (!strcasecmp(type, "image/jpeg")) {
        f = HC_FMT_JPEG;
        if (ts && strcmp(ts, "1.2.840.10008.1.2.4.50") != 0)
            rc = -1;
    } else if (!strcasecmp(type, "image/png")) {
        f = HC_FMT_PNG;
        if (ts)
            rc = -1;
    } else {
        rc = -1;
    }
    free(copy);
    if (rc < 0)
        return -1;
ok:
    if (fmt)
        *fmt = f;
    return 0;
}

static const char *fmt_ext(enum hc_export_fmt f)
{
    switch (f) {
    case HC_FMT_PNG:
        return ".png";
    case HC_FMT_JPEG:
        return ".jpg";
    case HC_FMT_RAW_ASIS:
    case HC_FMT_RAW_LE:
        return "";
    default:
        return ".dcm";
    }
}

static const char *fmt_type(enum hc_export_fmt f)
{
    switch (f) {
    case HC_FMT_PNG:
        return "image/png";
    case HC_FMT_JPEG:
        return "image/jpeg";
    case HC_FMT_RAW_ASIS:
    case HC_FMT_RAW_LE:
        return "application/octet-stream";
    default:
        return "application/dicom";
    }
}

typedef struct filter_set {
    filter_path *v;
    size_t n, cap;
} filter_set;

static int add_path(void *ctx, const filter_path *p)
{
    filter_set *fs = ctx;
    filter_path *nv = util_grow(fs->v, fs->n, &fs->cap, sizeof *nv, 16);
    if (!nv)
        return CERR_NOMEM;
    fs->v = nv;
    fs->v[fs->n++] = *p;
    return 0;
}

/* Splits gs://bucket[/prefix]; the object prefix gets a trailing '/'. */
static int split_prefix(const char *uri, char **bucket, char **prefix)
{
    if (strncmp(uri, "gs://", 5) != 0)
        return -1;
    const char *b = uri + 5, *slash = strchr(b, '/');
    size_t bl = slash ? (size_t)(slash - b) : strlen(b);
    if (bl == 0)
        return -1;
    *bucket = strndup(b, bl);
    const char *obj = slash ? slash + 1 : "";
    size_t ol = strlen(obj);
    if (ol == 0)
        *prefix = strdup("");
    else if (asprintf(prefix, "%s%s", obj, obj[ol - 1] == '/' ? "" : "/") < 0)
        *prefix = NULL;
    return *bucket && *prefix ? 0 : -1;
}

static int write_obj(hc_job *job, const char *bucket, const char *name, const hc_buf *data,
                     enum hc_export_fmt fmt)
{
    int rc = emu_gcs_write(job->ctx, bucket, name, data->p ? (const void *)data->p : "", data->len,
                           fmt_type(fmt));
    if (rc < 0)
        hc_op_log(job->op, name, 13, "cannot write gs://%s/%s: %s", bucket, name, strerror(-rc));
    return rc;
}

/* Exports one instance; returns 0 or -1 (logged). */
static int export_one(hc_job *job, const hc_inst_ref *in, enum hc_export_fmt fmt,
                      const char *bucket, const char *prefix)
{
    char res[300], why[512] = "";
    snprintf(res, sizeof res, "%s/dicomWeb/studies/%s/series/%s/instances/%s", job->target,
             in->study, in->series, in->sop);
    uint8_t *data;
    size_t len;
    int rc = hc_read_file(in->path, &data, &len);
    if (rc < 0) {
        hc_op_log(job->op, res, 5, "cannot read the stored instance: %s", strerror(-rc));
        return -1;
    }
    char *base;
    if (asprintf(&base, "%s%s/%s/%s", prefix, in->study, in->series, in->sop) < 0) {
        free(data);
        return -1;
    }
    hc_buf out = {0};
    dj_file f;
    bool parsed = false;
    rc = -1;
    if (fmt == HC_FMT_DICOM_ASIS) {
        hc_buf_put(&out, data, len);
        rc = 0;
    } else if (fmt == HC_FMT_DICOM_ELE) {
        rc = conv_to_explicit_le(data, len, &out, why, sizeof why);
    } else if (fmt == HC_FMT_DICOM_OTHER) {
        snprintf(why, sizeof why,
                 "the emulator does not transcode to compressed transfer "
                 "syntaxes");
    } else if (dj_parse_file(data, len, &f, why, sizeof why) == 0) {
        parsed = true;
        rc = 0;
    }
    if (rc == 0 && !parsed) {
        char *name;
        rc = asprintf(&name, "%s%s", base, fmt_ext(fmt)) < 0 ? -1 : 0;
        if (rc == 0) {
            rc = write_obj(job, bucket, name, &out, fmt) < 0 ? -2 : 0;
            free(name);
        }
    } else if (rc == 0) {
        int frames = conv_num_frames(&f);
        bool asis = fmt == HC_FMT_RAW_ASIS;
        if (asis && f.compressed)
            frames = 1; /* compressed fragments are written as one object */
        for (int fr = 0; rc == 0 && fr < frames; fr++) {
            out.len = 0;
            if (fmt == HC_FMT_PNG || fmt == HC_FMT_JPEG)
                rc = conv_render(&f, fr, fmt == HC_FMT_JPEG, &out, why, sizeof why);
            else
                rc = conv_pixel_data(&f, frames > 1 ? fr : -1, asis, &out, why, sizeof why);
            if (rc < 0)
                break;
            char *name;
            int nrc = frames > 1 ? asprintf(&name, "%s/%d%s", base, fr + 1, fmt_ext(fmt))
                                 : asprintf(&name, "%s%s", base, fmt_ext(fmt));
            if (nrc < 0) {
                rc = -1;
                break;
            }
            rc = write_obj(job, bucket, name, &out, fmt) < 0 ? -2 : 0;
            free(name);
        }
        dj_file_free(&f);
    }
    if (rc == -1)
        hc_op_log(job->op, res, 3, "cannot export %s as %s: %s", in->sop, fmt_type(fmt), why);
    free(out.p);
    free(base);
    free(data);
    return rc < 0 ? -1 : 0;
}

static bool selected(const filter_set *fs, const hc_inst_ref *in)
{
    for (size_t i = 0; i < fs->n; i++)
        if (filter_path_matches(&fs->v[i], in->study, in->series, in->sop))
            return true;
    return false;
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

void hc_export_run(hc_job *job)
{
    const cJSON *gd = cJSON_GetObjectItemCaseSensitive(job->request, "gcsDestination");
    const char *uri = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(gd, "uriPrefix"));
    const char *mime = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(gd, "mimeType"));
    const char *furi = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(job->request, "filterConfig"), "resourcePathsGcsUri"));
    enum hc_export_fmt fmt;
    char *bucket = NULL, *prefix = NULL;
    filter_set fs = {0};
    hc_inst_ref *refs = NULL;
    size_t n = 0;
    if (!uri || split_prefix(uri, &bucket, &prefix) < 0 || hc_export_parse_mime(mime, &fmt) < 0) {
        hc_op_fail(job->op, 3, "invalid export request");
        goto out;
    }
    if (!emu_gcs_bucket_exists(job->ctx, bucket)) {
        hc_op_fail(job->op, 5, "destination bucket %s does not exist", bucket);
        goto out;
    }
    if (!emu_agent_can_write(job->ctx, bucket)) {
        hc_op_fail_agent(job->op, job->target, bucket, true);
        goto out;
    }
    if (furi) {
        char *fb = NULL, *fp = NULL, *data = NULL;
        size_t len = 0;
        int rc = -1;
        if (strncmp(furi, "gs://", 5) == 0 && strchr(furi + 5, '/')) {
            fb = strndup(furi + 5, (size_t)(strchr(furi + 5, '/') - (furi + 5)));
            fp = strdup(strchr(furi + 5, '/') + 1);
            if (fb && !emu_agent_can_read(job->ctx, fb)) {
                /* The agent reads the filter file too. */
                hc_op_fail_agent(job->op, job->target, fb, false);
                free(fb);
                free(fp);
                goto out;
            }
            rc = fb && fp ? emu_gcs_read(job->ctx, fb, fp, &data, &len) : -ENOMEM;
        }
        free(fb);
        free(fp);
        if (rc < 0) {
            hc_op_fail(job->op, 5, "cannot read the filter file %s: %s", furi,
                       rc == -ENOENT ? "object not found" : strerror(-rc));
            goto out;
        }
        filter_error fe;
        memset(&fe, 0, sizeof fe);
        rc = filter_parse(data, len, add_path, &fs, NULL, &fe);
        free(data);
        if (rc != CERR_OK) {
            hc_op_fail(job->op, 3, "invalid filter file %s: line %zu, column %zu: %s", furi,
                       fe.line, fe.column, fe.message);
            goto out;
        }
    }
    if (hc_store_snapshot(job->state, job->target, &refs, &n) < 0) {
        hc_op_fail(job->op, 5, "DICOM store %s no longer exists", job->target);
        goto out;
    }
    size_t total = 0;
    uint64_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        if (!furi || selected(&fs, &refs[i])) {
            total++;
            bytes += file_size(refs[i].path);
        }
    hc_op_set_work(job->op, (long)total, bytes);
    for (size_t i = 0; i < n; i++) {
        if (furi && !selected(&fs, &refs[i]))
            continue;
        hc_op_pace(job->op, file_size(refs[i].path));
        if (hc_op_cancelled(job->op))
            goto out;
        hc_op_count(job->op, export_one(job, &refs[i], fmt, bucket, prefix) == 0);
    }
    long failures = hc_op_failures(job->op);
    if (failures > 0)
        hc_op_fail(job->op, 3,
                   "%ld of %zu instances failed to export; see the logs at logsUrl for details",
                   failures, total);
out:
    hc_refs_free(refs, n);
    free(fs.v);
    free(bucket);
    free(prefix);
}
