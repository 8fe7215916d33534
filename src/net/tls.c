/* TLS with OpenSSL on our own loop: non-blocking sessions on the socket,
 * records of up to 16 KiB gathered from the write queue, certificate reload
 * without dropping connections (SIGHUP). */
#include <errno.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "net.h"

#define TLS_RECORD 16384u

struct wsh_tls {
    pthread_mutex_t mu; /* guards ctx against a concurrent reload */
    SSL_CTX *ctx;
    char *cert_file, *key_file, *ca_file;
};

static void last_error(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    char reason[256] = "unknown error";
    if (e)
        ERR_error_string_n(e, reason, sizeof(reason));
    snprintf(err, errlen, "%s: %s", what, reason);
    ERR_clear_error();
}

/* RFC 7301: pick http/1.1 when offered; otherwise carry on without ALPN
 * rather than fail, as most servers do for clients that offer only h2. */
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    for (unsigned i = 0; i < inlen;) {
        unsigned n = in[i];
        if (i + 1 + n > inlen)
            break;
        if (n == 8 && memcmp(in + i + 1, "http/1.1", 8) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char)n;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + n;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

static SSL_CTX *make_ctx(const struct wsh_tls *t, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        last_error(err, errlen, "SSL_CTX_new");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* Forward-secret AEAD suites only for TLS 1.2 (Mozilla "intermediate");
     * TLS 1.3 keeps OpenSSL's defaults, which are all modern. */
    SSL_CTX_set_cipher_list(ctx, "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                 "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                 "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305");
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    /* RELEASE_BUFFERS: an idle TLS connection holds no record buffers.
     * Partial writes and moving buffers: we resume from the write queue. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    /* Without a context a resumed TLS 1.2 session is refused with an
     * internal error once client certificates are asked for (OpenSSL
     * cannot tell whose cache the session came from). */
    static const unsigned char sid_ctx[] = "wshub";
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
    if (SSL_CTX_use_certificate_chain_file(ctx, t->cert_file) != 1) {
        last_error(err, errlen, t->cert_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, t->key_file, SSL_FILETYPE_PEM) != 1) {
        last_error(err, errlen, t->key_file);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        last_error(err, errlen, "key does not match certificate");
        goto fail;
    }
    if (t->ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, t->ca_file, NULL) != 1) {
            last_error(err, errlen, t->ca_file);
            goto fail;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

int wsh_tls_create(const struct wsh_tls_opts *o, char *err, size_t errlen, struct wsh_tls **out)
{
    struct wsh_tls *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return WSH_ENOMEM;
    pthread_mutex_init(&t->mu, NULL);
    t->cert_file = dup_or_null(o->cert_file);
    t->key_file = dup_or_null(o->key_file);
    t->ca_file = dup_or_null(o->ca_file);
    if (t->cert_file == NULL || t->key_file == NULL || (o->ca_file && t->ca_file == NULL)) {
        snprintf(err, errlen, "both a certificate and a key are required");
        goto fail;
    }
    t->ctx = make_ctx(t, err, errlen);
    if (t->ctx == NULL)
        goto fail;
    *out = t;
    return WSH_OK;
fail:
    wsh_tls_destroy(t);
    return WSH_EINVAL;
}

int wsh_tls_reload(struct wsh_tls *t, char *err, size_t errlen)
{
    SSL_CTX *ctx = make_ctx(t, err, errlen);
    if (ctx == NULL)
        return WSH_EINVAL;
    pthread_mutex_lock(&t->mu);
    SSL_CTX *old = t->ctx;
    t->ctx = ctx;
    pthread_mutex_unlock(&t->mu);
    /* Sessions made from the old context hold their own references. */
    SSL_CTX_free(old);
    return WSH_OK;
}

/* What the listing of one kind found: how many algorithms, and which of
 * the names the server itself needs (a listing cut short by a failed
 * allocation still counts some). */
struct kind_seen {
    size_t n;
    const char *const *need; /* NULL-terminated, or NULL */
    unsigned found;          /* bit i: need[i] was listed */
};

/* One callback per kind: the do_all functions take each its own pointer
 * type, and each kind its own is_a. */
#define SEEN(name, type, is_a)                                   \
    static void name(type *alg, void *arg)                       \
    {                                                            \
        struct kind_seen *k = arg;                               \
        k->n++;                                                  \
        for (unsigned i = 0; k->need != NULL && k->need[i]; i++) \
            if (is_a(alg, k->need[i]))                           \
                k->found |= 1u << i;                             \
    }
SEEN(seen_md, EVP_MD, EVP_MD_is_a)
SEEN(seen_cipher, EVP_CIPHER, EVP_CIPHER_is_a)
SEEN(seen_kdf, EVP_KDF, EVP_KDF_is_a)
SEEN(seen_mac, EVP_MAC, EVP_MAC_is_a)
SEEN(seen_keymgmt, EVP_KEYMGMT, EVP_KEYMGMT_is_a)
SEEN(seen_keyexch, EVP_KEYEXCH, EVP_KEYEXCH_is_a)
SEEN(seen_signature, EVP_SIGNATURE, EVP_SIGNATURE_is_a)
SEEN(seen_asym, EVP_ASYM_CIPHER, EVP_ASYM_CIPHER_is_a)
SEEN(seen_kem, EVP_KEM, EVP_KEM_is_a)
SEEN(seen_rand, EVP_RAND, EVP_RAND_is_a)
#undef SEEN

int wsh_openssl_prime(void)
{
    /* Its own start first: what it could not set up there, it would
     * otherwise find missing later (seen: a NULL lock, a crash). */
    if (OPENSSL_init_ssl(0, NULL) != 1 || OSSL_LIB_CTX_get0_global_default() == NULL)
        return WSH_ENOMEM;
    /* What the server needs, of what every OpenSSL build has (FIPS ones
     * included): the accept key, tokens, TLS. */
    static const char *const mds[] = { "SHA1", "SHA256", "SHA384", NULL };
    static const char *const ciphers[] = { "AES-128-GCM", "AES-256-GCM", NULL };
    static const char *const kdfs[] = { "TLS13-KDF", "HKDF", "TLS1-PRF", NULL };
    static const char *const macs[] = { "HMAC", NULL };
    static const char *const keymgmts[] = { "EC", "RSA", NULL };
    struct kind_seen k[10] = { { .need = mds },
                               { .need = ciphers },
                               { .need = kdfs },
                               { .need = macs },
                               { .need = keymgmts } };
    EVP_MD_do_all_provided(NULL, seen_md, &k[0]);
    EVP_CIPHER_do_all_provided(NULL, seen_cipher, &k[1]);
    EVP_KDF_do_all_provided(NULL, seen_kdf, &k[2]);
    EVP_MAC_do_all_provided(NULL, seen_mac, &k[3]);
    EVP_KEYMGMT_do_all_provided(NULL, seen_keymgmt, &k[4]);
    EVP_KEYEXCH_do_all_provided(NULL, seen_keyexch, &k[5]);
    EVP_SIGNATURE_do_all_provided(NULL, seen_signature, &k[6]);
    EVP_ASYM_CIPHER_do_all_provided(NULL, seen_asym, &k[7]);
    EVP_KEM_do_all_provided(NULL, seen_kem, &k[8]);
    EVP_RAND_do_all_provided(NULL, seen_rand, &k[9]);
    ERR_clear_error();
    /* The kinds every server uses came back with something, and with
     * every name it needs. */
    for (size_t i = 0; i < 7; i++) {
        size_t want = 0;
        while (k[i].need != NULL && k[i].need[want] != NULL)
            want++;
        if (k[i].n == 0 || k[i].found != (1u << want) - 1)
            return WSH_ENOMEM;
    }
    return WSH_OK;
}

void wsh_tls_destroy(struct wsh_tls *t)
{
    if (t == NULL)
        return;
    SSL_CTX_free(t->ctx);
    free(t->cert_file);
    free(t->key_file);
    free(t->ca_file);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

SSL *wsh_tls_conn_new(struct wsh_tls *t, int fd)
{
    pthread_mutex_lock(&t->mu);
    SSL *ssl = SSL_new(t->ctx);
    pthread_mutex_unlock(&t->mu);
    /* A failure leaves its reason on this thread's error queue, where the
     * next connection's SSL_get_error would find it and take an ordinary
     * WANT_READ for a protocol error. */
    if (ssl == NULL) {
        ERR_clear_error();
        return NULL;
    }
    if (SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        ERR_clear_error();
        return NULL;
    }
    SSL_set_accept_state(ssl);
    return ssl;
}

void wsh_tls_conn_free(SSL *ssl)
{
    SSL_free(ssl);
}

/* OpenSSL keeps a per-thread error queue: leave it empty after every
 * failure, or the next unrelated call on this thread reports it. */
static int map_error(SSL *ssl, int r)
{
    int e = SSL_get_error(ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        return WSH_EAGAIN;
    case SSL_ERROR_ZERO_RETURN:
        ERR_clear_error();
        return 0;
    case SSL_ERROR_SYSCALL:
        ERR_clear_error();
        return errno ? -errno : 0; /* 0: EOF without close_notify */
    default:
        ERR_clear_error();
        return WSH_EPROTO;
    }
}

int wsh_tls_handshake(SSL *ssl)
{
    int r = SSL_do_handshake(ssl);
    if (r == 1)
        return WSH_OK;
    int e = map_error(ssl, r);
    return e == WSH_EAGAIN ? WSH_EAGAIN : WSH_EPROTO;
}

bool wsh_tls_want_write(SSL *ssl)
{
    return SSL_want_write(ssl);
}

ssize_t wsh_tls_read(SSL *ssl, uint8_t *buf, size_t cap)
{
    size_t got = 0;
    int r = SSL_read_ex(ssl, buf, cap, &got) ? 1 : 0;
    if (r == 1)
        return (ssize_t)got;
    int e = map_error(ssl, 0);
    return e;
}

bool wsh_tls_pending(SSL *ssl)
{
    return SSL_pending(ssl) > 0;
}

int wsh_tls_flush(SSL *ssl, struct wsh_wq **q, uint32_t *retry)
{
    static _Thread_local uint8_t scratch[TLS_RECORD];
    while (*q != NULL) {
        const uint8_t *p;
        /* OpenSSL requires a repeated write to offer the same bytes: the
         * queue front is unchanged, so gathering the same length does. */
        size_t max = *retry ? *retry : TLS_RECORD;
        size_t n = wsh_wq_gather(*q, scratch, max, &p);
        size_t written = 0;
        if (SSL_write_ex(ssl, p, n, &written)) {
            *retry = 0;
            wsh_wq_consume(q, written);
            continue;
        }
        int e = map_error(ssl, 0);
        if (e == WSH_EAGAIN) {
            *retry = (uint32_t)n;
            return WSH_EAGAIN;
        }
        return e == 0 ? -EPIPE : e;
    }
    return WSH_OK;
}

void wsh_tls_shutdown(SSL *ssl)
{
    if (SSL_is_init_finished(ssl)) {
        if (SSL_shutdown(ssl) < 0)
            ERR_clear_error();
    }
}
