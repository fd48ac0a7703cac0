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

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct journal journal;

/* Opens (creating) the journal in dir. Returns 0 or a negative errno. */
int journal_open(const char *dir, journal **out);
void journal_close(journal *j);

/* Operations started from a store's import/ or export/ (kind "import" or
 * "export:NAME"). Recording is durable before it returns. */
int journal_add_operation(journal *j, const char *store, const char *op_name, const char *kind);
typedef int (*journal_op_cb)(void *ctx, const char *op_name, const char *kind);
/* store NULL: the operations of every store. */
int journal_list_operations(journal *j, const char *store, journal_op_cb cb, void *ctx);

/* A durable key/value map for the import manager (keys are strings,
 * values are bytes), stored as an append-only log of records, each with a
 * length and a CRC32, plus a snapshot written by compaction (temp file,
 * fsync, rename, fsync of the directory). On load a torn or corrupt record
 * ends the log (what follows it is kept in "log.bad.N" and logged).
 * With sync true the call returns once the record is on disk (concurrent
 * callers share one fsync: group commit); with sync false it becomes
 * durable with the next synced record. The in-memory map holds only what
 * callers put (entry metadata, never file data). */
int journal_put(journal *j, const char *key, const void *val, size_t len, bool sync);
/* Same, for a record that lets accepted work progress (a batch commit, an
 * upload or import result): when the cache disk is full it may use the
 * journal's reserved space, so a full disk cannot stop the imports that
 * would free it. Records that accept NEW work must use journal_put. */
int journal_put_progress(journal *j, const char *key, const void *val, size_t len, bool sync);
int journal_del(journal *j, const char *key, bool sync);
/* Makes every record written so far durable (one fdatasync shared by
 * concurrent callers). Also compacts when the log has grown large. */
int journal_sync(journal *j);
/* Calls cb for every key starting with prefix, in insertion order of the
 * keys. Non-zero from cb stops and is returned. The callback must not call
 * back into the journal. */
typedef int (*journal_kv_cb)(void *ctx, const char *key, const void *val, size_t len);
int journal_scan(journal *j, const char *prefix, journal_kv_cb cb, void *ctx);
/* Rewrites the snapshot from the map and empties the log. Also done
 * automatically when the log grows past a threshold. */
int journal_compact(journal *j);
/* Bytes in the log file since the last compaction (for tests and status). */
uint64_t journal_log_size(journal *j);

#endif
