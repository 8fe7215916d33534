/* wshub permessage-deflate (RFC 7692), part of the sans-I/O protocol core.
 *
 * Negotiation (both roles) is pure string work. Compression state wraps
 * zlib, which is the one allocation this layer makes: streams are created
 * lazily on first use and, in a no_context_takeover direction, freed after
 * every message, so an idle connection holds no zlib memory unless context
 * takeover was agreed for that direction. docs/permessage-deflate.md has the
 * policy, defaults and memory figures. */
#ifndef WSHUB_PMD_H
#define WSHUB_PMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "status.h"
#include "ws.h"

/* ------------------------------------------------------------------ */
/* Parameters and policy                                               */

#define WSH_PMD_NAME "permessage-deflate"

/* Default policy (zero fields of struct wsh_pmd_config). */
#define WSH_PMD_DEFAULT_SERVER_WINDOW 15 /* our deflate window */
#define WSH_PMD_DEFAULT_CLIENT_WINDOW 10 /* our inflate window, LIMITS.md */
#define WSH_PMD_DEFAULT_LEVEL         6
#define WSH_PMD_DEFAULT_MEM_LEVEL     8
#define WSH_PMD_DEFAULT_MIN_SIZE      64

/* Inflated output is produced in chunks of at most this many bytes. */
#define WSH_PMD_CHUNK 16384

/* Longest value wsh_pmd_response_write() or wsh_pmd_client_offer() writes,
 * plus the NUL. */
#define WSH_PMD_HEADER_MAX 160

/* Agreed (or offered) parameters. Window bits are 8..15; 15 is also the
 * value of an absent parameter. */
struct wsh_pmd_params {
    bool server_no_context_takeover;
    bool client_no_context_takeover;
    uint8_t server_max_window_bits;
    uint8_t client_max_window_bits;
    /* Private: the offer carried server_max_window_bits, so the response
     * must carry it too (RFC 7692 7.1.2.1), even when it is 15. */
    bool _server_bits_echo;
};

/* Server policy and compression settings. Zero-filled is the default:
 * server_no_context_takeover always, our deflate window 15 bits, the
 * client's window (our inflate window) at most 10 bits, client context
 * takeover allowed. Memory per connection with these defaults: 0 while
 * idle; ~8 KiB (inflate, 10-bit window) held between messages once the
 * client has sent a compressed message with context takeover; ~256 KiB
 * (deflate, 15 bits, memLevel 8) only while one message is compressed. */
struct wsh_pmd_config {
    /* Cap on our deflate window, 8..15; 0 = 15. A client's smaller
     * server_max_window_bits wins. */
    uint8_t server_max_window_bits;
    /* Cap on the client's deflate window, which sizes our inflater, 8..15;
     * 0 = 10. Offers without client_max_window_bits are declined unless
     * this is 15, because we could not bound the client's window. */
    uint8_t client_max_window_bits;
    /* false (default): answer server_no_context_takeover to every offer. */
    bool server_context_takeover;
    /* true: require client_no_context_takeover in every answer, so no
     * inflater is ever held between messages. */
    bool client_no_context_takeover;
    int level;       /* deflate level 1..9; 0 = 6 */
    int mem_level;   /* zlib memLevel 1..9; 0 = 8 */
    size_t min_size; /* compress outgoing messages of at least this many
                        bytes; 0 = 64 (see wsh_pmd_worth_compressing) */
};

/* zlib memory, in bytes, for a deflater or inflater of a given window, by
 * the formulas in zlib's zconf.h: deflate (1 << (wbits + 2)) +
 * (1 << (mem_level + 9)); inflate (1 << wbits) + ~7 KiB. */
size_t wsh_pmd_deflate_memory(uint8_t window_bits, int mem_level);
size_t wsh_pmd_inflate_memory(uint8_t window_bits);

/* ------------------------------------------------------------------ */
/* Negotiation, server role                                            */

enum wsh_pmd_verdict {
    WSH_PMD_ACCEPT = 0,  /* *agreed is filled: answer with it */
    WSH_PMD_DECLINE = 1, /* valid but not for us (or another extension):
                            look at the next offer */
    WSH_PMD_INVALID = 2  /* malformed permessage-deflate offer */
};

/* Judges one offer, as ws.h's wsh_hs_extension_cb receives it (slices
 * borrowed for the call). cfg may be NULL for the defaults.
 * INVALID: an unknown parameter, a duplicate, a value on a valueless
 * parameter, server_max_window_bits without a value, or a window value
 * that is not exactly "8".."15" (no sign, no leading zero).
 * DECLINE: another extension name, or an offer without
 * client_max_window_bits while cfg caps the client window below 15.
 * ACCEPT otherwise: every window 8..15 and every no_context_takeover
 * combination is met (a requested 8-bit server window is served with
 * zlib's 9-bit deflater, whose streams fit an 8-bit window: see pmd.c). */
enum wsh_pmd_verdict wsh_pmd_server_offer(const struct wsh_pmd_config *cfg, struct wsh_slice name,
                                          const struct wsh_slice *param_names,
                                          const struct wsh_slice *param_values, size_t nparams,
                                          struct wsh_pmd_params *agreed);

/* State for wsh_pmd_hs_extension_cb. Set cfg (or NULL), zero the rest. */
struct wsh_pmd_pick {
    const struct wsh_pmd_config *cfg;
    bool accepted;                /* out: an offer was accepted */
    struct wsh_pmd_params params; /* out: valid when accepted */
};

/* A wsh_hs_extension_cb (user = struct wsh_pmd_pick *) implementing our
 * policy: the first acceptable offer wins and later ones are ignored;
 * unknown extensions and declined offers are skipped; an INVALID offer
 * returns false, which fails the handshake with 400. (RFC 7692 5 says a
 * server MUST decline such an offer; we refuse the handshake instead so a
 * broken client is found at once. Callers wanting the RFC's behaviour
 * call wsh_pmd_server_offer() themselves and treat INVALID as DECLINE.) */
bool wsh_pmd_hs_extension_cb(struct wsh_slice name, const struct wsh_slice *param_names,
                             const struct wsh_slice *param_values, size_t nparams, void *user);

/* Writes the Sec-WebSocket-Extensions response value for agreed params,
 * NUL-terminated, e.g. "permessage-deflate; server_no_context_takeover;
 * client_max_window_bits=10". Window parameters appear when below 15 (and
 * server_max_window_bits when the offer carried it). Returns the length
 * (without the NUL) or WSH_ENOSPC; WSH_PMD_HEADER_MAX always suffices. */
ssize_t wsh_pmd_response_write(char *out, size_t cap, const struct wsh_pmd_params *agreed);

/* ------------------------------------------------------------------ */
/* Negotiation, client role                                            */

/* Writes an offer value for want: client_max_window_bits always (bare when
 * 15: "we support it"), server_max_window_bits=N when N < 15, and each
 * no_context_takeover flag that is set. Returns the length or WSH_ENOSPC;
 * WSH_PMD_HEADER_MAX always suffices. WSH_EINVAL on windows outside 8..15. */
ssize_t wsh_pmd_client_offer(char *out, size_t cap, const struct wsh_pmd_params *want);

/* Validates the server's whole Sec-WebSocket-Extensions response value
 * (borrowed for the call) against what we offered. An empty value sets
 * *enabled = false and returns WSH_OK. Otherwise it must be exactly one
 * permessage-deflate element with valid, non-duplicate parameters;
 * server_max_window_bits must not exceed ours, and must be present when we
 * sent one; server_no_context_takeover must be present when we asked for it.
 * A client_max_window_bits above ours is tolerated (we keep ours).
 * Returns WSH_OK with *enabled = true and *agreed filled, or WSH_EPROTO:
 * the client must fail the connection (RFC 7692 5; close the socket, or
 * send 1010 if it already treats the connection as open). */
int wsh_pmd_client_check(const struct wsh_pmd_params *offered, struct wsh_slice value,
                         bool *enabled, struct wsh_pmd_params *agreed);

/* ------------------------------------------------------------------ */
/* Compression                                                         */

/* Receives output bytes, borrowed until it returns. Return WSH_OK to go
 * on, or a negative status to stop: the calling function returns it. */
typedef int wsh_pmd_write_cb(const uint8_t *p, size_t n, void *user);

/* Per-connection compression state; opaque, ~100 bytes plus zlib streams
 * while they exist. */
struct wsh_pmd;

/* Creates the state for role (which side WE are) and agreed params (copied).
 * cfg (may be NULL) supplies level and mem_level. No zlib stream is made
 * yet. Returns WSH_OK and sets *out, WSH_EINVAL on windows outside 8..15,
 * or WSH_ENOMEM; *out is untouched on failure. */
WSH_NODISCARD int wsh_pmd_create(enum wsh_role role, const struct wsh_pmd_params *agreed,
                                 const struct wsh_pmd_config *cfg, struct wsh_pmd **out);

/* Frees z and its streams. NULL is allowed. */
void wsh_pmd_destroy(struct wsh_pmd *z);

/* True when a message of len bytes should be sent compressed
 * (len >= cfg->min_size). */
bool wsh_pmd_worth_compressing(const struct wsh_pmd_config *cfg, size_t len);

/* Compresses one whole message for sending with RSV1 set. Output goes to cb
 * in pieces (not all at once); the trailing 00 00 ff ff is stripped (RFC
 * 7692 7.2.1) and an empty message becomes the single byte 0x00. With our
 * no_context_takeover the stream is freed before returning. Returns WSH_OK,
 * WSH_ENOMEM (z is unusable for sending: destroy it and close with 1011),
 * or a status returned by cb (the message is abandoned and, with context
 * takeover, z is unusable for sending). Must not be called from cb. */
WSH_NODISCARD int wsh_pmd_compress(struct wsh_pmd *z, const uint8_t *in, size_t len,
                                   wsh_pmd_write_cb *cb, void *user);

/* Stateless compression for fan-out: with no context takeover the output
 * depends only on (window_bits, level, mem_level) and the input, so a
 * publisher compresses once per distinct parameter set and shares the
 * bytes. Same output rules and returns as wsh_pmd_compress; level and
 * mem_level 0 take the defaults; WSH_EINVAL on window_bits outside 8..15.
 * Allocates and frees one deflater per call. */
WSH_NODISCARD int wsh_pmd_compress_oneshot(uint8_t window_bits, int level, int mem_level,
                                           const uint8_t *in, size_t len, wsh_pmd_write_cb *cb,
                                           void *user);

/* Feeds a chunk of a received compressed message (the payload of a DATA
 * event whose rsv1 is set, in order) and passes the inflated bytes to cb.
 * On the message's last chunk set last: the module appends 00 00 ff ff
 * (RFC 7692 7.2.2), checks that the message ends on a block boundary, and
 * frees the inflater when the peer uses no_context_takeover. lim->max_message
 * (NULL or 0 = WSH_DEFAULT_MAX_MESSAGE) bounds the INFLATED message; at most
 * max_message bytes reach cb, and at most max_message + 1 are inflated.
 * Errors (the object stays failed and returns the same code afterwards):
 *   WSH_ETOOBIG (1009) the message inflates past max_message: a bomb.
 *   WSH_EPROTO  (1002) corrupt deflate data,
 *               a message that does not end on a block boundary, or a
 *               distance beyond the agreed window. The last is caught
 *               when the reference reaches past both our window and the
 *               output of the current inflate() step (zlib resolves it
 *               from either), so whether a peer that overruns its agreed
 *               window is caught can depend on how its bytes were chunked.
 *   WSH_ENOMEM  (1011) zlib could not allocate.
 *   any status cb returned.
 * Text messages must still be UTF-8-checked on the inflated bytes. */
WSH_NODISCARD int wsh_pmd_inflate(struct wsh_pmd *z, const struct wsh_limits *lim,
                                  const uint8_t *in, size_t len, bool last, wsh_pmd_write_cb *cb,
                                  void *user);

/* zlib memory z holds right now, in bytes (estimate by the formulas
 * above): 0 when no stream is live. For metrics and tests. */
size_t wsh_pmd_memory(const struct wsh_pmd *z);

/* The window bits z deflates with: the key under which fan-out shares one
 * wsh_pmd_compress_oneshot() output among connections. */
uint8_t wsh_pmd_server_window_bits(const struct wsh_pmd *z);

#endif
