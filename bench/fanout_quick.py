"""WebSocket fan-out, quickly: rpad in its own process, real WebSocket subscribers (trio-websocket)
in this one, loopback only, bounded runs.

1. Fan-out throughput: ``--subscribers`` connections subscribe to one app topic; one admin
   connection publishes with the WebSocket ``publish`` action in batches of ``--batch`` events,
   sending a batch once every subscriber has the one two batches back (a closed loop, so no
   queue overflows and nothing is dropped). Figure: events delivered per
   second to all subscribers together, with the CPU share of rpad and of this process, so the
   bottleneck is visible. Every subscriber checks it got every seq in order. rpad runs as
   bench/rpad_serve.py, without the hub's flood guard on client messages (the publisher sends
   far more than 50 a second on its one connection); everything else is ``rpad serve``.
2. Heartbeat-to-subscriber latency: ``--rate`` heartbeats per second over HTTP (one request
   each, keep-alive, distinct client ids registered beforehand) from this process while
   ``--subscribers`` connections in ``--subscriber-processes`` worker processes listen on
   ``heartbeat``. Latency is the time from sending a heartbeat request to its
   HEARTBEAT_RECEIVED arriving at a subscriber (CLOCK_MONOTONIC, shared by the processes), for
   every (heartbeat, subscriber) pair: median and 99th percentile. It includes the HTTP
   request, the group commit (``storage.commit_interval_ms``, default 10 ms) and the fan-out.

    python bench/fanout_quick.py [--subscribers 100] [--events 20000] [--rate 300] [--seconds 10]
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

import httpx
import trio
from common import CpuWindow, Rpad, percentile, rpad_config, rss_bytes
from trio_websocket import WebSocketConnection, open_websocket_url

TOPIC = "bench.fanout"
REGISTER_BATCH = 100
# The fan-out publisher sends batch b once every subscriber has batch b - 2: both sides stay
# busy, and no queue holds more than two batches (200 messages, under queue_size 256).
BATCHES_IN_FLIGHT = 2
# How long the latency subscribers keep listening after the last heartbeat was sent.
LATENCY_DRAIN_SECONDS = 3.0
MAX_IN_FLIGHT_HEARTBEATS = 64
# A run that takes longer than this is reported as failed rather than left hanging.
RUN_TIMEOUT_SECONDS = 600.0


def _client_id(raw: str) -> str:
    """The data.clientId of a HEARTBEAT_RECEIVED envelope, without parsing the JSON."""
    i = raw.index('"clientId":"') + 12
    return raw[i:raw.index('"', i)]


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
    # Batch b ends with seq ends[b]; done[b] is set once every subscriber has it.
    ends = list(range(batch, events, batch)) + [events]
    remaining = {end: subscribers for end in ends}
    done = {end: trio.Event() for end in ends}

    async def subscriber(i: int, ready: trio.Event) -> None:
        nonlocal out_of_order
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
                if seq in remaining:
                    remaining[seq] -= 1
                    if remaining[seq] == 0:
                        done[seq].set()

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
            for b, end in enumerate(ends):
                if b >= BATCHES_IN_FLIGHT:  # keep every queue under 2 batches (< queue_size)
                    await done[ends[b - BATCHES_IN_FLIGHT]].wait()
                while sent < end:
                    await pub.send_message(frame)
                    sent += 1
            await done[events].wait()
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


async def latency(rpad: Rpad, subscribers: int, rate: float, seconds: float,
                  processes: int) -> dict[str, Any]:
    with trio.fail_after(RUN_TIMEOUT_SECONDS):
        return await _latency(rpad, subscribers, rate, seconds, processes)


async def _latency(rpad: Rpad, subscribers: int, rate: float, seconds: float,
                   processes: int) -> dict[str, Any]:
    """Heartbeats from this process, subscribers in ``processes`` worker processes (one Python
    process cannot read tens of thousands of frames a second and drive the load too). Times
    are CLOCK_MONOTONIC, which all processes on the machine share."""
    assert rpad.ws_url is not None
    viewer = rpad.token("viewer", "bench-viewer")
    service = {"Authorization": f"Bearer {rpad.token('service', 'bench-gateway')}"}
    total = int(rate * seconds)
    ids = [f"lat-{i:05d}" for i in range(total)]  # one heartbeat per id: no ambiguity
    sent_at: dict[str, float] = {}
    status_counts: dict[int, int] = {}
    listen_seconds = seconds + LATENCY_DRAIN_SECONDS

    async with httpx.AsyncClient(base_url=rpad.http_url, headers=service,
                                 timeout=30) as http:
        for i in range(0, len(ids), REGISTER_BATCH):  # warm-up: every id known beforehand
            r = await http.post("/api/v1/client/heartbeats", json={
                "heartbeats": [{"clientId": c} for c in ids[i:i + REGISTER_BATCH]]})
            r.raise_for_status()
        await trio.sleep(1.1)  # presence.min_interval_seconds

        shares = [subscribers // processes + (1 if k < subscribers % processes else 0)
                  for k in range(processes)]
        workers = [await trio.lowlevel.open_process(
            [sys.executable, __file__, "--subscriber-worker", rpad.ws_url, viewer, str(n),
             str(listen_seconds)], stdout=subprocess.PIPE) for n in shares]
        outputs: list[bytes] = [b""] * len(workers)

        async def read_all(k: int) -> None:
            stream = workers[k].stdout
            assert stream is not None
            while chunk := await stream.receive_some(1 << 16):
                outputs[k] += chunk

        limiter = trio.CapacityLimiter(MAX_IN_FLIGHT_HEARTBEATS)

        async def beat(cid: str) -> None:
            async with limiter:
                sent_at[cid] = time.monotonic()
                r = await http.post("/api/v1/client/heartbeat", json={"clientId": cid})
                status_counts[r.status_code] = status_counts.get(r.status_code, 0) + 1

        async with trio.open_nursery() as nursery:
            for k in range(len(workers)):
                nursery.start_soon(read_all, k)
            # Each worker prints "ready" once all its subscribers are subscribed.
            while sum(o.count(b"ready\n") for o in outputs) < len(workers):
                await trio.sleep(0.05)
            window = CpuWindow([rpad.pid, os.getpid(), *(w.pid for w in workers)])
            window.start()
            t0 = time.monotonic()
            start = trio.current_time()  # trio's clock has its own origin
            async with trio.open_nursery() as beats:
                for k in range(total):
                    await trio.sleep_until(start + k / rate)
                    beats.start_soon(beat, ids[k])
            achieved = total / (time.monotonic() - t0)
            await trio.sleep(1.0)
            window.stop()
            wall = time.monotonic() - t0
        for w in workers:
            await w.wait()

    samples: list[float] = []
    worker_cpu = 0.0
    for w, out in zip(workers, outputs):
        worker_cpu += window.percent(w.pid)
        for line in out.decode().splitlines():
            if line == "ready":
                continue
            cid, _, received = line.partition(" ")
            samples.append(float(received) - sent_at[cid])
    samples.sort()
    return {
        "subscribers": subscribers,
        "subscriber_processes": processes,
        "heartbeats": total,
        "heartbeats_per_second": round(achieved),
        "http_status": status_counts,
        "deliveries": len(samples),
        "expected_deliveries": total * subscribers,
        "latency_ms_median": round(percentile(samples, 50) * 1000, 2),
        "latency_ms_p99": round(percentile(samples, 99) * 1000, 2),
        "latency_ms_max": round(samples[-1] * 1000, 2) if samples else None,
        "cpu_percent_rpad": round(window.percent(rpad.pid)),
        "cpu_percent_load_generator": round(window.percent(os.getpid())),
        "cpu_percent_subscriber_processes": round(worker_cpu),
        "rpad_cpu_ms_per_heartbeat_with_fanout": round(
            window.percent(rpad.pid) / 100 * wall / total * 1e3, 3),
    }


async def subscriber_worker(url: str, token: str, n: int, listen_seconds: float) -> None:
    """``n`` subscribers on ``heartbeat``; prints ``ready``, then after ``listen_seconds`` one
    line ``<clientId> <CLOCK_MONOTONIC at receipt>`` per message received."""
    received: list[tuple[str, float]] = []

    async def one(ready: trio.Event) -> None:
        async with open_websocket_url(f"{url}?token={token}", message_queue_size=1024) as ws:
            await _established(ws)
            await _subscribe(ws, "heartbeat")
            ready.set()
            while True:
                raw = await ws.get_message()
                received.append((_client_id(raw), time.monotonic()))

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            ready = trio.Event()
            nursery.start_soon(one, ready)
            await ready.wait()
        print("ready", flush=True)
        await trio.sleep(listen_seconds)
        nursery.cancel_scope.cancel()
    sys.stdout.write("".join(f"{cid} {t!r}\n" for cid, t in received))
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--latency-subscribers", type=int, default=None,
                        help="subscribers for the latency run (default: --subscribers)")
    parser.add_argument("--subscriber-processes", type=int, default=2,
                        help="worker processes holding the latency run's subscribers")
    parser.add_argument("--subscriber-worker", nargs=4, default=None, help=argparse.SUPPRESS,
                        metavar=("URL", "TOKEN", "N", "SECONDS"))
    args = parser.parse_args()
    if args.subscriber_worker is not None:
        url, token, n, listen = args.subscriber_worker
        trio.run(subscriber_worker, url, token, int(n), float(listen))
        return
    with tempfile.TemporaryDirectory(prefix="rpad-fanout-") as tmp:
        cfg = rpad_config(Path(tmp) / "state",
                          websocket={"max_connections_per_user": 1000,
                                     "ping_interval_seconds": 3600.0,
                                     "pong_timeout_seconds": 7200.0},
                          push={"stats_interval_seconds": 3600.0})
        with Rpad(Path(tmp), cfg, lift_message_limit=True) as rpad:
            results: dict[str, Any] = {"load_average_before": os.getloadavg()}
            results["fanout"] = trio.run(fanout, rpad, args.subscribers, args.events,
                                         args.batch)
            results["latency"] = trio.run(
                latency, rpad, args.latency_subscribers or args.subscribers, args.rate,
                args.seconds, args.subscriber_processes)
            results["rpad_rss_mib"] = round(rss_bytes(rpad.pid) / 2**20, 1)
            results["load_average_after"] = os.getloadavg()
    results["cpus"] = os.cpu_count()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
