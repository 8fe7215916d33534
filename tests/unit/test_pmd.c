/* Unit tests for permessage-deflate (RFC 7692): negotiation in both roles,
 * round trips over every parameter set, chunked feeds, bombs, corrupt
 * input, and cross-checks against zlib used directly. */
#define _POSIX_C_SOURCE 200809L /* strtok_r */

/* cmocka.h needs the standard headers before it. */
/* clang-format off */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
/* clang-format on */

#define ZLIB_CONST
#include <zlib.h>

#include "wshub/pmd.h"

/* ------------------------------------------------------------------ */
/* Helpers                                                             */

struct buf {
    uint8_t *p;
    size_t n, cap;
    size_t calls;
};

static int buf_put(const uint8_t *p, size_t n, void *user)
{
    struct buf *b = user;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, p, n);
    b->n += n;
    b->calls++;
    return WSH_OK;
}

static void buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

static struct wsh_slice sl(const char *s)
{
    struct wsh_slice r = { s, s ? strlen(s) : 0 };
    return r;
}

static uint32_t rng = 12345;

static uint32_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

/* kind 0: JSON-ish text with repeats at many distances; 1: random bytes. */
static uint8_t *make_data(size_t n, int kind)
{
    static const char *words[] = { "{\"channel\":", "\"chat\"", ",\"data\":", "hello ",
                                   "world ",        "wshub ",   "1234567890", "}\n" };
    uint8_t *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n;) {
        if (kind == 1) {
            p[i++] = (uint8_t)next_rand();
            continue;
        }
        const char *w = words[next_rand() % 8];
        for (size_t k = 0; w[k] && i < n; k++)
            p[i++] = (uint8_t)w[k];
    }
    return p;
}

/* Parses "a; b=1; c" into slices, in place (for offers written as text). */
struct params {
    char text[256];
    struct wsh_slice names[16], values[16];
    size_t n;
};

static void split_params(struct params *ps, const char *list)
{
    memset(ps, 0, sizeof(*ps));
    strcpy(ps->text, list);
    char *save = NULL;
    for (char *t = strtok_r(ps->text, ";", &save); t; t = strtok_r(NULL, ";", &save)) {
        while (*t == ' ')
            t++;
        char *eq = strchr(t, '=');
        if (eq) {
            *eq = '\0';
            ps->values[ps->n] = sl(eq + 1);
        }
        ps->names[ps->n] = sl(t);
        ps->n++;
    }
}

static enum wsh_pmd_verdict offer(const struct wsh_pmd_config *cfg, const char *list,
                                  struct wsh_pmd_params *a)
{
    struct params ps;
    split_params(&ps, list);
    return wsh_pmd_server_offer(cfg, sl(WSH_PMD_NAME), ps.names, ps.values, ps.n, a);
}

/* ------------------------------------------------------------------ */
/* Negotiation, server role                                            */

/* Every combination Autobahn 13.x can send: no_context_takeover both ways,
 * server_max_window_bits absent or 8..15, client_max_window_bits absent,
 * bare or 8..15. Each answer must be a response the client accepts. */
static void test_pmd_offer_every_combination(void **state)
{
    (void)state;
    struct wsh_pmd_config cfgs[2] = { { 0 }, { 0 } };
    cfgs[1].client_max_window_bits = 15;
    cfgs[1].server_context_takeover = true;
    cfgs[1].server_max_window_bits = 12;
    for (int c = 0; c < 2; c++)
        for (int snct = 0; snct < 2; snct++)
            for (int cnct = 0; cnct < 2; cnct++)
                for (int sb = 7; sb <= 15; sb++)       /* 7 = absent */
                    for (int cb = 6; cb <= 15; cb++) { /* 6 absent, 7 bare */
                        char list[200] = "";
                        if (snct)
                            strcat(list, "server_no_context_takeover;");
                        if (cnct)
                            strcat(list, "client_no_context_takeover;");
                        if (sb >= 8)
                            sprintf(list + strlen(list), "server_max_window_bits=%d;", sb);
                        if (cb == 7)
                            strcat(list, "client_max_window_bits;");
                        if (cb >= 8)
                            sprintf(list + strlen(list), "client_max_window_bits=%d;", cb);
                        struct wsh_pmd_params a;
                        enum wsh_pmd_verdict v = offer(&cfgs[c], list, &a);
                        int ccap = c ? 15 : 10, scap = c ? 12 : 15;
                        if (cb == 6 && ccap < 15) {
                            assert_int_equal(v, WSH_PMD_DECLINE);
                            continue;
                        }
                        assert_int_equal(v, WSH_PMD_ACCEPT);
                        int want_s = sb >= 8 && sb < scap ? sb : scap;
                        int offered_c = cb >= 8 ? cb : 15;
                        assert_int_equal(a.server_max_window_bits, want_s);
                        assert_int_equal(a.client_max_window_bits,
                                         offered_c < ccap ? offered_c : ccap);
                        assert_int_equal(a.server_no_context_takeover, snct || c == 0);
                        assert_int_equal(a.client_no_context_takeover, cnct);

                        /* The client that sent this offer must accept our answer. */
                        char resp[WSH_PMD_HEADER_MAX];
                        ssize_t rn = wsh_pmd_response_write(resp, sizeof(resp), &a);
                        assert_true(rn > 0);
                        struct wsh_pmd_params off = { .server_no_context_takeover = snct,
                                                      .client_no_context_takeover = cnct,
                                                      .server_max_window_bits =
                                                          (uint8_t)(sb >= 8 ? sb : 15),
                                                      .client_max_window_bits =
                                                          (uint8_t)offered_c };
                        struct wsh_pmd_params ca;
                        bool on = false;
                        struct wsh_slice rv = { resp, (size_t)rn };
                        if (cb == 6) {
                            /* Our client always offers client_max_window_bits;
                             * check the rule instead: none in the answer. */
                            assert_null(strstr(resp, "client_max_window_bits"));
                            continue;
                        }
                        assert_int_equal(wsh_pmd_client_check(&off, rv, &on, &ca), WSH_OK);
                        assert_true(on);
                        assert_int_equal(ca.server_max_window_bits, a.server_max_window_bits);
                        assert_int_equal(ca.client_max_window_bits, a.client_max_window_bits);
                        assert_int_equal(ca.server_no_context_takeover,
                                         a.server_no_context_takeover);
                        assert_int_equal(ca.client_no_context_takeover,
                                         a.client_no_context_takeover);
                        if (sb >= 8)
                            assert_non_null(strstr(resp, "server_max_window_bits="));
                    }
}

static void test_pmd_offer_rejects_invalid(void **state)
{
    (void)state;
    static const char *bad[] = {
        "foo",
        "server_no_context_takeover; server_no_context_takeover",
        "client_no_context_takeover; client_no_context_takeover",
        "server_max_window_bits=10; server_max_window_bits=10",
        "client_max_window_bits; client_max_window_bits",
        "client_max_window_bits=9; client_max_window_bits",
        "server_no_context_takeover=1",
        "client_no_context_takeover=true",
        "server_max_window_bits",
        "server_max_window_bits=7",
        "server_max_window_bits=16",
        "server_max_window_bits=08",
        "server_max_window_bits=010",
        "server_max_window_bits=+9",
        "server_max_window_bits=9a",
        "server_max_window_bits=0",
        "client_max_window_bits=7",
        "client_max_window_bits=16",
        "client_max_window_bits=015",
        "client_max_window_bits=1",
        "client_max_window_bits; x=1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct wsh_pmd_params a;
        if (offer(NULL, bad[i], &a) != WSH_PMD_INVALID)
            fail_msg("accepted invalid offer: %s", bad[i]);
    }
    /* Another extension is simply not ours. */
    struct wsh_pmd_params a;
    assert_int_equal(wsh_pmd_server_offer(NULL, sl("x-webkit-deflate-frame"), NULL, NULL, 0, &a),
                     WSH_PMD_DECLINE);
    /* Names are case-insensitive tokens. */
    struct params ps;
    split_params(&ps, "Client_Max_Window_Bits");
    assert_int_equal(
        wsh_pmd_server_offer(NULL, sl("PerMessage-Deflate"), ps.names, ps.values, ps.n, &a),
        WSH_PMD_ACCEPT);
}

static void expect_response(const char *offer_list, const struct wsh_pmd_config *cfg,
                            const char *want)
{
    struct wsh_pmd_params a;
    assert_int_equal(offer(cfg, offer_list, &a), WSH_PMD_ACCEPT);
    char out[WSH_PMD_HEADER_MAX];
    ssize_t n = wsh_pmd_response_write(out, sizeof(out), &a);
    assert_int_equal(n, (ssize_t)strlen(want));
    assert_string_equal(out, want);
}

static void test_pmd_response_text(void **state)
{
    (void)state;
    struct wsh_pmd_config open = { .server_context_takeover = true, .client_max_window_bits = 15 };
    expect_response("client_max_window_bits", NULL,
                    "permessage-deflate; server_no_context_takeover; client_max_window_bits=10");
    expect_response("", &open, "permessage-deflate");
    expect_response("client_max_window_bits", &open, "permessage-deflate");
    expect_response("server_max_window_bits=15; client_max_window_bits", &open,
                    "permessage-deflate; server_max_window_bits=15");
    expect_response("server_max_window_bits=8; client_max_window_bits=9; "
                    "client_no_context_takeover",
                    NULL,
                    "permessage-deflate; server_no_context_takeover; "
                    "client_no_context_takeover; server_max_window_bits=8; "
                    "client_max_window_bits=9");
    struct wsh_pmd_config small = { .server_max_window_bits = 11, .client_no_context_takeover = 1 };
    expect_response("client_max_window_bits=12", &small,
                    "permessage-deflate; server_no_context_takeover; "
                    "client_no_context_takeover; server_max_window_bits=11; "
                    "client_max_window_bits=10");
    /* Output space: exact fit and one byte short. */
    struct wsh_pmd_params a;
    assert_int_equal(offer(NULL, "client_max_window_bits", &a), WSH_PMD_ACCEPT);
    char out[WSH_PMD_HEADER_MAX];
    ssize_t n = wsh_pmd_response_write(out, sizeof(out), &a);
    assert_int_equal(wsh_pmd_response_write(out, (size_t)n + 1, &a), n);
    assert_int_equal(wsh_pmd_response_write(out, (size_t)n, &a), WSH_ENOSPC);
    assert_int_equal(wsh_pmd_response_write(out, 0, &a), WSH_ENOSPC);
}

/* Through the real handshake: several offers, the first acceptable wins. */
static int run_handshake(const char *ext, struct wsh_pmd_pick *pick)
{
    struct wsh_hs_header h[] = {
        { sl("Host"), sl("example.com") },
        { sl("Upgrade"), sl("websocket") },
        { sl("Connection"), sl("Upgrade") },
        { sl("Sec-WebSocket-Version"), sl("13") },
        { sl("Sec-WebSocket-Key"), sl("dGhlIHNhbXBsZSBub25jZQ==") },
        { sl("Sec-WebSocket-Extensions"), sl(ext) },
    };
    struct wsh_hs_request req = { sl("GET"), sl("/ws"), 1, h, 6 };
    struct wsh_hs_result res;
    memset(pick, 0, sizeof(*pick));
    (void)wsh_hs_server_check(&req, NULL, wsh_pmd_hs_extension_cb, pick, &res);
    return res.status;
}

static void test_pmd_hs_multiple_offers(void **state)
{
    (void)state;
    struct wsh_pmd_pick pk;
    assert_int_equal(run_handshake("x-foo; a=1, permessage-deflate; server_max_window_bits=8; "
                                   "client_max_window_bits=\"9\", permessage-deflate",
                                   &pk),
                     101);
    assert_true(pk.accepted);
    assert_int_equal(pk.params.server_max_window_bits, 8);
    assert_int_equal(pk.params.client_max_window_bits, 9);
    /* First offer declined (no client_max_window_bits), second taken. */
    assert_int_equal(run_handshake("permessage-deflate; server_no_context_takeover, "
                                   "permessage-deflate; client_max_window_bits=12",
                                   &pk),
                     101);
    assert_true(pk.accepted);
    assert_int_equal(pk.params.client_max_window_bits, 10);
    /* All declined: the handshake succeeds without the extension. */
    assert_int_equal(run_handshake("permessage-deflate", &pk), 101);
    assert_false(pk.accepted);
    /* Invalid offer: 400. */
    assert_int_equal(run_handshake("permessage-deflate; server_max_window_bits=16", &pk), 400);
    assert_int_equal(run_handshake("permessage-deflate; client_max_window_bits; "
                                   "client_max_window_bits",
                                   &pk),
                     400);
    /* Once one is accepted, later offers are not examined. */
    assert_int_equal(run_handshake("permessage-deflate; client_max_window_bits, "
                                   "permessage-deflate; bogus",
                                   &pk),
                     101);
    assert_true(pk.accepted);
}

/* ------------------------------------------------------------------ */
/* Negotiation, client role                                            */

static void test_pmd_client_offer_text(void **state)
{
    (void)state;
    char out[WSH_PMD_HEADER_MAX];
    struct wsh_pmd_params p = { false, false, 15, 15, false };
    assert_int_equal(wsh_pmd_client_offer(out, sizeof(out), &p), 42);
    assert_string_equal(out, "permessage-deflate; client_max_window_bits");
    struct wsh_pmd_params q = { true, true, 8, 12, false };
    assert_true(wsh_pmd_client_offer(out, sizeof(out), &q) > 0);
    assert_string_equal(out, "permessage-deflate; server_no_context_takeover; "
                             "client_no_context_takeover; server_max_window_bits=8; "
                             "client_max_window_bits=12");
    struct wsh_pmd_params bad = { false, false, 7, 15, false };
    assert_int_equal(wsh_pmd_client_offer(out, sizeof(out), &bad), WSH_EINVAL);
    assert_int_equal(wsh_pmd_client_offer(out, 10, &p), WSH_ENOSPC);
}

static int check(const struct wsh_pmd_params *off, const char *resp, struct wsh_pmd_params *a,
                 bool *on)
{
    return wsh_pmd_client_check(off, sl(resp), on, a);
}

static void test_pmd_client_check(void **state)
{
    (void)state;
    struct wsh_pmd_params plain = { false, false, 15, 15, false };
    struct wsh_pmd_params req = { true, false, 10, 12, false };
    struct wsh_pmd_params a;
    bool on = true;

    assert_int_equal(check(&plain, "", &a, &on), WSH_OK);
    assert_false(on);
    assert_int_equal(check(&plain, " , ", &a, &on), WSH_OK);
    assert_false(on);
    assert_int_equal(check(&plain, "permessage-deflate", &a, &on), WSH_OK);
    assert_true(on);
    assert_int_equal(a.server_max_window_bits, 15);
    assert_int_equal(a.client_max_window_bits, 15);
    assert_int_equal(check(&plain,
                           "permessage-deflate;server_no_context_takeover ; "
                           "client_max_window_bits=\"9\"; server_max_window_bits=11",
                           &a, &on),
                     WSH_OK);
    assert_true(a.server_no_context_takeover);
    assert_int_equal(a.client_max_window_bits, 9);
    assert_int_equal(a.server_max_window_bits, 11);
    assert_int_equal(check(&req,
                           "permessage-deflate; server_no_context_takeover; "
                           "server_max_window_bits=9; client_max_window_bits=15",
                           &a, &on),
                     WSH_OK);
    assert_int_equal(a.client_max_window_bits, 12); /* we keep our smaller window */

    static const char *bad_plain[] = {
        "x-foo",
        "permessage-deflate, permessage-deflate",
        "permessage-deflate; foo",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=09",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_max_window_bits=\"9",
        "permessage-deflate; client_max_window_bits=",
        "permessage-deflate x",
        "permessage-deflate;",
    };
    for (size_t i = 0; i < sizeof(bad_plain) / sizeof(bad_plain[0]); i++)
        if (check(&plain, bad_plain[i], &a, &on) != WSH_EPROTO)
            fail_msg("accepted bad response: %s", bad_plain[i]);
    /* Against an offer that asked for things. */
    assert_int_equal(check(&req, "permessage-deflate; server_max_window_bits=10", &a, &on),
                     WSH_EPROTO); /* server_no_context_takeover dropped */
    assert_int_equal(check(&req, "permessage-deflate; server_no_context_takeover", &a, &on),
                     WSH_EPROTO); /* server_max_window_bits dropped */
    assert_int_equal(check(&req,
                           "permessage-deflate; server_no_context_takeover; "
                           "server_max_window_bits=11",
                           &a, &on),
                     WSH_EPROTO); /* larger than we allowed */
}

/* ------------------------------------------------------------------ */
/* Compression round trips                                             */

enum feed { FEED_WHOLE, FEED_BYTES, FEED_RANDOM };

static int inflate_fed(struct wsh_pmd *z, const struct wsh_limits *lim, const uint8_t *p, size_t n,
                       enum feed how, struct buf *out)
{
    if (how == FEED_WHOLE || n == 0)
        return wsh_pmd_inflate(z, lim, p, n, true, buf_put, out);
    size_t off = 0;
    while (off < n) {
        size_t c = how == FEED_BYTES ? 1 : 1 + next_rand() % 700;
        if (c > n - off)
            c = n - off;
        int st = wsh_pmd_inflate(z, lim, p + off, c, off + c == n, buf_put, out);
        if (st != WSH_OK)
            return st;
        off += c;
    }
    return WSH_OK;
}

/* Independent decode with zlib: the message plus 00 00 ff ff. s persists
 * across messages when context is taken over. */
static void zlib_decode(z_stream *s, const uint8_t *in, size_t n, const uint8_t *want,
                        size_t want_n)
{
    uint8_t *msg = malloc(n + 4), *out = malloc(want_n + 64);
    memcpy(msg, in, n);
    memcpy(msg + n, "\x00\x00\xff\xff", 4);
    s->next_in = msg;
    s->avail_in = (uInt)(n + 4);
    s->next_out = out;
    s->avail_out = (uInt)(want_n + 64);
    int rc = inflate(s, Z_SYNC_FLUSH);
    assert_true(rc == Z_OK || rc == Z_BUF_ERROR);
    assert_int_equal(s->avail_in, 0);
    assert_int_equal(want_n + 64 - s->avail_out, want_n);
    assert_memory_equal(out, want, want_n);
    free(msg);
    free(out);
}

/* Sends msgs messages each way for params p and checks every path. */
static void round_trip(const struct wsh_pmd_params *p, const size_t *sizes, size_t nsizes, int kind,
                       enum feed how)
{
    struct wsh_pmd *srv, *cli;
    assert_int_equal(wsh_pmd_create(WSH_ROLE_SERVER, p, NULL, &srv), WSH_OK);
    assert_int_equal(wsh_pmd_create(WSH_ROLE_CLIENT, p, NULL, &cli), WSH_OK);
    struct wsh_limits lim = { 2u << 20, 0 };
    z_stream zs[2];
    for (int d = 0; d < 2; d++) {
        memset(&zs[d], 0, sizeof(zs[d]));
        /* Decode with exactly the agreed window: proves we stay inside it. */
        int bits = d == 0 ? p->server_max_window_bits : p->client_max_window_bits;
        assert_int_equal(inflateInit2(&zs[d], -bits), Z_OK);
    }
    for (size_t m = 0; m < nsizes; m++) {
        uint8_t *data = make_data(sizes[m], kind);
        for (int d = 0; d < 2; d++) {
            struct wsh_pmd *tx = d == 0 ? srv : cli, *rx = d == 0 ? cli : srv;
            bool reset = d == 0 ? p->server_no_context_takeover : p->client_no_context_takeover;
            struct buf c = { 0 }, u = { 0 };
            assert_int_equal(wsh_pmd_compress(tx, data, sizes[m], buf_put, &c), WSH_OK);
            if (sizes[m] == 0) {
                assert_int_equal(c.n, 1);
                assert_int_equal(c.p[0], 0);
            }
            bool both = p->server_no_context_takeover && p->client_no_context_takeover;
            if (both)
                assert_int_equal(wsh_pmd_memory(tx), 0);
            if (reset) {
                struct buf o = { 0 };
                uint8_t bits = d == 0 ? p->server_max_window_bits : p->client_max_window_bits;
                assert_int_equal(wsh_pmd_compress_oneshot(bits, 0, 0, data, sizes[m], buf_put, &o),
                                 WSH_OK);
                assert_int_equal(o.n, c.n);
                assert_memory_equal(o.p, c.p, c.n);
                buf_free(&o);
                inflateReset(&zs[d]);
            }
            zlib_decode(&zs[d], c.p, c.n, data, sizes[m]);
            assert_int_equal(inflate_fed(rx, &lim, c.p, c.n, how, &u), WSH_OK);
            assert_int_equal(u.n, sizes[m]);
            if (sizes[m])
                assert_memory_equal(u.p, data, sizes[m]);
            if (both)
                assert_int_equal(wsh_pmd_memory(rx), 0);
            if (!reset && sizes[m] > 0) /* context kept: both streams live */
                assert_true(wsh_pmd_memory(tx) >= wsh_pmd_deflate_memory(8, 8) &&
                            wsh_pmd_memory(rx) >= wsh_pmd_inflate_memory(8));
            buf_free(&c);
            buf_free(&u);
        }
        free(data);
    }
    inflateEnd(&zs[0]);
    inflateEnd(&zs[1]);
    wsh_pmd_destroy(srv);
    wsh_pmd_destroy(cli);
}

static void test_pmd_round_trip_every_params(void **state)
{
    (void)state;
    static const size_t sizes[] = { 0, 1, 125, 126, 3000, 0, 126, 20000 };
    for (int bits = 8; bits <= 15; bits++)
        for (int other = 8; other <= 15; other += 7)
            for (int nct = 0; nct < 4; nct++)
                for (int kind = 0; kind < 2; kind++) {
                    struct wsh_pmd_params p = { nct & 1, (nct & 2) != 0, (uint8_t)bits,
                                                (uint8_t)other, false };
                    round_trip(&p, sizes, 8, kind, (enum feed)((bits + nct + kind) % 3));
                    struct wsh_pmd_params q = { nct & 1, (nct & 2) != 0, (uint8_t)other,
                                                (uint8_t)bits, false };
                    round_trip(&q, sizes, 8, kind, FEED_RANDOM);
                }
}

static void test_pmd_round_trip_large(void **state)
{
    (void)state;
    static const size_t sizes[] = { 65536, 1u << 20, 65536 };
    for (int nct = 0; nct < 4; nct++)
        for (int kind = 0; kind < 2; kind++) {
            struct wsh_pmd_params p = { nct & 1, (nct & 2) != 0, nct ? 15 : 9, nct ? 8 : 12,
                                        false };
            round_trip(&p, sizes, 3, kind, kind ? FEED_RANDOM : FEED_WHOLE);
        }
    static const size_t small[] = { 126, 65536 };
    struct wsh_pmd_params p = { false, false, 10, 10, false };
    round_trip(&p, small, 2, 0, FEED_BYTES);
}

/* zlib's own output for one message at (bits, level, memLevel), from a
 * new stream, without the 00 00 ff ff tail. */
static struct buf zlib_fresh(const uint8_t *in, size_t n, int bits, int level, int mem_level)
{
    z_stream d;
    memset(&d, 0, sizeof(d));
    assert_int_equal(deflateInit2(&d, level, Z_DEFLATED, -bits, mem_level, Z_DEFAULT_STRATEGY),
                     Z_OK);
    struct buf o = { 0 };
    o.cap = deflateBound(&d, (uLong)n) + 16;
    o.p = malloc(o.cap);
    d.next_in = (Bytef *)(uintptr_t)in; /* zlib without ZLIB_CONST */
    d.avail_in = (uInt)n;
    d.next_out = o.p;
    d.avail_out = (uInt)o.cap;
    assert_int_equal(deflate(&d, Z_SYNC_FLUSH), Z_OK);
    o.n = o.cap - d.avail_out - 4;
    deflateEnd(&d);
    return o;
}

/* A deflater made for one message is sized to it (a smaller window and
 * memLevel): every size around the thresholds still decodes with exactly
 * the agreed window, and is never longer than zlib's own output at the
 * agreed window and memLevel 8. */
static void test_pmd_sized_for_the_message(void **state)
{
    (void)state;
    static const size_t sizes[] = { 1,   64,  100, 128, 129,  249,  250,  251,  262,  263,
                                    511, 512, 513, 774, 775,  1024, 1286, 2048, 4096, 8192,
                                    8193, 16384, 16385, 32506, 40000, 70000 };
    for (int kind = 0; kind < 2; kind++)
        for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
            uint8_t *data = make_data(sizes[i], kind);
            for (uint8_t bits = 9; bits <= 15; bits += 3) {
                struct buf c = { 0 };
                assert_int_equal(wsh_pmd_compress_oneshot(bits, 0, 0, data, sizes[i], buf_put, &c),
                                 WSH_OK);
                z_stream zs;
                memset(&zs, 0, sizeof(zs));
                assert_int_equal(inflateInit2(&zs, -bits), Z_OK);
                zlib_decode(&zs, c.p, c.n, data, sizes[i]);
                inflateEnd(&zs);
                /* zlib itself, unsized: the same level, the agreed window. */
                struct buf ref = zlib_fresh(data, sizes[i], bits, WSH_PMD_DEFAULT_LEVEL,
                                            WSH_PMD_DEFAULT_MEM_LEVEL);
                size_t ref_n = ref.n;
                buf_free(&ref);
                assert_true(c.n <= ref_n);
                buf_free(&c);
            }
            free(data);
        }
}

static int refuse_cb(const uint8_t *p, size_t n, void *user);

struct reuse_case {
    uint8_t *data;
    size_t n;
    int failed; /* set when an output differs */
};

/* Larger messages reuse the thread's stream (deflateReset): whatever came
 * before on this thread (other parameters, small messages, a message
 * abandoned by its callback), the output is byte for byte that of a new
 * zlib stream. */
static void *reuse_run(void *arg)
{
    struct reuse_case *rc = arg;
    static const int params[][3] = { { 15, 6, 8 }, { 12, 1, 8 }, { 15, 6, 8 }, { 15, 1, 9 },
                                     { 10, 9, 8 }, { 15, 6, 8 } };
    for (size_t k = 0; k < sizeof(params) / sizeof(params[0]); k++) {
        int bits = params[k][0], level = params[k][1], mem = params[k][2];
        struct buf want = zlib_fresh(rc->data, rc->n, bits, level, mem);
        for (int rep = 0; rep < 2; rep++) {
            struct buf got = { 0 };
            if (wsh_pmd_compress_oneshot((uint8_t)bits, level, mem, rc->data, rc->n, buf_put,
                                         &got) != WSH_OK ||
                got.n != want.n || memcmp(got.p, want.p, want.n) != 0)
                rc->failed = 1;
            buf_free(&got);
            /* In between: a small message and an abandoned one. */
            struct buf small = { 0 };
            if (wsh_pmd_compress_oneshot((uint8_t)bits, level, mem, rc->data, 100, buf_put,
                                         &small) != WSH_OK)
                rc->failed = 1;
            buf_free(&small);
            if (wsh_pmd_compress_oneshot((uint8_t)bits, level, mem, rc->data, rc->n, refuse_cb,
                                         NULL) != WSH_ENOSPC)
                rc->failed = 1;
        }
        buf_free(&want);
    }
    return NULL;
}

static void test_pmd_thread_stream_reused_exactly(void **state)
{
    (void)state;
    for (int kind = 0; kind < 2; kind++) {
        struct reuse_case rc = { make_data(30000, kind), 30000, 0 };
        reuse_run(&rc); /* this thread */
        assert_int_equal(rc.failed, 0);
        pthread_t t[2];
        struct reuse_case tc[2] = { rc, rc };
        for (int i = 0; i < 2; i++) /* two threads at once, each with its own stream */
            assert_int_equal(pthread_create(&t[i], NULL, reuse_run, &tc[i]), 0);
        for (int i = 0; i < 2; i++) {
            assert_int_equal(pthread_join(t[i], NULL), 0);
            assert_int_equal(tc[i].failed, 0);
        }
        free(rc.data);
    }
}

/* The 9-bit deflater standing in for 8 bits never reaches past 256 bytes,
 * even on data built to reward long matches. */
static void test_pmd_window_8_fits(void **state)
{
    (void)state;
    size_t n = 200000;
    uint8_t *data = malloc(n);
    for (size_t i = 0; i < n; i++)
        data[i] = (uint8_t)(i % 300 < 150 ? (i % 300) : next_rand());
    struct buf c = { 0 };
    assert_int_equal(wsh_pmd_compress_oneshot(8, 9, 9, data, n, buf_put, &c), WSH_OK);
    z_stream s;
    memset(&s, 0, sizeof(s));
    assert_int_equal(inflateInit2(&s, -8), Z_OK);
    zlib_decode(&s, c.p, c.n, data, n);
    inflateEnd(&s);
    buf_free(&c);
    free(data);
}

/* ------------------------------------------------------------------ */
/* Limits and hostile input                                            */

/* n zero bytes compressed at level 9 into c: a bomb, c is tiny. */
static void zeros_compressed(size_t n, struct buf *c)
{
    uint8_t *zeros = calloc(1, n);
    assert_non_null(zeros);
    assert_int_equal(wsh_pmd_compress_oneshot(15, 9, 9, zeros, n, buf_put, c), WSH_OK);
    free(zeros);
}

static void test_pmd_bomb_refused(void **state)
{
    (void)state;
    struct buf c = { 0 };
    zeros_compressed(10u << 20, &c);
    assert_true(c.n < 20000);
    struct wsh_pmd_params p = { true, true, 15, 15, false };
    for (int how = 0; how < 3; how++) {
        struct wsh_pmd *z;
        assert_int_equal(wsh_pmd_create(WSH_ROLE_SERVER, &p, NULL, &z), WSH_OK);
        struct wsh_limits lim = { 65536, 0 };
        struct buf u = { 0 };
        assert_int_equal(inflate_fed(z, &lim, c.p, c.n, (enum feed)how, &u), WSH_ETOOBIG);
        assert_true(u.n <= 65536);
        /* The object stays failed. */
        assert_int_equal(wsh_pmd_inflate(z, &lim, c.p, 1, true, buf_put, &u), WSH_ETOOBIG);
        buf_free(&u);
        wsh_pmd_destroy(z);
    }
    buf_free(&c);
}

/* A limit lowered under a message already inflated past it (a reload
 * between two of its frames): the next frame is refused, where the room
 * left wrapped below zero and the rest inflated without bound. */
static void test_pmd_limit_lowered_mid_message(void **state)
{
    (void)state;
    struct buf c = { 0 };
    zeros_compressed(1u << 20, &c);
    struct wsh_pmd_params p = { true, true, 15, 15, false };
    struct wsh_pmd *z;
    assert_int_equal(wsh_pmd_create(WSH_ROLE_SERVER, &p, NULL, &z), WSH_OK);
    struct wsh_limits big = { 4u << 20, 0 }, small = { 1000, 0 };
    struct buf u = { 0 };
    size_t half = c.n / 2;
    assert_int_equal(wsh_pmd_inflate(z, &big, c.p, half, false, buf_put, &u), WSH_OK);
    assert_true(u.n > 1000);
    size_t before = u.n;
    assert_int_equal(wsh_pmd_inflate(z, &small, c.p + half, c.n - half, true, buf_put, &u),
                     WSH_ETOOBIG);
    assert_int_equal(u.n, before);
    buf_free(&u);
    buf_free(&c);
    wsh_pmd_destroy(z);
}

static void test_pmd_limit_boundary(void **state)
{
    (void)state;
    struct wsh_pmd_params p = { true, false, 15, 15, false };
    for (size_t size = 65535; size <= 65537; size++) {
        uint8_t *data = make_data(size, 0);
        struct buf c = { 0 }, u = { 0 };
        assert_int_equal(wsh_pmd_compress_oneshot(15, 0, 0, data, size, buf_put, &c), WSH_OK);
        struct wsh_pmd *z;
        assert_int_equal(wsh_pmd_create(WSH_ROLE_SERVER, &p, NULL, &z), WSH_OK);
        int st = wsh_pmd_inflate(z, NULL, c.p, c.n, true, buf_put, &u); /* default 64 KiB */
        assert_int_equal(st, size <= 65536 ? WSH_OK : WSH_ETOOBIG);
        assert_true(u.n <= 65536);
        buf_free(&c);
        buf_free(&u);
        wsh_pmd_destroy(z);
        free(data);
    }
}

static int inflate_once(const struct wsh_pmd_params *p, const uint8_t *in, size_t n, bool last,
                        struct buf *u)
{
    struct wsh_pmd *z;
    assert_int_equal(wsh_pmd_create(WSH_ROLE_SERVER, p, NULL, &z), WSH_OK);
    int st = wsh_pmd_inflate(z, NULL, in, n, last, buf_put, u);
    wsh_pmd_destroy(z);
    return st;
}

static void test_pmd_corrupt_input(void **state)
{
    (void)state;
    struct wsh_pmd_params p = { true, true, 15, 15, false };
    struct buf u = { 0 };
    /* Reserved block type 11. */
    assert_int_equal(inflate_once(&p, (const uint8_t *)"\xff\xff\xff", 3, true, &u), WSH_EPROTO);
    /* A stored block whose NLEN is not ~LEN. */
    assert_int_equal(inflate_once(&p, (const uint8_t *)"\x00\x05\x00\x00\x00", 5, true, &u),
                     WSH_EPROTO);
    /* Truncated: a stored block announcing 100 bytes, then the message ends. */
    assert_int_equal(inflate_once(&p,
                                  (const uint8_t *)"\x00\x64\x00\x9b\xff"
                                                   "abc",
                                  8, true, &u),
                     WSH_EPROTO);
    buf_free(&u);

    /* A 15-bit stream referring 1000 bytes back, against a 9-bit window. */
    uint8_t data[3000];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = i < 1000 ? (uint8_t)next_rand() : data[i - 1000];
    struct buf c = { 0 };
    assert_int_equal(wsh_pmd_compress_oneshot(15, 0, 0, data, sizeof(data), buf_put, &c), WSH_OK);
    /* zlib resolves a distance against its window plus the output of the
     * current inflate() call, so the violation is caught when it reaches
     * past both: certain here, with one input byte per call. */
    struct wsh_pmd_params small = { true, true, 9, 9, false };
    struct wsh_pmd *zs;
    assert_int_equal(wsh_pmd_create(WSH_ROLE_SERVER, &small, NULL, &zs), WSH_OK);
    assert_int_equal(inflate_fed(zs, NULL, c.p, c.n, FEED_BYTES, &u), WSH_EPROTO);
    wsh_pmd_destroy(zs);
    buf_free(&u);
    assert_int_equal(inflate_once(&p, c.p, c.n, true, &u), WSH_OK);
    assert_int_equal(u.n, sizeof(data));
    buf_free(&u);
    /* Every truncation of a valid message is refused or decodes a prefix
     * without crashing; none may claim the full message. */
    for (size_t cut = 1; cut < c.n; cut++) {
        int st = inflate_once(&p, c.p, cut, true, &u);
        assert_true(st == WSH_EPROTO || (st == WSH_OK && u.n < sizeof(data)));
        buf_free(&u);
    }
    buf_free(&c);
}

/* RFC 7692 7.2.3.4: a message may end with a BFINAL block; the next
 * message then starts a fresh stream even with context takeover. */
static void test_pmd_bfinal_message(void **state)
{
    (void)state;
    const char *msg = "hello hello hello hello";
    uint8_t out[128];
    z_stream s;
    memset(&s, 0, sizeof(s));
    assert_int_equal(deflateInit2(&s, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    s.next_in = (const Bytef *)msg;
    s.avail_in = (uInt)strlen(msg);
    s.next_out = out;
    s.avail_out = sizeof(out);
    assert_int_equal(deflate(&s, Z_FINISH), Z_STREAM_END);
    size_t n = sizeof(out) - s.avail_out;
    deflateEnd(&s);

    struct wsh_pmd_params p = { false, false, 15, 15, false };
    struct wsh_pmd *z;
    assert_int_equal(wsh_pmd_create(WSH_ROLE_SERVER, &p, NULL, &z), WSH_OK);
    for (int i = 0; i < 3; i++) {
        struct buf u = { 0 };
        assert_int_equal(wsh_pmd_inflate(z, NULL, out, n, true, buf_put, &u), WSH_OK);
        assert_int_equal(u.n, strlen(msg));
        assert_memory_equal(u.p, msg, u.n);
        buf_free(&u);
    }
    /* Blocks after a final block start a new stream inside the same
     * message (7.2.3.4's example sends a final block and then 0x00): two
     * final-block streams in one message decode to both texts. */
    uint8_t twice[256];
    memcpy(twice, out, n);
    memcpy(twice + n, out, n);
    struct buf u = { 0 };
    assert_int_equal(wsh_pmd_inflate(z, NULL, twice, 2 * n, true, buf_put, &u), WSH_OK);
    assert_int_equal(u.n, 2 * strlen(msg));
    assert_memory_equal(u.p, msg, strlen(msg));
    assert_memory_equal(u.p + strlen(msg), msg, strlen(msg));
    buf_free(&u);
    /* The RFC's own bytes: "Hello" in a final fixed-Huffman block, then 0x00. */
    static const uint8_t rfc[] = { 0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00 };
    struct buf r = { 0 };
    assert_int_equal(wsh_pmd_inflate(z, NULL, rfc, sizeof(rfc), true, buf_put, &r), WSH_OK);
    assert_int_equal(r.n, 5);
    assert_memory_equal(r.p, "Hello", 5);
    buf_free(&r);
    wsh_pmd_destroy(z);
}

/* A sender that keeps the 00 00 ff ff tail breaks 7.2.1: with ours
 * appended, those 4 bytes start a stored block of 0xff00 bytes that never
 * ends, so the message is truncated. */
static void test_pmd_unstripped_tail_refused(void **state)
{
    (void)state;
    struct buf c = { 0 }, u = { 0 };
    assert_int_equal(
        wsh_pmd_compress_oneshot(15, 0, 0, (const uint8_t *)"abcabcabc", 9, buf_put, &c), WSH_OK);
    (void)buf_put((const uint8_t *)"\x00\x00\xff\xff", 4, &c);
    struct wsh_pmd_params p = { true, true, 15, 15, false };
    assert_int_equal(inflate_once(&p, c.p, c.n, true, &u), WSH_EPROTO);
    buf_free(&c);
    buf_free(&u);
}

static int refuse_cb(const uint8_t *p, size_t n, void *user)
{
    (void)p;
    (void)n;
    (void)user;
    return WSH_ENOSPC;
}

static void test_pmd_callback_errors_propagate(void **state)
{
    (void)state;
    struct wsh_pmd_params p = { false, false, 15, 15, false };
    struct wsh_pmd *z;
    assert_int_equal(wsh_pmd_create(WSH_ROLE_SERVER, &p, NULL, &z), WSH_OK);
    uint8_t *data = make_data(50000, 1);
    assert_int_equal(wsh_pmd_compress(z, data, 50000, refuse_cb, NULL), WSH_ENOSPC);
    /* The broken deflate stream was dropped; the next message works. */
    assert_int_equal(wsh_pmd_memory(z), 0);
    struct buf c = { 0 };
    assert_int_equal(wsh_pmd_compress(z, data, 50000, buf_put, &c), WSH_OK);
    assert_true(wsh_pmd_memory(z) > 0); /* context takeover keeps it */
    assert_int_equal(wsh_pmd_inflate(z, NULL, c.p, c.n, true, refuse_cb, NULL), WSH_ENOSPC);
    buf_free(&c);
    free(data);
    wsh_pmd_destroy(z);
}

static void test_pmd_create_and_memory(void **state)
{
    (void)state;
    struct wsh_pmd *z = NULL;
    struct wsh_pmd_params bad = { false, false, 7, 15, false };
    assert_int_equal(wsh_pmd_create(WSH_ROLE_SERVER, &bad, NULL, &z), WSH_EINVAL);
    assert_null(z);
    assert_int_equal(wsh_pmd_compress_oneshot(16, 0, 0, NULL, 0, buf_put, NULL), WSH_EINVAL);
    assert_int_equal(wsh_pmd_deflate_memory(15, 8), 256u * 1024);
    assert_int_equal(wsh_pmd_deflate_memory(8, 1), 2048u + 1024);
    assert_int_equal(wsh_pmd_inflate_memory(10), 1024u + 7168);
    struct wsh_pmd_config cfg = { 0 };
    assert_false(wsh_pmd_worth_compressing(&cfg, 63));
    assert_true(wsh_pmd_worth_compressing(NULL, 64));
    cfg.min_size = 1;
    assert_true(wsh_pmd_worth_compressing(&cfg, 1));
    wsh_pmd_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pmd_offer_every_combination),
        cmocka_unit_test(test_pmd_offer_rejects_invalid),
        cmocka_unit_test(test_pmd_response_text),
        cmocka_unit_test(test_pmd_hs_multiple_offers),
        cmocka_unit_test(test_pmd_client_offer_text),
        cmocka_unit_test(test_pmd_client_check),
        cmocka_unit_test(test_pmd_round_trip_every_params),
        cmocka_unit_test(test_pmd_round_trip_large),
        cmocka_unit_test(test_pmd_sized_for_the_message),
        cmocka_unit_test(test_pmd_thread_stream_reused_exactly),
        cmocka_unit_test(test_pmd_window_8_fits),
        cmocka_unit_test(test_pmd_bomb_refused),
        cmocka_unit_test(test_pmd_limit_lowered_mid_message),
        cmocka_unit_test(test_pmd_limit_boundary),
        cmocka_unit_test(test_pmd_corrupt_input),
        cmocka_unit_test(test_pmd_bfinal_message),
        cmocka_unit_test(test_pmd_unstripped_tail_refused),
        cmocka_unit_test(test_pmd_callback_errors_propagate),
        cmocka_unit_test(test_pmd_create_and_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
