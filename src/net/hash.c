/* Keyed hashing and random keys (wshub/hash.h). */
#include "wshub/hash.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
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

/* ---- the table ------------------------------------------------------------ */

/* Moves every record of t into nb fresh chains; false when they cannot
 * be allocated (t unchanged). */
static bool rehash(struct wsh_htab *t, size_t nb)
{
    struct wsh_hnode **b = calloc(nb, sizeof(*b));
    if (b == NULL)
        return false;
    for (size_t i = 0; i < t->nb; i++) {
        struct wsh_hnode *n = t->b[i], *next;
        for (; n != NULL; n = next) {
            next = n->next;
            n->next = b[n->hash & (nb - 1)];
            b[n->hash & (nb - 1)] = n;
        }
    }
    free(t->b);
    t->b = b;
    t->nb = nb;
    return true;
}

bool wsh_htab_reserve(struct wsh_htab *t, size_t first)
{
    if (t->nb == 0) {
        t->b = calloc(first, sizeof(*t->b));
        if (t->b == NULL)
            return false;
        t->nb = first;
        return true;
    }
    if (t->n >= t->nb)
        (void)rehash(t, t->nb * 2);
    return true;
}

void wsh_htab_shrink(struct wsh_htab *t, size_t first)
{
    if (t->nb <= first || t->n >= t->nb / 4)
        return;
    size_t nb = t->nb;
    while (nb / 2 >= first && t->n < nb / 4)
        nb /= 2;
    (void)rehash(t, nb);
}

void wsh_htab_insert(struct wsh_htab *t, struct wsh_hnode *n)
{
    struct wsh_hnode **head = &t->b[n->hash & (t->nb - 1)];
    n->next = *head;
    *head = n;
    t->n++;
}

void wsh_htab_remove(struct wsh_htab *t, struct wsh_hnode *n)
{
    struct wsh_hnode **pp = &t->b[n->hash & (t->nb - 1)];
    while (*pp != n)
        pp = &(*pp)->next;
    *pp = n->next;
    t->n--;
}

size_t wsh_htab_filter(struct wsh_htab *t, bool (*fn)(struct wsh_hnode *n, void *arg), void *arg)
{
    size_t gone = 0;
    for (size_t i = 0; i < t->nb; i++) {
        struct wsh_hnode **pp = &t->b[i];
        while (*pp != NULL) {
            struct wsh_hnode *n = *pp, *next = n->next;
            if (fn(n, arg)) {
                *pp = next;
                gone++;
            } else {
                pp = &n->next;
            }
        }
    }
    t->n -= gone;
    return gone;
}

void wsh_htab_free(struct wsh_htab *t)
{
    free(t->b);
    *t = (struct wsh_htab){ 0 };
}
