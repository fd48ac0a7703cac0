/* error: the one error type of the client library (libgit2's model).
 *
 * Every client function that can fail returns CERR_OK (0) or a negative
 * error class (CERR_*), and fills a cerr_detail: the class again, the HTTP
 * status, Google's canonical status name and a message. The classes are
 * negative so that a list callback's own non-zero "stop" value (say 1) passes
 * through a list call unchanged and is never mistaken for a class; fs/ maps
 * a class to an errno in one place (fs/errmap.h).
 *
 * Why a per-call out-parameter and no thread-local "last error": a failure
 * often travels (the uploader keeps a batch's error to write its cause into
 * STORE/status later, auth hands a refresh's error to every thread waiting
 * on it), and calls run on worker threads; an explicit detail goes where
 * the caller puts it and is never overwritten by an unrelated call in
 * between. A NULL detail is accepted by the setters below.
 */
#ifndef DICOMFS_ERROR_H
#define DICOMFS_ERROR_H

#include <stdarg.h>

/* What kind of trouble an error is. Callers decide on the class (retry,
 * give up, which errno); the detail says what and where for the log. */
enum {
    CERR_OK = 0,
    CERR_NOMEM = -1,         /* out of memory, or a value does not fit a caller's buffer */
    CERR_INVALID = -2,       /* bad arguments, a request the server calls invalid (400),
                                or a credentials file that cannot be read or used */
    CERR_IO = -3,            /* reading or writing a local file descriptor failed */
    CERR_NETWORK = -4,       /* no answer: connection refused or cut, TLS, transfer timeout */
    CERR_TIMEOUT = -5,       /* the calling thread's deadline passed (deadline.h), or a
                                wait for an operation ran out */
    CERR_AUTH = -6,          /* the credentials were refused: a person must fix them */
    CERR_TOKEN = -7,         /* no access token (its endpoint unreachable or failing):
                                passes by itself */
    CERR_PERMISSION = -8,    /* access denied (403, or 401 to a request without a token) */
    CERR_NOT_FOUND = -9,     /* no such resource (404, 410), or no credentials anywhere */
    CERR_EXISTS = -10,       /* it exists already (409) */
    CERR_PRECONDITION = -11, /* a conditional request's condition failed (412) */
    CERR_QUOTA = -12,        /* quota or rate limit exhausted (429) */
    CERR_UNAVAILABLE = -13,  /* the server failed (5xx): try again later */
    CERR_SERVER = -14,       /* any other error status the server answered */
    CERR_MALFORMED = -15,    /* bytes break their format's rules: a response not of the shape
                                the API promises, a DICOM file, a multipart body, a filter */
    CERR_CHECKSUM = -16,     /* the server's CRC32C or size differs from what was sent */
    CERR_TRUNCATED = -17,    /* input ends inside a structure (a DICOM element) */
    CERR_UNSUPPORTED = -18,  /* a valid variant this code cannot use (transfer syntax, key),
                                or a method the server does not implement (501) */
    CERR_WRONG_TYPE = -19,   /* not the expected kind of input at all (no DICOM preamble) */
    CERR_MISSING = -20,      /* a required field is absent (a DICOM UID) */
};
#define CERR_CLASS_COUNT 21

/* One error's detail. Filled for every failure; http_status is 0 when no
 * HTTP status was involved (also when no token could be obtained: the token
 * endpoint's status is in the message, never in http_status). */
typedef struct cerr_detail {
    int cls;           /* CERR_*, the value the call returned */
    long http_status;  /* e.g. 404; 0 for errors without an answer */
    int curl_code;     /* CURLcode for transport errors, else 0 */
    char status[40];   /* canonical code name: "NOT_FOUND", "RESOURCE_EXHAUSTED", ... */
    char reason[64];   /* GCS errors[0].reason or ErrorInfo.reason, may be empty */
    char message[512]; /* what happened and where, from the server, libcurl or the caller */
} cerr_detail;

/* Clears *err (NULL: nothing) and fills class, status, canonical code and a
 * printf-formatted message (truncated to fit). Returns cls. */
int cerr_set(cerr_detail *err, int cls, long http_status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
int cerr_vset(cerr_detail *err, int cls, long http_status, const char *code, const char *fmt,
              va_list ap) __attribute__((format(printf, 5, 0)));

/* The class of an HTTP error status (>= 400; anything else: CERR_SERVER).
 * 401 is CERR_PERMISSION here: http.c makes it CERR_AUTH when it refused a
 * freshly fetched token. */
int cerr_from_http_status(long http_status);

/* The class of a google.rpc.Code (an operation's error.code; 0: CERR_OK). */
int cerr_from_rpc_code(int code);

/* The class's name without prefix ("NOT_FOUND"), for logs and tests. */
const char *cerr_name(int cls);

#endif
