/* util: the one home of small helpers shared by client/ (http, auth, gcs,
 * healthcare), fs/ and the emulator (contrib/emulator), so each rule lives
 * in one place: formatting, files, hashes, base64. No module-specific error
 * codes here; file helpers return 0 or -errno. */
#ifndef DICOMFS_UTIL_H
#define DICOMFS_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "http.h"

struct cJSON;

/* The endpoint a client uses: explicit when non-empty, else the environment
 * variable env_name when set and non-empty, else dflt; passed through
 * normalize (which returns a malloc'ed string or NULL). */
char *util_endpoint(const char *explicit_ep, const char *env_name, const char *dflt,
                    char *(*normalize)(const char *ep));

/* ep with a scheme when it has none: http:// for a loopback address (an
 * emulator's "localhost:8080"), https:// for anything else, so that no
 * token goes out in clear text. malloc'ed, or NULL. */
char *util_with_scheme(const char *ep);

/* Paging: after a page was delivered, its "nextPageToken" replaces *token
 * (malloc'ed; freed and set NULL when there is none or it is empty). */
enum {
    UTIL_PAGE_LAST = 0,     /* no further page */
    UTIL_PAGE_NEXT = 1,     /* *token holds the next page's token */
    UTIL_PAGE_REPEATED = 2, /* the token equals the previous one: would loop forever */
    UTIL_PAGE_NOMEM = 3,
};
int util_next_page_token(const struct cJSON *page, char **token);

/* Reads up to len bytes from fd starting at off (pread, EINTR retried) and
 * returns how many arrived: fewer only at end of file or on a read error. */
size_t util_pread_full(int fd, void *buf, size_t len, off_t off);

/* The project's asprintf: a malloc'ed formatted string, or NULL. */
char *util_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *util_vasprintf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));

/* Room for one more element in a growing array of elem-byte elements, n of
 * them in use and *cap allocated: v itself when there is room, else v
 * reallocated to twice *cap (first when empty) with *cap updated; NULL when
 * out of memory (v stays valid and *cap unchanged). */
void *util_grow(void *v, size_t n, size_t *cap, size_t elem, size_t first);

/* mkdir -p: creates path and its missing parents with mode. 0 or -errno. */
int util_mkdirs(const char *path, mode_t mode);

/* Replaces path with len bytes of data through a unique temporary file in
 * the same directory and rename(2), so readers see the old or the new
 * content, never a part. File mode is mode. No fsync: callers that need
 * durability across power loss sync themselves. 0 or -errno. */
int util_write_atomic(const char *path, const void *data, size_t len, mode_t mode);
/* util_write_atomic with an fsync of the file before the rename, for
 * records that must survive a crash of the machine. 0 or -errno. */
int util_write_durable(const char *path, const void *data, size_t len, mode_t mode);

/* FNV-1a (64-bit) over bytes or a NUL-terminated string, continuing from
 * h (UTIL_FNV1A_INIT to start): a fast non-cryptographic hash for tables.
 * UTIL_FNV1A_INIT is the seed every former copy used, not the standard
 * offset basis 14695981039346656037 (a digit short): kept, because the
 * emulator's project numbers derive from it and must not change. */
#define UTIL_FNV1A_INIT 1469598103934665603ull
uint64_t util_fnv1a(uint64_t h, const void *data, size_t len);
uint64_t util_fnv1a_str(uint64_t h, const char *s);

/* RFC 3339 UTC time "YYYY-MM-DDTHH:MM:SS[.fff|.fffffffff]Z" with digits
 * (0, 3 or 9) of fraction taken from nsec. */
void util_rfc3339(char *buf, size_t len, time_t sec, long nsec, int digits);
/* The same instant in ISO 8601 basic format, "YYYYMMDDTHHMMSS[.fff]Z": no
 * separators, so it fits in names (batch and run ids) and sorts by age. */
void util_utc_basic(char *buf, size_t len, time_t sec, long nsec, int digits);

/* CLOCK_MONOTONIC in seconds (for deadlines and time-to-live) and in
 * nanoseconds (for pacing, where a double would round). */
double util_now_s(void);
int64_t util_mono_ns(void);
/* The absolute time seconds from now on clock, for pthread_cond_timedwait
 * (CLOCK_REALTIME unless the condition variable was set to another). */
struct timespec util_timespec_in(clockid_t clock, double seconds);

/* Base64 (RFC 4648): url selects the URL-safe alphabet without padding.
 * Returns a malloc'ed string or NULL. */
char *util_b64_encode(const void *data, size_t len, bool url);
/* Decodes either alphabet, padding optional. Returns the decoded length, or
 * -1 on a bad character, a bad length or more than outcap bytes. */
long util_b64_decode(const char *in, size_t inlen, unsigned char *out, size_t outcap);

/* CRC32C (Castagnoli), as Cloud Storage reports it; chain by passing the
 * previous result (0 to start). SSE4.2 when the CPU has it. */
uint32_t util_crc32c(uint32_t crc, const void *data, size_t len);

#endif
