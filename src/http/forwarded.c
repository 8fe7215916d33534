/* The client behind trusted HTTP proxies: address blocks ("10.0.0.0/8")
 * and X-Forwarded-For read from the right, as nginx's real_ip module does
 * with real_ip_recursive on. Each proxy appends the address it got the
 * request from, so the entries at the right were written by proxies we
 * trust and anything further left by whoever the first untrusted hop was:
 * the rightmost address that is not a trusted proxy is the client, and
 * nothing left of it is read, because the client could have written it. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <strings.h>

#include "wshub/http.h"

#define ENTRY_MAX 64 /* "[ffff:...:ffff]:65535" is 47 bytes */

/* Text of an address without a port into family and 16 bytes. */
static bool addr_parse(const char *s, size_t len, uint8_t *family, uint8_t addr[16])
{
    char tmp[ENTRY_MAX];
    if (len == 0 || len >= sizeof(tmp) || memchr(s, 0, len) != NULL)
        return false;
    memcpy(tmp, s, len);
    tmp[len] = 0;
    memset(addr, 0, 16);
    if (inet_pton(AF_INET, tmp, addr) == 1) {
        *family = 4;
        return true;
    }
    if (inet_pton(AF_INET6, tmp, addr) == 1) {
        *family = 6;
        return true;
    }
    return false;
}

bool wsh_cidr_parse(const char *s, size_t len, struct wsh_cidr *out)
{
    const char *slash = memchr(s, '/', len);
    size_t alen = slash ? (size_t)(slash - s) : len;
    if (!addr_parse(s, alen, &out->family, out->addr))
        return false;
    unsigned max = out->family == 4 ? 32 : 128;
    unsigned bits = max;
    if (slash) {
        const char *b = slash + 1;
        size_t bl = len - alen - 1;
        if (bl == 0 || bl > 3 || (bl > 1 && b[0] == '0'))
            return false;
        bits = 0;
        for (size_t i = 0; i < bl; i++) {
            if (b[i] < '0' || b[i] > '9')
                return false;
            bits = bits * 10 + (unsigned)(b[i] - '0');
        }
        if (bits > max)
            return false;
    }
    /* Bits set past the prefix ("10.0.0.1/8") are most likely a typo for
     * a single address or another block: refuse rather than guess. */
    for (unsigned i = bits; i < max; i++)
        if (out->addr[i / 8] & (0x80u >> (i % 8)))
            return false;
    out->bits = (uint8_t)bits;
    /* An IPv4-mapped block (::ffff:10.0.0.0/104) is the IPv4 one: peers
     * of a dual-stack listener are compared as IPv4 (sockaddr_bytes), and
     * would never match it as written. */
    static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (out->family == 6 && bits >= 96 && memcmp(out->addr, mapped, 12) == 0) {
        memmove(out->addr, out->addr + 12, 4);
        memset(out->addr + 4, 0, 12);
        out->family = 4;
        out->bits = (uint8_t)(bits - 96);
    }
    return true;
}

/* family 4 or 6 and the address bytes of ss; an IPv4 client of a
 * dual-stack listener (::ffff:a.b.c.d) is IPv4. */
static bool sockaddr_bytes(const struct sockaddr_storage *ss, uint8_t *family, const uint8_t **a)
{
    if (ss->ss_family == AF_INET) {
        *family = 4;
        *a = (const uint8_t *)&((const struct sockaddr_in *)ss)->sin_addr;
        return true;
    }
    if (ss->ss_family != AF_INET6)
        return false;
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(a6)) {
        *family = 4;
        *a = a6->s6_addr + 12;
    } else {
        *family = 6;
        *a = a6->s6_addr;
    }
    return true;
}

static bool prefix_equal(const uint8_t *x, const uint8_t *y, unsigned bits)
{
    unsigned whole = bits / 8, rest = bits % 8;
    if (memcmp(x, y, whole) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t m = (uint8_t)(0xFFu << (8 - rest));
    return (x[whole] & m) == (y[whole] & m);
}

bool wsh_cidr_contains(const struct wsh_cidr *set, size_t n, const struct sockaddr_storage *ss)
{
    uint8_t family;
    const uint8_t *a;
    if (!sockaddr_bytes(ss, &family, &a))
        return false;
    for (size_t i = 0; i < n; i++)
        if (set[i].family == family && prefix_equal(set[i].addr, a, set[i].bits))
            return true;
    return false;
}

/* One X-Forwarded-For entry: "192.0.2.1", "192.0.2.1:5678",
 * "2001:db8::1", "[2001:db8::1]" or "[2001:db8::1]:5678". The port, when
 * present, is dropped. */
static bool entry_parse(const char *s, size_t len, struct sockaddr_storage *out)
{
    uint8_t family, addr[16];
    if (len > 0 && s[0] == '[') {
        const char *end = memchr(s, ']', len);
        if (end == NULL)
            return false;
        size_t after = len - (size_t)(end - s) - 1;
        if (after != 0 && end[1] != ':')
            return false;
        if (!addr_parse(s + 1, (size_t)(end - s) - 1, &family, addr) || family != 6)
            return false;
    } else {
        /* One colon is IPv4 with a port; more is IPv6 without brackets. */
        const char *colon = memchr(s, ':', len);
        size_t alen = len;
        if (colon && memchr(colon + 1, ':', len - (size_t)(colon - s) - 1) == NULL)
            alen = (size_t)(colon - s);
        if (!addr_parse(s, alen, &family, addr))
            return false;
        if (alen != len && family != 4)
            return false;
    }
    memset(out, 0, sizeof(*out));
    if (family == 4) {
        struct sockaddr_in *a = (struct sockaddr_in *)out;
        a->sin_family = AF_INET;
        memcpy(&a->sin_addr, addr, 4);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)out;
        a->sin6_family = AF_INET6;
        memcpy(&a->sin6_addr, addr, 16);
    }
    return true;
}

static bool is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

bool wsh_http_forwarded_for(const struct wsh_http_request *req, const struct wsh_cidr *trusted,
                            size_t ntrusted, struct sockaddr_storage *out)
{
    bool have = false; /* *out holds the last trusted proxy seen */
    /* Several X-Forwarded-For fields make one list, in order (RFC 9110
     * 5.3): walk the fields from the last, each from its end. */
    for (size_t h = req->nheaders; h-- > 0;) {
        const struct wsh_http_header *f = &req->headers[h];
        if (f->name_len != 15 || strncasecmp(f->name, "X-Forwarded-For", 15) != 0)
            continue;
        size_t end = f->value_len;
        for (;;) {
            size_t start = end;
            while (start > 0 && f->value[start - 1] != ',')
                start--;
            size_t a = start, b = end;
            while (a < b && is_ows(f->value[a]))
                a++;
            while (b > a && is_ows(f->value[b - 1]))
                b--;
            struct sockaddr_storage ss;
            if (!entry_parse(f->value + a, b - a, &ss))
                return have; /* unreadable: the nearest proxy is all we know */
            *out = ss;
            if (!wsh_cidr_contains(trusted, ntrusted, &ss))
                return true;
            have = true;
            if (start == 0)
                break;
            end = start - 1;
        }
    }
    return have;
}
