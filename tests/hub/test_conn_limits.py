"""Connection limits of the configuration file (LIMITS.md): per client
address (429 with Retry-After) and in total (503 with Retry-After); a slot
freed by a closing connection can be taken again."""
import socket
import time

from conftest import MULT, base_config, merge


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
    while healthz(h.port) != b"HTTP/1.1 200 OK":
        assert time.monotonic() < deadline, "slot not freed after close"
        time.sleep(0.05)


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
    the next connection gets 429 with the seconds until the next token, and
    closing connections gives nothing back (only time does). Another
    address is not affected."""
    h = hub(merge(base_config(), {"limits": {"handshake_rate_per_ip": 1,
                                             "handshake_burst_per_ip": 3,
                                             "max_connections_per_ip": 0}}), workers=2)
    for _ in range(3):
        assert healthz(h.port) == b"HTTP/1.1 200 OK"
    for _ in range(2):
        data = healthz_from(h.port, "127.0.0.1")
        assert data.startswith(b"HTTP/1.1 429 "), data
        retry = [line for line in data.split(b"\r\n") if line.startswith(b"Retry-After:")]
        assert retry and int(retry[0].split(b":")[1]) == 1, data
    assert healthz_from(h.port, "127.0.0.2").startswith(b"HTTP/1.1 200 "), "other address refused"
    # One token a second: the address gets in again, once.
    deadline = time.monotonic() + 10 * MULT
    while not healthz_from(h.port, "127.0.0.1").startswith(b"HTTP/1.1 200 "):
        assert time.monotonic() < deadline, "no token after waiting"
        time.sleep(0.2)
    assert healthz_from(h.port, "127.0.0.1").startswith(b"HTTP/1.1 429 ")
    time.sleep(2.5)  # tokens for the fixture's two checks at teardown
