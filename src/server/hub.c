/* The /ws endpoint: the JSON envelope protocol of DESIGN.md 3 on top of the
 * codec (wsh_hub: proto, config, auth) and the broker (memory engine).
 *
 * Channels are shared by all workers like raw channels: a registry record
 * with one subscriber list per worker, touched only by that worker. A
 * publish goes through the broker, which assigns the offset, stores the
 * message and calls on_message once, in offset order; there the `message`
 * push is encoded once into one frame that every recipient's queue shares,
 * on this worker directly and on the others through their inboxes. */
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
    char anon[32]; /* user id of an anonymous connection: "anon-<client>" */
    double tokens; /* publish/signal token bucket */
    int64_t refill_ms;
    uint32_t nsubs;
    struct hubsub *subs;
    struct wsh_timer exp_timer; /* authentication deadline, then token expiry */
    struct conn *c;
};

static struct wsh_hub_config hubcfg;
static struct wsh_broker *broker;
static size_t max_input; /* bytes of a /ws message (hub_start) */

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
    return (struct wsh_proto_limits){ .max_input = max_input,
                                      .max_depth = cfg->limits.json_depth,
                                      .max_channel = cfg->limits.max_channel };
}
static struct chanreg hub_reg = CHANREG_INIT;
static bool hub_enabled;
static bool have_config; /* --config was given */

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------ */
/* Sending JSON                                                         */

static void send_jbuf(struct worker *w, struct conn *c, struct wsh_jbuf *b, enum push_type type)
{
    if (b->_oom || b->len == 0)
        return;
    struct wsh_buf *f = NULL;
    if (c->pmd && wsh_pmd_worth_compressing(&wsh_cfg.pmd, b->len))
        f = frame_deflate(c->pmd, 0, WSH_OP_TEXT, (const uint8_t *)b->data, b->len);
    if (f == NULL)
        f = frame_new(WSH_OP_TEXT, (const uint8_t *)b->data, b->len);
    if (f == NULL) {
        conn_close(w, c, WSH_CLOSE_INTERNAL, "out of memory");
        return;
    }
    conn_send(w, c, f);
    metric_add(&w->m.pushes[type], 1);
}

static void reply_error(struct worker *w, struct conn *c, int64_t id, const char *ch, size_t chlen,
                        int code, const char *msg)
{
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    if (wsh_proto_encode_error(&b, id, ch, chlen, code, msg, wall_ms()) == WSH_OK)
        send_jbuf(w, c, &b, PUSH_ERROR);
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
                                    wall_ms()) == WSH_OK)
        send_jbuf(w, c, &b, PUSH_DISCONNECT);
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

/* Over limits.admission_rate (worker.c admit_upgrade): the client may come
 * back after retry_ms, its own slot (LIMITS.md 1013, try again later). */
void hub_overload_notice(struct worker *w, struct conn *c, uint64_t retry_ms)
{
    disconnect_retry(w, c, WSH_CLOSE_TRY_LATER, "server busy, try again later", true, retry_ms);
}

static void hub_disconnect(struct worker *w, struct conn *c, unsigned code, const char *reason,
                           bool reconnect)
{
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    if (wsh_proto_encode_disconnect(&b, code, reason, strlen(reason), reconnect,
                                    reconnect ? 500 : 0, wall_ms()) == WSH_OK)
        send_jbuf(w, c, &b, PUSH_DISCONNECT);
    wsh_jbuf_free(&b);
    conn_close(w, c, code, reason);
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
    revoked_sweep(wall_ms());
}

/* ------------------------------------------------------------------ */
/* Fan-out                                                              */

static void send_lagged(struct worker *w, struct hubsub *s)
{
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    if (wsh_proto_encode_lagged(&b, s->ch->name, s->ch->name_len, s->lagged_from, s->epoch,
                                strlen(s->epoch), wall_ms()) == WSH_OK)
        send_jbuf(w, s->c, &b, PUSH_LAGGED);
    wsh_jbuf_free(&b);
    s->lagged_from = 0;
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
        send_lagged(w, s);
        return false;
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
    bool lag_policy = chan_ns(ch)->slow_consumer == WSH_SLOW_DROP_OLDEST && offset != 0;
    struct zcache zc;
    zcache_init(&zc, frame);
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
        conn_send(w, s->c, wsh_buf_ref(zcache_frame(&zc, s->c)));
        sent++;
    }
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
        if (s->lagged_from != 0)
            send_lagged(w, s);
}

/* Delivers one encoded push to every subscriber of ch on every worker.
 * A message (offset != 0) goes through every worker's inbox, this one's
 * too: on_message runs under the broker's per-channel order lock, so the
 * inboxes receive offsets in order, and a worker drains its inbox in
 * order. Delivering to local subscribers at once instead would let a later
 * offset published here overtake an earlier one still in this worker's
 * inbox from another worker. Pushes without an offset go out at once. */
static void fan_out(struct hubchan *ch, struct wsh_buf *frame, uint64_t offset, int64_t t_ms,
                    enum push_type type, const struct conn *skip)
{
    struct worker *w = wsh_self;
    for (int i = 0; i < wsh_nworkers; i++) {
        if (w != NULL && i == w->id && offset == 0)
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
    if (w != NULL && offset == 0)
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
/* Setup                                                                */

/* Reads a whole file of at most max bytes into a NUL-terminated buffer. */
static char *read_file(const char *path, size_t max, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "cannot read %s", path);
        return NULL;
    }
    char *buf = malloc(max + 2);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    bool failed = buf != NULL && ferror(f);
    fclose(f);
    if (buf == NULL || failed || n > max) {
        if (buf == NULL)
            snprintf(err, errlen, "out of memory");
        else if (failed)
            snprintf(err, errlen, "cannot read %s", path);
        else
            snprintf(err, errlen, "%s is over %zu bytes", path, max);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* The keys tokens are verified with, built from the configuration's auth
 * section (auth.keys and auth.jwks_file) at start and again on SIGHUP.
 * It owns copies of everything, so the configuration it came from can be
 * freed. Workers never read it directly: each copies it into its own
 * struct wsh_auth when keys_gen moves (current_auth). */
struct keyset {
    struct wsh_auth_key keys[WSH_AUTH_KEYS_MAX];
    size_t nkeys;
    char *own[2 * WSH_AUTH_KEYS_MAX]; /* kid copies, secret copies and PEM texts */
    size_t nown;
    struct wsh_jwks jwks;
};

static pthread_mutex_t keys_mu = PTHREAD_MUTEX_INITIALIZER;
static struct keyset *keys_now;     /* guarded by keys_mu */
static _Atomic uint64_t keys_gen;   /* bumped under keys_mu each time keys_now changes */
static _Atomic size_t keys_count;   /* keys_now->nkeys, for /metrics */
static _Atomic size_t keys_skipped; /* JWKS keys ignored by the last load, for /metrics */
static _Atomic int workers_up;      /* workers that can be woken (hub_workers_ready) */
static char *config_file;           /* --config, kept for reloads */

static void keyset_free(struct keyset *ks)
{
    if (ks == NULL)
        return;
    for (size_t i = 0; i < ks->nown; i++) {
        volatile char *p = ks->own[i];
        for (size_t j = 0; p[j] != '\0'; j++) /* secrets do not linger */
            p[j] = 0;
        free(ks->own[i]);
    }
    wsh_jwks_free(&ks->jwks);
    free(ks);
}

static char *keyset_own(struct keyset *ks, char *p)
{
    if (p != NULL)
        ks->own[ks->nown++] = p;
    return p;
}

static void on_jwks_skip(void *ud, size_t index, const char *kid, const char *why)
{
    (void)ud;
    char shown[65]; /* the kid comes from the file: shown short and safe */
    snprintf(shown, sizeof(shown), "%s", kid != NULL ? kid : "");
    wsh_log(WSH_LOG_WARN, "ev=jwks_skip index=%zu kid=\"%s\" reason=\"%s\"", index,
            wsh_log_value(shown), why);
}

/* Builds the key set of one auth section and checks it as each worker
 * will use it. Returns NULL with err set when any key cannot be used. */
static struct keyset *keyset_build(const struct wsh_auth_config *ac, const char *fetched,
                                   size_t fetched_len, char *err, size_t errlen)
{
    struct keyset *ks = calloc(1, sizeof(*ks));
    if (ks == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < ac->nkeys; i++) {
        const struct wsh_key_config *k = &ac->keys[i];
        struct wsh_auth_key *d = &ks->keys[ks->nkeys++];
        d->alg = (enum wsh_auth_alg)k->alg;
        d->kid = k->kid != NULL ? keyset_own(ks, strdup(k->kid)) : NULL;
        char *key;
        size_t n = 0;
        char rerr[256] = "out of memory";
        if (k->secret != NULL) {
            n = k->secret_len;
            if ((key = malloc(n + 1)) != NULL) {
                memcpy(key, k->secret, n);
                key[n] = '\0';
            }
        } else {
            key = read_file(k->public_key_file, WSH_AUTH_KEY_MAX, &n, rerr, sizeof(rerr));
        }
        if (keyset_own(ks, key) == NULL || (k->kid != NULL && d->kid == NULL)) {
            snprintf(err, errlen, "auth.keys[%zu]%s: %s", i,
                     k->secret != NULL ? "" : ".public_key_file", rerr);
            goto fail;
        }
        d->key = (const uint8_t *)key;
        d->key_len = n;
    }
    /* A JWK Set: the file's, or the last one fetched from jwks_url
     * (none until the first fetch succeeds). */
    const char *src = ac->jwks_file != NULL ? "auth.jwks_file" : "auth.jwks_url";
    if (ac->jwks_file != NULL || fetched != NULL) {
        size_t n = fetched_len;
        char jerr[256];
        char *text = NULL;
        if (ac->jwks_file != NULL)
            text = read_file(ac->jwks_file, WSH_AUTH_JWKS_MAX, &n, jerr, sizeof(jerr));
        const char *doc = ac->jwks_file != NULL ? text : fetched;
        int rc = doc == NULL
                     ? WSH_EINVAL
                     : wsh_jwks_parse(doc, n, on_jwks_skip, NULL, &ks->jwks, jerr, sizeof(jerr));
        free(text);
        if (rc != WSH_OK) {
            snprintf(err, errlen, "%s: %s", src, rc == WSH_ENOMEM ? "out of memory" : jerr);
            goto fail;
        }
        if (ks->jwks.nkeys == 0) {
            snprintf(err, errlen, "%s: the set holds no usable key", src);
            goto fail;
        }
        if (ks->nkeys + ks->jwks.nkeys > WSH_AUTH_KEYS_MAX) {
            snprintf(err, errlen, "auth: %zu keys and %zu from the JWK Set, more than %u",
                     ks->nkeys, ks->jwks.nkeys, WSH_AUTH_KEYS_MAX);
            goto fail;
        }
        for (size_t i = 0; i < ks->jwks.nkeys; i++)
            ks->keys[ks->nkeys++] = ks->jwks.keys[i];
    }
    if (ks->nkeys == 0)
        return ks; /* no token can be verified: anonymous access only */
    /* Check the keys once here, so a bad key fails at start (or fails the
     * reload) rather than in a worker. */
    struct wsh_auth *probe;
    int bad = -1;
    struct wsh_auth_opts ao = { .keys = ks->keys, .nkeys = ks->nkeys };
    int rc = wsh_auth_create(&ao, &probe, &bad);
    if (rc != WSH_OK) {
        if (bad >= 0 && (size_t)bad < ac->nkeys) {
            const char *why = wsh_auth_key_problem(&ks->keys[bad]);
            snprintf(err, errlen, "auth.keys[%d]: the key cannot be used for %s: %s", bad,
                     wsh_auth_alg_name(ks->keys[bad].alg),
                     why != NULL ? why : "same alg and kid as an earlier key");
        } else if (bad >= 0) {
            snprintf(err, errlen, "%s: a key has the same alg and kid as one of auth.keys", src);
        } else {
            snprintf(err, errlen, "auth: %s", wsh_strerror(rc));
        }
        goto fail;
    }
    wsh_auth_destroy(probe);
    return ks;

fail:
    keyset_free(ks);
    return NULL;
}

/* Makes ks the key set every worker verifies with from its next token on. */
static void keyset_publish(struct keyset *ks)
{
    pthread_mutex_lock(&keys_mu);
    struct keyset *old = keys_now;
    keys_now = ks;
    atomic_store(&keys_count, ks->nkeys);
    atomic_store(&keys_skipped, ks->jwks.nskipped);
    atomic_fetch_add(&keys_gen, 1);
    pthread_mutex_unlock(&keys_mu);
    keyset_free(old); /* workers copy under keys_mu, so no one holds it */
    /* Each worker checks its sessions against the new keys (keys_check). */
    int nw = atomic_load(&workers_up);
    for (int i = 0; i < nw; i++)
        worker_wake(&wsh_workers[i]);
}

/* The auth section in force: hubcfg's at start, a reloaded one's after
 * SIGHUP (a reference of it then). The JWK Set fetcher builds from it too. */
static pthread_mutex_t cfg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct wsh_hub_config *auth_cfg; /* guarded by cfg_mu */

/* auth.jwks_url: a helper thread fetches the set at start, every
 * jwks_refresh_s, on SIGHUP, and when a token names a kid (or an alg) no
 * key has, at most once per JWKS_KICK_MS: that is how a key the issuer
 * has just published is picked up before the next refresh. A failed fetch
 * keeps the keys in use and is retried after 1, 2, 4 ... s, up to 60 s
 * (or the refresh interval). The URL, CA file and interval are read at
 * start; changing them needs a restart. */
#define JWKS_KICK_MS    10000
#define JWKS_TIMEOUT_MS 10000

static struct {
    pthread_t thread;
    bool running;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* on CLOCK_MONOTONIC */
    bool now;          /* fetch at once; guarded by mu */
    uint64_t begun;    /* fetches begun; guarded by mu */
    _Atomic uint64_t ended;
    _Atomic bool stop;
    _Atomic int64_t last_kick_ms;
    struct wsh_http_url url;
    struct wsh_http_proxy proxy; /* HTTPS_PROXY, when it applies to url */
    bool use_proxy;
    char *url_text, *ca_file;
    uint32_t refresh_s;
    char *body; /* the last set fetched that loaded; guarded by cfg_mu */
    size_t body_len;
} jf = { .mu = PTHREAD_MUTEX_INITIALIZER };

static _Atomic uint64_t jwks_fetches[2]; /* ok, error */
static _Atomic int64_t jwks_loaded_ms;   /* wall clock of the last good fetch, 0 before */
static _Atomic uint64_t key_waits[3];    /* KEY_WAIT_* */

int hub_init(const char *config_path, char *err, size_t errlen)
{
    if (config_path) {
        if (wsh_config_load(config_path, &hubcfg, err, errlen) != WSH_OK)
            return -1;
        have_config = true;
        if ((config_file = strdup(config_path)) == NULL)
            return -1;
    } else {
        wsh_config_defaults(&hubcfg);
    }
    atomic_store(&live, &hubcfg);
    auth_cfg = &hubcfg;
    struct keyset *ks = keyset_build(&hubcfg.auth, NULL, 0, err, errlen);
    if (ks == NULL)
        return -1;
    keyset_publish(ks);
    return 0;
}

static bool same_str(const char *a, const char *b)
{
    return a == NULL ? b == NULL : b != NULL && strcmp(a, b) == 0;
}

void hub_workers_ready(void)
{
    atomic_store(&workers_up, wsh_nworkers);
}

const char *hub_not_ready(void)
{
    /* Until the first fetch loads, every token would wait and then fail:
     * a balancer should send clients to a node that has keys. */
    if (hub_enabled && jf.running && atomic_load(&keys_count) == 0)
        return "no token keys yet (auth.jwks_url has not loaded)";
    return NULL;
}

uint64_t hub_keys_fetched(void)
{
    return atomic_load(&jf.ended);
}

void hub_key_wait_count(int result)
{
    atomic_fetch_add(&key_waits[result], 1);
}

void hub_key_waits(uint64_t out[3])
{
    for (int i = 0; i < 3; i++)
        out[i] = atomic_load(&key_waits[i]);
}

static _Atomic uint64_t key_removed_sessions; /* keys_check */

uint64_t hub_key_removed_sessions(void)
{
    return atomic_load(&key_removed_sessions);
}

/* The fetch a token with an unknown kid may wait for: the one queued, or
 * else the one under way; 0 when none is coming (the kick was rate
 * limited and the last fetch has ended: the token is refused at once). */
static uint64_t jwks_ticket(void)
{
    if (!jf.running)
        return 0;
    uint64_t t = 0;
    pthread_mutex_lock(&jf.mu);
    if (jf.now)
        t = jf.begun + 1;
    else if (jf.begun > atomic_load(&jf.ended))
        t = jf.begun;
    pthread_mutex_unlock(&jf.mu);
    return t;
}

/* Asks the fetcher for a fetch now; `forced` skips the rate limit. */
static void jwks_kick(bool forced)
{
    if (!jf.running)
        return;
    int64_t t = (int64_t)wsh_now_ms();
    if (!forced && t - atomic_load(&jf.last_kick_ms) < JWKS_KICK_MS)
        return;
    atomic_store(&jf.last_kick_ms, t);
    pthread_mutex_lock(&jf.mu);
    jf.now = true;
    pthread_cond_signal(&jf.cv);
    pthread_mutex_unlock(&jf.mu);
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

static struct wsh_hub_config *config_ref(struct wsh_hub_config *cfg)
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

int hub_reload_keys(struct wsh_hub_config *cfg, char *err, size_t errlen, size_t *nkeys,
                    size_t *nskipped)
{
    const struct wsh_auth_config *na = &cfg->auth;
    if (!same_str(na->jwks_url, jf.url_text) ||
        (jf.url_text != NULL &&
         (!same_str(na->jwks_ca_file, jf.ca_file) || na->jwks_refresh_s != jf.refresh_s))) {
        snprintf(err, errlen,
                 "auth.jwks_url, jwks_ca_file and jwks_refresh_s change only with "
                 "a restart");
        return -1;
    }
    pthread_mutex_lock(&cfg_mu);
    struct keyset *ks = keyset_build(na, jf.body, jf.body_len, err, errlen);
    size_t now = atomic_load(&keys_count);
    int rc = 0;
    if (ks == NULL) {
        rc = -1;
    } else if (ks->nkeys == 0 && now == 0) {
        rc = 1; /* no keys before or after: nothing to do */
    } else if (ks->nkeys == 0 && na->jwks_url == NULL) {
        /* Every token would fail from here on; that is never what a key
         * rotation means. */
        snprintf(err, errlen, "auth: the new configuration has no key; kept the %zu current ones",
                 now);
        rc = -1;
    }
    if (rc != 0) {
        pthread_mutex_unlock(&cfg_mu);
        keyset_free(ks);
        jwks_kick(true);
        return rc;
    }
    struct wsh_hub_config *old = auth_cfg;
    auth_cfg = config_ref(cfg);
    *nkeys = ks->nkeys;
    *nskipped = ks->jwks.nskipped;
    /* Published under cfg_mu, so a fetch that built from the old section
     * cannot publish after this one. */
    keyset_publish(ks);
    pthread_mutex_unlock(&cfg_mu);
    hub_config_release(old);
    jwks_kick(true);
    return 0;
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
    struct wsh_hub_config *old = atomic_exchange(&live, config_ref(cfg));
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

void hub_restart_needed(const struct wsh_hub_config *cfg, char *out, size_t outlen)
{
    const struct wsh_limits_config *a = &hubcfg.limits, *b = &cfg->limits;
    snprintf(out, outlen, "%s%s", a->max_message != b->max_message ? "limits.max_message " : "",
             a->max_client_memory != b->max_client_memory ? "limits.max_client_memory " : "");
    size_t n = strlen(out);
    if (n > 0)
        out[n - 1] = '\0'; /* the last space */
}

void hub_reload_settings(struct wsh_hub_config *cfg, struct hub_settings *out)
{
    const struct wsh_limits_config *l = &cfg->limits;
    *out = (struct hub_settings){ .norigins = cfg->norigins,
                                  .api_key = cfg->api_key != NULL,
                                  .admission_rate = l->admission_rate,
                                  .max_connections = l->max_connections,
                                  .per_ip = l->max_connections_per_ip,
                                  .ip_rate = l->handshake_rate_per_ip };
    admit_rate_set(l->admission_rate, l->admission_burst);
    admit_limits_set(l->max_connections, l->max_connections_per_ip, l->handshake_rate_per_ip,
                     l->handshake_burst_per_ip, l->ipv6_prefix);
    live_replace(cfg);
}

/* One fetch of auth.jwks_url; on success the keys from it are in use. */
static bool jwks_fetch_once(void)
{
    char err[512], body_err[256];
    char *body = NULL;
    size_t n = 0;
    int status = 0;
    int64_t t0 = (int64_t)wsh_now_ms();
    if (fetch_get(&jf.url, jf.use_proxy ? &jf.proxy : NULL, jf.ca_file, WSH_AUTH_JWKS_MAX,
                  JWKS_TIMEOUT_MS, &jf.stop, &body, &n, &status, body_err, sizeof(body_err)) != 0) {
        if (atomic_load(&jf.stop))
            return false; /* shutting down: not a failure of the issuer */
        snprintf(err, sizeof(err), "%s", body_err);
    } else {
        pthread_mutex_lock(&cfg_mu);
        struct keyset *ks = keyset_build(&auth_cfg->auth, body, n, err, sizeof(err));
        size_t nk = 0, sk = 0;
        if (ks != NULL) {
            free(jf.body);
            jf.body = body;
            jf.body_len = n;
            body = NULL;
            nk = ks->nkeys;
            sk = ks->jwks.nskipped;
            keyset_publish(ks); /* under cfg_mu: see hub_reload_keys */
        }
        pthread_mutex_unlock(&cfg_mu);
        free(body);
        if (ks != NULL) {
            atomic_fetch_add(&jwks_fetches[0], 1);
            atomic_store(&jwks_loaded_ms, wall_ms());
            wsh_log(WSH_LOG_INFO, "ev=jwks_fetch ok=1 host=%s keys=%zu jwks_skipped=%zu ms=%lld",
                    jf.url.host, nk, sk, (long long)((int64_t)wsh_now_ms() - t0));
            return true;
        }
    }
    atomic_fetch_add(&jwks_fetches[1], 1);
    wsh_log(WSH_LOG_WARN, "ev=jwks_fetch ok=0 host=%s status=%d err=\"%s\"", jf.url.host, status,
            wsh_log_value(err));
    return false;
}

static void *jwks_main(void *arg)
{
    (void)arg;
    uint32_t backoff = 1;
    pthread_mutex_lock(&jf.mu);
    while (!atomic_load(&jf.stop)) {
        jf.now = false;
        jf.begun++;
        pthread_mutex_unlock(&jf.mu);
        bool ok = jwks_fetch_once();
        /* Tokens parked on this fetch get their answer now, whatever the
         * result: the keys are what they will be for a while. */
        atomic_fetch_add(&jf.ended, 1);
        int nw = atomic_load(&workers_up);
        for (int i = 0; i < nw; i++)
            worker_wake(&wsh_workers[i]);
        uint32_t cap = jf.refresh_s < 60 ? jf.refresh_s : 60;
        uint32_t wait_s = ok ? jf.refresh_s : backoff;
        backoff = ok ? 1 : backoff * 2 > cap ? cap : backoff * 2;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += wait_s;
        pthread_mutex_lock(&jf.mu);
        while (!atomic_load(&jf.stop) && !jf.now &&
               pthread_cond_timedwait(&jf.cv, &jf.mu, &until) == 0) {
        }
    }
    pthread_mutex_unlock(&jf.mu);
    return NULL;
}

/* The value of an environment variable as curl reads it: lower case
 * first; empty is unset. */
static const char *proxy_env(const char *lower, const char *upper)
{
    const char *v = getenv(lower);
    if (v == NULL || *v == '\0')
        v = getenv(upper);
    return v != NULL && *v != '\0' ? v : NULL;
}

int hub_fetch_prepare(char *err, size_t errlen)
{
    const struct wsh_auth_config *a = &hubcfg.auth;
    if (a->jwks_url == NULL || jf.url_text != NULL)
        return 0;
    if (!wsh_http_url_parse(a->jwks_url, &jf.url) || (jf.url_text = strdup(a->jwks_url)) == NULL ||
        (a->jwks_ca_file != NULL && (jf.ca_file = strdup(a->jwks_ca_file)) == NULL)) {
        snprintf(err, errlen, "cannot start the auth.jwks_url fetcher");
        return -1;
    }
    /* HTTPS_PROXY and NO_PROXY, as curl and Go read them, for an issuer
     * that is not on loopback. A proxy that cannot be understood stops the
     * start: the keys must not be fetched around it. */
    const char *px = proxy_env("https_proxy", "HTTPS_PROXY");
    if (px != NULL) {
        if (!wsh_http_proxy_parse(px, &jf.proxy)) {
            snprintf(err, errlen,
                     "HTTPS_PROXY: not a proxy URL of the form http://[user:password@]host[:port]");
            return -1;
        }
        jf.use_proxy =
            jf.url.tls && !jf.url.loopback &&
            !wsh_http_no_proxy(proxy_env("no_proxy", "NO_PROXY"), jf.url.host, jf.url.port);
        char where[sizeof(jf.proxy.url.host) + 16];
        if (wsh_http_url_authority(&jf.proxy.url, true, where, sizeof(where)) < 0)
            where[0] = '\0';
        wsh_log(WSH_LOG_INFO, "ev=jwks_proxy proxy=%s used=%d", where, jf.use_proxy ? 1 : 0);
    }
    jf.refresh_s = a->jwks_refresh_s;
    return 0;
}

int hub_fetch_start(char *err, size_t errlen)
{
    if (hub_fetch_prepare(err, errlen) != 0)
        return -1;
    if (jf.url_text == NULL)
        return 0;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&jf.cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&jf.thread, NULL, jwks_main, NULL) != 0) {
        snprintf(err, errlen, "cannot start the auth.jwks_url fetcher");
        return -1;
    }
    jf.running = true;
    return 0;
}

void hub_fetch_stop(void)
{
    if (!jf.running)
        return;
    atomic_store(&jf.stop, true);
    pthread_mutex_lock(&jf.mu);
    pthread_cond_signal(&jf.cv);
    pthread_mutex_unlock(&jf.mu);
    pthread_join(jf.thread, NULL);
    jf.running = false;
    free(jf.body);
    free(jf.url_text);
    free(jf.ca_file);
    jf.body = jf.url_text = jf.ca_file = NULL;
}

void hub_jwks_fetches(uint64_t *ok, uint64_t *failed, int64_t *loaded_ms)
{
    *loaded_ms = atomic_load(&jwks_loaded_ms);
    *ok = atomic_load(&jwks_fetches[0]);
    *failed = atomic_load(&jwks_fetches[1]);
}

size_t hub_auth_keys(size_t *nskipped)
{
    *nskipped = atomic_load(&keys_skipped);
    return atomic_load(&keys_count);
}

int hub_start(uint64_t max_message)
{
    /* One bound for a /ws message everywhere it is checked: the WebSocket
     * layer (1009), the JSON codec (1004) and the broker's payloads. */
    max_input = (size_t)max_message;
    struct wsh_broker_memory_opts bo = { .max_payload = (size_t)max_message,
                                         .on_message = on_broker_message };
    if (wsh_broker_memory_create(&bo, &broker) != WSH_OK)
        return -1;
    hub_enabled = true;
    return 0;
}

uint64_t hub_max_message(void)
{
    return have_config ? hubcfg.limits.max_message : 0;
}

void hub_conn_limits(struct wsh_config *cfg)
{
    /* --max-client-memory, when given, overrides the file (SIZE_MAX: not given). */
    bool memory_flag = cfg->max_client_memory != SIZE_MAX;
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

/* One struct wsh_auth per worker, copied from keys_now: each worker
 * verifies with its own parsed keys and takes no lock per token. */
static _Thread_local struct wsh_auth *auth;
static _Thread_local uint64_t auth_gen; /* the keys_gen auth was built at */

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

/* The worker's key set, rebuilt first when a reload published a new one. */
static struct wsh_auth *current_auth(void)
{
    if (atomic_load_explicit(&keys_gen, memory_order_acquire) == auth_gen)
        return auth;
    pthread_mutex_lock(&keys_mu);
    uint64_t gen = atomic_load(&keys_gen);
    struct wsh_auth *a = NULL;
    int rc = WSH_OK;
    if (keys_now != NULL && keys_now->nkeys > 0) {
        struct wsh_auth_opts ao = { .keys = keys_now->keys, .nkeys = keys_now->nkeys };
        int bad;
        rc = wsh_auth_create(&ao, &a, &bad);
    }
    pthread_mutex_unlock(&keys_mu);
    if (rc != WSH_OK)
        return auth; /* out of memory: keep the old keys and try again next token */
    wsh_auth_destroy(auth);
    auth = a;
    auth_gen = gen;
    return auth;
}

void hub_worker_exit(struct worker *w)
{
    (void)w;
    wsh_auth_destroy(auth);
    auth = NULL;
    auth_gen = 0;
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
    (void)current_auth();
    return auth != NULL || atomic_load(&keys_count) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ */
/* Revocation (POST /api/disconnect): users refused until a time, and   */
/* token ids refused until their expiry. Shared by all workers: one     */
/* expiring set keyed 'u' + user or 'j' + jti, at most                  */
/* limits.max_revocations live entries, looked up in O(1) at every      */
/* token check.                                                         */

static pthread_mutex_t revoked_mu = PTHREAD_MUTEX_INITIALIZER;
static struct wsh_expset *revoked; /* created at the first revocation */
/* A key is a kind byte and a user or token id, in a buffer of
 * WSH_AUTH_SUB_MAX + 2 with its NUL. */
_Static_assert(WSH_AUTH_JTI_MAX <= WSH_AUTH_SUB_MAX, "a jti key must fit the user key buffer");

/* Adds or extends the entry of key ('u' + user, or 'j' + token id: the
 * `who` of api_kick); expired entries make room first. Returns false when
 * the set is full of live entries (a revocation is never pushed out by
 * another) or memory ran out. */
static bool revoke(const char *key, int64_t until_ms)
{
    pthread_mutex_lock(&revoked_mu);
    size_t max = live_cfg()->limits.max_revocations;
    if (revoked == NULL)
        revoked = wsh_expset_new(max);
    else
        wsh_expset_set_max(revoked, max);
    bool ok =
        revoked != NULL && wsh_expset_add(revoked, key, strlen(key), until_ms, wall_ms()) == WSH_OK;
    pthread_mutex_unlock(&revoked_mu);
    return ok;
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
    int64_t now = wall_ms();
    pthread_mutex_lock(&revoked_mu);
    bool hit = revoked != NULL && (revoked_has('u', id->sub, now) ||
                                   (id->jti_len > 0 && revoked_has('j', id->jti, now)));
    pthread_mutex_unlock(&revoked_mu);
    return hit;
}

size_t hub_revocations(void)
{
    pthread_mutex_lock(&revoked_mu);
    size_t n = revoked != NULL ? wsh_expset_count(revoked) : 0;
    pthread_mutex_unlock(&revoked_mu);
    return n;
}

/* From the 2 s sweep: expired entries give their memory back. */
static void revoked_sweep(int64_t now_ms)
{
    pthread_mutex_lock(&revoked_mu);
    if (revoked != NULL)
        wsh_expset_purge(revoked, now_ms);
    pthread_mutex_unlock(&revoked_mu);
}

/* ------------------------------------------------------------------ */
/* Connections                                                          */

static void hub_timer(struct wsh_loop *l, struct wsh_timer *t);

/* Checks a token and, when good, makes it h's identity: returns 0, or -1
 * with *perr set. A token whose kid (or alg) no key has may be signed by a
 * key the issuer has just published: the set is fetched again (rate
 * limited), and when `wait` is given and a fetch is coming, 1 is returned
 * with *wait set to it (hub_keys_fetched() reaching it means: check again,
 * without wait, for the final verdict). */
static int verify_token(struct hubconn *h, const char *tok, size_t len, int *perr, uint64_t *wait)
{
    struct wsh_auth *a = current_auth();
    struct wsh_identity id;
    memset(&id, 0, sizeof(id));
    int ecode = WSH_AUTH_EKEY; /* no key yet: the first fetch may still be due */
    if (a == NULL || wsh_auth_verify(a, tok, len, wall_ms(), &id, &ecode) != WSH_OK) {
        if (ecode == WSH_AUTH_EKEY || ecode == WSH_AUTH_EALG) {
            jwks_kick(false);
            if (wait != NULL && (*wait = jwks_ticket()) != 0)
                return 1;
        }
        *perr =
            wsh_auth_error_close_code(ecode) == 4100 ? WSH_PERR_TOKEN_EXPIRED : WSH_PERR_BAD_TOKEN;
        return -1;
    }
    if (is_revoked(&id)) {
        wsh_identity_free(&id);
        *perr = WSH_PERR_BAD_TOKEN;
        return -1;
    }
    if (h->authed && !h->anonymous && strcmp(id.sub, h->id.sub) != 0) {
        wsh_identity_free(&id); /* a refresh may not change the user */
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
    int64_t now = wall_ms();
    int64_t at = h->id.exp_ms - REFRESH_AHEAD_MS;
    if (h->refresh_sent)
        at = h->id.exp_ms;
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

int hub_upgrade_check(struct worker *w, struct conn *c, const struct wsh_http_request *req,
                      bool may_wait, uint64_t *ticket, const char **why)
{
    hub_conn_end(w, c); /* checked again after a wait: start afresh */
    if (!hub_enabled) {
        *why = "not found";
        return 404;
    }
    const struct wsh_http_header *o = wsh_http_find(req, "Origin");
    const struct wsh_hub_config *cfg = live_cfg();
    const struct wsh_origin_list origins = { .entries = (const char *const *)cfg->origins,
                                             .nentries = cfg->norigins,
                                             .allow_missing = true };
    if (cfg->norigins > 0 &&
        !wsh_origin_allowed(&origins, o ? o->value : NULL, o ? o->value_len : 0)) {
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
    h->tokens = live_cfg()->limits.publish_burst;
    h->refill_ms = wall_ms();
    h->exp_timer.cb = hub_timer;
    /* Browsers cannot set headers: the token may come in the query. */
    const char *tok = NULL;
    size_t toklen = 0;
    char qtok[WSH_PROTO_DEFAULT_MAX_TOKEN];
    const struct wsh_http_header *a = wsh_http_find(req, "Authorization");
    if (a != NULL) {
        if (wsh_auth_bearer(a->value, a->value_len, &tok, &toklen) != WSH_OK) {
            *why = "malformed Authorization header";
            return 401;
        }
    } else if (req->query != NULL) {
        size_t n = 0;
        if (wsh_auth_query_token(req->query, req->query_len, qtok, sizeof(qtok), &n) == 1) {
            tok = qtok;
            toklen = n;
        }
    }
    if (tok != NULL) {
        int perr;
        int v = verify_token(h, tok, toklen, &perr, may_wait ? ticket : NULL);
        if (v == 1)
            return HUB_WAIT;
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
        hub_key_wait_count(KEY_WAIT_TIMEOUT);
        /* The token may well be good: "later", not "forbidden". */
        hub_close_retry(w, c, WSH_CLOSE_TRY_LATER, "the signing keys are being fetched");
        return;
    }
    if (!h->authed) {
        hub_disconnect(w, c, WSH_CLOSE_POLICY, "authentication timeout", false);
        return;
    }
    int64_t now = wall_ms();
    if (h->id.exp_ms != 0 && now >= h->id.exp_ms) {
        hub_disconnect(w, c, 4100, "token expired", true);
        return;
    }
    if (!h->refresh_sent) {
        struct wsh_jbuf b;
        wsh_jbuf_init(&b);
        if (wsh_proto_encode_refresh_required(&b, h->id.exp_ms / 1000, now) == WSH_OK)
            send_jbuf(w, c, &b, PUSH_REFRESH_REQUIRED);
        wsh_jbuf_free(&b);
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
 * ENOMEM; neither leaves anything to undo here, so the result is logged. */
static void check(int rc, const char *what)
{
    if (rc != WSH_OK)
        wsh_log(WSH_LOG_WARN, "ev=broker_error op=%s err=\"%s\"", what, wsh_strerror(rc));
}

static void noop_cb(const struct wsh_broker_result *r, void *user)
{
    (void)r;
    (void)user;
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
    if (chan_ns(ch)->presence)
        check(wsh_broker_presence_remove(broker, ch->name, h->client, noop_cb, NULL),
              "presence_remove");
    check(wsh_broker_unsubscribe(broker, ch->name, noop_cb, NULL), "unsubscribe");
    if (announce && chan_ns(ch)->join_leave) {
        struct wsh_jbuf b;
        struct wsh_presence_entry e;
        presence_entry(h, &e);
        wsh_jbuf_init(&b);
        if (wsh_proto_encode_join(&b, true, ch->name, ch->name_len, &e, wall_ms()) == WSH_OK)
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
};

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
        if (wsh_proto_encode_message(&x->replay, r->channel, strlen(r->channel), m->offset,
                                     r->epoch, strlen(r->epoch), m->from, strlen(m->from),
                                     m->payload, m->payload_len, m->time_ms) != WSH_OK)
            break;
        /* One JSON message per frame: mark the boundary with a NUL. */
        if (wsh_jbuf_reserve(&x->replay, 1) == WSH_OK)
            x->replay.data[x->replay.len++] = '\0';
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
    bool allowed = h->anonymous
                       ? cmd->chan.user == NULL
                       : (h->id.nchannels == 0 && cmd->chan.user == NULL) ||
                             wsh_auth_can_subscribe(&h->id, cmd->channel, cmd->channel_len);
    if (!allowed) {
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
    check(wsh_broker_subscribe(broker, ch->name, noop_cb, NULL), "subscribe");

    struct subscribe_ctx x = { .w = w, .c = c, .s = s, .id = cmd->id };
    wsh_jbuf_init(&x.replay);
    /* With an offset/epoch the broker replays what was missed; without, an
     * impossible epoch just reports the channel's current position. */
    char epoch[WSH_PROTO_DEFAULT_MAX_EPOCH + 1] = "-";
    if (cmd->has_recover)
        snprintf(epoch, sizeof(epoch), "%.*s", (int)cmd->recover_epoch_len, cmd->recover_epoch);
    check(wsh_broker_recover(broker, ch->name, cmd->has_recover ? cmd->recover_offset : 0, epoch,
                             wall_ms(), on_recover, &x),
          "recover");
    s->after = x.offset;
    snprintf(s->epoch, sizeof(s->epoch), "%s", x.epoch);
    bool recovered = cmd->has_recover && x.recovered;
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    if (wsh_proto_encode_subscribed(&b, cmd->id, ch->name, ch->name_len, x.offset, x.epoch,
                                    strlen(x.epoch), recovered, wall_ms()) == WSH_OK)
        send_jbuf(w, c, &b, PUSH_SUBSCRIBED);
    wsh_jbuf_free(&b);
    if (recovered) {
        for (size_t off = 0; off < x.replay.len;) {
            size_t n = strlen(x.replay.data + off);
            struct wsh_buf *f = frame_new(WSH_OP_TEXT, (const uint8_t *)x.replay.data + off, n);
            if (f) {
                conn_send(w, c, f);
                metric_add(&w->m.pushes[PUSH_MESSAGE], 1);
            }
            off += n + 1;
        }
    }
    wsh_jbuf_free(&x.replay);
    if (ns->presence) {
        struct wsh_presence_entry e;
        presence_entry(h, &e);
        check(wsh_broker_presence_add(broker, ch->name, h->client, e.user, e.info_json,
                                      e.info_json_len, noop_cb, NULL),
              "presence_add");
    }
    if (ns->join_leave) {
        struct wsh_presence_entry e;
        presence_entry(h, &e);
        wsh_jbuf_init(&b);
        if (wsh_proto_encode_join(&b, false, ch->name, ch->name_len, &e, wall_ms()) == WSH_OK)
            push_to_channel(ch, &b, PUSH_JOIN, c);
        wsh_jbuf_free(&b);
    }
}

/* Token bucket per connection for publish and signal (LIMITS.md). */
static bool take_token(struct hubconn *h)
{
    int64_t now = wall_ms();
    const struct wsh_limits_config *l = &live_cfg()->limits;
    h->tokens += (double)(now - h->refill_ms) * l->publish_rate / 1000.0;
    h->refill_ms = now;
    if (h->tokens > l->publish_burst)
        h->tokens = l->publish_burst;
    if (h->tokens < 1.0)
        return false;
    h->tokens -= 1.0;
    return true;
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
    if (!h->anonymous && h->id.npublish > 0 &&
        !wsh_auth_can_publish(&h->id, cmd->channel, cmd->channel_len))
        return WSH_PERR_PUBLISH_DENIED;
    return 0;
}

struct ack_ctx {
    uint64_t offset;
    int status;
};

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
    if (!take_token(h)) {
        cmd_error(w, c, cmd, WSH_PERR_RATE_LIMITED);
        return;
    }
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
        .now_ms = wall_ms(),
        .opts = { .history_size = ns->history_size,
                  .history_ttl_ms = (uint64_t)ns->history_ttl_s * 1000u,
                  .dedup_window_ms = (uint64_t)ns->dedup_window_s * 1000u },
    };
    struct ack_ctx a = { 0 };
    int rc = wsh_broker_publish(broker, &req, on_published, &a);
    wsh_jbuf_free(&pb);
    if (rc != WSH_OK || a.status != WSH_OK) {
        cmd_error(w, c, cmd, rc == WSH_ETOOBIG ? WSH_PERR_TOO_LARGE : WSH_PERR_UNAVAILABLE);
        return;
    }
    /* The ack follows acceptance by the broker (DESIGN.md 4); a duplicate
     * msg_id gets the original offset and was not delivered again. */
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    if (wsh_proto_encode_ack(&b, cmd->id, cmd->channel, cmd->channel_len, a.offset, wall_ms()) ==
        WSH_OK)
        send_jbuf(w, c, &b, PUSH_ACK);
    wsh_jbuf_free(&b);
}

static void cmd_unsubscribe(struct worker *w, struct conn *c, struct hubconn *h,
                            const struct wsh_cmd *cmd)
{
    struct hubsub *s = cmd_sub(w, c, h, cmd);
    if (s == NULL)
        return;
    drop_sub(w, h, s, true);
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    if (wsh_proto_encode_unsubscribed(&b, cmd->id, cmd->channel, cmd->channel_len, wall_ms()) ==
        WSH_OK)
        send_jbuf(w, c, &b, PUSH_UNSUBSCRIBED);
    wsh_jbuf_free(&b);
}

struct list_ctx {
    struct wsh_jbuf *b;
    int64_t id;
    const struct wsh_cmd *cmd;
    uint32_t threshold;
    int rc;
};

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
                                      count_only ? 0 : n, wall_ms());
    free(e);
}

static void on_history(const struct wsh_broker_result *r, void *user)
{
    struct list_ctx *x = user;
    struct wsh_history_entry *e = calloc(r->nmsgs ? r->nmsgs : 1, sizeof(*e));
    if (e == NULL) {
        x->rc = WSH_ENOMEM;
        return;
    }
    for (size_t i = 0; i < r->nmsgs; i++) {
        e[i].offset = r->msgs[i].offset;
        e[i].from = r->msgs[i].from;
        e[i].from_len = strlen(r->msgs[i].from);
        e[i].payload_json = r->msgs[i].payload;
        e[i].payload_json_len = r->msgs[i].payload_len;
        e[i].time_ms = r->msgs[i].time_ms;
    }
    x->rc = wsh_proto_encode_history(x->b, x->id, x->cmd->channel, x->cmd->channel_len, r->offset,
                                     r->epoch, strlen(r->epoch), e, r->nmsgs, wall_ms());
    free(e);
}

static bool may_read_channel(struct hubconn *h, const struct wsh_cmd *cmd)
{
    /* Presence and history of a channel are for its subscribers. */
    return find_sub(h, cmd->channel, cmd->channel_len) != NULL;
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
    if (presence ? !ns->presence : ns->history_size == 0) {
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
    struct list_ctx x = {
        .b = &b, .id = cmd->id, .cmd = cmd, .threshold = ns->presence_count_threshold, .rc = -1
    };
    int rc;
    if (presence) {
        rc = wsh_broker_presence_list(broker, chname, on_presence, &x);
    } else {
        struct wsh_broker_history_req hr = { .channel = chname,
                                             .has_since = cmd->has_since,
                                             .since = cmd->since,
                                             .limit = cmd->has_limit ? cmd->limit : 0,
                                             .now_ms = wall_ms() };
        rc = wsh_broker_history(broker, &hr, on_history, &x);
    }
    if (rc == WSH_OK && x.rc == WSH_OK)
        send_jbuf(w, c, &b, presence ? PUSH_PRESENCE : PUSH_HISTORY);
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
    if (!take_token(h)) {
        cmd_error(w, c, cmd, WSH_PERR_RATE_LIMITED);
        return;
    }
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
        if (wsh_proto_encode_signal(&b, cmd->channel, cmd->channel_len, user, ulen, payload, plen,
                                    wall_ms()) == WSH_OK)
            push_to_channel(s->ch, &b, PUSH_SIGNAL, c);
    } else {
        /* Read receipt: kept per user where the channel has history, and
         * relayed to the channel. */
        if (chan_ns(s->ch)->history_size > 0)
            check(wsh_broker_read_set(broker, s->ch->name, user, cmd->offset, noop_cb, NULL),
                  "read_set");
        if (wsh_proto_encode_read(&b, cmd->channel, cmd->channel_len, user, ulen, cmd->offset,
                                  wall_ms()) == WSH_OK)
            push_to_channel(s->ch, &b, PUSH_READ, c);
        wsh_jbuf_reset(&b);
        if (wsh_proto_encode_ack(&b, cmd->id, cmd->channel, cmd->channel_len, cmd->offset,
                                 wall_ms()) == WSH_OK)
            send_jbuf(w, c, &b, PUSH_ACK);
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
        if (v != 0) {
            reply_error(w, c, cmd->id, NULL, 0, perr, NULL);
            if (!refresh)
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
    int rc = refresh ? wsh_proto_encode_refreshed(&b, cmd->id, h->id.exp_ms / 1000, wall_ms())
                     : wsh_proto_encode_connected(&b, cmd->id, h->client, strlen(h->client), user,
                                                  ulen, h->id.exp_ms / 1000, wall_ms());
    if (rc == WSH_OK)
        send_jbuf(w, c, &b, refresh ? PUSH_REFRESHED : PUSH_CONNECTED);
    wsh_jbuf_free(&b);
    if (!refresh)
        h->connected = true;
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
    if (atomic_load_explicit(&keys_gen, memory_order_acquire) == keys_checked_gen)
        return;
    struct wsh_auth *a = current_auth();
    keys_checked_gen = auth_gen;
    if (a == NULL)
        return;
    int64_t now = wall_ms(), until = now + KEY_GONE_GRACE_MS;
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
    uint64_t done = atomic_load(&jf.ended);
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
        hub_key_wait_count(ok ? KEY_WAIT_ACCEPTED : KEY_WAIT_REFUSED);
        free(wt.token);
        if (!wt.refresh)
            conn_hold(w, c, HOLD_KEYS, false);
        i = 0; /* what that did may have ended other waiters */
    }
}

void hub_message(struct worker *w, struct conn *c, unsigned opcode, const uint8_t *p, size_t n)
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
        reply_error(w, c, cmd.id, NULL, 0, code, msg);
        wsh_cmd_free(&cmd);
        if (!h->authed)
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
/* HTTP API (DESIGN.md 6)                                               */

static void api_json(struct worker *w, struct conn *c, int status, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (s == NULL) {
        http_respond(w, c, 500, "application/json", "{\"error\":\"internal\"}", 20);
    } else {
        http_respond(w, c, status, "application/json", s, strlen(s));
        free(s);
    }
    json_decref(j);
}

static void api_error(struct worker *w, struct conn *c, int status, const char *msg)
{
    api_json(w, c, status, json_pack("{s:s}", "error", msg));
}

/* The API key comes as "Authorization: apikey <key>" or "X-API-Key". It is
 * compared in constant time (docs/auth.md). */
static int api_authorized(const struct wsh_http_request *req)
{
    const struct wsh_http_header *h = wsh_http_find(req, "X-API-Key");
    const char *k = NULL;
    size_t n = 0;
    if (h != NULL) {
        k = h->value;
        n = h->value_len;
    } else if ((h = wsh_http_find(req, "Authorization")) != NULL && h->value_len > 7 &&
               strncasecmp(h->value, "apikey ", 7) == 0) {
        k = h->value + 7;
        n = h->value_len - 7;
    }
    if (k == NULL)
        return 401;
    const char *key = live_cfg()->api_key;
    return key != NULL && wsh_auth_apikey_equal(key, strlen(key), k, n) ? 0 : 403;
}

/* The namespace of an API publish's channel, or NULL with the error. */
static const struct wsh_ns_config *api_channel_ns(const char *channel, int *err)
{
    const struct wsh_hub_config *cfg = live_cfg();
    const struct wsh_ns_config *ns = wsh_config_namespace(cfg, channel, strlen(channel));
    struct wsh_channel parts;
    size_t max_channel = cfg->limits.max_channel;
    if (ns == NULL)
        *err = WSH_PERR_UNKNOWN_NAMESPACE;
    else if (!wsh_proto_channel_parse(channel, strlen(channel), max_channel ? max_channel : 128,
                                      &parts))
        *err = WSH_PERR_BAD_CHANNEL;
    else
        return ns;
    return NULL;
}

static int api_publish_one(const char *channel, const char *payload, size_t plen,
                           const char *msg_id, uint64_t *offset)
{
    int err = 0;
    const struct wsh_ns_config *ns = api_channel_ns(channel, &err);
    if (ns == NULL)
        return err;
    struct wsh_broker_publish_req req = {
        .channel = channel,
        .payload = payload,
        .payload_len = plen,
        .msg_id = msg_id,
        .from = NULL,
        .now_ms = wall_ms(),
        .opts = { .history_size = ns->history_size,
                  .history_ttl_ms = (uint64_t)ns->history_ttl_s * 1000u,
                  .dedup_window_ms = (uint64_t)ns->dedup_window_s * 1000u },
    };
    struct ack_ctx a = { 0 };
    int rc = wsh_broker_publish(broker, &req, on_published, &a);
    if (rc != WSH_OK || a.status != WSH_OK)
        return rc == WSH_ETOOBIG ? WSH_PERR_TOO_LARGE : WSH_PERR_UNAVAILABLE;
    *offset = a.offset;
    return 0;
}

/* A publish or broadcast in progress. A broadcast reaches up to 1000
 * channels with one body of up to 64 KiB: published in one go it could put
 * 64 MB into the workers' inboxes within one turn, far past their bound
 * (chan.c, INBOX_HIGH) and past what a subscriber's queue takes in a turn.
 * So it is published only as far as the inboxes take it; the rest waits
 * in this record, the request itself held in its connection's carry
 * (worker.c), and goes on once the inbox that filled has been taken in.
 * A worker keeps its held requests' records in a list: there are few, and
 * a connection record stays without a field for them. */
struct api_job {
    struct api_job *next;
    const struct conn *c;
    json_t *chans;   /* the channel names, every one checked */
    json_t *msg_id;  /* the request's string, NULL when none */
    json_t *offsets; /* one per channel published so far */
    char *payload;   /* the payload's JSON text, encoded once */
    size_t plen;
    size_t done; /* channels published */
};

static struct api_job **api_job_link(struct worker *w, const struct conn *c)
{
    struct api_job **j = &w->api_jobs;
    while (*j != NULL && (*j)->c != c)
        j = &(*j)->next;
    return j;
}

void hub_api_forget(struct worker *w, const struct conn *c)
{
    struct api_job **link = api_job_link(w, c);
    struct api_job *j = *link;
    if (j == NULL)
        return;
    *link = j->next;
    json_decref(j->chans);
    json_decref(j->msg_id);
    json_decref(j->offsets);
    free(j->payload);
    free(j);
}

/* Validates a publish or broadcast body into a job, or answers 400. Every
 * channel is checked before the first is published: a bad one publishes
 * nothing, and the answer names it. */
static struct api_job *api_job_new(struct worker *w, struct conn *c, json_t *j, bool one)
{
    json_t *payload = json_object_get(j, "payload");
    json_t *mid = json_object_get(j, "msg_id");
    json_t *chans = one ? json_pack("[O]", json_object_get(j, "channel"))
                        : json_incref(json_object_get(j, "channels"));
    struct api_job *job = calloc(1, sizeof(*job));
    int err = 0;
    const char *bad = NULL;
    size_t i;
    json_t *v;
    if (job == NULL) {
        json_decref(chans);
        api_error(w, c, 500, "internal");
        return NULL;
    }
    if (!json_is_array(chans) || json_array_size(chans) == 0 || json_array_size(chans) > 1000 ||
        payload == NULL || (mid && !json_is_string(mid)))
        err = WSH_PERR_BAD_FIELD;
    json_array_foreach(chans, i, v)
    {
        if (err)
            break;
        if (!json_is_string(v))
            err = WSH_PERR_BAD_FIELD;
        else if (api_channel_ns(json_string_value(v), &err) == NULL)
            bad = json_string_value(v);
    }
    if (!err) {
        job->c = c;
        job->chans = json_incref(chans);
        job->offsets = json_array();
        job->payload = json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY);
        job->plen = job->payload != NULL ? strlen(job->payload) : 0;
        job->msg_id = json_incref(mid);
        job->next = w->api_jobs;
        w->api_jobs = job;
        if (job->offsets == NULL || job->payload == NULL) {
            hub_api_forget(w, c);
            job = NULL;
            api_error(w, c, 500, "internal");
        }
    } else {
        json_t *e = json_pack("{s:i,s:s}", "code", err, "error", wsh_proto_code_message(err));
        if (bad != NULL && e != NULL)
            json_object_set_new(e, "channel", json_string(bad));
        api_json(w, c, 400, e);
        free(job);
        job = NULL;
    }
    json_decref(chans);
    return job;
}

/* Answers status with {code, error, offsets}: the offsets of the channels
 * c's job published before it ended short (none without a job), and
 * forgets the job. */
static void api_job_fail(struct worker *w, struct conn *c, int status, int code, const char *msg)
{
    struct api_job *job = *api_job_link(w, c);
    json_t *e = json_pack("{s:i,s:s,s:o}", "code", code, "error", msg, "offsets",
                          job ? json_incref(job->offsets) : json_array());
    hub_api_forget(w, c);
    api_json(w, c, status, e);
}

/* Publishes the job's channels until done or an inbox is full; returns
 * HUB_API_HELD in the second case, with the job kept. A broker error
 * midway answers with the offsets of the channels published before it. */
static int api_job_run(struct worker *w, struct conn *c, struct api_job *job)
{
    size_t n = json_array_size(job->chans);
    w->inbox_full = false;
    while (job->done < n) {
        if (job->done > 0 && (w->inbox_full || inbox_own_full_wait(w))) {
            wsh_log(WSH_LOG_DEBUG, "conn=%u ev=broadcast_paused published=%zu of=%zu", c->id,
                    job->done, n);
            return HUB_API_HELD;
        }
        uint64_t off = 0;
        int err = api_publish_one(json_string_value(json_array_get(job->chans, job->done)),
                                  job->payload, job->plen, json_string_value(job->msg_id), &off);
        if (err) {
            api_job_fail(w, c, err == WSH_PERR_UNAVAILABLE ? 503 : 400, err,
                         wsh_proto_code_message(err));
            return 0;
        }
        json_array_append_new(job->offsets, json_integer((json_int_t)off));
        job->done++;
    }
    json_t *ok = json_pack("{s:O}", "offsets", job->offsets);
    hub_api_forget(w, c);
    api_json(w, c, 200, ok);
    return 0;
}

void hub_api_expired(struct worker *w, struct conn *c, const char *why)
{
    char msg[128];
    snprintf(msg, sizeof(msg), "%s: not done, or published only where offsets says", why);
    api_job_fail(w, c, 503, WSH_PERR_UNAVAILABLE, msg);
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

static void api_kick(struct worker *w, const char *who)
{
    /* Every worker closes its own connections of the user; the others get
     * the user id through their inbox. */
    for (int i = 0; i < wsh_nworkers; i++) {
        if (i == w->id)
            continue;
        struct wsh_buf *b = wsh_buf_new(strlen(who) + 1);
        if (b == NULL)
            continue;
        memcpy(b->data, who, strlen(who) + 1);
        b->end = (uint32_t)strlen(who) + 1;
        struct xmsg m = { .buf = b, .kind = XMSG_KICK };
        inbox_push(&wsh_workers[i], &m);
        w->wake[i] = true;
    }
    hub_kick_local(w, who, 4501, "disconnected by the server");
}

static void api_list(struct worker *w, struct conn *c, const char *channel, bool presence,
                     size_t limit)
{
    const struct wsh_ns_config *ns = wsh_config_namespace(live_cfg(), channel, strlen(channel));
    if (ns == NULL) {
        api_error(w, c, 404, "unknown namespace");
        return;
    }
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    struct wsh_cmd fake = { .channel = channel, .channel_len = strlen(channel) };
    struct list_ctx x = { .b = &b, .id = WSH_PROTO_NO_ID, .cmd = &fake, .rc = -1 };
    int rc;
    if (presence) {
        rc = wsh_broker_presence_list(broker, channel, on_presence, &x);
    } else {
        struct wsh_broker_history_req hr = { .channel = channel,
                                             .limit = limit,
                                             .now_ms = wall_ms() };
        rc = wsh_broker_history(broker, &hr, on_history, &x);
    }
    /* The reply is the same JSON a /ws client gets for the command. */
    if (rc == WSH_OK && x.rc == WSH_OK && !b._oom)
        http_respond(w, c, 200, "application/json", b.data, b.len);
    else
        api_error(w, c, 500, "internal");
    wsh_jbuf_free(&b);
}

static void on_info(const struct wsh_broker_result *r, void *user)
{
    json_t **out = user;
    const struct wsh_broker_info *i = r->info;
    *out = json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:I}", "engine", i->engine, "channels",
                     (json_int_t)i->channels, "subscriptions", (json_int_t)i->subscriptions,
                     "presence", (json_int_t)i->presence, "history_messages",
                     (json_int_t)i->history_messages, "published", (json_int_t)i->published,
                     "duplicates", (json_int_t)i->duplicates);
}

int hub_api(struct worker *w, struct conn *c, const struct wsh_http_request *req,
            const uint8_t *body, size_t blen)
{
    if (!hub_enabled || live_cfg()->api_key == NULL) {
        api_error(w, c, 404, "the HTTP API is off: no api_key in the configuration");
        return 0;
    }
    int st = api_authorized(req);
    if (st != 0) {
        api_error(w, c, st, st == 401 ? "API key required" : "bad API key");
        return 0;
    }
    struct api_job *job = *api_job_link(w, c);
    if (job != NULL)
        return api_job_run(w, c, job); /* held midway, now released */
    bool post = req->method_len == 4 && memcmp(req->method, "POST", 4) == 0;
    bool get = req->method_len == 3 && memcmp(req->method, "GET", 3) == 0;
    const char *p = req->path + 5;
    size_t n = req->path_len - 5;
    char chan[WSH_BROKER_NAME_MAX + 1];
#define ROUTE(lit)  (n == sizeof(lit) - 1 && memcmp(p, lit, n) == 0)
#define PREFIX(lit) (n > sizeof(lit) - 1 && memcmp(p, lit, sizeof(lit) - 1) == 0)
    if (PREFIX("presence/") || PREFIX("history/")) {
        size_t pl = p[0] == 'p' ? 9 : 8;
        if (!get) {
            api_error(w, c, 405, "use GET");
            return 0;
        }
        if (n - pl > WSH_BROKER_NAME_MAX) {
            api_error(w, c, 400, "bad channel");
            return 0;
        }
        snprintf(chan, sizeof(chan), "%.*s", (int)(n - pl), p + pl);
        size_t limit = 0;
        if (req->query && req->query_len > 6 && memcmp(req->query, "limit=", 6) == 0)
            limit = (size_t)strtoul(req->query + 6, NULL, 10);
        api_list(w, c, chan, pl == 9, limit);
        return 0;
    }
    if (ROUTE("info")) {
        if (!get) {
            api_error(w, c, 405, "use GET");
            return 0;
        }
        json_t *b = NULL;
        if (wsh_broker_info(broker, on_info, &b) != WSH_OK || b == NULL) {
            api_error(w, c, 500, "internal");
            return 0;
        }
        api_json(w, c, 200,
                 json_pack("{s:s,s:I,s:i,s:o}", "version", WSH_VERSION, "connections",
                           (json_int_t)atomic_load(&wsh_total_conns), "workers", wsh_nworkers,
                           "broker", b));
        return 0;
    }
    if (!post) {
        api_error(w, c, ROUTE("publish") || ROUTE("broadcast") || ROUTE("disconnect") ? 405 : 404,
                  ROUTE("publish") || ROUTE("broadcast") || ROUTE("disconnect") ? "use POST"
                                                                                : "not found");
        return 0;
    }
    json_error_t jerr;
    json_t *j = json_loadb((const char *)body, blen, JSON_REJECT_DUPLICATES, &jerr);
    if (j == NULL || !json_is_object(j)) {
        json_decref(j);
        api_error(w, c, 400, "the body must be a JSON object");
        return 0;
    }
    if (ROUTE("publish") || ROUTE("broadcast")) {
        job = api_job_new(w, c, j, ROUTE("publish"));
        json_decref(j);
        return job ? api_job_run(w, c, job) : 0;
    }
    if (ROUTE("disconnect")) {
        /* {"user": U, "revoke_s"?: N} closes every connection of U (4501)
         * and, with revoke_s, refuses U's tokens for N seconds;
         * {"jti": T, "revoke_s"?: N} does the same for one token id, refused
         * for N seconds (default a day: past any sensible token expiry). */
        json_t *u = json_object_get(j, "user");
        json_t *t = json_object_get(j, "jti");
        json_t *r = json_object_get(j, "revoke_s");
        json_t *id = u ? u : t;
        if ((u != NULL) == (t != NULL) || !json_is_string(id) || json_string_length(id) == 0 ||
            json_string_length(id) > WSH_AUTH_SUB_MAX ||
            (r && (!json_is_integer(r) || json_integer_value(r) < 0 ||
                   json_integer_value(r) > 30 * 86400))) {
            json_decref(j);
            api_error(w, c, 400, "one of user or jti (string), and revoke_s (seconds) optional");
            return 0;
        }
        char who[WSH_AUTH_SUB_MAX + 2];
        snprintf(who, sizeof(who), "%c%s", u ? 'u' : 'j', json_string_value(id));
        int64_t secs = r ? json_integer_value(r) : (t ? 86400 : 0);
        if (secs > 0 && !revoke(who, wall_ms() + secs * 1000)) {
            json_decref(j);
            api_error(w, c, 503, "revocation list full");
            return 0;
        }
        api_kick(w, who);
        json_decref(j);
        api_json(w, c, 200, json_pack("{s:b,s:I}", "ok", 1, "revoked_s", (json_int_t)secs));
        return 0;
    }
    json_decref(j);
    api_error(w, c, 404, "not found");
    return 0;
#undef ROUTE
#undef PREFIX
}
