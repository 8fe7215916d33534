/* wshub-bench --tls: the OpenSSL client context. TLS 1.2 and 1.3 with
 * OpenSSL's default ciphers, ALPN http/1.1, certificate verification against
 * --cacert or the system store unless --insecure. The per-connection side
 * (non-blocking SSL_connect, SSL_read/SSL_write) is in conn.c. */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>

#include "bench.h"

static void print_ssl_errors(const char *what)
{
    unsigned long e;
    char buf[256];
    fprintf(stderr, "wshub-bench: %s\n", what);
    while ((e = ERR_get_error()) != 0) {
        ERR_error_string_n(e, buf, sizeof buf);
        fprintf(stderr, "  %s\n", buf);
    }
}

struct ssl_ctx_st *bench_tls_ctx(const struct bench_opts *o)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        print_ssl_errors("SSL_CTX_new failed");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* The write buffer is only ever appended to while a write is pending,
     * and it may move (conn_reserve compacts it). */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Idle and connect hold or churn many connections: give the 2 x ~17 KiB
     * record buffers back while a connection has nothing in flight. */
    if (o->cmd == CMD_IDLE || o->cmd == CMD_CONNECT)
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
    /* The server closes TCP after the close handshake (RFC 6455 7.1.1)
     * without close_notify; that EOF is a clean end, as in plain mode. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
    /* Every connection makes a full handshake, as distinct clients would. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    static const unsigned char alpn[] = "\x08http/1.1";
    if (SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1) != 0) {
        print_ssl_errors("cannot set ALPN");
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (o->insecure) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return ctx;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int ok = o->cacert ? SSL_CTX_load_verify_locations(ctx, o->cacert, NULL)
                       : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        char what[512];
        snprintf(what, sizeof what, "cannot load CA certificates from %s",
                 o->cacert ? o->cacert : "the system store");
        print_ssl_errors(what);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

void bench_tls_ctx_free(struct ssl_ctx_st *ctx)
{
    SSL_CTX_free(ctx);
}
