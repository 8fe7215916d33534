/* wshub-bench's io_uring engine, for the measured phase of `echo`.
 *
 * Why: on loopback each side of a benchmark pays the kernel for its own
 * recv and send, and on a virtual machine a system call's entry and exit
 * cost more than the small message it carries. The epoll engine makes one
 * epoll_wait per turn plus one recv and one send per connection and
 * message, exactly like the server it drives, so the bench needed as much
 * CPU per message as the server and became the bottleneck it was meant to
 * measure around. Here one io_uring_enter per loop turn submits the sends
 * of every connection that has output and reaps every completion: the
 * kernel still copies each byte, but the per-call overhead is paid once
 * per turn instead of twice per message.
 *
 * How: after the ramp (which stays on epoll: handshakes are not
 * measured), each open connection leaves the epoll set and gets one
 * multishot recv drawing from a ring of provided buffers (kernel 6.0+),
 * so receiving needs no submission per message. A buffer carries
 * BENCH_CARRY bytes of headroom or more, so an incomplete frame header kept from
 * the previous read is put in front of the new bytes as the epoll engine
 * does. Output stays in the connection's buffer (conn.c); at the end of a
 * turn each connection with output and no send in flight gets one send of
 * all of it. While a send is in flight its bytes must not move, so
 * conn_reserve does not compact then (c->tx_busy).
 *
 * Output buffers are lent, not owned: a connection whose send completed
 * with nothing left gives its buffer to a stack, and the next message of
 * any connection is written into the top of it. Sends on loopback complete
 * in the io_uring_enter that submits them, so a turn's messages are built
 * in the buffers the previous turn's sends just read, still in cache,
 * rather than in one buffer per connection (1.6 MB at 100 x 16 KiB, which
 * `perf` showed the masking loop waiting on).
 *
 * Not for TLS (OpenSSL does its own socket calls), nor for modes that open
 * connections while measuring (connect, idle): bench_connect refuses once
 * the ring runs. */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench.h"

#define URING_BGID      1
#define URING_MAX_BUFS  8192u       /* buffer ring entries, a power of two */
#define URING_BUF_BYTES (64u << 20) /* all provided buffers together, at most */
#define URING_MIN_BUF   4096u
/* BENCH_CARRY rounded up to a cache line: each buffer then starts aligned,
 * and the kernel's copy into a misaligned destination is slower. */
#define URING_HEADROOM (((unsigned)BENCH_CARRY + 63u) & ~63u)

enum { UK_RECV = 0, UK_SEND = 1 };

struct bench_uring {
    struct io_uring ring;
    struct io_uring_buf_ring *br;
    size_t br_bytes;
    uint8_t *bufs; /* nbufs slots of URING_HEADROOM + buf_size bytes */
    uint32_t nbufs, buf_size;
    size_t out_cap; /* the largest connection output buffer: lent ones have it */
    int returned;   /* buffers given back since the last advance */
    bool registered;
};

static uint32_t pow2_at_least(uint32_t n)
{
    uint32_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

/* A completion names its connection slot, the slot's generation (a slot
 * reused by a later connection ignores the old one's completions) and
 * whether it was the recv or a send. */
static uint64_t tag(const struct conn *c, unsigned kind)
{
    return (uint64_t)c->gen << 32 | (uint64_t)kind << 31 | c->idx;
}

static uint8_t *buf_at(const struct bench_uring *u, uint32_t bid)
{
    return u->bufs + (size_t)bid * (URING_HEADROOM + u->buf_size) + URING_HEADROOM;
}

static void give_back(struct bench_uring *u, uint32_t bid)
{
    io_uring_buf_ring_add(u->br, buf_at(u, bid), u->buf_size, (unsigned short)bid,
                          io_uring_buf_ring_mask(u->nbufs), u->returned++);
}

/* An SQE, submitting what is queued when the ring is full (it is sized for
 * one send and one recv per connection, so this is the rare path). */
static struct io_uring_sqe *get_sqe(struct bench_uring *u)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    if (!sqe) {
        io_uring_submit(&u->ring);
        sqe = io_uring_get_sqe(&u->ring);
    }
    if (!sqe) {
        fprintf(stderr, "wshub-bench: io_uring submission queue stuck\n");
        exit(1);
    }
    return sqe;
}

static void arm_recv(struct bench_uring *u, struct conn *c)
{
    struct io_uring_sqe *sqe = get_sqe(u);
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = URING_BGID;
    io_uring_sqe_set_data64(sqe, tag(c, UK_RECV));
}

static void uring_free(struct bench_uring *u)
{
    if (!u)
        return;
    /* Cancels and waits for whatever is in flight, so no completion can
     * touch a buffer after this. */
    io_uring_queue_exit(&u->ring);
    if (u->br)
        munmap(u->br, u->br_bytes);
    free(u->bufs);
    free(u);
}

bool bench_uring_start(struct bench *b)
{
    if (b->uring)
        return true;
    struct bench_uring *u = calloc(1, sizeof *u);
    if (!u)
        return false;
    uint32_t n = b->nconns ? b->nconns : 1;
    /* Each turn queues at most one send and one re-armed recv per
     * connection; completions can pile up several per connection. */
    struct io_uring_params p = { .flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER |
                                          IORING_SETUP_DEFER_TASKRUN,
                                 .cq_entries = pow2_at_least(8 * n + 1024) };
    uint32_t sq = pow2_at_least(2 * n + 64);
    if (sq > 32768)
        sq = 32768;
    int rc = io_uring_queue_init_params(sq, &u->ring, &p);
    if (rc == -EINVAL) {
        /* Kernels before 6.1 know neither flag; the engine works without
         * them, running completions at interrupt time. */
        p = (struct io_uring_params){ .flags = IORING_SETUP_CQSIZE,
                                      .cq_entries = pow2_at_least(8 * n + 1024) };
        rc = io_uring_queue_init_params(sq, &u->ring, &p);
    }
    if (rc < 0) {
        fprintf(stderr, "wshub-bench: io_uring_setup: %s\n", strerror(-rc));
        free(u);
        return false;
    }

    u->nbufs = pow2_at_least(2 * n < 64 ? 64 : 2 * n);
    if (u->nbufs > URING_MAX_BUFS)
        u->nbufs = URING_MAX_BUFS;
    u->buf_size = URING_BUF_BYTES / u->nbufs;
    if (u->buf_size > BENCH_RBUF)
        u->buf_size = BENCH_RBUF;
    if (u->buf_size < URING_MIN_BUF)
        u->buf_size = URING_MIN_BUF;
    u->br_bytes = u->nbufs * sizeof(struct io_uring_buf);
    void *m = mmap(NULL, u->br_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    u->bufs = aligned_alloc(64, (size_t)u->nbufs * (URING_HEADROOM + u->buf_size));
    if (m == MAP_FAILED || !u->bufs) {
        fprintf(stderr, "wshub-bench: out of memory for the receive buffers\n");
        if (m != MAP_FAILED)
            munmap(m, u->br_bytes);
        goto fail;
    }
    u->br = m;
    b->spare_out = calloc(b->nconns, sizeof *b->spare_out);
    if (!b->spare_out) {
        fprintf(stderr, "wshub-bench: out of memory\n");
        goto fail;
    }
    io_uring_buf_ring_init(u->br);
    struct io_uring_buf_reg reg = { .ring_addr = (unsigned long)u->br,
                                    .ring_entries = u->nbufs,
                                    .bgid = URING_BGID };
    rc = io_uring_register_buf_ring(&u->ring, &reg, 0);
    if (rc < 0) {
        fprintf(stderr, "wshub-bench: io_uring buffer ring: %s\n", strerror(-rc));
        goto fail;
    }
    for (uint32_t i = 0; i < u->nbufs; i++)
        give_back(u, i);
    io_uring_buf_ring_advance(u->br, u->returned);
    u->returned = 0;

    for (uint32_t i = 0; i < b->nconns; i++) {
        struct conn *c = &b->conns[i];
        if (c->state != CS_OPEN)
            continue;
        /* The ring now reports this socket; epoll would only queue
         * readiness nobody reads. */
        epoll_ctl(b->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        if (c->out_cap > u->out_cap)
            u->out_cap = c->out_cap;
        c->blocked = false;
        c->tx_busy = false;
        arm_recv(u, c);
        if (c->out_len > c->out_off)
            conn_mark_pending(b, c);
    }
    b->uring = u;
    return true;

fail:
    uring_free(u);
    return false;
}

void bench_uring_stop(struct bench *b)
{
    uring_free(b->uring);
    b->uring = NULL;
}

void bench_uring_flush(struct bench *b, struct conn *c)
{
    c->pending = false;
    if (c->state == CS_DEAD || c->tx_busy || c->out_off >= c->out_len)
        return;
    struct io_uring_sqe *sqe = get_sqe(b->uring);
    io_uring_prep_send(sqe, c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, tag(c, UK_SEND));
    c->tx_busy = true;
}

uint8_t *bench_uring_take_out(struct bench *b)
{
    if (b->nspare_out > 0)
        return b->spare_out[--b->nspare_out];
    uint8_t *p = malloc(b->uring->out_cap);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

static void on_send(struct bench *b, struct conn *c, int res)
{
    c->tx_busy = false;
    if (res < 0) {
        b->io_errors++;
        conn_kill(b, c, false);
        return;
    }
    b->wire_tx += (uint64_t)res;
    c->out_off += (size_t)res;
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        if (c->out_cap >= b->uring->out_cap)
            b->spare_out[b->nspare_out++] = c->out;
        else
            free(c->out); /* too small to lend to every connection */
        c->out = NULL;
    } else
        conn_mark_pending(b, c); /* a short send, or output queued meanwhile */
}

static void on_recv(struct bench *b, struct conn *c, const struct io_uring_cqe *cqe)
{
    struct bench_uring *u = b->uring;
    int res = cqe->res;
    if (res > 0) {
        b->wire_rx += (uint64_t)res;
        b->now = now_ns();
        uint32_t bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        if (!conn_input(b, c, buf_at(u, bid), (size_t)res))
            return;
    } else if (res == 0) {
        conn_eof(b, c);
        return;
    } else if (res != -ENOBUFS) {
        b->io_errors++;
        conn_kill(b, c, false);
        return;
    }
    /* The multishot recv ended (the buffers ran out, or the kernel chose
     * to stop): ask again. */
    if (!(cqe->flags & IORING_CQE_F_MORE) && c->state != CS_DEAD)
        arm_recv(u, c);
}

void bench_uring_wait(struct bench *b, int timeout_ms)
{
    struct bench_uring *u = b->uring;
    struct __kernel_timespec ts = { .tv_sec = timeout_ms / 1000,
                                    .tv_nsec = (long long)(timeout_ms % 1000) * 1000000 };
    struct io_uring_cqe *cqe;
    /* Submits this turn's sends and recvs and waits, in one call. */
    io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
    b->now = now_ns();
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&u->ring, head, cqe)
    {
        seen++;
        uint64_t d = io_uring_cqe_get_data64(cqe);
        uint32_t idx = (uint32_t)d & 0x7fffffffu;
        bool send = (d >> 31) & 1;
        struct conn *c = idx < b->nconns ? &b->conns[idx] : NULL;
        bool live =
            c && c->gen == (uint32_t)(d >> 32) && c->state != CS_DEAD && c->state != CS_FREE;
        if (live && send)
            on_send(b, c, cqe->res);
        else if (live)
            on_recv(b, c, cqe);
        /* Every buffer the kernel picked goes back, also from completions
         * of connections that are gone. */
        if (cqe->flags & IORING_CQE_F_BUFFER)
            give_back(u, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    }
    io_uring_cq_advance(&u->ring, seen);
    if (u->returned) {
        io_uring_buf_ring_advance(u->br, u->returned);
        u->returned = 0;
    }
}
