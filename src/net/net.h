/* wshub network layer: one epoll loop per worker thread, a hashed timing
 * wheel, ref-counted shared buffers and per-connection write queues sent
 * with sendmsg (writev semantics, MSG_NOSIGNAL).
 *
 * Everything here is single-threaded per loop except struct wsh_buf, whose
 * reference count is atomic so one encoded frame can be queued on
 * connections of several workers (DESIGN.md 2). */
#ifndef WSH_NET_H
#define WSH_NET_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "wshub/status.h"

/* ------------------------------------------------------------------ */
/* Shared buffers                                                      */

/* An immutable byte run once filled. data[start..end) is the content;
 * bytes before start are head-room so a frame header can be written in
 * front of a payload that was assembled first. */
struct wsh_buf {
    _Atomic uint32_t refs;
    uint32_t cap;
    uint32_t start;
    uint32_t end;
    uint8_t data[];
};

/* Allocates a buffer of cap bytes with refs = 1 and start = end = 0.
 * Returns NULL on ENOMEM. */
struct wsh_buf *wsh_buf_new(size_t cap);
/* Grows a buffer the caller holds the only reference to. Returns the new
 * pointer or NULL (the old buffer is then still valid). */
struct wsh_buf *wsh_buf_grow(struct wsh_buf *b, size_t cap);

static inline struct wsh_buf *wsh_buf_ref(struct wsh_buf *b)
{
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
    return b;
}

void wsh_buf_unref(struct wsh_buf *b);

/* Bytes of all live buffers, each counted once (header and capacity),
 * summed over the threads' own counters: a moment's approximation when
 * other threads are busy. */
size_t wsh_buf_live_bytes(void);
/* Counts n more bytes (or fewer, negative) of client memory that is not
 * a wsh_buf: a connection's carried input (server). */
void wsh_buf_live_charge(int64_t n);

static inline size_t wsh_buf_len(const struct wsh_buf *b)
{
    return b->end - b->start;
}

/* ------------------------------------------------------------------ */
/* Timers: hashed timing wheel, intrusive entries, O(1) start/stop     */

struct wsh_loop;
struct wsh_timer;
typedef void wsh_timer_cb(struct wsh_loop *l, struct wsh_timer *t);

struct wsh_timer {
    struct wsh_timer *next;
    struct wsh_timer **pprev; /* NULL when not scheduled */
    uint64_t expires;         /* loop milliseconds */
    wsh_timer_cb *cb;
};

/* Schedules t to fire after ms milliseconds (rounded up to the wheel's
 * 16 ms tick), replacing any previous schedule. May be called from a
 * callback, including t's own. */
void wsh_timer_start(struct wsh_loop *l, struct wsh_timer *t, uint64_t ms);
void wsh_timer_stop(struct wsh_timer *t);

static inline bool wsh_timer_active(const struct wsh_timer *t)
{
    return t->pprev != NULL;
}

/* ------------------------------------------------------------------ */
/* The loop                                                            */

struct wsh_io;
typedef void wsh_io_cb(struct wsh_loop *l, struct wsh_io *io, uint32_t events);

/* A file descriptor watched by the loop; embed it in the owner. */
struct wsh_io {
    int fd;
    uint32_t events; /* EPOLLIN / EPOLLOUT currently registered */
    wsh_io_cb *cb;
};

typedef void wsh_loop_hook(struct wsh_loop *l, void *user);

/* Creates a loop. before_sleep (may be NULL) runs once per iteration just
 * before epoll_wait: where corked writes are flushed and closed
 * connections are freed. Returns WSH_OK or -errno. */
WSH_NODISCARD int wsh_loop_create(wsh_loop_hook *before_sleep, void *user, struct wsh_loop **out);
void wsh_loop_destroy(struct wsh_loop *l);

/* Register, change or remove an fd. Return WSH_OK or -errno. */
int wsh_loop_add(struct wsh_loop *l, struct wsh_io *io, uint32_t events);
int wsh_loop_mod(struct wsh_loop *l, struct wsh_io *io, uint32_t events);
int wsh_loop_del(struct wsh_loop *l, struct wsh_io *io);

/* Runs until wsh_loop_stop(). Returns WSH_OK or -errno from epoll. */
int wsh_loop_run(struct wsh_loop *l);
void wsh_loop_stop(struct wsh_loop *l);
/* The user pointer given to wsh_loop_create(). */
void *wsh_loop_user(const struct wsh_loop *l);

/* Milliseconds of CLOCK_MONOTONIC, cached once per iteration. */
uint64_t wsh_loop_now(const struct wsh_loop *l);
uint64_t wsh_now_ms(void);
uint64_t wsh_now_ns(void);
/* Milliseconds since the Unix epoch (CLOCK_REALTIME): the times users see. */
int64_t wsh_wall_ms(void);

/* Called once per turn that epoll woke, after before_sleep, with the
 * nanoseconds the turn took from the wakeup: its events, timers and
 * before_sleep. What a turn takes is how long every other connection of
 * the loop waited, so this is the loop's load and its stalls (metrics). */
typedef void wsh_loop_turn_cb(struct wsh_loop *l, uint64_t ns, void *user);
void wsh_loop_on_turn(struct wsh_loop *l, wsh_loop_turn_cb *cb);

/* 32-bit stamps of loop time, for clocks kept in small fields (only
 * differences are used, which survive the wrap). A stamp is never 0, so 0
 * can mean "unset". Stamp and check with the same function: the loop's
 * time is cached per turn, so a check can run in the very millisecond of
 * the stamp, and an even `now` against a stamp of `now | 1` would read
 * as 2^32 - 1 ms. wsh_stamp_age() returns 0 for an unset stamp or one
 * ahead of `now`. */
static inline uint32_t wsh_stamp(uint64_t now_ms)
{
    return (uint32_t)now_ms | 1u;
}

static inline uint32_t wsh_stamp_age(uint32_t since, uint32_t now)
{
    uint32_t d = now - since;
    return since == 0 || d > UINT32_MAX / 2 ? 0 : d;
}

/* ------------------------------------------------------------------ */
/* Write queues                                                        */

struct wsh_wq_entry {
    struct wsh_buf *b;
    uint32_t off; /* bytes of b already written */
    bool begun;   /* b continues a frame already begun on the wire */
};

/* A ring of buffer references. Allocated only while non-empty, so an
 * idle connection holds a NULL pointer and nothing else. */
struct wsh_wq {
    uint32_t head, count, cap;
    uint32_t repl; /* last bytes of the tail that may be replaced, 0 = none */
    size_t bytes;  /* unwritten bytes queued */
    /* The owner's clocks, kept here because they matter only while
     * something is queued: 0 until the owner sets them. */
    uint32_t since_progress; /* when a write last made progress */
    uint32_t since_over;     /* when the queue went over the soft limit */
    struct wsh_wq_entry e[];
};

/* Appends a reference (the queue takes over the caller's reference).
 * Returns WSH_OK or WSH_ENOMEM (the reference is then released). */
WSH_NODISCARD int wsh_wq_push(struct wsh_wq **q, struct wsh_buf *b);
/* The same for what the kernel did not take of a write made around the
 * queue (a direct send): its first frame may be cut, so it counts as
 * started, and wsh_wq_drop_unstarted keeps it whole. */
WSH_NODISCARD int wsh_wq_push_rest(struct wsh_wq **q, struct wsh_buf *b);

/* Writes as much of the queue as the socket takes with one sendmsg.
 * Returns WSH_OK when the queue is now empty (and freed), WSH_EAGAIN
 * when bytes remain, or -errno on a socket error. */
int wsh_wq_flush(struct wsh_wq **q, int fd);

/* Releases every reference and frees the queue. */
void wsh_wq_clear(struct wsh_wq **q);

/* Drops every entry not yet started, keeping a partially written head (or
 * one pushed with wsh_wq_push_rest) so the byte stream stays well-formed, and the entries that hold
 * the first `pinned` bytes: a TLS write to be repeated covers those (its record is already made,
 * and OpenSSL sends it whatever the queue holds by then). */
void wsh_wq_drop_unstarted(struct wsh_wq **q, size_t pinned);

/* Cork: returns room for `need` more bytes at the end of the queue's last
 * buffer when only this queue references it and that buffer has the room;
 * else NULL. Small frames are appended there instead of each taking an
 * allocation and an iovec (uWebSockets corkBuffer). Follow with
 * wsh_wq_tail_commit(). */
uint8_t *wsh_wq_tail_reserve(struct wsh_wq *q, size_t need);
void wsh_wq_tail_commit(struct wsh_wq *q, size_t n);

/* Replaceable tail: wsh_wq_tail_mark() says the last n bytes just queued
 * form a unit a newer one may replace (a pong: RFC 6455 5.5.3 lets an
 * endpoint answer only the latest ping). Anything queued after it, or a
 * write reaching into it, cancels the mark. wsh_wq_tail_replaceable()
 * returns the marked length (0 when none) and wsh_wq_tail_drop() removes
 * those bytes, unwritten, from the end of the queue. */
void wsh_wq_tail_mark(struct wsh_wq *q, size_t n);
size_t wsh_wq_tail_replaceable(const struct wsh_wq *q);
void wsh_wq_tail_drop(struct wsh_wq *q, size_t n);

static inline size_t wsh_wq_bytes(const struct wsh_wq *q)
{
    return q ? q->bytes : 0;
}

/* The owner's clocks (stall and soft-limit checks), in wsh_stamp()s.
 * wsh_wq_note() follows a flush that started with `before` bytes queued:
 * progress when fewer remain (or on the first note), and the time the
 * queue went over `soft` bytes (0 = no soft limit). The _ms functions
 * return how long ago, 0 when unset. */
void wsh_wq_note(struct wsh_wq *q, uint32_t now, size_t before, size_t soft);
uint32_t wsh_wq_stalled_ms(const struct wsh_wq *q, uint32_t now);
uint32_t wsh_wq_over_ms(const struct wsh_wq *q, uint32_t now);

/* Bytes at the front of the queue for one TLS record: a pointer into the
 * head buffer when it alone holds at least max bytes, else up to max bytes
 * gathered into scratch (which must hold max). Returns the length. */
size_t wsh_wq_gather(const struct wsh_wq *q, uint8_t *scratch, size_t max, const uint8_t **out);
/* Marks n bytes of the front of the queue written. Frees the ring when it
 * empties. */
void wsh_wq_consume(struct wsh_wq **q, size_t n);

/* ------------------------------------------------------------------ */
/* TLS (OpenSSL) on the same loop, non-blocking                        */

struct ssl_st;
struct wsh_tls;

struct wsh_tls_opts {
    const char *cert_file; /* PEM chain */
    const char *key_file;  /* PEM private key */
    const char *ca_file;   /* NULL, or CA bundle: client certificates required */
};

/* Loads a server context: TLS 1.2 and 1.3 only, modern ciphers, ALPN
 * "http/1.1", no renegotiation, buffers released while idle. On failure
 * returns WSH_EINVAL and writes OpenSSL's reason into err. */
WSH_NODISCARD int wsh_tls_create(const struct wsh_tls_opts *o, char *err, size_t errlen,
                                 struct wsh_tls **out);
/* Replaces the certificate and key (SIGHUP) from the same files: new
 * connections use the new ones, established ones are untouched. Safe to
 * call from any thread. On failure the old context stays in use. */
int wsh_tls_reload(struct wsh_tls *t, char *err, size_t errlen);
void wsh_tls_destroy(struct wsh_tls *t);

/* Has OpenSSL's default provider register every algorithm it offers, for
 * every kind of operation, while memory is there: OpenSSL 3.0 names an
 * algorithm the first time its kind is fetched, and a kind whose naming
 * ran out of memory is never named again, so that algorithm is
 * "unsupported" for the rest of the process (seen: every TLS 1.3
 * handshake refused for want of TLS13-KDF after an out-of-memory spell).
 * Called once at startup, before the workers. Returns WSH_OK, or
 * WSH_ENOMEM when even this could not be done. */
int wsh_openssl_prime(void);

/* A new server-side session for fd, or NULL. Free with wsh_tls_conn_free. */
struct ssl_st *wsh_tls_conn_new(struct wsh_tls *t, int fd);
void wsh_tls_conn_free(struct ssl_st *ssl);

/* Advances the handshake. Returns WSH_OK when done, WSH_EAGAIN to wait for
 * more I/O, or WSH_EPROTO when it failed. */
int wsh_tls_handshake(struct ssl_st *ssl);
/* Whether the last WSH_EAGAIN of ssl waits for room to write (the
 * handshake's flight did not fit the socket), not for input. */
bool wsh_tls_want_write(struct ssl_st *ssl);

/* Reads decrypted bytes: > 0 bytes, 0 on a clean close_notify or EOF,
 * WSH_EAGAIN when nothing is available, another negative on error. */
ssize_t wsh_tls_read(struct ssl_st *ssl, uint8_t *buf, size_t cap);
/* True when OpenSSL holds decrypted bytes not yet read: epoll can't see
 * those, so the caller must read again. */
bool wsh_tls_pending(struct ssl_st *ssl);

/* Encrypts and sends the queue, one record of up to 16 KiB per
 * SSL_write. *retry is the length of a write OpenSSL asked to repeat
 * (0 initially; keep it per connection). Returns like wsh_wq_flush. */
int wsh_tls_flush(struct ssl_st *ssl, struct wsh_wq **q, uint32_t *retry);

/* Sends close_notify, best effort. */
void wsh_tls_shutdown(struct ssl_st *ssl);

/* ------------------------------------------------------------------ */
/* Admission rates                                                     */

/* A token bucket on a millisecond clock the caller passes in (so it is
 * tested without sleeping), plus a schedule of promises for the callers it
 * refuses: wsh_rate_promise() gives each refused caller its own future
 * slot, 1/rate apart, so that clients told to come back arrive about as
 * fast as the bucket refills instead of all in the same second. Not
 * thread-safe: the owner locks. */
struct wsh_rate {
    double per_ms; /* tokens per millisecond */
    double cap;    /* bucket size */
    double tokens;
    uint64_t last_ms; /* clock of the last refill */
    double next_slot; /* ms: the earliest slot not yet promised */
};

/* per_s > 0 tokens per second, burst >= 1; the bucket starts full. */
void wsh_rate_init(struct wsh_rate *r, double per_s, uint32_t burst, uint64_t now_ms);
/* Takes a token if there is one. */
bool wsh_rate_take(struct wsh_rate *r, uint64_t now_ms);
/* Whether the bucket has refilled to its burst: an idle one may go. */
bool wsh_rate_full(struct wsh_rate *r, uint64_t now_ms);
/* After a refused take: milliseconds from now to the slot promised to this
 * caller (at least the time to the next token), or 0 when that slot would
 * lie beyond horizon_ms (nothing is promised then; the caller spreads such
 * refusals itself). */
uint64_t wsh_rate_promise(struct wsh_rate *r, uint64_t now_ms, uint64_t horizon_ms);

/* ------------------------------------------------------------------ */
/* Eviction ranking (--max-client-memory)                              */

/* A connection holding client buffers, as its owner (a worker) ranks it. */
struct wsh_holder {
    uint64_t bytes;
    uint32_t owner;
    uint32_t rank; /* position in its owner's sorted list */
    void *ptr;     /* the owner's own handle; others see NULL */
};

/* Offers h to heap, which keeps the k largest offered (a min-heap of *n
 * entries, *n <= k). */
void wsh_evict_offer(struct wsh_holder *heap, size_t *n, size_t k, struct wsh_holder h);
/* Sorts one owner's holders, largest first, and numbers their ranks. */
void wsh_evict_sort(struct wsh_holder *v, size_t n);
/* Merges all owners' sorted lists (concatenated in all) into one order:
 * bytes, then owner, then rank. Writes to ranks the ranks of owner's
 * holders within the shortest prefix of that order whose bytes cover
 * excess (all of them if none does) and returns how many. */
size_t wsh_evict_pick(struct wsh_holder *all, size_t n, uint64_t excess, uint32_t owner,
                      uint32_t *ranks);

/* ------------------------------------------------------------------ */
/* Sockets                                                             */

/* Socket addresses to try in turn: an IP literal's one, localhost's two,
 * or the first few of a name's (getaddrinfo). */
#define WSH_ADDRS_MAX 8
struct wsh_addrs {
    int n;
    struct {
        struct sockaddr_storage ss;
        socklen_t len;
    } a[WSH_ADDRS_MAX];
};
/* host (an IPv4 or IPv6 literal without brackets, or a name) and port as
 * the addresses that need no resolver: the literal's, or for "localhost"
 * (any case) 127.0.0.1 then ::1, localhost being loopback whatever
 * /etc/hosts says (RFC 6761 6.3; browsers and curl do the same). Returns
 * true with out filled, false for a name only a resolver can answer.
 * glibc's resolver is kept out of the way where it is not needed: when an
 * allocation fails inside getaddrinfo (2.36), it has been seen to crash
 * and to leave its resolv.conf lock held, after which no lookup in the
 * process returns. */
bool wsh_addrs_literal(const char *host, int port, struct wsh_addrs *out);
struct addrinfo;
/* Appends a getaddrinfo list to out, as much as fits. */
void wsh_addrs_append(struct wsh_addrs *out, const struct addrinfo *ai);

/* Creates a non-blocking listening socket with SO_REUSEADDR and
 * SO_REUSEPORT bound to host:port: its first address, or the next where
 * the machine lacks that one (no IPv6, say), never past a port in use.
 * Returns the fd or -errno. */
int wsh_listen_tcp(const char *host, int port, int backlog);
/* The port a socket is bound to, or -errno. */
int wsh_socket_port(int fd);
/* recv(2) and sendmsg(2) with MSG_NOSIGNAL, retried on EINTR; errors
 * as the calls report them (-1 and errno). */
ssize_t wsh_sock_recv(int fd, void *buf, size_t cap);
/* Like wsh_sock_recv, but the kernel copies the first `head` bytes and the
 * rest separately, so the rest starts where the caller aligned it (head <
 * cap). The bytes land exactly as one recv into buf would put them. */
ssize_t wsh_sock_recv_split(int fd, void *buf, size_t head, size_t cap);
ssize_t wsh_sock_sendv(int fd, const struct iovec *iov, int n);
/* The key a client address is counted under by per-address limits: an
 * IPv4 address (also one mapped into IPv6 by a dual-stack listener) as its
 * 4 bytes, an IPv6 address as 16 bytes with everything past its first
 * v6_prefix bits zeroed. One user commonly holds a whole /64, so counting
 * IPv6 addresses one by one would let them step around any per-address
 * bound. Returns 4, 16, or 0 for another family. */
size_t wsh_addr_key(const struct sockaddr_storage *ss, unsigned v6_prefix, uint8_t out[16]);

/* ------------------------------------------------------------------ */
/* PROXY protocol (HAProxy's proxy-protocol.txt, v1 and v2)            */

/* The longest header accepted. v1 is at most 107 bytes; v2 may declare
 * up to 64 KiB of TLVs, but what balancers send (addresses, an AWS
 * endpoint id, TLS facts) fits in a few hundred. */
#define WSH_PROXY_MAX     4096
#define WSH_PROXY_MAX_STR "4096"

enum {
    WSH_PROXY_ESIG = -1,    /* neither version's signature */
    WSH_PROXY_EV1 = -2,     /* a v1 line that breaks the grammar */
    WSH_PROXY_EV2 = -3,     /* a v2 header with a bad version, command, family or length */
    WSH_PROXY_ETOOBIG = -4, /* a v2 header longer than WSH_PROXY_MAX */
    WSH_PROXY_ECRC = -5,    /* a v2 header whose CRC32C TLV does not match it */
};

/* What a header says. src and dst have ss_family AF_UNSPEC when it names
 * no client (v1 UNKNOWN; v2 LOCAL, UNSPEC, UNIX or datagram): the
 * connection's own endpoints then stand, as the spec says. */
struct wsh_proxy {
    struct sockaddr_storage src, dst;
    uint8_t version; /* 1 or 2 */
};

/* Parses the header at the start of p[0..len). Returns its length when
 * it is whole (the client's bytes begin there), 0 when every byte so far
 * fits a header but more are needed, or a WSH_PROXY_E* code as soon as a
 * byte rules a valid header out. Any split of the input gives the same
 * result. */
ssize_t wsh_proxy_parse(const uint8_t *p, size_t len, struct wsh_proxy *out);
const char *wsh_proxy_strerror(int rc);
/* CRC32C (Castagnoli) of p[0..n), continuing from crc (0 to start): what
 * a v2 header's PP2_TYPE_CRC32C TLV carries. */
uint32_t wsh_crc32c(uint32_t crc, const uint8_t *p, size_t n);

#endif
