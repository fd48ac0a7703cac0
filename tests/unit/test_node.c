/* Unit tests for fs/node.c: every kind of entry has its table, and the
 * refusals that need no server (the dispatcher's answers before any
 * lookup); fs_cache_key (fs/ctx.c). Links the fs/ core without FUSE. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"
#include "../../fs/node.h"

static tree_path P(const char *path)
{
    tree_path tp;
    memset(&tp, 0, sizeof tp);
    if (tree_parse(path, NULL, &tp) != 0)
        tp.kind = TREE_NONE;
    return tp;
}

TEST(every_kind_registered)
{
    for (int k = TREE_ROOT; k < TREE_NONE; k++) {
        const fs_node *n = node_of((tree_kind)k);
        CHECK(n != node_of(TREE_NONE));
        CHECK(n->getattr != NULL);
    }
    CHECK(node_of(TREE_NONE)->getattr == NULL);
    CHECK(node_of((tree_kind)999) == node_of(TREE_NONE));
    /* only import/ keeps attributes and needs the import manager */
    CHECK(node_of(TREE_IMPORT)->needs_import);
    CHECK(node_of(TREE_IMPORT)->setxattr != NULL);
    CHECK(!node_of(TREE_STUDIES)->needs_import);
    CHECK(node_of(TREE_STUDIES)->setxattr == NULL);
}

TEST(refusals_without_lookup)
{
    fs_ctx x;
    memset(&x, 0, sizeof x);
    tree_path root = P("/"), st = P("/d/s/status"), exp = P("/d/s/export");
    tree_path fmt = P("/d/s/export/dicom"), op = P("/d/s/operations/1.json");
    tree_path none = P("/d/s/nope"), filter = P("/d/s/export/dicom/f");
    tree_path imp = P("/d/s/import/a.dcm"), out = P("/d/s/export/dicom/f.out");
    fs_file *f = NULL;
    CHECK_EQ_INT(node_mkdir(&x, "/", &root, 0755), -EEXIST);
    CHECK_EQ_INT(node_mkdir(&x, "/d/s/export/dicom", &fmt, 0755), -EEXIST);
    CHECK_EQ_INT(node_mkdir(&x, "/d/s/status", &st, 0755), -EACCES);
    CHECK_EQ_INT(node_mkdir(&x, "/d/s/nope", &none, 0755), -EPERM);
    CHECK_EQ_INT(node_create(&x, "/", &root, 0644, O_WRONLY, &f), -EPERM);
    CHECK_EQ_INT(node_create(&x, "/d/s/export", &exp, 0644, O_WRONLY, &f), -EACCES);
    CHECK_EQ_INT(node_create(&x, "/d/s/operations/1.json", &op, 0644, O_WRONLY, &f), -EACCES);
    CHECK_EQ_INT(node_create(&x, "/d/s/export/dicom/f.out", &out, 0644, O_WRONLY, &f), -EINVAL);
    CHECK_EQ_INT(node_unlink(&x, "/d/s/status", &st), -EACCES);
    CHECK_EQ_INT(node_unlink(&x, "/d/s/nope", &none), -ENOENT);
    CHECK_EQ_INT(node_unlink(&x, "/d/s/export", &exp), -EPERM);
    CHECK_EQ_INT(node_rmdir(&x, "/d/s/nope", &none), -ENOENT);
    CHECK_EQ_INT(node_rmdir(&x, "/d/s/export", &exp), -EPERM);
    /* a rename into import/ from elsewhere copies (EXDEV); other kinds refuse */
    CHECK_EQ_INT(node_rename(&x, "/d/s/export/dicom/f", &filter, &imp, 0), -EXDEV);
    CHECK_EQ_INT(node_rename(&x, "/d/s/status", &st, &filter, 0), -EPERM);
    /* attributes exist only below import/ */
    char v[8];
    CHECK_EQ_INT(node_getxattr(&x, "/d/s/status", &st, "user.a", v, sizeof v), -ENODATA);
    CHECK_EQ_INT(node_listxattr(&x, "/d/s/status", &st, v, sizeof v), 0);
    CHECK_EQ_INT(node_setxattr(&x, "/d/s/status", &st, "user.a", "1", 1, 0), -ENOTSUP);
    CHECK_EQ_INT(node_removexattr(&x, "/d/s/status", &st, "user.a"), -ENODATA);
}

TEST(copy_out_and_write_flags)
{
    char buf[8];
    CHECK_EQ_INT(node_copy_out("hello", 5, buf, sizeof buf, 0), 5);
    CHECK_EQ_INT(node_copy_out("hello", 5, buf, 2, 3), 2);
    CHECK(memcmp(buf, "lo", 2) == 0);
    CHECK_EQ_INT(node_copy_out("hello", 5, buf, sizeof buf, 5), 0);
    CHECK_EQ_INT(node_copy_out("hello", 5, buf, sizeof buf, -1), -EINVAL);
    CHECK(!node_wants_write(O_RDONLY));
    CHECK(node_wants_write(O_RDONLY | O_TRUNC));
    CHECK(node_wants_write(O_WRONLY));
    CHECK(node_wants_write(O_RDWR));
}

TEST(cache_keys)
{
    const struct {
        const char *ds, *store, *what, *want;
    } cases[] = {
        {NULL, NULL, NULL, "/"},
        {"d", NULL, NULL, "/d"},
        {"d", NULL, "operations", "/d/operations"},
        {"d", "s", "studies/1.2", "/d/s/studies/1.2"},
        {"d", "s", NULL, "/d/s"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *k = fs_cache_key(cases[i].ds, cases[i].store, cases[i].what);
        CHECK_EQ_STR(k, cases[i].want);
        free(k);
    }
}

int main(void)
{
    RUN(every_kind_registered);
    RUN(refusals_without_lookup);
    RUN(copy_out_and_write_flags);
    RUN(cache_keys);
    return test_done();
}
