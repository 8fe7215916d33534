/* wshub-bench engine: non-blocking client sockets on one edge-triggered
 * epoll loop, the RFC 6455 client handshake (4.1) and framing (5.2, 5.3)
 * through the wsh_ws core, one write per connection per loop turn.
 * --tls puts OpenSSL between the socket and everything else (a
 * non-blocking SSL_connect, then SSL_read/SSL_write); --deflate adds
 * permessage-deflate (RFC 7692) through the core's pmd module. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

/* We read every message the server may send; its own limit is 64 KiB. */
static const struct wsh_limits client_limits = { .max_message = 64u << 20,
                                                 .max_fragments = 1u << 20 };

int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void fill_random(void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            perror("getrandom");
            exit(1);
        }
        p += r;
        n -= (size_t)r;
    }
}

/* Mask keys come from xorshift64* seeded by getrandom(). RFC 6455 5.3 wants
 * keys a hostile page script cannot predict, to stop cache poisoning of
 * intermediaries by attacker-chosen bytes. The bench sends only its own
 * fixed patterns to a server we run on loopback, so that threat does not
 * exist here, and a getrandom() call per frame would cost more than the
 * frame itself. Servers cannot tell the difference. */
static void mask_key(uint8_t key[4], void *user)
{
    struct bench *b = user;
    uint64_t x = b->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    b->rng = x;
    uint32_t k = (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
    memcpy(key, &k, 4);
}

int bench_init(struct bench *b, uint32_t slots, const struct bench_mode *m)
{
    b->m = m;
    b->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (b->epfd < 0) {
        perror("epoll_create1");
        return -1;
    }
    fill_random(&b->rng, sizeof b->rng);
    b->rng |= 1;
    b->conns = calloc(slots, sizeof *b->conns);
    b->freelist = calloc(slots, sizeof *b->freelist);
    b->flush = calloc(slots, sizeof *b->flush);
    b->dead = calloc(slots, sizeof *b->dead);
    if (!b->conns || !b->freelist || !b->flush || !b->dead) {
        fprintf(stderr, "out of memory for %u connections\n", slots);
        return -1;
    }
    b->nconns = slots;
    for (uint32_t i = 0; i < slots; i++) {
        b->conns[i].idx = i;
        b->conns[i].fd = -1;
        b->freelist[b->nfree++] = slots - 1 - i;
    }
    b->now = now_ns();
    if (b->o.tls) {
        b->ssl_ctx = bench_tls_ctx(&b->o);
        if (!b->ssl_ctx)
            return -1;
    }
    if (b->o.deflate) {
        /* Our deflater takes any window the server asks for (the server
         * caps it: an offer without client_max_window_bits is declined),
         * and resets per message, so no deflate memory is held between
         * messages on either side of the client's direction. */
        b->pmd_want = (struct wsh_pmd_params){ .client_no_context_takeover = true,
                                               .client_max_window_bits = 15,
                                               .server_max_window_bits = 15 };
        if (wsh_pmd_client_offer(b->pmd_offer, sizeof b->pmd_offer, &b->pmd_want) < 0) {
            fprintf(stderr, "cannot build the permessage-deflate offer\n");
            return -1;
        }
    }
    return 0;
}

static void release_slot(struct conn *c)
{
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    wsh_pmd_destroy(c->pmd);
    c->pmd = NULL;
}

void bench_free(struct bench *b)
{
#ifdef WSH_BENCH_URING
    bench_uring_stop(b); /* before the buffers its requests point into */
#endif
    for (uint32_t i = 0; i < b->nconns; i++) {
        struct conn *c = &b->conns[i];
        if (c->fd >= 0)
            close(c->fd);
        release_slot(c);
        free(c->out);
        free(c->abuf);
        free(c->hs);
        free(c->ring);
    }
    free(b->conns);
    free(b->freelist);
    free(b->flush);
    free(b->dead);
    free(b->zbuf);
    for (uint32_t i = 0; i < b->nspare_out; i++)
        free(b->spare_out[i]);
    free(b->spare_out);
    if (b->ssl_ctx)
        bench_tls_ctx_free(b->ssl_ctx);
    if (b->epfd >= 0)
        close(b->epfd);
}

size_t conn_buffered(const struct conn *c)
{
    return c->out_len - c->out_off;
}

size_t conn_msg_size(const struct bench *b, size_t n)
{
    if (b->o.raw)
        return n;
    /* Deflate can expand incompressible data: 5 bytes per stored block of
     * at most 64 KiB, plus a few for the block headers. */
    if (b->o.deflate)
        n += n / 1024 + 16;
    return wsh_message_size(n, 0, true);
}

void conn_mark_pending(struct bench *b, struct conn *c)
{
    if (!c->pending) {
        c->pending = true;
        b->flush[b->nflush++] = c;
    }
}

uint8_t *conn_reserve(struct bench *b, struct conn *c, size_t n)
{
#ifdef WSH_BENCH_URING
    if (!c->out)
        c->out = bench_uring_take_out(b);
#endif
    /* Bytes an io_uring send has in flight must stay where they are. */
    if (c->out_len + n > c->out_cap && c->out_off > 0 && !c->tx_busy) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    if (c->out_len + n > c->out_cap)
        return NULL;
    uint8_t *p = c->out + c->out_len;
    c->out_len += n;
    conn_mark_pending(b, c);
    return p;
}

static int zbuf_append(const uint8_t *p, size_t n, void *user)
{
    struct bench *b = user;
    if (b->zlen + n > b->zcap) {
        size_t cap = b->zcap ? b->zcap : 4096;
        while (cap < b->zlen + n)
            cap *= 2;
        uint8_t *z = realloc(b->zbuf, cap);
        if (!z)
            return WSH_ENOMEM;
        b->zbuf = z;
        b->zcap = cap;
    }
    memcpy(b->zbuf + b->zlen, p, n);
    b->zlen += n;
    return WSH_OK;
}

/* Compresses a data message into b->zbuf and frames it with RSV1. */
static bool send_compressed(struct bench *b, struct conn *c, unsigned op, const uint8_t *p,
                            size_t n)
{
    b->zlen = 0;
    int st = wsh_pmd_compress(c->pmd, p, n, zbuf_append, b);
    if (st != WSH_OK) {
        fprintf(stderr, "wshub-bench: compression failed: %s\n", wsh_strerror(st));
        exit(1);
    }
    uint8_t *dst = conn_reserve(b, c, wsh_message_size(b->zlen, 0, true));
    if (!dst)
        return false;
    wsh_message_write(dst, op, true, b->zbuf, b->zlen, 0, mask_key, b);
    return true;
}

bool conn_send_msg(struct bench *b, struct conn *c, unsigned op, const uint8_t *p, size_t n)
{
    if (c->pmd && (op == WSH_OP_TEXT || op == WSH_OP_BINARY) && wsh_pmd_worth_compressing(NULL, n))
        return send_compressed(b, c, op, p, n);
    size_t need = conn_msg_size(b, n);
    uint8_t *dst = conn_reserve(b, c, need);
    if (!dst)
        return false;
    if (b->o.raw)
        memcpy(dst, p, n);
    else
        wsh_message_write(dst, op, false, p, n, 0, mask_key, b);
    return true;
}

void conn_kill(struct bench *b, struct conn *c, bool clean)
{
    if (c->state == CS_DEAD || c->state == CS_FREE)
        return;
    bool was_open = c->state >= CS_OPEN;
    if (c->state == CS_CONNECTING || c->state == CS_TLS || c->state == CS_HANDSHAKE)
        b->inflight--;
    if (was_open)
        b->nopen--;
#ifdef WSH_BENCH_URING
    /* An io_uring request holds its own reference to the socket, which
     * close() does not end: shutdown() does. */
    if (b->uring)
        shutdown(c->fd, SHUT_RDWR);
#endif
    /* close() also removes the fd from the epoll set. */
    close(c->fd);
    c->fd = -1;
    free(c->hs);
    c->hs = NULL;
    b->dead[b->ndead++] = c->idx;
    /* The callback still sees the state the connection died in. */
    if (b->m->on_close)
        b->m->on_close(b, c, clean);
    c->state = CS_DEAD;
}

void conn_close_ws(struct bench *b, struct conn *c)
{
    if (c->state != CS_OPEN)
        return;
    if (b->o.raw) {
        conn_kill(b, c, true);
        return;
    }
    uint8_t pl[2];
    size_t n = wsh_close_payload(pl, WSH_CLOSE_NORMAL, NULL, 0);
    if (!conn_send_msg(b, c, WSH_OP_CLOSE, pl, n)) {
        conn_kill(b, c, false);
        return;
    }
    c->state = CS_CLOSING;
    c->deadline = b->now + BENCH_CLOSE_WAIT;
}

static void become_open(struct bench *b, struct conn *c)
{
    b->inflight--;
    b->nopen++;
    b->opened++;
    c->state = CS_OPEN;
    free(c->hs);
    c->hs = NULL;
    if (b->m->on_open)
        b->m->on_open(b, c);
}

struct conn *bench_connect(struct bench *b, bool pub)
{
    if (b->nfree == 0 || b->uring) /* the ring serves only the conns it was given */
        return NULL;
    struct conn *c = &b->conns[b->freelist[b->nfree - 1]];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        b->connect_errors++;
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (b->o.sources > 1) {
        /* Let connect() pick the port per 4-tuple, so each source address
         * gets the whole ephemeral range. */
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src = { .sin_family = AF_INET };
        uint32_t n = b->next_src++ % b->o.sources;
        src.sin_addr.s_addr = htonl(0x7f000001u + n);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            b->connect_errors++;
            close(fd);
            return NULL;
        }
    }
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)b->o.port) };
    inet_pton(AF_INET, b->o.host, &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        b->connect_errors++;
        close(fd);
        return NULL;
    }
    b->nfree--;
    c->gen++;
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                              .data.u64 = ((uint64_t)c->gen << 32) | c->idx };
    if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        perror("epoll_ctl");
        close(fd);
        b->freelist[b->nfree++] = c->idx;
        b->connect_errors++;
        return NULL;
    }
    size_t cap = pub && b->m->pub_out_cap > b->m->out_cap ? b->m->pub_out_cap : b->m->out_cap;
    if (cap < 1024)
        cap = 1024;
    if (!c->out || c->out_cap < cap) {
        free(c->out);
        c->out_cap = cap;
        c->out = malloc(c->out_cap);
        if (!c->out) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
    }
    c->fd = fd;
    c->state = CS_CONNECTING;
    c->role_pub = pub;
    c->pending = false;
    c->blocked = false;
    c->tx_busy = false;
    c->read_wants_write = c->write_wants_read = false;
    c->out_off = c->out_len = 0;
    c->carry_len = 0;
    c->hs_len = 0;
    c->msg_pos = 0;
    c->msg_sum = 0;
    c->raw_pos = 0;
    c->t_start = b->now;
    c->sent_seq = c->recv_seq = c->next_seq = 0;
    c->phase = PH_NONE;
    c->alen = 0;
    c->deadline = b->now + BENCH_HS_TIMEOUT;
    wsh_parser_init(&c->parser, WSH_ROLE_CLIENT, 0);
    b->nactive++;
    b->inflight++;
    return c;
}

/* ------------------------------------------------------------------ */
/* Socket I/O, plain or through OpenSSL                                */

enum { IO_AGAIN = -1, IO_ERR = -2 };

/* Wire bytes are counted at the socket: for TLS, what the socket BIO moved
 * (records, handshake included). */
static void tls_account(struct bench *b, struct conn *c)
{
    uint64_t rx = BIO_number_read(SSL_get_rbio(c->ssl));
    uint64_t tx = BIO_number_written(SSL_get_wbio(c->ssl));
    b->wire_rx += rx - c->tls_rx;
    b->wire_tx += tx - c->tls_tx;
    c->tls_rx = rx;
    c->tls_tx = tx;
}

/* Returns the bytes read (> 0), 0 at EOF, IO_AGAIN or IO_ERR. */
static ssize_t conn_recv(struct bench *b, struct conn *c, uint8_t *buf, size_t cap)
{
    if (!c->ssl) {
        ssize_t n;
        do
            n = recv(c->fd, buf, cap, 0);
        while (n < 0 && errno == EINTR);
        if (n < 0)
            return errno == EAGAIN ? IO_AGAIN : IO_ERR;
        b->wire_rx += (uint64_t)n;
        return n;
    }
    size_t got = 0;
    c->read_wants_write = false;
    errno = 0;
    int r = SSL_read_ex(c->ssl, buf, cap, &got);
    tls_account(b, c);
    if (r == 1)
        return (ssize_t)got;
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        return IO_AGAIN;
    case SSL_ERROR_WANT_WRITE:
        c->read_wants_write = true;
        return IO_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        /* OpenSSL 1.1: EOF without close_notify has errno 0. */
        ERR_clear_error();
        return errno == 0 ? 0 : IO_ERR;
    default:
        ERR_clear_error();
        return IO_ERR;
    }
}

/* Returns the bytes written (> 0), IO_AGAIN or IO_ERR. */
static ssize_t conn_send(struct bench *b, struct conn *c, const uint8_t *p, size_t n)
{
    if (!c->ssl) {
        ssize_t k;
        do
            k = send(c->fd, p, n, MSG_NOSIGNAL);
        while (k < 0 && errno == EINTR);
        if (k < 0)
            return errno == EAGAIN ? IO_AGAIN : IO_ERR;
        b->wire_tx += (uint64_t)k;
        return k;
    }
    size_t put = 0;
    c->write_wants_read = false;
    int r = SSL_write_ex(c->ssl, p, n, &put);
    tls_account(b, c);
    if (r == 1)
        return (ssize_t)put;
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_WRITE:
        return IO_AGAIN;
    case SSL_ERROR_WANT_READ:
        c->write_wants_read = true;
        return IO_AGAIN;
    default:
        ERR_clear_error();
        return IO_ERR;
    }
}

static void tls_fail(struct bench *b, struct conn *c)
{
    b->tls_errors++;
    long v = SSL_get_verify_result(c->ssl);
    if (v != X509_V_OK) {
        if (b->tls_verify_errors++ == 0)
            fprintf(stderr,
                    "wshub-bench: TLS certificate verification failed: %s "
                    "(--cacert FILE trusts a CA, --insecure skips the check)\n",
                    X509_verify_cert_error_string(v));
    } else if (b->tls_errors - b->tls_verify_errors == 1) {
        char msg[256] = "connection closed during the handshake";
        unsigned long e = ERR_peek_error();
        if (e)
            ERR_error_string_n(e, msg, sizeof msg);
        fprintf(stderr, "wshub-bench: TLS handshake failed: %s\n", msg);
    }
    ERR_clear_error();
    conn_kill(b, c, false);
}

static void send_request(struct bench *b, struct conn *c);

/* Drives SSL_connect; on success sends the upgrade request. */
static void tls_step(struct bench *b, struct conn *c)
{
    int r = SSL_connect(c->ssl);
    tls_account(b, c);
    if (r == 1) {
        send_request(b, c);
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return;
    tls_fail(b, c);
}

static void tls_start(struct bench *b, struct conn *c)
{
    c->ssl = SSL_new(b->ssl_ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
        fprintf(stderr, "wshub-bench: SSL_new failed\n");
        exit(1);
    }
    c->tls_rx = c->tls_tx = 0;
    /* RFC 6066 3: no IP literals in SNI, so SNI only with --sni. The
     * certificate must then name that host, or else our IP address. */
    if (b->o.sni) {
        char name[256]; /* the macro casts away const; main.c bounds --sni */
        snprintf(name, sizeof name, "%s", b->o.sni);
        SSL_set_tlsext_host_name(c->ssl, name);
    }
    if (!b->o.insecure) {
        int ok = b->o.sni ? SSL_set1_host(c->ssl, b->o.sni)
                          : X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), b->o.host);
        if (ok != 1) {
            fprintf(stderr, "wshub-bench: cannot set the name to verify\n");
            exit(1);
        }
    }
    c->state = CS_TLS;
    tls_step(b, c);
}

static void send_request(struct bench *b, struct conn *c)
{
    if (b->o.raw) {
        become_open(b, c);
        return;
    }
    uint8_t nonce[16];
    /* 16 bytes per handshake: cheap next to the TCP connect. */
    fill_random(nonce, sizeof nonce);
    wsh_hs_client_key(nonce, c->key);
    char host[300];
    snprintf(host, sizeof host, "%s:%u", b->o.sni ? b->o.sni : b->o.host, b->o.port);
    char req[1024 + 8192];
    ssize_t n = wsh_hs_client_request(req, sizeof req, host, b->o.path, c->key, NULL,
                                      b->o.deflate ? b->pmd_offer : NULL);
    if (n > 4 && b->o.token) {
        /* --token: one more header before the blank line. */
        int k = snprintf(req + n - 2, sizeof req - (size_t)n + 2,
                         "Authorization: Bearer %s\r\n\r\n", b->o.token);
        n = k > 0 && (size_t)k < sizeof req - (size_t)n + 2 ? n - 2 + k : -1;
    }
    uint8_t *dst = n > 0 ? conn_reserve(b, c, (size_t)n) : NULL;
    if (!dst) {
        b->hs_errors++;
        conn_kill(b, c, false);
        return;
    }
    memcpy(dst, req, (size_t)n);
    c->state = CS_HANDSHAKE;
}

/* Raw mode: the stream is cut into fixed-size messages. */
static void feed_raw(struct bench *b, struct conn *c, const uint8_t *p, size_t n)
{
    size_t s = b->o.size;
    while (n > 0 && c->state >= CS_OPEN && c->state < CS_DEAD) {
        size_t pos = c->raw_pos;
        size_t k = s - pos < n ? s - pos : n;
        bool first = pos == 0;
        bool last = pos + k == s;
        c->raw_pos = last ? 0 : pos + k;
        b->m->on_chunk(b, c, p, k, first, last);
        p += k;
        n -= k;
    }
}

struct inflate_ctx {
    struct bench *b;
    struct conn *c;
};

/* Inflated pieces go to the mode as chunks; the last flag comes after. */
static int on_inflated(const uint8_t *p, size_t n, void *user)
{
    struct inflate_ctx *x = user;
    struct conn *c = x->c;
    if (n == 0)
        return WSH_OK;
    bool first = c->z_first;
    c->z_first = false;
    x->b->m->on_chunk(x->b, c, p, n, first, false);
    return c->state == CS_DEAD ? WSH_ECLOSED : WSH_OK;
}

/* A chunk of a compressed message (RSV1). Returns false when the
 * connection was closed. */
static bool inflate_chunk(struct bench *b, struct conn *c, const struct wsh_event *ev)
{
    if (ev->first)
        c->z_first = true;
    struct inflate_ctx x = { b, c };
    int st = wsh_pmd_inflate(c->pmd, &client_limits, ev->data, ev->len, ev->last, on_inflated, &x);
    if (c->state == CS_DEAD)
        return false;
    if (st != WSH_OK) {
        b->pmd_errors++;
        conn_kill(b, c, false);
        return false;
    }
    if (ev->last)
        b->m->on_chunk(b, c, (const uint8_t *)"", 0, c->z_first, true);
    return c->state != CS_DEAD;
}

/* Feeds buf[0..len) to the frame parser; keeps an incomplete header in the
 * carry buffer. Returns false when the connection was closed. */
static bool feed_ws(struct bench *b, struct conn *c, uint8_t *buf, size_t len)
{
    while (len > 0) {
        struct wsh_event ev;
        ssize_t r = wsh_parser_feed(&c->parser, &client_limits, buf, len, &ev);
        if (r < 0) {
            b->proto_errors++;
            conn_kill(b, c, false);
            return false;
        }
        buf += r;
        len -= (size_t)r;
        switch (ev.type) {
        case WSH_EV_NONE:
            if (r == 0) {
                if (len > sizeof c->carry) {
                    b->proto_errors++;
                    conn_kill(b, c, false);
                    return false;
                }
                memcpy(c->carry, buf, len);
                c->carry_len = (uint16_t)len;
                return true;
            }
            break;
        case WSH_EV_DATA:
            if (c->state != CS_OPEN && c->state != CS_CLOSING)
                break;
            if (ev.rsv1) {
                if (!inflate_chunk(b, c, &ev))
                    return false;
            } else {
                b->m->on_chunk(b, c, ev.data, ev.len, ev.first, ev.last);
            }
            break;
        case WSH_EV_PING: {
            uint8_t tmp[WSH_CONTROL_MAX];
            memcpy(tmp, ev.data, ev.len);
            if (c->state == CS_OPEN)
                conn_send_msg(b, c, WSH_OP_PONG, tmp, ev.len);
            break;
        }
        case WSH_EV_PONG:
            break;
        case WSH_EV_CLOSE:
            if (c->state == CS_OPEN) {
                /* The server initiated: echo its code (RFC 6455 5.5.1). */
                b->peer_closes++;
                uint8_t pl[2];
                size_t n = wsh_close_payload(
                    pl, ev.close_code == WSH_CLOSE_NO_STATUS ? 0 : ev.close_code, NULL, 0);
                conn_send_msg(b, c, WSH_OP_CLOSE, pl, n);
            }
            /* RFC 6455 7.1.1: the server closes TCP first; wait for EOF. */
            c->state = CS_DRAIN;
            c->deadline = b->now + BENCH_CLOSE_WAIT;
            return true;
        }
        if (c->state == CS_DEAD)
            return false;
    }
    c->carry_len = 0;
    return true;
}

/* The server's Sec-WebSocket-Extensions answer (borrowed from c->hs). An
 * extension we did not offer, or a bad permessage-deflate answer, fails
 * the connection (RFC 6455 9.1, RFC 7692 5). */
static bool check_extensions(struct bench *b, struct conn *c, struct wsh_slice ext)
{
    bool on = false;
    struct wsh_pmd_params agreed;
    bool bad =
        b->o.deflate ? wsh_pmd_client_check(&b->pmd_want, ext, &on, &agreed) != WSH_OK : ext.n > 0;
    if (bad) {
        if (b->pmd_errors++ == 0)
            fprintf(stderr, "wshub-bench: bad Sec-WebSocket-Extensions answer from the server\n");
        conn_kill(b, c, false);
        return false;
    }
    if (on) {
        /* zlib slides its window every 2^bits input bytes and rehashes
         * all 2^(memLevel+7) hash heads each time. With the server's
         * 10-bit cap and the default memLevel 8 that was 16 slides of 32K
         * heads per 16 KiB message, ~300 us, and the bench became the
         * bottleneck. A hash table the size of the window costs the same
         * per byte at any window. Level 1, as wshub's default: at level 6
         * the bench spent more CPU per 16 KiB message than the server it
         * measures. */
        int ml = agreed.client_max_window_bits > 8 ? agreed.client_max_window_bits - 7 : 1;
        const struct wsh_pmd_config cfg = { .level = 1, .mem_level = ml };
        if (wsh_pmd_create(WSH_ROLE_CLIENT, &agreed, &cfg, &c->pmd) != WSH_OK) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
        b->pmd_conns++;
        /* No frame was fed yet: the parser starts over allowing RSV1. */
        wsh_parser_init(&c->parser, WSH_ROLE_CLIENT, 0x40);
    }
    return true;
}

static bool handle_hs(struct bench *b, struct conn *c, const uint8_t *p, size_t n)
{
    if (!c->hs) {
        c->hs = malloc(BENCH_HS_MAX);
        if (!c->hs) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
    }
    size_t k = BENCH_HS_MAX - c->hs_len < n ? BENCH_HS_MAX - c->hs_len : n;
    memcpy(c->hs + c->hs_len, p, k);
    c->hs_len += k;
    struct wsh_hs_client_result res;
    ssize_t h = wsh_hs_client_parse_response(c->hs, c->hs_len, c->key, &res);
    if (h == 0 && c->hs_len < BENCH_HS_MAX)
        return true;
    if (h <= 0) {
        b->hs_errors++;
        conn_kill(b, c, false);
        return false;
    }
    if (!check_extensions(b, c, res.extensions))
        return false;
    /* Frames may follow the head in the same read. */
    size_t rest = c->hs_len - (size_t)h + (n - k);
    uint8_t *tail = b->rbuf + BENCH_CARRY + BENCH_RBUF - rest;
    if (n - k > 0)
        memmove(tail + (c->hs_len - (size_t)h), p + k, n - k);
    memcpy(tail, c->hs + h, c->hs_len - (size_t)h);
    become_open(b, c);
    if (c->state != CS_OPEN || rest == 0)
        return c->state != CS_DEAD;
    return feed_ws(b, c, tail, rest);
}

bool conn_input(struct bench *b, struct conn *c, uint8_t *p, size_t n)
{
    if (c->state == CS_HANDSHAKE)
        return handle_hs(b, c, p, n);
    if (c->state == CS_DRAIN)
        return true; /* anything after the close frame is ignored */
    if (b->o.raw) {
        feed_raw(b, c, p, n);
        return c->state != CS_DEAD;
    }
    size_t carry = c->carry_len;
    memcpy(p - carry, c->carry, carry);
    return feed_ws(b, c, p - carry, carry + n);
}

void conn_eof(struct bench *b, struct conn *c)
{
    bool clean = c->state == CS_DRAIN || (b->o.raw && c->state == CS_OPEN);
    if (!clean)
        b->io_errors++;
    conn_kill(b, c, clean);
}

static void handle_read(struct bench *b, struct conn *c, bool hup)
{
    for (;;) {
        uint8_t *p = b->rbuf + BENCH_CARRY;
        ssize_t n = conn_recv(b, c, p, BENCH_RBUF);
        if (n == IO_AGAIN)
            return;
        if (n < 0) {
            b->io_errors++;
            conn_kill(b, c, false);
            return;
        }
        if (n == 0) {
            conn_eof(b, c);
            return;
        }
        b->now = now_ns();
        bool alive = conn_input(b, c, p, (size_t)n);
        /* Edge-triggered: a short read means the socket is drained and new
         * data will raise a new edge. A hang-up raises no further edge, so
         * then we read on until EOF. SSL_read returns one record at a
         * time and may hold more already read (SSL_pending): with TLS we
         * read on until it wants the socket again. */
        if (!alive || (!c->ssl && (size_t)n < BENCH_RBUF && !hup))
            return;
    }
}

static void flush_conn(struct bench *b, struct conn *c)
{
    c->pending = false;
    if (c->state == CS_DEAD || c->blocked)
        return;
    while (c->out_off < c->out_len) {
        ssize_t n = conn_send(b, c, c->out + c->out_off, c->out_len - c->out_off);
        if (n == IO_AGAIN) {
            c->blocked = true;
            return;
        }
        if (n < 0) {
            b->io_errors++;
            conn_kill(b, c, false);
            return;
        }
        c->out_off += (size_t)n;
        if (c->out_off < c->out_len && !c->ssl) {
            c->blocked = true; /* a short send: the socket buffer is full */
            return;
        }
    }
    c->out_off = c->out_len = 0;
}

static void handle_event(struct bench *b, struct conn *c, uint32_t events)
{
    if (c->state == CS_CONNECTING) {
        if (events & (EPOLLERR | EPOLLHUP)) {
            b->connect_errors++;
            conn_kill(b, c, false);
            return;
        }
        if (!(events & EPOLLOUT))
            return;
        if (b->ssl_ctx) {
            tls_start(b, c);
            return;
        }
        send_request(b, c);
        if (c->state == CS_DEAD)
            return;
    }
    if (c->state == CS_TLS) {
        /* Either direction may be what SSL_connect waits for. */
        tls_step(b, c);
        /* Records after the server's Finished (TLS 1.3 tickets) may sit
         * in OpenSSL's buffer with no new edge to come. */
        if (c->state == CS_HANDSHAKE)
            handle_read(b, c, false);
        return;
    }
    bool readable = events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR);
    if (events & EPOLLOUT) {
        c->blocked = false;
        if (c->out_len > c->out_off)
            conn_mark_pending(b, c);
        if (c->read_wants_write)
            readable = true;
    }
    if ((events & EPOLLIN) && c->write_wants_read) {
        c->blocked = false;
        conn_mark_pending(b, c);
    }
    if (readable)
        handle_read(b, c, events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR));
}

static void sweep_timeouts(struct bench *b)
{
    for (uint32_t i = 0; i < b->nconns; i++) {
        struct conn *c = &b->conns[i];
        if (c->state == CS_FREE || c->state == CS_OPEN || c->state == CS_DEAD)
            continue;
        if (b->now < c->deadline)
            continue;
        if (c->state == CS_DRAIN) {
            conn_kill(b, c, true); /* the close handshake did complete */
        } else {
            b->timeouts++;
            conn_kill(b, c, false);
        }
    }
}

static void end_turn(struct bench *b)
{
    if (b->m->tick)
        b->m->tick(b);
    /* Flushing may kill connections, which never adds to the list. */
    for (uint32_t i = 0; i < b->nflush; i++) {
#ifdef WSH_BENCH_URING
        if (b->uring) {
            bench_uring_flush(b, b->flush[i]);
            continue;
        }
#endif
        flush_conn(b, b->flush[i]);
    }
    b->nflush = 0;
    for (uint32_t i = 0; i < b->ndead; i++) {
        struct conn *c = &b->conns[b->dead[i]];
        release_slot(c);
        c->state = CS_FREE;
        c->pending = false;
        b->nactive--;
        b->freelist[b->nfree++] = c->idx;
    }
    b->ndead = 0;
}

static void epoll_wait_turn(struct bench *b, int timeout_ms)
{
    struct epoll_event evs[512];
    int n = epoll_wait(b->epfd, evs, 512, timeout_ms);
    b->now = now_ns();
    for (int i = 0; i < n; i++) {
        uint32_t idx = (uint32_t)evs[i].data.u64;
        uint32_t gen = (uint32_t)(evs[i].data.u64 >> 32);
        struct conn *c = &b->conns[idx];
        if (c->gen != gen || c->state == CS_DEAD || c->state == CS_FREE)
            continue;
        handle_event(b, c, evs[i].events);
    }
}

static void loop_once(struct bench *b, int timeout_ms)
{
#ifdef WSH_BENCH_URING
    if (b->uring)
        bench_uring_wait(b, timeout_ms);
    else
#endif
        epoll_wait_turn(b, timeout_ms);
    if (b->now >= b->next_sweep) {
        sweep_timeouts(b);
        b->next_sweep = b->now + 100000000LL;
    }
    end_turn(b);
}

static int timeout_until(const struct bench *b, int64_t until)
{
    int64_t ms = (until - b->now) / 1000000 + 1;
    if (ms > 50)
        ms = 50;
    if (ms < 0)
        ms = 0;
    return (int)ms;
}

uint32_t bench_ramp(struct bench *b, uint32_t n, int64_t until)
{
    uint32_t started = 0;
    while (b->now < until) {
        while (started < n && b->inflight < BENCH_RAMP_BATCH) {
            started++;
            if (!bench_connect(b, false))
                break;
        }
        if (started >= n && b->inflight == 0)
            break;
        loop_once(b, timeout_until(b, until));
    }
    return b->nopen;
}

void bench_close_all(struct bench *b, int64_t until)
{
    for (uint32_t i = 0; i < b->nconns; i++)
        if (b->conns[i].state == CS_OPEN)
            conn_close_ws(b, &b->conns[i]);
    while (b->nactive > 0 && b->now < until)
        loop_once(b, timeout_until(b, until));
}

void bench_run(struct bench *b, int64_t until, const bool *stop)
{
    while (b->now < until && !(stop && *stop))
        loop_once(b, b->m->tick ? 1 : timeout_until(b, until));
}
