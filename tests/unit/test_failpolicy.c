/* Unit tests for fs/failpolicy.c: which failures pause a store (never a
 * file), and that the line names the cause and the fix. */
#include <string.h>

#include "../../fs/failpolicy.h"
#include "testlib.h"

static cerr_detail mkerr(int cls, long status, const char *msg)
{
    cerr_detail e;
    memset(&e, 0, sizeof e);
    e.cls = cls;
    e.http_status = status;
    snprintf(e.message, sizeof e.message, "%s", msg);
    return e;
}

TEST(http_causes_name_the_fix)
{
    char c[900];
    cerr_detail e = mkerr(CERR_AUTH, 0, "invalid_grant: Token has been revoked");
    fp_http_cause(&e, "uploading to gs://b/o", "b", c, sizeof c);
    CHECK(strstr(c, "credentials were refused") && strstr(c, "invalid_grant"));
    CHECK(strstr(c, "gcloud auth application-default login") != NULL);
    e = mkerr(CERR_PERMISSION, 403, "no write access");
    fp_http_cause(&e, "uploading to gs://b/o", "b", c, sizeof c);
    CHECK(strstr(c, "permission denied") && strstr(c, "roles/storage.objectAdmin on gs://b"));
    e = mkerr(CERR_QUOTA, 429, "quota");
    fp_http_cause(&e, "starting the import", "b", c, sizeof c);
    CHECK(strstr(c, "quota") != NULL);
    e = mkerr(CERR_NETWORK, 0, "Connection refused");
    fp_http_cause(&e, "reading operation x", "b", c, sizeof c);
    CHECK(strstr(c, "unreachable") && strstr(c, "retrying"));
}

TEST(operation_errors_transient_or_about_content)
{
    char c[900];
    const char *denied = "The Cloud Healthcare Service Agent service-123456789012@gcp-sa-"
                         "healthcare.iam.gserviceaccount.com lacks storage.objects.list";
    CHECK(fp_op_transient(7, denied, "stg", c, sizeof c));
    CHECK(strstr(c, "service-123456789012@gcp-sa-healthcare.iam.gserviceaccount.com") != NULL);
    CHECK(strstr(c, "roles/storage.objectViewer") && strstr(c, "gs://stg"));
    CHECK(fp_op_transient(7, "denied", "stg", c, sizeof c)); /* no agent named: still access */
    for (int code = 0; code < 17; code++) {
        bool transient =
            code == 4 || code == 7 || code == 8 || code == 10 || code == 13 || code == 14;
        CHECK_EQ_INT(fp_op_transient(code, "m", "b", c, sizeof c), transient);
    }
}

int main(void)
{
    RUN(http_causes_name_the_fix);
    RUN(operation_errors_transient_or_about_content);
    return test_done();
}
