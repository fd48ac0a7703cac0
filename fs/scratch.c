/* scratch: private temporary files in export/ (see scratch.h). */
#include "scratch.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "export.h"
#include "log.h"
#include "util.h"

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n > k && strcmp(s + n - k, suffix) == 0;
}

/* vim probes a directory with 4913, then adds 123 while the name exists. */
static bool vim_probe(const char *name)
{
    char *end;
    if (!*name || strspn(name, "0123456789") != strlen(name) || strlen(name) > 9)
        return false;
    long n = strtol(name, &end, 10);
    return n >= 4913 && (n - 4913) % 123 == 0;
}

bool scratch_is_name(const char *name)
{
    static const char *const suffixes[] = {"~", ".swp", ".swo", ".swx", ".tmp"};
    if (name[0] == '.' || name[0] == '#')
        return true;
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++)
        if (ends_with(name, suffixes[i]))
            return true;
    if (strlen(name) == 9 && strncmp(name, "sed", 3) == 0 &&
        strspn(name + 3, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") == 6)
        return true;
    return vim_probe(name);
}

static char *dir_of(fs_ctx *x, const tree_path *tp)
{
    return util_asprintf("%s/exports/%s/%s/%s/.scratch", x->opt->cache_dir, tp->dataset, tp->store,
                         tp->format->dir);
}

static char *path_of(fs_ctx *x, const tree_path *tp)
{
    return util_asprintf("%s/exports/%s/%s/%s/.scratch/%s", x->opt->cache_dir, tp->dataset,
                         tp->store, tp->format->dir, tp->name);
}

int scratch_getattr(fs_ctx *x, const tree_path *tp, struct stat *st)
{
    char *p = path_of(x, tp);
    if (!p)
        return -ENOMEM;
    struct stat lst;
    int rc = stat(p, &lst) == 0 ? 0 : -errno;
    free(p);
    if (rc)
        return rc;
    fs_stat_file(x, st, 0644, lst.st_size);
    st->st_atim = lst.st_atim;
    st->st_mtim = lst.st_mtim;
    st->st_ctim = lst.st_ctim;
    return 0;
}

int scratch_open(fs_ctx *x, const tree_path *tp, int flags, int *fd)
{
    char *p = path_of(x, tp);
    char *d = dir_of(x, tp);
    int rc = p && d ? 0 : -ENOMEM;
    if (rc == 0 && (flags & O_CREAT))
        rc = util_mkdirs(d, 0700);
    if (rc == 0) {
        int f = open(p, (flags & ~(O_APPEND | O_DIRECT)) | O_CLOEXEC, 0600);
        if (f < 0)
            rc = -errno;
        else
            *fd = f;
    }
    if (rc && rc != -ENOENT && rc != -EEXIST)
        log_error("%s/%s/export/%s: scratch file %s: %s", tp->dataset, tp->store, tp->name,
                  p ? p : "", strerror(-rc));
    free(p);
    free(d);
    return rc;
}

int scratch_truncate(fs_ctx *x, const tree_path *tp, off_t size)
{
    char *p = path_of(x, tp);
    int rc = !p ? -ENOMEM : truncate(p, size) == 0 ? 0 : -errno;
    free(p);
    return rc;
}

int scratch_utimens(fs_ctx *x, const tree_path *tp, const struct timespec tv[2])
{
    char *p = path_of(x, tp);
    int rc = !p ? -ENOMEM : utimensat(AT_FDCWD, p, tv, 0) == 0 ? 0 : -errno;
    free(p);
    return rc;
}

int scratch_unlink(fs_ctx *x, const tree_path *tp)
{
    char *p = path_of(x, tp);
    int rc = !p ? -ENOMEM : unlink(p) == 0 ? 0 : -errno;
    free(p);
    return rc;
}

int scratch_readdir(fs_ctx *x, const tree_path *tp, scratch_fill_fn fill, void *buf)
{
    char *d = dir_of(x, tp);
    if (!d)
        return -ENOMEM;
    DIR *dir = opendir(d);
    free(d);
    if (!dir)
        return 0;
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (!scratch_is_name(de->d_name) || strcmp(de->d_name, ".") == 0 ||
            strcmp(de->d_name, "..") == 0)
            continue;
        tree_path t = *tp;
        snprintf(t.name, sizeof t.name, "%s", de->d_name);
        struct stat st;
        if (scratch_getattr(x, &t, &st) == 0 && fill(buf, de->d_name, &st))
            break;
    }
    closedir(dir);
    return 0;
}

int scratch_read_all(fs_ctx *x, const tree_path *tp, char **data, size_t *len)
{
    int fd = -1;
    int rc = scratch_open(x, tp, O_RDONLY, &fd);
    if (rc)
        return rc;
    struct stat st;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size > EXPORT_MAX_FILTER) {
        close(fd);
        return -EFBIG;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    size_t got = buf ? util_pread_full(fd, buf, (size_t)st.st_size, 0) : 0;
    close(fd);
    if (!buf)
        return -ENOMEM;
    buf[got] = '\0';
    *data = buf;
    *len = got;
    return 0;
}

int scratch_write_all(fs_ctx *x, const tree_path *tp, const char *data, size_t len)
{
    int fd = -1;
    int rc = scratch_open(x, tp, O_WRONLY | O_CREAT | O_TRUNC, &fd);
    if (rc)
        return rc;
    size_t done = 0;
    while (rc == 0 && done < len) {
        ssize_t n = write(fd, data + done, len - done);
        if (n < 0 && errno != EINTR)
            rc = -errno;
        else if (n > 0)
            done += (size_t)n;
    }
    close(fd);
    return rc;
}

int scratch_rename(fs_ctx *x, const tree_path *from, const tree_path *to)
{
    char *a = path_of(x, from), *b = path_of(x, to);
    int rc = !a || !b ? -ENOMEM : rename(a, b) == 0 ? 0 : -errno;
    free(a);
    free(b);
    return rc;
}
