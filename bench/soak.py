"""Soak: 1,000 WebSocket subscribers and 300 heartbeats per second for 10 minutes, against one
``rpad serve`` process. Does rpad stay flat and correct over a long run?

The load, all on loopback, every part in its own process:

- *agents*: ``--clients`` (600) agents beat over keep-alive HTTP connections, open loop, at
  ``--rate`` (300) heartbeats per second in total. Some agents change their reported status on
  every beat (``--status-changes`` per second, CLIENT_STATUS_UPDATE) and some go offline and
  come back (``--flaps`` per second: CLIENT_DISCONNECTED, CLIENT_CONNECTED, notifications,
  alerts, history rows), so the hub has events to deliver and the store has transitions to keep.
- *dashboards*: ``--subscribers`` (1,000) WebSocket connections, each with its own viewer
  token, all subscribed to ``client_status`` and ``notifications``; 2 % also follow
  ``heartbeat`` and 1 % ``servers`` (the full list every 2 s). They answer pings, check that
  every topic's ``seq`` runs without a gap on each connection, and time every event they
  receive from its ``ts`` (the server's wall clock when the event happened, ms precision) to
  their own wall clock when they read it: the *event latency*, which includes the durable
  commit and the fan-out. A dashboard that is disconnected (say 4008, slow consumer) does what
  SPEC §5 tells clients to do: it connects again and subscribes with ``since``; the report
  counts the disconnections, and a resume that does not recover (or any gap) is an error.

Every ``--window`` (60 s) the report has a line: rpad's RSS and CPU, heartbeats answered and
refused, event deliveries, event latency p50/p99/max, seq gaps, disconnections. At the end:
RSS growth from the end of the warm-up (the first window) to the end, p99 spread over the
windows, and the totals of errors and disconnects. Targets: RSS growth under 5 %, p99 stable,
zero errors.

    python bench/soak.py                       # 10 minutes
    python bench/soak.py --minutes 1 --window 10   # a short check
    python bench/soak.py --json report.json

Resource handling: rpad and every load process are stopped at the end (and on an error); the
work directory is a fresh temporary one. Error handling: the run goes on through errors and
counts them; a subscriber or agent process that dies is an error in the report.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import select
import socket
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wsload
from common import Rpad, cpu_seconds, percentile, rpad_config, rss_bytes

SUBSCRIBER_PROCESSES = 2
EVENT_TYPES = frozenset({b"CLIENT_STATUS_UPDATE", b"CLIENT_CONNECTED", b"CLIENT_DISCONNECTED",
                         b"HEARTBEAT_RECEIVED", b"NOTIFICATION"})
HTTP_CONNECTIONS = 32
REGISTER_BATCH = 500
AGENT_VERSION = "2.1.0"
# The envelope's head, as rpad writes it: {"type":"T","topic":"t","seq":N,"ts":"...","data":
ENVELOPE_HEAD = re.compile(
    rb'\{"type":"([A-Z_]+)","topic":(?:null|"([^"]*)"),"seq":(null|\d+),"ts":(?:null|"([^"]*)")')
RSS_SAMPLE_SECONDS = 5.0
RSS_GROWTH_TARGET = 0.05
CONNECT_TIMEOUT_SECONDS = 120.0
HEARTBEAT_TOPIC_SHARE = 0.02
SERVERS_TOPIC_SHARE = 0.01


_EPOCHS: dict[bytes, float] = {}


def _iso_epoch(text: bytes) -> float:
    """ISO 8601 → epoch seconds, cached (a thousand subscribers see the same ts)."""
    t = _EPOCHS.get(text)
    if t is None:
        if len(_EPOCHS) > 10_000:
            _EPOCHS.clear()
        t = _EPOCHS[text] = datetime.fromisoformat(text.decode()).timestamp()
    return t


# -- dashboards ----------------------------------------------------------------------------------

def subscriber_process(index: int, ws_url: str, tokens: list[str], t0_box: Any, window: float,
                       duration: float, ready: Any, out: Any) -> None:
    """``len(tokens)`` connections; once all are connected, waits for the start time in
    ``t0_box``; reports per-window deliveries and latencies, gaps and disconnections to
    ``out`` at the end."""
    conns: list[tuple[socket.socket, list[bytes]]] = []
    topics_of: list[list[str]] = []
    n = len(tokens)
    try:
        for i, token in enumerate(tokens):
            sock, rest = wsload.connect(f"{ws_url}?token={token}")
            conn = wsload.Conn(sock, rest)
            conn.read_until(b"CONNECTION_ESTABLISHED", wsload.HANDSHAKE_TIMEOUT_SECONDS)
            topics = ["client_status", "notifications"]
            position = index * n + i
            if position % int(1 / HEARTBEAT_TOPIC_SHARE) == 0:
                topics.append("heartbeat")
            if position % int(1 / SERVERS_TOPIC_SHARE) == 1:
                topics.append("servers")
            for topic in topics:
                conn.send_text(json.dumps({"action": "subscribe", "topic": topic}))
                conn.read_until(b'"SUBSCRIBED"', wsload.HANDSHAKE_TIMEOUT_SECONDS)
            conns.append((conn.sock, [conn.buf]))
            topics_of.append(topics)
            ready.put(1)
    except Exception as exc:  # noqa: BLE001 - reported, the run goes on without them
        out.put({"index": index, "fatal": f"connecting: {exc!r}", "connected": len(conns)})
        return
    t0 = t0_box_wait(t0_box)

    windows = int(duration // window) + 2
    deliveries = [0] * windows
    latencies: list[list[float]] = [[] for _ in range(windows)]
    gaps = 0
    unrecovered = 0
    resumed = 0
    failed_reconnects = 0
    types: dict[bytes, int] = {}
    disconnects: dict[str, int] = {}
    last_seq: list[dict[bytes, int]] = [{} for _ in conns]
    ep = select.epoll()
    by_fd = {s.fileno(): k for k, (s, _) in enumerate(conns)}
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)

    def resume(k: int) -> None:
        """What a dashboard does after a disconnection: connect again and subscribe with
        ``since`` = the last seq it saw of each topic."""
        nonlocal resumed, failed_reconnects
        try:
            sock, rest = wsload.connect(f"{ws_url}?token={tokens[k]}")
        except Exception:  # noqa: BLE001 - counted; the connection stays gone
            failed_reconnects += 1
            return
        for topic in topics_of[k]:
            msg: dict[str, Any] = {"action": "subscribe", "topic": topic}
            since = last_seq[k].get(topic.encode())
            if since is not None and topic != "servers":
                msg["since"] = since
            sock.setblocking(True)
            sock.sendall(wsload.client_frame(json.dumps(msg).encode()))
            sock.setblocking(False)
        conns[k] = (sock, [rest])
        by_fd[sock.fileno()] = k
        ep.register(sock.fileno(), select.EPOLLIN)
        resumed += 1

    deadline = t0 + duration
    while time.time() < deadline:
        for fd, _ in ep.poll(0.2):
            k = by_fd[fd]
            sock, bufbox = conns[k]
            try:
                data = sock.recv(wsload.RECV_BYTES)
            except BlockingIOError:
                continue
            except OSError as exc:
                data = b""
                disconnects[repr(exc)] = disconnects.get(repr(exc), 0) + 1
            now = time.time()
            closed = not data
            buf = bufbox[0] + data
            frames, used = wsload.parse_frames(buf)
            bufbox[0] = buf[used:]
            w = min(windows - 1, int((now - t0) // window))
            for op, start, end in frames:
                if op == wsload.OP_TEXT:
                    m = ENVELOPE_HEAD.match(buf, start, min(end, start + 200))
                    if m is None:
                        gaps += 1  # not an envelope: counted as an error
                        continue
                    type_: bytes = m.group(1)
                    msg_topic: bytes | None = m.group(2)
                    seq_text: bytes = m.group(3)
                    ts: bytes | None = m.group(4)
                    types[type_] = types.get(type_, 0) + 1
                    if type_ == b"SUBSCRIBED" and b'"recovered":false' in buf[start:end] \
                            and b'"topic":"servers"' not in buf[start:end]:
                        unrecovered += 1  # (servers keeps no history: a fresh list comes)
                    if msg_topic is not None and seq_text != b"null":
                        seq = int(seq_text)
                        prev = last_seq[k].get(msg_topic)
                        if prev is not None and seq != prev + 1 and msg_topic != b"servers":
                            gaps += 1
                        last_seq[k][msg_topic] = seq
                    if type_ in EVENT_TYPES and ts is not None:
                        deliveries[w] += 1
                        latencies[w].append((now - _iso_epoch(ts)) * 1000.0)
                elif op == wsload.OP_PING:
                    sock.setblocking(True)
                    sock.sendall(wsload.client_frame(buf[start:end], wsload.OP_PONG))
                    sock.setblocking(False)
                elif op == wsload.OP_CLOSE:
                    code = int.from_bytes(buf[start:start + 2], "big") if end - start >= 2 else 1005
                    disconnects[f"close {code}"] = disconnects.get(f"close {code}", 0) + 1
                    closed = True
            if closed:
                ep.unregister(fd)
                del by_fd[fd]
                sock.close()
                if not data:
                    disconnects["eof"] = disconnects.get("eof", 0) + 1
                resume(k)
    ep.close()
    for sock, _ in conns:
        sock.close()
    out.put({"index": index, "connected": len(conns), "deliveries": deliveries,
             "latencies": latencies, "gaps": gaps, "disconnects": disconnects,
             "resumed": resumed, "unrecovered": unrecovered,
             "failed_reconnects": failed_reconnects,
             "types": {k.decode(): v for k, v in types.items()}})


# -- agents --------------------------------------------------------------------------------------

def agent_process(http_url: str, token: str, clients: int, rate: float, status_changes: float,
                  flaps: float, t0: float, window: float, duration: float, out: Any) -> None:
    """Open-loop heartbeats at ``rate``/s over keep-alive sockets; per-window counts and
    answer times (ms) go to ``out`` at the end."""
    parts = urlsplit(http_url)
    addr = (parts.hostname or "127.0.0.1", parts.port or 80)
    socks = [socket.create_connection(addr) for _ in range(HTTP_CONNECTIONS)]
    for s in socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
    interval = clients / rate  # seconds between two beats of one agent
    changers = max(0, round(status_changes * interval))  # each changes on every beat
    flappers = max(0, round(flaps * interval))  # each goes offline / online on every beat
    beats = [0] * clients
    windows = int(duration // window) + 2
    ok = [0] * windows
    refused: dict[str, int] = {}
    answer_ms: list[list[float]] = [[] for _ in range(windows)]

    def request(k: int) -> bytes:
        cid = f"agent-{k:05d}"
        n = beats[k]
        beats[k] += 1
        status = "online"
        if k < changers:
            status = "busy" if n % 2 else "online"
        elif k < changers + flappers:
            status = "offline" if n % 2 else "online"
        body = json.dumps({"clientId": cid, "status": status, "version": AGENT_VERSION,
                           "intervalSeconds": interval,
                           "metrics": {"cpuUsagePercent": (n * 7) % 100, "load1": 0.5}},
                          separators=(",", ":")).encode()
        return (f"POST /api/v1/client/heartbeat HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    ep = select.epoll()
    for s in socks:
        ep.register(s.fileno(), select.EPOLLIN)
    free = list(socks)
    busy: dict[int, tuple[socket.socket, float, bytes]] = {}
    by_fd = {s.fileno(): s for s in socks}
    k = 0
    sent = 0
    reopened = 0
    backlog_max = 0
    while time.time() < t0:
        time.sleep(0.01)
    start = time.monotonic()
    end = start + duration
    while time.monotonic() < end:
        now = time.monotonic()
        due = int((now - start) * rate)
        backlog_max = max(backlog_max, due - sent)
        while sent < due and free:
            s = free.pop()
            try:
                s.sendall(request(k % clients))
            except OSError as exc:
                refused[f"send: {exc!r}"] = refused.get(f"send: {exc!r}", 0) + 1
                continue
            busy[s.fileno()] = (s, time.monotonic(), b"")
            k += 1
            sent += 1
        timeout = max(0.0, start + (sent + 1) / rate - time.monotonic())
        for fd, _ in ep.poll(min(timeout, 0.05)):
            if fd not in busy:
                continue
            s, t_sent, buf = busy[fd]
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                refused["connection closed"] = refused.get("connection closed", 0) + 1
                ep.unregister(fd)
                del busy[fd]
                s.close()
                ns = socket.create_connection(addr)
                ns.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                ns.setblocking(False)
                ep.register(ns.fileno(), select.EPOLLIN)
                by_fd[ns.fileno()] = ns
                free.append(ns)
                continue
            buf += data
            head, sep, body = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if not sep or len(body) < length:
                busy[fd] = (s, t_sent, buf)
                continue
            status = int(head.split(b" ", 2)[1])
            closing = b"\r\nconnection: close" in head.lower()
            w = min(windows - 1, int((time.time() - t0) // window))
            if status == 200:
                ok[w] += 1
            else:
                key = f"HTTP {status}"
                refused[key] = refused.get(key, 0) + 1
            answer_ms[w].append((time.monotonic() - t_sent) * 1000.0)
            del busy[fd]
            if closing:
                # Hypercorn ends a keep-alive connection after keep_alive_max_requests and
                # says so: open a new one, as any HTTP client does.
                reopened += 1
                ep.unregister(fd)
                del by_fd[fd]
                s.close()
                s = socket.create_connection(addr)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.setblocking(False)
                ep.register(s.fileno(), select.EPOLLIN)
                by_fd[s.fileno()] = s
            free.append(s)
    ep.close()
    for s in by_fd.values():
        s.close()
    out.put({"ok": ok, "refused": refused, "answer_ms": answer_ms, "sent": sent,
             "reopened": reopened,
             "backlog_max": backlog_max, "changers": changers, "flappers": flappers})


# -- the run -------------------------------------------------------------------------------------

def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    duration = args.minutes * 60.0
    window = args.window
    config = rpad_config(
        work / "state",
        # The agents are open loop: after a stall they catch up in a burst, which the minimum
        # interval would refuse (429); they beat every 2 s on average all the same.
        presence={"min_interval_seconds": 0, "heartbeat_timeout_seconds": 60.0},
        websocket={"max_connections_per_user": 5, "queue_size": args.queue_size},
    )
    with Rpad(work, config) as rpad:
        assert rpad.ws_url is not None
        _register_agents(rpad, args.clients)
        ctx = multiprocessing.get_context("fork")
        ready = ctx.Queue()
        sub_out = ctx.Queue()
        agent_out = ctx.Queue()
        per_process = [args.subscribers // SUBSCRIBER_PROCESSES + (1 if i < args.subscribers % SUBSCRIBER_PROCESSES else 0)
                       for i in range(SUBSCRIBER_PROCESSES)]
        connect_started = time.time()
        # The load starts once everyone is connected; the start time goes through a shared
        # value so that every process agrees on the windows.
        t0_box = ctx.Value("d", 0.0)
        subs = []
        for i, count in enumerate(per_process):
            tokens = [rpad.token("viewer", f"dash-{i}-{j}") for j in range(count)]
            p = ctx.Process(target=subscriber_process, args=(
                i, rpad.ws_url, tokens, t0_box, window, duration, ready, sub_out), daemon=True)
            p.start()
            subs.append(p)
        connected = 0
        deadline = time.time() + CONNECT_TIMEOUT_SECONDS
        while connected < args.subscribers and time.time() < deadline:
            try:
                connected += ready.get(timeout=1.0)
            except Exception:  # noqa: BLE001 - queue.Empty
                if not any(p.is_alive() for p in subs):
                    break
        connect_seconds = time.time() - connect_started
        rss_idle = rss_bytes(rpad.pid)
        t0 = time.time() + 1.0
        t0_box.value = t0
        agent = ctx.Process(target=agent_process, args=(
            rpad.http_url, rpad.token("service", "soak-agents"), args.clients, args.rate,
            args.status_changes, args.flaps, t0, window, duration, agent_out), daemon=True)
        agent.start()

        rss_samples: list[tuple[float, int]] = []
        cpu_per_window: list[float] = []
        while time.time() < t0:
            time.sleep(0.01)
        cpu_start = w_cpu = cpu_seconds(rpad.pid)
        w_wall = time.monotonic()
        next_window = t0 + window
        while time.time() < t0 + duration:
            time.sleep(min(RSS_SAMPLE_SECONDS, max(0.01, t0 + duration - time.time())))
            rss_samples.append((time.time() - t0, rss_bytes(rpad.pid)))
            if time.time() >= next_window:
                now_cpu, now_wall = cpu_seconds(rpad.pid), time.monotonic()
                cpu_per_window.append(100.0 * (now_cpu - w_cpu) / (now_wall - w_wall))
                w_cpu, w_wall = now_cpu, now_wall
                next_window += window
        cpu_total = 100.0 * (cpu_seconds(rpad.pid) - cpu_start) / duration
        results = []
        for p in subs:
            try:
                results.append(sub_out.get(timeout=60))
            except Exception:  # noqa: BLE001
                results.append({"fatal": "a subscriber process reported nothing"})
        agent_result = agent_out.get(timeout=60)
        for p in subs + [agent]:
            p.join(10)
        hub_stats = _get_json(rpad.http_url + "/api/v1/websocket/stats", rpad.token("admin", "soak"))
        log_text = rpad.log_path.read_text(errors="replace")
    return _report(args, duration, window, results, agent_result, rss_samples, rss_idle,
                   cpu_total, cpu_per_window, connected, connect_seconds, hub_stats, log_text)


def _register_agents(rpad: Rpad, clients: int) -> None:
    """Every agent's first heartbeat, in batches, before the dashboards connect: the run
    measures the steady state, not a thousand dashboards each receiving 600 first
    CLIENT_CONNECTED at once."""
    import urllib.request

    token = rpad.token("service", "soak-setup")
    for first in range(0, clients, REGISTER_BATCH):
        items = [{"clientId": f"agent-{k:05d}", "status": "online", "version": AGENT_VERSION}
                 for k in range(first, min(clients, first + REGISTER_BATCH))]
        req = urllib.request.Request(
            rpad.http_url + "/api/v1/client/heartbeats", method="POST",
            data=json.dumps({"heartbeats": items}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert json.loads(resp.read())["rejected"] == 0


def t0_box_wait(box: Any) -> float:
    while box.value == 0.0:
        time.sleep(0.01)
    return float(box.value)


def _get_json(url: str, token: str) -> Any:
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _report(args: argparse.Namespace, duration: float, window: float, subs: list[dict[str, Any]],
            agent: dict[str, Any], rss_samples: list[tuple[float, int]], rss_idle: int,
            cpu_total: float, cpu_per_window: list[float], connected: int,
            connect_seconds: float, hub_stats: dict[str, Any], log_text: str) -> dict[str, Any]:
    n_windows = int(duration // window)
    rows = []
    errors: dict[str, int] = {}
    for s in subs:
        if "fatal" in s:
            errors[s["fatal"]] = errors.get(s["fatal"], 0) + 1
    for key, count in agent["refused"].items():
        errors[key] = errors.get(key, 0) + count
    gaps = sum(s.get("gaps", 0) for s in subs)
    if gaps:
        errors["seq gaps"] = gaps
    for key, label in (("unrecovered", "resumes without recovery"),
                       ("failed_reconnects", "failed reconnects")):
        count = sum(s.get(key, 0) for s in subs)
        if count:
            errors[label] = count
    disconnects: dict[str, int] = {}
    types: dict[str, int] = {}
    for s in subs:
        for key, count in s.get("disconnects", {}).items():
            disconnects[key] = disconnects.get(key, 0) + count
        for key, count in s.get("types", {}).items():
            types[key] = types.get(key, 0) + count
    tracebacks = log_text.count("Traceback")
    if tracebacks:
        errors["tracebacks in rpad's log"] = tracebacks
    problems = [line for line in log_text.splitlines()
                if " ERROR " in line or " CRITICAL " in line or "Error:" in line][:20]
    p99s = []
    for w in range(n_windows):
        lat = sorted(x for s in subs for x in (s.get("latencies") or [[]] * (w + 1))[w])
        answers = sorted(agent["answer_ms"][w])
        rss_in = [r for t, r in rss_samples if w * window < t <= (w + 1) * window]
        row = {
            "window": w + 1,
            "endSeconds": (w + 1) * window,
            "rssMiB": round(max(rss_in) / 2**20, 1) if rss_in else None,
            "rpadCpuPercent": round(cpu_per_window[w], 1) if w < len(cpu_per_window) else None,
            "heartbeatsOk": agent["ok"][w],
            "heartbeatAnswerP99Ms": round(percentile(answers, 99), 1) if answers else None,
            "eventDeliveries": sum(s.get("deliveries", [0] * (w + 1))[w] for s in subs),
            "eventLatencyP50Ms": round(percentile(lat, 50), 1) if lat else None,
            "eventLatencyP99Ms": round(percentile(lat, 99), 1) if lat else None,
            "eventLatencyMaxMs": round(lat[-1], 1) if lat else None,
        }
        if lat:
            p99s.append(percentile(lat, 99))
        rows.append(row)
    warm = [r for t, r in rss_samples if t <= window]
    rss_warm = warm[-1] if warm else (rss_samples[0][1] if rss_samples else 0)
    rss_end = rss_samples[-1][1] if rss_samples else 0
    growth = (rss_end - rss_warm) / rss_warm if rss_warm else float("nan")
    after_warm = p99s[1:] if len(p99s) > 1 else p99s
    return {
        "settings": {"minutes": args.minutes, "window": window, "subscribers": args.subscribers,
                     "queueSize": args.queue_size,
                     "clients": args.clients, "rate": args.rate,
                     "statusChangesPerSecond": args.status_changes, "flapsPerSecond": args.flaps,
                     "agentsChangingStatus": agent["changers"], "agentsFlapping": agent["flappers"]},
        "connected": connected,
        "connectSeconds": round(connect_seconds, 1),
        "heartbeatsSent": agent["sent"],
        "httpConnectionsReopened": agent["reopened"],
        "senderBacklogMax": agent["backlog_max"],
        "rssIdleMiB": round(rss_idle / 2**20, 1),
        "rssAfterWarmupMiB": round(rss_warm / 2**20, 1),
        "rssEndMiB": round(rss_end / 2**20, 1),
        "rssGrowthAfterWarmupPercent": round(growth * 100, 2),
        "rssSamples": [(round(t, 1), round(r / 2**20, 1)) for t, r in rss_samples],
        "rpadCpuPercent": round(cpu_total, 1),
        "p99MsAfterWarmup": {"min": round(min(after_warm), 1) if after_warm else None,
                             "max": round(max(after_warm), 1) if after_warm else None},
        "windows": rows,
        "errors": errors,
        "disconnects": disconnects,
        "resumedWithSince": sum(s.get("resumed", 0) for s in subs),
        "messagesByType": dict(sorted(types.items())),
        "rpadLogProblems": problems,
        "hub": {k: hub_stats.get(k) for k in ("activeConnections", "slowConsumers",
                                              "disconnections", "internalErrors",
                                              "messagesSent", "conflatedMessages",
                                              "rateLimitedMessages")},
        "targets": {"rssGrowthUnder5Percent": growth < RSS_GROWTH_TARGET,
                    "zeroErrors": not errors and not disconnects},
    }


def _print(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(f"soak: {s['subscribers']} subscribers ({report['connected']} connected in "
          f"{report['connectSeconds']} s), {s['rate']:g} heartbeats/s from {s['clients']} agents, "
          f"{s['minutes']:g} min, windows of {s['window']:g} s")
    print(f"{'window':>6} {'RSS MiB':>8} {'CPU %':>6} {'beats ok':>9} {'HTTP p99':>9} "
          f"{'events':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    for r in report["windows"]:
        print(f"{r['window']:>6} {r['rssMiB']!s:>8} {r['rpadCpuPercent']!s:>6} "
              f"{r['heartbeatsOk']:>9} {r['heartbeatAnswerP99Ms']!s:>9} {r['eventDeliveries']:>8} "
              f"{r['eventLatencyP50Ms']!s:>7} {r['eventLatencyP99Ms']!s:>7} "
              f"{r['eventLatencyMaxMs']!s:>7}")
    print(f"RSS: idle {report['rssIdleMiB']} MiB, after warm-up {report['rssAfterWarmupMiB']} MiB, "
          f"end {report['rssEndMiB']} MiB: growth {report['rssGrowthAfterWarmupPercent']} % "
          f"(target < {RSS_GROWTH_TARGET * 100:g} %)")
    print(f"event p99 after warm-up: {report['p99MsAfterWarmup']}; rpad CPU "
          f"{report['rpadCpuPercent']} % of a core; sender backlog max {report['senderBacklogMax']}")
    print(f"errors: {report['errors'] or 'none'}; disconnects: {report['disconnects'] or 'none'} "
          f"(resumed with since: {report['resumedWithSince']})")
    print(f"messages received by type: {report['messagesByType']}")
    for line in report["rpadLogProblems"]:
        print(f"rpad log: {line[:300]}")
    print(f"hub: {report['hub']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=60.0, help="seconds per report line")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=600)
    parser.add_argument("--rate", type=float, default=300.0, help="heartbeats per second")
    parser.add_argument("--status-changes", type=float, default=3.0,
                        help="reported-status changes per second (CLIENT_STATUS_UPDATE)")
    parser.add_argument("--flaps", type=float, default=1.0,
                        help="offline/online transitions per second")
    parser.add_argument("--queue-size", type=int, default=256,
                        help="websocket.queue_size (rpad's default: 256)")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    parser.add_argument("--keep", action="store_true", help="keep rpad's state and log")
    args = parser.parse_args()
    if args.keep:
        work = Path(tempfile.mkdtemp(prefix="rpad-soak-"))
        report = run(args, work)
        print(f"rpad's state and log kept in {work}")
    else:
        with tempfile.TemporaryDirectory(prefix="rpad-soak-") as tmp:
            report = run(args, Path(tmp))
    _print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    os._exit(0 if report["targets"]["zeroErrors"] else 1)


if __name__ == "__main__":
    main()
