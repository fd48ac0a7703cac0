/* tree: path classification of the mounted tree (see tree.h). */
#include "tree.h"

#include <errno.h>
#include <string.h>

const tree_format tree_formats[] = {
    {"dicom", "application/dicom; transfer-syntax=*", ".dcm", "DICOM as stored"},
    {"dicom-explicit-le", "application/dicom; transfer-syntax=1.2.840.10008.1.2.1", ".dcm",
     "DICOM, explicit VR little endian"},
    {"raw", "application/octet-stream; transfer-syntax=*", "", "raw pixel data"},
    {"png", "image/png", ".png", "PNG images"},
    {"jpeg", "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50", ".jpg", "JPEG images"},
};
const size_t tree_n_formats = sizeof tree_formats / sizeof tree_formats[0];
const tree_format tree_format_top = {"as-stored", "application/dicom; transfer-syntax=*", ".dcm",
                                     "DICOM as stored (a filter straight in export/)"};

const tree_format *tree_format_find(const char *dir, size_t len)
{
    for (size_t i = 0; i < tree_n_formats; i++)
        if (strlen(tree_formats[i].dir) == len && memcmp(tree_formats[i].dir, dir, len) == 0)
            return &tree_formats[i];
    return NULL;
}

static const char *const dataset_fixed[] = {"operations"};

bool tree_reserved_in_dataset(const char *name)
{
    for (size_t i = 0; i < sizeof dataset_fixed / sizeof dataset_fixed[0]; i++)
        if (strcmp(name, dataset_fixed[i]) == 0)
            return true;
    return false;
}

static int check_component(const char *s, size_t len)
{
    if (len == 0)
        return -EINVAL;
    if (len > TREE_NAME_MAX)
        return -ENAMETOOLONG;
    if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.'))
        return -EINVAL;
    return 0;
}

int tree_check_name(const char *name)
{
    if (!name)
        return -EINVAL;
    size_t len = strnlen(name, TREE_NAME_MAX + 2);
    if (memchr(name, '/', len))
        return -EINVAL;
    return check_component(name, len);
}

static void copy_comp(char *dst, const char *s, size_t len)
{
    memcpy(dst, s, len);
    dst[len] = '\0';
}

static bool comp_is(const char *s, size_t len, const char *lit)
{
    return strlen(lit) == len && memcmp(s, lit, len) == 0;
}

static bool ends_with(const char *s, size_t len, const char *suffix)
{
    size_t n = strlen(suffix);
    return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

/* NAME, NAME.out[/rest] or NAME.runs[/rest] in a format folder (or export/). */
static void parse_filter(const char *const *c, const size_t *cl, int n, const char *const *tail,
                         tree_path *out)
{
    bool is_out = ends_with(c[0], cl[0], ".out") && cl[0] > 4;
    bool is_runs = ends_with(c[0], cl[0], ".runs") && cl[0] > 5;
    if (is_out || is_runs) {
        out->kind = TREE_EXPORT_OUT;
        out->runs = is_runs;
        copy_comp(out->name, c[0], cl[0] - (is_runs ? 5 : 4));
        out->rest = n > 1 ? tail[1] : "";
        return;
    }
    if (n > 1) {
        out->kind = TREE_NONE;
        return;
    }
    out->kind = TREE_EXPORT_FILTER;
    copy_comp(out->name, c[0], cl[0]);
}

/* Below export/: FMT[/NAME[.out|.runs[/rest]]] or NAME[.out|.runs[/rest]]. */
static void parse_export(const char *const *c, const size_t *cl, int n, const char *const *tail,
                         tree_path *out)
{
    if (n == 0) {
        out->kind = TREE_EXPORT;
        return;
    }
    out->format = tree_format_find(c[0], cl[0]);
    if (!out->format) {
        out->format = &tree_format_top;
        parse_filter(c, cl, n, tail, out);
        return;
    }
    if (n == 1) {
        out->kind = TREE_EXPORT_FMT;
        return;
    }
    parse_filter(c + 1, cl + 1, n - 1, tail + 1, out);
}

/* Below a store: c[0] is the first component inside it. */
static void parse_store(const char *const *c, const size_t *cl, int n, const char *const *tail,
                        tree_path *out)
{
    if (n == 0) {
        out->kind = TREE_STORE;
        return;
    }
    if (comp_is(c[0], cl[0], "import")) {
        out->kind = TREE_IMPORT;
        out->rest = n > 1 ? tail[1] : "";
    } else if (comp_is(c[0], cl[0], "studies")) {
        out->kind = TREE_STUDIES;
        out->rest = n > 1 ? tail[1] : "";
    } else if (comp_is(c[0], cl[0], "status") || comp_is(c[0], cl[0], "status.json")) {
        out->kind = n == 1 ? TREE_STATUS : TREE_NONE;
        copy_comp(out->name, c[0], cl[0]); /* "status" or "status.json" */
    } else if (comp_is(c[0], cl[0], "operations")) {
        out->kind = n == 1 ? TREE_STORE_OPS : n == 2 ? TREE_STORE_OP : TREE_NONE;
        if (n == 2)
            copy_comp(out->name, c[1], cl[1]);
    } else if (comp_is(c[0], cl[0], "export")) {
        parse_export(c + 1, cl + 1, n - 1, tail + 1, out);
    } else {
        out->kind = TREE_NONE;
    }
}

/* Below a dataset: c[0] is the first component inside it. */
static void parse_dataset(const char *const *c, const size_t *cl, int n, const char *const *tail,
                          tree_path *out)
{
    if (n == 0) {
        out->kind = TREE_DATASET;
        return;
    }
    if (comp_is(c[0], cl[0], "operations")) {
        out->kind = n == 1 ? TREE_DS_OPS : n == 2 ? TREE_DS_OP : TREE_NONE;
        if (n == 2)
            copy_comp(out->name, c[1], cl[1]);
        return;
    }
    copy_comp(out->store, c[0], cl[0]);
    parse_store(c + 1, cl + 1, n - 1, tail + 1, out);
}

/* Components we ever need to look at; anything deeper is a "rest" path
 * handed on whole (import/, studies/, NAME.out/). */
#define MAX_COMPS 8

/* Dataset, store and operation ids end up in URL paths: characters that
 * would change the URL (query, fragment, escapes, spaces, controls) can
 * be in no real id, so such a name is invalid (EINVAL, as for mkdir). */
static bool url_safe_id(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || *s == 0x7f || strchr("?#%\\\"<>^`{|}", *s))
            return false;
    return true;
}

static int check_ids(const tree_path *out)
{
    bool op = out->kind == TREE_DS_OP || out->kind == TREE_STORE_OP;
    if (!url_safe_id(out->dataset) || !url_safe_id(out->store) || (op && !url_safe_id(out->name)))
        return -EINVAL;
    return 0;
}

int tree_parse(const char *path, const char *fixed_dataset, tree_path *out)
{
    memset(out, 0, sizeof *out);
    out->rest = "";
    out->kind = TREE_NONE;
    if (!path || path[0] != '/')
        return -EINVAL;
    const char *c[MAX_COMPS];
    const char *tail[MAX_COMPS];
    size_t cl[MAX_COMPS];
    int n = 0;
    const char *p = path + 1;
    /* Validate every component, even those in a rest path. */
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        int rc = check_component(p, len);
        if (rc)
            return rc;
        if (n < MAX_COMPS) {
            c[n] = p;
            tail[n] = p;
            cl[n] = len;
            n++;
        }
        if (!slash)
            break;
        p = slash + 1;
    }
    if (fixed_dataset) {
        size_t dl = strlen(fixed_dataset);
        if (dl > TREE_NAME_MAX)
            return -ENAMETOOLONG;
        copy_comp(out->dataset, fixed_dataset, dl);
        parse_dataset(c, cl, n, tail, out);
        return check_ids(out);
    }
    if (n == 0) {
        out->kind = TREE_ROOT;
        return 0;
    }
    copy_comp(out->dataset, c[0], cl[0]);
    parse_dataset(c + 1, cl + 1, n - 1, tail + 1, out);
    return check_ids(out);
}

int tree_op_file_name(const char *op_name, char *buf, size_t buflen)
{
    const char *slash = strrchr(op_name, '/');
    const char *id = slash ? slash + 1 : op_name;
    size_t n = strlen(id);
    if (n == 0 || n + 5 >= buflen || n + 5 > TREE_NAME_MAX)
        return -ENAMETOOLONG;
    memcpy(buf, id, n);
    memcpy(buf + n, ".json", 6);
    return 0;
}

int tree_op_id_from_file(const char *file, char *buf, size_t buflen)
{
    size_t n = strlen(file);
    if (n <= 5 || strcmp(file + n - 5, ".json") != 0)
        return -ENOENT;
    if (n - 5 >= buflen)
        return -ENAMETOOLONG;
    memcpy(buf, file, n - 5);
    buf[n - 5] = '\0';
    return 0;
}
