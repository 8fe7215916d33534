/* Unit tests for wsh_proxy_parse (src/net/proxy.c): the PROXY protocol
 * header a load balancer sends before the client's bytes. Every case is
 * also fed as each of its prefixes, the way bytes trickle in: a valid
 * header gives "more" (0) until its last byte, and a bad one gives its
 * error from the first byte that rules it out, never a different one
 * later. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "net.h"

/* Parses p[0..len) whole and as every prefix. Returns the whole result;
 * *first is the shortest prefix that gave it. */
static ssize_t parse_all(const uint8_t *p, size_t len, struct wsh_proxy *out, size_t *first)
{
    ssize_t whole = wsh_proxy_parse(p, len, out);
    size_t at = len;
    for (size_t k = 0; k < len; k++) {
        struct wsh_proxy tmp;
        ssize_t r = wsh_proxy_parse(p, k, &tmp);
        if (r == whole && at == len)
            at = k;
        if (whole > 0) {
            /* Before its last byte a valid header is only ever "more". */
            if ((size_t)whole > k)
                assert_int_equal(r, 0);
            else
                assert_int_equal(r, whole);
        } else if (at < len) {
            assert_int_equal(r, whole); /* an error, once seen, stays */
        } else {
            assert_int_equal(r, 0);
        }
    }
    if (first)
        *first = at;
    return whole;
}

static ssize_t parse_str(const char *s, struct wsh_proxy *out)
{
    return parse_all((const uint8_t *)s, strlen(s), out, NULL);
}

static void assert_v4(const struct sockaddr_storage *ss, const char *addr, uint16_t port)
{
    assert_int_equal(ss->ss_family, AF_INET);
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    char buf[INET_ADDRSTRLEN];
    assert_non_null(inet_ntop(AF_INET, &a->sin_addr, buf, sizeof(buf)));
    assert_string_equal(buf, addr);
    assert_int_equal(ntohs(a->sin_port), port);
}

static void assert_v6(const struct sockaddr_storage *ss, const char *addr, uint16_t port)
{
    assert_int_equal(ss->ss_family, AF_INET6);
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    char buf[INET6_ADDRSTRLEN];
    assert_non_null(inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof(buf)));
    assert_string_equal(buf, addr);
    assert_int_equal(ntohs(a->sin6_port), port);
}

/* ------------------------------------------------------------------ */
/* Version 1                                                           */

static void test_v1_tcp4(void **state)
{
    (void)state;
    static const char hdr[] = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
    static const char in[] = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n";
    struct wsh_proxy px;
    assert_int_equal(parse_str(in, &px), strlen(hdr));
    assert_int_equal(px.version, 1);
    assert_v4(&px.src, "192.0.2.1", 56324);
    assert_v4(&px.dst, "198.51.100.2", 443);
}

static void test_v1_tcp6(void **state)
{
    (void)state;
    static const char in[] = "PROXY TCP6 2001:db8::1 ::1 0 65535\r\n";
    struct wsh_proxy px;
    assert_int_equal(parse_str(in, &px), strlen(in));
    assert_v6(&px.src, "2001:db8::1", 0);
    assert_v6(&px.dst, "::1", 65535);
}

/* UNKNOWN: the rest of the line is ignored and no client is named. */
static void test_v1_unknown(void **state)
{
    (void)state;
    struct wsh_proxy px;
    assert_int_equal(parse_str("PROXY UNKNOWN\r\n", &px), 15);
    assert_int_equal(px.src.ss_family, AF_UNSPEC);
    static const char junk[] = "PROXY UNKNOWN  junk is ignored 1 2\r\n";
    assert_int_equal(parse_str(junk, &px), strlen(junk));
    assert_int_equal(px.src.ss_family, AF_UNSPEC);
    assert_int_equal(parse_str("PROXY UNKNOWNX\r\n", &px), WSH_PROXY_EV1);
}

/* 107 bytes with the CRLF is the longest line; one more is refused
 * without waiting for a CRLF that may never come. */
static void test_v1_longest_line(void **state)
{
    (void)state;
    static const char max[] = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                              "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_int_equal(strlen(max), 107);
    struct wsh_proxy px;
    assert_int_equal(parse_str(max, &px), 107);

    char over[200];
    memset(over, 0, sizeof(over));
    memcpy(over, "PROXY UNKNOWN ", 14);
    memset(over + 14, 'a', 92); /* CR would land at index 106 */
    memcpy(over + 106, "\r\n", 2);
    size_t first;
    assert_int_equal(parse_all((const uint8_t *)over, 108, &px, &first), WSH_PROXY_EV1);
    assert_int_equal(first, 106); /* decided before the CR arrives */
}

static void test_v1_grammar_errors(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324  443\r\n", /* two spaces */
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 \r\n", /* trailing space */
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",      /* missing field */
        "PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n",      /* extra field */
        "PROXY TCP4 192.0.2.1 198.51.100.2 056324 443\r\n", /* leading zero */
        "PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",  /* past 16 bits */
        "PROXY TCP4 192.0.2.1 198.51.100.2 -1 443\r\n",     /* sign */
        "PROXY TCP4 192.0.2.01 198.51.100.2 1 443\r\n",     /* octet with a zero */
        "PROXY TCP4 2001:db8::1 198.51.100.2 1 443\r\n",    /* family mismatch */
        "PROXY TCP6 192.0.2.1 ::1 1 443\r\n",               /* family mismatch */
        "PROXY TCP5 192.0.2.1 198.51.100.2 1 443\r\n",      /* no such protocol */
        "PROXY tcp4 192.0.2.1 198.51.100.2 1 443\r\n",      /* case matters */
        "PROXY TCP4 192.0.2.1 198.51.100.2 1 443\rX",       /* CR without LF */
        "PROXY TCP4 192.0.2.1 198.51.100.2 1 443\n",        /* LF alone */
        "PROXY TCP4 192.0.2.1\t198.51.100.2 1 443\r\n",     /* control byte */
        "PROXY \r\n",                                       /* nothing */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct wsh_proxy px;
        ssize_t r = parse_str(bad[i], &px);
        if (r != WSH_PROXY_EV1)
            fail_msg("case %zu \"%s\": got %zd", i, bad[i], r);
    }
}

/* A client that speaks HTTP or TLS straight to a PROXY listener is told
 * apart at its first byte; a near-miss at the first byte that differs. */
static void test_not_a_header(void **state)
{
    (void)state;
    struct wsh_proxy px;
    size_t first;
    static const char get[] = "GET / HTTP/1.1\r\n";
    assert_int_equal(parse_all((const uint8_t *)get, strlen(get), &px, &first), WSH_PROXY_ESIG);
    assert_int_equal(first, 1);
    static const uint8_t hello[] = { 0x16, 0x03, 0x01, 0x02, 0x00 };
    assert_int_equal(parse_all(hello, sizeof(hello), &px, &first), WSH_PROXY_ESIG);
    assert_int_equal(first, 1);
    static const char near[] = "PROXX TCP4 1.2.3.4 1.2.3.4 1 2\r\n";
    assert_int_equal(parse_all((const uint8_t *)near, strlen(near), &px, &first), WSH_PROXY_ESIG);
    assert_int_equal(first, 5);
    static const uint8_t v2near[] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51,
                                      0x55, 0x49, 0x54, 0x0B, 0x21, 0x11, 0x00, 0x0C };
    assert_int_equal(parse_all(v2near, sizeof(v2near), &px, &first), WSH_PROXY_ESIG);
    assert_int_equal(first, 12);
    assert_int_equal(wsh_proxy_parse((const uint8_t *)"", 0, &px), 0);
}

/* ------------------------------------------------------------------ */
/* Version 2                                                           */

/* Builds a v2 header: signature, ver/cmd, fam/proto, the body. */
static size_t v2(uint8_t *out, uint8_t vc, uint8_t fp, const uint8_t *body, size_t n)
{
    static const uint8_t sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                     0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };
    memcpy(out, sig, 12);
    out[12] = vc;
    out[13] = fp;
    out[14] = (uint8_t)(n >> 8);
    out[15] = (uint8_t)n;
    memcpy(out + 16, body, n);
    return 16 + n;
}

static void test_v2_tcp4_with_tlvs(void **state)
{
    (void)state;
    /* 192.0.2.1:56324 -> 198.51.100.2:443, then an ALPN TLV (0x01) and
     * an AWS-style TLV (0xEA), then the client's first bytes. */
    static const uint8_t body[] = { 192,  0,    2,    1,    198,  51,   100,  2,
                                    0xDC, 0x04, 0x01, 0xBB, 0x01, 0x00, 0x02, 'h',
                                    '2',  0xEA, 0x00, 0x03, 0x01, 'v',  'p' };
    uint8_t buf[128];
    size_t n = v2(buf, 0x21, 0x11, body, sizeof(body));
    memcpy(buf + n, "GET", 3);
    struct wsh_proxy px;
    assert_int_equal(parse_all(buf, n + 3, &px, NULL), (ssize_t)n);
    assert_int_equal(px.version, 2);
    assert_v4(&px.src, "192.0.2.1", 56324);
    assert_v4(&px.dst, "198.51.100.2", 443);
}

static void test_v2_tcp6(void **state)
{
    (void)state;
    uint8_t body[36] = { 0 };
    struct in6_addr a;
    assert_int_equal(inet_pton(AF_INET6, "2001:db8:1:2::7", &a), 1);
    memcpy(body, a.s6_addr, 16);
    assert_int_equal(inet_pton(AF_INET6, "2001:db8::443", &a), 1);
    memcpy(body + 16, a.s6_addr, 16);
    body[32] = 0x30; /* 12345 */
    body[33] = 0x39;
    body[34] = 0x01; /* 443 */
    body[35] = 0xBB;
    uint8_t buf[64];
    size_t n = v2(buf, 0x21, 0x21, body, sizeof(body));
    struct wsh_proxy px;
    assert_int_equal(parse_all(buf, n, &px, NULL), (ssize_t)n);
    assert_v6(&px.src, "2001:db8:1:2::7", 12345);
    assert_v6(&px.dst, "2001:db8::443", 443);
}

/* LOCAL (a health check), UNSPEC, a UNIX socket and a datagram source
 * name no TCP client: the connection's own endpoints stand. LOCAL's
 * body, whatever it holds, is skipped. */
static void test_v2_no_client(void **state)
{
    (void)state;
    uint8_t body[216];
    memset(body, 0x5A, sizeof(body));
    static const struct {
        uint8_t vc, fp;
        size_t n;
    } cases[] = {
        { 0x20, 0x00, 0 },   /* LOCAL, nothing */
        { 0x20, 0x11, 5 },   /* LOCAL ignores the body, even a short one */
        { 0x21, 0x00, 0 },   /* PROXY UNSPEC */
        { 0x21, 0x31, 216 }, /* PROXY over a UNIX stream */
        { 0x21, 0x12, 12 },  /* PROXY UDP over IPv4 */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t buf[256];
        size_t n = v2(buf, cases[i].vc, cases[i].fp, body, cases[i].n);
        struct wsh_proxy px;
        memset(&px, 0xFF, sizeof(px));
        assert_int_equal(parse_all(buf, n, &px, NULL), (ssize_t)n);
        assert_int_equal(px.version, 2);
        assert_int_equal(px.src.ss_family, AF_UNSPEC);
        assert_int_equal(px.dst.ss_family, AF_UNSPEC);
    }
}

/* Each bad field is refused at its own byte, before the body arrives. */
static void test_v2_bad_fields_fail_fast(void **state)
{
    (void)state;
    uint8_t body[64];
    memset(body, 0, sizeof(body));
    static const struct {
        uint8_t vc, fp;
        size_t n;
        ssize_t rc;
        size_t at;
    } cases[] = {
        { 0x11, 0x11, 12, WSH_PROXY_EV2, 13 }, /* version 1 in a v2 header */
        { 0x31, 0x11, 12, WSH_PROXY_EV2, 13 }, /* version 3 */
        { 0x22, 0x11, 12, WSH_PROXY_EV2, 13 }, /* command 2 */
        { 0x21, 0x41, 12, WSH_PROXY_EV2, 14 }, /* family 4 */
        { 0x21, 0x13, 12, WSH_PROXY_EV2, 14 }, /* transport 3 */
        { 0x21, 0x11, 11, WSH_PROXY_EV2, 16 }, /* IPv4 needs 12 */
        { 0x21, 0x21, 35, WSH_PROXY_EV2, 16 }, /* IPv6 needs 36 */
        { 0x21, 0x31, 60, WSH_PROXY_EV2, 16 }, /* UNIX needs 216 */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t buf[128];
        size_t n = v2(buf, cases[i].vc, cases[i].fp, body, cases[i].n);
        struct wsh_proxy px;
        size_t first;
        ssize_t r = parse_all(buf, n, &px, &first);
        if (r != cases[i].rc || first != cases[i].at)
            fail_msg("case %zu: got %zd at %zu", i, r, first);
    }
}

/* TLVs must tile the rest of the header exactly. */
static void test_v2_tlv_overrun(void **state)
{
    (void)state;
    uint8_t body[32] = { 10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2 };
    uint8_t buf[64];
    struct wsh_proxy px;
    /* A TLV that claims 5 bytes where 4 remain. */
    memcpy(body + 12, (const uint8_t[]){ 0x02, 0x00, 0x05, 'a', 'b', 'c', 'd' }, 7);
    size_t n = v2(buf, 0x21, 0x11, body, 19);
    assert_int_equal(parse_all(buf, n, &px, NULL), WSH_PROXY_EV2);
    /* Two stray bytes: too short for a TLV head. */
    memcpy(body + 12, (const uint8_t[]){ 0x02, 0x00 }, 2);
    n = v2(buf, 0x21, 0x11, body, 14);
    assert_int_equal(parse_all(buf, n, &px, NULL), WSH_PROXY_EV2);
    /* A zero-length TLV closing the header exactly is fine. */
    memcpy(body + 12, (const uint8_t[]){ 0x04, 0x00, 0x00 }, 3);
    n = v2(buf, 0x21, 0x11, body, 15);
    assert_int_equal(parse_all(buf, n, &px, NULL), (ssize_t)n);
    assert_v4(&px.src, "10.0.0.1", 1);
}

/* The CRC32C check value of the Castagnoli polynomial (RFC 3720 B.4's
 * and every CRC catalogue's "123456789"), whole and in pieces. */
static void test_crc32c(void **state)
{
    (void)state;
    const uint8_t *s = (const uint8_t *)"123456789";
    assert_int_equal(wsh_crc32c(0, s, 9), 0xE3069283u);
    assert_int_equal(wsh_crc32c(wsh_crc32c(0, s, 4), s + 4, 5), 0xE3069283u);
    assert_int_equal(wsh_crc32c(0, s, 0), 0);
    /* RFC 3720 B.4: 32 bytes of zeros. */
    static const uint8_t zeros[32];
    assert_int_equal(wsh_crc32c(0, zeros, 32), 0x8A9136AAu);
}

/* A v2 header with a PP2_TYPE_CRC32C TLV: taken when the sum over the
 * header (the TLV's value as zeros) matches, refused at any changed byte,
 * and a CRC TLV that is not 4 bytes, or comes twice, is malformed. */
static void test_v2_crc32c(void **state)
{
    (void)state;
    uint8_t body[32] = { 192, 0, 2, 1, 198, 51, 100, 2, 0xDC, 0x04, 0x01, 0xBB,
                         0x03, 0x00, 0x04, 0, 0, 0, 0, 0x01, 0x00, 0x02, 'h', '2' };
    uint8_t buf[64];
    struct wsh_proxy px;
    size_t n = v2(buf, 0x21, 0x11, body, 24);
    uint32_t crc = wsh_crc32c(0, buf, n); /* the value bytes are zero yet */
    buf[31] = (uint8_t)(crc >> 24);
    buf[32] = (uint8_t)(crc >> 16);
    buf[33] = (uint8_t)(crc >> 8);
    buf[34] = (uint8_t)crc;
    assert_int_equal(parse_all(buf, n, &px, NULL), (ssize_t)n);
    assert_v4(&px.src, "192.0.2.1", 56324);
    for (size_t i = 12; i < n; i++) {
        /* Skipped: version, family and length (refused as malformed), the
         * CRC TLV's type (it would no longer be one) and the TLV lengths. */
        if ((i >= 12 && i <= 15) || (i >= 28 && i <= 30) || i == 36 || i == 37)
            continue;
        buf[i] ^= 0x10;
        assert_int_equal(wsh_proxy_parse(buf, n, &px), WSH_PROXY_ECRC);
        buf[i] ^= 0x10;
    }
    assert_int_equal(wsh_proxy_parse(buf, n, &px), (ssize_t)n);
    assert_string_equal(wsh_proxy_strerror(WSH_PROXY_ECRC), "PROXY v2 header checksum mismatch");
    /* A 3-byte CRC TLV. */
    memcpy(body + 12, (const uint8_t[]){ 0x03, 0x00, 0x03, 1, 2, 3 }, 6);
    n = v2(buf, 0x21, 0x11, body, 18);
    assert_int_equal(parse_all(buf, n, &px, NULL), WSH_PROXY_EV2);
    /* Two of them. */
    memcpy(body + 12, (const uint8_t[]){ 0x03, 0x00, 0x04, 0, 0, 0, 0, 0x03, 0x00, 0x04, 0, 0, 0, 0 },
           14);
    n = v2(buf, 0x21, 0x11, body, 26);
    assert_int_equal(parse_all(buf, n, &px, NULL), WSH_PROXY_EV2);
}

/* WSH_PROXY_MAX bytes in all is accepted; one more is refused as soon as
 * the length field is read. */
static void test_v2_size_bound(void **state)
{
    (void)state;
    static uint8_t buf[WSH_PROXY_MAX + 1];
    static uint8_t body[WSH_PROXY_MAX];
    memset(body, 0, sizeof(body));
    size_t tl = WSH_PROXY_MAX - 16 - 12 - 3;
    body[12] = 0xE0;
    body[13] = (uint8_t)(tl >> 8);
    body[14] = (uint8_t)tl;
    struct wsh_proxy px;
    size_t n = v2(buf, 0x21, 0x11, body, WSH_PROXY_MAX - 16);
    assert_int_equal(n, WSH_PROXY_MAX);
    assert_int_equal(wsh_proxy_parse(buf, n, &px), WSH_PROXY_MAX);
    assert_int_equal(wsh_proxy_parse(buf, n - 1, &px), 0);

    buf[14] = (uint8_t)((WSH_PROXY_MAX - 15) >> 8);
    buf[15] = (uint8_t)(WSH_PROXY_MAX - 15);
    assert_int_equal(wsh_proxy_parse(buf, 16, &px), WSH_PROXY_ETOOBIG);
    assert_int_equal(wsh_proxy_parse(buf, 15, &px), 0);
    assert_string_equal(wsh_proxy_strerror(WSH_PROXY_ETOOBIG),
                        "PROXY v2 header longer than 4096 bytes");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_tcp4),           cmocka_unit_test(test_v1_tcp6),
        cmocka_unit_test(test_v1_unknown),        cmocka_unit_test(test_v1_longest_line),
        cmocka_unit_test(test_v1_grammar_errors), cmocka_unit_test(test_not_a_header),
        cmocka_unit_test(test_v2_tcp4_with_tlvs), cmocka_unit_test(test_v2_tcp6),
        cmocka_unit_test(test_v2_no_client),      cmocka_unit_test(test_v2_bad_fields_fail_fast),
        cmocka_unit_test(test_v2_tlv_overrun),    cmocka_unit_test(test_v2_size_bound),
        cmocka_unit_test(test_crc32c),            cmocka_unit_test(test_v2_crc32c),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
