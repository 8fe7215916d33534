/* PROXY protocol header parser (src/net/proxy.c). Checks, for any input:
 * the verdict never depends on bytes past the header; every shorter
 * prefix of a valid header asks for more; an error, once given, is given
 * for every longer prefix; a parsed header names a client in one family
 * or none, and a v2 or IPv4 v1 header's addresses re-encode to the very
 * bytes they came from. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net.h"

/* Prefixes checked: all of the short ones, then a sample. */
static bool checked(size_t k)
{
    return k < 512 || k % 61 == 0;
}

static void check_v1(const uint8_t *data, ssize_t r, const struct wsh_proxy *px)
{
    if (px->src.ss_family != AF_INET) {
        /* IPv6 text has several spellings of one address; UNKNOWN has
         * none to check. */
        return;
    }
    const struct sockaddr_in *s = (const struct sockaddr_in *)&px->src;
    const struct sockaddr_in *d = (const struct sockaddr_in *)&px->dst;
    char sa[INET_ADDRSTRLEN], da[INET_ADDRSTRLEN], line[128];
    inet_ntop(AF_INET, &s->sin_addr, sa, sizeof(sa));
    inet_ntop(AF_INET, &d->sin_addr, da, sizeof(da));
    int n = snprintf(line, sizeof(line), "PROXY TCP4 %s %s %u %u\r\n", sa, da, ntohs(s->sin_port),
                     ntohs(d->sin_port));
    if (n != r || memcmp(line, data, (size_t)n) != 0)
        abort();
}

static void check_v2(const uint8_t *data, const struct wsh_proxy *px)
{
    if (px->src.ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)&px->src;
        const struct sockaddr_in *d = (const struct sockaddr_in *)&px->dst;
        if (data[12] != 0x21 || data[13] != 0x11 || memcmp(data + 16, &s->sin_addr, 4) != 0 ||
            memcmp(data + 20, &d->sin_addr, 4) != 0 || memcmp(data + 24, &s->sin_port, 2) != 0 ||
            memcmp(data + 26, &d->sin_port, 2) != 0)
            abort();
    } else if (px->src.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&px->src;
        const struct sockaddr_in6 *d = (const struct sockaddr_in6 *)&px->dst;
        if (data[12] != 0x21 || data[13] != 0x21 || memcmp(data + 16, &s->sin6_addr, 16) != 0 ||
            memcmp(data + 32, &d->sin6_addr, 16) != 0 || memcmp(data + 48, &s->sin6_port, 2) != 0 ||
            memcmp(data + 50, &d->sin6_port, 2) != 0)
            abort();
    } else if (data[12] == 0x21 && data[13] == 0x11) {
        abort(); /* a TCP over IPv4 client must be named */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wsh_proxy px;
    ssize_t r = wsh_proxy_parse(data, size, &px);
    if (r > 0) {
        if ((size_t)r > size || r > WSH_PROXY_MAX)
            abort();
        struct wsh_proxy again;
        if (wsh_proxy_parse(data, (size_t)r, &again) != r)
            abort();
        int f = px.src.ss_family;
        if (f != px.dst.ss_family || (f != AF_UNSPEC && f != AF_INET && f != AF_INET6))
            abort();
        if (px.version == 1)
            check_v1(data, r, &px);
        else if (px.version == 2)
            check_v2(data, &px);
        else
            abort();
    } else if (r != 0 && r != WSH_PROXY_ESIG && r != WSH_PROXY_EV1 && r != WSH_PROXY_EV2 &&
               r != WSH_PROXY_ETOOBIG && r != WSH_PROXY_ECRC) {
        abort();
    }
    if (r < 0 && strcmp(wsh_proxy_strerror((int)r), "ok") == 0)
        abort();
    /* Prefixes: "more" before the end of a valid header; a bad header's
     * error from its first deciding byte on. */
    size_t end = r > 0 ? (size_t)r : size;
    bool failed = false;
    for (size_t k = 0; k < end; k++) {
        if (!checked(k))
            continue;
        struct wsh_proxy tmp;
        ssize_t p = wsh_proxy_parse(data, k, &tmp);
        if (r >= 0 && p != 0)
            abort();
        if (r < 0) {
            if (p != 0 && p != r)
                abort();
            if (failed && p == 0)
                abort();
            failed = failed || p != 0;
        }
    }
    return 0;
}
