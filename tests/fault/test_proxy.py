"""Behind a load balancer (LIMITS.md "proxies"): `wshub --proxy-protocol`
reads the PROXY protocol header (v1 text, v2 binary) a balancer puts before
the client's bytes, and per-address limits count the client it names; with
`trusted_proxies`, a request from an HTTP proxy counts under the client its
X-Forwarded-For names, and what the client wrote there itself is ignored.

Hand-written headers from raw sockets check every byte path: a header with
the request in the same packet, a header trickled byte by byte, TLS after
the header, malformed headers and none at all (dropped without a byte,
counted in /metrics), a header that never ends (the handshake deadline).
Then a real HAProxy (Debian's) in front, sending v1 from one frontend and
v2 (with its health checks) from another, to clients bound to different
127.0.0.x source addresses: each client is counted as itself, so a
per-address limit of 1 lets two clients in and refuses the second
connection of either; and a real nginx (Debian's) as the HTTP reverse
proxy, with clients that try to spoof the field. Teardown: the server is alive, answers a fresh
proxied client, is back to its baseline fd count, and exits 0 on SIGTERM."""
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import time

import pytest
from test_fault import (MULT, Server, frame, free_port, read_close, read_head, upgrade_request,
                        wait_fds_back)

SIG2 = b"\r\n\r\n\x00\r\nQUIT\n"
# Debian puts both in /usr/sbin, which a non-root PATH may lack.
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def v1(src="192.0.2.1", dst="198.51.100.2", sport=56324, dport=443, proto="TCP4"):
    return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src="192.0.2.1", dst="198.51.100.2", sport=56324, dport=443, cmd=0x21, tlvs=b""):
    if ":" in src:
        fam, body = 0x21, (socket.inet_pton(socket.AF_INET6, src) +
                           socket.inet_pton(socket.AF_INET6, dst))
    else:
        fam, body = 0x11, socket.inet_aton(src) + socket.inet_aton(dst)
    body += struct.pack("!HH", sport, dport) + tlvs
    return SIG2 + bytes([cmd, fam]) + struct.pack("!H", len(body)) + body


V2_LOCAL = SIG2 + b"\x20\x00\x00\x00"


def connect(port, source=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5 * MULT)
    if source:
        s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def proxied_upgrade(port, header, path="/echo", chop=False):
    """A WebSocket client behind `header`. chop: the header one byte per
    write, with pauses, as a congested balancer might deliver it."""
    s = connect(port)
    if chop:
        for b in header:
            s.sendall(bytes([b]))
            time.sleep(0.002)
        s.sendall(upgrade_request(path))
    else:
        s.sendall(header + upgrade_request(path))
    head = read_head(s)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def echo_once(s, text):
    s.sendall(frame(1, text))
    want = bytes([0x81, len(text)]) + text
    got = b""
    while len(got) < len(want):
        chunk = s.recv(4096)
        assert chunk, "closed before the echo"
        got += chunk
    assert got == want


def close_cleanly(s):
    s.sendall(frame(8, struct.pack("!H", 1000)))
    assert read_close(s) == 1000
    s.close()


def dropped_silently(s, timeout=5.0):
    """The server closed the connection without sending a byte."""
    s.settimeout(timeout * MULT)
    try:
        data = s.recv(100)
    except ConnectionResetError:
        data = b""
    return data == b""


def metric(port, name, header=None):
    s = connect(port)
    s.sendall((header or v1()) + b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    body = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    s.close()
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture
def proxied(request):
    """Factory: proxied(*flags) -> Server with --proxy-protocol."""
    started = []

    def start(*args):
        s = Server("--proxy-protocol", *args)
        s.base_fds = s.fds()
        started.append(s)
        return s

    yield start
    for s in started:
        try:
            assert s.proc.poll() is None, "wshub died"
            c = proxied_upgrade(s.port, v2(src="203.0.113.99"))
            echo_once(c, b"still alive")
            close_cleanly(c)
            deadline = time.time() + 10 * MULT
            while s.fds() > s.base_fds and time.time() < deadline:
                time.sleep(0.05)
            assert s.fds() <= s.base_fds, f"fd leak: {s.fds()} > {s.base_fds}"
        finally:
            s.stop()
        assert s.proc.returncode == 0, open(s.log.name).read()[-2000:]


def write_config_top(doc):
    d = tempfile.mkdtemp(prefix="wshub-proxy-")
    path = os.path.join(d, "config.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def write_config(limits):
    return write_config_top({"limits": limits})


# ---- hand-written headers ---------------------------------------------------

def test_proxy_every_header_form_then_echo(proxied):
    srv = proxied()
    headers = [
        v1(), v1(src="2001:db8::1", dst="::1", proto="TCP6"), b"PROXY UNKNOWN\r\n",
        v2(tlvs=b"\x01\x00\x02h2" + b"\xea\x00\x04vpce"), v2(src="2001:db8::7", dst="::1"),
        V2_LOCAL, SIG2 + b"\x21\x00\x00\x00",  # PROXY with family UNSPEC
    ]
    for i, h in enumerate(headers):
        s = proxied_upgrade(srv.port, h)
        echo_once(s, f"form {i}".encode())
        close_cleanly(s)
    # The header, the request and a first frame in one write: the bytes
    # after the header must reach the HTTP and WebSocket layers intact.
    s = connect(srv.port)
    s.sendall(v2() + upgrade_request() + frame(1, b"early"))
    data = b""
    while b"early" not in data:
        chunk = s.recv(4096)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 101") and data.endswith(b"\x81\x05early"), data
    close_cleanly(s)
    assert metric(srv.port, "wshub_proxy_header_errors_total") == 0


def test_proxy_header_trickled_byte_by_byte(proxied):
    srv = proxied()
    for h in (v1(), v2(tlvs=b"\x04\x00\x10" + b"x" * 16)):
        s = proxied_upgrade(srv.port, h, chop=True)
        echo_once(s, b"trickled")
        close_cleanly(s)


def test_proxy_bad_or_missing_header_dropped_and_counted(proxied):
    srv = proxied()
    bad = [
        upgrade_request(),                                  # a client that skipped the balancer
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",    # TLS ClientHello
        b"PROXY TCP4 192.0.2.1 198.51.100.2 056324 443\r\n",  # leading zero
        b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",     # family mismatch
        b"PROXY UNKNOWN " + b"a" * 100 + b"\r\n",           # past 107 bytes
        SIG2 + b"\x11\x11\x00\x0c" + bytes(12),             # version 1 in a v2 header
        SIG2 + b"\x21\x11\x00\x0b" + bytes(11),             # IPv4 body too short
        SIG2 + b"\x21\x11\x10\x00",                         # 4 KiB + 16: too long
        SIG2 + b"\x21\x11\x00\x10" + bytes(12) + b"\x01\x00\x09\x00",  # TLV overrun
    ]
    for i, b in enumerate(bad):
        s = connect(srv.port)
        s.sendall(b)
        assert dropped_silently(s), f"case {i} was answered"
        s.close()
    # Counted once each, and the server still takes good headers.
    deadline = time.time() + 5 * MULT
    while metric(srv.port, "wshub_proxy_header_errors_total") != len(bad):
        assert time.time() < deadline, metric(srv.port, "wshub_proxy_header_errors_total")
        time.sleep(0.05)


def test_proxy_header_that_never_ends_hits_the_deadline(proxied):
    srv = proxied("--handshake-timeout", "1")
    partial = [connect(srv.port) for _ in range(3)]
    partial[0].sendall(b"PROXY TCP4 192.0.2")
    partial[1].sendall(v2()[:20])
    # partial[2] sends nothing at all
    t0 = time.time()
    for s in partial:
        assert dropped_silently(s, timeout=10), "not dropped"
        s.close()
    assert time.time() - t0 < 8 * MULT
    assert metric(srv.port, "wshub_proxy_header_errors_total") == 0


def test_proxy_then_tls(tmp_path):
    d = str(tmp_path)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", "k.pem", "-out", "c.pem",
                    "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1"], cwd=d, check=True, capture_output=True)
    # Not the fixture: its teardown client does not speak TLS.
    srv = Server("--proxy-protocol", "--tls-cert", os.path.join(d, "c.pem"),
                 "--tls-key", os.path.join(d, "k.pem"))
    try:
        base_fds = srv.fds()
        ctx = ssl.create_default_context(cafile=os.path.join(d, "c.pem"))
        for h in (v1(), v2()):
            raw = connect(srv.port)
            raw.sendall(h)  # in the clear, before the ClientHello
            s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            s.sendall(upgrade_request())
            assert read_head(s).startswith(b"HTTP/1.1 101")
            echo_once(s, b"over tls")
            s.sendall(frame(8, struct.pack("!H", 1000)))
            assert s.recv(100)[:4] == b"\x88\x02\x03\xe8"
            s.close()
        wait_fds_back(srv, base_fds)
    finally:
        srv.stop()
    assert srv.proc.returncode == 0


def test_proxy_per_address_limit_counts_the_named_client(proxied):
    srv = proxied("--config", write_config({"max_connections_per_ip": 2}))
    a = [proxied_upgrade(srv.port, v2(src="192.0.2.7", sport=1000 + i)) for i in range(2)]
    # A third from the same client, by either version, is refused...
    for h in (v2(src="192.0.2.7", sport=2000), v1(src="192.0.2.7", sport=2001)):
        s = connect(srv.port)
        s.sendall(h + upgrade_request())
        head = read_head(s)
        assert head.startswith(b"HTTP/1.1 429 ") and b"Retry-After:" in head, head
        s.close()
    # ...while other clients, all arriving from the same balancer address,
    # are let in.
    b = [proxied_upgrade(srv.port, v1(src=f"192.0.2.{8 + i}")) for i in range(3)]
    # IPv6 clients count per /64.
    c = [proxied_upgrade(srv.port, v2(src=f"2001:db8:1:2::{i + 1}", dst="::1")) for i in range(2)]
    s = connect(srv.port)
    s.sendall(v2(src="2001:db8:1:2::ff", dst="::1") + upgrade_request())
    assert read_head(s).startswith(b"HTTP/1.1 429 ")
    s.close()
    # A header naming no client (LOCAL: the balancer's own health check)
    # counts under the connection's own address.
    d = [proxied_upgrade(srv.port, V2_LOCAL) for _ in range(2)]
    s = connect(srv.port)
    s.sendall(b"PROXY UNKNOWN\r\n" + upgrade_request())
    assert read_head(s).startswith(b"HTTP/1.1 429 ")
    s.close()
    for s in a + b + c + d:
        close_cleanly(s)


# ---- a real balancer ---------------------------------------------------------

class Proxy:
    """A proxy process this test starts, in the foreground, and stops by
    its pid."""

    def start(self, argv, ports):
        self.log = open(os.path.join(self.dir, "output"), "w+")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log)
        deadline = time.time() + 10 * MULT
        for port in ports:
            while True:
                assert self.proc.poll() is None, open(self.log.name).read()
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.time() < deadline, f"{argv[0]} did not listen"
                    time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


class HAProxy(Proxy):
    """Debian's haproxy in TCP mode in front of wshub: frontend v1 sends
    `send-proxy`, frontend v2 `send-proxy-v2` with a CRC32C TLV (so its
    sum, computed by HAProxy, must match ours) and health-checks the
    server with a PROXY header of its own (LOCAL)."""

    def __init__(self, backend_port):
        self.dir = tempfile.mkdtemp(prefix="wshub-haproxy-")
        self.p1, self.p2 = free_port(), free_port()
        cfg = os.path.join(self.dir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(f"""global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend v1
    bind 127.0.0.1:{self.p1}
    default_backend b1
backend b1
    server ws 127.0.0.1:{backend_port} send-proxy
frontend v2
    bind 127.0.0.1:{self.p2}
    default_backend b2
backend b2
    server ws 127.0.0.1:{backend_port} send-proxy-v2 proxy-v2-options crc32c check check-send-proxy inter 200ms
""")
        self.start([HAPROXY, "-db", "-f", cfg], (self.p1, self.p2))


def through(port, source):
    """A WebSocket client on `source` (a 127.0.0.x address) via the
    balancer; returns (socket, response head)."""
    s = connect(port, source=source)
    s.sendall(upgrade_request())
    return s, read_head(s)


def test_proxy_behind_real_haproxy(proxied):
    assert os.path.exists(HAPROXY), "haproxy missing: scripts/install-deps.sh installs it"
    srv = proxied("--log-level", "debug", "--config", write_config({"max_connections_per_ip": 1}))
    hap = HAProxy(srv.port)
    try:
        held = []
        for port, (a, b) in ((hap.p1, ("127.0.0.2", "127.0.0.3")),
                             (hap.p2, ("127.0.0.4", "127.0.0.5"))):
            # Two clients, each its own address, though both arrive from
            # the balancer's 127.0.0.1: both in, and both echo.
            for src in (a, b):
                s, head = through(port, src)
                assert head.startswith(b"HTTP/1.1 101"), (src, head)
                echo_once(s, f"via {port} from {src}".encode())
                held.append(s)
            # A second connection of one client passes its limit of 1.
            s, head = through(port, a)
            assert head.startswith(b"HTTP/1.1 429 "), head
            s.close()
        log = open(srv.log.name).read()
        assert "ev=proxy version=1 client=127.0.0.2 " in log, log[-2000:]
        assert "ev=proxy version=2 client=127.0.0.5 " in log, log[-2000:]
        # Health checks came as headers naming no client (LOCAL) and were
        # never counted as bad headers.
        deadline = time.time() + 5 * MULT
        while "ev=proxy version=2 client=none" not in open(srv.log.name).read():
            assert time.time() < deadline, "no health check seen"
            time.sleep(0.1)
        assert metric(srv.port, "wshub_proxy_header_errors_total") == 0
        for s in held:
            close_cleanly(s)
    finally:
        hap.stop()


# ---- an HTTP proxy: trusted_proxies and X-Forwarded-For ---------------------

class Nginx(Proxy):
    """Debian's nginx as a WebSocket reverse proxy in front of wshub,
    appending the client's address to X-Forwarded-For."""

    def __init__(self, backend_port):
        self.dir = tempfile.mkdtemp(prefix="wshub-nginx-")
        self.port = free_port()
        d = self.dir
        cfg = os.path.join(d, "nginx.conf")
        with open(cfg, "w") as f:
            f.write(f"""daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://127.0.0.1:{backend_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
""")
        self.start([NGINX, "-p", d, "-c", cfg], (self.port,))


def status_line(s, request):
    s.sendall(request)
    return read_head(s).split(b"\r\n", 1)[0]


def test_trusted_proxy_x_forwarded_for_behind_real_nginx(tmp_path):
    assert os.path.exists(NGINX), "nginx missing: scripts/install-deps.sh installs it"
    # nginx reaches wshub from 127.0.0.1, the only trusted proxy.
    srv = Server("--config", write_config_top({"limits": {"max_connections_per_ip": 1},
                                               "trusted_proxies": ["127.0.0.1"]}))
    ngx = None
    try:
        base_fds = srv.fds()
        ngx = Nginx(srv.port)
        held = []
        # Two clients on their own addresses, through the one proxy: both
        # in, and they echo.
        for src in ("127.0.0.2", "127.0.0.3"):
            s = connect(ngx.port, source=src)
            assert status_line(s, upgrade_request()) == b"HTTP/1.1 101 Switching Protocols"
            echo_once(s, f"from {src}".encode())
            held.append(s)
        # The second connection of one client passes its limit of 1, and
        # nginx hands the 429 back with its Retry-After.
        s = connect(ngx.port, source="127.0.0.2")
        s.sendall(upgrade_request())
        head = read_head(s)
        assert head.startswith(b"HTTP/1.1 429 ") and b"Retry-After: " in head, head
        s.close()
        # What a client writes into X-Forwarded-For itself is left of the
        # address nginx appends, and is never read: a client cannot step
        # around its limit by naming others.
        spoof = upgrade_request()[:-2] + b"X-Forwarded-For: 198.51.100.9\r\n\r\n"
        s = connect(ngx.port, source="127.0.0.4")
        assert status_line(s, spoof).startswith(b"HTTP/1.1 101")
        held.append(s)
        spoof2 = upgrade_request()[:-2] + b"X-Forwarded-For: 198.51.100.10\r\n\r\n"
        s = connect(ngx.port, source="127.0.0.4")
        assert status_line(s, spoof2).startswith(b"HTTP/1.1 429 ")
        s.close()
        # Straight to wshub from an address that is not a trusted proxy,
        # the field is ignored and the connection counts as itself: refused
        # at accept, since 127.0.0.5 already holds its one connection.
        s = connect(srv.port, source="127.0.0.5")
        assert status_line(s, spoof).startswith(b"HTTP/1.1 101")
        held.append(s)
        s = connect(srv.port, source="127.0.0.5")
        assert status_line(s, spoof2).startswith(b"HTTP/1.1 429 ")
        s.close()
        # From the trusted proxy's own address without the field (a health
        # check, a proxy that does not add it): counted as the proxy.
        s = connect(srv.port, source="127.0.0.1")
        assert status_line(s, upgrade_request()).startswith(b"HTTP/1.1 101")
        held.append(s)
        s = connect(srv.port, source="127.0.0.1")
        assert status_line(s, upgrade_request()).startswith(b"HTTP/1.1 429 ")
        s.close()
        for s in held:
            close_cleanly(s)
        ngx.stop()
        ngx = None
        wait_fds_back(srv, base_fds)
        # Every slot came back: a client can connect again.
        s = connect(srv.port, source="127.0.0.2")
        assert status_line(s, upgrade_request()).startswith(b"HTTP/1.1 101")
        close_cleanly(s)
    finally:
        if ngx:
            ngx.stop()
        srv.stop()
    assert srv.proc.returncode == 0
