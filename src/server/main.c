/* wshub: command line, worker threads and signals. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "server.h"

struct wsh_config wsh_cfg;
struct wsh_tls *wsh_tls_ctx;
struct worker *wsh_workers;
int wsh_nworkers;
_Atomic int wsh_shutdown_code;
_Atomic bool wsh_drain_now;
_Atomic size_t wsh_total_conns;

_Atomic uint64_t wsh_reloads[RELOAD_PARTS][2];

/* SIGHUP: certificate rotation and token key rotation without a restart.
 * Each part is reloaded on its own; a part that fails keeps what it had. */
static void reload(void)
{
    char err[512];
    if (wsh_tls_ctx == NULL) {
        wsh_log(WSH_LOG_INFO, "ev=sighup tls=0");
    } else {
        bool ok = wsh_tls_reload(wsh_tls_ctx, err, sizeof(err)) == WSH_OK;
        atomic_fetch_add(&wsh_reloads[RELOAD_TLS][ok ? 0 : 1], 1);
        if (ok)
            wsh_log(WSH_LOG_INFO, "ev=tls_reload ok=1");
        else
            wsh_log(WSH_LOG_WARN, "ev=tls_reload ok=0 err=\"%s\"", wsh_log_value(err));
    }
    struct wsh_hub_config *cfg;
    int rc = hub_config_reread(&cfg, err, sizeof(err));
    if (rc == 1)
        return; /* no --config */
    if (rc < 0) {
        /* The file did not load: neither part changes, and both say so. */
        atomic_fetch_add(&wsh_reloads[RELOAD_AUTH][1], 1);
        atomic_fetch_add(&wsh_reloads[RELOAD_SETTINGS][1], 1);
        wsh_log(WSH_LOG_WARN, "ev=auth_reload ok=0 err=\"%s\"", wsh_log_value(err));
        wsh_log(WSH_LOG_WARN, "ev=settings_reload ok=0 err=\"%s\"", wsh_log_value(err));
        return;
    }
    size_t nkeys = 0, nskipped = 0;
    rc = keys_reload(cfg, err, sizeof(err), &nkeys, &nskipped);
    /* rc 1: no keys before and none after (anonymous access only): a
     * reload that changed nothing, logged and counted like any other. */
    atomic_fetch_add(&wsh_reloads[RELOAD_AUTH][rc >= 0 ? 0 : 1], 1);
    if (rc >= 0)
        wsh_log(WSH_LOG_INFO, "ev=auth_reload ok=1 keys=%zu jwks_skipped=%zu", nkeys, nskipped);
    else
        wsh_log(WSH_LOG_WARN, "ev=auth_reload ok=0 err=\"%s\"", wsh_log_value(err));
    struct hub_settings set;
    hub_reload_settings(cfg, &set);
    hub_config_release(cfg);
    atomic_fetch_add(&wsh_reloads[RELOAD_SETTINGS][0], 1);
    wsh_log(WSH_LOG_INFO,
            "ev=settings_reload ok=1 origins=%zu api_key=%d admission_rate=%g "
            "max_connections=%zu max_connections_per_ip=%u handshake_rate_per_ip=%g "
            "max_client_memory=%zu max_message=%llu max_channels=%u max_history_memory=%llu",
            set.norigins, set.api_key ? 1 : 0, set.admission_rate, set.max_connections, set.per_ip,
            set.ip_rate, set.max_client_memory, (unsigned long long)set.max_message,
            set.max_channels, (unsigned long long)set.max_history);
}

/* SIGTERM, SIGINT and SIGHUP arrive on a signalfd in worker 0's loop (the
 * main thread runs worker 0, so `--workers 1` is a single-threaded process:
 * the kernel then skips the file reference counting that every socket call
 * of a multi-threaded process pays). */
static void on_signal(struct wsh_loop *l, struct wsh_io *io, uint32_t events)
{
    (void)l;
    (void)events;
    struct signalfd_siginfo si;
    while (read(io->fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        int sig = (int)si.ssi_signo;
        if (sig == SIGHUP) {
            /* Not while shutting down: worker 0 may have ended its loop,
             * and nothing started now would serve anyone. */
            if (atomic_load(&wsh_shutdown_code) == 0)
                reload();
            continue;
        }
        if (atomic_load(&wsh_shutdown_code) != 0) {
            /* Already shutting down: a second signal closes what a
             * --drain-time drain has not closed yet, at once. */
            if (!atomic_exchange(&wsh_drain_now, true)) {
                wsh_log(WSH_LOG_INFO, "ev=drain_now");
                for (int i = 0; i < wsh_nworkers; i++)
                    worker_wake(&wsh_workers[i]);
            }
            continue;
        }
        /* RFC 6455 7.4.1: 1012 tells clients the service restarts
         * (SIGTERM, as an orchestrator sends); 1001 that it is going away
         * (SIGINT). */
        int code = sig == SIGTERM ? WSH_CLOSE_RESTART : WSH_CLOSE_GOING_AWAY;
        wsh_log(WSH_LOG_INFO, "ev=shutdown signal=%s code=%d", sig == SIGTERM ? "TERM" : "INT",
                code);
        atomic_store(&wsh_shutdown_code, code);
        for (int i = 0; i < wsh_nworkers; i++)
            worker_wake(&wsh_workers[i]);
    }
}

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: wshub [options]\n"
            "A real-time messaging server on WebSockets (RFC 6455).\n"
            "\n"
            "  --listen HOST:PORT        address to listen on (default 127.0.0.1:8080; port 0 =\n"
            "                            any free port, see --port-file)\n"
            "  --workers N               worker threads, one event loop each (default: cores)\n"
            "  --echo                    enable /echo, which echoes every message\n"
            "  --no-raw                  disable /raw/<channel> (open to any client that\n"
            "                            passes the Origin check: no token)\n"
            "  --max-message BYTES       largest message accepted (default 65536)\n"
            "  --max-fragments N         most frames in one message (default 1024)\n"
            "  --ping-interval SECS      heartbeat ping interval, 0 = off (default 25)\n"
            "  --pong-timeout SECS       close with 1011 when no pong in time (default 20)\n"
            "  --handshake-timeout SECS  deadline for the upgrade request (default 10)\n"
            "  --close-timeout SECS      wait for the peer after a close (default 5)\n"
            "  --drain-time SECS         on SIGTERM/SIGINT, close connections in batches\n"
            "                            spread over SECS (default 0: all at once;\n"
            "                            a second signal closes the rest at once)\n"
            "  --message-timeout SECS    a started message must complete within this; checked\n"
            "                            at each heartbeat, 0 = off (default 30)\n"
            "  --max-queue BYTES         outbound queue limit per connection (default 1048576)\n"
            "  --max-client-memory BYTES all buffers held for clients together; past it the\n"
            "                            connections holding the most are closed with 1013,\n"
            "                            0 = off (default 0)\n"
            "  --soft-queue BYTES        a subscriber whose queue stays over this for\n"
            "                            --soft-queue-time is a slow consumer, 0 = off\n"
            "                            (default 262144)\n"
            "  --soft-queue-time SECS    (default 10)\n"
            "  --write-timeout SECS      drop a connection whose queued output makes no\n"
            "                            progress for this long, 0 = off (default 10)\n"
            "  --log-level LEVEL         error, warn, info or debug (default info)\n"
            "  --port-file PATH          write the bound port to PATH once listening\n"
            "  --admin-listen HOST:PORT  serve /metrics, /dashboard and /api/ on this address\n"
            "                            only (plain HTTP; health checks on both)\n"
            "  --config FILE             JSON configuration: namespaces, keys, limits "
            "(docs/config.md)\n"
            "  --check-config            validate --config, explain any error, and exit\n"
            "  --web-root DIR            serve the demo page and browser client from DIR\n"
            "                            (default: the source tree's web/)\n"
            "  --deflate                 offer permessage-deflate (RFC 7692) compression\n"
            "  --deflate-level N         zlib level 1..9 for what the server sends (default 1)\n"
            "  --tls-cert FILE           serve wss:// with this PEM certificate chain\n"
            "  --tls-key FILE            the certificate's PEM private key\n"
            "  --tls-ca FILE             require client certificates signed by this CA\n"
            "                            (SIGHUP reloads the certificate and key)\n"
            "  --proxy-protocol          every connection begins with a PROXY protocol v1 or\n"
            "                            v2 header from a load balancer; per-address limits\n"
            "                            count the client it names (docs/server.md)\n"
            "  -h, --help                show this help\n"
            "  -V, --version             show the version\n"
            "\n"
            "Endpoints: GET /ws, GET /echo (with --echo), GET /raw/<channel>,\n"
            "GET /healthz, GET /readyz, GET /metrics, GET /dashboard, /api/ (docs/server.md).\n"
            "Docs: docs/ in the source tree.\n");
}

static int parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < min || v > max) {
        fprintf(stderr, "wshub: --%s: expected an integer in [%llu, %llu], got '%s'\n", opt,
                (unsigned long long)min, (unsigned long long)max, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_secs(const char *opt, const char *s, uint64_t *ms)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0.0) || v > 86400.0) {
        fprintf(stderr, "wshub: --%s: expected seconds in [0, 86400], got '%s'\n", opt, s);
        return -1;
    }
    *ms = (uint64_t)(v * 1000.0 + 0.5);
    return 0;
}

/* HOST:PORT ([v6]:PORT too) of --listen or --admin-listen; host has room
 * for 256 bytes. */
static int parse_listen(const char *opt, const char *s, char *host, int *port)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL) {
        fprintf(stderr, "wshub: --%s: expected HOST:PORT, got '%s'\n", opt, s);
        return -1;
    }
    size_t hl = (size_t)(colon - s);
    if (hl > 1 && s[0] == '[' && s[hl - 1] == ']') {
        s++;
        hl -= 2;
    }
    if (hl == 0 || hl >= sizeof(wsh_cfg.host)) {
        fprintf(stderr, "wshub: --%s: bad host in '%s'\n", opt, s);
        return -1;
    }
    memcpy(host, s, hl);
    host[hl] = '\0';
    uint64_t v;
    if (parse_u64(opt, colon + 1, 0, 65535, &v) != 0)
        return -1;
    *port = (int)v;
    return 0;
}

enum {
    OPT_LISTEN = 256,
    OPT_ADMIN_LISTEN,
    OPT_WORKERS,
    OPT_ECHO,
    OPT_NO_RAW,
    OPT_MAX_MESSAGE,
    OPT_MAX_FRAGMENTS,
    OPT_PING,
    OPT_PONG,
    OPT_HANDSHAKE,
    OPT_CLOSE,
    OPT_DRAIN,
    OPT_MAX_QUEUE,
    OPT_MAX_CLIENT_MEMORY,
    OPT_LOG_LEVEL,
    OPT_PORT_FILE,
    OPT_TLS_CERT,
    OPT_TLS_KEY,
    OPT_TLS_CA,
    OPT_DEFLATE,
    OPT_CONFIG,
    OPT_CHECK_CONFIG,
    OPT_WEB_ROOT,
    OPT_DEFLATE_LEVEL,
    OPT_MESSAGE_TIMEOUT,
    OPT_SOFT_QUEUE,
    OPT_SOFT_QUEUE_TIME,
    OPT_WRITE_TIMEOUT,
    OPT_PROXY_PROTOCOL
};

static const char *config_path;
static bool check_config;
static bool max_message_flag; /* --max-message given: it overrides the config */

static int parse_args(int argc, char **argv)
{
    static const struct option opts[] = {
        { "listen", required_argument, NULL, OPT_LISTEN },
        { "admin-listen", required_argument, NULL, OPT_ADMIN_LISTEN },
        { "workers", required_argument, NULL, OPT_WORKERS },
        { "echo", no_argument, NULL, OPT_ECHO },
        { "no-raw", no_argument, NULL, OPT_NO_RAW },
        { "max-message", required_argument, NULL, OPT_MAX_MESSAGE },
        { "max-fragments", required_argument, NULL, OPT_MAX_FRAGMENTS },
        { "ping-interval", required_argument, NULL, OPT_PING },
        { "pong-timeout", required_argument, NULL, OPT_PONG },
        { "handshake-timeout", required_argument, NULL, OPT_HANDSHAKE },
        { "close-timeout", required_argument, NULL, OPT_CLOSE },
        { "drain-time", required_argument, NULL, OPT_DRAIN },
        { "max-queue", required_argument, NULL, OPT_MAX_QUEUE },
        { "max-client-memory", required_argument, NULL, OPT_MAX_CLIENT_MEMORY },
        { "log-level", required_argument, NULL, OPT_LOG_LEVEL },
        { "port-file", required_argument, NULL, OPT_PORT_FILE },
        { "tls-cert", required_argument, NULL, OPT_TLS_CERT },
        { "tls-key", required_argument, NULL, OPT_TLS_KEY },
        { "tls-ca", required_argument, NULL, OPT_TLS_CA },
        { "deflate", no_argument, NULL, OPT_DEFLATE },
        { "config", required_argument, NULL, OPT_CONFIG },
        { "check-config", no_argument, NULL, OPT_CHECK_CONFIG },
        { "web-root", required_argument, NULL, OPT_WEB_ROOT },
        { "deflate-level", required_argument, NULL, OPT_DEFLATE_LEVEL },
        { "message-timeout", required_argument, NULL, OPT_MESSAGE_TIMEOUT },
        { "soft-queue", required_argument, NULL, OPT_SOFT_QUEUE },
        { "soft-queue-time", required_argument, NULL, OPT_SOFT_QUEUE_TIME },
        { "write-timeout", required_argument, NULL, OPT_WRITE_TIMEOUT },
        { "proxy-protocol", no_argument, NULL, OPT_PROXY_PROTOCOL },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    uint64_t v;
    int c;
    while ((c = getopt_long(argc, argv, "hV", opts, NULL)) != -1) {
        switch (c) {
        case OPT_LISTEN:
            if (parse_listen("listen", optarg, wsh_cfg.host, &wsh_cfg.port) != 0)
                return -1;
            break;
        case OPT_ADMIN_LISTEN:
            if (parse_listen("admin-listen", optarg, wsh_cfg.admin_host, &wsh_cfg.admin_port) != 0)
                return -1;
            break;
        case OPT_WORKERS:
            if (parse_u64("workers", optarg, 1, WSH_MAX_WORKERS, &v) != 0)
                return -1;
            wsh_cfg.workers = (int)v;
            break;
        case OPT_ECHO:
            wsh_cfg.echo = true;
            break;
        case OPT_NO_RAW:
            wsh_cfg.no_raw = true;
            break;
        case OPT_MAX_MESSAGE:
            /* The frame buffer length is 32-bit: leave room for a header. */
            if (parse_u64("max-message", optarg, 1, UINT32_MAX - 64, &v) != 0)
                return -1;
            wsh_cfg.limits.max_message = v;
            max_message_flag = true;
            break;
        case OPT_MAX_FRAGMENTS:
            if (parse_u64("max-fragments", optarg, 1, UINT32_MAX, &v) != 0)
                return -1;
            wsh_cfg.limits.max_fragments = (uint32_t)v;
            break;
        case OPT_PING:
            if (parse_secs("ping-interval", optarg, &wsh_cfg.ping_interval_ms) != 0)
                return -1;
            break;
        case OPT_PONG:
            if (parse_secs("pong-timeout", optarg, &wsh_cfg.pong_timeout_ms) != 0)
                return -1;
            break;
        case OPT_HANDSHAKE:
            if (parse_secs("handshake-timeout", optarg, &wsh_cfg.handshake_timeout_ms) != 0)
                return -1;
            break;
        case OPT_CLOSE:
            if (parse_secs("close-timeout", optarg, &wsh_cfg.close_timeout_ms) != 0)
                return -1;
            break;
        case OPT_DRAIN:
            if (parse_secs("drain-time", optarg, &wsh_cfg.drain_ms) != 0)
                return -1;
            break;
        case OPT_MAX_QUEUE:
            if (parse_u64("max-queue", optarg, 1024, SIZE_MAX / 2, &v) != 0)
                return -1;
            wsh_cfg.max_queue = (size_t)v;
            break;
        case OPT_MAX_CLIENT_MEMORY:
            if (parse_u64("max-client-memory", optarg, 0, SIZE_MAX / 2, &v) != 0)
                return -1;
            wsh_cfg.max_client_memory = (size_t)v;
            break;
        case OPT_SOFT_QUEUE:
            if (parse_u64("soft-queue", optarg, 0, SIZE_MAX / 2, &v) != 0)
                return -1;
            wsh_cfg.soft_queue = (size_t)v;
            break;
        case OPT_SOFT_QUEUE_TIME:
            if (parse_secs("soft-queue-time", optarg, &wsh_cfg.soft_queue_ms) != 0)
                return -1;
            break;
        case OPT_WRITE_TIMEOUT:
            if (parse_secs("write-timeout", optarg, &wsh_cfg.write_timeout_ms) != 0)
                return -1;
            break;
        case OPT_LOG_LEVEL: {
            int lvl = wsh_log_parse_level(optarg);
            if (lvl < 0) {
                fprintf(stderr, "wshub: --log-level: expected error, warn, info or debug\n");
                return -1;
            }
            wsh_log_level = lvl;
            break;
        }
        case OPT_PORT_FILE:
            wsh_cfg.port_file = optarg;
            break;
        case OPT_TLS_CERT:
            wsh_cfg.tls.cert_file = optarg;
            break;
        case OPT_TLS_KEY:
            wsh_cfg.tls.key_file = optarg;
            break;
        case OPT_TLS_CA:
            wsh_cfg.tls.ca_file = optarg;
            break;
        case OPT_DEFLATE:
            wsh_cfg.deflate = true;
            break;
        case OPT_PROXY_PROTOCOL:
            wsh_cfg.proxy_protocol = true;
            break;
        case OPT_CONFIG:
            config_path = optarg;
            break;
        case OPT_CHECK_CONFIG:
            check_config = true;
            break;
        case OPT_WEB_ROOT:
            wsh_cfg.web_root = optarg;
            break;
        case OPT_MESSAGE_TIMEOUT:
            if (parse_secs("message-timeout", optarg, &wsh_cfg.message_timeout_ms) != 0)
                return -1;
            break;
        case OPT_DEFLATE_LEVEL:
            if (parse_u64("deflate-level", optarg, 1, 9, &v) != 0)
                return -1;
            wsh_cfg.pmd.level = (int)v;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case 'V':
            printf("wshub %s\n", WSH_VERSION);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
    }
    if ((wsh_cfg.tls.cert_file == NULL) != (wsh_cfg.tls.key_file == NULL) ||
        (wsh_cfg.tls.ca_file && !wsh_cfg.tls.cert_file)) {
        fprintf(stderr, "wshub: --tls-cert and --tls-key go together (and --tls-ca needs them)\n");
        return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "wshub: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    /* Listening sockets share a port (SO_REUSEPORT): the same port twice
     * would hand public clients to the admin listener, or the reverse. */
    if (wsh_cfg.admin_port > 0 && wsh_cfg.admin_port == wsh_cfg.port) {
        fprintf(stderr, "wshub: --admin-listen: port %d is the --listen port; use another\n",
                wsh_cfg.port);
        return -1;
    }
    return 0;
}

static void set_defaults(void)
{
    snprintf(wsh_cfg.host, sizeof(wsh_cfg.host), "127.0.0.1");
    wsh_cfg.port = 8080;
    wsh_cfg.admin_port = -1;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    wsh_cfg.workers = n > 0 ? (int)(n > WSH_MAX_WORKERS ? WSH_MAX_WORKERS : n) : 1;
    wsh_cfg.limits.max_message = WSH_DEFAULT_MAX_MESSAGE;
    wsh_cfg.limits.max_fragments = WSH_DEFAULT_MAX_FRAGMENTS;
    wsh_cfg.ping_interval_ms = 25000;
    wsh_cfg.pong_timeout_ms = 20000;
    wsh_cfg.handshake_timeout_ms = 10000;
    wsh_cfg.close_timeout_ms = 5000;
    wsh_cfg.message_timeout_ms = 30000;
    wsh_cfg.max_queue = 1u << 20;
    wsh_cfg.max_client_memory = SIZE_MAX; /* not given: the config file's, or off */
    wsh_cfg.soft_queue = 256u << 10;
    wsh_cfg.soft_queue_ms = 10000;
    wsh_cfg.write_timeout_ms = 10000;
    /* Level 1: on the JSON and text a real-time server sends it keeps most
     * of level 6's ratio at a fraction of the CPU (zlib's deflate_fast). */
    wsh_cfg.pmd.level = 1;
#ifdef WSH_WEB_ROOT
    wsh_cfg.web_root = WSH_WEB_ROOT;
#endif
}

static int write_port_file(const char *path, int port)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "%d\n", port);
    if (fclose(f) != 0)
        return -1;
    /* rename() so a reader never sees a half-written file. */
    return rename(tmp, path);
}

int main(int argc, char **argv)
{
    set_defaults();
    if (parse_args(argc, argv) != 0)
        return 2;
    /* Before anything uses OpenSSL (keys, TLS, the accept key). */
    if (wsh_openssl_prime() != WSH_OK) {
        fprintf(stderr, "wshub: OpenSSL could not start (out of memory?)\n");
        return 1;
    }

    {
        char err[512];
        if (hub_init(config_path, err, sizeof(err)) != 0) {
            fprintf(stderr, "wshub: %s: %s\n", config_path ? config_path : "config", err);
            return 2;
        }
        int rc = hub_start(wsh_cfg.limits.max_message, max_message_flag);
        if (rc != WSH_OK) {
            /* Said why: a start that ran out of memory says so
             * (hub_oom's start test). */
            fprintf(stderr, "wshub: cannot start the hub: %s\n", wsh_strerror(rc));
            return 1;
        }
        if (keys_fetch_prepare(err, sizeof(err)) != 0) {
            fprintf(stderr, "wshub: %s\n", err);
            return 2;
        }
        if (check_config) {
            printf("%s: ok\n", config_path ? config_path : "(built-in defaults)");
            return 0;
        }
    }

    /* A peer that vanishes mid-write must never kill the server. */
    signal(SIGPIPE, SIG_IGN);
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL); /* inherited by the workers */
    char ferr[160];
    if (keys_fetch_start(ferr, sizeof(ferr)) != 0) {
        fprintf(stderr, "wshub: %s\n", ferr);
        return 1;
    }

    /* The spare 64 are for what else opens files (logs, a certificate
     * reload, the key fetcher, static files); each worker's own four (its
     * listener, epoll, eventfd and reserve) come off too, and the admin
     * listener, so that the count is reached before the kernel's limit. */
    struct rlimit rl;
    size_t own = 64 + 4 * (size_t)wsh_cfg.workers + 1;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur > 128 &&
        rl.rlim_cur > own + 64)
        wsh_cfg.max_connections = (size_t)rl.rlim_cur - own;
    else
        wsh_cfg.max_connections = 1000000;

    if (wsh_cfg.tls.cert_file) {
        char err[512];
        if (wsh_tls_create(&wsh_cfg.tls, err, sizeof(err), &wsh_tls_ctx) != WSH_OK) {
            wsh_log(WSH_LOG_ERROR, "ev=tls_failed err=\"%s\"", err);
            fprintf(stderr, "wshub: TLS: %s\n", err);
            return 1;
        }
    }

    hub_conn_limits(&wsh_cfg);
    admit_limits_init();
    worker_memory_cap_set(wsh_cfg.max_client_memory);

    wsh_nworkers = wsh_cfg.workers;
    wsh_workers = calloc((size_t)wsh_nworkers, sizeof(*wsh_workers));
    if (wsh_workers == NULL)
        return 1;

    /* The first listener takes the port (maybe ephemeral); the others bind
     * the same port with SO_REUSEPORT so the kernel spreads accepts. */
    int port = wsh_cfg.port;
    for (int i = 0; i < wsh_nworkers; i++) {
        int fd = wsh_listen_tcp(wsh_cfg.host, port, 1024);
        if (fd < 0) {
            wsh_log(WSH_LOG_ERROR, "ev=listen_failed addr=%s port=%d err=\"%s\"", wsh_cfg.host,
                    port, wsh_strerror(fd));
            return 1;
        }
        if (i == 0)
            port = wsh_socket_port(fd);
        int rc = worker_init(&wsh_workers[i], i, fd);
        if (rc != WSH_OK) {
            wsh_log(WSH_LOG_ERROR, "ev=worker_init_failed err=\"%s\"", wsh_strerror(rc));
            return 1;
        }
    }
    int admin_port = -1;
    if (wsh_cfg.admin_port >= 0) {
        int fd = wsh_listen_tcp(wsh_cfg.admin_host, wsh_cfg.admin_port, 128);
        if (fd < 0) {
            wsh_log(WSH_LOG_ERROR, "ev=listen_failed addr=%s port=%d err=\"%s\" admin=1",
                    wsh_cfg.admin_host, wsh_cfg.admin_port, wsh_strerror(fd));
            return 1;
        }
        admin_port = wsh_socket_port(fd);
        if (admin_port == port) {
            /* Two ephemeral choices can't collide; a fixed one against an
             * ephemeral one can. */
            wsh_log(WSH_LOG_ERROR, "ev=listen_failed admin=1 err=\"the --listen port\"");
            return 1;
        }
        int rc = worker_listen_admin(&wsh_workers[0], fd);
        if (rc != WSH_OK) {
            wsh_log(WSH_LOG_ERROR, "ev=worker_init_failed err=\"%s\"", wsh_strerror(rc));
            return 1;
        }
    }
    keys_workers_ready();
    static struct wsh_io sig_io = { .cb = on_signal };
    sig_io.fd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
    int sig_rc = sig_io.fd < 0 ? -errno : wsh_loop_add(wsh_workers[0].loop, &sig_io, EPOLLIN);
    if (sig_rc != WSH_OK) {
        wsh_log(WSH_LOG_ERROR, "ev=signalfd_failed err=\"%s\"", wsh_strerror(sig_rc));
        return 1;
    }
    for (int i = 1; i < wsh_nworkers; i++) {
        int e = pthread_create(&wsh_workers[i].thread, NULL, worker_main, &wsh_workers[i]);
        if (e != 0) {
            /* EAGAIN: glibc says so when a thread's memory cannot be had,
             * as well as at the thread limit; the log says which may be. */
            wsh_log(WSH_LOG_ERROR, "ev=thread_failed err=\"%s\"",
                    e == EAGAIN ? "out of memory, or of threads" : strerror(e));
            return 1;
        }
    }
    wsh_log(
        WSH_LOG_INFO,
        "ev=listen addr=%s port=%d workers=%d tls=%d deflate=%d echo=%d raw=%d max_message=%llu "
        "ws_max_message=%llu proxy_protocol=%d",
        wsh_cfg.host, port, wsh_nworkers, wsh_tls_ctx ? 1 : 0, wsh_cfg.deflate ? 1 : 0,
        wsh_cfg.echo ? 1 : 0, wsh_cfg.no_raw ? 0 : 1,
        (unsigned long long)wsh_cfg.limits.max_message, (unsigned long long)hub_message_limit(),
        wsh_cfg.proxy_protocol ? 1 : 0);
    if (admin_port >= 0)
        wsh_log(WSH_LOG_INFO, "ev=admin_listen addr=%s port=%d", wsh_cfg.admin_host, admin_port);
    if (wsh_cfg.port_file && write_port_file(wsh_cfg.port_file, port) != 0) {
        wsh_log(WSH_LOG_ERROR, "ev=port_file_failed path=%s", wsh_cfg.port_file);
        return 1;
    }

    worker_main(&wsh_workers[0]); /* returns when worker 0 has drained */
    /* The others may still be draining (--drain-time): the signals are
     * read here meanwhile, or a second SIGTERM would end no drain. */
    for (int i = 1; i < wsh_nworkers; i++) {
        while (pthread_tryjoin_np(wsh_workers[i].thread, NULL) == EBUSY) {
            struct pollfd pfd = { .fd = sig_io.fd, .events = POLLIN };
            if (poll(&pfd, 1, 50) > 0)
                on_signal(NULL, &sig_io, EPOLLIN);
        }
    }
    keys_fetch_stop();
    wsh_log(WSH_LOG_INFO, "ev=exit");
    return 0;
}
