"""The console and batch tasks: a command's round trip, output throughput, a task over 200 agents.

rpad runs in its own process (``rpad serve``). Three measures:

- *round trip of ``true``*: a console client (this process, a WebSocket like the dashboard's)
  sends ``terminal.command`` and waits for ``COMMAND_DONE``; through the hub, the console
  service, the audit log's durable write, a real agent process (``rpad.client agent
  --allow-commands``, its own process) and its ``/bin/sh -c true``, and back. Sequential;
  median and p99 over every command of a run, the figure the median of the runs' figures.
- *output throughput*: one command printing ``OUTPUT_MIB`` MiB of text (``yes | head -c``) to
  one console that acknowledges what it has read as the dashboard does (``terminal.ack``: the
  total so far, at most every 50 ms; credit for the agent). MiB/s from ``COMMAND_START`` to ``COMMAND_DONE``; CPU of rpad and of the agent
  over that window.
- *a task over 200 simulated agents*: 200 control channels (in a separate process:
  bench/console_agents.py) that answer each ``COMMAND_RUN`` at once (started, one line of
  output, done), so what is measured is rpad's side: ``POST /api/v1/tasks`` on 200 clients (all
  at once, and 50 at a time) → its final ``TASK_UPDATE`` on ``task.<id>``, and rpad's CPU over it.

    python bench/console.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio
from common import (
    BENCH_DIR,
    PYTHON,
    BenchError,
    CpuWindow,
    Rpad,
    cpu_seconds,
    median,
    percentile,
    rpad_config,
    rpad_env,
    stop_process,
)
from trio_websocket import WebSocketConnection, open_websocket_url

RUN_AS = ["--run-as", "nobody"] if os.geteuid() == 0 else []
OUTPUT_MIB = 64
FLEET = 200
READY_TIMEOUT_SECONDS = 60.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# The dashboard acknowledges what it has shown at most every 50 ms (console.js).
ACK_INTERVAL_SECONDS = 0.05


DEFAULT_WINDOW_BYTES = 256 * 1024
WIDE_WINDOW_BYTES = 4 * 1024 * 1024


def console_config(work: Path, window_bytes: int = DEFAULT_WINDOW_BYTES) -> dict[str, Any]:
    return rpad_config(work / "state", console={
        "max_output_bytes": 1024 * 1024 * 1024, "max_sessions_per_user": 100,
        "max_running_tasks_per_user": 100, "task_max_concurrency": FLEET,
        "window_bytes": window_bytes},
        presence={"min_interval_seconds": 0})


class Agent:
    """A real ``rpad agent`` process that takes commands (up to a GiB of output)."""

    def __init__(self, rpad: Rpad, work: Path, client_id: str) -> None:
        work.mkdir(parents=True, exist_ok=True)
        (work / "agent.token").write_text(rpad.token("agent", client_id))
        conf = work / "agent.toml"
        conf.write_text("[commands]\nallow = true\nmax_output_bytes = 1073741824\n"
                        "max_timeout_seconds = 3600\n")
        conf.chmod(0o600)
        self.log = open(work / "agent.log", "wb")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "rpad.client", "agent", "--url", rpad.http_url, "--client-id",
             client_id, "--token-file", str(work / "agent.token"), "--interval", "5",
             "--config", str(conf), *RUN_AS],
            stdout=subprocess.DEVNULL, stderr=self.log, env=rpad_env())

    def close(self) -> None:
        stop_process(self.proc)
        self.log.close()


async def _get_json(url: str, token: str) -> Any:
    from rpad.client import httpclient

    resp = await httpclient.request("GET", url, headers={"Authorization": f"Bearer {token}"},
                                    timeout_seconds=10)
    return resp.json()


async def _wait_commands_on(rpad: Rpad, admin: str, client_ids: list[str]) -> None:
    with trio.fail_after(READY_TIMEOUT_SECONDS):
        for cid in client_ids:
            while True:
                view = await _get_json(f"{rpad.http_url}/api/v1/clients/{cid}", admin)
                caps = view.get("capabilities") if isinstance(view, dict) else None
                if caps and caps.get("commands"):
                    break
                await trio.sleep(0.05)


async def _recv(ws: WebSocketConnection) -> dict[str, Any]:
    msg: dict[str, Any] = json.loads(await ws.get_message())
    return msg


async def _open(ws: WebSocketConnection, client_id: str) -> str:
    await ws.send_message(json.dumps({"action": "terminal.open", "clientId": client_id}))
    while True:
        msg = await _recv(ws)
        if msg["type"] == "TERMINAL_CONNECTED":
            return str(msg["data"]["sessionId"])
        if msg["type"] == "TERMINAL_ERROR":
            raise BenchError(f"terminal.open refused: {msg['data']}")


async def _command(ws: WebSocketConnection, sid: str, command: str,
                   pids: tuple[int, ...] = ()) -> dict[str, Any]:
    """Run one command; acknowledge its output as the dashboard does (the total read so far,
    every ACK_INTERVAL_SECONDS while there is something new); timings and CPU."""
    t0 = time.perf_counter()
    await ws.send_message(json.dumps({"action": "terminal.command", "sessionId": sid,
                                      "command": command}))
    window = CpuWindow(pids)
    state: dict[str, Any] = {"id": None, "read": 0, "acked": 0}

    async def acknowledge() -> None:
        while True:
            await trio.sleep(ACK_INTERVAL_SECONDS)
            if state["id"] is not None and state["read"] > state["acked"]:
                state["acked"] = state["read"]
                await ws.send_message(json.dumps({
                    "action": "terminal.ack", "sessionId": sid, "commandId": state["id"],
                    "shownBytes": state["acked"]}))

    started = 0.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(acknowledge)
        while True:
            msg = await _recv(ws)
            t = msg["type"]
            if t == "COMMAND_START":
                started = time.perf_counter()
                window.start()
                state["id"] = msg["data"]["commandId"]
            elif t == "COMMAND_OUTPUT":
                state["read"] += msg["data"]["bytes"]
            elif t == "COMMAND_DONE":
                received = time.perf_counter()
                window.stop()
                nursery.cancel_scope.cancel()
                if msg["data"]["status"] != "success":
                    raise BenchError(f"{command!r} ended {msg['data']}")
                return {"round_trip_s": received - t0, "stream_s": received - started,
                        "bytes": state["read"], "agent_ms": msg["data"]["durationMs"],
                        "cpu": {pid: window.percent(pid) for pid in pids}}
            elif t == "TERMINAL_ERROR":
                raise BenchError(f"{command!r}: {msg['data']}")
    raise AssertionError("unreachable")


async def _console_runs(rpad: Rpad, agent: Agent, rounds: int, per_round: int,
                        mib: int) -> dict[str, Any]:
    admin = rpad.token("admin", "bench")
    await _wait_commands_on(rpad, admin, ["bench-host"])
    assert rpad.ws_url is not None
    rtt_p50: list[float] = []
    rtt_p99: list[float] = []
    agent_p50: list[float] = []
    throughput: list[float] = []
    rpad_cpu: list[float] = []
    agent_cpu: list[float] = []
    async with open_websocket_url(f"{rpad.ws_url}?token={admin}",
                                  max_message_size=MAX_MESSAGE_BYTES) as ws:
        assert (await _recv(ws))["type"] == "CONNECTION_ESTABLISHED"
        sid = await _open(ws, "bench-host")
        for _ in range(5):  # warm-up
            await _command(ws, sid, "true")
        for _ in range(rounds):
            runs = [await _command(ws, sid, "true") for _ in range(per_round)]
            times = sorted(r["round_trip_s"] * 1000 for r in runs)
            rtt_p50.append(percentile(times, 50))
            rtt_p99.append(percentile(times, 99))
            agent_p50.append(median([r["agent_ms"] for r in runs]))
            out = await _command(ws, sid, f"yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"
                                          f" | head -c {mib * 1024 * 1024}",
                                 (rpad.pid, agent.proc.pid))
            if out["bytes"] != mib * 1024 * 1024:
                raise BenchError(f"{out['bytes']} bytes of output, not {mib} MiB")
            throughput.append(out["bytes"] / 2**20 / out["stream_s"])
            rpad_cpu.append(out["cpu"][rpad.pid])
            agent_cpu.append(out["cpu"][agent.proc.pid])
    return {"commands": per_round * rounds, "rtt_p50_ms": median(rtt_p50),
            "rtt_p99_ms": median(rtt_p99), "agent_p50_ms": median(agent_p50), "output_mib": mib,
            "mib_per_s": median(throughput), "rpad_cpu": median(rpad_cpu),
            "agent_cpu": median(agent_cpu),
            "runs": {"rtt_p50": rtt_p50, "rtt_p99": rtt_p99, "mib_per_s": throughput}}


async def _task_runs(rpad: Rpad, n: int, repeats: int, work: Path) -> dict[str, Any]:
    from rpad.client import httpclient

    admin = rpad.token("admin", "bench")
    ids = [f"sim-{i:03d}" for i in range(n)]
    beats = {"heartbeats": [{"clientId": cid, "intervalSeconds": 3600} for cid in ids]}
    resp = await httpclient.request(
        "POST", f"{rpad.http_url}/api/v1/client/heartbeats", body=json.dumps(beats).encode(),
        headers={"Authorization": f"Bearer {rpad.token('service', 'bench')}",
                 "Content-Type": "application/json"}, timeout_seconds=30)
    if resp.status != 200:
        raise BenchError(f"registering the simulated agents: HTTP {resp.status}")
    tokens = work / "sim-tokens.json"
    tokens.write_text(json.dumps({cid: rpad.token("agent", cid) for cid in ids}))
    assert rpad.ws_url is not None
    control = urlsplit(rpad.ws_url)._replace(path="/api/v1/agent/ws").geturl()
    log_path = work / "sim-agents.log"
    with open(log_path, "wb") as log:
        sims = subprocess.Popen([PYTHON, str(BENCH_DIR / "console_agents.py"), control,
                                 str(tokens)], stdout=subprocess.PIPE, stderr=log,
                                env=rpad_env(), text=True)
    try:
        assert sims.stdout is not None
        line = sims.stdout.readline()
        if not line.startswith("ready"):
            raise BenchError(f"simulated agents did not start: {line}"
                             f"{log_path.read_text(errors='replace')[-2000:]}")
        await _wait_commands_on(rpad, admin, ids)
        results: dict[str, Any] = {}
        for concurrency in (n, max(1, n // 4)):
            walls: list[float] = []
            cpus: list[float] = []
            for _ in range(repeats):
                walls_cpu = await _one_task(rpad, admin, ids, concurrency)
                walls.append(walls_cpu[0])
                cpus.append(walls_cpu[1])
            results[f"c{concurrency}"] = {"concurrency": concurrency,
                                          "seconds": median(walls), "rpad_cpu_s": median(cpus),
                                          "runs": walls}
        return {"agents": n, **results}
    finally:
        stop_process(sims)
        assert sims.stdout is not None
        sims.stdout.close()


async def _one_task(rpad: Rpad, admin: str, ids: list[str],
                    concurrency: int) -> tuple[float, float]:
    from rpad.client import httpclient

    assert rpad.ws_url is not None
    async with open_websocket_url(f"{rpad.ws_url}?token={rpad.token('admin', 'watcher')}",
                                  max_message_size=MAX_MESSAGE_BYTES) as ws:
        assert (await _recv(ws))["type"] == "CONNECTION_ESTABLISHED"
        cpu0 = cpu_seconds(rpad.pid)
        t0 = time.perf_counter()
        body = {"clientIds": ids, "command": "true", "concurrency": concurrency}
        resp = await httpclient.request(
            "POST", f"{rpad.http_url}/api/v1/tasks", body=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
            timeout_seconds=30)
        if resp.status != 202:
            raise BenchError(f"POST /api/v1/tasks: HTTP {resp.status} {resp.body[:300]!r}")
        task = resp.json()
        await ws.send_message(json.dumps({"action": "subscribe", "topic": task["topic"],
                                          "since": 0}))
        while True:
            msg = await _recv(ws)
            if msg["type"] == "TASK_UPDATE" and msg["data"]["status"] not in ("pending",
                                                                               "running"):
                break
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(rpad.pid) - cpu0
        d = msg["data"]
        if (d["status"], d["completedDevices"]) != ("completed", len(ids)):
            raise BenchError(f"the task ended {d}")
        return wall, cpu


def run(quick: bool, work: Path, *, smoke: bool = False) -> dict[str, Any]:
    """Every measure; ``quick``: short runs; ``smoke``: tiny (for the tests: counts, not
    figures)."""
    rounds, per_round, mib = (1, 3, 1) if smoke else (3, 30, 4) if quick else (5, 200, OUTPUT_MIB)
    fleet, repeats = (5, 1) if smoke else (FLEET, 2) if quick else (FLEET, 5)
    out: dict[str, Any] = {}
    for name, window in (("console", DEFAULT_WINDOW_BYTES), ("wide", WIDE_WINDOW_BYTES)):
        if smoke and name == "wide":
            continue
        with Rpad(work / f"rpad-{name}", console_config(work / name, window)) as rpad:
            agent = Agent(rpad, work / f"agent-{name}", "bench-host")
            try:  # the agent's first heartbeat registers it (auto registration)
                out[name] = trio.run(_console_runs, rpad, agent, rounds, per_round, mib)
            finally:
                agent.close()
            out[name]["window_bytes"] = window
            if name == "console":
                out["tasks"] = trio.run(_task_runs, rpad, fleet, repeats, work)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rpad-bench-") as tmp:
        out = run(args.quick, Path(tmp))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
