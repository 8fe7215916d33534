/* What the server's own outgoing requests (the JWK Set fetch) read from
 * the environment, as curl and Go's net/http read it: the proxy of
 * HTTPS_PROXY and the exceptions of NO_PROXY. Both strings are the
 * operator's, parsed strictly: a proxy that cannot be understood stops the
 * server at start rather than sending keys' traffic around it. */
#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "wshub/http.h"

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Percent-decodes s[0..n) into out (NUL-terminated, cap bytes). False on
 * a bad escape, a NUL or control byte, or no room. */
static bool decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            int hi = i + 2 < n ? hexval(s[i + 1]) : -1;
            int lo = hi >= 0 ? hexval(s[i + 2]) : -1;
            if (lo < 0)
                return false;
            c = hi * 16 + lo;
            i += 2;
        }
        if (c < 0x20 || c == 0x7f || o + 1 >= cap)
            return false;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return true;
}

bool wsh_http_proxy_parse(const char *s, struct wsh_http_proxy *out)
{
    memset(out, 0, sizeof(*out));
    const char *rest = s;
    const char *sep = strstr(s, "://");
    if (sep != NULL) {
        if ((size_t)(sep - s) != 4 || strncasecmp(s, "http", 4) != 0)
            return false; /* https:// and socks proxies are not spoken */
        rest = sep + 3;
    }
    /* The authority ends at the first '/'; userinfo at its last '@'. */
    size_t alen = strcspn(rest, "/?#");
    if (rest[alen] != '\0' && strcmp(rest + alen, "/") != 0)
        return false; /* a proxy URL has no path, query or fragment */
    const char *at = NULL;
    for (const char *p = rest; p < rest + alen; p++)
        if (*p == '@')
            at = p;
    const char *host = rest;
    if (at != NULL) {
        const char *colon = memchr(rest, ':', (size_t)(at - rest));
        size_t ulen = colon != NULL ? (size_t)(colon - rest) : (size_t)(at - rest);
        char user[sizeof(out->auth)], pass[sizeof(out->auth)] = "";
        if (ulen == 0 || !decode(rest, ulen, user, sizeof(user)) ||
            (colon != NULL && !decode(colon + 1, (size_t)(at - colon - 1), pass, sizeof(pass))) ||
            strchr(user, ':') != NULL)
            return false;
        int n = snprintf(out->auth, sizeof(out->auth), "%s:%s", user, pass);
        if (n < 0 || (size_t)n >= sizeof(out->auth))
            return false;
        host = at + 1;
    }
    char url[sizeof(out->url.host) + 16];
    size_t hlen = (size_t)(rest + alen - host);
    if (hlen == 0 || hlen + 8 > sizeof(url))
        return false;
    memcpy(url, "http://", 7);
    memcpy(url + 7, host, hlen);
    url[7 + hlen] = '\0';
    return wsh_http_url_parse(url, &out->url);
}

/* True when `host` is `name` or a subdomain of it (name without a leading
 * dot; compared case-insensitively). */
static bool domain_match(const char *host, const char *name, size_t nlen)
{
    size_t hl = strlen(host);
    if (hl == nlen)
        return strncasecmp(host, name, nlen) == 0;
    return hl > nlen && host[hl - nlen - 1] == '.' &&
           strncasecmp(host + hl - nlen, name, nlen) == 0;
}

/* A block ("10.0.0.0/8", "fd00::/8") covers an issuer named by an IP
 * literal in it, as Go's NO_PROXY does; a name is not resolved for it. A
 * block with bits set past its prefix is no block (wsh_cidr_parse), so it
 * covers nothing. */
static bool cidr_covers(const char *e, size_t n, const char *host)
{
    struct wsh_cidr block;
    if (!wsh_cidr_parse(e, n, &block))
        return false;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (inet_pton(AF_INET, host, &((struct sockaddr_in *)&ss)->sin_addr) == 1)
        ss.ss_family = AF_INET;
    else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1)
        ss.ss_family = AF_INET6;
    else
        return false;
    return wsh_cidr_contains(&block, 1, &ss);
}

/* One NO_PROXY entry e[0..n), trimmed: does it cover host:port? */
static bool entry_covers(const char *e, size_t n, const char *host, const char *port)
{
    if (n == 1 && e[0] == '*')
        return true;
    if (memchr(e, '/', n) != NULL)
        return cidr_covers(e, n, host);
    const char *name = e, *name_end = e + n, *eport = NULL;
    if (n > 0 && e[0] == '[') {
        const char *rb = memchr(e, ']', n);
        if (rb == NULL)
            return false;
        name = e + 1;
        name_end = rb;
        if (rb + 1 < e + n) {
            if (rb[1] != ':')
                return false;
            eport = rb + 2;
        }
    } else {
        const char *c1 = memchr(e, ':', n);
        /* One colon: host:port. More: a bare IPv6 literal. */
        if (c1 != NULL && memchr(c1 + 1, ':', (size_t)(e + n - c1 - 1)) == NULL) {
            name_end = c1;
            eport = c1 + 1;
        }
    }
    if (eport != NULL) {
        size_t pl = (size_t)(e + n - eport);
        if (strlen(port) != pl || strncmp(port, eport, pl) != 0)
            return false;
    }
    if (name_end - name > 1 && name[0] == '*' && name[1] == '.')
        name++; /* "*.example.com" is ".example.com" */
    if (name < name_end && name[0] == '.')
        name++; /* ".example.com" covers example.com and its subdomains */
    size_t nlen = (size_t)(name_end - name);
    return nlen > 0 && domain_match(host, name, nlen);
}

bool wsh_http_no_proxy(const char *list, const char *host, const char *port)
{
    if (list == NULL)
        return false;
    for (const char *p = list;;) {
        size_t n = strcspn(p, ",");
        const char *e = p, *end = p + n;
        while (e < end && isspace((unsigned char)*e))
            e++;
        while (end > e && isspace((unsigned char)end[-1]))
            end--;
        if (end > e && entry_covers(e, (size_t)(end - e), host, port))
            return true;
        if (p[n] == '\0')
            return false;
        p += n + 1;
    }
}
