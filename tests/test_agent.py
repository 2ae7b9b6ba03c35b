"""The reference agent: /proc parsing, the retry schedule on the fake clock against a real
HTTP receiver, and the real agent against the real daemon (in-process and as a process that
gets SIGTERM)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from rpad.client.agent import (
    EXIT_OK,
    EXIT_REFUSED,
    FIRST_SAMPLE_SECONDS,
    Agent,
    AgentOptions,
    CpuTimes,
    MetricsSampler,
    cpu_percent,
    parse_cpu_times,
    parse_loadavg,
    parse_meminfo,
    parse_net_dev,
    parse_uptime,
    run_agent,
)
from rpad.client.backoff import Backoff, backoff_delay
from rpad.config import Config
from rpad.core.validation import METRIC_FIELDS

from .test_alerts import HttpReceiver, daemon_running, free_port

E2E_TIMEOUT_SECONDS = 30

STAT = """cpu  4705 356 584 3699 23 23 0 0 0 0
cpu0 1393280 32966 572056 13343292 6130 0 17875 0 0 0
intr 114930548 113199788 3 0 5 263 0 4 [...]
"""
MEMINFO = """MemTotal:       16318668 kB
MemFree:         1002572 kB
MemAvailable:    9731944 kB
Buffers:          553520 kB
"""
NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 9000000   1000    0    0    0     0          0         0  9000000   1000    0    0    0     0       0          0
  eth0: 1500000   2000    0    0    0     0          0         0   250000   1500    0    0    0     0       0          0
 wlan0:  500000    300    0    0    0     0          0         0    50000    200    0    0    0     0       0          0
"""


# -- /proc ---------------------------------------------------------------------------------------


def test_parse_proc_files() -> None:
    cpu = parse_cpu_times(STAT)
    # total = 4705+356+584+3699+23+23+0+0; idle = 3699+23
    assert cpu == CpuTimes(busy=9390 - 3722, total=9390)
    assert cpu_percent(CpuTimes(100, 1000), CpuTimes(175, 1100)) == 75.0
    assert cpu_percent(CpuTimes(100, 1000), CpuTimes(100, 1000)) is None
    assert parse_meminfo(MEMINFO) == ((16318668 - 9731944) * 1024, 16318668 * 1024)
    assert parse_net_dev(NET_DEV) == (2_000_000, 300_000)  # loopback left out
    assert parse_uptime("350735.47 234388.90\n") == 350735.47
    assert parse_loadavg("0.75 0.35 0.25 1/25 1747\n") == (0.75, 0.35, 0.25)
    with pytest.raises(ValueError):
        parse_cpu_times("intr 1 2 3\n")


def test_sampler_rates_from_a_fake_proc(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "stat").write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    (proc / "meminfo").write_text(MEMINFO)
    (proc / "net" / "dev").write_text(NET_DEV)
    (proc / "uptime").write_text("100.5 50.0\n")
    (proc / "loadavg").write_text("1.5 1.0 0.5 2/100 42\n")
    sampler = MetricsSampler(proc, str(tmp_path))
    first = sampler.sample(10.0)
    assert "cpuUsagePercent" not in first and "networkRxInstantBps" not in first
    (proc / "stat").write_text("cpu  160 0 120 820 0 0 0 0 0 0\n")  # +80 busy of +100
    (proc / "net" / "dev").write_text(NET_DEV.replace("1500000", "1700000"))
    second = sampler.sample(12.0)
    assert second["cpuUsagePercent"] == 80.0
    assert second["networkRxInstantBps"] == 100_000.0  # 200 kB over 2 s
    assert second["networkTxInstantBps"] == 0.0
    assert second["uptimeSeconds"] == 100.5
    assert (second["load1"], second["load5"], second["load15"]) == (1.5, 1.0, 0.5)
    assert second["diskTotalBytes"] > 0


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")
async def test_sampler_on_this_host() -> None:
    sampler = MetricsSampler()
    sampler.sample(trio.current_time())
    await trio.sleep(0.2)
    m = sampler.sample(trio.current_time())
    assert set(m) == set(METRIC_FIELDS)
    assert 0.0 <= m["cpuUsagePercent"] <= 100.0
    assert 0 < m["memoryUsageBytes"] < m["memoryTotalBytes"]
    assert 0 < m["diskUsageBytes"] <= m["diskTotalBytes"]
    assert m["uptimeSeconds"] > 0 and m["load1"] >= 0


# -- backoff -------------------------------------------------------------------------------------


def test_backoff_delays_are_exact() -> None:
    assert [backoff_delay(n, jitter=0) for n in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff_delay(3, jitter=0.2, r=0.5) == 8 * 0.9
    assert backoff_delay(10_000, jitter=0) == 30  # no overflow
    draws = iter([0.0, 0.5, 0.999])
    b = Backoff(jitter=0.2, random=lambda: next(draws))
    assert [b.next_delay(), b.next_delay(), b.next_delay()] == [1.0, 1.8, 4 * (1 - 0.2 * 0.999)]
    b.reset()
    assert b.attempt == 0
    with pytest.raises(ValueError):
        backoff_delay(-1)


# -- the agent against a real HTTP receiver on the fake clock -------------------------------------


def agent_for(url: str, *, interval: float = 10.0, token: str = "t0ken") -> Agent:
    opts = AgentOptions(url=url, client_id="host-1", token=token, interval_seconds=interval,
                        name="Host one", version="9.9")
    return Agent(opts, backoff=Backoff(jitter=0.2, random=lambda: 0.0))


async def test_agent_backs_off_while_rpad_fails_then_keeps_its_interval(
        autojump_clock: Any) -> None:
    receiver = HttpReceiver(statuses=[503] * 6)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        agent = agent_for(f"http://127.0.0.1:{receiver.port}")
        start = trio.current_time()
        nursery.start_soon(agent.run)
        reqs = await receiver.wait_for(9)
        times = [round(r.at - start - FIRST_SAMPLE_SECONDS, 9) for r in reqs]
        # Six 503s: retries after 1, 2, 4, 8, 16 and 30 s; then the 10 s interval.
        assert times == [0, 1, 3, 7, 15, 31, 61, 71, 81]
        first = reqs[0]
        assert first.target == "/api/v1/client/heartbeat"
        assert first.headers["authorization"] == "Bearer t0ken"
        body = first.json()
        assert body["clientId"] == "host-1" and body["status"] == "online"
        assert body["intervalSeconds"] == 10.0 and body["version"] == "9.9"
        assert body["name"] == "Host one" and body["timestamp"].endswith("Z")
        await trio.sleep(1)  # the last answer reaches the agent
        assert (agent.failures, agent.sent) == (6, 3)
        nursery.cancel_scope.cancel()


async def test_agent_retries_while_rpad_is_down(autojump_clock: Any) -> None:
    port = free_port()
    receiver = HttpReceiver()
    async with trio.open_nursery() as nursery:
        agent = agent_for(f"http://127.0.0.1:{port}")
        start = trio.current_time() + FIRST_SAMPLE_SECONDS
        nursery.start_soon(agent.run)
        # Refused at 0, 1 and 3 s; rpad comes up at 5 s; the next try (3 + 4 = 7 s) lands.
        await trio.sleep_until(start + 5)
        assert agent.failures == 3 and agent.sent == 0
        await nursery.start(receiver.serve, port)
        reqs = await receiver.wait_for(2)
        assert [r.at - start for r in reqs] == [7.0, 17.0]
        nursery.cancel_scope.cancel()


async def test_agent_honours_retry_after(autojump_clock: Any) -> None:
    receiver = HttpReceiver(statuses=[429], answer_headers=[("Retry-After", "3")])
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        agent = agent_for(f"http://127.0.0.1:{receiver.port}")
        nursery.start_soon(agent.run)
        reqs = await receiver.wait_for(3)
        assert [r.at - reqs[0].at for r in reqs] == [0.0, 3.0, 13.0]
        nursery.cancel_scope.cancel()


async def test_refused_token_ends_the_agent_with_exit_3(autojump_clock: Any) -> None:
    body = json.dumps({"error": "invalid_token", "message": "the token is wrongly signed"})
    receiver = HttpReceiver(statuses=[401], answer_body=body.encode())
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        agent = agent_for(f"http://127.0.0.1:{receiver.port}")
        code = await run_agent(agent, trio.Event())
        assert code == EXIT_REFUSED
        assert len(receiver.requests) == 1  # no offline goodbye with a refused token
        nursery.cancel_scope.cancel()


# -- the agent against the real daemon -----------------------------------------------------------


async def wait_for_client(rpad: Any, client_id: str,
                          pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    while True:
        resp = await rpad.request("GET", f"/api/v1/clients/{client_id}", role="viewer")
        if resp.status_code == 200 and pred(resp.json()):
            view: dict[str, Any] = resp.json()
            return view
        await trio.sleep(0.05)


async def test_agent_against_the_daemon_reports_metrics_and_goes_offline(
        make_config: Callable[..., Config]) -> None:
    with trio.fail_after(E2E_TIMEOUT_SECONDS):
        async with (trio.open_nursery() as nursery,
                    daemon_running(make_config(presence={"min_interval_seconds": 0})) as rpad):
            opts = AgentOptions(url=rpad.http_url, client_id="host-e2e",
                                token=rpad.token("agent", "host-e2e"), interval_seconds=0.3,
                                name="E2E host", version="1.2.3")
            agent = Agent(opts)
            stop = trio.Event()
            result: list[int] = []

            async def go() -> None:
                result.append(await run_agent(agent, stop))

            nursery.start_soon(go)
            view = await wait_for_client(rpad, "host-e2e", lambda v: v["status"] == "online")
            view = await wait_for_client(
                rpad, "host-e2e", lambda v: set(v["latestMetrics"] or ()) == set(METRIC_FIELDS))
            assert view["name"] == "E2E host" and view["version"] == "1.2.3"
            assert view["intervalSeconds"] == 0.3
            assert view["heartbeatTimeoutSeconds"] >= 0.6
            stop.set()
            view = await wait_for_client(rpad, "host-e2e", lambda v: v["status"] == "offline")
            assert view["reportedStatus"] == "offline"
            while not result:
                await trio.sleep(0.01)
            assert result == [EXIT_OK]
            events = (await rpad.request("GET", "/api/v1/clients/host-e2e/events",
                                         role="viewer")).json()["events"]
            assert events[0]["reason"] == "agent_shutdown"


@pytest.mark.slow
async def test_agent_process_sends_offline_on_sigterm(
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    with trio.fail_after(E2E_TIMEOUT_SECONDS):
        async with daemon_running(make_config()) as rpad:
            token_file = tmp_path / "agent.token"
            token_file.write_text(rpad.token("agent", "proc-1") + "\n")
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "rpad", "agent", "--url", rpad.http_url,
                 "--client-id", "proc-1", "--token-file", str(token_file),
                 "--interval", "5"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env={**os.environ, "RPAD_TOKEN": ""})
            try:
                view = await wait_for_client(rpad, "proc-1",
                                             lambda v: v["status"] == "online")
                assert view["version"].startswith("rpad-agent ")
                assert view["osType"].startswith("Linux")
                assert "cpuUsagePercent" in view["latestMetrics"]
                proc.send_signal(signal.SIGTERM)
                assert await proc.wait() == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.stdout is not None
            output = b""
            while chunk := await proc.stdout.receive_some(65536):
                output += chunk
            await proc.stdout.aclose()
            view = await wait_for_client(rpad, "proc-1", lambda v: True)
            assert view["status"] == "offline"
            assert b"told rpad we are going offline" in output


async def test_agent_process_refused_token_exits_3(make_config: Callable[..., Config]) -> None:
    with trio.fail_after(E2E_TIMEOUT_SECONDS):
        async with daemon_running(make_config()) as rpad:
            result = await trio.run_process(
                [sys.executable, "-m", "rpad", "agent", "--url", rpad.http_url,
                 "--client-id", "intruder", "--token", rpad.token("agent", "someone-else")],
                capture_stdout=True, capture_stderr=True, check=False)
            assert result.returncode == EXIT_REFUSED
            assert b"rpad refused the token (HTTP 403" in result.stderr
