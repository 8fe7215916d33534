/* Unit tests for the incremental UTF-8 validator (src/ws/utf8.c): every
 * class of RFC 3629 input, exhaustively against a reference decoder for
 * short sequences, split at every offset, and failing at the first bad
 * byte. */
/* cmocka.h needs the standard headers before it. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
/* clang-format on */

#include "wshub/ws.h"

/* Straightforward decoder used as the oracle. */
static bool ref_valid(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        uint32_t cp;
        size_t len;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2;
            cp = c & 0x1Fu;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
            cp = c & 0x0Fu;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4;
            cp = c & 0x07u;
        } else {
            return false;
        }
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (p[i + k] & 0x3Fu);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000))
            return false;
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

/* Can p[0..n) be completed into valid UTF-8 with at most 3 more bytes? */
static bool ref_prefix_ok(const uint8_t *p, size_t n)
{
    static const uint8_t tails[] = { 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF };
    uint8_t buf[8];
    memcpy(buf, p, n);
    if (ref_valid(buf, n))
        return true;
    for (size_t a = 0; a < sizeof(tails); a++) {
        buf[n] = tails[a];
        if (ref_valid(buf, n + 1))
            return true;
        for (size_t b = 0; b < sizeof(tails); b++) {
            buf[n + 1] = tails[b];
            if (ref_valid(buf, n + 2))
                return true;
            for (size_t c = 0; c < sizeof(tails); c++) {
                buf[n + 2] = tails[c];
                if (ref_valid(buf, n + 3))
                    return true;
            }
        }
    }
    return false;
}

/* Index of the byte at which byte-by-byte feeding fails, or n. */
static size_t fail_index(const uint8_t *p, size_t n)
{
    struct wsh_utf8 u;
    wsh_utf8_init(&u);
    for (size_t i = 0; i < n; i++)
        if (wsh_utf8_feed(&u, p + i, 1) != WSH_OK)
            return i;
    return n;
}

/* Checks one vector whole, byte by byte and split at every offset. */
static void check_vec(const char *s, size_t n, bool valid)
{
    const uint8_t *p = (const uint8_t *)s;
    assert_int_equal(wsh_utf8_valid(p, n), valid);
    assert_int_equal(ref_valid(p, n), valid);
    for (size_t cut = 0; cut <= n; cut++) {
        struct wsh_utf8 u;
        wsh_utf8_init(&u);
        int r1 = wsh_utf8_feed(&u, p, cut);
        int r2 = wsh_utf8_feed(&u, p + cut, n - cut);
        bool ok = r1 == WSH_OK && r2 == WSH_OK && wsh_utf8_complete(&u);
        assert_int_equal(ok, valid);
    }
    size_t fi = fail_index(p, n);
    if (valid)
        assert_int_equal(fi, n);
}

#define VEC(s, v) check_vec(s, sizeof(s) - 1, v)

static void test_utf8_valid_classes(void **state)
{
    (void)state;
    VEC("", true);
    VEC("hello, world", true);
    VEC("\x7f", true);
    VEC("\xc2\x80", true);                                     /* U+0080 */
    VEC("\xdf\xbf", true);                                     /* U+07FF */
    VEC("\xe0\xa0\x80", true);                                 /* U+0800 */
    VEC("\xed\x9f\xbf", true);                                 /* U+D7FF */
    VEC("\xee\x80\x80", true);                                 /* U+E000 */
    VEC("\xef\xbf\xbf", true);                                 /* U+FFFF */
    VEC("\xf0\x90\x80\x80", true);                             /* U+10000 */
    VEC("\xf4\x8f\xbf\xbf", true);                             /* U+10FFFF */
    VEC("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", true); /* kosme */
}

static void test_utf8_rejects_overlong(void **state)
{
    (void)state;
    VEC("\xc0\x80", false);
    VEC("\xc1\xbf", false);
    VEC("\xe0\x80\x80", false);
    VEC("\xe0\x9f\xbf", false);
    VEC("\xf0\x80\x80\x80", false);
    VEC("\xf0\x8f\xbf\xbf", false);
}

static void test_utf8_rejects_surrogates(void **state)
{
    (void)state;
    VEC("\xed\xa0\x80", false); /* U+D800 */
    VEC("\xed\xad\xbf", false);
    VEC("\xed\xb0\x80", false);
    VEC("\xed\xbf\xbf", false); /* U+DFFF */
    VEC("\xed\xa0\x80\xed\xb0\x80", false);
}

static void test_utf8_rejects_above_max(void **state)
{
    (void)state;
    VEC("\xf4\x90\x80\x80", false); /* U+110000 */
    VEC("\xf7\xbf\xbf\xbf", false);
    for (unsigned b = 0xF5; b <= 0xFF; b++) {
        uint8_t c = (uint8_t)b;
        assert_false(wsh_utf8_valid(&c, 1));
        assert_int_equal(fail_index(&c, 1), 0);
    }
}

static void test_utf8_rejects_bad_bytes(void **state)
{
    (void)state;
    VEC("\xc0", false);
    VEC("\xc1", false);
    VEC("\x80", false);
    VEC("\xbf", false);
    VEC("a\x80z", false);
    VEC("\xc2\xc2", false);
    VEC("\xe1\x80\x41", false);
}

static void test_utf8_rejects_truncated(void **state)
{
    (void)state;
    VEC("\xc2", false);
    VEC("\xe1\x80", false);
    VEC("\xf0\x90\x80", false);
    VEC("abc\xf4\x8f\xbf", false);
    /* Open but not yet failed: feed says OK, complete says no. */
    struct wsh_utf8 u;
    wsh_utf8_init(&u);
    assert_int_equal(wsh_utf8_feed(&u, (const uint8_t *)"\xf0\x90", 2), WSH_OK);
    assert_false(wsh_utf8_complete(&u));
    assert_int_equal(wsh_utf8_feed(&u, (const uint8_t *)"\x80\x80", 2), WSH_OK);
    assert_true(wsh_utf8_complete(&u));
}

static void test_utf8_fails_at_first_bad_byte(void **state)
{
    (void)state;
    assert_int_equal(fail_index((const uint8_t *)"\xf8zzzz", 5), 0);
    assert_int_equal(fail_index((const uint8_t *)"ab\xe0\x80z", 5), 3);
    assert_int_equal(fail_index((const uint8_t *)"\xed\xa0\x80", 3), 1);
    assert_int_equal(fail_index((const uint8_t *)"\xf4\x90\x80\x80", 4), 1);
    assert_int_equal(fail_index((const uint8_t *)"\xf0\x8f", 2), 1);
    assert_int_equal(fail_index((const uint8_t *)"\xc2z", 2), 1);
}

static void test_utf8_sticky_failure(void **state)
{
    (void)state;
    struct wsh_utf8 u;
    wsh_utf8_init(&u);
    assert_int_equal(wsh_utf8_feed(&u, (const uint8_t *)"\xff", 1), WSH_EUTF8);
    assert_int_equal(wsh_utf8_feed(&u, (const uint8_t *)"a", 1), WSH_EUTF8);
    assert_false(wsh_utf8_complete(&u));
    wsh_utf8_init(&u);
    assert_int_equal(wsh_utf8_feed(&u, (const uint8_t *)"a", 1), WSH_OK);
    assert_true(wsh_utf8_complete(&u));
}

/* A bad byte at every position of a long ASCII run exercises the word-wide
 * fast path and its exits. */
static void test_utf8_ascii_fast_path(void **state)
{
    (void)state;
    uint8_t buf[400]; /* past the 128- and 32-byte vector blocks */
    memset(buf, 'a', sizeof(buf));
    assert_true(wsh_utf8_valid(buf, sizeof(buf)));
    for (size_t i = 0; i < sizeof(buf); i++) {
        buf[i] = 0x80;
        assert_false(wsh_utf8_valid(buf, sizeof(buf)));
        struct wsh_utf8 u = { 0 };
        assert_int_equal(wsh_utf8_feed(&u, buf, i + 1), WSH_EUTF8);
        if (i > 0) {
            wsh_utf8_init(&u);
            assert_int_equal(wsh_utf8_feed(&u, buf, i), WSH_OK);
        }
        buf[i] = 0xc3; /* valid with the next 'a'? no: 'a' is not a continuation */
        assert_false(wsh_utf8_valid(buf, sizeof(buf)));
        buf[i] = 'a';
    }
    /* Multi-byte characters mixed into long ASCII runs. */
    for (size_t i = 0; i + 4 <= sizeof(buf); i++) {
        memcpy(buf + i, "\xf0\x9f\x98\x80", 4);
        assert_true(wsh_utf8_valid(buf, sizeof(buf)));
        memset(buf + i, 'a', 4);
    }
}

/* Every 1- and 2-byte input, and every 3-byte input, against the oracle;
 * 2-byte inputs also byte by byte against "can still be completed". */
static void test_utf8_exhaustive_short(void **state)
{
    (void)state;
    uint8_t b[4];
    for (unsigned x = 0; x < 256; x++) {
        b[0] = (uint8_t)x;
        assert_int_equal(wsh_utf8_valid(b, 1), ref_valid(b, 1));
        for (unsigned y = 0; y < 256; y++) {
            b[1] = (uint8_t)y;
            assert_int_equal(wsh_utf8_valid(b, 2), ref_valid(b, 2));
            struct wsh_utf8 u = { 0 };
            bool ok = wsh_utf8_feed(&u, b, 2) == WSH_OK;
            assert_int_equal(ok, ref_prefix_ok(b, 2));
            for (unsigned z = 0; z < 256; z++) {
                b[2] = (uint8_t)z;
                if (wsh_utf8_valid(b, 3) != ref_valid(b, 3))
                    fail_msg("3-byte mismatch %02x %02x %02x", x, y, z);
            }
        }
    }
}

static void test_utf8_exhaustive_four_byte(void **state)
{
    (void)state;
    static const uint8_t ends[] = { 0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f,
                                    0xa0, 0xbf, 0xc0, 0xc2, 0xe0, 0xf0, 0xff };
    uint8_t b[4];
    for (unsigned x = 0xE0; x < 256; x++) {
        b[0] = (uint8_t)x;
        for (unsigned y = 0; y < 256; y++) {
            b[1] = (uint8_t)y;
            for (size_t z = 0; z < sizeof(ends); z++) {
                b[2] = ends[z];
                for (size_t w = 0; w < sizeof(ends); w++) {
                    b[3] = ends[w];
                    if (wsh_utf8_valid(b, 4) != ref_valid(b, 4))
                        fail_msg("4-byte mismatch %02x %02x %02x %02x", b[0], b[1], b[2], b[3]);
                    struct wsh_utf8 u = { 0 };
                    bool ok = wsh_utf8_feed(&u, b, 3) == WSH_OK;
                    if (ok != ref_prefix_ok(b, 3))
                        fail_msg("prefix mismatch %02x %02x %02x", b[0], b[1], b[2]);
                }
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_valid_classes),
        cmocka_unit_test(test_utf8_rejects_overlong),
        cmocka_unit_test(test_utf8_rejects_surrogates),
        cmocka_unit_test(test_utf8_rejects_above_max),
        cmocka_unit_test(test_utf8_rejects_bad_bytes),
        cmocka_unit_test(test_utf8_rejects_truncated),
        cmocka_unit_test(test_utf8_fails_at_first_bad_byte),
        cmocka_unit_test(test_utf8_sticky_failure),
        cmocka_unit_test(test_utf8_ascii_fast_path),
        cmocka_unit_test(test_utf8_exhaustive_short),
        cmocka_unit_test(test_utf8_exhaustive_four_byte),
    };
    return cmocka_run_group_tests_name("utf8", tests, NULL, NULL);
}
