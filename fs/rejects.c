/* rejects: refused import/ files kept visible (see rejects.h). */
#include "rejects.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct rej {
    char *store, *path, *reason;
    struct rej *next; /* newest first */
} rej;

struct rejects {
    pthread_mutex_t lock;
    rej *head;
    size_t n;
};

rejects *rejects_new(void)
{
    rejects *r = calloc(1, sizeof *r);
    if (r)
        pthread_mutex_init(&r->lock, NULL);
    return r;
}

static void rej_free(rej *e)
{
    free(e->store);
    free(e->path);
    free(e->reason);
    free(e);
}

void rejects_free(rejects *r)
{
    if (!r)
        return;
    for (rej *e = r->head, *next; e; e = next) {
        next = e->next;
        rej_free(e);
    }
    pthread_mutex_destroy(&r->lock);
    free(r);
}

/* Unlinks the entry for (store, path) (lock held); true when there was one. */
static bool drop(rejects *r, const char *store, const char *path)
{
    for (rej **pp = &r->head; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->store, store) == 0 && strcmp((*pp)->path, path) == 0) {
            rej *e = *pp;
            *pp = e->next;
            rej_free(e);
            r->n--;
            return true;
        }
    return false;
}

void rejects_add(rejects *r, const char *store, const char *path, const char *reason)
{
    if (!r)
        return;
    rej *e = calloc(1, sizeof *e);
    if (e) {
        e->store = strdup(store);
        e->path = strdup(path);
        e->reason = strdup(reason ? reason : "refused");
    }
    if (!e || !e->store || !e->path || !e->reason) {
        if (e)
            rej_free(e);
        return;
    }
    pthread_mutex_lock(&r->lock);
    drop(r, store, path);
    e->next = r->head;
    r->head = e;
    if (++r->n > REJECTS_MAX) { /* the oldest is last */
        rej **pp = &r->head;
        while ((*pp)->next)
            pp = &(*pp)->next;
        rej_free(*pp);
        *pp = NULL;
        r->n--;
    }
    pthread_mutex_unlock(&r->lock);
}

bool rejects_remove(rejects *r, const char *store, const char *path)
{
    if (!r)
        return false;
    pthread_mutex_lock(&r->lock);
    bool had = drop(r, store, path);
    pthread_mutex_unlock(&r->lock);
    return had;
}

bool rejects_has(rejects *r, const char *store, const char *path)
{
    if (!r)
        return false;
    bool has = false;
    pthread_mutex_lock(&r->lock);
    for (rej *e = r->head; e && !has; e = e->next)
        has = strcmp(e->store, store) == 0 && strcmp(e->path, path) == 0;
    pthread_mutex_unlock(&r->lock);
    return has;
}

void rejects_list_dir(rejects *r, const char *store, const char *dir, rejects_fill_fn fill,
                      void *buf)
{
    if (!r)
        return;
    size_t dl = strlen(dir);
    pthread_mutex_lock(&r->lock);
    for (rej *e = r->head; e; e = e->next) {
        if (strcmp(e->store, store) != 0)
            continue;
        const char *name = e->path;
        if (dl) {
            if (strncmp(name, dir, dl) != 0 || name[dl] != '/')
                continue;
            name += dl + 1;
        }
        if (!strchr(name, '/') && fill(buf, name))
            break;
    }
    pthread_mutex_unlock(&r->lock);
}

static void put_escaped(FILE *f, const char *s)
{
    for (; *s; s++)
        fputs(*s == '\n' ? "\\n" : *s == '\r' ? "\\r" : *s == '\\' ? "\\\\" : (char[]){*s, 0}, f);
}

size_t rejects_status(rejects *r, const char *store, FILE *out)
{
    if (!r)
        return 0;
    size_t n = 0;
    pthread_mutex_lock(&r->lock);
    for (rej *e = r->head; e; e = e->next) {
        if (strcmp(e->store, store) != 0)
            continue;
        fputs("rejected: import/", out);
        put_escaped(out, e->path);
        fputs(": ", out);
        put_escaped(out, e->reason);
        fputc('\n', out);
        n++;
    }
    pthread_mutex_unlock(&r->lock);
    return n;
}

void rejects_on_reject(void *ctx, const char *store, const char *path, const char *reason)
{
    rejects_add(ctx, store, path, reason);
}
