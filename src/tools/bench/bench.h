/* wshub-bench internals: one process, one epoll loop, many client
 * connections. The engine (conn.c) owns sockets, the WebSocket client codec
 * and output buffers; each subcommand (echo.c, fanout.c, cycle.c) is a set of
 * callbacks on top of it. */
#ifndef WSH_BENCH_H
#define WSH_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "wshub/pmd.h"
#include "wshub/ws.h"

/* OpenSSL's types (SSL, SSL_CTX), so only conn.c and tls.c include it. */
struct ssl_st;
struct ssl_ctx_st;

#define BENCH_RBUF        65536 /* one read() batch */
#define BENCH_CARRY       (WSH_FRAME_HDR_MAX + WSH_CONTROL_MAX + 2)
#define BENCH_HS_MAX      8192          /* handshake response head, as the core bounds it */
#define BENCH_RAMP_BATCH  256           /* connects in flight during a ramp */
#define BENCH_HS_TIMEOUT  10000000000LL /* connect + handshake, ns */
#define BENCH_CLOSE_WAIT  2000000000LL  /* close handshake, ns */
#define BENCH_MAX_SECONDS 120

#define BENCH_WARMUP_CONNS  200         /* idle: default --warmup */
#define BENCH_WARMUP_SETTLE 500000000LL /* idle: ns between warm-up and baseline */

enum bench_cmd { CMD_ECHO, CMD_FANOUT, CMD_CONNECT, CMD_IDLE };
enum bench_payload { PAYLOAD_FILLER, PAYLOAD_JSON };
/* fanout/idle: what runs over the WebSocket. RELAY: opaque messages (the
 * /raw/<channel> relay, rawecho, Node ws); WS: wshub's /ws JSON protocol;
 * SIO: Socket.IO (Engine.IO v4) over its WebSocket transport. */
enum bench_proto { PROTO_RELAY, PROTO_WS, PROTO_SIO };
/* echo: how the measured phase does its socket I/O. AUTO is io_uring when
 * built in and available, else epoll (uring.c says why). */
enum bench_engine { ENGINE_AUTO, ENGINE_EPOLL, ENGINE_URING };

struct bench_opts {
    enum bench_cmd cmd;
    const char *host;
    const char *path;
    unsigned port;
    unsigned duration; /* seconds */
    unsigned conns;
    unsigned pipeline;
    size_t size;
    bool size_set; /* -s was given */
    enum bench_payload payload;
    unsigned rate;   /* fanout: msgs/s, 0 = windowed */
    unsigned window; /* fanout --rate 0: messages outstanding */
    unsigned sources;
    long server_pid;
    bool raw;
    bool binary;
    bool json;
    /* TLS (wss://). sni NULL: no SNI (the host is an IP literal, RFC 6066
     * 3), and the certificate must name that IP address. */
    bool tls;
    bool insecure;
    const char *sni;
    const char *cacert;
    bool deflate;    /* offer permessage-deflate */
    unsigned warmup; /* idle: connections opened and closed before the baseline */
    enum bench_proto proto;
    const char *channel; /* --proto ws: channel; socketio: room */
    const char *token;   /* --proto ws: sent as Authorization: Bearer */
    enum bench_engine engine;
};

/* Log-bucketed latency histogram: 16 sub-buckets per power of two, so a
 * reported percentile is within ~6% of the true value. 8 KiB, no malloc. */
#define HIST_BUCKETS 1024
struct hist {
    uint64_t count;
    uint64_t max;
    uint64_t b[HIST_BUCKETS];
};

void hist_add(struct hist *h, uint64_t v);
uint64_t hist_pct(const struct hist *h, double pct);

enum conn_state {
    CS_FREE = 0,
    CS_CONNECTING, /* TCP connect in progress */
    CS_TLS,        /* --tls: SSL_connect in progress */
    CS_HANDSHAKE,  /* request sent, waiting for the 101 */
    CS_OPEN,
    CS_CLOSING, /* close frame sent, waiting for the peer's */
    CS_DRAIN,   /* close frame received, waiting for TCP EOF */
    CS_DEAD     /* fd closed; slot is recycled at the end of the loop turn */
};

struct conn {
    int fd;
    uint32_t gen; /* bumps on every reuse: stale epoll events are ignored */
    uint32_t idx;
    uint8_t state;
    bool pending; /* on the flush list */
    bool blocked; /* last write was short: wait for EPOLLOUT */
    bool tx_busy; /* io_uring: a send of out[out_off..] is in flight */
    bool role_pub;
    bool read_wants_write; /* SSL_read asked for EPOLLOUT */
    bool write_wants_read; /* SSL_write asked for EPOLLIN */
    bool z_first;          /* inflating: the next piece starts a message */
    uint16_t carry_len;
    uint32_t src; /* source address index for --sources */
    int64_t deadline;
    int64_t t_start; /* when the TCP connect began */
    size_t raw_pos;  /* --raw: offset inside the current fixed-size message */
    uint8_t *out;    /* capacity out_cap, allocated once per slot */
    size_t out_cap, out_off, out_len;
    char *hs; /* handshake response head; lives only during CS_HANDSHAKE */
    size_t hs_len;
    char key[WSH_HS_KEY_LEN + 1];
    struct wsh_parser parser;
    struct ssl_st *ssl;      /* --tls; freed when the slot is recycled */
    struct wsh_pmd *pmd;     /* permessage-deflate agreed; freed likewise */
    uint64_t tls_rx, tls_tx; /* socket BIO byte counts already accounted */
    uint8_t carry[BENCH_CARRY];
    /* Message reassembly state, shared by the modes. */
    size_t msg_pos;
    uint64_t msg_sum;
    uint8_t msg_hdr[32];
    /* echo: seq numbers and send times of the messages in flight. */
    uint64_t sent_seq, recv_seq;
    int64_t *ring; /* pipeline entries */
    /* fanout subscriber: next seq expected. */
    uint64_t next_seq;
    /* --proto ws/socketio: where the application handshake is (enum
     * app_phase), and the head of a message that came in pieces. */
    uint8_t phase;
    uint16_t alen;
    uint8_t *abuf;
};

struct bench;
struct bench_uring;

struct bench_mode {
    /* Bytes of output a connection may need at once (sizes out_cap); the
     * publisher gets pub_out_cap when that is larger. */
    size_t out_cap;
    size_t pub_out_cap;
    void (*on_open)(struct bench *b, struct conn *c);
    /* A chunk of a message; first/last as the WebSocket parser reports
     * them, or S-byte boundaries in --raw mode. Borrowed for the call. */
    void (*on_chunk)(struct bench *b, struct conn *c, const uint8_t *p, size_t n, bool first,
                     bool last);
    /* The connection is gone (error, EOF or finished close); c->state is
     * still the state it was in. The socket is already closed. */
    void (*on_close)(struct bench *b, struct conn *c, bool clean);
    /* Once per loop turn, after events and before flushing. */
    void (*tick)(struct bench *b);
};

struct bench {
    struct bench_opts o;
    const struct bench_mode *m;
    void *mode_state;
    int epfd;
    struct bench_uring *uring; /* non-NULL: the ring does the socket I/O */
    /* io_uring: output buffers of connections with nothing to send, most
     * recently used last (see uring.c), all out_cap bytes. */
    uint8_t **spare_out;
    uint32_t nspare_out;
    int64_t now; /* CLOCK_MONOTONIC ns, refreshed per event */
    struct conn *conns;
    uint32_t nconns;  /* slots */
    uint32_t nactive; /* slots not FREE */
    uint32_t nopen;   /* handshake done */
    uint32_t inflight;
    uint32_t *freelist;
    uint32_t nfree;
    struct conn **flush;
    uint32_t nflush;
    uint32_t *dead;
    uint32_t ndead;
    uint32_t next_src;
    int64_t next_sweep;
    uint64_t rng; /* xorshift state for mask keys */
    /* Counters. */
    uint64_t connect_errors;
    uint64_t hs_errors;
    uint64_t proto_errors;
    uint64_t io_errors;
    uint64_t timeouts;
    uint64_t peer_closes;
    uint64_t opened;            /* handshakes completed */
    uint64_t tls_errors;        /* TLS handshakes that failed, ... */
    uint64_t tls_verify_errors; /* ... of which certificate verification */
    uint64_t pmd_errors;        /* bad extension answer, or inflate failure */
    uint64_t pmd_conns;         /* handshakes that agreed permessage-deflate */
    uint64_t app_errors;        /* --proto ws/socketio: error replies */
    uint64_t app_bad;           /* ... and messages the bench could not parse */
    /* Bytes read from and written to sockets (TCP payload: TLS records
     * when --tls), for "bytes on the wire". */
    uint64_t wire_rx, wire_tx;
    struct ssl_ctx_st *ssl_ctx;
    char pmd_offer[WSH_PMD_HEADER_MAX];
    struct wsh_pmd_params pmd_want;
    uint8_t *zbuf; /* compressed message being built */
    size_t zlen, zcap;
    uint8_t rbuf[BENCH_CARRY + BENCH_RBUF];
};

int64_t now_ns(void);
/* Fills buf from getrandom(); exits on failure (a bench binary may). */
void fill_random(void *buf, size_t n);

int bench_init(struct bench *b, uint32_t slots, const struct bench_mode *m);
void bench_free(struct bench *b);
/* Starts one connection in a free slot. Returns the conn or NULL (counted). */
struct conn *bench_connect(struct bench *b, bool pub);
/* Opens n connections, at most BENCH_RAMP_BATCH in flight, waiting at most
 * until `until`. Returns the number open. */
uint32_t bench_ramp(struct bench *b, uint32_t n, int64_t until);
/* Runs the loop until `until` or until *stop becomes true. */
void bench_run(struct bench *b, int64_t until, const bool *stop);
/* Reserves n bytes of output; NULL when the buffer is full (the caller
 * decides whether that is backpressure or a bug). */
uint8_t *conn_reserve(struct bench *b, struct conn *c, size_t n);
/* Queues one message (framed and masked unless --raw). */
bool conn_send_msg(struct bench *b, struct conn *c, unsigned op, const uint8_t *p, size_t n);
/* Starts the closing handshake (--raw: closes the socket). */
void conn_close_ws(struct bench *b, struct conn *c);
/* Closes every open connection with the closing handshake and runs the
 * loop until all are gone or `until`. */
void bench_close_all(struct bench *b, int64_t until);
/* Closes the socket now. */
void conn_kill(struct bench *b, struct conn *c, bool clean);
size_t conn_msg_size(const struct bench *b, size_t n);
size_t conn_buffered(const struct conn *c);
/* Engine internals shared by the two loops (conn.c, uring.c). */
/* Puts c on the list flushed at the end of the loop turn. */
void conn_mark_pending(struct bench *b, struct conn *c);
/* n bytes read into p, which has BENCH_CARRY writable bytes before it (an
 * incomplete frame header is put there). False when c was closed. */
bool conn_input(struct bench *b, struct conn *c, uint8_t *p, size_t n);
/* The peer closed TCP. */
void conn_eof(struct bench *b, struct conn *c);

#ifdef WSH_BENCH_URING
/* Hands every open connection to an io_uring (uring.c). False, with the
 * reason on stderr, when the kernel or memory says no: epoll stays. */
bool bench_uring_start(struct bench *b);
void bench_uring_stop(struct bench *b);
/* One turn: submit what is queued, wait up to timeout_ms for a
 * completion, handle every completion. */
void bench_uring_wait(struct bench *b, int timeout_ms);
/* Queues a send of c's output unless one is in flight. */
void bench_uring_flush(struct bench *b, struct conn *c);
/* An output buffer for a connection that gave its own back. */
uint8_t *bench_uring_take_out(struct bench *b);
#endif

/* Application protocols (app.c) for --proto ws and socketio. */
enum app_phase { PH_NONE, PH_HELLO, PH_JOIN, PH_READY };
enum app_ev {
    APP_NONE,  /* nothing for the mode (a reply, a ping answered) */
    APP_READY, /* the connection just became ready: connected and subscribed */
    APP_DATA,  /* a channel message: *t and *seq are set */
    APP_ERROR, /* an error reply (counted by the mode) */
    APP_BAD    /* a message the bench cannot parse */
};
#define APP_HEAD 512u /* head kept of a message that arrives in pieces */
/* Starts the application handshake on a connection that just opened. */
void app_open(struct bench *b, struct conn *c);
/* Collects a message from its chunks. True when it is complete: *m and *n
 * then give the message, or its first APP_HEAD bytes. */
bool app_assemble(struct conn *c, const uint8_t *p, size_t n, bool first, bool last,
                  const uint8_t **m, size_t *mn);
/* One complete message: advances the handshake, answers pings. */
enum app_ev app_message(struct bench *b, struct conn *c, const uint8_t *m, size_t n, int64_t *t,
                        uint64_t *seq);
/* Writes a publish of (t, seq) whose payload is about b->o.size bytes.
 * Returns its length; cap must be >= app_publish_cap(b). */
size_t app_publish(const struct bench *b, uint8_t *out, size_t cap, int64_t t, uint64_t seq);
size_t app_publish_cap(const struct bench *b);

/* Modes. */
int run_echo(struct bench *b);
int run_fanout(struct bench *b);
int run_connect(struct bench *b);
int run_idle(struct bench *b);

/* Reporting (main.c). */
struct proc_sample {
    int64_t wall;
    uint64_t self_cpu_ns;
    uint64_t server_cpu_ns; /* 0 without --server-pid */
    long server_rss_kb;
    uint64_t wire_rx, wire_tx;
};
void proc_sample(const struct bench *b, struct proc_sample *s);
long server_rss_kb(long pid);
/* A "Name: N kB" line of /proc/PID/status (PID 0: ourselves), -1 if none. */
long proc_status_kb(long pid, const char *name);
/* --tls: the client context from the options; NULL (reported) on error. */
struct ssl_ctx_st *bench_tls_ctx(const struct bench_opts *o);
void bench_tls_ctx_free(struct ssl_ctx_st *ctx);

#define REPORT_EXTRA 16
struct report {
    const char *mode;
    uint64_t msgs;
    double seconds;
    double rate;
    const struct hist *lat;
    uint64_t errors;
    double bench_ns_per_msg;
    double server_ns_per_msg;
    long server_rss_kb;
    uint64_t wire_rx, wire_tx; /* bytes at the socket during the run */
    /* Extra "key":number pairs, NULL-terminated names. */
    const char *extra_k[REPORT_EXTRA];
    double extra_v[REPORT_EXTRA];
};
void report_print(const struct bench *b, const struct report *r);
void report_cpu(struct report *r, const struct proc_sample *a, const struct proc_sample *z);
/* Sum of the engine's error counters (mode-specific ones come on top). */
uint64_t bench_errors(const struct bench *b);
/* Prints "what (connect errors N, ...)" to stderr. */
void bench_explain_failure(const struct bench *b, const char *what);

#endif
