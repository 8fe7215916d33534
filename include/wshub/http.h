/* wshub HTTP/1.1 request-head parser (RFC 9112), strict, allocation-free.
 *
 * The parser never copies: names, values, method and target are slices into
 * the caller's buffer, borrowed until that buffer changes. Limits come from
 * struct wsh_http_limits (LIMITS.md: 4 KiB request line, 8 KiB head, 64
 * headers). */
#ifndef WSHUB_HTTP_H
#define WSHUB_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "status.h"

struct wsh_http_limits {
    size_t max_request_line; /* bytes before the first CRLF; default 4096 */
    size_t max_head;         /* bytes up to and including CRLFCRLF; default 8192 */
    size_t max_headers;      /* header fields; default 64 */
};

#define WSH_HTTP_DEFAULT_REQUEST_LINE 4096u
#define WSH_HTTP_DEFAULT_HEAD         8192u
#define WSH_HTTP_DEFAULT_HEADERS      64u

struct wsh_http_header {
    const char *name;
    size_t name_len;
    const char *value; /* leading and trailing spaces/tabs removed */
    size_t value_len;
};

struct wsh_http_request {
    const char *method;
    size_t method_len;
    const char *target; /* request-target as sent (origin-form expected) */
    size_t target_len;
    const char *path; /* target without the query */
    size_t path_len;
    const char *query; /* after '?', NULL when none */
    size_t query_len;
    int minor_version;               /* HTTP/1.x */
    struct wsh_http_header *headers; /* caller's array */
    size_t nheaders;
    long long content_length; /* -1 when absent */
    int chunked;              /* Transfer-Encoding: chunked present */
};

/* Parses a request head from buf[0..len). last_len is the len of the
 * previous call for the same request (0 on the first), so the search for
 * the end of the head does not rescan old bytes. headers/max_headers is the
 * caller's array (at least lim->max_headers entries).
 *
 * Returns:
 *   > 0          the head is complete: its length including CRLFCRLF, and
 *                *req is filled.
 *   0            incomplete: call again with more bytes (same buffer start).
 *   WSH_EPROTO   malformed: *status is 400 (bad syntax, bare LF, obs-fold,
 *                whitespace before a colon, invalid token characters,
 *                control characters in values, both Content-Length and
 *                Transfer-Encoding, conflicting Content-Length), or 505
 *                for an HTTP major version other than 1.
 *   WSH_ETOOBIG  *status is 414 (request line over the limit, detected
 *                before the head is complete) or 431 (head or header count
 *                over the limit).
 * lim may be NULL for the defaults. */
ssize_t wsh_http_parse_request(const char *buf, size_t len, size_t last_len,
                               const struct wsh_http_limits *lim, struct wsh_http_request *req,
                               struct wsh_http_header *headers, size_t max_headers, int *status);

/* Finds a header by name, case-insensitive. Returns the first match or
 * NULL. */
const struct wsh_http_header *wsh_http_find(const struct wsh_http_request *req, const char *name);
/* How many header fields are named name (case-insensitive). */
size_t wsh_http_count(const struct wsh_http_request *req, const char *name);

/* Percent-decodes in[0..n) (RFC 3986 2.1) into out[0..cap): what a path
 * segment names once a client escaped its reserved characters, as
 * curl and fetch must for a '#' (which would otherwise end the target).
 * Returns the decoded length, or -1 for an escape that is not '%' and two
 * hex digits, one that decodes to NUL, or no room. */
ssize_t wsh_http_pct_decode(const char *in, size_t n, char *out, size_t cap);

/* ------------------------------------------------------------------ */
/* Responses (response.c): the JWK Set fetch reads one to EOF          */

#define WSH_HTTP_RESPONSE_HEAD_MAX 16384u /* bytes of status line and fields */

struct wsh_http_response {
    int status;       /* 100..599 */
    const char *body; /* into the caller's buffer, de-chunked in place */
    size_t body_len;
};

/* Parses a whole response, buf[0..len) as read up to the server's close
 * (the request said `Connection: close`). The body is framed by
 * Content-Length, by chunked coding (decoded in place: buf changes), or
 * by the close. Returns WSH_OK with *out filled; WSH_EPROTO for a
 * malformed or truncated message (a bare LF, obs-fold, a bad status line,
 * a bad Content-Length, both framings, a transfer coding other than
 * chunked, a body cut short); WSH_ETOOBIG when the head is over
 * WSH_HTTP_RESPONSE_HEAD_MAX or the body over max_body. *why (may be
 * NULL) gets a short reason in static storage. */
int wsh_http_parse_response(char *buf, size_t len, size_t max_body, struct wsh_http_response *out,
                            const char **why);

/* Whether buf[0..len), a response being read, is already whole: its
 * head is complete and its body, framed by Content-Length, has all its
 * bytes (or it has none: 204, 304). A chunked body or one ended by the
 * close says false, to be read to EOF; so does anything malformed, which
 * wsh_http_parse_response then refuses. Interim 1xx responses are passed
 * over. Lets a fetch stop at the end of the body, not wait for a close
 * the server may never send. */
bool wsh_http_response_complete(const char *buf, size_t len);

/* The status of an HTTP/1.x status line, line[0..len) without its CRLF:
 * "HTTP/1." DIGIT SP 3DIGIT, then nothing or SP and a reason. 100..599,
 * or -1 for anything else. (wsh_http_parse_response reads its first line
 * with it, and the JWKS fetch a proxy's answer to CONNECT.) */
int wsh_http_status_line(const char *line, size_t len);

/* An http:// or https:// URL the server fetches (auth.jwks_url). */
struct wsh_http_url {
    bool tls;        /* https */
    bool ipv6;       /* host was a bracketed IPv6 literal (brackets dropped) */
    bool loopback;   /* localhost, 127.0.0.0/8 or ::1 */
    char host[254];  /* a name, an IPv4 literal or an IPv6 literal */
    char port[6];    /* decimal, 1..65535; 443 or 80 when absent */
    char path[2048]; /* origin-form with any query, "/" when absent */
};

/* Parses scheme "://" host [":" port] [path]: no userinfo, no fragment,
 * no spaces or control bytes, the host as letters, digits, '.', '-' or a
 * bracketed IPv6 literal. Returns false for anything else. */
bool wsh_http_url_parse(const char *url, struct wsh_http_url *out);

/* u's authority, host[:port] with an IPv6 literal in brackets, into
 * out[0..n): the port always, or only when it is not the scheme's default
 * (as a Host header has it). Returns the length, or -1 when it does not
 * fit. */
int wsh_http_url_authority(const struct wsh_http_url *u, bool always_port, char *out, size_t n);

/* An HTTP proxy for the server's own https requests (egress.c), as curl
 * and Go read HTTPS_PROXY: [http://][user[:password]@]host[:port], port 80
 * when absent, userinfo percent-decoded, nothing after the authority but
 * an optional "/". https:// and SOCKS proxies are refused. */
struct wsh_http_proxy {
    struct wsh_http_url url; /* host and port of the proxy */
    char auth[256];          /* "user:password" for Basic, "" when none */
};
bool wsh_http_proxy_parse(const char *s, struct wsh_http_proxy *out);

/* NO_PROXY, a comma-separated list: true when host (a name or an IP
 * literal, as in struct wsh_http_url) on port is to be reached directly.
 * An entry is "*" (everything), a name, which covers itself and its
 * subdomains (a leading "." or "*." changes nothing), an IP literal
 * (IPv6 bare or bracketed), or an address block ("10.0.0.0/8"), which
 * covers IP literals in it (names are not resolved for it); all but a
 * block may end in ":port" to cover that port only. Case-insensitive;
 * spaces around entries ignored. */
bool wsh_http_no_proxy(const char *list, const char *host, const char *port);

/* ------------------------------------------------------------------ */
/* The client behind trusted proxies (forwarded.c)                     */

/* An address block: family 4 or 6, the first `bits` bits of addr. */
struct wsh_cidr {
    uint8_t family;
    uint8_t bits;
    uint8_t addr[16];
};

/* Parses "ADDR" (a block of one) or "ADDR/BITS", len bytes, not
 * NUL-terminated. Refuses bits set past the prefix ("10.0.0.1/8"), a
 * prefix longer than the family's, and leading zeros in it. */
bool wsh_cidr_parse(const char *s, size_t len, struct wsh_cidr *out);

/* Whether ss (AF_INET or AF_INET6; an IPv4-mapped IPv6 address counts as
 * IPv4) lies in one of set[0..n). */
bool wsh_cidr_contains(const struct wsh_cidr *set, size_t n, const struct sockaddr_storage *ss);

/* For a request whose peer is a trusted proxy: the client, from
 * X-Forwarded-For read right to left (all such fields as one list). The
 * first address that is not in trusted[0..n) is the client; if every one
 * is trusted, the leftmost. Entries may carry a port ("192.0.2.1:5678",
 * "[2001:db8::1]:5678"), which is dropped. Reading stops at an entry that
 * is not an address: the last trusted proxy before it stands. Returns
 * false, *out untouched, when there is no field or its last entry is
 * unreadable: the peer itself stands. */
bool wsh_http_forwarded_for(const struct wsh_http_request *req, const struct wsh_cidr *trusted,
                            size_t n, struct sockaddr_storage *out);

#endif
