/* Config file parser: input = a whole config document (the operator's
 * file, not peer input, but a parser all the same). It is either refused
 * with a non-empty "<path>: <reason>" message, or it parses into a config
 * whose every namespace is found again by a channel in it (the lookup's
 * binary search needs the names sorted, unique and free of ':'), whose
 * bounds hold, and which frees cleanly. */
#include <stdlib.h>
#include <string.h>

#include "wshub/config.h"
#include "wshub/proto.h"
#include "wshub/status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wsh_hub_config cfg;
    wsh_config_defaults(&cfg);
    char err[256];
    memset(err, 'x', sizeof(err));
    int rc = wsh_config_parse((const char *)data, size, &cfg, err, sizeof(err));
    if (rc == WSH_EINVAL) {
        if (err[0] == '\0' || memchr(err, '\0', sizeof(err)) == NULL || cfg.nnamespaces != 0)
            abort();
        return 0;
    }
    if (rc != WSH_OK)
        return 0; /* out of memory */
    char ch[WSH_PROTO_MAX_NAMESPACE + 8];
    for (size_t i = 0; i < cfg.nnamespaces; i++) {
        size_t n = strlen(cfg.namespaces[i].name);
        if (n == 0 || n > WSH_PROTO_MAX_NAMESPACE || memchr(cfg.namespaces[i].name, ':', n) != NULL)
            abort();
        memcpy(ch, cfg.namespaces[i].name, n);
        memcpy(ch + n, ":room", 5);
        if (wsh_config_namespace(&cfg, ch, n + 5) != &cfg.namespaces[i])
            abort();
    }
    if (wsh_config_namespace(&cfg, "room", 4) != &cfg.default_ns)
        abort();
    const struct wsh_limits_config *l = &cfg.limits;
    if (l->unauth_max_message > l->max_message || !(l->publish_rate > 0) || l->ipv6_prefix < 32 ||
        l->ipv6_prefix > 128 || l->max_client_memory > (1ull << 50))
        abort();
    wsh_config_free(&cfg);
    return 0;
}
