/* Unit tests for the opening handshake (src/ws/handshake.c), RFC 6455 4:
 * every status the server check can return, the response writers, the
 * extension grammar of 9.1 and the client side; plus wsh_strerror. */
/* cmocka.h needs the standard headers before it. */
/* clang-format off */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
/* clang-format on */

#include "wshub/ws.h"

#define RFC_KEY    "dGhlIHNhbXBsZSBub25jZQ=="
#define RFC_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

/* Builds a request from "Name: value" strings (NULL-terminated). */
struct req {
    struct wsh_hs_request r;
    struct wsh_hs_header h[32];
};

static void build(struct req *q, const char *method, int minor, const char *const *lines)
{
    memset(q, 0, sizeof(*q));
    q->r.method = (struct wsh_slice){ method, strlen(method) };
    q->r.target = (struct wsh_slice){ "/chat", 5 };
    q->r.minor_version = minor;
    size_t n = 0;
    for (; lines[n] != NULL; n++) {
        const char *colon = strchr(lines[n], ':');
        assert_non_null(colon);
        const char *v = colon + 1;
        while (*v == ' ')
            v++;
        q->h[n].name = (struct wsh_slice){ lines[n], (size_t)(colon - lines[n]) };
        q->h[n].value = (struct wsh_slice){ v, strlen(v) };
    }
    q->r.headers = q->h;
    q->r.nheaders = n;
}

static int check(const char *method, int minor, const char *const *lines, struct wsh_hs_result *res)
{
    struct req q;
    build(&q, method, minor, lines);
    int rc = wsh_hs_server_check(&q.r, NULL, NULL, NULL, res);
    if (res->status == 101) {
        assert_int_equal(rc, WSH_OK);
        assert_null(res->error);
    } else {
        assert_int_equal(rc, WSH_EPROTO);
        assert_non_null(res->error);
    }
    return res->status;
}

#define GOOD_HEADERS                                                  \
    "Host: example.com", "Upgrade: websocket", "Connection: Upgrade", \
        "Sec-WebSocket-Key: " RFC_KEY, "Sec-WebSocket-Version: 13"

static void test_handshake_rfc_accept_key(void **state)
{
    (void)state;
    char out[WSH_HS_ACCEPT_LEN + 1];
    assert_int_equal(wsh_hs_accept(RFC_KEY, strlen(RFC_KEY), out), WSH_OK);
    assert_string_equal(out, RFC_ACCEPT);
    char key[WSH_HS_KEY_LEN + 1];
    wsh_hs_client_key((const uint8_t *)"the sample nonce", key);
    assert_string_equal(key, RFC_KEY);
    /* Long keys take the other path and stay deterministic. */
    char longkey[300], a[WSH_HS_ACCEPT_LEN + 1], b[WSH_HS_ACCEPT_LEN + 1];
    memset(longkey, 'k', sizeof(longkey));
    assert_int_equal(wsh_hs_accept(longkey, sizeof(longkey), a), WSH_OK);
    assert_int_equal(wsh_hs_accept(longkey, sizeof(longkey), b), WSH_OK);
    assert_string_equal(a, b);
    assert_int_equal(strlen(a), WSH_HS_ACCEPT_LEN);
}

static void test_handshake_accepts_valid_request(void **state)
{
    (void)state;
    const char *const lines[] = { GOOD_HEADERS, "Origin: http://example.com", NULL };
    struct wsh_hs_result res;
    assert_int_equal(check("GET", 1, lines, &res), 101);
    assert_string_equal(res.accept, RFC_ACCEPT);
    assert_int_equal(res.host.n, 11);
    assert_memory_equal(res.host.p, "example.com", 11);
    assert_int_equal(res.origin.n, 18);
    assert_int_equal(res.protocol.n, 0);
    assert_int_equal(res.extensions.n, 0);

    char out[512];
    ssize_t n = wsh_hs_server_response(out, sizeof(out), &res, NULL);
    const char *want = "HTTP/1.1 101 Switching Protocols\r\n"
                       "Upgrade: websocket\r\n"
                       "Connection: Upgrade\r\n"
                       "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n"
                       "\r\n";
    assert_int_equal(n, (ssize_t)strlen(want));
    assert_memory_equal(out, want, (size_t)n);
    for (size_t cap = 0; cap < (size_t)n; cap++)
        assert_int_equal(wsh_hs_server_response(out, cap, &res, NULL), WSH_ENOSPC);
    /* Token lists, case and whitespace. */
    const char *const lines2[] = { "host: a",
                                   "UPGRADE: h2c ,  WebSocket",
                                   "connection: keep-alive,upgrade",
                                   "sec-websocket-key: " RFC_KEY,
                                   "SEC-WEBSOCKET-VERSION: 13",
                                   NULL };
    assert_int_equal(check("GET", 1, lines2, &res), 101);
    /* Upgrade and Connection may be split over several lines. */
    const char *const lines3[] = { "Host: a",
                                   "Upgrade: h2c",
                                   "Upgrade: websocket",
                                   "Connection: keep-alive",
                                   "Connection: Upgrade",
                                   "Sec-WebSocket-Key: " RFC_KEY,
                                   "Sec-WebSocket-Version: 13",
                                   NULL };
    assert_int_equal(check("GET", 2, lines3, &res), 101);
}

static void test_handshake_rejects_method(void **state)
{
    (void)state;
    const char *const lines[] = { GOOD_HEADERS, NULL };
    struct wsh_hs_result res;
    assert_int_equal(check("POST", 1, lines, &res), 405);
    assert_int_equal(check("get", 1, lines, &res), 405);
    assert_int_equal(check("GETX", 1, lines, &res), 405);
    assert_int_equal(check("", 1, lines, &res), 405);
}

static void test_handshake_rejects_http10(void **state)
{
    (void)state;
    const char *const lines[] = { GOOD_HEADERS, NULL };
    struct wsh_hs_result res;
    assert_int_equal(check("GET", 0, lines, &res), 400);
}

static void test_handshake_rejects_host_count(void **state)
{
    (void)state;
    struct wsh_hs_result res;
    const char *const none[] = { "Upgrade: websocket", "Connection: Upgrade",
                                 "Sec-WebSocket-Key: " RFC_KEY, "Sec-WebSocket-Version: 13", NULL };
    assert_int_equal(check("GET", 1, none, &res), 400);
    const char *const two[] = { GOOD_HEADERS, "Host: b", NULL };
    assert_int_equal(check("GET", 1, two, &res), 400);
}

static void test_handshake_rejects_upgrade_connection(void **state)
{
    (void)state;
    struct wsh_hs_result res;
    const char *const no_up[] = { "Host: a", "Connection: Upgrade", "Sec-WebSocket-Key: " RFC_KEY,
                                  "Sec-WebSocket-Version: 13", NULL };
    assert_int_equal(check("GET", 1, no_up, &res), 400);
    const char *const wrong_up[] = { "Host: a",
                                     "Upgrade: websockets",
                                     "Connection: Upgrade",
                                     "Sec-WebSocket-Key: " RFC_KEY,
                                     "Sec-WebSocket-Version: 13",
                                     NULL };
    assert_int_equal(check("GET", 1, wrong_up, &res), 400);
    const char *const no_conn[] = { "Host: a", "Upgrade: websocket", "Sec-WebSocket-Key: " RFC_KEY,
                                    "Sec-WebSocket-Version: 13", NULL };
    assert_int_equal(check("GET", 1, no_conn, &res), 400);
    const char *const bad_conn[] = { "Host: a",
                                     "Upgrade: websocket",
                                     "Connection: keep-alive",
                                     "Sec-WebSocket-Key: " RFC_KEY,
                                     "Sec-WebSocket-Version: 13",
                                     NULL };
    assert_int_equal(check("GET", 1, bad_conn, &res), 400);
    const char *const sub[] = { "Host: a",
                                "Upgrade: websocket",
                                "Connection: Upgrade-ish",
                                "Sec-WebSocket-Key: " RFC_KEY,
                                "Sec-WebSocket-Version: 13",
                                NULL };
    assert_int_equal(check("GET", 1, sub, &res), 400);
}

static void test_handshake_rejects_version(void **state)
{
    (void)state;
    struct wsh_hs_result res;
    const char *const missing[] = { "Host: a", "Upgrade: websocket", "Connection: Upgrade",
                                    "Sec-WebSocket-Key: " RFC_KEY, NULL };
    assert_int_equal(check("GET", 1, missing, &res), 426);
    const char *const eight[] = { "Host: a",
                                  "Upgrade: websocket",
                                  "Connection: Upgrade",
                                  "Sec-WebSocket-Key: " RFC_KEY,
                                  "Sec-WebSocket-Version: 8",
                                  NULL };
    assert_int_equal(check("GET", 1, eight, &res), 426);
    const char *const two[] = { GOOD_HEADERS, "Sec-WebSocket-Version: 13", NULL };
    assert_int_equal(check("GET", 1, two, &res), 426);
    const char *const list[] = { "Host: a",
                                 "Upgrade: websocket",
                                 "Connection: Upgrade",
                                 "Sec-WebSocket-Key: " RFC_KEY,
                                 "Sec-WebSocket-Version: 13, 8",
                                 NULL };
    assert_int_equal(check("GET", 1, list, &res), 426);
}

static void test_handshake_rejects_bad_key(void **state)
{
    (void)state;
    static const char *const keys[] = {
        "dGhlIHNhbXBsZSBub25jZQ=",   /* 23 chars */
        "dGhlIHNhbXBsZSBub25jZQ===", /* 25 chars */
        "dGhlIHNhbXBsZSBub25jZQ",    /* no padding */
        "dGhlIHNhbXBsZSBub25jZR==",  /* non-zero pad bits */
        "dGhlIHNhbXBsZSBub25j*Q==",  /* not base64 */
        "dGhlIHNhbXBsZSBub25jZQ=A",  /* bad padding */
        "dGhlIHNhbXBsZSBub25jZA",    /* 22 chars */
        "",
    };
    char line[64];
    struct wsh_hs_result res;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        snprintf(line, sizeof(line), "Sec-WebSocket-Key: %s", keys[i]);
        const char *const lines[] = { "Host: a", "Upgrade: websocket",        "Connection: Upgrade",
                                      line,      "Sec-WebSocket-Version: 13", NULL };
        assert_int_equal(check("GET", 1, lines, &res), 400);
    }
    const char *const missing[] = { "Host: a", "Upgrade: websocket", "Connection: Upgrade",
                                    "Sec-WebSocket-Version: 13", NULL };
    assert_int_equal(check("GET", 1, missing, &res), 400);
    const char *const twice[] = { GOOD_HEADERS, "Sec-WebSocket-Key: " RFC_KEY, NULL };
    assert_int_equal(check("GET", 1, twice, &res), 400);
    /* Keys ending in A, Q, g, w are the canonical ones. */
    const char *const w[] = { "Host: a",
                              "Upgrade: websocket",
                              "Connection: Upgrade",
                              "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAw==",
                              "Sec-WebSocket-Version: 13",
                              NULL };
    assert_int_equal(check("GET", 1, w, &res), 101);
}

struct offers {
    char seen[256];
    const char *pick;
};

static bool pick_proto(const char *proto, size_t len, void *user)
{
    struct offers *o = user;
    strncat(o->seen, proto, len);
    strcat(o->seen, "|");
    return o->pick != NULL && strlen(o->pick) == len && memcmp(o->pick, proto, len) == 0;
}

static void test_handshake_offers_protocols_in_order(void **state)
{
    (void)state;
    const char *const lines[] = { GOOD_HEADERS, "Sec-WebSocket-Protocol: chat, superchat",
                                  "Sec-WebSocket-Protocol: v2.json", NULL };
    struct req q;
    build(&q, "GET", 1, lines);
    struct offers o = { "", "superchat" };
    struct wsh_hs_result res;
    assert_int_equal(wsh_hs_server_check(&q.r, pick_proto, NULL, &o, &res), WSH_OK);
    assert_string_equal(o.seen, "chat|superchat|v2.json|");
    assert_int_equal(res.protocol.n, 9);
    assert_memory_equal(res.protocol.p, "superchat", 9);

    char out[512];
    ssize_t n = wsh_hs_server_response(out, sizeof(out), &res, "permessage-deflate");
    assert_true(n > 0);
    out[n] = '\0';
    assert_non_null(strstr(out, "\r\nSec-WebSocket-Protocol: superchat\r\n"));
    assert_non_null(strstr(out, "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"));
    assert_int_equal(wsh_hs_server_response(out, sizeof(out), &res, "x\r\nEvil: 1"), WSH_EINVAL);

    /* No callback, or no match: no protocol selected. */
    memset(&o, 0, sizeof(o));
    assert_int_equal(wsh_hs_server_check(&q.r, pick_proto, NULL, &o, &res), WSH_OK);
    assert_int_equal(res.protocol.n, 0);
    assert_int_equal(wsh_hs_server_check(&q.r, NULL, NULL, NULL, &res), WSH_OK);

    const char *const bad[] = { GOOD_HEADERS, "Sec-WebSocket-Protocol: chat, sup er", NULL };
    build(&q, "GET", 1, bad);
    assert_int_equal(wsh_hs_server_check(&q.r, pick_proto, NULL, &o, &res), WSH_EPROTO);
    assert_int_equal(res.status, 400);
}

struct ext_log {
    char s[512];
    bool refuse;
};

static void put_slice(char *dst, struct wsh_slice s)
{
    strncat(dst, s.p != NULL ? s.p : "", s.n);
}

static bool log_ext(struct wsh_slice name, const struct wsh_slice *pn, const struct wsh_slice *pv,
                    size_t np, void *user)
{
    struct ext_log *l = user;
    put_slice(l->s, name);
    for (size_t i = 0; i < np; i++) {
        strcat(l->s, ";");
        put_slice(l->s, pn[i]);
        if (pv[i].n != 0) {
            strcat(l->s, "=");
            put_slice(l->s, pv[i]);
        }
    }
    strcat(l->s, "|");
    return !l->refuse;
}

static int ext_status(const char *value, struct ext_log *l)
{
    char line[256];
    snprintf(line, sizeof(line), "Sec-WebSocket-Extensions: %s", value);
    const char *const lines[] = { GOOD_HEADERS, line, NULL };
    struct req q;
    build(&q, "GET", 1, lines);
    struct wsh_hs_result res;
    memset(l->s, 0, sizeof(l->s));
    wsh_hs_server_check(&q.r, NULL, log_ext, l, &res);
    return res.status;
}

static void test_handshake_parses_extensions(void **state)
{
    (void)state;
    struct ext_log l = { "", false };
    assert_int_equal(ext_status("permessage-deflate; client_max_window_bits, "
                                "permessage-deflate ;server_max_window_bits = 10 ; x=\"12\"",
                                &l),
                     101);
    assert_string_equal(l.s, "permessage-deflate;client_max_window_bits|"
                             "permessage-deflate;server_max_window_bits=10;x=12|");
    assert_int_equal(ext_status("foo, , bar", &l), 101);
    assert_string_equal(l.s, "foo|bar|");

    static const char *const bad[] = {
        "",         ",",   ";",      "a;",       "a;=b",         "a; b=", "a; b=\"\"",
        "a; b=\"c", "a b", "a; b c", "a; b=c d", "a; b=\"c d\"", "\"a\"", "a; b=\"c\\d\"",
        "a=b"
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (ext_status(bad[i], &l) != 400)
            fail_msg("accepted extension header \"%s\"", bad[i]);
    }
    l.refuse = true;
    assert_int_equal(ext_status("permessage-deflate", &l), 400);
}

static void test_handshake_extensions_linear_time(void **state)
{
    (void)state;
    /* 200 KB of parameters: refused for count, and quickly. A long list of
     * small extensions is accepted. */
    size_t n = 200000;
    char *v = malloc(n + 1);
    assert_non_null(v);
    for (size_t i = 0; i < n; i += 2)
        memcpy(v + i, ";a", 2);
    v[0] = 'x';
    v[n] = '\0';
    struct wsh_hs_header h[6];
    const char *const lines[] = { GOOD_HEADERS, NULL };
    struct req q;
    build(&q, "GET", 1, lines);
    memcpy(h, q.h, sizeof(h[0]) * 5);
    h[5].name = (struct wsh_slice){ "Sec-WebSocket-Extensions", 24 };
    h[5].value = (struct wsh_slice){ v, n };
    q.r.headers = h;
    q.r.nheaders = 6;
    struct wsh_hs_result res;
    assert_int_equal(wsh_hs_server_check(&q.r, NULL, NULL, NULL, &res), WSH_EPROTO);
    assert_int_equal(res.status, 400);
    for (size_t i = 0; i < n; i += 2)
        memcpy(v + i, "a,", 2);
    v[n - 1] = 'a';
    assert_int_equal(wsh_hs_server_check(&q.r, NULL, NULL, NULL, &res), WSH_OK);
    assert_int_equal(res.extensions.n, n);
    free(v);
}

static void test_handshake_error_responses(void **state)
{
    (void)state;
    char out[512];
    ssize_t n = wsh_hs_error_response(out, sizeof(out), 400, "invalid Sec-WebSocket-Key");
    const char *want = "HTTP/1.1 400 Bad Request\r\n"
                       "Content-Type: text/plain\r\n"
                       "Content-Length: 26\r\n"
                       "Connection: close\r\n"
                       "\r\n"
                       "invalid Sec-WebSocket-Key\n";
    assert_int_equal(n, (ssize_t)strlen(want));
    assert_memory_equal(out, want, (size_t)n);
    for (size_t cap = 0; cap < (size_t)n; cap++)
        assert_int_equal(wsh_hs_error_response(out, cap, 400, "invalid Sec-WebSocket-Key"),
                         WSH_ENOSPC);

    n = wsh_hs_error_response(out, sizeof(out), 426, NULL);
    assert_true(n > 0);
    out[n] = '\0';
    assert_non_null(strstr(out, "HTTP/1.1 426 Upgrade Required\r\n"));
    assert_non_null(strstr(out, "\r\nSec-WebSocket-Version: 13\r\n"));
    assert_non_null(strstr(out, "\r\n\r\nUpgrade Required\n"));

    n = wsh_hs_error_response(out, sizeof(out), 405, "use GET");
    out[n] = '\0';
    assert_non_null(strstr(out, "HTTP/1.1 405 Method Not Allowed\r\n"));
    assert_non_null(strstr(out, "\r\nAllow: GET\r\n"));

    n = wsh_hs_error_response(out, sizeof(out), 401, "malformed Authorization header");
    out[n] = '\0';
    assert_non_null(strstr(out, "HTTP/1.1 401 Unauthorized\r\n"));
    assert_non_null(strstr(out, "\r\nWWW-Authenticate: Bearer\r\n"));

    static const int statuses[] = {
        400, 401, 403, 404, 405, 408, 414, 426, 429, 431, 500, 503, 505
    };
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        assert_string_not_equal(wsh_http_reason(statuses[i]), "Unknown");
        n = wsh_hs_error_response(out, sizeof(out), statuses[i], NULL);
        assert_true(n > 0);
    }
    assert_string_equal(wsh_http_reason(101), "Switching Protocols");
    assert_string_equal(wsh_http_reason(431), "Request Header Fields Too Large");
    assert_string_equal(wsh_http_reason(299), "Unknown");

    /* Each refusal's error text makes a valid response. */
    struct wsh_hs_result res;
    const char *const lines[] = { "Host: a", NULL };
    assert_int_equal(check("GET", 1, lines, &res), 400);
    assert_true(wsh_hs_error_response(out, sizeof(out), res.status, res.error) > 0);
    assert_int_equal(wsh_hs_server_response(out, sizeof(out), &res, NULL), WSH_EINVAL);
}

static void test_handshake_client_request(void **state)
{
    (void)state;
    char out[512];
    ssize_t n = wsh_hs_client_request(out, sizeof(out), "server.example.com", "/chat", RFC_KEY,
                                      "chat, superchat", NULL);
    const char *want = "GET /chat HTTP/1.1\r\n"
                       "Host: server.example.com\r\n"
                       "Upgrade: websocket\r\n"
                       "Connection: Upgrade\r\n"
                       "Sec-WebSocket-Key: " RFC_KEY "\r\n"
                       "Sec-WebSocket-Version: 13\r\n"
                       "Sec-WebSocket-Protocol: chat, superchat\r\n"
                       "\r\n";
    assert_int_equal(n, (ssize_t)strlen(want));
    assert_memory_equal(out, want, (size_t)n);
    for (size_t cap = 0; cap < (size_t)n; cap++)
        assert_int_equal(wsh_hs_client_request(out, cap, "server.example.com", "/chat", RFC_KEY,
                                               "chat, superchat", NULL),
                         WSH_ENOSPC);
    assert_int_equal(wsh_hs_client_request(out, sizeof(out), "a\r\nX: y", "/", RFC_KEY, NULL, NULL),
                     WSH_EINVAL);
    assert_int_equal(
        wsh_hs_client_request(out, sizeof(out), "a", "/ HTTP/1.0", RFC_KEY, NULL, NULL),
        WSH_EINVAL);
    n = wsh_hs_client_request(out, sizeof(out), "a", NULL, RFC_KEY, NULL, "permessage-deflate");
    assert_true(n > 0);
    out[n] = '\0';
    assert_non_null(strstr(out, "GET / HTTP/1.1\r\n"));
    assert_non_null(strstr(out, "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"));
}

#define GOOD_RESPONSE                          \
    "HTTP/1.1 101 Switching Protocols\r\n"     \
    "Upgrade: websocket\r\n"                   \
    "Connection: Upgrade\r\n"                  \
    "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n" \
    "Sec-WebSocket-Protocol: chat\r\n"         \
    "\r\n"

static ssize_t parse_resp(const char *s, struct wsh_hs_client_result *res)
{
    return wsh_hs_client_parse_response(s, strlen(s), RFC_KEY, res);
}

static void test_handshake_client_parses_response(void **state)
{
    (void)state;
    struct wsh_hs_client_result res;
    const char *good = GOOD_RESPONSE "\x81\x00";
    size_t head = strlen(GOOD_RESPONSE);
    assert_int_equal(parse_resp(good, &res), (ssize_t)head);
    assert_int_equal(res.status, 101);
    assert_int_equal(res.protocol.n, 4);
    assert_memory_equal(res.protocol.p, "chat", 4);
    assert_int_equal(res.extensions.n, 0);
    /* Every prefix is "incomplete". */
    for (size_t i = 0; i < head; i++) {
        char *copy = malloc(i + 1);
        assert_non_null(copy);
        memcpy(copy, good, i);
        assert_int_equal(wsh_hs_client_parse_response(copy, i, RFC_KEY, &res), 0);
        free(copy);
    }
    /* Case-insensitive names and tokens, other statuses. */
    assert_true(parse_resp("HTTP/1.1 101 OK\r\nupgrade: WebSocket\r\nconnection: upgrade\r\n"
                           "sec-websocket-accept: " RFC_ACCEPT "\r\n\r\n",
                           &res) > 0);
}

static void test_handshake_client_rejects_response(void **state)
{
    (void)state;
    struct wsh_hs_client_result res;
    assert_int_equal(parse_resp("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", &res),
                     WSH_EPROTO);
    assert_int_equal(res.status, 400);
    static const char *const bad[] = {
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOX=\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\nSec-WebSocket-Accept: " RFC_ACCEPT "\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\nbad header\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\nX: a\nb\r\n\r\n",
        "HTTP/2 101 Switching Protocols\r\n\r\n",
        "HTTP/1.1 10 Switching Protocols\r\n\r\n",
        "HTTP/1.1 1010 Switching\r\n\r\n",
        "XTTP/1.1 101 Switching Protocols\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (parse_resp(bad[i], &res) != WSH_EPROTO)
            fail_msg("accepted response %zu", i);
    }
    /* No end within 8 KiB. */
    char *big = malloc(9000);
    assert_non_null(big);
    memset(big, 'a', 9000);
    assert_int_equal(wsh_hs_client_parse_response(big, 9000, RFC_KEY, &res), WSH_ETOOBIG);
    assert_int_equal(wsh_hs_client_parse_response(big, 100, RFC_KEY, &res), 0);
    free(big);
}

static void test_handshake_strerror_texts(void **state)
{
    (void)state;
    static const int codes[] = { WSH_OK,      WSH_EAGAIN,  WSH_EPROTO,        WSH_EUTF8,
                                 WSH_ETOOBIG, WSH_EPOLICY, WSH_EINVAL,        WSH_ENOSPC,
                                 WSH_ENOMEM,  WSH_ECLOSED, WSH_EBACKPRESSURE, WSH_EDROPPED };
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        assert_non_null(wsh_strerror(codes[i]));
        assert_string_not_equal(wsh_strerror(codes[i]), "unknown error");
    }
    assert_string_equal(wsh_strerror(-ECONNRESET), strerror(ECONNRESET));
    assert_string_equal(wsh_strerror(-5000), "unknown error");
    assert_string_equal(wsh_strerror(42), "unknown error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake_rfc_accept_key),
        cmocka_unit_test(test_handshake_accepts_valid_request),
        cmocka_unit_test(test_handshake_rejects_method),
        cmocka_unit_test(test_handshake_rejects_http10),
        cmocka_unit_test(test_handshake_rejects_host_count),
        cmocka_unit_test(test_handshake_rejects_upgrade_connection),
        cmocka_unit_test(test_handshake_rejects_version),
        cmocka_unit_test(test_handshake_rejects_bad_key),
        cmocka_unit_test(test_handshake_offers_protocols_in_order),
        cmocka_unit_test(test_handshake_parses_extensions),
        cmocka_unit_test(test_handshake_extensions_linear_time),
        cmocka_unit_test(test_handshake_error_responses),
        cmocka_unit_test(test_handshake_client_request),
        cmocka_unit_test(test_handshake_client_parses_response),
        cmocka_unit_test(test_handshake_client_rejects_response),
        cmocka_unit_test(test_handshake_strerror_texts),
    };
    return cmocka_run_group_tests_name("handshake", tests, NULL, NULL);
}
