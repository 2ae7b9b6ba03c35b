"""The hub's protocol against the real daemon on port 0 with real WebSocket clients: the three
ways to authenticate, CONNECTION_ESTABLISHED, client actions and their ERRORs, topic
permissions, and every close code of SPEC §5 provoked on purpose (4008 is in
test_hub_fanout.py, 4010 in test_ws_api.py). Time-based closes run on the fake clock."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, ConnectionRejected

from rpad import config as config_mod
from rpad.config import Config
from rpad.core.times import iso

from .conftest import FAKE_WALL_ORIGIN, fake_wall_clock, start_daemon
from .wsclient import StartDaemon, daemons, fake_time, ws_connect, ws_connect_stalled

__all__ = ["daemons"]  # the fixture

TIMEOUT = 30


# -- authentication --------------------------------------------------------------------------


async def test_auth_by_query_header_and_first_message(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        assert r.ws_url is not None and r.ws_url.endswith("/ws")
        methods = {}
        async with ws_connect(r.ws_url, token=r.token("viewer", "by-query")) as ws:
            methods["query"] = ws.established
        async with ws_connect(r.ws_url, header_token=r.token("service", "by-header")) as ws:
            methods["header"] = ws.established
        async with ws_connect(r.ws_url, auth_message=r.token("admin", "by-message")) as ws:
            methods["message"] = ws.established
        for (method, est), (user, role) in zip(methods.items(), [
                ("by-query", "viewer"), ("by-header", "service"), ("by-message", "admin")]):
            assert est["userId"] == user and est["role"] == role, method
            assert est["epoch"] == r.daemon.epoch
            assert est["connectionId"]
            assert est["pingIntervalSeconds"] == 30.0
            assert est["serverTime"].endswith("Z")
        assert len({e["connectionId"] for e in methods.values()}) == 3
        # The other path of SPEC §5 works too.
        async with ws_connect(r.ws_url, path="/api/v1/client/ws",
                              token=r.token("viewer", "other-path")) as ws:
            assert ws.established["userId"] == "other-path"


async def test_before_auth_other_messages_get_error_then_auth_works(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        async with ws_connect(r.ws_url, established=False) as ws:
            await ws.send(action="subscribe", topic="client_status")
            err = await ws.expect("ERROR")
            assert err["data"]["code"] == "unauthorized"
            await ws.send_raw("{not json")
            assert (await ws.expect("ERROR"))["data"]["code"] == "invalid_json"
            await ws.send(action="auth")
            assert (await ws.expect("ERROR"))["data"]["code"] == "invalid_field"
            await ws.send(action="auth", token=r.token("viewer", "late"))
            est = await ws.expect("CONNECTION_ESTABLISHED")
            assert est["data"]["userId"] == "late"


@pytest.mark.parametrize("how", ["query", "header", "message"])
async def test_bad_token_closes_4001(daemons: StartDaemon, make_config: Callable[..., Config],
                                     how: str) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        forged = r.token("admin", "mallory")[:-4] + "AAAA"
        kwargs = {"query": {"token": forged}, "header": {"header_token": forged},
                  "message": {"auth_message": forged}}[how]
        async with ws_connect(r.ws_url, established=False, **kwargs) as ws:  # type: ignore[arg-type]
            assert await ws.close_code() == 4001
        stats = (await r.request("GET", "/api/v1/websocket/stats")).json()
        assert stats["authFailures"] == 1
        assert stats["disconnections"] == {"unauthorized": 1}


async def test_expired_token_is_refused_with_4001(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config(auth={"leeway_seconds": 0}))
        assert r.daemon.auth is not None
        old = r.daemon.auth.mint(role="viewer", sub="late", ttl_seconds=1)
        r.daemon.auth.clock = lambda: FAKE_WALL_ORIGIN * 2  # far in the future
        try:
            async with ws_connect(r.ws_url, token=old, established=False) as ws:
                assert await ws.close_code() == 4001
        finally:
            r.daemon.auth.clock = r.daemon.wall_clock


async def test_no_auth_within_timeout_closes_4001(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config]) -> None:
    fake_time(autojump_clock, nursery)
    with trio.fail_after(120):
        r = await daemons(make_config(websocket={"auth_timeout_seconds": 10}),
                               wall_clock=fake_wall_clock())
        async with ws_connect(r.ws_url, established=False) as ws:
            opened = trio.current_time()
            assert await ws.close_code() == 4001
            assert trio.current_time() - opened == pytest.approx(10.0, abs=1e-6)
            assert ws.conn.closed is not None
            assert "no authentication within 10 s" in (ws.conn.closed.reason or "")


async def test_agent_tokens_are_refused_4003(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        async with ws_connect(r.ws_url, token=r.token("agent", "robot-1"), established=False) as ws:
            assert await ws.close_code() == 4003


async def test_unknown_path_is_rejected_404(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        with pytest.raises(ConnectionRejected) as info:
            async with ws_connect(r.ws_url, path="/nope", token=r.token("viewer")):
                pass
        assert info.value.status_code == 404
        assert json.loads(info.value.body or b"")["error"] == "not_found"


# -- origin, size, limits --------------------------------------------------------------------


async def test_origin_not_allowed_closes_1008(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config(
            websocket={"allowed_origins": ["https://dash.example.com"]}))
        token = r.token("viewer", "v")
        async with ws_connect(r.ws_url, token=token, origin="https://evil.example",
                              established=False) as ws:
            assert await ws.close_code() == 1008
        async with ws_connect(r.ws_url, token=token, origin="https://DASH.example.com/") as ws:
            assert ws.established["userId"] == "v"
        # Not a browser (no Origin header): the check does not apply.
        async with ws_connect(r.ws_url, token=token) as ws:
            assert ws.established["userId"] == "v"


async def test_message_over_the_limit_closes_1009(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config(websocket={"max_message_bytes": 1024}))
        async with ws_connect(r.ws_url, token=r.token("viewer")) as ws:
            await ws.send(action="ping", pad="x" * 900)  # under the limit: fine
            await ws.expect("PONG")
            await ws.send(action="ping", pad="x" * 2000)
            assert await ws.close_code() == 1009
        stats = (await r.request("GET", "/api/v1/websocket/stats")).json()
        assert stats["disconnections"] == {"message_too_big": 1}


async def test_per_user_connection_limit_4029(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config(websocket={"max_connections_per_user": 2}))
        token = r.token("viewer", "alice")
        async with ws_connect(r.ws_url, token=token), ws_connect(r.ws_url, token=token):
            async with ws_connect(r.ws_url, token=token, established=False) as third:
                assert await third.close_code() == 4029
                assert third.conn.closed is not None
                assert "limit 2" in (third.conn.closed.reason or "")
            # Another user is not affected.
            async with ws_connect(r.ws_url, token=r.token("viewer", "bob")) as ws:
                assert ws.established["userId"] == "bob"
        # Once they are closed, alice may connect again.
        async with ws_connect(r.ws_url, token=token) as ws:
            assert ws.established["userId"] == "alice"


# -- actions ---------------------------------------------------------------------------------


async def test_ping_and_bad_actions_keep_the_connection_open(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        async with ws_connect(r.ws_url, token=r.token("viewer", "v")) as ws:
            await ws.send(action="ping")
            pong = await ws.expect("PONG")
            assert pong["topic"] is None and pong["seq"] is None
            assert pong["data"]["serverTime"].endswith("Z")
            bad: list[tuple[str | bytes, str]] = [
                ("{oops", "invalid_json"),
                ("[1, 2]", "invalid_message"),
                ('{"topic": "x"}', "invalid_message"),
                ('{"action": "dance"}', "unknown_action"),
                ('{"action": "subscribe"}', "invalid_topic"),
                ('{"action": "subscribe", "topic": "Bad Topic"}', "invalid_topic"),
                ('{"action": "subscribe", "topic": "client_status", "since": -1}', "invalid_field"),
                ('{"action": "subscribe", "topic": "client_status", "since": "5"}', "invalid_field"),
                ('{"action": "unsubscribe", "topic": 7}', "invalid_topic"),
                ('{"action": "publish", "topic": "task.1", "type": "lower"}', "invalid_field"),
                ('{"action": "refresh"}', "invalid_field"),
                ('{"action": "auth", "token": "x"}', "already_authenticated"),
                ('{"action": "ping", "n": NaN}', "invalid_json"),
                (b"\x00\x01binary", "invalid_message"),
            ]
            for raw, code in bad:
                await ws.send_raw(raw)
                err = await ws.expect("ERROR")
                assert err["data"]["code"] == code, (raw, err)
                assert err["data"]["message"]
            await ws.send(action="ping")
            await ws.expect("PONG")
            sub = await ws.subscribe("client_status")
            assert sub["data"] == {"topic": "client_status", "seq": 0, "recovered": False}
            await ws.send(action="unsubscribe", topic="client_status")
            unsub = await ws.expect("UNSUBSCRIBED")
            assert unsub["data"] == {"topic": "client_status"}
        stats = (await r.request("GET", "/api/v1/websocket/stats")).json()
        assert stats["errors"] == len(bad)
        assert stats["messagesReceived"] == len(bad) + 4


async def test_forbidden_topics_get_error_and_the_connection_stays(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        async with ws_connect(r.ws_url, token=r.token("viewer", "v")) as viewer:
            for topic in ("client_status", "heartbeat", "servers", "notifications", "system"):
                await viewer.send(action="subscribe", topic=topic)
                await viewer.expect("SUBSCRIBED", skip=("SERVER_LIST",))
            for topic in ("stats", "task.42"):
                await viewer.send(action="subscribe", topic=topic)
                err = await viewer.expect("ERROR", skip=("SERVER_LIST",))
                assert err["data"]["code"] == "forbidden" and err["data"]["topic"] == topic
            await viewer.send(action="publish", topic="task.42", type="TASK_UPDATE", data={})
            assert (await viewer.expect("ERROR"))["data"]["code"] == "forbidden"
            await viewer.send(action="ping")
            await viewer.expect("PONG")
        # A topics claim opens matching app topics (and only those).
        token = r.token("viewer", "w", topics=["task.*"])
        async with ws_connect(r.ws_url, token=token) as ws:
            await ws.subscribe("task.42")
            await ws.send(action="subscribe", topic="build.1")
            assert (await ws.expect("ERROR"))["data"]["code"] == "forbidden"
        # Admins may subscribe to anything, stats included.
        async with ws_connect(r.ws_url, token=r.token("admin", "root")) as ws:
            await ws.subscribe("stats")
            assert (await ws.expect("STATS_UPDATE"))["data"]["activeConnections"] == 1
            await ws.subscribe("anything.at.all")


async def test_publish_from_a_websocket_needs_the_publish_claim(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        token = r.token("service", "runner", topics=["task.*"], publish=["task.*"])
        async with ws_connect(r.ws_url, token=token) as ws:
            await ws.subscribe("task.7")
            await ws.send(action="publish", topic="task.7", type="TASK_UPDATE",
                          data={"taskId": 7, "progress": 50})
            # The publisher is a subscriber too: both arrive, in this order.
            ev = await ws.expect("TASK_UPDATE")
            assert ev["topic"] == "task.7" and ev["seq"] == 1
            assert ev["data"] == {"taskId": 7, "progress": 50}
            ack = await ws.expect("PUBLISHED")
            assert ack["data"] == {"topic": "task.7", "seq": 1, "delivered": 1}
            # rpad's own topics take no outside messages, whatever the claim.
            for topic in ("client_status", "heartbeat", "servers", "stats", "other.1"):
                await ws.send(action="publish", topic=topic, type="FAKE", data={})
                assert (await ws.expect("ERROR"))["data"]["code"] == "forbidden"


# -- time-based closes (fake clock) ----------------------------------------------------------


async def test_token_expiry_closes_4009_unless_refreshed(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config]) -> None:
    fake_time(autojump_clock, nursery)
    with trio.fail_after(600):
        r = await daemons(make_config(auth={"leeway_seconds": 0}),
                               wall_clock=fake_wall_clock())
        wall = fake_wall_clock()
        short = r.token("viewer", "ann", ttl=60)
        exp = int(wall()) + 60
        async with ws_connect(r.ws_url, token=short) as ws:
            assert await ws.close_code() == 4009
            assert wall() == pytest.approx(exp, abs=1e-6)

        # Refreshed in time: the connection outlives the first token, then the new one expires.
        async with ws_connect(r.ws_url, token=r.token("viewer", "ann", ttl=60)) as ws:
            first_exp = int(wall()) + 60
            await trio.sleep(30)
            await ws.send(action="refresh", token="not-a-token")
            assert (await ws.expect("ERROR"))["data"]["code"] == "invalid_token"
            await ws.send(action="refresh", token=r.token("viewer", "someone-else", ttl=3600))
            assert (await ws.expect("ERROR"))["data"]["code"] == "forbidden"
            await ws.send(action="refresh", token=r.token("viewer", "ann", ttl=120))
            second_exp = int(wall()) + 120
            done = await ws.expect("TOKEN_REFRESHED")
            assert done["data"] == {"userId": "ann", "expiresAt": iso(second_exp)}
            await trio.sleep_until(first_exp - FAKE_WALL_ORIGIN + 10)
            await ws.send(action="ping")
            await ws.expect("PONG")
            assert await ws.close_code() == 4009
            assert wall() == pytest.approx(second_exp, abs=1e-6)
        stats = (await r.request("GET", "/api/v1/websocket/stats")).json()
        assert stats["disconnections"] == {"token_expired": 2}


async def test_keepalive_pings_and_4408_without_pong(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config]) -> None:
    """Pings every 30 s; a connection whose pings stay unanswered for 60 s is closed with
    4408 (at 30 + 60 s); one that answers stays. lastPing/lastPong/isAlive follow."""
    fake_time(autojump_clock, nursery)
    with trio.fail_after(600):
        cfg = make_config(websocket={"ping_interval_seconds": 30, "pong_timeout_seconds": 60})
        r = await daemons(cfg, wall_clock=fake_wall_clock())
        async with ws_connect(r.ws_url, token=r.token("viewer", "healthy")) as healthy, \
                ws_connect_stalled(r.ws_url, token=r.token("viewer", "stalled")) as stalled:
            t0 = trio.current_time()
            await trio.sleep(45)
            conns = {c["userId"]: c for c in
                     (await r.request("GET", "/api/v1/websocket/connections")).json()["connections"]}
            assert conns["healthy"]["isAlive"] is True
            assert conns["healthy"]["lastPing"] == iso(FAKE_WALL_ORIGIN + t0 + 30)
            assert conns["healthy"]["lastPong"] == iso(FAKE_WALL_ORIGIN + t0 + 30)
            assert conns["healthy"]["rttMs"] is not None
            assert conns["stalled"]["isAlive"] is False
            assert conns["stalled"]["lastPing"] == iso(FAKE_WALL_ORIGIN + t0 + 30)
            assert conns["stalled"]["lastPong"] is None

            await trio.sleep_until(t0 + 89.5)
            users = (await r.request("GET", "/api/v1/websocket/online-users")).json()["users"]
            assert {u["userId"] for u in users} == {"healthy", "stalled"}
            await trio.sleep_until(t0 + 90.5)
            messages, code = await stalled.messages_until_closed()
            assert [m["type"] for m in messages] == ["CONNECTION_ESTABLISHED"]
            assert code == 4408
            stats = (await r.request("GET", "/api/v1/websocket/stats")).json()
            assert stats["disconnections"] == {"keepalive_timeout": 1}
            await trio.sleep(300)
            await healthy.send(action="ping")
            await healthy.expect("PONG")
            conn = (await r.request(
                "GET", "/api/v1/websocket/users/healthy/connections")).json()["connections"][0]
            assert conn["isAlive"] is True
            assert conn["lastPong"] == iso(FAKE_WALL_ORIGIN + t0 + 390)


async def test_shutdown_closes_connections_with_1001(
        make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            r = await start_daemon(nursery, make_config())
            async with ws_connect(r.ws_url, token=r.token("viewer", "v")) as ws:
                await ws.subscribe("client_status")
                await r.http.aclose()
                r.daemon.stop()
                assert await ws.close_code() == 1001
                assert ws.conn.closed is not None
        # The daemon has stopped (the nursery exited) and the hub says why it closed.
        assert r.daemon.hub is not None
        assert r.daemon.hub.counters.disconnections["going_away"] == 1


async def test_connection_closed_cleanly_by_the_client_is_counted(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        async with ws_connect(r.ws_url, token=r.token("viewer", "v")) as ws:
            await ws.subscribe("heartbeat")
        with pytest.raises(ConnectionClosed):
            await ws.conn.send_message("{}")
        for _ in range(100):
            stats = (await r.request("GET", "/api/v1/websocket/stats")).json()
            if stats["activeConnections"] == 0:
                break
            await trio.sleep(0.01)
        assert stats["activeConnections"] == 0
        assert stats["disconnections"] == {"client_closed": 1}
        assert stats["subscribersPerTopic"] == {}


async def test_system_cannot_be_left(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        async with ws_connect(r.ws_url, token=r.token("viewer", "v")) as ws:
            await ws.send(action="unsubscribe", topic="system")
            assert (await ws.expect("ERROR"))["data"]["code"] == "not_allowed"
            await r.request("POST", "/api/v1/websocket/broadcast", json={"data": "still here"})
            assert (await ws.expect("SYSTEM_MESSAGE"))["data"] == "still here"


async def test_lone_surrogates_are_refused_and_never_reach_the_sockets(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    """JSON allows "\\ud800" (a lone UTF-16 surrogate), which UTF-8 cannot carry. A client
    message holding one is refused like an HTTP body; and should such a string reach a publish
    from inside rpad, it goes out escaped rather than failing every subscriber's socket write."""
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        async with ws_connect(r.ws_url, token=r.token("admin", "a")) as a, \
                ws_connect(r.ws_url, token=r.token("admin", "b")) as b:
            for ws in (a, b):
                await ws.subscribe("t.1")
            await a.send_raw('{"action": "publish", "topic": "t.1", "type": "X", '
                             '"data": {"text": "caf\\u00e9 \\ud800"}}')
            err = await a.expect("ERROR")
            assert err["data"]["code"] == "invalid_json"
            assert "surrogate" in err["data"]["message"]
            await r.daemon.feeds.publish("t.1", "X", {"text": "caf\u00e9 \ud800"})
            for ws in (a, b):
                msg = await ws.expect("X")
                assert msg["data"]["text"] == "caf\u00e9 \ud800"
                await ws.send(action="ping")
                await ws.expect("PONG")
        stats = (await r.request("GET", "/api/v1/websocket/stats")).json()
        assert stats["internalErrors"] == 0


async def test_reload_applies_hub_limits_and_keeps_connections(
        daemons: StartDaemon, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        path = tmp_path / "rpad.toml"
        base = (f'state_dir = "{tmp_path / "state"}"\n'
                '[http]\nlisten = "127.0.0.1:0"\n'
                '[websocket]\nlisten = "127.0.0.1:0"\n')
        path.write_text(base + "max_connections_per_user = 5\n")
        r = await daemons(config_mod.load(path), config_path=str(path))
        token = r.token("viewer", "alice")
        async with ws_connect(r.ws_url, token=token) as one, ws_connect(r.ws_url, token=token):
            path.write_text(base + "max_connections_per_user = 2\nping_interval_seconds = 7\n")
            assert await r.daemon.reload()
            async with ws_connect(r.ws_url, token=token, established=False) as third:
                assert await third.close_code() == 4029
            await one.send(action="ping")
            await one.expect("PONG")  # the open ones stay
            async with ws_connect(r.ws_url, token=r.token("viewer", "bob")) as bob:
                assert bob.established["pingIntervalSeconds"] == 7.0


async def test_failed_authentications_are_throttled_with_the_http_api(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config(auth={"max_failures_per_minute": 3}))
        for _ in range(3):
            async with ws_connect(r.ws_url, token="not-a-jwt", established=False) as ws:
                assert await ws.close_code() == 4001
        # Over the limit: even a good token is refused for a while, here and over HTTP.
        async with ws_connect(r.ws_url, token=r.token("viewer", "v"), established=False) as ws:
            assert await ws.close_code() == 4001
            assert ws.conn.closed is not None
            assert "too many failed authentications" in (ws.conn.closed.reason or "")
        resp = await r.request("GET", "/api/v1/websocket/stats")
        assert resp.status_code == 429
