"""WebSocket fan-out, quickly: rpad in its own process, real WebSocket subscribers (trio-websocket)
in this one, loopback only, bounded runs.

1. Fan-out throughput: ``--subscribers`` connections subscribe to one app topic; one admin
   connection publishes with the WebSocket ``publish`` action in batches of ``--batch`` events
   and waits until every subscriber has the batch's last event before sending the next (a
   closed loop, so no queue overflows and nothing is dropped). Figure: events delivered per
   second to all subscribers together, with the CPU share of rpad and of this process, so the
   bottleneck is visible. Every subscriber checks it got every seq in order.
2. Heartbeat-to-subscriber latency: ``--rate`` heartbeats per second over HTTP (one request
   each, keep-alive, distinct client ids registered beforehand) while ``--subscribers``
   connections listen on ``heartbeat``. Latency is the time from sending a heartbeat request to
   its HEARTBEAT_RECEIVED arriving at a subscriber, on this process's monotonic clock, for
   every (heartbeat, subscriber) pair: median and 99th percentile. It includes the HTTP
   request, the group commit (``storage.commit_interval_ms``, default 10 ms) and the fan-out.

    python bench/fanout_quick.py [--subscribers 100] [--events 20000] [--rate 300] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio
from common import CpuWindow, Rpad, percentile, rpad_config, rss_bytes
from trio_websocket import WebSocketConnection, open_websocket_url

TOPIC = "bench.fanout"
LATENCY_CLIENT_IDS = 2000
REGISTER_BATCH = 100
MAX_IN_FLIGHT_HEARTBEATS = 64
# A run that takes longer than this is reported as failed rather than left hanging.
RUN_TIMEOUT_SECONDS = 600.0


def _seq(raw: str) -> int:
    """The seq of an envelope without parsing the whole JSON (its shape is fixed)."""
    i = raw.index('"seq":') + 6
    return int(raw[i:raw.index(",", i)])


async def _established(ws: WebSocketConnection) -> None:
    msg = json.loads(await ws.get_message())
    assert msg["type"] == "CONNECTION_ESTABLISHED", msg


async def _subscribe(ws: WebSocketConnection, topic: str) -> None:
    await ws.send_message(json.dumps({"action": "subscribe", "topic": topic}))
    while True:
        msg = json.loads(await ws.get_message())
        if msg["type"] == "SUBSCRIBED":
            return
        assert msg["type"] != "ERROR", msg


async def fanout(rpad: Rpad, subscribers: int, events: int, batch: int) -> dict[str, Any]:
    with trio.fail_after(RUN_TIMEOUT_SECONDS):
        return await _fanout(rpad, subscribers, events, batch)


async def _fanout(rpad: Rpad, subscribers: int, events: int, batch: int) -> dict[str, Any]:
    assert rpad.ws_url is not None
    viewer = rpad.token("viewer", "bench-viewer", topics=["bench.*"])
    admin = rpad.token("admin", "bench-publisher")
    reached = [0] * subscribers
    out_of_order = 0
    target = 0
    caught_up = trio.Event()
    waiting = subscribers

    async def subscriber(i: int, ready: trio.Event) -> None:
        nonlocal out_of_order, waiting, caught_up
        async with open_websocket_url(f"{rpad.ws_url}?token={viewer}",
                                      message_queue_size=1024) as ws:
            await _established(ws)
            await _subscribe(ws, TOPIC)
            ready.set()
            while reached[i] < events:
                seq = _seq(await ws.get_message())
                if seq != reached[i] + 1:
                    out_of_order += 1
                reached[i] = seq
                if seq == target:
                    waiting -= 1
                    if waiting == 0:
                        caught_up.set()

    async with trio.open_nursery() as nursery:
        for i in range(subscribers):
            ready = trio.Event()
            nursery.start_soon(subscriber, i, ready)
            await ready.wait()
        async with open_websocket_url(f"{rpad.ws_url}?token={admin}",
                                      message_queue_size=4096) as pub:
            await _established(pub)
            acks = 0

            async def read_acks() -> None:
                # The publisher must read its PUBLISHED answers, or the hub closes it (4008).
                nonlocal acks
                while True:
                    await pub.get_message()
                    acks += 1

            nursery.start_soon(read_acks)
            frame = json.dumps({"action": "publish", "topic": TOPIC, "type": "BENCH",
                                "data": {"note": "x" * 64}})
            window = CpuWindow([rpad.pid, os.getpid()])
            window.start()
            t0 = time.monotonic()
            sent = 0
            while sent < events:
                n = min(batch, events - sent)
                target, waiting, caught_up = sent + n, subscribers, trio.Event()
                for _ in range(n):
                    await pub.send_message(frame)
                sent += n
                await caught_up.wait()
            elapsed = time.monotonic() - t0
            window.stop()
            nursery.cancel_scope.cancel()
    return {
        "subscribers": subscribers,
        "events": events,
        "batch": batch,
        "seconds": round(elapsed, 3),
        "events_per_second": round(events / elapsed),
        "deliveries_per_second": round(events * subscribers / elapsed),
        "out_of_order": out_of_order,
        "cpu_percent_rpad": round(window.percent(rpad.pid)),
        "cpu_percent_subscribers_and_publisher": round(window.percent(os.getpid())),
        # rpad's CPU time per delivered message: independent of how much of a core rpad got.
        "rpad_cpu_us_per_delivery": round(
            window.percent(rpad.pid) / 100 * elapsed / (events * subscribers) * 1e6, 2),
    }


async def latency(rpad: Rpad, subscribers: int, rate: float, seconds: float) -> dict[str, Any]:
    with trio.fail_after(RUN_TIMEOUT_SECONDS):
        return await _latency(rpad, subscribers, rate, seconds)


async def _latency(rpad: Rpad, subscribers: int, rate: float, seconds: float) -> dict[str, Any]:
    assert rpad.ws_url is not None
    viewer = rpad.token("viewer", "bench-viewer")
    service = {"Authorization": f"Bearer {rpad.token('service', 'bench-gateway')}"}
    ids = [f"lat-{i:05d}" for i in range(LATENCY_CLIENT_IDS)]
    sent_at: dict[str, float] = {}
    samples: list[float] = []
    done = trio.Event()

    async with httpx.AsyncClient(base_url=rpad.http_url, headers=service,
                                 timeout=30) as http:
        for i in range(0, len(ids), REGISTER_BATCH):  # warm-up: every id known beforehand
            r = await http.post("/api/v1/client/heartbeats", json={
                "heartbeats": [{"clientId": c} for c in ids[i:i + REGISTER_BATCH]]})
            r.raise_for_status()
        await trio.sleep(1.1)  # presence.min_interval_seconds

        async def subscriber(ready: trio.Event) -> None:
            async with open_websocket_url(f"{rpad.ws_url}?token={viewer}",
                                          message_queue_size=1024) as ws:
                await _established(ws)
                await _subscribe(ws, "heartbeat")
                ready.set()
                while not done.is_set():
                    with trio.move_on_after(1.0):
                        raw = await ws.get_message()
                        now = time.monotonic()
                        cid = json.loads(raw)["data"]["clientId"]
                        t = sent_at.get(cid)
                        if t is not None:
                            samples.append(now - t)

        status_counts: dict[int, int] = {}
        limiter = trio.CapacityLimiter(MAX_IN_FLIGHT_HEARTBEATS)

        async def beat(cid: str) -> None:
            async with limiter:
                sent_at[cid] = time.monotonic()
                r = await http.post("/api/v1/client/heartbeat", json={"clientId": cid})
                status_counts[r.status_code] = status_counts.get(r.status_code, 0) + 1

        async with trio.open_nursery() as nursery:
            for _ in range(subscribers):
                ready = trio.Event()
                nursery.start_soon(subscriber, ready)
                await ready.wait()
            window = CpuWindow([rpad.pid, os.getpid()])
            window.start()
            total = int(rate * seconds)
            t0 = time.monotonic()
            async with trio.open_nursery() as beats:
                for k in range(total):
                    await trio.sleep_until(t0 + k / rate)
                    beats.start_soon(beat, ids[k % len(ids)])
            achieved = total / (time.monotonic() - t0)
            await trio.sleep(1.0)  # the last ones arrive
            window.stop()
            wall = time.monotonic() - t0
            done.set()
    samples.sort()
    return {
        "subscribers": subscribers,
        "heartbeats": total,
        "heartbeats_per_second": round(achieved),
        "http_status": status_counts,
        "deliveries": len(samples),
        "expected_deliveries": total * subscribers,
        "latency_ms_median": round(percentile(samples, 50) * 1000, 2),
        "latency_ms_p99": round(percentile(samples, 99) * 1000, 2),
        "latency_ms_max": round(samples[-1] * 1000, 2) if samples else None,
        "cpu_percent_rpad": round(window.percent(rpad.pid)),
        "cpu_percent_load_and_subscribers": round(window.percent(os.getpid())),
        "rpad_cpu_ms_per_heartbeat_with_fanout": round(
            window.percent(rpad.pid) / 100 * wall / total * 1e3, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--latency-subscribers", type=int, default=None,
                        help="subscribers for the latency run (default: --subscribers)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rpad-fanout-") as tmp:
        cfg = rpad_config(Path(tmp) / "state",
                          websocket={"max_connections_per_user": 1000,
                                     "ping_interval_seconds": 3600.0,
                                     "pong_timeout_seconds": 7200.0},
                          push={"stats_interval_seconds": 3600.0})
        with Rpad(Path(tmp), cfg) as rpad:
            results: dict[str, Any] = {"load_average_before": os.getloadavg()}
            results["fanout"] = trio.run(fanout, rpad, args.subscribers, args.events,
                                         args.batch)
            results["latency"] = trio.run(
                latency, rpad, args.latency_subscribers or args.subscribers, args.rate,
                args.seconds)
            results["rpad_rss_mib"] = round(rss_bytes(rpad.pid) / 2**20, 1)
            results["load_average_after"] = os.getloadavg()
    results["cpus"] = os.cpu_count()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
