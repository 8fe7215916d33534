/* failmalloc: an LD_PRELOAD shim that makes malloc, calloc and realloc
 * fail now and then, for the out-of-memory fault test (test_oom.py).
 *
 * It is inert until the file named by WSH_FAILMALLOC_FLAG exists (and in
 * any program but WSH_FAILMALLOC_ONLY, when that is set); while it
 * does, about one allocation in WSH_FAILMALLOC_ONE_IN (default 50) returns
 * NULL with errno ENOMEM, on every thread. The test turns failures on and
 * off by creating and removing that file, so the server starts and stops
 * normally and only the traffic in between meets a failing allocator.
 *
 * The file is looked at no more than every 20 ms (by the coarse monotonic
 * clock, which costs no system call), so an allocation pays a clock read
 * and, while failures are on, a step of a thread-local xorshift. Real
 * allocation is glibc's own, through its exported __libc_* entry points:
 * no dlsym, which itself allocates. free is not replaced.
 *
 * WSH_FAILMALLOC_HANG_LOOKUPS=1 also makes every getaddrinfo call block
 * for good, flag file or not, as glibc's does once an allocation has
 * failed inside it and left its resolv.conf lock held.
 *
 * WSH_FAILMALLOC_NO_RESERVE=1 makes every open of /dev/null fail with
 * EMFILE: the server never has its reserve fd (worker.c), as when another
 * thread took the number it had just freed.
 *
 * WSH_FAILMALLOC_ACCEPT_ERRNO=N makes every accept4 fail with errno N
 * while the flag file exists (every call, not one in ONE_IN), as the
 * kernel's does out of socket buffers (ENOBUFS) or when a security module
 * refuses (EPERM): the connection stays queued.
 *
 * WSH_FAILMALLOC_SNDBUF=N sets SO_SNDBUF to N on every accepted socket,
 * flag file or not: a server's send buffer as small as a busy host's, for
 * a TLS handshake whose flight does not fit it.
 *
 * WSH_FAILMALLOC_SIZE=N fails every allocation of exactly N bytes while
 * the flag file exists, and no other: a test that knows the size of one
 * allocation (a buffer holding a string it chose the length of) makes that
 * one fail every time. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern int __open(const char *path, int flags, ...);

#define RECHECK_NS (20u * 1000u * 1000u)

/* When the file was last looked at (ns, even) and whether it was there
 * (the low bit), in one word: see should_fail. */
static _Atomic uint64_t checked;
static _Atomic uint64_t failed;
static uint32_t one_in = 50;
static const char *flag_path;
static bool hang_lookups;
static bool no_reserve;
static int accept_errno;
static int accept_sndbuf;
static size_t only_size; /* 0: any size, one in one_in */

__attribute__((constructor)) static void failmalloc_init(void)
{
    /* WSH_FAILMALLOC_ONLY=wshub: inert in every other program, so a
     * whole test suite can run with it preloaded, its clients unharmed. */
    const char *only = getenv("WSH_FAILMALLOC_ONLY");
    if (only != NULL && strcmp(only, program_invocation_short_name) != 0)
        return;
    flag_path = getenv("WSH_FAILMALLOC_FLAG");
    hang_lookups = getenv("WSH_FAILMALLOC_HANG_LOOKUPS") != NULL;
    no_reserve = getenv("WSH_FAILMALLOC_NO_RESERVE") != NULL;
    const char *e = getenv("WSH_FAILMALLOC_ACCEPT_ERRNO");
    if (e != NULL)
        accept_errno = atoi(e);
    const char *sb = getenv("WSH_FAILMALLOC_SNDBUF");
    if (sb != NULL)
        accept_sndbuf = atoi(sb);
    const char *z = getenv("WSH_FAILMALLOC_SIZE");
    if (z != NULL)
        only_size = (size_t)strtoull(z, NULL, 10);
    const char *n = getenv("WSH_FAILMALLOC_ONE_IN");
    if (n != NULL && atoi(n) > 0)
        one_in = (uint32_t)atoi(n);
}

static uint64_t coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Whether the flag file exists, as last seen. */
static bool flag_on(void)
{
    if (flag_path == NULL)
        return false;
    uint64_t now = coarse_ns() & ~(uint64_t)1;
    uint64_t seen = atomic_load_explicit(&checked, memory_order_relaxed);
    /* One thread looks at the file per period, claiming it by its stamp;
     * the others use what it saw. It tells what it saw only if no later
     * period was claimed meanwhile: a thread descheduled between access()
     * and the store wrote "on" over a later "off" (the test had removed
     * the file), and allocations failed after the spell had ended, until
     * the next look. access() allocates nothing. */
    /* Signed: another thread's stamp may be later than our clock read. */
    if ((int64_t)(now - (seen & ~(uint64_t)1)) >= (int64_t)RECHECK_NS) {
        uint64_t claim = now | (seen & 1u);
        if (atomic_compare_exchange_strong_explicit(&checked, &seen, claim, memory_order_relaxed,
                                                    memory_order_relaxed)) {
            uint64_t saw = now | (access(flag_path, F_OK) == 0);
            atomic_compare_exchange_strong_explicit(&checked, &claim, saw, memory_order_relaxed,
                                                    memory_order_relaxed);
        }
    }
    return atomic_load_explicit(&checked, memory_order_relaxed) & 1u;
}

/* Whether an allocation of size bytes fails. */
static bool should_fail(size_t size)
{
    if (!flag_on())
        return false;
    if (only_size != 0) {
        if (size != only_size)
            return false;
    } else {
        static _Thread_local uint32_t x;
        if (x == 0)
            x = (uint32_t)(uintptr_t)&x | 1u; /* a different seed per thread */
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if (x % one_in != 0)
            return false;
    }
    atomic_fetch_add_explicit(&failed, 1, memory_order_relaxed);
    errno = ENOMEM;
    return true;
}

/* At exit, one line on stderr, so a test can tell the failures happened. */
__attribute__((destructor)) static void failmalloc_report(void)
{
    if (flag_path == NULL)
        return;
    char line[64] = "failmalloc: failed=";
    size_t len = 19;
    char digits[24];
    size_t nd = 0;
    uint64_t v = atomic_load(&failed);
    do
        digits[nd++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    while (nd > 0)
        line[len++] = digits[--nd];
    line[len++] = '\n';
    (void)!write(2, line, len);
}

void *malloc(size_t n)
{
    return should_fail(n) ? NULL : __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    /* An overflowing product fails in glibc anyway. */
    return should_fail(n * size) ? NULL : __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    /* realloc(p, 0) frees: that never fails. */
    if (p != NULL && n == 0)
        return __libc_realloc(p, n);
    return should_fail(n) ? NULL : __libc_realloc(p, n);
}

/* The next definition of name (libc's), looked up at the first call, not
 * in the constructor: dlsym allocates, and may fail then like anything
 * else. NULL if it cannot be found. */
static void *real_fn(_Atomic(void *) *cache, const char *name)
{
    void *f = atomic_load(cache);
    if (f == NULL) {
        f = dlsym(RTLD_NEXT, name);
        atomic_store(cache, f);
    }
    return f;
}

typedef int gai_fn(const char *, const char *, const struct addrinfo *, struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    while (hang_lookups)
        pause();
    static _Atomic(void *) real;
    void *sym = real_fn(&real, "getaddrinfo");
    if (sym == NULL)
        return EAI_MEMORY;
    gai_fn *f;
    memcpy(&f, &sym, sizeof(f)); /* POSIX's object-to-function pointer */
    return f(node, service, hints, res);
}

/* glibc declares addr as a transparent union under _GNU_SOURCE. */
typedef int accept4_fn(int, __SOCKADDR_ARG, socklen_t *, int);

int accept4(int fd, __SOCKADDR_ARG addr, socklen_t *len, int flags)
{
    if (accept_errno != 0 && flag_on()) {
        errno = accept_errno;
        return -1;
    }
    static _Atomic(void *) real;
    void *sym = real_fn(&real, "accept4");
    if (sym == NULL) {
        errno = ENOSYS;
        return -1;
    }
    accept4_fn *f;
    memcpy(&f, &sym, sizeof(f));
    int c = f(fd, addr, len, flags);
    if (c >= 0 && accept_sndbuf > 0)
        (void)setsockopt(c, SOL_SOCKET, SO_SNDBUF, &accept_sndbuf, sizeof(accept_sndbuf));
    return c;
}

int open(const char *path, int flags, ...)
{
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    if (no_reserve && strcmp(path, "/dev/null") == 0) {
        errno = EMFILE;
        return -1;
    }
    return __open(path, flags, mode);
}
