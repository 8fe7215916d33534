/* lws_echo: a libwebsockets (Debian libwebsockets-dev) comparison server for
 * wshub-bench, serving the same endpoints as wshub:
 *   /echo          every message is echoed back
 *   /raw/<channel> every message goes to every OTHER connection on <channel>
 * Single-threaded, lws's own event loop. Messages are reassembled (lws may
 * hand them over in fragments), queued per session for echo, and stored
 * once in a shared ring for broadcast. Prints "port=N" on stderr. */
#include <arpa/inet.h>
#include <libwebsockets.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_MSG    65536
#define ECHO_SLOTS 64
#define RING_SLOTS 4096

struct msg {
    size_t len;
    int binary;
    void *from;
    unsigned char *buf; /* LWS_PRE + len */
};

struct sess {
    struct lws *wsi;
    struct sess *next;
    int echo;
    char chan[128];
    unsigned char *rx; /* LWS_PRE + MAX_MSG, reassembly */
    size_t rx_len;
    struct msg q[ECHO_SLOTS];
    unsigned qhead, qtail;
    unsigned long long tail; /* broadcast ring cursor */
};

static struct sess *sessions;
static struct msg ring[RING_SLOTS];
static unsigned long long ring_head;
static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static unsigned char *copy_msg(const unsigned char *p, size_t n)
{
    unsigned char *b = malloc(LWS_PRE + (n ? n : 1));
    if (b)
        memcpy(b + LWS_PRE, p, n);
    return b;
}

static void deliver(struct sess *s, int binary)
{
    const unsigned char *p = s->rx + LWS_PRE;
    size_t n = s->rx_len;
    if (s->echo) {
        if (s->qhead - s->qtail >= ECHO_SLOTS)
            return; /* bounded: drop */
        struct msg *m = &s->q[s->qhead % ECHO_SLOTS];
        if (!(m->buf = copy_msg(p, n)))
            return;
        m->len = n;
        m->binary = binary;
        s->qhead++;
        lws_callback_on_writable(s->wsi);
        return;
    }
    struct msg *m = &ring[ring_head % RING_SLOTS];
    free(m->buf);
    if (!(m->buf = copy_msg(p, n)))
        return;
    m->len = n;
    m->binary = binary;
    m->from = s;
    ring_head++;
    for (struct sess *o = sessions; o; o = o->next)
        if (o != s && !o->echo && strcmp(o->chan, s->chan) == 0)
            lws_callback_on_writable(o->wsi);
}

static int write_one(struct sess *s)
{
    struct msg *m = NULL;
    if (s->echo) {
        if (s->qtail == s->qhead)
            return 0;
        m = &s->q[s->qtail % ECHO_SLOTS];
    } else {
        if (ring_head - s->tail > RING_SLOTS)
            s->tail = ring_head - RING_SLOTS; /* lapped: drop the oldest */
        while (s->tail < ring_head && ring[s->tail % RING_SLOTS].from == s)
            s->tail++;
        if (s->tail == ring_head)
            return 0;
        m = &ring[s->tail % RING_SLOTS];
    }
    int r =
        lws_write(s->wsi, m->buf + LWS_PRE, m->len, m->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
    if (r < (int)m->len)
        return -1;
    if (s->echo) {
        free(m->buf);
        m->buf = NULL;
        s->qtail++;
        if (s->qtail != s->qhead)
            lws_callback_on_writable(s->wsi);
    } else {
        s->tail++;
        if (s->tail != ring_head)
            lws_callback_on_writable(s->wsi);
    }
    return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    struct sess *s = user;
    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED: {
        char uri[128];
        memset(s, 0, sizeof *s);
        s->wsi = wsi;
        if (lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) < 0)
            return -1;
        if (strcmp(uri, "/echo") == 0)
            s->echo = 1;
        else if (strncmp(uri, "/raw/", 5) == 0)
            snprintf(s->chan, sizeof s->chan, "%s", uri + 5);
        else
            return -1;
        s->tail = ring_head;
        s->next = sessions;
        sessions = s;
        break;
    }
    case LWS_CALLBACK_RECEIVE:
        /* Allocated on first use, so idle sessions cost only lws's own. */
        if (!s->rx && !(s->rx = malloc(LWS_PRE + MAX_MSG)))
            return -1;
        if (s->rx_len + len > MAX_MSG)
            return -1;
        memcpy(s->rx + LWS_PRE + s->rx_len, in, len);
        s->rx_len += len;
        if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi)) {
            deliver(s, lws_frame_is_binary(wsi));
            s->rx_len = 0;
        }
        break;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return write_one(s);
    case LWS_CALLBACK_CLOSED:
        for (struct sess **pp = &sessions; *pp; pp = &(*pp)->next)
            if (*pp == s) {
                *pp = s->next;
                break;
            }
        for (unsigned i = s->qtail; i != s->qhead; i++)
            free(s->q[i % ECHO_SLOTS].buf);
        for (unsigned i = 0; i < RING_SLOTS; i++)
            if (ring[i].from == s)
                ring[i].from = NULL;
        free(s->rx);
        break;
    default:
        break;
    }
    return 0;
}

static const struct lws_protocols protocols[] = {
    { "bench", callback, sizeof(struct sess), MAX_MSG, 0, NULL, 0 },
    { NULL, NULL, 0, 0, 0, NULL, 0 },
};

/* lws cannot report the port it got for 0, so pick a free one first. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) < 0)
        return -1;
    close(fd);
    return ntohs(sa.sin_port);
}

int main(int argc, char **argv)
{
    int port = 0;
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--port") == 0)
            port = atoi(argv[i + 1]);
    if (port == 0 && (port = free_port()) < 0) {
        perror("lws_echo: port");
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = port;
    info.iface = "127.0.0.1";
    info.protocols = protocols;
    info.gid = -1;
    info.uid = -1;
    info.pt_serv_buf_size = 2 * MAX_MSG;
    struct lws_context *ctx = lws_create_context(&info);
    if (!ctx) {
        fprintf(stderr, "lws_echo: lws_create_context failed\n");
        return 1;
    }
    fprintf(stderr, "port=%d\n", port);
    while (!stop && lws_service(ctx, 0) >= 0) {
    }
    lws_context_destroy(ctx);
    return 0;
}
