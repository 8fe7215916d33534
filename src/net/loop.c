/* The event loop: epoll, level-triggered, one per worker thread, with a
 * hashed timing wheel for heartbeats and deadlines (DESIGN.md 2). Backends
 * other than epoll would be separate files picked by CMake; Linux is the
 * only target today. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "net.h"

/* 16 ms ticks and 1024 slots: one lap is ~16 s; longer timers stay in
 * their slot and are skipped until their lap comes (a hashed wheel). The
 * tick is coarse on purpose: every timer we have is a deadline measured in
 * seconds, and fewer wakeups cost less. */
#define TICK_MS     16u
#define WHEEL_SLOTS 1024u
#define MAX_EVENTS  256

struct wsh_loop {
    int epfd;
    bool stop;
    uint64_t now;
    uint64_t tick; /* last tick processed */
    size_t ntimers;
    wsh_loop_hook *before_sleep;
    wsh_loop_turn_cb *on_turn;
    uint64_t woke_ns; /* when epoll last returned, 0 once its turn is counted */
    void *user;
    struct wsh_timer *wheel[WHEEL_SLOTS];
};

uint64_t wsh_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int64_t wsh_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t wsh_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void wsh_loop_on_turn(struct wsh_loop *l, wsh_loop_turn_cb *cb)
{
    l->on_turn = cb;
}

uint64_t wsh_loop_now(const struct wsh_loop *l)
{
    return l->now;
}

int wsh_loop_create(wsh_loop_hook *before_sleep, void *user, struct wsh_loop **out)
{
    struct wsh_loop *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return WSH_ENOMEM;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0) {
        int err = -errno;
        free(l);
        return err;
    }
    l->now = wsh_now_ms();
    l->tick = l->now / TICK_MS;
    l->before_sleep = before_sleep;
    l->user = user;
    *out = l;
    return WSH_OK;
}

void wsh_loop_destroy(struct wsh_loop *l)
{
    if (l == NULL)
        return;
    close(l->epfd);
    free(l);
}

static int ctl(struct wsh_loop *l, int op, struct wsh_io *io, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = io };
    if (epoll_ctl(l->epfd, op, io->fd, &ev) != 0)
        return -errno;
    io->events = events;
    return WSH_OK;
}

int wsh_loop_add(struct wsh_loop *l, struct wsh_io *io, uint32_t events)
{
    return ctl(l, EPOLL_CTL_ADD, io, events);
}

int wsh_loop_mod(struct wsh_loop *l, struct wsh_io *io, uint32_t events)
{
    if (io->events == events)
        return WSH_OK;
    return ctl(l, EPOLL_CTL_MOD, io, events);
}

int wsh_loop_del(struct wsh_loop *l, struct wsh_io *io)
{
    if (epoll_ctl(l->epfd, EPOLL_CTL_DEL, io->fd, NULL) != 0)
        return -errno;
    io->events = 0;
    return WSH_OK;
}

void *wsh_loop_user(const struct wsh_loop *l)
{
    return l->user;
}

void wsh_loop_stop(struct wsh_loop *l)
{
    l->stop = true;
}

void wsh_timer_stop(struct wsh_timer *t)
{
    if (t->pprev == NULL)
        return;
    *t->pprev = t->next;
    if (t->next)
        t->next->pprev = t->pprev;
    t->next = NULL;
    t->pprev = NULL;
}

void wsh_timer_start(struct wsh_loop *l, struct wsh_timer *t, uint64_t ms)
{
    if (t->pprev != NULL) {
        wsh_timer_stop(t);
        l->ntimers--;
    }
    /* A zero delay still lands in a later tick, so a callback that
     * re-arms itself cannot spin inside one pass of the wheel. */
    if (ms == 0)
        ms = 1;
    t->expires = l->now + ms;
    /* Round up so a timer never fires early. */
    uint64_t tick = (t->expires + TICK_MS - 1) / TICK_MS;
    if (tick <= l->tick)
        tick = l->tick + 1;
    struct wsh_timer **slot = &l->wheel[tick % WHEEL_SLOTS];
    t->next = *slot;
    if (t->next)
        t->next->pprev = &t->next;
    t->pprev = slot;
    *slot = t;
    l->ntimers++;
}

/* Fires every timer due in the ticks since the last pass. A timer that
 * re-arms itself lands in a later tick, so one pass cannot loop forever. */
static void run_timers(struct wsh_loop *l)
{
    uint64_t now_tick = l->now / TICK_MS;
    uint64_t steps = now_tick - l->tick;
    if (steps > WHEEL_SLOTS)
        steps = WHEEL_SLOTS; /* one lap visits every slot */
    for (uint64_t i = 1; i <= steps; i++) {
        struct wsh_timer **slot = &l->wheel[(l->tick + i) % WHEEL_SLOTS];
        struct wsh_timer *t = *slot;
        while (t != NULL) {
            struct wsh_timer *next = t->next;
            if (t->expires <= l->now) {
                wsh_timer_stop(t);
                l->ntimers--;
                t->cb(l, t);
                /* The callback may have stopped `next`: restart the scan
                 * of this slot, which only holds later-lap timers now. */
                t = *slot;
                while (t != NULL && t->expires > l->now)
                    t = t->next;
                continue;
            }
            t = next;
        }
    }
    l->tick = now_tick;
}

int wsh_loop_run(struct wsh_loop *l)
{
    struct epoll_event evs[MAX_EVENTS];
    l->stop = false;
    while (!l->stop) {
        if (l->before_sleep)
            l->before_sleep(l, l->user);
        if (l->woke_ns != 0 && l->on_turn) {
            l->on_turn(l, wsh_now_ns() - l->woke_ns, l->user);
            l->woke_ns = 0; /* a turn cut short by EINTR is not counted twice */
        }
        if (l->stop)
            break;
        int timeout = -1;
        if (l->ntimers > 0) {
            uint64_t next = (l->tick + 1) * TICK_MS;
            uint64_t now = wsh_now_ms();
            timeout = next > now ? (int)(next - now) : 0;
        }
        int n = epoll_wait(l->epfd, evs, MAX_EVENTS, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (l->on_turn) { /* one clock read for both */
            l->woke_ns = wsh_now_ns();
            l->now = l->woke_ns / 1000000u;
        } else {
            l->now = wsh_now_ms();
        }
        for (int i = 0; i < n; i++) {
            struct wsh_io *io = evs[i].data.ptr;
            io->cb(l, io, evs[i].events);
        }
        if (l->ntimers > 0 || l->now / TICK_MS != l->tick)
            run_timers(l);
    }
    return WSH_OK;
}
