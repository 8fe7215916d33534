/* Incremental UTF-8 validator (RFC 3629 section 4, as RFC 6455 8.1
 * requires for text messages): an ASCII fast path a block at a time,
 * then a table-driven DFA over byte classes. */
#include "bytes.h"
#include "wshub/ws.h"

/* Byte classes. Continuation bytes are split by the ranges that the
 * second byte after E0, ED, F0 and F4 is limited to (RFC 3629 table). */
enum {
    C_ASCII, /* 00..7F */
    C_C80,   /* 80..8F */
    C_C90,   /* 90..9F */
    C_CA0,   /* A0..BF */
    C_BAD,   /* C0, C1, F5..FF: never valid */
    C_L2,    /* C2..DF */
    C_E0,    /* E0: next A0..BF (no overlongs) */
    C_L3,    /* E1..EC, EE, EF */
    C_ED,    /* ED: next 80..9F (no surrogates) */
    C_F0,    /* F0: next 90..BF (no overlongs) */
    C_L4,    /* F1..F3 */
    C_F4,    /* F4: next 80..8F (nothing above U+10FFFF) */
    C_COUNT
};

/* States. S_OK is 0 so a zeroed struct is the initial state. */
enum {
    S_OK,   /* between characters */
    S_N1,   /* one continuation byte (80..BF) left */
    S_N2,   /* two left */
    S_N3,   /* three left */
    S_E0,   /* after E0 */
    S_ED,   /* after ED */
    S_F0,   /* after F0 */
    S_F4,   /* after F4 */
    S_FAIL, /* sticky */
    S_COUNT
};

#define CLASS_RUN(n, c) CLASS_RUN_##n(c)
#define CLASS_RUN_16(c) c, c, c, c, c, c, c, c, c, c, c, c, c, c, c, c

static const uint8_t byte_class[256] = {
    /* 00..7F */
    CLASS_RUN(16, C_ASCII), CLASS_RUN(16, C_ASCII), CLASS_RUN(16, C_ASCII), CLASS_RUN(16, C_ASCII),
    CLASS_RUN(16, C_ASCII), CLASS_RUN(16, C_ASCII), CLASS_RUN(16, C_ASCII), CLASS_RUN(16, C_ASCII),
    /* 80..BF */
    CLASS_RUN(16, C_C80), CLASS_RUN(16, C_C90), CLASS_RUN(16, C_CA0), CLASS_RUN(16, C_CA0),
    /* C0..DF */
    C_BAD, C_BAD, C_L2, C_L2, C_L2, C_L2, C_L2, C_L2, C_L2, C_L2, C_L2, C_L2, C_L2, C_L2, C_L2,
    C_L2, CLASS_RUN(16, C_L2),
    /* E0..EF */
    C_E0, C_L3, C_L3, C_L3, C_L3, C_L3, C_L3, C_L3, C_L3, C_L3, C_L3, C_L3, C_L3, C_ED, C_L3, C_L3,
    /* F0..FF */
    C_F0, C_L4, C_L4, C_L4, C_F4, C_BAD, C_BAD, C_BAD, C_BAD, C_BAD, C_BAD, C_BAD, C_BAD, C_BAD,
    C_BAD, C_BAD
};

#define F S_FAIL
/* next_state[state][class] */
static const uint8_t next_state[S_COUNT][C_COUNT] = {
    /*          ASCII C80   C90   CA0   BAD L2    E0    L3    ED    F0    L4    F4 */
    [S_OK] = { S_OK, F, F, F, F, S_N1, S_E0, S_N2, S_ED, S_F0, S_N3, S_F4 },
    [S_N1] = { F, S_OK, S_OK, S_OK, F, F, F, F, F, F, F, F },
    [S_N2] = { F, S_N1, S_N1, S_N1, F, F, F, F, F, F, F, F },
    [S_N3] = { F, S_N2, S_N2, S_N2, F, F, F, F, F, F, F, F },
    [S_E0] = { F, F, F, S_N1, F, F, F, F, F, F, F, F },
    [S_ED] = { F, S_N1, S_N1, F, F, F, F, F, F, F, F, F },
    [S_F0] = { F, F, S_N2, S_N2, F, F, F, F, F, F, F, F },
    [S_F4] = { F, S_N2, F, F, F, F, F, F, F, F, F, F },
    [S_FAIL] = { F, F, F, F, F, F, F, F, F, F, F, F },
};
#undef F

void wsh_utf8_init(struct wsh_utf8 *u)
{
    u->_state = S_OK;
}

int wsh_utf8_feed(struct wsh_utf8 *u, const uint8_t *p, size_t n)
{
    unsigned s = u->_state;
    size_t i = 0;

    while (i < n) {
        if (s == S_OK) {
            /* Text is mostly ASCII: skip it a block at a time. */
            i += wsh__bytes_ascii_prefix(p + i, n - i);
        }
        /* Run the DFA over a block; S_FAIL is sticky, so checking once per
         * block still reports the error within this call. */
        size_t end = n - i > 16 ? i + 16 : n;
        for (; i < end; i++)
            s = next_state[s][byte_class[p[i]]];
        if (s == S_FAIL)
            break;
    }
    u->_state = s;
    return s == S_FAIL ? WSH_EUTF8 : WSH_OK;
}

bool wsh_utf8_complete(const struct wsh_utf8 *u)
{
    return u->_state == S_OK;
}

bool wsh_utf8_valid(const uint8_t *p, size_t n)
{
    struct wsh_utf8 u = { S_OK };
    return wsh_utf8_feed(&u, p, n) == WSH_OK && wsh_utf8_complete(&u);
}
