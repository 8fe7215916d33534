"""Presence entries and `leave` however a connection ends: clean close,
unsubscribe, a killed client process, a TCP reset."""
import asyncio
import os
import signal
import socket
import struct
import textwrap

from conftest import Client, run_async, token

KILLED_CLIENT = textwrap.dedent("""
    import asyncio, json, sys, websockets
    async def main(url, tok):
        ws = await websockets.connect(url, extra_headers={"Authorization": "Bearer " + tok},
                                      compression=None, ping_interval=None)
        await ws.send(json.dumps({"type": "connect", "id": 1}))
        c = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "subscribe", "id": 2, "channel": "chat:pr"}))
        while True:
            m = json.loads(await ws.recv())
            if m.get("id") == 2:
                break
        print(c["payload"]["client"], flush=True)
        await asyncio.sleep(3600)
    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


async def members(c, ch):
    r = await c.cmd("presence", ch)
    assert r["type"] == "presence", r
    return sorted((e["user"], e["client"]) for e in r["payload"]["clients"])


@run_async
async def test_presence_after_clean_close_and_unsubscribe(hub):
    h = hub()
    w = await Client.open(h, token("watcher"))
    await w.subscribe("chat:pr")
    a = await Client.open(h, token("alice"))
    b = await Client.open(h, token("bob"))
    await a.subscribe("chat:pr")
    await b.subscribe("chat:pr")
    await w.push("join", "chat:pr", pred=lambda m: m["payload"]["user"] == "alice")
    await w.push("join", "chat:pr", pred=lambda m: m["payload"]["user"] == "bob")
    assert await members(w, "chat:pr") == sorted(
        [("watcher", w.info["client"]), ("alice", a.info["client"]), ("bob", b.info["client"])])
    await a.close()
    lv = await w.push("leave", "chat:pr")
    assert lv["payload"]["user"] == "alice" and lv["payload"]["client"] == a.info["client"]
    assert await members(w, "chat:pr") == sorted(
        [("watcher", w.info["client"]), ("bob", b.info["client"])])
    await b.cmd("unsubscribe", "chat:pr")
    lv = await w.push("leave", "chat:pr")
    assert lv["payload"]["user"] == "bob"
    assert await members(w, "chat:pr") == [("watcher", w.info["client"])]
    await w.quiet(0.2, lambda m: m["type"] in ("join", "leave"))
    await b.close()
    await w.close()


@run_async
async def test_presence_after_a_killed_client_process(hub):
    h = hub()
    w = await Client.open(h, token("watcher"))
    await w.subscribe("chat:pr")
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/python3", "-c", KILLED_CLIENT, h.url(), token("victim"),
        stdout=asyncio.subprocess.PIPE)
    try:
        client_id = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().strip()
        assert client_id, "the client process did not subscribe"
        j = await w.push("join", "chat:pr")
        assert j["payload"]["client"] == client_id
        assert ("victim", client_id) in await members(w, "chat:pr")
        os.kill(proc.pid, signal.SIGKILL)  # only the process this test started
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lv = await w.push("leave", "chat:pr", timeout=10)
    assert lv["payload"] == {"user": "victim", "client": client_id, "info": None}, lv
    assert await members(w, "chat:pr") == [("watcher", w.info["client"])]
    await w.close()


@run_async
async def test_presence_after_a_tcp_reset(hub):
    h = hub()
    w = await Client.open(h, token("watcher"))
    await w.subscribe("chat:pr")
    v = await Client.open(h, token("victim"))
    await v.subscribe("chat:pr")
    await w.push("join", "chat:pr")
    # abort the TCP connection with an RST, no close frame
    sock = v.ws.transport.get_extra_info("socket")
    raw = socket.socket(fileno=os.dup(sock.fileno()))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    v.ws.transport.abort()
    lv = await w.push("leave", "chat:pr", timeout=10)
    assert lv["payload"]["client"] == v.info["client"], lv
    assert await members(w, "chat:pr") == [("watcher", w.info["client"])]
    await w.close()
