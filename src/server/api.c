/* The HTTP API (DESIGN.md 6, docs/api.md) on /api/...: publish and
 * broadcast, presence, history, info and disconnect, for an application's
 * backend holding the configuration's api_key. This file reads requests
 * and writes JSON answers; the channels, the broker and the connections
 * are hub.c's (hub_publish, hub_list, hub_kick_local ...). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "server.h"
#include "wshub/auth.h"
#include "wshub/broker.h"
#include "wshub/json.h"
#include "wshub/libmem.h"
#include "wshub/proto.h"

static void api_json(struct worker *w, struct conn *c, int status, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (s == NULL) {
        route_respond(w, c, 500, "application/json", "{\"error\":\"internal\"}", 20);
    } else {
        route_respond(w, c, status, "application/json", s, strlen(s));
        free(s);
    }
    json_decref(j);
}

static void api_error(struct worker *w, struct conn *c, int status, const char *msg)
{
    api_json(w, c, status, json_pack("{s:s}", "error", msg));
}

/* Nothing was done for want of memory: 503 (Retry-After), from a body
 * that needs none, where api_error's would turn into a 500. */
static void api_no_memory(struct worker *w, struct conn *c)
{
    static const char body[] = "{\"error\":\"out of memory\"}";
    route_respond(w, c, 503, "application/json", body, sizeof(body) - 1);
}

/* 405 naming the one method the call takes, in Allow and in the error. */
static void api_not_allowed(struct worker *w, struct conn *c, const char *method)
{
    char body[64];
    int n = snprintf(body, sizeof(body), "{\"error\":\"use %s\"}", method);
    route_not_allowed(w, c, method, "application/json", body, (size_t)n);
}

/* The API key comes as "Authorization: apikey <key>" or "X-API-Key". It is
 * compared in constant time (docs/auth.md). An empty one is none (401). */
static int api_authorized(const struct wsh_http_request *req)
{
    const struct wsh_http_header *h = wsh_http_find(req, "X-API-Key");
    const char *k = NULL;
    size_t n = 0;
    if (h != NULL && h->value_len > 0) {
        k = h->value;
        n = h->value_len;
    } else if ((h = wsh_http_find(req, "Authorization")) != NULL && h->value_len > 7 &&
               strncasecmp(h->value, "apikey", 6) == 0 &&
               (h->value[6] == ' ' || h->value[6] == '\t')) {
        /* RFC 9110 11.4: the scheme, then one or more spaces (1*SP; tabs
         * taken too); the field value has no trailing white space. */
        k = h->value + 7;
        n = h->value_len - 7;
        while (n > 0 && (*k == ' ' || *k == '\t')) {
            k++;
            n--;
        }
    }
    if (k == NULL || n == 0)
        return 401;
    const char *key = hub_api_key();
    return key != NULL && wsh_auth_apikey_equal(key, strlen(key), k, n) ? 0 : 403;
}

/* A publish or broadcast in progress. A broadcast reaches up to 1000
 * channels with one body of up to 64 KiB: published in one go it could put
 * 64 MB into the workers' inboxes within one turn, far past their bound
 * (chan.c, INBOX_HIGH) and past what a subscriber's queue takes in a turn.
 * So it is published only as far as the inboxes take it; the rest waits
 * in this record, the request itself held in its connection's carry
 * (worker.c), and goes on once the inbox that filled has been taken in.
 * A worker keeps its held requests' records in a list: there are few, and
 * a connection record stays without a field for them. */
struct api_job {
    struct api_job *next;
    const struct conn *c;
    json_t *chans;   /* the channel names, every one checked */
    json_t *msg_id;  /* the request's string, NULL when none */
    json_t *offsets; /* one per channel published so far */
    char *payload;   /* the payload's JSON text, encoded once */
    size_t plen;
    size_t done; /* channels published */
};

static struct api_job **api_job_link(struct worker *w, const struct conn *c)
{
    struct api_job **j = &w->api_jobs;
    while (*j != NULL && (*j)->c != c)
        j = &(*j)->next;
    return j;
}

void api_forget(struct worker *w, const struct conn *c)
{
    struct api_job **link = api_job_link(w, c);
    struct api_job *j = *link;
    if (j == NULL)
        return;
    *link = j->next;
    json_decref(j->chans);
    json_decref(j->msg_id);
    json_decref(j->offsets);
    free(j->payload);
    free(j);
}

/* Validates a publish or broadcast body into a job, or answers 400. Every
 * channel is checked before the first is published: a bad one publishes
 * nothing, and the answer names it. */
static struct api_job *api_job_new(struct worker *w, struct conn *c, json_t *j, bool one)
{
    unsigned long jfail = wsh_libmem_failures();
    json_t *payload = json_object_get(j, "payload");
    json_t *mid = json_object_get(j, "msg_id");
    json_t *chans = one ? json_pack("[O]", json_object_get(j, "channel"))
                        : json_incref(json_object_get(j, "channels"));
    struct api_job *job = calloc(1, sizeof(*job));
    int err = 0;
    const char *bad = NULL;
    size_t i;
    json_t *v;
    if (job == NULL) {
        json_decref(chans);
        api_no_memory(w, c);
        return NULL;
    }
    if (!json_is_array(chans) || json_array_size(chans) == 0 || json_array_size(chans) > 1000 ||
        payload == NULL ||
        (mid && (!json_is_string(mid) ||
                 !wsh_proto_msg_id_ok(json_string_value(mid), json_string_length(mid),
                                      WSH_PROTO_DEFAULT_MAX_MSG_ID))))
        err = WSH_PERR_BAD_FIELD;
    json_array_foreach(chans, i, v)
    {
        if (err)
            break;
        if (!json_is_string(v))
            err = WSH_PERR_BAD_FIELD;
        else if ((err = hub_channel_check(json_string_value(v))) != 0)
            bad = json_string_value(v);
    }
    if (err && wsh_libmem_failures() != jfail) {
        /* "channel" made into a list is what failed: not the body's fault */
        api_no_memory(w, c);
        free(job);
        job = NULL;
    } else if (!err) {
        job->c = c;
        job->chans = json_incref(chans);
        job->offsets = json_array();
        job->payload = json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY);
        job->plen = job->payload != NULL ? strlen(job->payload) : 0;
        job->msg_id = json_incref(mid);
        job->next = w->api_jobs;
        w->api_jobs = job;
        /* (json_dumps fails whole on a failed allocation, but nothing of
         * this job is trusted after one.) */
        if (job->offsets == NULL || job->payload == NULL || wsh_libmem_failures() != jfail) {
            api_forget(w, c);
            job = NULL;
            api_no_memory(w, c); /* nothing published yet */
        }
    } else {
        json_t *e = json_pack("{s:i,s:s}", "code", err, "error", wsh_proto_code_message(err));
        if (bad != NULL && e != NULL)
            json_object_set_new(e, "channel", json_string(bad));
        api_json(w, c, 400, e);
        free(job);
        job = NULL;
    }
    json_decref(chans);
    return job;
}

/* Answers status with {code, error, offsets}: the offsets of the channels
 * c's job published before it ended short (none without a job), and
 * forgets the job. */
static void api_job_fail(struct worker *w, struct conn *c, int status, int code, const char *msg)
{
    struct api_job *job = *api_job_link(w, c);
    json_t *e = json_pack("{s:i,s:s,s:o}", "code", code, "error", msg, "offsets",
                          job ? json_incref(job->offsets) : json_array());
    api_forget(w, c);
    api_json(w, c, status, e);
}

/* Publishes the job's channels until done or an inbox is full; returns
 * API_HELD in the second case, with the job kept. A broker error
 * midway answers with the offsets of the channels published before it. */
static int api_job_run(struct worker *w, struct conn *c, struct api_job *job)
{
    size_t n = json_array_size(job->chans);
    w->inbox_full = false;
    while (job->done < n) {
        if (job->done > 0 && (w->inbox_full || inbox_own_full_wait(w))) {
            wsh_log(WSH_LOG_DEBUG, "conn=%u ev=broadcast_paused published=%zu of=%zu", c->id,
                    job->done, n);
            return API_HELD;
        }
        uint64_t off = 0;
        int err = hub_publish(json_string_value(json_array_get(job->chans, job->done)),
                              job->payload, job->plen, json_string_value(job->msg_id), &off);
        if (err) {
            /* The broker's failures, memory and limits.max_channels
             * included, are ours: 503, to be retried; the rest are the
             * request's. */
            bool ours = err == WSH_PERR_UNAVAILABLE || err == WSH_PERR_INTERNAL ||
                        err == WSH_PERR_LIMIT_EXCEEDED;
            api_job_fail(w, c, ours ? 503 : 400, err, wsh_proto_code_message(err));
            return 0;
        }
        job->done++;
        if (json_array_append_new(job->offsets, json_integer((json_int_t)off)) != 0) {
            /* Published, but its offset cannot be told: not a 503, which
             * would have the caller publish it again. */
            api_job_fail(w, c, 500, WSH_PERR_INTERNAL, "out of memory");
            return 0;
        }
    }
    json_t *ok = json_pack("{s:O}", "offsets", job->offsets);
    api_forget(w, c);
    api_json(w, c, 200, ok);
    return 0;
}

void api_expired(struct worker *w, struct conn *c, const char *why)
{
    char msg[128];
    snprintf(msg, sizeof(msg), "%s: not done, or published only where offsets says", why);
    api_job_fail(w, c, 503, WSH_PERR_UNAVAILABLE, msg);
}

/* Returns false when a worker could not be told (out of memory): its
 * connections of the user stay open. */
static bool api_kick(struct worker *w, const char *who)
{
    /* Every worker closes its own connections of the user; the others get
     * the user id through their inbox. */
    bool all = true;
    for (int i = 0; i < wsh_nworkers; i++) {
        if (i == w->id)
            continue;
        struct wsh_buf *b = wsh_buf_new(strlen(who) + 1);
        if (b == NULL) {
            all = false;
            continue;
        }
        memcpy(b->data, who, strlen(who) + 1);
        b->end = (uint32_t)strlen(who) + 1;
        struct xmsg m = { .buf = b, .kind = XMSG_KICK };
        all &= inbox_push(&wsh_workers[i], &m);
        w->wake[i] = true;
    }
    hub_kick_local(w, who, 4501, "disconnected by the server");
    return all;
}

static void api_list(struct worker *w, struct conn *c, const char *channel, bool presence,
                     size_t limit)
{
    struct wsh_jbuf b;
    wsh_jbuf_init(&b);
    /* The reply is the same JSON a /ws client gets for the command. */
    int rc = hub_list(channel, presence, limit, &b);
    if (rc == 0) {
        route_respond(w, c, 200, "application/json", b.data, b.len);
    } else if (rc == WSH_PERR_INTERNAL) {
        api_error(w, c, 500, "internal");
    } else {
        /* The URL names no such channel (an unknown namespace: 404), or
         * not one of its own: a bad name, or a namespace without it. The
         * name is said back unless it is not UTF-8 (decoded from %XX). */
        json_t *j = json_pack("{s:i,s:s}", "code", rc, "error", wsh_proto_code_message(rc));
        json_t *name = json_string(channel);
        if (j == NULL) {
            json_decref(name);
        } else if (name != NULL && json_object_set_new(j, "channel", name) != 0) {
            json_decref(j); /* out of memory: 500 */
            j = NULL;
        }
        api_json(w, c, rc == WSH_PERR_UNKNOWN_NAMESPACE ? 404 : 400, j);
    }
    wsh_jbuf_free(&b);
}

#define ROUTE(lit)  (n == sizeof(lit) - 1 && memcmp(p, lit, n) == 0)
#define PREFIX(lit) (n > sizeof(lit) - 1 && memcmp(p, lit, sizeof(lit) - 1) == 0)

/* The limit=N parameter of the query, wherever it is among the others;
 * false when it is there but not all digits. Larger than any history, a
 * big N saturates. */
static bool query_limit(const struct wsh_http_request *req, size_t *limit)
{
    const char *q = req->query, *end = q ? q + req->query_len : NULL;
    while (q != NULL && q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *next = amp ? amp : end;
        if (next - q >= 6 && memcmp(q, "limit=", 6) == 0) {
            const char *d = q + 6;
            if (d == next)
                return false;
            size_t v = 0;
            for (; d < next; d++) {
                if (*d < '0' || *d > '9')
                    return false;
                v = v > (SIZE_MAX - 9) / 10 ? SIZE_MAX - 1 : v * 10 + (size_t)(*d - '0');
            }
            *limit = v;
            return true;
        }
        q = amp ? amp + 1 : end;
    }
    return true;
}

/* The method a call under /api/ takes, from the rest of its path p[0..n);
 * NULL for no call. */
static const char *api_method(const char *p, size_t n)
{
    if (PREFIX("presence/") || PREFIX("history/") || ROUTE("info"))
        return "GET";
    if (ROUTE("publish") || ROUTE("broadcast") || ROUTE("disconnect"))
        return "POST";
    return NULL;
}

bool api_head_refused(struct worker *w, struct conn *c, const struct wsh_http_request *req)
{
    if (hub_api_key() == NULL) {
        api_error(w, c, 404, "the HTTP API is off: no api_key in the configuration");
        return true;
    }
    int st = api_authorized(req);
    if (st == 401) {
        /* RFC 9110 11.6.1: a 401 names the scheme it wants, here the
         * "Authorization: apikey <key>" of docs/api.md. */
        static const char body[] = "{\"error\":\"API key required\"}";
        route_respond_extra(w, c, 401, "application/json", "WWW-Authenticate: apikey\r\n", body,
                            sizeof(body) - 1);
        return true;
    }
    if (st != 0) {
        api_error(w, c, st, "bad API key");
        return true;
    }
    const char *m = api_method(req->path + 5, req->path_len - 5);
    if (m == NULL) {
        api_error(w, c, 404, "not found");
        return true;
    }
    if (!route_method_is(req, m)) {
        api_not_allowed(w, c, m);
        return true;
    }
    return false;
}

int api_request(struct worker *w, struct conn *c, const struct wsh_http_request *req,
                const uint8_t *body, size_t blen)
{
    struct api_job *job = *api_job_link(w, c);
    if (job != NULL)
        return api_job_run(w, c, job); /* held midway, now released */
    if (api_head_refused(w, c, req))
        return 0;
    /* A POST publishes (or disconnects) through the inboxes: while one is
     * over its bound the request waits, whole, in the carry, and is
     * answered once that worker has caught up, so a backend that
     * publishes faster than the workers deliver is slowed by its own
     * response times (chan.c, INBOX_HIGH). Only once its head passed: a
     * request without the key, or for no call, was kept waiting before,
     * and at the deadline told 503 (try again) instead of 401 or 404. */
    if (route_method_is(req, "POST") && inbox_busy_wait(w))
        return API_WAIT;
    const char *p = req->path + 5;
    size_t n = req->path_len - 5;
    char chan[WSH_BROKER_NAME_MAX + 1];
    if (PREFIX("presence/") || PREFIX("history/")) {
        /* The name percent-decoded: a personal channel's '#' (inbox#42)
         * must be sent as %23, or curl and fetch end the target there and
         * ask for another channel. */
        size_t pl = p[0] == 'p' ? 9 : 8;
        ssize_t cl = wsh_http_pct_decode(p + pl, n - pl, chan, WSH_BROKER_NAME_MAX);
        if (cl < 0) {
            /* As a bad name of any length is answered (api_list), less
             * the name itself. */
            api_json(w, c, 400,
                     json_pack("{s:i,s:s}", "code", WSH_PERR_BAD_CHANNEL, "error",
                               wsh_proto_code_message(WSH_PERR_BAD_CHANNEL)));
            return 0;
        }
        chan[cl] = '\0';
        size_t limit = HUB_LIST_ALL;
        if (!query_limit(req, &limit)) {
            api_error(w, c, 400, "bad limit: digits expected");
            return 0;
        }
        api_list(w, c, chan, pl == 9, limit);
        return 0;
    }
    if (ROUTE("info")) {
        struct wsh_broker_info i;
        json_t *b = NULL;
        if (hub_broker_info(&i) == WSH_OK)
            b = json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:I}", "engine", i.engine, "channels",
                          (json_int_t)i.channels, "subscriptions", (json_int_t)i.subscriptions,
                          "presence", (json_int_t)i.presence, "history_messages",
                          (json_int_t)i.history_messages, "published", (json_int_t)i.published,
                          "duplicates", (json_int_t)i.duplicates);
        if (b == NULL) {
            api_error(w, c, 500, "internal");
            return 0;
        }
        api_json(w, c, 200,
                 json_pack("{s:s,s:I,s:i,s:o}", "version", WSH_VERSION, "connections",
                           (json_int_t)atomic_load(&wsh_total_conns), "workers", wsh_nworkers,
                           "broker", b));
        return 0;
    }
    /* Nested no deeper than a /ws message may be (limits.json_depth),
     * checked before jansson's recursive parser: a payload published here
     * reaches /ws subscribers like theirs. */
    if (!wsh_proto_depth_ok((const char *)body, blen, hub_json_depth())) {
        api_json(w, c, 400,
                 json_pack("{s:i,s:s}", "code", WSH_PERR_TOO_DEEP, "error",
                           wsh_proto_code_message(WSH_PERR_TOO_DEEP)));
        return 0;
    }
    json_error_t jerr;
    bool oom;
    json_t *j = wsh_json_loadb((const char *)body, blen, JSON_REJECT_DUPLICATES, &jerr, &oom);
    if (j == NULL && oom) {
        api_no_memory(w, c);
        return 0;
    }
    if (j == NULL || !json_is_object(j)) {
        json_decref(j);
        api_error(w, c, 400, "the body must be a JSON object");
        return 0;
    }
    if (ROUTE("publish") || ROUTE("broadcast")) {
        job = api_job_new(w, c, j, ROUTE("publish"));
        json_decref(j);
        return job ? api_job_run(w, c, job) : 0;
    }
    if (ROUTE("disconnect")) {
        /* {"user": U, "revoke_s"?: N} closes every connection of U (4501)
         * and, with revoke_s, refuses U's tokens for N seconds;
         * {"jti": T, "revoke_s"?: N} does the same for one token id, refused
         * for N seconds (default a day: past any sensible token expiry). */
        json_t *u = json_object_get(j, "user");
        json_t *t = json_object_get(j, "jti");
        json_t *r = json_object_get(j, "revoke_s");
        json_t *id = u ? u : t;
        if ((u != NULL) == (t != NULL) || !json_is_string(id) || json_string_length(id) == 0 ||
            json_string_length(id) > WSH_AUTH_SUB_MAX ||
            (r && (!json_is_integer(r) || json_integer_value(r) < 0 ||
                   json_integer_value(r) > 30 * 86400))) {
            json_decref(j);
            api_error(w, c, 400, "one of user or jti (string), and revoke_s (seconds) optional");
            return 0;
        }
        char who[WSH_AUTH_SUB_MAX + 2];
        snprintf(who, sizeof(who), "%c%s", u ? 'u' : 'j', json_string_value(id));
        int64_t secs = r ? json_integer_value(r) : (t ? 86400 : 0);
        int rc = secs > 0 ? hub_revoke(who, secs) : WSH_OK;
        if (rc != WSH_OK) {
            json_decref(j);
            if (rc == WSH_ENOMEM)
                api_no_memory(w, c);
            else
                api_error(w, c, 503, "revocation list full");
            return 0;
        }
        json_decref(j);
        if (!api_kick(w, who)) {
            /* The revocation, if any, holds; the same call again closes
             * what is left. */
            api_no_memory(w, c);
            return 0;
        }
        api_json(w, c, 200, json_pack("{s:b,s:I}", "ok", 1, "revoked_s", (json_int_t)secs));
        return 0;
    }
    json_decref(j);
    api_error(w, c, 404, "not found");
    return 0;
}
#undef ROUTE
#undef PREFIX
