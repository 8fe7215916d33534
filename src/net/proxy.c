/* The PROXY protocol, versions 1 and 2 (HAProxy's proxy-protocol.txt):
 * the header a load balancer (HAProxy, nginx's stream module, AWS NLB,
 * Envoy) puts before the client's first byte so the server learns the
 * client's address and not the balancer's. Sans-I/O, like the frame
 * parser: the caller hands in what it has read so far and gets back the
 * header's length, "more", or an error decided at the first byte that
 * rules a valid header out. No allocation. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "net.h"

static const uint8_t v2_sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                    0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

#define V1_MAX 107 /* the longest v1 line, CRLF included (spec 2.1) */

const char *wsh_proxy_strerror(int rc)
{
    switch (rc) {
    case WSH_PROXY_ESIG:
        return "not a PROXY protocol header";
    case WSH_PROXY_EV1:
        return "malformed PROXY v1 line";
    case WSH_PROXY_EV2:
        return "malformed PROXY v2 header";
    case WSH_PROXY_ETOOBIG:
        return "PROXY v2 header longer than " WSH_PROXY_MAX_STR " bytes";
    case WSH_PROXY_ECRC:
        return "PROXY v2 header checksum mismatch";
    default:
        return "ok";
    }
}

/* ------------------------------------------------------------------ */
/* Version 1: "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"         */

/* A port in canonical decimal: 0..65535, no sign, no leading zero. */
static bool v1_port(const char *s, size_t n, uint16_t *out)
{
    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return false;
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint32_t)(s[i] - '0');
    }
    if (v > 65535)
        return false;
    *out = (uint16_t)v;
    return true;
}

/* One address in the family the line named. inet_pton takes only the
 * standard forms: dotted decimal without leading zeros for IPv4, RFC 4291
 * text for IPv6. */
static bool v1_addr(int family, const char *s, size_t n, struct sockaddr_storage *ss)
{
    char tmp[INET6_ADDRSTRLEN];
    if (n == 0 || n >= sizeof(tmp))
        return false;
    memcpy(tmp, s, n);
    tmp[n] = 0;
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        return inet_pton(AF_INET, tmp, &a->sin_addr) == 1;
    }
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    a->sin6_family = AF_INET6;
    return inet_pton(AF_INET6, tmp, &a->sin6_addr) == 1;
}

static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

/* The fields of a whole line (CRLF excluded): exactly one space between
 * them, as the spec's sender always writes. */
static int v1_fields(const char *line, size_t len, struct wsh_proxy *out)
{
    /* "UNKNOWN": whatever follows is to be ignored, and the receiver
     * uses the real endpoints (spec 2.1). */
    if (len >= 13 && memcmp(line + 6, "UNKNOWN", 7) == 0 && (len == 13 || line[13] == ' ')) {
        out->src.ss_family = AF_UNSPEC;
        out->dst.ss_family = AF_UNSPEC;
        return WSH_OK;
    }
    const char *f[6];
    size_t fl[6], nf = 0, start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && line[i] != ' ')
            continue;
        if (nf == 6 || i == start)
            return WSH_PROXY_EV1; /* a seventh field, or two spaces */
        f[nf] = line + start;
        fl[nf++] = i - start;
        start = i + 1;
    }
    /* f[0] is "PROXY", checked as the bytes came in. */
    if (nf != 6 || fl[1] != 4)
        return WSH_PROXY_EV1;
    int family;
    if (memcmp(f[1], "TCP4", 4) == 0)
        family = AF_INET;
    else if (memcmp(f[1], "TCP6", 4) == 0)
        family = AF_INET6;
    else
        return WSH_PROXY_EV1;
    uint16_t sport, dport;
    if (!v1_addr(family, f[2], fl[2], &out->src) || !v1_addr(family, f[3], fl[3], &out->dst) ||
        !v1_port(f[4], fl[4], &sport) || !v1_port(f[5], fl[5], &dport))
        return WSH_PROXY_EV1;
    set_port(&out->src, sport);
    set_port(&out->dst, dport);
    return WSH_OK;
}

static ssize_t parse_v1(const uint8_t *p, size_t len, struct wsh_proxy *out)
{
    static const char prefix[] = "PROXY ";
    size_t n = len < 6 ? len : 6;
    if (memcmp(p, prefix, n) != 0)
        return WSH_PROXY_ESIG;
    /* The CR can sit at most at V1_MAX - 2. */
    size_t lim = len < V1_MAX - 1 ? len : V1_MAX - 1;
    for (size_t i = 6; i < lim; i++) {
        /* Only printable ASCII before the CR; a CR must end the line. */
        if (p[i] == '\r') {
            if (i + 1 == len)
                return 0;
            if (p[i + 1] != '\n')
                return WSH_PROXY_EV1;
            out->version = 1;
            int rc = v1_fields((const char *)p, i, out);
            return rc == WSH_OK ? (ssize_t)(i + 2) : rc;
        }
        if (p[i] < 0x20 || p[i] > 0x7e)
            return WSH_PROXY_EV1;
    }
    /* No CRLF within the longest line the spec allows. */
    return len >= V1_MAX - 1 ? WSH_PROXY_EV1 : 0;
}

/* ------------------------------------------------------------------ */
/* Version 2: 12-byte signature, version and command, family and        */
/* transport, 16-bit length, addresses, TLVs                            */

#define PP2_TYPE_CRC32C 0x03

/* Bit by bit, with the reflected polynomial: a header is checked once per
 * connection and is a few hundred bytes, so a table would buy nothing. */
uint32_t wsh_crc32c(uint32_t crc, const uint8_t *p, size_t n)
{
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* Spec 2.2.5: the sum covers the whole header with the TLV's own 4 value
 * bytes (at p[at]) taken as zero; a receiver that checks it must refuse
 * a header that does not match. */
static bool crc_matches(const uint8_t *p, size_t len, size_t at)
{
    static const uint8_t zero[4];
    uint32_t want =
        (uint32_t)p[at] << 24 | (uint32_t)p[at + 1] << 16 | (uint32_t)p[at + 2] << 8 | p[at + 3];
    uint32_t crc = wsh_crc32c(0, p, at);
    crc = wsh_crc32c(crc, zero, 4);
    crc = wsh_crc32c(crc, p + at + 4, len - at - 4);
    return crc == want;
}

static ssize_t parse_v2(const uint8_t *p, size_t len, struct wsh_proxy *out)
{
    size_t n = len < 12 ? len : 12;
    if (memcmp(p, v2_sig, n) != 0)
        return WSH_PROXY_ESIG;
    if (len < 13)
        return 0;
    /* The high nibble is the version (2); the low one the command:
     * 0 LOCAL (the balancer's own health check), 1 PROXY. Anything else
     * must be refused (spec 2.2). */
    uint8_t vc = p[12];
    if ((vc >> 4) != 2 || (vc & 0x0f) > 1)
        return WSH_PROXY_EV2;
    if (len < 14)
        return 0;
    uint8_t fam = p[13] >> 4, proto = p[13] & 0x0f;
    if (fam > 3 || proto > 2)
        return WSH_PROXY_EV2;
    if (len < 16)
        return 0;
    size_t body = (size_t)p[14] << 8 | p[15];
    if (16 + body > WSH_PROXY_MAX)
        return WSH_PROXY_ETOOBIG;
    /* The address block each family needs; a shorter body cannot hold it. */
    static const size_t need[4] = { 0, 12, 36, 216 };
    bool proxied = (vc & 0x0f) == 1;
    if (proxied && body < need[fam])
        return WSH_PROXY_EV2;
    if (len < 16 + body)
        return 0;
    /* The TLVs after the addresses must tile the rest exactly: a length
     * that runs past the header means the sender and we disagree about
     * where the client's bytes begin. */
    size_t off = 16 + (proxied ? need[fam] : body);
    size_t crc_at = 0;
    while (off < 16 + body) {
        if (16 + body - off < 3)
            return WSH_PROXY_EV2;
        size_t tl = (size_t)p[off + 1] << 8 | p[off + 2];
        if (tl > 16 + body - off - 3)
            return WSH_PROXY_EV2;
        if (p[off] == PP2_TYPE_CRC32C) {
            if (tl != 4 || crc_at != 0) /* a 32-bit value, once */
                return WSH_PROXY_EV2;
            crc_at = off + 3;
        }
        off += 3 + tl;
    }
    if (crc_at != 0 && !crc_matches(p, 16 + body, crc_at))
        return WSH_PROXY_ECRC;
    out->version = 2;
    out->src.ss_family = AF_UNSPEC;
    out->dst.ss_family = AF_UNSPEC;
    /* LOCAL, UNSPEC, a UNIX socket or a datagram source: no client
     * address to use, so the connection's own endpoints stand. */
    if (!proxied || proto != 1 || (fam != 1 && fam != 2))
        return (ssize_t)(16 + body);
    const uint8_t *a = p + 16;
    memset(&out->src, 0, sizeof(out->src));
    memset(&out->dst, 0, sizeof(out->dst));
    if (fam == 1) {
        struct sockaddr_in *s = (struct sockaddr_in *)&out->src;
        struct sockaddr_in *d = (struct sockaddr_in *)&out->dst;
        s->sin_family = d->sin_family = AF_INET;
        memcpy(&s->sin_addr, a, 4);
        memcpy(&d->sin_addr, a + 4, 4);
        memcpy(&s->sin_port, a + 8, 2); /* both already in network order */
        memcpy(&d->sin_port, a + 10, 2);
    } else {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&out->src;
        struct sockaddr_in6 *d = (struct sockaddr_in6 *)&out->dst;
        s->sin6_family = d->sin6_family = AF_INET6;
        memcpy(&s->sin6_addr, a, 16);
        memcpy(&d->sin6_addr, a + 16, 16);
        memcpy(&s->sin6_port, a + 32, 2);
        memcpy(&d->sin6_port, a + 34, 2);
    }
    return (ssize_t)(16 + body);
}

ssize_t wsh_proxy_parse(const uint8_t *p, size_t len, struct wsh_proxy *out)
{
    if (len == 0)
        return 0;
    /* The first byte tells the versions apart: 'P' or CR. */
    if (p[0] == 'P')
        return parse_v1(p, len, out);
    if (p[0] == 0x0D)
        return parse_v2(p, len, out);
    return WSH_PROXY_ESIG;
}
