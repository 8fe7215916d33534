/* Unit tests for the --max-client-memory ranking (src/net/evict.c): the
 * heap keeps exactly the k largest of any stream, the merged order is the
 * same for every owner, and owners that merge the same lists pick
 * disjoint parts of the one prefix that covers the excess. */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "net.h"

#define EVICT_N 12

static int desc_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x < y) - (x > y);
}

/* Against sorting everything: the k largest, for many streams and k,
 * with duplicates (sizes drawn from a small range) and without. */
static void test_evict_heap_keeps_k_largest(void **state)
{
    (void)state;
    srand(7);
    for (int round = 0; round < 300; round++) {
        size_t n = (size_t)(rand() % 200), k = (size_t)(rand() % 40);
        uint64_t range = round % 2 ? 10 : 1000000;
        uint64_t all[200];
        struct wsh_holder heap[40];
        size_t hn = 0;
        for (size_t i = 0; i < n; i++) {
            all[i] = (uint64_t)rand() % range + 1;
            wsh_evict_offer(heap, &hn, k, (struct wsh_holder){ .bytes = all[i] });
        }
        assert_int_equal(hn, n < k ? n : k);
        wsh_evict_sort(heap, hn);
        qsort(all, n, sizeof(*all), desc_u64);
        for (size_t i = 0; i < hn; i++) {
            assert_int_equal(heap[i].bytes, all[i]);
            assert_int_equal(heap[i].rank, i);
        }
    }
}

/* The prefix: the largest first until the excess is covered, across
 * owners; ties go to the lower owner, then the lower rank. */
static void test_evict_pick_prefix(void **state)
{
    (void)state;
    struct wsh_holder a[] = { { .bytes = 900 }, { .bytes = 500 }, { .bytes = 100 } };
    struct wsh_holder b[] = { { .bytes = 700 }, { .bytes = 500 }, { .bytes = 50 } };
    for (size_t i = 0; i < 3; i++) {
        a[i].owner = 0;
        b[i].owner = 1;
    }
    wsh_evict_sort(a, 3);
    wsh_evict_sort(b, 3);
    struct wsh_holder all[6];
    uint32_t ranks[6];
    struct {
        uint64_t excess;
        size_t n0, n1; /* picks of owner 0, owner 1 */
    } cases[] = {
        { 1, 1, 0 },    /* 900 covers it */
        { 900, 1, 0 },  /* exactly */
        { 901, 1, 1 },  /* 900 + 700 */
        { 1700, 2, 1 }, /* + 500 of owner 0 (the tie goes to the lower owner) */
        { 2101, 2, 2 }, /* + 500 of owner 1 */
        { 9999, 3, 3 }, /* nobody covers it: everyone listed */
        { 0, 0, 0 },
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        for (uint32_t owner = 0; owner < 2; owner++) {
            memcpy(all, a, sizeof(a));
            memcpy(all + 3, b, sizeof(b));
            size_t n = wsh_evict_pick(all, 6, cases[c].excess, owner, ranks);
            assert_int_equal(n, owner == 0 ? cases[c].n0 : cases[c].n1);
            for (size_t i = 0; i < n; i++)
                assert_int_equal(ranks[i], i); /* each owner's largest first */
        }
    }
}

/* Four owners with random lists (many equal sizes): each merges the same
 * lists in its own order of concatenation, and together they pick exactly
 * the shortest prefix of the one order (bytes, owner, rank) that covers
 * the excess, each entry once. */
static bool before(const struct wsh_holder *x, const struct wsh_holder *y)
{
    if (x->bytes != y->bytes)
        return x->bytes > y->bytes;
    return x->owner != y->owner ? x->owner < y->owner : x->rank < y->rank;
}

static void test_evict_owners_partition_the_prefix(void **state)
{
    (void)state;
    srand(11);
    for (int round = 0; round < 300; round++) {
        struct wsh_holder lists[4][EVICT_N], order[4 * EVICT_N];
        size_t lens[4], total_n = 0;
        uint64_t total = 0;
        for (uint32_t o = 0; o < 4; o++) {
            lens[o] = (size_t)(rand() % EVICT_N);
            for (size_t i = 0; i < lens[o]; i++) {
                lists[o][i] = (struct wsh_holder){ .bytes = (uint64_t)(rand() % 5 + 1) * 100,
                                                   .owner = o };
                total += lists[o][i].bytes;
            }
            wsh_evict_sort(lists[o], lens[o]);
            for (size_t i = 0; i < lens[o]; i++) { /* insertion into the expected order */
                size_t j = total_n++;
                for (; j > 0 && before(&lists[o][i], &order[j - 1]); j--)
                    order[j] = order[j - 1];
                order[j] = lists[o][i];
            }
        }
        uint64_t excess = (uint64_t)rand() % (total + 1);
        bool want[4][EVICT_N] = { { false } };
        uint64_t covered = 0;
        for (size_t i = 0; i < total_n && covered < excess; i++) {
            covered += order[i].bytes;
            want[order[i].owner][order[i].rank] = true;
        }
        for (uint32_t o = 0; o < 4; o++) {
            struct wsh_holder all[4 * EVICT_N];
            size_t n = 0;
            for (uint32_t j = 0; j < 4; j++) {
                uint32_t from = (o + j) % 4; /* a different concatenation per owner */
                memcpy(all + n, lists[from], lens[from] * sizeof(all[0]));
                n += lens[from];
            }
            uint32_t ranks[EVICT_N];
            size_t k = wsh_evict_pick(all, n, excess, o, ranks);
            bool got[EVICT_N] = { false };
            for (size_t i = 0; i < k; i++) {
                assert_true(ranks[i] < lens[o]);
                assert_false(got[ranks[i]]);
                got[ranks[i]] = true;
            }
            assert_memory_equal(got, want[o], sizeof(got));
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_evict_heap_keeps_k_largest),
        cmocka_unit_test(test_evict_pick_prefix),
        cmocka_unit_test(test_evict_owners_partition_the_prefix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
