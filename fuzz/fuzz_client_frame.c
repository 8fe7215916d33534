/* Frame parser in the client role (unmasked frames from a server). Input =
 * 2 config bytes + stream. Checks the feed contract in chunks, and that a
 * whole single-frame message or control frame re-encodes to its bytes. */
#include <stdlib.h>
#include <string.h>

#include "wshub/ws.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    struct wsh_limits lim = { data[0] & 1 ? 200 : 0, data[0] & 2 ? 2 : 0 };
    uint8_t rsv = data[0] & 4 ? 0x40 : 0, cs = data[1];
    data += 2;
    size -= 2;
    uint8_t *buf = malloc(size + 1), *enc = malloc(size + 16);
    for (int chunked = 0; chunked < 2; chunked++) {
        struct wsh_parser p;
        wsh_parser_init(&p, WSH_ROLE_CLIENT, rsv);
        memcpy(buf, data, size);
        size_t off = 0, avail = chunked ? 0 : size;
        int err = 0, closed = 0;
        while (!err) {
            struct wsh_event ev;
            ssize_t got = wsh_parser_feed(&p, &lim, buf + off, avail - off, &ev);
            if (got < 0) {
                err = (int)got;
                if (wsh_parser_feed(&p, &lim, buf, size, &ev) != got || ev.type != WSH_EV_NONE)
                    abort();
                break;
            }
            if ((size_t)got > avail - off || (closed && ev.type != WSH_EV_NONE) ||
                (got == 0 && ev.type != WSH_EV_NONE))
                abort();
            closed |= ev.type == WSH_EV_CLOSE;
            /* Client role frames are unmasked and minimally encoded, so a
             * frame delivered whole re-encodes to exactly its bytes. */
            bool whole = ev.type != WSH_EV_NONE && ev.type != WSH_EV_CLOSE && ev.first && ev.last &&
                         (size_t)got == wsh_frame_header_size(ev.len, false) + ev.len;
            if (whole) {
                unsigned op = ev.type == WSH_EV_DATA   ? ev.opcode
                              : ev.type == WSH_EV_PING ? WSH_OP_PING
                                                       : WSH_OP_PONG;
                size_t w = wsh_message_write(enc, op, ev.rsv1, ev.data, ev.len, 0, NULL, NULL);
                if (w != (size_t)got || memcmp(enc, buf + off, w) != 0)
                    abort();
            }
            off += (size_t)got;
            if (got == 0 && ev.type == WSH_EV_NONE) {
                if (avail == size)
                    break;
                avail += 1u + (cs = (uint8_t)(cs * 37u + 11u)) % 29u;
                avail = avail > size ? size : avail;
            }
        }
    }
    free(buf);
    free(enc);
    return 0;
}
