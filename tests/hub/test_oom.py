"""Out of memory: the real wshub with an allocator that fails now and then
(failmalloc.c, an LD_PRELOAD shim), under traffic of every kind: /ws
clients with and without permessage-deflate, /raw fan-out, /echo, the HTTP
API and /metrics.

While allocations fail, what a client meets must be an answer to "the
server is short of memory" or its own request done: a refused upgrade (500,
503), a close with 1011, error 5000 or 5001 to a command (retry later), 500 or 503 from the API,
or at worst a dropped connection. Never a wrong answer a client would act
on (401 or 403 for a good token or key, 400 for a good body, a 101 with a
wrong accept key, an error code that blames the request), never a command
left without an answer on a connection that stays open, never a crash. And
nothing published and acknowledged is lost: every offset the API returned
is in the channel's history afterwards, with its payload, and a subscriber
that was there all along got messages in offset order, each once and as
published. Once the allocator is back, the server serves a fresh client in
full, and at teardown (conftest.py) is back to its file descriptors and
exits 0 on SIGTERM.

The shim replaces malloc, so it cannot run beside AddressSanitizer's: the
test is registered only for the plain build (tests/hub/CMakeLists.txt)."""
import asyncio
import json
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
import websockets

import wsraw
from conftest import MULT, Client, merge, run_async, token
from test_api import API_KEY, api_config

SHIM = os.environ.get("WSH_FAILMALLOC")
pytestmark = pytest.mark.skipif(not SHIM, reason="WSH_FAILMALLOC (the shim) is not built")

# What may happen to a request while allocations fail (see the docstring).
ALLOWED = {"ok", "refused 500", "refused 503", "closed 1011", "dropped", "error 5000", "error 5001",
           "http 200", "http 500", "http 503"}


def http(port, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=data)
    r.add_header("X-API-Key", API_KEY)
    if data is not None:
        r.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(r, timeout=10 * MULT) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class CommandError(Exception):
    def __init__(self, code):
        super().__init__(f"error {code}")
        self.code = code


async def reply(c, type_, channel=None, payload=None):
    """A command's reply; an `error` reply raises CommandError."""
    r = await c.cmd(type_, channel, payload=payload, timeout=20)
    if r["type"] == "error":
        raise CommandError(r["payload"]["code"])
    return r


def outcome(e):
    """What a client met, from the exception that ended its round."""
    if isinstance(e, CommandError):
        return f"error {e.code}"
    if isinstance(e, websockets.InvalidStatusCode):
        return f"refused {e.status_code}"
    text = str(e)
    m = re.search(r"closed (\d+)", text)
    if m:
        return f"closed {m.group(1)}"
    if re.search(r"closed None|did not receive a valid HTTP response", text) or isinstance(
            e, (websockets.ConnectionClosed, ConnectionError, wsraw.PeerClosed,
                urllib.error.URLError, EOFError)):
        return "dropped"
    m = re.search(r"handshake to \S+ got (\d+)", text)
    if m:
        return f"refused {m.group(1)}"
    if "timeout waiting" in text or isinstance(e, (asyncio.TimeoutError, wsraw.ReadTimeout)):
        return "hang"
    return f"unexpected {type(e).__name__}: {text[:200]}"


async def ws_round(h, i, seen):
    try:
        c = await Client.open(h, token(f"u{i % 7}"), compression="deflate" if i % 2 else None)
        await reply(c, "subscribe", "chat:oom")
        for k in range(3):
            await reply(c, "publish", "chat:oom", {"i": i, "k": k, "pad": "x" * (k * 3000)})
        await reply(c, "history", "chat:oom", {"limit": 20})
        await reply(c, "presence", "chat:oom")
        await c.close()
        seen.append("ok")
    except Exception as e:  # noqa: BLE001 - every way a round ends is judged
        seen.append(outcome(e))


def pass_one(src, dst, body, seen):
    """src sends body; what dst reads next must be it, or a close."""
    src.send_frame(wsraw.OP_TEXT, body)
    f = dst.recv_frame(timeout=5)
    if f.opcode == wsraw.OP_CLOSE:
        seen.append(f"closed {f.close_code()}")
    else:
        assert f.payload == body, "message altered"
        seen.append("ok")


def raw_round(port, i, seen):
    """Two /raw clients: what one sends the other gets, or one of them
    learns the server could not (a close, a refusal, a dropped connection)."""
    conns = []
    try:
        a = wsraw.ws_connect(port, "/raw/oom")
        conns.append(a)
        b = wsraw.ws_connect(port, "/raw/oom")
        conns.append(b)
        time.sleep(0.02)  # both joined before the message
        pass_one(a, b, b"m" * (100 + i * 37 % 20000), seen)
    except wsraw.ReadTimeout:
        # Not delivered: only allowed when the sender was cut off.
        try:
            f = conns[0].recv_frame(timeout=1)
            seen.append(f"closed {f.close_code()}" if f.opcode == wsraw.OP_CLOSE else "hang")
        except Exception as e:  # noqa: BLE001
            seen.append(outcome(e))
    except Exception as e:  # noqa: BLE001
        seen.append(outcome(e))
    finally:
        for x in conns:
            x.close()


def echo_round(port, i, seen):
    try:
        c = wsraw.ws_connect(port, "/echo")
        try:
            pass_one(c, c, bytes([65 + i % 26]) * (1000 + i * 4099 % 200000), seen)
        finally:
            c.close()
    except Exception as e:  # noqa: BLE001
        seen.append(outcome(e))


def http_round(port, i, seen, acked):
    for method, path, body in [
            ("GET", "/metrics", None),
            ("POST", "/api/publish", {"channel": "chat:oom", "payload": {"api": i}}),
            # a string long enough that the parser's buffer grows for it
            ("POST", "/api/publish", {"channel": "keep:stay",
                                      "payload": {"n": i, "pad": "x" * (i * 397 % 3000)}}),
            ("GET", "/api/history/chat:oom", None),
            ("GET", "/api/presence/chat:oom", None)]:
        try:
            st, resp = http(port, method, path, body)
            seen.append(f"http {st}")
            if st == 200 and body is not None and body["channel"] == "keep:stay":
                acked[json.loads(resp)["offsets"][0]] = body["payload"]
        except Exception as e:  # noqa: BLE001
            seen.append(outcome(e))


async def storm(h, seconds, seen, acked):
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline and i < 400:
        await asyncio.gather(
            asyncio.wait_for(ws_round(h, i, seen), 60 * MULT),
            asyncio.wait_for(ws_round(h, i + 1, seen), 60 * MULT),
            loop.run_in_executor(None, raw_round, h.port, i, seen),
            loop.run_in_executor(None, echo_round, h.port, i, seen),
            loop.run_in_executor(None, http_round, h.port, i, seen, acked))
        i += 2


async def drain(c, secs):
    """Messages that arrive within secs, and how the connection ended if it did."""
    got = []
    try:
        while True:
            got.append(await c.push("message", "keep:stay", timeout=secs))
    except AssertionError:
        return got, None
    except Exception as e:  # noqa: BLE001
        return got, outcome(e)


@run_async
async def test_failing_allocations_are_answered_and_survived(hub, tmp_path, monkeypatch):
    flag = tmp_path / "fail"
    monkeypatch.setenv("LD_PRELOAD", SHIM)
    monkeypatch.setenv("WSH_FAILMALLOC_FLAG", str(flag))
    monkeypatch.setenv("WSH_FAILMALLOC_ONE_IN", "40")
    cfg = merge(api_config(), {"namespaces": {"keep": {"history_size": 1000, "recover": True}}})
    h = hub(cfg, "--echo", "--deflate", "--max-message", 1 << 20)
    monkeypatch.delenv("LD_PRELOAD")

    # A subscriber there before, through and after the failures.
    stay = await Client.open(h, token("stayer"))
    await stay.subscribe("keep:stay")

    seen, acked = [], {}
    flag.touch()
    try:
        await storm(h, 6, seen, acked)
        got, ended = await drain(stay, 0.5)
    finally:
        flag.unlink()
    time.sleep(0.1)  # the shim looks at its flag every 20 ms
    assert h.server.alive(), h.log()[-3000:]

    counts = Counter(seen)
    print("outcomes:", dict(counts))
    bad = {k: n for k, n in counts.items() if k not in ALLOWED}
    assert not bad, f"answers no client should get: {bad}; all: {dict(counts)}"
    # The failures did happen, and were met: not every request got through.
    assert counts["ok"] > 0 and sum(n for k, n in counts.items() if k not in ("ok", "http 200")), \
        counts

    # Back to normal: the stayer, if still open, gets what is published now.
    st, resp = http(h.port, "POST", "/api/publish", {"channel": "keep:stay", "payload": {"n": -1}})
    assert st == 200, (st, resp)
    acked[json.loads(resp)["offsets"][0]] = {"n": -1}
    if ended is None:
        more, ended = await drain(stay, 2)
        got += more
        if ended is None:
            assert got and got[-1]["payload"] == {"n": -1}, got[-3:]
    assert ended in (None, "closed 1011", "dropped"), ended
    offsets = [m["offset"] for m in got]
    assert offsets == sorted(set(offsets)), f"out of order or twice: {offsets}"
    for m in got:
        if m["offset"] in acked:
            assert m["payload"] == acked[m["offset"]], m

    # Nothing acknowledged is lost: all of it is in history, as published.
    st, resp = http(h.port, "GET", "/api/history/keep:stay?limit=1000")
    assert st == 200, (st, resp)
    kept = {m["offset"]: m["payload"] for m in json.loads(resp)["payload"]["messages"]}
    lost = {o: p for o, p in acked.items() if kept.get(o) != p}
    assert not lost, f"acknowledged, not in history as published: {lost}"

    # And a fresh client is served in full.
    fresh = await Client.open(h, token("after"))
    await fresh.subscribe("chat:after")
    assert await fresh.publish("chat:after", {"x": 1}) >= 1
    m = await fresh.push("message", "chat:after")
    assert m["payload"] == {"x": 1}
    await fresh.close()
    e = wsraw.ws_connect(h.port, "/echo")
    e.send_frame(wsraw.OP_TEXT, b"after")
    assert e.recv_frame().payload == b"after"
    e.close()


def tls_echo(port, ctx, body):
    """One wss:// echo on a fresh connection: the echoed bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10 * MULT) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            # wsraw's client over the TLS socket
            c = wsraw.Conn.__new__(wsraw.Conn)
            c.sock, c.buf, c.closed_by_peer, c.response, c.pongs, c.extra_bytes = \
                t, bytearray(), None, None, [], 0
            c.handshake("/echo", host_header="localhost")
            c.send_frame(wsraw.OP_BINARY, body)
            f = c.recv_frame(timeout=10)
            return f.payload if f.opcode == wsraw.OP_BINARY else f"closed {f.close_code()}"


def test_tls_handshakes_come_back_after_failing_allocations(tmp_path):
    """OpenSSL 3.0 names an algorithm the first time its kind is fetched,
    and never again if that ran out of memory: TLS13-KDF stayed
    "unsupported", and every TLS 1.3 handshake after an out-of-memory spell
    failed with an internal-error alert, for good. wsh_openssl_prime names
    them all at startup. During the spell handshakes may fail (almost all
    do: a handshake allocates hundreds of times), and so may the reloads
    SIGHUP asks for (the old context stays); after it every handshake and
    reload works. With at most 10 connections an address, none of those
    that failed in the spell is still counted against it after."""
    import ssl
    import subprocess
    (tmp_path / "config.json").write_text(json.dumps({"limits": {"max_connections_per_ip": 10}}))
    os.chmod(tmp_path / "config.json", 0o600)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", "key.pem", "-out", "cert.pem",
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   cwd=tmp_path, check=True, capture_output=True)
    flag = tmp_path / "fail"
    env = {"LD_PRELOAD": SHIM, "WSH_FAILMALLOC_FLAG": str(flag), "WSH_FAILMALLOC_ONE_IN": "10"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        srv = wsraw.Server(["--workers", "2", "--echo", "--tls-cert", str(tmp_path / "cert.pem"),
                            "--tls-key", str(tmp_path / "key.pem"),
                            "--config", str(tmp_path / "config.json")])
    finally:
        for k, v in old.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
    ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    try:
        # No handshake before: the first ones, which fetch what TLS uses,
        # meet the failing allocator. Three spells, each followed by
        # handshakes that must all work: three chances for a fetch to fail
        # for good (the first reached is a matter of luck).
        for spell in range(3):
            flag.touch()
            tried, deadline = 0, time.monotonic() + 2
            while time.monotonic() < deadline and tried < 20000:
                tried += 1
                if tried % 500 == 0:
                    srv.signal(signal.SIGHUP)  # a reload that may fail, keeping the old context
                try:
                    tls_echo(srv.port, ctx, os.urandom(100 + tried % 5000))
                except (ssl.SSLError, OSError, wsraw.PeerClosed, wsraw.ReadTimeout, AssertionError):
                    pass  # refused or cut: allowed while memory fails
            flag.unlink()
            time.sleep(0.1)  # the shim looks at its flag every 20 ms
            assert srv.alive(), srv.log()[-3000:]
            for i in range(10):
                body = os.urandom(1 + i * 997)
                assert tls_echo(srv.port, ctx, body) == body, f"handshake {i} after spell {spell}"
        # And a reload works again.
        reloads = srv.log().count("ev=tls_reload ok=1")
        srv.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5 * MULT
        while srv.log().count("ev=tls_reload ok=1") == reloads:
            assert time.monotonic() < deadline, srv.log()[-2000:]
            time.sleep(0.02)
        assert tls_echo(srv.port, ctx, b"reloaded") == b"reloaded"
        srv.signal(signal.SIGTERM)
        assert srv.wait(10) == 0, srv.log()[-3000:]
        assert re.search(r"failmalloc: failed=[1-9]", srv.log()), "no allocation failed"
    finally:
        srv.kill()


def test_start_with_failing_allocations_serves_or_says_why(tmp_path):
    """Started while allocations fail, the server either comes up and
    stops on SIGTERM with 0, or exits 1 or 2 with a line that says memory
    ran out: never a signal, and never a complaint about the configuration
    (a key load that failed for memory was reported as a duplicate key). (OpenSSL 3.0 goes on without its default context when
    setting it up ran out of memory, and crashed on a NULL lock at the
    first algorithm lookup; wsh_openssl_prime now checks for it.)"""
    import subprocess
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(api_config()))
    flag = tmp_path / "fail"
    flag.touch()
    codes = Counter()
    for i in range(60):
        pf = tmp_path / f"port{i}"
        env = dict(os.environ, LD_PRELOAD=SHIM, WSH_FAILMALLOC_FLAG=str(flag),
                   WSH_FAILMALLOC_ONE_IN=str((20, 100, 400)[i % 3]))
        p = subprocess.Popen([os.environ["WSHUB_BIN"], "--listen", "127.0.0.1:0", "--port-file", str(pf),
                              "--config", str(cfg), "--workers", "2"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 3 * MULT
        while p.poll() is None and not pf.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            _, err = p.communicate(timeout=10 * MULT)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            raise AssertionError(f"start {i}: no exit 10 s after SIGTERM")
        err = err.decode(errors="replace")
        assert p.returncode in (0, 1, 2), f"start {i}: exit {p.returncode}\n{err[-2000:]}"
        if p.returncode != 0:
            # The configuration is good: what went wrong is memory, and the
            # line says so rather than blaming the file.
            assert re.search(r"^(wshub: |.*lvl=error).*out of memory", err, re.M), \
                f"start {i}: exit {p.returncode}, not said why:\n{err}"
        codes[p.returncode] += 1
    assert codes[0] > 0 and codes[0] < 60, f"none or all of the starts failed: {dict(codes)}"


def token_status(h, tok):
    """The status of an upgrade with tok as its bearer token, as a string,
    or "dropped"."""
    from conftest import handshake_status
    try:
        return str(handshake_status(h.port, headers=[("Authorization", "Bearer " + tok)]))
    except (OSError, wsraw.PeerClosed, wsraw.ReadTimeout):
        return "dropped"


def failing_hub(hub, monkeypatch, flag, one_in, auth):
    """A hub with two workers and auth, whose allocations fail one in
    one_in while the file flag exists."""
    from conftest import base_config
    monkeypatch.setenv("LD_PRELOAD", SHIM)
    monkeypatch.setenv("WSH_FAILMALLOC_FLAG", str(flag))
    monkeypatch.setenv("WSH_FAILMALLOC_ONE_IN", str(one_in))
    try:
        return hub(merge(base_config(), {"auth": auth}), workers=2)
    finally:
        monkeypatch.delenv("LD_PRELOAD")


def test_key_set_fetches_through_failing_allocations(hub, tmp_path, monkeypatch):
    """auth.jwks_url while allocations fail: fetches (at start of the
    spell by SIGHUP, and for tokens naming a key the server lacks) may
    fail and are retried; a token of a key the server has is never refused
    as invalid (403) for the server's want of memory, nor is one of a key
    fetched during the spell (a worker whose copy of the new set could not
    be made answers 500). After the spell a fetch brings the issuer's new
    key and its tokens get in."""
    from test_jwks import Issuer, fetches, issuer_auth, make_pki, rs_token, rsa_jwk, wait_fetches

    pki = make_pki(str(tmp_path))
    idp = Issuer(pki)
    try:
        idp.keys = [rsa_jwk("k1", "k1")]
        flag = tmp_path / "fail"
        h = failing_hub(hub, monkeypatch, flag, 40, issuer_auth(idp, pki))
        wait_fetches(h, 1, 1)
        known, fetched = Counter(), Counter()
        idp.keys = [rsa_jwk("k1", "k1"), rsa_jwk("k2", "k2")]
        flag.touch()
        try:
            deadline = time.monotonic() + 4
            for i in range(400):
                if time.monotonic() > deadline:
                    break
                if i % 50 == 0:
                    h.server.signal(signal.SIGHUP)  # a fetch, which may fail
                known[token_status(h, rs_token("k1", "k1", f"u{i}"))] += 1
                # k2 may wait, fail, or get in: once a fetch has brought
                # it, it is a key the server has.
                after = fetches(h, 1) > 1
                (fetched if after else Counter())[token_status(h, rs_token("k2", "k2", f"v{i}"))] += 1
        finally:
            flag.unlink()
        time.sleep(0.1)
        assert h.server.alive(), h.log()[-3000:]
        print("k1 tokens:", dict(known), "k2 tokens after its fetch:", dict(fetched))
        assert set(known) <= {"101", "500", "503", "dropped"}, dict(known)
        assert set(fetched) <= {"101", "500", "503", "dropped"}, dict(fetched)
        # After the spell: k1 as ever, and k2 once a fetch has brought it
        # (a token naming it asks for one at most every 10 s).
        assert token_status(h, rs_token("k1", "k1", "after")) == "101"
        deadline = time.monotonic() + 15 * MULT
        while token_status(h, rs_token("k2", "k2", "after")) != "101":
            assert time.monotonic() < deadline, h.log()[-3000:]
            time.sleep(0.5)
    finally:
        idp.close()



def hanging_lookups_hub(hub, monkeypatch, auth):
    """A hub whose getaddrinfo never returns (the shim's
    WSH_FAILMALLOC_HANG_LOOKUPS), as glibc's does once an allocation failed
    inside it and left its resolv.conf lock held (seen with 2.36, along
    with crashes)."""
    from conftest import base_config
    monkeypatch.setenv("LD_PRELOAD", SHIM)
    monkeypatch.setenv("WSH_FAILMALLOC_HANG_LOOKUPS", "1")
    try:
        return hub(merge(base_config(), {"auth": auth}), workers=1)
    finally:
        monkeypatch.delenv("LD_PRELOAD")
        monkeypatch.delenv("WSH_FAILMALLOC_HANG_LOOKUPS")


def test_localhost_and_literals_need_no_resolver(hub, tmp_path, monkeypatch):
    """--listen 127.0.0.1 and an auth.jwks_url on localhost never go
    through getaddrinfo: with every lookup hanging the server starts,
    fetches the key set, and a SIGHUP brings the issuer's new key."""
    from test_jwks import Issuer, issuer_auth, make_pki, rs_token, rsa_jwk, wait_fetches
    from conftest import handshake_status

    pki = make_pki(str(tmp_path))
    idp = Issuer(pki)
    try:
        idp.keys = [rsa_jwk("k1", "k1")]
        h = hanging_lookups_hub(hub, monkeypatch, issuer_auth(idp, pki))
        wait_fetches(h, 1, 1)
        idp.keys = [rsa_jwk("k1", "k1"), rsa_jwk("k2", "k2")]
        h.server.signal(signal.SIGHUP)
        wait_fetches(h, 1, 2)
        auth = [("Authorization", "Bearer " + rs_token("k2", "k2"))]
        assert str(handshake_status(h.port, headers=auth)) == "101"
    finally:
        idp.close()


def test_lookup_that_never_returns_leaves_one_thread(hub, monkeypatch):
    """An issuer whose name lookup never returns: the first fetch gives up
    at its deadline and leaves its lookup thread; later fetches fail at
    once, saying why, and start no other, so threads do not pile up one a
    fetch. The server still stops on SIGTERM (the hub fixture's teardown).
    The name is never sent to a name server: the shim's lookups hang."""
    from test_jwks import fetches
    h = hanging_lookups_hub(hub, monkeypatch, {
        "jwks_url": "https://wshub-test.invalid/jwks", "jwks_refresh_s": 3600})
    deadline = time.monotonic() + 20 * MULT
    while fetches(h, 0) < 1:
        assert time.monotonic() < deadline, h.log()[-3000:]
        time.sleep(0.1)
    assert "no answer in time" in h.log()
    threads = len(os.listdir(f"/proc/{h.pid}/task"))
    for n in range(2, 7):
        h.server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5 * MULT
        while fetches(h, 0) < n:
            assert time.monotonic() < deadline, h.log()[-3000:]
            time.sleep(0.05)
    assert h.log().count("an earlier lookup has not returned") >= 5, h.log()[-3000:]
    assert len(os.listdir(f"/proc/{h.pid}/task")) <= threads


def test_new_key_while_allocations_fail(hub, tmp_path, monkeypatch):
    """A key set fetched while allocations fail: a worker that cannot make
    its copy of the new set keeps the old one a while, and a token of the
    new key, which it does not know, is the server's fault to refuse
    then: 500, never 403. A plain-http issuer on loopback, so that fetches
    get through at one allocation in 150 failing."""
    from test_jwks import Issuer, fetches, rs_token, rsa_jwk, wait_fetches

    idp = Issuer()
    try:
        idp.keys = [rsa_jwk("k1", "k1")]
        flag = tmp_path / "fail"
        h = failing_hub(hub, monkeypatch, flag, 150, {
            "jwks_url": f"http://127.0.0.1:{idp.port}/jwks", "jwks_refresh_s": 3600})
        wait_fetches(h, 1, 1)
        idp.keys = [rsa_jwk("k1", "k1"), rsa_jwk("k2", "k2")]
        seen = Counter()
        flag.touch()
        try:
            deadline = time.monotonic() + 15 * MULT
            while sum(seen.values()) < 300 and time.monotonic() < deadline:
                if fetches(h, 1) < 2:
                    h.server.signal(signal.SIGHUP)
                    time.sleep(0.05)
                    continue
                if not seen:
                    # A key the issuer does not have: its fetch leaves the
                    # next 10 s without another, so a token the server
                    # wrongly took for unknown would meet 403 at once.
                    token_status(h, rs_token("k3", "k3"))
                seen[token_status(h, rs_token("k2", "k2", f"v{sum(seen.values())}"))] += 1
        finally:
            flag.unlink()
        time.sleep(0.1)  # the shim looks at its flag every 20 ms
        print("k2 tokens after its fetch:", dict(seen))
        assert sum(seen.values()) > 0, "no fetch got through: " + str(Counter(re.findall(r"ev=jwks_fetch ok=0 .*", h.log())))
        assert set(seen) <= {"101", "500", "503", "dropped"}, dict(seen)
        assert token_status(h, rs_token("k2", "k2", "after")) == "101"
    finally:
        idp.close()


def cpu_ticks(pid):
    """User plus system clock ticks a process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def echo_on_a_new_connection(srv, conns):
    """A fresh /echo connection is served in full, and the server is
    alive (the connection goes into conns, for the test to close)."""
    c = wsraw.Conn("127.0.0.1", srv.port)
    conns.append(c)
    c.handshake("/echo")
    c.send_frame(wsraw.OP_TEXT, b"new")
    assert c.recv_message(timeout=5) == (wsraw.OP_TEXT, b"new")
    assert srv.alive()


def test_out_of_fds_with_no_reserve_the_listener_rests(monkeypatch):
    """Out of file descriptors (RLIMIT_NOFILE 64) with no reserve fd to
    refuse with: the shim's WSH_FAILMALLOC_NO_RESERVE fails every open of
    /dev/null, as when another thread takes the number the reserve had
    just freed. The listener rests (ev=accept_paused) instead of waking the
    worker at once, turn after turn: the server burns little CPU while
    full. Connections past the limit wait unanswered; once others close,
    they are served, and so is a new one."""
    import resource
    monkeypatch.setenv("LD_PRELOAD", SHIM)
    monkeypatch.setenv("WSH_FAILMALLOC_NO_RESERVE", "1")
    try:
        srv = wsraw.Server(["--workers", "1", "--echo"])
    finally:
        monkeypatch.delenv("LD_PRELOAD")
        monkeypatch.delenv("WSH_FAILMALLOC_NO_RESERVE")
    held, waiting = [], []
    try:
        resource.prlimit(srv.pid, resource.RLIMIT_NOFILE, (64, 64))
        for _ in range(100):
            c = wsraw.Conn("127.0.0.1", srv.port)
            try:
                c.handshake("/echo", timeout=1)
                held.append(c)
            except wsraw.ReadTimeout:
                waiting.append(c)
                if len(waiting) == 3:
                    break
        assert len(waiting) == 3, f"every one of {len(held)} connections was answered"
        assert 30 <= len(held) < 64, len(held)
        time.sleep(0.2)
        before = cpu_ticks(srv.pid)
        time.sleep(1.0 * MULT)
        used = cpu_ticks(srv.pid) - before
        assert used < 30 * MULT, f"{used} ticks of CPU in {MULT} s while full"
        assert "ev=accept_paused" in srv.log(), srv.log()[-2000:]
        for c in held:
            c.close()
        held = []
        for i, c in enumerate(waiting):
            resp = c.read_http_response(timeout=10, body=False)
            assert resp.status == 101, resp
            c.send_frame(wsraw.OP_TEXT, b"waited %d" % i)
            assert c.recv_message(timeout=5) == (wsraw.OP_TEXT, b"waited %d" % i)
        echo_on_a_new_connection(srv, waiting)
    finally:
        for c in held + waiting:
            c.close()
        srv.kill()


def shimmed_echo(monkeypatch, flag, **env):
    """wshub --echo on one worker with the shim preloaded, armed by the
    file flag, and env (WSH_FAILMALLOC_* settings) for it alone."""
    env = {"LD_PRELOAD": SHIM, "WSH_FAILMALLOC_FLAG": str(flag), **env}
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    try:
        return wsraw.Server(["--workers", "1", "--echo"])
    finally:
        for k in env:
            monkeypatch.delenv(k)


@pytest.mark.parametrize("err", ["ENOBUFS", "EPERM"])
def test_accept_refused_by_the_kernel_the_listener_rests(tmp_path, monkeypatch, err):
    """accept4 failing with the connection left queued (out of socket
    buffers, or a security module's refusal; the shim's
    WSH_FAILMALLOC_ACCEPT_ERRNO): the listener stays readable, and a loop
    that went back to it at once would spin. The worker rests
    (ev=accept_paused naming the error) and burns little CPU; once accept
    works again, the connection that waited is served, and so is a new
    one."""
    import errno as errnos
    flag = tmp_path / "fail"
    srv = shimmed_echo(monkeypatch, flag, WSH_FAILMALLOC_ACCEPT_ERRNO=getattr(errnos, err))
    conns = []
    try:
        flag.touch()
        time.sleep(0.1)  # the shim looks at its flag every 20 ms
        c = wsraw.Conn("127.0.0.1", srv.port)  # queued: the kernel completes it
        conns.append(c)
        with pytest.raises(wsraw.ReadTimeout):
            c.handshake("/echo", timeout=0.5)
        before = cpu_ticks(srv.pid)
        time.sleep(1.0 * MULT)
        used = cpu_ticks(srv.pid) - before
        assert used < 30 * MULT, f"{used} ticks of CPU in {MULT} s while accept fails"
        assert re.search(r"ev=accept_paused ms=\d+ reason=\"%s" % os.strerror(getattr(errnos, err)),
                         srv.log()), srv.log()[-2000:]
        flag.unlink()
        resp = c.read_http_response(timeout=5, body=False)
        assert resp.status == 101, resp
        c.send_frame(wsraw.OP_TEXT, b"waited")
        assert c.recv_message(timeout=5) == (wsraw.OP_TEXT, b"waited")
        echo_on_a_new_connection(srv, conns)
    finally:
        if flag.exists():
            flag.unlink()
        for c in conns:
            c.close()
        srv.kill()


@run_async
async def test_disconnect_that_cannot_reach_a_worker_says_so(hub, tmp_path, monkeypatch):
    """POST /api/disconnect when the message to another worker cannot be
    allocated: the user's connections there stay open, so the call
    answers 503 (and the same call again closes what is left), never 200.
    The shim's WSH_FAILMALLOC_SIZE fails only the inbox buffer holding
    the user id: 16 bytes of header, the kind letter, the id and its NUL."""
    user = "v" * 101
    flag = tmp_path / "fail"
    monkeypatch.setenv("LD_PRELOAD", SHIM)
    monkeypatch.setenv("WSH_FAILMALLOC_FLAG", str(flag))
    monkeypatch.setenv("WSH_FAILMALLOC_SIZE", str(16 + 1 + len(user) + 1))
    try:
        h = hub(api_config(), workers=2)
    finally:
        monkeypatch.delenv("LD_PRELOAD")
    # Sixteen connections: some on each worker, but for 1 in 2^15.
    victims = [await Client.open(h, token(user)) for _ in range(16)]
    flag.touch()
    try:
        time.sleep(0.1)  # the shim looks at its flag every 20 ms
        st, resp = http(h.port, "POST", "/api/disconnect", {"user": user})
    finally:
        flag.unlink()
    time.sleep(0.1)
    assert st == 503 and b"out of memory" in resp, (st, resp)
    await asyncio.sleep(0.5 * MULT)
    left = [v for v in victims if v.ws.close_code is None]
    assert left, "every connection closed: none was on the other worker"
    st, resp = http(h.port, "POST", "/api/disconnect", {"user": user})
    assert st == 200, (st, resp)
    for v in left:
        code, _, _ = await v.expect_close()
        assert code == 4501, code
    assert all(v.ws.close_code == 4501 for v in victims), [v.ws.close_code for v in victims]


def test_connection_that_cannot_be_set_up_is_told_503(tmp_path, monkeypatch):
    """Every allocation failing (WSH_FAILMALLOC_ONE_IN=1) when a
    connection is accepted: the server cannot make its record, and answers
    503 with Retry-After from the stack (docs/server.md) rather than
    closing without a word; once memory is back, the next is served."""
    flag = tmp_path / "fail"
    srv = shimmed_echo(monkeypatch, flag, WSH_FAILMALLOC_ONE_IN=1)
    conns = []
    try:
        flag.touch()
        try:
            time.sleep(0.1)  # the shim looks at its flag every 20 ms
            for _ in range(3):
                c = wsraw.Conn("127.0.0.1", srv.port)
                conns.append(c)
                resp = c.read_http_response(timeout=5, body=False)
                assert resp.status == 503 and resp.header("retry-after") == "1", resp
        finally:
            flag.unlink()
        time.sleep(0.1)
        echo_on_a_new_connection(srv, conns)
    finally:
        for c in conns:
            c.close()
        srv.kill()


def big_certificate(tmp_path, names=1500):
    """A self-signed P-256 certificate for localhost with `names` more
    DNS names: about 66 KB, a TLS flight far larger than a small send
    buffer."""
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    sans += [x509.DNSName("host%05d.padding-for-a-long-chain.test" % i) for i in range(names)]
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return len(cert.public_bytes(serialization.Encoding.DER))


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls_handshake_larger_than_the_send_buffer(tmp_path, monkeypatch, version):
    """A TLS flight (here a 66 KB certificate) that does not fit the
    server's send buffer (the shim's WSH_FAILMALLOC_SNDBUF, 4 KB) going to
    a client with a small window: the handshake waits for room to write
    and completes. It waited for input the client would never send until
    it had the whole flight, and was dropped at --handshake-timeout."""
    import ssl
    assert big_certificate(tmp_path) > 60000
    monkeypatch.setenv("LD_PRELOAD", SHIM)
    monkeypatch.setenv("WSH_FAILMALLOC_SNDBUF", "4096")
    try:
        srv = wsraw.Server(["--workers", "1", "--echo", "--handshake-timeout", "5",
                            "--tls-cert", str(tmp_path / "cert.pem"),
                            "--tls-key", str(tmp_path / "key.pem")])
    finally:
        monkeypatch.delenv("LD_PRELOAD")
        monkeypatch.delenv("WSH_FAILMALLOC_SNDBUF")
    ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
    try:
        for _ in range(3):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(4 * MULT)
            s.connect(("127.0.0.1", srv.port))
            t0 = time.monotonic()
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                took = time.monotonic() - t0
                t.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                assert wsraw.read_to_eof(t).startswith(b"HTTP/1.1 200"), version
            print(f"{version} handshake: {took:.3f} s")
        assert srv.alive()
    finally:
        srv.kill()
