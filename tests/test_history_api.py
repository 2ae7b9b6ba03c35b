"""The detail API of one client against the real daemon: its metrics from the right tier,
its availability with rpad's own downtime and grace apart, and a 422 naming the parameter for
every bad query."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import trio

from rpad.config import Config
from rpad.core.times import parse_iso

from .conftest import Running
from .test_alerts import daemon_running

CPU = "cpuUsagePercent"


async def test_metrics_come_back_from_the_raw_tier_and_the_minute_tier(
        rpad: Running) -> None:
    with trio.fail_after(20):
        for cpu in (10.0, 30.0):
            r = await rpad.heartbeat("m1", metrics={CPU: cpu, "load1": 0.5})
            assert r.status_code == 200, r.text
            await trio.sleep(1.05)  # presence.min_interval_seconds
        now = time.time()
        # A step that is no multiple of a minute: the raw samples, exactly as sent.
        r = await rpad.request("GET", f"/api/v1/clients/m1/metrics?from={now - 600:.3f}"
                                      f"&to={now + 1:.3f}&step=1&names={CPU}", role="viewer")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["tier"] == "raw" and body["step"] == 1 and list(body["metrics"]) == [CPU]
        assert sum(body["count"]) == 2
        assert [v for v in body["metrics"][CPU]["avg"] if v is not None] == [10.0, 30.0]
        # A step of whole minutes: the minute tier (its open bucket, from memory).
        r = await rpad.request("GET", f"/api/v1/clients/m1/metrics?from={now - 3600:.0f}"
                                      f"&to={now + 60:.0f}&step=1m", role="viewer")
        body = r.json()
        assert r.status_code == 200 and body["tier"] == "1m" and sum(body["count"]) == 2
        assert set(body["metrics"]) >= {CPU, "load1", "memoryUsageBytes"}
        # No step: one is chosen (a multiple of the finest tier that holds the range).
        r = await rpad.request("GET", "/api/v1/clients/m1/metrics", role="viewer")
        assert r.status_code == 200 and r.json()["points"] <= 720


@pytest.mark.parametrize(("query", "field", "text"), [
    ("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from", "before to"),
    ("from=yesterday", "from", "ISO 8601"),
    ("to=NaN", "to", "or epoch seconds"),  # (not a number as the document writes one)
    ("from=-5", "from", "1970"),
    ("step=abc", "step", "whole number"),
    ("step=0", "step", "at least 1"),
    ("from={two_days_ago}&step=60", "step", "at least 900"),
    ("from={two_days_ago}&step=1000", "step", "multiple of 900"),
    ("from={month_ago}&step=1", "step", "more than 5000"),
    ("from={month_ago}&step=999999999d", "step", "at most"),
    ("from=0", "from", "at most 400 days"),
    ("names=cpu", "names", "unknown metric 'cpu'"),
    ("names=cpuUsagePercent,,load1", "names", "unknown metric ''"),
    ("names=" + "x" * 2000, "names", "at most"),
])
async def test_bad_metrics_queries_name_the_parameter(rpad: Running, query: str, field: str,
                                                      text: str) -> None:
    with trio.fail_after(20):
        await rpad.heartbeat("q1", metrics={CPU: 1.0})
        now = time.time()
        query = query.format(two_days_ago=f"{now - 2 * 86400:.0f}",
                             month_ago=f"{now - 30 * 86400:.0f}")
        r = await rpad.request("GET", f"/api/v1/clients/q1/metrics?{query}", role="viewer")
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["error"] == "validation_failed"
        assert body["details"][0]["field"] == field
        assert text in body["details"][0]["message"], body


async def test_uptime_routes_are_guarded_and_checked(rpad: Running) -> None:
    with trio.fail_after(20):
        await rpad.heartbeat("g1")
        for path in ("/api/v1/clients/ghost/uptime", "/api/v1/clients/ghost/metrics"):
            r = await rpad.request("GET", path, role="viewer")
            assert r.status_code == 404
        for path in ("/api/v1/clients/g1/uptime", "/api/v1/clients/g1/metrics"):
            r = await rpad.request("GET", path, role="agent", sub="g1")
            assert r.status_code == 403
            r = await rpad.request("GET", path, role=None)
            assert r.status_code == 401
        r = await rpad.request("GET", "/api/v1/clients/g1/uptime?timeline=2w", role="viewer")
        assert r.status_code == 422 and r.json()["details"][0]["field"] == "timeline"


async def test_uptime_leaves_out_rpads_downtime_and_grace(
        make_config: Callable[..., Config]) -> None:
    cfg = make_config(presence={"startup_grace_seconds": 1.0, "min_interval_seconds": 0})
    with trio.fail_after(30):
        async with daemon_running(cfg) as first:
            await first.heartbeat("u1", metrics={CPU: 5.0})
        stopped = time.time()
        await trio.sleep(0.5)
        async with daemon_running(cfg) as second:
            await second.heartbeat("u1")
            await trio.sleep(1.2)  # past the grace
            r = await second.request("GET", "/api/v1/clients/u1/uptime?timeline=1h",
                                     role="viewer")
            assert r.status_code == 200, r.text
            body = r.json()
            kinds = [p["kind"] for p in body["rpadPeriods"]]
            assert kinds == ["rpad_down", "grace"], body["rpadPeriods"]
            down = body["rpadPeriods"][0]
            assert parse_iso(down["start"]) == pytest.approx(stopped, abs=0.5)
            assert parse_iso(down["end"]) - parse_iso(down["start"]) >= 0.45
            day = body["uptime"]["24h"]
            assert day["percent"] == 100.0 and day["offlineSeconds"] == 0.0
            assert day["rpadDownSeconds"] >= 0.45 and day["graceSeconds"] == pytest.approx(1.0)
            states = [s["state"] for s in body["timeline"]["segments"]]
            assert states[-4:] == ["online", "rpad_down", "grace", "online"], states
            # The detail API carries the figures; the list does not.
            r = await second.request("GET", "/api/v1/clients/u1", role="viewer")
            assert r.json()["uptime"]["24h"]["rpadDownSeconds"] == day["rpadDownSeconds"] or \
                r.json()["uptime"]["24h"]["rpadDownSeconds"] >= 0.45
            r = await second.request("GET", "/api/v1/clients", role="viewer")
            assert "uptime" not in r.json()["clients"][0]
