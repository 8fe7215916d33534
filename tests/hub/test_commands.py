"""Every /ws command and push of docs/protocol.md, driven by independent
Python `websockets` clients, and the documented `error` replies."""
import asyncio
import json

from conftest import Client, base_config, expect_error, merge, run_async, token


@run_async
async def test_connect_subscribe_publish_message(hub):
    h = hub()
    a = await Client.open(h, token("alice", info={"name": "Ann"}), how="header")
    b = await Client.open(h, token("bob"), how="query")
    assert a.info["user"] == "alice" and b.info["user"] == "bob"
    assert isinstance(a.info["client"], str) and a.info["client"] != b.info["client"]
    assert a.info["expires"] > 0
    sa = await a.subscribe("chat:lobby")
    assert sa["offset"] == 0 and sa["recovered"] is False and isinstance(sa["epoch"], str)
    assert 1 <= len(sa["epoch"]) <= 64
    sb = await b.subscribe("chat:lobby")
    assert sb["epoch"] == sa["epoch"]
    j = await a.push("join", "chat:lobby")
    assert j["payload"] == {"user": "bob", "client": b.info["client"], "info": None}

    # compact payload: forwarded byte for byte (member order, number spelling)
    raw = '{"type":"publish","id":77,"channel":"chat:lobby","msg_id":"x-1","payload":{"z":1,"a":[1.50,"\\u00e9"]}}'
    await a.send(raw)
    ack = await a.expect(lambda m: m.get("id") == 77)
    assert ack["type"] == "ack" and ack["channel"] == "chat:lobby" and ack["payload"] == {"offset": 1}
    assert list(ack) == ["type", "id", "channel", "payload", "timestamp"]
    for c in (a, b):
        m = await c.push("message", "chat:lobby")
        assert list(m) == ["type", "channel", "offset", "epoch", "from", "payload", "timestamp"], m
        assert m["offset"] == 1 and m["epoch"] == sa["epoch"] and m["from"] == "alice"
        assert m["payload"] == {"z": 1, "a": [1.5, "é"]}
    # byte-exact forwarding of a compact payload
    await b.publish("chat:lobby", {"k": "v"})
    raw_b = await asyncio.wait_for(a.ws.recv(), 5)
    assert '"payload":{"k":"v"}' in raw_b, raw_b
    # null payload is allowed
    await a.send({"type": "publish", "id": 500, "channel": "chat:lobby", "payload": None})
    r = await a.expect(lambda m: m.get("id") == 500)
    assert r["type"] == "ack" and r["payload"]["offset"] == 3, r
    m = await b.push("message", "chat:lobby", pred=lambda m: m["offset"] == 3)
    assert m["payload"] is None
    await a.close()
    await b.close()


@run_async
async def test_unsubscribe_stops_delivery_and_sends_leave(hub):
    h = hub()
    a = await Client.open(h, token("alice"))
    b = await Client.open(h, token("bob"))
    await a.subscribe("chat:u")
    await b.subscribe("chat:u")
    await a.push("join", "chat:u")
    r = await a.cmd("unsubscribe", "chat:u")
    assert r["type"] == "unsubscribed" and r["channel"] == "chat:u" and r["payload"] == {}, r
    lv = await b.push("leave", "chat:u")
    assert lv["payload"]["user"] == "alice" and lv["payload"]["client"] == a.info["client"]
    await b.publish("chat:u", {"after": True})
    await b.push("message", "chat:u")
    await a.quiet(0.3, lambda m: m["type"] == "message")
    await expect_error(a, "unsubscribe", "chat:u", 4003)
    # subscribing again works, twice is refused
    await a.subscribe("chat:u")
    await expect_error(a, "subscribe", "chat:u", 4002)
    await a.close()
    await b.close()


@run_async
async def test_presence_list_and_count_threshold(hub):
    cfg = merge(base_config(), {"namespaces": {"big": {"presence_count_threshold": 2}}})
    h = hub(cfg)
    cs = [await Client.open(h, token(f"u{i}", info={"n": i})) for i in range(3)]
    for c in cs[:2]:
        await c.subscribe("chat:p")
        await c.subscribe("big:p")
    r = await cs[0].cmd("presence", "chat:p")
    assert r["type"] == "presence" and r["channel"] == "chat:p", r
    assert r["payload"]["count"] == 2
    got = sorted((e["user"], e["client"], json.dumps(e["info"])) for e in r["payload"]["clients"])
    assert got == sorted((f"u{i}", cs[i].info["client"], json.dumps({"n": i})) for i in range(2))
    r = await cs[0].cmd("presence", "big:p")  # at the threshold: still the list
    assert r["payload"]["count"] == 2 and len(r["payload"]["clients"]) == 2, r
    await cs[2].subscribe("big:p")
    r = await cs[0].cmd("presence", "big:p")  # above it: the count only
    assert r["payload"] == {"count": 3}, r
    # presence off in the namespace: 4004
    await cs[0].subscribe("cursors:x")
    await expect_error(cs[0], "presence", "cursors:x", 4004)
    for c in cs:
        await c.close()


@run_async
async def test_history_since_and_limit(hub):
    h = hub()
    a = await Client.open(h, token("alice"))
    sub = await a.subscribe("chat:h")
    for i in range(1, 11):
        assert await a.publish("chat:h", {"i": i}) == i
    r = await a.cmd("history", "chat:h")
    assert r["type"] == "history" and r["channel"] == "chat:h", r
    p = r["payload"]
    assert p["offset"] == 10 and p["epoch"] == sub["epoch"]
    assert [m["offset"] for m in p["messages"]] == list(range(1, 11))
    assert [m["payload"] for m in p["messages"]] == [{"i": i} for i in range(1, 11)]
    for m in p["messages"]:
        assert m["from"] == "alice"
        assert list(m) == ["offset", "from", "payload", "timestamp"], m
    r = await a.cmd("history", "chat:h", payload={"since": 6})
    assert [m["offset"] for m in r["payload"]["messages"]] == [7, 8, 9, 10], r
    r = await a.cmd("history", "chat:h", payload={"since": 2, "limit": 3})
    offs = [m["offset"] for m in r["payload"]["messages"]]
    assert len(offs) == 3 and offs == sorted(offs) and all(o > 2 for o in offs), r
    r = await a.cmd("history", "chat:h", payload={"since": 10})
    assert r["payload"]["messages"] == [], r
    # limit 0: the position only
    r = await a.cmd("history", "chat:h", payload={"limit": 0})
    assert r["payload"] == {"offset": 10, "epoch": sub["epoch"], "messages": []}, r
    await expect_error(a, "history", "chat:h", 1002, payload={"since": -1})
    await expect_error(a, "history", "chat:h", 1002, payload={"limit": "3"})
    # no history in the namespace: 4004
    await a.subscribe("cursors:h")
    await expect_error(a, "history", "cursors:h", 4004)
    await a.close()


@run_async
async def test_signal_is_relayed_to_others_and_never_stored(hub):
    h = hub()
    a = await Client.open(h, token("alice"))
    b = await Client.open(h, token("bob"))
    c = await Client.open(h, token("carol"))
    for x in (a, b, c):
        await x.subscribe("chat:s")
    await a.send({"type": "signal", "channel": "chat:s", "payload": {"typing": True}})
    for x in (b, c):
        s = await x.push("signal", "chat:s")
        assert s["from"] == "alice" and s["payload"] == {"typing": True}, s
        assert list(s) == ["type", "channel", "from", "payload", "timestamp"], s
    # no reply on success, and the sender does not get its own signal
    await a.quiet(0.3, lambda m: m["type"] in ("signal", "ack", "error"))
    r = await a.cmd("history", "chat:s")
    assert r["payload"]["messages"] == [] and r["payload"]["offset"] == 0, r
    # not subscribed: 4003
    d = await Client.open(h, token("dave"))
    await d.send({"type": "signal", "id": 9, "channel": "chat:s", "payload": {}})
    e = await d.expect(lambda m: m.get("id") == 9)
    assert e["type"] == "error" and e["payload"]["code"] == 4003, e
    # where a publish is refused, so is a signal: a namespace only the
    # server publishes to, and past the token's publish claim (2004)
    e = await Client.open(h, token("erin", publish=["chat:other"]))
    await e.subscribe("chat:s")
    await b.subscribe("news:s")
    for who, ch in ((e, "chat:s"), (b, "news:s")):
        await who.send({"type": "signal", "id": 10, "channel": ch, "payload": {}})
        r = await who.expect(lambda m: m.get("id") == 10)
        assert r["type"] == "error" and r["payload"]["code"] == 2004, (ch, r)
    await b.quiet(0.2, lambda m: m["type"] == "signal")
    await a.quiet(0.2, lambda m: m["type"] == "signal")
    for x in (a, b, c, d, e):
        await x.close()


@run_async
async def test_read_receipt_push_and_ack(hub):
    h = hub()
    a = await Client.open(h, token("alice"))
    b = await Client.open(h, token("bob"))
    await a.subscribe("chat:r")
    await b.subscribe("chat:r")
    off = await b.publish("chat:r", {"t": "hi"})
    r = await a.cmd("read", "chat:r", payload={"offset": off})
    assert r["type"] == "ack" and r["channel"] == "chat:r" and r["payload"] == {"offset": off}, r
    p = await b.push("read", "chat:r")
    assert p["payload"] == {"user": "alice", "offset": off}, p
    await a.quiet(0.2, lambda m: m["type"] == "read")
    # Past the last message: acknowledged and relayed as the last one's.
    r = await a.cmd("read", "chat:r", payload={"offset": off + 1000})
    assert r["type"] == "ack" and r["payload"] == {"offset": off}, r
    p = await b.push("read", "chat:r")
    assert p["payload"] == {"user": "alice", "offset": off}, p
    # The same where no cursor is kept (no history), and before any message.
    await a.subscribe("cursors:r")
    await b.subscribe("cursors:r")
    r = await a.cmd("read", "cursors:r", payload={"offset": 7})
    assert r["type"] == "ack" and r["payload"] == {"offset": 0}, r
    assert (await b.push("read", "cursors:r"))["payload"]["offset"] == 0
    off = await b.publish("cursors:r", {"t": "hi"})
    await a.push("message", "cursors:r")
    r = await a.cmd("read", "cursors:r", payload={"offset": off + 5})
    assert r["type"] == "ack" and r["payload"] == {"offset": off}, r
    assert (await b.push("read", "cursors:r"))["payload"]["offset"] == off
    await expect_error(a, "read", "chat:r", 1002, payload={})
    await expect_error(a, "read", "chat:r", 1002, payload={"offset": "x"})
    await expect_error(a, "read", "chat:other", 4003, payload={"offset": 1})
    await a.close()
    await b.close()


@run_async
async def test_error_replies_keep_the_connection(hub):
    h = hub()
    a = await Client.open(h, token("alice"))
    # 1000: not JSON / not an object / duplicate key
    for bad in ("{", "[1,2]", '"x"', '{"type":"subscribe","id":3,"id":4,"channel":"chat:a"}',
                '{"type":"publish","id":1,"channel":"chat:a","payload":"\\ud800"}'):
        await a.send(bad)
        e = await a.expect(lambda m: m["type"] == "error", what=f"error for {bad}")
        assert e["payload"]["code"] == 1000, (bad, e)
    # 1001: unknown type, id echoed
    await a.send({"type": "frobnicate", "id": 41})
    e = await a.expect(lambda m: m.get("id") == 41)
    assert e["type"] == "error" and e["payload"]["code"] == 1001, e
    # 1002: missing or wrong fields, id echoed
    await a.send({"type": "subscribe", "id": 42})
    e = await a.expect(lambda m: m.get("id") == 42)
    assert e["payload"]["code"] == 1002, e
    await a.send({"type": "publish", "id": 43, "channel": "chat:a"})  # payload required
    e = await a.expect(lambda m: m.get("id") == 43)
    assert e["payload"]["code"] == 1002, e
    await a.send({"type": "subscribe", "id": 44, "channel": 5})
    e = await a.expect(lambda m: m.get("id") == 44)
    assert e["payload"]["code"] == 1002, e
    await a.send({"type": "subscribe", "id": 45, "channel": "chat:a",
                  "payload": {"recover": {"offset": 1}}})
    e = await a.expect(lambda m: m.get("id") == 45)
    assert e["payload"]["code"] == 1002, e
    await a.send({"type": 7, "id": 46})
    e = await a.expect(lambda m: m.get("id") == 46 or m["type"] == "error")
    assert e["type"] == "error" and e["payload"]["code"] in (1000, 1002), e
    # 4000: invalid channel names
    for ch in ("a b", "chat:a:b", "chat:", ":a", "x/y", "a%20", "a*", "a#b#c", "é"):
        r = await a.cmd("subscribe", ch)
        assert r["type"] == "error" and r["payload"]["code"] == 4000, (ch, r)
    # 4001: unknown namespace
    await expect_error(a, "subscribe", "nope:x", 4001)
    await expect_error(a, "publish", "nope:x", 4001, payload={})
    # 2004: publish where the namespace is server-only
    await a.subscribe("news:x")
    await expect_error(a, "publish", "news:x", 2004, payload={"t": 1})
    # still open and working
    await a.subscribe("chat:a")
    assert await a.publish("chat:a", {"ok": 1}) == 1
    await a.close()


@run_async
async def test_publish_without_subscription_is_4003(hub):
    """docs/protocol.md error table: 4003 "not subscribed" for `publish`
    (`subscribers` policy) on a channel this connection is not on."""
    h = hub()
    a = await Client.open(h, token("alice"))
    await expect_error(a, "publish", "chat:notmine", 4003, payload={"t": 1})
    await a.close()


@run_async
async def test_second_connect_is_2005(hub):
    """docs/protocol.md: 2005 "already connected" for a second `connect`."""
    h = hub()
    a = await Client.open(h, token("alice"))
    r = await a.cmd("connect")
    assert r["type"] == "error" and r["payload"]["code"] == 2005, r
    b = await Client.open(h, None, how=None, connect=False)
    r = await b.cmd("connect", payload={"token": token("bob")})
    assert r["type"] == "connected"
    r = await b.cmd("connect", payload={"token": token("bob")})
    assert r["type"] == "error" and r["payload"]["code"] == 2005, r
    await a.close()
    await b.close()


@run_async
async def test_command_before_connect_is_2000_then_1008(hub):
    h = hub()
    # no token at the handshake: the connection is not authenticated yet
    c = await Client.open(h, None, how=None, connect=False)
    await c.send({"type": "subscribe", "id": 1, "channel": "chat:a"})
    code, _, seen = await c.expect_close()
    errs = [m for m in seen if m["type"] == "error"]
    assert errs and errs[0]["payload"]["code"] == 2000 and errs[0].get("id") == 1, seen
    assert code == 1008, (code, seen)


@run_async
async def test_binary_message_closes_1003(hub):
    h = hub()
    a = await Client.open(h, token("alice"))
    await a.subscribe("chat:b")
    await a.send(b"\x00\x01binary")
    code, _, seen = await a.expect_close()
    assert code == 1003, (code, seen)
