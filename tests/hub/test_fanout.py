"""Fan-out: a slow subscriber that never reads is cut off with 4101 while
the fast subscribers on the same channel get every message; cross-worker
fan-out to many clients with --workers 2."""
import asyncio
import json
import re
import time

import wsraw
from conftest import MULT, Client, base_config, merge, run_async, token


def raw_subscriber(h, channel, user="slow"):
    """A raw-socket /ws client with a tiny receive buffer, connected and
    subscribed; the caller then stops reading."""
    c = wsraw.Conn("127.0.0.1", h.port, rcvbuf=4096)
    c.handshake("/ws", extra=f"Authorization: Bearer {token(user)}\r\n".encode())
    c.send_frame(wsraw.OP_TEXT, json.dumps({"type": "connect", "id": 1}).encode())
    c.send_frame(wsraw.OP_TEXT, json.dumps({"type": "subscribe", "id": 2, "channel": channel}).encode())
    seen = []
    while True:
        op, data = c.recv_message(timeout=5)
        m = json.loads(data)
        seen.append(m)
        if m.get("id") == 2:
            assert m["type"] == "subscribed", m
            return c


def drain_to_close(c, timeout=15.0):
    """Reads everything until the close frame: (close code, messages)."""
    msgs = []
    deadline = time.monotonic() + timeout * MULT
    while True:
        f = c.recv_message(timeout=max(0.01, deadline - time.monotonic()) / MULT)
        if isinstance(f, wsraw.Frame):
            return f.close_code(), msgs
        msgs.append(json.loads(f[1]))


SLOW_CFG = merge(base_config(), {"limits": {"publish_rate": 100000, "publish_burst": 100000}})
N_MSGS = 600
LEAD = 8
WINDOW = 8
PAYLOAD = "p" * 16000


async def flood(pub, channel, n, readers=()):
    """Publishes n messages, at most WINDOW ahead of the copies that came
    back to the publisher, and never more than LEAD messages ahead of the
    slowest of `readers` (the fast subscribers: they keep up by
    construction, so only a reader that stops is slow). The publisher is
    subscribed (the channel's publish policy), so it is a subscriber too:
    paced by its acks alone, which go out at once while its copies wait for
    the end of the turn, copies of over 16 publishes could reach its queue
    together when the machine was loaded, over the 256 KiB --max-queue, and
    it was cut with 4101 itself (seen under ASan). Returns the acks'
    offsets."""
    window = asyncio.Semaphore(WINDOW)
    acks = []

    async def reader():
        copies = 0
        while len(acks) < n or copies < n:
            m = await pub.expect(lambda m: m["type"] in ("ack", "error") and "id" in m
                                 or m["type"] == "message" and m["channel"] == channel, timeout=20)
            if m["type"] == "message":
                copies += 1
                window.release()
                continue
            assert m["type"] == "ack", m
            acks.append(m["payload"]["offset"])

    rt = asyncio.create_task(reader())
    for i in range(n):
        # The reader ends early only by an error (the publisher closed, say):
        # raise it now rather than wait on the window until the test's end.
        acquire = asyncio.ensure_future(window.acquire())
        await asyncio.wait({acquire, rt}, return_when=asyncio.FIRST_COMPLETED)
        if not acquire.done():
            acquire.cancel()
            rt.result()
            raise AssertionError(f"the reader stopped after {len(acks)} of {n} acks")
        deadline = time.monotonic() + 20 * MULT
        while readers and min(r.progress for r in readers) < i - LEAD:
            assert time.monotonic() < deadline, "a fast subscriber stopped receiving"
            await asyncio.sleep(0.002)
        await pub.send({"type": "publish", "id": 1000 + i, "channel": channel,
                        "payload": {"i": i, "pad": PAYLOAD}})
    await rt
    return acks


async def fast_reader(c, channel, n):
    c.progress = 0
    out = []
    while len(out) < n:
        m = await c.push("message", channel, timeout=20)
        out.append(m["offset"])
        c.progress = m["offset"]
        c.pending.clear()
    return out


@run_async
async def test_slow_subscriber_is_cut_off_4101_and_fast_ones_get_everything(hub):
    h = hub(SLOW_CFG, "--max-queue", 262144)
    pub = await Client.open(h, token("pub"))
    await pub.subscribe("chat:fan")
    fast = [await Client.open(h, token(f"fast{i}")) for i in range(3)]
    for f in fast:
        await f.subscribe("chat:fan")
    slow = await asyncio.to_thread(raw_subscriber, h, "chat:fan")
    try:
        for f in fast:
            f.progress = 0
        readers = [asyncio.create_task(fast_reader(f, "chat:fan", N_MSGS)) for f in fast]
        await asyncio.sleep(0)
        acks = await flood(pub, "chat:fan", N_MSGS, fast)
        assert acks == list(range(1, N_MSGS + 1))
        for r in readers:
            assert await r == list(range(1, N_MSGS + 1))
        code, msgs = await asyncio.to_thread(drain_to_close, slow)
    finally:
        slow.close()
    offs = [m["offset"] for m in msgs if m["type"] == "message"]
    assert code == 4101, f"slow subscriber close code {code} after {len(offs)} messages"
    assert len(offs) < N_MSGS, "the slow subscriber was not cut off"
    print(f"slow subscriber got {len(offs)} of {N_MSGS} before the cut")
    assert offs == list(range(1, len(offs) + 1)), "what it got before the cut is an in-order prefix"
    for f in fast:
        await f.quiet(0.1, lambda m: m["type"] == "disconnect")
        await f.close()
    await pub.close()


@run_async
async def test_slow_subscriber_gets_disconnect_before_the_4101_close(hub):
    """docs/protocol.md Close codes: "When the server closes a /ws
    connection, it first sends `disconnect` (for the application codes...)"."""
    h = hub(SLOW_CFG, "--max-queue", 262144)
    pub = await Client.open(h, token("pub"))
    await pub.subscribe("chat:fan2")
    slow = await asyncio.to_thread(raw_subscriber, h, "chat:fan2")
    try:
        await flood(pub, "chat:fan2", N_MSGS)
        code, msgs = await asyncio.to_thread(drain_to_close, slow)
    finally:
        slow.close()
    assert code == 4101
    disc = [m for m in msgs if m["type"] == "disconnect"]
    assert disc and disc[-1]["payload"]["code"] == 4101 and disc[-1]["payload"]["reconnect"] is True, \
        f"no disconnect push before close 4101 (last messages: {[m['type'] for m in msgs[-3:]]})"
    await pub.close()


@run_async
async def test_subscriber_that_stays_over_the_soft_queue_limit_gets_4101(hub):
    """--soft-queue on /ws (docs/server.md, Backpressure): a subscriber
    whose queue stays over 64 KiB for a second is a slow consumer, though
    far under --max-queue: `disconnect` (reconnect allowed), then 4101, and
    the log names the soft limit."""
    h = hub(SLOW_CFG, "--max-queue", 64 << 20, "--soft-queue", 65536, "--soft-queue-time", 1,
            "--write-timeout", 0, "--ping-interval", 0)
    pub = await Client.open(h, token("pub"))
    await pub.subscribe("chat:soft")
    slow = await asyncio.to_thread(raw_subscriber, h, "chat:soft")
    try:
        # More than the kernel buffers take (a few MB on loopback), so
        # the rest waits in the server's queue, far under --max-queue.
        await flood(pub, "chat:soft", 400)
        await asyncio.sleep(2.5)  # not reading: the queue stays over the limit
        code, msgs = await asyncio.to_thread(drain_to_close, slow)
    finally:
        slow.close()
    assert code == 4101, (code, [m["type"] for m in msgs[-3:]])
    disc = [m for m in msgs if m["type"] == "disconnect"]
    assert disc and disc[-1]["payload"]["code"] == 4101 and disc[-1]["payload"]["reconnect"] is True, \
        [m["type"] for m in msgs[-3:]]
    lines = re.findall(r"ev=slow_consumer limit=\w+", h.log())
    assert lines == ["ev=slow_consumer limit=soft"], lines
    await pub.close()


@run_async
async def test_cross_worker_fan_out_to_many_clients(hub):
    h = hub(SLOW_CFG, "--log-level", "debug", workers=2)
    n_clients, n_pubs, per_pub = 60, 6, 25
    subs = await asyncio.gather(*[Client.open(h, token(f"s{i}")) for i in range(n_clients)])
    await asyncio.gather(*[s.subscribe("chat:wide") for s in subs])
    pubs = await asyncio.gather(*[Client.open(h, token(f"p{i}")) for i in range(n_pubs)])
    for p in pubs:
        await p.subscribe("chat:wide")
    # SO_REUSEPORT spread the clients over both workers
    opened = re.findall(r"worker=(\d+) ev=open path=/ws", h.log())
    assert set(opened) == {"0", "1"}, f"/ws opens per worker: {opened}"
    r = await pubs[0].cmd("presence", "chat:wide")
    assert r["payload"]["count"] == n_clients + n_pubs, r
    total = n_pubs * per_pub

    async def publish_all(p, k):
        for i in range(per_pub):
            await p.send({"type": "publish", "channel": "chat:wide", "payload": {"p": k, "i": i}})

    await asyncio.gather(*[publish_all(p, k) for k, p in enumerate(pubs)])

    async def collect(c):
        got = await c.messages("chat:wide", total, timeout=20)
        c.pending = [m for m in c.pending if m["type"] != "join"]
        return got

    results = await asyncio.gather(*[collect(c) for c in subs + pubs])
    epoch = results[0][0]["epoch"]
    for who, got in zip(subs + pubs, results):
        offs = [m["offset"] for m in got]
        missing = sorted(set(range(1, total + 1)) - set(offs))
        assert offs == list(range(1, total + 1)), \
            f"client {who.info['client']} ({who.info['user']}): not in offset order (missing {missing}): {offs}"
        assert all(m["epoch"] == epoch for m in got)
        for k in range(n_pubs):  # per-publisher order
            assert [m["payload"]["i"] for m in got if m["payload"]["p"] == k] == list(range(per_pub))
    for c in subs + pubs:
        await c.quiet(0.0, lambda m: m["type"] == "message")
    await asyncio.gather(*[c.close() for c in subs + pubs])


@run_async
async def test_signals_are_dropped_for_a_subscriber_that_is_behind_not_cut_off(hub):
    """docs/protocol.md, signal: "may be coalesced or dropped under
    backpressure". A subscriber that stops reading while 600 signals of
    16 KB (ten times --max-queue) go by is not cut off as a slow consumer:
    once the kernel refuses its bytes, signals are not queued for it
    (wshub_signals_dropped_total). When it reads again, what it got is in
    order, it is still subscribed, and a message published after the flood
    reaches it. A subscriber that reads gets signals, in order."""
    h = hub(SLOW_CFG)
    pub = await Client.open(h, token("pub"))
    await pub.subscribe("chat:sig")
    fast = await Client.open(h, token("fast"))
    await fast.subscribe("chat:sig")
    slow = await asyncio.to_thread(raw_subscriber, h, "chat:sig")
    try:
        n = 600
        for i in range(n):
            await pub.send({"type": "signal", "channel": "chat:sig",
                            "payload": {"i": i, "pad": PAYLOAD}})
        r = await pub.cmd("publish", "chat:sig", payload={"after": True})
        assert r["type"] == "ack", r
        seen = []
        while True:
            m = await fast.expect(lambda m: m["type"] in ("signal", "message"), timeout=20)
            if m["type"] == "message":
                break
            seen.append(m["payload"]["i"])
        assert seen and seen == sorted(set(seen)), f"fast reader's signals out of order: {seen[:20]}"
        assert metrics_value(h, "wshub_signals_dropped_total") > 0

        def drain_to_message():
            got = []
            while True:
                f = slow.recv_message(timeout=20)
                assert not isinstance(f, wsraw.Frame), \
                    f"closed {f.close_code()} after {len(got)} signals"
                m = json.loads(f[1])
                assert m["type"] != "disconnect", m
                if m["type"] == "message":
                    return got, m
                got.append(m["payload"]["i"])

        got, msg = await asyncio.to_thread(drain_to_message)
    finally:
        slow.close()
    assert msg["payload"] == {"after": True}
    assert got == sorted(set(got)) and len(got) < n, f"{len(got)} signals, in order"
    print(f"the reader that was behind got {len(got)} of {n} signals, the fast one {len(seen)}")
    await fast.close()
    await pub.close()


def metrics_value(h, name):
    return float(wsraw.scrape_metrics(h.port)[name])
