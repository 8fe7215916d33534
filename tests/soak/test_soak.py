"""Soak: one real wshub (2 workers, --echo, --deflate, history, presence)
under a mix of well- and ill-behaved clients at once for a bounded time,
with SIGHUP reloads under way, then checked for what users would see.

Each fault test drives one misbehaviour alone; this one drives them
together, where their interactions (a reload during a held broadcast, a
client cut mid-publish while a worker delivers a sliced batch, ...) are
what could break. Randomised; the seed is printed and WSH_SOAK_SEED
replays it. Bounded: WSH_SOAK_SECONDS (30) of load, every client loop
counted and timed.

What must hold, whatever the clients do:
- every echo equals what was sent, in order;
- a sentinel on each /raw channel, which reads everything, gets every
  publisher connection's messages in sequence with no gap (a /raw message
  is never dropped: its publisher is held, or a reader that falls behind
  is cut);
- a sentinel subscribed to every /ws channel gets each channel's offsets
  one after the other from the one its `subscribed` named: no message
  lost, none twice;
- the ill-behaved ones get their errors and closes, and each kind of
  client made progress;
- afterwards the server answers /healthz and a fresh client, is back to
  its fd count of before, and exits 0 on SIGTERM without a sanitizer
  report.
"""

import asyncio
import json
import os
import random
import signal
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.request

import websockets

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "conformance"))
import wsraw  # noqa: E402

MULT = wsraw.MULT
SECONDS = float(os.environ.get("WSH_SOAK_SECONDS", "30"))
KEY = "soak-api-key-0123456789abcdef"
HUB_CHANNELS = [f"room{i}" for i in range(6)]
RAW_CHANNELS = [f"r{i}" for i in range(3)]
MAX_MESSAGE = 262144


def config(rng):
    return {
        "auth": {"allow_anonymous": True},
        "api_key": KEY,
        "default_namespace": {"history_size": rng.choice([10, 50]), "history_ttl_s": 60,
                              "recover": True, "presence": True},
        "limits": {"publish_rate": rng.choice([5, 50, 1000]), "publish_burst": 100,
                   "max_subscriptions": 16},
    }


class Soak:
    def __init__(self, rng, tmp):
        self.rng, self.tmp = rng, tmp
        self.cfg = os.path.join(tmp, "config.json")
        self.write_config()
        # --max-queue leaves the sentinels, which share one Python thread
        # with every other client, room to fall behind for a while.
        self.server = wsraw.Server(["--workers", "2", "--echo", "--deflate", "--config", self.cfg,
                                    "--max-message", str(MAX_MESSAGE),
                                    "--max-queue", str(64 << 20)])
        self.proc, self.port = self.server.proc, self.server.port
        self.url = f"ws://127.0.0.1:{self.port}"
        self.stats = dict.fromkeys(("echo", "raw", "hub", "api", "refused", "reloads"), 0)
        self.raw_seen = {ch: 0 for ch in RAW_CHANNELS}
        self.hub_seen = dict.fromkeys(HUB_CHANNELS, 0)
        self.next_pub = 0
        self.end = 0.0

    def write_config(self):
        with open(self.cfg + ".tmp", "w") as f:
            json.dump(config(self.rng), f)
        os.replace(self.cfg + ".tmp", self.cfg)

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def payload(self):
        k = self.rng.random()
        if k < 0.6:
            return {"t": "x" * self.rng.randint(0, 200)}
        if k < 0.92:
            return {"blob": "y" * self.rng.randint(1000, 70000)}
        return {"big": "z" * self.rng.randint(70000, 300000)}  # some over max_message

    def running(self):
        return time.time() < self.end

    # -- the sentinels: they read everything and check it ------------------

    async def raw_sentinel(self, ch, ready):
        async with websockets.connect(f"{self.url}/raw/{ch}", max_size=None) as ws:
            ready.set_result(True)
            last = {}
            while True:
                try:
                    m = await asyncio.wait_for(ws.recv(), 1)
                except asyncio.TimeoutError:
                    if not self.running():
                        return
                    continue
                if isinstance(m, str):
                    m = m.encode()
                pub, seq = struct.unpack("!II", m[:8])
                assert seq == last.get(pub, -1) + 1, \
                    f"/raw/{ch}: publisher {pub} message {seq} after {last.get(pub)}"
                last[pub] = seq
                self.raw_seen[ch] += 1

    async def hub_sentinel(self, ready):
        async with websockets.connect(f"{self.url}/ws", max_size=None,
                                      compression="deflate") as ws:
            await ws.send(json.dumps({"type": "connect", "id": 1}))
            for i, ch in enumerate(HUB_CHANNELS):
                await ws.send(json.dumps({"type": "subscribe", "id": 10 + i, "channel": ch}))
            top = {}
            while True:
                try:
                    m = json.loads(await asyncio.wait_for(ws.recv(), 1))
                except asyncio.TimeoutError:
                    if not self.running():
                        return
                    continue
                ch = m.get("channel")
                if m["type"] == "subscribed":
                    top[ch] = m["payload"]["offset"]
                    if len(top) == len(HUB_CHANNELS):
                        ready.set_result(True)
                elif m["type"] == "message":
                    assert m["offset"] == top[ch] + 1, \
                        f"{ch}: offset {m['offset']} after {top[ch]}"
                    top[ch] = m["offset"]
                    self.hub_seen[ch] += 1
                else:
                    assert m["type"] in ("join", "leave", "signal", "read", "connected"), m

    # -- the rest of the crowd --------------------------------------------

    async def echo_client(self):
        rng = self.rng
        while self.running():
            try:
                async with websockets.connect(f"{self.url}/echo", max_size=None,
                                              compression=rng.choice([None, "deflate"]),
                                              open_timeout=10 * MULT, close_timeout=2 * MULT) as ws:
                    for _ in range(rng.randint(1, 40)):
                        if not self.running():
                            break
                        size = rng.choice([0, 1, 125, 126, 65535, 65536, 100000])
                        if rng.random() < 0.3:  # fragmented
                            parts = [os.urandom(size // 4) for _ in range(4)]
                            want = b"".join(parts)
                            await ws.send(parts)
                        else:
                            want = os.urandom(size)
                            await ws.send(want)
                        got = await asyncio.wait_for(ws.recv(), 30 * MULT)
                        assert got == want, f"echo of {len(want)} bytes came back as {len(got)}"
                        self.stats["echo"] += 1
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException):
                self.stats["refused"] += 1

    async def raw_publisher(self):
        rng = self.rng
        while self.running():
            pub, self.next_pub = self.next_pub, self.next_pub + 1
            reads = rng.random() < 0.7
            try:
                async with websockets.connect(f"{self.url}/raw/{rng.choice(RAW_CHANNELS)}",
                                              max_size=None, open_timeout=10 * MULT, close_timeout=2 * MULT,
                                              compression=rng.choice([None, "deflate"])) as ws:
                    for seq in range(rng.randint(1, 80)):
                        if not self.running():
                            break
                        size = rng.choice([8, 16, 100, 5000, 65536, 200000, 300000])
                        body = struct.pack("!II", pub, seq) + os.urandom(size - 8)
                        await ws.send(body)
                        self.stats["raw"] += 1
                        if rng.random() < 0.02:
                            # Gone mid-stream. Not once websockets has closed
                            # the transport itself (the server cut this
                            # publisher off): CPython 3.11's abort() after a
                            # close() that drained its buffer raises
                            # AttributeError ('NoneType' has no call_soon).
                            if not ws.transport.is_closing():
                                ws.transport.abort()
                            break
                        while reads:
                            try:
                                await asyncio.wait_for(ws.recv(), 0.001)
                            except asyncio.TimeoutError:
                                break
                    if not reads:
                        await asyncio.sleep(rng.random())
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException):
                self.stats["refused"] += 1

    async def hub_client(self):
        rng = self.rng
        garbage = ['{"type":', "[]", '{"type":"nope"}', '{"type":"publish","channel":"bad name"}',
                   '{"a":' * 200, "{}" * 3, '{"type":"subscribe","channel":"' + "a" * 500 + '"}']
        while self.running():
            try:
                async with websockets.connect(f"{self.url}/ws", max_size=None,
                                              compression=rng.choice([None, "deflate"]),
                                              open_timeout=10 * MULT, close_timeout=2 * MULT) as ws:
                    await ws.send(json.dumps({"type": "connect", "id": 1}))
                    for n in range(2, rng.randint(3, 60)):
                        if not self.running():
                            break
                        ch, r = rng.choice(HUB_CHANNELS), rng.random()
                        if r < 0.15:
                            m = {"type": "subscribe", "id": n, "channel": ch}
                            if rng.random() < 0.3:
                                m["payload"] = {"recover": {"offset": rng.randint(0, 50),
                                                            "epoch": "nope"}}
                        elif r < 0.45:
                            m = {"type": "publish", "id": n, "channel": ch,
                                 "payload": self.payload(), "msg_id": f"m{rng.randint(0, 30)}"}
                        elif r < 0.5:
                            m = {"type": "unsubscribe", "id": n, "channel": ch}
                        elif r < 0.55:
                            m = {"type": "presence", "id": n, "channel": ch}
                        elif r < 0.6:
                            m = {"type": "history", "id": n, "channel": ch,
                                 "payload": {"since": rng.randint(0, 40), "limit": 50}}
                        elif r < 0.65:
                            m = {"type": "signal", "channel": ch, "payload": {"typing": True}}
                        elif r < 0.75:
                            await ws.send(rng.choice(garbage))
                            continue
                        elif r < 0.77:
                            await ws.send(os.urandom(rng.randint(0, 100)))  # binary on /ws
                            continue
                        elif r < 0.79:
                            ws.transport.abort()
                            break
                        else:
                            try:
                                await asyncio.wait_for(ws.recv(), 0.02)
                            except asyncio.TimeoutError:
                                pass
                            continue
                        await ws.send(json.dumps(m))
                        self.stats["hub"] += 1
                    if rng.random() < 0.1:  # stays without reading a while
                        await asyncio.sleep(rng.random() * 2)
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException):
                self.stats["refused"] += 1

    def api(self, path, body=None):
        """A POST with body, else a GET; returns the status."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"apikey {KEY}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30 * MULT) as r:
                r.read()
                return r.status
        except urllib.error.HTTPError as e:
            e.read()
            assert e.code in (400, 413, 429, 503), (path, e.code)
            return e.code

    async def api_client(self):
        loop, rng = asyncio.get_running_loop(), self.rng
        while self.running():
            r = rng.random()
            if r < 0.4:
                call = ("/api/publish", {"channel": rng.choice(HUB_CHANNELS),
                                         "payload": self.payload()})
            elif r < 0.7:
                call = ("/api/broadcast", {"channels": rng.sample(HUB_CHANNELS, rng.randint(1, 6)),
                                           "payload": self.payload()})
            elif r < 0.8:
                call = ("/api/disconnect", {"user": f"nobody-{rng.randint(0, 99)}", "revoke_s": 1})
            elif r < 0.9:
                call = (f"/api/presence/{rng.choice(HUB_CHANNELS)}",)
            else:
                call = (f"/api/history/{rng.choice(HUB_CHANNELS)}?limit={rng.randint(1, 50)}",)
            await loop.run_in_executor(None, self.api, *call)
            self.stats["api"] += 1
            await asyncio.sleep(rng.random() * 0.1)

    async def reloader(self):
        while self.running():
            await asyncio.sleep(3)
            self.write_config()
            self.proc.send_signal(signal.SIGHUP)
            self.stats["reloads"] += 1

    async def run(self):
        loop = asyncio.get_running_loop()
        ready = [loop.create_future() for _ in range(len(RAW_CHANNELS) + 1)]
        sentinels = [asyncio.ensure_future(self.raw_sentinel(ch, f))
                     for ch, f in zip(RAW_CHANNELS, ready)]
        sentinels.append(asyncio.ensure_future(self.hub_sentinel(ready[-1])))
        await asyncio.wait_for(asyncio.gather(*ready), 10 * MULT)
        self.end = time.time() + SECONDS
        crowd = [self.hub_client() for _ in range(24)] + [self.raw_publisher() for _ in range(8)] + \
                [self.echo_client() for _ in range(4)] + [self.api_client() for _ in range(2)] + \
                [self.reloader()]
        await asyncio.wait_for(asyncio.gather(*crowd), SECONDS + 120 * MULT)
        print(f"crowd done {time.time() - self.end:.1f}s after the end")
        await asyncio.wait_for(asyncio.gather(*sentinels), 60 * MULT)
        print(f"sentinels done {time.time() - self.end:.1f}s after the end")


async def fresh_client_round_trip(url):
    async with websockets.connect(f"{url}/ws") as ws:
        await ws.send(json.dumps({"type": "connect", "id": 1}))
        await ws.send(json.dumps({"type": "subscribe", "id": 2, "channel": "after"}))
        await ws.send(json.dumps({"type": "publish", "id": 3, "channel": "after",
                                  "payload": {"t": "still here"}}))
        while True:
            m = json.loads(await asyncio.wait_for(ws.recv(), 10 * MULT))
            if m["type"] == "message":
                assert m["payload"] == {"t": "still here"}
                return


def test_soak_mixed_crowd_with_reloads():
    seed = int(os.environ.get("WSH_SOAK_SEED", random.randrange(1 << 32)))
    print(f"WSH_SOAK_SEED={seed}")
    tmp = tempfile.mkdtemp(prefix="wshub-soak-")
    soak = Soak(random.Random(seed), tmp)
    try:
        base = soak.fds()
        asyncio.run(soak.run())
        print(soak.stats, "raw delivered", soak.raw_seen, "hub delivered", soak.hub_seen)
        for k in ("echo", "raw", "hub", "api", "reloads"):
            assert soak.stats[k] > 0, (k, soak.stats)
        assert all(soak.raw_seen.values()), soak.raw_seen
        assert all(soak.hub_seen.values()), soak.hub_seen
        with urllib.request.urlopen(f"http://127.0.0.1:{soak.port}/healthz",
                                    timeout=10 * MULT) as r:
            assert r.status == 200
        asyncio.run(fresh_client_round_trip(soak.url))
        deadline = time.time() + 20 * MULT
        while soak.fds() > base:
            assert time.time() < deadline, f"fds {soak.fds()} > {base} after the soak"
            time.sleep(0.1)
    finally:
        rc = soak.server.stop()  # SIGTERM
        log = soak.server.log()
    marker = wsraw.sanitizer_report(log)
    assert marker is None, log[log.index(marker) - 200:][:4000]
    assert rc == 0, f"wshub exited {rc} on SIGTERM: {log[-2000:]}"
