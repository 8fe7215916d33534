/* Opening handshake, RFC 6455 section 4: server-side request validation
 * (4.2.1) and response (4.2.2), error responses (4.2.2 point 4 for 426),
 * the Sec-WebSocket-Extensions grammar of 9.1 (and RFC 7692 5), and the
 * client side (4.1): key, request and response validation. */
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <string.h>

#include "wshub/ws.h"

#define WS_GUID         "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define EXT_PARAMS_MAX  16   /* parameters per extension offer */
#define CLIENT_HEAD_MAX 8192 /* wsh_hs_client_parse_response() */

/* ------------------------------------------------------------------ */
/* Small string helpers                                                */

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* Case-insensitive comparison of a slice with a lower-case literal. */
static bool slice_is(struct wsh_slice s, const char *lit)
{
    size_t n = strlen(lit);
    if (s.n != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (lower(s.p[i]) != lit[i])
            return false;
    return true;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* RFC 9110 5.6.2 tchar. */
static bool is_tchar(char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static const char *skip_ows(const char *s, const char *end)
{
    while (s < end && is_ows(*s))
        s++;
    return s;
}

static struct wsh_slice take_token(const char **s, const char *end)
{
    const char *start = *s;
    while (*s < end && is_tchar(**s))
        (*s)++;
    return (struct wsh_slice){ start, (size_t)(*s - start) };
}

/* Calls fn(element) for each non-empty element of a comma-separated list
 * (RFC 9110 5.6.1), with surrounding whitespace removed. Stops and returns
 * false when fn does. */
typedef bool list_fn(struct wsh_slice elem, void *arg);

static bool list_each(struct wsh_slice v, list_fn *fn, void *arg)
{
    const char *s = v.p, *end = v.p + v.n;
    while (s < end) {
        s = skip_ows(s, end);
        const char *start = s;
        while (s < end && *s != ',')
            s++;
        const char *stop = s;
        while (stop > start && is_ows(stop[-1]))
            stop--;
        if (stop > start && !fn((struct wsh_slice){ start, (size_t)(stop - start) }, arg))
            return false;
        if (s < end)
            s++; /* the comma */
    }
    return true;
}

static bool not_equal(struct wsh_slice elem, void *arg)
{
    return !slice_is(elem, (const char *)arg);
}

/* True when the comma-separated list v contains token (case-insensitive). */
static bool list_has(struct wsh_slice v, const char *token)
{
    return !list_each(v, not_equal, (void *)(uintptr_t)token);
}

/* ------------------------------------------------------------------ */
/* Keys                                                                 */

int wsh_hs_accept(const char *key, size_t key_len, char out[WSH_HS_ACCEPT_LEN + 1])
{
    unsigned char md[SHA_DIGEST_LENGTH];
    unsigned char buf[128];
    const size_t glen = sizeof(WS_GUID) - 1;
    bool ok;

    /* OpenSSL 3 allocates even for a one-shot digest (the algorithm is
     * fetched from its provider), so either way may fail; md is then
     * unset, and a 101 built from it would carry a wrong key. */
    if (key_len + glen <= sizeof(buf)) {
        memcpy(buf, key, key_len);
        memcpy(buf + key_len, WS_GUID, glen);
        ok = SHA1(buf, key_len + glen, md) != NULL;
    } else {
        /* Only reachable with a key no valid client sends. */
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) &&
             EVP_DigestUpdate(ctx, key, key_len) && EVP_DigestUpdate(ctx, WS_GUID, glen) &&
             EVP_DigestFinal_ex(ctx, md, NULL);
        EVP_MD_CTX_free(ctx);
    }
    if (!ok) {
        ERR_clear_error();
        out[0] = '\0';
        return WSH_ENOMEM;
    }
    EVP_EncodeBlock((unsigned char *)out, md, SHA_DIGEST_LENGTH);
    return WSH_OK;
}

void wsh_hs_client_key(const uint8_t nonce[16], char out[WSH_HS_KEY_LEN + 1])
{
    EVP_EncodeBlock((unsigned char *)out, nonce, 16);
}

static bool is_b64(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

/* 4.2.1 point 5: the key decodes to exactly 16 bytes. That is 22 base64
 * characters and "==", and the 22nd carries only 2 data bits, so its low
 * four bits are zero: one of A, Q, g, w. */
static bool key_valid(struct wsh_slice k)
{
    if (k.n != WSH_HS_KEY_LEN || k.p[22] != '=' || k.p[23] != '=')
        return false;
    for (size_t i = 0; i < 21; i++)
        if (!is_b64(k.p[i]))
            return false;
    char c = k.p[21];
    return c == 'A' || c == 'Q' || c == 'g' || c == 'w';
}

/* ------------------------------------------------------------------ */
/* Sec-WebSocket-Extensions (9.1):                                     */
/*   extension-list = 1#extension                                      */
/*   extension = extension-token *( ";" extension-param )              */
/*   extension-param = token [ "=" (token | quoted-string) ]           */
/* One pass, no backtracking: linear in the header size.               */

static bool parse_param_value(const char **sp, const char *end, struct wsh_slice *val)
{
    const char *s = *sp;
    if (s < end && *s == '"') {
        /* RFC 6455 9.1: a quoted value must be a token after unescaping.
         * We accept only the unescaped form, so the slice handed to the
         * callback is the value itself. */
        s++;
        *val = take_token(&s, end);
        if (val->n == 0 || s == end || *s != '"')
            return false;
        s++;
    } else {
        *val = take_token(&s, end);
        if (val->n == 0)
            return false;
    }
    *sp = s;
    return true;
}

/* Returns 0, or 400 on bad syntax / a callback refusal. */
static int parse_extensions(struct wsh_slice v, wsh_hs_extension_cb *cb, void *user)
{
    const char *s = v.p, *end = v.p + v.n;
    size_t count = 0;
    struct wsh_slice names[EXT_PARAMS_MAX], values[EXT_PARAMS_MAX];

    for (;;) {
        s = skip_ows(s, end);
        if (s == end)
            break;
        if (*s == ',') {
            s++; /* empty list element (RFC 9110 5.6.1) */
            continue;
        }
        struct wsh_slice name = take_token(&s, end);
        if (name.n == 0)
            return 400;
        size_t np = 0;
        s = skip_ows(s, end);
        while (s < end && *s == ';') {
            s = skip_ows(s + 1, end);
            struct wsh_slice pn = take_token(&s, end), pv = { NULL, 0 };
            if (pn.n == 0)
                return 400;
            s = skip_ows(s, end);
            if (s < end && *s == '=') {
                s = skip_ows(s + 1, end);
                if (!parse_param_value(&s, end, &pv))
                    return 400;
                s = skip_ows(s, end);
            }
            if (np == EXT_PARAMS_MAX)
                return 400;
            names[np] = pn;
            values[np] = pv;
            np++;
        }
        if (s < end && *s != ',')
            return 400;
        count++;
        if (cb != NULL && !cb(name, names, values, np, user))
            return 400;
    }
    return count == 0 ? 400 : 0;
}

/* ------------------------------------------------------------------ */
/* Server side                                                          */

struct proto_pick {
    wsh_hs_protocol_cb *cb;
    void *user;
    struct wsh_slice chosen;
    bool bad;
};

static bool offer_protocol(struct wsh_slice elem, void *arg)
{
    struct proto_pick *pp = arg;
    for (size_t i = 0; i < elem.n; i++) {
        if (!is_tchar(elem.p[i])) {
            pp->bad = true;
            return false;
        }
    }
    /* ws.h: every offer is shown to the callback; the first true wins. */
    if (pp->cb != NULL && pp->cb(elem.p, elem.n, pp->user) && pp->chosen.n == 0)
        pp->chosen = elem;
    return true;
}

static int refuse(struct wsh_hs_result *res, int status, const char *error)
{
    res->status = status;
    res->error = error;
    return WSH_EPROTO;
}

int wsh_hs_server_check(const struct wsh_hs_request *req, wsh_hs_protocol_cb *proto_cb,
                        wsh_hs_extension_cb *ext_cb, void *user, struct wsh_hs_result *res)
{
    memset(res, 0, sizeof(*res));
    if (!slice_is(req->method, "get"))
        return refuse(res, 405, "method not allowed: use GET");
    if (req->minor_version < 1)
        return refuse(res, 400, "HTTP/1.1 or later required");
    /* Method names are case-sensitive (RFC 9110 9.1). */
    if (req->method.n != 3 || memcmp(req->method.p, "GET", 3) != 0)
        return refuse(res, 405, "method not allowed: use GET");

    size_t nhost = 0, nversion = 0, nkey = 0;
    bool upgrade = false, connection = false;
    struct wsh_slice version = { NULL, 0 }, key = { NULL, 0 };
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct wsh_hs_header *h = &req->headers[i];
        if (slice_is(h->name, "host")) {
            nhost++;
            res->host = h->value;
        } else if (slice_is(h->name, "upgrade")) {
            upgrade = upgrade || list_has(h->value, "websocket");
        } else if (slice_is(h->name, "connection")) {
            connection = connection || list_has(h->value, "upgrade");
        } else if (slice_is(h->name, "sec-websocket-version")) {
            nversion++;
            version = h->value;
        } else if (slice_is(h->name, "sec-websocket-key")) {
            nkey++;
            key = h->value;
        } else if (slice_is(h->name, "sec-websocket-extensions")) {
            res->extensions = h->value;
        } else if (slice_is(h->name, "origin")) {
            res->origin = h->value;
        }
    }
    if (nhost != 1)
        return refuse(res, 400, "exactly one Host header required");
    if (!upgrade)
        return refuse(res, 400, "Upgrade: websocket required");
    if (!connection)
        return refuse(res, 400, "Connection: Upgrade required");
    /* 4.2.2 point 4: an unsupported (or absent) version gets 426 with the
     * versions we speak. */
    if (nversion != 1 || version.n != 2 || memcmp(version.p, "13", 2) != 0)
        return refuse(res, 426, "Sec-WebSocket-Version: 13 required");
    if (nkey != 1 || !key_valid(key))
        return refuse(res, 400, "invalid Sec-WebSocket-Key");
    if (wsh_hs_accept(key.p, key.n, res->accept) != WSH_OK)
        return refuse(res, 503, "out of memory");

    /* Extensions and subprotocols are offered to the callbacks only once
     * everything else is known to be valid. */
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct wsh_hs_header *h = &req->headers[i];
        if (slice_is(h->name, "sec-websocket-extensions") &&
            parse_extensions(h->value, ext_cb, user) != 0)
            return refuse(res, 400, "invalid Sec-WebSocket-Extensions");
    }
    struct proto_pick pp = { proto_cb, user, { NULL, 0 }, false };
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct wsh_hs_header *h = &req->headers[i];
        if (slice_is(h->name, "sec-websocket-protocol")) {
            list_each(h->value, offer_protocol, &pp);
            if (pp.bad)
                return refuse(res, 400, "invalid Sec-WebSocket-Protocol");
        }
    }
    res->protocol = pp.chosen;
    res->status = 101;
    return WSH_OK;
}

/* Bounded output buffer: appends until full, then remembers the overflow. */
struct out {
    char *p;
    size_t cap, n;
    bool full;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->full || n > o->cap - o->n) {
        o->full = true;
        return;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static void puts_(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

static void put_uint(struct out *o, size_t v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    put(o, tmp + i, sizeof(tmp) - i);
}

static ssize_t finish(struct out *o)
{
    return o->full ? WSH_ENOSPC : (ssize_t)o->n;
}

/* Values we write into a header must not end it early. */
static bool header_safe(const char *s)
{
    return s == NULL || strpbrk(s, "\r\n") == NULL;
}

ssize_t wsh_hs_server_response(char *out, size_t cap, const struct wsh_hs_result *res,
                               const char *ext_response)
{
    if (res->status != 101 || !header_safe(ext_response))
        return WSH_EINVAL;
    struct out o = { out, cap, 0, false };
    puts_(&o, "HTTP/1.1 101 Switching Protocols\r\n"
              "Upgrade: websocket\r\n"
              "Connection: Upgrade\r\n"
              "Sec-WebSocket-Accept: ");
    put(&o, res->accept, WSH_HS_ACCEPT_LEN);
    puts_(&o, "\r\n");
    if (res->protocol.n != 0) {
        puts_(&o, "Sec-WebSocket-Protocol: ");
        put(&o, res->protocol.p, res->protocol.n);
        puts_(&o, "\r\n");
    }
    if (ext_response != NULL && ext_response[0] != '\0') {
        puts_(&o, "Sec-WebSocket-Extensions: ");
        puts_(&o, ext_response);
        puts_(&o, "\r\n");
    }
    puts_(&o, "\r\n");
    return finish(&o);
}

const char *wsh_http_reason(int status)
{
    switch (status) {
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 426:
        return "Upgrade Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

ssize_t wsh_hs_error_response(char *out, size_t cap, int status, const char *error)
{
    if (status < 100 || status > 999)
        return WSH_EINVAL;
    const char *reason = wsh_http_reason(status);
    if (error == NULL)
        error = reason;
    struct out o = { out, cap, 0, false };
    puts_(&o, "HTTP/1.1 ");
    put_uint(&o, (size_t)status);
    puts_(&o, " ");
    puts_(&o, reason);
    puts_(&o, "\r\nContent-Type: text/plain\r\nContent-Length: ");
    put_uint(&o, strlen(error) + 1);
    /* RFC 9110 15.5.22 and 7.8: a 426 names the protocol to upgrade to,
     * and a sender of Upgrade lists it in Connection. */
    puts_(&o, status == 426 ? "\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n"
                              "Sec-WebSocket-Version: 13\r\n"
                            : "\r\nConnection: close\r\n");
    if (status == 405)
        puts_(&o, "Allow: GET\r\n");
    else if (status == 401) /* RFC 9110 11.6.1: a 401 names its scheme */
        puts_(&o, "WWW-Authenticate: Bearer\r\n");
    puts_(&o, "\r\n");
    puts_(&o, error);
    puts_(&o, "\n");
    return finish(&o);
}

/* ------------------------------------------------------------------ */
/* Client side                                                          */

ssize_t wsh_hs_client_request(char *out, size_t cap, const char *host, const char *path,
                              const char *key, const char *protocols, const char *extensions)
{
    if (host == NULL || key == NULL)
        return WSH_EINVAL;
    if (path == NULL || path[0] == '\0')
        path = "/";
    if (!header_safe(host) || !header_safe(path) || !header_safe(key) || !header_safe(protocols) ||
        !header_safe(extensions) || strchr(path, ' ') != NULL)
        return WSH_EINVAL;
    struct out o = { out, cap, 0, false };
    puts_(&o, "GET ");
    puts_(&o, path);
    puts_(&o, " HTTP/1.1\r\nHost: ");
    puts_(&o, host);
    puts_(&o, "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
    puts_(&o, key);
    puts_(&o, "\r\nSec-WebSocket-Version: 13\r\n");
    if (protocols != NULL && protocols[0] != '\0') {
        puts_(&o, "Sec-WebSocket-Protocol: ");
        puts_(&o, protocols);
        puts_(&o, "\r\n");
    }
    if (extensions != NULL && extensions[0] != '\0') {
        puts_(&o, "Sec-WebSocket-Extensions: ");
        puts_(&o, extensions);
        puts_(&o, "\r\n");
    }
    puts_(&o, "\r\n");
    return finish(&o);
}

/* Finds the end of the head (CRLF CRLF) in buf[0..len). Returns the head
 * length or 0. */
static size_t head_end(const char *buf, size_t len)
{
    for (size_t i = 3; i < len; i++)
        if (buf[i] == '\n' && buf[i - 1] == '\r' && buf[i - 2] == '\n' && buf[i - 3] == '\r')
            return i + 1;
    return 0;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

ssize_t wsh_hs_client_parse_response(const char *buf, size_t len, const char *key,
                                     struct wsh_hs_client_result *res)
{
    memset(res, 0, sizeof(*res));
    if (key == NULL)
        return WSH_EINVAL;
    size_t scan = len < CLIENT_HEAD_MAX ? len : CLIENT_HEAD_MAX;
    size_t head = head_end(buf, scan);
    if (head == 0)
        return len >= CLIENT_HEAD_MAX ? WSH_ETOOBIG : 0;

    /* status-line = "HTTP/1." DIGIT SP 3DIGIT SP reason-phrase CRLF */
    const char *s = buf, *end = buf + head;
    if (head < 16 || memcmp(s, "HTTP/1.", 7) != 0 || !is_digit(s[7]) || s[8] != ' ' ||
        !is_digit(s[9]) || !is_digit(s[10]) || !is_digit(s[11]))
        return WSH_EPROTO;
    res->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    s += 12;
    if (*s == ' ')
        s++;
    while (*s != '\r') {
        if (*s == '\n' || *s == '\0')
            return WSH_EPROTO;
        s++;
    }
    if (s[1] != '\n')
        return WSH_EPROTO;
    s += 2;
    if (res->status != 101)
        return WSH_EPROTO;

    bool upgrade = false, connection = false;
    size_t naccept = 0, nproto = 0;
    struct wsh_slice accept = { NULL, 0 };
    /* The head ends in CRLF CRLF, so each loop finds a CR. */
    while (s < end - 2) {
        struct wsh_slice name = take_token(&s, end);
        if (name.n == 0 || *s != ':')
            return WSH_EPROTO;
        s = skip_ows(s + 1, end);
        const char *v = s;
        while (*s != '\r') {
            if (*s == '\n' || *s == '\0' || ((unsigned char)*s < 0x20 && *s != '\t') || *s == 0x7f)
                return WSH_EPROTO;
            s++;
        }
        if (s[1] != '\n')
            return WSH_EPROTO;
        const char *ve = s;
        while (ve > v && is_ows(ve[-1]))
            ve--;
        struct wsh_slice value = { v, (size_t)(ve - v) };
        s += 2;
        if (slice_is(name, "upgrade")) {
            upgrade = upgrade || list_has(value, "websocket");
        } else if (slice_is(name, "connection")) {
            connection = connection || list_has(value, "upgrade");
        } else if (slice_is(name, "sec-websocket-accept")) {
            naccept++;
            accept = value;
        } else if (slice_is(name, "sec-websocket-protocol")) {
            nproto++;
            res->protocol = value;
        } else if (slice_is(name, "sec-websocket-extensions")) {
            res->extensions = value;
        }
    }
    if (!upgrade || !connection || naccept != 1 || nproto > 1)
        return WSH_EPROTO;
    char expect[WSH_HS_ACCEPT_LEN + 1];
    if (wsh_hs_accept(key, strlen(key), expect) != WSH_OK)
        return WSH_ENOMEM;
    if (accept.n != WSH_HS_ACCEPT_LEN || memcmp(accept.p, expect, WSH_HS_ACCEPT_LEN) != 0)
        return WSH_EPROTO;
    return (ssize_t)head;
}
