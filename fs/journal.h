/* journal: the durable local record in cache_dir of what dicomfs accepted
 * and started, so that a crash or remount loses nothing: spooled files and
 * their state (spooled, uploaded, importing, imported, failed), batches, and
 * the operations each store's import/ and export/ started. Updates are
 * atomic (write to a temp file, fsync, rename, fsync the directory, or an
 * append-only log with checksummed records); a kill at any point leaves a
 * journal that loads.
 */
#ifndef DICOMFS_JOURNAL_H
#define DICOMFS_JOURNAL_H

#include <stdint.h>

typedef struct journal journal;

/* Opens (creating) the journal in dir. Returns 0 or a negative errno. */
int journal_open(const char *dir, journal **out);
void journal_close(journal *j);

/* Operations started from a store's import/ or export/ (kind "import" or
 * "export:NAME"). Recording is durable before it returns. */
int journal_add_operation(journal *j, const char *store, const char *op_name, const char *kind);
typedef int (*journal_op_cb)(void *ctx, const char *op_name, const char *kind);
int journal_list_operations(journal *j, const char *store, journal_op_cb cb, void *ctx);

#endif
