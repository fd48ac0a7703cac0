/* Unit tests for client/gcs.c against tests/unit/testsrv. */
#include "testlib.h"
#include "testsrv.h"

#include "gcs.h"
#include "http.h"

#include <openssl/evp.h>

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------- */

static http_client *test_http(void)
{
    http_options o;
    http_options_init(&o);
    o.retry.max_attempts = 3;
    o.retry.base_ms = 5;
    o.retry.max_backoff_ms = 20;
    o.retry.total_ms = 1000;
    o.connect_timeout_s = 5;
    return http_client_new(&o);
}

/* The usual test: a fresh server and a gcs client pointed at it. */
typedef struct gfx {
    testsrv *srv;
    http_client *h;
    gcs_client *c;
} gfx;

static void gfx_start(gfx *t)
{
    t->srv = testsrv_start();
    t->h = test_http();
    t->c = gcs_client_new(t->h, testsrv_url(t->srv));
}

static void gfx_end(gfx *t)
{
    gcs_client_free(t->c);
    http_client_free(t->h);
    testsrv_stop(t->srv);
}

/* Bitwise reference CRC32C, independent of the slicing tables under test. */
static uint32_t ref_crc32c(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
    }
    return ~c;
}

static void b64_md5(const unsigned char *p, size_t n, char out[32])
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dl = 0;
    EVP_Digest(p, n, d, &dl, EVP_md5(), NULL);
    EVP_EncodeBlock((unsigned char *)out, d, (int)dl);
}

static void b64_crc(const unsigned char *p, size_t n, char out[16])
{
    uint32_t c = ref_crc32c(p, n);
    unsigned char b[4] = {(unsigned char)(c >> 24), (unsigned char)(c >> 16),
                          (unsigned char)(c >> 8), (unsigned char)c};
    EVP_EncodeBlock((unsigned char *)out, b, 4);
}

static unsigned char *pattern(size_t n, unsigned seed)
{
    unsigned char *b = malloc(n);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        b[i] = (unsigned char)x;
    }
    return b;
}

/* Object resource JSON for name/data, as GCS would answer (md5/crc/size of
 * data), with any of md5/crc32c replaced and the size off by size_delta. */
typedef struct obj_lie {
    const char *md5;
    const char *crc;
    long size_delta;
} obj_lie;

static void object_json_lie(char *buf, size_t cap, const char *name, const unsigned char *data,
                            size_t n, const obj_lie *lie)
{
    char md5[32], crc[16];
    b64_md5(data, n, md5);
    b64_crc(data, n, crc);
    snprintf(buf, cap,
             "{\"kind\":\"storage#object\",\"bucket\":\"bkt\",\"name\":\"%s\",\"size\":\"%ld\","
             "\"generation\":\"1700000000000001\",\"contentType\":\"application/dicom\","
             "\"md5Hash\":\"%s\",\"crc32c\":\"%s\"}",
             name, (long)n + (lie ? lie->size_delta : 0), lie && lie->md5 ? lie->md5 : md5,
             lie && lie->crc ? lie->crc : crc);
}

static void object_json(char *buf, size_t cap, const char *name, const unsigned char *data,
                        size_t n)
{
    object_json_lie(buf, cap, name, data, n, NULL);
}

/* ---- pure functions ------------------------------------------------------------ */

TEST(crc32c_known_answers)
{
    unsigned char zeros[32] = {0}, ones[32], inc[32];
    memset(ones, 0xff, sizeof ones);
    for (int i = 0; i < 32; i++)
        inc[i] = (unsigned char)i;
    /* Check value of CRC-32C and the RFC 3720 B.4 vectors. */
    CHECK_EQ_INT(gcs_crc32c(0, "123456789", 9), 0xE3069283u);
    CHECK_EQ_INT(gcs_crc32c(0, zeros, 32), 0x8A9136AAu);
    CHECK_EQ_INT(gcs_crc32c(0, ones, 32), 0x62A8AB43u);
    CHECK_EQ_INT(gcs_crc32c(0, inc, 32), 0x46DD794Eu);
    CHECK_EQ_INT(gcs_crc32c(0, "", 0), 0);
}

TEST(crc32c_incremental_matches_reference)
{
    size_t n = 100003;
    unsigned char *b = pattern(n, 7);
    uint32_t whole = gcs_crc32c(0, b, n), parts = 0;
    size_t cuts[] = {0, 1, 7, 8, 13, 4096, 65537, n};
    for (size_t i = 0; i + 1 < sizeof cuts / sizeof cuts[0]; i++)
        parts = gcs_crc32c(parts, b + cuts[i], cuts[i + 1] - cuts[i]);
    CHECK_EQ_INT(whole, ref_crc32c(b, n));
    CHECK_EQ_INT(parts, whole);
    /* Unaligned start. */
    CHECK_EQ_INT(gcs_crc32c(0, b + 3, 1000), ref_crc32c(b + 3, 1000));
    free(b);
}

TEST(parse_uri)
{
    char *b = NULL, *p = NULL;
    CHECK_EQ_INT(gcs_parse_uri("gs://my-bucket/a/b/c.dcm", &b, &p), CERR_OK);
    CHECK_EQ_STR(b, "my-bucket");
    CHECK_EQ_STR(p, "a/b/c.dcm");
    free(b);
    free(p);
    CHECK_EQ_INT(gcs_parse_uri("gs://bkt", &b, &p), CERR_OK);
    CHECK_EQ_STR(b, "bkt");
    CHECK_EQ_STR(p, "");
    free(b);
    free(p);
    CHECK_EQ_INT(gcs_parse_uri("gs://bkt/", &b, &p), CERR_OK);
    CHECK_EQ_STR(p, "");
    free(b);
    free(p);
    CHECK_EQ_INT(gcs_parse_uri("s3://bkt/x", &b, &p), CERR_INVALID);
    CHECK_EQ_INT(gcs_parse_uri("gs:///x", &b, &p), CERR_INVALID);
    CHECK_EQ_INT(gcs_parse_uri("gs://Bad Bucket/x", &b, &p), CERR_INVALID);
    CHECK_EQ_INT(gcs_parse_uri("bkt/x", &b, &p), CERR_INVALID);
}

TEST(object_from_json_strings_and_numbers)
{
    gcs_object o;
    const char *s = "{\"bucket\":\"b\",\"name\":\"d/x.dcm\",\"size\":\"12345678901\","
                    "\"generation\":\"1700000000000001\",\"md5Hash\":\"XrY7u+Ae7tCTyyK7j1rNww==\","
                    "\"crc32c\":\"yZRlqg==\",\"contentType\":\"application/dicom\"}";
    CHECK_EQ_INT(gcs_object_from_json(s, strlen(s), &o), CERR_OK);
    CHECK_EQ_STR(o.bucket, "b");
    CHECK_EQ_STR(o.name, "d/x.dcm");
    CHECK_EQ_INT(o.size, 12345678901ll);
    CHECK_EQ_INT(o.generation, 1700000000000001ll);
    CHECK_EQ_STR(o.md5_b64, "XrY7u+Ae7tCTyyK7j1rNww==");
    CHECK_EQ_STR(o.crc32c_b64, "yZRlqg==");
    CHECK_EQ_STR(o.content_type, "application/dicom");
    gcs_object_clear(&o);

    s = "{\"name\":\"n\",\"size\":42,\"generation\":7}";
    CHECK_EQ_INT(gcs_object_from_json(s, strlen(s), &o), CERR_OK);
    CHECK_EQ_INT(o.size, 42);
    CHECK_EQ_INT(o.generation, 7);
    CHECK(o.bucket == NULL);
    gcs_object_clear(&o);

    s = "{\"size\":\"1\"}"; /* no name */
    CHECK_EQ_INT(gcs_object_from_json(s, strlen(s), &o), CERR_MALFORMED);
    s = "{\"name\":\"n\",\"size\":\"-1\"}";
    CHECK_EQ_INT(gcs_object_from_json(s, strlen(s), &o), CERR_MALFORMED);
    s = "{\"name\":\"n\",\"size\":\"12x\"}";
    CHECK_EQ_INT(gcs_object_from_json(s, strlen(s), &o), CERR_MALFORMED);
    s = "[1,2]";
    CHECK_EQ_INT(gcs_object_from_json(s, strlen(s), &o), CERR_MALFORMED);
    CHECK_EQ_INT(gcs_object_from_json("{\"name\":", 8, &o), CERR_MALFORMED);
}

/* ---- endpoint --------------------------------------------------------------------- */

TEST(endpoint_selection)
{
    http_client *h = test_http();
    gcs_client *c;

    unsetenv("STORAGE_EMULATOR_HOST");
    c = gcs_client_new(h, NULL);
    CHECK_EQ_STR(gcs_client_endpoint(c), "https://storage.googleapis.com");
    gcs_client_free(c);

    setenv("STORAGE_EMULATOR_HOST", "localhost:9023", 1);
    c = gcs_client_new(h, NULL);
    CHECK_EQ_STR(gcs_client_endpoint(c), "http://localhost:9023");
    gcs_client_free(c);
    /* Without a scheme only loopback means http: a token never goes out in clear. */
    setenv("STORAGE_EMULATOR_HOST", "emu.example:9023", 1);
    c = gcs_client_new(h, NULL);
    CHECK_EQ_STR(gcs_client_endpoint(c), "https://emu.example:9023");
    gcs_client_free(c);

    setenv("STORAGE_EMULATOR_HOST", "https://emu.example:443/", 1);
    c = gcs_client_new(h, NULL);
    CHECK_EQ_STR(gcs_client_endpoint(c), "https://emu.example:443");
    gcs_client_free(c);

    /* Explicit wins over the environment. */
    c = gcs_client_new(h, "http://127.0.0.1:1//");
    CHECK_EQ_STR(gcs_client_endpoint(c), "http://127.0.0.1:1");
    gcs_client_free(c);
    unsetenv("STORAGE_EMULATOR_HOST");
    http_client_free(h);
}

TEST(emulator_host_is_used_for_requests)
{
    testsrv *srv = testsrv_start();
    http_client *h = test_http();
    char hostport[64];
    gcs_object o;
    cerr_detail e;
    snprintf(hostport, sizeof hostport, "127.0.0.1:%d", testsrv_port(srv));
    setenv("STORAGE_EMULATOR_HOST", hostport, 1);
    gcs_client *c = gcs_client_new(h, NULL);
    unsetenv("STORAGE_EMULATOR_HOST");
    testsrv_reply r = {.status = 200,
                       .body = "{\"bucket\":\"bkt\",\"name\":\"a b/c\",\"size\":\"3\"}"};
    testsrv_push(srv, &r);
    CHECK_EQ_INT(gcs_stat(c, "bkt", "a b/c", &o, &e), CERR_OK);
    CHECK_EQ_INT(o.size, 3);
    CHECK_EQ_INT(testsrv_count(srv), 1);
    const testsrv_req *q = testsrv_get(srv, 0);
    CHECK_EQ_STR(q->method, "GET");
    CHECK_EQ_STR(q->url, "/storage/v1/b/bkt/o/a%20b%2Fc");
    gcs_object_clear(&o);
    gcs_client_free(c);
    http_client_free(h);
    testsrv_stop(srv);
}

/* ---- simple upload ---------------------------------------------------------------- */

typedef struct media_srv {
    char reply[1024];
    obj_lie lie;
    int fd;              /* > 0: the source file, overwritten once the body has arrived */
    size_t bodies_total; /* body bytes received over all requests */
} media_srv;

/* Answers a media upload with the object resource of the bytes received. */
static void media_handler(void *ctx, const testsrv_req *req, testsrv_reply *out)
{
    media_srv *m = ctx;
    object_json_lie(m->reply, sizeof m->reply, "dir/a.dcm", (const unsigned char *)req->body,
                    req->body_len, &m->lie);
    m->bodies_total += req->body_len;
    if (m->fd > 0) { /* a second read of the source would now see other bytes */
        unsigned char *junk = malloc(req->body_len ? req->body_len : 1);
        memset(junk, 0x5a, req->body_len);
        if (pwrite(m->fd, junk, req->body_len, 0) != (ssize_t)req->body_len)
            m->fd = -1;
        free(junk);
    }
    out->status = 200;
    out->body = m->reply;
}

TEST(simple_upload_sends_bytes_and_verifies)
{
    gfx t;
    gfx_start(&t);
    size_t n = 70001;
    unsigned char *data = pattern(n, 1);
    int fd = testlib_temp_fd(data, n);
    media_srv m = {0};
    gcs_object o;
    cerr_detail e;
    char md5[32];

    testsrv_set_handler(t.srv, media_handler, &m);
    CHECK_EQ_INT(gcs_upload_fd(t.c, "bkt", "dir/a.dcm", fd, n, "application/dicom", &o, &e),
                 CERR_OK);
    CHECK_EQ_INT(testsrv_count(t.srv), 1);
    const testsrv_req *q = testsrv_get(t.srv, 0);
    CHECK_EQ_STR(q->method, "POST");
    CHECK_EQ_STR(q->url, "/upload/storage/v1/b/bkt/o?uploadType=media&name=dir%2Fa.dcm");
    CHECK_EQ_STR(testsrv_req_header(q, "Content-Type"), "application/dicom");
    CHECK_EQ_INT(q->body_len, n);
    CHECK(q->body_len == n && memcmp(q->body, data, n) == 0);
    b64_md5(data, n, md5);
    CHECK_EQ_STR(o.md5_b64, md5);
    CHECK_EQ_INT(o.size, n);
    CHECK_EQ_STR(o.name, "dir/a.dcm");
    gcs_object_clear(&o);

    /* The buffer variant sends the same request. */
    CHECK_EQ_INT(gcs_upload_buf(t.c, "bkt", "dir/a.dcm", data, n, "application/dicom", NULL, &e),
                 CERR_OK);
    CHECK_EQ_INT(testsrv_count(t.srv), 2);
    q = testsrv_get(t.srv, 1);
    CHECK(q->body_len == n && memcmp(q->body, data, n) == 0);

    close(fd);
    free(data);
    gfx_end(&t);
}

TEST(simple_upload_wrong_crc32c_is_checksum_error)
{
    gfx t;
    gfx_start(&t);
    const char *data = "DICM-ish small payload";
    int fd = testlib_temp_fd(data, strlen(data));
    media_srv m = {.lie = {.crc = "AAAAAA=="}};
    gcs_object o;
    cerr_detail e;

    testsrv_set_handler(t.srv, media_handler, &m);
    CHECK_EQ_INT(gcs_upload_fd(t.c, "bkt", "dir/a.dcm", fd, strlen(data), NULL, &o, &e),
                 CERR_CHECKSUM);
    CHECK(strstr(e.message, "crc32c") != NULL);
    CHECK(strstr(e.message, "gs://bkt/dir/a.dcm") != NULL);
    CHECK(o.name == NULL);
    /* Nothing is deleted: only the upload request was made. */
    CHECK_EQ_INT(testsrv_count(t.srv), 1);
    CHECK_EQ_STR(testsrv_req_header(testsrv_get(t.srv, 0), "Content-Type"),
                 "application/octet-stream");

    /* From memory too. */
    CHECK_EQ_INT(gcs_upload_buf(t.c, "bkt", "dir/a.dcm", data, strlen(data), NULL, NULL, &e),
                 CERR_CHECKSUM);
    CHECK(strstr(e.message, "crc32c") != NULL);
    close(fd);
    gfx_end(&t);
}

/* MD5 is no longer computed: a server md5Hash that differs (as a composite
 * object's absent one would) is not an error when crc32c and size match. */
TEST(md5_not_checked_crc32c_and_size_are)
{
    gfx t;
    gfx_start(&t);
    const char *data = "another payload";
    media_srv m = {.lie = {.md5 = "AAAAAAAAAAAAAAAAAAAAAA=="}};
    cerr_detail e;
    testsrv_set_handler(t.srv, media_handler, &m);
    CHECK_EQ_INT(gcs_upload_buf(t.c, "bkt", "dir/a.dcm", data, strlen(data), NULL, NULL, &e),
                 CERR_OK);
    gfx_end(&t);
}

TEST(upload_size_mismatch_is_checksum_error)
{
    gfx t;
    gfx_start(&t);
    size_t n = 5000;
    unsigned char *data = pattern(n, 11);
    int fd = testlib_temp_fd(data, n);
    media_srv m = {.lie = {.size_delta = -1}};
    gcs_object o;
    cerr_detail e;
    testsrv_set_handler(t.srv, media_handler, &m);
    CHECK_EQ_INT(gcs_upload_fd(t.c, "bkt", "dir/a.dcm", fd, n, NULL, &o, &e), CERR_CHECKSUM);
    CHECK(strstr(e.message, "server size differs") != NULL);
    CHECK(strstr(e.message, "gs://bkt/dir/a.dcm") != NULL);
    CHECK(o.name == NULL);
    m.lie.size_delta = 1;
    CHECK_EQ_INT(gcs_upload_buf(t.c, "bkt", "dir/a.dcm", data, n, NULL, NULL, &e), CERR_CHECKSUM);
    CHECK(strstr(e.message, "server size differs") != NULL);
    close(fd);
    free(data);
    gfx_end(&t);
}

/* The sum is of the bytes as they were sent, read once: the server
 * overwrites the source file as soon as it has the body, so any second read
 * of the source (a checksum pass after the upload) would see other bytes
 * and report a mismatch. */
TEST(crc32c_is_summed_from_the_bytes_sent)
{
    gfx t;
    gfx_start(&t);
    size_t n = 300000;
    unsigned char *data = pattern(n, 12);
    int fd = testlib_temp_fd(data, n);
    media_srv m = {.fd = fd};
    gcs_object o;
    cerr_detail e;
    char crc[16];
    testsrv_set_handler(t.srv, media_handler, &m);
    CHECK_EQ_INT(gcs_upload_fd(t.c, "bkt", "dir/a.dcm", fd, n, NULL, &o, &e), CERR_OK);
    CHECK(m.fd == fd); /* the overwrite happened */
    b64_crc(data, n, crc);
    CHECK_EQ_STR(o.crc32c_b64, crc);
    CHECK_EQ_INT(m.bodies_total, n);
    gcs_object_clear(&o);
    close(fd);
    free(data);
    gfx_end(&t);
}

/* Consecutive uploads from one thread reuse one connection (no connect,
 * DNS or TLS per upload). */
TEST(uploads_reuse_one_connection)
{
    gfx t;
    gfx_start(&t);
    media_srv m = {0};
    unsigned char *data = pattern(100000, 13);
    cerr_detail e;
    testsrv_set_handler(t.srv, media_handler, &m);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(gcs_upload_buf(t.c, "bkt", "dir/a.dcm", data, 100000, NULL, NULL, &e),
                     CERR_OK);
    CHECK_EQ_INT(testsrv_count(t.srv), 3);
    CHECK(testsrv_get(t.srv, 0)->client_port != 0);
    CHECK_EQ_INT(testsrv_get(t.srv, 0)->client_port, testsrv_get(t.srv, 2)->client_port);
    CHECK(testsrv_req_header(testsrv_get(t.srv, 0), "Expect") == NULL);
    free(data);
    gfx_end(&t);
}

/* ---- a raw server that drops the first connection in the middle of the body -- */

typedef struct raw_srv {
    int lfd, port;
    size_t cut_after; /* first connection: reset after this many body bytes */
    size_t first_got; /* body bytes read on the first connection */
    size_t got;       /* body bytes of the request answered */
    uint32_t crc;     /* reference CRC32C of that body */
    int conns;
    pthread_t th;
} raw_srv;

static bool read_headers(int fd, char *buf, size_t cap, size_t *len, size_t *body_start)
{
    *len = 0;
    while (*len + 1 < cap) {
        ssize_t r = read(fd, buf + *len, cap - 1 - *len);
        if (r <= 0)
            return false;
        *len += (size_t)r;
        buf[*len] = '\0';
        char *e = strstr(buf, "\r\n\r\n");
        if (e) {
            *body_start = (size_t)(e + 4 - buf);
            return true;
        }
    }
    return false;
}

/* Reads one request's body (up to limit bytes) summing its CRC32C bitwise;
 * returns the bytes read. */
static size_t read_body(int fd, const char *pre, size_t npre, size_t clen, size_t limit,
                        uint32_t *crc)
{
    static unsigned char buf[65536];
    size_t got = npre < limit ? npre : limit;
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < got; i++) {
        c ^= (unsigned char)pre[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
    }
    while (got < clen && got < limit) {
        size_t want = limit - got < sizeof buf ? limit - got : sizeof buf;
        ssize_t r = read(fd, buf, want);
        if (r <= 0)
            break;
        for (ssize_t i = 0; i < r; i++) {
            c ^= buf[i];
            for (int k = 0; k < 8; k++)
                c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        }
        got += (size_t)r;
    }
    *crc = ~c;
    return got;
}

static void *raw_main(void *ud)
{
    raw_srv *s = ud;
    for (;;) {
        char hdr[8192], reply[1024], body[512], crcb64[16];
        size_t len, start, clen;
        uint32_t crc;
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0)
            return NULL;
        s->conns++;
        const char *cl = NULL;
        if (!read_headers(fd, hdr, sizeof hdr, &len, &start) ||
            !(cl = strcasestr(hdr, "Content-Length:"))) {
            close(fd);
            continue;
        }
        clen = strtoul(cl + 15, NULL, 10);
        if (s->conns == 1) {
            s->first_got = read_body(fd, hdr + start, len - start, clen, s->cut_after, &crc);
            struct linger lg = {1, 0}; /* close with a RST */
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            close(fd);
            continue;
        }
        s->got = read_body(fd, hdr + start, len - start, clen, clen, &crc);
        s->crc = crc;
        unsigned char b[4] = {(unsigned char)(crc >> 24), (unsigned char)(crc >> 16),
                              (unsigned char)(crc >> 8), (unsigned char)crc};
        EVP_EncodeBlock((unsigned char *)crcb64, b, 4);
        int bl = snprintf(body, sizeof body,
                          "{\"bucket\":\"bkt\",\"name\":\"dir/a.dcm\",\"size\":\"%zu\","
                          "\"crc32c\":\"%s\"}",
                          s->got, crcb64);
        int rl = snprintf(reply, sizeof reply,
                          "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                          bl, body);
        if (write(fd, reply, (size_t)rl) != rl)
            s->got = 0;
        close(fd);
        return NULL;
    }
}

static bool raw_start(raw_srv *s)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    int one = 1;
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    /* A small receive buffer, so the client is still sending when the cut comes. */
    int rcv = 16384;
    setsockopt(s->lfd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(s->lfd, 4) != 0 || getsockname(s->lfd, (struct sockaddr *)&sa, &sl) != 0)
        return false;
    s->port = ntohs(sa.sin_port);
    return pthread_create(&s->th, NULL, raw_main, s) == 0;
}

static void raw_stop(raw_srv *s)
{
    shutdown(s->lfd, SHUT_RDWR);
    pthread_join(s->th, NULL);
    close(s->lfd);
}

TEST(media_upload_reset_mid_body_then_retry_verifies)
{
    size_t n = 3u << 20; /* under the 8 MiB resumable threshold: one media request */
    unsigned char *data = pattern(n, 14);
    int fd = testlib_temp_fd(data, n);
    raw_srv s = {.cut_after = 200000};
    http_client *h = test_http();
    gcs_object o;
    cerr_detail e;
    char url[64];
    CHECK(raw_start(&s));
    snprintf(url, sizeof url, "http://127.0.0.1:%d", s.port);
    gcs_client *c = gcs_client_new(h, url);
    CHECK_EQ_INT(gcs_upload_fd(c, "bkt", "dir/a.dcm", fd, n, NULL, &o, &e), CERR_OK);
    raw_stop(&s);
    CHECK_EQ_INT(s.conns, 2);
    CHECK_EQ_INT(s.first_got, 200000); /* the first attempt was cut mid-body */
    CHECK_EQ_INT(s.got, n);
    CHECK_EQ_INT(s.crc, ref_crc32c(data, n));
    CHECK_EQ_INT(o.size, n);
    gcs_object_clear(&o);
    gcs_client_free(c);
    http_client_free(h);
    close(fd);
    free(data);
}

/* ---- resumable upload ------------------------------------------------------------- */

/* A resumable-session server: reassembles what it "persists", persists
 * fewer bytes than sent once, and resets the connection once mid-upload. */
typedef struct resum_srv {
    const char *base;
    unsigned char *data;
    size_t total, persisted;
    int chunk_puts, queries, starts;
    bool shortened, was_reset;
    int resets_left; /* chunk PUTs still to be dropped before a status query */
    int gone_at_put; /* answer 404 to this chunk PUT number (0: never) */
    int busy_at_put; /* answer 503 to this chunk PUT number, persisting nothing */
    char location[256], range[64], reply[1024];
    const char *hdr_total;
    /* At this chunk PUT number (0: never), claim one more chunk persisted
     * than was sent, taking its bytes from ref: the client then sends only
     * what follows, leaving a gap in what it summed. */
    int jump_at_put;
    const unsigned char *ref;
} resum_srv;

static void resum_handler(void *ctx, const testsrv_req *req, testsrv_reply *out)
{
    resum_srv *s = ctx;
    const char *cr = testsrv_req_header(req, "Content-Range");
    unsigned long long a, b, tot;

    if (strcmp(req->method, "POST") == 0 && strstr(req->url, "uploadType=resumable")) {
        s->starts++;
        s->persisted = 0;
        snprintf(s->location, sizeof s->location, "Location: %s/upload/session/%d", s->base,
                 s->starts);
        out->status = 200;
        out->headers[0] = s->location;
        return;
    }
    if (strcmp(req->method, "PUT") != 0 || !cr) {
        out->status = 400;
        return;
    }
    if (sscanf(cr, "bytes */%llu", &tot) == 1) {
        s->queries++;
        s->resets_left = 0;
    } else if (sscanf(cr, "bytes %llu-%llu/%llu", &a, &b, &tot) == 3) {
        size_t len = (size_t)(b - a + 1), keep;
        s->chunk_puts++;
        /* libcurl resends a request once by itself when a reused connection
         * dies before any reply; drop that resend too, so the client sees
         * the failure. */
        if (s->resets_left > 0) {
            s->resets_left--;
            out->reset = true;
            return;
        }
        if (s->gone_at_put && s->chunk_puts == s->gone_at_put) {
            out->status = 404;
            out->body = "{\"error\":{\"code\":404,\"message\":\"No such upload\"}}";
            return;
        }
        if (s->busy_at_put && s->chunk_puts == s->busy_at_put) {
            out->status = 503;
            out->body = "{\"error\":{\"code\":503,\"message\":\"Backend Error\"}}";
            return;
        }
        if (a > s->persisted || len != req->body_len || b >= tot || tot != s->total) {
            out->status = 400;
            out->body = "{\"error\":{\"code\":400,\"message\":\"bad chunk\"}}";
            return;
        }
        keep = len;
        /* Second chunk: persist only part of it. */
        if (s->chunk_puts == 2 && !s->shortened) {
            s->shortened = true;
            keep = len - 100000;
        }
        /* Bytes before `persisted` were already stored: ignore them, as GCS does. */
        if (a + keep > s->persisted) {
            memcpy(s->data + s->persisted, req->body + (s->persisted - a), a + keep - s->persisted);
            s->persisted = a + keep;
        }
        if (s->jump_at_put && s->chunk_puts == s->jump_at_put && s->ref) {
            size_t extra = s->total - s->persisted < 262144 ? s->total - s->persisted : 262144;
            memcpy(s->data + s->persisted, s->ref + s->persisted, extra);
            s->persisted += extra;
        }
        /* Fourth chunk: store 50000 bytes of it, then drop the connection. */
        if (s->chunk_puts == 4 && !s->was_reset) {
            s->was_reset = true;
            s->resets_left = 1;
            s->persisted = a + 50000;
            out->reset = true;
            return;
        }
    } else {
        out->status = 400;
        return;
    }
    if (s->persisted == s->total) {
        object_json(s->reply, sizeof s->reply, "big/obj.dcm", s->data, s->total);
        out->status = 200;
        out->body = s->reply;
        return;
    }
    out->status = 308;
    if (s->persisted > 0) {
        snprintf(s->range, sizeof s->range, "Range: bytes=0-%zu", s->persisted - 1);
        out->headers[0] = s->range;
    }
}

TEST(resumable_upload_short_persist_and_reset)
{
    gfx t;
    gfx_start(&t);
    size_t n = 1300000; /* ~1.24 MiB: 5 chunks of 256 KiB */
    unsigned char *data = pattern(n, 3);
    int fd = testlib_temp_fd(data, n);
    resum_srv s = {.base = testsrv_url(t.srv), .data = calloc(1, n), .total = n};
    gcs_object o;
    cerr_detail e;
    char want[96];

    gcs_client_set_resumable_threshold(t.c, 256 * 1024, 256 * 1024);
    testsrv_set_handler(t.srv, resum_handler, &s);
    CHECK_EQ_INT(gcs_upload_fd(t.c, "bkt", "big/obj.dcm", fd, n, "application/dicom", &o, &e),
                 CERR_OK);
    CHECK_EQ_INT(s.persisted, n);
    CHECK(memcmp(s.data, data, n) == 0);
    CHECK(s.shortened && s.was_reset);
    CHECK(s.queries >= 1); /* the reset was followed by a status query */
    CHECK_EQ_INT(s.starts, 1);
    CHECK_EQ_INT(o.size, n);

    /* Session start: metadata body, X-Upload headers, escaped name. */
    const testsrv_req *q = testsrv_get(t.srv, 0);
    CHECK_EQ_STR(q->method, "POST");
    CHECK_EQ_STR(q->url, "/upload/storage/v1/b/bkt/o?uploadType=resumable&name=big%2Fobj.dcm");
    CHECK_EQ_STR(testsrv_req_header(q, "X-Upload-Content-Type"), "application/dicom");
    CHECK_EQ_STR(testsrv_req_header(q, "X-Upload-Content-Length"), "1300000");
    CHECK(strstr(q->body, "\"name\":\"big/obj.dcm\"") != NULL);
    CHECK(strstr(q->body, "\"contentType\":\"application/dicom\"") != NULL);

    /* Chunks: 0-262143, then 262144-524287 (server keeps 100000 fewer), so the
     * third PUT resumes at 424288. */
    q = testsrv_get(t.srv, 1);
    CHECK_EQ_STR(q->url, "/upload/session/1");
    CHECK_EQ_STR(testsrv_req_header(q, "Content-Range"), "bytes 0-262143/1300000");
    CHECK_EQ_STR(testsrv_req_header(testsrv_get(t.srv, 2), "Content-Range"),
                 "bytes 262144-524287/1300000");
    CHECK_EQ_STR(testsrv_req_header(testsrv_get(t.srv, 3), "Content-Range"),
                 "bytes 424288-686431/1300000");
    /* Fourth chunk reset after 50000 bytes were kept: status query, then resume there. */
    CHECK_EQ_STR(testsrv_req_header(testsrv_get(t.srv, 4), "Content-Range"),
                 "bytes 686432-948575/1300000");
    int qi = -1;
    for (int i = 5; i < testsrv_count(t.srv) && qi < 0; i++)
        if (strcmp(testsrv_req_header(testsrv_get(t.srv, i), "Content-Range"), "bytes */1300000") ==
            0)
            qi = i;
    CHECK(qi == 5 || qi == 6); /* 6 when libcurl resent the chunk once by itself */
    if (qi == 6)
        CHECK_EQ_STR(testsrv_req_header(testsrv_get(t.srv, 5), "Content-Range"),
                     "bytes 686432-948575/1300000");
    CHECK(qi > 0 && testsrv_get(t.srv, qi)->body_len == 0);
    snprintf(want, sizeof want, "bytes %d-%d/1300000", 736432, 736432 + 262143);
    if (qi > 0)
        CHECK_EQ_STR(testsrv_req_header(testsrv_get(t.srv, qi + 1), "Content-Range"), want);
    /* Then 998576-1260719 and the short last chunk. */
    CHECK_EQ_STR(testsrv_req_header(testsrv_get(t.srv, testsrv_count(t.srv) - 1), "Content-Range"),
                 "bytes 1260720-1299999/1300000");
    gcs_object_clear(&o);
    close(fd);
    free(data);
    free(s.data);
    gfx_end(&t);
}

/* Uploads n bytes of pattern(n, seed) from memory through resumable sessions
 * of 256 KiB chunks against resum_handler scripted by *s (its buffers are
 * set here; free s->data afterwards). *same: the server holds those bytes. */
static int resum_upload(gfx *t, resum_srv *s, size_t n, unsigned seed, bool *same)
{
    unsigned char *data = pattern(n, seed);
    cerr_detail e;
    int rc;
    s->base = testsrv_url(t->srv);
    s->data = calloc(1, n);
    s->total = n;
    gcs_client_set_resumable_threshold(t->c, 256 * 1024, 256 * 1024);
    testsrv_set_handler(t->srv, resum_handler, s);
    rc = gcs_upload_buf(t->c, "bkt", "big/obj.dcm", data, n, NULL, NULL, &e);
    *same = memcmp(s->data, data, n) == 0;
    free(data);
    return rc;
}

TEST(resumable_upload_restarts_lost_session)
{
    gfx t;
    gfx_start(&t);
    resum_srv s = {.shortened = true, .was_reset = true, .gone_at_put = 2};
    bool same = false;
    CHECK_EQ_INT(resum_upload(&t, &s, 600000, 5, &same), CERR_OK);
    CHECK_EQ_INT(s.starts, 2);
    CHECK(same);
    free(s.data);
    gfx_end(&t);
}

TEST(resumable_upload_503_queries_then_resumes)
{
    gfx t;
    gfx_start(&t);
    resum_srv s = {.shortened = true, .was_reset = true, .busy_at_put = 2};
    bool same = false;
    CHECK_EQ_INT(resum_upload(&t, &s, 700000, 9, &same), CERR_OK);
    CHECK_EQ_INT(s.starts, 1);
    CHECK_EQ_INT(s.queries, 1);
    CHECK(same);
    /* POST, PUT 0-, PUT 262144- (503), query, PUT 262144- again, last PUT. */
    CHECK_EQ_INT(testsrv_count(t.srv), 6);
    CHECK_EQ_STR(testsrv_req_header(testsrv_get(t.srv, 3), "Content-Range"), "bytes */700000");
    CHECK_EQ_STR(testsrv_req_header(testsrv_get(t.srv, 4), "Content-Range"),
                 "bytes 262144-524287/700000");
    free(s.data);
    gfx_end(&t);
}

/* A chunk PUT retried whole after a 503 and a chunk resent from a lower
 * offset after a reset (resumable_upload_short_persist_and_reset) are summed
 * once; here every chunk is cut: each is reset after the server kept part. */
TEST(resumable_chunk_retried_verifies)
{
    gfx t;
    gfx_start(&t);
    resum_srv s = {.shortened = true, .was_reset = true, .busy_at_put = 1};
    bool same = false;
    /* busy at the first chunk: the whole first chunk is sent again from 0. */
    CHECK_EQ_INT(resum_upload(&t, &s, 600000, 15, &same), CERR_OK);
    CHECK(same);
    CHECK_EQ_STR(testsrv_req_header(testsrv_get(t.srv, 1), "Content-Range"),
                 "bytes 0-262143/600000");
    CHECK_EQ_STR(testsrv_req_header(testsrv_get(t.srv, 3), "Content-Range"),
                 "bytes 0-262143/600000");
    free(s.data);
    gfx_end(&t);
}

/* The server claims bytes the client never sent (here it has them from
 * elsewhere): the streamed sum has a gap, so the client reads the source
 * once more and still verifies. */
TEST(resumable_gap_falls_back_to_a_read_pass)
{
    gfx t;
    gfx_start(&t);
    size_t n = 900000;
    unsigned char *data = pattern(n, 16);
    int fd = testlib_temp_fd(data, n);
    resum_srv s = {.base = testsrv_url(t.srv),
                   .data = calloc(1, n),
                   .total = n,
                   .shortened = true,
                   .was_reset = true,
                   .jump_at_put = 1,
                   .ref = data};
    gcs_object o;
    cerr_detail e;
    char crc[16];
    gcs_client_set_resumable_threshold(t.c, 256 * 1024, 256 * 1024);
    testsrv_set_handler(t.srv, resum_handler, &s);
    CHECK_EQ_INT(gcs_upload_fd(t.c, "bkt", "big/obj.dcm", fd, n, NULL, &o, &e), CERR_OK);
    CHECK(memcmp(s.data, data, n) == 0);
    /* Bytes 262144-524287 were never sent. */
    CHECK_EQ_STR(testsrv_req_header(testsrv_get(t.srv, 2), "Content-Range"),
                 "bytes 524288-786431/900000");
    b64_crc(data, n, crc);
    CHECK_EQ_STR(o.crc32c_b64, crc);
    gcs_object_clear(&o);
    close(fd);
    free(data);
    free(s.data);
    gfx_end(&t);
}

TEST(upload_errors_and_empty_object)
{
    gfx t;
    gfx_start(&t);
    media_srv m = {0};
    gcs_object o;
    cerr_detail e;
    testsrv_reply denied = {.status = 403,
                            .body = "{\"error\":{\"code\":403,\"message\":\"no write access\","
                                    "\"errors\":[{\"reason\":\"forbidden\"}]}}"};
    testsrv_push(t.srv, &denied);
    CHECK_EQ_INT(gcs_upload_buf(t.c, "bkt", "x", "abc", 3, NULL, &o, &e), CERR_PERMISSION);
    CHECK_EQ_INT(e.http_status, 403);
    CHECK_EQ_INT(testsrv_count(t.srv), 1);

    /* An empty object: empty body, MD5 of nothing. */
    testsrv_set_handler(t.srv, media_handler, &m);
    CHECK_EQ_INT(gcs_upload_buf(t.c, "bkt", "dir/a.dcm", NULL, 0, NULL, &o, &e), CERR_OK);
    CHECK_EQ_INT(testsrv_get(t.srv, 1)->body_len, 0);
    CHECK_EQ_STR(o.md5_b64, "1B2M2Y8AsgTpgAmY7PhCfg==");
    CHECK_EQ_INT(o.size, 0);
    gcs_object_clear(&o);

    CHECK_EQ_INT(gcs_upload_buf(t.c, "bkt", "", "a", 1, NULL, NULL, &e), CERR_INVALID);
    CHECK_EQ_INT(testsrv_count(t.srv), 2);
    gfx_end(&t);
}

/* ---- streaming upload --------------------------------------------------------------- */

/* A resumable-session server for sessions of unknown size ("bytes A-B/STAR"
 * chunks, "bytes STAR/STAR" status queries, a final "bytes A-B/T" or
 * "bytes STAR/T"), scripted with faults by chunk PUT number. */
typedef struct stream_srv {
    const char *base;
    unsigned char *data;
    size_t cap, persisted, total; /* total 0 until the final chunk says it */
    int starts, chunk_puts, queries, deletes, finals;
    bool has_length_header; /* the session start declared a size */
    int short_at_put;       /* keep 100000 bytes fewer of this chunk PUT */
    int reset_at_put;       /* keep 50000 bytes of this chunk, then drop the connection */
    int resets_left;
    int busy_at_put;       /* 503, nothing kept */
    size_t busy_at_offset; /* 503 to the first chunk starting there (0: never) */
    int gone_at_put;       /* 404: the session is lost */
    const char *lie_crc;   /* reported instead of the real crc32c */
    bool deleted, finalized;
    char location[256], range[64], reply[1024];
} stream_srv;

static void stream_handler(void *ctx, const testsrv_req *req, testsrv_reply *out)
{
    stream_srv *s = ctx;
    const char *cr = testsrv_req_header(req, "Content-Range");
    unsigned long long a, b, tot;
    char star;

    if (strcmp(req->method, "POST") == 0 && strstr(req->url, "uploadType=resumable")) {
        s->starts++;
        s->persisted = 0;
        s->has_length_header = testsrv_req_header(req, "X-Upload-Content-Length") != NULL;
        snprintf(s->location, sizeof s->location, "Location: %s/upload/session/%d", s->base,
                 s->starts);
        out->headers[0] = s->location;
        return;
    }
    if (strcmp(req->method, "DELETE") == 0) {
        s->deletes++;
        s->deleted = true;
        out->status = 499;
        return;
    }
    if (strcmp(req->method, "PUT") != 0 || !cr || s->deleted) {
        out->status = s->deleted ? 404 : 400;
        return;
    }
    if (sscanf(cr, "bytes */%c", &star) == 1 && star == '*') {
        s->queries++;
        s->resets_left = 0;
    } else if (sscanf(cr, "bytes */%llu", &tot) == 1) {
        s->queries++;
        s->resets_left = 0;
        if (tot == s->persisted)
            s->total = (size_t)tot;
    } else if (sscanf(cr, "bytes %llu-%llu/", &a, &b) == 2) {
        size_t len = (size_t)(b - a + 1), keep = len;
        bool final = sscanf(strchr(cr, '/') + 1, "%llu", &tot) == 1;
        s->chunk_puts++;
        if (s->resets_left > 0) { /* libcurl's own resend after a reset */
            s->resets_left--;
            out->reset = true;
            return;
        }
        if (s->chunk_puts == s->gone_at_put) {
            out->status = 404;
            out->body = "{\"error\":{\"code\":404,\"message\":\"No such upload\"}}";
            return;
        }
        if (s->chunk_puts == s->busy_at_put || (s->busy_at_offset && a == s->busy_at_offset)) {
            s->busy_at_offset = 0;
            out->status = 503;
            out->body = "{\"error\":{\"code\":503,\"message\":\"Backend Error\"}}";
            return;
        }
        if (a > s->persisted || len != req->body_len || b >= s->cap ||
            (!final && len % 262144 != 0) || (final && b + 1 != tot)) {
            out->status = 400;
            out->body = "{\"error\":{\"code\":400,\"message\":\"bad chunk\"}}";
            return;
        }
        if (s->chunk_puts == s->short_at_put)
            keep = len - 100000;
        if (a + keep > s->persisted) {
            memcpy(s->data + s->persisted, req->body + (s->persisted - a), a + keep - s->persisted);
            s->persisted = a + keep;
        }
        if (s->chunk_puts == s->reset_at_put) {
            s->resets_left = 1;
            s->persisted = a + 50000;
            out->reset = true;
            return;
        }
        if (final && s->persisted == tot)
            s->total = (size_t)tot;
    } else {
        out->status = 400;
        return;
    }
    if (s->total && s->persisted == s->total) {
        obj_lie lie = {.crc = s->lie_crc};
        s->finals++;
        s->finalized = true;
        object_json_lie(s->reply, sizeof s->reply, "big/obj.dcm", s->data, s->total, &lie);
        out->body = s->reply;
        return;
    }
    out->status = 308;
    if (s->persisted > 0) {
        snprintf(s->range, sizeof s->range, "Range: bytes=0-%zu", s->persisted - 1);
        out->headers[0] = s->range;
    }
}

typedef struct stream_fx {
    gfx t;
    stream_srv s;
    unsigned char *data;
    size_t n;
    int fd; /* the file being "written": grows as the test appends */
} stream_fx;

static void stream_fx_start(stream_fx *f, size_t n, unsigned seed)
{
    memset(f, 0, sizeof *f);
    gfx_start(&f->t);
    f->n = n;
    f->data = pattern(n, seed);
    f->fd = testlib_temp_fd(NULL, 0);
    f->s.base = testsrv_url(f->t.srv);
    f->s.cap = n;
    f->s.data = calloc(1, n);
    testsrv_set_handler(f->t.srv, stream_handler, &f->s);
}

/* Appends data[from, to) to the file, as a writer would. */
static void stream_fx_write(stream_fx *f, size_t from, size_t to)
{
    CHECK(pwrite(f->fd, f->data + from, to - from, (off_t)from) == (ssize_t)(to - from));
}

static void stream_fx_end(stream_fx *f)
{
    close(f->fd);
    free(f->data);
    free(f->s.data);
    gfx_end(&f->t);
}

static const char *req_range(gfx *t, int i)
{
    return testsrv_req_header(testsrv_get(t->srv, i), "Content-Range");
}

TEST(stream_puts_while_written_then_finishes)
{
    stream_fx f;
    stream_fx_start(&f, 1400000, 21);
    gcs_stream *st = NULL;
    gcs_object o;
    cerr_detail e;
    char crc[16];
    CHECK_EQ_INT(gcs_stream_begin(f.t.c, "bkt", "big/obj.dcm", "application/dicom", &st, &e),
                 CERR_OK);
    CHECK(st != NULL);
    CHECK(!f.s.has_length_header); /* the size is not known yet */
    const testsrv_req *q = testsrv_get(f.t.srv, 0);
    CHECK_EQ_STR(q->url, "/upload/storage/v1/b/bkt/o?uploadType=resumable&name=big%2Fobj.dcm");
    CHECK_EQ_STR(testsrv_req_header(q, "X-Upload-Content-Type"), "application/dicom");

    stream_fx_write(&f, 0, 600000);
    /* Only whole 256 KiB quanta go out before the end is known. */
    CHECK_EQ_INT(gcs_stream_put(st, f.fd, 600000, &e), CERR_OK);
    CHECK_EQ_INT(gcs_stream_offset(st), 524288);
    CHECK_EQ_STR(req_range(&f.t, 1), "bytes 0-524287/*");
    CHECK_EQ_INT(testsrv_get(f.t.srv, 1)->body_len, 524288);
    /* Nothing new to send: no request. */
    CHECK_EQ_INT(gcs_stream_put(st, f.fd, 700000, &e), CERR_OK);
    CHECK_EQ_INT(testsrv_count(f.t.srv), 2);

    stream_fx_write(&f, 600000, 1100000);
    CHECK_EQ_INT(gcs_stream_put(st, f.fd, 1100000, &e), CERR_OK);
    CHECK_EQ_STR(req_range(&f.t, 2), "bytes 524288-1048575/*");
    CHECK(!f.s.finalized);

    stream_fx_write(&f, 1100000, f.n);
    CHECK_EQ_INT(gcs_stream_finish(st, f.fd, f.n, &o, &e), CERR_OK);
    CHECK_EQ_STR(req_range(&f.t, 3), "bytes 1048576-1399999/1400000");
    CHECK_EQ_INT(testsrv_count(f.t.srv), 4);
    CHECK(f.s.finalized);
    CHECK(memcmp(f.s.data, f.data, f.n) == 0);
    CHECK_EQ_INT(o.size, f.n);
    b64_crc(f.data, f.n, crc);
    CHECK_EQ_STR(o.crc32c_b64, crc);
    gcs_object_clear(&o);
    gcs_stream_free(st);
    CHECK_EQ_INT(f.s.deletes, 0);
    stream_fx_end(&f);
}

/* The file ends on a 256 KiB boundary and everything was put already: the
 * final request is an empty "bytes STAR/TOTAL". */
TEST(stream_finish_with_everything_sent)
{
    stream_fx f;
    stream_fx_start(&f, 786432, 22);
    gcs_stream *st = NULL;
    gcs_object o;
    cerr_detail e;
    CHECK_EQ_INT(gcs_stream_begin(f.t.c, "bkt", "big/obj.dcm", NULL, &st, &e), CERR_OK);
    stream_fx_write(&f, 0, f.n);
    CHECK_EQ_INT(gcs_stream_put(st, f.fd, f.n, &e), CERR_OK);
    CHECK(!f.s.finalized);
    CHECK_EQ_INT(gcs_stream_finish(st, f.fd, f.n, &o, &e), CERR_OK);
    CHECK_EQ_STR(req_range(&f.t, 2), "bytes */786432");
    CHECK_EQ_INT(testsrv_get(f.t.srv, 2)->body_len, 0);
    CHECK(f.s.finalized && memcmp(f.s.data, f.data, f.n) == 0);
    gcs_object_clear(&o);
    gcs_stream_free(st);
    stream_fx_end(&f);
}

/* A chunk kept short of a 256 KiB boundary (the next put can only send
 * whole quanta from there), a reset mid-chunk (status query "bytes STAR/STAR",
 * then resume where the server is) and a 503: the bytes arrive once, in
 * order, and the CRC32C summed while sending still verifies. */
TEST(stream_resumes_after_short_persist_reset_and_503)
{
    stream_fx f;
    stream_fx_start(&f, 1300000, 23);
    f.s.short_at_put = 1;
    f.s.reset_at_put = 2;
    f.s.busy_at_offset = 948576 + 50000; /* where the put resumes after the reset */
    gcs_stream *st = NULL;
    gcs_object o;
    cerr_detail e;
    CHECK_EQ_INT(gcs_stream_begin(f.t.c, "bkt", "big/obj.dcm", NULL, &st, &e), CERR_OK);
    stream_fx_write(&f, 0, f.n);
    CHECK_EQ_INT(gcs_stream_put(st, f.fd, 1048576, &e), CERR_OK);
    /* 100000 bytes fewer kept: less than a quantum left, nothing more sent. */
    CHECK_EQ_INT(gcs_stream_offset(st), 948576);
    CHECK_EQ_INT(testsrv_count(f.t.srv), 2);
    CHECK_EQ_INT(gcs_stream_put(st, f.fd, f.n, &e), CERR_OK);
    CHECK_EQ_INT(gcs_stream_offset(st), 948576 + 50000 + 262144);
    CHECK(f.s.queries >= 2); /* after the reset and after the 503 */
    CHECK_EQ_INT(gcs_stream_finish(st, f.fd, f.n, &o, &e), CERR_OK);
    CHECK(memcmp(f.s.data, f.data, f.n) == 0);
    CHECK_EQ_INT(f.s.starts, 1);
    CHECK_EQ_STR(req_range(&f.t, 1), "bytes 0-1048575/*");
    CHECK_EQ_STR(req_range(&f.t, 2), "bytes 948576-1210719/*");
    bool asked = false, resumed = false;
    for (int i = 0; i < testsrv_count(f.t.srv); i++) {
        const char *r = req_range(&f.t, i) ? req_range(&f.t, i) : "";
        asked = asked || strcmp(r, "bytes */*") == 0;
        resumed = resumed || strcmp(r, "bytes 998576-1260719/*") == 0;
    }
    CHECK(asked && resumed);
    CHECK_EQ_STR(req_range(&f.t, testsrv_count(f.t.srv) - 1), "bytes 1260720-1299999/1300000");
    char crc[16];
    b64_crc(f.data, f.n, crc);
    CHECK_EQ_STR(o.crc32c_b64, crc);
    gcs_object_clear(&o);
    gcs_stream_free(st);
    stream_fx_end(&f);
}

/* The bytes streamed are gone with a lost session: an error, no new session. */
TEST(stream_lost_session_is_an_error)
{
    stream_fx f;
    stream_fx_start(&f, 800000, 24);
    f.s.gone_at_put = 2;
    gcs_stream *st = NULL;
    cerr_detail e;
    CHECK_EQ_INT(gcs_stream_begin(f.t.c, "bkt", "big/obj.dcm", NULL, &st, &e), CERR_OK);
    stream_fx_write(&f, 0, f.n);
    CHECK_EQ_INT(gcs_stream_put(st, f.fd, 262144, &e), CERR_OK);
    CHECK_EQ_INT(gcs_stream_put(st, f.fd, 524288, &e), CERR_NOT_FOUND);
    CHECK_EQ_INT(e.http_status, 404);
    CHECK_EQ_INT(f.s.starts, 1);
    CHECK(!f.s.finalized);
    gcs_stream_abort(st);
    stream_fx_end(&f);
}

/* Abandoning sends DELETE on the session URI; no object was ever made. */
TEST(stream_abort_cancels_the_session)
{
    stream_fx f;
    stream_fx_start(&f, 600000, 25);
    gcs_stream *st = NULL;
    cerr_detail e;
    CHECK_EQ_INT(gcs_stream_begin(f.t.c, "bkt", "big/obj.dcm", NULL, &st, &e), CERR_OK);
    stream_fx_write(&f, 0, f.n);
    CHECK_EQ_INT(gcs_stream_put(st, f.fd, 524288, &e), CERR_OK);
    gcs_stream_abort(st);
    CHECK_EQ_INT(f.s.deletes, 1);
    int last = testsrv_count(f.t.srv) - 1;
    CHECK_EQ_STR(testsrv_get(f.t.srv, last)->method, "DELETE");
    CHECK_EQ_STR(testsrv_get(f.t.srv, last)->url, "/upload/session/1");
    CHECK(!f.s.finalized);
    stream_fx_end(&f);
}

TEST(stream_crc32c_mismatch_is_checksum_error)
{
    stream_fx f;
    stream_fx_start(&f, 700000, 26);
    f.s.lie_crc = "AAAAAA==";
    gcs_stream *st = NULL;
    gcs_object o;
    cerr_detail e;
    CHECK_EQ_INT(gcs_stream_begin(f.t.c, "bkt", "big/obj.dcm", NULL, &st, &e), CERR_OK);
    stream_fx_write(&f, 0, f.n);
    CHECK_EQ_INT(gcs_stream_put(st, f.fd, f.n, &e), CERR_OK);
    CHECK_EQ_INT(gcs_stream_finish(st, f.fd, f.n, &o, &e), CERR_CHECKSUM);
    CHECK_EQ_STR(e.status, "DATA_LOSS");
    gcs_stream_abort(st);
    stream_fx_end(&f);
}

TEST(stream_bad_arguments)
{
    gfx t;
    gfx_start(&t);
    gcs_stream *st = (gcs_stream *)&t;
    cerr_detail e;
    CHECK_EQ_INT(gcs_stream_begin(t.c, "bkt", "", NULL, &st, &e), CERR_INVALID);
    CHECK(st == NULL);
    CHECK_EQ_INT(gcs_stream_put(NULL, 0, 1, &e), CERR_INVALID);
    CHECK_EQ_INT(testsrv_count(t.srv), 0);
    gfx_end(&t);
}

/* ---- list ------------------------------------------------------------------------ */

typedef struct list_rec {
    char names[16][64];
    uint64_t sizes[16];
    int n;
    char prefixes[16][64];
    int np;
} list_rec;

static int list_cb(void *ctx, const gcs_object *obj, const char *prefix)
{
    list_rec *r = ctx;
    if (obj && r->n < 16) {
        snprintf(r->names[r->n], 64, "%s", obj->name);
        r->sizes[r->n++] = obj->size;
    } else if (!obj && prefix && r->np < 16) {
        snprintf(r->prefixes[r->np++], 64, "%s", prefix);
    }
    return 0;
}

TEST(list_two_pages_with_prefixes)
{
    gfx t;
    gfx_start(&t);
    list_rec r = {0};
    cerr_detail e;
    testsrv_reply p1 = {.body = "{\"kind\":\"storage#objects\",\"items\":[{\"name\":\"in/a.dcm\","
                                "\"size\":\"10\"},{\"name\":\"in/b.dcm\",\"size\":\"20\"}],"
                                "\"prefixes\":[\"in/s1/\"],\"nextPageToken\":\"tok+1/=\"}"};
    testsrv_reply p2 = {.body = "{\"kind\":\"storage#objects\",\"items\":[{\"name\":\"in/c.dcm\","
                                "\"size\":\"30\"}],\"prefixes\":[\"in/s2/\"]}"};
    testsrv_push(t.srv, &p1);
    testsrv_push(t.srv, &p2);
    CHECK_EQ_INT(gcs_list(t.c, "bkt", "in/", "/", list_cb, &r, &e), CERR_OK);
    CHECK_EQ_INT(r.n, 3);
    CHECK_EQ_STR(r.names[0], "in/a.dcm");
    CHECK_EQ_STR(r.names[2], "in/c.dcm");
    CHECK_EQ_INT(r.sizes[1], 20);
    CHECK_EQ_INT(r.np, 2);
    CHECK_EQ_STR(r.prefixes[0], "in/s1/");
    CHECK_EQ_STR(r.prefixes[1], "in/s2/");
    CHECK_EQ_INT(testsrv_count(t.srv), 2);
    CHECK_EQ_STR(testsrv_get(t.srv, 0)->method, "GET");
    CHECK_EQ_STR(testsrv_get(t.srv, 0)->url,
                 "/storage/v1/b/bkt/o?maxResults=1000&prefix=in%2F&delimiter=%2F");
    CHECK_EQ_STR(testsrv_get(t.srv, 1)->url, "/storage/v1/b/bkt/o?maxResults=1000&prefix=in%2F"
                                             "&delimiter=%2F&pageToken=tok%2B1%2F%3D");
    gfx_end(&t);
}

static int stop_cb(void *ctx, const gcs_object *obj, const char *prefix)
{
    (void)obj;
    (void)prefix;
    ++*(int *)ctx;
    return 7;
}

TEST(list_callback_stops)
{
    testsrv *srv = testsrv_start();
    http_client *h = test_http();
    gcs_client *c = gcs_client_new(h, testsrv_url(srv));
    int calls = 0;
    testsrv_reply p1 = {.body = "{\"items\":[{\"name\":\"a\"},{\"name\":\"b\"}],"
                                "\"nextPageToken\":\"t\"}"};
    testsrv_push(srv, &p1);
    CHECK_EQ_INT(gcs_list(c, "bkt", NULL, NULL, stop_cb, &calls, NULL), 7);
    CHECK_EQ_INT(calls, 1);
    CHECK_EQ_INT(testsrv_count(srv), 1);
    CHECK_EQ_STR(testsrv_get(srv, 0)->url, "/storage/v1/b/bkt/o?maxResults=1000");
    gcs_client_free(c);
    http_client_free(h);
    testsrv_stop(srv);
}

/* ---- download / delete ------------------------------------------------------------ */

TEST(download_range_into_fd)
{
    gfx t;
    gfx_start(&t);
    int fd = testlib_temp_fd("0123456789", 10);
    uint64_t written = 0;
    char got[16] = {0};
    cerr_detail e;
    testsrv_reply r = {.status = 206,
                       .content_type = "application/octet-stream",
                       .body = "BCDE",
                       .headers = {"Content-Range: bytes 1-4/100"}};
    testsrv_push(t.srv, &r);
    CHECK_EQ_INT(gcs_download_fd(t.c, "bkt", "d/x.dcm", 1, 4, fd, 3, &written, &e), CERR_OK);
    CHECK_EQ_INT(written, 4);
    CHECK_EQ_INT(pread(fd, got, 10, 0), 10);
    CHECK_EQ_STR(got, "012BCDE789");
    const testsrv_req *q = testsrv_get(t.srv, 0);
    CHECK_EQ_STR(q->url, "/storage/v1/b/bkt/o/d%2Fx.dcm?alt=media");
    CHECK_EQ_STR(testsrv_req_header(q, "Range"), "bytes=1-4");

    /* Whole object: no Range header, 200 expected. */
    testsrv_reply whole = {
        .status = 200, .content_type = "application/octet-stream", .body = "abc"};
    testsrv_push(t.srv, &whole);
    CHECK_EQ_INT(gcs_download_fd(t.c, "bkt", "d/x.dcm", 0, 0, fd, 0, &written, &e), CERR_OK);
    CHECK_EQ_INT(written, 3);
    CHECK(testsrv_req_header(testsrv_get(t.srv, 1), "Range") == NULL);

    /* A 200 to a ranged request would put the wrong bytes in place. */
    testsrv_push(t.srv, &whole);
    CHECK_EQ_INT(gcs_download_fd(t.c, "bkt", "d/x.dcm", 5, 0, fd, 0, &written, &e), CERR_MALFORMED);
    CHECK_EQ_STR(testsrv_req_header(testsrv_get(t.srv, 2), "Range"), "bytes=5-");
    close(fd);
    gfx_end(&t);
}

TEST(delete_ok_and_404)
{
    gfx t;
    gfx_start(&t);
    cerr_detail e;
    testsrv_reply ok = {.status = 204};
    testsrv_reply gone = {.status = 404,
                          .body = "{\"error\":{\"code\":404,\"message\":\"No such object: "
                                  "bkt/x\",\"errors\":[{\"reason\":\"notFound\"}]}}"};
    testsrv_push(t.srv, &ok);
    testsrv_push(t.srv, &gone);
    CHECK_EQ_INT(gcs_delete(t.c, "bkt", "a/x", &e), CERR_OK);
    CHECK_EQ_STR(testsrv_get(t.srv, 0)->method, "DELETE");
    CHECK_EQ_STR(testsrv_get(t.srv, 0)->url, "/storage/v1/b/bkt/o/a%2Fx");
    CHECK_EQ_INT(gcs_delete(t.c, "bkt", "a/x", &e), CERR_NOT_FOUND);
    CHECK_EQ_INT(e.http_status, 404);
    CHECK_EQ_INT(testsrv_count(t.srv), 2);
    gfx_end(&t);
}

/* A batch answer with parts out of order, one 404, one 500, bracketed
 * Content-IDs: each status lands on its request. */
TEST(delete_batch_maps_parts_to_names)
{
    gfx t;
    gfx_start(&t);
    cerr_detail e;
    const char *ans = "--bb\r\nContent-Type: application/http\r\nContent-ID: <response-2>\r\n\r\n"
                      "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\r\n"
                      "{\"error\":{\"code\":404}}\r\n"
                      "--bb\r\nContent-Type: application/http\r\nContent-ID: <response-1>\r\n\r\n"
                      "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n\r\n"
                      "--bb\r\nContent-Type: application/http\r\nContent-ID: response-3\r\n\r\n"
                      "HTTP/1.1 503 Service Unavailable\r\n\r\n\r\n"
                      "--bb--\r\n";
    testsrv_reply r = {.status = 200, .content_type = "multipart/mixed; boundary=bb", .body = ans};
    testsrv_push(t.srv, &r);
    const char *names[] = {"p/a", "p/b c", "p/x", "p/y"};
    long st[4] = {9, 9, 9, 9};
    CHECK_EQ_INT(gcs_delete_batch(t.c, "bkt", names, 4, st, &e), CERR_OK);
    CHECK_EQ_INT(st[0], 204);
    CHECK_EQ_INT(st[1], 404);
    CHECK_EQ_INT(st[2], 503);
    CHECK_EQ_INT(st[3], 0); /* no answer: the caller retries it */
    CHECK_EQ_INT(testsrv_count(t.srv), 1);
    const testsrv_req *q = testsrv_get(t.srv, 0);
    CHECK_EQ_STR(q->method, "POST");
    CHECK_EQ_STR(q->url, "/batch/storage/v1");
    CHECK(strstr(testsrv_req_header(q, "Content-Type"), "multipart/mixed; boundary=") != NULL);
    CHECK(strstr(q->body, "Content-ID: <2>\r\n\r\nDELETE /storage/v1/b/bkt/o/p%2Fb%20c HTTP/1.1") !=
          NULL);
    CHECK(strstr(q->body, "Content-ID: <4>\r\n\r\nDELETE /storage/v1/b/bkt/o/p%2Fy HTTP/1.1") !=
          NULL);
    gfx_end(&t);
}

/* Whole-batch failures: a 400 (e.g. too many parts), a 200 that is not
 * multipart, bad arguments. Every status stays 0. */
TEST(delete_batch_failures)
{
    gfx t;
    gfx_start(&t);
    cerr_detail e;
    testsrv_reply bad = {.status = 400, .body = "{\"error\":{\"code\":400,\"message\":\"x\"}}"};
    testsrv_reply notmp = {.status = 200, .body = "{}"};
    testsrv_push(t.srv, &bad);
    testsrv_push(t.srv, &notmp);
    const char *names[] = {"a"};
    long st[1] = {7};
    CHECK(gcs_delete_batch(t.c, "bkt", names, 1, st, &e) != CERR_OK);
    CHECK_EQ_INT(e.http_status, 400);
    CHECK_EQ_INT(st[0], 0);
    CHECK_EQ_INT(gcs_delete_batch(t.c, "bkt", names, 1, st, &e), CERR_MALFORMED);
    CHECK_EQ_INT(st[0], 0);
    CHECK_EQ_INT(gcs_delete_batch(t.c, "bkt", names, 0, st, &e), CERR_INVALID);
    CHECK_EQ_INT(gcs_delete_batch(t.c, "bkt", names, GCS_BATCH_MAX + 1, st, &e), CERR_INVALID);
    gfx_end(&t);
}

TEST(batch_parse_rejects_bad_answers)
{
    const char *ct = "multipart/mixed; boundary=\"q\"";
    long st[2] = {0, 0};
    /* Positional (no Content-ID). */
    const char *pos = "--q\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n\r\n--q\r\n\r\nHTTP/1.1 404 NF\r\n"
                      "\r\n\r\n--q--";
    CHECK_EQ_INT(gcs_batch_parse(ct, pos, strlen(pos), st, 2), CERR_OK);
    CHECK_EQ_INT(st[0], 204);
    CHECK_EQ_INT(st[1], 404);
    const char *bad[] = {
        /* the same request answered twice */
        ("--q\r\nContent-ID: response-1\r\n\r\nHTTP/1.1 204 X\r\n\r\n\r\n"
         "--q\r\nContent-ID: response-1\r\n\r\nHTTP/1.1 204 X\r\n\r\n\r\n--q--"),
        /* an answer to no request */
        "--q\r\nContent-ID: response-3\r\n\r\nHTTP/1.1 204 X\r\n\r\n\r\n--q--",
        "--q\r\nContent-ID: response-0\r\n\r\nHTTP/1.1 204 X\r\n\r\n\r\n--q--",
        "--q\r\nContent-ID: other\r\n\r\nHTTP/1.1 204 X\r\n\r\n\r\n--q--",
        /* no status line */
        "--q\r\n\r\n{\"error\":1}\r\n--q--",
        "--q\r\n\r\nHTTP/1.1 2x4 X\r\n\r\n\r\n--q--",
        /* no closing delimiter */
        "--q\r\n\r\nHTTP/1.1 204 X\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        long s2[2] = {0, 0};
        CHECK_EQ_INT(gcs_batch_parse(ct, bad[i], strlen(bad[i]), s2, 2), CERR_MALFORMED);
    }
    long s3[1] = {0};
    CHECK_EQ_INT(gcs_batch_parse("application/json", pos, strlen(pos), s3, 1), CERR_MALFORMED);
    CHECK_EQ_INT(gcs_batch_parse("multipart/mixed", pos, strlen(pos), s3, 1), CERR_MALFORMED);
}

int main(void)
{
    RUN(crc32c_known_answers);
    RUN(crc32c_incremental_matches_reference);
    RUN(parse_uri);
    RUN(object_from_json_strings_and_numbers);
    RUN(endpoint_selection);
    RUN(emulator_host_is_used_for_requests);
    RUN(simple_upload_sends_bytes_and_verifies);
    RUN(simple_upload_wrong_crc32c_is_checksum_error);
    RUN(md5_not_checked_crc32c_and_size_are);
    RUN(upload_size_mismatch_is_checksum_error);
    RUN(crc32c_is_summed_from_the_bytes_sent);
    RUN(uploads_reuse_one_connection);
    RUN(media_upload_reset_mid_body_then_retry_verifies);
    RUN(resumable_upload_short_persist_and_reset);
    RUN(resumable_upload_restarts_lost_session);
    RUN(resumable_upload_503_queries_then_resumes);
    RUN(resumable_chunk_retried_verifies);
    RUN(resumable_gap_falls_back_to_a_read_pass);
    RUN(upload_errors_and_empty_object);
    RUN(stream_puts_while_written_then_finishes);
    RUN(stream_finish_with_everything_sent);
    RUN(stream_resumes_after_short_persist_reset_and_503);
    RUN(stream_lost_session_is_an_error);
    RUN(stream_abort_cancels_the_session);
    RUN(stream_crc32c_mismatch_is_checksum_error);
    RUN(stream_bad_arguments);
    RUN(list_two_pages_with_prefixes);
    RUN(list_callback_stops);
    RUN(download_range_into_fd);
    RUN(delete_ok_and_404);
    RUN(delete_batch_maps_parts_to_names);
    RUN(delete_batch_failures);
    RUN(batch_parse_rejects_bad_answers);
    return test_done();
}
