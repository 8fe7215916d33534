/* wshub protocol core: RFC 6455 without I/O.
 *
 * Bytes in, events and bytes out. Nothing here touches a socket, a clock or
 * the heap: every buffer belongs to the caller. Both roles (server and
 * client) are supported. Codec state lives in public structs whose fields
 * starting with '_' are private; zero them or call the init function. */
#ifndef WSHUB_WS_H
#define WSHUB_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "status.h"

/* ------------------------------------------------------------------ */
/* Constants                                                           */

enum wsh_opcode {
    WSH_OP_CONT = 0x0,
    WSH_OP_TEXT = 0x1,
    WSH_OP_BINARY = 0x2,
    WSH_OP_CLOSE = 0x8,
    WSH_OP_PING = 0x9,
    WSH_OP_PONG = 0xA
};

enum wsh_role { WSH_ROLE_SERVER = 0, WSH_ROLE_CLIENT = 1 };

/* Close codes we send (RFC 6455 7.4.1, IANA registry, LIMITS.md). */
#define WSH_CLOSE_NORMAL       1000
#define WSH_CLOSE_GOING_AWAY   1001
#define WSH_CLOSE_PROTOCOL     1002
#define WSH_CLOSE_UNSUPPORTED  1003
#define WSH_CLOSE_NO_STATUS    1005 /* never sent: "no code in the close frame" */
#define WSH_CLOSE_ABNORMAL     1006 /* never sent */
#define WSH_CLOSE_INVALID_DATA 1007
#define WSH_CLOSE_POLICY       1008
#define WSH_CLOSE_TOO_BIG      1009
#define WSH_CLOSE_INTERNAL     1011
#define WSH_CLOSE_RESTART      1012
#define WSH_CLOSE_TRY_LATER    1013

#define WSH_FRAME_HDR_MAX    14  /* 2 + 8 (64-bit length) + 4 (mask) */
#define WSH_CONTROL_MAX      125 /* RFC 6455 5.5 */
#define WSH_CLOSE_REASON_MAX 123

/* Bounds checked by the parser. Zero fields take the documented default. */
struct wsh_limits {
    /* Bytes in one message, all fragments; default 65536. A compressed
     * (RSV1) message may take max_message/64 + 256 more on the wire
     * (deflate's growth on what it cannot compress); its inflated size is
     * bounded by wsh_pmd_inflate. */
    uint64_t max_message;
    uint32_t max_fragments; /* frames in one data message; default 1024 */
};

#define WSH_DEFAULT_MAX_MESSAGE   65536u
#define WSH_DEFAULT_MAX_FRAGMENTS 1024u

/* ------------------------------------------------------------------ */
/* UTF-8 validation (RFC 3629), incremental                            */

/* Validator state; zero-filled is the initial state. 4 bytes. */
struct wsh_utf8 {
    uint32_t _state;
};

void wsh_utf8_init(struct wsh_utf8 *u);

/* Feeds n bytes. Returns WSH_OK if every byte so far can still be part of
 * valid UTF-8 (a sequence may be open at the end), or WSH_EUTF8 at the first
 * byte that makes the input invalid: overlongs, surrogates, > U+10FFFF,
 * stray continuation bytes, 0xC0/0xC1/0xF5..0xFF. After WSH_EUTF8 the state
 * stays failed until wsh_utf8_init(). */
int wsh_utf8_feed(struct wsh_utf8 *u, const uint8_t *p, size_t n);

/* True when no multi-byte sequence is open and nothing failed. */
bool wsh_utf8_complete(const struct wsh_utf8 *u);

/* Whole-buffer check: true when p[0..n) is complete, valid UTF-8. */
bool wsh_utf8_valid(const uint8_t *p, size_t n);

/* ------------------------------------------------------------------ */
/* Frame parser (receive side): frames and message-level rules          */

enum wsh_event_type {
    WSH_EV_NONE = 0, /* nothing yet: keep the unconsumed bytes, feed more */
    WSH_EV_DATA,     /* a chunk of a text or binary message */
    WSH_EV_PING,
    WSH_EV_PONG,
    WSH_EV_CLOSE
};

struct wsh_event {
    enum wsh_event_type type;
    uint8_t opcode; /* DATA: WSH_OP_TEXT or WSH_OP_BINARY of the whole message */
    bool first;     /* DATA: first chunk of the message */
    bool last;      /* DATA: the message is complete after this chunk */
    bool rsv1;      /* DATA: RSV1 was set on the message's first frame */
    /* DATA, PING, PONG: payload chunk, already unmasked, pointing into the
     * caller's input buffer: borrowed until the next call. CLOSE: the
     * reason (valid UTF-8). len may be 0. */
    uint8_t *data;
    size_t len;
    /* CLOSE: the code received, or 1005 when the frame had no payload. */
    uint16_t close_code;
    /* DATA: how many bytes of this frame's header lie directly before data
     * in the caller's buffer (2..14), or 0 when the header came in an
     * earlier call. The parser is done with them: a server echoing a
     * whole message may write its own header there and send one
     * contiguous run. */
    uint8_t hdr_len;
};

/* Parser state, ~40 bytes, embeddable. Zero it, then wsh_parser_init(). */
struct wsh_parser {
    uint64_t _remaining; /* payload bytes left in the current data frame */
    uint64_t _msg_len;   /* bytes of the current message so far, declared */
    uint32_t _fragments; /* frames of the current message so far */
    struct wsh_utf8 _utf8;
    uint8_t _mask[4];
    uint8_t _mask_off;
    uint8_t _state;  /* private: header, payload, closed, failed */
    uint8_t _msg_op; /* opcode of the message in progress, 0 when none */
    uint8_t _fin;    /* FIN bit of the current data frame */
    uint8_t _role;
    uint8_t _rsv_allowed; /* RSV bits a negotiated extension allows (0x40 = RSV1) */
    uint8_t _msg_rsv1;
    /* Set when feed returns a peer fault: the close code to send. */
    uint16_t close_code;
};

/* role: which side WE are. A server requires masked frames from the peer
 * and a client requires unmasked ones (RFC 6455 5.1). rsv_allowed is 0
 * unless an extension (permessage-deflate: 0x40) was negotiated. */
void wsh_parser_init(struct wsh_parser *p, enum wsh_role role, uint8_t rsv_allowed);

/* Feeds received bytes. The buffer is writable because payloads are
 * unmasked in place. Returns the number of bytes consumed (0..len) and
 * fills *ev with at most one event; bytes not consumed must be presented
 * again, followed by more input, on the next call. A return of 0 with
 * ev->type == WSH_EV_NONE means "incomplete: feed more". Frame headers and
 * whole control frames (at most WSH_FRAME_HDR_MAX + 125 bytes) are only
 * consumed when complete; data payloads are delivered in chunks as they
 * arrive, so any split of the input gives the same message bytes.
 *
 * Errors (negative; p->close_code says what to send, and every later call
 * returns the same error):
 *   WSH_EPROTO  (1002) reserved bits, unknown opcode, bad masking for the
 *               role, control frame > 125 bytes or fragmented, 64-bit length
 *               with bit 63 set, non-minimal length encoding, continuation
 *               without a start, a new data frame inside a fragmented
 *               message, a 1-byte close payload, an invalid close code, or
 *               a close reason that is not valid UTF-8.
 *   WSH_EUTF8   (1007) a text message is not valid UTF-8: reported at the
 *               first bad byte, even mid-frame, or at the end of the
 *               message when a sequence is left open. Not checked for a
 *               compressed message (RSV1): the caller validates the
 *               inflated text.
 *   WSH_ETOOBIG (1009) declared message length over lim->max_message,
 *               checked before any payload byte is accepted.
 *   WSH_EPOLICY (1008) more than lim->max_fragments frames in one message.
 * After a CLOSE event the parser is closed: further calls consume all input
 * and report WSH_EV_NONE. */
ssize_t wsh_parser_feed(struct wsh_parser *p, const struct wsh_limits *lim, uint8_t *in, size_t len,
                        struct wsh_event *ev);

/* True while a fragmented data message is in progress. */
bool wsh_parser_in_message(const struct wsh_parser *p);

/* ------------------------------------------------------------------ */
/* Frame writer (send side)                                            */

/* Size of a frame header for a payload of len bytes, masked or not. */
size_t wsh_frame_header_size(uint64_t len, bool masked);

/* Writes a frame header (2..14 bytes) into out, which must hold
 * WSH_FRAME_HDR_MAX bytes. mask is NULL for an unmasked frame (server role)
 * or the 4-byte key. len must be < 2^63. Returns the header length. The
 * payload is NOT masked: use wsh_mask() on it. */
size_t wsh_frame_header_write(uint8_t *out, unsigned opcode, bool fin, bool rsv1, uint64_t len,
                              const uint8_t *mask);

/* XORs data with the key, starting at key byte (offset % 4). Works a
 * machine word (or wider) at a time. Applying it twice restores the data. */
void wsh_mask(uint8_t *data, size_t len, const uint8_t key[4], size_t offset);

/* Called by the writer to get a fresh masking key per frame (client role,
 * RFC 6455 5.3: unpredictable). The core has no randomness of its own. */
typedef void wsh_mask_key_cb(uint8_t key[4], void *user);

/* Bytes needed to encode a message of len bytes as frames of at most
 * frag_size payload bytes each (frag_size 0 = one frame). */
size_t wsh_message_size(size_t len, size_t frag_size, bool masked);

/* Encodes a whole message (text, binary, or a control frame when len <=
 * 125) into out, which must hold wsh_message_size() bytes, splitting it into
 * frames of at most frag_size bytes (0 = one frame); continuation frames
 * follow the first. key_cb is NULL for unmasked frames (server role); for a
 * client it is called once per frame. Returns the bytes written. */
size_t wsh_message_write(uint8_t *out, unsigned opcode, bool rsv1, const uint8_t *payload,
                         size_t len, size_t frag_size, wsh_mask_key_cb *key_cb, void *user);

/* ------------------------------------------------------------------ */
/* Close frames (RFC 6455 5.5.1, 7.4)                                  */

/* True when code may appear in a close frame on the wire: 1000-1003,
 * 1007-1014, 3000-4999. 1004-1006, 1015, < 1000, 1016-2999 and >= 5000 are
 * invalid. */
bool wsh_close_code_valid(unsigned code);

/* Writes a close payload (2-byte code + reason) into out, which must hold
 * WSH_CONTROL_MAX bytes. The reason is truncated to 123 bytes at a UTF-8
 * character boundary. code 0 writes an empty payload. Returns its length. */
size_t wsh_close_payload(uint8_t *out, unsigned code, const char *reason, size_t reason_len);

/* ------------------------------------------------------------------ */
/* Opening handshake (RFC 6455 4)                                      */

struct wsh_slice {
    const char *p;
    size_t n;
};

struct wsh_hs_header {
    struct wsh_slice name, value;
};

/* A parsed HTTP request head, as the HTTP layer produced it (borrowed). */
struct wsh_hs_request {
    struct wsh_slice method, target;
    int minor_version; /* 1 for HTTP/1.1 */
    const struct wsh_hs_header *headers;
    size_t nheaders;
};

/* Called once per offered subprotocol, in the client's order; return true
 * to select it (the first true wins). */
typedef bool wsh_hs_protocol_cb(const char *proto, size_t len, void *user);

/* Called once per offered extension with its parameters in
 * "name[=value]" slices. Return false to reject the header (400). */
typedef bool wsh_hs_extension_cb(struct wsh_slice name, const struct wsh_slice *param_names,
                                 const struct wsh_slice *param_values, size_t nparams, void *user);

#define WSH_HS_ACCEPT_LEN 28 /* base64 of a SHA-1 digest */
#define WSH_HS_KEY_LEN    24 /* base64 of 16 bytes */

struct wsh_hs_result {
    int status;        /* 101 on success, else the HTTP status to answer */
    const char *error; /* static text for the error response, or NULL */
    char accept[WSH_HS_ACCEPT_LEN + 1];
    struct wsh_slice protocol;   /* selected subprotocol, n == 0 when none */
    struct wsh_slice host;       /* Host header value */
    struct wsh_slice origin;     /* Origin header value, n == 0 when absent */
    struct wsh_slice extensions; /* last Sec-WebSocket-Extensions value */
};

/* Computes Sec-WebSocket-Accept for a key (RFC 6455 4.2.2: SHA-1 of key +
 * the GUID, base64). out gets 28 characters and a NUL. Returns WSH_OK, or
 * WSH_ENOMEM when OpenSSL could not allocate (out is then ""). */
int wsh_hs_accept(const char *key, size_t key_len, char out[WSH_HS_ACCEPT_LEN + 1]);

/* Validates an upgrade request (server role). Checks, in order: method GET
 * (405), HTTP/1.1 or later (400), Host present once (400), Upgrade token list
 * contains "websocket" and Connection contains "upgrade", both
 * case-insensitive (400), Sec-WebSocket-Version 13 (426, with
 * "Sec-WebSocket-Version: 13" in the response), Sec-WebSocket-Key present once
 * and exactly 16 bytes of base64 (400), extension header syntax (400), in
 * time linear in the header size. proto_cb and ext_cb may be NULL. Returns
 * WSH_OK with res->status 101, or WSH_EPROTO with res->status and
 * res->error set (503 when the accept key could not be computed for lack
 * of memory). */
int wsh_hs_server_check(const struct wsh_hs_request *req, wsh_hs_protocol_cb *proto_cb,
                        wsh_hs_extension_cb *ext_cb, void *user, struct wsh_hs_result *res);

/* Writes the 101 response for a successful check into out, with
 * ext_response (may be NULL) as the Sec-WebSocket-Extensions value. Returns
 * the length, or WSH_ENOSPC when cap is too small. */
ssize_t wsh_hs_server_response(char *out, size_t cap, const struct wsh_hs_result *res,
                               const char *ext_response);

/* Writes an error response (status line, Content-Length, Connection:
 * close, and for 426 the Sec-WebSocket-Version header; for 405 Allow: GET;
 * for 401 WWW-Authenticate: Bearer, the upgrade's token scheme) with a
 * short text body. Returns the length or WSH_ENOSPC. */
ssize_t wsh_hs_error_response(char *out, size_t cap, int status, const char *error);

/* Reason phrase for an HTTP status ("Bad Request"), "Unknown" if unknown. */
const char *wsh_http_reason(int status);

/* Client role: base64 of a 16-byte nonce the caller drew from a strong
 * random source. out gets 24 characters and a NUL. */
void wsh_hs_client_key(const uint8_t nonce[16], char out[WSH_HS_KEY_LEN + 1]);

/* Client role: writes the upgrade request. protocols and extensions may be
 * NULL (comma-separated values otherwise). Returns the length or
 * WSH_ENOSPC. */
ssize_t wsh_hs_client_request(char *out, size_t cap, const char *host, const char *path,
                              const char *key, const char *protocols, const char *extensions);

struct wsh_hs_client_result {
    int status;                  /* HTTP status received */
    struct wsh_slice protocol;   /* Sec-WebSocket-Protocol, points into buf */
    struct wsh_slice extensions; /* Sec-WebSocket-Extensions, points into buf */
};

/* Client role: parses the server's response head in buf[0..len). Returns
 * the head length (> 0) when complete and valid: status 101, Upgrade
 * websocket, Connection upgrade, and Sec-WebSocket-Accept matching key.
 * Returns 0 when the head is incomplete, WSH_ETOOBIG when no end was found
 * within 8 KiB, WSH_EPROTO when it is malformed or refused (res->status
 * holds the status when one was read), or WSH_ENOMEM when the expected
 * accept key could not be computed. */
ssize_t wsh_hs_client_parse_response(const char *buf, size_t len, const char *key,
                                     struct wsh_hs_client_result *res);

#endif
