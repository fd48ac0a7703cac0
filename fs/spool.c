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
 * inodes at all. */
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
#include <unistd.h>

#include "log.h"

#define SPOOL_FILL 32 /* empty files created ahead */
/* Room for recycled files beyond SPOOL_FILL: the pool is refilled (new
 * inodes) while the files in flight are still being uploaded; when they
 * come back a pool of only SPOOL_FILL overflowed, so about one file in ten
 * was deleted and another created (each creation scanning for recently
 * freed inodes on a busy ext4). */
#define SPOOL_POOL (3 * SPOOL_FILL)

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
    int pool_n;
    int pool_fd[SPOOL_POOL];
    char pool_id[SPOOL_POOL][SPOOL_ID_LEN + 1];
    int sync_err; /* result of the last dir fsync (0 or -errno) */
    bool stop, thread_ok;
    pthread_t thread;
};

static int create_file(int dirfd, char id[SPOOL_ID_LEN + 1]);

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
        if (s->pool_n >= SPOOL_POOL) {
            /* spool_recycle filled it while the lock was dropped */
            close(fd);
            unlinkat(s->pooldirfd, id, 0);
            return;
        }
        memcpy(s->pool_id[s->pool_n], id, sizeof id);
        s->pool_fd[s->pool_n++] = fd;
    }
}

static void *syncer_main(void *arg)
{
    spool *s = arg;
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        if (s->pool_on && s->pool_n <= SPOOL_FILL / 2) {
            pool_fill(s);
            continue;
        }
        if (s->synced >= s->requested) {
            pthread_cond_wait(&s->cond, &s->lock);
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
    pthread_cond_init(&s->cond, NULL);
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
    for (int i = 0; i < s->pool_n; i++) {
        close(s->pool_fd[i]);
        unlinkat(s->pooldirfd, s->pool_id[i], 0);
    }
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

/* A file from the pool moved into spool/, or -1 (pool empty or off). */
static int from_pool(spool *s, char id[SPOOL_ID_LEN + 1])
{
    pthread_mutex_lock(&s->lock);
    if (s->thread_ok && s->pooldirfd >= 0 && !s->pool_on) {
        s->pool_on = true;
        pthread_cond_broadcast(&s->cond);
    }
    int fd = -1;
    if (s->pool_n > 0) {
        fd = s->pool_fd[--s->pool_n];
        memcpy(id, s->pool_id[s->pool_n], SPOOL_ID_LEN + 1);
        if (s->pool_n <= SPOOL_FILL / 2)
            pthread_cond_broadcast(&s->cond);
    }
    pthread_mutex_unlock(&s->lock);
    if (fd >= 0 && renameat(s->pooldirfd, id, s->dirfd, id) < 0) {
        log_warn("spool: cannot move a pool file into %s: %s", s->dir, strerror(errno));
        unlinkat(s->pooldirfd, id, 0);
        close(fd);
        fd = -1;
    }
    return fd;
}

int spool_create(spool *s, char id[SPOOL_ID_LEN + 1])
{
    int fd = from_pool(s, id);
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

int spool_recycle(spool *s, const char *id)
{
    if (!spool_id_valid(id))
        return -EINVAL;
    pthread_mutex_lock(&s->lock);
    bool room = s->pool_on && s->pool_n < SPOOL_POOL;
    pthread_mutex_unlock(&s->lock);
    char nid[SPOOL_ID_LEN + 1];
    int fd = room ? open_emptied(s, id) : -1;
    if (fd < 0 || new_id(nid) < 0 || renameat(s->dirfd, id, s->pooldirfd, nid) < 0) {
        if (fd >= 0)
            close(fd);
        return spool_remove(s, id);
    }
    pthread_mutex_lock(&s->lock);
    if (s->pool_n < SPOOL_POOL) {
        memcpy(s->pool_id[s->pool_n], nid, sizeof nid);
        s->pool_fd[s->pool_n++] = fd;
        fd = -1;
    }
    pthread_mutex_unlock(&s->lock);
    if (fd >= 0) { /* the pool filled up meanwhile */
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
