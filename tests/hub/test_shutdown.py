"""Graceful shutdown on /ws (DESIGN.md 5): every client gets `disconnect`
with reconnect:true and a retry_after_ms spread over 0.5-5 s (no reconnect
storm), then close 1012; and --max-message on the command line overrides
the configuration's limits.max_message."""
import asyncio
import json
import signal

from conftest import MULT, Client, Closed, base_config, merge, run_async, token


@run_async
async def test_shutdown_disconnect_spreads_retry_after(hub):
    h = hub(base_config(), workers=2)
    clients = [await Client.open(h, token(f"u{i}")) for i in range(12)]
    h.expect_stopped = True
    h.server.signal(signal.SIGTERM)
    delays = []
    for c in clients:
        d = await c.expect(lambda m: m["type"] == "disconnect", timeout=5, what="disconnect")
        p = d["payload"]
        assert p["code"] == 1012 and p["reconnect"] is True, p
        assert 500 <= p["retry_after_ms"] <= 5000, p
        delays.append(p["retry_after_ms"])
        try:
            await c.expect(lambda m: False, timeout=5, what="close")
        except Closed:
            pass
        assert c.close_code == 1012
    assert len(set(delays)) > 1, f"every client was told the same delay: {delays}"
    assert await asyncio.to_thread(h.server.wait, 10 * MULT) == 0


@run_async
async def test_command_line_max_message_overrides_config(hub):
    cfg = merge(base_config(), {"limits": {"max_message": 1024,
                                           "unauthenticated": {"max_message": 512}}})
    h = hub(cfg, "--max-message", 8192)
    c = await Client.open(h, token("alice"))
    await c.subscribe("chat:big")
    # 4 KiB is over the file's 1 KiB but under the flag's 8 KiB: accepted.
    big = "x" * 4000
    ack = await c.cmd("publish", "chat:big", payload={"t": big})
    assert ack["type"] == "ack", ack
    m = await c.expect(lambda m: m["type"] == "message", what="message")
    assert m["payload"] == {"t": big}
    # Over the flag's limit: close 1009.
    await c.ws.send(json.dumps({"type": "publish", "channel": "chat:big",
                                "payload": {"t": "y" * 9000}}))
    try:
        await c.expect(lambda m: False, timeout=5, what="close")
    except Closed:
        pass
    assert c.close_code == 1009


@run_async
async def test_drain_time_spreads_the_closes(hub):
    """--drain-time: SIGTERM closes the open connections in batches over
    the drain time instead of all at once, so they reconnect as a stream.
    Each still gets `disconnect` (1012) and close 1012; the server exits 0
    once the last is gone."""
    h = hub(base_config(), "--drain-time", 2, workers=2)
    clients = [await Client.open(h, token(f"d{i}")) for i in range(40)]
    loop = asyncio.get_running_loop()

    async def told(c):
        d = await c.expect(lambda m: m["type"] == "disconnect", timeout=10, what="disconnect")
        at = loop.time()
        assert d["payload"]["code"] == 1012, d
        try:
            await c.expect(lambda m: False, timeout=10, what="close")
        except Closed:
            pass
        assert c.close_code == 1012
        return at

    h.expect_stopped = True
    t0 = loop.time()
    h.server.signal(signal.SIGTERM)
    times = await asyncio.gather(*(told(c) for c in clients))
    first, last = min(times) - t0, max(times) - t0
    # 20 a worker over 2 s: one every 100 ms, the last about 1.9 s in.
    assert first < 0.5 * MULT, (first, last)
    assert last >= 1.0, (first, last)
    assert last <= 2 + 3 * MULT, (first, last)
    assert await asyncio.to_thread(h.server.wait, 10 * MULT) == 0


async def second_signal_closes_at_once(h, clients):
    """SIGTERM, and half a second into the drain a second one: every
    client gets 1012 within 3 s of it, and the server exits 0."""
    loop = asyncio.get_running_loop()
    h.expect_stopped = True
    h.server.signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    t1 = loop.time()
    h.server.signal(signal.SIGTERM)

    async def closed(c):
        try:
            await c.expect(lambda m: False, timeout=15, what="close")
        except Closed:
            pass
        assert c.close_code == 1012
        return loop.time()

    times = await asyncio.gather(*(closed(c) for c in clients))
    assert max(times) - t1 < 3.0, max(times) - t1
    assert await asyncio.to_thread(h.server.wait, 10 * MULT) == 0


@run_async
async def test_second_signal_ends_the_drain(hub):
    """A second SIGTERM during a long --drain-time closes every connection
    still open at once: an operator is never stuck behind a drain."""
    h = hub(base_config(), "--drain-time", 60, workers=1)
    clients = [await Client.open(h, token(f"n{i}")) for i in range(50)]
    # The drain alone closes at least one every 100 ms: 50 would take 5 s,
    # the last 45 of them after the second signal. It closes them at once.
    await second_signal_closes_at_once(h, clients)


@run_async
async def test_second_signal_ends_the_drain_of_other_workers(hub):
    """Worker 0, which reads the signals, has no connection left while
    another worker still drains: a second SIGTERM still ends that drain
    at once (it was read by no one once worker 0's loop had ended, and the
    drain ran its full time)."""
    import re
    import time
    h = hub(base_config(), "--drain-time", 60, "--log-level", "debug", workers=2)
    kept = []
    for i in range(400):
        c = await Client.open(h, token(f"w{i}"))
        deadline = time.monotonic() + 5 * MULT
        while len(opens := re.findall(r"worker=(\d+) ev=open path=/ws", h.server.log())) <= i:
            assert time.monotonic() < deadline, "no ev=open logged"
            await asyncio.sleep(0.01)
        if opens[i] == "1":
            kept.append(c)
            if len(kept) == 60:
                break
        else:
            await c.close()
    assert len(kept) == 60, "the kernel gave worker 1 fewer than 60 of 400"
    # The drain alone closes one every 100 ms at least: 60 take 6 s.
    await second_signal_closes_at_once(h, kept)
    assert "ev=drain_now" in h.server.log()
