/* Unit tests for fs/index.c: the SQLite index of remembered import/ files. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../fs/index.h"
#include "log.h"
#include "testlib.h"

#define STORE "projects/p/locations/l/datasets/d/dicomStores/s"
#define OTHER "projects/p/locations/l/datasets/d/dicomStores/t"

static char root[64];
static int seq;

static index_db *fresh(char *dir, size_t len)
{
    snprintf(dir, len, "%s/i%d", root, ++seq);
    mkdir(dir, 0700);
    index_db *ix = NULL;
    CHECK_EQ_INT(index_open(dir, &ix), 0);
    return ix;
}

static index_entry entry(const char *path, const char *sop, uint64_t size)
{
    index_entry e = {.path = path,
                     .id = "0123456789abcdef0123456789abcdef",
                     .state = 3,
                     .size = size,
                     .mode = 0644,
                     .uid = 1000,
                     .gid = 100,
                     .sop = sop,
                     .study = "1.2",
                     .series = "1.2.3"};
    e.mtime.tv_sec = 1700000000;
    e.mtime.tv_nsec = 123456789;
    e.atime = e.ctime = e.mtime;
    return e;
}

typedef struct got {
    char path[256], name[128], sop[64];
    uint64_t size;
    unsigned mode;
    long mtime_ns;
    int n;
} got;

static int keep(void *ctx, const index_entry *e)
{
    got *g = ctx;
    snprintf(g->path, sizeof g->path, "%s", e->path);
    snprintf(g->name, sizeof g->name, "%s", e->name);
    snprintf(g->sop, sizeof g->sop, "%s", e->sop);
    g->size = e->size;
    g->mode = e->mode;
    g->mtime_ns = e->mtime.tv_nsec;
    g->n++;
    return 0;
}

TEST(put_get_reopen)
{
    char dir[128];
    index_db *ix = fresh(dir, sizeof dir);
    index_entry e = entry("a/b/c.dcm", "1.2.3.4", 16384);
    CHECK_EQ_INT(index_put(ix, STORE, &e), 0);
    index_close(ix);
    /* private: the cache holds users' file names */
    const char *files[] = {"index.sqlite", "index.sqlite-wal", "index.sqlite-shm"};
    for (int i = 0; i < 3; i++) {
        char p[192];
        struct stat sb;
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        if (stat(p, &sb) == 0)
            CHECK_EQ_INT(sb.st_mode & 0777, 0600);
        else
            CHECK(i > 0); /* WAL files may be gone after a clean close */
    }
    CHECK_EQ_INT(index_open(dir, &ix), 0);
    got g = {0};
    CHECK_EQ_INT(index_get(ix, STORE, "a/b/c.dcm", keep, &g), 0);
    CHECK_EQ_STR(g.path, "a/b/c.dcm");
    CHECK_EQ_STR(g.name, "c.dcm");
    CHECK_EQ_STR(g.sop, "1.2.3.4");
    CHECK_EQ_INT(g.size, 16384);
    CHECK_EQ_INT(g.mode, 0644);
    CHECK_EQ_INT(g.mtime_ns, 123456789);
    CHECK_EQ_INT(index_get(ix, STORE, "a/b/x.dcm", keep, &g), -ENOENT);
    CHECK_EQ_INT(index_get(ix, OTHER, "a/b/c.dcm", keep, &g), -ENOENT);
    index_close(ix);
}

TEST(put_replaces_and_del_forgets)
{
    char dir[128];
    index_db *ix = fresh(dir, sizeof dir);
    index_entry e = entry("top.dcm", "9.9", 10);
    CHECK_EQ_INT(index_put(ix, STORE, &e), 0);
    e.size = 20;
    CHECK_EQ_INT(index_put(ix, STORE, &e), 0);
    CHECK_EQ_INT(index_count(ix, STORE), 1);
    got g = {0};
    CHECK_EQ_INT(index_get(ix, STORE, "top.dcm", keep, &g), 0);
    CHECK_EQ_INT(g.size, 20);
    CHECK_EQ_INT(index_del(ix, STORE, "top.dcm"), 0);
    CHECK_EQ_INT(index_get(ix, STORE, "top.dcm", keep, &g), -ENOENT);
    CHECK_EQ_INT(index_del(ix, STORE, "top.dcm"), 0);
    CHECK_EQ_INT(index_del(ix, OTHER, "top.dcm"), 0);
    index_close(ix);
}

static int count_cb(void *ctx, const index_entry *e)
{
    got *g = ctx;
    /* names arrive sorted: each one after the previous */
    if (g->n && strcmp(e->name, g->name) <= 0)
        g->size = 1;
    snprintf(g->name, sizeof g->name, "%s", e->name);
    g->n++;
    return 0;
}

TEST(list_is_one_folder_in_pages)
{
    char dir[128];
    index_db *ix = fresh(dir, sizeof dir);
    char p[64], sop[32];
    for (int i = 0; i < 1300; i++) { /* more than two pages */
        snprintf(p, sizeof p, "f/%05d.dcm", i);
        snprintf(sop, sizeof sop, "1.%d", i);
        index_entry e = entry(p, sop, 1);
        CHECK_EQ_INT(index_put(ix, STORE, &e), 0);
    }
    index_entry sub = entry("f/g/deep.dcm", "2.1", 1), top = entry("t.dcm", "2.2", 1);
    CHECK_EQ_INT(index_put(ix, STORE, &sub), 0);
    CHECK_EQ_INT(index_put(ix, STORE, &top), 0);
    got g = {0};
    CHECK_EQ_INT(index_list(ix, STORE, "f", count_cb, &g), 0);
    CHECK_EQ_INT(g.n, 1300);
    CHECK_EQ_INT(g.size, 0); /* in order, none twice */
    memset(&g, 0, sizeof g);
    CHECK_EQ_INT(index_list(ix, STORE, "", count_cb, &g), 0);
    CHECK_EQ_INT(g.n, 1);
    CHECK_EQ_INT(index_has_children(ix, STORE, "f"), 1);
    CHECK_EQ_INT(index_has_children(ix, STORE, "f/g"), 1);
    CHECK_EQ_INT(index_has_children(ix, STORE, "h"), 0);
    CHECK_EQ_INT(index_has_children(ix, OTHER, "f"), 0);
    index_close(ix);
}

TEST(move_tree_renames_folder_and_below_only)
{
    char dir[128];
    index_db *ix = fresh(dir, sizeof dir);
    const char *paths[] = {"a/1.dcm", "a/b/2.dcm", "ab/3.dcm", "a.dcm"};
    for (int i = 0; i < 4; i++) {
        index_entry e = entry(paths[i], paths[i], 1);
        CHECK_EQ_INT(index_put(ix, STORE, &e), 0);
    }
    CHECK_EQ_INT(index_move_tree(ix, STORE, "a", "z/y"), 0);
    got g = {0};
    CHECK_EQ_INT(index_get(ix, STORE, "z/y/1.dcm", keep, &g), 0);
    CHECK_EQ_INT(index_get(ix, STORE, "z/y/b/2.dcm", keep, &g), 0);
    CHECK_EQ_INT(index_get(ix, STORE, "ab/3.dcm", keep, &g), 0);
    CHECK_EQ_INT(index_get(ix, STORE, "a.dcm", keep, &g), 0);
    CHECK_EQ_INT(index_get(ix, STORE, "a/1.dcm", keep, &g), -ENOENT);
    CHECK_EQ_INT(index_count(ix, STORE), 4);
    index_close(ix);
}

TEST(find_sop_skips_the_file_itself)
{
    char dir[128];
    index_db *ix = fresh(dir, sizeof dir);
    index_entry a = entry("x/a.dcm", "7.7.7", 1), b = entry("x/b.dcm", "7.7.7", 1);
    CHECK_EQ_INT(index_put(ix, STORE, &a), 0);
    got g = {0};
    CHECK_EQ_INT(index_find_sop(ix, STORE, "7.7.7", "x/a.dcm", keep, &g), -ENOENT);
    CHECK_EQ_INT(index_find_sop(ix, STORE, "7.7.7", "y.dcm", keep, &g), 0);
    CHECK_EQ_STR(g.path, "x/a.dcm");
    CHECK_EQ_INT(index_put(ix, STORE, &b), 0);
    CHECK_EQ_INT(index_find_sop(ix, STORE, "7.7.7", "x/a.dcm", keep, &g), 0);
    CHECK_EQ_STR(g.path, "x/b.dcm");
    CHECK_EQ_INT(index_find_sop(ix, OTHER, "7.7.7", "y.dcm", keep, &g), -ENOENT);
    index_close(ix);
}

static int store_cb(void *ctx, const char *store)
{
    got *g = ctx;
    snprintf(g->path + strlen(g->path), sizeof g->path - strlen(g->path), "%s;", store);
    g->n++;
    return 0;
}

TEST(stores_are_listed_after_reopen)
{
    char dir[128];
    index_db *ix = fresh(dir, sizeof dir);
    index_entry e = entry("a.dcm", "1", 1);
    CHECK_EQ_INT(index_put(ix, STORE, &e), 0);
    CHECK_EQ_INT(index_put(ix, OTHER, &e), 0);
    index_close(ix);
    CHECK_EQ_INT(index_open(dir, &ix), 0);
    got g = {0};
    CHECK_EQ_INT(index_stores(ix, store_cb, &g), 0);
    CHECK_EQ_INT(g.n, 2);
    CHECK_EQ_STR(g.path, STORE ";" OTHER ";");
    index_close(ix);
}

TEST(open_fails_cleanly_on_garbage)
{
    char dir[128];
    snprintf(dir, sizeof dir, "%s/bad", root);
    mkdir(dir, 0700);
    char file[192];
    snprintf(file, sizeof file, "%s/index.sqlite", dir);
    FILE *f = fopen(file, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("this is not a database, just some text that is long enough to be a header...", f);
        fclose(f);
    }
    index_db *ix = (index_db *)1;
    CHECK_EQ_INT(index_open(dir, &ix), -EIO);
    CHECK(ix == NULL);
}

int main(void)
{
    log_init("test_index", false, LOG_DEBUG);
    snprintf(root, sizeof root, "/tmp/dicomfs-test-index.XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(put_get_reopen);
    RUN(put_replaces_and_del_forgets);
    RUN(list_is_one_folder_in_pages);
    RUN(move_tree_renames_folder_and_below_only);
    RUN(find_sop_skips_the_file_itself);
    RUN(stores_are_listed_after_reopen);
    RUN(open_fails_cleanly_on_garbage);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0)
        fprintf(stderr, "# cannot remove %s\n", root);
    return test_done();
}
