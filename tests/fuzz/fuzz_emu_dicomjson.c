/* Fuzzes the emulator's own DICOM walker and converters (contrib/emulator
 * dicomjson.c, convert.c): parse, DICOM JSON, raw pixels, PNG/JPEG rendering
 * (incl. JPEG-baseline decoding) and explicit-LE re-encoding. The input is a
 * data set after the 128-byte preamble and "DICM" (meta group first). */
#include <stdlib.h>
#include <string.h>

#include "hc_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size + 132);
    if (!buf)
        return 0;
    memset(buf, 0, 128);
    memcpy(buf + 128, "DICM", 4);
    memcpy(buf + 132, data, size);
    dj_file f;
    char why[256];
    if (dj_parse_file(buf, size + 132, &f, why, sizeof why) == 0) {
        cJSON *j = dj_to_json(f.ds, f.enc, "http://x/bulk");
        char *t = cJSON_PrintUnformatted(j);
        free(t);
        cJSON_Delete(j);
        hc_buf o = {0};
        conv_pixel_data(&f, 0, size & 1, &o, why, sizeof why);
        o.len = 0;
        conv_render(&f, 0, size & 2, &o, why, sizeof why);
        free(o.p);
        dj_file_free(&f);
    }
    hc_buf o = {0};
    conv_to_explicit_le(buf, size + 132, &o, why, sizeof why);
    free(o.p);
    free(buf);
    return 0;
}
