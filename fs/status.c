/* status: STORE/status text and its parser.
 *
 * Counters for one store: spooled (accepted, waiting for upload), uploading,
 * uploaded (waiting for the batch commit), importing (batch import
 * started), failed (listed in import/ until unlinked), from the journal;
 * imported, bytes_spooled and bytes_uploaded since mount. Then, while the
 * store's background work waits for a cause that is not about its files,
 * one "paused: CAUSE: FIX" line (failpolicy.h). Then one
 * "failed: PATH: REASON" line per failed file, with '\n', '\r' and '\\' in
 * names escaped as \n, \r and \\ so that one file is one line. The
 * STORE/status file adds the export and import/ refusals after this text
 * (node_status.c).
 */
#include "status.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "import_int.h"

static void put_escaped(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '\n')
            fputs("\\n", f);
        else if (*s == '\r')
            fputs("\\r", f);
        else if (*s == '\\')
            fputs("\\\\", f);
        else
            fputc(*s, f);
    }
}

bool import_knows_store(import_mgr *m, const char *store)
{
    if (!m || !store)
        return false;
    pthread_mutex_lock(&m->lock);
    bool known = false;
    for (store_st *s = m->stores; s && !known; s = s->next)
        known = strcmp(s->name, store) == 0;
    pthread_mutex_unlock(&m->lock);
    return known;
}

bool import_knows_dataset(import_mgr *m, const char *dataset)
{
    if (!m || !dataset)
        return false;
    size_t n = strlen(dataset);
    pthread_mutex_lock(&m->lock);
    bool known = false;
    for (store_st *s = m->stores; s && !known; s = s->next)
        known = strncmp(s->name, dataset, n) == 0 && strncmp(s->name + n, "/dicomStores/", 13) == 0;
    pthread_mutex_unlock(&m->lock);
    return known;
}

char *import_status_text(import_mgr *m, const char *store)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return NULL;
    import_counts c = {0};
    pthread_mutex_lock(&m->lock);
    store_st *st = NULL;
    for (store_st *s = m->stores; s; s = s->next)
        if (strcmp(s->name, store) == 0)
            st = s;
    for (node *n = st ? m->head : NULL; n; n = n->next) {
        if (n->is_dir || n->st != st)
            continue;
        switch (n->state) {
        case ST_ACCEPTED:
            if (n->busy)
                c.uploading++;
            else
                c.spooled++;
            break;
        case ST_UPLOADED:
            if (n->b && n->b->state >= B_SEALED)
                c.importing++;
            else
                c.uploaded++;
            break;
        case ST_FAILED:
            c.failed++;
            break;
        default:
            break;
        }
    }
    c.cache_used = m->cache_used;
    c.cache_max = m->cache_max;
    c.writers_waiting = (uint64_t)m->writers_waiting;
    if (st) {
        c.imported = st->imported;
        c.present = st->present; /* since mount, like imported */
        c.bytes_spooled = st->bytes_spooled;
        c.bytes_uploaded = st->bytes_uploaded;
    }
    fprintf(f,
            "spooled: %" PRIu64 "\nuploading: %" PRIu64 "\nuploaded: %" PRIu64
            "\nimporting: %" PRIu64 "\nimported: %" PRIu64 "\nfailed: %" PRIu64
            "\nbytes_spooled: %" PRIu64 "\nbytes_uploaded: %" PRIu64 "\n",
            c.spooled, c.uploading, c.uploaded, c.importing, c.imported, c.failed, c.bytes_spooled,
            c.bytes_uploaded);
    fprintf(f,
            "present: %" PRIu64 "\ncache_used: %" PRIu64 "\ncache_max: %" PRIu64
            "\nwriters_waiting: %" PRIu64 "\n",
            c.present, c.cache_used, c.cache_max, c.writers_waiting);
    if (st && st->paused) { /* why nothing moves, and the fix (failpolicy.h) */
        fputs("paused: ", f);
        put_escaped(f, st->paused);
        fputc('\n', f);
    }
    for (node *n = st ? m->head : NULL; n; n = n->next) {
        if (n->is_dir || n->st != st || n->state != ST_FAILED)
            continue;
        fputs("failed: ", f);
        put_escaped(f, n->visible && n->path ? n->path : "(replaced)");
        fputs(": ", f);
        put_escaped(f, n->reason ? n->reason : "unknown error");
        fputc('\n', f);
    }
    pthread_mutex_unlock(&m->lock);
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

int status_parse(const char *text, import_counts *out)
{
    memset(out, 0, sizeof *out);
    /* The first 8 are required; the others are optional (older daemons). */
    static const char *keys[] = {"spooled",  "uploading",  "uploaded",      "importing",
                                 "imported", "failed",     "bytes_spooled", "bytes_uploaded",
                                 "present",  "cache_used", "cache_max",     "writers_waiting"};
    uint64_t *vals[] = {&out->spooled,       &out->uploading,      &out->uploaded,
                        &out->importing,     &out->imported,       &out->failed,
                        &out->bytes_spooled, &out->bytes_uploaded, &out->present,
                        &out->cache_used,    &out->cache_max,      &out->writers_waiting};
    unsigned seen = 0;
    for (const char *line = text; line && *line;) {
        const char *eol = strchr(line, '\n');
        size_t ll = eol ? (size_t)(eol - line) : strlen(line);
        for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
            size_t kl = strlen(keys[k]);
            if (ll <= kl + 2 || strncmp(line, keys[k], kl) != 0 || line[kl] != ':' ||
                line[kl + 1] != ' ')
                continue;
            const char *v = line + kl + 2;
            size_t vl = ll - kl - 2;
            if (strspn(v, "0123456789") < vl)
                continue; /* e.g. "failed: PATH: REASON" */
            *vals[k] = strtoull(v, NULL, 10);
            seen |= 1u << k;
        }
        line = eol ? eol + 1 : NULL;
    }
    unsigned required = (1u << 8) - 1;
    return (seen & required) == required ? 0 : -1;
}
