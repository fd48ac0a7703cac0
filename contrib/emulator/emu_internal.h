/* emu_internal: what the emulator core modules (main, server, store,
 * faults, gcs_api, oauth) share beyond the public contract in emu.h.
 *
 * The Healthcare modules only need emu.h; nothing here is part of their
 * contract.
 */
#ifndef DICOMFS_EMU_INTERNAL_H
#define DICOMFS_EMU_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "emu.h"

/* ---- configuration (filled by main.c) ---- */
typedef struct emu_fault_config {
    uint64_t seed;
    double fail_rate;      /* answered 429/500/503 before handling */
    double reset_rate;     /* connection closed mid-request or mid-body */
    double malformed_rate; /* JSON bodies truncated or garbled */
    double partial_rate;   /* resumable chunks only partly persisted */
    int latency_ms;        /* --fault-latency-ms: added to every faulted-path request */
    char *paths;           /* only paths starting with this prefix; NULL = all */
} emu_fault_config;

/* Which part of the emulator a request went to (stats and auth). */
enum emu_kind {
    EMU_KIND_GCS,
    EMU_KIND_UPLOAD,
    EMU_KIND_DOWNLOAD,
    EMU_KIND_TOKEN,
    EMU_KIND_METADATA,
    EMU_KIND_HC,
    EMU_KIND_LOGS,
    EMU_KIND_CONTROL,
    EMU_KIND_OTHER,
    EMU_KIND_COUNT,
};

typedef struct emu_stats {
    atomic_ullong total;
    atomic_ullong by_kind[EMU_KIND_COUNT];
    atomic_ullong by_class[6]; /* 1xx..5xx, [0] = no response (reset) */
    atomic_ullong fault_429, fault_500, fault_503;
    atomic_ullong fault_reset, fault_malformed, fault_latency, fault_partial;
    atomic_ullong unauthenticated;
    atomic_ullong token_refused, lost_responses;
    atomic_ullong object_deletes;              /* DELETE of one object, answered */
    atomic_ullong batch_requests, batch_calls; /* /batch/storage/v1 and its parts */
} emu_stats;

/* Service-like timing and limits of long-running operations (settable at
 * run time through /_emulator/timing and /_emulator/limits). */
typedef struct emu_op_config {
    atomic_int base_ms, instance_ms, mib_ms; /* an op takes base + n*instance + MiB*mib */
    atomic_int max_running;                  /* per project, 0 = no cap */
    atomic_llong ttl_s;                      /* a done op is visible this long */
} emu_op_config;

typedef struct emu_store emu_store;
typedef struct emu_oauth emu_oauth;
typedef struct emu_faults emu_faults;
typedef struct emu_net emu_net;
typedef struct emu_iam emu_iam;
typedef struct emu_uploads emu_uploads;

struct emu_ctx {
    char *data_dir;
    bool data_dir_is_temp;
    char base_url[80];
    char host[64];
    int port;
    const char *tls_dir;      /* --tls-dir: serve https, DIR/ca.pem to trust */
    char tls_dir_real[4096];  /* tls_dir made absolute at start (tls.c) */
    char *tls_key, *tls_cert; /* PEM, made at start by emu_tls_make */
    bool no_auth;
    int token_ttl;
    char *project; /* --project, default "emulator-project" */
    atomic_bool shutting_down;
    emu_stats stats;
    emu_fault_config fault_cfg;
    emu_op_config ops;
    emu_faults *faults;
    emu_net *net;
    emu_iam *iam;
    atomic_llong refuse_tokens_until_ms; /* CLOCK_MONOTONIC ms; 0 = grants work */
    emu_store *store;
    emu_oauth *oauth;
    emu_uploads *uploads;      /* resumable upload sessions (gcs_api.c) */
    emu_hc *hc;                /* the Healthcare API (hc_api.c) */
    struct MHD_Daemon *daemon; /* the HTTP server while it runs (server.c) */
};

/* ---- server.c ---- */
/* Serves on an already listening socket until emu_server_stop. */
int emu_server_start(emu_ctx *ctx, int listen_fd);
void emu_server_stop(emu_ctx *ctx);

/* tls.c: a throwaway CA (written to DIR/ca.pem) and a server key and
 * certificate for ctx->host, 127.0.0.1 and localhost (ctx->tls_key/cert). */
int emu_tls_make(emu_ctx *ctx, const char *dir);
/* The request's connection-level kind as routed. */
enum emu_kind emu_req_kind(const emu_request *r);
/* For a body spooled to disk (above 64 MiB): hands its file over to the
 * caller, who must rename or unlink it, with the MD5 and CRC32C of its
 * bytes, computed while it arrived. False for bodies kept in memory. */
bool emu_req_spool_take(const emu_request *r, char *path, size_t pathlen, unsigned char md5[16],
                        uint32_t *crc);
/* True if this request drew the partial-persistence fault (counted when
 * asked); aux is randomness for how much to keep. */
bool emu_req_fault_partial(const emu_request *r, uint32_t *aux);
/* The sink that took this request's body as it arrived (NULL: the body
 * was assembled as usual). */
typedef struct emu_body_sink emu_body_sink;
emu_body_sink *emu_req_sink(const emu_request *r);
/* Status and whether a body was set (for handlers composing responses). */
int emu_resp_status(const emu_response *w);

/* ---- faults.c ---- */
typedef struct emu_fault_plan {
    int fail_status;  /* 0, 429, 500 or 503 */
    bool reset;       /* close the connection */
    bool reset_early; /* ... before handling (else after, mid-body) */
    bool malformed;   /* garble a JSON body */
    bool partial;     /* a resumable chunk keeps only some of its bytes */
    int latency_ms;
    uint32_t aux; /* extra randomness for where to cut or garble */
} emu_fault_plan;

emu_faults *emu_faults_new(const emu_fault_config *cfg);
void emu_faults_free(emu_faults *f);
/* Draws the plan for one request. Draws a fixed count of numbers per
 * eligible request so that a sequence of requests gives the same plans for
 * the same seed (concurrent requests may take their draws in any order). */
void emu_faults_plan(emu_faults *f, const char *path, emu_fault_plan *out);
/* Changes rates at run time (control path). Negative values keep the old. */
void emu_faults_set(emu_faults *f, double fail, double reset, double partial, double malformed,
                    int latency_ms);
/* Answers failed requests with this status instead of 429/500/503 (0: back
 * to those; anything outside 400-599 counts as 0). */
void emu_faults_set_status(emu_faults *f, int status);
cJSON *emu_faults_json(emu_faults *f);
/* lose-response: the next count requests whose "METHOD PATH" contains
 * match are carried out, then answered by closing the connection. */
void emu_faults_set_lose(emu_faults *f, const char *match, int count);
/* True (and one fewer left) if this request's answer is to be lost. */
bool emu_faults_take_lose(emu_faults *f, const char *method, const char *path);

/* ---- network.c: latency and a bandwidth cap shared by all connections ---- */
emu_net *emu_net_new(int latency_ms, int bandwidth_mbps);
void emu_net_free(emu_net *n);
/* Negative values keep the old setting. */
void emu_net_set(emu_net *n, int latency_ms, int bandwidth_mbps);
cJSON *emu_net_json(emu_net *n);
/* Sleeps the per-request round-trip latency. */
void emu_net_latency(emu_net *n);
/* Sleeps until len bytes fit in the shared bandwidth (no-op without a cap). */
void emu_net_transfer(emu_net *n, uint64_t len);
bool emu_net_capped(emu_net *n);
/* CLOCK_MONOTONIC in milliseconds (deadlines such as token refusal). */
int64_t emu_mono_ms(void);

/* ---- iam.c: the Healthcare service agent's access to buckets ---- */
emu_iam *emu_iam_new(void);
void emu_iam_free(emu_iam *m);
/* read/write: 1 grant, 0 deny, -1 keep. Returns 0 or -ENOMEM. */
int emu_iam_set(emu_iam *m, const char *bucket, int read, int write);
cJSON *emu_iam_json(emu_iam *m);

/* ---- control.c: /_emulator/ ---- */
void emu_control_handle(emu_ctx *ctx, const emu_request *r, emu_response *w);
const char *emu_kind_name(enum emu_kind k);

/* ---- store.c ---- */
enum {
    EMU_STORE_OK = 0,
    EMU_STORE_NOBUCKET = -1,
    EMU_STORE_NOTFOUND = -2,
    EMU_STORE_PRECOND = -3, /* ifGeneration... failed */
    EMU_STORE_BADHASH = -4, /* md5/crc32c given by the client differs */
    EMU_STORE_IO = -5,
    EMU_STORE_EXISTS = -6,
    EMU_STORE_INVALID = -7,
};

typedef struct emu_obj_info {
    char *bucket;
    char *name;
    char *content_type;
    int64_t generation;
    int64_t metageneration;
    uint64_t size;
    char md5_b64[32];
    char crc32c_b64[16];
    int64_t created_us;
    int64_t updated_us;
    cJSON *metadata; /* object or NULL */
} emu_obj_info;

void emu_obj_info_clear(emu_obj_info *o);

typedef struct emu_preconds {
    bool has_gen_match, has_gen_not_match, has_meta_match, has_meta_not_match;
    int64_t gen_match, gen_not_match, meta_match, meta_not_match;
} emu_preconds;

/* Returns EMU_STORE_OK or EMU_STORE_PRECOND for an existing object (NULL if none). */
int emu_preconds_check(const emu_preconds *p, const emu_obj_info *existing);

emu_store *emu_store_open(emu_ctx *ctx);
void emu_store_close(emu_store *s);

int emu_store_bucket_info(emu_ctx *ctx, const char *bucket, int64_t *created_us);
/* EMU_STORE_EXISTS while it holds objects. */
int emu_store_bucket_delete(emu_ctx *ctx, const char *bucket);
/* Calls cb with bucket names in order. */
int emu_store_bucket_each(emu_ctx *ctx, void (*cb)(void *, const char *, int64_t), void *cb_ctx);

/* Object writes: begin, write bytes, commit. */
typedef struct emu_writer emu_writer;
emu_writer *emu_store_writer_new(emu_ctx *ctx);
int emu_store_writer_write(emu_writer *w, const void *data, size_t len);
/* Copies len bytes from fd (from its offset 0). */
int emu_store_writer_write_fd(emu_writer *w, int fd, uint64_t len);
uint64_t emu_store_writer_size(const emu_writer *w);
/* Commits as bucket/name. want_md5/want_crc (base64) are checked when set.
 * On success fills out (if not NULL). Frees the writer in every case. */
int emu_store_writer_commit(emu_writer *w, const char *bucket, const char *name,
                            const char *content_type, const cJSON *metadata,
                            const emu_preconds *pre, const char *want_md5, const char *want_crc,
                            emu_obj_info *out);
void emu_store_writer_abort(emu_writer *w);
/* A writer for a complete file under DATA whose hashes are known (a
 * spooled request body): commit renames it into place without copying. */
emu_writer *emu_store_writer_adopt(emu_ctx *ctx, const char *path, uint64_t size,
                                   const unsigned char md5[16], uint32_t crc);
/* Commits an existing file under DATA (renamed into place, hashed first). */
int emu_store_commit_file(emu_ctx *ctx, const char *path, const char *bucket, const char *name,
                          const char *content_type, const cJSON *metadata, const emu_preconds *pre,
                          const char *want_md5, const char *want_crc, emu_obj_info *out);

/* Looks up an object; fd (if not NULL) receives an open read fd. */
int emu_store_object_get(emu_ctx *ctx, const char *bucket, const char *name,
                         const emu_preconds *pre, emu_obj_info *out, int *fd);
int emu_store_object_delete(emu_ctx *ctx, const char *bucket, const char *name,
                            const emu_preconds *pre);

/* Listing: calls cb for every object in the bucket with name >= start (and
 * starting with prefix), in name order, until cb returns non-zero. */
typedef int (*emu_store_obj_cb)(void *cb_ctx, const emu_obj_info *o);
int emu_store_object_each(emu_ctx *ctx, const char *bucket, const char *prefix, const char *start,
                          emu_store_obj_cb cb, void *cb_ctx);

/* Base64, CRC32C, RFC 3339 and mkdir -p: client/util.h. */
int64_t emu_now_us(void);
/* Random hex string of n bytes of entropy. */
void emu_random_hex(char *out, size_t nbytes);

/* ---- gcs_api.c ---- */
/* The registry of resumable upload sessions in memory (locks, hashes). */
emu_uploads *emu_uploads_new(void);
void emu_uploads_free(emu_uploads *up);
void emu_gcs_handle(emu_ctx *ctx, const emu_request *r, emu_response *w);
/* True for resumable-session requests (the session URI is the credential). */
bool emu_gcs_is_session_request(const emu_request *r);
/* An object resource as objects.get answers it (gcs_api.c). */
cJSON *emu_gcs_object_json(emu_ctx *ctx, const emu_obj_info *o);
/* The Cloud Storage error envelope emu_resp_gcs_error sends (server.c). */
cJSON *emu_gcs_error_json(int status, const char *reason, const char *msg);
/* Decodes %XX only ('+' stays '+', as in paths); malloc'ed (server.c). */
char *emu_percent_decode(const char *s, size_t n);

/* ---- gcs_batch.c ---- */
/* POST /batch/storage/v1: a multipart/mixed body of up to 100 inner
 * objects.delete / objects.get requests, answered part by part. */
void emu_gcs_batch(emu_ctx *ctx, const emu_request *r, emu_response *w);
/* Called by the server once a request's headers are in, before its body:
 * a valid chunk of a resumable session (Content-Length known) gets a sink
 * that writes the body straight to the session's part file as it arrives,
 * instead of having it assembled first. NULL: assemble the body as usual. */
emu_body_sink *emu_gcs_sink_open(emu_ctx *ctx, const emu_request *r, uint64_t content_length);
void emu_gcs_sink_write(emu_body_sink *k, const char *data, size_t len);
/* At the end of the request, whether or not its handler ran. */
void emu_gcs_sink_close(emu_body_sink *k);

/* ---- oauth.c ---- */
int emu_oauth_open(emu_ctx *ctx);
void emu_oauth_close(emu_ctx *ctx);
int emu_oauth_write_credentials(emu_ctx *ctx, const char *file);
int emu_oauth_write_user_credentials(emu_ctx *ctx, const char *file);
void emu_oauth_token_handle(emu_ctx *ctx, const emu_request *r, emu_response *w);
void emu_oauth_metadata_handle(emu_ctx *ctx, const emu_request *r, emu_response *w);
/* True if the Authorization header carries a live token. */
bool emu_oauth_check_bearer(emu_ctx *ctx, const char *authorization);

#endif
