/* wait: `dicomfs wait PATH [--timeout S]`.
 *
 * Finds the store directory of PATH (PATH itself or the nearest ancestor
 * holding `status`, `import/` and `operations/`), reads its status file
 * every 0.05 s and shows progress: a bar redrawn in place on a terminal,
 * a plain line every 5 s otherwise, with the upload rate and, while bytes
 * remain to upload, the time left at that rate; at the end, how many files
 * were present (the store already held their instance: not uploaded).
 * Exit status: 0 all imported or present, 1 some files failed or were
 * refused (their "failed: PATH: REASON" and "rejected: PATH: REASON" lines
 * are printed), 2 usage error or PATH not in a dicomfs store, 3 timeout.
 */
#include "wait.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "status.h"
#include "util.h"

enum { WAIT_OK = 0, WAIT_FAILED = 1, WAIT_USAGE = 2, WAIT_TIMEOUT = 3 };

static void usage(FILE *f)
{
    fprintf(
        f, "usage: dicomfs wait PATH [--timeout SECONDS]\n"
           "  Waits until every file copied into the store's import/ directory is imported.\n"
           "  PATH is a mounted store directory or anything below it.\n"
           "  Files whose instance the store already held are counted as present.\n"
           "  Exit status: 0 all imported or present, 1 some files failed, 2 usage error or not a\n"
           "  dicomfs store, 3 timeout.\n");
}

static bool is_type(const char *dir, const char *name, mode_t type)
{
    char p[PATH_MAX];
    struct stat st;
    if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, name) >= sizeof p)
        return false;
    return stat(p, &st) == 0 && (st.st_mode & S_IFMT) == type;
}

/* Walks up from path to the store directory; writes it into out. Returns 0,
 * 1 when PATH is not inside a store, or a negative errno. */
static int find_store(const char *path, char *out, size_t outlen)
{
    char cur[PATH_MAX];
    if (!realpath(path, cur))
        return -errno;
    struct stat st;
    if (stat(cur, &st) == 0 && !S_ISDIR(st.st_mode)) {
        char *slash = strrchr(cur, '/');
        if (slash && slash != cur)
            *slash = '\0';
    }
    for (;;) {
        if (is_type(cur, "status", S_IFREG) && is_type(cur, "import", S_IFDIR) &&
            is_type(cur, "operations", S_IFDIR)) {
            if (strlen(cur) >= outlen)
                return -ENAMETOOLONG;
            strcpy(out, cur);
            return 0;
        }
        char *slash = strrchr(cur, '/');
        if (!slash || (slash == cur && cur[1] == '\0'))
            return 1; /* reached / without finding a store */
        if (slash == cur)
            cur[1] = '\0';
        else
            *slash = '\0';
    }
}

/* Reads the whole status file (it is small; its stat size may be 0). */
static char *read_status(const char *store)
{
    char p[PATH_MAX + 16];
    snprintf(p, sizeof p, "%s/status", store);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        if (len == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            free(buf);
            buf = NULL;
            break;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    if (buf)
        buf[len] = '\0';
    return buf;
}

/* Prints the "failed: PATH: REASON" lines (not the "failed: N" counter)
 * and the "rejected: PATH: REASON" lines; returns how many rejected ones. */
static size_t print_failures(const char *text, bool print)
{
    size_t rejected = 0;
    for (const char *line = text; line && *line;) {
        const char *eol = strchr(line, '\n');
        size_t ll = eol ? (size_t)(eol - line) : strlen(line);
        bool failed =
            ll > 8 && strncmp(line, "failed: ", 8) == 0 && strspn(line + 8, "0123456789") < ll - 8;
        bool rej = ll > 10 && strncmp(line, "rejected: ", 10) == 0;
        rejected += rej;
        if (print && (failed || rej))
            printf("%.*s\n", (int)ll, line);
        line = eol ? eol + 1 : NULL;
    }
    return rejected;
}

/* "12 s", "3 min", "2 h" left at rate bytes/s, or "" when unknown. */
static void time_left(const import_counts *c, double rate, char *buf, size_t len)
{
    uint64_t left = c->bytes_spooled > c->bytes_uploaded ? c->bytes_spooled - c->bytes_uploaded : 0;
    buf[0] = '\0';
    if (rate <= 0 || left == 0)
        return;
    double s = (double)left / rate;
    if (s < 120)
        snprintf(buf, len, ", %.0f s left", s);
    else if (s < 7200)
        snprintf(buf, len, ", %.0f min left", s / 60);
    else
        snprintf(buf, len, ", %.1f h left", s / 3600);
}

/* The status's "paused: CAUSE: FIX" line goes to stderr once per kind of
 * cause (the part before the first '(' or ':' after "paused: "), so a
 * person waiting sees why nothing moves and what to do. */
static void show_pause(bool tty, const char *text, char *shown, size_t shown_len)
{
    const char *line = strstr(text, "\npaused: ");
    if (!line) {
        shown[0] = '\0';
        return;
    }
    line++;
    size_t ll = strcspn(line, "\n");
    size_t kind = 8 + strcspn(line + 8, "(:\n");
    if (kind < shown_len && strlen(shown) == kind && strncmp(shown, line, kind) == 0)
        return;
    snprintf(shown, shown_len, "%.*s", (int)(kind < shown_len ? kind : shown_len - 1), line);
    fprintf(stderr, "%sdicomfs wait: %.*s\n", tty ? "\n" : "", (int)ll, line);
}

static void draw(bool tty, const import_counts *c, double rate, bool final)
{
    uint64_t pending = c->spooled + c->uploading + c->uploaded + c->importing;
    uint64_t total = pending + c->imported + c->failed + c->present;
    uint64_t done = c->imported + c->failed + c->present;
    char left[40];
    time_left(c, final ? 0 : rate, left, sizeof left);
    if (tty) {
        char bar[31];
        int width = 30;
        int fill = total ? (int)(done * (uint64_t)width / total) : width;
        for (int i = 0; i < width; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[width] = '\0';
        printf("\r[%s] %" PRIu64 "/%" PRIu64 " imported, %" PRIu64 " failed, %.1f MB/s%s\033[K%s",
               bar, c->imported, total, c->failed, rate / 1e6, left, final ? "\n" : "");
    } else {
        printf("%" PRIu64 "/%" PRIu64 " imported, %" PRIu64 " failed, %" PRIu64
               " pending (spooled %" PRIu64 ", uploading %" PRIu64 ", uploaded %" PRIu64
               ", importing %" PRIu64 "), %.1f MB/s%s\n",
               c->imported, total, c->failed, pending, c->spooled, c->uploading, c->uploaded,
               c->importing, rate / 1e6, left);
    }
    if (final && c->present)
        printf("%" PRIu64 " present (the store keeps its copy)\n", c->present);
    fflush(stdout);
}

int wait_main(int argc, char **argv)
{
    int i = 1;
    if (i < argc && strcmp(argv[i], "wait") == 0 && argc > 2)
        i++; /* called with the full command line */
    const char *path = NULL;
    double timeout = -1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return WAIT_OK;
        }
        if (strcmp(a, "--timeout") == 0 || strcmp(a, "-t") == 0) {
            if (++i >= argc) {
                fprintf(stderr, "dicomfs wait: %s needs a number of seconds\n", a);
                return WAIT_USAGE;
            }
            val = argv[i];
        } else if (strncmp(a, "--timeout=", 10) == 0) {
            val = a + 10;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "dicomfs wait: unknown option %s\n", a);
            usage(stderr);
            return WAIT_USAGE;
        } else if (path) {
            fprintf(stderr, "dicomfs wait: one PATH only\n");
            return WAIT_USAGE;
        } else {
            path = a;
        }
        if (val) {
            char *end;
            errno = 0;
            timeout = strtod(val, &end);
            if (errno || end == val || *end || timeout < 0) {
                fprintf(stderr, "dicomfs wait: bad timeout \"%s\"\n", val);
                return WAIT_USAGE;
            }
        }
    }
    if (!path) {
        usage(stderr);
        return WAIT_USAGE;
    }
    char store[PATH_MAX];
    int rc = find_store(path, store, sizeof store);
    if (rc != 0) {
        fprintf(stderr, "dicomfs wait: %s: %s\n", path,
                rc == 1 ? "not inside a dicomfs store directory (no status, import/ and "
                          "operations/ found above it)"
                        : strerror(-rc));
        return WAIT_USAGE;
    }
    bool tty = isatty(STDOUT_FILENO);
    double start = util_now_s(), last_print = 0, last_t = start, rate = 0;
    uint64_t last_bytes = 0;
    bool first = true;
    char paused[256] = "";
    for (;;) {
        char *text = read_status(store);
        import_counts c;
        if (!text || status_parse(text, &c) < 0) {
            fprintf(stderr, "dicomfs wait: %s/status: %s\n", store,
                    text ? "not a dicomfs status file" : strerror(errno));
            free(text);
            return WAIT_USAGE;
        }
        double t = util_now_s();
        if (!first && t > last_t && c.bytes_uploaded >= last_bytes)
            rate = 0.7 * rate + 0.3 * (double)(c.bytes_uploaded - last_bytes) / (t - last_t);
        last_t = t;
        last_bytes = c.bytes_uploaded;
        first = false;
        uint64_t pending = c.spooled + c.uploading + c.uploaded + c.importing;
        if (pending == 0) {
            draw(tty, &c, rate, true);
            size_t rejected = print_failures(text, c.failed || strstr(text, "\nrejected: "));
            free(text);
            return c.failed || rejected ? WAIT_FAILED : WAIT_OK;
        }
        show_pause(tty, text, paused, sizeof paused);
        if (tty || t - last_print >= 5) {
            draw(tty, &c, rate, false);
            last_print = t;
        }
        free(text);
        if (timeout >= 0 && t - start >= timeout) {
            if (tty)
                printf("\n");
            fprintf(stderr,
                    "dicomfs wait: timed out after %.0f s with %" PRIu64 " file(s) pending\n",
                    timeout, pending);
            return WAIT_TIMEOUT;
        }
        struct timespec ts = {
            0, 50 * 1000000L}; /* as often as an operation poll: a cheap local read */
        nanosleep(&ts, NULL);
    }
}
