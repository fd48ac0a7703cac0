/* convert: transcoding for export and WADO.
 *
 * Owns re-encoding an uncompressed data set (implicit LE, explicit LE or BE,
 * deflated) as explicit VR little endian with a rebuilt meta group, raw
 * PixelData extraction, and rendering 8/16-bit MONOCHROME1/2 and 8-bit RGB
 * frames as PNG (libpng) or JPEG (libjpeg, quality 90). Of the compressed
 * (encapsulated) syntaxes only 8-bit JPEG baseline is decoded (libjpeg, to
 * RGB or MONOCHROME samples); conversions of others fail with a reason.
 */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <png.h>

#include "hc_internal.h"

#define EXPLICIT_LE "1.2.840.10008.1.2.1"
#define JPEG_BASELINE "1.2.840.10008.1.2.4.50"

int hc_buf_put(hc_buf *b, const void *data, size_t len)
{
    if (b->len + len > b->cap) {
        size_t nc = b->cap ? b->cap : 4096;
        while (nc < b->len + len)
            nc *= 2;
        uint8_t *n = realloc(b->p, nc);
        if (!n)
            return -1;
        b->p = n;
        b->cap = nc;
    }
    if (len && data) /* data NULL: reserve len bytes */
        memcpy(b->p + b->len, data, len);
    b->len += len;
    return 0;
}

static void put16(hc_buf *b, uint16_t v)
{
    uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    hc_buf_put(b, x, 2);
}

static void put32(hc_buf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    hc_buf_put(b, x, 4);
}

/* Width of a value unit whose bytes must be swapped from big endian. */
static size_t swap_width(const char *vr)
{
    if (!strcmp(vr, "US") || !strcmp(vr, "SS") || !strcmp(vr, "OW") || !strcmp(vr, "AT"))
        return 2;
    if (!strcmp(vr, "UL") || !strcmp(vr, "SL") || !strcmp(vr, "FL") || !strcmp(vr, "OF") ||
        !strcmp(vr, "OL"))
        return 4;
    if (!strcmp(vr, "FD") || !strcmp(vr, "OD") || !strcmp(vr, "SV") || !strcmp(vr, "UV") ||
        !strcmp(vr, "OV"))
        return 8;
    return 1;
}

static bool pad_nul(const char *vr)
{
    return !strcmp(vr, "UI") || !strcmp(vr, "OB") || !strcmp(vr, "UN");
}

static void put_header(hc_buf *b, uint32_t tag, const char *vr, uint32_t len)
{
    put16(b, (uint16_t)(tag >> 16));
    put16(b, (uint16_t)tag);
    hc_buf_put(b, vr, 2);
    if (dj_long_vr(vr)) {
        put16(b, 0);
        put32(b, len);
    } else {
        put16(b, (uint16_t)len);
    }
}

static void put_value(hc_buf *b, const dj_elem *e, const char *vr, enum dj_enc enc)
{
    size_t start = b->len;
    hc_buf_put(b, e->val, e->len);
    size_t w = enc == DJ_EXPLICIT_BE ? swap_width(vr) : 1;
    /* AT is a pair of 16-bit values: swapping each half is right. */
    for (size_t i = start; w > 1 && i + w <= b->len; i += w)
        for (size_t k = 0; k < w / 2; k++) {
            uint8_t t = b->p[i + k];
            b->p[i + k] = b->p[i + w - 1 - k];
            b->p[i + w - 1 - k] = t;
        }
    if (e->len & 1) {
        uint8_t pad = pad_nul(vr) ? 0 : ' ';
        hc_buf_put(b, &pad, 1);
    }
}

/* Top-level replacement (or insertion) of an element while re-encoding. */
typedef struct ovr {
    uint32_t tag;
    const char *vr;
    const uint8_t *val;
    size_t len;
    bool done;
} ovr;

static void put_ovr(hc_buf *b, ovr *o)
{
    put_header(b, o->tag, o->vr, (uint32_t)(o->len + (o->len & 1)));
    hc_buf_put(b, o->val, o->len);
    if (o->len & 1) {
        uint8_t pad = pad_nul(o->vr) ? 0 : ' ';
        hc_buf_put(b, &pad, 1);
    }
    o->done = true;
}

/* ov: sorted by tag, applied at this level only (NULL for nested items). */
static void write_ds(hc_buf *b, const dj_ds *ds, enum dj_enc enc, long bits_allocated, ovr *ov,
                     size_t n_ov)
{
    for (size_t i = 0; i < ds->n; i++) {
        const dj_elem *e = &ds->el[i];
        bool replaced = false;
        for (size_t k = 0; k < n_ov; k++) {
            if (!ov[k].done && ov[k].tag < e->tag) {
                put_ovr(b, &ov[k]);
            } else if (!ov[k].done && ov[k].tag == e->tag) {
                put_ovr(b, &ov[k]);
                replaced = true;
            }
        }
        if (replaced || (e->tag & 0xFFFF) == 0)
            continue; /* group lengths would be stale */
        char vr[3];
        memcpy(vr, e->vr, 3);
        if (e->tag == 0x7FE00010 && enc == DJ_IMPLICIT_LE)
            memcpy(vr, bits_allocated > 8 ? "OW" : "OB", 3);
        if (!strcmp(vr, "SQ")) {
            put_header(b, e->tag, "SQ", 0xFFFFFFFFu);
            for (size_t k = 0; k < e->n_items; k++) {
                put16(b, 0xFFFE);
                put16(b, 0xE000);
                put32(b, 0xFFFFFFFFu);
                write_ds(b, e->items[k], enc, bits_allocated, NULL, 0);
                put16(b, 0xFFFE);
                put16(b, 0xE00D);
                put32(b, 0);
            }
            put16(b, 0xFFFE);
            put16(b, 0xE0DD);
            put32(b, 0);
            continue;
        }
        uint32_t len = (uint32_t)(e->len + (e->len & 1));
        if (!dj_long_vr(vr) && len > 0xFFFF)
            memcpy(vr, "UN", 3);
        put_header(b, e->tag, vr, len);
        put_value(b, e, vr, enc);
    }
    for (size_t k = 0; k < n_ov; k++)
        if (!ov[k].done)
            put_ovr(b, &ov[k]);
}

static void put_ui(hc_buf *b, uint32_t tag, const char *uid)
{
    size_t n = strlen(uid);
    put_header(b, tag, "UI", (uint32_t)(n + (n & 1)));
    hc_buf_put(b, uid, n);
    if (n & 1)
        hc_buf_put(b, "", 1);
}

int conv_to_explicit_le(const uint8_t *buf, size_t len, hc_buf *out, char *why, size_t whylen)
{
    dj_file f;
    if (dj_parse_file(buf, len, &f, why, whylen) < 0)
        return -1;
    /* A JPEG baseline source is decoded; its pixels become native RGB or
     * MONOCHROME samples. Other compressed syntaxes cannot be transcoded. */
    hc_buf px = {0};
    ovr ov[3];
    size_t n_ov = 0;
    static const uint8_t planar0[2] = {0, 0};
    if (f.compressed) {
        bool can = conv_can_decode(&f);
        if (!can || conv_pixel_data(&f, -1, false, &px, why, whylen) < 0) {
            if (!can)
                snprintf(why, whylen,
                         "transfer syntax %s is compressed; the emulator cannot transcode it to %s",
                         f.ts, EXPLICIT_LE);
            free(px.p);
            dj_file_free(&f);
            return -1;
        }
        if (dj_int(dj_find(f.ds, 0x00280002), f.enc, 1) == 3) {
            ov[n_ov++] = (ovr){0x00280004, "CS", (const uint8_t *)"RGB ", 4, false};
            ov[n_ov++] = (ovr){0x00280006, "US", planar0, 2, false};
        }
        ov[n_ov++] = (ovr){0x7FE00010, "OB", px.p, px.len, false};
    }
    long bits = dj_int(dj_find(f.ds, 0x00280100), f.enc, 16);

    /* meta group body first, to know its length */
    hc_buf meta = {0};
    static const uint8_t version[2] = {0, 1};
    put_header(&meta, 0x00020001, "OB", 2);
    hc_buf_put(&meta, version, 2);
    char sc[65], si[65];
    dj_str(dj_find(f.meta, 0x00020002), sc, sizeof sc);
    dj_str(dj_find(f.meta, 0x00020003), si, sizeof si);
    put_ui(&meta, 0x00020002, sc);
    put_ui(&meta, 0x00020003, si);
    put_ui(&meta, 0x00020010, EXPLICIT_LE);
    for (size_t i = 0; i < f.meta->n; i++) {
        const dj_elem *e = &f.meta->el[i];
        uint32_t t = e->tag;
        if (t == 0x00020000 || t == 0x00020001 || t == 0x00020002 || t == 0x00020003 ||
            t == 0x00020010 || e->n_items)
            continue;
        put_header(&meta, t, e->vr, (uint32_t)(e->len + (e->len & 1)));
        put_value(&meta, e, e->vr, DJ_EXPLICIT_LE);
    }
    /* keep meta elements in tag order: 0001 0002 0003 0010 then the rest (all > 0010) */
    static const uint8_t zero[128];
    hc_buf_put(out, zero, 128);
    hc_buf_put(out, "DICM", 4);
    put_header(out, 0x00020000, "UL", 4);
    put32(out, (uint32_t)meta.len);
    hc_buf_put(out, meta.p, meta.len);
    free(meta.p);
    write_ds(out, f.ds, f.enc, bits, ov, n_ov);
    free(px.p);
    dj_file_free(&f);
    return 0;
}

int conv_num_frames(const dj_file *f)
{
    long n = dj_int(dj_find(f->ds, 0x00280008), f->enc, 1);
    return n < 1 ? 1 : (int)n;
}

typedef struct img {
    long rows, cols, spp, bits, stored, pixrep, planar, frames;
    char photometric[32];
    const dj_elem *pixel;
} img;

static int img_info(const dj_file *f, img *im, char *why, size_t whylen)
{
    memset(im, 0, sizeof *im);
    im->rows = dj_int(dj_find(f->ds, 0x00280010), f->enc, 0);
    im->cols = dj_int(dj_find(f->ds, 0x00280011), f->enc, 0);
    im->spp = dj_int(dj_find(f->ds, 0x00280002), f->enc, 1);
    im->bits = dj_int(dj_find(f->ds, 0x00280100), f->enc, 0);
    im->stored = dj_int(dj_find(f->ds, 0x00280101), f->enc, im->bits);
    im->pixrep = dj_int(dj_find(f->ds, 0x00280103), f->enc, 0);
    im->planar = dj_int(dj_find(f->ds, 0x00280006), f->enc, 0);
    im->frames = conv_num_frames(f);
    dj_str(dj_find(f->ds, 0x00280004), im->photometric, sizeof im->photometric);
    im->pixel = dj_find(f->ds, 0x7FE00010);
    if (!im->pixel) {
        snprintf(why, whylen, "the instance has no PixelData");
        return -1;
    }
    if (im->rows <= 0 || im->cols <= 0 || (im->bits != 8 && im->bits != 16) || im->spp < 1) {
        snprintf(why, whylen,
                 "unsupported image geometry (Rows %ld, Columns %ld, "
                 "BitsAllocated %ld, SamplesPerPixel %ld)",
                 im->rows, im->cols, im->bits, im->spp);
        return -1;
    }
    return 0;
}

static size_t frame_bytes(const img *im)
{
    return (size_t)im->rows * (size_t)im->cols * (size_t)im->spp * (size_t)(im->bits / 8);
}

bool conv_can_decode(const dj_file *f)
{
    return f->compressed && strcmp(f->ts, JPEG_BASELINE) == 0 &&
           dj_int(dj_find(f->ds, 0x00280100), f->enc, 0) == 8;
}

struct jderr {
    struct jpeg_error_mgr mgr;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
};

static void jpeg_dfail(j_common_ptr c)
{
    struct jderr *e = (struct jderr *)c->err;
    c->err->format_message(c, e->msg);
    longjmp(e->jb, 1);
}

static void jpeg_quiet(j_common_ptr c)
{
    (void)c; /* warnings (e.g. corrupt data recovered) are not fatal */
}

/* Decodes one JPEG baseline frame; checks it has the geometry the data set
 * declares. */
static int jpeg_decode(const uint8_t *src, size_t len, long rows, long cols, long spp, hc_buf *out,
                       char *why, size_t whylen)
{
    struct jpeg_decompress_struct c;
    struct jderr err;
    memset(&err, 0, sizeof err);
    c.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = jpeg_dfail;
    err.mgr.output_message = jpeg_quiet;
    if (setjmp(err.jb)) {
        jpeg_destroy_decompress(&c);
        snprintf(why, whylen, "JPEG frame does not decode: %s", err.msg);
        return -1;
    }
    jpeg_create_decompress(&c);
    jpeg_mem_src(&c, src, (unsigned long)len);
    jpeg_read_header(&c, TRUE);
    if ((long)c.image_width != cols || (long)c.image_height != rows ||
        c.num_components != (int)spp) {
        jpeg_destroy_decompress(&c);
        snprintf(why, whylen,
                 "JPEG frame is %ux%u with %d components; the data set says %ldx%ld with %ld",
                 c.image_width, c.image_height, c.num_components, cols, rows, spp);
        return -1;
    }
    c.out_color_space = spp == 3 ? JCS_RGB : JCS_GRAYSCALE;
    jpeg_start_decompress(&c);
    size_t stride = (size_t)cols * (size_t)spp;
    size_t start = out->len;
    if (hc_buf_put(out, NULL, stride * (size_t)rows) < 0) {
        jpeg_destroy_decompress(&c);
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    while (c.output_scanline < c.output_height) {
        JSAMPROW row = out->p + start + (size_t)c.output_scanline * stride;
        jpeg_read_scanlines(&c, &row, 1);
    }
    jpeg_finish_decompress(&c);
    jpeg_destroy_decompress(&c);
    return 0;
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The compressed bytes of one frame: one fragment per frame, all fragments
 * for a single frame, or per the Basic Offset Table otherwise. */
static int frame_stream(const dj_elem *px, int frame, int nframes, hc_buf *tmp, const uint8_t **p,
                        size_t *len)
{
    size_t ndata = px->n_frags ? px->n_frags - 1 : 0;
    if (ndata == 0)
        return -1;
    if (ndata == (size_t)nframes) {
        *p = px->frags[frame + 1];
        *len = px->frag_lens[frame + 1];
        return 0;
    }
    uint64_t lo = 0, hi = UINT64_MAX;
    if (nframes > 1) {
        if (px->frag_lens[0] != (size_t)nframes * 4)
            return -1;
        lo = le32(px->frags[0] + 4 * frame);
        if (frame + 1 < nframes)
            hi = le32(px->frags[0] + 4 * (frame + 1));
    }
    uint64_t off = 0;
    tmp->len = 0;
    for (size_t i = 1; i < px->n_frags; i++) {
        if (off >= lo && off < hi)
            hc_buf_put(tmp, px->frags[i], px->frag_lens[i]);
        off += 8 + px->frag_lens[i];
    }
    if (!tmp->len)
        return -1;
    *p = tmp->p;
    *len = tmp->len;
    return 0;
}

static int decode_frames(const dj_file *f, const dj_elem *px, int frame, hc_buf *out, char *why,
                         size_t whylen)
{
    long rows = dj_int(dj_find(f->ds, 0x00280010), f->enc, 0);
    long cols = dj_int(dj_find(f->ds, 0x00280011), f->enc, 0);
    long spp = dj_int(dj_find(f->ds, 0x00280002), f->enc, 1);
    int nframes = conv_num_frames(f);
    int first = frame < 0 ? 0 : frame, last = frame < 0 ? nframes - 1 : frame;
    if (rows <= 0 || cols <= 0 || (spp != 1 && spp != 3) || last >= nframes) {
        snprintf(why, whylen, "unsupported JPEG image geometry or frame");
        return -1;
    }
    hc_buf tmp = {0};
    int rc = 0;
    for (int fr = first; rc == 0 && fr <= last; fr++) {
        const uint8_t *p;
        size_t len;
        if (frame_stream(px, fr, nframes, &tmp, &p, &len) < 0) {
            snprintf(why, whylen, "cannot find the fragments of frame %d", fr + 1);
            rc = -1;
        } else {
            rc = jpeg_decode(p, len, rows, cols, spp, out, why, whylen);
        }
    }
    free(tmp.p);
    return rc;
}

int conv_pixel_data(const dj_file *f, int frame, bool allow_compressed, hc_buf *out, char *why,
                    size_t whylen)
{
    const dj_elem *px = dj_find(f->ds, 0x7FE00010);
    if (!px) {
        snprintf(why, whylen, "the instance has no PixelData");
        return -1;
    }
    if (px->encapsulated) {
        if (!allow_compressed && conv_can_decode(f))
            return decode_frames(f, px, frame, out, why, whylen);
        if (!allow_compressed) {
            snprintf(why, whylen, "PixelData is compressed (%s); the emulator cannot decode it",
                     f->ts);
            return -1;
        }
        /* fragments after the basic offset table, as uploaded */
        for (size_t i = 1; i < px->n_frags; i++)
            hc_buf_put(out, px->frags[i], px->frag_lens[i]);
        return 0;
    }
    size_t off = 0, len = px->len;
    if (frame >= 0) {
        img im;
        if (img_info(f, &im, why, whylen) < 0)
            return -1;
        size_t fb = frame_bytes(&im);
        if ((size_t)(frame + 1) * fb > px->len) {
            snprintf(why, whylen, "PixelData is shorter than frame %d needs", frame + 1);
            return -1;
        }
        off = (size_t)frame * fb;
        len = fb;
    }
    size_t start = out->len;
    if (hc_buf_put(out, px->val + off, len) < 0) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    if (f->enc == DJ_EXPLICIT_BE && strcmp(px->vr, "OW") == 0)
        for (size_t i = start; i + 1 < out->len; i += 2) {
            uint8_t t = out->p[i];
            out->p[i] = out->p[i + 1];
            out->p[i + 1] = t;
        }
    return 0;
}

/* Converts one frame to 8-bit (gray or RGB interleaved) or 16-bit gray samples. */
static int frame_samples(const dj_file *f, int frame, bool want8, hc_buf *pix, img *im, char *why,
                         size_t whylen)
{
    if (img_info(f, im, why, whylen) < 0)
        return -1;
    bool decoded = im->pixel->encapsulated && conv_can_decode(f);
    if (im->pixel->encapsulated && !decoded) {
        snprintf(why, whylen, "PixelData is compressed (%s); the emulator cannot decode it", f->ts);
        return -1;
    }
    if (decoded)
        im->planar = 0; /* libjpeg returns interleaved RGB */
    bool mono = !strcmp(im->photometric, "MONOCHROME1") || !strcmp(im->photometric, "MONOCHROME2");
    bool rgb = (!strcmp(im->photometric, "RGB") ||
                (decoded && !strncmp(im->photometric, "YBR_FULL", 8))) &&
               im->spp == 3 && im->bits == 8;
    if (!(mono && im->spp == 1) && !rgb) {
        snprintf(why, whylen,
                 "unsupported PhotometricInterpretation %s with %ld bits and %ld "
                 "samples",
                 im->photometric, im->bits, im->spp);
        return -1;
    }
    hc_buf raw = {0};
    if (conv_pixel_data(f, frame, false, &raw, why, whylen) < 0) {
        free(raw.p);
        return -1;
    }
    size_t npix = (size_t)im->rows * (size_t)im->cols;
    bool invert = !strcmp(im->photometric, "MONOCHROME1");
    if (rgb) {
        for (size_t i = 0; i < npix; i++) {
            uint8_t px[3];
            for (int c = 0; c < 3; c++)
                px[c] = im->planar ? raw.p[(size_t)c * npix + i] : raw.p[i * 3 + (size_t)c];
            hc_buf_put(pix, px, 3);
        }
    } else if (im->bits == 8) {
        for (size_t i = 0; i < npix; i++) {
            uint8_t v = raw.p[i];
            if (im->pixrep)
                v = (uint8_t)((int8_t)v + 128);
            if (invert)
                v = (uint8_t)(255 - v);
            hc_buf_put(pix, &v, 1);
        }
    } else {
        /* 16-bit: mask to BitsStored, map signed to unsigned, then either keep
         * 16 bits or window min..max to 8 bits. */
        long stored = im->stored > 0 && im->stored <= 16 ? im->stored : 16;
        uint32_t mask = stored == 16 ? 0xFFFFu : ((1u << stored) - 1);
        uint16_t *v = malloc(npix * sizeof *v);
        if (!v) {
            free(raw.p);
            snprintf(why, whylen, "out of memory");
            return -1;
        }
        uint16_t lo = 0xFFFF, hi = 0;
        for (size_t i = 0; i < npix; i++) {
            uint32_t s = ((uint32_t)raw.p[2 * i] | (uint32_t)raw.p[2 * i + 1] << 8) & mask;
            /* signed: sign-extend from BitsStored, then offset to 0..2^stored-1 */
            int32_t sv = im->pixrep ? (int32_t)(s << (32 - stored)) >> (32 - stored) : (int32_t)s;
            uint32_t u = im->pixrep ? (uint32_t)(sv + (1 << (stored - 1))) : (uint32_t)sv;
            v[i] = (uint16_t)u;
            if (v[i] < lo)
                lo = v[i];
            if (v[i] > hi)
                hi = v[i];
        }
        for (size_t i = 0; i < npix; i++) {
            if (want8) {
                uint8_t o = hi > lo ? (uint8_t)(((uint32_t)(v[i] - lo) * 255u) / (hi - lo)) : 0;
                if (invert)
                    o = (uint8_t)(255 - o);
                hc_buf_put(pix, &o, 1);
            } else {
                uint16_t o = v[i];
                if (invert)
                    o = (uint16_t)(mask - o);
                uint8_t be[2] = {(uint8_t)(o >> 8), (uint8_t)o}; /* PNG is big endian */
                hc_buf_put(pix, be, 2);
            }
        }
        free(v);
    }
    free(raw.p);
    if (rgb)
        im->spp = 3;
    return 0;
}

static void png_write_cb(png_structp p, png_bytep data, size_t len)
{
    hc_buf_put(png_get_io_ptr(p), data, len);
}

static void png_flush_cb(png_structp p)
{
    (void)p;
}

static int render_png(const img *im, const hc_buf *pix, bool sixteen, hc_buf *out)
{
    png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = p ? png_create_info_struct(p) : NULL;
    if (!info) {
        png_destroy_write_struct(&p, NULL);
        return -1;
    }
    if (setjmp(png_jmpbuf(p))) {
        png_destroy_write_struct(&p, &info);
        return -1;
    }
    png_set_write_fn(p, out, png_write_cb, png_flush_cb);
    int color = im->spp == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY;
    png_set_IHDR(p, info, (png_uint_32)im->cols, (png_uint_32)im->rows, sixteen ? 16 : 8, color,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(p, info);
    size_t stride = (size_t)im->cols * (size_t)im->spp * (sixteen ? 2 : 1);
    for (long r = 0; r < im->rows; r++)
        png_write_row(p, pix->p + (size_t)r * stride);
    png_write_end(p, NULL);
    png_destroy_write_struct(&p, &info);
    return 0;
}

struct jerr {
    struct jpeg_error_mgr mgr;
    jmp_buf jb;
};

static void jpeg_fail(j_common_ptr c)
{
    longjmp(((struct jerr *)c->err)->jb, 1);
}

static int render_jpeg(const img *im, const hc_buf *pix, hc_buf *out)
{
    struct jpeg_compress_struct c;
    struct jerr err;
    unsigned char *mem = NULL;
    unsigned long memlen = 0;
    c.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = jpeg_fail;
    if (setjmp(err.jb)) {
        jpeg_destroy_compress(&c);
        free(mem);
        return -1;
    }
    jpeg_create_compress(&c);
    jpeg_mem_dest(&c, &mem, &memlen);
    c.image_width = (JDIMENSION)im->cols;
    c.image_height = (JDIMENSION)im->rows;
    c.input_components = im->spp == 3 ? 3 : 1;
    c.in_color_space = im->spp == 3 ? JCS_RGB : JCS_GRAYSCALE;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 90, TRUE);
    jpeg_start_compress(&c, TRUE);
    size_t stride = (size_t)im->cols * (size_t)c.input_components;
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = pix->p + (size_t)c.next_scanline * stride;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    int rc = hc_buf_put(out, mem, memlen);
    free(mem);
    return rc;
}

int conv_render(const dj_file *f, int frame, bool jpeg, hc_buf *out, char *why, size_t whylen)
{
    img im;
    hc_buf pix = {0};
    bool probe_ok = img_info(f, &im, why, whylen) == 0;
    bool sixteen = probe_ok && !jpeg && im.bits == 16;
    if (frame_samples(f, frame < 0 ? 0 : frame, !sixteen, &pix, &im, why, whylen) < 0) {
        free(pix.p);
        return -1;
    }
    int rc = jpeg ? render_jpeg(&im, &pix, out) : render_png(&im, &pix, sixteen, out);
    free(pix.p);
    if (rc < 0)
        snprintf(why, whylen, "the %s encoder failed", jpeg ? "JPEG" : "PNG");
    return rc;
}
