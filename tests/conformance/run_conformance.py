#!/usr/bin/python3
"""wshub conformance suite: the Autobahn|Testsuite case families (sections
1-7, 9 and 10 of shared/CONFORMANCE.md) re-expressed as a table of cases,
each driven over a raw socket with the strict expectation: exact echo bytes,
exact close code, and the SERVER closes the TCP connection.

Usage: run_conformance.py [--bin WSHUB] [--report report.json] [--jobs N]
                          [--filter REGEX] [--port PORT (use a running server)]
Prints 'N passed, N failed' and exits 1 if any case failed.
"""

import os
import struct
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wsraw  # noqa: E402
from wsraw import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG,  # noqa: E402
                   OP_TEXT, PeerClosed, ReadTimeout, frame, close_payload)

SERVER_ARGS = ["--echo", "--max-message", "16777216", "--max-fragments", "262144"]

T = 2.0          # wait for an expected frame (small cases)
T_BIG = 30.0     # wait for a big echo
T_EOF = 2.0      # server must close TCP this soon after the close handshake
T_EOF_FAILED = 6.0  # after failing mid-frame (no close reply possible): close timeout + 1


class CaseFail(AssertionError):
    pass


def fail(msg):
    raise CaseFail(msg)


# ---------------------------------------------------------------------------
# expectations


def check_server_frame(f):
    if f.masked:
        fail(f"server sent a masked frame: {f!r}")
    if f.rsv:
        fail(f"server set RSV bits without an extension: {f!r}")


def recv_frame(c, timeout=T):
    try:
        f = c.recv_frame(timeout)
    except ReadTimeout:
        fail(f"no frame within {timeout}s")
    except PeerClosed as e:
        fail(f"server closed TCP ({e.how}) while a frame was expected")
    check_server_frame(f)
    return f


def describe_diff(got, want):
    if len(got) != len(want):
        return f"length {len(got)} != expected {len(want)}"
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return f"first difference at byte {i}: {a:#x} != {b:#x}"
    return "equal"


def expect_echo(c, op, payload, timeout=T, allow_pongs=False):
    """Read one whole data message and require it equals (op, payload)."""
    parts = []
    mop = None
    deadline = time.monotonic() + timeout * wsraw.MULT
    while True:
        f = recv_frame(c, max(0.001, deadline - time.monotonic()) / wsraw.MULT)
        if f.opcode == OP_PONG and allow_pongs:
            c.pongs.append(f)
            continue
        if f.opcode == OP_CLOSE:
            fail(f"expected echo of {len(payload)} bytes op={op}, got close {f.close_code()} "
                 f"{f.payload[2:80]!r}")
        if f.opcode in (OP_PING, OP_PONG):
            fail(f"expected a data frame, got {f!r}")
        if mop is None:
            if f.opcode not in (OP_TEXT, OP_BINARY):
                fail(f"message starts with opcode {f.opcode}")
            mop = f.opcode
        elif f.opcode != OP_CONT:
            fail(f"expected continuation, got {f!r}")
        parts.append(f.payload)
        if f.fin:
            break
    got = b"".join(parts)
    if mop != op:
        fail(f"echo opcode {mop} != {op}")
    if got != payload:
        fail(f"echo differs: {describe_diff(got, payload)}")


def expect_pong(c, payload, timeout=T):
    f = recv_frame(c, timeout)
    if f.opcode != OP_PONG:
        fail(f"expected pong {payload[:20]!r}, got {f!r}")
    if f.payload != payload:
        fail(f"pong payload {f.payload[:40]!r} != ping payload {payload[:40]!r}")
    if not f.fin:
        fail("fragmented pong")


def expect_eof(c, timeout=T_EOF, what="after the close handshake"):
    t0 = time.monotonic()
    how = c.wait_eof(timeout)
    if how is None:
        fail(f"server did not close the TCP connection within {timeout}s {what}")
    if c.extra_bytes:
        fail(f"server sent {c.extra_bytes} more bytes after its close frame")
    return time.monotonic() - t0


def close_clean(c, code=1000, reason=b""):
    """We initiate a close with `code`; expect the same code back and the
    server to close TCP."""
    c.send_close(code, reason)
    expect_close_reply(c, code)


def expect_close_reply(c, want, timeout=T):
    try:
        f, seen = c.wait_close(timeout)
    except ReadTimeout:
        fail(f"no close frame within {timeout}s (expected {want})")
    except PeerClosed as e:
        fail(f"server closed TCP ({e.how}) without a close frame (expected {want})")
    check_server_frame(f)
    for s in seen:
        check_server_frame(s)
    if seen:
        fail(f"unexpected frames before the close: {seen[:3]!r}")
    code = f.close_code()
    wants = want if isinstance(want, (set, tuple, list)) else {want}
    if code not in wants:
        fail(f"close code {code} (reason {f.payload[2:80]!r}), expected {sorted(wants)}")
    if len(f.payload) >= 2:
        try:
            f.payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            fail("server's close reason is not valid UTF-8")
    expect_eof(c)
    return code


def expect_fail(c, want, reply=True, timeout=T, eof_timeout=None):
    """The server must fail the connection: a close frame with `want`, then
    close TCP. With reply=True we answer the close as a client would."""
    try:
        f, seen = c.wait_close(timeout)
    except ReadTimeout:
        fail(f"no close frame within {timeout}s (expected {want})")
    except PeerClosed as e:
        fail(f"server closed TCP ({e.how}) without a close frame (expected {want})")
    check_server_frame(f)
    if seen:
        fail(f"unexpected frames before the close {f.close_code()}: {seen[:3]!r}")
    code = f.close_code()
    wants = want if isinstance(want, (set, tuple, list)) else {want}
    if code not in wants:
        fail(f"close code {code} (reason {f.payload[2:80]!r}), expected {sorted(wants)}")
    if reply:
        c.try_send(frame(OP_CLOSE, close_payload(code)))
    expect_eof(c, eof_timeout or (T_EOF if reply else T_EOF_FAILED),
               what=f"after close {code}")
    return code


def expect_nothing(c, wait=0.2):
    """Nothing must arrive for `wait` seconds."""
    try:
        f = c.recv_frame(wait)
    except ReadTimeout:
        return
    except PeerClosed as e:
        fail(f"server closed TCP ({e.how}) unexpectedly")
    fail(f"unexpected frame {f!r}")


# ---------------------------------------------------------------------------
# the table

CASES = []  # (id, description, function(conn), kind) ; kind: "small" | "big"


def case(cid, desc, kind="small"):
    def deco(fn):
        CASES.append((cid, desc, fn, kind))
        return fn
    return deco


def add(cid, desc, fn, kind="small"):
    CASES.append((cid, desc, fn, kind))


def text_payload(n):
    base = b"BAsd7&jh23"
    return (base * (n // len(base) + 1))[:n]


def bin_payload(n):
    base = bytes(range(256))[::-1]
    return (base * (n // 256 + 1))[:n]


# ---- 1 Framing -------------------------------------------------------------

def _framing(op, n, chop=None):
    def run(c):
        p = text_payload(n) if op == OP_TEXT else bin_payload(n)
        c.send(frame(op, p), chop=chop)
        expect_echo(c, op, p)
        close_clean(c)
    return run


for _i, _n in enumerate([0, 125, 126, 127, 128, 65535, 65536], 1):
    add(f"1.1.{_i}", f"text message of {_n} bytes", _framing(OP_TEXT, _n))
    add(f"1.2.{_i}", f"binary message of {_n} bytes", _framing(OP_BINARY, _n))
add("1.1.8", "text message of 65536 bytes written in 997-byte chops", _framing(OP_TEXT, 65536, 997))
add("1.2.8", "binary message of 65536 bytes written in 997-byte chops",
    _framing(OP_BINARY, 65536, 997))
add("1.1.9", "text message of 200 bytes written one byte at a time", _framing(OP_TEXT, 200, 1))
def _chopped_header(c):
    p = bin_payload(65536)
    key = b"\x01\x02\x03\x04"
    fr = frame(OP_BINARY, p, key=key)
    c.send(fr[:14], chop=1, delay=0.002)
    c.send(fr[14:])
    expect_echo(c, OP_BINARY, p)
    close_clean(c)


add("1.2.9", "binary message of 65536 bytes, its 14-byte header written one byte at a time",
    _chopped_header)


# ---- 2 Ping/pong -----------------------------------------------------------

def _ping(payload, chop=None):
    def run(c):
        c.send(frame(OP_PING, payload), chop=chop, delay=0.001 if chop else 0)
        expect_pong(c, payload)
        close_clean(c)
    return run


add("2.1", "ping without payload", _ping(b""))
add("2.2", "ping with small text payload", _ping(b"Hello, world!"))
add("2.3", "ping with small binary payload", _ping(bytes([0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff])))
add("2.4", "ping with 125-byte binary payload", _ping(bytes([0xfe]) * 125))


@case("2.5", "ping with 126-byte payload (control frame too long) -> 1002")
def _c2_5(c):
    c.send(frame(OP_PING, bytes([0xfe]) * 126))
    expect_fail(c, 1002)


add("2.6", "ping with 125-byte payload written in 1-byte chops", _ping(bytes([0xfe]) * 125, chop=1))


@case("2.7", "unsolicited pong without payload is ignored")
def _c2_7(c):
    c.send(frame(OP_PONG, b""))
    c.send(frame(OP_TEXT, b"after pong"))
    expect_echo(c, OP_TEXT, b"after pong")
    close_clean(c)


@case("2.8", "unsolicited pong with payload is ignored")
def _c2_8(c):
    c.send(frame(OP_PONG, b"unsolicited pong payload"))
    c.send(frame(OP_TEXT, b"after pong"))
    expect_echo(c, OP_TEXT, b"after pong")
    close_clean(c)


@case("2.9", "unsolicited pong, then ping: exactly one pong with the ping's payload")
def _c2_9(c):
    c.send(frame(OP_PONG, b"unsolicited pong payload") + frame(OP_PING, b"ping payload"))
    expect_pong(c, b"ping payload")
    expect_nothing(c, 0.1)
    close_clean(c)


def _ten_pings(chop):
    def run(c):
        payloads = [f"payload-{i}".encode() for i in range(10)]
        data = b"".join(frame(OP_PING, p) for p in payloads)
        c.send(data, chop=chop, delay=0.001 if chop else 0)
        for p in payloads:
            expect_pong(c, p)
        close_clean(c)
    return run


add("2.10", "10 pings in one write: a pong for each, in order", _ten_pings(None))
add("2.11", "10 pings written in 1-byte chops: a pong for each", _ten_pings(1))


@case("2.12", "ping between two data messages")
def _c2_12(c):
    c.send(frame(OP_TEXT, b"one") + frame(OP_PING, b"p") + frame(OP_BINARY, b"two"))
    # the pong may overtake the first echo; data order is fixed
    expect_echo(c, OP_TEXT, b"one", allow_pongs=True)
    if not c.pongs:
        expect_pong(c, b"p")
        expect_echo(c, OP_BINARY, b"two")
    else:
        expect_echo(c, OP_BINARY, b"two")
    if len(c.pongs) > 1 or (c.pongs and c.pongs[0].payload != b"p"):
        fail(f"pongs {c.pongs!r}, expected one with payload b'p'")
    close_clean(c)


@case("2.13", "ping frame with FIN=0 (fragmented control frame) -> 1002")
def _c2_13(c):
    c.send(frame(OP_PING, b"frag", fin=False))
    expect_fail(c, 1002)


# ---- 3 Reserved bits -------------------------------------------------------

def _rsv(rsv, op, payload, before=None, after_ping=False, chop=None):
    def run(c):
        data = b""
        if before is not None:
            data += frame(OP_TEXT, before)
        data += frame(op, payload, rsv=rsv)
        if after_ping:
            data += frame(OP_PING, b"after")
        c.send(data, chop=chop, delay=0.001 if chop else 0)
        if before is not None:
            expect_echo(c, OP_TEXT, before)
        expect_fail(c, 1002)
    return run


add("3.1", "text with RSV1 (no extension negotiated) -> 1002", _rsv(4, OP_TEXT, b"Hello"))
add("3.2", "valid text, then text with RSV2, then ping -> echo, then 1002",
    _rsv(2, OP_TEXT, b"Hello", before=b"Hello", after_ping=True))
add("3.3", "valid text, text with RSV3 (RSV=3), ping, written in chops -> echo, 1002",
    _rsv(3, OP_TEXT, b"Hello", before=b"Hello", after_ping=True, chop=1))
add("3.4", "valid text, then text RSV=4 then ping, chopped per frame -> echo, 1002",
    _rsv(4, OP_TEXT, b"Hello", before=b"Hello", after_ping=True, chop=7))
add("3.5", "binary with RSV=5 -> 1002", _rsv(5, OP_BINARY, bytes(range(8))))
add("3.6", "ping with RSV=6 -> 1002", _rsv(6, OP_PING, b"Hello"))
add("3.7", "close with RSV=7 -> 1002", _rsv(7, OP_CLOSE, close_payload(1000)))
for _r in range(1, 8):
    add(f"3.8.{_r}", f"binary with RSV={_r} after a valid text -> echo, then 1002",
        _rsv(_r, OP_BINARY, b"\x00\x01", before=b"valid"))
    add(f"3.9.{_r}", f"continuation frame with RSV={_r} inside a fragmented text -> 1002",
        (lambda r: lambda c: (c.send(frame(OP_TEXT, b"frag", fin=False) +
                                     frame(OP_CONT, b"ment", rsv=r)),
                              expect_fail(c, 1002)))(_r))
    add(f"3.10.{_r}", f"pong with RSV={_r} -> 1002", _rsv(_r, OP_PONG, b""))


# ---- 4 Opcodes -------------------------------------------------------------

def _opcode(op, payload, before=False, after_ping=False):
    def run(c):
        data = b""
        if before:
            data += frame(OP_TEXT, b"Hello")
        data += frame(op, payload)
        if after_ping:
            data += frame(OP_PING, b"after")
        c.send(data)
        if before:
            expect_echo(c, OP_TEXT, b"Hello")
        expect_fail(c, 1002)
    return run


for _op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15):
    _sec = "4.1" if _op < 8 else "4.2"
    _k = _op - 2 if _op < 8 else _op - 10
    add(f"{_sec}.{_k}.1", f"reserved opcode {_op} without payload -> 1002", _opcode(_op, b""))
    add(f"{_sec}.{_k}.2", f"reserved opcode {_op} with payload after valid text, then ping -> 1002",
        _opcode(_op, b"reserved payload", before=True, after_ping=True))
    add(f"{_sec}.{_k}.3", f"reserved opcode {_op} with FIN=0 -> 1002",
        (lambda o: lambda c: (c.send(frame(o, b"x", fin=False)), expect_fail(c, 1002)))(_op))


# ---- 5 Fragmentation -------------------------------------------------------

@case("5.1", "ping in 2 fragments -> 1002")
def _c5_1(c):
    c.send(frame(OP_PING, b"fragment1", fin=False) + frame(OP_CONT, b"fragment2"))
    expect_fail(c, 1002)


@case("5.2", "pong in 2 fragments -> 1002")
def _c5_2(c):
    c.send(frame(OP_PONG, b"fragment1", fin=False) + frame(OP_CONT, b"fragment2"))
    expect_fail(c, 1002)


def _frag_text(op, chop=None, per_frame_delay=0.0, ping_between=False, nfrag=2):
    def run(c):
        parts = [f"fragment{i + 1}".encode() for i in range(nfrag)]
        frames = []
        pings = []
        for i, p in enumerate(parts):
            frames.append(frame(op if i == 0 else OP_CONT, p, fin=(i == nfrag - 1)))
            if ping_between and i < nfrag - 1:
                pp = f"ping{i}".encode()
                pings.append(pp)
                frames.append(frame(OP_PING, pp))
        if per_frame_delay:
            for fr in frames:
                c.send(fr, chop=chop, delay=0.001 if chop else 0)
                time.sleep(per_frame_delay)
        else:
            c.send(b"".join(frames), chop=chop, delay=0.001 if chop else 0)
        for pp in pings:
            expect_pong(c, pp)
        expect_echo(c, op, b"".join(parts))
        close_clean(c)
    return run


add("5.3", "text in 2 fragments", _frag_text(OP_TEXT))
add("5.4", "text in 2 fragments, written in 1-byte chops", _frag_text(OP_TEXT, chop=1))
add("5.5", "text in 2 fragments, frames written 50 ms apart", _frag_text(OP_TEXT, per_frame_delay=0.05))
add("5.6", "text in 2 fragments with a ping between", _frag_text(OP_TEXT, ping_between=True))
add("5.7", "text in 2 fragments with a ping between, frames 50 ms apart",
    _frag_text(OP_TEXT, ping_between=True, per_frame_delay=0.05))
add("5.8", "text in 2 fragments with a ping between, written in 1-byte chops",
    _frag_text(OP_TEXT, ping_between=True, chop=1))


def _bad_seq(frames_bytes, echo_first=None, chop=None, per_frame_delay=0.0):
    def run(c):
        if per_frame_delay:
            for fr in frames_bytes():
                c.send(fr, chop=chop)
                time.sleep(per_frame_delay)
        else:
            c.send(b"".join(frames_bytes()), chop=chop, delay=0.0005 if chop else 0)
        if echo_first is not None:
            expect_echo(c, OP_TEXT, echo_first)
        expect_fail(c, 1002)
    return run


def _cont_nothing(fin):
    return lambda: [frame(OP_CONT, b"non-continuation payload", fin=fin),
                    frame(OP_TEXT, b"Hello, world!")]


add("5.9", "continuation FIN=1 with nothing to continue, then text -> 1002", _bad_seq(_cont_nothing(True)))
add("5.10", "same as 5.9, written in 1-byte chops", _bad_seq(_cont_nothing(True), chop=1))
add("5.11", "same as 5.9, frames 50 ms apart", _bad_seq(_cont_nothing(True), per_frame_delay=0.05))
add("5.12", "continuation FIN=0 with nothing to continue, then text -> 1002", _bad_seq(_cont_nothing(False)))
add("5.13", "same as 5.12, written in 1-byte chops", _bad_seq(_cont_nothing(False), chop=1))
add("5.14", "same as 5.12, frames 50 ms apart", _bad_seq(_cont_nothing(False), per_frame_delay=0.05))
add("5.15", "text FIN=0, cont FIN=1, cont FIN=0, text FIN=1 -> echo of the first message, then 1002",
    _bad_seq(lambda: [frame(OP_TEXT, b"fragment1", fin=False), frame(OP_CONT, b"fragment2"),
                      frame(OP_CONT, b"fragment3", fin=False), frame(OP_TEXT, b"fragment4")],
             echo_first=b"fragment1fragment2"))
add("5.16", "cont FIN=0, text FIN=0, cont FIN=1 (twice) -> 1002",
    _bad_seq(lambda: [frame(OP_CONT, b"fragment1", fin=False), frame(OP_TEXT, b"fragment2", fin=False),
                      frame(OP_CONT, b"fragment3")] * 2))
add("5.17", "cont FIN=1, text FIN=0, cont FIN=1 (twice) -> 1002",
    _bad_seq(lambda: [frame(OP_CONT, b"fragment1"), frame(OP_TEXT, b"fragment2", fin=False),
                      frame(OP_CONT, b"fragment3")] * 2))
add("5.18", "text FIN=0 followed by a new text FIN=1 -> 1002",
    _bad_seq(lambda: [frame(OP_TEXT, b"fragment1", fin=False), frame(OP_TEXT, b"fragment2")]))
add("5.19", "text in 5 fragments, a ping after each of the first four, frames 20 ms apart",
    _frag_text(OP_TEXT, ping_between=True, per_frame_delay=0.02, nfrag=5))
add("5.20", "same as 5.19, each frame written in 1-byte chops",
    _frag_text(OP_TEXT, ping_between=True, per_frame_delay=0.02, nfrag=5, chop=1))
add("5.21", "binary in 2 fragments", _frag_text(OP_BINARY))
add("5.22", "binary in 5 fragments with pings between", _frag_text(OP_BINARY, ping_between=True, nfrag=5))
add("5.23", "binary FIN=0 followed by a binary FIN=1 -> 1002",
    _bad_seq(lambda: [frame(OP_BINARY, b"a", fin=False), frame(OP_BINARY, b"b")]))
add("5.24", "text FIN=0 followed by binary FIN=0 -> 1002",
    _bad_seq(lambda: [frame(OP_TEXT, b"a", fin=False), frame(OP_BINARY, b"b", fin=False)]))


@case("5.25", "text in 3 fragments, all empty")
def _c5_25(c):
    c.send(frame(OP_TEXT, b"", fin=False) + frame(OP_CONT, b"", fin=False) + frame(OP_CONT, b""))
    expect_echo(c, OP_TEXT, b"")
    close_clean(c)


@case("5.26", "binary in 100 one-byte fragments")
def _c5_26(c):
    p = bin_payload(100)
    c.send(b"".join(frame(OP_BINARY if i == 0 else OP_CONT, p[i:i + 1], fin=(i == 99))
                    for i in range(100)))
    expect_echo(c, OP_BINARY, p)
    close_clean(c)


@case("5.27", "close between the fragments of a text message: close is answered")
def _c5_27(c):
    c.send(frame(OP_TEXT, b"frag", fin=False) + frame(OP_CLOSE, close_payload(1000)))
    expect_close_reply(c, 1000)


# ---- 6 UTF-8 ---------------------------------------------------------------

def _utf8_table():
    """(id-suffix, description, bytes). Markus Kuhn's UTF-8 decoder stress
    test classes plus the Autobahn 6.x specials."""
    t = []

    def a(desc, b):
        t.append((desc, b))

    kosme = "κόσμε".encode()
    a("empty", b"")
    a("Hello-µ@ßöäüàá-UTF-8!!", "Hello-\u00b5@\u00df\u00f6\u00e4\u00fc\u00e0\u00e1-UTF-8!!".encode())
    a("kosme", kosme)
    # every prefix of kosme (6.6.x): valid when cut at a code point boundary
    for i in range(1, len(kosme)):
        a(f"kosme prefix {i}", kosme[:i])
    a("mixed scripts", "ascii ελληνικά русский 日本語 한국어 😀 𝄞".encode())
    # 2.1 first possible sequence of each length
    for cp in (0x0000, 0x0080, 0x0800, 0x10000):
        a(f"first of its length U+{cp:04X}", chr(cp).encode())
    # 2.2 last possible sequence of each length
    for cp in (0x007F, 0x07FF, 0xFFFF, 0x10FFFF):
        a(f"last of its length U+{cp:04X}", chr(cp).encode())
    # 2.3 other boundary conditions
    for cp in (0xD7FF, 0xE000, 0xFFFD, 0x10FFFF):
        a(f"boundary U+{cp:04X}", chr(cp).encode())
    a("U+110000 (above max)", b"\xf4\x90\x80\x80")
    # 5/6-byte forms and out of range
    a("5-byte first", b"\xf8\x88\x80\x80\x80")
    a("6-byte first", b"\xfc\x84\x80\x80\x80\x80")
    a("4-byte last (U+1FFFFF)", b"\xf7\xbf\xbf\xbf")
    a("5-byte last", b"\xfb\xbf\xbf\xbf\xbf")
    a("6-byte last", b"\xfd\xbf\xbf\xbf\xbf\xbf")
    # 3.1 unexpected continuation bytes
    a("lone 0x80", b"\x80")
    a("lone 0xbf", b"\xbf")
    a("2 continuations", b"\x80\xbf")
    a("3 continuations", b"\x80\xbf\x80")
    a("4 continuations", b"\x80\xbf\x80\xbf")
    a("7 continuations", b"\x80\xbf\x80\xbf\x80\xbf\x80")
    a("all 64 continuation bytes", bytes(range(0x80, 0xC0)))
    a("continuation after valid text", b"valid" + kosme + b"\x80tail")
    # 3.2 lonely start characters, each followed by a space
    a("lonely 2-byte starts c0-df", b"".join(bytes([x, 0x20]) for x in range(0xC0, 0xE0)))
    a("lonely 3-byte starts e0-ef", b"".join(bytes([x, 0x20]) for x in range(0xE0, 0xF0)))
    a("lonely 4-byte starts f0-f7", b"".join(bytes([x, 0x20]) for x in range(0xF0, 0xF8)))
    a("lonely 5-byte starts f8-fb", b"".join(bytes([x, 0x20]) for x in range(0xF8, 0xFC)))
    a("lonely 6-byte starts fc-fd", b"\xfc\x20\xfd\x20")
    # 3.3 sequences with the last continuation byte missing
    for h in ("c0", "e08080"[:4], "f0808080"[:6], "f888808080"[:8], "fc8480808080"[:10],
              "df", "efbf", "f7bfbf", "fbbfbfbf", "fdbfbfbfbf",
              "c2", "e0a0", "f09080", "cebae1bdb9cf83ceb5e1", "ed9f", "f48fbf"):
        a(f"last continuation missing {h}", bytes.fromhex(h))
    # 3.4 concatenation of incomplete sequences
    a("concatenated incomplete sequences",
      bytes.fromhex("c0e080f08080f8808080fc80808080dfefbff7bfbffbbfbfbffdbfbfbfbf"))
    # 3.5 impossible bytes
    a("0xfe", b"\xfe")
    a("0xff", b"\xff")
    a("fe fe ff ff", b"\xfe\xfe\xff\xff")
    a("0xff after valid text", b"Hello\xffworld")
    # 4.1 overlong ASCII '/'
    for h in ("c0af", "e080af", "f08080af", "f8808080af", "fc80808080af"):
        a(f"overlong slash {h}", bytes.fromhex(h))
    # 4.2 maximum overlongs
    for h in ("c1bf", "e09fbf", "f08fbfbf", "f887bfbfbf", "fc83bfbfbfbf"):
        a(f"maximum overlong {h}", bytes.fromhex(h))
    # 4.3 overlong NUL
    for h in ("c080", "e08080", "f0808080", "f880808080", "fc8080808080"):
        a(f"overlong NUL {h}", bytes.fromhex(h))
    # 5.1 single UTF-16 surrogates
    for h in ("eda080", "edadbf", "edae80", "edafbf", "edb080", "edbe80", "edbfbf"):
        a(f"single surrogate {h}", bytes.fromhex(h))
    # 5.2 paired UTF-16 surrogates
    for h in ("eda080edb080", "eda080edbfbf", "edadbfedb080", "edadbfedbfbf",
              "edae80edb080", "edae80edbfbf", "edafbfedb080", "edafbfedbfbf"):
        a(f"paired surrogates {h}", bytes.fromhex(h))
    a("surrogate after valid text (Autobahn 6.4.3)",
      bytes.fromhex("cebae1bdb9cf83ceb5eda080656469746564"))
    a("U+110000 after valid text (Autobahn 6.4.1)",
      bytes.fromhex("cebae1bdb9cf83ceb5f4908080656469746564"))
    # 5.3 noncharacters are valid UTF-8
    for cp in (0xFFFE, 0xFFFF, 0xFDD0, 0xFDEF, 0x1FFFE, 0x1FFFF, 0x10FFFE, 0x10FFFF):
        a(f"noncharacter U+{cp:04X}", chr(cp).encode())
    # more valid sequences: every plane's first, some 3/4-byte runs
    a("U+0000..U+007F", bytes(range(0x80)))
    a("2-byte run", "".join(chr(x) for x in range(0x80, 0x800, 17)).encode())
    a("3-byte run", "".join(chr(x) for x in range(0x800, 0xD800, 331)).encode())
    a("4-byte run", "".join(chr(x) for x in range(0x10000, 0x110000, 4099)).encode())
    a("U+FEFF BOM", "\ufeffbom".encode())
    return t


def _utf8_cases():
    table = _utf8_table()
    for i, (desc, b) in enumerate(table, 1):
        fi = wsraw.utf8_fail_index(b)
        valid = fi is None
        # cross-check our reference against Python's strict decoder
        try:
            b.decode("utf-8")
            pyvalid = True
        except UnicodeDecodeError:
            pyvalid = False
        assert valid == pyvalid, (desc, b)
        verdict = "valid -> echo" if valid else f"invalid at byte {fi} -> 1007"
        add(f"6.{i}.1", f"UTF-8 {desc} [{b[:16].hex()}] whole frame: {verdict}", _utf8_whole(b, fi))
        add(f"6.{i}.2", f"UTF-8 {desc} one byte per fragment: {verdict}, fail fast",
            _utf8_frag(b, fi))
        add(f"6.{i}.3", f"UTF-8 {desc} chopped in one frame: {verdict}, fail fast "
            f"(frame left incomplete)", _utf8_chop(b, fi))


def _utf8_whole(b, fi):
    def run(c):
        c.send(frame(OP_TEXT, b))
        if fi is None:
            expect_echo(c, OP_TEXT, b)
            close_clean(c)
        else:
            expect_fail(c, 1007)
    return run


def _utf8_frag(b, fi):
    def run(c):
        n = len(b)
        if n == 0:
            frames = [frame(OP_TEXT, b"", fin=False), frame(OP_CONT, b"")]
        else:
            frames = [frame(OP_TEXT if i == 0 else OP_CONT, b[i:i + 1], fin=(i == n - 1))
                      for i in range(n)]
        if fi is None:
            c.send(b"".join(frames))
            expect_echo(c, OP_TEXT, b)
            close_clean(c)
        elif fi < n:
            # send fragments up to and including the impossible byte, none of
            # them final; the server must fail before the message is complete
            c.send(b"".join(frames[:fi + 1]) if fi < n - 1 else
                   b"".join(frames[:fi]) + frame(OP_CONT if fi else OP_TEXT, b[fi:fi + 1], fin=False))
            expect_fail(c, 1007, reply=True)
        else:
            c.send(b"".join(frames))
            expect_fail(c, 1007)
    return run


def _utf8_chop(b, fi):
    def run(c):
        n = len(b)
        if fi is None or fi >= n:
            c.send(frame(OP_TEXT, b), chop=1)
            if fi is None:
                expect_echo(c, OP_TEXT, b)
                close_clean(c)
            else:
                expect_fail(c, 1007)
        else:
            # declare a frame longer than we will write (100 bytes, or more),
            # then write only up to the impossible byte, in chops
            declared = max(100, n + 1)
            key = os.urandom(4)
            full = frame(OP_TEXT, b + b" " * (declared - n), key=key)
            head_len = len(full) - declared
            c.send(full[:head_len + fi + 1], chop=1)
            # fail fast: no reply possible while our frame is incomplete
            expect_fail(c, 1007, reply=False)
    return run


_utf8_cases()


@case("6.500.1", "fail fast across fragments: valid fragment, then U+110000 fragment (FIN=0) -> 1007 "
      "before the final fragment")
def _c6_500_1(c):
    c.send(frame(OP_TEXT, "κόσμε".encode(), fin=False))
    time.sleep(0.05)
    c.send(frame(OP_CONT, b"\xf4\x90\x80\x80", fin=False))
    expect_fail(c, 1007)


@case("6.500.2", "fail fast: a valid fragment, then one whose first byte is impossible (FIN=0)")
def _c6_500_2(c):
    c.send(frame(OP_TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xb5", fin=False))
    time.sleep(0.05)
    c.send(frame(OP_CONT, b"\xf4\x90", fin=False))
    expect_fail(c, 1007)


@case("6.500.3", "fail fast within one frame: declared 1000 bytes, invalid surrogate at byte 12")
def _c6_500_3(c):
    p = bytes.fromhex("cebae1bdb9cf83ceb5eda080656469746564")
    full = frame(OP_TEXT, p + b"x" * (1000 - len(p)))
    c.send(full[:8 + 2 + 12], chop=3)  # header (2+2) + key (4) ... up to 0xa0
    expect_fail(c, 1007, reply=False)


@case("6.500.4", "code point split across fragments is valid: 4-byte sequence over 4 fragments")
def _c6_500_4(c):
    p = "a😀b".encode()
    c.send(frame(OP_TEXT, p[:2], fin=False) + frame(OP_CONT, p[2:3], fin=False) +
           frame(OP_CONT, p[3:4], fin=False) + frame(OP_CONT, p[4:]))
    expect_echo(c, OP_TEXT, p)
    close_clean(c)


@case("6.500.5", "message ends inside a code point (split across fragments) -> 1007")
def _c6_500_5(c):
    c.send(frame(OP_TEXT, b"ab\xf0\x9f", fin=False) + frame(OP_CONT, b"\x98"))
    expect_fail(c, 1007)


@case("6.500.7", "UTF-8 decoder state survives a ping between fragments split inside a code point")
def _c6_500_7(c):
    c.send(frame(OP_TEXT, b"a\xe2", fin=False) + frame(OP_PING, b"mid") +
           frame(OP_CONT, b"\x82", fin=False) + frame(OP_PONG, b"x") + frame(OP_CONT, b"\xacb"))
    expect_pong(c, b"mid")
    expect_echo(c, OP_TEXT, "a€b".encode())
    close_clean(c)


@case("6.500.8", "invalid continuation after a ping between fragments -> 1007 before the end")
def _c6_500_8(c):
    c.send(frame(OP_TEXT, b"a\xe2", fin=False) + frame(OP_PING, b"mid") +
           frame(OP_CONT, b"\x28", fin=False))
    expect_pong(c, b"mid")
    expect_fail(c, 1007)


@case("6.500.9", "a new message after a valid fragmented one starts with fresh UTF-8 state")
def _c6_500_9(c):
    c.send(frame(OP_TEXT, b"\xce", fin=False) + frame(OP_CONT, b"\xba") + frame(OP_TEXT, b"\xba"))
    expect_echo(c, OP_TEXT, b"\xce\xba")
    expect_fail(c, 1007)


@case("6.500.6", "binary messages are not UTF-8 checked")
def _c6_500_6(c):
    p = b"\xff\xfe\xed\xa0\x80\xc0\xaf"
    c.send(frame(OP_BINARY, p))
    expect_echo(c, OP_BINARY, p)
    close_clean(c)


# ---- 7 Closing -------------------------------------------------------------

@case("7.1.1", "echo a text message, then a clean close")
def _c7_1_1(c):
    c.send(frame(OP_TEXT, b"Hello World"))
    expect_echo(c, OP_TEXT, b"Hello World")
    close_clean(c)


@case("7.1.2", "close twice: the second is ignored")
def _c7_1_2(c):
    c.send(frame(OP_CLOSE, close_payload(1000)) + frame(OP_CLOSE, close_payload(1000)))
    expect_close_reply(c, 1000)


@case("7.1.3", "ping after close is ignored")
def _c7_1_3(c):
    c.send(frame(OP_CLOSE, close_payload(1000)) + frame(OP_PING, b"Hello World"))
    expect_close_reply(c, 1000)


@case("7.1.4", "text after close is ignored")
def _c7_1_4(c):
    c.send(frame(OP_CLOSE, close_payload(1000)) + frame(OP_TEXT, b"Hello World"))
    expect_close_reply(c, 1000)


@case("7.1.5", "fragment, close, then the final fragment: close answered, no echo")
def _c7_1_5(c):
    c.send(frame(OP_TEXT, b"fragment1", fin=False) + frame(OP_CLOSE, close_payload(1000)) +
           frame(OP_CONT, b"fragment2"))
    expect_close_reply(c, 1000)


@case("7.1.6", "256 KiB text, ping, close: the echo may come, the close is answered")
def _c7_1_6(c):
    p = text_payload(262144)
    c.send(frame(OP_TEXT, p) + frame(OP_PING, b"ping") + frame(OP_CLOSE, close_payload(1000)))
    deadline = time.monotonic() + 10
    while True:
        f = recv_frame(c, max(0.001, deadline - time.monotonic()))
        if f.opcode == OP_CLOSE:
            if f.close_code() != 1000:
                fail(f"close code {f.close_code()}, expected 1000")
            break
    expect_eof(c)


@case("7.3.1", "close with empty payload: answered with empty payload or 1000")
def _c7_3_1(c):
    c.send(frame(OP_CLOSE, b""))
    expect_close_reply(c, {1005, 1000})


@case("7.3.2", "close with a 1-byte payload -> 1002")
def _c7_3_2(c):
    c.send(frame(OP_CLOSE, b"\x03"))
    expect_fail(c, 1002)


@case("7.3.3", "close 1000 without reason")
def _c7_3_3(c):
    close_clean(c, 1000)


@case("7.3.4", "close 1000 with a short reason")
def _c7_3_4(c):
    close_clean(c, 1000, b"Hello World!")


@case("7.3.5", "close 1000 with a 123-byte reason (payload 125)")
def _c7_3_5(c):
    close_clean(c, 1000, b"*" * 123)


@case("7.3.6", "close with a 124-byte reason (payload 126, control frame too long) -> 1002")
def _c7_3_6(c):
    c.send(frame(OP_CLOSE, close_payload(1000, b"*" * 124)))
    expect_fail(c, 1002)


@case("7.3.7", "close with a 123-byte multi-byte UTF-8 reason")
def _c7_3_7(c):
    close_clean(c, 1000, ("é" * 61 + "a").encode())


@case("7.5.1", "close with invalid UTF-8 in the reason -> 1007 or 1002")
def _c7_5_1(c):
    c.send(frame(OP_CLOSE, close_payload(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xb5\xed\xa0\x80"
                                                b"\x65\x64\x69\x74\x65\x64")))
    expect_fail(c, {1007, 1002})


@case("7.5.2", "close whose reason is a truncated code point -> 1007 or 1002")
def _c7_5_2(c):
    c.send(frame(OP_CLOSE, close_payload(1000, b"abc\xe2\x82")))
    expect_fail(c, {1007, 1002})


for _i, _code in enumerate((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013,
                            1014, 3000, 3999, 4000, 4999), 1):
    add(f"7.7.{_i}", f"close with valid code {_code}: echoed",
        (lambda k: lambda c: close_clean(c, k))(_code))
    add(f"7.8.{_i}", f"close with valid code {_code} and a reason: echoed",
        (lambda k: lambda c: close_clean(c, k, b"reason"))(_code))

for _i, _code in enumerate((0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000,
                            65535), 1):
    add(f"7.9.{_i}", f"close with invalid code {_code} -> 1002",
        (lambda k: lambda c: (c.send(frame(OP_CLOSE, close_payload(k))), expect_fail(c, 1002)))(_code))


@case("7.10.1", "close frame written in 1-byte chops")
def _c7_10_1(c):
    c.send(frame(OP_CLOSE, close_payload(1000, b"chopped")), chop=1, delay=0.001)
    expect_close_reply(c, 1000)


@case("7.10.2", "close frame with FIN=0 -> 1002")
def _c7_10_2(c):
    c.send(frame(OP_CLOSE, close_payload(1000), fin=False))
    expect_fail(c, 1002)


@case("7.10.3", "unmasked client frame -> 1002")
def _c7_10_3(c):
    c.send(frame(OP_TEXT, b"unmasked", mask=False))
    expect_fail(c, 1002)


@case("7.10.4", "non-minimal 16-bit length: accepted (echo) or refused with 1002")
def _c7_10_4b(c):
    key = b"\x11\x22\x33\x44"
    c.send(struct.pack("!BBH", 0x81, 0x80 | 126, 5) + key + wsraw.mask_bytes(b"hello", key))
    f = recv_frame(c)
    if f.opcode == OP_TEXT:
        if f.payload != b"hello":
            fail(f"echo {f.payload!r}")
        close_clean(c)
    elif f.opcode == OP_CLOSE:
        if f.close_code() != 1002:
            fail(f"close code {f.close_code()}")
        c.send_close(1002)
        expect_eof(c)
    else:
        fail(f"unexpected {f!r}")


@case("7.10.5", "64-bit length with the most significant bit set -> 1002 (or 1009)")
def _c7_10_5(c):
    c.send(struct.pack("!BBQ", 0x82, 0x80 | 127, 1 << 63) + b"\x00\x00\x00\x00")
    expect_fail(c, {1002, 1009}, reply=False)


# ---- 9 Limits and performance ---------------------------------------------

def _big(op, n, frag=None, chop=None):
    def run(c):
        p = text_payload(n) if op == OP_TEXT else bin_payload(n)
        if frag is None:
            data = frame(op, p)
        else:
            key = os.urandom(4)
            frames = []
            for i in range(0, n, frag):
                frames.append(frame(op if i == 0 else OP_CONT, p[i:i + frag],
                                    fin=(i + frag >= n), key=key))
            data = b"".join(frames)
        t0 = time.monotonic()
        c.send(data, chop=chop)
        expect_echo(c, op, p, timeout=T_BIG)
        dt = time.monotonic() - t0
        close_clean(c)
        return f"{dt * 1000:.0f} ms"
    return run


_SIZES = [(1, 65536), (2, 262144), (3, 1 << 20), (4, 4 << 20), (5, 8 << 20), (6, 16 << 20)]
for _k, _n in _SIZES:
    add(f"9.1.{_k}", f"text message of {_n} bytes in one frame", _big(OP_TEXT, _n), "big")
    add(f"9.2.{_k}", f"binary message of {_n} bytes in one frame", _big(OP_BINARY, _n), "big")
for _k, _fs in enumerate([64, 256, 1024, 4096, 16384, 65536, 262144, 1 << 20, 4 << 20], 1):
    add(f"9.3.{_k}", f"4 MiB text message in fragments of {_fs} bytes",
        _big(OP_TEXT, 4 << 20, frag=_fs), "big")
    add(f"9.4.{_k}", f"4 MiB binary message in fragments of {_fs} bytes",
        _big(OP_BINARY, 4 << 20, frag=_fs), "big")
for _k, _ch in enumerate([64, 128, 256, 512, 1024, 2048], 1):
    add(f"9.5.{_k}", f"1 MiB text message in one frame, written in {_ch}-byte chops",
        _big(OP_TEXT, 1 << 20, chop=_ch), "big")
    add(f"9.6.{_k}", f"1 MiB binary message in one frame, written in {_ch}-byte chops",
        _big(OP_BINARY, 1 << 20, chop=_ch), "big")


def _stream(op, n, count):
    def run(c):
        p = text_payload(n) if op == OP_TEXT else bin_payload(n)
        fr = frame(op, p)
        t0 = time.monotonic()
        for _ in range(count):
            c.send(fr)
            expect_echo(c, op, p)
        dt = time.monotonic() - t0
        close_clean(c)
        return f"{count} round trips in {dt * 1000:.0f} ms"
    return run


def _pipelined(op, n, count, window):
    """Keep `window` messages in flight (sends interleaved with reads so
    neither side's buffers fill up)."""
    def run(c):
        p = text_payload(n) if op == OP_TEXT else bin_payload(n)
        fr = frame(op, p)
        t0 = time.monotonic()
        sent = got = 0
        while got < count:
            while sent < count and sent - got < window:
                c.send(fr)
                sent += 1
            expect_echo(c, op, p, timeout=T_BIG)
            got += 1
        dt = time.monotonic() - t0
        close_clean(c)
        return f"{count} messages in {dt * 1000:.0f} ms"
    return run


for _k, _n in enumerate([0, 16, 64, 256, 1024, 4096, 16384, 65536, 131072], 1):
    _cnt = 1000
    add(f"9.7.{_k}", f"{_cnt} text messages of {_n} bytes, one round trip each",
        _stream(OP_TEXT, _n, _cnt), "big")
    add(f"9.8.{_k}", f"{_cnt} binary messages of {_n} bytes, one round trip each",
        _stream(OP_BINARY, _n, _cnt), "big")
add("9.9.1", "1000 binary messages of 4096 bytes, 32 in flight", _pipelined(OP_BINARY, 4096, 1000, 32), "big")
add("9.9.2", "1000 text messages of 128 KiB, 4 in flight", _pipelined(OP_TEXT, 131072, 1000, 4), "big")


# ---- 10 Auto-fragmentation -------------------------------------------------

@case("10.1.1", "64 KiB text message sent in 1300-byte frames")
def _c10_1_1(c):
    p = text_payload(65536)
    frames = [frame(OP_TEXT if i == 0 else OP_CONT, p[i:i + 1300], fin=(i + 1300 >= len(p)))
              for i in range(0, len(p), 1300)]
    c.send(b"".join(frames))
    expect_echo(c, OP_TEXT, p)
    close_clean(c)


@case("10.1.2", "64 KiB binary message sent in 1300-byte frames, written in 1000-byte chops")
def _c10_1_2(c):
    p = bin_payload(65536)
    frames = [frame(OP_BINARY if i == 0 else OP_CONT, p[i:i + 1300], fin=(i + 1300 >= len(p)))
              for i in range(0, len(p), 1300)]
    c.send(b"".join(frames), chop=1000)
    expect_echo(c, OP_BINARY, p)
    close_clean(c)


# ---------------------------------------------------------------------------
# runner


def run_case(port, cid, desc, fn):
    t0 = time.monotonic()
    c = None
    result = {"id": cid, "description": desc}
    try:
        c = wsraw.ws_connect(port, "/echo")
        note = fn(c)
        result["result"] = "pass"
        if note:
            result["note"] = note
    except CaseFail as e:
        result["result"] = "fail"
        result["detail"] = str(e)
    except AssertionError as e:
        result["result"] = "fail"
        result["detail"] = f"handshake: {e}"
    except Exception as e:  # noqa: BLE001 - any error is a failed case
        result["result"] = "fail"
        result["detail"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc(limit=4)
    finally:
        if c is not None:
            c.close()
    result["ms"] = round((time.monotonic() - t0) * 1000, 1)
    return result


def fresh_echo(port):
    c = wsraw.ws_connect(port)
    try:
        c.send(frame(OP_TEXT, b"still alive"))
        expect_echo(c, OP_TEXT, b"still alive")
        close_clean(c)
    finally:
        c.close()


def main():
    return wsraw.run_main(
        __doc__, CASES, SERVER_ARGS, run_case, fresh_echo, report="conformance-report.json",
        jobs=6, big_jobs=1, port_help="use an already running server",
        family=lambda cid: cid.split(".")[0], order=int, label=lambda s: f"section {s:>2}",
        alive_desc="server alive afterwards: /healthz and a fresh echo")


if __name__ == "__main__":
    sys.exit(main())
