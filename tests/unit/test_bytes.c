/* Unit tests for the byte-run kernels (src/ws/bytes.c): the masking XOR
 * and the ASCII scan against byte-by-byte references, at every length up
 * to past three vector blocks, every key phase, unaligned starts, in place
 * and copying, with one high byte at every position. CMake builds this
 * file twice: against the library (SSE2 for short runs, AVX2 and AVX-512
 * bodies for long ones where the CPU has them) and with bytes.c compiled
 * in with WSH_BYTES_NO_SIMD (portable bodies). */
/* cmocka.h needs the standard headers before it. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
/* clang-format on */

#include "bytes.h"

#define MAXLEN 420

static const uint8_t key[4] = { 0x37, 0xfa, 0x21, 0x3d };

static uint64_t key8(size_t phase)
{
    uint8_t k[8];
    for (size_t i = 0; i < 8; i++)
        k[i] = key[(phase + i) & 3u];
    uint64_t v;
    memcpy(&v, k, 8);
    return v;
}

/* The library builds the same key word as the oracle at every offset. */
static void test_bytes_key8_matches_oracle(void **state)
{
    (void)state;
    for (size_t off = 0; off < 12; off++)
        assert_true(wsh__bytes_key8(key, off) == key8(off % 4));
}

static void fill(uint8_t *p, size_t n, size_t seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)((i * 31 + seed) & 0x7f); /* ASCII */
}

static void test_bytes_xor_matches_bytewise(void **state)
{
    (void)state;
    static uint8_t src[MAXLEN + 8], dst[MAXLEN + 8], want[MAXLEN + 8];
    for (size_t len = 0; len <= MAXLEN; len++) {
        for (size_t phase = 0; phase < 4; phase++) {
            size_t al = (len + phase) % 8; /* unaligned starts */
            fill(src + al, len, len);
            for (size_t i = 0; i < len; i++)
                want[i] = (uint8_t)(src[al + i] ^ key[(i + phase) & 3u]);
            bool all_ascii = true;
            for (size_t i = 0; i < len; i++)
                all_ascii = all_ascii && want[i] < 0x80;

            /* Copying. */
            memset(dst, 0xee, sizeof dst);
            bool a = wsh__bytes_xor(dst + 1, src + al, len, key8(phase));
            assert_memory_equal(dst + 1, want, len);
            assert_int_equal(dst[0], 0xee);       /* nothing before */
            assert_int_equal(dst[len + 1], 0xee); /* nothing after */
            assert_int_equal(a, all_ascii);

            /* In place, and back. */
            bool b = wsh__bytes_xor(src + al, src + al, len, key8(phase));
            assert_memory_equal(src + al, want, len);
            assert_int_equal(b, all_ascii);
            wsh__bytes_xor(src + al, src + al, len, key8(phase));
            for (size_t i = 0; i < len; i++)
                assert_int_equal(src[al + i], (uint8_t)((i * 31 + len) & 0x7f));
        }
    }
}

/* Every start offset within a cache line, for dst and src separately: the
 * vector body aligns its stores and rotates the key past the head. */
static void test_bytes_xor_every_alignment(void **state)
{
    (void)state;
    static _Alignas(64) uint8_t src[640], dst[640];
    static const size_t lens[] = { 64, 65, 100, 127, 128, 300, 511 };
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        size_t len = lens[li];
        for (size_t so = 0; so < 64; so++) {
            for (size_t dof = 0; dof < 64; dof += (so % 7) + 1) {
                for (size_t phase = 0; phase < 4; phase += 3) {
                    fill(src + so, len, so + li);
                    memset(dst, 0xee, sizeof dst);
                    bool a = wsh__bytes_xor(dst + dof, src + so, len, key8(phase));
                    for (size_t i = 0; i < len; i++)
                        assert_int_equal(dst[dof + i],
                                         (uint8_t)(src[so + i] ^ key[(i + phase) & 3u]));
                    if (dof > 0)
                        assert_int_equal(dst[dof - 1], 0xee);
                    assert_int_equal(dst[dof + len], 0xee);
                    bool want = true;
                    for (size_t i = 0; i < len; i++)
                        want = want && dst[dof + i] < 0x80;
                    assert_int_equal(a, want);
                    /* In place at the same offset, and back. */
                    wsh__bytes_xor(src + so, src + so, len, key8(phase));
                    assert_memory_equal(src + so, dst + dof, len);
                }
            }
        }
    }
}

/* The ASCII verdict of the XOR sees one high output byte anywhere. */
static void test_bytes_xor_reports_any_high_byte(void **state)
{
    (void)state;
    static uint8_t plain[MAXLEN], masked[MAXLEN], out[MAXLEN];
    for (size_t len = 1; len <= MAXLEN; len += (len < 140 ? 1 : 37)) {
        fill(plain, len, 3);
        for (size_t pos = 0; pos < len; pos++) {
            plain[pos] = 0xc3;
            for (size_t i = 0; i < len; i++)
                masked[i] = (uint8_t)(plain[i] ^ key[i & 3u]);
            assert_false(wsh__bytes_xor(out, masked, len, key8(0)));
            assert_memory_equal(out, plain, len);
            plain[pos] = (uint8_t)'a';
        }
        for (size_t i = 0; i < len; i++)
            masked[i] = (uint8_t)(plain[i] ^ key[i & 3u]);
        assert_true(wsh__bytes_xor(out, masked, len, key8(0)));
    }
}

static void test_bytes_ascii_prefix_never_passes_a_high_byte(void **state)
{
    (void)state;
    static uint8_t buf[MAXLEN + 40];
    for (size_t len = 0; len <= MAXLEN; len++) {
        for (size_t al = 0; al < 40; al += 3) {
            uint8_t *p = buf + al;
            fill(p, len, len);
            /* All ASCII: the prefix may stop short only within the last
             * word, which the caller finishes byte by byte. */
            size_t k = wsh__bytes_ascii_prefix(p, len);
            assert_true(k <= len);
            assert_true(len - k < 8);
            for (size_t pos = 0; pos < len; pos++) {
                p[pos] = 0x80;
                k = wsh__bytes_ascii_prefix(p, len);
                assert_true(k <= pos);
                /* Vector blocks narrow down to words: the scan stops
                 * in the word that holds the byte. */
                assert_true(pos - k < 8);
                p[pos] = (uint8_t)'a';
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes_key8_matches_oracle),
        cmocka_unit_test(test_bytes_xor_matches_bytewise),
        cmocka_unit_test(test_bytes_xor_every_alignment),
        cmocka_unit_test(test_bytes_xor_reports_any_high_byte),
        cmocka_unit_test(test_bytes_ascii_prefix_never_passes_a_high_byte),
    };
    return cmocka_run_group_tests_name("bytes", tests, NULL, NULL);
}
