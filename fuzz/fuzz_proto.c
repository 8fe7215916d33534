/* JSON envelope codec: input = one client message. A parsed command's
 * fields, encoded into replies and pushes, must always give valid JSON,
 * and the raw payload span must decode to the payload jansson found. */
#include <stdlib.h>

#include "wshub/proto.h"

static void must_parse(const struct wsh_jbuf *b)
{
    json_t *v = json_loadb(b->data, b->len, JSON_ALLOW_NUL, NULL);
    if (v == NULL)
        abort();
    json_decref(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wsh_cmd c;
    int code = 0;
    const char *msg = NULL;
    struct wsh_jbuf b = { 0 }, pay = { 0 };
    int rc = wsh_proto_parse((const char *)data, size, NULL, &c, &code, &msg);
    if (rc != WSH_OK) {
        if (code < 1000 || msg == NULL || c._root != NULL)
            abort();
        if (wsh_proto_encode_error(&b, c.id, NULL, 0, code, msg, 0) != WSH_OK)
            abort();
        must_parse(&b);
        wsh_jbuf_free(&b);
        return 0;
    }
    if (c.payload_raw != NULL) {
        json_t *v =
            json_loadb(c.payload_raw, c.payload_raw_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (v == NULL || !json_equal(v, c.payload))
            abort();
        json_decref(v);
    }
    if (wsh_proto_payload_dump(&c, &pay) != WSH_OK)
        abort();
    const char *tok = c.token ? c.token : c.msg_id;
    size_t tok_len = c.token ? c.token_len : c.msg_id_len;
    if (wsh_proto_encode_error(&b, c.id, c.channel, c.channel_len, 1002, "x", 1) != WSH_OK)
        abort();
    must_parse(&b);
    wsh_jbuf_reset(&b);
    if (wsh_proto_encode_ack(&b, c.id, c.channel, c.channel_len, c.offset, 2) != WSH_OK)
        abort();
    must_parse(&b);
    wsh_jbuf_reset(&b);
    if (wsh_proto_encode_message(&b, c.channel, c.channel_len, c.recover_offset, c.recover_epoch,
                                 c.recover_epoch_len, tok, tok_len, pay.data, pay.len,
                                 (int64_t)c.since) != WSH_OK)
        abort();
    must_parse(&b);
    wsh_jbuf_free(&pay);
    wsh_jbuf_free(&b);
    wsh_cmd_free(&c);
    return 0;
}
