/* Unit tests for the frame parser and writer (src/ws/frame.c): RFC 6455
 * 5.7 examples, every length boundary, every framing rule, UTF-8 across
 * fragments, limits, and the writer round trip. Each parser vector is fed
 * whole, byte by byte and split at every offset from a guard-page buffer,
 * and the normalised event logs must be identical. */
/* MAP_ANONYMOUS is not in strict C17. */
#define _DEFAULT_SOURCE

/* cmocka.h needs the standard headers before it. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>
/* clang-format on */

#include "wshub/ws.h"

/* ------------------------------------------------------------------ */
/* Guard-page input buffer (picohttpparser test.c): the bytes handed to
 * the parser end right before a PROT_NONE page, so any over-read faults. */

struct guard {
    uint8_t *mem;
    size_t cap, map;
};

static void guard_init(struct guard *g, size_t cap)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    g->cap = (cap + page - 1) / page * page + page;
    g->map = g->cap + page;
    void *m = mmap(NULL, g->map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(m != MAP_FAILED);
    g->mem = m;
    assert_int_equal(mprotect(g->mem + g->cap, page, PROT_NONE), 0);
}

static void guard_free(struct guard *g)
{
    munmap(g->mem, g->map);
}

static uint8_t *guard_put(struct guard *g, const uint8_t *src, size_t n)
{
    assert_true(n <= g->cap);
    uint8_t *d = g->mem + g->cap - n;
    if (n != 0)
        memmove(d, src, n);
    return d;
}

/* ------------------------------------------------------------------ */
/* Normalised event log. Data is logged per message as T(hex) / B(hex)
 * ('!' after the letter when RSV1 is set), so chunking does not show;
 * control frames as P(hex), Q(hex), C<code>(hex); a fatal error as
 * E<close code>, dropping the partial message it interrupted. */

struct log {
    char *s;
    size_t n, cap, msg_start;
    bool in_msg;
};

static void log_put(struct log *l, const char *s)
{
    size_t k = strlen(s);
    if (l->n + k + 1 > l->cap) {
        l->cap = (l->n + k + 1) * 2;
        l->s = realloc(l->s, l->cap);
        assert_non_null(l->s);
    }
    memcpy(l->s + l->n, s, k + 1);
    l->n += k;
}

static void log_hex(struct log *l, const uint8_t *p, size_t n)
{
    char tmp[3];
    for (size_t i = 0; i < n; i++) {
        snprintf(tmp, sizeof(tmp), "%02x", p[i]);
        log_put(l, tmp);
    }
}

struct cfg {
    enum wsh_role role;
    uint8_t rsv;
    struct wsh_limits lim;
};

static int status_of(uint16_t code)
{
    switch (code) {
    case 1007:
        return WSH_EUTF8;
    case 1009:
        return WSH_ETOOBIG;
    case 1008:
        return WSH_EPOLICY;
    default:
        return WSH_EPROTO;
    }
}

/* Feeds v[0..n) in chunks ending at cuts[0..ncuts) (then n), keeping
 * unconsumed bytes as a real caller would. Returns the log (malloc'd). */
static char *run_chunks(const struct cfg *c, const uint8_t *v, size_t n, const size_t *cuts,
                        size_t ncuts)
{
    struct wsh_parser p;
    wsh_parser_init(&p, c->role, c->rsv);
    struct guard g;
    guard_init(&g, n + 16);
    uint8_t *hold = malloc(n + 1);
    assert_non_null(hold);
    size_t held = 0, pos = 0;
    struct log l = { NULL, 0, 0, 0, false };
    log_put(&l, "");
    bool failed = false, closed = false;

    for (size_t k = 0; k <= ncuts && !failed; k++) {
        size_t end = k < ncuts ? cuts[k] : n;
        if (end < pos)
            end = pos;
        memcpy(hold + held, v + pos, end - pos);
        held += end - pos;
        pos = end;
        uint8_t *buf = guard_put(&g, hold, held);
        size_t len = held;
        for (;;) {
            struct wsh_event ev;
            ssize_t r = wsh_parser_feed(&p, &c->lim, buf, len, &ev);
            if (r < 0) {
                assert_int_equal(r, status_of(p.close_code));
                /* The same error on every later call. */
                struct wsh_event ev2;
                assert_int_equal(wsh_parser_feed(&p, &c->lim, buf, len, &ev2), r);
                assert_int_equal(ev2.type, WSH_EV_NONE);
                if (l.in_msg)
                    l.n = l.msg_start;
                char tmp[16];
                snprintf(tmp, sizeof(tmp), "E%u", (unsigned)p.close_code);
                l.s[l.n] = '\0';
                log_put(&l, tmp);
                failed = true;
                break;
            }
            assert_true((size_t)r <= len);
            if (closed) {
                assert_int_equal(ev.type, WSH_EV_NONE);
                assert_int_equal((size_t)r, len);
            }
            if (ev.type != WSH_EV_NONE) {
                assert_true(ev.data >= buf && ev.data + ev.len <= buf + r);
            }
            char tmp[32];
            switch (ev.type) {
            case WSH_EV_DATA:
                if (ev.first) {
                    assert_false(l.in_msg);
                    l.msg_start = l.n;
                    snprintf(tmp, sizeof(tmp), "%c%s(", ev.opcode == WSH_OP_TEXT ? 'T' : 'B',
                             ev.rsv1 ? "!" : "");
                    log_put(&l, tmp);
                    l.in_msg = true;
                } else {
                    assert_true(l.in_msg);
                }
                assert_true(wsh_parser_in_message(&p) != ev.last);
                log_hex(&l, ev.data, ev.len);
                if (ev.last) {
                    log_put(&l, ")");
                    l.in_msg = false;
                }
                break;
            case WSH_EV_PING:
            case WSH_EV_PONG:
                log_put(&l, ev.type == WSH_EV_PING ? "P(" : "Q(");
                log_hex(&l, ev.data, ev.len);
                log_put(&l, ")");
                break;
            case WSH_EV_CLOSE:
                snprintf(tmp, sizeof(tmp), "C%u(", (unsigned)ev.close_code);
                log_put(&l, tmp);
                log_hex(&l, ev.data, ev.len);
                log_put(&l, ")");
                closed = true;
                break;
            case WSH_EV_NONE:
                break;
            }
            buf += r;
            len -= (size_t)r;
            if (r == 0 && ev.type == WSH_EV_NONE)
                break;
        }
        if (!failed) {
            memmove(hold, buf, len);
            held = len;
        }
    }
    free(hold);
    guard_free(&g);
    return l.s;
}

static char *run_whole(const struct cfg *c, const uint8_t *v, size_t n)
{
    return run_chunks(c, v, n, NULL, 0);
}

/* Feeds the vector whole, byte by byte, split at every offset (sampled
 * above 4 KiB, where the quadratic cost would dominate the suite), and in
 * pseudo-random chunks; every log must match expect. */
static void check_splits(const struct cfg *c, const uint8_t *v, size_t n, const char *expect)
{
    char *whole = run_whole(c, v, n);
    assert_string_equal(whole, expect);
    free(whole);

    size_t *cuts = malloc((n + 1) * sizeof(*cuts));
    assert_non_null(cuts);
    for (size_t i = 0; i < n; i++)
        cuts[i] = i + 1;
    char *bytes = run_chunks(c, v, n, cuts, n);
    assert_string_equal(bytes, expect);
    free(bytes);

    for (size_t k = 1; k < n; k++) {
        if (n > 4096 && k > 64 && k < n - 64 && k % 1021 != 0)
            continue;
        char *s = run_chunks(c, v, n, &k, 1);
        if (strcmp(s, expect) != 0)
            fail_msg("split at %zu of %zu: got %.200s want %.200s", k, n, s, expect);
        free(s);
    }

    uint32_t seed = 12345u + (uint32_t)n;
    for (int round = 0; round < 20 && n > 2; round++) {
        size_t nc = 0, at = 0;
        while (at < n) {
            seed = seed * 1103515245u + 12345u;
            at += 1 + (seed >> 16) % 19;
            cuts[nc++] = at < n ? at : n;
        }
        char *s = run_chunks(c, v, n, cuts, nc);
        assert_string_equal(s, expect);
        free(s);
    }
    free(cuts);
}

/* ------------------------------------------------------------------ */
/* Vector builders                                                      */

static const uint8_t test_key[4] = { 0x37, 0xfa, 0x21, 0x3d };

/* Appends one frame: b0 is the raw first byte; masked per the key. */
static size_t put_frame(uint8_t *out, unsigned b0, const void *payload, size_t len, bool masked)
{
    size_t h = wsh_frame_header_write(out, b0 & 0x0fu, (b0 & 0x80u) != 0, (b0 & 0x40u) != 0, len,
                                      masked ? test_key : NULL);
    out[0] = (uint8_t)b0; /* keep RSV2/RSV3 when a test sets them */
    if (len)
        memcpy(out + h, payload, len);
    if (masked)
        wsh_mask(out + h, len, test_key, 0);
    return h + len;
}

static char *hex_expect(const char *pre, const uint8_t *p, size_t n, const char *post)
{
    struct log l = { NULL, 0, 0, 0, false };
    log_put(&l, pre);
    log_hex(&l, p, n);
    log_put(&l, post);
    return l.s;
}

static const struct cfg server = { WSH_ROLE_SERVER, 0, { 0, 0 } };
static const struct cfg client = { WSH_ROLE_CLIENT, 0, { 0, 0 } };

#define CHECK(c, bytes, expect)                  \
    do {                                         \
        static const uint8_t v_[] = bytes;       \
        check_splits(c, v_, sizeof(v_), expect); \
    } while (0)
#define B(...)      \
    {               \
        __VA_ARGS__ \
    }

/* ------------------------------------------------------------------ */
/* RFC 6455 5.7 examples                                               */

static void test_frame_rfc_unmasked_hello(void **state)
{
    (void)state;
    CHECK(&client, B(0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f), "T(48656c6c6f)");
}

static void test_frame_rfc_masked_hello(void **state)
{
    (void)state;
    CHECK(&server, B(0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58),
          "T(48656c6c6f)");
}

static void test_frame_rfc_fragmented_hello(void **state)
{
    (void)state;
    CHECK(&client, B(0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f), "T(48656c6c6f)");
}

static void test_frame_rfc_ping_pong(void **state)
{
    (void)state;
    CHECK(&client, B(0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f), "P(48656c6c6f)");
    CHECK(&server, B(0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58),
          "Q(48656c6c6f)");
}

static void check_len(const struct cfg *c, unsigned b0, size_t len, bool masked)
{
    uint8_t *payload = malloc(len + 1);
    uint8_t *v = malloc(len + WSH_FRAME_HDR_MAX);
    assert_non_null(payload);
    assert_non_null(v);
    for (size_t i = 0; i < len; i++)
        payload[i] = (uint8_t)('a' + i % 26);
    size_t n = put_frame(v, b0, payload, len, masked);
    char *expect = hex_expect((b0 & 0x0f) == WSH_OP_TEXT ? "T(" : "B(", payload, len, ")");
    check_splits(c, v, n, expect);
    free(expect);
    free(v);
    free(payload);
}

static void test_frame_rfc_256_and_64k_binary(void **state)
{
    (void)state;
    uint8_t hdr[WSH_FRAME_HDR_MAX];
    assert_int_equal(wsh_frame_header_write(hdr, WSH_OP_BINARY, true, false, 256, NULL), 4);
    assert_memory_equal(hdr, ((uint8_t[]){ 0x82, 0x7e, 0x01, 0x00 }), 4);
    assert_int_equal(wsh_frame_header_write(hdr, WSH_OP_BINARY, true, false, 65536, NULL), 10);
    assert_memory_equal(hdr, ((uint8_t[]){ 0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0 }), 10);
    check_len(&client, 0x82, 256, false);
    check_len(&client, 0x82, 65536, false);
}

static void test_frame_length_boundaries(void **state)
{
    (void)state;
    static const size_t lens[] = { 0, 1, 125, 126, 127, 65535, 65536 };
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        check_len(&server, 0x81, lens[i], true);
        check_len(&client, 0x82, lens[i], false);
    }
}

static void test_frame_rejects_len_msb(void **state)
{
    (void)state;
    CHECK(&client, B(0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0), "E1002");
    CHECK(&client, B(0x82, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff), "E1002");
    /* Fails on the first length byte, before the rest arrive. */
    struct wsh_parser p;
    wsh_parser_init(&p, WSH_ROLE_CLIENT, 0);
    uint8_t in[] = { 0x82, 0x7f, 0x80 };
    struct wsh_event ev;
    assert_int_equal(wsh_parser_feed(&p, NULL, in, sizeof(in), &ev), WSH_EPROTO);
    assert_int_equal(p.close_code, 1002);
}

static void test_frame_rejects_non_minimal_length(void **state)
{
    (void)state;
    CHECK(&client, B(0x82, 0x7e, 0x00, 0x7d), "E1002");
    CHECK(&client, B(0x82, 0x7e, 0x00, 0x00), "E1002");
    CHECK(&client, B(0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0xff, 0xff), "E1002");
    CHECK(&client, B(0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4, 5), "E1002");
}

static void test_frame_rejects_too_big_before_payload(void **state)
{
    (void)state;
    struct cfg c = { WSH_ROLE_SERVER, 0, { 10, 0 } };
    /* Only the header: the limit is checked on the declared length. */
    CHECK(&c, B(0x81, 0x8b, 1, 2, 3, 4), "E1009");
    CHECK(&c, B(0x82, 0xfe, 0x01, 0x00), "E1009");
    CHECK(&c, B(0x82, 0xff, 0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0), "E1009");
    /* Over the limit only across fragments. */
    uint8_t v[64];
    size_t n = put_frame(v, 0x02, "123456", 6, true);
    n += put_frame(v + n, 0x80, "12345", 5, true);
    check_splits(&c, v, n, "E1009");
    n = put_frame(v, 0x02, "123456", 6, true);
    n += put_frame(v + n, 0x80, "1234", 4, true);
    check_splits(&c, v, n, "B(31323334353631323334)");
    /* Default limit: 65536 passes (test_frame_length_boundaries), 65537
     * does not. */
    CHECK(&client, B(0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 1), "E1009");
    struct wsh_parser p;
    wsh_parser_init(&p, WSH_ROLE_CLIENT, 0);
    uint8_t in[] = { 0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 1 };
    struct wsh_event ev;
    assert_int_equal(wsh_parser_feed(&p, NULL, in, sizeof(in), &ev), WSH_ETOOBIG);
    assert_int_equal(p.close_code, 1009);
}

/* The server reads its limits again at each frame, and a reload may
 * lower them under a message already past the new limit: the rest is
 * refused, not let through by a bound that wrapped below zero. */
static void test_frame_limit_lowered_mid_message(void **state)
{
    (void)state;
    struct wsh_parser p;
    wsh_parser_init(&p, WSH_ROLE_CLIENT, 0);
    struct wsh_limits big = { 20, 0 }, small = { 5, 0 };
    uint8_t first[] = { 0x02, 0x08, 1, 2, 3, 4, 5, 6, 7, 8 };
    uint8_t cont[] = { 0x80, 0x03, 9, 10, 11 };
    struct wsh_event ev;
    size_t off = 0;
    while (off < sizeof(first)) {
        ssize_t r = wsh_parser_feed(&p, &big, first + off, sizeof(first) - off, &ev);
        assert_true(r > 0);
        off += (size_t)r;
    }
    assert_true(wsh_parser_in_message(&p));
    assert_int_equal(wsh_parser_feed(&p, &small, cont, sizeof(cont), &ev), WSH_ETOOBIG);
    assert_int_equal(p.close_code, 1009);
}

static void test_frame_rejects_too_many_fragments(void **state)
{
    (void)state;
    struct cfg c = { WSH_ROLE_CLIENT, 0, { 0, 3 } };
    CHECK(&c, B(0x01, 0x01, 'a', 0x00, 0x01, 'b', 0x80, 0x01, 'c'), "T(616263)");
    CHECK(&c, B(0x01, 0x01, 'a', 0x00, 0x01, 'b', 0x00, 0x01, 'c', 0x80, 0x00), "E1008");
    /* The count restarts with each message. */
    CHECK(&c, B(0x01, 0x00, 0x00, 0x00, 0x80, 0x00, 0x02, 0x00, 0x00, 0x00, 0x80, 0x00), "T()B()");
}

static void test_frame_rejects_bad_masking(void **state)
{
    (void)state;
    CHECK(&server, B(0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f), "E1002");
    CHECK(&client, B(0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58), "E1002");
    CHECK(&server, B(0x89, 0x00), "E1002");
}

static void test_frame_rejects_bad_control(void **state)
{
    (void)state;
    /* 5.5: > 125 bytes, or fragmented. */
    CHECK(&client, B(0x89, 0x7e, 0x00, 0x7e), "E1002");
    CHECK(&client, B(0x8a, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0), "E1002");
    CHECK(&client, B(0x09, 0x00), "E1002");
    CHECK(&client, B(0x08, 0x00), "E1002");
    /* 125 is fine. */
    uint8_t v[200], pl[125];
    memset(pl, 'x', sizeof(pl));
    size_t n = put_frame(v, 0x89, pl, 125, false);
    char *e = hex_expect("P(", pl, 125, ")");
    check_splits(&client, v, n, e);
    free(e);
}

static void test_frame_rejects_reserved_bits(void **state)
{
    (void)state;
    CHECK(&client, B(0xc1, 0x00), "E1002");
    CHECK(&client, B(0xa1, 0x00), "E1002");
    CHECK(&client, B(0x91, 0x00), "E1002");
    struct cfg pmd = { WSH_ROLE_CLIENT, 0x40, { 0, 0 } };
    CHECK(&pmd, B(0xc1, 0x01, 'a'), "T!(61)");
    CHECK(&pmd, B(0x42, 0x01, 'a', 0x80, 0x01, 'b'), "B!(6162)");
    CHECK(&pmd, B(0x81, 0x01, 'a'), "T(61)");
    /* RFC 7692 6: RSV1 only on the first frame of a data message. */
    CHECK(&pmd, B(0x41, 0x01, 'a', 0xc0, 0x01, 'b'), "E1002");
    CHECK(&pmd, B(0x01, 0x01, 'a', 0xc0, 0x01, 'b'), "E1002");
    CHECK(&pmd, B(0xc9, 0x00), "E1002");
    CHECK(&pmd, B(0xc8, 0x00), "E1002");
    CHECK(&pmd, B(0xa1, 0x00), "E1002");
    /* On the wire a compressed (RSV1) message may pass max_message by
     * deflate's growth, max/64 + 256; a plain one on the same connection
     * may not. */
    struct cfg zlim = { WSH_ROLE_CLIENT, 0x40, { 2, 0 } };
    CHECK(&zlim, B(0xc2, 0x04, 1, 2, 3, 4), "B!(01020304)");
    CHECK(&zlim, B(0x42, 0x02, 1, 2, 0x80, 0x02, 3, 4), "B!(01020304)");
    CHECK(&zlim, B(0x82, 0x02, 1, 2), "B(0102)");
    CHECK(&zlim, B(0x82, 0x03, 1, 2, 3), "E1009");
    CHECK(&zlim, B(0x02, 0x02, 1, 2, 0x80, 0x01, 3), "E1009");
    uint8_t big[4 + 259] = { 0xc2, 0x7e, 0x01, 0x03 }; /* 259 = 2 + 256 + 1 */
    check_splits(&zlim, big, sizeof(big), "E1009");
    big[3] = 0x02; /* 258: the most */
    char want[3 + 2 * 258 + 2] = "B!(";
    for (size_t i = 0; i < 258; i++)
        memcpy(want + 3 + 2 * i, "00", 2);
    memcpy(want + 3 + 2 * 258, ")", 2);
    check_splits(&zlim, big, sizeof(big) - 1, want);
}

static void test_frame_rejects_unknown_opcodes(void **state)
{
    (void)state;
    static const unsigned ops[] = { 3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf };
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        uint8_t v[] = { (uint8_t)(0x80 | ops[i]), 0x00 };
        check_splits(&client, v, sizeof(v), "E1002");
        /* Also after a valid message. */
        uint8_t w[] = { 0x81, 0x01, 'a', (uint8_t)(0x80 | ops[i]), 0x01, 'b' };
        check_splits(&client, w, sizeof(w), "T(61)E1002");
    }
}

static void test_frame_rejects_bad_sequence(void **state)
{
    (void)state;
    CHECK(&client, B(0x80, 0x00), "E1002");
    CHECK(&client, B(0x00, 0x01, 'a'), "E1002");
    CHECK(&client, B(0x81, 0x01, 'a', 0x80, 0x01, 'b'), "T(61)E1002");
    /* A new data frame inside a fragmented message. */
    CHECK(&client, B(0x01, 0x01, 'a', 0x81, 0x01, 'b'), "E1002");
    CHECK(&client, B(0x02, 0x01, 'a', 0x02, 0x01, 'b'), "E1002");
}

static void test_frame_control_between_fragments(void **state)
{
    (void)state;
    CHECK(&client, B(0x01, 0x01, 'a', 0x89, 0x01, 'p', 0x00, 0x00, 0x8a, 0x00, 0x80, 0x01, 'b'),
          "T(61P(70)Q()62)");
    uint8_t v[64];
    size_t n = put_frame(v, 0x01, "He", 2, true);
    n += put_frame(v + n, 0x89, "", 0, true);
    n += put_frame(v + n, 0x80, "llo", 3, true);
    check_splits(&server, v, n, "T(4865P()6c6c6f)");
}

static void test_frame_zero_length_messages(void **state)
{
    (void)state;
    CHECK(&client, B(0x81, 0x00), "T()");
    CHECK(&client, B(0x82, 0x00, 0x82, 0x00), "B()B()");
    CHECK(&client, B(0x01, 0x00, 0x80, 0x00), "T()");
    CHECK(&server, B(0x81, 0x80, 1, 2, 3, 4), "T()");
    /* The DATA event itself carries len 0, first and last. */
    struct wsh_parser p;
    wsh_parser_init(&p, WSH_ROLE_CLIENT, 0);
    uint8_t in[] = { 0x82, 0x00 };
    struct wsh_event ev;
    assert_int_equal(wsh_parser_feed(&p, NULL, in, 2, &ev), 2);
    assert_int_equal(ev.type, WSH_EV_DATA);
    assert_int_equal(ev.opcode, WSH_OP_BINARY);
    assert_int_equal(ev.len, 0);
    assert_true(ev.first && ev.last);
}

static void test_frame_utf8_across_fragments(void **state)
{
    (void)state;
    CHECK(&client, B(0x01, 0x02, 'a', 0xc3, 0x80, 0x01, 0xa9), "T(61c3a9)");
    CHECK(&client, B(0x01, 0x01, 0xf0, 0x00, 0x02, 0x9f, 0x98, 0x80, 0x01, 0x80), "T(f09f9880)");
    CHECK(&client, B(0x01, 0x01, 0xed, 0x80, 0x02, 0xa0, 0x80), "E1007");
    CHECK(&client, B(0x01, 0x01, 0xf4, 0x80, 0x02, 0x90, 0x80), "E1007");
    CHECK(&client, B(0x01, 0x01, 0xe0, 0x80, 0x02, 0x80, 0x80), "E1007");
    /* A sequence left open at the end of the message. */
    CHECK(&client, B(0x81, 0x01, 0xc3), "E1007");
    CHECK(&client, B(0x01, 0x01, 0xc3, 0x80, 0x00), "E1007");
    CHECK(&client, B(0x81, 0x03, 0xf0, 0x9f, 0x98), "E1007");
    /* Binary messages are not checked. */
    CHECK(&client, B(0x82, 0x02, 0xff, 0xc3), "B(ffc3)");
    /* Invalid classes in one frame. */
    CHECK(&client, B(0x81, 0x02, 0xc0, 0x80), "E1007");
    CHECK(&client, B(0x81, 0x03, 0xed, 0xbf, 0xbf), "E1007");
    CHECK(&client, B(0x81, 0x01, 0x80), "E1007");
    CHECK(&client, B(0x81, 0x01, 0xf5), "E1007");
    CHECK(&client, B(0x81, 0x01, 0xff), "E1007");
    uint8_t v[32];
    size_t n = put_frame(v, 0x81, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", 11, true);
    check_splits(&server, v, n, "T(cebae1bdb9cf83cebcceb5)");
}

static void test_frame_utf8_fails_fast(void **state)
{
    (void)state;
    /* A 100-byte text frame whose first payload byte is 0xF8 fails as soon
     * as that byte arrives. */
    struct wsh_parser p;
    wsh_parser_init(&p, WSH_ROLE_SERVER, 0);
    uint8_t in[] = { 0x81, 0xe4, 0, 0, 0, 0, 0xf8 };
    struct wsh_event ev;
    ssize_t r = wsh_parser_feed(&p, NULL, in, 6, &ev);
    assert_int_equal(r, 6);
    assert_int_equal(ev.type, WSH_EV_NONE);
    assert_int_equal(wsh_parser_feed(&p, NULL, in + 6, 1, &ev), WSH_EUTF8);
    assert_int_equal(p.close_code, 1007);
    /* Also in a later fragment and mid-chunk. */
    wsh_parser_init(&p, WSH_ROLE_CLIENT, 0);
    uint8_t in2[] = { 0x01, 0x01, 'a', 0x00, 0x7e, 0x10, 0x00, 'b', 'c', 0xc0 };
    assert_int_equal(wsh_parser_feed(&p, NULL, in2, sizeof(in2), &ev), 3);
    assert_int_equal(wsh_parser_feed(&p, NULL, in2 + 3, sizeof(in2) - 3, &ev), WSH_EUTF8);
}

static void test_frame_close_payloads(void **state)
{
    (void)state;
    CHECK(&client, B(0x88, 0x00), "C1005()");
    CHECK(&client, B(0x88, 0x02, 0x03, 0xe8), "C1000()");
    CHECK(&client, B(0x88, 0x04, 0x03, 0xe8, 'o', 'k'), "C1000(6f6b)");
    CHECK(&client, B(0x88, 0x01, 0x03), "E1002");
    CHECK(&client, B(0x88, 0x03, 0x03, 0xe8, 0xff), "E1002");
    CHECK(&client, B(0x88, 0x04, 0x03, 0xe8, 0xc3, 0x28), "E1002");
    CHECK(&client, B(0x88, 0x03, 0x03, 0xe8, 0xc3), "E1002");
    /* Anything after the close frame is ignored. */
    CHECK(&client, B(0x88, 0x02, 0x03, 0xe8, 0x81, 0x01, 'a', 0xff, 0xff), "C1000()");
    uint8_t v[16];
    size_t n = put_frame(v, 0x88, "\x0f\xa0", 2, true);
    check_splits(&server, v, n, "C4000()");
}

static void test_frame_close_codes(void **state)
{
    (void)state;
    static const unsigned good[] = { 1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010,
                                     1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999 };
    static const unsigned bad[] = { 0,    1,    999,  1004, 1005, 1006, 1015,
                                    1016, 1100, 2000, 2999, 5000, 65535 };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        uint8_t v[] = { 0x88, 0x02, (uint8_t)(good[i] >> 8), (uint8_t)good[i] };
        char e[16];
        snprintf(e, sizeof(e), "C%u()", good[i]);
        check_splits(&client, v, sizeof(v), e);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t v[] = { 0x88, 0x02, (uint8_t)(bad[i] >> 8), (uint8_t)bad[i] };
        check_splits(&client, v, sizeof(v), "E1002");
    }
}

static void test_frame_closed_and_failed_are_sticky(void **state)
{
    (void)state;
    struct wsh_parser p;
    struct wsh_event ev;
    wsh_parser_init(&p, WSH_ROLE_CLIENT, 0);
    uint8_t in[] = { 0x88, 0x00, 0x81, 0x01, 'a' };
    assert_int_equal(wsh_parser_feed(&p, NULL, in, sizeof(in), &ev), 2);
    assert_int_equal(ev.type, WSH_EV_CLOSE);
    assert_int_equal(ev.close_code, 1005);
    assert_int_equal(wsh_parser_feed(&p, NULL, in + 2, 3, &ev), 3);
    assert_int_equal(ev.type, WSH_EV_NONE);

    wsh_parser_init(&p, WSH_ROLE_CLIENT, 0);
    uint8_t bad[] = { 0x83, 0x00 };
    assert_int_equal(wsh_parser_feed(&p, NULL, bad, 1, &ev), WSH_EPROTO);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(wsh_parser_feed(&p, NULL, in, sizeof(in), &ev), WSH_EPROTO);
        assert_int_equal(ev.type, WSH_EV_NONE);
        assert_int_equal(p.close_code, 1002);
    }
    assert_int_equal(wsh_parser_feed(&p, NULL, in, 0, &ev), WSH_EPROTO);
}

static void test_frame_parser_is_small(void **state)
{
    (void)state;
    assert_true(sizeof(struct wsh_parser) <= 48);
    struct wsh_parser p;
    struct wsh_event ev;
    wsh_parser_init(&p, WSH_ROLE_SERVER, 0);
    assert_int_equal(wsh_parser_feed(&p, NULL, NULL, 0, &ev), 0);
    assert_int_equal(ev.type, WSH_EV_NONE);
    assert_false(wsh_parser_in_message(&p));
}

/* ------------------------------------------------------------------ */
/* Writer                                                               */

static void test_frame_header_write_boundaries(void **state)
{
    (void)state;
    static const uint64_t lens[] = { 0, 125, 126, 65535, 65536, (1ull << 63) - 1 };
    static const size_t sizes[] = { 2, 2, 4, 4, 10, 10 };
    uint8_t h[WSH_FRAME_HDR_MAX];
    for (size_t i = 0; i < 6; i++) {
        assert_int_equal(wsh_frame_header_size(lens[i], false), sizes[i]);
        assert_int_equal(wsh_frame_header_size(lens[i], true), sizes[i] + 4);
        assert_int_equal(wsh_frame_header_write(h, WSH_OP_TEXT, true, false, lens[i], NULL),
                         sizes[i]);
        assert_int_equal(h[0], 0x81);
        assert_int_equal(wsh_frame_header_write(h, WSH_OP_CONT, false, true, lens[i], test_key),
                         sizes[i] + 4);
        assert_int_equal(h[0], 0x40);
        assert_true(h[1] & 0x80);
        assert_memory_equal(h + sizes[i], test_key, 4);
    }
    wsh_frame_header_write(h, WSH_OP_BINARY, true, false, (1ull << 63) - 1, NULL);
    assert_memory_equal(
        h, ((uint8_t[]){ 0x82, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff }), 10);
}

static void test_frame_mask_matches_bytewise(void **state)
{
    (void)state;
    uint8_t a[160], b[160];
    for (size_t len = 0; len <= 150; len++) {
        for (size_t off = 0; off < 8; off++) {
            for (size_t i = 0; i < len; i++)
                a[i + 1] = b[i + 1] = (uint8_t)(i * 7 + len);
            /* Unaligned start on purpose. */
            wsh_mask(a + 1, len, test_key, off);
            for (size_t i = 0; i < len; i++)
                b[i + 1] ^= test_key[(i + off) % 4];
            assert_memory_equal(a + 1, b + 1, len);
            wsh_mask(a + 1, len, test_key, off);
            for (size_t i = 0; i < len; i++)
                assert_int_equal(a[i + 1], (uint8_t)(i * 7 + len));
        }
    }
    /* The RFC example: "Hello" masked with 37 fa 21 3d. */
    uint8_t hello[] = "Hello";
    wsh_mask(hello, 5, test_key, 0);
    assert_memory_equal(hello, ((uint8_t[]){ 0x7f, 0x9f, 0x4d, 0x51, 0x58 }), 5);
}

/* The server unmasks and pre-checks ASCII in one pass and skips the UTF-8
 * automaton for all-ASCII chunks. Long masked text with one non-ASCII
 * character (valid, invalid, or open across a fragment boundary) at every
 * position must still get exactly the verdict of the validator. */
static void test_frame_masked_text_utf8_at_every_position(void **state)
{
    (void)state;
    enum { LEN = 300 };
    static uint8_t text[LEN], wire[2 * LEN + 64];
    for (size_t pos = 0; pos + 1 < LEN; pos++) {
        memset(text, 'a', LEN);

        /* A valid two-byte character. */
        text[pos] = 0xc3;
        text[pos + 1] = 0xa9;
        size_t n = put_frame(wire, 0x81, text, LEN, true);
        char *want = hex_expect("T(", text, LEN, ")");
        char *got = run_whole(&server, wire, n);
        assert_string_equal(got, want);
        free(got);
        /* Split right after the lead byte: the next chunk starts inside
         * the character and is not ASCII-clean from the validator's side. */
        size_t cut = n - LEN + pos + 1;
        got = run_chunks(&server, wire, n, &cut, 1);
        assert_string_equal(got, want);
        free(got);
        free(want);

        /* An impossible byte. */
        text[pos] = 0xff;
        text[pos + 1] = 'a';
        n = put_frame(wire, 0x81, text, LEN, true);
        got = run_whole(&server, wire, n);
        assert_string_equal(got, "E1007");
        free(got);

        /* A lead byte ending the first fragment, then an all-ASCII
         * continuation frame: the open sequence must fail it. */
        text[pos] = 0xc3;
        text[pos + 1] = 'a';
        n = put_frame(wire, 0x01, text, pos + 1, true);
        n += put_frame(wire + n, 0x80, text + pos + 1, LEN - pos - 1, true);
        got = run_whole(&server, wire, n);
        assert_string_equal(got, "E1007");
        free(got);

        /* The same with the continuation byte first: valid. */
        text[pos + 1] = 0xa9;
        n = put_frame(wire, 0x01, text, pos + 1, true);
        n += put_frame(wire + n, 0x80, text + pos + 1, LEN - pos - 1, true);
        want = hex_expect("T(", text, LEN, ")");
        got = run_whole(&server, wire, n);
        assert_string_equal(got, want);
        free(got);
        free(want);
    }
}

/* hdr_len says how many header bytes precede the chunk in the caller's
 * buffer: the frame's whole header when it came in the same call, 0 for a
 * chunk whose header was consumed earlier. */
static void test_frame_event_reports_header_in_front(void **state)
{
    (void)state;
    static const size_t lens[] = { 0, 5, 125, 126, 65535, 65536 };
    static uint8_t payload[65536], wire[65536 + 14];
    memset(payload, 'x', sizeof payload);
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        size_t n = put_frame(wire, 0x82, payload, lens[i], true);
        size_t hl = n - lens[i];
        struct wsh_parser p;
        struct wsh_event ev;
        const struct wsh_limits lim = { 1u << 20, 0 };

        wsh_parser_init(&p, WSH_ROLE_SERVER, 0);
        assert_int_equal(wsh_parser_feed(&p, &lim, wire, n, &ev), (ssize_t)n);
        assert_int_equal(ev.type, WSH_EV_DATA);
        assert_int_equal(ev.hdr_len, hl);
        assert_ptr_equal(ev.data, wire + hl);

        /* The header alone, then the payload in a later call. */
        n = put_frame(wire, 0x82, payload, lens[i], true);
        wsh_parser_init(&p, WSH_ROLE_SERVER, 0);
        ssize_t r = wsh_parser_feed(&p, &lim, wire, hl, &ev);
        assert_int_equal(r, (ssize_t)hl);
        if (lens[i] == 0) {
            assert_int_equal(ev.type, WSH_EV_DATA);
            assert_int_equal(ev.hdr_len, hl);
            continue;
        }
        assert_int_equal(ev.type, WSH_EV_NONE);
        assert_int_equal(wsh_parser_feed(&p, &lim, wire + hl, n - hl, &ev), (ssize_t)(n - hl));
        assert_int_equal(ev.type, WSH_EV_DATA);
        assert_int_equal(ev.hdr_len, 0);
        assert_true(ev.first && ev.last);
    }
}

/* A whole unfragmented text or binary frame in one buffer takes a
 * one-pass path in the parser; fed split it takes the general one. Both
 * must agree at every length around the 7/16-bit boundary, for valid and
 * invalid UTF-8 anywhere in the payload, at the message limit and one
 * past it, in both roles, and after a fragment has opened a message. */
static void test_frame_whole_frames_same_verdicts(void **state)
{
    (void)state;
    static const size_t lens[] = { 0,  1,  7,  8,  9,  15,  16,  17,  31,
                                   32, 33, 63, 64, 65, 125, 126, 127, 300 };
    static uint8_t payload[400], v[1024];
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        size_t len = lens[li];
        for (int role = 0; role < 2; role++) {
            bool masked = role == 0;
            struct cfg c = { masked ? WSH_ROLE_SERVER : WSH_ROLE_CLIENT, 0, { 0, 0 } };
            for (size_t i = 0; i < len; i++)
                payload[i] = (uint8_t)('a' + i % 26);
            /* ASCII text and binary. */
            size_t n = put_frame(v, 0x81, payload, len, masked);
            char *want = hex_expect("T(", payload, len, ")");
            check_splits(&c, v, n, want);
            free(want);
            n = put_frame(v, 0x82, payload, len, masked);
            want = hex_expect("B(", payload, len, ")");
            check_splits(&c, v, n, want);
            free(want);
            if (len < 2)
                continue;
            /* A two-byte character at three places, then a stray
             * continuation byte (invalid) at the same places. */
            size_t at[3] = { 0, len / 2 - 1, len - 2 };
            for (int k = 0; k < 3; k++) {
                memcpy(payload + at[k], "\xc3\xa9", 2);
                n = put_frame(v, 0x81, payload, len, masked);
                want = hex_expect("T(", payload, len, ")");
                check_splits(&c, v, n, want);
                free(want);
                payload[at[k]] = 0xa9;
                n = put_frame(v, 0x81, payload, len, masked);
                check_splits(&c, v, n, "E1007");
                payload[at[k]] = 'a';
                payload[at[k] + 1] = 'a';
            }
            /* The limit: exactly at it passes, one over is 1009. */
            struct cfg at_limit = { c.role, 0, { len, 0 } }, below = { c.role, 0, { len - 1, 0 } };
            n = put_frame(v, 0x82, payload, len, masked);
            want = hex_expect("B(", payload, len, ")");
            check_splits(&at_limit, v, n, want);
            free(want);
            check_splits(&below, v, n, "E1009");
            /* The wrong masking for the role is 1002. */
            n = put_frame(v, 0x82, payload, len, !masked);
            check_splits(&c, v, n, "E1002");
            /* A whole frame where a continuation is due is 1002. */
            n = put_frame(v, 0x01, "x", 1, masked);
            n += put_frame(v + n, 0x81, payload, len, masked);
            check_splits(&c, v, n, "E1002");
        }
    }
}

static int key_calls;

static void counting_key(uint8_t key[4], void *user)
{
    (void)user;
    key_calls++;
    key[0] = (uint8_t)key_calls;
    key[1] = 0xa5;
    key[2] = (uint8_t)(key_calls * 3);
    key[3] = 0x5a;
}

static void test_frame_message_write_round_trip(void **state)
{
    (void)state;
    static const size_t lens[] = { 0, 1, 5, 125, 126, 300, 70000 };
    static const size_t frags[] = { 0, 1, 7, 125, 126, 65536 };
    uint8_t *payload = malloc(70000);
    assert_non_null(payload);
    for (size_t i = 0; i < 70000; i++)
        payload[i] = (uint8_t)('A' + i % 50);
    for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
        for (size_t fi = 0; fi < sizeof(frags) / sizeof(frags[0]); fi++) {
            size_t len = lens[li], frag = frags[fi];
            if (frag == 1 && len > 300)
                continue;
            for (int masked = 0; masked < 2; masked++) {
                size_t cap = wsh_message_size(len, frag, masked);
                uint8_t *out = malloc(cap);
                assert_non_null(out);
                key_calls = 0;
                size_t w = wsh_message_write(out, WSH_OP_TEXT, false, payload, len, frag,
                                             masked ? counting_key : NULL, NULL);
                assert_int_equal(w, cap);
                size_t frames = frag == 0 || len <= frag ? 1 : (len + frag - 1) / frag;
                if (masked)
                    assert_int_equal(key_calls, frames);
                struct cfg c = { masked ? WSH_ROLE_SERVER : WSH_ROLE_CLIENT, 0, { 1u << 20, 0 } };
                c.lim.max_fragments = 1u << 20;
                char *got = run_whole(&c, out, w);
                char *want = hex_expect("T(", payload, len, ")");
                assert_string_equal(got, want);
                free(got);
                free(want);
                free(out);
            }
        }
    }
    free(payload);
}

static void test_frame_message_write_control_and_rsv1(void **state)
{
    (void)state;
    uint8_t out[64];
    /* A control frame is never fragmented, whatever frag_size says. */
    size_t w =
        wsh_message_write(out, WSH_OP_PING, false, (const uint8_t *)"Hello", 5, 2, NULL, NULL);
    assert_int_equal(w, 7);
    assert_memory_equal(out, ((uint8_t[]){ 0x89, 0x05, 'H', 'e', 'l', 'l', 'o' }), 7);
    assert_true(wsh_message_size(5, 2, false) >= w);
    /* RSV1 only on the first frame. */
    w = wsh_message_write(out, WSH_OP_BINARY, true, (const uint8_t *)"abcd", 4, 2, NULL, NULL);
    assert_int_equal(w, 8);
    assert_memory_equal(out, ((uint8_t[]){ 0x42, 0x02, 'a', 'b', 0x80, 0x02, 'c', 'd' }), 8);
    /* Re-encoding the RFC example gives the same bytes. */
    w = wsh_message_write(out, WSH_OP_TEXT, false, (const uint8_t *)"Hello", 5, 0, NULL, NULL);
    assert_memory_equal(out, ((uint8_t[]){ 0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f }), 7);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frame_rfc_unmasked_hello),
        cmocka_unit_test(test_frame_rfc_masked_hello),
        cmocka_unit_test(test_frame_rfc_fragmented_hello),
        cmocka_unit_test(test_frame_rfc_ping_pong),
        cmocka_unit_test(test_frame_rfc_256_and_64k_binary),
        cmocka_unit_test(test_frame_length_boundaries),
        cmocka_unit_test(test_frame_rejects_len_msb),
        cmocka_unit_test(test_frame_rejects_non_minimal_length),
        cmocka_unit_test(test_frame_rejects_too_big_before_payload),
        cmocka_unit_test(test_frame_limit_lowered_mid_message),
        cmocka_unit_test(test_frame_rejects_too_many_fragments),
        cmocka_unit_test(test_frame_rejects_bad_masking),
        cmocka_unit_test(test_frame_rejects_bad_control),
        cmocka_unit_test(test_frame_rejects_reserved_bits),
        cmocka_unit_test(test_frame_rejects_unknown_opcodes),
        cmocka_unit_test(test_frame_rejects_bad_sequence),
        cmocka_unit_test(test_frame_control_between_fragments),
        cmocka_unit_test(test_frame_zero_length_messages),
        cmocka_unit_test(test_frame_utf8_across_fragments),
        cmocka_unit_test(test_frame_utf8_fails_fast),
        cmocka_unit_test(test_frame_close_payloads),
        cmocka_unit_test(test_frame_close_codes),
        cmocka_unit_test(test_frame_closed_and_failed_are_sticky),
        cmocka_unit_test(test_frame_parser_is_small),
        cmocka_unit_test(test_frame_header_write_boundaries),
        cmocka_unit_test(test_frame_mask_matches_bytewise),
        cmocka_unit_test(test_frame_masked_text_utf8_at_every_position),
        cmocka_unit_test(test_frame_event_reports_header_in_front),
        cmocka_unit_test(test_frame_whole_frames_same_verdicts),
        cmocka_unit_test(test_frame_message_write_round_trip),
        cmocka_unit_test(test_frame_message_write_control_and_rsv1),
    };
    return cmocka_run_group_tests_name("frame", tests, NULL, NULL);
}
