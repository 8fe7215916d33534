/* Internal to src/hub: what auth.c (tokens, key sets) and jwks.c (the JWK
 * format) share. Not installed; nothing outside src/hub includes it. */
#ifndef WSH_HUB_JOSE_H
#define WSH_HUB_JOSE_H

#include <jansson.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wshub/auth.h"

/* What one key verifies with: a parsed public key, or an HMAC secret.
 * Exactly one of the two is set once a key has loaded. Owned. */
struct jose_material {
    EVP_PKEY *pk;
    uint8_t *secret;
    size_t secret_len;
};

/* Frees m's contents (the secret is cleansed first) and zeroes it. */
void jose_material_free(struct jose_material *m);

/* Strict base64url without padding (RFC 7515 2): only the URL-safe
 * alphabet, a length that is not 1 mod 4, and zero unused trailing bits,
 * so each value has one encoding. out holds len * 3 / 4 bytes. */
bool jose_b64url_decode(const char *in, size_t len, uint8_t *out, size_t *out_len);

/* Whether two kids are the same; a missing kid (NULL) is one value of its
 * own. A key set holds at most one key per (alg, kid). */
bool jose_same_kid(const char *a, const char *b);

/* Checks k exactly as wsh_auth_create() does and, when it is usable for
 * its alg, hands back what it verifies with. Otherwise returns false and
 * sets *why to a short phrase in static storage: jose_no_memory itself
 * (compare the pointer) when memory ran out, which is not the key's
 * fault. */
bool jose_key_load(const struct wsh_auth_key *k, struct jose_material *m, const char **why);
extern const char jose_no_memory[];

/* jwks.c: turns one JWK object into key material by its "kty" alone (RSA,
 * EC, OKP, oct); whether that fits the key's alg is jose_key_load()'s
 * check. Returns false with *why set when a member is missing, malformed
 * or out of range. */
bool jose_jwk_import(json_t *jwk, struct jose_material *m, const char **why);

#endif
