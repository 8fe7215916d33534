/* Frame parser and writer, RFC 6455 section 5: base framing (5.2), masking
 * (5.3), fragmentation (5.4), control frames (5.5) and the receive-side
 * message rules of 5.6 and 8.1 (UTF-8 in text messages, checked as bytes
 * arrive). No I/O: bytes in, one event out per call. */
#include <string.h>

#include "bytes.h"
#include "wshub/ws.h"

enum { ST_HEADER = 0, ST_PAYLOAD, ST_CLOSED, ST_FAILED };

#define B0_FIN    0x80u
#define B0_RSV    0x70u
#define B0_RSV1   0x40u
#define B0_OPCODE 0x0Fu
#define B1_MASK   0x80u
#define B1_LEN    0x7Fu

void wsh_parser_init(struct wsh_parser *p, enum wsh_role role, uint8_t rsv_allowed)
{
    memset(p, 0, sizeof(*p));
    p->_state = ST_HEADER;
    p->_role = (uint8_t)role;
    p->_rsv_allowed = (uint8_t)(rsv_allowed & B0_RSV);
}

bool wsh_parser_in_message(const struct wsh_parser *p)
{
    return p->_msg_op != 0;
}

static int status_for(uint16_t close_code)
{
    switch (close_code) {
    case WSH_CLOSE_INVALID_DATA:
        return WSH_EUTF8;
    case WSH_CLOSE_TOO_BIG:
        return WSH_ETOOBIG;
    case WSH_CLOSE_POLICY:
        return WSH_EPOLICY;
    default:
        return WSH_EPROTO;
    }
}

static ssize_t fail(struct wsh_parser *p, uint16_t close_code)
{
    p->_state = ST_FAILED;
    p->close_code = close_code;
    return status_for(close_code);
}

static bool is_control(unsigned op)
{
    return (op & 0x8u) != 0;
}

/* Checks the first header byte. Every rule here depends on this byte and
 * on the parser state only, so the verdict is the same for any split of
 * the input. Returns 0 or a close code. */
static uint16_t check_byte0(const struct wsh_parser *p, unsigned b0)
{
    unsigned op = b0 & B0_OPCODE;
    unsigned rsv = b0 & B0_RSV;

    if ((rsv & ~(unsigned)p->_rsv_allowed) != 0)
        return WSH_CLOSE_PROTOCOL;
    switch (op) {
    case WSH_OP_CONT:
        if (p->_msg_op == 0)
            return WSH_CLOSE_PROTOCOL; /* 5.4: nothing to continue */
        /* RFC 7692 6: RSV1 marks a compressed message on its first frame
         * only. */
        if (rsv & B0_RSV1)
            return WSH_CLOSE_PROTOCOL;
        return 0;
    case WSH_OP_TEXT:
    case WSH_OP_BINARY:
        if (p->_msg_op != 0)
            return WSH_CLOSE_PROTOCOL; /* 5.4: no interleaved messages */
        return 0;
    case WSH_OP_CLOSE:
    case WSH_OP_PING:
    case WSH_OP_PONG:
        /* 5.5: control frames MUST NOT be fragmented; RFC 7692 6.1: RSV1
         * is never set on control frames. */
        if ((b0 & B0_FIN) == 0 || (rsv & B0_RSV1))
            return WSH_CLOSE_PROTOCOL;
        return 0;
    default:
        return WSH_CLOSE_PROTOCOL; /* 5.2: reserved opcodes */
    }
}

/* Validates a complete close payload (5.5.1, 7.4). Returns 0 or 1002. */
static uint16_t check_close(const uint8_t *d, size_t n, uint16_t *code)
{
    if (n == 0) {
        *code = WSH_CLOSE_NO_STATUS;
        return 0;
    }
    if (n == 1)
        return WSH_CLOSE_PROTOCOL;
    *code = (uint16_t)((unsigned)d[0] << 8 | d[1]);
    if (!wsh_close_code_valid(*code))
        return WSH_CLOSE_PROTOCOL;
    if (!wsh_utf8_valid(d + 2, n - 2))
        return WSH_CLOSE_PROTOCOL;
    return 0;
}

/* Delivers the next chunk of data-frame payload from in[0..len). */
static ssize_t feed_payload(struct wsh_parser *p, uint8_t *in, size_t len, size_t hdr,
                            struct wsh_event *ev)
{
    size_t n = len - hdr;
    if ((uint64_t)n > p->_remaining)
        n = (size_t)p->_remaining;
    if (n == 0 && p->_remaining != 0)
        return (ssize_t)hdr; /* header consumed, payload still to come */

    /* first: nothing of this message was delivered yet. _msg_len counts
     * declared bytes including this frame's, so delivered bytes are
     * _msg_len - _remaining. */
    bool first = p->_fragments == 1 && p->_msg_len == p->_remaining;
    uint8_t *data = in + hdr;
    bool ascii = false;
    if (p->_role == WSH_ROLE_SERVER) {
        /* Unmasking also tells whether the chunk is all ASCII, which
         * (between characters) is all the UTF-8 check needs to know. */
        ascii = wsh__bytes_xor(data, data, n, wsh__bytes_key8(p->_mask, p->_mask_off)) &&
                wsh_utf8_complete(&p->_utf8);
        p->_mask_off = (uint8_t)((p->_mask_off + n) & 3u);
    }
    p->_remaining -= n;
    bool frame_done = p->_remaining == 0;
    bool last = frame_done && p->_fin;

    if (p->_msg_op == WSH_OP_TEXT && !p->_msg_rsv1 && !ascii) {
        /* 8.1 and Autobahn 6.x: fail at the first impossible byte, before
         * the frame or message completes. A compressed message (RSV1,
         * RFC 7692) is not UTF-8 on the wire: its caller checks the
         * inflated bytes instead. */
        if (wsh_utf8_feed(&p->_utf8, data, n) != WSH_OK)
            return fail(p, WSH_CLOSE_INVALID_DATA);
        if (last && !wsh_utf8_complete(&p->_utf8))
            return fail(p, WSH_CLOSE_INVALID_DATA);
    }

    ev->type = WSH_EV_DATA;
    ev->opcode = p->_msg_op;
    ev->first = first;
    ev->last = last;
    ev->rsv1 = p->_msg_rsv1 != 0;
    ev->data = data;
    ev->len = n;
    ev->close_code = 0;
    ev->hdr_len = (uint8_t)hdr;

    if (frame_done) {
        p->_state = ST_HEADER;
        if (last) {
            p->_msg_op = 0;
            p->_msg_len = 0;
            p->_fragments = 0;
            p->_msg_rsv1 = 0;
            wsh_utf8_init(&p->_utf8);
        }
    }
    return (ssize_t)(hdr + n);
}

/* What a compressed (RSV1) message of at most max inflated bytes may take
 * on the wire: deflate grows what it cannot compress, by 5 bytes per
 * stored block of up to 64 KiB; max/64 + 256 covers that with room for the
 * block headers of many small flushes. The inflated size is the
 * inflater's to bound (wsh_pmd_inflate). */
static uint64_t zmax(uint64_t max)
{
    uint64_t grow = max / 64 + 256;
    return max > UINT64_MAX - grow ? UINT64_MAX : max + grow;
}

/* Parses a frame header at in[0..len); headers are consumed only when
 * complete, so this restarts from the first byte each time (at most 14
 * bytes). Rules are checked in byte order, so the first error is the same
 * for every split of the input. */
static ssize_t feed_header(struct wsh_parser *p, const struct wsh_limits *lim, uint8_t *in,
                           size_t len, struct wsh_event *ev)
{
    if (len == 0)
        return 0;
    unsigned b0 = in[0];
    uint16_t err = check_byte0(p, b0);
    if (err)
        return fail(p, err);
    if (len < 2)
        return 0;

    unsigned op = b0 & B0_OPCODE;
    unsigned b1 = in[1];
    bool masked = (b1 & B1_MASK) != 0;
    /* 5.1: a server MUST close on an unmasked frame, a client on a masked
     * one. */
    if (masked != (p->_role == WSH_ROLE_SERVER))
        return fail(p, WSH_CLOSE_PROTOCOL);
    uint64_t plen = b1 & B1_LEN;
    if (is_control(op) && plen > WSH_CONTROL_MAX)
        return fail(p, WSH_CLOSE_PROTOCOL);

    size_t hdr = 2;
    if (plen == 126) {
        if (len < 4)
            return 0;
        plen = (uint64_t)in[2] << 8 | in[3];
        hdr = 4;
        if (plen < 126)
            return fail(p, WSH_CLOSE_PROTOCOL); /* 5.2: minimal encoding */
    } else if (plen == 127) {
        /* 5.2: the most significant bit MUST be 0. Checked on the first
         * length byte, so a bad length fails before the rest arrives. */
        if (len < 3)
            return 0;
        if (in[2] & 0x80u)
            return fail(p, WSH_CLOSE_PROTOCOL);
        if (len < 10)
            return 0;
        plen = 0;
        for (size_t i = 2; i < 10; i++)
            plen = plen << 8 | in[i];
        hdr = 10;
        if (plen <= 0xFFFF)
            return fail(p, WSH_CLOSE_PROTOCOL);
    }

    if (!is_control(op)) {
        /* Limits are checked on the declared length, before any payload
         * is accepted (LIMITS.md; wslay does the same). */
        uint64_t max_msg = lim && lim->max_message ? lim->max_message : WSH_DEFAULT_MAX_MESSAGE;
        uint32_t max_frag =
            lim && lim->max_fragments ? lim->max_fragments : WSH_DEFAULT_MAX_FRAGMENTS;
        uint64_t so_far = op == WSH_OP_CONT ? p->_msg_len : 0;
        uint32_t frags = op == WSH_OP_CONT ? p->_fragments : 0;
        /* A sum, not max_msg - so_far, which wrapped when the limit was
         * lowered between a message's frames (a reload) under so_far. It
         * does not overflow: plen is under 2^63 (5.2) and so_far under
         * what can have been sent. Past max_msg, a compressed message
         * may still be within deflate's growth (zmax): the common path
         * is one comparison. */
        uint64_t total = so_far + plen;
        if (total > max_msg && !(total <= zmax(max_msg) &&
                                 (op == WSH_OP_CONT ? p->_msg_rsv1 != 0 : (b0 & B0_RSV1) != 0)))
            return fail(p, WSH_CLOSE_TOO_BIG);
        if (frags >= max_frag)
            return fail(p, WSH_CLOSE_POLICY);
    }

    if (masked) {
        if (len < hdr + 4)
            return 0;
        memcpy(p->_mask, in + hdr, 4);
        hdr += 4;
    }

    if (is_control(op)) {
        size_t n = (size_t)plen;
        if (len - hdr < n)
            return 0; /* control frames are delivered whole */
        uint8_t *data = in + hdr;
        if (masked)
            wsh_mask(data, n, p->_mask, 0);
        ev->opcode = (uint8_t)op;
        ev->data = data;
        ev->len = n;
        ev->first = ev->last = true;
        if (op == WSH_OP_CLOSE) {
            uint16_t code = 0;
            err = check_close(data, n, &code);
            if (err)
                return fail(p, err);
            ev->type = WSH_EV_CLOSE;
            ev->close_code = code;
            if (n >= 2) {
                ev->data += 2;
                ev->len -= 2;
            }
            p->_state = ST_CLOSED;
        } else {
            ev->type = op == WSH_OP_PING ? WSH_EV_PING : WSH_EV_PONG;
        }
        return (ssize_t)(hdr + n);
    }

    /* Data frame: commit the header. */
    if (op != WSH_OP_CONT) {
        p->_msg_op = (uint8_t)op;
        p->_msg_rsv1 = (uint8_t)((b0 & B0_RSV1) != 0);
        p->_msg_len = 0;
        p->_fragments = 0;
        wsh_utf8_init(&p->_utf8);
    }
    p->_fragments++;
    p->_msg_len += plen;
    p->_remaining = plen;
    p->_fin = (uint8_t)((b0 & B0_FIN) != 0);
    p->_mask_off = 0;
    p->_state = ST_PAYLOAD;
    return feed_payload(p, in, len, hdr, ev);
}

/* The common case in one pass: a whole text or binary message in one
 * frame (FIN, no RSV bit) with a 7- or 16-bit length, masked as our role
 * requires, all of it in the buffer, while no fragmented message is in
 * progress. It gets the verdict the general path would give (the same
 * checks in the same order, the same close codes), without the
 * bookkeeping a message that starts and ends in this call does not need:
 * at 32 bytes a message, that bookkeeping was half the parser's cost.
 * Returns 0 when the input is not such a frame: the general path takes
 * it. */
static ssize_t feed_whole(struct wsh_parser *p, const struct wsh_limits *lim, uint8_t *in,
                          size_t len, struct wsh_event *ev)
{
    if (len < 2 || p->_msg_op != 0)
        return 0;
    unsigned b0 = in[0], b1 = in[1];
    bool masked = p->_role == WSH_ROLE_SERVER;
    if ((b0 != (B0_FIN | WSH_OP_TEXT) && b0 != (B0_FIN | WSH_OP_BINARY)) ||
        ((b1 & B1_MASK) != 0) != masked)
        return 0;
    size_t plen = b1 & B1_LEN, hdr = 2;
    if (plen == 126) {
        if (len < 4)
            return 0;
        plen = (size_t)in[2] << 8 | in[3];
        hdr = 4;
        if (plen < 126)
            return 0; /* not minimal: the general path refuses it */
    } else if (plen == 127) {
        return 0;
    }
    uint64_t max_msg = lim && lim->max_message ? lim->max_message : WSH_DEFAULT_MAX_MESSAGE;
    size_t key_at = hdr;
    if (masked)
        hdr += 4;
    if (plen > max_msg || len < hdr || len - hdr < plen)
        return 0;
    uint8_t *data = in + hdr;
    bool ascii;
    if (masked) {
        uint8_t key[4];
        memcpy(key, in + key_at, 4);
        ascii = wsh__bytes_xor(data, data, plen, wsh__bytes_key8(key, 0));
    } else {
        ascii = b0 != (B0_FIN | WSH_OP_TEXT) || wsh__bytes_ascii_prefix(data, plen) == plen;
    }
    if (b0 == (B0_FIN | WSH_OP_TEXT) && !ascii && !wsh_utf8_valid(data, plen)) {
        *ev = (struct wsh_event){ .type = WSH_EV_NONE };
        return fail(p, WSH_CLOSE_INVALID_DATA);
    }
    *ev = (struct wsh_event){
        .type = WSH_EV_DATA,
        .opcode = (uint8_t)(b0 & B0_OPCODE),
        .first = true,
        .last = true,
        .data = data,
        .len = plen,
        .hdr_len = (uint8_t)hdr,
    };
    return (ssize_t)(hdr + plen);
}

ssize_t wsh_parser_feed(struct wsh_parser *p, const struct wsh_limits *lim, uint8_t *in, size_t len,
                        struct wsh_event *ev)
{
    if (p->_state == ST_HEADER) {
        ssize_t n = feed_whole(p, lim, in, len, ev);
        if (n != 0)
            return n;
    }
    /* Callers may look at every field, whatever the outcome. */
    *ev = (struct wsh_event){ .type = WSH_EV_NONE };
    switch (p->_state) {
    case ST_HEADER:
        return feed_header(p, lim, in, len, ev);
    case ST_PAYLOAD:
        return feed_payload(p, in, len, 0, ev);
    case ST_CLOSED:
        /* 5.5.1: after a close frame, nothing more is processed. */
        return (ssize_t)len;
    default:
        return status_for(p->close_code);
    }
}

/* ------------------------------------------------------------------ */
/* Writer                                                              */

size_t wsh_frame_header_size(uint64_t len, bool masked)
{
    size_t n = len < 126 ? 2 : len <= 0xFFFF ? 4 : 10;
    return n + (masked ? 4 : 0);
}

size_t wsh_frame_header_write(uint8_t *out, unsigned opcode, bool fin, bool rsv1, uint64_t len,
                              const uint8_t *mask)
{
    size_t n;
    out[0] = (uint8_t)((fin ? B0_FIN : 0) | (rsv1 ? B0_RSV1 : 0) | (opcode & B0_OPCODE));
    uint8_t mbit = mask != NULL ? B1_MASK : 0;
    if (len < 126) {
        out[1] = (uint8_t)(mbit | len);
        n = 2;
    } else if (len <= 0xFFFF) {
        out[1] = (uint8_t)(mbit | 126);
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        n = 4;
    } else {
        out[1] = (uint8_t)(mbit | 127);
        for (size_t i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        n = 10;
    }
    if (mask != NULL) {
        memcpy(out + n, mask, 4);
        n += 4;
    }
    return n;
}

void wsh_mask(uint8_t *data, size_t len, const uint8_t key[4], size_t offset)
{
    wsh__bytes_xor(data, data, len, wsh__bytes_key8(key, offset));
}

static size_t frame_count(unsigned opcode, size_t len, size_t frag_size)
{
    if (is_control(opcode) || frag_size == 0 || len <= frag_size)
        return 1;
    return (len + frag_size - 1) / frag_size;
}

size_t wsh_message_size(size_t len, size_t frag_size, bool masked)
{
    size_t frames = frame_count(WSH_OP_BINARY, len, frag_size);
    size_t total = len;
    if (frames == 1)
        return total + wsh_frame_header_size(len, masked);
    /* All frames but the last carry frag_size bytes. */
    size_t last = len - (frames - 1) * frag_size;
    total += (frames - 1) * wsh_frame_header_size(frag_size, masked);
    total += wsh_frame_header_size(last, masked);
    return total;
}

size_t wsh_message_write(uint8_t *out, unsigned opcode, bool rsv1, const uint8_t *payload,
                         size_t len, size_t frag_size, wsh_mask_key_cb *key_cb, void *user)
{
    size_t frames = frame_count(opcode, len, frag_size);
    size_t off = 0, w = 0;
    for (size_t f = 0; f < frames; f++) {
        size_t n = f + 1 < frames ? frag_size : len - off;
        uint8_t key[4];
        if (key_cb != NULL)
            key_cb(key, user);
        w += wsh_frame_header_write(out + w, f == 0 ? opcode : WSH_OP_CONT, f + 1 == frames,
                                    rsv1 && f == 0, n, key_cb != NULL ? key : NULL);
        /* Copy and mask in one pass over the payload. */
        if (key_cb != NULL)
            wsh__bytes_xor(out + w, payload + off, n, wsh__bytes_key8(key, 0));
        else if (n != 0)
            memcpy(out + w, payload + off, n);
        w += n;
        off += n;
    }
    return w;
}
