/* HTTP responses (src/http/response.c), as the JWK Set fetch reads them:
 * input = a whole response up to the server's close. Invariants: the
 * verdict is OK, EPROTO or ETOOBIG, always with a reason when not OK; on
 * OK the status is 100..599 and the body lies inside the buffer, within
 * the bound; a second parse of a fresh copy gives the same body bytes
 * (the in-place de-chunking depends on nothing but the input). And
 * wsh_http_response_complete, which tells a fetch when to stop reading,
 * is monotonic: once a prefix is whole, every longer one is. */
#include <stdlib.h>
#include <string.h>

#include "wshub/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_BODY 4096u

static int parse(const uint8_t *data, size_t size, char **buf, struct wsh_http_response *r)
{
    *buf = malloc(size + 1);
    if (*buf == NULL)
        abort();
    if (size > 0)
        memcpy(*buf, data, size);
    const char *why = NULL;
    int rc = wsh_http_parse_response(*buf, size, MAX_BODY, r, &why);
    if (rc != WSH_OK && (why == NULL || why[0] == '\0'))
        abort();
    if (rc != WSH_OK && rc != WSH_EPROTO && rc != WSH_ETOOBIG)
        abort();
    return rc;
}

static void check_complete(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    bool whole = wsh_http_response_complete(p, size);
    for (size_t cut = 0; cut < size; cut += 1 + cut / 8)
        if (wsh_http_response_complete(p, cut) && !whole)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_complete(data, size);
    char *a, *b;
    struct wsh_http_response ra, rb;
    int rc = parse(data, size, &a, &ra);
    if (rc == WSH_OK) {
        if (ra.status < 100 || ra.status > 599 || ra.body_len > MAX_BODY || ra.body < a ||
            ra.body + ra.body_len > a + size)
            abort();
        if (parse(data, size, &b, &rb) != WSH_OK || rb.status != ra.status ||
            rb.body_len != ra.body_len || memcmp(ra.body, rb.body, ra.body_len) != 0)
            abort();
        free(b);
    }
    free(a);
    return 0;
}
