"""Delivery guarantees (docs/protocol.md, DESIGN.md 4): recovery after a
disconnect, recovered:false when history is gone, and idempotent publish
by msg_id."""
import asyncio
import re

from conftest import Client, base_config, merge, run_async, token


@run_async
async def test_recovery_replays_exactly_the_missed_messages(hub):
    h = hub()
    pub = await Client.open(h, token("pub"))
    await pub.subscribe("chat:rec")
    sub = await Client.open(h, token("sub"))
    s = await sub.subscribe("chat:rec")
    epoch = s["epoch"]
    n = 5
    for i in range(1, n + 1):
        await pub.publish("chat:rec", {"i": i})
    got = await sub.messages("chat:rec", n)
    assert [m["offset"] for m in got] == list(range(1, n + 1))
    last = got[-1]
    await sub.close()
    for i in range(n + 1, n + 21):
        assert await pub.publish("chat:rec", {"i": i}) == i
    sub2 = await Client.open(h, token("sub"))
    r = await sub2.subscribe("chat:rec", recover={"offset": last["offset"], "epoch": last["epoch"]})
    assert r == {"offset": n + 20, "epoch": epoch, "recovered": True}, r
    rec = await sub2.messages("chat:rec", 20)
    assert [m["offset"] for m in rec] == list(range(n + 1, n + 21)), rec
    assert [m["payload"] for m in rec] == [{"i": i} for i in range(n + 1, n + 21)]
    assert all(m["epoch"] == epoch and m["from"] == "pub" for m in rec)
    # live messages continue, without duplicates
    for i in range(n + 21, n + 26):
        await pub.publish("chat:rec", {"i": i})
    live = await sub2.messages("chat:rec", 5)
    assert [m["offset"] for m in live] == list(range(n + 21, n + 26)), live
    await sub2.quiet(0.3, lambda m: m["type"] == "message")
    await pub.close()
    await sub2.close()


@run_async
async def test_recovery_while_publishing_has_no_gap_and_no_duplicate(hub):
    """A publisher keeps going while the subscriber re-subscribes with
    recover: replay + live must be exactly offset+1, offset+2, ... once."""
    h = hub(merge(base_config(), {"namespaces": {"race": {"history_size": 1000}}}))
    pub = await Client.open(h, token("pub"))
    await pub.subscribe("race:r")
    sub = await Client.open(h, token("sub"))
    s = await sub.subscribe("race:r")
    for i in range(3):
        await pub.publish("race:r", {"i": i})
    last = (await sub.messages("race:r", 3))[-1]
    await sub.close()
    total = 300
    stop = asyncio.Event()

    async def publisher():
        for i in range(3, total):
            await pub.send({"type": "publish", "channel": "race:r", "payload": {"i": i}})
            if i % 10 == 0:
                await asyncio.sleep(0.001)
        stop.set()

    task = asyncio.create_task(publisher())
    await asyncio.sleep(0.02)
    sub2 = await Client.open(h, token("sub"))
    r = await sub2.subscribe("race:r", recover={"offset": last["offset"], "epoch": s["epoch"]})
    assert r["recovered"] is True and r["epoch"] == s["epoch"], r
    await task
    got = await sub2.messages("race:r", total - 3, timeout=10)
    assert [m["offset"] for m in got] == list(range(4, total + 1)), \
        [m["offset"] for m in got][:50]
    await sub2.quiet(0.3, lambda m: m["type"] == "message")
    await pub.close()
    await sub2.close()


@run_async
async def test_wrong_epoch_is_not_recovered(hub):
    h = hub()
    a = await Client.open(h, token("alice"))
    s = await a.subscribe("chat:ep")
    for i in range(3):
        await a.publish("chat:ep", {"i": i})
    await a.messages("chat:ep", 3)
    b = await Client.open(h, token("bob"))
    r = await b.subscribe("chat:ep", recover={"offset": 1, "epoch": "not-the-epoch"})
    assert r == {"offset": 3, "epoch": s["epoch"], "recovered": False}, r
    await b.quiet(0.3, lambda m: m["type"] == "message")
    # an offset ahead of the channel cannot be recovered either
    c = await Client.open(h, token("carl"))
    r = await c.subscribe("chat:ep", recover={"offset": 99, "epoch": s["epoch"]})
    assert r["recovered"] is False, r
    await c.quiet(0.2, lambda m: m["type"] == "message")
    # recovery from the top is recovered with nothing to replay
    d = await Client.open(h, token("dora"))
    r = await d.subscribe("chat:ep", recover={"offset": 3, "epoch": s["epoch"]})
    assert r == {"offset": 3, "epoch": s["epoch"], "recovered": True}, r
    await d.quiet(0.2, lambda m: m["type"] == "message")
    for x in (a, b, c, d):
        await x.close()


@run_async
async def test_offset_out_of_the_history_window_is_not_recovered(hub):
    cfg = merge(base_config(), {"namespaces": {"small": {"history_size": 5}}})
    h = hub(cfg)
    a = await Client.open(h, token("alice"))
    s = await a.subscribe("small:w")
    for i in range(20):
        await a.publish("small:w", {"i": i})
    b = await Client.open(h, token("bob"))
    r = await b.subscribe("small:w", recover={"offset": 2, "epoch": s["epoch"]})
    assert r["recovered"] is False and r["offset"] == 20, r
    await b.quiet(0.3, lambda m: m["type"] == "message")
    c = await Client.open(h, token("carl"))
    r = await c.subscribe("small:w", recover={"offset": 15, "epoch": s["epoch"]})
    assert r["recovered"] is True, r
    assert [m["offset"] for m in await c.messages("small:w", 5)] == [16, 17, 18, 19, 20]
    for x in (a, b, c):
        await x.close()


@run_async
async def test_history_gone_gives_recovered_false_and_a_new_epoch(hub):
    """History TTL 1 s, no subscriber left, a sweep (about 2 s) later the
    channel's history is lost: recovered:false and a new epoch."""
    cfg = merge(base_config(), {"namespaces": {"short": {"history_ttl_s": 1, "dedup_window_s": 0,
                                                          "presence": False}}})
    h = hub(cfg, "--log-level", "debug")
    a = await Client.open(h, token("alice"))
    s = await a.subscribe("short:gone")
    for i in range(3):
        await a.publish("short:gone", {"i": i})
    await a.messages("short:gone", 3)
    await a.close()
    await asyncio.sleep(1.0 + 2.0 + 1.0)
    b = await Client.open(h, token("alice"))
    r = await b.subscribe("short:gone", recover={"offset": 1, "epoch": s["epoch"]})
    assert r["recovered"] is False, r
    workers = re.findall(r"worker=(\d+) ev=open path=/ws", h.log())
    assert r["epoch"] != s["epoch"], (
        f"history is gone but the epoch is unchanged: {r} (/ws connections opened on workers "
        f"{workers}; the sweep runs only on worker 0)")
    await b.quiet(0.3, lambda m: m["type"] == "message")
    r2 = await b.cmd("history", "short:gone")
    assert r2["payload"]["messages"] == [], r2
    await b.close()


@run_async
async def test_recover_in_a_namespace_with_recover_off(hub):
    """docs/protocol.md: a `recover` in a namespace with recover off is
    error 4004 (never a replay), and the connection goes on."""
    h = hub()
    a = await Client.open(h, token("alice"))
    r = await a.cmd("subscribe", "news:n", payload={"recover": {"offset": 0, "epoch": "x"}})
    assert r["type"] == "error" and r["payload"]["code"] == 4004, r
    await a.subscribe("news:n")
    await a.close()


@run_async
async def test_duplicate_msg_id_is_acked_with_the_original_offset_and_not_delivered(hub):
    h = hub()
    pub = await Client.open(h, token("pub"))
    sub = await Client.open(h, token("sub"))
    await pub.subscribe("chat:dd")
    await sub.subscribe("chat:dd")
    o1 = await pub.publish("chat:dd", {"v": 1}, msg_id="m-1")
    o2 = await pub.publish("chat:dd", {"v": 1}, msg_id="m-1")
    o3 = await pub.publish("chat:dd", {"v": "changed"}, msg_id="m-1")
    assert o1 == o2 == o3 == 1
    o4 = await pub.publish("chat:dd", {"v": 2}, msg_id="m-2")
    assert o4 == 2
    # a retry after reconnecting (the documented use) is idempotent too
    await pub.close()
    pub2 = await Client.open(h, token("pub"))
    await pub2.subscribe("chat:dd")
    assert await pub2.publish("chat:dd", {"v": 2}, msg_id="m-2") == 2
    assert await pub2.publish("chat:dd", {"v": 3}, msg_id="m-3") == 3
    got = await sub.messages("chat:dd", 3)
    assert [(m["offset"], m["payload"]) for m in got] == [(1, {"v": 1}), (2, {"v": 2}), (3, {"v": 3})]
    await sub.quiet(0.3, lambda m: m["type"] == "message")
    r = await sub.cmd("history", "chat:dd")
    assert [m["offset"] for m in r["payload"]["messages"]] == [1, 2, 3], r
    # the same msg_id on another channel is another message
    await pub2.subscribe("chat:dd2")
    assert await pub2.publish("chat:dd2", {"v": 1}, msg_id="m-1") == 1
    for bad in ("", "has space", "x" * 65):
        r = await pub2.cmd("publish", "chat:dd", payload={}, msg_id=bad)
        assert r["type"] == "error" and r["payload"]["code"] == 1002, (bad, r)
    await pub2.close()
    await sub.close()


@run_async
async def test_dedup_window_expires(hub):
    cfg = merge(base_config(), {"namespaces": {"dw": {"dedup_window_s": 1}}})
    h = hub(cfg)
    a = await Client.open(h, token("alice"))
    await a.subscribe("dw:x")
    assert await a.publish("dw:x", {}, msg_id="k") == 1
    assert await a.publish("dw:x", {}, msg_id="k") == 1
    await asyncio.sleep(1.5)
    assert await a.publish("dw:x", {}, msg_id="k") == 2
    await a.close()


@run_async
async def test_dedup_window_zero_turns_dedup_off(hub):
    """docs/config.md: dedup_window_s 0 keeps no msg_id: the same one twice
    is published twice."""
    cfg = merge(base_config(), {"namespaces": {"d0": {"dedup_window_s": 0}}})
    h = hub(cfg)
    a = await Client.open(h, token("alice"))
    await a.subscribe("d0:x")
    assert await a.publish("d0:x", {"n": 1}, msg_id="k") == 1
    assert await a.publish("d0:x", {"n": 2}, msg_id="k") == 2
    got = await a.messages("d0:x", 2)
    assert [m["payload"] for m in got] == [{"n": 1}, {"n": 2}], got
    await a.close()


@run_async
async def test_a_replay_too_large_for_the_queue_is_recovered_false_not_4101(hub):
    """docs/protocol.md: a replay that would take the outbound queue past
    half of --max-queue is not sent (sent, it cut the client with 4101, and
    again at every reconnect): `recovered:false`, the subscription live, and
    the client pages through `history` instead. The others never hear a
    `leave` for a client whose `join` they did not hear."""
    h = hub(None, "--max-queue", 1 << 20)
    pub = await Client.open(h, token("pub"))
    s = await pub.subscribe("chat:big")
    body = "b" * 60_000
    for i in range(20):  # 1.2 MB of history
        await pub.publish("chat:big", {"i": i, "body": body})
    await pub.messages("chat:big", 20)
    late = await Client.open(h, token("late"))
    r = await late.subscribe("chat:big", recover={"offset": 0, "epoch": s["epoch"]})
    assert r == {"offset": 20, "epoch": s["epoch"], "recovered": False}, r
    j = await pub.push("join", "chat:big")
    assert j["payload"]["user"] == "late", j
    got = []
    while len(got) < 20:
        page = await late.cmd("history", "chat:big", payload={"since": len(got), "limit": 5})
        assert page["type"] == "history", page
        got += [m["offset"] for m in page["payload"]["messages"]]
    assert got == list(range(1, 21))
    assert await pub.publish("chat:big", {"i": 20}) == 21
    m = await late.push("message", "chat:big")
    assert m["offset"] == 21
    # A small replay still comes whole.
    again = await Client.open(h, token("again"))
    r = await again.subscribe("chat:big", recover={"offset": 19, "epoch": s["epoch"]})
    assert r["recovered"] is True, r
    assert [m["offset"] for m in await again.messages("chat:big", 2)] == [20, 21]
    await pub.quiet(0.3, lambda m: m["type"] == "leave")
    for c in (pub, late, again):
        await c.close()
