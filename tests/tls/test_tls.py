"""wss:// end to end: the real wshub with a certificate from a throw-away
CA made by the openssl command, driven by Python websockets and Node ws."""
import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error

import pytest
import websockets

import wsraw

WSHUB = os.environ.get("WSHUB_BIN", "build/src/server/wshub")
MULT = float(os.environ.get("WSH_TEST_TIMEOUT_MULTIPLIER", "1"))


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
            cwd=d)


def make_cert(d, ca, name, cn="localhost"):
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
            cwd=d)


@pytest.fixture(scope="module")
def pki():
    d = tempfile.mkdtemp(prefix="wshub-pki-")
    make_ca(d, "ca")
    make_ca(d, "otherca")
    make_cert(d, "ca", "server")
    make_cert(d, "otherca", "rogue")
    make_cert(d, "ca", "client", cn="client1")
    return d


class Server:
    def __init__(self, pki, *extra):
        self.dir = tempfile.mkdtemp(prefix="wshub-tls-")
        pf = os.path.join(self.dir, "port")
        self.logf = open(os.path.join(self.dir, "log"), "w+")
        self.proc = subprocess.Popen(
            [WSHUB, "--listen", "127.0.0.1:0", "--port-file", pf, "--workers", "2", "--echo",
             "--tls-cert", os.path.join(pki, "server.pem"),
             "--tls-key", os.path.join(pki, "server.key"), *extra], stderr=self.logf)
        deadline = time.time() + 10 * MULT
        while not os.path.exists(pf):
            assert self.proc.poll() is None, "wshub exited at start"
            assert time.time() < deadline
            time.sleep(0.02)
        self.port = int(open(pf).read())

    def log(self):
        self.logf.flush()
        return open(self.logf.name).read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10 * MULT)
        assert self.proc.returncode == 0, self.log()[-2000:]


@pytest.fixture
def server(pki, request):
    marker = request.node.get_closest_marker("args")
    s = Server(pki, *(marker.args if marker else ()))
    yield s
    s.stop()


def client_ctx(pki, cert=None):
    ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.pem"))
    if cert:
        ctx.load_cert_chain(os.path.join(pki, f"{cert}.pem"), os.path.join(pki, f"{cert}.key"))
    return ctx


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60 * MULT))


def test_tls_python_echo_sizes_and_types(server, pki):
    async def go():
        async with websockets.connect(f"wss://localhost:{server.port}/echo",
                                      ssl=client_ctx(pki), max_size=None) as ws:
            for n in (0, 1, 125, 126, 127, 16383, 16384, 16385, 65535, 65536):
                await ws.send("t" * n)
                assert await ws.recv() == "t" * n
                payload = os.urandom(n)
                await ws.send(payload)
                assert await ws.recv() == payload
            # Fragmented message over TLS.
            await ws.send(iter(["ab", "cd", "ef"]))
            assert await ws.recv() == "abcdef"
            pong = await ws.ping(b"tls-ping")
            await asyncio.wait_for(pong, 5 * MULT)
    run(go())


def test_tls_raw_fanout_over_wss(server, pki):
    async def go():
        url = f"wss://localhost:{server.port}/raw/tlsroom"
        conns = [await websockets.connect(url, ssl=client_ctx(pki)) for _ in range(6)]
        await conns[0].send("over tls")
        for c in conns[1:]:
            assert await asyncio.wait_for(c.recv(), 5 * MULT) == "over tls"
        for c in conns:
            await c.close()
    run(go())


def test_tls_untrusted_certificate_rejected_by_client(server, pki):
    ctx = ssl.create_default_context(cafile=os.path.join(pki, "otherca.pem"))

    async def go():
        with pytest.raises(ssl.SSLCertVerificationError):
            await websockets.connect(f"wss://localhost:{server.port}/echo", ssl=ctx)
    run(go())


def test_tls_plain_client_gets_no_websocket(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5 * MULT)
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    try:
        data = s.recv(100)
    except ConnectionResetError:
        data = b""
    assert not data.startswith(b"HTTP/1.1 101")
    s.close()


@pytest.mark.args("--handshake-timeout", "0.5")
def test_tls_garbage_and_stalled_handshakes_dropped(server, pki):
    # Garbage instead of a ClientHello: dropped at once or at the deadline.
    g = socket.create_connection(("127.0.0.1", server.port), timeout=5 * MULT)
    g.sendall(os.urandom(2000))
    # A client that sends half a ClientHello and stalls.
    ctx = client_ctx(pki)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = out.read()
    st = socket.create_connection(("127.0.0.1", server.port), timeout=5 * MULT)
    st.sendall(hello[: len(hello) // 2])
    t0 = time.time()
    for s in (g, st):
        s.settimeout(5 * MULT)
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
    assert time.time() - t0 < 3 * MULT
    g.close()
    st.close()
    # Still serving.
    test_tls_python_echo_small(server, pki)


def test_tls_bad_record_after_good_data_ends_the_connection(server, pki):
    """A good record (a WebSocket frame that needs no answer) and a corrupt
    one in the same segment: the server handles the frame, then ends the
    connection at once for the bad record. It handled the bytes and forgot the error,
    and with nothing left in the socket to wake it, the connection stayed
    open until the heartbeat gave up on it."""
    ctx = client_ctx(pki)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname="localhost")
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5 * MULT)

    def pump(step):
        while True:
            try:
                return step()
            except ssl.SSLWantReadError:
                s.sendall(out.read())
                data = s.recv(65536)
                assert data, "closed during the handshake"
                inc.write(data)

    pump(tls.do_handshake)
    tls.write(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
    s.sendall(out.read())
    head = b""
    while b"\r\n\r\n" not in head:
        head += pump(lambda: tls.read(65536))
    assert head.startswith(b"HTTP/1.1 101"), head
    # An unsolicited pong: handled, and answered with nothing, so no write
    # of ours meets the broken session either.
    tls.write(b"\x8a\x80abcd")
    good = out.read()
    bad = b"\x17\x03\x03\x00\x20" + os.urandom(32)  # application data that fails its MAC
    s.sendall(good + bad)
    t0 = time.monotonic()
    s.settimeout(3 * MULT)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        pytest.fail("the connection stayed open after a corrupt record")
    assert time.monotonic() - t0 < 2 * MULT
    s.close()
    test_tls_python_echo_small(server, pki)


def test_tls_python_echo_small(server, pki):
    async def go():
        async with websockets.connect(f"wss://localhost:{server.port}/echo",
                                      ssl=client_ctx(pki)) as ws:
            await ws.send("ok")
            assert await ws.recv() == "ok"
    run(go())


def test_tls_client_certificates_required_with_ca(pki):
    srv = Server(pki, "--tls-ca", os.path.join(pki, "ca.pem"))
    try:
        async def go():
            async with websockets.connect(f"wss://localhost:{srv.port}/echo",
                                          ssl=client_ctx(pki, cert="client")) as ws:
                await ws.send("with cert")
                assert await ws.recv() == "with cert"
            # Without a certificate, or with one from another CA: refused.
            for cert in (None, "rogue"):
                with pytest.raises((ssl.SSLError, ConnectionError, OSError,
                                    websockets.exceptions.WebSocketException)):
                    async with websockets.connect(f"wss://localhost:{srv.port}/echo",
                                                  ssl=client_ctx(pki, cert=cert)) as ws:
                        await ws.send("x")
                        await ws.recv()
        run(go())
        # A TLS 1.2 client resuming its session (as browsers do on every
        # reconnect) is let in, resumed, with its certificate still known.
        ctx = client_ctx(pki, cert="client")
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        session = None
        for attempt in range(2):
            raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5 * MULT)
            with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as t:
                t.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                reply = b""
                while chunk := t.recv(4096):
                    reply += chunk
                assert reply.startswith(b"HTTP/1.1 200"), (attempt, reply)
                assert t.session_reused == (attempt == 1), attempt
                session = t.session
    finally:
        srv.stop()


def tls_refusal(port, pki):
    """Opens a raw TLS connection; returns the SSLError text it failed with,
    or None when the handshake completed."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5 * MULT)
    try:
        with client_ctx(pki).wrap_socket(raw, server_hostname="localhost"):
            return None
    except (ssl.SSLError, ConnectionError) as e:
        return str(e)
    finally:
        raw.close()


def http_counts(port, pki):
    m = wsraw.scrape_metrics(port, client_ctx(pki))
    return {k.split('"')[1]: int(v) for k, v in m.items()
            if k.startswith("wshub_http_responses_total{")}


@pytest.mark.parametrize("limits,status", [({"max_connections_per_ip": 2}, "429"),
                                           ({"max_connections": 2}, "503")])
def test_tls_refusal_at_accept_is_a_tls_alert(pki, limits, status):
    """Over a per-address or total bound the connection is refused before
    its handshake: a TLS client is told with a fatal internal_error alert it
    can read (not HTTP text it would take for a broken record), and the
    refusal is counted under its status."""
    d = tempfile.mkdtemp(prefix="wshub-tls-limits-")
    cfg = os.path.join(d, "config.json")
    with open(cfg, "w") as f:
        json.dump({"limits": limits}, f)
    srv = Server(pki, "--config", cfg, "--workers", "1")
    try:
        async def go():
            held = await websockets.connect(f"wss://localhost:{srv.port}/echo",
                                            ssl=client_ctx(pki))
            # held is one connection; the metrics scrape below is the other.
            errors = [tls_refusal(srv.port, pki) for _ in range(3)]
            await held.close()
            return errors
        # Two slots: the held WebSocket and one more. Take the second with a
        # plain TLS connection that stays open while the others are refused.
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5 * MULT)
        keep = client_ctx(pki).wrap_socket(raw, server_hostname="localhost")
        errors = run(go())
        for e in errors:
            assert e is not None and "alert internal error" in e.lower(), errors
        keep.close()
        deadline = time.time() + 10 * MULT
        while True:
            try:
                counts = http_counts(srv.port, pki)
                break
            except (ssl.SSLError, ConnectionError, urllib.error.URLError):
                assert time.time() < deadline  # until the held slots are free
                time.sleep(0.05)
        assert counts[status] == 3, counts
    finally:
        srv.stop()


def reloads(port, ctx):
    """wshub_reloads_total{part="tls"} by result, read over https."""
    m = wsraw.scrape_metrics(port, ctx)
    return {r: int(m[f'wshub_reloads_total{{part="tls",result="{r}"}}']) for r in ("ok", "error")}


def test_tls_sighup_reload_keeps_connections(pki):
    d = tempfile.mkdtemp(prefix="wshub-reload-")
    for f in ("server.pem", "server.key"):
        with open(os.path.join(pki, f), "rb") as src, open(os.path.join(d, f), "wb") as dst:
            dst.write(src.read())
    srv = subprocess.Popen([WSHUB, "--listen", "127.0.0.1:0", "--port-file", f"{d}/port",
                            "--echo", "--workers", "1", "--tls-cert", f"{d}/server.pem",
                            "--tls-key", f"{d}/server.key"], stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 10 * MULT
        while not os.path.exists(f"{d}/port"):
            assert time.time() < deadline
            time.sleep(0.02)
        port = int(open(f"{d}/port").read())

        async def go():
            old = await websockets.connect(f"wss://localhost:{port}/echo", ssl=client_ctx(pki))
            # Swap in a certificate from another CA, then SIGHUP.
            for f in ("pem", "key"):
                with open(os.path.join(pki, f"rogue.{f}"), "rb") as src, \
                        open(os.path.join(d, f"server.{f}"), "wb") as dst:
                    dst.write(src.read())
            srv.send_signal(signal.SIGHUP)
            # The reload is done once the other CA verifies the server.
            ctx = ssl.create_default_context(cafile=os.path.join(pki, "otherca.pem"))
            deadline = time.time() + 10 * MULT
            while True:
                try:
                    wsraw.scrape_metrics(port, ctx)
                    break
                except (ssl.SSLError, urllib.error.URLError):  # the old certificate
                    assert time.time() < deadline
                    await asyncio.sleep(0.05)
            # The established connection still works.
            await old.send("still here")
            assert await old.recv() == "still here"
            # New connections get the new certificate: our CA no longer
            # verifies it, the other CA does.
            with pytest.raises(ssl.SSLCertVerificationError):
                await websockets.connect(f"wss://localhost:{port}/echo", ssl=client_ctx(pki))
            async with websockets.connect(f"wss://localhost:{port}/echo", ssl=ctx) as ws:
                await ws.send("new cert")
                assert await ws.recv() == "new cert"
            assert reloads(port, ctx) == {"ok": 1, "error": 0}
            # A key file that is not a key: the reload fails, the certificate
            # in use stays.
            with open(os.path.join(d, "server.key"), "w") as f:
                f.write("not a key\n")
            srv.send_signal(signal.SIGHUP)
            deadline = time.time() + 10 * MULT
            while reloads(port, ctx)["error"] != 1:
                assert time.time() < deadline
                await asyncio.sleep(0.05)
            assert reloads(port, ctx) == {"ok": 1, "error": 1}
            async with websockets.connect(f"wss://localhost:{port}/echo", ssl=ctx) as ws:
                await ws.send("kept")
                assert await ws.recv() == "kept"
            await old.close()
        run(go())
    finally:
        srv.send_signal(signal.SIGTERM)
        assert srv.wait(10 * MULT) == 0


NODE_CLIENT = r"""
const WebSocket = require('ws');
const fs = require('fs');
const [port, ca] = process.argv.slice(1);
const ws = new WebSocket(`wss://localhost:${port}/echo`, { ca: fs.readFileSync(ca) });
const sizes = [0, 1, 126, 65536];
let i = 0;
ws.on('open', () => ws.send(Buffer.alloc(sizes[i], 7), { binary: true }));
ws.on('message', (data, isBinary) => {
  if (!isBinary || data.length !== sizes[i]) { console.log('BAD', i, data.length); process.exit(1); }
  if (++i === sizes.length) { ws.close(1000); return; }
  ws.send(Buffer.alloc(sizes[i], 7), { binary: true });
});
ws.on('close', (code) => { console.log('closed', code); process.exit(code === 1000 ? 0 : 1); });
ws.on('error', (e) => { console.log('error', e.message); process.exit(1); });
setTimeout(() => { console.log('timeout'); process.exit(1); }, 20000);
"""


def test_tls_node_ws_client(server, pki):
    r = subprocess.run(["node", "-e", NODE_CLIENT, str(server.port), os.path.join(pki, "ca.pem")],
                       capture_output=True, text=True, timeout=60 * MULT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "closed 1000" in r.stdout
