/* wsh_expset (include/wshub/expset.h): adds, extensions, expiry, the
 * bound, growth past many doublings, and removals checked against a plain
 * array model under a long random sequence. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka.h needs the four headers above. */
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "wshub/expset.h"

#define NOW 1700000000000LL

static void test_expset_add_has_extend_expire(void **state)
{
    (void)state;
    struct wsh_expset *s = wsh_expset_new(4);
    assert_non_null(s);
    assert_false(wsh_expset_has(s, "u1", 2, NOW));
    assert_int_equal(wsh_expset_add(s, "u1", 2, NOW + 100, NOW), WSH_OK);
    assert_true(wsh_expset_has(s, "u1", 2, NOW));
    assert_true(wsh_expset_has(s, "u1", 2, NOW + 99));
    assert_false(wsh_expset_has(s, "u1", 2, NOW + 100)); /* expired at its time */
    assert_false(wsh_expset_has(s, "u", 1, NOW));        /* a prefix is another key */
    assert_false(wsh_expset_has(s, "u10", 3, NOW));
    /* Extended, never shortened. */
    assert_int_equal(wsh_expset_add(s, "u1", 2, NOW + 500, NOW), WSH_OK);
    assert_int_equal(wsh_expset_add(s, "u1", 2, NOW + 200, NOW), WSH_OK);
    assert_true(wsh_expset_has(s, "u1", 2, NOW + 499));
    assert_int_equal(wsh_expset_count(s), 1);
    /* Keys are bytes: a NUL inside is part of the key. */
    assert_int_equal(wsh_expset_add(s, "a\0b", 3, NOW + 100, NOW), WSH_OK);
    assert_true(wsh_expset_has(s, "a\0b", 3, NOW));
    assert_false(wsh_expset_has(s, "a\0c", 3, NOW));
    assert_int_equal(wsh_expset_add(s, "", 0, NOW + 100, NOW), WSH_EINVAL);
    assert_false(wsh_expset_has(s, "", 0, NOW));
    assert_false(wsh_expset_remove(s, "", 0));
    wsh_expset_free(s);
    wsh_expset_free(NULL);
}

static void test_expset_bound_and_room_from_expired(void **state)
{
    (void)state;
    struct wsh_expset *s = wsh_expset_new(3);
    assert_non_null(s);
    assert_int_equal(wsh_expset_add(s, "a", 1, NOW + 10, NOW), WSH_OK);
    assert_int_equal(wsh_expset_add(s, "b", 1, NOW + 20, NOW), WSH_OK);
    assert_int_equal(wsh_expset_add(s, "c", 1, NOW + 30, NOW), WSH_OK);
    /* Full of live entries: refused, and nothing is pushed out. */
    assert_int_equal(wsh_expset_add(s, "d", 1, NOW + 40, NOW), WSH_ENOSPC);
    assert_true(wsh_expset_has(s, "a", 1, NOW));
    /* What is there may still be extended. */
    assert_int_equal(wsh_expset_add(s, "a", 1, NOW + 15, NOW), WSH_OK);
    /* Once two have expired, they make room. */
    assert_int_equal(wsh_expset_add(s, "d", 1, NOW + 40, NOW + 25), WSH_OK);
    assert_int_equal(wsh_expset_count(s), 2);
    assert_true(wsh_expset_has(s, "c", 1, NOW + 25));
    assert_true(wsh_expset_has(s, "d", 1, NOW + 25));
    /* A lowered maximum refuses adds until the set is under it. */
    wsh_expset_set_max(s, 1);
    assert_int_equal(wsh_expset_add(s, "e", 1, NOW + 50, NOW + 25), WSH_ENOSPC);
    assert_true(wsh_expset_remove(s, "c", 1));
    assert_false(wsh_expset_remove(s, "c", 1));
    assert_int_equal(wsh_expset_add(s, "e", 1, NOW + 50, NOW + 25), WSH_ENOSPC);
    assert_true(wsh_expset_remove(s, "d", 1));
    assert_int_equal(wsh_expset_add(s, "e", 1, NOW + 50, NOW + 25), WSH_OK);
    /* The sweep forgets what expired. */
    wsh_expset_purge(s, NOW + 50);
    assert_int_equal(wsh_expset_count(s), 0);
    wsh_expset_free(s);
}

/* A model: the same operations on a plain array, compared after each. It
 * holds expired entries too until a purge, as the set does: an add that
 * finds the set full purges first. */
#define KEYS 3000
#define MAX  1000

static int64_t model[KEYS]; /* until, 0: absent */

static size_t model_held(void)
{
    size_t n = 0;
    for (int i = 0; i < KEYS; i++)
        n += model[i] != 0;
    return n;
}

static void model_purge(int64_t now)
{
    for (int i = 0; i < KEYS; i++)
        if (model[i] != 0 && model[i] <= now)
            model[i] = 0;
}

static uint64_t rng = 88172645463325252u;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void test_expset_matches_a_model(void **state)
{
    (void)state;
    memset(model, 0, sizeof(model));
    struct wsh_expset *s = wsh_expset_new(MAX);
    assert_non_null(s);
    int64_t now = NOW;
    size_t refused = 0, made_room = 0;
    for (int step = 0; step < 60000; step++) {
        char key[32];
        int k = (int)(next() % KEYS);
        size_t len = (size_t)snprintf(key, sizeof(key), "j-%d", k);
        uint64_t op = next() % 10;
        if (op < 6) {
            int64_t until = now + 1 + (int64_t)(next() % 50000);
            int want = WSH_OK;
            if (model[k] != 0) {
                if (until > model[k])
                    model[k] = until;
            } else {
                if (model_held() >= MAX) {
                    model_purge(now);
                    made_room += model_held() < MAX;
                }
                if (model_held() >= MAX)
                    want = WSH_ENOSPC;
                else
                    model[k] = until;
            }
            refused += want == WSH_ENOSPC;
            assert_int_equal(wsh_expset_add(s, key, len, until, now), want);
        } else if (op < 8) {
            assert_int_equal(wsh_expset_remove(s, key, len), model[k] != 0);
            model[k] = 0;
        } else if (op < 9) {
            wsh_expset_purge(s, now);
            model_purge(now);
        } else {
            now += (int64_t)(next() % 30);
        }
        assert_int_equal(wsh_expset_count(s), model_held());
        assert_int_equal(wsh_expset_has(s, key, len, now), model[k] > now);
    }
    /* The bound was reached along the way, both ways. */
    assert_true(refused > 0 && made_room > 0);
    for (int k = 0; k < KEYS; k++) {
        char key[32];
        size_t len = (size_t)snprintf(key, sizeof(key), "j-%d", k);
        assert_int_equal(wsh_expset_has(s, key, len, now), model[k] > now);
    }
    wsh_expset_free(s);
}

static void test_expset_grows_to_many(void **state)
{
    (void)state;
    enum { N = 100000 };
    struct wsh_expset *s = wsh_expset_new(N);
    assert_non_null(s);
    char key[32];
    for (int i = 0; i < N; i++) {
        int n = snprintf(key, sizeof(key), "u%d", i);
        assert_int_equal(wsh_expset_add(s, key, (size_t)n, NOW + 1000 + i, NOW), WSH_OK);
    }
    assert_int_equal(wsh_expset_count(s), N);
    assert_int_equal(wsh_expset_add(s, "one more", 8, NOW + 1, NOW), WSH_ENOSPC);
    for (int i = 0; i < N; i += 7) {
        int n = snprintf(key, sizeof(key), "u%d", i);
        assert_true(wsh_expset_has(s, key, (size_t)n, NOW));
    }
    /* Remove every other one; the rest are still found (backward shift
     * kept their probe chains). */
    for (int i = 0; i < N; i += 2) {
        int n = snprintf(key, sizeof(key), "u%d", i);
        assert_true(wsh_expset_remove(s, key, (size_t)n));
    }
    for (int i = 0; i < N; i++) {
        int n = snprintf(key, sizeof(key), "u%d", i);
        assert_int_equal(wsh_expset_has(s, key, (size_t)n, NOW), i % 2 == 1);
    }
    /* Half of the rest expire by NOW + 1000 + N / 2. */
    wsh_expset_purge(s, NOW + 1000 + N / 2);
    assert_int_equal(wsh_expset_count(s), N / 4);
    wsh_expset_free(s);
}

/* wsh_expset_soonest bounds the next expiry, so a purge before it skips
 * the scan; a purge after it leaves the true earliest. */
static void test_expset_soonest_bounds_the_next_expiry(void **state)
{
    (void)state;
    struct wsh_expset *s = wsh_expset_new(8);
    assert_non_null(s);
    assert_true(wsh_expset_soonest(s) == INT64_MAX);
    assert_int_equal(wsh_expset_add(s, "a", 1, NOW + 100, NOW), WSH_OK);
    assert_int_equal(wsh_expset_add(s, "b", 1, NOW + 50, NOW), WSH_OK);
    assert_int_equal(wsh_expset_add(s, "c", 1, NOW + 200, NOW), WSH_OK);
    assert_true(wsh_expset_soonest(s) == NOW + 50);
    wsh_expset_purge(s, NOW + 49);
    assert_int_equal(wsh_expset_count(s), 3);
    wsh_expset_purge(s, NOW + 50);
    assert_int_equal(wsh_expset_count(s), 2);
    assert_false(wsh_expset_has(s, "b", 1, NOW));
    assert_true(wsh_expset_soonest(s) == NOW + 100);
    /* Extended or removed, an entry leaves the bound early: the next
     * purge past it scans and finds the true earliest. */
    assert_int_equal(wsh_expset_add(s, "a", 1, NOW + 500, NOW), WSH_OK);
    assert_true(wsh_expset_soonest(s) == NOW + 100);
    wsh_expset_purge(s, NOW + 150);
    assert_int_equal(wsh_expset_count(s), 2);
    assert_true(wsh_expset_soonest(s) == NOW + 200);
    assert_true(wsh_expset_remove(s, "c", 1));
    wsh_expset_purge(s, NOW + 200);
    assert_true(wsh_expset_soonest(s) == NOW + 500);
    wsh_expset_purge(s, NOW + 500);
    assert_int_equal(wsh_expset_count(s), 0);
    assert_true(wsh_expset_soonest(s) == INT64_MAX);
    wsh_expset_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expset_add_has_extend_expire),
        cmocka_unit_test(test_expset_bound_and_room_from_expired),
        cmocka_unit_test(test_expset_matches_a_model),
        cmocka_unit_test(test_expset_grows_to_many),
        cmocka_unit_test(test_expset_soonest_bounds_the_next_expiry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
