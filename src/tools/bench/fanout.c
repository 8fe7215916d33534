/* wshub-bench fanout: N subscribers and one publisher on one channel.
 * Each message starts with its send time and sequence number (16 bytes,
 * host order: both ends are this process), so delivery latency and loss are
 * measured per subscriber without any per-message state in the publisher.
 *
 * Pacing. --rate R > 0: the publisher sends what the clock says is due,
 * checked every loop turn (<= 1 ms). --rate 0: the publisher keeps at most
 * `window` messages that have not yet reached EVERY live subscriber. A
 * per-sequence counter ring (window entries) counts deliveries; the oldest
 * message retires when all subscribers have it (or have skipped past it,
 * which is loss). Gating on every subscriber rather than the first keeps the
 * server's queues short, so the number measured is sustainable throughput,
 * not the speed of one fast reader while the rest fall behind and are
 * dropped. If nothing retires for 1 s (a lost message never arrives), the
 * oldest is retired by force and counted in "stalls".
 *
 * --proto ws / socketio (app.c): the same over wshub's /ws JSON channels or
 * Socket.IO rooms. Every connection first completes the application
 * handshake (connect + subscribe, or join); a subscriber counts from then
 * on, and the publisher starts when all are in. The time and sequence
 * number travel as the JSON payload {"t":..,"s":..,"p":"aaa.."}, padded to
 * -s bytes. Replies (connected, subscribed, ack) are never counted as
 * deliveries; error replies are errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define FAN_HDR   16
#define STALL_NS  1000000000LL
#define DRAIN_NS  2000000000LL
#define PUB_QUEUE 512 /* messages the publisher's buffer can hold */

struct fan {
    uint8_t *payload;
    size_t payload_cap;
    struct conn *pub;
    bool pub_open;
    bool publishing;
    uint32_t subs; /* subscribers at the start */
    uint32_t subs_alive;
    uint64_t sent;
    uint64_t received;
    uint64_t gaps; /* messages a subscriber skipped */
    uint64_t dups; /* sequence went backwards */
    uint64_t bad;
    uint64_t stalls;
    /* --rate 0 window. */
    uint32_t *cnt;
    uint32_t wmask;
    uint64_t done;
    int64_t last_progress;
    int64_t t0, t_last_rx;
    struct hist lat;
};

/* The connection is a member of the fan-out from now on. */
static void fan_ready(struct fan *f, struct conn *c)
{
    c->phase = PH_READY;
    if (c->role_pub) {
        f->pub = c;
        f->pub_open = true;
    } else {
        f->subs_alive++;
    }
}

static void fan_open(struct bench *b, struct conn *c)
{
    if (b->o.proto == PROTO_RELAY)
        fan_ready(b->mode_state, c);
    else
        app_open(b, c);
}

static void account(struct fan *f, uint64_t from, uint64_t to)
{
    if (!f->cnt)
        return;
    if (from < f->done)
        from = f->done;
    for (uint64_t x = from; x <= to && x < f->sent; x++)
        f->cnt[x & f->wmask]++;
}

static void deliver(struct bench *b, struct fan *f, struct conn *c, int64_t ts, uint64_t seq)
{
    if (seq >= f->sent) {
        f->bad++;
        return;
    }
    if (seq < c->next_seq) {
        f->dups++;
        return;
    }
    f->gaps += seq - c->next_seq;
    account(f, c->next_seq, seq);
    c->next_seq = seq + 1;
    f->received++;
    f->t_last_rx = b->now;
    hist_add(&f->lat, (uint64_t)(b->now - ts));
}

static void app_chunk(struct bench *b, struct fan *f, struct conn *c, const uint8_t *p, size_t n,
                      bool first, bool last)
{
    const uint8_t *m;
    size_t mn;
    int64_t ts = 0;
    uint64_t seq = 0;
    if (!app_assemble(c, p, n, first, last, &m, &mn))
        return;
    switch (app_message(b, c, m, mn, &ts, &seq)) {
    case APP_READY:
        fan_ready(f, c);
        break;
    case APP_DATA:
        /* The publisher may get its own messages back: not deliveries. */
        if (!c->role_pub && c->phase == PH_READY)
            deliver(b, f, c, ts, seq);
        break;
    default:
        break;
    }
}

static void fan_chunk(struct bench *b, struct conn *c, const uint8_t *p, size_t n, bool first,
                      bool last)
{
    struct fan *f = b->mode_state;
    if (b->o.proto != PROTO_RELAY) {
        app_chunk(b, f, c, p, n, first, last);
        return;
    }
    if (c->role_pub)
        return; /* the server does not relay to the sender; ignore anyway */
    if (first)
        c->msg_pos = 0;
    if (c->msg_pos < FAN_HDR) {
        size_t k = FAN_HDR - c->msg_pos < n ? FAN_HDR - c->msg_pos : n;
        memcpy(c->msg_hdr + c->msg_pos, p, k);
    }
    c->msg_pos += n;
    if (!last)
        return;
    if (c->msg_pos != b->o.size) {
        f->bad++;
        return;
    }
    int64_t ts;
    uint64_t seq;
    memcpy(&ts, c->msg_hdr, 8);
    memcpy(&seq, c->msg_hdr + 8, 8);
    deliver(b, f, c, ts, seq);
}

static void fan_close(struct bench *b, struct conn *c, bool clean)
{
    struct fan *f = b->mode_state;
    (void)clean;
    if (c->role_pub) {
        f->pub = NULL;
        f->publishing = false;
    } else if (c->phase == PH_READY && f->subs_alive > 0) {
        f->subs_alive--;
    }
}

static void retire(struct fan *f, int64_t now)
{
    while (f->done < f->sent && f->cnt[f->done & f->wmask] >= f->subs_alive) {
        f->cnt[f->done & f->wmask] = 0;
        f->done++;
        f->last_progress = now;
    }
    if (f->done < f->sent && now - f->last_progress > STALL_NS) {
        f->cnt[f->done & f->wmask] = 0;
        f->done++;
        f->stalls++;
        f->last_progress = now;
    }
}

static bool publish_one(struct bench *b, struct fan *f)
{
    int64_t now = b->now;
    if (b->o.proto != PROTO_RELAY) {
        size_t n = app_publish(b, f->payload, f->payload_cap, now, f->sent);
        if (!conn_send_msg(b, f->pub, WSH_OP_TEXT, f->payload, n))
            return false;
        f->sent++;
        return true;
    }
    memcpy(f->payload, &now, 8);
    memcpy(f->payload + 8, &f->sent, 8);
    if (!conn_send_msg(b, f->pub, WSH_OP_BINARY, f->payload, b->o.size))
        return false;
    f->sent++;
    return true;
}

static void fan_tick(struct bench *b)
{
    struct fan *f = b->mode_state;
    if (f->cnt)
        retire(f, b->now);
    if (!f->publishing || !f->pub || f->pub->state != CS_OPEN)
        return;
    if (b->o.rate > 0) {
        uint64_t due = (uint64_t)((double)(b->now - f->t0) * b->o.rate / 1e9);
        while (f->sent < due && publish_one(b, f)) {
        }
    } else {
        while (f->sent - f->done < b->o.window && publish_one(b, f)) {
        }
    }
}

static bool all_delivered(const struct fan *f)
{
    return f->received + f->gaps >= f->sent * f->subs_alive;
}

int run_fanout(struct bench *b)
{
    struct fan *f = calloc(1, sizeof *f);
    size_t s = b->o.size;
    size_t msg = b->o.proto == PROTO_RELAY ? s : app_publish_cap(b);
    if (f)
        f->payload_cap = msg;
    if (!f || !(f->payload = malloc(msg))) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < s; i++)
        f->payload[i] = (uint8_t)('a' + i % 26);
    if (b->o.rate == 0) {
        uint32_t w = 1;
        while (w < b->o.window)
            w <<= 1;
        f->cnt = calloc(w, sizeof *f->cnt);
        if (!f->cnt) {
            fprintf(stderr, "out of memory\n");
            return 1;
        }
        f->wmask = w - 1;
    }
    b->mode_state = f;
    struct bench_mode m = {
        /* Subscribers send only the handshake, pongs and the close. */
        .out_cap = 4096,       .pub_out_cap = PUB_QUEUE * conn_msg_size(b, msg) + 256,
        .on_open = fan_open,   .on_chunk = fan_chunk,
        .on_close = fan_close, .tick = fan_tick,
    };
    if (bench_init(b, b->o.conns + 1, &m) < 0)
        return 1;

    int64_t t = now_ns();
    bench_ramp(b, b->o.conns, t + 60000000000LL);
    /* --proto ws/socketio: wait until every open subscriber is in. */
    int64_t ready_end = now_ns() + 30000000000LL;
    while (f->subs_alive < b->nopen && now_ns() < ready_end)
        bench_run(b, now_ns() + 10000000LL, NULL);
    if (f->subs_alive == 0) {
        bench_explain_failure(b, "no subscriber could be opened");
        return 1;
    }
    if (!bench_connect(b, true)) {
        fprintf(stderr, "publisher: connect failed\n");
        return 1;
    }
    b->now = now_ns();
    bench_run(b, b->now + BENCH_HS_TIMEOUT, &f->pub_open);
    if (!f->pub_open) {
        fprintf(stderr, "publisher: handshake failed\n");
        return 1;
    }
    /* Let the server finish registering the last subscribers. */
    bench_run(b, now_ns() + 200000000LL, NULL);

    f->subs = f->subs_alive;
    struct proc_sample a, z;
    proc_sample(b, &a);
    f->t0 = f->last_progress = b->now = a.wall;
    f->publishing = true;
    bench_run(b, a.wall + (int64_t)b->o.duration * 1000000000LL, NULL);
    f->publishing = false;
    int64_t pub_end = now_ns();
    /* Drain what is still in flight, bounded. */
    int64_t drain_end = pub_end + DRAIN_NS;
    while (!all_delivered(f) && now_ns() < drain_end)
        bench_run(b, now_ns() + 10000000LL, NULL);
    proc_sample(b, &z);

    uint64_t expected = f->sent * f->subs;
    double span = (double)((f->t_last_rx > f->t0 ? f->t_last_rx : pub_end) - f->t0) / 1e9;
    struct report r = { .mode = "fanout", .msgs = f->received, .lat = &f->lat };
    report_cpu(&r, &a, &z);
    r.seconds = span;
    r.rate = span > 0 ? (double)f->received / span : 0;
    r.errors = f->bad + f->dups + bench_errors(b);
    r.extra_k[0] = "subscribers";
    r.extra_v[0] = f->subs;
    r.extra_k[1] = "size";
    r.extra_v[1] = (double)s;
    r.extra_k[2] = "published";
    r.extra_v[2] = (double)f->sent;
    r.extra_k[3] = "publish_rate";
    r.extra_v[3] = (double)f->sent / ((double)(pub_end - f->t0) / 1e9);
    r.extra_k[4] = "expected";
    r.extra_v[4] = (double)expected;
    r.extra_k[5] = "lost";
    r.extra_v[5] = (double)(expected > f->received ? expected - f->received : 0);
    r.extra_k[6] = "subs_lost";
    r.extra_v[6] = (double)(f->subs - f->subs_alive);
    r.extra_k[7] = "stalls";
    r.extra_v[7] = (double)f->stalls;
    r.extra_k[8] = "not_ready";
    r.extra_v[8] = (double)b->opened - 1 - (double)f->subs;
    report_print(b, &r);
    free(f->cnt);
    free(f->payload);
    free(f);
    return 0;
}
