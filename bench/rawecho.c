/* rawecho: the ceiling for wshub's numbers. A single-threaded epoll TCP
 * server with no WebSocket at all: it shows what the kernel and one core
 * can do, so every wshub number can be read as a fraction of it.
 *   echo:   every byte read is written back (one send per read).
 *   fanout: every complete S-byte message from any connection goes to every
 *           OTHER connection, written with writev straight from one shared
 *           ring of messages (each message stored once). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define RBUF        65536
#define LOG_BYTES   (64u << 20) /* fan-out ring, touched lazily */
#define LOG_MIN     4096u       /* messages */
#define LOG_MAX     65536u
#define IOV_BATCH   64
#define WRITE_QUOTA (256u << 10) /* per connection per loop turn */

struct rconn {
    int fd;
    uint32_t id;  /* never reused: marks a connection's own messages */
    uint32_t pos; /* index in the all[] array */
    bool blocked; /* waiting for EPOLLOUT */
    /* echo: bytes read but not yet written back (reading pauses). */
    uint8_t *q;
    size_t qoff, qlen;
    /* fanout: a partial incoming message, and the send cursor. */
    uint8_t *part;
    size_t part_len;
    uint64_t cursor; /* next message to send */
    size_t cur_off;  /* bytes of it already sent */
};

static struct {
    bool fanout;
    size_t size;
    int epfd, lfd, spare_fd;
    struct rconn **byfd;
    size_t maxfd;
    struct rconn **all;
    uint32_t nall;
    uint32_t next_id;
    /* Fan-out ring: slot i holds message h with h % nslots == i. */
    uint8_t *log;
    uint32_t *owner;
    uint64_t nslots;
    uint64_t head;
    bool dirty;
    uint64_t dropped, slow_closed;
    size_t lead; /* echo: see --lead */
    _Alignas(64) uint8_t rbuf[64 + RBUF];
} g;

static void conn_close(struct rconn *c)
{
    close(c->fd);
    g.byfd[c->fd] = NULL;
    g.all[c->pos] = g.all[--g.nall];
    g.all[c->pos]->pos = c->pos;
    free(c->q);
    free(c->part);
    free(c);
}

static void append_msg(struct rconn *from, const uint8_t *p)
{
    uint64_t slot = g.head % g.nslots;
    memcpy(g.log + slot * g.size, p, g.size);
    g.owner[slot] = from->id;
    g.head++;
    g.dirty = true;
}

/* Returns false when the connection was closed. */
static bool read_fanout(struct rconn *c, bool to_eagain)
{
    for (;;) {
        ssize_t n = recv(c->fd, g.rbuf, RBUF, 0);
        if (n <= 0) {
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return true;
            conn_close(c);
            return false;
        }
        const uint8_t *p = g.rbuf;
        size_t len = (size_t)n;
        if (c->part_len) {
            size_t k = g.size - c->part_len < len ? g.size - c->part_len : len;
            memcpy(c->part + c->part_len, p, k);
            c->part_len += k;
            p += k;
            len -= k;
            if (c->part_len == g.size) {
                append_msg(c, c->part);
                c->part_len = 0;
            }
        }
        while (len >= g.size) {
            append_msg(c, p);
            p += g.size;
            len -= g.size;
        }
        if (len) {
            if (!c->part && !(c->part = malloc(g.size))) {
                conn_close(c);
                return false;
            }
            memcpy(c->part, p, len);
            c->part_len = len;
        }
        /* Edge-triggered: a short read means drained, unless the peer hung
         * up, which raises no further edge: then read on to the EOF. */
        if ((size_t)n < RBUF && !to_eagain)
            return true;
    }
}

/* Sends what this connection has not seen yet, skipping its own messages,
 * in writev batches straight out of the ring. */
static void flush_fanout(struct rconn *c)
{
    if (c->blocked)
        return;
    if (g.head - c->cursor > g.nslots) {
        /* The ring lapped this reader. Mid-message we cannot resync the
         * stream, so the reader goes (a real server's hard limit);
         * otherwise it skips to the oldest message still held. */
        if (c->cur_off) {
            g.slow_closed++;
            conn_close(c);
            return;
        }
        g.dropped += g.head - g.nslots - c->cursor;
        c->cursor = g.head - g.nslots;
    }
    size_t quota = WRITE_QUOTA;
    while (c->cursor < g.head && quota > 0) {
        struct iovec iov[IOV_BATCH];
        int niov = 0;
        size_t total = 0;
        uint64_t h = c->cursor;
        size_t off = c->cur_off;
        while (h < g.head && niov < IOV_BATCH && total < quota) {
            uint64_t slot = h % g.nslots;
            if (g.owner[slot] == c->id) {
                h++;
                off = 0;
                if (niov == 0) {
                    c->cursor = h;
                    c->cur_off = 0;
                }
                continue;
            }
            uint8_t *p = g.log + slot * g.size + off;
            size_t n = g.size - off;
            if (niov > 0 && (uint8_t *)iov[niov - 1].iov_base + iov[niov - 1].iov_len == p)
                iov[niov - 1].iov_len += n;
            else
                iov[niov++] = (struct iovec){ .iov_base = p, .iov_len = n };
            total += n;
            h++;
            off = 0;
        }
        if (niov == 0)
            return;
        ssize_t w = writev(c->fd, iov, niov);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                c->blocked = errno == EAGAIN;
                return;
            }
            conn_close(c);
            return;
        }
        /* Advance the cursor over what was written, skipping own messages
         * exactly as the gather loop did. */
        size_t left = (size_t)w;
        while (left > 0) {
            uint64_t slot = c->cursor % g.nslots;
            if (g.owner[slot] == c->id) {
                c->cursor++;
                continue;
            }
            size_t rem = g.size - c->cur_off;
            if (left >= rem) {
                left -= rem;
                c->cursor++;
                c->cur_off = 0;
            } else {
                c->cur_off += left;
                left = 0;
            }
        }
        quota = (size_t)w < quota ? quota - (size_t)w : 0;
        if ((size_t)w < total) {
            c->blocked = true;
            return;
        }
    }
    if (c->cursor < g.head)
        g.dirty = true; /* quota hit: continue next turn */
}

static void flush_echo(struct rconn *c)
{
    while (c->qoff < c->qlen) {
        ssize_t w = send(c->fd, c->q + c->qoff, c->qlen - c->qoff, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                c->blocked = true;
                return;
            }
            conn_close(c);
            return;
        }
        c->qoff += (size_t)w;
    }
    c->qoff = c->qlen = 0;
}

/* With --lead L a read lands L bytes before a cache line, those L bytes
 * copied apart (recvmsg, two iovecs), so the bulk of the read lands on the
 * line and the echo is sent from 64 - L bytes into one: the layout of
 * wshub's echo replies (L = 4: a frame header of 4 bytes before a 16 KiB
 * payload). For measuring what the kernel charges for that layout and
 * the header's bytes alone, without any WebSocket work. */
static ssize_t echo_recv(int fd, uint8_t **at)
{
    if (g.lead == 0) {
        *at = g.rbuf;
        return recv(fd, g.rbuf, RBUF, 0);
    }
    *at = g.rbuf + 64 - g.lead;
    struct iovec iov[2] = { { *at, g.lead }, { g.rbuf + 64, RBUF - g.lead } };
    struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };
    return recvmsg(fd, &mh, 0);
}

static void read_echo(struct rconn *c, bool to_eagain)
{
    /* Reading pauses while a write-back is pending: bounded memory. */
    while (c->qlen == 0) {
        uint8_t *at;
        ssize_t n = echo_recv(c->fd, &at);
        if (n <= 0) {
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return;
            conn_close(c);
            return;
        }
        ssize_t w = send(c->fd, at, (size_t)n, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN) {
            conn_close(c);
            return;
        }
        if (w < 0)
            w = 0;
        if (w < n) {
            if (!c->q && !(c->q = malloc(RBUF))) {
                conn_close(c);
                return;
            }
            memcpy(c->q, at + w, (size_t)(n - w));
            c->qoff = 0;
            c->qlen = (size_t)(n - w);
            c->blocked = true;
            return;
        }
        if (n < RBUF && !to_eagain) /* the two iovecs of --lead hold RBUF too */
            return;
    }
}

static void accept_all(void)
{
    for (;;) {
        int fd = accept4(g.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
                /* Out of fds: accept and drop one so the listen socket
                 * stops reporting readiness (libuv's emfile trick). */
                close(g.spare_fd);
                fd = accept(g.lfd, NULL, NULL);
                if (fd >= 0)
                    close(fd);
                g.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                continue;
            }
            return; /* EAGAIN, or a connection reset before accept */
        }
        struct rconn *c = calloc(1, sizeof *c);
        if (!c || (size_t)fd >= g.maxfd) {
            free(c);
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->fd = fd;
        c->id = ++g.next_id;
        c->cursor = g.head;
        c->pos = g.nall;
        g.all[g.nall++] = c;
        g.byfd[fd] = c;
        struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                  .data.fd = fd };
        if (epoll_ctl(g.epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
            conn_close(c);
    }
}

static void usage(void)
{
    fputs("usage: rawecho --port P [--mode echo|fanout] [--size S] [--host A] [--lead L]\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    long port = -1;
    g.size = 64;
    static const struct option lo[] = { { "port", required_argument, NULL, 'p' },
                                        { "mode", required_argument, NULL, 'm' },
                                        { "size", required_argument, NULL, 's' },
                                        { "host", required_argument, NULL, 'H' },
                                        { "lead", required_argument, NULL, 'l' },
                                        { 0 } };
    int ch;
    while ((ch = getopt_long(argc, argv, "p:m:s:H:l:", lo, NULL)) != -1) {
        switch (ch) {
        case 'p':
            port = strtol(optarg, NULL, 10);
            break;
        case 'm':
            if (strcmp(optarg, "fanout") == 0)
                g.fanout = true;
            else if (strcmp(optarg, "echo") != 0)
                usage();
            break;
        case 's':
            g.size = (size_t)strtoul(optarg, NULL, 10);
            break;
        case 'H':
            host = optarg;
            break;
        case 'l':
            g.lead = (size_t)strtoul(optarg, NULL, 10);
            break;
        default:
            usage();
        }
    }
    if (port < 0 || port > 65535 || g.size == 0 || g.size > (16u << 20) || g.lead > 63)
        usage();
    signal(SIGPIPE, SIG_IGN);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    g.maxfd = rl.rlim_cur > (1u << 20) ? (1u << 20) : rl.rlim_cur;
    g.byfd = calloc(g.maxfd, sizeof *g.byfd);
    g.all = calloc(g.maxfd, sizeof *g.all);
    if (g.fanout) {
        g.nslots = LOG_BYTES / g.size;
        g.nslots = g.nslots < LOG_MIN ? LOG_MIN : g.nslots > LOG_MAX ? LOG_MAX : g.nslots;
        g.log = malloc(g.nslots * g.size);
        g.owner = calloc(g.nslots, sizeof *g.owner);
    }
    if (!g.byfd || !g.all || (g.fanout && (!g.log || !g.owner))) {
        fprintf(stderr, "rawecho: out of memory\n");
        return 1;
    }
    g.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

    g.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(g.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1 ||
        bind(g.lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(g.lfd, 4096) < 0) {
        perror("rawecho: bind/listen");
        return 1;
    }
    socklen_t sl = sizeof sa;
    getsockname(g.lfd, (struct sockaddr *)&sa, &sl);
    fprintf(stderr, "port=%u\n", ntohs(sa.sin_port));

    g.epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = { .events = EPOLLIN, .data.fd = g.lfd };
    epoll_ctl(g.epfd, EPOLL_CTL_ADD, g.lfd, &lev);
    struct epoll_event evs[1024];
    for (;;) {
        int n = epoll_wait(g.epfd, evs, 1024, -1);
        if (n < 0 && errno != EINTR) {
            perror("rawecho: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == g.lfd) {
                accept_all();
                continue;
            }
            struct rconn *c = g.byfd[fd];
            if (!c)
                continue; /* closed earlier in this batch */
            uint32_t e = evs[i].events;
            if (e & EPOLLOUT) {
                c->blocked = false;
                if (g.fanout) {
                    g.dirty = true;
                } else if (c->qlen) {
                    flush_echo(c);
                    if (g.byfd[fd] != c)
                        continue;
                    if (c->qlen == 0)
                        read_echo(c, true); /* resume: no new edge will come */
                    continue;
                }
            }
            if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                bool hup = e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR);
                if (g.fanout)
                    read_fanout(c, hup);
                else
                    read_echo(c, hup);
            }
        }
        /* Like Redis's beforeSleep: one gathered write per connection per
         * turn, after all input of the turn has been appended. */
        if (g.fanout && g.dirty) {
            g.dirty = false;
            for (uint32_t i = 0; i < g.nall;) {
                struct rconn *c = g.all[i];
                flush_fanout(c);
                if (i < g.nall && g.all[i] == c)
                    i++;
            }
        }
    }
}
