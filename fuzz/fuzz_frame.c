/* Frame parser (server role unless told otherwise): input = 4 config bytes
 * (flags, three chunk sizes) + stream. Fed whole and in chunks; the
 * normalised event logs must match, and the parser contract must hold. */
#include <stdlib.h>
#include <string.h>

#include "wshub/ws.h"

struct run {
    uint8_t *log;
    size_t n, msg;
};

static void put(struct run *r, const void *p, size_t n)
{
    memcpy(r->log + r->n, p, n);
    r->n += n;
}

/* Feeds in[0..n) whole or in chunks sized by cfg[1..3]; logs events. */
static void feed(const uint8_t *cfg, const uint8_t *in, size_t n, int chunked, struct run *r)
{
    struct wsh_parser p;
    struct wsh_limits lim = { cfg[0] & 4 ? 64 : 0, cfg[0] & 8 ? 3 : 0 };
    wsh_parser_init(&p, cfg[0] & 1 ? WSH_ROLE_CLIENT : WSH_ROLE_SERVER, cfg[0] & 2 ? 0x40 : 0);
    uint8_t *buf = malloc(n + 1);
    size_t have = 0, pos = 0, k = 0, off = 0, closed = 0;
    while (pos < n || have > off) {
        size_t c = chunked ? 1u + cfg[1 + k++ % 3] % 23u : n;
        memmove(buf, buf + off, have - off);
        have -= off;
        off = 0;
        c = c > n - pos ? n - pos : c;
        memcpy(buf + have, in + pos, c);
        have += c;
        pos += c;
        for (;;) {
            struct wsh_event ev;
            ssize_t got = wsh_parser_feed(&p, &lim, buf + off, have - off, &ev);
            if (got < 0) {
                if (wsh_parser_feed(&p, &lim, buf, have, &ev) != got || ev.type != WSH_EV_NONE)
                    abort();
                r->n = r->msg; /* drop the interrupted message */
                put(r, &p.close_code, 2);
                free(buf);
                return;
            }
            if ((size_t)got > have - off || (closed && ev.type != WSH_EV_NONE) ||
                (got == 0 && ev.type != WSH_EV_NONE))
                abort();
            off += (size_t)got;
            uint8_t tag[4] = { (uint8_t)ev.type, (uint8_t)(ev.opcode | ev.rsv1 << 7),
                               (uint8_t)ev.close_code, (uint8_t)(ev.close_code >> 8) };
            if (ev.type != WSH_EV_NONE && (ev.type != WSH_EV_DATA || ev.first))
                put(r, tag, 4);
            if (ev.type != WSH_EV_NONE)
                put(r, ev.data, ev.len);
            if (!wsh_parser_in_message(&p))
                r->msg = r->n;
            closed |= ev.type == WSH_EV_CLOSE;
            if (got == 0 && ev.type == WSH_EV_NONE)
                break;
        }
        if (pos == n)
            break;
    }
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    struct run a = { malloc(3 * size + 8), 0, 0 }, b = { malloc(3 * size + 8), 0, 0 };
    feed(data, data + 4, size - 4, 0, &a);
    feed(data, data + 4, size - 4, 1, &b);
    if (a.n != b.n || memcmp(a.log, b.log, a.n) != 0)
        abort();
    free(a.log);
    free(b.log);
    return 0;
}
