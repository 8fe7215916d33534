/* wshub-bench engine: non-blocking client sockets on one edge-triggered
 * epoll loop, the RFC 6455 client handshake (4.1) and framing (5.2, 5.3)
 * through the wsh_ws core, one write per connection per loop turn. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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
    return 0;
}

void bench_free(struct bench *b)
{
    for (uint32_t i = 0; i < b->nconns; i++) {
        struct conn *c = &b->conns[i];
        if (c->fd >= 0)
            close(c->fd);
        free(c->out);
        free(c->hs);
        free(c->ring);
    }
    free(b->conns);
    free(b->freelist);
    free(b->flush);
    free(b->dead);
    if (b->epfd >= 0)
        close(b->epfd);
}

size_t conn_buffered(const struct conn *c)
{
    return c->out_len - c->out_off;
}

size_t conn_msg_size(const struct bench *b, size_t n)
{
    return b->o.raw ? n : wsh_message_size(n, 0, true);
}

static void mark_pending(struct bench *b, struct conn *c)
{
    if (!c->pending) {
        c->pending = true;
        b->flush[b->nflush++] = c;
    }
}

uint8_t *conn_reserve(struct bench *b, struct conn *c, size_t n)
{
    if (c->out_len + n > c->out_cap && c->out_off > 0) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    if (c->out_len + n > c->out_cap)
        return NULL;
    uint8_t *p = c->out + c->out_len;
    c->out_len += n;
    mark_pending(b, c);
    return p;
}

bool conn_send_msg(struct bench *b, struct conn *c, unsigned op, const uint8_t *p, size_t n)
{
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
    if (c->state == CS_CONNECTING || c->state == CS_HANDSHAKE)
        b->inflight--;
    if (was_open)
        b->nopen--;
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
    if (b->nfree == 0)
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
    if (!c->out) {
        c->out_cap = b->m->out_cap < 1024 ? 1024 : b->m->out_cap;
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
    c->out_off = c->out_len = 0;
    c->carry_len = 0;
    c->hs_len = 0;
    c->msg_pos = 0;
    c->msg_sum = 0;
    c->raw_pos = 0;
    c->t_start = b->now;
    c->sent_seq = c->recv_seq = c->next_seq = 0;
    c->deadline = b->now + BENCH_HS_TIMEOUT;
    wsh_parser_init(&c->parser, WSH_ROLE_CLIENT, 0);
    b->nactive++;
    b->inflight++;
    return c;
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
    char host[80];
    snprintf(host, sizeof host, "%s:%u", b->o.host, b->o.port);
    char req[1024];
    ssize_t n = wsh_hs_client_request(req, sizeof req, host, b->o.path, c->key, NULL, NULL);
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
            if (c->state == CS_OPEN || c->state == CS_CLOSING)
                b->m->on_chunk(b, c, ev.data, ev.len, ev.first, ev.last);
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

static void handle_read(struct bench *b, struct conn *c, bool hup)
{
    for (;;) {
        size_t carry = c->carry_len;
        uint8_t *base = b->rbuf + BENCH_CARRY - carry;
        ssize_t n = recv(c->fd, b->rbuf + BENCH_CARRY, BENCH_RBUF, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            b->io_errors++;
            conn_kill(b, c, false);
            return;
        }
        if (n == 0) {
            bool clean = c->state == CS_DRAIN || (b->o.raw && c->state == CS_OPEN);
            if (!clean && c->state != CS_DRAIN)
                b->io_errors++;
            conn_kill(b, c, clean);
            return;
        }
        b->now = now_ns();
        bool alive;
        if (c->state == CS_HANDSHAKE) {
            alive = handle_hs(b, c, b->rbuf + BENCH_CARRY, (size_t)n);
        } else if (c->state == CS_DRAIN) {
            alive = true; /* anything after the close frame is ignored */
        } else if (b->o.raw) {
            feed_raw(b, c, b->rbuf + BENCH_CARRY, (size_t)n);
            alive = c->state != CS_DEAD;
        } else {
            memcpy(base, c->carry, carry);
            alive = feed_ws(b, c, base, carry + (size_t)n);
        }
        /* Edge-triggered: a short read means the socket is drained and new
         * data will raise a new edge. A hang-up raises no further edge, so
         * then we read on until EOF. */
        if (!alive || ((size_t)n < BENCH_RBUF && !hup))
            return;
    }
}

static void flush_conn(struct bench *b, struct conn *c)
{
    c->pending = false;
    if (c->state == CS_DEAD || c->blocked)
        return;
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                c->blocked = true;
                return;
            }
            b->io_errors++;
            conn_kill(b, c, false);
            return;
        }
        c->out_off += (size_t)n;
        if (c->out_off < c->out_len) {
            c->blocked = true;
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
        send_request(b, c);
        if (c->state == CS_DEAD)
            return;
    }
    if (events & EPOLLOUT) {
        c->blocked = false;
        if (c->out_len > c->out_off)
            mark_pending(b, c);
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
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
    for (uint32_t i = 0; i < b->nflush; i++)
        flush_conn(b, b->flush[i]);
    b->nflush = 0;
    for (uint32_t i = 0; i < b->ndead; i++) {
        struct conn *c = &b->conns[b->dead[i]];
        c->state = CS_FREE;
        c->pending = false;
        b->nactive--;
        b->freelist[b->nfree++] = c->idx;
    }
    b->ndead = 0;
}

static void loop_once(struct bench *b, int timeout_ms)
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

void bench_run(struct bench *b, int64_t until, const bool *stop)
{
    while (b->now < until && !(stop && *stop))
        loop_once(b, b->m->tick ? 1 : timeout_until(b, until));
}
