/* Unit tests for keyed hashing and the chained table (src/net/hash.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "wshub/hash.h"

/* SipHash-1-3 under the all-zero key, as CPython 3.11 computes it
 * (hash(b"...") with PYTHONHASHSEED=0, whose secret is then all zero):
 * an implementation that is not ours. */
static void test_siphash13_vectors(void **state)
{
    (void)state;
    static const uint64_t zero[2] = { 0, 0 };
    assert_int_equal(wsh_siphash13(zero, "a", 1), 0x407448d2b89b1813ULL);
    assert_int_equal(wsh_siphash13(zero, "abcdefgh", 8), 0x3f7b849c0b8e35eaULL);
    assert_int_equal(wsh_siphash13(zero, "the quick brown fox", 19), 0x5a17575ad3449cbaULL);
}

/* Another key, another hash: what keeps a client from choosing names
 * that share a chain. */
static void test_siphash13_keyed(void **state)
{
    (void)state;
    uint64_t k1[2], k2[2];
    wsh_random_bytes(k1, sizeof(k1));
    wsh_random_bytes(k2, sizeof(k2));
    assert_true(k1[0] != k2[0] || k1[1] != k2[1]);
    assert_int_not_equal(wsh_siphash13(k1, "chat:room", 9), wsh_siphash13(k2, "chat:room", 9));
    assert_int_equal(wsh_siphash13(k1, "chat:room", 9), wsh_siphash13(k1, "chat:room", 9));
}

struct rec {
    struct wsh_hnode hn;
    unsigned id;
};

static struct rec *find(struct wsh_htab *t, uint64_t h, unsigned id)
{
    for (struct wsh_hnode *n = wsh_htab_chain(t, h); n != NULL; n = n->next)
        if (n->hash == h && ((struct rec *)n)->id == id)
            return (struct rec *)n;
    return NULL;
}

static bool drop_odd(struct wsh_hnode *n, void *arg)
{
    struct rec *r = (struct rec *)n;
    if (r->id % 2 == 0)
        return false;
    (*(unsigned *)arg)++;
    free(r); /* the table must not touch it after */
    return true;
}

static bool count_all(struct wsh_hnode *n, void *arg)
{
    (void)n;
    (*(unsigned *)arg)++;
    return false;
}

static bool free_all(struct wsh_hnode *n, void *arg)
{
    (void)arg;
    free(n);
    return true;
}

/* Records go in, are found under their own hash only, survive every
 * doubling, and leave through remove and filter; the table grows with
 * them (one record per chain at most before it doubles). The hashes are
 * chosen so that many share their low bits: chains that only a growing
 * table keeps short. */
static void test_table(void **state)
{
    (void)state;
    struct wsh_htab t = { 0 };
    assert_null(wsh_htab_chain(&t, 7));
    enum { N = 5000 };
    for (unsigned i = 0; i < N; i++) {
        assert_true(wsh_htab_reserve(&t, 8));
        struct rec *r = calloc(1, sizeof(*r));
        assert_non_null(r);
        r->id = i;
        r->hn.hash = (uint64_t)i * 4096u + (i % 3);
        wsh_htab_insert(&t, &r->hn);
        assert_true(t.n <= t.nb);
    }
    assert_int_equal(t.n, N);
    assert_true(t.nb >= N && (t.nb & (t.nb - 1)) == 0);
    for (unsigned i = 0; i < N; i++)
        assert_non_null(find(&t, (uint64_t)i * 4096u + (i % 3), i));
    assert_null(find(&t, 1, 0));

    /* Remove a few by hand. */
    for (unsigned i = 0; i < 10; i += 2) {
        struct rec *r = find(&t, (uint64_t)i * 4096u + (i % 3), i);
        wsh_htab_remove(&t, &r->hn);
        free(r);
        assert_null(find(&t, (uint64_t)i * 4096u + (i % 3), i));
    }
    assert_int_equal(t.n, N - 5);

    /* Filter away the odd ones, freeing them as it goes. */
    unsigned dropped = 0;
    assert_int_equal(wsh_htab_filter(&t, drop_odd, &dropped), N / 2);
    assert_int_equal(dropped, N / 2);
    assert_int_equal(t.n, N / 2 - 5);
    unsigned left = 0;
    assert_int_equal(wsh_htab_filter(&t, count_all, &left), 0);
    assert_int_equal(left, N / 2 - 5);
    for (unsigned i = 10; i < N; i++)
        assert_true((find(&t, (uint64_t)i * 4096u + (i % 3), i) != NULL) == (i % 2 == 0));

    assert_int_equal(wsh_htab_filter(&t, free_all, NULL), N / 2 - 5);
    assert_int_equal(t.n, 0);
    wsh_htab_free(&t);
    assert_int_equal(t.nb, 0);
    assert_null(t.b);
}

static bool keep_ten(struct wsh_hnode *n, void *arg)
{
    (void)arg;
    if (((struct rec *)n)->id % 100 == 0)
        return false;
    free(n);
    return true;
}

/* A table a burst grew shrinks once the records have gone, to between a
 * quarter and a half full, never under its first size, every record still
 * found. */
static void test_table_shrinks(void **state)
{
    (void)state;
    struct wsh_htab t = { 0 };
    for (unsigned i = 0; i < 1000; i++) {
        assert_true(wsh_htab_reserve(&t, 8));
        struct rec *r = calloc(1, sizeof(*r));
        assert_non_null(r);
        r->id = i;
        r->hn.hash = (uint64_t)i * 0x9e3779b97f4a7c15ULL;
        wsh_htab_insert(&t, &r->hn);
    }
    assert_int_equal(t.nb, 1024);
    wsh_htab_shrink(&t, 8); /* full enough: stays */
    assert_int_equal(t.nb, 1024);
    assert_int_equal(wsh_htab_filter(&t, keep_ten, NULL), 990);
    wsh_htab_shrink(&t, 64); /* not under its first size */
    assert_int_equal(t.nb, 64);
    wsh_htab_shrink(&t, 8);
    assert_int_equal(t.nb, 32);
    for (unsigned i = 0; i < 1000; i += 100)
        assert_non_null(find(&t, (uint64_t)i * 0x9e3779b97f4a7c15ULL, i));
    assert_int_equal(wsh_htab_filter(&t, free_all, NULL), 10);
    wsh_htab_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_siphash13_vectors),
        cmocka_unit_test(test_siphash13_keyed),
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_table_shrinks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
