/* Workers: one epoll loop per thread with its own SO_REUSEPORT listener.
 * Accepting (the limits it checks are admit.c's), reading (a request head
 * goes to route.c, frames to session.c), corked writes flushed once per
 * loop turn, deferred free of closed connections, and graceful shutdown. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server.h"
#include "wshub/http.h"

/* Per-turn budgets (LIMITS.md): a connection reads at most READ_MAX bytes
 * per turn (server.h), and a listener accepts at most ACCEPT_MAX per turn
 * so a connection flood cannot starve established connections. */
#define CARRY_MAX WSH_HTTP_DEFAULT_HEAD
/* A multiple of 64, as aligned_alloc requires; the first 64 bytes hold the
 * lead of a fresh read (RBUF_LEAD). */
#define RBUF_SIZE (64u + CARRY_MAX + ROUTE_BODY_MAX + READ_MAX + TLS_RECORD)
/* Where a fresh read starts in rbuf, and how many of its bytes go before
 * the next cache line. See plain_read. */
#define RBUF_LEAD  56u
#define RBUF_HEAD  8u
#define BIG_READ   4096u
#define ACCEPT_MAX 64
/* TLS handshakes cost ~1 ms of CPU each: at most this many steps per loop
 * turn, so a flood of new TLS connections cannot starve established ones
 * (uSockets allows 5). Skipped sockets stay readable and come back next
 * turn: epoll is level-triggered. */
#define TLS_STEPS_MAX 16
#define TLS_RECORD    16384u
#define CORK_SIZE     4096u
/* --max-client-memory: how often each worker checks the total. */
#define EVICT_CHECK_MS 100u
#define EVICT_IDLE_MS  1000u /* with the cap off: a reload may turn it on */

static void on_conn_io(struct wsh_loop *l, struct wsh_io *io, uint32_t events);
static void send_early_refusal(struct worker *w, int fd, bool tls, int status, uint32_t retry_s);
static void carry_free(struct conn *c);
static void on_conn_timer(struct wsh_loop *l, struct wsh_timer *t);
static void slow_consumer(struct worker *w, struct conn *c, const char *limit);

_Thread_local struct worker *wsh_self;

/* Never 0, which says "no connection" (struct xmsg's from), even once
 * the counter wraps. */
static uint32_t next_conn_id(void)
{
    static _Atomic uint32_t id;
    uint32_t n;
    do
        n = atomic_fetch_add_explicit(&id, 1, memory_order_relaxed) + 1;
    while (n == 0);
    return n;
}

/* ------------------------------------------------------------------ */
/* Output                                                              */

struct wsh_buf *frame_new(unsigned opcode, const uint8_t *payload, size_t len)
{
    size_t n = wsh_message_size(len, 0, false);
    struct wsh_buf *b = wsh_buf_new(n);
    if (b == NULL)
        return NULL;
    b->end = (uint32_t)wsh_message_write(b->data, opcode, false, payload, len, 0, NULL, NULL);
    return b;
}

const uint8_t *frame_payload(const struct wsh_buf *frame, size_t *len)
{
    const uint8_t *p = frame->data + frame->start;
    unsigned l7 = p[1] & 0x7fu;
    if (l7 < 126) {
        *len = l7;
        return p + 2;
    }
    if (l7 == 126) {
        *len = (size_t)p[2] << 8 | p[3];
        return p + 4;
    }
    uint64_t n = 0;
    for (int i = 2; i < 10; i++)
        n = n << 8 | p[i];
    *len = (size_t)n;
    return p + 10;
}

struct zout {
    struct wsh_buf *b;
};

static int zout_write(const uint8_t *p, size_t n, void *user)
{
    struct zout *o = user;
    if ((size_t)o->b->end + n > o->b->cap) {
        size_t cap = (size_t)o->b->cap * 2 + n;
        struct wsh_buf *nb = wsh_buf_grow(o->b, cap);
        if (nb == NULL)
            return WSH_ENOMEM;
        o->b = nb;
    }
    memcpy(o->b->data + o->b->end, p, n);
    o->b->end += (uint32_t)n;
    return WSH_OK;
}

struct wsh_buf *frame_deflate(struct wsh_pmd *z, uint8_t window_bits, unsigned opcode,
                              const uint8_t *payload, size_t len)
{
    struct zout o = { .b = wsh_buf_new(WSH_FRAME_HDR_MAX + len / 2 + 64) };
    if (o.b == NULL)
        return NULL;
    o.b->start = o.b->end = WSH_FRAME_HDR_MAX;
    int rc = z ? wsh_pmd_compress(z, payload, len, zout_write, &o)
               : wsh_pmd_compress_oneshot(window_bits, wsh_cfg.pmd.level, wsh_cfg.pmd.mem_level,
                                          payload, len, zout_write, &o);
    if (rc != WSH_OK) {
        wsh_buf_unref(o.b);
        return NULL;
    }
    uint64_t clen = o.b->end - WSH_FRAME_HDR_MAX;
    size_t hl = wsh_frame_header_size(clen, false);
    o.b->start = (uint32_t)(WSH_FRAME_HDR_MAX - hl);
    wsh_frame_header_write(o.b->data + o.b->start, opcode, true, true, clen, NULL);
    return o.b;
}

static inline size_t queue_limit(const struct conn *c)
{
    return c->hub != NULL ? hub_queue_limit(c) : wsh_cfg.max_queue;
}

static void mark_pending(struct worker *w, struct conn *c)
{
    if (c->flags & CF_PENDING)
        return;
    c->flags |= CF_PENDING;
    c->pending_next = w->pending;
    w->pending = c;
}

/* Appends an echo reply to the worker's direct batch when nothing is queued
 * ahead of it. Returns false when the caller must queue instead. payload
 * must stay valid until direct_flush(): it points into the receive buffer.
 * room is how many bytes before payload the caller lets us overwrite (the
 * request frame's own header, which is longer than ours by the 4-byte
 * mask): a large reply's header goes there, so the frame is one
 * contiguous run and one plain send when it is alone. */
bool conn_send_direct(struct worker *w, struct conn *c, unsigned opcode, uint8_t *payload,
                      size_t len, size_t room)
{
    struct direct_batch *d = &w->direct;
    if (c->wq != NULL || c->ssl != NULL || (c->flags & CF_CLOSE_SENT) || c->state == CONN_DEAD)
        return false;
    size_t hl = wsh_frame_header_size(len, false);
    bool small = len <= DIRECT_SMALL;
    bool in_place = !small && room >= hl;
    size_t need = in_place ? 0 : hl + (small ? len : 0);
    if (d->c != c || d->niov + 2 > DIRECT_IOV || d->cork_len + need > DIRECT_CORK)
        direct_flush(w);
    if (c->wq != NULL || c->state == CONN_DEAD)
        return false;
    d->c = c;
    metric_add(&w->m.frames_out, 1);
    metric_add(&w->m.bytes_out, hl + len);
    if (in_place) {
        wsh_frame_header_write(payload - hl, opcode, true, false, len, NULL);
        d->iov[d->niov++] = (struct iovec){ .iov_base = payload - hl, .iov_len = hl + len };
        return true;
    }
    /* Small frames are copied whole into the cork area, so a burst of them
     * is one contiguous segment: many tiny iovecs cost the kernel more
     * than the copy. A large payload stays in the receive buffer. */
    uint8_t *at = d->cork + d->cork_len;
    wsh_frame_header_write(at, opcode, true, false, len, NULL);
    if (small && len)
        memcpy(at + hl, payload, len);
    d->cork_len += need;
    struct iovec *last = d->niov ? &d->iov[d->niov - 1] : NULL;
    if (last && (uint8_t *)last->iov_base + last->iov_len == at)
        last->iov_len += need;
    else
        d->iov[d->niov++] = (struct iovec){ .iov_base = at, .iov_len = need };
    if (!small) {
        d->iov[d->niov].iov_base = payload;
        d->iov[d->niov].iov_len = len;
        d->niov++;
    }
    return true;
}

/* Sends the direct batch with one sendmsg; what the kernel does not take is
 * copied into one buffer on the connection's queue. */
void direct_flush(struct worker *w)
{
    struct direct_batch *d = &w->direct;
    struct conn *c = d->c;
    if (c == NULL)
        return;
    int niov = d->niov;
    d->c = NULL;
    d->niov = 0;
    d->cork_len = 0;
    if (c->state == CONN_DEAD)
        return;
    ssize_t wr = wsh_sock_sendv(c->io.fd, d->iov, niov);
    if (wr < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        conn_destroy(w, c);
        return;
    }
    /* Already counted when batched: what is queued here is not recounted. */
    size_t skip = wr > 0 ? (size_t)wr : 0, rest = 0;
    for (int i = 0; i < niov; i++)
        rest += d->iov[i].iov_len;
    rest -= skip;
    if (rest == 0)
        return;
    struct wsh_buf *b = wsh_buf_new(rest);
    if (b == NULL) {
        conn_destroy(w, c);
        return;
    }
    for (int i = 0; i < niov; i++) {
        size_t n = d->iov[i].iov_len;
        const uint8_t *p = d->iov[i].iov_base;
        if (skip >= n) {
            skip -= n;
            continue;
        }
        memcpy(b->data + b->end, p + skip, n - skip);
        b->end += (uint32_t)(n - skip);
        skip = 0;
    }
    /* Part of the batch went: its rest may begin inside a frame, and must
     * go whole even if what is queued after it is dropped (evict,
     * slow_consumer), or a close frame would land inside that frame. */
    int rc = wr > 0 ? wsh_wq_push_rest(&c->wq, b) : wsh_wq_push(&c->wq, b);
    if (rc != WSH_OK) {
        conn_destroy(w, c);
        return;
    }
    mark_pending(w, c);
}

/* No memory to queue the close frame: when nothing is queued ahead of it
 * on a plain WebSocket connection it is written straight from the stack,
 * so the peer reads the code (often 1011, for this very reason) rather
 * than a dropped connection; either way the connection ends here. (An
 * HTTP connection gets no frame: it would land in a response.) */
static void close_unqueued(struct worker *w, struct conn *c, const uint8_t *payload, size_t plen)
{
    if (c->state == CONN_OPEN && c->ssl == NULL && (c->wq == NULL || c->wq->count == 0)) {
        uint8_t f[2 + WSH_CONTROL_MAX];
        f[0] = 0x80u | WSH_OP_CLOSE;
        f[1] = (uint8_t)plen;
        memcpy(f + 2, payload, plen);
        (void)!send(c->io.fd, f, 2 + plen, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    conn_destroy(w, c);
}

/* Queues a frame, taking over the caller's reference. Returns false when
 * the frame was dropped (closing, or the connection was destroyed). */
static bool queue_frame(struct worker *w, struct conn *c, struct wsh_buf *b)
{
    if (w->direct.c == c)
        direct_flush(w); /* keep the byte order: the batch goes first */
    if (c->state == CONN_DEAD || (c->flags & CF_CLOSE_SENT)) {
        wsh_buf_unref(b);
        return false;
    }
    metric_add(&w->m.frames_out, 1);
    metric_add(&w->m.bytes_out, wsh_buf_len(b));
    if (wsh_wq_push(&c->wq, b) != WSH_OK) {
        static const char why[] = "out of memory";
        uint8_t p[WSH_CONTROL_MAX];
        close_unqueued(w, c, p, wsh_close_payload(p, WSH_CLOSE_INTERNAL, why, sizeof(why) - 1));
        return false;
    }
    mark_pending(w, c);
    return true;
}

/* Output the connection caused itself from what it sent (echo replies,
 * pongs) is at most as large as that input, and its reads are budgeted to
 * the room left in its queue and pause at half of it (read_budget,
 * update_events): TCP backpressure bounds it, so it is not subject to the
 * slow-consumer cut-off below. */
void conn_reply(struct worker *w, struct conn *c, struct wsh_buf *b)
{
    queue_frame(w, c, b);
}

/* Queues a frame someone else caused (fan-out, pushes, hub replies, whose
 * size does not follow the input), taking over the caller's reference. A
 * connection whose queue passes --max-queue is a slow consumer: everything
 * it has not begun to receive is dropped and it is closed with 1008 (4101
 * on /ws), so one slow reader never grows the server or slows the others
 * (DESIGN.md 5). One message alone may pass the limit (it is bounded by
 * --max-message); a backlog of several may not. */
void conn_send(struct worker *w, struct conn *c, struct wsh_buf *b)
{
    if (!queue_frame(w, c, b))
        return;
    if (wsh_wq_bytes(c->wq) > wsh_cfg.max_queue && c->wq->count > 1)
        slow_consumer(w, c, "hard");
}

/* Cuts off a slow consumer: everything it has not begun to receive is
 * dropped and it is closed with 1008, or 4101 on /ws. */
static void slow_consumer(struct worker *w, struct conn *c, const char *limit)
{
    wsh_log(WSH_LOG_INFO, "conn=%u ev=slow_consumer limit=%s queued=%zu", c->id, limit,
            wsh_wq_bytes(c->wq));
    metric_add(&w->m.slow_consumers, 1);
    wsh_wq_drop_unstarted(&c->wq, c->tls_retry);
    /* /ws clients learn the reconnect-allowed code of LIMITS.md, with
     * the `disconnect` push their protocol promises. */
    if (c->hub != NULL)
        hub_slow_consumer(w, c);
    else
        conn_close(w, c, WSH_CLOSE_POLICY, "slow consumer");
}

/* Sends bytes now when nothing is queued ahead of them, queueing only what
 * the kernel did not take. Handshake responses go this way: in the common
 * case they cost no allocation at all, which keeps the heap of a server
 * holding many idle connections free of per-handshake holes. */
void conn_send_bytes(struct worker *w, struct conn *c, const void *p, size_t n)
{
    size_t done = 0;
    if (c->wq == NULL && c->ssl == NULL) {
        ssize_t r = send(c->io.fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r > 0)
            done = (size_t)r;
        if (done == n)
            return;
    }
    struct wsh_buf *b = wsh_buf_new(n - done);
    if (b == NULL) {
        conn_destroy(w, c);
        return;
    }
    memcpy(b->data, (const char *)p + done, n - done);
    b->end = (uint32_t)(n - done);
    if (done == 0) {
        conn_reply(w, c, b);
        return;
    }
    /* Cut on the wire: the rest goes whole, whatever is dropped later. */
    if (wsh_wq_push_rest(&c->wq, b) != WSH_OK) {
        conn_destroy(w, c);
        return;
    }
    mark_pending(w, c);
}

void conn_end_after_reply(struct worker *w, struct conn *c)
{
    if (c->state == CONN_DEAD) /* a send above failed and destroyed it */
        return;
    c->flags |= CF_CLOSE_SENT;
    c->state = CONN_CLOSING;
    mark_pending(w, c); /* the flush sends FIN once the queue is empty */
    wsh_timer_start(w->loop, &c->timer, wsh_cfg.close_timeout_ms);
}

bool conn_behind(const struct conn *c)
{
    return (c->io.events & EPOLLOUT) != 0;
}

/* LIMITS.md: at most one pong pending once the peer stops reading. While
 * the kernel refuses our bytes (EPOLLOUT armed), a new pong replaces an
 * unsent one at the end of the queue, which answers only the latest ping
 * as RFC 6455 5.5.3 allows: a ping flood from a peer that does not read
 * grows nothing. Without backpressure every ping gets its pong. */
static void coalesce_pong(struct conn *c)
{
    size_t n = wsh_wq_tail_replaceable(c->wq);
    if (n == 0 || !(c->io.events & EPOLLOUT))
        return;
    /* A TLS write waiting to be repeated covers the first tls_retry bytes
     * of the queue; they must stay as they are. */
    if (wsh_wq_bytes(c->wq) - n < c->tls_retry)
        return;
    wsh_wq_tail_drop(c->wq, n);
}

/* Queues one frame of the connection's own output (echo replies, pongs,
 * pings) built from payload, corked into the tail buffer when it fits. */
void conn_send_frame(struct worker *w, struct conn *c, unsigned opcode, const uint8_t *payload,
                     size_t len)
{
    if (w->direct.c == c)
        direct_flush(w);
    if (c->state == CONN_DEAD || (c->flags & CF_CLOSE_SENT))
        return;
    size_t need = wsh_message_size(len, 0, false);
    if (opcode == WSH_OP_PONG)
        coalesce_pong(c);
    uint8_t *room = wsh_wq_tail_reserve(c->wq, need);
    if (room != NULL) {
        metric_add(&w->m.frames_out, 1);
        metric_add(&w->m.bytes_out, need);
        wsh_wq_tail_commit(c->wq,
                           wsh_message_write(room, opcode, false, payload, len, 0, NULL, NULL));
        mark_pending(w, c);
    } else {
        struct wsh_buf *b = wsh_buf_new(need < CORK_SIZE / 2 ? CORK_SIZE : need);
        if (b == NULL) {
            conn_destroy(w, c);
            return;
        }
        b->end = (uint32_t)wsh_message_write(b->data, opcode, false, payload, len, 0, NULL, NULL);
        if (!queue_frame(w, c, b))
            return;
    }
    if (opcode == WSH_OP_PONG)
        wsh_wq_tail_mark(c->wq, need);
}

/* Ends every hold of a connection that is closing or gone, without
 * reading what it held. */
static void hold_drop(struct worker *w, struct conn *c)
{
    if (c->hold & HOLD_INBOX)
        w->nheld--;
    c->hold = 0;
}

/* Starts the closing handshake from our side (or answers the peer's):
 * queue the close frame, stop delivering, arm the close timeout. After the
 * frame is flushed we send FIN and wait for the peer's EOF, so the server
 * is the one that closes the TCP connection (RFC 6455 7.1.1). */
void conn_close(struct worker *w, struct conn *c, unsigned code, const char *reason)
{
    if (w->direct.c == c)
        direct_flush(w);
    if (c->state == CONN_DEAD || (c->flags & CF_CLOSE_SENT))
        return;
    uint8_t payload[WSH_CONTROL_MAX];
    size_t plen = code == WSH_CLOSE_NO_STATUS
                      ? 0
                      : wsh_close_payload(payload, code, reason, reason ? strlen(reason) : 0);
    struct wsh_buf *b = frame_new(WSH_OP_CLOSE, payload, plen);
    if (b == NULL || wsh_wq_push(&c->wq, b) != WSH_OK) { /* the push unrefs b */
        close_unqueued(w, c, payload, plen);
        return;
    }
    c->flags |= CF_CLOSE_SENT;
    c->state = CONN_CLOSING;
    c->flags &= (uint8_t)~CF_PING_WAIT;
    hold_drop(w, c); /* input is read again, to see the peer's close */
    /* What a held connection had read and not handled (up to a whole
     * read) would otherwise be copied ahead of the next read, which rbuf
     * has no room for on top of it; input after our close is discarded. */
    if (c->carry_len > 0)
        carry_free(c);
    metric_close(w, code);
    mark_pending(w, c);
    if (c->msg) {
        wsh_buf_unref(c->msg);
        c->msg = NULL;
    }
    if (c->chan)
        rawchan_leave(w, c);
    if (c->hub)
        hub_conn_end(w, c);
    wsh_timer_start(w->loop, &c->timer, wsh_cfg.close_timeout_ms);
    wsh_log(WSH_LOG_DEBUG, "conn=%u ev=close_sent code=%u", c->id, code);
}

/* ------------------------------------------------------------------ */
/* Tokens waiting for keys                                              */

/* A /ws upgrade whose token names a key no key set here has, while a fetch
 * of auth.jwks_url that may bring it is queued or under way
 * (hub_upgrade_check returned HUB_WAIT), waits for that fetch instead of
 * being refused: a token signed by a key the issuer has just published
 * gets its 101, not a 403. The connection is CONN_PARKED: its head stays
 * in the carry, it is not read, and it is checked again when the fetch
 * ends (unpark_due, from the wakeup the fetcher sends), or answered 503
 * with Retry-After at its handshake deadline. At most PARK_MAX wait per
 * worker; past that such a token is refused at once, as without a fetch.
 * A `connect` command waits the same way, in hub.c (conn_hold). */
#define PARK_MAX 256u

struct parked {
    struct conn *c;
    uint64_t ticket; /* checked again once keys_fetched() reaches it */
};

/* Takes c off the list; its state is the caller's to change. */
static void unpark(struct worker *w, struct conn *c)
{
    for (uint32_t i = 0; i < w->nparked; i++) {
        if (w->parked[i].c == c) {
            w->parked[i] = w->parked[--w->nparked];
            return;
        }
    }
}

void conn_destroy(struct worker *w, struct conn *c)
{
    if (c->state == CONN_DEAD)
        return;
    wsh_log(WSH_LOG_DEBUG, "conn=%u ev=destroy", c->id);
    if (c->state == CONN_PARKED)
        unpark(w, c);
    c->state = CONN_DEAD;
    hold_drop(w, c);
    if (w->api_jobs != NULL)
        api_forget(w, c);
    if (w->direct.c == c) {
        w->direct.c = NULL;
        w->direct.niov = 0;
        w->direct.cork_len = 0;
    }
    wsh_timer_stop(&c->timer);
    if (c->io.events & EPOLLOUT)
        w->nwaitout--;
    if (c->chan)
        rawchan_leave(w, c);
    if (c->hub)
        hub_conn_end(w, c);
    wsh_wq_clear(&c->wq);
    carry_free(c);
    if (c->msg) {
        wsh_buf_unref(c->msg);
        c->msg = NULL;
    }
    if (c->ssl) {
        wsh_tls_conn_free(c->ssl);
        c->ssl = NULL;
    }
    wsh_pmd_destroy(c->pmd);
    c->pmd = NULL;
    if (c->ip) {
        admit_ip_release(c->ip);
        c->ip = NULL;
    }
    close(c->io.fd); /* also removes it from epoll */
    c->io.fd = -1;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    metric_add(&w->m.conns, (uint64_t)-1); /* one less: unsigned wrap */
    atomic_fetch_sub_explicit(&wsh_total_conns, 1, memory_order_relaxed);
    /* Freed at the end of the turn: epoll may still hold events for it in
     * this batch, and it may sit on the flush list (uSockets closed_head). */
    if (!(c->flags & CF_PENDING)) {
        c->pending_next = w->closed;
        w->closed = c;
    }
}

/* Brings the epoll interest in line with the queue: EPOLLOUT only while
 * the kernel refused bytes, and EPOLLIN paused while our own queue is over
 * half of --max-queue, so a peer that sends faster than it reads (echo)
 * meets TCP backpressure instead of growing its queue. */
static void update_events(struct worker *w, struct conn *c)
{
    uint32_t ev = 0;
    if (c->state == CONN_TLS) {
        /* The handshake waits for room to write its flight (a long chain,
         * a client with a small window) or for the client's next one,
         * never both: the client sends nothing until it has ours, and a
         * readable socket while ours must go first would wake the loop
         * turn after turn. */
        ev = wsh_tls_want_write(c->ssl) ? EPOLLOUT : EPOLLIN;
    } else {
        if (c->state != CONN_PARKED && !c->hold && wsh_wq_bytes(c->wq) <= queue_limit(c) / 2)
            ev |= EPOLLIN;
        if (c->wq != NULL)
            ev |= EPOLLOUT;
    }
    uint32_t was = c->io.events & EPOLLOUT;
    if (wsh_loop_mod(w->loop, &c->io, ev) != WSH_OK) {
        conn_destroy(w, c);
        return;
    }
    if ((ev & EPOLLOUT) != was)
        w->nwaitout += was ? (size_t)-1 : 1;
}

bool conn_park_room(const struct worker *w)
{
    return w->nparked < PARK_MAX;
}

bool conn_park(struct worker *w, struct conn *c, uint64_t ticket)
{
    if (w->parked == NULL && (w->parked = malloc(PARK_MAX * sizeof(*w->parked))) == NULL)
        return false;
    w->parked[w->nparked++] = (struct parked){ c, ticket };
    c->state = CONN_PARKED;
    update_events(w, c);
    return true;
}

static void flush_conn(struct worker *w, struct conn *c)
{
    size_t before = wsh_wq_bytes(c->wq);
    int rc = c->ssl ? wsh_tls_flush(c->ssl, &c->wq, &c->tls_retry) : wsh_wq_flush(&c->wq, c->io.fd);
    if (rc != WSH_OK && rc != WSH_EAGAIN) {
        conn_destroy(w, c);
        return;
    }
    /* The clocks of on_out_timer live in the queue, which exists only
     * while something is queued. */
    if (c->wq != NULL)
        wsh_wq_note(c->wq, wsh_stamp(wsh_loop_now(w->loop)), before, wsh_cfg.soft_queue);
    update_events(w, c);
    if (c->state == CONN_DEAD)
        return;
    if (c->hub != NULL)
        hub_drained(w, c);
    if (rc == WSH_OK && (c->flags & CF_CLOSE_SENT) && !(c->flags & CF_SHUT_WR)) {
        /* Everything including our close frame (or final response) is out:
         * send FIN, then discard input until the peer's EOF or the close
         * timeout. Closing at once could turn unread input into an RST that
         * destroys the close frame in flight. */
        if (c->ssl)
            wsh_tls_shutdown(c->ssl);
        shutdown(c->io.fd, SHUT_WR);
        c->flags |= CF_SHUT_WR;
        if (c->hold & HOLD_EOF) /* and the peer's EOF came already */
            conn_destroy(w, c);
    }
}

/* Worker 0 frees unused channel records and expired channel state every
 * 2 s, on a timer so it runs even when nothing else wakes the loop. */
static void on_sweep(struct wsh_loop *l, struct wsh_timer *t)
{
    rawchan_sweep();
    admit_ip_sweep();
    hub_sweep(wsh_wall_ms());
    wsh_timer_start(l, t, 2000);
}

/* Each second, while some connection waits for EPOLLOUT: drops one whose
 * queued output has made no progress for --write-timeout (a peer that
 * stopped reading, or vanished without a FIN; no close frame can reach
 * it), and cuts off a subscriber whose queue stayed over --soft-queue for
 * --soft-queue-time (the Redis soft limit: a burst passes, a reader that
 * stays behind does not). Echo replies are exempt from the soft limit:
 * reads are budgeted to the queue, so TCP backpressure bounds them. The
 * walk is over the worker's connections, like uSockets' timeout sweep,
 * and is skipped when none waits. */
static void on_out_timer(struct wsh_loop *l, struct wsh_timer *t)
{
    struct worker *w = wsh_loop_user(l);
    uint32_t now = wsh_stamp(wsh_loop_now(l));
    struct conn *next;
    for (struct conn *c = w->nwaitout ? w->conns : NULL; c != NULL; c = next) {
        next = c->next;
        const struct wsh_wq *q = c->wq;
        if (q == NULL || !(c->io.events & EPOLLOUT))
            continue;
        if (wsh_cfg.write_timeout_ms && wsh_wq_stalled_ms(q, now) >= wsh_cfg.write_timeout_ms) {
            wsh_log(WSH_LOG_INFO, "conn=%u ev=write_stall queued=%zu", c->id, q->bytes);
            metric_add(&w->m.write_stalls, 1);
            conn_destroy(w, c);
            continue;
        }
        if (q->since_over && wsh_wq_over_ms(q, now) >= wsh_cfg.soft_queue_ms &&
            c->state == CONN_OPEN && !(c->flags & CF_CLOSE_SENT) &&
            (c->endpoint == EP_RAW || (c->endpoint == EP_HUB && !hub_drops_for_lag(c))))
            slow_consumer(w, c, "soft");
    }
    wsh_timer_start(l, t, 1000);
}

/* Client buffer bytes a connection holds: its output queue, the message
 * it is assembling and the input it carries (up to a read's worth while
 * it is held for an inbox). A frame shared with other queues is counted
 * in each, so this ranks connections; it does not add up to the total. */
static size_t conn_held(const struct conn *c)
{
    return wsh_wq_bytes(c->wq) + (c->msg ? c->msg->cap : 0) + c->carry_cap;
}

static void evict(struct worker *w, struct conn *c, uint64_t held, size_t live)
{
    if (c->state != CONN_OPEN || (c->flags & CF_CLOSE_SENT))
        return; /* closed meanwhile, by what an earlier eviction announced */
    wsh_log(WSH_LOG_WARN, "conn=%u ev=memory_evict held=%llu live=%zu", c->id,
            (unsigned long long)held, live);
    metric_add(&w->m.memory_evictions, 1);
    wsh_wq_drop_unstarted(&c->wq, c->tls_retry);
    hub_close_retry(w, c, WSH_CLOSE_TRY_LATER, "server memory limit");
}

/* Ranks everybody's largest holders (this worker's fresh, the others' as
 * last published) and closes this worker's part of the prefix that covers
 * the excess. Returns how many of mine (sorted, largest first) remain,
 * compacted to the front. */
static size_t evict_share(struct worker *w, struct wsh_holder *mine, size_t n, size_t live,
                          size_t cap)
{
    struct wsh_holder all[WSH_MAX_WORKERS * EVICT_TOP];
    uint32_t ranks[EVICT_TOP];
    size_t na = 0;
    for (int i = 0; i < wsh_nworkers; i++) {
        if (i == w->id) {
            memcpy(all + na, mine, n * sizeof(*mine));
            na += n;
            continue;
        }
        uint32_t k = atomic_load_explicit(&wsh_workers[i].ntop, memory_order_acquire);
        for (uint32_t j = 0; j < k && j < EVICT_TOP; j++)
            all[na++] = (struct wsh_holder){
                .bytes = atomic_load_explicit(&wsh_workers[i].top[j], memory_order_relaxed),
                .owner = (uint32_t)i,
                .rank = j,
            };
    }
    size_t picked = wsh_evict_pick(all, na, live - cap, (uint32_t)w->id, ranks);
    for (size_t i = 0; i < picked; i++) {
        evict(w, mine[ranks[i]].ptr, mine[ranks[i]].bytes, live);
        mine[ranks[i]].ptr = NULL;
    }
    size_t left = 0;
    for (size_t i = 0; i < n; i++)
        if (mine[i].ptr != NULL)
            mine[left++] = mine[i];
    return left;
}

/* When the total jumped from under half the cap to over it within one
 * check, another worker's list may predate the growth: wait one check for
 * every list to be current, so that two workers do not both close their
 * own largest for the same excess. A worker that does not publish in that
 * time (a long loop turn) is not waited for again. */
static bool others_published(struct worker *w)
{
    for (int i = 0; i < wsh_nworkers && !w->evict_waited; i++) {
        if (i != w->id && !atomic_load_explicit(&wsh_workers[i].top_valid, memory_order_relaxed)) {
            w->evict_waited = true;
            return false;
        }
    }
    return true;
}

/* --max-client-memory, after Redis's maxmemory-clients. When the buffers
 * held for clients (wsh_buf_live_bytes: queued frames and messages being
 * assembled, each shared frame once) pass the cap, the connections that
 * hold the most, server-wide, are closed with 1013 (try again later;
 * `disconnect` first on /ws) and what they had not begun to receive is
 * dropped. --max-queue bounds one reader; this bounds them all together,
 * who could otherwise hold connections x --max-queue.
 *
 * A worker may close only its own connections, so each one publishes its
 * EVICT_TOP largest holders (from half the cap up, every EVICT_CHECK_MS)
 * and, over the cap, ranks everybody's in one order (bytes, then worker,
 * then rank), under one lock, and closes its own part of the prefix that
 * covers the excess: two workers do not both close a connection's worth
 * for the same excess. A shared frame is freed only when its last holder is
 * closed, so a check that still finds the total over the cap closes the
 * next ones. */
static pthread_mutex_t evict_mu = PTHREAD_MUTEX_INITIALIZER;
/* The cap in force: the flag, else the config file's as of the last
 * SIGHUP (hub_reload_settings); 0 = off. */
static _Atomic size_t memory_cap;

void worker_memory_cap_set(size_t cap)
{
    atomic_store_explicit(&memory_cap, cap, memory_order_relaxed);
}

size_t worker_memory_cap(void)
{
    return atomic_load_explicit(&memory_cap, memory_order_relaxed);
}

static void on_evict_timer(struct wsh_loop *l, struct wsh_timer *t)
{
    struct worker *w = wsh_loop_user(l);
    size_t cap = worker_memory_cap();
    size_t live = wsh_buf_live_bytes();
    wsh_timer_start(l, t, cap != 0 ? EVICT_CHECK_MS : EVICT_IDLE_MS);
    if (cap == 0 || live <= cap / 2) {
        atomic_store_explicit(&w->ntop, 0, memory_order_relaxed);
        atomic_store_explicit(&w->top_valid, false, memory_order_relaxed);
        w->evict_waited = false;
        return;
    }
    struct wsh_holder mine[EVICT_TOP];
    size_t n = 0;
    for (struct conn *c = w->conns; c != NULL; c = c->next) {
        size_t h = conn_held(c);
        if (h != 0 && c->state == CONN_OPEN && !(c->flags & CF_CLOSE_SENT))
            wsh_evict_offer(mine, &n, EVICT_TOP,
                            (struct wsh_holder){ .bytes = h, .owner = (uint32_t)w->id, .ptr = c });
    }
    wsh_evict_sort(mine, n);
    /* One worker at a time decides, evicts and publishes what it has left,
     * so the next one sees both the memory that freed and the new list. */
    pthread_mutex_lock(&evict_mu);
    live = wsh_buf_live_bytes();
    if (live > cap && others_published(w))
        n = evict_share(w, mine, n, live, cap);
    for (size_t i = 0; i < n; i++)
        atomic_store_explicit(&w->top[i], mine[i].bytes, memory_order_relaxed);
    atomic_store_explicit(&w->ntop, (uint32_t)n, memory_order_release);
    atomic_store_explicit(&w->top_valid, true, memory_order_relaxed);
    pthread_mutex_unlock(&evict_mu);
}

static void release_held(struct worker *w);

static void before_sleep(struct wsh_loop *l, void *user)
{
    struct worker *w = user;
    (void)l;
    w->tls_budget = TLS_STEPS_MAX;
    release_held(w);
    /* Hub messages published on this worker wait in its own inbox so that
     * every worker delivers them in offset order (hub.c fan_out). */
    rawchan_deliver_inbox(w);
    while (w->pending) {
        struct conn *c = w->pending;
        w->pending = c->pending_next;
        c->flags &= (uint8_t)~CF_PENDING;
        if (c->state == CONN_DEAD) {
            c->pending_next = w->closed;
            w->closed = c;
            continue;
        }
        flush_conn(w, c);
    }
    while (w->closed) {
        struct conn *c = w->closed;
        w->closed = c->pending_next;
        free(c);
    }
    /* One eventfd write per peer worker per turn, however many messages
     * went to its inbox (DESIGN.md 2: batch cross-CPU wakeups). */
    for (int i = 0; i < wsh_nworkers; i++) {
        if (w->wake[i]) {
            w->wake[i] = false;
            worker_wake(&wsh_workers[i]);
        }
    }
    if (w->shutting_down && atomic_load_explicit(&w->m.conns, memory_order_relaxed) == 0)
        wsh_loop_stop(w->loop);
    /* Nothing of this turn is held past here (hub.c: a replaced config is
     * freed once every worker has ended a turn). */
    atomic_fetch_add_explicit(&w->turns, 1, memory_order_release);
}

/* ------------------------------------------------------------------ */
/* Input                                                               */

/* Frees the carried input, which client memory counts (keep_carry). */
static void carry_free(struct conn *c)
{
    wsh_buf_live_charge(-(int64_t)c->carry_cap);
    free(c->carry);
    c->carry = NULL;
    c->carry_len = c->carry_cap = 0;
}

static void keep_carry(struct worker *w, struct conn *c, const uint8_t *rest, size_t n)
{
    if (n == 0) {
        if (c->carry_cap > 0)
            carry_free(c);
        c->carry_len = 0;
        return;
    }
    if (n > c->carry_cap) {
        /* Bounded: a partial head is at most CARRY_MAX bytes (the parser
         * answers 431 past it), a head with an API body at most CARRY_MAX +
         * ROUTE_BODY_MAX, and a partial frame header or control
         * frame at most 14 + 125 bytes. */
        uint32_t cap = n <= 256         ? 256
                       : n <= CARRY_MAX ? CARRY_MAX
                                        : (uint32_t)((n + 4095) & ~4095u);
        uint8_t *nc = malloc(cap);
        if (nc == NULL) {
            conn_destroy(w, c);
            return;
        }
        wsh_buf_live_charge((int64_t)cap - (int64_t)c->carry_cap);
        free(c->carry);
        c->carry = nc;
        c->carry_cap = cap;
    }
    memmove(c->carry, rest, n);
    c->carry_len = (uint32_t)n;
}

/* Reads from a TLS session: up to READ_MAX bytes, and then whatever
 * OpenSSL still holds decrypted (at most one record), because epoll cannot
 * see bytes that already left the socket. */
static ssize_t tls_read_turn(struct conn *c, uint8_t *buf, size_t budget, bool *eof)
{
    size_t got = 0;
    ssize_t r = 0;
    while (got < budget || wsh_tls_pending(c->ssl)) {
        r = wsh_tls_read(c->ssl, buf + got, budget + TLS_RECORD - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    /* A fatal error after some bytes: they are handled, then the
     * connection ends as at EOF. Dropped, it lingered until a timeout,
     * nothing being left in the socket to wake it. */
    if (r == 0 || (r < 0 && r != WSH_EAGAIN))
        *eof = true;
    if (got > 0)
        return (ssize_t)got;
    if (r == WSH_EAGAIN)
        return WSH_EAGAIN;
    return r == 0 ? 0 : -1;
}

/* Bytes to read this turn. What a connection sends can come straight back
 * to it (echo replies, pongs), at most as many bytes as it sent: reading
 * no more than the room left in its own queue keeps one read from pushing
 * it past --max-queue, so a client that sends without reading meets TCP
 * backpressure (reads pause at half the limit) instead of the
 * slow-consumer cut-off. */
static size_t read_budget(const struct conn *c)
{
    size_t queued = wsh_wq_bytes(c->wq);
    size_t limit = queue_limit(c);
    size_t room = limit > queued ? limit - queued : 0;
    return room < READ_MAX ? room : READ_MAX;
}

/* Where the bytes of a plain read go. The kernel copies with `rep movsb`,
 * which on this machine's CPU (Zen 4) runs at full speed only when the
 * destination's offset within its cache line is no larger than the
 * source's, and more than twice as slow otherwise (bench/README.md). Our
 * reads have sources anywhere, so their bulk must land on a line start;
 * our sends have destinations anywhere (the kernel's page fragments), so
 * their source should sit late in a line. A fresh read starts 8 bytes
 * before a line (RBUF_LEAD) and asks the kernel to copy those 8 bytes
 * apart (RBUF_HEAD): a frame of 126..65535 bytes has an 8-byte header, so
 * its payload starts on the line, where the in-place unmask also stores
 * aligned, and the echo reply, whose header is the request's less the
 * 4-byte mask key, starts 60 bytes into a line for every frame size. */
static ssize_t plain_read(struct worker *w, struct conn *c, size_t have, size_t budget,
                          uint8_t **buf)
{
    if (have) {
        *buf = w->rbuf;
        memcpy(w->rbuf, c->carry, have);
        return wsh_sock_recv(c->io.fd, w->rbuf + have, budget);
    }
    /* recvmsg costs more than recv (a msghdr and an iovec array to copy
     * in): split only for a connection whose last read was large. */
    *buf = w->rbuf + RBUF_LEAD;
    ssize_t r = (c->flags & CF_BIG_READS) && budget > RBUF_HEAD
                    ? wsh_sock_recv_split(c->io.fd, *buf, RBUF_HEAD, budget)
                    : wsh_sock_recv(c->io.fd, *buf, budget);
    if (r >= (ssize_t)BIG_READ)
        c->flags |= CF_BIG_READS;
    else if (r > 0)
        c->flags &= (uint8_t)~CF_BIG_READS;
    return r;
}

static void conn_input(struct worker *w, struct conn *c, uint8_t *buf, size_t len, size_t have,
                       bool eof);

/* The peer's EOF. Before our close frame or final response is queued, the
 * peer is gone (1006 on its side). After, what is queued still goes out:
 * a client that half-closes once its request is sent (nc -N, some HTTP/1.0
 * clients) reads the whole answer. Input stops, and the flush ends the
 * connection once everything is sent (flush_conn). */
static void conn_eof(struct worker *w, struct conn *c)
{
    if (c->state == CONN_CLOSING && c->wq != NULL && !(c->flags & CF_SHUT_WR)) {
        conn_hold(w, c, HOLD_EOF, true);
        return;
    }
    conn_destroy(w, c);
}

/* read_budget(c), less what rbuf lacks room for after the carry (have
 * bytes) and a TLS read's extra record: the carry is bounded so that this
 * never cuts a read (keep_carry), but rbuf's bound must not rest on that.
 * Without a carry a whole budget always fits (RBUF_SIZE). */
static size_t rbuf_budget(const struct conn *c, size_t have)
{
    size_t budget = read_budget(c);
    if (have == 0)
        return budget;
    size_t tail = RBUF_LEAD + TLS_RECORD;
    size_t room = have + tail < RBUF_SIZE ? RBUF_SIZE - tail - have : 0;
    return budget < room ? budget : room;
}

static void conn_read(struct worker *w, struct conn *c)
{
    size_t have = c->carry_len;
    uint8_t *buf = w->rbuf;
    ssize_t r;
    bool eof = false;
    if (c->ssl) {
        size_t budget = rbuf_budget(c, have);
        if (budget == 0) {
            update_events(w, c); /* see below */
            return;
        }
        if (have)
            memcpy(buf, c->carry, have);
        r = tls_read_turn(c, buf + have, budget, &eof);
        if (r == WSH_EAGAIN)
            return;
        if (r < 0) {
            conn_destroy(w, c);
            return;
        }
    } else {
        size_t budget = rbuf_budget(c, have);
        if (budget == 0) {
            /* EPOLLIN was armed under a larger queue limit (a reload
             * lowered unauthenticated.max_outbound): disarmed now, or the
             * level-triggered read would wake this loop turn after turn
             * until the queue drains. */
            update_events(w, c);
            return;
        }
        r = plain_read(w, c, have, budget, &buf);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            conn_destroy(w, c);
            return;
        }
    }
    if (r == 0) {
        /* EOF. After our close this is the end of a clean close; before it,
         * the peer vanished without a close frame (1006 on its side). */
        wsh_log(WSH_LOG_DEBUG, "conn=%u ev=eof clean=%d", c->id,
                (c->flags & CF_CLOSE_SENT) ? 1 : 0);
        conn_eof(w, c);
        return;
    }
    metric_add(&w->m.bytes_in, (uint64_t)r);
    conn_input(w, c, buf, have + (size_t)r, have, eof);
}

/* Handles buf[0..len), of which the first `have` bytes were seen before
 * (the carry); keeps what is left for the next read. */
static void conn_input(struct worker *w, struct conn *c, uint8_t *buf, size_t len, size_t have,
                       bool eof)
{
    size_t used = 0;
    w->inbox_full = false; /* set by what this input publishes */
    if (c->state == CONN_HTTP) {
        used = route_input(w, c, buf, len, have);
        if (c->state == CONN_HTTP) {
            /* The parser answers 431 past the head limit and the body is
             * bounded by ROUTE_BODY_MAX: the carry stays bounded. */
            keep_carry(w, c, buf + used, len - used);
            return;
        }
        if (c->state == CONN_PARKED) {
            keep_carry(w, c, buf, len); /* the head is checked again */
            if (eof && c->state != CONN_DEAD)
                conn_destroy(w, c);
            return;
        }
    }
    /* Once our close frame or final response is queued, input is only read
     * to see the peer's EOF: it is discarded. */
    if (c->state == CONN_OPEN)
        used += session_input(w, c, buf + used, len - used);
    /* Raw messages of this read go out together. */
    rawchan_flush(w);
    conn_hold_if_inbox_full(w, c);
    /* Echo replies still point into rbuf: send them before it is reused. */
    direct_flush(w);
    if (c->state == CONN_DEAD)
        return;
    if (c->state != CONN_OPEN)
        used = len;
    keep_carry(w, c, buf + used, len - used);
    if (eof && c->state != CONN_DEAD)
        conn_eof(w, c);
}

/* Handles the carry again, as if just read: a parked head once its fetch
 * ended, or /ws input held while `connect` waited. */
static void conn_replay(struct worker *w, struct conn *c)
{
    size_t len = c->carry_len;
    if (len == 0)
        return;
    memcpy(w->rbuf, c->carry, len);
    conn_input(w, c, w->rbuf, len, 0, false);
}

void conn_hold(struct worker *w, struct conn *c, uint8_t why, bool on)
{
    if (c->state == CONN_DEAD)
        return;
    uint8_t was = c->hold;
    c->hold = on ? (uint8_t)(was | why) : (uint8_t)(was & ~why);
    if ((c->hold ^ was) & HOLD_INBOX)
        w->nheld += on ? 1u : (uint32_t)-1;
    if ((c->hold != 0) == (was != 0))
        return;
    update_events(w, c);
    if (!on && c->state != CONN_DEAD)
        conn_replay(w, c);
}

void conn_hold_api(struct worker *w, struct conn *c)
{
    metric_add(&w->m.inbox_holds, 1);
    wsh_log(WSH_LOG_DEBUG, "conn=%u ev=publisher_held", c->id);
    conn_hold(w, c, HOLD_INBOX, true);
}

void conn_hold_for_inbox(struct worker *w, struct conn *c)
{
    w->inbox_full = false;
    c->held_for = w->inbox_full_on;
    c->held_gen = w->inbox_full_gen;
    if (c->state == CONN_OPEN && !(c->hold & HOLD_INBOX))
        conn_hold_api(w, c); /* the same hold, for a publisher */
}

/* From the end of a turn, once an inbox this worker waited for has
 * drained: its held API requests, and the publishers held for that inbox
 * (held_for) whose generation of it was taken (held_gen; chan.c
 * inbox_taken_since), read again. Only those: released when another was taken,
 * this worker's own for instance, which a deferred fan-out (chan.c
 * defer_local) fills and which is taken every turn, a publisher would add
 * a message per turn to an inbox over its bound. A held connection is
 * found by walking the worker's list, which costs a pass over its
 * connections per drained inbox (one per INBOX_HIGH bytes at most) and
 * saves every connection a link field. They are collected first: a
 * release runs the held input, which may close other connections. */
static void release_held(struct worker *w)
{
    if (w->nheld == 0) {
        /* Holds begin only during a turn: a word that came for
         * connections already gone is stale, and kept it would release
         * the next held publisher before its inbox was taken in. */
        if (atomic_load_explicit(&w->inbox_resume, memory_order_relaxed))
            atomic_store(&w->inbox_resume, 0);
        return;
    }
    uint64_t taken = atomic_exchange(&w->inbox_resume, 0);
    if (taken == 0)
        return;
    struct conn **held = malloc(w->nheld * sizeof(*held));
    if (held == NULL) {
        atomic_fetch_or(&w->inbox_resume, taken); /* next turn */
        return;
    }
    uint32_t n = 0;
    for (struct conn *c = w->conns; c != NULL && n < w->nheld; c = c->next)
        if (c->hold & HOLD_INBOX)
            held[n++] = c;
    /* Connections closed meanwhile are freed only at the end of the turn:
     * the pointers stay valid, and conn_hold skips the dead. API requests
     * go first, oldest first (the list has the newest at its head): each
     * is checked against the inboxes before it starts, so those released
     * before it may keep it waiting, and in order of arrival none waits
     * behind newer ones round after round. Publishers go after them: each
     * takes its next message whatever the others did. */
    for (uint32_t i = n; i-- > 0;)
        if (held[i]->state == CONN_HTTP)
            conn_hold(w, held[i], HOLD_INBOX, false);
    for (uint32_t i = 0; i < n; i++) {
        struct conn *c = held[i];
        if (c->state != CONN_HTTP && (taken & ((uint64_t)1 << c->held_for)) &&
            inbox_taken_since(w, c->held_for, c->held_gen))
            conn_hold(w, c, HOLD_INBOX, false);
    }
    free(held);
}

/* From the wakeup: parked heads whose fetch has ended are checked again,
 * now without waiting. */
static void unpark_due(struct worker *w)
{
    uint64_t done = keys_fetched();
    for (uint32_t i = 0; i < w->nparked;) {
        struct conn *c = w->parked[i].c;
        if (w->parked[i].ticket > done) {
            i++;
            continue;
        }
        w->parked[i] = w->parked[--w->nparked];
        c->state = CONN_HTTP;
        update_events(w, c);
        if (c->state == CONN_DEAD)
            continue;
        w->replay = true;
        conn_replay(w, c);
        w->replay = false;
        i = 0; /* what that did may have ended other parked ones */
    }
}

/* --proxy-protocol: the balancer's header comes before anything else,
 * TLS included. It is read with MSG_PEEK and consumed only as far as it
 * goes, so the client's own first bytes stay in the socket for whichever
 * reader comes next, TLS or HTTP. A partial header waits in the carry
 * (at most WSH_PROXY_MAX bytes, and the handshake deadline runs).
 * Returns true once the header is read and the connection goes on. */
static bool proxy_input(struct worker *w, struct conn *c)
{
    size_t have = c->carry_len;
    uint8_t *buf = w->rbuf;
    if (have)
        memcpy(buf, c->carry, have);
    ssize_t r = recv(c->io.fd, buf + have, WSH_PROXY_MAX - have, MSG_PEEK);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return false;
    if (r <= 0) {
        conn_destroy(w, c);
        return false;
    }
    struct wsh_proxy px;
    ssize_t n = wsh_proxy_parse(buf, have + (size_t)r, &px);
    if (n < 0) {
        wsh_log(WSH_LOG_DEBUG, "conn=%u ev=proxy_refused reason=\"%s\"", c->id,
                wsh_proxy_strerror((int)n));
        metric_add(&w->m.proxy_errors, 1);
        conn_destroy(w, c);
        return false;
    }
    /* Take what was peeked, but not a byte past the header. */
    size_t take = n == 0 ? (size_t)r : (size_t)n - have;
    if (wsh_sock_recv(c->io.fd, buf + have, take) != (ssize_t)take) {
        conn_destroy(w, c); /* peeked bytes stay queued: not expected */
        return false;
    }
    metric_add(&w->m.bytes_in, take);
    keep_carry(w, c, buf, n == 0 ? have + take : 0);
    if (n == 0 || c->state == CONN_DEAD)
        return false;
    if (admit_per_ip_on()) {
        struct sockaddr_storage peer = px.src;
        socklen_t plen = sizeof(peer);
        if (px.src.ss_family == AF_UNSPEC &&
            getpeername(c->io.fd, (struct sockaddr *)&peer, &plen) != 0) {
            conn_destroy(w, c);
            return false;
        }
        bool forwarded;
        uint32_t retry_s = admit_peer(&peer, &c->ip, &forwarded);
        if (forwarded)
            c->flags |= CF_FORWARDED;
        if (retry_s) {
            send_early_refusal(w, c->io.fd, c->ssl != NULL, 429, retry_s);
            conn_destroy(w, c);
            return false;
        }
    }
    if (wsh_log_enabled(WSH_LOG_DEBUG)) {
        char a[INET6_ADDRSTRLEN] = "none";
        uint16_t port = 0;
        if (px.src.ss_family == AF_INET) {
            const struct sockaddr_in *s4 = (const struct sockaddr_in *)&px.src;
            inet_ntop(AF_INET, &s4->sin_addr, a, sizeof(a));
            port = ntohs(s4->sin_port);
        } else if (px.src.ss_family == AF_INET6) {
            const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&px.src;
            inet_ntop(AF_INET6, &s6->sin6_addr, a, sizeof(a));
            port = ntohs(s6->sin6_port);
        }
        wsh_log(WSH_LOG_DEBUG, "conn=%u ev=proxy version=%u client=%s port=%u", c->id, px.version,
                a, port);
    }
    return true;
}

static void on_conn_io(struct wsh_loop *l, struct wsh_io *io, uint32_t events)
{
    struct worker *w = wsh_loop_user(l);
    struct conn *c = (struct conn *)io;
    if (c->state == CONN_DEAD)
        return;
    if (c->state == CONN_PARKED || c->hold) {
        /* Waiting for keys: nothing is read, but a peer that is gone is
         * let go at once. */
        if (events & EPOLLOUT)
            flush_conn(w, c);
        if (c->state != CONN_DEAD && (events & (EPOLLHUP | EPOLLERR)))
            conn_destroy(w, c);
        return;
    }
    if (c->state == CONN_PROXY) {
        if (!proxy_input(w, c))
            return;
        c->state = c->ssl ? CONN_TLS : CONN_HTTP;
        /* The client's first bytes may have come with the header. */
        events |= EPOLLIN;
    }
    if (c->state == CONN_TLS) {
        if (w->tls_budget <= 0)
            return;
        w->tls_budget--;
        int rc = wsh_tls_handshake(c->ssl);
        if (rc == WSH_EAGAIN) {
            update_events(w, c); /* EPOLLOUT while its flight waits for room */
            return;
        }
        if (rc != WSH_OK) {
            wsh_log(WSH_LOG_DEBUG, "conn=%u ev=tls_handshake_failed", c->id);
            conn_destroy(w, c);
            return;
        }
        c->state = CONN_HTTP;
        update_events(w, c);
        if (c->state == CONN_DEAD)
            return;
        /* The request may have come in the same packets as the handshake. */
        events |= EPOLLIN;
    }
    if (events & EPOLLOUT) {
        flush_conn(w, c);
        if (c->state == CONN_DEAD)
            return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        conn_read(w, c);
}

/* An API request still waiting for a worker that is behind (held in
 * CONN_HTTP), at its deadline or at shutdown: answered 503 with what it
 * published, so the backend knows, rather than dropped. */
static void answer_held_api(struct worker *w, struct conn *c, const char *why)
{
    hold_drop(w, c);
    keep_carry(w, c, NULL, 0);
    api_expired(w, c, why);
    if (c->state != CONN_DEAD)
        update_events(w, c);
}

static void on_conn_timer(struct wsh_loop *l, struct wsh_timer *t)
{
    struct worker *w = wsh_loop_user(l);
    struct conn *c = (struct conn *)((char *)t - offsetof(struct conn, timer));
    switch (c->state) {
    case CONN_PROXY:
    case CONN_TLS:
    case CONN_HTTP:
        if (c->hold & HOLD_INBOX) {
            wsh_log(WSH_LOG_DEBUG, "conn=%u ev=api_held_timeout", c->id);
            answer_held_api(w, c, "the workers are behind");
            break;
        }
        /* Whole-head deadline from accept (slowloris): drop, no answer. */
        wsh_log(WSH_LOG_DEBUG, "conn=%u ev=handshake_timeout", c->id);
        conn_destroy(w, c);
        break;
    case CONN_PARKED: {
        /* The fetch did not end by the handshake deadline: the token may
         * well be good, so the answer says "later", not "forbidden". */
        static const char body[] = "the signing keys are being fetched: retry\n";
        unpark(w, c);
        c->state = CONN_HTTP;
        keys_wait_count(KEY_WAIT_TIMEOUT);
        wsh_log(WSH_LOG_DEBUG, "conn=%u ev=handshake_keys_timeout", c->id);
        route_respond(w, c, 503, "text/plain", body, sizeof(body) - 1);
        break;
    }
    case CONN_OPEN:
        session_timer(w, c);
        break;
    case CONN_CLOSING:
        wsh_log(WSH_LOG_DEBUG, "conn=%u ev=close_timeout", c->id);
        conn_destroy(w, c);
        break;
    default:
        break;
    }
}

/* ------------------------------------------------------------------ */
/* Accepting                                                           */

/* A refusal sent before anything is read from the connection, so before
 * any TLS handshake: the 429 of an address over its bounds, the 503 of a
 * full server. On a TLS listener the client speaks TLS from its first
 * byte and would read HTTP text as a broken record ("wrong version
 * number"), so it gets the one thing TLS lets a server say before the
 * handshake: a fatal alert record, internal_error (RFC 8446 6: "an
 * internal error unrelated to the peer"), which clients report as such.
 * Finishing the handshake to send the status over TLS would spend the CPU
 * that refusing early saves. Counted under the status either way. tls:
 * the connection came to the TLS listener (the admin one is plain HTTP).
 * The caller closes. */
static void send_early_refusal(struct worker *w, int fd, bool tls, int status, uint32_t retry_s)
{
    metric_http(w, status);
    char resp[160];
    size_t n;
    if (tls) {
        static const uint8_t alert[] = { 0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50 };
        memcpy(resp, alert, sizeof(alert));
        n = sizeof(alert);
    } else {
        n = (size_t)snprintf(resp, sizeof(resp),
                             "HTTP/1.1 %d %s\r\nRetry-After: %u\r\n"
                             "Content-Length: 0\r\nConnection: close\r\n\r\n",
                             status, status == 429 ? "Too Many Requests" : "Service Unavailable",
                             retry_s);
    }
    ssize_t r = send(fd, resp, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)r;
}

static void refuse_overload(struct worker *w, int fd, bool tls)
{
    send_early_refusal(w, fd, tls, 503, 1);
    close(fd);
}

/* An accepted socket as a connection of w. Owns fd, ipc and the place
 * taken in wsh_total_conns: on failure (out of memory) all are let go, in
 * one place, and the client is told 503 (a TLS client an internal-error
 * alert), which needs no memory, as docs/server.md promises. */
static void conn_new(struct worker *w, int fd, struct ipcount *ipc, bool forwarded, bool admin,
                     bool tls)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        goto fail;
    c->ip = ipc;
    if (forwarded)
        c->flags |= CF_FORWARDED;
    c->io.fd = fd;
    c->io.cb = on_conn_io;
    c->timer.cb = on_conn_timer;
    c->id = next_conn_id();
    c->state = CONN_HTTP;
    if (admin)
        c->endpoint = EP_ADMIN;
    if (tls) {
        if ((c->ssl = wsh_tls_conn_new(wsh_tls_ctx, fd)) == NULL)
            goto fail;
        c->state = CONN_TLS;
    }
    if (wsh_cfg.proxy_protocol && !admin)
        c->state = CONN_PROXY;
    if (wsh_loop_add(w->loop, &c->io, EPOLLIN) != WSH_OK)
        goto fail;
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    metric_add(&w->m.conns, 1);
    metric_add(&w->m.accepted, 1);
    wsh_timer_start(w->loop, &c->timer, wsh_cfg.handshake_timeout_ms);
    return;
fail:
    if (c != NULL && c->ssl != NULL)
        wsh_tls_conn_free(c->ssl);
    free(c);
    if (ipc)
        admit_ip_release(ipc);
    atomic_fetch_sub_explicit(&wsh_total_conns, 1, memory_order_relaxed);
    refuse_overload(w, fd, tls);
}

/* How long the listeners rest when the process is out of fds and the
 * reserve is gone (accept_out_of_fds). */
#define ACCEPT_PAUSE_MS 100u

static void listeners_watch(struct worker *w, uint32_t events)
{
    struct wsh_io *listeners[2] = { &w->listen_io, &w->admin_io };
    for (int i = 0; i < 2; i++)
        if (listeners[i]->fd >= 0)
            wsh_loop_mod(w->loop, listeners[i], events);
}

/* Out of fds. With the reserve (libuv's EMFILE trick): free it, accept
 * and refuse the connection at the head of the queue so the listener does
 * not spin, then take the reserve back. Another thread (another worker,
 * the key fetcher) may take the number it freed first, and it may never
 * have been had (open failed at start): with no reserve, the listener,
 * level-triggered, woke the worker again at once, turn after turn, at
 * full CPU, until some fd was closed. The listeners rest instead, for
 * ACCEPT_PAUSE_MS, and then try again, the reserve first. */
static void accept_pause(struct worker *w, const char *reason)
{
    if (wsh_timer_active(&w->accept_timer))
        return;
    wsh_log(WSH_LOG_WARN, "worker=%d ev=accept_paused ms=%u reason=\"%s\"", w->id, ACCEPT_PAUSE_MS,
            reason);
    listeners_watch(w, 0);
    wsh_timer_start(w->loop, &w->accept_timer, ACCEPT_PAUSE_MS);
}

static void accept_out_of_fds(struct worker *w, struct wsh_io *io, bool tls)
{
    if (w->reserve_fd >= 0) {
        close(w->reserve_fd);
        int victim = accept4(io->fd, NULL, NULL, SOCK_CLOEXEC);
        if (victim >= 0)
            refuse_overload(w, victim, tls);
        w->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        /* One line a second at most: every refused connection would be
         * one, at the rate a client chooses. */
        w->emfile_refused++;
        uint64_t now = wsh_loop_now(w->loop);
        if (w->emfile_logged_ms == 0 || now - w->emfile_logged_ms >= 1000) {
            wsh_log(WSH_LOG_WARN, "worker=%d ev=emfile refused=%u", w->id, w->emfile_refused);
            w->emfile_logged_ms = now;
            w->emfile_refused = 0;
        }
        if (w->reserve_fd >= 0)
            return;
    }
    accept_pause(w, "out of file descriptors");
}

static void on_accept_timer(struct wsh_loop *l, struct wsh_timer *t)
{
    struct worker *w = wsh_loop_user(l);
    (void)t;
    if (w->reserve_fd < 0)
        w->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    listeners_watch(w, EPOLLIN);
}

/* Both listeners: the public one of each worker, and worker 0's
 * --admin-listen one, whose connections are plain HTTP from the operator's
 * network (no TLS, no PROXY header, no per-address limits) and reach only
 * the operator's endpoints (route_input). */
static void on_accept(struct wsh_loop *l, struct wsh_io *io, uint32_t events)
{
    struct worker *w = wsh_loop_user(l);
    (void)events;
    bool admin = io == &w->admin_io;
    bool tls = wsh_tls_ctx != NULL && !admin;
    for (int i = 0; i < ACCEPT_MAX; i++) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof(peer);
        int fd = accept4(io->fd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            /* That connection is gone (reset while queued): the next may
             * be there. */
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if (errno == EMFILE || errno == ENFILE)
                accept_out_of_fds(w, io, tls);
            /* Out of kernel memory, or a security module's refusal: the
             * connection stays queued and the listener readable, which
             * would wake this loop again at once, turn after turn. */
            else if (errno != EAGAIN && errno != EWOULDBLOCK)
                accept_pause(w, strerror(errno));
            return;
        }
        /* The place is taken before the check: checked first and added
         * later, the last place could go to a connection on each worker. */
        if (atomic_fetch_add_explicit(&wsh_total_conns, 1, memory_order_relaxed) >=
            admit_max_conns()) {
            atomic_fetch_sub_explicit(&wsh_total_conns, 1, memory_order_relaxed);
            refuse_overload(w, fd, tls);
            continue;
        }
        /* Behind a balancer the address that counts is the one its
         * header names (proxy_input), not the balancer's own. */
        struct ipcount *ipc = NULL;
        bool forwarded = false;
        if (!wsh_cfg.proxy_protocol && !admin) {
            uint32_t retry_s = admit_peer(&peer, &ipc, &forwarded);
            if (retry_s) {
                atomic_fetch_sub_explicit(&wsh_total_conns, 1, memory_order_relaxed);
                send_early_refusal(w, fd, tls, 429, retry_s);
                close(fd);
                continue;
            }
        }
        conn_new(w, fd, ipc, forwarded, admin, tls);
    }
}

/* ------------------------------------------------------------------ */
/* Wakeups, shutdown, thread                                           */

void worker_wake(struct worker *w)
{
    uint64_t one = 1;
    ssize_t n = write(w->wake_io.fd, &one, sizeof(one));
    (void)n; /* EAGAIN means a wakeup is already pending */
}

/* Closes up to `max` open connections with the shutdown's code; drops
 * those still in their handshake. Returns how many open ones remain. */
static uint32_t drain_some(struct worker *w, uint32_t max)
{
    unsigned code = (unsigned)atomic_load(&wsh_shutdown_code);
    const char *why = code == WSH_CLOSE_RESTART ? "server restart" : "server shutdown";
    uint32_t closed = 0, left = 0;
    struct conn *next;
    for (struct conn *c = w->conns; c != NULL; c = next) {
        next = c->next;
        if (c->state == CONN_HTTP && (c->hold & HOLD_INBOX)) {
            answer_held_api(w, c, why);
        } else if (c->state == CONN_PROXY || c->state == CONN_HTTP || c->state == CONN_TLS ||
                   c->state == CONN_PARKED) {
            conn_destroy(w, c);
        } else if (c->state == CONN_OPEN && closed == max) {
            left++;
        } else if (c->state == CONN_OPEN) {
            closed++;
            hub_close_retry(w, c, code, why);
        }
    }
    return left;
}

#define DRAIN_TICK_MS 100u

static void on_drain(struct wsh_loop *l, struct wsh_timer *t)
{
    struct worker *w = wsh_loop_user(l);
    (void)t;
    if (drain_some(w, w->drain_batch) > 0)
        wsh_timer_start(w->loop, &w->drain_timer, DRAIN_TICK_MS);
}

/* --drain-time (USERS.md: batched drain): rather than every client at
 * once, the open connections are closed in equal batches every 100 ms
 * over the drain time, so they reconnect to the other nodes (or to this
 * one restarted) as a stream, not a spike. Those not yet closed are served
 * as usual meanwhile; the listener is closed at once. */
static void begin_shutdown(struct worker *w)
{
    w->shutting_down = true;
    wsh_timer_stop(&w->sweep_timer);
    wsh_timer_stop(&w->accept_timer);
    struct wsh_io *listeners[2] = { &w->listen_io, &w->admin_io };
    for (int i = 0; i < 2; i++) {
        if (listeners[i]->fd >= 0) {
            wsh_loop_del(w->loop, listeners[i]);
            close(listeners[i]->fd);
            listeners[i]->fd = -1;
        }
    }
    uint64_t ticks = wsh_cfg.drain_ms / DRAIN_TICK_MS;
    if (ticks <= 1) {
        drain_some(w, UINT32_MAX);
        return;
    }
    uint32_t open = 0;
    for (struct conn *c = w->conns; c != NULL; c = c->next)
        open += c->state == CONN_OPEN;
    w->drain_batch = (uint32_t)((open + ticks - 1) / ticks);
    if (w->drain_batch == 0)
        w->drain_batch = 1;
    w->drain_timer.cb = on_drain;
    if (drain_some(w, w->drain_batch) > 0)
        wsh_timer_start(w->loop, &w->drain_timer, DRAIN_TICK_MS);
}

static void on_wake(struct wsh_loop *l, struct wsh_io *io, uint32_t events)
{
    struct worker *w = wsh_loop_user(l);
    (void)events;
    uint64_t v;
    ssize_t n = read(io->fd, &v, sizeof(v));
    (void)n;
    /* The inbox is delivered in before_sleep, after the turn's reads. */
    if (atomic_load_explicit(&w->ip_recount, memory_order_relaxed) &&
        atomic_exchange(&w->ip_recount, false))
        admit_ip_recount(w);
    if (w->nparked > 0)
        unpark_due(w);
    hub_keys_wake(w);
    if (atomic_load(&wsh_shutdown_code) != 0 && !w->shutting_down)
        begin_shutdown(w);
    if (w->shutting_down && atomic_load(&wsh_drain_now)) {
        wsh_timer_stop(&w->drain_timer);
        drain_some(w, UINT32_MAX);
    }
}

static void on_turn(struct wsh_loop *l, uint64_t ns, void *user)
{
    (void)l;
    metric_turn(user, ns);
}

int worker_init(struct worker *w, int id, int listen_fd)
{
    w->id = id;
    w->listen_io.fd = listen_fd;
    w->listen_io.cb = on_accept;
    w->admin_io.fd = -1;
    w->admin_io.cb = on_accept;
    w->accept_timer.cb = on_accept_timer;
    /* Cache-line aligned: the kernel's copy into it (rep movsb) runs about
     * a third slower into a misaligned destination on this machine's CPU,
     * and malloc puts a block this size 16 bytes into a page. */
    w->rbuf = aligned_alloc(64, RBUF_SIZE);
    if (w->rbuf == NULL)
        return WSH_ENOMEM;
    w->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    pthread_mutex_init(&w->inbox_mu, NULL);
    int rc = inbox_init(w);
    if (rc != WSH_OK)
        return rc;
    rc = wsh_loop_create(before_sleep, w, &w->loop);
    if (rc != WSH_OK)
        return rc;
    wsh_loop_on_turn(w->loop, on_turn);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0)
        return -errno;
    w->wake_io.fd = efd;
    w->wake_io.cb = on_wake;
    rc = wsh_loop_add(w->loop, &w->wake_io, EPOLLIN);
    if (rc != WSH_OK)
        return rc;
    return wsh_loop_add(w->loop, &w->listen_io, EPOLLIN);
}

int worker_listen_admin(struct worker *w, int fd)
{
    w->admin_io.fd = fd;
    int rc = wsh_loop_add(w->loop, &w->admin_io, EPOLLIN);
    if (rc != WSH_OK)
        w->admin_io.fd = -1;
    return rc;
}

void *worker_main(void *arg)
{
    struct worker *w = arg;
    wsh_self = w;
    /* Out of memory for this worker's copy of the keys: it is made again
     * at the next token (keys_auth), which meanwhile gets "try again".
     * Returning here instead left the server half up: that worker's
     * listener unserved and, for worker 0, signals unread, so SIGTERM
     * never ended it. */
    if (hub_worker_init(w) != 0)
        wsh_log(WSH_LOG_WARN, "worker=%d ev=auth_init_failed err=\"out of memory\"", w->id);
    w->out_timer.cb = on_out_timer;
    wsh_timer_start(w->loop, &w->out_timer, 1000);
    w->evict_timer.cb = on_evict_timer;
    wsh_timer_start(w->loop, &w->evict_timer,
                    worker_memory_cap() != 0 ? EVICT_CHECK_MS : EVICT_IDLE_MS);
    if (w->id == 0) {
        w->sweep_timer.cb = on_sweep;
        wsh_timer_start(w->loop, &w->sweep_timer, 2000);
    }
    int rc = wsh_loop_run(w->loop);
    hub_worker_exit(w);
    free(w->parked);
    w->parked = NULL;
    free(w->zbuf);
    w->zbuf = NULL;
    if (rc != WSH_OK)
        wsh_log(WSH_LOG_ERROR, "worker=%d ev=loop_failed err=\"%s\"", w->id, wsh_strerror(rc));
    return NULL;
}
