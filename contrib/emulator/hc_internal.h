/* hc_internal: shared internals of the emulated Healthcare API.
 *
 * Layers, each calling only the ones below it:
 *   hc_api.c    REST routing; owns emu_hc (state + operations) in the
 *               emulator context and registers the workers with lro
 *   dicomweb.c  QIDO/WADO/STOW/DELETE
 *   hc_import.c, hc_export.c  operation workers (run by lro from its table)
 *   lro.c       operations: records, pacing, one thread per running op
 *   hc_state.c  datasets, stores, instance indexes, persistence
 *   dicomjson.c a bounded DICOM element walker and DICOM JSON;
 *   convert.c   re-encoding and pixel export (PNG, JPEG, raw).
 * One mutex (hc_lock) guards the state; it is never held across file reads,
 * parsing or conversion. No mutable globals: everything hangs off emu_hc.
 */
#ifndef DICOMFS_EMU_HC_INTERNAL_H
#define DICOMFS_EMU_HC_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "emu.h"

#define HC_UID_MAX 64

/* ---- DICOM element walker (dicomjson.c) ---- */
enum dj_enc { DJ_IMPLICIT_LE, DJ_EXPLICIT_LE, DJ_EXPLICIT_BE };

typedef struct dj_ds dj_ds;
typedef struct dj_elem {
    uint32_t tag;
    char vr[3];
    const uint8_t *val; /* value bytes (source byte order) */
    size_t len;
    dj_ds **items; /* SQ: nested data sets */
    size_t n_items;
    const uint8_t **frags; /* encapsulated pixel data fragments (incl. offset table) */
    size_t *frag_lens;
    size_t n_frags;
    bool encapsulated;
} dj_elem;

struct dj_ds {
    dj_elem *el;
    size_t n, cap;
};

typedef struct dj_file {
    dj_ds *meta;     /* group 0002, explicit LE */
    dj_ds *ds;       /* the data set */
    enum dj_enc enc; /* data set encoding */
    bool compressed; /* encapsulated transfer syntax */
    char ts[HC_UID_MAX + 1];
    uint8_t *inflated; /* deflated transfer syntax: owned buffer */
} dj_file;

/* Parses a whole Part-10 file held in memory (buf must outlive the result). */
int dj_parse_file(const uint8_t *buf, size_t len, dj_file *out, char *why, size_t whylen);
/* The same up to (not including) the first top-level element whose tag is
 * >= stop_tag: buf need only hold the file up to there (an import reads the
 * header of a 1 GiB file, not its pixels). Returns 1 if it stopped there, 0
 * if the data set ended first (all of it was in buf only if len is the file
 * size), -1 like dj_parse_file when an element runs past len. */
int dj_parse_head(const uint8_t *buf, size_t len, uint32_t stop_tag, dj_file *out, char *why,
                  size_t whylen);
void dj_file_free(dj_file *f);
/* Whether explicit VR encodes this VR with a 4-byte length (PS3.5 7.1.2). */
bool dj_long_vr(const char *vr);
const dj_elem *dj_find(const dj_ds *ds, uint32_t tag);
/* Integer value of a US/UL/IS/SS element (first value), or def. */
long dj_int(const dj_elem *e, enum dj_enc enc, long def);
/* String value (trimmed, first value) copied into buf; "" if absent. */
void dj_str(const dj_elem *e, char *buf, size_t buflen);
/* DICOM JSON of a data set (keys sorted). bulk_base: when non-NULL, large
 * binary values get BulkDataURI bulk_base + "/bulkdata/TAG"; otherwise binary
 * values above 64 KiB are left out. */
cJSON *dj_to_json(const dj_ds *ds, enum dj_enc enc, const char *bulk_base);
/* Sorts an object's members by key (DICOM JSON order). */
void dj_sort(cJSON *obj);

/* Dictionary: keyword -> tag (0 if unknown), tag -> keyword/VR (NULL). */
uint32_t dj_keyword_tag(const char *kw);
const char *dj_tag_keyword(uint32_t tag);
const char *dj_tag_vr(uint32_t tag);
/* Parses "0020000D" or a keyword; returns 0 on failure. */
uint32_t dj_parse_tag(const char *s);
void dj_tag_hex(uint32_t tag, char out[9]);

/* ---- conversion (convert.c) ---- */
typedef struct hc_buf {
    uint8_t *p;
    size_t len, cap;
} hc_buf;
int hc_buf_put(hc_buf *b, const void *data, size_t len);

/* Re-encodes as explicit VR little endian (meta group rebuilt). Returns 0 or
 * -1 with why (compressed sources fail). */
int conv_to_explicit_le(const uint8_t *buf, size_t len, hc_buf *out, char *why, size_t whylen);
/* Pixel data of one frame (0-based) or all frames (frame < 0) as raw bytes
 * (little endian for uncompressed; concatenated fragments if compressed and
 * allow_compressed). */
int conv_pixel_data(const dj_file *f, int frame, bool allow_compressed, hc_buf *out, char *why,
                    size_t whylen);
/* Renders a frame as PNG or JPEG (quality 90). */
int conv_render(const dj_file *f, int frame, bool jpeg, hc_buf *out, char *why, size_t whylen);
int conv_num_frames(const dj_file *f);
/* Whether the emulator decodes this compressed source (JPEG baseline, 8-bit). */
bool conv_can_decode(const dj_file *f);

/* ---- state (hc_state.c) ---- */
typedef struct hc_state hc_state;

typedef struct hc_dataset {
    char *name;
    char *tz;
    bool deleted;
} hc_dataset;

typedef struct hc_inst {
    char study[HC_UID_MAX + 1], series[HC_UID_MAX + 1], sop[HC_UID_MAX + 1];
    char sop_class[HC_UID_MAX + 1], ts[HC_UID_MAX + 1];
    uint64_t size;
    uint64_t file_no;
    /* Cached DICOM JSON (match keys and defaults) kept as compact text: a
     * parsed cJSON tree costs ~10x the memory; searches parse on demand. */
    char *attrs;
    struct hc_inst *hnext;
} hc_inst;

typedef struct hc_store {
    char *name; /* projects/P/locations/L/datasets/D/dicomStores/S */
    char *dir;  /* data dir of the store */
    bool deleted;
    hc_inst **inst;
    size_t n_inst, cap_inst;
    hc_inst **hash; /* by SOP Instance UID */
    size_t hash_size;
    uint64_t next_file;
    int log_fd; /* index log (append) */
} hc_store;

/* Loads DATA/healthcare (*out is set even on failure: close it). */
int hc_state_open(emu_ctx *ctx, hc_state **out);
void hc_state_close(hc_state *hs);
emu_ctx *hc_state_ctx(const hc_state *hs);
void hc_lock(hc_state *hs);
void hc_unlock(hc_state *hs);
/* Finds a live store by name (under hc_lock). */
hc_store *hc_store_find(hc_state *hs, const char *name);
bool hc_dataset_exists(hc_state *hs, const char *name);
/* Under hc_lock: lookups, changes (saved at once) and listings for REST. */
const hc_dataset *hc_dataset_find(hc_state *hs, const char *name);
int hc_dataset_add_locked(hc_state *hs, const char *name, const char *tz);
/* Deletes the dataset and its stores with their instances. */
void hc_dataset_drop_locked(hc_state *hs, const char *name);
hc_store *hc_store_create_locked(hc_state *hs, const char *name);
void hc_store_drop_locked(hc_state *hs, hc_store *s);
typedef void (*hc_dataset_cb)(void *arg, const hc_dataset *d);
typedef void (*hc_store_cb)(void *arg, const hc_store *s);
/* The datasets under parent (projects/P/locations/L), the stores of dataset. */
void hc_datasets_each_locked(hc_state *hs, const char *parent, hc_dataset_cb cb, void *arg);
void hc_stores_each_locked(hc_state *hs, const char *dataset, hc_store_cb cb, void *arg);
/* Whether loc is --location or the location of an existing dataset. */
bool hc_location_used(hc_state *hs, const char *loc);
/* Sets --location unless one is set. */
void hc_location_default_locked(hc_state *hs, const char *loc);
hc_inst *hc_inst_find(hc_store *s, const char *sop); /* under lock */
/* Path of an instance's file (malloc'ed). Under lock. */
char *hc_inst_path(hc_store *s, const hc_inst *i);

enum hc_add_result { HC_ADD_NEW, HC_ADD_DUP_SAME, HC_ADD_DUP_DIFFERENT, HC_ADD_ERROR };
/* Parses and stores one Part-10 file. why gets the reason of an error. The
 * study, series, SOP instance and SOP class UIDs go to uids_out (may be NULL). */
enum hc_add_result hc_store_add(hc_state *hs, const char *store_name, const uint8_t *buf,
                                size_t len, const char *require_study,
                                char uids_out[4][HC_UID_MAX + 1], char *why, size_t whylen);
/* The same for a file open at fd (size bytes): reads only the header, and
 * stores the bytes by a hard link to the file (a copy where the file system
 * refuses the link), so an import never holds or rewrites a big file. The
 * file must not change afterwards (Cloud Storage generations never do). */
enum hc_add_result hc_store_add_fd(hc_state *hs, const char *store_name, int fd, uint64_t size,
                                   char *why, size_t whylen);
/* Removes instances matching study [series [sop]]; returns the count or -1. */
long hc_store_delete(hc_state *hs, const char *store_name, const char *study, const char *series,
                     const char *sop);
/* Reads a whole file (malloc'ed). */
int hc_read_file(const char *path, uint8_t **data, size_t *len);
/* Copies the matching instances (snapshot) for workers; caller frees. */
typedef struct hc_inst_ref {
    char study[HC_UID_MAX + 1], series[HC_UID_MAX + 1], sop[HC_UID_MAX + 1];
    char *path;
} hc_inst_ref;
int hc_store_snapshot(hc_state *hs, const char *store_name, hc_inst_ref **refs, size_t *n);
void hc_refs_free(hc_inst_ref *refs, size_t n);

/* ---- REST helpers (hc_api.c) ---- */
/* Writes a Google error with the HTTP status. */
static inline void hc_error(emu_response *w, int status, const char *msg)
{
    emu_resp_error(w, status, "%s", msg);
}
/* Validates body fields against an allowed-field schema; on error sends 400. */
typedef struct hc_field {
    const char *json_name;      /* camelCase */
    const char *proto_name;     /* snake_case (for messages) */
    const struct hc_field *sub; /* NULL-terminated nested schema or NULL */
} hc_field;
bool hc_check_fields(emu_response *w, const cJSON *obj, const hc_field *schema, const char *at);
cJSON *hc_parse_body(const emu_request *r, emu_response *w);
bool hc_id_valid(const char *id);

/* ---- operations (lro.c) ---- */
enum hc_op_kind {
    HC_OP_CREATE_DATASET,
    HC_OP_IMPORT,
    HC_OP_EXPORT,
    HC_OP_DELETE_STUDY,
    HC_OP_DELETE_SERIES
};
#define HC_OP_KIND_COUNT (HC_OP_DELETE_SERIES + 1)

typedef struct hc_op hc_op;
typedef struct hc_lro hc_lro;
/* Context passed to a worker. */
typedef struct hc_job {
    hc_op *op;
    emu_ctx *ctx;
    hc_state *state;
    const char *version;  /* "v1" / "v1beta1" */
    const char *target;   /* store or dataset name */
    const cJSON *request; /* the validated request body */
} hc_job;

/* Starts an operation under dataset; request is copied. Writes the
 * {"name": ...} response. Returns the op name (static storage) or NULL. */
int hc_op_start(hc_lro *lro, emu_response *w, enum hc_op_kind kind, const char *version,
                const char *dataset, const char *target, const cJSON *request);
/* Worker-side progress (thread-safe). set_work: the items and their total
 * bytes (the op's duration is planned from them); set_pending: the same
 * with no byte cost. */
void hc_op_set_work(hc_op *op, long n, uint64_t bytes);
void hc_op_set_pending(hc_op *op, long pending);
/* Before the work on each item: waits until the item is due (so the items
 * complete progressively over the op's duration). */
void hc_op_pace(hc_op *op, uint64_t bytes);
void hc_op_count(hc_op *op, bool success);
bool hc_op_cancelled(hc_op *op);
bool hc_op_stopping(hc_op *op);
/* Appends a log entry (the per-file error). */
void hc_op_log(hc_op *op, const char *resource, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Sets a terminal error (gRPC code) the op ends with, unless cancelled. */
void hc_op_fail(hc_op *op, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
long hc_op_failures(hc_op *op);
/* Fails the op with PERMISSION_DENIED (7) naming the service agent of
 * target's project and what it lacks on bucket (read: import, write: export). */
void hc_op_fail_agent(hc_op *op, const char *target, const char *bucket, bool write);

/* Creates the operations' directories (*out is set even on failure). */
int lro_open(emu_ctx *ctx, hc_state *hs, hc_lro **out);
/* A worker runs an op of its kind on the op's thread. Kinds without one
 * (dataset creation) complete after their planned duration. */
typedef void (*hc_worker_fn)(hc_job *job);
void lro_register(hc_lro *lro, enum hc_op_kind kind, hc_worker_fn fn);
/* Loads the records and resumes interrupted operations (after lro_register). */
int lro_load(hc_lro *lro);
/* Waits for running workers and frees everything. */
void lro_close(hc_lro *lro);
void lro_handle(hc_lro *lro, emu_response *w, const char *method, const char *dataset,
                const char *op_id, const char *verb, const emu_request *r);
void lro_list(hc_lro *lro, emu_response *w, const char *dataset, const emu_request *r);
void lro_delete_dataset(hc_lro *lro, const char *dataset);
/* Expires the op with this full name (NULL: all); returns how many. */
int lro_expire(hc_lro *lro, const char *name);
void lro_logs(hc_lro *lro, emu_response *w, const char *op_id);

/* Workers (run on an op thread, registered by hc_api.c). */
void hc_import_run(hc_job *job);
void hc_export_run(hc_job *job);
void hc_delete_run(hc_job *job);

/* Export formats (hc_export.c). */
enum hc_export_fmt {
    HC_FMT_DICOM_ASIS,
    HC_FMT_DICOM_ELE,
    HC_FMT_RAW_ASIS,
    HC_FMT_RAW_LE,
    HC_FMT_PNG,
    HC_FMT_JPEG,
    HC_FMT_DICOM_OTHER /* valid for the real API, not transcoded here */
};
/* Parses gcsDestination.mimeType (NULL/"" = as stored). Returns 0 or -1. */
int hc_export_parse_mime(const char *mime, enum hc_export_fmt *fmt);

/* ---- DICOMweb (dicomweb.c) ---- */
void dicomweb_handle(emu_ctx *ctx, hc_state *hs, hc_lro *lro, const emu_request *r, emu_response *w,
                     const char *version, const char *store, const char *dataset, const char *path);

#endif
