"""Alerts in cluster mode (issue 11 with issue 14's alerts): two or three real daemons sharing
a real redis-server started by the test, and a real HTTP webhook receiver on loopback. One
node at a time (the holder of the alert lease) runs the policy over every node's
transitions and delivers; silences, overrides and test alerts are the cluster's.

The kill -9 hand-over with real ``rpad serve`` processes is in
tests/test_cluster_alert_handover.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from rpad.config import Config
from rpad.core.times import iso
from rpad.service.cluster_alerts import ClusterAlerts

from .conftest import Running
from .redisproc import RedisProcess, redis_server  # noqa: F401 - a fixture
from .test_alerts import HttpReceiver
from .test_cluster import cluster_config  # noqa: F401 - a fixture
from .wsclient import StartDaemon, daemons, ws_connect  # noqa: F401 - a fixture

TIMEOUT_SECONDS = 25
PRESENCE = {"heartbeat_timeout_seconds": 2, "check_interval_seconds": 0.25,
            "startup_grace_seconds": 0, "min_interval_seconds": 0}


def later(node: Running, seconds: float) -> str:
    return iso(node.daemon.wall_clock() + seconds)


def alerting(*nodes: Running) -> list[Running]:
    """The nodes that hold the alert lease now."""
    out = []
    for n in nodes:
        alerts = n.daemon.alerts
        assert isinstance(alerts, ClusterAlerts)
        if alerts.term is not None:
            out.append(n)
    return out


async def one_alerting(*nodes: Running) -> Running:
    """Wait until exactly one node holds the alert lease and runs its term; that node."""
    while True:
        found = alerting(*nodes)
        if len(found) == 1:
            return found[0]
        await trio.sleep(0.05)


async def quiet(receiver: HttpReceiver, seconds: float) -> None:
    """Nothing more reaches the receiver for ``seconds``."""
    n = len(receiver.requests)
    await trio.sleep(seconds)
    assert [r.json()["event"] for r in receiver.requests[n:]] == []


async def start_pair(daemons: StartDaemon, cluster_config: Callable[..., Config],  # noqa: F811
                     receiver: HttpReceiver, **sections: Any) -> tuple[Running, Running]:
    alerts = {"webhooks": [{"url": receiver.url}], **sections.pop("alerts", {})}
    a = await daemons(cluster_config("a", presence=PRESENCE, alerts=alerts, **sections))
    b = await daemons(cluster_config("b", presence=PRESENCE, alerts=alerts, **sections))
    await one_alerting(a, b)
    return a, b


async def test_heartbeats_moving_between_nodes_raise_no_alert_and_an_offline_exactly_one(
        daemons: StartDaemon, cluster_config: Callable[..., Config],  # noqa: F811
        nursery: trio.Nursery) -> None:
    receiver = HttpReceiver()
    await nursery.start(receiver.serve)
    with trio.fail_after(TIMEOUT_SECONDS):
        a, b = await start_pair(daemons, cluster_config, receiver)
        async with ws_connect(a.ws_url, token=a.token("viewer", "dash-a")) as wa, \
                ws_connect(b.ws_url, token=b.token("viewer", "dash-b")) as wb:
            await wa.subscribe("notifications")
            await wb.subscribe("notifications")
            # Beats alternate between the nodes (a round-robin balancer) for three timeouts.
            for i in range(12):
                r = await (a if i % 2 else b).heartbeat("roamer", version="1.0")
                assert r.status_code == 200, r.text
                await trio.sleep(0.5)
            await quiet(receiver, 0.5)
            # An agent's shutdown through a: one offline alert, delivered once for the cluster.
            r = await a.heartbeat("roamer", status="offline")
            assert r.status_code == 200, r.text
            got = await receiver.wait_for(1)
            assert got[0].json()["event"] == "client.offline"
            assert got[0].json()["clientId"] == "roamer"
            # One NOTIFICATION on each node's dashboards (one publish, seen cluster-wide).
            for ws in (wa, wb):
                msg = await ws.expect("NOTIFICATION")
                assert msg["data"]["event"] == "client.offline"
            # Back through b, then silent past the timeout: the sweep's offline is one alert too.
            assert (await b.heartbeat("roamer")).status_code == 200
            got = await receiver.wait_for(3)
            assert [r.json()["event"] for r in got] == ["client.offline", "client.online",
                                                         "client.offline"]
            assert got[2].json()["reason"] == "timeout"
            await quiet(receiver, 3.0)
            assert len({r.json()["deliveryId"] for r in got}) == 3
            # Every node's API tells the same deliveries.
            answers = []
            for node in (a, b):
                r = await node.request("GET", "/api/v1/alerts/deliveries", role="admin")
                assert r.status_code == 200, r.text
                body = r.json()
                answers.append(([(t["target"], t["delivered"], t["queued"])
                                 for t in body["targets"]],
                                [e["deliveryId"] for e in body["log"]]))
            assert answers[0] == answers[1]
            assert answers[0][0][0][1:] == (3, 0)
            assert sorted(answers[0][1]) == sorted(r.json()["deliveryId"] for r in got)


async def test_a_silence_set_on_one_node_holds_on_the_alerting_node(
        daemons: StartDaemon, cluster_config: Callable[..., Config],  # noqa: F811
        nursery: trio.Nursery) -> None:
    receiver = HttpReceiver()
    await nursery.start(receiver.serve)
    with trio.fail_after(TIMEOUT_SECONDS):
        a, b = await start_pair(daemons, cluster_config, receiver)
        holder = await one_alerting(a, b)
        other = b if holder is a else a
        r = await other.request("POST", "/api/v1/silences", role="admin",
                                json={"match": {"clientIds": ["quiet-1"]}, "endsAt": later(other, 600),
                                      "comment": "maintenance"})
        assert r.status_code == 201, r.text
        silence_id = r.json()["id"]
        # Every node lists it.
        for node in (a, b):
            r = await node.request("GET", "/api/v1/silences", role="viewer")
            assert [s["id"] for s in r.json()["silences"]] == [silence_id]
        # And an override set on the other node, on every node's policies.
        r = await other.request("PUT", "/api/v1/alerts/policies/clients/slow-1", role="admin",
                                json={"alertAfterSeconds": 600})
        assert r.status_code == 200, r.text
        for node in (a, b):
            r = await node.request("GET", "/api/v1/alerts/policies", role="viewer")
            assert r.json()["clients"]["slow-1"]["api"] == {"alertAfterSeconds": 600.0}
        for cid in ("quiet-1", "slow-1", "loud-1"):
            assert (await holder.heartbeat(cid)).status_code == 200
        await trio.sleep(0.3)
        for cid in ("quiet-1", "slow-1", "loud-1"):
            assert (await other.heartbeat(cid, status="offline")).status_code == 200
        got = await receiver.wait_for(1)
        assert got[0].json()["clientId"] == "loud-1"
        await quiet(receiver, 2.0)
        # The silence ends through the alerting node: the deferred alert goes out then.
        r = await holder.request("DELETE", f"/api/v1/silences/{silence_id}", role="admin")
        assert r.status_code == 200, r.text
        got = await receiver.wait_for(2)
        assert got[1].json()["clientId"] == "quiet-1"
        for node in (a, b):
            r = await node.request("GET", "/api/v1/silences", role="viewer")
            assert r.json()["silences"] == []


async def test_a_test_alert_through_any_node_is_delivered_once(
        daemons: StartDaemon, cluster_config: Callable[..., Config],  # noqa: F811
        nursery: trio.Nursery) -> None:
    receiver = HttpReceiver()
    await nursery.start(receiver.serve)
    with trio.fail_after(TIMEOUT_SECONDS):
        a, b = await start_pair(daemons, cluster_config, receiver)
        holder = await one_alerting(a, b)
        other = b if holder is a else a
        target = (await other.request("GET", "/api/v1/alerts/deliveries")).json()["targets"][0]
        r = await other.request("POST", "/api/v1/alerts/test", json={"target": target["target"]})
        assert r.status_code == 202, r.text
        got = await receiver.wait_for(1)
        assert got[0].json()["kind"] == "test"
        assert got[0].json()["deliveryId"] == r.json()["deliveryId"]
        await quiet(receiver, 1.0)
        # Through the alerting node itself too.
        r = await holder.request("POST", "/api/v1/alerts/test", json={"target": target["target"]})
        assert r.status_code == 202, r.text
        got = await receiver.wait_for(2)
        assert got[1].json()["deliveryId"] == r.json()["deliveryId"]
        await quiet(receiver, 1.0)


async def test_redis_unreachable_refuses_alert_writes_and_raises_no_false_offline_after(
        daemons: StartDaemon, cluster_config: Callable[..., Config],  # noqa: F811
        redis_server: RedisProcess, nursery: trio.Nursery) -> None:  # noqa: F811
    receiver = HttpReceiver()
    await nursery.start(receiver.serve)
    presence = {**PRESENCE, "heartbeat_timeout_seconds": 3, "startup_grace_seconds": 3}
    with trio.fail_after(45):
        alerts = {"webhooks": [{"url": receiver.url}]}
        a = await daemons(cluster_config("a", presence=presence, alerts=alerts))
        b = await daemons(cluster_config("b", presence=presence, alerts=alerts))
        await one_alerting(a, b)
        for cid in ("steady", "dead"):
            assert (await a.heartbeat(cid)).status_code == 200
        await trio.to_thread.run_sync(redis_server.stop)
        for node in (a, b):
            r = await node.request("POST", "/api/v1/silences",
                                   json={"match": {"clientIds": ["x"]},
                                         "endsAt": later(node, 60), "comment": "c"})
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "backend_unavailable"
            assert int(r.headers["Retry-After"]) >= 1
            r = await node.request("PUT", "/api/v1/alerts/policies/tags/x",
                                   json={"alertAfterSeconds": 5})
            assert r.status_code == 503, r.text
            target = next(iter(node.daemon.alerts.outbox.queues))
            r = await node.request("POST", "/api/v1/alerts/test", json={"target": target})
            assert r.status_code == 503, r.text
            # Reads answer from the node's last copy.
            r = await node.request("GET", "/api/v1/silences", role="viewer")
            assert r.status_code == 200, r.text
        await trio.sleep(3.5)  # longer than the heartbeat timeout
        await trio.to_thread.run_sync(redis_server.start)

        async def beat() -> None:
            while True:
                await a.heartbeat("steady")
                await trio.sleep(0.5)

        async with trio.open_nursery() as n:
            n.start_soon(beat)
            got = await receiver.wait_for(1)
            await quiet(receiver, 4.0)
            n.cancel_scope.cancel()
        # Only the client that really stopped: no storm of offline alerts for the outage.
        assert [(r.json()["event"], r.json()["clientId"]) for r in got] == [
            ("client.offline", "dead")]
        r = await b.request("POST", "/api/v1/silences",
                            json={"match": {"clientIds": ["x"]},
                                         "endsAt": later(node, 60), "comment": "c"})
        assert r.status_code == 201, r.text


@pytest.mark.parametrize("n", [3])
async def test_one_alerting_node_at_a_time_and_a_stopped_one_hands_over(
        daemons: StartDaemon, cluster_config: Callable[..., Config],  # noqa: F811
        nursery: trio.Nursery, n: int) -> None:
    receiver = HttpReceiver()
    await nursery.start(receiver.serve)
    with trio.fail_after(TIMEOUT_SECONDS):
        alerts = {"webhooks": [{"url": receiver.url}]}
        nodes = [await daemons(cluster_config(name, presence=PRESENCE, alerts=alerts))
                 for name in "abc"[:n]]
        holder = await one_alerting(*nodes)
        assert (await nodes[0].heartbeat("h-1")).status_code == 200
        await holder.stop()
        rest = [x for x in nodes if x is not holder]
        await one_alerting(*rest)  # given back at stop: no wait for the lease to lapse
        assert (await rest[0].heartbeat("h-1", status="offline")).status_code == 200
        got = await receiver.wait_for(1)
        assert [r.json()["event"] for r in got] == ["client.offline"]
        await quiet(receiver, 1.0)


async def test_a_node_whose_lease_was_taken_delivers_nothing_and_the_next_decides_once(
        daemons: StartDaemon, cluster_config: Callable[..., Config],  # noqa: F811
        nursery: trio.Nursery) -> None:
    receiver = HttpReceiver()
    await nursery.start(receiver.serve)
    with trio.fail_after(TIMEOUT_SECONDS):
        a, b = await start_pair(daemons, cluster_config, receiver)
        holder = await one_alerting(a, b)
        cluster = holder.daemon.cluster
        assert cluster is not None
        assert (await a.heartbeat("fenced-1")).status_code == 200
        await trio.sleep(0.5)
        # Another holder (as if this node had been paused past its lease): the node's next
        # alert write is refused, or its next renewal finds the lease gone.
        lease = cluster.alerts.k.lease
        await cluster.link.call("SET", lease, "intruder|999999")
        assert (await b.heartbeat("fenced-1", status="offline")).status_code == 200
        while alerting(a, b):
            await trio.sleep(0.05)
        await quiet(receiver, 2.0)
        # The intruder goes: a node takes the lease anew and decides that offline, once.
        await cluster.link.call("DEL", lease)
        got = await receiver.wait_for(1)
        assert [(r.json()["event"], r.json()["clientId"]) for r in got] == [
            ("client.offline", "fenced-1")]
        await quiet(receiver, 2.0)
