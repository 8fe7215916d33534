/* Byte-run kernels: see bytes.h. On x86-64, runs of 16 to VEC_MIN bytes
 * take SSE2, which every x86-64 has, and longer ones AVX2 or, from
 * VEC512_MIN bytes, AVX-512 where the CPU has them. Those bodies are
 * compiled with a target attribute, not -mavx2, so the library still runs
 * on any x86-64; __builtin_cpu_supports
 * reads a flag word that libgcc fills in before main, so checking it per
 * call costs a load and a branch. */
#include "bytes.h"

#include <stdint.h>
#include <string.h>

#define HIGH_BITS 0x8080808080808080ull

/* WSH_BYTES_NO_SIMD builds the portable bodies alone (the unit test
 * builds this file both ways). Below VEC_MIN the AVX2 body has nothing
 * to gain over 16-byte blocks. */
#define VEC_MIN 64

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(WSH_BYTES_NO_SIMD)
#define HAVE_X86_SIMD 1
#include <immintrin.h>
#endif

/* The key pattern for the bytes h positions further on: the byte for
 * position i sits at memory offset i of the word. */
static uint64_t key_skip(uint64_t k, size_t h)
{
    unsigned r = (unsigned)(h & 7u) * 8u;
    if (r == 0)
        return k;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return (k << r) | (k >> (64u - r));
#else
    return (k >> r) | (k << (64u - r));
#endif
}

uint64_t wsh__bytes_key8(const uint8_t key[4], size_t offset)
{
    uint8_t k8[8];
    memcpy(k8, key, 4);
    memcpy(k8 + 4, key, 4);
    uint64_t k;
    memcpy(&k, k8, 8);
    /* The pattern repeats every 4 bytes, so skipping offset bytes is
     * skipping offset % 4. */
    return key_skip(k, offset);
}

/* Up to a few dozen bytes, the size of most chat and ticker messages:
 * whole words, and the last eight bytes as one word loaded before
 * anything is stored (dst may be src), so the ragged end costs one load
 * and one store instead of a byte loop. Where that word overlaps the one
 * before it, it stores the same bytes again. */
static bool xor_short(uint8_t *dst, const uint8_t *src, size_t n, uint64_t k)
{
    uint64_t acc = 0;
    if (n < 8) {
        uint8_t k8[8];
        memcpy(k8, &k, 8);
        for (size_t i = 0; i < n; i++) {
            uint8_t b = (uint8_t)(src[i] ^ k8[i]);
            acc |= b;
            dst[i] = b;
        }
        return (acc & HIGH_BITS) == 0;
    }
    uint64_t last;
    memcpy(&last, src + n - 8, 8);
    for (size_t i = 0; i + 8 < n; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        w ^= k;
        acc |= w;
        memcpy(dst + i, &w, 8);
    }
    last ^= key_skip(k, n - 8);
    acc |= last;
    memcpy(dst + n - 8, &last, 8);
    return (acc & HIGH_BITS) == 0;
}

static bool xor_words(uint8_t *dst, const uint8_t *src, size_t n, uint64_t k)
{
    uint64_t acc = 0;
    size_t i = 0;
    /* Four independent words per step; memcpy keeps unaligned access
     * defined and compiles to plain loads and stores. */
    for (; n - i >= 32; i += 32) {
        uint64_t w[4];
        memcpy(w, src + i, 32);
        w[0] ^= k;
        w[1] ^= k;
        w[2] ^= k;
        w[3] ^= k;
        acc |= w[0] | w[1] | w[2] | w[3];
        memcpy(dst + i, w, 32);
    }
    /* i is a multiple of 32, so the key phase is that of src[0]. */
    return xor_short(dst + i, src + i, n - i, k) && (acc & HIGH_BITS) == 0;
}

static size_t ascii_words(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (n - i >= 16) {
        uint64_t a, b;
        memcpy(&a, p + i, 8);
        memcpy(&b, p + i + 8, 8);
        if (((a | b) & HIGH_BITS) != 0)
            break;
        i += 16;
    }
    while (n - i >= 8) {
        uint64_t a;
        memcpy(&a, p + i, 8);
        if ((a & HIGH_BITS) != 0)
            break;
        i += 8;
    }
    return i;
}

#ifdef HAVE_X86_SIMD
/* 16 to VEC_MIN bytes with SSE2, which every x86-64 has: the same shape
 * as xor_short with 16-byte blocks. Short payloads are the common case of
 * chat and tickers, and there the word loop's bookkeeping was most of the
 * cost: about 50 instructions for 32 bytes, and the server's count per
 * 32-byte echo fell by 26 with this body (callgrind). */
static bool xor_sse2(uint8_t *dst, const uint8_t *src, size_t n, uint64_t k)
{
    const __m128i key = _mm_set1_epi64x((long long)k);
    __m128i last = _mm_loadu_si128((const __m128i *)(const void *)(src + n - 16));
    __m128i acc = _mm_setzero_si128();
    for (size_t i = 0; i + 16 < n; i += 16) {
        __m128i a = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(const void *)(src + i)), key);
        _mm_storeu_si128((__m128i *)(void *)(dst + i), a);
        acc = _mm_or_si128(acc, a);
    }
    last = _mm_xor_si128(last, _mm_set1_epi64x((long long)key_skip(k, n - 16)));
    _mm_storeu_si128((__m128i *)(void *)(dst + n - 16), last);
    acc = _mm_or_si128(acc, last);
    return _mm_movemask_epi8(acc) == 0;
}

/* 16 to VEC_MIN bytes: whole 16-byte blocks, then the last 16 bytes;
 * a block with a high byte is narrowed down to its word. */
static size_t ascii_sse2(const uint8_t *p, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        if (_mm_movemask_epi8(_mm_loadu_si128((const __m128i *)(const void *)(p + i))) != 0)
            return i + ascii_words(p + i, n - i);
    if (i == n || _mm_movemask_epi8(_mm_loadu_si128((const __m128i *)(const void *)(p + n - 16))) == 0)
        return n;
    return i + ascii_words(p + i, n - i);
}

/* Runs under VEC_MIN bytes, and the heads and tails of the vector
 * bodies. */
static bool xor_small(uint8_t *dst, const uint8_t *src, size_t n, uint64_t k)
{
    return n >= 16 ? xor_sse2(dst, src, n, k) : xor_short(dst, src, n, k);
}

static size_t ascii_small(const uint8_t *p, size_t n)
{
    return n >= 16 ? ascii_sse2(p, n) : ascii_words(p, n);
}

#define LOADU(p)    _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define LOAD(p)     _mm256_load_si256((const __m256i *)(const void *)(p))
#define STORE(p, v) _mm256_store_si256((__m256i *)(void *)(p), (v))

/* Vector accesses that straddle cache lines cost about twice as much, and
 * a payload in the receive buffer starts wherever its frame header ends
 * (8 bytes in for a 16 KiB client frame): the head up to dst's next
 * 32-byte boundary goes through the word loop, the rest is stored
 * aligned. */
__attribute__((target("avx2"))) static bool xor_avx2(uint8_t *dst, const uint8_t *src, size_t n,
                                                     uint64_t k)
{
    size_t head = (32u - ((uintptr_t)dst & 31u)) & 31u;
    bool head_ascii = xor_small(dst, src, head, k);
    dst += head;
    src += head;
    n -= head;
    k = key_skip(k, head);
    const __m256i key = _mm256_set1_epi64x((long long)k);
    __m256i acc = _mm256_setzero_si256();
    size_t i = 0;
    for (; n - i >= 128; i += 128) {
        __m256i a = _mm256_xor_si256(LOADU(src + i), key);
        __m256i b = _mm256_xor_si256(LOADU(src + i + 32), key);
        __m256i c = _mm256_xor_si256(LOADU(src + i + 64), key);
        __m256i d = _mm256_xor_si256(LOADU(src + i + 96), key);
        STORE(dst + i, a);
        STORE(dst + i + 32, b);
        STORE(dst + i + 64, c);
        STORE(dst + i + 96, d);
        acc = _mm256_or_si256(acc, _mm256_or_si256(_mm256_or_si256(a, b), _mm256_or_si256(c, d)));
    }
    for (; n - i >= 32; i += 32) {
        __m256i a = _mm256_xor_si256(LOADU(src + i), key);
        STORE(dst + i, a);
        acc = _mm256_or_si256(acc, a);
    }
    bool ascii = head_ascii && _mm256_movemask_epi8(acc) == 0;
    /* i is a multiple of 32, so the tail's phase is that of k. */
    return xor_small(dst + i, src + i, n - i, k) && ascii;
}

__attribute__((target("avx2"))) static size_t ascii_avx2(const uint8_t *p, size_t n)
{
    size_t i = 0, head = (32u - ((uintptr_t)p & 31u)) & 31u;
    for (; i < head; i++)
        if (p[i] & 0x80u)
            return i;
    for (; n - i >= 128; i += 128) {
        __m256i o = _mm256_or_si256(_mm256_or_si256(LOAD(p + i), LOAD(p + i + 32)),
                                    _mm256_or_si256(LOAD(p + i + 64), LOAD(p + i + 96)));
        if (_mm256_movemask_epi8(o) != 0)
            break;
    }
    for (; n - i >= 32; i += 32)
        if (_mm256_movemask_epi8(LOAD(p + i)) != 0)
            break;
    return i + ascii_words(p + i, n - i);
}

/* From VEC512_MIN bytes on CPUs with AVX-512 (Ice Lake, Zen 4 and later):
 * half the instructions of the AVX2 body for a 16 KiB message, stores
 * aligned to the 64-byte line as above. */
#define VEC512_MIN 256

__attribute__((target("avx512f"))) static bool xor_avx512(uint8_t *dst, const uint8_t *src,
                                                        size_t n, uint64_t k)
{
    size_t head = (64u - ((uintptr_t)dst & 63u)) & 63u;
    bool head_ascii = xor_small(dst, src, head, k);
    dst += head;
    src += head;
    n -= head;
    k = key_skip(k, head);
    const __m512i key = _mm512_set1_epi64((long long)k);
    __m512i acc = _mm512_setzero_si512();
    size_t i = 0;
    for (; n - i >= 256; i += 256) {
        __m512i a = _mm512_xor_si512(_mm512_loadu_si512(src + i), key);
        __m512i b = _mm512_xor_si512(_mm512_loadu_si512(src + i + 64), key);
        __m512i c = _mm512_xor_si512(_mm512_loadu_si512(src + i + 128), key);
        __m512i d = _mm512_xor_si512(_mm512_loadu_si512(src + i + 192), key);
        _mm512_store_si512(dst + i, a);
        _mm512_store_si512(dst + i + 64, b);
        _mm512_store_si512(dst + i + 128, c);
        _mm512_store_si512(dst + i + 192, d);
        acc = _mm512_or_si512(acc, _mm512_or_si512(_mm512_or_si512(a, b), _mm512_or_si512(c, d)));
    }
    for (; n - i >= 64; i += 64) {
        __m512i a = _mm512_xor_si512(_mm512_loadu_si512(src + i), key);
        _mm512_store_si512(dst + i, a);
        acc = _mm512_or_si512(acc, a);
    }
    bool ascii =
        head_ascii && _mm512_test_epi64_mask(acc, _mm512_set1_epi64((long long)HIGH_BITS)) == 0;
    /* i is a multiple of 64, so the tail's phase is that of k. */
    return xor_small(dst + i, src + i, n - i, k) && ascii;
}

/* Whole clean 256-byte blocks, loaded aligned (a payload starts wherever
 * its header ends, and a load across two cache lines costs two), then the
 * AVX2 scan narrows down. */
__attribute__((target("avx512f,avx2"))) static size_t ascii_avx512(const uint8_t *p, size_t n)
{
    const __m512i high = _mm512_set1_epi64((long long)HIGH_BITS);
    size_t i = 0, head = (64u - ((uintptr_t)p & 63u)) & 63u;
    if (head >= 16) {
        i = ascii_sse2(p, head); /* exact: head when all of it is ASCII */
        if (i < head)
            return i;
    } else {
        for (; i < head; i++)
            if (p[i] & 0x80u)
                return i;
    }
    for (; n - i >= 256; i += 256) {
        __m512i o = _mm512_or_si512(
            _mm512_or_si512(_mm512_load_si512(p + i), _mm512_load_si512(p + i + 64)),
            _mm512_or_si512(_mm512_load_si512(p + i + 128), _mm512_load_si512(p + i + 192)));
        if (_mm512_test_epi64_mask(o, high) != 0)
            break;
    }
    return i + (n - i >= VEC_MIN ? ascii_avx2(p + i, n - i) : ascii_small(p + i, n - i));
}
#endif

bool wsh__bytes_xor(uint8_t *dst, const uint8_t *src, size_t n, uint64_t key8)
{
#ifdef HAVE_X86_SIMD
    if (n < VEC_MIN)
        return xor_small(dst, src, n, key8);
    if (n >= VEC512_MIN && __builtin_cpu_supports("avx512f"))
        return xor_avx512(dst, src, n, key8);
    if (__builtin_cpu_supports("avx2"))
        return xor_avx2(dst, src, n, key8);
#endif
    return xor_words(dst, src, n, key8);
}

size_t wsh__bytes_ascii_prefix(const uint8_t *p, size_t n)
{
#ifdef HAVE_X86_SIMD
    if (n < VEC_MIN)
        return ascii_small(p, n);
    if (n >= VEC512_MIN && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2"))
        return ascii_avx512(p, n);
    if (__builtin_cpu_supports("avx2"))
        return ascii_avx2(p, n);
#endif
    return ascii_words(p, n);
}
