/* error: the client library's error classes and detail (see error.h). */
#include "error.h"

#include <stdio.h>
#include <string.h>

int cerr_vset(cerr_detail *err, int cls, long http_status, const char *code, const char *fmt,
              va_list ap)
{
    if (!err)
        return cls;
    memset(err, 0, sizeof *err);
    err->cls = cls;
    err->http_status = http_status;
    snprintf(err->status, sizeof err->status, "%s", code ? code : "");
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    return cls;
}

int cerr_set(cerr_detail *err, int cls, long http_status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cerr_vset(err, cls, http_status, code, fmt, ap);
    va_end(ap);
    return cls;
}

int cerr_from_http_status(long s)
{
    switch (s) {
    case 400:
    case 411:
    case 413:
    case 414:
        return CERR_INVALID;
    case 401:
    case 403:
        return CERR_PERMISSION;
    case 404:
    case 410:
        return CERR_NOT_FOUND;
    case 409:
        return CERR_EXISTS;
    case 412:
        return CERR_PRECONDITION;
    case 429:
        return CERR_QUOTA;
    case 501:
        return CERR_UNSUPPORTED;
    default:
        return s >= 500 && s <= 599 ? CERR_UNAVAILABLE : CERR_SERVER;
    }
}

int cerr_from_rpc_code(int code)
{
    switch (code) {
    case 0:
        return CERR_OK;
    case 3:  /* INVALID_ARGUMENT */
    case 9:  /* FAILED_PRECONDITION: an operation's, not an HTTP 412 */
    case 11: /* OUT_OF_RANGE */
        return CERR_INVALID;
    case 4:
        return CERR_TIMEOUT;
    case 5:
        return CERR_NOT_FOUND;
    case 6:
        return CERR_EXISTS;
    case 7:
        return CERR_PERMISSION;
    case 8:
        return CERR_QUOTA;
    case 12:
        return CERR_UNSUPPORTED;
    case 13:
    case 14:
        return CERR_UNAVAILABLE;
    case 16:
        return CERR_AUTH;
    default: /* CANCELLED, UNKNOWN, ABORTED, DATA_LOSS, ... */
        return CERR_SERVER;
    }
}

const char *cerr_name(int cls)
{
    static const char *const names[CERR_CLASS_COUNT] = {
        "OK",          "NOMEM",       "INVALID",    "IO",        "NETWORK",  "TIMEOUT",
        "AUTH",        "TOKEN",       "PERMISSION", "NOT_FOUND", "EXISTS",   "PRECONDITION",
        "QUOTA",       "UNAVAILABLE", "SERVER",     "MALFORMED", "CHECKSUM", "TRUNCATED",
        "UNSUPPORTED", "WRONG_TYPE",  "MISSING",
    };
    return cls <= 0 && cls > -CERR_CLASS_COUNT ? names[-cls] : "UNKNOWN";
}
