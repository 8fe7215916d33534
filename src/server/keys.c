/* The keys tokens are verified with: auth.keys and auth.jwks_file from the
 * configuration file, and the JWK Set of auth.jwks_url, which a helper
 * thread fetches. A key set is built and checked whole, at start, on
 * SIGHUP (keys_reload) and after each good fetch, then published; each
 * worker copies the published set into its own struct wsh_auth before its
 * next token (keys_auth), so no lock is taken per token. hub.c verifies
 * tokens with it; this file only keeps the keys current. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server.h"
#include "wshub/auth.h"
#include "wshub/config.h"

/* Reads a whole file of at most max bytes into a NUL-terminated buffer. */
static char *read_file(const char *path, size_t max, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "cannot read %s", path);
        return NULL;
    }
    char *buf = malloc(max + 2);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    bool failed = buf != NULL && ferror(f);
    fclose(f);
    if (buf == NULL || failed || n > max) {
        if (buf == NULL)
            snprintf(err, errlen, "out of memory");
        else if (failed)
            snprintf(err, errlen, "cannot read %s", path);
        else
            snprintf(err, errlen, "%s is over %zu bytes", path, max);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* The keys tokens are verified with, built from the configuration's auth
 * section (auth.keys and auth.jwks_file) at start and again on SIGHUP.
 * It owns copies of everything, so the configuration it came from can be
 * freed. Workers never read it directly: each copies it into its own
 * struct wsh_auth when keys_gen moves (keys_auth). */
struct keyset {
    struct wsh_auth_key keys[WSH_AUTH_KEYS_MAX];
    size_t nkeys;
    char *own[2 * WSH_AUTH_KEYS_MAX + 2]; /* kid copies, secret copies, PEM texts, iss, aud */
    size_t nown;
    struct wsh_jwks jwks;
    const char *issuer, *audience; /* auth.issuer and auth.audience (in own[]), or NULL */
};

static pthread_mutex_t keys_mu = PTHREAD_MUTEX_INITIALIZER;
static struct keyset *keys_now;     /* guarded by keys_mu */
static _Atomic uint64_t keys_gen;   /* bumped under keys_mu each time keys_now changes */
static _Atomic size_t keys_count;   /* keys_now->nkeys, for /metrics */
static _Atomic size_t keys_skipped; /* JWKS keys ignored by the last load, for /metrics */
static _Atomic int workers_up;      /* workers that can be woken (keys_workers_ready) */

static void keyset_free(struct keyset *ks)
{
    if (ks == NULL)
        return;
    for (size_t i = 0; i < ks->nown; i++) {
        volatile char *p = ks->own[i];
        for (size_t j = 0; p[j] != '\0'; j++) /* secrets do not linger */
            p[j] = 0;
        free(ks->own[i]);
    }
    wsh_jwks_free(&ks->jwks);
    free(ks);
}

static char *keyset_own(struct keyset *ks, char *p)
{
    if (p != NULL)
        ks->own[ks->nown++] = p;
    return p;
}

static void on_jwks_skip(void *ud, size_t index, const char *kid, const char *why)
{
    (void)ud;
    char shown[65]; /* the kid comes from the file: shown short and safe */
    snprintf(shown, sizeof(shown), "%s", kid != NULL ? kid : "");
    wsh_log(WSH_LOG_WARN, "ev=jwks_skip index=%zu kid=\"%s\" reason=\"%s\"", index,
            wsh_log_value(shown), why);
}

/* Builds the key set of one auth section and checks it as each worker
 * will use it. Returns NULL with err set when any key cannot be used.
 * With `same`, the set in force built from this same section, its
 * auth.keys are taken from there rather than read again: only SIGHUP
 * re-reads key files, never a fetch (which would put an edit in force
 * unasked, or fail on a file caught half-written). */
static struct keyset *keyset_build(const struct wsh_auth_config *ac, const struct keyset *same,
                                   const char *fetched, size_t fetched_len, char *err,
                                   size_t errlen)
{
    struct keyset *ks = calloc(1, sizeof(*ks));
    if (ks == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if ((ac->issuer != NULL && (ks->issuer = keyset_own(ks, strdup(ac->issuer))) == NULL) ||
        (ac->audience != NULL && (ks->audience = keyset_own(ks, strdup(ac->audience))) == NULL)) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < ac->nkeys; i++) {
        const struct wsh_key_config *k = &ac->keys[i];
        struct wsh_auth_key *d = &ks->keys[ks->nkeys++];
        d->alg = (enum wsh_auth_alg)k->alg;
        d->kid = k->kid != NULL ? keyset_own(ks, strdup(k->kid)) : NULL;
        char *key;
        size_t n = 0;
        char rerr[256] = "out of memory";
        const void *have = k->secret;
        n = k->secret_len;
        if (have == NULL && same != NULL && i < same->nkeys) {
            have = same->keys[i].key;
            n = same->keys[i].key_len;
        }
        if (have != NULL) {
            if ((key = malloc(n + 1)) != NULL) {
                memcpy(key, have, n);
                key[n] = '\0';
            }
        } else {
            key = read_file(k->public_key_file, WSH_AUTH_KEY_MAX, &n, rerr, sizeof(rerr));
        }
        if (keyset_own(ks, key) == NULL || (k->kid != NULL && d->kid == NULL)) {
            snprintf(err, errlen, "auth.keys[%zu]%s: %s", i,
                     k->secret != NULL ? "" : ".public_key_file", rerr);
            goto fail;
        }
        d->key = (const uint8_t *)key;
        d->key_len = n;
    }
    /* A JWK Set: the file's, or the last one fetched from jwks_url
     * (none until the first fetch succeeds). */
    const char *src = ac->jwks_file != NULL ? "auth.jwks_file" : "auth.jwks_url";
    if (ac->jwks_file != NULL || fetched != NULL) {
        size_t n = fetched_len;
        char jerr[256];
        char *text = NULL;
        if (ac->jwks_file != NULL)
            text = read_file(ac->jwks_file, WSH_AUTH_JWKS_MAX, &n, jerr, sizeof(jerr));
        const char *doc = ac->jwks_file != NULL ? text : fetched;
        int rc = doc == NULL
                     ? WSH_EINVAL
                     : wsh_jwks_parse(doc, n, on_jwks_skip, NULL, &ks->jwks, jerr, sizeof(jerr));
        free(text);
        if (rc != WSH_OK) {
            snprintf(err, errlen, "%s: %s", src, rc == WSH_ENOMEM ? "out of memory" : jerr);
            goto fail;
        }
        if (ks->jwks.nkeys == 0) {
            snprintf(err, errlen, "%s: the set holds no usable key", src);
            goto fail;
        }
        /* A document served at a URL is public: an HMAC secret in it is one
         * anybody may read and sign with. Refused like private key members
         * (wsh_jwks_parse), so the keys in use stay; a local jwks_file may
         * hold the operator's own secrets. */
        for (size_t i = 0; ac->jwks_file == NULL && i < ks->jwks.nkeys; i++) {
            enum wsh_auth_alg alg = ks->jwks.keys[i].alg;
            if (alg == WSH_AUTH_HS256 || alg == WSH_AUTH_HS384 || alg == WSH_AUTH_HS512) {
                snprintf(err, errlen,
                         "%s: the set holds a shared secret (an oct key); a fetched set may "
                         "hold only public keys",
                         src);
                goto fail;
            }
        }
        if (ks->nkeys + ks->jwks.nkeys > WSH_AUTH_KEYS_MAX) {
            snprintf(err, errlen, "auth: %zu keys and %zu from the JWK Set, more than %u",
                     ks->nkeys, ks->jwks.nkeys, WSH_AUTH_KEYS_MAX);
            goto fail;
        }
        for (size_t i = 0; i < ks->jwks.nkeys; i++)
            ks->keys[ks->nkeys++] = ks->jwks.keys[i];
    }
    if (ks->nkeys == 0)
        return ks; /* no token can be verified: anonymous access only */
    /* Check the keys once here, so a bad key fails at start (or fails the
     * reload) rather than in a worker. */
    struct wsh_auth *probe;
    int bad = -1;
    struct wsh_auth_opts ao = {
        .keys = ks->keys, .nkeys = ks->nkeys, .issuer = ks->issuer, .audience = ks->audience
    };
    int rc = wsh_auth_create(&ao, &probe, &bad);
    if (rc != WSH_OK) {
        if (bad >= 0 && (size_t)bad < ac->nkeys) {
            const char *why = wsh_auth_key_problem(&ks->keys[bad]);
            snprintf(err, errlen, "auth.keys[%d]: the key cannot be used for %s: %s", bad,
                     wsh_auth_alg_name(ks->keys[bad].alg),
                     why != NULL ? why : "same alg and kid as an earlier key");
        } else if (bad >= 0) {
            snprintf(err, errlen, "%s: a key has the same alg and kid as one of auth.keys", src);
        } else {
            snprintf(err, errlen, "auth: %s", wsh_strerror(rc));
        }
        goto fail;
    }
    wsh_auth_destroy(probe);
    return ks;

fail:
    keyset_free(ks);
    return NULL;
}

/* Wakes every worker: its wakeup checks its sessions against the keys now
 * in force (hub.c, keys_check) and answers the tokens that waited for a
 * fetch. */
static void wake_workers(void)
{
    int nw = atomic_load(&workers_up);
    for (int i = 0; i < nw; i++)
        worker_wake(&wsh_workers[i]);
}

/* Makes ks the key set every worker verifies with from its next token on.
 * The caller wakes the workers (once the fetcher has also counted its
 * fetch as ended, so one wakeup serves both). */
static void keyset_publish(struct keyset *ks)
{
    pthread_mutex_lock(&keys_mu);
    struct keyset *old = keys_now;
    keys_now = ks;
    atomic_store(&keys_count, ks->nkeys);
    atomic_store(&keys_skipped, ks->jwks.nskipped);
    atomic_fetch_add(&keys_gen, 1);
    pthread_mutex_unlock(&keys_mu);
    keyset_free(old); /* workers copy under keys_mu, so no one holds it */
}

/* The auth section in force: the start file's, a reloaded one's after
 * SIGHUP (a reference of it then). The JWK Set fetcher builds from it too. */
static pthread_mutex_t cfg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct wsh_hub_config *auth_cfg;        /* guarded by cfg_mu */
static const struct wsh_hub_config *start_cfg; /* jwks_url and its settings */

int keys_init(struct wsh_hub_config *cfg, char *err, size_t errlen)
{
    start_cfg = cfg;
    auth_cfg = hub_config_ref(cfg);
    struct keyset *ks = keyset_build(&cfg->auth, NULL, NULL, 0, err, errlen);
    if (ks == NULL)
        return -1;
    keyset_publish(ks);
    /* An identity provider's keys sign tokens for all its applications
     * (docs/auth.md, Claims). */
    if (cfg->auth.jwks_url != NULL && cfg->auth.audience == NULL)
        wsh_log(WSH_LOG_WARN, "ev=auth_no_audience err=\"auth.jwks_url without auth.audience: "
                              "tokens its keys signed for any application are taken\"");
    return 0;
}

/* auth.jwks_url: a helper thread fetches the set at start, every
 * jwks_refresh_s, on SIGHUP, and when a token names a kid (or an alg) no
 * key has, at most once per JWKS_KICK_MS: that is how a key the issuer
 * has just published is picked up before the next refresh. A failed fetch
 * keeps the keys in use and is retried after 1, 2, 4 ... s, up to 60 s
 * (or the refresh interval). The URL, CA file and interval are read at
 * start; changing them needs a restart. */
#define JWKS_KICK_MS    10000
#define JWKS_TIMEOUT_MS 10000

static struct {
    pthread_t thread;
    bool running;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* on CLOCK_MONOTONIC */
    bool now;          /* fetch at once; guarded by mu */
    uint64_t begun;    /* fetches begun; guarded by mu */
    _Atomic uint64_t ended;
    _Atomic bool stop;
    _Atomic int64_t last_kick_ms;
    struct wsh_http_url url;
    struct wsh_http_proxy proxy; /* HTTPS_PROXY, when it applies to url */
    bool use_proxy;
    char *url_text, *ca_file;
    uint32_t refresh_s;
    char *body; /* the last set fetched that loaded; guarded by cfg_mu */
    size_t body_len;
} jf = { .mu = PTHREAD_MUTEX_INITIALIZER };

static _Atomic uint64_t jwks_fetches[2]; /* ok, error */
static _Atomic int64_t jwks_loaded_ms;   /* wall clock of the last good fetch, 0 before */
static _Atomic uint64_t key_waits[3];    /* KEY_WAIT_* */

static bool same_str(const char *a, const char *b)
{
    return a == NULL ? b == NULL : b != NULL && strcmp(a, b) == 0;
}

void keys_workers_ready(void)
{
    atomic_store(&workers_up, wsh_nworkers);
}

bool keys_none_yet(void)
{
    return jf.running && atomic_load(&keys_count) == 0;
}

uint64_t keys_fetched(void)
{
    return atomic_load(&jf.ended);
}

void keys_wait_count(int result)
{
    atomic_fetch_add(&key_waits[result], 1);
}

void keys_waits(uint64_t out[3])
{
    for (int i = 0; i < 3; i++)
        out[i] = atomic_load(&key_waits[i]);
}

/* The fetch a token with an unknown kid may wait for: the one queued, or
 * else the one under way; 0 when none is coming (the kick was rate
 * limited and the last fetch has ended: the token is refused at once). */
uint64_t keys_ticket(void)
{
    if (!jf.running)
        return 0;
    uint64_t t = 0;
    pthread_mutex_lock(&jf.mu);
    if (jf.now)
        t = jf.begun + 1;
    else if (jf.begun > atomic_load(&jf.ended))
        t = jf.begun;
    pthread_mutex_unlock(&jf.mu);
    return t;
}

/* Asks the fetcher for a fetch now; `forced` skips the rate limit. */
void keys_kick(bool forced)
{
    if (!jf.running)
        return;
    int64_t t = (int64_t)wsh_now_ms();
    if (!forced && t - atomic_load(&jf.last_kick_ms) < JWKS_KICK_MS)
        return;
    atomic_store(&jf.last_kick_ms, t);
    pthread_mutex_lock(&jf.mu);
    jf.now = true;
    pthread_cond_signal(&jf.cv);
    pthread_mutex_unlock(&jf.mu);
}

int keys_reload(struct wsh_hub_config *cfg, char *err, size_t errlen, size_t *nkeys,
                size_t *nskipped)
{
    const struct wsh_auth_config *na = &cfg->auth;
    if (!same_str(na->jwks_url, jf.url_text) ||
        (jf.url_text != NULL &&
         (!same_str(na->jwks_ca_file, jf.ca_file) || na->jwks_refresh_s != jf.refresh_s))) {
        snprintf(err, errlen,
                 "auth.jwks_url, jwks_ca_file and jwks_refresh_s change only with "
                 "a restart");
        return -1;
    }
    pthread_mutex_lock(&cfg_mu);
    struct keyset *ks = keyset_build(na, NULL, jf.body, jf.body_len, err, errlen);
    size_t now = atomic_load(&keys_count);
    int rc = 0;
    if (ks == NULL) {
        rc = -1;
    } else if (ks->nkeys == 0 && now == 0) {
        rc = 1; /* no keys before or after: nothing to do */
        *nkeys = 0;
        *nskipped = ks->jwks.nskipped;
    } else if (ks->nkeys == 0 && na->jwks_url == NULL) {
        /* Every token would fail from here on; that is never what a key
         * rotation means. */
        snprintf(err, errlen, "auth: the new configuration has no key; kept the %zu current ones",
                 now);
        rc = -1;
    }
    if (rc != 0) {
        pthread_mutex_unlock(&cfg_mu);
        keyset_free(ks);
        keys_kick(true);
        return rc;
    }
    struct wsh_hub_config *old = auth_cfg;
    auth_cfg = hub_config_ref(cfg);
    *nkeys = ks->nkeys;
    *nskipped = ks->jwks.nskipped;
    /* Published under cfg_mu, so a fetch that built from the old section
     * cannot publish after this one. */
    keyset_publish(ks);
    pthread_mutex_unlock(&cfg_mu);
    wake_workers();
    hub_config_release(old);
    keys_kick(true);
    return 0;
}

/* One fetch of auth.jwks_url; on success the keys from it are in use. */
static bool jwks_fetch_once(void)
{
    char err[512], body_err[256];
    char *body = NULL;
    size_t n = 0;
    int status = 0;
    int64_t t0 = (int64_t)wsh_now_ms();
    if (fetch_get(&jf.url, jf.use_proxy ? &jf.proxy : NULL, jf.ca_file, WSH_AUTH_JWKS_MAX,
                  JWKS_TIMEOUT_MS, &jf.stop, &body, &n, &status, body_err, sizeof(body_err)) != 0) {
        if (atomic_load(&jf.stop))
            return false; /* shutting down: not a failure of the issuer */
        snprintf(err, sizeof(err), "%s", body_err);
    } else {
        pthread_mutex_lock(&cfg_mu);
        /* keys_now was built from auth_cfg: every change of either is made
         * under cfg_mu, which is held. */
        pthread_mutex_lock(&keys_mu);
        struct keyset *ks = keyset_build(&auth_cfg->auth, keys_now, body, n, err, sizeof(err));
        pthread_mutex_unlock(&keys_mu);
        size_t nk = 0, sk = 0;
        if (ks != NULL) {
            free(jf.body);
            jf.body = body;
            jf.body_len = n;
            body = NULL;
            nk = ks->nkeys;
            sk = ks->jwks.nskipped;
            keyset_publish(ks); /* under cfg_mu: see keys_reload */
        }
        pthread_mutex_unlock(&cfg_mu);
        free(body);
        if (ks != NULL) {
            atomic_fetch_add(&jwks_fetches[0], 1);
            atomic_store(&jwks_loaded_ms, wsh_wall_ms());
            wsh_log(WSH_LOG_INFO, "ev=jwks_fetch ok=1 host=%s keys=%zu jwks_skipped=%zu ms=%lld",
                    jf.url.host, nk, sk, (long long)((int64_t)wsh_now_ms() - t0));
            return true;
        }
    }
    atomic_fetch_add(&jwks_fetches[1], 1);
    wsh_log(WSH_LOG_WARN, "ev=jwks_fetch ok=0 host=%s status=%d err=\"%s\"", jf.url.host, status,
            wsh_log_value(err));
    return false;
}

static void *jwks_main(void *arg)
{
    (void)arg;
    uint32_t backoff = 1;
    pthread_mutex_lock(&jf.mu);
    while (!atomic_load(&jf.stop)) {
        jf.now = false;
        jf.begun++;
        pthread_mutex_unlock(&jf.mu);
        bool ok = jwks_fetch_once();
        /* Tokens parked on this fetch get their answer now, whatever the
         * result: the keys are what they will be for a while. */
        atomic_fetch_add(&jf.ended, 1);
        wake_workers();
        uint32_t cap = jf.refresh_s < 60 ? jf.refresh_s : 60;
        uint32_t wait_s = ok ? jf.refresh_s : backoff;
        backoff = ok ? 1 : backoff * 2 > cap ? cap : backoff * 2;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += wait_s;
        pthread_mutex_lock(&jf.mu);
        while (!atomic_load(&jf.stop) && !jf.now &&
               pthread_cond_timedwait(&jf.cv, &jf.mu, &until) == 0) {
        }
    }
    pthread_mutex_unlock(&jf.mu);
    return NULL;
}

/* The value of an environment variable as curl reads it: lower case
 * first; empty is unset. */
static const char *proxy_env(const char *lower, const char *upper)
{
    const char *v = getenv(lower);
    if (v == NULL || *v == '\0')
        v = getenv(upper);
    return v != NULL && *v != '\0' ? v : NULL;
}

int keys_fetch_prepare(char *err, size_t errlen)
{
    const struct wsh_auth_config *a = &start_cfg->auth;
    if (a->jwks_url == NULL || jf.url_text != NULL)
        return 0;
    if (!wsh_http_url_parse(a->jwks_url, &jf.url)) { /* the config checked it */
        snprintf(err, errlen, "cannot start the auth.jwks_url fetcher: bad URL");
        return -1;
    }
    if ((jf.url_text = strdup(a->jwks_url)) == NULL ||
        (a->jwks_ca_file != NULL && (jf.ca_file = strdup(a->jwks_ca_file)) == NULL)) {
        snprintf(err, errlen, "cannot start the auth.jwks_url fetcher: out of memory");
        return -1;
    }
    /* HTTPS_PROXY and NO_PROXY, as curl and Go read them, for an issuer
     * that is not on loopback. A proxy that cannot be understood stops the
     * start: the keys must not be fetched around it. */
    const char *px = proxy_env("https_proxy", "HTTPS_PROXY");
    if (px != NULL) {
        if (!wsh_http_proxy_parse(px, &jf.proxy)) {
            snprintf(err, errlen,
                     "HTTPS_PROXY: not a proxy URL of the form http://[user:password@]host[:port]");
            return -1;
        }
        jf.use_proxy =
            jf.url.tls && !jf.url.loopback &&
            !wsh_http_no_proxy(proxy_env("no_proxy", "NO_PROXY"), jf.url.host, jf.url.port);
        char where[sizeof(jf.proxy.url.host) + 16];
        if (wsh_http_url_authority(&jf.proxy.url, true, where, sizeof(where)) < 0)
            where[0] = '\0';
        wsh_log(WSH_LOG_INFO, "ev=jwks_proxy proxy=%s used=%d", where, jf.use_proxy ? 1 : 0);
    }
    jf.refresh_s = a->jwks_refresh_s;
    return 0;
}

int keys_fetch_start(char *err, size_t errlen)
{
    if (keys_fetch_prepare(err, errlen) != 0)
        return -1;
    if (jf.url_text == NULL)
        return 0;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&jf.cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&jf.thread, NULL, jwks_main, NULL) != 0) {
        /* glibc's EAGAIN covers both */
        snprintf(err, errlen,
                 "cannot start the auth.jwks_url fetcher: out of memory, or of threads");
        return -1;
    }
    jf.running = true;
    return 0;
}

void keys_fetch_stop(void)
{
    if (!jf.running)
        return;
    atomic_store(&jf.stop, true);
    pthread_mutex_lock(&jf.mu);
    pthread_cond_signal(&jf.cv);
    pthread_mutex_unlock(&jf.mu);
    pthread_join(jf.thread, NULL);
    jf.running = false;
    free(jf.body);
    free(jf.url_text);
    free(jf.ca_file);
    jf.body = jf.url_text = jf.ca_file = NULL;
}

void keys_jwks_fetches(uint64_t *ok, uint64_t *failed, int64_t *loaded_ms)
{
    *loaded_ms = atomic_load(&jwks_loaded_ms);
    *ok = atomic_load(&jwks_fetches[0]);
    *failed = atomic_load(&jwks_fetches[1]);
}

size_t keys_in_use(size_t *nskipped)
{
    *nskipped = atomic_load(&keys_skipped);
    return atomic_load(&keys_count);
}

/* One struct wsh_auth per worker, copied from keys_now: each worker
 * verifies with its own parsed keys and takes no lock per token. */
static _Thread_local struct wsh_auth *auth;
static _Thread_local uint64_t auth_gen; /* the keys_gen auth was built at */
static _Thread_local bool auth_stale;   /* making a newer copy failed */

struct wsh_auth *keys_auth(uint64_t *gen)
{
    if (atomic_load_explicit(&keys_gen, memory_order_acquire) != auth_gen) {
        pthread_mutex_lock(&keys_mu);
        uint64_t now = atomic_load(&keys_gen);
        struct wsh_auth *a = NULL;
        int rc = WSH_OK;
        if (keys_now != NULL && keys_now->nkeys > 0) {
            struct wsh_auth_opts ao = { .keys = keys_now->keys,
                                        .nkeys = keys_now->nkeys,
                                        .issuer = keys_now->issuer,
                                        .audience = keys_now->audience };
            int bad;
            rc = wsh_auth_create(&ao, &a, &bad);
        }
        pthread_mutex_unlock(&keys_mu);
        /* Out of memory: the old keys stay, and the next token tries again. */
        auth_stale = rc != WSH_OK;
        if (rc == WSH_OK) {
            wsh_auth_destroy(auth);
            auth = a;
            auth_gen = now;
        }
    }
    if (gen != NULL)
        *gen = auth_gen;
    return auth;
}

bool keys_auth_stale(void)
{
    return auth_stale;
}

uint64_t keys_generation(void)
{
    return atomic_load_explicit(&keys_gen, memory_order_acquire);
}

int keys_worker_init(void)
{
    (void)keys_auth(NULL);
    return auth != NULL || atomic_load(&keys_count) == 0 ? 0 : -1;
}

void keys_worker_exit(void)
{
    wsh_auth_destroy(auth);
    auth = NULL;
    auth_gen = 0;
    auth_stale = false;
}
