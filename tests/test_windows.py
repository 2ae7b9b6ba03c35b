"""Windowed subscriptions to ``servers`` against the real daemon, real WebSocket clients and
Trio's fake clock: the page and its counts at once, a push only when the page changed, a new
view at once, bad views named, and plain SERVER_LIST subscribers untouched."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from rpad.config import Config

from .conftest import fake_wall_clock
from .wsclient import StartDaemon, Ws, daemons, fake_time, ws_connect

__all__ = ["daemons"]  # the fixture
INTERVAL = 2.0


async def _messages(ws: Ws, seconds: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with trio.move_on_after(seconds):
        while True:
            out.append(await ws.recv())
    return out


async def _subscribe_view(ws: Ws, view: dict[str, Any]) -> dict[str, Any]:
    await ws.send(action="subscribe", topic="servers", view=view)
    sub = await ws.expect("SUBSCRIBED")
    assert sub["data"]["topic"] == "servers" and sub["data"]["view"]["limit"] == view["limit"]
    return (await ws.expect("SERVER_WINDOW"))["data"]


async def test_a_window_is_pushed_only_when_it_changed(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config]) -> None:
    fake_time(autojump_clock, nursery)
    cfg = make_config(push={"interval_seconds": INTERVAL},
                      presence={"min_interval_seconds": 0, "heartbeat_timeout_seconds": 3600,
                                "check_interval_seconds": 600})
    with trio.fail_after(300):
        r = await daemons(cfg, wall_clock=fake_wall_clock())
        for i in range(30):
            await r.heartbeat(f"n{i:02d}", metrics={"cpuUsagePercent": float(i)})
        await r.heartbeat("n05", status="offline")
        async with ws_connect(r.ws_url, token=r.token("viewer", "dash")) as ws, \
                ws_connect(r.ws_url, token=r.token("viewer", "plain")) as plain:
            await plain.subscribe("servers")
            assert len((await plain.expect("SERVER_LIST"))["data"]["servers"]) == 30
            page = await _subscribe_view(ws, {"filter": "online", "sort": "-cpu", "limit": 5})
            assert [s["clientId"] for s in page["servers"]] == [
                "n29", "n28", "n27", "n26", "n25"]
            assert page["counts"] == {"total": 30, "online": 29, "offline": 1, "unknown": 0,
                                      "matching": 29}
            assert page["view"] == {"filter": "online", "q": "", "tag": None, "sort": "-cpu",
                                    "offset": 0, "limit": 5}
            # Nothing changes: nothing is sent (the plain subscriber still gets its list).
            assert await _messages(ws, 3 * INTERVAL) == []
            assert {m["type"] for m in await _messages(plain, INTERVAL + 0.1)} == {"SERVER_LIST"}
            # A client outside the page beats without entering it: still nothing.
            await r.heartbeat("n03", metrics={"cpuUsagePercent": 3.0})
            assert await _messages(ws, 2 * INTERVAL) == []
            # A client of the page changes: the page comes, once.
            await r.heartbeat("n27", metrics={"cpuUsagePercent": 27.5}, status="busy")
            got = await _messages(ws, 2 * INTERVAL)
            assert [m["type"] for m in got] == ["SERVER_WINDOW"]
            n27 = got[0]["data"]["servers"][2]
            assert n27["clientId"] == "n27" and n27["reportedStatus"] == "busy"
            # A client climbs into the page: it comes with the new order.
            await r.heartbeat("n00", metrics={"cpuUsagePercent": 99.0})
            got = await _messages(ws, 2 * INTERVAL)
            assert [s["clientId"] for s in got[-1]["data"]["servers"]] == [
                "n00", "n29", "n28", "n27", "n26"]
            # Counts change (a client goes offline, out of this online page): pushed.
            await r.heartbeat("n10", status="offline")
            got = await _messages(ws, 2 * INTERVAL)
            assert got[-1]["data"]["counts"]["offline"] == 2
            # Another view replaces the first at once; search and tag narrow it.
            page = await _subscribe_view(ws, {"q": "n1", "sort": "id", "offset": 2, "limit": 3})
            assert [s["clientId"] for s in page["servers"]] == ["n12", "n13", "n14"]
            assert page["counts"]["matching"] == 10
            # Without a view: the plain list again.
            await ws.subscribe("servers")
            assert len((await ws.expect("SERVER_LIST"))["data"]["servers"]) == 30
            assert {m["type"] for m in await _messages(ws, INTERVAL + 0.1)} == {"SERVER_LIST"}
            # The plain subscriber never saw a window.
            assert "SERVER_WINDOW" not in {m["type"] for m in await _messages(plain, INTERVAL)}


async def test_bad_views_are_named_and_the_connection_stays(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config]) -> None:
    fake_time(autojump_clock, nursery)
    with trio.fail_after(120):
        r = await daemons(make_config(), wall_clock=fake_wall_clock())
        await r.heartbeat("a1")
        async with ws_connect(r.ws_url, token=r.token("viewer", "dash")) as ws:
            await ws.send(action="subscribe", topic="servers",
                          view={"sort": "size", "limit": 100000, "filter": "bad"})
            err = (await ws.expect("ERROR"))["data"]
            assert err["code"] == "invalid_field" and err["topic"] == "servers"
            assert {d["field"] for d in err["details"]} == {"view.sort", "view.limit",
                                                            "view.filter"}
            await ws.send(action="subscribe", topic="servers", view="all")
            assert (await ws.expect("ERROR"))["data"]["details"][0]["field"] == "view"
            page = await _subscribe_view(ws, {"limit": 10})
            assert [s["clientId"] for s in page["servers"]] == ["a1"]
            # Unsubscribing ends the window: nothing more comes.
            await ws.send(action="unsubscribe", topic="servers")
            await ws.expect("UNSUBSCRIBED")
            await r.heartbeat("a1", status="busy")
            assert await _messages(ws, 3 * INTERVAL) == []
