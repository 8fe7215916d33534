/* Unit tests of the JSON envelope codec (src/hub/proto.c): every command,
 * every field check, the depth and size bounds, exact encoder output for
 * fixed timestamps, string escaping, and round trips through jansson. */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka.h needs the four headers above. */
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "wshub/proto.h"

/* 2026-11-22T05:09:22.621Z */
#define T0 INT64_C(1795324162621)
#define TS "\"timestamp\":\"2026-11-22T05:09:22.621Z\"}"

/* ------------------------------------------------------------------ */
/* Guard-page input (STYLE.md B9): the input ends right before a
 * PROT_NONE page, so any over-read faults even without ASan.          */

#define GUARD_AREA (2u * 1024u * 1024u)
static char *guard_base;
static size_t guard_page;

static const char *guarded(const char *s, size_t n)
{
    if (guard_base == NULL) {
        guard_page = (size_t)sysconf(_SC_PAGESIZE);
        void *p = mmap(NULL, GUARD_AREA + guard_page, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        assert_true(p != MAP_FAILED);
        guard_base = p;
        assert_int_equal(mprotect(guard_base + GUARD_AREA, guard_page, PROT_NONE), 0);
    }
    assert_true(n <= GUARD_AREA);
    char *dst = guard_base + GUARD_AREA - n;
    if (n > 0)
        memcpy(dst, s, n);
    return dst;
}

static int parse_n(const char *s, size_t n, const struct wsh_proto_limits *lim, struct wsh_cmd *cmd,
                   int *code, const char **msg)
{
    return wsh_proto_parse(guarded(s, n), n, lim, cmd, code, msg);
}

static int parse(const char *s, struct wsh_cmd *cmd, int *code, const char **msg)
{
    return parse_n(s, strlen(s), NULL, cmd, code, msg);
}

static bool slice_eq(const char *p, size_t n, const char *want)
{
    if (p == NULL)
        return false;
    return n == strlen(want) && memcmp(p, want, n) == 0;
}

static void check_slice(const char *p, size_t n, const char *want)
{
    if (!slice_eq(p, n, want))
        fail_msg("got '%.*s', want '%s'", p ? (int)n : 6, p ? p : "(null)", want);
}

#define assert_slice(p, n, want) check_slice((p), (n), (want))

/* Parses and expects success. */
static void parse_ok(const char *s, struct wsh_cmd *cmd)
{
    int code = -1;
    const char *msg = NULL;
    int rc = parse(s, cmd, &code, &msg);
    if (rc != WSH_OK)
        fail_msg("parse(%s) = %d, code %d: %s", s, rc, code, msg ? msg : "");
    assert_int_equal(code, 0);
    assert_null(msg);
}

/* Parses and expects failure with the given code and message prefix. */
static void parse_err(const char *s, int want_code, const char *want_msg)
{
    struct wsh_cmd cmd;
    int code = 0;
    const char *msg = NULL;
    int rc = parse(s, &cmd, &code, &msg);
    if (rc == WSH_OK) {
        wsh_cmd_free(&cmd);
        fail_msg("parse(%s) succeeded, want %d", s, want_code);
    }
    if (code != want_code)
        fail_msg("parse(%s): code %d (%s), want %d", s, code, msg ? msg : "", want_code);
    assert_non_null(msg);
    if (want_msg != NULL && strncmp(msg, want_msg, strlen(want_msg)) != 0)
        fail_msg("parse(%s): message '%s', want '%s'", s, msg, want_msg);
    assert_null(cmd._root);
    wsh_cmd_free(&cmd);
}

/* ------------------------------------------------------------------ */
/* Commands                                                            */

static void test_proto_parse_connect(void **state)
{
    (void)state;
    struct wsh_cmd c;
    parse_ok("{\"type\":\"connect\",\"id\":1,\"payload\":{\"token\":\"aGVh.cGF5.c2ln\"}}", &c);
    assert_int_equal(c.type, WSH_CMD_CONNECT);
    assert_int_equal(c.id, 1);
    assert_slice(c.token, c.token_len, "aGVh.cGF5.c2ln");
    assert_null(c.channel);
    wsh_cmd_free(&c);

    /* The token may have come with the handshake. */
    parse_ok("{\"type\":\"connect\"}", &c);
    assert_int_equal(c.type, WSH_CMD_CONNECT);
    assert_int_equal(c.id, WSH_PROTO_NO_ID);
    assert_null(c.token);
    wsh_cmd_free(&c);
    wsh_cmd_free(&c); /* twice is harmless */
}

static void test_proto_parse_subscribe(void **state)
{
    (void)state;
    struct wsh_cmd c;
    parse_ok("{\"type\":\"subscribe\",\"id\":2,\"channel\":\"chat:lobby\"}", &c);
    assert_int_equal(c.type, WSH_CMD_SUBSCRIBE);
    assert_int_equal(c.id, 2);
    assert_slice(c.channel, c.channel_len, "chat:lobby");
    assert_slice(c.chan.ns, c.chan.ns_len, "chat");
    assert_slice(c.chan.name, c.chan.name_len, "lobby");
    assert_null(c.chan.user);
    assert_false(c.has_recover);
    wsh_cmd_free(&c);
}

static void test_proto_parse_subscribe_recover(void **state)
{
    (void)state;
    struct wsh_cmd c;
    parse_ok("{\"type\":\"subscribe\",\"channel\":\"inbox#42\",\"payload\":{\"recover\":"
             "{\"offset\":17,\"epoch\":\"xY7\"}}}",
             &c);
    assert_true(c.has_recover);
    assert_int_equal(c.recover_offset, 17);
    assert_slice(c.recover_epoch, c.recover_epoch_len, "xY7");
    assert_null(c.chan.ns);
    assert_slice(c.chan.name, c.chan.name_len, "inbox");
    assert_slice(c.chan.user, c.chan.user_len, "42");
    wsh_cmd_free(&c);
}

static void test_proto_parse_unsubscribe(void **state)
{
    (void)state;
    struct wsh_cmd c;
    parse_ok("{\"type\":\"unsubscribe\",\"id\":3,\"channel\":\"news\"}", &c);
    assert_int_equal(c.type, WSH_CMD_UNSUBSCRIBE);
    assert_slice(c.channel, c.channel_len, "news");
    wsh_cmd_free(&c);
}

static void test_proto_parse_publish(void **state)
{
    (void)state;
    struct wsh_cmd c;
    parse_ok("{\"type\":\"publish\",\"id\":4,\"channel\":\"chat:lobby\",\"msg_id\":\"m-1\","
             "\"payload\":{\"text\":\"hi, \\\"you\\\"\",\"n\":[1,2,{\"a\":null}]}}",
             &c);
    assert_int_equal(c.type, WSH_CMD_PUBLISH);
    assert_slice(c.msg_id, c.msg_id_len, "m-1");
    assert_non_null(c.payload);
    assert_slice(c.payload_raw, c.payload_raw_len,
                 "{\"text\":\"hi, \\\"you\\\"\",\"n\":[1,2,{\"a\":null}]}");
    struct wsh_jbuf b = { 0 };
    assert_int_equal(wsh_proto_payload_dump(&c, &b), WSH_OK);
    assert_slice(b.data, b.len, "{\"text\":\"hi, \\\"you\\\"\",\"n\":[1,2,{\"a\":null}]}");
    wsh_jbuf_free(&b);
    wsh_cmd_free(&c);
}

/* The raw span must be exactly the value wherever the member sits and
 * whatever the value's kind is. */
static void test_proto_parse_publish_payload_span(void **state)
{
    (void)state;
    static const struct {
        const char *in, *raw;
    } cases[] = {
        { "{\"payload\":\"s,}]\",\"type\":\"publish\",\"channel\":\"a\"}", "\"s,}]\"" },
        { "{\"type\":\"publish\",\"channel\":\"a\",\"payload\":12.5e3}", "12.5e3" },
        { "{\"type\":\"publish\",\"channel\":\"a\",\"payload\":null}", "null" },
        { "{\"type\":\"publish\",\"channel\":\"a\",\"payload\":[]}", "[]" },
        { "{\"type\":\"publish\",\"payload\":[[{}],\"]\"],\"channel\":\"a\"}", "[[{}],\"]\"]" },
        { " { \"type\" : \"publish\" , \"channel\" : \"a\" , \"payload\" : true } ", "true" },
        { "{\"type\":\"publish\",\"channel\":\"a\",\"payload\":\"\\\\\"}", "\"\\\\\"" },
        { "{\"type\":\"publish\",\"channel\":\"a\",\"x\":{\"payload\":1},\"payload\":2}", "2" },
        { "{\"type\":\"publish\",\"channel\":\"a\",\"payload\":\"\\u0000\"}", "\"\\u0000\"" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct wsh_cmd c;
        parse_ok(cases[i].in, &c);
        assert_slice(c.payload_raw, c.payload_raw_len, cases[i].raw);
        /* The span parses to the same value jansson found. */
        json_t *v =
            json_loadb(c.payload_raw, c.payload_raw_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        assert_non_null(v);
        assert_true(json_equal(v, c.payload));
        json_decref(v);
        wsh_cmd_free(&c);
    }
}

/* Whitespace inside the payload, or an escaped key, means no raw span:
 * the dump re-encodes compactly once. */
static void test_proto_parse_publish_payload_reencoded(void **state)
{
    (void)state;
    struct wsh_cmd c;
    struct wsh_jbuf b = { 0 };
    parse_ok("{\"type\":\"publish\",\"channel\":\"a\",\"payload\":{ \"k\" : [ 1 , 2 ] }}", &c);
    assert_null(c.payload_raw);
    assert_int_equal(wsh_proto_payload_dump(&c, &b), WSH_OK);
    assert_slice(b.data, b.len, "{\"k\":[1,2]}");
    wsh_cmd_free(&c);

    wsh_jbuf_reset(&b);
    parse_ok("{\"type\":\"publish\",\"channel\":\"a\",\"p\\u0061yload\":[true]}", &c);
    assert_null(c.payload_raw);
    assert_non_null(c.payload);
    assert_int_equal(wsh_proto_payload_dump(&c, &b), WSH_OK);
    assert_slice(b.data, b.len, "[true]");
    wsh_cmd_free(&c);
    wsh_jbuf_free(&b);
}

static void test_proto_parse_presence(void **state)
{
    (void)state;
    struct wsh_cmd c;
    parse_ok("{\"type\":\"presence\",\"id\":5,\"channel\":\"chat:lobby\"}", &c);
    assert_int_equal(c.type, WSH_CMD_PRESENCE);
    wsh_cmd_free(&c);
}

static void test_proto_parse_history(void **state)
{
    (void)state;
    struct wsh_cmd c;
    parse_ok("{\"type\":\"history\",\"id\":6,\"channel\":\"chat:lobby\",\"payload\":"
             "{\"since\":10,\"limit\":50}}",
             &c);
    assert_int_equal(c.type, WSH_CMD_HISTORY);
    assert_true(c.has_since);
    assert_int_equal(c.since, 10);
    assert_true(c.has_limit);
    assert_int_equal(c.limit, 50);
    wsh_cmd_free(&c);
    parse_ok("{\"type\":\"history\",\"channel\":\"chat:lobby\"}", &c);
    assert_false(c.has_since);
    assert_false(c.has_limit);
    wsh_cmd_free(&c);
}

static void test_proto_parse_refresh(void **state)
{
    (void)state;
    struct wsh_cmd c;
    parse_ok("{\"type\":\"refresh\",\"id\":7,\"payload\":{\"token\":\"a.b.c\"}}", &c);
    assert_int_equal(c.type, WSH_CMD_REFRESH);
    assert_slice(c.token, c.token_len, "a.b.c");
    wsh_cmd_free(&c);
}

static void test_proto_parse_signal(void **state)
{
    (void)state;
    struct wsh_cmd c;
    parse_ok("{\"type\":\"signal\",\"channel\":\"chat:lobby\",\"payload\":{\"typing\":true}}", &c);
    assert_int_equal(c.type, WSH_CMD_SIGNAL);
    assert_slice(c.payload_raw, c.payload_raw_len, "{\"typing\":true}");
    wsh_cmd_free(&c);
}

static void test_proto_parse_read(void **state)
{
    (void)state;
    struct wsh_cmd c;
    parse_ok("{\"type\":\"read\",\"id\":9,\"channel\":\"chat:lobby\",\"payload\":{\"offset\":33}}",
             &c);
    assert_int_equal(c.type, WSH_CMD_READ);
    assert_int_equal(c.offset, 33);
    wsh_cmd_free(&c);
}

static void test_proto_type_names(void **state)
{
    (void)state;
    assert_string_equal(wsh_cmd_type_name(WSH_CMD_CONNECT), "connect");
    assert_string_equal(wsh_cmd_type_name(WSH_CMD_READ), "read");
    assert_string_equal(wsh_cmd_type_name(WSH_CMD_NONE), "");
}

static void test_proto_unknown_fields_ignored(void **state)
{
    (void)state;
    struct wsh_cmd c;
    parse_ok("{\"type\":\"presence\",\"channel\":\"a\",\"future\":{\"x\":[1]},\"v\":2}", &c);
    wsh_cmd_free(&c);
}

/* ------------------------------------------------------------------ */
/* Rejections                                                          */

static void test_proto_rejects_bad_json(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "{",
        "}",
        "{\"type\":\"connect\"",
        "{\"type\":\"connect\"}}",
        "{\"type\":\"connect\",}",
        "{'type':'connect'}",
        "{\"type\":\"connect\"} x",
        "{\"type\":\"connect\",\"id\":01}",
        "{\"type\":\"conn\\x\"}",
        "{\"type\":\"connect\",\"id\":1e999}",
        "{\"type\":\"connect\",\"id\":99999999999999999999999}",
        "\"just a string\"",
        "[1,2]",
        "42",
        "null",
        "{\"type\":\"connect\",\"type\":\"publish\"}", /* duplicate keys */
        "{\"type\":\"\xff\"}",                         /* invalid UTF-8 */
        "{\"type\":\"\xed\xa0\x80\"}",                 /* surrogate in UTF-8 */
        "{\"a\":\"\\ud800\"}",                         /* lone surrogate escape */
        "\xef\xbb\xbf{\"type\":\"connect\"}",          /* BOM */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        parse_err(bad[i], WSH_PERR_BAD_JSON, NULL);
    parse_err("[]", WSH_PERR_BAD_JSON, "message must be a JSON object");
}

static void test_proto_rejects_type(void **state)
{
    (void)state;
    parse_err("{}", WSH_PERR_BAD_FIELD, "type: missing");
    parse_err("{\"type\":1}", WSH_PERR_BAD_FIELD, "type: expected a string");
    parse_err("{\"type\":null}", WSH_PERR_BAD_FIELD, "type: expected a string");
    parse_err("{\"type\":\"Connect\"}", WSH_PERR_UNKNOWN_TYPE, "type: unknown command");
    parse_err("{\"type\":\"connect\\u0000\"}", WSH_PERR_UNKNOWN_TYPE, NULL);
    parse_err("{\"type\":\"\"}", WSH_PERR_UNKNOWN_TYPE, NULL);
    parse_err("{\"type\":\"message\"}", WSH_PERR_UNKNOWN_TYPE, NULL);
}

static void test_proto_rejects_id(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "{\"type\":\"connect\",\"id\":-1}",
        "{\"type\":\"connect\",\"id\":1.5}",
        "{\"type\":\"connect\",\"id\":\"1\"}",
        "{\"type\":\"connect\",\"id\":null}",
        "{\"type\":\"connect\",\"id\":9007199254740992}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        parse_err(bad[i], WSH_PERR_BAD_FIELD, "id: ");
    struct wsh_cmd c;
    parse_ok("{\"type\":\"connect\",\"id\":9007199254740991}", &c);
    assert_int_equal(c.id, INT64_C(9007199254740991));
    wsh_cmd_free(&c);
    parse_ok("{\"type\":\"connect\",\"id\":0}", &c);
    assert_int_equal(c.id, 0);
    wsh_cmd_free(&c);
}

/* A valid id is kept on failure so the error reply can echo it. */
static void test_proto_error_keeps_id(void **state)
{
    (void)state;
    struct wsh_cmd c;
    int code;
    const char *msg;
    assert_int_equal(parse("{\"type\":\"subscribe\",\"id\":77}", &c, &code, &msg), WSH_EPROTO);
    assert_int_equal(code, WSH_PERR_BAD_FIELD);
    assert_string_equal(msg, "channel: missing");
    assert_int_equal(c.id, 77);
    assert_int_equal(c.type, WSH_CMD_SUBSCRIBE);
    assert_int_equal(parse("{\"type\":\"nope\",\"id\":78}", &c, &code, &msg), WSH_EPROTO);
    assert_int_equal(code, WSH_PERR_UNKNOWN_TYPE);
    assert_int_equal(c.id, 78);
    assert_int_equal(parse("{\"id\":79", &c, &code, &msg), WSH_EPROTO);
    assert_int_equal(c.id, WSH_PROTO_NO_ID);
    /* code and msg may be NULL. */
    assert_int_equal(parse("nope", &c, NULL, NULL), WSH_EPROTO);
}

static void test_proto_rejects_fields(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int code;
        const char *msg;
    } cases[] = {
        { "{\"type\":\"subscribe\"}", WSH_PERR_BAD_FIELD, "channel: missing" },
        { "{\"type\":\"subscribe\",\"channel\":5}", WSH_PERR_BAD_FIELD, "channel: expected" },
        { "{\"type\":\"subscribe\",\"channel\":\"a b\"}", WSH_PERR_BAD_CHANNEL,
          "channel: invalid" },
        { "{\"type\":\"subscribe\",\"channel\":\"a\",\"payload\":[]}", WSH_PERR_BAD_FIELD,
          "payload: expected an object" },
        { "{\"type\":\"subscribe\",\"channel\":\"a\",\"payload\":{\"recover\":1}}",
          WSH_PERR_BAD_FIELD, "payload.recover: expected an object" },
        { "{\"type\":\"subscribe\",\"channel\":\"a\",\"payload\":{\"recover\":{\"epoch\":\"e\"}}}",
          WSH_PERR_BAD_FIELD, "payload.recover.offset" },
        { "{\"type\":\"subscribe\",\"channel\":\"a\",\"payload\":{\"recover\":"
          "{\"offset\":-1,\"epoch\":\"e\"}}}",
          WSH_PERR_BAD_FIELD, "payload.recover.offset" },
        { "{\"type\":\"subscribe\",\"channel\":\"a\",\"payload\":{\"recover\":{\"offset\":1}}}",
          WSH_PERR_BAD_FIELD, "payload.recover.epoch: expected a string" },
        { "{\"type\":\"subscribe\",\"channel\":\"a\",\"payload\":{\"recover\":"
          "{\"offset\":1,\"epoch\":\"a b\"}}}",
          WSH_PERR_BAD_FIELD, "payload.recover.epoch: too long" },
        { "{\"type\":\"publish\",\"channel\":\"a\"}", WSH_PERR_BAD_FIELD, "payload: missing" },
        { "{\"type\":\"signal\",\"channel\":\"a\"}", WSH_PERR_BAD_FIELD, "payload: missing" },
        { "{\"type\":\"publish\",\"channel\":\"a\",\"payload\":1,\"msg_id\":1}", WSH_PERR_BAD_FIELD,
          "msg_id: expected a string" },
        { "{\"type\":\"publish\",\"channel\":\"a\",\"payload\":1,\"msg_id\":\"\"}",
          WSH_PERR_BAD_FIELD, "msg_id: empty" },
        { "{\"type\":\"publish\",\"channel\":\"a\",\"payload\":1,\"msg_id\":\"a\\nb\"}",
          WSH_PERR_BAD_FIELD, "msg_id: empty" },
        { "{\"type\":\"publish\",\"payload\":1}", WSH_PERR_BAD_FIELD, "channel: missing" },
        { "{\"type\":\"history\",\"channel\":\"a\",\"payload\":{\"since\":\"1\"}}",
          WSH_PERR_BAD_FIELD, "payload.since" },
        { "{\"type\":\"history\",\"channel\":\"a\",\"payload\":{\"limit\":-5}}", WSH_PERR_BAD_FIELD,
          "payload.limit" },
        { "{\"type\":\"history\",\"channel\":\"a\",\"payload\":{\"limit\":2.0}}",
          WSH_PERR_BAD_FIELD, "payload.limit" },
        { "{\"type\":\"read\",\"channel\":\"a\"}", WSH_PERR_BAD_FIELD, "payload.offset" },
        { "{\"type\":\"read\",\"channel\":\"a\",\"payload\":{\"offset\":true}}", WSH_PERR_BAD_FIELD,
          "payload.offset" },
        { "{\"type\":\"refresh\"}", WSH_PERR_BAD_FIELD, "payload.token: missing" },
        { "{\"type\":\"refresh\",\"payload\":{\"token\":5}}", WSH_PERR_BAD_FIELD,
          "payload.token: expected a string" },
        { "{\"type\":\"refresh\",\"payload\":{\"token\":\"\"}}", WSH_PERR_BAD_FIELD,
          "payload.token: invalid" },
        { "{\"type\":\"connect\",\"payload\":{\"token\":\"a b\"}}", WSH_PERR_BAD_FIELD,
          "payload.token: invalid" },
        { "{\"type\":\"connect\",\"payload\":\"tok\"}", WSH_PERR_BAD_FIELD,
          "payload: expected an object" },
        { "{\"type\":\"presence\",\"channel\":\"\"}", WSH_PERR_BAD_CHANNEL, NULL },
        { "{\"type\":\"unsubscribe\",\"channel\":\"a\\u0000b\"}", WSH_PERR_BAD_CHANNEL, NULL },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        parse_err(cases[i].in, cases[i].code, cases[i].msg);
}

static void test_proto_channel_names(void **state)
{
    (void)state;
    static const char *const good[] = {
        "a",        "lobby",           "chat:lobby", "chat:room.1",       "a-b_c:x=y@z",
        "inbox#42", "dm:inbox#user.1", "A9:Z0",      "dm:pair#alice,bob", "room#a,b,c",
    };
    static const char *const bad[] = {
        "",        ":",           ":a",
        "a:",      "a:b:c",       "a b",
        "a/b",     "a%2f",        "#42",
        "a#",      "a#b#c",       "ns.x:a",
        "a:#1",    "caf\xc3\xa9", "a\tb",
        "a,b",     "a,b#c",       "dm:x#,a",
        "dm:x#a,", "dm:x#a,,b",   "dm:x#a, b",
        "a*",      "a?",          "123456789012345678901234567890123:x", /* 33-byte namespace */
    };
    struct wsh_channel ch;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        if (!wsh_proto_channel_parse(good[i], strlen(good[i]), 0, &ch))
            fail_msg("'%s' rejected", good[i]);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (wsh_proto_channel_parse(bad[i], strlen(bad[i]), 0, &ch))
            fail_msg("'%s' accepted", bad[i]);
    assert_false(wsh_proto_channel_parse(NULL, 0, 0, &ch));
    assert_true(wsh_proto_channel_parse("12345678901234567890123456789012:x", 34, 0, &ch));
    assert_int_equal(ch.ns_len, 32);
}

static void test_proto_channel_length_boundary(void **state)
{
    (void)state;
    char name[300];
    memset(name, 'x', sizeof(name));
    struct wsh_channel ch;
    assert_true(wsh_proto_channel_parse(name, 128, 0, &ch));
    assert_false(wsh_proto_channel_parse(name, 129, 0, &ch));
    assert_true(wsh_proto_channel_parse(name, 200, 200, &ch));

    char msg[512];
    snprintf(msg, sizeof(msg), "{\"type\":\"subscribe\",\"channel\":\"%.*s\"}", 128, name);
    struct wsh_cmd c;
    parse_ok(msg, &c);
    wsh_cmd_free(&c);
    snprintf(msg, sizeof(msg), "{\"type\":\"subscribe\",\"channel\":\"%.*s\"}", 129, name);
    parse_err(msg, WSH_PERR_BAD_CHANNEL, NULL);
}

static void test_proto_msg_id_length_boundary(void **state)
{
    (void)state;
    char msg[256];
    struct wsh_cmd c;
    snprintf(msg, sizeof(msg),
             "{\"type\":\"publish\",\"channel\":\"a\",\"payload\":1,\"msg_id\":\"%064d\"}", 7);
    parse_ok(msg, &c);
    assert_int_equal(c.msg_id_len, 64);
    wsh_cmd_free(&c);
    snprintf(msg, sizeof(msg),
             "{\"type\":\"publish\",\"channel\":\"a\",\"payload\":1,\"msg_id\":\"%065d\"}", 7);
    parse_err(msg, WSH_PERR_BAD_FIELD, "msg_id");
}

static void test_proto_token_length_boundary(void **state)
{
    (void)state;
    struct wsh_proto_limits lim = { .max_token = 10 };
    const char *ok = "{\"type\":\"refresh\",\"payload\":{\"token\":\"aaaa.bbbb.\"}}";
    const char *big = "{\"type\":\"refresh\",\"payload\":{\"token\":\"aaaa.bbbb.c\"}}";
    struct wsh_cmd c;
    int code;
    assert_int_equal(parse_n(ok, strlen(ok), &lim, &c, &code, NULL), WSH_OK);
    wsh_cmd_free(&c);
    assert_int_equal(parse_n(big, strlen(big), &lim, &c, &code, NULL), WSH_EPROTO);
    assert_int_equal(code, WSH_PERR_BAD_FIELD);
}

static void test_proto_rejects_too_large(void **state)
{
    (void)state;
    const char *m = "{\"type\":\"presence\",\"channel\":\"abcdef\"}"; /* 38 bytes */
    size_t n = strlen(m);
    struct wsh_proto_limits lim = { .max_input = n };
    struct wsh_cmd c;
    int code;
    const char *msg;
    assert_int_equal(parse_n(m, n, &lim, &c, &code, &msg), WSH_OK);
    wsh_cmd_free(&c);
    lim.max_input = n - 1;
    assert_int_equal(parse_n(m, n, &lim, &c, &code, &msg), WSH_ETOOBIG);
    assert_int_equal(code, WSH_PERR_TOO_LARGE);

    /* Default: 64 KiB. */
    size_t big = WSH_PROTO_DEFAULT_MAX_INPUT + 1;
    char *s = malloc(big);
    assert_non_null(s);
    memset(s, ' ', big);
    assert_int_equal(parse_n(s, big, NULL, &c, &code, &msg), WSH_ETOOBIG);
    assert_int_equal(code, WSH_PERR_TOO_LARGE);
    free(s);
}

/* 100000 '[' must be refused by the pre-scan, not by a recursive parser. */
static void test_proto_rejects_too_deep_fast(void **state)
{
    (void)state;
    size_t n = 1000000;
    char *s = malloc(n);
    assert_non_null(s);
    memset(s, '[', n);
    struct wsh_proto_limits lim = { .max_input = n };
    struct wsh_cmd c;
    int code;
    const char *msg;
    assert_int_equal(parse_n(s, n, &lim, &c, &code, &msg), WSH_ETOOBIG);
    assert_int_equal(code, WSH_PERR_TOO_DEEP);
    assert_string_equal(msg, "json too deep");
    /* Same with an object root. */
    s[0] = '{';
    memcpy(s + 1, "\"payload\":", 10);
    assert_int_equal(parse_n(s, n, &lim, &c, &code, &msg), WSH_ETOOBIG);
    assert_int_equal(code, WSH_PERR_TOO_DEEP);
    free(s);
}

/* A message jansson refuses, or too deep, still has its error matched to
 * the command: the first top-level id, when it is an integer in JSON's
 * form, is echoed (docs/protocol.md). Anything else, no id. */
static void test_proto_id_echoed_on_parse_errors(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int code;
        int64_t id;
    } cases[] = {
        { "{\"type\":\"publish\",\"id\":11,\"channel\":\"chat:a\",\"payload\":{\"a\":1,\"a\":2}}",
          WSH_PERR_BAD_JSON, 11 },
        { "{\"type\":\"publish\",\"payload\":{\"a\":1,\"a\":2},\"id\" : 12 }",
          WSH_PERR_BAD_JSON, 12 },
        { "{\"id\":13,\"type\":\"publish\",\"payload\":99999999999999999999999}",
          WSH_PERR_BAD_JSON, 13 },
        { "{\"id\":0,\"payload\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
          WSH_PERR_TOO_DEEP, 0 },
        { "{\"id\":9007199254740991,\"type\":\"x\",}", WSH_PERR_BAD_JSON, 9007199254740991 },
        { "{\"id\":9007199254740992,\"type\":\"x\",}", WSH_PERR_BAD_JSON, WSH_PROTO_NO_ID },
        { "{\"id\":-1,\"type\":\"x\",}", WSH_PERR_BAD_JSON, WSH_PROTO_NO_ID },
        { "{\"id\":01,\"type\":\"x\"}", WSH_PERR_BAD_JSON, WSH_PROTO_NO_ID },
        { "{\"id\":1e3,\"type\":\"x\",}", WSH_PERR_BAD_JSON, WSH_PROTO_NO_ID },
        { "{\"id\":\"7\",\"type\":\"x\",}", WSH_PERR_BAD_JSON, WSH_PROTO_NO_ID },
        { "{\"i\\u0064\":7,\"type\":\"x\",}", WSH_PERR_BAD_JSON, WSH_PROTO_NO_ID },
        { "{\"payload\":{\"id\":7},\"type\":\"x\",}", WSH_PERR_BAD_JSON, WSH_PROTO_NO_ID },
        { "{\"id\":5,\"id\":6,\"type\":\"x\"}", WSH_PERR_BAD_JSON, 5 },
        { "[{\"id\":7}", WSH_PERR_BAD_JSON, WSH_PROTO_NO_ID },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct wsh_cmd c;
        int code;
        const char *msg;
        assert_int_not_equal(parse(cases[i].in, &c, &code, &msg), WSH_OK);
        assert_int_equal(code, cases[i].code);
        assert_int_equal(c.id, cases[i].id);
    }
}

static void test_proto_depth_boundary(void **state)
{
    (void)state;
    /* Root object (1) + payload nesting: 32 levels pass, 33 do not. */
    char buf[256];
    for (int depth = 32; depth <= 33; depth++) {
        int k = depth - 1; /* levels inside the root */
        int n = snprintf(buf, sizeof(buf), "{\"type\":\"publish\",\"channel\":\"a\",\"payload\":");
        for (int i = 0; i < k; i++)
            buf[n++] = '[';
        for (int i = 0; i < k; i++)
            buf[n++] = ']';
        buf[n++] = '}';
        buf[n] = '\0';
        struct wsh_cmd c;
        int code = 0;
        int rc = parse(buf, &c, &code, NULL);
        if (depth == 32) {
            assert_int_equal(rc, WSH_OK);
            wsh_cmd_free(&c);
        } else {
            assert_int_equal(rc, WSH_ETOOBIG);
            assert_int_equal(code, WSH_PERR_TOO_DEEP);
        }
    }
    struct wsh_proto_limits lim = { .max_depth = 3 };
    struct wsh_cmd c;
    int code;
    const char *ok = "{\"type\":\"publish\",\"channel\":\"a\",\"payload\":[{}]}";
    const char *deep = "{\"type\":\"publish\",\"channel\":\"a\",\"payload\":[{\"x\":[]}]}";
    assert_int_equal(parse_n(ok, strlen(ok), &lim, &c, &code, NULL), WSH_OK);
    wsh_cmd_free(&c);
    assert_int_equal(parse_n(deep, strlen(deep), &lim, &c, &code, NULL), WSH_ETOOBIG);
    assert_int_equal(code, WSH_PERR_TOO_DEEP);
    /* Brackets inside strings, escaped quotes included, do not count. */
    const char *str = "{\"type\":\"publish\",\"channel\":\"a\",\"payload\":\"[[[[\\\"[[[[{{{{\"}";
    assert_int_equal(parse_n(str, strlen(str), &lim, &c, &code, NULL), WSH_OK);
    assert_slice(c.payload_raw, c.payload_raw_len, "\"[[[[\\\"[[[[{{{{\"");
    wsh_cmd_free(&c);
}

/* ------------------------------------------------------------------ */
/* Encoding                                                            */

static void test_proto_format_time(void **state)
{
    (void)state;
    static const struct {
        int64_t ms;
        const char *want;
    } cases[] = {
        { 0, "1970-01-01T00:00:00.000Z" },
        { T0, "2026-11-22T05:09:22.621Z" },
        { INT64_C(1709251199999), "2024-02-29T23:59:59.999Z" },
        { INT64_C(951868800007), "2000-03-01T00:00:00.007Z" },
        { -5, "1970-01-01T00:00:00.000Z" },
        { INT64_MAX, "9999-12-31T23:59:59.999Z" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[24];
        assert_int_equal(wsh_proto_format_time(out, cases[i].ms), 24);
        assert_slice(out, 24, cases[i].want);
    }
}

static void test_proto_escape_strings(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t n;
        const char *want;
    } cases[] = {
        { "plain", 5, "\"plain\"" },
        { "", 0, "\"\"" },
        { "q\"b\\s/", 6, "\"q\\\"b\\\\s/\"" },
        { "\b\f\n\r\t", 5, "\"\\b\\f\\n\\r\\t\"" },
        { "\x01\x1f\x7f", 3, "\"\\u0001\\u001f\\u007f\"" },
        { "a\0b", 3, "\"a\\u0000b\"" },
        { "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14,
          "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"" },
        { "\xff", 1, "\"\\ufffd\"" },
        { "\xc3", 1, "\"\\ufffd\"" },                                  /* truncated sequence */
        { "\xc0\xaf", 2, "\"\\ufffd\\ufffd\"" },                       /* overlong */
        { "\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\"" },            /* surrogate */
        { "\xf4\x90\x80\x80", 4, "\"\\ufffd\\ufffd\\ufffd\\ufffd\"" }, /* > U+10FFFF */
        { "\xe2\x28\xa1", 3, "\"\\ufffd(\\ufffd\"" },
    };
    struct wsh_jbuf b = { 0 };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        wsh_jbuf_reset(&b);
        wsh_proto_put_string(&b, cases[i].in, cases[i].n);
        assert_slice(b.data, b.len, cases[i].want);
        json_t *v = json_loadb(b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        assert_non_null(v);
        json_decref(v);
    }
    wsh_jbuf_free(&b);
}

/* Every byte value through the escaper: the result always parses, and
 * decodes back to the input for ASCII. */
static void test_proto_escape_all_bytes(void **state)
{
    (void)state;
    char in[128];
    for (int i = 0; i < 128; i++)
        in[i] = (char)i;
    struct wsh_jbuf b = { 0 };
    wsh_proto_put_string(&b, in, sizeof(in));
    json_error_t e;
    json_t *v = json_loadb(b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    assert_non_null(v);
    assert_int_equal(json_string_length(v), 128);
    assert_memory_equal(json_string_value(v), in, 128);
    json_decref(v);
    wsh_jbuf_reset(&b);
    char hi[128];
    for (int i = 0; i < 128; i++)
        hi[i] = (char)(128 + i);
    wsh_proto_put_string(&b, hi, sizeof(hi));
    v = json_loadb(b.data, b.len, JSON_DECODE_ANY, &e);
    assert_non_null(v);
    json_decref(v);
    wsh_jbuf_free(&b);
}

#define ENC(call, want)                                  \
    do {                                                 \
        wsh_jbuf_reset(&b);                              \
        assert_int_equal((call), WSH_OK);                \
        assert_slice(b.data, b.len, (want));             \
        json_t *v_ = json_loadb(b.data, b.len, 0, NULL); \
        assert_non_null(v_);                             \
        json_decref(v_);                                 \
    } while (0)

static void test_proto_encode_replies(void **state)
{
    (void)state;
    struct wsh_jbuf b = { 0 };
    ENC(wsh_proto_encode_connected(&b, 1, "c42", 3, "alice", 5, 1795327762, T0),
        "{\"type\":\"connected\",\"id\":1,\"payload\":{\"client\":\"c42\",\"user\":\"alice\","
        "\"expires\":1795327762}," TS);
    ENC(wsh_proto_encode_connected(&b, WSH_PROTO_NO_ID, "c1", 2, NULL, 0, 0, T0),
        "{\"type\":\"connected\",\"payload\":{\"client\":\"c1\",\"user\":null,\"expires\":0}," TS);
    ENC(wsh_proto_encode_subscribed(&b, 2, "chat:lobby", 10, 17, "xY7", 3, true, T0),
        "{\"type\":\"subscribed\",\"id\":2,\"channel\":\"chat:lobby\",\"payload\":{\"offset\":17,"
        "\"epoch\":\"xY7\",\"recovered\":true}," TS);
    ENC(wsh_proto_encode_subscribed(&b, 2, "a", 1, 0, "e", 1, false, T0),
        "{\"type\":\"subscribed\",\"id\":2,\"channel\":\"a\",\"payload\":{\"offset\":0,"
        "\"epoch\":\"e\",\"recovered\":false}," TS);
    ENC(wsh_proto_encode_unsubscribed(&b, 3, "a", 1, T0),
        "{\"type\":\"unsubscribed\",\"id\":3,\"channel\":\"a\",\"payload\":{}," TS);
    ENC(wsh_proto_encode_ack(&b, 4, "a", 1, INT64_MAX, T0),
        "{\"type\":\"ack\",\"id\":4,\"channel\":\"a\",\"payload\":{\"offset\":9223372036854775807}"
        "," TS);
    ENC(wsh_proto_encode_ack(&b, 4, NULL, 0, 5, T0),
        "{\"type\":\"ack\",\"id\":4,\"payload\":{\"offset\":5}," TS);
    ENC(wsh_proto_encode_refreshed(&b, 7, 1795327762, T0),
        "{\"type\":\"refreshed\",\"id\":7,\"payload\":{\"expires\":1795327762}," TS);
    ENC(wsh_proto_encode_error(&b, 8, NULL, 0, WSH_PERR_UNKNOWN_TYPE, NULL, T0),
        "{\"type\":\"error\",\"id\":8,\"payload\":{\"code\":1001,\"message\":\"unknown "
        "type\"}," TS);
    ENC(wsh_proto_encode_error(&b, WSH_PROTO_NO_ID, "a", 1, 1002, "channel: \"x\"\n", T0),
        "{\"type\":\"error\",\"channel\":\"a\",\"payload\":{\"code\":1002,\"message\":"
        "\"channel: \\\"x\\\"\\n\"}," TS);
    wsh_jbuf_free(&b);
}

static void test_proto_encode_presence_history(void **state)
{
    (void)state;
    struct wsh_jbuf b = { 0 };
    struct wsh_presence_entry who[2] = {
        { "alice", 5, "c1", 2, "{\"name\":\"Alice\"}", 16 },
        { "bob", 3, "c2", 2, NULL, 0 },
    };
    ENC(wsh_proto_encode_presence(&b, 5, "a", 1, 2, who, 2, T0),
        "{\"type\":\"presence\",\"id\":5,\"channel\":\"a\",\"payload\":{\"count\":2,\"clients\":["
        "{\"user\":\"alice\",\"client\":\"c1\",\"info\":{\"name\":\"Alice\"}},"
        "{\"user\":\"bob\",\"client\":\"c2\",\"info\":null}]}," TS);
    ENC(wsh_proto_encode_presence(&b, 5, "a", 1, 5000, NULL, 0, T0),
        "{\"type\":\"presence\",\"id\":5,\"channel\":\"a\",\"payload\":{\"count\":5000}," TS);
    ENC(wsh_proto_encode_presence(&b, 5, "a", 1, 0, who, 0, T0),
        "{\"type\":\"presence\",\"id\":5,\"channel\":\"a\",\"payload\":{\"count\":0,\"clients\":[]}"
        "," TS);
    struct wsh_history_entry h[2] = {
        { 9, "alice", 5, "{\"t\":1}", 7, 0 },
        { 10, NULL, 0, "\"x\"", 3, T0 },
    };
    ENC(wsh_proto_encode_history(&b, 6, "a", 1, 10, "e", 1, h, 2, T0),
        "{\"type\":\"history\",\"id\":6,\"channel\":\"a\",\"payload\":{\"offset\":10,\"epoch\":"
        "\"e\","
        "\"messages\":[{\"offset\":9,\"from\":\"alice\",\"payload\":{\"t\":1},\"timestamp\":"
        "\"1970-01-01T00:00:00.000Z\"},{\"offset\":10,\"from\":null,\"payload\":\"x\","
        "\"timestamp\":\"2026-11-22T05:09:22.621Z\"}]}," TS);
    ENC(wsh_proto_encode_history(&b, 6, "a", 1, 0, "e", 1, NULL, 0, T0),
        "{\"type\":\"history\",\"id\":6,\"channel\":\"a\",\"payload\":{\"offset\":0,\"epoch\":"
        "\"e\","
        "\"messages\":[]}," TS);
    wsh_jbuf_free(&b);
}

static void test_proto_encode_pushes(void **state)
{
    (void)state;
    struct wsh_jbuf b = { 0 };
    ENC(wsh_proto_encode_message(&b, "chat:lobby", 10, 42, "xY7", 3, "alice", 5,
                                 "{\"text\":\"hi\"}", 13, T0),
        "{\"type\":\"message\",\"channel\":\"chat:lobby\",\"offset\":42,\"epoch\":\"xY7\","
        "\"from\":\"alice\",\"payload\":{\"text\":\"hi\"}," TS);
    ENC(wsh_proto_encode_message(&b, "a", 1, 1, "e", 1, NULL, 0, NULL, 0, T0),
        "{\"type\":\"message\",\"channel\":\"a\",\"offset\":1,\"epoch\":\"e\",\"from\":null,"
        "\"payload\":null," TS);
    ENC(wsh_proto_encode_signal(&b, "a", 1, "bob", 3, "{\"typing\":true}", 15, T0),
        "{\"type\":\"signal\",\"channel\":\"a\",\"from\":\"bob\",\"payload\":{\"typing\":true}"
        "," TS);
    struct wsh_presence_entry who = { "alice", 5, "c1", 2, NULL, 0 };
    ENC(wsh_proto_encode_join(&b, false, "a", 1, &who, T0),
        "{\"type\":\"join\",\"channel\":\"a\",\"payload\":{\"user\":\"alice\",\"client\":\"c1\","
        "\"info\":null}," TS);
    ENC(wsh_proto_encode_join(&b, true, "a", 1, &who, T0),
        "{\"type\":\"leave\",\"channel\":\"a\",\"payload\":{\"user\":\"alice\",\"client\":\"c1\","
        "\"info\":null}," TS);
    ENC(wsh_proto_encode_read(&b, "a", 1, "bob", 3, 41, T0),
        "{\"type\":\"read\",\"channel\":\"a\",\"payload\":{\"user\":\"bob\",\"offset\":41}," TS);
    ENC(wsh_proto_encode_refresh_required(&b, 1795324222, T0),
        "{\"type\":\"refresh_required\",\"payload\":{\"expires\":1795324222}," TS);
    ENC(wsh_proto_encode_lagged(&b, "a", 1, 100, "e", 1, T0),
        "{\"type\":\"lagged\",\"channel\":\"a\",\"payload\":{\"from_offset\":100,\"epoch\":\"e\"}"
        "," TS);
    ENC(wsh_proto_encode_disconnect(&b, 4101, "slow consumer", 13, true, 1500, T0),
        "{\"type\":\"disconnect\",\"payload\":{\"code\":4101,\"reason\":\"slow consumer\","
        "\"reconnect\":true,\"retry_after_ms\":1500}," TS);
    ENC(wsh_proto_encode_disconnect(&b, 4500, NULL, 0, false, 0, T0),
        "{\"type\":\"disconnect\",\"payload\":{\"code\":4500,\"reason\":\"\","
        "\"reconnect\":false,\"retry_after_ms\":0}," TS);
    wsh_jbuf_free(&b);
}

/* Encoders append: several messages in one buffer, and hostile strings in
 * every string field still give valid JSON that decodes to the input. */
static void test_proto_encode_roundtrip(void **state)
{
    (void)state;
    const char chan[] = "weird\"\\\n\x01\xe2\x82\xac";
    const char from[] = "</script>\t\"";
    struct wsh_jbuf b = { 0 };
    assert_int_equal(wsh_proto_encode_message(&b, chan, sizeof(chan) - 1, 7, from, sizeof(from) - 1,
                                              from, sizeof(from) - 1, "[1,\"\\u0000\"]", 12, T0),
                     WSH_OK);
    size_t first = b.len;
    assert_int_equal(wsh_proto_encode_error(&b, 3, chan, sizeof(chan) - 1, 1000, from, T0), WSH_OK);
    json_error_t e;
    json_t *m = json_loadb(b.data, first, JSON_ALLOW_NUL, &e);
    assert_non_null(m);
    assert_string_equal(json_string_value(json_object_get(m, "type")), "message");
    assert_string_equal(json_string_value(json_object_get(m, "channel")), chan);
    assert_string_equal(json_string_value(json_object_get(m, "epoch")), from);
    assert_string_equal(json_string_value(json_object_get(m, "from")), from);
    assert_int_equal(json_integer_value(json_object_get(m, "offset")), 7);
    assert_int_equal(json_array_size(json_object_get(m, "payload")), 2);
    assert_string_equal(json_string_value(json_object_get(m, "timestamp")),
                        "2026-11-22T05:09:22.621Z");
    json_decref(m);
    json_t *er = json_loadb(b.data + first, b.len - first, 0, &e);
    assert_non_null(er);
    json_t *p = json_object_get(er, "payload");
    assert_int_equal(json_integer_value(json_object_get(p, "code")), 1000);
    assert_string_equal(json_string_value(json_object_get(p, "message")), from);
    assert_int_equal(json_integer_value(json_object_get(er, "id")), 3);
    json_decref(er);
    wsh_jbuf_free(&b);
}

/* parse -> payload dump -> message push -> parse with jansson: the pushed
 * payload equals what the publisher sent. */
static void test_proto_publish_to_message_roundtrip(void **state)
{
    (void)state;
    static const char *const ins[] = {
        "{\"type\":\"publish\",\"channel\":\"a\",\"payload\":{\"x\":[1,2.5,\"\\u00e9\\n\"]}}",
        "{\"type\":\"publish\",\"channel\":\"a\",\"payload\": { \"spaced\" : [ true , null ] } }",
        "{\"type\":\"publish\",\"channel\":\"a\",\"payload\":\"\\ud83d\\ude00\"}",
    };
    for (size_t i = 0; i < sizeof(ins) / sizeof(ins[0]); i++) {
        struct wsh_cmd c;
        parse_ok(ins[i], &c);
        struct wsh_jbuf pay = { 0 }, out = { 0 };
        assert_int_equal(wsh_proto_payload_dump(&c, &pay), WSH_OK);
        assert_int_equal(wsh_proto_encode_message(&out, c.channel, c.channel_len, 1, "e", 1, "u", 1,
                                                  pay.data, pay.len, T0),
                         WSH_OK);
        json_t *m = json_loadb(out.data, out.len, 0, NULL);
        assert_non_null(m);
        assert_true(json_equal(json_object_get(m, "payload"), c.payload));
        json_decref(m);
        wsh_jbuf_free(&pay);
        wsh_jbuf_free(&out);
        wsh_cmd_free(&c);
    }
}

static void test_proto_buf_take_and_growth(void **state)
{
    (void)state;
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    size_t n = 200000;
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, '7', n);
    assert_int_equal(wsh_proto_encode_message(&b, "a", 1, 1, "e", 1, "u", 1, big, n, T0), WSH_OK);
    assert_true(b.len > n);
    assert_true(b.cap >= b.len);
    size_t len;
    char *p = wsh_jbuf_take(&b, &len);
    assert_non_null(p);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_memory_equal(p + len - 44, big, 4); /* payload ends before the timestamp */
    free(p);
    free(big);
    assert_int_equal(wsh_jbuf_reserve(&b, 10), WSH_OK);
    assert_true(b.cap >= 10);
    wsh_jbuf_free(&b);
}

static void test_proto_code_messages(void **state)
{
    (void)state;
    static const int codes[] = { 1000, 1001, 1002, 1003, 1004, 2000, 2001, 2002, 2003, 2004, 2005,
                                 3000, 3001, 3002, 3003, 4000, 4001, 4002, 4003, 4004, 5000, 5001 };
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        assert_string_not_equal(wsh_proto_code_message(codes[i]), "unknown error");
    assert_string_equal(wsh_proto_code_message(4100), "unknown error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_proto_parse_connect),
        cmocka_unit_test(test_proto_id_echoed_on_parse_errors),
        cmocka_unit_test(test_proto_parse_subscribe),
        cmocka_unit_test(test_proto_parse_subscribe_recover),
        cmocka_unit_test(test_proto_parse_unsubscribe),
        cmocka_unit_test(test_proto_parse_publish),
        cmocka_unit_test(test_proto_parse_publish_payload_span),
        cmocka_unit_test(test_proto_parse_publish_payload_reencoded),
        cmocka_unit_test(test_proto_parse_presence),
        cmocka_unit_test(test_proto_parse_history),
        cmocka_unit_test(test_proto_parse_refresh),
        cmocka_unit_test(test_proto_parse_signal),
        cmocka_unit_test(test_proto_parse_read),
        cmocka_unit_test(test_proto_type_names),
        cmocka_unit_test(test_proto_unknown_fields_ignored),
        cmocka_unit_test(test_proto_rejects_bad_json),
        cmocka_unit_test(test_proto_rejects_type),
        cmocka_unit_test(test_proto_rejects_id),
        cmocka_unit_test(test_proto_error_keeps_id),
        cmocka_unit_test(test_proto_rejects_fields),
        cmocka_unit_test(test_proto_channel_names),
        cmocka_unit_test(test_proto_channel_length_boundary),
        cmocka_unit_test(test_proto_msg_id_length_boundary),
        cmocka_unit_test(test_proto_token_length_boundary),
        cmocka_unit_test(test_proto_rejects_too_large),
        cmocka_unit_test(test_proto_rejects_too_deep_fast),
        cmocka_unit_test(test_proto_depth_boundary),
        cmocka_unit_test(test_proto_format_time),
        cmocka_unit_test(test_proto_escape_strings),
        cmocka_unit_test(test_proto_escape_all_bytes),
        cmocka_unit_test(test_proto_encode_replies),
        cmocka_unit_test(test_proto_encode_presence_history),
        cmocka_unit_test(test_proto_encode_pushes),
        cmocka_unit_test(test_proto_encode_roundtrip),
        cmocka_unit_test(test_proto_publish_to_message_roundtrip),
        cmocka_unit_test(test_proto_buf_take_and_growth),
        cmocka_unit_test(test_proto_code_messages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
