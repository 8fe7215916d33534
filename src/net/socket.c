/* Socket helpers that report errors as -errno and never log (Redis anet). */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "net.h"

static void addrs_put(struct wsh_addrs *out, const void *sa, socklen_t len)
{
    if (out->n == WSH_ADDRS_MAX || len > sizeof(out->a[0].ss))
        return;
    memcpy(&out->a[out->n].ss, sa, len);
    out->a[out->n++].len = len;
}

bool wsh_addrs_literal(const char *host, int port, struct wsh_addrs *out)
{
    struct sockaddr_in v4 = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    struct sockaddr_in6 v6 = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port) };
    out->n = 0;
    if (inet_pton(AF_INET, host, &v4.sin_addr) == 1) {
        addrs_put(out, &v4, sizeof(v4));
    } else if (inet_pton(AF_INET6, host, &v6.sin6_addr) == 1) {
        addrs_put(out, &v6, sizeof(v6));
    } else if (strcasecmp(host, "localhost") == 0) {
        v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        v6.sin6_addr = in6addr_loopback;
        addrs_put(out, &v4, sizeof(v4));
        addrs_put(out, &v6, sizeof(v6));
    }
    return out->n > 0;
}

void wsh_addrs_append(struct wsh_addrs *out, const struct addrinfo *ai)
{
    for (; ai != NULL; ai = ai->ai_next)
        addrs_put(out, ai->ai_addr, ai->ai_addrlen);
}

int wsh_listen_tcp(const char *host, int port, int backlog)
{
    struct wsh_addrs addrs;
    if (!wsh_addrs_literal(host, port, &addrs)) {
        struct addrinfo hints = { 0 }, *res = NULL;
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
        char portstr[16];
        snprintf(portstr, sizeof(portstr), "%d", port);
        int rc = getaddrinfo(host, portstr, &hints, &res);
        if (rc != 0)
            return rc == EAI_SYSTEM ? -errno : -EADDRNOTAVAIL;
        wsh_addrs_append(&addrs, res);
        freeaddrinfo(res);
    }
    int err = -EADDRNOTAVAIL;
    for (int i = 0; i < addrs.n; i++) {
        const struct sockaddr *sa = (const struct sockaddr *)&addrs.a[i].ss;
        int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            err = -errno;
            continue;
        }
        int one = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
            bind(fd, sa, addrs.a[i].len) != 0 || listen(fd, backlog) != 0) {
            err = -errno;
            close(fd);
            /* The next address only for one this machine lacks: a port
             * taken, or not ours to take, is the answer, not hidden. */
            if (err == -EADDRINUSE || err == -EACCES)
                break;
            continue;
        }
        return fd;
    }
    return err;
}

int wsh_socket_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return -errno;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -EAFNOSUPPORT;
}

/* The data path's two calls. recv/sendmsg rather than read/writev: the
 * socket calls skip the VFS layer (file position lock, rw_verify_area,
 * the LSM file hook), which on loopback was ~10 % of the kernel time of a
 * 16 KiB echo, and MSG_NOSIGNAL makes a reset peer an EPIPE instead of a
 * signal.
 *
 * They go through syscall() rather than glibc's recv/send: in a process
 * with more than one thread those wrappers make every call a cancellation
 * point, two atomic compare-and-swaps on the thread's cancel word around
 * the system call. wshub never cancels a thread, so that is pure cost: a
 * 32-byte echo pays it twice per message. Sanitizer builds keep the libc
 * calls, whose interceptors check the buffers. */
#if defined(__SANITIZE_ADDRESS__)
#define WSH_LIBC_SOCKCALLS 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer)
#define WSH_LIBC_SOCKCALLS 1
#endif
#endif

static ssize_t sock_recv(int fd, void *buf, size_t cap)
{
#ifdef WSH_LIBC_SOCKCALLS
    return recv(fd, buf, cap, 0);
#else
    return syscall(SYS_recvfrom, fd, buf, cap, 0, NULL, NULL);
#endif
}

static ssize_t sock_send(int fd, const void *buf, size_t n)
{
#ifdef WSH_LIBC_SOCKCALLS
    return send(fd, buf, n, MSG_NOSIGNAL);
#else
    return syscall(SYS_sendto, fd, buf, n, MSG_NOSIGNAL, NULL, 0);
#endif
}

static ssize_t sock_sendmsg(int fd, const struct msghdr *m)
{
#ifdef WSH_LIBC_SOCKCALLS
    return sendmsg(fd, m, MSG_NOSIGNAL);
#else
    return syscall(SYS_sendmsg, fd, m, MSG_NOSIGNAL);
#endif
}

ssize_t wsh_sock_recv(int fd, void *buf, size_t cap)
{
    ssize_t r;
    do {
        r = sock_recv(fd, buf, cap);
    } while (r < 0 && errno == EINTR);
    return r;
}

static ssize_t sock_recvmsg(int fd, struct msghdr *m)
{
#ifdef WSH_LIBC_SOCKCALLS
    return recvmsg(fd, m, 0);
#else
    return syscall(SYS_recvmsg, fd, m, 0);
#endif
}

ssize_t wsh_sock_recv_split(int fd, void *buf, size_t head, size_t cap)
{
    struct iovec iov[2] = { { .iov_base = buf, .iov_len = head },
                            { .iov_base = (char *)buf + head, .iov_len = cap - head } };
    struct msghdr m = { .msg_iov = iov, .msg_iovlen = 2 };
    ssize_t r;
    do {
        r = sock_recvmsg(fd, &m);
    } while (r < 0 && errno == EINTR);
    return r;
}

ssize_t wsh_sock_sendv(int fd, const struct iovec *iov, int n)
{
    struct msghdr m = { .msg_iov = (struct iovec *)(uintptr_t)iov, .msg_iovlen = (size_t)n };
    ssize_t w;
    do {
        /* One run needs no iovec copied in from user space. */
        w = n == 1 ? sock_send(fd, iov[0].iov_base, iov[0].iov_len) : sock_sendmsg(fd, &m);
    } while (w < 0 && errno == EINTR);
    return w;
}

size_t wsh_addr_key(const struct sockaddr_storage *ss, unsigned v6_prefix, uint8_t out[16])
{
    if (ss->ss_family == AF_INET) {
        memcpy(out, &((const struct sockaddr_in *)ss)->sin_addr, 4);
        return 4;
    }
    if (ss->ss_family != AF_INET6)
        return 0;
    const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(a)) {
        /* An IPv4 client of a dual-stack listener: its own address, or
         * every IPv4 client would share one ::ffff:0:0/96 key. */
        memcpy(out, a->s6_addr + 12, 4);
        return 4;
    }
    if (v6_prefix > 128)
        v6_prefix = 128;
    memcpy(out, a->s6_addr, 16);
    for (unsigned bit = v6_prefix; bit < 128; bit++)
        out[bit / 8] &= (uint8_t) ~(0x80u >> (bit % 8));
    return 16;
}
