/* statusjson: STORE/status.json, the status text as one JSON object for
 * scripts and monitoring.
 *
 * Every "KEY: NUMBER" line becomes a number field; "failed: PATH: REASON"
 * lines go to "failed_files" and "rejected: PATH: REASON" lines to
 * "rejected", each as {"path", "reason"} with the status text's escapes
 * (\n, \r, \\) undone. The path ends at the first ": " after it, so a name
 * holding ": " is split there. Counters added to the text later show up
 * without a change here.
 */
#ifndef DICOMFS_STATUSJSON_H
#define DICOMFS_STATUSJSON_H

/* malloc'ed JSON with a final newline, or NULL (no memory). */
char *status_json(const char *text);

#endif
