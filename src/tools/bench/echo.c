/* wshub-bench echo: N connections, each with P messages of S bytes in
 * flight. Replies come back in order, so each connection keeps the send
 * times of its outstanding messages in a ring indexed by sequence number.
 * Payloads are an a-z filler, or with --payload json a compressible
 * JSON array of records (for --deflate). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "bench.h"

#define WARMUP_NS 500000000LL
#define SEQ_HDR   16 /* hex sequence number near the start of each payload */
#define JSON_SEQ  9  /* --payload json: offset of the number, after [{"seq":" */

struct echo {
    uint8_t *payload; /* template; the sequence number is patched per send */
    size_t seq_off;   /* where the 16 hex digits go */
    size_t hdr_len;   /* seq_off + SEQ_HDR: compared exactly, the rest summed */
    uint64_t body_sum;
    bool measuring;
    bool sending;
    uint64_t msgs;
    uint64_t bad;
    struct hist lat;
};

/* Eight hex digits of x as eight ASCII bytes in a word, most significant
 * digit first in memory. Each nibble is spread into a byte of its own,
 * then '0' is added, and 'a' - '0' - 10 more where the nibble is 10 or
 * over (a nibble + 6 carries into bit 4 exactly then): a handful of
 * instructions where a digit loop took a hundred, twice per message. */
static uint64_t hex8(uint32_t x)
{
    uint64_t v = x;
    v = (v | v << 16) & 0x0000FFFF0000FFFFull;
    v = (v | v << 8) & 0x00FF00FF00FF00FFull;
    v = (v | v << 4) & 0x0F0F0F0F0F0F0F0Full; /* byte i holds nibble i */
    uint64_t high = ((v + 0x0606060606060606ull) >> 4) & 0x0101010101010101ull;
    v += 0x3030303030303030ull + high * ('a' - '0' - 10);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v); /* nibble 7 to the lowest address */
#endif
    return v;
}

static void put_hex(uint8_t out[SEQ_HDR], uint64_t v)
{
    uint64_t hi = hex8((uint32_t)(v >> 32)), lo = hex8((uint32_t)v);
    memcpy(out, &hi, 8);
    memcpy(out + 8, &lo, 8);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BYTE_SUM_WIDE 1
#include <immintrin.h>

/* Wide bodies for large payloads: the sum runs over every received
 * message, 1,024 steps of the 16-byte loop at 16 KiB, in a cell where the
 * bench, not the server, is the bottleneck (bench/README.md). */
__attribute__((target("avx512bw"))) static uint64_t sum_avx512(const uint8_t *p, size_t n,
                                                               size_t *done)
{
    __m512i acc = _mm512_setzero_si512();
    const __m512i zero = _mm512_setzero_si512();
    /* Up to the next 64-byte line byte by byte, then aligned loads: a
     * reply's payload starts wherever its header ended. */
    size_t i = 0, head = (64u - ((uintptr_t)p & 63u)) & 63u;
    uint64_t s = 0;
    for (; i < head; i++)
        s += p[i];
    for (; i + 64 <= n; i += 64)
        acc = _mm512_add_epi64(acc, _mm512_sad_epu8(_mm512_load_si512(p + i), zero));
    *done = i;
    return s + (uint64_t)_mm512_reduce_add_epi64(acc);
}

__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint8_t *p, size_t n, size_t *done)
{
    __m256i acc = _mm256_setzero_si256();
    const __m256i zero = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        acc = _mm256_add_epi64(
            acc, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i *)(const void *)(p + i)), zero));
    *done = i;
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)(void *)lanes, acc);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
#endif

/* Byte sum: order-blind, but together with the length and the sequence
 * header it catches truncation, duplication and corruption, and it runs at
 * memory speed. */
static uint64_t byte_sum(const uint8_t *p, size_t n)
{
    uint64_t s = 0;
    size_t i = 0;
#ifdef BYTE_SUM_WIDE
    if (n >= 256) {
        if (__builtin_cpu_supports("avx512bw"))
            s = sum_avx512(p, n, &i);
        else if (__builtin_cpu_supports("avx2"))
            s = sum_avx2(p, n, &i);
    }
#endif
#if defined(__SSE2__)
    /* psadbw against zero sums 16 bytes per instruction. */
    __m128i acc = _mm_setzero_si128();
    const __m128i zero = _mm_setzero_si128();
    for (; i + 16 <= n; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
        acc = _mm_add_epi64(acc, _mm_sad_epu8(v, zero));
    }
    s += (uint64_t)_mm_cvtsi128_si64(acc) +
         (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(acc, acc));
#endif
    for (; i < n; i++)
        s += p[i];
    return s;
}

/* A JSON array of exactly s >= 64 bytes: a header record holding the
 * sequence number, then records with repeated keys and varying values from
 * a fixed LCG (deterministic), then spaces to fill, then ']'. */
static void make_json(uint8_t *p, size_t s)
{
    static const char *const tags[] = { "alpha", "beta", "gamma", "delta", "omega", "sigma" };
    static const char head[] = "[{\"seq\":\"0000000000000000\"}";
    size_t n = sizeof head - 1;
    memcpy(p, head, n);
    uint32_t x = 0x12345678u;
    for (unsigned i = 0;; i++) {
        char rec[256];
        x = x * 1664525u + 1013904223u;
        uint32_t y = x * 1664525u + 1013904223u;
        int k = snprintf(rec, sizeof rec,
                         ",{\"id\":%u,\"user\":\"user%04" PRIu32 "\",\"score\":%" PRIu32
                         ".%02" PRIu32 ",\"active\":%s,\"tags\":[\"%s\",\"%s\"],"
                         "\"ts\":%" PRIu32 "}",
                         i, (x >> 8) % 10000, (y >> 9) % 1000, (y >> 3) % 100,
                         (x >> 20) & 1 ? "true" : "false", tags[(x >> 24) % 6], tags[(y >> 24) % 6],
                         1700000000u + (y >> 12) % 1000000);
        if (k < 0 || n + (size_t)k + 1 > s)
            break;
        memcpy(p + n, rec, (size_t)k);
        n += (size_t)k;
    }
    memset(p + n, ' ', s - 1 - n);
    p[s - 1] = ']';
}

static void send_one(struct bench *b, struct conn *c)
{
    struct echo *e = b->mode_state;
    size_t s = b->o.size;
    if (s >= e->hdr_len)
        put_hex(e->payload + e->seq_off, c->sent_seq);
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
    size_t hdr = e->hdr_len;
    if (pos < hdr) {
        size_t k = hdr - pos < n ? hdr - pos : n;
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
    if (ok && s >= hdr) {
        uint8_t want[sizeof c->msg_hdr];
        memcpy(want, e->payload, hdr);
        put_hex(want + e->seq_off, c->recv_seq);
        ok = memcmp(want, c->msg_hdr, hdr) == 0 && c->msg_sum == e->body_sum;
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
        free(e);
        return 1;
    }
    /* ASCII so that text frames are valid UTF-8. */
    if (b->o.payload == PAYLOAD_JSON) {
        make_json(e->payload, s); /* main.c ensures s >= 64 */
        e->seq_off = JSON_SEQ;
    } else {
        for (size_t i = 0; i < s; i++)
            e->payload[i] = (uint8_t)('a' + i % 26);
    }
    e->hdr_len = e->seq_off + SEQ_HDR;
    e->body_sum = s > e->hdr_len ? byte_sum(e->payload + e->hdr_len, s - e->hdr_len) : 0;
    b->mode_state = e;
    struct bench_mode m = {
        .out_cap = b->o.pipeline * (conn_msg_size(b, s) + 8) + 256,
        .on_open = echo_open,
        .on_chunk = echo_chunk,
    };
    if (bench_init(b, b->o.conns, &m) < 0) {
        free(e->payload);
        free(e);
        return 1;
    }

    /* Connections stay idle until all are open: the ramp is not measured. */
    int64_t t = now_ns();
    uint32_t open = bench_ramp(b, b->o.conns, t + 60000000000LL);
    if (open == 0) {
        bench_explain_failure(b, "no connection could be opened");
        /* Still one report, so that --json readers see the errors. */
        struct report r = { .mode = "echo", .errors = bench_errors(b) };
        report_print(b, &r);
        free(e->payload);
        free(e);
        return 1;
    }
#ifdef WSH_BENCH_URING
    if (b->o.engine != ENGINE_EPOLL && !b->o.tls && !bench_uring_start(b) &&
        b->o.engine == ENGINE_URING) {
        free(e->payload);
        free(e);
        return 1;
    }
#endif
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
    r.errors = e->bad + bench_errors(b);
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
