/* Unit tests for fs/journal.c: the durable key/value log of the import
 * manager and the per-store operations list. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../fs/journal.h"
#include "log.h"
#include "testlib.h"

static char root[64];
static int seq;

/* A fresh journal directory per test. */
static void new_dir(char *buf, size_t len)
{
    snprintf(buf, len, "%s/j%d", root, ++seq);
}

typedef struct found {
    const char *key;
    char *val;
    size_t len;
} found;

static int find_cb(void *ctx, const char *key, const void *val, size_t len)
{
    found *f = ctx;
    if (strcmp(key, f->key) == 0) {
        f->val = malloc(len + 1);
        memcpy(f->val, val, len);
        f->val[len] = '\0';
        f->len = len;
        return 1;
    }
    return 0;
}

static char *get(journal *j, const char *key, size_t *len)
{
    found f = {key, NULL, 0};
    journal_scan(j, "", find_cb, &f);
    if (len)
        *len = f.len;
    return f.val;
}

static int count_cb(void *ctx, const char *key, const void *val, size_t len)
{
    (void)key;
    (void)val;
    (void)len;
    (*(int *)ctx)++;
    return 0;
}

static int count(journal *j, const char *prefix)
{
    int n = 0;
    journal_scan(j, prefix, count_cb, &n);
    return n;
}

static off_t file_size(const char *dir, const char *name)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat st;
    return stat(p, &st) == 0 ? st.st_size : -1;
}

TEST(put_reload_values)
{
    char d[128];
    new_dir(d, sizeof d);
    journal *j;
    CHECK_EQ_INT(journal_open(d, &j), 0);
    CHECK_EQ_INT(journal_put(j, "e/1", "alpha", 5, true), 0);
    CHECK_EQ_INT(journal_put(j, "e/2", "be\0ta", 5, false), 0);
    CHECK_EQ_INT(journal_put(j, "e/1", "alpha2", 6, true), 0); /* overwrite */
    CHECK_EQ_INT(journal_put(j, "x/3", "", 0, true), 0);
    journal_close(j);

    CHECK_EQ_INT(journal_open(d, &j), 0);
    size_t len;
    char *v = get(j, "e/1", &len);
    CHECK_EQ_STR(v, "alpha2");
    free(v);
    v = get(j, "e/2", &len);
    CHECK(v && len == 5 && memcmp(v, "be\0ta", 5) == 0);
    free(v);
    v = get(j, "x/3", &len);
    CHECK(v && len == 0);
    free(v);
    CHECK_EQ_INT(count(j, "e/"), 2);
    CHECK_EQ_INT(count(j, ""), 3);
    journal_close(j);
    struct stat st;
    CHECK(stat(d, &st) == 0 && (st.st_mode & 0777) == 0700);
}

TEST(delete_persists)
{
    char d[128];
    new_dir(d, sizeof d);
    journal *j;
    CHECK_EQ_INT(journal_open(d, &j), 0);
    journal_put(j, "a", "1", 1, false);
    journal_put(j, "b", "2", 1, false);
    CHECK_EQ_INT(journal_del(j, "a", true), 0);
    CHECK_EQ_INT(journal_del(j, "never-there", true), 0);
    journal_close(j);
    CHECK_EQ_INT(journal_open(d, &j), 0);
    char *a = get(j, "a", NULL), *b = get(j, "b", NULL);
    CHECK(a == NULL);
    CHECK_EQ_STR(b, "2");
    free(a);
    free(b);
    journal_close(j);
}

typedef struct order {
    int n;
    char seen[3][16];
} order;

static int order_cb(void *ctx, const char *key, const void *val, size_t len)
{
    (void)val;
    (void)len;
    order *o = ctx;
    if (o->n < 3)
        snprintf(o->seen[o->n], 16, "%s", key);
    o->n++;
    return 0;
}

TEST(scan_in_insertion_order)
{
    char d[128];
    new_dir(d, sizeof d);
    journal *j;
    CHECK_EQ_INT(journal_open(d, &j), 0);
    const char *keys[] = {"k/zeta", "k/alpha", "k/mid"};
    for (int i = 0; i < 3; i++)
        journal_put(j, keys[i], "v", 1, false);
    journal_put(j, "other", "v", 1, false);
    journal_close(j);
    CHECK_EQ_INT(journal_open(d, &j), 0);
    order o = {0};
    journal_scan(j, "k/", order_cb, &o);
    CHECK_EQ_INT(o.n, 3);
    for (int i = 0; i < 3 && i < o.n; i++)
        CHECK_EQ_STR(o.seen[i], keys[i]);
    journal_close(j);
}

TEST(torn_last_record_ignored)
{
    char d[128], p[256];
    new_dir(d, sizeof d);
    journal *j;
    CHECK_EQ_INT(journal_open(d, &j), 0);
    journal_put(j, "one", "1111", 4, true);
    journal_put(j, "two", "2222", 4, true);
    off_t before = file_size(d, "log");
    journal_put(j, "three", "3333", 4, true);
    journal_close(j);
    off_t full = file_size(d, "log");
    CHECK(full > before);
    /* A kill in the middle of the last write: cut it at every length. */
    snprintf(p, sizeof p, "%s/log", d);
    char whole[256];
    int fd = open(p, O_RDONLY);
    CHECK(full < (off_t)sizeof whole && fd >= 0 && read(fd, whole, (size_t)full) == full);
    close(fd);
    for (off_t cut = before + 1; cut < full; cut++) {
        fd = open(p, O_WRONLY | O_TRUNC);
        CHECK(fd >= 0 && write(fd, whole, (size_t)cut) == cut);
        close(fd);
        CHECK_EQ_INT(journal_open(d, &j), 0);
        if (!j)
            break;
        char *v1 = get(j, "one", NULL), *v2 = get(j, "two", NULL), *v3 = get(j, "three", NULL);
        CHECK_EQ_STR(v1, "1111");
        CHECK_EQ_STR(v2, "2222");
        CHECK(v3 == NULL);
        free(v1);
        free(v2);
        free(v3);
        CHECK_EQ_INT(file_size(d, "log"), before); /* cut back to the last good record */
        journal_close(j);
    }
    /* New records after a torn one load fine. */
    CHECK_EQ_INT(journal_open(d, &j), 0);
    journal_put(j, "four", "4", 1, true);
    journal_close(j);
    CHECK_EQ_INT(journal_open(d, &j), 0);
    char *v4 = get(j, "four", NULL);
    CHECK_EQ_STR(v4, "4");
    free(v4);
    CHECK_EQ_INT(count(j, ""), 3);
    journal_close(j);
}

TEST(crc_mismatch_stops_and_keeps_tail)
{
    char d[128], p[256];
    new_dir(d, sizeof d);
    journal *j;
    CHECK_EQ_INT(journal_open(d, &j), 0);
    journal_put(j, "one", "1111", 4, true);
    off_t first = file_size(d, "log");
    journal_put(j, "two", "2222", 4, true);
    journal_put(j, "three", "3333", 4, true);
    off_t full = file_size(d, "log");
    journal_close(j);
    /* Flip one byte of the second record's value. */
    snprintf(p, sizeof p, "%s/log", d);
    int fd = open(p, O_RDWR);
    CHECK(fd >= 0);
    char c;
    off_t at = first + 8 + 1 + 4 + 3; /* header, type, key length, "two" */
    CHECK_EQ_INT(pread(fd, &c, 1, at), 1);
    CHECK(c == '2');
    c = 'X';
    CHECK_EQ_INT(pwrite(fd, &c, 1, at), 1);
    close(fd);
    CHECK_EQ_INT(journal_open(d, &j), 0);
    char *v1 = get(j, "one", NULL), *v2 = get(j, "two", NULL), *v3 = get(j, "three", NULL);
    CHECK_EQ_STR(v1, "1111");
    CHECK(v2 == NULL); /* never a corrupted value */
    CHECK(v3 == NULL);
    free(v1);
    free(v2);
    free(v3);
    /* Nothing destroyed silently: the discarded bytes are kept. */
    CHECK_EQ_INT(file_size(d, "log.bad.1"), full - first);
    CHECK_EQ_INT(file_size(d, "log"), first);
    CHECK_EQ_INT(journal_put(j, "five", "5", 1, true), 0);
    journal_close(j);
    CHECK_EQ_INT(journal_open(d, &j), 0);
    CHECK_EQ_INT(count(j, ""), 2);
    journal_close(j);
}

TEST(compaction_round_trip)
{
    char d[128];
    new_dir(d, sizeof d);
    journal *j;
    CHECK_EQ_INT(journal_open(d, &j), 0);
    char key[32], val[64];
    for (int i = 0; i < 500; i++) {
        snprintf(key, sizeof key, "e/%04d", i);
        snprintf(val, sizeof val, "value-%d", i);
        journal_put(j, key, val, strlen(val), false);
    }
    for (int i = 0; i < 500; i += 2) {
        snprintf(key, sizeof key, "e/%04d", i);
        journal_del(j, key, false);
    }
    journal_put(j, "e/0001", "changed", 7, true);
    CHECK(journal_log_size(j) > 0);
    CHECK_EQ_INT(journal_compact(j), 0);
    CHECK_EQ_INT(journal_log_size(j), 0);
    CHECK_EQ_INT(file_size(d, "log"), 0);
    CHECK(file_size(d, "snapshot") > 0);
    CHECK_EQ_INT(file_size(d, "snapshot.tmp"), -1);
    journal_put(j, "e/9999", "after", 5, true);
    journal_close(j);

    CHECK_EQ_INT(journal_open(d, &j), 0);
    CHECK_EQ_INT(count(j, "e/"), 251);
    char *v = get(j, "e/0001", NULL);
    CHECK_EQ_STR(v, "changed");
    free(v);
    v = get(j, "e/0003", NULL);
    CHECK_EQ_STR(v, "value-3");
    free(v);
    v = get(j, "e/0002", NULL);
    CHECK(v == NULL);
    free(v);
    v = get(j, "e/9999", NULL);
    CHECK_EQ_STR(v, "after");
    free(v);
    journal_close(j);
}

TEST(replay_over_snapshot_is_idempotent)
{
    /* A crash between the snapshot rename and the log truncation leaves both:
     * loading must give the same map. Simulate by saving the log first. */
    char d[128], p[256], q[256];
    new_dir(d, sizeof d);
    journal *j;
    CHECK_EQ_INT(journal_open(d, &j), 0);
    journal_put(j, "a", "1", 1, false);
    journal_put(j, "b", "2", 1, false);
    journal_del(j, "a", false);
    journal_put(j, "c", "3", 1, true);
    snprintf(p, sizeof p, "%s/log", d);
    snprintf(q, sizeof q, "%s/log.saved", d);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", p, q);
    CHECK_EQ_INT(system(cmd), 0);
    CHECK_EQ_INT(journal_compact(j), 0);
    journal_close(j);
    CHECK_EQ_INT(rename(q, p), 0);
    CHECK_EQ_INT(journal_open(d, &j), 0);
    char *a = get(j, "a", NULL), *b = get(j, "b", NULL), *c = get(j, "c", NULL);
    CHECK(a == NULL);
    CHECK_EQ_STR(b, "2");
    CHECK_EQ_STR(c, "3");
    free(a);
    free(b);
    free(c);
    CHECK_EQ_INT(count(j, ""), 2);
    journal_close(j);
}

typedef struct ops {
    int n;
    char names[8][64];
    char kinds[8][32];
} ops;

static int ops_cb(void *ctx, const char *op_name, const char *kind)
{
    ops *o = ctx;
    if (o->n < 8) {
        snprintf(o->names[o->n], 64, "%s", op_name);
        snprintf(o->kinds[o->n], 32, "%s", kind);
    }
    o->n++;
    return 0;
}

TEST(operations_per_store_survive_reopen)
{
    char d[128];
    new_dir(d, sizeof d);
    const char *s1 = "projects/p/locations/l/datasets/d/dicomStores/s1";
    const char *s2 = "projects/p/locations/l/datasets/d/dicomStores/s2";
    journal *j;
    CHECK_EQ_INT(journal_open(d, &j), 0);
    CHECK_EQ_INT(
        journal_add_operation(j, s1, "projects/p/locations/l/datasets/d/operations/1", "import"),
        0);
    CHECK_EQ_INT(journal_add_operation(j, s2, "projects/p/locations/l/datasets/d/operations/2",
                                       "export:brain"),
                 0);
    CHECK_EQ_INT(journal_add_operation(j, s1, "projects/p/locations/l/datasets/d/operations/3",
                                       "export:all"),
                 0);
    CHECK_EQ_INT(journal_add_operation(j, NULL, "x", "import"), -EINVAL);
    journal_close(j);
    CHECK_EQ_INT(journal_open(d, &j), 0);
    /* Numbering continues after a reopen: nothing is overwritten. */
    CHECK_EQ_INT(
        journal_add_operation(j, s1, "projects/p/locations/l/datasets/d/operations/4", "import"),
        0);
    ops o = {0};
    CHECK_EQ_INT(journal_list_operations(j, s1, ops_cb, &o), 0);
    CHECK_EQ_INT(o.n, 3);
    CHECK_EQ_STR(o.names[0], "projects/p/locations/l/datasets/d/operations/1");
    CHECK_EQ_STR(o.kinds[0], "import");
    CHECK_EQ_STR(o.names[1], "projects/p/locations/l/datasets/d/operations/3");
    CHECK_EQ_STR(o.kinds[1], "export:all");
    CHECK_EQ_STR(o.names[2], "projects/p/locations/l/datasets/d/operations/4");
    ops o2 = {0};
    journal_list_operations(j, s2, ops_cb, &o2);
    CHECK_EQ_INT(o2.n, 1);
    CHECK_EQ_STR(o2.kinds[0], "export:brain");
    ops o3 = {0};
    journal_list_operations(j, "projects/p/locations/l/datasets/d/dicomStores/s", ops_cb, &o3);
    CHECK_EQ_INT(o3.n, 0); /* exact store match, not a prefix */
    CHECK_EQ_INT(journal_compact(j), 0);
    journal_close(j);
    CHECK_EQ_INT(journal_open(d, &j), 0);
    ops o4 = {0};
    journal_list_operations(j, s1, ops_cb, &o4);
    CHECK_EQ_INT(o4.n, 3);
    journal_close(j);
}

typedef struct thr {
    journal *j;
    int id;
    int fails;
} thr;

static void *writer(void *arg)
{
    thr *t = arg;
    char key[32];
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof key, "t%d/%d", t->id, i);
        if (journal_put(t->j, key, key, strlen(key), true) != 0)
            t->fails++;
    }
    return NULL;
}

TEST(concurrent_synced_puts_all_durable)
{
    char d[128];
    new_dir(d, sizeof d);
    journal *j;
    CHECK_EQ_INT(journal_open(d, &j), 0);
    pthread_t th[4];
    thr t[4];
    for (int i = 0; i < 4; i++) {
        t[i] = (thr){j, i, 0};
        pthread_create(&th[i], NULL, writer, &t[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_INT(t[i].fails, 0);
    }
    journal_close(j);
    CHECK_EQ_INT(journal_open(d, &j), 0);
    CHECK_EQ_INT(count(j, ""), 800);
    char *v = get(j, "t3/199", NULL);
    CHECK_EQ_STR(v, "t3/199");
    free(v);
    journal_close(j);
}

TEST(garbage_log_loads_empty)
{
    char d[128], p[256];
    new_dir(d, sizeof d);
    CHECK_EQ_INT(mkdir(d, 0700), 0);
    snprintf(p, sizeof p, "%s/log", d);
    FILE *f = fopen(p, "w");
    CHECK(f != NULL);
    if (!f)
        return;
    fputs("this is not a journal at all, just some text that is long enough", f);
    fclose(f);
    journal *j;
    CHECK_EQ_INT(journal_open(d, &j), 0);
    if (!j)
        return;
    CHECK_EQ_INT(count(j, ""), 0);
    CHECK_EQ_INT(journal_put(j, "k", "v", 1, true), 0);
    journal_close(j);
    CHECK_EQ_INT(journal_open(d, &j), 0);
    CHECK_EQ_INT(count(j, ""), 1);
    journal_close(j);
}

TEST(bad_keys_rejected)
{
    char d[128];
    new_dir(d, sizeof d);
    journal *j;
    CHECK_EQ_INT(journal_open(d, &j), 0);
    CHECK_EQ_INT(journal_put(j, "", "v", 1, true), -EINVAL);
    journal_close(j);
}

int main(void)
{
    log_init("test_journal", false, LOG_DEBUG);
    snprintf(root, sizeof root, "/tmp/dicomfs-test-journal.XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(put_reload_values);
    RUN(delete_persists);
    RUN(scan_in_insertion_order);
    RUN(torn_last_record_ignored);
    RUN(crc_mismatch_stops_and_keeps_tail);
    RUN(compaction_round_trip);
    RUN(replay_over_snapshot_is_idempotent);
    RUN(operations_per_store_survive_reopen);
    RUN(concurrent_synced_puts_all_durable);
    RUN(garbage_log_loads_empty);
    RUN(bad_keys_rejected);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    (void)system(cmd);
    return test_done();
}
