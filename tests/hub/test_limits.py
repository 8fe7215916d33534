"""Every limit of docs/config.md / LIMITS.md past its bound, with the
documented reply."""
import asyncio
import json
import random
import string
import time

import wsraw
from conftest import MULT, Client, base_config, expect_error, merge, run_async, token
from test_api import API_KEY, call
from test_reload import reload


def limits(**kw):
    return merge(base_config(), {"limits": kw})


@run_async
async def test_publish_rate_token_bucket(hub):
    h = hub(limits(publish_rate=4, publish_burst=5))
    a = await Client.open(h, token("alice"))
    b = await Client.open(h, token("bob"))
    await a.subscribe("chat:rate")
    await b.subscribe("chat:rate")
    for i in range(5):
        await a.publish("chat:rate", {"i": i})
    await expect_error(a, "publish", "chat:rate", 3000, payload={"i": "over"})
    # signals take from the same bucket
    await a.send({"type": "signal", "id": 99, "channel": "chat:rate", "payload": {"typing": 1}})
    e = await a.expect(lambda m: m.get("id") == 99)
    assert e["type"] == "error" and e["payload"]["code"] == 3000, e
    got = await b.messages("chat:rate", 5)
    assert [m["payload"] for m in got] == [{"i": i} for i in range(5)]
    await b.quiet(0.2, lambda m: m["type"] in ("message", "signal"))
    await asyncio.sleep(0.6)  # refills about 2 tokens
    assert await a.publish("chat:rate", {"i": 5}) == 6
    # the bucket is per connection: bob has his own
    for i in range(5):
        await b.publish("chat:rate", {"b": i})
    await a.close()
    await b.close()


@run_async
async def test_publish_rate_abuse_closes_4103(hub):
    """docs/protocol.md: over the rate, error 3000; a client that goes on
    regardless is told `disconnect` and closed with 4103, reconnect allowed
    once a whole burst has refilled. One that pauses when told stays, and
    read receipts, which come at the room's pace, never close."""
    # 2 a second: carol's nine round trips below have half a second before
    # a token comes back, even under the sanitizers on a loaded machine.
    h = hub(limits(publish_rate=2, publish_burst=5))
    a = await Client.open(h, token("alice"))
    calm = await Client.open(h, token("carol"))
    await a.subscribe("chat:abuse")
    await calm.subscribe("chat:abuse")
    # carol: the burst, refusals up to one burst's worth, then a pause.
    for i in range(5):
        await calm.publish("chat:abuse", {"c": i})
    for _ in range(4):
        await expect_error(calm, "publish", "chat:abuse", 3000, payload={"c": "over"})
    await asyncio.sleep(0.6)
    assert await calm.publish("chat:abuse", {"c": "after the pause"}) >= 6
    # Reads far past the rate: refused (3000), never a close.
    for i in range(40):
        await calm.send({"type": "read", "id": 500 + i, "channel": "chat:abuse",
                         "payload": {"offset": 1}})
    replies = [await calm.expect(lambda m, i=i: m.get("id") == 500 + i) for i in range(40)]
    refused = [r for r in replies if r["type"] == "error"]
    assert len(refused) >= 30 and all(r["payload"]["code"] == 3000 for r in refused), replies
    await calm.subscribe("chat:still-open")
    # alice: 40 publishes without waiting for an answer.
    for i in range(40):
        await a.send({"type": "publish", "id": 100 + i, "channel": "chat:abuse",
                      "payload": {"a": i}})
    code, reason, seen = await a.expect_close(10)
    assert (code, reason) == (4103, "rate limited"), (code, reason)
    acks = [m for m in seen if m["type"] == "ack"]
    errors = [m for m in seen if m["type"] == "error"]
    assert len(acks) <= 6, acks  # the burst (and what refilled meanwhile)
    assert all(m["payload"]["code"] == 3000 for m in errors), errors
    # Refusals past max(burst, 32), and no answer after the close.
    assert 32 < len(errors) <= 35 and len(acks) + len(errors) < 40, (len(acks), len(errors))
    disc = [m for m in seen if m["type"] == "disconnect"]
    assert len(disc) == 1 and seen[-1] is disc[0], seen[-3:]
    assert disc[0]["payload"] == {"code": 4103, "reason": "rate limited", "reconnect": True,
                                  "retry_after_ms": 2500}, disc  # 5 tokens at 2 a second
    assert "ev=rate_abuse retry_ms=2500" in h.log()
    await calm.quiet(0.2, lambda m: m["type"] == "disconnect")
    assert wsraw.scrape_metrics(h.port)['wshub_closes_total{code="4103"}'] == 1
    # Reconnecting gives a new connection its own full bucket.
    b = await Client.open(h, token("alice"))
    await b.subscribe("chat:abuse")
    for i in range(5):
        await b.publish("chat:abuse", {"b": i})
    await b.close()
    await calm.close()


@run_async
async def test_max_subscriptions(hub):
    h = hub(limits(max_subscriptions=3))
    a = await Client.open(h, token("alice"))
    for i in range(3):
        await a.subscribe(f"chat:s{i}")
    await expect_error(a, "subscribe", "chat:s3", 3001)
    await a.cmd("unsubscribe", "chat:s0")
    await a.subscribe("chat:s3")
    await expect_error(a, "subscribe", "chat:s4", 3001)
    await a.close()


@run_async
async def test_namespace_max_subscribers(hub):
    cfg = merge(base_config(), {"namespaces": {"tiny": {"max_subscribers": 2}}})
    h = hub(cfg)
    cs = [await Client.open(h, token(f"u{i}")) for i in range(4)]
    await cs[0].subscribe("tiny:room")
    await cs[1].subscribe("tiny:room")
    await expect_error(cs[2], "subscribe", "tiny:room", 3002)
    await cs[2].subscribe("tiny:other")  # the bound is per channel
    await cs[0].close()
    await asyncio.sleep(0.1)
    await cs[2].subscribe("tiny:room")
    await expect_error(cs[3], "subscribe", "tiny:room", 3002)
    for c in cs[1:]:
        await c.close()


def nested(depth):
    """A publish whose nesting is exactly `depth` (the root object is 1)."""
    inner = "1"
    for _ in range(depth - 1):
        inner = "[" + inner + "]"
    return '{"type":"publish","id":7,"channel":"chat:d","payload":' + inner + "}"


@run_async
async def test_json_depth(hub):
    h = hub(limits(json_depth=8))
    a = await Client.open(h, token("alice"))
    await a.subscribe("chat:d")
    await a.send(nested(8))
    r = await a.expect(lambda m: m.get("id") == 7)
    assert r["type"] == "ack", r
    await a.send(nested(9))
    r = await a.expect(lambda m: m.get("type") == "error")
    assert r["payload"]["code"] == 1003, r
    await a.send('{"type":"publish","id":8,"channel":"chat:d","payload":' + "[" * 5000 + "]" * 5000 + "}")
    r = await a.expect(lambda m: m.get("type") == "error")
    assert r["payload"]["code"] == 1003, r
    assert await a.publish("chat:d", {"ok": True}) == 2  # still open
    await a.close()


@run_async
async def test_message_size_from_the_config(hub):
    """docs/config.md limits.max_message: "Over it: close 1009"; protocol.md
    1004 is the codec's own bound behind it."""
    h = hub(limits(max_message=1024, unauthenticated={"max_message": 512}))
    assert "max_message=65536 ws_max_message=1024 " in h.log(), h.log()
    a = await Client.open(h, token("alice"))
    await a.subscribe("chat:big")
    body = {"type": "publish", "id": 1, "channel": "chat:big", "payload": {"x": ""}}
    body["payload"]["x"] = "y" * (1000 - len(json.dumps(body)))
    assert len(json.dumps(body)) == 1000
    await a.send(body)
    r = await a.expect(lambda m: m.get("id") == 1)
    assert r["type"] == "ack", r
    body["id"] = 2
    body["payload"]["x"] = "y" * 2000
    await a.send(body)
    code, _, seen = await a.expect_close()
    assert code == 1009, (code, [m for m in seen if m["type"] != "message"])


@run_async
async def test_message_size_from_the_config_holds_for_compressed_messages(hub):
    """permessage-deflate changes nothing of limits.max_message: the file's
    bound holds on the inflated bytes, above the --max-message default of
    64 KiB (a 200 KB message goes through, compressed both ways) as below
    it (30 KB that deflate makes tiny gets 1009)."""
    h = hub(limits(max_message=262144), "--deflate")
    a = await Client.open(h, token("alice"), compression="deflate")
    assert [e.name for e in a.ws.extensions] == ["permessage-deflate"]
    await a.subscribe("chat:big")
    rng = random.Random(7)
    body = "".join(rng.choice(string.ascii_letters) for _ in range(200_000))
    await a.publish("chat:big", body)
    [m] = await a.messages("chat:big", 1)
    assert m["payload"] == body
    await a.send({"type": "publish", "id": 99, "channel": "chat:big", "payload": body + body})
    code, _, seen = await a.expect_close()
    assert code == 1009, (code, [m["type"] for m in seen])

    h = hub(limits(max_message=16384), "--deflate")
    b = await Client.open(h, token("bob"), compression="deflate")
    await b.subscribe("chat:big")
    await b.send({"type": "publish", "id": 1, "channel": "chat:big", "payload": "y" * 30_000})
    code, _, seen = await b.expect_close()
    assert code == 1009, (code, seen)


@run_async
async def test_message_size_on_the_command_line(hub):
    h = hub(base_config(), "--max-message", 4096)
    a = await Client.open(h, token("alice"))
    await a.subscribe("chat:big")
    await a.send({"type": "publish", "id": 1, "channel": "chat:big", "payload": "z" * 5000})
    code, _, seen = await a.expect_close()
    assert code == 1009, (code, seen)


@run_async
async def test_max_channel(hub):
    h = hub(limits(max_channel=16))
    a = await Client.open(h, token("alice"))
    await a.subscribe("chat:" + "x" * 11)  # 16 bytes
    r = await a.cmd("subscribe", "chat:" + "x" * 12)
    assert r["type"] == "error" and r["payload"]["code"] == 4000, r
    await a.close()


@run_async
async def test_max_channel_at_its_ceiling_is_its_own_channel(hub):
    """At the largest max_channel (255), a name of that length is a channel
    of its own: a subscriber of a name one byte shorter (its prefix) gets
    nothing of it. (A ceiling of 1,024 once let a 300-byte name through,
    cut to 255 bytes on its way to the broker: another channel's.)"""
    h = hub(limits(max_channel=255))
    long_name = "chat:" + "x" * 250
    a = await Client.open(h, token("alice"))
    b = await Client.open(h, token("bob"))
    await a.subscribe(long_name)
    await b.subscribe(long_name[:-1])
    assert await a.publish(long_name, {"n": 1}) == 1
    got = await a.push("message", long_name)
    assert got["payload"] == {"n": 1}, got
    await b.quiet(0.3, lambda m: m["type"] == "message")
    r = await a.cmd("subscribe", long_name + "y")
    assert r["type"] == "error" and r["payload"]["code"] == 4000, r
    await a.close()
    await b.close()


@run_async
async def test_unauthenticated_timeout(hub):
    h = hub(limits(unauthenticated={"timeout_ms": 300}))
    c = await Client.open(h, None, how=None, connect=False)
    t0 = time.monotonic()
    code, _, seen = await c.expect_close(timeout=5)
    took = time.monotonic() - t0
    assert code == 1008, (code, seen)
    assert 0.2 < took < 2.5, took
    # with a token at the handshake, the connection is authenticated: no timeout
    d = await Client.open(h, token("alice"), connect=False)
    await d.quiet(0.8, lambda m: True)
    r = await d.cmd("connect")
    assert r["type"] == "connected", r
    await d.close()


@run_async
async def test_unauthenticated_message_budget(hub):
    h = hub(limits(unauthenticated={"max_message": 256}))
    # over the unauthenticated size, before connect: 1008
    c = await Client.open(h, None, how=None, connect=False)
    await c.send({"type": "connect", "id": 1, "payload": {"token": "x" * 400}})
    code, _, seen = await c.expect_close()
    assert code == 1008, (code, seen)
    # not JSON before connect: error then 1008
    c = await Client.open(h, None, how=None, connect=False)
    await c.send("{nope")
    code, _, seen = await c.expect_close()
    assert code == 1008 and [m["payload"]["code"] for m in seen if m["type"] == "error"] == [1000]
    # the same size is fine once connected
    a = await Client.open(h, token("alice"))
    await a.subscribe("chat:u")
    assert await a.publish("chat:u", {"x": "y" * 400}) == 1
    await a.close()


def test_unauthenticated_message_refused_at_its_header(hub):
    """Before `connect`, a frame that declares more than
    limits.unauthenticated.max_message is refused as soon as its header
    arrives (`disconnect`, then 1008), not once the server has buffered the
    message: a client that has not authenticated costs almost nothing
    (LIMITS.md). An authenticated one is held to limits.max_message the
    same way (1009)."""
    h = hub(limits(max_message=1 << 20, unauthenticated={"max_message": 512}),
            "--message-timeout", 60)
    c = wsraw.Conn("127.0.0.1", h.port)
    c.handshake("/ws")
    c.send(wsraw.frame(wsraw.OP_TEXT, b'{"type":"connect","payload":{"x":"' + b"x" * 600,
                       length=900_000))
    f, seen = c.wait_close(timeout=5)
    assert f.close_code() == 1008 and f.payload[2:] == b"authenticate first", f
    assert [json.loads(m.payload)["type"] for m in seen] == ["disconnect"], seen
    c.close()

    a = wsraw.Conn("127.0.0.1", h.port)
    a.handshake("/ws", extra=f"Authorization: Bearer {token('alice')}\r\n".encode())
    a.send(wsraw.frame(wsraw.OP_TEXT, b" " * 100, length=(1 << 20) + 1))
    f, seen = a.wait_close(timeout=5)
    assert f.close_code() == 1009, f
    a.close()


@run_async
async def test_max_channels_refuses_new_channels_with_3003(hub):
    """limits.max_channels: the broker holds at most that many channel
    states. A subscribe that needs one more is error 3003 (the connection
    and its subscriptions go on), an API publish to a new channel 503 with
    code 3003; /metrics counts both. A reload raising the bound lets the
    next one in, and a channel whose last subscriber left is given back."""
    cfg = merge(limits(max_channels=2), {"api_key": API_KEY})
    h = hub(cfg)
    a = await Client.open(h, token("alice"))
    await a.subscribe("chat:one")
    await a.subscribe("chat:two")
    await expect_error(a, "subscribe", "chat:three", 3003)
    assert await a.publish("chat:one", {"x": 1}) == 1
    st, _, body = await asyncio.to_thread(call, h, "POST", "/api/publish",
                                          {"channel": "news:new", "payload": {"n": 1}})
    assert st == 503 and json.loads(body)["code"] == 3003, (st, body)
    st, _, body = await asyncio.to_thread(call, h, "POST", "/api/publish",
                                          {"channel": "chat:two", "payload": {"n": 1}})
    assert st == 200, (st, body)
    m = wsraw.scrape_metrics(h.port)
    assert m["wshub_broker_channels"] == 2, m
    assert m["wshub_broker_channels_refused_total"] == 2, m
    assert "ev=broker_error" not in h.log()  # a client's doing, not the broker's

    line = await asyncio.to_thread(reload, h, merge(cfg, {"limits": {"max_channels": 3}}), 1)
    assert "ok=1" in line and "max_channels=3" in line, line
    await a.subscribe("chat:three")
    await expect_error(a, "subscribe", "chat:four", 3003)
    # chat:three never had a message: its state goes with its last
    # subscriber, at the next sweep (every 2 s).
    r = await a.cmd("unsubscribe", "chat:three")
    assert r["type"] == "unsubscribed", r
    deadline = time.monotonic() + 10 * MULT
    while wsraw.scrape_metrics(h.port)["wshub_broker_channels"] > 2:
        assert time.monotonic() < deadline, "chat:three's state was never dropped"
        await asyncio.sleep(0.1)
    await a.subscribe("chat:four")
    await a.close()


@run_async
async def test_max_history_memory_drops_the_coldest_history_first(hub):
    """limits.max_history_memory bounds the history of all channels
    together. Past it, the channel published to least recently loses its
    oldest messages first, the one being published to keeps its own, and
    a client recovering across what went is told recovered=false (never a
    gap). A reload lowering the bound holds at the next sweep."""
    body = "h" * 10_000
    cfg = limits(max_history_memory=100_000)
    h = hub(cfg)
    a = await Client.open(h, token("alice"))
    cold = await a.subscribe("chat:cold")
    for i in range(5):
        await a.publish("chat:cold", {"i": i, "b": body})
    await a.subscribe("chat:warm")
    for i in range(8):
        await a.publish("chat:warm", {"i": i, "b": body})

    async def offsets(ch):
        r = await a.cmd("history", ch)
        assert r["type"] == "history", r
        return [m["offset"] for m in r["payload"]["messages"]]

    assert await offsets("chat:warm") == list(range(1, 9))
    kept = await offsets("chat:cold")
    assert 0 < len(kept) < 5 and kept == list(range(6 - len(kept), 6)), kept
    m = wsraw.scrape_metrics(h.port)
    assert m["wshub_broker_history_bytes"] <= 100_000, m
    assert m["wshub_broker_history_evicted_total"] == 5 - len(kept), m

    b = await Client.open(h, token("bob"))
    r = await b.subscribe("chat:cold", recover={"offset": 0, "epoch": cold["epoch"]})
    assert r["recovered"] is False and r["epoch"] == cold["epoch"], r
    r = await b.subscribe("chat:warm", recover={"offset": 0, "epoch": cold["epoch"]})
    assert r["recovered"] is False, r  # another channel's epoch
    await b.close()
    c = await Client.open(h, token("carol"))
    r = await c.subscribe("chat:cold", recover={"offset": kept[0] - 1, "epoch": cold["epoch"]})
    assert r["recovered"] is True, r
    got = await c.messages("chat:cold", len(kept))
    assert [g["offset"] for g in got] == kept
    await c.close()

    line = await asyncio.to_thread(reload, h, limits(max_history_memory=30_000), 1)
    assert "ok=1" in line and "max_history_memory=30000" in line, line
    deadline = time.monotonic() + 10 * MULT
    while wsraw.scrape_metrics(h.port)["wshub_broker_history_bytes"] > 30_000:
        assert time.monotonic() < deadline, "the lowered bound never held"
        await asyncio.sleep(0.1)
    assert await offsets("chat:cold") == []
    warm = await offsets("chat:warm")
    assert 0 < len(warm) <= 2 and warm[-1] == 8, warm
    # New messages still go to history, the newest kept.
    assert await a.publish("chat:cold", {"i": 5, "b": body}) == 6
    assert (await offsets("chat:cold")) == [6]
    await a.close()


@run_async
async def test_many_channels_each_get_their_own_messages(hub):
    """The channel registries grow with the channels (64 chains at first,
    doubled as they fill): 4 clients × 128 subscriptions are 512 channels,
    on 2 workers, each of which gets exactly its own broadcast message."""
    h = hub(merge(base_config(), {"api_key": API_KEY}), workers=2)
    clients = [await Client.open(h, token(f"u{k}")) for k in range(4)]
    names = [[f"chat:many-{k}-{i}" for i in range(128)] for k in range(4)]
    for c, mine in zip(clients, names):
        for ch in mine:
            await c.subscribe(ch)
    for k, mine in enumerate(names):
        st, _, body = await asyncio.to_thread(call, h, "POST", "/api/broadcast",
                                              {"channels": mine, "payload": {"k": k}})
        assert st == 200 and json.loads(body)["offsets"] == [1] * 128, (st, body[:200])
    for k, (c, mine) in enumerate(zip(clients, names)):
        got = {}
        for _ in range(128):
            m = await c.push("message", timeout=10 * MULT)
            got[m["channel"]] = m["payload"]
        assert got == {ch: {"k": k} for ch in mine}
        await c.quiet(0.2, lambda m: m["type"] == "message")
        await c.close()
