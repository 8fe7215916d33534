/* Unit tests for shared buffers and write queues over a real socketpair:
 * one buffer referenced by several queues, partial writes resumed at the
 * right byte, the slow-consumer drop that keeps a started frame whole. */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "net.h"

static struct wsh_buf *make_buf(uint8_t fill, size_t n)
{
    struct wsh_buf *b = wsh_buf_new(n);
    assert_non_null(b);
    /* cmocka's asserts are not noreturn: without this, gcc's link-time
     * optimizer sees the NULL path reach the memset and warns. */
    if (b == NULL)
        abort();
    memset(b->data, fill, n);
    b->end = (uint32_t)n;
    return b;
}

static void nonblocking_pair(int sv[2], int sndbuf)
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    if (sndbuf)
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
}

static size_t drain(int fd, uint8_t *out, size_t cap)
{
    size_t got = 0;
    for (;;) {
        ssize_t r = read(fd, out + got, cap - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return got;
}

static void test_wq_shared_buffer_two_queues(void **state)
{
    (void)state;
    int a[2], b[2];
    nonblocking_pair(a, 0);
    nonblocking_pair(b, 0);
    struct wsh_buf *f = make_buf('x', 100);
    struct wsh_wq *qa = NULL, *qb = NULL;
    assert_int_equal(wsh_wq_push(&qa, wsh_buf_ref(f)), WSH_OK);
    assert_int_equal(wsh_wq_push(&qb, wsh_buf_ref(f)), WSH_OK);
    wsh_buf_unref(f);
    assert_int_equal(atomic_load(&f->refs), 2);
    assert_int_equal(wsh_wq_bytes(qa), 100);
    assert_int_equal(wsh_wq_flush(&qa, a[0]), WSH_OK);
    assert_null(qa);
    assert_int_equal(atomic_load(&f->refs), 1);
    assert_int_equal(wsh_wq_flush(&qb, b[0]), WSH_OK);
    uint8_t out[200];
    assert_int_equal(drain(a[1], out, sizeof(out)), 100);
    assert_int_equal(drain(b[1], out, sizeof(out)), 100);
    close(a[0]), close(a[1]), close(b[0]), close(b[1]);
}

static void test_wq_partial_write_resumes_in_order(void **state)
{
    (void)state;
    int sv[2];
    nonblocking_pair(sv, 4096);
    struct wsh_wq *q = NULL;
    size_t total = 0;
    for (int i = 0; i < 40; i++) {
        assert_int_equal(wsh_wq_push(&q, make_buf((uint8_t)i, 10000)), WSH_OK);
        total += 10000;
    }
    static uint8_t out[400000];
    size_t got = 0;
    int rounds = 0;
    while (q != NULL && rounds++ < 10000) {
        int rc = wsh_wq_flush(&q, sv[0]);
        assert_true(rc == WSH_OK || rc == WSH_EAGAIN);
        got += drain(sv[1], out + got, sizeof(out) - got);
    }
    got += drain(sv[1], out + got, sizeof(out) - got);
    assert_null(q);
    assert_int_equal(got, total);
    for (size_t i = 0; i < total; i++)
        assert_int_equal(out[i], (uint8_t)(i / 10000));
    close(sv[0]), close(sv[1]);
}

static void test_wq_drop_unstarted_keeps_started_head(void **state)
{
    (void)state;
    int sv[2];
    nonblocking_pair(sv, 4096);
    struct wsh_wq *q = NULL;
    for (int i = 0; i < 50; i++)
        assert_int_equal(wsh_wq_push(&q, make_buf((uint8_t)i, 100000)), WSH_OK);
    assert_int_equal(wsh_wq_flush(&q, sv[0]), WSH_EAGAIN);
    size_t left = wsh_wq_bytes(q);
    assert_true(left > 0 && left < 50u * 100000u);
    wsh_wq_drop_unstarted(&q, 0);
    /* Only the rest of the frame already begun remains. */
    assert_non_null(q);
    assert_true(wsh_wq_bytes(q) < 100000);
    wsh_wq_clear(&q);
    assert_null(q);
    close(sv[0]), close(sv[1]);
}

/* A TLS write to be repeated (wsh_tls_flush) covers the queue's first
 * bytes across entries none of which has begun: they stay, whole. */
static void test_wq_drop_unstarted_keeps_pinned_bytes(void **state)
{
    (void)state;
    struct wsh_wq *q = NULL;
    for (int i = 0; i < 10; i++)
        assert_int_equal(wsh_wq_push(&q, make_buf((uint8_t)i, 3000)), WSH_OK);
    wsh_wq_drop_unstarted(&q, 7000); /* a record of 7000 bytes: 3 entries */
    assert_int_equal(wsh_wq_bytes(q), 9000);
    uint8_t out[16384];
    const uint8_t *p;
    size_t n = wsh_wq_gather(q, out, sizeof(out), &p);
    assert_int_equal(n, 9000);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(p[i], (uint8_t)(i / 3000));
    wsh_wq_drop_unstarted(&q, 0);
    assert_null(q);
}

/* The rest of a direct send (wsh_wq_push_rest) may begin inside a frame:
 * it stays whole, as a begun head does, and what follows it goes. */
static void test_wq_drop_unstarted_keeps_a_pushed_rest(void **state)
{
    (void)state;
    struct wsh_wq *q = NULL;
    assert_int_equal(wsh_wq_push_rest(&q, make_buf('r', 1234)), WSH_OK);
    for (int i = 0; i < 5; i++)
        assert_int_equal(wsh_wq_push(&q, make_buf((uint8_t)i, 3000)), WSH_OK);
    wsh_wq_drop_unstarted(&q, 0);
    assert_non_null(q);
    assert_int_equal(wsh_wq_bytes(q), 1234);
    wsh_wq_clear(&q);
    /* Pushed the plain way, the same buffer is not begun: it goes too. */
    assert_int_equal(wsh_wq_push(&q, make_buf('r', 1234)), WSH_OK);
    wsh_wq_drop_unstarted(&q, 0);
    assert_null(q);
}

static void test_wq_flush_error_on_closed_peer(void **state)
{
    (void)state;
    int sv[2];
    nonblocking_pair(sv, 0);
    close(sv[1]);
    struct wsh_wq *q = NULL;
    assert_int_equal(wsh_wq_push(&q, make_buf('z', 10)), WSH_OK);
    int rc = wsh_wq_flush(&q, sv[0]); /* SIGPIPE is ignored in main() */
    assert_true(rc < 0 && rc != WSH_EAGAIN);
    wsh_wq_clear(&q);
    close(sv[0]);
}

/* Appends n bytes of fill to the queue's tail buffer (the cork). */
static void cork(struct wsh_wq *q, uint8_t fill, size_t n)
{
    uint8_t *room = wsh_wq_tail_reserve(q, n);
    assert_non_null(room);
    if (room == NULL)
        abort();
    memset(room, fill, n);
    wsh_wq_tail_commit(q, n);
}

/* The replaceable tail (pong coalescing): a marked unit can be dropped
 * while whole and unwritten; anything queued after it, or a write that
 * reaches into it, cancels the mark, so no byte another frame owns is
 * ever dropped. */
static void test_wq_tail_mark_replace_and_cancel(void **state)
{
    (void)state;
    struct wsh_wq *q = NULL;
    struct wsh_buf *b = make_buf('a', 10);
    assert_int_equal(wsh_wq_push(&q, b), WSH_OK);
    assert_int_equal(wsh_wq_tail_replaceable(q), 0);
    /* Append a 5-byte unit into the tail and mark it. */
    assert_null(wsh_wq_tail_reserve(q, 5)); /* make_buf's buffer is exactly full */
    struct wsh_buf *t = wsh_buf_new(64);
    assert_non_null(t);
    if (t == NULL)
        abort();
    memset(t->data, 'p', 5);
    t->end = 5;
    assert_int_equal(wsh_wq_push(&q, t), WSH_OK);
    wsh_wq_tail_mark(q, 5);
    assert_int_equal(wsh_wq_tail_replaceable(q), 5);
    assert_int_equal(wsh_wq_bytes(q), 15);
    /* Replace it with a newer unit. */
    wsh_wq_tail_drop(q, 5);
    assert_int_equal(wsh_wq_bytes(q), 10);
    assert_int_equal(wsh_wq_tail_replaceable(q), 0);
    cork(q, 'q', 5);
    wsh_wq_tail_mark(q, 5);
    assert_int_equal(wsh_wq_tail_replaceable(q), 5);
    /* A commit after it cancels the mark. */
    cork(q, 'r', 3);
    assert_int_equal(wsh_wq_tail_replaceable(q), 0);
    /* So does a push. */
    wsh_wq_tail_mark(q, 3);
    assert_int_equal(wsh_wq_push(&q, make_buf('s', 4)), WSH_OK);
    assert_int_equal(wsh_wq_tail_replaceable(q), 0);
    /* The replaced unit left no byte behind. */
    uint8_t scratch[64];
    const uint8_t *out;
    size_t n = wsh_wq_gather(q, scratch, sizeof(scratch), &out);
    assert_int_equal(n, 22);
    assert_memory_equal(out, "aaaaaaaaaaqqqqqrrrssss", 22);
    /* A write reaching into the marked unit cancels it; one short of it
     * does not. */
    wsh_wq_tail_mark(q, 4);
    wsh_wq_consume(&q, 18);
    assert_int_equal(wsh_wq_tail_replaceable(q), 4);
    wsh_wq_consume(&q, 1);
    assert_int_equal(wsh_wq_tail_replaceable(q), 0);
    wsh_wq_clear(&q);
    assert_null(q);
    assert_int_equal(wsh_wq_tail_replaceable(q), 0);
}

/* The stall and soft-limit clocks. The loop's time is cached per turn, so
 * the once-a-second check can run in the very millisecond a flush stamped
 * the queue; stamping `now | 1` (0 means unset) and checking against the
 * raw `now` once read that as a stall of 2^32 - 1 ms and dropped busy,
 * progressing connections (seen as a lost echo under load). */
static void test_wq_clocks(void **state)
{
    (void)state;
    struct wsh_wq *q = NULL;
    assert_int_equal(wsh_wq_push(&q, make_buf('a', 1000)), WSH_OK);
    assert_int_equal(wsh_wq_stalled_ms(q, wsh_stamp(5000)), 0); /* unset */

    /* first note at an even millisecond, checked in the same one */
    wsh_wq_note(q, wsh_stamp(1000), 1000, 0);
    assert_int_equal(wsh_wq_stalled_ms(q, wsh_stamp(1000)), 0);
    assert_int_equal(wsh_wq_stalled_ms(q, wsh_stamp(1000) - 1), 0); /* a stamp ahead of now */
    assert_int_equal(wsh_wq_stalled_ms(q, wsh_stamp(11001)), 10000);

    /* no progress (bytes not fewer than before): the clock keeps running */
    wsh_wq_note(q, wsh_stamp(6000), 1000, 0);
    assert_int_equal(wsh_wq_stalled_ms(q, wsh_stamp(11001)), 10000);
    /* progress restarts it */
    wsh_wq_consume(&q, 10);
    wsh_wq_note(q, wsh_stamp(7000), 1000, 0);
    assert_int_equal(wsh_wq_stalled_ms(q, wsh_stamp(11001)), 4000);

    /* soft limit: over since the first note above it, cleared below it */
    assert_int_equal(wsh_wq_over_ms(q, wsh_stamp(8000)), 0);
    wsh_wq_note(q, wsh_stamp(8000), 990, 500);
    wsh_wq_note(q, wsh_stamp(9000), 990, 500);
    assert_int_equal(wsh_wq_over_ms(q, wsh_stamp(8000)), 0);
    assert_int_equal(wsh_wq_over_ms(q, wsh_stamp(9500)), 1500);
    wsh_wq_note(q, wsh_stamp(9600), 990, 2000);
    assert_int_equal(wsh_wq_over_ms(q, wsh_stamp(9700)), 0);
    wsh_wq_clear(&q);
}

/* --max-client-memory counts every live buffer once, however many
 * references it has, and a buffer freed on another thread than the one
 * that allocated it still leaves the total where it started. */
static void *unref_on_thread(void *arg)
{
    wsh_buf_unref(arg);
    return NULL;
}

static void test_buf_live_bytes(void **state)
{
    (void)state;
    size_t base = wsh_buf_live_bytes();
    struct wsh_buf *b = make_buf('a', 1000);
    size_t one = sizeof(struct wsh_buf) + 1000;
    assert_int_equal(wsh_buf_live_bytes(), base + one);
    wsh_buf_ref(b);
    wsh_buf_ref(b);
    assert_int_equal(wsh_buf_live_bytes(), base + one);
    struct wsh_buf *g = wsh_buf_grow(make_buf('g', 10), 4000);
    assert_non_null(g);
    assert_int_equal(wsh_buf_live_bytes(), base + one + sizeof(struct wsh_buf) + 4000);
    wsh_buf_unref(g);
    wsh_buf_unref(b);
    wsh_buf_unref(b);
    assert_int_equal(wsh_buf_live_bytes(), base + one);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, unref_on_thread, b), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(wsh_buf_live_bytes(), base);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wq_shared_buffer_two_queues),
        cmocka_unit_test(test_wq_partial_write_resumes_in_order),
        cmocka_unit_test(test_wq_drop_unstarted_keeps_started_head),
        cmocka_unit_test(test_wq_drop_unstarted_keeps_pinned_bytes),
        cmocka_unit_test(test_wq_drop_unstarted_keeps_a_pushed_rest),
        cmocka_unit_test(test_wq_flush_error_on_closed_peer),
        cmocka_unit_test(test_wq_tail_mark_replace_and_cancel),
        cmocka_unit_test(test_wq_clocks),
        cmocka_unit_test(test_buf_live_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
