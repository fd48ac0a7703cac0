/* deadline: a per-thread time limit (see deadline.h). */
#include "deadline.h"

#include <time.h>

static __thread double dl_at;  /* CLOCK_MONOTONIC seconds; 0 = none */
static __thread double dl_len; /* seconds given to deadline_begin */

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void deadline_begin(double seconds)
{
    dl_len = seconds > 0 ? seconds : 0;
    dl_at = seconds > 0 ? mono_s() + seconds : 0;
}

void deadline_end(void)
{
    dl_at = 0;
    dl_len = 0;
}

double deadline_remaining_ms(void)
{
    if (dl_at <= 0)
        return -1;
    double left = (dl_at - mono_s()) * 1000.0;
    return left > 0 ? left : 0;
}

double deadline_length_s(void)
{
    return dl_len;
}
