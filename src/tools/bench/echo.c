/* wshub-bench echo: N connections, each with P messages of S bytes in
 * flight. Replies come back in order, so each connection keeps the send
 * times of its outstanding messages in a ring indexed by sequence number. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "bench.h"

#define WARMUP_NS 500000000LL
#define SEQ_HDR   16 /* hex sequence number at the start of each payload */

struct echo {
    uint8_t *payload; /* template; the first 16 bytes are patched per send */
    uint64_t body_sum;
    bool measuring;
    bool sending;
    uint64_t msgs;
    uint64_t bad;
    struct hist lat;
};

static void put_hex(uint8_t out[SEQ_HDR], uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = SEQ_HDR - 1; i >= 0; i--) {
        out[i] = (uint8_t)hex[v & 15];
        v >>= 4;
    }
}

/* Byte sum: order-blind, but together with the length and the sequence
 * header it catches truncation, duplication and corruption, and it runs at
 * memory speed once the compiler vectorises it. */
static uint64_t byte_sum(const uint8_t *p, size_t n)
{
    uint64_t s = 0;
    size_t i = 0;
#if defined(__SSE2__)
    /* psadbw against zero sums 16 bytes per instruction. */
    __m128i acc = _mm_setzero_si128();
    const __m128i zero = _mm_setzero_si128();
    for (; i + 16 <= n; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
        acc = _mm_add_epi64(acc, _mm_sad_epu8(v, zero));
    }
    s = (uint64_t)_mm_cvtsi128_si64(acc) +
        (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(acc, acc));
#endif
    for (; i < n; i++)
        s += p[i];
    return s;
}

static void send_one(struct bench *b, struct conn *c)
{
    struct echo *e = b->mode_state;
    size_t s = b->o.size;
    if (s >= SEQ_HDR)
        put_hex(e->payload, c->sent_seq);
    unsigned op = b->o.binary ? WSH_OP_BINARY : WSH_OP_TEXT;
    if (!conn_send_msg(b, c, op, e->payload, s)) {
        /* Cannot happen: out_cap holds a full pipeline. */
        e->bad++;
        conn_kill(b, c, false);
        return;
    }
    c->ring[c->sent_seq % b->o.pipeline] = b->now;
    c->sent_seq++;
}

static void echo_open(struct bench *b, struct conn *c)
{
    if (!c->ring) {
        c->ring = calloc(b->o.pipeline, sizeof *c->ring);
        if (!c->ring) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
    }
    struct echo *e = b->mode_state;
    for (unsigned i = 0; i < b->o.pipeline && e->sending; i++)
        send_one(b, c);
}

static void echo_chunk(struct bench *b, struct conn *c, const uint8_t *p, size_t n, bool first,
                       bool last)
{
    struct echo *e = b->mode_state;
    if (first) {
        c->msg_pos = 0;
        c->msg_sum = 0;
    }
    size_t pos = c->msg_pos;
    if (pos < SEQ_HDR) {
        size_t k = SEQ_HDR - pos < n ? SEQ_HDR - pos : n;
        memcpy(c->msg_hdr + pos, p, k);
        c->msg_sum += byte_sum(p + k, n - k);
    } else {
        c->msg_sum += byte_sum(p, n);
    }
    c->msg_pos = pos + n;
    if (!last)
        return;

    size_t s = b->o.size;
    bool ok = c->msg_pos == s && c->recv_seq < c->sent_seq;
    if (ok && s >= SEQ_HDR) {
        uint8_t want[SEQ_HDR];
        put_hex(want, c->recv_seq);
        ok = memcmp(want, c->msg_hdr, SEQ_HDR) == 0 && c->msg_sum == e->body_sum;
    } else if (ok) {
        ok = memcmp(e->payload, c->msg_hdr, s) == 0;
    }
    if (!ok) {
        e->bad++;
        conn_kill(b, c, false);
        return;
    }
    if (e->measuring) {
        hist_add(&e->lat, (uint64_t)(b->now - c->ring[c->recv_seq % b->o.pipeline]));
        e->msgs++;
    }
    c->recv_seq++;
    if (e->sending)
        send_one(b, c);
}

int run_echo(struct bench *b)
{
    struct echo *e = calloc(1, sizeof *e);
    size_t s = b->o.size;
    if (!e || !(e->payload = malloc(s ? s : 1))) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    /* ASCII so that text frames are valid UTF-8. */
    for (size_t i = 0; i < s; i++)
        e->payload[i] = (uint8_t)('a' + i % 26);
    e->body_sum = s > SEQ_HDR ? byte_sum(e->payload + SEQ_HDR, s - SEQ_HDR) : 0;
    b->mode_state = e;
    struct bench_mode m = {
        .out_cap = b->o.pipeline * (conn_msg_size(b, s) + 8) + 256,
        .on_open = echo_open,
        .on_chunk = echo_chunk,
    };
    if (bench_init(b, b->o.conns, &m) < 0)
        return 1;

    /* Connections stay idle until all are open: the ramp is not measured. */
    int64_t t = now_ns();
    uint32_t open = bench_ramp(b, b->o.conns, t + 60000000000LL);
    if (open == 0) {
        fprintf(stderr,
                "no connection could be opened (connect errors %llu, handshake errors %llu, "
                "timeouts %llu)\n",
                (unsigned long long)b->connect_errors, (unsigned long long)b->hs_errors,
                (unsigned long long)b->timeouts);
        return 1;
    }
    e->sending = true;
    for (uint32_t i = 0; i < b->nconns; i++)
        if (b->conns[i].state == CS_OPEN)
            echo_open(b, &b->conns[i]);
    b->now = now_ns();
    bench_run(b, b->now + WARMUP_NS, NULL);

    struct proc_sample a, z;
    proc_sample(b, &a);
    e->measuring = true;
    bench_run(b, a.wall + (int64_t)b->o.duration * 1000000000LL, NULL);
    e->measuring = false;
    proc_sample(b, &z);
    e->sending = false;

    struct report r = { .mode = "echo", .msgs = e->msgs, .lat = &e->lat };
    report_cpu(&r, &a, &z);
    r.errors =
        e->bad + b->connect_errors + b->hs_errors + b->proto_errors + b->io_errors + b->timeouts;
    r.extra_k[0] = "conns";
    r.extra_v[0] = open;
    r.extra_k[1] = "pipeline";
    r.extra_v[1] = b->o.pipeline;
    r.extra_k[2] = "size";
    r.extra_v[2] = (double)s;
    r.extra_k[3] = "bad_echo";
    r.extra_v[3] = (double)e->bad;
    r.extra_k[4] = "mbit_s";
    r.extra_v[4] = r.rate * (double)s * 16.0 / 1e6; /* both directions */
    report_print(b, &r);
    free(e->payload);
    free(e);
    return 0;
}
