/* Strict HTTP/1.1 request-head parser: RFC 9112 sections 2.2 (CRLF only),
 * 3 (request line), 5 (field lines, no obs-fold) and 6.3 (Content-Length vs
 * Transfer-Encoding); field values per RFC 9110 section 5.5. Sans-I/O and
 * allocation-free: the end of the head is located incrementally, then the
 * head is parsed once. */
#include <limits.h>
#include <string.h>

#include "internal.h"
#include "wshub/http.h"

enum {
    C_TOKEN = 1,  /* tchar, RFC 9110 5.6.2 */
    C_TARGET = 2, /* printable ASCII without SP: what a request-target may hold */
    C_VALUE = 4   /* field-vchar, SP, HTAB, obs-text (RFC 9110 5.5) */
};

static const unsigned char cls[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, /* 0x00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x10 */
    4, 7, 6, 7, 7, 7, 7, 7, 6, 6, 7, 7, 6, 7, 7, 6, /* 0x20 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, /* 0x30 */
    6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, /* 0x40 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 7, 7, /* 0x50 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, /* 0x60 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 7, 6, 7, 0, /* 0x70 */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* 0x80 */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* 0x90 */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* 0xa0 */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* 0xb0 */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* 0xc0 */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* 0xd0 */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* 0xe0 */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* 0xf0 */
};

static const struct wsh_http_limits default_limits = {
    .max_request_line = WSH_HTTP_DEFAULT_REQUEST_LINE,
    .max_head = WSH_HTTP_DEFAULT_HEAD,
    .max_headers = WSH_HTTP_DEFAULT_HEADERS,
};

static inline int is(char c, int mask)
{
    return cls[(unsigned char)c] & mask;
}

static inline int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static inline char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c + ('a' - 'A')) : c;
}

static int eq_nocase(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen)
        return 0;
    for (size_t i = 0; i < alen; i++) {
        if (lower(a[i]) != lower(b[i]))
            return 0;
    }
    return 1;
}

/* Locates the end of the head, looking only at bytes from last_len on.
 * Every peer fault is tied to the byte index at which it becomes certain,
 * and the earliest one wins, so the outcome depends on the bytes alone and
 * never on how they were split across calls:
 *   - a bare LF at index p (RFC 9112 2.2) is decided at p;
 *   - a request line longer than max_request_line is decided at index
 *     max_request_line + 1, the first byte that cannot be its CRLF's LF;
 *   - a head longer than max_head is decided at index max_head - 1.
 * Returns the head length, 0 for more input, or an HTTP status as a
 * negative number. */
static ssize_t find_head_end(const char *buf, size_t len, size_t last_len,
                             const struct wsh_http_limits *lim)
{
    size_t rl = lim->max_request_line, mh = lim->max_head;

    /* The 414 decision index rl + 1 falls inside the new bytes at most once
     * per request, so this scan from the start keeps the total linear. */
    int too_long_line = 0;
    if (rl < len - 1 && rl + 1 >= last_len) {
        const char *lf = memchr(buf, '\n', rl + 2);
        too_long_line = lf == NULL || (lf == buf + rl + 1 && buf[rl] != '\r');
    }

    /* Bytes from max_head on can never be part of an acceptable head. */
    size_t end = len < mh ? len : mh;
    for (size_t i = last_len; i < end;) {
        const char *lf = memchr(buf + i, '\n', end - i);
        if (lf == NULL)
            break;
        size_t p = (size_t)(lf - buf);
        if (too_long_line && p >= rl + 1)
            return -414;
        if (p == 0 || buf[p - 1] != '\r')
            return -400;
        /* Every earlier LF was checked to follow a CR, so "\n" two back
         * completes CRLFCRLF. */
        if (p >= 3 && buf[p - 2] == '\n' && buf[p - 3] == '\r')
            return (ssize_t)(p + 1);
        i = p + 1;
    }
    if (too_long_line && rl + 1 < mh)
        return -414;
    if (len >= mh)
        return -431;
    return 0;
}

bool wsh_http_tchar(char c)
{
    return is(c, C_TOKEN);
}

bool wsh_http_field_char(char c)
{
    return is(c, C_VALUE);
}

bool wsh_http_decimal(const char *p, size_t n, uint64_t max, uint64_t *out)
{
    if (n == 0)
        return false;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        uint64_t d = (uint64_t)(p[i] - '0');
        if (d > max || x > (max - d) / 10)
            return false;
        x = x * 10 + d;
    }
    *out = x;
    return true;
}

static int parse_content_length(const char *v, size_t n, long long *out)
{
    /* RFC 9110 8.6: 1*DIGIT. Lists ("5, 5") and signs are rejected. */
    uint64_t x;
    if (!wsh_http_decimal(v, n, LLONG_MAX, &x))
        return -1;
    *out = (long long)x;
    return 0;
}

/* True when the last transfer-coding in the list is "chunked". */
static int ends_with_chunked(const char *v, size_t n)
{
    size_t start = n;
    while (start > 0 && v[start - 1] != ',')
        start--;
    while (start < n && is_ows(v[start]))
        start++;
    return eq_nocase(v + start, n - start, "chunked", 7);
}

/* Parses the complete head buf[0..n), which ends in CRLFCRLF and holds no
 * bare LF. Returns 0 or the HTTP status to answer with. */
static int parse_head(const char *buf, size_t n, struct wsh_http_request *req,
                      struct wsh_http_header *headers, size_t cap)
{
    const char *end = buf + n;
    const char *p = buf;
    const char *eol = (const char *)memchr(p, '\n', n) - 1; /* at the CR */

    /* RFC 9112 3: method SP request-target SP HTTP-version CRLF, with
     * exactly one SP between the parts. */
    const char *m = p;
    while (p < eol && is(*p, C_TOKEN))
        p++;
    if (p == m || *p != ' ')
        return 400;
    req->method = m;
    req->method_len = (size_t)(p - m);

    const char *t = ++p;
    while (p < eol && is(*p, C_TARGET))
        p++;
    if (p == t || *p != ' ')
        return 400;
    req->target = t;
    req->target_len = (size_t)(p - t);
    /* RFC 9112 3.2.2: a server MUST accept the absolute-form; its path
     * and query are what the origin-form would hold. An empty path is
     * "/" (RFC 9110 4.2.3): the slice is then the last '/' of "://". */
    const char *o = t;
    size_t sl = req->target_len > 7 && eq_nocase(t, 7, "http://", 7)    ? 7
                : req->target_len > 8 && eq_nocase(t, 8, "https://", 8) ? 8
                                                                        : 0;
    if (sl > 0) {
        o = t + sl;
        while (o < p && *o != '/' && *o != '?' && *o != '#')
            o++;
        if (o == t + sl || (o < p && *o == '#'))
            return 400;
    }
    const char *q = memchr(o, '?', (size_t)(p - o));
    const char *pend = q ? q : p;
    if (sl > 0 && o == pend) { /* no path */
        req->path = t + sl - 1;
        req->path_len = 1;
    } else {
        req->path = o;
        req->path_len = (size_t)(pend - o);
    }
    req->query = q ? q + 1 : NULL;
    req->query_len = q ? (size_t)(p - q - 1) : 0;

    p++;
    /* RFC 9112 2.3: "HTTP/" DIGIT "." DIGIT, case-sensitive. */
    if (eol - p != 8 || memcmp(p, "HTTP/", 5) != 0 || p[5] < '0' || p[5] > '9' || p[6] != '.' ||
        p[7] < '0' || p[7] > '9')
        return 400;
    if (p[5] != '1')
        return 505;
    req->minor_version = p[7] - '0';

    size_t nh = 0;
    long long cl = -1;
    int te = 0, chunked = 0;
    for (p = eol + 2;; p = eol + 2) {
        eol = (const char *)memchr(p, '\n', (size_t)(end - p)) - 1;
        if (eol == p)
            break;
        /* RFC 9112 5.2: obs-fold is rejected. A leading SP or HTAB on the
         * first field line is rejected the same way (RFC 9112 2.2). */
        if (is_ows(*p))
            return 400;
        const char *name = p;
        while (p < eol && is(*p, C_TOKEN))
            p++;
        /* RFC 9112 5.1: no whitespace between field name and colon. */
        if (p == name || *p != ':')
            return 400;
        size_t name_len = (size_t)(p - name);
        p++;
        while (p < eol && is_ows(*p))
            p++;
        const char *v = p;
        while (p < eol && is(*p, C_VALUE))
            p++;
        /* A CTL other than HTAB, a bare CR included. */
        if (p != eol)
            return 400;
        while (p > v && is_ows(p[-1]))
            p--;
        size_t vlen = (size_t)(p - v);

        if (nh == cap)
            return 431;
        headers[nh].name = name;
        headers[nh].name_len = name_len;
        headers[nh].value = v;
        headers[nh].value_len = vlen;
        nh++;

        if (eq_nocase(name, name_len, "content-length", 14)) {
            long long x;
            /* RFC 9112 6.3: differing values are unrecoverable. */
            if (parse_content_length(v, vlen, &x) != 0 || (cl >= 0 && cl != x))
                return 400;
            cl = x;
        } else if (eq_nocase(name, name_len, "transfer-encoding", 17)) {
            te = 1;
            chunked = ends_with_chunked(v, vlen);
        }
    }
    /* RFC 9112 6.1: both present is a smuggling vector; refuse it. And
     * 6.3: when chunked is not the final coding (of the last field line,
     * the end of the combined list), the body's length cannot be told:
     * taken as no body, the bytes after the head were read as the next
     * request, or as WebSocket frames after an upgrade's 101. */
    if ((cl >= 0 && te) || (te && !chunked))
        return 400;
    req->headers = headers;
    req->nheaders = nh;
    req->content_length = cl;
    req->chunked = chunked;
    return 0;
}

ssize_t wsh_http_parse_request(const char *buf, size_t len, size_t last_len,
                               const struct wsh_http_limits *lim, struct wsh_http_request *req,
                               struct wsh_http_header *headers, size_t max_headers, int *status)
{
    if (lim == NULL)
        lim = &default_limits;
    if (status != NULL)
        *status = 0;
    if (len == 0)
        return 0;
    /* A last_len past len is a caller bug; rescanning is always correct. */
    if (last_len > len)
        last_len = 0;
    /* RFC 9112 2.2: one empty line before the request line is ignored (a
     * client may send one after a previous request's body). */
    size_t lead = 0;
    if (buf[0] == '\r') {
        if (len < 2)
            return 0;
        lead = buf[1] == '\n' ? 2 : 0;
    }
    buf += lead;
    len -= lead;
    last_len = last_len > lead ? last_len - lead : 0;
    if (len == 0)
        return 0;
    if (lead > 0 && buf[0] == '\r' && (len < 2 || buf[1] == '\n')) {
        if (len < 2)
            return 0;
        if (status != NULL)
            *status = 400; /* a second empty line: not a request */
        return WSH_EPROTO;
    }

    ssize_t r = find_head_end(buf, len, last_len, lim);
    if (r < 0) {
        if (status != NULL)
            *status = (int)-r;
        return r == -400 ? WSH_EPROTO : WSH_ETOOBIG;
    }
    if (r == 0)
        return 0;

    /* Never write past the caller's array, even when it is smaller than
     * the limit says. */
    size_t cap = max_headers < lim->max_headers ? max_headers : lim->max_headers;
    int st = parse_head(buf, (size_t)r, req, headers, cap);
    if (st != 0) {
        if (status != NULL)
            *status = st;
        return st == 431 ? WSH_ETOOBIG : WSH_EPROTO;
    }
    return r + (ssize_t)lead;
}

size_t wsh_http_count(const struct wsh_http_request *req, const char *name)
{
    size_t n = strlen(name), count = 0;
    for (size_t i = 0; i < req->nheaders; i++)
        count += eq_nocase(req->headers[i].name, req->headers[i].name_len, name, n);
    return count;
}

const struct wsh_http_header *wsh_http_find(const struct wsh_http_request *req, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct wsh_http_header *h = &req->headers[i];
        if (eq_nocase(h->name, h->name_len, name, n))
            return h;
    }
    return NULL;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

ssize_t wsh_http_pct_decode(const char *in, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)in[i];
        if (c == '%') {
            int hi = i + 2 < n ? hex_value(in[i + 1]) : -1;
            int lo = hi >= 0 ? hex_value(in[i + 2]) : -1;
            if (lo < 0 || (hi | lo) == 0)
                return -1;
            c = hi << 4 | lo;
            i += 2;
        }
        if (o == cap)
            return -1;
        out[o++] = (char)c;
    }
    return (ssize_t)o;
}
