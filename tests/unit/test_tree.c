/* Unit tests for fs/tree.c: path classification, including hostile names. */
#include <errno.h>
#include <string.h>

#include "testlib.h"
#include "../../fs/tree.h"

static tree_path P(const char *path, const char *fixed, int *rc)
{
    tree_path tp;
    *rc = tree_parse(path, fixed, &tp);
    return tp;
}

TEST(root_and_dataset)
{
    int rc;
    tree_path tp = P("/", NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(tp.kind, TREE_ROOT);
    tp = P("/ds1", NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(tp.kind, TREE_DATASET);
    CHECK_EQ_STR(tp.dataset, "ds1");
}

TEST(dataset_operations)
{
    int rc;
    tree_path tp = P("/ds1/operations", NULL, &rc);
    CHECK_EQ_INT(tp.kind, TREE_DS_OPS);
    CHECK_EQ_STR(tp.dataset, "ds1");
    tp = P("/ds1/operations/123.json", NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(tp.kind, TREE_DS_OP);
    CHECK_EQ_STR(tp.name, "123.json");
    tp = P("/ds1/operations/123.json/x", NULL, &rc);
    CHECK_EQ_INT(tp.kind, TREE_NONE);
}

TEST(store_children)
{
    int rc;
    tree_path tp = P("/d/s", NULL, &rc);
    CHECK_EQ_INT(tp.kind, TREE_STORE);
    CHECK_EQ_STR(tp.dataset, "d");
    CHECK_EQ_STR(tp.store, "s");
    CHECK_EQ_INT(P("/d/s/status", NULL, &rc).kind, TREE_STATUS);
    CHECK_EQ_INT(P("/d/s/status/x", NULL, &rc).kind, TREE_NONE);
    CHECK_EQ_INT(P("/d/s/export", NULL, &rc).kind, TREE_EXPORT);
    CHECK_EQ_INT(P("/d/s/operations", NULL, &rc).kind, TREE_STORE_OPS);
    tp = P("/d/s/operations/9.json", NULL, &rc);
    CHECK_EQ_INT(tp.kind, TREE_STORE_OP);
    CHECK_EQ_STR(tp.name, "9.json");
    CHECK_EQ_INT(P("/d/s/unknown", NULL, &rc).kind, TREE_NONE);
    CHECK_EQ_INT(P("/d/s/studies", NULL, &rc).kind, TREE_STUDIES);
}

TEST(import_rest)
{
    int rc;
    tree_path tp = P("/d/s/import", NULL, &rc);
    CHECK_EQ_INT(tp.kind, TREE_IMPORT);
    CHECK_EQ_STR(tp.rest, "");
    tp = P("/d/s/import/a/b/c.dcm", NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(tp.kind, TREE_IMPORT);
    CHECK_EQ_STR(tp.rest, "a/b/c.dcm");
    /* deeper than the parser's component table: rest stays whole */
    tp = P("/d/s/import/1/2/3/4/5/6/7/8/9/10", NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_STR(tp.rest, "1/2/3/4/5/6/7/8/9/10");
}

TEST(export_paths)
{
    int rc;
    tree_path tp = P("/d/s/export/dicom", NULL, &rc);
    CHECK_EQ_INT(tp.kind, TREE_EXPORT_FMT);
    CHECK(tp.format != NULL);
    CHECK_EQ_STR(tp.format->mime_type, "application/dicom; transfer-syntax=*");
    tp = P("/d/s/export/png/one", NULL, &rc);
    CHECK_EQ_INT(tp.kind, TREE_EXPORT_FILTER);
    CHECK_EQ_STR(tp.name, "one");
    CHECK_EQ_STR(tp.format->mime_type, "image/png");
    tp = P("/d/s/export/jpeg/one.out", NULL, &rc);
    CHECK_EQ_INT(tp.kind, TREE_EXPORT_OUT);
    CHECK_EQ_STR(tp.name, "one");
    CHECK_EQ_STR(tp.rest, "");
    tp = P("/d/s/export/raw/one.out/1.2/3.4/5.6", NULL, &rc);
    CHECK_EQ_INT(tp.kind, TREE_EXPORT_OUT);
    CHECK_EQ_STR(tp.rest, "1.2/3.4/5.6");
    /* a name straight in export/ is a filter exporting DICOM as stored */
    tp = P("/d/s/export/gif", NULL, &rc);
    CHECK_EQ_INT(tp.kind, TREE_EXPORT_FILTER);
    CHECK(tp.format == &tree_format_top);
    CHECK_EQ_STR(tp.format->mime_type, "application/dicom; transfer-syntax=*");
    tp = P("/d/s/export/gif.out/1.2", NULL, &rc);
    CHECK_EQ_INT(tp.kind, TREE_EXPORT_OUT);
    CHECK(!tp.runs);
    CHECK_EQ_STR(tp.name, "gif");
    CHECK_EQ_STR(tp.rest, "1.2");
    tp = P("/d/s/export/png/one.runs/R1/1.2", NULL, &rc);
    CHECK_EQ_INT(tp.kind, TREE_EXPORT_OUT);
    CHECK(tp.runs);
    CHECK_EQ_STR(tp.name, "one");
    CHECK_EQ_STR(tp.rest, "R1/1.2");
    CHECK_EQ_INT(P("/d/s/export/gif/x", NULL, &rc).kind, TREE_NONE);
    CHECK_EQ_INT(P("/d/s/export/dicom/one/x", NULL, &rc).kind, TREE_NONE);
    /* ".out" alone is a filter name, not an output directory of "" */
    tp = P("/d/s/export/dicom/.out", NULL, &rc);
    CHECK_EQ_INT(tp.kind, TREE_EXPORT_FILTER);
    CHECK_EQ_STR(tp.format->mime_type, "application/dicom; transfer-syntax=*");
    CHECK_EQ_STR(tree_format_find("dicom-explicit-le", 17)->mime_type,
                 "application/dicom; transfer-syntax=1.2.840.10008.1.2.1");
    CHECK(tree_format_find("dicom-", 6) == NULL);
}

TEST(fixed_dataset_root)
{
    int rc;
    tree_path tp = P("/", "myds", &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(tp.kind, TREE_DATASET);
    CHECK_EQ_STR(tp.dataset, "myds");
    tp = P("/operations", "myds", &rc);
    CHECK_EQ_INT(tp.kind, TREE_DS_OPS);
    tp = P("/st/import/x", "myds", &rc);
    CHECK_EQ_INT(tp.kind, TREE_IMPORT);
    CHECK_EQ_STR(tp.dataset, "myds");
    CHECK_EQ_STR(tp.store, "st");
    CHECK_EQ_STR(tp.rest, "x");
}

TEST(hostile_names)
{
    int rc;
    P("/d/../etc", NULL, &rc);
    CHECK_EQ_INT(rc, -EINVAL);
    P("/..", NULL, &rc);
    CHECK_EQ_INT(rc, -EINVAL);
    P("/d/s/import/./x", NULL, &rc);
    CHECK_EQ_INT(rc, -EINVAL);
    P("/d//s", NULL, &rc);
    CHECK_EQ_INT(rc, -EINVAL);
    P("relative/path", NULL, &rc);
    CHECK_EQ_INT(rc, -EINVAL);
    CHECK_EQ_INT(tree_parse(NULL, NULL, &(tree_path){0}), -EINVAL);
    char longname[300];
    longname[0] = '/';
    memset(longname + 1, 'a', 256);
    longname[257] = '\0';
    P(longname, NULL, &rc);
    CHECK_EQ_INT(rc, -ENAMETOOLONG);
    longname[256] = '\0'; /* exactly 255 bytes: fine */
    tree_path tp = P(longname, NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(strlen(tp.dataset), 255);
    /* a long component deep in import/ is rejected too */
    char deep[400] = "/d/s/import/";
    memset(deep + strlen(deep), 'b', 256);
    P(deep, NULL, &rc);
    CHECK_EQ_INT(rc, -ENAMETOOLONG);
    /* odd but legal bytes pass through untouched */
    tp = P("/d/s/import/sp ace\n\xff*?", NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_STR(tp.rest, "sp ace\n\xff*?");
    /* "..." is an ordinary name */
    tp = P("/...", NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_STR(tp.dataset, "...");
    /* ids that would change a URL (escapes, query, fragment) are invalid */
    P("/d%2F..%2Fother/s", NULL, &rc);
    CHECK_EQ_INT(rc, -EINVAL);
    P("/d/s?x=1/studies", NULL, &rc);
    CHECK_EQ_INT(rc, -EINVAL);
    P("/d/operations/1#x.json", NULL, &rc);
    CHECK_EQ_INT(rc, -EINVAL);
    P("/d/s/operations/a b.json", NULL, &rc);
    CHECK_EQ_INT(rc, -EINVAL);
}

TEST(check_name)
{
    CHECK_EQ_INT(tree_check_name("ok-name_1.2"), 0);
    CHECK_EQ_INT(tree_check_name(""), -EINVAL);
    CHECK_EQ_INT(tree_check_name("."), -EINVAL);
    CHECK_EQ_INT(tree_check_name(".."), -EINVAL);
    CHECK_EQ_INT(tree_check_name("a/b"), -EINVAL);
    CHECK_EQ_INT(tree_check_name(NULL), -EINVAL);
    char n[300];
    memset(n, 'x', 256);
    n[256] = '\0';
    CHECK_EQ_INT(tree_check_name(n), -ENAMETOOLONG);
    n[255] = '\0';
    CHECK_EQ_INT(tree_check_name(n), 0);
    CHECK(tree_reserved_in_dataset("operations"));
    CHECK(!tree_reserved_in_dataset("store1"));
}

TEST(op_file_names)
{
    char buf[300];
    CHECK_EQ_INT(
        tree_op_file_name("projects/p/locations/l/datasets/d/operations/42", buf, sizeof buf), 0);
    CHECK_EQ_STR(buf, "42.json");
    CHECK_EQ_INT(tree_op_id_from_file("42.json", buf, sizeof buf), 0);
    CHECK_EQ_STR(buf, "42");
    CHECK_EQ_INT(tree_op_id_from_file("42.txt", buf, sizeof buf), -ENOENT);
    CHECK_EQ_INT(tree_op_id_from_file(".json", buf, sizeof buf), -ENOENT);
    CHECK_EQ_INT(tree_op_file_name("projects/p/operations/", buf, sizeof buf), -ENAMETOOLONG);
}

int main(void)
{
    RUN(root_and_dataset);
    RUN(dataset_operations);
    RUN(store_children);
    RUN(import_rest);
    RUN(export_paths);
    RUN(fixed_dataset_root);
    RUN(hostile_names);
    RUN(check_name);
    RUN(op_file_names);
    return test_done();
}
