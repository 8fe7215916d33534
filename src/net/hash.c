/* Keyed hashing and random keys (wshub/hash.h). */
#include "wshub/hash.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define ROTL(x, s) (((x) << (s)) | ((x) >> (64 - (s))))
#define SIPROUND           \
    do {                   \
        v0 += v1;          \
        v1 = ROTL(v1, 13); \
        v1 ^= v0;          \
        v0 = ROTL(v0, 32); \
        v2 += v3;          \
        v3 = ROTL(v3, 16); \
        v3 ^= v2;          \
        v0 += v3;          \
        v3 = ROTL(v3, 21); \
        v3 ^= v0;          \
        v2 += v1;          \
        v1 = ROTL(v1, 17); \
        v1 ^= v2;          \
        v2 = ROTL(v2, 32); \
    } while (0)

uint64_t wsh_siphash13(const uint64_t k[2], const void *p, size_t len)
{
    const uint8_t *in = p;
    uint64_t v0 = 0x736f6d6570736575ULL ^ k[0];
    uint64_t v1 = 0x646f72616e646f6dULL ^ k[1];
    uint64_t v2 = 0x6c7967656e657261ULL ^ k[0];
    uint64_t v3 = 0x7465646279746573ULL ^ k[1];
    size_t whole = len & ~(size_t)7;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = 0;
        for (size_t j = 0; j < 8; j++)
            m |= (uint64_t)in[i + j] << (8 * j);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t last = (uint64_t)len << 56;
    for (size_t j = 0; j < (len & 7); j++)
        last |= (uint64_t)in[whole + j] << (8 * j);
    v3 ^= last;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

void wsh_random_bytes(void *p, size_t n)
{
    static atomic_uint_fast64_t fallback;
    uint8_t *d = p;
    while (n > 0) {
        ssize_t r = getrandom(d, n, 0);
        if (r > 0) {
            d += r;
            n -= (size_t)r;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else {
            break;
        }
    }
    if (n == 0)
        return;
    /* No getrandom (old kernel, seccomp): splitmix64 over the clock and a
     * counter. Epochs only need to differ, hash keys only to be unguessable
     * in practice. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t s = atomic_fetch_add(&fallback, 0x9e3779b97f4a7c15ULL) ^
                 ((uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec);
    while (n > 0) {
        uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        z ^= z >> 31;
        size_t k = n < 8 ? n : 8;
        memcpy(d, &z, k);
        d += k;
        n -= k;
    }
}
