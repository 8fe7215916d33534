/* Unit tests for close codes and close payloads (src/ws/close.c), RFC 6455
 * 5.5.1 and 7.4. */
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

static void test_close_code_classes(void **state)
{
    (void)state;
    for (unsigned c = 0; c < 70000; c++) {
        bool want =
            (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) || (c >= 3000 && c <= 4999);
        if (wsh_close_code_valid(c) != want)
            fail_msg("code %u", c);
    }
    assert_false(wsh_close_code_valid(1004));
    assert_false(wsh_close_code_valid(1005));
    assert_false(wsh_close_code_valid(1006));
    assert_false(wsh_close_code_valid(1015));
    assert_false(wsh_close_code_valid(999));
    assert_false(wsh_close_code_valid(1016));
    assert_false(wsh_close_code_valid(2999));
    assert_false(wsh_close_code_valid(5000));
    assert_true(wsh_close_code_valid(WSH_CLOSE_NORMAL));
    assert_true(wsh_close_code_valid(WSH_CLOSE_TOO_BIG));
    assert_true(wsh_close_code_valid(WSH_CLOSE_TRY_LATER));
    assert_true(wsh_close_code_valid(4501));
}

static void test_close_payload_code_and_reason(void **state)
{
    (void)state;
    uint8_t out[WSH_CONTROL_MAX];
    assert_int_equal(wsh_close_payload(out, 1000, "bye", 3), 5);
    assert_memory_equal(out,
                        "\x03\xe8"
                        "bye",
                        5);
    assert_int_equal(wsh_close_payload(out, 4101, NULL, 0), 2);
    assert_memory_equal(out, "\x10\x05", 2);
    assert_int_equal(wsh_close_payload(out, 1009, "", 0), 2);
}

static void test_close_payload_empty_for_code_zero(void **state)
{
    (void)state;
    uint8_t out[WSH_CONTROL_MAX];
    assert_int_equal(wsh_close_payload(out, 0, "ignored", 7), 0);
}

static void test_close_payload_truncates_at_char_boundary(void **state)
{
    (void)state;
    uint8_t out[WSH_CONTROL_MAX];
    char reason[200];
    memset(reason, 'a', sizeof(reason));
    assert_int_equal(wsh_close_payload(out, 1000, reason, 123), 125);
    assert_int_equal(wsh_close_payload(out, 1000, reason, 200), 125);
    /* A 2-byte character straddling byte 123 is dropped whole. */
    memcpy(reason + 122, "\xc3\xa9", 2);
    assert_int_equal(wsh_close_payload(out, 1000, reason, 200), 124);
    assert_true(wsh_utf8_valid(out + 2, 122));
    /* A 4-byte character at 121..124. */
    memset(reason, 'a', sizeof(reason));
    memcpy(reason + 121, "\xf0\x9f\x98\x80", 4);
    assert_int_equal(wsh_close_payload(out, 1000, reason, 200), 2 + 121);
    /* Ending exactly at the limit keeps it. */
    memset(reason, 'a', sizeof(reason));
    memcpy(reason + 119, "\xf0\x9f\x98\x80", 4);
    assert_int_equal(wsh_close_payload(out, 1000, reason, 200), 125);
    assert_true(wsh_utf8_valid(out + 2, 123));
}

static void test_close_payload_round_trip(void **state)
{
    (void)state;
    uint8_t frame[WSH_FRAME_HDR_MAX + WSH_CONTROL_MAX];
    uint8_t pl[WSH_CONTROL_MAX];
    size_t n = wsh_close_payload(pl, 1001, "going away", 10);
    size_t w = wsh_message_write(frame, WSH_OP_CLOSE, false, pl, n, 0, NULL, NULL);
    struct wsh_parser p;
    struct wsh_event ev;
    wsh_parser_init(&p, WSH_ROLE_CLIENT, 0);
    assert_int_equal(wsh_parser_feed(&p, NULL, frame, w, &ev), (ssize_t)w);
    assert_int_equal(ev.type, WSH_EV_CLOSE);
    assert_int_equal(ev.close_code, 1001);
    assert_int_equal(ev.len, 10);
    assert_memory_equal(ev.data, "going away", 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_close_code_classes),
        cmocka_unit_test(test_close_payload_code_and_reason),
        cmocka_unit_test(test_close_payload_empty_for_code_zero),
        cmocka_unit_test(test_close_payload_truncates_at_char_boundary),
        cmocka_unit_test(test_close_payload_round_trip),
    };
    return cmocka_run_group_tests_name("close", tests, NULL, NULL);
}
