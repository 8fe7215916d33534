/* Admission: the server-wide rate of WebSocket upgrades
 * (limits.admission_rate), and per client address the connections it
 * holds and the rate at which it opens them (max_connections_per_ip,
 * handshake_rate_per_ip), with limits.max_connections' value. The worker
 * asks at accept (admit_peer, admit_max_conns), when a PROXY header or a
 * trusted proxy's request names the client (admit_ip_acquire) and at the
 * upgrade (admit_upgrade); SIGHUP sets the limits (admit_rate_set,
 * admit_limits_set). LIMITS.md: 503 + Retry-After over the admission rate
 * or max_connections, 429 + Retry-After over a per-address bound. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "server.h"
#include "wshub/hash.h"

/* ------------------------------------------------------------------ */
/* The server-wide admission rate of upgrades                          */

/* limits.admission_rate (LIMITS.md: 503 + Retry-After over the admission
 * rate; 1013, overload after the upgrade, on /ws, where a browser can read
 * it): one token bucket for the whole server, under a mutex taken once per
 * upgrade request. It counts WebSocket upgrades only, so /healthz,
 * /metrics and the API keep answering while a reconnect storm is held
 * back, and the costly part of a connection (authentication, subscribing,
 * replaying history) is what it spaces out. Each refused client is told
 * its own delay: the bucket promises refused clients slots one token's
 * time apart (wsh_rate_promise), so those sent away come back about as
 * fast as they can be let in. Past RETRY_HORIZON_MS of promises the rest
 * are spread over the horizon by connection id. */
#define RETRY_HORIZON_MS 60000u

/* Retry-After for a caller r has just refused: its promised slot, or past
 * the horizon a second spread by `key`. The caller holds r's lock. */
static uint32_t refusal_retry_s(struct wsh_rate *r, uint64_t now, uint32_t key)
{
    uint64_t ms = wsh_rate_promise(r, now, RETRY_HORIZON_MS);
    if (ms == 0)
        ms = 1000u + ((uint64_t)key * 2654435761u) % (RETRY_HORIZON_MS - 1000u);
    return (uint32_t)((ms + 999u) / 1000u);
}

/* The server-wide admission bucket (limits.admission_rate). SIGHUP may
 * change it (admit_rate_set), so the rate lives under admit_mu too;
 * admit_on lets an upgrade skip the lock while it is off. */
static pthread_mutex_t admit_mu = PTHREAD_MUTEX_INITIALIZER;
static struct wsh_rate admit_bucket;
static double admit_rate;     /* guarded by admit_mu */
static uint32_t admit_burst;  /* guarded by admit_mu */
static _Atomic bool admit_on; /* admit_rate > 0 */

void admit_limits_init(void)
{
    admit_rate_set(wsh_cfg.admit_rate, wsh_cfg.admit_burst);
    admit_limits_set(wsh_cfg.max_connections_cfg, wsh_cfg.max_per_ip, wsh_cfg.ip_rate,
                     wsh_cfg.ip_burst, wsh_cfg.ip6_prefix);
}

void admit_rate_set(double rate, uint32_t burst)
{
    pthread_mutex_lock(&admit_mu);
    /* Unchanged settings keep the bucket: a reload is no free refill. */
    if (rate > 0 && (rate != admit_rate || burst != admit_burst))
        wsh_rate_init(&admit_bucket, rate, burst, wsh_now_ms());
    admit_rate = rate;
    admit_burst = burst;
    atomic_store(&admit_on, rate > 0);
    pthread_mutex_unlock(&admit_mu);
}

/* 0 when the upgrade may go ahead, else the seconds for Retry-After. */
uint32_t admit_upgrade(uint32_t key)
{
    if (!atomic_load_explicit(&admit_on, memory_order_relaxed))
        return 0;
    uint32_t retry_s = 0;
    pthread_mutex_lock(&admit_mu);
    uint64_t now = wsh_now_ms();
    if (admit_rate > 0 && !wsh_rate_take(&admit_bucket, now))
        retry_s = refusal_retry_s(&admit_bucket, now, key);
    pthread_mutex_unlock(&admit_mu);
    return retry_s;
}

/* ------------------------------------------------------------------ */
/* Per client address                                                  */

static _Atomic bool ip_on; /* a per-address limit is on (ipl) */

bool admit_per_ip_on(void)
{
    return atomic_load_explicit(&ip_on, memory_order_relaxed);
}

/* Per-address admission of a connection from peer: the socket's address,
 * or the one a PROXY header named. A trusted proxy is not counted here but
 * at its request (route.c forwarded_admit), and *forwarded says so. Returns the
 * seconds for Retry-After when the address is over its bounds, else 0
 * with *ipc the slot to release at destroy (NULL when none was taken). */
uint32_t admit_peer(const struct sockaddr_storage *peer, struct ipcount **ipc, bool *forwarded)
{
    uint32_t retry_s = 0;
    *ipc = NULL;
    size_t ntrusted;
    const struct wsh_cidr *trusted = hub_trusted_proxies(&ntrusted);
    *forwarded = admit_per_ip_on() && wsh_cidr_contains(trusted, ntrusted, peer);
    if (admit_per_ip_on() && !*forwarded)
        *ipc = admit_ip_acquire(peer, &retry_s);
    return retry_s;
}

/* Per client address, over all workers (LIMITS.md: 429 past either
 * bound): how many connections it holds, and a token bucket of new
 * connections it may open. One small table under a mutex taken at accept,
 * at destroy and by the 2-second sweep only. An entry lives while its
 * address holds connections or its bucket is refilling. IPv6 addresses
 * count per limits.ipv6_prefix (a /64 by default; wsh_addr_key). Over the
 * rate, Retry-After comes from the bucket's promised slots, as for the
 * server-wide admission rate: the users behind one NAT who all reconnect
 * at once are told to come back one after the other. */
struct ipcount {
    struct wsh_hnode hn; /* first: the node is the entry */
    uint32_t n;
    uint8_t len;
    uint8_t prefix; /* the ipv6_prefix addr was cut to (IPv6 keys) */
    uint8_t addr[16];
    struct wsh_rate rate; /* with limits.handshake_rate_per_ip */
};

static pthread_mutex_t ip_mu = PTHREAD_MUTEX_INITIALIZER;
static struct wsh_htab ip_table; /* grows with the addresses it holds */
static uint32_t ip_refusals;     /* spreads refusals past the horizon */
/* The limits themselves, which SIGHUP may change (admit_limits_set):
 * guarded by ip_mu, with ip_on saying whether either is on. */
static struct {
    uint32_t max;   /* connections per address, 0 = off */
    double rate;    /* new connections per second per address, 0 = off */
    uint32_t burst; /* its bucket */
    uint32_t v6prefix;
} ipl;
/* limits.max_connections, under the ceiling of RLIMIT_NOFILE. */
static _Atomic size_t max_conns;

size_t admit_max_conns(void)
{
    return atomic_load_explicit(&max_conns, memory_order_relaxed);
}

/* Keyed, like the channel registries (chan.c): a client holding a large
 * IPv6 block must not be able to pick addresses that share one chain,
 * which every accept and close of the server would walk under ip_mu.
 * Under ip_mu; the key is drawn at the first use. */
static uint64_t ip_hash(const uint8_t *a, size_t len)
{
    static uint64_t key[2];
    static bool keyed;
    if (!keyed) {
        wsh_random_bytes(key, sizeof(key));
        keyed = true;
    }
    return wsh_siphash13(key, a, len);
}

/* The entry of ss's address, made when missing; NULL when it cannot be
 * tracked. Under ip_mu. */
static struct ipcount *ip_find(const struct sockaddr_storage *ss, uint64_t now)
{
    uint8_t a[16];
    uint8_t len = (uint8_t)wsh_addr_key(ss, ipl.v6prefix, a);
    if (len == 0)
        return NULL;
    uint64_t h = ip_hash(a, len);
    for (struct wsh_hnode *n = wsh_htab_chain(&ip_table, h); n != NULL; n = n->next) {
        struct ipcount *e = (struct ipcount *)n;
        if (n->hash == h && e->len == len && memcmp(e->addr, a, len) == 0)
            return e;
    }
    if (!wsh_htab_reserve(&ip_table, 256))
        return NULL;
    struct ipcount *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    e->hn.hash = h;
    e->len = len;
    e->prefix = (uint8_t)ipl.v6prefix;
    memcpy(e->addr, a, len);
    if (ipl.rate > 0)
        wsh_rate_init(&e->rate, ipl.rate, ipl.burst, now);
    wsh_htab_insert(&ip_table, &e->hn);
    return e;
}

/* Takes a connection slot and a token for the peer's address. Returns the
 * entry to release at destroy, or NULL with *retry_s set (seconds for
 * Retry-After) when the address is over a bound, or NULL with *retry_s 0
 * when it cannot be tracked (the connection is then let in). */
struct ipcount *admit_ip_acquire(const struct sockaddr_storage *ss, uint32_t *retry_s)
{
    *retry_s = 0;
    pthread_mutex_lock(&ip_mu);
    uint64_t now = wsh_now_ms();
    struct ipcount *e = ip_find(ss, now);
    if (e == NULL) {
        pthread_mutex_unlock(&ip_mu);
        return NULL;
    }
    if (ipl.max > 0 && e->n >= ipl.max) {
        *retry_s = 5; /* a slot frees when one of its connections closes */
        e = NULL;
    } else if (ipl.rate > 0 && !wsh_rate_take(&e->rate, now)) {
        *retry_s = refusal_retry_s(&e->rate, now, ++ip_refusals);
        e = NULL;
    }
    if (e != NULL)
        e->n++;
    pthread_mutex_unlock(&ip_mu);
    return e;
}

static void ip_unlink_free(struct ipcount *e)
{
    wsh_htab_remove(&ip_table, &e->hn);
    free(e);
}

/* Under ip_mu. */
static void ip_put(struct ipcount *e)
{
    /* With a rate limit the entry stays until its bucket is full again
     * (ip_sweep), or closing and reopening would reset it. */
    if (--e->n == 0 && ipl.rate <= 0)
        ip_unlink_free(e);
}

void admit_ip_release(struct ipcount *e)
{
    pthread_mutex_lock(&ip_mu);
    ip_put(e);
    pthread_mutex_unlock(&ip_mu);
}

/* Frees the entries of addresses that hold no connection and whose bucket
 * has refilled: what a forgotten address would start with anyway. Also
 * frees those a refused address left behind. */
static bool ip_forgotten(struct wsh_hnode *n, void *arg)
{
    struct ipcount *e = (struct ipcount *)n;
    if (e->n != 0 || (ipl.rate > 0 && !wsh_rate_full(&e->rate, *(uint64_t *)arg)))
        return false;
    free(e);
    return true;
}

void admit_ip_sweep(void)
{
    pthread_mutex_lock(&ip_mu);
    uint64_t now = wsh_now_ms();
    wsh_htab_filter(&ip_table, ip_forgotten, &now);
    wsh_htab_shrink(&ip_table, 256);
    pthread_mutex_unlock(&ip_mu);
}

/* Whether e is the entry of peer's own address under the prefix e was
 * made with, not of a client an X-Forwarded-For field named (e's fields
 * never change, so no lock). */
static bool ip_is_peer(const struct ipcount *e, const struct sockaddr_storage *peer)
{
    uint8_t a[16];
    size_t len = wsh_addr_key(peer, e->prefix, a);
    return len == e->len && memcmp(a, e->addr, len) == 0;
}

/* Per-address limits turned on by a reload count the connections opened
 * while they were off, so that an address already over its bound is
 * refused from now on (its connections stay, as under a lowered bound).
 * A reload that changes limits.ipv6_prefix while they are on (or turns
 * them on again with another) moves each counted IPv6 connection to the
 * entry of its address under the new prefix: left under the old one, a
 * /64 whose connections were counted per /128 could open its bound again.
 * A connection counted under the client a trusted proxy named stays
 * where it is, even once that proxy is no longer trusted. Not counted: a
 * trusted proxy's, whose clients are named request by request, and any
 * behind --proxy-protocol, whose header named an address that is no
 * longer known; the admin listener's are never counted. */
void admit_ip_recount(struct worker *w)
{
    if (wsh_cfg.proxy_protocol)
        return;
    size_t ntrusted;
    const struct wsh_cidr *trusted = hub_trusted_proxies(&ntrusted);
    uint32_t counted = 0, moved = 0;
    for (struct conn *c = w->conns; c != NULL; c = c->next) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof(peer);
        if (c->state == CONN_DEAD || c->endpoint == EP_ADMIN || (c->flags & CF_FORWARDED) ||
            (c->ip != NULL && c->ip->len == 4) || /* an IPv4 key has no prefix */
            getpeername(c->io.fd, (struct sockaddr *)&peer, &len) != 0 ||
            wsh_cidr_contains(trusted, ntrusted, &peer) ||
            (c->ip != NULL && !ip_is_peer(c->ip, &peer)))
            continue;
        pthread_mutex_lock(&ip_mu);
        struct ipcount *e = ip_find(&peer, wsh_now_ms());
        if (e != NULL && e != c->ip) {
            e->n++;
            if (c->ip != NULL) {
                ip_put(c->ip);
                moved++;
            } else
                counted++;
            c->ip = e;
        }
        pthread_mutex_unlock(&ip_mu);
    }
    wsh_log(WSH_LOG_INFO, "worker=%d ev=per_ip_counted conns=%u moved=%u", w->id, counted, moved);
}

/* Under ip_mu. */
static bool ip_refill(struct wsh_hnode *n, void *arg)
{
    wsh_rate_init(&((struct ipcount *)n)->rate, ipl.rate, ipl.burst, *(uint64_t *)arg);
    return false;
}

void admit_limits_set(size_t max_connections, uint32_t per_ip, double ip_rate, uint32_t ip_burst,
                      uint32_t v6prefix)
{
    size_t ceiling = wsh_cfg.max_connections;
    size_t max = max_connections > 0 && max_connections < ceiling ? max_connections : ceiling;
    atomic_store(&max_conns, max);
    pthread_mutex_lock(&ip_mu);
    /* A changed rate starts every address's bucket afresh, full; an
     * unchanged one keeps them as they are. */
    bool refill = ip_rate > 0 && (ip_rate != ipl.rate || ip_burst != ipl.burst);
    ipl.max = per_ip;
    ipl.rate = ip_rate;
    ipl.burst = ip_burst;
    if (refill) {
        uint64_t now = wsh_now_ms();
        wsh_htab_filter(&ip_table, ip_refill, &now);
    }
    bool prefix_changed = v6prefix != ipl.v6prefix;
    ipl.v6prefix = v6prefix;
    bool was_on = atomic_exchange(&ip_on, per_ip > 0 || ip_rate > 0);
    pthread_mutex_unlock(&ip_mu);
    /* (At start-up the workers do not exist yet, nor any connection.) */
    if ((!was_on || prefix_changed) && admit_per_ip_on() && wsh_workers != NULL) {
        for (int i = 0; i < wsh_nworkers; i++) {
            atomic_store(&wsh_workers[i].ip_recount, true);
            worker_wake(&wsh_workers[i]);
        }
    }
}
