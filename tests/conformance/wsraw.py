"""Raw-socket WebSocket client for wshub conformance and integration tests.

Sends exact bytes (reserved bits, bad opcodes, chopped writes, invalid UTF-8,
precise fragmentation), reads frames, and observes who closes the TCP
connection. Standard library only; run with /usr/bin/python3.
"""

import base64
import hashlib
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

# Scales every wait (sanitizer builds are slower), as the CTest timeouts do.
MULT = float(os.environ.get("WSH_TEST_TIMEOUT_MULTIPLIER", "1") or "1")


class PeerClosed(Exception):
    """The peer closed the TCP connection (EOF or RST)."""

    def __init__(self, how):
        super().__init__(how)
        self.how = how  # "eof" or "reset"


class ReadTimeout(Exception):
    """Nothing (or not enough) arrived before the deadline."""


class Frame:
    __slots__ = ("fin", "rsv", "opcode", "payload", "masked")

    def __init__(self, fin, rsv, opcode, payload, masked=False):
        self.fin = fin
        self.rsv = rsv
        self.opcode = opcode
        self.payload = payload
        self.masked = masked

    def close_code(self):
        if self.opcode != OP_CLOSE:
            return None
        if len(self.payload) < 2:
            return 1005
        return struct.unpack("!H", self.payload[:2])[0]

    def __repr__(self):
        p = bytes(self.payload[:40])
        more = "..." if len(self.payload) > 40 else ""
        return (f"Frame(fin={int(self.fin)} rsv={self.rsv} op={self.opcode} "
                f"len={len(self.payload)} {p!r}{more})")


def mask_bytes(data, key):
    """XOR data with the 4-byte key (fast for large payloads)."""
    n = len(data)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def frame(opcode, payload=b"", fin=True, rsv=0, mask=True, key=None, length=None):
    """Encode one client frame. `length` overrides the declared payload length
    (for frames deliberately left incomplete); `rsv` is a 3-bit value
    (4 = RSV1, 2 = RSV2, 1 = RSV3)."""
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    n = len(payload) if length is None else length
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    if key is None:
        key = os.urandom(4)
    return head + key + mask_bytes(payload, key)


def close_payload(code=None, reason=b""):
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode()
    return struct.pack("!H", code) + reason


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


class HttpResponse:
    def __init__(self, status, reason, headers, raw, body=b""):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (lower-case name, value)
        self.raw = raw
        self.body = body

    def header(self, name):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def __repr__(self):
        return f"HttpResponse({self.status} {self.reason!r} {self.headers!r} body={self.body[:80]!r})"


def parse_head(head):
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ValueError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        k, _, v = line.partition(":")
        headers.append((k.strip().lower(), v.strip()))
    return status, reason, headers


class Conn:
    """One TCP connection to the server, with a receive buffer."""

    def __init__(self, host, port, timeout=5.0, rcvbuf=None):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout * MULT)
        self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.closed_by_peer = None  # "eof" / "reset" once seen
        self.response = None
        self.pongs = []  # pong frames seen while waiting for other frames
        self.extra_bytes = 0

    # ---- sending -----------------------------------------------------------
    def send(self, data, chop=None, delay=0.0):
        """Write data, optionally in chops of `chop` bytes with `delay` s between."""
        if not chop:
            self.sock.sendall(data)
            return
        mv = memoryview(data)
        for i in range(0, len(data), chop):
            self.sock.sendall(mv[i:i + chop])
            if delay:
                time.sleep(delay)

    def try_send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def send_frame(self, opcode, payload=b"", **kw):
        chop = kw.pop("chop", None)
        delay = kw.pop("delay", 0.0)
        self.send(frame(opcode, payload, **kw), chop=chop, delay=delay)

    def send_close(self, code=None, reason=b""):
        return self.try_send(frame(OP_CLOSE, close_payload(code, reason)))

    # ---- receiving ---------------------------------------------------------
    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ReadTimeout("deadline")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 20)
        except socket.timeout:
            raise ReadTimeout("timeout") from None
        except ConnectionResetError:
            self.closed_by_peer = "reset"
            raise PeerClosed("reset") from None
        if not chunk:
            self.closed_by_peer = "eof"
            raise PeerClosed("eof")
        self.buf += chunk

    def _need(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)

    def recv_frame(self, timeout=5.0):
        deadline = time.monotonic() + timeout * MULT
        self._need(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            self._need(4, deadline)
            n = struct.unpack_from("!H", self.buf, 2)[0]
            pos = 4
        elif n == 127:
            self._need(10, deadline)
            n = struct.unpack_from("!Q", self.buf, 2)[0]
            pos = 10
        masked = bool(b1 & 0x80)
        key = None
        if masked:
            self._need(pos + 4, deadline)
            key = bytes(self.buf[pos:pos + 4])
            pos += 4
        self._need(pos + n, deadline)
        payload = bytes(self.buf[pos:pos + n])
        del self.buf[:pos + n]
        if masked:
            payload = mask_bytes(payload, key)
        return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, payload, masked)

    def recv_message(self, timeout=5.0, answer_pings=False):
        """Reassemble one data message. Pongs seen meanwhile go to self.pongs.
        Returns (opcode, payload) or the close Frame if a close arrives."""
        deadline = time.monotonic() + timeout * MULT
        op = None
        parts = []
        while True:
            f = self.recv_frame(max(0.001, deadline - time.monotonic()) / MULT)
            if f.opcode == OP_PONG:
                self.pongs.append(f)
                continue
            if f.opcode == OP_PING:
                if answer_pings:
                    self.try_send(frame(OP_PONG, f.payload))
                continue
            if f.opcode == OP_CLOSE:
                return f
            if op is None:
                op = f.opcode
            parts.append(f.payload)
            if f.fin:
                return op, b"".join(parts)

    def wait_close(self, timeout=5.0):
        """Read frames until a close frame; return (close_frame, data_frames)."""
        deadline = time.monotonic() + timeout * MULT
        seen = []
        while True:
            f = self.recv_frame(max(0.001, deadline - time.monotonic()) / MULT)
            if f.opcode == OP_CLOSE:
                return f, seen
            seen.append(f)

    def wait_eof(self, timeout=5.0):
        """Wait for the peer to close TCP. Bytes that arrive meanwhile are
        counted in self.extra_bytes (after a close frame there should be none).
        Returns "eof"/"reset", or None on timeout."""
        self.extra_bytes = len(self.buf)
        self.buf.clear()
        if self.closed_by_peer:
            return self.closed_by_peer
        deadline = time.monotonic() + timeout * MULT
        while True:
            try:
                self._fill(deadline)
                self.extra_bytes += len(self.buf)
                self.buf.clear()
            except PeerClosed as e:
                return e.how
            except ReadTimeout:
                return None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # ---- HTTP --------------------------------------------------------------
    def read_http_response(self, timeout=5.0, body=True):
        """Read a response head (and a Content-Length body)."""
        deadline = time.monotonic() + timeout * MULT
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        i = self.buf.index(b"\r\n\r\n")
        head = bytes(self.buf[:i])
        del self.buf[:i + 4]
        status, reason, headers = parse_head(head)
        resp = HttpResponse(status, reason, headers, head)
        if body and status != 101:
            cl = resp.header("content-length")
            if cl is not None:
                try:
                    self._need(int(cl), deadline)
                except PeerClosed:
                    pass
                resp.body = bytes(self.buf[:int(cl)])
                del self.buf[:int(cl)]
        return resp

    def handshake(self, path="/echo", host_header="127.0.0.1", extra=b"", key=None, timeout=5.0):
        if key is None:
            key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\n").encode() + extra + b"\r\n"
        self.send(req)
        resp = self.read_http_response(timeout=timeout, body=False)
        self.response = resp
        if resp.status != 101:
            raise AssertionError(f"handshake to {path} got {resp.status}: {resp!r}")
        acc = resp.header("sec-websocket-accept")
        if acc != accept_for(key):
            raise AssertionError(f"bad Sec-WebSocket-Accept {acc!r} for key {key!r}")
        if (resp.header("upgrade") or "").lower() != "websocket":
            raise AssertionError(f"bad Upgrade header in {resp!r}")
        if "upgrade" not in (resp.header("connection") or "").lower():
            raise AssertionError(f"bad Connection header in {resp!r}")
        return resp


def ws_connect(port, path="/echo", host="127.0.0.1", timeout=5.0, rcvbuf=None):
    c = Conn(host, port, timeout=timeout, rcvbuf=rcvbuf)
    try:
        c.handshake(path)
    except BaseException:
        c.close()
        raise
    return c


def http_request(port, raw, timeout=5.0, host="127.0.0.1"):
    """Send raw request bytes, return the parsed HttpResponse (or raise)."""
    c = Conn(host, port, timeout=timeout)
    try:
        c.send(raw)
        return c.read_http_response(timeout=timeout)
    finally:
        c.close()


def scrape_metrics(port, tls_context=None, timeout=5.0):
    """GET /metrics (over https with tls_context) and return every sample as
    {"name{labels}": value}; raises when the scrape fails."""
    import urllib.request
    url = f"{'https://localhost' if tls_context else 'http://127.0.0.1'}:{port}/metrics"
    with urllib.request.urlopen(url, context=tls_context, timeout=timeout * MULT) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


# ---- UTF-8 reference: where does a byte string become impossible? ----------

def utf8_fail_index(b):
    """Index of the first byte at which no valid UTF-8 continuation exists,
    len(b) if the string is only truncated at the end, None if valid.
    Follows the Unicode Table 3-7 well-formed byte sequences."""
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            ranges = [(0x80, 0xBF)]
        elif c == 0xE0:
            ranges = [(0xA0, 0xBF), (0x80, 0xBF)]
        elif 0xE1 <= c <= 0xEC or 0xEE <= c <= 0xEF:
            ranges = [(0x80, 0xBF), (0x80, 0xBF)]
        elif c == 0xED:
            ranges = [(0x80, 0x9F), (0x80, 0xBF)]
        elif c == 0xF0:
            ranges = [(0x90, 0xBF), (0x80, 0xBF), (0x80, 0xBF)]
        elif 0xF1 <= c <= 0xF3:
            ranges = [(0x80, 0xBF)] * 3
        elif c == 0xF4:
            ranges = [(0x80, 0x8F), (0x80, 0xBF), (0x80, 0xBF)]
        else:
            return i
        for k, (lo, hi) in enumerate(ranges):
            j = i + 1 + k
            if j >= n:
                return n
            if not lo <= b[j] <= hi:
                return j
        i += 1 + len(ranges)
    return None


def read_head(sock):
    """Bytes up to and with the blank line that ends an HTTP head (fewer
    if the peer closes first)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


def read_to_eof(sock):
    """Everything a plain socket receives until the peer closes."""
    got = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += chunk


def run_async(fn):
    """Runs an `async def` test body in a fresh event loop, within 60 s
    (times MULT): there is no pytest-asyncio in Debian's python3-pytest
    set."""
    import asyncio
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 60 * MULT))
    return wrapper


# ---- starting the server ---------------------------------------------------

def sanitizer_report(log):
    """The first sanitizer marker in a server's log text, or None."""
    for marker in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer",
                   "WARNING: ThreadSanitizer"):
        if marker in log:
            return marker
    return None


def stop_case(server):
    """Case 99.2 of the conformance runners: SIGTERM ends the server with
    exit status 0 and no sanitizer report in its log."""
    stop = {"id": "99.2", "description": "SIGTERM: exit status 0, no sanitizer report",
            "ms": 0, "result": "pass"}
    server.signal(signal.SIGTERM)
    rc = server.wait(10)
    log = server.log()
    rep = sanitizer_report(log)
    if rc != 0 or rep:
        stop["result"] = "fail"
        stop["detail"] = f"exit status {rc}, sanitizer report {rep}: {log[-2000:]}"
    return stop


def case_key(cid):
    """Case ids sort by their numbers: 9.10 after 9.9."""
    return [int(x) if x.isdigit() else x for x in cid.split(".")]


def run_main(doc, cases, server_args, run_case, fresh_client, *, report, jobs, big_jobs,
             port_help, family, order, label, alive_desc):
    """The command line of a conformance runner (run_conformance*.py):
    --bin/--port/--report/--jobs/--filter/--list. Starts the server with
    server_args unless --port names one, runs the "small" cases jobs at a
    time and the "big" ones big_jobs at a time (run_case(port, id, desc,
    fn) -> result dict), then case 99.1 (/healthz and fresh_client(port),
    which raises on failure) and 99.2 (stop_case), and ends with
    finish_run. Returns the exit status."""
    import argparse
    import concurrent.futures
    import re
    import sys
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("WSHUB_BIN"))
    ap.add_argument("--port", type=int, help=port_help)
    ap.add_argument("--report", default=report)
    ap.add_argument("--jobs", type=int, default=jobs, help="parallel small cases")
    ap.add_argument("--filter", default=None, help="regex on case ids")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()

    ids = [x[0] for x in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, f"duplicate case ids {dup}"
    if args.filter:
        rx = re.compile(args.filter)
        cases = [x for x in cases if rx.search(x[0])]
    if args.list:
        for cid, desc, _, kind in cases:
            print(f"{cid:10} {kind:5} {desc}")
        print(f"{len(cases)} cases")
        return 0

    server = None
    if args.port:
        port = args.port
    else:
        if not args.bin:
            print("error: no server: set WSHUB_BIN or pass --bin/--port", file=sys.stderr)
            return 2
        server = Server(server_args, binary=args.bin)
        port = server.port

    def one(cid, desc, fn):
        if server is not None and not server.alive():
            return {"id": cid, "description": desc, "result": "fail",
                    "detail": "server is not running"}
        return run_case(port, cid, desc, fn)

    t0 = time.monotonic()
    results = []
    server_died = None
    try:
        for kind, n in (("small", args.jobs), ("big", big_jobs)):
            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, n)) as ex:
                futs = [ex.submit(one, cid, desc, fn) for cid, desc, fn, k in cases if k == kind]
                results += [f.result() for f in futs]
        alive = {"id": "99.1", "description": alive_desc, "ms": 0}
        try:
            if server is not None and not server.alive():
                server_died = server.proc.returncode
                raise AssertionError(f"server exited with {server.proc.returncode}")
            r = http_request(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            if r.status != 200 or r.body != b"ok\n":
                raise AssertionError(f"/healthz answered {r!r}")
            fresh_client(port)
            alive["result"] = "pass"
        except Exception as e:  # noqa: BLE001
            alive["result"] = "fail"
            alive["detail"] = f"{type(e).__name__}: {e}"
        results.append(alive)
        if server is not None:
            results.append(stop_case(server))
    finally:
        if server is not None:
            server.kill()
    elapsed = time.monotonic() - t0
    results.sort(key=lambda r: case_key(r["id"]))
    return finish_run(
        results, family, order, label, report_path=args.report,
        server_desc=args.bin if not args.port else f"127.0.0.1:{args.port}",
        server_args=server_args, server=server, server_died=server_died, elapsed=elapsed)


def finish_run(results, family, order, label, *, report_path, server_desc, server_args,
               server, server_died, elapsed):
    """The end of a conformance run: each failure printed, a line per
    family of cases (family(id) its key, sorted by order, printed with
    label), the JSON report written to report_path. Returns the exit
    status: 0 when every case passed."""
    import json
    passed = sum(1 for r in results if r["result"] == "pass")
    failed = len(results) - passed
    for r in results:
        if r["result"] != "pass":
            print(f"FAIL {r['id']}: {r['description']}\n     {r.get('detail')}")
    fam = {}
    for r in results:
        fam.setdefault(family(r["id"]), [0, 0])[0 if r["result"] == "pass" else 1] += 1
    for s in sorted(fam, key=order):
        print(f"  {label(s)}: {fam[s][0]} passed, {fam[s][1]} failed")
    report = {
        "server": server_desc,
        "server_args": server_args,
        "elapsed_s": round(elapsed, 2),
        "passed": passed,
        "failed": failed,
        "server_exit_during_run": server_died,
        "server_log_tail": server.log()[-4000:] if server is not None else None,
        "cases": results,
    }
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"report: {os.path.abspath(report_path)} ({elapsed:.1f} s)")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


def teardown_servers(entries):
    """The end of a test for each (server, stopped, check) it started:
    unless the test stopped it on purpose (stopped), the suite's check()
    and a SIGTERM that must end it with status 0 (under ASan that also
    means no leak report); then no sanitizer report in its log, and the
    process killed whatever happened. The errors of all of them go out as
    one failure."""
    errors = []
    for s, stopped, check in entries:
        try:
            if not stopped:
                check()
                s.signal(signal.SIGTERM)
                rc = s.wait(10)
                assert rc == 0, (f"after SIGTERM at teardown wshub exit status {rc}; log tail:\n"
                                 f"{s.log()[-3000:]}")
            rep = sanitizer_report(s.log())
            if rep:
                errors.append(f"sanitizer report ({rep}) in wshub log:\n{s.log()[-4000:]}")
        except Exception as e:  # noqa: BLE001
            errors.append(f"after the test: {type(e).__name__}: {e}")
        finally:
            s.kill()
    if errors:
        import pytest
        pytest.fail("\n".join(errors), pytrace=False)


class Server:
    """A wshub process on 127.0.0.1 with an ephemeral port."""

    def __init__(self, args=(), binary=None, startup_timeout=10.0):
        self.binary = binary or os.environ.get("WSHUB_BIN")
        if not self.binary:
            raise RuntimeError("WSHUB_BIN is not set")
        self.tmpdir = tempfile.mkdtemp(prefix="wshub-test-")
        self.port_file = os.path.join(self.tmpdir, "port")
        self.log_path = os.path.join(self.tmpdir, "stderr.log")
        self.args = ["--listen", "127.0.0.1:0", "--port-file", self.port_file] + list(args)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([self.binary] + self.args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._log)
        self.port = None
        deadline = time.monotonic() + startup_timeout * MULT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wshub exited with {self.proc.returncode} at startup: "
                                   f"{self.log()[-2000:]}")
            try:
                with open(self.port_file) as f:
                    txt = f.read()
                if txt.endswith("\n") and txt.strip().isdigit():
                    self.port = int(txt)
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.01)
        if self.port is None:
            self.kill()
            raise RuntimeError(f"wshub did not write its port file: {self.log()[-2000:]}")

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def signal(self, sig):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout * MULT)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        """Stop the process this object started (by pid)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._log.close()

    def stop(self):
        """SIGTERM, then SIGKILL after a grace period; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10 * MULT)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def healthz(self, timeout=5.0):
        return http_request(self.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Connection: close\r\n\r\n", timeout=timeout)
