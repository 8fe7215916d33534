/* The /ws endpoint: the JSON envelope protocol of DESIGN.md 3 on top of the
 * codec (wsh_hub: proto, config, auth) and the broker (memory engine).
 *
 * Channels are shared by all workers like raw channels: a registry record
 * with one subscriber list per worker, touched only by that worker. A
 * publish goes through the broker, which assigns the offset, stores the
 * message and calls on_message once, in offset order; there the `message`
 * push is encoded once into one frame that every recipient's queue shares,
 * on this worker directly and on the others through their inboxes. */
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "server.h"
#include "wshub/auth.h"
#include "wshub/broker.h"
#include "wshub/config.h"
#include "wshub/expset.h"
#include "wshub/http.h"
#include "wshub/proto.h"

/* A name the configuration lets through fits the broker whole: the copies
 * into chname[] below never cut one into another channel's name. */
_Static_assert(WSH_CFG_MAX_CHANNEL_CEIL <= WSH_BROKER_NAME_MAX,
               "channel names must fit the broker");

/* refresh_required goes out this long before the token expires. */
#define REFRESH_AHEAD_MS 30000

struct hubsub;

/* A channel as the workers see it: per-worker subscriber lists. */
struct hubchan {
    CHANREC_FIELDS
    _Atomic(const struct wsh_ns_config *) ns; /* in live: chan_ns(), repoint_ns() */
    _Atomic uint32_t total;                   /* subscribers over all workers */
    struct {
        struct hubsub *head;
        _Atomic uint32_t n;
    } local[];
};

/* One subscription of one connection. */
struct hubsub {
    struct hubchan *ch;
    struct conn *c;
    struct hubsub *next, *prev;           /* in ch->local[worker] */
    struct hubsub *conn_next;             /* in the connection's list */
    uint64_t after;                       /* drop messages with offset <= after */
    uint64_t lagged_from;                 /* first message dropped while backlogged, 0 if none */
    char epoch[WSH_BROKER_EPOCH_LEN + 1]; /* as reported by `subscribed` */
    bool present;                         /* has a presence entry to remove */
    bool joined;                          /* its join went out, so its leave may */
};

/* A token bucket of limits.publish_rate and publish_burst, with the
 * refusals it answered counted in a second one of the same size and rate
 * (take_token). Timed by the monotonic clock: a step of the wall clock
 * (NTP, a resumed VM) neither fills nor drains it. */
struct bucket {
    double tokens;
    double refused;
    uint64_t at_ms; /* wsh_now_ms() of the last refill */
};

struct hubconn {
    struct wsh_identity id;
    bool authed;
    bool anonymous;
    bool refresh_sent;
    bool lagging;   /* some subscription has lagged_from set */
    bool connected; /* `connect` was answered */
    bool waiting;   /* `connect` or `refresh` waits for a key set fetch (waiters) */
    char client[24];
    char anon[32];       /* user id of an anonymous connection: "anon-<client>" */
    struct bucket pub;   /* publish and signal (take_token) */
    struct bucket reads; /* read receipts: a bucket of their own */
    uint32_t nsubs;
    struct hubsub *subs;
    struct wsh_timer exp_timer; /* authentication deadline, then token expiry */
    struct conn *c;
};

static struct wsh_hub_config hubcfg;
static struct wsh_broker *broker;
static _Atomic size_t max_input; /* bytes of a /ws message: hub_message_limit() */
static bool max_message_flag;    /* --max-message was given: the file's is not read */

/* What /ws reads on every command: the namespaces, the per-connection
 * limits (limits.publish_*, max_subscriptions, json_depth, max_channel,
 * unauthenticated.*) and auth.allow_anonymous; and what each upgrade and
 * API call reads: origins, api_key and trusted_proxies (at accept, too).
 * hubcfg at start; SIGHUP
 * puts the newly read file in its place (hub_reload_settings). Workers
 * read it, and the namespaces channels point into, without a lock, so a
 * replaced one is kept until every worker has ended the loop turn it was
 * replaced in (live_replace, live_reclaim), as RCU waits for a grace
 * period. */
static _Atomic(struct wsh_hub_config *) live;

static const struct wsh_hub_config *live_cfg(void)
{
    return atomic_load_explicit(&live, memory_order_acquire);
}

static void live_reclaim(void);
static void revoked_sweep(int64_t now_ms);

const struct wsh_cidr *hub_trusted_proxies(size_t *n)
{
    const struct wsh_hub_config *cfg = live_cfg();
    *n = cfg != NULL ? cfg->ntrusted_proxies : 0;
    return cfg != NULL ? cfg->trusted_proxies : NULL;
}

/* The options for channel name in cfg. A namespace the file no longer has
 * falls back to default_namespace: its channels go on until their
 * subscribers leave, and new subscriptions are refused (unknown
 * namespace) by the commands' own lookup. */
static const struct wsh_ns_config *ns_of(const struct wsh_hub_config *cfg, const char *name,
                                         size_t len)
{
    const struct wsh_ns_config *ns = wsh_config_namespace(cfg, name, len);
    return ns != NULL ? ns : &cfg->default_ns;
}

static struct wsh_proto_limits proto_limits(const struct wsh_hub_config *cfg)
{
    return (struct wsh_proto_limits){ .max_input =
                                          atomic_load_explicit(&max_input, memory_order_relaxed),
                                      .max_depth = cfg->limits.json_depth,
                                      .max_channel = cfg->limits.max_channel };
}
static struct chanreg hub_reg = CHANREG_INIT;
static bool hub_enabled;
static bool have_config; /* --config was given */

/* ------------------------------------------------------------------ */
/* Sending JSON                                                         */

/* Sends what b holds to c; encoded is what encoding it returned. When
 * that ran out of memory, c is closed with 1011 instead: a reply left out
 * would have the client wait for it forever on a connection that looks
 * fine, while a close makes it reconnect and recover what it missed.
 *
 * Returns whether c is still open. A close, for memory here or for a slow
 * consumer in conn_send, has ended c->hub (hub_conn_end): after false the
 * caller must not touch the hubconn or its subscriptions. */
static bool send_jbuf(struct worker *w, struct conn *c, struct wsh_jbuf *b, int encoded,
                      enum push_type type)
{
    if (c->state != CONN_OPEN)
        return false;
    if (encoded != WSH_OK || b->_oom) {
        conn_close(w, c, WSH_CLOSE_INTERNAL, "out of memory");
        return false;
    }
    if (b->len == 0)
        return true;
    struct wsh_buf *f = NULL;
    if (c->pmd && wsh_pmd_worth_compressing(&wsh_cfg.pmd, b->len))
        f = frame_deflate(c->pmd, 0, WSH_OP_TEXT, (const uint8_t *)b->data, b->len);
    if (f == NULL)
        f = frame_new(WSH_OP_TEXT, (const uint8_t *)b->data, b->len);
    if (f == NULL) {
        conn_close(w, c, WSH_CLOSE_INTERNAL, "out of memory");
        return false;
    }
    conn_send(w, c, f);
    metric_add(&w->m.pushes[type], 1);
    return c->state == CONN_OPEN;
}

static void reply_error(struct worker *w, struct conn *c, int64_t id, const char *ch, size_t chlen,
                        int code, const char *msg)
{
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    int rc = wsh_proto_encode_error(&b, id, ch, chlen, code, msg, wsh_wall_ms());
    (void)send_jbuf(w, c, &b, rc, PUSH_ERROR);
    wsh_jbuf_free(&b);
}

/* The error reply to a command, naming its id and channel. */
static void cmd_error(struct worker *w, struct conn *c, const struct wsh_cmd *cmd, int code)
{
    reply_error(w, c, cmd->id, cmd->channel, cmd->channel_len, code, NULL);
}

/* Sends `disconnect` (DESIGN.md 3) and then the close frame with code. */
static void disconnect_retry(struct worker *w, struct conn *c, unsigned code, const char *reason,
                             bool reconnect, uint64_t retry_ms)
{
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    if (wsh_proto_encode_disconnect(&b, code, reason, strlen(reason), reconnect, retry_ms,
                                    wsh_wall_ms()) == WSH_OK)
        (void)send_jbuf(w, c, &b, WSH_OK, PUSH_DISCONNECT);
    wsh_jbuf_free(&b);
    conn_close(w, c, code, reason);
}

/* Shutdown (DESIGN.md 5), --max-client-memory and a `connect` whose keys
 * did not come in time: a /ws client learns it may come back, each after
 * its own delay spread over 0.5-5 s by the connection id (Knuth's
 * multiplicative hash), so the clients sent away together do not all come
 * back together. */
void hub_close_retry(struct worker *w, struct conn *c, unsigned code, const char *reason)
{
    if (c->hub == NULL) {
        conn_close(w, c, code, reason);
        return;
    }
    uint64_t spread = ((uint64_t)c->id * 2654435761u) % 4500u;
    disconnect_retry(w, c, code, reason, true, 500 + spread);
}

/* Over limits.admission_rate (route.c, admit_upgrade): the client may come
 * back after retry_ms, its own slot (LIMITS.md 1013, try again later). */
void hub_overload_notice(struct worker *w, struct conn *c, uint64_t retry_ms)
{
    disconnect_retry(w, c, WSH_CLOSE_TRY_LATER, "server busy, try again later", true, retry_ms);
}

static void hub_disconnect(struct worker *w, struct conn *c, unsigned code, const char *reason,
                           bool reconnect)
{
    disconnect_retry(w, c, code, reason, reconnect, reconnect ? 500 : 0);
}

/* ------------------------------------------------------------------ */
/* Channel registry                                                     */

static const struct wsh_ns_config *chan_ns(const struct hubchan *ch)
{
    return atomic_load_explicit(&ch->ns, memory_order_acquire);
}

/* Under the registry lock, at creation and when a reload replaces live:
 * a record created after the reload's walk reads the new live here. */
static void repoint_ns(struct chanrec *r, void *cfg)
{
    const struct wsh_hub_config *c = cfg != NULL ? cfg : live_cfg();
    atomic_store_explicit(&((struct hubchan *)r)->ns, ns_of(c, r->name, r->name_len),
                          memory_order_release);
}

/* Finds (and with create, creates) a channel record and takes a
 * reference. */
static struct hubchan *chan_get(const char *name, size_t len, bool create)
{
    size_t size = create ? sizeof(struct hubchan) +
                               (size_t)wsh_nworkers * sizeof(((struct hubchan *)NULL)->local[0])
                         : 0;
    return (struct hubchan *)chanreg_get(&hub_reg, name, len, size, repoint_ns, NULL);
}

static void chan_put(struct hubchan *ch)
{
    atomic_fetch_sub_explicit(&ch->refs, 1, memory_order_release);
}

void hub_sweep(int64_t now_ms)
{
    live_reclaim();
    if (!hub_enabled)
        return;
    chanreg_sweep(&hub_reg);
    wsh_broker_sweep(broker, now_ms);
    revoked_sweep(wsh_wall_ms());
}

/* ------------------------------------------------------------------ */
/* Fan-out                                                              */

/* Returns false when the connection was closed, s with it. */
static bool send_lagged(struct worker *w, struct hubsub *s)
{
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    int rc = wsh_proto_encode_lagged(&b, s->ch->name, s->ch->name_len, s->lagged_from, s->epoch,
                                     strlen(s->epoch), wsh_wall_ms());
    bool open = send_jbuf(w, s->c, &b, rc, PUSH_LAGGED);
    wsh_jbuf_free(&b);
    if (open)
        s->lagged_from = 0;
    return open;
}

/* The drop policy of a namespace with slow_consumer "drop_oldest": while
 * the subscriber's queue is over --max-queue, messages for it are dropped
 * instead of closing it (4101); once the queue has drained to half, a
 * `lagged` push tells it the first offset it missed, so it can recover
 * from history. Returns true when this message is dropped. */
static bool drop_for_lag(struct worker *w, struct hubsub *s, uint64_t offset, size_t len)
{
    size_t q = wsh_wq_bytes(s->c->wq);
    if (s->lagged_from != 0) {
        if (q > wsh_cfg.max_queue / 2)
            return true;
        return !send_lagged(w, s); /* closed: nothing more for it */
    }
    if (q + len <= wsh_cfg.max_queue)
        return false;
    s->lagged_from = offset;
    s->c->hub->lagging = true;
    return true;
}

static void fan_out_local(struct worker *w, struct hubchan *ch, struct wsh_buf *frame,
                          uint64_t offset, enum push_type type, const struct conn *skip)
{
    uint64_t sent = 0, dropped = 0;
    bool drop_policy = chan_ns(ch)->slow_consumer == WSH_SLOW_DROP_OLDEST;
    bool lag_policy = drop_policy && offset != 0;
    struct zcache zc;
    zcache_init(&zc, frame);
    w->hub_fanning++;
    struct hubsub *next;
    for (struct hubsub *s = ch->local[w->id].head; s != NULL; s = next) {
        next = s->next;
        if (s->c == skip || (offset != 0 && offset <= s->after))
            continue;
        /* A signal (typing, a cursor) is stale by the time a reader that
         * is behind would get it, and the next one says more: it is not
         * queued for a connection the kernel is refusing bytes from, so
         * signals alone never make a slow consumer (docs/protocol.md). */
        if (type == PUSH_SIGNAL && conn_behind(s->c)) {
            dropped++;
            continue;
        }
        if (lag_policy && drop_for_lag(w, s, offset, wsh_buf_len(frame)))
            continue;
        /* A join, leave or read receipt for a subscriber behind in a
         * drop_oldest namespace goes the way of its messages: queued, it
         * would pass the limit and cut off the subscriber the policy keeps.
         * After `lagged` it re-reads presence with the history. */
        if (drop_policy && offset == 0 &&
            (s->lagged_from != 0 ||
             wsh_wq_bytes(s->c->wq) + wsh_buf_len(frame) > wsh_cfg.max_queue))
            continue;
        conn_send(w, s->c, wsh_buf_ref(zcache_frame(&zc, s->c)));
        sent++;
    }
    w->hub_fanning--;
    zcache_release(&zc);
    metric_add(&w->m.pushes[type], sent);
    if (dropped)
        metric_add(&w->m.signals_dropped, dropped);
}

void hub_slow_consumer(struct worker *w, struct conn *c)
{
    hub_disconnect(w, c, 4101, "slow consumer", true);
}

bool hub_drops_for_lag(const struct conn *c)
{
    for (const struct hubsub *s = c->hub->subs; s; s = s->conn_next)
        if (chan_ns(s->ch)->slow_consumer == WSH_SLOW_DROP_OLDEST)
            return true;
    return false;
}

void hub_drained(struct worker *w, struct conn *c)
{
    struct hubconn *h = c->hub;
    if (h == NULL || !h->lagging || wsh_wq_bytes(c->wq) > wsh_cfg.max_queue / 2)
        return;
    h->lagging = false;
    for (struct hubsub *s = h->subs; s; s = s->conn_next)
        if (s->lagged_from != 0 && !send_lagged(w, s))
            return; /* closed: h and its subs are gone */
}

/* Delivers one encoded push to every subscriber of ch on every worker.
 * A message (offset != 0) goes through every worker's inbox, this one's
 * too: on_message runs under the broker's per-channel order lock, so the
 * inboxes receive offsets in order, and a worker drains its inbox in
 * order. Delivering to local subscribers at once instead would let a later
 * offset published here overtake an earlier one still in this worker's
 * inbox from another worker. Pushes without an offset go out at once,
 * unless a fan-out is under way on this worker: a subscriber it closes (a
 * slow consumer) leaves its channels, and a `leave` fanned out at once
 * could close the next subscriber of the walk under way, which would then
 * read freed memory. Those wait in the inbox too. */
static void fan_out(struct hubchan *ch, struct wsh_buf *frame, uint64_t offset, int64_t t_ms,
                    enum push_type type, const struct conn *skip)
{
    struct worker *w = wsh_self;
    bool now = w != NULL && offset == 0 && w->hub_fanning == 0;
    for (int i = 0; i < wsh_nworkers; i++) {
        if (now && i == w->id)
            continue;
        if (atomic_load_explicit(&ch->local[i].n, memory_order_relaxed) == 0)
            continue;
        atomic_fetch_add_explicit(&ch->refs, 1, memory_order_relaxed);
        struct xmsg m = {
            .ch = ch,
            .buf = wsh_buf_ref(frame),
            .offset = offset,
            .t_ms = t_ms,
            .kind = XMSG_HUB,
            .push = (uint8_t)type,
        };
        inbox_push(&wsh_workers[i], &m);
        if (w != NULL && i != w->id)
            w->wake[i] = true;
        else if (w == NULL)
            worker_wake(&wsh_workers[i]);
    }
    if (now)
        fan_out_local(w, ch, frame, offset, type, skip);
}

void hub_deliver_inbox(struct worker *w, const struct xmsg *m)
{
    if (m->kind == XMSG_KICK) {
        if (w != NULL)
            hub_kick_local(w, (const char *)m->buf->data, 4501, "disconnected by the server");
        wsh_buf_unref(m->buf);
        return;
    }
    struct hubchan *ch = m->ch;
    if (w != NULL) {
        fan_out_local(w, ch, m->buf, m->offset, (enum push_type)m->push, NULL);
        if (m->offset != 0)
            metric_latency(w, m->t_ms);
    }
    wsh_buf_unref(m->buf);
    chan_put(ch);
}

/* Broker callback, once per accepted publish in offset order: encode the
 * `message` push once and fan it out. */
static void on_broker_message(const char *channel, const char *epoch,
                              const struct wsh_broker_msg *m, void *user)
{
    (void)user;
    struct hubchan *ch = chan_get(channel, strlen(channel), false);
    if (ch == NULL)
        return; /* nobody on this node subscribes */
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    if (wsh_proto_encode_message(&b, channel, strlen(channel), m->offset, epoch, strlen(epoch),
                                 m->from, strlen(m->from), m->payload, m->payload_len,
                                 m->time_ms) == WSH_OK &&
        !b._oom) {
        struct wsh_buf *f = frame_new(WSH_OP_TEXT, (const uint8_t *)b.data, b.len);
        if (f != NULL) {
            fan_out(ch, f, m->offset, m->time_ms, PUSH_MESSAGE, NULL);
            wsh_buf_unref(f);
        }
    }
    wsh_jbuf_free(&b);
    chan_put(ch);
}

static void push_to_channel(struct hubchan *ch, struct wsh_jbuf *b, enum push_type type,
                            const struct conn *skip)
{
    if (b->_oom)
        return;
    struct wsh_buf *f = frame_new(WSH_OP_TEXT, (const uint8_t *)b->data, b->len);
    if (f == NULL)
        return;
    fan_out(ch, f, 0, 0, type, skip);
    wsh_buf_unref(f);
}

/* ------------------------------------------------------------------ */
/* Configuration                                                        */

static char *config_file; /* --config, kept for reloads */
static bool memory_flag;  /* --max-client-memory was given: the file's is not read */

int hub_init(const char *config_path, char *err, size_t errlen)
{
    if (config_path) {
        if (wsh_config_load(config_path, &hubcfg, err, errlen) != WSH_OK)
            return -1;
        have_config = true;
        if ((config_file = strdup(config_path)) == NULL) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    } else {
        wsh_config_defaults(&hubcfg);
    }
    atomic_store(&live, &hubcfg);
    return keys_init(&hubcfg, err, errlen);
}

const char *hub_not_ready(void)
{
    /* Until the first fetch loads, every token would wait and then fail:
     * a balancer should send clients to a node that has keys. */
    if (hub_enabled && keys_none_yet())
        return "no token keys yet (auth.jwks_url has not loaded)";
    return NULL;
}

static _Atomic uint64_t key_removed_sessions; /* keys_check */

uint64_t hub_key_removed_sessions(void)
{
    return atomic_load(&key_removed_sessions);
}

/* A configuration file read on SIGHUP. It is read once per signal, so the
 * keys and the settings put in force come from the same version of it
 * (and a file that is a pipe is read once), and both parts may keep it:
 * hence the count. hubcfg, the file read at start, is never freed. */
struct reread {
    _Atomic unsigned refs;
    struct wsh_hub_config cfg;
};

int hub_config_reread(struct wsh_hub_config **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!have_config)
        return 1;
    struct reread *r = malloc(sizeof(*r));
    if (r == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (wsh_config_load(config_file, &r->cfg, err, errlen) != WSH_OK) {
        free(r);
        return -1;
    }
    atomic_init(&r->refs, 1);
    *out = &r->cfg;
    return 0;
}

static struct reread *reread_of(struct wsh_hub_config *cfg)
{
    return (struct reread *)((char *)cfg - offsetof(struct reread, cfg));
}

struct wsh_hub_config *hub_config_ref(struct wsh_hub_config *cfg)
{
    if (cfg != &hubcfg)
        atomic_fetch_add(&reread_of(cfg)->refs, 1);
    return cfg;
}

void hub_config_release(struct wsh_hub_config *cfg)
{
    if (cfg == NULL || cfg == &hubcfg)
        return;
    struct reread *r = reread_of(cfg);
    if (atomic_fetch_sub(&r->refs, 1) == 1) {
        wsh_config_free(&r->cfg);
        free(r);
    }
}

/* A replaced live config, with each worker's turn count when it was
 * replaced: it may be freed once every count has moved on. Reloads and
 * sweeps both run on worker 0, so the list needs no lock. */
struct retired {
    struct retired *next;
    struct wsh_hub_config *cfg;
    uint64_t turns[WSH_MAX_WORKERS];
};
static struct retired *retired;

static void live_replace(struct wsh_hub_config *cfg)
{
    struct wsh_hub_config *old = atomic_exchange(&live, hub_config_ref(cfg));
    if (hub_enabled)
        chanreg_each(&hub_reg, repoint_ns, cfg);
    struct retired *r = malloc(sizeof(*r));
    if (r == NULL)
        return; /* kept for good: never freed under a reader */
    r->cfg = old;
    for (int i = 0; i < wsh_nworkers; i++) {
        r->turns[i] = atomic_load_explicit(&wsh_workers[i].turns, memory_order_acquire);
        worker_wake(&wsh_workers[i]); /* so an idle worker ends a turn too */
    }
    r->next = retired;
    retired = r;
}

static void live_reclaim(void)
{
    struct retired **pp = &retired;
    while (*pp != NULL) {
        struct retired *r = *pp;
        bool past = true;
        for (int i = 0; i < wsh_nworkers && past; i++)
            past = atomic_load_explicit(&wsh_workers[i].turns, memory_order_acquire) > r->turns[i];
        if (!past) {
            pp = &r->next;
            continue;
        }
        *pp = r->next;
        hub_config_release(r->cfg);
        free(r);
    }
}

static struct wsh_broker_limits broker_limits(const struct wsh_limits_config *l)
{
    return (struct wsh_broker_limits){ .max_channels = l->max_channels,
                                       .max_history_memory = (size_t)l->max_history_memory };
}

void hub_reload_settings(struct wsh_hub_config *cfg, struct hub_settings *out)
{
    const struct wsh_limits_config *l = &cfg->limits;
    *out = (struct hub_settings){ .norigins = cfg->norigins,
                                  .api_key = cfg->api_key != NULL,
                                  .admission_rate = l->admission_rate,
                                  .max_connections = l->max_connections,
                                  .per_ip = l->max_connections_per_ip,
                                  .ip_rate = l->handshake_rate_per_ip,
                                  .max_channels = l->max_channels,
                                  .max_history = l->max_history_memory };
    if (!memory_flag)
        worker_memory_cap_set((size_t)l->max_client_memory);
    out->max_client_memory = worker_memory_cap();
    if (!max_message_flag)
        atomic_store_explicit(&max_input, (size_t)l->max_message, memory_order_relaxed);
    out->max_message = hub_message_limit();
    admit_rate_set(l->admission_rate, l->admission_burst);
    admit_limits_set(l->max_connections, l->max_connections_per_ip, l->handshake_rate_per_ip,
                     l->handshake_burst_per_ip, l->ipv6_prefix);
    if (hub_enabled) {
        struct wsh_broker_limits bl = broker_limits(l);
        wsh_broker_set_limits(broker, &bl);
    }
    live_replace(cfg);
}

int hub_start(uint64_t flag_max, bool flag_given)
{
    /* One bound for a /ws message everywhere it is checked: the WebSocket
     * layer (1009), the JSON codec (1004) and API publishes (hub_publish).
     * The broker's own bound is the largest a reload may set. */
    max_message_flag = flag_given;
    uint64_t max = have_config && !flag_given ? hubcfg.limits.max_message : flag_max;
    atomic_store(&max_input, (size_t)max);
    size_t ceiling = WSH_CFG_MAX_MESSAGE_CEIL;
    struct wsh_broker_memory_opts bo = { .max_payload = max > ceiling ? (size_t)max : ceiling,
                                         .limits = broker_limits(&hubcfg.limits),
                                         .on_message = on_broker_message };
    int rc = wsh_broker_memory_create(&bo, &broker);
    if (rc != WSH_OK)
        return rc;
    hub_enabled = true;
    return WSH_OK;
}

uint64_t hub_message_limit(void)
{
    return atomic_load_explicit(&max_input, memory_order_relaxed);
}

/* LIMITS.md: a client that has not authenticated costs almost nothing
 * (Redis CVE-2021-32675), so its message is refused at the frame header
 * that declares it too long, before any of it is buffered. */
uint64_t hub_conn_message_limit(const struct conn *c)
{
    uint64_t max = hub_message_limit();
    if (c->hub == NULL || !c->hub->authed) {
        uint64_t u = live_cfg()->limits.unauth_max_message;
        if (u < max)
            max = u;
    }
    return max;
}

void hub_too_big(struct worker *w, struct conn *c)
{
    if (c->hub == NULL || !c->hub->authed)
        hub_disconnect(w, c, WSH_CLOSE_POLICY, "authenticate first", false);
    else
        conn_close(w, c, WSH_CLOSE_TOO_BIG, "message too big");
}

void hub_conn_limits(struct wsh_config *cfg)
{
    /* --max-client-memory, when given, overrides the file (SIZE_MAX: not given). */
    memory_flag = cfg->max_client_memory != SIZE_MAX;
    if (!memory_flag)
        cfg->max_client_memory = 0;
    cfg->ip6_prefix = WSH_CFG_DEFAULT_IPV6_PREFIX;
    /* Only a configuration file turns these on: the built-in defaults
     * would refuse the many connections benchmarks open from one address. */
    if (!have_config)
        return;
    const struct wsh_limits_config *l = &hubcfg.limits;
    cfg->max_connections_cfg = l->max_connections;
    cfg->max_per_ip = l->max_connections_per_ip;
    cfg->ip_rate = l->handshake_rate_per_ip;
    cfg->ip_burst = l->handshake_burst_per_ip;
    cfg->ip6_prefix = l->ipv6_prefix;
    cfg->admit_rate = l->admission_rate;
    cfg->admit_burst = l->admission_burst;
    if (!memory_flag)
        cfg->max_client_memory = (size_t)l->max_client_memory;
}

size_t hub_queue_limit(const struct conn *c)
{
    /* LIMITS.md: a peer that has not authenticated gets a small outbound
     * budget. Reads are budgeted to it, as to --max-queue. */
    size_t unauth = live_cfg()->limits.unauth_max_outbound;
    if (!c->hub->authed && unauth < wsh_cfg.max_queue)
        return unauth;
    return wsh_cfg.max_queue;
}

/* `connect` and `refresh` commands whose token waits for a fetch of
 * auth.jwks_url, as parked handshakes do in worker.c. The answer comes
 * when the fetch ends (hub_keys_wake). A `connect` holds the connection's
 * input (conn_hold), so commands sent right behind it are handled after
 * its answer, and past the unauthenticated deadline it gets close 1013
 * (try again later). A `refresh` holds nothing: the connection goes on
 * with its current token meanwhile, one refresh waiting at a time. At
 * most WAIT_MAX per worker; past that the token is refused at once. */
#define WAIT_MAX 256u

struct waiter {
    struct hubconn *h;
    uint64_t ticket;
    bool refresh; /* the command: refresh, else connect */
    int64_t id;   /* the command's */
    char *token;
    size_t token_len;
};

static _Thread_local struct waiter *waiters;
static _Thread_local uint32_t nwaiters;

void hub_worker_exit(struct worker *w)
{
    (void)w;
    keys_worker_exit();
    for (uint32_t i = 0; i < nwaiters; i++)
        free(waiters[i].token);
    free(waiters);
    waiters = NULL;
    nwaiters = 0;
}

int hub_worker_init(struct worker *w)
{
    (void)w;
    if (!hub_enabled)
        return 0;
    return keys_worker_init();
}

/* ------------------------------------------------------------------ */
/* Revocation (POST /api/disconnect): users refused until a time, and   */
/* token ids refused until their expiry. Shared by all workers: one     */
/* expiring set keyed 'u' + user or 'j' + jti, at most                  */
/* limits.max_revocations live entries, looked up in O(1) at every      */
/* token check.                                                         */

/* Token checks only read the set, on every worker at once: they share a
 * read lock, and while the set is empty, as it mostly is, they take no
 * lock at all (revoked_n). */
static pthread_rwlock_t revoked_mu = PTHREAD_RWLOCK_INITIALIZER;
static struct wsh_expset *revoked; /* created at the first revocation */
static _Atomic size_t revoked_n;   /* its entries, stored under the write lock */
/* wsh_expset_soonest, stored under the write lock: the sweep takes that
 * lock only once something may have expired. */
static _Atomic int64_t revoked_soonest = INT64_MAX;
/* A key is a kind byte and a user or token id, in a buffer of
 * WSH_AUTH_SUB_MAX + 2 with its NUL. */
_Static_assert(WSH_AUTH_JTI_MAX <= WSH_AUTH_SUB_MAX, "a jti key must fit the user key buffer");

/* Under the write lock, with the set made. */
static void revoked_counts(void)
{
    atomic_store_explicit(&revoked_soonest, wsh_expset_soonest(revoked), memory_order_relaxed);
    atomic_store_explicit(&revoked_n, wsh_expset_count(revoked), memory_order_release);
}

/* Adds or extends the entry of key ('u' + user, or 'j' + token id: the
 * `who` of api_kick); expired entries make room first. WSH_OK; WSH_ENOSPC
 * when the set is full of live entries (a revocation is never pushed out
 * by another); WSH_ENOMEM. */
static int revoke(const char *key, int64_t until_ms)
{
    pthread_rwlock_wrlock(&revoked_mu);
    size_t max = live_cfg()->limits.max_revocations;
    if (revoked == NULL)
        revoked = wsh_expset_new(max);
    else
        wsh_expset_set_max(revoked, max);
    int rc = revoked == NULL ? WSH_ENOMEM
                             : wsh_expset_add(revoked, key, strlen(key), until_ms, wsh_wall_ms());
    if (revoked != NULL)
        revoked_counts();
    pthread_rwlock_unlock(&revoked_mu);
    return rc;
}

/* Under revoked_mu, with the set made. */
static bool revoked_has(char kind, const char *id, int64_t now)
{
    char key[WSH_AUTH_SUB_MAX + 2];
    int n = snprintf(key, sizeof(key), "%c%s", kind, id);
    return n > 0 && (size_t)n < sizeof(key) && wsh_expset_has(revoked, key, (size_t)n, now);
}

static bool is_revoked(const struct wsh_identity *id)
{
    if (atomic_load_explicit(&revoked_n, memory_order_acquire) == 0)
        return false;
    int64_t now = wsh_wall_ms();
    pthread_rwlock_rdlock(&revoked_mu);
    bool hit =
        revoked_has('u', id->sub, now) || (id->jti_len > 0 && revoked_has('j', id->jti, now));
    pthread_rwlock_unlock(&revoked_mu);
    return hit;
}

size_t hub_revocations(void)
{
    return atomic_load(&revoked_n);
}

/* From the 2 s sweep: expired entries give their memory back. */
static void revoked_sweep(int64_t now_ms)
{
    if (atomic_load(&revoked_n) == 0 || now_ms < atomic_load(&revoked_soonest))
        return;
    pthread_rwlock_wrlock(&revoked_mu);
    wsh_expset_purge(revoked, now_ms);
    revoked_counts();
    pthread_rwlock_unlock(&revoked_mu);
}

/* ------------------------------------------------------------------ */
/* Connections                                                          */

static void hub_timer(struct wsh_loop *l, struct wsh_timer *t);

/* Checks a token and, when good, makes it h's identity: returns 0, or -1
 * with *perr set. A token whose kid (or alg) no key has may be signed by a
 * key the issuer has just published: the set is fetched again (rate
 * limited), and when `wait` is given and a fetch is coming, 1 is returned
 * with *wait set to it (keys_fetched() reaching it means: check again,
 * without wait, for the final verdict). */
static int verify_token(struct hubconn *h, const char *tok, size_t len, int *perr, uint64_t *wait)
{
    struct wsh_auth *a = keys_auth(NULL);
    struct wsh_identity id;
    memset(&id, 0, sizeof(id));
    size_t skipped;
    /* No key yet: the first fetch may still be due. No copy of keys that
     * are there, or an older one that does not know the token's key: this
     * worker ran out of memory making the copy of the keys in force. */
    int ecode = a == NULL && keys_in_use(&skipped) > 0 ? WSH_AUTH_ENOMEM : WSH_AUTH_EKEY;
    if (a == NULL || wsh_auth_verify(a, tok, len, wsh_wall_ms(), &id, &ecode) != WSH_OK) {
        /* A stale copy may also lack the new key of a kid it knows (a key
         * rotated under the same kid, or a token without kid): ESIG too. */
        if ((ecode == WSH_AUTH_EKEY || ecode == WSH_AUTH_EALG || ecode == WSH_AUTH_ESIG) &&
            keys_auth_stale())
            ecode = WSH_AUTH_ENOMEM;
        if (ecode == WSH_AUTH_EKEY || ecode == WSH_AUTH_EALG) {
            keys_kick(false);
            if (wait != NULL && (*wait = keys_ticket()) != 0)
                return 1;
        }
        /* Why, for whoever wonders why a token is refused (docs/auth.md,
         * Error codes); the client is told only 2001 or 2002. */
        wsh_log(WSH_LOG_DEBUG, "conn=%u ev=token_refused reason=%s", h->c->id,
                wsh_auth_error_name(ecode));
        /* Out of memory is the server's fault, not the token's: the
         * client is told to come back, never that it is forbidden. */
        *perr = ecode == WSH_AUTH_ENOMEM                   ? WSH_PERR_INTERNAL
                : wsh_auth_error_close_code(ecode) == 4100 ? WSH_PERR_TOKEN_EXPIRED
                                                           : WSH_PERR_BAD_TOKEN;
        return -1;
    }
    if (is_revoked(&id)) {
        wsh_identity_free(&id);
        *perr = WSH_PERR_BAD_TOKEN;
        return -1;
    }
    if (h->authed && (h->anonymous || strcmp(id.sub, h->id.sub) != 0)) {
        /* A refresh may not change the user, an anonymous one included:
         * presence, read cursors and kicks know the session by its user. */
        wsh_identity_free(&id);
        *perr = WSH_PERR_BAD_TOKEN;
        return -1;
    }
    wsh_identity_free(&h->id);
    h->id = id;
    h->authed = true;
    h->anonymous = false;
    h->refresh_sent = false;
    return 0;
}

static void arm_expiry(struct worker *w, struct hubconn *h)
{
    wsh_timer_stop(&h->exp_timer);
    if (h->id.exp_ms == 0)
        return;
    int64_t now = wsh_wall_ms();
    int64_t at = h->id.exp_ms - REFRESH_AHEAD_MS;
    if (h->refresh_sent)
        at = h->id.exp_ms + WSH_AUTH_DEFAULT_LEEWAY_MS;
    else if (at < now)
        at = now; /* expires within the lead time: ask for a refresh now */
    wsh_timer_start(w->loop, &h->exp_timer, at > now ? (uint64_t)(at - now) : 0);
}

static bool wait_add(struct hubconn *h, const struct wsh_cmd *cmd, uint64_t ticket)
{
    if (waiters == NULL && (waiters = malloc(WAIT_MAX * sizeof(*waiters))) == NULL)
        return false;
    char *tok = malloc(cmd->token_len + 1);
    if (tok == NULL)
        return false;
    memcpy(tok, cmd->token, cmd->token_len);
    tok[cmd->token_len] = '\0';
    waiters[nwaiters++] =
        (struct waiter){ h, ticket, cmd->type == WSH_CMD_REFRESH, cmd->id, tok, cmd->token_len };
    h->waiting = true;
    return true;
}

/* Takes h's entry off the list into *out (its token then the caller's). */
static void wait_take(struct hubconn *h, struct waiter *out)
{
    for (uint32_t i = 0; i < nwaiters; i++) {
        if (waiters[i].h == h) {
            *out = waiters[i];
            waiters[i] = waiters[--nwaiters];
            h->waiting = false;
            return;
        }
    }
}

bool hub_origin_allowed(const struct wsh_http_request *req)
{
    const struct wsh_http_header *o = wsh_http_find(req, "Origin");
    const struct wsh_hub_config *cfg = live_cfg();
    const struct wsh_origin_list origins = { .entries = (const char *const *)cfg->origins,
                                             .nentries = cfg->norigins,
                                             .allow_missing = true };
    return cfg->norigins == 0 ||
           wsh_origin_allowed(&origins, o ? o->value : NULL, o ? o->value_len : 0);
}

int hub_upgrade_check(struct worker *w, struct conn *c, const struct wsh_http_request *req,
                      bool may_wait, uint64_t *ticket, const char **why)
{
    hub_conn_end(w, c); /* checked again after a wait: start afresh */
    if (!hub_enabled) {
        *why = "not found";
        return 404;
    }
    if (!hub_origin_allowed(req)) {
        *why = "origin not allowed";
        return 403;
    }
    struct hubconn *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        *why = "out of memory";
        return 503;
    }
    h->c = c;
    c->hub = h;
    snprintf(h->client, sizeof(h->client), "%u", c->id);
    snprintf(h->anon, sizeof(h->anon), "anon-%u", c->id);
    h->pub.tokens = h->reads.tokens = live_cfg()->limits.publish_burst;
    h->pub.at_ms = h->reads.at_ms = wsh_now_ms();
    h->exp_timer.cb = hub_timer;
    /* Browsers cannot set headers: the token may come in the query. */
    const char *tok = NULL;
    size_t toklen = 0;
    char qtok[WSH_PROTO_DEFAULT_MAX_TOKEN];
    const struct wsh_http_header *a = wsh_http_find(req, "Authorization");
    if (a != NULL) {
        /* Two: a proxy and we could read different ones (as `token` twice
         * in the query). */
        if (wsh_http_count(req, "Authorization") > 1) {
            *why = "Authorization header given twice";
            return 401;
        }
        if (wsh_auth_bearer(a->value, a->value_len, &tok, &toklen) != WSH_OK) {
            *why = "malformed Authorization header";
            return 401;
        }
    } else if (req->query != NULL) {
        size_t n = 0;
        int q = wsh_auth_query_token(req->query, req->query_len, qtok, sizeof(qtok), &n);
        if (q < 0) {
            /* docs/auth.md: a bad escape, a NUL or `token` twice (a proxy
             * and we could read different ones) is refused, as a
             * malformed Authorization header is. */
            *why = "malformed token parameter";
            return 401;
        }
        if (q == 1) {
            tok = qtok;
            toklen = n;
        }
    }
    if (tok != NULL) {
        int perr;
        int v = verify_token(h, tok, toklen, &perr, may_wait ? ticket : NULL);
        if (v == 1)
            return HUB_WAIT;
        if (v != 0 && perr == WSH_PERR_INTERNAL) {
            *why = "internal error";
            return 500;
        }
        if (v != 0) {
            *why = perr == WSH_PERR_TOKEN_EXPIRED ? "token expired" : "invalid token";
            return 403;
        }
    }
    return 0;
}

void hub_open(struct worker *w, struct conn *c)
{
    struct hubconn *h = c->hub;
    if (h->authed) {
        arm_expiry(w, h);
    } else {
        /* LIMITS.md: an unauthenticated connection has a few seconds to
         * send `connect` (Redis CVE-2021-32675). */
        wsh_timer_start(w->loop, &h->exp_timer, live_cfg()->limits.unauth_timeout_ms);
    }
}

static void hub_timer(struct wsh_loop *l, struct wsh_timer *t)
{
    struct worker *w = wsh_loop_user(l);
    struct hubconn *h = (struct hubconn *)((char *)t - offsetof(struct hubconn, exp_timer));
    struct conn *c = h->c;
    if (c->state != CONN_OPEN)
        return;
    if (h->waiting && !h->authed) {
        struct waiter wt = { 0 };
        wait_take(h, &wt);
        free(wt.token);
        keys_wait_count(KEY_WAIT_TIMEOUT);
        /* The token may well be good: "later", not "forbidden". */
        hub_close_retry(w, c, WSH_CLOSE_TRY_LATER, "the signing keys are being fetched");
        return;
    }
    if (!h->authed) {
        hub_disconnect(w, c, WSH_CLOSE_POLICY, "authentication timeout", false);
        return;
    }
    /* Closed when the token would no longer be taken (exp + the leeway
     * verification allows): one taken within the leeway, a little past its
     * exp, gets refresh_required and that much time to refresh, rather
     * than a 4100 a moment after `connected`. */
    int64_t now = wsh_wall_ms();
    if (h->id.exp_ms != 0 && now >= h->id.exp_ms + WSH_AUTH_DEFAULT_LEEWAY_MS) {
        hub_disconnect(w, c, 4100, "token expired", true);
        return;
    }
    if (!h->refresh_sent) {
        struct wsh_jbuf b;
        wsh_jbuf_init(&b);
        int rc = wsh_proto_encode_refresh_required(&b, h->id.exp_ms / 1000, now);
        bool open = send_jbuf(w, c, &b, rc, PUSH_REFRESH_REQUIRED);
        wsh_jbuf_free(&b);
        if (!open)
            return;
        h->refresh_sent = true;
    }
    arm_expiry(w, h);
}

/* An anonymous connection is its own user, so presence, read receipts
 * and `from` still tell connections apart. */
static const char *user_of(const struct hubconn *h, size_t *len)
{
    *len = h->anonymous ? strlen(h->anon) : h->id.sub_len;
    return h->anonymous ? h->anon : h->id.sub;
}

static void presence_entry(const struct hubconn *h, struct wsh_presence_entry *e)
{
    e->user = user_of(h, &e->user_len);
    e->client = h->client;
    e->client_len = strlen(h->client);
    e->info_json = h->anonymous ? NULL : h->id.info;
    e->info_json_len = h->anonymous ? 0 : h->id.info_len;
}

static struct hubsub *find_sub(struct hubconn *h, const char *ch, size_t len)
{
    for (struct hubsub *s = h->subs; s; s = s->conn_next)
        if (s->ch->name_len == len && memcmp(s->ch->name, ch, len) == 0)
            return s;
    return NULL;
}

/* The subscription a command names, or NULL once not_subscribed went out. */
static struct hubsub *cmd_sub(struct worker *w, struct conn *c, struct hubconn *h,
                              const struct wsh_cmd *cmd)
{
    struct hubsub *s = find_sub(h, cmd->channel, cmd->channel_len);
    if (s == NULL)
        cmd_error(w, c, cmd, WSH_PERR_NOT_SUBSCRIBED);
    return s;
}

/* The memory engine's bookkeeping calls fail only on a bad argument or on
 * ENOMEM; neither leaves anything to undo here, so the result is logged.
 * limits.max_channels (WSH_EPOLICY) is not logged: a client can reach it
 * at will, and /metrics counts it. */
static void check(int rc, const char *what)
{
    if (rc != WSH_OK && rc != WSH_EPOLICY)
        wsh_log(WSH_LOG_WARN, "ev=broker_error op=%s err=\"%s\"", what, wsh_strerror(rc));
}

/* A broker call's failure as the client's error code: no room for another
 * channel (limits.max_channels) is 3003, out of memory 5000 (as anywhere),
 * the rest 5001, to be tried again. */
static int broker_error(int rc)
{
    if (rc == WSH_EPOLICY)
        return WSH_PERR_LIMIT_EXCEEDED;
    return rc == WSH_ENOMEM ? WSH_PERR_INTERNAL : WSH_PERR_UNAVAILABLE;
}

static void noop_cb(const struct wsh_broker_result *r, void *user)
{
    (void)r;
    (void)user;
}

/* The channel's last offset (0 before its first message). */
static void on_top(const struct wsh_broker_result *r, void *user)
{
    *(uint64_t *)user = r->offset;
}

static void drop_sub(struct worker *w, struct hubconn *h, struct hubsub *s, bool announce)
{
    struct hubchan *ch = s->ch;
    if (s->prev)
        s->prev->next = s->next;
    else
        ch->local[w->id].head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    atomic_fetch_sub_explicit(&ch->local[w->id].n, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&ch->total, 1, memory_order_relaxed);
    struct hubsub **pp = &h->subs;
    while (*pp != s)
        pp = &(*pp)->conn_next;
    *pp = s->conn_next;
    h->nsubs--;
    /* By what the subscribe did, not by the namespace now: a reload may
     * have turned presence off since, and the entry stayed for good. */
    if (s->present)
        check(wsh_broker_presence_remove(broker, ch->name, h->client, noop_cb, NULL),
              "presence_remove");
    check(wsh_broker_unsubscribe(broker, ch->name, noop_cb, NULL), "unsubscribe");
    /* One client's join comes before its leave (docs/protocol.md): a
     * subscription cut before its join went out (its replay passed the
     * queue, say) leaves without a word. */
    if (announce && s->joined) {
        struct wsh_jbuf b;
        struct wsh_presence_entry e;
        presence_entry(h, &e);
        wsh_jbuf_init(&b);
        if (wsh_proto_encode_join(&b, true, ch->name, ch->name_len, &e, wsh_wall_ms()) == WSH_OK)
            push_to_channel(ch, &b, PUSH_LEAVE, h->c);
        wsh_jbuf_free(&b);
    }
    chan_put(ch);
    free(s);
}

void hub_conn_end(struct worker *w, struct conn *c)
{
    struct hubconn *h = c->hub;
    if (h == NULL)
        return;
    /* However the connection ended, its presence entries go (DESIGN.md 5). */
    while (h->subs)
        drop_sub(w, h, h->subs, true);
    if (h->waiting) {
        struct waiter wt = { 0 };
        wait_take(h, &wt);
        free(wt.token);
    }
    wsh_timer_stop(&h->exp_timer);
    wsh_identity_free(&h->id);
    free(h);
    c->hub = NULL;
}

/* ------------------------------------------------------------------ */
/* Commands                                                             */

struct subscribe_ctx {
    struct worker *w;
    struct conn *c;
    struct hubsub *s;
    int64_t id;
    bool recovered;
    uint64_t offset;
    char epoch[WSH_BROKER_EPOCH_LEN + 1];
    struct wsh_jbuf replay;
    size_t nreplay; /* messages in replay */
    size_t room;    /* bytes the replay may take in the queue (see cmd_subscribe) */
    bool too_big;   /* more than one message, and past room: not encoded further */
};

/* A replayed message's frame header and NUL boundary, at most. */
#define REPLAY_FRAME_HEAD 14

/* Recovery (DESIGN.md 4): `subscribed`, then the missed messages in order.
 * The subscription was registered before the broker was asked, so live
 * messages at or below the reported offset are dropped (s->after). */
static void on_recover(const struct wsh_broker_result *r, void *user)
{
    struct subscribe_ctx *x = user;
    x->recovered = r->recovered;
    x->offset = r->offset;
    snprintf(x->epoch, sizeof(x->epoch), "%s", r->epoch);
    for (size_t i = 0; i < r->nmsgs; i++) {
        const struct wsh_broker_msg *m = &r->msgs[i];
        /* A failure leaves replay._oom set, which the caller checks. */
        if (wsh_proto_encode_message(&x->replay, r->channel, strlen(r->channel), m->offset,
                                     r->epoch, strlen(r->epoch), m->from, strlen(m->from),
                                     m->payload, m->payload_len, m->time_ms) != WSH_OK ||
            wsh_jbuf_reserve(&x->replay, 1) != WSH_OK)
            break;
        /* One JSON message per frame: mark the boundary with a NUL. */
        x->replay.data[x->replay.len++] = '\0';
        x->nreplay++;
        if (x->nreplay > 1 && x->replay.len + REPLAY_FRAME_HEAD * x->nreplay > x->room) {
            x->too_big = true;
            break;
        }
    }
}

/* Whether the session's identity lets it subscribe to the channel p is
 * the parse of: its token's `channels` claim and the personal-channel rule
 * (docs/auth.md). The namespace is checked apart. */
static bool may_subscribe(const struct hubconn *h, const char *name, size_t len,
                          const struct wsh_channel *p)
{
    if (h->anonymous)
        return p->user == NULL;
    return (!h->id.channels_claim && p->user == NULL) || wsh_auth_can_subscribe(&h->id, name, len);
}

/* Ends s and tells the client: `unsubscribed`, with the command's id, or
 * without one when the server ended it. */
static void end_sub(struct worker *w, struct conn *c, struct hubconn *h, struct hubsub *s,
                    int64_t id)
{
    char name[WSH_BROKER_NAME_MAX + 1];
    size_t len = s->ch->name_len < WSH_BROKER_NAME_MAX ? s->ch->name_len : WSH_BROKER_NAME_MAX;
    memcpy(name, s->ch->name, len); /* s and maybe its channel go with drop_sub */
    drop_sub(w, h, s, true);
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    int rc = wsh_proto_encode_unsubscribed(&b, id, name, len, wsh_wall_ms());
    (void)send_jbuf(w, c, &b, rc, PUSH_UNSUBSCRIBED);
    wsh_jbuf_free(&b);
}

/* After a refresh: a subscription the new token no longer allows ends, as
 * if it had never been allowed (its leave goes out), and the client is
 * told with an `unsubscribed` push without id. Otherwise narrowing a
 * user's `channels` at the issuer took effect only at the reconnect. */
static void drop_forbidden_subs(struct worker *w, struct conn *c, struct hubconn *h)
{
    struct hubsub *next;
    for (struct hubsub *s = h->subs; s != NULL && c->state == CONN_OPEN; s = next) {
        next = s->conn_next;
        struct wsh_channel p;
        if (wsh_proto_channel_parse(s->ch->name, s->ch->name_len, WSH_CFG_MAX_CHANNEL_CEIL, &p) &&
            may_subscribe(h, s->ch->name, s->ch->name_len, &p))
            continue;
        end_sub(w, c, h, s, WSH_PROTO_NO_ID);
    }
}

static void cmd_subscribe(struct worker *w, struct conn *c, struct hubconn *h,
                          const struct wsh_cmd *cmd)
{
    const struct wsh_hub_config *cfg = live_cfg();
    const struct wsh_ns_config *ns = wsh_config_namespace(cfg, cmd->channel, cmd->channel_len);
    if (ns == NULL) {
        cmd_error(w, c, cmd, WSH_PERR_UNKNOWN_NAMESPACE);
        return;
    }
    if (!may_subscribe(h, cmd->channel, cmd->channel_len, &cmd->chan)) {
        cmd_error(w, c, cmd, WSH_PERR_FORBIDDEN);
        return;
    }
    if (find_sub(h, cmd->channel, cmd->channel_len)) {
        cmd_error(w, c, cmd, WSH_PERR_ALREADY_SUBSCRIBED);
        return;
    }
    if (h->nsubs >= cfg->limits.max_subscriptions) {
        cmd_error(w, c, cmd, WSH_PERR_TOO_MANY_SUBS);
        return;
    }
    if (cmd->has_recover && !ns->recover) {
        reply_error(w, c, cmd->id, cmd->channel, cmd->channel_len, WSH_PERR_NOT_AVAILABLE,
                    "recovery is off in this namespace");
        return;
    }
    struct hubchan *ch = chan_get(cmd->channel, cmd->channel_len, true);
    if (ch == NULL) {
        cmd_error(w, c, cmd, WSH_PERR_INTERNAL);
        return;
    }
    if (ns->max_subscribers && atomic_load(&ch->total) >= ns->max_subscribers) {
        chan_put(ch);
        cmd_error(w, c, cmd, WSH_PERR_CHANNEL_FULL);
        return;
    }
    struct hubsub *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        chan_put(ch);
        cmd_error(w, c, cmd, WSH_PERR_INTERNAL);
        return;
    }
    /* Before the subscription is linked: a broker that did not take it
     * must not be told of its end (drop_sub unsubscribes). */
    int brc = wsh_broker_subscribe(broker, ch->name, noop_cb, NULL);
    if (brc != WSH_OK) {
        check(brc, "subscribe");
        free(s);
        chan_put(ch);
        cmd_error(w, c, cmd, broker_error(brc));
        return;
    }
    s->ch = ch;
    s->c = c;
    s->next = ch->local[w->id].head;
    if (s->next)
        s->next->prev = s;
    ch->local[w->id].head = s;
    atomic_fetch_add_explicit(&ch->local[w->id].n, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ch->total, 1, memory_order_relaxed);
    s->conn_next = h->subs;
    h->subs = s;
    h->nsubs++;

    /* A replay that would take the queue past half of --max-queue is not
     * sent: recovered false, and the client pages through `history`
     * (since, limit). Sent, it would pass the limit with the first live
     * message behind it (4101), and the client, recovering again from the
     * same offset, would meet the same cut at every try. Half leaves room
     * for the live messages that come while it drains. One message alone
     * may pass, as anywhere (conn_send). */
    size_t half = hub_queue_limit(c) / 2, queued = wsh_wq_bytes(c->wq);
    struct subscribe_ctx x = {
        .w = w, .c = c, .s = s, .id = cmd->id, .room = queued < half ? half - queued : 0
    };
    wsh_jbuf_init(&x.replay);
    /* With an offset/epoch the broker replays what was missed; without, an
     * impossible epoch just reports the channel's current position. */
    char epoch[WSH_PROTO_DEFAULT_MAX_EPOCH + 1] = "-";
    if (cmd->has_recover)
        snprintf(epoch, sizeof(epoch), "%.*s", (int)cmd->recover_epoch_len, cmd->recover_epoch);
    brc = wsh_broker_recover(broker, ch->name, cmd->has_recover ? cmd->recover_offset : 0, epoch,
                             wsh_wall_ms(), on_recover, &x);
    if (brc != WSH_OK || x.replay._oom) {
        /* No position, or a replay short of what was missed: not
         * subscribed, and told to try again (5000), never `subscribed`
         * with an empty epoch or a gap. */
        check(brc, "recover");
        wsh_jbuf_free(&x.replay);
        drop_sub(w, h, s, false);
        cmd_error(w, c, cmd,
                  brc == WSH_OK || brc == WSH_ENOMEM ? WSH_PERR_INTERNAL : WSH_PERR_UNAVAILABLE);
        return;
    }
    s->after = x.offset;
    snprintf(s->epoch, sizeof(s->epoch), "%s", x.epoch);
    bool recovered = cmd->has_recover && x.recovered;
    if (recovered && x.too_big) {
        wsh_log(WSH_LOG_DEBUG, "conn=%u ev=replay_too_large room=%zu", c->id, x.room);
        recovered = false;
    }
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    int rc = wsh_proto_encode_subscribed(&b, cmd->id, ch->name, ch->name_len, x.offset, x.epoch,
                                         strlen(x.epoch), recovered, wsh_wall_ms());
    bool open = send_jbuf(w, c, &b, rc, PUSH_SUBSCRIBED);
    wsh_jbuf_free(&b);
    /* A message that cannot be framed is not skipped: 1011, and the
     * client recovers again; h is gone after. */
    for (size_t off = 0; open && recovered && off < x.replay.len;) {
        size_t n = strlen(x.replay.data + off);
        struct wsh_buf *f = frame_new(WSH_OP_TEXT, (const uint8_t *)x.replay.data + off, n);
        if (f == NULL) {
            conn_close(w, c, WSH_CLOSE_INTERNAL, "out of memory");
            open = false;
            break;
        }
        conn_send(w, c, f);
        metric_add(&w->m.pushes[PUSH_MESSAGE], 1);
        open = c->state == CONN_OPEN;
        off += n + 1;
    }
    wsh_jbuf_free(&x.replay);
    if (!open)
        return;
    if (ns->presence) {
        struct wsh_presence_entry e;
        presence_entry(h, &e);
        int added = wsh_broker_presence_add(broker, ch->name, h->client, e.user, e.info_json,
                                            e.info_json_len, noop_cb, NULL);
        check(added, "presence_add");
        s->present = added == WSH_OK;
    }
    if (ns->join_leave) {
        struct wsh_presence_entry e;
        presence_entry(h, &e);
        wsh_jbuf_init(&b);
        if (wsh_proto_encode_join(&b, false, ch->name, ch->name_len, &e, wsh_wall_ms()) == WSH_OK)
            push_to_channel(ch, &b, PUSH_JOIN, c);
        wsh_jbuf_free(&b);
        s->joined = true;
    }
}

enum { TOKEN_TAKEN, TOKEN_REFUSED, TOKEN_ABUSED };

/* Refusals a client may collect before it counts as not slowing down: a
 * burst's worth, and never fewer than a client keeping a few publishes in
 * flight may meet before it hears of the first (web/wshub.js keeps 8). */
#define REFUSALS_MIN 32.0

/* Takes a token of b (LIMITS.md). Past max(publish_burst, REFUSALS_MIN)
 * refusals that the rate has not forgiven, the client is not slowing down
 * (TOKEN_ABUSED): a client at up to twice the rate is only refused what is
 * over, one that sends faster without pause soon goes past them. */
static int take_token(struct bucket *b)
{
    uint64_t now = wsh_now_ms();
    const struct wsh_limits_config *l = &live_cfg()->limits;
    double refill = now > b->at_ms ? (double)(now - b->at_ms) * l->publish_rate / 1000.0 : 0.0;
    b->at_ms = now;
    b->tokens += refill;
    if (b->tokens > l->publish_burst)
        b->tokens = l->publish_burst;
    b->refused = b->refused > refill ? b->refused - refill : 0.0;
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
        return TOKEN_TAKEN;
    }
    b->refused += 1.0;
    double allowed = l->publish_burst > REFUSALS_MIN ? l->publish_burst : REFUSALS_MIN;
    return b->refused > allowed ? TOKEN_ABUSED : TOKEN_REFUSED;
}

/* A publish, signal or read over the rate: error 3000. A publisher or
 * signaller that goes on regardless gets `disconnect` and close 4103, to
 * come back once a whole burst has refilled. Read receipts have a bucket
 * of their own and are never a reason to close: a client sends them as
 * others' messages arrive, so their rate is the room's, not its own.
 * Returns false when the command may not go on. */
static bool rate_allows(struct worker *w, struct conn *c, struct hubconn *h,
                        const struct wsh_cmd *cmd)
{
    bool read = cmd->type == WSH_CMD_READ;
    int t = take_token(read ? &h->reads : &h->pub);
    if (t == TOKEN_TAKEN)
        return true;
    cmd_error(w, c, cmd, WSH_PERR_RATE_LIMITED);
    if (t == TOKEN_ABUSED && !read) {
        const struct wsh_limits_config *l = &live_cfg()->limits;
        double refill_ms = (double)l->publish_burst * 1000.0 / l->publish_rate;
        uint64_t retry_ms = refill_ms < 500 ? 500 : refill_ms > 60000 ? 60000 : (uint64_t)refill_ms;
        wsh_log(WSH_LOG_INFO, "conn=%u ev=rate_abuse retry_ms=%llu", c->id,
                (unsigned long long)retry_ms);
        disconnect_retry(w, c, WSH_CLOSE_RATE_LIMITED, "rate limited", true, retry_ms);
    }
    return false;
}

/* Returns 0 when the connection may publish on the channel, else the
 * error code: the namespace takes publishes from the server only (2004),
 * the connection is not subscribed (4003), or the token's `publish`
 * patterns do not allow the channel (2004). */
static int may_publish(struct hubconn *h, const struct wsh_cmd *cmd, const struct wsh_ns_config *ns)
{
    if (ns->publish != WSH_PUBLISH_SUBSCRIBERS)
        return WSH_PERR_PUBLISH_DENIED;
    if (find_sub(h, cmd->channel, cmd->channel_len) == NULL)
        return WSH_PERR_NOT_SUBSCRIBED;
    if (!h->anonymous && h->id.publish_claim &&
        !wsh_auth_can_publish(&h->id, cmd->channel, cmd->channel_len))
        return WSH_PERR_PUBLISH_DENIED;
    return 0;
}

struct ack_ctx {
    uint64_t offset;
    int status;
};

/* A publish the broker did not take, as the client's error code. */
static int publish_error(int rc, const struct ack_ctx *a)
{
    if (rc == WSH_ETOOBIG)
        return WSH_PERR_TOO_LARGE;
    return broker_error(rc == WSH_OK ? a->status : rc);
}

static void on_published(const struct wsh_broker_result *r, void *user)
{
    struct ack_ctx *a = user;
    a->offset = r->offset;
    a->status = r->status;
}

static void cmd_publish(struct worker *w, struct conn *c, struct hubconn *h,
                        const struct wsh_cmd *cmd)
{
    const struct wsh_hub_config *cfg = live_cfg();
    const struct wsh_ns_config *ns = wsh_config_namespace(cfg, cmd->channel, cmd->channel_len);
    if (ns == NULL) {
        cmd_error(w, c, cmd, WSH_PERR_UNKNOWN_NAMESPACE);
        return;
    }
    int denied = may_publish(h, cmd, ns);
    if (denied) {
        cmd_error(w, c, cmd, denied);
        return;
    }
    if (!rate_allows(w, c, h, cmd))
        return;
    struct wsh_jbuf pb;
    wsh_jbuf_init(&pb);
    const char *payload = cmd->payload_raw;
    size_t plen = cmd->payload_raw_len;
    if (payload == NULL) {
        if (wsh_proto_payload_dump(cmd, &pb) != WSH_OK) {
            wsh_jbuf_free(&pb);
            cmd_error(w, c, cmd, WSH_PERR_INTERNAL);
            return;
        }
        payload = pb.data;
        plen = pb.len;
    }
    char chname[WSH_BROKER_NAME_MAX + 1];
    char msgid[WSH_PROTO_DEFAULT_MAX_MSG_ID + 1];
    snprintf(chname, sizeof(chname), "%.*s", (int)cmd->channel_len, cmd->channel);
    if (cmd->msg_id)
        snprintf(msgid, sizeof(msgid), "%.*s", (int)cmd->msg_id_len, cmd->msg_id);
    size_t ulen;
    const char *user = user_of(h, &ulen);
    struct wsh_broker_publish_req req = {
        .channel = chname,
        .payload = payload,
        .payload_len = plen,
        .msg_id = cmd->msg_id ? msgid : NULL,
        .from = user,
        .now_ms = wsh_wall_ms(),
        .opts = { .history_size = ns->history_size,
                  .history_ttl_ms = (uint64_t)ns->history_ttl_s * 1000u,
                  .dedup_window_ms = (uint64_t)ns->dedup_window_s * 1000u },
    };
    struct ack_ctx a = { 0 };
    int rc = wsh_broker_publish(broker, &req, on_published, &a);
    wsh_jbuf_free(&pb);
    if (rc != WSH_OK || a.status != WSH_OK) {
        cmd_error(w, c, cmd, publish_error(rc, &a));
        return;
    }
    /* The ack follows acceptance by the broker (DESIGN.md 4); a duplicate
     * msg_id gets the original offset and was not delivered again. */
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    rc = wsh_proto_encode_ack(&b, cmd->id, cmd->channel, cmd->channel_len, a.offset, wsh_wall_ms());
    (void)send_jbuf(w, c, &b, rc, PUSH_ACK);
    wsh_jbuf_free(&b);
}

static void cmd_unsubscribe(struct worker *w, struct conn *c, struct hubconn *h,
                            const struct wsh_cmd *cmd)
{
    struct hubsub *s = cmd_sub(w, c, h, cmd);
    if (s != NULL)
        end_sub(w, c, h, s, cmd->id);
}

struct list_ctx {
    struct wsh_jbuf *b;
    int64_t id;
    const struct wsh_cmd *cmd;
    uint32_t threshold;
    bool position_only; /* history with limit 0: offset and epoch, no messages */
    int rc;
    size_t count; /* presence: members, when asked for the count first */
};

static void on_presence_count(const struct wsh_broker_result *r, void *user)
{
    ((struct list_ctx *)user)->count = r->count;
}

static void on_presence(const struct wsh_broker_result *r, void *user)
{
    struct list_ctx *x = user;
    size_t n = r->nmembers;
    bool count_only = x->threshold && n > x->threshold;
    struct wsh_presence_entry *e = count_only ? NULL : calloc(n ? n : 1, sizeof(*e));
    if (!count_only && e == NULL) {
        x->rc = WSH_ENOMEM;
        return;
    }
    for (size_t i = 0; e && i < n; i++) {
        e[i].user = r->members[i].user;
        e[i].user_len = strlen(r->members[i].user);
        e[i].client = r->members[i].client;
        e[i].client_len = strlen(r->members[i].client);
        e[i].info_json = r->members[i].info_len ? r->members[i].info : NULL;
        e[i].info_json_len = r->members[i].info_len;
    }
    x->rc = wsh_proto_encode_presence(x->b, x->id, x->cmd->channel, x->cmd->channel_len, n, e,
                                      count_only ? 0 : n, wsh_wall_ms());
    free(e);
}

static void on_history(const struct wsh_broker_result *r, void *user)
{
    struct list_ctx *x = user;
    size_t n = x->position_only ? 0 : r->nmsgs;
    struct wsh_history_entry *e = calloc(n ? n : 1, sizeof(*e));
    if (e == NULL) {
        x->rc = WSH_ENOMEM;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        e[i].offset = r->msgs[i].offset;
        e[i].from = r->msgs[i].from;
        e[i].from_len = strlen(r->msgs[i].from);
        e[i].payload_json = r->msgs[i].payload;
        e[i].payload_json_len = r->msgs[i].payload_len;
        e[i].time_ms = r->msgs[i].time_ms;
    }
    x->rc = wsh_proto_encode_history(x->b, x->id, x->cmd->channel, x->cmd->channel_len, r->offset,
                                     r->epoch, strlen(r->epoch), e, n, wsh_wall_ms());
    free(e);
}

/* The presence list, or the history hr asks for, of hr->channel into
 * x->b: the reply a /ws client gets. WSH_OK, or the broker's or the
 * encoder's error (-1 when no reply came). */
static int list_run(struct list_ctx *x, bool presence, const struct wsh_broker_history_req *hr)
{
    if (presence && x->threshold) {
        /* Over the threshold the reply is the count alone: the count
         * copies nothing, where the list copies every entry, under the
         * channel's lock, to be thrown away. (A list that has grown over
         * it since is cut to its count by on_presence.) */
        int rc = wsh_broker_presence_count(broker, hr->channel, on_presence_count, x);
        if (rc != WSH_OK)
            return rc;
        if (x->count > x->threshold)
            return wsh_proto_encode_presence(x->b, x->id, x->cmd->channel, x->cmd->channel_len,
                                             x->count, NULL, 0, wsh_wall_ms());
    }
    int rc = presence ? wsh_broker_presence_list(broker, hr->channel, on_presence, x)
                      : wsh_broker_history(broker, hr, on_history, x);
    return rc != WSH_OK ? rc : x->rc;
}

static bool may_read_channel(struct hubconn *h, const struct wsh_cmd *cmd)
{
    /* Presence and history of a channel are for its subscribers. */
    return find_sub(h, cmd->channel, cmd->channel_len) != NULL;
}

/* The namespace keeps what `presence` (or `history`) asks for: else 4004. */
static bool ns_lists(const struct wsh_ns_config *ns, bool presence)
{
    return presence ? ns->presence : ns->history_size > 0;
}

/* A history limit as the broker takes it, whose 0 is "all": a limit of
 * 0 (the position only, list_ctx.position_only) asks it for one message,
 * which is not sent. */
static size_t broker_limit(bool has_limit, uint64_t limit)
{
    return !has_limit ? 0 : limit == 0 ? 1 : (size_t)limit;
}

static void cmd_list(struct worker *w, struct conn *c, struct hubconn *h, const struct wsh_cmd *cmd)
{
    const struct wsh_hub_config *cfg = live_cfg();
    const struct wsh_ns_config *ns = wsh_config_namespace(cfg, cmd->channel, cmd->channel_len);
    if (ns == NULL) {
        cmd_error(w, c, cmd, WSH_PERR_UNKNOWN_NAMESPACE);
        return;
    }
    bool presence = cmd->type == WSH_CMD_PRESENCE;
    if (!ns_lists(ns, presence)) {
        cmd_error(w, c, cmd, WSH_PERR_NOT_AVAILABLE);
        return;
    }
    if (!may_read_channel(h, cmd)) {
        cmd_error(w, c, cmd, WSH_PERR_FORBIDDEN);
        return;
    }
    char chname[WSH_BROKER_NAME_MAX + 1];
    snprintf(chname, sizeof(chname), "%.*s", (int)cmd->channel_len, cmd->channel);
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    struct list_ctx x = { .b = &b,
                          .id = cmd->id,
                          .cmd = cmd,
                          .threshold = ns->presence_count_threshold,
                          .position_only = cmd->has_limit && cmd->limit == 0,
                          .rc = -1 };
    struct wsh_broker_history_req hr = { .channel = chname,
                                         .has_since = cmd->has_since,
                                         .since = cmd->since,
                                         .limit = broker_limit(cmd->has_limit, cmd->limit),
                                         .now_ms = wsh_wall_ms() };
    if (list_run(&x, presence, &hr) == WSH_OK)
        (void)send_jbuf(w, c, &b, WSH_OK, presence ? PUSH_PRESENCE : PUSH_HISTORY);
    else
        cmd_error(w, c, cmd, WSH_PERR_INTERNAL);
    wsh_jbuf_free(&b);
}

static void cmd_signal_or_read(struct worker *w, struct conn *c, struct hubconn *h,
                               const struct wsh_cmd *cmd)
{
    struct hubsub *s = cmd_sub(w, c, h, cmd);
    if (s == NULL)
        return;
    /* A signal reaches every subscriber as a publish does, and is allowed
     * where a publish is: not in a namespace only the server publishes
     * to, nor past the token's publish claim. */
    int perr = cmd->type == WSH_CMD_SIGNAL ? may_publish(h, cmd, chan_ns(s->ch)) : 0;
    if (perr != 0) {
        cmd_error(w, c, cmd, perr);
        return;
    }
    if (!rate_allows(w, c, h, cmd))
        return;
    size_t ulen;
    const char *user = user_of(h, &ulen);
    struct wsh_jbuf b, pb;
    wsh_jbuf_init(&b);
    wsh_jbuf_init(&pb);
    if (cmd->type == WSH_CMD_SIGNAL) {
        /* Ephemeral: relayed to the other subscribers, never stored. */
        const char *payload = cmd->payload_raw;
        size_t plen = cmd->payload_raw_len;
        if (payload == NULL && wsh_proto_payload_dump(cmd, &pb) == WSH_OK) {
            payload = pb.data;
            plen = pb.len;
        }
        /* Out of memory: the sender is told (5000), as for a publish;
         * never a signal with its payload lost. */
        if (payload == NULL ||
            wsh_proto_encode_signal(&b, cmd->channel, cmd->channel_len, user, ulen, payload, plen,
                                    wsh_wall_ms()) != WSH_OK)
            cmd_error(w, c, cmd, WSH_PERR_INTERNAL);
        else
            push_to_channel(s->ch, &b, PUSH_SIGNAL, c);
    } else {
        /* Read receipt: kept per user where the channel has history, and
         * relayed to the channel. Not kept for an anonymous session: its
         * user ends with the connection, and each reconnect would add a
         * cursor the channel keeps as long as its history. An offset past
         * the channel's last message is relayed and acknowledged as that
         * message's, as the broker keeps it: other readers are not told
         * of reads of messages that do not exist. (Unknown when the
         * broker failed: then as sent.) */
        uint64_t top = UINT64_MAX;
        if (chan_ns(s->ch)->history_size > 0 && !h->anonymous)
            check(wsh_broker_read_set(broker, s->ch->name, user, cmd->offset, on_top, &top),
                  "read_set");
        else
            check(wsh_broker_read_get(broker, s->ch->name, user, on_top, &top), "read_get");
        uint64_t offset = cmd->offset < top ? cmd->offset : top;
        if (wsh_proto_encode_read(&b, cmd->channel, cmd->channel_len, user, ulen, offset,
                                  wsh_wall_ms()) == WSH_OK)
            push_to_channel(s->ch, &b, PUSH_READ, c);
        wsh_jbuf_reset(&b);
        int rc = wsh_proto_encode_ack(&b, cmd->id, cmd->channel, cmd->channel_len, offset,
                                      wsh_wall_ms());
        (void)send_jbuf(w, c, &b, rc, PUSH_ACK);
    }
    wsh_jbuf_free(&b);
    wsh_jbuf_free(&pb);
}

/* Returns false when the command was refused, or waits for keys (only
 * when may_wait: see waiters). */
static bool cmd_connect_or_refresh(struct worker *w, struct conn *c, struct hubconn *h,
                                   const struct wsh_cmd *cmd, bool may_wait)
{
    bool refresh = cmd->type == WSH_CMD_REFRESH;
    if (!refresh && h->connected) {
        reply_error(w, c, cmd->id, NULL, 0, WSH_PERR_ALREADY_CONNECTED, NULL);
        return false;
    }
    if (!refresh && h->authed && cmd->token == NULL) {
        /* Authenticated at the handshake: connect just reports who we are. */
    } else if (cmd->token != NULL) {
        int perr = WSH_PERR_BAD_TOKEN;
        uint64_t ticket = 0;
        bool can_wait = may_wait && !h->waiting && nwaiters < WAIT_MAX;
        int v = verify_token(h, cmd->token, cmd->token_len, &perr, can_wait ? &ticket : NULL);
        if (v == 1 && wait_add(h, cmd, ticket)) {
            wsh_log(WSH_LOG_DEBUG, "conn=%u ev=%s_waits_for_keys", c->id,
                    refresh ? "refresh" : "connect");
            if (!refresh)
                conn_hold(w, c, HOLD_KEYS, true);
            return false;
        }
        if (v == 1)
            perr = WSH_PERR_INTERNAL; /* no memory to wait with */
        if (v != 0) {
            reply_error(w, c, cmd->id, NULL, 0, perr, NULL);
            if (!refresh && perr == WSH_PERR_INTERNAL)
                hub_disconnect(w, c, WSH_CLOSE_INTERNAL, "internal error", true);
            else if (!refresh)
                hub_disconnect(w, c, perr == WSH_PERR_TOKEN_EXPIRED ? 4100 : 4500,
                               perr == WSH_PERR_TOKEN_EXPIRED ? "token expired" : "invalid token",
                               perr == WSH_PERR_TOKEN_EXPIRED);
            return false;
        }
    } else if (!refresh && live_cfg()->auth.allow_anonymous) {
        h->authed = true;
        h->anonymous = true;
    } else {
        reply_error(w, c, cmd->id, NULL, 0, WSH_PERR_UNAUTHORIZED, "a token is required");
        if (!refresh)
            hub_disconnect(w, c, 4500, "authentication required", false);
        return false;
    }
    if (h->anonymous)
        wsh_timer_stop(&h->exp_timer);
    else
        arm_expiry(w, h);
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    size_t ulen;
    const char *user = user_of(h, &ulen);
    int rc = refresh ? wsh_proto_encode_refreshed(&b, cmd->id, h->id.exp_ms / 1000, wsh_wall_ms())
                     : wsh_proto_encode_connected(&b, cmd->id, h->client, strlen(h->client), user,
                                                  ulen, h->id.exp_ms / 1000, wsh_wall_ms());
    if (!refresh)
        h->connected = true; /* before the reply, which may end h */
    bool open = send_jbuf(w, c, &b, rc, refresh ? PUSH_REFRESHED : PUSH_CONNECTED);
    wsh_jbuf_free(&b);
    if (refresh && open)
        drop_forbidden_subs(w, c, h);
    return true;
}

/* A rotation that removes a key (from auth.jwks_url's set, or by SIGHUP)
 * means tokens it signed are no longer trusted. A session that
 * authenticated with one is asked to refresh at once (refresh_required)
 * and, unless it does, is closed as an expired token (4100, reconnect)
 * KEY_GONE_GRACE_MS later; one whose token expires sooner is left to
 * that. A set with no key revokes nothing: that is an issuer's mistake,
 * not a rotation. Each worker checks its own sessions when it sees a new
 * key set (it is woken for that). */
#define KEY_GONE_GRACE_MS REFRESH_AHEAD_MS
static _Thread_local uint64_t keys_checked_gen;

static void keys_check(struct worker *w)
{
    if (keys_generation() == keys_checked_gen)
        return;
    struct wsh_auth *a = keys_auth(&keys_checked_gen);
    if (a == NULL)
        return;
    int64_t now = wsh_wall_ms(), until = now + KEY_GONE_GRACE_MS;
    size_t n = 0;
    for (struct conn *c = w->conns; c != NULL; c = c->next) {
        struct hubconn *h = c->hub;
        if (h == NULL || c->state != CONN_OPEN || !h->authed || h->anonymous ||
            wsh_auth_has_key(a, h->id.key_tag) || (h->id.exp_ms != 0 && h->id.exp_ms <= until))
            continue;
        h->id.exp_ms = until;
        h->refresh_sent = false;
        arm_expiry(w, h);
        n++;
    }
    if (n > 0) {
        atomic_fetch_add(&key_removed_sessions, n);
        wsh_log(WSH_LOG_INFO, "ev=key_removed worker=%d sessions_to_refresh=%zu", w->id, n);
    }
}

void hub_keys_wake(struct worker *w)
{
    keys_check(w);
    if (nwaiters == 0)
        return;
    uint64_t done = keys_fetched();
    for (uint32_t i = 0; i < nwaiters;) {
        if (waiters[i].ticket > done) {
            i++;
            continue;
        }
        struct hubconn *h = waiters[i].h;
        struct conn *c = h->c;
        struct waiter wt;
        wait_take(h, &wt);
        struct wsh_cmd cmd;
        memset(&cmd, 0, sizeof(cmd));
        cmd.type = wt.refresh ? WSH_CMD_REFRESH : WSH_CMD_CONNECT;
        cmd.id = wt.id;
        cmd.token = wt.token;
        cmd.token_len = wt.token_len;
        /* h may be gone after a refusal (the close ends it); c is not. */
        bool ok = cmd_connect_or_refresh(w, c, h, &cmd, false);
        keys_wait_count(ok ? KEY_WAIT_ACCEPTED : KEY_WAIT_REFUSED);
        free(wt.token);
        if (!wt.refresh)
            conn_hold(w, c, HOLD_KEYS, false);
        i = 0; /* what that did may have ended other waiters */
    }
}

static void command(struct worker *w, struct conn *c, unsigned opcode, const uint8_t *p, size_t n);

/* A message this large or larger gives its parse's memory back to the
 * kernel afterwards (below). */
#define TRIM_AFTER ((size_t)1 << 20)

void hub_message(struct worker *w, struct conn *c, unsigned opcode, const uint8_t *p, size_t n)
{
    command(w, c, opcode, p, n);
    /* jansson's tree of a message costs up to ~80 times its size
     * (limits.md), in small blocks that free() keeps in the allocator's
     * bins: one 4 MiB message left 300 MB resident for good. Returned at
     * once, only for messages that large (a larger max_message than the
     * default's 64 KiB), as malloc_trim walks every arena. */
    if (n >= TRIM_AFTER)
        malloc_trim(0);
}

static void command(struct worker *w, struct conn *c, unsigned opcode, const uint8_t *p, size_t n)
{
    struct hubconn *h = c->hub;
    if (opcode != WSH_OP_TEXT) {
        hub_disconnect(w, c, WSH_CLOSE_UNSUPPORTED, "binary messages are not part of /ws", false);
        return;
    }
    const struct wsh_hub_config *cfg = live_cfg();
    if (!h->authed && n > cfg->limits.unauth_max_message) {
        hub_disconnect(w, c, WSH_CLOSE_POLICY, "authenticate first", false);
        return;
    }
    struct wsh_cmd cmd;
    int code = 0;
    const char *msg = NULL;
    struct wsh_proto_limits pl = proto_limits(cfg);
    if (wsh_proto_parse((const char *)p, n, &pl, &cmd, &code, &msg) != WSH_OK) {
        metric_add(&w->m.commands[WSH_CMD_NONE], 1); /* "invalid" in /metrics */
        bool authed = h->authed;                     /* the reply may close c and free h */
        reply_error(w, c, cmd.id, NULL, 0, code, msg);
        wsh_cmd_free(&cmd);
        if (code == WSH_PERR_INTERNAL)
            /* Memory ran out reading a command that may be valid, before
             * its id was known: the error cannot answer it, and the
             * client would wait for its reply. 1011 makes it reconnect. */
            conn_close(w, c, WSH_CLOSE_INTERNAL, "out of memory");
        else if (!authed)
            hub_disconnect(w, c, WSH_CLOSE_POLICY, "authenticate first", false);
        return;
    }
    metric_add(&w->m.commands[(unsigned)cmd.type < 10 ? (unsigned)cmd.type : 0], 1);
    if (!h->authed && cmd.type != WSH_CMD_CONNECT) {
        reply_error(w, c, cmd.id, NULL, 0, WSH_PERR_UNAUTHORIZED, NULL);
        hub_disconnect(w, c, WSH_CLOSE_POLICY, "authenticate first", false);
        wsh_cmd_free(&cmd);
        return;
    }
    switch (cmd.type) {
    case WSH_CMD_CONNECT:
    case WSH_CMD_REFRESH:
        (void)cmd_connect_or_refresh(w, c, h, &cmd, true);
        break;
    case WSH_CMD_SUBSCRIBE:
        cmd_subscribe(w, c, h, &cmd);
        break;
    case WSH_CMD_UNSUBSCRIBE:
        cmd_unsubscribe(w, c, h, &cmd);
        break;
    case WSH_CMD_PUBLISH:
        cmd_publish(w, c, h, &cmd);
        break;
    case WSH_CMD_PRESENCE:
    case WSH_CMD_HISTORY:
        cmd_list(w, c, h, &cmd);
        break;
    case WSH_CMD_SIGNAL:
    case WSH_CMD_READ:
        cmd_signal_or_read(w, c, h, &cmd);
        break;
    default:
        reply_error(w, c, cmd.id, NULL, 0, WSH_PERR_UNKNOWN_TYPE, NULL);
        break;
    }
    wsh_cmd_free(&cmd);
}

/* ------------------------------------------------------------------ */
/* What the HTTP API (api.c) asks of the hub                            */

const char *hub_api_key(void)
{
    return hub_enabled ? live_cfg()->api_key : NULL;
}

unsigned hub_json_depth(void)
{
    return hub_enabled ? live_cfg()->limits.json_depth : WSH_PROTO_DEFAULT_MAX_DEPTH;
}

/* The namespace of a channel the HTTP API names, or NULL with the error:
 * an unknown namespace (4001), or a name that is not a channel (4000). */
static const struct wsh_ns_config *api_ns(const char *channel, int *err)
{
    const struct wsh_hub_config *cfg = live_cfg();
    const struct wsh_ns_config *ns = wsh_config_namespace(cfg, channel, strlen(channel));
    struct wsh_channel parts;
    size_t max_channel = cfg->limits.max_channel;
    /* The name first, as a /ws command is parsed before its namespace is
     * looked up: "nons:a,b" is a bad name (4000), not an unknown one. */
    if (!wsh_proto_channel_parse(channel, strlen(channel), max_channel ? max_channel : 128, &parts))
        *err = WSH_PERR_BAD_CHANNEL;
    else if (ns == NULL)
        *err = WSH_PERR_UNKNOWN_NAMESPACE;
    else
        return ns;
    return NULL;
}

int hub_channel_check(const char *channel)
{
    int err = 0;
    return api_ns(channel, &err) != NULL ? 0 : err;
}

int hub_publish(const char *channel, const char *payload, size_t plen, const char *msg_id,
                uint64_t *offset)
{
    int err = 0;
    const struct wsh_ns_config *ns = api_ns(channel, &err);
    if (ns == NULL)
        return err;
    if (plen > hub_message_limit())
        return WSH_PERR_TOO_LARGE;
    struct wsh_broker_publish_req req = {
        .channel = channel,
        .payload = payload,
        .payload_len = plen,
        .msg_id = msg_id,
        .from = NULL,
        .now_ms = wsh_wall_ms(),
        .opts = { .history_size = ns->history_size,
                  .history_ttl_ms = (uint64_t)ns->history_ttl_s * 1000u,
                  .dedup_window_ms = (uint64_t)ns->dedup_window_s * 1000u },
    };
    struct ack_ctx a = { 0 };
    int rc = wsh_broker_publish(broker, &req, on_published, &a);
    if (rc != WSH_OK || a.status != WSH_OK)
        return publish_error(rc, &a);
    *offset = a.offset;
    return 0;
}

int hub_list(const char *channel, bool presence, size_t limit, struct wsh_jbuf *b)
{
    int err = 0;
    const struct wsh_ns_config *ns = api_ns(channel, &err);
    if (ns == NULL)
        return err;
    if (!ns_lists(ns, presence))
        return WSH_PERR_NOT_AVAILABLE; /* as cmd_list answers a client */
    struct wsh_cmd fake = { .channel = channel, .channel_len = strlen(channel) };
    struct list_ctx x = {
        .b = b, .id = WSH_PROTO_NO_ID, .cmd = &fake, .position_only = limit == 0, .rc = -1
    };
    struct wsh_broker_history_req hr = { .channel = channel,
                                         .limit = broker_limit(limit != HUB_LIST_ALL, limit),
                                         .now_ms = wsh_wall_ms() };
    int rc = list_run(&x, presence, &hr);
    return rc == WSH_OK && !b->_oom ? 0 : WSH_PERR_INTERNAL;
}

static void on_info(const struct wsh_broker_result *r, void *user)
{
    *(struct wsh_broker_info *)user = *r->info;
}

int hub_broker_info(struct wsh_broker_info *out)
{
    return wsh_broker_info(broker, on_info, out);
}

int hub_revoke(const char *who, int64_t secs)
{
    return revoke(who, wsh_wall_ms() + secs * 1000);
}

/* who is 'u' + user id, or 'j' + token id. */
void hub_kick_local(struct worker *w, const char *who, unsigned code, const char *reason)
{
    struct conn *next;
    const char *id = who + 1;
    for (struct conn *c = w->conns; c != NULL; c = next) {
        next = c->next;
        if (c->hub == NULL || c->state != CONN_OPEN || !c->hub->authed)
            continue;
        bool hit;
        if (who[0] == 'j') {
            hit = !c->hub->anonymous && c->hub->id.jti_len > 0 && strcmp(c->hub->id.jti, id) == 0;
        } else {
            size_t ulen;
            const char *u = user_of(c->hub, &ulen);
            hit = ulen == strlen(id) && memcmp(u, id, ulen) == 0;
        }
        if (hit)
            hub_disconnect(w, c, code, reason, false);
    }
}
