"""The presence state machine, pure: every transition with exact times, no server, no clock.

Times are plain floats (wall-clock epoch seconds) passed in by the test.
"""

from __future__ import annotations

from typing import Any

import pytest

from rpad.core.registry import (
    CLIENT_CONNECTED,
    CLIENT_DISCONNECTED,
    CLIENT_REMOVED,
    CLIENT_STATUS_UPDATE,
    HEARTBEAT_RECEIVED,
    Client,
    RateLimited,
    Registry,
    UnknownClient,
)
from rpad.core.times import iso
from rpad.core.validation import Heartbeat, Registration

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
TIMEOUT = 60.0


def make_registry(*, auto: bool = True, min_interval: float = 1.0, grace_until: float = 0.0,
                  timeout: float = TIMEOUT) -> Registry:
    return Registry(default_timeout_seconds=timeout, min_interval_seconds=min_interval,
                    auto_register=auto, grace_until=grace_until)


def hb(client_id: str = "a", **fields: Any) -> Heartbeat:
    return Heartbeat(client_id=client_id, **fields)


def types(events: list[Any]) -> list[str]:
    return [e.type for e in events]


# -- heartbeats ------------------------------------------------------------------------------


def test_first_heartbeat_registers_and_goes_online() -> None:
    reg = make_registry()
    out = reg.heartbeat(hb("a", version="1.0.0", ip_address="10.0.0.1"), T0)
    assert out.created is True
    assert out.timeout_seconds == TIMEOUT
    c = out.client
    assert (c.status, c.registered_at, c.last_heartbeat_at, c.online_since, c.offline_since) == (
        "online", T0, T0, T0, None)
    assert c.registered is False
    assert types(out.events) == [CLIENT_CONNECTED, HEARTBEAT_RECEIVED]
    connected, received = out.events
    assert connected.at == T0 and connected.reason == "heartbeat"
    assert connected.data["reason"] == "heartbeat"
    assert connected.data["status"] == "online"
    assert connected.data["onlineSince"] == "2026-01-01T00:00:00.000Z"
    assert received.data == {"clientId": "a", "receivedAt": "2026-01-01T00:00:00.000Z",
                             "reportedStatus": "online", "latestMetrics": None}
    assert reg.online_count == 1 and len(reg) == 1


def test_repeated_heartbeat_only_records_it() -> None:
    reg = make_registry()
    reg.heartbeat(hb("a"), T0)
    out = reg.heartbeat(hb("a"), T0 + 20)
    assert out.created is False
    assert types(out.events) == [HEARTBEAT_RECEIVED]
    assert out.client.last_heartbeat_at == T0 + 20
    assert out.client.online_since == T0
    assert reg.online_count == 1


def test_reported_status_or_version_change_is_a_status_update() -> None:
    reg = make_registry()
    reg.heartbeat(hb("a", version="1"), T0)
    out = reg.heartbeat(hb("a", status="busy", version="1"), T0 + 10)
    assert types(out.events) == [CLIENT_STATUS_UPDATE, HEARTBEAT_RECEIVED]
    assert out.events[0].data["reportedStatus"] == "busy"
    assert "reason" not in out.events[0].data
    out = reg.heartbeat(hb("a", status="busy", version="2"), T0 + 20)
    assert types(out.events) == [CLIENT_STATUS_UPDATE, HEARTBEAT_RECEIVED]
    assert out.events[0].data["version"] == "2"
    # A heartbeat without a version keeps the known one: no change.
    out = reg.heartbeat(hb("a", status="busy"), T0 + 30)
    assert types(out.events) == [HEARTBEAT_RECEIVED]
    assert out.client.version == "2"


def test_offline_status_is_a_clean_shutdown_at_once() -> None:
    reg = make_registry()
    reg.heartbeat(hb("a"), T0)
    out = reg.heartbeat(hb("a", status="offline"), T0 + 5)
    assert types(out.events) == [CLIENT_DISCONNECTED, HEARTBEAT_RECEIVED]
    ev = out.events[0]
    assert (ev.at, ev.reason, ev.data["reason"], ev.data["status"]) == (
        T0 + 5, "agent_shutdown", "agent_shutdown", "offline")
    c = out.client
    assert (c.status, c.reported_status, c.offline_since, c.online_since) == (
        "offline", "offline", T0 + 5, T0)
    assert reg.online_count == 0
    # Saying offline again changes nothing.
    out = reg.heartbeat(hb("a", status="offline"), T0 + 10)
    assert types(out.events) == [HEARTBEAT_RECEIVED]
    assert out.client.offline_since == T0 + 5
    # Coming back: online again, a new onlineSince, offlineSince cleared.
    out = reg.heartbeat(hb("a"), T0 + 100)
    assert types(out.events) == [CLIENT_CONNECTED, HEARTBEAT_RECEIVED]
    assert (out.client.online_since, out.client.offline_since) == (T0 + 100, None)
    assert reg.online_count == 1


def test_first_heartbeat_saying_offline_registers_it_offline() -> None:
    reg = make_registry()
    out = reg.heartbeat(hb("a", status="offline"), T0)
    assert out.created is True
    assert types(out.events) == [CLIENT_DISCONNECTED, HEARTBEAT_RECEIVED]
    assert out.client.status == "offline" and reg.online_count == 0


def test_rate_limit_exact_boundary() -> None:
    reg = make_registry(min_interval=1.0)
    reg.heartbeat(hb("a"), T0)
    with pytest.raises(RateLimited) as info:
        reg.heartbeat(hb("a", version="x"), T0 + 0.25)
    assert info.value.retry_after_seconds == pytest.approx(0.75)
    # The refused heartbeat changed nothing.
    c = reg.get("a")
    assert c is not None and c.last_heartbeat_at == T0 and c.version is None
    # Exactly one interval later it is accepted.
    out = reg.heartbeat(hb("a"), T0 + 1.0)
    assert out.client.last_heartbeat_at == T0 + 1.0


def test_clean_shutdown_is_never_rate_limited() -> None:
    reg = make_registry(min_interval=1.0)
    reg.heartbeat(hb("a"), T0)
    out = reg.heartbeat(hb("a", status="offline"), T0 + 0.001)
    assert out.client.status == "offline"


def test_zero_min_interval_accepts_back_to_back() -> None:
    reg = make_registry(min_interval=0.0)
    reg.heartbeat(hb("a"), T0)
    reg.heartbeat(hb("a"), T0)
    assert reg.get("a").last_heartbeat_at == T0  # type: ignore[union-attr]


def test_clock_skew_is_reported_and_liveness_uses_server_time() -> None:
    reg = make_registry()
    out = reg.heartbeat(hb("a", timestamp=T0 - 3600.5), T0)
    assert out.client.clock_skew_seconds == -3600.5
    assert out.client.last_heartbeat_at == T0  # the agent's clock is never used for liveness
    out = reg.heartbeat(hb("a", timestamp=T0 + 100 + 2.25), T0 + 100)
    assert out.client.clock_skew_seconds == 2.25
    out = reg.heartbeat(hb("a"), T0 + 200)
    assert out.client.clock_skew_seconds is None
    # An agent clock far in the past does not make it time out.
    reg.heartbeat(hb("b", timestamp=0.0), T0)
    assert reg.sweep(T0 + TIMEOUT) == []


def test_ip_address_from_body_else_peer_else_kept() -> None:
    reg = make_registry(min_interval=0)
    assert reg.heartbeat(hb("a"), T0, peer_address="127.0.0.1").client.ip_address == "127.0.0.1"
    out = reg.heartbeat(hb("a", ip_address="192.168.1.100"), T0 + 1, peer_address="127.0.0.1")
    assert out.client.ip_address == "192.168.1.100"
    assert reg.heartbeat(hb("a"), T0 + 2).client.ip_address == "192.168.1.100"


def test_fields_carried_by_heartbeats() -> None:
    reg = make_registry(min_interval=0)
    out = reg.heartbeat(hb("a", os_type="linux", name="robot 1", interval_seconds=10.0,
                           metrics={"cpuUsagePercent": 12.5}, metadata={"site": "x"}), T0)
    c = out.client
    assert (c.os_type, c.name, c.interval_seconds, c.latest_metrics, c.metadata) == (
        "linux", "robot 1", 10.0, {"cpuUsagePercent": 12.5}, {"site": "x"})
    # Absent fields keep what is known.
    c = reg.heartbeat(hb("a"), T0 + 1).client
    assert (c.os_type, c.name, c.interval_seconds, c.latest_metrics, c.metadata) == (
        "linux", "robot 1", 10.0, {"cpuUsagePercent": 12.5}, {"site": "x"})
    assert out.events[-1].data["latestMetrics"] == {"cpuUsagePercent": 12.5}


def test_heartbeat_name_never_overrides_a_registered_name() -> None:
    reg = make_registry(min_interval=0)
    reg.register(Registration("a", name="Registered"), T0)
    assert reg.heartbeat(hb("a", name="agent says"), T0).client.name == "Registered"
    reg.register(Registration("b"), T0)
    assert reg.heartbeat(hb("b", name="agent says"), T0).client.name == "agent says"


def test_manual_registration_refuses_unknown_ids() -> None:
    reg = make_registry(auto=False)
    with pytest.raises(UnknownClient):
        reg.heartbeat(hb("a"), T0)
    assert len(reg) == 0
    client, _events, created = reg.register(Registration("a"), T0)
    assert created and client.status == "unknown" and client.registered
    out = reg.heartbeat(hb("a"), T0 + 1)
    assert out.created is False
    assert types(out.events) == [CLIENT_CONNECTED, HEARTBEAT_RECEIVED]
    assert out.client.registered_at == T0


# -- registration and removal ----------------------------------------------------------------


def test_register_and_update() -> None:
    reg = make_registry()
    client, events, created = reg.register(
        Registration("a", name="A", tags=["x", "y"], heartbeat_timeout_seconds=120.0,
                     metadata={"k": 1}), T0)
    assert created is True
    assert types(events) == [CLIENT_STATUS_UPDATE]
    assert events[0].reason == "registered"
    view = events[0].data
    assert view["status"] == "unknown" and view["registeredAt"] == iso(T0)
    assert view["heartbeatTimeoutSeconds"] == 120.0 and view["tags"] == ["x", "y"]
    client, events, created = reg.register(Registration("a", tags=["z"]), T0 + 10)
    assert created is False and events[0].reason is None
    assert (client.name, client.tags, client.timeout_seconds, client.metadata) == (
        "A", ["z"], 120.0, {"k": 1})
    assert client.registered_at == T0


def test_remove() -> None:
    reg = make_registry()
    reg.heartbeat(hb("a"), T0)
    assert reg.online_count == 1
    events = reg.remove("a", T0 + 7)
    assert types(events) == [CLIENT_REMOVED]
    ev = events[0]
    assert (ev.at, ev.reason, ev.data["reason"], ev.data["status"]) == (
        T0 + 7, "removed", "removed", "offline")
    assert reg.get("a") is None and len(reg) == 0 and reg.online_count == 0
    with pytest.raises(UnknownClient):
        reg.remove("a", T0 + 8)
    # A removed client that beats again (auto registration) starts afresh.
    out = reg.heartbeat(hb("a"), T0 + 9)
    assert out.created is True and out.client.registered_at == T0 + 9


# -- the sweep ---------------------------------------------------------------------------------


def test_sweep_marks_offline_strictly_after_the_timeout() -> None:
    reg = make_registry()
    reg.heartbeat(hb("a"), T0)
    assert reg.sweep(T0 + TIMEOUT) == []  # exactly the timeout: still online
    assert reg.get("a").status == "online"  # type: ignore[union-attr]
    events = reg.sweep(T0 + TIMEOUT + 0.001)
    assert types(events) == [CLIENT_DISCONNECTED]
    ev = events[0]
    assert (ev.at, ev.reason, ev.data["reason"]) == (T0 + TIMEOUT + 0.001, "timeout", "timeout")
    c = reg.get("a")
    assert c is not None
    assert (c.status, c.offline_since, c.online_since) == ("offline", T0 + TIMEOUT + 0.001, T0)
    assert reg.online_count == 0
    assert reg.sweep(T0 + 1000) == []  # only once


def test_sweep_leaves_offline_unknown_and_fresh_clients_alone() -> None:
    reg = make_registry(min_interval=0)
    reg.register(Registration("never-seen"), T0)
    reg.heartbeat(hb("gone", status="offline"), T0)
    reg.heartbeat(hb("old"), T0)
    reg.heartbeat(hb("fresh"), T0 + 50)
    events = reg.sweep(T0 + 61)
    assert [e.client_id for e in events] == ["old"]
    statuses = {c.client_id: c.status for c in reg}
    assert statuses == {"never-seen": "unknown", "gone": "offline", "old": "offline",
                        "fresh": "online"}


def test_per_client_timeouts() -> None:
    reg = make_registry(min_interval=0)
    reg.register(Registration("long", heartbeat_timeout_seconds=300.0), T0)
    reg.register(Registration("short", heartbeat_timeout_seconds=5.0), T0)
    for cid in ("long", "short", "default"):
        reg.heartbeat(hb(cid), T0)
    # An agent beating every 100 s is given at least twice that, whatever the default.
    reg.heartbeat(hb("slow", interval_seconds=100.0), T0)
    # A fast agent does not shorten its timeout below the default.
    reg.heartbeat(hb("fast", interval_seconds=1.0), T0)
    assert reg.timeout_of(reg.get("slow")) == 200.0  # type: ignore[arg-type]
    assert reg.timeout_of(reg.get("fast")) == TIMEOUT  # type: ignore[arg-type]

    def offline_at(now: float) -> list[str]:
        return sorted(e.client_id for e in reg.sweep(now))

    assert offline_at(T0 + 5) == []
    assert offline_at(T0 + 5.5) == ["short"]
    assert offline_at(T0 + 60) == []
    assert offline_at(T0 + 60.5) == ["default", "fast"]
    assert offline_at(T0 + 200) == []
    assert offline_at(T0 + 200.5) == ["slow"]
    assert offline_at(T0 + 300) == []
    assert offline_at(T0 + 300.5) == ["long"]


def test_registered_timeout_and_interval_take_the_longer() -> None:
    reg = make_registry()
    reg.register(Registration("a", heartbeat_timeout_seconds=30.0), T0)
    out = reg.heartbeat(hb("a", interval_seconds=20.0), T0)
    assert out.timeout_seconds == 40.0
    assert reg.view(out.client)["heartbeatTimeoutSeconds"] == 40.0


def test_startup_grace_holds_back_every_timeout_until_it_ends() -> None:
    restarted_at = T0 + 1000
    grace_until = restarted_at + TIMEOUT
    reg = make_registry(grace_until=grace_until)
    # What the store held: online clients whose last heartbeats are long past.
    reg.load([
        Client("a", registered_at=T0, status="online", last_heartbeat_at=T0, online_since=T0),
        Client("b", registered_at=T0, status="online", last_heartbeat_at=T0 + 900,
               online_since=T0),
        Client("c", registered_at=T0, status="offline", last_heartbeat_at=T0, offline_since=T0),
    ])
    assert reg.online_count == 2
    for now in (restarted_at, restarted_at + 30, grace_until - 0.001):
        assert reg.sweep(now) == []
    # "b" beats again during the grace; "a" does not.
    reg.heartbeat(hb("b"), restarted_at + 10)
    events = reg.sweep(grace_until)
    assert [(e.client_id, e.at, e.reason) for e in events] == [("a", grace_until, "timeout")]
    assert reg.get("b").status == "online"  # type: ignore[union-attr]
    assert reg.sweep(restarted_at + 10 + TIMEOUT + 0.5)[0].client_id == "b"


def test_view_shape_and_revision() -> None:
    reg = make_registry()
    rev0 = reg.revision
    out = reg.heartbeat(hb("a", version="1.0.0", ip_address="192.168.1.100", os_type="linux",
                           timestamp=T0 - 1.5, metrics={"load1": 0.5}), T0 + 0.123)
    assert reg.revision == rev0 + 1 and out.client.revision == reg.revision
    assert reg.view(out.client) == {
        "clientId": "a", "name": None, "status": "online", "reportedStatus": "online",
        "version": "1.0.0", "ipAddress": "192.168.1.100", "osType": "linux", "tags": [],
        "metadata": {}, "lastHeartbeatAt": "2026-01-01T00:00:00.123Z",
        "onlineSince": "2026-01-01T00:00:00.123Z", "offlineSince": None,
        "registeredAt": "2026-01-01T00:00:00.123Z", "clockSkewSeconds": -1.623,
        "heartbeatTimeoutSeconds": TIMEOUT, "intervalSeconds": None,
        "latestMetrics": {"load1": 0.5}, "capabilities": None,
    }
    assert reg.views() == [reg.view(out.client)]
    # What an agent's control channel advertises shows in the view (and is a change).
    assert reg.set_capabilities("a", {"commands": True})
    assert reg.view(out.client)["capabilities"] == {"commands": True}
    assert reg.revision == rev0 + 2
    assert not reg.set_capabilities("nobody", None)


def test_transitions_say_which_status_they_left() -> None:
    reg = make_registry(min_interval=0)
    up = next(e for e in reg.heartbeat(hb("a"), T0).events if e.type == "CLIENT_CONNECTED")
    assert (up.previous_status, up.data["previousStatus"]) == ("unknown", "unknown")
    down = reg.sweep(T0 + TIMEOUT + 1)[0]
    assert (down.type, down.previous_status) == ("CLIENT_DISCONNECTED", "online")
    back = next(e for e in reg.heartbeat(hb("a"), T0 + TIMEOUT + 2).events if e.type == "CLIENT_CONNECTED")
    assert back.previous_status == "offline"
    bye = next(e for e in reg.heartbeat(hb("a", status="offline"), T0 + TIMEOUT + 3).events
           if e.type == "CLIENT_DISCONNECTED")
    assert (bye.previous_status, bye.reason) == ("online", "agent_shutdown")
