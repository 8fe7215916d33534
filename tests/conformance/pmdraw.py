"""permessage-deflate (RFC 7692) on raw sockets, for wshub's conformance and
integration tests: offer headers, a strict parser/validator for the
server's Sec-WebSocket-Extensions answer, a client-side deflater and an
inflater for the server's frames, both set up with exactly the agreed
parameters. Standard library only (zlib); run with /usr/bin/python3.
"""

import os
import re
import time
import zlib

import wsraw
from wsraw import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, frame

TAIL = b"\x00\x00\xff\xff"
RSV1 = 4  # wsraw's rsv value for RSV1

# the server's policy (docs/permessage-deflate.md, wsh_pmd_config defaults)
SERVER_CLIENT_WINDOW_CAP = 10
SERVER_MIN_SIZE = 64

KNOWN = ("server_no_context_takeover", "client_no_context_takeover",
         "server_max_window_bits", "client_max_window_bits")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class PmdError(AssertionError):
    pass


# ---------------------------------------------------------------------------
# offers and answers

def offer(snct=False, cnct=False, smwb=None, cmwb=None):
    """An offer string. smwb/cmwb: None = absent, True = valueless (only
    meaningful for client_max_window_bits), an int or a str = that value."""
    parts = ["permessage-deflate"]
    if snct:
        parts.append("server_no_context_takeover")
    if cnct:
        parts.append("client_no_context_takeover")
    for name, v in (("server_max_window_bits", smwb), ("client_max_window_bits", cmwb)):
        if v is None:
            continue
        parts.append(name if v is True else f"{name}={v}")
    return "; ".join(parts)


def parse_extensions(value):
    """Parse a Sec-WebSocket-Extensions value into [(name, [(param, value|None)])].
    Values may be quoted (unquoted here). Raises PmdError on bad syntax."""
    out = []
    if value is None:
        return out
    for elem in value.split(","):
        elem = elem.strip()
        if not elem:
            continue
        parts = [p.strip() for p in elem.split(";")]
        name = parts[0]
        if not _TOKEN.match(name):
            raise PmdError(f"bad extension token {name!r} in {value!r}")
        params = []
        for p in parts[1:]:
            k, eq, v = p.partition("=")
            k = k.strip()
            if not _TOKEN.match(k):
                raise PmdError(f"bad parameter name {k!r} in {value!r}")
            if eq:
                v = v.strip()
                if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
                    v = v[1:-1]
                if not _TOKEN.match(v):
                    raise PmdError(f"bad parameter value {v!r} in {value!r}")
                params.append((k, v))
            else:
                params.append((k, None))
        out.append((name, params))
    return out


class Agreed:
    """The parameters in force on a connection (window bits 15 when absent)."""

    def __init__(self, snct=False, cnct=False, smwb=15, cmwb=15, raw=None):
        self.snct = snct
        self.cnct = cnct
        self.smwb = smwb
        self.cmwb = cmwb
        self.raw = raw

    def __repr__(self):
        return (f"Agreed(snct={self.snct}, cnct={self.cnct}, smwb={self.smwb}, "
                f"cmwb={self.cmwb}, raw={self.raw!r})")


def _bits(v, what, raw):
    if v is None or not re.fullmatch(r"[1-9][0-9]?", v) or not 8 <= int(v) <= 15:
        raise PmdError(f"{what}={v!r} is not exactly 8..15 in {raw!r}")
    return int(v)


def validate_answer(value, snct=False, cnct=False, smwb=None, cmwb=None):
    """RFC 7692 validity of the server's answer to ONE offer with the given
    parameters (as in offer()). Returns Agreed, or None for no extension.
    Raises PmdError on anything RFC 7692 forbids."""
    if value is None:
        return None
    exts = parse_extensions(value)
    if not exts:
        raise PmdError(f"empty Sec-WebSocket-Extensions {value!r}")
    if len(exts) != 1:
        raise PmdError(f"more than one extension in the answer: {value!r}")
    name, params = exts[0]
    if name != "permessage-deflate":
        raise PmdError(f"answer names an extension we did not offer: {value!r}")
    seen = {}
    for k, v in params:
        if k not in KNOWN:
            raise PmdError(f"unknown parameter {k!r} in the answer {value!r}")
        if k in seen:
            raise PmdError(f"duplicate parameter {k!r} in the answer {value!r}")
        seen[k] = v
    a = Agreed(raw=value)
    for k in ("server_no_context_takeover", "client_no_context_takeover"):
        if k in seen and seen[k] is not None:
            raise PmdError(f"{k} with a value in {value!r}")
    a.snct = "server_no_context_takeover" in seen
    a.cnct = "client_no_context_takeover" in seen
    if snct and not a.snct:
        raise PmdError(f"offer had server_no_context_takeover, answer lacks it: {value!r}")
    if "server_max_window_bits" in seen:
        a.smwb = _bits(seen["server_max_window_bits"], "server_max_window_bits", value)
        if smwb is not None and smwb is not True and a.smwb > int(smwb):
            raise PmdError(f"server_max_window_bits {a.smwb} above the offered {smwb}: {value!r}")
    elif smwb is not None:
        # 7.1.2.1: a server accepting an offer with server_max_window_bits
        # answers with it
        raise PmdError(f"offer had server_max_window_bits={smwb}, answer lacks it: {value!r}")
    if "client_max_window_bits" in seen:
        if cmwb is None:
            raise PmdError(f"client_max_window_bits in the answer but not offered (7.1.2.2): {value!r}")
        a.cmwb = _bits(seen["client_max_window_bits"], "client_max_window_bits", value)
        if cmwb is not True and a.cmwb > int(cmwb):
            raise PmdError(f"client_max_window_bits {a.cmwb} above the offered {cmwb}: {value!r}")
    return a


def expected_answer(snct=False, cnct=False, smwb=None, cmwb=None):
    """What wshub's documented policy answers to a valid single offer, as
    (snct, cnct, smwb, cmwb) with None for an absent window parameter, or
    None for a decline."""
    if cmwb is None:
        return None  # can't bound the client's window
    c = SERVER_CLIENT_WINDOW_CAP if cmwb is True else min(int(cmwb), SERVER_CLIENT_WINDOW_CAP)
    s = None if smwb is None else int(smwb)
    return (True, bool(cnct), s, c)


def answer_tuple(a):
    return (a.snct, a.cnct, None if "server_max_window_bits" not in a.raw else a.smwb,
            None if "client_max_window_bits" not in a.raw else a.cmwb)


def ext_header(*offers):
    """Request header lines: one Sec-WebSocket-Extensions line per argument
    (each argument a full header value)."""
    return b"".join(f"Sec-WebSocket-Extensions: {o}\r\n".encode() for o in offers)


# ---------------------------------------------------------------------------
# compression

class Deflater:
    """Client side: compresses messages with the agreed client window and
    context takeover (RFC 7692 7.2.1)."""

    def __init__(self, agreed, level=6, mem_level=8):
        # zlib refuses raw windowBits 8; a 9-bit deflater never emits a
        # distance over 250 (512 - MIN_LOOKAHEAD), so it fits an 8-bit window
        self.wbits = max(9, agreed.cmwb)
        self.takeover = not agreed.cnct
        self.level = level
        self.mem_level = mem_level
        self.z = None

    def compress(self, data):
        if self.z is None or not self.takeover:
            self.z = zlib.compressobj(self.level, zlib.DEFLATED, -self.wbits, self.mem_level)
        out = self.z.compress(data) + self.z.flush(zlib.Z_SYNC_FLUSH)
        if not out.endswith(TAIL):
            raise PmdError("zlib sync flush did not end with 00 00 ff ff")
        out = out[:-4]
        return out if out else b"\x00"


class Inflater:
    """For the server's messages: an inflater of exactly the agreed server
    window; with server_no_context_takeover a fresh one per message, so a
    server that kept its context would be caught (distance too far back)."""

    def __init__(self, agreed):
        self.wbits = agreed.smwb
        self.takeover = not agreed.snct
        self.z = None

    def inflate(self, data):
        """Inflate one message (the trailer is appended here). zlib resolves a
        distance from its window OR from the output of the current call, so
        a single call would accept any distance: output is taken in steps of
        STEP bytes, so a reference beyond the agreed window (+ STEP) fails."""
        if self.z is None or not self.takeover:
            self.z = zlib.decompressobj(-self.wbits)
        step = self.STEP if self.wbits < 15 else 0
        out = []
        tail = data + TAIL
        try:
            while True:
                o = self.z.decompress(tail, step)
                tail = self.z.unconsumed_tail
                out.append(o)
                if not step or (not o and not tail):
                    break
        except zlib.error as e:
            raise PmdError(f"server's compressed message does not inflate with a "
                           f"{self.wbits}-bit window"
                           f"{'' if self.takeover else ' and no context takeover'}: {e}") from None
        if self.z.unused_data:
            raise PmdError(f"{len(self.z.unused_data)} bytes after the final deflate block")
        if self.z.eof:
            self.z = None  # a BFINAL block ends the stream (7.2.3.4)
        return b"".join(out)

    STEP = 32


# ---------------------------------------------------------------------------
# connections

def connect(port, offers, path="/echo", timeout=5.0):
    """Handshake with the given offers (list of full header values, one
    header line each). Returns (Conn, answer value or None)."""
    c = wsraw.Conn("127.0.0.1", port, timeout=timeout)
    try:
        c.handshake(path, extra=ext_header(*offers))
    except BaseException:
        c.close()
        raise
    return c, c.response.header("sec-websocket-extensions")


def data_frames(payload, op, compress_with=None, frag=0):
    """Client frames for one message: compressed when compress_with (a
    Deflater) is given (RSV1 on the first frame only), split into frames of
    `frag` bytes (0 = one frame). `frag` may also be a list of sizes, cycled."""
    wire = compress_with.compress(payload) if compress_with is not None else payload
    rsv = RSV1 if compress_with is not None else 0
    if not frag:
        return frame(op, wire, rsv=rsv)
    sizes = frag if isinstance(frag, (list, tuple)) else [frag]
    out = []
    i = 0
    k = 0
    while True:
        n = sizes[k % len(sizes)]
        k += 1
        chunk = wire[i:i + n]
        i += n
        last = i >= len(wire)
        out.append(frame(op if not out else OP_CONT, chunk, fin=last, rsv=rsv if not out else 0))
        if last:
            return b"".join(out)


def recv_message(c, timeout=5.0):
    """One whole message from the server with per-frame checks: unmasked,
    no RSV2/RSV3, RSV1 only on the first frame. Returns (op, compressed,
    wire_payload, nframes) or the close Frame. Pongs go to c.pongs."""
    deadline = time.monotonic() + timeout * wsraw.MULT
    op = None
    comp = False
    parts = []
    while True:
        f = c.recv_frame(max(0.001, deadline - time.monotonic()) / wsraw.MULT)
        if f.masked:
            raise PmdError(f"server sent a masked frame: {f!r}")
        if f.rsv & 3:
            raise PmdError(f"server set RSV2/RSV3: {f!r}")
        if f.opcode == OP_PONG:
            if f.rsv:
                raise PmdError(f"server set RSV1 on a pong: {f!r}")
            c.pongs.append(f)
            continue
        if f.opcode == OP_PING:
            raise PmdError(f"unexpected ping {f!r}")
        if f.opcode == OP_CLOSE:
            if f.rsv:
                raise PmdError(f"server set RSV1 on a close frame: {f!r}")
            if op is not None:
                raise PmdError(f"close frame in the middle of a message: {f!r}")
            return f
        if op is None:
            if f.opcode not in (OP_TEXT, OP_BINARY):
                raise PmdError(f"message starts with opcode {f.opcode}: {f!r}")
            op = f.opcode
            comp = bool(f.rsv & RSV1)
        else:
            if f.opcode != OP_CONT:
                raise PmdError(f"expected a continuation, got {f!r}")
            if f.rsv:
                raise PmdError(f"server set RSV1 on a continuation frame: {f!r}")
        parts.append(f.payload)
        if f.fin:
            return op, comp, b"".join(parts), len(parts)


def diff(got, want):
    if len(got) != len(want):
        return f"length {len(got)} != expected {len(want)}"
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return f"first difference at byte {i}: {a:#x} != {b:#x}"
    return "equal"


def expect_echo(c, inflater, op, payload, timeout=5.0, min_size=SERVER_MIN_SIZE):
    """Read one message and require it is the exact echo of (op, payload);
    compressed iff the connection has deflate (inflater given) and the
    message is at least min_size bytes (the server's policy)."""
    m = recv_message(c, timeout)
    if not isinstance(m, tuple):
        raise PmdError(f"expected an echo of {len(payload)} bytes (op {op}), got close "
                       f"{m.close_code()} {m.payload[2:120]!r}")
    mop, comp, wire, _ = m
    if mop != op:
        raise PmdError(f"echo opcode {mop} != {op}")
    want_comp = inflater is not None and len(payload) >= min_size
    if comp != want_comp:
        raise PmdError(f"echo of {len(payload)} bytes: RSV1={int(comp)}, expected "
                       f"{int(want_comp)} (compress iff deflate agreed and >= {min_size} bytes)")
    got = inflater.inflate(wire) if comp else wire
    if got != payload:
        raise PmdError(f"echo differs after inflating: {diff(got, payload)}")
    return len(wire)


def expect_close(c, want, timeout=5.0, reply=True, eof_timeout=6.0):
    """The server fails the connection with close code `want` (possibly after
    data messages, which are returned), then closes TCP."""
    seen = []
    deadline = time.monotonic() + timeout * wsraw.MULT
    while True:
        try:
            m = recv_message(c, max(0.001, deadline - time.monotonic()) / wsraw.MULT)
        except wsraw.ReadTimeout:
            raise PmdError(f"no close frame within {timeout}s (expected {want})") from None
        except wsraw.PeerClosed as e:
            raise PmdError(f"server closed TCP ({e.how}) without a close frame "
                           f"(expected {want})") from None
        if isinstance(m, tuple):
            seen.append(m)
            continue
        code = m.close_code()
        if code != want:
            raise PmdError(f"close code {code} (reason {m.payload[2:120]!r}), expected {want}")
        break
    if reply:
        c.try_send(frame(OP_CLOSE, m.payload[:2]))
    how = c.wait_eof(eof_timeout)
    if how is None:
        raise PmdError(f"server did not close TCP within {eof_timeout}s after close {want}")
    return seen


def close_clean(c, code=1000):
    c.send_close(code)
    m = recv_message(c, 5.0)
    if isinstance(m, tuple):
        raise PmdError(f"expected the close reply, got a message of {len(m[2])} bytes")
    if m.close_code() != code:
        raise PmdError(f"close reply {m.close_code()} != {code}")
    if c.wait_eof(5.0) is None:
        raise PmdError("server did not close TCP after the close handshake")


# ---------------------------------------------------------------------------
# payloads

def _rng(seed):
    import random
    return random.Random(seed)


def corpus(kind, size, seed=1):
    """Deterministic test data of about `size` bytes, by kind:
    ascii, binary, repetitive, json, utf8."""
    r = _rng(f"{kind}-{seed}")
    if kind == "binary":
        # random-ish: mostly incompressible with some repeated runs
        blocks = []
        n = 0
        while n < size:
            if blocks and r.random() < 0.3:
                b = blocks[r.randrange(len(blocks))]
            else:
                b = r.randbytes(r.randrange(16, 600))
            blocks.append(b)
            n += len(b)
        return b"".join(blocks)[:size]
    if kind == "repetitive":
        unit = b"All work and no play makes Jack a dull boy. "
        return (unit * (size // len(unit) + 1))[:size]
    words = ("the of and to in is that for it as was with be by on not he this are or "
             "his from at which but have an they you were her she there been one all "
             "would their we him when who more no if out so said what up its about into "
             "than them can only other new some could time these two may then do first "
             "any my now such like our over man me even most made after also did many "
             "before must through back years where much your way well down should "
             "because each just those people how too little state good very make world "
             "still own see men work long get here between both life being under never").split()
    if kind == "ascii":
        out = []
        n = 0
        while n < size:
            w = r.choice(words)
            if r.random() < 0.08:
                w = w.capitalize() + r.choice([".", ",", ";", "!", "?"])
            out.append(w)
            n += len(w) + 1
        return " ".join(out).encode()[:size]
    if kind == "json":
        out = ["["]
        n = 1
        i = 0
        while n < size:
            rec = ('{"id":%d,"name":"%s %s","email":"%s@example.com","active":%s,'
                   '"score":%.4f,"tags":["%s","%s"],"geo":{"lat":%.6f,"lon":%.6f}},\n'
                   % (i, r.choice(words).capitalize(), r.choice(words).capitalize(),
                      r.choice(words), r.choice(["true", "false"]), r.random() * 100,
                      r.choice(words), r.choice(words), r.uniform(-90, 90), r.uniform(-180, 180)))
            out.append(rec)
            n += len(rec)
            i += 1
        return "".join(out).encode()[:size]
    if kind == "utf8":
        alphabet = ("Grüße, schöne Straße äöü ÄÖÜ ß — «ελληνικά» Ωμέγα; русский текст; "
                    "日本語のテキスト、漢字とかな。中文字符。한국어 텍스트. "
                    "emoji 🙂🚀🌍✓ ∑∫√∞ ≠ ≤ ≥ € £ ¥ 𝄞 𐍈 ")
        out = []
        n = 0
        while n < size:
            k = r.randrange(3, 40)
            s = alphabet[r.randrange(len(alphabet) - k):][:k]
            out.append(s)
            n += len(s.encode())
        return "".join(out).encode()
    raise ValueError(kind)


def utf8_slice(data, start, n):
    """About n bytes of valid UTF-8 from data at/after start, padded with
    ASCII to exactly n bytes."""
    while start < len(data) and (data[start] & 0xC0) == 0x80:
        start += 1
    end = min(len(data), start + n)
    while end > start and end < len(data) and (data[end] & 0xC0) == 0x80:
        end -= 1
    s = data[start:end]
    s += b"." * (n - len(s))
    s.decode("utf-8")
    return s


def messages(kind, n, count, seed=1):
    """`count` messages of exactly n bytes of `kind`, each a different slice
    of the corpus (so consecutive messages share some content, as in the
    Autobahn 12.x cases)."""
    data = corpus(kind, max(4 * n, 65536) + 64, seed)
    r = _rng(f"{kind}-{n}-{seed}-offsets")
    out = []
    for _ in range(count):
        start = r.randrange(0, len(data) - n) if len(data) > n else 0
        if kind in ("ascii", "repetitive", "json", "utf8"):
            out.append(utf8_slice(data, start, n))
        else:
            out.append(data[start:start + n])
    return out


def is_text(kind):
    return kind != "binary"


def random_bytes(n):
    return os.urandom(n)
