/* adopt: finds the operation of an import start whose answer was lost.
 *
 * dicomStores.import is not idempotent: a start whose request reached the
 * server but whose answer did not (connection reset, garbled body) may have
 * created an operation nobody tracks, and starting again would make a
 * second one. So the uploader remembers when such a start was sent and,
 * before starting again, lists the dataset's operations: an import
 * (ImportDicomData) created since then that the journal does not know is
 * that start's operation, and is adopted instead of starting another.
 */
#ifndef DICOMFS_ADOPT_H
#define DICOMFS_ADOPT_H

#include <time.h>

#include "healthcare.h"
#include "journal.h"

/* The intent, journaled durably before each start and removed once its
 * outcome is known, so that a start cut short by a crash is reconciled
 * after the restart too. Keys "s/BATCH". get: the time the start was
 * sent, or 0 when none is pending. */
int adopt_intent_put(journal *j, const char *batch_id, time_t sent);
time_t adopt_intent_get(journal *j, const char *batch_id);
void adopt_intent_del(journal *j, const char *batch_id);

/* Did this failure of hc_import possibly reach the server and start the
 * import (no answer, or an unreadable one)? */
bool adopt_maybe_started(int hc_rc);

/* Looks for the operation of store's lost import start sent at `since`
 * (wall clock). 1: found, *op (malloc'ed) is its name; 0: the start was
 * not carried out; < 0: the operations could not be listed (err filled). */
int adopt_lost_import(hc_client *hc, journal *j, const char *store, time_t since, char **op,
                      cerr_detail *err);

#endif
