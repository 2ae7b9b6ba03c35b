"""The fleet is bounded (issue 16, point 3): presence.max_clients, registrations rate-limited per
token subject, refusals counted and logged once a minute, the operator warned when the fleet
nears the cap. The rules on their own (the registry, the rate per key) and through the real
daemon on the fake clock. (The dashboard's banner: tests/test_dashboard_browser.py.)"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from rpad import config as config_mod
from rpad.config import Config, ConfigError
from rpad.core.errors import FleetFull
from rpad.core.ratelimit import RatePerKey
from rpad.core.registry import Registry
from rpad.core.validation import parse_heartbeat, parse_registration

from .conftest import config_dict, fake_wall_clock
from .test_limits import metric
from .wsclient import StartDaemon, daemons, fake_time, ws_connect

__all__ = ["daemons"]  # the fixture


def registry(max_clients: int | None = 3) -> Registry:
    return Registry(default_timeout_seconds=60, min_interval_seconds=0, auto_register=True,
                    max_clients=max_clients)


def test_config_defaults_and_bad_values(tmp_path: Path) -> None:
    cfg = config_mod.from_dict(config_dict(tmp_path))
    assert cfg.presence.max_clients == 10_000
    assert cfg.presence.registrations_per_minute == 1000
    with pytest.raises(ConfigError) as info:
        config_mod.from_dict(config_dict(tmp_path, presence={"max_clients": 0,
                                                             "registrations_per_minute": -1}))
    assert info.value.problems == [
        "presence.max_clients: must be greater than 0, got 0",
        "presence.registrations_per_minute: must be greater than 0, got -1.0"]


def test_the_registry_refuses_new_clients_at_the_cap() -> None:
    reg = registry(3)
    for i in range(3):
        reg.heartbeat(parse_heartbeat({"clientId": f"c{i}"}), 100.0 + i)
    assert reg.full
    with pytest.raises(FleetFull) as info:
        reg.heartbeat(parse_heartbeat({"clientId": "c3"}), 110.0)
    assert info.value.max_clients == 3 and len(reg) == 3
    # Known clients keep beating, and can be registered (updated) by an admin.
    reg.heartbeat(parse_heartbeat({"clientId": "c0", "status": "busy"}), 111.0)
    reg.register(parse_registration({"clientId": "c1", "name": "one"}), 112.0)
    with pytest.raises(FleetFull):
        reg.register(parse_registration({"clientId": "new"}), 113.0)
    # Removing one makes room for one.
    reg.remove("c2", 114.0)
    reg.heartbeat(parse_heartbeat({"clientId": "c3"}), 115.0)
    assert sorted(c.client_id for c in reg) == ["c0", "c1", "c3"]


def test_the_client_lists_carry_the_cap() -> None:
    reg = registry(3)
    reg.heartbeat(parse_heartbeat({"clientId": "a"}), 100.0)
    assert json.loads(reg.servers_json())["maxClients"] == 3
    since = reg.revision
    reg.max_clients = 5  # a reload: news for the pusher even though no client changed
    assert reg.revision == since + 1
    delta = reg.delta_json(since)
    assert delta is not None
    assert json.loads(delta) == {"changed": [], "removed": [], "maxClients": 5}
    assert "maxClients" not in json.loads(registry(None).servers_json())


def test_rate_per_key_exactly() -> None:
    rate = RatePerKey(3)  # 3 at once, then one every 20 s
    assert [rate.take("svc", 0.0) for _ in range(3)] == [None, None, None]
    assert rate.take("svc", 0.0) == pytest.approx(20.0)
    assert rate.take("svc", 10.0) == pytest.approx(10.0)
    assert rate.take("svc", 20.0) is None
    assert rate.take("svc", 20.0) == pytest.approx(20.0)
    assert rate.take("other", 20.0) is None  # keys are independent
    # A clock stepped back earns nothing (and takes nothing away).
    assert rate.take("svc", 5.0) == pytest.approx(20.0)
    # Memory stays bounded: full buckets are forgotten first, then the oldest.
    small = RatePerKey(2, max_keys=3)
    for i in range(10):
        assert small.take(f"k{i}", 1000.0 + i) is None
    assert len(small) == 3


async def test_registrations_are_rate_limited_per_subject(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rpad.service.presence")
    fake_time(autojump_clock, nursery)
    r = await daemons(make_config(presence={"min_interval_seconds": 0,
                                            "registrations_per_minute": 5}),
                      wall_clock=fake_wall_clock())
    t0 = trio.current_time()
    leaked = r.token("service", "gateway")

    async def beat(client_id: str, token: str = leaked) -> tuple[int, dict[str, object], str]:
        resp = await r.request("POST", "/api/v1/client/heartbeat", token=token,
                               json={"clientId": client_id})
        return resp.status_code, resp.json(), resp.headers.get("Retry-After", "")

    for i in range(5):
        assert (await beat(f"new-{i}"))[0] == 200
    status, body, retry = await beat("new-5")
    # One new client every 12 s (less the time the five took on the fake clock, which moves
    # while the test waits on sockets and SQLite).
    assert (status, body["error"]) == (429, "too_many_registrations")
    assert 1 <= int(retry) <= 12
    # Heartbeats of clients it already registered are not registrations.
    assert (await beat("new-0"))[0] == 200
    # Other subjects are not affected: an agent registering itself, another service, an admin.
    assert (await beat("robot-1", r.token("agent", "robot-1")))[0] == 200
    assert (await beat("other-1", r.token("service", "other-gateway")))[0] == 200
    for i in range(10):
        assert (await beat(f"by-admin-{i}", r.token("admin", "root")))[0] == 200
    # A batch: the items beyond the rate are refused one by one.
    resp = await r.request("POST", "/api/v1/client/heartbeats", token=leaked,
                           json={"heartbeats": [{"clientId": "new-0"}, {"clientId": "new-6"}]})
    results = resp.json()["results"]
    assert results[0]["ok"] is True
    assert results[1]["error"] == "too_many_registrations"
    assert 0 < results[1]["retryAfterSeconds"] <= 12.0
    # One more a 12 s later.
    await trio.sleep_until(t0 + 13)
    assert (await beat("new-5"))[0] == 200
    assert (await beat("new-6"))[0] == 429
    text = (await r.request("GET", "/metrics")).text
    assert metric(text, "rpad_registrations_refused_total", reason="too_many_registrations") == 3
    assert metric(text, "rpad_heartbeats_total", result="too_many_registrations") == 3
    lines = [rec.getMessage() for rec in caplog.records if "refused" in rec.getMessage()]
    # Logged at the first refusal, then not again within the minute.
    assert lines == [("refused 1 new client (first 'new-5' from subject 'gateway'): registering "
                     "faster than presence.registrations_per_minute (5)")]


async def test_the_fleet_cap_refuses_counts_logs_and_warns(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rpad.service.presence")
    fake_time(autojump_clock, nursery)
    r = await daemons(make_config(presence={"min_interval_seconds": 0, "max_clients": 10}),
                      wall_clock=fake_wall_clock())

    def warnings() -> list[str]:
        return [rec.getMessage() for rec in caplog.records]

    async with ws_connect(r.ws_url, token=r.token("viewer", "dash")) as dash:
        await dash.send(action="subscribe", topic="servers")
        await dash.expect("SUBSCRIBED")
        first = await dash.expect("SERVER_LIST")
        assert first["data"] == {"servers": [], "maxClients": 10}
        for i in range(7):
            assert (await r.heartbeat(f"c{i}")).status_code == 200
        assert warnings() == []
        assert (await r.heartbeat("c7")).status_code == 200  # 8 of 10: 80 %
        assert warnings() == [("the fleet holds 8 clients, 80% of presence.max_clients (10): new "
                              "clients beyond it will be refused; remove clients or raise it")]
        assert (await r.heartbeat("c8")).status_code == 200  # warned once, not again
        assert len(warnings()) == 1
        resp = await r.request("POST", "/api/v1/clients", json={"clientId": "c9"})
        assert resp.status_code == 201
        # Full: heartbeats of new clients and registrations are refused, 409 fleet_full.
        t0 = trio.current_time()
        for i in range(10, 15):
            resp = await r.heartbeat(f"c{i}")
            assert resp.status_code == 409, resp.text
            assert resp.json()["error"] == "fleet_full"
            assert "presence.max_clients" in resp.json()["message"]
        resp = await r.request("POST", "/api/v1/clients", json={"clientId": "c99"})
        assert resp.status_code == 409 and resp.json()["error"] == "fleet_full"
        resp = await r.request("POST", "/api/v1/client/heartbeats", role="service",
                               json={"heartbeats": [{"clientId": "c0"}, {"clientId": "c98"}]})
        assert [x["ok"] for x in resp.json()["results"]] == [True, False]
        assert resp.json()["results"][1]["error"] == "fleet_full"
        assert (await r.heartbeat("c3")).status_code == 200  # the fleet keeps beating
        refusals = [w for w in warnings() if w.startswith("refused")]
        assert refusals == [("refused 1 new client (first 'c10' from subject 'gateway'): the "
                            "fleet holds 10 clients, presence.max_clients is 10; remove "
                            "clients or raise it")]
        await trio.sleep_until(t0 + 61)
        assert (await r.heartbeat("c15")).status_code == 409
        refusals = [w for w in warnings() if w.startswith("refused")]
        assert refusals[1:] == [("refused 7 new clients (first 'c11' from subject 'gateway'): "
                                "the fleet holds 10 clients, presence.max_clients is 10; "
                                "remove clients or raise it")]
        text = (await r.request("GET", "/metrics")).text
        assert metric(text, "rpad_clients_max") == 10
        assert metric(text, "rpad_registrations_refused_total", reason="fleet_full") == 8
        assert metric(text, "rpad_heartbeats_total", result="fleet_full") == 7
        # Below 75 % and back to 80 %: warned again.
        for i in range(3):
            assert (await r.request("DELETE", f"/api/v1/clients/c{i}")).status_code == 200
        assert (await r.heartbeat("c20")).status_code == 200
        assert warnings()[-1].startswith("the fleet holds 8 clients, 80%")


async def test_a_reload_changes_the_cap_and_the_dashboards_hear_it(
        daemons: StartDaemon, tmp_path: Path) -> None:
    with trio.fail_after(60):
        path = tmp_path / "rpad.toml"
        base = (f'state_dir = "{tmp_path / "state"}"\n[http]\nlisten = "127.0.0.1:0"\n'
                '[websocket]\nlisten = "127.0.0.1:0"\n[push]\ninterval_seconds = 0.2\n'
                '[presence]\nmin_interval_seconds = 0\n')
        path.write_text(base + "max_clients = 2\n")
        r = await daemons(config_mod.load(path), config_path=str(path))
        for cid in ("a", "b"):
            assert (await r.heartbeat(cid)).status_code == 200
        assert (await r.heartbeat("c")).status_code == 409
        async with ws_connect(r.ws_url, token=r.token("viewer", "dash")) as dash:
            await dash.send(action="subscribe", topic="servers")
            assert (await dash.expect("SERVER_LIST", skip=("SUBSCRIBED",)))["data"][
                "maxClients"] == 2
            path.write_text(base + "max_clients = 3\n")
            assert await r.daemon.reload()
            # (A push built before the reload may still be on its way.)
            while (await dash.expect("SERVER_LIST"))["data"]["maxClients"] != 3:
                pass
        assert (await r.heartbeat("c")).status_code == 200
