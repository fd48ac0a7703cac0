/* export: STORE/export/FMT/NAME filter files and NAME.out/ (see export.h).
 *
 * flush validates, release starts. FUSE sends FLUSH at EVERY close(), also
 * of a dup'ed descriptor: `echo /studies/UID > export/dicom/one` in a shell
 * does open(O_CREAT|O_TRUNC), dup2 to fd 1, close(original) -> FLUSH of an
 * empty filter (which would mean "the whole store"), then the write, then
 * close(1) -> FLUSH again; RELEASE comes once, after the last close. So:
 * - flush() only validates the filter when it changed since the last
 *   validation: a bad line fails that close() with EINVAL and logs, once per
 *   content, "DS/STORE/export/FMT/NAME: line L, column C: MESSAGE"; a valid
 *   filter is saved in the local record (so a read right after close() sees
 *   it). Nothing remote is ever started by a flush.
 * - release() (the last close of the descriptor) starts the export, only if
 *   this descriptor changed the filter, the final content is valid, and it
 *   differs from the content last started for that name (the record's
 *   "started" leaf) or nothing was started yet. Rewriting the same filter
 *   therefore starts nothing new. A new filter with bad content (its close()
 *   failed) is forgotten again. A start that fails (after the client's
 *   retries) is recorded in the "error" leaf of the record, logged at error
 *   level and the filter kept: close() already returned 0, so NAME.out/ERROR
 *   and STORE/status are how the user learns of it. The next start of that
 *   name, or its removal, clears it.
 * close() returns before the release is handled, so the operation (and
 * NAME.out/) appear a moment after close() returns.
 */
#include "export.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "errmap.h"
#include "filter.h"
#include "journal.h"
#include "log.h"
#include "util.h"

struct export_file {
    tree_path tp;
    char *buf;
    size_t len, cap;
    bool dirty;     /* written, truncated or created since the last validation */
    bool valid;     /* result of the last validation */
    size_t n_paths; /* paths in the filter when valid */
    bool changed;   /* written, truncated or created through this descriptor */
    bool created;   /* new filter: forgotten again if it never started */
    bool started;
    bool failed; /* the start failed and was recorded (NAME.out/ERROR) */
    char *why;   /* why the last validation refused the content */
};

/* ---- the local record: cache_dir/exports/DS/STORE/FMT/NAME/{filter,started,op,done,error} */

static char *record_dir(fs_ctx *x, const tree_path *tp)
{
    return util_asprintf("%s/exports/%s/%s/%s/%s", x->opt->cache_dir, tp->dataset, tp->store,
                         tp->format->dir, tp->name);
}

static char *fmt_dir(fs_ctx *x, const tree_path *tp)
{
    return util_asprintf("%s/exports/%s/%s/%s", x->opt->cache_dir, tp->dataset, tp->store,
                         tp->format->dir);
}

static char *record_file(fs_ctx *x, const tree_path *tp, const char *leaf)
{
    char *d = record_dir(x, tp);
    char *f = d ? util_asprintf("%s/%s", d, leaf) : NULL;
    free(d);
    return f;
}

/* Reads a whole small file; -ENOENT when absent. */
static int read_file(const char *path, char **data, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < 0 || (uint64_t)st.st_size > EXPORT_MAX_FILTER) {
        close(fd);
        return -EIO;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = pread(fd, buf + got, (size_t)st.st_size - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    buf[got] = '\0';
    *data = buf;
    *len = got;
    return 0;
}

static char *read_line_file(fs_ctx *x, const tree_path *tp, const char *leaf)
{
    char *path = record_file(x, tp, leaf);
    char *data = NULL;
    size_t len = 0;
    if (!path || read_file(path, &data, &len) != 0) {
        free(path);
        return NULL;
    }
    free(path);
    while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r'))
        data[--len] = '\0';
    return data;
}

/* The record's directory holds its leaves only, plus any temporary file of
 * util_write_durable that a crash left ("op.tmp.XXXXXX"): all go. */
static void remove_record(fs_ctx *x, const tree_path *tp)
{
    char *d = record_dir(x, tp);
    DIR *dir = d ? opendir(d) : NULL;
    struct dirent *de;
    while (dir && (de = readdir(dir)))
        if (de->d_name[0] != '.')
            unlinkat(dirfd(dir), de->d_name, 0);
    if (dir)
        closedir(dir);
    if (d)
        rmdir(d);
    free(d);
}

/* 0 and the error leaf's stat when the last start of tp failed. */
static int failure_stat(fs_ctx *x, const tree_path *tp, struct stat *lst)
{
    char *pe = record_file(x, tp, "error");
    if (!pe)
        return -ENOMEM;
    int rc = stat(pe, lst) == 0 ? 0 : -ENOENT;
    free(pe);
    return rc;
}

/* gs://EXPORT/PREFIX/DS/STORE/FMT/NAME[/RUN]: the object prefix (no '/' at
 * the end) of one run of NAME; run NULL: NAME's own prefix (where records
 * made before runs existed exported to). */
static char *dest_prefix(fs_ctx *x, const tree_path *tp, const char *run)
{
    const char *p = x->opt->export_prefix;
    return util_asprintf("%s%s%s/%s/%s/%s%s%s", p, *p ? "/" : "", tp->dataset, tp->store,
                         tp->format->dir, tp->name, run ? "/" : "", run ? run : "");
}

/* A new run id: the start time, UTC to the millisecond ("20261206T210405.123Z"),
 * so runs sort by age; bumped by a millisecond past the last one. */
static void new_run_id(const char *last, char *buf, size_t len)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    for (int i = 0; i < 1000; i++) {
        util_utc_basic(buf, len, ts.tv_sec, ts.tv_nsec, 3);
        if (!last || strcmp(buf, last) > 0)
            return;
        ts.tv_nsec += 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
    }
}

/* Listing keys (fs_cache_key): export/FMT/NAME.out, export/FMT/NAME.runs/RUN
 * (FMT being tree_format_top's "as-stored" for a filter straight in export/). */
static char *out_key(const tree_path *tp)
{
    char *what = util_asprintf("export/%s/%s.out", tp->format->dir, tp->name);
    char *key = what ? fs_cache_key(tp->dataset, tp->store, what) : NULL;
    free(what);
    return key;
}

static char *run_key(const tree_path *tp, const char *run)
{
    char *what = util_asprintf("export/%s/%s.runs/%s", tp->format->dir, tp->name, run);
    char *key = what ? fs_cache_key(tp->dataset, tp->store, what) : NULL;
    free(what);
    return key;
}

/* ---- export/FMT/ */

int export_readdir_fmt(fs_ctx *x, const tree_path *tp, export_fill_fn fill, void *buf)
{
    char *d = fmt_dir(x, tp);
    if (!d)
        return -ENOMEM;
    DIR *dir = opendir(d);
    free(d);
    if (!dir)
        return 0; /* nothing recorded yet */
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (de->d_name[0] == '.' && (!de->d_name[1] || (de->d_name[1] == '.' && !de->d_name[2])))
            continue;
        tree_path t = *tp;
        snprintf(t.name, sizeof t.name, "%s", de->d_name);
        struct stat st;
        if (export_getattr_filter(x, &t, &st) != 0)
            continue;
        if (fill(buf, de->d_name, &st))
            break;
        char *op = read_line_file(x, &t, "op");
        struct stat lst;
        bool failed = failure_stat(x, &t, &lst) == 0;
        if ((op || failed) && strlen(de->d_name) + 4 <= TREE_NAME_MAX) {
            char out[TREE_NAME_MAX + 1];
            snprintf(out, sizeof out, "%s.out", de->d_name);
            fs_stat_dir(x, &st, 0555);
            if (fill(buf, out, &st)) {
                free(op);
                break;
            }
        }
        free(op);
        char *run = read_line_file(x, &t, "run");
        bool stop = false;
        if (run && strlen(de->d_name) + 5 <= TREE_NAME_MAX) {
            char runs[TREE_NAME_MAX + 1];
            snprintf(runs, sizeof runs, "%s.runs", de->d_name);
            fs_stat_dir(x, &st, 0555);
            stop = fill(buf, runs, &st) != 0;
        }
        free(run);
        if (stop)
            break;
    }
    closedir(dir);
    return 0;
}

int export_getattr_filter(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    char *f = record_file(x, tp, "filter");
    if (!f)
        return -ENOMEM;
    struct stat lst;
    int rc = stat(f, &lst);
    free(f);
    if (rc != 0)
        return -ENOENT;
    fs_stat_file(x, st, 0644, lst.st_size);
    st->st_mtim = lst.st_mtim;
    st->st_ctim = lst.st_ctim;
    return 0;
}

int export_open_filter(fs_ctx *x, const tree_path *tp, int flags, bool create, export_file **out)
{
    export_file *f = calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    f->tp = *tp;
    f->tp.rest = "";
    char *path = record_file(x, tp, "filter");
    if (!path) {
        free(f);
        return -ENOMEM;
    }
    int rc = 0;
    if (create) {
        char *d = record_dir(x, tp);
        rc = d ? util_mkdirs(d, 0700) : -ENOMEM;
        free(d);
        struct stat st;
        bool existed = rc == 0 && stat(path, &st) == 0;
        if (rc == 0 && !existed) {
            rc = util_write_durable(path, "", 0, 0600);
            f->created = true;
        }
        f->dirty = f->changed = true;
        if (existed && !(flags & O_TRUNC))
            rc = read_file(path, &f->buf, &f->len);
    } else if (flags & O_TRUNC) {
        struct stat st;
        rc = stat(path, &st) == 0 ? 0 : -ENOENT;
        f->dirty = f->changed = true;
    } else {
        /* Saved by a valid flush or start; a later truncate(2) by name may
         * have cut it, which the next write and close() checks. */
        f->valid = true;
        rc = read_file(path, &f->buf, &f->len);
    }
    free(path);
    if (rc) {
        if (rc != -ENOENT)
            log_error("%s/%s/export/%s/%s: cannot open the local record: %s", tp->dataset,
                      tp->store, tp->format->dir, tp->name, strerror(-rc));
        free(f->buf);
        free(f);
        return rc;
    }
    f->cap = f->len;
    *out = f;
    return 0;
}

static int reserve(export_file *f, size_t need)
{
    if (need > EXPORT_MAX_FILTER)
        return -EFBIG;
    if (need <= f->cap)
        return 0;
    size_t cap = f->cap ? f->cap : 4096;
    while (cap < need)
        cap *= 2;
    if (cap > EXPORT_MAX_FILTER)
        cap = EXPORT_MAX_FILTER;
    char *b = realloc(f->buf, cap + 1);
    if (!b)
        return -ENOMEM;
    f->buf = b;
    f->cap = cap;
    return 0;
}

int export_write(export_file *f, const char *buf, size_t size, off_t off)
{
    if (off < 0)
        return -EINVAL;
    if ((uint64_t)off + size > EXPORT_MAX_FILTER) {
        log_error("%s/%s/export/%s/%s: a filter is limited to %u bytes", f->tp.dataset, f->tp.store,
                  f->tp.format->dir, f->tp.name, EXPORT_MAX_FILTER);
        return -EFBIG;
    }
    size_t end = (size_t)off + size;
    int rc = reserve(f, end);
    if (rc)
        return rc;
    if ((size_t)off > f->len)
        memset(f->buf + f->len, 0, (size_t)off - f->len);
    memcpy(f->buf + off, buf, size);
    if (end > f->len)
        f->len = end;
    f->dirty = f->changed = true;
    return (int)size;
}

int export_read(export_file *f, char *buf, size_t size, off_t off)
{
    if (off < 0)
        return -EINVAL;
    if ((size_t)off >= f->len)
        return 0;
    size_t n = f->len - (size_t)off;
    if (n > size)
        n = size;
    memcpy(buf, f->buf + off, n);
    return (int)n;
}

int export_truncate_open(export_file *f, off_t size)
{
    if (size < 0)
        return -EINVAL;
    int rc = reserve(f, (size_t)size);
    if (rc)
        return rc;
    if ((size_t)size > f->len)
        memset(f->buf + f->len, 0, (size_t)size - f->len);
    f->len = (size_t)size;
    f->dirty = f->changed = true;
    return 0;
}

int export_truncate_path(fs_ctx *x, const tree_path *tp, off_t size)
{
    /* Only shortening the local copy: the export it started stays as it was;
     * a new export starts when the file is next written and closed. */
    char *path = record_file(x, tp, "filter");
    if (!path)
        return -ENOMEM;
    int rc = truncate(path, size) == 0 ? 0 : -errno;
    free(path);
    return rc;
}

/* ---- starting the export */

/* "MESSAGE (HTTP 404 NOT_FOUND)", or libcurl's message for a transport error. */
static char *describe(const cerr_detail *e)
{
    const char *msg = e->message[0] ? e->message : "unknown error";
    if (!e->http_status)
        return strdup(msg);
    return util_asprintf("%s (HTTP %ld%s%s)", msg, e->http_status, e->status[0] ? " " : "",
                         e->status);
}

/* Uploads the filter (when it selects paths) and starts the export. On
 * failure *why says which step failed and the server's answer. */
static int start_export(fs_ctx *x, export_file *f, const char *run, char **op_out, char **why)
{
    const tree_path *tp = &f->tp;
    size_t n_paths = f->n_paths;
    char *store = fs_store_name(x, tp->dataset, tp->store);
    char *prefix = dest_prefix(x, tp, run);
    char *dest = prefix ? util_asprintf("gs://%s/%s", x->opt->export_bucket, prefix) : NULL;
    char *filter_obj = NULL, *filter_uri = NULL, *desc = NULL;
    int rc = 0;
    cerr_detail err = {0};
    if (!store || !dest) {
        rc = -ENOMEM;
        goto out;
    }
    if (n_paths > 0) {
        const char *sp = x->opt->staging_prefix;
        filter_obj =
            util_asprintf("%s%sfilters/%s/%s/%s/%s-%lld.txt", sp, *sp ? "/" : "", tp->dataset,
                          tp->store, tp->format->dir, tp->name, (long long)time(NULL));
        filter_uri =
            filter_obj ? util_asprintf("gs://%s/%s", x->opt->staging_bucket, filter_obj) : NULL;
        if (!filter_uri) {
            rc = -ENOMEM;
            goto out;
        }
        int g = gcs_upload_buf(x->cl.gcs, x->opt->staging_bucket, filter_obj, f->buf, f->len,
                               "text/plain", NULL, &err);
        if (g != CERR_OK) {
            rc = errmap_errno(g);
            desc = describe(&err);
            *why = desc ? util_asprintf("uploading the filter to %s failed: %s", filter_uri, desc)
                        : NULL;
            goto out;
        }
    }
    int h = hc_export(x->cl.hc, store, dest, tp->format->mime_type, filter_uri, op_out, &err);
    if (h != CERR_OK) {
        rc = errmap_errno(h);
        desc = describe(&err);
        *why = desc ? util_asprintf("starting the export of %s to %s failed: %s", store, dest, desc)
                    : NULL;
        goto out;
    }
    log_info("%s/%s/export/%s/%s: started %s (%s, %zu filter paths) to %s", tp->dataset, tp->store,
             tp->format->dir, tp->name, *op_out, tp->format->mime_type, n_paths, dest);
out:
    free(store);
    free(prefix);
    free(dest);
    free(filter_obj);
    free(filter_uri);
    free(desc);
    return rc;
}

/* ---- a start that failed: the record's "error" leaf, read as NAME.out/ERROR */

/* "FMT" and "/" in export/FMT/NAME; both "" for a filter straight in export/. */
static const char *fmt_part(const tree_format *fmt)
{
    return fmt == &tree_format_top ? "" : fmt->dir;
}

static const char *fmt_sep(const tree_format *fmt)
{
    return fmt == &tree_format_top ? "" : "/";
}

#define ERROR_ENTRY "ERROR"

/* s on one line: '\n', '\r' and '\\' escaped as in STORE/status. */
static char *one_line(const char *s)
{
    size_t n = 0;
    for (const char *p = s; *p; p++)
        n += (*p == '\n' || *p == '\r' || *p == '\\') ? 2 : 1;
    char *out = malloc(n + 1), *o = out;
    if (!out)
        return NULL;
    for (const char *p = s; *p; p++) {
        if (*p == '\n' || *p == '\r' || *p == '\\') {
            *o++ = '\\';
            *o++ = *p == '\n' ? 'n' : *p == '\r' ? 'r' : '\\';
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

static void clear_failure(fs_ctx *x, const tree_path *tp)
{
    char *pe = record_file(x, tp, "error");
    if (pe && unlink(pe) == 0) {
        char *key = out_key(tp);
        if (key)
            dircache_invalidate(x->cache, key);
        free(key);
    }
    free(pe);
}

/* Keeps the filter listed with the reason its export did not start, until
 * the filter is removed or a later start succeeds. */
#define REFUSED_NOTE "The filter was refused: nothing started."

/* refused: the content itself was bad (its close() failed with EINVAL);
 * else the start failed. Either way NAME.out/ERROR and a status line. */
static int save_failure(fs_ctx *x, export_file *f, const char *why, bool refused)
{
    const tree_path *tp = &f->tp;
    char ts[32];
    util_rfc3339(ts, sizeof ts, time(NULL), 0, 0);
    char *name = one_line(tp->name);
    char *reason = one_line(why);
    char *text = name && reason
                     ? util_asprintf("time: %s\nfilter: export/%s%s%s\nreason: %s\n%s"
                                     " Write the filter again to retry; remove it to clear "
                                     "this.\n",
                                     ts, fmt_part(tp->format), fmt_sep(tp->format), name, reason,
                                     refused ? REFUSED_NOTE : "The export did not start.")
                     : NULL;
    char *d = record_dir(x, tp);
    char *pf = record_file(x, tp, "filter");
    char *pe = record_file(x, tp, "error");
    int rc = text && d && pf && pe ? util_mkdirs(d, 0700) : -ENOMEM;
    if (rc == 0)
        rc = util_write_durable(pf, f->buf ? f->buf : "", f->len, 0600);
    if (rc == 0)
        rc = util_write_durable(pe, text, strlen(text), 0600);
    char *key = out_key(tp);
    if (key)
        dircache_invalidate(x->cache, key);
    free(key);
    free(name);
    free(reason);
    free(text);
    free(d);
    free(pf);
    free(pe);
    return rc;
}

/* Prints "failed: export/FMT/NAME: REASON" (a start that failed) or
 * "rejected: export/FMT/NAME: REASON" (refused content) for one record. */
static void status_line(FILE *out, const char *dir, const tree_format *fmt, const char *name)
{
    char *pe = util_asprintf("%s/%s/error", dir, name);
    char *text = NULL;
    size_t len = 0;
    if (pe && read_file(pe, &text, &len) == 0) {
        const char *r = strstr(text, "\nreason: ");
        char *esc = one_line(name);
        if (r && esc) {
            r += strlen("\nreason: ");
            fprintf(out, "%s: export/%s%s%s: %.*s\n",
                    strstr(text, REFUSED_NOTE) ? "rejected" : "failed", fmt_part(fmt), fmt_sep(fmt),
                    esc, (int)strcspn(r, "\n"), r);
        }
        free(esc);
    }
    free(text);
    free(pe);
}

void export_status_failures(const char *cache_dir, const char *dataset, const char *store,
                            FILE *out)
{
    for (size_t i = 0; i <= tree_n_formats; i++) {
        const tree_format *fmt = i < tree_n_formats ? &tree_formats[i] : &tree_format_top;
        char *d = util_asprintf("%s/exports/%s/%s/%s", cache_dir, dataset, store, fmt->dir);
        DIR *dir = d ? opendir(d) : NULL;
        struct dirent *de;
        while (dir && (de = readdir(dir)))
            if (de->d_name[0] != '.')
                status_line(out, d, fmt, de->d_name);
        if (dir)
            closedir(dir);
        free(d);
    }
}

/* Appends run to the record's "runs" leaf (every run of NAME, oldest first). */
static int add_run(fs_ctx *x, const tree_path *tp, const char *run)
{
    char *pr = record_file(x, tp, "runs");
    char *data = NULL;
    size_t len = 0;
    int rc = pr ? 0 : -ENOMEM;
    if (rc == 0 && read_file(pr, &data, &len) != 0)
        data = NULL, len = 0;
    char *all = rc == 0 ? util_asprintf("%s%s\n", data ? data : "", run) : NULL;
    if (rc == 0)
        rc = all ? util_write_durable(pr, all, strlen(all), 0600) : -ENOMEM;
    free(all);
    free(data);
    free(pr);
    return rc;
}

static int save_record(fs_ctx *x, export_file *f, const char *op, const char *run)
{
    char *d = record_dir(x, &f->tp);
    int rc = d ? util_mkdirs(d, 0700) : -ENOMEM;
    free(d);
    char *pf = record_file(x, &f->tp, "filter");
    char *ps = record_file(x, &f->tp, "started");
    char *po = record_file(x, &f->tp, "op");
    char *pd = record_file(x, &f->tp, "done");
    if (!pf || !ps || !po || !pd)
        rc = -ENOMEM;
    if (rc == 0)
        rc = util_write_durable(pf, f->buf ? f->buf : "", f->len, 0600);
    if (rc == 0)
        rc = util_write_durable(ps, f->buf ? f->buf : "", f->len, 0600);
    if (rc == 0) {
        unlink(pd);
        rc = add_run(x, &f->tp, run);
    }
    if (rc == 0) {
        char *pr = record_file(x, &f->tp, "run");
        rc = pr ? util_write_durable(pr, run, strlen(run), 0600) : -ENOMEM;
        free(pr);
    }
    if (rc == 0)
        rc = util_write_durable(po, op, strlen(op), 0600);
    if (rc == 0)
        clear_failure(x, &f->tp);
    free(pf);
    free(ps);
    free(po);
    free(pd);
    return rc;
}

/* Checks the filter once per content: f->valid; the bad line is logged. */
static void validate(export_file *f)
{
    const tree_path *tp = &f->tp;
    filter_error ferr;
    memset(&ferr, 0, sizeof ferr);
    int p = filter_parse(f->buf ? f->buf : "", f->len, NULL, NULL, &f->n_paths, &ferr);
    f->dirty = false;
    f->valid = p == CERR_OK;
    if (p == CERR_OK)
        return;
    if (p != CERR_MALFORMED) {
        f->dirty = true; /* out of memory: check again next time */
        log_error("%s/%s/export/%s/%s: cannot check the filter: out of memory", tp->dataset,
                  tp->store, tp->format->dir, tp->name);
        return;
    }
    /* The parser's message may already start with the position: print it once. */
    char pos[64];
    snprintf(pos, sizeof pos, "line %zu, column %zu: ", ferr.line, ferr.column);
    const char *msg = ferr.message;
    if (strncmp(msg, pos, strlen(pos)) == 0)
        msg += strlen(pos);
    log_error("%s/%s/export/%s/%s: %s%s", tp->dataset, tp->store, tp->format->dir, tp->name, pos,
              msg);
    free(f->why);
    f->why = util_asprintf("%s%s", pos, msg);
}

int export_flush(fs_ctx *x, export_file *f)
{
    if (!f->dirty)
        return f->valid ? 0 : -EINVAL;
    validate(f);
    if (!f->valid)
        return f->dirty ? -ENOMEM : -EINVAL;
    /* Local only: a read right after close() shows what was written. The
     * export itself starts at release(). */
    char *d = record_dir(x, &f->tp);
    char *pf = record_file(x, &f->tp, "filter");
    int rc = d && pf ? util_mkdirs(d, 0700) : -ENOMEM;
    if (rc == 0)
        rc = util_write_durable(pf, f->buf ? f->buf : "", f->len, 0600);
    if (rc)
        log_error("%s/%s/export/%s/%s: saving the filter in the cache failed: %s", f->tp.dataset,
                  f->tp.store, f->tp.format->dir, f->tp.name, strerror(-rc));
    free(d);
    free(pf);
    return rc;
}

/* Whether f's content is what was last started for its name. */
static bool same_as_started(fs_ctx *x, export_file *f)
{
    char *op = read_line_file(x, &f->tp, "op");
    char *path = op ? record_file(x, &f->tp, "started") : NULL;
    char *data = NULL;
    size_t len = 0;
    bool same = path && read_file(path, &data, &len) == 0 && len == f->len &&
                (len == 0 || memcmp(data, f->buf, len) == 0);
    free(data);
    free(path);
    free(op);
    return same;
}

/* The final content was refused: an earlier flush of this descriptor may
 * have saved an intermediate one (the empty filter of a shell redirection):
 * show the filter last started again. */
static void restore_started(fs_ctx *x, export_file *f)
{
    char *ps = record_file(x, &f->tp, "started");
    char *pf = record_file(x, &f->tp, "filter");
    char *data = NULL;
    size_t len = 0;
    if (ps && pf && read_file(ps, &data, &len) == 0)
        util_write_durable(pf, data, len, 0600);
    free(data);
    free(ps);
    free(pf);
}

/* Starts the export of f's (valid) filter and records it. */
static void start(fs_ctx *x, export_file *f)
{
    const tree_path *tp = &f->tp;
    char *op = NULL, *why = NULL;
    char *last = read_line_file(x, tp, "run");
    char run[40];
    new_run_id(last, run, sizeof run);
    free(last);
    int rc = start_export(x, f, run, &op, &why);
    if (rc != 0) {
        log_error("%s/%s/export/%s/%s: the export did not start (shown in %s.out/" ERROR_ENTRY
                  " and status): %s",
                  tp->dataset, tp->store, tp->format->dir, tp->name, tp->name,
                  why ? why : strerror(-rc));
        int s = save_failure(x, f, why ? why : strerror(-rc), false);
        if (s)
            log_error("%s/%s/export/%s/%s: recording the failure in the cache failed: %s",
                      tp->dataset, tp->store, tp->format->dir, tp->name, strerror(-s));
        else
            f->failed = true;
        free(why);
        return;
    }
    f->started = true;
    /* The record first: NAME.out/ exists once the operation is listed. */
    int s = save_record(x, f, op, run);
    if (s)
        log_error("%s/%s/export/%s/%s: saving the filter in the cache failed: %s", tp->dataset,
                  tp->store, tp->format->dir, tp->name, strerror(-s));
    char *store = fs_store_name(x, tp->dataset, tp->store);
    char kind[TREE_NAME_MAX * 2 + 16];
    snprintf(kind, sizeof kind, "export:%s/%s", tp->format->dir, tp->name);
    int j = store && x->journal ? journal_add_operation(x->journal, store, op, kind) : -ENOMEM;
    if (j)
        log_error("%s/%s/export/%s/%s: recording %s in the journal failed: %s", tp->dataset,
                  tp->store, tp->format->dir, tp->name, op, strerror(-j));
    char *key = out_key(tp);
    if (key)
        dircache_invalidate(x->cache, key);
    free(key);
    free(store);
    free(op);
}

/* The filter leaf goes, what NAME started stays: its runs remain in
 * NAME.runs/, and writing the same filter again starts nothing new. A
 * record that never started anything is removed whole. */
static void hide_filter(fs_ctx *x, const tree_path *tp)
{
    char *run = read_line_file(x, tp, "run");
    if (!run) {
        remove_record(x, tp);
        return;
    }
    free(run);
    char *pf = record_file(x, tp, "filter");
    if (pf)
        unlink(pf);
    free(pf);
    clear_failure(x, tp);
}

void export_release(fs_ctx *x, export_file *f)
{
    if (!f)
        return;
    bool keep = !f->created;
    if (f->changed) {
        if (f->dirty)
            validate(f); /* written after its last flush */
        if (f->valid && !f->dirty && !same_as_started(x, f)) {
            start(x, f);
            keep = keep || f->started || f->failed;
        } else if (f->valid && !f->dirty) {
            clear_failure(x, &f->tp); /* back to what NAME.out/ shows */
            keep = true;
        } else if (f->valid == false && !f->dirty) {
            /* Refused: a shell ignores close()'s EINVAL, so the refusal stays
             * visible (NAME.out/ERROR, "rejected:" in status) until the
             * filter is written again or removed. */
            int s = save_failure(x, f, f->why ? f->why : "not a valid filter", true);
            keep = keep || s == 0;
            if (s && !f->created)
                restore_started(x, f);
        } else if (!f->created) {
            restore_started(x, f);
        }
    }
    /* A new filter whose content was refused (its close() failed) is not
     * listed; one whose start failed stays, with NAME.out/ERROR. */
    if (!keep)
        hide_filter(x, &f->tp);
    free(f->why);
    free(f->buf);
    free(f);
}

int export_install(fs_ctx *x, const tree_path *tp, const char *data, size_t len)
{
    export_file *f = NULL;
    int rc = export_open_filter(x, tp, O_WRONLY | O_TRUNC, true, &f);
    if (rc)
        return rc;
    rc = len ? export_write(f, data, len, 0) : 0;
    if (rc >= 0)
        rc = export_flush(x, f);
    if (rc < 0)
        f->changed = false; /* rename(2) itself reports the refusal */
    export_release(x, f);
    return rc < 0 ? rc : 0;
}

int export_take(fs_ctx *x, const tree_path *tp, char **data, size_t *len)
{
    char *pf = record_file(x, tp, "filter");
    int rc = pf ? read_file(pf, data, len) : -ENOMEM;
    free(pf);
    if (rc == 0) {
        hide_filter(x, tp);
        char *key = out_key(tp);
        if (key)
            dircache_invalidate(x->cache, key);
        free(key);
    }
    return rc;
}

int export_unlink(fs_ctx *x, const tree_path *tp)
{
    struct stat st;
    int rc = export_getattr_filter(x, tp, &st);
    if (rc)
        return rc;
    remove_record(x, tp);
    char *key = out_key(tp);
    if (key)
        dircache_invalidate(x->cache, key);
    free(key);
    log_info("%s/%s/export/%s/%s: filter forgotten (exported objects are kept)", tp->dataset,
             tp->store, tp->format->dir, tp->name);
    return 0;
}

/* ---- NAME.out/ */

/* 1 when the export finished successfully, 0 while it runs or after it
 * failed (logged once per check), or -errno. */
static int export_done(fs_ctx *x, const tree_path *tp, bool fresh)
{
    char *donef = record_file(x, tp, "done");
    if (!donef)
        return -ENOMEM;
    struct stat st;
    if (stat(donef, &st) == 0) {
        free(donef);
        return 1;
    }
    char *op = read_line_file(x, tp, "op");
    if (!op) {
        free(donef);
        return -ENOENT;
    }
    /* Checked at most every FS_OP_TTL seconds per operation. */
    bool is_dir;
    uint64_t state = 0;
    char *key = fs_cache_key(tp->dataset, tp->store, "export");
    if (!key) {
        free(op);
        free(donef);
        return -ENOMEM;
    }
    if (!fresh && dircache_lookup(x->cache, key, op, &is_dir, &state) == 1) {
        free(key);
        free(op);
        free(donef);
        return 0;
    }
    char *json = NULL;
    size_t len = 0;
    cerr_detail err = {0};
    int rc = hc_operation_get(x->cl.hc, op, &json, &len, &err);
    int result = 0;
    if (rc != CERR_OK) {
        log_error("%s/%s/export/%s/%s: checking %s failed: %s", tp->dataset, tp->store,
                  tp->format->dir, tp->name, op, err.message);
        result = errmap_errno(rc);
    } else {
        hc_operation o;
        memset(&o, 0, sizeof o);
        if (hc_operation_parse(json, len, &o) == CERR_OK && o.done) {
            if (o.has_error) {
                log_error("%s/%s/export/%s/%s: %s failed: %s", tp->dataset, tp->store,
                          tp->format->dir, tp->name, op,
                          o.error_message ? o.error_message : "(no message)");
            } else {
                util_write_durable(donef, "", 0, 0600);
                result = 1;
            }
        }
        hc_operation_clear(&o);
    }
    if (result == 0)
        dircache_put_one(x->cache, key, op, false, 0, FS_OP_TTL);
    free(key);
    free(json);
    free(op);
    free(donef);
    return result;
}

typedef struct out_item {
    char *path;
    bool is_dir;
    uint64_t size;
} out_item;

struct out_collect {
    size_t prefix_len;
    out_item *v;
    size_t n, cap;
};

static int add_item(struct out_collect *oc, const char *path, size_t len, bool is_dir,
                    uint64_t size)
{
    out_item *v = util_grow(oc->v, oc->n, &oc->cap, sizeof *v, 64);
    if (!v)
        return -ENOMEM;
    oc->v = v;
    char *p = strndup(path, len);
    if (!p)
        return -ENOMEM;
    oc->v[oc->n++] = (out_item){p, is_dir, size};
    return 0;
}

static bool rel_ok(const char *rel)
{
    if (!*rel)
        return false;
    for (const char *p = rel;;) {
        const char *s = strchr(p, '/');
        size_t n = s ? (size_t)(s - p) : strlen(p);
        if (n == 0 || n > TREE_NAME_MAX || (n == 1 && p[0] == '.') ||
            (n == 2 && p[0] == '.' && p[1] == '.'))
            return false;
        if (!s)
            return true;
        p = s + 1;
    }
}

static int out_list_cb(void *ctx, const gcs_object *obj, const char *prefix)
{
    struct out_collect *oc = ctx;
    if (!obj || !obj->name || strlen(obj->name) <= oc->prefix_len)
        return 0;
    (void)prefix;
    const char *rel = obj->name + oc->prefix_len;
    if (!rel_ok(rel))
        return 0; /* cannot be shown as a path */
    for (const char *s = strchr(rel, '/'); s; s = strchr(s + 1, '/'))
        if (add_item(oc, rel, (size_t)(s - rel), true, 0))
            return CERR_NOMEM;
    return add_item(oc, rel, strlen(rel), false, obj->size) ? CERR_NOMEM : 0;
}

static int cmp_item(const void *a, const void *b)
{
    const out_item *x = a, *y = b;
    int c = strcmp(x->path, y->path);
    return c ? c : (int)y->is_dir - (int)x->is_dir;
}

/* The objects of one run's prefix (dircache_fetch_fn). */
struct out_src {
    fs_ctx *x;
    const tree_path *tp;
    const char *prefix; /* the run's object prefix, no '/' at the end */
    bool gated;         /* NAME.out/: listed once the operation is done */
    bool fresh;         /* ask whether it is done even if it said "not yet" a moment ago */
};

/* What fetch_out returns while the export runs: nothing to list, nothing
 * kept (no errno mapping of a client error gives it). */
#define OUT_NOT_DONE (-EINPROGRESS)

static int fetch_out(void *ctx, dircache_list *out)
{
    struct out_src *src = ctx;
    fs_ctx *x = src->x;
    const tree_path *tp = src->tp;
    if (src->gated) {
        int done = export_done(x, tp, src->fresh);
        if (done <= 0)
            return done < 0 ? done : OUT_NOT_DONE;
    }
    char *slashed = util_asprintf("%s/", src->prefix);
    if (!slashed)
        return -ENOMEM;
    struct out_collect oc = {strlen(slashed), NULL, 0, 0};
    cerr_detail err = {0};
    int rc = gcs_list(x->cl.gcs, x->opt->export_bucket, slashed, NULL, out_list_cb, &oc, &err);
    if (rc != CERR_OK) {
        int e = errmap_errno(rc);
        log_error("%s/%s/export/%s/%s: listing gs://%s/%s failed: %s", tp->dataset, tp->store,
                  tp->format->dir, tp->name, x->opt->export_bucket, slashed, err.message);
        rc = e;
    }
    if (oc.n)
        qsort(oc.v, oc.n, sizeof *oc.v, cmp_item);
    dircache_list_init(out);
    for (size_t i = 0; rc == 0 && i < oc.n; i++) {
        /* A name that is both an object and a prefix shows as the directory. */
        if (i > 0 && strcmp(oc.v[i].path, oc.v[i - 1].path) == 0)
            continue;
        if (dircache_list_add(out, oc.v[i].path, oc.v[i].is_dir, oc.v[i].size))
            rc = -ENOMEM;
    }
    for (size_t i = 0; i < oc.n; i++)
        free(oc.v[i].path);
    free(oc.v);
    free(slashed);
    if (rc)
        dircache_list_clear(out);
    return rc;
}

/* Which objects a path below NAME.out/ or NAME.runs/RUN/ shows. */
typedef struct out_view {
    char *prefix;     /* object prefix of the run, no '/' at the end */
    char *key;        /* dircache key of its listing */
    const char *rest; /* the path below the run's root ("" = the root) */
    bool gated;       /* NAME.out/: shown once the operation is done */
} out_view;

static void out_view_clear(out_view *v)
{
    free(v->prefix);
    free(v->key);
    memset(v, 0, sizeof *v);
}

/* Whether run (len bytes) is one of NAME's runs (the record's "runs" leaf). */
static bool has_run(fs_ctx *x, const tree_path *tp, const char *run, size_t len)
{
    char *pr = record_file(x, tp, "runs");
    char *data = NULL;
    size_t n = 0;
    bool found = false;
    if (pr && read_file(pr, &data, &n) == 0)
        for (char *line = data; *line && !found;) {
            char *nl = strchr(line, '\n');
            size_t l = nl ? (size_t)(nl - line) : strlen(line);
            found = l == len && memcmp(line, run, len) == 0;
            line = nl ? nl + 1 : line + l;
        }
    free(data);
    free(pr);
    return found;
}

/* NAME.out/REST: the latest run (a record from before runs existed: NAME's
 * own prefix). NAME.runs/RUN/REST: that run, shown as it is. -ENOENT for
 * an unknown run. */
static int out_view_of(fs_ctx *x, const tree_path *tp, out_view *v)
{
    memset(v, 0, sizeof *v);
    if (!tp->runs) {
        char *run = read_line_file(x, tp, "run");
        v->prefix = dest_prefix(x, tp, run);
        v->key = out_key(tp);
        v->rest = tp->rest;
        v->gated = true;
        free(run);
    } else {
        const char *slash = strchr(tp->rest, '/');
        size_t n = slash ? (size_t)(slash - tp->rest) : strlen(tp->rest);
        char run[TREE_NAME_MAX + 1];
        snprintf(run, sizeof run, "%.*s", (int)n, tp->rest);
        if (!n || !has_run(x, tp, run, n))
            return -ENOENT;
        v->prefix = dest_prefix(x, tp, run);
        v->key = run_key(tp, run);
        v->rest = slash ? slash + 1 : "";
    }
    if (!v->prefix || !v->key) {
        out_view_clear(v);
        return -ENOMEM;
    }
    return 0;
}

/* The listing of a run: every object and directory by relative path.
 * fresh: ask the server even if it said "not done" a moment ago (a
 * listing the user asked for, not one of many getattr calls). */
static int out_listing(fs_ctx *x, const tree_path *tp, const out_view *v, bool fresh,
                       dircache_list *l)
{
    /* Stale on error, as every listing: when the server cannot say whether
     * the export is done, or list its objects, what it listed last. */
    struct out_src src = {x, tp, v->prefix, v->gated, fresh};
    int rc = dircache_get_or_fetch(x->cache, v->key, FS_LIST_TTL, fetch_out, &src, l);
    return rc == OUT_NOT_DONE ? 0 : rc;
}

/* What NAME.out/ holds: the exported objects once an export started
 * (OUT_OP), ERROR when the last start failed (OUT_ERROR); -ENOENT: neither.
 * NAME.runs/ exists once a run was started. */
enum { OUT_OP = 1, OUT_ERROR = 2 };

static int out_parts(fs_ctx *x, const tree_path *tp)
{
    if (tp->runs) {
        char *last = read_line_file(x, tp, "run");
        free(last);
        return last ? OUT_OP : -ENOENT;
    }
    char *op = read_line_file(x, tp, "op");
    struct stat lst;
    int parts = (op ? OUT_OP : 0) | (failure_stat(x, tp, &lst) == 0 ? OUT_ERROR : 0);
    free(op);
    return parts ? parts : -ENOENT;
}

static bool is_error_entry(const tree_path *tp, int parts)
{
    return !tp->runs && (parts & OUT_ERROR) && strcmp(tp->rest, ERROR_ENTRY) == 0;
}

/* A run id ("20261206T210405.123Z") as a time; 0 when it is not one. */
static struct timespec run_time(const char *run, size_t len)
{
    struct tm tm = {0};
    char buf[32];
    snprintf(buf, sizeof buf, "%.*s", (int)(len < sizeof buf ? len : sizeof buf - 1), run);
    const char *end = strptime(buf, "%Y%m%dT%H%M%S", &tm);
    if (!end || *end != '.')
        return (struct timespec){0, 0};
    time_t t = timegm(&tm);
    return (struct timespec){t > 0 ? t : 0, (long)atoi(end + 1) * 1000000L};
}

int export_out_getattr(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    int parts = out_parts(x, tp);
    if (parts < 0)
        return parts;
    if (!*tp->rest) {
        /* NAME.out/ and NAME.runs/: the time the latest run started */
        fs_stat_dir(x, st, 0555);
        char *last = read_line_file(x, tp, "run");
        struct timespec t = last ? run_time(last, strlen(last)) : (struct timespec){0, 0};
        if (t.tv_sec)
            st->st_mtim = st->st_ctim = t;
        free(last);
        return 0;
    }
    struct stat lst;
    if (is_error_entry(tp, parts) && failure_stat(x, tp, &lst) == 0) {
        fs_stat_file(x, st, 0444, lst.st_size);
        st->st_mtim = st->st_ctim = lst.st_mtim;
        return 0;
    }
    if (!(parts & OUT_OP))
        return -ENOENT;
    out_view v;
    int rc = out_view_of(x, tp, &v);
    if (rc)
        return rc;
    if (!*v.rest) { /* NAME.runs/RUN: the time it started */
        out_view_clear(&v);
        fs_stat_dir(x, st, 0555);
        struct timespec t = run_time(tp->rest, strcspn(tp->rest, "/"));
        if (t.tv_sec)
            st->st_mtim = st->st_ctim = t;
        return 0;
    }
    dircache_list l;
    rc = out_listing(x, tp, &v, false, &l);
    if (rc < 0) {
        out_view_clear(&v);
        return rc;
    }
    rc = -ENOENT;
    for (size_t i = 0; i < l.n; i++)
        if (strcmp(l.v[i].name, v.rest) == 0) {
            if (l.v[i].is_dir)
                fs_stat_dir(x, st, 0555);
            else
                fs_stat_file(x, st, 0444, (off_t)l.v[i].size);
            rc = 0;
            break;
        }
    dircache_list_clear(&l);
    out_view_clear(&v);
    return rc;
}

/* NAME.runs/: one directory per run, oldest first. */
static int runs_readdir(fs_ctx *x, const tree_path *tp, export_fill_fn fill, void *buf)
{
    char *pr = record_file(x, tp, "runs");
    char *data = NULL;
    size_t n = 0;
    if (!pr || read_file(pr, &data, &n) != 0) {
        free(pr);
        return 0;
    }
    struct stat st;
    fs_stat_dir(x, &st, 0555);
    for (char *line = data; *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (*line && fill(buf, line, &st))
            break;
        if (!nl)
            break;
        line = nl + 1;
    }
    free(data);
    free(pr);
    return 0;
}

int export_out_readdir(fs_ctx *x, const tree_path *tp, export_fill_fn fill, void *buf)
{
    struct stat st;
    int rc = export_out_getattr(x, tp, &st);
    if (rc)
        return rc;
    if (!S_ISDIR(st.st_mode))
        return -ENOTDIR;
    if (tp->runs && !*tp->rest)
        return runs_readdir(x, tp, fill, buf);
    int parts = out_parts(x, tp);
    if (parts < 0)
        return parts;
    if (!*tp->rest && (parts & OUT_ERROR)) {
        tree_path e = *tp;
        e.rest = ERROR_ENTRY;
        if (export_out_getattr(x, &e, &st) == 0 && fill(buf, ERROR_ENTRY, &st))
            return 0;
    }
    if (!(parts & OUT_OP))
        return 0;
    out_view v;
    rc = out_view_of(x, tp, &v);
    if (rc)
        return rc;
    dircache_list l;
    rc = out_listing(x, tp, &v, true, &l);
    if (rc < 0) {
        out_view_clear(&v);
        return rc;
    }
    size_t rl = strlen(v.rest);
    for (size_t i = 0; i < l.n; i++) {
        const char *name = l.v[i].name;
        if (rl) {
            if (strncmp(name, v.rest, rl) != 0 || name[rl] != '/')
                continue;
            name += rl + 1;
        }
        if (strchr(name, '/'))
            continue;
        if (l.v[i].is_dir)
            fs_stat_dir(x, &st, 0555);
        else
            fs_stat_file(x, &st, 0444, (off_t)l.v[i].size);
        if (fill(buf, name, &st))
            break;
    }
    dircache_list_clear(&l);
    out_view_clear(&v);
    return 0;
}

/* NAME.out/ERROR: the record's error leaf itself (replaced, never
 * rewritten in place, so an open descriptor keeps what it opened). */
static int open_error(fs_ctx *x, const tree_path *tp, int *fdp)
{
    char *pe = record_file(x, tp, "error");
    if (!pe)
        return -ENOMEM;
    int fd = open(pe, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    int rc = fd < 0 ? -errno : 0;
    free(pe);
    if (rc == 0)
        *fdp = fd;
    return rc;
}

int export_out_open(fs_ctx *x, const tree_path *tp, int *fdp)
{
    struct stat st;
    int rc = export_out_getattr(x, tp, &st);
    if (rc)
        return rc;
    if (S_ISDIR(st.st_mode))
        return -EISDIR;
    int parts = out_parts(x, tp);
    if (parts > 0 && is_error_entry(tp, parts))
        return open_error(x, tp, fdp);
    out_view v;
    rc = out_view_of(x, tp, &v);
    if (rc)
        return rc;
    char *obj = util_asprintf("%s/%s", v.prefix, v.rest);
    out_view_clear(&v);
    if (!obj)
        return -ENOMEM;
    int fd = open(x->opt->cache_dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = -errno;
        log_error("%s/%s/export/%s/%s: %s: no temporary file in %s: %s", tp->dataset, tp->store,
                  tp->format->dir, tp->name, tp->rest, x->opt->cache_dir, strerror(errno));
        free(obj);
        return rc;
    }
    uint64_t written = 0;
    cerr_detail err = {0};
    int g = gcs_download_fd(x->cl.gcs, x->opt->export_bucket, obj, 0, 0, fd, 0, &written, &err);
    if (g != CERR_OK) {
        rc = errmap_errno(g);
        log_error("%s/%s/export/%s/%s: %s: downloading gs://%s/%s failed: %s", tp->dataset,
                  tp->store, tp->format->dir, tp->name, tp->rest, x->opt->export_bucket, obj,
                  err.message);
        close(fd);
        free(obj);
        return rc;
    }
    free(obj);
    *fdp = fd;
    return 0;
}
