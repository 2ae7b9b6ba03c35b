"""The publish endpoint and the WebSocket management API (SPEC §3) against the real daemon:
every endpoint with real WebSocket connections behind it, the validation errors, and who may
call what (the auth matrix)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from rpad.config import Config

from .conftest import Running
from .wsclient import StartDaemon, daemons, ws_connect, ws_connect_stalled

__all__ = ["daemons"]  # the fixture

TIMEOUT = 30

ROLES = (None, "agent", "viewer", "service", "admin")
# method, path, body, the lowest role allowed (None: open to anyone)
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None, str | None]] = [
    ("POST", "/api/v1/publish", {"topic": "task.1", "type": "TASK_UPDATE", "data": {}}, "service"),
    ("GET", "/api/v1/websocket/stats", None, "admin"),
    ("GET", "/api/v1/websocket/connections", None, "admin"),
    ("GET", "/api/v1/websocket/users/alice/connections", None, "admin"),
    ("GET", "/api/v1/websocket/online-users", None, "admin"),
    ("GET", "/api/v1/websocket/health", None, None),
    ("POST", "/api/v1/websocket/broadcast", {"data": {"message": "hello"}}, "admin"),
    ("POST", "/api/v1/websocket/notify", {"title": "t", "message": "m"}, "service"),
    ("POST", "/api/v1/websocket/users/disconnect", {"userId": "nobody"}, "admin"),
    ("POST", "/api/v1/websocket/ping/alice", None, "admin"),
]
RANK = {"agent": 0, "viewer": 1, "service": 2, "admin": 3}


async def test_auth_matrix(daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(60):
        r = await daemons(make_config())
        async with ws_connect(r.ws_url, token=r.token("viewer", "alice")):
            for method, path, body, lowest in ENDPOINTS:
                for role in ROLES:
                    resp = await r.request(method, path, json=body, role=role,
                                           sub="alice" if role != "agent" else "robot-1")
                    if lowest is None or (role is not None and RANK[role] >= RANK[lowest]):
                        assert resp.status_code == 200, (method, path, role, resp.text)
                    elif role is None:
                        assert resp.status_code == 401, (method, path, role)
                        assert resp.json()["error"] == "unauthorized"
                    else:
                        assert resp.status_code == 403, (method, path, role)
                        assert resp.json()["error"] == "forbidden"
                        assert lowest in resp.json()["message"]
            # A forged token is 401 everywhere, open endpoints excepted.
            forged = r.token("admin")[:-3] + "xyz"
            for method, path, body, lowest in ENDPOINTS:
                resp = await r.request(method, path, json=body, token=forged)
                assert resp.status_code == (200 if lowest is None else 401), (method, path)


async def test_stats_connections_and_online_users(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        async with ws_connect(r.ws_url, token=r.token("viewer", "alice"),
                              extra_headers=[(b"User-Agent", b"dash/1.0")]) as a1, \
                ws_connect(r.ws_url, header_token=r.token("viewer", "alice")) as a2, \
                ws_connect(r.ws_url, token=r.token("service", "gateway")) as g:
            await a1.subscribe("client_status")
            await a1.subscribe("servers")
            await a1.expect("SERVER_LIST")
            await a2.subscribe("client_status")
            await g.send(action="oops")
            await g.expect("ERROR")
            assert (await r.heartbeat("robot-1")).status_code == 200
            for ws in (a1, a2):
                await ws.expect("CLIENT_CONNECTED")

            stats = (await r.request("GET", "/api/v1/websocket/stats")).json()
            assert stats["epoch"] == r.daemon.epoch
            assert stats["totalConnections"] == 3 and stats["activeConnections"] == 3
            assert stats["activeUsers"] == 2
            assert stats["messagesReceived"] == 4
            # 3 CONNECTION_ESTABLISHED, 3 SUBSCRIBED, 1 SERVER_LIST, 1 ERROR, 2 events
            assert stats["messagesSent"] == 10
            assert stats["errors"] == 1
            assert stats["disconnections"] == {}
            assert stats["subscribersPerTopic"] == {"client_status": 2, "servers": 1, "system": 3}
            assert stats["queueSize"] == 256 and stats["historySize"] == 1000

            conns = (await r.request("GET", "/api/v1/websocket/connections")).json()
            assert conns["total"] == 3
            by_id = {c["connectionId"]: c for c in conns["connections"]}
            c1 = by_id[a1.established["connectionId"]]
            assert c1["userId"] == "alice" and c1["role"] == "viewer"
            assert c1["topics"] == ["client_status", "servers", "system"]
            assert c1["isAlive"] is True and c1["lastPing"] is None and c1["lastPong"] is None
            assert c1["connectedAt"].endswith("Z")
            assert c1["queued"] == 0
            # CONNECTION_ESTABLISHED, 2 SUBSCRIBED, SERVER_LIST, CLIENT_CONNECTED
            assert c1["messagesSent"] == 5 and c1["messagesReceived"] == 2
            assert c1["metadata"]["authMethod"] == "query"
            assert c1["metadata"]["userAgent"] == "dash/1.0"
            assert c1["metadata"]["remoteAddress"] == "127.0.0.1"
            assert c1["metadata"]["path"] == "/ws"
            assert by_id[a2.established["connectionId"]]["metadata"]["authMethod"] == "header"

            mine = (await r.request("GET", "/api/v1/websocket/users/alice/connections")).json()
            assert mine["userId"] == "alice" and mine["total"] == 2
            assert {c["connectionId"] for c in mine["connections"]} == {
                a1.established["connectionId"], a2.established["connectionId"]}
            nobody = (await r.request("GET", "/api/v1/websocket/users/nobody/connections")).json()
            assert nobody == {"userId": "nobody", "connections": [], "total": 0}

            users = (await r.request("GET", "/api/v1/websocket/online-users")).json()
            assert users == {"users": [{"userId": "alice", "connections": 2},
                                       {"userId": "gateway", "connections": 1}], "total": 2}

            health = await r.request("GET", "/api/v1/websocket/health", role=None)
            assert health.status_code == 200
            assert health.json() == {"status": "ok", "accepting": True, "activeConnections": 3,
                                     "epoch": r.daemon.epoch}
            overall = (await r.request("GET", "/api/v1/health", role=None)).json()
            assert overall["websocket"]["activeConnections"] == 3


async def test_broadcast_reaches_every_connection(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        async with ws_connect(r.ws_url, token=r.token("viewer", "a")) as a, \
                ws_connect(r.ws_url, token=r.token("admin", "b")) as b:
            resp = await r.request("POST", "/api/v1/websocket/broadcast",
                                   json={"data": {"message": "maintenance at 18:00"}})
            assert resp.json() == {"type": "SYSTEM_MESSAGE", "topic": "system", "seq": 1,
                                   "delivered": 2}
            resp = await r.request("POST", "/api/v1/websocket/broadcast",
                                   json={"type": "RELOAD_PAGE", "data": None})
            assert resp.json()["seq"] == 2
            for ws in (a, b):
                m1 = await ws.expect("SYSTEM_MESSAGE")
                assert (m1["topic"], m1["seq"]) == ("system", 1)
                assert m1["data"] == {"message": "maintenance at 18:00"}
                m2 = await ws.expect("RELOAD_PAGE")
                assert (m2["topic"], m2["seq"], m2["data"]) == ("system", 2, None)


async def test_notify_to_a_user_a_topic_or_notifications(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        async with ws_connect(r.ws_url, token=r.token("viewer", "alice", topics=["team.ops"])) as a, \
                ws_connect(r.ws_url, token=r.token("viewer", "bob")) as b:
            await a.subscribe("team.ops")
            await b.subscribe("notifications")
            # To a user: no subscription needed.
            resp = await r.request("POST", "/api/v1/websocket/notify", role="service", json={
                "userId": "bob", "title": "Hi", "message": "Just you", "level": "urgent"})
            body = resp.json()
            assert body["userId"] == "bob" and body["delivered"] == 1
            note = (await b.expect("NOTIFICATION"))["data"]
            assert note == body["notification"]
            assert note["level"] == "urgent" and note["actionUrl"] is None
            assert note["autoClose"] is None and note["timestamp"].endswith("Z")
            # To a topic.
            resp = await r.request("POST", "/api/v1/websocket/notify", role="admin", json={
                "topic": "team.ops", "title": "Disk", "message": "80% full", "level": "warning",
                "autoClose": False})
            assert resp.json()["topic"] == "team.ops" and resp.json()["delivered"] == 1
            msg = await a.expect("NOTIFICATION")
            assert msg["topic"] == "team.ops" and msg["seq"] == 1
            assert msg["data"]["autoClose"] is False
            # Neither: the notifications topic (level defaults to info).
            resp = await r.request("POST", "/api/v1/websocket/notify", role="service", json={
                "title": "Deploy", "message": "v2 is out"})
            assert resp.json()["topic"] == "notifications"
            msg = await b.expect("NOTIFICATION")
            assert msg["topic"] == "notifications" and msg["data"]["level"] == "info"
            # Nothing else arrived on either side.
            for ws in (a, b):
                await ws.send(action="ping")
                await ws.expect("PONG")


async def test_disconnect_a_user_closes_4010(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        async with ws_connect(r.ws_url, token=r.token("viewer", "mallory")) as m1, \
                ws_connect(r.ws_url, token=r.token("viewer", "mallory")) as m2, \
                ws_connect(r.ws_url, token=r.token("viewer", "alice")) as a:
            resp = await r.request("POST", "/api/v1/websocket/users/disconnect",
                                   json={"userId": "mallory", "reason": "account locked"})
            assert resp.json() == {"userId": "mallory", "disconnected": 2}
            for ws in (m1, m2):
                assert await ws.close_code() == 4010
                assert ws.conn.closed is not None and ws.conn.closed.reason == "account locked"
            await a.send(action="ping")
            await a.expect("PONG")
            resp = await r.request("POST", "/api/v1/websocket/users/disconnect",
                                   json={"userId": "mallory"})
            assert resp.json() == {"userId": "mallory", "disconnected": 0}
            stats = (await r.request("GET", "/api/v1/websocket/stats")).json()
            assert stats["disconnections"] == {"disconnected_by_admin": 2}


async def test_ping_a_user_reports_round_trips(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        async with ws_connect(r.ws_url, token=r.token("viewer", "alice")) as a1, \
                ws_connect(r.ws_url, token=r.token("viewer", "alice")) as a2, \
                ws_connect_stalled(r.ws_url, token=r.token("viewer", "frozen")):
            resp = await r.request("POST", "/api/v1/websocket/ping/alice")
            assert resp.status_code == 200
            body = resp.json()
            assert body["userId"] == "alice"
            ids = {a1.established["connectionId"], a2.established["connectionId"]}
            assert {x["connectionId"] for x in body["results"]} == ids
            for x in body["results"]:
                assert x["ok"] is True and 0 <= x["rttMs"] < 5000
            conn = (await r.request("GET", "/api/v1/websocket/users/alice/connections")).json()
            for c in conn["connections"]:
                assert c["lastPing"] and c["lastPong"] and c["isAlive"] is True
                assert c["rttMs"] is not None

            # A connection that does not answer: a timeout, reported as such.
            resp = await r.request("POST", "/api/v1/websocket/ping/frozen?timeoutSeconds=0.3")
            (result,) = resp.json()["results"]
            assert result["ok"] is False and result["error"] == "timeout"
            assert result["rttMs"] is None

            resp = await r.request("POST", "/api/v1/websocket/ping/nobody")
            assert resp.status_code == 404 and resp.json()["error"] == "not_connected"
            for bad in ("0", "-1", "31", "abc", "nan"):
                resp = await r.request("POST", f"/api/v1/websocket/ping/alice?timeoutSeconds={bad}")
                assert resp.status_code == 422, bad
                assert resp.json()["details"][0]["field"] == "timeoutSeconds"


@pytest.mark.parametrize("path, body, field", [
    ("/api/v1/publish", {"type": "X", "data": 1}, "topic"),
    ("/api/v1/publish", {"topic": "Task 1", "type": "X"}, "topic"),
    ("/api/v1/publish", {"topic": "task.1", "type": "lower"}, "type"),
    ("/api/v1/publish", {"topic": "task.1", "type": "X", "extra": 1}, "extra"),
    ("/api/v1/publish", {"topic": 5, "type": "X"}, "topic"),
    ("/api/v1/websocket/broadcast", {"type": "X"}, "data"),
    ("/api/v1/websocket/broadcast", {"type": "bad type", "data": 1}, "type"),
    ("/api/v1/websocket/notify", {"message": "m"}, "title"),
    ("/api/v1/websocket/notify", {"title": "t"}, "message"),
    ("/api/v1/websocket/notify", {"title": "t", "message": "m", "level": "loud"}, "level"),
    ("/api/v1/websocket/notify", {"title": "t", "message": "m", "userId": "a", "topic": "b"},
     "topic"),
    ("/api/v1/websocket/notify", {"title": "t", "message": "m", "topic": "heartbeat"}, "topic"),
    ("/api/v1/websocket/notify", {"title": "t", "message": "m", "autoClose": "soon"},
     "autoClose"),
    ("/api/v1/websocket/notify", {"title": "x" * 201, "message": "m"}, "title"),
    ("/api/v1/websocket/users/disconnect", {"reason": "r"}, "userId"),
    ("/api/v1/websocket/users/disconnect", {"userId": "a", "reason": 5}, "reason"),
])
async def test_validation_names_the_field(daemons: StartDaemon,
                                          make_config: Callable[..., Config],
                                          path: str, body: dict[str, Any], field: str) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        resp = await r.request("POST", path, json=body)
        assert resp.status_code == 422, resp.text
        err = resp.json()
        assert err["error"] == "validation_failed"
        assert field in [d["field"] for d in err["details"]]


async def test_publish_refusals(daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r: Running = await daemons(make_config())
        for topic in ("client_status", "heartbeat", "servers", "stats"):
            resp = await r.request("POST", "/api/v1/publish",
                                   json={"topic": topic, "type": "FAKE", "data": {}})
            assert resp.status_code == 403 and resp.json()["error"] == "forbidden"
        resp = await r.request("POST", "/api/v1/publish", content=b"{nope",
                               headers={"Content-Type": "application/json"})
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_json"
        resp = await r.request("POST", "/api/v1/publish", json=[1, 2])
        assert resp.status_code == 400
        resp = await r.request("POST", "/api/v1/publish",
                               content=b'{"topic": "t.1", "type": "X", "data": NaN}',
                               headers={"Content-Type": "application/json"})
        assert resp.status_code == 422 and resp.json()["details"][0]["field"] == "data"
        resp = await r.request("POST", "/api/v1/publish",
                               json={"topic": "t.1", "type": "X", "data": "y" * 70000})
        assert resp.status_code == 413
        # Nobody subscribed: published (kept for since), delivered to nobody.
        resp = await r.request("POST", "/api/v1/publish", json={"topic": "t.1", "type": "X"})
        assert resp.json() == {"topic": "t.1", "type": "X", "seq": 1, "delivered": 0}
        resp = await r.request("GET", "/api/v1/websocket/ping/alice")
        assert resp.status_code == 405
