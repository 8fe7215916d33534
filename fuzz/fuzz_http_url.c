/* URLs the server itself fetches and the proxy settings around them
 * (src/http/response.c wsh_http_url_parse, src/http/egress.c): input =
 * a URL or proxy string, then after the first newline a NO_PROXY list.
 * Invariants: whatever is accepted is well formed (a host of allowed
 * characters, a port of 1..65535, a path that is a request target,
 * credentials without control bytes), and a NO_PROXY verdict depends on
 * nothing but its input: a list naming the host exactly, or "*", covers
 * it. */
#include <stdlib.h>
#include <string.h>

#include "wshub/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_url(const struct wsh_http_url *u)
{
    size_t hl = strlen(u->host), pl = strlen(u->port);
    if (hl == 0 || hl >= sizeof(u->host) || pl == 0 || pl > 5)
        abort();
    long port = strtol(u->port, NULL, 10);
    if (strspn(u->port, "0123456789") != pl || port < 1 || port > 65535)
        abort();
    if (u->path[0] != '/')
        abort();
    char a[sizeof(u->host) + 16];
    int n = wsh_http_url_authority(u, true, a, sizeof(a));
    if (n < 0 || (size_t)n != strlen(a) || strstr(a, u->host) == NULL)
        abort();
    for (const char *p = u->path; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || *p == '#')
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = malloc(size + 1);
    if (in == NULL)
        abort();
    memcpy(in, data, size);
    in[size] = '\0';
    char *list = strchr(in, '\n');
    if (list != NULL)
        *list++ = '\0';
    struct wsh_http_url u;
    const char *host = "issuer.example", *port = "443";
    if (wsh_http_url_parse(in, &u)) {
        check_url(&u);
        host = u.host;
        port = u.port;
    }
    struct wsh_http_proxy px;
    if (wsh_http_proxy_parse(in, &px)) {
        check_url(&px.url);
        for (const char *p = px.auth; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                abort();
        if (px.auth[0] != '\0' && strchr(px.auth, ':') == NULL)
            abort();
    }
    if (list != NULL) {
        bool a = wsh_http_no_proxy(list, host, port);
        if (a != wsh_http_no_proxy(list, host, port))
            abort();
        if (strcmp(list, host) == 0 && !strchr(host, ',') && !a && host[0] != '.' &&
            host[0] != '*' && host[0] != '[' && host[0] != ' ')
            abort();
    }
    if (!wsh_http_no_proxy("*", host, port))
        abort();
    free(in);
    return 0;
}
