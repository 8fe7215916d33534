"""The drop_oldest slow-consumer policy (DESIGN.md 5): a subscriber that
stops reading is not cut off; messages for it are dropped while its queue
is over --max-queue, and once it reads again it gets a `lagged` push with
the first offset it missed, from which history gives back everything. The
fast subscribers meanwhile get every message."""
import asyncio
import json
import time

import pytest

import wsraw
from conftest import MULT, Client, merge, run_async, token
from test_fanout import N_MSGS, SLOW_CFG, fast_reader, flood, raw_subscriber

LAG_CFG = merge(SLOW_CFG, {"namespaces": {"lag": {"history_size": 1000, "history_ttl_s": 300,
                                                  "presence": False, "recover": True,
                                                  "slow_consumer": "drop_oldest"}}})


def read_until_lagged(c, timeout=20.0):
    """Reads the backlog: (message offsets, the lagged push)."""
    offs = []
    deadline = time.monotonic() + timeout * MULT
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no lagged push; got {len(offs)} messages"
        f = c.recv_message(timeout=max(0.01, left) / MULT)
        assert not isinstance(f, wsraw.Frame), f"closed with {f.close_code()} instead of lagging"
        m = json.loads(f[1])
        if m["type"] == "message":
            offs.append(m["offset"])
        elif m["type"] == "lagged":
            return offs, m


# The second run adds a soft queue limit the slow subscriber stays over for
# longer than --soft-queue-time: drop_oldest namespaces are exempt from it,
# so it must still lag instead of being disconnected (4101).
@pytest.mark.parametrize("soft", [(), ("--soft-queue", "65536", "--soft-queue-time", "0.5")],
                         ids=["hard", "soft-limit-exempt"])
@run_async
async def test_lagged_subscriber_dropped_then_told_where_to_recover(hub, soft):
    h = hub(LAG_CFG, "--max-queue", 262144, *soft)
    pub = await Client.open(h, token("pub"))
    await pub.subscribe("lag:room")
    fast = [await Client.open(h, token(f"fast{i}")) for i in range(2)]
    for f in fast:
        await f.subscribe("lag:room")
    slow = await asyncio.to_thread(raw_subscriber, h, "lag:room")
    try:
        readers = [asyncio.create_task(fast_reader(f, "lag:room", N_MSGS)) for f in fast]
        await asyncio.sleep(0)
        acks = await flood(pub, "lag:room", N_MSGS, fast)
        assert acks == list(range(1, N_MSGS + 1))
        for r in readers:
            assert await r == list(range(1, N_MSGS + 1)), "fast subscribers get every message"
        if soft:
            await asyncio.sleep(1.5 * MULT)  # over the soft limit, past its time
        # The slow one reads now: an in-order prefix, then `lagged`.
        offs, lag = await asyncio.to_thread(read_until_lagged, slow)
        assert offs == list(range(1, len(offs) + 1)), "what it got is an in-order prefix"
        assert len(offs) < N_MSGS, "nothing was dropped: the test did not make it slow"
        frm = lag["payload"]["from_offset"]
        assert lag["channel"] == "lag:room" and frm == len(offs) + 1, (lag, len(offs))
        assert lag["payload"]["epoch"]
        # Still connected: history from from_offset - 1 gives the rest.
        slow.send_frame(wsraw.OP_TEXT, json.dumps(
            {"type": "history", "id": 9, "channel": "lag:room",
             "payload": {"since": frm - 1, "limit": 1000}}).encode())
        while True:
            f = await asyncio.to_thread(slow.recv_message, 10)
            assert not isinstance(f, wsraw.Frame), "closed"
            m = json.loads(f[1])
            if m.get("id") == 9:
                break
        assert m["type"] == "history", m
        got = [x["offset"] for x in m["payload"]["messages"]]
        assert got == list(range(frm, N_MSGS + 1)), (got[:3], got[-3:], frm)
    finally:
        slow.close()
    for f in fast:
        await f.close()
    await pub.close()


@run_async
async def test_a_join_while_lagging_does_not_cut_the_lagging_subscriber(hub):
    """In a drop_oldest namespace with join/leave, the pushes that are not
    messages (join, leave, read) are dropped too for a subscriber that is
    behind, where they passed the queue limit and cut it off with 4101."""
    cfg = merge(LAG_CFG, {"namespaces": {"lag": {"presence": True, "join_leave": True}}})
    h = hub(cfg, "--max-queue", 262144)
    pub = await Client.open(h, token("pub"))
    await pub.subscribe("lag:jl")
    slow = await asyncio.to_thread(raw_subscriber, h, "lag:jl")
    try:
        acks = await flood(pub, "lag:jl", N_MSGS, [])
        assert acks == list(range(1, N_MSGS + 1))
        # Others come and go while it is behind.
        for i in range(3):
            c = await Client.open(h, token(f"comer{i}", info={"pad": "p" * 2000}))
            await c.subscribe("lag:jl")
            await c.close()
        offs, lag = await asyncio.to_thread(read_until_lagged, slow)
        assert len(offs) < N_MSGS and lag["payload"]["from_offset"] == len(offs) + 1
        assert "ev=slow_consumer" not in h.log()
    finally:
        slow.close()
    await pub.close()
