/* Close codes and close payloads, RFC 6455 5.5.1 and 7.4 (with the IANA
 * registry for 1012-1014). */
#include <string.h>

#include "wshub/ws.h"

bool wsh_close_code_valid(unsigned code)
{
    if (code >= 3000 && code <= 4999)
        return true; /* 7.4.2: registered (3xxx) and private (4xxx) use */
    if (code < 1000 || code > 1014)
        return false;
    /* 1004 is reserved; 1005, 1006 and 1015 MUST NOT be sent (7.4.1). */
    return code != 1004 && code != 1005 && code != 1006;
}

size_t wsh_close_payload(uint8_t *out, unsigned code, const char *reason, size_t reason_len)
{
    if (code == 0)
        return 0;
    out[0] = (uint8_t)(code >> 8);
    out[1] = (uint8_t)code;
    if (reason == NULL)
        reason_len = 0;
    if (reason_len > WSH_CLOSE_REASON_MAX) {
        /* Cut before the character that straddles the limit: back off over
         * continuation bytes (10xxxxxx). */
        reason_len = WSH_CLOSE_REASON_MAX;
        while (reason_len > 0 && ((uint8_t)reason[reason_len] & 0xC0u) == 0x80u)
            reason_len--;
    }
    if (reason_len != 0)
        memcpy(out + 2, reason, reason_len);
    return 2 + reason_len;
}
