"""Latency: a heartbeat accepted over HTTP → its ``HEARTBEAT_RECEIVED`` at each of 100 WebSocket
subscribers, at a steady 300 heartbeats per second.

rpad runs in its own process; the 100 subscribers (topic ``heartbeat``) in a subscriber process
(bench/wsload.py); the heartbeats come from this process, open loop (each sent at its scheduled
time, whatever the answers do) over keep-alive connections. Each heartbeat names its own client
id, so every delivery is matched to its heartbeat. Two figures per delivery:

- *accepted → received*: from the server's receipt of the heartbeat (the event's
  ``receivedAt``, wall clock, ms precision) to the subscriber reading it (wall clock, the same
  machine). Includes the durable group commit (a heartbeat is published once committed).
- *sent → received*: from this process sending the request to the subscriber reading the event
  (monotonic clock, shared by all processes of the machine); adds the HTTP request itself.

Percentiles are over every (heartbeat, subscriber) pair of a run; the figure is the median of
the runs' percentiles. Runs alternate between plain subscribers and subscribers that asked for
frame batching (as the dashboard does), whose events wait up to the hub's batching delay.

    python bench/latency.py [--quick] [--rate 300] [--subscribers 100]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import select
import socket
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import wsload
from common import CpuWindow, Rpad, median, percentile, rpad_config

CONNECTIONS = 32
REGISTER_BATCH = 500


class HttpSender:
    """Open-loop heartbeats over ``CONNECTIONS`` keep-alive sockets, epoll, no library."""

    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        self.addr = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.host = f"{self.addr[0]}:{self.addr[1]}"
        self.token = token
        self.socks = [socket.create_connection(self.addr) for _ in range(CONNECTIONS)]
        for s in self.socks:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)

    def request(self, path: str, body: bytes) -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    def run(self, items: list[tuple[str, bytes]],
            rate: float) -> dict[str, tuple[float, float, int]]:
        """Send ``items`` (id, request bytes) at ``rate`` per second; returns id → (sent,
        answered, status) on the monotonic clock."""
        ep = select.epoll()
        free = list(self.socks)
        busy: dict[int, tuple[socket.socket, str, bytes]] = {}
        for s in self.socks:
            ep.register(s.fileno(), select.EPOLLIN)
        out: dict[str, tuple[float, float, int]] = {}
        sent_at: dict[str, float] = {}
        backlog: list[tuple[str, bytes]] = []
        t0 = time.monotonic()
        k = 0
        while len(out) < len(items):
            now = time.monotonic()
            while k < len(items) and t0 + k / rate <= now:
                backlog.append(items[k])
                k += 1
            while backlog and free:
                cid, req = backlog.pop(0)
                s = free.pop()
                sent_at[cid] = time.monotonic()
                s.sendall(req)
                busy[s.fileno()] = (s, cid, b"")
            timeout = max(0.0, t0 + k / rate - time.monotonic()) if k < len(items) else 1.0
            for fd, _ in ep.poll(min(timeout, 0.05)):
                if fd not in busy:  # an idle connection closed by the server: replace it
                    idle = next(x for x in free if x.fileno() == fd)
                    free.remove(idle)
                    free.append(self._replace(ep, idle))
                    continue
                s, cid, buf = busy[fd]
                data = s.recv(65536)
                if not data:
                    raise RuntimeError("rpad closed a keep-alive connection mid-request")
                buf += data
                head, sep, body = buf.partition(b"\r\n\r\n")
                if not sep:
                    busy[fd] = (s, cid, buf)
                    continue
                length, closing = 0, False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        closing = True  # Hypercorn's keep_alive_max_requests
                if len(body) < length:
                    busy[fd] = (s, cid, buf)
                    continue
                status = int(head.split(b" ", 2)[1])
                out[cid] = (sent_at[cid], time.monotonic(), status)
                del busy[fd]
                free.append(self._replace(ep, s) if closing else s)
        ep.close()
        return out

    def _replace(self, ep: select.epoll, old: socket.socket) -> socket.socket:
        ep.unregister(old.fileno())
        self.socks.remove(old)
        old.close()
        new = socket.create_connection(self.addr)
        new.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        new.setblocking(False)
        self.socks.append(new)
        ep.register(new.fileno(), select.EPOLLIN)
        return new

    def close(self) -> None:
        for s in self.socks:
            s.close()


def _heartbeat(cid: str) -> bytes:
    return json.dumps({"clientId": cid, "status": "online", "version": "1.4.2",
                       "intervalSeconds": 30, "metrics": {"cpuUsagePercent": 12.5,
                                                          "load1": 0.42}},
                      separators=(",", ":")).encode()


def _epoch(iso_text: str) -> float:
    return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()


def one_run(rpad: Rpad, sender: HttpSender, ids: list[str], rate: float, subscribers: int,
            work: Path, run: int, batch: bool) -> dict[str, Any]:
    assert rpad.ws_url is not None
    viewer = rpad.token("viewer", "bench-latency")
    ctx = multiprocessing.get_context("fork")
    shared: Any = ctx.Array("q", wsload.SLOTS, lock=False)
    stop: Any = ctx.Value("b", 0, lock=False)
    out_file = work / f"latency-{run}-{batch}.txt"
    proc = ctx.Process(target=wsload.subscriber_main, daemon=True, args=(
        0, f"{rpad.ws_url}?token={viewer}" + ("&batch=1" if batch else ""), subscribers,
        {"action": "subscribe", "topic": "heartbeat"}, b'"SUBSCRIBED"', shared, stop, 600.0,
        str(out_file)))
    proc.start()
    deadline = time.monotonic() + 60
    while shared[0] < subscribers:
        if time.monotonic() > deadline or not proc.is_alive():
            raise RuntimeError("latency subscribers did not connect")
        time.sleep(0.02)
    items = [(cid, sender.request("/api/v1/client/heartbeat", _heartbeat(cid))) for cid in ids]
    window = CpuWindow([rpad.pid, proc.pid])
    window.start()
    t0 = time.monotonic()
    answers = sender.run(items, rate)
    achieved = len(items) / (time.monotonic() - t0)
    expected = len(items) * subscribers
    time.sleep(1.0)  # the last events arrive (a missing one shows as deliveries < expected)
    window.stop()
    stop.value = 1
    proc.join(30)
    e2e: list[float] = []
    accepted: list[float] = []
    for line in out_file.read_text().splitlines():
        cid, at, t, wall = line.split(" ")
        answer = answers.get(cid)
        if answer is None:
            continue
        e2e.append(float(t) - answer[0])
        accepted.append(float(wall) - _epoch(at))
    e2e.sort()
    accepted.sort()
    statuses: dict[int, int] = {}
    for _, _, status in answers.values():
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "heartbeats": len(items), "rate": achieved, "statuses": statuses,
        "deliveries": len(e2e), "expected": expected,
        "accepted_p50_ms": percentile(accepted, 50) * 1e3,
        "accepted_p99_ms": percentile(accepted, 99) * 1e3,
        "sent_p50_ms": percentile(e2e, 50) * 1e3, "sent_p99_ms": percentile(e2e, 99) * 1e3,
        "sent_max_ms": (e2e[-1] * 1e3) if e2e else float("nan"),
        "server_cpu": window.percent(rpad.pid), "subscriber_cpu": window.percent(proc.pid),
    }


def run(quick: bool, work: Path, rate: float = 300.0, subscribers: int = 100) -> dict[str, Any]:
    runs = 1 if quick else 5
    seconds = 3.0 if quick else 8.0
    ids = [f"lat-{i:05d}" for i in range(int(rate * seconds))]
    cfg = rpad_config(work / "latency-state",
                      websocket={"max_connections_per_user": 100_000})
    results: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    with Rpad(work / "latency", cfg) as rpad:
        sender = HttpSender(rpad.http_url, rpad.token("service", "bench-latency"))
        try:
            warm = HttpSender(rpad.http_url, sender.token)
            items = []
            for i in range(0, len(ids), REGISTER_BATCH):
                body = json.dumps({"heartbeats": [{"clientId": c}
                                                  for c in ids[i:i + REGISTER_BATCH]]}).encode()
                items.append((f"batch-{i}", warm.request("/api/v1/client/heartbeats", body)))
            warm.run(items, 1000.0)
            warm.close()
            time.sleep(1.1)  # presence.min_interval_seconds
            for r in range(runs):  # plain and batching subscribers, side by side
                for batch in (False, True):
                    results[batch].append(
                        one_run(rpad, sender, ids, rate, subscribers, work, r, batch))
                    time.sleep(1.1)
        finally:
            sender.close()
    out: dict[str, Any] = {"subscribers": subscribers}
    for batch, rs in results.items():
        summary = {k: median([r[k] for r in rs]) for k in (
            "accepted_p50_ms", "accepted_p99_ms", "sent_p50_ms", "sent_p99_ms", "rate",
            "server_cpu", "subscriber_cpu")}
        summary["deliveries"] = sum(r["deliveries"] for r in rs)
        summary["expected"] = sum(r["expected"] for r in rs)
        summary["statuses"] = [r["statuses"] for r in rs]
        summary["runs"] = rs
        out["batch" if batch else "plain"] = summary
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--subscribers", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rpad-bench-") as tmp:
        out = run(args.quick, Path(tmp), args.rate, args.subscribers)
    for mode in ("plain", "batch"):
        out[mode].pop("runs")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
