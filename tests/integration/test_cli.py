"""The command line as a user meets it: --help/--version, every bad flag
refused with a message naming it and exit status 2, --check-config on good,
bad and missing files, --web-root and the static-file rules, and
--deflate-level (levels 1..9 accepted, compression still correct)."""
import asyncio
import json
import os
import socket
import subprocess
import tempfile

import pytest
import websockets

import wsraw
from conftest import MULT, run_async

BIN = os.environ.get("WSHUB_BIN", "build/src/server/wshub")


def run(*args):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=10 * MULT,
                          stdin=subprocess.DEVNULL)


def test_cli_help_and_version():
    r = run("--help")
    assert r.returncode == 0
    for flag in ("--listen", "--workers", "--echo", "--max-message", "--max-fragments",
                 "--ping-interval", "--log-level", "--port-file", "--tls-cert", "--deflate",
                 "--deflate-level", "--config", "--check-config", "--message-timeout",
                 "--web-root", "--drain-time", "--max-client-memory", "--proxy-protocol"):
        assert flag in r.stdout, flag
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("wshub ")


@pytest.mark.parametrize("args,needle", [
    (["--workers", "0"], "--workers"),
    (["--workers", "abc"], "--workers"),
    (["--max-message", "-5"], "--max-message"),
    (["--max-fragments", "0"], "--max-fragments"),
    (["--ping-interval", "forever"], "--ping-interval"),
    (["--listen", "nohostport"], "--listen"),
    (["--listen", "127.0.0.1:70000"], "--listen"),
    (["--log-level", "loud"], "--log-level"),
    (["--deflate-level", "0"], "--deflate-level"),
    (["--deflate-level", "10"], "--deflate-level"),
    (["--message-timeout", "-1"], "--message-timeout"),
    (["--drain-time", "soon"], "--drain-time"),
    (["--max-client-memory", "lots"], "--max-client-memory"),
    (["--tls-cert", "/nonexistent.pem"], "--tls-cert"),
    (["--no-such-flag"], "Usage"),
    (["stray-argument"], "stray-argument"),
])
def test_cli_bad_flags_refused(args, needle):
    r = run(*args)
    assert r.returncode == 2, (args, r.returncode, r.stderr)
    assert needle in r.stderr, (args, r.stderr)


def test_cli_check_config():
    d = tempfile.mkdtemp(prefix="wshub-cli-")
    good = os.path.join(d, "good.json")
    bad = os.path.join(d, "bad.json")
    with open(good, "w") as f:
        json.dump({"namespaces": {"chat": {"history_size": 10}},
                   "auth": {"allow_anonymous": True}}, f)
    with open(bad, "w") as f:
        json.dump({"namespaces": {"chat": {"history_size": "ten"}}}, f)
    r = run("--check-config", "--config", good)
    assert r.returncode == 0 and "ok" in r.stdout, r
    r = run("--check-config", "--config", bad)
    assert r.returncode == 2
    assert "namespaces.chat.history_size" in r.stderr, r.stderr
    r = run("--check-config", "--config", os.path.join(d, "missing.json"))
    assert r.returncode == 2 and "missing.json" in r.stderr, r.stderr


def http_get(port, path, method="GET", body=b""):
    c = wsraw.Conn("127.0.0.1", port)
    try:
        length = f"Content-Length: {len(body)}\r\n" if body else ""
        c.send(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{length}\r\n".encode() + body)
        return c.read_http_response(timeout=5)
    finally:
        c.close()


def test_cli_listen_on_a_port_in_use_fails():
    """--listen localhost:PORT is 127.0.0.1 (then ::1 only where there is
    no IPv4): a port another program holds on 127.0.0.1 stops the start
    with the reason, rather than a quiet listen on ::1 alone."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for host in ("localhost", "127.0.0.1"):
            r = run("--listen", f"{host}:{port}")
            assert r.returncode == 1, (host, r)
            assert f'ev=listen_failed addr={host} port={port} err="Address already in use"' \
                in r.stderr, (host, r.stderr)


def test_cli_web_root_serves_only_flat_known_files(wshub):
    d = tempfile.mkdtemp(prefix="wshub-web-")
    with open(os.path.join(d, "index.html"), "w") as f:
        f.write("<p>hello from web-root</p>")
    with open(os.path.join(d, "app.js"), "w") as f:
        f.write("export const x = 1;")
    with open(os.path.join(d, "secret.txt"), "w") as f:
        f.write("not served")
    s = wshub("--web-root", d)
    r = http_get(s.port, "/")
    assert r.status == 200 and r.body == b"<p>hello from web-root</p>", r
    assert r.header("content-type").startswith("text/html")
    r = http_get(s.port, "/app.js")
    assert r.status == 200 and r.header("content-type").startswith("text/javascript")
    assert r.header("x-content-type-options") == "nosniff"
    for path in ("/secret.txt", "/missing.html", "/.hidden.html", "/../index.html",
                 "/sub/index.html", "/a%2e.html"):
        assert http_get(s.port, path).status == 404, path
    assert http_get(s.port, "/", method="POST").status in (405,), "POST on a static file"


def test_cli_web_root_answers_a_client_that_half_closes(wshub):
    """A client that shuts down its sending side once its request is out
    (nc -N, some HTTP/1.0 clients) still reads the whole answer: the
    server's EOF came while most of a 4 MiB file waited in its queue,
    which it used to drop with the connection."""
    d = tempfile.mkdtemp(prefix="wshub-web-")
    big = os.urandom(4 << 20)
    with open(os.path.join(d, "big.js"), "wb") as f:
        f.write(big)
    s = wshub("--web-root", d, "--workers", "1")
    for _ in range(3):
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # the server must queue
        c.settimeout(10 * MULT)
        c.connect(("127.0.0.1", s.port))
        c.sendall(b"GET /big.js HTTP/1.1\r\nHost: x\r\n\r\n")
        c.shutdown(socket.SHUT_WR)
        got = bytearray()
        while True:
            b = c.recv(1 << 16)
            if not b:
                break
            got += b
        c.close()
        head, _, body = bytes(got).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head[:200]
        assert len(body) == len(big) and body == big, len(body)


def test_cli_web_root_serves_whole_regular_files_only(wshub):
    """A static file is sent whole, past the 1 MiB an earlier version cut
    it to without a word; a FIFO or a directory under a served name is not
    a file (404), and opening the FIFO does not block the worker, which
    answers the next request; a file over the 4 MiB bound gets 500 and a
    warning in the log, never a truncated body."""
    d = tempfile.mkdtemp(prefix="wshub-web-")
    big = bytes((i * 7 + i // 251) % 256 for i in range(1536 * 1024))
    with open(os.path.join(d, "big.js"), "wb") as f:
        f.write(big)
    with open(os.path.join(d, "empty.css"), "wb"):
        pass
    os.mkfifo(os.path.join(d, "pipe.js"))
    os.mkdir(os.path.join(d, "dir.html"))
    with open(os.path.join(d, "huge.js"), "wb") as f:
        f.truncate((4 << 20) + 1)  # sparse: one byte over the bound
    s = wshub("--web-root", d, "--workers", "1")
    r = http_get(s.port, "/big.js")
    assert r.status == 200 and r.header("content-length") == str(len(big)), r
    assert r.body == big
    r = http_get(s.port, "/empty.css")
    assert r.status == 200 and r.header("content-length") == "0" and r.body == b"", r
    for path in ("/pipe.js", "/dir.html"):
        assert http_get(s.port, path).status == 404, path
    assert http_get(s.port, "/pipe.js", method="POST").status == 404
    r = http_get(s.port, "/huge.js")
    assert r.status == 500 and r.body == b"file too large to serve\n", r
    assert "ev=static_too_large file=huge.js bytes=4194305" in s.log(), s.log()[-2000:]
    assert http_get(s.port, "/big.js").body == big  # one worker, still serving
    # HEAD: the same head, no body (RFC 9110 9.3.2); other methods 405
    # naming both.
    for path, length in (("/big.js", len(big)), ("/empty.css", 0), ("/healthz", 3)):
        head, rest = head_request(s.port, path)
        assert head.startswith(b"HTTP/1.1 200 ") and b"\r\ncontent-length: %d\r\n" % length \
            in head.lower(), head
        assert rest == b"", (path, rest[:40])
    for path in ("/big.js", "/healthz"):
        r = http_get(s.port, path, method="DELETE")
        assert r.status == 405 and r.header("allow") == "GET, HEAD", r
        r = http_get(s.port, path, method="POST", body=b"a=1")
        assert r.status == 405 and r.header("allow") == "GET, HEAD", r
    assert http_get(s.port, "/big.js", body=b"a=1").status == 400
    assert http_get(s.port, "/big.js").body == big


def head_request(port, path):
    """A HEAD request read to EOF: the response head, and what came after."""
    c = socket.create_connection(("127.0.0.1", port), timeout=5 * MULT)
    try:
        c.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = wsraw.read_to_eof(c)
    finally:
        c.close()
    head, _, rest = got.partition(b"\r\n\r\n")
    return head + b"\r\n", rest


@pytest.mark.parametrize("level", ["1", "9"])
@run_async
async def test_cli_deflate_level_compresses_correctly(wshub, level):
    s = wshub("--echo", "--deflate", "--deflate-level", level)
    async with websockets.connect(f"ws://127.0.0.1:{s.port}/echo", compression="deflate") as ws:
        assert ws.extensions, "permessage-deflate was not agreed"
        text = json.dumps([{"id": i, "name": "record", "tags": ["a", "b"]} for i in range(300)])
        await ws.send(text)
        assert await asyncio.wait_for(ws.recv(), 5 * MULT) == text
