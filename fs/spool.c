/* spool: files under cache_dir/spool named by random ids.
 *
 * Directory durability: a spool file's directory entry must be durable
 * before a file is reported power-loss durable (fsync(), -o sync_close),
 * which costs an fsync of the directory (about as much as the file's own
 * fdatasync). spool_sync_dir() returns only once a directory fsync that
 * started after every creation made before the call has completed; a
 * background thread does the fsyncs (one covers every creation made before
 * it started). In eager mode (sync_close: every close() will ask) each
 * creation already wakes the thread, so the sync runs while the file is
 * being written and spool_sync_dir() usually finds it done. Otherwise the
 * directory is synced only when asked: constant directory fsyncs during a
 * copy of many small files would force a journal commit each and slow the
 * copy for nothing.
 *
 * Creating a file costs 0.1-0.4 ms on a busy ext4 (its inode allocator
 * scans for recently deleted inodes), in the middle of every cp into
 * import/. So the same thread keeps a small pool of empty files created
 * ahead in cache_dir/spool-pool/ (from the first spool_create on), and
 * spool_create renames one into spool/ (no inode to allocate). spool/
 * thus only ever holds files handed out. Pool files left by a crash are
 * removed by the next spool_open; spool_close removes the unused ones.
 * spool_recycle puts a finished file back into the pool (emptied, under a
 * new id) instead of deleting it, so a steady stream of files allocates no
 * inodes at all. The pool takes back every released file (up to
 * SPOOL_POOL_MAX): while files are in flight the pool is refilled with new
 * inodes, and when those in flight come back a bounded pool overflowed,
 * so every further file was deleted and another created (ext4's scan of
 * recently deleted inodes grew with the copy: +74% per file from 10 000 to
 * 200 000 files). Only the first SPOOL_POOL entries keep an open
 * descriptor (the others are reopened by name, which allocates nothing);
 * entries beyond SPOOL_POOL are removed once no file was created for
 * SPOOL_IDLE_S seconds, and all at spool_close. A recycled file keeps
 * its content while the pool holds at most SPOOL_KEEP_BYTES of them: the
 * next file written into it overwrites the cached pages (emptying a file
 * and filling it again freed and reallocated every page and block, about
 * a fifth of the client's CPU per file), and its writer cuts it to its
 * size at acceptance (import.c). Emptied files hold no data blocks: beyond
 * the budget the pool costs inodes and about 48 bytes of memory each. */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define SPOOL_FILL 32 /* empty files created ahead */
/* Pool entries that keep an open descriptor, and that idle trimming keeps. */
#define SPOOL_POOL (3 * SPOOL_FILL)
#define SPOOL_POOL_MAX 65536 /* released files kept at most */
#define SPOOL_IDLE_S 30      /* no creation for this long: trim to SPOOL_POOL */

/* Bytes of earlier files that recycled pool files may keep (see
 * spool_recycle); beyond it, released files are emptied. */
#define SPOOL_KEEP_BYTES (64u << 20)

typedef struct {
    int fd; /* -1 beyond SPOOL_POOL: reopened by name when handed out */
    char id[SPOOL_ID_LEN + 1];
    uint64_t len; /* bytes an earlier file left in it (counted in pool_bytes) */
} pool_ent;

struct spool {
    char *dir;
    int dirfd;
    int pooldirfd; /* cache_dir/spool-pool, or -1: no pool */
    pthread_mutex_t lock;
    pthread_cond_t cond;      /* syncer: work or stop; waiters: a sync finished */
    uint64_t created, synced; /* creations made / covered by a finished dir fsync */
    uint64_t requested;       /* creations a dir fsync was asked to cover */
    bool eager;               /* every creation asks */
    bool pool_on;             /* keep the pool filled (set by the first spool_create) */
    int pool_n, pool_cap;
    pool_ent *pool;
    uint64_t pool_bytes;       /* sum of the entries' len, at most SPOOL_KEEP_BYTES */
    struct timespec last_take; /* CLOCK_MONOTONIC of the last spool_create */
    int sync_err;              /* result of the last dir fsync (0 or -errno) */
    bool stop, thread_ok;
    pthread_t thread;
};

static int create_file(int dirfd, char id[SPOOL_ID_LEN + 1]);

/* Adds a file holding len bytes to the pool (lock held; len already
 * counted in pool_bytes). False when the pool is full. */
static bool pool_push(spool *s, int fd, const char id[SPOOL_ID_LEN + 1], uint64_t len)
{
    if (s->pool_n >= SPOOL_POOL_MAX)
        return false;
    if (s->pool_n == s->pool_cap) {
        int cap = s->pool_cap ? 2 * s->pool_cap : SPOOL_POOL;
        pool_ent *p = realloc(s->pool, (size_t)cap * sizeof *p);
        if (!p)
            return false;
        s->pool = p;
        s->pool_cap = cap;
    }
    if (s->pool_n >= SPOOL_POOL) { /* keep descriptors bounded */
        close(fd);
        fd = -1;
    }
    s->pool[s->pool_n].fd = fd;
    s->pool[s->pool_n].len = len;
    memcpy(s->pool[s->pool_n].id, id, SPOOL_ID_LEN + 1);
    s->pool_n++;
    return true;
}

/* Fills the pool up (lock held; dropped around each creation). */
static void pool_fill(spool *s)
{
    while (!s->stop && s->pool_on && s->pool_n < SPOOL_FILL) {
        char id[SPOOL_ID_LEN + 1];
        pthread_mutex_unlock(&s->lock);
        int fd = create_file(s->pooldirfd, id);
        pthread_mutex_lock(&s->lock);
        if (fd < 0) {
            s->pool_on = false; /* spool_create creates inline and reports the error */
            return;
        }
        if (!pool_push(s, fd, id, 0)) {
            close(fd);
            unlinkat(s->pooldirfd, id, 0);
            return;
        }
    }
}

/* Seconds left before the pool may be trimmed (lock held); 0: trim now. */
static time_t idle_left(spool *s, struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    *deadline = s->last_take;
    deadline->tv_sec += SPOOL_IDLE_S;
    return deadline->tv_sec > now.tv_sec ? deadline->tv_sec - now.tv_sec : 0;
}

/* Removes the newest pool entry (lock held; dropped around the unlink). */
static void pool_trim_one(spool *s)
{
    pool_ent e = s->pool[--s->pool_n];
    s->pool_bytes -= e.len;
    pthread_mutex_unlock(&s->lock);
    if (e.fd >= 0)
        close(e.fd);
    unlinkat(s->pooldirfd, e.id, 0);
    pthread_mutex_lock(&s->lock);
}

static void *syncer_main(void *arg)
{
    spool *s = arg;
    pthread_setname_np(pthread_self(), "dfs-spoolsync");
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        if (s->pool_on && s->pool_n <= SPOOL_FILL / 2) {
            pool_fill(s);
            continue;
        }
        if (s->synced >= s->requested) {
            struct timespec deadline;
            if (s->pool_n <= SPOOL_POOL)
                pthread_cond_wait(&s->cond, &s->lock);
            else if (idle_left(s, &deadline) > 0)
                pthread_cond_timedwait(&s->cond, &s->lock, &deadline);
            else
                pool_trim_one(s);
            continue;
        }
        uint64_t target = s->created;
        pthread_mutex_unlock(&s->lock);
        int rc = fsync(s->dirfd) < 0 ? -errno : 0;
        pthread_mutex_lock(&s->lock);
        if (rc < 0)
            log_error("spool: cannot sync the directory %s: %s", s->dir, strerror(-rc));
        s->sync_err = rc;
        s->synced = target;
        pthread_cond_broadcast(&s->cond);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* cache_dir/spool-pool (0700), emptied of what a previous run left; -1
 * when it cannot be made (files are then created in place, logged). */
static int open_pool_dir(const char *cache_dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/spool-pool", cache_dir);
    int fd = -1;
    if ((mkdir(path, 0700) == 0 || errno == EEXIST) &&
        (fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)) >= 0 &&
        fchmod(fd, 0700) == 0) {
        int dfd = dup(fd);
        DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
        struct dirent *de;
        while (d && (de = readdir(d)))
            if (spool_id_valid(de->d_name))
                unlinkat(fd, de->d_name, 0);
        if (d)
            closedir(d);
        else if (dfd >= 0)
            close(dfd);
        return fd;
    }
    log_warn("spool: %s: %s (spool files are created one by one)", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    return -1;
}

int spool_open(const char *cache_dir, spool **out)
{
    *out = NULL;
    spool *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->dirfd = -1;
    s->pooldirfd = -1;
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* idle trimming's timed wait */
    pthread_cond_init(&s->cond, &ca);
    pthread_condattr_destroy(&ca);
    clock_gettime(CLOCK_MONOTONIC, &s->last_take);
    size_t n = strlen(cache_dir) + sizeof "/spool";
    s->dir = malloc(n);
    if (!s->dir) {
        free(s);
        return -ENOMEM;
    }
    snprintf(s->dir, n, "%s/spool", cache_dir);
    int rc = 0;
    if (mkdir(s->dir, 0700) < 0 && errno != EEXIST)
        rc = -errno;
    if (rc == 0 && (s->dirfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)) < 0)
        rc = -errno;
    /* An existing directory may have looser permissions: spooled files are
     * medical data, so tighten it. */
    if (rc == 0 && fchmod(s->dirfd, 0700) < 0)
        rc = -errno;
    if (rc < 0) {
        log_error("spool: %s: %s", s->dir, strerror(-rc));
        spool_close(s);
        return rc;
    }
    s->pooldirfd = open_pool_dir(cache_dir);
    /* Without the thread, spool_sync_dir() syncs by itself. */
    s->thread_ok = pthread_create(&s->thread, NULL, syncer_main, s) == 0;
    *out = s;
    return 0;
}

void spool_close(spool *s)
{
    if (!s)
        return;
    if (s->thread_ok) {
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->thread, NULL);
    }
    s->pool_bytes = 0;
    for (int i = 0; i < s->pool_n; i++) {
        if (s->pool[i].fd >= 0)
            close(s->pool[i].fd);
        unlinkat(s->pooldirfd, s->pool[i].id, 0);
    }
    free(s->pool);
    if (s->pooldirfd >= 0)
        close(s->pooldirfd);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    if (s->dirfd >= 0)
        close(s->dirfd);
    free(s->dir);
    free(s);
}

bool spool_id_valid(const char *id)
{
    size_t i = 0;
    for (; id[i]; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return false;
    return i == SPOOL_ID_LEN;
}

static int new_id(char id[SPOOL_ID_LEN + 1])
{
    unsigned char r[SPOOL_ID_LEN / 2];
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = getrandom(r + got, sizeof r - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof r; i++)
        snprintf(id + 2 * i, 3, "%02x", r[i]);
    return 0;
}

/* Creates an empty spool file with a new random id. */
static int create_file(int dirfd, char id[SPOOL_ID_LEN + 1])
{
    for (int tries = 0; tries < 8; tries++) {
        int rc = new_id(id);
        if (rc < 0)
            return rc;
        int fd = openat(dirfd, id, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd >= 0)
            return fd;
        if (errno != EEXIST)
            return -errno;
    }
    return -EEXIST;
}

/* A file from the pool moved into spool/, or -1 (pool empty or off);
 * *len: the bytes an earlier file left in it. */
static int from_pool(spool *s, char id[SPOOL_ID_LEN + 1], uint64_t *len)
{
    pthread_mutex_lock(&s->lock);
    if (s->thread_ok && s->pooldirfd >= 0 && !s->pool_on) {
        s->pool_on = true;
        pthread_cond_broadcast(&s->cond);
    }
    clock_gettime(CLOCK_MONOTONIC, &s->last_take);
    bool got = s->pool_n > 0;
    int fd = -1;
    if (got) {
        pool_ent *e = &s->pool[--s->pool_n];
        fd = e->fd;
        *len = e->len;
        s->pool_bytes -= e->len;
        memcpy(id, e->id, SPOOL_ID_LEN + 1);
        if (s->pool_n <= SPOOL_FILL / 2)
            pthread_cond_broadcast(&s->cond);
    }
    pthread_mutex_unlock(&s->lock);
    if (!got)
        return -1;
    if (renameat(s->pooldirfd, id, s->dirfd, id) < 0) {
        log_warn("spool: cannot move a pool file into %s: %s", s->dir, strerror(errno));
        unlinkat(s->pooldirfd, id, 0);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (fd < 0 && (fd = openat(s->dirfd, id, O_RDWR | O_CLOEXEC | O_NOFOLLOW)) < 0) {
        log_warn("spool: cannot reopen a pool file in %s: %s", s->dir, strerror(errno));
        unlinkat(s->dirfd, id, 0);
    }
    return fd;
}

int spool_create(spool *s, char id[SPOOL_ID_LEN + 1], uint64_t *old_len)
{
    *old_len = 0;
    int fd = from_pool(s, id, old_len);
    if (fd < 0)
        fd = create_file(s->dirfd, id);
    if (fd < 0) {
        log_error("spool: cannot create a file in %s: %s", s->dir, strerror(-fd));
        return fd;
    }
    /* Start making the new entry durable now in eager mode (see the top). */
    pthread_mutex_lock(&s->lock);
    s->created++;
    if (s->eager) {
        s->requested = s->created;
        pthread_cond_broadcast(&s->cond);
    }
    pthread_mutex_unlock(&s->lock);
    return fd;
}

int spool_open_file(spool *s, const char *id, int flags)
{
    if (!spool_id_valid(id))
        return -EINVAL;
    int fd = openat(s->dirfd, id, (flags & ~O_CREAT) | O_CLOEXEC | O_NOFOLLOW);
    return fd < 0 ? -errno : fd;
}

int spool_create_as(spool *s, const char *id)
{
    if (!spool_id_valid(id))
        return -EINVAL;
    int fd = openat(s->dirfd, id, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        int rc = -errno;
        log_error("spool: cannot create %s/%s: %s", s->dir, id, strerror(-rc));
        return rc;
    }
    return fd;
}

int spool_open_tmp(spool *s)
{
    int fd = openat(s->dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    return fd < 0 ? -errno : fd;
}

int spool_remove(spool *s, const char *id)
{
    if (!spool_id_valid(id))
        return -EINVAL;
    if (unlinkat(s->dirfd, id, 0) < 0 && errno != ENOENT) {
        int rc = -errno;
        log_error("spool: cannot remove %s/%s: %s", s->dir, id, strerror(-rc));
        return rc;
    }
    return 0;
}

/* The spool file id emptied, open for its next use. ext4 marks a file
 * truncated to 0 (auto_da_alloc: the "truncate and rewrite" pattern of
 * editors) and, at the next close of any descriptor of it, writes all its
 * delayed-allocation data to disk: the next file spooled in this inode
 * would go to disk at its close (about 5% of the client's CPU per file, and
 * disk writes for data that is usually released before write-back). So
 * the truncating descriptor is closed while the file is still empty (that
 * close clears the mark at no cost) and a second one is kept. */
static int open_emptied(spool *s, const char *id)
{
    int tfd = openat(s->dirfd, id, O_RDWR | O_TRUNC | O_CLOEXEC | O_NOFOLLOW);
    if (tfd < 0)
        return -1;
    int fd = openat(s->dirfd, id, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    close(tfd);
    return fd;
}

/* The spool file id open for its next use with its content kept, if the
 * pool's budget has room for it (counted into pool_bytes from now on, so
 * two recycles cannot both take the last room; *len: its size), else
 * emptied (*len 0). -1 when it cannot be opened. */
static int open_recycled(spool *s, const char *id, uint64_t *len)
{
    *len = 0;
    int fd = openat(s->dirfd, id, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    uint64_t size = (uint64_t)st.st_size;
    pthread_mutex_lock(&s->lock);
    bool keep = size <= SPOOL_KEEP_BYTES - s->pool_bytes;
    if (keep)
        s->pool_bytes += size;
    pthread_mutex_unlock(&s->lock);
    if (keep) {
        *len = size;
        return fd;
    }
    close(fd);
    return open_emptied(s, id);
}

int spool_recycle(spool *s, const char *id)
{
    if (!spool_id_valid(id))
        return -EINVAL;
    pthread_mutex_lock(&s->lock);
    bool room = s->pool_on && s->pool_n < SPOOL_POOL_MAX;
    pthread_mutex_unlock(&s->lock);
    char nid[SPOOL_ID_LEN + 1];
    uint64_t len = 0;
    int fd = room ? open_recycled(s, id, &len) : -1;
    if (fd < 0 || new_id(nid) < 0 || renameat(s->dirfd, id, s->pooldirfd, nid) < 0) {
        if (fd >= 0)
            close(fd);
        pthread_mutex_lock(&s->lock);
        s->pool_bytes -= len;
        pthread_mutex_unlock(&s->lock);
        return spool_remove(s, id);
    }
    pthread_mutex_lock(&s->lock);
    bool kept = pool_push(s, fd, nid, len);
    if (!kept)
        s->pool_bytes -= len;
    if (kept && s->pool_n == SPOOL_POOL + 1)
        pthread_cond_broadcast(&s->cond); /* the syncer starts its idle timer */
    pthread_mutex_unlock(&s->lock);
    if (!kept) { /* the pool filled up meanwhile */
        close(fd);
        unlinkat(s->pooldirfd, nid, 0);
    }
    return 0;
}

bool spool_exists(spool *s, const char *id)
{
    struct stat st;
    return spool_id_valid(id) && fstatat(s->dirfd, id, &st, 0) == 0 && S_ISREG(st.st_mode);
}

int spool_sync_dir(spool *s)
{
    if (!s->thread_ok)
        return fsync(s->dirfd) < 0 ? -errno : 0;
    pthread_mutex_lock(&s->lock);
    uint64_t want = s->created;
    if (s->requested < want) {
        s->requested = want;
        pthread_cond_broadcast(&s->cond);
    }
    while (s->synced < want && !s->stop)
        pthread_cond_wait(&s->cond, &s->lock);
    int rc = s->synced >= want ? s->sync_err : -EIO;
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void spool_set_eager_dir_sync(spool *s, bool eager)
{
    pthread_mutex_lock(&s->lock);
    s->eager = eager;
    pthread_mutex_unlock(&s->lock);
}

int spool_gc(spool *s, bool (*keep)(void *ctx, const char *id), void *ctx)
{
    int fd = dup(s->dirfd);
    if (fd < 0)
        return -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -errno;
    }
    rewinddir(d);
    int removed = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        if (spool_id_valid(de->d_name) && keep(ctx, de->d_name))
            continue;
        if (unlinkat(s->dirfd, de->d_name, 0) == 0)
            removed++;
    }
    closedir(d);
    if (removed)
        log_info("spool: removed %d unaccepted spool file(s) from %s", removed, s->dir);
    return removed;
}
