"""The HTTP API and /metrics (docs/api.md) of the real wshub: every call
with and without the API key, server-side publishes reaching /ws
subscribers, disconnect by user on every worker, and /metrics checked as
Prometheus text exposition format 0.0.4."""
import json
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from conftest import (MULT, Client, Closed, base_config, handshake_status, merge, run_async,
                      token)

import wsraw  # noqa: E402 (on the path conftest set)

API_KEY = "api-key-for-tests-0123456789"


def api_config():
    return merge(base_config(), {"api_key": API_KEY})


def call(hub, method, path, body=None, key=API_KEY, header="X-API-Key", raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    r = urllib.request.Request(f"http://127.0.0.1:{hub.port}{path}", method=method, data=data)
    if key is not None:
        r.add_header(header, key if header == "X-API-Key" else f"apikey {key}")
    if data is not None:
        r.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(r, timeout=5 * MULT) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_api_requires_the_key(hub):
    h = hub(api_config())
    for method, path, body in [("GET", "/api/info", None),
                               ("POST", "/api/publish", {"channel": "chat:a", "payload": 1}),
                               ("GET", "/api/presence/chat:a", None),
                               ("GET", "/api/history/chat:a", None),
                               ("POST", "/api/disconnect", {"user": "alice"})]:
        st, hd, b = call(h, method, path, body, key=None)
        assert st == 401 and json.loads(b) == {"error": "API key required"}, (path, st, b)
        assert hd["WWW-Authenticate"] == "apikey", dict(hd)  # RFC 9110 11.6.1
        st, _, b = call(h, method, path, body, key="wrong-key")
        assert st == 403, (path, st, b)
    st, _, b = call(h, "GET", "/api/info", header="Authorization")
    assert st == 200, b
    # An empty key is none; the scheme may be followed by more than one
    # space or a tab (RFC 9110 11.4: 1*SP).
    for headers, want in ((b"X-API-Key: \r\n", 401), (b"X-API-Key:\r\n", 401),
                          (b"Authorization: apikey \r\n", 401),
                          (b"Authorization: apikey  " + API_KEY.encode() + b"\r\n", 200),
                          (b"Authorization: ApiKey\t" + API_KEY.encode() + b"\r\n", 200),
                          (b"X-API-Key:\r\nAuthorization: apikey " + API_KEY.encode() + b"\r\n",
                           200)):
        assert raw_status(h.port, b"GET /api/info HTTP/1.1\r\nHost: x\r\n" + headers +
                          b"\r\n") == want, headers
    # Refused on its head before its body is in, without Expect too: the
    # server does not keep a keyless body trickled in until its deadline.
    for headers, want in ((b"", 401), (b"X-API-Key: wrong-key-0123456789\r\n", 403)):
        assert raw_status(h.port, b"POST /api/publish HTTP/1.1\r\nHost: x\r\n" + headers +
                          b"Content-Length: 60000\r\n\r\n{") == want, headers


def test_api_off_without_configured_key(hub):
    h = hub(base_config())
    st, _, b = call(h, "GET", "/api/info")
    assert st == 404 and b"api_key" in b


@run_async
async def test_api_publish_broadcast_reach_subscribers(hub):
    h = hub(api_config())
    a = await Client.open(h, token("alice"))
    await a.subscribe("chat:a")
    await a.subscribe("news:n")  # publish: "server" namespace
    st, _, b = call(h, "POST", "/api/publish", {"channel": "chat:a", "payload": {"x": 1}})
    assert st == 200 and json.loads(b) == {"offsets": [1]}, b
    m = await a.expect(lambda m: m["type"] == "message", what="message")
    assert m["channel"] == "chat:a" and m["payload"] == {"x": 1} and m["offset"] == 1
    assert m["from"] == ""
    # Server-only namespace: the API may publish where clients may not.
    st, _, b = call(h, "POST", "/api/broadcast",
                    {"channels": ["news:n", "chat:a"], "payload": "both"})
    assert st == 200 and json.loads(b) == {"offsets": [1, 2]}, b
    got = [await a.expect(lambda m: m["type"] == "message", what="message") for _ in range(2)]
    assert sorted((m["channel"], m["offset"], m["payload"]) for m in got) == [
        ("chat:a", 2, "both"), ("news:n", 1, "both")]
    # msg_id de-duplication applies to server-side publishes too.
    for _ in range(2):
        st, _, b = call(h, "POST", "/api/publish",
                        {"channel": "chat:a", "payload": 3, "msg_id": "srv-1"})
        assert st == 200 and json.loads(b) == {"offsets": [3]}, b
    m = await a.expect(lambda m: m["type"] == "message", what="message")
    assert m["offset"] == 3
    st, _, b = call(h, "GET", "/api/history/chat:a?limit=2")
    hist = json.loads(b)
    assert st == 200 and hist["type"] == "history"
    assert [x["offset"] for x in hist["payload"]["messages"]] == [2, 3]
    st, _, b = call(h, "GET", "/api/history/chat:a?x=1&limit=2&y")  # anywhere in the query
    assert st == 200 and len(json.loads(b)["payload"]["messages"]) == 2, b
    for bad in ("limit=", "limit=2x", "limit=-1", "a=b&limit=%32"):
        st, _, b = call(h, "GET", "/api/history/chat:a?" + bad)
        assert st == 400 and b"bad limit" in b, (bad, st, b)
    st, _, b = call(h, "GET", "/api/history/chat:a?limit=0")  # the position only
    assert st == 200 and json.loads(b)["payload"]["messages"] == [], b
    assert json.loads(b)["payload"]["offset"] == 3, b
    st, _, b = call(h, "GET", "/api/presence/chat:a")
    pres = json.loads(b)
    assert st == 200 and [c["user"] for c in pres["payload"]["clients"]] == ["alice"]
    await a.close()


@run_async
async def test_api_broadcast_checks_every_channel_before_publishing_any(hub):
    """A broadcast with one bad channel anywhere in its list publishes
    nothing, and the 400 names the channel: a backend can fix the call and
    send it again without duplicating the channels before the bad one."""
    h = hub(api_config())
    a = await Client.open(h, token("alice"))
    await a.subscribe("chat:a")
    for chans, bad, code in [(["chat:a", "chat:bad name", "chat:b"], "chat:bad name", 4000),
                             (["chat:a", "chat:b", "nope:x"], "nope:x", 4001),
                             (["chat:a", "chat:b#"], "chat:b#", 4000)]:
        st, _, b = call(h, "POST", "/api/broadcast", {"channels": chans, "payload": "no"})
        err = json.loads(b)
        assert st == 400 and err["channel"] == bad and err["code"] == code, (chans, st, b)
    st, _, b = call(h, "POST", "/api/broadcast", {"channels": ["chat:a", 5], "payload": "no"})
    assert st == 400 and json.loads(b)["code"] == 1002, b
    # Nothing went out: the next publish is the channel's first, and the
    # first message the subscriber sees.
    st, _, b = call(h, "POST", "/api/publish", {"channel": "chat:a", "payload": "first"})
    assert st == 200 and json.loads(b) == {"offsets": [1]}, b
    m = await a.expect(lambda m: m["type"] == "message", what="message")
    assert m["payload"] == "first" and m["offset"] == 1, m
    st, _, b = call(h, "GET", "/api/history/chat:a")
    assert [x["payload"] for x in json.loads(b)["payload"]["messages"]] == ["first"], b
    await a.close()


def test_api_rejects_bad_requests(hub):
    h = hub(api_config())
    cases = [
        ("POST", "/api/publish", b"not json", 400),
        ("POST", "/api/publish", b"[1,2]", 400),
        ("POST", "/api/publish", json.dumps({"payload": 1}).encode(), 400),
        ("POST", "/api/publish", json.dumps({"channel": "nope:x", "payload": 1}).encode(), 400),
        ("POST", "/api/publish", json.dumps({"channel": "chat:a"}).encode(), 400),
        # A msg_id the broker would refuse is a bad field (it was 503 + Retry-After).
        *[("POST", p, json.dumps({**chan, "payload": 1, "msg_id": m}).encode(), 400)
          for m in ("", "x" * 300, "has space", 7, "caf\u00e9")
          for p, chan in (("/api/publish", {"channel": "chat:a"}),
                          ("/api/broadcast", {"channels": ["chat:a"]}))],
        ("POST", "/api/broadcast", json.dumps({"channels": [], "payload": 1}).encode(), 400),
        ("POST", "/api/disconnect", json.dumps({"user": 5}).encode(), 400),
        ("GET", "/api/publish", None, 405),
        ("POST", "/api/info", b"{}", 405),
        ("POST", "/api/nothing", b"{}", 404),
    ]
    for method, path, raw, want in cases:
        st, hd, b = call(h, method, path, raw=raw)
        assert st == want, (path, raw, st, b)
        assert "Retry-After" not in hd, (path, raw, dict(hd))
    st, _, b = call(h, "GET", "/api/history/chat:a")
    assert st == 200 and json.loads(b)["payload"]["messages"] == [], b  # nothing went out
    # presence and history: what a /ws client would be told, as a status.
    for path, want, code in (("/api/history/zzz:y", 404, 4001),
                             ("/api/history/chat:bad%20name", 400, 4000),
                             ("/api/presence/zzz:a,b", 400, 4000),  # the name first
                             ("/api/presence/chat:a,b", 400, 4000),
                             ("/api/presence/cursors:x", 400, 4004),
                             ("/api/history/cursors:x", 400, 4004)):
        st, _, b = call(h, "GET", path)
        assert st == want and json.loads(b)["code"] == code, (path, st, b)
        assert json.loads(b)["channel"] == urllib.parse.unquote(path.split("/")[-1]), b
    # Escapes that are not two hex digits, a NUL, bytes that are not UTF-8
    # once decoded: a bad name (and not named back when not UTF-8).
    for path in ("/api/history/chat:a%2", "/api/history/chat:a%zz", "/api/presence/chat:%00",
                 "/api/history/chat:%FF"):
        st, _, b = call(h, "GET", path)
        assert st == 400 and json.loads(b)["code"] == 4000, (path, st, b)
    for kind in ("presence", "history"):  # too long to be a name: the code alone
        st, _, b = call(h, "GET", f"/api/{kind}/chat:" + "x" * 300)
        assert st == 400 and json.loads(b)["code"] == 4000, (kind, st, b)
    # A 405 names the methods the path takes (RFC 9110 15.5.6), with a
    # body or without one; a GET or HEAD with a body where no body is
    # taken is malformed (400).
    for method, path, body, allow in (
            ("GET", "/api/broadcast", b"{}", "POST"), ("POST", "/api/info", b"{}", "GET"),
            ("POST", "/api/presence/chat:a", b"{}", "GET"),
            ("POST", "/metrics", None, "GET, HEAD"), ("PUT", "/metrics", b"x=1", "GET, HEAD"),
            ("PUT", "/healthz", None, "GET, HEAD"), ("POST", "/readyz", b"{}", "GET, HEAD"),
            ("POST", "/ws", b"{}", "GET")):
        st, hd, b = call(h, method, path, raw=body,
                         key=API_KEY if path.startswith("/api/") else None)
        assert st == 405 and hd["Allow"] == allow, (method, path, st, dict(hd), b)
        if path.startswith("/api/"):
            assert json.loads(b) == {"error": f"use {allow}"}, b
    assert call(h, "POST", "/nothing-here", raw=b"{}", key=None)[0] == 404
    # HEAD gets heads alone, refusals included (RFC 9110 9.3.2), with the
    # Content-Length the body would have had.
    key = b"X-API-Key: " + API_KEY.encode() + b"\r\n"
    for path, headers, want in ((b"/api/info", key, b"405"), (b"/api/info", b"", b"401"),
                                (b"/nothing-here", b"", b"404"), (b"/healthz", b"", b"200")):
        s = socket.create_connection(("127.0.0.1", h.port), timeout=5 * MULT)
        s.sendall(b"HEAD " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        got = wsraw.read_to_eof(s)
        s.close()
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == want and body == b"", (path, got)
        assert int(re.search(rb"Content-Length: (\d+)", head).group(1)) > 0, (path, got)
    for method in ("GET", "HEAD"):
        assert call(h, method, "/healthz", raw=b"{}", key=None)[0] == 400, method
    st, _, b = call(h, "POST", "/api/publish", raw=b"x" * 70000)
    assert st == 413, st
    # A chunked body is refused with 411.
    s = socket.create_connection(("127.0.0.1", h.port), timeout=5 * MULT)
    s.sendall(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: " + API_KEY.encode() +
              b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 411")
    s.close()
    # A coding other than chunked last: the length is unknown (RFC 9112
    # 6.3), 400, and what follows the head is not taken as WebSocket
    # frames after a 101 (request smuggling past a proxy that reads the
    # body otherwise).
    s = socket.create_connection(("127.0.0.1", h.port), timeout=5 * MULT)
    s.sendall(b"GET /raw/x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\nTransfer-Encoding: gzip\r\n\r\n\x81\x80abcd")
    assert s.recv(100).startswith(b"HTTP/1.1 400")
    s.close()


def test_api_bodies_nest_no_deeper_than_messages(hub):
    """A publish whose payload nests deeper than limits.json_depth allows a
    /ws message is refused (400, code 1003), as it would be from a /ws
    client, before jansson's recursive parser runs; one at the bound is
    published, and its subscribers get it."""
    h = hub(merge(api_config(), {"limits": {"json_depth": 8}}))
    # The body is one level, the payload the rest: 7 arrays fit in 8.
    for depth, want in ((7, 200), (8, 400), (2000, 400)):
        body = b'{"channel":"chat:deep","payload":' + b"[" * depth + b"]" * depth + b"}"
        st, _, b = call(h, "POST", "/api/publish", raw=body)
        assert st == want, (depth, st, b)
        if want == 400:
            assert json.loads(b)["code"] == 1003, b
    st, _, b = call(h, "GET", "/api/history/chat:deep")
    assert st == 200 and len(json.loads(b)["payload"]["messages"]) == 1, b


def test_api_reads_personal_channels_escaped(hub):
    """A personal channel's '#' must be sent as %23 in the path (a client
    ends the target at a bare '#', RFC 3986 3.5): the API decodes the
    name, so presence and history reach the channel the operator named,
    and not the public one before the '#'."""
    h = hub(api_config())
    for channel, text in (("chat:room#alice,bob", "secret-dm"), ("chat:room", "public")):
        st, _, b = call(h, "POST", "/api/publish", {"channel": channel, "payload": text})
        assert st == 200, (channel, st, b)
    for path, want in (("/api/history/chat:room%23alice,bob", "secret-dm"),
                       ("/api/history/chat%3Aroom%23alice%2Cbob", "secret-dm"),
                       ("/api/history/chat:room", "public")):
        st, _, b = call(h, "GET", path)
        assert st == 200, (path, st, b)
        d = json.loads(b)
        assert [m["payload"] for m in d["payload"]["messages"]] == [want], (path, d)
        assert d["channel"] == urllib.parse.unquote(path.split("/")[-1]), d
    st, _, b = call(h, "GET", "/api/presence/chat:room%23alice,bob")
    assert st == 200 and json.loads(b)["channel"] == "chat:room#alice,bob", (st, b)


@run_async
async def test_api_disconnect_user_everywhere(hub):
    h = hub(api_config(), workers=2)
    alices = [await Client.open(h, token("alice")) for _ in range(6)]
    bob = await Client.open(h, token("bob"))
    st, _, b = call(h, "POST", "/api/disconnect", {"user": "alice"})
    assert st == 200 and json.loads(b) == {"ok": True, "revoked_s": 0}
    for a in alices:
        d = await a.expect(lambda m: m["type"] == "disconnect", what="disconnect")
        assert d["payload"]["code"] == 4501 and d["payload"]["reconnect"] is False
        try:
            await a.expect(lambda m: False, timeout=5, what="close")
        except Closed:
            pass
        assert a.close_code == 4501
    # Bob is untouched.
    await bob.subscribe("chat:b")
    await bob.close()


METRIC_LINE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*)?\})? (-?[0-9.eE+-]+|\+Inf|NaN)$')


def parse_prometheus(text):
    """A strict reader of the text format: HELP/TYPE comments before their
    samples, every sample line well formed, histogram buckets cumulative
    and ending in +Inf equal to _count."""
    types, samples = {}, {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in types, f"second TYPE for {name}"
            types[name] = kind
            continue
        assert not line.startswith("#"), line
        m = METRIC_LINE.match(line)
        assert m, f"malformed sample line: {line!r}"
        name, labels, value = m.group(1), m.group(3) or "", m.group(5)
        base = re.sub(r"_(bucket|sum|count|total)$", "", name)
        assert name in types or base in types or re.sub(r"_(bucket|sum|count)$", "", name) in types, \
            f"sample before its TYPE: {line}"
        samples[(name, labels)] = float(value)
    return types, samples


@run_async
async def test_metrics_parse_and_count(hub):
    h = hub(api_config())
    a = await Client.open(h, token("alice"))
    await a.subscribe("chat:m")
    for i in range(5):
        await a.cmd("publish", "chat:m", payload={"i": i})
    for _ in range(5):
        await a.expect(lambda m: m["type"] == "message", what="message")
    # Commands that do not parse: not JSON, an unknown type, a bad field.
    for raw in ("{", '{"type":"dance","id":1}', '{"type":"publish","id":2,"channel":7}'):
        await a.send(raw)
        e = await a.expect(lambda m: m["type"] == "error", what=f"error for {raw}")
        assert 1000 <= e["payload"]["code"] < 2000, e
    st, hdrs, body = call(h, "GET", "/metrics", key=None)
    assert st == 200 and hdrs["Content-Type"].startswith("text/plain; version=0.0.4")
    types, s = parse_prometheus(body.decode())
    assert types["wshub_connections"] == "gauge" and s[("wshub_connections", "")] >= 1
    assert s[("wshub_commands_total", 'type="publish"')] >= 5
    assert s[("wshub_commands_total", 'type="subscribe"')] >= 1
    assert s[("wshub_commands_total", 'type="invalid"')] == 3
    assert s[("wshub_messages_in_total", 'endpoint="ws"')] >= 7
    assert types["wshub_publish_delivery_seconds"] == "histogram"
    buckets = sorted(((float(k[1].split('"')[1]) if "+Inf" not in k[1] else float("inf")), v)
                     for k, v in s.items() if k[0] == "wshub_publish_delivery_seconds_bucket")
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), "buckets are cumulative"
    assert buckets[-1][0] == float("inf")
    assert counts[-1] == s[("wshub_publish_delivery_seconds_count", "")] >= 5
    # Loop turns: a histogram whose sum is the workers' busy time, one
    # counter per worker.
    assert types["wshub_loop_turn_seconds"] == "histogram"
    turns = sorted(((float(k[1].split('"')[1]) if "+Inf" not in k[1] else float("inf")), v)
                   for k, v in s.items() if k[0] == "wshub_loop_turn_seconds_bucket")
    assert [v for _, v in turns] == sorted(v for _, v in turns) and turns[-1][0] == float("inf")
    assert turns[-1][1] == s[("wshub_loop_turn_seconds_count", "")] > 0
    assert types["wshub_worker_busy_seconds_total"] == "counter"
    busy = {k[1]: v for k, v in s.items() if k[0] == "wshub_worker_busy_seconds_total"}
    assert sorted(busy) == ['worker="0"', 'worker="1"'], busy  # the fixture's 2 workers
    assert sum(busy.values()) > 0, busy  # (a worker with no connection may never wake)
    assert abs(sum(busy.values()) - s[("wshub_loop_turn_seconds_sum", "")]) < 0.05, busy
    # The standard process_* metrics, against what /proc says of the pid.
    pid = h.pid
    for name, kind in [("process_cpu_seconds_total", "counter"),
                       ("process_resident_memory_bytes", "gauge"),
                       ("process_virtual_memory_bytes", "gauge"), ("process_open_fds", "gauge"),
                       ("process_max_fds", "gauge"), ("process_start_time_seconds", "gauge")]:
        assert types[name] == kind, name
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    assert abs(s[("process_open_fds", "")] - fds) <= 3, (s[("process_open_fds", "")], fds)
    with open(f"/proc/{pid}/limits") as f:
        soft = next(line.split()[3] for line in f if line.startswith("Max open files"))
    assert s[("process_max_fds", "")] == float(soft)
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert 0.5 * rss <= s[("process_resident_memory_bytes", "")] <= 2 * rss
    assert s[("process_virtual_memory_bytes", "")] >= s[("process_resident_memory_bytes", "")]
    # Started by this test, moments ago (the wall clock, from boot time).
    assert time.time() - 60 < s[("process_start_time_seconds", "")] <= time.time() + 1
    assert 0 < s[("process_cpu_seconds_total", "")] < 60
    # A close code is counted when sent.
    await a.close()
    st, _, body = call(h, "GET", "/metrics", key=None)
    _, s2 = parse_prometheus(body.decode())
    assert s2[("wshub_closes_total", 'code="1000"')] >= 1


def test_metrics_whole_at_64_workers(hub):
    """With 64 workers the page is about 16 KiB (once the fixed size of its
    buffer, which dropped what did not fit without a word; now it starts at
    4 KiB and grows): every family is there, each worker's open
    connections among them, and HEAD answers the head alone."""
    h = hub(api_config(), workers=64)
    socks = []
    try:
        for _ in range(12):
            s = socket.create_connection(("127.0.0.1", h.port), timeout=5 * MULT)
            socks.append(s)
        deadline = time.monotonic() + 10 * MULT
        while True:
            st, hdrs, body = call(h, "GET", "/metrics", key=None)
            assert st == 200, st
            text = body.decode()
            assert int(hdrs["Content-Length"]) == len(body) > 8192, len(body)
            types, s = parse_prometheus(text)
            per = {k[1]: v for k, v in s.items() if k[0] == "wshub_worker_connections"}
            # Opened and closed at the same moments as the total; the
            # scrape reads them one after the other, so a connection of
            # an earlier scrape still closing may be counted in one only.
            # (And 64 workers on a loaded machine may not have accepted
            # all 12 yet.)
            total = s[("wshub_connections", "")]
            if (sum(per.values()) == total and total >= 13) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert types["wshub_worker_connections"] == "gauge"
        assert sorted(per) == sorted(f'worker="{i}"' for i in range(64)), sorted(per)
        assert sum(per.values()) == s[("wshub_connections", "")] >= 13, (per, s)
        assert len([k for k in s if k[0] == "wshub_worker_busy_seconds_total"]) == 64
        # The last family written, after the per-worker ones.
        assert types["process_start_time_seconds"] == "gauge"
        assert s[("process_start_time_seconds", "")] > 0
        c = socket.create_connection(("127.0.0.1", h.port), timeout=5 * MULT)
        c.sendall(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        got = wsraw.read_to_eof(c)
        c.close()
        head, _, rest = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and rest == b"", got[:300]
        length = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
        assert length and int(length.group(1)) > 8192, head
    finally:
        for s in socks:
            s.close()


def raw_status(port, data):
    """The status of the response to raw request bytes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5 * MULT)
    try:
        s.sendall(data)
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, f"no response to {data[:40]!r}"
            head += chunk
        return int(head.split(b" ", 2)[1])
    finally:
        s.close()


@run_async
async def test_api_expect_100_continue(hub):
    """A client that sends Expect: 100-continue and waits before sending its
    body gets `100 Continue` at once, then the final answer once the body
    is in (RFC 9110 10.1.1), and once only however the body comes. A
    request refused on its head alone (here 413) gets the final status
    instead, its body never read."""
    h = hub(api_config())
    a = await Client.open(h, token("alice"))
    await a.subscribe("chat:cont")
    body = json.dumps({"channel": "chat:cont", "payload": "after the go-ahead"}).encode()
    s = socket.create_connection(("127.0.0.1", h.port), timeout=5 * MULT)
    try:
        s.sendall(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: " + API_KEY.encode() +
                  b"\r\nContent-Type: application/json\r\nExpect: 100-Continue\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
        assert got == b"HTTP/1.1 100 Continue\r\n\r\n", got
        for i in range(0, len(body), 7):  # in pieces: no second 100
            s.sendall(body[i:i + 7])
            time.sleep(0.002)
        got = wsraw.read_to_eof(s)
        assert got.startswith(b"HTTP/1.1 200 "), got
        assert b"100 Continue" not in got, got
    finally:
        s.close()
    m = await a.expect(lambda m: m["type"] == "message", what="the published message")
    assert m["payload"] == "after the go-ahead", m
    assert raw_status(h.port, b"POST /api/publish HTTP/1.1\r\nHost: x\r\nExpect: 100-continue"
                      b"\r\nContent-Length: 70000\r\n\r\n") == 413
    # The key, the call and the method are in the head too: a refusal of
    # any of them is the final answer, never a go-ahead first.
    key = b"X-API-Key: " + API_KEY.encode() + b"\r\n"
    for line, headers, want in ((b"POST /api/publish", b"", 401),
                                (b"POST /api/publish", b"X-API-Key: wrong-key-0123456789\r\n", 403),
                                (b"PUT /api/publish", key, 405), (b"POST /api/info", key, 405),
                                (b"POST /api/nothing", key, 404)):
        assert raw_status(h.port, line + b" HTTP/1.1\r\nHost: x\r\n" + headers +
                          b"Expect: 100-continue\r\nContent-Length: 20\r\n\r\n") == want, line
    # HTTP/1.0 has no 100 Continue: its expectation is ignored (RFC 9110
    # 10.1.1), and the answer comes once the body is in.
    s = socket.create_connection(("127.0.0.1", h.port), timeout=5 * MULT)
    try:
        s.sendall(b"POST /api/publish HTTP/1.0\r\nHost: x\r\nX-API-Key: " + API_KEY.encode() +
                  b"\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        s.settimeout(0.3)
        try:
            early = s.recv(100)
        except socket.timeout:
            early = b""
        assert early == b"", early
        s.settimeout(5 * MULT)
        s.sendall(body)
        got = wsraw.read_to_eof(s)
        assert got.startswith(b"HTTP/1.1 200 "), got
    finally:
        s.close()
    await a.close()


def test_metrics_count_http_responses_by_code(hub):
    """Every HTTP response is counted once under its status, the 101 of an
    upgrade included: exactly what the clients saw."""
    h = hub(api_config())
    seen = {}

    def saw(code):
        seen[code] = seen.get(code, 0) + 1

    get = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
    for req in (get % b"/healthz", get % b"/healthz", get % b"/nope",
                b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n",
                get % (b"/" + b"a" * 5000),
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"):
        saw(raw_status(h.port, req))
    for key in (None, "wrong-key", API_KEY):
        saw(call(h, "GET", "/api/info", key=key)[0])
    for _ in range(2):
        saw(handshake_status(h.port, "/ws", [("Authorization", f"Bearer {token('bob')}")]))
    assert seen == {200: 3, 404: 1, 405: 1, 400: 1, 414: 1, 426: 1, 401: 1, 403: 1, 101: 2}, seen
    st, _, body = call(h, "GET", "/metrics", key=None)
    types, s = parse_prometheus(body.decode())
    assert types["wshub_http_responses_total"] == "counter"
    got = {int(k[1].split('"')[1]): int(v) for k, v in s.items()
           if k[0] == "wshub_http_responses_total" and v and "other" not in k[1]}
    assert got == seen, (got, seen)
    assert s[("wshub_http_responses_total", 'code="other"')] == 0
    # The scrape itself is counted once it is sent.
    _, _, body = call(h, "GET", "/metrics", key=None)
    _, s2 = parse_prometheus(body.decode())
    assert s2[("wshub_http_responses_total", 'code="200"')] == seen[200] + 1


@run_async
async def test_metrics_count_messages_out_by_type(hub):
    """wshub_messages_out_total counts what /ws clients are sent, by type,
    once per recipient of a fan-out; every count here is exact."""
    h = hub(api_config())
    a = await Client.open(h, token("alice"))
    b = await Client.open(h, token("bob"))
    await a.subscribe("chat:o")
    sb = await b.subscribe("chat:o")
    await a.push("join", "chat:o")                       # alice sees bob join
    for i in range(3):
        await a.publish("chat:o", {"i": i})              # 3 acks
    for x in (a, b):
        await x.messages("chat:o", 3)                    # 6 messages
    st, _, _ = call(h, "POST", "/api/publish", {"channel": "chat:o", "payload": "srv"})
    assert st == 200
    for x in (a, b):
        await x.messages("chat:o", 1)                    # 8 messages
    await a.send({"type": "signal", "channel": "chat:o", "payload": {"typing": True}})
    await b.push("signal", "chat:o")
    assert (await b.cmd("read", "chat:o", payload={"offset": 4}))["type"] == "ack"
    await a.push("read", "chat:o")
    assert (await a.cmd("presence", "chat:o"))["type"] == "presence"
    assert (await a.cmd("history", "chat:o"))["type"] == "history"
    assert (await a.cmd("no-such-command"))["type"] == "error"
    r = await b.cmd("unsubscribe", "chat:o")
    assert r["type"] == "unsubscribed"
    await a.push("leave", "chat:o")
    # Recovery replays offsets 2..4 to bob: 3 messages more.
    await b.subscribe("chat:o", recover={"offset": 1, "epoch": sb["epoch"]})
    await b.messages("chat:o", 3)
    await a.push("join", "chat:o")
    st, _, body = call(h, "GET", "/metrics", key=None)
    types, s = parse_prometheus(body.decode())
    assert types["wshub_messages_out_total"] == "counter"
    got = {k[1].split('"')[1]: int(v) for k, v in s.items() if k[0] == "wshub_messages_out_total"}
    want = {"connected": 2, "refreshed": 0, "subscribed": 3, "unsubscribed": 1, "ack": 4,
            "presence": 1, "history": 1, "message": 11, "join": 2, "leave": 1, "signal": 1,
            "read": 1, "refresh_required": 0, "lagged": 0, "disconnect": 0, "error": 1}
    assert got == want
    await a.close()
    await b.close()


@run_async
async def test_api_revocation_by_user_and_jti(hub):
    h = hub(api_config(), workers=2)
    a = await Client.open(h, token("alice"))
    st, _, b = call(h, "POST", "/api/disconnect", {"user": "alice", "revoke_s": 60})
    assert st == 200 and json.loads(b) == {"ok": True, "revoked_s": 60}, b
    d = await a.expect(lambda m: m["type"] == "disconnect", what="disconnect")
    assert d["payload"]["code"] == 4501
    # A fresh token of the revoked user is refused, at the handshake and in connect.
    from conftest import handshake_status
    assert handshake_status(h.port, f"/ws?token={token('alice')}") == 403
    bob = await Client.open(h, token("bob"))  # others are fine
    await bob.close()
    # One token id revoked: that token is refused, another one of the user is not.
    t1, t2 = token("carol", jti="t-1"), token("carol", jti="t-2")
    c1 = await Client.open(h, t1)
    st, _, b = call(h, "POST", "/api/disconnect", {"jti": "t-1"})
    assert st == 200 and json.loads(b)["revoked_s"] == 86400
    d = await c1.expect(lambda m: m["type"] == "disconnect", what="disconnect")
    assert d["payload"]["code"] == 4501
    assert handshake_status(h.port, f"/ws?token={t1}") == 403
    c2 = await Client.open(h, t2)
    await c2.close()
    for bad in [{"user": "x", "jti": "y"}, {}, {"user": "x", "revoke_s": -1},
                {"user": "x", "revoke_s": "10"}]:
        st, _, _ = call(h, "POST", "/api/disconnect", bad)
        assert st == 400, bad


def test_api_revocations_past_4096_up_to_the_limit(hub):
    """limits.max_revocations (here 4200, past the old fixed 4096): every
    one of 4200 token ids is refused at the handshake after its
    revocation, one more is refused with 503 while they are live, and
    tokens of the same user with other ids are let in. An expired entry
    makes room."""
    import http.client
    import threading
    from conftest import handshake_status
    n, clients = 4200, 4
    h = hub(merge(api_config(), {"limits": {"max_revocations": n}}))
    errors = []

    def revoke(k):
        try:
            for i in range(k, n, clients):
                conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=10 * MULT)
                conn.request("POST", "/api/disconnect",
                             json.dumps({"jti": f"jti-{i}", "revoke_s": 3 if i == 7 else 600}),
                             {"X-API-Key": API_KEY})
                r = conn.getresponse()
                body = r.read()
                conn.close()
                assert r.status == 200, (i, r.status, body)
        except Exception as e:  # reported by the test thread
            errors.append(e)

    t0 = time.monotonic()
    threads = [threading.Thread(target=revoke, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120 * MULT)
    assert not errors, errors[:3]
    st, hd, b = call(h, "POST", "/api/disconnect", {"jti": "one-more"})
    assert st == 503 and hd["Retry-After"] == "1" and b"revocation list full" in b, (st, b)

    def revocations():
        _, _, body = call(h, "GET", "/metrics", key=None)
        types, samples = parse_prometheus(body.decode())
        assert types["wshub_revocations"] == "gauge"
        return samples[("wshub_revocations", "")]

    assert revocations() == n
    for i in (0, 1, 2048, 4095, 4096, 4199):
        assert handshake_status(h.port, f"/ws?token={token('dave', jti=f'jti-{i}')}") == 403, i
    assert handshake_status(h.port, f"/ws?token={token('dave', jti='not-revoked')}") == 101
    # jti-7 was revoked for 3 s: once it has expired, its slot is free.
    time.sleep(max(0.0, t0 + 3.2 - time.monotonic()))
    while handshake_status(h.port, f"/ws?token={token('dave', jti='jti-7')}") != 101:
        assert time.monotonic() < t0 + 30 * MULT, "jti-7 never expired"
        time.sleep(0.2)
    st, _, b = call(h, "POST", "/api/disconnect", {"jti": "one-more"})
    assert st == 200, b
    st, _, b = call(h, "POST", "/api/disconnect", {"jti": "and-another"})
    assert st == 503, b
    assert revocations() == n


def test_api_expired_revocations_are_swept(hub):
    """The 2 s sweep forgets a revocation once it has expired, with no new
    revocation to make it look (the gauge falls back), and keeps the live
    ones: it looks only once the soonest expiry has passed (hub.c
    revoked_soonest), and then finds the next one."""
    h = hub(api_config())

    def revocations():
        _, _, body = call(h, "GET", "/metrics", key=None)
        return parse_prometheus(body.decode())[1][("wshub_revocations", "")]

    for jti, secs in (("short", 1), ("mid", 5), ("long", 600)):
        st, _, b = call(h, "POST", "/api/disconnect", {"jti": jti, "revoke_s": secs})
        assert st == 200, b
    assert revocations() == 3
    deadline = time.monotonic() + 20 * MULT
    seen = [3]
    while seen[-1] > 1:
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)
        if revocations() != seen[-1]:
            seen.append(revocations())
    assert seen == [3, 2, 1], seen
    time.sleep(2.5)  # a sweep or more later, the live one is still there
    assert revocations() == 1


@run_async
async def test_api_payload_over_max_message_publishes_nothing(hub):
    """A payload over limits.max_message (here 1024 bytes) is refused by the
    broker at the first channel: 400 with code 1004 and no offsets, and no
    channel of the broadcast gets it."""
    h = hub(merge(api_config(), {"limits": {"max_message": 1024,
                                            "unauthenticated": {"max_message": 1024}}}))
    a = await Client.open(h, token("alice"))
    for ch in ("chat:a", "chat:b"):
        await a.subscribe(ch)
    st, _, b = call(h, "POST", "/api/broadcast",
                    {"channels": ["chat:a", "chat:b"], "payload": "x" * 2000})
    err = json.loads(b)
    assert st == 400 and err["code"] == 1004 and err["offsets"] == [], b
    st, _, b = call(h, "POST", "/api/broadcast", {"channels": ["chat:a", "chat:b"], "payload": 1})
    assert st == 200 and json.loads(b) == {"offsets": [1, 1]}, b
    got = [await a.expect(lambda m: m["type"] == "message", what="message") for _ in range(2)]
    assert sorted((m["channel"], m["payload"]) for m in got) == [("chat:a", 1), ("chat:b", 1)]
    await a.close()
