/* opsnap: snapshots of operation file contents (see opsnap.h). */
#include "opsnap.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

typedef struct slot {
    char *key; /* "DS\nFILE" */
    char *data;
    size_t len;
    double expires; /* CLOCK_MONOTONIC seconds */
} slot;

struct opsnap {
    pthread_mutex_t lock;
    slot slots[OPSNAP_SLOTS];
};

opsnap *opsnap_new(void)
{
    opsnap *s = calloc(1, sizeof *s);
    if (s)
        pthread_mutex_init(&s->lock, NULL);
    return s;
}

static void slot_clear(slot *e)
{
    free(e->key);
    free(e->data);
    memset(e, 0, sizeof *e);
}

void opsnap_free(opsnap *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < OPSNAP_SLOTS; i++)
        slot_clear(&s->slots[i]);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static slot *slot_of(opsnap *s, const char *key)
{
    return &s->slots[util_fnv1a_str(UTIL_FNV1A_INIT, key) % OPSNAP_SLOTS];
}

void opsnap_put(opsnap *s, const char *ds_id, const char *file, const char *data, size_t len,
                double ttl_s)
{
    char *key = util_asprintf("%s\n%s", ds_id, file);
    char *copy = malloc(len ? len : 1);
    if (!key || !copy) {
        free(key);
        free(copy);
        return; /* no snapshot: the next open fetches fresh */
    }
    memcpy(copy, data, len);
    pthread_mutex_lock(&s->lock);
    slot *e = slot_of(s, key);
    slot_clear(e);
    *e = (slot){key, copy, len, util_now_s() + ttl_s};
    pthread_mutex_unlock(&s->lock);
}

int opsnap_get(opsnap *s, const char *ds_id, const char *file, char **data, size_t *len)
{
    char *key = util_asprintf("%s\n%s", ds_id, file);
    if (!key)
        return -ENOMEM;
    int rc = -ENOENT;
    pthread_mutex_lock(&s->lock);
    slot *e = slot_of(s, key);
    if (e->key && strcmp(e->key, key) == 0 && e->expires >= util_now_s()) {
        char *copy = malloc(e->len + 1);
        if (copy) {
            memcpy(copy, e->data, e->len);
            copy[e->len] = '\0';
            *data = copy;
            *len = e->len;
            rc = 0;
        } else {
            rc = -ENOMEM;
        }
    }
    pthread_mutex_unlock(&s->lock);
    free(key);
    return rc;
}
