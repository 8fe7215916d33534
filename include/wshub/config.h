/* wshub hub configuration: the JSON file given with --config (docs/config.md).
 *
 * Loading validates every field and reports the first error with the JSON
 * path of the field and the reason, for example
 *   namespaces.chat.history_size: expected a non-negative integer, got "ten"
 * Unknown keys are errors. Absent keys take the defaults of LIMITS.md
 * (WSH_CFG_DEFAULT_* below). The loaded struct is plain data: it owns its
 * strings and arrays, and wsh_config_free releases them. */
#ifndef WSHUB_CONFIG_H
#define WSHUB_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"
#include "status.h"

/* Defaults (LIMITS.md, DESIGN.md 5). */
#define WSH_CFG_DEFAULT_HISTORY_SIZE       100u
#define WSH_CFG_DEFAULT_HISTORY_TTL_S      300u
#define WSH_CFG_DEFAULT_DEDUP_WINDOW_S     120u
#define WSH_CFG_DEFAULT_PRESENCE_THRESHOLD 1000u
#define WSH_CFG_DEFAULT_PUBLISH_RATE       20.0
#define WSH_CFG_DEFAULT_PUBLISH_BURST      40u
#define WSH_CFG_DEFAULT_MAX_SUBSCRIPTIONS  128u
#define WSH_CFG_DEFAULT_MAX_REVOCATIONS    65536u
#define WSH_CFG_DEFAULT_MAX_CHANNELS       1000000u /* channel states: ~300 MB of them at most */
#define WSH_CFG_DEFAULT_MAX_HISTORY_MEMORY (256ull << 20) /* nchan's message store: 128 MiB */
#define WSH_CFG_DEFAULT_MAX_CONNS          0u             /* 0: RLIMIT_NOFILE - 64 */
#define WSH_CFG_DEFAULT_MAX_CONNS_PER_IP   256u
#define WSH_CFG_DEFAULT_HANDSHAKE_RATE_IP  0.0 /* off: NAT puts many users behind one */
#define WSH_CFG_DEFAULT_HANDSHAKE_BURST_IP 100u
#define WSH_CFG_DEFAULT_IPV6_PREFIX        64u /* one user commonly holds a /64 */
#define WSH_CFG_DEFAULT_ADMISSION_RATE     0.0 /* off: a server's capacity is its operator's to say */
#define WSH_CFG_DEFAULT_ADMISSION_BURST    1000u
#define WSH_CFG_DEFAULT_MAX_MESSAGE        65536u
#define WSH_CFG_MAX_MESSAGE_CEIL           (64u * 1024u * 1024u) /* the most it may be */
#define WSH_CFG_DEFAULT_JSON_DEPTH         32u
#define WSH_CFG_DEFAULT_MAX_CHANNEL        128u
#define WSH_CFG_MAX_CHANNEL_CEIL           255u /* the broker's bound on a name */
#define WSH_CFG_DEFAULT_UNAUTH_MESSAGE     4096u
#define WSH_CFG_DEFAULT_UNAUTH_TIMEOUT_MS  5000u
#define WSH_CFG_DEFAULT_UNAUTH_OUTBOUND    16384u
#define WSH_CFG_MAX_FILE                   (1024u * 1024u) /* config file bytes */
#define WSH_CFG_MAX_NAMESPACES             1024u
#define WSH_CFG_MAX_KEYS                   16u /* WSH_AUTH_KEYS_MAX */
#define WSH_CFG_DEFAULT_JWKS_REFRESH_S     300u
#define WSH_CFG_MAX_ORIGINS                256u
#define WSH_CFG_MAX_TRUSTED_PROXIES        256u

enum wsh_publish_policy {
    WSH_PUBLISH_SUBSCRIBERS = 0, /* any subscriber whose token allows it */
    WSH_PUBLISH_SERVER           /* only the HTTP API (server side) */
};

enum wsh_slow_policy {
    WSH_SLOW_DISCONNECT = 0, /* close 4101 */
    WSH_SLOW_DROP_OLDEST     /* drop the oldest queued messages, send `lagged` */
};

/* Options of one namespace (DESIGN.md 3). */
struct wsh_ns_config {
    char *name;              /* owned; NULL for the default namespace */
    uint32_t history_size;   /* messages kept per channel; 0 = no history */
    uint32_t history_ttl_s;  /* seconds a message stays in history; 0 = no TTL */
    uint32_t dedup_window_s; /* msg_id de-duplication window */
    bool presence;           /* presence list and count */
    bool join_leave;         /* join/leave pushes */
    bool recover;            /* subscribe with recover:{offset,epoch}; needs history */
    enum wsh_publish_policy publish;
    enum wsh_slow_policy slow_consumer;
    uint32_t max_subscribers;          /* per channel; 0 = unlimited */
    uint32_t presence_count_threshold; /* above it presence answers a count only */
};

/* Same numbers as enum wsh_auth_alg (auth.h). */
/* The same values as enum wsh_auth_alg (auth.h), in the same order. */
enum wsh_key_alg {
    WSH_ALG_HS256 = 1,
    WSH_ALG_HS384,
    WSH_ALG_HS512,
    WSH_ALG_RS256,
    WSH_ALG_ES256,
    WSH_ALG_RS384,
    WSH_ALG_RS512,
    WSH_ALG_PS256,
    WSH_ALG_PS384,
    WSH_ALG_PS512,
    WSH_ALG_ES384,
    WSH_ALG_ES512,
    WSH_ALG_EDDSA
};

/* One token verification key. HS keys carry the secret; RS/ES keys name a
 * PEM public key file, which the auth module reads (this module does not). */
struct wsh_key_config {
    char *kid; /* matched against the JWT `kid` header; NULL: tokens without one */
    enum wsh_key_alg alg;
    char *secret; /* HS*: owned, secret_len bytes (NUL-terminated too) */
    size_t secret_len;
    char *public_key_file; /* RS256/ES256: owned path */
};

struct wsh_auth_config {
    struct wsh_key_config *keys; /* owned array */
    size_t nkeys;
    char *jwks_file;    /* owned path of a JWK Set (RFC 7517 5) read beside keys; NULL: none */
    char *jwks_url;     /* owned https:// URL of a JWK Set, fetched and refreshed; NULL: none */
    char *jwks_ca_file; /* owned CA bundle for jwks_url; NULL: the system's */
    uint32_t jwks_refresh_s; /* seconds between fetches of jwks_url */
    char *issuer;            /* owned; the `iss` every token must have; NULL: not checked */
    char *audience;          /* owned; a value `aud` must hold; NULL: not checked */
    bool allow_anonymous;    /* connect without a token (user "") */
};

struct wsh_limits_config {
    double publish_rate;             /* tokens per second per connection (publish + signal) */
    uint32_t publish_burst;          /* bucket size */
    uint32_t max_subscriptions;      /* per connection */
    uint32_t max_connections;        /* total; 0 = RLIMIT_NOFILE - 64 */
    uint32_t max_connections_per_ip; /* 0 = unlimited */
    double handshake_rate_per_ip;    /* new connections per second per address, 0 = off */
    uint32_t handshake_burst_per_ip; /* its bucket size */
    uint32_t ipv6_prefix;            /* bits of an IPv6 address counted as one client */
    double admission_rate;           /* WebSocket upgrades per second, server-wide, 0 = off */
    uint32_t admission_burst;        /* its bucket size */
    uint64_t max_client_memory;      /* bytes of all client buffers together, 0 = off */
    uint32_t max_message;            /* bytes of one client message */
    uint32_t json_depth;             /* nesting of one client message */
    uint32_t max_channel;            /* bytes of a channel name */
    uint32_t unauth_max_message;     /* bytes of the one message before connect */
    uint32_t unauth_timeout_ms;      /* time allowed to authenticate */
    uint32_t unauth_max_outbound;    /* bytes queued to an unauthenticated client */
    uint32_t max_revocations;        /* live users and token ids refused (api/disconnect) */
    uint32_t max_channels;           /* channel states in the broker, 0 = unbounded */
    uint64_t max_history_memory;     /* bytes of history over all channels, 0 = unbounded */
};

struct wsh_hub_config {
    struct wsh_ns_config default_ns;  /* channels without a namespace prefix */
    struct wsh_ns_config *namespaces; /* owned array */
    size_t nnamespaces;
    struct wsh_auth_config auth;
    char **origins; /* owned allow-list of "scheme://host[:port]" or "*" */
    size_t norigins;
    char *api_key; /* owned; NULL: the HTTP API is disabled */
    struct wsh_limits_config limits;
    struct wsh_cidr *trusted_proxies; /* owned; peers whose X-Forwarded-For is read */
    size_t ntrusted_proxies;
};

/* Fills *cfg with the defaults (no namespaces, no keys, no origins, no
 * API key). Nothing to free, but wsh_config_free is harmless. */
void wsh_config_defaults(struct wsh_hub_config *cfg);

/* Parses a config document from text[0..len). On success *out is filled
 * (owned by the caller: wsh_config_free). On failure *out is untouched and
 * err holds "<path>: <reason>" (NUL-terminated, truncated to errlen).
 * Returns WSH_OK, WSH_EINVAL (invalid document; see err) or WSH_ENOMEM. */
WSH_NODISCARD int wsh_config_parse(const char *text, size_t len, struct wsh_hub_config *out,
                                   char *err, size_t errlen);

/* Reads the file at path (at most WSH_CFG_MAX_FILE bytes) and parses it as
 * wsh_config_parse does. A file that cannot be read gives WSH_EINVAL with
 * "<path>: <strerror>" in err. */
WSH_NODISCARD int wsh_config_load(const char *path, struct wsh_hub_config *out, char *err,
                                  size_t errlen);

/* Returns the namespace options for a channel name: the namespace named by
 * the prefix before ':', default_ns when there is no ':', or NULL when the
 * prefix names no configured namespace (reply error 4001). The result is
 * borrowed until wsh_config_free. */
const struct wsh_ns_config *wsh_config_namespace(const struct wsh_hub_config *cfg,
                                                 const char *channel, size_t len);

/* Returns "HS256" etc. */
const char *wsh_config_alg_name(enum wsh_key_alg alg);

/* Releases everything *cfg owns and resets it to the defaults. */
void wsh_config_free(struct wsh_hub_config *cfg);

#endif
