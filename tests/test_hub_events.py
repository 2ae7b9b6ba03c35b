"""What dashboards see: registry events on ``client_status`` and ``heartbeat``, rpad's own
notifications, app topics published over HTTP, messages to one user, and resumable streams
(``since``, ``recovered``, ``epoch``), all against the real daemon with real WebSocket clients."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio
import trio.testing

from rpad import config as config_mod
from rpad.config import Config
from rpad.core.times import parse_iso

from .conftest import config_dict, fake_wall_clock
from .wsclient import StartDaemon, daemons, fake_time, ws_connect

__all__ = ["daemons"]  # the fixture

TIMEOUT = 30


async def test_heartbeat_reaches_client_status_and_heartbeat_subscribers(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        async with ws_connect(r.ws_url, token=r.token("viewer", "dash")) as status, \
                ws_connect(r.ws_url, token=r.token("viewer", "dash")) as beats:
            await status.subscribe("client_status")
            await beats.subscribe("heartbeat")
            body = {"clientId": "robot-1", "status": "online", "version": "1.0",
                    "metrics": {"cpuUsagePercent": 3.5}}
            resp = await r.request("POST", "/api/v1/client/heartbeat", json=body,
                                   token=r.token("agent", "robot-1"))
            assert resp.status_code == 200
            received_at = resp.json()["serverTime"]

            up = await status.expect("CLIENT_CONNECTED")
            assert (up["topic"], up["seq"]) == ("client_status", 1)
            assert up["data"]["clientId"] == "robot-1" and up["data"]["status"] == "online"
            assert up["data"]["reason"] == "heartbeat"
            assert up["data"]["version"] == "1.0"
            beat = await beats.expect("HEARTBEAT_RECEIVED")
            assert (beat["topic"], beat["seq"]) == ("heartbeat", 1)
            assert beat["data"] == {"clientId": "robot-1", "receivedAt": received_at,
                                    "reportedStatus": "online",
                                    "latestMetrics": {"cpuUsagePercent": 3.5}}
            assert set(beat) == {"type", "topic", "seq", "ts", "data"}

            # Reported status or version changed: CLIENT_STATUS_UPDATE (still online).
            await trio.sleep(1.05)  # presence.min_interval_seconds
            body.update(status="busy")
            assert (await r.request("POST", "/api/v1/client/heartbeat", json=body,
                                    token=r.token("agent", "robot-1"))).status_code == 200
            upd = await status.expect("CLIENT_STATUS_UPDATE")
            assert upd["seq"] == 2 and upd["data"]["reportedStatus"] == "busy"
            assert (await beats.expect("HEARTBEAT_RECEIVED"))["seq"] == 2

            # A clean agent shutdown: offline at once, reason agent_shutdown.
            await trio.sleep(1.05)
            body.update(status="offline")
            assert (await r.request("POST", "/api/v1/client/heartbeat", json=body,
                                    token=r.token("agent", "robot-1"))).status_code == 200
            down = await status.expect("CLIENT_DISCONNECTED")
            assert down["data"]["status"] == "offline"
            assert down["data"]["reason"] == "agent_shutdown"

            # Removal.
            assert (await r.request("DELETE", "/api/v1/clients/robot-1")).status_code == 200
            gone = await status.expect("CLIENT_REMOVED")
            assert gone["data"]["clientId"] == "robot-1" and gone["data"]["reason"] == "removed"
            assert gone["seq"] == 4


async def test_silence_means_client_disconnected_with_reason_timeout(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config]) -> None:
    """And rpad notifies on ``notifications``: a warning when the client goes offline, a
    success when it comes back."""
    fake_time(autojump_clock, nursery)
    with trio.fail_after(600):
        cfg = make_config(presence={"heartbeat_timeout_seconds": 20, "check_interval_seconds": 5})
        r = await daemons(cfg, wall_clock=fake_wall_clock())
        async with ws_connect(r.ws_url, token=r.token("viewer", "dash")) as ws:
            await ws.subscribe("client_status")
            await ws.subscribe("notifications")
            resp = await r.heartbeat("robot-9", name="Robot nine")
            last_beat = parse_iso(resp.json()["serverTime"])
            up = await ws.expect("CLIENT_CONNECTED")
            assert up["data"]["clientId"] == "robot-9"
            assert up["data"]["previousStatus"] == "unknown"
            # (a client seen for the first time is news on client_status, not a notification)

            down = await ws.expect("CLIENT_DISCONNECTED")
            offline_at = parse_iso(down["ts"])
            assert down["data"]["reason"] == "timeout"
            assert down["data"]["status"] == "offline"
            assert down["data"]["offlineSince"] == down["ts"]
            # The first sweep after the 20 s timeout ran out (sweeps every 5 s).
            assert 20 < offline_at - last_beat <= 25
            note = await ws.expect("NOTIFICATION")
            assert note["topic"] == "notifications"
            assert note["data"]["level"] == "warning"
            assert note["data"]["clientId"] == "robot-9"
            assert "Robot nine went offline" in note["data"]["message"]
            assert set(note["data"]) >= {"id", "title", "message", "level", "actionUrl",
                                         "autoClose", "timestamp"}

            await trio.sleep(30)
            assert (await r.heartbeat("robot-9")).status_code == 200
            back = await ws.expect("CLIENT_CONNECTED")
            assert back["data"]["status"] == "online"
            assert (down["data"]["previousStatus"], back["data"]["previousStatus"]) == (
                "online", "offline")
            note2 = await ws.expect("NOTIFICATION")
            assert note2["data"]["level"] == "success"
            assert "online again" in note2["data"]["message"]
            assert note2["data"]["id"] != note["data"]["id"]
            assert [m["seq"] for m in (up, down, back)] == [1, 2, 3]


async def test_first_heartbeat_of_a_registered_client_is_not_online_again(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config(presence={"registration": "manual"}))
        resp = await r.request("POST", "/api/v1/clients", json={"clientId": "new-1"})
        assert resp.status_code == 201
        async with ws_connect(r.ws_url, token=r.token("admin", "ops")) as ws:
            await ws.subscribe("client_status")
            await ws.subscribe("notifications")
            assert (await r.heartbeat("new-1")).status_code == 200
            up = await ws.expect("CLIENT_CONNECTED")
            assert up["data"]["previousStatus"] == "unknown"
            # The next notification is the one sent now, not an "online again" for new-1.
            resp = await r.request("POST", "/api/v1/websocket/notify", json={
                "topic": "notifications", "title": "marker", "message": "m", "level": "info"})
            assert resp.status_code == 200, resp.text
            note = await ws.expect("NOTIFICATION", skip=("HEARTBEAT_RECEIVED",))
            assert note["data"]["title"] == "marker"


async def test_task_progress_on_an_app_topic(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        async with ws_connect(r.ws_url, token=r.token("viewer", "dash", topics=["task.*"])) as ws, \
                ws_connect(r.ws_url, token=r.token("viewer", "other", topics=["task.43"])) as other:
            await ws.subscribe("task.42")
            await other.subscribe("task.43")
            for done in range(4):
                update = {"taskId": 42, "status": "running" if done < 3 else "completed",
                          "progress": round(done / 3 * 100), "currentDevice": f"dev-{done}",
                          "totalDevices": 3, "completedDevices": done}
                resp = await r.request("POST", "/api/v1/publish", role="service",
                                       json={"topic": "task.42", "type": "TASK_UPDATE",
                                             "data": update})
                assert resp.status_code == 200
                assert resp.json() == {"topic": "task.42", "type": "TASK_UPDATE",
                                       "seq": done + 1, "delivered": 1}
                msg = await ws.expect("TASK_UPDATE")
                assert (msg["topic"], msg["seq"], msg["data"]) == ("task.42", done + 1, update)
            await other.send(action="ping")
            await other.expect("PONG")  # nothing of task.42 arrived before it


async def test_messages_to_one_user_reach_all_of_its_connections(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        async with ws_connect(r.ws_url, token=r.token("viewer", "alice")) as a1, \
                ws_connect(r.ws_url, token=r.token("viewer", "alice")) as a2, \
                ws_connect(r.ws_url, token=r.token("viewer", "bob")) as b:
            resp = await r.request("POST", "/api/v1/websocket/notify", role="service", json={
                "userId": "alice", "title": "Report ready", "message": "Your export is done",
                "level": "info", "actionUrl": "/reports/7", "autoClose": 10})
            assert resp.status_code == 200
            assert resp.json()["delivered"] == 2
            for ws in (a1, a2):
                note = await ws.expect("NOTIFICATION")
                assert note["topic"] is None and note["seq"] is None
                assert note["data"]["title"] == "Report ready"
                assert note["data"]["actionUrl"] == "/reports/7"
                assert note["data"]["autoClose"] == 10
            await b.send(action="ping")
            await b.expect("PONG")


async def test_resume_with_since_after_a_drop(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config(websocket={"history_size": 5}))
        token = r.token("viewer", "dash", topics=["job.*"])

        async def publish(n: int) -> None:
            for _ in range(n):
                resp = await r.request("POST", "/api/v1/publish", role="service",
                                       json={"topic": "job.1", "type": "STEP", "data": {}})
                assert resp.status_code == 200

        async with ws_connect(r.ws_url, token=token) as ws:
            await ws.subscribe("job.1")
            await publish(3)
            seen = [(await ws.expect("STEP"))["seq"] for _ in range(3)]
            assert seen == [1, 2, 3]
        # Dropped; meanwhile two more events.
        await publish(2)
        async with ws_connect(r.ws_url, token=token) as ws:
            sub = await ws.subscribe("job.1", since=3)
            assert sub["data"] == {"topic": "job.1", "seq": 5, "recovered": True}
            assert [(await ws.expect("STEP"))["seq"] for _ in range(2)] == [4, 5]
            await publish(1)
            assert (await ws.expect("STEP"))["seq"] == 6  # then live, in order
            # Up to date: recovered, nothing replayed.
            again = await ws.subscribe("job.1", since=6)
            assert again["data"]["recovered"] is True
            await ws.send(action="ping")
            await ws.expect("PONG")

        # Dropped for longer than the history (5 events) holds: not recoverable.
        await publish(7)
        async with ws_connect(r.ws_url, token=token) as ws:
            sub = await ws.subscribe("job.1", since=6)
            assert sub["data"] == {"topic": "job.1", "seq": 13, "recovered": False}
            await ws.send(action="ping")
            await ws.expect("PONG")  # nothing was replayed
            # The history holds seqs 9 to 13: since=8 is recoverable.
            sub = await ws.subscribe("job.1", since=8)
            assert sub["data"]["recovered"] is True
            assert [(await ws.expect("STEP"))["seq"] for _ in range(5)] == [9, 10, 11, 12, 13]


async def test_a_restart_has_a_new_epoch_and_old_seqs_are_not_recovered(
        nursery: trio.Nursery, daemons: StartDaemon, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        cfg = config_mod.from_dict(config_dict(tmp_path / "state"))
        first = await daemons(cfg)
        async with ws_connect(first.ws_url, token=first.token("viewer", "dash")) as ws:
            epoch1 = ws.established["epoch"]
            await ws.subscribe("client_status")
            assert (await first.heartbeat("robot-1")).status_code == 200
            assert (await ws.expect("CLIENT_CONNECTED"))["seq"] == 1
        await first.http.aclose()
        first.daemon.stop()
        while first.daemon.hub is not None and first.daemon.hub.accepting:
            await trio.sleep(0.01)

        second = await daemons(cfg)  # same state directory: a restart
        async with ws_connect(second.ws_url, token=second.token("viewer", "dash")) as ws:
            assert ws.established["epoch"] != epoch1
            sub = await ws.subscribe("client_status", since=1)
            assert sub["data"] == {"topic": "client_status", "seq": 0, "recovered": False}
        health = (await second.request("GET", "/api/v1/websocket/health", role=None)).json()
        assert health["epoch"] == second.daemon.epoch != epoch1
