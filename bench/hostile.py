"""Hostile clients against ``rpad serve``, all from loopback: what a stranger with sockets, or a
leaked service token, can do to rpad (issue 16). Printed, never asserted.

rpad runs in its own process (``python -m rpad serve``); this process is the attacker, the
agents and the dashboards, on Trio:

- **agents**: 50 heartbeats a second for 100 client ids, each on a new connection (as the
  reference agent sends them, ``Connection: close``), open loop; the latency is from opening
  the connection to the end of the answer, and every answer but a 200 counts as a failure;
- **dashboards**: 20 WebSocket connections subscribed to ``heartbeat`` before the attack; each
  must get one ``HEARTBEAT_RECEIVED`` per accepted heartbeat (lost = expected - received, after
  a 2 s drain), with no gap in ``seq``;
- **the attacker**: 5,000 half-open HTTP connections (a request line and one header, then
  nothing: the attack of the issue), from 5,000 loopback addresses (127.10.x.y, a distributed
  attacker the per-address cap cannot stop) or from one address, opened as fast as it can (500
  connects in flight), each watched until rpad closes it.

Scenarios (each ``--runs`` times, medians printed, one row per run as well):

1. **held**: the caps lifted and a 120 s header timeout, so rpad holds all 5,000: its RSS per
   half-open connection, and the agents' p99 with them held against the baseline just before;
2. **defaults, spread** and **defaults, one address**: rpad on its defaults; the agents' p99
   during the attack against the baseline, dashboards' lost events, how long until rpad has
   closed every attacker connection (refused at once, evicted to make room, or cut at the
   header timeout) and rpad's own counts of each;
3. **leaked service token**: for ``--seconds`` (60) a service token registers new clients as
   fast as it can (batches of 1,000 new ids, back to back), on the defaults; then rpad's RSS,
   its client count and the size of one ``SERVER_LIST``. Once with the defaults (bounded by
   ``presence.registrations_per_minute``), once with the rate lifted (bounded by
   ``presence.max_clients``), once with both lifted (unbounded: what the issue found).

    python bench/hostile.py [--runs 3] [--seconds 60] [--quick]

This process raises its own open-file limit to its hard limit (the attack needs 5,000 sockets).
An rpad from before the limits (``BENCH_RPAD_ROOT``) is measured without their settings.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio
from common import (
    PYTHON,
    Rpad,
    knows_connection_caps,
    knows_fleet_cap,
    median,
    percentile,
    rpad_config,
    rss_bytes,
)
from trio_websocket import connect_websocket_url, open_websocket_url

HALF_OPEN = b"POST /api/v1/client/heartbeat HTTP/1.1\r\nHost: rpad\r\n"
ATTACK_CONNECTIONS = 5000
CONNECTS_IN_FLIGHT = 500
AGENT_RATE_PER_SECOND = 50
AGENT_IDS = 100
AGENT_TIMEOUT_SECONDS = 10.0
DASHBOARDS = 20
BASELINE_SECONDS = 8.0
DRAIN_SECONDS = 2.0
SHED_WAIT_SECONDS = 90.0
REGISTER_BATCH = 1000
KIB = 1024
MIB = 1024 * 1024
UNCAPPED = 1_000_000


def defaults() -> dict[str, dict[str, Any]]:
    """rpad's own defaults for the caps (rpad_config lifts them for the other benchmarks)."""
    sections: dict[str, dict[str, Any]] = {"presence": {"min_interval_seconds": 0}}
    if knows_connection_caps():
        from rpad.config import HttpConfig, WebSocketConfig

        http, ws = HttpConfig(), WebSocketConfig()
        sections["http"] = {"max_connections": http.max_connections,
                            "max_connections_per_address": http.max_connections_per_address}
        sections["websocket"] = {"max_connections": ws.max_connections,
                                 "max_connections_per_address": ws.max_connections_per_address}
    if knows_fleet_cap():
        from rpad.config import PresenceConfig

        p = PresenceConfig()
        sections["presence"].update(max_clients=p.max_clients,
                                    registrations_per_minute=p.registrations_per_minute)
    return sections


def attacker_address(i: int, spread: bool) -> str:
    return f"127.10.{i // 250}.{i % 250 + 1}" if spread else "127.0.0.2"


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


# -- agents, dashboards, the attacker ----------------------------------------------------------


class Agents:
    """Open-loop heartbeats, each on its own connection; (phase, latency seconds or None)."""

    def __init__(self, url: str, token: str) -> None:
        self.addr = host_port(url)
        self.token = token
        self.phase = "warm-up"
        self.results: list[tuple[str, float | None, str]] = []
        self.accepted = 0

    def request(self, client_id: str) -> bytes:
        body = json.dumps({"clientId": client_id, "status": "online"}).encode()
        return (f"POST /api/v1/client/heartbeat HTTP/1.1\r\nHost: rpad\r\n"
                f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body

    async def one(self, client_id: str) -> None:
        phase = self.phase
        t0 = time.perf_counter()
        status = "error"
        try:
            with trio.fail_after(AGENT_TIMEOUT_SECONDS):
                stream = await trio.open_tcp_stream(*self.addr)
                try:
                    await stream.send_all(self.request(client_id))
                    data = b""
                    while chunk := await stream.receive_some():
                        data += chunk
                finally:
                    await stream.aclose()
            status = data[9:12].decode() or "closed"
        except (OSError, trio.BrokenResourceError):
            status = "reset"
        except trio.TooSlowError:
            status = "timeout"
        if status == "200":
            self.accepted += 1
            self.results.append((phase, time.perf_counter() - t0, status))
        else:
            self.results.append((phase, None, status))

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            for n in range(10**9):
                await trio.sleep_until(start + n / AGENT_RATE_PER_SECOND)
                nursery.start_soon(self.one, f"hb-{n % AGENT_IDS}")

    def summary(self, phase: str) -> dict[str, Any]:
        lat = sorted(x for p, x, _ in self.results if p == phase and x is not None)
        failed = Counter(s for p, x, s in self.results if p == phase and x is None)
        return {"n": len(lat) + sum(failed.values()), "failed": dict(failed),
                "p50_ms": 1000 * percentile(lat, 50), "p99_ms": 1000 * percentile(lat, 99)}


class Dashboards:
    """Dashboards subscribed to ``heartbeat``: events received, seq gaps."""

    def __init__(self, ws_url: str, tokens: list[str]) -> None:
        self.urls = [f"{ws_url}?token={t}" for t in tokens]
        self.received = [0] * DASHBOARDS
        self.gaps = 0
        self.closed = 0
        self.errors: list[str] = []
        self.ready = 0

    async def one(self, i: int, ready: trio.Event) -> None:
        try:
            async with open_websocket_url(self.urls[i]) as ws:
                await ws.send_message(json.dumps({"action": "subscribe", "topic": "heartbeat"}))
                last = None
                while True:
                    msg = json.loads(await ws.get_message())
                    if msg["type"] == "SUBSCRIBED":
                        last = msg["data"]["seq"]
                        self.ready += 1
                        if self.ready == DASHBOARDS:
                            ready.set()
                    elif msg["type"] == "HEARTBEAT_RECEIVED":
                        if last is not None and msg["seq"] != last + 1:
                            self.gaps += 1
                        last = msg["seq"]
                        if msg["data"]["clientId"].startswith("hb-"):
                            self.received[i] += 1
        except Exception as exc:  # noqa: BLE001 - counted: a dashboard that lost its connection
            self.closed += 1
            self.errors.append(repr(exc))

    async def start(self, nursery: trio.Nursery) -> None:
        ready = trio.Event()
        for i in range(DASHBOARDS):
            nursery.start_soon(self.one, i, ready)
        with trio.move_on_after(30):
            await ready.wait()
        if not ready.is_set():
            raise RuntimeError(f"the dashboards did not connect: {self.errors[:3]}")


class Attack:
    """Half-open connections; for each, how it ended and when (seconds from the start)."""

    def __init__(self, addr: tuple[str, int], n: int, spread: bool) -> None:
        self.addr = addr
        self.n = n
        self.spread = spread
        self.outcomes: list[tuple[str, float]] = []
        self.open = 0
        self.t0 = 0.0

    async def one(self, i: int, limiter: trio.CapacityLimiter) -> None:
        sock = trio.socket.socket()
        try:
            async with limiter:
                await sock.bind((attacker_address(i, self.spread), 0))
                try:
                    await sock.connect(self.addr)
                    await sock.send(HALF_OPEN)
                except OSError:
                    self.outcomes.append(("connect failed", time.perf_counter() - self.t0))
                    return
            self.open += 1
            data, how = b"", "closed"
            try:
                while chunk := await sock.recv(4096):
                    data += chunk
            except OSError:
                how = "reset"
            self.open -= 1
            if re.match(rb"HTTP/1\.1 (\d+)", data):
                how = f"refused {data[9:12].decode()}"
            self.outcomes.append((how, time.perf_counter() - self.t0))
        finally:
            sock.close()

    async def run(self, nursery: trio.Nursery) -> None:
        self.t0 = time.perf_counter()
        limiter = trio.CapacityLimiter(CONNECTS_IN_FLIGHT)
        for i in range(self.n):
            nursery.start_soon(self.one, i, limiter)

    def shed_seconds(self) -> float:
        return max((t for _, t in self.outcomes), default=float("nan"))


# -- /metrics --------------------------------------------------------------------------------


async def metrics(rpad: Rpad, token: str) -> dict[str, float]:
    """rpad's /metrics as {"name{labels}": value} (a plain HTTP/1.1 GET)."""
    with trio.fail_after(30):
        return await _metrics(rpad, token)


async def _metrics(rpad: Rpad, token: str) -> dict[str, float]:
    stream = await trio.open_tcp_stream(*host_port(rpad.http_url))
    try:
        await stream.send_all(f"GET /metrics HTTP/1.1\r\nHost: rpad\r\nAuthorization: Bearer "
                              f"{token}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    finally:
        await stream.aclose()
    out: dict[str, float] = {}
    for line in data.decode().split("\r\n\r\n", 1)[-1].splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def handled(m: dict[str, float]) -> float:
    """Connections the HTTP listener has taken from its accept queue: admitted or refused."""
    return sum(m.get(f'rpad_listener_connections_{k}_total{{listener="http"{r}}}', 0.0)
               for k, r in (("accepted", ""), ("refused", ',reason="per_address"'),
                            ("refused", ',reason="global"')))


def listener(m: dict[str, float], family: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return m.get(f"{family}{{{want}}}", float("nan"))


# -- scenarios -------------------------------------------------------------------------------


class AttackerProcess:
    """The attacker in a process of its own (so that its 5,000 sockets do not slow the agents'
    event loop): ``connected`` once every connection is open (or refused), ``outcomes`` at the
    end. Its lines on stdout are JSON."""

    def __init__(self, addr: tuple[str, int], spread: bool, max_seconds: float) -> None:
        self.argv = [PYTHON, str(Path(__file__).resolve()), "--attacker", addr[0],
                     str(addr[1]), "spread" if spread else "one", str(max_seconds)]
        self.connected = trio.Event()
        self.connected_after = float("nan")
        self.outcomes: list[tuple[str, float]] = []
        self.done = trio.Event()
        self.started = 0.0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self.started = time.perf_counter()
        proc = await trio.lowlevel.open_process(self.argv, stdout=subprocess.PIPE)
        if True:  # (one block with the finally below)
            assert proc.stdout is not None
            task_status.started()
            buffer = b""
            try:
                while chunk := await proc.stdout.receive_some():
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        msg = json.loads(line)
                        if msg["event"] == "connected":
                            self.connected_after = msg["t"]
                            self.connected.set()
                        elif msg["event"] == "done":
                            self.outcomes = [tuple(o) for o in msg["outcomes"]]
                            self.done.set()
            finally:
                with trio.CancelScope(shield=True):
                    proc.kill()
                    await proc.wait()
                    await proc.stdout.aclose()

    def shed_seconds(self) -> float:
        return max((t for _, t in self.outcomes), default=float("nan"))


async def attacker_main(host: str, port: int, spread: bool, max_seconds: float) -> None:
    """``--attacker``: open the connections, say when they are all open, watch them until rpad
    has closed them all (or ``max_seconds``), then print how each ended."""
    attack = Attack((host, port), ATTACK_CONNECTIONS, spread)
    async with trio.open_nursery() as nursery:
        await attack.run(nursery)
        while attack.open + len(attack.outcomes) < ATTACK_CONNECTIONS:
            await trio.sleep(0.01)
        print(json.dumps({"event": "connected", "t": time.perf_counter() - attack.t0}),
              flush=True)
        with trio.move_on_after(max_seconds):
            while len(attack.outcomes) < ATTACK_CONNECTIONS:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    print(json.dumps({"event": "done", "outcomes": attack.outcomes}), flush=True)


async def attack_run(work: Path, *, held: bool, spread: bool) -> dict[str, Any]:
    sections = defaults()
    if held and knows_connection_caps():
        sections["http"] = {"max_connections": UNCAPPED, "max_connections_per_address": UNCAPPED,
                            "header_timeout_seconds": 120.0, "keep_alive_timeout_seconds": 120.0}
    cfg = rpad_config(work / "state", **sections)
    with Rpad(work, cfg) as rpad:
        assert rpad.ws_url is not None
        agents = Agents(rpad.http_url, rpad.token("service", "agents"))
        dashboards = Dashboards(rpad.ws_url, [rpad.token("viewer", f"dash-{i}")
                                              for i in range(DASHBOARDS)])
        viewer = rpad.token("viewer", "metrics")
        result: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            await dashboards.start(nursery)
            nursery.start_soon(agents.run)
            await trio.sleep(1.0)
            agents.phase = "baseline"
            await trio.sleep(BASELINE_SECONDS)
            rss0 = rss_bytes(rpad.pid)
            accepted_before = agents.accepted
            handled_before = handled(await metrics(rpad, viewer))
            attacker = AttackerProcess(host_port(rpad.http_url), spread, SHED_WAIT_SECONDS)
            # The burst: from the first connect until every connection is open (or refused).
            agents.phase = "burst"
            await nursery.start(attacker.run)
            with trio.move_on_after(60):
                await attacker.connected.wait()
                # ... and rpad has taken each from its accept queue (admitted or refused).
                while handled(await metrics(rpad, viewer)) - handled_before < ATTACK_CONNECTIONS:
                    await trio.sleep(0.1)
            result["burst_s"] = time.perf_counter() - attacker.started
            # Then the steady state: held (scenario 1) or until rpad has shed them all.
            agents.phase = "held"
            if held:
                with trio.move_on_after(30):
                    while listener(await metrics(rpad, viewer), "rpad_listener_connections",
                                   listener="http", phase="pending") < ATTACK_CONNECTIONS:
                        await trio.sleep(0.2)
                await trio.sleep(BASELINE_SECONDS)
                result["held"] = listener(await metrics(rpad, viewer),
                                          "rpad_listener_connections", listener="http",
                                          phase="pending")
                result["rss_per_conn_kib"] = ((rss_bytes(rpad.pid) - rss0)
                                              / max(1, result["held"]) / KIB)
            else:
                with trio.move_on_after(SHED_WAIT_SECONDS + 10):
                    await attacker.done.wait()
            agents.phase = "after"
            result["peak_rss_mib"] = rss_bytes(rpad.pid) / MIB
            await trio.sleep(1.0)
            expected = agents.accepted
            await trio.sleep(DRAIN_SECONDS)
            nursery.cancel_scope.cancel()
        m = await metrics(rpad, viewer)
    result.update(
        baseline=agents.summary("baseline"), burst=agents.summary("burst"),
        during=agents.summary("held"), connected_after_s=attacker.connected_after,
        rss0_mib=rss0 / MIB, shed_s=attacker.shed_seconds(),
        outcomes=dict(Counter(how for how, _ in attacker.outcomes)),
        accepted_during=expected - accepted_before,
        lost=sum(max(0, expected - r) for r in dashboards.received),
        gaps=dashboards.gaps, dashboards_closed=dashboards.closed,
        refused={r: listener(m, "rpad_listener_connections_refused_total", listener="http",
                             reason=r) for r in ("per_address", "global")},
        cut={r: listener(m, "rpad_listener_connections_cut_total", listener="http", reason=r)
             for r in ("evicted", "head_timeout")},
    )
    return result


async def leaked_token_run(work: Path, seconds: float, lift: tuple[str, ...]) -> dict[str, Any]:
    sections = defaults()
    if "rate" in lift and knows_fleet_cap():
        sections["presence"]["registrations_per_minute"] = 1e9
    if "cap" in lift and knows_fleet_cap():
        sections["presence"]["max_clients"] = UNCAPPED
    with Rpad(work, rpad_config(work / "state", **sections)) as rpad:
        assert rpad.ws_url is not None
        token = rpad.token("service", "leaked")
        addr = host_port(rpad.http_url)
        registered = refused = 0
        stream: trio.SocketStream | None = None
        t0 = time.perf_counter()
        n = 0
        try:
            while time.perf_counter() - t0 < seconds:
                if stream is None:  # (Hypercorn closes a keep-alive connection after 1,000)
                    stream = await trio.open_tcp_stream(*addr)
                items = [{"clientId": f"fake-{n + i}"} for i in range(REGISTER_BATCH)]
                n += REGISTER_BATCH
                body = json.dumps({"heartbeats": items}).encode()
                await stream.send_all(
                    (f"POST /api/v1/client/heartbeats HTTP/1.1\r\nHost: rpad\r\n"
                     f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
                answer, closing = await read_response(stream)
                if closing:
                    await stream.aclose()
                    stream = None
                results = json.loads(answer)["results"]
                ok = sum(1 for r in results if r["ok"])
                registered += ok
                refused += len(results) - ok
        finally:
            if stream is not None:
                await stream.aclose()
        rss = rss_bytes(rpad.pid)
        # Read one SERVER_LIST, then drop the connection without a closing handshake: with an
        # unbounded fleet the list takes long enough that rpad's keepalive ping can arrive
        # during a graceful close, and trio-websocket then fails to answer it (Pong in
        # LOCAL_CLOSING).
        async with trio.open_nursery() as nursery:
            ws = await connect_websocket_url(
                nursery, f"{rpad.ws_url}?token={rpad.token('viewer', 'd')}",
                max_message_size=1 << 30)
            await ws.send_message(json.dumps({"action": "subscribe", "topic": "servers"}))
            while True:
                text = await ws.get_message()
                if '"type":"SERVER_LIST"' in text[:40]:
                    break
            nursery.cancel_scope.cancel()
        clients = len(json.loads(text)["data"]["servers"])
    return {"attempted": n, "registered": registered, "refused": refused, "clients": clients,
            "rss_mib": rss / MIB, "server_list_mib": len(text.encode()) / MIB}


async def read_response(stream: trio.SocketStream) -> tuple[bytes, bool]:
    """One keep-alive HTTP/1.1 response's body (Content-Length framing), and whether the
    server closes the connection after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        if not chunk:
            raise ConnectionError("rpad closed the connection before answering")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = await stream.receive_some()
        if not chunk:
            raise ConnectionError("rpad closed the connection in the middle of an answer")
        body += chunk
    return body, re.search(rb"(?i)\r\nconnection: *close", head) is not None


# -- printing --------------------------------------------------------------------------------


def attack_lines(name: str, runs: list[dict[str, Any]]) -> list[str]:
    def med(f: Any) -> float:
        return median([f(r) for r in runs])

    lines = [f"\n{name} ({len(runs)} run{'s' if len(runs) > 1 else ''}, medians)"]
    base = med(lambda r: r["baseline"]["p99_ms"])
    held = "held" if "rss_per_conn_kib" in runs[0] else "until shed"
    for phase, label in (("during", f"while rpad holds them ({held})"),
                         ("burst", "while they are being opened")):
        p99 = med(lambda r, phase=phase: r[phase]["p99_ms"])
        lines.append(f"  heartbeat p99 {label}: {p99:.1f} ms against {base:.1f} ms before "
                     f"({p99 / base:.2f}x; target within 2x); p50 "
                     f"{med(lambda r: r['baseline']['p50_ms']):.1f} -> "
                     f"{med(lambda r, phase=phase: r[phase]['p50_ms']):.1f} ms")
    lines.append(f"  the burst: the attacker had opened all {ATTACK_CONNECTIONS:,} after "
                 f"{med(lambda r: r['connected_after_s']):.1f} s, rpad had taken them all from "
                 f"its accept queue after {med(lambda r: r['burst_s']):.1f} s")
    lines.append("  heartbeats failed during the attack: "
                 + ", ".join(json.dumps({**r["burst"]["failed"], **r["during"]["failed"]})
                             for r in runs)
                 + f" (of {', '.join(str(r['burst']['n'] + r['during']['n']) for r in runs)}"
                 " sent)")
    lines.append(f"  dashboards: {DASHBOARDS} established; events lost "
                 f"{', '.join(str(r['lost']) for r in runs)} (target 0), seq gaps "
                 f"{', '.join(str(r['gaps']) for r in runs)}, dashboards disconnected "
                 f"{', '.join(str(r['dashboards_closed']) for r in runs)}")
    if "rss_per_conn_kib" in runs[0]:
        lines.append(f"  held half-open connections: {', '.join(format(r['held'], '.0f') for r in runs)};"
                     f" RSS per half-open connection {med(lambda r: r['rss_per_conn_kib']):.1f} KiB"
                     f" (runs: {', '.join(format(r['rss_per_conn_kib'], '.1f') for r in runs)}; target"
                     " <= 50 KiB)")
    else:
        lines.append(f"  time until rpad had closed all {ATTACK_CONNECTIONS:,} attacker "
                     f"connections: {med(lambda r: r['shed_s']):.1f} s (runs: "
                     f"{', '.join(format(r['shed_s'], '.1f') for r in runs)})")
        lines.append("  how they ended (attacker's view): "
                     + "; ".join(json.dumps(r["outcomes"], sort_keys=True) for r in runs))
        lines.append("  rpad's counts: refused " + "; ".join(json.dumps(r["refused"]) for r in runs)
                     + "; cut " + "; ".join(json.dumps(r["cut"]) for r in runs))
    lines.append(f"  rpad RSS before the attack {med(lambda r: r['rss0_mib']):.1f} MiB, at its end "
                 f"{med(lambda r: r['peak_rss_mib']):.1f} MiB")
    return lines


async def main_async(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < ATTACK_CONNECTIONS + 1000:
        raise SystemExit(f"the open-file hard limit ({hard}) is below what the attack needs")
    print(f"bench/hostile.py — {time.strftime('%Y-%m-%d %H:%M')}, load average "
          f"{Path('/proc/loadavg').read_text().split()[0]}; rpad with connection caps: "
          f"{knows_connection_caps()}, fleet cap: {knows_fleet_cap()}")
    with tempfile.TemporaryDirectory(prefix="rpad-hostile-") as tmp:
        work = Path(tmp)
        scenarios = [("1. 5,000 half-open connections held (caps lifted, 120 s header timeout)",
                      {"held": True, "spread": True}),
                     ("2a. 5,000 half-open connections from 5,000 addresses, defaults",
                      {"held": False, "spread": True}),
                     ("2b. 5,000 half-open connections from one address, defaults",
                      {"held": False, "spread": False})]
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in scenarios}
        for run in range(args.runs):  # alternate the scenarios: A, B, C, A, B, C, ...
            for k, (name, kw) in enumerate(scenarios):
                if args.only and str(k + 1) not in args.only:
                    continue
                t = time.monotonic()
                results[name].append(await attack_run(work / f"attack-{run}-{k}", **kw))
                progress(f"{name}: run {run + 1} took {time.monotonic() - t:.0f} s")
        for name, _ in scenarios:
            if results[name]:
                print("\n".join(attack_lines(name, results[name])), flush=True)
        if args.only and "4" not in args.only:
            return
        print(f"\n3. a leaked service token registers as fast as it can for {args.seconds:g} s "
              "(batches of 1,000 new ids)")
        for label, lift in (("defaults", ()), ("registration rate lifted", ("rate",)),
                            ("rate and cap lifted (unbounded)", ("rate", "cap"))):
            r = await leaked_token_run(work / f"leak-{'-'.join(lift) or 'defaults'}",
                                       args.seconds, lift)
            print(f"  {label}: {r['registered']:,} registered of {r['attempted']:,} tried "
                  f"({r['refused']:,} refused); rpad holds {r['clients']:,} clients, RSS "
                  f"{r['rss_mib']:.1f} MiB, one SERVER_LIST {r['server_list_mib']:.2f} MiB",
                  flush=True)


def progress(text: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--attacker":
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        trio.run(attacker_main, sys.argv[2], int(sys.argv[3]), sys.argv[4] == "spread",
                 float(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="how long the leaked token registers (default 60)")
    parser.add_argument("--quick", action="store_true", help="one run, 10 s of registering")
    parser.add_argument("--only", nargs="*", default=[],
                        help="scenarios by number: 1 (held), 2 (spread), 3 (one address), "
                             "4 (leaked token)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds = 1, 10.0
    trio.run(main_async, args)


if __name__ == "__main__":
    main()

