/* emu: the core of dicomfs-emulator shared by its API modules.
 *
 * server.c owns the HTTP server (libmicrohttpd), request assembly, routing,
 * bearer-token checks and fault injection; control.c the /_emulator/
 * controls; network.c latency and the shared bandwidth cap; iam.c the
 * service agent's bucket access; store.c the emulated Cloud Storage state on
 * disk; gcs_api.c and oauth.c the Cloud Storage and OAuth2 APIs; hc_*.c,
 * dicomweb.c, convert.c and lro.c the Healthcare API.
 *
 * Every handler runs on a server thread; shared state is guarded by the
 * module that owns it.
 */
#ifndef DICOMFS_EMU_H
#define DICOMFS_EMU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cjson/cJSON.h>

typedef struct emu_ctx emu_ctx;
typedef struct emu_request emu_request;
typedef struct emu_response emu_response;

/* ---- context (server.c) ---- */
const char *emu_data_dir(const emu_ctx *ctx); /* --data DIR */
const char *emu_base_url(const emu_ctx *ctx); /* "http://127.0.0.1:PORT" (no trailing '/') */
/* Operation timing (--op-base-ms, --op-instance-ms, --op-mib-ms). */
typedef struct emu_op_timing {
    long base_ms, instance_ms, mib_ms;
} emu_op_timing;
void emu_op_timing_get(const emu_ctx *ctx, emu_op_timing *t);
int emu_max_running_ops(const emu_ctx *ctx); /* per project; 0 = no cap */
long long emu_op_ttl_s(const emu_ctx *ctx);  /* a done op expires this long after its end */
/* Whether the Healthcare service agent may read (import) / write (export)
 * a bucket (/_emulator/agent-access, --deny-agent-access). */
bool emu_agent_can_read(emu_ctx *ctx, const char *bucket);
bool emu_agent_can_write(emu_ctx *ctx, const char *bucket);
/* The stable 12-digit project number of a project id. */
unsigned long long emu_project_number(const char *project);
bool emu_shutting_down(const emu_ctx *ctx);
/* The Healthcare side's context (hc_api.c), owned by the emulator context:
 * set by emu_hc_init, cleared by emu_hc_shutdown. */
typedef struct emu_hc emu_hc;
emu_hc *emu_ctx_hc(const emu_ctx *ctx);
void emu_ctx_set_hc(emu_ctx *ctx, emu_hc *hc);

/* ---- requests (server.c) ---- */
const char *emu_req_method(const emu_request *r);
const char *emu_req_path(const emu_request *r);                   /* percent-decoded, no query */
const char *emu_req_raw_path(const emu_request *r);               /* as sent, no query */
const char *emu_req_query(const emu_request *r, const char *key); /* decoded or NULL */
/* Iterates all query arguments (repeated keys included). */
typedef void (*emu_kv_cb)(void *ctx, const char *key, const char *value);
void emu_req_query_each(const emu_request *r, emu_kv_cb cb, void *cb_ctx);
const char *emu_req_header(const emu_request *r, const char *name); /* case-insensitive */
/* Whole request body. Bodies above 64 MiB are kept in a temp file: then
 * body is NULL and body_fd >= 0. */
const char *emu_req_body(const emu_request *r, size_t *len);
int emu_req_body_fd(const emu_request *r, uint64_t *len);

/* ---- responses (server.c). Each call replaces the previous body. ---- */
void emu_resp_header(emu_response *w, const char *name, const char *value);
/* Takes ownership of json; serialized unformatted with a trailing "\n". */
void emu_resp_json(emu_response *w, int status, cJSON *json);
/* Copies data. */
void emu_resp_bytes(emu_response *w, int status, const char *content_type, const void *data,
                    size_t len);
/* Serves [off, off+len) of a file; takes ownership of fd. */
void emu_resp_file(emu_response *w, int status, const char *content_type, int fd, off_t off,
                   uint64_t len);
void emu_resp_empty(emu_response *w, int status);
/* Google API error envelope (AIP-193):
 *   {"error":{"code":STATUS,"message":MSG,"status":"CANONICAL_NAME"}} */
void emu_resp_error(emu_response *w, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Cloud Storage error envelope with errors[] {domain:"global", reason, message}. */
void emu_resp_gcs_error(emu_response *w, int status, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- emulated Cloud Storage (store.c), for the Healthcare side ---- */
bool emu_gcs_bucket_exists(emu_ctx *ctx, const char *bucket);
int emu_gcs_bucket_create(emu_ctx *ctx, const char *bucket);
/* Objects under prefix, in name order. Non-zero from cb stops. */
typedef int (*emu_gcs_name_cb)(void *cb_ctx, const char *name, uint64_t size);
int emu_gcs_list(emu_ctx *ctx, const char *bucket, const char *prefix, emu_gcs_name_cb cb,
                 void *cb_ctx);
/* Reads a whole object (malloc'ed). Returns 0, or -ENOENT, -EIO. */
int emu_gcs_read(emu_ctx *ctx, const char *bucket, const char *name, char **data, size_t *len);
/* Opens an object for reading (its current generation, which never
 * changes: a replace writes a new file). Returns 0, or -ENOENT, -EIO. */
int emu_gcs_open(emu_ctx *ctx, const char *bucket, const char *name, int *fd, uint64_t *size);
/* Writes (atomically replaces) an object. Returns 0 or -errno. */
int emu_gcs_write(emu_ctx *ctx, const char *bucket, const char *name, const void *data, size_t len,
                  const char *content_type);

/* ---- files (store.c) ---- */
/* Reads a whole file into *data (malloc'ed, a NUL after the len bytes).
 * Returns 0, or -errno with *data NULL. */
int emu_read_file(const char *path, char **data, size_t *len);
/* A JSON state file parsed (free with cJSON_Delete), or NULL when it is
 * missing or not JSON. */
cJSON *emu_read_json(const char *path);
/* Writes j to path atomically (mode 0600) and deletes j; pretty for the
 * files people read. 0 or -errno. */
int emu_write_json(const char *path, cJSON *j, bool pretty);

/* ---- the Healthcare API (hc_api.c etc.), called by the router ---- */
/* Handles /v1/... and /v1beta1/... (version is "v1" or "v1beta1", rest the
 * path after "/v1/"), and /logs/... for operation logsUrl pages. */
void emu_hc_handle(emu_ctx *ctx, const emu_request *r, emu_response *w, const char *version,
                   const char *rest);
void emu_hc_logs_handle(emu_ctx *ctx, const emu_request *r, emu_response *w, const char *rest);
/* Loads state from the data dir and resumes or fails interrupted operations. */
int emu_hc_init(emu_ctx *ctx);
void emu_hc_shutdown(emu_ctx *ctx);
/* Expires an operation now (full name), or all of them (name NULL): 404
 * from then on, a running one stops. Returns how many. */
int emu_hc_expire_ops(emu_ctx *ctx, const char *name);
/* --project/--location/--dataset/--store pre-creation; idempotent. */
int emu_hc_precreate(emu_ctx *ctx, const char *project, const char *location, const char *dataset,
                     const char *store);

#endif
