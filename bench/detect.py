"""Time to detect (issue 14, point 5): from a silent client's deadline to its
``CLIENT_DISCONNECTED``, with 100,000 clients.

rpad runs in its own process with ``heartbeat_timeout_seconds = 30`` and the default
``check_interval_seconds = 30``. This process sends one heartbeat for each of N clients in
batches of 1000 spread over ``--spread`` seconds (so their deadlines are spread too), then
nothing: every client goes silent and must be marked offline at its own deadline. A WebSocket
subscriber (in this process, frame batching on) reads ``client_status``. Two figures per
client, percentiles over all of them:

- *deadline → event*: the event's time (its ``offlineSince``, rpad's clock, ms precision)
  minus the client's deadline (``lastHeartbeatAt + heartbeatTimeoutSeconds``, the same clock):
  how late rpad noticed;
- *deadline → dashboard*: when the subscriber read the event (this machine's wall clock) minus
  the deadline: what a dashboard sees, after the durable commit and the fan-out.

Each run starts a fresh rpad; the figures are the medians of the runs' percentiles.

    python bench/detect.py [--quick] [--clients 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path

import trio
import trio_websocket
from common import Rpad, median, percentile, rpad_config

from rpad.client import httpclient

TIMEOUT_SECONDS = 30.0
BATCH = 1000


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def one_run(clients: int, spread: float, workdir: Path) -> dict[str, float]:
    cfg = rpad_config(workdir / "state",
                      presence={"heartbeat_timeout_seconds": TIMEOUT_SECONDS,
                                "min_interval_seconds": 0},
                      websocket={"queue_size": 100_000, "history_size": 1000})
    with Rpad(workdir / "rpad", cfg) as rpad:
        assert rpad.ws_url is not None
        token = rpad.token("service", "bench-detect")
        viewer = rpad.token("viewer", "bench-detect-dash")
        url = rpad.http_url + "/api/v1/client/heartbeats"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        server: list[float] = []
        seen: list[float] = []
        done = trio.Event()

        async def subscriber(task_status: trio.TaskStatus[None]) -> None:
            async with trio_websocket.open_websocket_url(rpad.ws_url or "",
                                                         max_message_size=1 << 24) as ws:
                await ws.send_message(json.dumps({"action": "auth", "token": viewer,
                                                  "batch": True}))
                await ws.send_message(json.dumps({"action": "subscribe",
                                                  "topic": "client_status"}))
                task_status.started()
                while len(seen) < clients:
                    text = await ws.get_message()
                    now = time.time()
                    for line in str(text).splitlines():
                        msg = json.loads(line)
                        if msg.get("type") != "CLIENT_DISCONNECTED":
                            continue
                        d = msg["data"]
                        deadline = _epoch(d["lastHeartbeatAt"]) + d["heartbeatTimeoutSeconds"]
                        server.append(_epoch(d["offlineSince"]) - deadline)
                        seen.append(now - deadline)
                done.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(subscriber)
            batches = (clients + BATCH - 1) // BATCH
            start = trio.current_time()
            for b in range(batches):
                await trio.sleep_until(start + spread * b / max(1, batches))
                beats = [{"clientId": f"c{b}-{i}"} for i in range(min(BATCH, clients - b * BATCH))]
                resp = await httpclient.request("POST", url, body=json.dumps(
                    {"heartbeats": beats}).encode(), headers=headers, timeout_seconds=60)
                assert resp.status == 200, resp.status
            with trio.fail_after(TIMEOUT_SECONDS + spread + 120):
                await done.wait()
            nursery.cancel_scope.cancel()
    server.sort()
    seen.sort()
    out: dict[str, float] = {}
    for name, values in (("event", server), ("dashboard", seen)):
        for p in (50, 99):
            out[f"{name}_p{p}_ms"] = 1000 * percentile(values, p)
        out[f"{name}_max_ms"] = 1000 * values[-1]
    return out


def run(clients: int, runs: int, spread: float) -> dict[str, float]:
    results = []
    for i in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            r = trio.run(one_run, clients, spread, Path(tmp))
        print(f"  run {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()), flush=True)
        results.append(r)
    return {k: median([r[k] for r in results]) for k in results[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--spread", type=float, default=20.0, help="seconds over which the "
                    "heartbeats (and so the deadlines) are spread")
    ap.add_argument("--quick", action="store_true", help="10,000 clients, one run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.clients, args.runs = 10_000, 1
    print(f"detection latency: {args.clients} clients, deadlines spread over {args.spread:g} s, "
          f"timeout {TIMEOUT_SECONDS:g} s, {args.runs} runs", flush=True)
    result = run(args.clients, args.runs, args.spread)
    if args.json:
        print(json.dumps(result))
    print("median of runs: deadline → event p50 {event_p50_ms:.1f} ms, p99 {event_p99_ms:.1f} "
          "ms, max {event_max_ms:.1f} ms; deadline → dashboard p50 {dashboard_p50_ms:.1f} ms, "
          "p99 {dashboard_p99_ms:.1f} ms, max {dashboard_max_ms:.1f} ms".format(**result))


if __name__ == "__main__":
    main()
