"""pytest fixtures and a small client for the /ws hub tests.

Each test starts its own wshub on 127.0.0.1:0 (port read back from
--port-file) with a JSON config written to a temp dir (`hub` fixture). At
teardown every server the test did not stop on purpose must still be
running, be back to its baseline fd count, answer /healthz and a fresh /ws
client (connect, then close 1000), exit 0 on SIGTERM, and have no sanitizer
report in its log. Servers are killed only by their own pid.

Tokens are minted with python3-jwt: HS256/HS384 with SECRET/SECRET384,
RS256/ES256 with keys made by `openssl` at test time (`keypair`).
"""

import asyncio
import copy
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import jwt
import pytest
import websockets

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "conformance"))

import wsraw  # noqa: E402

MULT = wsraw.MULT
run_async = wsraw.run_async
SECRET = "hub-test-secret-0123456789abcdef-0123456789"          # HS256 (>= 32 bytes)
SECRET384 = "hub-test-secret-384-0123456789abcdef-0123456789abcdef"  # HS384 (>= 48 bytes)
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# ---------------------------------------------------------------- tokens

def token(sub="alice", exp_in=3600, alg="HS256", key=SECRET, headers=None, no_exp=False, **claims):
    body = {"sub": sub, **claims}
    if not no_exp:
        body["exp"] = int(time.time()) + exp_in
    if sub is None:
        del body["sub"]
    return jwt.encode(body, key, algorithm=alg, headers=headers)


def b64url(b):
    import base64
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unsigned_token(sub="alice", exp_in=3600):
    """alg none, empty signature (RFC 7519 6.1)."""
    h = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    p = b64url(json.dumps({"sub": sub, "exp": int(time.time()) + exp_in}).encode())
    return f"{h}.{p}."


_keys = {}


def keypair(kind):
    """("rsa"|"ec"|"ec384"|"ec521"|"ed25519"|"ed448") -> (private_pem_bytes,
    public_key_path), made once per test process with the openssl
    command."""
    if kind in _keys:
        return _keys[kind]
    d = tempfile.mkdtemp(prefix="wshub-hub-keys-")
    priv, pub = os.path.join(d, "priv.pem"), os.path.join(d, "pub.pem")
    curves = {"ec": "P-256", "ec384": "P-384", "ec521": "P-521"}
    if kind == "rsa":
        gen = ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
               "-out", priv]
    elif kind in curves:
        gen = ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
               f"ec_paramgen_curve:{curves[kind]}", "-out", priv]
    else:
        gen = ["openssl", "genpkey", "-algorithm", kind.upper(), "-out", priv]
    subprocess.run(gen, check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", priv, "-pubout", "-out", pub], check=True,
                   capture_output=True)
    with open(priv, "rb") as f:
        _keys[kind] = (f.read(), pub)
    return _keys[kind]


# ---------------------------------------------------------------- config

def base_config():
    """The config most tests use: a few namespaces, one HS256 key, limits
    roomy enough that only the limit tests hit them."""
    return {
        "default_namespace": {"history_size": 50, "history_ttl_s": 60, "presence": True},
        "namespaces": {
            "chat": {"history_size": 100, "history_ttl_s": 300, "dedup_window_s": 60,
                     "presence": True, "join_leave": True, "recover": True},
            "news": {"history_size": 10, "recover": False, "publish": "server"},
            "cursors": {"history_size": 0, "recover": False, "presence": False},
            "dm": {"history_size": 10, "join_leave": True},
        },
        "auth": {"allow_anonymous": False, "keys": [{"alg": "HS256", "secret": SECRET}]},
        "limits": {"publish_rate": 1000, "publish_burst": 1000},
    }


def merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------- server

def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class Hub:
    """One wshub with /ws enabled by a config file."""

    def __init__(self, config, args):
        self.config = config
        self.dir = tempfile.mkdtemp(prefix="wshub-hub-cfg-")
        self.config_path = os.path.join(self.dir, "config.json")
        with open(self.config_path, "w") as f:
            json.dump(config, f)
        os.chmod(self.config_path, 0o600)
        self.server = wsraw.Server(["--config", self.config_path] + [str(a) for a in args])
        self.port = self.server.port
        self.pid = self.server.pid
        self.args = self.server.args
        self.baseline_fds = fd_count(self.pid)
        self.expect_stopped = False

    def url(self, path="/ws"):
        return f"ws://127.0.0.1:{self.port}{path}"

    def alive_token(self):
        for k in self.config.get("auth", {}).get("keys", []):
            if k.get("alg") == "HS256" and k.get("secret") == SECRET and "kid" not in k:
                return token("__alive__")
        return None

    def log(self):
        return self.server.log()


async def check_alive_ws(hub):
    """A fresh /ws client connects and closes cleanly."""
    tok = hub.alive_token()
    anon = hub.config.get("auth", {}).get("allow_anonymous", False)
    if tok is None and not anon:
        c = wsraw.ws_connect(hub.port, "/raw/__alive_check__")
        try:
            c.send_close(1000)
            f, _ = c.wait_close(5)
            assert f.close_code() == 1000
        finally:
            c.close()
        return
    c = await Client.open(hub, tok, how="header" if tok else None)
    await c.close()


def check_fds(hub, timeout=5.0):
    deadline = time.monotonic() + timeout * MULT
    while True:
        n = fd_count(hub.pid)
        if n is None or n <= hub.baseline_fds:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"fd leak: {n} open fds, {hub.baseline_fds} after startup")
        time.sleep(0.05)


class Hubs:
    def __init__(self):
        self.started = []

    def __call__(self, config=None, *args, workers=2):
        h = Hub(config if config is not None else base_config(),
                ["--workers", workers, *args])
        self.started.append(h)
        return h


@pytest.fixture
def hub():
    """Factory: hub(config_dict, "--max-queue", 65536, workers=2) -> Hub.
    Set h.expect_stopped = True when the test stops the server itself."""
    hubs = Hubs()
    yield hubs

    def check(h):
        s = h.server
        assert s.alive(), f"wshub exited with {s.proc.returncode}; log tail:\n{s.log()[-3000:]}"
        check_fds(h)
        r = s.healthz()
        assert r.status == 200 and r.body == b"ok\n", f"/healthz answered {r!r}"
        asyncio.run(asyncio.wait_for(check_alive_ws(h), 15 * MULT))
    wsraw.teardown_servers([(h.server, h.expect_stopped, functools.partial(check, h))
                            for h in hubs.started])


# ---------------------------------------------------------------- client

class Closed(Exception):
    pass


def check_server_message(m, raw):
    """Every server message: a JSON object, `type` first, an RFC 3339 UTC
    `timestamp` with milliseconds last (docs/protocol.md, Envelope)."""
    assert isinstance(m, dict), raw
    keys = list(m)
    assert keys and keys[0] == "type", f"`type` is not the first member: {raw}"
    assert keys[-1] == "timestamp", f"`timestamp` is not the last member: {raw}"
    assert TS_RE.match(m["timestamp"]), f"bad timestamp in {raw}"


class Client:
    """A websockets 10.4 client speaking the /ws JSON protocol. Messages
    that arrive while waiting for something else are kept in `pending`, in
    arrival order."""

    def __init__(self, ws):
        self.ws = ws
        self.pending = []
        self.next_id = 1
        self.close_code = None
        self.close_reason = None
        self.info = None

    @classmethod
    async def open(cls, hub, tok=None, how="header", connect=True, origin=None, headers=None,
                   path="/ws", payload_token=None, compression=None):
        """how: "header" (Authorization: Bearer), "query" (?token=),
        "payload" (the connect command's payload.token) or None.
        compression="deflate" offers permessage-deflate."""
        extra = dict(headers or {})
        url = hub.url(path)
        if tok is not None and how == "header":
            extra["Authorization"] = f"Bearer {tok}"
        elif tok is not None and how == "query":
            url += ("&" if "?" in url else "?") + "token=" + tok
        elif tok is not None and how == "payload":
            payload_token = tok
        ws = await websockets.connect(url, extra_headers=extra, origin=origin, compression=compression,
                                      max_size=None, max_queue=None, ping_interval=None, close_timeout=2,
                                      open_timeout=10 * MULT)
        c = cls(ws)
        if connect:
            p = {"token": payload_token} if payload_token is not None else None
            r = await c.cmd("connect", payload=p)
            assert r["type"] == "connected", f"connect got {r}"
            c.info = r["payload"]
        return c

    async def send(self, obj):
        await self.ws.send(obj if isinstance(obj, (str, bytes)) else json.dumps(obj))

    async def _read(self, timeout):
        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout * MULT)
        except websockets.ConnectionClosed as e:
            self.close_code = e.rcvd.code if e.rcvd else None
            self.close_reason = e.rcvd.reason if e.rcvd else None
            raise Closed(f"closed {self.close_code} {self.close_reason!r}") from None
        assert isinstance(raw, str), f"server sent a binary message {raw[:60]!r}"
        m = json.loads(raw)
        check_server_message(m, raw)
        return m

    async def expect(self, pred, timeout=5.0, what="a message"):
        for i, m in enumerate(self.pending):
            if pred(m):
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout * MULT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timeout waiting for {what}; pending: {self.pending[-5:]}")
            try:
                m = await self._read(left / MULT)
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"timeout waiting for {what}; pending: {self.pending[-5:]}") from None
            if pred(m):
                return m
            self.pending.append(m)

    async def cmd(self, type_, channel=None, payload=None, timeout=5.0, **extra):
        """Send a command with a fresh id and return its reply (matched by id)."""
        i = self.next_id
        self.next_id += 1
        msg = {"type": type_, "id": i}
        if channel is not None:
            msg["channel"] = channel
        msg.update(extra)
        if payload is not None:
            msg["payload"] = payload
        await self.send(msg)
        return await self.expect(lambda m: m.get("id") == i, timeout, f"reply to {msg}")

    async def push(self, type_, channel=None, timeout=5.0, pred=None):
        return await self.expect(
            lambda m: m["type"] == type_ and "id" not in m
            and (channel is None or m.get("channel") == channel) and (pred is None or pred(m)),
            timeout, f"push {type_} on {channel}")

    async def messages(self, channel, n, timeout=10.0):
        """The next n `message` pushes of channel, in arrival order."""
        out = []
        for _ in range(n):
            out.append(await self.push("message", channel, timeout))
        return out

    async def quiet(self, secs=0.3, pred=lambda m: True):
        """Nothing matching pred arrives for secs (and nothing is pending)."""
        bad = [m for m in self.pending if pred(m)]
        assert not bad, f"unexpected {bad[:3]}"
        deadline = time.monotonic() + secs * MULT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                m = await self._read(left / MULT)
            except asyncio.TimeoutError:
                return
            assert not pred(m), f"unexpected {m}"
            self.pending.append(m)

    async def expect_close(self, timeout=5.0):
        """Read until the close; returns (code, reason, messages seen)."""
        seen = []
        deadline = time.monotonic() + timeout * MULT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no close within {timeout}s; seen {seen[-5:]}")
            try:
                seen.append(await self._read(left / MULT))
            except Closed:
                return self.close_code, self.close_reason, self.pending + seen
            except asyncio.TimeoutError:
                raise AssertionError(f"no close within {timeout}s; seen {seen[-5:]}") from None

    async def close(self, code=1000):
        await self.ws.close(code)
        assert self.ws.close_code == code or self.ws.close_code is not None

    async def subscribe(self, channel, **payload):
        r = await self.cmd("subscribe", channel, payload=payload or None)
        assert r["type"] == "subscribed" and r["channel"] == channel, f"subscribe got {r}"
        return r["payload"]

    async def publish(self, channel, payload, **extra):
        r = await self.cmd("publish", channel, payload=payload, **extra)
        assert r["type"] == "ack" and r["channel"] == channel, f"publish got {r}"
        return r["payload"]["offset"]


async def expect_error(c, type_, channel=None, code=None, payload=None, **extra):
    r = await c.cmd(type_, channel, payload=payload, **extra)
    assert r["type"] == "error", f"{type_} {channel}: expected error {code}, got {r}"
    assert r["payload"]["code"] == code, f"{type_} {channel}: expected error {code}, got {r}"
    if channel is not None and code >= 2000:
        # "channel is present when the error concerns a channel"; a field
        # that failed to parse (1xxx) need not be echoed
        assert r.get("channel") == channel, r
    return r


def raw_upgrade(port, path="/ws", headers=(), timeout=5, host="127.0.0.1"):
    """Sends an upgrade request on a raw connection; returns the response
    (with its body, for a refusal) and the connection, which the caller
    closes. timeout: seconds to wait for the response (times MULT)."""
    import base64
    c = wsraw.Conn(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
           f"Sec-WebSocket-Version: 13\r\n")
    for k, v in headers:
        req += f"{k}: {v}\r\n"
    try:
        c.send((req + "\r\n").encode())
        return c.read_http_response(timeout=timeout), c
    except BaseException:
        c.close()
        raise


def handshake_status(port, path="/ws", headers=()):
    """Raw upgrade request; returns the HTTP status (101 or the refusal)."""
    r, c = raw_upgrade(port, path, headers)
    try:
        if r.status == 101:
            c.send_close(1000)
            try:
                c.wait_close(3)
            except (wsraw.PeerClosed, wsraw.ReadTimeout):
                pass
        return r.status
    finally:
        c.close()
