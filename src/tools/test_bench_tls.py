#!/usr/bin/python3
"""Smoke test for wshub-bench --tls and --deflate against the real server.

This is the library's client role (through wshub-bench) talking to wshub
over TLS, with and without permessage-deflate, plus the certificate checks:
the bench must refuse the server's certificate without --cacert and accept
it with --insecure. A throw-away CA comes from bench/gen-cert.sh (the
openssl command) in a temporary directory. Last, fanout --proto ws through
the /ws JSON protocol with bench/ws-bench.json, and idle --proto ws, so the
channel modes stay covered, and connect --token against a /ws server with
an HS256 key (a good token and a forged one). And against an independent echo server (Python
websockets), the bench's payload encoding and its detection of a corrupted
echo, with each I/O engine (epoll, io_uring); and the io_uring engine
against wshub: sizes, pipelines, deflate, exact bytes, server shutdown.

  test_bench_tls.py --server WSHUB --bench WSHUB_BENCH [--openssl OPENSSL]
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import websockets

HERE = os.path.dirname(os.path.abspath(__file__))
GEN_CERT = os.path.join(HERE, "..", "..", "bench", "gen-cert.sh")
WS_CONFIG = os.path.join(HERE, "..", "..", "bench", "ws-bench.json")

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def run_bench(bench, port, args, timeout=60):
    cmd = [bench] + args + ["--port", str(port), "--json"]
    print("$ " + " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.stderr:
        sys.stdout.write(p.stderr)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    rep = json.loads(lines[-1]) if lines else {}
    print(json.dumps(rep), flush=True)
    return p.returncode, rep, p.stderr


def start(server, port_file, args):
    srv = subprocess.Popen([server, "--listen", "127.0.0.1:0", "--port-file", port_file] + args)
    for _ in range(100):
        if os.path.exists(port_file) and os.path.getsize(port_file) > 0:
            return srv, int(open(port_file).read().strip())
        if srv.poll() is not None:
            break
        time.sleep(0.05)
    return srv, None


def stop(srv):
    srv.terminate()
    try:
        srv.wait(timeout=10)
    except subprocess.TimeoutExpired:
        srv.kill()
        srv.wait()


class RecordingEcho:
    """An echo server written with Python websockets, not wshub: it keeps
    the first payloads it receives, and can corrupt one reply, so the
    bench's own encoding (hex sequence numbers, filler) and its checking
    (header compare, byte sum) are tested against an independent peer."""

    def __init__(self, corrupt_at=None):
        self.got = []
        self.corrupt_at = corrupt_at
        self.port = None
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    async def _handler(self, ws, path=None):
        try:
            async for msg in ws:
                n = len(self.got)
                if n < 64:
                    self.got.append(msg)
                if n == self.corrupt_at:
                    b = bytearray(msg.encode() if isinstance(msg, str) else msg)
                    b[-1] = ord("z") if b[-1] != ord("z") else ord("y")
                    msg = b.decode() if isinstance(msg, str) else bytes(b)
                await ws.send(msg)
        except websockets.ConnectionClosed:
            pass  # the bench hangs up at the end of its run, or on a bad echo

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def main():
            self.stop_fut = self.loop.create_future()
            async with websockets.serve(self._handler, "127.0.0.1", 0, max_size=1 << 20) as srv:
                self.port = srv.sockets[0].getsockname()[1]
                self.ready.set()
                await self.stop_fut

        self.loop.run_until_complete(main())

    def stop(self):
        self.loop.call_soon_threadsafe(lambda: self.stop_fut.done() or self.stop_fut.set_result(None))
        self.thread.join(10)


def check_payloads(bench, engine):
    """Message i of a connection starts with i in 16 hex digits and goes on
    with the a-z filler; a corrupted echo is counted as a bad echo (and the
    connection dropped: with io_uring, while its recv is in flight)."""
    eng = ["--engine", engine]
    for size in (40, 16384):
        srv = RecordingEcho()
        try:
            rc, r, _ = run_bench(bench, srv.port, ["echo", "-c", "1", "-p", "1", "-s", str(size),
                                                   "-d", "1"] + eng)
        finally:
            srv.stop()
        filler = "".join(chr(ord("a") + i % 26) for i in range(size))
        want = ["%016x" % i + filler[16:] for i in range(len(srv.got))]
        check(rc == 0 and r.get("bad_echo") == 0 and r.get("msgs", 0) > 0
              and r.get("engine") == engine,
              f"{engine}: echo -s {size} against a Python echo server: 0 bad echoes")
        check(len(srv.got) >= 20 and srv.got == want[:len(srv.got)],
              f"{engine}: echo -s {size}: payload i is i in 16 hex digits, then the a-z filler")
        srv = RecordingEcho(corrupt_at=5)
        try:
            rc, r, _ = run_bench(bench, srv.port, ["echo", "-c", "1", "-p", "1", "-s", str(size),
                                                   "-d", "1"] + eng)
        finally:
            srv.stop()
        check(r.get("bad_echo") == 1,
              f"{engine}: echo -s {size}: one corrupted byte is one bad echo")


def check_uring(server, bench, tmp):
    """The io_uring engine against wshub: every reply checked, the exact
    bytes on the wire, the closing handshake at the end, and the server
    closing first (SIGTERM) while receives are in flight."""
    srv, port = start(server, os.path.join(tmp, "port4"), ["--echo", "--deflate", "--workers", "2"])
    try:
        check(port is not None, "plain server for io_uring started")
        if port is None:
            return
        # Per round trip: the client frame has a 4-byte header (16-bit
        # length; 2 bytes at <= 125) and a 4-byte mask key, the server's
        # frame only the header.
        for size, pipe, wire in ((16384, 1, 2 * 16384 + 12), (32, 16, 2 * 32 + 8),
                                 (50000, 4, 2 * 50000 + 12)):
            rc, r, _ = run_bench(bench, port, ["echo", "--engine", "uring", "-c", "8", "-p",
                                               str(pipe), "-s", str(size), "-d", "1",
                                               "--server-pid", str(srv.pid)])
            check(rc == 0 and r.get("errors") == 0 and r.get("bad_echo") == 0
                  and r.get("msgs", 0) > 0 and r.get("engine") == "uring",
                  f"uring: echo -c 8 -p {pipe} -s {size}: exit 0, 0 errors, 0 bad echoes")
            # The server's pings (every 30 s by default) do not come in 1 s;
            # the c x p messages in flight at either end of the window may
            # be counted in bytes but not as round trips.
            slack = 8 * pipe * wire / max(r.get("msgs", 0), 1) + 0.5
            check(abs(r.get("wire_bytes_per_msg", 0) - wire) < slack,
                  f"uring: -s {size}: {wire} bytes on the wire per round trip")
        rc, r, _ = run_bench(bench, port, ["echo", "--engine", "uring", "--deflate", "--payload",
                                           "json", "-c", "4", "-p", "2", "-d", "1"])
        check(rc == 0 and r.get("errors") == 0 and r.get("bad_echo") == 0 and r.get("msgs", 0) > 0
              and r.get("pmd_conns") == 4 and r.get("engine") == "uring",
              "uring: echo --deflate --payload json: 0 errors, 0 bad echoes")
        rc, r, err = run_bench(bench, port, ["echo", "--engine", "uring", "--tls", "--insecure"])
        check(rc == 2 and "excludes --tls" in err, "--engine uring --tls is refused")
        rc, r, err = run_bench(bench, port, ["fanout", "--engine", "uring"])
        check(rc == 2 and "--engine is for echo" in err, "--engine outside echo is refused")

        # The server goes away mid-run: every connection gets its 1012
        # close, answers it, and sees the server close TCP.
        cmd = [bench, "echo", "--engine", "uring", "-c", "8", "-p", "2", "-s", "1000", "-d", "3",
               "--port", str(port), "--json"]
        print("$ " + " ".join(cmd), flush=True)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        srv.terminate()
        out, err = p.communicate(timeout=30)
        sys.stdout.write(err)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        r = json.loads(lines[-1]) if lines else {}
        print(json.dumps(r), flush=True)
        check(p.returncode == 0 and r.get("msgs", 0) > 0 and r.get("bad_echo") == 0
              and r.get("errors") == 0 and r.get("engine") == "uring",
              "uring: server shut down mid-run: closes answered, 0 errors")
        check(srv.wait(timeout=10) == 0, "server drained and exited 0 under the io_uring bench")
    finally:
        stop(srv)


def hs256_token(secret, claims):
    """A JWT minted here with the standard library (RFC 7515, 7519)."""
    import base64
    import hashlib
    import hmac

    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def check_token(server, bench, tmp):
    """connect --path /ws --token: every upgrade carries the token, which
    the server verifies before its 101; a forged one is refused."""
    secret = "bench-secret-0123456789abcdef-xyz"
    cfg = os.path.join(tmp, "auth.json")
    with open(cfg, "w") as f:
        json.dump({"auth": {"keys": [{"alg": "HS256", "secret": secret}]},
                   "limits": {"max_connections_per_ip": 0}}, f)
    good = hs256_token(secret, {"sub": "bench", "exp": int(time.time()) + 3600})
    forged = good[:-2] + ("AA" if not good.endswith("AA") else "BA")
    srv, port = start(server, os.path.join(tmp, "port-auth"), ["--config", cfg, "--workers", "1"])
    try:
        check(port is not None, "/ws server with an HS256 key started")
        if port is None:
            return
        rc, r, _ = run_bench(bench, port, ["connect", "--path", "/ws", "--token", good,
                                           "-c", "4", "-d", "1"])
        check(rc == 0 and r.get("msgs", 0) > 0 and r.get("handshake_errors") == 0
              and r.get("errors") == 0, "connect --path /ws --token: upgrades, 0 refused")
        rc, r, _ = run_bench(bench, port, ["connect", "--path", "/ws", "--token", forged,
                                           "-c", "2", "-d", "1"])
        check(r.get("msgs") == 0 and r.get("handshake_errors", 0) > 0,
              "connect --path /ws with a forged token: every upgrade refused")
    finally:
        stop(srv)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--bench", required=True)
    ap.add_argument("--openssl", default="openssl")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="wshub-bench-tls-") as tmp:
        subprocess.run(["bash", GEN_CERT, tmp, a.openssl], check=True)
        ca = os.path.join(tmp, "ca.pem")
        srv, port = start(a.server, os.path.join(tmp, "port"),
                          ["--echo", "--deflate", "--tls-cert", os.path.join(tmp, "server.pem"),
                           "--tls-key", os.path.join(tmp, "server.key")])
        try:
            check(port is not None, "TLS server started and wrote its port")
            if port is None:
                return 1
            pid = ["--server-pid", str(srv.pid)]
            tls = ["--tls", "--cacert", ca]

            # Echo over TLS, verified against the test CA (by IP address).
            rc, r, _ = run_bench(a.bench, port,
                                 ["echo"] + tls + ["-c", "4", "-p", "2", "-s", "1000", "-d", "1"] + pid)
            check(rc == 0 and r.get("errors") == 0 and r.get("bad_echo") == 0
                  and r.get("msgs", 0) > 0 and r.get("tls") == 1,
                  "echo --tls: exit 0, messages echoed, 0 errors, 0 bad echoes")

            # Echo over TLS with permessage-deflate on the JSON payload.
            rc, r, _ = run_bench(a.bench, port,
                                 ["echo"] + tls + ["--deflate", "--payload", "json",
                                                   "-c", "4", "-p", "2", "-d", "1"] + pid)
            check(rc == 0 and r.get("errors") == 0 and r.get("bad_echo") == 0
                  and r.get("msgs", 0) > 0,
                  "echo --tls --deflate --payload json: exit 0, 0 errors, 0 bad echoes")
            check(r.get("pmd_conns") == 4, "permessage-deflate agreed on all 4 connections")
            # 16 KiB each way uncompressed; the JSON compresses well.
            check(0 < r.get("wire_bytes_per_msg", 0) < 16384,
                  "compressed round trip is under 16 KiB on the wire")

            # Connect/handshake/close cycles, SNI and verification by name.
            rc, r, _ = run_bench(a.bench, port,
                                 ["connect"] + tls + ["--sni", "localhost", "-c", "4", "-d", "1"])
            check(rc == 0 and r.get("errors") == 0 and r.get("msgs", 0) > 0
                  and r.get("tls_errors") == 0,
                  "connect --tls --sni localhost: exit 0, cycles done, 0 errors")

            # Idle TLS + deflate connections, with the warm-up.
            rc, r, _ = run_bench(a.bench, port,
                                 ["idle"] + tls + ["--deflate", "-c", "20"] + pid)
            check(rc == 0 and r.get("errors") == 0 and r.get("still_open") == 20
                  and r.get("pmd_conns", 0) >= 20 and r.get("warmup_conns") == 200,
                  "idle --tls --deflate: 20 held open after a 200-connection warm-up, 0 errors")

            # No --cacert: the system store does not know our CA.
            rc, r, err = run_bench(a.bench, port, ["echo", "--tls", "-c", "2", "-d", "1"])
            check(r.get("errors", 0) > 0 and r.get("tls_verify_errors", 0) > 0
                  and r.get("msgs", 1) == 0 and "verification failed" in err,
                  "echo --tls without --cacert: certificate rejected, counted as errors")
            # A name the certificate does not carry is rejected too.
            rc, r, err = run_bench(a.bench, port,
                                   ["connect"] + tls + ["--sni", "wrong.example", "-c", "2", "-d", "1"])
            check(r.get("tls_verify_errors", 0) > 0 and r.get("msgs", 1) == 0,
                  "connect --sni wrong.example: hostname mismatch rejected")

            # --insecure skips the check.
            rc, r, _ = run_bench(a.bench, port,
                                 ["echo", "--tls", "--insecure", "-c", "2", "-d", "1"])
            check(rc == 0 and r.get("errors") == 0 and r.get("msgs", 0) > 0,
                  "echo --tls --insecure: accepted, 0 errors")

            check(srv.poll() is None, "server still running")
        finally:
            stop(srv)

        # permessage-deflate without TLS, on a plain server.
        srv, port = start(a.server, os.path.join(tmp, "port2"), ["--echo", "--deflate"])
        try:
            check(port is not None, "plain server started")
            if port is not None:
                rc, r, _ = run_bench(a.bench, port,
                                     ["echo", "--deflate", "--payload", "json", "--binary",
                                      "-c", "4", "-p", "2", "-d", "1"])
                check(rc == 0 and r.get("errors") == 0 and r.get("bad_echo") == 0
                      and r.get("msgs", 0) > 0 and r.get("pmd_conns") == 4
                      and 0 < r.get("wire_bytes_per_msg", 0) < 16384,
                      "echo --deflate (plain, binary): compressed, 0 errors, 0 bad echoes")
        finally:
            stop(srv)

        # /ws JSON channels: connect + subscribe, publish, count pushes.
        srv, port = start(a.server, os.path.join(tmp, "port3"),
                          ["--config", WS_CONFIG, "--workers", "1"])
        try:
            check(port is not None, "/ws server (ws-bench.json) started")
            if port is not None:
                rc, r, _ = run_bench(a.bench, port,
                                     ["fanout", "--proto", "ws", "-c", "20", "-d", "1"])
                check(rc == 0 and r.get("errors") == 0 and r.get("lost") == 0
                      and r.get("subscribers") == 20 and r.get("msgs", 0) > 0
                      and r.get("app_errors") == 0 and r.get("app_bad") == 0,
                      "fanout --proto ws -c 20: deliveries, 0 errors, 0 lost")
                rc, r, _ = run_bench(a.bench, port,
                                     ["idle", "--proto", "ws", "-c", "20", "--warmup", "0"])
                check(rc == 0 and r.get("errors") == 0 and r.get("subscribed") == 20,
                      "idle --proto ws -c 20: all subscribed, 0 errors")
        finally:
            stop(srv)

        check_token(a.server, a.bench, tmp)
        check_uring(a.server, a.bench, tmp)

    check_payloads(a.bench, "epoll")
    check_payloads(a.bench, "uring")

    if failures:
        print(f"{len(failures)} check(s) failed", flush=True)
        return 1
    print("all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
