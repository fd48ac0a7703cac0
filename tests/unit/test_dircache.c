/* Unit tests for fs/dircache.c: complete listings, single entries, expiry. */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "../../fs/dircache.h"
#include "testlib.h"

static void nap(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static void put3(dircache *c, const char *key, double ttl)
{
    dircache_list l;
    dircache_list_init(&l);
    CHECK_EQ_INT(dircache_list_add(&l, "b", true, 0), 0);
    CHECK_EQ_INT(dircache_list_add(&l, "a", false, 42), 0);
    CHECK_EQ_INT(dircache_list_add(&l, "c", false, 7), 0);
    dircache_put(c, key, &l, ttl);
    CHECK(l.n == 0 && l.v == NULL); /* taken over */
}

TEST(complete_listing_answers_lookups)
{
    dircache *c = dircache_new();
    bool is_dir = false;
    uint64_t size = 0;
    CHECK_EQ_INT(dircache_lookup(c, "k", "a", &is_dir, &size), -1);
    put3(c, "k", 10);
    CHECK_EQ_INT(dircache_lookup(c, "k", "a", &is_dir, &size), 1);
    CHECK(!is_dir);
    CHECK_EQ_INT(size, 42);
    CHECK_EQ_INT(dircache_lookup(c, "k", "b", &is_dir, &size), 1);
    CHECK(is_dir);
    CHECK_EQ_INT(dircache_lookup(c, "k", "zz", &is_dir, &size), 0); /* known absent */
    CHECK_EQ_INT(dircache_lookup(c, "other", "a", &is_dir, &size), -1);
    dircache_list l;
    CHECK_EQ_INT(dircache_get(c, "k", &l), 0);
    CHECK_EQ_INT(l.n, 3);
    CHECK_EQ_STR(l.v[0].name, "a"); /* sorted */
    CHECK_EQ_STR(l.v[2].name, "c");
    dircache_list_clear(&l);
    dircache_free(c);
}

TEST(expiry)
{
    dircache *c = dircache_new();
    bool is_dir;
    uint64_t size;
    put3(c, "k", 0.05);
    CHECK_EQ_INT(dircache_lookup(c, "k", "a", &is_dir, &size), 1);
    nap(0.1);
    CHECK_EQ_INT(dircache_lookup(c, "k", "a", &is_dir, &size), -1);
    CHECK_EQ_INT(dircache_lookup(c, "k", "zz", &is_dir, &size), -1);
    dircache_list l;
    CHECK_EQ_INT(dircache_get(c, "k", &l), -1);
    CHECK(l.n == 0);
    dircache_free(c);
}

TEST(single_entries_do_not_make_a_listing_complete)
{
    dircache *c = dircache_new();
    bool is_dir;
    uint64_t size;
    dircache_put_one(c, "k", "x.json", false, 99, 10);
    CHECK_EQ_INT(dircache_lookup(c, "k", "x.json", &is_dir, &size), 1);
    CHECK_EQ_INT(size, 99);
    CHECK_EQ_INT(dircache_lookup(c, "k", "y.json", &is_dir, &size), -1); /* unknown, not absent */
    dircache_list l;
    CHECK_EQ_INT(dircache_get(c, "k", &l), -1);
    /* updating an entry of a complete listing keeps it complete */
    put3(c, "k", 10);
    dircache_put_one(c, "k", "a", false, 5, 10);
    CHECK_EQ_INT(dircache_lookup(c, "k", "a", &is_dir, &size), 1);
    CHECK_EQ_INT(size, 5);
    CHECK_EQ_INT(dircache_get(c, "k", &l), 0);
    CHECK_EQ_INT(l.n, 3);
    dircache_list_clear(&l);
    /* a fresh single entry outlives its stale listing */
    put3(c, "s", 0.05);
    dircache_put_one(c, "s", "c", false, 8, 10);
    nap(0.1);
    CHECK_EQ_INT(dircache_lookup(c, "s", "c", &is_dir, &size), 1);
    CHECK_EQ_INT(size, 8);
    CHECK_EQ_INT(dircache_lookup(c, "s", "a", &is_dir, &size), -1);
    dircache_free(c);
}

TEST(invalidate_and_replace)
{
    dircache *c = dircache_new();
    bool is_dir;
    uint64_t size;
    put3(c, "k", 10);
    dircache_invalidate(c, "k");
    CHECK_EQ_INT(dircache_lookup(c, "k", "a", &is_dir, &size), -1);
    put3(c, "k", 10);
    dircache_list l;
    dircache_list_init(&l);
    dircache_list_add(&l, "only", true, 0);
    dircache_put(c, "k", &l, 10);
    CHECK_EQ_INT(dircache_lookup(c, "k", "a", &is_dir, &size), 0);
    CHECK_EQ_INT(dircache_lookup(c, "k", "only", &is_dir, &size), 1);
    /* an empty listing is complete: everything is absent */
    dircache_list_init(&l);
    dircache_put(c, "empty", &l, 10);
    CHECK_EQ_INT(dircache_lookup(c, "empty", "a", &is_dir, &size), 0);
    CHECK_EQ_INT(dircache_get(c, "empty", &l), 0);
    CHECK_EQ_INT(l.n, 0);
    dircache_free(c);
}

TEST(many_keys_are_pruned_not_lost_when_fresh)
{
    dircache *c = dircache_new();
    char key[32];
    for (int i = 0; i < 600; i++) {
        snprintf(key, sizeof key, "k%d", i);
        put3(c, key, 10);
    }
    bool is_dir;
    uint64_t size;
    /* fresh listings are kept even beyond the soft limit */
    CHECK_EQ_INT(dircache_lookup(c, "k0", "a", &is_dir, &size), 1);
    CHECK_EQ_INT(dircache_lookup(c, "k599", "c", &is_dir, &size), 1);
    dircache_free(c);
}

TEST(stale_listing_kept_for_errors)
{
    dircache *c = dircache_new();
    bool is_dir = false;
    uint64_t size = 0;
    dircache_list l;
    /* Nothing ever listed: nothing stale either. */
    CHECK_EQ_INT(dircache_lookup_stale(c, "k", "a", &is_dir, &size), -1);
    CHECK_EQ_INT(dircache_get_stale(c, "k", &l), -1);
    /* Single entries alone are not a listing to fall back on. */
    dircache_put_one(c, "k", "a", false, 1, 10);
    CHECK_EQ_INT(dircache_lookup_stale(c, "k", "a", &is_dir, &size), -1);
    put3(c, "k", 0.05);
    nap(0.1);
    CHECK_EQ_INT(dircache_lookup(c, "k", "a", &is_dir, &size), -1); /* expired */
    CHECK_EQ_INT(dircache_lookup_stale(c, "k", "a", &is_dir, &size), 1);
    CHECK(!is_dir);
    CHECK_EQ_INT(size, 42);
    CHECK_EQ_INT(dircache_lookup_stale(c, "k", "zz", &is_dir, &size), 0);
    CHECK_EQ_INT(dircache_get(c, "k", &l), -1);
    CHECK_EQ_INT(dircache_get_stale(c, "k", &l), 0);
    CHECK_EQ_INT(l.n, 3);
    dircache_list_clear(&l);
    /* Invalidated (after our own change): no longer used. */
    dircache_invalidate(c, "k");
    CHECK_EQ_INT(dircache_lookup_stale(c, "k", "a", &is_dir, &size), -1);
    CHECK_EQ_INT(dircache_get_stale(c, "k", &l), -1);
    dircache_free(c);
}

/* A fetch that answers with "x" and "y", or fails with rc. */
typedef struct fetcher {
    int rc;
    int calls;
} fetcher;

static int fetch_xy(void *ctx, dircache_list *l)
{
    fetcher *f = ctx;
    f->calls++;
    if (f->rc)
        return f->rc;
    dircache_list_add(l, "x", false, 1);
    dircache_list_add(l, "y", true, 0);
    return 0;
}

/* Every listing kind goes through get_or_fetch: fresh, fetched, stale on
 * error (once per ttl), and the error when nothing is known. */
TEST(get_or_fetch_serves_stale_on_error)
{
    dircache *c = dircache_new();
    fetcher f = {0, 0};
    dircache_list l;
    f.rc = -EIO;
    CHECK_EQ_INT(dircache_get_or_fetch(c, "k", 0.2, fetch_xy, &f, &l), -EIO); /* nothing known */
    CHECK_EQ_INT(l.n, 0);
    f.rc = 0;
    CHECK_EQ_INT(dircache_get_or_fetch(c, "k", 0.2, fetch_xy, &f, &l), 0);
    CHECK_EQ_INT(l.n, 2);
    dircache_list_clear(&l);
    CHECK_EQ_INT(dircache_get_or_fetch(c, "k", 0.2, fetch_xy, &f, &l), 0); /* fresh: no fetch */
    CHECK_EQ_INT(f.calls, 2);
    dircache_list_clear(&l);
    nap(0.3);
    f.rc = -EIO; /* the server is gone: the last listing stands */
    CHECK_EQ_INT(dircache_get_or_fetch(c, "k", 0.2, fetch_xy, &f, &l), 0);
    CHECK_EQ_INT(l.n, 2);
    dircache_list_clear(&l);
    CHECK(dircache_failing(c, "k"));
    CHECK_EQ_INT(dircache_get_or_fetch(c, "k", 0.2, fetch_xy, &f, &l), 0); /* no second wait */
    CHECK_EQ_INT(f.calls, 3);
    dircache_list_clear(&l);
    nap(0.3);
    CHECK(!dircache_failing(c, "k"));
    f.rc = -ENOENT; /* gone stands */
    CHECK_EQ_INT(dircache_get_or_fetch(c, "k", 0.2, fetch_xy, &f, &l), -ENOENT);
    dircache_free(c);
}

/* Lookups: a name of the last listing resolves without fetching. */
TEST(lookup_or_fetch_stale_while_revalidate)
{
    dircache *c = dircache_new();
    fetcher f = {0, 0};
    bool is_dir;
    uint64_t size;
    CHECK_EQ_INT(dircache_lookup_or_fetch(c, "k", "x", 0.1, fetch_xy, &f, &is_dir, &size), 1);
    CHECK_EQ_INT(f.calls, 1);
    nap(0.2);
    f.rc = -EIO;
    CHECK_EQ_INT(dircache_lookup_or_fetch(c, "k", "y", 0.1, fetch_xy, &f, &is_dir, &size), 1);
    CHECK(is_dir);
    CHECK_EQ_INT(f.calls, 1); /* answered from the last listing */
    /* an unknown name asks; the failure leaves "absent" from the stale listing */
    CHECK_EQ_INT(dircache_lookup_or_fetch(c, "k", "z", 0.1, fetch_xy, &f, &is_dir, &size), 0);
    CHECK_EQ_INT(f.calls, 2);
    CHECK_EQ_INT(dircache_lookup_or_fetch(c, "new", "x", 0.1, fetch_xy, &f, &is_dir, &size), -EIO);
    dircache_free(c);
}

int main(void)
{
    RUN(complete_listing_answers_lookups);
    RUN(expiry);
    RUN(single_entries_do_not_make_a_listing_complete);
    RUN(invalidate_and_replace);
    RUN(many_keys_are_pruned_not_lost_when_fresh);
    RUN(stale_listing_kept_for_errors);
    RUN(get_or_fetch_serves_stale_on_error);
    RUN(lookup_or_fetch_stale_while_revalidate);
    return test_done();
}
