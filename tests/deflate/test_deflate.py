"""permessage-deflate (RFC 7692) integration tests: wshub --deflate driven by
Python `websockets` 10.4 (ClientPerMessageDeflateFactory with various
parameters) and by raw sockets (tests/conformance/pmdraw.py: exact frames,
our own zlib deflater/inflater with the agreed parameters).

Each test starts its own server on 127.0.0.1:0 through the `wshub` fixture,
which at teardown requires it alive, answering a fresh client, without fd
leaks, and exiting 0 on SIGTERM.
"""

import asyncio
import os
import time
import zlib

import pytest
import websockets
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from conftest import MULT, run_async, ws_uri
import pmdraw
import wsraw
from pmdraw import RSV1
from wsraw import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, frame

MAX = 1048576
SIZES = [0, 1, 63, 64, 65, 125, 126, 127, 1000, 4096, 65535, 65536, 65537, 300000, MAX]
DEFAULT_OFFER = dict(cmwb=True)


def connect(server, path="/echo", factory=None, **kw):
    kw.setdefault("max_size", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("close_timeout", 5 * MULT)
    if factory is not None:
        kw["extensions"] = [factory]
        kw["compression"] = None
    return websockets.connect(ws_uri(server, path), **kw)


async def recv(ws, timeout=20):
    return await asyncio.wait_for(ws.recv(), timeout * MULT)


def text_of(n, seed=1):
    """Exactly n bytes of valid UTF-8 mixing ASCII and multibyte text, as str."""
    if n == 0:
        return ""
    return pmdraw.messages("utf8", n, 1, seed=seed)[0].decode()


def binary_of(n):
    """Half compressible, half random."""
    h = n // 2
    return (b"0123456789abcdef" * (h // 16 + 1))[:h] + os.urandom(n - h)


def raw_open(server, offer_kw=DEFAULT_OFFER, path="/echo"):
    """Raw-socket connection with one offer; returns (conn, Agreed|None)."""
    offers = [pmdraw.offer(**offer_kw)] if offer_kw is not None else []
    c, ans = pmdraw.connect(server.port, offers, path=path)
    a = pmdraw.validate_answer(ans, **offer_kw) if offer_kw is not None else None
    if offer_kw is not None and ans is not None:
        assert pmdraw.answer_tuple(a) == pmdraw.expected_answer(**offer_kw), ans
    return c, a


def vmrss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


# ---------------------------------------------------------------------------
# Python websockets


FACTORIES = [
    # (id, factory kwargs, expected (snct, cnct, smwb|None, cmwb) in the answer)
    ("default", dict(), (True, False, None, 10)),
    ("client_no_context_takeover", dict(client_no_context_takeover=True), (True, True, None, 10)),
    ("server_no_context_takeover", dict(server_no_context_takeover=True), (True, False, None, 10)),
    ("windows_9_9", dict(server_max_window_bits=9, client_max_window_bits=9), (True, False, 9, 9)),
    ("server_8_client_12", dict(server_max_window_bits=8, client_max_window_bits=12),
     (True, False, 8, 10)),
    ("windows_15_15_both_nct", dict(server_max_window_bits=15, client_max_window_bits=15,
                                    server_no_context_takeover=True,
                                    client_no_context_takeover=True), (True, True, 15, 10)),
]


@pytest.mark.parametrize("fkw,want", [(f[1], f[2]) for f in FACTORIES], ids=[f[0] for f in FACTORIES])
@run_async
async def test_websockets_compressed_echo_all_sizes(wshub, fkw, want):
    s = wshub("--echo", "--deflate", "--max-message", MAX)
    async with connect(s, factory=ClientPerMessageDeflateFactory(**fkw)) as ws:
        ans = ws.response_headers.get("Sec-WebSocket-Extensions")
        offered = dict(snct=fkw.get("server_no_context_takeover", False),
                       cnct=fkw.get("client_no_context_takeover", False),
                       smwb=fkw.get("server_max_window_bits"),
                       cmwb=fkw.get("client_max_window_bits", True))
        a = pmdraw.validate_answer(ans, **offered)
        assert a is not None, "offer declined"
        assert pmdraw.answer_tuple(a) == want, ans
        assert len(ws.extensions) == 1
        ext = ws.extensions[0]
        assert ext.remote_max_window_bits == (want[2] or 15)
        assert ext.local_max_window_bits == want[3]
        assert ext.remote_no_context_takeover is True
        for n in SIZES:
            t = text_of(n)
            await ws.send(t)
            got = await recv(ws)
            assert isinstance(got, str) and got == t, f"text of {n} bytes"
            b = binary_of(n)
            await ws.send(b)
            got = await recv(ws)
            assert isinstance(got, bytes) and got == b, f"binary of {n} bytes"
        # a stream of similar messages (client context takeover, when on)
        msgs = pmdraw.messages("json", 5000, 200)
        for m in msgs:
            await ws.send(m)
        for i, m in enumerate(msgs):
            assert await recv(ws) == m, f"stream message {i}"


@run_async
async def test_websockets_fragmented_compressed(wshub):
    """websockets sends an iterable as one fragmented message: each
    fragment compressed with a sync flush, RSV1 on the first only."""
    s = wshub("--echo", "--deflate", "--max-message", MAX)
    async with connect(s, factory=ClientPerMessageDeflateFactory()) as ws:
        assert ws.extensions, "not negotiated"
        for sizes in ([1, 1, 1], [100, 0, 5000, 7], [65536] * 8, [3] * 300):
            parts = [text_of(n, seed=i) for i, n in enumerate(sizes)]
            await ws.send(iter(parts))
            assert await recv(ws) == "".join(parts)
            bparts = [binary_of(n) for n in sizes]
            await ws.send(iter(bparts))
            assert await recv(ws) == b"".join(bparts)


@run_async
async def test_websockets_without_client_max_window_bits_is_declined(wshub):
    """Policy: an offer without client_max_window_bits is declined (we
    could not bound the client's window); the connection is uncompressed."""
    s = wshub("--echo", "--deflate")
    async with connect(s, factory=ClientPerMessageDeflateFactory(client_max_window_bits=None)) as ws:
        assert ws.response_headers.get("Sec-WebSocket-Extensions") is None
        assert ws.extensions == []
        for n in (0, 100, 60000):
            t = text_of(n)
            await ws.send(t)
            assert await recv(ws) == t


@run_async
async def test_server_without_deflate_ignores_offers(wshub):
    s = wshub("--echo")
    async with connect(s) as ws:  # websockets' default offer (compression="deflate")
        assert ws.response_headers.get("Sec-WebSocket-Extensions") is None
        assert ws.extensions == []
        t = text_of(5000)
        await ws.send(t)
        assert await recv(ws) == t
    for o in ([pmdraw.offer(cmwb=True)], [pmdraw.offer(snct=True, cnct=True, smwb=9, cmwb=9)],
              ["permessage-deflate; bogus"], ["x-webkit-deflate-frame"]):
        c, ans = pmdraw.connect(s.port, o)
        try:
            assert ans is None, f"{o} -> {ans}"
            p = pmdraw.messages("ascii", 500, 1)[0]
            c.send(frame(OP_TEXT, p))
            pmdraw.expect_echo(c, None, OP_TEXT, p)
            # and RSV1 is a protocol error on this connection
            c.send(pmdraw.data_frames(p, OP_TEXT, pmdraw.Deflater(pmdraw.Agreed(cmwb=10))))
            pmdraw.expect_close(c, 1002)
        finally:
            c.close()


# ---------------------------------------------------------------------------
# raw sockets: exact frames


def test_raw_compressed_echo_text_binary_sizes(wshub):
    """Every size 0..max compressed by us; the echo is compressed iff >= 64
    bytes, inflates with the agreed window, and matches exactly."""
    s = wshub("--echo", "--deflate", "--max-message", MAX)
    for kw in (dict(cmwb=True), dict(cnct=True, smwb=9, cmwb=8), dict(snct=True, smwb=12, cmwb=15)):
        c, a = raw_open(s, kw)
        try:
            d, inf = pmdraw.Deflater(a), pmdraw.Inflater(a)
            for n in SIZES:
                t = text_of(n).encode()
                c.send(pmdraw.data_frames(t, OP_TEXT, d))
                pmdraw.expect_echo(c, inf, OP_TEXT, t, timeout=20)
                b = binary_of(n)
                c.send(pmdraw.data_frames(b, OP_BINARY, d))
                pmdraw.expect_echo(c, inf, OP_BINARY, b, timeout=20)
            pmdraw.close_clean(c)
        finally:
            c.close()


def test_raw_fragmented_compressed_messages(wshub):
    """RSV1 on the first frame only; continuation frames without it; empty
    fragments; fragments of one byte; a ping between fragments."""
    s = wshub("--echo", "--deflate", "--max-message", MAX, "--max-fragments", 100000)
    c, a = raw_open(s)
    try:
        d, inf = pmdraw.Deflater(a), pmdraw.Inflater(a)
        for n, frag in ((200, 1), (5000, [0, 17, 1, 300]), (100000, 1000), (300000, [65536, 3]),
                        (64, 2), (0, 1)):
            p = pmdraw.messages("json", n, 1)[0] if n else b""
            c.send(pmdraw.data_frames(p, OP_TEXT, d, frag=frag))
            pmdraw.expect_echo(c, inf, OP_TEXT, p, timeout=20)
            b = binary_of(n)
            c.send(pmdraw.data_frames(b, OP_BINARY, d, frag=frag))
            pmdraw.expect_echo(c, inf, OP_BINARY, b, timeout=20)
        # a ping between the fragments of a compressed message
        p = pmdraw.messages("utf8", 3000, 1)[0]
        wire = d.compress(p)
        h = len(wire) // 2
        c.send(frame(OP_TEXT, wire[:h], fin=False, rsv=RSV1) + frame(OP_PING, b"mid")
               + frame(OP_CONT, wire[h:]))
        pmdraw.expect_echo(c, inf, OP_TEXT, p)
        assert [f.payload for f in c.pongs] == [b"mid"]
        pmdraw.close_clean(c)
    finally:
        c.close()


def test_raw_window_kept_across_a_final_block(wshub):
    """RFC 7692 7.2.3.4 lets a sender end a message's deflate stream with
    a BFINAL block; without client_no_context_takeover the next message
    may still refer back into the bytes before (7.2.2: the receiver keeps
    the window). Messages 2 and 3 here are compressed against message 1
    (and 2) as their dictionary: back-references only a kept window
    resolves. With client_no_context_takeover agreed, nothing refers back,
    and a final block changes nothing."""
    import zlib
    s = wshub("--echo", "--deflate")
    c, a = raw_open(s)
    try:
        assert not a.cnct
        wbits = max(9, a.cmwb)
        inf = pmdraw.Inflater(a)
        m1 = b"The quick brown fox jumps over the lazy dog. " * 3
        m2 = b"The quick brown fox jumps over the lazy dog. again"
        m3 = b"jumps over the lazy dog. again, and again"
        z = zlib.compressobj(6, zlib.DEFLATED, -wbits)
        z1 = z.compress(m1) + z.flush(zlib.Z_FINISH)  # ends with BFINAL
        z = zlib.compressobj(6, zlib.DEFLATED, -wbits, zdict=m1)
        z2 = z.compress(m2) + z.flush(zlib.Z_FINISH)  # BFINAL again
        z = zlib.compressobj(6, zlib.DEFLATED, -wbits, zdict=m1 + m2)
        z3 = (z.compress(m3) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]
        assert len(z2) < len(m2) // 2 and len(z3) < len(m3) // 2, "no back-references"
        for wire, text in ((z1, m1), (z2, m2), (z3, m3)):
            c.send(frame(OP_TEXT, wire, rsv=RSV1))
            pmdraw.expect_echo(c, inf, OP_TEXT, text)
        pmdraw.close_clean(c)
    finally:
        c.close()
    # Within one message the window goes on past a final block whatever
    # was agreed: here with client_no_context_takeover, one message of a
    # final block and then blocks that refer back into it.
    c, a = raw_open(s, dict(cmwb=True, cnct=True))
    try:
        assert a.cnct
        wbits, inf = max(9, a.cmwb), pmdraw.Inflater(a)
        z = zlib.compressobj(6, zlib.DEFLATED, -wbits, zdict=m1)
        z2 = (z.compress(m2) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]
        for _ in range(2):  # and the next message is a stream of its own
            c.send(frame(OP_TEXT, z1, fin=False, rsv=RSV1) + frame(OP_CONT, z2))
            pmdraw.expect_echo(c, inf, OP_TEXT, m1 + m2)
        pmdraw.close_clean(c)
    finally:
        c.close()


def test_raw_uncompressed_message_on_compressed_connection(wshub):
    """RSV1 is optional per message: an uncompressed message still echoes
    (compressed back when >= 64 bytes), interleaved with compressed ones,
    also fragmented, and with context takeover kept across them."""
    s = wshub("--echo", "--deflate")
    c, a = raw_open(s)
    try:
        d, inf = pmdraw.Deflater(a), pmdraw.Inflater(a)
        msgs = pmdraw.messages("ascii", 2000, 6) + [b"tiny", b"x" * 64, b""]
        for i, m in enumerate(msgs):
            if i % 2:
                c.send(frame(OP_TEXT, m))
            else:
                c.send(pmdraw.data_frames(m, OP_TEXT, d))
            pmdraw.expect_echo(c, inf, OP_TEXT, m)
        p = pmdraw.messages("repetitive", 9000, 1)[0]
        c.send(frame(OP_TEXT, p[:10], fin=False) + frame(OP_CONT, p[10:5000], fin=False)
               + frame(OP_CONT, p[5000:]))
        pmdraw.expect_echo(c, inf, OP_TEXT, p)
        c.send(frame(OP_BINARY, b"\x00\x01\x02"))
        pmdraw.expect_echo(c, inf, OP_BINARY, b"\x00\x01\x02")
        # compressed again, referring back to the first compressed message
        c.send(pmdraw.data_frames(msgs[0], OP_TEXT, d))
        pmdraw.expect_echo(c, inf, OP_TEXT, msgs[0])
        pmdraw.close_clean(c)
    finally:
        c.close()


@pytest.mark.parametrize("what", ["ping", "pong", "close", "ping_mid_message"])
def test_raw_rsv1_on_control_frame_is_1002(wshub, what):
    s = wshub("--echo", "--deflate")
    c, a = raw_open(s)
    try:
        d, inf = pmdraw.Deflater(a), pmdraw.Inflater(a)
        p = pmdraw.messages("ascii", 500, 1)[0]
        c.send(pmdraw.data_frames(p, OP_TEXT, d))
        pmdraw.expect_echo(c, inf, OP_TEXT, p)
        if what == "ping":
            c.send(frame(OP_PING, b"x", rsv=RSV1))
        elif what == "pong":
            c.send(frame(OP_PONG, b"x", rsv=RSV1))
        elif what == "close":
            c.send(frame(OP_CLOSE, wsraw.close_payload(1000), rsv=RSV1))
        else:
            wire = d.compress(p)
            c.send(frame(OP_TEXT, wire[:10], fin=False, rsv=RSV1) + frame(OP_PING, b"", rsv=RSV1))
        seen = pmdraw.expect_close(c, 1002)
        assert seen == [], f"data before the close: {seen!r}"
    finally:
        c.close()


@pytest.mark.parametrize("first_compressed", [True, False])
def test_raw_rsv1_on_continuation_is_1002(wshub, first_compressed):
    s = wshub("--echo", "--deflate")
    c, a = raw_open(s)
    try:
        d = pmdraw.Deflater(a)
        p = pmdraw.messages("ascii", 3000, 1)[0]
        wire = d.compress(p) if first_compressed else p
        h = len(wire) // 2
        c.send(frame(OP_TEXT, wire[:h], fin=False, rsv=RSV1 if first_compressed else 0)
               + frame(OP_CONT, wire[h:], rsv=RSV1))
        seen = pmdraw.expect_close(c, 1002)
        assert seen == [], f"data before the close: {seen!r}"
    finally:
        c.close()


@pytest.mark.parametrize("how", ["no_offer", "declined_offer", "invalid_offer"])
def test_raw_rsv1_without_negotiation_is_1002(wshub, how):
    s = wshub("--echo", "--deflate")
    offers = {"no_offer": [], "declined_offer": ["permessage-deflate"],
              "invalid_offer": ["permessage-deflate; client_max_window_bits=16"]}[how]
    c, ans = pmdraw.connect(s.port, offers)
    try:
        assert ans is None, ans
        p = pmdraw.messages("ascii", 300, 1)[0]
        c.send(frame(OP_TEXT, p))
        pmdraw.expect_echo(c, None, OP_TEXT, p)
        c.send(pmdraw.data_frames(p, OP_TEXT, pmdraw.Deflater(pmdraw.Agreed(cmwb=10))))
        assert pmdraw.expect_close(c, 1002) == []
    finally:
        c.close()


_BOMB = {}


def bomb(n=50 << 20, wbits=10):
    """n zeros, deflated (9-bit window: distance 1 is enough) and stripped."""
    key = (n, wbits)
    if key not in _BOMB:
        z = zlib.compressobj(9, zlib.DEFLATED, -wbits, 9)
        chunk = bytes(1 << 20)
        out = [z.compress(chunk) for _ in range(n >> 20)]
        out.append(z.flush(zlib.Z_SYNC_FLUSH))
        data = b"".join(out)
        assert data.endswith(pmdraw.TAIL)
        _BOMB[key] = data[:-4]
    return _BOMB[key]


def test_decompression_bomb_1009_memory_bounded(wshub):
    """50 MiB of zeros compressed to ~50 KiB, against --max-message 65536:
    close 1009 on each of several connections at once (one frame and
    fragmented, text and binary), the server answers other clients
    meanwhile, and its RSS is back near the baseline afterwards."""
    s = wshub("--echo", "--deflate", "--max-message", 65536, "--workers", 2)
    payload = bomb()
    assert len(payload) < 65536, len(payload)  # passes the frame-size check
    # warm up: compressed echoes on both workers, so zlib and buffers are in
    # the baseline
    for _ in range(4):
        c, a = raw_open(s)
        d, inf = pmdraw.Deflater(a), pmdraw.Inflater(a)
        for m in pmdraw.messages("binary", 60000, 3):
            c.send(pmdraw.data_frames(m, OP_BINARY, d))
            pmdraw.expect_echo(c, inf, OP_BINARY, m)
        pmdraw.close_clean(c)
        c.close()
    time.sleep(0.2)
    base = vmrss_kib(s.pid)
    peak = base
    watcher, wa = raw_open(s)
    wd, winf = pmdraw.Deflater(wa), pmdraw.Inflater(wa)
    try:
        for rnd in range(3):
            conns = []
            for i in range(8):
                c, a = raw_open(s, dict(cmwb=True) if i % 2 else dict(cnct=True, cmwb=9))
                conns.append(c)
            for i, c in enumerate(conns):
                op = OP_TEXT if i % 2 else OP_BINARY
                if i % 4 < 2:
                    c.send(frame(op, payload, rsv=RSV1))
                else:
                    parts = [payload[j:j + 4096] for j in range(0, len(payload), 4096)]
                    c.send(b"".join(frame(op if j == 0 else OP_CONT, p, fin=(j == len(parts) - 1),
                                          rsv=RSV1 if j == 0 else 0) for j, p in enumerate(parts)))
            # the server stays responsive meanwhile
            m = pmdraw.messages("ascii", 1000, 1, seed=rnd)[0]
            watcher.send(pmdraw.data_frames(m, OP_TEXT, wd))
            pmdraw.expect_echo(watcher, winf, OP_TEXT, m)
            peak = max(peak, vmrss_kib(s.pid))
            for i, c in enumerate(conns):
                seen = pmdraw.expect_close(c, 1009, timeout=10)
                assert seen == [], f"bomb {i}: data before the close {seen[:1]!r}"
                c.close()
            peak = max(peak, vmrss_kib(s.pid))
        time.sleep(0.3)
        after = vmrss_kib(s.pid)
        print(f"RSS base {base} KiB, peak {peak} KiB, after {after} KiB")
        # 8 concurrent bombs may each hold max_message + a 16 KiB chunk while
        # inflating; 50 MiB each would be 400 MiB
        assert peak - base < 24 * 1024, f"RSS peaked at {peak} KiB from a {base} KiB baseline"
        # a few MB of slack for malloc; under the sanitizers (MULT > 1) ASan's
        # quarantine keeps freed blocks resident for a while, so more
        slack = 4 * 1024 if MULT <= 1 else 12 * 1024
        assert after - base < slack, (f"RSS {after} KiB after the bombs, {base} KiB before "
                                      f"(peak {peak})")
        # still serving compressed traffic on the old and on new connections
        m = pmdraw.messages("json", 30000, 1)[0]
        watcher.send(pmdraw.data_frames(m, OP_TEXT, wd))
        pmdraw.expect_echo(watcher, winf, OP_TEXT, m)
        pmdraw.close_clean(watcher)
    finally:
        watcher.close()
    assert s.alive()


def test_bomb_just_over_and_at_the_limit(wshub):
    """The limit is on the inflated size: exactly max-message inflated is
    fine, one byte more is 1009 (as is the uncompressed limit)."""
    lim = 65536
    s = wshub("--echo", "--deflate", "--max-message", lim)
    for n, want in ((lim, None), (lim + 1, 1009), (lim * 4, 1009)):
        for op in (OP_BINARY, OP_TEXT):
            c, a = raw_open(s)
            try:
                p = (b"a" * n)
                c.send(pmdraw.data_frames(p, op, pmdraw.Deflater(a)))
                if want is None:
                    pmdraw.expect_echo(c, pmdraw.Inflater(a), op, p)
                    pmdraw.close_clean(c)
                else:
                    assert pmdraw.expect_close(c, want) == []
            finally:
                c.close()


def test_uncompressed_message_on_compressed_connection_has_the_plain_limit(wshub):
    """The allowance a compressed message has on the wire (deflate can grow
    what it cannot compress) is for compressed messages only: a plain one
    on a deflate connection is held to --max-message itself, whole or in
    fragments, as on any other connection. (It was given the allowance,
    and 500 bytes over the limit were echoed.)"""
    lim = 65536
    s = wshub("--echo", "--deflate", "--max-message", lim)
    for frames in ([frame(OP_BINARY, b"b" * (lim + 500))],
                   [frame(OP_BINARY, b"b" * lim, fin=False), frame(OP_CONT, b"c" * 500)]):
        c, a = raw_open(s)
        try:
            c.send(b"".join(frames))
            assert pmdraw.expect_close(c, 1009) == []
        finally:
            c.close()
    c, a = raw_open(s)
    try:
        c.send(frame(OP_BINARY, b"b" * lim))  # at the limit: echoed
        pmdraw.expect_echo(c, pmdraw.Inflater(a), OP_BINARY, b"b" * lim)
        pmdraw.close_clean(c)
    finally:
        c.close()


def _corrupt_cases():
    z = zlib.compressobj(6, zlib.DEFLATED, -10)
    good = z.compress(b"hello hello hello hello world" * 20) + z.flush(zlib.Z_SYNC_FLUSH)
    good = good[:-4]
    zd = zlib.compressobj(6, zlib.DEFLATED, -10, 8, zlib.Z_DEFAULT_STRATEGY, b"hello world " * 10)
    dist = zd.compress(b"hello world hello world") + zd.flush(zlib.Z_SYNC_FLUSH)
    zf = zlib.compressobj(6, zlib.DEFLATED, -10)
    final = zf.compress(b"final block then more") + zf.flush(zlib.Z_FINISH)
    return [
        ("reserved_block_type", b"\x07\xff\xff\xff"),  # BFINAL=1 BTYPE=11
        ("garbage", bytes(range(0xF0, 0x100)) * 8),
        ("stored_len_mismatch", b"\x00\x05\x00\x00\x00hello"),  # NLEN != ~LEN
        ("distance_before_start", dist[:-4]),  # refers to a preset dictionary we never sent
        ("truncated_mid_block", good[:len(good) // 2]),
        # (0xff after the final block is itself invalid: BTYPE=11)
        ("garbage_after_final_block", final + b"\xff\xff\xff"),
        ("trailer_not_stripped", good + pmdraw.TAIL),
    ]


@pytest.mark.parametrize("name,data", _corrupt_cases(), ids=[c[0] for c in _corrupt_cases()])
def test_corrupt_deflate_data_is_1002(wshub, name, data):
    s = wshub("--echo", "--deflate")
    for fragmented in (False, True):
        c, a = raw_open(s)
        try:
            if fragmented:
                h = max(1, len(data) // 2)
                c.send(frame(OP_BINARY, data[:h], fin=False, rsv=RSV1) + frame(OP_CONT, data[h:]))
            else:
                c.send(frame(OP_BINARY, data, rsv=RSV1))
            assert pmdraw.expect_close(c, 1002) == []
        finally:
            c.close()


def test_distance_before_start_is_really_corrupt():
    """Self-check of a corrupt case above: zlib rejects it too."""
    for name, data in _corrupt_cases():
        if name == "trailer_not_stripped":
            continue  # inflates; the server must still reject an unaligned end
        z = zlib.decompressobj(-15)
        try:
            z.decompress(data + pmdraw.TAIL)
            bad = bool(z.unused_data) or (not z.eof and name == "truncated_mid_block")
        except zlib.error:
            bad = True
        if name == "truncated_mid_block":
            continue  # zlib just waits for more input; the server knows the message ended
        assert bad, name


@pytest.mark.parametrize("how", ["one_frame", "split_sequence", "truncated_at_end", "late",
                                 "overlong", "surrogate"])
def test_invalid_utf8_inside_compressed_text_is_1007(wshub, how):
    s = wshub("--echo", "--deflate")
    c, a = raw_open(s)
    try:
        d, inf = pmdraw.Deflater(a), pmdraw.Inflater(a)
        good = pmdraw.messages("utf8", 2000, 1)[0]
        c.send(pmdraw.data_frames(good, OP_TEXT, d))
        pmdraw.expect_echo(c, inf, OP_TEXT, good)
        if how == "one_frame":
            c.send(pmdraw.data_frames(b"abc\xff" + good, OP_TEXT, d))
        elif how == "split_sequence":
            # "é" = c3 a9 split across two compressed fragments, then a bad byte
            z1 = d.z.compress(good + b"\xc3") + d.z.flush(zlib.Z_SYNC_FLUSH)
            z2 = d.z.compress(b"\xa9 ok \xc3\x28") + d.z.flush(zlib.Z_SYNC_FLUSH)
            c.send(frame(OP_TEXT, z1, fin=False, rsv=RSV1) + frame(OP_CONT, z2[:-4]))
        elif how == "truncated_at_end":
            c.send(pmdraw.data_frames(good + b"\xe2\x82", OP_TEXT, d))
        elif how == "late":
            c.send(pmdraw.data_frames(good * 30 + b"\xed\xa0\x80", OP_TEXT, d, frag=997))
        elif how == "overlong":
            c.send(pmdraw.data_frames(b"\xc0\xaf" * 100, OP_TEXT, d))
        else:
            c.send(pmdraw.data_frames(b"x" * 100 + b"\xed\xbf\xbf", OP_TEXT, d))
        assert pmdraw.expect_close(c, 1007) == []
    finally:
        c.close()


def test_raw_fanout_compressed_and_uncompressed_subscribers(wshub):
    """/raw/<channel> fan-out over 2 workers to subscribers with different
    windows and without deflate: each receives each message exactly
    (compressed iff it negotiated deflate and the message is >= 64 bytes,
    inflating with ITS agreed window); publishers compressed or not."""
    s = wshub("--workers", 2, "--deflate", "--max-message", MAX, "--max-queue", 32 << 20)
    kinds = [dict(cmwb=True), dict(smwb=9, cmwb=9), dict(smwb=12, cmwb=True, cnct=True),
             dict(smwb=8, cmwb=8), None, None, dict(snct=True, smwb=15, cmwb=10)]
    subs = []
    try:
        for i in range(14):
            kw = kinds[i % len(kinds)]
            c, a = raw_open(s, kw, path="/raw/mix")
            subs.append((c, a))
        time.sleep(0.2)
        msgs = [(OP_TEXT, b"hi"), (OP_TEXT, pmdraw.messages("utf8", 64, 1)[0]),
                (OP_BINARY, binary_of(5000)), (OP_TEXT, pmdraw.messages("json", 100000, 1)[0]),
                (OP_BINARY, b""), (OP_BINARY, os.urandom(70000)),
                (OP_TEXT, pmdraw.messages("repetitive", 300000, 1)[0])]
        # publishers: subscriber 0 (compressed) and subscriber 4 (uncompressed)
        sent = []
        for j, (op, m) in enumerate(msgs):
            pub = 0 if j % 2 == 0 else 4
            c, a = subs[pub]
            d = pmdraw.Deflater(a) if a is not None else None
            c.send(pmdraw.data_frames(m, op, d, frag=[30000, 7]))
            sent.append((pub, op, m))
            # wait for this message everywhere before the next (per-sender
            # order is kept, across two senders it is not)
            for i, (sc, sa) in enumerate(subs):
                if i == pub:
                    continue
                inf = pmdraw.Inflater(sa) if sa is not None else None
                try:
                    pmdraw.expect_echo(sc, inf, op, m, timeout=20)
                except AssertionError as e:
                    raise AssertionError(f"subscriber {i} ({kinds[i % len(kinds)]}), message {j} "
                                         f"({len(m)} B): {e}") from None
        # the senders got nothing back
        for pub in (0, 4):
            try:
                f = subs[pub][0].recv_frame(0.2)
                raise AssertionError(f"publisher {pub} received {f!r}")
            except wsraw.ReadTimeout:
                pass
        for c, _ in subs:
            pmdraw.close_clean(c)
    finally:
        for c, _ in subs:
            c.close()


@run_async
async def test_websockets_fanout_mixed_clients(wshub):
    """The same with Python websockets clients: compressed with different
    windows and uncompressed, every one publishing."""
    s = wshub("--workers", 2, "--deflate", "--max-message", MAX, "--max-queue", 32 << 20)
    factories = [ClientPerMessageDeflateFactory(), None,
                 ClientPerMessageDeflateFactory(server_max_window_bits=9, client_max_window_bits=9),
                 ClientPerMessageDeflateFactory(client_no_context_takeover=True)]
    clients = []
    try:
        for i in range(8):
            f = factories[i % len(factories)]
            if f is None:
                clients.append(await connect(s, "/raw/py", compression=None))
            else:
                clients.append(await connect(s, "/raw/py", factory=f))
        await asyncio.sleep(0.2)
        sent = []
        for i, ws in enumerate(clients):
            m = text_of(10 + 3000 * i, seed=i) if i % 2 else binary_of(20000 * i + 1)
            sent.append(m)
            await ws.send(m)
        for j, ws in enumerate(clients):
            got = [await recv(ws) for _ in range(len(clients) - 1)]
            want = [m for i, m in enumerate(sent) if i != j]
            key = lambda m: (type(m).__name__, m if isinstance(m, bytes) else m.encode())  # noqa: E731
            assert sorted(got, key=key) == sorted(want, key=key), f"client {j}"
    finally:
        for ws in clients:
            await ws.close()
