/* Unit tests for the import/ namespace without network: fs/spool.c,
 * fs/import.c, fs/status.c and fs/wait.c, with the import manager in its
 * "no uploader" mode (NULL clients): files are accepted, journaled and
 * listed, never uploaded. DICOM files come from pydicom at test time. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "../../fs/import.h"
#include "gcs.h"
#include "healthcare.h"
#include "http.h"
#include "../../fs/journal.h"
#include "log.h"
#include "../../fs/spool.h"
#include "../../fs/status.h"
#include "testlib.h"
#include "testsrv.h"
#include "../../fs/wait.h"

#define STORE "projects/p/locations/l/datasets/d/dicomStores/s"
#define SOP1 "1.2.826.0.1.3680043.8.498.4242.1"
#define SOP2 "1.2.826.0.1.3680043.8.498.4242.2"

static char root[64];
static char valid1[256], valid2[256];
static int seq;

/* A new, empty directory under root for one test, and a spool opened on it
 * (NULL when it cannot be: the CHECKs have said why). */
static spool *open_fresh_spool(char *dir, size_t cap, const char *what)
{
    snprintf(dir, cap, "%s/spool-%s-%d", root, what, seq++);
    CHECK_EQ_INT(mkdir(dir, 0700), 0);
    spool *sp = NULL;
    CHECK_EQ_INT(spool_open(dir, &sp), 0);
    return sp;
}

typedef struct env {
    char cache[200];
    journal *j;
    import_mgr *m;
} env;

static int env_start(env *e)
{
    import_config cfg = {.cache_dir = e->cache,
                         .staging_bucket = "bucket",
                         .staging_prefix = "pre",
                         .uploads = 2,
                         .commit_delay_s = 1,
                         /* The same sample files go in under many names: these
                          * tests are about names, batches and restarts, not
                          * duplicates (test_migrate covers present files). */
                         .upload_present = true,
                         .cache_max = 1ull << 30,
                         .uid = getuid(),
                         .gid = getgid()};
    char jd[256];
    snprintf(jd, sizeof jd, "%s/journal", e->cache);
    int rc = journal_open(jd, &e->j);
    if (rc == 0)
        rc = import_mgr_new(&cfg, NULL, NULL, e->j, &e->m);
    return rc;
}

static void env_stop(env *e)
{
    import_mgr_free(e->m);
    journal_close(e->j);
    e->m = NULL;
    e->j = NULL;
}

static int env_new(env *e)
{
    snprintf(e->cache, sizeof e->cache, "%s/c%d", root, ++seq);
    mkdir(e->cache, 0700);
    return env_start(e);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b)
        *len = (size_t)n;
    return b;
}

/* create + write + flush + release; returns flush's result. */
static int put_file(env *e, const char *rel, const void *data, size_t len)
{
    uint64_t fh;
    int rc = import_create(e->m, STORE, rel, 0644, &fh);
    if (rc < 0)
        return rc;
    if (len && import_write(e->m, fh, data, len, 0) != (int)len)
        rc = -EIO;
    int frc = import_flush(e->m, fh);
    import_release(e->m, fh);
    return rc < 0 ? rc : frc;
}

static int put_valid(env *e, const char *rel, const char *src)
{
    size_t len;
    char *b = slurp(src, &len);
    if (!b)
        return -EIO;
    int rc = put_file(e, rel, b, len);
    free(b);
    return rc;
}

static int count_spool(env *e, int *nonhex)
{
    char d[256];
    snprintf(d, sizeof d, "%s/spool", e->cache);
    DIR *dir = opendir(d);
    if (!dir)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (de->d_name[0] == '.')
            continue;
        n++;
        if (nonhex && !spool_id_valid(de->d_name))
            (*nonhex)++;
    }
    closedir(dir);
    return n;
}

static int count_dir(const char *d)
{
    DIR *dir = opendir(d);
    if (!dir)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(dir)))
        n += de->d_name[0] != '.';
    closedir(dir);
    return n;
}

static import_counts counts(env *e)
{
    import_counts c = {0};
    char *t = import_status_text(e->m, STORE);
    if (t)
        status_parse(t, &c);
    free(t);
    return c;
}

typedef struct names {
    int n;
    char list[16][300];
} names;

static int fill(void *buf, const char *name, const struct stat *st)
{
    (void)st;
    names *n = buf;
    if (n->n < 16)
        snprintf(n->list[n->n], sizeof n->list[0], "%s", name);
    n->n++;
    return 0;
}

static bool listed(names *n, const char *name)
{
    for (int i = 0; i < n->n && i < 16; i++)
        if (strcmp(n->list[i], name) == 0)
            return true;
    return false;
}

/* ------------------------------------------------------------------ */

TEST(write_truncate_read_back)
{
    env e;
    CHECK_EQ_INT(env_new(&e), 0);
    if (!e.m)
        return;
    uint64_t fh;
    CHECK_EQ_INT(import_create(e.m, STORE, "a.bin", 0644, &fh), 0);
    CHECK_EQ_INT(import_write(e.m, fh, "world", 5, 6), 5); /* out of order */
    CHECK_EQ_INT(import_write(e.m, fh, "hello ", 6, 0), 6);
    char buf[32] = {0};
    CHECK_EQ_INT(import_read(e.m, fh, buf, sizeof buf, 0), 11);
    CHECK_EQ_STR(buf, "hello world");
    struct stat st;
    CHECK_EQ_INT(import_getattr(e.m, STORE, "a.bin", &st), 0);
    CHECK_EQ_INT(st.st_size, 11);
    CHECK(S_ISREG(st.st_mode));
    CHECK_EQ_INT(st.st_mode & 0777, 0644);
    CHECK_EQ_INT(import_truncate(e.m, STORE, "a.bin", 5, fh), 0);
    memset(buf, 0, sizeof buf);
    CHECK_EQ_INT(import_read(e.m, fh, buf, sizeof buf, 0), 5);
    CHECK_EQ_STR(buf, "hello");
    CHECK_EQ_INT(import_getattr(e.m, STORE, "a.bin", &st), 0);
    CHECK_EQ_INT(st.st_size, 5);
    CHECK_EQ_INT(import_truncate(e.m, STORE, "a.bin", 100, fh), 0);
    CHECK_EQ_INT(import_getattr(e.m, STORE, "a.bin", &st), 0);
    CHECK_EQ_INT(st.st_size, 100);
    /* Not DICOM: close fails. */
    CHECK_EQ_INT(import_flush(e.m, fh), -EINVAL);
    import_release(e.m, fh);
    env_stop(&e);
}

TEST(write_error_never_accepted)
{
    /* A disk error during the copy (simulated with RLIMIT_FSIZE: EFBIG, as
     * ENOSPC would come from a full disk) must fail close() even though the
     * part that was written is a valid DICOM header. */
    env e;
    CHECK_EQ_INT(env_new(&e), 0);
    if (!e.m)
        return;
    size_t len;
    char *b = slurp(valid1, &len);
    CHECK(b != NULL);
    if (!b)
        return;
    uint64_t fh;
    CHECK_EQ_INT(import_create(e.m, STORE, "partial.dcm", 0644, &fh), 0);
    CHECK_EQ_INT(import_write(e.m, fh, b, len, 0), (int)len);
    struct rlimit old, small = {1 << 20, 1 << 20};
    getrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, SIG_IGN);
    small.rlim_max = old.rlim_max;
    CHECK_EQ_INT(setrlimit(RLIMIT_FSIZE, &small), 0);
    CHECK_EQ_INT(import_write(e.m, fh, b, len, 2 << 20), -EFBIG);
    setrlimit(RLIMIT_FSIZE, &old);
    CHECK_EQ_INT(import_flush(e.m, fh), -EFBIG);
    import_release(e.m, fh);
    struct stat st;
    CHECK_EQ_INT(import_getattr(e.m, STORE, "partial.dcm", &st), -ENOENT);
    CHECK_EQ_INT(counts(&e).spooled, 0);
    CHECK_EQ_INT(count_spool(&e, NULL), 0);
    free(b);
    env_stop(&e);
}

TEST(valid_file_accepted_durably)
{
    env e;
    CHECK_EQ_INT(env_new(&e), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(put_valid(&e, "one.dcm", valid1), 0);
    struct stat st, src;
    stat(valid1, &src);
    CHECK_EQ_INT(import_getattr(e.m, STORE, "one.dcm", &st), 0);
    CHECK_EQ_INT(st.st_size, src.st_size);
    names n = {0};
    CHECK_EQ_INT(import_readdir(e.m, STORE, "", fill, &n), 0);
    CHECK_EQ_INT(n.n, 1);
    CHECK(listed(&n, "one.dcm"));
    import_counts c = counts(&e);
    CHECK_EQ_INT(c.spooled, 1);
    CHECK_EQ_INT(c.failed, 0);
    CHECK_EQ_INT(c.bytes_spooled, src.st_size);
    CHECK_EQ_INT(count_spool(&e, NULL), 1);
    /* The journal says so after a restart (what close() promised). */
    env_stop(&e);
    CHECK_EQ_INT(env_start(&e), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(import_getattr(e.m, STORE, "one.dcm", &st), 0);
    CHECK_EQ_INT(st.st_size, src.st_size);
    CHECK_EQ_INT(counts(&e).spooled, 1);
    /* Content is still there, byte for byte. */
    uint64_t fh = 0;
    CHECK_EQ_INT(import_open(e.m, STORE, "one.dcm", O_RDONLY, &fh), 0);
    if (!fh) {
        env_stop(&e);
        return;
    }
    size_t len;
    char *want = slurp(valid1, &len);
    char *got = malloc(len);
    CHECK(want && got && import_read(e.m, fh, got, len, 0) == (int)len);
    CHECK(want && got && memcmp(want, got, len) == 0);
    free(want);
    free(got);
    CHECK_EQ_INT(import_flush(e.m, fh), 0);
    import_release(e.m, fh);
    env_stop(&e);
    struct stat sd;
    char sp[256];
    snprintf(sp, sizeof sp, "%s/spool", e.cache);
    CHECK(stat(sp, &sd) == 0 && (sd.st_mode & 0777) == 0700);
}

/* spool_sync_dir covers every creation made before it, in both modes:
 * lazy (the default: nothing synced until asked) and eager (sync_close). */
TEST(spool_dir_sync_lazy_and_eager)
{
    char dir[128];
    spool *sp = open_fresh_spool(dir, sizeof dir, "sync");
    if (!sp)
        return;
    for (int eager = 0; eager < 2; eager++) {
        spool_set_eager_dir_sync(sp, eager);
        for (int i = 0; i < 3; i++) {
            char id[SPOOL_ID_LEN + 1];
            uint64_t old_len;
            int fd = spool_create(sp, id, &old_len);
            CHECK(fd >= 0);
            if (fd >= 0)
                close(fd);
            CHECK(spool_exists(sp, id));
        }
        CHECK_EQ_INT(spool_sync_dir(sp), 0);
        CHECK_EQ_INT(spool_sync_dir(sp), 0); /* nothing new: returns at once */
    }
    spool_close(sp);
}

/* Files are handed out of a pool made ahead in spool-pool/: spool/ only
 * ever holds handed-out files, a pool left by a crash is emptied at open
 * and an unused pool is removed at close. */
TEST(spool_pool_handout_and_cleanup)
{
    char dir[128], pool[160], stale[200];
    snprintf(dir, sizeof dir, "%s/spool-pool-%d", root, seq++);
    CHECK_EQ_INT(mkdir(dir, 0700), 0);
    snprintf(pool, sizeof pool, "%s/spool-pool", dir);
    CHECK_EQ_INT(mkdir(pool, 0700), 0);
    snprintf(stale, sizeof stale, "%s/0123456789abcdef0123456789abcdef", pool);
    int sfd = open(stale, O_CREAT | O_WRONLY, 0600);
    CHECK(sfd >= 0);
    if (sfd >= 0)
        close(sfd);
    spool *sp = NULL;
    CHECK_EQ_INT(spool_open(dir, &sp), 0);
    if (!sp)
        return;
    CHECK(access(stale, F_OK) != 0); /* left by a crash: gone */
    char ids[40][SPOOL_ID_LEN + 1];
    uint64_t old_len;
    for (int i = 0; i < 40; i++) { /* more than one pool's worth */
        int fd = spool_create(sp, ids[i], &old_len);
        CHECK(fd >= 0);
        if (fd < 0)
            continue;
        CHECK_EQ_INT(write(fd, "x", 1), 1);
        close(fd);
        CHECK(spool_exists(sp, ids[i]));
        for (int k = 0; k < i; k++)
            CHECK(strcmp(ids[k], ids[i]) != 0);
    }
    char sdir[160];
    snprintf(sdir, sizeof sdir, "%s/spool", dir);
    CHECK_EQ_INT(count_dir(sdir), 40);
    /* A recycled file leaves spool/ and comes back under a new id, with
     * the earlier file's byte still in it (old_len says so). */
    for (int i = 0; i < 40; i++)
        CHECK_EQ_INT(spool_recycle(sp, ids[i]), 0);
    CHECK_EQ_INT(count_dir(sdir), 0);
    for (int i = 0; i < 40; i++) {
        char id[SPOOL_ID_LEN + 1];
        int fd = spool_create(sp, id, &old_len);
        CHECK(fd >= 0);
        if (fd < 0)
            continue;
        struct stat st;
        char c = 0;
        CHECK(fstat(fd, &st) == 0 && (uint64_t)st.st_size == old_len);
        CHECK(old_len == 0 || (pread(fd, &c, 1, 0) == 1 && c == 'x'));
        close(fd);
        for (int k = 0; k < 40; k++)
            CHECK(strcmp(ids[k], id) != 0);
    }
    CHECK_EQ_INT(count_dir(sdir), 40);
    spool_close(sp);
    CHECK_EQ_INT(count_dir(pool), 0);
}

/* Every released file is kept for reuse, not only a pool's worth: after
 * N files in flight come back, the next N files reuse their inodes
 * (none is allocated), and spool_close removes them all. */
TEST(spool_recycle_keeps_every_file)
{
    enum { N = 300 }; /* more than three pools' worth (SPOOL_POOL is 96) */
    char dir[128], pool[160], sdir[160];
    spool *sp = open_fresh_spool(dir, sizeof dir, "reuse");
    snprintf(pool, sizeof pool, "%s/spool-pool", dir);
    snprintf(sdir, sizeof sdir, "%s/spool", dir);
    if (!sp)
        return;
    static char ids[N][SPOOL_ID_LEN + 1];
    static ino_t inos[N];
    uint64_t old_len;
    for (int i = 0; i < N; i++) {
        int fd = spool_create(sp, ids[i], &old_len);
        CHECK(fd >= 0);
        struct stat st;
        CHECK(fd >= 0 && write(fd, "data", 4) == 4 && fstat(fd, &st) == 0);
        inos[i] = fd >= 0 ? st.st_ino : 0;
        if (fd >= 0)
            close(fd);
    }
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(spool_recycle(sp, ids[i]), 0);
    CHECK_EQ_INT(count_dir(sdir), 0);
    CHECK(count_dir(pool) >= N); /* all kept, plus the files made ahead */
    /* The pool is a stack: the recycled files come out first. One file
     * made ahead may sit among them (the filler races the recycling). */
    int reused = 0;
    for (int i = 0; i < N - 50; i++) {
        char id[SPOOL_ID_LEN + 1];
        int fd = spool_create(sp, id, &old_len);
        CHECK(fd >= 0);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0)
            continue;
        CHECK_EQ_INT(st.st_size, (int64_t)old_len); /* "data" kept, or a file made ahead */
        CHECK(old_len == 0 || old_len == 4);
        CHECK_EQ_INT(write(fd, "x", 1), 1); /* reopened by name: writable */
        close(fd);
        for (int k = 0; k < N; k++)
            if (inos[k] == st.st_ino) {
                reused++;
                break;
            }
    }
    CHECK(reused >= N - 50 - 1);
    CHECK_EQ_INT(count_dir(sdir), N - 50);
    spool_close(sp);
    CHECK_EQ_INT(count_dir(pool), 0);
}

/* Recycled files keep their bytes while the pool holds at most 64 MiB of
 * them (spool_create says how many an earlier file left); beyond that they
 * come back emptied. */
TEST(spool_recycle_keeps_bytes_within_budget)
{
    char dir[128];
    spool *sp = open_fresh_spool(dir, sizeof dir, "budget");
    if (!sp)
        return;
    const off_t big = 40 << 20; /* two of them exceed the budget */
    char ids[2][SPOOL_ID_LEN + 1];
    uint64_t old_len;
    for (int i = 0; i < 2; i++) {
        int fd = spool_create(sp, ids[i], &old_len);
        CHECK(fd >= 0);
        CHECK(fd >= 0 && pwrite(fd, "z", 1, 0) == 1 && ftruncate(fd, big) == 0);
        if (fd >= 0)
            close(fd);
    }
    /* The pool thread fills the pool with empty files from the first
     * spool_create on, pushing each on top: let it finish (32 files in
     * spool-pool/, then a moment for its last push), or a file it makes
     * after the recycles below comes out first. Seen failing under load. */
    char pool[160];
    snprintf(pool, sizeof pool, "%s/spool-pool", dir);
    for (int t = 0; t < 400 && count_dir(pool) < 32; t++)
        usleep(50000);
    CHECK_EQ_INT(count_dir(pool), 32);
    usleep(100000);
    for (int i = 0; i < 2; i++)
        CHECK_EQ_INT(spool_recycle(sp, ids[i]), 0);
    /* The pool is a stack: the second one (emptied) comes out first. */
    uint64_t got[2];
    for (int i = 0; i < 2; i++) {
        char id[SPOOL_ID_LEN + 1];
        int fd = spool_create(sp, id, &got[i]);
        struct stat st;
        CHECK(fd >= 0 && fstat(fd, &st) == 0 && (uint64_t)st.st_size == got[i]);
        char c = 0;
        CHECK(got[i] == 0 || (pread(fd, &c, 1, 0) == 1 && c == 'z'));
        if (fd >= 0)
            close(fd);
    }
    CHECK_EQ_INT(got[0], 0);
    CHECK_EQ_INT(got[1], big);
    spool_close(sp);
}

TEST(non_dicom_rejected_and_gone)
{
    env e;
    CHECK_EQ_INT(env_new(&e), 0);
    if (!e.m)
        return;
    char junk[300];
    memset(junk, 'x', sizeof junk);
    CHECK_EQ_INT(put_file(&e, "junk.dcm", junk, sizeof junk), -EINVAL);
    struct stat st;
    CHECK_EQ_INT(import_getattr(e.m, STORE, "junk.dcm", &st), -ENOENT);
    CHECK_EQ_INT(count_spool(&e, NULL), 0);
    /* Truncated DICOM: the first 200 bytes of a real file. */
    size_t len;
    char *b = slurp(valid1, &len);
    CHECK(b && len > 200);
    if (b)
        CHECK_EQ_INT(put_file(&e, "cut.dcm", b, 200), -EINVAL);
    free(b);
    CHECK_EQ_INT(import_getattr(e.m, STORE, "cut.dcm", &st), -ENOENT);
    import_counts c = counts(&e);
    CHECK_EQ_INT(c.spooled, 0);
    CHECK_EQ_INT(c.failed, 0); /* rejected at close(), not a background failure */
    env_stop(&e);
    CHECK_EQ_INT(env_start(&e), 0);
    if (e.m)
        CHECK_EQ_INT(import_getattr(e.m, STORE, "junk.dcm", &st), -ENOENT);
    env_stop(&e);
}

TEST(zero_length_rejected)
{
    env e;
    CHECK_EQ_INT(env_new(&e), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(put_file(&e, "empty.dcm", "", 0), -EINVAL);
    struct stat st;
    CHECK_EQ_INT(import_getattr(e.m, STORE, "empty.dcm", &st), -ENOENT);
    CHECK_EQ_INT(count_spool(&e, NULL), 0);
    env_stop(&e);
}

TEST(flush_idempotent_revalidates_after_write)
{
    env e;
    CHECK_EQ_INT(env_new(&e), 0);
    if (!e.m)
        return;
    size_t len;
    char *b = slurp(valid1, &len);
    uint64_t fh;
    CHECK_EQ_INT(import_create(e.m, STORE, "dup.dcm", 0644, &fh), 0);
    CHECK_EQ_INT(import_write(e.m, fh, b, len, 0), (int)len);
    CHECK_EQ_INT(import_flush(e.m, fh), 0);
    CHECK_EQ_INT(import_flush(e.m, fh), 0); /* close of a dup'ed fd */
    CHECK_EQ_INT(counts(&e).spooled, 1);
    /* Overwrite the "DICM" magic: the next flush sees it. */
    CHECK_EQ_INT(import_write(e.m, fh, "XXXX", 4, 128), 4);
    CHECK_EQ_INT(import_flush(e.m, fh), -EINVAL);
    import_release(e.m, fh);
    struct stat st;
    CHECK_EQ_INT(import_getattr(e.m, STORE, "dup.dcm", &st), -ENOENT);
    CHECK_EQ_INT(counts(&e).spooled, 0);
    CHECK_EQ_INT(count_spool(&e, NULL), 0);
    free(b);
    env_stop(&e);
}

TEST(reopen_rewrite_revalidated)
{
    env e;
    CHECK_EQ_INT(env_new(&e), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(put_valid(&e, "r.dcm", valid1), 0);
    /* Rewritten with another valid file: accepted with the new content. */
    size_t len2;
    char *b2 = slurp(valid2, &len2);
    uint64_t fh;
    CHECK_EQ_INT(import_open(e.m, STORE, "r.dcm", O_WRONLY | O_TRUNC, &fh), 0);
    CHECK_EQ_INT(import_write(e.m, fh, b2, len2, 0), (int)len2);
    CHECK_EQ_INT(import_flush(e.m, fh), 0);
    import_release(e.m, fh);
    struct stat st;
    CHECK_EQ_INT(import_getattr(e.m, STORE, "r.dcm", &st), 0);
    CHECK_EQ_INT(st.st_size, len2);
    CHECK_EQ_INT(counts(&e).spooled, 1);
    /* truncate(2) by name to a non-DICOM length: rejected at once. */
    CHECK_EQ_INT(import_truncate(e.m, STORE, "r.dcm", 10, 0), -EINVAL);
    CHECK_EQ_INT(import_getattr(e.m, STORE, "r.dcm", &st), -ENOENT);
    CHECK_EQ_INT(counts(&e).spooled, 0);
    free(b2);
    env_stop(&e);
}

TEST(rsync_temp_name_then_rename_and_utimens)
{
    env e;
    CHECK_EQ_INT(env_new(&e), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(import_mkdir(e.m, STORE, "study", 0755), 0);
    CHECK_EQ_INT(put_valid(&e, "study/.img.dcm.Ab12Cd", valid1), 0);
    CHECK_EQ_INT(import_rename(e.m, STORE, "study/.img.dcm.Ab12Cd", "study/img.dcm", 0), 0);
    struct timespec tv[2] = {{1000, 0}, {1234567890, 123456789}};
    CHECK_EQ_INT(import_utimens(e.m, STORE, "study/img.dcm", tv), 0);
    CHECK_EQ_INT(import_chmod(e.m, STORE, "study/img.dcm", 0600), 0);
    CHECK_EQ_INT(import_chown(e.m, STORE, "study/img.dcm", 1234, (gid_t)-1), 0);
    CHECK_EQ_INT(import_chown(e.m, STORE, "study/nope.dcm", 1234, 5), -ENOENT);
    struct stat st;
    CHECK_EQ_INT(import_getattr(e.m, STORE, "study/.img.dcm.Ab12Cd", &st), -ENOENT);
    CHECK_EQ_INT(import_getattr(e.m, STORE, "study/img.dcm", &st), 0);
    CHECK_EQ_INT(st.st_mtim.tv_sec, 1234567890);
    CHECK_EQ_INT(st.st_mtim.tv_nsec, 123456789);
    CHECK_EQ_INT(st.st_mode & 0777, 0600);
    env_stop(&e);
    /* A second rsync run after a remount compares size and mtime: both kept. */
    CHECK_EQ_INT(env_start(&e), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(import_getattr(e.m, STORE, "study/img.dcm", &st), 0);
    CHECK_EQ_INT(st.st_mtim.tv_sec, 1234567890);
    CHECK_EQ_INT(st.st_mtim.tv_nsec, 123456789);
    CHECK_EQ_INT(st.st_mode & 0777, 0600);
    CHECK_EQ_INT(st.st_uid, 1234);
    CHECK_EQ_INT(st.st_gid, getgid());
    struct stat src;
    stat(valid1, &src);
    CHECK_EQ_INT(st.st_size, src.st_size);
    CHECK_EQ_INT(counts(&e).spooled, 1);
    env_stop(&e);
}

TEST(rename_onto_pending_replaces_it)
{
    env e;
    CHECK_EQ_INT(env_new(&e), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(put_valid(&e, "a.dcm", valid1), 0);
    CHECK_EQ_INT(put_valid(&e, "b.dcm", valid2), 0);
    CHECK_EQ_INT(counts(&e).spooled, 2);
    CHECK_EQ_INT(import_rename(e.m, STORE, "b.dcm", "a.dcm", RENAME_NOREPLACE), -EEXIST);
    CHECK_EQ_INT(import_rename(e.m, STORE, "b.dcm", "a.dcm", 0), 0);
    struct stat st, s2;
    stat(valid2, &s2);
    CHECK_EQ_INT(import_getattr(e.m, STORE, "a.dcm", &st), 0);
    CHECK_EQ_INT(st.st_size, s2.st_size);
    CHECK_EQ_INT(import_getattr(e.m, STORE, "b.dcm", &st), -ENOENT);
    CHECK_EQ_INT(counts(&e).spooled, 1); /* the replaced file is withdrawn */
    CHECK_EQ_INT(count_spool(&e, NULL), 1);
    CHECK_EQ_INT(import_rename(e.m, STORE, "missing", "x", 0), -ENOENT);
    CHECK_EQ_INT(import_rename(e.m, STORE, "a.dcm", "nodir/a.dcm", 0), -ENOENT);
    env_stop(&e);
    CHECK_EQ_INT(env_start(&e), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(import_getattr(e.m, STORE, "a.dcm", &st), 0);
    CHECK_EQ_INT(st.st_size, s2.st_size);
    CHECK_EQ_INT(counts(&e).spooled, 1);
    env_stop(&e);
}

TEST(unlink_pending_withdraws)
{
    env e;
    CHECK_EQ_INT(env_new(&e), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(put_valid(&e, "u.dcm", valid1), 0);
    CHECK_EQ_INT(import_unlink(e.m, STORE, "u.dcm"), 0);
    struct stat st;
    CHECK_EQ_INT(import_getattr(e.m, STORE, "u.dcm", &st), -ENOENT);
    CHECK_EQ_INT(import_unlink(e.m, STORE, "u.dcm"), -ENOENT);
    CHECK_EQ_INT(counts(&e).spooled, 0);
    CHECK_EQ_INT(count_spool(&e, NULL), 0);
    env_stop(&e);
    CHECK_EQ_INT(env_start(&e), 0);
    if (e.m)
        CHECK_EQ_INT(import_getattr(e.m, STORE, "u.dcm", &st), -ENOENT);
    env_stop(&e);
}

TEST(directories_local_and_journaled)
{
    env e;
    CHECK_EQ_INT(env_new(&e), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(import_mkdir(e.m, STORE, "d", 0755), 0);
    CHECK_EQ_INT(import_mkdir(e.m, STORE, "d", 0755), -EEXIST);
    CHECK_EQ_INT(import_mkdir(e.m, STORE, "d/e", 0750), 0);
    CHECK_EQ_INT(import_mkdir(e.m, STORE, "x/y", 0755), -ENOENT);
    CHECK_EQ_INT(put_valid(&e, "d/e/f.dcm", valid1), 0);
    uint64_t fh;
    CHECK_EQ_INT(import_create(e.m, STORE, "nope/f.dcm", 0644, &fh), -ENOENT);
    CHECK_EQ_INT(import_create(e.m, STORE, "d/e/f.dcm/g", 0644, &fh), -ENOTDIR);
    names n = {0};
    CHECK_EQ_INT(import_readdir(e.m, STORE, "d", fill, &n), 0);
    CHECK_EQ_INT(n.n, 1);
    CHECK(listed(&n, "e"));
    names root_list = {0};
    CHECK_EQ_INT(import_readdir(e.m, STORE, "", fill, &root_list), 0);
    CHECK_EQ_INT(root_list.n, 1);
    CHECK_EQ_INT(import_readdir(e.m, STORE, "d/e/f.dcm", fill, &n), -ENOTDIR);
    CHECK_EQ_INT(import_readdir(e.m, STORE, "zz", fill, &n), -ENOENT);
    CHECK_EQ_INT(import_rmdir(e.m, STORE, "d"), -ENOTEMPTY);
    CHECK_EQ_INT(import_rename(e.m, STORE, "d", "d/e/inside", 0), -EINVAL);
    CHECK_EQ_INT(import_rename(e.m, STORE, "d", "moved", 0), 0);
    struct stat st;
    CHECK_EQ_INT(import_getattr(e.m, STORE, "moved/e/f.dcm", &st), 0);
    CHECK_EQ_INT(import_getattr(e.m, STORE, "d/e/f.dcm", &st), -ENOENT);
    CHECK_EQ_INT(import_getattr(e.m, STORE, "moved/e", &st), 0);
    CHECK(S_ISDIR(st.st_mode));
    CHECK_EQ_INT(st.st_mode & 0777, 0750);
    env_stop(&e);
    CHECK_EQ_INT(env_start(&e), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(import_getattr(e.m, STORE, "moved/e/f.dcm", &st), 0);
    CHECK_EQ_INT(import_unlink(e.m, STORE, "moved/e/f.dcm"), 0);
    CHECK_EQ_INT(import_rmdir(e.m, STORE, "moved/e"), 0);
    CHECK_EQ_INT(import_rmdir(e.m, STORE, "moved"), 0);
    CHECK_EQ_INT(import_rmdir(e.m, STORE, "moved"), -ENOENT);
    env_stop(&e);
    CHECK_EQ_INT(env_start(&e), 0);
    if (!e.m)
        return;
    names after = {0};
    CHECK_EQ_INT(import_readdir(e.m, STORE, "", fill, &after), 0);
    CHECK_EQ_INT(after.n, 0);
    env_stop(&e);
}

TEST(hostile_names)
{
    env e;
    CHECK_EQ_INT(env_new(&e), 0);
    if (!e.m)
        return;
    char longname[256];
    memset(longname, 'L', 255);
    longname[255] = '\0';
    const char *names_[] = {"with space.dcm",
                            "\xc3\xbcn\xc3\xaf \xe5\x90\x8d\xe5\x89\x8d.dcm",
                            "new\nline.dcm",
                            "back\\slash",
                            "-dash",
                            longname,
                            "..."};
    int nn = (int)(sizeof names_ / sizeof *names_);
    for (int i = 0; i < nn; i++)
        CHECK_EQ_INT(put_valid(&e, names_[i], valid1), 0);
    int nonhex = 0;
    CHECK_EQ_INT(count_spool(&e, &nonhex), nn);
    CHECK_EQ_INT(nonhex, 0); /* never the user's name on disk */
    names n = {0};
    import_readdir(e.m, STORE, "", fill, &n);
    CHECK_EQ_INT(n.n, nn);
    for (int i = 0; i < nn; i++)
        CHECK(listed(&n, names_[i]));
    env_stop(&e);
    CHECK_EQ_INT(env_start(&e), 0);
    if (!e.m)
        return;
    struct stat st;
    for (int i = 0; i < nn; i++)
        CHECK_EQ_INT(import_getattr(e.m, STORE, names_[i], &st), 0);
    CHECK_EQ_INT(counts(&e).spooled, nn);
    env_stop(&e);
}

TEST(stores_are_separate)
{
    env e;
    CHECK_EQ_INT(env_new(&e), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(put_valid(&e, "same.dcm", valid1), 0);
    struct stat st;
    CHECK_EQ_INT(import_getattr(e.m, STORE "2", "same.dcm", &st), -ENOENT);
    char *t = import_status_text(e.m, STORE "2");
    import_counts c;
    CHECK(t && status_parse(t, &c) == 0 && c.spooled == 0);
    free(t);
    env_stop(&e);
}

TEST(missing_spool_file_fails_loudly_on_restart)
{
    env e;
    CHECK_EQ_INT(env_new(&e), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(put_valid(&e, "lost.dcm", valid1), 0);
    env_stop(&e);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -f '%s'/spool/*", e.cache);
    CHECK_EQ_INT(system(cmd), 0);
    CHECK_EQ_INT(env_start(&e), 0);
    if (!e.m)
        return;
    char *t = import_status_text(e.m, STORE);
    import_counts c;
    CHECK(t && status_parse(t, &c) == 0);
    CHECK_EQ_INT(c.failed, 1);
    CHECK_EQ_INT(c.spooled, 0);
    CHECK(t && strstr(t, "\nfailed: lost.dcm: spool file lost") != NULL);
    free(t);
    /* unlink clears a failure */
    CHECK_EQ_INT(import_unlink(e.m, STORE, "lost.dcm"), 0);
    CHECK_EQ_INT(counts(&e).failed, 0);
    env_stop(&e);
}

TEST(stray_spool_files_collected)
{
    env e;
    CHECK_EQ_INT(env_new(&e), 0);
    if (!e.m)
        return;
    /* Open, written, never closed (the daemon was killed). */
    uint64_t fh;
    CHECK_EQ_INT(import_create(e.m, STORE, "open.dcm", 0644, &fh), 0);
    CHECK_EQ_INT(import_write(e.m, fh, "abc", 3, 0), 3);
    CHECK_EQ_INT(count_spool(&e, NULL), 1);
    import_release(e.m, fh); /* no flush: never accepted */
    env_stop(&e);
    char p[300];
    snprintf(p, sizeof p, "%s/spool/notanid", e.cache);
    FILE *f = fopen(p, "w");
    if (f)
        fclose(f);
    CHECK_EQ_INT(env_start(&e), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(count_spool(&e, NULL), 0);
    struct stat st;
    CHECK_EQ_INT(import_getattr(e.m, STORE, "open.dcm", &st), -ENOENT);
    env_stop(&e);
}

TEST(status_text_format_and_parse)
{
    env e;
    CHECK_EQ_INT(env_new(&e), 0);
    if (!e.m)
        return;
    char *t = import_status_text(e.m, STORE);
    CHECK_EQ_STR(t, "spooled: 0\nuploading: 0\nuploaded: 0\nimporting: 0\nimported: 0\n"
                    "failed: 0\nbytes_spooled: 0\nbytes_uploaded: 0\npresent: 0\ncache_used: 0\n"
                    "cache_max: 1073741824\nwriters_waiting: 0\n");
    free(t);
    env_stop(&e);
    import_counts c;
    CHECK_EQ_INT(status_parse("spooled: 3\nuploading: 1\nuploaded: 2\nimporting: 4\n"
                              "imported: 5\nfailed: 1\nbytes_spooled: 100\nbytes_uploaded: 50\n"
                              "failed: 123: something: bad\n",
                              &c),
                 0);
    CHECK_EQ_INT(c.spooled, 3);
    CHECK_EQ_INT(c.importing, 4);
    CHECK_EQ_INT(c.failed, 1);
    CHECK_EQ_INT(c.bytes_uploaded, 50);
    CHECK_EQ_INT(status_parse("hello: 1\n", &c), -1);
}

/* ---- uploader against a fake Cloud Storage + Healthcare API (testsrv) ----
 * The fake answers uploads with the object resource, deletes with 204,
 * :import with an operation, operations.get with a done operation (with an
 * error when asked) and QIDO searches from a set of "present" UIDs. */

typedef struct fake {
    int upload_fail_left; /* answer 503 to this many uploads first */
    bool upload_forbidden;
    int import_fail_left; /* answer 503 to this many :import calls first */
    bool op_error;        /* the operation ends with an error, failure 1 */
    int transient_left;   /* this many finished operations end with UNAVAILABLE (14) */
    int op_gone_left;     /* answer 404 to this many operation polls */
    char present[4][80];  /* UIDs a search finds */
    int uploads, deletes, imports, op_gets, searches;
    char import_body[512];
    char first_object[300];
    char body[1024];
} fake;

static void fake_handler(void *ctx, const testsrv_req *req, testsrv_reply *out)
{
    fake *f = ctx;
    if (strncmp(req->url, "/upload/storage/v1/b/bucket/o?", 30) == 0) {
        f->uploads++;
        if (f->upload_forbidden) {
            out->status = 403;
            out->body = "{\"error\":{\"code\":403,\"message\":\"no write access to bucket\","
                        "\"errors\":[{\"reason\":\"forbidden\"}]}}";
            return;
        }
        if (f->upload_fail_left > 0) {
            f->upload_fail_left--;
            out->status = 503;
            out->body = "{\"error\":{\"code\":503,\"message\":\"backend unavailable\"}}";
            return;
        }
        const char *name = strstr(req->url, "name=");
        if (name && !f->first_object[0])
            snprintf(f->first_object, sizeof f->first_object, "%s", name + 5);
        snprintf(f->body, sizeof f->body,
                 "{\"bucket\":\"bucket\",\"name\":\"x\",\"size\":\"%zu\",\"generation\":\"1\"}",
                 req->body_len);
        out->body = f->body;
        return;
    }
    if (strcmp(req->method, "DELETE") == 0 &&
        strncmp(req->url, "/storage/v1/b/bucket/o/", 23) == 0) {
        f->deletes++;
        out->status = 204;
        return;
    }
    if (strstr(req->url, ":import")) {
        f->imports++;
        snprintf(f->import_body, sizeof f->import_body, "%s", req->body);
        if (f->import_fail_left > 0) {
            f->import_fail_left--;
            out->status = 503;
            out->body = "{\"error\":{\"code\":503,\"message\":\"try later\"}}";
            return;
        }
        out->body = "{\"name\":\"projects/p/locations/l/datasets/d/operations/77\"}";
        return;
    }
    if (strstr(req->url, "/operations/77")) {
        f->op_gets++;
        if (f->op_gone_left > 0) {
            f->op_gone_left--;
            out->status = 404;
            out->body = "{\"error\":{\"code\":404,\"message\":\"operation not found\"}}";
            return;
        }
        if (f->op_gets > 1 && f->transient_left > 0) {
            f->transient_left--;
            out->body = "{\"name\":\"projects/p/locations/l/datasets/d/operations/77\","
                        "\"done\":true,\"error\":{\"code\":14,\"message\":\"backend "
                        "unavailable\"}}";
            return;
        }
        if (f->op_gets == 1) { /* first poll: still running */
            out->body = "{\"name\":\"projects/p/locations/l/datasets/d/operations/77\","
                        "\"metadata\":{\"counter\":{\"pending\":\"2\"}}}";
            return;
        }
        out->body = f->op_error ? "{\"name\":\"projects/p/locations/l/datasets/d/operations/77\","
                                  "\"done\":true,\"metadata\":{\"counter\":{\"success\":\"1\","
                                  "\"failure\":\"1\"}},\"error\":{\"code\":3,\"message\":"
                                  "\"1 file could not be imported\"}}"
                                : "{\"name\":\"projects/p/locations/l/datasets/d/operations/77\","
                                  "\"done\":true,\"metadata\":{\"counter\":{\"success\":\"9\"}},"
                                  "\"response\":{}}";
        return;
    }
    if (strstr(req->url, "/dicomWeb/instances?")) {
        f->searches++;
        for (int i = 0; i < 4; i++) {
            char q[100];
            snprintf(q, sizeof q, "SOPInstanceUID=%s&", f->present[i]);
            if (f->present[i][0] && strstr(req->url, q)) {
                snprintf(f->body, sizeof f->body,
                         "[{\"00080018\":{\"vr\":\"UI\",\"Value\":[\"%s\"]}}]", f->present[i]);
                out->body = f->body;
                out->content_type = "application/dicom+json";
                return;
            }
        }
        out->status = 204;
        return;
    }
    out->status = 404;
    out->body = "{\"error\":{\"code\":404,\"message\":\"fake: no route\"}}";
}

typedef struct remote {
    testsrv *srv;
    http_client *http;
    gcs_client *gcs;
    hc_client *hc;
    fake f;
} remote;

static int remote_start(remote *r)
{
    memset(r, 0, sizeof *r);
    r->srv = testsrv_start();
    if (!r->srv)
        return -1;
    testsrv_set_handler(r->srv, fake_handler, &r->f);
    http_options o;
    http_options_init(&o);
    o.retry = (http_retry_policy){2, 10, 20, 1000}; /* the uploader's own retries are tested */
    r->http = http_client_new(&o);
    char ep[128];
    snprintf(ep, sizeof ep, "%s/", testsrv_url(r->srv));
    r->gcs = gcs_client_new(r->http, testsrv_url(r->srv));
    r->hc = hc_client_new(r->http, ep);
    return r->http && r->gcs && r->hc ? 0 : -1;
}

static void remote_stop(remote *r)
{
    hc_client_free(r->hc);
    gcs_client_free(r->gcs);
    http_client_free(r->http);
    testsrv_stop(r->srv);
}

static int env_start_remote(env *e, remote *r, double delay)
{
    import_config cfg = {.cache_dir = e->cache,
                         .staging_bucket = "bucket",
                         .staging_prefix = "pre",
                         .uploads = 3,
                         .commit_delay_s = delay,
                         .upload_present = true, /* as in env_start */
                         .cache_max = 1ull << 30,
                         .uid = getuid(),
                         .gid = getgid()};
    char jd[256];
    snprintf(jd, sizeof jd, "%s/journal", e->cache);
    int rc = journal_open(jd, &e->j);
    if (rc == 0)
        rc = import_mgr_new(&cfg, r->gcs, r->hc, e->j, &e->m);
    return rc;
}

/* Polls the status until f(counts) or 20 s. */
static bool wait_for(env *e, bool (*pred)(const import_counts *, int), int n)
{
    for (int i = 0; i < 400; i++) {
        import_counts c = counts(e);
        if (pred(&c, n))
            return true;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return false;
}

static bool imported_n(const import_counts *c, int n)
{
    return c->imported == (uint64_t)n &&
           c->spooled + c->uploading + c->uploaded + c->importing == 0;
}

static bool settled_n(const import_counts *c, int n)
{
    return c->imported + c->failed == (uint64_t)n &&
           c->spooled + c->uploading + c->uploaded + c->importing == 0;
}

static bool uploaded_n(const import_counts *c, int n)
{
    return c->uploaded == (uint64_t)n;
}

typedef struct opl {
    int n;
    char last[128];
} opl;

static int opl_cb(void *ctx, const char *op, const char *kind)
{
    opl *o = ctx;
    o->n++;
    snprintf(o->last, sizeof o->last, "%s %s", kind, op);
    return 0;
}

TEST(uploader_one_import_per_batch)
{
    remote r;
    env e;
    CHECK_EQ_INT(remote_start(&r), 0);
    snprintf(e.cache, sizeof e.cache, "%s/c%d", root, ++seq);
    mkdir(e.cache, 0700);
    CHECK_EQ_INT(env_start_remote(&e, &r, 0.5), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(import_mkdir(e.m, STORE, "dir", 0755), 0);
    CHECK_EQ_INT(put_valid(&e, "a.dcm", valid1), 0);
    CHECK_EQ_INT(put_valid(&e, "dir/b b.dcm", valid2), 0);
    CHECK_EQ_INT(put_valid(&e, "c.dcm", valid1), 0);
    CHECK(wait_for(&e, imported_n, 3));
    import_counts c = counts(&e);
    CHECK_EQ_INT(c.imported, 3);
    CHECK_EQ_INT(c.failed, 0);
    struct stat s1, s2;
    stat(valid1, &s1);
    stat(valid2, &s2);
    CHECK_EQ_INT(c.bytes_uploaded, 2 * s1.st_size + s2.st_size);
    CHECK_EQ_INT(r.f.uploads, 3);
    CHECK_EQ_INT(r.f.imports, 1); /* ONE import for the batch */
    /* The import URI ends in the batch prefix + "**"; objects are named by spool id. */
    CHECK(strstr(r.f.import_body, "\"gs://bucket/pre/batches/") != NULL);
    CHECK(strstr(r.f.import_body, "/**\"") != NULL);
    CHECK(strncmp(r.f.first_object, "pre%2Fbatches%2F", 16) == 0);
    CHECK(strstr(r.f.first_object, ".dcm") != NULL);
    /* ".../SPOOLID.dcm": 32 hex characters, never the user's name. */
    const char *leaf = strrchr(r.f.first_object, 'F'); /* the last "%2F" */
    CHECK(leaf && strlen(leaf + 1) == SPOOL_ID_LEN + 4 &&
          strcmp(leaf + 1 + SPOOL_ID_LEN, ".dcm") == 0);
    if (leaf && strlen(leaf + 1) == SPOOL_ID_LEN + 4) {
        char id[SPOOL_ID_LEN + 1];
        memcpy(id, leaf + 1, SPOOL_ID_LEN);
        id[SPOOL_ID_LEN] = '\0';
        CHECK(spool_id_valid(id));
    }
    /* Staged objects and spool files are removed; the files stay listed
     * (remembered) in state "imported". */
    for (int i = 0; i < 200 && (r.f.deletes < 3 || count_spool(&e, NULL) > 0); i++)
        usleep(50000);
    CHECK_EQ_INT(r.f.deletes, 3);
    CHECK_EQ_INT(count_spool(&e, NULL), 0);
    struct stat st;
    CHECK_EQ_INT(import_getattr(e.m, STORE, "a.dcm", &st), 0);
    CHECK_EQ_INT(st.st_size, s1.st_size);
    char state[32] = "";
    CHECK_EQ_INT(import_state(e.m, STORE, "dir/b b.dcm", state, sizeof state), 0);
    CHECK_EQ_STR(state, "imported");
    CHECK_EQ_INT(import_getattr(e.m, STORE, "dir", &st), 0); /* directories stay */
    opl o = {0};
    journal_list_operations(e.j, STORE, opl_cb, &o);
    CHECK_EQ_INT(o.n, 1);
    CHECK_EQ_STR(o.last, "import projects/p/locations/l/datasets/d/operations/77");
    env_stop(&e);
    remote_stop(&r);
}

TEST(uploader_retries_transient_errors)
{
    remote r;
    env e;
    CHECK_EQ_INT(remote_start(&r), 0);
    r.f.upload_fail_left = 3; /* beyond the client's own 2 attempts */
    r.f.import_fail_left = 1;
    snprintf(e.cache, sizeof e.cache, "%s/c%d", root, ++seq);
    mkdir(e.cache, 0700);
    CHECK_EQ_INT(env_start_remote(&e, &r, 0.2), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(put_valid(&e, "a.dcm", valid1), 0);
    CHECK(wait_for(&e, imported_n, 1));
    CHECK_EQ_INT(counts(&e).failed, 0);
    CHECK_EQ_INT(r.f.uploads, 4);
    CHECK(r.f.imports >= 2);
    env_stop(&e);
    remote_stop(&r);
}

/* A refused upload (403 on the staging bucket) is not about the file: the
 * store pauses with a line naming cause and fix, the file stays, and it is
 * imported once the bucket accepts it. */
TEST(uploader_refused_upload_pauses_the_store)
{
    remote r;
    env e;
    CHECK_EQ_INT(remote_start(&r), 0);
    r.f.upload_forbidden = true;
    snprintf(e.cache, sizeof e.cache, "%s/c%d", root, ++seq);
    mkdir(e.cache, 0700);
    CHECK_EQ_INT(env_start_remote(&e, &r, 0.2), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(put_valid(&e, "denied.dcm", valid1), 0);
    char *t = NULL;
    for (int i = 0; i < 200 && !(t && strstr(t, "\npaused: ")); i++) {
        free(t);
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
        t = import_status_text(e.m, STORE);
    }
    CHECK(t && strstr(t, "\nfailed: 0\n") != NULL);
    CHECK(t &&
          strstr(t, "\npaused: permission denied while uploading to gs://bucket/pre/") != NULL);
    CHECK(t && strstr(t, "roles/storage.objectAdmin on gs://bucket") != NULL);
    free(t);
    CHECK_EQ_INT(r.f.imports, 0);
    r.f.upload_forbidden = false;
    CHECK(wait_for(&e, imported_n, 1));
    t = import_status_text(e.m, STORE);
    CHECK(t && strstr(t, "paused:") == NULL);
    free(t);
    env_stop(&e);
    remote_stop(&r);
}

/* An import that ends UNAVAILABLE is imported again; nothing fails. */
TEST(uploader_transient_op_error_imports_again)
{
    remote r;
    env e;
    CHECK_EQ_INT(remote_start(&r), 0);
    r.f.transient_left = 1;
    snprintf(e.cache, sizeof e.cache, "%s/c%d", root, ++seq);
    mkdir(e.cache, 0700);
    CHECK_EQ_INT(env_start_remote(&e, &r, 0.2), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(put_valid(&e, "a.dcm", valid1), 0);
    CHECK(wait_for(&e, imported_n, 1));
    CHECK_EQ_INT(counts(&e).failed, 0);
    CHECK_EQ_INT(r.f.imports, 2);
    CHECK_EQ_INT(r.f.searches, 0);
    env_stop(&e);
    remote_stop(&r);
}

/* A polled operation that answers 404: each file is looked up, the ones
 * present are imported, the missing ones imported again; none fails. */
TEST(uploader_vanished_op_checks_and_imports_again)
{
    remote r;
    env e;
    CHECK_EQ_INT(remote_start(&r), 0);
    r.f.op_gone_left = 1;
    snprintf(r.f.present[0], sizeof r.f.present[0], "%s", SOP1);
    snprintf(e.cache, sizeof e.cache, "%s/c%d", root, ++seq);
    mkdir(e.cache, 0700);
    CHECK_EQ_INT(env_start_remote(&e, &r, 0.2), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(put_valid(&e, "in.dcm", valid1), 0);
    CHECK_EQ_INT(put_valid(&e, "out.dcm", valid2), 0);
    CHECK(wait_for(&e, imported_n, 2));
    CHECK_EQ_INT(counts(&e).failed, 0);
    CHECK_EQ_INT(r.f.searches, 2);
    CHECK_EQ_INT(r.f.imports, 2);
    env_stop(&e);
    remote_stop(&r);
}

TEST(uploader_op_error_checks_each_file)
{
    remote r;
    env e;
    CHECK_EQ_INT(remote_start(&r), 0);
    r.f.op_error = true;
    snprintf(r.f.present[0], sizeof r.f.present[0], "%s", SOP1);
    snprintf(e.cache, sizeof e.cache, "%s/c%d", root, ++seq);
    mkdir(e.cache, 0700);
    CHECK_EQ_INT(env_start_remote(&e, &r, 0.2), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(put_valid(&e, "in.dcm", valid1), 0);
    CHECK_EQ_INT(put_valid(&e, "out.dcm", valid2), 0);
    CHECK(wait_for(&e, settled_n, 2));
    char *t = import_status_text(e.m, STORE);
    import_counts c;
    CHECK(t && status_parse(t, &c) == 0);
    CHECK_EQ_INT(c.imported, 1);
    CHECK_EQ_INT(c.failed, 1);
    CHECK(t && strstr(t, "failed: out.dcm: import operation "
                         "projects/p/locations/l/datasets/d/operations/77 failed: 1 file could "
                         "not be imported") != NULL);
    free(t);
    CHECK_EQ_INT(r.f.searches, 2);
    char state[32] = "";
    CHECK_EQ_INT(import_state(e.m, STORE, "in.dcm", state, sizeof state), 0);
    CHECK_EQ_STR(state, "imported"); /* found by the search: remembered */
    CHECK_EQ_INT(import_state(e.m, STORE, "out.dcm", state, sizeof state), 0);
    CHECK_EQ_STR(state, "failed");
    /* Failures survive a restart until unlinked. */
    env_stop(&e);
    CHECK_EQ_INT(env_start_remote(&e, &r, 0.2), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(counts(&e).failed, 1);
    CHECK_EQ_INT(import_unlink(e.m, STORE, "out.dcm"), 0);
    CHECK_EQ_INT(counts(&e).failed, 0);
    env_stop(&e);
    remote_stop(&r);
}

TEST(uploader_unlink_after_upload_deletes_staged_object)
{
    remote r;
    env e;
    CHECK_EQ_INT(remote_start(&r), 0);
    snprintf(e.cache, sizeof e.cache, "%s/c%d", root, ++seq);
    mkdir(e.cache, 0700);
    CHECK_EQ_INT(env_start_remote(&e, &r, 2.0), 0);
    if (!e.m)
        return;
    CHECK_EQ_INT(put_valid(&e, "gone.dcm", valid1), 0);
    CHECK_EQ_INT(put_valid(&e, "kept.dcm", valid2), 0);
    CHECK(wait_for(&e, uploaded_n, 2));
    CHECK_EQ_INT(import_unlink(e.m, STORE, "gone.dcm"), 0);
    CHECK(wait_for(&e, imported_n, 1));
    CHECK_EQ_INT(r.f.imports, 1);
    for (int i = 0; i < 100 && r.f.deletes < 2; i++)
        usleep(50000);
    CHECK_EQ_INT(r.f.deletes, 2); /* the withdrawn one before commit, the imported one after */
    CHECK_EQ_INT(counts(&e).imported, 1);
    env_stop(&e);
    remote_stop(&r);
}

typedef struct stress_arg {
    env *e;
    int id;
    int fails;
} stress_arg;

static void *stress_writer(void *arg)
{
    stress_arg *a = arg;
    char name[64], dir[32];
    snprintf(dir, sizeof dir, "t%d", a->id);
    if (import_mkdir(a->e->m, STORE, dir, 0755) != 0)
        a->fails++;
    for (int i = 0; i < 25; i++) {
        snprintf(name, sizeof name, "t%d/.f%d.tmp", a->id, i);
        if (put_valid(a->e, name, i % 2 ? valid1 : valid2) != 0)
            a->fails++;
        char final[64];
        snprintf(final, sizeof final, "t%d/f%d.dcm", a->id, i);
        if (import_rename(a->e->m, STORE, name, final, 0) != 0)
            a->fails++;
        if (i % 5 == 0 && import_unlink(a->e->m, STORE, final) != 0)
            a->fails++; /* withdrawn: pending, so never EBUSY this early */
    }
    return NULL;
}

TEST(uploader_concurrent_writers)
{
    remote r;
    env e;
    CHECK_EQ_INT(remote_start(&r), 0);
    snprintf(e.cache, sizeof e.cache, "%s/c%d", root, ++seq);
    mkdir(e.cache, 0700);
    CHECK_EQ_INT(env_start_remote(&e, &r, 0.3), 0);
    if (!e.m)
        return;
    pthread_t th[6];
    stress_arg args[6];
    for (int i = 0; i < 6; i++) {
        args[i] = (stress_arg){&e, i, 0};
        pthread_create(&th[i], NULL, stress_writer, &args[i]);
    }
    for (int i = 0; i < 6; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_INT(args[i].fails, 0);
    }
    /* 6 x 25 files, 5 of each 25 withdrawn. */
    CHECK(wait_for(&e, imported_n, 6 * 20));
    CHECK_EQ_INT(counts(&e).failed, 0);
    CHECK(r.f.imports >= 1);
    names n = {0};
    import_readdir(e.m, STORE, "t0", fill, &n);
    CHECK_EQ_INT(n.n, 20); /* the imported files stay listed (remembered) */
    env_stop(&e);
    remote_stop(&r);
}

TEST(uploader_resumes_after_restart)
{
    env e;
    CHECK_EQ_INT(env_new(&e), 0); /* no uploader: accepted only */
    if (!e.m)
        return;
    CHECK_EQ_INT(put_valid(&e, "later1.dcm", valid1), 0);
    CHECK_EQ_INT(put_valid(&e, "later2.dcm", valid2), 0);
    env_stop(&e);
    remote r;
    CHECK_EQ_INT(remote_start(&r), 0);
    CHECK_EQ_INT(env_start_remote(&e, &r, 0.2), 0);
    if (!e.m)
        return;
    CHECK(wait_for(&e, imported_n, 2));
    CHECK_EQ_INT(r.f.uploads, 2);
    CHECK_EQ_INT(r.f.imports, 1);
    env_stop(&e);
    remote_stop(&r);
}

/* ---- dicomfs wait against a fake store directory ---- */

static void fake_store(char *dir, size_t len, const char *status)
{
    snprintf(dir, len, "%s/w%d", root, ++seq);
    char p[400];
    mkdir(dir, 0700);
    snprintf(p, sizeof p, "%s/import", dir);
    mkdir(p, 0700);
    snprintf(p, sizeof p, "%s/import/sub", dir);
    mkdir(p, 0700);
    snprintf(p, sizeof p, "%s/operations", dir);
    mkdir(p, 0700);
    snprintf(p, sizeof p, "%s/status", dir);
    FILE *f = fopen(p, "w");
    if (f) {
        fputs(status, f);
        fclose(f);
    }
}

static int run_wait(const char *path, const char *timeout)
{
    char *argv[] = {"wait", (char *)path, "--timeout", (char *)timeout, NULL};
    fflush(stdout);
    /* wait prints progress to stdout: keep the TAP stream clean. */
    int saved = dup(1);
    int devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 1);
    int rc = wait_main(4, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    close(devnull);
    return rc;
}

TEST(wait_exit_codes)
{
    char d[300], sub[400];
    fake_store(d, sizeof d,
               "spooled: 0\nuploading: 0\nuploaded: 0\nimporting: 0\nimported: 7\n"
               "failed: 0\nbytes_spooled: 10\nbytes_uploaded: 10\n");
    snprintf(sub, sizeof sub, "%s/import/sub", d);
    CHECK_EQ_INT(run_wait(d, "5"), 0);
    CHECK_EQ_INT(run_wait(sub, "5"), 0); /* found by walking up */
    fake_store(d, sizeof d,
               "spooled: 0\nuploading: 0\nuploaded: 0\nimporting: 0\nimported: 7\n"
               "failed: 1\nbytes_spooled: 10\nbytes_uploaded: 10\n"
               "failed: x.dcm: refused\n");
    CHECK_EQ_INT(run_wait(d, "5"), 1);
    fake_store(d, sizeof d,
               "spooled: 2\nuploading: 0\nuploaded: 0\nimporting: 0\nimported: 7\n"
               "failed: 0\nbytes_spooled: 10\nbytes_uploaded: 10\n");
    CHECK_EQ_INT(run_wait(d, "1"), 3);
    CHECK_EQ_INT(run_wait(root, "1"), 2); /* not a store */
    CHECK_EQ_INT(run_wait("/nonexistent/path", "1"), 2);
    CHECK_EQ_INT(run_wait(d, "abc"), 2);
    fake_store(d, sizeof d, "not a status file\n");
    CHECK_EQ_INT(run_wait(d, "1"), 2);
}

static int make_samples(void)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 - '%s' <<'EOF'\n"
             "import sys\n"
             "from pydicom.dataset import Dataset, FileMetaDataset\n"
             "from pydicom.uid import ExplicitVRLittleEndian\n"
             "for i, uid in ((1, '%s'), (2, '%s')):\n"
             "    meta = FileMetaDataset()\n"
             "    meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.7'\n"
             "    meta.MediaStorageSOPInstanceUID = uid\n"
             "    meta.TransferSyntaxUID = ExplicitVRLittleEndian\n"
             "    ds = Dataset()\n"
             "    ds.file_meta = meta\n"
             "    ds.SOPClassUID = meta.MediaStorageSOPClassUID\n"
             "    ds.SOPInstanceUID = uid\n"
             "    ds.StudyInstanceUID = '1.2.826.0.1.3680043.8.498.4242.100'\n"
             "    ds.SeriesInstanceUID = '1.2.826.0.1.3680043.8.498.4242.200'\n"
             "    ds.PatientName = 'Test^Spool%%d' %% i\n"
             "    ds.Modality = 'OT'\n"
             "    ds.ImageComments = 'x' * (100 * i)\n"
             "    ds.save_as(sys.argv[1] + '/valid%%d.dcm' %% i, write_like_original=False)\n"
             "EOF\n",
             root, SOP1, SOP2);
    return system(cmd);
}

int main(void)
{
    log_init("test_spool", false, LOG_WARNING);
    snprintf(root, sizeof root, "/tmp/dicomfs-test-spool.XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    if (make_samples() != 0)
        printf("# pydicom could not generate the sample files\n");
    snprintf(valid1, sizeof valid1, "%s/valid1.dcm", root);
    snprintf(valid2, sizeof valid2, "%s/valid2.dcm", root);
    RUN(write_truncate_read_back);
    RUN(valid_file_accepted_durably);
    RUN(write_error_never_accepted);
    RUN(spool_dir_sync_lazy_and_eager);
    RUN(spool_pool_handout_and_cleanup);
    RUN(spool_recycle_keeps_every_file);
    RUN(spool_recycle_keeps_bytes_within_budget);
    RUN(non_dicom_rejected_and_gone);
    RUN(zero_length_rejected);
    RUN(flush_idempotent_revalidates_after_write);
    RUN(reopen_rewrite_revalidated);
    RUN(rsync_temp_name_then_rename_and_utimens);
    RUN(rename_onto_pending_replaces_it);
    RUN(unlink_pending_withdraws);
    RUN(directories_local_and_journaled);
    RUN(hostile_names);
    RUN(stores_are_separate);
    RUN(missing_spool_file_fails_loudly_on_restart);
    RUN(stray_spool_files_collected);
    RUN(status_text_format_and_parse);
    RUN(uploader_one_import_per_batch);
    RUN(uploader_retries_transient_errors);
    RUN(uploader_refused_upload_pauses_the_store);
    RUN(uploader_transient_op_error_imports_again);
    RUN(uploader_vanished_op_checks_and_imports_again);
    RUN(uploader_op_error_checks_each_file);
    RUN(uploader_unlink_after_upload_deletes_staged_object);
    RUN(uploader_resumes_after_restart);
    RUN(uploader_concurrent_writers);
    RUN(wait_exit_codes);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    (void)system(cmd);
    return test_done();
}
