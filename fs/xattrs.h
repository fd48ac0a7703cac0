/* xattrs: user.* extended attributes set on files in STORE/import/, so that
 * `rsync -aX` and `cp --preserve=xattr` keep them (they go nowhere remote).
 *
 * Kept in memory per (store, path below import/), following renames and
 * dropped at unlink; a remount forgets them. Names under "user.dicomfs."
 * belong to dicomfs itself (read-only, served elsewhere): setting or
 * removing them is EPERM. Other namespaces (trusted., security., system.)
 * are not supported: ENOTSUP. At most XATTRS_MAX_VALUE bytes a value and
 * XATTRS_MAX_FILE bytes of names and values a file (E2BIG / ENOSPC).
 * Thread-safe.
 */
#ifndef DICOMFS_XATTRS_H
#define DICOMFS_XATTRS_H

#include <stddef.h>

#define XATTRS_MAX_VALUE 65536
#define XATTRS_MAX_FILE (256 * 1024)

typedef struct xattrs xattrs;

xattrs *xattrs_new(void);
void xattrs_free(xattrs *x);

/* The return conventions of the FUSE callbacks: 0 / size / -errno. */
int xattrs_set(xattrs *x, const char *store, const char *path, const char *name, const char *value,
               size_t size, int flags);
int xattrs_get(xattrs *x, const char *store, const char *path, const char *name, char *value,
               size_t size);
int xattrs_list(xattrs *x, const char *store, const char *path, char *list, size_t size);
int xattrs_remove(xattrs *x, const char *store, const char *path, const char *name);
/* The file moved or went (a directory: everything below it too). */
void xattrs_rename(xattrs *x, const char *store, const char *from, const char *to);
void xattrs_drop(xattrs *x, const char *store, const char *path);

#endif
