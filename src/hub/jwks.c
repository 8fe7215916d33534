/* JWK Sets (RFC 7517), the form identity providers publish their token
 * signing keys in: a set is split into keys, and each key is turned into
 * what wsh_auth verifies with (RFC 7518 6 for RSA, EC and oct keys, RFC
 * 8037 2 for OKP). Whether a key fits its alg is checked in one place,
 * auth.c's jose_key_load(), for every form a key comes in. */
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jose.h"
#include "wshub/json.h"

/* Bounds on what one signature check costs: a token without `kid` is tried
 * against every key of its alg, so a set of 16 keys of 16,384 bits with
 * 64-bit exponents cost ~78 ms of a worker per forged token. 8,192 bits
 * and 32-bit exponents hold every key in use (65537 is 17 bits). */
#define RSA_N_MAX 1024u /* bytes: 8192-bit moduli */
#define RSA_E_MAX 4u    /* bytes: public exponents fit 32 bits */
#define KID_MAX   256u  /* bytes of a "kid" we keep */
#define COORD_MAX 66u   /* bytes of a P-521 coordinate */

/* Decodes the base64url string member `name` into buf[0..cap). False when
 * it is absent, not a string, empty, too long or not strict base64url. */
static bool member_bytes(json_t *jwk, const char *name, uint8_t *buf, size_t cap, size_t *n)
{
    json_t *v = json_object_get(jwk, name);
    if (!json_is_string(v))
        return false;
    size_t len = json_string_length(v);
    if (len == 0 || len / 4 * 3 + 2 > cap)
        return false;
    return jose_b64url_decode(json_string_value(v), len, buf, n);
}

/* Builds a public key of type `name` ("RSA", "EC") from OSSL_PARAMs. */
static EVP_PKEY *from_params(const char *name, OSSL_PARAM_BLD *bld)
{
    EVP_PKEY *pk = NULL;
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, name, NULL);
    if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pk = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pk;
}

/* RFC 7518 6.3.1: "n" and "e" as unsigned big-endian integers. */
static bool import_rsa(json_t *jwk, struct jose_material *m, const char **why)
{
    uint8_t nb[RSA_N_MAX + 2], eb[RSA_E_MAX + 2];
    size_t nlen, elen;
    if (!member_bytes(jwk, "n", nb, sizeof(nb), &nlen) || nlen > RSA_N_MAX + 1) {
        *why = "RSA n missing, malformed or over 8192 bits";
        return false;
    }
    if (!member_bytes(jwk, "e", eb, sizeof(eb), &elen) || elen > RSA_E_MAX) {
        *why = "RSA e missing, malformed or over 32 bits";
        return false;
    }
    /* Both odd and e > 1: an even modulus or exponent is no RSA key, and
     * with e = 1 anyone can sign. By value, not length: "AAE" is 1 too
     * (leading zero bytes, which RFC 7518 6.3.1.2 forbids, are skipped
     * before the check, not trusted). */
    size_t ez = 0;
    while (ez < elen && eb[ez] == 0)
        ez++;
    if ((nb[nlen - 1] & 1) == 0 || (eb[elen - 1] & 1) == 0 || elen - ez == 0 ||
        (elen - ez == 1 && eb[elen - 1] == 1)) {
        *why = "RSA n or e is not a valid value";
        return false;
    }
    BIGNUM *n = BN_bin2bn(nb, (int)nlen, NULL);
    BIGNUM *e = BN_bin2bn(eb, (int)elen, NULL);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (n != NULL && e != NULL && bld != NULL && OSSL_PARAM_BLD_push_BN(bld, "n", n) == 1 &&
        OSSL_PARAM_BLD_push_BN(bld, "e", e) == 1)
        m->pk = from_params("RSA", bld);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    *why = m->pk == NULL ? "RSA key rejected by OpenSSL" : NULL;
    return m->pk != NULL;
}

/* The EC curves of RFC 7518 6.2.1.1, each with its OpenSSL group, its
 * coordinate size and the one alg defined on it (3.4). */
static const struct ec_curve {
    const char *crv, *group;
    size_t size;
    enum wsh_auth_alg alg;
} curves[] = { { "P-256", "prime256v1", 32, WSH_AUTH_ES256 },
               { "P-384", "secp384r1", 48, WSH_AUTH_ES384 },
               { "P-521", "secp521r1", 66, WSH_AUTH_ES512 } };

static const char no_curve[] = "EC crv missing or not P-256, P-384 or P-521";

static const struct ec_curve *ec_curve(json_t *jwk)
{
    const char *crv = json_string_value(json_object_get(jwk, "crv"));
    for (size_t c = 0; crv != NULL && c < sizeof(curves) / sizeof(curves[0]); c++) {
        if (strcmp(crv, curves[c].crv) == 0)
            return &curves[c];
    }
    return NULL;
}

/* RFC 7518 6.2.1: "x" and "y" each exactly the curve's coordinate size. */
static bool import_ec(json_t *jwk, struct jose_material *m, const char **why)
{
    const struct ec_curve *cv = ec_curve(jwk);
    if (cv == NULL) {
        *why = no_curve;
        return false;
    }
    uint8_t x[COORD_MAX + 2], y[COORD_MAX + 2], pub[1 + 2 * COORD_MAX];
    size_t sz = cv->size, xl, yl;
    /* RFC 7518 6.2.1.2 asks for the full size, but some encoders drop
     * leading zero bytes (PyJWT before 2.8 among them: half of all P-521
     * keys). The value is the same integer either way, so it is padded. */
    if (!member_bytes(jwk, "x", x, sizeof(x), &xl) || xl > sz ||
        !member_bytes(jwk, "y", y, sizeof(y), &yl) || yl > sz) {
        *why = "EC x or y missing, malformed or over the curve's size";
        return false;
    }
    pub[0] = 0x04; /* SEC 1 2.3.3: uncompressed point */
    memset(pub + 1, 0, 2 * sz);
    memcpy(pub + 1 + sz - xl, x, xl);
    memcpy(pub + 1 + 2 * sz - yl, y, yl);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (bld != NULL &&
        OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, cv->group, 0) == 1 &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, 1 + 2 * sz) == 1)
        m->pk = from_params("EC", bld);
    OSSL_PARAM_BLD_free(bld);
    /* A point off the curve is what invalid-curve attacks are made of:
     * check it rather than trust the importer to. */
    EVP_PKEY_CTX *ctx = m->pk != NULL ? EVP_PKEY_CTX_new_from_pkey(NULL, m->pk, NULL) : NULL;
    bool ok = ctx != NULL && EVP_PKEY_public_check(ctx) == 1;
    EVP_PKEY_CTX_free(ctx);
    *why = ok ? NULL : "EC point not on its curve";
    return ok;
}

/* RFC 8037 2: "x" is the raw public key. X25519/X448 are for key
 * agreement, not signatures, and are not understood here. */
static bool import_okp(json_t *jwk, struct jose_material *m, const char **why)
{
    const char *crv = json_string_value(json_object_get(jwk, "crv"));
    int type = EVP_PKEY_NONE;
    size_t want = 0;
    if (crv != NULL && strcmp(crv, "Ed25519") == 0) {
        type = EVP_PKEY_ED25519;
        want = 32;
    } else if (crv != NULL && strcmp(crv, "Ed448") == 0) {
        type = EVP_PKEY_ED448;
        want = 57;
    } else {
        *why = "OKP crv missing or not Ed25519 or Ed448";
        return false;
    }
    uint8_t x[64];
    size_t xl;
    if (!member_bytes(jwk, "x", x, sizeof(x), &xl) || xl != want) {
        *why = "OKP x missing, malformed or not the curve's size";
        return false;
    }
    m->pk = EVP_PKEY_new_raw_public_key(type, NULL, x, xl);
    *why = m->pk == NULL ? "OKP key rejected by OpenSSL" : NULL;
    return m->pk != NULL;
}

/* RFC 7518 6.4.1: "k" is the secret. */
static bool import_oct(json_t *jwk, struct jose_material *m, const char **why)
{
    json_t *k = json_object_get(jwk, "k");
    size_t len = json_is_string(k) ? json_string_length(k) : 0;
    if (len == 0 || len / 4 * 3 > WSH_AUTH_KEY_MAX) {
        *why = "oct k missing, empty or over 64 KiB";
        return false;
    }
    if ((m->secret = malloc(len / 4 * 3 + 2)) == NULL) {
        *why = jose_no_memory;
        return false;
    }
    if (!jose_b64url_decode(json_string_value(k), len, m->secret, &m->secret_len)) {
        *why = "oct k is not base64url";
        return false; /* the caller frees m */
    }
    return true;
}

bool jose_jwk_import(json_t *jwk, struct jose_material *m, const char **why)
{
    const char *kty = json_string_value(json_object_get(jwk, "kty"));
    bool ok;
    if (kty == NULL) {
        *why = "no kty";
        ok = false;
    } else if (strcmp(kty, "RSA") == 0) {
        ok = import_rsa(jwk, m, why);
    } else if (strcmp(kty, "EC") == 0) {
        ok = import_ec(jwk, m, why);
    } else if (strcmp(kty, "OKP") == 0) {
        ok = import_okp(jwk, m, why);
    } else if (strcmp(kty, "oct") == 0) {
        ok = import_oct(jwk, m, why);
    } else {
        *why = "kty not understood";
        ok = false;
    }
    ERR_clear_error();
    return ok;
}

/* ------------------------------------------------------------------ */
/* Sets                                                                */

struct jwks_mem {
    struct wsh_auth_key keys[WSH_AUTH_KEYS_MAX];
    char *kid[WSH_AUTH_KEYS_MAX];
    char *text[WSH_AUTH_KEYS_MAX]; /* compact JWK JSON, handed to jose_key_load */
    size_t text_len[WSH_AUTH_KEYS_MAX];
};

static void mem_free(struct jwks_mem *mem, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(mem->kid[i]);
        if (mem->text[i] != NULL) {
            OPENSSL_cleanse(mem->text[i], mem->text_len[i]); /* an oct key is a secret */
            free(mem->text[i]);
        }
    }
    free(mem);
}

void wsh_jwks_free(struct wsh_jwks *j)
{
    if (j == NULL)
        return;
    if (j->_mem != NULL)
        mem_free(j->_mem, j->nkeys);
    memset(j, 0, sizeof(*j));
}

/* Members that only a private or secret key has (RFC 7518 6.2.2, 6.3.2;
 * RFC 8037 2). "k" is an oct key's secret and is expected there. */
static const char *private_member(json_t *jwk)
{
    static const char *const names[] = { "d", "p", "q", "dp", "dq", "qi", "oth" };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (json_object_get(jwk, names[i]) != NULL)
            return names[i];
    }
    return NULL;
}

/* The alg a key is for: its "alg", or the one its kind allows. */
static enum wsh_auth_alg key_alg(json_t *jwk, const char **why)
{
    json_t *a = json_object_get(jwk, "alg");
    if (a != NULL) {
        enum wsh_auth_alg alg = wsh_auth_alg_parse(json_string_value(a));
        if (alg == WSH_AUTH_ALG_INVALID)
            *why = "alg not supported";
        return alg;
    }
    const char *kty = json_string_value(json_object_get(jwk, "kty"));
    if (kty != NULL && strcmp(kty, "RSA") == 0)
        return WSH_AUTH_RS256; /* the one every issuer means by an RSA key */
    const struct ec_curve *cv = ec_curve(jwk);
    if (kty != NULL && strcmp(kty, "EC") == 0 && cv != NULL)
        return cv->alg;
    if (kty != NULL && strcmp(kty, "OKP") == 0)
        return WSH_AUTH_EDDSA;
    *why = kty == NULL               ? "no kty"
           : strcmp(kty, "oct") == 0 ? "an oct key needs alg"
           : strcmp(kty, "EC") == 0  ? no_curve
                                     : "kty not understood";
    return WSH_AUTH_ALG_INVALID;
}

/* RFC 7517 4.2, 4.3: a key marked for encryption only is not ours. */
static bool for_verify(json_t *jwk, const char **why)
{
    json_t *use = json_object_get(jwk, "use");
    if (use != NULL && (!json_is_string(use) || strcmp(json_string_value(use), "sig") != 0)) {
        *why = "use is not sig";
        return false;
    }
    json_t *ops = json_object_get(jwk, "key_ops");
    if (ops == NULL)
        return true;
    size_t i;
    json_t *op;
    json_array_foreach(ops, i, op)
    {
        if (json_is_string(op) && strcmp(json_string_value(op), "verify") == 0)
            return true;
    }
    *why = "key_ops lacks verify";
    return false;
}

/* Verdicts of take() that stop the whole set, told apart by address. */
static const char too_many[] = "more usable keys than a key set holds";
static const char no_memory[] = "out of memory";

/* Takes one key of the set when it is usable, or returns why not. */
static const char *take(struct wsh_jwks *j, struct jwks_mem *mem, json_t *jwk, const char *kid)
{
    const char *why = NULL;
    if (!for_verify(jwk, &why))
        return why;
    enum wsh_auth_alg alg = key_alg(jwk, &why);
    if (alg == WSH_AUTH_ALG_INVALID)
        return why;
    char *text = json_dumps(jwk, JSON_COMPACT);
    if (text == NULL)
        return no_memory;
    struct wsh_auth_key k = { .alg = alg,
                              .kid = kid,
                              .key = (const uint8_t *)text,
                              .key_len = strlen(text),
                              .form = WSH_AUTH_KEY_JWK };
    struct jose_material m;
    bool ok = jose_key_load(&k, &m, &why);
    jose_material_free(&m);
    if (!ok && why == jose_no_memory) {
        /* Not this key's fault: the whole set fails, and is fetched again. */
        OPENSSL_cleanse(text, k.key_len);
        free(text);
        return no_memory;
    }
    for (size_t i = 0; ok && i < j->nkeys; i++) {
        if (mem->keys[i].alg == alg && jose_same_kid(mem->kid[i], kid)) {
            why = "same alg and kid as an earlier key";
            ok = false;
        }
    }
    if (!ok || j->nkeys == WSH_AUTH_KEYS_MAX) {
        OPENSSL_cleanse(text, k.key_len);
        free(text);
        return ok ? too_many : why;
    }
    size_t n = j->nkeys;
    mem->text[n] = text;
    mem->text_len[n] = k.key_len;
    if (kid != NULL && (mem->kid[n] = strdup(kid)) == NULL) {
        j->nkeys++; /* freed with the rest */
        return no_memory;
    }
    k.kid = mem->kid[n];
    mem->keys[n] = k;
    j->nkeys++;
    return NULL;
}

int wsh_jwks_parse(const char *text, size_t len, wsh_jwks_skip_fn on_skip, void *ud,
                   struct wsh_jwks *out, char *err, size_t errlen)
{
    if (text == NULL || out == NULL || err == NULL || errlen == 0)
        return WSH_EINVAL;
    err[0] = '\0';
    if (len > WSH_AUTH_JWKS_MAX) {
        snprintf(err, errlen, "over %u bytes", WSH_AUTH_JWKS_MAX);
        return WSH_EINVAL;
    }
    json_error_t je;
    bool oom;
    json_t *root = wsh_json_loadb(text, len, JSON_REJECT_DUPLICATES, &je, &oom);
    if (root == NULL && oom) {
        snprintf(err, errlen, "out of memory");
        return WSH_ENOMEM;
    }
    if (root == NULL) {
        snprintf(err, errlen, "line %d: %s", je.line, je.text);
        return WSH_EINVAL;
    }
    json_t *keys = json_object_get(root, "keys");
    if (!json_is_object(root) || !json_is_array(keys)) {
        snprintf(err, errlen, "not a JWK Set (an object with a keys array)");
        json_decref(root);
        return WSH_EINVAL;
    }
    struct wsh_jwks j = { 0 };
    struct jwks_mem *mem = calloc(1, sizeof(*mem));
    if (mem == NULL) {
        json_decref(root);
        return WSH_ENOMEM;
    }
    int rc = WSH_OK;
    size_t i;
    json_t *jwk;
    json_array_foreach(keys, i, jwk)
    {
        const char *priv = json_is_object(jwk) ? private_member(jwk) : NULL;
        if (priv != NULL) {
            snprintf(err, errlen,
                     "keys[%zu] holds private key material (member %s); publish only "
                     "public keys",
                     i, priv);
            rc = WSH_EINVAL;
            break;
        }
        json_t *jkid = json_is_object(jwk) ? json_object_get(jwk, "kid") : NULL;
        const char *kid = json_string_value(jkid);
        const char *why = !json_is_object(jwk)          ? "not an object"
                          : jkid != NULL && kid == NULL ? "kid is not a string"
                          : kid != NULL && json_string_length(jkid) > KID_MAX ? "kid over 256 bytes"
                                                                              : NULL;
        if (why == NULL)
            why = take(&j, mem, jwk, kid);
        if (why == too_many) {
            snprintf(err, errlen, "more than %u usable keys", WSH_AUTH_KEYS_MAX);
            rc = WSH_EINVAL;
            break;
        }
        if (why == no_memory) {
            rc = WSH_ENOMEM;
            break;
        }
        if (why != NULL) {
            j.nskipped++;
            if (on_skip != NULL)
                on_skip(ud, i, kid, why);
        }
    }
    json_decref(root);
    if (rc != WSH_OK) {
        mem_free(mem, j.nkeys);
        return rc;
    }
    j.keys = mem->keys;
    j._mem = mem;
    *out = j;
    return WSH_OK;
}
