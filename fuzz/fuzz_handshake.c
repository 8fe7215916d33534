/* Handshake: input = mode byte + text. Lines ("\n") become a request for
 * wsh_hs_server_check (first line: the method); the whole text is also a
 * server response for wsh_hs_client_parse_response, checked on growing
 * prefixes. Results must be consistent and stay inside the input. */
#include <stdlib.h>
#include <string.h>

#include "wshub/ws.h"

static bool any_proto(const char *p, size_t n, void *user)
{
    (void)user;
    return n > 0 && p[0] == 'c';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    const char *s = (const char *)data + 1, *end = s + size - 1;
    struct wsh_hs_header h[64];
    struct wsh_hs_request req = { .minor_version = mode & 3, .headers = h };
    const char *line = s;
    for (const char *q = s; q <= end && req.nheaders < 64; q++) {
        if (q != end && *q != '\n')
            continue;
        const char *colon = memchr(line, ':', (size_t)(q - line));
        if (line == s)
            req.method = (struct wsh_slice){ line, (size_t)(q - line) };
        else if (colon != NULL)
            h[req.nheaders++] = (struct wsh_hs_header){ { line, (size_t)(colon - line) },
                                                        { colon + 1, (size_t)(q - colon - 1) } };
        line = q + 1;
    }
    struct wsh_hs_result res;
    char out[1024];
    int rc = wsh_hs_server_check(&req, mode & 4 ? any_proto : NULL, NULL, NULL, &res);
    if ((rc == WSH_OK) != (res.status == 101) || (rc != WSH_OK && res.error == NULL))
        abort();
    if (res.protocol.n && (res.protocol.p < s || res.protocol.p + res.protocol.n > end))
        abort();
    ssize_t w = rc == WSH_OK ? wsh_hs_server_response(out, sizeof(out), &res, "x")
                             : wsh_hs_error_response(out, sizeof(out), res.status, res.error);
    if (w <= 0 && (rc != WSH_OK || res.protocol.n < 800))
        abort();

    /* Client side: once complete, every longer prefix gives the same. */
    static const char key[] = "dGhlIHNhbXBsZSBub25jZQ==";
    struct wsh_hs_client_result cr;
    size_t len = size - 1;
    ssize_t full = wsh_hs_client_parse_response(s, len, key, &cr);
    if (full > (ssize_t)len || (full > 0 && memcmp(s + full - 4, "\r\n\r\n", 4) != 0))
        abort();
    for (size_t n = 1 + mode % 7; n < len; n += 1 + mode % 13) {
        ssize_t r = wsh_hs_client_parse_response(s, n, key, &cr);
        if (r != 0 && r != full)
            abort();
    }
    return 0;
}
