/* UTF-8 validator: input = 1 chunk-size byte + text. Chunked feeding must
 * agree with wsh_utf8_valid(), and must fail in the chunk holding the
 * first bad byte found by byte-at-a-time feeding. */
#include <stdlib.h>

#include "wshub/ws.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t cs = data[0];
    data++;
    size--;

    struct wsh_utf8 u;
    wsh_utf8_init(&u);
    size_t bad = size; /* index of the first byte that fails */
    for (size_t i = 0; i < size; i++) {
        if (wsh_utf8_feed(&u, data + i, 1) != WSH_OK) {
            bad = i;
            break;
        }
    }
    bool valid = bad == size && wsh_utf8_complete(&u);
    if (valid != wsh_utf8_valid(data, size))
        abort();

    wsh_utf8_init(&u);
    size_t pos = 0;
    while (pos < size) {
        size_t n = 1u + (cs = (uint8_t)(cs * 73u + 29u)) % 40u;
        n = n > size - pos ? size - pos : n;
        int rc = wsh_utf8_feed(&u, data + pos, n);
        bool holds_bad = bad >= pos && bad < pos + n;
        if ((rc != WSH_OK) != holds_bad)
            abort();
        if (rc != WSH_OK) {
            /* Failure is sticky. */
            if (wsh_utf8_feed(&u, (const uint8_t *)"a", 1) != WSH_EUTF8 || wsh_utf8_complete(&u))
                abort();
            break;
        }
        pos += n;
    }
    if (bad == size && wsh_utf8_complete(&u) != valid)
        abort();
    return 0;
}
