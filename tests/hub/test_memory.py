"""--max-client-memory (docs/limits.md): when the buffers wshub holds for
clients together pass the cap, the connections that hold the most are
closed with 1013, largest first, server-wide across workers. Readers that
keep up are not touched, nothing else is lost, and the server's client
memory (wshub_client_memory_bytes) comes back under the cap."""
import asyncio
import json
import socket
import threading
import time

import wsraw
from conftest import MULT, Client, merge, run_async, token
from test_fanout import SLOW_CFG
from test_reload import reload

N_HIST = 50          # messages in the channel's history
BODY = "m" * 8000    # ~400 KB per history reply
REPLIES = 30         # history requests per non-reading client: ~12 MB each
# The kernel takes up to tcp_wmem's 4 MB of each backlog (loopback), so
# wshub holds 8-12 MB of each: the cap fits one, never two.
CAP = 14_000_000


def metrics(h):
    return wsraw.scrape_metrics(h.port)


def wait_metric(h, name, ok, timeout=10.0):
    deadline = time.monotonic() + timeout * MULT
    while True:
        v = metrics(h).get(name)
        if v is not None and ok(v):
            return v
        assert time.monotonic() < deadline, f"{name} = {v}"
        time.sleep(0.05)


def backlogged_client(h, user):
    """A raw /ws client with a tiny receive buffer that asks for REPLIES
    history replies and does not read them: each is its own ~400 KB frame,
    so its backlog is its own, not shared. It asks slowly (8 MB a second),
    so the server's checks (10 a second) see it grow."""
    c = wsraw.Conn("127.0.0.1", h.port, rcvbuf=4096)
    c.handshake("/ws", extra=f"Authorization: Bearer {token(user)}\r\n".encode())
    c.send_frame(wsraw.OP_TEXT, json.dumps({"type": "connect", "id": 1}).encode())
    c.send_frame(wsraw.OP_TEXT, json.dumps({"type": "subscribe", "id": 2,
                                            "channel": "chat:mem"}).encode())
    for want in ("connected", "subscribed"):
        _, data = c.recv_message(timeout=5)
        assert json.loads(data)["type"] == want, data
    for i in range(REPLIES):
        c.send_frame(wsraw.OP_TEXT, json.dumps(
            {"type": "history", "id": 10 + i, "channel": "chat:mem",
             "payload": {"limit": N_HIST}}).encode())
        time.sleep(0.05)
    return c


def read_backlog(c, timeout=20.0):
    """Reads what the client was sent: (history reply ids, the disconnect
    push or None, the close code or None when it is still open)."""
    ids, disc = [], None
    deadline = time.monotonic() + timeout * MULT
    while len(ids) < REPLIES or disc is not None:
        f = c.recv_message(timeout=max(0.01, deadline - time.monotonic()) / MULT)
        if isinstance(f, wsraw.Frame):
            return ids, disc, f.close_code()
        m = json.loads(f[1])
        if m["type"] == "history":
            assert len(m["payload"]["messages"]) == N_HIST, "a reply arrived cut"
            ids.append(m["id"])
        elif m["type"] == "disconnect":
            disc = m
        elif m["type"] not in ("join", "leave"):
            raise AssertionError(f"unexpected {m['type']}")
    return ids, None, None


@run_async
async def test_client_memory_cap_closes_the_largest_holders_first(hub):
    # --close-timeout: the evicted wait, unread, until the end of the test.
    # The flag overrides the config file's far larger limit.
    cfg = merge(SLOW_CFG, {"limits": {"max_client_memory": 1 << 40}})
    h = hub(cfg, "--max-client-memory", CAP, "--max-queue", 64 << 20, "--soft-queue", 0,
            "--write-timeout", 0, "--ping-interval", 0, "--close-timeout", 60)
    pub = await Client.open(h, token("pub"))
    await pub.subscribe("chat:mem")
    for i in range(N_HIST):
        await pub.publish("chat:mem", BODY)
    # One after another, each client's backlog passes the cap together with
    # the one before while it is still the smaller: the older one is closed,
    # the newest stays.
    clients = []
    for i in range(4):
        clients.append(await asyncio.to_thread(backlogged_client, h, f"slow{i}"))
        await asyncio.to_thread(wait_metric, h, "wshub_memory_evictions_total",
                                lambda v, i=i: v == max(0, i))
        await asyncio.sleep(0.3 * MULT)  # several checks: no further eviction
        assert metrics(h)["wshub_memory_evictions_total"] == max(0, i)
    assert metrics(h)["wshub_client_memory_bytes"] <= CAP
    # A reader that keeps up gets a whole reply meanwhile.
    r = await pub.cmd("history", "chat:mem", payload={"limit": N_HIST})
    assert r["type"] == "history" and len(r["payload"]["messages"]) == N_HIST
    results = [await asyncio.to_thread(read_backlog, c) for c in clients]
    for i, (ids, disc, code) in enumerate(results[:3]):
        assert code == 1013, f"client {i}: {code} {disc}"
        assert disc is not None and disc["payload"]["code"] == 1013, disc
        assert disc["payload"]["reason"] == "server memory limit"
        assert disc["payload"]["reconnect"] is True
        assert 500 <= disc["payload"]["retry_after_ms"] <= 5000, disc
        assert ids == list(range(10, 10 + len(ids))), "what it got is an in-order prefix"
        assert len(ids) < REPLIES, "its unsent backlog was dropped"
    ids, disc, code = results[3]
    assert (ids, disc, code) == (list(range(10, 10 + REPLIES)), None, None), \
        "the newest client, never the largest, gets everything"
    for c in clients:
        c.close()
    await pub.close()
    await asyncio.to_thread(wait_metric, h, "wshub_client_memory_bytes", lambda v: v < 1 << 20)


def raw_lagger(port, path):
    c = wsraw.Conn("127.0.0.1", port, rcvbuf=4096)
    c.handshake(path)
    return c


def test_client_memory_cap_on_shared_frames(hub):
    """/raw fan-out shares one frame among all subscribers, so closing one
    lagging subscriber frees nothing while the others hold the same frames:
    the checks that follow close the next ones until the total is under the
    cap. A subscriber that keeps up gets every message intact."""
    # The cap from the config file (limits.max_client_memory) this time.
    cfg = merge(SLOW_CFG, {"limits": {"max_client_memory": 3_000_000}})
    h = hub(cfg, "--max-queue", 64 << 20, "--soft-queue", 0, "--write-timeout", 0,
            "--ping-interval", 0)
    path = "/raw/memshare"
    laggers = [raw_lagger(h.port, path) for _ in range(3)]
    healthy = wsraw.ws_connect(h.port, path)
    msgs = [bytes([i % 256]) * 60000 for i in range(200)]  # 12 MB
    got, err = [], []

    def read():
        try:
            for _ in msgs:
                op, data = healthy.recv_message(timeout=20)
                got.append(data)
        except Exception as e:  # reported below
            err.append(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    pub = wsraw.ws_connect(h.port, path)
    for m in msgs:
        pub.send_frame(wsraw.OP_BINARY, m)
    t.join(30 * MULT)
    assert not err, err
    assert got == msgs
    # They share frames: each check closes one more until none is left.
    wait_metric(h, "wshub_memory_evictions_total", lambda v: v >= 3)
    for c in laggers:
        try:
            f, _ = c.wait_close(timeout=10)
        except wsraw.ReadTimeout:
            raise AssertionError(f"{metrics(h)}\n{h.server.log()[-3000:]}") from None
        assert f.close_code() == 1013, f
    assert metrics(h)["wshub_memory_evictions_total"] == 3
    wait_metric(h, "wshub_client_memory_bytes", lambda v: v <= 3_000_000)
    for c in (*laggers, healthy, pub):
        c.close()


def test_client_memory_counts_input_carried_over(hub):
    """Input kept for the next read counts as client memory: here the
    partial request heads of 40 connections that stop half-way (each kept
    in an 8 KiB carry until the head completes or the handshake deadline);
    in the same way, the up to 64 KiB a publisher held for a full inbox
    keeps. They leave the count when their connections close."""
    h = hub(None, "--handshake-timeout", 60)
    base = metrics(h)["wshub_client_memory_bytes"]
    socks = []
    try:
        for i in range(40):
            s = socket.create_connection(("127.0.0.1", h.port))
            s.sendall(b"GET /raw/carry HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 3000)
            socks.append(s)
        wait_metric(h, "wshub_client_memory_bytes", lambda v: v >= base + 40 * 3000)
    finally:
        for s in socks:
            s.close()
    wait_metric(h, "wshub_client_memory_bytes", lambda v: v <= base)


def lag_behind(h, path, n=3):
    """n /raw subscribers that do not read, and 12 MB published to them
    (shared frames): the server holds most of it."""
    laggers = [raw_lagger(h.port, path) for _ in range(n)]
    pub = wsraw.ws_connect(h.port, path)
    for i in range(200):
        pub.send_frame(wsraw.OP_BINARY, bytes([i % 256]) * 60000)
    return laggers, pub


def backlog_stays(h, path, evictions):
    """With the cap off, a 12 MB backlog (lag_behind) stays: the checks
    that run meanwhile close nothing past the evictions so far."""
    laggers, pub = lag_behind(h, path)
    wait_metric(h, "wshub_client_memory_bytes", lambda v: v > 6_000_000)
    time.sleep(1.5)  # each worker checks at least once a second
    assert metrics(h)["wshub_memory_evictions_total"] == evictions
    return laggers, pub


def test_sighup_turns_the_client_memory_cap_on_and_off(hub):
    """limits.max_client_memory follows SIGHUP: turned on under a backlog
    it closes the holders until the total is under it; turned off, the
    next backlog stays."""
    h = hub(SLOW_CFG, "--max-queue", 64 << 20, "--soft-queue", 0, "--write-timeout", 0,
            "--ping-interval", 0)
    laggers, pub = backlog_stays(h, "/raw/memreload1", 0)
    line = reload(h, merge(SLOW_CFG, {"limits": {"max_client_memory": 3_000_000}}), 1)
    assert "ok=1" in line and "max_client_memory=3000000" in line, line
    wait_metric(h, "wshub_memory_evictions_total", lambda v: v >= 3)
    for c in laggers:
        f, _ = c.wait_close(timeout=10)
        assert f.close_code() == 1013, f
    wait_metric(h, "wshub_client_memory_bytes", lambda v: v <= 3_000_000)
    for c in (*laggers, pub):
        c.close()

    line = reload(h, SLOW_CFG, 2)
    assert "max_client_memory=0" in line, line
    laggers, pub = backlog_stays(h, "/raw/memreload2", 3)
    for c in (*laggers, pub):
        c.close()


def test_the_client_memory_flag_outlasts_a_reload(hub):
    """--max-client-memory overrides the file at start and at every SIGHUP:
    here it keeps the cap off whatever the file says."""
    h = hub(SLOW_CFG, "--max-client-memory", 0, "--max-queue", 64 << 20, "--soft-queue", 0,
            "--write-timeout", 0, "--ping-interval", 0)
    line = reload(h, merge(SLOW_CFG, {"limits": {"max_client_memory": 3_000_000}}), 1)
    assert "ok=1" in line and "max_client_memory=0" in line, line
    laggers, pub = backlog_stays(h, "/raw/memflag", 0)
    for c in (*laggers, pub):
        c.close()
