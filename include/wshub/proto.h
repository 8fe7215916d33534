/* wshub JSON envelope protocol codec (DESIGN.md 3, docs/protocol.md).
 *
 * Sans-I/O: the parser turns one client text message into a struct wsh_cmd,
 * and the encoders append one server message to a caller-owned growable
 * buffer. Nothing here reads a clock, a socket or a global: the time of
 * every server message comes in as `now_ms` (milliseconds since the Unix
 * epoch, UTC). Error codes carried in `error` replies are listed in
 * enum wsh_proto_code and in docs/protocol.md; they are a separate number
 * space from WebSocket close codes. */
#ifndef WSHUB_PROTO_H
#define WSHUB_PROTO_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* ------------------------------------------------------------------ */
/* Error codes of `error` replies (stable, documented)                 */

enum wsh_proto_code {
    /* 1xxx: the message itself is malformed. */
    WSH_PERR_BAD_JSON = 1000,     /* not JSON, invalid UTF-8, or not an object */
    WSH_PERR_UNKNOWN_TYPE = 1001, /* `type` names no command */
    WSH_PERR_BAD_FIELD = 1002,    /* a field is missing, has the wrong type or is out of range */
    WSH_PERR_TOO_DEEP = 1003,     /* nesting over the JSON depth limit */
    WSH_PERR_TOO_LARGE = 1004,    /* message over the size limit */
    /* 2xxx: authentication and permission. */
    WSH_PERR_UNAUTHORIZED = 2000,   /* no valid `connect` yet */
    WSH_PERR_BAD_TOKEN = 2001,      /* token malformed, bad signature or wrong alg */
    WSH_PERR_TOKEN_EXPIRED = 2002,  /* token `exp` in the past */
    WSH_PERR_FORBIDDEN = 2003,      /* channel not allowed by the token (subscribe, presence...) */
    WSH_PERR_PUBLISH_DENIED = 2004, /* publishing not allowed (claims or namespace) */
    WSH_PERR_ALREADY_CONNECTED = 2005,
    /* 3xxx: limits. */
    WSH_PERR_RATE_LIMITED = 3000,   /* publish/signal rate over the token bucket */
    WSH_PERR_TOO_MANY_SUBS = 3001,  /* over max_subscriptions per connection */
    WSH_PERR_CHANNEL_FULL = 3002,   /* over the namespace's max_subscribers */
    WSH_PERR_LIMIT_EXCEEDED = 3003, /* another configured limit (history limit...) */
    /* 40xx: channels and namespaces (never 41xx-49xx: no overlap with close codes). */
    WSH_PERR_BAD_CHANNEL = 4000,       /* channel name syntax */
    WSH_PERR_UNKNOWN_NAMESPACE = 4001, /* prefix before ':' is not configured */
    WSH_PERR_ALREADY_SUBSCRIBED = 4002,
    WSH_PERR_NOT_SUBSCRIBED = 4003,
    WSH_PERR_NOT_AVAILABLE = 4004, /* feature off in the namespace (history, presence, recover) */
    /* 5xxx: server side; the client may retry. */
    WSH_PERR_INTERNAL = 5000,
    WSH_PERR_UNAVAILABLE = 5001 /* broker unreachable: retry later */
};

/* Returns the default English message of a wsh_proto_code, or
 * "unknown error" for any other number. Never NULL; static storage. */
const char *wsh_proto_code_message(int code);

/* ------------------------------------------------------------------ */
/* Limits                                                              */

#define WSH_PROTO_DEFAULT_MAX_INPUT   65536u /* LIMITS.md max message */
#define WSH_PROTO_DEFAULT_MAX_DEPTH   32u
#define WSH_PROTO_DEFAULT_MAX_CHANNEL 128u
#define WSH_PROTO_DEFAULT_MAX_MSG_ID  64u
#define WSH_PROTO_DEFAULT_MAX_TOKEN   8192u
#define WSH_PROTO_DEFAULT_MAX_EPOCH   64u
#define WSH_PROTO_MAX_NAMESPACE       32u /* namespace part of a channel name */
#define WSH_PROTO_MAX_ID              ((int64_t)9007199254740991) /* 2^53 - 1 */
#define WSH_PROTO_NO_ID               ((int64_t)-1)

/* Every bound of the parser. Zero in a field means its default above. */
struct wsh_proto_limits {
    size_t max_input;   /* bytes of one message; over -> 1004 */
    unsigned max_depth; /* nesting of [ and {, the root object is 1; over -> 1003 */
    size_t max_channel; /* bytes of `channel`; over -> 4000 */
    size_t max_msg_id;  /* bytes of `msg_id`; over -> 1002 */
    size_t max_token;   /* bytes of `payload.token`; over -> 1002 */
    size_t max_epoch;   /* bytes of `payload.recover.epoch`; over -> 1002 */
};

/* ------------------------------------------------------------------ */
/* Channel names                                                       */

/* A channel name is `[namespace:]name[#user]`:
 *   namespace  1..32 bytes of [A-Za-z0-9_-]
 *   name       1+ bytes of [A-Za-z0-9_-.=@]
 *   user       1+ bytes of [A-Za-z0-9_-.=@] (personal channel: only that user)
 * and the whole name is 1..max_channel bytes. Slices point into the
 * caller's string, borrowed until it changes. */
struct wsh_channel {
    const char *ns; /* NULL when there is no ':' (the default namespace) */
    size_t ns_len;
    const char *name;
    size_t name_len;
    const char *user; /* NULL unless the name has a '#user' suffix */
    size_t user_len;
};

/* A `msg_id` the protocol takes: 1 to max bytes of printable ASCII
 * without space. The HTTP API checks its publishes with it too. */
bool wsh_proto_msg_id_ok(const char *s, size_t n, size_t max);

/* Splits and validates a channel name. max 0 means the default. Returns
 * true when valid; *out is written only then. Never reads past s[n). */
bool wsh_proto_channel_parse(const char *s, size_t n, size_t max, struct wsh_channel *out);

/* ------------------------------------------------------------------ */
/* Client commands                                                     */

enum wsh_cmd_type {
    WSH_CMD_NONE = 0,
    WSH_CMD_CONNECT,
    WSH_CMD_SUBSCRIBE,
    WSH_CMD_UNSUBSCRIBE,
    WSH_CMD_PUBLISH,
    WSH_CMD_PRESENCE,
    WSH_CMD_HISTORY,
    WSH_CMD_REFRESH,
    WSH_CMD_SIGNAL,
    WSH_CMD_READ
};

/* Returns the wire name of a command type ("subscribe"...), "" for NONE. */
const char *wsh_cmd_type_name(enum wsh_cmd_type t);

/* One parsed command. All pointers are borrowed: strings point into the
 * parsed JSON tree (valid until wsh_cmd_free), `payload_raw` points into
 * the caller's input buffer (valid until that buffer changes). Strings are
 * not NUL-terminated copies; use the lengths. */
struct wsh_cmd {
    enum wsh_cmd_type type;
    int64_t id; /* 0..2^53-1, or WSH_PROTO_NO_ID; echo it in the reply */

    const char *channel; /* NULL when the command has none */
    size_t channel_len;
    struct wsh_channel chan; /* channel split into its parts */

    const char *msg_id; /* publish only; NULL when absent */
    size_t msg_id_len;

    const char *token; /* connect (optional) and refresh (required) */
    size_t token_len;

    /* The `payload` member (publish, signal: required; any JSON value),
     * NULL when absent. Borrowed until wsh_cmd_free. */
    json_t *payload;
    /* The payload's JSON text inside the input, set only when it is
     * already compact (no whitespace outside strings), so it can be spliced
     * into a `message` push without re-encoding. Otherwise NULL: call
     * wsh_proto_payload_dump(). */
    const char *payload_raw;
    size_t payload_raw_len;

    bool has_recover; /* subscribe: payload.recover present */
    uint64_t recover_offset;
    const char *recover_epoch;
    size_t recover_epoch_len;

    bool has_since; /* history: payload.since */
    uint64_t since;
    bool has_limit; /* history: payload.limit */
    uint64_t limit;

    uint64_t offset; /* read: payload.offset (required) */

    json_t *_root;
};

/* Parses one client message (the text of one WebSocket text frame).
 * lim may be NULL for the defaults. The input is scanned once for its size
 * and nesting depth before jansson sees it, so an over-deep input costs
 * O(len) and no recursion. Duplicate object keys are rejected; unknown
 * members are ignored (forward compatibility).
 *
 * Returns:
 *   WSH_OK       *cmd is filled; release it with wsh_cmd_free().
 *   WSH_EPROTO   the message is invalid: *code is a 1xxx or 4000 code and
 *                *msg a static description naming the field. Reply `error`
 *                echoing cmd->id (set when the id itself was valid, else
 *                WSH_PROTO_NO_ID) and keep the connection open.
 *   WSH_ETOOBIG  over max_input (*code 1004) or max_depth (*code 1003).
 *   WSH_ENOMEM   out of memory (*code 5000).
 * On any failure nothing is left to free (wsh_cmd_free is harmless).
 * code and msg may be NULL. */
WSH_NODISCARD int wsh_proto_parse(const char *in, size_t len, const struct wsh_proto_limits *lim,
                                  struct wsh_cmd *cmd, int *code, const char **msg);

/* Whether in[0..len) nests at most max_depth arrays and objects deep,
 * told by the same linear pass wsh_proto_parse makes before jansson's
 * recursive parser runs (the HTTP API's bodies go through it too). */
bool wsh_proto_depth_ok(const char *in, size_t len, unsigned max_depth);

/* Releases the JSON tree held by cmd. Safe on a zeroed or failed cmd, and
 * twice. */
void wsh_cmd_free(struct wsh_cmd *cmd);

/* ------------------------------------------------------------------ */
/* Output buffer                                                       */

/* A growable byte buffer, zero-initialised or through wsh_jbuf_init. The
 * encoders append to it; reset len to 0 to reuse the memory. Growth
 * failure is sticky: the encoders then return WSH_ENOMEM and the content
 * is unspecified until wsh_jbuf_reset. */
struct wsh_jbuf {
    char *data; /* owned; free with wsh_jbuf_free */
    size_t len;
    size_t cap;
    bool _oom;
};

void wsh_jbuf_init(struct wsh_jbuf *b);
void wsh_jbuf_reset(struct wsh_jbuf *b); /* len = 0, clears the OOM flag, keeps memory */
void wsh_jbuf_free(struct wsh_jbuf *b);
/* Makes room for n more bytes. Returns WSH_OK or WSH_ENOMEM. */
WSH_NODISCARD int wsh_jbuf_reserve(struct wsh_jbuf *b, size_t n);
/* Detaches the bytes: returns data (caller frees) and leaves b empty. */
char *wsh_jbuf_take(struct wsh_jbuf *b, size_t *len);

/* Appends the payload of cmd as compact JSON text: payload_raw when set,
 * else jansson's compact encoding of cmd->payload, else `null`. Returns
 * WSH_OK or WSH_ENOMEM. */
WSH_NODISCARD int wsh_proto_payload_dump(const struct wsh_cmd *cmd, struct wsh_jbuf *b);

/* Appends `s` as a JSON string literal with quotes. Escapes `"`, `\` and
 * every byte below 0x20 (short forms where JSON has them, else \u00XX) and
 * 0x7f; valid UTF-8 passes through; each invalid UTF-8 byte becomes
 * \ufffd, so the output is always valid JSON. */
void wsh_proto_put_string(struct wsh_jbuf *b, const char *s, size_t n);

/* Writes `now_ms` as RFC 3339 UTC with milliseconds into out[24]
 * ("2026-11-22T05:09:22.621Z", no NUL). Negative times clamp to the
 * epoch. Returns 24. */
size_t wsh_proto_format_time(char *out, int64_t now_ms);

/* ------------------------------------------------------------------ */
/* Server messages                                                     */

/* Every encoder appends one complete JSON object to b and returns WSH_OK
 * or WSH_ENOMEM. Fields appear in a fixed order:
 *   {"type", "id"?, "channel"?, <type-specific top-level fields>,
 *    "payload", "timestamp"}
 * `id` is written when >= 0 (pass cmd->id, or WSH_PROTO_NO_ID). String
 * arguments are (pointer, length); a NULL pointer means JSON null or, where
 * documented, an omitted member. Arguments named *_json are JSON text
 * spliced verbatim: the caller guarantees they are valid JSON (NULL means
 * null). Nothing is retained after the call. */

/* {"type":"connected","id":1,"payload":{"client":"c1","user":"u","expires":1700000000},...}
 * expires is Unix seconds, 0 for no expiry (written as 0). */
WSH_NODISCARD int wsh_proto_encode_connected(struct wsh_jbuf *b, int64_t id, const char *client,
                                             size_t client_len, const char *user, size_t user_len,
                                             int64_t expires, int64_t now_ms);

/* payload {"offset":N,"epoch":"e","recovered":bool}. */
WSH_NODISCARD int wsh_proto_encode_subscribed(struct wsh_jbuf *b, int64_t id, const char *channel,
                                              size_t channel_len, uint64_t offset,
                                              const char *epoch, size_t epoch_len, bool recovered,
                                              int64_t now_ms);

/* payload {}. */
WSH_NODISCARD int wsh_proto_encode_unsubscribed(struct wsh_jbuf *b, int64_t id, const char *channel,
                                                size_t channel_len, int64_t now_ms);

/* payload {"offset":N}; channel NULL omits it. */
WSH_NODISCARD int wsh_proto_encode_ack(struct wsh_jbuf *b, int64_t id, const char *channel,
                                       size_t channel_len, uint64_t offset, int64_t now_ms);

struct wsh_presence_entry {
    const char *user;
    size_t user_len;
    const char *client;
    size_t client_len;
    const char *info_json; /* NULL -> null */
    size_t info_json_len;
};

/* payload {"count":N,"clients":[{"user","client","info"},...]}. With
 * entries NULL (a channel over presence_count_threshold) only "count". */
WSH_NODISCARD int wsh_proto_encode_presence(struct wsh_jbuf *b, int64_t id, const char *channel,
                                            size_t channel_len, uint64_t count,
                                            const struct wsh_presence_entry *entries, size_t n,
                                            int64_t now_ms);

struct wsh_history_entry {
    uint64_t offset;
    const char *from; /* NULL -> null */
    size_t from_len;
    const char *payload_json; /* NULL -> null */
    size_t payload_json_len;
    int64_t time_ms; /* publish time, written as "timestamp" */
};

/* payload {"offset":latest,"epoch":"e","messages":[{"offset","from","payload","timestamp"},...]}.
 */
WSH_NODISCARD int wsh_proto_encode_history(struct wsh_jbuf *b, int64_t id, const char *channel,
                                           size_t channel_len, uint64_t offset, const char *epoch,
                                           size_t epoch_len, const struct wsh_history_entry *msgs,
                                           size_t n, int64_t now_ms);

/* payload {"expires":unix_seconds}. */
WSH_NODISCARD int wsh_proto_encode_refreshed(struct wsh_jbuf *b, int64_t id, int64_t expires,
                                             int64_t now_ms);

/* payload {"code":N,"message":"..."}; message NULL uses
 * wsh_proto_code_message(code). channel NULL omits it. */
WSH_NODISCARD int wsh_proto_encode_error(struct wsh_jbuf *b, int64_t id, const char *channel,
                                         size_t channel_len, int code, const char *message,
                                         int64_t now_ms);

/* Push: {"type":"message","channel","offset","epoch","from","payload","timestamp"}.
 * The fan-out path: one pass, no allocation beyond the buffer's growth. */
WSH_NODISCARD int wsh_proto_encode_message(struct wsh_jbuf *b, const char *channel,
                                           size_t channel_len, uint64_t offset, const char *epoch,
                                           size_t epoch_len, const char *from, size_t from_len,
                                           const char *payload_json, size_t payload_json_len,
                                           int64_t now_ms);

/* Push: {"type":"signal","channel","from","payload","timestamp"} (ephemeral). */
WSH_NODISCARD int wsh_proto_encode_signal(struct wsh_jbuf *b, const char *channel,
                                          size_t channel_len, const char *from, size_t from_len,
                                          const char *payload_json, size_t payload_json_len,
                                          int64_t now_ms);

/* Push: join or leave, payload {"user","client","info"}. */
WSH_NODISCARD int wsh_proto_encode_join(struct wsh_jbuf *b, bool leave, const char *channel,
                                        size_t channel_len, const struct wsh_presence_entry *who,
                                        int64_t now_ms);

/* Push: {"type":"read","channel",payload {"user","offset"}}. */
WSH_NODISCARD int wsh_proto_encode_read(struct wsh_jbuf *b, const char *channel, size_t channel_len,
                                        const char *user, size_t user_len, uint64_t offset,
                                        int64_t now_ms);

/* Push: payload {"expires":unix_seconds}. */
WSH_NODISCARD int wsh_proto_encode_refresh_required(struct wsh_jbuf *b, int64_t expires,
                                                    int64_t now_ms);

/* Push: payload {"from_offset":N,"epoch":"e"}. */
WSH_NODISCARD int wsh_proto_encode_lagged(struct wsh_jbuf *b, const char *channel,
                                          size_t channel_len, uint64_t from_offset,
                                          const char *epoch, size_t epoch_len, int64_t now_ms);

/* Push, sent before the close frame: payload {"code","reason","reconnect","retry_after_ms"}. */
WSH_NODISCARD int wsh_proto_encode_disconnect(struct wsh_jbuf *b, unsigned code, const char *reason,
                                              size_t reason_len, bool reconnect,
                                              uint64_t retry_after_ms, int64_t now_ms);

#endif
