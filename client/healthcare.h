/* healthcare (prefix hc_): the Cloud Healthcare API, DICOM parts.
 *
 * Owns: datasets, dicomStores, import, export (v1; v1beta1 when a filter is
 * given), operations get/list/cancel, DICOMweb search/retrieve/store/delete.
 * The endpoint is the explicit one, else CLOUDSDK_API_ENDPOINT_OVERRIDES_HEALTHCARE,
 * else https://healthcare.googleapis.com/ ; a trailing "v1/" in the override
 * is tolerated. Resource names are full: "projects/P/locations/L/datasets/D".
 */
#ifndef DICOMFS_HEALTHCARE_H
#define DICOMFS_HEALTHCARE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"

typedef struct hc_client hc_client;

/* Every function returns CERR_OK or a class (error.h) with err filled;
 * errors of the HTTP layer pass through with their class (http.h).
 * CERR_MALFORMED: response JSON not of the expected shape. */

hc_client *hc_client_new(http_client *http, const char *endpoint);
void hc_client_free(hc_client *c);
const char *hc_client_endpoint(const hc_client *c); /* root, ends with '/' */

/* Lists: cb gets each resource's full name and its raw JSON object text.
 * All pages are fetched. Non-zero from cb stops and is returned. */
typedef int (*hc_list_cb)(void *ctx, const char *name, const char *json);

int hc_datasets_list(hc_client *c, const char *location, hc_list_cb cb, void *ctx,
                     cerr_detail *err);
int hc_dataset_get(hc_client *c, const char *dataset, char **json, cerr_detail *err);
/* Starts the create LRO; *op_name gets the operation name (malloc'ed). */
int hc_dataset_create(hc_client *c, const char *location, const char *id, char **op_name,
                      cerr_detail *err);
int hc_dataset_delete(hc_client *c, const char *dataset, cerr_detail *err);

int hc_stores_list(hc_client *c, const char *dataset, hc_list_cb cb, void *ctx, cerr_detail *err);
int hc_store_get(hc_client *c, const char *store, char **json, cerr_detail *err);
int hc_store_create(hc_client *c, const char *dataset, const char *id, cerr_detail *err);
int hc_store_delete(hc_client *c, const char *store, cerr_detail *err);

/* dicomStores.import with gcsSource.uri. */
int hc_import(hc_client *c, const char *store, const char *gcs_uri, char **op_name,
              cerr_detail *err);
/* dicomStores.export to gcsDestination. mime_type NULL = as stored. With
 * filter_uri non-NULL the v1beta1 method is used with filterConfig. */
int hc_export(hc_client *c, const char *store, const char *uri_prefix, const char *mime_type,
              const char *filter_uri, char **op_name, cerr_detail *err);

/* operations.get: the JSON exactly as the API returned it. */
int hc_operation_get(hc_client *c, const char *op_name, char **json, size_t *len, cerr_detail *err);
/* operations.list of a dataset, all pages; cb gets name and raw op JSON. */
int hc_operations_list(hc_client *c, const char *dataset, hc_list_cb cb, void *ctx,
                       cerr_detail *err);
int hc_operation_cancel(hc_client *c, const char *op_name, cerr_detail *err);

/* A decoded Operation (parse of the JSON above; exposed for fuzzing). */
typedef struct hc_operation {
    char *name;
    bool done;
    bool has_error;
    int error_code; /* google.rpc.Code */
    char *error_message;
    int64_t success, failure, pending; /* counter; -1 when absent */
    char *api_method;
    char *create_time, *end_time, *logs_url;
} hc_operation;
int hc_operation_parse(const char *json, size_t len, hc_operation *out);
void hc_operation_clear(hc_operation *op);

/* Blocks until the operation is done, polling with backoff up to timeout_s
 * (0: one poll; < 0: no limit). CERR_TIMEOUT when still running; *out then
 * holds the last state seen. */
int hc_operation_wait(hc_client *c, const char *op_name, int timeout_s, hc_operation *out,
                      cerr_detail *err);

/* DICOMweb. path is relative to .../dicomWeb/ (e.g. "studies",
 * "studies/1.2/series"); query is "includefield=..&limit=.." or NULL.
 * All pages are fetched with limit/offset; 204 and 200 [] both mean none.
 * cb gets each result object as JSON text; its name argument is the UID of
 * the level searched (0020000D/0020000E/00080018 Value[0]) or "" if absent.
 * A limit=N in query sets the page size, an offset=N the first offset. */
int hc_dicomweb_search(hc_client *c, const char *store, const char *path, const char *query,
                       hc_list_cb cb, void *ctx, cerr_detail *err);
/* Retrieves one instance as stored (transfer-syntax=*) into fd. */
int hc_dicomweb_retrieve_instance(hc_client *c, const char *store, const char *study,
                                  const char *series, const char *instance, int fd,
                                  uint64_t *written, cerr_detail *err);
/* STOW-RS of one Part-10 file read from fd. */
int hc_dicomweb_store(hc_client *c, const char *store, int fd, uint64_t size, cerr_detail *err);
/* DELETE of studies/S[/series/SE[/instances/I]] (study/series deletes are LROs:
 * op_name set then). */
int hc_dicomweb_delete(hc_client *c, const char *store, const char *path, char **op_name,
                       cerr_detail *err);

/* instances.getStorageInfo: *size = blobStorageInfo.sizeBytes, the bytes
 * a retrieval as stored returns. */
int hc_dicomweb_instance_size(hc_client *c, const char *store, const char *study,
                              const char *series, const char *instance, uint64_t *size,
                              cerr_detail *err);

/* "projects/P/locations/L/datasets/D/..." helpers. */
bool hc_name_is_location(const char *s);
bool hc_name_is_dataset(const char *s);
/* Last path component of a resource name (points into name). */
const char *hc_name_leaf(const char *name);

#endif
