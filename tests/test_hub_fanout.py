"""Fan-out under a stalled dashboard, against the real daemon with real WebSocket clients: the
readers get every event in order while the stalled connection is closed with 4008 and its
queue never grows past ``websocket.queue_size``; a stalled ``servers`` subscriber instead gets
its SERVER_LIST conflated (latest wins) and is not closed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from rpad.config import Config

from .conftest import Running, fake_wall_clock
from .wsclient import StartDaemon, Ws, daemons, fake_time, ws_connect, ws_connect_stalled

__all__ = ["daemons"]  # the fixture

QUEUE_SIZE = 64
EVENTS = 2000
READERS = 3


async def _conn_of(r: Running, user: str) -> dict[str, Any] | None:
    resp = await r.request("GET", f"/api/v1/websocket/users/{user}/connections")
    conns = resp.json()["connections"]
    return conns[0] if conns else None


async def test_stalled_connection_is_closed_4008_and_the_others_get_everything(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(180):
        r = await daemons(make_config(websocket={"queue_size": QUEUE_SIZE}))
        token = r.token("viewer", "reader", topics=["bulk.*"])
        pad = "x" * 1000
        received: list[list[int]] = [[] for _ in range(READERS)]
        stalled_result: dict[str, Any] = {}
        max_queued = 0

        async def read(ws: Ws, out: list[int]) -> None:
            while len(out) < EVENTS:
                msg = await ws.recv()
                assert msg["type"] == "BULK", msg
                out.append(msg["seq"])

        async def drain_stalled(ws: Ws, detected: trio.Event) -> None:
            await detected.wait()
            stalled_result["messages"], stalled_result["code"] = await ws.messages_until_closed()

        async with ws_connect(r.ws_url, token=token) as a, ws_connect(r.ws_url, token=token) as b, \
                ws_connect(r.ws_url, token=token) as c, \
                ws_connect_stalled(r.ws_url, token=r.token("viewer", "stalled",
                                                           topics=["bulk.*"])) as stalled:
            readers = [a, b, c]
            for ws in readers:
                await ws.subscribe("bulk.load")
            await stalled.send(action="subscribe", topic="bulk.load")
            while (await r.request("GET", "/api/v1/websocket/stats")).json()[
                    "subscribersPerTopic"].get("bulk.load") != READERS + 1:
                await trio.sleep(0.01)

            detected = trio.Event()
            async with trio.open_nursery() as nursery:
                for ws, out in zip(readers, received):
                    nursery.start_soon(read, ws, out)
                nursery.start_soon(drain_stalled, stalled, detected)
                for i in range(EVENTS):
                    resp = await r.request("POST", "/api/v1/publish", role="service", json={
                        "topic": "bulk.load", "type": "BULK", "data": {"i": i, "pad": pad}})
                    assert resp.status_code == 200, resp.text
                    if not detected.is_set() and i % 10 == 0:
                        conn = await _conn_of(r, "stalled")
                        if conn is None or (await r.request(
                                "GET", "/api/v1/websocket/stats")).json()["slowConsumers"]:
                            detected.set()  # now let it read what reached it, and the close
                        else:
                            max_queued = max(max_queued, conn["queued"])

        # Every reader got every event, in order, none twice.
        for out in received:
            assert out == list(range(1, EVENTS + 1))
        # The stalled one got a prefix, in order, then 4008.
        assert stalled_result["code"] == 4008
        types = [m["type"] for m in stalled_result["messages"]]
        assert types[:2] == ["CONNECTION_ESTABLISHED", "SUBSCRIBED"]
        seqs = [m["seq"] for m in stalled_result["messages"] if m["type"] == "BULK"]
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < EVENTS
        # Its queue never held more than queue_size messages.
        assert 0 < max_queued <= QUEUE_SIZE
        stats = (await r.request("GET", "/api/v1/websocket/stats")).json()
        assert stats["slowConsumers"] == 1
        assert stats["disconnections"]["slow_consumer"] == 1
        assert stats["droppedMessages"] >= 1
        assert await _conn_of(r, "stalled") is None


async def test_stalled_servers_subscriber_gets_the_latest_list_not_a_close(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config]) -> None:
    fake_time(autojump_clock, nursery)
    with trio.fail_after(900):
        cfg = make_config(websocket={"queue_size": 4, "ping_interval_seconds": 100000,
                                     "pong_timeout_seconds": 100000},
                          presence={"min_interval_seconds": 0})
        r = await daemons(cfg, wall_clock=fake_wall_clock())
        for batch in range(4):  # 60 clients with 2 KB of metadata each, 15 per request
            beats = [{"clientId": f"robot-{batch}-{i:02d}", "metadata": {"pad": "m" * 2000}}
                     for i in range(15)]
            resp = await r.request("POST", "/api/v1/client/heartbeats", role="service",
                                   json={"heartbeats": beats})
            assert resp.json()["accepted"] == 15, resp.text

        async with ws_connect_stalled(r.ws_url, token=r.token("viewer", "slow")) as slow:
            await slow.send(action="subscribe", topic="servers")
            await trio.sleep(200)  # 100 pushes of ~130 KB each
            stats = (await r.request("GET", "/api/v1/websocket/stats")).json()
            pushes = stats["serverListPushes"]
            assert pushes >= 99
            assert stats["conflatedMessages"] > 0
            assert stats["slowConsumers"] == 0
            conn = await _conn_of(r, "slow")
            assert conn is not None and conn["queued"] <= 4

            lists: list[dict[str, Any]] = []
            with trio.move_on_after(1.0):  # less than a push interval of silence
                while True:
                    msg = await slow.recv()
                    if msg["type"] == "SERVER_LIST":
                        lists.append(msg)
            seqs = [m["seq"] for m in lists]
            assert seqs == sorted(set(seqs))
            assert len(lists) < pushes / 4  # most stale lists were replaced, not sent
            assert seqs[-1] >= pushes  # the newest one arrived: latest wins
            assert len(lists[-1]["data"]["servers"]) == 60
            # Still connected and served.
            await slow.send(action="ping")
            await slow.expect("PONG", skip=("SERVER_LIST",))
