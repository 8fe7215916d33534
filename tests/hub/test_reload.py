"""SIGHUP puts the config file's `origins`, `api_key` and admission rate in
force without a restart (docs/config.md): a new front-end origin is let
in, a rotated API key is the only one accepted, the API can be turned off,
the admission rate on and off, and a file that does not load changes
nothing. Sessions already open stay."""
import asyncio
import ctypes
import json
import os
import signal
import socket
import struct
import time

import pytest

import wsraw
from conftest import (MULT, Client, Closed, base_config, expect_error, handshake_status, merge,
                      raw_upgrade, run_async, token)
from test_api import call
from test_jwks import wait_log
from wsraw import scrape_metrics

KEY1 = "first-api-key-of-the-tests-0123456789"
KEY2 = "second-api-key-of-the-tests-0123456789"


def reload(h, cfg, n):
    """Writes cfg (a dict, or raw text) as the config file, sends SIGHUP and
    waits for the n-th ev=settings_reload line; returns it."""
    with open(h.config_path, "w") as f:
        f.write(cfg if isinstance(cfg, str) else json.dumps(cfg))
    h.server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10 * MULT
    while True:
        lines = [ln for ln in h.log().splitlines() if "ev=settings_reload" in ln]
        if len(lines) >= n:
            return lines[n - 1]
        assert time.monotonic() < deadline, h.log()[-2000:]
        time.sleep(0.02)


def origin_status(h, origin):
    return handshake_status(h.port, headers=[("Origin", origin),
                                             ("Authorization", "Bearer " + token())])


@run_async
async def test_sighup_reloads_origins_and_the_api_key(hub):
    a, b = "https://a.example", "https://b.example"
    h = hub(merge(base_config(), {"origins": [a], "api_key": KEY1}))
    assert origin_status(h, a) == 101 and origin_status(h, b) == 403
    assert call(h, "GET", "/api/info", key=KEY1)[0] == 200
    open_session = await Client.open(h, token("stays"), origin=a)

    # A second front end and a rotated API key.
    line = reload(h, merge(base_config(), {"origins": [a, b], "api_key": KEY2}), 1)
    assert "ok=1 origins=2 api_key=1" in line, line
    assert origin_status(h, b) == 101 and origin_status(h, a) == 101
    assert call(h, "GET", "/api/info", key=KEY2)[0] == 200
    assert call(h, "GET", "/api/info", key=KEY1)[0] == 403

    # A file that does not load changes nothing.
    line = reload(h, '{"origins": [', 2)
    assert "ok=0" in line and "err=" in line, line
    line = reload(h, merge(base_config(), {"origins": ["not an origin"], "api_key": KEY1}), 3)
    assert "ok=0" in line and "origins[0]" in line, line
    assert origin_status(h, b) == 101
    assert call(h, "GET", "/api/info", key=KEY2)[0] == 200

    # Without api_key the API is off; without origins every origin is let in.
    line = reload(h, base_config(), 4)
    assert "ok=1 origins=0 api_key=0" in line, line
    assert call(h, "GET", "/api/info", key=KEY2)[0] == 404
    assert origin_status(h, "https://c.example") == 101

    # The session opened before all this is still served.
    assert (await open_session.subscribe("chat:still"))["offset"] == 0
    await open_session.close()
    m = scrape_metrics(h.port)
    assert m['wshub_reloads_total{part="settings",result="ok"}'] == 2, m
    assert m['wshub_reloads_total{part="settings",result="error"}'] == 2, m


def test_sighup_changes_the_admission_rate(hub):
    """limits.admission_rate and admission_burst follow SIGHUP: turned on,
    kept as they are by a reload that does not change them (no free
    refill), turned off again."""
    h = hub(base_config())
    assert [handshake_status(h.port, "/raw/a") for _ in range(3)] == [101] * 3
    slow = merge(base_config(), {"limits": {"admission_rate": 0.01, "admission_burst": 1}})
    line = reload(h, slow, 1)
    assert "ok=1" in line and "admission_rate=0.01" in line, line
    assert handshake_status(h.port, "/raw/a") == 101  # the burst of one
    assert handshake_status(h.port, "/raw/a") == 503
    reload(h, slow, 2)
    assert handshake_status(h.port, "/raw/a") == 503
    line = reload(h, base_config(), 3)
    assert "admission_rate=0" in line, line
    assert handshake_status(h.port, "/raw/a") == 101


class _OpenWatch:
    """Counts the opens of one file (inotify IN_OPEN), so a test can say
    how many times the server read it. Closes are watched too: inotify
    merges an event with an identical one still unread, so two opens in a
    row would count once."""
    IN_CLOSE_NOWRITE = 0x10
    IN_OPEN = 0x20

    def __init__(self, path):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        wd = self.libc.inotify_add_watch(self.fd, path.encode(),
                                          self.IN_OPEN | self.IN_CLOSE_NOWRITE)
        assert wd >= 0, os.strerror(ctypes.get_errno())

    def opens(self):
        n = 0
        while True:
            try:
                buf = os.read(self.fd, 4096)
            except BlockingIOError:
                return n
            off = 0
            while off < len(buf):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", buf, off)
                n += 1 if mask & self.IN_OPEN else 0
                off += 16 + length

    def close(self):
        os.close(self.fd)


def test_sighup_reads_the_file_once(hub):
    """The keys and the settings a SIGHUP puts in force come from one
    reading of the file, never from two versions of it."""
    h = hub(base_config())
    w = _OpenWatch(h.config_path)
    try:
        assert w.opens() == 0
        h.server.signal(signal.SIGHUP)
        wait_log(h, "ev=settings_reload", 1)
        wait_log(h, "ev=auth_reload", 1)
        assert w.opens() == 1
        # A file that does not load is read once too, and both parts say so.
        with open(h.config_path, "w") as f:
            f.write("{")
        w.opens()  # the test's own write
        h.server.signal(signal.SIGHUP)
        wait_log(h, "ev=settings_reload", 2)
        wait_log(h, "ev=auth_reload", 2)
        assert w.opens() == 1
    finally:
        w.close()
    log = h.log()
    assert log.count("ev=auth_reload ok=0") == 1 and log.count("ev=settings_reload ok=0") == 1, log
    m = scrape_metrics(h.port)
    assert m['wshub_reloads_total{part="auth",result="error"}'] == 1, m
    assert m['wshub_reloads_total{part="settings",result="error"}'] == 1, m


def test_sighup_without_keys_still_logs_and_counts_both_parts(hub):
    """docs/config.md: each part of a reload is logged and counted, also
    for a server with no token keys before or after (anonymous only)."""
    cfg = base_config()
    cfg["auth"] = {"allow_anonymous": True}
    h = hub(cfg)
    reload(h, cfg, 1)
    wait_log(h, "ev=auth_reload", 1)
    assert "ev=auth_reload ok=1 keys=0 jwks_skipped=0" in h.log(), h.log()[-2000:]
    m = scrape_metrics(h.port)
    assert m['wshub_reloads_total{part="auth",result="ok"}'] == 1, m
    assert m['wshub_reloads_total{part="settings",result="ok"}'] == 1, m


def until_status(port, want, path="/raw/a", headers=(), host="127.0.0.1"):
    """Upgrades until one gets `want` (a connection the server is still
    closing may hold a slot for a moment); returns the connection when
    want is 101, which the caller closes."""
    deadline = time.monotonic() + 5 * MULT
    while True:
        r, c = raw_upgrade(port, path, headers, host=host)
        if r.status == want:
            if want == 101:
                return c
            c.close()
            return r
        c.close()
        assert time.monotonic() < deadline, (want, r.status)
        time.sleep(0.05)


def test_sighup_changes_the_connection_limits(hub):
    """limits.max_connections_per_ip, handshake_rate_per_ip and
    max_connections follow SIGHUP, counting the connections already open,
    which stay open; turned off, they let everyone in again."""
    h = hub(base_config())  # the file's default: 256 per address
    held = [until_status(h.port, 101) for _ in range(3)]

    line = reload(h, merge(base_config(), {"limits": {"max_connections_per_ip": 3}}), 1)
    assert "ok=1" in line and "max_connections_per_ip=3" in line, line
    r = until_status(h.port, 429)
    assert r.header("retry-after") == "5", r
    held.pop().close()
    held.append(until_status(h.port, 101))  # the slot it left

    line = reload(h, merge(base_config(), {"limits": {"max_connections_per_ip": 0}}), 2)
    assert "max_connections_per_ip=0" in line, line
    held += [until_status(h.port, 101) for _ in range(3)]  # 6 open now

    # The whole server: 7 with the 6 open, then full.
    line = reload(h, merge(base_config(), {"limits": {"max_connections": 7,
                                                      "max_connections_per_ip": 0}}), 3)
    assert "max_connections=7" in line, line
    held.append(until_status(h.port, 101))
    assert until_status(h.port, 503).status == 503

    # A rate per address: a burst of 2, then refused with the slot's delay.
    line = reload(h, merge(base_config(), {"limits": {"handshake_rate_per_ip": 0.1,
                                                      "handshake_burst_per_ip": 2}}), 4)
    assert "handshake_rate_per_ip=0.1" in line, line
    fresh = [until_status(h.port, 101) for _ in range(2)]
    r = until_status(h.port, 429)
    assert int(r.header("retry-after")) >= 1, r
    for c in fresh:
        c.close()

    line = reload(h, base_config(), 5)
    assert "max_connections=0 max_connections_per_ip=256 handshake_rate_per_ip=0" in line, line
    until_status(h.port, 101).close()

    # Those open all along were never closed: a raw message goes round.
    held[0].send_frame(wsraw.OP_TEXT, b"still here")
    for c in held[1:]:
        assert c.recv_message(timeout=5) == (wsraw.OP_TEXT, b"still here")
    for c in held:
        c.close()


def test_sighup_turning_the_per_address_limit_on_counts_what_is_open(hub):
    """Turned on by a reload, max_connections_per_ip counts the connections
    an address opened while it was off: during a flood, the operator's
    bound applies to the flood's open connections too. They stay open
    (as under a lowered bound); each that closes frees its slot."""
    off = {"limits": {"max_connections_per_ip": 0, "handshake_rate_per_ip": 0}}
    h = hub(merge(base_config(), off))
    held = [until_status(h.port, 101) for _ in range(4)]

    line = reload(h, merge(base_config(), {"limits": {"max_connections_per_ip": 3}}), 1)
    assert "ok=1" in line and "max_connections_per_ip=3" in line, line
    wait_log(h, "ev=per_ip_counted", 2)
    r = until_status(h.port, 429)  # 4 open against 3
    assert r.header("retry-after") == "5", r
    held.pop().close()
    assert until_status(h.port, 429).status == 429  # 3 open against 3
    held.pop().close()
    held.append(until_status(h.port, 101))  # the slot it left

    # Off and on again: the counted ones keep their slots, none twice.
    line = reload(h, merge(base_config(), off), 2)
    assert "max_connections_per_ip=0" in line, line
    held.append(until_status(h.port, 101))  # 4 open
    line = reload(h, merge(base_config(), {"limits": {"max_connections_per_ip": 4}}), 3)
    assert "max_connections_per_ip=4" in line, line
    wait_log(h, "ev=per_ip_counted", 4)  # each of the 2 workers, twice
    assert until_status(h.port, 429).status == 429
    held.pop().close()
    held.append(until_status(h.port, 101))

    # The connections were never closed: a raw message goes round.
    held[0].send_frame(wsraw.OP_TEXT, b"still here")
    for c in held[1:]:
        assert c.recv_message(timeout=5) == (wsraw.OP_TEXT, b"still here")
    for c in held:
        c.close()


def test_sighup_changing_the_ipv6_prefix_counts_open_connections_anew(hub):
    """A reload that changes limits.ipv6_prefix moves each open IPv6
    connection to the count of its address under the new prefix: three
    from ::1 counted as its /64 are counted as ::1/128 once the prefix is
    128, and the bound of 3 holds there (left under the /64, ::1/128 had
    0 and opened 3 more). A server on [::1], stopped by the test."""
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")

    def limits(prefix):
        return merge(base_config(), {"limits": {"max_connections_per_ip": 3,
                                                "ipv6_prefix": prefix}})
    h = hub(limits(64), "--listen", "[::1]:0")
    h.expect_stopped = True
    held = [until_status(h.port, 101, host="::1") for _ in range(3)]
    until_status(h.port, 429, host="::1")

    reload(h, limits(128), 1)
    wait_log(h, "ev=per_ip_counted", 2)  # each of the 2 workers
    moved = sum(int(ln.split("moved=")[1].split()[0]) for ln in h.log().splitlines()
                if "ev=per_ip_counted" in ln)
    assert moved == 3, h.log()[-2000:]
    assert until_status(h.port, 429, host="::1").status == 429
    held.pop().close()
    held.append(until_status(h.port, 101, host="::1"))  # the slot it left

    # And back: the /64 holds the same three.
    reload(h, limits(64), 2)
    wait_log(h, "ev=per_ip_counted", 4)
    assert until_status(h.port, 429, host="::1").status == 429
    for c in held:
        c.close()
    until_status(h.port, 101, host="::1").close()
    h.server.signal(signal.SIGTERM)
    assert h.server.wait(10 * MULT) == 0, h.log()[-2000:]


def test_sighup_changing_the_ipv6_prefix_leaves_forwarded_clients_counted_as_named(hub):
    """A connection a trusted proxy ([::1]) opened for the client its
    X-Forwarded-For named stays counted under that client when a reload
    changes ipv6_prefix, even one that also stops trusting the proxy: its
    slot is not moved to the proxy's own address, which then still has
    its own one connection to open."""
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")

    def limits(prefix, trusted):
        return merge(base_config(), {"limits": {"max_connections_per_ip": 1, "ipv6_prefix": prefix},
                                     "trusted_proxies": trusted})
    h = hub(limits(64, ["::1/128"]), "--listen", "[::1]:0")
    h.expect_stopped = True
    xff = [("X-Forwarded-For", "2001:db8::7")]
    held = [until_status(h.port, 101, headers=xff, host="::1")]
    until_status(h.port, 429, headers=xff, host="::1")

    reload(h, limits(128, []), 1)
    wait_log(h, "ev=per_ip_counted", 2)
    assert "moved=1" not in h.log(), h.log()[-2000:]
    held.append(until_status(h.port, 101, host="::1"))  # ::1's own slot
    until_status(h.port, 429, host="::1")
    for c in held:
        c.close()
    h.server.signal(signal.SIGTERM)
    assert h.server.wait(10 * MULT) == 0, h.log()[-2000:]


def test_sighup_changes_the_trusted_proxies(hub):
    """trusted_proxies follows SIGHUP: once 127.0.0.1 is a trusted proxy,
    a connection from it counts under the client its X-Forwarded-For
    names, and once it is not, the field is not read again. Connections
    open across the change keep the slot they took."""
    one = {"limits": {"max_connections_per_ip": 1}}
    h = hub(merge(base_config(), one))

    def xff(addr):
        return [("X-Forwarded-For", addr)]

    held = [until_status(h.port, 101, headers=xff("198.51.100.1"))]
    # Not a trusted proxy: 127.0.0.1 itself holds its one slot.
    until_status(h.port, 429, headers=xff("198.51.100.2"))

    line = reload(h, merge(base_config(), {**one, "trusted_proxies": ["127.0.0.0/8"]}), 1)
    assert "ok=1" in line, line
    held.append(until_status(h.port, 101, headers=xff("198.51.100.2")))
    held.append(until_status(h.port, 101, headers=xff("198.51.100.3")))
    r = until_status(h.port, 429, headers=xff("198.51.100.2"))
    assert r.header("retry-after") == "5", r

    line = reload(h, merge(base_config(), one), 2)
    assert "ok=1" in line, line
    # 127.0.0.1 counts as itself again, and held[0] still holds its slot.
    until_status(h.port, 429, headers=xff("198.51.100.4"))
    held.pop(0).close()
    held.append(until_status(h.port, 101, headers=xff("198.51.100.4")))
    for c in held:
        c.close()
    reload(h, base_config(), 3)


@run_async
async def test_sighup_changes_namespaces_and_session_limits(hub):
    """Namespaces and the /ws limits follow SIGHUP, for live channels too:
    a new namespace is there at once, a changed option (presence off, a
    shorter history) applies to a channel already in use, a removed
    namespace takes no new subscriptions, a tighter publish rate bites, and
    sessions opened before stay. The replaced configuration is freed
    (after every worker has moved on) while those channels live on. A
    member that joined with presence on and left while it was off is not
    listed when it is on again (its entry was left behind for good)."""
    h = hub(base_config(), workers=2)
    a = await Client.open(h, token("alice"))
    b = await Client.open(h, token("bob"))
    carol = await Client.open(h, token("carol"))
    await expect_error(a, "subscribe", "game:1", code=4001)
    for c in (a, b, carol):
        await c.subscribe("chat:live")
    await a.subscribe("dm:x")
    for i in range(10):
        await a.publish("chat:live", {"i": i})
    r = await a.cmd("presence", "chat:live")
    assert r["type"] == "presence" and r["payload"]["count"] == 3, r

    cfg = base_config()
    cfg["namespaces"]["game"] = {"history_size": 5, "presence": False}
    cfg["namespaces"]["chat"].update({"presence": False, "history_size": 3})
    del cfg["namespaces"]["dm"]
    cfg["limits"].update({"publish_rate": 0.01, "publish_burst": 1, "max_message": 32768})
    cfg["trusted_proxies"] = ["10.0.0.0/8"]
    line = reload(h, cfg, 1)
    assert "ok=1" in line and "max_message=32768" in line, line
    # Every worker ends a turn and the 2 s sweep frees the old file:
    # what follows reads only the new one (ASan would see otherwise).
    time.sleep(2.5)

    assert (await b.subscribe("game:1"))["offset"] == 0
    await expect_error(b, "subscribe", "dm:y", code=4001)
    await expect_error(a, "presence", "chat:live", code=4004)
    await carol.close()
    # The live channel keeps its 10 messages until the next publish trims
    # its history to the new size; the publish bucket now holds one.
    assert await a.publish("chat:live", {"i": 10}) == 11
    await expect_error(a, "publish", "chat:live", code=3000, payload={"i": 11})
    r = await b.cmd("history", "chat:live", payload={"since": 0})
    assert [m["payload"]["i"] for m in r["payload"]["messages"]] == [8, 9, 10], r
    got = await b.expect(lambda m: m["type"] == "message" and m["payload"] == {"i": 10})
    assert got["offset"] == 11

    # And back: presence on again for the same live channel.
    line = reload(h, base_config(), 2)
    assert "max_message=65536" in line, line
    time.sleep(2.5)
    r = await b.cmd("presence", "chat:live")
    assert r["type"] == "presence" and r["payload"]["count"] == 2, r
    await a.close()
    await b.close()


@run_async
async def test_lowered_max_channel_lets_longer_subscriptions_end(hub):
    """A reload that lowers limits.max_channel below a channel a session
    is subscribed to: the session keeps the subscription (config.md) and
    may end it; unsubscribe was refused as a bad name (4000) and the
    subscription went on receiving until the client disconnected. New
    subscriptions to such names are refused."""
    cfg = base_config()
    h = hub(cfg)
    a = await Client.open(h, token("alice"))
    long_name = "chat:" + "x" * 95
    await a.subscribe(long_name)
    low = merge(cfg, {"limits": {"max_channel": 64}})
    assert "ok=1" in reload(h, low, 1)
    r = await a.cmd("subscribe", "chat:" + "y" * 95)
    assert r["type"] == "error" and r["payload"]["code"] == 4000, r
    r = await a.cmd("unsubscribe", long_name)
    assert r["type"] == "unsubscribed" and r["channel"] == long_name, r
    await a.close()


@run_async
async def test_reloads_under_traffic(hub):
    """SIGHUPs while four sessions on two workers keep creating channels
    and publishing: every command is answered under one configuration or
    the other, and nothing reads a freed one (the ASan run checks that)."""
    h = hub(base_config(), workers=2)
    clients = [await Client.open(h, token(f"u{i}")) for i in range(4)]
    cfgs = [base_config(), base_config()]
    cfgs[1]["namespaces"]["chat"].update({"presence": False, "history_size": 5})
    cfgs[1]["namespaces"]["extra"] = {"history_size": 1}

    async def churn(c, k):
        for i in range(60):
            ch = f"chat:r{k}-{i}"
            await c.subscribe(ch)
            assert await c.publish(ch, {"i": i}) == 1
            r = await c.cmd("presence", ch)
            assert r["type"] == "presence" or r["payload"]["code"] == 4004, r

    async def reloads():
        for n in range(1, 21):
            with open(h.config_path + ".new", "w") as f:
                json.dump(cfgs[n % 2], f)
            os.replace(h.config_path + ".new", h.config_path)  # never half a file
            h.server.signal(signal.SIGHUP)
            # Signals sent before the last was taken merge into one: each
            # waits for its reload.
            await asyncio.to_thread(wait_log, h, "ev=settings_reload", n)

    await asyncio.gather(reloads(), *(churn(c, k) for k, c in enumerate(clients)))
    await asyncio.to_thread(wait_log, h, "ev=settings_reload", 20)
    await asyncio.sleep(2.5)  # a sweep frees what was replaced
    for c in clients:
        r = await c.cmd("presence", "chat:r0-0")
        assert r["type"] in ("presence", "error"), r
        await c.close()
    assert h.log().count("ev=settings_reload ok=1") == 20, h.log()[-3000:]


async def publish_size(c, n, id_):
    """Publishes a payload of n bytes: the ack's type, or the close code."""
    await c.send({"type": "publish", "id": id_, "channel": "chat:size", "payload": "s" * n})
    try:
        r = await c.expect(lambda m: m.get("id") == id_)
        return r["type"] if r["type"] == "ack" else r["payload"]
    except Closed:
        return c.close_code


def size_config(max_message):
    return merge(base_config(), {"limits": {"max_message": max_message,
                                            "unauthenticated": {"max_message": 512}}})


@run_async
async def test_sighup_changes_max_message(hub):
    """limits.max_message follows SIGHUP on the connections already open,
    compressed ones too, from their next message; --max-message, when
    given, outlasts every reload as it overrides the file at start."""
    h = hub(size_config(1024), "--deflate")
    plain = await Client.open(h, token("alice"))
    packed = await Client.open(h, token("bob"), compression="deflate")
    assert [e.name for e in packed.ws.extensions] == ["permessage-deflate"]
    for c in (plain, packed):
        await c.subscribe("chat:size")
    assert await publish_size(await Client.open(h, token("carol")), 3000, 1) == 1009
    line = reload(h, size_config(8192), 1)
    assert "ok=1" in line and "max_message=8192" in line, line
    assert await publish_size(plain, 3000, 2) == "ack"
    assert await publish_size(packed, 6000, 3) == "ack"
    assert await publish_size(packed, 9000, 4) == 1009
    line = reload(h, size_config(1024), 2)
    assert "max_message=1024" in line, line
    assert await publish_size(plain, 3000, 5) == 1009

    h = hub(size_config(1024), "--max-message", 2048)
    line = reload(h, size_config(8192), 1)
    assert "ok=1" in line and "max_message=2048" in line, line
    c = await Client.open(h, token("dave"))
    await c.subscribe("chat:size")
    assert await publish_size(c, 1500, 1) == "ack"
    assert await publish_size(c, 3000, 2) == 1009
