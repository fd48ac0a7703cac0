/* failpolicy: what a failed background call means for the files it was
 * for, and what to tell the person about it.
 *
 * A file FAILS only for a reason about the file that no retry can fix: it
 * was refused at close() (import.c), or it is missing from the store after
 * an import whose error may be about content (uploader.c: verify). Every
 * other failure of an upload, an import start, a poll or an import
 * operation (credentials refused, permissions, quota, server errors,
 * transient operation errors, a deadline) pauses the store's background
 * work: its files keep their state and are tried again with capped backoff
 * until the cause clears. These functions write the one line that names the
 * cause and the fix, for STORE/status and the log.
 */
#ifndef DICOMFS_FAILPOLICY_H
#define DICOMFS_FAILPOLICY_H

#include <stdbool.h>
#include <stddef.h>

#include "http.h"

/* The cause and fix of a failed upload, import start, poll or check
 * (what: "uploading to gs://B/O", "starting the import of gs://B/P/..."). */
void fp_http_cause(const cerr_detail *e, const char *what, const char *bucket, char *cause,
                   size_t len);

/* An import operation finished with error code (google.rpc.Code) and
 * message. true: the error does not concern the files (unavailable, quota,
 * aborted, deadline, internal, permission of the Healthcare service agent
 * on the staging bucket): the batch is imported again later, cause says
 * why it waits. false: the error may be about content, each file is
 * checked in the store. */
bool fp_op_transient(int code, const char *message, const char *bucket, char *cause, size_t len);

#endif
