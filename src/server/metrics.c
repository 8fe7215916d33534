/* /metrics in the Prometheus text exposition format (version 0.0.4):
 * connections, messages in by endpoint and command, messages out by type,
 * frames and bytes, slow consumers, evictions, close codes sent, the
 * publish-to-delivery latency histogram, and the standard process_*
 * metrics. Each worker counts its own; a scrape sums them. */
#include <dirent.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "server.h"
#include "wshub/broker.h"
#include "wshub/http.h"

static const unsigned close_codes[METRIC_CODES] = { 1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011,
                                                    1012, 1013, 4100, 4101, 4103, 4500, 4501 };
/* Upper bounds of the latency buckets, in milliseconds. */
static const unsigned lat_ms[METRIC_LAT_BUCKETS] = { 1,   2,   5,   10,   25,   50,
                                                     100, 250, 500, 1000, 2500, 5000 };

/* Where code counts in a family labelled by codes[0..n): its own slot, or
 * slot n, "other". */
static size_t code_slot(const unsigned *codes, size_t n, unsigned code)
{
    size_t i = 0;
    while (i < n && codes[i] != code)
        i++;
    return i;
}

void metric_close(struct worker *w, unsigned code)
{
    metric_add(&w->m.closes[code_slot(close_codes, METRIC_CODES, code)], 1);
}

/* Every status the server sends, so that a dashboard sees a refusal
 * spike (429, 503) or a broken client (400, 426) by name. */
static const unsigned http_codes[METRIC_HTTP_CODES] = { 101, 200, 400, 401, 403, 404, 405, 411,
                                                        413, 414, 426, 429, 431, 500, 503, 505 };

void metric_http(struct worker *w, int status)
{
    metric_add(&w->m.http[code_slot(http_codes, METRIC_HTTP_CODES, (unsigned)status)], 1);
}

void metric_latency(struct worker *w, int64_t publish_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    int64_t d_us = now_us - publish_ms * 1000;
    if (d_us < 0)
        d_us = 0;
    int i = 0;
    while (i < METRIC_LAT_BUCKETS && (uint64_t)d_us > (uint64_t)lat_ms[i] * 1000u)
        i++;
    metric_add(&w->m.lat[i], 1);
    metric_add(&w->m.lat_sum_us, (uint64_t)d_us);
}

/* Upper bounds of the loop-turn buckets, in microseconds: most turns take
 * well under a millisecond; the upper ones are stalls, which every other
 * connection of that worker waited out. */
static const unsigned turn_us[METRIC_TURN_BUCKETS] = { 100,    1000,   5000,    10000,  50000,
                                                       100000, 500000, 1000000, 5000000 };

void metric_turn(struct worker *w, uint64_t ns)
{
    int i = 0;
    while (i < METRIC_TURN_BUCKETS && ns > (uint64_t)turn_us[i] * 1000u)
        i++;
    metric_add(&w->m.turn[i], 1);
    metric_add(&w->m.busy_ns, ns);
}

static uint64_t sum(size_t offset)
{
    uint64_t n = 0;
    for (int i = 0; i < wsh_nworkers; i++) {
        _Atomic uint64_t *p = (_Atomic uint64_t *)((char *)&wsh_workers[i].m + offset);
        n += atomic_load_explicit(p, memory_order_relaxed);
    }
    return n;
}

#define SUM(field) sum(offsetof(struct metrics, field))

/* The page being written. It grows as it must: its size follows the
 * number of workers and the width of the counts, and a page cut short
 * would lose whole families without a word to the scraper. */
struct out {
    char *p;
    size_t len, cap;
    bool failed; /* an allocation failed: the page is not served */
};

__attribute__((format(printf, 2, 3))) static void put(struct out *o, const char *fmt, ...)
{
    for (;;) {
        if (o->failed)
            return;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->p ? o->p + o->len : NULL, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->failed = true;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap ? o->cap : 4096; /* every scrape grows it: that path is exercised */
        while (cap - o->len <= (size_t)n)
            cap *= 2;
        char *p = realloc(o->p, cap);
        if (p == NULL) {
            o->failed = true;
            return;
        }
        o->p = p;
        o->cap = cap;
    }
}

static void counter(struct out *o, const char *name, const char *help, uint64_t v)
{
    put(o, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
        (unsigned long long)v);
}

/* The process_* metrics every Prometheus client library exports, read
 * from /proc the way they read them, so dashboards built for any server
 * work here too. */
static void process_metrics(struct out *o)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        put(o,
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.6f\n",
            (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
    long page = sysconf(_SC_PAGESIZE);
    unsigned long long vm = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f != NULL) {
        if (fscanf(f, "%llu %llu", &vm, &rss) == 2 && page > 0) {
            put(o,
                "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
                "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes %llu\n",
                vm * (unsigned long long)page);
            put(o,
                "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                "# TYPE process_resident_memory_bytes gauge\n"
                "process_resident_memory_bytes %llu\n",
                rss * (unsigned long long)page);
        }
        fclose(f);
    }
    DIR *d = opendir("/proc/self/fd");
    if (d != NULL) {
        unsigned long n = 0;
        for (struct dirent *e; (e = readdir(d)) != NULL;)
            n += e->d_name[0] != '.';
        closedir(d);
        put(o,
            "# HELP process_open_fds Number of open file descriptors.\n"
            "# TYPE process_open_fds gauge\nprocess_open_fds %lu\n",
            n - 1); /* not the one reading the directory */
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        put(o,
            "# HELP process_max_fds Maximum number of open file descriptors.\n"
            "# TYPE process_max_fds gauge\nprocess_max_fds %llu\n",
            (unsigned long long)rl.rlim_cur);
    /* Start: field 22 of /proc/self/stat, in clock ticks since boot
     * (btime of /proc/stat). The command name in field 2 may hold spaces,
     * so the fields are counted from its closing parenthesis. */
    char buf[1024];
    unsigned long long start = 0, btime = 0;
    if ((f = fopen("/proc/self/stat", "r")) != NULL) {
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        char *p = strrchr(buf, ')');
        for (int field = 2; p != NULL && field < 22; field++)
            p = strchr(p + 1, ' ');
        if (p != NULL)
            start = strtoull(p + 1, NULL, 10);
    }
    if ((f = fopen("/proc/stat", "r")) != NULL) {
        while (fgets(buf, sizeof(buf), f) != NULL)
            if (sscanf(buf, "btime %llu", &btime) == 1)
                break;
        fclose(f);
    }
    long hz = sysconf(_SC_CLK_TCK);
    if (start != 0 && btime != 0 && hz > 0)
        put(o,
            "# HELP process_start_time_seconds Start time of the process since unix epoch in "
            "seconds.\n"
            "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.2f\n",
            (double)btime + (double)start / (double)hz);
}

/* A histogram summed over the workers: n + 1 bucket counters at field
 * (the last one +Inf) with upper bounds bound[i] * unit seconds, and the
 * sum of the observations in seconds. The count is the buckets' total,
 * read once with them, so the two always agree. */
static void histogram(struct out *o, const char *name, const char *help, const unsigned *bound,
                      size_t n, double unit, size_t field, double sum_s)
{
    put(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (size_t i = 0; i <= n; i++) {
        cum += sum(field + i * sizeof(_Atomic uint64_t));
        if (i < n)
            put(o, "%s_bucket{le=\"%g\"} %llu\n", name, bound[i] * unit, (unsigned long long)cum);
    }
    put(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
        (unsigned long long)cum, name, sum_s, name, (unsigned long long)cum);
}

/* A counter family labelled by code: one sample per codes[0..n), then
 * "other"; field is the offset of the first of the n + 1 counters. */
static void code_family(struct out *o, const char *name, const char *help, const unsigned *codes,
                        size_t n, size_t field)
{
    put(o, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
    for (size_t i = 0; i <= n; i++) {
        unsigned long long v = sum(field + i * sizeof(_Atomic uint64_t));
        if (i < n)
            put(o, "%s{code=\"%u\"} %llu\n", name, codes[i], v);
        else
            put(o, "%s{code=\"other\"} %llu\n", name, v);
    }
}

void metrics_serve(struct worker *w, struct conn *c, const struct wsh_http_request *req)
{
    if (!route_readable(w, c, req))
        return;
    struct out o = { 0 };
    put(&o,
        "# HELP wshub_connections Open connections, all endpoints and states.\n"
        "# TYPE wshub_connections gauge\nwshub_connections %zu\n",
        atomic_load(&wsh_total_conns));
    counter(&o, "wshub_connections_accepted_total", "Connections accepted.", SUM(accepted));
    static const char *const eps[4] = { "http", "echo", "raw", "ws" };
    put(&o, "# HELP wshub_messages_in_total WebSocket messages received, by endpoint.\n"
            "# TYPE wshub_messages_in_total counter\n");
    for (int i = 1; i < 4; i++)
        put(&o, "wshub_messages_in_total{endpoint=\"%s\"} %llu\n", eps[i],
            (unsigned long long)SUM(msgs_in[i]));
    static const char *const cmds[10] = { "invalid", "connect",  "subscribe", "unsubscribe",
                                          "publish", "presence", "history",   "refresh",
                                          "signal",  "read" };
    put(&o, "# HELP wshub_commands_total /ws commands received, by type.\n"
            "# TYPE wshub_commands_total counter\n");
    for (int i = 0; i < 10; i++)
        put(&o, "wshub_commands_total{type=\"%s\"} %llu\n", cmds[i],
            (unsigned long long)SUM(commands[i]));
    static const char *const pushes[PUSH__COUNT] = {
        [PUSH_CONNECTED] = "connected",
        [PUSH_REFRESHED] = "refreshed",
        [PUSH_SUBSCRIBED] = "subscribed",
        [PUSH_UNSUBSCRIBED] = "unsubscribed",
        [PUSH_ACK] = "ack",
        [PUSH_PRESENCE] = "presence",
        [PUSH_HISTORY] = "history",
        [PUSH_MESSAGE] = "message",
        [PUSH_JOIN] = "join",
        [PUSH_LEAVE] = "leave",
        [PUSH_SIGNAL] = "signal",
        [PUSH_READ] = "read",
        [PUSH_REFRESH_REQUIRED] = "refresh_required",
        [PUSH_LAGGED] = "lagged",
        [PUSH_DISCONNECT] = "disconnect",
        [PUSH_ERROR] = "error",
    };
    put(&o, "# HELP wshub_messages_out_total /ws messages queued to clients, by type; a "
            "fan-out counts once per recipient.\n"
            "# TYPE wshub_messages_out_total counter\n");
    for (int i = 0; i < PUSH__COUNT; i++)
        put(&o, "wshub_messages_out_total{type=\"%s\"} %llu\n", pushes[i],
            (unsigned long long)SUM(pushes[i]));
    counter(&o, "wshub_frames_out_total", "WebSocket frames queued to clients.", SUM(frames_out));
    counter(&o, "wshub_bytes_in_total", "Bytes read from clients (after TLS).", SUM(bytes_in));
    counter(&o, "wshub_bytes_out_total", "Bytes queued to clients (before TLS).", SUM(bytes_out));
    counter(&o, "wshub_slow_consumers_total",
            "Connections cut off because their outbound queue passed its limit.",
            SUM(slow_consumers));
    counter(&o, "wshub_signals_dropped_total",
            "/ws signal pushes not queued for a subscriber the kernel was refusing bytes from.",
            SUM(signals_dropped));
    counter(&o, "wshub_publisher_holds_total",
            "Times a publisher's input was paused because another worker's inbox held more "
            "than its bound, until that worker caught up.",
            SUM(inbox_holds));
    counter(&o, "wshub_write_stalls_total",
            "Connections dropped because their queued output made no progress for "
            "--write-timeout.",
            SUM(write_stalls));
    counter(&o, "wshub_admission_refused_total",
            "WebSocket upgrades refused over limits.admission_rate (503, or 1013 on /ws).",
            SUM(admission_refused));
    counter(&o, "wshub_proxy_header_errors_total",
            "Connections dropped because they did not begin with a valid PROXY protocol header "
            "(--proxy-protocol).",
            SUM(proxy_errors));
    counter(&o, "wshub_memory_evictions_total",
            "Connections closed with 1013 because client buffers passed --max-client-memory.",
            SUM(memory_evictions));
    put(&o,
        "# HELP wshub_client_memory_bytes Bytes of the buffers held for clients (queued "
        "frames, messages being assembled, input carried over), each shared frame once.\n"
        "# TYPE wshub_client_memory_bytes gauge\nwshub_client_memory_bytes %zu\n",
        wsh_buf_live_bytes());
    put(&o,
        "# HELP wshub_inbox_bytes Bytes of messages waiting for a worker to take them from "
        "another (or from its own /ws publishes).\n"
        "# TYPE wshub_inbox_bytes gauge\nwshub_inbox_bytes %zu\n",
        inbox_bytes_total());
    put(&o,
        "# HELP wshub_revocations Users and token ids refused by POST /api/disconnect "
        "(expired ones until the next 2 s sweep), of at most limits.max_revocations.\n"
        "# TYPE wshub_revocations gauge\nwshub_revocations %zu\n",
        hub_revocations());
    struct wsh_broker_info bi;
    if (hub_broker_info(&bi) == WSH_OK) {
        put(&o,
            "# HELP wshub_broker_channels Channel states the broker holds, of at most "
            "limits.max_channels.\n"
            "# TYPE wshub_broker_channels gauge\nwshub_broker_channels %zu\n",
            bi.channels);
        counter(&o, "wshub_broker_channels_refused_total",
                "Subscribes and publishes refused (3003, or 503 from the API) because "
                "limits.max_channels channels were in use.",
                bi.channels_refused);
        put(&o,
            "# HELP wshub_broker_history_bytes Memory of the history kept over all channels "
            "(payloads, senders and records), of at most limits.max_history_memory.\n"
            "# TYPE wshub_broker_history_bytes gauge\nwshub_broker_history_bytes %zu\n",
            bi.history_memory);
        counter(&o, "wshub_broker_history_evicted_total",
                "Messages dropped from history, least recently published channels first, to "
                "stay under limits.max_history_memory.",
                bi.history_evicted);
    }
    put(&o, "# HELP wshub_reloads_total SIGHUP reloads, by part (tls: certificate and key; "
            "auth: token keys; settings: namespaces, limits, origins, api_key) and result; a "
            "failed one keeps what was loaded.\n"
            "# TYPE wshub_reloads_total counter\n");
    static const char *const parts[RELOAD_PARTS] = { "tls", "auth", "settings" };
    for (int i = 0; i < RELOAD_PARTS; i++) {
        for (int r = 0; r < 2; r++)
            put(&o, "wshub_reloads_total{part=\"%s\",result=\"%s\"} %llu\n", parts[i],
                r == 0 ? "ok" : "error", (unsigned long long)atomic_load(&wsh_reloads[i][r]));
    }
    uint64_t fetched_ok, fetched_err;
    int64_t loaded_ms;
    keys_jwks_fetches(&fetched_ok, &fetched_err, &loaded_ms);
    put(&o,
        "# HELP wshub_jwks_fetches_total Fetches of auth.jwks_url, by result; a failed one "
        "keeps the keys in use.\n"
        "# TYPE wshub_jwks_fetches_total counter\n"
        "wshub_jwks_fetches_total{result=\"ok\"} %llu\n"
        "wshub_jwks_fetches_total{result=\"error\"} %llu\n"
        "# HELP wshub_jwks_last_success_timestamp_seconds When the last good fetch of "
        "auth.jwks_url ended (Unix time; 0 before the first): alert on its age.\n"
        "# TYPE wshub_jwks_last_success_timestamp_seconds gauge\n"
        "wshub_jwks_last_success_timestamp_seconds %lld.%03lld\n",
        (unsigned long long)fetched_ok, (unsigned long long)fetched_err,
        (long long)(loaded_ms / 1000), (long long)(loaded_ms % 1000));
    uint64_t waits[3];
    keys_waits(waits);
    put(&o,
        "# HELP wshub_auth_key_waits_total Tokens naming a key no key set had, held until a "
        "fetch of auth.jwks_url ended, by outcome.\n"
        "# TYPE wshub_auth_key_waits_total counter\n"
        "wshub_auth_key_waits_total{result=\"accepted\"} %llu\n"
        "wshub_auth_key_waits_total{result=\"refused\"} %llu\n"
        "wshub_auth_key_waits_total{result=\"timeout\"} %llu\n",
        (unsigned long long)waits[KEY_WAIT_ACCEPTED], (unsigned long long)waits[KEY_WAIT_REFUSED],
        (unsigned long long)waits[KEY_WAIT_TIMEOUT]);
    counter(&o, "wshub_auth_key_removed_sessions_total",
            "Sessions asked to refresh at once because a key rotation removed the key that "
            "verified their token.",
            hub_key_removed_sessions());
    size_t skipped = 0, nkeys = keys_in_use(&skipped);
    put(&o,
        "# HELP wshub_auth_keys Token verification keys in use (auth.keys and the JWK Set).\n"
        "# TYPE wshub_auth_keys gauge\nwshub_auth_keys %zu\n"
        "# HELP wshub_auth_jwks_skipped_keys Keys of auth.jwks_file ignored by the last load "
        "(the log says why).\n"
        "# TYPE wshub_auth_jwks_skipped_keys gauge\nwshub_auth_jwks_skipped_keys %zu\n",
        nkeys, skipped);
    code_family(&o, "wshub_http_responses_total",
                "HTTP responses sent, by status code (101: upgrades; 429 and 503 include "
                "refusals at accept).",
                http_codes, METRIC_HTTP_CODES, offsetof(struct metrics, http));
    code_family(&o, "wshub_closes_total", "Close frames sent, by close code.", close_codes,
                METRIC_CODES, offsetof(struct metrics, closes));
    histogram(&o, "wshub_publish_delivery_seconds",
              "Time from a publish being accepted to its message being queued to the "
              "subscribers of one worker.",
              lat_ms, METRIC_LAT_BUCKETS, 1e-3, offsetof(struct metrics, lat),
              (double)SUM(lat_sum_us) / 1e6);
    histogram(&o, "wshub_loop_turn_seconds",
              "Time a worker's loop took for one turn (the events of one wakeup, its timers and "
              "its writes); the worker's other connections waited that long.",
              turn_us, METRIC_TURN_BUCKETS, 1e-6, offsetof(struct metrics, turn),
              (double)SUM(busy_ns) / 1e9);
    put(&o, "# HELP wshub_worker_busy_seconds_total Time each worker spent on its loop turns, not "
            "waiting for events: its rate is the worker's load, from 0 to 1.\n"
            "# TYPE wshub_worker_busy_seconds_total counter\n");
    for (int i = 0; i < wsh_nworkers; i++)
        put(&o, "wshub_worker_busy_seconds_total{worker=\"%d\"} %.6f\n", i,
            (double)atomic_load_explicit(&wsh_workers[i].m.busy_ns, memory_order_relaxed) / 1e9);
    put(&o, "# HELP wshub_worker_connections Open connections of each worker (the kernel "
            "spreads new ones across the workers' listeners).\n"
            "# TYPE wshub_worker_connections gauge\n");
    for (int i = 0; i < wsh_nworkers; i++)
        put(&o, "wshub_worker_connections{worker=\"%d\"} %llu\n", i,
            (unsigned long long)atomic_load_explicit(&wsh_workers[i].m.conns,
                                                     memory_order_relaxed));
    process_metrics(&o);
    if (o.failed) {
        static const char oom[] = "out of memory\n";
        route_respond(w, c, 503, "text/plain", oom, sizeof(oom) - 1);
    } else {
        route_respond(w, c, 200, "text/plain; version=0.0.4; charset=utf-8", o.p, o.len);
    }
    free(o.p);
}
