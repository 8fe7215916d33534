"""/raw/<channel> fan-out across 2 workers, driven by Python `websockets`."""

import asyncio
import os

import pytest
import websockets

from conftest import MULT, run_async, ws_uri
import wsraw

N_CLIENTS = 16  # SO_REUSEPORT spreads them over both workers


def connect(server, path, **kw):
    kw.setdefault("max_size", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("close_timeout", 5 * MULT)
    kw.setdefault("compression", None)
    return websockets.connect(ws_uri(server, path), **kw)


async def recv(ws, timeout=10):
    return await asyncio.wait_for(ws.recv(), timeout * MULT)


async def expect_silence(ws, wait=0.3):
    try:
        m = await asyncio.wait_for(ws.recv(), wait)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected message {m!r}")


@run_async
async def test_fanout_every_other_client_receives(wshub):
    s = wshub("--workers", 2)
    clients = [await connect(s, "/raw/room") for _ in range(N_CLIENTS)]
    other = await connect(s, "/raw/other-room")
    await asyncio.sleep(0.1)  # let every subscription settle
    try:
        sent = []
        for i, ws in enumerate(clients):
            msg = f"from {i} µ" if i % 2 == 0 else os.urandom(100 + i)
            sent.append(msg)
            await ws.send(msg)
        for j, ws in enumerate(clients):
            want = sorted((m if isinstance(m, bytes) else m.encode(), type(m).__name__)
                          for i, m in enumerate(sent) if i != j)
            got = []
            for _ in range(N_CLIENTS - 1):
                m = await recv(ws)
                got.append((m if isinstance(m, bytes) else m.encode(), type(m).__name__))
            assert sorted(got) == want, f"client {j} received the wrong set"
            await expect_silence(ws, 0.05)  # in particular, not its own message
        await expect_silence(other, 0.2)
    finally:
        for ws in clients + [other]:
            await ws.close()


@run_async
async def test_fanout_order_and_sizes_per_sender(wshub):
    # a queue large enough for the whole burst: this test is about order and
    # sizes, not about slow consumers (see test_timeouts.py)
    s = wshub("--workers", 2, "--max-message", 1048576, "--max-queue", 16 << 20)
    pub = await connect(s, "/raw/ordered")
    subs = [await connect(s, "/raw/ordered") for _ in range(8)]
    await asyncio.sleep(0.1)
    try:
        msgs = [os.urandom(n) for n in (0, 1, 125, 126, 65535, 65536, 1048576)]
        msgs += [f"text {i}" for i in range(50)]
        for m in msgs:
            await pub.send(m)
        for k, ws in enumerate(subs):
            for i, m in enumerate(msgs):
                got = await recv(ws)
                assert got == m, f"subscriber {k} message {i}: wrong payload/order/type"
        await expect_silence(pub, 0.1)
    finally:
        for ws in subs + [pub]:
            await ws.close()


@run_async
async def test_fanout_fragmented_message_delivered_whole(wshub):
    s = wshub("--workers", 2)
    pub = await connect(s, "/raw/frag")
    subs = [await connect(s, "/raw/frag") for _ in range(6)]
    await asyncio.sleep(0.1)
    try:
        await pub.send(iter(["one ", "two ", "three"]))
        for ws in subs:
            assert await recv(ws) == "one two three"
    finally:
        for ws in subs + [pub]:
            await ws.close()


@run_async
async def test_subscriber_leaving_does_not_disturb_others(wshub):
    s = wshub("--workers", 2)
    clients = [await connect(s, "/raw/churn") for _ in range(10)]
    await asyncio.sleep(0.1)
    try:
        for ws in clients[5:]:
            await ws.close()
        # a peer that vanishes without a close handshake
        raw = wsraw.ws_connect(s.port, "/raw/churn")
        raw.close()
        await asyncio.sleep(0.1)
        await clients[0].send("still here")
        for ws in clients[1:5]:
            assert await recv(ws) == "still here"
        await expect_silence(clients[0], 0.1)
    finally:
        for ws in clients[:5]:
            await ws.close()


def test_raw_channel_peer_close_code_echoed(wshub):
    s = wshub("--workers", 2)
    c = wsraw.ws_connect(s.port, "/raw/closecode")
    try:
        c.send_close(4001, b"bye")
        f, _ = c.wait_close()
        assert f.close_code() == 4001
        assert c.wait_eof(5), "server did not close TCP"
    finally:
        c.close()


def _expect_no_frame(c, wait, who):
    try:
        f = c.recv_frame(wait)
    except wsraw.ReadTimeout:
        return
    raise AssertionError(f"{who} received {f!r}")


def _read_messages(c, n, timeout=5):
    """Read n whole messages, checking the frame sequence is valid (no data
    frame of another message inside a fragmented one)."""
    msgs = []
    op = None
    parts = []
    while len(msgs) < n:
        f = c.recv_frame(timeout)
        assert not f.masked and not f.rsv, f
        if f.opcode in (wsraw.OP_PING, wsraw.OP_PONG):
            continue
        assert f.opcode != wsraw.OP_CLOSE, f"unexpected close {f.close_code()}"
        if op is None:
            assert f.opcode in (wsraw.OP_TEXT, wsraw.OP_BINARY), f"message starts with {f!r}"
            op = f.opcode
        else:
            assert f.opcode == wsraw.OP_CONT, f"{f!r} inside a fragmented message"
        parts.append(f.payload)
        if f.fin:
            msgs.append((op, b"".join(parts)))
            op, parts = None, []
    return msgs


def test_interleaved_fragmented_publishers_deliver_whole_messages(wshub):
    """Publisher A is in the middle of a fragmented message when B sends a
    whole one: subscribers get two valid, complete messages."""
    s = wshub("--workers", 2)
    a = wsraw.ws_connect(s.port, "/raw/mix")
    b = wsraw.ws_connect(s.port, "/raw/mix")
    subs = [wsraw.ws_connect(s.port, "/raw/mix") for _ in range(6)]
    import time
    time.sleep(0.1)
    try:
        a.send_frame(wsraw.OP_TEXT, b"A-first-", fin=False)
        time.sleep(0.05)
        b.send_frame(wsraw.OP_BINARY, b"B-whole")
        time.sleep(0.05)
        a.send_frame(wsraw.OP_CONT, b"middle-", fin=False)
        time.sleep(0.05)
        a.send_frame(wsraw.OP_CONT, b"last")
        want = sorted([(wsraw.OP_TEXT, b"A-first-middle-last"), (wsraw.OP_BINARY, b"B-whole")])
        for i, c in enumerate(subs):
            assert sorted(_read_messages(c, 2)) == want, f"subscriber {i}"
        assert _read_messages(b, 1) == [(wsraw.OP_TEXT, b"A-first-middle-last")]
        assert _read_messages(a, 1) == [(wsraw.OP_BINARY, b"B-whole")]
    finally:
        for c in [a, b] + subs:
            c.close()


def test_raw_publisher_invalid_utf8_not_forwarded(wshub):
    """A text message with invalid UTF-8 fails its sender (1007) and reaches
    nobody."""
    s = wshub("--workers", 2)
    bad = wsraw.ws_connect(s.port, "/raw/utf")
    sub = wsraw.ws_connect(s.port, "/raw/utf")
    import time
    time.sleep(0.1)
    try:
        bad.send_frame(wsraw.OP_TEXT, b"ok so far \xc0\xaf")
        f, _ = bad.wait_close()
        assert f.close_code() == 1007, f
        _expect_no_frame(sub, 0.3, "subscriber")
    finally:
        bad.close()
        sub.close()


def _burst():
    """Messages around the publish batch's bounds (chan.c: frames of up to
    1024 bytes wait in a batch of up to 16 KiB; larger ones go alone):
    mixed text and binary, 0 bytes, both sides of 1024-byte frames, one
    large message in the middle, and enough small ones to split batches."""
    msgs = []
    for i, n in enumerate([10, 1, 63, 64, 125, 126, 1020, 1022, 1023, 1024, 5000, 3, 70000, 2, 0]):
        if i % 2:
            msgs.append((wsraw.OP_TEXT, ("é" * (n // 2) + "x" * (n % 2)).encode()))
        else:
            msgs.append((wsraw.OP_BINARY, os.urandom(n)))
    for i in range(400):  # ~40 KiB of small messages: three batches or more
        msgs.append((wsraw.OP_TEXT, f"small {i} ".encode().ljust(90, b".")))
    return msgs


def _wire(msgs):
    """The burst as client frames. Messages that start a batch (the first,
    and the one after the 70000-byte one, which goes alone) are sent in
    fragments: the server reassembles those with head-room in front, so a
    batch's first frame does not start at offset 0 of its buffer."""
    out = []
    for k, (op, p) in enumerate(msgs):
        if k == 0 or (k > 0 and len(msgs[k - 1][1]) == 70000):
            half = len(p) // 2
            out.append(wsraw.frame(op, p[:half], fin=False))
            out.append(wsraw.frame(wsraw.OP_CONT, p[half:]))
        else:
            out.append(wsraw.frame(op, p))
    return b"".join(out)


def test_burst_in_one_write_arrives_as_separate_messages_in_order(wshub):
    """A publisher writes many frames with one send and closes in the same
    write: every subscriber on either worker gets each message whole, with
    its own opcode, in order, and nothing else; the publisher's close does
    not lose the messages before it."""
    s = wshub("--workers", 2, "--max-message", 1 << 20, "--max-queue", 16 << 20)
    subs = [wsraw.ws_connect(s.port, "/raw/burst") for _ in range(6)]
    pub = wsraw.ws_connect(s.port, "/raw/burst")
    import time
    time.sleep(0.1)
    try:
        msgs = _burst()
        pub.send(_wire(msgs) + wsraw.frame(wsraw.OP_CLOSE, wsraw.close_payload(1000)))
        f, _ = pub.wait_close()
        assert f.close_code() == 1000
        for i, c in enumerate(subs):
            got = _read_messages(c, len(msgs), timeout=10)
            for k, (want, have) in enumerate(zip(msgs, got)):
                assert have == want, f"subscriber {i} message {k}: {have[0]} {len(have[1])} B"
            _expect_no_frame(c, 0.2, f"subscriber {i}")
    finally:
        for c in subs + [pub]:
            c.close()


@pytest.mark.parametrize("workers", [1, 2])
@run_async
async def test_burst_reaches_deflate_and_plain_subscribers_alike(wshub, workers):
    """With --deflate, frames worth compressing go alone (compressed once
    per window) and the small ones are batched plain: a subscriber with
    permessage-deflate and one without get the same messages in order.
    With one worker every subscriber is on the publisher's worker, where a
    message compressed for deflate ones waits in that worker's own inbox
    (chan.c defer_local) and the small ones after it wait behind it."""
    s = wshub("--workers", workers, "--deflate", "--max-message", 1 << 20,
              "--max-queue", 16 << 20)
    zsubs = [await connect(s, "/raw/zburst", compression="deflate") for _ in range(3)]
    psubs = [await connect(s, "/raw/zburst") for _ in range(3)]
    pub = wsraw.ws_connect(s.port, "/raw/zburst")
    await asyncio.sleep(0.1)
    try:
        msgs = _burst()
        pub.send(_wire(msgs))
        for i, ws in enumerate(zsubs + psubs):
            for k, (op, p) in enumerate(msgs):
                got = await recv(ws)
                want = p.decode() if op == wsraw.OP_TEXT else p
                assert got == want, f"subscriber {i} message {k}"
        for ws in zsubs:
            assert ws.extensions, "permessage-deflate was not agreed"
    finally:
        pub.close()
        for ws in zsubs + psubs:
            await ws.close()
