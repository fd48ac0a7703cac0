/* journal: a durable key/value map in cache_dir/journal/.
 *
 * On disk: "snapshot" (written only by compaction, atomically: temp file,
 * fsync, rename, fsync of the directory) and "log" (append-only). Both are a
 * sequence of records:
 *
 *   u32 LE payload length | u32 LE CRC32 of the payload | payload
 *   payload = 'P' u32 LE key length, key, value     (put)
 *           | 'D' key                               (delete)
 *
 * Loading applies the snapshot, then the log. The first record that is
 * short (torn by a kill during a write) or whose CRC does not match ends the
 * log: the log is cut there so new records follow valid ones, and the
 * discarded bytes are kept in log.bad.N for inspection. Replaying the log
 * over a snapshot that already contains it gives the same map (last write
 * per key wins), so a crash between the snapshot rename and the log
 * truncation is harmless.
 *
 * Durability: put/del with sync=true return after an fdatasync that covers
 * their record. Concurrent callers share fsyncs (group commit): a caller
 * whose record was written before another caller's fsync started needs no
 * fsync of its own.
 */
#include "journal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <zlib.h>

#include "log.h"
#include "util.h"

#define JOURNAL_MAX_RECORD (16u << 20) /* no record is this big: a larger length is corrupt */
#define JOURNAL_COMPACT_MIN (8u << 20)

typedef struct kv {
    char *key;
    void *val;
    size_t vlen;
    struct kv *hnext;
    struct kv *prev, *next; /* insertion order */
} kv;

struct journal {
    char *dir;
    int logfd;
    int dirfd;
    pthread_mutex_t lock;      /* map, log writes, counters */
    pthread_mutex_t sync_lock; /* one fsync leader at a time */
    uint64_t wseq, synced;     /* records written / covered by an fsync */
    uint64_t log_size;
    uint64_t snap_size;
    kv **buckets;
    size_t nbuckets, count;
    kv *head, *tail;
    uint64_t op_seq;
    bool reserve_held; /* the "reserve" file holds JOURNAL_RESERVE bytes */
};

/* Space the journal keeps allocated (a file it can delete) for progress
 * records when the cache disk fills up: spool files are deleted only after
 * their import, and the import can only be committed through the journal. */
#define JOURNAL_RESERVE (256 * 1024)

/* (Re)creates the reserve when there is clearly room for it. */
static void reserve_arm(journal *j)
{
    struct statvfs sv;
    if (j->reserve_held || fstatvfs(j->dirfd, &sv) < 0 ||
        (uint64_t)sv.f_bavail * sv.f_frsize < 4 * (uint64_t)JOURNAL_RESERVE)
        return;
    int fd = openat(j->dirfd, "reserve", O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return;
    if (posix_fallocate(fd, 0, JOURNAL_RESERVE) == 0)
        j->reserve_held = true;
    close(fd);
    if (!j->reserve_held)
        unlinkat(j->dirfd, "reserve", 0);
}

/* Frees the reserve for the record that did not fit; false if none is left. */
static bool reserve_release(journal *j)
{
    if (!j->reserve_held)
        return false;
    unlinkat(j->dirfd, "reserve", 0);
    j->reserve_held = false;
    log_warn("journal: %s: cache disk full: using the journal's reserved space so that "
             "accepted files can still be imported",
             j->dir);
    return true;
}

/* ---- map ---- */

static uint64_t hash_str(const char *s)
{
    return util_fnv1a_str(UTIL_FNV1A_INIT, s);
}

static kv *map_find(journal *j, const char *key)
{
    for (kv *e = j->buckets[hash_str(key) % j->nbuckets]; e; e = e->hnext)
        if (strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

static void map_grow(journal *j)
{
    size_t n = j->nbuckets * 2;
    kv **b = calloc(n, sizeof *b);
    if (!b)
        return; /* keep the old table: slower, still correct */
    for (kv *e = j->head; e; e = e->next) {
        size_t i = hash_str(e->key) % n;
        e->hnext = b[i];
        b[i] = e;
    }
    free(j->buckets);
    j->buckets = b;
    j->nbuckets = n;
}

static int map_put(journal *j, const char *key, const void *val, size_t len)
{
    void *copy = malloc(len ? len : 1);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, val, len);
    kv *e = map_find(j, key);
    if (e) {
        free(e->val);
        e->val = copy;
        e->vlen = len;
        return 0;
    }
    e = calloc(1, sizeof *e);
    if (!e || !(e->key = strdup(key))) {
        free(e);
        free(copy);
        return -ENOMEM;
    }
    e->val = copy;
    e->vlen = len;
    size_t i = hash_str(key) % j->nbuckets;
    e->hnext = j->buckets[i];
    j->buckets[i] = e;
    e->prev = j->tail;
    if (j->tail)
        j->tail->next = e;
    else
        j->head = e;
    j->tail = e;
    if (++j->count > j->nbuckets)
        map_grow(j);
    return 0;
}

static void map_del(journal *j, const char *key)
{
    kv **pp = &j->buckets[hash_str(key) % j->nbuckets];
    for (; *pp; pp = &(*pp)->hnext) {
        kv *e = *pp;
        if (strcmp(e->key, key) != 0)
            continue;
        *pp = e->hnext;
        if (e->prev)
            e->prev->next = e->next;
        else
            j->head = e->next;
        if (e->next)
            e->next->prev = e->prev;
        else
            j->tail = e->prev;
        free(e->key);
        free(e->val);
        free(e);
        j->count--;
        return;
    }
}

/* ---- records ---- */

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = v & 0xff;
    p[1] = (v >> 8) & 0xff;
    p[2] = (v >> 16) & 0xff;
    p[3] = (v >> 24) & 0xff;
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Builds header+payload in one malloc'ed buffer. */
static unsigned char *record_build(char type, const char *key, const void *val, size_t vlen,
                                   size_t *outlen)
{
    size_t klen = strlen(key);
    size_t plen = type == 'P' ? 1 + 4 + klen + vlen : 1 + klen;
    if (plen > JOURNAL_MAX_RECORD)
        return NULL;
    unsigned char *b = malloc(8 + plen);
    if (!b)
        return NULL;
    unsigned char *p = b + 8;
    *p++ = (unsigned char)type;
    if (type == 'P') {
        put_u32(p, (uint32_t)klen);
        p += 4;
    }
    memcpy(p, key, klen);
    p += klen;
    if (type == 'P' && vlen)
        memcpy(p, val, vlen);
    put_u32(b, (uint32_t)plen);
    put_u32(b + 4, (uint32_t)crc32(0L, b + 8, (uInt)plen));
    *outlen = 8 + plen;
    return b;
}

/* Applies one payload to the map. Returns 0, or -EINVAL for a payload that
 * passed its CRC but makes no sense (treated like corruption). */
static int record_apply(journal *j, const unsigned char *p, size_t len)
{
    if (len < 1)
        return -EINVAL;
    char *key;
    if (p[0] == 'P') {
        if (len < 5)
            return -EINVAL;
        uint32_t klen = get_u32(p + 1);
        if (klen == 0 || klen > len - 5)
            return -EINVAL;
        key = strndup((const char *)p + 5, klen);
        if (!key)
            return -ENOMEM;
        if (strlen(key) != klen) {
            free(key);
            return -EINVAL;
        }
        int rc = map_put(j, key, p + 5 + klen, len - 5 - klen);
        free(key);
        return rc;
    }
    if (p[0] == 'D') {
        if (len < 2)
            return -EINVAL;
        key = strndup((const char *)p + 1, len - 1);
        if (!key)
            return -ENOMEM;
        map_del(j, key);
        free(key);
        return 0;
    }
    return -EINVAL;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_full(int fd, void *buf, size_t len, size_t *got)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = read(fd, (char *)buf + done, len - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            break;
        done += (size_t)n;
    }
    *got = done;
    return 0;
}

/* Copies [from, end) of fd into dir/log.bad.N so that nothing is destroyed
 * silently when the log is cut. */
static void keep_bad_tail(journal *j, int fd, uint64_t from, uint64_t end)
{
    char name[64];
    int out = -1;
    for (int n = 1; n < 1000 && out < 0; n++) {
        snprintf(name, sizeof name, "log.bad.%d", n);
        out = openat(j->dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (out < 0 && errno != EEXIST)
            break;
    }
    if (out < 0) {
        log_error("journal: %s: cannot save the discarded log tail: %s", j->dir, strerror(errno));
        return;
    }
    char buf[65536];
    for (uint64_t off = from; off < end;) {
        size_t want = end - off < sizeof buf ? (size_t)(end - off) : sizeof buf;
        ssize_t n = pread(fd, buf, want, (off_t)off);
        if (n <= 0 || write_all(out, buf, (size_t)n) < 0)
            break;
        off += (uint64_t)n;
    }
    fsync(out);
    close(out);
    log_error("journal: %s: %" PRIu64 " bytes after offset %" PRIu64 " discarded, kept in %s",
              j->dir, end - from, from, name);
}

/* Reads records from fd, applying them. *valid_end gets the offset after the
 * last good record; *end the file size. */
static int load_records(journal *j, int fd, const char *what, uint64_t start, uint64_t *valid_end,
                        uint64_t *end)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    *end = (uint64_t)st.st_size;
    uint64_t off = start;
    if (lseek(fd, (off_t)off, SEEK_SET) < 0)
        return -errno;
    unsigned char hdr[8];
    unsigned char *buf = NULL;
    size_t cap = 0;
    int rc = 0;
    for (;;) {
        size_t got = 0;
        if ((rc = read_full(fd, hdr, 8, &got)) < 0)
            break;
        if (got == 0)
            break;
        if (got < 8) {
            log_warn("journal: %s/%s: torn record header at offset %" PRIu64 " ignored", j->dir,
                     what, off);
            break;
        }
        uint32_t len = get_u32(hdr), crc = get_u32(hdr + 4);
        if (len == 0 || len > JOURNAL_MAX_RECORD) {
            log_error("journal: %s/%s: bad record length %" PRIu32 " at offset %" PRIu64, j->dir,
                      what, len, off);
            break;
        }
        if (len > cap) {
            unsigned char *nb = realloc(buf, len);
            if (!nb) {
                rc = -ENOMEM;
                break;
            }
            buf = nb;
            cap = len;
        }
        if ((rc = read_full(fd, buf, len, &got)) < 0)
            break;
        if (got < len) {
            log_warn("journal: %s/%s: torn last record at offset %" PRIu64 " ignored", j->dir, what,
                     off);
            break;
        }
        if ((uint32_t)crc32(0L, buf, len) != crc) {
            log_error("journal: %s/%s: CRC mismatch in the record at offset %" PRIu64, j->dir, what,
                      off);
            break;
        }
        int arc = record_apply(j, buf, len);
        if (arc == -ENOMEM) {
            rc = arc;
            break;
        }
        if (arc < 0) {
            log_error("journal: %s/%s: malformed record at offset %" PRIu64, j->dir, what, off);
            break;
        }
        off += 8 + len;
    }
    free(buf);
    *valid_end = off;
    return rc;
}

static void ops_seq_init(journal *j)
{
    for (kv *e = j->head; e; e = e->next) {
        if (strncmp(e->key, "o/", 2) == 0) {
            uint64_t n = strtoull(e->key + 2, NULL, 10);
            if (n >= j->op_seq)
                j->op_seq = n + 1;
        }
    }
}

static const char SNAP_MAGIC[8] = {'D', 'F', 'S', 'J', 'N', 'L', '1', '\n'};

static int load(journal *j)
{
    uint64_t valid, end;
    int fd = openat(j->dirfd, "snapshot", O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd >= 0) {
        char magic[8];
        size_t got = 0;
        int rc = read_full(fd, magic, 8, &got);
        if (rc == 0 && (got != 8 || memcmp(magic, SNAP_MAGIC, 8) != 0)) {
            log_error("journal: %s/snapshot: not a dicomfs journal snapshot", j->dir);
            rc = -EINVAL;
        }
        if (rc == 0)
            rc = load_records(j, fd, "snapshot", 8, &valid, &end);
        close(fd);
        if (rc < 0)
            return rc;
        if (valid != end)
            log_error("journal: %s/snapshot is damaged: %" PRIu64 " bytes after offset %" PRIu64
                      " unreadable",
                      j->dir, end - valid, valid);
        j->snap_size = end;
    } else if (errno != ENOENT) {
        return -errno;
    }
    int rc = load_records(j, j->logfd, "log", 0, &valid, &end);
    if (rc < 0)
        return rc;
    if (valid != end) {
        keep_bad_tail(j, j->logfd, valid, end);
        if (ftruncate(j->logfd, (off_t)valid) < 0 || fsync(j->logfd) < 0)
            return -errno;
    }
    j->log_size = valid;
    if (lseek(j->logfd, 0, SEEK_END) < 0)
        return -errno;
    ops_seq_init(j);
    return 0;
}

int journal_open(const char *dir, journal **out)
{
    *out = NULL;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        log_error("journal: cannot create %s: %s", dir, strerror(e));
        return -e;
    }
    journal *j = calloc(1, sizeof *j);
    if (!j)
        return -ENOMEM;
    j->logfd = j->dirfd = -1;
    j->nbuckets = 256;
    j->buckets = calloc(j->nbuckets, sizeof *j->buckets);
    j->dir = strdup(dir);
    pthread_mutex_init(&j->lock, NULL);
    pthread_mutex_init(&j->sync_lock, NULL);
    int rc = 0;
    if (!j->buckets || !j->dir)
        rc = -ENOMEM;
    if (rc == 0 && (j->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)) < 0)
        rc = -errno;
    if (rc == 0 &&
        (j->logfd = openat(j->dirfd, "log", O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW,
                           0600)) < 0)
        rc = -errno;
    if (rc == 0)
        rc = load(j);
    if (rc == 0) {
        struct stat rst;
        j->reserve_held =
            fstatat(j->dirfd, "reserve", &rst, 0) == 0 && rst.st_blocks * 512 >= JOURNAL_RESERVE;
        reserve_arm(j);
    }
    if (rc < 0) {
        log_error("journal: cannot open %s: %s", dir, strerror(-rc));
        journal_close(j);
        return rc;
    }
    *out = j;
    return 0;
}

void journal_close(journal *j)
{
    if (!j)
        return;
    if (j->logfd >= 0) {
        fdatasync(j->logfd);
        close(j->logfd);
    }
    if (j->dirfd >= 0)
        close(j->dirfd);
    for (kv *e = j->head, *n; e; e = n) {
        n = e->next;
        free(e->key);
        free(e->val);
        free(e);
    }
    free(j->buckets);
    free(j->dir);
    pthread_mutex_destroy(&j->lock);
    pthread_mutex_destroy(&j->sync_lock);
    free(j);
}

/* ---- compaction ---- */

static int compact_locked(journal *j)
{
    int fd = openat(j->dirfd, "snapshot.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
                    0600);
    if (fd < 0)
        return -errno;
    int rc = write_all(fd, SNAP_MAGIC, sizeof SNAP_MAGIC);
    uint64_t size = sizeof SNAP_MAGIC;
    for (kv *e = j->head; e && rc == 0; e = e->next) {
        size_t len;
        unsigned char *rec = record_build('P', e->key, e->val, e->vlen, &len);
        if (!rec) {
            rc = -ENOMEM;
            break;
        }
        rc = write_all(fd, rec, len);
        size += len;
        free(rec);
    }
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    close(fd);
    if (rc == 0 && renameat(j->dirfd, "snapshot.tmp", j->dirfd, "snapshot") < 0)
        rc = -errno;
    if (rc == 0 && fsync(j->dirfd) < 0)
        rc = -errno;
    if (rc < 0) {
        unlinkat(j->dirfd, "snapshot.tmp", 0);
        log_error("journal: %s: compaction failed: %s", j->dir, strerror(-rc));
        return rc;
    }
    /* The snapshot holds everything: the log can go. */
    if (ftruncate(j->logfd, 0) < 0 || fsync(j->logfd) < 0) {
        rc = -errno;
        log_error("journal: %s: cannot empty the log after compaction: %s", j->dir, strerror(-rc));
        return rc;
    }
    j->log_size = 0;
    j->snap_size = size;
    j->synced = j->wseq;
    return 0;
}

int journal_compact(journal *j)
{
    pthread_mutex_lock(&j->sync_lock);
    pthread_mutex_lock(&j->lock);
    int rc = compact_locked(j);
    pthread_mutex_unlock(&j->lock);
    pthread_mutex_unlock(&j->sync_lock);
    return rc;
}

uint64_t journal_log_size(journal *j)
{
    pthread_mutex_lock(&j->lock);
    uint64_t n = j->log_size;
    pthread_mutex_unlock(&j->lock);
    return n;
}

/* ---- updates ---- */

static int sync_to(journal *j, uint64_t seq)
{
    int rc = 0;
    pthread_mutex_lock(&j->sync_lock);
    pthread_mutex_lock(&j->lock);
    bool need = j->synced < seq;
    uint64_t target = j->wseq;
    pthread_mutex_unlock(&j->lock);
    if (need) {
        if (fdatasync(j->logfd) < 0) {
            rc = -errno;
            log_error("journal: %s: fdatasync: %s", j->dir, strerror(-rc));
        } else {
            pthread_mutex_lock(&j->lock);
            if (j->synced < target)
                j->synced = target;
            pthread_mutex_unlock(&j->lock);
        }
    }
    pthread_mutex_unlock(&j->sync_lock);
    return rc;
}

static int append(journal *j, char type, const char *key, const void *val, size_t len, bool sync,
                  bool may_use_reserve)
{
    if (!key || !*key)
        return -EINVAL;
    size_t rlen;
    unsigned char *rec = record_build(type, key, val, len, &rlen);
    if (!rec)
        return -ENOMEM;
    pthread_mutex_lock(&j->lock);
    int rc = write_all(j->logfd, rec, rlen);
    if (rc == -ENOSPC && may_use_reserve) {
        if (ftruncate(j->logfd, (off_t)j->log_size) == 0 && reserve_release(j))
            rc = write_all(j->logfd, rec, rlen);
    }
    if (rc < 0) {
        /* Never leave half a record behind: the next one would follow garbage. */
        if (ftruncate(j->logfd, (off_t)j->log_size) < 0)
            log_error("journal: %s: cannot cut a partial record: %s", j->dir, strerror(errno));
        log_error("journal: %s: write: %s", j->dir, strerror(-rc));
    } else {
        j->log_size += rlen;
        rc = type == 'P' ? map_put(j, key, val, len) : (map_del(j, key), 0);
    }
    uint64_t seq = ++j->wseq;
    pthread_mutex_unlock(&j->lock);
    free(rec);
    if (rc == 0 && sync)
        rc = sync_to(j, seq);
    return rc;
}

int journal_sync(journal *j)
{
    pthread_mutex_lock(&j->lock);
    reserve_arm(j);
    uint64_t seq = j->wseq;
    bool compact = j->log_size > JOURNAL_COMPACT_MIN && j->log_size > 2 * j->snap_size;
    pthread_mutex_unlock(&j->lock);
    if (compact)
        return journal_compact(j); /* the snapshot covers everything written */
    return sync_to(j, seq);
}

int journal_put(journal *j, const char *key, const void *val, size_t len, bool sync)
{
    return append(j, 'P', key, val, len, sync, false);
}

int journal_put_progress(journal *j, const char *key, const void *val, size_t len, bool sync)
{
    return append(j, 'P', key, val, len, sync, true);
}

int journal_del(journal *j, const char *key, bool sync)
{
    pthread_mutex_lock(&j->lock);
    bool present = map_find(j, key) != NULL;
    pthread_mutex_unlock(&j->lock);
    if (!present)
        return 0;
    return append(j, 'D', key, NULL, 0, sync, true); /* deletes make room */
}

int journal_scan(journal *j, const char *prefix, journal_kv_cb cb, void *ctx)
{
    size_t plen = strlen(prefix);
    int rc = 0;
    pthread_mutex_lock(&j->lock);
    for (kv *e = j->head; e && rc == 0; e = e->next)
        if (strncmp(e->key, prefix, plen) == 0)
            rc = cb(ctx, e->key, e->val, e->vlen);
    pthread_mutex_unlock(&j->lock);
    return rc;
}

/* ---- operations: key "o/SEQ", value "store\0op\0kind" ---- */

int journal_add_operation(journal *j, const char *store, const char *op_name, const char *kind)
{
    if (!store || !op_name || !kind)
        return -EINVAL;
    size_t a = strlen(store) + 1, b = strlen(op_name) + 1, c = strlen(kind) + 1;
    char *val = malloc(a + b + c);
    if (!val)
        return -ENOMEM;
    memcpy(val, store, a);
    memcpy(val + a, op_name, b);
    memcpy(val + a + b, kind, c);
    char key[32];
    pthread_mutex_lock(&j->lock);
    snprintf(key, sizeof key, "o/%016" PRIu64, j->op_seq++);
    pthread_mutex_unlock(&j->lock);
    int rc = journal_put_progress(j, key, val, a + b + c, true);
    free(val);
    return rc;
}

typedef struct ops_ctx {
    const char *store;
    journal_op_cb cb;
    void *ctx;
} ops_ctx;

static int ops_each(void *vctx, const char *key, const void *val, size_t len)
{
    (void)key;
    ops_ctx *o = vctx;
    const char *s = val, *end = s + len;
    const char *op = memchr(s, '\0', len);
    if (!op || ++op >= end)
        return 0;
    const char *kind = memchr(op, '\0', (size_t)(end - op));
    if (!kind || ++kind >= end || end[-1] != '\0')
        return 0;
    if (o->store && strcmp(s, o->store) != 0)
        return 0;
    return o->cb(o->ctx, op, kind);
}

int journal_list_operations(journal *j, const char *store, journal_op_cb cb, void *ctx)
{
    ops_ctx o = {store, cb, ctx};
    return journal_scan(j, "o/", ops_each, &o);
}
