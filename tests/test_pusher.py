"""The pusher (SERVER_LIST on ``servers``) and the stats pusher (STATS_UPDATE on ``stats``), on
the fake clock against the real daemon with real WebSocket clients: the exact cadence, the
immediate list for a new subscriber, the camelCase client view, and no work at all while
nobody listens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from rpad.config import Config
from rpad.core.times import parse_iso

from .conftest import fake_wall_clock
from .wsclient import StartDaemon, Ws, daemons, fake_time, ws_connect

__all__ = ["daemons"]  # the fixture


async def _stats(r: Any) -> dict[str, Any]:
    resp = await r.request("GET", "/api/v1/websocket/stats")
    assert resp.status_code == 200
    body: dict[str, Any] = resp.json()
    return body


async def _collect(ws: Ws, type_: str, seconds: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with trio.move_on_after(seconds):
        while True:
            out.append(await ws.expect(type_))
    return out


async def test_server_list_cadence_and_no_work_without_subscribers(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config]) -> None:
    fake_time(autojump_clock, nursery)
    with trio.fail_after(600):
        r = await daemons(make_config(), wall_clock=fake_wall_clock())
        for i in range(3):
            assert (await r.heartbeat(f"robot-{i}", version="2.1", ipAddress="10.0.0.9")).status_code == 200

        # Nobody listens: a minute passes without a single list being built or pushed.
        await trio.sleep(60)
        stats = await _stats(r)
        assert stats["serverListBuilds"] == 0 and stats["serverListPushes"] == 0

        async with ws_connect(r.ws_url, token=r.token("viewer", "dash")) as ws:
            sub = await ws.subscribe("servers")
            assert sub["data"]["recovered"] is False
            first = await ws.expect("SERVER_LIST")  # at once
            pushes = await _collect(ws, "SERVER_LIST", 6.5)
            # Exactly the pushes at 2, 4 and 6 s after subscribing.
            times = [parse_iso(m["ts"]) for m in [first, *pushes]]
            assert [round(t - times[0], 3) for t in times] == [0.0, 2.0, 4.0, 6.0]
            assert [m["seq"] for m in [first, *pushes]] == [0, 1, 2, 3]
            assert all(m["topic"] == "servers" for m in pushes)
            assert (await _stats(r))["serverListPushes"] == 3
            # Nothing changed in between: the list was serialized once and reused.
            assert (await _stats(r))["serverListBuilds"] == 1

            # A second subscriber gets the current list at once (with a client that came
            # online after the last push) and joins the same cadence.
            assert (await r.heartbeat("robot-new")).status_code == 200
            async with ws_connect(r.ws_url, token=r.token("viewer", "dash2")) as ws2:
                await ws2.subscribe("servers")
                now_list = await ws2.expect("SERVER_LIST")
                assert "robot-new" in {s["clientId"] for s in now_list["data"]["servers"]}
                t_join = parse_iso(now_list["ts"])
                later = await ws2.expect("SERVER_LIST")
                assert 0 < parse_iso(later["ts"]) - t_join <= 2.0
                assert (parse_iso(later["ts"]) - times[0]) % 2.0 == 0.0
                await ws.send(action="unsubscribe", topic="servers")
                await ws.expect("UNSUBSCRIBED", skip=("SERVER_LIST",))

        # The last subscriber left: at most one more tick wakes up, then nothing.
        await trio.sleep(2)
        idle = await _stats(r)
        await trio.sleep(120)
        after = await _stats(r)
        assert after["serverListPushes"] == idle["serverListPushes"]
        assert after["serverListBuilds"] == idle["serverListBuilds"]


async def test_server_list_is_the_camel_case_client_view(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config]) -> None:
    fake_time(autojump_clock, nursery)
    with trio.fail_after(300):
        r = await daemons(make_config(), wall_clock=fake_wall_clock())
        reg = await r.request("POST", "/api/v1/clients",
                              json={"clientId": "printer-7", "name": "Printer", "tags": ["floor-2"]})
        assert reg.status_code == 201
        hb = {"client_id": "printer-7", "status": "busy", "version": "3.0",
              "ip_address": "192.168.1.7", "osType": "linux",
              "metrics": {"cpuUsagePercent": 12.5, "memoryUsageBytes": 1024}}
        assert (await r.request("POST", "/api/v1/client/heartbeat", json=hb)).status_code == 200
        async with ws_connect(r.ws_url, token=r.token("viewer", "dash")) as ws:
            await ws.subscribe("servers")
            await ws.expect("SERVER_LIST")
            pushed = (await ws.expect("SERVER_LIST"))["data"]["servers"]
        listed = (await r.request("GET", "/api/v1/clients", role="viewer")).json()["clients"]
        assert pushed == listed
        (view,) = pushed
        assert view["clientId"] == "printer-7" and view["status"] == "online"
        assert view["reportedStatus"] == "busy" and view["ipAddress"] == "192.168.1.7"
        assert view["latestMetrics"] == {"cpuUsagePercent": 12.5, "memoryUsageBytes": 1024}
        for key in ("clientId", "name", "status", "reportedStatus", "version", "ipAddress",
                    "osType", "tags", "metadata", "lastHeartbeatAt", "onlineSince",
                    "offlineSince", "registeredAt", "clockSkewSeconds",
                    "heartbeatTimeoutSeconds", "latestMetrics"):
            assert key in view
        assert not [k for k in view if "_" in k]


async def test_push_interval_comes_from_the_config(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config]) -> None:
    fake_time(autojump_clock, nursery)
    with trio.fail_after(300):
        r = await daemons(make_config(push={"interval_seconds": 5}), wall_clock=fake_wall_clock())
        async with ws_connect(r.ws_url, token=r.token("viewer", "dash")) as ws:
            await ws.subscribe("servers")
            first = await ws.expect("SERVER_LIST")
            pushes = await _collect(ws, "SERVER_LIST", 16)
        times = [parse_iso(m["ts"]) for m in [first, *pushes]]
        assert [round(t - times[0], 3) for t in times] == [0.0, 5.0, 10.0, 15.0]


async def test_stats_updates_for_admins_every_stats_interval(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config]) -> None:
    fake_time(autojump_clock, nursery)
    with trio.fail_after(300):
        r = await daemons(make_config(push={"stats_interval_seconds": 10}),
                          wall_clock=fake_wall_clock())
        async with ws_connect(r.ws_url, token=r.token("admin", "ops")) as ws, \
                ws_connect(r.ws_url, token=r.token("viewer", "dash")) as viewer:
            await viewer.send(action="subscribe", topic="stats")
            assert (await viewer.expect("ERROR"))["data"]["code"] == "forbidden"
            await ws.subscribe("stats")
            first = await ws.expect("STATS_UPDATE")
            assert first["data"]["activeConnections"] == 2
            assert first["data"]["subscribersPerTopic"]["stats"] == 1
            updates = await _collect(ws, "STATS_UPDATE", 25)
        times = [parse_iso(m["ts"]) for m in [first, *updates]]
        assert [round(t - times[0], 3) for t in times] == [0.0, 10.0, 20.0]
        assert all(u["topic"] == "stats" for u in updates)
        assert [u["seq"] for u in updates] == [1, 2]
