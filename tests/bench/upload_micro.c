/* upload_micro: the client side of an upload alone (gcs_upload_fd), without
 * FUSE, spool or journal, to compare client versions and against
 * `curl --parallel`. Uploads every regular file of DIR to gs://BUCKET/PREFIX/
 * with THREADS threads sharing one http client, as the uploader does, and
 * prints wall time, throughput and the CPU time of this process.
 *
 * Build against a client library (an optimised build dir):
 *   cc -O2 -D_GNU_SOURCE -Iclient tests/bench/upload_micro.c \
 *      BUILD/client/libdicomfs_client.a \
 *      $(pkg-config --libs libcurl libcjson libcrypto zlib) -lpthread -o upload_micro
 * Run against dicomfs-emulator --no-auth:
 *   ./upload_micro http://127.0.0.1:PORT staging DIR 16 run1
 * UPLOAD_MICRO_THRESHOLD_MIB=N sets the resumable threshold and chunk (as
 * fs/fuse_ops.c does with 1024); default: the client's.
 */
#include "gcs.h"
#include "http.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct job {
    gcs_client *gcs;
    const char *bucket, *dir, *prefix;
    char **names;
    int n;
    atomic_int next, failed;
    atomic_ullong bytes;
} job;

static void *worker(void *ud)
{
    job *j = ud;
    for (int i; (i = atomic_fetch_add(&j->next, 1)) < j->n;) {
        char path[4096], obj[1024];
        snprintf(path, sizeof path, "%s/%s", j->dir, j->names[i]);
        snprintf(obj, sizeof obj, "%s/%s", j->prefix, j->names[i]);
        int fd = open(path, O_RDONLY);
        struct stat sb;
        if (fd < 0 || fstat(fd, &sb) != 0) {
            perror(path);
            j->failed++;
            if (fd >= 0)
                close(fd);
            continue;
        }
        cerr_detail err;
        int rc = gcs_upload_fd(j->gcs, j->bucket, obj, fd, (uint64_t)sb.st_size,
                               "application/dicom", NULL, &err);
        close(fd);
        if (rc != CERR_OK) {
            fprintf(stderr, "%s: %s\n", obj, err.message);
            j->failed++;
        } else {
            j->bytes += (unsigned long long)sb.st_size;
        }
    }
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double tv_s(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s URL BUCKET DIR THREADS PREFIX\n", argv[0]);
        return 2;
    }
    job j = {.bucket = argv[2], .dir = argv[3], .prefix = argv[5]};
    int threads = atoi(argv[4]);
    DIR *d = opendir(j.dir);
    if (!d || threads < 1) {
        perror(j.dir);
        return 2;
    }
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        j.names = realloc(j.names, sizeof(char *) * (size_t)(j.n + 1));
        j.names[j.n++] = strdup(e->d_name);
    }
    closedir(d);
    http_options o;
    http_options_init(&o);
    http_client *h = http_client_new(&o);
    j.gcs = gcs_client_new(h, argv[1]);
    const char *thr = getenv("UPLOAD_MICRO_THRESHOLD_MIB");
    if (thr && atoi(thr) > 0)
        gcs_client_set_resumable_threshold(j.gcs, (uint64_t)atoi(thr) << 20,
                                           (uint64_t)atoi(thr) << 20);
    pthread_t *th = calloc((size_t)threads, sizeof *th);
    double t0 = now_s();
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, worker, &j);
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    double wall = now_s() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double mib = (double)j.bytes / 1048576.0;
    printf("files %d failed %d MiB %.1f wall_s %.3f files_per_s %.1f MiB_per_s %.1f user_s %.3f "
           "sys_s %.3f\n",
           j.n, (int)j.failed, mib, wall, j.n / wall, mib / wall, tv_s(ru.ru_utime),
           tv_s(ru.ru_stime));
    gcs_client_free(j.gcs);
    http_client_free(h);
    for (int i = 0; i < j.n; i++)
        free(j.names[i]);
    free(j.names);
    free(th);
    return j.failed ? 1 : 0;
}
