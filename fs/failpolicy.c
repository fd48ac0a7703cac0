/* failpolicy: fail a file or pause the store (see failpolicy.h). */
#include "failpolicy.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#define RETRY_NOTE "retrying with backoff (at most every 60 s)"

void fp_http_cause(const cerr_detail *e, const char *what, const char *bucket, char *cause,
                   size_t len)
{
    const char *msg = e->message[0] ? e->message : e->status;
    switch (e->cls) {
    case CERR_AUTH:
        snprintf(cause, len,
                 "the credentials were refused while %s (%s): run `gcloud auth "
                 "application-default login` or fix -o credentials=FILE (the file is read again "
                 "when it changes); " RETRY_NOTE,
                 what, msg);
        return;
    case CERR_TOKEN:
        snprintf(cause, len, "no access token while %s (%s): check the network; " RETRY_NOTE, what,
                 msg);
        return;
    default:
        break;
    }
    long s = e->http_status;
    if (s == 401 || s == 403)
        snprintf(cause, len,
                 "permission denied while %s (HTTP %ld %s): grant the credentials "
                 "roles/storage.objectAdmin on gs://%s and roles/healthcare.dicomEditor on the "
                 "store; " RETRY_NOTE,
                 what, s, msg, bucket);
    else if (s == 404)
        snprintf(cause, len,
                 "not found while %s (%s): create gs://%s or the store, or remove the files from "
                 "import/; " RETRY_NOTE,
                 what, msg, bucket);
    else if (s == 429)
        snprintf(cause, len, "quota exhausted while %s (%s): wait or raise the quota; " RETRY_NOTE,
                 what, msg);
    else if (s >= 400)
        snprintf(cause, len, "the server refused %s (HTTP %ld %s: %s); " RETRY_NOTE, what, s,
                 e->status, msg);
    else
        snprintf(cause, len, "the server is unreachable while %s (%s); " RETRY_NOTE, what, msg);
}

/* The service agent's address in message ("service-N@gcp-sa-healthcare..."). */
static bool service_agent(const char *message, char *out, size_t len)
{
    const char *at = message ? strstr(message, "@gcp-sa-healthcare.iam.gserviceaccount.com") : NULL;
    if (!at)
        return false;
    const char *start = at;
    while (start > message && (isalnum((unsigned char)start[-1]) || start[-1] == '-'))
        start--;
    size_t n = (size_t)(at - start) + strlen("@gcp-sa-healthcare.iam.gserviceaccount.com");
    if (start == at || n >= len)
        return false;
    memcpy(out, start, n);
    out[n] = '\0';
    return true;
}

bool fp_op_transient(int code, const char *message, const char *bucket, char *cause, size_t len)
{
    const char *msg = message && *message ? message : "no message";
    char agent[128];
    switch (code) {
    case 7: /* PERMISSION_DENIED: the service agent reads the staging bucket */
        if (service_agent(message, agent, sizeof agent))
            snprintf(cause, len,
                     "the Healthcare service agent %s cannot read gs://%s: grant it "
                     "roles/storage.objectViewer on the bucket (gcloud storage buckets "
                     "add-iam-policy-binding gs://%s --member=serviceAccount:%s "
                     "--role=roles/storage.objectViewer); " RETRY_NOTE,
                     agent, bucket, bucket, agent);
        else
            snprintf(cause, len,
                     "the import was denied (%s): the Healthcare service agent "
                     "(service-PROJECT_NUMBER@gcp-sa-healthcare.iam.gserviceaccount.com) needs "
                     "roles/storage.objectViewer on gs://%s; " RETRY_NOTE,
                     msg, bucket);
        return true;
    case 4:  /* DEADLINE_EXCEEDED */
    case 8:  /* RESOURCE_EXHAUSTED */
    case 10: /* ABORTED */
    case 13: /* INTERNAL */
    case 14: /* UNAVAILABLE */
        snprintf(cause, len,
                 "the import operation ended with a transient error (code %d: %s); "
                 "importing the batch again, " RETRY_NOTE,
                 code, msg);
        return true;
    default:
        return false;
    }
}
