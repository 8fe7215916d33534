/* Raw channels (/raw/<channel>): every message goes to every other
 * connection on the channel, on every worker. The frame is encoded once;
 * each recipient's queue holds a reference (DESIGN.md 2). Other workers get
 * one inbox entry per message and one eventfd wakeup per loop turn.
 *
 * Small messages a publisher sent in one read are published together, as
 * one buffer holding their frames back to back (the publish batch, below):
 * each recipient then costs one reference, one queue entry and one iovec
 * per read instead of per message, and the kernel copies one segment.
 *
 * Channel records are shared by all workers and kept in a chanreg (below),
 * which the hub's channels use too.
 *
 * An inbox is bounded by holding its publishers (inbox_push, below): a
 * worker that falls behind, fanning out to many subscribers or compressing
 * for deflate ones, slows the connections that feed it through TCP
 * instead of queueing without limit, or handing its subscribers more in
 * one turn than their --max-queue. A message its own worker compresses
 * for deflate subscribers goes through that worker's own inbox too
 * (defer_local), so that its compression is sliced and bounded alike. */
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"
#include "wshub/hash.h"

static struct chanreg raw_reg = CHANREG_INIT;

#define CHANREG_FIRST 64u

#define CHANREC_OF(e) ((struct chanrec *)(void *)((char *)(e)-offsetof(struct chanrec, hn)))

struct chanrec *chanreg_get(struct chanreg *reg, const char *name, size_t len, size_t size,
                            chanreg_init_cb *init, void *arg)
{
    pthread_mutex_lock(&reg->mu);
    if (reg->tab.nb == 0 && reg->key[0] == 0 && reg->key[1] == 0)
        wsh_random_bytes(reg->key, sizeof(reg->key));
    uint64_t h = wsh_siphash13(reg->key, name, len);
    struct chanrec *r = NULL;
    for (struct wsh_hnode *e = wsh_htab_chain(&reg->tab, h); e != NULL && r == NULL; e = e->next)
        if (e->hash == h && CHANREC_OF(e)->name_len == len &&
            memcmp(CHANREC_OF(e)->name, name, len) == 0)
            r = CHANREC_OF(e);
    if (r == NULL && size > 0) {
        if (!wsh_htab_reserve(&reg->tab, CHANREG_FIRST)) {
            pthread_mutex_unlock(&reg->mu);
            return NULL;
        }
        r = calloc(1, size);
        char *nm = malloc(len + 1);
        if (r == NULL || nm == NULL) {
            free(r);
            free(nm);
            pthread_mutex_unlock(&reg->mu);
            return NULL;
        }
        memcpy(nm, name, len);
        nm[len] = '\0';
        r->name = nm;
        r->name_len = len;
        r->hn.hash = h;
        if (init)
            init(r, arg);
        wsh_htab_insert(&reg->tab, &r->hn);
    }
    if (r)
        atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&reg->mu);
    return r;
}

static bool free_unheld(struct wsh_hnode *e, void *arg)
{
    (void)arg;
    struct chanrec *r = CHANREC_OF(e);
    if (atomic_load_explicit(&r->refs, memory_order_acquire) != 0)
        return false;
    free(r->name);
    free(r);
    return true;
}

void chanreg_sweep(struct chanreg *reg)
{
    pthread_mutex_lock(&reg->mu);
    wsh_htab_filter(&reg->tab, free_unheld, NULL);
    wsh_htab_shrink(&reg->tab, CHANREG_FIRST);
    pthread_mutex_unlock(&reg->mu);
}

struct each {
    chanreg_init_cb *fn;
    void *arg;
};

static bool each_one(struct wsh_hnode *e, void *arg)
{
    struct each *x = arg;
    x->fn(CHANREC_OF(e), x->arg);
    return false;
}

void chanreg_each(struct chanreg *reg, chanreg_init_cb *fn, void *arg)
{
    struct each x = { fn, arg };
    pthread_mutex_lock(&reg->mu);
    wsh_htab_filter(&reg->tab, each_one, &x);
    pthread_mutex_unlock(&reg->mu);
}

struct rawchan *rawchan_join(struct worker *w, struct conn *c, const char *name, size_t len)
{
    size_t size = sizeof(struct rawchan) + (size_t)wsh_nworkers * sizeof(struct rawchan_local);
    struct rawchan *ch = (struct rawchan *)chanreg_get(&raw_reg, name, len, size, NULL, NULL);
    if (ch == NULL)
        return NULL;

    struct rawchan_local *loc = &ch->local[w->id];
    c->chan = ch;
    c->chan_prev = NULL;
    c->chan_next = loc->head;
    if (loc->head)
        loc->head->chan_prev = c;
    loc->head = c;
    atomic_fetch_add_explicit(&loc->n, 1, memory_order_relaxed);
    return ch;
}

void rawchan_leave(struct worker *w, struct conn *c)
{
    /* What it published before leaving still goes out, in order. */
    if (w->batch != NULL && w->batch_from == c)
        rawchan_flush(w);
    struct rawchan *ch = c->chan;
    struct rawchan_local *loc = &ch->local[w->id];
    if (c->chan_prev)
        c->chan_prev->chan_next = c->chan_next;
    else
        loc->head = c->chan_next;
    if (c->chan_next)
        c->chan_next->chan_prev = c->chan_prev;
    c->chan = NULL;
    c->chan_next = c->chan_prev = NULL;
    atomic_fetch_sub_explicit(&loc->n, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&ch->refs, 1, memory_order_release);
}

/* Whether a frame's payload is compressed for deflate recipients. Such
 * frames are never batched, so a publish batch, whose first frame (what
 * frame_payload sees) is one that was not worth it, always goes out
 * plain. */
static bool worth_deflating(size_t plen)
{
    return wsh_cfg.deflate && wsh_pmd_worth_compressing(&wsh_cfg.pmd, plen);
}

void zcache_init(struct zcache *z, struct wsh_buf *frame)
{
    memset(z, 0, sizeof(*z));
    z->frame = frame;
    z->payload = frame_payload(frame, &z->plen);
    z->worth = worth_deflating(z->plen);
}

/* The frame a recipient gets: the shared plain frame, or for a connection
 * with permessage-deflate a compressed copy made once per distinct deflate
 * window on this worker and shared like the plain one (our side never
 * keeps compression context, so the bytes depend only on the window and
 * the payload). */
struct wsh_buf *zcache_frame(struct zcache *z, const struct conn *c)
{
    if (!z->worth || c->pmd == NULL)
        return z->frame;
    uint8_t bits = wsh_pmd_server_window_bits(c->pmd) & 15u;
    if (z->buf[bits] == NULL && !z->failed[bits]) {
        z->buf[bits] =
            frame_deflate(NULL, bits, z->frame->data[z->frame->start] & 0x0fu, z->payload, z->plen);
        z->failed[bits] = z->buf[bits] == NULL;
    }
    return z->buf[bits] ? z->buf[bits] : z->frame;
}

void zcache_release(struct zcache *z)
{
    for (int i = 0; i < 16; i++)
        if (z->buf[i])
            wsh_buf_unref(z->buf[i]);
}

/* Sends one encoded frame to every local subscriber but the connection
 * whose id is skip (0: none). An id, not a pointer: a deferred fan-out
 * (publish_now) may outlive its publisher, whose memory a new subscriber
 * could then take. */
static void fan_out_local(struct worker *w, struct rawchan *ch, uint32_t skip,
                          struct wsh_buf *frame)
{
    struct zcache zc;
    zcache_init(&zc, frame);
    struct conn *next;
    for (struct conn *c = ch->local[w->id].head; c != NULL; c = next) {
        /* conn_send may close a slow consumer, unlinking it: read the next
         * link first. */
        next = c->chan_next;
        if (c->id == skip)
            continue;
        conn_send(w, c, wsh_buf_ref(zcache_frame(&zc, c)));
    }
    zcache_release(&zc);
}

/* Bytes an inbox may hold before the publishers that feed it from other
 * workers are held. The receiver releases them when it takes the batch
 * (rawchan_deliver_inbox), so they refill the inbox while it works through
 * the batch: at most two bounds' worth waits per receiver. The bound is
 * also what one turn of the receiver can hand a subscriber, so it stays
 * well under --max-queue's default, and a subscriber that reads as fast
 * as the receiver sends is never cut. A publisher is held after the
 * message or publish batch that crossed the bound: each can add one
 * message past it. Hub messages wait in their own worker's inbox too
 * (hub.c fan_out); that one is taken at the end of the turn once the
 * batch before it is out (INBOX_SLICE_MS), which can take many turns, so
 * its publishers are held the same way; an API broadcast, which could
 * fill it in one turn, checks it before each step (inbox_own_full_wait). */
#define INBOX_HIGH (256u << 10)

static size_t xmsg_bytes(const struct xmsg *m)
{
    return sizeof(*m) + wsh_buf_len(m->buf);
}

/* Whether to's inbox is at its bound, for a pusher on worker self; if so,
 * self asks to be told when it is taken in. The caller holds to's mutex,
 * so the receiver's swap sees the bit. */
static bool inbox_full_wait(struct worker *to, const struct worker *self)
{
    if (atomic_load_explicit(&to->inbox_bytes, memory_order_relaxed) < INBOX_HIGH)
        return false;
    to->inbox_waiters |= (uint64_t)1 << self->id;
    return true;
}

/* inbox_full_wait from outside to's mutex: whether a request that is
 * about to publish should wait for to's inbox first. Under the bound (the
 * common case) the mutex is not taken; a push racing the read is a race
 * the request would meet a moment later anyway. */
static bool inbox_wait_on(struct worker *to, const struct worker *self)
{
    if (atomic_load_explicit(&to->inbox_bytes, memory_order_relaxed) < INBOX_HIGH)
        return false;
    pthread_mutex_lock(&to->inbox_mu);
    bool full = inbox_full_wait(to, self);
    pthread_mutex_unlock(&to->inbox_mu);
    return full;
}

/* The inbox and its spare start at this many messages, allocated with the
 * worker: a push that finds no room and cannot grow the array drops its
 * message, so the common case must not need to grow it. */
#define INBOX_FIRST 256u

int inbox_init(struct worker *w)
{
    w->inbox = malloc(INBOX_FIRST * sizeof(*w->inbox));
    w->spare = malloc(INBOX_FIRST * sizeof(*w->spare));
    if (w->inbox == NULL || w->spare == NULL)
        return WSH_ENOMEM;
    w->inbox_cap = w->spare_cap = INBOX_FIRST;
    return WSH_OK;
}

bool inbox_push(struct worker *to, const struct xmsg *m)
{
    size_t size = xmsg_bytes(m);
    pthread_mutex_lock(&to->inbox_mu);
    if (to->inbox_n == to->inbox_cap) {
        size_t cap = to->inbox_cap ? to->inbox_cap * 2 : INBOX_FIRST;
        struct xmsg *n = realloc(to->inbox, cap * sizeof(*n));
        if (n == NULL) {
            pthread_mutex_unlock(&to->inbox_mu);
            /* Dropped: the receiver's memory is exhausted anyway. */
            wsh_buf_unref(m->buf);
            if (m->kind == XMSG_RAW) {
                struct rawchan *ch = m->ch;
                if (m->from != 0) /* to is the pusher's own worker */
                    ch->local[to->id].deferred--;
                atomic_fetch_sub_explicit(&ch->refs, 1, memory_order_release);
            } else
                hub_deliver_inbox(NULL, m);
            return false;
        }
        to->inbox = n;
        to->inbox_cap = cap;
    }
    to->inbox[to->inbox_n++] = *m;
    /* Atomic only so that /metrics may read it; written under the mutex. */
    size_t held = atomic_load_explicit(&to->inbox_bytes, memory_order_relaxed) + size;
    atomic_store_explicit(&to->inbox_bytes, held, memory_order_relaxed);
    /* A push to the pusher's own inbox (a /ws publish, hub.c fan_out; a
     * deferred /raw fan-out, defer_local) is bounded too while a batch is
     * delivered a slice a turn (INBOX_SLICE_MS): that inbox waits until
     * the batch is out, and its publishers would fill it all that time.
     * Otherwise it is taken at the end of this turn, and holding its
     * publishers would only cost a turn each (a 100 KB message fanned out
     * to 100 deflate subscribers took twice the CPU, in twice the turns). */
    struct worker *self = wsh_self;
    bool full = self != NULL && (to != self || self->carry != NULL) && inbox_full_wait(to, self);
    uint16_t gen = (uint16_t)atomic_load_explicit(&to->inbox_takes, memory_order_relaxed);
    atomic_store_explicit(&to->inbox_ready, true, memory_order_release);
    pthread_mutex_unlock(&to->inbox_mu);
    if (full) {
        /* The caller holds its publisher until that inbox is taken: of
         * several, another worker's, as its own is taken every turn (or
         * at the end of a batch in slices) and the publisher pushing to it
         * again finds it full again. */
        if (!self->inbox_full || to != self) {
            self->inbox_full_on = (uint8_t)to->id;
            self->inbox_full_gen = gen;
        }
        self->inbox_full = true;
    }
    return true;
}

/* Its own inbox included: what a request publishes waits there too, and
 * while a long batch from the others is delivered a slice a turn
 * (INBOX_SLICE_MS) that inbox is not taken, so requests answered at once
 * would fill it for as long. */
bool inbox_busy_wait(struct worker *self)
{
    for (int i = 0; i < wsh_nworkers; i++)
        if (inbox_wait_on(&wsh_workers[i], self))
            return true;
    return false;
}

/* For a request that publishes many messages at once (an API broadcast),
 * between its steps: whether this worker's own inbox is at its bound.
 * Publishes of this worker wait in it until it is taken (hub.c fan_out;
 * at the end of a turn, once any batch before it is out), so one request
 * could fill it without limit; past the bound the request waits for that
 * take, told like a publisher held for another worker's inbox (the take
 * wakes this worker once more to release it). */
bool inbox_own_full_wait(struct worker *self)
{
    return inbox_wait_on(self, self);
}

/* The take of one generation wakes every worker with a publisher held
 * for it, but such a worker may meanwhile have held another publisher for
 * the next generation, which that take did not empty: released with the
 * first, it added a second message past the bound (a batch of 9 messages
 * with 8 publishers, seen under ASan). The generation is kept in 16 bits,
 * all struct conn has room for: when it reads the same, self's waiter bit
 * tells a generation not taken yet (the bit is set, by this push or a
 * later one of self's, and the take will tell us) from one taken a
 * multiple of 65536 takes ago (the bit was cleared). */
bool inbox_taken_since(struct worker *self, int id, uint16_t gen)
{
    struct worker *to = &wsh_workers[id];
    if ((uint16_t)atomic_load_explicit(&to->inbox_takes, memory_order_relaxed) != gen)
        return true;
    pthread_mutex_lock(&to->inbox_mu);
    bool waiting = (to->inbox_waiters >> self->id) & 1u;
    pthread_mutex_unlock(&to->inbox_mu);
    return !waiting;
}

size_t inbox_bytes_total(void)
{
    size_t n = 0;
    for (int i = 0; i < wsh_nworkers; i++)
        n += atomic_load_explicit(&wsh_workers[i].inbox_bytes, memory_order_relaxed);
    return n;
}

/* Tells the workers that held publishers for w's inbox that it was
 * taken. They are woken now, not with the end-of-turn wakeups: the batch
 * just taken is what w works on for the rest of its turn, and the
 * publishers are to refill the inbox meanwhile. Deferred, they slept until
 * w had delivered the whole batch, and w's next turn found the inbox all
 * but empty. One wakeup per drained inbox with waiters, at most one per
 * INBOX_HIGH bytes. w itself (a request held for its own inbox, hub.c)
 * is woken at the end of its turn, as it is running now. */
static void inbox_release(struct worker *w, uint64_t waiters)
{
    for (int i = 0; i < wsh_nworkers; i++) {
        if (!(waiters & ((uint64_t)1 << i)))
            continue;
        atomic_fetch_or(&wsh_workers[i].inbox_resume, (uint64_t)1 << w->id);
        if (i == w->id)
            w->wake[i] = true;
        else
            worker_wake(&wsh_workers[i]);
    }
}

/* A message that is compressed for the publisher's own worker's deflate
 * subscribers would be compressed in the publisher's read, once per
 * window. Up to a read's worth (READ_MAX) that is work in proportion to
 * what the turn read, like its inflating and UTF-8 checks; but a larger
 * message, read over many turns, is compressed whole in the turn that
 * completes it: eight 1 MB messages completing in one turn at level 9
 * kept the worker off its other sockets for over a second, unsliced. Such
 * a fan-out goes through the worker's own inbox instead, delivered at the
 * end of the turn a slice at a time like the other workers' messages
 * (INBOX_SLICE_MS), and while such a batch goes on its publisher is held
 * past the inbox's bound like theirs (inbox_push). While any of a
 * channel's local fan-outs wait there (deferred), the channel's next ones
 * wait behind them, whatever their size, so a publisher's messages keep
 * their order. Whether the channel has deflate subscribers here is not
 * tracked: a plain fan-out of a message this large is cheap either way,
 * and deferred it goes out in the same turn. */
static bool defer_local(struct worker *w, struct rawchan *ch, struct conn *from,
                        const struct wsh_buf *frame)
{
    struct rawchan_local *loc = &ch->local[w->id];
    if (loc->deferred > 0)
        return true;
    if (!wsh_cfg.deflate || loc->head == NULL || (loc->head == from && from->chan_next == NULL))
        return false;
    size_t plen;
    frame_payload(frame, &plen);
    return plen > READ_MAX && worth_deflating(plen);
}

static void publish_now(struct worker *w, struct conn *from, struct wsh_buf *frame)
{
    struct rawchan *ch = from->chan;
    if (ch == NULL) {
        wsh_buf_unref(frame);
        return;
    }
    for (int i = 0; i < wsh_nworkers; i++) {
        if (i == w->id)
            continue;
        /* A racy read: a subscriber joining on that worker right now may
         * miss this message, as it would had it joined a moment later. */
        if (atomic_load_explicit(&ch->local[i].n, memory_order_relaxed) == 0)
            continue;
        atomic_fetch_add_explicit(&ch->refs, 1, memory_order_relaxed);
        struct xmsg m = { .ch = ch, .buf = wsh_buf_ref(frame), .kind = XMSG_RAW };
        inbox_push(&wsh_workers[i], &m);
        w->wake[i] = true;
    }
    if (defer_local(w, ch, from, frame)) {
        ch->local[w->id].deferred++;
        atomic_fetch_add_explicit(&ch->refs, 1, memory_order_relaxed);
        struct xmsg m = { .ch = ch, .buf = frame, .kind = XMSG_RAW, .from = from->id };
        inbox_push(w, &m); /* the frame's reference goes with it */
        return;
    }
    fan_out_local(w, ch, from->id, frame);
    wsh_buf_unref(frame);
}

/* The publish batch. A frame of at most BATCH_FRAME_MAX bytes that is not
 * compressed for anyone waits in the worker's batch; the batch goes out
 * when the publisher's read is done (rawchan_flush from conn_read), before
 * the publisher leaves its channel, before a frame that must go alone, or
 * when the next frame would take it past BATCH_MAX. A batch of one frame
 * is that frame itself (no copy); the second frame starts a buffer sized
 * to what is in it, grown by doubling, so a batch never holds more than
 * twice its bytes, whoever keeps it queued. */
#define BATCH_FRAME_MAX 1024u
#define BATCH_MAX       16384u

void rawchan_flush(struct worker *w)
{
    struct wsh_buf *b = w->batch;
    if (b == NULL)
        return;
    w->batch = NULL;
    w->batch_copied = false;
    publish_now(w, w->batch_from, b);
}

/* Appends frame's bytes to the batch buffer; false on ENOMEM. */
static bool batch_append(struct worker *w, const struct wsh_buf *frame)
{
    size_t n = wsh_buf_len(frame);
    struct wsh_buf *b = w->batch;
    if ((size_t)b->end + n > b->cap) {
        struct wsh_buf *nb = wsh_buf_grow(b, ((size_t)b->end + n) * 2);
        if (nb == NULL)
            return false;
        w->batch = b = nb;
    }
    memcpy(b->data + b->end, frame->data + frame->start, n);
    b->end += (uint32_t)n;
    return true;
}

void rawchan_publish(struct worker *w, struct conn *from, struct wsh_buf *frame)
{
    size_t plen;
    frame_payload(frame, &plen);
    size_t n = wsh_buf_len(frame);
    bool alone = n > BATCH_FRAME_MAX || worth_deflating(plen) || from->chan == NULL;
    if (w->batch != NULL &&
        (alone || w->batch_from != from || wsh_buf_len(w->batch) + n > BATCH_MAX))
        rawchan_flush(w);
    if (alone)
        goto alone;
    if (w->batch == NULL) {
        w->batch = frame;
        w->batch_from = from;
        return;
    }
    if (!w->batch_copied) {
        /* The second frame: copy the first into a buffer of our own. */
        struct wsh_buf *first = w->batch;
        struct wsh_buf *b = wsh_buf_new((wsh_buf_len(first) + n) * 2);
        if (b == NULL)
            goto flush_alone;
        memcpy(b->data, first->data + first->start, wsh_buf_len(first));
        b->end = (uint32_t)wsh_buf_len(first);
        w->batch = b;
        w->batch_copied = true;
        wsh_buf_unref(first);
    }
    if (!batch_append(w, frame))
        goto flush_alone;
    wsh_buf_unref(frame);
    return;

flush_alone: /* out of memory: what is batched goes first, then this alone */
    rawchan_flush(w);
alone:
    publish_now(w, from, frame);
}

/* How long one loop turn may spend delivering a taken inbox batch before
 * the worker reads its sockets again. A batch is what the inbox bound lets
 * in, plus up to one message per publisher past it, and each message is
 * compressed once per deflate window of its recipients: a batch of 1 MB
 * messages for four windows at level 9 took over a second, during which
 * the worker's other connections went unread and its timers late. The
 * rest of the batch waits in w->carry and goes on at the next turn, which
 * the worker wakes itself for; its inbox fills meanwhile, up to the bound,
 * and is taken only when the carry is done, so messages keep their order
 * and what waits stays at one batch and one inbox. At least one message is
 * delivered per turn, however late the turn already is. */
#define INBOX_SLICE_MS 10u

static void deliver_one(struct worker *w, const struct xmsg *m)
{
    if (m->kind != XMSG_RAW) {
        hub_deliver_inbox(w, m);
        return;
    }
    struct rawchan *ch = m->ch;
    if (m->from != 0)
        ch->local[w->id].deferred--;
    fan_out_local(w, ch, m->from, m->buf);
    wsh_buf_unref(m->buf);
    atomic_fetch_sub_explicit(&ch->refs, 1, memory_order_release);
}

/* Takes the inbox as the carry; false when nothing was pushed since the
 * last take. */
static bool inbox_take(struct worker *w)
{
    /* Called every loop turn: most turns have nothing for us. */
    if (!atomic_exchange_explicit(&w->inbox_ready, false, memory_order_acquire))
        return false;
    pthread_mutex_lock(&w->inbox_mu);
    w->carry = w->inbox;
    w->carry_n = w->inbox_n;
    w->carry_cap = w->inbox_cap;
    w->carry_i = 0;
    w->inbox = w->spare;
    w->inbox_cap = w->spare_cap;
    w->inbox_n = 0;
    w->spare = NULL;
    w->spare_cap = 0;
    atomic_store_explicit(&w->inbox_bytes, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->inbox_takes, 1, memory_order_relaxed);
    uint64_t waiters = w->inbox_waiters;
    w->inbox_waiters = 0;
    pthread_mutex_unlock(&w->inbox_mu);
    if (waiters != 0)
        inbox_release(w, waiters);
    w->carry_t0 = wsh_now_ms();
    w->carry_slices = 0;
    return true;
}

void rawchan_deliver_inbox(struct worker *w)
{
    if (w->carry == NULL && !inbox_take(w))
        return;
    /* Called once a turn, from before_sleep. The turn began when epoll
     * returned: what its events took counts against the slice too, and
     * at least one message goes out whatever the time. */
    uint64_t until = wsh_loop_now(w->loop) + INBOX_SLICE_MS;
    w->carry_slices++;
    /* (A taken inbox may be empty: a push between the exchange of
     * inbox_ready and the lock lands in the batch taken and sets the flag
     * again.) */
    for (bool first = true; w->carry_i < w->carry_n && (first || wsh_now_ms() < until);
         first = false)
        deliver_one(w, &w->carry[w->carry_i++]);
    if (w->carry_i < w->carry_n) {
        w->wake[w->id] = true; /* the next turn goes on without sleeping */
        return;
    }
    if (w->carry_slices > 1)
        wsh_log(WSH_LOG_DEBUG, "worker=%d ev=inbox_sliced items=%zu slices=%u ms=%llu", w->id,
                w->carry_n, w->carry_slices, (unsigned long long)(wsh_now_ms() - w->carry_t0));
    w->spare = w->carry;
    w->spare_cap = w->carry_cap;
    w->carry = NULL;
    w->carry_n = w->carry_cap = w->carry_i = 0;
    /* What was pushed while the carry went out has had its wakeups: they
     * came during the carry's turns, and those turns did not take the
     * inbox. Without a turn of our own it waited for the next push, socket
     * event or timer (the once-a-second write check, at worst), and a
     * publisher held for it (inbox_full_wait) pushed nothing meanwhile:
     * its channel paused for up to a second. */
    if (atomic_load_explicit(&w->inbox_ready, memory_order_relaxed))
        w->wake[w->id] = true;
}

void rawchan_sweep(void)
{
    chanreg_sweep(&raw_reg);
}
