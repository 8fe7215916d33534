/* copyalign: how fast `rep movsb` copies 16,388 bytes (a 16 KiB echo
 * reply) for each source and destination offset within a cache line. The
 * kernel's copy_to_user/copy_from_user use it, so this decides where
 * wshub puts the bytes it reads and sends (worker.c plain_read).
 *
 *   build-bench/bench/copyalign          # 64 x 64 map, '.' fast, 'X' slow
 *   build-bench/bench/copyalign --table  # ns per copy for a few offsets
 *
 * A copy counts as slow when it takes more than 1.4 times the fastest
 * offset pair. x86-64 only. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LEN   16388u
#define SLOTS 8u /* destinations rotate over 8 x 32 KiB, as page fragments */
#define REPS  3

static inline void movsb(void *d, const void *s, size_t n)
{
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
}

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/* Best of REPS rounds of `iters` copies, in ns per copy. */
static double copy_ns(uint8_t *dst, const uint8_t *src, unsigned so, unsigned dof, int iters)
{
    double best = 1e18;
    for (int r = 0; r < REPS; r++) {
        double t0 = now_ns();
        for (int i = 0; i < iters; i++)
            movsb(dst + dof + (size_t)(i % SLOTS) * 32768u, src + so + (size_t)(i & 1) * 32768u,
                  LEN);
        double t = (now_ns() - t0) / iters;
        if (t < best)
            best = t;
    }
    return best;
}

int main(int argc, char **argv)
{
    int table = argc > 1 && strcmp(argv[1], "--table") == 0;
    uint8_t *src = aligned_alloc(4096, 1u << 17);
    uint8_t *dst = aligned_alloc(4096, (size_t)SLOTS * 32768u + 4096u);
    if (src == NULL || dst == NULL)
        return 1;
    memset(src, 1, 1u << 17);
    memset(dst, 2, (size_t)SLOTS * 32768u + 4096u);
    if (table) {
        static const unsigned offs[] = { 0, 4, 8, 32, 56, 60, 63 };
        printf("ns per %u-byte copy; rows: source offset, columns: destination offset\n", LEN);
        printf("src\\dst");
        for (size_t b = 0; b < sizeof(offs) / sizeof(offs[0]); b++)
            printf(" %6u", offs[b]);
        printf("\n");
        for (size_t a = 0; a < sizeof(offs) / sizeof(offs[0]); a++) {
            printf("%7u", offs[a]);
            for (size_t b = 0; b < sizeof(offs) / sizeof(offs[0]); b++)
                printf(" %6.0f", copy_ns(dst, src, offs[a], offs[b], 20000));
            printf("\n");
        }
        return 0;
    }
    double fast = copy_ns(dst, src, 0, 0, 5000);
    printf("16,388-byte rep movsb: '.' within 1.4x of %.0f ns, 'X' slower\n", fast);
    printf("rows: source offset in its cache line; columns: destination offset 0..63\n");
    for (unsigned a = 0; a < 64; a++) {
        int nfast = 0;
        printf("src+%2u ", a);
        for (unsigned b = 0; b < 64; b++) {
            int ok = copy_ns(dst, src, a, b, 1000) < 1.4 * fast;
            nfast += ok;
            putchar(ok ? '.' : 'X');
        }
        printf(" %2d fast\n", nfast);
    }
    return 0;
}
