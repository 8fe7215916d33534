#!/usr/bin/python3
"""wshub conformance suite, permessage-deflate (RFC 7692): sections 12 and
13 of shared/CONFORMANCE.md (the Autobahn|Testsuite 12.x and 13.x
families) as our own table, driven over raw sockets against
`wshub --echo --deflate --max-message 16777216 --max-fragments 262144`.

The client side is Python's zlib: a raw deflater (compressobj(level,
DEFLATED, -wbits), trailing 00 00 ff ff stripped) with exactly the agreed
client window and context takeover, and for the server's messages a raw
inflater of exactly the agreed server window, fresh per message when
server_no_context_takeover was agreed (so a server exceeding its window or
keeping context it promised to drop fails to inflate).

Section 12 (compressed echoes): five payload kinds (ASCII text, random-ish
binary, highly repetitive text, JSON-like text, UTF-8 multibyte text) over
the 18 size/fragmentation mixes of Autobahn 12.x.1-18 (16 B to 128 KiB,
compressed payload in one frame or in frames of 256 B to 32 KiB, varying),
plus a 256 KiB mix (12.x.19), each as a stream of messages on one
connection. Sections 12.1-12.5 keep client context takeover, 12.6-12.10 the
same with client_no_context_takeover. Autobahn sends 1000 messages per
case; to keep the suite near a minute we send min(100, 1 MiB / size, at
least 8) per case (100 for <= 8 KiB, 8 for 128 KiB and 256 KiB).
12.11 are the payload examples of RFC 7692 7.2.3, byte for byte.

Section 13 (parameters): 13.1-13.4 are every valid single offer: the four
server/client_no_context_takeover combinations x server_max_window_bits
absent or 8..15 x client_max_window_bits absent, valueless or 8..15. The
answer must be valid per RFC 7692 (checked independently of our policy)
and equal to what docs/permessage-deflate.md promises; then a few messages
echo with exactly the agreed parameters. 13.5 are invalid offers (must be
declined: 101 without Sec-WebSocket-Extensions, not 400), 13.6 several
offers (the first acceptable one wins).

Usage: run_conformance_deflate.py [--bin WSHUB] [--report r.json] [--jobs N]
                                  [--filter REGEX] [--list]
Prints 'N passed, N failed' and exits 1 if any case failed.
"""

import os
import sys
import time
import traceback
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pmdraw  # noqa: E402
import wsraw  # noqa: E402
from pmdraw import PmdError  # noqa: E402
from wsraw import OP_BINARY, OP_CONT, OP_TEXT, frame  # noqa: E402

SERVER_ARGS = ["--echo", "--deflate", "--max-message", "16777216", "--max-fragments", "262144",
               "--max-queue", str(64 << 20), "--workers", "2"]

T = 5.0
T_BIG = 30.0

CASES = []  # (id, description, fn(port) -> note|None, kind "small"|"big")


def add(cid, desc, fn, kind="small"):
    CASES.append((cid, desc, fn, kind))


def fail(msg):
    raise PmdError(msg)


# ---------------------------------------------------------------------------
# 12: compressed echoes

KINDS = [  # (name, opcode, client deflate level)
    ("ascii", OP_TEXT, 6),
    ("binary", OP_BINARY, 1),
    ("repetitive", OP_TEXT, 9),
    ("json", OP_TEXT, 6),
    ("utf8", OP_TEXT, 3),
]

# Autobahn 12.x.1-18: (message size, auto-fragment size; 0 = one frame).
# Fragment sizes vary around the nominal one (cycled list), as a real
# client's writes would.
MIXES = [(16, 0), (64, 0), (256, 0), (1024, 0), (4096, 0), (8192, 0), (16384, 0),
         (32768, 0), (65536, 0), (131072, 0),
         (8192, 256), (16384, 256), (32768, 256), (65536, 256), (131072, 256),
         (131072, 1024), (131072, 4096), (131072, 32768),
         (262144, 65536)]


def frag_sizes(nominal):
    if not nominal:
        return 0
    return [nominal, max(1, nominal // 2 + 3), nominal * 2 - 1, 1, nominal]


def msg_count(n):
    return max(8, min(100, (1 << 20) // n))


def _stream(kind, op, level, n, frag, cnct):
    def run(port):
        kw = dict(cnct=cnct, cmwb=True)
        c, ans = pmdraw.connect(port, [pmdraw.offer(**kw)])
        try:
            a = pmdraw.validate_answer(ans, **kw)
            if a is None:
                fail(f"offer {pmdraw.offer(**kw)!r} declined")
            if pmdraw.answer_tuple(a) != pmdraw.expected_answer(**kw):
                fail(f"answer {ans!r} is not the documented {pmdraw.expected_answer(**kw)}")
            d = pmdraw.Deflater(a, level=level)
            inf = pmdraw.Inflater(a)
            count = msg_count(n)
            msgs = pmdraw.messages(kind, n, count)
            # pipelined: keep up to ~512 KiB (and at least 2 messages) in flight
            window = max(2, (512 << 10) // max(n, 1))
            t0 = time.monotonic()
            sent = got = 0
            wire_in = wire_out = 0
            fs = frag_sizes(frag)
            while got < count:
                while sent < count and sent - got < window:
                    fr = pmdraw.data_frames(msgs[sent], op, d, frag=fs)
                    wire_in += len(fr)
                    c.send(fr)
                    sent += 1
                try:
                    wire_out += pmdraw.expect_echo(c, inf, op, msgs[got], timeout=T_BIG)
                except PmdError as e:
                    fail(f"message {got + 1}/{count}: {e}")
                got += 1
            dt = time.monotonic() - t0
            pmdraw.close_clean(c)
            return (f"{count} x {n} B in {dt * 1000:.0f} ms; wire in {wire_in} B, "
                    f"out {wire_out} B, raw {count * n} B")
        finally:
            c.close()
    return run


for _half, _cnct in ((0, False), (5, True)):
    for _k, (_kind, _op, _lvl) in enumerate(KINDS, 1):
        for _m, (_n, _frag) in enumerate(MIXES, 1):
            _cnt = msg_count(_n)
            add(f"12.{_k + _half}.{_m}",
                f"{_cnt} {_kind} messages of {_n} B, "
                f"{'frames of ~' + str(_frag) + ' B' if _frag else 'one frame'}, "
                f"client context takeover {'off' if _cnct else 'on'}",
                _stream(_kind, _op, _lvl, _n, _frag, _cnct), "big" if _n >= 65536 else "small")


# 12.11: the payload examples of RFC 7692 section 7.2.3 ("Hello"), byte for
# byte, on a connection with client context takeover.

def _h(s):
    return bytes.fromhex(s.replace(" ", ""))


def _finish_only(text):
    z = zlib.compressobj(6, zlib.DEFLATED, -10)
    return z.compress(text) + z.flush(zlib.Z_FINISH)


RFC_VECTORS = [
    ("7.2.3.1 a message compressed with one block", [[_h("f2 48 cd c9 c9 07 00")]], [b"Hello"]),
    ("7.2.3.1 the same message in two fragments", [[_h("f2 48 cd"), _h("c9 c9 07 00")]], [b"Hello"]),
    ("7.2.3.2 two messages sharing the LZ77 window (context takeover)",
     [[_h("f2 48 cd c9 c9 07 00")], [_h("f2 00 11 00 00")]], [b"Hello", b"Hello"]),
    ("7.2.3.3 a DEFLATE block with no compression",
     [[_h("00 05 00 fa ff 48 65 6c 6c 6f 00")]], [b"Hello"]),
    ("7.2.3.4 a DEFLATE block with BFINAL set to 1 (then the 0x00 octet the RFC adds)",
     [[_h("f3 48 cd c9 c9 07 00 00")]], [b"Hello"]),
    ("7.2.3.4 a BFINAL message, then a message that starts a new stream",
     [[_h("f3 48 cd c9 c9 07 00 00")], [_h("f2 48 cd c9 c9 07 00")]], [b"Hello", b"Hello"]),
    ("7.2.3.5 two DEFLATE blocks in one message",
     [[_h("f2 48 05 00 00 00 ff ff ca c9 c9 07 00")]], [b"Hello"]),
    ("7.2.3.6 an empty message (0x00)", [[_h("00")]], [b""]),
    ("a message ending with a bare BFINAL block (Z_FINISH), then another",
     [[_finish_only(b"Hello, final")], [_h("f2 48 cd c9 c9 07 00")]], [b"Hello, final", b"Hello"]),
]


def _rfc_vector(frames_per_msg, want):
    def run(port):
        kw = dict(cmwb=True)
        c, ans = pmdraw.connect(port, [pmdraw.offer(**kw)])
        try:
            a = pmdraw.validate_answer(ans, **kw)
            if a is None:
                fail("offer declined")
            inf = pmdraw.Inflater(a)
            for i, (parts, w) in enumerate(zip(frames_per_msg, want)):
                c.send(b"".join(frame(OP_TEXT if j == 0 else OP_CONT, p, fin=(j == len(parts) - 1),
                                      rsv=pmdraw.RSV1 if j == 0 else 0)
                                for j, p in enumerate(parts)))
                try:
                    pmdraw.expect_echo(c, inf, OP_TEXT, w)
                except PmdError as e:
                    fail(f"message {i + 1} (payload {b''.join(parts).hex(' ')}): {e}")
            pmdraw.close_clean(c)
        finally:
            c.close()
    return run


for _i, (_what, _frames, _want) in enumerate(RFC_VECTORS, 1):
    add(f"12.11.{_i}", f"RFC 7692 {_what}", _rfc_vector(_frames, _want))


# ---------------------------------------------------------------------------
# 13: parameters

def probe_messages():
    """Messages that catch a window or context violation: the same random
    block repeated at distances of 300 B, 2 KiB and 20 KiB (a server
    deflating with a larger window than agreed references them, and our
    smaller inflater then fails), a message sent twice (client context
    takeover), text, and short ones."""
    r = pmdraw._rng("probe")
    blk = r.randbytes(200)
    far = (blk + r.randbytes(100) + blk + r.randbytes(2000) + blk + r.randbytes(20000) + blk
           + blk)
    text = pmdraw.messages("ascii", 3000, 1)[0]
    utf = pmdraw.messages("utf8", 700, 1)[0]
    return [(OP_BINARY, far), (OP_TEXT, text), (OP_TEXT, text), (OP_TEXT, utf),
            (OP_TEXT, b"short"), (OP_BINARY, b""), (OP_TEXT, pmdraw.messages("repetitive", 64, 1)[0]),
            (OP_BINARY, far)]


PROBES = probe_messages()


def echo_probes(c, a, frag=0):
    d = pmdraw.Deflater(a) if a is not None else None
    inf = pmdraw.Inflater(a) if a is not None else None
    for i, (op, m) in enumerate(PROBES):
        c.send(pmdraw.data_frames(m, op, d, frag=frag))
        try:
            pmdraw.expect_echo(c, inf, op, m, timeout=T)
        except PmdError as e:
            fail(f"probe {i + 1} ({len(m)} B, op {op}) with {a!r}: {e}")


def _single_offer(kw):
    def run(port):
        o = pmdraw.offer(**kw)
        c, ans = pmdraw.connect(port, [o])
        try:
            try:
                a = pmdraw.validate_answer(ans, **kw)
            except PmdError as e:
                fail(f"offer {o!r}: invalid answer per RFC 7692: {e}")
            want = pmdraw.expected_answer(**kw)
            if a is None:
                if want is not None:
                    fail(f"offer {o!r} declined, expected an answer {want}")
            else:
                if want is None:
                    fail(f"offer {o!r} answered {ans!r}; policy: decline (no "
                         f"client_max_window_bits)")
                got = pmdraw.answer_tuple(a)
                if got != want:
                    fail(f"offer {o!r} answered {ans!r} = {got}, documented policy gives {want}")
            echo_probes(c, a, frag=[700, 1, 5000])
            pmdraw.close_clean(c)
            return f"{o} -> {ans}"
        finally:
            c.close()
    return run


_groups = [(False, False), (True, False), (False, True), (True, True)]
for _g, (_snct, _cnct) in enumerate(_groups, 1):
    _i = 0
    for _smwb in [None] + list(range(8, 16)):
        for _cmwb in [None, True] + list(range(8, 16)):
            _i += 1
            _kw = dict(snct=_snct, cnct=_cnct, smwb=_smwb, cmwb=_cmwb)
            add(f"13.{_g}.{_i}", f"offer {pmdraw.offer(**_kw)!r}", _single_offer(_kw))


def _declined(offers, after_rsv1=False):
    """The handshake succeeds (101) without Sec-WebSocket-Extensions, and
    the connection works uncompressed."""
    def run(port):
        c, ans = pmdraw.connect(port, offers)
        try:
            if ans is not None:
                fail(f"offers {offers!r} must be declined, server answered {ans!r}")
            echo_probes(c, None, frag=[1000, 3])
            if after_rsv1:
                c.send(frame(OP_TEXT, b"\x00", rsv=pmdraw.RSV1))
                pmdraw.expect_close(c, 1002)
            else:
                pmdraw.close_clean(c)
            return "declined"
        finally:
            c.close()
    return run


INVALID = [
    ("unknown parameter", "permessage-deflate; foo; client_max_window_bits"),
    ("unknown parameter with a value", "permessage-deflate; client_max_window_bits; x=1"),
    ("duplicate client_max_window_bits", "permessage-deflate; client_max_window_bits; client_max_window_bits"),
    ("duplicate client_max_window_bits with values",
     "permessage-deflate; client_max_window_bits=10; client_max_window_bits=10"),
    ("duplicate server_no_context_takeover",
     "permessage-deflate; server_no_context_takeover; server_no_context_takeover; client_max_window_bits"),
    ("duplicate client_no_context_takeover",
     "permessage-deflate; client_no_context_takeover; client_max_window_bits; client_no_context_takeover"),
    ("duplicate server_max_window_bits",
     "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10; client_max_window_bits"),
    ("server_max_window_bits=7", "permessage-deflate; server_max_window_bits=7; client_max_window_bits"),
    ("server_max_window_bits=16", "permessage-deflate; server_max_window_bits=16; client_max_window_bits"),
    ("server_max_window_bits=abc", "permessage-deflate; server_max_window_bits=abc; client_max_window_bits"),
    ("server_max_window_bits=\"abc\"",
     "permessage-deflate; server_max_window_bits=\"abc\"; client_max_window_bits"),
    ("server_max_window_bits=08", "permessage-deflate; server_max_window_bits=08; client_max_window_bits"),
    ("server_max_window_bits=+9", "permessage-deflate; server_max_window_bits=+9; client_max_window_bits"),
    ("server_max_window_bits=0", "permessage-deflate; server_max_window_bits=0; client_max_window_bits"),
    ("server_max_window_bits=1e1", "permessage-deflate; server_max_window_bits=1e1; client_max_window_bits"),
    ("server_max_window_bits=115", "permessage-deflate; server_max_window_bits=115; client_max_window_bits"),
    ("server_max_window_bits without a value",
     "permessage-deflate; server_max_window_bits; client_max_window_bits"),
    ("value on server_no_context_takeover",
     "permessage-deflate; server_no_context_takeover=1; client_max_window_bits"),
    ("value on client_no_context_takeover",
     "permessage-deflate; client_no_context_takeover=true; client_max_window_bits"),
    ("client_max_window_bits=16", "permessage-deflate; client_max_window_bits=16"),
    ("client_max_window_bits=7", "permessage-deflate; client_max_window_bits=7"),
    ("client_max_window_bits=08", "permessage-deflate; client_max_window_bits=08"),
    ("client_max_window_bits=abc", "permessage-deflate; client_max_window_bits=abc"),
    ("client_max_window_bits=-10", "permessage-deflate; client_max_window_bits=-10"),
]

for _i, (_what, _o) in enumerate(INVALID, 1):
    add(f"13.5.{_i}", f"invalid offer ({_what}): {_o!r} declined, not 400", _declined([_o]))
add(f"13.5.{len(INVALID) + 1}", "invalid offers only (two of them): declined; then RSV1 -> 1002",
    _declined(["permessage-deflate; client_max_window_bits=16, permessage-deflate; bogus; "
               "client_max_window_bits"], after_rsv1=True))
add(f"13.5.{len(INVALID) + 2}", "offer without client_max_window_bits: declined; then RSV1 -> 1002",
    _declined(["permessage-deflate; server_no_context_takeover"], after_rsv1=True))


def _multi(offers, want_kw, want_tuple=None):
    """Several offers (header values, one line each); the answer must be the
    one for want_kw (the first acceptable offer)."""
    def run(port):
        c, ans = pmdraw.connect(port, offers)
        try:
            try:
                a = pmdraw.validate_answer(ans, **want_kw)
            except PmdError as e:
                fail(f"offers {offers!r}: answer invalid for the offer that should win "
                     f"({pmdraw.offer(**want_kw)!r}): {e}")
            if a is None:
                fail(f"offers {offers!r} all declined; expected the answer to "
                     f"{pmdraw.offer(**want_kw)!r}")
            want = want_tuple or pmdraw.expected_answer(**want_kw)
            got = pmdraw.answer_tuple(a)
            if got != want:
                fail(f"offers {offers!r} answered {ans!r} = {got}, expected {want}")
            echo_probes(c, a, frag=[300, 4000])
            pmdraw.close_clean(c)
            return f"-> {ans}"
        finally:
            c.close()
    return run


MULTI = [
    ("first invalid (unknown parameter), second valid: second accepted",
     ["permessage-deflate; foo; client_max_window_bits, "
      "permessage-deflate; server_max_window_bits=9; client_max_window_bits=9"],
     dict(smwb=9, cmwb=9)),
    ("first invalid (server_max_window_bits=16), second valid, on separate header lines",
     ["permessage-deflate; server_max_window_bits=16; client_max_window_bits",
      "permessage-deflate; client_no_context_takeover; client_max_window_bits=12"],
     dict(cnct=True, cmwb=12)),
    ("first invalid (duplicate), second valid",
     ["permessage-deflate; client_max_window_bits; client_max_window_bits, "
      "permessage-deflate; server_no_context_takeover; client_max_window_bits"],
     dict(snct=True, cmwb=True)),
    ("first invalid (value on server_no_context_takeover), second valid",
     ["permessage-deflate; server_no_context_takeover=x; client_max_window_bits, "
      "permessage-deflate; server_max_window_bits=8; client_max_window_bits=8"],
     dict(smwb=8, cmwb=8)),
    ("first declinable (no client_max_window_bits), second valid",
     ["permessage-deflate; server_max_window_bits=10, "
      "permessage-deflate; server_max_window_bits=11; client_max_window_bits"],
     dict(smwb=11, cmwb=True)),
    ("two valid offers: the first wins",
     ["permessage-deflate; server_max_window_bits=9; client_max_window_bits=8, "
      "permessage-deflate; client_no_context_takeover; client_max_window_bits"],
     dict(smwb=9, cmwb=8)),
    ("Autobahn 13.7: (snct, smwb=8), (snct), () all with client_max_window_bits: the first wins",
     ["permessage-deflate; server_no_context_takeover; server_max_window_bits=8; "
      "client_max_window_bits, permessage-deflate; server_no_context_takeover; "
      "client_max_window_bits, permessage-deflate; client_max_window_bits"],
     dict(snct=True, smwb=8, cmwb=True)),
    ("an unknown extension first, then permessage-deflate",
     ["x-webkit-deflate-frame; no_context_takeover, permessage-deflate; client_max_window_bits"],
     dict(cmwb=True)),
    ("invalid, declinable, then valid",
     ["permessage-deflate; client_max_window_bits=7",
      "permessage-deflate",
      "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
      "server_max_window_bits=15; client_max_window_bits=15"],
     dict(snct=True, cnct=True, smwb=15, cmwb=15)),
    ("quoted parameter values (RFC 7692 7.1.2: quoted-string allowed)",
     ["permessage-deflate; server_max_window_bits=\"12\"; client_max_window_bits=\"9\""],
     dict(smwb=12, cmwb=9)),
    ("whitespace around ';' and '=' (RFC 6455 9.1: implied *LWS)",
     ["permessage-deflate ; client_max_window_bits = 9 ;server_max_window_bits=\t10"],
     dict(smwb=10, cmwb=9)),
    ("empty list elements around the offer",
     [" , permessage-deflate; client_max_window_bits ,"],
     dict(cmwb=True)),
]
for _i, (_what, _offers, _kw) in enumerate(MULTI, 1):
    add(f"13.6.{_i}", _what, _multi(_offers, _kw))


# ---------------------------------------------------------------------------
# runner (as run_conformance.py)

def run_case(port, cid, desc, fn):
    t0 = time.monotonic()
    result = {"id": cid, "description": desc}
    try:
        note = fn(port)
        result["result"] = "pass"
        if note:
            result["note"] = note
    except AssertionError as e:  # PmdError, and handshake failures from wsraw
        result["result"] = "fail"
        result["detail"] = str(e)
    except Exception as e:  # noqa: BLE001 - any error is a failed case
        result["result"] = "fail"
        result["detail"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc(limit=4)
    result["ms"] = round((time.monotonic() - t0) * 1000, 1)
    return result


def main():
    # the big streams two at a time (2 cores)
    return wsraw.run_main(
        __doc__, CASES, SERVER_ARGS, run_case, _single_offer(dict(cmwb=True)),
        report="conformance-deflate-report.json", jobs=4, big_jobs=2,
        port_help="use an already running server (with --deflate)",
        family=lambda cid: ".".join(cid.split(".")[:2]), order=wsraw.case_key,
        label=lambda s: f"{s:>6}", alive_desc="server alive afterwards: /healthz and a fresh "
        "compressed echo")


if __name__ == "__main__":
    sys.exit(main())
