/* scratch: the temporary files editors and tools make beside a filter in
 * export/ (or export/FMT/), kept as private local files that start nothing.
 * Owns: which names are scratch and cache_dir/exports/.../.scratch/.
 *
 * A name is scratch when it starts with '.' or '#', ends with '~', ".swp",
 * ".swo", ".swx" or ".tmp", is GNU sed's "sedXXXXXX" (6 letters/digits) or
 * is one of vim's directory-writability probes (4913, 5036, ... = 4913 +
 * k*123). Such files live in cache_dir/exports/DS/STORE/FMT/.scratch/ (0600)
 * and behave like ordinary files; renaming one over a filter name installs
 * its content as a new version of that filter (export.h), which is how
 * `sed -i` and vim's write-temp-then-rename save a filter.
 */
#ifndef DICOMFS_SCRATCH_H
#define DICOMFS_SCRATCH_H

#include <stdbool.h>
#include <sys/stat.h>

#include "ctx.h"
#include "tree.h"

typedef int (*scratch_fill_fn)(void *buf, const char *name, const struct stat *st);

bool scratch_is_name(const char *name);

int scratch_getattr(fs_ctx *x, const tree_path *tp, struct stat *st);
/* open(2) of the local file (flags as given, O_CREAT makes it): *fd. */
int scratch_open(fs_ctx *x, const tree_path *tp, int flags, int *fd);
int scratch_truncate(fs_ctx *x, const tree_path *tp, off_t size);
int scratch_utimens(fs_ctx *x, const tree_path *tp, const struct timespec tv[2]);
int scratch_unlink(fs_ctx *x, const tree_path *tp);
/* Lists the scratch files of tp's format folder. */
int scratch_readdir(fs_ctx *x, const tree_path *tp, scratch_fill_fn fill, void *buf);
/* The whole content (malloc'ed), and its replacement. */
int scratch_read_all(fs_ctx *x, const tree_path *tp, char **data, size_t *len);
int scratch_write_all(fs_ctx *x, const tree_path *tp, const char *data, size_t len);
int scratch_rename(fs_ctx *x, const tree_path *from, const tree_path *to);

#endif
