/* node_status: STORE/status and STORE/status.json, the progress of the
 * store's background work as text (status.h, import_status_text) or JSON
 * (statusjson.h), read-only. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "export.h"
#include "import.h"
#include "node.h"
#include "places.h"
#include "rejects.h"
#include "statusjson.h"
#include "util.h"

/* The text of STORE/status (NULL when import/ could not start, or ENOMEM):
 * the import manager's, then a "failed: export/FMT/NAME: REASON" line per
 * filter whose export did not start (not counted in "failed: N", which
 * counts import files), then a "rejected: import/PATH: REASON" line per
 * refused file still shown. */
static char *status_text(fs_ctx *x, const tree_path *tp)
{
    char *store = fs_store_name(x, tp->dataset, tp->store);
    char *text = store && x->import ? import_status_text(x->import, store) : NULL;
    char *all = NULL;
    size_t len = 0;
    FILE *f = text ? open_memstream(&all, &len) : NULL;
    if (f) {
        fputs(text, f);
        /* filters whose export did not start, then refused import/ files */
        export_status_failures(x->opt->cache_dir, tp->dataset, tp->store, f);
        rejects_status(x->rejects, store, f);
        fclose(f);
        free(text);
        text = all;
    }
    free(store);
    if (text && strcmp(tp->name, "status.json") == 0) {
        char *json = status_json(text);
        free(text);
        text = json;
    }
    return text;
}

/* The mtime of a status text: when its content last changed (seen by a
 * getattr or read), so `tail -f` and other pollers notice a change. */
static struct timespec status_stamp(fs_ctx *x, const tree_path *tp, const char *text)
{
    uint64_t h = util_fnv1a_str(UTIL_FNV1A_INIT, text);
    char *key = fs_cache_key(tp->dataset, tp->store, "status");
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    bool is_dir;
    uint64_t seen = 0;
    int64_t when = 0;
    if (key && dircache_lookup_mtime(x->cache, key, tp->name, &is_dir, &seen, &when) == 1 &&
        seen == h) {
        free(key);
        return (struct timespec){when, 0};
    }
    if (key)
        dircache_put_one_mtime(x->cache, key, tp->name, false, h, now.tv_sec, 1e9);
    free(key);
    return (struct timespec){now.tv_sec, 0};
}

typedef struct status_file {
    fs_file f;
    char *data; /* the text */
    size_t len;
    bool fresh;    /* data made at open, not read yet */
    bool eof_seen; /* a read returned EOF */
    tree_path tp;  /* which status */
} status_file;

/* A read of an open status: offset 0 reads the status as it is now, and
 * the reads that follow get the rest of that same text (so `cat` gets one
 * consistent text). Once a reader got EOF, a later read at that end sees
 * the status as it is then, at the same offsets, as a file rewritten in
 * place: `tail -f` (which, on a FUSE file system, reads the bytes by which
 * the size grew when the mtime changes) prints the lines added at the end
 * (new failed:/rejected: lines); a status that shrank makes tail start over
 * ("file truncated"). */
static int status_read(fs_ctx *x, fs_file *f, char *buf, size_t size, off_t off)
{
    status_file *h = (status_file *)f;
    bool at_end = off >= (off_t)h->len;
    if ((off == 0 && !h->fresh) || (at_end && h->eof_seen)) {
        char *text = status_text(x, &h->tp);
        if (text) {
            free(h->data);
            h->data = text;
            h->len = strlen(text);
            h->eof_seen = false;
        }
    }
    h->fresh = false;
    if (off < 0 || off >= (off_t)h->len) {
        h->eof_seen = true;
        return 0;
    }
    return node_copy_out(h->data, h->len, buf, size, off);
}

static void status_release(fs_ctx *x, fs_file *f)
{
    (void)x;
    free(((status_file *)f)->data);
    free(f);
}

static const fs_file_ops status_ops = {.read = status_read, .release = status_release};

static int st_getattr(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    int rc = places_store_exists(x, tp);
    if (rc)
        return rc;
    char *text = status_text(x, tp);
    fs_stat_file(x, st, 0444, text ? (off_t)strlen(text) : 0);
    if (text)
        st->st_mtim = st->st_ctim = status_stamp(x, tp, text);
    free(text);
    return 0;
}

static int st_open(fs_ctx *x, const char *path, const tree_path *tp, const struct stat *st,
                   int flags, fs_file **out)
{
    (void)path;
    (void)st;
    (void)flags;
    status_file *h = calloc(1, sizeof *h);
    char *text = h ? status_text(x, tp) : NULL;
    if (h && !text)
        text = strdup("");
    if (!text) {
        free(h);
        return -ENOMEM;
    }
    h->f.ops = &status_ops;
    h->f.direct_io = true; /* read until EOF, never trust the cached size */
    h->data = text;
    h->len = strlen(text);
    h->fresh = true;
    h->tp = *tp;
    h->tp.rest = "";
    *out = &h->f;
    return 0;
}

const fs_node node_status = {
    .mkdir_refused = {-EACCES, "mkdir: read-only place"},
    .create_refused = {-EACCES, "create: status is read-only"},
    .unlink_refused = {-EACCES, "unlink: status is part of the store"},
    .write_refused = "open for writing: status is read-only",
    .getattr = st_getattr,
    .open = st_open,
};
