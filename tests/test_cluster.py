"""Cluster mode in one process: two or three real daemons (``cluster.backend = "redis"``)
sharing a real redis-server started by the test. What one node does, the others see."""

from __future__ import annotations

import json
import time
from datetime import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from rpad import config as config_mod
from rpad.config import Config

from .conftest import Running, config_dict
from .redisproc import RedisProcess, redis_server  # noqa: F401 - a fixture
from .wsclient import StartDaemon, daemons, ws_connect  # noqa: F401 - a fixture

NETWORK_TIMEOUT_SECONDS = 15


@pytest.fixture
def cluster_config(tmp_path: Path, redis_server: RedisProcess) -> Callable[..., Config]:  # noqa: F811
    """``cluster_config("a", presence={...})``: node ``a`` of a cluster on the test's Redis,
    every node with the same JWT secret."""
    secret = tmp_path / "jwt.secret"
    secret.write_text("cluster-test-secret-0123456789abcdef")

    def make(node: str, **sections: Any) -> Config:
        base = {"cluster": {"backend": "redis", "redis_url": redis_server.url, "node_id": node},
                "auth": {"secret_file": str(secret)}}
        return config_mod.from_dict(config_dict(tmp_path / node, **config_mod_merge(base, sections)))

    return make


def config_mod_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


async def check_schema(node: Running, name: str, body: Any) -> None:
    """``body`` is what the OpenAPI document's component ``name`` describes."""
    import jsonschema

    doc = (await node.request("GET", "/api/v1/openapi.json", role=None)).json()
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


async def status(node: Running, client_id: str) -> dict[str, Any]:
    r = await node.request("GET", f"/api/v1/client/heartbeat/status/{client_id}", role="viewer")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_a_heartbeat_on_one_node_is_seen_on_the_others_with_one_transition(
        daemons: StartDaemon, cluster_config: Callable[..., Config]) -> None:  # noqa: F811
    a = await daemons(cluster_config("a"))
    b = await daemons(cluster_config("b"))
    with trio.fail_after(NETWORK_TIMEOUT_SECONDS):
        async with ws_connect(a.ws_url, token=a.token("viewer", "dash-a")) as wa, \
                ws_connect(b.ws_url, token=b.token("viewer", "dash-b")) as wb:
            sa = (await wa.subscribe("client_status"))["data"]
            sb = (await wb.subscribe("client_status"))["data"]
            assert sa["seq"] == sb["seq"]
            r = await a.heartbeat("agent-1", version="1.0")
            assert r.status_code == 200, r.text
            assert (await status(b, "agent-1"))["status"] == "online"
            for ws in (wa, wb):
                msg = await ws.expect("CLIENT_CONNECTED")
                assert msg["data"]["clientId"] == "agent-1"
                assert msg["seq"] == sa["seq"] + 1
            # A status change on b: one CLIENT_STATUS_UPDATE, same seq everywhere.
            await trio.sleep(1.0)  # the minimum interval
            r = await b.heartbeat("agent-1", version="1.1")
            assert r.status_code == 200, r.text
            got = [await ws.expect("CLIENT_STATUS_UPDATE") for ws in (wa, wb)]
            assert got[0]["seq"] == got[1]["seq"] == sa["seq"] + 2
            assert (await status(a, "agent-1"))["version"] == "1.1"
            # The client list is the same from every node.
            lists = []
            for node in (a, b):
                r = await node.request("GET", "/api/v1/clients", role="viewer")
                lists.append([(c["clientId"], c["status"], c["version"])
                              for c in r.json()["clients"]])
            assert lists[0] == lists[1] == [("agent-1", "online", "1.1")]


async def test_since_resume_on_another_node_gets_exactly_what_was_missed(
        daemons: StartDaemon, cluster_config: Callable[..., Config]) -> None:  # noqa: F811
    a = await daemons(cluster_config("a"))
    b = await daemons(cluster_config("b"))
    with trio.fail_after(NETWORK_TIMEOUT_SECONDS):
        async with ws_connect(a.ws_url, token=a.token("admin", "dash")) as wa:
            first = (await wa.subscribe("task.7"))["data"]
        seqs = []
        for i in range(5):
            r = await b.request("POST", "/api/v1/publish", role="service",
                                json={"topic": "task.7", "type": "TASK_UPDATE",
                                      "data": {"progress": i}})
            assert r.status_code == 200, r.text
            seqs.append(r.json()["seq"])
        assert seqs == list(range(first["seq"] + 1, first["seq"] + 6))
        async with ws_connect(b.ws_url, token=b.token("admin", "dash")) as wb:
            sub = (await wb.subscribe("task.7", since=first["seq"] + 2))["data"]
            assert sub["recovered"] is True and sub["seq"] == first["seq"] + 5
            got = [await wb.expect("TASK_UPDATE") for _ in range(3)]
            assert [m["data"]["progress"] for m in got] == [2, 3, 4]
            assert [m["seq"] for m in got] == seqs[2:]
            # Live messages follow without a gap or a repeat.
            await a.request("POST", "/api/v1/publish", role="service",
                            json={"topic": "task.7", "type": "TASK_UPDATE", "data": {"progress": 5}})
            live = await wb.expect("TASK_UPDATE")
            assert live["seq"] == seqs[-1] + 1


async def test_the_sweep_runs_once_for_the_cluster(
        daemons: StartDaemon, cluster_config: Callable[..., Config]) -> None:  # noqa: F811
    presence = {"heartbeat_timeout_seconds": 2, "check_interval_seconds": 0.5,
                "startup_grace_seconds": 0, "min_interval_seconds": 0}
    a = await daemons(cluster_config("a", presence=presence))
    b = await daemons(cluster_config("b", presence=presence))
    with trio.fail_after(NETWORK_TIMEOUT_SECONDS):
        async with ws_connect(a.ws_url, token=a.token("viewer", "d1")) as wa, \
                ws_connect(b.ws_url, token=b.token("viewer", "d2")) as wb:
            await wa.subscribe("client_status")
            await wb.subscribe("client_status")
            for i in range(3):
                assert (await (a if i % 2 else b).heartbeat(f"c{i}")).status_code == 200
            for ws in (wa, wb):
                for _ in range(3):
                    await ws.expect("CLIENT_CONNECTED")
            gone = []
            for ws in (wa, wb):
                gone.append(sorted([(await ws.expect("CLIENT_DISCONNECTED"))["data"]["clientId"]
                                    for _ in range(3)]))
            assert gone == [["c0", "c1", "c2"]] * 2
            # Exactly once: nothing more comes for them.
            with trio.move_on_after(2.0):
                extra = await wa.recv()
                pytest.fail(f"unexpected {json.dumps(extra)}")
            holders = [n.daemon.cluster.presence.lease_token is not None for n in (a, b)
                       if n.daemon.cluster is not None]
            assert holders.count(True) == 1


async def test_users_limits_messages_and_admin_views_span_the_cluster(
        daemons: StartDaemon, cluster_config: Callable[..., Config]) -> None:  # noqa: F811
    ws_cfg = {"max_connections_per_user": 2}
    a = await daemons(cluster_config("a", websocket=ws_cfg))
    b = await daemons(cluster_config("b", websocket=ws_cfg))
    tok = a.token("viewer", "alice")
    with trio.fail_after(NETWORK_TIMEOUT_SECONDS):
        async with ws_connect(a.ws_url, token=tok) as w1, ws_connect(b.ws_url, token=tok) as w2:
            # The third connection of alice is refused, wherever it lands.
            async with ws_connect(a.ws_url, token=tok, established=False) as w3:
                assert await w3.close_code() == 4029
            # Admin views: every node's connections, each saying its node.
            r = await b.request("GET", "/api/v1/websocket/connections")
            body = r.json()
            await check_schema(b, "Connections", body)
            assert sorted((c["userId"], c["node"]) for c in body["connections"]) == [
                ("alice", "a"), ("alice", "b")]
            assert body["nodes"] == ["a", "b"] and body["unreachableNodes"] == []
            r = await a.request("GET", "/api/v1/websocket/online-users")
            await check_schema(a, "OnlineUsers", r.json())
            assert r.json()["users"] == [{"userId": "alice", "connections": 2,
                                          "nodes": {"a": 1, "b": 1}}]
            stats = (await a.request("GET", "/api/v1/websocket/stats")).json()
            await check_schema(a, "HubStats", stats)
            assert stats["activeConnections"] == 2 and sorted(stats["perNode"]) == ["a", "b"]
            ping = (await b.request("POST", "/api/v1/websocket/ping/alice")).json()
            await check_schema(b, "PingResults", ping)
            assert sorted((p["node"], p["ok"]) for p in ping["results"]) == [
                ("a", True), ("b", True)]
            # A notification to alice reaches her connection on each node.
            r = await a.request("POST", "/api/v1/websocket/notify", role="service",
                                json={"title": "hi", "message": "there", "userId": "alice"})
            assert r.status_code == 200 and r.json()["delivered"] == 2
            for ws in (w1, w2):
                assert (await ws.expect("NOTIFICATION"))["data"]["title"] == "hi"
            # Disconnecting alice closes both, and frees her slots cluster-wide.
            r = await b.request("POST", "/api/v1/websocket/users/disconnect",
                                json={"userId": "alice"})
            assert r.json()["disconnected"] == 2
            assert [await w1.close_code(), await w2.close_code()] == [4010, 4010]
        await b.daemon.cluster.broker.renew_connections()  # type: ignore[union-attr]
        await a.daemon.cluster.broker.renew_connections()  # type: ignore[union-attr]
        async with ws_connect(b.ws_url, token=tok) as w4, ws_connect(a.ws_url, token=tok):
            assert w4.established["userId"] == "alice"


async def test_token_revocation_and_brute_force_counters_are_shared(
        daemons: StartDaemon, cluster_config: Callable[..., Config]) -> None:  # noqa: F811
    a = await daemons(cluster_config("a", auth={"max_failures_per_minute": 3}))
    b = await daemons(cluster_config("b", auth={"max_failures_per_minute": 3}))
    with trio.fail_after(NETWORK_TIMEOUT_SECONDS):
        minted = await a.request("POST", "/api/v1/clients/robot-1/tokens", json={})
        agent = minted.json()["token"]
        beat = {"clientId": "robot-1"}
        r = await b.request("POST", "/api/v1/client/heartbeat", token=agent, json=beat)
        assert r.status_code == 200, r.text
        r = await a.request("DELETE", "/api/v1/clients/robot-1/tokens")
        assert r.json()["generation"] == 1
        await trio.sleep(0.2)  # the bus
        r = await b.request("POST", "/api/v1/client/heartbeat", token=agent, json=beat)
        assert r.status_code == 401, r.text
        # Failures from one address on both nodes add up (that refused token was the first; b
        # has seen two, a one): at three, either node refuses the address.
        for node in (a, b):
            r = await node.request("GET", "/api/v1/clients", token="not-a-token")
            assert r.status_code == 401
        await trio.sleep(0.3)
        for node in (a, b):
            r = await node.request("GET", "/api/v1/clients", role="viewer")
            assert r.status_code == 429, r.text
            assert int(r.headers["Retry-After"]) > 0


async def test_while_redis_is_down_writes_get_503_reads_are_stale_and_no_false_offline_after(
        daemons: StartDaemon, cluster_config: Callable[..., Config],
        redis_server: RedisProcess) -> None:  # noqa: F811
    presence = {"heartbeat_timeout_seconds": 3, "check_interval_seconds": 0.5,
                "min_interval_seconds": 0}
    a = await daemons(cluster_config("a", presence=presence))
    b = await daemons(cluster_config("b", presence=presence))
    with trio.fail_after(40):
        async with ws_connect(b.ws_url, token=b.token("viewer", "dash")) as wb:
            await wb.subscribe("client_status")
            for cid in ("steady", "dead"):
                assert (await a.heartbeat(cid)).status_code == 200
            for _ in range(2):
                await wb.expect("CLIENT_CONNECTED")
            await trio.to_thread.run_sync(redis_server.stop)
            r = await a.heartbeat("steady")
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "backend_unavailable"
            assert int(r.headers["Retry-After"]) >= 1
            msg = await wb.expect("SYSTEM_MESSAGE")
            assert msg["data"]["degraded"] is True and msg["data"]["level"] == "warning"
            health = (await b.request("GET", "/api/v1/health", role=None)).json()
            await check_schema(b, "Health", health)
            assert health["cluster"]["stale"] is True and health["cluster"]["redis"] == "unreachable"
            metrics = (await b.request("GET", "/metrics", role="viewer")).text
            assert "rpad_cluster_backend_up 0.0" in metrics
            # Reads: the node's last view.
            assert (await status(b, "steady"))["status"] == "online"
            await trio.sleep(3.5)  # longer than the heartbeat timeout
            await trio.to_thread.run_sync(redis_server.start)
            back_at = time.time()  # the nodes notice it after this
            msg = await wb.expect("SYSTEM_MESSAGE")
            assert msg["data"]["degraded"] is False
            # "steady" beats again within the grace; "dead" never does.
            went_offline: list[str] = []
            offline_at = 0.0
            async with trio.open_nursery() as n:
                async def beat() -> None:
                    while True:
                        r = await a.heartbeat("steady")
                        assert r.status_code in (200, 503), r.text
                        await trio.sleep(0.5)

                n.start_soon(beat)
                while "dead" not in went_offline:
                    m = await wb.recv()
                    if m["type"] == "CLIENT_DISCONNECTED":
                        went_offline.append(m["data"]["clientId"])
                        offline_at = datetime.fromisoformat(
                            m["data"]["offlineSince"].replace("Z", "+00:00")).timestamp()
                n.cancel_scope.cancel()
            assert went_offline == ["dead"]
            # Not before the grace (3 s, the timeout) that began when a node noticed Redis.
            assert offline_at >= back_at + 3.0 - 0.01, offline_at - back_at
            health = (await b.request("GET", "/api/v1/health", role=None)).json()
            assert health["cluster"]["stale"] is False


async def test_redis_without_fsync_on_every_write_is_refused_unless_relaxed(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    from rpad.backend.redis.link import DurabilityRefused
    from rpad.daemon import Daemon

    from .redisproc import start_redis

    loose = start_redis(tmp_path / "loose", appendfsync="everysec")
    try:
        def cfg(durability: str) -> Config:
            return config_mod.from_dict(config_dict(tmp_path / durability, cluster={
                "backend": "redis", "redis_url": loose.url, "node_id": durability,
                "durability": durability}))

        with trio.fail_after(NETWORK_TIMEOUT_SECONDS):
            with pytest.raises(BaseException) as refused:
                await Daemon(cfg("strict")).run()
            exc: BaseException = refused.value
            while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            assert isinstance(exc, DurabilityRefused), repr(exc)
            assert "appendfsync everysec" in str(exc)
            daemon = Daemon(cfg("relaxed"))
            await nursery.start(daemon.run)
            assert daemon.cluster is not None
            health = daemon.cluster.health()["cluster"]
            assert health["durability"] == "relaxed" and health["durable"] is False
            daemon.stop()
    finally:
        loose.close()


async def test_every_acknowledged_heartbeat_survives_kill_9_of_redis(
        tmp_path: Path, redis_server: RedisProcess) -> None:  # noqa: F811
    """Heartbeats from 50 agents at full speed through the grouped path; Redis is killed with
    SIGKILL mid-stream and restarted from its AOF: each agent's last acknowledged heartbeat
    is there (its last_heartbeat_at is at least the acknowledged time)."""
    import time as time_mod

    from rpad.backend.redis.keys import Keys
    from rpad.backend.redis.link import Link, RedisSettings
    from rpad.backend.redis.presence import RedisPresence
    from rpad.config import PresenceConfig
    from rpad.core.errors import BackendUnavailable
    from rpad.core.registry import Registry
    from rpad.core.validation import Heartbeat

    acked: dict[str, float] = {}

    def node() -> tuple[Link, RedisPresence]:
        link = Link(RedisSettings(redis_server.url, None, "n", "rpad"))
        reg = Registry(default_timeout_seconds=60, min_interval_seconds=0, auto_register=True)
        return link, RedisPresence(link, Keys("rpad"), reg, PresenceConfig(), node_id="n",
                                   wall_clock=time_mod.time)

    with trio.fail_after(60):
        link, presence = node()
        async with trio.open_nursery() as n:
            await n.start(link.run)
            await n.start(presence.run)

            async def agent(i: int) -> None:
                cid = f"agent-{i}"
                while True:
                    now = time_mod.time()
                    try:
                        await presence.heartbeats([Heartbeat(cid)], now, "127.0.0.1")
                    except BackendUnavailable:
                        return
                    acked[cid] = now

            async with trio.open_nursery() as agents:
                for i in range(50):
                    agents.start_soon(agent, i)
                await trio.sleep(1.5)
                redis_server.kill()
            n.cancel_scope.cancel()
        assert len(acked) == 50 and presence.beats_sent > 500
        assert presence.groups_sent < presence.beats_sent / 2  # grouped round trips
        await trio.to_thread.run_sync(redis_server.start)
        link, presence = node()
        async with trio.open_nursery() as n:
            await n.start(link.run)
            await n.start(presence.run)
            view = presence.view
            lost = [cid for cid, at in acked.items()
                    if (c := view.get(cid)) is None or c.last_heartbeat_at is None
                    or c.last_heartbeat_at < at]
            assert lost == []
            n.cancel_scope.cancel()


async def test_the_fleet_cap_holds_across_the_cluster(
        daemons: StartDaemon, cluster_config: Callable[..., Config]) -> None:  # noqa: F811
    """presence.max_clients counts the cluster's clients (each node's view of them): with a
    cap of 3, two clients registered through a and one through b fill it for both."""
    cap = {"presence": {"max_clients": 3, "min_interval_seconds": 0}}
    a = await daemons(cluster_config("a", **cap))
    b = await daemons(cluster_config("b", **cap))
    with trio.fail_after(NETWORK_TIMEOUT_SECONDS):
        for node, cid in ((a, "c1"), (a, "c2"), (b, "c3")):
            assert (await node.heartbeat(cid)).status_code == 200
        for node in (a, b):
            while len(node.daemon.presence.view) < 3:  # type: ignore[union-attr]
                await trio.sleep(0.01)
            r = await node.heartbeat("c4")
            assert r.status_code == 409 and r.json()["error"] == "fleet_full", r.text
            r = await node.request("POST", "/api/v1/clients", json={"clientId": "c5"})
            assert r.status_code == 409, r.text
            assert (await node.heartbeat("c1")).status_code == 200  # known ones beat on
        assert (await a.request("DELETE", "/api/v1/clients/c2")).status_code == 200
        while len(b.daemon.presence.view) > 2:  # type: ignore[union-attr]
            await trio.sleep(0.01)
        assert (await b.heartbeat("c4")).status_code == 200
