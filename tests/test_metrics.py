"""GET /metrics against the real daemon: access rules, every family the issue names moved by
real traffic (heartbeats, WebSocket clients, a slow consumer, a dead one, webhooks, commits),
process metrics, and the output checked by Prometheus' own promtool.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from rpad import __version__
from rpad.api.metrics import ProcessCollectorAnySubset
from rpad.config import Config

from .conftest import Running, fake_wall_clock, start_daemon, tool_fixture
from .test_alerts import HttpReceiver
from .wsclient import fake_time, ws_connect, ws_connect_stalled

promtool = tool_fixture("promtool")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def scrape(d: Running, **kwargs: object) -> Samples:
    r = await d.request("GET", "/metrics", role="viewer", **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(r.text)


async def test_metrics_need_a_viewer_token_unless_public(
    nursery: trio.Nursery, make_config: Callable[..., Config]
) -> None:
    with trio.fail_after(30):
        d = await start_daemon(nursery, make_config())
        r = await d.request("GET", "/metrics", role=None)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        r = await d.request("GET", "/metrics", token="garbage")
        assert r.status_code == 401
        r = await d.request("GET", "/metrics", role="agent", sub="robot-1")
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        for role in ("viewer", "service", "admin"):
            assert (await d.request("GET", "/metrics", role=role)).status_code == 200
        r = await d.request("POST", "/metrics", role="admin")
        assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"

        public = await start_daemon(nursery, make_config(metrics={"public": True}))
        r = await public.request("GET", "/metrics", role=None)
        assert r.status_code == 200 and "rpad_info{" in r.text
        for running in (d, public):
            await running.http.aclose()
            running.daemon.stop()


async def test_presence_store_and_process_metrics_follow_real_traffic(
    nursery: trio.Nursery, make_config: Callable[..., Config]
) -> None:
    with trio.fail_after(30):
        d = await start_daemon(nursery, make_config(presence={"registration": "manual"}))
        before = await scrape(d)
        assert value(before, "rpad_heartbeats_total", result="accepted") == 0
        assert value(before, "rpad_clients", status="online") == 0

        for cid in ("robot-1", "robot-2", "never-seen"):
            r = await d.request("POST", "/api/v1/clients", json={"clientId": cid})
            assert r.status_code == 201
        assert (await d.heartbeat("robot-1")).status_code == 200
        assert (await d.heartbeat("robot-2")).status_code == 200
        assert (await d.heartbeat("robot-1")).status_code == 429  # faster than 1 s
        assert (await d.heartbeat("stranger")).status_code == 404  # manual registration
        assert (await d.heartbeat("robot-2", status="offline")).status_code == 200
        r = await d.request("DELETE", "/api/v1/clients/never-seen")
        assert r.status_code == 200

        m = await scrape(d)
        assert value(m, "rpad_heartbeats_total", result="accepted") == 3
        assert value(m, "rpad_heartbeats_total", result="rate_limited") == 1
        assert value(m, "rpad_heartbeats_total", result="unknown_client") == 1
        assert value(m, "rpad_clients", status="online") == 1
        assert value(m, "rpad_clients", status="offline") == 1
        assert value(m, "rpad_clients", status="unknown") == 0
        assert value(m, "rpad_client_transitions_total", to="online") == 2
        assert value(m, "rpad_client_transitions_total", to="offline") == 1
        assert value(m, "rpad_client_transitions_total", to="removed") == 1
        # Every acknowledged write went through a group commit, observed in the histograms.
        commits = value(m, "rpad_store_commits_total")
        assert commits >= 1
        assert value(m, "rpad_store_commit_batch_size_count") == commits
        assert value(m, "rpad_store_commit_duration_seconds_count") == commits
        assert value(m, "rpad_store_commit_batch_size_sum") >= 3 + 3 + 1
        assert value(m, "rpad_store_commit_batch_size_bucket", le="+Inf") == commits
        assert value(m, "rpad_store_commit_duration_seconds_sum") > 0
        # Process metrics from prometheus_client's collectors.
        assert value(m, "process_resident_memory_bytes") > 10_000_000
        assert value(m, "process_open_fds") >= 5
        assert 0 < value(m, "process_cpu_seconds_total")
        assert value(m, "process_start_time_seconds") > 1.7e9
        assert any(name == "python_info" for name, _ in m)
        assert value(m, "python_gc_collections_total", generation="0") >= 0
        assert value(m, "rpad_info", version=__version__, epoch=d.daemon.epoch) == 1
        await d.http.aclose()
        d.daemon.stop()


async def test_websocket_metrics_with_a_slow_consumer(
    nursery: trio.Nursery, make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(30):
        d = await start_daemon(nursery, make_config(websocket={"queue_size": 4},
                                                    presence={"min_interval_seconds": 0}))
        assert d.ws_url is not None
        async with ws_connect(d.ws_url, token=d.token("viewer", "ops")) as ws:
            # (Only the conflated servers topic: client_status would overflow this small queue
            # too when 40 clients come online at once.)
            await ws.subscribe("servers")
            m = await scrape(d)
            assert value(m, "rpad_websocket_connections") == 1
            assert value(m, "rpad_websocket_subscribers", topic="servers") == 1
            sent_before = value(m, "rpad_websocket_messages_sent_total")
            assert sent_before >= 3  # established, subscribed, SERVER_LIST

            async with ws_connect_stalled(d.ws_url, token=d.token("viewer", "slow")) as slow:
                assert (await slow.recv())["type"] == "CONNECTION_ESTABLISHED"
                await slow.send(action="subscribe", topic="heartbeat")
                assert (await slow.recv())["type"] == "SUBSCRIBED"
                # One gateway batch: 40 HEARTBEAT_RECEIVED at once into a queue of 4.
                batch = {"heartbeats": [{"clientId": f"r-{i}"} for i in range(40)]}
                r = await d.request("POST", "/api/v1/client/heartbeats", json=batch,
                                    role="service")
                assert r.status_code == 200 and r.json()["accepted"] == 40
                _, code = await slow.messages_until_closed()
                assert code == 4008
            m = await scrape(d)
            assert value(m, "rpad_websocket_disconnects_total", reason="slow_consumer") == 1
            # ... and one log line says so, at warning level.
            slow_lines = [r for r in caplog.records if "slow consumer" in r.getMessage()]
            assert len(slow_lines) == 1 and slow_lines[0].levelname == "WARNING"
            assert "user slow" in slow_lines[0].getMessage()
            assert value(m, "rpad_websocket_messages_dropped_total") >= 1
            assert value(m, "rpad_websocket_messages_sent_total") > sent_before
            assert value(m, "rpad_websocket_connections") == 1
            assert ("rpad_websocket_subscribers", (("topic", "heartbeat"),)) not in m
        await d.http.aclose()
        d.daemon.stop()


async def test_keepalive_disconnects_and_conflation_on_the_fake_clock(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
    make_config: Callable[..., Config]
) -> None:
    """A dashboard that stops answering pings is closed at 30 + 60 s (keepalive_timeout); one
    that stops reading the servers topic gets its stale SERVER_LIST replaced (conflated)."""
    fake_time(autojump_clock, nursery)
    with trio.fail_after(600):
        cfg = make_config(websocket={"ping_interval_seconds": 30, "pong_timeout_seconds": 60,
                                     "queue_size": 2},
                          push={"interval_seconds": 2})
        d = await start_daemon(nursery, cfg, wall_clock=fake_wall_clock())
        assert d.ws_url is not None
        # A thousand clients make each SERVER_LIST a few hundred kB: a peer that does not
        # read fills the socket buffers within a few pushes, and then newer lists replace
        # queued ones.
        for start in range(0, 1000, 250):  # (bodies stay under http.max_body_bytes)
            batch = {"heartbeats": [{"clientId": f"robot-{i:04}", "version": "1.2.3"}
                                    for i in range(start, start + 250)]}
            r = await d.request("POST", "/api/v1/client/heartbeats", json=batch, role="service")
            assert r.status_code == 200 and r.json()["accepted"] == 250
        async with ws_connect_stalled(d.ws_url, token=d.token("viewer", "stalled")) as stalled:
            assert (await stalled.recv())["type"] == "CONNECTION_ESTABLISHED"
            await stalled.send(action="subscribe", topic="servers")
            assert (await stalled.recv())["type"] == "SUBSCRIBED"
            await trio.sleep(95)
            _, code = await stalled.messages_until_closed()
            assert code == 4408
        m = await scrape(d)
        assert value(m, "rpad_websocket_disconnects_total", reason="keepalive_timeout") == 1
        assert value(m, "rpad_websocket_disconnects_total", reason="slow_consumer") == 0
        assert value(m, "rpad_websocket_messages_conflated_total") >= 1
        await d.http.aclose()
        d.daemon.stop()


async def test_webhook_deliveries_and_failures(
    nursery: trio.Nursery, make_config: Callable[..., Config]
) -> None:
    ok, refusing = HttpReceiver(), HttpReceiver(statuses=[400, 400])
    await nursery.start(ok.serve)
    await nursery.start(refusing.serve)
    with trio.fail_after(30):
        cfg = make_config(
            presence={"min_interval_seconds": 0},
            alerts={"webhooks": [{"url": ok.url + "/path?secret=s3cr3t"},
                                 {"url": refusing.url, "max_attempts": 3, "name": "refusing"}]})
        d = await start_daemon(nursery, cfg)
        assert (await d.heartbeat("robot-1")).status_code == 200  # new: no alert
        assert (await d.heartbeat("robot-1", status="offline")).status_code == 200
        await ok.wait_for(1)
        assert (await d.heartbeat("robot-1")).status_code == 200  # client.online
        await ok.wait_for(2)
        await refusing.wait_for(2)
        while d.daemon.alerts is not None and d.daemon.alerts.failed < 2:
            await trio.sleep(0.01)
        m = await scrape(d)
        # Targets are named by their name (default: webhook-<hash of the URL>), never by
        # their URL: webhook URLs often carry credentials.
        assert d.daemon.alerts is not None
        good = {"kind": "webhook", "target": d.daemon.alerts.channels[0].name}
        assert good["target"].startswith("webhook-")
        bad = {"kind": "webhook", "target": "refusing"}
        assert value(m, "rpad_alert_deliveries_total", **good) == 2
        assert value(m, "rpad_alert_failures_total", **good) == 0
        assert value(m, "rpad_alert_deliveries_total", **bad) == 0
        assert value(m, "rpad_alert_failures_total", **bad) == 2  # 4xx: not retried
        assert value(m, "rpad_alert_dropped_total", **bad) == 0
        # The policy's own figures: one outage, announced and ended; no silence.
        assert value(m, "rpad_alerts_raised_total", kind="offline") == 1
        assert value(m, "rpad_alerts_raised_total", kind="online") == 1
        assert value(m, "rpad_alerts_raised_total", kind="reminder") == 0
        assert value(m, "rpad_alert_messages_total") == 2
        assert value(m, "rpad_alerts_deferred_total") == 0
        assert value(m, "rpad_silences_active") == 0
        r = await d.request("GET", "/metrics", role="viewer")
        assert "s3cr3t" not in r.text and "/path" not in r.text
        await d.http.aclose()
        d.daemon.stop()


async def test_output_passes_promtool_and_openmetrics_is_negotiated(
    nursery: trio.Nursery, make_config: Callable[..., Config], tmp_path: Path, promtool: str
) -> None:
    ok = HttpReceiver()
    await nursery.start(ok.serve)
    with trio.fail_after(60):
        d = await start_daemon(nursery, make_config(alerts={"webhooks": [{"url": ok.url}]}))
        assert d.ws_url is not None
        async with ws_connect(d.ws_url, token=d.token("viewer", "ops")) as ws:
            await ws.subscribe("client_status")
            assert (await d.heartbeat("robot-1")).status_code == 200
            await ws.expect("CLIENT_CONNECTED", skip=("HEARTBEAT_RECEIVED",))
            r = await d.request("GET", "/metrics", role="viewer")
            assert r.status_code == 200
            res = await trio.to_thread.run_sync(lambda: subprocess.run(
                [promtool, "check", "metrics"], input=r.content, capture_output=True,
                timeout=30, check=False))
            assert res.returncode == 0, (res.stdout + res.stderr).decode()
            assert res.stdout.strip() == b"" and res.stderr.strip() == b"", res
            # Every family the issue names is in the exposition.
            for family in ("rpad_heartbeats_total", "rpad_clients", "rpad_client_transitions_total",
                           "rpad_websocket_connections", "rpad_websocket_subscribers",
                           "rpad_websocket_messages_sent_total",
                           "rpad_websocket_messages_conflated_total",
                           "rpad_websocket_messages_dropped_total",
                           "rpad_websocket_disconnects_total", "rpad_store_commit_batch_size_bucket",
                           "rpad_store_commit_duration_seconds_bucket",
                           "rpad_alert_deliveries_total", "rpad_alert_failures_total",
                           "process_cpu_seconds_total", "process_resident_memory_bytes"):
                assert f"\n{family}" in r.text, family

            r = await d.request("GET", "/metrics", role="viewer",
                                headers={"Accept": "application/openmetrics-text; version=1.0.0"})
            assert r.headers["content-type"].startswith("application/openmetrics-text")
            assert r.text.endswith("# EOF\n")
        await d.http.aclose()
        d.daemon.stop()


def test_process_start_time_without_proc_stat(tmp_path: Path) -> None:
    """Under systemd's ProcSubset=pid, /proc/stat (the boot time) is hidden; the process
    metrics must still be there, with the same start time."""
    fake_proc = tmp_path / "proc"
    fake_proc.mkdir()
    (fake_proc / "self").symlink_to("/proc/self")
    from prometheus_client import CollectorRegistry
    from prometheus_client.process_collector import ProcessCollector

    hidden = ProcessCollectorAnySubset(proc=str(fake_proc), pid=lambda: "self",
                               registry=CollectorRegistry())
    real = ProcessCollector(pid=lambda: "self", registry=CollectorRegistry())
    hidden_metrics = {s.name: s.value for m in hidden.collect() for s in m.samples}
    real_metrics = {s.name: s.value for m in real.collect() for s in m.samples}
    assert set(hidden_metrics) == set(real_metrics) >= {"process_start_time_seconds",
                                                        "process_cpu_seconds_total"}
    # /proc/stat's btime is whole seconds; CLOCK_BOOTTIME arithmetic is finer.
    assert hidden_metrics["process_start_time_seconds"] == pytest.approx(
        real_metrics["process_start_time_seconds"], abs=1.5)
