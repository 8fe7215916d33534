/* wshub-bench application protocols over WebSocket, for fanout and idle.
 *
 * --proto ws: wshub's /ws JSON protocol (docs/protocol.md). On open the
 * client sends {"type":"connect"} (anonymous, or authenticated by the
 * Authorization header of --token), waits for "connected", sends
 * {"type":"subscribe","channel":...} and is ready at "subscribed". Channel
 * messages are pushes that start {"type":"message", (the server always puts
 * type first); the bench reads t and s from the start of their payload,
 * {"t":<ns>,"s":<seq>,...}, without a JSON parser: the server forwards a
 * compact payload byte for byte.
 *
 * --proto socketio: Engine.IO v4 packets over the WebSocket transport. The
 * server opens with 0{...}; the client answers 40 (connect the default
 * namespace), the server 40{"sid":...}. A subscriber then sends
 * 42["join",room] and is ready at 42["joined",...] (bench/node/
 * socketio-server.js). Messages are 42["msg",{"t":...,"s":...}]. The server
 * pings with 2; the client answers 3. */
#define _GNU_SOURCE /* memmem */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static bool starts(const uint8_t *p, size_t n, const char *s)
{
    size_t k = strlen(s);
    return n >= k && memcmp(p, s, k) == 0;
}

static void send_text(struct bench *b, struct conn *c, const char *s, size_t n)
{
    if (!conn_send_msg(b, c, WSH_OP_TEXT, (const uint8_t *)s, n)) {
        b->app_errors++;
        conn_kill(b, c, false);
    }
}

/* idle: bench:idle-0 .. bench:idle-99; fanout: --channel. */
static const char *channel_of(const struct bench *b, const struct conn *c, char *buf, size_t cap)
{
    if (b->o.cmd == CMD_IDLE) {
        snprintf(buf, cap, "%s-%u", b->o.channel, c->idx % 100);
        return buf;
    }
    return b->o.channel;
}

static void join(struct bench *b, struct conn *c)
{
    char ch[160], msg[256];
    const char *name = channel_of(b, c, ch, sizeof ch);
    int n = b->o.proto == PROTO_WS
                ? snprintf(msg, sizeof msg, "{\"type\":\"subscribe\",\"channel\":\"%s\"}", name)
                : snprintf(msg, sizeof msg, "42[\"join\",\"%s\"]", name);
    c->phase = PH_JOIN;
    send_text(b, c, msg, (size_t)n);
}

void app_open(struct bench *b, struct conn *c)
{
    c->phase = PH_HELLO;
    c->alen = 0;
    if (b->o.proto == PROTO_WS)
        send_text(b, c, "{\"type\":\"connect\"}", 18);
    /* Socket.IO: wait for the server's open packet. */
}

bool app_assemble(struct conn *c, const uint8_t *p, size_t n, bool first, bool last,
                  const uint8_t **m, size_t *mn)
{
    if (first && last) {
        *m = p;
        *mn = n;
        return true;
    }
    if (first)
        c->alen = 0;
    if (!c->abuf && !(c->abuf = malloc(APP_HEAD))) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    size_t room = APP_HEAD - (size_t)c->alen;
    size_t k = room < n ? room : n;
    memcpy(c->abuf + c->alen, p, k);
    c->alen = (uint16_t)(c->alen + k);
    if (!last)
        return false;
    *m = c->abuf;
    *mn = c->alen;
    return true;
}

/* A non-negative decimal integer at p[0..n); advances *i past it. */
static bool read_uint(const uint8_t *p, size_t n, size_t *i, uint64_t *v)
{
    size_t j = *i;
    uint64_t x = 0;
    while (j < n && p[j] >= '0' && p[j] <= '9' && j - *i < 19)
        x = x * 10 + (uint64_t)(p[j++] - '0');
    if (j == *i)
        return false;
    *i = j;
    *v = x;
    return true;
}

/* {"t":T,"s":S at p[0..n). */
static bool parse_ts(const uint8_t *p, size_t n, int64_t *t, uint64_t *seq)
{
    static const char kt[] = "{\"t\":", ks[] = ",\"s\":";
    size_t i = sizeof kt - 1;
    uint64_t tv;
    if (!starts(p, n, kt) || !read_uint(p, n, &i, &tv) || !starts(p + i, n - i, ks))
        return false;
    i += sizeof ks - 1;
    if (!read_uint(p, n, &i, seq))
        return false;
    *t = (int64_t)tv;
    return true;
}

static void first_error(struct bench *b, const uint8_t *m, size_t n)
{
    if (b->app_errors++ == 0)
        fprintf(stderr, "wshub-bench: first error reply: %.*s\n", (int)(n < 300 ? n : 300),
                (const char *)m);
}

static enum app_ev ws_message(struct bench *b, struct conn *c, const uint8_t *m, size_t n,
                              int64_t *t, uint64_t *seq)
{
    static const char kpl[] = "\"payload\":";
    if (starts(m, n, "{\"type\":\"message\"")) {
        /* channel, offset, epoch and from come first: a short search. */
        const uint8_t *pl = memmem(m, n, kpl, sizeof kpl - 1);
        if (!pl)
            return APP_BAD;
        pl += sizeof kpl - 1;
        return parse_ts(pl, n - (size_t)(pl - m), t, seq) ? APP_DATA : APP_BAD;
    }
    if (starts(m, n, "{\"type\":\"error\"")) {
        first_error(b, m, n);
        return APP_ERROR;
    }
    if (c->phase == PH_HELLO && starts(m, n, "{\"type\":\"connected\"")) {
        join(b, c);
    } else if (c->phase == PH_JOIN && starts(m, n, "{\"type\":\"subscribed\"")) {
        c->phase = PH_READY;
        return APP_READY;
    }
    return APP_NONE;
}

static enum app_ev sio_message(struct bench *b, struct conn *c, const uint8_t *m, size_t n,
                               int64_t *t, uint64_t *seq)
{
    static const char kmsg[] = "42[\"msg\",";
    if (starts(m, n, kmsg))
        return parse_ts(m + sizeof kmsg - 1, n - (sizeof kmsg - 1), t, seq) ? APP_DATA : APP_BAD;
    if (n == 1 && m[0] == '2') { /* Engine.IO ping */
        send_text(b, c, "3", 1);
        return APP_NONE;
    }
    if (n > 0 && m[0] == '0' && c->phase == PH_HELLO) { /* open */
        send_text(b, c, "40", 2);
    } else if (starts(m, n, "40") && c->phase == PH_HELLO) { /* namespace connected */
        if (c->role_pub) {
            c->phase = PH_READY;
            return APP_READY;
        }
        join(b, c);
    } else if (starts(m, n, "42[\"joined\"") && c->phase == PH_JOIN) {
        c->phase = PH_READY;
        return APP_READY;
    } else if (starts(m, n, "44") || (n > 0 && m[0] == '1')) { /* connect error, close */
        first_error(b, m, n);
        return APP_ERROR;
    }
    return APP_NONE;
}

enum app_ev app_message(struct bench *b, struct conn *c, const uint8_t *m, size_t n, int64_t *t,
                        uint64_t *seq)
{
    enum app_ev ev =
        b->o.proto == PROTO_WS ? ws_message(b, c, m, n, t, seq) : sio_message(b, c, m, n, t, seq);
    if (ev == APP_BAD)
        b->app_bad++;
    return ev;
}

size_t app_publish_cap(const struct bench *b)
{
    return b->o.size + strlen(b->o.channel) + 128;
}

size_t app_publish(const struct bench *b, uint8_t *out, size_t cap, int64_t t, uint64_t seq)
{
    char *o = (char *)out;
    int h = b->o.proto == PROTO_WS
                ? snprintf(o, cap,
                           "{\"type\":\"publish\",\"channel\":\"%s\",\"payload\":", b->o.channel)
                : snprintf(o, cap, "42[\"pub\",");
    size_t n = (size_t)h;
    size_t p0 = n;
    n += (size_t)snprintf(o + n, cap - n, "{\"t\":%lld,\"s\":%llu", (long long)t,
                          (unsigned long long)seq);
    /* Pad the payload to -s bytes with ,"p":"aaa...", when there is room. */
    size_t base = n - p0 + 1;
    if (b->o.size >= base + 7) {
        size_t k = b->o.size - base - 7;
        memcpy(o + n, ",\"p\":\"", 6);
        n += 6;
        memset(o + n, 'a', k);
        n += k;
        o[n++] = '"';
    }
    o[n++] = '}';
    o[n++] = b->o.proto == PROTO_WS ? '}' : ']';
    return n;
}
