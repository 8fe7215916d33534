"""pytest fixtures for wshub integration tests.

Each test starts its own wshub on 127.0.0.1:0 (port read back from
--port-file) through the `wshub` fixture. At teardown the fixture checks that
every server the test did not stop on purpose is still running and answers a
fresh client (/healthz and a WebSocket handshake), then stops it with
SIGTERM and requires exit status 0 and no sanitizer report in its log; any
server left running is killed by pid.
"""

import functools
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "conformance"))

import wsraw  # noqa: E402

MULT = wsraw.MULT
run_async = wsraw.run_async


def check_alive(server):
    """The server is running and answers a fresh client."""
    assert server.alive(), (f"wshub exited with {server.proc.returncode}; log tail:\n"
                            f"{server.log()[-3000:]}")
    r = server.healthz()
    assert r.status == 200 and r.body == b"ok\n", f"/healthz answered {r!r}"
    if "--echo" in server.args:
        c = wsraw.ws_connect(server.port, "/echo")
        try:
            c.send_frame(wsraw.OP_TEXT, b"alive?")
            m = c.recv_message(timeout=5)
            assert m == (wsraw.OP_TEXT, b"alive?"), f"fresh echo client got {m!r}"
            c.send_close(1000)
            f, _ = c.wait_close(5)
            assert f.close_code() == 1000
        finally:
            c.close()
    else:
        c = wsraw.ws_connect(server.port, "/raw/__alive_check__")
        try:
            c.send_close(1000)
            f, _ = c.wait_close(5)
            assert f.close_code() == 1000
        finally:
            c.close()


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def check_fds(server, timeout=3.0):
    """Every connection the test opened is gone: the server's open file
    descriptors are back to the count it had once listening."""
    import time
    deadline = time.monotonic() + timeout * MULT
    while True:
        n = fd_count(server.pid)
        if n is None or n <= server.baseline_fds:
            return
        if time.monotonic() > deadline:
            fds = []
            for fd in sorted(os.listdir(f"/proc/{server.pid}/fd"), key=int):
                try:
                    fds.append(f"{fd}->{os.readlink(f'/proc/{server.pid}/fd/{fd}')}")
                except OSError:
                    pass
            raise AssertionError(f"fd leak: {n} open fds, {server.baseline_fds} after startup: {fds}")
        time.sleep(0.05)


class Servers:
    def __init__(self):
        self.started = []

    def __call__(self, *args, expect_stopped=False):
        s = wsraw.Server([str(a) for a in args])
        s.expect_stopped = expect_stopped
        s.baseline_fds = fd_count(s.pid)
        self.started.append(s)
        return s


@pytest.fixture
def wshub():
    """Factory: wshub("--echo", "--max-message", 1048576) -> wsraw.Server.
    Pass expect_stopped=True when the test stops the server itself."""
    servers = Servers()
    yield servers

    def check(s):
        check_fds(s)
        check_alive(s)
    wsraw.teardown_servers([(s, s.expect_stopped, functools.partial(check, s))
                            for s in servers.started])


def ws_uri(server, path="/echo"):
    return f"ws://127.0.0.1:{server.port}{path}"
