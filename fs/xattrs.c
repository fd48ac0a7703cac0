/* xattrs: user.* attributes of import/ files (see xattrs.h). */
#include "xattrs.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

typedef struct attr {
    char *store, *path, *name;
    char *value;
    size_t size;
    struct attr *next;
} attr;

struct xattrs {
    pthread_mutex_t lock;
    attr *head;
};

xattrs *xattrs_new(void)
{
    xattrs *x = calloc(1, sizeof *x);
    if (x)
        pthread_mutex_init(&x->lock, NULL);
    return x;
}

static void attr_free(attr *a)
{
    free(a->store);
    free(a->path);
    free(a->name);
    free(a->value);
    free(a);
}

void xattrs_free(xattrs *x)
{
    if (!x)
        return;
    for (attr *a = x->head, *next; a; a = next) {
        next = a->next;
        attr_free(a);
    }
    pthread_mutex_destroy(&x->lock);
    free(x);
}

static bool of_file(const attr *a, const char *store, const char *path)
{
    return strcmp(a->store, store) == 0 && strcmp(a->path, path) == 0;
}

static attr **find(xattrs *x, const char *store, const char *path, const char *name)
{
    for (attr **pp = &x->head; *pp; pp = &(*pp)->next)
        if (of_file(*pp, store, path) && strcmp((*pp)->name, name) == 0)
            return pp;
    return NULL;
}

static int check_name(const char *name, bool writing)
{
    if (strncmp(name, "user.", 5) != 0)
        return -ENOTSUP;
    if (writing && strncmp(name, "user.dicomfs.", 13) == 0)
        return -EPERM;
    return 0;
}

static size_t file_bytes(xattrs *x, const char *store, const char *path)
{
    size_t n = 0;
    for (attr *a = x->head; a; a = a->next)
        if (of_file(a, store, path))
            n += strlen(a->name) + 1 + a->size;
    return n;
}

int xattrs_set(xattrs *x, const char *store, const char *path, const char *name, const char *value,
               size_t size, int flags)
{
    int rc = check_name(name, true);
    if (rc)
        return rc;
    if (size > XATTRS_MAX_VALUE)
        return -E2BIG;
    char *v = malloc(size ? size : 1);
    if (!v)
        return -ENOMEM;
    memcpy(v, value, size);
    pthread_mutex_lock(&x->lock);
    attr **pp = find(x, store, path, name);
    if (pp && (flags & XATTR_CREATE))
        rc = -EEXIST;
    else if (!pp && (flags & XATTR_REPLACE))
        rc = -ENODATA;
    else if (file_bytes(x, store, path) + strlen(name) + 1 + size > XATTRS_MAX_FILE)
        rc = -ENOSPC;
    else if (pp) {
        free((*pp)->value);
        (*pp)->value = v;
        (*pp)->size = size;
        v = NULL;
    } else {
        attr *a = calloc(1, sizeof *a);
        if (a) {
            a->store = strdup(store);
            a->path = strdup(path);
            a->name = strdup(name);
        }
        if (!a || !a->store || !a->path || !a->name) {
            if (a)
                attr_free(a);
            rc = -ENOMEM;
        } else {
            a->value = v;
            a->size = size;
            v = NULL;
            a->next = x->head;
            x->head = a;
        }
    }
    pthread_mutex_unlock(&x->lock);
    free(v);
    return rc;
}

int xattrs_get(xattrs *x, const char *store, const char *path, const char *name, char *value,
               size_t size)
{
    if (strncmp(name, "user.", 5) != 0)
        return -ENODATA;
    pthread_mutex_lock(&x->lock);
    attr **pp = find(x, store, path, name);
    int rc = !pp ? -ENODATA : size == 0 ? (int)(*pp)->size : size < (*pp)->size ? -ERANGE : 0;
    if (pp && size >= (*pp)->size && size > 0) {
        memcpy(value, (*pp)->value, (*pp)->size);
        rc = (int)(*pp)->size;
    }
    pthread_mutex_unlock(&x->lock);
    return rc;
}

int xattrs_list(xattrs *x, const char *store, const char *path, char *list, size_t size)
{
    size_t need = 0;
    pthread_mutex_lock(&x->lock);
    for (attr *a = x->head; a; a = a->next)
        if (of_file(a, store, path)) {
            size_t n = strlen(a->name) + 1;
            if (size && need + n <= size)
                memcpy(list + need, a->name, n);
            need += n;
        }
    pthread_mutex_unlock(&x->lock);
    if (size && need > size)
        return -ERANGE;
    return (int)need;
}

int xattrs_remove(xattrs *x, const char *store, const char *path, const char *name)
{
    int rc = check_name(name, true);
    if (rc)
        return rc;
    pthread_mutex_lock(&x->lock);
    attr **pp = find(x, store, path, name);
    if (pp) {
        attr *a = *pp;
        *pp = a->next;
        attr_free(a);
    } else {
        rc = -ENODATA;
    }
    pthread_mutex_unlock(&x->lock);
    return rc;
}

/* path itself or below it (a directory). */
static const char *under(const char *p, const char *dir)
{
    size_t n = strlen(dir);
    if (strncmp(p, dir, n) != 0 || (p[n] != '\0' && p[n] != '/'))
        return NULL;
    return p + n;
}

void xattrs_rename(xattrs *x, const char *store, const char *from, const char *to)
{
    pthread_mutex_lock(&x->lock);
    /* what the target had goes, as the target itself does */
    for (attr **pp = &x->head; *pp;) {
        if (strcmp((*pp)->store, store) == 0 && under((*pp)->path, to)) {
            attr *a = *pp;
            *pp = a->next;
            attr_free(a);
        } else {
            pp = &(*pp)->next;
        }
    }
    for (attr *a = x->head; a; a = a->next) {
        const char *tail = strcmp(a->store, store) == 0 ? under(a->path, from) : NULL;
        if (!tail)
            continue;
        char *np = malloc(strlen(to) + strlen(tail) + 1);
        if (np) {
            sprintf(np, "%s%s", to, tail);
            free(a->path);
            a->path = np;
        }
    }
    pthread_mutex_unlock(&x->lock);
}

void xattrs_drop(xattrs *x, const char *store, const char *path)
{
    pthread_mutex_lock(&x->lock);
    for (attr **pp = &x->head; *pp;) {
        if (strcmp((*pp)->store, store) == 0 && under((*pp)->path, path)) {
            attr *a = *pp;
            *pp = a->next;
            attr_free(a);
        } else {
            pp = &(*pp)->next;
        }
    }
    pthread_mutex_unlock(&x->lock);
}
