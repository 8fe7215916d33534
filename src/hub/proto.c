/* JSON envelope codec of DESIGN.md 3: client commands in (jansson, after a
 * linear depth pre-scan), server messages out (direct string building with
 * our own RFC 8259 section 7 string escaper). Sans-I/O: no clock, no
 * sockets, no logging. */
#include "wshub/proto.h"

#include <stdlib.h>
#include <string.h>

#include "wshub/config.h"
#include "wshub/json.h"

/* ------------------------------------------------------------------ */
/* Error codes                                                         */

const char *wsh_proto_code_message(int code)
{
    switch (code) {
    case WSH_PERR_BAD_JSON:
        return "bad json";
    case WSH_PERR_UNKNOWN_TYPE:
        return "unknown type";
    case WSH_PERR_BAD_FIELD:
        return "missing or invalid field";
    case WSH_PERR_TOO_DEEP:
        return "json too deep";
    case WSH_PERR_TOO_LARGE:
        return "message too large";
    case WSH_PERR_UNAUTHORIZED:
        return "unauthorized";
    case WSH_PERR_BAD_TOKEN:
        return "invalid token";
    case WSH_PERR_TOKEN_EXPIRED:
        return "token expired";
    case WSH_PERR_FORBIDDEN:
        return "permission denied";
    case WSH_PERR_PUBLISH_DENIED:
        return "publish not allowed";
    case WSH_PERR_ALREADY_CONNECTED:
        return "already connected";
    case WSH_PERR_RATE_LIMITED:
        return "rate limited";
    case WSH_PERR_TOO_MANY_SUBS:
        return "too many subscriptions";
    case WSH_PERR_CHANNEL_FULL:
        return "channel full";
    case WSH_PERR_LIMIT_EXCEEDED:
        return "limit exceeded";
    case WSH_PERR_BAD_CHANNEL:
        return "invalid channel";
    case WSH_PERR_UNKNOWN_NAMESPACE:
        return "unknown namespace";
    case WSH_PERR_ALREADY_SUBSCRIBED:
        return "already subscribed";
    case WSH_PERR_NOT_SUBSCRIBED:
        return "not subscribed";
    case WSH_PERR_NOT_AVAILABLE:
        return "not available";
    case WSH_PERR_INTERNAL:
        return "internal error";
    case WSH_PERR_UNAVAILABLE:
        return "temporarily unavailable";
    default:
        return "unknown error";
    }
}

/* ------------------------------------------------------------------ */
/* Channel names                                                       */

static bool ns_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

static bool name_char(unsigned char c)
{
    return ns_char(c) || c == '.' || c == '=' || c == '@';
}

bool wsh_proto_channel_parse(const char *s, size_t n, size_t max, struct wsh_channel *out)
{
    if (max == 0)
        max = WSH_PROTO_DEFAULT_MAX_CHANNEL;
    if (s == NULL || n == 0 || n > max)
        return false;
    struct wsh_channel c = { 0 };
    size_t i = 0;
    const char *colon = memchr(s, ':', n);
    if (colon != NULL) {
        size_t ns_len = (size_t)(colon - s);
        if (ns_len == 0 || ns_len > WSH_PROTO_MAX_NAMESPACE)
            return false;
        for (; i < ns_len; i++)
            if (!ns_char((unsigned char)s[i]))
                return false;
        c.ns = s;
        c.ns_len = ns_len;
        i++;
    }
    c.name = s + i;
    for (; i < n && s[i] != '#'; i++)
        if (!name_char((unsigned char)s[i]))
            return false;
    c.name_len = (size_t)(s + i - c.name);
    if (c.name_len == 0)
        return false;
    if (i < n) {
        i++; /* '#' */
        c.user = s + i;
        c.user_len = n - i;
        /* One user id, or a comma-separated list of them, each 1 byte or
         * more: `dm:pair#alice,bob` is open to both (docs/auth.md). */
        bool empty = true;
        for (; i < n; i++) {
            if (s[i] == ',' && !empty)
                empty = true;
            else if (name_char((unsigned char)s[i]))
                empty = false;
            else
                return false;
        }
        if (empty)
            return false;
    }
    *out = c;
    return true;
}

/* ------------------------------------------------------------------ */
/* Command parsing                                                     */

static const struct {
    const char *name;
    size_t len;
    enum wsh_cmd_type type;
} cmd_names[] = {
    { "connect", 7, WSH_CMD_CONNECT },
    { "subscribe", 9, WSH_CMD_SUBSCRIBE },
    { "unsubscribe", 11, WSH_CMD_UNSUBSCRIBE },
    { "publish", 7, WSH_CMD_PUBLISH },
    { "presence", 8, WSH_CMD_PRESENCE },
    { "history", 7, WSH_CMD_HISTORY },
    { "refresh", 7, WSH_CMD_REFRESH },
    { "signal", 6, WSH_CMD_SIGNAL },
    { "read", 4, WSH_CMD_READ },
};

const char *wsh_cmd_type_name(enum wsh_cmd_type t)
{
    for (size_t i = 0; i < sizeof(cmd_names) / sizeof(cmd_names[0]); i++)
        if (cmd_names[i].type == t)
            return cmd_names[i].name;
    return "";
}

/* What the pre-scan learns: whether nesting stays within the bound, and
 * where the root object's literal "payload" member value lies. */
struct prescan {
    const char *pay;
    size_t pay_len;
    bool pay_ws; /* insignificant whitespace inside the payload value */
    /* The first top-level "id" member's value as written, for the error
     * of a message jansson refuses (or too deep): a client matches replies
     * by id, and a publish whose payload has a duplicate key would wait
     * out its timeout without it. */
    const char *id;
    size_t id_len;
};

static bool is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* A top-level member ends: if it was "id", its value is in[*istart..last]. */
static void id_end(struct prescan *ps, const char *in, size_t *istart, bool *want_id, size_t last)
{
    if (*istart != SIZE_MAX && ps->id == NULL && last >= *istart) {
        ps->id = in + *istart;
        ps->id_len = last + 1 - *istart;
    }
    *istart = SIZE_MAX;
    *want_id = false;
}

/* The id written as text, when it is an integer 0..2^53-1 in JSON's
 * form (no sign, no leading zero, no fraction or exponent). */
static bool id_of_text(const char *s, size_t n, int64_t *out)
{
    if (n == 0 || n > 16 || (n > 1 && s[0] == '0'))
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v > WSH_PROTO_MAX_ID)
        return false;
    *out = v;
    return true;
}

/* One linear pass over the input that respects strings and escapes.
 * jansson's parser recurses once per nesting level, so depth must be
 * bounded before it runs (a 64 KiB message of '[' is 65536 levels).
 * Syntax errors are left for jansson to report; this pass only has to be
 * exact on valid JSON. Returns false when nesting exceeds max_depth. */
static bool prescan_input(const char *in, size_t len, unsigned max_depth, struct prescan *ps)
{
    size_t depth = 0, last = 0, str_start = 0, pstart = SIZE_MAX, istart = SIZE_MAX;
    bool in_str = false, esc = false, str_esc = false;
    bool root_obj = false, seen = false, expect_key = true, want = false, done = false;
    bool want_id = false;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (in_str) {
            if (esc) {
                esc = false;
            } else if (c == '\\') {
                esc = str_esc = true;
            } else if (c == '"') {
                in_str = false;
                last = i;
                if (depth == 1 && root_obj && expect_key && !done)
                    want = !str_esc && i - str_start == 8 &&
                           memcmp(in + str_start + 1, "payload", 7) == 0;
                if (depth == 1 && root_obj && expect_key && ps->id == NULL)
                    want_id =
                        !str_esc && i - str_start == 3 && memcmp(in + str_start + 1, "id", 2) == 0;
            }
            continue;
        }
        if (is_ws(c)) {
            if (pstart != SIZE_MAX && !done && depth >= 2)
                ps->pay_ws = true;
            continue;
        }
        if (depth == 1 && want && !expect_key && pstart == SIZE_MAX && c != ':')
            pstart = i;
        if (depth == 1 && want_id && !expect_key && istart == SIZE_MAX && c != ':')
            istart = i;
        switch (c) {
        case '"':
            in_str = true;
            str_start = i;
            str_esc = false;
            break;
        case '{':
        case '[':
            if (depth == 0 && !seen)
                root_obj = c == '{';
            if (++depth > max_depth)
                return false;
            break;
        case '}':
        case ']':
            if (depth == 0)
                return true;
            if (depth == 1 && pstart != SIZE_MAX && !done && last >= pstart) {
                ps->pay = in + pstart;
                ps->pay_len = last + 1 - pstart;
                done = true;
            }
            if (depth == 1)
                id_end(ps, in, &istart, &want_id, last);
            depth--;
            break;
        case ':':
            if (depth == 1)
                expect_key = false;
            break;
        case ',':
            if (depth == 1) {
                if (pstart != SIZE_MAX && !done && last >= pstart) {
                    ps->pay = in + pstart;
                    ps->pay_len = last + 1 - pstart;
                    done = true;
                }
                expect_key = true;
                want = false;
                id_end(ps, in, &istart, &want_id, last);
            }
            break;
        default:
            break;
        }
        seen = true;
        last = i;
    }
    return true;
}

struct perr {
    int code;
    const char *msg;
};

static int fail(struct perr *e, int code, const char *msg)
{
    e->code = code;
    e->msg = msg;
    return code == WSH_PERR_TOO_DEEP || code == WSH_PERR_TOO_LARGE ? WSH_ETOOBIG : WSH_EPROTO;
}

/* Non-negative JSON integer. jansson integers are long long, so the range
 * is 0..2^63-1. */
static bool get_uint(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

/* Printable ASCII without space: msg_id and epoch are opaque tokens. */
static bool printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

bool wsh_proto_msg_id_ok(const char *s, size_t n, size_t max)
{
    return n > 0 && n <= max && printable(s, n);
}

/* JWT compact serialization (RFC 7519): base64url segments and dots. */
static bool token_chars(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!ns_char(c) && c != '.')
            return false;
    }
    return true;
}

static int parse_token(const json_t *payload, bool required, const struct wsh_proto_limits *lim,
                       struct wsh_cmd *cmd, struct perr *e)
{
    const json_t *t = payload ? json_object_get(payload, "token") : NULL;
    if (t == NULL)
        return required ? fail(e, WSH_PERR_BAD_FIELD, "payload.token: missing") : WSH_OK;
    if (!json_is_string(t))
        return fail(e, WSH_PERR_BAD_FIELD, "payload.token: expected a string");
    size_t n = json_string_length(t);
    if (n == 0 || n > lim->max_token || !token_chars(json_string_value(t), n))
        return fail(e, WSH_PERR_BAD_FIELD, "payload.token: invalid or too long");
    cmd->token = json_string_value(t);
    cmd->token_len = n;
    return WSH_OK;
}

static int parse_fields(json_t *root, const struct prescan *ps, const struct wsh_proto_limits *lim,
                        struct wsh_cmd *cmd, struct perr *e)
{
    if (!json_is_object(root))
        return fail(e, WSH_PERR_BAD_JSON, "message must be a JSON object");

    /* id first, so that every later error can echo it. */
    const json_t *id = json_object_get(root, "id");
    if (id != NULL) {
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) > WSH_PROTO_MAX_ID)
            return fail(e, WSH_PERR_BAD_FIELD, "id: expected an integer 0..2^53-1");
        cmd->id = json_integer_value(id);
    }

    const json_t *type = json_object_get(root, "type");
    if (type == NULL)
        return fail(e, WSH_PERR_BAD_FIELD, "type: missing");
    if (!json_is_string(type))
        return fail(e, WSH_PERR_BAD_FIELD, "type: expected a string");
    const char *tn = json_string_value(type);
    size_t tl = json_string_length(type);
    for (size_t i = 0; i < sizeof(cmd_names) / sizeof(cmd_names[0]); i++)
        if (cmd_names[i].len == tl && memcmp(cmd_names[i].name, tn, tl) == 0)
            cmd->type = cmd_names[i].type;
    if (cmd->type == WSH_CMD_NONE)
        return fail(e, WSH_PERR_UNKNOWN_TYPE, "type: unknown command");
    enum wsh_cmd_type ty = cmd->type;

    if (ty != WSH_CMD_CONNECT && ty != WSH_CMD_REFRESH) {
        const json_t *ch = json_object_get(root, "channel");
        if (ch == NULL)
            return fail(e, WSH_PERR_BAD_FIELD, "channel: missing");
        if (!json_is_string(ch))
            return fail(e, WSH_PERR_BAD_FIELD, "channel: expected a string");
        const char *s = json_string_value(ch);
        size_t n = json_string_length(ch);
        /* A subscription made before a reload lowered max_channel may
         * still be ended: unsubscribe takes any name the broker could
         * hold. */
        size_t max = ty == WSH_CMD_UNSUBSCRIBE ? WSH_CFG_MAX_CHANNEL_CEIL : lim->max_channel;
        if (!wsh_proto_channel_parse(s, n, max, &cmd->chan))
            return fail(e, WSH_PERR_BAD_CHANNEL, "channel: invalid name");
        cmd->channel = s;
        cmd->channel_len = n;
    }

    json_t *payload = json_object_get(root, "payload");
    if (ty == WSH_CMD_PUBLISH || ty == WSH_CMD_SIGNAL) {
        if (payload == NULL)
            return fail(e, WSH_PERR_BAD_FIELD, "payload: missing");
        cmd->payload = payload;
        if (ps->pay != NULL && !ps->pay_ws) {
            cmd->payload_raw = ps->pay;
            cmd->payload_raw_len = ps->pay_len;
        }
    } else if (payload != NULL && !json_is_object(payload)) {
        return fail(e, WSH_PERR_BAD_FIELD, "payload: expected an object");
    } else {
        cmd->payload = payload;
    }

    if (ty == WSH_CMD_PUBLISH) {
        const json_t *m = json_object_get(root, "msg_id");
        if (m != NULL) {
            if (!json_is_string(m))
                return fail(e, WSH_PERR_BAD_FIELD, "msg_id: expected a string");
            size_t n = json_string_length(m);
            if (!wsh_proto_msg_id_ok(json_string_value(m), n, lim->max_msg_id))
                return fail(e, WSH_PERR_BAD_FIELD, "msg_id: empty, too long or not printable");
            cmd->msg_id = json_string_value(m);
            cmd->msg_id_len = n;
        }
    }

    switch (ty) {
    case WSH_CMD_CONNECT:
        return parse_token(payload, false, lim, cmd, e);
    case WSH_CMD_REFRESH:
        return parse_token(payload, true, lim, cmd, e);
    case WSH_CMD_SUBSCRIBE: {
        const json_t *r = payload ? json_object_get(payload, "recover") : NULL;
        if (r == NULL)
            return WSH_OK;
        if (!json_is_object(r))
            return fail(e, WSH_PERR_BAD_FIELD, "payload.recover: expected an object");
        if (!get_uint(json_object_get(r, "offset"), &cmd->recover_offset))
            return fail(e, WSH_PERR_BAD_FIELD,
                        "payload.recover.offset: expected a non-negative integer");
        const json_t *ep = json_object_get(r, "epoch");
        if (!json_is_string(ep))
            return fail(e, WSH_PERR_BAD_FIELD, "payload.recover.epoch: expected a string");
        size_t n = json_string_length(ep);
        if (n > lim->max_epoch || !printable(json_string_value(ep), n))
            return fail(e, WSH_PERR_BAD_FIELD, "payload.recover.epoch: too long or not printable");
        cmd->has_recover = true;
        cmd->recover_epoch = json_string_value(ep);
        cmd->recover_epoch_len = n;
        return WSH_OK;
    }
    case WSH_CMD_HISTORY: {
        const json_t *v = payload ? json_object_get(payload, "since") : NULL;
        if (v != NULL) {
            if (!get_uint(v, &cmd->since))
                return fail(e, WSH_PERR_BAD_FIELD,
                            "payload.since: expected a non-negative integer");
            cmd->has_since = true;
        }
        v = payload ? json_object_get(payload, "limit") : NULL;
        if (v != NULL) {
            if (!get_uint(v, &cmd->limit))
                return fail(e, WSH_PERR_BAD_FIELD,
                            "payload.limit: expected a non-negative integer");
            cmd->has_limit = true;
        }
        return WSH_OK;
    }
    case WSH_CMD_READ:
        if (payload == NULL || !get_uint(json_object_get(payload, "offset"), &cmd->offset))
            return fail(e, WSH_PERR_BAD_FIELD, "payload.offset: expected a non-negative integer");
        return WSH_OK;
    default:
        return WSH_OK;
    }
}

int wsh_proto_parse(const char *in, size_t len, const struct wsh_proto_limits *lim,
                    struct wsh_cmd *cmd, int *code, const char **msg)
{
    struct wsh_proto_limits l = { 0 };
    if (lim != NULL)
        l = *lim;
    if (l.max_input == 0)
        l.max_input = WSH_PROTO_DEFAULT_MAX_INPUT;
    if (l.max_depth == 0)
        l.max_depth = WSH_PROTO_DEFAULT_MAX_DEPTH;
    if (l.max_channel == 0)
        l.max_channel = WSH_PROTO_DEFAULT_MAX_CHANNEL;
    if (l.max_msg_id == 0)
        l.max_msg_id = WSH_PROTO_DEFAULT_MAX_MSG_ID;
    if (l.max_token == 0)
        l.max_token = WSH_PROTO_DEFAULT_MAX_TOKEN;
    if (l.max_epoch == 0)
        l.max_epoch = WSH_PROTO_DEFAULT_MAX_EPOCH;

    memset(cmd, 0, sizeof(*cmd));
    cmd->id = WSH_PROTO_NO_ID;
    struct perr e = { 0, NULL };
    struct prescan ps = { 0 };
    int rc;

    if (in == NULL && len != 0) {
        rc = fail(&e, WSH_PERR_BAD_JSON, "no input");
    } else if (len > l.max_input) {
        rc = fail(&e, WSH_PERR_TOO_LARGE, "message too large");
    } else if (!prescan_input(in, len, l.max_depth, &ps)) {
        rc = fail(&e, WSH_PERR_TOO_DEEP, "json too deep");
        if (ps.id != NULL)
            (void)id_of_text(ps.id, ps.id_len, &cmd->id);
    } else {
        json_error_t jerr;
        /* Duplicate keys are rejected so that every reader of the message
         * (us, a proxy, the payload's consumers) sees the same fields. */
        bool oom;
        json_t *root =
            wsh_json_loadb(in ? in : "", len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr, &oom);
        if (root == NULL) {
            if (oom) {
                e.code = WSH_PERR_INTERNAL;
                e.msg = "out of memory";
                rc = WSH_ENOMEM;
            } else {
                rc = fail(&e, WSH_PERR_BAD_JSON, "bad json");
                if (ps.id != NULL)
                    (void)id_of_text(ps.id, ps.id_len, &cmd->id);
            }
        } else {
            cmd->_root = root;
            rc = parse_fields(root, &ps, &l, cmd, &e);
        }
    }

    if (rc != WSH_OK) {
        int64_t id = cmd->id;
        enum wsh_cmd_type ty = cmd->type;
        wsh_cmd_free(cmd);
        memset(cmd, 0, sizeof(*cmd));
        cmd->id = id;
        cmd->type = ty;
    }
    if (code != NULL)
        *code = rc == WSH_OK ? 0 : e.code;
    if (msg != NULL)
        *msg = rc == WSH_OK ? NULL : e.msg;
    return rc;
}

bool wsh_proto_depth_ok(const char *in, size_t len, unsigned max_depth)
{
    struct prescan ps = { 0 };
    return prescan_input(in, len, max_depth, &ps);
}

void wsh_cmd_free(struct wsh_cmd *cmd)
{
    if (cmd == NULL || cmd->_root == NULL)
        return;
    json_decref(cmd->_root);
    cmd->_root = NULL;
    cmd->payload = NULL;
}

/* ------------------------------------------------------------------ */
/* Buffer                                                              */

void wsh_jbuf_init(struct wsh_jbuf *b)
{
    memset(b, 0, sizeof(*b));
}

void wsh_jbuf_reset(struct wsh_jbuf *b)
{
    b->len = 0;
    b->_oom = false;
}

void wsh_jbuf_free(struct wsh_jbuf *b)
{
    free(b->data);
    wsh_jbuf_init(b);
}

char *wsh_jbuf_take(struct wsh_jbuf *b, size_t *len)
{
    char *p = b->data;
    if (len != NULL)
        *len = b->len;
    wsh_jbuf_init(b);
    return p;
}

static bool buf_grow(struct wsh_jbuf *b, size_t n)
{
    if (b->_oom)
        return false;
    if (n > SIZE_MAX / 2 - b->len) {
        b->_oom = true;
        return false;
    }
    size_t need = b->len + n;
    if (need <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (p == NULL) {
        b->_oom = true;
        return false;
    }
    b->data = p;
    b->cap = cap;
    return true;
}

int wsh_jbuf_reserve(struct wsh_jbuf *b, size_t n)
{
    return buf_grow(b, n) ? WSH_OK : WSH_ENOMEM;
}

static inline void put(struct wsh_jbuf *b, const void *p, size_t n)
{
    if (n == 0)
        return;
    if (b->cap - b->len < n && !buf_grow(b, n))
        return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

#define PUT_LIT(b, s) put((b), (s), sizeof(s) - 1)

static void put_u64(struct wsh_jbuf *b, uint64_t v)
{
    char tmp[20];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    put(b, tmp + i, sizeof(tmp) - i);
}

static void put_i64(struct wsh_jbuf *b, int64_t v)
{
    if (v < 0) {
        PUT_LIT(b, "-");
        put_u64(b, (uint64_t)0 - (uint64_t)v);
    } else {
        put_u64(b, (uint64_t)v);
    }
}

/* Length of the valid UTF-8 sequence at p (RFC 3629 table, no overlongs,
 * no surrogates), or 0. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    unsigned char lo = 0x80, hi = 0xbf;
    size_t len;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else {
        return 0;
    }
    if (n < len || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    return len;
}

static bool plain(unsigned char c)
{
    return c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
}

void wsh_proto_put_string(struct wsh_jbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    /* Most strings need no escaping: one reservation, then runs of plain
     * bytes copied with memcpy. */
    if (b->cap - b->len < n + 2 && !buf_grow(b, n + 2))
        return;
    PUT_LIT(b, "\"");
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        while (run < n && plain(p[run]))
            run++;
        if (run > i) {
            put(b, p + i, run - i);
            i = run;
            if (i == n)
                break;
        }
        unsigned char c = p[i];
        if (c >= 0x80) {
            size_t k = utf8_seq(p + i, n - i);
            if (k == 0) {
                PUT_LIT(b, "\\ufffd");
                i++;
            } else {
                put(b, p + i, k);
                i += k;
            }
            continue;
        }
        char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
        switch (c) {
        case '"':
            PUT_LIT(b, "\\\"");
            break;
        case '\\':
            PUT_LIT(b, "\\\\");
            break;
        case '\b':
            PUT_LIT(b, "\\b");
            break;
        case '\f':
            PUT_LIT(b, "\\f");
            break;
        case '\n':
            PUT_LIT(b, "\\n");
            break;
        case '\r':
            PUT_LIT(b, "\\r");
            break;
        case '\t':
            PUT_LIT(b, "\\t");
            break;
        default:
            put(b, esc, sizeof(esc));
            break;
        }
        i++;
    }
    PUT_LIT(b, "\"");
}

static void put_opt_string(struct wsh_jbuf *b, const char *s, size_t n)
{
    if (s == NULL)
        PUT_LIT(b, "null");
    else
        wsh_proto_put_string(b, s, n);
}

static void put_json(struct wsh_jbuf *b, const char *j, size_t n)
{
    if (j == NULL || n == 0)
        PUT_LIT(b, "null");
    else
        put(b, j, n);
}

/* Days since 1970-01-01 to a civil date (H. Hinnant's algorithm, exact for
 * the proleptic Gregorian calendar). */
static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static void put2(char *o, unsigned v)
{
    o[0] = (char)('0' + v / 10);
    o[1] = (char)('0' + v % 10);
}

size_t wsh_proto_format_time(char *out, int64_t now_ms)
{
    /* RFC 3339 has four-digit years: clamp to 0000..9999. */
    const int64_t max_ms = INT64_C(253402300799999); /* 9999-12-31T23:59:59.999Z */
    if (now_ms < 0)
        now_ms = 0;
    if (now_ms > max_ms)
        now_ms = max_ms;
    int64_t secs = now_ms / 1000;
    unsigned ms = (unsigned)(now_ms % 1000);
    int64_t days = secs / 86400;
    unsigned sod = (unsigned)(secs % 86400);
    int64_t y;
    unsigned mo, d;
    civil_from_days(days, &y, &mo, &d);
    unsigned yy = (unsigned)y;
    put2(out, yy / 100);
    put2(out + 2, yy % 100);
    out[4] = '-';
    put2(out + 5, mo);
    out[7] = '-';
    put2(out + 8, d);
    out[10] = 'T';
    put2(out + 11, sod / 3600);
    out[13] = ':';
    put2(out + 14, sod / 60 % 60);
    out[16] = ':';
    put2(out + 17, sod % 60);
    out[19] = '.';
    out[20] = (char)('0' + ms / 100);
    put2(out + 21, ms % 100);
    out[23] = 'Z';
    return 24;
}

static int dump_cb(const char *p, size_t n, void *user)
{
    struct wsh_jbuf *b = user;
    put(b, p, n);
    return b->_oom ? -1 : 0;
}

int wsh_proto_payload_dump(const struct wsh_cmd *cmd, struct wsh_jbuf *b)
{
    size_t start = b->len;
    if (cmd->payload_raw != NULL)
        put(b, cmd->payload_raw, cmd->payload_raw_len);
    else if (cmd->payload == NULL)
        PUT_LIT(b, "null");
    else if (json_dump_callback(cmd->payload, dump_cb, b, JSON_COMPACT | JSON_ENCODE_ANY) != 0)
        b->_oom = true;
    if (b->_oom) {
        b->len = start < b->len ? start : b->len;
        return WSH_ENOMEM;
    }
    return WSH_OK;
}

/* ------------------------------------------------------------------ */
/* Server messages                                                     */

/* Opens `{"type":"<type>"[,"id":N][,"channel":"..."]` and remembers where
 * the message started so a failed encode leaves the buffer as it was. */
static size_t begin(struct wsh_jbuf *b, const char *type, size_t type_len, int64_t id,
                    const char *channel, size_t channel_len)
{
    size_t start = b->len;
    /* One reservation covers the common case of the whole envelope. */
    (void)buf_grow(b, 96 + type_len + channel_len);
    PUT_LIT(b, "{\"type\":\"");
    put(b, type, type_len);
    PUT_LIT(b, "\"");
    if (id >= 0) {
        PUT_LIT(b, ",\"id\":");
        put_i64(b, id);
    }
    if (channel != NULL) {
        PUT_LIT(b, ",\"channel\":");
        wsh_proto_put_string(b, channel, channel_len);
    }
    return start;
}

#define BEGIN(b, lit, id, ch, chn) begin((b), (lit), sizeof(lit) - 1, (id), (ch), (chn))

static int finish(struct wsh_jbuf *b, size_t start, int64_t now_ms)
{
    char ts[24];
    wsh_proto_format_time(ts, now_ms);
    PUT_LIT(b, ",\"timestamp\":\"");
    put(b, ts, sizeof(ts));
    PUT_LIT(b, "\"}");
    if (b->_oom) {
        if (b->len > start)
            b->len = start;
        return WSH_ENOMEM;
    }
    return WSH_OK;
}

int wsh_proto_encode_connected(struct wsh_jbuf *b, int64_t id, const char *client,
                               size_t client_len, const char *user, size_t user_len,
                               int64_t expires, int64_t now_ms)
{
    size_t start = BEGIN(b, "connected", id, NULL, 0);
    PUT_LIT(b, ",\"payload\":{\"client\":");
    put_opt_string(b, client, client_len);
    PUT_LIT(b, ",\"user\":");
    put_opt_string(b, user, user_len);
    PUT_LIT(b, ",\"expires\":");
    put_i64(b, expires);
    PUT_LIT(b, "}");
    return finish(b, start, now_ms);
}

int wsh_proto_encode_subscribed(struct wsh_jbuf *b, int64_t id, const char *channel,
                                size_t channel_len, uint64_t offset, const char *epoch,
                                size_t epoch_len, bool recovered, int64_t now_ms)
{
    size_t start = BEGIN(b, "subscribed", id, channel, channel_len);
    PUT_LIT(b, ",\"payload\":{\"offset\":");
    put_u64(b, offset);
    PUT_LIT(b, ",\"epoch\":");
    put_opt_string(b, epoch, epoch_len);
    if (recovered)
        PUT_LIT(b, ",\"recovered\":true}");
    else
        PUT_LIT(b, ",\"recovered\":false}");
    return finish(b, start, now_ms);
}

int wsh_proto_encode_unsubscribed(struct wsh_jbuf *b, int64_t id, const char *channel,
                                  size_t channel_len, int64_t now_ms)
{
    size_t start = BEGIN(b, "unsubscribed", id, channel, channel_len);
    PUT_LIT(b, ",\"payload\":{}");
    return finish(b, start, now_ms);
}

int wsh_proto_encode_ack(struct wsh_jbuf *b, int64_t id, const char *channel, size_t channel_len,
                         uint64_t offset, int64_t now_ms)
{
    size_t start = BEGIN(b, "ack", id, channel, channel_len);
    PUT_LIT(b, ",\"payload\":{\"offset\":");
    put_u64(b, offset);
    PUT_LIT(b, "}");
    return finish(b, start, now_ms);
}

static void put_who(struct wsh_jbuf *b, const struct wsh_presence_entry *w)
{
    PUT_LIT(b, "{\"user\":");
    put_opt_string(b, w->user, w->user_len);
    PUT_LIT(b, ",\"client\":");
    put_opt_string(b, w->client, w->client_len);
    PUT_LIT(b, ",\"info\":");
    put_json(b, w->info_json, w->info_json_len);
    PUT_LIT(b, "}");
}

int wsh_proto_encode_presence(struct wsh_jbuf *b, int64_t id, const char *channel,
                              size_t channel_len, uint64_t count,
                              const struct wsh_presence_entry *entries, size_t n, int64_t now_ms)
{
    size_t start = BEGIN(b, "presence", id, channel, channel_len);
    PUT_LIT(b, ",\"payload\":{\"count\":");
    put_u64(b, count);
    if (entries != NULL) {
        PUT_LIT(b, ",\"clients\":[");
        for (size_t i = 0; i < n; i++) {
            if (i > 0)
                PUT_LIT(b, ",");
            put_who(b, &entries[i]);
        }
        PUT_LIT(b, "]");
    }
    PUT_LIT(b, "}");
    return finish(b, start, now_ms);
}

int wsh_proto_encode_history(struct wsh_jbuf *b, int64_t id, const char *channel,
                             size_t channel_len, uint64_t offset, const char *epoch,
                             size_t epoch_len, const struct wsh_history_entry *msgs, size_t n,
                             int64_t now_ms)
{
    size_t start = BEGIN(b, "history", id, channel, channel_len);
    PUT_LIT(b, ",\"payload\":{\"offset\":");
    put_u64(b, offset);
    PUT_LIT(b, ",\"epoch\":");
    put_opt_string(b, epoch, epoch_len);
    PUT_LIT(b, ",\"messages\":[");
    for (size_t i = 0; msgs != NULL && i < n; i++) {
        char ts[24];
        if (i > 0)
            PUT_LIT(b, ",");
        PUT_LIT(b, "{\"offset\":");
        put_u64(b, msgs[i].offset);
        PUT_LIT(b, ",\"from\":");
        put_opt_string(b, msgs[i].from, msgs[i].from_len);
        PUT_LIT(b, ",\"payload\":");
        put_json(b, msgs[i].payload_json, msgs[i].payload_json_len);
        PUT_LIT(b, ",\"timestamp\":\"");
        put(b, ts, wsh_proto_format_time(ts, msgs[i].time_ms));
        PUT_LIT(b, "\"}");
    }
    PUT_LIT(b, "]}");
    return finish(b, start, now_ms);
}

int wsh_proto_encode_refreshed(struct wsh_jbuf *b, int64_t id, int64_t expires, int64_t now_ms)
{
    size_t start = BEGIN(b, "refreshed", id, NULL, 0);
    PUT_LIT(b, ",\"payload\":{\"expires\":");
    put_i64(b, expires);
    PUT_LIT(b, "}");
    return finish(b, start, now_ms);
}

int wsh_proto_encode_error(struct wsh_jbuf *b, int64_t id, const char *channel, size_t channel_len,
                           int code, const char *message, int64_t now_ms)
{
    if (message == NULL)
        message = wsh_proto_code_message(code);
    size_t start = BEGIN(b, "error", id, channel, channel_len);
    PUT_LIT(b, ",\"payload\":{\"code\":");
    put_i64(b, code);
    PUT_LIT(b, ",\"message\":");
    wsh_proto_put_string(b, message, strlen(message));
    PUT_LIT(b, "}");
    return finish(b, start, now_ms);
}

int wsh_proto_encode_message(struct wsh_jbuf *b, const char *channel, size_t channel_len,
                             uint64_t offset, const char *epoch, size_t epoch_len, const char *from,
                             size_t from_len, const char *payload_json, size_t payload_json_len,
                             int64_t now_ms)
{
    size_t start = b->len;
    /* Reserve for the common case (no escaping) so the payload copy does
     * not realloc in the middle. */
    if (!buf_grow(b, 128 + channel_len + epoch_len + from_len + payload_json_len))
        return WSH_ENOMEM;
    PUT_LIT(b, "{\"type\":\"message\",\"channel\":");
    wsh_proto_put_string(b, channel, channel_len);
    PUT_LIT(b, ",\"offset\":");
    put_u64(b, offset);
    PUT_LIT(b, ",\"epoch\":");
    put_opt_string(b, epoch, epoch_len);
    PUT_LIT(b, ",\"from\":");
    put_opt_string(b, from, from_len);
    PUT_LIT(b, ",\"payload\":");
    put_json(b, payload_json, payload_json_len);
    return finish(b, start, now_ms);
}

int wsh_proto_encode_signal(struct wsh_jbuf *b, const char *channel, size_t channel_len,
                            const char *from, size_t from_len, const char *payload_json,
                            size_t payload_json_len, int64_t now_ms)
{
    size_t start = BEGIN(b, "signal", WSH_PROTO_NO_ID, channel, channel_len);
    PUT_LIT(b, ",\"from\":");
    put_opt_string(b, from, from_len);
    PUT_LIT(b, ",\"payload\":");
    put_json(b, payload_json, payload_json_len);
    return finish(b, start, now_ms);
}

int wsh_proto_encode_join(struct wsh_jbuf *b, bool leave, const char *channel, size_t channel_len,
                          const struct wsh_presence_entry *who, int64_t now_ms)
{
    size_t start = leave ? BEGIN(b, "leave", WSH_PROTO_NO_ID, channel, channel_len)
                         : BEGIN(b, "join", WSH_PROTO_NO_ID, channel, channel_len);
    PUT_LIT(b, ",\"payload\":");
    if (who != NULL)
        put_who(b, who);
    else
        PUT_LIT(b, "{}");
    return finish(b, start, now_ms);
}

int wsh_proto_encode_read(struct wsh_jbuf *b, const char *channel, size_t channel_len,
                          const char *user, size_t user_len, uint64_t offset, int64_t now_ms)
{
    size_t start = BEGIN(b, "read", WSH_PROTO_NO_ID, channel, channel_len);
    PUT_LIT(b, ",\"payload\":{\"user\":");
    put_opt_string(b, user, user_len);
    PUT_LIT(b, ",\"offset\":");
    put_u64(b, offset);
    PUT_LIT(b, "}");
    return finish(b, start, now_ms);
}

int wsh_proto_encode_refresh_required(struct wsh_jbuf *b, int64_t expires, int64_t now_ms)
{
    size_t start = BEGIN(b, "refresh_required", WSH_PROTO_NO_ID, NULL, 0);
    PUT_LIT(b, ",\"payload\":{\"expires\":");
    put_i64(b, expires);
    PUT_LIT(b, "}");
    return finish(b, start, now_ms);
}

int wsh_proto_encode_lagged(struct wsh_jbuf *b, const char *channel, size_t channel_len,
                            uint64_t from_offset, const char *epoch, size_t epoch_len,
                            int64_t now_ms)
{
    size_t start = BEGIN(b, "lagged", WSH_PROTO_NO_ID, channel, channel_len);
    PUT_LIT(b, ",\"payload\":{\"from_offset\":");
    put_u64(b, from_offset);
    PUT_LIT(b, ",\"epoch\":");
    put_opt_string(b, epoch, epoch_len);
    PUT_LIT(b, "}");
    return finish(b, start, now_ms);
}

int wsh_proto_encode_disconnect(struct wsh_jbuf *b, unsigned code, const char *reason,
                                size_t reason_len, bool reconnect, uint64_t retry_after_ms,
                                int64_t now_ms)
{
    size_t start = BEGIN(b, "disconnect", WSH_PROTO_NO_ID, NULL, 0);
    PUT_LIT(b, ",\"payload\":{\"code\":");
    put_u64(b, code);
    PUT_LIT(b, ",\"reason\":");
    wsh_proto_put_string(b, reason ? reason : "", reason ? reason_len : 0);
    if (reconnect)
        PUT_LIT(b, ",\"reconnect\":true");
    else
        PUT_LIT(b, ",\"reconnect\":false");
    PUT_LIT(b, ",\"retry_after_ms\":");
    put_u64(b, retry_after_ms);
    PUT_LIT(b, "}");
    return finish(b, start, now_ms);
}
