/* network: what the emulated network adds to every exchange.
 *
 * Latency: a fixed delay per request (its round trip), on every API
 * request, faulted or not (/_emulator/ controls excepted).
 * Bandwidth: one link shared by all connections, request and response
 * bodies alike. A transfer books the next free slot of the link (a virtual
 * clock advanced by len * 8 / rate) and sleeps until its slot ends, so N
 * parallel streams share the cap instead of each getting it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "emu_internal.h"
#include "util.h"

struct emu_net {
    pthread_mutex_t mu;
    int latency_ms;
    int bandwidth_mbps;   /* 0 = no cap */
    int64_t link_free_ns; /* CLOCK_MONOTONIC time at which the link is idle */
};

int64_t emu_mono_ms(void)
{
    return util_mono_ns() / 1000000LL;
}

static void sleep_until_ns(int64_t when)
{
    struct timespec t = {(time_t)(when / 1000000000LL), (long)(when % 1000000000LL)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) == EINTR)
        ;
}

emu_net *emu_net_new(int latency_ms, int bandwidth_mbps)
{
    emu_net *n = calloc(1, sizeof(*n));
    if (!n)
        return NULL;
    pthread_mutex_init(&n->mu, NULL);
    n->latency_ms = latency_ms > 0 ? latency_ms : 0;
    n->bandwidth_mbps = bandwidth_mbps > 0 ? bandwidth_mbps : 0;
    return n;
}

void emu_net_free(emu_net *n)
{
    if (!n)
        return;
    pthread_mutex_destroy(&n->mu);
    free(n);
}

void emu_net_set(emu_net *n, int latency_ms, int bandwidth_mbps)
{
    pthread_mutex_lock(&n->mu);
    if (latency_ms >= 0)
        n->latency_ms = latency_ms;
    if (bandwidth_mbps >= 0)
        n->bandwidth_mbps = bandwidth_mbps;
    pthread_mutex_unlock(&n->mu);
}

cJSON *emu_net_json(emu_net *n)
{
    cJSON *o = cJSON_CreateObject();
    pthread_mutex_lock(&n->mu);
    cJSON_AddNumberToObject(o, "latencyMs", n->latency_ms);
    cJSON_AddNumberToObject(o, "bandwidthMbps", n->bandwidth_mbps);
    pthread_mutex_unlock(&n->mu);
    return o;
}

void emu_net_latency(emu_net *n)
{
    pthread_mutex_lock(&n->mu);
    int ms = n->latency_ms;
    pthread_mutex_unlock(&n->mu);
    if (ms > 0)
        sleep_until_ns(util_mono_ns() + (int64_t)ms * 1000000LL);
}

bool emu_net_capped(emu_net *n)
{
    pthread_mutex_lock(&n->mu);
    bool c = n->bandwidth_mbps > 0;
    pthread_mutex_unlock(&n->mu);
    return c;
}

void emu_net_transfer(emu_net *n, uint64_t len)
{
    if (len == 0)
        return;
    pthread_mutex_lock(&n->mu);
    if (n->bandwidth_mbps <= 0) {
        pthread_mutex_unlock(&n->mu);
        return;
    }
    /* bits / (Mbit/s) = microseconds; * 1000 for ns */
    int64_t cost = (int64_t)(len * 8ull * 1000ull / (uint64_t)n->bandwidth_mbps);
    int64_t now = util_mono_ns();
    int64_t start = n->link_free_ns > now ? n->link_free_ns : now;
    n->link_free_ns = start + cost;
    int64_t until = n->link_free_ns;
    pthread_mutex_unlock(&n->mu);
    sleep_until_ns(until);
}
