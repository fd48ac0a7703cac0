/* util: helpers shared by client/, fs/ and the emulator (see util.h). */
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

char *util_endpoint(const char *explicit_ep, const char *env_name, const char *dflt,
                    char *(*normalize)(const char *ep))
{
    const char *ep = explicit_ep;
    if (!ep || !*ep)
        ep = getenv(env_name);
    if (!ep || !*ep)
        ep = dflt;
    return normalize(ep);
}

int util_next_page_token(const cJSON *page, char **token)
{
    const cJSON *next = cJSON_GetObjectItemCaseSensitive(page, "nextPageToken");
    if (!cJSON_IsString(next) || !next->valuestring || !*next->valuestring) {
        free(*token);
        *token = NULL;
        return UTIL_PAGE_LAST;
    }
    if (*token && strcmp(*token, next->valuestring) == 0)
        return UTIL_PAGE_REPEATED;
    free(*token);
    *token = strdup(next->valuestring);
    return *token ? UTIL_PAGE_NEXT : UTIL_PAGE_NOMEM;
}

size_t util_pread_full(int fd, void *buf, size_t len, off_t off)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, (char *)buf + got, len - got, off + (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    return got;
}

char *util_with_scheme(const char *ep)
{
    if (strstr(ep, "://"))
        return strdup(ep);
    char *plain = util_asprintf("http://%s", ep);
    if (!plain || http_url_safe_for_credentials(plain))
        return plain;
    free(plain);
    return util_asprintf("https://%s", ep);
}

char *util_vasprintf(const char *fmt, va_list ap)
{
    char *s = NULL;
    return vasprintf(&s, fmt, ap) < 0 ? NULL : s;
}

char *util_asprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = util_vasprintf(fmt, ap);
    va_end(ap);
    return s;
}

void *util_grow(void *v, size_t n, size_t *cap, size_t elem, size_t first)
{
    if (n < *cap)
        return v;
    size_t nc = *cap ? *cap * 2 : first;
    if (nc < *cap || nc > SIZE_MAX / elem)
        return NULL;
    void *nv = realloc(v, nc * elem);
    if (nv)
        *cap = nc;
    return nv;
}

int util_mkdirs(const char *path, mode_t mode)
{
    char *p = strdup(path);
    if (!p)
        return -ENOMEM;
    int rc = 0;
    for (char *s = p + 1; *s && rc == 0; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, mode) != 0 && errno != EEXIST)
            rc = -errno;
        *s = '/';
    }
    if (rc == 0 && mkdir(p, mode) != 0 && errno != EEXIST)
        rc = -errno;
    free(p);
    return rc;
}

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_replace(const char *path, const void *data, size_t len, mode_t mode, bool sync)
{
    char *tmp = util_asprintf("%s.tmp.XXXXXX", path);
    if (!tmp)
        return -ENOMEM;
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        int e = -errno;
        free(tmp);
        return e;
    }
    int rc = fchmod(fd, mode) != 0 ? -errno : write_all(fd, data, len);
    if (rc == 0 && sync && fsync(fd) != 0)
        rc = -errno;
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc != 0)
        unlink(tmp);
    free(tmp);
    return rc;
}

int util_write_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
    return write_replace(path, data, len, mode, false);
}

int util_write_durable(const char *path, const void *data, size_t len, mode_t mode)
{
    return write_replace(path, data, len, mode, true);
}

uint64_t util_fnv1a(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

uint64_t util_fnv1a_str(uint64_t h, const char *s)
{
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void utc_format(char *buf, size_t len, time_t sec, long nsec, int digits, bool basic)
{
    struct tm tm;
    char d[32] = "";
    if (!gmtime_r(&sec, &tm) ||
        !strftime(d, sizeof d, basic ? "%Y%m%dT%H%M%S" : "%Y-%m-%dT%H:%M:%S", &tm))
        snprintf(d, sizeof d, "%s", basic ? "19700101T000000" : "1970-01-01T00:00:00");
    if (digits == 9)
        snprintf(buf, len, "%s.%09ldZ", d, nsec);
    else if (digits == 3)
        snprintf(buf, len, "%s.%03ldZ", d, nsec / 1000000);
    else
        snprintf(buf, len, "%sZ", d);
}

void util_rfc3339(char *buf, size_t len, time_t sec, long nsec, int digits)
{
    utc_format(buf, len, sec, nsec, digits, false);
}

void util_utc_basic(char *buf, size_t len, time_t sec, long nsec, int digits)
{
    utc_format(buf, len, sec, nsec, digits, true);
}

char *util_b64_encode(const void *in, size_t len, bool url)
{
    static const char std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    static const char urlt[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *data = in;
    const char *t = url ? urlt : std;
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    if (!out)
        return NULL;
    size_t j = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)data[i + 1] << 8;
        if (i + 2 < len)
            v |= data[i + 2];
        out[j++] = t[(v >> 18) & 63];
        out[j++] = t[(v >> 12) & 63];
        if (i + 1 < len)
            out[j++] = t[(v >> 6) & 63];
        else if (!url)
            out[j++] = '=';
        if (i + 2 < len)
            out[j++] = t[v & 63];
        else if (!url)
            out[j++] = '=';
    }
    out[j] = '\0';
    return out;
}

static int b64_val(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

long util_b64_decode(const char *in, size_t inlen, unsigned char *out, size_t outcap)
{
    while (inlen && in[inlen - 1] == '=')
        inlen--;
    if (inlen % 4 == 1)
        return -1;
    size_t j = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < inlen; i++) {
        int v = b64_val(in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (j >= outcap)
                return -1;
            out[j++] = (unsigned char)((acc >> bits) & 0xff);
        }
    }
    return (long)j;
}

/* ---- CRC32C (Castagnoli, reflected 0x82F63B78), slicing-by-8 ------------- */

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define UTIL_CRC_HW 1
/* SSE4.2 has a CRC32C instruction (the same polynomial): about 10x the
 * table version, which showed up in upload profiles. Chosen at run time. */
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p,
                                                            size_t len)
{
    uint64_t c = ~crc;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8); /* x86 is little-endian; memcpy avoids alignment traps */
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

uint32_t util_crc32c(uint32_t crc, const void *data, size_t len)
{
    const unsigned char *p = data;
#ifdef UTIL_CRC_HW
    if (__builtin_cpu_supports("sse4.2"))
        return crc32c_hw(crc, p, len);
#endif
    pthread_once(&crc_once, crc_init);
    crc = ~crc;
    while (len >= 8) {
        /* Assemble little-endian words byte by byte: no alignment or
         * host-endianness assumptions. */
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                             (uint32_t)p[3] << 24);
        uint32_t hi =
            (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
              crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xff] ^
              crc_table[2][(hi >> 8) & 0xff] ^ crc_table[1][(hi >> 16) & 0xff] ^
              crc_table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

double util_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int64_t util_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

struct timespec util_timespec_in(clockid_t clock, double seconds)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    long long ns = (long long)ts.tv_nsec + (seconds > 0 ? (long long)(seconds * 1e9) : 0);
    ts.tv_sec += (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    return ts;
}
