/* The WebSocket phase of a connection: frames in through the protocol
 * core, messages reassembled and handed to the endpoint (/echo or
 * /raw/<channel>), control frames answered, heartbeats. */
#include <stdlib.h>
#include <string.h>

#include "server.h"

/* Head-room kept in front of a reassembled message so its frame header can
 * be written in place once the length is known: no copy at the end. */
#define HEADROOM WSH_FRAME_HDR_MAX

/* Hands a complete message (an uncompressed frame we encoded) to the
 * endpoint. An echo to a connection with permessage-deflate goes back
 * compressed when it is worth it. */
static void deliver(struct worker *w, struct conn *c, struct wsh_buf *frame)
{
    if (c->endpoint == EP_RAW) {
        rawchan_publish(w, c, frame);
        return;
    }
    size_t len;
    const uint8_t *payload = frame_payload(frame, &len);
    if (c->endpoint == EP_HUB) {
        hub_message(w, c, frame->data[frame->start] & 0x0fu, payload, len);
        wsh_buf_unref(frame);
        return;
    }
    if (c->pmd && wsh_pmd_worth_compressing(&wsh_cfg.pmd, len)) {
        struct wsh_buf *z =
            frame_deflate(c->pmd, 0, frame->data[frame->start] & 0x0fu, payload, len);
        wsh_buf_unref(frame);
        if (z == NULL) {
            conn_close(w, c, WSH_CLOSE_INTERNAL, "compression failed");
            return;
        }
        frame = z;
    }
    conn_reply(w, c, frame);
}

static const char *reason_for(unsigned code)
{
    switch (code) {
    case WSH_CLOSE_INVALID_DATA:
        return "invalid UTF-8";
    case WSH_CLOSE_TOO_BIG:
        return "message too big";
    case WSH_CLOSE_POLICY:
        return "too many fragments";
    default:
        return "protocol error";
    }
}

/* The bound of c's next message: the flag's, or on /ws the hub's
 * (hub_conn_message_limit: the file's limits.max_message, which SIGHUP
 * changes, and a smaller one before the session has authenticated). It is
 * read afresh for every frame, so a message under way when it moves is
 * held to the new bound from its next frame. */
static uint64_t msg_max(const struct conn *c)
{
    return c->endpoint == EP_HUB ? hub_conn_message_limit(c) : wsh_cfg.limits.max_message;
}

/* The limits the parser and inflate hold c to: the flags' as they are,
 * or /ws's made in *buf. (On the wire the parser lets a compressed
 * message grow a little past them, as deflate can; inflate holds it to
 * them.) */
static const struct wsh_limits *msg_limits(const struct conn *c, struct wsh_limits *buf)
{
    if (c->endpoint != EP_HUB)
        return &wsh_cfg.limits;
    *buf = wsh_cfg.limits;
    buf->max_message = msg_max(c);
    return buf;
}

/* Closes c for its peer's fault: code and reason, status for the log. A
 * /ws message over its bound goes to the hub, which answers a session
 * that has not authenticated with the 1008 of its budget (hub_too_big). */
static void peer_fault(struct worker *w, struct conn *c, unsigned code, const char *reason,
                       int status)
{
    wsh_log(WSH_LOG_DEBUG, "conn=%u ev=peer_fault code=%u err=\"%s\"", c->id, code,
            wsh_strerror(status));
    if (code == WSH_CLOSE_TOO_BIG && c->endpoint == EP_HUB)
        hub_too_big(w, c);
    else
        conn_close(w, c, code, reason);
}

static int append(struct conn *c, const uint8_t *p, size_t n)
{
    struct wsh_buf *b = c->msg;
    size_t need = (size_t)b->end + n;
    if (need > b->cap) {
        /* Doubling keeps reassembly linear; the parser has already refused
         * anything whose declared length passes its bound (msg_max). */
        size_t cap = (size_t)b->cap * 2;
        size_t limit = HEADROOM + (size_t)msg_max(c);
        if (cap < need)
            cap = need;
        if (cap > limit)
            cap = limit < need ? need : limit;
        struct wsh_buf *nb = wsh_buf_grow(b, cap);
        if (nb == NULL)
            return WSH_ENOMEM;
        c->msg = b = nb;
    }
    if (n) {
        memcpy(b->data + b->end, p, n);
        b->end += (uint32_t)n;
    }
    return WSH_OK;
}

struct inflate_ctx {
    struct conn *c;
    struct worker *w; /* a message whole in this frame: may go on in w->zbuf */
    size_t n;         /* bytes in w->zbuf, once it went there (c->msg NULL) */
    bool text;
};

/* The worker's scratch for a message that came whole in one frame and
 * outgrew the first guess at its size (start_message: twice the
 * compressed size, at least 4 KiB): it grows to the largest such message
 * (at most --max-message) and is kept up to ZBUF_KEEP, and the message is
 * copied once into a buffer of its own size. Growing the message's buffer
 * by doubling instead cost five copies for a 100 KB message, each moving
 * it once other buffers lay past it on the heap, as when the frames of
 * several messages of a turn wait in an inbox (chan.c defer_local). A
 * message that fits the guess is inflated in place, as before. */
#define ZBUF_KEEP (1u << 20)

static int zbuf_append(struct inflate_ctx *x, const uint8_t *p, size_t n)
{
    struct worker *w = x->w;
    if (n == 0)
        return WSH_OK; /* (w->zbuf may be NULL yet) */
    if (x->n + n > w->zbuf_cap) {
        size_t cap = w->zbuf_cap ? w->zbuf_cap * 2 : 65536;
        while (cap < x->n + n)
            cap *= 2;
        uint8_t *nb = realloc(w->zbuf, cap);
        if (nb == NULL)
            return WSH_ENOMEM;
        w->zbuf = nb;
        w->zbuf_cap = cap;
    }
    memcpy(w->zbuf + x->n, p, n);
    x->n += n;
    return WSH_OK;
}

/* Inflated bytes: UTF-8 is checked as they come out, so a compressed text
 * message fails as fast as an uncompressed one. */
static int inflate_out(const uint8_t *p, size_t n, void *user)
{
    struct inflate_ctx *x = user;
    if (x->text && wsh_utf8_feed(&x->c->zutf8, p, n) != WSH_OK)
        return WSH_EUTF8;
    struct wsh_buf *b = x->c->msg;
    if (x->w == NULL || (b != NULL && (size_t)b->end + n <= b->cap))
        return append(x->c, p, n);
    if (b != NULL) { /* it outgrew the guess: on in the scratch */
        int rc = zbuf_append(x, b->data + HEADROOM, b->end - HEADROOM);
        if (rc != WSH_OK)
            return rc;
        wsh_buf_unref(b);
        x->c->msg = NULL;
    }
    return zbuf_append(x, p, n);
}

static unsigned close_code_for(int status)
{
    switch (status) {
    case WSH_EUTF8:
        return WSH_CLOSE_INVALID_DATA;
    case WSH_ETOOBIG:
        return WSH_CLOSE_TOO_BIG;
    case WSH_ENOMEM:
        return WSH_CLOSE_INTERNAL;
    default:
        return WSH_CLOSE_PROTOCOL;
    }
}

static struct wsh_buf *finish_message(struct conn *c, unsigned opcode)
{
    struct wsh_buf *b = c->msg;
    c->msg = NULL;
    uint64_t len = b->end - HEADROOM;
    size_t hl = wsh_frame_header_size(len, false);
    b->start = (uint32_t)(HEADROOM - hl);
    wsh_frame_header_write(b->data + b->start, opcode, true, false, len, NULL);
    return b;
}

static bool start_message(struct worker *w, struct conn *c, size_t hint)
{
    size_t cap = HEADROOM + (hint > 4096 ? hint : 4096);
    size_t max = (size_t)msg_max(c);
    if (cap > HEADROOM + max)
        cap = HEADROOM + max;
    c->msg = wsh_buf_new(cap);
    if (c->msg == NULL) {
        conn_close(w, c, WSH_CLOSE_INTERNAL, "out of memory");
        return false;
    }
    c->msg->start = c->msg->end = HEADROOM;
    return true;
}

/* A chunk of a compressed message (RFC 7692): inflated into the message
 * buffer with the size limit on the inflated bytes (a bomb stops after at
 * most max_message + one chunk). */
static void on_compressed(struct worker *w, struct conn *c, const struct wsh_event *ev)
{
    if (ev->first) {
        wsh_utf8_init(&c->zutf8);
        if (!start_message(w, c, ev->len * 2))
            return;
    }
    if (c->msg == NULL)
        return;
    struct inflate_ctx x = { .c = c,
                             .w = ev->first && ev->last ? w : NULL,
                             .text = ev->opcode == WSH_OP_TEXT };
    struct wsh_limits buf;
    int rc =
        wsh_pmd_inflate(c->pmd, msg_limits(c, &buf), ev->data, ev->len, ev->last, inflate_out, &x);
    if (rc == WSH_OK && ev->last && x.text && !wsh_utf8_complete(&c->zutf8))
        rc = WSH_EUTF8;
    if (rc != WSH_OK) {
        unsigned code = close_code_for(rc);
        peer_fault(w, c, code,
                   code == WSH_CLOSE_TOO_BIG        ? "message too big"
                   : code == WSH_CLOSE_INVALID_DATA ? "invalid UTF-8"
                                                    : "bad compressed data",
                   rc);
        goto out;
    }
    if (c->msg == NULL) { /* it went on in the scratch */
        struct wsh_buf *f = frame_new(ev->opcode, w->zbuf, x.n);
        if (f == NULL) {
            conn_close(w, c, WSH_CLOSE_INTERNAL, "out of memory");
            goto out;
        }
        deliver(w, c, f);
    } else if (ev->last) {
        deliver(w, c, finish_message(c, ev->opcode));
    }
out:
    if (w->zbuf_cap > ZBUF_KEEP) {
        free(w->zbuf);
        w->zbuf = NULL;
        w->zbuf_cap = 0;
    }
}

static void on_data(struct worker *w, struct conn *c, const struct wsh_event *ev)
{
    if (ev->last) {
        metric_add(&w->m.msgs_in[c->endpoint & 3u], 1);
        /* The message-progress deadline is per message: one that begins
         * in this same read is stamped afresh (note_progress), not timed
         * from the start of the one before it. */
        c->msg_since = 0;
    }
    if (ev->rsv1) {
        on_compressed(w, c, ev);
        return;
    }
    if (ev->first && ev->last && c->endpoint == EP_HUB) {
        hub_message(w, c, ev->opcode, ev->data, ev->len);
        return;
    }
    if (ev->first && ev->last) {
        /* The whole message arrived in one read: encode straight from the
         * receive buffer, one copy. An echo is corked with the other
         * replies of this turn. */
        if (c->endpoint == EP_ECHO &&
            !(c->pmd && wsh_pmd_worth_compressing(&wsh_cfg.pmd, ev->len))) {
            if (!conn_send_direct(w, c, ev->opcode, ev->data, ev->len, ev->hdr_len))
                conn_send_frame(w, c, ev->opcode, ev->data, ev->len);
            return;
        }
        struct wsh_buf *f = frame_new(ev->opcode, ev->data, ev->len);
        if (f == NULL) {
            conn_close(w, c, WSH_CLOSE_INTERNAL, "out of memory");
            return;
        }
        deliver(w, c, f);
        return;
    }
    if (ev->first && !start_message(w, c, ev->len))
        return;
    if (c->msg == NULL || append(c, ev->data, ev->len) != WSH_OK) {
        conn_close(w, c, WSH_CLOSE_INTERNAL, "out of memory");
        return;
    }
    if (ev->last)
        deliver(w, c, finish_message(c, ev->opcode));
}

static size_t session_feed(struct worker *w, struct conn *c, uint8_t *in, size_t len);

/* Tracks when the data message in progress began (LIMITS.md message-progress
 * deadline): a frame declared large and then trickled in must not hold its
 * buffer forever. Checked on each heartbeat tick; without heartbeats the
 * timer is armed for the deadline itself. */
static void note_progress(struct worker *w, struct conn *c)
{
    if (wsh_parser_in_message(&c->parser) || c->msg != NULL) {
        if (c->msg_since == 0) {
            c->msg_since = wsh_stamp(wsh_loop_now(w->loop));
            if (wsh_cfg.ping_interval_ms == 0 && wsh_cfg.message_timeout_ms > 0)
                wsh_timer_start(w->loop, &c->timer, wsh_cfg.message_timeout_ms);
        }
    } else {
        c->msg_since = 0;
    }
}

size_t session_input(struct worker *w, struct conn *c, uint8_t *in, size_t len)
{
    size_t off = session_feed(w, c, in, len);
    if (c->state == CONN_OPEN)
        note_progress(w, c);
    return off;
}

static size_t session_feed(struct worker *w, struct conn *c, uint8_t *in, size_t len)
{
    size_t off = 0;
    /* A held connection (conn_hold) stops after the message that held it;
     * the rest stays in the carry. */
    while (off < len && c->state == CONN_OPEN && !c->hold) {
        struct wsh_event ev;
        struct wsh_limits buf;
        ssize_t n = wsh_parser_feed(&c->parser, msg_limits(c, &buf), in + off, len - off, &ev);
        if (n < 0) {
            unsigned code = c->parser.close_code ? c->parser.close_code : WSH_CLOSE_PROTOCOL;
            peer_fault(w, c, code, reason_for(code), (int)n);
            return len;
        }
        off += (size_t)n;
        switch (ev.type) {
        case WSH_EV_NONE:
            if (n == 0)
                return off;
            break;
        case WSH_EV_DATA:
            on_data(w, c, &ev);
            conn_hold_if_inbox_full(w, c);
            break;
        case WSH_EV_PING:
            /* RFC 6455 5.5.3: answer with a pong carrying the same data. */
            conn_send_frame(w, c, WSH_OP_PONG, ev.data, ev.len);
            break;
        case WSH_EV_PONG:
            if (c->flags & CF_PING_WAIT) {
                c->flags &= (uint8_t)~CF_PING_WAIT;
                wsh_timer_start(w->loop, &c->timer, wsh_cfg.ping_interval_ms);
            }
            break;
        case WSH_EV_CLOSE:
            /* Echo the peer's code (RFC 6455 5.5.1); no code is answered
             * with an empty close. */
            c->flags |= CF_CLOSE_RECVD;
            conn_close(w, c, ev.close_code, NULL);
            return len;
        }
    }
    return off;
}

void session_timer(struct worker *w, struct conn *c)
{
    uint32_t age = wsh_stamp_age(c->msg_since, wsh_stamp(wsh_loop_now(w->loop)));
    if (c->msg_since != 0 && wsh_cfg.message_timeout_ms > 0 && age >= wsh_cfg.message_timeout_ms) {
        wsh_log(WSH_LOG_DEBUG, "conn=%u ev=message_timeout", c->id);
        conn_close(w, c, WSH_CLOSE_POLICY, "message too slow");
        return;
    }
    if (wsh_cfg.ping_interval_ms == 0) {
        /* No heartbeat: armed only for a message's deadline. The message
         * it was armed for may have ended and another begun since. */
        if (c->msg_since != 0 && wsh_cfg.message_timeout_ms > 0)
            wsh_timer_start(w->loop, &c->timer, wsh_cfg.message_timeout_ms - age);
        return;
    }
    if (c->hold) {
        /* Input held while `connect` waits for keys or a publisher waits
         * for another worker's inbox (conn_hold): a pong could not be
         * read, so neither ping nor wait for one (a ping already out is
         * forgotten) until the hold ends, at most the unauthenticated
         * deadline or one inbox drain away. */
        c->flags &= (uint8_t)~CF_PING_WAIT;
        wsh_timer_start(w->loop, &c->timer, wsh_cfg.pong_timeout_ms);
        return;
    }
    if (c->flags & CF_PING_WAIT) {
        wsh_log(WSH_LOG_DEBUG, "conn=%u ev=pong_timeout", c->id);
        conn_close(w, c, WSH_CLOSE_INTERNAL, "keepalive timeout");
        return;
    }
    conn_send_frame(w, c, WSH_OP_PING, NULL, 0);
    if (c->state != CONN_OPEN)
        return;
    c->flags |= CF_PING_WAIT;
    wsh_timer_start(w->loop, &c->timer, wsh_cfg.pong_timeout_ms);
}
