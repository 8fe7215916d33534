"""Echo endpoint driven by the Python `websockets` 10.4 client (Debian)."""

import asyncio
import os

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from conftest import MULT, run_async, ws_uri
import wsraw

MAX = 1048576
ECHO_ARGS = ("--echo", "--max-message", MAX)
SIZES = [0, 1, 125, 126, 127, 128, 65535, 65536, 65537, 262144, MAX - 1, MAX]


def connect(server, path="/echo", **kw):
    kw.setdefault("max_size", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("close_timeout", 5 * MULT)
    kw.setdefault("compression", None)
    return websockets.connect(ws_uri(server, path), **kw)


def text_of(n):
    s = "wshub-µ-"  # 9 bytes in UTF-8, multi-byte char inside
    b = (s * (n // 9 + 1)).encode()[:n]
    # cut on a character boundary, pad with ASCII to exactly n bytes
    t = b.decode("utf-8", "ignore")
    return t + "x" * (n - len(t.encode()))


async def recv(ws, timeout=10):
    return await asyncio.wait_for(ws.recv(), timeout * MULT)


@pytest.mark.parametrize("size", SIZES)
@run_async
async def test_text_echo_sizes(wshub, size):
    s = wshub(*ECHO_ARGS)
    async with connect(s) as ws:
        msg = text_of(size)
        assert len(msg.encode()) == size
        await ws.send(msg)
        got = await recv(ws)
        assert isinstance(got, str), "text must be echoed as text"
        assert got == msg
        await ws.close(1000)
        assert ws.close_code == 1000


@pytest.mark.parametrize("size", SIZES)
@run_async
async def test_binary_echo_sizes(wshub, size):
    s = wshub(*ECHO_ARGS)
    async with connect(s) as ws:
        msg = os.urandom(size)
        await ws.send(msg)
        got = await recv(ws)
        assert isinstance(got, bytes), "binary must be echoed as binary"
        assert got == msg
        await ws.close(1000)
        assert ws.close_code == 1000


@run_async
async def test_many_messages_in_flight(wshub):
    s = wshub(*ECHO_ARGS)
    async with connect(s) as ws:
        msgs = [os.urandom(i * 37 % 5000) if i % 2 else f"msg {i}" for i in range(300)]
        for m in msgs:
            await ws.send(m)
        for m in msgs:
            assert await recv(ws) == m


@pytest.mark.parametrize("size", [MAX + 1, MAX + 65536, 4 * MAX])
@run_async
async def test_oversize_message_closes_1009(wshub, size):
    s = wshub(*ECHO_ARGS)
    async with connect(s) as ws:
        try:
            await ws.send(os.urandom(size))
        except ConnectionClosed:
            pass  # the server may close while we are still writing
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        await asyncio.wait_for(ws.wait_closed(), 10 * MULT)
        assert ws.close_code == 1009, f"close code {ws.close_code} {ws.close_reason!r}"


@run_async
async def test_oversize_fragmented_message_closes_1009(wshub):
    s = wshub(*ECHO_ARGS)
    async with connect(s) as ws:
        chunk = b"\x00" * 65536

        async def frags():
            for _ in range(MAX // 65536):
                yield chunk
            yield b"\x01"  # one byte over the limit in total

        try:
            await ws.send(frags())
        except ConnectionClosed:
            pass
        await asyncio.wait_for(ws.wait_closed(), 10 * MULT)
        assert ws.close_code == 1009, f"close code {ws.close_code} {ws.close_reason!r}"


@run_async
async def test_fragmented_text_and_binary(wshub):
    s = wshub(*ECHO_ARGS)
    async with connect(s) as ws:
        await ws.send(iter(["frag", "men", "ted µ", ""]))
        assert await recv(ws) == "fragmented µ"
        await ws.send(iter([b"\x00\x01", b"", b"\x02"]))
        assert await recv(ws) == b"\x00\x01\x02"
        # a maximum-size message in 16 fragments
        big = os.urandom(MAX)
        await ws.send(big[i:i + 65536] for i in range(0, MAX, 65536))
        assert await recv(ws) == big
        # a text message split inside multi-byte characters
        txt = "€uro 😀 " * 1000
        raw = txt.encode()
        c = wsraw.ws_connect(s.port)
        try:
            # 15-byte fragments (867 of them, under the default cap of 1024)
            # cut the 13-byte unit at every offset, inside multi-byte characters
            frames = [wsraw.frame(wsraw.OP_TEXT if i == 0 else wsraw.OP_CONT, raw[i:i + 15],
                                  fin=(i + 15 >= len(raw))) for i in range(0, len(raw), 15)]
            c.send(b"".join(frames))
            assert c.recv_message() == (wsraw.OP_TEXT, raw)
        finally:
            c.close()


@run_async
async def test_max_fragments_limit_1008(wshub):
    s = wshub("--echo", "--max-fragments", 8)
    async with connect(s) as ws:
        # websockets ends a fragmented send with an empty final frame:
        # 7 chunks = 8 frames, exactly at the limit: fine
        await ws.send(iter([b"a"] * 7))
        assert await recv(ws) == b"a" * 7
        try:
            await ws.send(iter([b"b"] * 8))  # 9 frames
        except ConnectionClosed:
            pass
        await asyncio.wait_for(ws.wait_closed(), 10 * MULT)
        assert ws.close_code == 1008, f"close code {ws.close_code} {ws.close_reason!r}"


@pytest.mark.parametrize("nframes,ok", [(8, True), (9, False)])
def test_max_fragments_exact_frames(wshub, nframes, ok):
    s = wshub("--echo", "--max-fragments", 8)
    c = wsraw.ws_connect(s.port)
    try:
        c.send(b"".join(wsraw.frame(wsraw.OP_TEXT if i == 0 else wsraw.OP_CONT, b"f",
                                    fin=(i == nframes - 1)) for i in range(nframes)))
        m = c.recv_message()
        if ok:
            assert m == (wsraw.OP_TEXT, b"f" * nframes), m
        else:
            assert isinstance(m, wsraw.Frame) and m.close_code() == 1008, m
    finally:
        c.close()


@run_async
async def test_ping_pong(wshub):
    s = wshub(*ECHO_ARGS)
    async with connect(s) as ws:
        for payload in (b"", b"hello", os.urandom(125)):
            waiter = await ws.ping(payload)
            await asyncio.wait_for(waiter, 5 * MULT)
        # many pings in a row, each answered
        waiters = [await ws.ping(f"p{i}".encode()) for i in range(20)]
        await asyncio.wait_for(asyncio.gather(*waiters), 5 * MULT)
        # data still flows after pings
        await ws.send("after pings")
        assert await recv(ws) == "after pings"


@run_async
async def test_pong_payload_exact(wshub):
    s = wshub(*ECHO_ARGS)
    c = wsraw.ws_connect(s.port)
    try:
        for p in (b"", b"\x00\xff" * 10, os.urandom(125)):
            c.send_frame(wsraw.OP_PING, p)
            f = c.recv_frame()
            assert f.opcode == wsraw.OP_PONG and f.payload == p, f
        c.send_frame(wsraw.OP_PONG, b"unsolicited")
        c.send_frame(wsraw.OP_TEXT, b"x")
        assert c.recv_message() == (wsraw.OP_TEXT, b"x")
        assert not c.pongs, "unsolicited pong must not be answered"
    finally:
        c.close()


VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
               3000, 3999, 4000, 4500, 4999]


@pytest.mark.parametrize("code", VALID_CODES)
@run_async
async def test_close_code_echoed(wshub, code):
    s = wshub(*ECHO_ARGS)
    ws = await connect(s)
    await ws.send("before close")
    assert await recv(ws) == "before close"
    await ws.close(code, "bye")
    assert ws.close_code == code, f"sent {code}, server answered {ws.close_code}"


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_invalid_close_code_1002(wshub, code):
    s = wshub(*ECHO_ARGS)
    c = wsraw.ws_connect(s.port)
    try:
        c.send_frame(wsraw.OP_CLOSE, wsraw.close_payload(code))
        f, _ = c.wait_close()
        assert f.close_code() == 1002, f"close {code} answered with {f.close_code()}"
        c.send_close(1002)
        assert c.wait_eof(5), "server did not close TCP"
    finally:
        c.close()


def test_close_without_code(wshub):
    s = wshub(*ECHO_ARGS)
    c = wsraw.ws_connect(s.port)
    try:
        c.send_frame(wsraw.OP_CLOSE, b"")
        f, _ = c.wait_close()
        assert f.payload == b"" or f.close_code() == 1000, f
        assert c.wait_eof(5), "server did not close TCP after the close handshake"
    finally:
        c.close()


def test_server_closes_tcp_after_close_handshake(wshub):
    s = wshub(*ECHO_ARGS)
    c = wsraw.ws_connect(s.port)
    try:
        c.send_close(1000, b"done")
        f, _ = c.wait_close()
        assert f.close_code() == 1000
        # we do not close our side: the server must
        assert c.wait_eof(2) in ("eof", "reset"), "server did not close the TCP connection"
    finally:
        c.close()


def test_invalid_utf8_text_1007(wshub):
    s = wshub(*ECHO_ARGS)
    c = wsraw.ws_connect(s.port)
    try:
        c.send_frame(wsraw.OP_TEXT, b"valid then \xed\xa0\x80 surrogate")
        f, seen = c.wait_close()
        assert not seen and f.close_code() == 1007, (f, seen)
    finally:
        c.close()


@run_async
async def test_many_concurrent_clients_two_workers(wshub):
    s = wshub("--echo", "--workers", 2)

    async def one(i):
        async with connect(s) as ws:
            for k in range(10):
                m = f"client {i} msg {k}" if k % 2 else os.urandom(i + k)
                await ws.send(m)
                assert await recv(ws) == m
            await ws.close(4000 + i)
            assert ws.close_code == 4000 + i

    await asyncio.gather(*(one(i) for i in range(100)))


def test_server_initiated_close_honours_close_timeout(wshub):
    """After a 1009 the server waits at most --close-timeout for our close,
    then closes TCP itself."""
    s = wshub("--echo", "--max-message", 1000, "--close-timeout", 0.5)
    c = wsraw.ws_connect(s.port)
    try:
        c.send_frame(wsraw.OP_BINARY, b"x" * 1001)
        f, seen = c.wait_close()
        assert f.close_code() == 1009 and not seen, (f, seen)
        import time
        t0 = time.monotonic()
        how = c.wait_eof(5)  # we never answer the close
        dt = time.monotonic() - t0
        assert how in ("eof", "reset"), "server never closed TCP"
        assert dt <= 0.5 + 1.5 * MULT, f"TCP closed {dt:.2f}s after the close (timeout 0.5s)"
    finally:
        c.close()


def test_oversize_declared_length_fails_before_payload(wshub):
    """A frame header declaring more than --max-message is refused (1009)
    at once, without waiting for the payload."""
    s = wshub("--echo", "--max-message", 1000)
    c = wsraw.ws_connect(s.port)
    try:
        c.send(wsraw.frame(wsraw.OP_BINARY, b"", length=1 << 30)[:14])  # header + key only
        f, _ = c.wait_close(3)
        assert f.close_code() == 1009, f
    finally:
        c.close()


def test_large_echoes_in_one_read_and_with_split_headers(wshub):
    """Echo replies over 1 KiB are sent with their header written over the
    request's own header in the receive buffer. Several such messages in
    one write, next to small ones, and messages whose header arrives in an
    earlier write than the payload (no header in front: the other path)
    must all come back exact and in order."""
    s = wshub("--workers", 1, "--echo", "--max-message", 1 << 20)
    c = wsraw.ws_connect(s.port, "/echo")
    try:
        msgs = [(wsraw.OP_BINARY, os.urandom(n)) for n in (1025, 3, 70000, 125, 4096, 65535, 1100)]
        msgs.append((wsraw.OP_TEXT, ("ü" * 3000).encode()))
        c.send(b"".join(wsraw.frame(op, p) for op, p in msgs))
        for op, p in msgs:
            f = c.recv_frame(10)
            assert (f.opcode, f.fin, f.payload) == (op, True, p)
        # Header in one write, payload in the next, one at a time.
        import time
        for op, p in msgs:
            fr = wsraw.frame(op, p)
            hl = len(fr) - len(p)
            c.send(fr[:hl])
            time.sleep(0.05)
            c.send(fr[hl:])
            f = c.recv_frame(10)
            assert (f.opcode, f.fin, f.payload) == (op, True, p)
    finally:
        c.close()
