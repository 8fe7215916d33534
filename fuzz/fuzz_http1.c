/* libFuzzer harness for the HTTP/1.1 request-head parser. Byte 0 picks the
 * limits (defaults, or small ones so 414/431 are reachable), bytes 1..3 are
 * cycled as chunk sizes; the rest is the request. The chunked feed must end
 * exactly as the whole feed, and every slice must lie inside the head. */
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wshub/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HMAX 64

static void check_slice(const char *p, size_t n, const char *buf, size_t head)
{
    if (p != NULL && (p < buf || n > head || (size_t)(p - buf) > head - n))
        abort();
}

/* X-Forwarded-For behind two trusted blocks: a client it names is an
 * address, and not a trusted one unless every entry up to an unreadable
 * one (or the start) was trusted; with no field nothing is written. */
static void check_forwarded(const struct wsh_http_request *q)
{
    static const char *const blocks[] = { "10.0.0.0/8", "2001:db8::/32" };
    struct wsh_cidr tr[2];
    for (int i = 0; i < 2; i++)
        if (!wsh_cidr_parse(blocks[i], strlen(blocks[i]), &tr[i]))
            abort();
    struct sockaddr_storage out, before;
    memset(&out, 0x5A, sizeof(out));
    before = out;
    bool any = wsh_http_find(q, "X-Forwarded-For") != NULL;
    if (!wsh_http_forwarded_for(q, tr, 2, &out)) {
        if (memcmp(&out, &before, sizeof(out)) != 0)
            abort();
        return;
    }
    if (!any || (out.ss_family != AF_INET && out.ss_family != AF_INET6))
        abort();
    /* The same walk with nothing trusted stops at the last entry. */
    struct sockaddr_storage last;
    if (!wsh_http_forwarded_for(q, NULL, 0, &last) || wsh_cidr_contains(NULL, 0, &last))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    struct wsh_http_limits lim = { WSH_HTTP_DEFAULT_REQUEST_LINE, WSH_HTTP_DEFAULT_HEAD,
                                   WSH_HTTP_DEFAULT_HEADERS };
    if (data[0] & 1)
        lim = (struct wsh_http_limits){ (size_t)(data[0] >> 1 & 7) * 8, (size_t)(data[0] >> 4) * 16,
                                        (size_t)(data[0] >> 5) };
    const char *buf = (const char *)data + 4;
    size_t len = size - 4;

    struct wsh_http_header h1[HMAX], h2[HMAX];
    struct wsh_http_request q1, q2;
    int st1 = -1, st2 = 0; /* st2 stays 0 when there is nothing to feed. */
    ssize_t r1 = wsh_http_parse_request(buf, len, 0, &lim, &q1, h1, HMAX, &st1);

    ssize_t r2 = 0;
    for (size_t fed = 0, i = 0; fed < len && r2 == 0; i++) {
        size_t last = fed;
        fed += (size_t)data[1 + i % 3] + 1;
        fed = fed < len ? fed : len;
        r2 = wsh_http_parse_request(buf, fed, last, &lim, &q2, h2, HMAX, &st2);
    }

    if (r1 != r2 || st1 != st2 || (r1 > 0 && (size_t)r1 > len))
        abort();
    if (r1 <= 0)
        return 0;
    size_t head = (size_t)r1;
    if (q1.nheaders != q2.nheaders || q1.nheaders > lim.max_headers || q1.method != q2.method ||
        q1.method_len != q2.method_len || q1.target != q2.target ||
        q1.target_len != q2.target_len || q1.query != q2.query || q1.query_len != q2.query_len ||
        q1.path_len != q2.path_len || q1.minor_version != q2.minor_version ||
        q1.content_length != q2.content_length || q1.chunked != q2.chunked)
        abort();
    check_slice(q1.method, q1.method_len, buf, head);
    check_slice(q1.target, q1.target_len, buf, head);
    check_slice(q1.path, q1.path_len, buf, head);
    check_slice(q1.query, q1.query_len, buf, head);
    for (size_t i = 0; i < q1.nheaders; i++) {
        if (memcmp(&h1[i], &h2[i], sizeof(h1[i])) != 0)
            abort();
        check_slice(h1[i].name, h1[i].name_len, buf, head);
        check_slice(h1[i].value, h1[i].value_len, buf, head);
    }
    check_forwarded(&q1);
    /* The path percent-decoded (the API's channel names): never longer
     * than the path, never a NUL, and a plain path as it is. */
    char dec[4096];
    ssize_t dn = wsh_http_pct_decode(q1.path, q1.path_len, dec, sizeof(dec));
    if (dn > (ssize_t)q1.path_len || (dn >= 0 && memchr(dec, 0, (size_t)dn) != NULL) ||
        (dn < 0 && memchr(q1.path, '%', q1.path_len) == NULL && q1.path_len <= sizeof(dec)) ||
        (dn >= 0 && memchr(q1.path, '%', q1.path_len) == NULL &&
         memcmp(dec, q1.path, q1.path_len) != 0))
        abort();
    return 0;
}
