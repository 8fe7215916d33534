/* The broker interface's entry points and its embedded single-node engine
 * (DESIGN.md 4): per-channel epoch and offsets, a history ring bounded by
 * size and TTL, msg_id de-duplication, recovery, presence and read cursors.
 * Callbacks run inside the call, after every broker lock is released,
 * except on_message, which runs under the channel's publish-order lock. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "wshub/broker.h"
#include "wshub/hash.h"

/* ---- engine-neutral entry points ----------------------------------------
 * They live here because memory.c is the library's only file today; they
 * move to broker.c when the redis engine arrives. */

struct wsh_broker {
    const struct wsh_broker_ops *ops;
    void *self;
};

static bool name_ok(const char *s)
{
    return s != NULL && s[0] != '\0' && strnlen(s, WSH_BROKER_NAME_MAX + 1) <= WSH_BROKER_NAME_MAX;
}

/* NULL allowed; "" allowed. */
static bool opt_name_ok(const char *s)
{
    return s == NULL || strnlen(s, WSH_BROKER_NAME_MAX + 1) <= WSH_BROKER_NAME_MAX;
}

int wsh_broker_create(const struct wsh_broker_ops *ops, void *self, struct wsh_broker **out)
{
    if (ops == NULL || self == NULL || out == NULL)
        return WSH_EINVAL;
    struct wsh_broker *b = malloc(sizeof(*b));
    if (b == NULL) {
        ops->destroy(self);
        return WSH_ENOMEM;
    }
    b->ops = ops;
    b->self = self;
    *out = b;
    return WSH_OK;
}

void wsh_broker_destroy(struct wsh_broker *b)
{
    if (b == NULL)
        return;
    b->ops->destroy(b->self);
    free(b);
}

const char *wsh_broker_engine(const struct wsh_broker *b)
{
    return b->ops->name;
}

int wsh_broker_publish(struct wsh_broker *b, const struct wsh_broker_publish_req *req,
                       wsh_broker_cb *cb, void *user)
{
    if (b == NULL || req == NULL || !name_ok(req->channel) || !opt_name_ok(req->from) ||
        (req->msg_id != NULL && !name_ok(req->msg_id)) ||
        (req->payload == NULL && req->payload_len != 0))
        return WSH_EINVAL;
    return b->ops->publish(b->self, req, cb, user);
}

int wsh_broker_history(struct wsh_broker *b, const struct wsh_broker_history_req *req,
                       wsh_broker_cb *cb, void *user)
{
    if (b == NULL || req == NULL || !name_ok(req->channel) || cb == NULL)
        return WSH_EINVAL;
    return b->ops->history(b->self, req, cb, user);
}

int wsh_broker_recover(struct wsh_broker *b, const char *channel, uint64_t offset,
                       const char *epoch, int64_t now_ms, wsh_broker_cb *cb, void *user)
{
    if (b == NULL || !name_ok(channel) || epoch == NULL || cb == NULL)
        return WSH_EINVAL;
    return b->ops->recover(b->self, channel, offset, epoch, now_ms, cb, user);
}

int wsh_broker_subscribe(struct wsh_broker *b, const char *channel, wsh_broker_cb *cb, void *user)
{
    if (b == NULL || !name_ok(channel))
        return WSH_EINVAL;
    return b->ops->subscribe(b->self, channel, cb, user);
}

int wsh_broker_unsubscribe(struct wsh_broker *b, const char *channel, wsh_broker_cb *cb, void *user)
{
    if (b == NULL || !name_ok(channel))
        return WSH_EINVAL;
    return b->ops->unsubscribe(b->self, channel, cb, user);
}

int wsh_broker_presence_add(struct wsh_broker *b, const char *channel, const char *client,
                            const char *user_id, const char *info, size_t info_len,
                            wsh_broker_cb *cb, void *user)
{
    if (b == NULL || !name_ok(channel) || !name_ok(client) || !opt_name_ok(user_id) ||
        (info == NULL && info_len != 0))
        return WSH_EINVAL;
    return b->ops->presence_add(b->self, channel, client, user_id, info, info_len, cb, user);
}

int wsh_broker_presence_remove(struct wsh_broker *b, const char *channel, const char *client,
                               wsh_broker_cb *cb, void *user)
{
    if (b == NULL || !name_ok(channel) || !name_ok(client))
        return WSH_EINVAL;
    return b->ops->presence_remove(b->self, channel, client, cb, user);
}

int wsh_broker_presence_list(struct wsh_broker *b, const char *channel, wsh_broker_cb *cb,
                             void *user)
{
    if (b == NULL || !name_ok(channel) || cb == NULL)
        return WSH_EINVAL;
    return b->ops->presence_list(b->self, channel, cb, user);
}

int wsh_broker_presence_count(struct wsh_broker *b, const char *channel, wsh_broker_cb *cb,
                              void *user)
{
    if (b == NULL || !name_ok(channel) || cb == NULL)
        return WSH_EINVAL;
    return b->ops->presence_count(b->self, channel, cb, user);
}

int wsh_broker_read_set(struct wsh_broker *b, const char *channel, const char *user_id,
                        uint64_t offset, wsh_broker_cb *cb, void *user)
{
    if (b == NULL || !name_ok(channel) || !name_ok(user_id))
        return WSH_EINVAL;
    return b->ops->read_set(b->self, channel, user_id, offset, cb, user);
}

int wsh_broker_read_get(struct wsh_broker *b, const char *channel, const char *user_id,
                        wsh_broker_cb *cb, void *user)
{
    if (b == NULL || !name_ok(channel) || !name_ok(user_id) || cb == NULL)
        return WSH_EINVAL;
    return b->ops->read_get(b->self, channel, user_id, cb, user);
}

int wsh_broker_channel_stats(struct wsh_broker *b, const char *channel, int64_t now_ms,
                             wsh_broker_cb *cb, void *user)
{
    if (b == NULL || !name_ok(channel) || cb == NULL)
        return WSH_EINVAL;
    return b->ops->channel_stats(b->self, channel, now_ms, cb, user);
}

int wsh_broker_info(struct wsh_broker *b, wsh_broker_cb *cb, void *user)
{
    if (b == NULL || cb == NULL)
        return WSH_EINVAL;
    return b->ops->info(b->self, cb, user);
}

size_t wsh_broker_sweep(struct wsh_broker *b, int64_t now_ms)
{
    return b->ops->sweep(b->self, now_ms);
}

void wsh_broker_set_limits(struct wsh_broker *b, const struct wsh_broker_limits *l)
{
    if (b != NULL && l != NULL)
        b->ops->set_limits(b->self, l);
}

/* ---- keyed maps ----------------------------------------------------------
 * Records found by a string key in a wsh_htab (wshub/hash.h). Keys come
 * from peers (channel names, msg_ids, user ids), so the hash is SipHash-1-3
 * under a per-broker random key: a client cannot pick keys that collide
 * into one long chain. */

#define CONTAINER(p, type, field) ((type *)(void *)((char *)(p)-offsetof(type, field)))

struct node {
    struct wsh_hnode h;
    const char *key; /* in the record's own allocation */
    size_t klen;
};

static struct node *map_find(const struct wsh_htab *m, const char *key, size_t klen, uint64_t h)
{
    for (struct wsh_hnode *e = wsh_htab_chain(m, h); e != NULL; e = e->next) {
        struct node *n = CONTAINER(e, struct node, h);
        if (e->hash == h && n->klen == klen && memcmp(n->key, key, klen) == 0)
            return n;
    }
    return NULL;
}

/* Makes room for one more entry, so that map_insert cannot fail afterwards. */
static int map_reserve(struct wsh_htab *m)
{
    return wsh_htab_reserve(m, 8) ? WSH_OK : WSH_ENOMEM;
}

static void map_insert(struct wsh_htab *m, struct node *n)
{
    wsh_htab_insert(m, &n->h);
}

static void map_remove(struct wsh_htab *m, struct node *n)
{
    wsh_htab_remove(m, &n->h);
}

struct each {
    void (*fn)(struct node *n, void *arg);
    void *arg;
};

static bool each_one(struct wsh_hnode *e, void *arg)
{
    struct each *x = arg;
    x->fn(CONTAINER(e, struct node, h), x->arg);
    return false;
}

/* Calls fn on every entry, which it must leave in place. */
static void map_each(struct wsh_htab *m, void (*fn)(struct node *n, void *arg), void *arg)
{
    struct each x = { fn, arg };
    wsh_htab_filter(m, each_one, &x);
}

static bool free_one(struct wsh_hnode *e, void *arg)
{
    (void)arg;
    /* Every record type keeps its node first, so the node is the record. */
    free(CONTAINER(e, struct node, h));
    return true;
}

/* Frees every entry and the map. */
static void map_free(struct wsh_htab *m)
{
    wsh_htab_filter(m, free_one, NULL);
    wsh_htab_free(m);
}

/* ---- records ---------------------------------------------------------------- */

/* One published message. Ref-counted so that history readers and
 * on_message can use it after the channel lock is released while a later
 * publish or a TTL trim drops it from the ring. */
struct blob {
    atomic_uint refs;
    uint64_t offset;
    int64_t time_ms;
    int64_t expires_ms; /* INT64_MAX: no TTL */
    size_t payload_len;
    size_t from_len;
    char data[]; /* payload NUL from NUL */
};

struct dedup {
    struct node node; /* key: from NUL msg_id */
    struct dedup *fifo_next;
    uint64_t offset;
    int64_t expires_ms;
    char key[];
};

struct member {
    struct node node; /* key: client */
    const char *user;
    const char *info;
    size_t info_len;
    char data[]; /* client NUL user NUL info NUL */
};

struct reader {
    struct node node; /* key: user */
    uint64_t offset;
    char key[];
};

struct channel {
    struct node node; /* in the registry; key: name */
    /* Holders between lookup and release. Raised only under the registry
     * lock; a channel is freed only under the registry's write lock with
     * refs == 0, so nobody can be using it then. */
    atomic_size_t refs;
    /* Publish order: held from offset assignment through on_message, so
     * deliveries of one channel never overlap and arrive in offset order. */
    pthread_mutex_t order;
    pthread_mutex_t mu;                   /* everything below */
    char epoch[WSH_BROKER_EPOCH_LEN + 1]; /* fixed for the record's life */
    uint64_t top;                         /* last offset given */
    struct blob **ring;
    uint32_t cap, head, len; /* ring[head] is the oldest, offset top - len + 1 */
    size_t ring_bytes;
    struct wsh_htab dedup;
    struct dedup *dq_head, *dq_tail; /* FIFO in insertion order */
    struct wsh_htab members;
    struct wsh_htab readers;
    size_t subs;
    /* In the history list (struct memory's lru_*). lru_prev and lru_next
     * are the list's: read and written under lru_mu only (a neighbour's
     * link or unlink rewrites them). in_lru and lru_ms are written under
     * both mu and lru_mu, so either is enough to read them. */
    struct channel *lru_prev, *lru_next;
    int64_t lru_ms; /* when it last moved to the list's end */
    bool in_lru;
    char name[];
};

struct memory {
    pthread_rwlock_t lock; /* the registry: channels, nchannels */
    struct wsh_htab channels;
    uint64_t key[2];
    size_t max_payload, dedup_max, presence_max, readers_max;
    atomic_size_t max_channels, max_history; /* wsh_broker_limits, set by reloads */
    /* Channels that hold history, least recently published first: where
     * the history memory bound takes from. Lock order: registry, then a
     * channel's mu, then lru_mu; nothing is locked under lru_mu. */
    pthread_mutex_t lru_mu;
    struct channel *lru_head, *lru_tail;
    atomic_bool evicting; /* a thread is in evict_down */
    wsh_broker_message_cb *on_message;
    void *user;
    atomic_size_t subscriptions, presence, history_messages, history_bytes;
    _Atomic uint64_t published, duplicates, channels_freed, channels_refused, history_evicted;
};

/* What one message in history costs beside its bytes: the record and the
 * allocator's header, so that a flood of tiny messages is counted too. */
#define BLOB_OVERHEAD (sizeof(struct blob) + 2 + 16)

/* What max_history bounds, from the counters history keeps anyway. */
static size_t history_memory(struct memory *m)
{
    return atomic_load(&m->history_bytes) + atomic_load(&m->history_messages) * BLOB_OVERHEAD;
}

static void blob_unref(struct blob *b)
{
    if (b != NULL && atomic_fetch_sub(&b->refs, 1) == 1)
        free(b);
}

static size_t blob_bytes(const struct blob *b)
{
    return b->payload_len + b->from_len;
}

static void blob_msg(const struct blob *b, struct wsh_broker_msg *m)
{
    m->offset = b->offset;
    m->time_ms = b->time_ms;
    m->payload = b->data;
    m->payload_len = b->payload_len;
    m->from = b->data + b->payload_len + 1;
}

static void new_epoch(char out[WSH_BROKER_EPOCH_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t r[WSH_BROKER_EPOCH_LEN / 2];
    wsh_random_bytes(r, sizeof(r));
    for (size_t i = 0; i < sizeof(r); i++) {
        out[2 * i] = hex[r[i] >> 4];
        out[2 * i + 1] = hex[r[i] & 15];
    }
    out[WSH_BROKER_EPOCH_LEN] = '\0';
}

/* ---- channel state (called with c->mu held) ---------------------------- */

static void ring_pop(struct memory *m, struct channel *c)
{
    struct blob *b = c->ring[c->head];
    c->ring[c->head] = NULL;
    c->head = (c->head + 1) % c->cap;
    c->len--;
    c->ring_bytes -= blob_bytes(b);
    atomic_fetch_sub(&m->history_messages, 1);
    atomic_fetch_sub(&m->history_bytes, blob_bytes(b));
    blob_unref(b);
}

static struct blob *ring_at(const struct channel *c, uint32_t i)
{
    return c->ring[(c->head + i) % c->cap];
}

/* Lazy TTL: drops expired messages from the front and msg_ids whose window
 * has passed. Expiry times are monotonic while a channel's TTL does not
 * change; after a change, trimming stops at the first live entry, which
 * keeps the retained offsets contiguous (recovery depends on that). */
static void trim(struct memory *m, struct channel *c, int64_t now_ms)
{
    while (c->len > 0 && c->ring[c->head]->expires_ms <= now_ms)
        ring_pop(m, c);
    while (c->dq_head != NULL && (c->dq_head->expires_ms <= now_ms || c->dedup.n > m->dedup_max)) {
        struct dedup *d = c->dq_head;
        c->dq_head = d->fifo_next;
        if (c->dq_head == NULL)
            c->dq_tail = NULL;
        map_remove(&c->dedup, &d->node);
        free(d);
    }
}

/* Resizes the ring to the namespace's current history_size, keeping the
 * newest messages. */
static int ring_resize(struct memory *m, struct channel *c, uint32_t cap)
{
    struct blob **ring = NULL;
    if (cap > 0) {
        ring = calloc(cap, sizeof(*ring));
        if (ring == NULL)
            return WSH_ENOMEM;
    }
    while (c->len > cap)
        ring_pop(m, c);
    for (uint32_t i = 0; i < c->len; i++)
        ring[i] = ring_at(c, i);
    free(c->ring);
    c->ring = ring;
    c->cap = cap;
    c->head = 0;
    return WSH_OK;
}

/* ---- the history memory bound -------------------------------------------- */

/* A channel moves to the list's end at most this often, so a busy channel
 * takes lru_mu about once a second, not at every publish. Recency to the
 * second is all eviction needs. */
#define LRU_GRAIN_MS 1000

/* Called with lru_mu held (and c->mu, or sole use of c). */
static void lru_unlink(struct memory *m, struct channel *c)
{
    if (c->lru_prev != NULL)
        c->lru_prev->lru_next = c->lru_next;
    else
        m->lru_head = c->lru_next;
    if (c->lru_next != NULL)
        c->lru_next->lru_prev = c->lru_prev;
    else
        m->lru_tail = c->lru_prev;
    c->lru_prev = c->lru_next = NULL;
    c->in_lru = false;
}

/* Takes c off the list if it is on it; called with c->mu held (or sole
 * use of c). */
static void lru_drop(struct memory *m, struct channel *c)
{
    if (!c->in_lru)
        return;
    pthread_mutex_lock(&m->lru_mu);
    lru_unlink(m, c);
    pthread_mutex_unlock(&m->lru_mu);
}

/* After a message joined c's history; called with c->mu held. */
static void lru_touch(struct memory *m, struct channel *c, int64_t now_ms)
{
    if (c->in_lru && now_ms >= c->lru_ms && now_ms - c->lru_ms < LRU_GRAIN_MS)
        return;
    pthread_mutex_lock(&m->lru_mu);
    if (c->in_lru)
        lru_unlink(m, c);
    c->lru_prev = m->lru_tail;
    c->lru_next = NULL;
    if (m->lru_tail != NULL)
        m->lru_tail->lru_next = c;
    else
        m->lru_head = c;
    m->lru_tail = c;
    c->in_lru = true;
    c->lru_ms = now_ms;
    pthread_mutex_unlock(&m->lru_mu);
}

static void channel_free(struct memory *m, struct channel *c)
{
    lru_drop(m, c);
    while (c->len > 0)
        ring_pop(m, c);
    free(c->ring);
    atomic_fetch_sub(&m->subscriptions, c->subs);
    atomic_fetch_sub(&m->presence, c->members.n);
    map_free(&c->dedup);
    map_free(&c->members);
    map_free(&c->readers);
    pthread_mutex_destroy(&c->order);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static bool channel_idle(const struct channel *c)
{
    return c->subs == 0 && c->members.n == 0 && c->len == 0 && c->dedup.n == 0;
}

/* ---- the registry -------------------------------------------------------- */

/* Finds (or with create, makes) a channel and takes a reference; *out is
 * NULL when it does not exist and create is false. */
static int channel_get(struct memory *m, const char *name, bool create, struct channel **out)
{
    size_t len = strlen(name);
    uint64_t h = wsh_siphash13(m->key, name, len);
    *out = NULL;
    pthread_rwlock_rdlock(&m->lock);
    struct node *n = map_find(&m->channels, name, len, h);
    if (n != NULL) {
        struct channel *c = CONTAINER(n, struct channel, node);
        atomic_fetch_add(&c->refs, 1);
        *out = c;
    }
    pthread_rwlock_unlock(&m->lock);
    if (n != NULL || !create)
        return WSH_OK;

    struct channel *c = calloc(1, sizeof(*c) + len + 1);
    if (c == NULL)
        return WSH_ENOMEM;
    memcpy(c->name, name, len + 1);
    c->node.key = c->name;
    c->node.klen = len;
    c->node.h.hash = h;
    atomic_init(&c->refs, 1);
    if (pthread_mutex_init(&c->order, NULL) != 0) {
        free(c);
        return WSH_ENOMEM;
    }
    if (pthread_mutex_init(&c->mu, NULL) != 0) {
        pthread_mutex_destroy(&c->order);
        free(c);
        return WSH_ENOMEM;
    }
    new_epoch(c->epoch);

    int rc = WSH_OK;
    size_t max;
    pthread_rwlock_wrlock(&m->lock);
    n = map_find(&m->channels, name, len, h);
    if (n != NULL) { /* another thread created it meanwhile */
        struct channel *found = CONTAINER(n, struct channel, node);
        atomic_fetch_add(&found->refs, 1);
        *out = found;
    } else if ((max = atomic_load(&m->max_channels)) != 0 && m->channels.n >= max) {
        atomic_fetch_add(&m->channels_refused, 1);
        rc = WSH_EPOLICY;
    } else if ((rc = map_reserve(&m->channels)) == WSH_OK) {
        map_insert(&m->channels, &c->node);
        *out = c;
        c = NULL;
    }
    pthread_rwlock_unlock(&m->lock);
    if (c != NULL)
        channel_free(m, c);
    return rc;
}

static void channel_put(struct channel *c)
{
    atomic_fetch_sub(&c->refs, 1);
}

static void result_init(struct wsh_broker_result *r, enum wsh_broker_op op, const char *channel)
{
    memset(r, 0, sizeof(*r));
    r->op = op;
    r->status = WSH_OK;
    r->channel = channel;
}

/* A publish past the bound frees this much more, so that the ones after it
 * find room without evicting: eviction runs about once per max/64 bytes
 * published, not at every publish of a full broker. */
#define EVICT_SLACK(max) ((max) / 64)
/* Messages one call drops at most: a bound that a reload lowered a long way
 * is reached over several publishes and sweeps, not in one stall of the
 * loop that happens to publish next. */
#define EVICT_BATCH 4096u

/* Drops the oldest history of the least recently published channels until
 * history_memory is down to low, or budget messages went; returns what is
 * left of the budget (0 also when there is nothing left to drop). The
 * channel is taken like any lookup (a reference under the registry lock),
 * so sweep cannot free it meanwhile. */
static size_t evict_down(struct memory *m, size_t low, size_t budget)
{
    while (budget > 0 && history_memory(m) > low) {
        pthread_rwlock_rdlock(&m->lock);
        pthread_mutex_lock(&m->lru_mu);
        struct channel *c = m->lru_head;
        if (c != NULL)
            atomic_fetch_add(&c->refs, 1);
        pthread_mutex_unlock(&m->lru_mu);
        pthread_rwlock_unlock(&m->lock);
        if (c == NULL)
            return 0;
        uint64_t n = 0;
        pthread_mutex_lock(&c->mu);
        while (n < budget && c->len > 0 && history_memory(m) > low) {
            ring_pop(m, c);
            n++;
        }
        if (c->len == 0)
            lru_drop(m, c);
        pthread_mutex_unlock(&c->mu);
        channel_put(c);
        atomic_fetch_add(&m->history_evicted, n);
        budget -= n;
    }
    return budget;
}

/* Past max_history, evicts down to its low mark. Called with no lock held.
 * One thread evicts at a time; the others go on, and what they add is seen
 * by the one evicting, which looks again after letting go. */
static void evict(struct memory *m)
{
    size_t budget = EVICT_BATCH;
    for (;;) {
        size_t max = atomic_load(&m->max_history);
        if (max == 0 || budget == 0 || history_memory(m) <= max)
            return;
        if (atomic_exchange(&m->evicting, true))
            return;
        budget = evict_down(m, max - EVICT_SLACK(max), budget);
        atomic_store(&m->evicting, false);
    }
}

/* ---- publish and history ------------------------------------------------- */

static struct blob *blob_new(const struct wsh_broker_publish_req *req)
{
    const char *from = req->from != NULL ? req->from : "";
    size_t from_len = strlen(from);
    struct blob *b = malloc(sizeof(*b) + req->payload_len + from_len + 2);
    if (b == NULL)
        return NULL;
    atomic_init(&b->refs, 1);
    b->offset = 0;
    b->time_ms = req->now_ms;
    b->expires_ms = INT64_MAX;
    if (req->opts.history_ttl_ms != 0 && req->opts.history_ttl_ms < (uint64_t)INT64_MAX &&
        req->now_ms < INT64_MAX - (int64_t)req->opts.history_ttl_ms)
        b->expires_ms = req->now_ms + (int64_t)req->opts.history_ttl_ms;
    b->payload_len = req->payload_len;
    b->from_len = from_len;
    if (req->payload_len > 0)
        memcpy(b->data, req->payload, req->payload_len);
    b->data[req->payload_len] = '\0';
    memcpy(b->data + req->payload_len + 1, from, from_len + 1);
    return b;
}

static struct dedup *dedup_new(const struct wsh_broker_publish_req *req, const uint64_t key[2])
{
    const char *from = req->from != NULL ? req->from : "";
    size_t fl = strlen(from), il = strlen(req->msg_id);
    struct dedup *d = malloc(sizeof(*d) + fl + 1 + il);
    if (d == NULL)
        return NULL;
    /* Keyed by sender and msg_id: one user cannot suppress another's
     * messages by reusing (or guessing) their msg_id. */
    memcpy(d->key, from, fl + 1);
    memcpy(d->key + fl + 1, req->msg_id, il);
    d->node.key = d->key;
    d->node.klen = fl + 1 + il;
    d->node.h.hash = wsh_siphash13(key, d->key, d->node.klen);
    d->fifo_next = NULL;
    d->offset = 0;
    int64_t w = req->opts.dedup_window_ms < (uint64_t)INT64_MAX ? (int64_t)req->opts.dedup_window_ms
                                                                : INT64_MAX;
    d->expires_ms = req->now_ms < INT64_MAX - w ? req->now_ms + w : INT64_MAX;
    return d;
}

static int memory_publish(void *self, const struct wsh_broker_publish_req *req, wsh_broker_cb *cb,
                          void *user)
{
    struct memory *m = self;
    if (req->payload_len > m->max_payload)
        return WSH_ETOOBIG;
    /* Allocate before locking: the critical section only links records. */
    struct blob *b = blob_new(req);
    if (b == NULL)
        return WSH_ENOMEM;
    struct dedup *d = NULL;
    if (req->msg_id != NULL && req->opts.dedup_window_ms != 0) {
        d = dedup_new(req, m->key);
        if (d == NULL) {
            blob_unref(b);
            return WSH_ENOMEM;
        }
    }
    struct channel *c;
    int rc = channel_get(m, req->channel, true, &c);
    if (rc != WSH_OK) {
        blob_unref(b);
        free(d);
        return rc;
    }

    struct wsh_broker_result r;
    result_init(&r, WSH_BROKER_OP_PUBLISH, req->channel);
    memcpy(r.epoch, c->epoch, sizeof(r.epoch));

    pthread_mutex_lock(&c->order);
    pthread_mutex_lock(&c->mu);
    trim(m, c, req->now_ms);
    if (d != NULL) {
        struct node *n = map_find(&c->dedup, d->node.key, d->node.klen, d->node.h.hash);
        if (n != NULL && CONTAINER(n, struct dedup, node)->expires_ms > req->now_ms) {
            r.offset = CONTAINER(n, struct dedup, node)->offset;
            r.duplicate = true;
        } else if (n != NULL) {
            /* Expired but not yet trimmed (a shorter window after a longer
             * one): it is history; this msg_id is new again. */
            map_remove(&c->dedup, n);
            struct dedup **pp = &c->dq_head, *prev = NULL;
            while (*pp != CONTAINER(n, struct dedup, node)) {
                prev = *pp;
                pp = &(*pp)->fifo_next;
            }
            *pp = (*pp)->fifo_next;
            if (c->dq_tail == CONTAINER(n, struct dedup, node))
                c->dq_tail = prev;
            free(CONTAINER(n, struct dedup, node));
        }
    }
    if (!r.duplicate) {
        if (c->cap != req->opts.history_size)
            rc = ring_resize(m, c, req->opts.history_size);
        if (rc == WSH_OK && d != NULL)
            rc = map_reserve(&c->dedup);
    }
    if (r.duplicate || rc != WSH_OK) {
        pthread_mutex_unlock(&c->mu);
        pthread_mutex_unlock(&c->order);
        channel_put(c);
        blob_unref(b);
        free(d);
        if (rc != WSH_OK)
            return rc;
        atomic_fetch_add(&m->duplicates, 1);
        if (cb != NULL)
            cb(&r, user);
        return WSH_OK;
    }

    /* Commit: nothing below can fail. */
    b->offset = r.offset = ++c->top;
    if (c->cap > 0) {
        if (c->len == c->cap)
            ring_pop(m, c);
        atomic_fetch_add(&b->refs, 1);
        c->ring[(c->head + c->len) % c->cap] = b;
        c->len++;
        c->ring_bytes += blob_bytes(b);
        atomic_fetch_add(&m->history_messages, 1);
        atomic_fetch_add(&m->history_bytes, blob_bytes(b));
        lru_touch(m, c, req->now_ms);
    }
    if (d != NULL) {
        d->offset = r.offset;
        map_insert(&c->dedup, &d->node);
        if (c->dq_tail != NULL)
            c->dq_tail->fifo_next = d;
        else
            c->dq_head = d;
        c->dq_tail = d;
        trim(m, c, req->now_ms); /* the count bound */
    }
    bool deliver = c->subs > 0 && m->on_message != NULL;
    pthread_mutex_unlock(&c->mu);

    if (deliver) {
        struct wsh_broker_msg msg;
        blob_msg(b, &msg);
        m->on_message(c->name, r.epoch, &msg, m->user);
    }
    pthread_mutex_unlock(&c->order);
    blob_unref(b);
    atomic_fetch_add(&m->published, 1);
    evict(m);
    if (cb != NULL)
        cb(&r, user);
    channel_put(c);
    return WSH_OK;
}

/* Takes references to ring entries [from, from + n) under c->mu and builds
 * the message array in one allocation; *blobs_out must be released with
 * release_msgs after use. */
static int collect(struct channel *c, uint32_t from, uint32_t n, struct wsh_broker_msg **msgs_out,
                   struct blob ***blobs_out)
{
    *msgs_out = NULL;
    *blobs_out = NULL;
    if (n == 0)
        return WSH_OK;
    void *mem = malloc((size_t)n * (sizeof(struct wsh_broker_msg) + sizeof(struct blob *)));
    if (mem == NULL)
        return WSH_ENOMEM;
    struct wsh_broker_msg *msgs = mem;
    struct blob **blobs = (struct blob **)(void *)(msgs + n);
    for (uint32_t i = 0; i < n; i++) {
        blobs[i] = ring_at(c, from + i);
        atomic_fetch_add(&blobs[i]->refs, 1);
        blob_msg(blobs[i], &msgs[i]);
    }
    *msgs_out = msgs;
    *blobs_out = blobs;
    return WSH_OK;
}

static void release_msgs(struct wsh_broker_msg *msgs, struct blob **blobs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        blob_unref(blobs[i]);
    free(msgs);
}

static int memory_history(void *self, const struct wsh_broker_history_req *req, wsh_broker_cb *cb,
                          void *user)
{
    struct memory *m = self;
    struct wsh_broker_result r;
    result_init(&r, WSH_BROKER_OP_HISTORY, req->channel);
    struct channel *c;
    int rc = channel_get(m, req->channel, false, &c);
    if (rc != WSH_OK)
        return rc;
    if (c == NULL) {
        cb(&r, user);
        return WSH_OK;
    }
    struct wsh_broker_msg *msgs;
    struct blob **blobs;
    pthread_mutex_lock(&c->mu);
    trim(m, c, req->now_ms);
    memcpy(r.epoch, c->epoch, sizeof(r.epoch));
    r.offset = c->top;
    uint64_t oldest = c->top - c->len + 1;
    uint32_t from = 0, n = c->len;
    if (req->has_since) {
        if (req->since >= c->top)
            n = 0;
        else if (req->since + 1 > oldest)
            from = (uint32_t)(req->since + 1 - oldest);
        n = n == 0 ? 0 : c->len - from;
        if (req->limit != 0 && n > req->limit)
            n = (uint32_t)req->limit;
    } else if (req->limit != 0 && n > req->limit) {
        n = (uint32_t)req->limit;
        from = c->len - n;
    }
    rc = collect(c, from, n, &msgs, &blobs);
    pthread_mutex_unlock(&c->mu);
    channel_put(c);
    if (rc != WSH_OK)
        return rc;
    r.msgs = msgs;
    r.nmsgs = r.count = n;
    cb(&r, user);
    release_msgs(msgs, blobs, n);
    return WSH_OK;
}

static int memory_recover(void *self, const char *channel, uint64_t offset, const char *epoch,
                          int64_t now_ms, wsh_broker_cb *cb, void *user)
{
    struct memory *m = self;
    struct wsh_broker_result r;
    result_init(&r, WSH_BROKER_OP_RECOVER, channel);
    struct channel *c;
    int rc = channel_get(m, channel, false, &c);
    if (rc != WSH_OK)
        return rc;
    if (c == NULL) {
        cb(&r, user);
        return WSH_OK;
    }
    struct wsh_broker_msg *msgs = NULL;
    struct blob **blobs = NULL;
    uint32_t n = 0;
    pthread_mutex_lock(&c->mu);
    trim(m, c, now_ms);
    memcpy(r.epoch, c->epoch, sizeof(r.epoch));
    r.offset = c->top;
    /* Every message in (offset, top] must still be retained; the ring holds
     * the contiguous range (top - len, top]. */
    if (strcmp(epoch, c->epoch) == 0 && offset <= c->top && c->top - offset <= c->len) {
        n = (uint32_t)(c->top - offset);
        rc = collect(c, c->len - n, n, &msgs, &blobs);
        r.recovered = rc == WSH_OK;
    }
    pthread_mutex_unlock(&c->mu);
    channel_put(c);
    if (rc != WSH_OK)
        return rc;
    r.msgs = msgs;
    r.nmsgs = r.count = n;
    cb(&r, user);
    release_msgs(msgs, blobs, n);
    return WSH_OK;
}

/* ---- subscriptions --------------------------------------------------------- */

static int memory_subscribe(void *self, const char *channel, wsh_broker_cb *cb, void *user)
{
    struct memory *m = self;
    struct channel *c;
    int rc = channel_get(m, channel, true, &c);
    if (rc != WSH_OK)
        return rc;
    struct wsh_broker_result r;
    result_init(&r, WSH_BROKER_OP_SUBSCRIBE, channel);
    pthread_mutex_lock(&c->mu);
    r.changed = c->subs++ == 0;
    memcpy(r.epoch, c->epoch, sizeof(r.epoch));
    r.offset = c->top;
    pthread_mutex_unlock(&c->mu);
    atomic_fetch_add(&m->subscriptions, 1);
    if (cb != NULL)
        cb(&r, user);
    channel_put(c);
    return WSH_OK;
}

static int memory_unsubscribe(void *self, const char *channel, wsh_broker_cb *cb, void *user)
{
    struct memory *m = self;
    struct channel *c;
    int rc = channel_get(m, channel, false, &c);
    if (rc != WSH_OK)
        return rc;
    if (c == NULL)
        return WSH_EINVAL;
    struct wsh_broker_result r;
    result_init(&r, WSH_BROKER_OP_UNSUBSCRIBE, channel);
    pthread_mutex_lock(&c->mu);
    if (c->subs == 0) {
        rc = WSH_EINVAL;
    } else {
        r.changed = --c->subs == 0;
        memcpy(r.epoch, c->epoch, sizeof(r.epoch));
        r.offset = c->top;
    }
    pthread_mutex_unlock(&c->mu);
    if (rc == WSH_OK) {
        atomic_fetch_sub(&m->subscriptions, 1);
        if (cb != NULL)
            cb(&r, user);
    }
    channel_put(c);
    return rc;
}

/* ---- presence -------------------------------------------------------------- */

static int memory_presence_add(void *self, const char *channel, const char *client,
                               const char *user_id, const char *info, size_t info_len,
                               wsh_broker_cb *cb, void *user)
{
    struct memory *m = self;
    if (info_len > m->max_payload)
        return WSH_ETOOBIG;
    if (user_id == NULL)
        user_id = "";
    size_t cl = strlen(client), ul = strlen(user_id);
    struct member *e = malloc(sizeof(*e) + cl + ul + info_len + 3);
    if (e == NULL)
        return WSH_ENOMEM;
    char *p = e->data;
    memcpy(p, client, cl + 1);
    e->node.key = p;
    e->node.klen = cl;
    e->node.h.hash = wsh_siphash13(m->key, client, cl);
    p += cl + 1;
    memcpy(p, user_id, ul + 1);
    e->user = p;
    p += ul + 1;
    if (info_len > 0)
        memcpy(p, info, info_len);
    p[info_len] = '\0';
    e->info = p;
    e->info_len = info_len;

    struct channel *c;
    int rc = channel_get(m, channel, true, &c);
    if (rc != WSH_OK) {
        free(e);
        return rc;
    }
    struct wsh_broker_result r;
    result_init(&r, WSH_BROKER_OP_PRESENCE_ADD, channel);
    struct node *old;
    pthread_mutex_lock(&c->mu);
    old = map_find(&c->members, e->node.key, e->node.klen, e->node.h.hash);
    if (old != NULL)
        map_remove(&c->members, old);
    else if (c->members.n >= m->presence_max)
        rc = WSH_EPOLICY;
    else
        rc = map_reserve(&c->members);
    if (rc == WSH_OK) {
        map_insert(&c->members, &e->node);
        e = NULL;
        r.changed = old == NULL;
    }
    r.count = c->members.n;
    pthread_mutex_unlock(&c->mu);
    channel_put(c);
    free(old);
    free(e);
    if (rc != WSH_OK)
        return rc;
    if (r.changed)
        atomic_fetch_add(&m->presence, 1);
    if (cb != NULL)
        cb(&r, user);
    return WSH_OK;
}

static int memory_presence_remove(void *self, const char *channel, const char *client,
                                  wsh_broker_cb *cb, void *user)
{
    struct memory *m = self;
    struct wsh_broker_result r;
    result_init(&r, WSH_BROKER_OP_PRESENCE_REMOVE, channel);
    struct channel *c;
    int rc = channel_get(m, channel, false, &c);
    if (rc != WSH_OK)
        return rc;
    struct node *n = NULL;
    if (c != NULL) {
        size_t cl = strlen(client);
        uint64_t h = wsh_siphash13(m->key, client, cl);
        pthread_mutex_lock(&c->mu);
        n = map_find(&c->members, client, cl, h);
        if (n != NULL)
            map_remove(&c->members, n);
        r.count = c->members.n;
        pthread_mutex_unlock(&c->mu);
        channel_put(c);
    }
    if (n != NULL) {
        free(n);
        atomic_fetch_sub(&m->presence, 1);
        r.changed = true;
    }
    if (cb != NULL)
        cb(&r, user);
    return WSH_OK;
}

struct list_ctx {
    struct wsh_broker_member *out;
    char *strings;
    size_t i;
};

static void list_one(struct node *n, void *arg)
{
    struct list_ctx *x = arg;
    const struct member *e = CONTAINER(n, struct member, node);
    struct wsh_broker_member *o = &x->out[x->i++];
    /* Copy-out: entries can be replaced or removed as soon as the lock is
     * released, and presence lists are small next to history. */
    size_t len = n->klen + strlen(e->user) + e->info_len + 3;
    memcpy(x->strings, e->data, len);
    o->client = x->strings;
    o->user = x->strings + n->klen + 1;
    o->info = o->user + strlen(o->user) + 1;
    o->info_len = e->info_len;
    x->strings += len;
}

static void add_size(struct node *n, void *arg)
{
    const struct member *e = CONTAINER(n, struct member, node);
    *(size_t *)arg += n->klen + strlen(e->user) + e->info_len + 3;
}

static int memory_presence_list(void *self, const char *channel, wsh_broker_cb *cb, void *user)
{
    struct memory *m = self;
    struct wsh_broker_result r;
    result_init(&r, WSH_BROKER_OP_PRESENCE_LIST, channel);
    struct channel *c;
    int rc = channel_get(m, channel, false, &c);
    if (rc != WSH_OK)
        return rc;
    void *mem = NULL;
    if (c != NULL) {
        pthread_mutex_lock(&c->mu);
        size_t n = c->members.n, bytes = 0;
        map_each(&c->members, add_size, &bytes);
        if (n > 0) {
            mem = malloc(n * sizeof(struct wsh_broker_member) + bytes);
            if (mem == NULL) {
                rc = WSH_ENOMEM;
            } else {
                struct list_ctx x = { mem, (char *)mem + n * sizeof(struct wsh_broker_member), 0 };
                map_each(&c->members, list_one, &x);
                r.members = mem;
                r.nmembers = r.count = n;
            }
        }
        pthread_mutex_unlock(&c->mu);
        channel_put(c);
    }
    if (rc != WSH_OK)
        return rc;
    cb(&r, user);
    free(mem);
    return WSH_OK;
}

static int memory_presence_count(void *self, const char *channel, wsh_broker_cb *cb, void *user)
{
    struct memory *m = self;
    struct wsh_broker_result r;
    result_init(&r, WSH_BROKER_OP_PRESENCE_COUNT, channel);
    struct channel *c;
    int rc = channel_get(m, channel, false, &c);
    if (rc != WSH_OK)
        return rc;
    if (c != NULL) {
        pthread_mutex_lock(&c->mu);
        r.count = c->members.n;
        pthread_mutex_unlock(&c->mu);
        channel_put(c);
    }
    cb(&r, user);
    return WSH_OK;
}

/* ---- read cursors ---------------------------------------------------------- */

static int memory_read_set(void *self, const char *channel, const char *user_id, uint64_t offset,
                           wsh_broker_cb *cb, void *user)
{
    struct memory *m = self;
    size_t ul = strlen(user_id);
    uint64_t h = wsh_siphash13(m->key, user_id, ul);
    struct reader *e = malloc(sizeof(*e) + ul + 1);
    if (e == NULL)
        return WSH_ENOMEM;
    memcpy(e->key, user_id, ul + 1);
    e->node.key = e->key;
    e->node.klen = ul;
    e->node.h.hash = h;

    struct channel *c;
    int rc = channel_get(m, channel, true, &c);
    if (rc != WSH_OK) {
        free(e);
        return rc;
    }
    struct wsh_broker_result r;
    result_init(&r, WSH_BROKER_OP_READ_SET, channel);
    pthread_mutex_lock(&c->mu);
    if (offset > c->top)
        offset = c->top;
    struct node *n = map_find(&c->readers, user_id, ul, h);
    if (n != NULL) {
        struct reader *cur = CONTAINER(n, struct reader, node);
        r.changed = offset > cur->offset;
        if (r.changed)
            cur->offset = offset;
        r.read_offset = cur->offset;
    } else if (c->readers.n >= m->readers_max) {
        rc = WSH_EPOLICY;
    } else if ((rc = map_reserve(&c->readers)) == WSH_OK) {
        e->offset = offset;
        map_insert(&c->readers, &e->node);
        e = NULL;
        r.changed = offset > 0; /* no cursor reads as 0 */
        r.read_offset = offset;
    }
    memcpy(r.epoch, c->epoch, sizeof(r.epoch));
    r.offset = c->top;
    pthread_mutex_unlock(&c->mu);
    channel_put(c);
    free(e);
    if (rc != WSH_OK)
        return rc;
    if (cb != NULL)
        cb(&r, user);
    return WSH_OK;
}

static int memory_read_get(void *self, const char *channel, const char *user_id, wsh_broker_cb *cb,
                           void *user)
{
    struct memory *m = self;
    struct wsh_broker_result r;
    result_init(&r, WSH_BROKER_OP_READ_GET, channel);
    struct channel *c;
    int rc = channel_get(m, channel, false, &c);
    if (rc != WSH_OK)
        return rc;
    if (c != NULL) {
        size_t ul = strlen(user_id);
        pthread_mutex_lock(&c->mu);
        struct node *n = map_find(&c->readers, user_id, ul, wsh_siphash13(m->key, user_id, ul));
        if (n != NULL)
            r.read_offset = CONTAINER(n, struct reader, node)->offset;
        memcpy(r.epoch, c->epoch, sizeof(r.epoch));
        r.offset = c->top;
        pthread_mutex_unlock(&c->mu);
        channel_put(c);
    }
    cb(&r, user);
    return WSH_OK;
}

/* ---- stats, sweep, lifetime ----------------------------------------------- */

static int memory_channel_stats(void *self, const char *channel, int64_t now_ms, wsh_broker_cb *cb,
                                void *user)
{
    struct memory *m = self;
    struct wsh_broker_result r;
    struct wsh_broker_channel_stats s;
    memset(&s, 0, sizeof(s));
    result_init(&r, WSH_BROKER_OP_CHANNEL_STATS, channel);
    r.stats = &s;
    struct channel *c;
    int rc = channel_get(m, channel, false, &c);
    if (rc != WSH_OK)
        return rc;
    if (c != NULL) {
        pthread_mutex_lock(&c->mu);
        trim(m, c, now_ms);
        memcpy(r.epoch, c->epoch, sizeof(r.epoch));
        r.offset = s.offset = c->top;
        s.exists = true;
        s.history_len = c->len;
        s.history_bytes = c->ring_bytes;
        s.subscribers = c->subs;
        s.presence = c->members.n;
        s.readers = c->readers.n;
        s.dedup_ids = c->dedup.n;
        pthread_mutex_unlock(&c->mu);
        channel_put(c);
    }
    cb(&r, user);
    return WSH_OK;
}

static int memory_info(void *self, wsh_broker_cb *cb, void *user)
{
    struct memory *m = self;
    struct wsh_broker_result r;
    struct wsh_broker_info i;
    result_init(&r, WSH_BROKER_OP_INFO, NULL);
    pthread_rwlock_rdlock(&m->lock);
    i.channels = m->channels.n;
    pthread_rwlock_unlock(&m->lock);
    i.engine = "memory";
    i.subscriptions = atomic_load(&m->subscriptions);
    i.presence = atomic_load(&m->presence);
    i.history_messages = atomic_load(&m->history_messages);
    i.history_bytes = atomic_load(&m->history_bytes);
    i.published = atomic_load(&m->published);
    i.duplicates = atomic_load(&m->duplicates);
    i.channels_freed = atomic_load(&m->channels_freed);
    i.channels_refused = atomic_load(&m->channels_refused);
    i.history_evicted = atomic_load(&m->history_evicted);
    i.history_memory = history_memory(m);
    r.info = &i;
    cb(&r, user);
    return WSH_OK;
}

/* One pass under the registry's write lock, O(channels). Channels in use
 * (refs > 0) are skipped: their users trim them lazily, and skipping them
 * is what makes freeing safe without touching their locks. */
struct sweep {
    struct memory *m;
    int64_t now_ms;
};

static bool sweep_one(struct wsh_hnode *e, void *arg)
{
    struct sweep *x = arg;
    struct channel *c = CONTAINER(e, struct channel, node.h);
    if (atomic_load(&c->refs) != 0)
        return false;
    trim(x->m, c, x->now_ms);
    if (!channel_idle(c))
        return false;
    channel_free(x->m, c);
    return true;
}

static size_t memory_sweep(void *self, int64_t now_ms)
{
    struct memory *m = self;
    struct sweep x = { m, now_ms };
    pthread_rwlock_wrlock(&m->lock);
    size_t freed = wsh_htab_filter(&m->channels, sweep_one, &x);
    wsh_htab_shrink(&m->channels, 8);
    pthread_rwlock_unlock(&m->lock);
    atomic_fetch_add(&m->channels_freed, freed);
    evict(m); /* after a reload lowered the bound */
    return freed;
}

static void memory_set_limits(void *self, const struct wsh_broker_limits *l)
{
    struct memory *m = self;
    atomic_store(&m->max_channels, l->max_channels);
    atomic_store(&m->max_history, l->max_history_memory);
}

static bool free_channel(struct wsh_hnode *e, void *arg)
{
    channel_free(arg, CONTAINER(e, struct channel, node.h));
    return true;
}

static void memory_destroy(void *self)
{
    struct memory *m = self;
    wsh_htab_filter(&m->channels, free_channel, m);
    wsh_htab_free(&m->channels);
    pthread_mutex_destroy(&m->lru_mu);
    pthread_rwlock_destroy(&m->lock);
    free(m);
}

static const struct wsh_broker_ops memory_ops = {
    .name = "memory",
    .publish = memory_publish,
    .history = memory_history,
    .recover = memory_recover,
    .subscribe = memory_subscribe,
    .unsubscribe = memory_unsubscribe,
    .presence_add = memory_presence_add,
    .presence_remove = memory_presence_remove,
    .presence_list = memory_presence_list,
    .presence_count = memory_presence_count,
    .read_set = memory_read_set,
    .read_get = memory_read_get,
    .channel_stats = memory_channel_stats,
    .info = memory_info,
    .sweep = memory_sweep,
    .set_limits = memory_set_limits,
    .destroy = memory_destroy,
};

int wsh_broker_memory_create(const struct wsh_broker_memory_opts *o, struct wsh_broker **out)
{
    if (out == NULL)
        return WSH_EINVAL;
    struct memory *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return WSH_ENOMEM;
    if (pthread_rwlock_init(&m->lock, NULL) != 0) {
        free(m);
        return WSH_ENOMEM;
    }
    if (pthread_mutex_init(&m->lru_mu, NULL) != 0) {
        pthread_rwlock_destroy(&m->lock);
        free(m);
        return WSH_ENOMEM;
    }
    struct wsh_broker_memory_opts d = { 0 };
    if (o == NULL)
        o = &d;
    m->max_payload = o->max_payload != 0 ? o->max_payload : WSH_BROKER_DEFAULT_MAX_PAYLOAD;
    memory_set_limits(m, &o->limits);
    m->dedup_max = o->dedup_max != 0 ? o->dedup_max : WSH_BROKER_DEFAULT_DEDUP_MAX;
    m->presence_max = o->presence_max != 0 ? o->presence_max : WSH_BROKER_DEFAULT_PRESENCE_MAX;
    m->readers_max = o->readers_max != 0 ? o->readers_max : WSH_BROKER_DEFAULT_READERS_MAX;
    m->on_message = o->on_message;
    m->user = o->user;
    wsh_random_bytes(m->key, sizeof(m->key));
    return wsh_broker_create(&memory_ops, m, out);
}
