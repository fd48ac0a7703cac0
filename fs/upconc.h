/* upconc: how many uploads run at once when `uploads=N` is not given.
 *
 * On a long, thin wire (tens of ms per request, small files) more uploads in
 * flight raise throughput almost linearly; when the CPU or the bandwidth is
 * the limit they only add contention. upconc measures the uploads' throughput
 * over short windows and climbs: it tries 1.5x more, keeps the step when
 * files/s or bytes/s rose by 10%, else goes back; it also tries 1.5x fewer
 * and keeps that when throughput held (within 5%). Windows in which the queue
 * could not fill the limit say nothing and are skipped. Not thread-safe: the
 * caller serialises (the uploader's lock).
 */
#ifndef DICOMFS_UPCONC_H
#define DICOMFS_UPCONC_H

#include <stdbool.h>
#include <stdint.h>

typedef struct upconc upconc;

/* fixed > 0: always that many (uploads=N given). Else adaptive within
 * [lo, hi], starting at start. */
upconc *upconc_new(int fixed, int start, int lo, int hi);
void upconc_free(upconc *c);

/* The current limit of uploads in flight. */
int upconc_limit(const upconc *c);

/* The most there may ever be (the worker threads to start). */
int upconc_max(const upconc *c);

/* Nothing queued or running: the next burst of work (maybe of other sizes,
 * to another wire) starts again from the start value. */
void upconc_idle(upconc *c);

/* One upload of `bytes` ended at `now` (seconds, monotonic); `backlog`:
 * at least `limit` uploads were running or queued when it ended. */
void upconc_done(upconc *c, double now, uint64_t bytes, bool backlog);

#endif
