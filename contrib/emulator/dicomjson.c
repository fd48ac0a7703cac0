/* dicomjson: the emulator's own bounded DICOM element walker and the DICOM
 * JSON model (PS3.18 F.2). Independent of client/dicom.c on purpose: the
 * emulator needs every element, not only the UIDs, and is checked against
 * pydicom in the tests. Every length is checked against the input; nesting
 * and element counts are bounded.
 */
#include <ctype.h>
#include <errno.h>
#include <iconv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "util.h"
#include "hc_internal.h"

#define DJ_MAX_DEPTH 16
#define DJ_MAX_ELEMS 1000000
#define DJ_UNDEF 0xFFFFFFFFu
#define TAG(g, e) (((uint32_t)(g) << 16) | (uint32_t)(e))
#define TAG_ITEM 0xFFFEE000u
#define TAG_ITEM_END 0xFFFEE00Du
#define TAG_SEQ_END 0xFFFEE0DDu
#define TAG_PIXEL 0x7FE00010u

/* ---- dictionary (the attributes the emulator needs by name) ---- */
static const struct dj_dict {
    uint32_t tag;
    const char *vr;
    const char *kw;
} dict[] = {
    {0x00020000, "UL", "FileMetaInformationGroupLength"},
    {0x00020001, "OB", "FileMetaInformationVersion"},
    {0x00020002, "UI", "MediaStorageSOPClassUID"},
    {0x00020003, "UI", "MediaStorageSOPInstanceUID"},
    {0x00020010, "UI", "TransferSyntaxUID"},
    {0x00020012, "UI", "ImplementationClassUID"},
    {0x00020013, "SH", "ImplementationVersionName"},
    {0x00080005, "CS", "SpecificCharacterSet"},
    {0x00080008, "CS", "ImageType"},
    {0x00080012, "DA", "InstanceCreationDate"},
    {0x00080013, "TM", "InstanceCreationTime"},
    {0x00080016, "UI", "SOPClassUID"},
    {0x00080018, "UI", "SOPInstanceUID"},
    {0x00080020, "DA", "StudyDate"},
    {0x00080021, "DA", "SeriesDate"},
    {0x00080022, "DA", "AcquisitionDate"},
    {0x00080023, "DA", "ContentDate"},
    {0x00080030, "TM", "StudyTime"},
    {0x00080031, "TM", "SeriesTime"},
    {0x00080032, "TM", "AcquisitionTime"},
    {0x00080033, "TM", "ContentTime"},
    {0x00080050, "SH", "AccessionNumber"},
    {0x00080056, "CS", "InstanceAvailability"},
    {0x00080060, "CS", "Modality"},
    {0x00080061, "CS", "ModalitiesInStudy"},
    {0x00080064, "CS", "ConversionType"},
    {0x00080070, "LO", "Manufacturer"},
    {0x00080080, "LO", "InstitutionName"},
    {0x00080090, "PN", "ReferringPhysicianName"},
    {0x00080201, "SH", "TimezoneOffsetFromUTC"},
    {0x00081030, "LO", "StudyDescription"},
    {0x0008103E, "LO", "SeriesDescription"},
    {0x00081090, "LO", "ManufacturerModelName"},
    {0x00081150, "UI", "ReferencedSOPClassUID"},
    {0x00081155, "UI", "ReferencedSOPInstanceUID"},
    {0x00081190, "UR", "RetrieveURL"},
    {0x00081197, "US", "FailureReason"},
    {0x00081198, "SQ", "FailedSOPSequence"},
    {0x00081199, "SQ", "ReferencedSOPSequence"},
    {0x00100010, "PN", "PatientName"},
    {0x00100020, "LO", "PatientID"},
    {0x00100030, "DA", "PatientBirthDate"},
    {0x00100040, "CS", "PatientSex"},
    {0x00101010, "AS", "PatientAge"},
    {0x00180015, "CS", "BodyPartExamined"},
    {0x00180050, "DS", "SliceThickness"},
    {0x00200010, "SH", "StudyID"},
    {0x0020000D, "UI", "StudyInstanceUID"},
    {0x0020000E, "UI", "SeriesInstanceUID"},
    {0x00200011, "IS", "SeriesNumber"},
    {0x00200012, "IS", "AcquisitionNumber"},
    {0x00200013, "IS", "InstanceNumber"},
    {0x00200020, "CS", "PatientOrientation"},
    {0x00200032, "DS", "ImagePositionPatient"},
    {0x00200037, "DS", "ImageOrientationPatient"},
    {0x00200052, "UI", "FrameOfReferenceUID"},
    {0x00201206, "IS", "NumberOfStudyRelatedSeries"},
    {0x00201208, "IS", "NumberOfStudyRelatedInstances"},
    {0x00201209, "IS", "NumberOfSeriesRelatedInstances"},
    {0x00280002, "US", "SamplesPerPixel"},
    {0x00280004, "CS", "PhotometricInterpretation"},
    {0x00280006, "US", "PlanarConfiguration"},
    {0x00280008, "IS", "NumberOfFrames"},
    {0x00280010, "US", "Rows"},
    {0x00280011, "US", "Columns"},
    {0x00280030, "DS", "PixelSpacing"},
    {0x00280100, "US", "BitsAllocated"},
    {0x00280101, "US", "BitsStored"},
    {0x00280102, "US", "HighBit"},
    {0x00280103, "US", "PixelRepresentation"},
    {0x00281050, "DS", "WindowCenter"},
    {0x00281051, "DS", "WindowWidth"},
    {0x00281052, "DS", "RescaleIntercept"},
    {0x00281053, "DS", "RescaleSlope"},
    {0x00321060, "LO", "RequestedProcedureDescription"},
    {0x00400244, "DA", "PerformedProcedureStepStartDate"},
    {0x00400245, "TM", "PerformedProcedureStepStartTime"},
    {0x00400275, "SQ", "RequestAttributesSequence"},
    {0x7FE00010, "OW", "PixelData"},
};

static const struct dj_dict *dict_by_tag(uint32_t tag)
{
    for (size_t i = 0; i < sizeof dict / sizeof dict[0]; i++)
        if (dict[i].tag == tag)
            return &dict[i];
    return NULL;
}

uint32_t dj_keyword_tag(const char *kw)
{
    for (size_t i = 0; i < sizeof dict / sizeof dict[0]; i++)
        if (strcmp(dict[i].kw, kw) == 0)
            return dict[i].tag;
    return 0;
}

const char *dj_tag_keyword(uint32_t tag)
{
    const struct dj_dict *d = dict_by_tag(tag);
    return d ? d->kw : NULL;
}

const char *dj_tag_vr(uint32_t tag)
{
    const struct dj_dict *d = dict_by_tag(tag);
    return d ? d->vr : NULL;
}

uint32_t dj_parse_tag(const char *s)
{
    if (strlen(s) == 8) {
        char *end;
        unsigned long v = strtoul(s, &end, 16);
        if (*end == '\0' && isxdigit((unsigned char)s[0]))
            return (uint32_t)v;
    }
    return dj_keyword_tag(s);
}

void dj_tag_hex(uint32_t tag, char out[9])
{
    snprintf(out, 9, "%08X", tag);
}

/* ---- reader ---- */
typedef struct rd {
    const uint8_t *p;
    size_t len, pos;
    enum dj_enc enc;
    char *why;
    size_t whylen;
    size_t *count;
    uint32_t stop_tag; /* top level: stop before the first tag >= this (0: none) */
    bool stopped;      /* ... and did */
    size_t nonzero;    /* a non-zero byte seen by zero_padding (0: none yet) */
} rd;

static uint16_t u16(const uint8_t *p, bool be)
{
    return be ? (uint16_t)(p[0] << 8 | p[1]) : (uint16_t)(p[1] << 8 | p[0]);
}

static uint32_t u32(const uint8_t *p, bool be)
{
    return be ? ((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3])
              : ((uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0]);
}

static int fail(rd *r, const char *msg)
{
    if (r->why)
        snprintf(r->why, r->whylen, "%s at offset %zu", msg, r->pos);
    return -1;
}

bool dj_long_vr(const char *vr)
{
    static const char *const l[] = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ",
                                    "UC", "UN", "UR", "UT", "SV", "UV"};
    for (size_t i = 0; i < sizeof l / sizeof l[0]; i++)
        if (strcmp(vr, l[i]) == 0)
            return true;
    return false;
}

static void ds_free(dj_ds *ds);

static dj_elem *ds_push(dj_ds *ds)
{
    dj_elem *n = util_grow(ds->el, ds->n, &ds->cap, sizeof *n, 16);
    if (!n)
        return NULL;
    ds->el = n;
    dj_elem *e = &ds->el[ds->n++];
    memset(e, 0, sizeof *e);
    return e;
}

static int parse_ds(rd *r, size_t end, bool until_item_end, int depth, dj_ds *ds);

/* Reads a tag and (for items) its length. */
static int read_tag(rd *r, size_t end, uint32_t *tag)
{
    bool be = r->enc == DJ_EXPLICIT_BE;
    if (r->pos > end || end - r->pos < 4)
        return fail(r, "truncated tag");
    *tag = (uint32_t)u16(r->p + r->pos, be) << 16 | u16(r->p + r->pos + 2, be);
    r->pos += 4;
    return 0;
}

static int parse_items(rd *r, dj_elem *e, size_t end, bool undefined, int depth)
{
    bool be = r->enc == DJ_EXPLICIT_BE;
    while (r->pos < end) {
        uint32_t tag;
        if (read_tag(r, end, &tag) < 0)
            return -1;
        if (end - r->pos < 4)
            return fail(r, "truncated item length");
        uint32_t ilen = u32(r->p + r->pos, be);
        r->pos += 4;
        if (tag == TAG_SEQ_END) {
            if (!undefined)
                return fail(r, "sequence delimiter in a defined-length sequence");
            return 0;
        }
        if (tag != TAG_ITEM)
            return fail(r, "expected an item tag");
        dj_ds *item = calloc(1, sizeof *item);
        if (!item)
            return fail(r, "out of memory");
        dj_ds **ni = realloc(e->items, (e->n_items + 1) * sizeof *ni);
        if (!ni) {
            free(item);
            return fail(r, "out of memory");
        }
        e->items = ni;
        e->items[e->n_items++] = item;
        if (ilen == DJ_UNDEF) {
            if (parse_ds(r, end, true, depth + 1, item) < 0)
                return -1;
        } else {
            if (ilen > end - r->pos)
                return fail(r, "item runs past its sequence");
            if (parse_ds(r, r->pos + ilen, false, depth + 1, item) < 0)
                return -1;
        }
    }
    if (undefined)
        return fail(r, "missing sequence delimiter");
    return 0;
}

static int parse_frags(rd *r, dj_elem *e)
{
    bool be = r->enc == DJ_EXPLICIT_BE;
    e->encapsulated = true;
    for (;;) {
        uint32_t tag;
        if (read_tag(r, r->len, &tag) < 0)
            return -1;
        if (r->len - r->pos < 4)
            return fail(r, "truncated fragment length");
        uint32_t flen = u32(r->p + r->pos, be);
        r->pos += 4;
        if (tag == TAG_SEQ_END)
            return 0;
        if (tag != TAG_ITEM || flen == DJ_UNDEF || flen > r->len - r->pos)
            return fail(r, "bad pixel data fragment");
        const uint8_t **nf = realloc(e->frags, (e->n_frags + 1) * sizeof *nf);
        if (!nf)
            return fail(r, "out of memory");
        e->frags = nf;
        size_t *nl = realloc(e->frag_lens, (e->n_frags + 1) * sizeof *nl);
        if (!nl)
            return fail(r, "out of memory");
        e->frag_lens = nl;
        e->frags[e->n_frags] = r->p + r->pos;
        e->frag_lens[e->n_frags++] = flen;
        r->pos += flen;
    }
}

static int parse_elem(rd *r, size_t end, int depth, dj_ds *ds, uint32_t tag)
{
    bool be = r->enc == DJ_EXPLICIT_BE;
    char vr[3] = "UN";
    uint32_t vlen;
    if (r->enc == DJ_IMPLICIT_LE) {
        if (end - r->pos < 4)
            return fail(r, "truncated length");
        vlen = u32(r->p + r->pos, false);
        r->pos += 4;
        const char *dv = dj_tag_vr(tag);
        if (dv)
            memcpy(vr, dv, 3);
        if (vlen == DJ_UNDEF && tag != TAG_PIXEL)
            memcpy(vr, "SQ", 3);
    } else {
        if (end - r->pos < 4)
            return fail(r, "truncated element header");
        vr[0] = (char)r->p[r->pos];
        vr[1] = (char)r->p[r->pos + 1];
        if (!isupper((unsigned char)vr[0]) || !isupper((unsigned char)vr[1]))
            return fail(r, "invalid VR");
        r->pos += 2;
        if (dj_long_vr(vr)) {
            if (end - r->pos < 6)
                return fail(r, "truncated length");
            vlen = u32(r->p + r->pos + 2, be);
            r->pos += 6;
        } else {
            vlen = u16(r->p + r->pos, be);
            r->pos += 2;
        }
    }
    if (++*r->count > DJ_MAX_ELEMS)
        return fail(r, "too many elements");
    dj_elem *e = ds_push(ds);
    if (!e)
        return fail(r, "out of memory");
    e->tag = tag;
    memcpy(e->vr, vr, 3);
    if (vlen == DJ_UNDEF) {
        if (tag == TAG_PIXEL)
            return parse_frags(r, e);
        if (strcmp(vr, "SQ") != 0 && strcmp(vr, "UN") != 0)
            return fail(r, "undefined length on a non-sequence");
        if (depth >= DJ_MAX_DEPTH)
            return fail(r, "sequences nested too deeply");
        memcpy(e->vr, "SQ", 3);
        enum dj_enc saved = r->enc;
        if (strcmp(vr, "UN") == 0)
            r->enc = DJ_IMPLICIT_LE; /* PS3.5 6.2.2: UN undefined length is implicit LE */
        int rc = parse_items(r, e, end, true, depth);
        r->enc = saved;
        return rc;
    }
    if (vlen > end - r->pos)
        return fail(r, "value runs past the end");
    if (strcmp(vr, "SQ") == 0) {
        if (depth >= DJ_MAX_DEPTH)
            return fail(r, "sequences nested too deeply");
        return parse_items(r, e, r->pos + vlen, false, depth);
    }
    e->val = r->p + r->pos;
    e->len = vlen;
    r->pos += vlen;
    return 0;
}

/* True when the rest of the top-level data set is zero padding that DCMTK and
 * pydicom both read as empty (0000,0000) elements: all zero, a multiple of 8
 * bytes (client/dicom.c accepts the same files). */
static bool zero_padding(rd *r, size_t end)
{
    if ((end - r->pos) % 8 != 0 || r->pos < r->nonzero)
        return false;
    for (size_t i = r->pos; i < end; i++) {
        if (r->p[i] != 0) {
            r->nonzero = i; /* no rescan before this byte: linear in all */
            return false;
        }
    }
    return true;
}

static int parse_ds(rd *r, size_t end, bool until_item_end, int depth, dj_ds *ds)
{
    while (r->pos < end) {
        if (depth == 0 && !until_item_end && r->p[r->pos] == 0 && zero_padding(r, end))
            return 0;
        size_t at = r->pos;
        uint32_t tag;
        if (read_tag(r, end, &tag) < 0)
            return -1;
        if (tag == TAG_ITEM_END) {
            if (!until_item_end)
                return fail(r, "unexpected item delimiter");
            if (end - r->pos < 4)
                return fail(r, "truncated item delimiter");
            r->pos += 4;
            return 0;
        }
        if ((tag >> 16) == 0xFFFE) {
            r->pos = at;
            return fail(r, "unexpected delimiter");
        }
        if (depth == 0 && r->stop_tag && tag >= r->stop_tag) {
            r->pos = at;
            r->stopped = true;
            return 0;
        }
        if (parse_elem(r, end, depth, ds, tag) < 0)
            return -1;
    }
    if (until_item_end)
        return fail(r, "missing item delimiter");
    return 0;
}

static void ds_free(dj_ds *ds)
{
    if (!ds)
        return;
    for (size_t i = 0; i < ds->n; i++) {
        for (size_t j = 0; j < ds->el[i].n_items; j++)
            ds_free(ds->el[i].items[j]);
        free(ds->el[i].items);
        free(ds->el[i].frags);
        free(ds->el[i].frag_lens);
    }
    free(ds->el);
    free(ds);
}

void dj_file_free(dj_file *f)
{
    ds_free(f->meta);
    ds_free(f->ds);
    free(f->inflated);
    memset(f, 0, sizeof *f);
}

static int inflate_all(const uint8_t *in, size_t len, uint8_t **out, size_t *outlen)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, -15) != Z_OK)
        return -1;
    size_t cap = len * 4 + 1024, n = 0;
    uint8_t *buf = malloc(cap);
    if (!buf) {
        inflateEnd(&z);
        return -1;
    }
    z.next_in = (uint8_t *)in;
    z.avail_in = (uInt)len;
    int rc;
    do {
        if (n == cap) {
            if (cap > ((size_t)1 << 32)) {
                rc = Z_MEM_ERROR;
                break;
            }
            uint8_t *nb = realloc(buf, cap * 2);
            if (!nb) {
                rc = Z_MEM_ERROR;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        z.next_out = buf + n;
        z.avail_out = (uInt)(cap - n > 0x40000000 ? 0x40000000 : cap - n);
        size_t before = z.avail_out;
        rc = inflate(&z, Z_NO_FLUSH);
        n += before - z.avail_out;
    } while (rc == Z_OK);
    inflateEnd(&z);
    if (rc != Z_STREAM_END && !(rc == Z_BUF_ERROR && z.avail_in == 0)) {
        free(buf);
        return -1;
    }
    *out = buf;
    *outlen = n;
    return 0;
}

static int parse_file(const uint8_t *buf, size_t len, uint32_t stop_tag, dj_file *out, char *why,
                      size_t whylen)
{
    memset(out, 0, sizeof *out);
    if (len < 132 || memcmp(buf + 128, "DICM", 4) != 0) {
        snprintf(why, whylen, "not a DICOM Part 10 file (no DICM at offset 128)");
        return -1;
    }
    size_t count = 0;
    rd r = {.p = buf,
            .len = len,
            .pos = 132,
            .enc = DJ_EXPLICIT_LE,
            .why = why,
            .whylen = whylen,
            .count = &count};
    out->meta = calloc(1, sizeof *out->meta);
    out->ds = calloc(1, sizeof *out->ds);
    if (!out->meta || !out->ds)
        goto bad;
    /* The meta group: explicit LE elements of group 0002. */
    while (r.pos + 4 <= len && u16(buf + r.pos, false) == 0x0002) {
        uint32_t tag = 0;
        read_tag(&r, len, &tag);
        if (parse_elem(&r, len, 0, out->meta, tag) < 0)
            goto bad;
    }
    const dj_elem *ts = dj_find(out->meta, 0x00020010);
    if (!ts) {
        snprintf(why, whylen, "no TransferSyntaxUID (0002,0010) in the meta group");
        goto bad;
    }
    dj_str(ts, out->ts, sizeof out->ts);
    const uint8_t *dp = buf + r.pos;
    size_t dlen = len - r.pos;
    if (strcmp(out->ts, "1.2.840.10008.1.2") == 0) {
        out->enc = DJ_IMPLICIT_LE;
    } else if (strcmp(out->ts, "1.2.840.10008.1.2.2") == 0) {
        out->enc = DJ_EXPLICIT_BE;
    } else if (strcmp(out->ts, "1.2.840.10008.1.2.1.99") == 0) {
        size_t n;
        if (inflate_all(dp, dlen, &out->inflated, &n) < 0) {
            snprintf(why, whylen, "deflated data set does not inflate");
            goto bad;
        }
        dp = out->inflated;
        dlen = n;
        out->enc = DJ_EXPLICIT_LE;
    } else {
        out->enc = DJ_EXPLICIT_LE;
        out->compressed = strcmp(out->ts, "1.2.840.10008.1.2.1") != 0;
    }
    size_t base = (size_t)(dp - buf);
    rd d = {.p = dp,
            .len = dlen,
            .pos = 0,
            .enc = out->enc,
            .why = why,
            .whylen = whylen,
            .count = &count,
            .stop_tag = stop_tag};
    if (parse_ds(&d, dlen, false, 0, out->ds) < 0) {
        if (!out->inflated) {
            /* report the file offset, not the data-set offset */
            char tmp[256];
            snprintf(tmp, sizeof tmp, "%s (data set starts at %zu)", why, base);
            snprintf(why, whylen, "%s", tmp);
        }
        goto bad;
    }
    return d.stopped ? 1 : 0;
bad:
    dj_file_free(out);
    return -1;
}

int dj_parse_file(const uint8_t *buf, size_t len, dj_file *out, char *why, size_t whylen)
{
    return parse_file(buf, len, 0, out, why, whylen) < 0 ? -1 : 0;
}

int dj_parse_head(const uint8_t *buf, size_t len, uint32_t stop_tag, dj_file *out, char *why,
                  size_t whylen)
{
    return parse_file(buf, len, stop_tag, out, why, whylen);
}

const dj_elem *dj_find(const dj_ds *ds, uint32_t tag)
{
    if (!ds)
        return NULL;
    for (size_t i = 0; i < ds->n; i++)
        if (ds->el[i].tag == tag)
            return &ds->el[i];
    return NULL;
}

void dj_str(const dj_elem *e, char *buf, size_t buflen)
{
    buf[0] = '\0';
    if (!e || !e->val)
        return;
    size_t s = 0, n = e->len;
    while (s < n && e->val[s] == ' ')
        s++;
    size_t end = s;
    while (end < n && e->val[end] != '\\')
        end++;
    while (end > s && (e->val[end - 1] == ' ' || e->val[end - 1] == '\0'))
        end--;
    size_t c = end - s < buflen - 1 ? end - s : buflen - 1;
    memcpy(buf, e->val + s, c);
    buf[c] = '\0';
}

long dj_int(const dj_elem *e, enum dj_enc enc, long def)
{
    if (!e || !e->val)
        return def;
    bool be = enc == DJ_EXPLICIT_BE;
    if (strcmp(e->vr, "US") == 0 && e->len >= 2)
        return u16(e->val, be);
    if (strcmp(e->vr, "SS") == 0 && e->len >= 2)
        return (int16_t)u16(e->val, be);
    if (strcmp(e->vr, "UL") == 0 && e->len >= 4)
        return (long)u32(e->val, be);
    if (strcmp(e->vr, "SL") == 0 && e->len >= 4)
        return (int32_t)u32(e->val, be);
    if (strcmp(e->vr, "IS") == 0 || strcmp(e->vr, "DS") == 0) {
        char b[32];
        dj_str(e, b, sizeof b);
        char *end;
        long v = strtol(b, &end, 10);
        return end == b ? def : v;
    }
    if (strcmp(e->vr, "UN") == 0 && e->len == 2)
        return u16(e->val, false);
    return def;
}

/* ---- DICOM JSON ---- */
static bool is_string_vr(const char *vr)
{
    static const char *const s[] = {"AE", "AS", "CS", "DA", "DT", "LO", "LT",
                                    "SH", "ST", "TM", "UC", "UI", "UR", "UT"};
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++)
        if (strcmp(vr, s[i]) == 0)
            return true;
    return false;
}

static bool single_valued_text(const char *vr)
{
    return strcmp(vr, "LT") == 0 || strcmp(vr, "ST") == 0 || strcmp(vr, "UT") == 0 ||
           strcmp(vr, "UR") == 0;
}

static char *trimmed(const uint8_t *p, size_t n, bool lead)
{
    size_t s = 0;
    if (lead)
        while (s < n && p[s] == ' ')
            s++;
    while (n > s && (p[n - 1] == ' ' || p[n - 1] == '\0'))
        n--;
    char *out = malloc(n - s + 1);
    if (!out)
        return NULL;
    memcpy(out, p + s, n - s);
    out[n - s] = '\0';
    return out;
}

/* ---- text to UTF-8 (DICOM JSON text is UTF-8, PS3.18 F.2) ---- */

/* The iconv name of a single-byte or single-value Specific Character Set
 * (0008,0005); NULL for the default repertoire, UTF-8 and the ISO 2022 code
 * extensions, whose text is kept when it is valid UTF-8. */
static const char *charset_iconv(const char *term)
{
    static const struct {
        const char *dicom, *iconv;
    } map[] = {{"ISO_IR 100", "ISO-8859-1"}, {"ISO_IR 101", "ISO-8859-2"},
               {"ISO_IR 109", "ISO-8859-3"}, {"ISO_IR 110", "ISO-8859-4"},
               {"ISO_IR 144", "ISO-8859-5"}, {"ISO_IR 127", "ISO-8859-6"},
               {"ISO_IR 126", "ISO-8859-7"}, {"ISO_IR 138", "ISO-8859-8"},
               {"ISO_IR 148", "ISO-8859-9"}, {"ISO_IR 203", "ISO-8859-15"},
               {"ISO_IR 166", "TIS-620"},    {"ISO_IR 13", "SHIFT_JIS"},
               {"GB18030", "GB18030"},       {"GBK", "GBK"}};
    for (size_t i = 0; term && i < sizeof map / sizeof map[0]; i++)
        if (strcmp(term, map[i].dicom) == 0)
            return map[i].iconv;
    return NULL;
}

static bool valid_utf8(const unsigned char *s)
{
    while (*s) {
        unsigned c = *s++, n, lo = 0x80, hi = 0xBF;
        if (c < 0x80)
            continue;
        if (c >= 0xC2 && c <= 0xDF)
            n = 1;
        else if (c >= 0xE0 && c <= 0xEF)
            n = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        else if (c >= 0xF0 && c <= 0xF4)
            n = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        else
            return false;
        for (unsigned k = 0; k < n; k++, s++)
            if (*s < (k ? 0x80 : lo) || *s > (k ? 0xBF : hi))
                return false;
    }
    return true;
}

/* v (malloc'd) as UTF-8: converted from the character set cs (an iconv
 * name), or kept if it is valid UTF-8, or else read as ISO 8859-1 so the
 * JSON is valid whatever the bytes. Frees v when it returns another string. */
static char *to_utf8(char *v, const char *cs)
{
    size_t n = strlen(v), cap = 4 * n + 1;
    char *out = NULL;
    if (cs) {
        iconv_t cd = iconv_open("UTF-8", cs);
        if (cd != (iconv_t)-1) {
            out = malloc(cap);
            char *in = v, *o = out;
            size_t inleft = n, outleft = cap - 1;
            if (out && iconv(cd, &in, &inleft, &o, &outleft) != (size_t)-1) {
                *o = '\0';
            } else {
                free(out);
                out = NULL;
            }
            iconv_close(cd);
        }
    }
    if (!out && valid_utf8((const unsigned char *)v))
        return v;
    if (!out && (out = malloc(2 * n + 1)) != NULL) {
        size_t j = 0;
        for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
            if (*p >= 0x80)
                out[j++] = (char)(0xC0 | (*p >> 6)), out[j++] = (char)(0x80 | (*p & 0x3F));
            else
                out[j++] = (char)*p;
        }
        out[j] = '\0';
    }
    if (!out)
        return v;
    free(v);
    return out;
}

/* VRs whose text is in the Specific Character Set (PS3.5 6.1.2.3). */
static bool charset_vr(const char *vr)
{
    static const char *const s[] = {"LO", "LT", "PN", "SH", "ST", "UC", "UT"};
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++)
        if (strcmp(vr, s[i]) == 0)
            return true;
    return false;
}

/* Splits a string value on backslashes into a JSON array. */
static cJSON *string_values(const dj_elem *e, const char *cs)
{
    cJSON *arr = cJSON_CreateArray();
    bool single = single_valued_text(e->vr);
    bool num = strcmp(e->vr, "IS") == 0 || strcmp(e->vr, "DS") == 0;
    bool pn = strcmp(e->vr, "PN") == 0;
    size_t s = 0;
    while (s <= e->len) {
        size_t end = s;
        while (end < e->len && (single || e->val[end] != '\\'))
            end++;
        char *v = trimmed(e->val + s, end - s, !single);
        if (v)
            v = to_utf8(v, charset_vr(e->vr) ? cs : NULL);
        if (!v)
            break;
        cJSON *item;
        if (v[0] == '\0') {
            item = cJSON_CreateNull();
        } else if (num) {
            char *ep;
            double d = strtod(v, &ep);
            item = *ep == '\0' ? cJSON_CreateNumber(d) : cJSON_CreateString(v);
        } else if (pn) {
            item = cJSON_CreateObject();
            static const char *const grp[] = {"Alphabetic", "Ideographic", "Phonetic"};
            char *g = v;
            for (int k = 0; k < 3 && g; k++) {
                char *eq = strchr(g, '=');
                if (eq)
                    *eq = '\0';
                if (*g)
                    cJSON_AddStringToObject(item, grp[k], g);
                g = eq ? eq + 1 : NULL;
            }
        } else {
            item = cJSON_CreateString(v);
        }
        free(v);
        cJSON_AddItemToArray(arr, item);
        s = end + 1;
        if (end >= e->len)
            break;
    }
    return arr;
}

static cJSON *binary_numbers(const dj_elem *e, enum dj_enc enc)
{
    bool be = enc == DJ_EXPLICIT_BE;
    cJSON *arr = cJSON_CreateArray();
    const char *vr = e->vr;
    size_t w = 0;
    if (!strcmp(vr, "US") || !strcmp(vr, "SS"))
        w = 2;
    else if (!strcmp(vr, "UL") || !strcmp(vr, "SL") || !strcmp(vr, "FL") || !strcmp(vr, "AT"))
        w = 4;
    else
        w = 8;
    for (size_t i = 0; i + w <= e->len; i += w) {
        const uint8_t *p = e->val + i;
        cJSON *item;
        if (!strcmp(vr, "US"))
            item = cJSON_CreateNumber(u16(p, be));
        else if (!strcmp(vr, "SS"))
            item = cJSON_CreateNumber((int16_t)u16(p, be));
        else if (!strcmp(vr, "UL"))
            item = cJSON_CreateNumber(u32(p, be));
        else if (!strcmp(vr, "SL"))
            item = cJSON_CreateNumber((int32_t)u32(p, be));
        else if (!strcmp(vr, "AT")) {
            char hex[9];
            dj_tag_hex((uint32_t)u16(p, be) << 16 | u16(p + 2, be), hex);
            item = cJSON_CreateString(hex);
        } else if (!strcmp(vr, "FL")) {
            uint32_t v = u32(p, be);
            float f;
            memcpy(&f, &v, 4);
            item = cJSON_CreateNumber(f);
        } else {
            uint64_t v = be ? (uint64_t)u32(p, true) << 32 | u32(p + 4, true)
                            : (uint64_t)u32(p + 4, false) << 32 | u32(p, false);
            if (!strcmp(vr, "FD")) {
                double d;
                memcpy(&d, &v, 8);
                item = cJSON_CreateNumber(d);
            } else if (!strcmp(vr, "SV")) {
                item = cJSON_CreateNumber((double)(int64_t)v);
            } else {
                item = cJSON_CreateNumber((double)v);
            }
        }
        cJSON_AddItemToArray(arr, item);
    }
    return arr;
}

static bool is_number_vr(const char *vr)
{
    static const char *const s[] = {"US", "SS", "UL", "SL", "FL", "FD", "AT", "SV", "UV"};
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++)
        if (strcmp(vr, s[i]) == 0)
            return true;
    return false;
}

static cJSON *ds_json(const dj_ds *ds, enum dj_enc enc, const char *bulk_base, const char *cs);

static cJSON *elem_json(const dj_elem *e, enum dj_enc enc, const char *bulk_base, const char *cs)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "vr", e->vr);
    if (strcmp(e->vr, "SQ") == 0) {
        if (e->n_items) {
            cJSON *arr = cJSON_AddArrayToObject(o, "Value");
            for (size_t i = 0; i < e->n_items; i++)
                cJSON_AddItemToArray(arr, ds_json(e->items[i], enc, bulk_base, cs));
        }
        return o;
    }
    if (e->encapsulated || e->tag == TAG_PIXEL || (e->len > 65536 && !is_string_vr(e->vr))) {
        if (bulk_base) {
            char hex[9], *uri;
            dj_tag_hex(e->tag, hex);
            if (asprintf(&uri, "%s/bulkdata/%s", bulk_base, hex) > 0) {
                cJSON_AddStringToObject(o, "BulkDataURI", uri);
                free(uri);
            }
            return o;
        }
        cJSON_Delete(o);
        return NULL;
    }
    if (e->len == 0)
        return o;
    if (is_string_vr(e->vr) || !strcmp(e->vr, "PN") || !strcmp(e->vr, "IS") ||
        !strcmp(e->vr, "DS")) {
        cJSON_AddItemToObject(o, "Value", string_values(e, cs));
    } else if (is_number_vr(e->vr)) {
        cJSON_AddItemToObject(o, "Value", binary_numbers(e, enc));
    } else {
        char *b64 = util_b64_encode(e->val, e->len, false);
        if (b64) {
            cJSON_AddStringToObject(o, "InlineBinary", b64);
            free(b64);
        }
    }
    return o;
}

/* cs: the character set in force (an item without its own (0008,0005)
 * inherits its parent's). */
static cJSON *ds_json(const dj_ds *ds, enum dj_enc enc, const char *bulk_base, const char *cs)
{
    const dj_elem *sc = dj_find(ds, 0x00080005);
    if (sc) {
        char term[64];
        dj_str(sc, term, sizeof term);
        cs = charset_iconv(term);
    }
    cJSON *obj = cJSON_CreateObject();
    for (size_t i = 0; ds && i < ds->n; i++) {
        const dj_elem *e = &ds->el[i];
        if ((e->tag & 0xFFFF) == 0 || (e->tag >> 16) == 0x0002)
            continue; /* group lengths and the meta group are not part of the model */
        cJSON *v = elem_json(e, enc, bulk_base, cs);
        if (!v)
            continue;
        char hex[9];
        dj_tag_hex(e->tag, hex);
        cJSON_DeleteItemFromObjectCaseSensitive(obj, hex);
        cJSON_AddItemToObject(obj, hex, v);
    }
    dj_sort(obj);
    return obj;
}

cJSON *dj_to_json(const dj_ds *ds, enum dj_enc enc, const char *bulk_base)
{
    return ds_json(ds, enc, bulk_base, NULL);
}

static int cmp_items(const void *a, const void *b)
{
    const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
    return strcmp(x->string, y->string);
}

void dj_sort(cJSON *obj)
{
    size_t n = 0;
    for (cJSON *c = obj->child; c; c = c->next)
        n++;
    if (n < 2)
        return;
    cJSON **v = malloc(n * sizeof *v);
    if (!v)
        return;
    size_t i = 0;
    for (cJSON *c = obj->child; c; c = c->next)
        v[i++] = c;
    qsort(v, n, sizeof *v, cmp_items);
    for (i = 0; i < n; i++) {
        v[i]->prev = i ? v[i - 1] : v[n - 1]; /* cJSON: child->prev is the last item */
        v[i]->next = i + 1 < n ? v[i + 1] : NULL;
    }
    obj->child = v[0];
    free(v);
}
