/* node: what each kind of entry of the tree (tree.h) does for each file
 * system call, as one table of functions per kind, and the open files
 * those calls hand out.
 *
 * Owns: fs_node (the table of one kind), fs_file (an open file: its own
 * table of read/write/flush/fsync/release), the registry from tree_kind to
 * table (node_of), the calls every kind shares (node_getattr, node_readdir,
 * the refusals of fixed and read-only entries) and the two plain kinds of
 * open file (a buffer, a local descriptor). No FUSE: fuse_ops.c parses the
 * path, looks the kind up here and copies what a table gives back into
 * FUSE's structures. Adding a kind of entry: one fs_node table in the
 * module that serves it, one line in node.c's registry.
 *
 * Every function returns 0 (read/write: a byte count) or -errno; path is
 * the path FUSE gave, for log lines. A NULL member means what the comment
 * beside it says.
 */
#ifndef DICOMFS_NODE_H
#define DICOMFS_NODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "ctx.h"
#include "tree.h"

typedef int (*fs_fill_fn)(void *buf, const char *name, const struct stat *st);

typedef struct fs_file fs_file;

typedef struct fs_file_ops {
    int (*read)(fs_ctx *x, fs_file *f, char *buf, size_t size, off_t off);
    /* NULL: a read-only file (EBADF) */
    int (*write)(fs_ctx *x, fs_file *f, const char *buf, size_t size, off_t off);
    int (*flush)(fs_ctx *x, fs_file *f);    /* NULL: 0 */
    int (*fsync)(fs_ctx *x, fs_file *f);    /* NULL: 0 */
    void (*release)(fs_ctx *x, fs_file *f); /* frees f */
} fs_file_ops;

/* An open file; each kind embeds it first in its own struct. */
struct fs_file {
    const fs_file_ops *ops;
    bool direct_io; /* reads bypass the page cache (content may change per open) */
};

/* A call an entry refuses: -err, logged with what (NULL: not logged). */
typedef struct fs_refusal {
    int err;
    const char *what;
} fs_refusal;

typedef struct fs_node {
    bool needs_import; /* EIO at once when the import manager could not start */
    /* Refusals used where the member of that call is NULL (err 0: none). */
    fs_refusal mkdir_refused, create_refused, unlink_refused;
    const char *write_refused; /* open for writing refused (EACCES) with this line */
    int (*getattr)(fs_ctx *x, const tree_path *tp, struct stat *st); /* NULL: ENOENT */
    /* Called once getattr said it is a directory. NULL: ENOTDIR. */
    int (*readdir)(fs_ctx *x, const tree_path *tp, fs_fill_fn fill, void *buf);
    /* NULL: EPERM "only datasets, stores and folders under import/ can be made". */
    int (*mkdir)(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode);
    int (*rmdir)(fs_ctx *x, const char *path, const tree_path *tp); /* NULL: EPERM */
    /* flags as open(2). NULL: EACCES "not a place for files". */
    int (*create)(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode, int flags,
                  fs_file **out);
    /* Called once getattr (st) said it is not a directory. NULL: ENOENT. */
    int (*open)(fs_ctx *x, const char *path, const tree_path *tp, const struct stat *st, int flags,
                fs_file **out);
    int (*unlink)(fs_ctx *x, const char *path, const tree_path *tp); /* NULL: EPERM */
    /* open: the file truncated through, or NULL. NULL: read-only (EACCES/EISDIR). */
    int (*truncate)(fs_ctx *x, const char *path, const tree_path *tp, off_t size, fs_file *open);
    /* NULL for the three: the entry's times, mode and owner are fixed (EPERM,
     * a chown to the mounting user being a no-op). */
    int (*utimens)(fs_ctx *x, const char *path, const tree_path *tp, const struct timespec tv[2]);
    int (*chmod)(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode);
    int (*chown)(fs_ctx *x, const char *path, const tree_path *tp, uid_t uid, gid_t gid);
    /* A rename onto an entry of the same kind. NULL: EPERM. */
    int (*rename)(fs_ctx *x, const char *from, const tree_path *a, const tree_path *b,
                  unsigned int flags);
    /* user.* attributes (names starting "user." only reach getxattr). NULL:
     * none (getxattr/removexattr ENODATA, listxattr empty, setxattr ENOTSUP). */
    int (*setxattr)(fs_ctx *x, const char *path, const tree_path *tp, const char *name,
                    const char *value, size_t size, int flags);
    int (*getxattr)(fs_ctx *x, const char *path, const tree_path *tp, const char *name, char *value,
                    size_t size);
    int (*listxattr)(fs_ctx *x, const char *path, const tree_path *tp, char *list, size_t size);
    int (*removexattr)(fs_ctx *x, const char *path, const tree_path *tp, const char *name);
} fs_node;

/* The tables, one per kind (defined by the module serving it). */
extern const fs_node node_root, node_dataset, node_store; /* places.c */
extern const fs_node node_ops_dir, node_op;               /* node_ops.c */
extern const fs_node node_status;                         /* node_status.c */
extern const fs_node node_import;                         /* node_import.c */
extern const fs_node node_export, node_export_fmt, node_export_filter,
    node_export_out;               /* node_export.c */
extern const fs_node node_studies; /* node_studies.c */

/* The table of a kind (TREE_NONE and unknown kinds: one that has nothing). */
const fs_node *node_of(tree_kind kind);

/* Each file system call on a parsed path: the member of the kind's table,
 * or the default its comment in fs_node names. */
int node_getattr(fs_ctx *x, const tree_path *tp, struct stat *st);
/* ENOTDIR unless getattr says it is a directory. */
int node_readdir(fs_ctx *x, const tree_path *tp, fs_fill_fn fill, void *buf);
int node_mkdir(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode);
int node_rmdir(fs_ctx *x, const char *path, const tree_path *tp);
int node_create(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode, int flags,
                fs_file **out);
/* EISDIR for a directory. */
int node_open(fs_ctx *x, const char *path, const tree_path *tp, int flags, fs_file **out);
int node_unlink(fs_ctx *x, const char *path, const tree_path *tp);
int node_truncate(fs_ctx *x, const char *path, const tree_path *tp, off_t size, fs_file *open);
int node_utimens(fs_ctx *x, const char *path, const tree_path *tp, const struct timespec tv[2]);
int node_chmod(fs_ctx *x, const char *path, const tree_path *tp, mode_t mode);
int node_chown(fs_ctx *x, const char *path, const tree_path *tp, uid_t uid, gid_t gid);
/* EXDEV when b is under import/ and a is not (mv copies then). */
int node_rename(fs_ctx *x, const char *from, const tree_path *a, const tree_path *b,
                unsigned int flags);
int node_setxattr(fs_ctx *x, const char *path, const tree_path *tp, const char *name,
                  const char *value, size_t size, int flags);
int node_getxattr(fs_ctx *x, const char *path, const tree_path *tp, const char *name, char *value,
                  size_t size);
int node_listxattr(fs_ctx *x, const char *path, const tree_path *tp, char *list, size_t size);
int node_removexattr(fs_ctx *x, const char *path, const tree_path *tp, const char *name);

/* Whether open(2) flags may change the file (write access or O_TRUNC). */
bool node_wants_write(int flags);
/* The default chown (see fs_node), for a node that serves only part of it. */
int node_chown_fixed(fs_ctx *x, const char *path, const tree_path *tp, uid_t uid, gid_t gid);
/* The refusal of setxattr where attributes cannot be kept. */
int node_no_xattrs(const char *path);

/* An open file serving data (malloc'ed, taken over, freed on failure):
 * fetched fresh per open, it may differ from the size getattr saw, so it
 * is read until EOF (direct_io). */
int node_open_buffer(char *data, size_t len, fs_file **out);
/* read(2) of data (len bytes) at off into buf: the byte count, 0 at EOF. */
int node_copy_out(const char *data, size_t len, char *buf, size_t size, off_t off);
/* An open file reading (and, writable, writing) a local descriptor, taken
 * over: release closes it (and so does a failure). */
int node_open_fd(int fd, bool writable, fs_file **out);
/* The descriptor of a writable node_open_fd file, else -1. */
int node_fd_writable(const fs_file *f);

#endif
