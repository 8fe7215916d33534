/* Unit tests for the loop's timing wheel: order, no early firing, stop,
 * re-arming from a callback, timers longer than one lap of the wheel. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "net.h"

struct rec {
    struct wsh_timer t;
    uint64_t armed_at;
    uint64_t delay;
    int fired;
    int order;
};

static int fire_seq;
static struct rec *stopper;

static void on_fire(struct wsh_loop *l, struct wsh_timer *t)
{
    struct rec *r = (struct rec *)t;
    r->fired++;
    r->order = ++fire_seq;
    /* Never early: the loop clock has reached the deadline. */
    assert_true(wsh_loop_now(l) >= r->armed_at + r->delay);
    if (r == stopper)
        wsh_loop_stop(l);
}

static void arm(struct wsh_loop *l, struct rec *r, uint64_t ms)
{
    r->t.cb = on_fire;
    r->armed_at = wsh_loop_now(l);
    r->delay = ms;
    wsh_timer_start(l, &r->t, ms);
}

static void test_timer_fires_in_order_never_early(void **state)
{
    (void)state;
    struct wsh_loop *l;
    assert_int_equal(wsh_loop_create(NULL, NULL, &l), WSH_OK);
    struct rec a = { 0 }, b = { 0 }, c = { 0 }, stop = { 0 };
    fire_seq = 0;
    arm(l, &c, 90);
    arm(l, &a, 10);
    arm(l, &b, 40);
    arm(l, &stop, 150);
    stopper = &stop;
    assert_int_equal(wsh_loop_run(l), WSH_OK);
    assert_int_equal(a.fired, 1);
    assert_int_equal(b.fired, 1);
    assert_int_equal(c.fired, 1);
    assert_true(a.order < b.order && b.order < c.order && c.order < stop.order);
    wsh_loop_destroy(l);
}

static void test_timer_stop_prevents_firing(void **state)
{
    (void)state;
    struct wsh_loop *l;
    assert_int_equal(wsh_loop_create(NULL, NULL, &l), WSH_OK);
    struct rec a = { 0 }, stop = { 0 };
    arm(l, &a, 20);
    assert_true(wsh_timer_active(&a.t));
    wsh_timer_stop(&a.t);
    assert_false(wsh_timer_active(&a.t));
    wsh_timer_stop(&a.t); /* stopping twice is harmless */
    arm(l, &stop, 60);
    stopper = &stop;
    assert_int_equal(wsh_loop_run(l), WSH_OK);
    assert_int_equal(a.fired, 0);
    wsh_loop_destroy(l);
}

static struct rec rearm_rec;
static void on_rearm(struct wsh_loop *l, struct wsh_timer *t)
{
    struct rec *r = (struct rec *)t;
    if (++r->fired < 5)
        wsh_timer_start(l, t, 0); /* zero delay lands in a later tick */
    else
        wsh_loop_stop(l);
}

static void test_timer_rearm_from_callback(void **state)
{
    (void)state;
    struct wsh_loop *l;
    assert_int_equal(wsh_loop_create(NULL, NULL, &l), WSH_OK);
    rearm_rec = (struct rec){ 0 };
    rearm_rec.t.cb = on_rearm;
    wsh_timer_start(l, &rearm_rec.t, 0);
    assert_int_equal(wsh_loop_run(l), WSH_OK);
    assert_int_equal(rearm_rec.fired, 5);
    wsh_loop_destroy(l);
}

static void test_timer_restart_replaces_deadline(void **state)
{
    (void)state;
    struct wsh_loop *l;
    assert_int_equal(wsh_loop_create(NULL, NULL, &l), WSH_OK);
    struct rec a = { 0 }, stop = { 0 };
    arm(l, &a, 10);
    arm(l, &a, 80); /* re-arming moves it, it does not add a second entry */
    arm(l, &stop, 40);
    stopper = &stop;
    assert_int_equal(wsh_loop_run(l), WSH_OK);
    assert_int_equal(a.fired, 0);
    stopper = &a;
    assert_int_equal(wsh_loop_run(l), WSH_OK);
    assert_int_equal(a.fired, 1);
    wsh_loop_destroy(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timer_fires_in_order_never_early),
        cmocka_unit_test(test_timer_stop_prevents_firing),
        cmocka_unit_test(test_timer_rearm_from_callback),
        cmocka_unit_test(test_timer_restart_replaces_deadline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
