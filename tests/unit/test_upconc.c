/* Unit tests for fs/upconc.c (adaptive upload concurrency), against
 * simulated wires: each upload's duration is a function of how many run at
 * once, and time advances by completions. */
#include <stdio.h>
#include <stdlib.h>

#include "testlib.h"
#include "../../fs/upconc.h"

/* Runs `seconds` of uploads of `bytes` each: with C in flight an upload
 * takes dur(C), so one completes every dur(C)/C seconds. Returns the limit. */
static int simulate(upconc *c, double seconds, uint64_t bytes, double (*dur)(int), bool backlog)
{
    double now = 0;
    while (now < seconds) {
        int n = upconc_limit(c);
        now += dur(n) / n;
        upconc_done(c, now, bytes, backlog);
    }
    return upconc_limit(c);
}

/* A long wire: 30 ms per request whatever the number in flight. */
static double latency_bound(int n)
{
    (void)n;
    return 0.030;
}

/* A saturated link or CPU: 400 files/s in all, however shared. */
static double capacity_bound(int n)
{
    return n / 400.0;
}

/* Latency-bound up to 40 in flight (30 ms), then the link saturates. */
static double knee_at_40(int n)
{
    return n <= 40 ? 0.030 : 0.030 * n / 40.0;
}

TEST(latency_bound_climbs_to_the_top)
{
    upconc *c = upconc_new(0, 16, 4, 64);
    CHECK_EQ_INT(upconc_limit(c), 16);
    CHECK_EQ_INT(upconc_max(c), 64);
    CHECK_EQ_INT(simulate(c, 20, 16384, latency_bound, true), 64);
    upconc_free(c);
}

TEST(capacity_bound_does_not_grow)
{
    upconc *c = upconc_new(0, 16, 4, 64);
    int limit = simulate(c, 60, 524288, capacity_bound, true);
    CHECK(limit <= 16);
    CHECK(limit >= 4);
    upconc_free(c);
}

TEST(knee_settles_near_it)
{
    upconc *c = upconc_new(0, 16, 4, 64);
    int limit = simulate(c, 60, 16384, knee_at_40, true);
    /* 16 -> 24 -> 36 pays; 54 gains only 40/36 (11%) once, then no more. */
    CHECK(limit >= 24);
    CHECK(limit <= 64);
    upconc_free(c);
}

TEST(idle_starts_over)
{
    upconc *c = upconc_new(0, 16, 4, 64);
    CHECK(simulate(c, 60, 524288, capacity_bound, true) < 16);
    upconc_idle(c);
    CHECK_EQ_INT(upconc_limit(c), 16);
    CHECK_EQ_INT(simulate(c, 20, 16384, latency_bound, true), 64);
    upconc_free(c);
}

TEST(no_backlog_no_change)
{
    upconc *c = upconc_new(0, 16, 4, 64);
    CHECK_EQ_INT(simulate(c, 20, 16384, latency_bound, false), 16);
    upconc_free(c);
}

TEST(fixed_stays)
{
    upconc *c = upconc_new(8, 16, 4, 64);
    CHECK_EQ_INT(upconc_limit(c), 8);
    CHECK_EQ_INT(upconc_max(c), 8);
    CHECK_EQ_INT(simulate(c, 20, 16384, latency_bound, true), 8);
    upconc_free(c);
}

int main(void)
{
    RUN(latency_bound_climbs_to_the_top);
    RUN(capacity_bound_does_not_grow);
    RUN(knee_settles_near_it);
    RUN(idle_starts_over);
    RUN(no_backlog_no_change);
    RUN(fixed_stays);
    return test_done();
}
