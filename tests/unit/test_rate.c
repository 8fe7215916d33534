/* Unit tests for the admission token bucket and its promised retry slots
 * (src/net/rate.c), on a clock the test moves by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "net.h"

static void test_rate_burst_then_refill(void **state)
{
    (void)state;
    struct wsh_rate r;
    wsh_rate_init(&r, 2.0, 3, 1000);
    for (int i = 0; i < 3; i++)
        assert_true(wsh_rate_take(&r, 1000));
    assert_false(wsh_rate_take(&r, 1000));
    /* Two a second: a token every 500 ms, not one millisecond sooner. */
    assert_false(wsh_rate_take(&r, 1499));
    assert_true(wsh_rate_take(&r, 1500));
    assert_false(wsh_rate_take(&r, 1500));
    /* A long pause fills the bucket to its burst and no further. */
    for (int i = 0; i < 3; i++)
        assert_true(wsh_rate_take(&r, 100000));
    assert_false(wsh_rate_take(&r, 100000));
}

/* An idle address's bucket may be forgotten once it is full again. */
static void test_rate_full(void **state)
{
    (void)state;
    struct wsh_rate r;
    wsh_rate_init(&r, 4.0, 2, 0);
    assert_true(wsh_rate_full(&r, 0));
    assert_true(wsh_rate_take(&r, 0));
    assert_false(wsh_rate_full(&r, 249));
    assert_true(wsh_rate_full(&r, 250));
}

static void test_rate_fractional_rate(void **state)
{
    (void)state;
    struct wsh_rate r;
    wsh_rate_init(&r, 0.5, 1, 0);
    assert_true(wsh_rate_take(&r, 0));
    assert_false(wsh_rate_take(&r, 1999));
    assert_true(wsh_rate_take(&r, 2000));
}

/* Refused callers are promised slots one token's time apart, the first
 * when the next token comes. */
static void test_rate_promises_spread(void **state)
{
    (void)state;
    struct wsh_rate r;
    wsh_rate_init(&r, 2.0, 1, 0);
    assert_true(wsh_rate_take(&r, 0));
    assert_false(wsh_rate_take(&r, 0));
    assert_int_equal(wsh_rate_promise(&r, 0, 60000), 500);
    assert_int_equal(wsh_rate_promise(&r, 0, 60000), 1000);
    assert_int_equal(wsh_rate_promise(&r, 0, 60000), 1500);
    /* Later callers are measured from their own now. */
    assert_int_equal(wsh_rate_promise(&r, 100, 60000), 1900);
}

static void test_rate_promise_horizon(void **state)
{
    (void)state;
    struct wsh_rate r;
    wsh_rate_init(&r, 1.0, 1, 0);
    assert_true(wsh_rate_take(&r, 0));
    assert_int_equal(wsh_rate_promise(&r, 0, 2500), 1000);
    assert_int_equal(wsh_rate_promise(&r, 0, 2500), 2000);
    /* Past the horizon nothing is promised, and the schedule stays. */
    assert_int_equal(wsh_rate_promise(&r, 0, 2500), 0);
    assert_int_equal(wsh_rate_promise(&r, 0, 2500), 0);
    assert_int_equal(wsh_rate_promise(&r, 1000, 2500), 2000);
}

/* Promises made long ago do not push a new crowd back: after a quiet
 * spell the first refused caller waits only for the next token. */
static void test_rate_schedule_catches_up(void **state)
{
    (void)state;
    struct wsh_rate r;
    wsh_rate_init(&r, 10.0, 2, 0);
    assert_true(wsh_rate_take(&r, 0));
    assert_true(wsh_rate_take(&r, 0));
    for (int i = 1; i <= 50; i++)
        assert_int_equal(wsh_rate_promise(&r, 0, 60000), (uint64_t)i * 100u);
    assert_true(wsh_rate_take(&r, 60000));
    assert_true(wsh_rate_take(&r, 60000));
    assert_false(wsh_rate_take(&r, 60000));
    assert_int_equal(wsh_rate_promise(&r, 60000, 60000), 100);
}

/* Over 1,000/s several callers share a millisecond, and the waits never
 * go down. */
static void test_rate_fast_rate_shares_milliseconds(void **state)
{
    (void)state;
    struct wsh_rate r;
    wsh_rate_init(&r, 5000.0, 1, 0);
    assert_true(wsh_rate_take(&r, 0));
    uint64_t prev = 0, ones = 0;
    for (int i = 0; i < 20; i++) {
        uint64_t ms = wsh_rate_promise(&r, 0, 60000);
        assert_true(ms >= 1 && ms >= prev);
        ones += ms == 1;
        prev = ms;
    }
    assert_int_equal(ones, 5); /* slots at 0.2, 0.4, ..., 1.0 ms */
    assert_int_equal(prev, 4); /* the 20th at 4.0 ms */
}

/* Another thread's clock read may be a millisecond older than the last
 * refill: nothing wraps. */
static void test_rate_clock_behind(void **state)
{
    (void)state;
    struct wsh_rate r;
    wsh_rate_init(&r, 1.0, 1, 5000);
    assert_true(wsh_rate_take(&r, 5000));
    assert_false(wsh_rate_take(&r, 4999));
    assert_int_equal(wsh_rate_promise(&r, 4999, 60000), 1000);
    assert_true(wsh_rate_take(&r, 6000));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rate_burst_then_refill),
        cmocka_unit_test(test_rate_full),
        cmocka_unit_test(test_rate_fractional_rate),
        cmocka_unit_test(test_rate_promises_spread),
        cmocka_unit_test(test_rate_promise_horizon),
        cmocka_unit_test(test_rate_schedule_catches_up),
        cmocka_unit_test(test_rate_fast_rate_shares_milliseconds),
        cmocka_unit_test(test_rate_clock_behind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
