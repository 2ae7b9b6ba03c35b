"""The reference agent (``rpad agent``): heartbeats with real metrics from ``/proc``.

Every ``--interval`` seconds it reads the host's metrics and POSTs a heartbeat (SPEC §3) to
``/api/v1/client/heartbeat``:

- ``cpuUsagePercent``: busy share of all CPUs since the previous sample (``/proc/stat``);
- ``memoryUsageBytes`` / ``memoryTotalBytes``: MemTotal − MemAvailable and MemTotal
  (``/proc/meminfo``);
- ``diskUsageBytes`` / ``diskTotalBytes``: the file system of ``/`` (``statvfs``);
- ``networkRxInstantBps`` / ``networkTxInstantBps``: bytes per second received and sent on all
  interfaces but loopback since the previous sample (``/proc/net/dev``);
- ``uptimeSeconds`` (``/proc/uptime``) and ``load1``/``load5``/``load15`` (``/proc/loadavg``).

When rpad is unreachable or answers 5xx it retries with exponential backoff (1 s doubling to
30 s, with jitter), and after 429 it waits ``Retry-After``. On SIGTERM or SIGINT it sends one
last heartbeat with ``status: "offline"`` so rpad marks it offline at once, then exits 0.

Error handling: a refused token (401, 403) or a heartbeat rpad cannot accept (413, 422) will
not get better by retrying: the agent says why on stderr and exits with
:data:`EXIT_REFUSED` (3), which ``systemd/rpad-agent.service`` does not restart. An unknown
client id (404, manual registration) is retried slowly: an admin may register it.

Resource handling: one HTTP connection per heartbeat, closed before the next; the ``/proc``
reads are small in-memory files read directly in the event loop.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import trio

from .. import __version__
from . import control, httpclient
from .backoff import Backoff

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS = 30.0
MIN_INTERVAL_SECONDS = 0.1
# The first CPU and network rates are measured over this short window before the first beat.
FIRST_SAMPLE_SECONDS = 0.5
REQUEST_TIMEOUT_SECONDS = 10.0
# How long the last ("offline") heartbeat may take at shutdown, retries included.
SHUTDOWN_TIMEOUT_SECONDS = 10.0
HEARTBEAT_PATH = "/api/v1/client/heartbeat"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_REFUSED = 3
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")

Post = Callable[..., Awaitable[httpclient.HttpResponse]]


def utc_timestamp(epoch_seconds: float) -> str:
    """The agent's clock for the heartbeat's ``timestamp``: ISO 8601 UTC, milliseconds, ``Z``."""
    stamp = datetime.fromtimestamp(epoch_seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


# -- metrics from /proc --------------------------------------------------------------------------


@attrs.frozen
class CpuTimes:
    busy: int
    total: int


def parse_cpu_times(stat: str) -> CpuTimes:
    """The aggregate ``cpu`` line of ``/proc/stat``: user nice system idle iowait irq softirq
    steal (guest time is already counted in user). Idle time is idle + iowait."""
    for line in stat.splitlines():
        if line.startswith("cpu "):
            fields = [int(x) for x in line.split()[1:9]]
            fields += [0] * (8 - len(fields))
            idle = fields[3] + fields[4]
            total = sum(fields)
            return CpuTimes(total - idle, total)
    raise ValueError("no aggregate cpu line in /proc/stat")


def cpu_percent(before: CpuTimes, after: CpuTimes) -> float | None:
    """Busy percentage of all CPUs between two samples (None if no time passed)."""
    total = after.total - before.total
    if total <= 0:
        return None
    busy = min(max(after.busy - before.busy, 0), total)
    return round(100.0 * busy / total, 2)


def parse_meminfo(meminfo: str) -> tuple[int, int]:
    """(used, total) bytes: MemTotal − MemAvailable, MemTotal."""
    values: dict[str, int] = {}
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    total = values["MemTotal"]
    available = values.get("MemAvailable", values.get("MemFree", 0))
    return total - available, total


def parse_net_dev(net_dev: str) -> tuple[int, int]:
    """(received, sent) bytes summed over every interface except loopback."""
    rx = tx = 0
    for line in net_dev.splitlines()[2:]:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if name.strip() == "lo" or len(fields) < 9:
            continue
        rx += int(fields[0])
        tx += int(fields[8])
    return rx, tx


def parse_uptime(uptime: str) -> float:
    return float(uptime.split()[0])


def parse_loadavg(loadavg: str) -> tuple[float, float, float]:
    a, b, c = (float(x) for x in loadavg.split()[:3])
    return a, b, c


def disk_usage(path: str) -> tuple[int, int]:
    """(used, total) bytes of the file system holding ``path``."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return used, total


class MetricsSampler:
    """Reads the metrics; rates (CPU, network) are over the time since the previous sample.

    A metric that cannot be read on this host is left out (and logged once), never faked.
    """

    def __init__(self, proc: Path = Path("/proc"), disk_path: str = "/") -> None:
        self.proc = proc
        self.disk_path = disk_path
        self._cpu: CpuTimes | None = None
        self._net: tuple[float, int, int] | None = None
        self._warned: set[str] = set()

    def _read(self, name: str) -> str:
        return (self.proc / name).read_text()

    def _try(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (OSError, ValueError, KeyError, IndexError) as exc:
            if what not in self._warned:
                self._warned.add(what)
                log.warning("cannot read %s on this host: %s", what, exc)
            return None

    def sample(self, now: float) -> dict[str, float]:
        """All metrics at ``now`` (a monotonic time in seconds)."""
        m: dict[str, float] = {}
        cpu = self._try("CPU times", lambda: parse_cpu_times(self._read("stat")))
        if cpu is not None:
            if self._cpu is not None:
                pct = cpu_percent(self._cpu, cpu)
                if pct is not None:
                    m["cpuUsagePercent"] = pct
            self._cpu = cpu
        mem = self._try("memory", lambda: parse_meminfo(self._read("meminfo")))
        if mem is not None:
            m["memoryUsageBytes"], m["memoryTotalBytes"] = mem
        disk = self._try("disk usage", lambda: disk_usage(self.disk_path))
        if disk is not None:
            m["diskUsageBytes"], m["diskTotalBytes"] = disk
        net = self._try("network counters", lambda: parse_net_dev(self._read("net/dev")))
        if net is not None:
            if self._net is not None:
                then, rx0, tx0 = self._net
                dt = now - then
                if dt > 0:
                    m["networkRxInstantBps"] = round(max(net[0] - rx0, 0) / dt, 1)
                    m["networkTxInstantBps"] = round(max(net[1] - tx0, 0) / dt, 1)
            self._net = (now, net[0], net[1])
        up = self._try("uptime", lambda: parse_uptime(self._read("uptime")))
        if up is not None:
            m["uptimeSeconds"] = up
        load = self._try("load averages", lambda: parse_loadavg(self._read("loadavg")))
        if load is not None:
            m["load1"], m["load5"], m["load15"] = load
        return m


# -- the agent -----------------------------------------------------------------------------------


class AgentRefused(Exception):
    """rpad refused the agent for a reason retrying will not fix."""


@attrs.frozen
class AgentOptions:
    url: str
    client_id: str
    token: str
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    name: str | None = None
    version: str | None = None
    status: str = "online"
    os_type: str | None = None
    request_timeout_seconds: float = REQUEST_TIMEOUT_SECONDS

    @property
    def heartbeat_url(self) -> str:
        return self.url.rstrip("/") + HEARTBEAT_PATH


def _error_text(resp: httpclient.HttpResponse) -> str:
    body = resp.json()
    if isinstance(body, dict) and "message" in body:
        details = "; ".join(f"{d.get('field')}: {d.get('message')}"
                            for d in body.get("details") or [] if isinstance(d, dict))
        return f"{body.get('error')}: {body['message']}" + (f" ({details})" if details else "")
    return resp.body[:200].decode("utf-8", "replace") or f"HTTP {resp.status}"


def _retry_after(resp: httpclient.HttpResponse) -> float | None:
    try:
        value = float(resp.headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


class Agent:
    def __init__(self, opts: AgentOptions, *, sampler: MetricsSampler | None = None,
                 backoff: Backoff | None = None, post: Post = httpclient.request,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.opts = opts
        self.sampler = sampler or MetricsSampler()
        self.backoff = backoff or Backoff()
        self.post = post
        self.wall_clock = wall_clock
        self.sent = 0
        self.failures = 0
        self._was_failing = False
        # Set at the first accepted heartbeat (rpad knows this client from then on).
        self.accepted = trio.Event()

    def body(self, status: str) -> dict[str, Any]:
        o = self.opts
        b: dict[str, Any] = {
            "clientId": o.client_id,
            "timestamp": utc_timestamp(self.wall_clock()),
            "status": status,
            "intervalSeconds": o.interval_seconds,
            "metrics": self.sampler.sample(trio.current_time()),
        }
        for key, value in (("name", o.name), ("version", o.version), ("osType", o.os_type)):
            if value is not None:
                b[key] = value
        return b

    async def send(self, status: str) -> httpclient.HttpResponse:
        data = json.dumps(self.body(status), separators=(",", ":")).encode()
        return await self.post("POST", self.opts.heartbeat_url, body=data,
                               headers={"Authorization": f"Bearer {self.opts.token}",
                                        "Content-Type": "application/json"},
                               timeout_seconds=self.opts.request_timeout_seconds)

    async def beat_once(self, status: str) -> float:
        """Send one heartbeat; return how long to wait before the next one.

        Raises AgentRefused when retrying cannot help.
        """
        try:
            resp = await self.send(status)
        except httpclient.HttpError as exc:
            return self._failed(f"rpad is unreachable: {exc}")
        if 200 <= resp.status < 300:
            self.sent += 1
            self.accepted.set()
            self.backoff.reset()
            if self._was_failing:
                log.info("heartbeats are accepted again")
                self._was_failing = False
            return self.opts.interval_seconds
        text = _error_text(resp)
        if resp.status in (401, 403):
            raise AgentRefused(f"rpad refused the token (HTTP {resp.status}, {text})")
        if resp.status in (400, 413, 422):
            raise AgentRefused(f"rpad cannot accept this heartbeat (HTTP {resp.status}, {text})")
        if resp.status == 429:
            wait = _retry_after(resp)
            if wait is not None:
                self.failures += 1
                log.warning("rpad asks to slow down: retrying in %.1f s", wait)
                return wait
        if resp.status == 404:
            return self._failed(f"rpad does not know client {self.opts.client_id!r} ({text}); "
                                "an admin must register it")
        return self._failed(f"rpad answered HTTP {resp.status} ({text})")

    def _failed(self, why: str) -> float:
        self.failures += 1
        self._was_failing = True
        delay = self.backoff.next_delay()
        log.warning("%s; retrying in %.1f s", why, delay)
        return delay

    async def run(self) -> None:
        """Heartbeat until cancelled, on a drift-free schedule. Raises AgentRefused."""
        self.sampler.sample(trio.current_time())
        await trio.sleep(FIRST_SAMPLE_SECONDS)
        while True:
            started = trio.current_time()
            wait = await self.beat_once(self.opts.status)
            await trio.sleep_until(started + wait)

    async def say_goodbye(self) -> bool:
        """The last heartbeat, ``status: "offline"``; retried within SHUTDOWN_TIMEOUT_SECONDS."""
        with trio.move_on_after(SHUTDOWN_TIMEOUT_SECONDS):
            goodbye = Backoff(initial=0.25, maximum=2.0, jitter=0.0)
            while True:
                try:
                    resp = await self.send("offline")
                except httpclient.HttpError as exc:
                    log.warning("could not tell rpad we are going offline: %s", exc)
                else:
                    if 200 <= resp.status < 300:
                        log.info("told rpad we are going offline")
                        return True
                    log.warning("could not tell rpad we are going offline: HTTP %d (%s)",
                                resp.status, _error_text(resp))
                    if resp.status < 500 and resp.status != 429:
                        return False
                await trio.sleep(goodbye.next_delay())
        return False


async def run_agent(agent: Agent, stop: trio.Event,
                    channel: control.ControlChannel | None = None) -> int:
    """Run until ``stop`` is set, then send the offline heartbeat. Returns the exit code.

    With a control channel, it opens after the first accepted heartbeat; at ``stop`` it closes
    first (its running commands are killed), then the last heartbeat goes out."""
    refused: AgentRefused | None = None
    async with trio.open_nursery() as nursery:
        if channel is not None:
            nursery.start_soon(channel.run, agent.accepted)

        async def beat() -> None:
            nonlocal refused
            try:
                await agent.run()
            except AgentRefused as exc:
                refused = exc
            nursery.cancel_scope.cancel()

        nursery.start_soon(beat)
        await stop.wait()
        nursery.cancel_scope.cancel()
    if refused is not None:
        log.error("%s", refused)
        return EXIT_REFUSED
    await agent.say_goodbye()
    return EXIT_OK


# -- the command ---------------------------------------------------------------------------------


def read_token(token: str | None, token_file: str | None) -> str:
    """The token from --token, --token-file or $RPAD_TOKEN. Raises ValueError."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the token file {token_file}: "
                             f"{exc.strerror or exc}") from None
        if not token:
            raise ValueError(f"the token file {token_file} is empty")
    token = token or os.environ.get("RPAD_TOKEN", "").strip()
    if not token:
        raise ValueError("a token is needed: --token, --token-file or $RPAD_TOKEN")
    return token


def add_token_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token", help="JWT (visible in the process list; prefer --token-file)")
    p.add_argument("--token-file", metavar="PATH",
                   help="read the JWT from this file (also: $RPAD_TOKEN)")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "agent", help="run a reference agent that heartbeats with this host's metrics",
        description="Send heartbeats with CPU, memory, disk, network, uptime and load from "
                    "/proc every --interval seconds; status offline on SIGTERM.")
    p.add_argument("--url", required=True, help="rpad's HTTP API, e.g. http://HOST:8000")
    p.add_argument("--client-id", required=True, metavar="ID")
    add_token_arguments(p)
    p.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_SECONDS, metavar="SECONDS",
                   help=f"seconds between heartbeats (default {DEFAULT_INTERVAL_SECONDS:g})")
    p.add_argument("--name", help="display name (default: the host name)")
    p.add_argument("--version-string", dest="agent_version", metavar="VERSION",
                   help=f"version to report (default: rpad-agent {__version__})")
    p.add_argument("--status", default="online",
                   help="reported status: online, busy, idle, error, ... (default online)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    control.add_arguments(p)
    p.set_defaults(func=cmd_agent)


def cmd_agent(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="rpad agent: %(levelname)s %(message)s")
    try:
        token = read_token(args.token, args.token_file)
        if not args.url.startswith(("http://", "https://")):
            raise ValueError(f"--url must start with http:// or https://, got {args.url!r}")
        httpclient.parse_url(args.url)
        if not CLIENT_ID_RE.fullmatch(args.client_id):
            raise ValueError("--client-id must be 1 to 128 characters of A-Z a-z 0-9 . _ : -")
        if not args.interval >= MIN_INTERVAL_SECONDS:
            raise ValueError(f"--interval must be at least {MIN_INTERVAL_SECONDS} s")
        version = args.agent_version or f"rpad-agent {__version__}"
        channel = control.from_args(args, token=token, agent_version=version, http_url=args.url)
    except ValueError as exc:
        print(f"rpad agent: {exc}", file=sys.stderr)
        return 2
    opts = AgentOptions(
        url=args.url, client_id=args.client_id, token=token, interval_seconds=args.interval,
        name=args.name or socket.gethostname(),
        version=version,
        status=args.status, os_type=f"{platform.system()} {platform.release()}",
    )
    agent = Agent(opts)

    async def main() -> int:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:

            async def on_signals() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.info("received %s: going offline", signal.Signals(signum).name)
                        stop.set()
                        return

            nursery.start_soon(on_signals)
            log.info("heartbeating as %s to %s every %g s", opts.client_id, opts.url,
                     opts.interval_seconds)
            if channel is not None:
                pol = channel.runner.policy
                log.info("control channel: commands %s%s", "allowed" if pol.enabled else
                         "refused (disabled on this host)",
                         f" as {pol.run_as.name}" if pol.enabled and pol.run_as else "")
            code = await run_agent(agent, stop, channel)
            nursery.cancel_scope.cancel()
        return code

    return trio.run(main)
