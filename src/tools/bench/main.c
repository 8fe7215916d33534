/* wshub-bench: a single-process, epoll-driven load generator for wshub (or
 * any RFC 6455 server, or bench/rawecho with --raw), in the spirit of
 * redis-benchmark. Options, /proc and getrusage sampling, reporting. */
#define _GNU_SOURCE
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "bench.h"

static void usage(FILE *f)
{
    fputs("usage: wshub-bench COMMAND [options]\n"
          "commands:\n"
          "  echo     -c N -p P -s S [--binary] [--payload filler|json]\n"
          "                                       N conns, P msgs of S bytes in flight each\n"
          "  fanout   -c N -s S --rate R          N subscribers + 1 publisher, R msgs/s\n"
          "                                       (0 = as fast as all subscribers drain,\n"
          "                                       --window K messages outstanding)\n"
          "  connect  -c C                        C loops of connect/handshake/close\n"
          "  idle     -c N                        hold N conns, report server RSS per conn\n"
          "fanout and idle speak --proto:\n"
          "  raw        opaque messages (default): /raw/<channel>, rawecho, Node ws\n"
          "  ws         wshub's /ws JSON protocol: connect (anonymous, or --token),\n"
          "             subscribe to --channel (idle: bench:idle-<n%100>), publish\n"
          "  socketio   Socket.IO v4 over WebSocket (bench/node/socketio-server.js):\n"
          "             join room --channel, publish with \"pub\", receive \"msg\"\n"
          "options:\n"
          "  --host A         server address (127.0.0.0/8 only), default 127.0.0.1\n"
          "  --port P         server port (required)\n"
          "  --path PATH      default /echo (echo, connect, idle), /raw/bench (fanout),\n"
          "                   /ws (--proto ws), /socket.io/?EIO=4&transport=websocket\n"
          "  --proto P        fanout, idle: raw, ws or socketio (above)\n"
          "  --channel NAME   --proto ws: channel, default bench:room (idle: bench:idle);\n"
          "                   socketio: room, default bench\n"
          "  --token T        --proto ws, and connect: send Authorization: Bearer T\n"
          "                   (connect --path /ws --token T: authenticated upgrades)\n"
          "  -d, --duration S seconds to measure, default 10, max 120\n"
          "  --raw            talk to bench/rawecho: no handshake, fixed-size messages\n"
          "  --sources K      bind sockets to 127.0.0.1..127.0.0.K round robin\n"
          "  --server-pid PID sample the server's CPU and RSS from /proc\n"
          "  --json           one JSON line instead of the human report\n"
          "  --tls            wss://: TLS 1.2/1.3, ALPN http/1.1, certificate verified\n"
          "  --cacert FILE    trust the CAs in FILE instead of the system store\n"
          "  --sni NAME       send SNI NAME and verify the certificate for NAME\n"
          "                   (default: no SNI, the certificate must name --host's IP)\n"
          "  --insecure       skip certificate verification\n"
          "  --deflate        offer permessage-deflate (client_no_context_takeover)\n"
          "  --payload KIND   echo: filler (a-z, default) or json (compressible, -s\n"
          "                   default 16384)\n"
          "  --warmup N       idle: open and close N connections before reading the\n"
          "                   server's baseline RSS (default 200, 0 = none)\n"
          "  --engine E       echo: socket I/O while measuring: uring (one io_uring\n"
          "                   call per loop turn), epoll (a recv and a send per\n"
          "                   message), auto (default: uring if it works, not --tls)\n",
          f);
}

static bool parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v > max)
        return false;
    *out = v;
    return true;
}

static int parse_opts(int argc, char **argv, struct bench_opts *o)
{
    if (argc < 2) {
        usage(stderr);
        return -1;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "echo") == 0)
        o->cmd = CMD_ECHO;
    else if (strcmp(cmd, "fanout") == 0)
        o->cmd = CMD_FANOUT;
    else if (strcmp(cmd, "connect") == 0)
        o->cmd = CMD_CONNECT;
    else if (strcmp(cmd, "idle") == 0)
        o->cmd = CMD_IDLE;
    else if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0) {
        usage(stdout);
        exit(0);
    } else {
        fprintf(stderr, "unknown command '%s'\n", cmd);
        usage(stderr);
        return -1;
    }
    *o = (struct bench_opts){ .cmd = o->cmd,
                              .host = "127.0.0.1",
                              .duration = 10,
                              .conns = o->cmd == CMD_FANOUT ? 1000 : 100,
                              .pipeline = 1,
                              .size = o->cmd == CMD_FANOUT ? 64 : 32,
                              .rate = 0,
                              .window = 16,
                              .sources = 1,
                              .warmup = BENCH_WARMUP_CONNS };
    enum {
        O_HOST = 256,
        O_PORT,
        O_PATH,
        O_RAW,
        O_SOURCES,
        O_PID,
        O_JSON,
        O_BINARY,
        O_RATE,
        O_WINDOW,
        O_TLS,
        O_CACERT,
        O_SNI,
        O_INSECURE,
        O_DEFLATE,
        O_PAYLOAD,
        O_WARMUP,
        O_PROTO,
        O_CHANNEL,
        O_TOKEN,
        O_ENGINE
    };
    static const struct option lo[] = {
        { "host", required_argument, NULL, O_HOST },
        { "port", required_argument, NULL, O_PORT },
        { "path", required_argument, NULL, O_PATH },
        { "duration", required_argument, NULL, 'd' },
        { "raw", no_argument, NULL, O_RAW },
        { "sources", required_argument, NULL, O_SOURCES },
        { "server-pid", required_argument, NULL, O_PID },
        { "json", no_argument, NULL, O_JSON },
        { "binary", no_argument, NULL, O_BINARY },
        { "rate", required_argument, NULL, O_RATE },
        { "window", required_argument, NULL, O_WINDOW },
        { "tls", no_argument, NULL, O_TLS },
        { "cacert", required_argument, NULL, O_CACERT },
        { "sni", required_argument, NULL, O_SNI },
        { "insecure", no_argument, NULL, O_INSECURE },
        { "deflate", no_argument, NULL, O_DEFLATE },
        { "payload", required_argument, NULL, O_PAYLOAD },
        { "warmup", required_argument, NULL, O_WARMUP },
        { "proto", required_argument, NULL, O_PROTO },
        { "channel", required_argument, NULL, O_CHANNEL },
        { "token", required_argument, NULL, O_TOKEN },
        { "engine", required_argument, NULL, O_ENGINE },
        { "conns", required_argument, NULL, 'c' },
        { "pipeline", required_argument, NULL, 'p' },
        { "size", required_argument, NULL, 's' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    optind = 2;
    int ch;
    unsigned long v;
    while ((ch = getopt_long(argc, argv, "c:p:s:d:h", lo, NULL)) != -1) {
        bool ok = true;
        switch (ch) {
        case O_HOST:
            o->host = optarg;
            break;
        case O_PATH:
            o->path = optarg;
            break;
        case O_PORT:
            ok = parse_uint(optarg, 65535, &v) && v > 0;
            o->port = (unsigned)v;
            break;
        case 'd':
            ok = parse_uint(optarg, BENCH_MAX_SECONDS, &v) && v > 0;
            o->duration = (unsigned)v;
            break;
        case 'c':
            ok = parse_uint(optarg, 1000000, &v) && v > 0;
            o->conns = (unsigned)v;
            break;
        case 'p':
            ok = parse_uint(optarg, 4096, &v) && v > 0;
            o->pipeline = (unsigned)v;
            break;
        case 's':
            ok = parse_uint(optarg, 16u << 20, &v);
            o->size = v;
            o->size_set = true;
            break;
        case O_TLS:
            o->tls = true;
            break;
        case O_CACERT:
            o->cacert = optarg;
            break;
        case O_SNI:
            o->sni = optarg;
            ok = *optarg != '\0' && strlen(optarg) < 256;
            break;
        case O_INSECURE:
            o->insecure = true;
            break;
        case O_WARMUP:
            ok = parse_uint(optarg, 100000, &v);
            o->warmup = (unsigned)v;
            break;
        case O_PROTO:
            ok = strcmp(optarg, "raw") == 0 || strcmp(optarg, "ws") == 0 ||
                 strcmp(optarg, "socketio") == 0;
            o->proto = optarg[0] == 'w' ? PROTO_WS : optarg[0] == 's' ? PROTO_SIO : PROTO_RELAY;
            break;
        case O_CHANNEL:
            o->channel = optarg;
            ok = *optarg != '\0' && strlen(optarg) <= 128 && !strpbrk(optarg, "\"\\");
            break;
        case O_TOKEN:
            o->token = optarg;
            ok = *optarg != '\0' && strlen(optarg) <= 8192;
            for (const char *q = optarg; ok && *q; q++)
                ok = *q > ' ' && *q < 127;
            break;
        case O_DEFLATE:
            o->deflate = true;
            break;
        case O_ENGINE:
            ok = strcmp(optarg, "auto") == 0 || strcmp(optarg, "epoll") == 0 ||
                 strcmp(optarg, "uring") == 0;
            o->engine = optarg[0] == 'u'   ? ENGINE_URING
                        : optarg[0] == 'e' ? ENGINE_EPOLL
                                           : ENGINE_AUTO;
            break;
        case O_PAYLOAD:
            ok = strcmp(optarg, "filler") == 0 || strcmp(optarg, "json") == 0;
            o->payload = optarg[0] == 'j' ? PAYLOAD_JSON : PAYLOAD_FILLER;
            break;
        case O_RATE:
            ok = parse_uint(optarg, 10000000, &v);
            o->rate = (unsigned)v;
            break;
        case O_WINDOW:
            ok = parse_uint(optarg, 1u << 20, &v) && v > 0;
            o->window = (unsigned)v;
            break;
        case O_SOURCES:
            ok = parse_uint(optarg, 254, &v) && v > 0;
            o->sources = (unsigned)v;
            break;
        case O_PID:
            ok = parse_uint(optarg, 1u << 30, &v) && v > 0;
            o->server_pid = (long)v;
            break;
        case O_RAW:
            o->raw = true;
            break;
        case O_JSON:
            o->json = true;
            break;
        case O_BINARY:
            o->binary = true;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
        if (!ok) {
            fprintf(stderr, "bad value for option: '%s'\n", optarg);
            return -1;
        }
    }
    if (optind != argc || o->port == 0) {
        fprintf(stderr, o->port ? "unexpected argument\n" : "--port is required\n");
        return -1;
    }
    if (o->proto != PROTO_RELAY && o->cmd != CMD_FANOUT && o->cmd != CMD_IDLE) {
        fprintf(stderr, "--proto is for fanout and idle\n");
        return -1;
    }
    if (o->proto != PROTO_RELAY && o->raw) {
        fprintf(stderr, "--proto ws/socketio need WebSocket (not --raw)\n");
        return -1;
    }
    if ((o->channel || (o->token && o->cmd != CMD_CONNECT)) && o->proto == PROTO_RELAY) {
        fprintf(stderr,
                "--channel and --token need --proto ws or socketio (--token: or connect)\n");
        return -1;
    }
    if (!o->channel)
        o->channel = o->proto == PROTO_SIO ? "bench"
                     : o->cmd == CMD_IDLE  ? "bench:idle"
                                           : "bench:room";
    if (!o->path)
        o->path = o->proto == PROTO_WS    ? "/ws"
                  : o->proto == PROTO_SIO ? "/socket.io/?EIO=4&transport=websocket"
                  : o->cmd == CMD_FANOUT  ? "/raw/bench"
                                          : "/echo";
    if (strncmp(o->host, "127.", 4) != 0) {
        fprintf(stderr, "--host must be a loopback address (127.0.0.0/8)\n");
        return -1;
    }
    if (o->payload == PAYLOAD_JSON && !o->size_set)
        o->size = 16384;
    if (o->payload == PAYLOAD_JSON && (o->cmd != CMD_ECHO || o->size < 64)) {
        fprintf(stderr, "--payload json is for echo, with -s >= 64\n");
        return -1;
    }
    if ((o->cacert || o->sni || o->insecure) && !o->tls) {
        fprintf(stderr, "--cacert, --sni and --insecure need --tls\n");
        return -1;
    }
    if (o->engine != ENGINE_AUTO && o->cmd != CMD_ECHO) {
        fprintf(stderr, "--engine is for echo\n");
        return -1;
    }
    if (o->engine == ENGINE_URING && o->tls) {
        fprintf(stderr, "--engine uring excludes --tls (OpenSSL does the socket I/O)\n");
        return -1;
    }
#ifndef WSH_BENCH_URING
    if (o->engine == ENGINE_URING) {
        fprintf(stderr, "--engine uring: built without liburing (scripts/install-deps.sh)\n");
        return -1;
    }
#endif
    if (o->raw && (o->tls || o->deflate)) {
        fprintf(stderr, "--raw excludes --tls and --deflate\n");
        return -1;
    }
    if (o->cmd == CMD_FANOUT && o->size < 16) {
        fprintf(stderr, "fanout needs -s >= 16 (timestamp and sequence number)\n");
        return -1;
    }
    if (o->raw && o->size == 0) {
        fprintf(stderr, "--raw needs -s >= 1\n");
        return -1;
    }
    if (!o->raw && o->size > (64u << 10) && o->cmd != CMD_CONNECT)
        fprintf(stderr, "warning: -s %zu is over wshub's 64 KiB message limit\n", o->size);
    return 0;
}

long proc_status_kb(long pid, const char *name)
{
    char path[64];
    if (pid)
        snprintf(path, sizeof path, "/proc/%ld/status", pid);
    else
        snprintf(path, sizeof path, "/proc/self/status");
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[256];
    long kb = -1;
    size_t len = strlen(name);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, name, len) == 0 && sscanf(line + len, " %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

/* VmRSS of PID (0: ourselves), in KiB. */
long server_rss_kb(long pid)
{
    return proc_status_kb(pid, "VmRSS:");
}

uint64_t bench_errors(const struct bench *b)
{
    return b->connect_errors + b->hs_errors + b->proto_errors + b->io_errors + b->timeouts +
           b->tls_errors + b->pmd_errors + b->app_errors + b->app_bad;
}

void bench_explain_failure(const struct bench *b, const char *what)
{
    fprintf(stderr,
            "%s (connect errors %llu, TLS errors %llu of which certificate %llu, handshake "
            "errors %llu, extension errors %llu, timeouts %llu)\n",
            what, (unsigned long long)b->connect_errors, (unsigned long long)b->tls_errors,
            (unsigned long long)b->tls_verify_errors, (unsigned long long)b->hs_errors,
            (unsigned long long)b->pmd_errors, (unsigned long long)b->timeouts);
}

/* utime + stime of every thread of the process, in ns. */
static uint64_t proc_cpu_ns(long pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* comm may contain spaces and parentheses: fields restart after the
     * last ')'. utime and stime are fields 14 and 15. */
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    unsigned long long ut = 0, st = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return 0;
    long hz = sysconf(_SC_CLK_TCK);
    return (ut + st) * (1000000000ULL / (unsigned long long)(hz > 0 ? hz : 100));
}

void proc_sample(const struct bench *b, struct proc_sample *s)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    s->self_cpu_ns =
        (uint64_t)ru.ru_utime.tv_sec * 1000000000ULL + (uint64_t)ru.ru_utime.tv_usec * 1000ULL +
        (uint64_t)ru.ru_stime.tv_sec * 1000000000ULL + (uint64_t)ru.ru_stime.tv_usec * 1000ULL;
    s->server_cpu_ns = b->o.server_pid ? proc_cpu_ns(b->o.server_pid) : 0;
    s->server_rss_kb = b->o.server_pid ? server_rss_kb(b->o.server_pid) : 0;
    s->wire_rx = b->wire_rx;
    s->wire_tx = b->wire_tx;
    s->wall = now_ns();
}

void report_cpu(struct report *r, const struct proc_sample *a, const struct proc_sample *z)
{
    r->seconds = (double)(z->wall - a->wall) / 1e9;
    r->rate = r->seconds > 0 ? (double)r->msgs / r->seconds : 0;
    double msgs = r->msgs ? (double)r->msgs : 1;
    r->bench_ns_per_msg = (double)(z->self_cpu_ns - a->self_cpu_ns) / msgs;
    r->server_ns_per_msg = (double)(z->server_cpu_ns - a->server_cpu_ns) / msgs;
    r->server_rss_kb = z->server_rss_kb;
    r->wire_rx = z->wire_rx - a->wire_rx;
    r->wire_tx = z->wire_tx - a->wire_tx;
}

static const char *unit_of(const char *mode)
{
    if (strcmp(mode, "fanout") == 0)
        return "deliveries";
    if (strcmp(mode, "echo") == 0)
        return "msgs";
    if (strcmp(mode, "connect") == 0)
        return "handshakes";
    return "connections";
}

static const char *unit_one(const char *mode)
{
    if (strcmp(mode, "fanout") == 0)
        return "delivery";
    if (strcmp(mode, "echo") == 0)
        return "round trip";
    if (strcmp(mode, "connect") == 0)
        return "cycle";
    return "connection";
}

void report_print(const struct bench *b, const struct report *r)
{
    const struct bench_opts *o = &b->o;
    double p50 = r->lat ? (double)hist_pct(r->lat, 50) / 1e3 : 0;
    double p99 = r->lat ? (double)hist_pct(r->lat, 99) / 1e3 : 0;
    double p999 = r->lat ? (double)hist_pct(r->lat, 99.9) / 1e3 : 0;
    double pmax = r->lat ? (double)r->lat->max / 1e3 : 0;
    /* Both directions, TLS records and frame headers included. */
    double wire_per_msg = r->msgs ? (double)(r->wire_rx + r->wire_tx) / (double)r->msgs : 0;
    if (o->json) {
        printf("{\"mode\":\"%s\",\"target\":\"%s\",\"path\":\"%s\",\"msgs\":%llu,"
               "\"seconds\":%.3f,\"rate\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,"
               "\"p999_us\":%.1f,\"max_us\":%.1f,\"errors\":%llu,"
               "\"bench_cpu_ns_per_msg\":%.0f",
               r->mode, o->raw ? "raw" : "ws", o->raw ? "" : o->path, (unsigned long long)r->msgs,
               r->seconds, r->rate, p50, p99, p999, pmax, (unsigned long long)r->errors,
               r->bench_ns_per_msg);
        if (o->server_pid)
            printf(",\"server_cpu_ns_per_msg\":%.0f,\"server_rss_kb\":%ld", r->server_ns_per_msg,
                   r->server_rss_kb);
        printf(",\"tls\":%d,\"deflate\":%d,\"tls_errors\":%llu,\"tls_verify_errors\":%llu,"
               "\"pmd_errors\":%llu,\"pmd_conns\":%llu,\"wire_tx_bytes\":%llu,"
               "\"wire_rx_bytes\":%llu,\"wire_bytes_per_msg\":%.1f",
               o->tls, o->deflate, (unsigned long long)b->tls_errors,
               (unsigned long long)b->tls_verify_errors, (unsigned long long)b->pmd_errors,
               (unsigned long long)b->pmd_conns, (unsigned long long)r->wire_tx,
               (unsigned long long)r->wire_rx, wire_per_msg);
        for (int i = 0; i < REPORT_EXTRA && r->extra_k[i]; i++)
            printf(",\"%s\":%.6g", r->extra_k[i], r->extra_v[i]);
        printf(",\"engine\":\"%s\"", b->uring ? "uring" : "epoll");
        if (o->proto != PROTO_RELAY)
            printf(",\"proto\":\"%s\",\"app_errors\":%llu,\"app_bad\":%llu",
                   o->proto == PROTO_WS ? "ws" : "socketio", (unsigned long long)b->app_errors,
                   (unsigned long long)b->app_bad);
        printf("}\n");
        return;
    }
    printf("wshub-bench %s (%s%s%s%s)\n", r->mode,
           o->raw   ? "raw TCP"
           : o->tls ? "WebSocket over TLS "
                    : "WebSocket ",
           o->raw ? "" : o->path, o->deflate ? ", permessage-deflate " : "",
           o->deflate ? (b->pmd_conns ? "agreed" : "declined") : "");
    for (int i = 0; i < REPORT_EXTRA && r->extra_k[i]; i++)
        printf("  %-24s %.6g\n", r->extra_k[i], r->extra_v[i]);
    printf("  %-24s %llu in %.2f s\n", unit_of(r->mode), (unsigned long long)r->msgs, r->seconds);
    printf("  %-24s %.0f %s/s\n", "throughput", r->rate, unit_of(r->mode));
    if (r->lat && r->lat->count)
        printf("  %-24s p50 %.1f  p99 %.1f  p99.9 %.1f  max %.1f us\n", "latency", p50, p99, p999,
               pmax);
    printf("  %-24s %llu\n", "errors", (unsigned long long)r->errors);
    if (o->proto != PROTO_RELAY)
        printf("  %-24s %llu error replies, %llu unparsed\n",
               o->proto == PROTO_WS ? "/ws protocol" : "Socket.IO",
               (unsigned long long)b->app_errors, (unsigned long long)b->app_bad);
    if (o->tls)
        printf("  %-24s %llu (certificate %llu)\n", "TLS errors", (unsigned long long)b->tls_errors,
               (unsigned long long)b->tls_verify_errors);
    printf("  %-24s sent %llu, received %llu, %.1f per %s\n", "bytes on the wire",
           (unsigned long long)r->wire_tx, (unsigned long long)r->wire_rx, wire_per_msg,
           unit_one(r->mode));
    printf("  %-24s %.0f ns per %s (%s)\n", "bench cpu", r->bench_ns_per_msg, unit_of(r->mode),
           b->uring ? "io_uring" : "epoll");
    if (o->server_pid)
        printf("  %-24s %.0f ns per %s, rss %ld KiB\n", "server cpu", r->server_ns_per_msg,
               unit_of(r->mode), r->server_rss_kb);
}

int main(int argc, char **argv)
{
    /* Every send uses MSG_NOSIGNAL; this is belt and braces. */
    signal(SIGPIPE, SIG_IGN);
    struct bench_opts o;
    if (parse_opts(argc, argv, &o) < 0)
        return 2;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && o.conns + 16 > rl.rlim_cur)
        fprintf(stderr, "warning: -c %u is near the open-file limit %llu\n", o.conns,
                (unsigned long long)rl.rlim_cur);
    struct bench *b = calloc(1, sizeof *b);
    if (!b) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    b->o = o;
    b->epfd = -1;
    int rc = 1;
    switch (o.cmd) {
    case CMD_ECHO:
        rc = run_echo(b);
        break;
    case CMD_FANOUT:
        rc = run_fanout(b);
        break;
    case CMD_CONNECT:
        rc = run_connect(b);
        break;
    case CMD_IDLE:
        rc = run_idle(b);
        break;
    }
    bench_free(b);
    free(b);
    return rc;
}
