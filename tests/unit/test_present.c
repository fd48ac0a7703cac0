/* Unit tests for fs/present.c: the per-study cache of the SOP Instance UIDs
 * a store holds (lookups, concurrent fetch marking, forgetting a store while
 * a fetch runs, failed fetches). */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "../../fs/present.h"
#include "testlib.h"

#define ST1 "projects/p/locations/l/datasets/d/dicomStores/a"
#define ST2 "projects/p/locations/l/datasets/d/dicomStores/b"

static char **uids(int n, const char *prefix)
{
    char **v = calloc((size_t)n, sizeof *v);
    for (int i = 0; i < n; i++) {
        v[i] = malloc(64);
        snprintf(v[i], 64, "%s.%d", prefix, n - i); /* unsorted on purpose */
    }
    return v;
}

TEST(unknown_then_known)
{
    present_cache *pc = present_new();
    CHECK(pc != NULL);
    CHECK_EQ_INT(present_lookup(pc, ST1, "1.2", "1.2.3.1"), PRESENT_UNKNOWN);
    uint64_t t = present_begin(pc, ST1, "1.2");
    CHECK_EQ_INT(present_lookup(pc, ST1, "1.2", "1.2.3.1"), PRESENT_FETCHING);
    present_end(pc, ST1, "1.2", t, 1, uids(100, "1.2.3"), 100);
    CHECK_EQ_INT(present_lookup(pc, ST1, "1.2", "1.2.3.1"), PRESENT_YES);
    CHECK_EQ_INT(present_lookup(pc, ST1, "1.2", "1.2.3.100"), PRESENT_YES);
    CHECK_EQ_INT(present_lookup(pc, ST1, "1.2", "1.2.3.101"), PRESENT_NO);
    /* another store, another study: unknown */
    CHECK_EQ_INT(present_lookup(pc, ST2, "1.2", "1.2.3.1"), PRESENT_UNKNOWN);
    CHECK_EQ_INT(present_lookup(pc, ST1, "1.3", "1.2.3.1"), PRESENT_UNKNOWN);
    present_free(pc);
}

TEST(empty_study_and_failed_fetch)
{
    present_cache *pc = present_new();
    uint64_t t = present_begin(pc, ST1, "9.9");
    present_end(pc, ST1, "9.9", t, 1, NULL, 0);
    CHECK_EQ_INT(present_lookup(pc, ST1, "9.9", "9.9.1"), PRESENT_NO);
    t = present_begin(pc, ST1, "8.8");
    present_end(pc, ST1, "8.8", t, 0, uids(3, "8.8"), 3); /* failed: nothing learned */
    CHECK_EQ_INT(present_lookup(pc, ST1, "8.8", "8.8.1"), PRESENT_UNKNOWN);
    present_free(pc);
}

TEST(forget_store_drops_its_studies_and_running_fetches)
{
    present_cache *pc = present_new();
    uint64_t t1 = present_begin(pc, ST1, "1.2");
    present_end(pc, ST1, "1.2", t1, 1, uids(5, "1.2.3"), 5);
    uint64_t t2 = present_begin(pc, ST2, "1.2");
    present_end(pc, ST2, "1.2", t2, 1, uids(5, "1.2.3"), 5);
    uint64_t t3 = present_begin(pc, ST1, "4.4"); /* running while forgotten */
    present_forget_store(pc, ST1);
    CHECK_EQ_INT(present_lookup(pc, ST1, "1.2", "1.2.3.1"), PRESENT_UNKNOWN);
    CHECK_EQ_INT(present_lookup(pc, ST2, "1.2", "1.2.3.1"), PRESENT_YES);
    /* the fetch that ran across the forget learns nothing (may be stale) */
    present_end(pc, ST1, "4.4", t3, 1, uids(2, "4.4"), 2);
    CHECK_EQ_INT(present_lookup(pc, ST1, "4.4", "4.4.1"), PRESENT_UNKNOWN);
    present_free(pc);
}

int main(void)
{
    RUN(unknown_then_known);
    RUN(empty_study_and_failed_fetch);
    RUN(forget_store_drops_its_studies_and_running_fetches);
    return test_done();
}
