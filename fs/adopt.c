/* adopt: the operation of an import start whose answer was lost (see adopt.h). */
#include "adopt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Clocks differ: an operation created up to this long before our start
 * (by the server's clock) may still be ours. */
#define ADOPT_SKEW_S 120

int adopt_intent_put(journal *j, const char *batch_id, time_t sent)
{
    char key[80], val[32];
    snprintf(key, sizeof key, "s/%s", batch_id);
    int n = snprintf(val, sizeof val, "%lld", (long long)sent);
    return journal_put_progress(j, key, val, (size_t)n + 1, true); /* moves accepted work on */
}

static int intent_cb(void *ctx, const char *key, const void *val, size_t len)
{
    (void)key;
    if (len > 0 && ((const char *)val)[len - 1] == '\0')
        *(time_t *)ctx = (time_t)strtoll(val, NULL, 10);
    return 0;
}

time_t adopt_intent_get(journal *j, const char *batch_id)
{
    char key[80];
    snprintf(key, sizeof key, "s/%s", batch_id);
    time_t sent = 0;
    journal_scan(j, key, intent_cb, &sent);
    return sent;
}

void adopt_intent_del(journal *j, const char *batch_id)
{
    char key[80];
    snprintf(key, sizeof key, "s/%s", batch_id);
    journal_del(j, key, false);
}

bool adopt_maybe_started(int hc_rc)
{
    /* Answered, but the body was unreadable; or no answer (not a deadline of
     * ours nor a missing token: then nothing was sent). */
    return hc_rc == CERR_MALFORMED || hc_rc == CERR_NETWORK;
}

typedef struct known_ctx {
    const char *op;
    bool found;
} known_ctx;

static int known_cb(void *ctx, const char *op_name, const char *kind)
{
    (void)kind;
    known_ctx *k = ctx;
    if (strcmp(op_name, k->op) == 0)
        k->found = true;
    return 0;
}

/* RFC 3339 "YYYY-MM-DDTHH:MM:SS[.frac]Z" to epoch seconds; -1 if not one. */
static time_t parse_time(const char *s)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = s ? strptime(s, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
    return end ? timegm(&tm) : (time_t)-1;
}

typedef struct find_ctx {
    journal *j;
    time_t since;
    char *best;
    time_t best_at;
} find_ctx;

static int find_cb(void *ctx, const char *name, const char *json)
{
    find_ctx *f = ctx;
    hc_operation op;
    memset(&op, 0, sizeof op);
    if (hc_operation_parse(json, strlen(json), &op) != CERR_OK) {
        hc_operation_clear(&op);
        return 0;
    }
    time_t at = parse_time(op.create_time);
    bool import = op.api_method && strstr(op.api_method, "ImportDicomData");
    hc_operation_clear(&op);
    if (!import || at < 0 || at < f->since - ADOPT_SKEW_S)
        return 0;
    known_ctx k = {name, false};
    journal_list_operations(f->j, NULL, known_cb, &k);
    if (k.found)
        return 0;
    /* Of several untracked imports (another client's?), the one created
     * nearest after our start. */
    if (!f->best || llabs((long long)(at - f->since)) < llabs((long long)(f->best_at - f->since))) {
        char *c = strdup(name);
        if (!c)
            return -1;
        free(f->best);
        f->best = c;
        f->best_at = at;
    }
    return 0;
}

int adopt_lost_import(hc_client *hc, journal *j, const char *store, time_t since, char **op,
                      cerr_detail *err)
{
    *op = NULL;
    const char *cut = strstr(store, "/dicomStores/");
    char *ds = cut ? strndup(store, (size_t)(cut - store)) : NULL;
    if (!ds)
        return -1;
    find_ctx f = {j, since, NULL, 0};
    int rc = hc_operations_list(hc, ds, find_cb, &f, err);
    free(ds);
    if (rc != CERR_OK) {
        free(f.best);
        return -1;
    }
    if (!f.best) {
        log_info("import: %s: no operation came of the start whose answer was lost: starting "
                 "again",
                 store);
        return 0;
    }
    log_warn("import: %s: the answer to an import start was lost; adopting its operation %s", store,
             f.best);
    *op = f.best;
    return 1;
}
