/* tree: what a path in the mounted tree means.
 *
 *   /                         datasets (or, mounting a dataset, its contents)
 *   /D/                       operations/ + stores
 *   /D/operations/ID.json     an operation of the dataset
 *   /D/S/                     import/ export/ operations/ studies/ status
 *   /D/S/status               progress of background work
 *   /D/S/status.json          the same as one JSON object
 *   /D/S/import/REST          the import spool (fs/import.h)
 *   /D/S/export/              one directory per output format
 *   /D/S/export/FMT/NAME      a filter file; writing it starts an export
 *   /D/S/export/FMT/NAME.out/REST  the exported objects of the latest run
 *   /D/S/export/FMT/NAME.runs/RUN/REST  every run's objects
 *   /D/S/export/NAME[.out|.runs]  the same without FMT: DICOM as stored
 *   /D/S/operations/ID.json   operations started from this store
 *   /D/S/studies/REST         DICOMweb view
 *
 * Pure string work, no I/O: tree_parse classifies a path and splits out the
 * ids. Names are checked: no component may be "." or "..", longer than 255
 * bytes, or empty.
 */
#ifndef DICOMFS_TREE_H
#define DICOMFS_TREE_H

#include <stdbool.h>
#include <stddef.h>

typedef enum tree_kind {
    TREE_ROOT,          /* location root: lists datasets */
    TREE_DATASET,       /* a dataset directory (also "/" when mounting a dataset) */
    TREE_DS_OPS,        /* DATASET/operations/ */
    TREE_DS_OP,         /* DATASET/operations/NAME (name = op id when it ends in .json) */
    TREE_STORE,         /* a store directory */
    TREE_STATUS,        /* STORE/status or STORE/status.json (name says which) */
    TREE_IMPORT,        /* STORE/import[/rest] */
    TREE_EXPORT,        /* STORE/export/ */
    TREE_EXPORT_FMT,    /* STORE/export/FMT/ */
    TREE_EXPORT_FILTER, /* STORE/export/[FMT/]NAME */
    TREE_EXPORT_OUT,    /* STORE/export/[FMT/]NAME.out[/rest] or NAME.runs[/rest] */
    TREE_STORE_OPS,     /* STORE/operations/ */
    TREE_STORE_OP,      /* STORE/operations/NAME */
    TREE_STUDIES,       /* STORE/studies[/rest] */
    TREE_NONE,          /* a name that cannot exist at that place (ENOENT) */
} tree_kind;

/* Export formats: the directory name under export/ and what it asks for. */
typedef struct tree_format {
    const char *dir;       /* "dicom", "png", ... */
    const char *mime_type; /* gcsDestination.mimeType */
    const char *ext;       /* extension of exported objects ("" for raw) */
    const char *what;      /* one-line description */
} tree_format;

extern const tree_format tree_formats[];
/* A filter written straight into export/ (no format folder): DICOM as
 * stored. Its dir ("as-stored") names its records and its place in the
 * export bucket; it is not a folder of export/ (tree_format_find skips it). */
extern const tree_format tree_format_top;
extern const size_t tree_n_formats;
const tree_format *tree_format_find(const char *dir, size_t len);

#define TREE_NAME_MAX 255

typedef struct tree_path {
    tree_kind kind;
    char dataset[TREE_NAME_MAX + 1]; /* dataset id (not the full name) */
    char store[TREE_NAME_MAX + 1];   /* store id */
    char name[TREE_NAME_MAX + 1];    /* op file name, export filter name */
    const tree_format *format;       /* TREE_EXPORT_FMT and below */
    const char *rest;                /* below import/, studies/, NAME.out/: "" or "a/b" (points
                                        into the parsed path) */
    bool runs;                       /* TREE_EXPORT_OUT: NAME.runs/ (every run) */
} tree_path;

/* Classifies path (absolute, as FUSE passes it). fixed_dataset is the
 * dataset id when the mount's SOURCE is a dataset, else NULL. Returns 0,
 * -ENAMETOOLONG for a component over 255 bytes, -EINVAL for an empty, "."
 * or ".." component or a path not starting with '/'. A name that cannot
 * exist at its place is kind TREE_NONE (not an error: the caller decides
 * between ENOENT and EPERM/EACCES for creation). */
int tree_parse(const char *path, const char *fixed_dataset, tree_path *out);

/* Checks a name for mkdir/create: not empty, no '/', not "."/"..", at most
 * 255 bytes. Returns 0, -EINVAL or -ENAMETOOLONG. */
int tree_check_name(const char *name);

/* Whether a name is one of the fixed entries of a store directory or a
 * dataset directory (so it cannot be a store id at that place). */
bool tree_reserved_in_dataset(const char *name);

/* Operation file name for an operation resource name: "ID.json". */
int tree_op_file_name(const char *op_name, char *buf, size_t buflen);
/* The reverse: "ID.json" -> "ID" in buf; -ENOENT when it does not end in .json. */
int tree_op_id_from_file(const char *file, char *buf, size_t buflen);

#endif
