/* Unit tests for src/http/forwarded.c: address blocks and the client
 * behind trusted proxies from X-Forwarded-For. Requests are parsed by the
 * real request parser, as the server sees them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "wshub/http.h"

static struct wsh_cidr cidr(const char *s)
{
    struct wsh_cidr c;
    if (!wsh_cidr_parse(s, strlen(s), &c))
        fail_msg("\"%s\" refused", s);
    return c;
}

static struct sockaddr_storage sa(const char *s)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(s, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, s, &a->sin6_addr), 1);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, s, &a->sin_addr), 1);
    }
    return ss;
}

static const char *text(const struct sockaddr_storage *ss, char *buf, size_t n)
{
    if (ss->ss_family == AF_INET)
        return inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, buf, (socklen_t)n);
    return inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, buf, (socklen_t)n);
}

static void test_cidr_parse(void **state)
{
    (void)state;
    struct wsh_cidr c = cidr("10.0.0.0/8");
    assert_int_equal(c.family, 4);
    assert_int_equal(c.bits, 8);
    assert_int_equal(cidr("192.0.2.1").bits, 32);
    assert_int_equal(cidr("0.0.0.0/0").bits, 0);
    assert_int_equal(cidr("2001:db8::/32").family, 6);
    assert_int_equal(cidr("::1").bits, 128);
    assert_int_equal(cidr("192.0.2.16/28").bits, 28);
    /* IPv4-mapped: the IPv4 block, which a dual-stack listener's IPv4
     * peers (::ffff:a.b.c.d) are compared against. */
    c = cidr("::ffff:10.0.0.0/104");
    assert_int_equal(c.family, 4);
    assert_int_equal(c.bits, 8);
    assert_memory_equal(c.addr, "\x0a\x00\x00\x00", 4);
    assert_int_equal(cidr("::ffff:192.0.2.1").family, 4);
    assert_int_equal(cidr("::ffff:192.0.2.1").bits, 32);
    struct sockaddr_storage peer = sa("::ffff:10.1.2.3");
    assert_true(wsh_cidr_contains(&c, 1, &peer));
    peer = sa("10.1.2.3");
    assert_true(wsh_cidr_contains(&c, 1, &peer));
    static const char *const bad[] = {
        "10.0.0.1/8",  /* host bits set */
        "10.0.0.0/33", "::/129", "10.0.0.0/08", "10.0.0.0/", "10.0.0.0/8x", "abc", "",
        "10.0.0.0/-1", "192.0.2.16/27 ", "010.0.0.0/8", "2001:db8::1/32",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct wsh_cidr x;
        if (wsh_cidr_parse(bad[i], strlen(bad[i]), &x))
            fail_msg("\"%s\" accepted", bad[i]);
    }
}

static void test_cidr_contains(void **state)
{
    (void)state;
    struct wsh_cidr set[3] = { cidr("10.0.0.0/8"), cidr("172.16.0.0/12"), cidr("2001:db8::/32") };
    struct sockaddr_storage in[] = { sa("10.255.0.1"), sa("172.31.255.255"), sa("2001:db8:ffff::1"),
                                     sa("::ffff:10.1.2.3") };
    struct sockaddr_storage out[] = { sa("11.0.0.1"), sa("172.32.0.0"), sa("2001:db9::1"),
                                      sa("::ffff:11.1.2.3"), sa("::a00:1") };
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++)
        assert_true(wsh_cidr_contains(set, 3, &in[i]));
    for (size_t i = 0; i < sizeof(out) / sizeof(out[0]); i++)
        assert_false(wsh_cidr_contains(set, 3, &out[i]));
    assert_false(wsh_cidr_contains(NULL, 0, &in[0]));
    struct wsh_cidr all = cidr("0.0.0.0/0");
    assert_true(wsh_cidr_contains(&all, 1, &out[0]));
    assert_false(wsh_cidr_contains(&all, 1, &out[2])); /* not IPv6 */
}

/* Parses a request with the given header lines and resolves its client.
 * Returns the address as text, or "peer" when the peer stands. */
static const char *client_of(const char *fields, char *buf, size_t n)
{
    static const char *const tr[] = { "10.0.0.0/8", "2001:db8:ffff::/48", "192.0.2.1" };
    struct wsh_cidr trusted[3];
    for (int i = 0; i < 3; i++)
        trusted[i] = cidr(tr[i]);
    static char head[8192]; /* at least the parser's request-line scan */
    int hl = snprintf(head, sizeof(head), "GET /ws HTTP/1.1\r\nHost: x\r\n%s\r\n", fields);
    struct wsh_http_header headers[WSH_HTTP_DEFAULT_HEADERS];
    struct wsh_http_request req;
    int status = 0;
    ssize_t r = wsh_http_parse_request(head, (size_t)hl, 0, NULL, &req, headers,
                                       WSH_HTTP_DEFAULT_HEADERS, &status);
    assert_int_equal(r, hl);
    struct sockaddr_storage out;
    memset(&out, 0xAB, sizeof(out));
    struct sockaddr_storage untouched = out;
    if (!wsh_http_forwarded_for(&req, trusted, 3, &out)) {
        assert_memory_equal(&out, &untouched, sizeof(out));
        return "peer";
    }
    return text(&out, buf, n);
}

static void test_forwarded_for(void **state)
{
    (void)state;
    static const struct {
        const char *fields, *want;
    } cases[] = {
        { "X-Forwarded-For: 203.0.113.5\r\n", "203.0.113.5" },
        /* Trusted hops are skipped; what the client wrote further left is
         * never read. */
        { "X-Forwarded-For: 198.51.100.1, 203.0.113.5, 10.0.0.2, 192.0.2.1\r\n", "203.0.113.5" },
        { "X-Forwarded-For: 10.0.0.3, 10.0.0.2\r\n", "10.0.0.3" }, /* all trusted: leftmost */
        /* Several fields are one list, the last field's last entry first. */
        { "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 10.1.1.1\r\n", "203.0.113.9" },
        { "X-Forwarded-For: 10.1.1.1\r\nAccept: */*\r\nx-forwarded-for: 203.0.113.7\r\n",
          "203.0.113.7" },
        { "X-Forwarded-For: [2001:db8::5]:443, 10.0.0.1\r\n", "2001:db8::5" },
        { "X-Forwarded-For: 203.0.113.5:5678\r\n", "203.0.113.5" },
        { "X-Forwarded-For: 2001:db8::6\r\n", "2001:db8::6" },
        { "X-Forwarded-For: 2001:db8:ffff:1::7,\t2001:db8::8\r\n", "2001:db8::8" },
        { "X-Forwarded-For: 2001:db8::9 ,2001:db8:ffff::1\r\n", "2001:db8::9" },
        /* An unreadable entry stops the walk at the nearest proxy. */
        { "X-Forwarded-For: unknown, 10.0.0.1\r\n", "10.0.0.1" },
        { "X-Forwarded-For: , 10.0.0.1\r\n", "10.0.0.1" },
        { "X-Forwarded-For: 203.0.113.5, unknown\r\n", "peer" },
        { "X-Forwarded-For: 1.2.3.4:80:90\r\n", "peer" },
        { "X-Forwarded-For: [10.0.0.1]\r\n", "peer" },
        { "X-Forwarded-For: [2001:db8::1]x\r\n", "peer" },
        { "X-Forwarded-For: 2001:db8::1:80]\r\n", "peer" },
        { "X-Forwarded-For:\r\n", "peer" },
        { "Forwarded: for=203.0.113.5\r\n", "peer" },
        { "", "peer" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[INET6_ADDRSTRLEN];
        const char *got = client_of(cases[i].fields, buf, sizeof(buf));
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("case %zu: got %s, want %s", i, got, cases[i].want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cidr_parse),
        cmocka_unit_test(test_cidr_contains),
        cmocka_unit_test(test_forwarded_for),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
