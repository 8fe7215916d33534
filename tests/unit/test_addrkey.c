/* Unit tests for wsh_addr_key (src/net/socket.c): the key per-address
 * limits count a client under. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <string.h>
#include <sys/socket.h>

#include "net.h"

static struct sockaddr_storage v4(const char *s)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    assert_int_equal(inet_pton(AF_INET, s, &a->sin_addr), 1);
    return ss;
}

static struct sockaddr_storage v6(const char *s)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    assert_int_equal(inet_pton(AF_INET6, s, &a->sin6_addr), 1);
    return ss;
}

static void test_addrkey_ipv4(void **state)
{
    (void)state;
    uint8_t k[16];
    struct sockaddr_storage a = v4("203.0.113.7");
    assert_int_equal(wsh_addr_key(&a, 64, k), 4);
    const uint8_t want[4] = { 203, 0, 113, 7 };
    assert_memory_equal(k, want, 4);
}

/* A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: each keeps
 * its own key, not one shared by the whole mapped /96. */
static void test_addrkey_v4_mapped(void **state)
{
    (void)state;
    uint8_t k1[16], k2[16];
    struct sockaddr_storage a = v6("::ffff:198.51.100.1");
    struct sockaddr_storage b = v6("::ffff:198.51.100.2");
    assert_int_equal(wsh_addr_key(&a, 64, k1), 4);
    assert_int_equal(wsh_addr_key(&b, 64, k2), 4);
    const uint8_t want[4] = { 198, 51, 100, 1 };
    assert_memory_equal(k1, want, 4);
    assert_memory_not_equal(k1, k2, 4);
}

/* Two addresses in one /64 share a key; another /64 does not. */
static void test_addrkey_ipv6_prefix(void **state)
{
    (void)state;
    uint8_t k1[16], k2[16], k3[16];
    struct sockaddr_storage a = v6("2001:db8:1:2:aaaa:bbbb:cccc:dddd");
    struct sockaddr_storage b = v6("2001:db8:1:2::1");
    struct sockaddr_storage c = v6("2001:db8:1:3::1");
    assert_int_equal(wsh_addr_key(&a, 64, k1), 16);
    assert_int_equal(wsh_addr_key(&b, 64, k2), 16);
    assert_int_equal(wsh_addr_key(&c, 64, k3), 16);
    assert_memory_equal(k1, k2, 16);
    assert_memory_not_equal(k1, k3, 16);
    struct sockaddr_storage want = v6("2001:db8:1:2::");
    assert_memory_equal(k1, ((struct sockaddr_in6 *)&want)->sin6_addr.s6_addr, 16);
}

/* Prefixes that do not end on a byte, and the whole address. */
static void test_addrkey_ipv6_odd_prefixes(void **state)
{
    (void)state;
    uint8_t k[16];
    struct sockaddr_storage a = v6("2001:db8:ffff:ffff::1");
    assert_int_equal(wsh_addr_key(&a, 36, k), 16);
    struct sockaddr_storage want = v6("2001:db8:f000::");
    assert_memory_equal(k, ((struct sockaddr_in6 *)&want)->sin6_addr.s6_addr, 16);
    assert_int_equal(wsh_addr_key(&a, 128, k), 16);
    assert_memory_equal(k, ((struct sockaddr_in6 *)&a)->sin6_addr.s6_addr, 16);
    assert_int_equal(wsh_addr_key(&a, 200, k), 16); /* clamped to 128 */
    assert_memory_equal(k, ((struct sockaddr_in6 *)&a)->sin6_addr.s6_addr, 16);
}

static void test_addrkey_other_family(void **state)
{
    (void)state;
    uint8_t k[16];
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    ss.ss_family = AF_UNIX;
    assert_int_equal(wsh_addr_key(&ss, 64, k), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_addrkey_ipv4),
        cmocka_unit_test(test_addrkey_v4_mapped),
        cmocka_unit_test(test_addrkey_ipv6_prefix),
        cmocka_unit_test(test_addrkey_ipv6_odd_prefixes),
        cmocka_unit_test(test_addrkey_other_family),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
