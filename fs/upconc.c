/* upconc: adaptive upload concurrency (see upconc.h). */
#include "upconc.h"

#include <stdlib.h>

#include "log.h"

#define WINDOW_S 0.5   /* shortest measurement window */
#define WINDOW_MIN 2   /* ... holding at least this many x limit uploads */
#define GAIN_UP 1.10   /* a step up is kept when throughput rose this much */
#define LOSS_DOWN 0.95 /* a step down is kept while throughput stays above */
#define HOLD 12        /* windows to stay put after a step was undone */

enum probe { P_BASE, P_UP, P_DOWN, P_HOLD };

struct upconc {
    bool fixed;
    int limit, lo, hi, start;
    /* The window being measured. */
    double w_start;
    int w_files;
    uint64_t w_bytes;
    bool w_valid;
    /* The reference: throughput at base_limit. */
    double base_fps, base_bps;
    int base_limit;
    enum probe probe;
    enum probe next_dir; /* after a hold: P_UP or P_DOWN, alternating */
    int hold;
};

upconc *upconc_new(int fixed, int start, int lo, int hi)
{
    upconc *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    if (fixed > 0) {
        c->fixed = true;
        c->limit = c->lo = c->hi = fixed;
        return c;
    }
    c->lo = lo < 1 ? 1 : lo;
    c->hi = hi < c->lo ? c->lo : hi;
    c->limit = start < c->lo ? c->lo : start > c->hi ? c->hi : start;
    c->start = c->limit;
    c->probe = P_BASE;
    c->next_dir = P_UP;
    c->w_start = -1;
    return c;
}

void upconc_free(upconc *c)
{
    free(c);
}

int upconc_limit(const upconc *c)
{
    return c->limit;
}

int upconc_max(const upconc *c)
{
    return c->hi;
}

static int clamp(const upconc *c, int n)
{
    return n < c->lo ? c->lo : n > c->hi ? c->hi : n;
}

/* Moves to `limit` and starts a new window there. */
static void set_limit(upconc *c, int limit, enum probe p)
{
    if (limit != c->limit)
        log_debug("import: %d parallel upload(s) (was %d)", limit, c->limit);
    c->limit = limit;
    c->probe = p;
}

static void step(upconc *c, enum probe dir)
{
    int to = clamp(c, dir == P_UP ? (c->limit * 3 + 1) / 2 : (c->limit * 2) / 3);
    if (to == c->limit) { /* at a bound: try the other way next time */
        c->next_dir = dir == P_UP ? P_DOWN : P_UP;
        c->hold = HOLD;
        set_limit(c, to, P_HOLD);
        return;
    }
    set_limit(c, to, dir);
}

/* A full window at the current limit measured fps files/s and bps bytes/s. */
static void judge(upconc *c, double fps, double bps)
{
    switch (c->probe) {
    case P_BASE:
        c->base_fps = fps, c->base_bps = bps, c->base_limit = c->limit;
        step(c, c->next_dir);
        break;
    case P_UP:
        if (fps > c->base_fps * GAIN_UP || bps > c->base_bps * GAIN_UP) {
            c->base_fps = fps, c->base_bps = bps, c->base_limit = c->limit;
            step(c, P_UP);
        } else {
            c->next_dir = P_DOWN;
            c->hold = HOLD;
            set_limit(c, c->base_limit, P_HOLD);
        }
        break;
    case P_DOWN:
        if (fps >= c->base_fps * LOSS_DOWN || bps >= c->base_bps * LOSS_DOWN) {
            c->base_fps = fps, c->base_bps = bps, c->base_limit = c->limit;
            step(c, P_DOWN);
        } else {
            c->next_dir = P_UP;
            c->hold = HOLD;
            set_limit(c, c->base_limit, P_HOLD);
        }
        break;
    case P_HOLD:
        if (--c->hold <= 0)
            c->probe = P_BASE; /* measure again here, then probe next_dir */
        break;
    }
}

void upconc_idle(upconc *c)
{
    if (c->fixed)
        return;
    c->limit = c->start;
    c->probe = P_BASE;
    c->next_dir = P_UP;
    c->w_start = -1;
}

void upconc_done(upconc *c, double now, uint64_t bytes, bool backlog)
{
    if (c->fixed)
        return;
    if (c->w_start < 0 || !backlog) { /* (re)start the window at the next upload */
        c->w_start = now;
        c->w_files = 0;
        c->w_bytes = 0;
        return;
    }
    c->w_files++;
    c->w_bytes += bytes;
    double dt = now - c->w_start;
    if (dt < WINDOW_S || c->w_files < WINDOW_MIN * c->limit)
        return;
    judge(c, c->w_files / dt, (double)c->w_bytes / dt);
    c->w_start = now;
    c->w_files = 0;
    c->w_bytes = 0;
}
