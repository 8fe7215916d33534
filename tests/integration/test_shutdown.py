"""Graceful shutdown: SIGTERM -> close 1012 to every peer, SIGINT -> 1001,
then exit 0 once the closes complete (or the close timeout passes)."""

import asyncio
import signal
import time

import pytest
import websockets

from conftest import MULT, run_async, ws_uri
import wsraw


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 1012), (signal.SIGINT, 1001)])
@run_async
async def test_signal_closes_every_peer(wshub, sig, code):
    s = wshub("--echo", "--workers", 2, "--close-timeout", 2, expect_stopped=True)
    kw = dict(ping_interval=None, compression=None, close_timeout=5 * MULT)
    clients = [await websockets.connect(ws_uri(s, "/echo"), **kw) for _ in range(5)]
    clients += [await websockets.connect(ws_uri(s, f"/raw/ch{i % 2}"), **kw) for i in range(5)]
    for ws in clients[:5]:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), 5 * MULT) == "hello"
    t0 = time.monotonic()
    s.signal(sig)
    for i, ws in enumerate(clients):
        await asyncio.wait_for(ws.wait_closed(), 5 * MULT)
        assert ws.close_code == code, f"client {i}: close code {ws.close_code}, expected {code}"
    rc = await asyncio.get_running_loop().run_in_executor(None, s.wait, 5)
    dt = time.monotonic() - t0
    assert rc == 0, f"exit status {rc} after {sig!r}; log tail:\n{s.log()[-2000:]}"
    assert dt < 2.0 * MULT, f"shutdown took {dt:.2f}s with every peer answering"
    # nothing listens any more
    with pytest.raises(OSError):
        wsraw.Conn("127.0.0.1", s.port, timeout=1).close()


def test_sigterm_with_unresponsive_peer_exits_after_close_timeout(wshub):
    s = wshub("--echo", "--close-timeout", 1, expect_stopped=True)
    silent = wsraw.ws_connect(s.port)  # gets the close, never answers
    polite = wsraw.ws_connect(s.port)
    handshaking = wsraw.Conn("127.0.0.1", s.port)  # never finishes its request
    handshaking.send(b"GET /echo HTTP/1.1\r\n")
    try:
        t0 = time.monotonic()
        s.signal(signal.SIGTERM)
        f, _ = polite.wait_close(5)
        assert f.close_code() == 1012
        polite.send_close(1012)
        assert polite.wait_eof(3), "server did not close TCP after the close handshake"
        f, _ = silent.wait_close(5)
        assert f.close_code() == 1012
        rc = s.wait(6)
        dt = time.monotonic() - t0
        assert rc == 0, f"exit status {rc}; log tail:\n{s.log()[-2000:]}"
        assert dt <= 1.0 + 2.0 * MULT, f"exit after {dt:.2f}s with close-timeout 1s"
        assert silent.wait_eof(1) in ("eof", "reset")
        assert handshaking.wait_eof(1) in ("eof", "reset")
    finally:
        for c in (silent, polite, handshaking):
            c.close()


def test_sigterm_idle_server_exits_0(wshub):
    s = wshub("--workers", 2, expect_stopped=True)
    assert s.healthz().status == 200
    s.signal(signal.SIGTERM)
    rc = s.wait(5)
    assert rc == 0, f"exit status {rc}"
