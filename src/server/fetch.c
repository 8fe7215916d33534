/* One HTTP(S) GET, blocking, for a helper thread: the JWK Set refresh
 * (keys.c). Never called on a worker's loop. Every step runs against one
 * deadline, in poll slices of at most 100 ms so that a stop request ends
 * it promptly, name resolution included. https verifies the certificate chain against the system's
 * trust store or a given CA bundle, and the host name (or IP address)
 * against the certificate. The request says `Connection: close`, the
 * response is read to EOF and parsed whole (wsh_http_parse_response). */
#include <errno.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server.h"

/* 0 when fd is ready for ev; -1 at the deadline; -2 when asked to stop. */
static int wait_fd(int fd, short ev, int64_t deadline, const _Atomic bool *stop)
{
    for (;;) {
        if (atomic_load(stop))
            return -2;
        int64_t left = deadline - (int64_t)wsh_now_ms();
        if (left <= 0)
            return -1;
        struct pollfd p = { .fd = fd, .events = ev, .revents = 0 };
        int r = poll(&p, 1, left > 100 ? 100 : (int)left);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

/* getaddrinfo has no timeout: a name server that does not answer holds
 * it for resolv.conf's timeout x attempts x servers (10 s and more), and
 * with it the fetcher and so shutdown. It runs on a thread of its own
 * instead, which the fetch waits for only until the deadline or a stop;
 * of the two, the one that lets go last frees the lookup (and a result
 * that came too late). A lookup may also never return (glibc's, after an
 * allocation failed inside it: see wsh_addrs_literal), so while one that
 * was given up on is still running no other is started: the fetches fail
 * at once, saying so, instead of leaving a thread behind each. */
static _Atomic int lookups_running;

struct lookup {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* on CLOCK_MONOTONIC */
    int refs;          /* guarded by mu, as are the three below */
    bool done;
    int rc;
    struct addrinfo *res;
    char host[sizeof(((struct wsh_http_url *)0)->host)];
    char port[sizeof(((struct wsh_http_url *)0)->port)];
};

static void lookup_put(struct lookup *l)
{
    pthread_mutex_lock(&l->mu);
    int left = --l->refs;
    pthread_mutex_unlock(&l->mu);
    if (left > 0)
        return;
    if (l->res != NULL)
        freeaddrinfo(l->res);
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

static void *lookup_main(void *arg)
{
    struct lookup *l = arg;
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(l->host, l->port, &hints, &res);
    pthread_mutex_lock(&l->mu);
    l->rc = rc;
    l->res = rc == 0 ? res : NULL;
    /* Before done: the fetch that sees done may start the next lookup. */
    atomic_fetch_sub(&lookups_running, 1);
    l->done = true;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
    lookup_put(l);
    return NULL;
}

/* u's addresses within the deadline: 0 with out filled, or -1 with err. */
static int resolve(const struct wsh_http_url *u, int64_t deadline, const _Atomic bool *stop,
                   struct wsh_addrs *out, char *err, size_t errlen)
{
    if (wsh_addrs_literal(u->host, atoi(u->port), out))
        return 0;
    if (atomic_load(&lookups_running) > 0) {
        snprintf(err, errlen, "cannot resolve %s: an earlier lookup has not returned", u->host);
        return -1;
    }
    struct lookup *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(l->host, u->host, sizeof(l->host));
    memcpy(l->port, u->port, sizeof(l->port));
    l->refs = 2;
    pthread_mutex_init(&l->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_attr_t ta;
    pthread_attr_init(&ta);
    pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    atomic_fetch_add(&lookups_running, 1);
    int started = pthread_create(&t, &ta, lookup_main, l) == 0;
    pthread_attr_destroy(&ta);
    if (!started) {
        atomic_fetch_sub(&lookups_running, 1);
        l->refs = 1;
        lookup_put(l);
        snprintf(err, errlen, "cannot start a name lookup");
        return -1;
    }
    int rc = EAI_AGAIN;
    bool done = false;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        if (l->done) {
            done = true;
            rc = l->rc;
            wsh_addrs_append(out, l->res);
            break;
        }
        int64_t left = deadline - (int64_t)wsh_now_ms();
        if (atomic_load(stop) || left <= 0)
            break;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        int64_t ns = until.tv_nsec + (left > 100 ? 100 : left) * 1000000;
        until.tv_sec += ns / 1000000000;
        until.tv_nsec = ns % 1000000000;
        pthread_cond_timedwait(&l->cv, &l->mu, &until);
    }
    pthread_mutex_unlock(&l->mu);
    lookup_put(l);
    if (!done) {
        snprintf(err, errlen, "cannot resolve %s: no answer in time", u->host);
        return -1;
    }
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", u->host, gai_strerror(rc));
        return -1;
    }
    return 0;
}

static int dial(const struct wsh_http_url *u, int64_t deadline, const _Atomic bool *stop, char *err,
                size_t errlen)
{
    struct wsh_addrs addrs;
    if (resolve(u, deadline, stop, &addrs, err, errlen) != 0)
        return -1;
    int fd = -1;
    for (int i = 0; i < addrs.n && fd < 0; i++) {
        const struct sockaddr *sa = (const struct sockaddr *)&addrs.a[i].ss;
        fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        int e = 0;
        socklen_t el = sizeof(e);
        if ((connect(fd, sa, addrs.a[i].len) != 0 && errno != EINPROGRESS) ||
            wait_fd(fd, POLLOUT, deadline, stop) != 0 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0 || e != 0) {
            close(fd);
            fd = -1;
        }
    }
    if (fd < 0)
        snprintf(err, errlen, "cannot connect to %s port %s", u->host, u->port);
    return fd;
}

/* A plain socket or a TLS session over it. */
struct stream {
    int fd;
    SSL *ssl;
};

/* Runs one SSL call to completion: 1 done, 0 EOF (reads), -1 error. */
static int ssl_io(struct stream *s, int (*op)(SSL *, void *, int), void *buf, int n,
                  int64_t deadline, const _Atomic bool *stop, int *done)
{
    for (;;) {
        ERR_clear_error();
        int r = op(s->ssl, buf, n);
        if (r > 0) {
            *done = r;
            return 1;
        }
        int e = SSL_get_error(s->ssl, r);
        if (e == SSL_ERROR_ZERO_RETURN)
            return 0;
        short ev = e == SSL_ERROR_WANT_READ ? POLLIN : e == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
        if (ev == 0 || wait_fd(s->fd, ev, deadline, stop) != 0)
            return -1;
    }
}

static int op_read(SSL *ssl, void *buf, int n)
{
    return SSL_read(ssl, buf, n);
}

static int op_write(SSL *ssl, void *buf, int n)
{
    return SSL_write(ssl, buf, n);
}

static int op_connect(SSL *ssl, void *buf, int n)
{
    (void)buf;
    (void)n;
    return SSL_connect(ssl);
}

static SSL_CTX *client_ctx(const char *ca_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        goto fail;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* A server that closes without close_notify: the framing checks
     * (Content-Length, chunked) still catch a body cut short. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    if ((ca_file != NULL ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                         : SSL_CTX_set_default_verify_paths(ctx)) != 1)
        goto fail;
    return ctx;
fail:
    snprintf(err, errlen, "TLS setup: %s",
             ca_file != NULL ? "cannot load auth.jwks_ca_file" : "no trust store");
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return NULL;
}

/* Why a TLS handshake failed, from what OpenSSL left behind. */
static void tls_error(SSL *ssl, const struct wsh_http_url *u, char *err, size_t errlen)
{
    long vr = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;
    unsigned long e = ERR_get_error();
    char es[160] = "handshake failed or timed out";
    if (e != 0)
        ERR_error_string_n(e, es, sizeof(es));
    if (vr != X509_V_OK)
        snprintf(err, errlen, "TLS: the certificate of %s is not trusted: %s", u->host,
                 X509_verify_cert_error_string(vr));
    else
        snprintf(err, errlen, "TLS with %s: %s", u->host, es);
    ERR_clear_error();
}

static int tls_start(struct stream *s, SSL_CTX *ctx, const struct wsh_http_url *u, int64_t deadline,
                     const _Atomic bool *stop, char *err, size_t errlen)
{
    s->ssl = SSL_new(ctx);
    bool literal = u->ipv6 || strspn(u->host, "0123456789.") == strlen(u->host);
    bool ok = s->ssl != NULL && SSL_set_fd(s->ssl, s->fd) == 1;
    if (ok && literal)
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl), u->host) == 1;
    else if (ok) {
        char name[sizeof(u->host)]; /* the SNI macro takes a non-const pointer */
        memcpy(name, u->host, sizeof(name));
        ok = SSL_set_tlsext_host_name(s->ssl, name) == 1 && SSL_set1_host(s->ssl, name) == 1;
    }
    int done = 0;
    if (ok && ssl_io(s, op_connect, NULL, 0, deadline, stop, &done) == 1)
        return 0;
    tls_error(s->ssl, u, err, errlen);
    return -1;
}

static int send_all(struct stream *s, char *p, size_t n, int64_t deadline, const _Atomic bool *stop)
{
    while (n > 0) {
        int done = 0;
        if (s->ssl != NULL) {
            if (ssl_io(s, op_write, p, (int)n, deadline, stop, &done) != 1)
                return -1;
        } else {
            ssize_t r = send(s->fd, p, n, MSG_NOSIGNAL);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
                if (wait_fd(s->fd, POLLOUT, deadline, stop) != 0)
                    return -1;
                continue;
            }
            if (r <= 0)
                return -1;
            done = (int)r;
        }
        p += done;
        n -= (size_t)done;
    }
    return 0;
}

/* Reads the response into *bufp, grown as it comes up to cap bytes (and
 * one more, for a terminating NUL): to the end of a Content-Length body,
 * or else to EOF (a server may keep the connection open whatever
 * `Connection: close` said: it is not waited for past its body). Returns
 * the length, or -1 on error, -2 when the response is over cap, -3 when
 * out of memory. */
static ssize_t read_all(struct stream *s, char **bufp, size_t cap, int64_t deadline,
                        const _Atomic bool *stop)
{
    size_t n = 0, size = 0;
    char *buf = NULL;
    for (;;) {
        if (n == size) {
            if (size == cap)
                return -2;
            size_t want = size == 0 ? 16384 : size * 2;
            if (want > cap)
                want = cap;
            char *nb = realloc(buf, want + 1);
            if (nb == NULL)
                return -3;
            *bufp = buf = nb;
            size = want;
        }
        int done = 0;
        if (s->ssl != NULL) {
            int r = ssl_io(s, op_read, buf + n, (int)(size - n), deadline, stop, &done);
            if (r == 0)
                return (ssize_t)n;
            if (r < 0)
                return -1;
        } else {
            ssize_t r = recv(s->fd, buf + n, size - n, 0);
            if (r == 0)
                return (ssize_t)n;
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
                if (wait_fd(s->fd, POLLIN, deadline, stop) != 0)
                    return -1;
                continue;
            }
            if (r < 0)
                return -1;
            done = (int)r;
        }
        n += (size_t)done;
        if (wsh_http_response_complete(buf, n))
            return (ssize_t)n;
    }
}

/* Through an HTTP proxy (HTTPS_PROXY): asks it for a tunnel to u with
 * CONNECT (RFC 9110 9.3.6) on the plain connection s, and reads its
 * answer's head, no further: TLS with u begins on the next byte. */
static int tunnel(struct stream *s, const struct wsh_http_proxy *px, const struct wsh_http_url *u,
                  int64_t deadline, const _Atomic bool *stop, char *err, size_t errlen)
{
    char auth[sizeof(px->auth) * 4 / 3 + 64] = "";
    if (px->auth[0] != '\0') {
        int n = snprintf(auth, sizeof(auth), "Proxy-Authorization: Basic ");
        EVP_EncodeBlock((unsigned char *)auth + n, (const unsigned char *)px->auth,
                        (int)strlen(px->auth));
        strcat(auth, "\r\n");
    }
    char target[sizeof(u->host) + 16];
    char req[sizeof(target) * 2 + sizeof(auth) + 64];
    int qn = wsh_http_url_authority(u, true, target, sizeof(target)) < 0
                 ? -1
                 : snprintf(req, sizeof(req), "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", target,
                            target, auth);
    if (qn <= 0 || (size_t)qn >= sizeof(req) || send_all(s, req, (size_t)qn, deadline, stop) != 0) {
        snprintf(err, errlen, "cannot send CONNECT to the proxy %s", px->url.host);
        return -1;
    }
    /* Exactly the head is consumed: what arrives is peeked, and taken up
     * to the blank line, or whole while the blank line has not come (it
     * is all head then). A peek alone would see the same bytes again and
     * again while the rest of a head sent in pieces was on its way. */
    char head[WSH_HTTP_RESPONSE_HEAD_MAX];
    size_t have = 0;
    const char *end = NULL;
    while (end == NULL) {
        if (have == sizeof(head)) {
            snprintf(err, errlen, "the proxy %s answered CONNECT with an oversized head",
                     px->url.host);
            return -1;
        }
        if (wait_fd(s->fd, POLLIN, deadline, stop) != 0) {
            snprintf(err, errlen, "no answer to CONNECT from the proxy %s", px->url.host);
            return -1;
        }
        ssize_t r = recv(s->fd, head + have, sizeof(head) - have, MSG_PEEK);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (r <= 0) {
            snprintf(err, errlen, "the proxy %s closed without answering CONNECT", px->url.host);
            return -1;
        }
        size_t from = have > 3 ? have - 3 : 0; /* the blank line may straddle */
        end = memmem(head + from, have + (size_t)r - from, "\r\n\r\n", 4);
        size_t take = end != NULL ? (size_t)(end + 4 - head) - have : (size_t)r;
        if (recv(s->fd, head + have, take, 0) != (ssize_t)take) {
            snprintf(err, errlen, "cannot read the proxy's answer");
            return -1;
        }
        have += take;
    }
    size_t hl = have;
    /* Any 2xx opens the tunnel. */
    const char *eol = memmem(head, hl, "\r\n", 2); /* found: the head ends in CRLF CRLF */
    int status = wsh_http_status_line(head, (size_t)(eol - head));
    if (status < 0) {
        snprintf(err, errlen, "the proxy %s answered CONNECT with no HTTP status", px->url.host);
        return -1;
    }
    if (status / 100 != 2) {
        snprintf(err, errlen, "the proxy %s refused CONNECT: %d", px->url.host, status);
        return -1;
    }
    return 0;
}

int fetch_get(const struct wsh_http_url *u, const struct wsh_http_proxy *proxy, const char *ca_file,
              size_t max_body, int timeout_ms, const _Atomic bool *stop, char **body,
              size_t *body_len, int *status, char *err, size_t errlen)
{
    *status = 0;
    int64_t deadline = (int64_t)wsh_now_ms() + timeout_ms;
    /* Room for the head, and for a chunked body's framing around max_body:
     * up to 5 bytes a byte, which 1-byte chunks take ("1\r\nX\r\n"). The
     * buffer grows with what comes (read_all); a set sent in small chunks
     * by a server that writes as it goes is no error. */
    size_t cap = WSH_HTTP_RESPONSE_HEAD_MAX + 6 * max_body + 4096;
    SSL_CTX *ctx = NULL;
    struct stream s = { .fd = -1, .ssl = NULL };
    char *buf = NULL;
    int rc = -1;
    if (u->tls && (ctx = client_ctx(ca_file, err, errlen)) == NULL)
        goto out;
    /* Plain http:// is for loopback only, never proxied. */
    if (!u->tls)
        proxy = NULL;
    if ((s.fd = dial(proxy != NULL ? &proxy->url : u, deadline, stop, err, errlen)) < 0)
        goto out;
    if (proxy != NULL && tunnel(&s, proxy, u, deadline, stop, err, errlen) != 0)
        goto out;
    if (ctx != NULL && tls_start(&s, ctx, u, deadline, stop, err, errlen) != 0)
        goto out;
    char host[sizeof(u->host) + 16];
    char req[sizeof(u->path) + sizeof(host) + 160];
    int qn = wsh_http_url_authority(u, false, host, sizeof(host)) < 0
                 ? -1
                 : snprintf(req, sizeof(req),
                            "GET %s HTTP/1.1\r\nHost: %s\r\n"
                            "User-Agent: wshub/" WSH_VERSION "\r\n"
                            "Accept: application/jwk-set+json, application/json\r\n"
                            "Connection: close\r\n\r\n",
                            u->path, host);
    if (qn <= 0 || (size_t)qn >= sizeof(req) ||
        send_all(&s, req, (size_t)qn, deadline, stop) != 0) {
        snprintf(err, errlen, "cannot send the request to %s", u->host);
        goto out;
    }
    ssize_t n = read_all(&s, &buf, cap, deadline, stop);
    if (n < 0) {
        if (n == -2)
            snprintf(err, errlen, "body over its bound of %zu bytes (response over %zu bytes)",
                     max_body, cap);
        else if (n == -3)
            snprintf(err, errlen, "out of memory");
        else
            snprintf(err, errlen, "no complete response from %s", u->host);
        goto out;
    }
    struct wsh_http_response r;
    const char *why = NULL;
    if (wsh_http_parse_response(buf, (size_t)n, max_body, &r, &why) != WSH_OK) {
        snprintf(err, errlen, "bad response from %s: %s", u->host, why);
        goto out;
    }
    *status = r.status;
    if (r.status != 200) {
        /* Redirects are not followed: configure the final URL. */
        snprintf(err, errlen, "%s answered %d", u->host, r.status);
        goto out;
    }
    memmove(buf, r.body, r.body_len);
    buf[r.body_len] = '\0';
    *body = buf;
    *body_len = r.body_len;
    buf = NULL;
    rc = 0;
out:
    free(buf);
    if (s.ssl != NULL)
        SSL_free(s.ssl);
    if (s.fd >= 0)
        close(s.fd);
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}
