/* JWT verification (RFC 7515 compact JWS, RFC 7519 claims, RFC 7518 3.2
 * key sizes), channel globs, token sources, the Origin allow-list (RFC
 * 6454 serialisation, RFC 6455 10.2), API key comparison and the jti deny
 * list. See docs/auth.md for the rules and include/wshub/auth.h for the
 * contracts. */
#include "wshub/auth.h"

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "jose.h"
#include "wshub/expset.h"
#include "wshub/json.h"
#include "wshub/libmem.h"

/* ------------------------------------------------------------------ */
/* Algorithms and keys                                                 */

enum key_kind { KIND_HMAC, KIND_RSA, KIND_RSA_PSS, KIND_EC, KIND_EDDSA };

struct alg_info {
    const char *name;
    const EVP_MD *(*md)(void); /* the hash; NULL for EdDSA, which hashes inside */
    enum key_kind kind;
    size_t min_secret; /* RFC 7518 3.2: an HMAC key at least as long as the hash */
    const char *curve; /* EC: the one curve this alg is defined on (RFC 7518 3.4) */
    size_t ec_sig;     /* EC: R || S, twice the curve's size in bytes */
};

/* RFC 7518 3 and RFC 8037 3.1. Indexed by enum wsh_auth_alg. */
static const struct alg_info algs[] = {
    [WSH_AUTH_HS256] = { "HS256", EVP_sha256, KIND_HMAC, 32, NULL, 0 },
    [WSH_AUTH_HS384] = { "HS384", EVP_sha384, KIND_HMAC, 48, NULL, 0 },
    [WSH_AUTH_HS512] = { "HS512", EVP_sha512, KIND_HMAC, 64, NULL, 0 },
    [WSH_AUTH_RS256] = { "RS256", EVP_sha256, KIND_RSA, 0, NULL, 0 },
    [WSH_AUTH_ES256] = { "ES256", EVP_sha256, KIND_EC, 0, "prime256v1", 64 },
    [WSH_AUTH_RS384] = { "RS384", EVP_sha384, KIND_RSA, 0, NULL, 0 },
    [WSH_AUTH_RS512] = { "RS512", EVP_sha512, KIND_RSA, 0, NULL, 0 },
    [WSH_AUTH_PS256] = { "PS256", EVP_sha256, KIND_RSA_PSS, 0, NULL, 0 },
    [WSH_AUTH_PS384] = { "PS384", EVP_sha384, KIND_RSA_PSS, 0, NULL, 0 },
    [WSH_AUTH_PS512] = { "PS512", EVP_sha512, KIND_RSA_PSS, 0, NULL, 0 },
    [WSH_AUTH_ES384] = { "ES384", EVP_sha384, KIND_EC, 0, "secp384r1", 96 },
    [WSH_AUTH_ES512] = { "ES512", EVP_sha512, KIND_EC, 0, "secp521r1", 132 },
    [WSH_AUTH_EDDSA] = { "EdDSA", NULL, KIND_EDDSA, 0, NULL, 0 },
};

#define ALG_COUNT (sizeof(algs) / sizeof(algs[0]))

struct auth_key {
    enum wsh_auth_alg alg;
    char *kid;    /* NULL when none */
    uint8_t *key; /* HMAC secret; NULL for a public key */
    size_t key_len;
    EVP_PKEY *pk; /* RS256, ES256: parsed once, at load */
    uint32_t tag; /* wsh_identity.key_tag */
};

struct wsh_auth {
    struct auth_key keys[WSH_AUTH_KEYS_MAX];
    size_t nkeys;
    bool exp_optional;
    int64_t leeway_ms;
    size_t max_token;
    struct wsh_expset *deny; /* jti values refused until a time */
    char *issuer, *audience; /* owned copies; NULL: not checked */
};

enum wsh_auth_alg wsh_auth_alg_parse(const char *name)
{
    if (name == NULL)
        return WSH_AUTH_ALG_INVALID;
    for (size_t i = 1; i < ALG_COUNT; i++) {
        if (strcmp(name, algs[i].name) == 0)
            return (enum wsh_auth_alg)i;
    }
    return WSH_AUTH_ALG_INVALID;
}

const char *wsh_auth_alg_name(enum wsh_auth_alg alg)
{
    if ((size_t)alg == 0 || (size_t)alg >= ALG_COUNT)
        return "invalid";
    return algs[alg].name;
}

static bool contains(const uint8_t *p, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++) {
        if (memcmp(p + i, needle, m) == 0)
            return true;
    }
    return false;
}

/* Parses a PEM public key. Done once, at load: a bad key is a startup
 * error rather than a failure of every token later, and OpenSSL 3's PEM
 * decoding costs far more than the signature check itself (about 0.4 ms
 * against 0.02 ms for RS256 on this machine), so it must not run per
 * token. */
static EVP_PKEY *pem_public_key(const uint8_t *pem, size_t len)
{
    if (len > INT32_MAX)
        return NULL;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL)
        return NULL;
    EVP_PKEY *pk = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    BIO_free(bio);
    ERR_clear_error();
    return pk;
}

/* An RSA public exponent worth the name: odd, at least 3 (with e = 1
 * anyone can sign), at most 32 bits (what one check costs). */
static bool rsa_e_ok(const EVP_PKEY *pk)
{
    BIGNUM *e = NULL;
    bool ok = EVP_PKEY_get_bn_param(pk, "e", &e) == 1 && BN_is_odd(e) && !BN_is_one(e) &&
              BN_num_bits(e) <= 32;
    BN_free(e);
    return ok;
}

/* Whether loaded material is of the kind ai needs: one check for every
 * form a key comes in (secret, PEM, JWK). */
static bool key_fits(const struct alg_info *ai, const struct jose_material *m, const char **why)
{
    if (ai->kind == KIND_HMAC) {
        /* An empty secret would let anyone mint tokens, and a PEM given
         * as a secret is the configuration mistake the HS/RS confusion
         * attack feeds on. */
        *why = m->secret == NULL                ? "not a secret (kty oct)"
               : m->secret_len < ai->min_secret ? "secret shorter than the hash (RFC 7518 3.2)"
               : contains(m->secret, m->secret_len, "-----BEGIN") ? "a PEM block given as a secret"
                                                                  : NULL;
        return *why == NULL;
    }
    int id = m->pk != NULL ? EVP_PKEY_get_base_id(m->pk) : EVP_PKEY_NONE;
    if (ai->kind == KIND_RSA || ai->kind == KIND_RSA_PSS) {
        /* A plain RSA key serves both paddings (RFC 7518 3.3, 3.5). */
        /* Over 8192 bits, as jwks.c bounds a JWK: what one check costs. */
        *why = id != EVP_PKEY_RSA                ? "not an RSA public key"
               : EVP_PKEY_get_bits(m->pk) < 2048 ? "RSA key under 2048 bits"
               : EVP_PKEY_get_bits(m->pk) > 8192 ? "RSA key over 8192 bits"
               : !rsa_e_ok(m->pk) ? "RSA exponent not odd, 3 or more, of 32 bits at most"
                                  : NULL;
    } else if (ai->kind == KIND_EC) {
        char group[64];
        size_t glen = 0;
        *why = id != EVP_PKEY_EC ? "not an EC public key"
               : EVP_PKEY_get_group_name(m->pk, group, sizeof(group), &glen) != 1 ||
                       strcmp(group, ai->curve) != 0
                   ? "EC key not on the alg's curve"
                   : NULL;
    } else {
        /* RFC 8037 2 */
        *why =
            id != EVP_PKEY_ED25519 && id != EVP_PKEY_ED448 ? "not an Ed25519 or Ed448 key" : NULL;
    }
    ERR_clear_error();
    return *why == NULL;
}

void jose_material_free(struct jose_material *m)
{
    if (m->secret != NULL) {
        OPENSSL_cleanse(m->secret, m->secret_len);
        free(m->secret);
    }
    EVP_PKEY_free(m->pk);
    memset(m, 0, sizeof(*m));
}

const char jose_no_memory[] = "out of memory";

static bool key_load(const struct wsh_auth_key *k, struct jose_material *m, const char **why);

bool jose_key_load(const struct wsh_auth_key *k, struct jose_material *m, const char **why)
{
    /* jansson and OpenSSL say a failed allocation the way they say bad
     * input: wsh_libmem tells. */
    unsigned long failures = wsh_libmem_failures();
    bool ok = key_load(k, m, why);
    if (!ok && wsh_libmem_failures() != failures)
        *why = jose_no_memory;
    return ok;
}

static bool key_load(const struct wsh_auth_key *k, struct jose_material *m, const char **why)
{
    memset(m, 0, sizeof(*m));
    if ((size_t)k->alg == 0 || (size_t)k->alg >= ALG_COUNT) {
        *why = "unsupported alg";
        return false;
    }
    if (k->key == NULL || k->key_len == 0 || k->key_len > WSH_AUTH_KEY_MAX) {
        *why = k->key_len > WSH_AUTH_KEY_MAX ? "key over 64 KiB" : "empty key";
        return false;
    }
    const struct alg_info *ai = &algs[k->alg];
    *why = NULL;
    if (k->form == WSH_AUTH_KEY_JWK) {
        /* A failure is counted by wsh_libmem, which jose_key_load asks. */
        json_t *j =
            wsh_json_loadb((const char *)k->key, k->key_len, JSON_REJECT_DUPLICATES, NULL, NULL);
        bool ok = json_is_object(j) && jose_jwk_import(j, m, why);
        json_decref(j);
        if (!ok) {
            if (*why == NULL)
                *why = "not a JWK object";
            jose_material_free(m);
            return false;
        }
    } else if (ai->kind == KIND_HMAC) {
        if ((m->secret = malloc(k->key_len)) == NULL) {
            *why = jose_no_memory;
            return false;
        }
        memcpy(m->secret, k->key, k->key_len);
        m->secret_len = k->key_len;
    } else if ((m->pk = pem_public_key(k->key, k->key_len)) == NULL) {
        *why = "not a PEM public key";
        return false;
    }
    if (!key_fits(ai, m, why)) {
        jose_material_free(m);
        return false;
    }
    return true;
}

const char *wsh_auth_key_problem(const struct wsh_auth_key *k)
{
    struct jose_material m;
    const char *why = NULL;
    if (k == NULL)
        return "no key";
    bool ok = jose_key_load(k, &m, &why);
    jose_material_free(&m);
    return ok ? NULL : why;
}

/* k->tag from its alg, kid and key: the secret, or the public key in DER
 * (SubjectPublicKeyInfo), whatever form it came in, so a JWK and the PEM
 * of the same key, or the same JWK served again, give the same tag. */
static bool key_tag(struct auth_key *k, const char *kid)
{
    uint64_t h = wsh_fnv1a(WSH_FNV1A_BASIS, &(uint8_t){ (uint8_t)k->alg }, 1);
    if (kid != NULL)
        h = wsh_fnv1a(h, kid, strlen(kid) + 1);
    if (k->pk != NULL) {
        unsigned char *der = NULL;
        int n = i2d_PUBKEY(k->pk, &der);
        if (n <= 0)
            return false;
        h = wsh_fnv1a(h, der, (size_t)n);
        OPENSSL_free(der);
    } else {
        h = wsh_fnv1a(h, k->key, k->key_len);
    }
    k->tag = (uint32_t)(h ^ (h >> 32));
    return true;
}

bool wsh_auth_has_key(const struct wsh_auth *a, uint32_t key_tag)
{
    for (size_t i = 0; a != NULL && i < a->nkeys; i++)
        if (a->keys[i].tag == key_tag)
            return true;
    return false;
}

static void free_key(struct auth_key *k)
{
    if (k->key != NULL) {
        OPENSSL_cleanse(k->key, k->key_len);
        free(k->key);
    }
    EVP_PKEY_free(k->pk);
    free(k->kid);
    memset(k, 0, sizeof(*k));
}

bool jose_same_kid(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

int wsh_auth_create(const struct wsh_auth_opts *o, struct wsh_auth **out, int *bad_key)
{
    if (bad_key != NULL)
        *bad_key = -1;
    if (o == NULL || out == NULL || o->keys == NULL || o->nkeys == 0 ||
        o->nkeys > WSH_AUTH_KEYS_MAX)
        return WSH_EINVAL;
    /* What each key verifies with, until a owns it. */
    struct jose_material mats[WSH_AUTH_KEYS_MAX] = { { NULL, NULL, 0 } };
    for (size_t i = 0; i < o->nkeys; i++) {
        bool bad = false;
        for (size_t j = 0; j < i; j++) {
            bad |=
                o->keys[j].alg == o->keys[i].alg && jose_same_kid(o->keys[j].kid, o->keys[i].kid);
        }
        const char *why = NULL;
        if (bad || !jose_key_load(&o->keys[i], &mats[i], &why)) {
            /* A key that could not be loaded for want of memory is not a
             * bad key: the caller would name it as one. */
            bool oom = why == jose_no_memory;
            if (bad_key != NULL && !oom)
                *bad_key = (int)i;
            for (size_t j = 0; j < i; j++)
                jose_material_free(&mats[j]);
            return oom ? WSH_ENOMEM : WSH_EINVAL;
        }
    }

    struct wsh_auth *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        for (size_t i = 0; i < o->nkeys; i++)
            jose_material_free(&mats[i]);
        return WSH_ENOMEM;
    }
    /* From here wsh_auth_destroy frees the keys' material. */
    a->nkeys = o->nkeys;
    for (size_t i = 0; i < o->nkeys; i++) {
        a->keys[i].alg = o->keys[i].alg;
        a->keys[i].pk = mats[i].pk;
        a->keys[i].key = mats[i].secret;
        a->keys[i].key_len = mats[i].secret_len;
    }
    for (size_t i = 0; i < o->nkeys; i++)
        if (!key_tag(&a->keys[i], o->keys[i].kid))
            goto fail;
    a->exp_optional = o->exp_optional;
    a->leeway_ms = o->leeway_ms == 0                      ? WSH_AUTH_DEFAULT_LEEWAY_MS
                   : o->leeway_ms == WSH_AUTH_LEEWAY_NONE ? 0
                                                          : o->leeway_ms;
    a->max_token = o->max_token ? o->max_token : WSH_AUTH_DEFAULT_TOKEN_MAX;
    if (a->max_token > INT32_MAX / 2)
        goto fail_inval;
    a->deny = wsh_expset_new(o->max_deny ? o->max_deny : WSH_AUTH_DEFAULT_DENY_MAX);
    if (a->deny == NULL)
        goto fail;
    for (size_t i = 0; i < o->nkeys; i++) {
        const char *kid = o->keys[i].kid;
        if (kid != NULL && (a->keys[i].kid = strdup(kid)) == NULL)
            goto fail;
    }
    if ((o->issuer != NULL && (a->issuer = strdup(o->issuer)) == NULL) ||
        (o->audience != NULL && (a->audience = strdup(o->audience)) == NULL))
        goto fail;
    *out = a;
    return WSH_OK;

fail_inval:
    wsh_auth_destroy(a);
    return WSH_EINVAL;
fail:
    wsh_auth_destroy(a);
    return WSH_ENOMEM;
}

void wsh_auth_destroy(struct wsh_auth *a)
{
    if (a == NULL)
        return;
    for (size_t i = 0; i < a->nkeys; i++)
        free_key(&a->keys[i]);
    wsh_expset_free(a->deny);
    free(a->issuer);
    free(a->audience);
    free(a);
}

/* ------------------------------------------------------------------ */
/* Error codes                                                         */

const char *wsh_auth_error_name(int err)
{
    static const char *const names[] = {
        [WSH_AUTH_OK] = "ok",
        [WSH_AUTH_EFORMAT] = "token_malformed",
        [WSH_AUTH_ETOOBIG] = "token_too_large",
        [WSH_AUTH_EALG] = "token_bad_alg",
        [WSH_AUTH_EKEY] = "token_unknown_key",
        [WSH_AUTH_ESIG] = "token_bad_signature",
        [WSH_AUTH_EEXPIRED] = "token_expired",
        [WSH_AUTH_ENOTYET] = "token_not_yet_valid",
        [WSH_AUTH_ENOEXP] = "token_no_exp",
        [WSH_AUTH_ENOSUB] = "token_no_sub",
        [WSH_AUTH_ECLAIM] = "token_bad_claim",
        [WSH_AUTH_ECLAIMS_TOOBIG] = "token_claims_too_large",
        [WSH_AUTH_EREVOKED] = "token_revoked",
        [WSH_AUTH_ENOMEM] = "internal",
        [WSH_AUTH_EISSUER] = "token_wrong_issuer",
        [WSH_AUTH_EAUDIENCE] = "token_wrong_audience",
    };
    if (err < 0 || (size_t)err >= sizeof(names) / sizeof(names[0]))
        return "unknown";
    return names[err];
}

int wsh_auth_error_close_code(int err)
{
    if (err == WSH_AUTH_EEXPIRED)
        return WSH_CLOSE_TOKEN_EXPIRED;
    if (err == WSH_AUTH_ENOMEM)
        return 1011;
    return WSH_CLOSE_FORBIDDEN;
}

int wsh_auth_error_http_status(int err)
{
    return err == WSH_AUTH_ENOMEM ? 500 : 403;
}

/* ------------------------------------------------------------------ */
/* Token verification                                                  */

/* Why the header `alg` only selects keys and never decides how to verify.
 *
 * A verifier that takes the algorithm from the token's own header and
 * verifies with whatever key bytes it holds can be fooled. libjwt 1.x
 * jwt_decode(), which this file used until stop 14, is one (measured on
 * Debian's 1.10.2):
 *   - alg "none" with key NULL: accepted, nothing is checked;
 *   - alg "HS256" with key NULL or key_len 0: accepted, nothing checked;
 *   - alg "HS256" with an RSA public key PEM as the key: it HMACs with the
 *     PEM text and accepts. The PEM is public, so anyone can mint such a
 *     token (the RS/HS confusion attack, CVE-2015-9235 in
 *     node-jsonwebtoken).
 * So each key carries the one algorithm it was configured with and is
 * stored as what that algorithm needs: an HMAC secret (never empty, never
 * a PEM: key_fits) or a parsed public key of the right type and curve.
 * The header `alg` only selects among keys configured with exactly that
 * algorithm; "none" or an algorithm no key has is refused before any
 * signature is looked at. */

static bool is_b64url(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

static int b64url_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '-' ? 62 : 63;
}

/* Strict base64url without padding (RFC 7515 2): the length may not be
 * 1 mod 4 and unused trailing bits must be zero, so each value has one
 * encoding. The caller checked the alphabet. out holds len * 3 / 4 bytes. */
static bool b64url_decode(const char *in, size_t len, uint8_t *out, size_t *out_len)
{
    if (len % 4 == 1)
        return false;
    size_t o = 0;
    uint32_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < len; i++) {
        acc = (acc << 6) | (uint32_t)b64url_val((unsigned char)in[i]);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    if ((acc & ((1u << bits) - 1)) != 0)
        return false;
    *out_len = o;
    return true;
}

bool jose_b64url_decode(const char *in, size_t len, uint8_t *out, size_t *out_len)
{
    for (size_t i = 0; i < len; i++) {
        if (!is_b64url((unsigned char)in[i]))
            return false;
    }
    return b64url_decode(in, len, out, out_len);
}

/* Decodes one segment into *out, an object. Returns an enum
 * wsh_auth_error: memory running out is not a malformed token. */
static int decode_json_object(const char *seg, size_t len, uint8_t *scratch, json_t **out)
{
    size_t n;
    if (!b64url_decode(seg, len, scratch, &n))
        return WSH_AUTH_EFORMAT;
    /* Duplicate names are refused: parsers disagree on which one wins
     * (libjwt and jansson keep the last), and a differential between two
     * parsers of one token, ours and the application's, is how checks get
     * bypassed. */
    bool oom;
    json_t *j = wsh_json_loadb((const char *)scratch, n, JSON_REJECT_DUPLICATES, NULL, &oom);
    if (j == NULL)
        return oom ? WSH_AUTH_ENOMEM : WSH_AUTH_EFORMAT;
    if (!json_is_object(j)) {
        json_decref(j);
        return WSH_AUTH_EFORMAT;
    }
    *out = j;
    return WSH_AUTH_OK;
}

struct parsed {
    json_t *head;
    json_t *claims;
    const char *input; /* the JWS signing input: header "." payload */
    size_t input_len;
    uint8_t *sig; /* the decoded signature */
    size_t sig_len;
    uint8_t *scratch;
};

static void parsed_free(struct parsed *p)
{
    json_decref(p->head);
    json_decref(p->claims);
    free(p->sig);
    free(p->scratch);
}

/* Size, shape, header and payload JSON. Returns an enum wsh_auth_error. */
static int parse_token(const struct wsh_auth *a, const char *token, size_t len, struct parsed *p)
{
    if (len == 0)
        return WSH_AUTH_EFORMAT;
    if (len > a->max_token)
        return WSH_AUTH_ETOOBIG;
    size_t dot[2], ndots = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)token[i];
        if (c == '.') {
            if (ndots == 2)
                return WSH_AUTH_EFORMAT;
            dot[ndots++] = i;
        } else if (!is_b64url(c)) {
            return WSH_AUTH_EFORMAT;
        }
    }
    /* The signature may be empty here so that an unsigned "none" token is
     * reported as a bad alg; the signature check refuses it anyway. */
    if (ndots != 2 || dot[0] == 0 || dot[1] == dot[0] + 1)
        return WSH_AUTH_EFORMAT;
    p->scratch = malloc(len);
    p->sig = malloc(len);
    if (p->scratch == NULL || p->sig == NULL)
        return WSH_AUTH_ENOMEM;
    p->input = token;
    p->input_len = dot[1];
    if (!b64url_decode(token + dot[1] + 1, len - dot[1] - 1, p->sig, &p->sig_len))
        return WSH_AUTH_EFORMAT;
    int rc = decode_json_object(token, dot[0], p->scratch, &p->head);
    if (rc != WSH_AUTH_OK)
        return rc;
    rc = decode_json_object(token + dot[0] + 1, dot[1] - dot[0] - 1, p->scratch, &p->claims);
    if (rc != WSH_AUTH_OK)
        return rc;
    /* RFC 7515 4.1.11: a recipient that does not understand a `crit`
     * extension must refuse the token, and we understand none. */
    if (json_object_get(p->head, "crit") != NULL)
        return WSH_AUTH_EFORMAT;
    return WSH_AUTH_OK;
}

/* A JWS ECDSA signature is R and S as two big-endian numbers of the
 * curve's size each (RFC 7518 3.4: 64 bytes for ES256, 96 for ES384, 132
 * for ES512); OpenSSL verifies the DER ECDSA-Sig-Value. Returns the DER
 * length, 0 for a signature of the wrong length, -1 out of memory. */
static int ecdsa_der(const uint8_t *sig, size_t len, size_t want, uint8_t *der, size_t cap)
{
    if (len != want)
        return 0;
    size_t half = len / 2;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)half, NULL), *sv = BN_bin2bn(sig + half, (int)half, NULL);
    if (es == NULL || r == NULL || sv == NULL || ECDSA_SIG_set0(es, r, sv) != 1) {
        BN_free(r);
        BN_free(sv);
        ECDSA_SIG_free(es);
        return -1;
    }
    int n = i2d_ECDSA_SIG(es, NULL);
    unsigned char *q = der;
    if (n > 0 && (size_t)n <= cap)
        n = i2d_ECDSA_SIG(es, &q);
    else
        n = -1;
    ECDSA_SIG_free(es);
    return n;
}

/* Checks p's signature with one key (RFC 7515 5.2 step 8, RFC 7518 3.2,
 * 3.3, 3.4). Returns 1 when it verifies, 0 when it does not, -1 when
 * memory ran out. Leaves OpenSSL's per-thread error queue empty. */
static int verify_with(const struct auth_key *k, const struct parsed *p)
{
    const struct alg_info *ai = &algs[k->alg];
    const EVP_MD *md = ai->md != NULL ? ai->md() : NULL;
    const uint8_t *in = (const uint8_t *)p->input;
    if (ai->kind == KIND_HMAC) {
        uint8_t mac[EVP_MAX_MD_SIZE];
        unsigned int mlen = 0;
        if (HMAC(md, k->key, (int)k->key_len, in, p->input_len, mac, &mlen) == NULL) {
            ERR_clear_error();
            return -1;
        }
        /* Constant time: a timing difference would reveal how much of a
         * forged MAC was right. */
        int ok = p->sig_len == mlen && CRYPTO_memcmp(mac, p->sig, mlen) == 0;
        OPENSSL_cleanse(mac, sizeof(mac));
        return ok;
    }
    const uint8_t *sig = p->sig;
    size_t slen = p->sig_len;
    uint8_t der[160]; /* a P-521 ECDSA-Sig-Value is at most 139 bytes */
    if (ai->kind == KIND_EC) {
        int n = ecdsa_der(p->sig, p->sig_len, ai->ec_sig, der, sizeof(der));
        if (n <= 0)
            return n;
        sig = der;
        slen = (size_t)n;
    } else if (slen != (size_t)EVP_PKEY_get_size(k->pk)) {
        /* RSA: exactly the modulus length (RFC 7518 3.3, 3.5); EdDSA: 64
         * bytes for Ed25519, 114 for Ed448. */
        return 0;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return -1;
    EVP_PKEY_CTX *pctx = NULL;
    /* The key was checked against its alg when it was loaded, so setting
     * up fails only for want of memory: -1, which the caller answers as
     * "try again", not as a bad token. OpenSSL's verify itself says 0 for
     * a bad signature and for a failed allocation alike: wsh_libmem tells
     * them apart. */
    unsigned long failures = wsh_libmem_failures();
    int rc = EVP_DigestVerifyInit(ctx, &pctx, md, NULL, k->pk) == 1 ? 0 : -1;
    /* RFC 7518 3.5: PSS with MGF1 on the same hash and a salt as long as
     * the hash. */
    if (rc == 0 && ai->kind == KIND_RSA_PSS &&
        (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
         EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1 ||
         EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) != 1))
        rc = -1;
    if (rc == 0)
        rc = EVP_DigestVerify(ctx, sig, slen, in, p->input_len) == 1;
    if (rc == 0 && wsh_libmem_failures() != failures)
        rc = -1;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}

/* Picks the keys the header allows and verifies the signature with them;
 * *tag is the verifying key's. Returns an enum wsh_auth_error. */
static int check_signature(const struct wsh_auth *a, const struct parsed *p, uint32_t *tag)
{
    json_t *jalg = json_object_get(p->head, "alg");
    if (!json_is_string(jalg))
        return WSH_AUTH_EFORMAT;
    enum wsh_auth_alg alg = wsh_auth_alg_parse(json_string_value(jalg));
    if (alg == WSH_AUTH_ALG_INVALID)
        return WSH_AUTH_EALG; /* "none", "ES256K", "hs256", ... */
    json_t *jkid = json_object_get(p->head, "kid");
    if (jkid != NULL && !json_is_string(jkid))
        return WSH_AUTH_EFORMAT;
    const char *kid = jkid != NULL ? json_string_value(jkid) : NULL;

    bool alg_known = false, tried = false;
    for (size_t i = 0; i < a->nkeys; i++) {
        const struct auth_key *k = &a->keys[i];
        if (k->alg != alg)
            continue;
        alg_known = true;
        if (kid != NULL && (k->kid == NULL || strcmp(k->kid, kid) != 0))
            continue;
        tried = true;
        int rc = verify_with(k, p);
        if (rc > 0) {
            *tag = k->tag;
            return WSH_AUTH_OK;
        }
        if (rc < 0)
            return WSH_AUTH_ENOMEM;
    }
    if (!alg_known)
        return WSH_AUTH_EALG;
    return tried ? WSH_AUTH_ESIG : WSH_AUTH_EKEY;
}

/* A NumericDate (RFC 7519 2) in ms. Returns false for a non-number, a
 * negative value or one too large to hold in ms. */
static bool numeric_date_ms(json_t *v, int64_t *ms)
{
    double d;
    if (json_is_integer(v)) {
        json_int_t s = json_integer_value(v);
        if (s < 0 || s > INT64_MAX / 1000 / 2)
            return false;
        *ms = (int64_t)s * 1000;
        return true;
    }
    if (!json_is_real(v))
        return false;
    d = json_real_value(v);
    if (!(d >= 0.0 && d < 4.0e15)) /* also false for NaN */
        return false;
    *ms = (int64_t)(d * 1000.0);
    return true;
}

static bool valid_sub(const char *s, size_t n)
{
    /* "anon-<client>" is the user id of an anonymous session (server
     * hub.c): a token naming one would share its presence entries, its
     * msg_ids and its kicks. */
    if (n >= 5 && memcmp(s, "anon-", 5) == 0)
        return false;
    /* ',' and '#' would be ambiguous in personal channel user lists, '*'
     * in patterns; control bytes and spaces have no place in an id. */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c == 0x7f || c == ',' || c == '#' || c == '*')
            return false;
    }
    return true;
}

/* Checks a `channels`/`publish` claim and adds its size to *bytes. */
static int check_patterns(json_t *arr, size_t *count, size_t *bytes)
{
    *count = 0;
    if (arr == NULL || json_is_null(arr))
        return WSH_AUTH_OK;
    if (!json_is_array(arr))
        return WSH_AUTH_ECLAIM;
    if (json_array_size(arr) > WSH_AUTH_PATTERNS_MAX)
        return WSH_AUTH_ECLAIMS_TOOBIG;
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (!json_is_string(v) || json_string_length(v) == 0)
            return WSH_AUTH_ECLAIM;
        if (json_string_length(v) > WSH_AUTH_PATTERN_MAX)
            return WSH_AUTH_ECLAIMS_TOOBIG;
        *bytes += json_string_length(v) + 1 + sizeof(char *);
    }
    *count = json_array_size(arr);
    return WSH_AUTH_OK;
}

static char *copy_patterns(json_t *arr, size_t count, const char **ptrs, char *dst)
{
    for (size_t i = 0; i < count; i++) {
        json_t *v = json_array_get(arr, i);
        size_t n = json_string_length(v);
        memcpy(dst, json_string_value(v), n);
        dst[n] = 0;
        ptrs[i] = dst;
        dst += n + 1;
    }
    return dst;
}

/* Whether the string JSON value v is exactly s (jansson strings may hold
 * NUL; the token's JSON is refused with one anyway). */
static bool json_str_is(json_t *v, const char *s)
{
    return json_is_string(v) && json_string_length(v) == strlen(s) &&
           memcmp(json_string_value(v), s, json_string_length(v)) == 0;
}

/* RFC 7519 4.1.1, 4.1.3: the issuer and audience the server was told to
 * require. */
static int check_iss_aud(const struct wsh_auth *a, json_t *c)
{
    if (a->issuer != NULL && !json_str_is(json_object_get(c, "iss"), a->issuer))
        return WSH_AUTH_EISSUER;
    if (a->audience == NULL)
        return WSH_AUTH_OK;
    json_t *aud = json_object_get(c, "aud");
    if (json_str_is(aud, a->audience))
        return WSH_AUTH_OK;
    size_t i;
    json_t *e;
    json_array_foreach(aud, i, e)
    {
        if (json_str_is(e, a->audience))
            return WSH_AUTH_OK;
    }
    return WSH_AUTH_EAUDIENCE;
}

/* Claim checks and extraction, after the signature verified. */
static int extract_claims(struct wsh_auth *a, json_t *c, int64_t now_ms, struct wsh_identity *id)
{
    int64_t exp_ms = 0, t;
    int bad = check_iss_aud(a, c);
    if (bad != WSH_AUTH_OK)
        return bad;
    json_t *v = json_object_get(c, "exp");
    if (v != NULL) {
        if (!numeric_date_ms(v, &exp_ms))
            return WSH_AUTH_ECLAIM;
        if (now_ms >= exp_ms + a->leeway_ms)
            return WSH_AUTH_EEXPIRED;
    } else if (!a->exp_optional) {
        return WSH_AUTH_ENOEXP;
    }
    if ((v = json_object_get(c, "nbf")) != NULL) {
        if (!numeric_date_ms(v, &t))
            return WSH_AUTH_ECLAIM;
        if (t > now_ms + a->leeway_ms)
            return WSH_AUTH_ENOTYET;
    }
    if ((v = json_object_get(c, "iat")) != NULL) {
        if (!numeric_date_ms(v, &t))
            return WSH_AUTH_ECLAIM;
        if (t > now_ms + a->leeway_ms)
            return WSH_AUTH_ENOTYET;
    }

    v = json_object_get(c, "sub");
    if (v == NULL || (json_is_string(v) && json_string_length(v) == 0))
        return WSH_AUTH_ENOSUB;
    if (!json_is_string(v))
        return WSH_AUTH_ECLAIM;
    if (json_string_length(v) > WSH_AUTH_SUB_MAX)
        return WSH_AUTH_ECLAIMS_TOOBIG;
    if (!valid_sub(json_string_value(v), json_string_length(v)))
        return WSH_AUTH_ECLAIM;
    const char *sub = json_string_value(v);
    size_t sub_len = json_string_length(v);
    id->exp_ms = exp_ms;

    const char *jti = "";
    size_t jti_len = 0;
    if ((v = json_object_get(c, "jti")) != NULL) {
        if (!json_is_string(v))
            return WSH_AUTH_ECLAIM;
        if (json_string_length(v) > WSH_AUTH_JTI_MAX)
            return WSH_AUTH_ECLAIMS_TOOBIG;
        jti = json_string_value(v);
        jti_len = json_string_length(v);
        if (jti_len > 0 && wsh_auth_denied(a, jti, jti_len, now_ms))
            return WSH_AUTH_EREVOKED;
    }

    size_t nch, npub, bytes = sub_len + 1 + jti_len + 1;
    json_t *jch = json_object_get(c, "channels");
    json_t *jpub = json_object_get(c, "publish");
    int rc = check_patterns(jch, &nch, &bytes);
    if (rc == WSH_AUTH_OK)
        rc = check_patterns(jpub, &npub, &bytes);
    if (rc != WSH_AUTH_OK)
        return rc;

    char *info = NULL;
    size_t info_len = 0;
    v = json_object_get(c, "info");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_object(v))
            return WSH_AUTH_ECLAIM;
        info = json_dumps(v, JSON_COMPACT);
        if (info == NULL)
            return WSH_AUTH_ENOMEM;
        info_len = strlen(info);
        if (info_len > WSH_AUTH_INFO_MAX) {
            free(info);
            return WSH_AUTH_ECLAIMS_TOOBIG;
        }
        bytes += info_len + 1;
    }

    /* One allocation: the two pointer arrays first (aligned), then text. */
    char *mem = malloc(bytes);
    if (mem == NULL) {
        free(info);
        return WSH_AUTH_ENOMEM;
    }
    const char **pch = (const char **)(void *)mem;
    const char **ppub = pch + nch;
    char *text = (char *)(ppub + npub);
    text = copy_patterns(jch, nch, pch, text);
    text = copy_patterns(jpub, npub, ppub, text);
    memcpy(text, sub, sub_len);
    text[sub_len] = '\0';
    id->sub = text;
    id->sub_len = (uint32_t)sub_len;
    text += sub_len + 1;
    memcpy(text, jti, jti_len);
    text[jti_len] = '\0';
    id->jti = text;
    id->jti_len = jti_len;
    text += jti_len + 1;
    if (info != NULL) {
        memcpy(text, info, info_len + 1);
        id->info = text;
        id->info_len = info_len;
        free(info);
    }
    id->channels = nch ? pch : NULL;
    id->nchannels = nch;
    id->channels_claim = json_is_array(jch);
    id->publish = npub ? ppub : NULL;
    id->npublish = npub;
    id->publish_claim = json_is_array(jpub);
    id->_mem = mem;
    return WSH_AUTH_OK;
}

int wsh_auth_verify(struct wsh_auth *a, const char *token, size_t len, int64_t now_ms,
                    struct wsh_identity *out, int *err_code)
{
    int dummy;
    if (err_code == NULL)
        err_code = &dummy;
    *err_code = WSH_AUTH_OK;
    if (a == NULL || (token == NULL && len > 0) || out == NULL)
        return WSH_EINVAL;

    struct parsed p = { 0 };
    struct wsh_identity id = { 0 };
    uint32_t tag = 0;
    int err = parse_token(a, token, len, &p);
    if (err == WSH_AUTH_OK)
        err = check_signature(a, &p, &tag);
    if (err == WSH_AUTH_OK)
        err = extract_claims(a, p.claims, now_ms, &id);
    parsed_free(&p);
    *err_code = err;
    if (err != WSH_AUTH_OK) {
        wsh_identity_free(&id);
        return err == WSH_AUTH_ENOMEM ? WSH_ENOMEM : WSH_EPOLICY;
    }
    id.key_tag = tag;
    *out = id;
    return WSH_OK;
}

void wsh_identity_free(struct wsh_identity *id)
{
    if (id == NULL)
        return;
    free(id->_mem);
    memset(id, 0, sizeof(*id));
}

/* ------------------------------------------------------------------ */
/* Channel permissions                                                 */

bool wsh_auth_glob(const char *pattern, size_t plen, const char *s, size_t slen)
{
    /* Iterative matcher with one backtrack point: the last '*' seen, and
     * where in s it started. A later '*' replaces the earlier one, because
     * within one ':'-separated segment any match the earlier star could
     * make by growing, the later star can make too; and since no '*'
     * crosses ':', the k-th ':' of the pattern must meet the k-th ':' of s,
     * so a star never needs to reach back over one. Each retry moves the
     * start of the star one byte on, so the work is bounded by
     * plen * slen, never exponential. */
    size_t p = 0, i = 0, star = SIZE_MAX, star_i = 0;
    while (i < slen) {
        if (p < plen && pattern[p] == '*') {
            star = p++;
            star_i = i;
        } else if (p < plen && pattern[p] == s[i]) {
            p++;
            i++;
        } else if (star != SIZE_MAX && s[star_i] != ':') {
            p = star + 1;
            i = ++star_i;
        } else {
            return false;
        }
    }
    while (p < plen && pattern[p] == '*')
        p++;
    return p == plen;
}

bool wsh_auth_personal_allowed(const char *ch, size_t len, const char *sub, size_t sub_len)
{
    if (sub_len == 0)
        return false;
    size_t h = len;
    while (h > 0 && ch[h - 1] != '#')
        h--;
    if (h == 0)
        return false; /* no '#': not a personal channel */
    size_t start = h;
    for (size_t i = h; i <= len; i++) {
        if (i == len || ch[i] == ',') {
            if (i - start == sub_len && memcmp(ch + start, sub, sub_len) == 0)
                return true;
            start = i + 1;
        }
    }
    return false;
}

static bool is_personal(const char *ch, size_t len)
{
    return memchr(ch, '#', len) != NULL;
}

static bool any_match(const char *const *pats, size_t n, const char *ch, size_t len)
{
    for (size_t i = 0; i < n; i++) {
        if (wsh_auth_glob(pats[i], strlen(pats[i]), ch, len))
            return true;
    }
    return false;
}

bool wsh_auth_can_subscribe(const struct wsh_identity *id, const char *ch, size_t len)
{
    if (id == NULL || ch == NULL)
        return false;
    if (is_personal(ch, len))
        return wsh_auth_personal_allowed(ch, len, id->sub, id->sub_len);
    return any_match(id->channels, id->nchannels, ch, len);
}

bool wsh_auth_can_publish(const struct wsh_identity *id, const char *ch, size_t len)
{
    if (id == NULL || ch == NULL)
        return false;
    if (is_personal(ch, len) && !wsh_auth_personal_allowed(ch, len, id->sub, id->sub_len))
        return false;
    return any_match(id->publish, id->npublish, ch, len);
}

/* ------------------------------------------------------------------ */
/* Token sources                                                       */

static bool is_token68(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~' || c == '+' || c == '/';
}

int wsh_auth_bearer(const char *value, size_t len, const char **tok, size_t *tok_len)
{
    if (value == NULL || tok == NULL || tok_len == NULL)
        return WSH_EINVAL;
    /* RFC 7235 2.1: auth-scheme is case-insensitive, then 1*SP. */
    if (len < 7 || strncasecmp(value, "bearer", 6) != 0 || value[6] != ' ')
        return WSH_EPROTO;
    size_t i = 7;
    while (i < len && value[i] == ' ')
        i++;
    size_t start = i;
    while (i < len && is_token68((unsigned char)value[i]))
        i++;
    if (i == start)
        return WSH_EPROTO;
    while (i < len && value[i] == '=')
        i++;
    size_t end = i;
    while (i < len && (value[i] == ' ' || value[i] == '\t'))
        i++;
    if (i != len)
        return WSH_EPROTO;
    *tok = value + start;
    *tok_len = end - start;
    return WSH_OK;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int wsh_auth_query_token(const char *query, size_t len, char *out, size_t cap, size_t *out_len)
{
    if ((query == NULL && len > 0) || out == NULL || cap == 0 || out_len == NULL)
        return WSH_EINVAL;
    out[0] = 0;
    *out_len = 0;
    int found = 0;
    size_t i = 0;
    while (i < len) {
        size_t end = i;
        while (end < len && query[end] != '&')
            end++;
        size_t eq = i;
        while (eq < end && query[eq] != '=')
            eq++;
        if (eq - i == 5 && memcmp(query + i, "token", 5) == 0) {
            /* Two values would leave the choice to whoever reads the URL
             * next (a proxy, a log); refuse rather than pick one. */
            if (found)
                return WSH_EPROTO;
            found = 1;
            size_t o = 0;
            for (size_t k = eq + (eq < end); k < end; k++) {
                unsigned char c = (unsigned char)query[k];
                if (c == '%') {
                    int hi = k + 2 < end ? hexval((unsigned char)query[k + 1]) : -1;
                    int lo = hi >= 0 ? hexval((unsigned char)query[k + 2]) : -1;
                    if (lo < 0 || (hi == 0 && lo == 0))
                        return WSH_EPROTO;
                    c = (unsigned char)(hi * 16 + lo);
                    k += 2;
                }
                if (o + 1 >= cap)
                    return WSH_ETOOBIG;
                out[o++] = (char)c;
            }
            out[o] = 0;
            *out_len = o;
        }
        i = end + 1;
    }
    return found;
}

/* ------------------------------------------------------------------ */
/* Origin allow-list                                                   */

struct origin {
    const char *scheme;
    size_t scheme_len;
    const char *host; /* without a "*." prefix */
    size_t host_len;
    bool wildcard; /* entry only: host was "*.domain" */
    long port;     /* -1: none given and no default for the scheme */
};

static long default_port(const char *scheme, size_t n)
{
    if ((n == 4 && strncasecmp(scheme, "http", 4) == 0) ||
        (n == 2 && strncasecmp(scheme, "ws", 2) == 0))
        return 80;
    if ((n == 5 && strncasecmp(scheme, "https", 5) == 0) ||
        (n == 3 && strncasecmp(scheme, "wss", 3) == 0))
        return 443;
    return -1;
}

static bool is_alpha(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* Parses the RFC 6454 6.2 serialisation scheme "://" host [ ":" port ].
 * Anything else (a path, userinfo, a query, whitespace, "null") fails. */
static bool parse_origin(const char *s, size_t n, bool allow_wildcard, struct origin *o)
{
    size_t i = 0;
    if (n == 0 || n > WSH_AUTH_ORIGIN_MAX || !is_alpha((unsigned char)s[0]))
        return false;
    while (i < n && (is_alpha((unsigned char)s[i]) || is_digit((unsigned char)s[i]) ||
                     s[i] == '+' || s[i] == '-' || s[i] == '.'))
        i++;
    if (n - i < 3 || memcmp(s + i, "://", 3) != 0)
        return false;
    o->scheme = s;
    o->scheme_len = i;
    i += 3;
    o->wildcard = false;
    if (allow_wildcard && n - i >= 2 && s[i] == '*' && s[i + 1] == '.') {
        o->wildcard = true;
        i += 2;
    }
    size_t h = i;
    if (i < n && s[i] == '[') {
        /* IPv6 literal: hex digits, ':' and '.' inside brackets. */
        i++;
        while (i < n && (hexval((unsigned char)s[i]) >= 0 || s[i] == ':' || s[i] == '.'))
            i++;
        if (i >= n || s[i] != ']' || o->wildcard)
            return false;
        i++;
    } else {
        while (i < n && (is_alpha((unsigned char)s[i]) || is_digit((unsigned char)s[i]) ||
                         s[i] == '-' || s[i] == '.'))
            i++;
    }
    if (i == h)
        return false;
    o->host = s + h;
    o->host_len = i - h;
    o->port = default_port(o->scheme, o->scheme_len);
    if (i < n && s[i] == ':') {
        i++;
        size_t p0 = i;
        long port = 0;
        while (i < n && is_digit((unsigned char)s[i]) && i - p0 < 5)
            port = port * 10 + (s[i++] - '0');
        if (i == p0 || port == 0 || port > 65535)
            return false;
        o->port = port;
    }
    return i == n;
}

static bool origin_matches(const struct origin *e, const struct origin *o)
{
    if (e->scheme_len != o->scheme_len || strncasecmp(e->scheme, o->scheme, e->scheme_len) != 0 ||
        e->port != o->port)
        return false;
    if (!e->wildcard) {
        return e->host_len == o->host_len && strncasecmp(e->host, o->host, e->host_len) == 0;
    }
    /* "*.example.com" needs at least one label before ".example.com". */
    if (o->host_len < e->host_len + 2)
        return false;
    const char *tail = o->host + o->host_len - e->host_len;
    return tail[-1] == '.' && tail[-2] != '.' && strncasecmp(tail, e->host, e->host_len) == 0;
}

bool wsh_origin_entry_valid(const char *s)
{
    struct origin e;
    return strcmp(s, "*") == 0 || parse_origin(s, strlen(s), true, &e);
}

bool wsh_origin_allowed(const struct wsh_origin_list *list, const char *origin, size_t len)
{
    if (list == NULL)
        return false;
    if (origin == NULL)
        return list->allow_missing;
    for (size_t i = 0; i < list->nentries; i++) {
        if (strcmp(list->entries[i], "*") == 0)
            return true;
    }
    struct origin o;
    if (!parse_origin(origin, len, false, &o))
        return false;
    for (size_t i = 0; i < list->nentries; i++) {
        struct origin e;
        const char *s = list->entries[i];
        if (parse_origin(s, strlen(s), true, &e) && origin_matches(&e, &o))
            return true;
    }
    return false;
}

/* ------------------------------------------------------------------ */
/* API key                                                             */

bool wsh_auth_apikey_equal(const void *expected, size_t elen, const void *given, size_t glen)
{
    if (expected == NULL || elen == 0 || (given == NULL && glen > 0))
        return false;
    /* Every byte given is compared, with the expected key repeated under
     * it, so the time depends on glen, the caller's own, and not on where
     * the first difference is nor on the key. No digest: OpenSSL 3
     * allocates for one, and a key refused for want of memory would read
     * to the caller as a wrong key. */
    const unsigned char *e = expected, *g = given;
    unsigned diff = elen != glen;
    for (size_t i = 0; i < glen; i++)
        diff |= (unsigned)(e[i % elen] ^ g[i]);
    return diff == 0;
}

/* ------------------------------------------------------------------ */
/* Deny list (a wsh_expset of jti values)                               */

int wsh_auth_deny(struct wsh_auth *a, const char *jti, size_t len, int64_t until_ms, int64_t now_ms)
{
    if (a == NULL || jti == NULL)
        return WSH_EINVAL;
    if (len == 0 || len > WSH_AUTH_JTI_MAX)
        return WSH_ETOOBIG;
    return wsh_expset_add(a->deny, jti, len, until_ms, now_ms);
}

bool wsh_auth_denied(const struct wsh_auth *a, const char *jti, size_t len, int64_t now_ms)
{
    if (a == NULL || jti == NULL || len == 0 || len > WSH_AUTH_JTI_MAX)
        return false;
    return wsh_expset_has(a->deny, jti, len, now_ms);
}

bool wsh_auth_undeny(struct wsh_auth *a, const char *jti, size_t len)
{
    if (a == NULL || jti == NULL || len == 0 || len > WSH_AUTH_JTI_MAX)
        return false;
    return wsh_expset_remove(a->deny, jti, len);
}

size_t wsh_auth_deny_count(const struct wsh_auth *a)
{
    return a != NULL ? wsh_expset_count(a->deny) : 0;
}
