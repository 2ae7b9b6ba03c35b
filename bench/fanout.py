"""Fan-out: events delivered per second to N WebSocket subscribers, rpad's hub next to the floor
of its layer and to another library, side by side.

Servers, each in its own process:
- ``rpad``: the daemon (bench/rpad_serve.py: ``rpad serve`` without the hub's flood guard on
  client messages); subscribers subscribe to an app topic; the publisher sends the hub's
  ``publish`` action (an admin token; its connection batches the PUBLISHED answers) — rpad
  wraps each event in its envelope, keeps it in the topic's history and fans it out through
  every subscriber's queue;
- ``rpad-batch``: the same daemon, with subscribers that asked for frame batching at auth;
- ``trio``: a bare trio-websocket send loop (bench/ws_servers.py) — the floor of rpad's layer;
- ``websockets``: the ``websockets`` library's ``broadcast()`` (asyncio; bench/ws_servers.py).

Load, in other processes: subscriber processes (bench/wsload.py: plain sockets and epoll, far
cheaper per message than any of the servers) and the publisher (this process). The publisher
keeps at most ``WINDOW`` events in flight beyond the slowest subscriber, so no queue overflows
and nothing is dropped; every subscriber must receive every event (checked). The figure is
events × subscribers / time from the first publish to the last delivery. CPU shares show the
server was the busy side.

    python bench/fanout.py [--quick] [--subscribers 100 1000] [--kinds rpad trio ...]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import wsload
from common import BENCH_DIR, PYTHON, CpuWindow, Rpad, Server, median, rpad_config

WINDOW = 200
TOPIC = "bench.fanout"
NOTE = "x" * 80
DRAIN_TIMEOUT_SECONDS = 60.0
ALL_KINDS = ("trio", "websockets", "rpad", "rpad-batch")


def bench_rpad_config(state: Path) -> dict[str, Any]:
    return rpad_config(state, websocket={"max_connections_per_user": 100_000})


class Session:
    """A server with ``subscribers`` connections held open by subscriber processes, and a
    publisher connection; :meth:`measure` runs one timed burst."""

    def __init__(self, kind: str, sub_url: str, pub_url: str, subscribers: int,
                 subscribe: dict[str, Any] | None, server_pid: int) -> None:
        self.kind = kind
        self.topic = f"{TOPIC}.{kind}.{subscribers}"
        self.subscribers = subscribers
        self.server_pid = server_pid
        self.procs = 2
        ctx = multiprocessing.get_context("fork")
        self.shared: Any = ctx.Array("q", wsload.SLOTS * self.procs, lock=False)
        self.stop: Any = ctx.Value("b", 0, lock=False)
        per = [subscribers // self.procs + (1 if i < subscribers % self.procs else 0)
               for i in range(self.procs)]
        needle = b'"SUBSCRIBED"'
        self.workers = [ctx.Process(target=wsload.subscriber_main, daemon=True, args=(
            i, sub_url, per[i], subscribe, needle, self.shared, self.stop, 3600.0))
            for i in range(self.procs)]
        for w in self.workers:
            w.start()
        deadline = time.monotonic() + 120
        while sum(self.shared[wsload.SLOTS * i] for i in range(self.procs)) < subscribers:
            if time.monotonic() > deadline or any(not w.is_alive() for w in self.workers):
                raise RuntimeError(f"{kind}: subscribers did not all connect")
            time.sleep(0.05)
        sock, rest = wsload.connect(pub_url)
        self.pub = wsload.Conn(sock, rest)
        if kind.startswith("rpad"):
            self.pub.read_until(b"CONNECTION_ESTABLISHED", 30)
        self.seq = 0
        # The publisher's socket is read all the time (rpad answers each publish, and pings:
        # an unanswered ping closes the connection), by a thread; writes take the lock.
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.reader = threading.Thread(target=self._read_publisher, daemon=True)
        self.reader.start()

    def _read_publisher(self) -> None:
        while not self.done.is_set() and not self.pub.closed:
            if wsload.wait_readable(self.pub.sock, 0.05):
                with self.lock:
                    self.pub.receive()

    def _frame(self, seq: int) -> bytes:
        if self.kind.startswith("rpad"):
            text = json.dumps({"action": "publish", "topic": self.topic, "type": "BENCH",
                               "data": {"n": seq, "note": NOTE}}, separators=(",", ":"))
        else:  # the envelope rpad would send, as it is
            text = json.dumps({"type": "BENCH", "topic": self.topic, "seq": seq,
                               "ts": "2026-01-01T00:00:00.000Z",
                               "data": {"n": seq, "note": NOTE}}, separators=(",", ":"))
        return wsload.client_frame(text.encode())

    def _lowest(self) -> int:
        return min(self.shared[wsload.SLOTS * i + 1] for i in range(self.procs))

    def measure(self, events: int) -> dict[str, Any]:
        start_seq = self.seq
        target = start_seq + events
        frames = [self._frame(s) for s in range(start_seq + 1, target + 1)]
        window = CpuWindow([self.server_pid, *[w.pid for w in self.workers]])
        window.start()
        t0 = time.monotonic()
        sent = start_seq
        lowest = self._lowest()
        while lowest < target:
            room = min(target - sent, WINDOW - (sent - lowest))
            if room > 0:
                with self.lock:
                    self.pub.sock.setblocking(True)
                    try:
                        self.pub.sock.sendall(
                            b"".join(frames[sent - start_seq:sent - start_seq + room]))
                    finally:
                        self.pub.sock.setblocking(False)
                sent += room
            if self.pub.closed:
                raise RuntimeError(f"{self.kind}: the publisher's connection: {self.pub.closed}")
            if time.monotonic() - t0 > DRAIN_TIMEOUT_SECONDS:
                raise RuntimeError(f"{self.kind}: stalled at seq {lowest} of {target}")
            time.sleep(0.0002)
            lowest = self._lowest()
        elapsed = time.monotonic() - t0
        window.stop()
        self.seq = target
        cpu_load = sum(window.percent(w.pid) for w in self.workers)
        return {"events": events, "seconds": elapsed,
                "deliveries_per_second": events * self.subscribers / elapsed,
                "events_per_second": events / elapsed,
                "server_cpu": window.percent(self.server_pid), "load_cpu": cpu_load,
                "server_system_share": window.system_share(self.server_pid),
                "server_cpu_us_per_delivery": window.percent(self.server_pid) / 100 * elapsed
                / (events * self.subscribers) * 1e6}

    def close(self) -> dict[str, int]:
        self.done.set()
        self.reader.join(5)
        self.stop.value = 1
        for w in self.workers:
            w.join(30)
        self.pub.sock.close()
        return {"messages": sum(self.shared[wsload.SLOTS * i + 2] for i in range(self.procs)),
                "frames": sum(self.shared[wsload.SLOTS * i + 3] for i in range(self.procs))}


def run(quick: bool, subscriber_counts: list[int], kinds: list[str],
        work: Path) -> dict[str, Any]:
    runs = 1 if quick else 5
    budget = 60_000 if quick else 300_000  # deliveries per measured run
    results: dict[str, Any] = {}
    servers: dict[str, Server] = {}
    try:
        if "rpad" in kinds or "rpad-batch" in kinds:
            servers["rpad"] = Rpad(work / "fanout-rpad", bench_rpad_config(work / "fanout-state"),
                                   lift_message_limit=True)
        for name in ("trio", "websockets"):
            if name in kinds:
                servers[name] = Server([PYTHON, str(BENCH_DIR / "ws_servers.py"), name],
                                       work / f"fanout-{name}.log",
                                       r"listening on (?P<url>ws://\S+)")
        for s in servers.values():
            s.__enter__()
        for subs in subscriber_counts:
            sessions: dict[str, Session] = {}
            for kind in kinds:
                if kind.startswith("rpad"):
                    rpad = servers["rpad"]
                    assert isinstance(rpad, Rpad) and rpad.ws_url is not None
                    viewer = rpad.token("viewer", "bench-viewer", topics=["bench.*"])
                    admin = rpad.token("admin", "bench-publisher")
                    extra = "&batch=1" if kind == "rpad-batch" else ""
                    sessions[kind] = Session(
                        kind, f"{rpad.ws_url}?token={viewer}{extra}",
                        f"{rpad.ws_url}?token={admin}&batch=1", subs,
                        {"action": "subscribe", "topic": f"{TOPIC}.{kind}.{subs}"}, rpad.pid)
                else:
                    url = servers[kind].group("url")
                    sessions[kind] = Session(kind, f"{url}/sub", f"{url}/pub", subs, None,
                                             servers[kind].pid)
            events = max(50, budget // subs)
            for s in sessions.values():  # warm-up
                s.measure(max(20, events // 5))
            samples: dict[str, list[dict[str, Any]]] = {k: [] for k in sessions}
            for _ in range(runs):
                for kind, s in sessions.items():
                    samples[kind].append(s.measure(events))
            for kind, s in sessions.items():
                totals = s.close()
                expected = s.seq * subs
                results[f"{kind}/{subs}"] = {
                    "kind": kind, "subscribers": subs, "runs": samples[kind],
                    "deliveries_per_second": median(
                        [r["deliveries_per_second"] for r in samples[kind]]),
                    "server_cpu": median([r["server_cpu"] for r in samples[kind]]),
                    "server_system_share": median(
                        [r["server_system_share"] for r in samples[kind]]),
                    "server_cpu_us_per_delivery": median(
                        [r["server_cpu_us_per_delivery"] for r in samples[kind]]),
                    "load_cpu": median([r["load_cpu"] for r in samples[kind]]),
                    "delivered": totals["messages"], "expected": expected,
                    "frames": totals["frames"],
                }
    finally:
        for s in servers.values():
            s.__exit__(None, None, None)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--subscribers", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--kinds", nargs="+", default=list(ALL_KINDS), choices=ALL_KINDS)
    parser.add_argument("--workdir", type=Path, help="keep logs and state here")
    args = parser.parse_args()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        out = run(args.quick, args.subscribers, args.kinds, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="rpad-bench-") as tmp:
            out = run(args.quick, args.subscribers, args.kinds, Path(tmp))
    for key, r in out.items():
        print(f"{key:22s} {r['deliveries_per_second']:>10,.0f}/s  server cpu "
              f"{r['server_cpu']:.0f}% ({r['server_cpu_us_per_delivery']:.1f} us/delivery, "
              f"{r['server_system_share']:.0%} in kernel)  load cpu {r['load_cpu']:.0f}%  "
              "delivered "
              f"{r['delivered']}/{r['expected']} in {r['frames']} frames")


if __name__ == "__main__":
    main()
