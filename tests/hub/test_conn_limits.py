"""Connection limits of the configuration file (LIMITS.md): per client
address (429 with Retry-After) and in total (503 with Retry-After); a slot
freed by a closing connection can be taken again."""
import asyncio
import socket
import time

import websockets
from conftest import MULT, Client, base_config, merge, raw_upgrade, run_async, token
from wsraw import scrape_metrics


def open_raw(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5 * MULT)
    return s


def status_of(s):
    s.settimeout(5 * MULT)
    try:
        data = s.recv(200)
    except ConnectionResetError:
        return None
    return data.split(b"\r\n", 1)[0] if data else None


def healthz(port):
    s = open_raw(port)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    st = status_of(s)
    s.close()
    return st


def test_limits_connections_per_ip_429(hub):
    h = hub(merge(base_config(), {"limits": {"max_connections_per_ip": 4}}), workers=2)
    held = [open_raw(h.port) for _ in range(4)]
    time.sleep(0.2 * MULT)
    extra = [open_raw(h.port) for _ in range(3)]
    for s in extra:
        s.settimeout(5 * MULT)
        data = s.recv(200)
        assert data.startswith(b"HTTP/1.1 429 "), data
        assert b"Retry-After:" in data
        s.close()
    # Closing held connections frees their slots.
    for s in held:
        s.close()
    deadline = time.monotonic() + 5 * MULT
    refused = len(extra)
    while (st := healthz(h.port)) != b"HTTP/1.1 200 OK":
        refused += st is not None and st.startswith(b"HTTP/1.1 429 ")
        assert time.monotonic() < deadline, "slot not freed after close"
        time.sleep(0.05)
    # Refusals at accept are counted as the responses they are.
    assert metric(h.port, 'wshub_http_responses_total{code="429"}') == refused


def test_limits_connections_total_503(hub):
    h = hub(merge(base_config(), {"limits": {"max_connections": 3,
                                             "max_connections_per_ip": 0}}), workers=1)
    held = [open_raw(h.port) for _ in range(3)]
    time.sleep(0.2 * MULT)
    s = open_raw(h.port)
    s.settimeout(5 * MULT)
    data = s.recv(200)
    assert data.startswith(b"HTTP/1.1 503 "), data
    assert b"Retry-After:" in data
    s.close()
    for s in held:
        s.close()
    deadline = time.monotonic() + 5 * MULT
    while healthz(h.port) != b"HTTP/1.1 200 OK":
        assert time.monotonic() < deadline, "slot not freed after close"
        time.sleep(0.05)


def healthz_from(port, source):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5 * MULT)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = s.recv(300)
    s.close()
    return data


def test_limits_handshake_rate_per_ip_429(hub):
    """A token bucket of new connections per address: the burst passes,
    the next connections get 429 with the seconds until their slot, and
    closing connections gives nothing back (only time does). Another
    address is not affected."""
    h = hub(merge(base_config(), {"limits": {"handshake_rate_per_ip": 1,
                                             "handshake_burst_per_ip": 3,
                                             "max_connections_per_ip": 0}}), workers=2)
    for _ in range(3):
        assert healthz(h.port) == b"HTTP/1.1 200 OK"
    # Each refused connection is promised its own slot, a token's time
    # (1 s) after the one before: the users behind one NAT come back one
    # after the other, not all in the next second.
    for want in (1, 2):
        data = healthz_from(h.port, "127.0.0.1")
        assert data.startswith(b"HTTP/1.1 429 "), data
        retry = [line for line in data.split(b"\r\n") if line.startswith(b"Retry-After:")]
        assert retry and int(retry[0].split(b":")[1]) == want, data
    assert healthz_from(h.port, "127.0.0.2").startswith(b"HTTP/1.1 200 "), "other address refused"
    # One token a second: the address gets in again, once.
    deadline = time.monotonic() + 10 * MULT
    while not healthz_from(h.port, "127.0.0.1").startswith(b"HTTP/1.1 200 "):
        assert time.monotonic() < deadline, "no token after waiting"
        time.sleep(0.2)
    assert healthz_from(h.port, "127.0.0.1").startswith(b"HTTP/1.1 429 ")
    time.sleep(2.5)  # tokens for the fixture's two checks at teardown


def upgrade(port, path="/raw/admission"):
    """A raw upgrade request: (101, None, the open connection, which the
    caller closes), or (status, Retry-After or None, body) of a refusal."""
    r, c = raw_upgrade(port, path)
    if r.status == 101:
        return 101, None, c
    c.close()
    ra = r.header("retry-after")
    return r.status, (int(ra) if ra is not None else None), r.body


def metric(port, name):
    return int(scrape_metrics(port)[name])


def test_limits_admission_rate_503_spreads_retry_after(hub):
    """limits.admission_rate: one bucket of upgrades for the whole server
    (both workers). Past the burst, upgrades get 503, each with its own
    Retry-After, one token's time (2 s here) after the one before, so a
    refused crowd comes back spread out. Plain HTTP (/healthz, /metrics)
    is not counted and keeps answering; time brings the upgrades back."""
    h = hub(merge(base_config(), {"limits": {"admission_rate": 0.5, "admission_burst": 2,
                                             "max_connections_per_ip": 0}}), workers=2)
    held = []
    for _ in range(2):
        st, _, c = upgrade(h.port)
        assert st == 101, st
        held.append(c)
    retries = []
    for _ in range(5):
        st, ra, body = upgrade(h.port)
        assert st == 503, f"upgrade past the burst answered {st}"
        assert ra is not None and b"admission" in body, body
        retries.append(ra)
    # Slots 2 s apart: 2, 4, 6, 8, 10 s, less what has passed since the
    # burst ran out (each rounded up to a whole second).
    assert retries[0] in (1, 2), retries
    assert all(1 <= b - a <= 3 for a, b in zip(retries, retries[1:])), retries
    assert 7 <= retries[-1] - retries[0] <= 9, retries
    for _ in range(5):
        assert healthz(h.port) == b"HTTP/1.1 200 OK"
    assert metric(h.port, "wshub_admission_refused_total") == 5
    deadline = time.monotonic() + 10 * MULT
    while True:
        st, _, c = upgrade(h.port)
        if st == 101:
            held.append(c)
            break
        assert time.monotonic() < deadline, "no upgrade admitted after waiting"
        time.sleep(0.25)
    for c in held:
        c.close()
    time.sleep(2.5)  # a token for the fixture's check at teardown


@run_async
async def test_limits_admission_rate_ws_told_when_to_come_back(hub):
    """On /ws a refused client is let through the upgrade to read what a
    browser could not read from a 503: `disconnect` with reconnect:true
    and its own retry_after_ms, then close 1013 (try again later), even
    if it sent `connect` at once. Each is told a later slot than the one
    before."""
    h = hub(merge(base_config(), {"limits": {"admission_rate": 0.5, "admission_burst": 1,
                                             "max_connections_per_ip": 0}}), workers=2)
    first = await Client.open(h, token("first"))
    delays = []
    for i in range(3):
        c = await Client.open(h, token(f"u{i}"), connect=False)
        try:
            await c.send({"type": "connect", "id": 1})
        except websockets.exceptions.ConnectionClosed:
            pass  # the notice and the close came first
        code, reason, seen = await c.expect_close()
        assert code == 1013, (code, reason, seen)
        assert [m["type"] for m in seen] == ["disconnect"], seen
        p = seen[0]["payload"]
        assert p["code"] == 1013 and p["reconnect"] is True, p
        delays.append(p["retry_after_ms"])
    # Slots 2 s apart (0.5/s), in whole seconds.
    assert all(1000 <= b - a <= 3000 for a, b in zip(delays, delays[1:])), delays
    assert 1000 <= delays[0] <= 2000, delays
    # The session admitted first is untouched.
    await first.subscribe("chat:adm")
    await first.close()
    assert metric(h.port, "wshub_admission_refused_total") == 3
    await asyncio.sleep(2.5)  # a token for the fixture's check at teardown


def test_limits_admission_rate_past_the_horizon_spread(hub):
    """Promises reach 60 s at most. At 0.5/s the 31st refused client and
    later ones are past that horizon: they are spread over 1-60 s instead
    of all being told the same second."""
    h = hub(merge(base_config(), {"limits": {"admission_rate": 0.5, "admission_burst": 1,
                                             "max_connections_per_ip": 0}}), workers=1)
    st, _, first = upgrade(h.port)
    assert st == 101
    retries = []
    for _ in range(50):
        st, ra, _ = upgrade(h.port)
        assert st == 503 and ra is not None
        retries.append(ra)
    promised, beyond = retries[:28], retries[32:]
    # Slots 2 s apart, in order, up to the horizon.
    assert promised == sorted(promised) and promised[-1] >= 54, promised
    assert all(1 <= r <= 60 for r in retries), retries
    # Past it: spread, not one value repeated.
    assert len(set(beyond)) >= 5, beyond
    first.close()
    time.sleep(2.5)  # a token for the fixture's check at teardown


def test_limits_connections_total_is_exact_across_workers(hub):
    """max_connections with two workers and connections arriving on both
    at once: exactly max_connections are kept and the rest get 503. (Each
    worker checked the count and added its connection later, so both could
    take the last slot: one connection per extra worker over the limit.)"""
    import threading
    h = hub(merge(base_config(), {"limits": {"max_connections": 20,
                                             "max_connections_per_ip": 0}}),
            "--handshake-timeout", 30, workers=2)
    rounds, per_thread, nthreads = 5, 20, 4
    for r in range(rounds):
        start = threading.Barrier(nthreads)
        socks = [[] for _ in range(nthreads)]

        def opener(i):
            start.wait()
            for _ in range(per_thread):
                socks[i].append(open_raw(h.port))

        threads = [threading.Thread(target=opener, args=(i,)) for i in range(nthreads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        every = [s for group in socks for s in group]
        time.sleep(0.5 * MULT)  # refusals are sent at accept
        kept = 0
        for s in every:
            s.setblocking(False)
            try:
                data = s.recv(200)
            except BlockingIOError:
                kept += 1
                continue
            assert data.startswith(b"HTTP/1.1 503 "), data
        for s in every:
            s.close()
        assert kept == 20, f"round {r}: {kept} connections kept with max_connections 20"
        deadline = time.monotonic() + 5 * MULT
        while healthz(h.port) != b"HTTP/1.1 200 OK":
            assert time.monotonic() < deadline, "slots not freed after close"
            time.sleep(0.05)
