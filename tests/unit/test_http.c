/* Unit tests for the HTTP/1.1 request-head parser (src/http/http1.c).
 * Every input is fed whole, split at every offset and one byte at a time,
 * and each copy ends right before a PROT_NONE page so over-reads fault
 * (picohttpparser test.c). */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka.h needs the three headers above. */
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "wshub/http.h"

#define S(lit) lit, sizeof(lit) - 1
#define ARENA  (64 * 1024)
#define HMAX   128
#define OUTMAX (HMAX * 64 + 256)

static char *guard; /* first byte of the PROT_NONE page */
static size_t arena_size;
static struct wsh_http_header hdrs[HMAX];

static int setup(void **state)
{
    (void)state;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    arena_size = ARENA + page;
    char *m = mmap(NULL, arena_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED || mprotect(m + ARENA, page, PROT_NONE) != 0)
        return -1;
    guard = m + ARENA;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return munmap(guard - ARENA, arena_size);
}

/* Copies s[0..n) so that its last byte sits right before the guard page. */
static const char *place(const char *s, size_t n)
{
    assert_true(n <= ARENA);
    char *d = guard - n;
    memcpy(d, s, n);
    return d;
}

static ssize_t feed(const char *s, size_t n, size_t last, const struct wsh_http_limits *lim,
                    struct wsh_http_request *req, int *st, const char **base)
{
    *base = place(s, n);
    return wsh_http_parse_request(*base, n, last, lim, req, hdrs, HMAX, st);
}

static ptrdiff_t off(const char *p, const char *base)
{
    return p == NULL ? -1 : p - base;
}

/* Canonical text of an outcome, slices as offsets from the buffer start, so
 * results from different copies compare equal and mismatches print. */
static void describe(char *out, ssize_t r, int st, const struct wsh_http_request *q,
                     const char *base)
{
    int n = snprintf(out, OUTMAX, "r=%zd st=%d", r, st);
    if (r <= 0)
        return;
    n += snprintf(out + n, (size_t)(OUTMAX - n),
                  " m=%td+%zu t=%td+%zu p=%td+%zu q=%td+%zu v=%d cl=%lld ch=%d nh=%zu",
                  off(q->method, base), q->method_len, off(q->target, base), q->target_len,
                  off(q->path, base), q->path_len, off(q->query, base), q->query_len,
                  q->minor_version, q->content_length, q->chunked, q->nheaders);
    for (size_t i = 0; i < q->nheaders; i++)
        n += snprintf(out + n, (size_t)(OUTMAX - n), " [%td+%zu:%td+%zu]",
                      off(q->headers[i].name, base), q->headers[i].name_len,
                      off(q->headers[i].value, base), q->headers[i].value_len);
}

static ssize_t outcome_whole(char *out, const char *s, size_t n, const struct wsh_http_limits *lim)
{
    struct wsh_http_request q;
    const char *base;
    int st = -1;
    ssize_t r = feed(s, n, 0, lim, &q, &st, &base);
    describe(out, r, st, &q, base);
    return r;
}

static void outcome_split(char *out, const char *s, size_t n, size_t at,
                          const struct wsh_http_limits *lim)
{
    struct wsh_http_request q;
    const char *base;
    int st = -1;
    ssize_t r = feed(s, at, 0, lim, &q, &st, &base);
    if (r == 0)
        r = feed(s, n, at, lim, &q, &st, &base);
    describe(out, r, st, &q, base);
}

static void outcome_bytewise(char *out, const char *s, size_t n, const struct wsh_http_limits *lim)
{
    struct wsh_http_request q;
    const char *base = NULL;
    int st = -1;
    ssize_t r = 0;
    for (size_t k = 1; k <= n && r == 0; k++)
        r = feed(s, k, k - 1, lim, &q, &st, &base);
    describe(out, r, st, &q, base);
}

/* Asserts the whole-input result, then that every feeding gives the same. */
static void check(const char *s, size_t n, const struct wsh_http_limits *lim, ssize_t want_r,
                  int want_st)
{
    static char whole[OUTMAX], other[OUTMAX];
    struct wsh_http_request q;
    const char *base;
    int st = -1;
    ssize_t r = feed(s, n, 0, lim, &q, &st, &base);
    assert_int_equal(r, want_r);
    assert_int_equal(st, want_r < 0 ? want_st : 0);
    outcome_whole(whole, s, n, lim);
    for (size_t at = 1; at < n; at++) {
        outcome_split(other, s, n, at, lim);
        if (strcmp(whole, other) != 0) {
            print_error("split at %zu\n", at);
            assert_string_equal(whole, other);
        }
    }
    outcome_bytewise(other, s, n, lim);
    assert_string_equal(whole, other);
}

static void check_ok(const char *s, size_t n)
{
    check(s, n, NULL, (ssize_t)n, 0);
}

static void check_err(const char *s, size_t n, int want_st)
{
    check(s, n, NULL, want_st == 400 || want_st == 505 ? WSH_EPROTO : WSH_ETOOBIG, want_st);
}

static void parse_ok(const char *s, size_t n, const struct wsh_http_limits *lim,
                     struct wsh_http_request *q)
{
    const char *base;
    int st = -1;
    assert_int_equal(feed(s, n, 0, lim, q, &st, &base), (ssize_t)n);
    assert_int_equal(st, 0);
}

static void assert_slice(const char *p, size_t n, const char *want)
{
    assert_non_null(p);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(p, want, n);
}

static const char upgrade[] = "GET /chat?room=lobby HTTP/1.1\r\n"
                              "Host: example.com\r\n"
                              "Upgrade: websocket\r\n"
                              "Connection: Upgrade\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                              "Sec-WebSocket-Version: 13\r\n"
                              "Origin: http://example.com\r\n"
                              "\r\n";

static void test_http_parses_upgrade_request(void **state)
{
    (void)state;
    struct wsh_http_request q;
    parse_ok(S(upgrade), NULL, &q);
    assert_slice(q.method, q.method_len, "GET");
    assert_slice(q.target, q.target_len, "/chat?room=lobby");
    assert_slice(q.path, q.path_len, "/chat");
    assert_slice(q.query, q.query_len, "room=lobby");
    assert_int_equal(q.minor_version, 1);
    assert_int_equal(q.nheaders, 6);
    assert_ptr_equal(q.headers, hdrs);
    assert_slice(q.headers[0].name, q.headers[0].name_len, "Host");
    assert_slice(q.headers[3].value, q.headers[3].value_len, "dGhlIHNhbXBsZSBub25jZQ==");
    assert_int_equal(q.content_length, -1);
    assert_int_equal(q.chunked, 0);
    check_ok(S(upgrade));
}

static void test_http_returns_head_length_with_trailing_bytes(void **state)
{
    (void)state;
    static const char in[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n\x81\x85garbage\n\n";
    check(S(in), NULL, (ssize_t)(sizeof(in) - 1 - 11), 0);
}

static void test_http_splits_path_and_query(void **state)
{
    (void)state;
    struct wsh_http_request q;
    parse_ok(S("GET /a/b HTTP/1.1\r\n\r\n"), NULL, &q);
    assert_slice(q.path, q.path_len, "/a/b");
    assert_null(q.query);
    assert_int_equal(q.query_len, 0);
    assert_int_equal(q.nheaders, 0);

    parse_ok(S("GET /x?a=1?b=2 HTTP/1.1\r\n\r\n"), NULL, &q);
    assert_slice(q.path, q.path_len, "/x");
    assert_slice(q.query, q.query_len, "a=1?b=2");

    parse_ok(S("GET /x? HTTP/1.1\r\n\r\n"), NULL, &q);
    assert_slice(q.path, q.path_len, "/x");
    assert_non_null(q.query);
    assert_int_equal(q.query_len, 0);

    parse_ok(S("GET ?only HTTP/1.1\r\n\r\n"), NULL, &q);
    assert_int_equal(q.path_len, 0);
    assert_slice(q.query, q.query_len, "only");
    check_ok(S("GET /x?a=1?b=2 HTTP/1.1\r\n\r\n"));
}

static void test_http_accepts_http10(void **state)
{
    (void)state;
    struct wsh_http_request q;
    parse_ok(S("GET / HTTP/1.0\r\nHost: a\r\n\r\n"), NULL, &q);
    assert_int_equal(q.minor_version, 0);
    check_ok(S("GET / HTTP/1.0\r\nHost: a\r\n\r\n"));
    check_ok(S("GET / HTTP/1.9\r\n\r\n"));
}

static void test_http_accepts_any_token_method(void **state)
{
    (void)state;
    check_ok(S("M-SEARCH * HTTP/1.1\r\n\r\n"));
    check_ok(S("!#$%&'*+-.^_`|~09azAZ / HTTP/1.1\r\n\r\n"));
    check_ok(S("CONNECT example.com:443 HTTP/1.1\r\n\r\n"));
}

static void test_http_trims_ows_in_values(void **state)
{
    (void)state;
    static const char in[] = "GET / HTTP/1.1\r\n"
                             "A:  \t v w \t \r\n"
                             "B:\r\n"
                             "C: \t \r\n"
                             "D:x\r\n"
                             "\r\n";
    struct wsh_http_request q;
    parse_ok(S(in), NULL, &q);
    assert_int_equal(q.nheaders, 4);
    assert_slice(q.headers[0].value, q.headers[0].value_len, "v w");
    assert_int_equal(q.headers[1].value_len, 0);
    assert_int_equal(q.headers[2].value_len, 0);
    assert_slice(q.headers[3].value, q.headers[3].value_len, "x");
    check_ok(S(in));
}

static void test_http_accepts_obs_text_in_values(void **state)
{
    (void)state;
    check_ok(S("GET / HTTP/1.1\r\nX-Name: caf\xc3\xa9 \xff\r\n\r\n"));
}

static void test_http_find_is_case_insensitive(void **state)
{
    (void)state;
    struct wsh_http_request q;
    parse_ok(S("GET / HTTP/1.1\r\nX-A: 1\r\nsec-websocket-KEY: k\r\nx-a: 2\r\nHos: h\r\n\r\n"),
             NULL, &q);
    const struct wsh_http_header *h = wsh_http_find(&q, "Sec-WebSocket-Key");
    assert_non_null(h);
    assert_slice(h->value, h->value_len, "k");
    h = wsh_http_find(&q, "x-A");
    assert_non_null(h);
    assert_slice(h->value, h->value_len, "1");
    assert_null(wsh_http_find(&q, "Host"));
    assert_null(wsh_http_find(&q, "X"));
    assert_null(wsh_http_find(&q, ""));
}

static void test_http_reads_content_length(void **state)
{
    (void)state;
    struct wsh_http_request q;
    parse_ok(S("POST / HTTP/1.1\r\nContent-Length: 42\r\n\r\n"), NULL, &q);
    assert_int_equal(q.content_length, 42);
    parse_ok(S("POST / HTTP/1.1\r\ncontent-length: 0\r\nCONTENT-LENGTH: 0\r\n\r\n"), NULL, &q);
    assert_int_equal(q.content_length, 0);
    parse_ok(S("POST / HTTP/1.1\r\nContent-Length: 9223372036854775807\r\n\r\n"), NULL, &q);
    assert_int_equal(q.content_length, 9223372036854775807LL);
    check_ok(S("POST / HTTP/1.1\r\nContent-Length: 7\r\nContent-Length:7 \r\n\r\n"));
}

static void test_http_reads_transfer_encoding(void **state)
{
    (void)state;
    struct wsh_http_request q;
    parse_ok(S("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"), NULL, &q);
    assert_int_equal(q.chunked, 1);
    assert_int_equal(q.content_length, -1);
    parse_ok(S("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"),
             NULL, &q);
    assert_int_equal(q.chunked, 1);
    /* RFC 9112 6.3: chunked not last, the length is unknown: 400. */
    check_err(S("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), 400);
    check_err(S("GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), 400);
    check_err(S("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                "Transfer-Encoding: identity\r\n\r\n"),
              400);
    check_err(S("POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n"), 400);
}

static void test_http_incomplete_returns_zero(void **state)
{
    (void)state;
    for (size_t k = 0; k < sizeof(upgrade) - 1; k++) {
        struct wsh_http_request q;
        const char *base;
        int st = -1;
        assert_int_equal(feed(upgrade, k, 0, NULL, &q, &st, &base), 0);
        assert_int_equal(st, 0);
    }
}

static void test_http_rejects_bare_lf(void **state)
{
    (void)state;
    check_err(S("GET / HTTP/1.1\n\r\n"), 400);
    check_err(S("GET / HTTP/1.1\r\nHost: a\n\r\n"), 400);
    check_err(S("GET / HTTP/1.1\r\nHost: a\r\n\n"), 400);
    check_err(S("\n"), 400);
    check_err(S("GET / HTTP/1.1\r\n\n"), 400);
    /* Decided as soon as the LF arrives, before the head is complete. */
    check_err(S("GET / HTTP/1.1\r\nHost: a\nX"), 400);
}

static void test_http_rejects_bare_cr(void **state)
{
    (void)state;
    check_err(S("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"), 400);
    check_err(S("GET /\r HTTP/1.1\r\n\r\n"), 400);
    check_err(S("GET / HTTP/1.1\r\r\n\r\n"), 400);
    check_err(S("GET / HTTP/1.1\r\nHo\rst: a\r\n\r\n"), 400);
    check_err(S("GET / HTTP/1.1\r\n\rHost: a\r\n\r\n"), 400);
}

/* RFC 9112 2.2: one empty line before the request line is ignored. */
static void test_http_ignores_one_leading_empty_line(void **state)
{
    (void)state;
    check_ok(S("\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"));
    struct wsh_http_request q;
    parse_ok(S("\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"), NULL, &q);
    assert_int_equal(q.path_len, 8);
    assert_memory_equal(q.path, "/healthz", 8);
    assert_int_equal(q.nheaders, 1);
}

/* RFC 9112 3.2.2: the absolute-form is accepted, its path and query
 * taken as the origin-form's; one with no host is refused. */
static void test_http_absolute_form(void **state)
{
    (void)state;
    static const struct {
        const char *req, *path, *query;
    } ok[] = {
        { "GET http://example.com/healthz HTTP/1.1\r\nHost: example.com\r\n\r\n", "/healthz", NULL },
        { "GET HTTPS://a:8443/ws?token=x HTTP/1.1\r\nHost: a\r\n\r\n", "/ws", "token=x" },
        { "GET http://[::1]:80/ HTTP/1.1\r\nHost: a\r\n\r\n", "/", NULL },
        /* An empty path is "/" (RFC 9110 4.2.3). */
        { "GET http://example.com HTTP/1.1\r\nHost: a\r\n\r\n", "/", NULL },
        { "GET http://a?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", "/", "x=1" },
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        struct wsh_http_request q;
        check_ok(ok[i].req, strlen(ok[i].req));
        parse_ok(ok[i].req, strlen(ok[i].req), NULL, &q);
        assert_int_equal(q.path_len, strlen(ok[i].path));
        assert_memory_equal(q.path, ok[i].path, q.path_len);
        if (ok[i].query == NULL) {
            assert_null(q.query);
        } else {
            assert_int_equal(q.query_len, strlen(ok[i].query));
            assert_memory_equal(q.query, ok[i].query, q.query_len);
        }
    }
    check_err(S("GET http:///x HTTP/1.1\r\n\r\n"), 400); /* no host */
    check_err(S("GET http://a#f HTTP/1.1\r\n\r\n"), 400);
}

static void test_http_rejects_bad_request_line(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "\r\n\r\n",                          /* empty request line */
        "\r\n\r\nGET / HTTP/1.1\r\n\r\n",    /* two leading empty lines */
        " / HTTP/1.1\r\n\r\n",               /* empty method */
        "G(ET / HTTP/1.1\r\n\r\n",           /* method not a token */
        "GET\t/ HTTP/1.1\r\n\r\n",           /* HTAB as separator */
        "GET  / HTTP/1.1\r\n\r\n",           /* two SP */
        "GET /  HTTP/1.1\r\n\r\n",           /* two SP */
        "GET / HTTP/1.1 \r\n\r\n",           /* trailing SP */
        "GET HTTP/1.1\r\n\r\n",              /* no target */
        "GET /\r\n\r\n",                     /* no version */
        "GET / \r\n\r\n",                    /* empty version */
        "GET /\x01 HTTP/1.1\r\n\r\n",        /* CTL in target */
        "GET /\x7f HTTP/1.1\r\n\r\n",        /* DEL in target */
        "GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n", /* non-ASCII target */
        "GET / http/1.1\r\n\r\n",            /* case-sensitive name */
        "GET / HTTP/1.10\r\n\r\n",           /* two-digit minor */
        "GET / HTTP/11\r\n\r\n",
        "GET / HTTP/1\r\n\r\n",
        "GET / HTTP/1.x\r\n\r\n",
        "GET / HTTP/x.1\r\n\r\n",
        "GET / HTTP/1,1\r\n\r\n",
        "GET / HTTQ/1.1\r\n\r\n",
        "GET / HTTP/1.1 extra\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        check_err(bad[i], strlen(bad[i]), 400);
}

static void test_http_rejects_other_major_version_with_505(void **state)
{
    (void)state;
    check_err(S("GET / HTTP/2.0\r\n\r\n"), 505);
    check_err(S("PRI * HTTP/2.0\r\n\r\n"), 505);
    check_err(S("GET / HTTP/0.9\r\nHost: a\r\n\r\n"), 505);
    check_err(S("GET / HTTP/3.1\r\n\r\n"), 505);
}

static void test_http_rejects_bad_field_name(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",  /* SP before colon */
        "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", /* HTAB before colon */
        "GET / HTTP/1.1\r\nHost a\r\n\r\n",    /* no colon */
        "GET / HTTP/1.1\r\nHost\r\n\r\n",      /* no colon */
        "GET / HTTP/1.1\r\n: a\r\n\r\n",       /* empty name */
        "GET / HTTP/1.1\r\nX@Y: a\r\n\r\n",    /* non-token name */
        "GET / HTTP/1.1\r\nX\"Y: a\r\n\r\n",   "GET / HTTP/1.1\r\nX\x80: a\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        check_err(bad[i], strlen(bad[i]), 400);
}

static void test_http_rejects_obs_fold(void **state)
{
    (void)state;
    check_err(S("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n"), 400);
    check_err(S("GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n"), 400);
    check_err(S("GET / HTTP/1.1\r\n Host: a\r\n\r\n"), 400);
}

static void test_http_rejects_ctl_in_value(void **state)
{
    (void)state;
    check_err(S("GET / HTTP/1.1\r\nX: a\x01\r\n\r\n"), 400);
    check_err(S("GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n"), 400);
    check_err(S("GET / HTTP/1.1\r\nX: \x1b[31m\r\n\r\n"), 400);
    check_err(S("GET / HTTP/1.1\r\nX: a\0b\r\n\r\n"), 400);
    check_ok(S("GET / HTTP/1.1\r\nX: a\tb\r\n\r\n"));
}

static void test_http_rejects_bad_content_length(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "POST / HTTP/1.1\r\nContent-Length: 12a\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 9223372036854775808\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        check_err(bad[i], strlen(bad[i]), 400);
}

static void test_http_rejects_content_length_with_transfer_encoding(void **state)
{
    (void)state;
    check_err(S("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
    check_err(S("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"), 400);
    check_err(S("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nContent-Length: 0\r\n\r\n"), 400);
}

/* Builds "GET /aaa...a HTTP/1.1" of exactly line_len bytes into out. */
static size_t make_line(char *out, size_t line_len)
{
    size_t k = line_len - 14; /* "GET /" + " HTTP/1.1" */
    memcpy(out, "GET /", 5);
    memset(out + 5, 'a', k);
    memcpy(out + 5 + k, " HTTP/1.1", 9);
    return line_len;
}

static char big[ARENA];

static void test_http_request_line_at_limit(void **state)
{
    (void)state;
    size_t n = make_line(big, WSH_HTTP_DEFAULT_REQUEST_LINE);
    memcpy(big + n, S("\r\nHost: a\r\n\r\n"));
    n += 13;
    check_ok(big, n);
}

static void test_http_rejects_request_line_over_limit_with_414(void **state)
{
    (void)state;
    size_t n = make_line(big, WSH_HTTP_DEFAULT_REQUEST_LINE + 1);
    memcpy(big + n, S("\r\nHost: a\r\n\r\n"));
    check_err(big, n + 13, 414);
    /* The LF right after the over-long line is bare: length decides. */
    memcpy(big + n, S("\nHost: a\r\n\r\n"));
    check_err(big, n + 12, 414);
}

static void test_http_rejects_request_line_over_limit_before_head_ends(void **state)
{
    (void)state;
    size_t rl = WSH_HTTP_DEFAULT_REQUEST_LINE;
    memset(big, 'a', rl + 2);
    memcpy(big, "GET /", 5);
    /* rl + 1 bytes without LF could still end in CRLF at index rl: wait. */
    struct wsh_http_request q;
    const char *base;
    int st = -1;
    assert_int_equal(feed(big, rl + 1, 0, NULL, &q, &st, &base), 0);
    check_err(big, rl + 2, 414);
    /* A bare LF earlier in the line wins: it is decided first. */
    big[100] = '\n';
    check_err(big, rl + 2, 400);
}

static void test_http_head_at_limit(void **state)
{
    (void)state;
    size_t head = WSH_HTTP_DEFAULT_HEAD;
    size_t n = 0;
    memcpy(big, S("GET / HTTP/1.1\r\nX: "));
    n = 19;
    size_t v = head - n - 4;
    memset(big + n, 'v', v);
    n += v;
    memcpy(big + n, S("\r\n\r\n"));
    n += 4;
    assert_int_equal(n, head);
    check_ok(big, n);
}

static void test_http_rejects_head_over_limit_with_431(void **state)
{
    (void)state;
    size_t head = WSH_HTTP_DEFAULT_HEAD + 1;
    memcpy(big, S("GET / HTTP/1.1\r\nX: "));
    size_t n = 19, v = head - n - 4;
    memset(big + n, 'v', v);
    n += v;
    memcpy(big + n, S("\r\n\r\n"));
    check_err(big, n + 4, 431);
    /* Without an end in sight, 431 comes once max_head bytes are in. */
    check_err(big, WSH_HTTP_DEFAULT_HEAD, 431);
    struct wsh_http_request q;
    const char *base;
    int st = -1;
    assert_int_equal(feed(big, WSH_HTTP_DEFAULT_HEAD - 1, 0, NULL, &q, &st, &base), 0);
}

static size_t make_headers(char *out, size_t count)
{
    size_t n = 0;
    memcpy(out, S("GET / HTTP/1.1\r\n"));
    n = 16;
    for (size_t i = 0; i < count; i++)
        n += (size_t)sprintf(out + n, "H%zu: v\r\n", i);
    memcpy(out + n, S("\r\n"));
    return n + 2;
}

static void test_http_header_count_at_limit(void **state)
{
    (void)state;
    size_t n = make_headers(big, WSH_HTTP_DEFAULT_HEADERS);
    struct wsh_http_request q;
    parse_ok(big, n, NULL, &q);
    assert_int_equal(q.nheaders, WSH_HTTP_DEFAULT_HEADERS);
    assert_slice(q.headers[63].name, q.headers[63].name_len, "H63");
    check_ok(big, n);
}

static void test_http_rejects_too_many_headers_with_431(void **state)
{
    (void)state;
    size_t n = make_headers(big, WSH_HTTP_DEFAULT_HEADERS + 1);
    check_err(big, n, 431);
}

static void test_http_custom_limits(void **state)
{
    (void)state;
    const struct wsh_http_limits lim = { .max_request_line = 14, .max_head = 40, .max_headers = 2 };
    check(S("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n"), &lim, 30, 0);
    check(S("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"), &lim, WSH_ETOOBIG, 431);
    check(S("GET /a HTTP/1.1\r\n\r\n"), &lim, WSH_ETOOBIG, 414);
    check(S("GET / HTTP/1.1\r\nA: 12345678901234567\r\n\r\n"), &lim, 40, 0);
    check(S("GET / HTTP/1.1\r\nA: 123456789012345678\r\n\r\n"), &lim, WSH_ETOOBIG, 431);
    /* Both limits broken: the one decided at the earlier byte wins. */
    const struct wsh_http_limits head_first = { .max_request_line = 20,
                                                .max_head = 10,
                                                .max_headers = 2 };
    check(S("GET /abcdefghijklmn HTTP/1.1\r\n\r\n"), &head_first, WSH_ETOOBIG, 431);
    const struct wsh_http_limits line_first = { .max_request_line = 5,
                                                .max_head = 10,
                                                .max_headers = 2 };
    check(S("GET /abcdefghijklmn HTTP/1.1\r\n\r\n"), &line_first, WSH_ETOOBIG, 414);
    const struct wsh_http_limits none = { .max_request_line = 0, .max_head = 0, .max_headers = 0 };
    check(S("G"), &none, WSH_ETOOBIG, 431);
}

static void test_http_caps_headers_at_array_size(void **state)
{
    (void)state;
    struct wsh_http_header few[2];
    struct wsh_http_request q;
    int st = -1;
    const char *b = place(S("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"));
    assert_int_equal(wsh_http_parse_request(b, 36, 0, NULL, &q, few, 2, &st), WSH_ETOOBIG);
    assert_int_equal(st, 431);
    b = place(S("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n"));
    assert_int_equal(wsh_http_parse_request(b, 30, 0, NULL, &q, few, 2, &st), 30);
    assert_int_equal(q.nheaders, 2);
}

static void test_http_tolerates_bad_last_len(void **state)
{
    (void)state;
    struct wsh_http_request q;
    int st = -1;
    const char *b = place(S(upgrade));
    size_t n = sizeof(upgrade) - 1;
    assert_int_equal(wsh_http_parse_request(b, n, n + 5, NULL, &q, hdrs, HMAX, &st), (ssize_t)n);
    assert_int_equal(wsh_http_parse_request(b, n, 0, NULL, &q, hdrs, HMAX, NULL), (ssize_t)n);
}

/* ------------------------------------------------------------------ */
/* Responses (response.c)                                              */

/* Parses text (copied: chunked bodies are decoded in place). Returns the
 * result; *body gets the body as a string. */
static int resp(const char *text, size_t max_body, int *status, char *body, size_t cap,
                const char **why)
{
    size_t n = strlen(text);
    char *buf = malloc(n + 1);
    assert_non_null(buf);
    memcpy(buf, text, n + 1);
    struct wsh_http_response r = { 0 };
    int rc = wsh_http_parse_response(buf, n, max_body, &r, why);
    if (rc == WSH_OK) {
        *status = r.status;
        assert_true(r.body >= buf && r.body + r.body_len <= buf + n);
        assert_true(r.body_len < cap);
        memcpy(body, r.body, r.body_len);
        body[r.body_len] = '\0';
    }
    free(buf);
    return rc;
}

static void test_http_response_framings(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int status;
        const char *body;
    } ok[] = {
        { "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, "hello" },
        /* bytes past Content-Length are not the body */
        { "HTTP/1.1 200 OK\r\ncontent-length:  3 \r\n\r\nabcdef", 200, "abc" },
        { "HTTP/1.0 404 Not Found\r\n\r\nnope", 404, "nope" }, /* delimited by the close */
        { "HTTP/1.1 204\r\n\r\n", 204, "" },                   /* no reason phrase */
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
          "5\r\nhello\r\n1;ext=1\r\n,\r\nB\r\n 0123456789\r\n0\r\n\r\n",
          200, "hello, 0123456789" },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nX-A: b\r\n\r\n"
          "3\r\n{}\n\r\n0\r\nX-Trailer: 1\r\n\r\n",
          200, "{}\n" },
        { "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", 200, "ok" },
        /* obs-text and HTAB inside a value (RFC 9110 5.5) */
        { "HTTP/1.1 200 OK\r\nServer: caf\xc3\xa9\tx\r\nContent-Length: 1\r\n\r\n!", 200, "!" },
        /* Interim responses first (RFC 9110 15.2): skipped. */
        { "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
          "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
          200, "ok" },
        { "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
          "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
          404, "" },
        { "HTTP/1.1 101 Switching\r\n\r\n", 101, "" }, /* the caller's to refuse */
    };
    char body[256];
    int status;
    const char *why;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        int rc = resp(ok[i].text, 1024, &status, body, sizeof(body), &why);
        if (rc != WSH_OK)
            fail_msg("case %zu refused: %s", i, why);
        assert_int_equal(status, ok[i].status);
        assert_string_equal(body, ok[i].body);
    }
}

/* When a fetch may stop reading: a Content-Length body all there (or no
 * body), after any interim responses; never for chunked or close-framed
 * bodies, a head not all there, or anything malformed. */
static void test_http_response_complete(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        bool whole;
    } cases[] = {
        { "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", true },
        { "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhell", false },
        { "HTTP/1.1 200 OK\r\ncontent-length:  5 \r\nX: y\r\n\r\nhello!", true },
        { "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true },
        { "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", false },
        { "HTTP/1.1 204 No Content\r\n\r\n", true },
        { "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
          true },
        { "HTTP/1.1 103 Early Hints\r\n\r\n", false },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false },
        { "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok", false },
        { "HTTP/1.0 200 OK\r\n\r\nbody until the close", false },
        { "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", false },
        { "HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok", false },
        { "HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", false },
        { "HTTP/1.1 200 OK\r\nno colon\r\n\r\n", false },
        { "garbage\r\n\r\n", false },
        { "", false },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (wsh_http_response_complete(cases[i].text, strlen(cases[i].text)) != cases[i].whole)
            fail_msg("case %zu: expected %s", i, cases[i].whole ? "whole" : "not whole");
}

static void test_http_response_rejects(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int rc;
        const char *why;
    } bad[] = {
        { "", WSH_EPROTO, "no complete status line" },
        { "HTTP/1.1 200 OK", WSH_EPROTO, "no complete status line" },
        { "HTTP/2 200 OK\r\n\r\n", WSH_EPROTO, "bad status line" },
        { "HTTP/1.1 20 OK\r\n\r\n", WSH_EPROTO, "bad status line" },
        { "HTTP/1.1 600 X\r\n\r\n", WSH_EPROTO, "bad status line" },
        { "HTTP/1.1 200OK\r\n\r\n", WSH_EPROTO, "bad status line" },
        { "HTTP/1.1 200 OK\nContent-Length: 0\n\n", WSH_EPROTO, "no complete status line" },
        { "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", WSH_EPROTO, "no complete head" },
        { "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n", WSH_EPROTO, "no complete head" },
        { "HTTP/1.1 103 Early Hints\r\n\r\n", WSH_EPROTO, "no complete status line" },
        { "HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n", WSH_EPROTO, "bad header field" },
        { "HTTP/1.1 200 OK\r\nA : b\r\n\r\n", WSH_EPROTO, "bad header field" },
        { "HTTP/1.1 200 OK\r\nA: b\x01\r\n\r\n", WSH_EPROTO, "control byte in a header value" },
        { "HTTP/1.1 200 OK\r\nA: b\x7f\r\n\r\n", WSH_EPROTO, "control byte in a header value" },
        { "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", WSH_EPROTO, "bad Content-Length" },
        { "HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\nx", WSH_EPROTO, "bad Content-Length" },
        { "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", WSH_EPROTO,
          "bad Content-Length" },
        { "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n", WSH_EPROTO,
          "bad Content-Length" },
        { "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nshort", WSH_EPROTO, "truncated body" },
        { "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
          WSH_EPROTO, "both Content-Length and Transfer-Encoding" },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", WSH_EPROTO,
          "a transfer coding other than chunked" },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", WSH_EPROTO,
          "truncated chunked body" },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", WSH_EPROTO,
          "truncated chunked body" },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", WSH_EPROTO,
          "chunk data not followed by CRLF" },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n\r\n", WSH_EPROTO,
          "bad chunk size" },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n", WSH_EPROTO,
          "bad chunk size" },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n", WSH_EPROTO,
          "truncated chunked body" },
        { "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n123456789", WSH_ETOOBIG,
          "body over its bound" },
        { "HTTP/1.1 200 OK\r\n\r\n123456789", WSH_ETOOBIG, "body over its bound" },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n4\r\n6789\r\n0\r\n"
          "\r\n",
          WSH_ETOOBIG, "body over its bound" },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n",
          WSH_ETOOBIG, "body over its bound" },
    };
    char body[64];
    int status;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *why = NULL;
        int rc = resp(bad[i].text, 8, &status, body, sizeof(body), &why);
        if (rc != bad[i].rc || why == NULL || strcmp(why, bad[i].why) != 0)
            fail_msg("case %zu: rc %d (%s), want %d (%s)", i, rc, why ? why : "-", bad[i].rc,
                     bad[i].why);
    }
    /* A head over its bound, whatever follows. */
    size_t n = WSH_HTTP_RESPONSE_HEAD_MAX + 64;
    char *head = malloc(n + 1);
    assert_non_null(head);
    memcpy(head, "HTTP/1.1 200 OK\r\n", 17);
    for (size_t i = 17; i + 8 <= n; i += 8)
        memcpy(head + i, "X-A: b\r\n", 8);
    head[n - n % 8] = '\0';
    const char *why = NULL;
    assert_int_equal(resp(head, 8, &status, body, sizeof(body), &why), WSH_ETOOBIG);
    assert_string_equal(why, "head over its bound");
    free(head);
}

static void test_http_url_parse(void **state)
{
    (void)state;
    static const struct {
        const char *url;
        bool tls, ipv6, loopback;
        const char *host, *port, *path;
    } ok[] = {
        { "https://issuer.example/.well-known/jwks.json", true, false, false, "issuer.example",
          "443", "/.well-known/jwks.json" },
        { "HTTPS://Issuer.Example:8443", true, false, false, "Issuer.Example", "8443", "/" },
        { "http://localhost/k?a=b&c=%20", false, false, true, "localhost", "80", "/k?a=b&c=%20" },
        { "http://127.1.2.3:9/", false, false, true, "127.1.2.3", "9", "/" },
        { "http://[::1]:65535/x", false, true, true, "::1", "65535", "/x" },
        { "https://[2001:db8::1]/", true, true, false, "2001:db8::1", "443", "/" },
        { "http://127.example/", false, false, false, "127.example", "80", "/" },
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        struct wsh_http_url u;
        if (!wsh_http_url_parse(ok[i].url, &u))
            fail_msg("refused %s", ok[i].url);
        assert_int_equal(u.tls, ok[i].tls);
        assert_int_equal(u.ipv6, ok[i].ipv6);
        assert_int_equal(u.loopback, ok[i].loopback);
        assert_string_equal(u.host, ok[i].host);
        assert_string_equal(u.port, ok[i].port);
        assert_string_equal(u.path, ok[i].path);
    }
    static const char *const bad[] = {
        "",
        "issuer.example/jwks",
        "ftp://issuer.example/",
        "https://",
        "https:///jwks",
        "https://user@issuer.example/",
        "https://issuer.example:0/",
        "https://issuer.example:65536/",
        "https://issuer.example:/",
        "https://issuer.example:80x/",
        "https://issuer.example/a b",
        "https://issuer.example/a#frag",
        "https://issuer.example/\x7f",
        "https://[::1/",
        "https://[zz]/",
        "https://[:]/", /* found by fuzz_http_url: hex digits and colons, yet no address */
        "https://[1:2:3]/",
        "https://issuer_example/",
        "https://issuer.example?q",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct wsh_http_url u;
        if (wsh_http_url_parse(bad[i], &u))
            fail_msg("accepted %s", bad[i]);
    }
}

static void test_http_status_line_and_authority(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        int status;
    } st[] = {
        { "HTTP/1.1 200 OK", 200 },
        { "HTTP/1.0 407 Proxy Authentication Required", 407 },
        { "HTTP/1.1 204", 204 }, /* no reason */
        { "HTTP/1.1 599 x", 599 },
        { "HTTP/1.1 600 x", -1 },
        { "HTTP/1.1 099 x", -1 },
        { "HTTP/1.1 20 OK", -1 },
        { "HTTP/1.1 2000", -1 }, /* a fourth digit, no space */
        { "HTTP/2.0 200 OK", -1 },
        { "HTTP/1.x 200 OK", -1 },
        { "HTTP/1.1  200 OK", -1 },
        { "http/1.1 200 OK", -1 },
        { "", -1 },
    };
    for (size_t i = 0; i < sizeof(st) / sizeof(st[0]); i++) {
        if (wsh_http_status_line(st[i].line, strlen(st[i].line)) != st[i].status)
            fail_msg("status line \"%s\"", st[i].line);
    }
    static const struct {
        const char *url;
        bool always;
        const char *want;
    } au[] = {
        { "https://issuer.example/k", false, "issuer.example" }, /* the default port */
        { "https://issuer.example/k", true, "issuer.example:443" },
        { "http://issuer.example:80/", false, "issuer.example" },
        { "https://issuer.example:8443/", false, "issuer.example:8443" },
        { "https://issuer.example:80/", false, "issuer.example:80" }, /* not https's */
        { "https://[2001:db8::1]/", true, "[2001:db8::1]:443" },
        { "http://[::1]:8080/", false, "[::1]:8080" },
    };
    for (size_t i = 0; i < sizeof(au) / sizeof(au[0]); i++) {
        struct wsh_http_url u;
        char out[300];
        assert_true(wsh_http_url_parse(au[i].url, &u));
        int n = wsh_http_url_authority(&u, au[i].always, out, sizeof(out));
        assert_int_equal(n, (int)strlen(au[i].want));
        assert_string_equal(out, au[i].want);
    }
    struct wsh_http_url u;
    char small[18];
    assert_true(wsh_http_url_parse("https://issuer.example/", &u));
    assert_int_equal(wsh_http_url_authority(&u, true, small, sizeof(small)), -1); /* 18 + NUL */
    assert_int_equal(wsh_http_url_authority(&u, false, small, sizeof(small)), 14);
}

static void test_http_proxy_parse(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *host, *port, *auth;
    } ok[] = {
        { "http://proxy.corp:3128", "proxy.corp", "3128", "" },
        { "proxy.corp:3128", "proxy.corp", "3128", "" }, /* no scheme: http */
        { "HTTP://proxy.corp/", "proxy.corp", "80", "" },
        { "http://alice:s%40cr%3At@proxy.corp:8080", "proxy.corp", "8080", "alice:s@cr:t" },
        { "http://bob@10.0.0.1:3128/", "10.0.0.1", "3128", "bob:" },
        { "http://a:b@c@[2001:db8::1]:3128", "2001:db8::1", "3128", "a:b@c" }, /* the last @ */
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        struct wsh_http_proxy p;
        if (!wsh_http_proxy_parse(ok[i].in, &p))
            fail_msg("refused %s", ok[i].in);
        assert_string_equal(p.url.host, ok[i].host);
        assert_string_equal(p.url.port, ok[i].port);
        assert_string_equal(p.auth, ok[i].auth);
    }
    static const char *const bad[] = {
        "",
        "https://proxy.corp:3128", /* TLS to the proxy is not spoken */
        "socks5://proxy.corp:1080",
        "http://",
        "http://proxy.corp:0",
        "http://proxy.corp:3128/path",
        "http://proxy.corp:3128?x",
        "http://@proxy.corp",        /* no user */
        "http://a%zz@proxy.corp",    /* bad escape */
        "http://a%0a@proxy.corp",    /* control byte */
        "http://a%3ab:c@proxy.corp", /* a colon in the user */
        "http://u:p@",
        "http://pro xy:1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct wsh_http_proxy p;
        if (wsh_http_proxy_parse(bad[i], &p))
            fail_msg("accepted %s", bad[i]);
    }
}

static void test_http_no_proxy(void **state)
{
    (void)state;
    static const struct {
        const char *list, *host, *port;
        bool direct;
    } cases[] = {
        { NULL, "issuer.example", "443", false },
        { "", "issuer.example", "443", false },
        { "*", "issuer.example", "443", true },
        { "issuer.example", "issuer.example", "443", true },
        { "ISSUER.example", "issuer.EXAMPLE", "443", true },
        { "example", "issuer.example", "443", true }, /* a subdomain */
        { ".example", "issuer.example", "443", true },
        { "*.example", "example", "443", true },
        { "ample", "issuer.example", "443", false }, /* not a label boundary */
        { "other.example", "issuer.example", "443", false },
        { " a.test , issuer.example ", "issuer.example", "443", true },
        { "a.test,,issuer.example", "issuer.example", "443", true },
        { "issuer.example:443", "issuer.example", "443", true },
        { "issuer.example:8443", "issuer.example", "443", false },
        { "10.0.0.1", "10.0.0.1", "443", true },
        { "10.0.0.1", "10.0.0.10", "443", false },
        { "2001:db8::1", "2001:db8::1", "443", true }, /* bare IPv6: no port */
        { "[2001:db8::1]:443", "2001:db8::1", "443", true },
        { "[2001:db8::1]:80", "2001:db8::1", "443", false },
        { "[2001:db8::1", "2001:db8::1", "443", false },
        { "issuer.example.", "issuer.example", "443", false },
        { "10.0.0.0/8", "10.20.30.40", "443", true }, /* blocks, as Go reads them */
        { "10.0.0.0/8", "11.0.0.1", "443", false },
        { "a.test, 192.168.0.0/16", "192.168.7.9", "443", true },
        { "10.0.0.0/8", "ten.example", "443", false }, /* names are not resolved */
        { "2001:db8::/32", "2001:db8:1::5", "443", true },
        { "2001:db8::/32", "2001:db9::5", "443", false },
        { "10.0.0.0/8", "2001:db8::1", "443", false },
        { "10.0.0.1/8", "10.0.0.1", "443", false }, /* bits past the prefix: no block */
        { "10.0.0.0/33", "10.0.0.1", "443", false },
        { "10.0.0.0/", "10.0.0.1", "443", false },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (wsh_http_no_proxy(cases[i].list, cases[i].host, cases[i].port) != cases[i].direct)
            fail_msg("case %zu: \"%s\" for %s:%s", i, cases[i].list ? cases[i].list : "(null)",
                     cases[i].host, cases[i].port);
    }
}

/* Percent-decoding of a path segment (the API's channel names). */
static void test_http_pct_decode(void **state)
{
    (void)state;
    char out[32];
    ssize_t n = wsh_http_pct_decode("chat:room%23alice,bob", 21, out, sizeof(out));
    assert_int_equal(n, 19);
    assert_memory_equal(out, "chat:room#alice,bob", 19);
    /* Either case of hex digit; bytes past ASCII; a plain string as it is. */
    n = wsh_http_pct_decode("%c3%A9t%C3%a9", 13, out, sizeof(out));
    assert_int_equal(n, 5);
    assert_memory_equal(out, "\xc3\xa9t\xc3\xa9", 5);
    assert_int_equal(wsh_http_pct_decode("plain", 5, out, sizeof(out)), 5);
    assert_int_equal(wsh_http_pct_decode("", 0, out, sizeof(out)), 0);
    /* Malformed: a '%' without two hex digits, cut short, or NUL. */
    const char *bad[] = { "%", "%2", "a%2", "%zz", "%2g", "%g2", "%00", "x%00y", "%%41" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(wsh_http_pct_decode(bad[i], strlen(bad[i]), out, sizeof(out)), -1);
    /* Room for exactly what it decodes to, and one byte less. */
    assert_int_equal(wsh_http_pct_decode("ab%41", 5, out, 3), 3);
    assert_memory_equal(out, "abA", 3);
    assert_int_equal(wsh_http_pct_decode("ab%41", 5, out, 2), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_parses_upgrade_request),
        cmocka_unit_test(test_http_returns_head_length_with_trailing_bytes),
        cmocka_unit_test(test_http_splits_path_and_query),
        cmocka_unit_test(test_http_accepts_http10),
        cmocka_unit_test(test_http_accepts_any_token_method),
        cmocka_unit_test(test_http_trims_ows_in_values),
        cmocka_unit_test(test_http_accepts_obs_text_in_values),
        cmocka_unit_test(test_http_find_is_case_insensitive),
        cmocka_unit_test(test_http_reads_content_length),
        cmocka_unit_test(test_http_reads_transfer_encoding),
        cmocka_unit_test(test_http_incomplete_returns_zero),
        cmocka_unit_test(test_http_rejects_bare_lf),
        cmocka_unit_test(test_http_rejects_bare_cr),
        cmocka_unit_test(test_http_rejects_bad_request_line),
        cmocka_unit_test(test_http_rejects_other_major_version_with_505),
        cmocka_unit_test(test_http_rejects_bad_field_name),
        cmocka_unit_test(test_http_rejects_obs_fold),
        cmocka_unit_test(test_http_rejects_ctl_in_value),
        cmocka_unit_test(test_http_rejects_bad_content_length),
        cmocka_unit_test(test_http_rejects_content_length_with_transfer_encoding),
        cmocka_unit_test(test_http_request_line_at_limit),
        cmocka_unit_test(test_http_rejects_request_line_over_limit_with_414),
        cmocka_unit_test(test_http_rejects_request_line_over_limit_before_head_ends),
        cmocka_unit_test(test_http_head_at_limit),
        cmocka_unit_test(test_http_rejects_head_over_limit_with_431),
        cmocka_unit_test(test_http_header_count_at_limit),
        cmocka_unit_test(test_http_rejects_too_many_headers_with_431),
        cmocka_unit_test(test_http_custom_limits),
        cmocka_unit_test(test_http_caps_headers_at_array_size),
        cmocka_unit_test(test_http_tolerates_bad_last_len),
        cmocka_unit_test(test_http_response_framings),
        cmocka_unit_test(test_http_response_rejects),
        cmocka_unit_test(test_http_url_parse),
        cmocka_unit_test(test_http_status_line_and_authority),
        cmocka_unit_test(test_http_proxy_parse),
        cmocka_unit_test(test_http_no_proxy),
        cmocka_unit_test(test_http_pct_decode),
        cmocka_unit_test(test_http_response_complete),
        cmocka_unit_test(test_http_ignores_one_leading_empty_line),
        cmocka_unit_test(test_http_absolute_form),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
