/* The response side of HTTP/1.1 (RFC 9112), for the one thing wshub
 * fetches: a JWK Set. The client sends `Connection: close` and reads to
 * EOF, so this parses a whole message at once, in place: no streaming,
 * no allocation. Strict where a sloppy reading could hand back the wrong
 * bytes (framing: Content-Length, chunked, truncation); the header fields
 * it does not need are only checked for shape. */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "internal.h"
#include "wshub/http.h"

static char *find_crlf(char *p, const char *end)
{
    for (; p + 1 < end; p++) {
        if (p[0] == '\r' && p[1] == '\n')
            return p;
        if (p[0] == '\n')
            return NULL; /* a bare LF is not a line end here (RFC 9112 2.2) */
    }
    return NULL;
}

static bool name_is(const char *n, size_t len, const char *want)
{
    return len == strlen(want) && strncasecmp(n, want, len) == 0;
}

/* RFC 9112 7.1: chunk-size [chunk-ext] CRLF chunk-data CRLF ... 0 CRLF
 * trailers CRLF. Moves the data down over the framing, in place. */
static int dechunk(char *p, char *end, size_t max_body, char **body, size_t *body_len,
                   const char **why)
{
    char *out = p;
    for (;;) {
        char *eol = find_crlf(p, end);
        if (eol == NULL) {
            *why = "truncated chunked body";
            return WSH_EPROTO;
        }
        size_t size = 0, digits = 0;
        while (p + digits < eol && p[digits] != '\0' &&
               strchr("0123456789abcdefABCDEF", p[digits]) != NULL) {
            size_t d = (size_t)(p[digits] <= '9' ? p[digits] - '0' : (p[digits] | 0x20) - 'a' + 10);
            if (d > max_body || size > (max_body - d) / 16) {
                *why = "body over its bound";
                return WSH_ETOOBIG;
            }
            size = size * 16 + d;
            digits++;
        }
        /* After the digits only a chunk extension (";...") may follow. */
        if (digits == 0 ||
            (p + digits < eol && p[digits] != ';' && p[digits] != ' ' && p[digits] != '\t')) {
            *why = "bad chunk size";
            return WSH_EPROTO;
        }
        p = eol + 2;
        if (size == 0)
            break;
        if ((size_t)(out - *body) + size > max_body) {
            *why = "body over its bound";
            return WSH_ETOOBIG;
        }
        if ((size_t)(end - p) < size + 2) {
            *why = "truncated chunked body";
            return WSH_EPROTO;
        }
        if (p[size] != '\r' || p[size + 1] != '\n') {
            *why = "chunk data not followed by CRLF";
            return WSH_EPROTO;
        }
        memmove(out, p, size);
        out += size;
        p += size + 2;
    }
    /* Trailer fields, then the empty line. */
    for (;;) {
        char *eol = find_crlf(p, end);
        if (eol == NULL) {
            *why = "truncated chunked body";
            return WSH_EPROTO;
        }
        if (eol == p)
            break;
        p = eol + 2;
    }
    *body_len = (size_t)(out - *body);
    return WSH_OK;
}

int wsh_http_status_line(const char *line, size_t len)
{
    if (len < 12 || memcmp(line, "HTTP/1.", 7) != 0 || line[7] < '0' || line[7] > '9' ||
        line[8] != ' ' || line[9] < '1' || line[9] > '5' || line[10] < '0' || line[10] > '9' ||
        line[11] < '0' || line[11] > '9' || (len > 12 && line[12] != ' '))
        return -1;
    return (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
}

int wsh_http_parse_response(char *buf, size_t len, size_t max_body, struct wsh_http_response *out,
                            const char **why)
{
    const char *dummy;
    if (why == NULL)
        why = &dummy;
    *why = NULL;
    if (buf == NULL || out == NULL)
        return WSH_EINVAL;
    char *end = buf + len;
    char *eol;
    int status;
    for (;;) {
        /* Status line: HTTP/1.x SP 3DIGIT SP reason (RFC 9112 4). */
        eol = find_crlf(buf, end);
        status = eol != NULL ? wsh_http_status_line(buf, (size_t)(eol - buf)) : -1;
        if (status < 0) {
            *why = eol == NULL ? "no complete status line" : "bad status line";
            return WSH_EPROTO;
        }
        /* RFC 9110 15.2: interim responses (a CDN's 103 Early Hints)
         * come before the final one, which is the answer. A 101 to a
         * request that asked for no upgrade is left to the caller. */
        if (status / 100 != 1 || status == 101)
            break;
        char *hend = eol;
        while (hend != NULL && !(end - hend >= 4 && memcmp(hend, "\r\n\r\n", 4) == 0))
            hend = find_crlf(hend + 2, end);
        if (hend == NULL) {
            *why = "no complete head";
            return WSH_EPROTO;
        }
        if ((size_t)(hend - buf) > WSH_HTTP_RESPONSE_HEAD_MAX) {
            *why = "head over its bound";
            return WSH_ETOOBIG;
        }
        buf = hend + 4;
    }
    size_t clen = 0;
    bool have_clen = false, chunked = false;
    char *p = eol + 2;
    for (;;) {
        if ((size_t)(p - buf) > WSH_HTTP_RESPONSE_HEAD_MAX) {
            *why = "head over its bound";
            return WSH_ETOOBIG;
        }
        eol = find_crlf(p, end);
        if (eol == NULL) {
            *why = "no complete head";
            return WSH_EPROTO;
        }
        if (eol == p) {
            p += 2;
            break;
        }
        const char *colon = p;
        while (colon < eol && wsh_http_tchar(*colon))
            colon++;
        if (colon == p || colon == eol || *colon != ':') {
            *why = "bad header field"; /* obs-fold, space before ':', no name */
            return WSH_EPROTO;
        }
        const char *v = colon + 1, *ve = eol;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        for (const char *c = v; c < ve; c++) {
            if (!wsh_http_field_char(*c)) {
                *why = "control byte in a header value";
                return WSH_EPROTO;
            }
        }
        size_t nlen = (size_t)(colon - p);
        if (name_is(p, nlen, "Content-Length")) {
            uint64_t n;
            if (!wsh_http_decimal(v, (size_t)(ve - v), SIZE_MAX, &n) || (have_clen && n != clen)) {
                *why = "bad Content-Length";
                return WSH_EPROTO;
            }
            clen = n;
            have_clen = true;
        } else if (name_is(p, nlen, "Transfer-Encoding")) {
            if (!name_is(v, (size_t)(ve - v), "chunked") || chunked) {
                *why = "a transfer coding other than chunked";
                return WSH_EPROTO;
            }
            chunked = true;
        }
        p = eol + 2;
    }
    if (have_clen && chunked) {
        *why = "both Content-Length and Transfer-Encoding"; /* RFC 9112 6.1 */
        return WSH_EPROTO;
    }
    out->status = status;
    char *body = p;
    size_t body_len;
    if (chunked) {
        int rc = dechunk(p, end, max_body, &body, &body_len, why);
        if (rc != WSH_OK)
            return rc;
    } else if (have_clen) {
        if (clen > max_body) {
            *why = "body over its bound";
            return WSH_ETOOBIG;
        }
        if ((size_t)(end - p) < clen) {
            *why = "truncated body";
            return WSH_EPROTO;
        }
        body_len = clen;
    } else {
        body_len = (size_t)(end - p); /* delimited by the close */
        if (body_len > max_body) {
            *why = "body over its bound";
            return WSH_ETOOBIG;
        }
    }
    out->body = body;
    out->body_len = body_len;
    return WSH_OK;
}

/* ------------------------------------------------------------------ */
/* URLs                                                                */

bool wsh_http_url_parse(const char *url, struct wsh_http_url *out)
{
    if (url == NULL || out == NULL)
        return false;
    memset(out, 0, sizeof(*out));
    const char *p = url;
    if (strncasecmp(p, "https://", 8) == 0) {
        out->tls = true;
        p += 8;
    } else if (strncasecmp(p, "http://", 7) == 0) {
        p += 7;
    } else {
        return false;
    }
    const char *h = p, *he;
    if (*p == '[') {
        /* An IPv6 literal (RFC 3986 3.2.2), checked below. */
        h = ++p;
        while (*p != '\0' && *p != ']' && (strchr("0123456789abcdefABCDEF:.", *p) != NULL))
            p++;
        if (*p != ']')
            return false;
        he = p++;
    } else {
        while (*p != '\0' && ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                              (*p >= '0' && *p <= '9') || *p == '.' || *p == '-'))
            p++;
        he = p;
    }
    size_t hl = (size_t)(he - h);
    if (hl == 0 || hl >= sizeof(out->host))
        return false;
    memcpy(out->host, h, hl);
    out->ipv6 = h != url && h[-1] == '[';
    unsigned char a6[16];
    if (out->ipv6 && inet_pton(AF_INET6, out->host, a6) != 1)
        return false; /* "[:]" and the like: the literal must be an address */
    const char *port = out->tls ? "443" : "80";
    size_t pl = strlen(port);
    if (*p == ':') {
        port = ++p;
        while (*p >= '0' && *p <= '9')
            p++;
        pl = (size_t)(p - port);
        uint64_t v = 0;
        if (pl == 0 || pl > 5 || !wsh_http_decimal(port, pl, 65535, &v) || v == 0)
            return false;
    }
    memcpy(out->port, port, pl);
    const char *path = *p == '\0' ? "/" : p;
    size_t n = strlen(path);
    if (path[0] != '/' || n >= sizeof(out->path))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)path[i];
        if (c <= 0x20 || c >= 0x7f || c == '#')
            return false; /* no spaces, controls or fragment in a request line */
    }
    memcpy(out->path, path, n);
    out->loopback =
        strcasecmp(out->host, "localhost") == 0 ||
        (out->ipv6 ? strcmp(out->host, "::1") == 0
                   : strncmp(out->host, "127.", 4) == 0 && strspn(out->host, "0123456789.") == hl);
    return true;
}

int wsh_http_url_authority(const struct wsh_http_url *u, bool always_port, char *out, size_t n)
{
    bool port = always_port || strcmp(u->port, u->tls ? "443" : "80") != 0;
    int len = snprintf(out, n, "%s%s%s%s%s", u->ipv6 ? "[" : "", u->host, u->ipv6 ? "]" : "",
                       port ? ":" : "", port ? u->port : "");
    return len < 0 || (size_t)len >= n ? -1 : len;
}

/* The next CRLF in p[0..end), or NULL. */
static const char *next_crlf(const char *p, const char *end)
{
    for (; p + 1 < end; p++)
        if (p[0] == '\r' && p[1] == '\n')
            return p;
    return NULL;
}

bool wsh_http_response_complete(const char *buf, size_t len)
{
    const char *p = buf, *end = buf + len;
    for (;;) {
        /* The status line, then field lines up to an empty one. */
        const char *eol = next_crlf(p, end);
        if (eol == NULL || (size_t)(eol - p) > WSH_HTTP_RESPONSE_HEAD_MAX)
            return false;
        int status = wsh_http_status_line(p, (size_t)(eol - p));
        if (status < 0)
            return false;
        unsigned long long clen = 0;
        bool have = false, other = false;
        const char *l = eol + 2, *le;
        for (; (le = next_crlf(l, end)) != NULL && le != l; l = le + 2) {
            if ((size_t)(le - p) > WSH_HTTP_RESPONSE_HEAD_MAX)
                return false;
            const char *colon = memchr(l, ':', (size_t)(le - l));
            if (colon == NULL)
                return false;
            if (name_is(l, (size_t)(colon - l), "transfer-encoding"))
                other = true;
            if (!name_is(l, (size_t)(colon - l), "content-length"))
                continue;
            const char *v = colon + 1, *d;
            while (v < le && (*v == ' ' || *v == '\t'))
                v++;
            unsigned long long n = 0;
            for (d = v; d < le && *d >= '0' && *d <= '9' && n < (1ULL << 50); d++)
                n = n * 10 + (unsigned)(*d - '0');
            while (d < le && (*d == ' ' || *d == '\t'))
                d++;
            if (d == v || d != le || (have && n != clen))
                return false;
            clen = n;
            have = true;
        }
        if (le == NULL)
            return false; /* the head is not all there */
        const char *body = le + 2;
        if (status / 100 == 1 && status != 101) {
            p = body; /* an interim response: the final one follows */
            continue;
        }
        if (status == 204 || status == 304)
            return true;
        return have && !other && (unsigned long long)(end - body) >= clen;
    }
}
