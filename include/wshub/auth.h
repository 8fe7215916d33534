/* wshub authentication and authorisation helpers (DESIGN.md 5, docs/auth.md).
 *
 * Sans-I/O: no sockets, no threads, no logging; the clock comes in as an
 * argument (milliseconds since the Unix epoch). JWT signatures are checked
 * with OpenSSL against keys parsed once, at wsh_auth_create(); the header
 * `alg` only selects among the keys configured with exactly that
 * algorithm and never decides how a signature is checked (docs/auth.md).
 *
 * Nothing here is thread-safe: use one struct wsh_auth per worker, or lock
 * around it. Every function may be called from any callback. */
#ifndef WSHUB_AUTH_H
#define WSHUB_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* ------------------------------------------------------------------ */
/* Bounds                                                              */

#define WSH_AUTH_DEFAULT_TOKEN_MAX 8192u      /* bytes of a compact JWS */
#define WSH_AUTH_DEFAULT_LEEWAY_MS 5000u      /* clock skew allowed for exp/nbf/iat */
#define WSH_AUTH_LEEWAY_NONE       UINT32_MAX /* leeway_ms value meaning "0 ms" */
#define WSH_AUTH_DEFAULT_DENY_MAX  4096u      /* entries in the jti deny list */
#define WSH_AUTH_KEYS_MAX          16u        /* configured keys */
#define WSH_AUTH_KEY_MAX           65536u     /* bytes of one secret or PEM */
#define WSH_AUTH_SUB_MAX           128u       /* bytes of `sub` */
#define WSH_AUTH_JTI_MAX           128u       /* bytes of `jti` */
#define WSH_AUTH_PATTERN_MAX       128u       /* bytes of one channel pattern */
#define WSH_AUTH_PATTERNS_MAX      64u        /* patterns in `channels` and in `publish`, each */
#define WSH_AUTH_INFO_MAX          2048u      /* bytes of `info` as compact JSON */
#define WSH_AUTH_ORIGIN_MAX        512u       /* bytes of an Origin value */

/* Application close codes (LIMITS.md). */
#define WSH_CLOSE_TOKEN_EXPIRED 4100 /* reconnect allowed with a fresh token */
#define WSH_CLOSE_RATE_LIMITED  4103 /* reconnect allowed after the delay given */
#define WSH_CLOSE_FORBIDDEN     4500 /* terminal: do not reconnect */

/* ------------------------------------------------------------------ */
/* Key set                                                             */

enum wsh_auth_alg {
    WSH_AUTH_ALG_INVALID = 0,
    WSH_AUTH_HS256 = 1, /* shared secret, >= 32 bytes */
    WSH_AUTH_HS384 = 2, /* shared secret, >= 48 bytes */
    WSH_AUTH_HS512 = 3, /* shared secret, >= 64 bytes */
    WSH_AUTH_RS256 = 4, /* RSA public key (PEM, SubjectPublicKeyInfo), >= 2048 bits */
    WSH_AUTH_ES256 = 5, /* EC P-256 public key (PEM, SubjectPublicKeyInfo) */
    WSH_AUTH_RS384 = 6, /* RSA, as RS256 */
    WSH_AUTH_RS512 = 7,
    WSH_AUTH_PS256 = 8, /* RSA-PSS signatures (RFC 7518 3.5) with an RSA key, >= 2048 bits */
    WSH_AUTH_PS384 = 9,
    WSH_AUTH_PS512 = 10,
    WSH_AUTH_ES384 = 11, /* EC P-384 public key */
    WSH_AUTH_ES512 = 12, /* EC P-521 public key */
    WSH_AUTH_EDDSA = 13  /* Ed25519 or Ed448 public key (RFC 8037) */
};

/* How wsh_auth_key.key is written. */
enum wsh_auth_key_form {
    WSH_AUTH_KEY_RAW = 0, /* HS*: the secret's bytes; the others: a PEM public key */
    WSH_AUTH_KEY_JWK = 1  /* one JWK (RFC 7517 4, RFC 7518 6, RFC 8037 2) as JSON text */
};

struct wsh_auth_key {
    enum wsh_auth_alg alg; /* fixed: a token must name exactly this alg */
    /* Optional key id. A token whose header has `kid` is checked only with
     * keys of its alg that have that kid; a token without `kid` is tried
     * with every key of its alg (key rotation). */
    const char *kid;
    const uint8_t *key; /* secret bytes, PEM text or JWK text (NUL not required) */
    size_t key_len;
    enum wsh_auth_key_form form;
};

/* Zero fields take the documented default. */
struct wsh_auth_opts {
    const struct wsh_auth_key *keys; /* copied by wsh_auth_create() */
    size_t nkeys;                    /* 1..WSH_AUTH_KEYS_MAX */
    bool exp_optional;               /* false (default): tokens without `exp` are rejected */
    uint32_t leeway_ms; /* default WSH_AUTH_DEFAULT_LEEWAY_MS; WSH_AUTH_LEEWAY_NONE = 0 */
    size_t max_token;   /* default WSH_AUTH_DEFAULT_TOKEN_MAX */
    size_t max_deny;    /* default WSH_AUTH_DEFAULT_DENY_MAX */
    /* RFC 7519 4.1.1 and 4.1.3, copied by wsh_auth_create(). With issuer,
     * a token's `iss` must be exactly it; with audience, its `aud` must be
     * it or an array holding it. NULL: not checked. A key set shared by
     * many applications (an identity provider's JWKS) signs tokens for all
     * of them: these say which are for this one. */
    const char *issuer;
    const char *audience;
};

struct wsh_auth;

/* Maps "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256",
 * "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA" (exact case) to the enum;
 * anything else, "none" included, gives WSH_AUTH_ALG_INVALID. For config.c. */
enum wsh_auth_alg wsh_auth_alg_parse(const char *name);

/* Returns the JOSE name of alg, or "invalid". Static storage. */
const char *wsh_auth_alg_name(enum wsh_auth_alg alg);

/* Creates a key set. Every key is copied and checked now, in whichever
 * form it comes: an HS secret shorter than its hash output (RFC 7518 3.2)
 * or that looks like a PEM block, a PEM or JWK that is not a public key of
 * the algorithm's type, an RSA key under 2048 bits, an EC key not on the
 * algorithm's curve, or a duplicate (alg, kid) pair are refused.
 *
 * Returns WSH_OK and sets *out, or:
 *   WSH_EINVAL  bad options; *bad_key (if not NULL) is the index of the
 *               first bad key, or -1 when the problem is not one key.
 *   WSH_ENOMEM  out of memory.
 * *out is untouched on failure. Free with wsh_auth_destroy(). */
WSH_NODISCARD int wsh_auth_create(const struct wsh_auth_opts *o, struct wsh_auth **out,
                                  int *bad_key);

/* Frees the key set (secrets are cleansed first) and its deny list. NULL is
 * a no-op. */
void wsh_auth_destroy(struct wsh_auth *a);

/* Checks one key as wsh_auth_create() does. Returns NULL when it is usable
 * for its alg, or why not, as a short phrase in static storage ("RSA key
 * under 2048 bits", "not a PEM public key", ...), for error messages. */
const char *wsh_auth_key_problem(const struct wsh_auth_key *k);

/* ------------------------------------------------------------------ */
/* JWK Sets (RFC 7517 5), the form identity providers publish keys in  */

#define WSH_AUTH_JWKS_MAX 262144u /* bytes of a JWK Set document */

/* A JWK Set read into keys for struct wsh_auth_opts. Owned by the caller:
 * wsh_jwks_free(). */
struct wsh_jwks {
    struct wsh_auth_key *keys; /* form WSH_AUTH_KEY_JWK, each one checked as
                                * wsh_auth_create() checks it */
    size_t nkeys;              /* 0..WSH_AUTH_KEYS_MAX */
    size_t nskipped;           /* keys ignored (RFC 7517 5); on_skip says why */
    void *_mem;
};

/* Told about each key that is ignored: its index in "keys", its kid (NULL
 * when it has none) and why, as a short phrase in static storage. */
typedef void (*wsh_jwks_skip_fn)(void *ud, size_t index, const char *kid, const char *why);

/* Parses a JWK Set document text[0..len). As RFC 7517 5 asks, a key that
 * is not understood is ignored and reported to on_skip (which may be
 * NULL): an unknown "kty" or "alg", "use" other than "sig", "key_ops"
 * without "verify", a missing or malformed member, a key
 * wsh_auth_create() would refuse (RSA under 2048 bits, a point off its
 * curve, a short secret), or a second key with the same (alg, kid).
 * Without "alg", RSA keys are taken as RS256, EC keys by their curve
 * (ES256, ES384, ES512) and OKP keys as EdDSA; an "oct" key needs "alg".
 *
 * The whole document is refused (WSH_EINVAL, with the reason in err) when
 * it is over WSH_AUTH_JWKS_MAX bytes, is not a JSON object with a "keys"
 * array, has duplicate member names, holds private key material ("d",
 * "p", ...: a JWKS is public, and a private key in one is a leak to stop,
 * not to skip), or has more than WSH_AUTH_KEYS_MAX usable keys.
 * Returns WSH_OK, WSH_EINVAL or WSH_ENOMEM; *out is untouched on failure.
 * A set with no usable key is WSH_OK with nkeys == 0. */
WSH_NODISCARD int wsh_jwks_parse(const char *text, size_t len, wsh_jwks_skip_fn on_skip, void *ud,
                                 struct wsh_jwks *out, char *err, size_t errlen);

/* Frees what wsh_jwks_parse() stored (secrets cleansed) and zeroes *j.
 * Safe on a zeroed struct. */
void wsh_jwks_free(struct wsh_jwks *j);

/* ------------------------------------------------------------------ */
/* Token verification                                                  */

/* Why a token was refused. The numbers and names are stable: they appear
 * in protocol error replies and in metrics. */
enum wsh_auth_error {
    WSH_AUTH_OK = 0,
    WSH_AUTH_EFORMAT = 1,         /* "token_malformed": not header.payload.signature in
                                   * strict base64url, header/payload not JSON objects,
                                   * or a `crit` header */
    WSH_AUTH_ETOOBIG = 2,         /* "token_too_large": over max_token bytes */
    WSH_AUTH_EALG = 3,            /* "token_bad_alg": `alg` none, unknown, or no key is
                                   * configured with it */
    WSH_AUTH_EKEY = 4,            /* "token_unknown_key": `kid` names no key for `alg` */
    WSH_AUTH_ESIG = 5,            /* "token_bad_signature" */
    WSH_AUTH_EEXPIRED = 6,        /* "token_expired": now >= exp + leeway */
    WSH_AUTH_ENOTYET = 7,         /* "token_not_yet_valid": nbf or iat after now + leeway */
    WSH_AUTH_ENOEXP = 8,          /* "token_no_exp": exp required but absent */
    WSH_AUTH_ENOSUB = 9,          /* "token_no_sub": `sub` absent or empty */
    WSH_AUTH_ECLAIM = 10,         /* "token_bad_claim": a claim has the wrong type or value */
    WSH_AUTH_ECLAIMS_TOOBIG = 11, /* "token_claims_too_large": a claim over its bound */
    WSH_AUTH_EREVOKED = 12,       /* "token_revoked": `jti` is on the deny list */
    WSH_AUTH_ENOMEM = 13,         /* "internal": out of memory */
    WSH_AUTH_EISSUER = 14,        /* "token_wrong_issuer": `iss` absent or not the issuer */
    WSH_AUTH_EAUDIENCE = 15       /* "token_wrong_audience": `aud` does not hold the audience */
};

/* Stable snake_case name of an enum wsh_auth_error ("unknown" otherwise). */
const char *wsh_auth_error_name(int err);

/* Close code for a connection whose token failed after the upgrade:
 * WSH_CLOSE_TOKEN_EXPIRED for WSH_AUTH_EEXPIRED, 1011 for WSH_AUTH_ENOMEM,
 * WSH_CLOSE_FORBIDDEN otherwise. */
int wsh_auth_error_close_code(int err);

/* HTTP status for a token refused before the upgrade: 500 for
 * WSH_AUTH_ENOMEM, 403 otherwise (401 is for no credentials at all). */
int wsh_auth_error_http_status(int err);

/* What a verified token grants. Strings are NUL-terminated. All pointers
 * point into one allocation owned by the struct, valid until
 * wsh_identity_free(). Zero-initialise before first use. */
struct wsh_identity {
    /* Texts live in _mem, NUL-terminated, sized to what the token holds:
     * every /ws connection carries an identity, and two fixed 129-byte
     * arrays were a third of an idle connection's memory. */
    const char *sub; /* user id, 1..WSH_AUTH_SUB_MAX bytes */
    uint32_t sub_len;
    /* The key that verified the token (wsh_auth_key_tag): an FNV-1a hash
     * of its alg, kid and key (the secret, or the public key's DER), so
     * the same key in a later key set has the same tag. */
    uint32_t key_tag;
    int64_t exp_ms;  /* expiry in ms since the epoch; 0 when the token has no exp */
    const char *jti; /* "" when absent */
    size_t jti_len;
    const char *const *channels; /* subscribe patterns; NULL when nchannels == 0 */
    size_t nchannels;
    const char *const *publish; /* publish patterns; NULL when npublish == 0 */
    size_t npublish;
    /* Whether the token had the claim (an array, empty included): a
     * server that reads an absent claim as "no restriction" must still
     * read `"channels": []` as "none". */
    bool channels_claim;
    bool publish_claim;
    const char *info; /* compact JSON object text, NULL when absent */
    size_t info_len;
    void *_mem;
};

/* Verifies token[0..len) (a compact JWS, not NUL-terminated) at time now_ms
 * and extracts its claims into *out. The order of checks is: size, shape
 * and base64url, header (`alg`, `kid`, `crit`), signature, then claims
 * (exp, nbf, iat, sub, channels, publish, info, jti, deny list), so an
 * unsigned token never reaches the claim checks.
 *
 * Returns:
 *   WSH_OK       *out holds the identity (free it with wsh_identity_free);
 *                *err_code is WSH_AUTH_OK.
 *   WSH_EPOLICY  the token is refused; *err_code says why. The peer is at
 *                fault: answer 403 / close with wsh_auth_error_close_code().
 *   WSH_ENOMEM   *err_code is WSH_AUTH_ENOMEM.
 *   WSH_EINVAL   a NULL argument.
 * *out is untouched unless WSH_OK is returned, and must not hold a live
 * identity (free the old one first, e.g. on `refresh`). err_code may be
 * NULL. */
WSH_NODISCARD int wsh_auth_verify(struct wsh_auth *a, const char *token, size_t len, int64_t now_ms,
                                  struct wsh_identity *out, int *err_code);

/* Frees what wsh_auth_verify() stored and zeroes *id. Safe on a zeroed
 * struct and twice in a row. */
void wsh_identity_free(struct wsh_identity *id);

/* Whether a has the key a token verified with (its wsh_identity.key_tag):
 * false once a key rotation removed it. */
bool wsh_auth_has_key(const struct wsh_auth *a, uint32_t key_tag);

/* ------------------------------------------------------------------ */
/* Channel permissions (docs/auth.md "Glob patterns")                  */

/* Glob match: '*' matches any run, possibly empty, of bytes other than ':'
 * (it never crosses a namespace boundary); every other byte matches only
 * itself. O(len(pattern) * len(s)) time in the worst case, no recursion, no
 * allocation. Both strings are byte slices (no NUL needed). */
bool wsh_auth_glob(const char *pattern, size_t plen, const char *s, size_t slen);

/* True when ch is a personal channel (contains '#') whose user list, the
 * comma-separated text after the last '#', contains exactly `sub`. */
bool wsh_auth_personal_allowed(const char *ch, size_t len, const char *sub, size_t sub_len);

/* Subscribe check. A personal channel ("ns:name#u1,u2") is allowed exactly
 * when id->sub is in its user list, whatever the patterns say (no pattern
 * can open another user's channel). Any other channel is allowed when one
 * of id->channels matches it. */
bool wsh_auth_can_subscribe(const struct wsh_identity *id, const char *ch, size_t len);

/* Publish check: one of id->publish must match the whole channel name and,
 * for a personal channel, id->sub must also be in its user list. */
bool wsh_auth_can_publish(const struct wsh_identity *id, const char *ch, size_t len);

/* ------------------------------------------------------------------ */
/* Token sources                                                       */

/* Extracts the token from an Authorization header value: "Bearer" (any
 * case), one or more spaces, then a token68 (RFC 7235 2.1), optionally
 * followed by spaces. *tok points into value (borrowed until value
 * changes).
 * Returns WSH_OK, or WSH_EPROTO when the scheme is not Bearer or the token
 * is empty or has characters outside token68. */
WSH_NODISCARD int wsh_auth_bearer(const char *value, size_t len, const char **tok, size_t *tok_len);

/* Finds the `token` parameter in a query string (the part after '?', no
 * '#'), percent-decodes it into out[0..cap) and NUL-terminates it.
 * Parameters are split on '&'; the name must be exactly "token" (not
 * percent-encoded); '+' is kept as is (a JWT never holds '+' or spaces).
 * Returns:
 *   1            found; *out_len is the decoded length (may be 0).
 *   0            no token parameter; out is "" when cap > 0.
 *   WSH_EPROTO   a bad %-escape, a decoded NUL, or `token` given twice.
 *   WSH_ETOOBIG  the decoded value needs more than cap - 1 bytes.
 *   WSH_EINVAL   cap == 0 or a NULL pointer. */
WSH_NODISCARD int wsh_auth_query_token(const char *query, size_t len, char *out, size_t cap,
                                       size_t *out_len);

/* ------------------------------------------------------------------ */
/* Origin allow-list (Cross-Site WebSocket Hijacking)                  */

/* Entries are borrowed for as long as the list is used. Each entry is
 * scheme "://" host [":" port]; the host may be "*." followed by a domain
 * (any subdomain of it, at any depth, but not the domain itself), and the
 * entry "*" alone allows any origin (for development only). */
struct wsh_origin_list {
    const char *const *entries;
    size_t nentries;
    bool allow_missing; /* accept a request with no Origin header (non-browser clients) */
};

/* Checks an Origin header value (origin == NULL means the header is
 * absent). Scheme and host compare case-insensitively, the port exactly,
 * with the default port of http/https (and ws/wss) filled in when omitted.
 * An origin with a path, userinfo, query, whitespace, or the value "null"
 * never matches a host entry. Returns true when allowed (answer 403
 * otherwise). */
bool wsh_origin_allowed(const struct wsh_origin_list *list, const char *origin, size_t len);
/* Whether s is an entry wsh_origin_allowed can match anything with: "*",
 * or scheme "://" host [":" port] as above (a port of 1..65535, a host of
 * letters, digits, '-' and '.', or an IPv6 literal). The configuration
 * refuses the others, which would let no browser in. */
bool wsh_origin_entry_valid(const char *s);

/* ------------------------------------------------------------------ */
/* API key (HTTP API)                                                  */

/* Compares the configured key with the one presented, in time that
 * depends only on the presented key's length: not on where they differ,
 * nor on the configured key. It allocates nothing, so it cannot fail. An
 * empty configured key matches nothing, so an unset key never opens the
 * API. */
bool wsh_auth_apikey_equal(const void *expected, size_t elen, const void *given, size_t glen);

/* ------------------------------------------------------------------ */
/* Deny list of token ids (`jti`)                                      */

/* Adds jti to the deny list until until_ms (normally the token's exp; a
 * token is refused anyway after that). Entries with until_ms <= now_ms are
 * purged first when the list is full.
 * Returns WSH_OK (also when already present: until_ms is raised),
 * WSH_ENOSPC when max_deny live entries are held (an entry is never
 * evicted early: that would un-revoke a token), WSH_ETOOBIG when jti is
 * longer than WSH_AUTH_JTI_MAX or empty, WSH_ENOMEM. jti is copied. */
WSH_NODISCARD int wsh_auth_deny(struct wsh_auth *a, const char *jti, size_t len, int64_t until_ms,
                                int64_t now_ms);

/* True when jti is on the deny list and its entry has not expired. */
bool wsh_auth_denied(const struct wsh_auth *a, const char *jti, size_t len, int64_t now_ms);

/* Removes jti from the deny list. Returns true when it was there. */
bool wsh_auth_undeny(struct wsh_auth *a, const char *jti, size_t len);

/* Number of entries held, expired ones included until purged. */
size_t wsh_auth_deny_count(const struct wsh_auth *a);

#endif
