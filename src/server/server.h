/* The wshub server program: configuration, workers, connections and the
 * endpoints of the foundation slice (/echo, /raw/<channel>, /healthz).
 * Private to src/server. */
#ifndef WSH_SERVER_H
#define WSH_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "net.h"
#include "wshub/hash.h"
#include "wshub/http.h"
#include "wshub/pmd.h"
#include "wshub/ws.h"

#define WSH_MAX_WORKERS 64
#define EVICT_TOP       32 /* largest holders each worker publishes */

struct wsh_config {
    char host[256];
    int port;
    int workers;
    bool echo;
    bool no_raw; /* --no-raw: /raw/<channel> answers 404 */
    struct wsh_limits limits;
    uint64_t ping_interval_ms; /* 0 disables heartbeats */
    uint64_t pong_timeout_ms;
    uint64_t handshake_timeout_ms;
    uint64_t close_timeout_ms;
    uint64_t drain_ms;           /* shutdown closes connections over this long, 0 = at once */
    uint64_t message_timeout_ms; /* a started message must complete in this */
    size_t max_queue;            /* outbound hard limit per connection, bytes */
    size_t max_client_memory;    /* all client buffers together, bytes, 0 = off */
    size_t soft_queue;           /* outbound soft limit, 0 = off */
    uint64_t soft_queue_ms;      /* ... tolerated for this long */
    uint64_t write_timeout_ms;   /* queued output without progress, 0 = off */
    size_t max_connections;      /* the ceiling: RLIMIT_NOFILE - 64 */
    size_t max_connections_cfg;  /* limits.max_connections, 0 = the ceiling */
    uint32_t max_per_ip;         /* 0 = no per-address limit */
    double ip_rate;              /* new connections per second per address, 0 = off */
    uint32_t ip_burst;
    uint32_t ip6_prefix; /* IPv6 addresses count per this prefix (wsh_addr_key) */
    double admit_rate;   /* WebSocket upgrades per second, server-wide, 0 = off */
    uint32_t admit_burst;
    const char *port_file;
    struct wsh_tls_opts tls; /* cert_file set: every connection is TLS */
    bool deflate;            /* offer permessage-deflate (RFC 7692) */
    struct wsh_pmd_config pmd;
    const char *web_root; /* directory of static files, NULL for none */
    bool proxy_protocol;  /* every connection begins with a PROXY header */
    /* --admin-listen: /metrics, /dashboard and /api/ move to this address
     * (plain HTTP, worker 0) and are 404 on the public one. */
    char admin_host[256];
    int admin_port; /* -1: no admin listener */
};

extern struct wsh_config wsh_cfg;
extern struct wsh_tls *wsh_tls_ctx; /* NULL without --tls-cert */

/* ------------------------------------------------------------------ */
/* Logging: one key=value line per event on stderr.                    */

enum wsh_log_level { WSH_LOG_ERROR, WSH_LOG_WARN, WSH_LOG_INFO, WSH_LOG_DEBUG };
extern int wsh_log_level;

#define wsh_log_enabled(lvl) ((int)(lvl) <= wsh_log_level)
void wsh_log(enum wsh_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int wsh_log_parse_level(const char *s);
/* Makes s fit between the double quotes of a log value, in place: '"'
 * becomes '\'' and control bytes '?'. Returns s. */
char *wsh_log_value(char *s);

/* ------------------------------------------------------------------ */
/* Connections                                                         */

enum conn_state {
    CONN_PROXY,   /* reading the PROXY protocol header, handshake deadline armed */
    CONN_TLS,     /* TLS handshake in progress, handshake deadline armed */
    CONN_HTTP,    /* reading the request head, handshake deadline armed */
    CONN_PARKED,  /* head read, its token waits for a key set fetch; not reading */
    CONN_OPEN,    /* WebSocket open */
    CONN_CLOSING, /* close frame or final response queued; waiting to drain */
    CONN_DEAD     /* destroyed; memory freed at the end of the iteration */
};

/* EP_ADMIN: accepted on the --admin-listen address; it never upgrades. */
enum conn_endpoint { EP_NONE, EP_ECHO, EP_RAW, EP_HUB, EP_ADMIN };

#define CF_CLOSE_SENT  0x01 /* our close frame (or final response) is queued */
#define CF_CLOSE_RECVD 0x02 /* the peer's close frame arrived */
#define CF_SHUT_WR     0x04 /* we sent FIN after the last byte */
#define CF_PENDING     0x08 /* on the worker's flush list */
#define CF_PING_WAIT   0x10 /* a ping is out, its pong not back */
#define CF_FORWARDED   0x20 /* from a trusted proxy: counted per address at the request */
#define CF_HTTP_BODY   0x40 /* request head parsed, waiting for its body */
#define CF_BIG_READS   0x80 /* the last read was large: split the next (plain_read) */

/* What one connection reads at most per loop turn (worker.c). */
#define READ_MAX 65536u

struct worker;
struct api_job;
struct rawchan;
struct wsh_hub_config;

/* Everything a connection holds while idle is in this record: no read or
 * write buffer stays allocated between messages (DESIGN.md 2). */
struct conn {
    struct wsh_io io;
    struct wsh_timer timer;    /* handshake deadline, heartbeat or close timeout */
    struct conn *next, *prev;  /* worker's list of live connections */
    struct conn *pending_next; /* worker's flush list, or deferred-free list */
    struct wsh_wq *wq;
    uint8_t *carry; /* unconsumed input: partial request head or frame header */
    uint32_t carry_len;
    uint32_t carry_cap;
    struct wsh_buf *msg; /* message being reassembled, NULL when none */
    struct rawchan *chan;
    struct conn *chan_next, *chan_prev;
    struct hubconn *hub; /* /ws state, NULL on other endpoints */
    struct ipcount *ip;  /* per-address count, when that limit is on */
    struct wsh_parser parser;
    struct ssl_st *ssl;    /* NULL for plain TCP */
    struct wsh_pmd *pmd;   /* NULL unless permessage-deflate was agreed */
    struct wsh_utf8 zutf8; /* UTF-8 state of the text being inflated */
    uint32_t tls_retry;    /* length of a TLS write to repeat */
    uint32_t msg_since;    /* loop ms (truncated) a data message began, 0 when none */
    uint32_t id;
    uint8_t state;
    uint8_t endpoint;
    uint8_t flags;
    uint8_t hold;      /* HOLD_* reasons its input is not read (conn_hold) */
    uint8_t held_for;  /* with HOLD_INBOX: whose inbox it waits for */
    uint16_t held_gen; /* and which of its takes, the low bits (inbox_taken_since) */
};

/* Why a connection's input is held: a `connect` waiting for keys, or a
 * publisher whose messages filled another worker's inbox (chan.c). */
#define HOLD_KEYS  0x01
#define HOLD_INBOX 0x02
#define HOLD_EOF   0x04 /* the peer's EOF came while our last bytes wait (conn_eof) */

/* ------------------------------------------------------------------ */
/* Raw channels, shared by all workers                                 */

struct rawchan_local {
    struct conn *head; /* touched only by its own worker */
    _Atomic uint32_t n;
    uint32_t deferred; /* its own worker's fan-outs waiting in its inbox (chan.c) */
};

/* Channel records shared by all workers (raw channels, hub channels)
 * begin with these fields, as libuv handles begin with UV_HANDLE_FIELDS,
 * so one registry serves both kinds. */
#define CHANREC_FIELDS                                                       \
    _Atomic uint32_t refs; /* holders: subscriptions + messages in flight */ \
    struct wsh_hnode hn;   /* in the registry, under its lock; keyed hash */ \
    char *name;            /* NUL-terminated copy */                         \
    size_t name_len;

struct chanrec {
    CHANREC_FIELDS
};

/* Records are found by name under one mutex, taken only to look up or
 * create and in the sweep; a record whose holders are gone is freed by the
 * sweep, under the same mutex, so it can never be freed between a lookup
 * and its use. Names come from clients, so the hash is keyed (a random
 * key per registry, drawn at its first record): a client cannot choose
 * names that share a chain. The table doubles when it holds as many
 * records as chains, so chains stay short however many channels there
 * are (a fixed table of 4096 chains walked 250 records a lookup at a
 * million channels, under the one mutex, on every hub publish). */
struct chanreg {
    pthread_mutex_t mu;
    struct wsh_htab tab;
    uint64_t key[2]; /* drawn with the first record */
};
#define CHANREG_INIT                    \
    {                                   \
        .mu = PTHREAD_MUTEX_INITIALIZER \
    }

typedef void chanreg_init_cb(struct chanrec *r, void *arg);

/* Finds the record for name and takes a reference. When there is none and
 * size > 0, creates one of size bytes (zeroed, name copied) and calls init
 * (may be NULL) under the lock, before any other thread can see it.
 * Returns NULL when absent (size 0) or out of memory. */
struct chanrec *chanreg_get(struct chanreg *reg, const char *name, size_t len, size_t size,
                            chanreg_init_cb *init, void *arg);
void chanreg_sweep(struct chanreg *reg);
/* Calls fn on every record, under the registry lock. */
void chanreg_each(struct chanreg *reg, chanreg_init_cb *fn, void *arg);

struct rawchan {
    CHANREC_FIELDS
    struct rawchan_local local[]; /* one per worker */
};

enum xmsg_kind { XMSG_RAW, XMSG_HUB, XMSG_KICK };

/* A message on its way to another worker's subscribers. */
struct xmsg {
    void *ch; /* struct rawchan or struct hubchan, by kind */
    struct wsh_buf *buf;
    uint64_t offset; /* hub: the message's offset, 0 for signals and pushes */
    int64_t t_ms;    /* hub: publish time (wall clock), for the latency metric */
    uint8_t kind;
    uint8_t push;  /* hub: enum push_type, for the metrics */
    uint32_t from; /* raw: the publisher's connection id when it is on the
                    * receiving worker (a deferred local fan-out), else 0 */
};

/* What the server sends on /ws (docs/protocol.md), by type, for
 * wshub_messages_out_total. */
enum push_type {
    PUSH_CONNECTED,
    PUSH_REFRESHED,
    PUSH_SUBSCRIBED,
    PUSH_UNSUBSCRIBED,
    PUSH_ACK,
    PUSH_PRESENCE,
    PUSH_HISTORY,
    PUSH_MESSAGE,
    PUSH_JOIN,
    PUSH_LEAVE,
    PUSH_SIGNAL,
    PUSH_READ,
    PUSH_REFRESH_REQUIRED,
    PUSH_LAGGED,
    PUSH_DISCONNECT,
    PUSH_ERROR,
    PUSH__COUNT
};

/* Counters of one worker, summed by /metrics. Only the owning worker
 * writes them; relaxed atomics keep the scraping thread's reads defined. */
#define METRIC_CODES        15
#define METRIC_HTTP_CODES   16
#define METRIC_LAT_BUCKETS  12
#define METRIC_TURN_BUCKETS 9
struct metrics {
    _Atomic uint64_t accepted;
    _Atomic uint64_t conns;               /* a gauge: this worker's open connections */
    _Atomic uint64_t msgs_in[4];          /* by enum conn_endpoint */
    _Atomic uint64_t commands[10];        /* by enum wsh_cmd_type */
    _Atomic uint64_t pushes[PUSH__COUNT]; /* /ws messages out, per recipient */
    _Atomic uint64_t frames_out, bytes_in, bytes_out;
    _Atomic uint64_t slow_consumers;
    _Atomic uint64_t inbox_holds;     /* publishers paused for a full inbox */
    _Atomic uint64_t signals_dropped; /* signal pushes not sent to readers behind */
    _Atomic uint64_t write_stalls;
    _Atomic uint64_t admission_refused;
    _Atomic uint64_t proxy_errors; /* connections dropped for a bad PROXY header */
    _Atomic uint64_t memory_evictions;
    _Atomic uint64_t closes[METRIC_CODES + 1];    /* by code, last = other */
    _Atomic uint64_t http[METRIC_HTTP_CODES + 1]; /* HTTP responses by status, last = other */
    _Atomic uint64_t lat[METRIC_LAT_BUCKETS + 1]; /* publish-to-delivery, ms buckets */
    _Atomic uint64_t lat_sum_us;
    _Atomic uint64_t turn[METRIC_TURN_BUCKETS + 1]; /* loop turns by length */
    _Atomic uint64_t busy_ns;                       /* their total */
};

/* Only the owning worker writes a counter, so a relaxed load and store is
 * enough (no locked read-modify-write on the hot path); the scraping
 * thread's relaxed loads stay well-defined. */
static inline void metric_add(_Atomic uint64_t *m, uint64_t n)
{
    atomic_store_explicit(m, atomic_load_explicit(m, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

void metric_close(struct worker *w, unsigned code);
/* An HTTP response sent (the 101 of an upgrade included), by status. */
void metric_http(struct worker *w, int status);
void metric_latency(struct worker *w, int64_t publish_ms);
/* One loop turn of ns nanoseconds (wsh_loop_on_turn). */
void metric_turn(struct worker *w, uint64_t ns);

/* Echo replies written straight from the receive buffer: frame headers in
 * hdr, payloads pointing into the worker's rbuf, sent with one sendmsg at the
 * end of the read that produced them. Only bytes the kernel refuses are
 * copied into the connection's queue. */
#define DIRECT_IOV   64
#define DIRECT_CORK  32768u /* small replies are copied here, contiguous */
#define DIRECT_SMALL 1024u  /* payloads up to this are copied, not pointed to */
struct direct_batch {
    struct conn *c; /* owner of the batch, NULL when empty */
    int niov;
    size_t cork_len;
    struct iovec iov[DIRECT_IOV];
    uint8_t cork[DIRECT_CORK];
};

struct worker {
    int id;
    struct metrics m;
    struct direct_batch direct;
    struct wsh_loop *loop;
    pthread_t thread;
    struct wsh_io listen_io;
    struct wsh_io admin_io;    /* --admin-listen, worker 0 only; fd -1 without */
    struct wsh_io wake_io;     /* eventfd: inbox and shutdown */
    int reserve_fd;            /* the EMFILE trick (libuv uv__emfile_trick) */
    uint32_t emfile_refused;   /* connections refused so, since the last ev=emfile */
    uint64_t emfile_logged_ms; /* when ev=emfile was last logged (loop time) */
    struct conn *conns;        /* live connections (m.conns counts them) */
    struct conn *pending;      /* connections with queued output this turn */
    struct conn *closed;       /* destroyed, freed at the end of the turn */
    uint8_t *rbuf;             /* receive buffer shared by this worker's conns */
    uint8_t *zbuf;             /* inflated whole messages, before their own buffer (session.c) */
    size_t zbuf_cap;
    bool shutting_down;
    bool req_head;              /* route_input is answering a HEAD: heads alone (route.c respond) */
    bool wake[WSH_MAX_WORKERS]; /* workers to wake at the end of the turn */
    _Atomic uint64_t turns;     /* loop turns ended: see hub.c, live config */
    pthread_mutex_t inbox_mu;
    struct xmsg *inbox;
    size_t inbox_n, inbox_cap;
    _Atomic bool inbox_ready;      /* set by producers: skip the lock when clear */
    _Atomic size_t inbox_bytes;    /* what waits in it, frames and entries (chan.c) */
    uint64_t inbox_waiters;        /* workers holding publishers until it drains, by bit */
    _Atomic uint64_t inbox_resume; /* inboxes we waited for that were taken, by bit */
    _Atomic uint32_t inbox_takes;  /* times it was taken, each a generation; under inbox_mu */
    _Atomic bool ip_recount;       /* per-address limits on, or a new prefix: recount (admit.c) */
    bool inbox_full;               /* a push of the current input found one full */
    uint32_t hub_fanning;          /* depth of hub fan-outs under way (hub.c fan_out) */
    uint8_t inbox_full_on;         /* whose (another worker's first: chan.c) */
    uint16_t inbox_full_gen;       /* and the generation that push went into */
    uint32_t nheld;                /* connections held with HOLD_INBOX */
    struct xmsg *spare;            /* swapped with inbox by the consumer */
    size_t spare_cap;
    struct xmsg *carry; /* the taken inbox, delivered over turns (chan.c) */
    size_t carry_n, carry_i, carry_cap;
    uint64_t carry_t0;               /* when it was taken */
    uint32_t carry_slices;           /* turns it has taken so far */
    struct wsh_timer sweep_timer;    /* worker 0: periodic sweeps of channel state */
    struct wsh_timer out_timer;      /* each second: stalled and slow writers */
    struct wsh_timer drain_timer;    /* shutdown with --drain-time: the next batch */
    struct wsh_timer accept_timer;   /* listeners paused out of fds, with no reserve */
    uint32_t drain_batch;            /* connections closed per drain tick */
    size_t nwaitout;                 /* connections waiting for EPOLLOUT */
    int tls_budget;                  /* TLS handshake steps left in this loop turn */
    struct wsh_buf *batch;           /* raw publish batch (chan.c), NULL when none */
    struct conn *batch_from;         /* its publisher */
    bool batch_copied;               /* it is our own copy, not the first frame itself */
    struct wsh_timer evict_timer;    /* --max-client-memory checks */
    _Atomic uint32_t ntop;           /* ... its largest holders, bytes, published for the */
    _Atomic uint64_t top[EVICT_TOP]; /* other workers' ranking (worker.c) */
    _Atomic bool top_valid;          /* ... published since the total passed half the cap */
    bool evict_waited;               /* ... waited a check for the others' lists */
    struct parked *parked;           /* handshakes waiting for a key set fetch */
    struct api_job *api_jobs;        /* API broadcasts held midway (api.c) */
    uint32_t nparked;
    bool replay; /* a parked head is checked again: no second wait or admission */
};

extern struct worker *wsh_workers;

void conn_hold_for_inbox(struct worker *w, struct conn *c);
/* Holds c when its input just filled another worker's inbox (chan.c).
 * Inline: it runs after every message read. */
static inline void conn_hold_if_inbox_full(struct worker *w, struct conn *c)
{
    if (__builtin_expect(w->inbox_full, 0))
        conn_hold_for_inbox(w, c);
}
extern _Thread_local struct worker *wsh_self; /* the worker running this thread */
extern int wsh_nworkers;
extern _Atomic int wsh_shutdown_code; /* 0, or the close code to send */
extern _Atomic bool wsh_drain_now;    /* a second signal: end --drain-time */
extern _Atomic size_t wsh_total_conns;
/* SIGHUP reloads by part (RELOAD_TLS, RELOAD_AUTH, RELOAD_SETTINGS) and
 * result (0 ok, 1 failed), for /metrics. Written by worker 0 only. */
enum { RELOAD_TLS, RELOAD_AUTH, RELOAD_SETTINGS, RELOAD_PARTS };
extern _Atomic uint64_t wsh_reloads[RELOAD_PARTS][2];

int worker_init(struct worker *w, int id, int listen_fd);
/* --admin-listen: worker w (0) accepts on fd too, for the operator's
 * endpoints only. */
int worker_listen_admin(struct worker *w, int fd);
void *worker_main(void *arg);
void worker_wake(struct worker *w);
/* The cap on all client buffers together (--max-client-memory, or
 * limits.max_client_memory, which SIGHUP changes); 0 = off. Each worker
 * reads it at its next check. */
void worker_memory_cap_set(size_t cap);
size_t worker_memory_cap(void);

/* Admission (admit.c): the admission rate of upgrades, max_connections,
 * and per client address its connections and their rate. */
struct ipcount;
/* Puts the limits of wsh_cfg that SIGHUP may change in force (the
 * admission rate, the connection limits); before the workers run. */
void admit_limits_init(void);
/* Sets limits.admission_rate and admission_burst (rate 0: off); SIGHUP. */
void admit_rate_set(double rate, uint32_t burst);
/* Sets limits.max_connections (0: the ceiling, RLIMIT_NOFILE - 64),
 * max_connections_per_ip, handshake_rate_per_ip and burst_per_ip (0: off)
 * and ipv6_prefix; SIGHUP. Turning the per-address limits on, or changing
 * the prefix while they are on, has each worker count its open
 * connections anew at its next wakeup (worker.ip_recount). */
void admit_limits_set(size_t max_connections, uint32_t per_ip, double ip_rate, uint32_t ip_burst,
                      uint32_t v6prefix);
/* limits.max_connections under the ceiling of RLIMIT_NOFILE. */
size_t admit_max_conns(void);
/* 0 when an upgrade may go ahead under the admission rate, else the
 * seconds for Retry-After (key spreads refusals past the horizon). */
uint32_t admit_upgrade(uint32_t key);
/* Whether a per-address limit is on. */
bool admit_per_ip_on(void);
/* Per-address admission of a connection from peer (the socket's address,
 * or the one a PROXY header named); see admit.c. */
uint32_t admit_peer(const struct sockaddr_storage *peer, struct ipcount **ipc, bool *forwarded);
/* A connection slot and a token for ss's address: the entry to release
 * at destroy, or NULL with *retry_s set when over a bound (0 when it
 * cannot be tracked). */
struct ipcount *admit_ip_acquire(const struct sockaddr_storage *ss, uint32_t *retry_s);
void admit_ip_release(struct ipcount *e);
/* Frees the entries no connection holds whose bucket has refilled. */
void admit_ip_sweep(void);
/* From w's wakeup after admit_limits_set asked (worker.ip_recount). */
void admit_ip_recount(struct worker *w);

/* Connection helpers used by the endpoints. */
void conn_send(struct worker *w, struct conn *c, struct wsh_buf *b);
/* True while the kernel refuses c's bytes (its reader is behind). */
bool conn_behind(const struct conn *c);
void conn_reply(struct worker *w, struct conn *c, struct wsh_buf *b);
bool conn_send_direct(struct worker *w, struct conn *c, unsigned opcode, uint8_t *payload,
                      size_t len, size_t room);
void direct_flush(struct worker *w);
void conn_send_frame(struct worker *w, struct conn *c, unsigned opcode, const uint8_t *payload,
                     size_t len);
void conn_close(struct worker *w, struct conn *c, unsigned code, const char *reason);
void conn_destroy(struct worker *w, struct conn *c);
/* Holds a connection's input for a HOLD_* reason (no reads, nothing
 * parsed past the current message) or releases it: once no reason is
 * left, what was held is processed at once. */
void conn_hold(struct worker *w, struct conn *c, uint8_t why, bool on);
/* Sends bytes (an HTTP answer, the 101) now, queueing what the kernel
 * does not take. */
void conn_send_bytes(struct worker *w, struct conn *c, const void *p, size_t n);
/* After a plain HTTP answer: the connection closes once it is sent, or at
 * the close timeout. Nothing when sending it destroyed the connection. */
void conn_end_after_reply(struct worker *w, struct conn *c);
/* An upgrade whose token waits for a key fetch (worker.c, "Tokens waiting
 * for keys"): whether this worker has room for one more, and parking it. */
bool conn_park_room(const struct worker *w);
bool conn_park(struct worker *w, struct conn *c, uint64_t ticket);
/* Holds an HTTP API request until the inboxes it would fill are taken
 * (conn_hold_for_inbox holds a publisher the same way). */
void conn_hold_api(struct worker *w, struct conn *c);

/* route.c: the HTTP phase. Request bodies are only for the HTTP API, and
 * small (LIMITS.md max message); larger ones get 413. */
#define ROUTE_BODY_MAX 65536u
/* The largest static file served (web/ holds files of a few KB); a larger
 * one gets 500 and a warning in the log. */
#define ROUTE_STATIC_MAX (4u << 20)
/* Consumes the request head (and an API request's body) from in[0..len):
 * the bytes consumed, 0 while incomplete. last_len is what was there at
 * the last call (the head's end is searched for in the new bytes only). */
size_t route_input(struct worker *w, struct conn *c, uint8_t *in, size_t len, size_t last_len);
/* Whether req's method is m, exactly (methods are case-sensitive). */
bool route_method_is(const struct wsh_http_request *req, const char *m);
/* A plain HTTP answer that closes the connection once sent; a 503 says
 * Retry-After: 1, and a HEAD request (route_input marks it) gets the
 * head alone. */
void route_respond(struct worker *w, struct conn *c, int status, const char *type, const char *body,
                   size_t len);
/* route_respond with extra header lines (each ending in CRLF). */
void route_respond_extra(struct worker *w, struct conn *c, int status, const char *type,
                         const char *extra, const char *body, size_t len);
/* 405 with the Allow field RFC 9110 15.5.6 requires: allow lists the
 * methods the path takes ("GET", "POST"). */
void route_not_allowed(struct worker *w, struct conn *c, const char *allow, const char *type,
                       const char *body, size_t len);
/* What is only read (the health checks, static files, /metrics) takes GET
 * and HEAD: any other method gets 405 naming both, and false. */
bool route_readable(struct worker *w, struct conn *c, const struct wsh_http_request *req);
struct wsh_buf *frame_new(unsigned opcode, const uint8_t *payload, size_t len);
/* A compressed frame (RSV1) of payload: with z, that connection's state;
 * with z NULL, the stateless compressor for window_bits (fan-out). */
struct wsh_buf *frame_deflate(struct wsh_pmd *z, uint8_t window_bits, unsigned opcode,
                              const uint8_t *payload, size_t len);
/* Where the payload of a frame we encoded starts, and its declared length.
 * For a raw publish batch (several frames back to back): the first one. */
const uint8_t *frame_payload(const struct wsh_buf *frame, size_t *len);

/* session.c: the WebSocket phase. */
size_t session_input(struct worker *w, struct conn *c, uint8_t *in, size_t len);
void session_timer(struct worker *w, struct conn *c);

/* fetch.c: one blocking GET of url for a helper thread, within
 * timeout_ms (name resolution included) and ending early once *stop is
 * set; an https url through proxy's CONNECT tunnel when proxy is not NULL.
 * Returns 0 with the body of a 200 response in *body (malloc'd,
 * NUL-terminated, *body_len bytes; free it), or -1 with err set and
 * *status the HTTP status when one arrived (0 otherwise). */
int fetch_get(const struct wsh_http_url *u, const struct wsh_http_proxy *proxy, const char *ca_file,
              size_t max_body, int timeout_ms, const _Atomic bool *stop, char **body,
              size_t *body_len, int *status, char *err, size_t errlen);

/* keys.c: the keys tokens are verified with. keys_init builds the set
 * of cfg's auth section at start (-1 with err set when a key cannot be
 * used); cfg stays referenced. */
int keys_init(struct wsh_hub_config *cfg, char *err, size_t errlen);
/* The auth section of cfg (auth.keys with their PEM files,
 * auth.jwks_file) becomes the key set every worker verifies new tokens
 * with. Returns 0 (*nkeys, *nskipped set), 1 when there is nothing to
 * reload (no keys before or after), or -1 with err set: the current keys
 * stay (a changed auth.jwks_url, jwks_ca_file or jwks_refresh_s is such
 * an error: they need a restart). */
int keys_reload(struct wsh_hub_config *cfg, char *err, size_t errlen, size_t *nkeys,
                size_t *nskipped);
/* Keys in use, and JWKS keys the last load ignored. */
size_t keys_in_use(size_t *nskipped);
/* auth.jwks_url: starts the thread that fetches the set (after the signal
 * mask is set, so it inherits it), through HTTPS_PROXY unless NO_PROXY or
 * a loopback issuer says otherwise, and stops it at exit. No-ops without
 * a URL. */
int keys_fetch_start(char *err, size_t errlen);
/* The part of keys_fetch_start that can fail on the operator's input (the
 * URL, HTTPS_PROXY), for --check-config. */
int keys_fetch_prepare(char *err, size_t errlen);
void keys_fetch_stop(void);
/* Fetches of auth.jwks_url by result, and when the last good one ended
 * (wall clock ms, 0 before the first), for /metrics. */
void keys_jwks_fetches(uint64_t *ok, uint64_t *failed, int64_t *loaded_ms);
/* How many fetches of auth.jwks_url have ended, whatever their result. */
uint64_t keys_fetched(void);
/* Tokens that waited for a fetch, by how it ended (/metrics). */
enum { KEY_WAIT_ACCEPTED, KEY_WAIT_REFUSED, KEY_WAIT_TIMEOUT };
void keys_wait_count(int result);
void keys_waits(uint64_t out[3]);
/* The workers' wakeups exist: the fetcher may wake them after a fetch. */
void keys_workers_ready(void);
/* True while auth.jwks_url is set and no key has loaded yet. */
bool keys_none_yet(void);
/* The fetch a token with an unknown kid may wait for (see keys_fetched),
 * 0 when none is coming; and a request for one now (`forced` skips the
 * once-per-10-s limit). */
uint64_t keys_ticket(void);
void keys_kick(bool forced);
/* This worker's parsed copy of the key set in force (NULL: no keys), and
 * the generation it was built at; keys_generation() moves with each new
 * set. */
struct wsh_auth;
struct wsh_auth *keys_auth(uint64_t *gen);
/* True after keys_auth kept an older copy (or none) because making the
 * one in force ran out of memory: a token it does not know may be signed
 * by a key this worker lacks, and is the server's fault to refuse. */
bool keys_auth_stale(void);
uint64_t keys_generation(void);
/* A worker's copy: made before its loop starts (-1: out of memory, and
 * keys_auth tries again at each call), freed at its exit. */
int keys_worker_init(void);
void keys_worker_exit(void);

/* hub.c: the /ws JSON protocol (DESIGN.md 3). */
struct wsh_http_request;
struct hubchan;

int hub_init(const char *config_path, char *err, size_t errlen);
/* SIGHUP reads the config file once (hub_config_reread: 0 with *out set,
 * 1 without --config, -1 with err set) and hands that one reading to each
 * part that reloads; each keeps its own reference. The caller releases
 * its own with hub_config_release. */
int hub_config_reread(struct wsh_hub_config **out, char *err, size_t errlen);
struct wsh_hub_config *hub_config_ref(struct wsh_hub_config *cfg);
void hub_config_release(struct wsh_hub_config *cfg);
/* What a settings reload put in force, for its log line. */
struct hub_settings {
    size_t norigins;
    bool api_key;
    double admission_rate;
    size_t max_connections; /* 0: the ceiling */
    uint32_t per_ip;
    double ip_rate;
    size_t max_client_memory; /* in force: the flag's when it was given */
    uint64_t max_message;     /* of a /ws message, the same */
    uint32_t max_channels;    /* the broker's limits.max_channels */
    uint64_t max_history;     /* and its limits.max_history_memory */
};
/* Everything of cfg but the keys and the restart-only settings
 * (docs/config.md, "Reloading: SIGHUP"): namespaces, the /ws limits,
 * `allow_anonymous`, `origins`, `api_key`, the admission rate and the
 * connection limits are in force for the next command, connection,
 * upgrade and API call. Nothing in them can fail once the file has
 * loaded. */
void hub_reload_settings(struct wsh_hub_config *cfg, struct hub_settings *out);
/* Copies the configuration file's connection limits into cfg: the total
 * (max_connections_cfg, which admit_limits_set caps at cfg's
 * max_connections), per address, and the admission rate. All stay off
 * without a file; IPv6 addresses then count per the default prefix. */
void hub_conn_limits(struct wsh_config *cfg);
/* Sends `disconnect` (reconnect after retry_ms) and close 1013 to a /ws
 * connection refused by the admission rate; it never became a session. */
void hub_overload_notice(struct worker *w, struct conn *c, uint64_t retry_ms);
/* Closes c with code and reason; a /ws session is first told by
 * `disconnect` to come back after its own delay of 0.5-5 s. */
void hub_close_retry(struct worker *w, struct conn *c, unsigned code, const char *reason);
/* The outbound queue limit for a /ws connection (c->hub set): --max-queue,
 * or less before auth. */
size_t hub_queue_limit(const struct conn *c);
/* The config file's trusted_proxies, as of the last SIGHUP: proxies whose
 * X-Forwarded-For is read. Valid until the caller's loop turn ends. */
const struct wsh_cidr *hub_trusted_proxies(size_t *n);
int hub_worker_init(struct worker *w);
/* Before the 101: origin and credentials. Returns 0 to go on, the HTTP
 * status to refuse with (401, 403), or, only when may_wait, HUB_WAIT: the
 * token names a key a fetch of auth.jwks_url now under way may bring;
 * check again once keys_fetched() reaches *ticket. */
#define HUB_WAIT 1
/* The configuration's `origins` allow req's Origin: always without a list,
 * and always without an Origin (a client that is not a browser). Checked
 * on every upgrade path, /raw and /echo included (cross-site WebSocket
 * hijacking). */
bool hub_origin_allowed(const struct wsh_http_request *req);
int hub_upgrade_check(struct worker *w, struct conn *c, const struct wsh_http_request *req,
                      bool may_wait, uint64_t *ticket, const char **why);
/* NULL when /readyz may say ready, else why not. */
const char *hub_not_ready(void);
/* Sessions asked to refresh because a rotation removed their token's key. */
uint64_t hub_key_removed_sessions(void);
/* From the worker's wakeup: `connect` commands whose fetch has ended are
 * answered. */
void hub_keys_wake(struct worker *w);
void hub_open(struct worker *w, struct conn *c);
void hub_message(struct worker *w, struct conn *c, unsigned opcode, const uint8_t *p, size_t n);
void hub_conn_end(struct worker *w, struct conn *c);
/* After a flush: a lagging /ws subscriber whose queue drained gets `lagged`. */
void hub_drained(struct worker *w, struct conn *c);
void hub_slow_consumer(struct worker *w, struct conn *c);
/* True when c subscribes in a namespace whose slow-consumer policy drops
 * messages instead of disconnecting: the soft limit leaves it alone. */
bool hub_drops_for_lag(const struct conn *c);
void hub_worker_exit(struct worker *w);
/* Starts the hub (the broker). A /ws message is bounded by the
 * configuration file's limits.max_message, which SIGHUP changes, unless
 * the flag was given (flag_given: flag_max then, and at every reload).
 * Returns WSH_OK or the broker's error (WSH_ENOMEM). */
int hub_start(uint64_t flag_max, bool flag_given);
/* The bound of a /ws message in force, for the WebSocket layer (1009),
 * inflate and the JSON codec; and that of c's next message: the same, or
 * limits.unauthenticated.max_message before c has authenticated. */
uint64_t hub_message_limit(void);
uint64_t hub_conn_message_limit(const struct conn *c);
/* Closes c, whose message passed hub_conn_message_limit: 1009, or 1008
 * "authenticate first" (after `disconnect`) before it authenticated. */
void hub_too_big(struct worker *w, struct conn *c);
void hub_deliver_inbox(struct worker *w, const struct xmsg *m);
/* Worker 0, every 2 s: frees dropped channel records, expired broker
 * state, and configurations no worker can still be reading. */
void hub_sweep(int64_t now_ms);
/* Entries in the revocation set, for /metrics. */
size_t hub_revocations(void);
/* Closes this worker's sessions of who: 'u' + a user id, or 'j' + a token
 * id. */
void hub_kick_local(struct worker *w, const char *who, unsigned code, const char *reason);
/* What the HTTP API asks of the hub. The configuration's api_key, NULL
 * when the API is off (no key, or no /ws hub). */
const char *hub_api_key(void);
/* limits.json_depth in force: API bodies nest no deeper than messages. */
unsigned hub_json_depth(void);
/* 0 when a publish may go to channel, else its WSH_PERR_* code. */
int hub_channel_check(const char *channel);
/* Publishes payload (JSON text) to channel as the server: 0 with the
 * message's *offset, or a WSH_PERR_* code. */
int hub_publish(const char *channel, const char *payload, size_t plen, const char *msg_id,
                uint64_t *offset);
/* The `presence` or `history` reply of channel into b, as a /ws client
 * gets it, except that presence is always the full list (the count
 * threshold spares clients, not the operator): 0, or the WSH_PERR_* code
 * a client would get (4001, 4000, 4004; 5000 for an internal error). */
struct wsh_jbuf;
#define HUB_LIST_ALL SIZE_MAX /* hub_list's limit: no limit (0: the position only) */
int hub_list(const char *channel, bool presence, size_t limit, struct wsh_jbuf *b);
struct wsh_broker_info;
int hub_broker_info(struct wsh_broker_info *out);
/* Refuses who's tokens for secs seconds: WSH_OK, WSH_ENOSPC when the set
 * is full (limits.max_revocations), or WSH_ENOMEM. */
int hub_revoke(const char *who, int64_t secs);

/* api.c: the HTTP API (DESIGN.md 6) on /api/..., with its request body.
 * Returns 0 once answered; API_WAIT: a POST that passed the head checks
 * found an inbox over its bound before it began; or API_HELD: a broadcast
 * stopped midway at a full inbox. The caller holds the request until that
 * inbox is taken in, then hands it here again, to begin or go on. */
int api_request(struct worker *w, struct conn *c, const struct wsh_http_request *req,
                const uint8_t *body, size_t blen);
#define API_HELD 1
#define API_WAIT 2
/* What the head of an API request alone refuses (the API off, the key
 * missing or wrong, no such call, the wrong method): answered, and true.
 * api_request checks it too; route.c asks before a 100 Continue. */
bool api_head_refused(struct worker *w, struct conn *c, const struct wsh_http_request *req);
/* A held API request reached the handshake deadline, or the server is
 * shutting down: answers 503 with what was published, and why. Forget
 * drops a held request's progress (c is closing). */
void api_expired(struct worker *w, struct conn *c, const char *why);
void api_forget(struct worker *w, const struct conn *c);

/* metrics.c: counters kept per worker, summed for /metrics. */
void metrics_serve(struct worker *w, struct conn *c, const struct wsh_http_request *req);

/* chan.c: raw channels and the cross-worker inbox. */
struct zcache {
    struct wsh_buf *frame; /* the plain frame, borrowed */
    const uint8_t *payload;
    size_t plen;
    bool worth;
    struct wsh_buf *buf[16]; /* compressed copies by deflate window bits */
    bool failed[16];
};
void zcache_init(struct zcache *z, struct wsh_buf *frame);
struct wsh_buf *zcache_frame(struct zcache *z, const struct conn *c);
void zcache_release(struct zcache *z);
int inbox_init(struct worker *w); /* WSH_OK or WSH_ENOMEM */
bool inbox_push(struct worker *to, const struct xmsg *m);
/* True when an inbox, self's own included, is over its bound; self is
 * then told when it drains (its held connections are released). */
bool inbox_busy_wait(struct worker *self);
bool inbox_own_full_wait(struct worker *self);
/* Whether the generation gen of worker id's inbox, which a publisher of
 * self filled, has been taken since (release_held, worker.c). */
bool inbox_taken_since(struct worker *self, int id, uint16_t gen);
/* Bytes waiting in all inboxes, for /metrics. */
size_t inbox_bytes_total(void);
struct rawchan *rawchan_join(struct worker *w, struct conn *c, const char *name, size_t len);
void rawchan_leave(struct worker *w, struct conn *c);
/* Publishes a frame (taking the reference) to from's channel. Small
 * frames wait in the worker's publish batch until rawchan_flush(). */
void rawchan_publish(struct worker *w, struct conn *from, struct wsh_buf *frame);
void rawchan_flush(struct worker *w);
void rawchan_deliver_inbox(struct worker *w);
void rawchan_sweep(void);

#endif
