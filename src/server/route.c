/* The HTTP phase of a connection: a complete request head is routed to
 * the health checks, the operator's endpoints (/metrics, /api/), the
 * static files of web/, or a WebSocket upgrade (/ws, /echo, /raw/<channel>),
 * which it checks and answers. Everything else is a plain HTTP answer that
 * closes the connection once it is sent: wshub's clients open a connection
 * per request or upgrade, so there is no keep-alive. The bytes and the
 * connection's life are worker.c's. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server.h"
#include "wshub/http.h"

bool route_method_is(const struct wsh_http_request *req, const char *m)
{
    size_t n = strlen(m);
    return req->method_len == n && memcmp(req->method, m, n) == 0;
}

/* The head of a plain answer, counted by status. `extra` is more header
 * lines, each ending in CRLF; cache is the Cache-Control value. */
static void send_head(struct worker *w, struct conn *c, int status, const char *type, size_t len,
                      const char *extra, const char *cache)
{
    char head[512];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "%sCache-Control: %s\r\nConnection: close\r\n\r\n",
                      status, wsh_http_reason(status), type, len, extra, cache);
    metric_http(w, status);
    conn_send_bytes(w, c, head, (size_t)hl);
}

/* Answers a plain HTTP request and closes after the body (no keep-alive:
 * every client of ours opens a connection per request or upgrades). A
 * HEAD request gets the head alone, with the Content-Length of the body it
 * would have had (RFC 9110 9.3.2), whoever writes the answer: route_input
 * marks the worker while it handles one (w->req_head). */
static void respond(struct worker *w, struct conn *c, int status, const char *type,
                    const char *extra, const char *body, size_t len)
{
    send_head(w, c, status, type, len, extra, "no-store");
    if (c->state != CONN_DEAD && len && !w->req_head)
        conn_send_bytes(w, c, body, len);
    conn_end_after_reply(w, c);
}

void route_respond_extra(struct worker *w, struct conn *c, int status, const char *type,
                         const char *extra, const char *body, size_t len)
{
    respond(w, c, status, type, extra, body, len);
}

void route_not_allowed(struct worker *w, struct conn *c, const char *allow, const char *type,
                       const char *body, size_t len)
{
    char extra[64];
    snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
    route_respond_extra(w, c, 405, type, extra, body, len);
}

bool route_readable(struct worker *w, struct conn *c, const struct wsh_http_request *req)
{
    if (route_method_is(req, "GET") || route_method_is(req, "HEAD"))
        return true;
    static const char body[] = "method not allowed\n";
    route_not_allowed(w, c, "GET, HEAD", "text/plain", body, sizeof(body) - 1);
    return false;
}

/* A 503 here (the HTTP API: broker refused, workers behind) is always
 * "try again shortly". */
void route_respond(struct worker *w, struct conn *c, int status, const char *type, const char *body,
                   size_t len)
{
    respond(w, c, status, type, status == 503 ? "Retry-After: 1\r\n" : "", body, len);
}

/* A refusal in the HTTP phase, as wsh_hs_error_response words it: the
 * error as a text body, with Allow: GET on a 405 (the upgrade's method)
 * and Sec-WebSocket-Version on a 426. */
static void http_reply(struct worker *w, struct conn *c, int status, const char *error)
{
    char out[512];
    ssize_t n = wsh_hs_error_response(out, sizeof(out), status, error);
    if (n < 0) {
        conn_destroy(w, c);
        return;
    }
    metric_http(w, status);
    if (w->req_head) { /* the head alone, its Content-Length kept */
        const char *end = memmem(out, (size_t)n, "\r\n\r\n", 4);
        if (end != NULL)
            n = end + 4 - out;
    }
    conn_send_bytes(w, c, out, (size_t)n);
    conn_end_after_reply(w, c);
}

static bool channel_name_ok(const char *p, size_t n)
{
    if (n == 0 || n > 128)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '/' || ch == '%')
            return false;
    }
    return true;
}

static const char *content_type(const char *name, size_t n)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        { ".html", "text/html; charset=utf-8" },
        { ".js", "text/javascript; charset=utf-8" },
        { ".mjs", "text/javascript; charset=utf-8" },
        { ".css", "text/css; charset=utf-8" },
        { ".svg", "image/svg+xml" },
        { ".png", "image/png" },
        { ".ico", "image/x-icon" },
        { ".json", "application/json" },
    };
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        size_t el = strlen(types[i].ext);
        if (n > el && memcmp(name + n - el, types[i].ext, el) == 0)
            return types[i].type;
    }
    return NULL;
}

/* Static files of web/ (the demo page and the browser client): a flat
 * directory, names of [A-Za-z0-9._-] with a known extension, so no path
 * can leave it. Only regular files: a FIFO of that name would block the
 * loop in open(2) without O_NONBLOCK, and a directory reads as nothing.
 * The file is read whole into the buffer that is queued (no copy), on
 * the loop: these are small and in the page cache, and ROUTE_STATIC_MAX
 * bounds what one request can make a worker read and hold. Returns false
 * when the path is not one of ours. */
static bool serve_static(struct worker *w, struct conn *c, const struct wsh_http_request *req)
{
    /* The other routes compare whole paths; here a target without its
     * "/" ("xdashboard") named a file by what followed its first byte,
     * past the split of --admin-listen (route_allowed). */
    if (req->path[0] != '/')
        return false;
    const char *name = req->path + 1;
    size_t n = req->path_len - 1;
    if (n == 0) {
        name = "index.html";
        n = 10;
    } else if (n == 9 && memcmp(name, "dashboard", 9) == 0) {
        name = "dashboard.html"; /* DESIGN.md 6: GET /dashboard */
        n = 14;
    }
    if (n > 64 || name[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    const char *type = content_type(name, n);
    if (type == NULL)
        return false;
    char path[4200];
    snprintf(path, sizeof(path), "%s/%.*s", wsh_cfg.web_root, (int)n, name);
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        return false;
    }
    if (!route_readable(w, c, req)) {
        close(fd);
        return true;
    }
    if (st.st_size > ROUTE_STATIC_MAX) {
        close(fd);
        wsh_log(WSH_LOG_WARN, "conn=%u ev=static_too_large file=%.*s bytes=%lld max=%u", c->id,
                (int)n, name, (long long)st.st_size, ROUTE_STATIC_MAX);
        respond(w, c, 500, "text/plain", "", "file too large to serve\n", 24);
        return true;
    }
    bool head_only = w->req_head;
    size_t size = (size_t)st.st_size, want = head_only ? 0 : size, len = 0;
    struct wsh_buf *body = want > 0 ? wsh_buf_new(want) : NULL;
    while (body != NULL && len < want) {
        ssize_t r = pread(fd, body->data + len, want - len, (off_t)len);
        if (r <= 0 && !(r < 0 && errno == EINTR))
            break; /* shrunk, or an I/O error: answered below */
        if (r > 0)
            len += (size_t)r;
    }
    close(fd);
    if (len < want) { /* out of memory included */
        if (body != NULL)
            wsh_buf_unref(body);
        wsh_log(WSH_LOG_WARN, "conn=%u ev=static_unreadable file=%.*s", c->id, (int)n, name);
        respond(w, c, 500, "text/plain", "", "file could not be read\n", 23);
        return true;
    }
    send_head(w, c, 200, type, size, "X-Content-Type-Options: nosniff\r\n", "no-cache");
    if (body != NULL) {
        body->end = (uint32_t)len;
        if (c->state == CONN_DEAD)
            wsh_buf_unref(body);
        else
            conn_reply(w, c, body);
    }
    conn_end_after_reply(w, c);
    return true;
}

/* RFC 7692 5: an offer with an unknown or malformed parameter is declined
 * (the connection goes on uncompressed), not refused; the first acceptable
 * offer wins. */
static bool pick_deflate(struct wsh_slice name, const struct wsh_slice *pn,
                         const struct wsh_slice *pv, size_t np, void *user)
{
    struct wsh_pmd_pick *pick = user;
    if (pick->accepted)
        return true;
    struct wsh_pmd_params agreed;
    if (wsh_pmd_server_offer(pick->cfg, name, pn, pv, np, &agreed) == WSH_PMD_ACCEPT) {
        pick->accepted = true;
        pick->params = agreed;
    }
    return true;
}

static bool path_is(const struct wsh_http_request *req, const char *p)
{
    size_t n = strlen(p);
    return req->path_len == n && memcmp(req->path, p, n) == 0;
}

static bool path_under(const struct wsh_http_request *req, const char *prefix)
{
    size_t n = strlen(prefix);
    return req->path_len >= n && memcmp(req->path, prefix, n) == 0;
}

/* With --admin-listen the operator's endpoints (/metrics, /dashboard,
 * /api/) answer on that address only, and it answers nothing that is the
 * public's: no upgrade, no demo page; the health checks, and the static
 * files the dashboard loads, answer on both. Without it, everything is on
 * the one port (DESIGN.md 6). */
static bool route_allowed(const struct conn *c, const struct wsh_http_request *req)
{
    if (wsh_cfg.admin_port < 0)
        return true;
    if (c->endpoint == EP_ADMIN)
        return !(path_is(req, "/") || path_is(req, "/ws") || path_is(req, "/echo") ||
                 path_under(req, "/raw/"));
    return !(path_is(req, "/metrics") || path_is(req, "/dashboard") ||
             path_is(req, "/dashboard.html") || path_under(req, "/api/"));
}

/* /healthz: the process answers (liveness). /readyz: it can also serve
 * what it is configured for (readiness): not while the token keys of
 * auth.jwks_url have never loaded. */
static void health_reply(struct worker *w, struct conn *c, const struct wsh_http_request *req,
                         bool readyz)
{
    if (!route_readable(w, c, req))
        return;
    const char *why = readyz ? hub_not_ready() : NULL;
    if (why != NULL) {
        char body[160];
        int n = snprintf(body, sizeof(body), "not ready: %s\n", why);
        respond(w, c, 503, "text/plain", "Retry-After: 1\r\n", body, (size_t)n);
    } else {
        respond(w, c, 200, "text/plain", "", "ok\n", 3);
    }
}

/* The 101 and the open connection, once every check has passed:
 * permessage-deflate as picked, then the endpoint's own start. retry_s:
 * a /ws client over the admission rate, told when to come back. */
static void upgrade(struct worker *w, struct conn *c, const struct wsh_http_request *req,
                    const struct wsh_hs_result *res, const struct wsh_pmd_pick *pick,
                    enum conn_endpoint ep, const char *chan, size_t chan_len, uint32_t retry_s)
{
    char ext[WSH_PMD_HEADER_MAX];
    const char *ext_response = NULL;
    if (pick->accepted) {
        if (wsh_pmd_response_write(ext, sizeof(ext), &pick->params) < 0) {
            http_reply(w, c, 500, "cannot write the extension response");
            return;
        }
        if (wsh_pmd_create(WSH_ROLE_SERVER, &pick->params, &wsh_cfg.pmd, &c->pmd) != WSH_OK) {
            http_reply(w, c, 503, "out of memory");
            return;
        }
        ext_response = ext;
    }
    char out[512];
    ssize_t n = wsh_hs_server_response(out, sizeof(out), res, ext_response);
    if (n <= 0) {
        http_reply(w, c, 500, "cannot write the handshake response");
        return;
    }
    metric_http(w, 101);
    conn_send_bytes(w, c, out, (size_t)n);
    if (c->state == CONN_DEAD)
        return;
    c->state = CONN_OPEN;
    /* RSV1 is legal only once permessage-deflate was agreed. */
    wsh_parser_init(&c->parser, WSH_ROLE_SERVER, c->pmd ? 0x40 : 0);
    if (retry_s > 0) {
        /* Never a /ws session (no c->hub): what the client sends before
         * our close is discarded. */
        hub_overload_notice(w, c, (uint64_t)retry_s * 1000u);
        return;
    }
    c->endpoint = (uint8_t)ep;
    if (ep == EP_RAW && rawchan_join(w, c, chan, chan_len) == NULL) {
        conn_close(w, c, WSH_CLOSE_INTERNAL, "out of memory");
        return;
    }
    if (ep == EP_HUB)
        hub_open(w, c);
    if (wsh_cfg.ping_interval_ms > 0)
        wsh_timer_start(w->loop, &c->timer, wsh_cfg.ping_interval_ms);
    else
        wsh_timer_stop(&c->timer);
    wsh_log(WSH_LOG_DEBUG, "conn=%u worker=%d ev=open path=%.*s", c->id, w->id, (int)req->path_len,
            req->path);
}

/* Routes a complete request head that is not the HTTP API's or /metrics:
 * answers it, parks it (a token waiting for keys), or upgrades. */
static void http_route(struct worker *w, struct conn *c, const struct wsh_http_request *req)
{
    static const char raw_prefix[] = "/raw/";
    const size_t raw_len = sizeof(raw_prefix) - 1;
    enum conn_endpoint ep = EP_NONE;
    const char *chan = NULL;
    size_t chan_len = 0;

    bool readyz = path_is(req, "/readyz");
    if (readyz || path_is(req, "/healthz")) {
        health_reply(w, c, req, readyz);
        return;
    }
    if (wsh_cfg.echo && path_is(req, "/echo")) {
        ep = EP_ECHO;
    } else if (path_is(req, "/ws")) {
        ep = EP_HUB;
    } else if (!wsh_cfg.no_raw && req->path_len > raw_len && path_under(req, raw_prefix)) {
        ep = EP_RAW;
        chan = req->path + raw_len;
        chan_len = req->path_len - raw_len;
    }
    if (ep == EP_NONE) {
        if (wsh_cfg.web_root && serve_static(w, c, req))
            return;
        http_reply(w, c, 404, "not found");
        return;
    }
    if (ep == EP_RAW && !channel_name_ok(chan, chan_len)) {
        http_reply(w, c, 400, "invalid channel name");
        return;
    }

    struct wsh_hs_header hs_headers[WSH_HTTP_DEFAULT_HEADERS];
    for (size_t i = 0; i < req->nheaders; i++) {
        hs_headers[i].name.p = req->headers[i].name;
        hs_headers[i].name.n = req->headers[i].name_len;
        hs_headers[i].value.p = req->headers[i].value;
        hs_headers[i].value.n = req->headers[i].value_len;
    }
    struct wsh_hs_request hreq = {
        .method = { req->method, req->method_len },
        .target = { req->target, req->target_len },
        .minor_version = req->minor_version,
        .headers = hs_headers,
        .nheaders = req->nheaders,
    };
    struct wsh_hs_result res;
    struct wsh_pmd_pick pick = { .cfg = &wsh_cfg.pmd };
    if (wsh_hs_server_check(&hreq, NULL, wsh_cfg.deflate ? pick_deflate : NULL, &pick, &res) !=
        WSH_OK) {
        wsh_log(WSH_LOG_DEBUG, "conn=%u ev=handshake_refused status=%d", c->id, res.status);
        http_reply(w, c, res.status, res.error ? res.error : "bad request");
        return;
    }
    /* /ws checks the Origin with the rest of its credentials (after the
     * admission rate, which it answers in-band); the other paths here. */
    if (ep != EP_HUB && !hub_origin_allowed(req)) {
        wsh_log(WSH_LOG_DEBUG, "conn=%u ev=handshake_refused status=403", c->id);
        http_reply(w, c, 403, "origin not allowed");
        return;
    }
    /* Over the admission rate, /raw and /echo get 503. A /ws client is
     * let through the upgrade only to be told `disconnect` with when to
     * come back, then close 1013: a browser script never sees a refused
     * upgrade's status or headers, but it reads these. Its token is not
     * even checked. */
    uint32_t retry_s = w->replay ? 0 : admit_upgrade(c->id); /* a parked one was admitted */
    if (retry_s > 0) {
        metric_add(&w->m.admission_refused, 1);
        wsh_log(WSH_LOG_DEBUG, "conn=%u ev=admission_refused path=%.*s retry_s=%u", c->id,
                (int)req->path_len, req->path, retry_s);
        if (ep != EP_HUB) {
            char extra[48];
            snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", retry_s);
            static const char body[] = "over the admission rate: retry later\n";
            respond(w, c, 503, "text/plain", extra, body, sizeof(body) - 1);
            return;
        }
        pick.accepted = false; /* the notice goes out uncompressed */
    }
    if (ep == EP_HUB && retry_s == 0) {
        const char *why = NULL;
        uint64_t ticket = 0;
        int st = hub_upgrade_check(w, c, req, !w->replay && conn_park_room(w), &ticket, &why);
        if (st == HUB_WAIT && conn_park(w, c, ticket)) {
            wsh_log(WSH_LOG_DEBUG, "conn=%u ev=handshake_waits_for_keys", c->id);
            return;
        }
        if (st == HUB_WAIT) {
            st = 503;
            why = "out of memory";
        }
        if (w->replay)
            keys_wait_count(st == 0 ? KEY_WAIT_ACCEPTED : KEY_WAIT_REFUSED);
        if (st != 0) {
            wsh_log(WSH_LOG_DEBUG, "conn=%u ev=handshake_refused status=%d why=\"%s\"", c->id, st,
                    why);
            http_reply(w, c, st, why);
            return;
        }
    }
    upgrade(w, c, req, &res, &pick, ep, chan, chan_len, retry_s);
}

/* A connection from a trusted proxy (config: trusted_proxies) is counted
 * per address once its request names the client: the rightmost address
 * of X-Forwarded-For that is not a trusted proxy (wsh_http_forwarded_for).
 * A request without one (the proxy's own health check, a proxy that does
 * not add the field) counts under the connection's address. Returns false
 * when the client is over its bounds and has been answered 429. */
static bool forwarded_admit(struct worker *w, struct conn *c, const struct wsh_http_request *req)
{
    c->flags &= (uint8_t)~CF_FORWARDED;
    struct sockaddr_storage client;
    socklen_t len = sizeof(client);
    size_t ntrusted;
    const struct wsh_cidr *trusted = hub_trusted_proxies(&ntrusted);
    bool named = wsh_http_forwarded_for(req, trusted, ntrusted, &client);
    if (!named && getpeername(c->io.fd, (struct sockaddr *)&client, &len) != 0)
        return true; /* nothing to count under: let the request decide */
    uint32_t retry_s;
    c->ip = admit_ip_acquire(&client, &retry_s);
    if (retry_s == 0)
        return true;
    char extra[48];
    snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", retry_s);
    wsh_log(WSH_LOG_DEBUG, "conn=%u ev=per_ip_refused forwarded=%d retry_s=%u", c->id,
            named ? 1 : 0, retry_s);
    respond(w, c, 429, "text/plain", extra, "too many connections from this address\n", 39);
    return false;
}

/* Expect: 100-continue, the only expectation defined (RFC 9110 10.1.1);
 * any other is ignored, as the RFC allows. */
static bool expects_continue(const struct wsh_http_request *req)
{
    /* RFC 9110 10.1.1: an HTTP/1.0 request's expectation is ignored. */
    const struct wsh_http_header *h = wsh_http_find(req, "expect");
    return req->minor_version >= 1 && h != NULL && h->value_len == 12 &&
           strncasecmp(h->value, "100-continue", 12) == 0;
}

/* Consumes the request head (and an API request's body) from in[0..len).
 * Returns bytes consumed; 0 while incomplete. */
static size_t route_request(struct worker *w, struct conn *c, uint8_t *in, size_t len,
                            size_t last_len);

size_t route_input(struct worker *w, struct conn *c, uint8_t *in, size_t len, size_t last_len)
{
    size_t used = route_request(w, c, in, len, last_len);
    w->req_head = false; /* answers outside a request (timers) are not for a HEAD */
    return used;
}

static bool host_ok(const struct wsh_http_request *req)
{
    size_t n = wsh_http_count(req, "Host");
    if (n > 1 || (n == 0 && req->minor_version >= 1))
        return false;
    const struct wsh_http_header *h = wsh_http_find(req, "Host");
    if (h == NULL)
        return true;
    /* uri-host [":" port]: reg-name, IPv4 or an IP literal in brackets;
     * not checked to the letter, but nothing a host cannot hold. */
    for (size_t i = 0; i < h->value_len; i++) {
        unsigned char ch = (unsigned char)h->value[i];
        if (ch <= 0x20 || ch >= 0x7f || strchr("/?#@,\\\"<>{}|^`", ch) != NULL)
            return false;
    }
    return true;
}

/* route_input for one request in in[0..len): whether it is a HEAD is known
 * to every answer written while it is handled (w->req_head). */
static size_t route_request(struct worker *w, struct conn *c, uint8_t *in, size_t len,
                            size_t last_len)
{
    struct wsh_http_header headers[WSH_HTTP_DEFAULT_HEADERS];
    struct wsh_http_request req;
    int status = 0;
    /* While a body is awaited the head is known complete: parse it again
     * from the start rather than searching only the new bytes. */
    if (c->flags & CF_HTTP_BODY)
        last_len = 0;
    ssize_t n = wsh_http_parse_request((const char *)in, len, last_len, NULL, &req, headers,
                                       WSH_HTTP_DEFAULT_HEADERS, &status);
    if (n == 0)
        return 0;
    if (n < 0) {
        wsh_log(WSH_LOG_DEBUG, "conn=%u ev=bad_request status=%d", c->id, status);
        http_reply(w, c, status ? status : 400, "bad request");
        return len;
    }
    w->req_head = route_method_is(&req, "HEAD");
    /* RFC 9112 3.2: an HTTP/1.1 request without Host, any request with
     * more than one, or one whose Host is not a host[:port] (spaces, a
     * list, a path) is answered 400 (the upgrade's own check says the
     * same). */
    if (!host_ok(&req)) {
        http_reply(w, c, 400, "exactly one Host header required");
        return len;
    }
    if ((c->flags & CF_FORWARDED) && !w->replay && !forwarded_admit(w, c, &req))
        return len;
    if (!route_allowed(c, &req)) {
        http_reply(w, c, 404, "not found");
        return len;
    }
    size_t blen = req.content_length > 0 ? (size_t)req.content_length : 0;
    if (req.chunked) {
        http_reply(w, c, 411, "a Content-Length body is required");
        return len;
    }
    /* Only the HTTP API takes a request body. Elsewhere a GET or HEAD that
     * sends one is malformed (400); any other method is wrong for the path
     * whatever its body, and the path's own route refuses it below, with
     * that path's Allow list (or 404). Such a body is never waited for:
     * input after an answer is discarded. */
    bool api = path_under(&req, "/api/");
    if (blen > 0 && !api && (route_method_is(&req, "GET") || route_method_is(&req, "HEAD"))) {
        http_reply(w, c, 400, "request body not accepted");
        return len;
    }
    if (blen > 0 && api) {
        if (blen > ROUTE_BODY_MAX) {
            http_reply(w, c, 413, "request body too large");
            return len;
        }
        if (len < (size_t)n + blen) {
            /* The first time the body is found missing, a head that is
             * refused already gets its final answer, and the body is not
             * waited for: a client without the key could otherwise make
             * the server keep up to a body's worth, trickled, until the
             * handshake deadline. A client that waits for a go-ahead
             * before sending it gets one (RFC 9110 10.1.1). */
            if (!(c->flags & CF_HTTP_BODY) && api_head_refused(w, c, &req))
                return len;
            if (!(c->flags & CF_HTTP_BODY) && expects_continue(&req)) {
                static const char go_on[] = "HTTP/1.1 100 Continue\r\n\r\n";
                conn_send_bytes(w, c, go_on, sizeof(go_on) - 1);
                if (c->state == CONN_DEAD)
                    return 0;
            }
            c->flags |= CF_HTTP_BODY;
            return 0;
        }
    }
    c->flags &= (uint8_t)~CF_HTTP_BODY;
    if (api) {
        int st = api_request(w, c, &req, in + n, blen);
        if (st == API_WAIT) {
            wsh_log(WSH_LOG_DEBUG, "conn=%u ev=api_waits", c->id);
            conn_hold_api(w, c);
            return 0;
        }
        if (st == API_HELD) {
            /* A broadcast went as far as the inboxes took it. The deadline
             * bounds a stall, not the whole broadcast: it starts again at
             * each step that published something. */
            wsh_timer_start(w->loop, &c->timer, wsh_cfg.handshake_timeout_ms);
            conn_hold_api(w, c);
            return 0;
        }
        return (size_t)n + blen;
    }
    if (path_is(&req, "/metrics")) {
        metrics_serve(w, c, &req);
        return (size_t)n;
    }
    http_route(w, c, &req);
    return (size_t)n;
}
