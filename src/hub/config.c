/* Hub configuration file (docs/config.md): a JSON document parsed with
 * jansson and validated field by field. Every error names the JSON path of
 * the field at fault, unknown keys included, so `--check-config` can say
 * exactly what to fix. */
#include "wshub/config.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wshub/auth.h"
#include "wshub/http.h"
#include "wshub/json.h"
#include "wshub/proto.h"

/* ------------------------------------------------------------------ */
/* Defaults                                                            */

static void ns_defaults(struct wsh_ns_config *ns)
{
    memset(ns, 0, sizeof(*ns));
    ns->history_size = WSH_CFG_DEFAULT_HISTORY_SIZE;
    ns->history_ttl_s = WSH_CFG_DEFAULT_HISTORY_TTL_S;
    ns->dedup_window_s = WSH_CFG_DEFAULT_DEDUP_WINDOW_S;
    ns->presence = true;
    ns->join_leave = false;
    ns->recover = true;
    ns->publish = WSH_PUBLISH_SUBSCRIBERS;
    ns->slow_consumer = WSH_SLOW_DISCONNECT;
    ns->max_subscribers = 0;
    ns->presence_count_threshold = WSH_CFG_DEFAULT_PRESENCE_THRESHOLD;
}

void wsh_config_defaults(struct wsh_hub_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    ns_defaults(&cfg->default_ns);
    cfg->auth.allow_anonymous = false;
    cfg->auth.jwks_refresh_s = WSH_CFG_DEFAULT_JWKS_REFRESH_S;
    struct wsh_limits_config *l = &cfg->limits;
    l->publish_rate = WSH_CFG_DEFAULT_PUBLISH_RATE;
    l->publish_burst = WSH_CFG_DEFAULT_PUBLISH_BURST;
    l->max_subscriptions = WSH_CFG_DEFAULT_MAX_SUBSCRIPTIONS;
    l->max_connections = WSH_CFG_DEFAULT_MAX_CONNS;
    l->max_connections_per_ip = WSH_CFG_DEFAULT_MAX_CONNS_PER_IP;
    l->handshake_rate_per_ip = WSH_CFG_DEFAULT_HANDSHAKE_RATE_IP;
    l->handshake_burst_per_ip = WSH_CFG_DEFAULT_HANDSHAKE_BURST_IP;
    l->ipv6_prefix = WSH_CFG_DEFAULT_IPV6_PREFIX;
    l->admission_rate = WSH_CFG_DEFAULT_ADMISSION_RATE;
    l->admission_burst = WSH_CFG_DEFAULT_ADMISSION_BURST;
    l->max_message = WSH_CFG_DEFAULT_MAX_MESSAGE;
    l->json_depth = WSH_CFG_DEFAULT_JSON_DEPTH;
    l->max_channel = WSH_CFG_DEFAULT_MAX_CHANNEL;
    l->unauth_max_message = WSH_CFG_DEFAULT_UNAUTH_MESSAGE;
    l->unauth_timeout_ms = WSH_CFG_DEFAULT_UNAUTH_TIMEOUT_MS;
    l->unauth_max_outbound = WSH_CFG_DEFAULT_UNAUTH_OUTBOUND;
    l->max_revocations = WSH_CFG_DEFAULT_MAX_REVOCATIONS;
    l->max_channels = WSH_CFG_DEFAULT_MAX_CHANNELS;
    l->max_history_memory = WSH_CFG_DEFAULT_MAX_HISTORY_MEMORY;
}

void wsh_config_free(struct wsh_hub_config *cfg)
{
    if (cfg == NULL)
        return;
    free(cfg->default_ns.name);
    for (size_t i = 0; i < cfg->nnamespaces; i++)
        free(cfg->namespaces[i].name);
    free(cfg->namespaces);
    for (size_t i = 0; i < cfg->auth.nkeys; i++) {
        struct wsh_key_config *k = &cfg->auth.keys[i];
        free(k->kid);
        if (k->secret != NULL) {
            /* Secrets do not linger in freed heap memory. */
            volatile char *p = k->secret;
            for (size_t j = 0; j < k->secret_len; j++)
                p[j] = 0;
        }
        free(k->secret);
        free(k->public_key_file);
    }
    free(cfg->auth.keys);
    free(cfg->auth.jwks_file);
    free(cfg->auth.jwks_url);
    free(cfg->auth.jwks_ca_file);
    free(cfg->auth.issuer);
    free(cfg->auth.audience);
    for (size_t i = 0; i < cfg->norigins; i++)
        free(cfg->origins[i]);
    free(cfg->origins);
    free(cfg->api_key);
    free(cfg->trusted_proxies);
    wsh_config_defaults(cfg);
}

static const char *const alg_names[] = { "HS256", "HS384", "HS512", "RS256", "ES256",
                                         "RS384", "RS512", "PS256", "PS384", "PS512",
                                         "ES384", "ES512", "EdDSA", NULL };

const char *wsh_config_alg_name(enum wsh_key_alg alg)
{
    if (alg < WSH_ALG_HS256 || alg > WSH_ALG_EDDSA)
        return "";
    return alg_names[alg - WSH_ALG_HS256];
}

/* ------------------------------------------------------------------ */
/* Path tracking and errors                                            */

struct ctx {
    char path[256];
    size_t plen;
    char *err;
    size_t errlen;
    int rc; /* WSH_EINVAL or WSH_ENOMEM once an error is set */
};

static size_t push_key(struct ctx *c, const char *key)
{
    size_t old = c->plen;
    int n = snprintf(c->path + c->plen, sizeof(c->path) - c->plen, "%s%s", old ? "." : "", key);
    if (n > 0)
        c->plen = c->plen + (size_t)n < sizeof(c->path) ? c->plen + (size_t)n : sizeof(c->path) - 1;
    return old;
}

static size_t push_index(struct ctx *c, size_t i)
{
    size_t old = c->plen;
    int n = snprintf(c->path + c->plen, sizeof(c->path) - c->plen, "[%zu]", i);
    if (n > 0)
        c->plen = c->plen + (size_t)n < sizeof(c->path) ? c->plen + (size_t)n : sizeof(c->path) - 1;
    return old;
}

static void pop(struct ctx *c, size_t old)
{
    c->plen = old;
    c->path[old] = '\0';
}

__attribute__((format(printf, 2, 3))) static bool error(struct ctx *c, const char *fmt, ...)
{
    if (c->rc != WSH_OK)
        return false;
    c->rc = WSH_EINVAL;
    if (c->err == NULL || c->errlen == 0)
        return false;
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    snprintf(c->err, c->errlen, "%s: %s", c->plen ? c->path : "(root)", why);
    return false;
}

static bool oom(struct ctx *c)
{
    if (c->rc == WSH_OK) {
        c->rc = WSH_ENOMEM;
        if (c->err != NULL && c->errlen > 0)
            snprintf(c->err, c->errlen, "%s: out of memory", c->plen ? c->path : "(root)");
    }
    return false;
}

/* A short rendering of a JSON value for "got ..." in messages: scalars as
 * JSON (long strings cut with "..."), containers by kind. */
static void describe(json_t *v, char *out, size_t n)
{
    if (json_is_object(v)) {
        snprintf(out, n, "an object");
        return;
    }
    if (json_is_array(v)) {
        snprintf(out, n, "an array");
        return;
    }
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    if (s == NULL) {
        snprintf(out, n, "a value");
        return;
    }
    if (strlen(s) > 40)
        snprintf(out, n, "%.37s...", s);
    else
        snprintf(out, n, "%s", s);
    free(s);
}

/* Every key of obj must be in `known` (NULL-terminated). */
static bool check_keys(struct ctx *c, json_t *obj, const char *const *known)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        bool ok = false;
        for (size_t i = 0; known[i] != NULL && !ok; i++)
            ok = strcmp(known[i], key) == 0;
        if (!ok) {
            size_t old = push_key(c, key);
            error(c, "unknown key");
            pop(c, old);
            return false;
        }
    }
    return true;
}

static bool want_object(struct ctx *c, json_t *v)
{
    if (json_is_object(v))
        return true;
    char got[64];
    describe(v, got, sizeof(got));
    return error(c, "expected an object, got %s", got);
}

/* An array of at most max elements. kind names what was expected ("an
 * array", "an array of strings"), noun the elements, in the errors. */
static bool want_array(struct ctx *c, json_t *v, const char *kind, unsigned max, const char *noun)
{
    if (!json_is_array(v)) {
        char got[64];
        describe(v, got, sizeof(got));
        return error(c, "expected %s, got %s", kind, got);
    }
    if (json_array_size(v) > max)
        return error(c, "more than %u %s", max, noun);
    return true;
}

/* ------------------------------------------------------------------ */
/* Typed getters: absent keys leave *out at its default                */

/* A rate up to 1,000,000 per second: above 0, or from 0 when zero_ok
 * (0 = off). `expect` names it in the error. */
static bool get_rate(struct ctx *c, json_t *obj, const char *key, bool zero_ok, const char *expect,
                     double *out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return true;
    size_t old = push_key(c, key);
    double x = json_is_number(v) ? json_number_value(v) : -1;
    if (!json_is_number(v) || x < 0 || (x == 0 && !zero_ok) || x > 1e6) {
        char got[64];
        describe(v, got, sizeof(got));
        return error(c, "expected %s, got %s", expect, got);
    }
    *out = x;
    pop(c, old);
    return true;
}

static bool get_int(struct ctx *c, json_t *obj, const char *key, json_int_t min, json_int_t max,
                    json_int_t *out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return true;
    size_t old = push_key(c, key);
    bool ok = json_is_integer(v) && json_integer_value(v) >= min && json_integer_value(v) <= max;
    if (ok) {
        *out = json_integer_value(v);
    } else {
        char got[64];
        describe(v, got, sizeof(got));
        if (min == 0 && json_is_integer(v) && json_integer_value(v) > max)
            error(c, "expected at most %lld, got %s", (long long)max, got);
        else if (min == 0)
            error(c, "expected a non-negative integer, got %s", got);
        else
            error(c, "expected an integer from %lld to %lld, got %s", (long long)min,
                  (long long)max, got);
    }
    pop(c, old);
    return ok;
}

static bool get_u32(struct ctx *c, json_t *obj, const char *key, uint32_t min, uint32_t max,
                    uint32_t *out)
{
    json_int_t v = *out;
    if (!get_int(c, obj, key, min, max, &v))
        return false;
    *out = (uint32_t)v;
    return true;
}

static bool get_bool(struct ctx *c, json_t *obj, const char *key, bool *out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return true;
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return true;
    }
    size_t old = push_key(c, key);
    char got[64];
    describe(v, got, sizeof(got));
    error(c, "expected true or false, got %s", got);
    pop(c, old);
    return false;
}

/* names is NULL-terminated; *out becomes the index of the match. */
static bool get_enum(struct ctx *c, json_t *obj, const char *key, const char *const *names,
                     int *out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return true;
    if (json_is_string(v)) {
        for (int i = 0; names[i] != NULL; i++) {
            if (strcmp(names[i], json_string_value(v)) == 0) {
                *out = i;
                return true;
            }
        }
    }
    char expect[128] = "";
    size_t n = 0;
    for (int i = 0; names[i] != NULL && n < sizeof(expect); i++) {
        int w = snprintf(expect + n, sizeof(expect) - n, "%s\"%s\"", i ? ", " : "", names[i]);
        n += w > 0 ? (size_t)w : 0;
    }
    size_t old = push_key(c, key);
    char got[64];
    describe(v, got, sizeof(got));
    error(c, "expected one of %s, got %s", expect, got);
    pop(c, old);
    return false;
}

/* A string of min..max bytes, printable ASCII (no control characters).
 * Returns true with *out NULL when absent. */
static bool get_string(struct ctx *c, json_t *obj, const char *key, size_t min, size_t max,
                       char **out)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (v == NULL)
        return true;
    size_t old = push_key(c, key);
    bool ok = false;
    if (!json_is_string(v)) {
        char got[64];
        describe(v, got, sizeof(got));
        error(c, "expected a string, got %s", got);
    } else if (json_string_length(v) < min || json_string_length(v) > max) {
        error(c, "expected a string of %zu to %zu bytes, got %zu", min, max, json_string_length(v));
    } else if (strlen(json_string_value(v)) != json_string_length(v)) {
        error(c, "must not contain NUL");
    } else if ((*out = strdup(json_string_value(v))) == NULL) {
        oom(c);
    } else {
        ok = true;
    }
    pop(c, old);
    return ok;
}

/* ------------------------------------------------------------------ */
/* Sections                                                            */

static const char *const ns_keys[] = { "history_size",
                                       "history_ttl_s",
                                       "dedup_window_s",
                                       "presence",
                                       "join_leave",
                                       "recover",
                                       "publish",
                                       "slow_consumer",
                                       "max_subscribers",
                                       "presence_count_threshold",
                                       NULL };
static const char *const publish_names[] = { "subscribers", "server", NULL };
static const char *const slow_names[] = { "disconnect", "drop_oldest", NULL };

static bool parse_ns(struct ctx *c, json_t *v, struct wsh_ns_config *ns)
{
    if (!want_object(c, v) || !check_keys(c, v, ns_keys))
        return false;
    int publish = (int)ns->publish, slow = (int)ns->slow_consumer;
    if (!get_u32(c, v, "history_size", 0, 1000000, &ns->history_size) ||
        !get_u32(c, v, "history_ttl_s", 0, 30u * 86400u, &ns->history_ttl_s) ||
        !get_u32(c, v, "dedup_window_s", 0, 86400, &ns->dedup_window_s) ||
        !get_bool(c, v, "presence", &ns->presence) ||
        !get_bool(c, v, "join_leave", &ns->join_leave) ||
        !get_bool(c, v, "recover", &ns->recover) ||
        !get_enum(c, v, "publish", publish_names, &publish) ||
        !get_enum(c, v, "slow_consumer", slow_names, &slow) ||
        !get_u32(c, v, "max_subscribers", 0, UINT32_MAX, &ns->max_subscribers) ||
        !get_u32(c, v, "presence_count_threshold", 0, 1000000, &ns->presence_count_threshold))
        return false;
    ns->publish = (enum wsh_publish_policy)publish;
    ns->slow_consumer = (enum wsh_slow_policy)slow;
    if (ns->recover && ns->history_size == 0) {
        size_t old = push_key(c, "recover");
        error(c, "recovery needs history: set history_size > 0 or recover to false");
        pop(c, old);
        return false;
    }
    return true;
}

static int ns_cmp(const void *a, const void *b)
{
    return strcmp(((const struct wsh_ns_config *)a)->name, ((const struct wsh_ns_config *)b)->name);
}

static bool parse_namespaces(struct ctx *c, json_t *v, struct wsh_hub_config *cfg)
{
    if (!want_object(c, v))
        return false;
    size_t n = json_object_size(v);
    if (n > WSH_CFG_MAX_NAMESPACES)
        return error(c, "more than %u namespaces", WSH_CFG_MAX_NAMESPACES);
    if (n == 0)
        return true;
    cfg->namespaces = calloc(n, sizeof(*cfg->namespaces));
    if (cfg->namespaces == NULL)
        return oom(c);
    const char *key;
    json_t *ns;
    json_object_foreach(v, key, ns)
    {
        size_t old = push_key(c, key);
        size_t klen = strlen(key);
        bool ok = klen > 0 && klen <= WSH_PROTO_MAX_NAMESPACE;
        for (size_t i = 0; ok && i < klen; i++) {
            unsigned char ch = (unsigned char)key[i];
            ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '_' || ch == '-';
        }
        if (!ok) {
            error(c, "invalid namespace name: 1 to %u characters of A-Z a-z 0-9 _ -",
                  WSH_PROTO_MAX_NAMESPACE);
            return false;
        }
        struct wsh_ns_config *dst = &cfg->namespaces[cfg->nnamespaces];
        ns_defaults(dst);
        if ((dst->name = strdup(key)) == NULL)
            return oom(c);
        cfg->nnamespaces++;
        if (!parse_ns(c, ns, dst))
            return false;
        pop(c, old);
    }
    qsort(cfg->namespaces, cfg->nnamespaces, sizeof(*cfg->namespaces), ns_cmp);
    return true;
}

static const char *const key_keys[] = { "kid", "alg", "secret", "public_key_file", NULL };

static bool parse_key(struct ctx *c, json_t *v, struct wsh_key_config *k)
{
    if (!want_object(c, v) || !check_keys(c, v, key_keys))
        return false;
    if (!get_string(c, v, "kid", 1, 128, &k->kid))
        return false;
    if (json_object_get(v, "alg") == NULL) {
        size_t old = push_key(c, "alg");
        error(c, "missing (one of \"HS256\", \"HS384\", \"HS512\", \"RS256\", \"ES256\", "
                 "\"RS384\", \"RS512\", \"PS256\", \"PS384\", \"PS512\", \"ES384\", "
                 "\"ES512\", \"EdDSA\")");
        pop(c, old);
        return false;
    }
    int alg = 0;
    if (!get_enum(c, v, "alg", alg_names, &alg))
        return false;
    k->alg = (enum wsh_key_alg)(alg + WSH_ALG_HS256);
    bool hs = k->alg <= WSH_ALG_HS512;
    const char *name = alg_names[alg];
    const char *own = hs ? "secret" : "public_key_file";
    const char *other = hs ? "public_key_file" : "secret";
    if (json_object_get(v, other) != NULL) {
        size_t old = push_key(c, other);
        error(c, "not allowed with %s (use %s)", name, own);
        pop(c, old);
        return false;
    }
    if (json_object_get(v, own) == NULL) {
        size_t old = push_key(c, own);
        error(c, "missing (required with %s)", name);
        pop(c, old);
        return false;
    }
    if (!hs)
        return get_string(c, v, own, 1, 4096, &k->public_key_file);
    /* RFC 7518 3.2: an HMAC key must be at least as long as the hash. */
    size_t min = k->alg == WSH_ALG_HS256 ? 32 : k->alg == WSH_ALG_HS384 ? 48 : 64;
    json_t *s = json_object_get(v, "secret");
    if (json_is_string(s) && json_string_length(s) < min) {
        size_t old = push_key(c, "secret");
        error(c, "%s needs a secret of at least %zu bytes (RFC 7518 3.2), got %zu", name, min,
              json_string_length(s));
        pop(c, old);
        return false;
    }
    if (!get_string(c, v, "secret", min, 4096, &k->secret))
        return false;
    k->secret_len = strlen(k->secret);
    return true;
}

static const char *const auth_keys[] = { "keys",         "jwks_file",      "jwks_url",
                                         "jwks_ca_file", "jwks_refresh_s", "allow_anonymous",
                                         "issuer",       "audience",       NULL };

static bool parse_auth(struct ctx *c, json_t *v, struct wsh_auth_config *a)
{
    if (!want_object(c, v) || !check_keys(c, v, auth_keys))
        return false;
    if (!get_bool(c, v, "allow_anonymous", &a->allow_anonymous) ||
        !get_string(c, v, "jwks_file", 1, 4096, &a->jwks_file) ||
        !get_string(c, v, "jwks_url", 1, 2048, &a->jwks_url) ||
        !get_string(c, v, "jwks_ca_file", 1, 4096, &a->jwks_ca_file) ||
        !get_u32(c, v, "jwks_refresh_s", 10, 86400, &a->jwks_refresh_s) ||
        !get_string(c, v, "issuer", 1, 1024, &a->issuer) ||
        !get_string(c, v, "audience", 1, 1024, &a->audience))
        return false;
    if (a->jwks_url != NULL) {
        struct wsh_http_url u;
        size_t old = push_key(c, "jwks_url");
        if (!wsh_http_url_parse(a->jwks_url, &u))
            return error(c, "expected an https:// URL, got \"%s\"", a->jwks_url);
        /* Keys fetched in clear text could be swapped on the way. */
        if (!u.tls && !u.loopback)
            return error(c, "http:// only to a loopback address (tests); use https://");
        if (a->jwks_file != NULL)
            return error(c, "not with jwks_file: keys come from one of the two");
        pop(c, old);
    } else if (a->jwks_ca_file != NULL) {
        push_key(c, "jwks_ca_file");
        return error(c, "only with jwks_url");
    }
    json_t *keys = json_object_get(v, "keys");
    if (keys == NULL)
        return true;
    size_t old = push_key(c, "keys");
    if (!want_array(c, keys, "an array", WSH_CFG_MAX_KEYS, "keys"))
        return false;
    size_t n = json_array_size(keys);
    if (n > 0 && (a->keys = calloc(n, sizeof(*a->keys))) == NULL)
        return oom(c);
    for (size_t i = 0; i < n; i++) {
        size_t o2 = push_index(c, i);
        struct wsh_key_config *k = &a->keys[i];
        a->nkeys++;
        if (!parse_key(c, json_array_get(keys, i), k))
            return false;
        /* A token is matched to a key by (alg, kid), so that pair must be
         * unique; a missing kid counts as one value. */
        for (size_t j = 0; j < i; j++) {
            const struct wsh_key_config *o = &a->keys[j];
            bool same =
                o->kid == NULL ? k->kid == NULL : k->kid != NULL && strcmp(o->kid, k->kid) == 0;
            if (o->alg == k->alg && same) {
                push_key(c, "kid");
                return error(c, "keys[%zu] has the same alg and kid", j);
            }
        }
        pop(c, o2);
    }
    pop(c, old);
    return true;
}

/* "*" or an RFC 6454 serialized origin a browser's page may have:
 * "http://" or "https://" host [":" port], without a path, that the
 * matcher (wsh_origin_allowed) can match. */
static bool origin_ok(const char *s)
{
    return strcmp(s, "*") == 0 ||
           ((strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0) &&
            wsh_origin_entry_valid(s));
}

static bool parse_origins(struct ctx *c, json_t *v, struct wsh_hub_config *cfg)
{
    if (!want_array(c, v, "an array of strings", WSH_CFG_MAX_ORIGINS, "origins"))
        return false;
    size_t n = json_array_size(v);
    if (n > 0 && (cfg->origins = calloc(n, sizeof(*cfg->origins))) == NULL)
        return oom(c);
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(v, i);
        size_t old = push_index(c, i);
        if (!json_is_string(o) || json_string_length(o) > 256 ||
            strlen(json_string_value(o)) != json_string_length(o) ||
            !origin_ok(json_string_value(o))) {
            char got[64];
            describe(o, got, sizeof(got));
            return error(c, "expected \"*\" or scheme://host[:port] without a path, got %s", got);
        }
        if ((cfg->origins[i] = strdup(json_string_value(o))) == NULL)
            return oom(c);
        cfg->norigins++;
        pop(c, old);
    }
    return true;
}

static bool parse_trusted_proxies(struct ctx *c, json_t *v, struct wsh_hub_config *cfg)
{
    if (!want_array(c, v, "an array of strings", WSH_CFG_MAX_TRUSTED_PROXIES, "address blocks"))
        return false;
    size_t n = json_array_size(v);
    if (n > 0 && (cfg->trusted_proxies = calloc(n, sizeof(*cfg->trusted_proxies))) == NULL)
        return oom(c);
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(v, i);
        size_t old = push_index(c, i);
        if (!json_is_string(o) || !wsh_cidr_parse(json_string_value(o), json_string_length(o),
                                                  &cfg->trusted_proxies[i])) {
            char got[64];
            describe(o, got, sizeof(got));
            return error(c,
                         "expected an IP address or a block such as \"10.0.0.0/8\", with no "
                         "bits set past the prefix, got %s",
                         got);
        }
        cfg->ntrusted_proxies++;
        pop(c, old);
    }
    return true;
}

static const char *const limit_keys[] = { "publish_rate",
                                          "publish_burst",
                                          "max_subscriptions",
                                          "max_connections",
                                          "max_connections_per_ip",
                                          "handshake_rate_per_ip",
                                          "handshake_burst_per_ip",
                                          "ipv6_prefix",
                                          "admission_rate",
                                          "admission_burst",
                                          "max_client_memory",
                                          "max_message",
                                          "json_depth",
                                          "max_channel",
                                          "max_revocations",
                                          "max_channels",
                                          "max_history_memory",
                                          "unauthenticated",
                                          NULL };
static const char *const unauth_keys[] = { "max_message", "timeout_ms", "max_outbound", NULL };

/* Bytes, up to 2^50 (a petabyte): a bound any machine's memory is under. */
static bool get_memory(struct ctx *c, json_t *v, const char *key, uint64_t *out)
{
    json_int_t n = (json_int_t)*out;
    if (!get_int(c, v, key, 0, (json_int_t)1 << 50, &n))
        return false;
    *out = (uint64_t)n;
    return true;
}

static bool parse_limits(struct ctx *c, json_t *v, struct wsh_limits_config *l)
{
    if (!want_object(c, v) || !check_keys(c, v, limit_keys))
        return false;
    if (!get_rate(c, v, "publish_rate", false,
                  "a number of messages per second above 0 and up to 1000000", &l->publish_rate) ||
        !get_rate(c, v, "handshake_rate_per_ip", true,
                  "a number of connections per second from 0 (off) up to 1000000",
                  &l->handshake_rate_per_ip) ||
        !get_rate(c, v, "admission_rate", true,
                  "a number of upgrades per second from 0 (off) up to 1000000", &l->admission_rate))
        return false;
    if (!get_u32(c, v, "publish_burst", 1, 1000000, &l->publish_burst) ||
        !get_u32(c, v, "max_subscriptions", 1, 1000000, &l->max_subscriptions) ||
        !get_u32(c, v, "max_connections", 0, 10000000, &l->max_connections) ||
        !get_u32(c, v, "max_connections_per_ip", 0, 10000000, &l->max_connections_per_ip) ||
        !get_u32(c, v, "handshake_burst_per_ip", 1, 1000000, &l->handshake_burst_per_ip) ||
        !get_u32(c, v, "ipv6_prefix", 32, 128, &l->ipv6_prefix) ||
        !get_u32(c, v, "admission_burst", 1, 1000000, &l->admission_burst) ||
        !get_memory(c, v, "max_client_memory", &l->max_client_memory) ||
        !get_memory(c, v, "max_history_memory", &l->max_history_memory) ||
        !get_u32(c, v, "max_message", 256, WSH_CFG_MAX_MESSAGE_CEIL, &l->max_message) ||
        !get_u32(c, v, "json_depth", 2, 1000, &l->json_depth) ||
        !get_u32(c, v, "max_channel", 8, WSH_CFG_MAX_CHANNEL_CEIL, &l->max_channel) ||
        !get_u32(c, v, "max_revocations", 1, 10000000, &l->max_revocations) ||
        !get_u32(c, v, "max_channels", 0, 100000000, &l->max_channels))
        return false;
    json_t *u = json_object_get(v, "unauthenticated");
    /* Its default follows a max_message set below it; a value given
     * above it is refused below. */
    if (u == NULL || json_object_get(u, "max_message") == NULL)
        l->unauth_max_message =
            l->unauth_max_message < l->max_message ? l->unauth_max_message : l->max_message;
    if (u != NULL) {
        size_t old = push_key(c, "unauthenticated");
        if (!want_object(c, u) || !check_keys(c, u, unauth_keys) ||
            !get_u32(c, u, "max_message", 256, WSH_CFG_MAX_MESSAGE_CEIL, &l->unauth_max_message) ||
            !get_u32(c, u, "timeout_ms", 100, 600000, &l->unauth_timeout_ms) ||
            !get_u32(c, u, "max_outbound", 1024, 64u * 1024u * 1024u, &l->unauth_max_outbound))
            return false;
        pop(c, old);
    }
    if (l->unauth_max_message > l->max_message) {
        size_t old = push_key(c, "unauthenticated");
        push_key(c, "max_message");
        error(c, "%u is above limits.max_message (%u)", (unsigned)l->unauth_max_message,
              (unsigned)l->max_message);
        pop(c, old);
        return false;
    }
    return true;
}

static const char *const top_keys[] = { "default_namespace", "namespaces", "auth",
                                        "origins",           "api_key",    "limits",
                                        "trusted_proxies",   NULL };

static bool parse_root(struct ctx *c, json_t *root, struct wsh_hub_config *cfg)
{
    if (!want_object(c, root) || !check_keys(c, root, top_keys))
        return false;
    json_t *v;
    size_t old;
    if ((v = json_object_get(root, "default_namespace")) != NULL) {
        old = push_key(c, "default_namespace");
        if (!parse_ns(c, v, &cfg->default_ns))
            return false;
        pop(c, old);
    }
    if ((v = json_object_get(root, "namespaces")) != NULL) {
        old = push_key(c, "namespaces");
        if (!parse_namespaces(c, v, cfg))
            return false;
        pop(c, old);
    }
    if ((v = json_object_get(root, "auth")) != NULL) {
        old = push_key(c, "auth");
        if (!parse_auth(c, v, &cfg->auth))
            return false;
        pop(c, old);
    }
    if ((v = json_object_get(root, "origins")) != NULL) {
        old = push_key(c, "origins");
        if (!parse_origins(c, v, cfg))
            return false;
        pop(c, old);
    }
    if (!get_string(c, root, "api_key", 16, 256, &cfg->api_key))
        return false;
    if (cfg->api_key != NULL) {
        for (const char *p = cfg->api_key; *p != '\0'; p++) {
            if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) {
                old = push_key(c, "api_key");
                error(c, "must be printable ASCII without spaces");
                pop(c, old);
                return false;
            }
        }
    }
    if ((v = json_object_get(root, "limits")) != NULL) {
        old = push_key(c, "limits");
        if (!parse_limits(c, v, &cfg->limits))
            return false;
        pop(c, old);
    }
    if ((v = json_object_get(root, "trusted_proxies")) != NULL) {
        old = push_key(c, "trusted_proxies");
        if (!parse_trusted_proxies(c, v, cfg))
            return false;
        pop(c, old);
    }
    return true;
}

int wsh_config_parse(const char *text, size_t len, struct wsh_hub_config *out, char *err,
                     size_t errlen)
{
    struct ctx c = { .err = err, .errlen = errlen, .rc = WSH_OK };
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (text == NULL && len != 0)
        return WSH_EINVAL;
    if (len > WSH_CFG_MAX_FILE) {
        error(&c, "config is over %u bytes", WSH_CFG_MAX_FILE);
        return c.rc;
    }
    json_error_t jerr;
    /* Duplicate keys are errors: the second would silently win otherwise. */
    bool nomem;
    json_t *root = wsh_json_loadb(text ? text : "", len, JSON_REJECT_DUPLICATES, &jerr, &nomem);
    if (root == NULL) {
        if (nomem)
            return oom(&c), c.rc;
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
        return WSH_EINVAL;
    }
    struct wsh_hub_config cfg;
    wsh_config_defaults(&cfg);
    bool ok = parse_root(&c, root, &cfg);
    json_decref(root);
    if (!ok) {
        wsh_config_free(&cfg);
        return c.rc != WSH_OK ? c.rc : WSH_EINVAL;
    }
    *out = cfg;
    return WSH_OK;
}

/* The file could not be opened or read (errno e): stdio allocates, and
 * ENOMEM is the server's want of memory, not the file's fault. */
static int file_error(const char *path, int e, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s: %s", path, e == ENOMEM ? "out of memory" : strerror(e));
    return e == ENOMEM ? WSH_ENOMEM : WSH_EINVAL;
}

int wsh_config_load(const char *path, struct wsh_hub_config *out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return file_error(path, errno, err, errlen);
    size_t cap = WSH_CFG_MAX_FILE + 1;
    char *buf = malloc(cap);
    if (buf == NULL) {
        fclose(f);
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "out of memory");
        return WSH_ENOMEM;
    }
    size_t len = fread(buf, 1, cap, f);
    bool bad = ferror(f) != 0;
    int e = errno;
    fclose(f);
    int rc;
    if (bad) {
        rc = file_error(path, e, err, errlen);
    } else if (len > WSH_CFG_MAX_FILE) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s: over %u bytes", path, WSH_CFG_MAX_FILE);
        rc = WSH_EINVAL;
    } else {
        rc = wsh_config_parse(buf, len, out, err, errlen);
    }
    free(buf);
    return rc;
}

const struct wsh_ns_config *wsh_config_namespace(const struct wsh_hub_config *cfg,
                                                 const char *channel, size_t len)
{
    const char *colon = channel ? memchr(channel, ':', len) : NULL;
    if (colon == NULL)
        return &cfg->default_ns;
    size_t n = (size_t)(colon - channel);
    size_t lo = 0, hi = cfg->nnamespaces;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *name = cfg->namespaces[mid].name;
        size_t nl = strlen(name);
        int r = memcmp(name, channel, nl < n ? nl : n);
        if (r == 0)
            r = nl < n ? -1 : nl > n ? 1 : 0;
        if (r == 0)
            return &cfg->namespaces[mid];
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}
