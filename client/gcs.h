/* gcs: Cloud Storage JSON API objects.
 *
 * Owns: uploads from a file descriptor (one media request up to the
 * resumable threshold, resumable sessions in 256 KiB-multiple chunks beyond
 * it, resuming from the server's Range on 308 and after an interruption),
 * verification of the returned crc32c and size against what was sent (the
 * CRC32C is summed while the body streams out, so the source is read once;
 * no MD5: CRC32C is what Google recommends and what composite objects
 * carry), listing with prefix/delimiter/paging, ranged downloads, delete.
 * The endpoint is STORAGE_EMULATOR_HOST (scheme included) when set, else
 * https://storage.googleapis.com, unless given explicitly.
 */
#ifndef DICOMFS_GCS_H
#define DICOMFS_GCS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "http.h"

typedef struct gcs_client gcs_client;

/* Every function returns CERR_OK or a class (error.h) with err filled;
 * errors of the HTTP layer pass through with their class (http.h).
 * CERR_CHECKSUM: the server's crc32c or size differs from what was sent;
 * CERR_MALFORMED: a response of an unexpected shape. */

typedef struct gcs_object {
    char *bucket;
    char *name;
    uint64_t size;
    int64_t generation;
    char md5_b64[32];
    char crc32c_b64[16];
    char *content_type;
} gcs_object;

/* endpoint NULL: environment or the Google default. The client borrows http. */
gcs_client *gcs_client_new(http_client *http, const char *endpoint);
void gcs_client_free(gcs_client *c);
const char *gcs_client_endpoint(const gcs_client *c);

/* Objects up to this size go in one request; larger ones use a resumable
 * session. Default 8 MiB; chunk size default 8 MiB (multiple of 256 KiB). */
void gcs_client_set_resumable_threshold(gcs_client *c, uint64_t threshold, uint64_t chunk);

int gcs_upload_fd(gcs_client *c, const char *bucket, const char *name, int fd, uint64_t size,
                  const char *content_type, gcs_object *out, cerr_detail *err);
int gcs_upload_buf(gcs_client *c, const char *bucket, const char *name, const void *data,
                   size_t len, const char *content_type, gcs_object *out, cerr_detail *err);

/* Streaming upload of a file that is still being written: a resumable
 * session opened before the size is known. gcs_stream_put sends the bytes
 * [persisted, end) of fd in a whole number of 256 KiB quanta (GCS's rule
 * for all but the last chunk) and returns once the server holds them, so
 * up to 256 KiB below end may stay for the next put or the finish; the
 * bytes put must not change afterwards. gcs_stream_finish sends the rest, [persisted, size), as the
 * final chunk and verifies the object's size and CRC32C (summed over the
 * bytes as they were sent, as for gcs_upload_fd). No object exists before
 * the final chunk: gcs_stream_abort cancels the session (DELETE on its URI)
 * and frees s; gcs_stream_free frees it without a request (after a finish,
 * or when the session may just expire). Transient errors are retried by
 * asking the server what it holds; a lost session (404/410) is an error.
 * One stream is used by one thread at a time. */
typedef struct gcs_stream gcs_stream;
int gcs_stream_begin(gcs_client *c, const char *bucket, const char *name, const char *content_type,
                     gcs_stream **out, cerr_detail *err);
int gcs_stream_put(gcs_stream *s, int fd, uint64_t end, cerr_detail *err);
int gcs_stream_finish(gcs_stream *s, int fd, uint64_t size, gcs_object *out, cerr_detail *err);
uint64_t gcs_stream_offset(const gcs_stream *s); /* bytes the server confirmed */
void gcs_stream_abort(gcs_stream *s);
void gcs_stream_free(gcs_stream *s);

int gcs_stat(gcs_client *c, const char *bucket, const char *name, gcs_object *out,
             cerr_detail *err);

/* Downloads [offset, offset+len) (len 0 = to the end) to fd at fd_offset. */
int gcs_download_fd(gcs_client *c, const char *bucket, const char *name, uint64_t offset,
                    uint64_t len, int fd, off_t fd_offset, uint64_t *written, cerr_detail *err);

/* 200/204: CERR_OK. A missing object is CERR_NOT_FOUND with err->http_status
 * 404, which callers may treat as "already gone". */
int gcs_delete(gcs_client *c, const char *bucket, const char *name, cerr_detail *err);

/* Deletes up to GCS_BATCH_MAX objects of one bucket with ONE request
 * (POST /batch/storage/v1, multipart/mixed of inner DELETEs). status[i]
 * gets the inner HTTP status of names[i] (204/200 deleted, 404 already
 * gone, others failed; the answer for a part carries only a status, so
 * callers retry failed ones one by one). Returns CERR_OK when the batch was
 * answered part by part, else the class of the whole request's failure
 * (every status[i] is 0 then). A retried batch is safe: a delete that
 * happened unseen answers 404 the second time. */
#define GCS_BATCH_MAX 100
int gcs_delete_batch(gcs_client *c, const char *bucket, const char *const *names, size_t n,
                     long *status, cerr_detail *err);

/* Parses a batch answer (exposed for tests and fuzzing): content_type is
 * the response's Content-Type (multipart/mixed; boundary=...), each part an
 * application/http response "HTTP/1.1 STATUS ..." whose Content-ID
 * "response-I" (or <response-I>, I counting from 1) names the request part,
 * or, without Content-IDs, its position. status[0..n) must be zero on
 * entry; parts answering no request, twice the same request, or lacking a
 * status line make it CERR_MALFORMED. Requests without an answer keep 0. */
int gcs_batch_parse(const char *content_type, const char *body, size_t len, long *status, size_t n);

/* Lists all pages. For each object cb gets obj; for each prefix (when
 * delimiter is set) cb gets obj == NULL and prefix. Non-zero from cb stops. */
typedef int (*gcs_list_cb)(void *ctx, const gcs_object *obj, const char *prefix);
int gcs_list(gcs_client *c, const char *bucket, const char *prefix, const char *delimiter,
             gcs_list_cb cb, void *ctx, cerr_detail *err);

void gcs_object_clear(gcs_object *o);

/* Parses an object resource (exposed for tests and fuzzing). *out is
 * overwritten (clear it first if it held an object); on failure it is left
 * empty. size/generation may be JSON strings (as the API sends) or numbers. */
int gcs_object_from_json(const char *json, size_t len, gcs_object *out);

/* CRC32C (Castagnoli), incremental: start with crc = 0. */
uint32_t gcs_crc32c(uint32_t crc, const void *data, size_t len);

/* "gs://bucket/path" -> bucket, path (path without leading '/', may be "").
 * Returns CERR_INVALID for anything else. */
int gcs_parse_uri(const char *uri, char **bucket, char **path);

#endif
