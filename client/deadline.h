/* deadline: a per-thread time limit for the remote calls made on behalf of
 * one user request.
 *
 * The daemon sets it at the start of every FUSE callback (deadline_begin)
 * and clears it at the end (deadline_end); http_perform and auth_get_token
 * read it, so every request, retry, backoff and wait for a token made on
 * that thread meanwhile ends by then. Threads that never set one (uploads,
 * import starts, polls) have no limit: their calls keep the retry policy
 * of their client. Kept apart from http so that callers that know nothing
 * of HTTP can set it.
 */
#ifndef DICOMFS_DEADLINE_H
#define DICOMFS_DEADLINE_H

#include <stdbool.h>

/* The calling thread's calls must end within `seconds` from now (<= 0:
 * no limit). Replaces any deadline the thread had. */
void deadline_begin(double seconds);
/* Removes the calling thread's deadline. */
void deadline_end(void);
/* Milliseconds left before the calling thread's deadline: -1 when it has
 * none, 0 once it has passed. */
double deadline_remaining_ms(void);
/* The length given to the running deadline_begin, in seconds (0: none). */
double deadline_length_s(void);

#endif
