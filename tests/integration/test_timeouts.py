"""Deadlines and back-pressure: handshake deadline, keepalive (ping/pong)
timeout, slow reader cut off while other subscribers keep receiving."""

import asyncio
import os
import socket
import threading
import time

import websockets

from conftest import MULT, run_async, ws_uri
import wsraw


def test_handshake_deadline_silent_client(wshub):
    s = wshub("--echo", "--handshake-timeout", 0.5)
    c = wsraw.Conn("127.0.0.1", s.port)
    try:
        t0 = time.monotonic()
        how = c.wait_eof(5)
        dt = time.monotonic() - t0
        assert how in ("eof", "reset"), "a silent client was not dropped"
        assert c.extra_bytes == 0, "dropped client must get no response"
        assert 0.3 <= dt <= 0.5 + 1.5 * MULT, f"dropped after {dt:.2f}s (deadline 0.5s)"
    finally:
        c.close()


def test_handshake_deadline_is_total_not_idle(wshub):
    """A client trickling its request (a slowloris) is dropped at the
    deadline counted from accept, even though it keeps sending."""
    s = wshub("--echo", "--handshake-timeout", 0.5)
    c = wsraw.Conn("127.0.0.1", s.port)
    try:
        t0 = time.monotonic()
        c.send(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        dropped = None
        for i in range(40):
            if not c.try_send(f"X-Slow-{i}: 1\r\n".encode()):
                dropped = time.monotonic() - t0
                break
            how = c.wait_eof(0.1 / MULT)
            if how:
                dropped = time.monotonic() - t0
                break
        assert dropped is not None, "trickling client never dropped"
        assert c.extra_bytes == 0, "dropped client must get no response"
        assert dropped <= 0.5 + 1.5 * MULT, f"dropped only after {dropped:.2f}s"
    finally:
        c.close()


def test_handshake_deadline_does_not_apply_after_upgrade(wshub):
    s = wshub("--echo", "--handshake-timeout", 0.5)
    c = wsraw.ws_connect(s.port)
    silent = wsraw.Conn("127.0.0.1", s.port)  # dropped meanwhile
    try:
        time.sleep(1.0)
        c.send_frame(wsraw.OP_TEXT, b"still open")
        assert c.recv_message() == (wsraw.OP_TEXT, b"still open")
        assert silent.wait_eof(2) in ("eof", "reset")
    finally:
        c.close()
        silent.close()


def test_ping_timeout_1011(wshub):
    s = wshub("--echo", "--ping-interval", 0.3, "--pong-timeout", 0.3)
    c = wsraw.ws_connect(s.port)
    try:
        t0 = time.monotonic()
        pings = []
        close = None
        deadline = time.monotonic() + 5 * MULT
        while time.monotonic() < deadline:
            f = c.recv_frame(5)  # never answer pings
            if f.opcode == wsraw.OP_PING:
                pings.append(time.monotonic() - t0)
                continue
            if f.opcode == wsraw.OP_CLOSE:
                close = f
                break
            raise AssertionError(f"unexpected frame {f!r}")
        dt = time.monotonic() - t0
        assert pings, "server never pinged"
        assert close is not None, "no close frame"
        assert close.close_code() == 1011, f"close code {close.close_code()}"
        assert dt <= 0.6 + 1.5 * MULT, f"closed after {dt:.2f}s"
        assert dt >= 0.5, f"closed too early ({dt:.2f}s): ping at {pings[0]:.2f}s"
        c.send_close(1011)
        assert c.wait_eof(3), "server did not close TCP after 1011"
    finally:
        c.close()


@run_async
async def test_answering_client_survives_pings(wshub):
    s = wshub("--echo", "--ping-interval", 0.3, "--pong-timeout", 0.3)
    async with websockets.connect(ws_uri(s), ping_interval=None, compression=None) as ws:
        # websockets answers pings automatically
        for i in range(6):
            await asyncio.sleep(0.25)
            await ws.send(f"tick {i}")
            assert await asyncio.wait_for(ws.recv(), 5 * MULT) == f"tick {i}"
        assert ws.open


def test_raw_client_answering_pings_survives(wshub):
    s = wshub("--echo", "--ping-interval", 0.2, "--pong-timeout", 0.3)
    c = wsraw.ws_connect(s.port)
    try:
        t_end = time.monotonic() + 1.5
        npings = 0
        while time.monotonic() < t_end:
            try:
                f = c.recv_frame(0.5)
            except wsraw.ReadTimeout:
                continue
            assert f.opcode == wsraw.OP_PING, f"unexpected {f!r}"
            npings += 1
            c.send_frame(wsraw.OP_PONG, f.payload)
        assert npings >= 3, f"only {npings} pings in 1.5s with interval 0.2s"
        c.send_frame(wsraw.OP_TEXT, b"alive")
        assert c.recv_message(answer_pings=True) == (wsraw.OP_TEXT, b"alive")
    finally:
        c.close()


def test_slow_reader_cut_off_other_keeps_receiving(wshub):
    """A /raw subscriber that never reads is cut off (1008) once its queue
    passes --max-queue; a subscriber that keeps up receives every message.
    The publisher is paced by the healthy reader (at most WINDOW messages
    ahead of it), so only the never-reading one can fall behind."""
    max_queue = 65536
    s = wshub("--workers", 2, "--max-queue", max_queue, "--max-message", 65536)
    # the slow subscriber: tiny receive buffer, never reads
    slow = wsraw.ws_connect(s.port, "/raw/slow", rcvbuf=4096)
    fast = wsraw.ws_connect(s.port, "/raw/slow")
    pub = wsraw.ws_connect(s.port, "/raw/slow")
    time.sleep(0.1)
    n_msgs = 600
    size = 16384
    window = 2  # 32 KiB in flight to the healthy reader: half the queue limit
    got = []
    errors = []
    progress = threading.Condition()

    def reader():
        try:
            while len(got) < n_msgs:
                m = fast.recv_message(timeout=20, answer_pings=True)
                if not isinstance(m, tuple):
                    errors.append(f"healthy reader got a close {m!r} after {len(got)} messages")
                    return
                with progress:
                    got.append(m[1])
                    progress.notify()
        except Exception as e:  # noqa: BLE001
            errors.append(f"healthy reader after {len(got)} messages: {type(e).__name__}: {e}")
        finally:
            with progress:
                progress.notify()

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    try:
        sent = []
        for i in range(n_msgs):
            with progress:
                ok = progress.wait_for(lambda: len(got) >= i - window or errors or
                                       not th.is_alive(), 20 * MULT)
            if errors or not ok or not th.is_alive():
                break
            p = i.to_bytes(4, "big") + os.urandom(size - 4)
            sent.append(p)
            pub.send_frame(wsraw.OP_BINARY, p)
        th.join(30 * MULT)
        assert not errors, errors
        assert not th.is_alive(), f"healthy reader stuck after {len(got)} of {n_msgs}"
        assert len(got) == n_msgs
        for i, (a, b) in enumerate(zip(got, sent)):
            assert a == b, f"healthy subscriber: message {i} wrong (lost or reordered)"
        # the slow one must have been cut off: drain what the kernel buffered
        # and find the end of the connection (a 1008 close, then EOF)
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        n_data = 0
        close = None
        how = None
        deadline = time.monotonic() + 10 * MULT
        try:
            while time.monotonic() < deadline:
                f = slow.recv_frame(5)
                if f.opcode == wsraw.OP_CLOSE:
                    close = f
                    break
                if f.opcode in (wsraw.OP_BINARY, wsraw.OP_TEXT, wsraw.OP_CONT):
                    n_data += 1
        except wsraw.PeerClosed as e:
            how = e.how
        except wsraw.ReadTimeout:
            how = None
        assert close is not None or how is not None, (
            f"slow reader was not cut off (read {n_data} of {n_msgs} messages, connection open)")
        assert n_data < n_msgs, "slow reader got everything: it was never cut off"
        if close is None:
            raise AssertionError(
                f"slow reader: TCP closed ({how}) after {n_data} messages without a 1008 close frame")
        assert close.close_code() == 1008, f"slow reader closed with {close.close_code()}"
        assert slow.wait_eof(5), "server did not close TCP to the slow reader"
        # publisher and healthy reader unaffected
        pub.send_frame(wsraw.OP_TEXT, b"after")
        m = fast.recv_message(timeout=5, answer_pings=True)
        assert m == (wsraw.OP_TEXT, b"after"), m
    finally:
        for c in (slow, fast, pub):
            c.close()


def test_one_big_message_may_pass_the_queue_limit(wshub):
    """A single message larger than --max-queue (but within --max-message)
    reaches a subscriber that reads: only a backlog of several is cut."""
    s = wshub("--workers", 2, "--max-queue", 65536, "--max-message", 1048576)
    sub = wsraw.ws_connect(s.port, "/raw/bigone")
    pub = wsraw.ws_connect(s.port, "/raw/bigone")
    time.sleep(0.1)
    try:
        for i in range(3):
            p = bytes([i]) * 1048576
            pub.send_frame(wsraw.OP_BINARY, p)
            m = sub.recv_message(timeout=10)
            assert isinstance(m, tuple), f"message {i}: subscriber got {m!r}"
            assert m == (wsraw.OP_BINARY, p), f"message {i} differs"
    finally:
        sub.close()
        pub.close()
