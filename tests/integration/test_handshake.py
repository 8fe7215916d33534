"""HTTP side of the upgrade: statuses for bad handshakes, /healthz, 404/405,
426, 414 and 431. Raw sockets, exact request bytes."""

import base64
import os

import pytest

import wsraw

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def req(path="/echo", method="GET", version="HTTP/1.1", headers=None, omit=()):
    base = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    for k in omit:
        base.pop(k)
    if headers:
        base.update(headers)
    lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in base.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def send(server, raw):
    return wsraw.http_request(server.port, raw)


def test_valid_upgrade_101(wshub):
    s = wshub("--echo")
    c = wsraw.Conn("127.0.0.1", s.port)
    try:
        c.send(req())
        r = c.read_http_response(body=False)
        assert r.status == 101, r
        assert r.header("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", r
        assert r.header("upgrade").lower() == "websocket"
        assert "upgrade" in r.header("connection").lower()
        assert r.header("sec-websocket-extensions") is None, "no extension was offered"
    finally:
        c.close()


@pytest.mark.parametrize("variant", [
    {"Connection": "keep-alive, Upgrade"},
    {"Upgrade": "WebSocket", "Connection": "upgrade"},
    {"Sec-WebSocket-Protocol": "chat"},
    {"Origin": "http://example.test"},
    {"User-Agent": "x" * 2000},
])
def test_upgrade_variants_accepted(wshub, variant):
    s = wshub("--echo")
    c = wsraw.Conn("127.0.0.1", s.port)
    try:
        c.send(req(headers=variant))
        r = c.read_http_response(body=False)
        assert r.status == 101, r
        c.send_frame(wsraw.OP_TEXT, b"ok")
        assert c.recv_message() == (wsraw.OP_TEXT, b"ok")
    finally:
        c.close()


def test_lowercase_header_names_accepted(wshub):
    s = wshub("--echo")
    raw = (f"GET /echo HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
           f"sec-websocket-key: {KEY}\r\nsec-websocket-version: 13\r\n\r\n").encode()
    c = wsraw.Conn("127.0.0.1", s.port)
    try:
        c.send(raw)
        assert c.read_http_response(body=False).status == 101
    finally:
        c.close()


def test_request_written_byte_by_byte(wshub):
    s = wshub("--echo")
    c = wsraw.Conn("127.0.0.1", s.port)
    try:
        c.send(req(), chop=1, delay=0.001)
        assert c.read_http_response(body=False).status == 101
    finally:
        c.close()


BAD_400 = {
    "missing key": dict(omit=("Sec-WebSocket-Key",)),
    "key not base64": dict(headers={"Sec-WebSocket-Key": "not base64 at all!"}),
    "key of 15 bytes": dict(headers={"Sec-WebSocket-Key": base64.b64encode(os.urandom(15)).decode()}),
    "key of 17 bytes": dict(headers={"Sec-WebSocket-Key": base64.b64encode(os.urandom(17)).decode()}),
    "empty key": dict(headers={"Sec-WebSocket-Key": ""}),
    "missing Upgrade": dict(omit=("Upgrade",)),
    "Upgrade not websocket": dict(headers={"Upgrade": "h2c"}),
    "missing Connection": dict(omit=("Connection",)),
    "Connection without upgrade token": dict(headers={"Connection": "keep-alive"}),
    "missing Host": dict(omit=("Host",)),
    "HTTP/1.0": dict(version="HTTP/1.0"),
}


@pytest.mark.parametrize("name", list(BAD_400))
def test_bad_handshake_400(wshub, name):
    s = wshub("--echo")
    r = send(s, req(**BAD_400[name]))
    assert r.status == 400, f"{name}: {r!r}"


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET /echo\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: a\r\n bad-continuation\r\n\r\n",
    b"GET /echo HTTP/9.9\r\nHost: a\r\n\r\n",
])
def test_malformed_request_400(wshub, raw):
    s = wshub("--echo")
    r = send(s, raw)
    assert r.status in (400, 505) if b"9.9" in raw else r.status == 400, r


@pytest.mark.parametrize("version", ["8", "12", "14", "0", "abc"])
def test_unsupported_version_426(wshub, version):
    s = wshub("--echo")
    r = send(s, req(headers={"Sec-WebSocket-Version": version}))
    assert r.status == 426, r
    assert r.header("sec-websocket-version") == "13", r
    # RFC 9110 15.5.22: a 426 MUST name the protocol in Upgrade, which
    # Connection lists (7.8).
    assert r.header("upgrade") == "websocket", r
    assert [t.strip().lower() for t in r.header("connection").split(",")] == ["upgrade", "close"], r


def test_missing_version_400_or_426(wshub):
    s = wshub("--echo")
    r = send(s, req(omit=("Sec-WebSocket-Version",)))
    assert r.status in (400, 426), r
    if r.status == 426:
        assert r.header("sec-websocket-version") == "13", r


@pytest.mark.parametrize("path", ["/nope", "/nope.html", "/../README.md", "/echo/extra", "/rawx/a", "/healthz/x"])
def test_unknown_path_404(wshub, path):
    s = wshub("--echo")
    r = send(s, req(path=path))
    assert r.status == 404, r


def test_host_is_required_on_every_http11_request(wshub):
    """RFC 9112 3.2: an HTTP/1.1 request with no Host, any request with
    two, or one whose Host is not a host[:port], is answered 400, whatever
    it asks for (not only upgrades); HTTP/1.0 has no Host to require."""
    s = wshub("--echo")
    for raw, want in ((b"GET /healthz HTTP/1.1\r\n\r\n", 400),
                      (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
                      (b"GET /metrics HTTP/1.1\r\n\r\n", 400),
                      (b"GET /nothing HTTP/1.1\r\n\r\n", 400),
                      (b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n", 200),
                      (b"GET /healthz HTTP/1.0\r\n\r\n", 200),
                      (b"GET /healthz HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
                      (b"GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
                      (b"GET /healthz HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
                      (b"GET /healthz HTTP/1.1\r\nHost: a,b\r\n\r\n", 400),
                      (b"GET /healthz HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", 200),
                      (b"GET /healthz HTTP/1.1\r\nHost:\r\n\r\n", 200),  # empty: allowed
                      # RFC 9112 3.2.2: the absolute-form is accepted too
                      (b"GET http://x/healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200),
                      (b"GET http://x HTTP/1.1\r\nHost: x\r\n\r\n", 200),  # "/": the demo page
                      (b"GET http:///healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400)):
        r = send(s, raw)
        assert r.status == want, (raw, r)


def test_echo_without_flag_404(wshub):
    s = wshub()
    r = send(s, req(path="/echo"))
    assert r.status == 404, r


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_non_get_405_with_allow(wshub, method):
    s = wshub("--echo")
    r = send(s, req(method=method, headers={"Content-Length": "0"}))
    assert r.status == 405, r
    assert r.header("allow") is not None and r.header("allow").replace(" ", "").upper() in (
        "GET", "GET,HEAD"), r


@pytest.mark.parametrize("path", ["/raw/" + "a" * 5000, "/echo?" + "q" * 4200, "/" + "x" * 20000])
def test_request_line_too_long_414(wshub, path):
    s = wshub("--echo")
    r = send(s, req(path=path))
    assert r.status == 414, r


def test_request_line_just_under_4k_not_414(wshub):
    s = wshub("--echo")
    # (channel names are short, so the long target is a query on /echo)
    path = "/echo?" + "a" * (4096 - len("GET  HTTP/1.1\r\n") - len("/echo?") - 8)
    assert len(f"GET {path} HTTP/1.1\r\n") == 4088
    r = wsraw.Conn("127.0.0.1", s.port)
    try:
        r.send(req(path=path))
        resp = r.read_http_response(body=False)
        assert resp.status == 101, resp
    finally:
        r.close()


def test_head_too_large_431(wshub):
    s = wshub("--echo")
    pad = {f"X-Pad-{i}": "p" * 200 for i in range(45)}  # ~9.5 KiB in 50 headers
    r = send(s, req(headers=pad))
    assert r.status == 431, r


def test_single_huge_header_431(wshub):
    s = wshub("--echo")
    r = send(s, req(headers={"X-Big": "b" * 9000}))
    assert r.status == 431, r


def test_too_many_headers_431(wshub):
    s = wshub("--echo")
    many = {f"X-H{i}": "1" for i in range(70)}  # 75 headers, ~0.7 KiB
    r = send(s, req(headers=many))
    assert r.status == 431, r


def test_64_headers_accepted(wshub):
    s = wshub("--echo")
    many = {f"X-H{i}": "1" for i in range(64 - 5)}  # exactly 64 with the 5 base headers
    c = wsraw.Conn("127.0.0.1", s.port)
    try:
        c.send(req(headers=many))
        r = c.read_http_response(body=False)
        assert r.status == 101, r
    finally:
        c.close()


def test_healthz(wshub):
    s = wshub()
    r = send(s, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert r.status == 200, r
    assert r.body == b"ok\n", r


def test_healthz_many_times(wshub):
    s = wshub("--workers", 2)
    for _ in range(50):
        r = s.healthz()
        assert r.status == 200 and r.body == b"ok\n", r


def test_error_response_then_connection_usable_or_closed(wshub):
    """After an error status the server either closes or keeps the HTTP
    connection usable; it must not leave it hanging half-parsed forever."""
    s = wshub("--echo", "--handshake-timeout", 2)
    c = wsraw.Conn("127.0.0.1", s.port)
    try:
        c.send(req(path="/nope"))
        r = c.read_http_response()
        assert r.status == 404
        how = c.wait_eof(4)
        assert how in ("eof", "reset"), "connection left open after an error response"
    finally:
        c.close()


def test_frame_pipelined_with_the_request(wshub):
    """Bytes that follow the request head in the same write are the first
    WebSocket frames and must not be lost."""
    s = wshub("--echo")
    c = wsraw.Conn("127.0.0.1", s.port)
    try:
        c.send(req() + wsraw.frame(wsraw.OP_TEXT, b"early bird") +
               wsraw.frame(wsraw.OP_PING, b"p"))
        r = c.read_http_response(body=False)
        assert r.status == 101, r
        assert c.recv_message() == (wsraw.OP_TEXT, b"early bird")
        f = c.recv_frame()
        assert f.opcode == wsraw.OP_PONG and f.payload == b"p", f
    finally:
        c.close()


def test_two_requests_pipelined_before_upgrade_refused(wshub):
    """A refused request followed by more bytes: the server answers the first
    and does not crash on the rest."""
    s = wshub("--echo")
    c = wsraw.Conn("127.0.0.1", s.port)
    try:
        c.send(req(path="/nope") + req())
        r = c.read_http_response()
        assert r.status == 404, r
    finally:
        c.close()


def _raw_req(lines):
    return ("\r\n".join(["GET /echo HTTP/1.1"] + lines) + "\r\n\r\n").encode()


_BASE = ["Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
         f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13"]


@pytest.mark.parametrize("dup", [
    f"Sec-WebSocket-Key: {base64.b64encode(b'another 16 bytes').decode()}",
    "Host: other.example",
])
def test_duplicate_singleton_header_400(wshub, dup):
    """RFC 6455 4.2.1 (one key) and RFC 7230 5.4 (one Host)."""
    s = wshub("--echo")
    r = send(s, _raw_req(_BASE + [dup]))
    assert r.status == 400, r


def test_key_with_surrounding_whitespace_accepted(wshub):
    s = wshub("--echo")
    lines = [x if not x.startswith("Sec-WebSocket-Key") else f"Sec-WebSocket-Key:   {KEY}  "
             for x in _BASE]
    c = wsraw.Conn("127.0.0.1", s.port)
    try:
        c.send(_raw_req(lines))
        r = c.read_http_response(body=False)
        assert r.status == 101, r
        assert r.header("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    finally:
        c.close()


@pytest.mark.parametrize("name,value", [
    ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
    ("Sec-WebSocket-Extensions", "x-unknown-extension"),
    ("Sec-WebSocket-Protocol", "chat, superchat"),
])
def test_unsupported_offers_not_selected(wshub, name, value):
    """Nothing is negotiated that the server does not implement: no
    extension or subprotocol in the 101, and RSV1 stays a protocol error."""
    s = wshub("--echo")
    c = wsraw.Conn("127.0.0.1", s.port)
    try:
        c.send(req(headers={name: value}))
        r = c.read_http_response(body=False)
        assert r.status == 101, r
        assert r.header(name.lower()) is None, f"server selected {r.header(name.lower())!r}"
        c.send_frame(wsraw.OP_TEXT, b"compressed?", rsv=4)
        f, _ = c.wait_close()
        assert f.close_code() == 1002, f
    finally:
        c.close()
