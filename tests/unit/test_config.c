/* Unit tests of the hub configuration (src/hub/config.c): a full valid
 * file, the defaults, every invalid field with its exact error path, and
 * the namespace lookup. */
#define _DEFAULT_SOURCE /* mkstemp, fdopen */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka.h needs the four headers above. */
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wshub/config.h"

#define SECRET32 "0123456789abcdef0123456789abcdef"

/* The example of docs/config.md, kept in step with it. */
static const char full_config[] =
    "{\n"
    "  \"default_namespace\": {\"history_size\": 50, \"history_ttl_s\": 60, \"presence\": false},\n"
    "  \"namespaces\": {\n"
    "    \"chat\": {\n"
    "      \"history_size\": 200, \"history_ttl_s\": 3600, \"dedup_window_s\": 300,\n"
    "      \"presence\": true, \"join_leave\": true, \"recover\": true,\n"
    "      \"publish\": \"subscribers\", \"slow_consumer\": \"drop_oldest\",\n"
    "      \"max_subscribers\": 5000, \"presence_count_threshold\": 500\n"
    "    },\n"
    "    \"news\": {\"history_size\": 0, \"recover\": false, \"publish\": \"server\"},\n"
    "    \"cursors\": {\"history_size\": 0, \"recover\": false, \"presence\": false}\n"
    "  },\n"
    "  \"auth\": {\n"
    "    \"allow_anonymous\": false,\n"
    "    \"issuer\": \"https://idp.example\", \"audience\": \"wshub-app\",\n"
    "    \"jwks_file\": \"/etc/wshub/jwks.json\",\n"
    "    \"keys\": [\n"
    "      {\"kid\": \"hs-2026\", \"alg\": \"HS256\", \"secret\": \"" SECRET32 "\"},\n"
    "      {\"kid\": \"rsa-1\", \"alg\": \"RS256\", \"public_key_file\": \"/etc/wshub/rsa.pem\"},\n"
    "      {\"kid\": \"ec-1\", \"alg\": \"ES256\", \"public_key_file\": \"/etc/wshub/ec.pem\"}\n"
    "    ]\n"
    "  },\n"
    "  \"origins\": [\"https://chat.example.com\", \"http://localhost:8080\"],\n"
    "  \"api_key\": \"k3y-0123456789abcdef\",\n"
    "  \"trusted_proxies\": [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"],\n"
    "  \"limits\": {\n"
    "    \"publish_rate\": 10.5, \"publish_burst\": 30, \"max_subscriptions\": 64,\n"
    "    \"max_revocations\": 100000,\n"
    "    \"max_connections\": 50000, \"max_connections_per_ip\": 100,\n"
    "    \"handshake_rate_per_ip\": 2.5, \"handshake_burst_per_ip\": 12,\n"
    "    \"admission_rate\": 2000, \"admission_burst\": 5000, \"ipv6_prefix\": 56,\n"
    "    \"max_client_memory\": 8589934592,\n"
    "    \"max_channels\": 200000, \"max_history_memory\": 1073741824,\n"
    "    \"max_message\": 32768, \"json_depth\": 16, \"max_channel\": 96,\n"
    "    \"unauthenticated\": {\"max_message\": 2048, \"timeout_ms\": 3000, "
    "\"max_outbound\": 8192}\n"
    "  }\n"
    "}\n";

static void load_ok(const char *text, struct wsh_hub_config *cfg)
{
    char err[256];
    int rc = wsh_config_parse(text, strlen(text), cfg, err, sizeof(err));
    if (rc != WSH_OK)
        fail_msg("config rejected (%d): %s", rc, err);
}

static void load_err(const char *text, const char *want)
{
    struct wsh_hub_config cfg;
    memset(&cfg, 0xa5, sizeof(cfg));
    char err[256];
    int rc = wsh_config_parse(text, strlen(text), &cfg, err, sizeof(err));
    if (rc == WSH_OK) {
        wsh_config_free(&cfg);
        fail_msg("config accepted: %s", text);
    }
    assert_int_equal(rc, WSH_EINVAL);
    if (strcmp(err, want) != 0)
        fail_msg("for %s\n  got  %s\n  want %s", text, err, want);
    /* *out untouched on failure. */
    unsigned char *p = (unsigned char *)&cfg;
    for (size_t i = 0; i < sizeof(cfg); i++)
        assert_int_equal(p[i], 0xa5);
}

/* open, then n copies of item separated by commas, then close, into buf. */
static void array_doc(char *buf, size_t cap, const char *open, const char *item, size_t n,
                      const char *close)
{
    size_t len = (size_t)snprintf(buf, cap, "%s", open);
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%s", i ? "," : "", item);
    snprintf(buf + len, cap - len, "%s", close);
    assert_true(len + strlen(close) < cap);
}

/* Each array's bound: the most it takes is accepted, one more is refused
 * by name. */
static void test_config_array_bounds(void **state)
{
    (void)state;
    static char doc[64 * 1024];
    struct wsh_hub_config cfg;
    array_doc(doc, sizeof(doc), "{\"trusted_proxies\":[", "\"10.0.0.0/8\"", 256, "]}");
    load_ok(doc, &cfg);
    assert_int_equal(cfg.ntrusted_proxies, 256);
    wsh_config_free(&cfg);
    array_doc(doc, sizeof(doc), "{\"trusted_proxies\":[", "\"10.0.0.0/8\"", 257, "]}");
    load_err(doc, "trusted_proxies: more than 256 address blocks");
    array_doc(doc, sizeof(doc), "{\"origins\":[", "\"https://a.example\"", 256, "]}");
    load_ok(doc, &cfg);
    assert_int_equal(cfg.norigins, 256);
    wsh_config_free(&cfg);
    array_doc(doc, sizeof(doc), "{\"origins\":[", "\"https://a.example\"", 257, "]}");
    load_err(doc, "origins: more than 256 origins");
    array_doc(doc, sizeof(doc), "{\"auth\":{\"keys\":[",
              "{\"alg\":\"HS256\",\"secret\":\"" SECRET32 "\"}", 17, "]}}");
    load_err(doc, "auth.keys: more than 16 keys");
}

/* A max_message under the 4096 bytes unauthenticated.max_message would
 * default to takes that one down with it, unless it is given (and then
 * must not be above: refused, see test_config_errors). */
static void test_config_unauth_message_follows_a_small_max_message(void **state)
{
    (void)state;
    struct wsh_hub_config cfg;
    load_ok("{\"limits\":{\"max_message\":1024}}", &cfg);
    assert_int_equal(cfg.limits.max_message, 1024);
    assert_int_equal(cfg.limits.unauth_max_message, 1024);
    wsh_config_free(&cfg);
    load_ok("{\"limits\":{\"max_message\":1024,\"unauthenticated\":{\"timeout_ms\":900}}}", &cfg);
    assert_int_equal(cfg.limits.unauth_max_message, 1024);
    wsh_config_free(&cfg);
    load_ok("{\"limits\":{\"max_message\":1024,\"unauthenticated\":{\"max_message\":512}}}",
            &cfg);
    assert_int_equal(cfg.limits.unauth_max_message, 512);
    wsh_config_free(&cfg);
    load_ok("{\"limits\":{\"max_message\":8192}}", &cfg);
    assert_int_equal(cfg.limits.unauth_max_message, 4096);
    wsh_config_free(&cfg);
}

static void test_config_defaults(void **state)
{
    (void)state;
    struct wsh_hub_config cfg;
    wsh_config_defaults(&cfg);
    assert_int_equal(cfg.limits.max_message, 65536);
    assert_int_equal(cfg.limits.json_depth, 32);
    assert_int_equal(cfg.limits.unauth_max_message, 4096);
    assert_int_equal(cfg.limits.unauth_timeout_ms, 5000);
    assert_int_equal(cfg.limits.unauth_max_outbound, 16384);
    assert_int_equal(cfg.limits.max_subscriptions, 128);
    assert_int_equal(cfg.limits.max_revocations, 65536);
    assert_int_equal(cfg.limits.max_connections, 0);
    assert_true(cfg.limits.admission_rate == 0.0); /* off */
    assert_int_equal(cfg.limits.admission_burst, 1000);
    assert_int_equal(cfg.limits.ipv6_prefix, 64);
    assert_int_equal(cfg.limits.max_client_memory, 0); /* off */
    assert_int_equal(cfg.limits.max_channels, 1000000);
    assert_int_equal(cfg.limits.max_history_memory, 256u << 20);
    assert_false(cfg.auth.allow_anonymous);
    assert_null(cfg.auth.jwks_file);
    assert_null(cfg.auth.issuer);
    assert_null(cfg.auth.audience);
    assert_null(cfg.api_key);
    assert_int_equal(cfg.nnamespaces, 0);
    assert_int_equal(cfg.default_ns.history_size, 100);
    assert_true(cfg.default_ns.recover);
    assert_int_equal(cfg.default_ns.slow_consumer, WSH_SLOW_DISCONNECT);
    wsh_config_free(&cfg);

    /* An empty document gives the same. */
    struct wsh_hub_config e;
    load_ok("{}", &e);
    assert_memory_equal(&e.limits, &cfg.limits, sizeof(cfg.limits));
    assert_int_equal(e.default_ns.history_size, cfg.default_ns.history_size);
    assert_int_equal(e.default_ns.presence_count_threshold, 1000);
    wsh_config_free(&e);
}

static void test_config_full_valid(void **state)
{
    (void)state;
    struct wsh_hub_config cfg;
    load_ok(full_config, &cfg);
    assert_int_equal(cfg.default_ns.history_size, 50);
    assert_int_equal(cfg.default_ns.history_ttl_s, 60);
    assert_false(cfg.default_ns.presence);
    assert_int_equal(cfg.nnamespaces, 3);
    /* Sorted by name for the lookup. */
    assert_string_equal(cfg.namespaces[0].name, "chat");
    assert_string_equal(cfg.namespaces[1].name, "cursors");
    assert_string_equal(cfg.namespaces[2].name, "news");
    const struct wsh_ns_config *chat = &cfg.namespaces[0];
    assert_int_equal(chat->history_size, 200);
    assert_int_equal(chat->history_ttl_s, 3600);
    assert_int_equal(chat->dedup_window_s, 300);
    assert_true(chat->presence);
    assert_true(chat->join_leave);
    assert_true(chat->recover);
    assert_int_equal(chat->publish, WSH_PUBLISH_SUBSCRIBERS);
    assert_int_equal(chat->slow_consumer, WSH_SLOW_DROP_OLDEST);
    assert_int_equal(chat->max_subscribers, 5000);
    assert_int_equal(chat->presence_count_threshold, 500);
    assert_int_equal(cfg.namespaces[2].publish, WSH_PUBLISH_SERVER);
    assert_false(cfg.namespaces[2].recover);
    /* Namespaces start from the built-in defaults. */
    assert_int_equal(cfg.namespaces[2].history_ttl_s, WSH_CFG_DEFAULT_HISTORY_TTL_S);

    assert_false(cfg.auth.allow_anonymous);
    assert_string_equal(cfg.auth.issuer, "https://idp.example");
    assert_string_equal(cfg.auth.audience, "wshub-app");
    assert_int_equal(cfg.auth.nkeys, 3);
    assert_string_equal(cfg.auth.jwks_file, "/etc/wshub/jwks.json");
    assert_string_equal(cfg.auth.keys[0].kid, "hs-2026");
    assert_int_equal(cfg.auth.keys[0].alg, WSH_ALG_HS256);
    assert_string_equal(cfg.auth.keys[0].secret, SECRET32);
    assert_int_equal(cfg.auth.keys[0].secret_len, 32);
    assert_null(cfg.auth.keys[0].public_key_file);
    assert_int_equal(cfg.auth.keys[1].alg, WSH_ALG_RS256);
    assert_string_equal(cfg.auth.keys[1].public_key_file, "/etc/wshub/rsa.pem");
    assert_null(cfg.auth.keys[1].secret);
    assert_int_equal(cfg.auth.keys[2].alg, WSH_ALG_ES256);
    assert_string_equal(wsh_config_alg_name(cfg.auth.keys[2].alg), "ES256");

    assert_int_equal(cfg.norigins, 2);
    assert_string_equal(cfg.origins[0], "https://chat.example.com");
    assert_string_equal(cfg.origins[1], "http://localhost:8080");
    assert_string_equal(cfg.api_key, "k3y-0123456789abcdef");
    assert_int_equal(cfg.ntrusted_proxies, 3);
    assert_int_equal(cfg.trusted_proxies[0].family, 4);
    assert_int_equal(cfg.trusted_proxies[0].bits, 8);
    assert_int_equal(cfg.trusted_proxies[1].family, 6);
    assert_int_equal(cfg.trusted_proxies[1].bits, 32);
    assert_int_equal(cfg.trusted_proxies[2].bits, 32);

    const struct wsh_limits_config *l = &cfg.limits;
    assert_true(l->publish_rate > 10.4 && l->publish_rate < 10.6);
    assert_int_equal(l->publish_burst, 30);
    assert_int_equal(l->max_subscriptions, 64);
    assert_int_equal(l->max_revocations, 100000);
    assert_int_equal(l->max_connections, 50000);
    assert_int_equal(l->max_connections_per_ip, 100);
    assert_true(l->handshake_rate_per_ip > 2.4 && l->handshake_rate_per_ip < 2.6);
    assert_int_equal(l->handshake_burst_per_ip, 12);
    assert_true(l->admission_rate > 1999.9 && l->admission_rate < 2000.1);
    assert_int_equal(l->admission_burst, 5000);
    assert_int_equal(l->ipv6_prefix, 56);
    assert_int_equal(l->max_client_memory, 8589934592ull); /* 8 GiB: past 32 bits */
    assert_int_equal(l->max_channels, 200000);
    assert_int_equal(l->max_history_memory, 1073741824ull);
    assert_int_equal(l->max_message, 32768);
    assert_int_equal(l->json_depth, 16);
    assert_int_equal(l->max_channel, 96);
    assert_int_equal(l->unauth_max_message, 2048);
    assert_int_equal(l->unauth_timeout_ms, 3000);
    assert_int_equal(l->unauth_max_outbound, 8192);
    wsh_config_free(&cfg);
    wsh_config_free(&cfg); /* reset to defaults: harmless twice */
    assert_null(cfg.namespaces);
}

static void test_config_invalid_fields(void **state)
{
    (void)state;
    static const struct {
        const char *in, *err;
    } cases[] = {
        { "{\"namespaces\":{\"chat\":{\"history_size\":\"ten\"}}}",
          "namespaces.chat.history_size: expected a non-negative integer, got \"ten\"" },
        { "{\"namespaces\":{\"chat\":{\"history_size\":-1}}}",
          "namespaces.chat.history_size: expected a non-negative integer, got -1" },
        { "{\"namespaces\":{\"chat\":{\"history_size\":1.5}}}",
          "namespaces.chat.history_size: expected a non-negative integer, got 1.5" },
        { "{\"namespaces\":{\"chat\":{\"history_size\":2000000}}}",
          "namespaces.chat.history_size: expected at most 1000000, got 2000000" },
        { "{\"namespaces\":{\"chat\":{\"histroy_size\":5}}}",
          "namespaces.chat.histroy_size: unknown key" },
        { "{\"namespaces\":{\"chat\":{\"presence\":\"yes\"}}}",
          "namespaces.chat.presence: expected true or false, got \"yes\"" },
        { "{\"namespaces\":{\"chat\":{\"join_leave\":1}}}",
          "namespaces.chat.join_leave: expected true or false, got 1" },
        { "{\"namespaces\":{\"chat\":{\"publish\":\"anyone\"}}}",
          "namespaces.chat.publish: expected one of \"subscribers\", \"server\", got \"anyone\"" },
        { "{\"namespaces\":{\"chat\":{\"slow_consumer\":null}}}",
          "namespaces.chat.slow_consumer: expected one of \"disconnect\", \"drop_oldest\", got "
          "null" },
        { "{\"namespaces\":{\"chat\":{\"history_size\":0}}}",
          "namespaces.chat.recover: recovery needs history: set history_size > 0 or recover to "
          "false" },
        { "{\"namespaces\":{\"chat\":[]}}", "namespaces.chat: expected an object, got an array" },
        { "{\"namespaces\":{\"ch@t\":{}}}",
          "namespaces.ch@t: invalid namespace name: 1 to 32 characters of A-Z a-z 0-9 _ -" },
        { "{\"namespaces\":{\"\":{}}}",
          "namespaces.: invalid namespace name: 1 to 32 characters of A-Z a-z 0-9 _ -" },
        { "{\"namespaces\":[]}", "namespaces: expected an object, got an array" },
        { "{\"default_namespace\":{\"max_subscribers\":\"many\"}}",
          "default_namespace.max_subscribers: expected a non-negative integer, got \"many\"" },
        { "{\"default_namespace\":{\"history_ttl_s\":99999999}}",
          "default_namespace.history_ttl_s: expected at most 2592000, got 99999999" },
        { "{\"nope\":1}", "nope: unknown key" },
        { "[]", "(root): expected an object, got an array" },
        { "{\"auth\":{\"keys\":{}}}", "auth.keys: expected an array, got an object" },
        { "{\"auth\":{\"audience\":\"\"}}",
          "auth.audience: expected a string of 1 to 1024 bytes, got 0" },
        { "{\"auth\":{\"issuer\":7}}", "auth.issuer: expected a string, got 7" },
        { "{\"auth\":{\"allow_anonymous\":\"true\"}}",
          "auth.allow_anonymous: expected true or false, got \"true\"" },
        { "{\"auth\":{\"users\":[]}}", "auth.users: unknown key" },
        { "{\"auth\":{\"jwks_file\":7}}", "auth.jwks_file: expected a string, got 7" },
        { "{\"auth\":{\"jwks_file\":\"\"}}",
          "auth.jwks_file: expected a string of 1 to 4096 bytes, got 0" },
        { "{\"auth\":{\"keys\":[{\"secret\":\"" SECRET32 "\"}]}}",
          "auth.keys[0].alg: missing (one of \"HS256\", \"HS384\", \"HS512\", \"RS256\", "
          "\"ES256\", \"RS384\", \"RS512\", \"PS256\", \"PS384\", \"PS512\", \"ES384\", "
          "\"ES512\", \"EdDSA\")" },
        { "{\"auth\":{\"keys\":[{\"alg\":\"none\"}]}}",
          "auth.keys[0].alg: expected one of \"HS256\", \"HS384\", \"HS512\", \"RS256\", "
          "\"ES256\", \"RS384\", \"RS512\", \"PS256\", \"PS384\", \"PS512\", \"ES384\", "
          "\"ES512\", \"EdDSA\", got \"none\"" },
        { "{\"auth\":{\"keys\":[{\"alg\":\"eddsa\"}]}}",
          "auth.keys[0].alg: expected one of \"HS256\", \"HS384\", \"HS512\", \"RS256\", "
          "\"ES256\", \"RS384\", \"RS512\", \"PS256\", \"PS384\", \"PS512\", \"ES384\", "
          "\"ES512\", \"EdDSA\", got \"eddsa\"" },
        { "{\"auth\":{\"keys\":[{\"alg\":\"PS256\",\"secret\":\"" SECRET32 "\"}]}}",
          "auth.keys[0].secret: not allowed with PS256 (use public_key_file)" },
        { "{\"auth\":{\"keys\":[{\"alg\":\"HS256\"}]}}",
          "auth.keys[0].secret: missing (required with HS256)" },
        { "{\"auth\":{\"keys\":[{\"alg\":\"HS256\",\"secret\":\"short\"}]}}",
          "auth.keys[0].secret: HS256 needs a secret of at least 32 bytes (RFC 7518 3.2), got 5" },
        { "{\"auth\":{\"keys\":[{\"alg\":\"HS512\",\"secret\":\"" SECRET32 "\"}]}}",
          "auth.keys[0].secret: HS512 needs a secret of at least 64 bytes (RFC 7518 3.2), got 32" },
        { "{\"auth\":{\"keys\":[{\"alg\":\"HS256\",\"secret\":5}]}}",
          "auth.keys[0].secret: expected a string, got 5" },
        { "{\"auth\":{\"keys\":[{\"alg\":\"HS256\",\"secret\":\"" SECRET32
          "\",\"public_key_file\":\"/k.pem\"}]}}",
          "auth.keys[0].public_key_file: not allowed with HS256 (use secret)" },
        { "{\"auth\":{\"keys\":[{\"alg\":\"RS256\",\"secret\":\"" SECRET32 "\"}]}}",
          "auth.keys[0].secret: not allowed with RS256 (use public_key_file)" },
        { "{\"auth\":{\"keys\":[{\"alg\":\"ES256\"}]}}",
          "auth.keys[0].public_key_file: missing (required with ES256)" },
        { "{\"auth\":{\"keys\":[{\"alg\":\"ES256\",\"public_key_file\":\"\"}]}}",
          "auth.keys[0].public_key_file: expected a string of 1 to 4096 bytes, got 0" },
        { "{\"auth\":{\"keys\":[{\"alg\":\"ES256\",\"public_key_file\":\"/a\",\"pem\":1}]}}",
          "auth.keys[0].pem: unknown key" },
        { "{\"auth\":{\"keys\":[{\"kid\":\"a\",\"alg\":\"ES256\",\"public_key_file\":\"/a\"},"
          "{\"kid\":\"a\",\"alg\":\"ES256\",\"public_key_file\":\"/b\"}]}}",
          "auth.keys[1].kid: keys[0] has the same alg and kid" },
        { "{\"auth\":{\"keys\":[{\"alg\":\"ES256\",\"public_key_file\":\"/a\"},"
          "{\"alg\":\"ES256\",\"public_key_file\":\"/b\"}]}}",
          "auth.keys[1].kid: keys[0] has the same alg and kid" },
        { "{\"auth\":{\"keys\":[5]}}", "auth.keys[0]: expected an object, got 5" },
        { "{\"origins\":\"*\"}", "origins: expected an array of strings, got \"*\"" },
        { "{\"trusted_proxies\":\"10.0.0.0/8\"}",
          "trusted_proxies: expected an array of strings, got \"10.0.0.0/8\"" },
        { "{\"trusted_proxies\":[\"10.0.0.0/8\",\"10.0.0.1/8\"]}",
          "trusted_proxies[1]: expected an IP address or a block such as \"10.0.0.0/8\", with no "
          "bits set past the prefix, got \"10.0.0.1/8\"" },
        { "{\"trusted_proxies\":[\"proxy.internal\"]}",
          "trusted_proxies[0]: expected an IP address or a block such as \"10.0.0.0/8\", with no "
          "bits set past the prefix, got \"proxy.internal\"" },
        { "{\"trusted_proxies\":[32]}",
          "trusted_proxies[0]: expected an IP address or a block such as \"10.0.0.0/8\", with no "
          "bits set past the prefix, got 32" },
        { "{\"origins\":[\"https://a.example\",\"https://b.example/\"]}",
          "origins[1]: expected \"*\" or scheme://host[:port] without a path, got "
          "\"https://b.example/\"" },
        { "{\"origins\":[\"ftp://a\"]}",
          "origins[0]: expected \"*\" or scheme://host[:port] without a path, got \"ftp://a\"" },
        { "{\"origins\":[1]}",
          "origins[0]: expected \"*\" or scheme://host[:port] without a path, got 1" },
        { "{\"origins\":[\"https://h:99999\"]}",
          "origins[0]: expected \"*\" or scheme://host[:port] without a path, got \"https://h:99999\"" },
        { "{\"origins\":[\"https://h:abc\"]}",
          "origins[0]: expected \"*\" or scheme://host[:port] without a path, got \"https://h:abc\"" },
        { "{\"origins\":[\"https://a_b.example\"]}",
          "origins[0]: expected \"*\" or scheme://host[:port] without a path, got \"https://a_b.example\"" },
        { "{\"origins\":[\"https://a:1:2\"]}",
          "origins[0]: expected \"*\" or scheme://host[:port] without a path, got \"https://a:1:2\"" },
        { "{\"origins\":[\"https://h:0\"]}",
          "origins[0]: expected \"*\" or scheme://host[:port] without a path, got \"https://h:0\"" },
        { "{\"api_key\":\"short\"}", "api_key: expected a string of 16 to 256 bytes, got 5" },
        { "{\"api_key\":\"0123456789abcdef 0\"}",
          "api_key: must be printable ASCII without spaces" },
        { "{\"api_key\":true}", "api_key: expected a string, got true" },
        { "{\"limits\":{\"publish_rate\":0}}",
          "limits.publish_rate: expected a number of messages per second above 0 and up to "
          "1000000, got 0" },
        { "{\"limits\":{\"publish_rate\":\"fast\"}}",
          "limits.publish_rate: expected a number of messages per second above 0 and up to "
          "1000000, got \"fast\"" },
        { "{\"limits\":{\"publish_burst\":0}}",
          "limits.publish_burst: expected an integer from 1 to 1000000, got 0" },
        { "{\"limits\":{\"max_subscriptions\":0}}",
          "limits.max_subscriptions: expected an integer from 1 to 1000000, got 0" },
        { "{\"limits\":{\"max_revocations\":0}}",
          "limits.max_revocations: expected an integer from 1 to 10000000, got 0" },
        { "{\"limits\":{\"max_message\":100}}",
          "limits.max_message: expected an integer from 256 to 67108864, got 100" },
        { "{\"limits\":{\"json_depth\":1}}",
          "limits.json_depth: expected an integer from 2 to 1000, got 1" },
        { "{\"limits\":{\"max_connections_per_ip\":-3}}",
          "limits.max_connections_per_ip: expected a non-negative integer, got -3" },
        { "{\"limits\":{\"handshake_rate_per_ip\":-1}}",
          "limits.handshake_rate_per_ip: expected a number of connections per second from 0 "
          "(off) up to 1000000, got -1" },
        { "{\"limits\":{\"handshake_burst_per_ip\":0}}",
          "limits.handshake_burst_per_ip: expected an integer from 1 to 1000000, got 0" },
        { "{\"limits\":{\"admission_rate\":\"fast\"}}",
          "limits.admission_rate: expected a number of upgrades per second from 0 (off) up to "
          "1000000, got \"fast\"" },
        { "{\"limits\":{\"admission_rate\":2000000}}",
          "limits.admission_rate: expected a number of upgrades per second from 0 (off) up to "
          "1000000, got 2000000" },
        { "{\"limits\":{\"ipv6_prefix\":16}}",
          "limits.ipv6_prefix: expected an integer from 32 to 128, got 16" },
        { "{\"limits\":{\"admission_burst\":0}}",
          "limits.admission_burst: expected an integer from 1 to 1000000, got 0" },
        { "{\"limits\":{\"max_client_memory\":-1}}",
          "limits.max_client_memory: expected a non-negative integer, got -1" },
        { "{\"limits\":{\"max_client_memory\":2251799813685248}}",
          "limits.max_client_memory: expected at most 1125899906842624, got 2251799813685248" },
        { "{\"limits\":{\"max_client_memory\":\"8G\"}}",
          "limits.max_client_memory: expected a non-negative integer, got \"8G\"" },
        { "{\"limits\":{\"max_history_memory\":-5}}",
          "limits.max_history_memory: expected a non-negative integer, got -5" },
        { "{\"limits\":{\"max_history_memory\":2251799813685248}}",
          "limits.max_history_memory: expected at most 1125899906842624, got 2251799813685248" },
        { "{\"limits\":{\"max_channels\":100000001}}",
          "limits.max_channels: expected at most 100000000, got 100000001" },
        { "{\"limits\":{\"max_channel\":4}}",
          "limits.max_channel: expected an integer from 8 to 255, got 4" },
        /* A longer name would not fit the broker's bound (WSH_BROKER_NAME_MAX). */
        { "{\"limits\":{\"max_channel\":256}}",
          "limits.max_channel: expected an integer from 8 to 255, got 256" },
        { "{\"limits\":{\"rate\":1}}", "limits.rate: unknown key" },
        { "{\"limits\":{\"unauthenticated\":{\"timeout_ms\":10}}}",
          "limits.unauthenticated.timeout_ms: expected an integer from 100 to 600000, got 10" },
        { "{\"limits\":{\"unauthenticated\":{\"bytes\":10}}}",
          "limits.unauthenticated.bytes: unknown key" },
        { "{\"limits\":{\"max_message\":1024,\"unauthenticated\":{\"max_message\":2048}}}",
          "limits.unauthenticated.max_message: 2048 is above limits.max_message (1024)" },
        { "{\"limits\":{\"unauthenticated\":{\"max_outbound\":\"x\"}}}",
          "limits.unauthenticated.max_outbound: expected an integer from 1024 to 67108864, got "
          "\"x\"" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        load_err(cases[i].in, cases[i].err);
}

static void test_config_long_values_cut_in_errors(void **state)
{
    (void)state;
    load_err("{\"namespaces\":{\"chat\":{\"history_size\":"
             "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}}}",
             "namespaces.chat.history_size: expected a non-negative integer, got "
             "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...");
}

static void test_config_syntax_errors(void **state)
{
    (void)state;
    struct wsh_hub_config cfg;
    char err[256];
    const char *bad = "{\n  \"limits\": {,}\n}";
    assert_int_equal(wsh_config_parse(bad, strlen(bad), &cfg, err, sizeof(err)), WSH_EINVAL);
    assert_true(strncmp(err, "line 2, column ", 15) == 0);
    const char *dup = "{\"api_key\":\"0123456789abcdef\",\"api_key\":\"0123456789abcdef\"}";
    assert_int_equal(wsh_config_parse(dup, strlen(dup), &cfg, err, sizeof(err)), WSH_EINVAL);
    assert_non_null(strstr(err, "duplicate"));
    assert_int_equal(wsh_config_parse("", 0, &cfg, err, sizeof(err)), WSH_EINVAL);
    /* err may be NULL; a tiny err is truncated, NUL-terminated. */
    assert_int_equal(wsh_config_parse("[", 1, &cfg, NULL, 0), WSH_EINVAL);
    char tiny[8];
    assert_int_equal(wsh_config_parse("{\"x\":1}", 7, &cfg, tiny, sizeof(tiny)), WSH_EINVAL);
    assert_int_equal(strlen(tiny), 7);
}

static void test_config_namespace_lookup(void **state)
{
    (void)state;
    struct wsh_hub_config cfg;
    load_ok(full_config, &cfg);
    assert_ptr_equal(wsh_config_namespace(&cfg, "lobby", 5), &cfg.default_ns);
    assert_ptr_equal(wsh_config_namespace(&cfg, "inbox#42", 8), &cfg.default_ns);
    const struct wsh_ns_config *ns = wsh_config_namespace(&cfg, "chat:lobby", 10);
    assert_non_null(ns);
    assert_string_equal(ns->name, "chat");
    ns = wsh_config_namespace(&cfg, "news:x", 6);
    assert_non_null(ns);
    assert_string_equal(ns->name, "news");
    ns = wsh_config_namespace(&cfg, "cursors:x#1", 11);
    assert_non_null(ns);
    assert_string_equal(ns->name, "cursors");
    assert_null(wsh_config_namespace(&cfg, "cha:x", 5));
    assert_null(wsh_config_namespace(&cfg, "chats:x", 7));
    assert_null(wsh_config_namespace(&cfg, "zzz:x", 5));
    assert_null(wsh_config_namespace(&cfg, "a:x", 3));
    /* The length bounds the search: "chat:lobby" cut to "chat" has no ':'. */
    assert_ptr_equal(wsh_config_namespace(&cfg, "chat:lobby", 4), &cfg.default_ns);
    wsh_config_free(&cfg);

    /* Many namespaces: every one is found. */
    char doc[65536];
    size_t n = (size_t)snprintf(doc, sizeof(doc), "{\"namespaces\":{");
    for (int i = 0; i < 300; i++)
        n += (size_t)snprintf(doc + n, sizeof(doc) - n, "%s\"ns%d\":{\"max_subscribers\":%d}",
                              i ? "," : "", (i * 7919) % 1000, i);
    snprintf(doc + n, sizeof(doc) - n, "}}");
    load_ok(doc, &cfg);
    assert_int_equal(cfg.nnamespaces, 300);
    for (int i = 0; i < 300; i++) {
        char ch[32];
        int k = snprintf(ch, sizeof(ch), "ns%d:room", (i * 7919) % 1000);
        ns = wsh_config_namespace(&cfg, ch, (size_t)k);
        assert_non_null(ns);
        assert_int_equal(ns->max_subscribers, i);
    }
    wsh_config_free(&cfg);
}

static void test_config_load_file(void **state)
{
    (void)state;
    char path[] = "/tmp/wsh_test_config_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    fputs(full_config, f);
    fclose(f);
    struct wsh_hub_config cfg;
    char err[256];
    assert_int_equal(wsh_config_load(path, &cfg, err, sizeof(err)), WSH_OK);
    assert_int_equal(cfg.nnamespaces, 3);
    wsh_config_free(&cfg);
    remove(path);
    assert_int_equal(wsh_config_load(path, &cfg, err, sizeof(err)), WSH_EINVAL);
    assert_non_null(strstr(err, "No such file"));
    assert_true(strncmp(err, path, strlen(path)) == 0);
}

static void test_config_too_large(void **state)
{
    (void)state;
    size_t n = WSH_CFG_MAX_FILE + 1;
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, ' ', n);
    struct wsh_hub_config cfg;
    char err[256];
    assert_int_equal(wsh_config_parse(big, n, &cfg, err, sizeof(err)), WSH_EINVAL);
    assert_string_equal(err, "(root): config is over 1048576 bytes");
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_defaults),
        cmocka_unit_test(test_config_unauth_message_follows_a_small_max_message),
        cmocka_unit_test(test_config_full_valid),
        cmocka_unit_test(test_config_invalid_fields),
        cmocka_unit_test(test_config_long_values_cut_in_errors),
        cmocka_unit_test(test_config_syntax_errors),
        cmocka_unit_test(test_config_namespace_lookup),
        cmocka_unit_test(test_config_load_file),
        cmocka_unit_test(test_config_too_large),
        cmocka_unit_test(test_config_array_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
