"""--admin-listen (docs/server.md): /metrics, /dashboard and the HTTP API
move to an address of their own, in plain HTTP, and are 404 on the public
one; the public endpoints are 404 there; the health checks answer on both.
Clients on the public port, with TLS or a PROXY header, are unaffected."""
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import wsraw
from conftest import MULT, Client, handshake_status, run_async, token
from test_api import API_KEY, api_config
from test_jwks import make_pki
from wsraw import scrape_metrics


def admin_port(server):
    m = re.search(r"ev=admin_listen addr=\S+ port=(\d+)", server.log())
    assert m, server.log()[-2000:]
    return int(m.group(1))


def status(port, path, method="GET", key=None, body=None, scheme="http", context=None):
    host = "localhost" if scheme == "https" else "127.0.0.1"
    r = urllib.request.Request(f"{scheme}://{host}:{port}{path}", method=method, data=body)
    if key:
        r.add_header("X-API-Key", key)
    if body is not None:
        r.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(r, timeout=5 * MULT, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def raw_status(port, target):
    """The status code of GET target, sent as it is."""
    with socket.create_connection(("127.0.0.1", port), timeout=5 * MULT) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target.encode())
        return s.recv(100).split(b" ", 2)[1]


OPERATOR = ["/metrics", "/dashboard", "/dashboard.html", "/api/info"]


@run_async
async def test_the_operator_endpoints_move_to_the_admin_address(hub):
    h = hub(api_config(), "--admin-listen", "127.0.0.1:0", workers=2)
    ap = admin_port(h.server)
    assert ap != h.port

    # Public: the operator's endpoints are not there, not even to say 401.
    for path in OPERATOR:
        assert status(h.port, path, key=API_KEY)[0] == 404, path
    st, _ = status(h.port, "/api/publish", "POST", API_KEY, b'{"channel":"chat:a","payload":1}')
    assert st == 404
    # Admin: they are, the API still behind its key.
    st, body = status(ap, "/metrics")
    assert st == 200 and b"wshub_connections " in body
    st, body = status(ap, "/dashboard")
    assert st == 200 and b"<html" in body.lower()
    assert status(ap, "/dashboard.js")[0] == 200  # what the page loads
    assert status(ap, "/api/info")[0] == 401
    assert status(ap, "/api/info", key=API_KEY)[0] == 200
    # Health checks on both.
    for port in (h.port, ap):
        assert status(port, "/healthz") == (200, b"ok\n")
        assert status(port, "/readyz") == (200, b"ok\n")
    # Nothing of the public's on the admin address: no upgrade, no demo.
    for path in ("/ws", "/raw/a", "/echo"):
        assert handshake_status(ap, path) == 404, path
    assert status(ap, "/")[0] == 404
    # A target without its "/" is no way around the split: static files
    # were served by the name after its first byte, whatever that was.
    assert raw_status(h.port, "xdashboard") == b"404"
    assert raw_status(h.port, "xdashboard.html") == b"404"
    assert raw_status(ap, "x") == b"404"
    assert raw_status(ap, "xindex.html") == b"404"

    # The public side works as before, and the API on the admin address
    # reaches its subscribers.
    assert handshake_status(h.port, "/ws", headers=[("Authorization", "Bearer " + token())]) == 101
    c = await Client.open(h, token("bob"))
    await c.subscribe("chat:admin")
    st, body = status(ap, "/api/publish", "POST", API_KEY,
                      b'{"channel":"chat:admin","payload":{"n":1}}')
    assert st == 200, body
    m = await c.expect(lambda x: x["type"] == "message", what="the API's publish")
    assert m["channel"] == "chat:admin" and m["payload"] == {"n": 1}
    await c.close()
    # The scrape counts the public port's 404s and the admin port's answers alike.
    m = scrape_metrics(ap)
    assert m['wshub_http_responses_total{code="404"}'] >= 9, m


def test_the_admin_address_is_plain_http_beside_tls_and_proxy_headers(tmp_path):
    """The public port speaks TLS and wants a PROXY header on every
    connection; the admin port wants neither (a scraper on the internal
    network talks plain HTTP to it)."""
    pki = make_pki(str(tmp_path))
    s = wsraw.Server(["--tls-cert", pki[1], "--tls-key", pki[2], "--proxy-protocol",
                      "--admin-listen", "127.0.0.1:0", "--workers", "1"])
    try:
        ap = admin_port(s)
        st, body = status(ap, "/metrics")
        assert st == 200 and b"wshub_connections " in body
        ctx = ssl.create_default_context(cafile=pki[0])
        # The public port: TLS after a PROXY header; /metrics is not there.
        with socket.create_connection(("127.0.0.1", s.port), timeout=5 * MULT) as raw:
            raw.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 443\r\n")
            with ctx.wrap_socket(raw, server_hostname="localhost") as t:
                t.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
                head = t.recv(4096)
        assert head.startswith(b"HTTP/1.1 404 "), head
    finally:
        assert s.stop() == 0


def test_a_full_server_refuses_the_admin_port_in_http(tmp_path):
    """At limits.max_connections a new connection is refused before it is
    read: on the TLS port with a TLS alert (it speaks TLS from its first
    byte), on the admin port with 503 and Retry-After, in plain HTTP as
    the scraper speaks it (it got the TLS alert, a broken response)."""
    pki = make_pki(str(tmp_path))
    cfg = tmp_path / "config.json"
    cfg.write_text('{"limits": {"max_connections": 1}}')
    os.chmod(cfg, 0o600)
    s = wsraw.Server(["--tls-cert", pki[1], "--tls-key", pki[2], "--config", str(cfg),
                      "--admin-listen", "127.0.0.1:0", "--workers", "1"])
    try:
        ap = admin_port(s)
        with socket.create_connection(("127.0.0.1", s.port), timeout=5 * MULT):  # held
            deadline = time.monotonic() + 5 * MULT
            while True:  # until the server has counted the held connection
                with socket.create_connection(("127.0.0.1", ap), timeout=5 * MULT) as a:
                    a.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    head = a.recv(4096)
                if not head.startswith(b"HTTP/1.1 200"):
                    break
                assert time.monotonic() < deadline, head
                time.sleep(0.05)
            assert head.startswith(b"HTTP/1.1 503 "), head
            assert b"Retry-After: 1\r\n" in head, head
            with socket.create_connection(("127.0.0.1", s.port), timeout=5 * MULT) as t:
                assert t.recv(16) == bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50])
    finally:
        assert s.stop() == 0


def test_the_admin_port_must_differ(tmp_path):
    r = subprocess.run([os.environ["WSHUB_BIN"], "--listen", "127.0.0.1:18555",
                        "--admin-listen", "127.0.0.1:18555"],
                       capture_output=True, text=True, timeout=10 * MULT)
    assert r.returncode == 2, r
    assert "--admin-listen: port 18555 is the --listen port" in r.stderr
    r = subprocess.run([os.environ["WSHUB_BIN"], "--admin-listen", "nope"],
                       capture_output=True, text=True, timeout=10 * MULT)
    assert r.returncode == 2 and "--admin-listen: expected HOST:PORT" in r.stderr, r
