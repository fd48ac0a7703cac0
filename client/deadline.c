/* deadline: a per-thread time limit (see deadline.h). */
#include "deadline.h"

#include "util.h"

static __thread double dl_at;  /* CLOCK_MONOTONIC seconds; 0 = none */
static __thread double dl_len; /* seconds given to deadline_begin */

void deadline_begin(double seconds)
{
    dl_len = seconds > 0 ? seconds : 0;
    dl_at = seconds > 0 ? util_now_s() + seconds : 0;
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
    double left = (dl_at - util_now_s()) * 1000.0;
    return left > 0 ? left : 0;
}

double deadline_length_s(void)
{
    return dl_len;
}
