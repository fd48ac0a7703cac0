/* convert: transcoding for export and WADO.
 *
 * Owns re-encoding an uncompressed data set (implicit LE, explicit LE or BE,
 * deflated) as explicit VR little endian with a rebuilt meta group, raw
 * PixelData extraction, and rendering 8/16-bit MONOCHROME1/2 and 8-bit RGB
 * frames as PNG (libpng) or JPEG (libjpeg, quality 90). Compressed (encapsulated)
 * sources are not decoded: those conversions fail with a reason.
 */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <png.h>

#include "hc_internal.h"

#define EXPLICIT_LE "1.2.840.10008.1.2.1"

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
    if (len)
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

static bool long_vr(const char *vr)
{
    static const char *const l[] = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ",
                                    "UC", "UN", "UR", "UT", "SV", "UV"};
    for (size_t i = 0; i < sizeof l / sizeof l[0]; i++)
        if (strcmp(vr, l[i]) == 0)
            return true;
    return false;
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
    if (long_vr(vr)) {
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

static void write_ds(hc_buf *b, const dj_ds *ds, enum dj_enc enc, long bits_allocated)
{
    for (size_t i = 0; i < ds->n; i++) {
        const dj_elem *e = &ds->el[i];
        if ((e->tag & 0xFFFF) == 0)
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
                write_ds(b, e->items[k], enc, bits_allocated);
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
        if (!long_vr(vr) && len > 0xFFFF)
            memcpy(vr, "UN", 3);
        put_header(b, e->tag, vr, len);
        put_value(b, e, vr, enc);
    }
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
    if (f.compressed) {
        snprintf(why, whylen,
                 "transfer syntax %s is compressed; the emulator cannot transcode it to %s", f.ts,
                 EXPLICIT_LE);
        dj_file_free(&f);
        return -1;
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
    write_ds(out, f.ds, f.enc, bits);
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

int conv_pixel_data(const dj_file *f, int frame, bool allow_compressed, hc_buf *out, char *why,
                    size_t whylen)
{
    const dj_elem *px = dj_find(f->ds, 0x7FE00010);
    if (!px) {
        snprintf(why, whylen, "the instance has no PixelData");
        return -1;
    }
    if (px->encapsulated) {
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
    if (im->pixel->encapsulated) {
        snprintf(why, whylen, "PixelData is compressed (%s); the emulator cannot decode it", f->ts);
        return -1;
    }
    bool mono = !strcmp(im->photometric, "MONOCHROME1") || !strcmp(im->photometric, "MONOCHROME2");
    bool rgb = !strcmp(im->photometric, "RGB") && im->spp == 3 && im->bits == 8;
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
