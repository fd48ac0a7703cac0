/* faults: seeded, repeatable fault decisions for dicomfs-emulator.
 *
 * Owns the PRNG (splitmix64 seeded by --seed) and the rates. Every request on
 * a faulted path takes exactly four draws, whatever the outcome, so the same
 * sequence of requests sees the same faults for the same seed. Concurrent
 * requests take their draws in arrival order, which the OS may reorder.
 * A fixed fail status (control path, fail_status=) replaces the 429/500/503
 * pick, e.g. 403 for a permission the caller lacks (a refusal not retried;
 * counted as http500 in the stats).
 * Lose-response is not drawn: the next N requests matching a substring are
 * carried out and then answered by closing the connection (a reply lost on
 * the way back, which a client cannot tell from a request that never
 * arrived).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "emu_internal.h"

struct emu_faults {
    pthread_mutex_t mu;
    uint64_t state;
    double fail_rate, reset_rate, malformed_rate, partial_rate;
    int latency_ms;
    int fail_status; /* 0: 429, 500 or 503 */
    char *paths;
    uint64_t seed;
    char *lose_match; /* lose-response: "METHOD PATH" substring */
    int lose_left;
};

static uint64_t next_u64(emu_faults *f)
{
    uint64_t z = (f->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double unit(uint64_t v)
{
    return (double)(v >> 11) * (1.0 / 9007199254740992.0);
}

emu_faults *emu_faults_new(const emu_fault_config *cfg)
{
    emu_faults *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    pthread_mutex_init(&f->mu, NULL);
    f->seed = cfg->seed;
    f->state = cfg->seed;
    f->fail_rate = cfg->fail_rate;
    f->reset_rate = cfg->reset_rate;
    f->malformed_rate = cfg->malformed_rate;
    f->partial_rate = cfg->partial_rate;
    f->latency_ms = cfg->latency_ms;
    f->paths = cfg->paths ? strdup(cfg->paths) : NULL;
    return f;
}

void emu_faults_free(emu_faults *f)
{
    if (!f)
        return;
    pthread_mutex_destroy(&f->mu);
    free(f->paths);
    free(f->lose_match);
    free(f);
}

/* paths: comma-separated prefixes. */
static bool path_selected(const char *paths, const char *path)
{
    const char *p = paths;
    while (*p) {
        size_t n = strcspn(p, ",");
        if (n > 0 && strncmp(path, p, n) == 0)
            return true;
        p += n;
        if (*p == ',')
            p++;
    }
    return false;
}

void emu_faults_plan(emu_faults *f, const char *path, emu_fault_plan *out)
{
    memset(out, 0, sizeof(*out));
    if (f->paths && !path_selected(f->paths, path))
        return;
    pthread_mutex_lock(&f->mu);
    double fail = f->fail_rate, reset = f->reset_rate, bad = f->malformed_rate;
    double partial = f->partial_rate;
    int latency = f->latency_ms;
    int status = f->fail_status;
    if (fail <= 0 && reset <= 0 && bad <= 0 && partial <= 0 && latency <= 0) {
        pthread_mutex_unlock(&f->mu);
        return;
    }
    double u_fail = unit(next_u64(f));
    double u_reset = unit(next_u64(f));
    double u_bad = unit(next_u64(f));
    double u_partial = unit(next_u64(f));
    uint64_t aux = next_u64(f);
    pthread_mutex_unlock(&f->mu);

    out->latency_ms = latency;
    out->aux = (uint32_t)aux;
    if (u_fail < fail && status) {
        out->fail_status = status;
        return;
    }
    if (u_fail < fail) {
        static const int codes[3] = {429, 500, 503};
        int k = (int)(u_fail / fail * 3);
        out->fail_status = codes[k > 2 ? 2 : k];
        return;
    }
    if (u_reset < reset) {
        out->reset = true;
        out->reset_early = (aux >> 32) & 1;
        return;
    }
    out->malformed = u_bad < bad;
    out->partial = u_partial < partial;
}

void emu_faults_set(emu_faults *f, double fail, double reset, double partial, double malformed,
                    int latency_ms)
{
    pthread_mutex_lock(&f->mu);
    if (partial >= 0)
        f->partial_rate = partial;
    if (fail >= 0)
        f->fail_rate = fail;
    if (reset >= 0)
        f->reset_rate = reset;
    if (malformed >= 0)
        f->malformed_rate = malformed;
    if (latency_ms >= 0)
        f->latency_ms = latency_ms;
    pthread_mutex_unlock(&f->mu);
}

void emu_faults_set_status(emu_faults *f, int status)
{
    pthread_mutex_lock(&f->mu);
    f->fail_status = status >= 400 && status <= 599 ? status : 0;
    pthread_mutex_unlock(&f->mu);
}

cJSON *emu_faults_json(emu_faults *f)
{
    cJSON *o = cJSON_CreateObject();
    pthread_mutex_lock(&f->mu);
    cJSON_AddNumberToObject(o, "seed", (double)f->seed);
    cJSON_AddNumberToObject(o, "failRate", f->fail_rate);
    cJSON_AddNumberToObject(o, "resetRate", f->reset_rate);
    cJSON_AddNumberToObject(o, "malformedRate", f->malformed_rate);
    cJSON_AddNumberToObject(o, "partialRate", f->partial_rate);
    cJSON_AddNumberToObject(o, "latencyMs", f->latency_ms);
    if (f->fail_status)
        cJSON_AddNumberToObject(o, "failStatus", f->fail_status);
    if (f->paths)
        cJSON_AddStringToObject(o, "paths", f->paths);
    if (f->lose_match) {
        cJSON_AddStringToObject(o, "loseMatch", f->lose_match);
        cJSON_AddNumberToObject(o, "loseLeft", f->lose_left);
    }
    pthread_mutex_unlock(&f->mu);
    return o;
}

void emu_faults_set_lose(emu_faults *f, const char *match, int count)
{
    pthread_mutex_lock(&f->mu);
    free(f->lose_match);
    f->lose_match = match && count > 0 ? strdup(match) : NULL;
    f->lose_left = f->lose_match ? count : 0;
    pthread_mutex_unlock(&f->mu);
}

bool emu_faults_take_lose(emu_faults *f, const char *method, const char *path)
{
    bool take = false;
    pthread_mutex_lock(&f->mu);
    if (f->lose_left > 0 && f->lose_match) {
        size_t ml = strlen(method), pl = strlen(path);
        char *line = malloc(ml + pl + 2);
        if (line) {
            memcpy(line, method, ml);
            line[ml] = ' ';
            memcpy(line + ml + 1, path, pl + 1);
            take = strstr(line, f->lose_match) != NULL;
            free(line);
        }
        if (take && --f->lose_left == 0) {
            free(f->lose_match);
            f->lose_match = NULL;
        }
    }
    pthread_mutex_unlock(&f->mu);
    return take;
}
