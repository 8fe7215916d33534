/* permessage-deflate (RFC 7692): parameter negotiation for both roles
 * (sections 5 and 7.1), message compression with the 00 00 ff ff tail
 * stripped (7.2.1), and bounded incremental decompression (7.2.2). zlib is
 * the only allocator here, and its streams live only while they must. */
#include "wshub/pmd.h"

#include <assert.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define ZLIB_CONST
#include <zlib.h>

#define DEFLATE_OUT         8192 /* deflate output staging, on the stack */
#define INFLATE_STATE_BYTES 7168 /* zconf.h: "plus about 7 kilobytes" */

static const uint8_t tail[4] = { 0x00, 0x00, 0xff, 0xff };

struct wsh_pmd {
    z_stream d, i;
    uint64_t msg_out; /* inflated bytes of the message in progress */
    int failed;       /* inflate side: the error every later call returns */
    int level, mem_level;
    uint8_t d_bits, i_bits; /* window bits we deflate / inflate with */
    bool d_live, i_live;    /* the stream is initialised */
    bool d_reset, i_reset;  /* no_context_takeover in that direction */
    bool i_ended;           /* a BFINAL block ended this message's stream */
};

/* ------------------------------------------------------------------ */
/* Parameters                                                          */

struct offer {
    bool snct, cnct; /* *_no_context_takeover present */
    bool has_sbits, has_cbits;
    uint8_t sbits, cbits; /* the value, 0 when the parameter had none */
};

static bool slice_ieq(struct wsh_slice s, const char *lit)
{
    size_t n = strlen(lit);
    if (s.n != n)
        return false;
    for (size_t k = 0; k < n; k++) {
        char c = s.p[k];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != lit[k])
            return false;
    }
    return true;
}

/* RFC 7692 7.1.2.1: the value is 1*DIGIT in 8..15 "without leading zeroes"
 * (the ABNF is %x38-39 / "1" %x30-35). Returns 0 when invalid. */
static uint8_t parse_bits(struct wsh_slice v)
{
    if (v.n == 1 && (v.p[0] == '8' || v.p[0] == '9'))
        return (uint8_t)(v.p[0] - '0');
    if (v.n == 2 && v.p[0] == '1' && v.p[1] >= '0' && v.p[1] <= '5')
        return (uint8_t)(10 + v.p[1] - '0');
    return 0;
}

/* Section 5: unknown names, duplicates and invalid values make the element
 * invalid. In a response client_max_window_bits needs a value (7.1.2.2). */
static bool parse_params(const struct wsh_slice *names, const struct wsh_slice *values, size_t n,
                         bool response, struct offer *o)
{
    memset(o, 0, sizeof(*o));
    for (size_t k = 0; k < n; k++) {
        struct wsh_slice v = values[k];
        if (slice_ieq(names[k], "server_no_context_takeover")) {
            if (o->snct || v.n != 0)
                return false;
            o->snct = true;
        } else if (slice_ieq(names[k], "client_no_context_takeover")) {
            if (o->cnct || v.n != 0)
                return false;
            o->cnct = true;
        } else if (slice_ieq(names[k], "server_max_window_bits")) {
            if (o->has_sbits || (o->sbits = parse_bits(v)) == 0)
                return false;
            o->has_sbits = true;
        } else if (slice_ieq(names[k], "client_max_window_bits")) {
            if (o->has_cbits || (v.n == 0 && response))
                return false;
            if (v.n != 0 && (o->cbits = parse_bits(v)) == 0)
                return false;
            o->has_cbits = true;
        } else {
            return false;
        }
    }
    return true;
}

static uint8_t bits_or(uint8_t v, uint8_t dflt)
{
    return v >= 8 && v <= 15 ? v : dflt;
}

static uint8_t min_bits(uint8_t a, uint8_t b)
{
    return a < b ? a : b;
}

static bool params_valid(const struct wsh_pmd_params *p)
{
    return p->server_max_window_bits >= 8 && p->server_max_window_bits <= 15 &&
           p->client_max_window_bits >= 8 && p->client_max_window_bits <= 15;
}

size_t wsh_pmd_deflate_memory(uint8_t window_bits, int mem_level)
{
    /* zlib deflates with 9 bits when asked for 8 (see deflate_bits). */
    unsigned w = window_bits < 9 ? 9u : window_bits > 15 ? 15u : window_bits;
    unsigned m = mem_level < 1 || mem_level > 9 ? 8u : (unsigned)mem_level;
    return ((size_t)1 << (w + 2)) + ((size_t)1 << (m + 9));
}

size_t wsh_pmd_inflate_memory(uint8_t window_bits)
{
    unsigned w = window_bits < 8 ? 8u : window_bits > 15 ? 15u : window_bits;
    return ((size_t)1 << w) + INFLATE_STATE_BYTES;
}

/* ------------------------------------------------------------------ */
/* Negotiation, server role                                            */

enum wsh_pmd_verdict wsh_pmd_server_offer(const struct wsh_pmd_config *cfg, struct wsh_slice name,
                                          const struct wsh_slice *param_names,
                                          const struct wsh_slice *param_values, size_t nparams,
                                          struct wsh_pmd_params *agreed)
{
    static const struct wsh_pmd_config dflt;
    if (cfg == NULL)
        cfg = &dflt;
    if (!slice_ieq(name, WSH_PMD_NAME))
        return WSH_PMD_DECLINE;
    struct offer o;
    if (!parse_params(param_names, param_values, nparams, false, &o))
        return WSH_PMD_INVALID;

    uint8_t sw = bits_or(cfg->server_max_window_bits, WSH_PMD_DEFAULT_SERVER_WINDOW);
    uint8_t cw = bits_or(cfg->client_max_window_bits, WSH_PMD_DEFAULT_CLIENT_WINDOW);
    struct wsh_pmd_params a = { 0 };

    /* 7.1.2.2: without client_max_window_bits in the offer we may not send
     * one, so the client may use 15 bits and our inflater must too. */
    if (!o.has_cbits) {
        if (cw < 15)
            return WSH_PMD_DECLINE;
        a.client_max_window_bits = 15;
    } else {
        a.client_max_window_bits = min_bits(o.cbits ? o.cbits : 15, cw);
    }
    /* 7.1.2.1: a requested server window must be answered with the same or
     * a smaller value; without a request we still announce a smaller one
     * so the client can size its inflater. */
    a.server_max_window_bits = o.has_sbits ? min_bits(o.sbits, sw) : sw;
    a._server_bits_echo = o.has_sbits;
    /* 7.1.1.1: a requested server_no_context_takeover must be honoured; we
     * may add it unasked. 7.1.1.2: likewise for the client's. */
    a.server_no_context_takeover = o.snct || !cfg->server_context_takeover;
    a.client_no_context_takeover = o.cnct || cfg->client_no_context_takeover;
    *agreed = a;
    return WSH_PMD_ACCEPT;
}

bool wsh_pmd_hs_extension_cb(struct wsh_slice name, const struct wsh_slice *param_names,
                             const struct wsh_slice *param_values, size_t nparams, void *user)
{
    struct wsh_pmd_pick *pick = user;
    if (pick->accepted || !slice_ieq(name, WSH_PMD_NAME))
        return true;
    struct wsh_pmd_params a;
    switch (wsh_pmd_server_offer(pick->cfg, name, param_names, param_values, nparams, &a)) {
    case WSH_PMD_ACCEPT:
        pick->accepted = true;
        pick->params = a;
        return true;
    case WSH_PMD_DECLINE:
        return true;
    case WSH_PMD_INVALID:
        break;
    }
    return false;
}

struct out {
    char *p;
    size_t n, cap;
    bool full;
};

static void put_str(struct out *o, const char *s)
{
    size_t n = strlen(s);
    if (o->full || o->cap - o->n <= n) {
        o->full = true;
        return;
    }
    memcpy(o->p + o->n, s, n + 1);
    o->n += n;
}

static void put_bits(struct out *o, const char *param, uint8_t bits)
{
    char num[4] = { 0 };
    if (bits >= 10) {
        num[0] = '1';
        num[1] = (char)('0' + bits - 10);
    } else {
        num[0] = (char)('0' + bits);
    }
    put_str(o, param);
    put_str(o, "=");
    put_str(o, num);
}

ssize_t wsh_pmd_response_write(char *out, size_t cap, const struct wsh_pmd_params *agreed)
{
    if (!params_valid(agreed))
        return WSH_EINVAL;
    struct out o = { out, 0, cap, cap == 0 };
    put_str(&o, WSH_PMD_NAME);
    if (agreed->server_no_context_takeover)
        put_str(&o, "; server_no_context_takeover");
    if (agreed->client_no_context_takeover)
        put_str(&o, "; client_no_context_takeover");
    if (agreed->server_max_window_bits < 15 || agreed->_server_bits_echo)
        put_bits(&o, "; server_max_window_bits", agreed->server_max_window_bits);
    if (agreed->client_max_window_bits < 15)
        put_bits(&o, "; client_max_window_bits", agreed->client_max_window_bits);
    return o.full ? WSH_ENOSPC : (ssize_t)o.n;
}

/* ------------------------------------------------------------------ */
/* Negotiation, client role                                            */

ssize_t wsh_pmd_client_offer(char *out, size_t cap, const struct wsh_pmd_params *want)
{
    if (!params_valid(want))
        return WSH_EINVAL;
    struct out o = { out, 0, cap, cap == 0 };
    put_str(&o, WSH_PMD_NAME);
    if (want->server_no_context_takeover)
        put_str(&o, "; server_no_context_takeover");
    if (want->client_no_context_takeover)
        put_str(&o, "; client_no_context_takeover");
    if (want->server_max_window_bits < 15)
        put_bits(&o, "; server_max_window_bits", want->server_max_window_bits);
    /* Always offered: a server may then lower our window (7.1.2.2). */
    if (want->client_max_window_bits < 15)
        put_bits(&o, "; client_max_window_bits", want->client_max_window_bits);
    else
        put_str(&o, "; client_max_window_bits");
    return o.full ? WSH_ENOSPC : (ssize_t)o.n;
}

/* RFC 9110 5.6.2 tchar. */
static bool is_tchar(char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static const char *skip_ows(const char *s, const char *end)
{
    while (s < end && (*s == ' ' || *s == '\t'))
        s++;
    return s;
}

static struct wsh_slice take_token(const char **sp, const char *end)
{
    const char *s = *sp;
    while (s < end && is_tchar(*s))
        s++;
    struct wsh_slice t = { *sp, (size_t)(s - *sp) };
    *sp = s;
    return t;
}

#define RESPONSE_PARAMS_MAX 8 /* a valid answer has at most 4 */

int wsh_pmd_client_check(const struct wsh_pmd_params *offered, struct wsh_slice value,
                         bool *enabled, struct wsh_pmd_params *agreed)
{
    const char *s = value.p, *end = value.p + value.n;
    struct wsh_slice name = { NULL, 0 }, names[RESPONSE_PARAMS_MAX], values[RESPONSE_PARAMS_MAX];
    size_t np = 0, elements = 0;

    /* RFC 6455 9.1 grammar; quoted values must be tokens once unquoted. */
    for (;;) {
        s = skip_ows(s, end);
        if (s == end)
            break;
        if (*s == ',') {
            s++;
            continue;
        }
        if (++elements > 1)
            return WSH_EPROTO; /* we offered one extension */
        name = take_token(&s, end);
        if (name.n == 0)
            return WSH_EPROTO;
        s = skip_ows(s, end);
        while (s < end && *s == ';') {
            s = skip_ows(s + 1, end);
            struct wsh_slice pn = take_token(&s, end), pv = { NULL, 0 };
            if (pn.n == 0 || np == RESPONSE_PARAMS_MAX)
                return WSH_EPROTO;
            s = skip_ows(s, end);
            if (s < end && *s == '=') {
                s = skip_ows(s + 1, end);
                bool quoted = s < end && *s == '"';
                s += quoted;
                pv = take_token(&s, end);
                if (pv.n == 0 || (quoted && (s == end || *s++ != '"')))
                    return WSH_EPROTO;
                s = skip_ows(s, end);
            }
            names[np] = pn;
            values[np] = pv;
            np++;
        }
        if (s < end && *s != ',')
            return WSH_EPROTO;
    }
    if (elements == 0) {
        *enabled = false;
        return WSH_OK;
    }
    struct offer o;
    if (!slice_ieq(name, WSH_PMD_NAME) || !params_valid(offered) ||
        !parse_params(names, values, np, true, &o))
        return WSH_EPROTO;
    /* 7.1.2.1: a server_max_window_bits we sent must come back, and never
     * larger; 7.1.1.1: so must a server_no_context_takeover we sent. */
    if (offered->server_max_window_bits < 15 && !o.has_sbits)
        return WSH_EPROTO;
    if (o.has_sbits && o.sbits > offered->server_max_window_bits)
        return WSH_EPROTO;
    if (offered->server_no_context_takeover && !o.snct)
        return WSH_EPROTO;

    struct wsh_pmd_params a = { 0 };
    a.server_no_context_takeover = o.snct;
    a.client_no_context_takeover = o.cnct || offered->client_no_context_takeover;
    a.server_max_window_bits = o.has_sbits ? o.sbits : 15;
    a.client_max_window_bits = o.has_cbits ? min_bits(o.cbits, offered->client_max_window_bits)
                                           : offered->client_max_window_bits;
    *agreed = a;
    *enabled = true;
    return WSH_OK;
}

/* ------------------------------------------------------------------ */
/* Compression                                                         */

static int level_or_default(int level)
{
    return level >= 1 && level <= 9 ? level : WSH_PMD_DEFAULT_LEVEL;
}

static int mem_level_or_default(int mem_level)
{
    return mem_level >= 1 && mem_level <= 9 ? mem_level : WSH_PMD_DEFAULT_MEM_LEVEL;
}

/* zlib refuses windowBits 8 for raw deflate (deflateInit2 returns
 * Z_STREAM_ERROR since 1.2.9) and uses 9 for the zlib format anyway. A
 * 9-bit deflater never emits a distance over MAX_DIST = 512 - MIN_LOOKAHEAD
 * (262) = 250 bytes, so its streams decode with a 256-byte window: serving
 * an agreed 8 with 9 keeps the promise. The tests check it against an
 * 8-bit zlib inflater. */
static int deflate_bits(uint8_t bits)
{
    return bits < 9 ? -9 : -(int)bits;
}

/* A deflater made for one message needs no more than that message's
 * worth: a window that reaches back to its first byte (the length plus
 * zlib's MIN_LOOKAHEAD of 262) and a symbol buffer longer than it
 * (1 << (memLevel + 6) symbols; zlib ends a block one short of full), so
 * the message stays one block; the hash then gets memLevel + 7 bits, more
 * than twice the length. A window below the agreed bits is always valid,
 * the agreed value being a maximum (RFC 7692 7.1.2.1), and the unit test
 * checks the output is never longer than zlib's at full size. What it
 * saves is deflateInit2's cost, its allocations and the clearing of the
 * hash: for a 200-byte chat message at 15 bits and memLevel 8, 256 KiB
 * allocated and 64 KiB cleared per message; sized, 4 KiB besides zlib's own
 * 6 KiB of state. */
static void size_for_message(size_t len, uint8_t *bits, int *mem_level)
{
    uint8_t b = 9;
    while (b < *bits && ((size_t)1 << b) < len + 262)
        b++;
    if (b < *bits)
        *bits = b;
    int m = 1;
    while (m < *mem_level && ((size_t)1 << (m + 6)) <= len)
        m++;
    *mem_level = m;
}

static int zerr(int rc)
{
    return rc == Z_MEM_ERROR ? WSH_ENOMEM : WSH_EINVAL;
}

/* Runs one whole message through s with Z_SYNC_FLUSH and hands the output
 * to cb, holding back the last 4 bytes of each piece so the final 00 00 ff
 * ff can be dropped without a second pass. */
static int deflate_message(z_stream *s, const uint8_t *in, size_t len, wsh_pmd_write_cb *cb,
                           void *user)
{
    if (len == 0) {
        /* 7.2.3.6: an empty message may be sent as one 0x00 byte (an empty
         * stored block once the receiver appends the tail). It leaves the
         * sliding window untouched, so it is valid with context takeover. */
        static const uint8_t zero = 0;
        return cb(&zero, 1, user);
    }
    uint8_t buf[DEFLATE_OUT];
    size_t held = 0, left = len;
    for (;;) {
        if (s->avail_in == 0 && left > 0) {
            size_t n = left < UINT_MAX ? left : UINT_MAX;
            s->next_in = in;
            s->avail_in = (uInt)n;
            in += n;
            left -= n;
        }
        int flush = left == 0 ? Z_SYNC_FLUSH : Z_NO_FLUSH;
        s->next_out = buf + held;
        s->avail_out = (uInt)(sizeof(buf) - held);
        int rc = deflate(s, flush);
        if (rc != Z_OK && rc != Z_BUF_ERROR)
            return zerr(rc);
        size_t have = sizeof(buf) - s->avail_out;
        /* The flush is complete when deflate leaves output space unused. */
        bool done = flush == Z_SYNC_FLUSH && s->avail_in == 0 && s->avail_out != 0;
        if (done) {
            assert(have >= 4 && memcmp(buf + have - 4, tail, 4) == 0);
            return have > 4 ? cb(buf, have - 4, user) : WSH_OK;
        }
        if (have > 4) {
            int st = cb(buf, have - 4, user);
            if (st != WSH_OK)
                return st;
            memmove(buf, buf + have - 4, 4);
            held = 4;
        } else {
            held = have;
        }
    }
}

int wsh_pmd_create(enum wsh_role role, const struct wsh_pmd_params *agreed,
                   const struct wsh_pmd_config *cfg, struct wsh_pmd **out)
{
    if (!params_valid(agreed))
        return WSH_EINVAL;
    struct wsh_pmd *z = calloc(1, sizeof(*z));
    if (z == NULL)
        return WSH_ENOMEM;
    bool server = role == WSH_ROLE_SERVER;
    z->d_bits = server ? agreed->server_max_window_bits : agreed->client_max_window_bits;
    z->i_bits = server ? agreed->client_max_window_bits : agreed->server_max_window_bits;
    z->d_reset = server ? agreed->server_no_context_takeover : agreed->client_no_context_takeover;
    z->i_reset = server ? agreed->client_no_context_takeover : agreed->server_no_context_takeover;
    z->level = level_or_default(cfg ? cfg->level : 0);
    z->mem_level = mem_level_or_default(cfg ? cfg->mem_level : 0);
    *out = z;
    return WSH_OK;
}

void wsh_pmd_destroy(struct wsh_pmd *z)
{
    if (z == NULL)
        return;
    if (z->d_live)
        deflateEnd(&z->d);
    if (z->i_live)
        inflateEnd(&z->i);
    free(z);
}

bool wsh_pmd_worth_compressing(const struct wsh_pmd_config *cfg, size_t len)
{
    size_t min = cfg != NULL && cfg->min_size != 0 ? cfg->min_size : WSH_PMD_DEFAULT_MIN_SIZE;
    return len >= min;
}

/* Messages compressed without context takeover each start a new stream.
 * Allocating one per message costs more than compressing a small message:
 * at 15 bits and memLevel 8, deflateInit2 takes 256 KiB, which glibc
 * returns to the kernel when it is freed, so every message page-faults it
 * back. A small message gets a stream sized to it (size_for_message), a
 * few KiB that the allocator keeps; a larger one reuses this thread's
 * full-size stream after deflateReset, which gives the same output as a
 * new stream. The stream is freed when its thread exits. */
struct dcache {
    z_stream s;
    bool live;
    uint8_t bits;
    int level, mem_level;
};

static pthread_key_t dcache_key;
static pthread_once_t dcache_once = PTHREAD_ONCE_INIT;
static bool dcache_ok;

static void dcache_free(void *p)
{
    struct dcache *d = p;
    if (d->live)
        deflateEnd(&d->s);
    free(d);
}

static void dcache_init(void)
{
    dcache_ok = pthread_key_create(&dcache_key, dcache_free) == 0;
}

static struct dcache *dcache_get(void)
{
    pthread_once(&dcache_once, dcache_init);
    if (!dcache_ok)
        return NULL;
    struct dcache *d = pthread_getspecific(dcache_key);
    if (d == NULL) {
        if ((d = calloc(1, sizeof(*d))) == NULL)
            return NULL;
        if (pthread_setspecific(dcache_key, d) != 0) {
            free(d);
            return NULL;
        }
    }
    return d;
}

/* This thread's stream for (bits, level, mem_level), reset; NULL when
 * there is none (no memory: the caller makes its own). */
static z_stream *dcache_stream(uint8_t bits, int level, int mem_level)
{
    struct dcache *d = dcache_get();
    if (d == NULL)
        return NULL;
    if (d->live && (d->bits != bits || d->level != level || d->mem_level != mem_level)) {
        deflateEnd(&d->s);
        d->live = false;
    }
    if (d->live)
        return deflateReset(&d->s) == Z_OK ? &d->s : NULL;
    memset(&d->s, 0, sizeof(d->s));
    if (deflateInit2(&d->s, level, Z_DEFLATED, deflate_bits(bits), mem_level, Z_DEFAULT_STRATEGY) !=
        Z_OK)
        return NULL;
    d->live = true;
    d->bits = bits;
    d->level = level;
    d->mem_level = mem_level;
    return &d->s;
}

/* One message as a stream of its own. */
static int deflate_alone(uint8_t bits, int level, int mem_level, const uint8_t *in, size_t len,
                         wsh_pmd_write_cb *cb, void *user)
{
    z_stream s;
    memset(&s, 0, sizeof(s));
    if (len == 0)
        return deflate_message(&s, in, 0, cb, user);
    uint8_t sbits = bits;
    int smem = mem_level;
    size_for_message(len, &sbits, &smem);
    bool small = wsh_pmd_deflate_memory(sbits, smem) * 4 <= wsh_pmd_deflate_memory(bits, mem_level);
    z_stream *c = small ? NULL : dcache_stream(bits, level, mem_level);
    if (c != NULL) {
        int st = deflate_message(c, in, len, cb, user);
        /* Abandoned midway, it would keep that message's bytes in its
         * window past a reset, and later output, though valid, would differ
         * from a new stream's (the unit test holds it to the same bytes). */
        if (st != WSH_OK) {
            struct dcache *d = dcache_get();
            deflateEnd(&d->s);
            d->live = false;
        }
        return st;
    }
    int rc = deflateInit2(&s, level, Z_DEFLATED, deflate_bits(sbits), smem, Z_DEFAULT_STRATEGY);
    if (rc != Z_OK)
        return zerr(rc);
    int st = deflate_message(&s, in, len, cb, user);
    deflateEnd(&s);
    return st;
}

int wsh_pmd_compress(struct wsh_pmd *z, const uint8_t *in, size_t len, wsh_pmd_write_cb *cb,
                     void *user)
{
    if (z->d_reset)
        return deflate_alone(z->d_bits, z->level, z->mem_level, in, len, cb, user);
    if (len == 0)
        return deflate_message(&z->d, in, 0, cb, user);
    if (!z->d_live) {
        memset(&z->d, 0, sizeof(z->d));
        int rc = deflateInit2(&z->d, z->level, Z_DEFLATED, deflate_bits(z->d_bits), z->mem_level,
                              Z_DEFAULT_STRATEGY);
        if (rc != Z_OK)
            return zerr(rc);
        z->d_live = true;
    }
    int st = deflate_message(&z->d, in, len, cb, user);
    /* After a failure the stream's position is unknown: start afresh. */
    if (st != WSH_OK) {
        deflateEnd(&z->d);
        z->d_live = false;
    }
    return st;
}

int wsh_pmd_compress_oneshot(uint8_t window_bits, int level, int mem_level, const uint8_t *in,
                             size_t len, wsh_pmd_write_cb *cb, void *user)
{
    if (window_bits < 8 || window_bits > 15)
        return WSH_EINVAL;
    return deflate_alone(window_bits, level_or_default(level), mem_level_or_default(mem_level), in,
                         len, cb, user);
}

static int inflate_fail(struct wsh_pmd *z, int st)
{
    z->failed = st;
    return st;
}

/* A new deflate stream after a BFINAL block ended the last one (7.2.3.4)
 * within a message, or with context takeover at its end: the window goes
 * on (the rest of the message, or the next one, 7.2.2, may refer back into
 * the bytes before the final block), carried over as the new stream's
 * dictionary, which raw inflate takes at any time. */
static int inflate_restart(struct wsh_pmd *z)
{
    uint8_t win[1u << 15];
    uInt wl = 0;
    if (inflateGetDictionary(&z->i, win, &wl) != Z_OK)
        return WSH_EPROTO;
    if (inflateReset(&z->i) != Z_OK)
        return WSH_EPROTO;
    if (wl > 0 && inflateSetDictionary(&z->i, win, wl) != Z_OK)
        return WSH_EPROTO;
    z->i_ended = false;
    return WSH_OK;
}

/* Inflates p[0..n) into cb, stopping with WSH_ETOOBIG as soon as the
 * message exceeds limit: each inflate() call gets at most limit - msg_out
 * + 1 bytes of room, so nothing past limit + 1 is ever produced. */
static int inflate_run(struct wsh_pmd *z, const uint8_t *p, size_t n, bool is_tail, uint64_t limit,
                       wsh_pmd_write_cb *cb, void *user)
{
    uint8_t buf[WSH_PMD_CHUNK];
    z_stream *s = &z->i;
    while (n > 0) {
        if (z->i_ended) {
            /* 7.2.3.4: a sender may end its deflate stream with a BFINAL
             * block and go on with more blocks (the RFC's own example sends
             * a final block and then 0x00, which with our appended tail is
             * an empty stored block). Start a new stream for them, as
             * browsers do. Only our tail right after the end is ignored. */
            if (is_tail)
                return WSH_OK;
            int st = inflate_restart(z);
            if (st != WSH_OK)
                return st;
        }
        size_t feed = n < UINT_MAX ? n : UINT_MAX;
        s->next_in = p;
        s->avail_in = (uInt)feed;
        for (;;) {
            /* The limit may have been lowered under a message already
             * past it (a reload, session.c): without this, room wrapped
             * and the rest of the message inflated without any bound. */
            if (z->msg_out > limit)
                return WSH_ETOOBIG;
            uint64_t room = limit - z->msg_out;
            size_t cap = room >= sizeof(buf) ? sizeof(buf) : (size_t)room + 1;
            s->next_out = buf;
            s->avail_out = (uInt)cap;
            int rc = inflate(s, Z_NO_FLUSH);
            size_t got = cap - s->avail_out;
            if (got > room)
                return WSH_ETOOBIG;
            z->msg_out += got;
            if (got > 0) {
                int st = cb(buf, got, user);
                if (st != WSH_OK)
                    return st;
            }
            if (rc == Z_STREAM_END) {
                z->i_ended = true;
                break;
            }
            if (rc == Z_DATA_ERROR || rc == Z_NEED_DICT)
                return WSH_EPROTO;
            if (rc != Z_OK && rc != Z_BUF_ERROR)
                return zerr(rc);
            /* Done with this input once it is consumed and inflate stopped
             * for want of input rather than of output space. */
            if (s->avail_in == 0 && s->avail_out != 0)
                break;
        }
        size_t used = feed - s->avail_in;
        p += used;
        n -= used;
        if (z->i_ended && (n == 0 || is_tail))
            return WSH_OK;
    }
    return WSH_OK;
}

int wsh_pmd_inflate(struct wsh_pmd *z, const struct wsh_limits *lim, const uint8_t *in, size_t len,
                    bool last, wsh_pmd_write_cb *cb, void *user)
{
    if (z->failed != WSH_OK)
        return z->failed;
    uint64_t limit =
        lim != NULL && lim->max_message != 0 ? lim->max_message : WSH_DEFAULT_MAX_MESSAGE;
    if (!z->i_live) {
        memset(&z->i, 0, sizeof(z->i));
        int rc = inflateInit2(&z->i, -(int)z->i_bits);
        if (rc != Z_OK)
            return inflate_fail(z, zerr(rc));
        z->i_live = true;
    }
    int st = inflate_run(z, in, len, false, limit, cb, user);
    if (st == WSH_OK && last) {
        st = inflate_run(z, tail, sizeof(tail), true, limit, cb, user);
        /* After the tail (an empty stored block) a well-formed message
         * leaves inflate waiting for the next block header: zlib reports
         * that as bit 128 of data_type. Anything else is a truncated
         * block. */
        if (st == WSH_OK && !z->i_ended && (z->i.data_type & 128) == 0)
            st = WSH_EPROTO;
    }
    if (st != WSH_OK)
        return inflate_fail(z, st);
    if (last) {
        z->msg_out = 0;
        /* Without context takeover the next message starts a new stream:
         * freed, not reset (see wsh_pmd_compress). After a BFINAL block
         * with takeover, a new stream that keeps the window. */
        if (z->i_reset) {
            inflateEnd(&z->i);
            z->i_live = false;
        } else if (z->i_ended && (st = inflate_restart(z)) != WSH_OK) {
            return inflate_fail(z, st);
        }
        z->i_ended = false;
    }
    return WSH_OK;
}

size_t wsh_pmd_memory(const struct wsh_pmd *z)
{
    size_t n = 0;
    if (z->d_live)
        n += wsh_pmd_deflate_memory(z->d_bits, z->mem_level);
    if (z->i_live)
        n += wsh_pmd_inflate_memory(z->i_bits);
    return n;
}

uint8_t wsh_pmd_server_window_bits(const struct wsh_pmd *z)
{
    return z->d_bits;
}
