"""The alerts' admin API (silences, policy overrides, deliveries, test alerts) against the real
daemon, with a real HTTP receiver on loopback; and a restart of the daemon with alerts queued.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from rpad.config import Config
from rpad.core.times import iso, parse_iso

from .test_alerts import HttpReceiver, daemon_running, free_port, until
from .wsclient import ws_connect

TIMEOUT_SECONDS = 30


def later(rpad: Any, seconds: float) -> str:
    iso_text = iso(rpad.daemon.wall_clock() + seconds)
    assert iso_text is not None
    return iso_text


def fields(resp: Any) -> dict[str, str]:
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["error"] == "validation_failed"
    return {d["field"]: d["message"] for d in body["details"]}


async def test_silences_are_created_listed_and_deleted_and_bad_ones_named(
        make_config: Callable[..., Config]) -> None:
    cfg = make_config(alerts={"maintenance": [{
        "name": "backup", "days": ["sun"], "start": "02:30", "duration_minutes": 60,
        "timezone": "Europe/Berlin", "tags": ["db"]}]})
    with trio.fail_after(TIMEOUT_SECONDS):
        async with daemon_running(cfg) as rpad:
            body = {"match": {"clientIds": ["robot-7"], "tags": ["line-2"]},
                    "endsAt": later(rpad, 3600), "comment": "replacing the gripper"}
            r = await rpad.request("POST", "/api/v1/silences", json=body)
            assert r.status_code == 201, r.text
            s = r.json()
            assert s["match"] == {"clientIds": ["robot-7"], "tags": ["line-2"]}
            assert (s["createdBy"], s["active"], s["kind"]) == ("tester", True, "silence")
            r = await rpad.request("GET", "/api/v1/silences", role="viewer")
            listed = r.json()["silences"]
            assert [x["id"] for x in listed] == [s["id"], "maintenance:backup"]
            assert listed[1]["kind"] == "maintenance" and listed[1]["match"]["tags"] == ["db"]
            # Only admins make or end silences.
            assert (await rpad.request("POST", "/api/v1/silences", json=body,
                                       role="viewer")).status_code == 403
            assert (await rpad.request("DELETE", f"/api/v1/silences/{s['id']}",
                                       role="service")).status_code == 403
            r = await rpad.request("DELETE", f"/api/v1/silences/{s['id']}")
            assert r.status_code == 200 and r.json()["deleted"] is True
            assert (await rpad.request("DELETE", f"/api/v1/silences/{s['id']}")).status_code == 404

            # Bad silences: 422 naming the field.
            bad = fields(await rpad.request("POST", "/api/v1/silences", json={
                **body, "startsAt": later(rpad, 7200), "endsAt": later(rpad, 3600)}))
            assert bad == {"endsAt": "must be after startsAt"}
            bad = fields(await rpad.request("POST", "/api/v1/silences", json={
                **body, "match": {"tags": ["line-*", 7]}}))
            assert set(bad) == {"match.tags[0]", "match.tags[1]"}
            assert "wildcards" in bad["match.tags[0]"]
            bad = fields(await rpad.request("POST", "/api/v1/silences", json={
                "match": {}, "endsAt": "soon", "comment": ""}))
            assert set(bad) == {"match", "endsAt", "comment"}
            r = await rpad.request("POST", "/api/v1/silences", content=b"[1]")
            assert r.status_code == 400


async def test_a_silenced_client_alerts_when_the_silence_ends_and_its_events_say_so(
        make_config: Callable[..., Config]) -> None:
    receiver = HttpReceiver()
    with trio.fail_after(TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve)
            cfg = make_config(presence={"min_interval_seconds": 0},
                              alerts={"webhooks": [{"url": receiver.url, "name": "ops"}]})
            async with daemon_running(cfg) as rpad:
                assert rpad.ws_url is not None
                await rpad.heartbeat("robot-7", name="Gripper")
                ends = later(rpad, 2.0)
                r = await rpad.request("POST", "/api/v1/silences", json={
                    "match": {"clientIds": ["robot-7"]}, "endsAt": ends,
                    "comment": "gripper swap"})
                assert r.status_code == 201
                async with ws_connect(rpad.ws_url, token=rpad.token("viewer", "dash")) as ws:
                    await ws.subscribe("client_status")
                    await ws.subscribe("notifications")
                    await rpad.heartbeat("robot-7", status="offline")
                    down = await ws.expect("CLIENT_DISCONNECTED",
                                           skip=("HEARTBEAT_RECEIVED",))
                    # Dashboards see the transition at once, marked silenced until when.
                    assert (down["data"]["silenced"], down["data"]["silencedUntil"]) == (
                        True, r.json()["endsAt"])
                    # No alert while silenced; when the silence ends and it is still down,
                    # its alert (and its notification).
                    reqs = await receiver.wait_for(1)
                    note = await ws.expect("NOTIFICATION", skip=("HEARTBEAT_RECEIVED",))
                assert reqs[0].json()["event"] == "client.offline"
                sent = parse_iso(reqs[0].json()["at"])
                assert sent >= parse_iso(ends)
                assert note["data"]["clientId"] == "robot-7"
                assert "Gripper went offline" in note["data"]["message"]
            nursery.cancel_scope.cancel()


async def test_policy_overrides_by_tag_and_client(make_config: Callable[..., Config]) -> None:
    cfg = make_config(alerts={"policy": {"alert_after_seconds": 120,
                                         "tags": {"lab": {"alert_after_seconds": 3600}}}})
    with trio.fail_after(TIMEOUT_SECONDS):
        async with daemon_running(cfg) as rpad:
            r = await rpad.request("PUT", "/api/v1/alerts/policies/tags/lab",
                                   json={"repeatEverySeconds": 600, "maxReminders": 2})
            assert r.status_code == 200, r.text
            assert r.json()["policy"] == {"config": {"alertAfterSeconds": 3600.0},
                                          "api": {"repeatEverySeconds": 600.0,
                                                  "maxReminders": 2}}
            r = await rpad.request("PUT", "/api/v1/alerts/policies/clients/robot-7",
                                   json={"alertAfterSeconds": 0, "offlineLevel": "urgent"})
            assert r.status_code == 200
            got = (await rpad.request("GET", "/api/v1/alerts/policies", role="viewer")).json()
            assert got["default"]["alertAfterSeconds"] == 120.0
            assert got["grouping"] == {"groupWindowSeconds": 60.0, "groupThreshold": 3}
            assert set(got["tags"]) == {"lab"} and set(got["clients"]) == {"robot-7"}
            alerts = rpad.daemon.alerts
            assert alerts is not None
            p = alerts.policy.policy_for("robot-7", ["lab"])
            assert (p.alert_after_seconds, p.offline_level, p.repeat_every_seconds) == (
                0.0, "urgent", 600.0)
            # Bad policies: 422 naming the field.
            bad = fields(await rpad.request("PUT", "/api/v1/alerts/policies/tags/lab",
                                            json={"alertAfterSeconds": -5}))
            assert set(bad) == {"alertAfterSeconds"}
            bad = fields(await rpad.request("PUT", "/api/v1/alerts/policies/tags/lab",
                                            json={"offlineLevel": "panic", "snooze": 1}))
            assert set(bad) == {"offlineLevel", "snooze"}
            bad = fields(await rpad.request("PUT", "/api/v1/alerts/policies/clients/a%20b",
                                            json={"maxReminders": 1}))
            assert set(bad) == {"clientId"}
            assert (await rpad.request("PUT", "/api/v1/alerts/policies/tags/lab", role="viewer",
                                       json={"maxReminders": 1})).status_code == 403
            r = await rpad.request("DELETE", "/api/v1/alerts/policies/tags/lab")
            assert r.status_code == 200
            assert (await rpad.request("DELETE", "/api/v1/alerts/policies/tags/lab")
                    ).status_code == 404
            assert alerts.policy.policy_for("x", ["lab"]).repeat_every_seconds == 0.0


async def test_test_alerts_go_only_to_configured_targets_and_are_logged(
        make_config: Callable[..., Config]) -> None:
    receiver = HttpReceiver()
    with trio.fail_after(TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve)
            cfg = make_config(alerts={"webhooks": [{"url": receiver.url, "name": "ops",
                                                    "events": ["client.online"]}]})
            async with daemon_running(cfg) as rpad:
                r = await rpad.request("POST", "/api/v1/alerts/test", json={"target": "ops"})
                assert r.status_code == 202, r.text
                reqs = await receiver.wait_for(1)
                assert reqs[0].json()["event"] == "test"  # whatever its event filter
                assert reqs[0].headers["x-rpad-delivery"] == r.json()["deliveryId"]
                # A request names a configured target; it never brings an address.
                bad = fields(await rpad.request("POST", "/api/v1/alerts/test",
                                                json={"target": "http://169.254.169.254/"}))
                assert bad == {"target": "must be a target's name: 1 to 64 characters of "
                                         "A-Z a-z 0-9 . _ -"}
                r = await rpad.request("POST", "/api/v1/alerts/test", json={"target": "pager"})
                assert (r.status_code, r.json()["error"]) == (404, "unknown_target")
                assert "no alert target of this name is configured (ops)" in r.json()["message"]
                bad = fields(await rpad.request("POST", "/api/v1/alerts/test", json={
                    "target": "ops", "url": "http://127.0.0.1:1/"}))
                assert set(bad) == {"url"}
                assert (await rpad.request("POST", "/api/v1/alerts/test", role="service",
                                           json={"target": "ops"})).status_code == 403
                await until(lambda: rpad.daemon.alerts.delivered == 1)  # type: ignore[union-attr]
                r = await rpad.request("GET", "/api/v1/alerts/deliveries?target=ops")
                body = r.json()
                assert [(t["target"], t["delivered"]) for t in body["targets"]] == [("ops", 1)]
                assert [(x["event"], x["outcome"], x["attempts"]) for x in body["log"]] == [
                    ("test", "delivered", 1)]
                assert (await rpad.request("GET", "/api/v1/alerts/deliveries",
                                           role="viewer")).status_code == 403
                # Any name: a target removed on reload keeps its log; this one has none.
                r = await rpad.request("GET", "/api/v1/alerts/deliveries?target=nope")
                assert (r.status_code, r.json()) == (200, {"targets": [], "pending": [],
                                                           "log": []})
                assert len(receiver.requests) == 1
            nursery.cancel_scope.cancel()


async def test_a_second_test_alert_waits_for_the_first(make_config: Callable[..., Config]) -> None:
    """409 test_pending while the target's earlier test alert is still queued (here: nothing
    listens on its port, so it waits for its next attempt)."""
    cfg = make_config(alerts={"webhooks": [{"url": f"http://127.0.0.1:{free_port()}/hook",
                                            "name": "ops"}]})
    with trio.fail_after(TIMEOUT_SECONDS):
        async with daemon_running(cfg) as rpad:
            r = await rpad.request("POST", "/api/v1/alerts/test", json={"target": "ops"})
            assert r.status_code == 202, r.text
            queue = rpad.daemon.alerts.outbox.queues["ops"]  # type: ignore[union-attr]
            await until(lambda: [row.attempts for row in queue.pending] == [1])
            r = await rpad.request("POST", "/api/v1/alerts/test", json={"target": "ops"})
            assert (r.status_code, r.json()["error"]) == (409, "test_pending")


async def test_daemon_restart_delivers_queued_alerts_once_each(
        make_config: Callable[..., Config]) -> None:
    port = free_port()
    cfg = make_config(presence={"min_interval_seconds": 0},
                      alerts={"policy": {"group_threshold": 0},
                              "webhooks": [{"url": f"http://127.0.0.1:{port}/hook",
                                            "name": "ops"}]})
    with trio.fail_after(TIMEOUT_SECONDS):
        async with daemon_running(cfg) as rpad:
            for i in range(5):
                await rpad.heartbeat(f"r{i}")
                await rpad.heartbeat(f"r{i}", status="offline")
            alerts = rpad.daemon.alerts
            assert alerts is not None
            await until(lambda: alerts.stats()[0]["attempts"] >= 1)
            pending = (await rpad.request("GET", "/api/v1/alerts/deliveries")).json()["pending"]
            ids = {p["deliveryId"] for p in pending}
            assert len(ids) == 5
        # rpad is down; the receiver comes up; rpad starts again.
        receiver = HttpReceiver()
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve, port)
            async with daemon_running(cfg) as rpad:
                reqs = await receiver.wait_for(5)
                alerts = rpad.daemon.alerts
                assert alerts is not None
                await until(lambda: alerts.delivered == 5)
                await trio.sleep(0.5)
                got = [r.json() for r in reqs]
                assert sorted(g["deliveryId"] for g in got) == sorted(ids)  # each once
                assert [g["clientId"] for g in got] == [f"r{i}" for i in range(5)]  # in order
            nursery.cancel_scope.cancel()
