/* Unit tests for the broker interface and its memory engine
 * (src/broker/memory.c): offsets, history size and TTL, recovery, msg_id
 * de-duplication, presence, read cursors, sweep and epochs, and a
 * multi-threaded publish storm. Run under ASan (-DWSH_SANITIZE=ON) the
 * leak check at exit proves destroy frees everything. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka.h needs the three headers above. */
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wshub/broker.h"

#define MAXM 64

/* A deep copy of one result, taken inside the callback (results are
 * borrowed until it returns). */
struct got {
    int calls;
    struct wsh_broker_result r;
    char epoch[WSH_BROKER_EPOCH_LEN + 1];
    uint64_t off[MAXM];
    char payload[MAXM][64];
    char from[MAXM][32];
    char client[MAXM][32];
    char user[MAXM][32];
    char info[MAXM][32];
    struct wsh_broker_channel_stats stats;
    struct wsh_broker_info info_all;
};

static void grab(const struct wsh_broker_result *r, void *user)
{
    struct got *g = user;
    g->calls++;
    g->r = *r;
    memcpy(g->epoch, r->epoch, sizeof(g->epoch));
    for (size_t i = 0; i < r->nmsgs && i < MAXM; i++) {
        g->off[i] = r->msgs[i].offset;
        snprintf(g->payload[i], sizeof(g->payload[i]), "%.*s", (int)r->msgs[i].payload_len,
                 r->msgs[i].payload);
        snprintf(g->from[i], sizeof(g->from[i]), "%s", r->msgs[i].from);
    }
    for (size_t i = 0; i < r->nmembers && i < MAXM; i++) {
        snprintf(g->client[i], sizeof(g->client[i]), "%s", r->members[i].client);
        snprintf(g->user[i], sizeof(g->user[i]), "%s", r->members[i].user);
        snprintf(g->info[i], sizeof(g->info[i]), "%.*s", (int)r->members[i].info_len,
                 r->members[i].info);
    }
    if (r->stats != NULL)
        g->stats = *r->stats;
    if (r->info != NULL)
        g->info_all = *r->info;
    /* Pointers die with the callback. */
    g->r.msgs = NULL;
    g->r.members = NULL;
    g->r.stats = NULL;
    g->r.info = NULL;
    g->r.channel = NULL;
}

static const struct wsh_broker_publish_opts HIST10 = { 10, 0, 0 };

static struct wsh_broker *mk(const struct wsh_broker_memory_opts *o)
{
    struct wsh_broker *b = NULL;
    assert_int_equal(wsh_broker_memory_create(o, &b), WSH_OK);
    assert_non_null(b);
    return b;
}

/* Publishes and returns the result through g. */
static int pub_full(struct wsh_broker *b, const char *ch, const char *payload, const char *msg_id,
                    const char *from, int64_t now, struct wsh_broker_publish_opts o, struct got *g)
{
    struct wsh_broker_publish_req req = {
        .channel = ch,
        .payload = payload,
        .payload_len = payload != NULL ? strlen(payload) : 0,
        .msg_id = msg_id,
        .from = from,
        .now_ms = now,
        .opts = o,
    };
    memset(g, 0, sizeof(*g));
    return wsh_broker_publish(b, &req, grab, g);
}

static uint64_t pub(struct wsh_broker *b, const char *ch, const char *payload, int64_t now,
                    struct wsh_broker_publish_opts o)
{
    struct got g;
    assert_int_equal(pub_full(b, ch, payload, NULL, "u1", now, o, &g), WSH_OK);
    assert_int_equal(g.calls, 1); /* memory: inside the call */
    assert_false(g.r.duplicate);
    return g.r.offset;
}

static void history(struct wsh_broker *b, const char *ch, bool has_since, uint64_t since,
                    size_t limit, int64_t now, struct got *g)
{
    struct wsh_broker_history_req req = { ch, has_since, since, limit, now };
    memset(g, 0, sizeof(*g));
    assert_int_equal(wsh_broker_history(b, &req, grab, g), WSH_OK);
    assert_int_equal(g->calls, 1);
}

static void recover(struct wsh_broker *b, const char *ch, uint64_t off, const char *epoch,
                    int64_t now, struct got *g)
{
    memset(g, 0, sizeof(*g));
    assert_int_equal(wsh_broker_recover(b, ch, off, epoch, now, grab, g), WSH_OK);
    assert_int_equal(g->calls, 1);
}

static struct wsh_broker_info info(struct wsh_broker *b)
{
    struct got g = { 0 };
    assert_int_equal(wsh_broker_info(b, grab, &g), WSH_OK);
    return g.info_all;
}

static void test_broker_offsets_monotonic(void **state)
{
    (void)state;
    struct wsh_broker *b = mk(NULL);
    assert_string_equal(wsh_broker_engine(b), "memory");
    struct got g;
    char epoch[WSH_BROKER_EPOCH_LEN + 1];
    for (uint64_t i = 1; i <= 100; i++) {
        assert_int_equal(pub_full(b, "chat:a", "{}", NULL, NULL, 0, HIST10, &g), WSH_OK);
        assert_int_equal(g.r.offset, i);
        assert_int_equal(strlen(g.epoch), WSH_BROKER_EPOCH_LEN);
        if (i == 1)
            memcpy(epoch, g.epoch, sizeof(epoch));
        assert_string_equal(g.epoch, epoch);
    }
    /* Channels are independent, with their own epochs. */
    assert_int_equal(pub_full(b, "chat:b", "{}", NULL, NULL, 0, HIST10, &g), WSH_OK);
    assert_int_equal(g.r.offset, 1);
    assert_string_not_equal(g.epoch, epoch);
    wsh_broker_destroy(b);
}

static void test_broker_history_order_and_size(void **state)
{
    (void)state;
    struct wsh_broker *b = mk(NULL);
    struct wsh_broker_publish_opts o = { 5, 0, 0 };
    char p[16];
    for (int i = 1; i <= 10; i++) {
        snprintf(p, sizeof(p), "%d", i);
        pub(b, "c", p, 0, o);
    }
    struct got g;
    history(b, "c", false, 0, 0, 0, &g);
    assert_int_equal(g.r.nmsgs, 5);
    assert_int_equal(g.r.offset, 10);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(g.off[i], 6 + i);
        snprintf(p, sizeof(p), "%d", 6 + i);
        assert_string_equal(g.payload[i], p);
        assert_string_equal(g.from[i], "u1");
    }
    history(b, "c", true, 7, 0, 0, &g); /* after 7 */
    assert_int_equal(g.r.nmsgs, 3);
    assert_int_equal(g.off[0], 8);
    assert_int_equal(g.off[2], 10);
    history(b, "c", false, 0, 2, 0, &g); /* the newest 2 */
    assert_int_equal(g.r.nmsgs, 2);
    assert_int_equal(g.off[0], 9);
    assert_int_equal(g.off[1], 10);
    history(b, "c", true, 2, 2, 0, &g); /* since before the ring: oldest 2 kept */
    assert_int_equal(g.r.nmsgs, 2);
    assert_int_equal(g.off[0], 6);
    assert_int_equal(g.off[1], 7);
    history(b, "c", true, 10, 0, 0, &g);
    assert_int_equal(g.r.nmsgs, 0);
    history(b, "nope", false, 0, 0, 0, &g); /* no state: empty, no epoch */
    assert_int_equal(g.r.nmsgs, 0);
    assert_string_equal(g.epoch, "");

    /* A smaller history_size keeps the newest messages. */
    o.history_size = 3;
    pub(b, "c", "11", 0, o);
    history(b, "c", false, 0, 0, 0, &g);
    assert_int_equal(g.r.nmsgs, 3);
    assert_int_equal(g.off[0], 9);
    assert_int_equal(g.off[2], 11);
    wsh_broker_destroy(b);
}

static void test_broker_history_ttl(void **state)
{
    (void)state;
    struct wsh_broker *b = mk(NULL);
    struct wsh_broker_publish_opts o = { 10, 1000, 0 };
    pub(b, "c", "a", 0, o);
    pub(b, "c", "b", 500, o);
    pub(b, "c", "c", 900, o);
    struct got g;
    history(b, "c", false, 0, 0, 999, &g);
    assert_int_equal(g.r.nmsgs, 3);
    history(b, "c", false, 0, 0, 1200, &g);
    assert_int_equal(g.r.nmsgs, 2);
    assert_int_equal(g.off[0], 2);
    history(b, "c", false, 0, 0, 2000, &g);
    assert_int_equal(g.r.nmsgs, 0);
    assert_int_equal(g.r.offset, 3); /* the offset survives its messages */
    assert_int_equal(pub(b, "c", "d", 2000, o), 4);
    wsh_broker_destroy(b);
}

static void test_broker_no_history_still_advances(void **state)
{
    (void)state;
    struct wsh_broker *b = mk(NULL);
    struct wsh_broker_publish_opts o = { 0, 0, 0 };
    assert_int_equal(pub(b, "c", "a", 0, o), 1);
    assert_int_equal(pub(b, "c", "b", 0, o), 2);
    struct got g;
    history(b, "c", false, 0, 0, 0, &g);
    assert_int_equal(g.r.nmsgs, 0);
    char epoch[WSH_BROKER_EPOCH_LEN + 1];
    memcpy(epoch, g.epoch, sizeof(epoch));
    recover(b, "c", 1, epoch, 0, &g);
    assert_false(g.r.recovered);
    recover(b, "c", 2, epoch, 0, &g); /* nothing missed: fine */
    assert_true(g.r.recovered);
    assert_int_equal(g.r.nmsgs, 0);
    wsh_broker_destroy(b);
}

static void test_broker_recover_same_epoch(void **state)
{
    (void)state;
    struct wsh_broker *b = mk(NULL);
    char p[16];
    for (int i = 1; i <= 5; i++) {
        snprintf(p, sizeof(p), "\"m%d\"", i);
        pub(b, "c", p, 0, HIST10);
    }
    struct got g;
    history(b, "c", false, 0, 1, 0, &g);
    char epoch[WSH_BROKER_EPOCH_LEN + 1];
    memcpy(epoch, g.epoch, sizeof(epoch));

    recover(b, "c", 2, epoch, 0, &g);
    assert_true(g.r.recovered);
    assert_string_equal(g.epoch, epoch);
    assert_int_equal(g.r.offset, 5);
    assert_int_equal(g.r.nmsgs, 3);
    assert_int_equal(g.off[0], 3);
    assert_int_equal(g.off[1], 4);
    assert_int_equal(g.off[2], 5);
    assert_string_equal(g.payload[0], "\"m3\"");
    assert_string_equal(g.payload[2], "\"m5\"");

    recover(b, "c", 5, epoch, 0, &g); /* up to date */
    assert_true(g.r.recovered);
    assert_int_equal(g.r.nmsgs, 0);
    recover(b, "c", 0, epoch, 0, &g); /* saw nothing; all 5 still kept */
    assert_true(g.r.recovered);
    assert_int_equal(g.r.nmsgs, 5);
    recover(b, "c", 6, epoch, 0, &g); /* ahead of the channel */
    assert_false(g.r.recovered);
    assert_int_equal(g.r.nmsgs, 0);
    wsh_broker_destroy(b);
}

static void test_broker_recover_gap(void **state)
{
    (void)state;
    struct wsh_broker *b = mk(NULL);
    struct wsh_broker_publish_opts o = { 3, 1000, 0 };
    for (int i = 1; i <= 10; i++)
        pub(b, "c", "x", 0, o);
    struct got g;
    history(b, "c", false, 0, 0, 0, &g);
    char epoch[WSH_BROKER_EPOCH_LEN + 1];
    memcpy(epoch, g.epoch, sizeof(epoch));

    recover(b, "c", 5, epoch, 0, &g); /* 6 and 7 trimmed by size */
    assert_false(g.r.recovered);
    assert_int_equal(g.r.nmsgs, 0);
    assert_int_equal(g.r.offset, 10);
    assert_string_equal(g.epoch, epoch);
    recover(b, "c", 6, epoch, 0, &g); /* 7 gone too */
    assert_false(g.r.recovered);
    recover(b, "c", 7, epoch, 0, &g); /* 8..10 kept */
    assert_true(g.r.recovered);
    assert_int_equal(g.r.nmsgs, 3);
    assert_int_equal(g.off[0], 8);

    /* A gap by TTL: everything expired, the channel moved on. */
    recover(b, "c", 7, epoch, 5000, &g);
    assert_false(g.r.recovered);
    recover(b, "c", 10, epoch, 5000, &g);
    assert_true(g.r.recovered);
    wsh_broker_destroy(b);
}

static void test_broker_recover_wrong_epoch(void **state)
{
    (void)state;
    struct wsh_broker *b = mk(NULL);
    struct got g;
    recover(b, "c", 3, "0123456789abcdef", 0, &g); /* no state at all */
    assert_false(g.r.recovered);
    assert_string_equal(g.epoch, "");
    assert_int_equal(g.r.offset, 0);

    for (int i = 0; i < 5; i++)
        pub(b, "c", "x", 0, HIST10);
    recover(b, "c", 3, "0123456789abcdef", 0, &g);
    assert_false(g.r.recovered);
    assert_int_equal(g.r.nmsgs, 0);
    assert_int_equal(strlen(g.epoch), WSH_BROKER_EPOCH_LEN);
    assert_string_not_equal(g.epoch, "0123456789abcdef");
    assert_int_equal(g.r.offset, 5);
    recover(b, "c", 3, "", 0, &g);
    assert_false(g.r.recovered);
    wsh_broker_destroy(b);
}

static int delivered;

static void count_msg(const char *channel, const char *epoch, const struct wsh_broker_msg *m,
                      void *user)
{
    (void)channel;
    (void)epoch;
    (void)user;
    (void)m;
    delivered++;
}

static void test_broker_dedup_within_window(void **state)
{
    (void)state;
    struct wsh_broker_memory_opts mo = { .on_message = count_msg };
    struct wsh_broker *b = mk(&mo);
    delivered = 0;
    assert_int_equal(wsh_broker_subscribe(b, "c", NULL, NULL), WSH_OK);
    struct wsh_broker_publish_opts o = { 10, 0, 60000 };
    struct got g;
    pub(b, "c", "first", 0, o);
    assert_int_equal(pub_full(b, "c", "hi", "m-1", "alice", 100, o, &g), WSH_OK);
    assert_int_equal(g.r.offset, 2);
    assert_false(g.r.duplicate);
    assert_int_equal(delivered, 2);

    /* The retry: same sender, same msg_id, within the window. */
    assert_int_equal(pub_full(b, "c", "hi", "m-1", "alice", 30000, o, &g), WSH_OK);
    assert_int_equal(g.calls, 1);
    assert_true(g.r.duplicate);
    assert_int_equal(g.r.offset, 2);
    assert_int_equal(strlen(g.epoch), WSH_BROKER_EPOCH_LEN);
    assert_int_equal(delivered, 2); /* not delivered twice */
    history(b, "c", false, 0, 0, 30000, &g);
    assert_int_equal(g.r.nmsgs, 2); /* not stored twice */
    assert_int_equal(g.r.offset, 2);

    /* Another sender's msg_id never collides with alice's. */
    assert_int_equal(pub_full(b, "c", "hi", "m-1", "mallory", 30000, o, &g), WSH_OK);
    assert_false(g.r.duplicate);
    assert_int_equal(g.r.offset, 3);
    assert_int_equal(wsh_broker_info(b, grab, &g), WSH_OK);
    assert_int_equal(g.info_all.duplicates, 1);
    assert_int_equal(g.info_all.published, 3);
    assert_int_equal(wsh_broker_unsubscribe(b, "c", NULL, NULL), WSH_OK);
    wsh_broker_destroy(b);
}

static void test_broker_dedup_after_window(void **state)
{
    (void)state;
    struct wsh_broker_memory_opts mo = { .dedup_max = 3 };
    struct wsh_broker *b = mk(&mo);
    struct wsh_broker_publish_opts o = { 10, 0, 1000 };
    struct got g;
    assert_int_equal(pub_full(b, "c", "x", "a", "u", 0, o, &g), WSH_OK);
    assert_int_equal(g.r.offset, 1);
    assert_int_equal(pub_full(b, "c", "x", "a", "u", 999, o, &g), WSH_OK);
    assert_true(g.r.duplicate);
    assert_int_equal(pub_full(b, "c", "x", "a", "u", 1000, o, &g), WSH_OK);
    assert_false(g.r.duplicate); /* the window has passed */
    assert_int_equal(g.r.offset, 2);

    /* The count bound: a fourth id pushes the oldest out. */
    assert_int_equal(pub_full(b, "c", "x", "b", "u", 1000, o, &g), WSH_OK);
    assert_int_equal(pub_full(b, "c", "x", "c", "u", 1000, o, &g), WSH_OK);
    assert_int_equal(pub_full(b, "c", "x", "d", "u", 1000, o, &g), WSH_OK);
    assert_int_equal(g.r.offset, 5);
    memset(&g, 0, sizeof(g));
    assert_int_equal(wsh_broker_channel_stats(b, "c", 1000, grab, &g), WSH_OK);
    assert_int_equal(g.stats.dedup_ids, 3);
    assert_int_equal(pub_full(b, "c", "x", "a", "u", 1000, o, &g), WSH_OK);
    assert_false(g.r.duplicate);
    assert_int_equal(g.r.offset, 6);
    assert_int_equal(pub_full(b, "c", "x", "d", "u", 1000, o, &g), WSH_OK);
    assert_true(g.r.duplicate);
    assert_int_equal(g.r.offset, 5);

    /* No window: msg_id is ignored. */
    struct wsh_broker_publish_opts none = { 10, 0, 0 };
    assert_int_equal(pub_full(b, "c", "x", "d", "u", 1000, none, &g), WSH_OK);
    assert_false(g.r.duplicate);
    wsh_broker_destroy(b);
}

static void test_broker_presence(void **state)
{
    (void)state;
    struct wsh_broker *b = mk(NULL);
    struct got g = { 0 };
    assert_int_equal(wsh_broker_presence_add(b, "c", "c1", "u1", "{\"a\":1}", 7, grab, &g), WSH_OK);
    assert_true(g.r.changed);
    assert_int_equal(g.r.count, 1);
    assert_int_equal(wsh_broker_presence_add(b, "c", "c2", "u2", NULL, 0, grab, &g), WSH_OK);
    assert_true(g.r.changed);
    assert_int_equal(g.r.count, 2);
    /* The same client again replaces its entry. */
    assert_int_equal(wsh_broker_presence_add(b, "c", "c1", "u1", "{\"a\":2}", 7, grab, &g), WSH_OK);
    assert_false(g.r.changed);
    assert_int_equal(g.r.count, 2);

    memset(&g, 0, sizeof(g));
    assert_int_equal(wsh_broker_presence_list(b, "c", grab, &g), WSH_OK);
    assert_int_equal(g.r.nmembers, 2);
    assert_int_equal(g.r.count, 2);
    int i1 = strcmp(g.client[0], "c1") == 0 ? 0 : 1;
    assert_string_equal(g.client[i1], "c1");
    assert_string_equal(g.user[i1], "u1");
    assert_string_equal(g.info[i1], "{\"a\":2}");
    assert_string_equal(g.client[1 - i1], "c2");
    assert_string_equal(g.user[1 - i1], "u2");
    assert_string_equal(g.info[1 - i1], "");

    assert_int_equal(wsh_broker_presence_remove(b, "c", "c1", grab, &g), WSH_OK);
    assert_true(g.r.changed);
    assert_int_equal(g.r.count, 1);
    assert_int_equal(wsh_broker_presence_remove(b, "c", "c1", grab, &g), WSH_OK);
    assert_false(g.r.changed);
    assert_int_equal(wsh_broker_presence_remove(b, "other", "c1", NULL, NULL), WSH_OK);
    memset(&g, 0, sizeof(g));
    assert_int_equal(wsh_broker_presence_count(b, "c", grab, &g), WSH_OK);
    assert_int_equal(g.r.count, 1);
    memset(&g, 0, sizeof(g));
    assert_int_equal(wsh_broker_presence_count(b, "none", grab, &g), WSH_OK);
    assert_int_equal(g.calls, 1);
    assert_int_equal(g.r.count, 0);
    assert_int_equal(info(b).presence, 1);

    /* Presence keeps a channel's state alive through a sweep. */
    assert_int_equal(wsh_broker_sweep(b, 1000000), 0);
    assert_int_equal(wsh_broker_presence_remove(b, "c", "c2", NULL, NULL), WSH_OK);
    assert_int_equal(wsh_broker_sweep(b, 1000000), 1);
    assert_int_equal(info(b).presence, 0);

    /* The per-channel bound. */
    wsh_broker_destroy(b);
    struct wsh_broker_memory_opts mo = { .presence_max = 2 };
    b = mk(&mo);
    assert_int_equal(wsh_broker_presence_add(b, "c", "a", "u", NULL, 0, NULL, NULL), WSH_OK);
    assert_int_equal(wsh_broker_presence_add(b, "c", "b", "u", NULL, 0, NULL, NULL), WSH_OK);
    assert_int_equal(wsh_broker_presence_add(b, "c", "c", "u", NULL, 0, NULL, NULL), WSH_EPOLICY);
    assert_int_equal(wsh_broker_presence_add(b, "c", "a", "u", NULL, 0, NULL, NULL), WSH_OK);
    wsh_broker_destroy(b);
}

static void test_broker_read_cursor_max(void **state)
{
    (void)state;
    struct wsh_broker *b = mk(NULL);
    for (int i = 0; i < 5; i++)
        pub(b, "c", "x", 0, HIST10);
    struct got g = { 0 };
    assert_int_equal(wsh_broker_read_set(b, "c", "alice", 3, grab, &g), WSH_OK);
    assert_true(g.r.changed);
    assert_int_equal(g.r.read_offset, 3);
    assert_int_equal(wsh_broker_read_set(b, "c", "alice", 2, grab, &g), WSH_OK);
    assert_false(g.r.changed); /* never backwards */
    assert_int_equal(g.r.read_offset, 3);
    assert_int_equal(wsh_broker_read_set(b, "c", "alice", 100, grab, &g), WSH_OK);
    assert_true(g.r.changed);
    assert_int_equal(g.r.read_offset, 5); /* clamped to the channel's offset */
    assert_int_equal(wsh_broker_read_set(b, "c", "alice", 5, grab, &g), WSH_OK);
    assert_false(g.r.changed);
    memset(&g, 0, sizeof(g));
    assert_int_equal(wsh_broker_read_get(b, "c", "alice", grab, &g), WSH_OK);
    assert_int_equal(g.r.read_offset, 5);
    assert_int_equal(wsh_broker_read_get(b, "c", "bob", grab, &g), WSH_OK);
    assert_int_equal(g.r.read_offset, 0);
    assert_int_equal(wsh_broker_read_get(b, "none", "bob", grab, &g), WSH_OK);
    assert_int_equal(g.r.read_offset, 0);
    wsh_broker_destroy(b);
}

static void test_broker_sweep_new_epoch(void **state)
{
    (void)state;
    struct wsh_broker *b = mk(NULL);
    struct wsh_broker_publish_opts o = { 10, 1000, 500 };
    struct got g;
    assert_int_equal(pub_full(b, "c", "x", "id", "u", 0, o, &g), WSH_OK);
    pub(b, "c", "y", 0, o);
    char epoch[WSH_BROKER_EPOCH_LEN + 1];
    memcpy(epoch, g.epoch, sizeof(epoch));
    assert_int_equal(wsh_broker_read_set(b, "c", "u", 2, NULL, NULL), WSH_OK);

    /* A subscribed channel keeps its state even with nothing left. */
    assert_int_equal(wsh_broker_subscribe(b, "s", grab, &g), WSH_OK);
    assert_true(g.r.changed);
    assert_int_equal(g.r.offset, 0);
    assert_int_equal(strlen(g.epoch), WSH_BROKER_EPOCH_LEN);
    assert_int_equal(wsh_broker_subscribe(b, "s", grab, &g), WSH_OK);
    assert_false(g.r.changed);

    assert_int_equal(wsh_broker_sweep(b, 999), 0); /* messages still live */
    assert_int_equal(info(b).channels, 2);
    assert_int_equal(wsh_broker_sweep(b, 1000), 1);
    assert_int_equal(info(b).channels, 1);
    assert_int_equal(info(b).channels_freed, 1);
    assert_int_equal(info(b).history_messages, 0);
    assert_int_equal(info(b).history_bytes, 0);

    recover(b, "c", 2, epoch, 1000, &g); /* the state is gone: not recovered */
    assert_false(g.r.recovered);
    assert_int_equal(pub_full(b, "c", "x", "id", "u", 1000, o, &g), WSH_OK);
    assert_int_equal(g.r.offset, 1); /* a fresh history */
    assert_false(g.r.duplicate);
    assert_string_not_equal(g.epoch, epoch);
    recover(b, "c", 2, epoch, 1000, &g);
    assert_false(g.r.recovered);
    memset(&g, 0, sizeof(g));
    assert_int_equal(wsh_broker_read_get(b, "c", "u", grab, &g), WSH_OK);
    assert_int_equal(g.r.read_offset, 0); /* cursors went with the history */

    assert_int_equal(wsh_broker_sweep(b, 100000), 1); /* "c" again */
    assert_int_equal(wsh_broker_unsubscribe(b, "s", grab, &g), WSH_OK);
    assert_false(g.r.changed);
    assert_int_equal(wsh_broker_unsubscribe(b, "s", grab, &g), WSH_OK);
    assert_true(g.r.changed);
    assert_int_equal(wsh_broker_unsubscribe(b, "s", NULL, NULL), WSH_EINVAL);
    assert_int_equal(wsh_broker_sweep(b, 100000), 1);
    struct wsh_broker_info i = info(b);
    assert_int_equal(i.channels, 0);
    assert_int_equal(i.subscriptions, 0);
    assert_int_equal(i.presence, 0);
    assert_int_equal(i.history_messages, 0);
    assert_int_equal(i.history_bytes, 0);
    wsh_broker_destroy(b);
}

struct order {
    uint64_t last[4];
    int bad;
};

static void check_order(const char *channel, const char *epoch, const struct wsh_broker_msg *m,
                        void *user)
{
    (void)epoch;
    struct order *o = user;
    int i = channel[1] - '0';
    if (m->offset != o->last[i] + 1)
        o->bad++;
    o->last[i] = m->offset;
}

static void test_broker_on_message_only_when_subscribed(void **state)
{
    (void)state;
    struct order ord = { { 0 }, 0 };
    struct wsh_broker_memory_opts mo = { .on_message = check_order, .user = &ord };
    struct wsh_broker *b = mk(&mo);
    pub(b, "c0", "x", 0, HIST10); /* nobody here: not delivered */
    assert_int_equal(ord.last[0], 0);
    assert_int_equal(wsh_broker_subscribe(b, "c0", NULL, NULL), WSH_OK);
    ord.last[0] = 1;
    pub(b, "c0", "x", 0, HIST10);
    pub(b, "c0", "x", 0, HIST10);
    assert_int_equal(ord.last[0], 3);
    assert_int_equal(ord.bad, 0);
    assert_int_equal(wsh_broker_unsubscribe(b, "c0", NULL, NULL), WSH_OK);
    pub(b, "c0", "x", 0, HIST10);
    assert_int_equal(ord.last[0], 3);
    wsh_broker_destroy(b);
}

static void test_broker_rejects_bad_arguments(void **state)
{
    (void)state;
    struct wsh_broker_memory_opts mo = { .max_payload = 8, .limits = { .max_channels = 2 } };
    struct wsh_broker *b = mk(&mo);
    struct got g;
    char longname[WSH_BROKER_NAME_MAX + 2];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(pub_full(b, NULL, "x", NULL, NULL, 0, HIST10, &g), WSH_EINVAL);
    assert_int_equal(pub_full(b, "", "x", NULL, NULL, 0, HIST10, &g), WSH_EINVAL);
    assert_int_equal(pub_full(b, longname, "x", NULL, NULL, 0, HIST10, &g), WSH_EINVAL);
    longname[WSH_BROKER_NAME_MAX] = '\0'; /* exactly the maximum */
    assert_int_equal(pub_full(b, longname, "x", NULL, NULL, 0, HIST10, &g), WSH_OK);
    assert_int_equal(pub_full(b, "c", "x", "", NULL, 0, HIST10, &g), WSH_EINVAL);
    assert_int_equal(pub_full(b, "c", "123456789", NULL, NULL, 0, HIST10, &g), WSH_ETOOBIG);
    assert_int_equal(g.calls, 0); /* an error never runs the callback */
    assert_int_equal(pub_full(b, "c", "12345678", NULL, NULL, 0, HIST10, &g), WSH_OK);
    assert_int_equal(pub_full(b, "d", "x", NULL, NULL, 0, HIST10, &g), WSH_EPOLICY);
    assert_int_equal(wsh_broker_subscribe(b, "d", NULL, NULL), WSH_EPOLICY);
    assert_int_equal(pub_full(b, "c", NULL, NULL, NULL, 0, HIST10, &g), WSH_OK); /* empty */
    assert_int_equal(wsh_broker_unsubscribe(b, "c", NULL, NULL), WSH_EINVAL);
    assert_int_equal(wsh_broker_unsubscribe(b, "zz", NULL, NULL), WSH_EINVAL);
    assert_int_equal(wsh_broker_history(b, NULL, grab, &g), WSH_EINVAL);
    assert_int_equal(wsh_broker_recover(b, "c", 0, NULL, 0, grab, &g), WSH_EINVAL);
    assert_int_equal(wsh_broker_presence_add(b, "c", "", "u", NULL, 0, NULL, NULL), WSH_EINVAL);
    assert_int_equal(wsh_broker_presence_add(b, "c", "x", "u", "123456789", 9, NULL, NULL),
                     WSH_ETOOBIG);
    assert_int_equal(wsh_broker_read_set(b, "c", NULL, 1, NULL, NULL), WSH_EINVAL);
    assert_int_equal(wsh_broker_info(b, NULL, NULL), WSH_EINVAL);
    wsh_broker_destroy(b);
    wsh_broker_destroy(NULL);
}

/* ---- many threads ---------------------------------------------------------- */

#define NTHREADS  4
#define PER_THR   10000
#define NCHANNELS 8

struct storm {
    struct wsh_broker *b;
    pthread_mutex_t mu;
    uint8_t *seen[NCHANNELS]; /* offsets acknowledged, by channel */
    int bad;
    uint64_t last[NCHANNELS]; /* on_message: serialised per channel */
    int misorder;
    int tid;
};

static void storm_ack(const struct wsh_broker_result *r, void *user)
{
    struct storm *s = user;
    int ch = r->channel[3] - '0';
    pthread_mutex_lock(&s->mu);
    if (r->duplicate || r->offset == 0 || r->offset > PER_THR * NTHREADS / NCHANNELS ||
        s->seen[ch][r->offset]++ != 0)
        s->bad++;
    pthread_mutex_unlock(&s->mu);
}

static void storm_deliver(const char *channel, const char *epoch, const struct wsh_broker_msg *m,
                          void *user)
{
    (void)epoch;
    struct storm *s = user;
    int ch = channel[3] - '0';
    /* No lock of ours: the broker serialises deliveries per channel. */
    if (m->offset != s->last[ch] + 1)
        s->misorder++;
    s->last[ch] = m->offset;
}

struct thr {
    struct storm *s;
    int id;
};

static void *storm_publisher(void *arg)
{
    struct thr *t = arg;
    struct wsh_broker_publish_opts o = { 16, 0, 1000 };
    char ch[8], id[32];
    for (int i = 0; i < PER_THR; i++) {
        snprintf(ch, sizeof(ch), "ch:%d", (i + t->id) % NCHANNELS);
        snprintf(id, sizeof(id), "%d-%d", t->id, i);
        struct wsh_broker_publish_req req = {
            .channel = ch,
            .payload = id,
            .payload_len = strlen(id),
            .msg_id = id,
            .from = "u",
            .now_ms = i / 100,
            .opts = o,
        };
        if (wsh_broker_publish(t->s->b, &req, storm_ack, t->s) != WSH_OK)
            __atomic_fetch_add(&t->s->bad, 1, __ATOMIC_SEQ_CST);
    }
    return NULL;
}

static void storm_noop(const struct wsh_broker_result *r, void *user)
{
    (void)r;
    (void)user;
}

/* Readers and short-lived channels racing the sweeper: exercises the rule
 * that a channel is never freed between lookup and use. */
static void *storm_churn(void *arg)
{
    struct thr *t = arg;
    struct wsh_broker_publish_opts none = { 0, 0, 0 };
    char ch[16];
    for (int i = 0; i < 3000; i++) {
        snprintf(ch, sizeof(ch), "tmp:%d", i % 7);
        struct wsh_broker_publish_req req = {
            .channel = ch,
            .payload = "x",
            .payload_len = 1,
            .now_ms = 0,
            .opts = none,
        };
        int rc = wsh_broker_publish(t->s->b, &req, NULL, NULL);
        rc |= wsh_broker_presence_add(t->s->b, ch, "cl", "u", "{}", 2, NULL, NULL);
        rc |= wsh_broker_presence_remove(t->s->b, ch, "cl", NULL, NULL);
        struct wsh_broker_history_req h = { "ch:1", false, 0, 4, 0 };
        rc |= wsh_broker_history(t->s->b, &h, storm_noop, NULL);
        rc |= wsh_broker_recover(t->s->b, "ch:2", 1, "x", 0, storm_noop, NULL);
        if (rc != WSH_OK)
            __atomic_fetch_add(&t->s->bad, 1, __ATOMIC_SEQ_CST);
        if (t->id == NTHREADS + 1)
            (void)wsh_broker_sweep(t->s->b, 0);
    }
    return NULL;
}

/* Four publishers and two churners; max_history bounds history memory (0:
 * none). Returns the broker's counters at the end. */
static struct wsh_broker_info storm_run(size_t max_history)
{
    static struct storm s;
    memset(&s, 0, sizeof(s));
    pthread_mutex_init(&s.mu, NULL);
    const size_t n = PER_THR * NTHREADS / NCHANNELS;
    for (int c = 0; c < NCHANNELS; c++)
        s.seen[c] = calloc(n + 1, 1);
    struct wsh_broker_memory_opts mo = { .limits = { .max_history_memory = max_history },
                                         .on_message = storm_deliver,
                                         .user = &s };
    s.b = mk(&mo);
    char ch[8];
    for (int c = 0; c < NCHANNELS; c++) {
        snprintf(ch, sizeof(ch), "ch:%d", c);
        assert_int_equal(wsh_broker_subscribe(s.b, ch, NULL, NULL), WSH_OK);
    }
    pthread_t th[NTHREADS + 2];
    struct thr t[NTHREADS + 2];
    for (int i = 0; i < NTHREADS + 2; i++) {
        t[i] = (struct thr){ &s, i };
        assert_int_equal(
            pthread_create(&th[i], NULL, i < NTHREADS ? storm_publisher : storm_churn, &t[i]), 0);
    }
    for (int i = 0; i < NTHREADS + 2; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_int_equal(s.bad, 0);
    assert_int_equal(s.misorder, 0);
    for (int c = 0; c < NCHANNELS; c++) {
        for (size_t o = 1; o <= n; o++)
            assert_int_equal(s.seen[c][o], 1);
        assert_int_equal(s.last[c], n);
        free(s.seen[c]);
    }
    struct wsh_broker_info i = info(s.b);
    assert_int_equal(i.published, (uint64_t)PER_THR * NTHREADS + 2 * 3000);
    assert_int_equal(i.duplicates, 0);
    wsh_broker_destroy(s.b);
    pthread_mutex_destroy(&s.mu);
    return i;
}

static void test_broker_threads_offsets_exact(void **state)
{
    (void)state;
    struct wsh_broker_info i = storm_run(0);
    assert_int_equal(i.history_messages, NCHANNELS * 16);
    assert_int_equal(i.history_evicted, 0);
}

/* The same storm with history memory for 40 of its 128 messages: eviction
 * runs on every publisher thread at once, across channels other threads
 * are publishing to, and never costs an offset, an order or a delivery. */
static void test_broker_threads_history_bound(void **state)
{
    (void)state;
    struct wsh_broker_info one = { 0 };
    struct wsh_broker *b = mk(NULL);
    pub(b, "ch:0", "0-1000", 0, HIST10); /* a storm message's size */
    one = info(b);
    wsh_broker_destroy(b);
    struct wsh_broker_info i = storm_run(40 * one.history_memory);
    assert_true(i.history_memory <= 40 * one.history_memory);
    assert_true(i.history_messages >= 30 && i.history_messages <= 42); /* ids of 3 to 6 bytes */
    assert_true(i.history_evicted > 0);
}

/* History over limits.max_history_memory goes from the channel published
 * to least recently, oldest first, down to 1/64 under the bound; recovery
 * across what went says so. */
static void test_broker_history_memory_bound(void **state)
{
    (void)state;
    struct wsh_broker *b = mk(NULL);
    pub(b, "m", "0123456789", 0, HIST10);
    const size_t per = info(b).history_memory; /* one message of 10 bytes from "u1" */
    assert_true(per > 12);
    wsh_broker_destroy(b);

    b = mk(NULL);
    struct wsh_broker_limits lim = { .max_history_memory = 5 * per };
    wsh_broker_set_limits(b, &lim);
    struct got g;
    for (int k = 0; k < 3; k++)
        pub(b, "a", "0123456789", 0, HIST10);
    recover(b, "a", 0, "-", 0, &g);
    char epoch_a[WSH_BROKER_EPOCH_LEN + 1];
    memcpy(epoch_a, g.epoch, sizeof(epoch_a));
    pub(b, "b", "0123456789", 2000, HIST10);
    pub(b, "b", "0123456789", 2000, HIST10);
    assert_int_equal(info(b).history_evicted, 0); /* exactly at the bound */
    /* One over: a's first goes, and its second to get under the low mark
     * (5 - 5/64 messages' worth). */
    pub(b, "c", "0123456789", 4000, HIST10);
    struct wsh_broker_info i = info(b);
    assert_int_equal(i.history_evicted, 2);
    assert_int_equal(i.history_memory, 4 * per);
    history(b, "a", false, 0, 0, 4000, &g);
    assert_int_equal(g.r.nmsgs, 1);
    assert_int_equal(g.off[0], 3);
    recover(b, "a", 0, epoch_a, 4000, &g);
    assert_false(g.r.recovered); /* offsets 1 and 2 are gone: never a silent gap */
    recover(b, "a", 1, epoch_a, 4000, &g);
    assert_false(g.r.recovered);
    recover(b, "a", 2, epoch_a, 4000, &g);
    assert_true(g.r.recovered);
    assert_int_equal(g.r.nmsgs, 1);

    /* The room the low mark left takes one publish without evicting. */
    pub(b, "a", "0123456789", 6000, HIST10);
    assert_int_equal(info(b).history_evicted, 2);
    /* a is now the newest: b, the least recent, pays for the next. */
    pub(b, "a", "0123456789", 6000, HIST10);
    assert_int_equal(info(b).history_evicted, 4);
    history(b, "b", false, 0, 0, 6000, &g);
    assert_int_equal(g.r.nmsgs, 0);
    history(b, "c", false, 0, 0, 6000, &g);
    assert_int_equal(g.r.nmsgs, 1);
    history(b, "a", false, 0, 0, 6000, &g);
    assert_int_equal(g.r.nmsgs, 3);

    /* A lowered bound holds at the next sweep: c, then a's oldest. */
    lim.max_history_memory = 2 * per;
    wsh_broker_set_limits(b, &lim);
    assert_int_equal(wsh_broker_sweep(b, 6000), 1); /* b, empty since before */
    i = info(b);
    assert_int_equal(i.history_memory, 1 * per);
    assert_int_equal(i.history_evicted, 7);
    history(b, "a", false, 0, 0, 6000, &g);
    assert_int_equal(g.r.nmsgs, 1);
    assert_int_equal(g.off[0], 5);
    /* c holds nothing now, so the next sweep drops its state. */
    assert_int_equal(wsh_broker_sweep(b, 6000), 1);
    assert_int_equal(info(b).channels, 1);

    /* 0 is unbounded again. */
    lim.max_history_memory = 0;
    wsh_broker_set_limits(b, &lim);
    for (int k = 0; k < 10; k++)
        pub(b, "d", "0123456789", 7000, HIST10);
    assert_int_equal(info(b).history_evicted, 7);
    assert_int_equal(info(b).history_memory, 11 * per);
    wsh_broker_set_limits(NULL, &lim); /* ignored, as is a NULL bound */
    wsh_broker_set_limits(b, NULL);
    wsh_broker_destroy(b);
}

/* limits.max_channels refuses new channel states, counted, and a reload
 * can raise it. */
static void test_broker_max_channels_reload(void **state)
{
    (void)state;
    struct wsh_broker_memory_opts mo = { .limits = { .max_channels = 1 } };
    struct wsh_broker *b = mk(&mo);
    pub(b, "a", "x", 0, HIST10);
    assert_int_equal(wsh_broker_subscribe(b, "b", NULL, NULL), WSH_EPOLICY);
    assert_int_equal(wsh_broker_presence_add(b, "b", "cl", "u", NULL, 0, NULL, NULL), WSH_EPOLICY);
    assert_int_equal(wsh_broker_read_set(b, "b", "u", 1, NULL, NULL), WSH_EPOLICY);
    assert_int_equal(wsh_broker_subscribe(b, "a", NULL, NULL), WSH_OK); /* exists already */
    assert_int_equal(info(b).channels_refused, 3);
    struct wsh_broker_limits lim = { .max_channels = 2 };
    wsh_broker_set_limits(b, &lim);
    assert_int_equal(wsh_broker_subscribe(b, "b", NULL, NULL), WSH_OK);
    struct got g;
    assert_int_equal(pub_full(b, "c", "x", NULL, NULL, 0, HIST10, &g), WSH_EPOLICY);
    assert_int_equal(g.calls, 0);
    assert_int_equal(info(b).channels, 2);
    assert_int_equal(info(b).channels_refused, 4);
    wsh_broker_destroy(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_broker_offsets_monotonic),
        cmocka_unit_test(test_broker_history_order_and_size),
        cmocka_unit_test(test_broker_history_ttl),
        cmocka_unit_test(test_broker_no_history_still_advances),
        cmocka_unit_test(test_broker_recover_same_epoch),
        cmocka_unit_test(test_broker_recover_gap),
        cmocka_unit_test(test_broker_recover_wrong_epoch),
        cmocka_unit_test(test_broker_dedup_within_window),
        cmocka_unit_test(test_broker_dedup_after_window),
        cmocka_unit_test(test_broker_presence),
        cmocka_unit_test(test_broker_read_cursor_max),
        cmocka_unit_test(test_broker_sweep_new_epoch),
        cmocka_unit_test(test_broker_on_message_only_when_subscribed),
        cmocka_unit_test(test_broker_rejects_bad_arguments),
        cmocka_unit_test(test_broker_threads_offsets_exact),
        cmocka_unit_test(test_broker_threads_history_bound),
        cmocka_unit_test(test_broker_history_memory_bound),
        cmocka_unit_test(test_broker_max_channels_reload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
