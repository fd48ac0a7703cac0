/* Unit tests for fs/rejects.c (refused import/ files), fs/xattrs.c (user.*
 * attributes), fs/statusjson.c (status as JSON) and scratch_is_name. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

#include "testlib.h"
#include "../../fs/rejects.h"
#include "../../fs/scratch.h"
#include "../../fs/statusjson.h"
#include "../../fs/xattrs.h"

static int count_fill(void *buf, const char *name)
{
    (void)name;
    (*(int *)buf)++;
    return 0;
}

static char *status_of(rejects *r, const char *store)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    rejects_status(r, store, f);
    fclose(f);
    return text;
}

TEST(rejects_add_list_remove)
{
    rejects *r = rejects_new();
    rejects_add(r, "S", "a/x.dcm", "not DICOM");
    rejects_add(r, "S", "y\n.dcm", "empty file");
    rejects_add(r, "T", "z.dcm", "other store");
    CHECK(rejects_has(r, "S", "a/x.dcm"));
    CHECK(!rejects_has(r, "S", "z.dcm"));
    int top = 0, sub = 0;
    rejects_list_dir(r, "S", "", count_fill, &top);
    rejects_list_dir(r, "S", "a", count_fill, &sub);
    CHECK_EQ_INT(top, 1);
    CHECK_EQ_INT(sub, 1);
    char *text = status_of(r, "S");
    CHECK(strstr(text, "rejected: import/a/x.dcm: not DICOM\n") != NULL);
    CHECK(strstr(text, "rejected: import/y\\n.dcm: empty file\n") != NULL);
    CHECK(strstr(text, "z.dcm") == NULL);
    free(text);
    CHECK(rejects_remove(r, "S", "a/x.dcm"));
    CHECK(!rejects_remove(r, "S", "a/x.dcm"));
    CHECK(!rejects_has(r, "S", "a/x.dcm"));
    rejects_free(r);
}

TEST(rejects_bounded)
{
    rejects *r = rejects_new();
    char name[32];
    for (int i = 0; i < REJECTS_MAX + 5; i++) {
        snprintf(name, sizeof name, "f%d", i);
        rejects_add(r, "S", name, "x");
    }
    CHECK(!rejects_has(r, "S", "f0")); /* the oldest went */
    snprintf(name, sizeof name, "f%d", REJECTS_MAX + 4);
    CHECK(rejects_has(r, "S", name));
    rejects_free(r);
}

TEST(xattrs_user_only_and_follow_renames)
{
    xattrs *x = xattrs_new();
    CHECK_EQ_INT(xattrs_set(x, "S", "d/a", "user.k", "v1", 2, 0), 0);
    CHECK_EQ_INT(xattrs_set(x, "S", "d/a", "user.k", "v", 1, XATTR_CREATE), -EEXIST);
    CHECK_EQ_INT(xattrs_set(x, "S", "d/a", "user.n", "v", 1, XATTR_REPLACE), -ENODATA);
    CHECK_EQ_INT(xattrs_set(x, "S", "d/a", "user.dicomfs.state", "v", 1, 0), -EPERM);
    CHECK_EQ_INT(xattrs_set(x, "S", "d/a", "trusted.k", "v", 1, 0), -ENOTSUP);
    char buf[16];
    CHECK_EQ_INT(xattrs_get(x, "S", "d/a", "user.k", NULL, 0), 2);
    CHECK_EQ_INT(xattrs_get(x, "S", "d/a", "user.k", buf, 1), -ERANGE);
    CHECK_EQ_INT(xattrs_get(x, "S", "d/a", "user.k", buf, sizeof buf), 2);
    CHECK(memcmp(buf, "v1", 2) == 0);
    CHECK_EQ_INT(xattrs_list(x, "S", "d/a", buf, sizeof buf), 7);
    CHECK_EQ_STR(buf, "user.k");
    xattrs_rename(x, "S", "d", "e");
    CHECK_EQ_INT(xattrs_get(x, "S", "d/a", "user.k", NULL, 0), -ENODATA);
    CHECK_EQ_INT(xattrs_get(x, "S", "e/a", "user.k", NULL, 0), 2);
    CHECK_EQ_INT(xattrs_remove(x, "S", "e/a", "user.k"), 0);
    CHECK_EQ_INT(xattrs_remove(x, "S", "e/a", "user.k"), -ENODATA);
    CHECK_EQ_INT(xattrs_set(x, "S", "e/b", "user.k", "v", 1, 0), 0);
    xattrs_drop(x, "S", "e");
    CHECK_EQ_INT(xattrs_list(x, "S", "e/b", NULL, 0), 0);
    xattrs_free(x);
}

TEST(status_json_fields)
{
    const char *text = "spooled: 1\nimported: 12\nfailed: 1\n"
                       "failed: import/a.dcm: refused: bad (HTTP 400)\n"
                       "rejected: import/b\\nc.dcm: not a DICOM Part-10 file: empty file\n";
    char *j = status_json(text);
    CHECK(j != NULL);
    CHECK(strstr(j, "\"spooled\":\t1") != NULL);
    CHECK(strstr(j, "\"imported\":\t12") != NULL);
    CHECK(strstr(j, "\"path\":\t\"import/a.dcm\"") != NULL);
    CHECK(strstr(j, "\"reason\":\t\"refused: bad (HTTP 400)\"") != NULL);
    CHECK(strstr(j, "\"path\":\t\"import/b\\nc.dcm\"") != NULL); /* a real newline, JSON-escaped */
    CHECK(j[strlen(j) - 1] == '\n');
    free(j);
}

TEST(scratch_names)
{
    const char *yes[] = {".x.swp",    "x~",   "#x#",  "x.swp",    "x.tmp",
                         "sedAb12Cd", "4913", "5036", ".x.AbCdEf"};
    const char *no[] = {"x", "one-study", "2024", "4914", "sed", "sedAb12Cd9", "x.txt"};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
        CHECK(scratch_is_name(yes[i]));
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        CHECK(!scratch_is_name(no[i]));
}

int main(void)
{
    RUN(rejects_add_list_remove);
    RUN(rejects_bounded);
    RUN(xattrs_user_only_and_follow_renames);
    RUN(status_json_fields);
    RUN(scratch_names);
    return test_done();
}
