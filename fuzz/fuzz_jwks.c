/* JWK Sets (src/hub/jwks.c): input = a JWKS document. Invariants: the
 * verdict is one of OK, EINVAL (with a reason) or ENOMEM; on OK there are
 * at most WSH_AUTH_KEYS_MAX keys, on_skip was told exactly nskipped times,
 * and every key handed back is one wsh_auth_create() accepts (the parser
 * never passes on a key the key set would refuse); a second parse gives the
 * same answer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wshub/auth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void count_skip(void *ud, size_t index, const char *kid, const char *why)
{
    (void)index;
    (void)kid;
    if (why == NULL || why[0] == '\0')
        abort(); /* every skip has a reason */
    (*(size_t *)ud)++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256] = "x";
    size_t skips = 0;
    struct wsh_jwks j;
    memset(&j, 0, sizeof(j));
    int rc = wsh_jwks_parse((const char *)data, size, count_skip, &skips, &j, err, sizeof(err));
    if (rc == WSH_EINVAL) {
        if (err[0] == '\0' || memchr(err, '\0', sizeof(err)) == NULL || j.keys != NULL)
            abort();
        return 0;
    }
    if (rc == WSH_ENOMEM)
        return 0;
    if (rc != WSH_OK || j.nkeys > WSH_AUTH_KEYS_MAX || skips != j.nskipped)
        abort();
    if (j.nkeys > 0) {
        struct wsh_auth_opts o = { .keys = j.keys, .nkeys = j.nkeys };
        struct wsh_auth *a = NULL;
        int bad = -1;
        int crc = wsh_auth_create(&o, &a, &bad);
        if (crc != WSH_OK && crc != WSH_ENOMEM) {
            fprintf(stderr, "key %d of the set refused by wsh_auth_create\n", bad);
            abort();
        }
        wsh_auth_destroy(a);
    }
    struct wsh_jwks again;
    memset(&again, 0, sizeof(again));
    if (wsh_jwks_parse((const char *)data, size, NULL, NULL, &again, err, sizeof(err)) != WSH_OK ||
        again.nkeys != j.nkeys || again.nskipped != j.nskipped)
        abort();
    for (size_t i = 0; i < j.nkeys; i++) {
        if (again.keys[i].alg != j.keys[i].alg || again.keys[i].key_len != j.keys[i].key_len)
            abort();
    }
    wsh_jwks_free(&again);
    wsh_jwks_free(&j);
    return 0;
}
