/* wshub broker: the engine-neutral interface behind channels (DESIGN.md 4, 7).
 *
 * A broker assigns each accepted publish its channel offset, keeps history
 * (size and TTL bounded), de-duplicates retried publishes by msg_id, answers
 * recovery, holds presence and read cursors, and hands every accepted
 * message to the node's fan-out through on_message. It never touches a
 * socket: fan-out to connections happens outside it.
 *
 * Two engines implement struct wsh_broker_ops: `memory` (this library, one
 * node) and later `redis` (many nodes, hiredis async). Because a remote
 * engine answers later, every operation is a request with a completion
 * callback. The rules every engine follows:
 *
 *  - A call returns WSH_OK when the request was accepted; its callback then
 *    runs exactly once. A call that returns an error never runs it. cb may
 *    be NULL where noted (fire and forget).
 *  - The memory engine runs the callback INSIDE the call, on the calling
 *    thread, before the call returns, with no broker lock held (so the
 *    callback may call the broker again). A remote engine runs it later on
 *    its own loop. Callers that must work with both write the continuation
 *    in the callback and never assume which happened.
 *  - Everything a result points to is borrowed until the callback returns:
 *    copy or encode what you need inside it.
 *  - Every function is safe to call from any thread.
 *  - Strings named channel, msg_id, from, client and user are NUL-terminated,
 *    copied by the broker when it keeps them, and at most
 *    WSH_BROKER_NAME_MAX bytes (else WSH_EINVAL). Payloads and presence info
 *    are byte ranges (already-encoded JSON text), copied when kept.
 *  - Times are caller-supplied milliseconds (now_ms, wall clock since the
 *    Unix epoch). The broker has no timers: TTLs are applied lazily on access
 *    and by wsh_broker_sweep(), which the server calls periodically.
 */
#ifndef WSHUB_BROKER_H
#define WSHUB_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* Longest channel, msg_id, user or client id, in bytes (without the NUL). */
#define WSH_BROKER_NAME_MAX 255u
/* An epoch is rendered as 16 lower-case hex digits (64 random bits). */
#define WSH_BROKER_EPOCH_LEN 16u

/* Memory-engine defaults (docs/broker.md says why). */
#define WSH_BROKER_DEFAULT_MAX_PAYLOAD  (64u * 1024u) /* LIMITS.md max message */
#define WSH_BROKER_DEFAULT_DEDUP_MAX    10000u        /* msg_ids kept per channel */
#define WSH_BROKER_DEFAULT_PRESENCE_MAX 100000u       /* presence entries per channel */
#define WSH_BROKER_DEFAULT_READERS_MAX  100000u       /* read cursors per channel */

struct wsh_broker; /* opaque */

enum wsh_broker_op {
    WSH_BROKER_OP_PUBLISH = 1,
    WSH_BROKER_OP_HISTORY,
    WSH_BROKER_OP_RECOVER,
    WSH_BROKER_OP_SUBSCRIBE,
    WSH_BROKER_OP_UNSUBSCRIBE,
    WSH_BROKER_OP_PRESENCE_ADD,
    WSH_BROKER_OP_PRESENCE_REMOVE,
    WSH_BROKER_OP_PRESENCE_LIST,
    WSH_BROKER_OP_PRESENCE_COUNT,
    WSH_BROKER_OP_READ_SET,
    WSH_BROKER_OP_READ_GET,
    WSH_BROKER_OP_CHANNEL_STATS,
    WSH_BROKER_OP_INFO
};

/* Per-publish channel options; the hub takes them from the namespace. */
struct wsh_broker_publish_opts {
    uint32_t history_size;    /* messages kept; 0 = no history (offsets still advance) */
    uint64_t history_ttl_ms;  /* 0 = messages never expire by time */
    uint64_t dedup_window_ms; /* 0 = no de-duplication by msg_id */
};

struct wsh_broker_publish_req {
    const char *channel;
    const char *payload; /* JSON text of the payload, payload_len bytes */
    size_t payload_len;
    const char *msg_id; /* NULL: no de-duplication for this publish */
    const char *from;   /* user id; NULL for server-side publishes */
    int64_t now_ms;
    struct wsh_broker_publish_opts opts;
};

struct wsh_broker_history_req {
    const char *channel;
    bool has_since; /* false: the newest `limit` messages */
    uint64_t since; /* with has_since: messages with offset > since */
    size_t limit;   /* 0 = everything retained */
    int64_t now_ms;
};

/* One message as history, recover and on_message report it. */
struct wsh_broker_msg {
    uint64_t offset;
    int64_t time_ms; /* now_ms of the publish */
    const char *payload;
    size_t payload_len;
    const char *from; /* "" for server-side publishes */
};

struct wsh_broker_member {
    const char *client;
    const char *user;
    const char *info; /* JSON text, info_len bytes; "" when none */
    size_t info_len;
};

struct wsh_broker_channel_stats {
    bool exists; /* false: no state; every other field is zero */
    uint64_t offset;
    size_t history_len;   /* messages retained (after TTL trimming) */
    size_t history_bytes; /* payload + from bytes retained */
    size_t subscribers;   /* node subscriptions (wsh_broker_subscribe count) */
    size_t presence;
    size_t readers;   /* read cursors */
    size_t dedup_ids; /* msg_ids in the de-dup window */
};

struct wsh_broker_info {
    const char *engine;        /* "memory", "redis" */
    size_t channels;           /* channels with state now */
    size_t subscriptions;      /* sum of subscribers over channels */
    size_t presence;           /* presence entries over channels */
    size_t history_messages;   /* messages retained over channels */
    size_t history_bytes;      /* their payload + from bytes */
    uint64_t published;        /* publishes accepted since start */
    uint64_t duplicates;       /* publishes answered as duplicates */
    uint64_t channels_freed;   /* channel states dropped by sweep */
    uint64_t channels_refused; /* new channel states refused over max_channels */
    uint64_t history_evicted;  /* messages dropped to stay under max_history_memory */
    size_t history_memory;     /* what max_history_memory bounds (see there) */
};

/* The result of one request. op says which fields are meaningful:
 *
 *  PUBLISH          epoch, offset (the message's; the ORIGINAL one when
 *                   duplicate), duplicate.
 *  HISTORY          epoch, offset (the channel's newest), msgs/nmsgs in
 *                   offset order.
 *  RECOVER          epoch and offset (current), recovered, msgs/nmsgs (the
 *                   messages after the client's offset; none unless
 *                   recovered).
 *  SUBSCRIBE        epoch, offset (current), changed (the node's first
 *                   subscription to the channel).
 *  UNSUBSCRIBE      changed (the node's last subscription went away).
 *  PRESENCE_ADD     changed (a new entry; false: an existing client's entry
 *                   was replaced), count (entries now).
 *  PRESENCE_REMOVE  changed (the entry existed), count.
 *  PRESENCE_LIST    members/nmembers, count.
 *  PRESENCE_COUNT   count.
 *  READ_SET         read_offset (the user's cursor now), changed (advanced).
 *  READ_GET         read_offset (0 when the user has none).
 *  CHANNEL_STATS    epoch, offset, stats.
 *  INFO             info.
 *
 * epoch is "" when the channel has no state (never published to, or
 * dropped); the next publish or subscribe creates it with a fresh epoch.
 * All pointers are borrowed until the callback returns. */
struct wsh_broker_result {
    enum wsh_broker_op op;
    int status; /* WSH_OK; a remote engine may report a failure here */
    const char *channel;
    char epoch[WSH_BROKER_EPOCH_LEN + 1];
    uint64_t offset;
    bool duplicate;
    bool recovered;
    bool changed;
    uint64_t read_offset;
    size_t count;
    const struct wsh_broker_msg *msgs;
    size_t nmsgs;
    const struct wsh_broker_member *members;
    size_t nmembers;
    const struct wsh_broker_channel_stats *stats;
    const struct wsh_broker_info *info;
};

typedef void wsh_broker_cb(const struct wsh_broker_result *r, void *user);

/* Delivery of an accepted (non-duplicate) publish to this node's fan-out.
 * Called once per message for channels this node subscribed to
 * (wsh_broker_subscribe), in offset order per channel: calls for one channel
 * never overlap. The memory engine calls it inside wsh_broker_publish, on the
 * publishing thread, before the publish callback; the redis engine will call
 * it on its own thread as Pub/Sub delivers. It must not publish (the
 * channel's publish order is held); every other call is allowed. channel,
 * epoch and *m are borrowed until it returns. */
typedef void wsh_broker_message_cb(const char *channel, const char *epoch,
                                   const struct wsh_broker_msg *m, void *user);

/* Bounds on what all channels together hold, which a reload may change.
 *
 * max_channels: channel states at once. A publish, subscribe, presence_add
 * or read_set that needs a new one beyond it fails with WSH_EPOLICY.
 *
 * max_history_memory: bytes of history over all channels, each message
 * counted with its record (payload + from + ~70 bytes). A publish that
 * passes it drops history from the channels published to least recently
 * (oldest messages first; possibly the publishing channel's own) until the
 * total is 1/64 under it (so the next publishes find room without
 * evicting), at most 4096 messages per call; the next calls and sweep go
 * on where one stopped. One thread evicts at a time. Recovery across a
 * dropped message reports recovered = false, as for any message trimmed by
 * size or TTL; it is never a silent gap. 0 means unbounded for either. */
struct wsh_broker_limits {
    size_t max_channels;
    size_t max_history_memory;
};

/* The engine vtable. `self` is the engine's own state, given to
 * wsh_broker_create(). Every slot is required; argument checks happen in the
 * wsh_broker_* wrappers before a slot is called, so engines may assume
 * non-NULL, NUL-terminated, length-checked strings. Each slot has the
 * contract of the wrapper of the same name. */
struct wsh_broker_ops {
    const char *name;
    int (*publish)(void *self, const struct wsh_broker_publish_req *req, wsh_broker_cb *cb,
                   void *user);
    int (*history)(void *self, const struct wsh_broker_history_req *req, wsh_broker_cb *cb,
                   void *user);
    int (*recover)(void *self, const char *channel, uint64_t offset, const char *epoch,
                   int64_t now_ms, wsh_broker_cb *cb, void *user);
    int (*subscribe)(void *self, const char *channel, wsh_broker_cb *cb, void *user);
    int (*unsubscribe)(void *self, const char *channel, wsh_broker_cb *cb, void *user);
    int (*presence_add)(void *self, const char *channel, const char *client, const char *user_id,
                        const char *info, size_t info_len, wsh_broker_cb *cb, void *user);
    int (*presence_remove)(void *self, const char *channel, const char *client, wsh_broker_cb *cb,
                           void *user);
    int (*presence_list)(void *self, const char *channel, wsh_broker_cb *cb, void *user);
    int (*presence_count)(void *self, const char *channel, wsh_broker_cb *cb, void *user);
    int (*read_set)(void *self, const char *channel, const char *user_id, uint64_t offset,
                    wsh_broker_cb *cb, void *user);
    int (*read_get)(void *self, const char *channel, const char *user_id, wsh_broker_cb *cb,
                    void *user);
    int (*channel_stats)(void *self, const char *channel, int64_t now_ms, wsh_broker_cb *cb,
                         void *user);
    int (*info)(void *self, wsh_broker_cb *cb, void *user);
    /* Synchronous for every engine: see wsh_broker_sweep(). */
    size_t (*sweep)(void *self, int64_t now_ms);
    void (*set_limits)(void *self, const struct wsh_broker_limits *l);
    void (*destroy)(void *self);
};

/* Wraps an engine. ops must outlive the broker; ownership of self transfers
 * to the broker (ops->destroy(self) runs in wsh_broker_destroy, or here on
 * failure). Returns WSH_OK, WSH_EINVAL (NULL argument), WSH_ENOMEM. */
WSH_NODISCARD int wsh_broker_create(const struct wsh_broker_ops *ops, void *self,
                                    struct wsh_broker **out);

struct wsh_broker_memory_opts {
    size_t max_payload;              /* bytes per payload; 0 = WSH_BROKER_DEFAULT_MAX_PAYLOAD */
    struct wsh_broker_limits limits; /* 0s = unbounded */
    size_t dedup_max;                /* msg_ids per channel; 0 = WSH_BROKER_DEFAULT_DEDUP_MAX */
    size_t presence_max;             /* entries per channel; 0 = WSH_BROKER_DEFAULT_PRESENCE_MAX */
    size_t readers_max; /* read cursors per channel; 0 = WSH_BROKER_DEFAULT_READERS_MAX */
    wsh_broker_message_cb *on_message; /* may be NULL */
    void *user;                        /* for on_message */
};

/* Creates the embedded single-node engine. o may be NULL for the defaults.
 * Returns WSH_OK, WSH_ENOMEM. *out is untouched on failure. */
WSH_NODISCARD int wsh_broker_memory_create(const struct wsh_broker_memory_opts *o,
                                           struct wsh_broker **out);

/* Frees the broker and everything it holds. No call may be running or start
 * on another thread; callbacks of a remote engine still pending run with
 * status WSH_ECLOSED first. NULL is allowed. */
void wsh_broker_destroy(struct wsh_broker *b);

/* The engine's name ("memory"). */
const char *wsh_broker_engine(const struct wsh_broker *b);

/* Publishes req->payload to req->channel, creating the channel's state (and
 * a fresh epoch) when it has none. The result carries the offset and epoch.
 * A msg_id seen from the same `from` on this channel within
 * opts.dedup_window_ms answers duplicate=true with the original offset and
 * is neither stored nor delivered again. Otherwise the message takes the
 * next offset (1, 2, ...), is kept in history when opts.history_size > 0,
 * and is handed to on_message when the node subscribes to the channel;
 * then cb runs. cb may be NULL.
 * Returns WSH_OK, WSH_EINVAL (NULL or over-long string, NULL payload with a
 * length), WSH_ETOOBIG (payload over max_payload), WSH_EPOLICY (max_channels
 * reached), WSH_ENOMEM. */
WSH_NODISCARD int wsh_broker_publish(struct wsh_broker *b, const struct wsh_broker_publish_req *req,
                                     wsh_broker_cb *cb, void *user);

/* Messages still in history, oldest first: with has_since, those after
 * `since` (at most limit, the oldest of them); without, the newest `limit`.
 * Does not create state. Returns WSH_OK, WSH_EINVAL, WSH_ENOMEM. */
WSH_NODISCARD int wsh_broker_history(struct wsh_broker *b, const struct wsh_broker_history_req *req,
                                     wsh_broker_cb *cb, void *user);

/* Recovery for a client that last saw (offset, epoch) on channel.
 * recovered=true, with every message after offset in order, when the epoch
 * is the channel's and all of them are still in history (none trimmed by
 * size or TTL). recovered=false, with no messages, when the epoch differs
 * (history lost or channel recreated), the channel has no state, offset is
 * ahead of the channel, or any message after offset is gone: never a silent
 * gap. The current epoch and offset are always reported. Does not create
 * state. Returns WSH_OK, WSH_EINVAL, WSH_ENOMEM. */
WSH_NODISCARD int wsh_broker_recover(struct wsh_broker *b, const char *channel, uint64_t offset,
                                     const char *epoch, int64_t now_ms, wsh_broker_cb *cb,
                                     void *user);

/* The node's interest in a channel, counted: the server calls subscribe
 * once per client subscription and unsubscribe once when it ends (however
 * the connection ends). While the count is above zero, on_message receives
 * the channel's messages and the channel's state is never dropped.
 * subscribe creates the state and reports the current epoch and offset,
 * which the `subscribed` reply can carry. To avoid a gap or a duplicate
 * between history and live messages, register the local subscriber before
 * calling subscribe/recover and drop live messages whose offset is <= the
 * offset the result reported. cb may be NULL.
 * Returns WSH_OK, WSH_EINVAL (also: unsubscribe with a zero count),
 * WSH_EPOLICY (max_channels), WSH_ENOMEM. */
WSH_NODISCARD int wsh_broker_subscribe(struct wsh_broker *b, const char *channel, wsh_broker_cb *cb,
                                       void *user);
WSH_NODISCARD int wsh_broker_unsubscribe(struct wsh_broker *b, const char *channel,
                                         wsh_broker_cb *cb, void *user);

/* Presence entry for one connection (client id) on channel, with its user
 * id and info (JSON text, copied; info may be NULL). Adding an existing
 * client replaces its entry. Entries are removed only by
 * wsh_broker_presence_remove: the server removes a connection's entries when
 * it unsubscribes or ends, however it ends (close, error, kill, timeout). A
 * channel with presence entries keeps its state. cb may be NULL for add and
 * remove.
 * Returns WSH_OK, WSH_EINVAL, WSH_ETOOBIG (info over max_payload),
 * WSH_EPOLICY (presence_max entries, or max_channels), WSH_ENOMEM. */
WSH_NODISCARD int wsh_broker_presence_add(struct wsh_broker *b, const char *channel,
                                          const char *client, const char *user_id, const char *info,
                                          size_t info_len, wsh_broker_cb *cb, void *user);
WSH_NODISCARD int wsh_broker_presence_remove(struct wsh_broker *b, const char *channel,
                                             const char *client, wsh_broker_cb *cb, void *user);
/* The entries (in no particular order) and their count. The list is bounded
 * by presence_max; the hub asks for the count alone above its threshold. */
WSH_NODISCARD int wsh_broker_presence_list(struct wsh_broker *b, const char *channel,
                                           wsh_broker_cb *cb, void *user);
WSH_NODISCARD int wsh_broker_presence_count(struct wsh_broker *b, const char *channel,
                                            wsh_broker_cb *cb, void *user);

/* Read cursor of user_id on channel: keeps the maximum ever set, clamped to
 * the channel's current offset (a cursor cannot point past the last
 * message). Cursors live with the channel's history: they are dropped with
 * its state and do not keep it alive. cb may be NULL for read_set.
 * Returns WSH_OK, WSH_EINVAL, WSH_EPOLICY (readers_max, or max_channels),
 * WSH_ENOMEM. */
WSH_NODISCARD int wsh_broker_read_set(struct wsh_broker *b, const char *channel,
                                      const char *user_id, uint64_t offset, wsh_broker_cb *cb,
                                      void *user);
WSH_NODISCARD int wsh_broker_read_get(struct wsh_broker *b, const char *channel,
                                      const char *user_id, wsh_broker_cb *cb, void *user);

/* Counters for one channel (stats) or the whole broker (info), for
 * /api/info and /metrics. Returns WSH_OK, WSH_EINVAL, WSH_ENOMEM. */
WSH_NODISCARD int wsh_broker_channel_stats(struct wsh_broker *b, const char *channel,
                                           int64_t now_ms, wsh_broker_cb *cb, void *user);
WSH_NODISCARD int wsh_broker_info(struct wsh_broker *b, wsh_broker_cb *cb, void *user);

/* Applies TTLs to every channel not in use at this instant and drops the
 * state of channels with no subscribers, no presence, no history left and
 * no msg_id in its de-dup window; their next publish starts a new epoch at
 * offset 1. Returns the number of channel states dropped. Call it
 * periodically (every second or so) from one thread. */
size_t wsh_broker_sweep(struct wsh_broker *b, int64_t now_ms);

/* Puts new bounds in force: for new channel states from the next call on;
 * a lowered max_history_memory drops history down to it at the next
 * publish or sweep. Channel states beyond a lowered max_channels stay until
 * sweep drops them. */
void wsh_broker_set_limits(struct wsh_broker *b, const struct wsh_broker_limits *l);

#endif
