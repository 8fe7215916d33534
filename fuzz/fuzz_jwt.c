/* Auth: input = 1 mode byte + data. Modes: a token against an HS256 + ES256
 * + EdDSA key set (no crash, no leak, identities freed); the glob matcher with
 * pattern/input split by the second byte, checked against a dynamic-
 * programming reference; the Bearer, query-token and Origin parsers. */
#include <stdlib.h>
#include <string.h>

#include "wshub/auth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char hs_secret[] = "fuzz-secret-fuzz-secret-fuzz-sec"; /* 32 bytes */
/* Public half of a throwaway P-256 key; tokens signed with its private
 * half seed the corpus (fuzz/corpus/jwt/es256_valid). */
static const char ec_pub[] = "-----BEGIN PUBLIC KEY-----\n"
                             "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEf8ROSBhEpg9oFDILBTk6VsgyiCys\n"
                             "ES4FOzxoaPPBRoGoUXIYejQnVL+t8FVm9+D9IzclAFQqWKAxAFXu+u6GHw==\n"
                             "-----END PUBLIC KEY-----\n";

/* Public half of a throwaway Ed25519 key (fuzz/corpus/jwt/eddsa_valid). */
static const char ed_pub[] = "-----BEGIN PUBLIC KEY-----\n"
                             "MCowBQYDK2VwAyEA9ShLRzDhJp6yj6cEO0voC06w8yNmCOkg2RzywPuUH1Y=\n"
                             "-----END PUBLIC KEY-----\n";

static bool glob_ref(const char *p, size_t pl, const char *s, size_t sl)
{
    bool *m = calloc((pl + 1) * (sl + 1), 1);
    if (m == NULL)
        abort();
    for (size_t i = pl + 1; i-- > 0;) {
        for (size_t j = sl + 1; j-- > 0;) {
            bool *c = &m[i * (sl + 1) + j];
            if (i == pl)
                *c = j == sl;
            else if (p[i] == '*')
                *c = m[(i + 1) * (sl + 1) + j] || (j < sl && s[j] != ':' && c[1]);
            else
                *c = j < sl && p[i] == s[j] && m[(i + 1) * (sl + 1) + j + 1];
        }
    }
    bool r = m[0];
    free(m);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct wsh_auth *auth;
    if (auth == NULL) {
        struct wsh_auth_key keys[] = {
            { .alg = WSH_AUTH_HS256, .key = (const uint8_t *)hs_secret, .key_len = 32 },
            { .alg = WSH_AUTH_ES256,
              .key = (const uint8_t *)ec_pub,
              .key_len = sizeof(ec_pub) - 1 },
            { .alg = WSH_AUTH_EDDSA,
              .key = (const uint8_t *)ed_pub,
              .key_len = sizeof(ed_pub) - 1 },
        };
        struct wsh_auth_opts o = { .keys = keys, .nkeys = 3, .exp_optional = true };
        if (wsh_auth_create(&o, &auth, NULL) != WSH_OK)
            abort();
        if (wsh_auth_deny(auth, "revoked", 7, INT64_MAX, 0) != WSH_OK)
            abort();
    }
    if (size < 2)
        return 0;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    switch (data[0] % 3) {
    case 0: {
        struct wsh_identity id = { 0 };
        int err = -1;
        int rc = wsh_auth_verify(auth, s, n, 1700000000000LL, &id, &err);
        if ((rc == WSH_OK) != (err == WSH_AUTH_OK))
            abort();
        if (rc == WSH_OK) {
            if (id.sub_len == 0 || strlen(id.sub) != id.sub_len)
                abort();
            for (size_t i = 0; i < id.nchannels; i++)
                (void)wsh_auth_can_subscribe(&id, id.channels[i], strlen(id.channels[i]));
            for (size_t i = 0; i < id.npublish; i++)
                (void)wsh_auth_can_publish(&id, id.publish[i], strlen(id.publish[i]));
        }
        wsh_identity_free(&id);
        break;
    }
    case 1: {
        size_t pl = data[1] % n;
        const char *p = s + 1, *in = s + 1 + pl;
        size_t il = n - 1 - pl;
        bool got = wsh_auth_glob(p, pl, in, il);
        if ((pl + 1) * (il + 1) <= (1u << 20) && got != glob_ref(p, pl, in, il))
            abort();
        (void)wsh_auth_personal_allowed(in, il, p, pl);
        break;
    }
    default: {
        const char *tok;
        size_t tl, ol;
        char out[256];
        if (wsh_auth_bearer(s, n, &tok, &tl) == WSH_OK && (tl == 0 || tok < s || tok + tl > s + n))
            abort();
        int rc = wsh_auth_query_token(s, n, out, sizeof(out), &ol);
        if (rc == 1 && (ol >= sizeof(out) || out[ol] != 0))
            abort();
        static const char *const entries[] = { "https://a.example.com", "https://*.example.org",
                                               "http://localhost:8080", "http://[::1]:3000" };
        struct wsh_origin_list l = { .entries = entries, .nentries = 4 };
        (void)wsh_origin_allowed(&l, s, n);
        (void)wsh_auth_apikey_equal("key", 3, s, n);
        break;
    }
    }
    return 0;
}
