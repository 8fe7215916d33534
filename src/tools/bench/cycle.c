/* wshub-bench connect and idle: whole connection lifecycles.
 * connect: C loops of TCP connect -> handshake -> close frame -> the
 * server's close frame -> TCP EOF (RFC 6455 7.1.1: the server closes TCP
 * first) -> close. idle: N open connections held while the server's RSS is
 * sampled.
 *
 * idle warms the server up first: it opens and closes --warmup (200)
 * connections (with the same --tls and --deflate) and waits before reading
 * the baseline. The first handshakes fault in code and data pages that every
 * later connection shares (libcrypto's alone were ~1.6 MB), which a cold
 * baseline would charge to the connections: 410 B/conn measured cold
 * against ~200 B warm for plain WebSocket. RssAnon (heap, no file pages) is
 * reported beside VmRSS because it is what a connection really costs.
 *
 * idle --proto ws: each connection also authenticates (anonymous, or
 * --token) and subscribes to bench:idle-<n % 100> (app.c) before it counts,
 * so the number is the cost of an idle authenticated, subscribed /ws
 * client. The warm-up connections do the same. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

struct cyc {
    uint8_t *payload;
    bool running;
    bool measuring;
    uint64_t cycles;
    uint64_t failed;
    uint32_t ready; /* idle --proto: connections subscribed */
    struct hist lat;
};

static void cyc_open(struct bench *b, struct conn *c)
{
    struct cyc *y = b->mode_state;
    if (!y->running)
        return;
    if (b->o.raw) {
        /* One round trip proves the connection works end to end. */
        if (!conn_send_msg(b, c, 0, y->payload, b->o.size))
            conn_kill(b, c, false);
    } else {
        conn_close_ws(b, c);
    }
}

static void cyc_chunk(struct bench *b, struct conn *c, const uint8_t *p, size_t n, bool first,
                      bool last)
{
    (void)p;
    (void)n;
    (void)first;
    if (b->o.raw && last)
        conn_kill(b, c, true);
}

static void cyc_close(struct bench *b, struct conn *c, bool clean)
{
    struct cyc *y = b->mode_state;
    bool done = clean && (c->state == CS_DRAIN || (b->o.raw && c->state == CS_OPEN));
    if (!y->measuring)
        return;
    if (done) {
        y->cycles++;
        hist_add(&y->lat, (uint64_t)(b->now - c->t_start));
    } else {
        y->failed++;
    }
}

static void cyc_tick(struct bench *b)
{
    struct cyc *y = b->mode_state;
    if (!y->running)
        return;
    /* Bounded per turn, so a failing connect() cannot spin here. */
    for (unsigned i = 0; i < b->o.conns && b->nactive - b->ndead < b->o.conns; i++)
        if (!bench_connect(b, false))
            break;
}

int run_connect(struct bench *b)
{
    struct cyc *y = calloc(1, sizeof *y);
    size_t s = b->o.size;
    if (!y || !(y->payload = calloc(1, s ? s : 1))) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    b->mode_state = y;
    struct bench_mode m = {
        .out_cap = conn_msg_size(b, s) + 1024,
        .on_open = cyc_open,
        .on_chunk = cyc_chunk,
        .on_close = cyc_close,
        .tick = cyc_tick,
    };
    if (bench_init(b, 2 * b->o.conns, &m) < 0)
        return 1;
    struct proc_sample a, z;
    proc_sample(b, &a);
    b->now = a.wall;
    y->running = y->measuring = true;
    bench_run(b, a.wall + (int64_t)b->o.duration * 1000000000LL, NULL);
    proc_sample(b, &z);
    y->running = y->measuring = false;

    struct report r = { .mode = "connect", .msgs = y->cycles, .lat = &y->lat };
    report_cpu(&r, &a, &z);
    r.errors = y->failed;
    r.extra_k[0] = "conns";
    r.extra_v[0] = b->o.conns;
    r.extra_k[1] = "connect_errors";
    r.extra_v[1] = (double)b->connect_errors;
    r.extra_k[2] = "handshake_errors";
    r.extra_v[2] = (double)b->hs_errors;
    r.extra_k[3] = "timeouts";
    r.extra_v[3] = (double)b->timeouts;
    report_print(b, &r);
    free(y->payload);
    free(y);
    return 0;
}

static void idle_open(struct bench *b, struct conn *c)
{
    app_open(b, c);
}

static void idle_chunk(struct bench *b, struct conn *c, const uint8_t *p, size_t n, bool first,
                       bool last)
{
    struct cyc *y = b->mode_state;
    const uint8_t *m;
    size_t mn;
    int64_t t;
    uint64_t seq;
    if (app_assemble(c, p, n, first, last, &m, &mn) &&
        app_message(b, c, m, mn, &t, &seq) == APP_READY)
        y->ready++;
}

static void idle_close(struct bench *b, struct conn *c, bool clean)
{
    struct cyc *y = b->mode_state;
    (void)clean;
    if (c->phase == PH_READY && y->ready > 0)
        y->ready--;
}

/* --proto: runs until every open connection is subscribed, or `until`. */
static void idle_wait_ready(struct bench *b, int64_t until)
{
    struct cyc *y = b->mode_state;
    if (b->o.proto == PROTO_RELAY)
        return;
    while (y->ready < b->nopen && now_ns() < until)
        bench_run(b, now_ns() + 10000000LL, NULL);
}

static long self_rss_kb(void)
{
    return server_rss_kb(0);
}

int run_idle(struct bench *b)
{
    struct cyc *y = calloc(1, sizeof *y);
    if (!y) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    b->mode_state = y;
    struct bench_mode m = { .out_cap = 1024 };
    if (b->o.proto != PROTO_RELAY) {
        m.on_open = idle_open;
        m.on_chunk = idle_chunk;
        m.on_close = idle_close;
    }
    uint32_t slots = b->o.conns > b->o.warmup ? b->o.conns : b->o.warmup;
    if (bench_init(b, slots, &m) < 0)
        return 1;
    long pid = b->o.server_pid;
    uint32_t warm = 0;
    if (pid && b->o.warmup > 0) {
        int64_t t0 = now_ns();
        warm = bench_ramp(b, b->o.warmup, t0 + 30000000000LL);
        idle_wait_ready(b, now_ns() + 10000000000LL);
        bench_close_all(b, now_ns() + 5000000000LL);
        bench_run(b, now_ns() + BENCH_WARMUP_SETTLE, NULL);
    }
    long rss0 = pid ? server_rss_kb(pid) : 0;
    long anon0 = pid ? proc_status_kb(pid, "RssAnon:") : 0;
    struct proc_sample a, z;
    proc_sample(b, &a);
    /* A ramp of up to 120 s: 10,000 connections take about one. */
    uint32_t open = bench_ramp(b, b->o.conns, a.wall + BENCH_MAX_SECONDS * 1000000000LL);
    idle_wait_ready(b, now_ns() + 30000000000LL);
    proc_sample(b, &z);
    double ramp_s = (double)(z.wall - a.wall) / 1e9;
    /* Settle: let the server finish per-connection allocations. */
    int64_t settle = now_ns() + 1500000000LL;
    bench_run(b, settle, NULL);
    long rss1 = pid ? server_rss_kb(pid) : 0;
    long anon1 = pid ? proc_status_kb(pid, "RssAnon:") : 0;
    uint32_t still = b->nopen;

    struct report r = { .mode = "idle", .msgs = open };
    report_cpu(&r, &a, &z);
    r.seconds = ramp_s;
    r.rate = ramp_s > 0 ? open / ramp_s : 0;
    r.errors = bench_errors(b);
    r.server_rss_kb = rss1;
    r.extra_k[0] = "conns";
    r.extra_v[0] = open;
    r.extra_k[1] = "still_open";
    r.extra_v[1] = still;
    r.extra_k[2] = "server_rss_before_kb";
    r.extra_v[2] = (double)rss0;
    r.extra_k[3] = "server_rss_after_kb";
    r.extra_v[3] = (double)rss1;
    r.extra_k[4] = "server_bytes_per_conn";
    r.extra_v[4] = open && pid ? (double)(rss1 - rss0) * 1024.0 / open : 0;
    r.extra_k[5] = "bench_rss_kb";
    r.extra_v[5] = (double)self_rss_kb();
    r.extra_k[6] = "server_anon_before_kb";
    r.extra_v[6] = (double)anon0;
    r.extra_k[7] = "server_anon_after_kb";
    r.extra_v[7] = (double)anon1;
    r.extra_k[8] = "server_anon_bytes_per_conn";
    r.extra_v[8] = open && pid ? (double)(anon1 - anon0) * 1024.0 / open : 0;
    r.extra_k[9] = "warmup_conns";
    r.extra_v[9] = warm;
    if (b->o.proto != PROTO_RELAY) {
        r.extra_k[10] = "subscribed";
        r.extra_v[10] = y->ready;
    }
    report_print(b, &r);
    free(y);
    return 0;
}
